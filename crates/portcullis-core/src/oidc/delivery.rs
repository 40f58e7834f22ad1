//! Back-channel logout deliveries: the outbox of OpenID Connect Back-Channel Logout 1.0.
//!
//! A session created for a client that registered a `backchannel_logout_uri` keeps that URI
//! ([`Session::back_channel_logout_uri`]). When such a session ends, for whatever reason, the store
//! writes a [`LogoutDelivery`] in the same atomic step as the ending, so no ending is ever
//! without its delivery, whichever node made it and whatever happens to that node next. Any node
//! then claims due deliveries for a lease ([`LogoutDeliveryStore::claim_deliveries`]), posts a
//! logout token and records the outcome; a node that dies mid-delivery lets its lease run out
//! and another node delivers. Deliveries are therefore at least once: the logout token's `jti`
//! is the same on every attempt, so a relying party can recognise a repeat.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{ProviderFuture, SigningAlg};
use crate::application::AppId;
use crate::session::{EndReason, Session};
use crate::time::Timestamp;
use crate::token::SessionId;

/// How long finished deliveries (delivered or given up) are kept for operators to read.
pub const DELIVERY_KEPT: Duration = Duration::from_secs(7 * 86_400);

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Not delivered yet: due at `next_attempt_at` (or claimed by a node until then).
    Pending,
    /// The client acknowledged it (200 or 204).
    Delivered,
    /// Given up: the client refused it, or it could not be delivered in time.
    Failed,
}

impl DeliveryState {
    /// Its name in the admin API and the stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One ended application session to be told to its client's back-channel logout endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutDelivery {
    /// The application session that ended: also the delivery's id (a session ends once).
    pub session: SessionId,
    /// Its SSO session (the parent), the `sid` of the logout token.
    pub sso_session: Option<SessionId>,
    /// The person (the `sub` of the logout token).
    pub subject: String,
    /// The client to tell.
    pub client: AppId,
    /// Why the session ended.
    pub reason: EndReason,
    /// When it ended.
    pub ended_at: Timestamp,
    /// Where the delivery stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Pending: when it may be tried next (a claim moves this to the end of its lease).
    /// Finished: when it finished.
    pub next_attempt_at: Timestamp,
    /// What the last failed attempt met (an HTTP status or a network error), for operators.
    pub last_error: Option<String>,
    /// The client's back-channel logout URI when the session was created: used when the
    /// client is gone by the time of delivery (its removal ended the session).
    pub uri: String,
    /// The algorithm the client's ID tokens were signed with when the session was created:
    /// its logout token's, when the client is gone by the time of delivery.
    pub alg: Option<SigningAlg>,
}

impl LogoutDelivery {
    /// The delivery an ended session calls for: `None` unless the session ended and its
    /// client had a back-channel logout URI when it was created.
    pub fn for_ended(session: &Session) -> Option<Self> {
        let ended = session.ended.as_ref()?;
        let uri = session.back_channel_logout_uri.clone()?;
        Some(Self {
            session: session.id.clone(),
            sso_session: session.parent.clone(),
            subject: session.subject.clone(),
            client: session.application.clone(),
            reason: ended.reason,
            ended_at: ended.at,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: ended.at,
            last_error: None,
            uri,
            alg: session.back_channel_logout_alg,
        })
    }

    /// Whether it is pending and due at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.state == DeliveryState::Pending && self.next_attempt_at <= now
    }

    /// The delivery after `attempt` (which counts as one more attempt); `None` when it is not
    /// pending any more (another node finished it while this one's lease ran out).
    pub fn after(&self, attempt: &Attempt) -> Option<Self> {
        if self.state != DeliveryState::Pending {
            return None;
        }
        let mut next = self.clone();
        next.attempts += 1;
        match &attempt.outcome {
            AttemptOutcome::Delivered => {
                next.state = DeliveryState::Delivered;
                next.next_attempt_at = attempt.at;
                next.last_error = None;
            }
            AttemptOutcome::Retry { at, error } => {
                next.next_attempt_at = *at;
                next.last_error = Some(error.clone());
            }
            AttemptOutcome::Failed { error } => {
                next.state = DeliveryState::Failed;
                next.next_attempt_at = attempt.at;
                next.last_error = Some(error.clone());
            }
        }
        Some(next)
    }

    /// The delivery an operator asked to try again at `now`; `None` unless it failed.
    pub fn retried(&self, now: Timestamp) -> Option<Self> {
        (self.state == DeliveryState::Failed).then(|| Self {
            state: DeliveryState::Pending,
            next_attempt_at: now,
            ..self.clone()
        })
    }
}

/// One attempt at a delivery and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// How it went.
    pub outcome: AttemptOutcome,
}

/// How an attempt went, and what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered: the delivery is done.
    Delivered,
    /// Failed in a way that may pass (a network error, a 5xx): try again at `at`.
    Retry {
        /// When to try again.
        at: Timestamp,
        /// What the attempt met.
        error: String,
    },
    /// Failed for good (the client refused the token, or time ran out): stop trying.
    Failed {
        /// What the attempt met.
        error: String,
    },
}

/// Which deliveries an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Only those in this state.
    pub state: Option<DeliveryState>,
    /// Only those to this client.
    pub client: Option<AppId>,
    /// At most this many, most recent ending first.
    pub limit: usize,
}

impl Default for DeliveryQuery {
    fn default() -> Self {
        Self {
            state: None,
            client: None,
            limit: 100,
        }
    }
}

impl DeliveryQuery {
    /// Whether `delivery` is one asked for (the limit aside).
    pub fn matches(&self, delivery: &LogoutDelivery) -> bool {
        self.state.is_none_or(|s| s == delivery.state)
            && self.client.as_ref().is_none_or(|c| c == &delivery.client)
    }
}

/// Orders deliveries as [`LogoutDeliveryStore::deliveries`] answers them: most recent ending
/// first, then by session id.
pub fn newest_first(a: &LogoutDelivery, b: &LogoutDelivery) -> std::cmp::Ordering {
    b.ended_at
        .cmp(&a.ended_at)
        .then_with(|| a.session.as_str().cmp(b.session.as_str()))
}

/// Keeps back-channel logout deliveries. Stores *add* them in the unit of work that ends the
/// session ([`crate::store::SessionStore::end`] and every other ending); this trait reads them
/// and moves them along. Object-safe: the deliverer holds one behind an `Arc`.
pub trait LogoutDeliveryStore: Send + Sync + 'static {
    /// Claims up to `limit` deliveries due at `now`, earliest due first: each is answered with
    /// `next_attempt_at` moved to `lease_until`, atomically, so a delivery claimed by one node
    /// is not claimed by another until the lease runs out (the claimer died, or is slow).
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> ProviderFuture<'_, Vec<LogoutDelivery>>;

    /// Records an attempt at the delivery of `session` ([`LogoutDelivery::after`]), atomically;
    /// `Ok(None)` when there is no such delivery or it is not pending.
    fn record_attempt<'a>(
        &'a self,
        session: &'a SessionId,
        attempt: &'a Attempt,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>>;

    /// Makes a failed delivery pending again, due at `now` ([`LogoutDelivery::retried`]);
    /// `Ok(None)` when there is no such delivery or it has not failed.
    fn retry_delivery<'a>(
        &'a self,
        session: &'a SessionId,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>>;

    /// The delivery of `session`.
    fn delivery<'a>(&'a self, session: &'a SessionId)
    -> ProviderFuture<'a, Option<LogoutDelivery>>;

    /// Deliveries matching `query`, most recent ending first ([`newest_first`]).
    fn deliveries<'a>(
        &'a self,
        query: &'a DeliveryQuery,
    ) -> ProviderFuture<'a, Vec<LogoutDelivery>>;

    /// How many deliveries are pending.
    fn pending_deliveries(&self) -> ProviderFuture<'_, u64>;

    /// Forgets deliveries that finished (delivered or failed) before `before`; answers how many.
    fn forget_deliveries(&self, before: Timestamp) -> ProviderFuture<'_, u64>;
}

/// Deliveries in process memory: the in-memory store's journal writes them with each ending
/// ([`crate::cache::MemoryJournal`]); clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryDeliveryStore(Arc<Mutex<BTreeMap<SessionId, LogoutDelivery>>>);

impl MemoryDeliveryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the deliveries of a committed change; a delivery already there is kept as it is.
    pub fn add(&self, deliveries: &[LogoutDelivery]) {
        let mut all = self.0.lock();
        for delivery in deliveries {
            all.entry(delivery.session.clone())
                .or_insert_with(|| delivery.clone());
        }
    }

    fn change(
        &self,
        session: &SessionId,
        next: impl FnOnce(&LogoutDelivery) -> Option<LogoutDelivery>,
    ) -> Option<LogoutDelivery> {
        let mut all = self.0.lock();
        let current = all.get_mut(session)?;
        let changed = next(current)?;
        *current = changed.clone();
        Some(changed)
    }
}

impl LogoutDeliveryStore for MemoryDeliveryStore {
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> ProviderFuture<'_, Vec<LogoutDelivery>> {
        let mut all = self.0.lock();
        let mut due: Vec<&mut LogoutDelivery> =
            all.values_mut().filter(|d| d.is_due(now)).collect();
        due.sort_by(|a, b| {
            a.next_attempt_at
                .cmp(&b.next_attempt_at)
                .then_with(|| a.session.as_str().cmp(b.session.as_str()))
        });
        let claimed: Vec<LogoutDelivery> = due
            .into_iter()
            .take(limit)
            .map(|d| {
                d.next_attempt_at = lease_until;
                d.clone()
            })
            .collect();
        Box::pin(async move { Ok(claimed) })
    }

    fn record_attempt<'a>(
        &'a self,
        session: &'a SessionId,
        attempt: &'a Attempt,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        let answer = self.change(session, |d| d.after(attempt));
        Box::pin(async move { Ok(answer) })
    }

    fn retry_delivery<'a>(
        &'a self,
        session: &'a SessionId,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        let answer = self.change(session, |d| d.retried(now));
        Box::pin(async move { Ok(answer) })
    }

    fn delivery<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        let answer = self.0.lock().get(session).cloned();
        Box::pin(async move { Ok(answer) })
    }

    fn deliveries<'a>(
        &'a self,
        query: &'a DeliveryQuery,
    ) -> ProviderFuture<'a, Vec<LogoutDelivery>> {
        let mut found: Vec<LogoutDelivery> = self
            .0
            .lock()
            .values()
            .filter(|d| query.matches(d))
            .cloned()
            .collect();
        found.sort_by(newest_first);
        found.truncate(query.limit);
        Box::pin(async move { Ok(found) })
    }

    fn pending_deliveries(&self) -> ProviderFuture<'_, u64> {
        let pending = self
            .0
            .lock()
            .values()
            .filter(|d| d.state == DeliveryState::Pending)
            .count() as u64;
        Box::pin(async move { Ok(pending) })
    }

    fn forget_deliveries(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        let mut all = self.0.lock();
        let had = all.len();
        all.retain(|_, d| d.state == DeliveryState::Pending || d.next_attempt_at >= before);
        let gone = (had - all.len()) as u64;
        Box::pin(async move { Ok(gone) })
    }
}
