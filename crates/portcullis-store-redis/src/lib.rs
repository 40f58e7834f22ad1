//! Redis session store, standalone or Redis Cluster: any number of stateless Portcullis nodes
//! share it.
//!
//! **Key design.** Everything about one subject lives under one hash tag, the subject's route
//! (`{a3}`, one of 256, see [`portcullis_core::subject_route`]); the engine issues tokens whose
//! SHA-256 starts with that route byte and session ids that carry it, so a validation finds its
//! session in one round trip (`GET pc:{a3}:s:<token hash>`, a compact binary record, see
//! [`record`]), and every multi-key change —
//! limits, rotation, "end all but one", cascades — is one Lua script on one slot.
//!
//! **Changes** are planned in Rust with the same rules as every store (`portcullis_core::plan`)
//! from what was read, then applied by `commit.lua` only if nothing it was planned from changed
//! (session versions and a per-subject version); otherwise the plan is redone. Audit events are
//! appended to the tag's stream in the same script.
//!
//! **Expiry.** Deadlines are indexed per tag (`pc:{a3}:d`) for the sweeper (O(expired) + 256
//! range reads); ended sessions get a Redis TTL at their purge time, and live ones a safety TTL
//! one day past their absolute deadline.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use portcullis_core::{
    ApiKey, ApiKeyCache, AuditEvent, EndReason, EndedSessions, Ending, EventQuery, Insert,
    Inserted, PublicId, Session, SessionId, SessionStore, StoreError, Timestamp, TokenHash, plan,
    subject_route,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script};

/// How long a node trusts an API key it looked up (revocation reaches other nodes within this).
pub const API_KEY_CACHE: Duration = Duration::from_secs(1);

/// Retries of a change whose inputs moved under it (many racing creates for one subject).
const ATTEMPTS: usize = 200;

/// The event-stream index of the API-key tag (session tags are 0–255).
const KEY_TAG_INDEX: u64 = 256;

mod record;
mod users;

pub use users::RedisUserStore;

static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("commit.lua")));
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("touch.lua")));

/// What connecting can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Bad URL or no server.
    #[error("cannot connect to Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Bad prefix.
    #[error("invalid key prefix \"{0}\": use letters, digits, '-', '_' or ':'")]
    Prefix(String),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    api_keys: Arc<ApiKeyCache>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// One change: what must still hold, and what to write.
#[derive(Default)]
struct Plan {
    /// `[kind, key, expected]`; see `commit.lua`.
    checks: Vec<[String; 3]>,
    ops: Vec<Vec<Vec<u8>>>,
    keys: BTreeSet<String>,
    events: Vec<(u64, AuditEvent)>,
}

impl Plan {
    fn op(&mut self, parts: &[&str]) {
        if let Some(key) = parts.get(1) {
            self.keys.insert((*key).to_owned());
        }
        self.ops
            .push(parts.iter().map(|p| p.as_bytes().to_vec()).collect());
    }

    /// `SET key value` with a binary value.
    fn set(&mut self, key: &str, value: Vec<u8>) {
        self.keys.insert(key.to_owned());
        self.ops
            .push(vec![b"SET".to_vec(), key.as_bytes().to_vec(), value]);
    }

    /// The session record at `key` has `version` ("" = there is no record).
    fn check_version(&mut self, key: &str, version: &str) {
        self.keys.insert(key.to_owned());
        self.checks
            .push(["version".into(), key.into(), version.into()]);
    }

    /// The session record at `key` is live.
    fn check_live(&mut self, key: &str) {
        self.keys.insert(key.to_owned());
        self.checks.push(["live".into(), key.into(), String::new()]);
    }

    fn check_value(&mut self, key: &str, expected: &str) {
        self.keys.insert(key.to_owned());
        self.checks
            .push(["get".into(), key.into(), expected.into()]);
    }

    /// The script's arguments: the checks, then each operation with its length first.
    fn args(&self) -> Vec<Vec<u8>> {
        let mut args = Vec::with_capacity(1 + self.checks.len() * 3 + self.ops.len() * 4);
        args.push(self.checks.len().to_string().into_bytes());
        for check in &self.checks {
            args.extend(check.iter().map(|part| part.as_bytes().to_vec()));
        }
        for op in &self.ops {
            args.push(op.len().to_string().into_bytes());
            args.extend(op.iter().cloned());
        }
        args
    }
}

fn tag_of(route: u8) -> String {
    format!("{route:02x}")
}

fn stream_seq(id: &str, tag_index: u64) -> u64 {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    let n: u64 = n.parse().unwrap_or(0);
    (ms << 20) | (n.min(2047) << 9) | tag_index
}

impl RedisStore {
    /// Connects to `redis://host:port[/db][?prefix=P]` or `redis+cluster://h1:p1,h2:p2[?prefix=P]`.
    /// Every key starts with the prefix (default `pc`), so stores can share a server.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        let (url, prefix) = match url.split_once("?prefix=") {
            Some((url, prefix)) => (url, prefix.to_owned()),
            None => (url, "pc".to_owned()),
        };
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':'))
        {
            return Err(ConnectError::Prefix(prefix));
        }
        let conn = if let Some(nodes) = url.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = nodes
                .trim_end_matches('/')
                .split(',')
                .map(|n| format!("redis://{n}"))
                .collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(1))
                .retries(3)
                .build()?;
            Conn::Cluster(client.get_async_connection().await?)
        } else {
            let client = redis::Client::open(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(1);
            Conn::Single(client.get_connection_manager_with_config(config).await?)
        };
        Ok(Self {
            conn,
            prefix: prefix.into(),
            api_keys: Arc::new(ApiKeyCache::new(API_KEY_CACHE)),
        })
    }

    /// The accounts kept beside the sessions (under the same prefix).
    pub fn users(&self) -> RedisUserStore {
        RedisUserStore::new(self.clone())
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    async fn script<T: FromRedisValue, A: redis::ToRedisArgs>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[A],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        match &self.conn {
            Conn::Single(c) => invocation.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    fn key(&self, tag: &str, kind: &str, rest: &str) -> String {
        format!("{}:{{{tag}}}:{kind}:{rest}", self.prefix)
    }

    fn tag_key(&self, tag: &str, kind: &str) -> String {
        format!("{}:{{{tag}}}:{kind}", self.prefix)
    }

    fn session_key(&self, hash: &TokenHash) -> String {
        self.key(&tag_of(hash.0[0]), "s", &hash.to_hex())
    }

    fn id_key(&self, route: u8, id: &SessionId) -> String {
        self.key(&tag_of(route), "i", id.as_str())
    }

    fn subject_key(&self, subject: &str) -> String {
        self.key(&tag_of(subject_route(subject)), "u", subject)
    }

    fn version_key(&self, subject: &str) -> String {
        self.key(&tag_of(subject_route(subject)), "v", subject)
    }

    fn tombs_key(&self, subject: &str) -> String {
        self.key(&tag_of(subject_route(subject)), "t", subject)
    }

    fn children_key(&self, route: u8, parent: &SessionId) -> String {
        self.key(&tag_of(route), "c", parent.as_str())
    }

    async fn read(&self, hash: &TokenHash) -> Result<Option<Session>, StoreError> {
        let record: Option<Vec<u8>> = self
            .query(redis::cmd("GET").arg(self.session_key(hash)))
            .await?;
        record
            .map(|bytes| record::decode(*hash, &bytes))
            .transpose()
    }

    async fn read_members(
        &self,
        set_key: &str,
        sorted: bool,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let members: Vec<String> = if sorted {
            self.query(redis::cmd("ZRANGE").arg(set_key).arg(0).arg(-1))
                .await?
        } else {
            self.query(redis::cmd("SMEMBERS").arg(set_key)).await?
        };
        let mut sessions = Vec::with_capacity(members.len());
        for member in members {
            let Some(hash) = TokenHash::from_hex(&member) else {
                continue;
            };
            match self.read(&hash).await? {
                Some(s) => sessions.push(Arc::new(s)),
                // Expired by its TTL behind our back: drop the dangling index entry.
                None => {
                    let cmd = if sorted { "ZREM" } else { "SREM" };
                    let _: i64 = self
                        .query(redis::cmd(cmd).arg(set_key).arg(&member))
                        .await?;
                }
            }
        }
        Ok(sessions)
    }

    /// Up to `limit` members of sorted set `key` scored at or before `now`, earliest first.
    async fn members_until(
        &self,
        key: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.query(
            redis::cmd("ZRANGE")
                .arg(key)
                .arg("-inf")
                .arg(now.as_millis())
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit),
        )
        .await
    }

    async fn subject_version(&self, subject: &str) -> Result<String, StoreError> {
        let v: Option<String> = self
            .query(redis::cmd("GET").arg(self.version_key(subject)))
            .await?;
        Ok(v.unwrap_or_default())
    }

    fn guard_subject(&self, plan: &mut Plan, subject: &str, version: &str) {
        let key = self.version_key(subject);
        plan.check_value(&key, version);
        plan.op(&["INCR", &key]);
    }

    /// Adds the writes that make the store agree with `next` (replacing `prev`).
    fn write(
        &self,
        plan: &mut Plan,
        prev: Option<&Session>,
        next: &Session,
    ) -> Result<(), StoreError> {
        let route = next.token_hash.0[0];
        let key = self.session_key(&next.token_hash);
        let member = next.token_hash.to_hex();
        let deadlines = self.tag_key(&tag_of(route), "d");
        let subject = self.subject_key(&next.subject);
        let children = next.parent.as_ref().map(|p| self.children_key(route, p));
        if let Some(prev) = prev.filter(|p| p.token_hash != next.token_hash) {
            let old = prev.token_hash.to_hex();
            plan.op(&["DEL", &self.session_key(&prev.token_hash)]);
            plan.op(&["ZREM", &deadlines, &old]);
            plan.op(&["ZREM", &subject, &old]);
            if let Some(children) = &children {
                plan.op(&["SREM", children, &old]);
            }
        }
        plan.set(&key, record::encode(next)?);
        let id_key = self.id_key(route, &next.id);
        plan.op(&["SET", &id_key, &member]);
        let tombs = self.tombs_key(&next.subject);
        match &next.ended {
            None => {
                // TTLs are relative to the session's own times, so they agree with any clock.
                let expire = (next.absolute.at.as_millis() - next.last_seen_at.as_millis()
                    + 86_400_000)
                    .max(1)
                    .to_string();
                plan.op(&[
                    "ZADD",
                    &deadlines,
                    &next.next_deadline().0.as_millis().to_string(),
                    &member,
                ]);
                plan.op(&[
                    "ZADD",
                    &subject,
                    &next.created_at.as_millis().to_string(),
                    &member,
                ]);
                if let Some(children) = &children {
                    plan.op(&["SADD", children, &member]);
                }
                plan.op(&["PEXPIRE", &key, &expire]);
                plan.op(&["PEXPIRE", &id_key, &expire]);
            }
            Some(ended) => {
                let purge = ended.purge_at.as_millis().to_string();
                let ttl = (ended.purge_at.as_millis() - ended.at.as_millis())
                    .max(1)
                    .to_string();
                plan.op(&["ZREM", &deadlines, &member]);
                plan.op(&["ZREM", &subject, &member]);
                if let Some(children) = &children {
                    plan.op(&["SREM", children, &member]);
                }
                plan.op(&["ZADD", &self.tag_key(&tag_of(route), "p"), &purge, &member]);
                plan.op(&["PEXPIRE", &key, &ttl]);
                plan.op(&["PEXPIRE", &id_key, &ttl]);
                if ended.reconstitute_until.is_some() && ended.reconstituted_into.is_none() {
                    plan.op(&["SADD", &tombs, &member]);
                } else {
                    plan.op(&["SREM", &tombs, &member]);
                }
            }
        }
        Ok(())
    }

    fn event(
        &self,
        plan: &mut Plan,
        route: Option<u8>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        let (tag, index) = match route {
            Some(r) => (tag_of(r), u64::from(r)),
            None => ("k".to_owned(), KEY_TAG_INDEX),
        };
        let body = serde_json::to_string(&event).map_err(corrupt)?;
        plan.op(&["XADD", &self.tag_key(&tag, "e"), "*", "d", &body]);
        plan.events.push((index, event));
        Ok(())
    }

    /// Runs the plan; `None` when something it was planned from has changed.
    async fn commit(&self, plan: Plan) -> Result<Option<Vec<AuditEvent>>, StoreError> {
        let keys: Vec<String> = plan.keys.iter().cloned().collect();
        let reply: redis::Value = self.script(&COMMIT, &keys, &plan.args()).await?;
        let ids: Vec<String> = match reply {
            redis::Value::Int(0) => return Ok(None),
            other => Vec::<String>::from_redis_value(other).map_err(corrupt)?,
        };
        Ok(Some(
            plan.events
                .into_iter()
                .zip(ids)
                .map(|((index, mut event), id)| {
                    event.seq = stream_seq(&id, index);
                    event
                })
                .collect(),
        ))
    }

    /// Plans the ending of live session `session` and its live children.
    async fn plan_end_tree(
        &self,
        plan: &mut Plan,
        session: Arc<Session>,
        ending: &Ending,
        reason: EndReason,
    ) -> Result<Arc<Session>, StoreError> {
        let mut stack = vec![(session, reason)];
        let mut first = None;
        while let Some((current, reason)) = stack.pop() {
            let route = current.token_hash.0[0];
            plan.check_version(
                &self.session_key(&current.token_hash),
                &current.version.to_string(),
            );
            let record = Arc::new(plan::ended_record(&current, ending, reason));
            self.write(plan, Some(&current), &record)?;
            self.event(plan, Some(route), AuditEvent::ended(&record, &ending.actor))?;
            first.get_or_insert_with(|| Arc::clone(&record));
            let children = self
                .read_members(&self.children_key(route, &current.id), false)
                .await?;
            for child in children.into_iter().filter(|c| c.is_live()) {
                stack.push((child, EndReason::ParentEnded));
            }
        }
        first.ok_or_else(|| corrupt("nothing to end"))
    }

    async fn backoff(attempt: usize) {
        if attempt > 2 {
            tokio::time::sleep(Duration::from_micros(200 * (attempt as u64 % 8 + 1))).await;
        }
    }
}

impl SessionStore for RedisStore {
    const ROUTES_BY_SUBJECT: bool = true;

    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, StoreError> {
        Ok(self.read(hash).await?.map(Arc::new))
    }

    async fn find_by_id(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(route) = id.route(4) else {
            return Ok(None);
        };
        let member: Option<String> = self
            .query(redis::cmd("GET").arg(self.id_key(route, id)))
            .await?;
        let Some(hash) = member.as_deref().and_then(TokenHash::from_hex) else {
            return Ok(None);
        };
        Ok(self.read(&hash).await?.map(Arc::new))
    }

    async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut live: Vec<_> = self
            .read_members(&self.subject_key(subject), true)
            .await?
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        live.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(live)
    }

    async fn insert(&self, insert: Insert) -> Result<Inserted, StoreError> {
        for attempt in 0..ATTEMPTS {
            let mut session = insert.session.clone();
            let route = session.token_hash.0[0];
            let mut plan = Plan::default();
            let version = self.subject_version(&session.subject).await?;
            self.guard_subject(&mut plan, &session.subject, &version);
            let mut ended_events = Plan::default();
            if let Some(limit) = insert.limit {
                let live = self.list_subject(&session.subject).await?;
                let ending = Ending {
                    reason: EndReason::NewDevice,
                    at: session.created_at,
                    actor: insert.actor.clone(),
                    reconstitute_until: None,
                    retention: insert.ended_retention,
                };
                for victim in plan::evictions(live, limit)? {
                    self.plan_end_tree(&mut ended_events, victim, &ending, EndReason::NewDevice)
                        .await?;
                }
            }
            if insert.reconstitute {
                let tombs = self
                    .read_members(&self.tombs_key(&session.subject), false)
                    .await?;
                if let Some(tomb) = plan::pick_tombstone(&tombs, &session) {
                    plan.check_version(
                        &self.session_key(&tomb.token_hash),
                        &tomb.version.to_string(),
                    );
                    let used = plan::reconstitute(&mut session, tomb);
                    self.write(&mut plan, Some(tomb), &used)?;
                }
            }
            plan.check_version(&self.session_key(&session.token_hash), "");
            self.write(&mut plan, None, &session)?;
            self.event(
                &mut plan,
                Some(route),
                plan::created_event(&session, &insert.actor),
            )?;
            // Endings after the creation, as the other stores record them.
            plan.checks.extend(ended_events.checks);
            plan.ops.extend(ended_events.ops);
            plan.keys.extend(ended_events.keys);
            plan.events.extend(ended_events.events);
            if let Some(events) = self.commit(plan).await? {
                return Ok(Inserted {
                    session: Arc::new(session),
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> Result<Option<(Arc<Session>, AuditEvent)>, StoreError> {
        let Some(current) = self.find_by_id(&next.id).await? else {
            return Ok(None);
        };
        if !current.is_live() || current.version != version {
            return Ok(None);
        }
        let mut plan = Plan::default();
        plan.check_version(&self.session_key(&current.token_hash), &version.to_string());
        plan.check_live(&self.session_key(&current.token_hash));
        if next.token_hash != current.token_hash {
            plan.check_version(&self.session_key(&next.token_hash), "");
        }
        self.write(&mut plan, Some(&current), &next)?;
        self.event(&mut plan, Some(next.token_hash.0[0]), event)?;
        Ok(self
            .commit(plan)
            .await?
            .map(|mut events| (Arc::new(next), events.remove(0))))
    }

    async fn touch(&self, id: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        let Some(route) = id.route(4) else {
            return Ok(());
        };
        let member: Option<String> = self
            .query(redis::cmd("GET").arg(self.id_key(route, id)))
            .await?;
        let Some(member) = member else { return Ok(()) };
        let Some(hash) = TokenHash::from_hex(&member) else {
            return Ok(());
        };
        let keys = [self.session_key(&hash), self.tag_key(&tag_of(route), "d")];
        let _: i64 = self
            .script(&TOUCH, &keys, &[at.as_millis().to_string(), member])
            .await?;
        Ok(())
    }

    async fn end(&self, id: &SessionId, ending: Ending) -> Result<EndedSessions, StoreError> {
        for attempt in 0..ATTEMPTS {
            let Some(current) = self.find_by_id(id).await?.filter(|s| s.is_live()) else {
                return Ok(EndedSessions::default());
            };
            let mut plan = Plan::default();
            let version = self.subject_version(&current.subject).await?;
            self.guard_subject(&mut plan, &current.subject, &version);
            let first = self
                .plan_end_tree(&mut plan, current, &ending, ending.reason)
                .await?;
            if let Some(events) = self.commit(plan).await? {
                return Ok(EndedSessions {
                    sessions: vec![first],
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn end_subject(
        &self,
        subject: &str,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> Result<EndedSessions, StoreError> {
        for attempt in 0..ATTEMPTS {
            let mut plan = Plan::default();
            let version = self.subject_version(subject).await?;
            self.guard_subject(&mut plan, subject, &version);
            let mut direct = Vec::new();
            for session in self.list_subject(subject).await? {
                if Some(&session.id) != except
                    && !plan.keys.contains(&self.session_key(&session.token_hash))
                {
                    direct.push(
                        self.plan_end_tree(&mut plan, session, &ending, ending.reason)
                            .await?,
                    );
                }
            }
            if direct.is_empty() {
                return Ok(EndedSessions::default());
            }
            if let Some(events) = self.commit(plan).await? {
                return Ok(EndedSessions {
                    sessions: direct,
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut due = Vec::new();
        for route in 0..=255u8 {
            let key = self.tag_key(&tag_of(route), "d");
            let members = self.members_until(&key, now, limit).await?;
            for member in members {
                let Some(hash) = TokenHash::from_hex(&member) else {
                    continue;
                };
                match self.read(&hash).await? {
                    Some(s) if s.is_live() && s.next_deadline().0 <= now => due.push(Arc::new(s)),
                    Some(s) if s.is_live() => {
                        let score = s.next_deadline().0.as_millis();
                        let _: i64 = self
                            .query(redis::cmd("ZADD").arg(&key).arg(score).arg(&member))
                            .await?;
                    }
                    _ => {
                        let _: i64 = self
                            .query(redis::cmd("ZREM").arg(&key).arg(&member))
                            .await?;
                    }
                }
            }
        }
        due.sort_by(|a, b| (a.next_deadline().0, &a.id).cmp(&(b.next_deadline().0, &b.id)));
        due.truncate(limit);
        Ok(due)
    }

    async fn purge(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut purged = 0;
        for route in 0..=255u8 {
            let key = self.tag_key(&tag_of(route), "p");
            let members = self.members_until(&key, now, 1000).await?;
            for member in members {
                let mut plan = Plan::default();
                plan.op(&["ZREM", &key, &member]);
                if let Some(hash) = TokenHash::from_hex(&member)
                    && let Some(session) = self.read(&hash).await?
                {
                    plan.op(&["DEL", &self.session_key(&hash)]);
                    plan.op(&["DEL", &self.id_key(route, &session.id)]);
                    plan.op(&["SREM", &self.tombs_key(&session.subject), &member]);
                }
                self.commit(plan).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let tags: Vec<(String, u64)> = match (&query.subject, &query.session_id) {
            (Some(subject), _) => vec![(
                tag_of(subject_route(subject)),
                u64::from(subject_route(subject)),
            )],
            (None, Some(id)) => match id.route(4) {
                Some(r) => vec![(tag_of(r), u64::from(r))],
                None => return Ok(Vec::new()),
            },
            (None, None) => (0..=255u8)
                .map(|r| (tag_of(r), u64::from(r)))
                .chain([("k".to_owned(), KEY_TAG_INDEX)])
                .collect(),
        };
        let mut found = Vec::new();
        for (tag, index) in tags {
            let key = self.tag_key(&tag, "e");
            let mut start = format!("{}-0", query.after >> 20);
            let mut matched = 0;
            loop {
                let page: Vec<(String, HashMap<String, String>)> = self
                    .query(
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg(&start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(500),
                    )
                    .await?;
                let last = page.last().map(|(id, _)| id.clone());
                for (id, fields) in &page {
                    let seq = stream_seq(id, index);
                    let Some(body) = fields.get("d") else {
                        continue;
                    };
                    if seq <= query.after {
                        continue;
                    }
                    let mut event: AuditEvent = serde_json::from_str(body).map_err(corrupt)?;
                    event.seq = seq;
                    if query.matches(&event) {
                        found.push(event);
                        matched += 1;
                    }
                }
                match last {
                    Some(last) if page.len() == 500 && matched < query.limit => {
                        start = format!("({last}")
                    }
                    _ => break,
                }
            }
        }
        found.sort_by_key(|e| e.seq);
        found.truncate(query.limit);
        Ok(found)
    }

    async fn add_api_key(&self, key: ApiKey, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        let mut plan = Plan::default();
        let hex = key.key_hash.to_hex();
        let record = self.key("k", "a", &hex);
        plan.check_value(&record, "");
        plan.op(&[
            "SET",
            &record,
            &serde_json::to_string(&key).map_err(corrupt)?,
        ]);
        plan.op(&["SADD", &self.tag_key("k", "ak"), &hex]);
        plan.op(&["SET", &self.key("k", "ai", key.id.as_str()), &hex]);
        self.event(&mut plan, None, event)?;
        let mut events = self
            .commit(plan)
            .await?
            .ok_or_else(|| corrupt("an API key with this secret already exists"))?;
        Ok(events.remove(0))
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        if let Some(key) = self.api_keys.get(hash) {
            return Ok(Some(key));
        }
        let body: Option<String> = self
            .query(redis::cmd("GET").arg(self.key("k", "a", &hash.to_hex())))
            .await?;
        let key: Option<ApiKey> = body
            .map(|b| serde_json::from_str(&b).map_err(corrupt))
            .transpose()?;
        if let Some(key) = &key {
            self.api_keys.put(key);
        }
        Ok(key)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let hashes: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.tag_key("k", "ak")))
            .await?;
        let mut keys = Vec::new();
        for hex in hashes {
            let body: Option<String> = self
                .query(redis::cmd("GET").arg(self.key("k", "a", &hex)))
                .await?;
            if let Some(body) = body {
                keys.push(serde_json::from_str::<ApiKey>(&body).map_err(corrupt)?);
            }
        }
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> Result<Option<(ApiKey, AuditEvent)>, StoreError> {
        let hex: Option<String> = self
            .query(redis::cmd("GET").arg(self.key("k", "ai", id.as_str())))
            .await?;
        let Some(hex) = hex else { return Ok(None) };
        let record = self.key("k", "a", &hex);
        let body: Option<String> = self.query(redis::cmd("GET").arg(&record)).await?;
        let Some(body) = body else { return Ok(None) };
        let mut key: ApiKey = serde_json::from_str(&body).map_err(corrupt)?;
        if key.revoked_at.is_some() {
            return Ok(None);
        }
        key.revoked_at = Some(at);
        let mut plan = Plan::default();
        plan.check_value(&record, &body);
        plan.op(&[
            "SET",
            &record,
            &serde_json::to_string(&key).map_err(corrupt)?,
        ]);
        self.event(&mut plan, None, event)?;
        let Some(mut events) = self.commit(plan).await? else {
            return Ok(None);
        };
        self.api_keys.forget(&key.key_hash);
        Ok(Some((key, events.remove(0))))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
