//! The storage contract every backend implements, and passes the conformance suite for.
//!
//! Rules for implementers (after matrix-authentication-service's repository recipe):
//! lookups return `Ok(None)` for "not there"; every method that changes state is atomic, writes
//! its audit events in the same unit of work and returns them with their positions; time and
//! randomness come from the caller, never from the store.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::api_key::ApiKeyStore;
use crate::application::{AppId, ApplicationStore};
use crate::event::{Actor, AuditEvent, EventQuery};
use crate::policy::OnLimit;
use crate::session::{EndReason, Session};
use crate::time::Timestamp;
use crate::token::{SessionId, TokenHash};

/// What a store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot answer; callers fail closed (nobody is let in).
    #[error("the session store is unavailable: {0}")]
    Unavailable(#[source] BackendError),
    /// The subject has reached its session limit and the policy says `deny`.
    #[error("the subject has reached its session limit")]
    LimitReached,
    /// The new session's parent is no longer a live session of its subject (it ended while
    /// the child was being created).
    #[error("the parent session is not a live session of this subject")]
    ParentNotLive,
    /// Stored data could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Another entity already has this unique name.
    #[error("the name \"{0}\" is taken")]
    NameTaken(String),
    /// The backend made the change but could not make it durable as configured (replicas did
    /// not confirm it in time): answered like [`StoreError::Unavailable`], and a retry is
    /// safe. The change's events are in the trail already, so the caller still publishes
    /// them.
    #[error("the session store is unavailable: {source}")]
    Unconfirmed {
        /// The committed events, with their positions.
        events: Vec<AuditEvent>,
        /// Why it is not confirmed.
        #[source]
        source: BackendError,
    },
}

/// Why a backend could not answer: its own error, kept (cheaply shared, as one failed batch
/// answers many waiters), or a message where there is no error value.
#[derive(Debug, Clone)]
pub struct BackendError(Arc<dyn std::error::Error + Send + Sync>);

#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl BackendError {
    /// Keeps `err` as the source.
    pub fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(err))
    }
}

impl From<String> for BackendError {
    fn from(message: String) -> Self {
        Self(Arc::new(Message(message)))
    }
}

impl From<&str> for BackendError {
    fn from(message: &str) -> Self {
        Self::from(message.to_owned())
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A per-subject cap on live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimit {
    /// Live sessions allowed; the new one counts.
    pub max: u32,
    /// What to do when it is reached.
    pub on_limit: OnLimit,
}

/// Everything needed to insert a session atomically.
#[derive(Debug, Clone)]
pub struct Insert {
    /// The new session.
    pub session: Session,
    /// The subject's cap, enforced atomically with the insert.
    pub limit: Option<SessionLimit>,
    /// Take back the data of the subject's latest timed-out session of the same policy.
    pub reconstitute: bool,
    /// Who asked.
    pub actor: Actor,
    /// How long the store keeps sessions it evicts.
    pub ended_retention: Duration,
}

/// What an insert did.
#[derive(Debug, Clone)]
pub struct Inserted {
    /// The session as stored.
    pub session: Arc<Session>,
    /// The committed events: `session.created` and any `session.ended` (`new_device`, `parent_ended`).
    pub events: Vec<AuditEvent>,
}

/// How to end sessions.
#[derive(Debug, Clone)]
pub struct Ending {
    /// Why.
    pub reason: EndReason,
    /// When it counts as ended.
    pub at: Timestamp,
    /// Who ended it.
    pub actor: Actor,
    /// Keep the data for re-constitution until then (timeouts only).
    pub reconstitute_until: Option<Timestamp>,
    /// How long to keep the ended record (so validation can say why it was refused).
    pub retention: Duration,
}

/// What an ending did.
#[derive(Debug, Clone, Default)]
pub struct EndedSessions {
    /// The sessions ended by the request itself.
    pub sessions: Vec<Arc<Session>>,
    /// Committed events, including those of children ended with `parent_ended`.
    pub events: Vec<AuditEvent>,
}

/// How many live sessions one application holds under one policy: what an operator watches
/// per application and policy ([`SessionStore::live_counts`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LiveCount {
    /// The application the sessions belong to.
    pub application: AppId,
    /// The policy they were created under.
    pub policy: String,
    /// Live sessions of that application and policy (children count as sessions of their own).
    pub sessions: u64,
}

/// Counts live sessions by application and policy, for stores that walk their sessions to
/// answer [`SessionStore::live_counts`] (or keep the count as sessions change). A pair's names
/// are copied once, when it is first seen, not per session.
#[derive(Debug, Clone, Default)]
pub struct LiveTally(HashMap<AppId, HashMap<String, u64>>);

impl LiveTally {
    /// Counts `session` if it is live.
    pub fn add(&mut self, session: &Session) {
        if session.is_live() {
            self.add_live(&session.application, &session.policy);
        }
    }

    /// Counts a live session of `application` and `policy`.
    pub fn add_live(&mut self, application: &AppId, policy: &str) {
        let policies = match self.0.get_mut(application) {
            Some(policies) => policies,
            None => self.0.entry(application.clone()).or_default(),
        };
        match policies.get_mut(policy) {
            Some(sessions) => *sessions += 1,
            None => {
                policies.insert(policy.to_owned(), 1);
            }
        }
    }

    /// Stops counting `session` if it is live (a pair counted down to none is dropped).
    pub fn remove(&mut self, session: &Session) {
        if !session.is_live() {
            return;
        }
        let Some(policies) = self.0.get_mut(&session.application) else {
            return;
        };
        if let Some(sessions) = policies.get_mut(session.policy.as_str()) {
            *sessions = sessions.saturating_sub(1);
            if *sessions == 0 {
                policies.remove(session.policy.as_str());
            }
        }
        if policies.is_empty() {
            self.0.remove(&session.application);
        }
    }

    /// One [`LiveCount`] per pair counted.
    pub fn into_counts(self) -> Vec<LiveCount> {
        self.0
            .into_iter()
            .flat_map(|(application, policies)| {
                policies
                    .into_iter()
                    .map(move |(policy, sessions)| LiveCount {
                        application: application.clone(),
                        policy,
                        sessions,
                    })
            })
            .collect()
    }
}

/// Everything the engine keeps: one store type bundles one store trait per entity, so the HTTP
/// layer and the binary carry one type parameter.
pub trait Store: SessionStore + ApplicationStore + ApiKeyStore {}

impl<T: SessionStore + ApplicationStore + ApiKeyStore> Store for T {}

/// The future an [`EventTrail`] answers.
pub type TrailFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AuditEvent, StoreError>> + Send + 'a>>;

/// The audit trail as services other than the engine write to it (the accounts): the
/// engine's store's [`SessionStore::append_event`] behind a pointer.
pub trait EventTrail: Send + Sync + 'static {
    /// Appends `event` and answers it with its position.
    fn append(&self, event: AuditEvent) -> TrailFuture<'_>;
}

/// A session store. See the module docs for the rules; `portcullis-store-tests` checks them.
pub trait SessionStore: Send + Sync + 'static {
    /// Whether this store shards by subject and needs tokens and ids to carry the subject's
    /// route ([`crate::token::subject_route`]); the engine then issues them accordingly.
    const ROUTES_BY_SUBJECT: bool = false;

    /// The session (live or recently ended) whose token hashes to `hash`.
    fn find_by_token(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<Arc<Session>>, StoreError>> + Send;

    /// The session (live or recently ended) with public id `id`.
    fn find_by_id(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<Arc<Session>>, StoreError>> + Send;

    /// The subject's live sessions, oldest first.
    fn list_subject(
        &self,
        subject: &str,
    ) -> impl Future<Output = Result<Vec<Arc<Session>>, StoreError>> + Send;

    /// Inserts a session, enforcing the limit atomically (evicting with `new_device`, or
    /// [`StoreError::LimitReached`]) and re-constituting when asked. A session with a parent is
    /// inserted only while the parent is a live session of the same subject, checked in the
    /// same atomic step ([`StoreError::ParentNotLive`]), so a child never outlives a parent
    /// that ended while it was being created.
    fn insert(&self, insert: Insert) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// Replaces a live session if it is still at `version` (rotation, elevation, new data).
    /// `Ok(None)` when it changed or ended meanwhile.
    fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<(Arc<Session>, AuditEvent)>, StoreError>> + Send;

    /// Records activity: `last_seen_at` moves to `at` (never back) and the idle deadline with it.
    /// Stores may persist touches lazily; [`SessionStore::flush`] writes them.
    fn touch(
        &self,
        id: &SessionId,
        at: Timestamp,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends a live session and its live children (`parent_ended`). Ending a session that is
    /// not live does nothing, so each ending is recorded exactly once.
    fn end(
        &self,
        id: &SessionId,
        ending: Ending,
    ) -> impl Future<Output = Result<EndedSessions, StoreError>> + Send;

    /// Ends every live session of `subject` except `except`; with `application`, only that
    /// application's sessions (and, as ever, their children).
    fn end_subject(
        &self,
        subject: &str,
        application: Option<&AppId>,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> impl Future<Output = Result<EndedSessions, StoreError>> + Send;

    /// Up to `limit` live sessions of `application` (in no particular order). Used to end an
    /// application's sessions when it is removed, so it may cost a walk of every live session.
    fn application_sessions(
        &self,
        application: &AppId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Session>>, StoreError>> + Send;

    /// How many live sessions each application holds under each policy, one entry per pair
    /// that has at least one (in no particular order): a pair whose sessions all ended is
    /// absent. Live means not ended, as in [`SessionStore::list_subject`]: a session past a
    /// deadline the sweeper has not reached yet still counts. May cost a walk of every live
    /// session; the server calls it on an interval, never per request.
    fn live_counts(&self) -> impl Future<Output = Result<Vec<LiveCount>, StoreError>> + Send;

    /// Up to `limit` live sessions whose nearest deadline is at or before `now`, in deadline
    /// order. Costs O(returned), not O(live sessions).
    fn due(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Session>>, StoreError>> + Send;

    /// Forgets ended sessions whose retention is over; returns how many.
    fn purge(&self, now: Timestamp) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Appends an event that changes no session (an account change, a failed or throttled
    /// sign-in) to the same trail as the session events, and answers it with its position.
    fn append_event(
        &self,
        event: AuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, StoreError>> + Send;

    /// Audit events, oldest first.
    fn events(
        &self,
        query: &EventQuery,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;

    /// Whether the backend answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes what the store has coalesced (touches).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::{BackendError, StoreError};

    #[derive(Debug, thiserror::Error)]
    #[error("pool closed")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn an_unavailable_store_keeps_the_backends_error_and_its_chain() {
        let inner = Inner(std::io::Error::other("connection refused"));
        let err = StoreError::Unavailable(BackendError::new(inner));
        assert_eq!(
            err.to_string(),
            "the session store is unavailable: pool closed"
        );
        let kept = err.source().expect("the backend's error is the source");
        assert_eq!(kept.to_string(), "pool closed");
        assert_eq!(
            kept.source().map(ToString::to_string).as_deref(),
            Some("connection refused"),
            "and its own source after it"
        );
        let shared = BackendError::from("the reader has stopped");
        assert_eq!(shared.clone().to_string(), "the reader has stopped");
    }
}
