//! The session lifecycle: the rules of DESIGN §2–4 over any [`SessionStore`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::event::{Actor, AuditEvent, AuditSink, EventKind, EventQuery, NoAuditSink};
use crate::policy::{Binding, Policy, PolicySet};
use crate::random::RandomSource;
use crate::session::{AuthContext, Deadline, Device, Elevation, EndReason, Session};
use crate::store::{ApiKey, Ending, Insert, SessionLimit, SessionStore, StoreError};
use crate::time::{Clock, Timestamp};
use crate::token::{PublicId, SessionId, Token, TokenKind, subject_route};

/// Tunables of the engine that are not per-policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Activity is written at most once per this interval per session (and never less often
    /// than a tenth of the session's idle timeout). This bounds the idle-timeout error: a session
    /// may expire up to this much *earlier* than exact tracking would say, never later.
    pub touch_interval: Duration,
    /// Largest accepted session data, as serialised JSON.
    pub max_data_bytes: usize,
    /// How long an ended session is remembered so validation can say why it was refused.
    pub ended_retention: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            touch_interval: Duration::from_secs(15),
            max_data_bytes: 16 * 1024,
            ended_retention: Duration::from_secs(3600),
        }
    }
}

/// Why a token was not accepted. The wire names are the API's `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not of the shape of a session token.
    Malformed,
    /// Never issued, rotated away, or forgotten.
    Unknown,
    /// Idle timeout passed.
    ExpiredIdle,
    /// Absolute lifetime passed.
    ExpiredAbsolute,
    /// The person logged out.
    LoggedOut,
    /// Ended by a rule or an administrator; the inner reason says which.
    Revoked(EndReason),
    /// Presented from a device the session is not bound to.
    BindingMismatch,
}

impl Rejection {
    /// The API `reason`.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_token",
            Self::Unknown => "unknown",
            Self::ExpiredIdle => "expired_idle",
            Self::ExpiredAbsolute => "expired_absolute",
            Self::LoggedOut => "logged_out",
            Self::Revoked(_) => "revoked",
            Self::BindingMismatch => "binding_mismatch",
        }
    }

    /// The rejection for a session that ended for `reason`.
    pub const fn for_ending(reason: EndReason) -> Self {
        match reason {
            EndReason::Logout => Self::LoggedOut,
            EndReason::ExpiredIdle => Self::ExpiredIdle,
            EndReason::ExpiredAbsolute => Self::ExpiredAbsolute,
            EndReason::BindingMismatch => Self::BindingMismatch,
            other => Self::Revoked(other),
        }
    }
}

/// What the engine can fail with; the HTTP layer maps each to a status and `reason`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store cannot answer: fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token was not accepted.
    #[error("the session token was rejected: {}", .0.reason())]
    Rejected(Rejection),
    /// No policy by that name.
    #[error("no policy is named \"{0}\"")]
    UnknownPolicy(String),
    /// The subject has reached the policy's session limit (`on_limit = "deny"`).
    #[error("the subject already has the maximum number of sessions")]
    LimitReached,
    /// No such session or API key.
    #[error("not found")]
    NotFound,
    /// Session data over the size limit.
    #[error("session data is {size} bytes; the limit is {limit}")]
    DataTooLarge {
        /// Size given.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A request that cannot be carried out as written.
    #[error("{0}")]
    Invalid(String),
    /// The session kept changing under a concurrent request; the caller may retry.
    #[error("the session changed concurrently; retry")]
    Conflict,
}

/// A request to create a session, after the application has authenticated the person.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// Who.
    pub subject: String,
    /// Which policy (default: `default`).
    pub policy: Option<String>,
    /// "Stay signed in?" answered yes.
    pub remember_me: bool,
    /// How they authenticated.
    pub auth: AuthContext,
    /// From where.
    pub device: Device,
    /// Application data.
    pub data: serde_json::Value,
    /// Take back the data of the subject's last timed-out session.
    pub reconstitute: bool,
    /// The parent SSO session.
    pub parent: Option<SessionId>,
}

/// A request to elevate a session.
#[derive(Debug, Clone, Default)]
pub struct Elevate {
    /// Methods used to re-authenticate.
    pub methods: Vec<String>,
    /// Assurance level reached.
    pub level: u8,
    /// What the elevation allows.
    pub scope: String,
}

/// A session and its freshly issued token (shown once).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The secret token.
    pub token: Token,
    /// The session.
    pub session: Arc<Session>,
}

/// An accepted validation.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The session.
    pub session: Arc<Session>,
    /// Until the nearest deadline.
    pub expires_in: Duration,
    /// Inside the policy's warning lead time.
    pub warning: bool,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Sessions ended by timeout.
    pub expired: usize,
    /// Ended sessions forgotten.
    pub purged: usize,
}

/// The session authority: every lifecycle rule, over an injected store, clock and randomness.
pub struct Engine<S> {
    store: S,
    policies: PolicySet,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    sink: Arc<dyn AuditSink>,
    settings: EngineSettings,
    api_key_revocations: AtomicU64,
}

impl<S> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const CAS_ATTEMPTS: usize = 4;
const MAX_SUBJECT_BYTES: usize = 256;
const MAX_LABEL_BYTES: usize = 64;

impl<S: SessionStore> Engine<S> {
    /// An engine over `store`.
    pub fn new(
        store: S,
        policies: PolicySet,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            store,
            policies,
            clock,
            random,
            sink: Arc::new(NoAuditSink),
            settings: EngineSettings::default(),
            api_key_revocations: AtomicU64::new(0),
        }
    }

    /// Sends committed events to `sink` as well.
    pub fn with_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.sink = sink;
        self
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: EngineSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The current time by the engine's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn new_token(&self, subject: &str) -> Token {
        if S::ROUTES_BY_SUBJECT {
            Token::generate_routed(
                TokenKind::Session,
                self.random.as_ref(),
                subject_route(subject),
            )
        } else {
            Token::generate(TokenKind::Session, self.random.as_ref())
        }
    }

    fn publish(&self, events: &[AuditEvent]) {
        for event in events {
            self.sink.publish(event);
        }
    }

    fn policy_of(&self, session: &Session) -> Arc<Policy> {
        // A policy removed from the configuration keeps its sessions on the default's warning time.
        self.policies
            .get(&session.policy)
            .or_else(|| self.policies.get("default"))
            .cloned()
            .unwrap_or_else(|| Arc::new(Policy::built_in("default")))
    }

    fn check_data(&self, data: &serde_json::Value) -> Result<(), EngineError> {
        let size = serde_json::to_vec(data).map_or(usize::MAX, |v| v.len());
        if size > self.settings.max_data_bytes {
            return Err(EngineError::DataTooLarge {
                size,
                limit: self.settings.max_data_bytes,
            });
        }
        Ok(())
    }

    fn check_auth(methods: &[String], level: u8) -> Result<(), EngineError> {
        if !(1..=3).contains(&level) {
            return Err(EngineError::Invalid(format!(
                "auth level must be 1, 2 or 3 (authenticator assurance level), not {level}"
            )));
        }
        if methods.len() > 16
            || methods
                .iter()
                .any(|m| m.is_empty() || m.len() > MAX_LABEL_BYTES)
        {
            return Err(EngineError::Invalid(
                "auth methods must be at most 16 names of 1 to 64 bytes".into(),
            ));
        }
        Ok(())
    }

    /// Creates a session for a subject the application has authenticated.
    pub async fn create(&self, request: NewSession, actor: &Actor) -> Result<Issued, EngineError> {
        if request.subject.is_empty() || request.subject.len() > MAX_SUBJECT_BYTES {
            return Err(EngineError::Invalid(format!(
                "subject must be 1 to {MAX_SUBJECT_BYTES} bytes"
            )));
        }
        let policy_name = request.policy.as_deref().unwrap_or("default");
        let policy = self
            .policies
            .get(policy_name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPolicy(policy_name.to_owned()))?;
        Self::check_auth(&request.auth.methods, request.auth.level)?;
        self.check_data(&request.data)?;
        if let Some(parent) = &request.parent {
            // A parent SSO session belongs to the same person; keeping them together also lets
            // sharded stores end a family atomically.
            let valid = self
                .store
                .find_by_id(parent)
                .await?
                .is_some_and(|p| p.is_live() && p.subject == request.subject);
            if !valid {
                return Err(EngineError::Invalid(format!(
                    "parent session {parent} is not a live session of this subject"
                )));
            }
        }
        let now = self.clock.now();
        let token = self.new_token(&request.subject);
        let (idle, absolute) = policy.lifetimes(request.remember_me);
        let id = if S::ROUTES_BY_SUBJECT {
            PublicId::generate_routed(
                "ses_",
                subject_route(&request.subject),
                self.random.as_ref(),
            )
        } else {
            PublicId::generate("ses_", self.random.as_ref())
        };
        let session = Session {
            id,
            token_hash: token.hash(),
            version: 1,
            subject: request.subject,
            policy: policy.name.clone(),
            created_at: now,
            last_seen_at: now,
            authenticated_at: now,
            remember_me: request.remember_me,
            auth: request.auth,
            elevations: Vec::new(),
            device: request.device,
            data: request.data,
            idle: (!idle.lifetime.is_zero())
                .then(|| Deadline::after(now, idle.lifetime, idle.text)),
            absolute: Deadline::after(now, absolute.lifetime, absolute.text),
            parent: request.parent.clone(),
            reconstituted_from: None,
            ended: None,
        };
        let limit = (policy.max_sessions.value > 0).then_some(SessionLimit {
            max: policy.max_sessions.value,
            on_limit: policy.on_limit.value,
        });
        let inserted = self
            .store
            .insert(Insert {
                session,
                limit,
                reconstitute: request.reconstitute && !policy.reconstitute_window.value.is_zero(),
                actor: actor.clone(),
                ended_retention: self.settings.ended_retention,
            })
            .await
            .map_err(|e| match e {
                StoreError::LimitReached => EngineError::LimitReached,
                StoreError::ParentNotLive => EngineError::Invalid(format!(
                    "parent session {} is not a live session of this subject",
                    request.parent.as_ref().map_or("", |p| p.as_str())
                )),
                other => EngineError::Store(other),
            })?;
        self.publish(&inserted.events);
        Ok(Issued {
            token,
            session: inserted.session,
        })
    }

    /// Ends `session` for the timeout that has passed, recording it once.
    async fn end_timed_out(
        &self,
        session: &Session,
        at: Timestamp,
        reason: EndReason,
    ) -> Result<(), EngineError> {
        let window = self.policy_of(session).reconstitute_window.value;
        let ended = self
            .store
            .end(
                &session.id,
                Ending {
                    reason,
                    at,
                    actor: Actor::system(),
                    reconstitute_until: (!window.is_zero()).then(|| at.plus(window)),
                    retention: self.settings.ended_retention,
                },
            )
            .await?;
        self.publish(&ended.events);
        Ok(())
    }

    async fn end_session(
        &self,
        id: &SessionId,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<usize, EngineError> {
        let ended = self.store.end(id, self.ending(reason, actor)).await?;
        self.publish(&ended.events);
        Ok(ended.sessions.len())
    }

    fn ending(&self, reason: EndReason, actor: &Actor) -> Ending {
        Ending {
            reason,
            at: self.clock.now(),
            actor: actor.clone(),
            reconstitute_until: None,
            retention: self.settings.ended_retention,
        }
    }

    /// Ends a live session whose deadline has passed and returns what the caller should see.
    async fn settle(&self, session: Arc<Session>) -> Result<Arc<Session>, EngineError> {
        if session.is_live()
            && let Some((at, reason)) = session.timed_out(self.clock.now())
        {
            self.end_timed_out(&session, at, reason).await?;
            return Ok(self.store.find_by_id(&session.id).await?.unwrap_or(session));
        }
        Ok(session)
    }

    /// The live session behind `token`, or why there is none. Ends sessions found past a
    /// deadline or presented from the wrong device.
    async fn live_session(
        &self,
        token: &str,
        device: Option<&Device>,
    ) -> Result<Arc<Session>, EngineError> {
        let hash = Token::hash_presented(TokenKind::Session, token)
            .map_err(|_| EngineError::Rejected(Rejection::Malformed))?;
        let session = self
            .store
            .find_by_token(&hash)
            .await?
            .ok_or(EngineError::Rejected(Rejection::Unknown))?;
        if let Some(ended) = &session.ended {
            return Err(EngineError::Rejected(Rejection::for_ending(ended.reason)));
        }
        if let Some((at, reason)) = session.timed_out(self.clock.now()) {
            self.end_timed_out(&session, at, reason).await?;
            return Err(EngineError::Rejected(Rejection::for_ending(reason)));
        }
        if let Some(device) = device
            && !self.device_matches(&session, device)
        {
            self.end_session(&session.id, EndReason::BindingMismatch, &Actor::system())
                .await?;
            return Err(EngineError::Rejected(Rejection::BindingMismatch));
        }
        Ok(session)
    }

    fn device_matches(&self, session: &Session, presented: &Device) -> bool {
        match self.policy_of(session).bind.value {
            Binding::None => true,
            Binding::UserAgent => session.device.user_agent == presented.user_agent,
            Binding::Ip => session.device.ip == presented.ip,
        }
    }

    fn touch_interval(&self, session: &Session) -> Duration {
        let by_idle = session
            .idle
            .as_ref()
            .map_or(Duration::MAX, |idle| idle.lifetime() / 10);
        self.settings.touch_interval.min(by_idle)
    }

    /// Validates a token on a request. With `activity`, the request counts towards the idle
    /// timeout (coalesced); without it (a background poll) nothing changes.
    pub async fn validate(
        &self,
        token: &str,
        activity: bool,
        device: &Device,
    ) -> Result<Validated, EngineError> {
        let mut session = self.live_session(token, Some(device)).await?;
        let now = self.clock.now();
        if activity && now >= session.last_seen_at.plus(self.touch_interval(&session)) {
            self.store.touch(&session.id, now).await?;
            if let Some(touched) = self.store.find_by_token(&session.token_hash).await? {
                session = touched;
            }
        }
        let expires_in = now.until(session.next_deadline().0);
        let warning = expires_in <= self.policy_of(&session).warn_before.value;
        Ok(Validated {
            session,
            expires_in,
            warning,
        })
    }

    /// Replaces a live session's token (and more), retrying when it changed concurrently.
    async fn reissue(
        &self,
        token: &str,
        kind: EventKind,
        change: impl Fn(&mut Session, Timestamp),
        actor: &Actor,
    ) -> Result<Issued, EngineError> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.live_session(token, None).await?;
            let now = self.clock.now();
            let new_token = self.new_token(&current.subject);
            let mut next = Session::clone(&current);
            next.token_hash = new_token.hash();
            next.version += 1;
            next.last_seen_at = now;
            if let Some(idle) = next.idle.as_mut() {
                idle.at = now.plus(idle.lifetime());
            }
            next.elevations.retain(|e| e.expires_at > now);
            change(&mut next, now);
            let mut event = AuditEvent::for_session(kind, &next, now, actor);
            if let Some(e) = next
                .elevations
                .last()
                .filter(|_| kind == EventKind::SessionElevated)
            {
                event = event.with_detail(serde_json::json!({
                    "elevation": e.id.as_str(), "scope": e.scope, "level": e.level, "methods": e.methods,
                }));
            }
            if let Some((session, event)) = self.store.replace(current.version, next, event).await?
            {
                self.publish(std::slice::from_ref(&event));
                return Ok(Issued {
                    token: new_token,
                    session,
                });
            }
        }
        Err(EngineError::Conflict)
    }

    /// Issues a new token for the session (after login or a privilege change); the old one
    /// is dead at once.
    pub async fn rotate(&self, token: &str, actor: &Actor) -> Result<Issued, EngineError> {
        self.reissue(token, EventKind::SessionRotated, |_, _| {}, actor)
            .await
    }

    /// Records a re-authentication for a sensitive action: a new `authenticated_at`, both
    /// timers restarted (SP 800-63B rev 4), an elevation with its own lifetime, a new token.
    pub async fn elevate(
        &self,
        token: &str,
        request: Elevate,
        actor: &Actor,
    ) -> Result<Issued, EngineError> {
        if request.methods.is_empty() {
            return Err(EngineError::Invalid(
                "methods must name how the person re-authenticated".into(),
            ));
        }
        Self::check_auth(&request.methods, request.level)?;
        if request.scope.is_empty() || request.scope.len() > MAX_LABEL_BYTES {
            return Err(EngineError::Invalid("scope must be 1 to 64 bytes".into()));
        }
        let elevation_id = PublicId::generate("elv_", self.random.as_ref());
        self.reissue(
            token,
            EventKind::SessionElevated,
            |session, now| {
                let policy = self.policy_of(session);
                session.authenticated_at = now;
                session.absolute.at = now.plus(session.absolute.lifetime());
                session.elevations.push(Elevation {
                    id: elevation_id.clone(),
                    scope: request.scope.clone(),
                    methods: request.methods.clone(),
                    level: request.level,
                    at: now,
                    expires_at: now.plus(policy.elevation.value),
                });
            },
            actor,
        )
        .await
    }

    /// Logs out. Idempotent: an unknown or already ended session is fine.
    pub async fn logout(&self, token: &str, actor: &Actor) -> Result<(), EngineError> {
        match self.live_session(token, None).await {
            Ok(session) => {
                self.end_session(&session.id, EndReason::Logout, actor)
                    .await?;
                Ok(())
            }
            Err(EngineError::Rejected(Rejection::Malformed)) => {
                Err(EngineError::Rejected(Rejection::Malformed))
            }
            Err(EngineError::Rejected(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// One session by its public id (live or recently ended).
    pub async fn get(&self, id: &SessionId) -> Result<Arc<Session>, EngineError> {
        let session = self
            .store
            .find_by_id(id)
            .await?
            .ok_or(EngineError::NotFound)?;
        self.settle(session).await
    }

    /// Ends one session as an administrator (`revoked_admin`). Idempotent for ended sessions.
    pub async fn revoke(&self, id: &SessionId, actor: &Actor) -> Result<(), EngineError> {
        self.end(id, EndReason::RevokedAdmin, actor).await
    }

    /// Ends one live session for `reason` (a person signing out one of their devices).
    /// Idempotent for ended sessions.
    pub async fn end(
        &self,
        id: &SessionId,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<(), EngineError> {
        let session = self.get(id).await?;
        if session.is_live() {
            self.end_session(id, reason, actor).await?;
        }
        Ok(())
    }

    /// A subject's live sessions, oldest first.
    pub async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, EngineError> {
        let mut live = Vec::new();
        for session in self.store.list_subject(subject).await? {
            let session = self.settle(session).await?;
            if session.is_live() {
                live.push(session);
            }
        }
        Ok(live)
    }

    /// Ends every live session of `subject` but `except` (force logout after a password change).
    pub async fn end_subject(
        &self,
        subject: &str,
        except: Option<&SessionId>,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<usize, EngineError> {
        if reason.is_timeout() || reason == EndReason::ParentEnded {
            return Err(EngineError::Invalid(format!(
                "{} is not a reason a caller can end sessions for",
                reason.as_str()
            )));
        }
        let ended = self
            .store
            .end_subject(subject, except, self.ending(reason, actor))
            .await?;
        self.publish(&ended.events);
        Ok(ended.sessions.len())
    }

    /// Replaces a live session's data.
    pub async fn replace_data(
        &self,
        id: &SessionId,
        data: serde_json::Value,
        actor: &Actor,
    ) -> Result<Arc<Session>, EngineError> {
        self.check_data(&data)?;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.get(id).await?;
            if let Some(ended) = &current.ended {
                return Err(EngineError::Rejected(Rejection::for_ending(ended.reason)));
            }
            let mut next = Session::clone(&current);
            next.version += 1;
            next.data = data.clone();
            let event =
                AuditEvent::for_session(EventKind::SessionDataReplaced, &next, self.now(), actor);
            if let Some((session, event)) = self.store.replace(current.version, next, event).await?
            {
                self.publish(std::slice::from_ref(&event));
                return Ok(session);
            }
        }
        Err(EngineError::Conflict)
    }

    /// Audit events, oldest first.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, EngineError> {
        Ok(self.store.events(query).await?)
    }

    /// Ends every session past its deadline (each recorded once), forgets ended sessions whose
    /// retention is over, and writes coalesced touches. Costs O(expired).
    pub async fn sweep(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        loop {
            let due = self.store.due(now, 512).await?;
            if due.is_empty() {
                break;
            }
            for session in &due {
                if let Some((at, reason)) = session.timed_out(now) {
                    self.end_timed_out(session, at, reason).await?;
                    report.expired += 1;
                }
            }
        }
        report.purged = self.store.purge(now).await?;
        self.store.flush().await?;
        Ok(report)
    }

    /// Creates an API key; the secret is returned here and never again.
    pub async fn create_api_key(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<(Token, ApiKey), EngineError> {
        if name.is_empty() || name.len() > MAX_LABEL_BYTES {
            return Err(EngineError::Invalid(
                "an API key name must be 1 to 64 bytes".into(),
            ));
        }
        let token = Token::generate(TokenKind::ApiKey, self.random.as_ref());
        let key = ApiKey {
            id: PublicId::generate("key_", self.random.as_ref()),
            name: name.to_owned(),
            key_hash: token.hash(),
            created_at: self.now(),
            revoked_at: None,
        };
        let event = api_key_event(
            EventKind::ApiKeyCreated,
            &key.id,
            Some(&key.name),
            self.now(),
            actor,
        );
        let event = self.store.add_api_key(key.clone(), event).await?;
        self.publish(std::slice::from_ref(&event));
        Ok((token, key))
    }

    /// The live API key for a presented secret.
    pub async fn authenticate_api_key(
        &self,
        presented: &str,
    ) -> Result<Option<ApiKey>, EngineError> {
        let Ok(hash) = Token::hash_presented(TokenKind::ApiKey, presented) else {
            return Ok(None);
        };
        Ok(self
            .store
            .find_api_key(&hash)
            .await?
            .filter(|k| k.revoked_at.is_none()))
    }

    /// Every API key (their hashes only).
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, EngineError> {
        Ok(self.store.list_api_keys().await?)
    }

    /// How many API keys this engine has revoked. Whoever remembers a key it checked (per
    /// connection, say) reads this before the check and trusts the memory only while it is
    /// unchanged, so a revocation through this engine takes effect at once.
    pub fn api_key_revocations(&self) -> u64 {
        self.api_key_revocations.load(Ordering::Acquire)
    }

    /// Revokes an API key.
    pub async fn revoke_api_key(
        &self,
        id: &PublicId,
        actor: &Actor,
    ) -> Result<ApiKey, EngineError> {
        let now = self.now();
        let event = api_key_event(EventKind::ApiKeyRevoked, id, None, now, actor);
        let (key, event) = self
            .store
            .revoke_api_key(id, now, event)
            .await?
            .ok_or(EngineError::NotFound)?;
        self.api_key_revocations.fetch_add(1, Ordering::AcqRel);
        self.publish(std::slice::from_ref(&event));
        Ok(key)
    }
}

/// The event of an API-key change; the name is known when the key is created.
fn api_key_event(
    kind: EventKind,
    id: &PublicId,
    name: Option<&str>,
    at: Timestamp,
    actor: &Actor,
) -> AuditEvent {
    let mut detail = serde_json::json!({ "api_key": id.as_str() });
    if let Some(name) = name {
        detail["name"] = name.into();
    }
    AuditEvent {
        seq: 0,
        at,
        kind,
        actor: actor.clone(),
        session_id: None,
        subject: None,
        policy: None,
        reason: None,
        detail,
    }
}
