//! [`CachedStore`]: live sessions answered from memory, every change written through a
//! [`Journal`] before it is acknowledged. The in-memory store is a `CachedStore` over
//! [`MemoryJournal`]; the embedded SQLite store is one over its SQLite journal (DESIGN §7).
//!
//! Reads (validation) take one shard's read lock. Changes are serialised by one async writer
//! lock, so concurrent creates cannot overshoot a session limit. How a change reaches the
//! journal depends on the journal:
//! - one without a queue ([`Journal::enqueue`] answers `None`, the memory journals): the plan is
//!   made from memory, written to the journal, and only then applied to memory, all under the
//!   lock, so a failed write changes nothing;
//! - one with a queue (SQLite's group commit): under the lock the change is queued, behind every
//!   change queued before it, and applied to memory; the lock is released and the caller waits
//!   for the journal to say the change is durable before it answers. Changes that arrive while
//!   the journal writes leave together in its next transaction. A change is acknowledged only
//!   once durable, and what memory shows early is never handed out (a token made by a change is
//!   returned only with its acknowledgement). When a queued change fails, the journal fails
//!   every change queued after it (each was planned on top of it), and the next change sets
//!   memory back to what is durable ([`Journal::recover`]) before it is planned: memory never
//!   stays ahead of the journal. Only what those changes held is read again, one session at a
//!   time, so the other sessions go on being answered while it is (a store of ten million
//!   sessions read again whole would answer none of them for half a minute, and hold them twice).
//!
//! Touches do not take the writer lock; they are queued and written by [`SessionStore::flush`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::api_key::{ApiKey, ApiKeyStore};
use crate::application::{AppId, Application, ApplicationStore};
use crate::event::{AuditEvent, EventQuery};
use crate::oidc::{LogoutDelivery, MemoryDeliveryStore};
use crate::plan;
use crate::record;
use crate::session::{EndReason, Session};
use crate::store::{
    EndedSessions, Ending, Insert, Inserted, LiveCount, LiveTally, SessionStore, StoreError,
};
use crate::time::Timestamp;
use crate::token::{GeneratedTokens, PublicId, SessionId, TokenHash};

const SHARDS: usize = 64;

/// One shard of the token-hash index: each session as its record ([`crate::record`]), decoded
/// when read (a session decoded takes several times the memory of its record).
type Shard = RwLock<HashMap<TokenHash, Box<[u8]>, GeneratedTokens>>;

/// One atomic unit of change, as a journal must persist it.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Sessions to write whole (new or changed).
    pub sessions: Vec<Arc<Session>>,
    /// Sessions to forget.
    pub purged: Vec<SessionId>,
    /// Events to append, with their positions already assigned.
    pub events: Vec<AuditEvent>,
    /// API keys to write whole.
    pub api_keys: Vec<ApiKey>,
    /// Applications to write whole.
    pub applications: Vec<Application>,
    /// Applications to delete.
    pub removed_applications: Vec<AppId>,
    /// Back-channel logout deliveries of the sessions this change ends (added, never replaced:
    /// a delivery already written stays as it is).
    pub deliveries: Vec<LogoutDelivery>,
}

/// A coalesced activity update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// The session.
    pub id: SessionId,
    /// Its new last activity.
    pub last_seen_at: Timestamp,
    /// Its new idle deadline.
    pub idle_at: Option<Timestamp>,
    /// Its new nearest deadline.
    pub next_deadline: Timestamp,
}

/// Everything a journal holds, read back when the store opens.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Live sessions and ended ones still retained.
    pub sessions: Vec<Session>,
    /// All API keys.
    pub api_keys: Vec<ApiKey>,
    /// All applications.
    pub applications: Vec<Application>,
    /// The position of the last event written.
    pub last_seq: u64,
}

/// What memory is set back to after queued changes failed ([`Journal::recover`]).
#[derive(Debug, Default)]
pub struct Recovery {
    /// Every session a failed (or refused) change wrote or purged, as it is durable now; `None`
    /// for one the journal does not hold.
    pub sessions: Vec<(SessionId, Option<Session>)>,
    /// All API keys.
    pub api_keys: Vec<ApiKey>,
    /// All applications.
    pub applications: Vec<Application>,
    /// The position of the last event written.
    pub last_seq: u64,
}

/// Durable storage behind a [`CachedStore`].
pub trait Journal: Send + Sync + 'static {
    /// Persists `change` atomically; when it returns `Ok`, the change survives a crash.
    fn commit(&self, change: &Change) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Persists coalesced touches (losing them in a crash only makes sessions expire earlier).
    fn commit_touches(
        &self,
        touches: &[Touch],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads events, oldest first.
    fn events(
        &self,
        query: &EventQuery,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
    /// Whether the journal answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues `change` behind every change queued before it, at once (not when the answer is
    /// awaited), and answers with what says when it is durable; `None` for a journal without a
    /// queue, whose [`Journal::commit`] the cache awaits under its lock instead. A journal that
    /// queues fails every change queued after a failed one until [`Journal::recover`].
    fn enqueue(&self, _change: Change) -> Option<CommitTicket> {
        None
    }

    /// After a queued change failed: once every change queued before this call is answered,
    /// what the failed and refused ones held, read again as it is durable; the journal takes
    /// changes again from then on. Only journals that queue are asked.
    fn recover(&self) -> impl Future<Output = Result<Recovery, StoreError>> + Send {
        async {
            Err(StoreError::Unavailable(
                "this journal keeps nothing to recover".into(),
            ))
        }
    }
}

/// The answer of a queued change: resolves once it is durable, or failed.
#[derive(Debug)]
pub struct CommitTicket(tokio::sync::oneshot::Receiver<Result<(), StoreError>>);

impl CommitTicket {
    /// A ticket and the sender its journal answers through.
    pub fn new() -> (tokio::sync::oneshot::Sender<Result<(), StoreError>>, Self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (tx, Self(rx))
    }

    /// Waits for the journal's answer; a journal gone without answering failed the change.
    pub async fn durable(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the journal's writer stopped".into(),
            ))
        })
    }
}

/// A journal that keeps events and back-channel logout deliveries in memory and persists
/// nothing: the in-memory store.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    events: Mutex<Vec<AuditEvent>>,
    deliveries: MemoryDeliveryStore,
}

impl MemoryJournal {
    /// The back-channel logout deliveries its store's endings wrote.
    pub fn deliveries(&self) -> MemoryDeliveryStore {
        self.deliveries.clone()
    }
}

impl Journal for MemoryJournal {
    async fn commit(&self, change: &Change) -> Result<(), StoreError> {
        self.events.lock().extend(change.events.iter().cloned());
        self.deliveries.add(&change.deliveries);
        Ok(())
    }

    async fn commit_touches(&self, _touches: &[Touch]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let events = self.events.lock();
        let start = events.partition_point(|e| e.seq <= query.after);
        Ok(events[start..]
            .iter()
            .filter(|e| query.matches(e))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The in-memory store: fast, ephemeral, for tests and for embedding.
pub type MemoryStore = CachedStore<MemoryJournal>;

impl MemoryStore {
    /// An empty in-memory store.
    pub fn new() -> Self {
        Self::open(MemoryJournal::default(), Snapshot::default())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A session id as the indexes keep it: an id the engine made as its route and 16 random bytes,
/// with no allocation; any other (an id of an older release) as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IdKey {
    Routed([u8; 17]),
    Text(Box<str>),
}

impl IdKey {
    /// The least key: a range up to `(t, IdKey::FIRST)` holds every entry before `t`.
    const FIRST: Self = Self::Routed([0; 17]);

    fn of(id: &SessionId) -> Self {
        match record::routed_id(id.as_str()) {
            Some((route, random)) => {
                let mut key = [0; 17];
                key[0] = route;
                key[1..].copy_from_slice(&random);
                Self::Routed(key)
            }
            None => Self::Text(id.as_str().into()),
        }
    }

    fn of_raw(id: record::RawId<'_>) -> Self {
        match id {
            record::RawId::Routed(route, random) => {
                let mut key = [0; 17];
                key[0] = route;
                key[1..].copy_from_slice(&random);
                Self::Routed(key)
            }
            record::RawId::Text(_) => Self::of(&id.to_id()),
        }
    }

    fn id(&self) -> SessionId {
        match self {
            Self::Routed(key) => record::routed_session_id(key[0], &key[1..]),
            Self::Text(text) => PublicId::from_string(text.to_string()),
        }
    }
}

/// Every entry of a time index at or before `now`.
fn up_to(now: Timestamp) -> std::ops::RangeTo<(Timestamp, IdKey)> {
    ..(
        Timestamp::from_millis(now.as_millis().saturating_add(1)),
        IdKey::FIRST,
    )
}

/// Session ids per subject. Keyed by a keyed hash of the subject rather than the subject itself
/// (ten million subjects would each be kept twice, here and in their records): the sessions of
/// subjects whose hashes collide share a list, so a reader keeps only those of its subject.
#[derive(Default)]
struct SubjectIndex {
    keys: std::hash::RandomState,
    lists: HashMap<u64, SmallVec<[IdKey; 1]>>,
}

impl SubjectIndex {
    fn key(&self, subject: &str) -> u64 {
        self.keys.hash_one(subject)
    }

    fn add(&mut self, subject: &str, id: IdKey) {
        let key = self.key(subject);
        self.lists.entry(key).or_default().push(id);
    }

    fn remove(&mut self, subject: &str, id: &IdKey) {
        let key = self.key(subject);
        if let Some(list) = self.lists.get_mut(&key) {
            list.retain(|x| x != id);
            if list.is_empty() {
                self.lists.remove(&key);
            }
        }
    }

    /// The ids listed under `subject`'s key: its own, and any of a subject whose hash collides.
    fn ids(&self, subject: &str) -> &[IdKey] {
        self.lists
            .get(&self.key(subject))
            .map_or(&[], |list| list.as_slice())
    }

    fn contains(&self, subject: &str, id: &IdKey) -> bool {
        self.ids(subject).contains(id)
    }

    fn all(&self) -> impl Iterator<Item = &IdKey> {
        self.lists.values().flatten()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

#[derive(Default)]
struct WriterState {
    next_seq: u64,
    /// Live session ids per subject.
    subjects: SubjectIndex,
    /// Timed-out sessions per subject that may still be re-constituted.
    tombstones: SubjectIndex,
    /// Live children per parent.
    children: HashMap<IdKey, Vec<IdKey>>,
    /// Ended sessions by purge time.
    purges: BTreeSet<(Timestamp, IdKey)>,
}

/// A session as a journal hands it back when the store opens.
#[derive(Debug)]
pub enum Restored {
    /// A session's record ([`record::encode`]'s form), kept as read: a live session is indexed
    /// from its [`record::outline`], never decoded.
    Record(TokenHash, Box<[u8]>),
    /// A session the journal kept in another form.
    Session(Box<Session>),
}

/// A load of the journal's sessions into memory, before the store serves anyone (it holds the
/// writer's lock). The deadline index is built when the load ends (the value is dropped).
pub struct Restoring<'a, J: Journal> {
    store: &'a CachedStore<J>,
    state: WriterGuard<'a>,
    deadlines: Vec<(Timestamp, IdKey)>,
}

impl<J: Journal> Restoring<'_, J> {
    /// Makes room for `sessions` more, so that the maps are not grown (each growth moves every
    /// entry) while they are loaded.
    pub fn reserve(&mut self, sessions: usize) {
        self.store.by_id.write().reserve(sessions);
        // Token hashes spread evenly over the shards; a little more than an even share keeps
        // a fuller shard from growing once near the end.
        let per_shard = sessions / SHARDS + sessions / SHARDS / 64;
        for shard in &self.store.by_hash {
            shard.write().reserve(per_shard);
        }
        self.deadlines.reserve(sessions);
    }

    /// Adds a batch of sessions.
    pub fn add(&mut self, sessions: impl IntoIterator<Item = Restored>) -> Result<(), StoreError> {
        self.store
            .restore_batch(&mut self.state, &mut self.deadlines, sessions)
    }
}

impl<J: Journal> Drop for Restoring<'_, J> {
    fn drop(&mut self) {
        self.store
            .index_deadlines(std::mem::take(&mut self.deadlines));
    }
}

/// See the module documentation.
pub struct CachedStore<J> {
    journal: J,
    by_hash: Box<[Shard]>,
    by_id: RwLock<HashMap<IdKey, TokenHash>>,
    /// Live sessions by nearest deadline; entries may be stale and are re-checked when due.
    deadlines: Mutex<BTreeSet<(Timestamp, IdKey)>>,
    /// Live sessions by application and policy, kept as sessions change (counting them would
    /// read every record).
    live: Mutex<LiveTally>,
    pending_touches: Mutex<HashMap<SessionId, Touch>>,
    api_keys: RwLock<HashMap<TokenHash, ApiKey, GeneratedTokens>>,
    applications: RwLock<HashMap<AppId, Application>>,
    writer: tokio::sync::Mutex<WriterState>,
    /// A queued change failed: memory may be ahead of the journal until it is recovered.
    stale: std::sync::atomic::AtomicBool,
}

type WriterGuard<'a> = tokio::sync::MutexGuard<'a, WriterState>;

impl<J> std::fmt::Debug for CachedStore<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("sessions", &self.by_id.read().len())
            .finish_non_exhaustive()
    }
}

fn shard_of(hash: &TokenHash) -> usize {
    usize::from(hash.0[0]) % SHARDS
}

/// The records of `sessions`, in order.
fn records_of(sessions: &[Arc<Session>]) -> Result<Vec<Box<[u8]>>, StoreError> {
    sessions
        .iter()
        .map(|s| record::encode(s).map(Vec::into_boxed_slice))
        .collect()
}

impl<J: Journal> CachedStore<J> {
    /// Opens the store over `journal`, loading what it held.
    pub fn open(journal: J, snapshot: Snapshot) -> Self {
        let store = Self {
            journal,
            by_hash: (0..SHARDS).map(|_| RwLock::default()).collect(),
            by_id: RwLock::default(),
            deadlines: Mutex::default(),
            live: Mutex::default(),
            pending_touches: Mutex::default(),
            api_keys: RwLock::new(
                snapshot
                    .api_keys
                    .into_iter()
                    .map(|k| (k.key_hash, k))
                    .collect(),
            ),
            applications: RwLock::new(
                snapshot
                    .applications
                    .into_iter()
                    .map(|a| (a.id.clone(), a))
                    .collect(),
            ),
            writer: tokio::sync::Mutex::new(WriterState {
                next_seq: snapshot.last_seq + 1,
                ..WriterState::default()
            }),
            stale: std::sync::atomic::AtomicBool::new(false),
        };
        store
            .restore(snapshot.sessions)
            .expect("a session's record always encodes: its parts are plain data");
        store
    }

    /// Adds sessions read back from the journal, before the store serves anyone.
    pub fn restore(&self, sessions: impl IntoIterator<Item = Session>) -> Result<(), StoreError> {
        let mut restoring = self.restoring()?;
        restoring.add(sessions.into_iter().map(|s| Restored::Session(Box::new(s))))
    }

    /// Starts loading the journal's sessions before the store serves anyone. A journal holding
    /// millions of sessions hands them over in batches ([`Restoring::add`]), so that only one
    /// batch is ever held in memory decoded.
    pub fn restoring(&self) -> Result<Restoring<'_, J>, StoreError> {
        let state = self
            .writer
            .try_lock()
            .map_err(|_| StoreError::Unavailable("the store is already serving".into()))?;
        Ok(Restoring {
            store: self,
            state,
            deadlines: Vec::new(),
        })
    }

    /// Adds sessions as they were journalled. The deadlines of live ones go to `deadlines`, for
    /// [`Self::index_deadlines`]: built at once from a sorted list, the index costs a fraction
    /// of ten million inserts.
    fn restore_batch(
        &self,
        state: &mut WriterState,
        deadlines: &mut Vec<(Timestamp, IdKey)>,
        sessions: impl IntoIterator<Item = Restored>,
    ) -> Result<(), StoreError> {
        for restored in sessions {
            let (session, record) = match restored {
                Restored::Record(hash, record) => {
                    if self.restore_outlined(state, deadlines, hash, &record)? {
                        self.by_hash[shard_of(&hash)].write().insert(hash, record);
                        continue;
                    }
                    (record::decode(hash, &record)?, record)
                }
                Restored::Session(session) => {
                    let record = record::encode(&session)?.into_boxed_slice();
                    (*session, record)
                }
            };
            let key = IdKey::of(&session.id);
            if !self.restore_id(&key, session.token_hash) {
                self.apply(state, &session, record);
                continue;
            }
            self.live.lock().add(&session);
            if session.is_live() {
                deadlines.push((session.next_deadline().0, key.clone()));
            }
            self.index_added(state, &session, &key);
            self.by_hash[shard_of(&session.token_hash)]
                .write()
                .insert(session.token_hash, record);
        }
        Ok(())
    }

    /// Indexes the live session `record` holds from its outline, all but the record itself
    /// (the caller keeps it); `false`, with nothing indexed, for a record to decode instead.
    fn restore_outlined(
        &self,
        state: &mut WriterState,
        deadlines: &mut Vec<(Timestamp, IdKey)>,
        hash: TokenHash,
        record: &[u8],
    ) -> Result<bool, StoreError> {
        let Some(outline) = record::outline(record)? else {
            return Ok(false);
        };
        let key = IdKey::of_raw(outline.id);
        if !self.restore_id(&key, hash) {
            return Ok(false);
        }
        self.live
            .lock()
            .add_live(&outline.application.to_id(), outline.policy);
        deadlines.push((outline.next_deadline, key.clone()));
        Self::index_live(
            state,
            outline.subject,
            outline.parent.map(IdKey::of_raw),
            &key,
        );
        Ok(true)
    }

    /// Maps a restored id to its token hash; `false`, with the map unchanged, for an id
    /// already restored (a journal holds one row per id, so only a caller's mistake), which
    /// the general path ([`Self::apply`]) then replaces.
    fn restore_id(&self, key: &IdKey, hash: TokenHash) -> bool {
        let mut by_id = self.by_id.write();
        match by_id.insert(key.clone(), hash) {
            None => true,
            Some(known) => {
                by_id.insert(key.clone(), known);
                false
            }
        }
    }

    /// Adds restored deadlines to the index.
    fn index_deadlines(&self, mut restored: Vec<(Timestamp, IdKey)>) {
        let mut deadlines = self.deadlines.lock();
        if deadlines.is_empty() {
            restored.sort_unstable();
            *deadlines = BTreeSet::from_iter(restored);
        } else {
            deadlines.extend(restored);
        }
    }

    /// The writer lock, with memory agreeing with the journal: after a queued change failed,
    /// what the failed changes held is first read again from what is durable (every change
    /// queued after the failed one has failed too by then: the journal refuses them until it
    /// recovers).
    async fn write_lock(&self) -> Result<WriterGuard<'_>, StoreError> {
        use std::sync::atomic::Ordering;
        let mut state = self.writer.lock().await;
        if self.stale.load(Ordering::Acquire) {
            let recovery = self.journal.recover().await?;
            self.recover(&mut state, recovery)?;
            self.stale.store(false, Ordering::Release);
        }
        Ok(state)
    }

    /// Sets memory back to `recovery`: the API keys and applications whole, the sessions it
    /// names one by one, each replaced by its durable form (or dropped) with no moment at which
    /// a reader finds neither.
    fn recover(&self, state: &mut WriterState, recovery: Recovery) -> Result<(), StoreError> {
        *self.api_keys.write() = recovery
            .api_keys
            .into_iter()
            .map(|k| (k.key_hash, k))
            .collect();
        *self.applications.write() = recovery
            .applications
            .into_iter()
            .map(|a| (a.id.clone(), a))
            .collect();
        state.next_seq = recovery.last_seq + 1;
        for (id, durable) in recovery.sessions {
            let key = IdKey::of(&id);
            let shown = self.get_by_key(&key);
            if let Some(shown) = &shown {
                self.unindex(state, &key, shown);
            }
            let kept = match durable {
                Some(session) => {
                    let record = record::encode(&session)?.into_boxed_slice();
                    self.live.lock().add(&session);
                    if session.is_live() {
                        self.deadlines
                            .lock()
                            .insert((session.next_deadline().0, key.clone()));
                    }
                    self.index_added(state, &session, &key);
                    self.by_hash[shard_of(&session.token_hash)]
                        .write()
                        .insert(session.token_hash, record);
                    self.by_id.write().insert(key.clone(), session.token_hash);
                    Some(session.token_hash)
                }
                None => {
                    self.by_id.write().remove(&key);
                    None
                }
            };
            if let Some(shown) = shown.filter(|s| Some(s.token_hash) != kept) {
                self.by_hash[shard_of(&shown.token_hash)]
                    .write()
                    .remove(&shown.token_hash);
            }
        }
        Ok(())
    }

    /// Takes `session`, as memory shows it under `key`, out of every index but the maps by id
    /// and by token hash.
    fn unindex(&self, state: &mut WriterState, key: &IdKey, session: &Session) {
        self.live.lock().remove(session);
        match &session.ended {
            None => {
                self.deadlines
                    .lock()
                    .remove(&(session.next_deadline().0, key.clone()));
                Self::unlist_live(state, session, key);
            }
            Some(ended) => {
                state.purges.remove(&(ended.purge_at, key.clone()));
                state.tombstones.remove(&session.subject, key);
            }
        }
    }

    /// The journal behind the cache.
    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// How many sessions (live and retained) the cache holds.
    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// Whether the cache holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session under `hash`. A record that does not decode (which only a bug could make:
    /// every record was encoded here) reads as no session: the person is not signed in.
    fn get(&self, hash: &TokenHash) -> Option<Arc<Session>> {
        let shard = self.by_hash[shard_of(hash)].read();
        let record = shard.get(hash)?;
        record::decode(*hash, record).ok().map(Arc::new)
    }

    fn get_by_key(&self, key: &IdKey) -> Option<Arc<Session>> {
        let hash = *self.by_id.read().get(key)?;
        self.get(&hash)
    }

    fn get_by_id(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.get_by_key(&IdKey::of(id))
    }

    /// The sessions of `subject` listed in `index`.
    fn sessions_of(&self, index: &SubjectIndex, subject: &str) -> Vec<Arc<Session>> {
        index
            .ids(subject)
            .iter()
            .filter_map(|key| self.get_by_key(key))
            .filter(|s| s.subject == subject)
            .collect()
    }

    /// Makes memory agree with `session` (already journalled), kept as `record`, fixing every
    /// index.
    fn apply(&self, state: &mut WriterState, session: &Session, record: Box<[u8]>) {
        let key = IdKey::of(&session.id);
        let previous = self.get_by_key(&key);
        if let Some(prev) = &previous {
            if prev.token_hash != session.token_hash {
                self.by_hash[shard_of(&prev.token_hash)]
                    .write()
                    .remove(&prev.token_hash);
            }
            if prev.is_live() {
                self.deadlines
                    .lock()
                    .remove(&(prev.next_deadline().0, key.clone()));
            }
        }
        {
            let mut live = self.live.lock();
            if let Some(prev) = &previous {
                live.remove(prev);
            }
            live.add(session);
        }
        let was_live = previous.as_ref().is_some_and(|p| p.is_live());
        if session.is_live() {
            self.deadlines
                .lock()
                .insert((session.next_deadline().0, key.clone()));
        }
        if previous.is_none() {
            self.index_added(state, session, &key);
        } else if session.is_live() {
            if !was_live {
                Self::index_live(
                    state,
                    &session.subject,
                    session.parent.as_ref().map(IdKey::of),
                    &key,
                );
            }
        } else {
            if was_live {
                Self::unlist_live(state, session, &key);
            }
            let ended = session.ended.as_ref().expect("not live means ended");
            if previous.as_ref().and_then(|p| p.ended.as_ref()).is_none() {
                state.purges.insert((ended.purge_at, key.clone()));
            }
            let reconstitutable =
                ended.reconstitute_until.is_some() && ended.reconstituted_into.is_none();
            // No entry for a subject without tombstones: every ended session of a subject
            // seen once would otherwise leave an empty list behind for good.
            let listed = state.tombstones.contains(&session.subject, &key);
            if reconstitutable && !listed {
                state.tombstones.add(&session.subject, key.clone());
            } else if !reconstitutable && listed {
                state.tombstones.remove(&session.subject, &key);
            }
        }
        self.by_id.write().insert(key, session.token_hash);
        self.by_hash[shard_of(&session.token_hash)]
            .write()
            .insert(session.token_hash, record);
    }

    /// Indexes a session memory did not hold: under its subject (and its parent) while live;
    /// by purge time, and as its subject's tombstone while it may be re-constituted, once ended.
    fn index_added(&self, state: &mut WriterState, session: &Session, key: &IdKey) {
        match &session.ended {
            None => Self::index_live(
                state,
                &session.subject,
                session.parent.as_ref().map(IdKey::of),
                key,
            ),
            Some(ended) => {
                state.purges.insert((ended.purge_at, key.clone()));
                if ended.reconstitute_until.is_some() && ended.reconstituted_into.is_none() {
                    state.tombstones.add(&session.subject, key.clone());
                }
            }
        }
    }

    /// Lists a live session under its subject and its parent.
    fn index_live(state: &mut WriterState, subject: &str, parent: Option<IdKey>, key: &IdKey) {
        state.subjects.add(subject, key.clone());
        if let Some(parent) = parent {
            state.children.entry(parent).or_default().push(key.clone());
        }
    }

    /// Takes a live session off its subject's and its parent's lists.
    fn unlist_live(state: &mut WriterState, session: &Session, key: &IdKey) {
        state.subjects.remove(&session.subject, key);
        if let Some(parent) = &session.parent {
            let parent = IdKey::of(parent);
            if let Some(list) = state.children.get_mut(&parent) {
                list.retain(|x| x != key);
                if list.is_empty() {
                    state.children.remove(&parent);
                }
            }
        }
    }

    fn forget(&self, state: &mut WriterState, id: &SessionId) {
        let key = IdKey::of(id);
        let Some(session) = self.get_by_key(&key) else {
            return;
        };
        self.by_id.write().remove(&key);
        self.by_hash[shard_of(&session.token_hash)]
            .write()
            .remove(&session.token_hash);
        self.unindex(state, &key, &session);
    }

    fn stamp(state: &mut WriterState, events: &mut [AuditEvent]) {
        for event in events {
            event.seq = state.next_seq;
            state.next_seq += 1;
        }
    }

    /// Writes `change` through the journal and applies it to memory, releasing the writer lock
    /// (`state`) before waiting when the journal queues (see the module documentation).
    async fn commit(
        &self,
        mut state: WriterGuard<'_>,
        mut change: Change,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let records = records_of(&change.sessions)?;
        let first_seq = state.next_seq;
        Self::stamp(&mut state, &mut change.events);
        if let Some(ticket) = self.journal.enqueue(change.clone()) {
            self.apply_change(&mut state, &change, records);
            drop(state);
            if let Err(err) = ticket.durable().await {
                self.stale.store(true, std::sync::atomic::Ordering::Release);
                // Recovered now rather than at the next change, so that reads stop showing what
                // did not become durable; if the journal cannot answer, the next change tries.
                let _ = self.write_lock().await;
                return Err(err);
            }
            return Ok(change.events);
        }
        if let Err(err) = self.journal.commit(&change).await {
            state.next_seq = first_seq;
            return Err(err);
        }
        self.apply_change(&mut state, &change, records);
        Ok(change.events)
    }

    /// Makes memory agree with `change`, whose sessions are kept as `records`.
    fn apply_change(&self, state: &mut WriterState, change: &Change, records: Vec<Box<[u8]>>) {
        for id in &change.purged {
            self.forget(state, id);
        }
        for (session, record) in change.sessions.iter().zip(records) {
            self.apply(state, session, record);
        }
        if !change.api_keys.is_empty() {
            let mut keys = self.api_keys.write();
            for key in &change.api_keys {
                keys.insert(key.key_hash, key.clone());
            }
        }
        if !change.applications.is_empty() || !change.removed_applications.is_empty() {
            let mut apps = self.applications.write();
            for app in &change.applications {
                apps.insert(app.id.clone(), app.clone());
            }
            for id in &change.removed_applications {
                apps.remove(id);
            }
        }
    }

    /// Adds to `change` the ending of live session `id` and, recursively, of its live children.
    fn plan_end(
        &self,
        state: &WriterState,
        id: &SessionId,
        ending: &Ending,
        reason: EndReason,
        change: &mut Change,
    ) -> Option<Arc<Session>> {
        let current = self.get_by_id(id).filter(|s| s.is_live())?;
        if change.sessions.iter().any(|s| &s.id == id) {
            return None;
        }
        let ended = plan::ended_record(&current, ending, reason);
        let ended = Arc::new(ended);
        change.events.push(AuditEvent::ended(&ended, &ending.actor));
        change.deliveries.extend(LogoutDelivery::for_ended(&ended));
        change.sessions.push(Arc::clone(&ended));
        let children = state.children.get(&IdKey::of(id)).cloned();
        for child in children.unwrap_or_default() {
            self.plan_end(state, &child.id(), ending, EndReason::ParentEnded, change);
        }
        Some(ended)
    }
}

impl<J: Journal> SessionStore for CachedStore<J> {
    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, StoreError> {
        let shard = self.by_hash[shard_of(hash)].read();
        let Some(record) = shard.get(hash) else {
            return Ok(None);
        };
        Ok(Some(Arc::new(record::decode(*hash, record)?)))
    }

    async fn find_by_id(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        Ok(self.get_by_id(id))
    }

    async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        let state = self.writer.lock().await;
        let mut sessions = self.sessions_of(&state.subjects, subject);
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    async fn insert(&self, insert: Insert) -> Result<Inserted, StoreError> {
        let state = self.write_lock().await?;
        let mut change = Change::default();
        let mut session = insert.session;
        let now = session.created_at;
        if let Some(parent) = &session.parent {
            plan::parent_is_live(self.get_by_id(parent).as_deref(), &session.subject)?;
        }

        if let Some(limit) = insert.limit {
            let live = self.sessions_of(&state.subjects, &session.subject);
            let ending = Ending {
                reason: EndReason::NewDevice,
                at: now,
                actor: insert.actor.clone(),
                reconstitute_until: None,
                retention: insert.ended_retention,
            };
            for victim in plan::evictions(live, limit, &session)? {
                self.plan_end(
                    &state,
                    &victim.id,
                    &ending,
                    EndReason::NewDevice,
                    &mut change,
                );
            }
        }

        if insert.reconstitute {
            let candidates = self.sessions_of(&state.tombstones, &session.subject);
            if let Some(tomb) = plan::pick_tombstone(&candidates, &session) {
                change
                    .sessions
                    .push(Arc::new(plan::reconstitute(&mut session, tomb)));
            }
        }
        let session = Arc::new(session);
        change
            .events
            .insert(0, plan::created_event(&session, &insert.actor));
        change.sessions.push(Arc::clone(&session));
        let events = self.commit(state, change).await?;
        Ok(Inserted { session, events })
    }

    async fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> Result<Option<(Arc<Session>, AuditEvent)>, StoreError> {
        let state = self.write_lock().await?;
        let current = self.get_by_id(&next.id);
        if !current.is_some_and(|c| c.is_live() && c.version == version) {
            return Ok(None);
        }
        let next = Arc::new(next);
        let change = Change {
            sessions: vec![Arc::clone(&next)],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(Some((next, events.remove(0))))
    }

    async fn touch(&self, id: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        let key = IdKey::of(id);
        let Some(hash) = self.by_id.read().get(&key).copied() else {
            return Ok(());
        };
        let touch = {
            let mut shard = self.by_hash[shard_of(&hash)].write();
            let Some(record) = shard.get(&hash) else {
                return Ok(());
            };
            let mut next = record::decode(hash, record)?;
            if !next.is_live() || next.last_seen_at >= at {
                return Ok(());
            }
            let old_deadline = next.next_deadline().0;
            next.last_seen_at = at;
            if let Some(idle) = next.idle.as_mut() {
                idle.at = at.plus(idle.lifetime());
            }
            let new_deadline = next.next_deadline().0;
            let touch = Touch {
                id: next.id.clone(),
                last_seen_at: at,
                idle_at: next.idle.as_ref().map(|i| i.at),
                next_deadline: new_deadline,
            };
            shard.insert(hash, record::encode(&next)?.into_boxed_slice());
            let mut deadlines = self.deadlines.lock();
            deadlines.remove(&(old_deadline, key.clone()));
            deadlines.insert((new_deadline, key));
            touch
        };
        self.pending_touches.lock().insert(id.clone(), touch);
        Ok(())
    }

    async fn end(&self, id: &SessionId, ending: Ending) -> Result<EndedSessions, StoreError> {
        let state = self.write_lock().await?;
        let mut change = Change::default();
        let Some(ended) = self.plan_end(&state, id, &ending, ending.reason, &mut change) else {
            return Ok(EndedSessions::default());
        };
        let events = self.commit(state, change).await?;
        Ok(EndedSessions {
            sessions: vec![ended],
            events,
        })
    }

    async fn end_subject(
        &self,
        subject: &str,
        application: Option<&AppId>,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> Result<EndedSessions, StoreError> {
        let state = self.write_lock().await?;
        let mut change = Change::default();
        let in_scope = |s: &Session| {
            Some(&s.id) != except && application.is_none_or(|app| &s.application == app)
        };
        let mut sessions = Vec::new();
        for session in self.sessions_of(&state.subjects, subject) {
            if !in_scope(&session) {
                continue;
            }
            if let Some(ended) =
                self.plan_end(&state, &session.id, &ending, ending.reason, &mut change)
            {
                sessions.push(ended);
            }
        }
        if change.sessions.is_empty() {
            return Ok(EndedSessions::default());
        }
        let events = self.commit(state, change).await?;
        Ok(EndedSessions { sessions, events })
    }

    async fn application_sessions(
        &self,
        application: &AppId,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let state = self.writer.lock().await;
        Ok(state
            .subjects
            .all()
            .filter_map(|key| self.get_by_key(key))
            .filter(|s| &s.application == application)
            .take(limit)
            .collect())
    }

    async fn live_counts(&self) -> Result<Vec<LiveCount>, StoreError> {
        Ok(self.live.lock().clone().into_counts())
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Arc<Session>>, StoreError> {
        let candidates: Vec<(Timestamp, IdKey)> = self
            .deadlines
            .lock()
            .range(up_to(now))
            .take(limit.saturating_mul(2).max(16))
            .cloned()
            .collect();
        let mut due = Vec::new();
        for (at, key) in candidates {
            match self.get_by_key(&key) {
                Some(s) if s.is_live() && s.next_deadline().0 == at => due.push(s),
                Some(s) if s.is_live() => {
                    // A touch raced with another change: keep only the true entry.
                    let mut deadlines = self.deadlines.lock();
                    deadlines.remove(&(at, key.clone()));
                    deadlines.insert((s.next_deadline().0, key));
                }
                _ => {
                    self.deadlines.lock().remove(&(at, key));
                }
            }
            if due.len() == limit {
                break;
            }
        }
        Ok(due)
    }

    async fn purge(&self, now: Timestamp) -> Result<usize, StoreError> {
        let state = self.write_lock().await?;
        let expired: Vec<SessionId> = state
            .purges
            .range(up_to(now))
            .take(10_000)
            .map(|(_, key)| key.id())
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let count = expired.len();
        let change = Change {
            purged: expired,
            ..Change::default()
        };
        self.commit(state, change).await?;
        Ok(count)
    }

    async fn append_event(&self, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        let state = self.write_lock().await?;
        let change = Change {
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(events.remove(0))
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        self.journal.events(query).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.journal.ping().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let touches: Vec<Touch> = self
            .pending_touches
            .lock()
            .drain()
            .map(|(_, t)| t)
            .collect();
        if touches.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.journal.commit_touches(&touches).await {
            // Keep them for the next flush unless a newer touch arrived meanwhile.
            let mut pending = self.pending_touches.lock();
            for touch in touches {
                pending.entry(touch.id.clone()).or_insert(touch);
            }
            return Err(err);
        }
        Ok(())
    }
}

impl<J: Journal> ApplicationStore for CachedStore<J> {
    async fn add_application(
        &self,
        app: Application,
        event: AuditEvent,
    ) -> Result<AuditEvent, StoreError> {
        let state = self.write_lock().await?;
        if self
            .applications
            .read()
            .values()
            .any(|a| a.name == app.name || a.id == app.id)
        {
            return Err(StoreError::NameTaken(app.name));
        }
        let change = Change {
            applications: vec![app],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(events.remove(0))
    }

    async fn find_application(&self, id: &AppId) -> Result<Option<Application>, StoreError> {
        Ok(self.applications.read().get(id).cloned())
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        let mut apps: Vec<Application> = self.applications.read().values().cloned().collect();
        apps.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(apps)
    }

    async fn update_application(
        &self,
        version: u64,
        next: Application,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let state = self.write_lock().await?;
        {
            let apps = self.applications.read();
            if apps.get(&next.id).is_none_or(|a| a.version != version) {
                return Ok(None);
            }
            if apps
                .values()
                .any(|a| a.name == next.name && a.id != next.id)
            {
                return Err(StoreError::NameTaken(next.name));
            }
        }
        let change = Change {
            applications: vec![next],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(Some(events.remove(0)))
    }

    async fn remove_application(
        &self,
        id: &AppId,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let state = self.write_lock().await?;
        if !self.applications.read().contains_key(id) {
            return Ok(None);
        }
        let change = Change {
            removed_applications: vec![id.clone()],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(Some(events.remove(0)))
    }
}

impl<J: Journal> ApiKeyStore for CachedStore<J> {
    async fn add_api_key(&self, key: ApiKey, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        let state = self.write_lock().await?;
        let change = Change {
            api_keys: vec![key],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(events.remove(0))
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.api_keys.read().get(hash).cloned())
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys: Vec<ApiKey> = self.api_keys.read().values().cloned().collect();
        keys.sort_by_key(|k| (k.created_at, k.id.clone()));
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> Result<Option<(ApiKey, AuditEvent)>, StoreError> {
        let state = self.write_lock().await?;
        let Some(mut key) = self
            .api_keys
            .read()
            .values()
            .find(|k| &k.id == id && k.revoked_at.is_none())
            .cloned()
        else {
            return Ok(None);
        };
        key.revoked_at = Some(at);
        let change = Change {
            api_keys: vec![key.clone()],
            events: vec![event],
            ..Change::default()
        };
        let mut events = self.commit(state, change).await?;
        Ok(Some((key, events.remove(0))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::application::Principal;
    use crate::engine::{Engine, NewSession};
    use crate::policy::PolicySet;
    use crate::random::SeededRandom;
    use crate::session::EndReason;
    use crate::time::{Clock, ManualClock, Timestamp};

    use super::MemoryStore;

    /// An engine on a fresh memory store, its clock at a fixed time.
    fn engine(seed: u64) -> (Engine<MemoryStore>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
        let engine = Engine::new(
            MemoryStore::new(),
            PolicySet::default(),
            clock.clone(),
            Arc::new(SeededRandom::new(seed)),
        );
        (engine, clock)
    }

    /// A password sign-in of `subject` to the legacy application.
    fn new_session(subject: &str) -> NewSession {
        NewSession {
            subject: subject.into(),
            application: Some(crate::application::legacy_app()),
            auth: crate::session::AuthContext {
                methods: vec!["pwd".into()],
                level: 1,
            },
            ..NewSession::default()
        }
    }

    /// The subject index keys lists by a hash of the subject: should two subjects' hashes
    /// collide, listing, limiting or ending one subject's sessions must never reach the other's.
    #[tokio::test]
    async fn subjects_whose_hashes_collide_never_share_sessions() {
        use crate::event::Actor;
        use crate::store::{Ending, SessionStore};

        let (engine, clock) = engine(9);
        let operator = Principal::operator();
        let alice = engine
            .create(new_session("alice"), &operator)
            .await
            .unwrap();
        let bob = engine.create(new_session("bob"), &operator).await.unwrap();
        let store = engine.store();
        // What a collision makes: bob's session listed under alice's key.
        store
            .writer
            .lock()
            .await
            .subjects
            .add("alice", super::IdKey::of(&bob.session.id));

        let listed = store.list_subject("alice").await.unwrap();
        assert_eq!(
            listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
            vec![&alice.session.id]
        );
        let ended = store
            .end_subject(
                "alice",
                None,
                None,
                Ending {
                    reason: EndReason::RevokedAdmin,
                    at: clock.now(),
                    actor: Actor("test".into()),
                    reconstitute_until: None,
                    retention: Duration::from_secs(60),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            ended.sessions.iter().map(|s| &s.id).collect::<Vec<_>>(),
            vec![&alice.session.id]
        );
        let bob_now = store.find_by_id(&bob.session.id).await.unwrap().unwrap();
        assert!(bob_now.is_live(), "bob's session was ended with alice's");
    }

    /// A live session read from its record is indexed from its outline. A record restored
    /// twice under one id (the later one ended) goes through the general path, which must
    /// take the earlier one out of every index it was put in.
    #[tokio::test]
    async fn a_restored_record_replaced_by_its_ending_is_not_listed() {
        use crate::session::Ended;
        use crate::store::SessionStore;

        let (engine, clock) = engine(4);
        let operator = Principal::operator();
        let live = engine
            .create(new_session("alice"), &operator)
            .await
            .unwrap()
            .session;
        let other = engine
            .create(new_session("alice"), &operator)
            .await
            .unwrap()
            .session;
        let mut ended = (*live).clone();
        ended.version += 1;
        ended.ended = Some(Ended {
            reason: EndReason::Logout,
            at: clock.now(),
            reconstitute_until: None,
            reconstituted_into: None,
            purge_at: clock.now().plus(Duration::from_secs(60)),
        });
        let restored =
            MemoryStore::open(super::MemoryJournal::default(), super::Snapshot::default());
        {
            let mut restoring = restored.restoring().unwrap();
            let record =
                |s: &crate::session::Session| super::record::encode(s).unwrap().into_boxed_slice();
            restoring
                .add([
                    super::Restored::Record(live.token_hash, record(&live)),
                    super::Restored::Record(other.token_hash, record(&other)),
                ])
                .unwrap();
            restoring
                .add([super::Restored::Record(ended.token_hash, record(&ended))])
                .unwrap();
        }
        let listed = restored.list_subject("alice").await.unwrap();
        assert_eq!(
            listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
            vec![&other.id]
        );
        assert!(
            !restored
                .find_by_id(&live.id)
                .await
                .unwrap()
                .unwrap()
                .is_live()
        );
    }

    /// Nothing is kept for a session once it is purged, whatever ended it: a long run of
    /// sessions of subjects seen once (the soak's load) must not grow any index.
    #[tokio::test]
    async fn a_purged_session_leaves_nothing_behind_in_any_index() {
        let (engine, clock) = engine(5);
        let operator = Principal::operator();
        for n in 0..60 {
            let issued = engine
                .create(new_session(&format!("subject-{n}")), &operator)
                .await
                .unwrap();
            match n % 3 {
                0 => engine
                    .logout(issued.token.expose(), &operator)
                    .await
                    .unwrap(),
                1 => engine
                    .end(&issued.session.id, EndReason::RevokedAdmin, &operator)
                    .await
                    .unwrap(),
                _ => {} // left to time out
            }
        }
        // Past every lifetime, reconstitution window and retention.
        clock.advance(Duration::from_secs(40 * 24 * 3600));
        engine.sweep().await.unwrap();
        clock.advance(Duration::from_secs(40 * 24 * 3600));
        engine.sweep().await.unwrap();

        let store = engine.store();
        let state = store.writer.lock().await;
        assert!(
            state.subjects.is_empty(),
            "{:?}",
            state.subjects.lists.len()
        );
        assert!(
            state.tombstones.is_empty(),
            "{:?}",
            state.tombstones.lists.len()
        );
        assert!(state.children.is_empty());
        assert!(state.purges.is_empty());
        assert!(store.by_id.read().is_empty());
        assert!(store.deadlines.lock().is_empty());
        assert!(store.by_hash.iter().all(|shard| shard.read().is_empty()));
        assert!(store.live.lock().clone().into_counts().is_empty());
    }
}
