//! The audit trail: one typed event per state change, carrying public ids only, never a token.

use serde::{Deserialize, Serialize};

use crate::application::{AppId, legacy_app};
use crate::session::{EndReason, Session};
use crate::time::Timestamp;
use crate::token::{PublicId, SessionId};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A session was created (possibly re-constituted).
    #[serde(rename = "session.created")]
    SessionCreated,
    /// A session's token was replaced.
    #[serde(rename = "session.rotated")]
    SessionRotated,
    /// A session was elevated (its token rotated too).
    #[serde(rename = "session.elevated")]
    SessionElevated,
    /// A session's data was replaced.
    #[serde(rename = "session.data_replaced")]
    SessionDataReplaced,
    /// A session ended; `reason` says why.
    #[serde(rename = "session.ended")]
    SessionEnded,
    /// An API key was created.
    #[serde(rename = "api_key.created")]
    ApiKeyCreated,
    /// An API key was revoked.
    #[serde(rename = "api_key.revoked")]
    ApiKeyRevoked,
    /// A local account was created.
    #[serde(rename = "user.created")]
    UserCreated,
    /// An account was disabled (its sessions end with it).
    #[serde(rename = "user.disabled")]
    UserDisabled,
    /// An account was enabled again.
    #[serde(rename = "user.enabled")]
    UserEnabled,
    /// An account's password was set.
    #[serde(rename = "user.password_changed")]
    UserPasswordChanged,
    /// A TOTP second factor was enrolled.
    #[serde(rename = "user.totp_enrolled")]
    UserTotpEnrolled,
    /// The TOTP second factor was removed.
    #[serde(rename = "user.totp_removed")]
    UserTotpRemoved,
    /// An account was linked to a person at an upstream identity provider.
    #[serde(rename = "user.identity_linked")]
    UserIdentityLinked,
    /// An account's link to an upstream identity provider was removed.
    #[serde(rename = "user.identity_unlinked")]
    UserIdentityUnlinked,
    /// A sign-in attempt failed (unknown account, wrong password or code).
    #[serde(rename = "login.failed")]
    LoginFailed,
    /// A sign-in attempt was refused by the throttle.
    #[serde(rename = "login.throttled")]
    LoginThrottled,
    /// An application was registered.
    #[serde(rename = "application.created")]
    ApplicationCreated,
    /// An application's name, policies or grants changed.
    #[serde(rename = "application.updated")]
    ApplicationUpdated,
    /// An application was removed (its keys revoked and its sessions ended with it).
    #[serde(rename = "application.removed")]
    ApplicationRemoved,
    /// Anomaly: a session's token was presented from another client address or user agent
    /// than it was issued to (published once per session and new pair, whatever the policy
    /// binds; [`DeviceMemory`]).
    #[serde(rename = "session.device_changed")]
    SessionDeviceChanged,
    /// Anomaly: one subject's sessions were created unusually fast ([`BurstRules`]).
    #[serde(rename = "session.burst")]
    SessionBurst,
    /// Anomaly: one client address (an IPv6 /64) failed to sign in as many different
    /// accounts (credential stuffing; [`StuffingRules`]).
    #[serde(rename = "login.stuffing_suspected")]
    LoginStuffingSuspected,
    /// An application session's ending reached its client's back-channel logout endpoint.
    #[serde(rename = "logout.delivered")]
    LogoutDelivered,
    /// An attempt to tell a client of an ending failed; the detail says whether it is tried
    /// again (`retry_at`) or given up.
    #[serde(rename = "logout.delivery_failed")]
    LogoutDeliveryFailed,
    /// An application session's tokens were renewed by the refresh token grant: its refresh
    /// token rotated, and a new access token (and ID token) issued.
    #[serde(rename = "session.refreshed")]
    SessionRefreshed,
}

impl EventKind {
    /// The wire name (`session.created`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SessionCreated => "session.created",
            Self::SessionRotated => "session.rotated",
            Self::SessionElevated => "session.elevated",
            Self::SessionDataReplaced => "session.data_replaced",
            Self::SessionEnded => "session.ended",
            Self::ApiKeyCreated => "api_key.created",
            Self::ApiKeyRevoked => "api_key.revoked",
            Self::UserCreated => "user.created",
            Self::UserDisabled => "user.disabled",
            Self::UserEnabled => "user.enabled",
            Self::UserPasswordChanged => "user.password_changed",
            Self::UserTotpEnrolled => "user.totp_enrolled",
            Self::UserTotpRemoved => "user.totp_removed",
            Self::UserIdentityLinked => "user.identity_linked",
            Self::UserIdentityUnlinked => "user.identity_unlinked",
            Self::LoginFailed => "login.failed",
            Self::LoginThrottled => "login.throttled",
            Self::ApplicationCreated => "application.created",
            Self::ApplicationUpdated => "application.updated",
            Self::ApplicationRemoved => "application.removed",
            Self::SessionDeviceChanged => "session.device_changed",
            Self::SessionBurst => "session.burst",
            Self::LoginStuffingSuspected => "login.stuffing_suspected",
            Self::LogoutDelivered => "logout.delivered",
            Self::LogoutDeliveryFailed => "logout.delivery_failed",
            Self::SessionRefreshed => "session.refreshed",
        }
    }

    /// Every kind, in declaration order (for mappings and their tests).
    pub const ALL: [Self; 26] = [
        Self::SessionCreated,
        Self::SessionRotated,
        Self::SessionElevated,
        Self::SessionDataReplaced,
        Self::SessionEnded,
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
        Self::UserCreated,
        Self::UserDisabled,
        Self::UserEnabled,
        Self::UserPasswordChanged,
        Self::UserTotpEnrolled,
        Self::UserTotpRemoved,
        Self::UserIdentityLinked,
        Self::UserIdentityUnlinked,
        Self::LoginFailed,
        Self::LoginThrottled,
        Self::ApplicationCreated,
        Self::ApplicationUpdated,
        Self::ApplicationRemoved,
        Self::SessionDeviceChanged,
        Self::SessionBurst,
        Self::LoginStuffingSuspected,
        Self::LogoutDelivered,
        Self::LogoutDeliveryFailed,
        Self::SessionRefreshed,
    ];
}

/// Keys of [`AuditEvent::detail`] that say who, from where and how (lifted to top-level
/// fields of the JSON line and `/v1/events`).
pub mod context {
    /// The client address (the session's device, or the sign-in request's).
    pub const CLIENT_IP: &str = "client_ip";
    /// The client's user agent.
    pub const USER_AGENT: &str = "user_agent";
    /// The session's authentication methods (RFC 8176 `amr` values).
    pub const AUTH_METHODS: &str = "auth_methods";
    /// For a failed sign-in, which factor failed (`username`, `password`, `otp`,
    /// `account_disabled`, `address`).
    pub const FAILED: &str = "failed";
    /// Internal only, never written out: a keyed digest of the typed account name, so the
    /// stuffing detector counts distinct names without anyone logging them.
    pub const ATTEMPT_KEY: &str = "_attempt";
}

/// Who caused a change, as recorded in the trail (`api_key:key_…`, `cli`, `system`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(pub String);

impl Actor {
    /// Portcullis itself (timeouts found by the sweeper or on validation).
    pub fn system() -> Self {
        Self("system".into())
    }

    /// A person acting on their own account in the browser, by their account id.
    pub fn user(id: &str) -> Self {
        Self(format!("user:{id}"))
    }

    /// The administrator's command line on this machine.
    pub fn cli() -> Self {
        Self("cli".into())
    }

    /// A backend caller: its application, and the public id of the API key it used.
    pub fn api_key(application: &PublicId, key: &PublicId) -> Self {
        Self(format!("app:{application}/api_key:{key}"))
    }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the trail, assigned by the store (strictly increasing).
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// Who caused it.
    pub actor: Actor,
    /// The session concerned.
    pub session_id: Option<SessionId>,
    /// The session's subject.
    pub subject: Option<String>,
    /// The session's policy.
    pub policy: Option<String>,
    /// The application the event concerns: the session's, the API key's or the application
    /// itself. Events written before applications existed read back as the legacy application's.
    #[serde(
        default = "legacy_application",
        skip_serializing_if = "Option::is_none"
    )]
    pub application: Option<AppId>,
    /// Why a session ended.
    pub reason: Option<EndReason>,
    /// Small structured detail (e.g. `reconstituted_from`, `scope`, `api_key`).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// An event about `session`; `seq` is filled in by the store.
    pub fn for_session(kind: EventKind, session: &Session, at: Timestamp, actor: &Actor) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            actor: actor.clone(),
            session_id: Some(session.id.clone()),
            subject: Some(session.subject.clone()),
            policy: Some(session.policy.clone()),
            application: Some(session.application.clone()),
            reason: None,
            detail: serde_json::Value::Null,
        }
        .with_client(
            session.device.ip.as_deref(),
            session.device.user_agent.as_deref(),
        )
        .with_detail(serde_json::json!({ context::AUTH_METHODS: session.auth.methods }))
    }

    /// An event about an account or a sign-in attempt, of Portcullis's own application
    /// ([`crate::application::PORTCULLIS_APP`]). `user_id` is empty for an attempt on an
    /// unknown username.
    pub fn for_account(
        kind: EventKind,
        user_id: &str,
        username: &str,
        at: Timestamp,
        actor: &Actor,
    ) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            actor: actor.clone(),
            session_id: None,
            subject: (!user_id.is_empty()).then(|| user_id.to_owned()),
            policy: None,
            application: Some(crate::application::portcullis_app()),
            reason: None,
            detail: serde_json::json!({ "username": username }),
        }
    }

    /// An event about an application or one of its API keys; `seq` is filled in by the store.
    pub fn for_application(
        kind: EventKind,
        application: &AppId,
        at: Timestamp,
        actor: &Actor,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            seq: 0,
            at,
            kind,
            actor: actor.clone(),
            session_id: None,
            subject: None,
            policy: None,
            application: Some(application.clone()),
            reason: None,
            detail,
        }
    }

    /// The `session.ended` event for a session that has just ended.
    pub fn ended(session: &Session, actor: &Actor) -> Self {
        let ended = session.ended.as_ref();
        let mut event = Self::for_session(
            EventKind::SessionEnded,
            session,
            ended.map_or(session.last_seen_at, |e| e.at),
            actor,
        );
        event.reason = ended.map(|e| e.reason);
        event
    }

    /// Adds detail to the event: an object's keys are merged into an object's (the new
    /// value wins), `null` adds nothing, anything else replaces it.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        match (&mut self.detail, detail) {
            (_, serde_json::Value::Null) => {}
            (serde_json::Value::Object(have), serde_json::Value::Object(add)) => {
                have.extend(add);
            }
            (_, detail) => self.detail = detail,
        }
        self
    }

    /// Records where the event comes from, as far as it is known.
    pub fn with_client(self, ip: Option<&str>, user_agent: Option<&str>) -> Self {
        let mut add = serde_json::Map::new();
        if let Some(ip) = ip {
            add.insert(context::CLIENT_IP.into(), ip.into());
        }
        if let Some(user_agent) = user_agent {
            add.insert(context::USER_AGENT.into(), user_agent.into());
        }
        if add.is_empty() {
            return self;
        }
        self.with_detail(serde_json::Value::Object(add))
    }

    /// The event without what is never written out ([`context::ATTEMPT_KEY`]).
    pub fn without_internal_detail(mut self) -> Self {
        if let Some(detail) = self.detail.as_object_mut() {
            detail.remove(context::ATTEMPT_KEY);
        }
        self
    }

    /// A string the event's detail holds under `key`.
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.detail.get(key).and_then(serde_json::Value::as_str)
    }
}

/// Which events to read, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events about this subject.
    pub subject: Option<String>,
    /// Only events about this session.
    pub session_id: Option<SessionId>,
    /// Only events of this application.
    pub application: Option<AppId>,
    /// Only events after this position.
    pub after: u64,
    /// At most this many.
    pub limit: usize,
}

impl EventQuery {
    /// Whether `event` passes the filters (not `after`/`limit`).
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.subject
            .as_ref()
            .is_none_or(|s| event.subject.as_ref() == Some(s))
            && self
                .session_id
                .as_ref()
                .is_none_or(|id| event.session_id.as_ref() == Some(id))
            && self
                .application
                .as_ref()
                .is_none_or(|app| event.application.as_ref() == Some(app))
    }
}

fn legacy_application() -> Option<AppId> {
    Some(legacy_app())
}

/// Where events go once committed: the JSON-lines audit log (stdout or a file) for a SIEM.
pub trait AuditSink: Send + Sync + 'static {
    /// Publishes one committed event.
    fn publish(&self, event: &AuditEvent);
}

/// A sink that drops events (for embedding and tests that read events from the store).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAuditSink;

impl AuditSink for NoAuditSink {
    fn publish(&self, _event: &AuditEvent) {}
}

// ----- Anomalies ---------------------------------------------------------------------------

/// A set of recently seen keys that forgets the oldest beyond `cap` (never unbounded).
#[derive(Debug)]
pub struct BoundedSet {
    seen: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    cap: usize,
}

impl BoundedSet {
    /// Remembers at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            seen: std::collections::HashSet::new(),
            order: std::collections::VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Remembers `key`; whether it is new.
    pub fn insert(&mut self, key: u64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

fn digest(parts: &[&str]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
    for part in parts {
        hasher.write(part.as_bytes());
        hasher.write_u8(0xff);
    }
    hasher.finish()
}

/// A digest of a typed account name under a key of this process (never written anywhere):
/// what the stuffing detector counts, so no one has to keep the name itself.
pub fn attempt_key(name: &str) -> String {
    format!("{:016x}", digest(&["attempt", name]))
}

/// Which (client address, user agent) pairs each session was seen from, beyond the one it was
/// issued to: `session.device_changed` is published once per session and new pair. At most
/// [`DeviceMemory::DEFAULT_CAP`] pairs are remembered (the oldest forgotten first; a forgotten
/// pair seen again is reported again).
#[derive(Debug)]
pub struct DeviceMemory(std::sync::Mutex<BoundedSet>);

impl Default for DeviceMemory {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAP)
    }
}

impl DeviceMemory {
    /// Pairs remembered by default (about 2.4 MB at most).
    pub const DEFAULT_CAP: usize = 100_000;

    /// Remembers at most `cap` pairs.
    pub fn new(cap: usize) -> Self {
        Self(std::sync::Mutex::new(BoundedSet::new(cap)))
    }

    /// The `session.device_changed` event when `presented` differs from what `session` was
    /// issued to (in an address or a user agent both sides know) and this pair was not
    /// reported for this session yet.
    pub fn check(
        &self,
        session: &Session,
        presented: &crate::session::Device,
        at: Timestamp,
    ) -> Option<AuditEvent> {
        let differs = |issued: &Option<String>, now: &Option<String>| matches!((issued, now), (Some(a), Some(b)) if a != b);
        let ip_changed = differs(&session.device.ip, &presented.ip);
        let agent_changed = differs(&session.device.user_agent, &presented.user_agent);
        if !ip_changed && !agent_changed {
            return None;
        }
        let ip = presented.ip.as_deref().unwrap_or("");
        let agent = presented.user_agent.as_deref().unwrap_or("");
        let key = digest(&["device", session.id.as_str(), ip, agent]);
        let new = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key);
        new.then(|| {
            let mut event = AuditEvent::for_session(
                EventKind::SessionDeviceChanged,
                session,
                at,
                &Actor::system(),
            );
            // The context is where the token came from now; what it was issued to is beside it.
            let detail = event.detail.as_object_mut().expect("session detail");
            detail.remove(context::CLIENT_IP);
            detail.remove(context::USER_AGENT);
            event
                .with_client(presented.ip.as_deref(), presented.user_agent.as_deref())
                .with_detail(serde_json::json!({
                    "issued_ip": session.device.ip,
                    "issued_user_agent": session.device.user_agent,
                    "ip_changed": ip_changed,
                    "user_agent_changed": agent_changed,
                }))
        })
    }
}

/// When failures from one address become `login.stuffing_suspected`: at least `accounts`
/// different account names failed from one client address (IPv6 by /64, as the throttle keys
/// it) within `window`. Reported once per address and window; at most `tracked` addresses
/// are followed (the oldest forgotten first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuffingRules {
    /// Distinct account names.
    pub accounts: usize,
    /// Within this long.
    pub window: std::time::Duration,
    /// Addresses followed at once.
    pub tracked: usize,
}

impl Default for StuffingRules {
    fn default() -> Self {
        Self {
            accounts: 10,
            window: std::time::Duration::from_secs(600),
            tracked: 10_000,
        }
    }
}

/// When one subject's new sessions become `session.burst`: at least `sessions` created within
/// `window`. Reported once per subject and window; at most `tracked` subjects are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstRules {
    /// Sessions created.
    pub sessions: usize,
    /// Within this long.
    pub window: std::time::Duration,
    /// Subjects followed at once.
    pub tracked: usize,
}

impl Default for BurstRules {
    fn default() -> Self {
        Self {
            sessions: 20,
            window: std::time::Duration::from_secs(60),
            tracked: 10_000,
        }
    }
}

/// What one watch counts: `threshold` occurrences (`distinct` ones) within `window`, over
/// at most `tracked` keys.
#[derive(Debug, Clone, Copy)]
struct Watch {
    threshold: usize,
    window: std::time::Duration,
    tracked: usize,
    distinct: bool,
}

/// Recent occurrences per key (an address, a subject), bounded in keys and per key.
#[derive(Debug, Default)]
struct Recent {
    entries: std::collections::HashMap<String, RecentEntry>,
    order: std::collections::VecDeque<String>,
}

#[derive(Debug, Default)]
struct RecentEntry {
    /// (what, when), oldest first, at most the threshold.
    seen: std::collections::VecDeque<(u64, Timestamp)>,
    reported: Option<Timestamp>,
}

impl Recent {
    /// Records `what` under `key` at `at`; `Some(count)` when the distinct `what`s within
    /// `window` reach `threshold` and this key was not reported within `window`.
    fn record(&mut self, key: &str, what: u64, at: Timestamp, rule: Watch) -> Option<usize> {
        let Watch {
            threshold,
            window,
            tracked,
            distinct,
        } = rule;
        if !self.entries.contains_key(key) {
            self.order.push_back(key.to_owned());
            while self.order.len() > tracked.max(1) {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
        let entry = self.entries.entry(key.to_owned()).or_default();
        let within = |then: Timestamp| then.until(at) < window;
        entry.seen.retain(|(_, then)| within(*then));
        if distinct {
            entry.seen.retain(|(w, _)| *w != what);
        }
        entry.seen.push_back((what, at));
        while entry.seen.len() > threshold.max(1) {
            entry.seen.pop_front();
        }
        let count = entry.seen.len();
        let quiet = entry.reported.is_none_or(|then| !within(then));
        (count >= threshold && quiet).then(|| {
            entry.reported = Some(at);
            count
        })
    }
}

/// Watches the events passing to `inner` for anomalies seen across events (credential
/// stuffing, session bursts) and publishes them there as events of their own, after the event
/// that set them off. Per node: each node watches the events it publishes.
pub struct AnomalySink {
    inner: std::sync::Arc<dyn AuditSink>,
    stuffing: StuffingRules,
    burst: BurstRules,
    failures: std::sync::Mutex<Recent>,
    creations: std::sync::Mutex<Recent>,
}

impl AnomalySink {
    /// Watches with the default rules.
    pub fn new(inner: std::sync::Arc<dyn AuditSink>) -> Self {
        Self::with_rules(inner, StuffingRules::default(), BurstRules::default())
    }

    /// Watches with these rules.
    pub fn with_rules(
        inner: std::sync::Arc<dyn AuditSink>,
        stuffing: StuffingRules,
        burst: BurstRules,
    ) -> Self {
        Self {
            inner,
            stuffing,
            burst,
            failures: std::sync::Mutex::default(),
            creations: std::sync::Mutex::default(),
        }
    }

    fn stuffing_of(&self, event: &AuditEvent) -> Option<AuditEvent> {
        let ip = event.detail_str(context::CLIENT_IP)?;
        let name = event
            .detail_str(context::ATTEMPT_KEY)
            .map(str::to_owned)
            .or_else(|| event.subject.clone())?;
        let key = crate::throttle::address_key(ip);
        let rules = self.stuffing;
        let count = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(
                &key,
                digest(&[&name]),
                event.at,
                Watch {
                    threshold: rules.accounts,
                    window: rules.window,
                    tracked: rules.tracked,
                    distinct: true,
                },
            )?;
        let mut alarm = AuditEvent::for_account(
            EventKind::LoginStuffingSuspected,
            "",
            "",
            event.at,
            &Actor::system(),
        );
        alarm.detail = serde_json::json!({
            context::CLIENT_IP: ip,
            "address_key": key.trim_start_matches("addr:"),
            "accounts": count,
            "window_seconds": rules.window.as_secs(),
        });
        Some(alarm)
    }

    fn burst_of(&self, event: &AuditEvent) -> Option<AuditEvent> {
        let subject = event.subject.as_deref()?;
        let rules = self.burst;
        let count = self
            .creations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(
                subject,
                event.seq,
                event.at,
                Watch {
                    threshold: rules.sessions,
                    window: rules.window,
                    tracked: rules.tracked,
                    distinct: false,
                },
            )?;
        let mut alarm = event.clone();
        alarm.seq = 0;
        alarm.kind = EventKind::SessionBurst;
        alarm.actor = Actor::system();
        alarm.session_id = None;
        Some(alarm.with_detail(serde_json::json!({
            "sessions": count,
            "window_seconds": rules.window.as_secs(),
            "last_session": event.session_id,
        })))
    }
}

impl AuditSink for AnomalySink {
    fn publish(&self, event: &AuditEvent) {
        let alarm = match event.kind {
            EventKind::LoginFailed => self.stuffing_of(event),
            EventKind::SessionCreated => self.burst_of(event),
            _ => None,
        };
        if event.detail.get(context::ATTEMPT_KEY).is_some() {
            self.inner.publish(&event.clone().without_internal_detail());
        } else {
            self.inner.publish(event);
        }
        if let Some(alarm) = alarm {
            self.inner.publish(&alarm);
        }
    }
}
