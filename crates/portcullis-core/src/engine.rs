//! The session lifecycle: the rules of DESIGN §2–4 over any [`SessionStore`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::api_key::ApiKey;
use crate::application::{
    ANY_POLICY, AppId, Application, Grant, LEGACY_APP, PORTCULLIS_APP, Principal, Reach,
    is_reserved_policy, legacy_app,
};
use crate::event::{Actor, AuditEvent, AuditSink, EventKind, EventQuery, NoAuditSink};
use crate::oidc::SigningAlg;
use crate::policy::{Binding, Policy, PolicySet};
use crate::random::RandomSource;
use crate::session::{AuthContext, Deadline, Device, Elevation, EndReason, Session};
use crate::store::{Ending, Insert, SessionLimit, Store, StoreError};
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
    /// The caller's application may not use this policy (or it is one of Portcullis's own).
    #[error("this application may not use the policy \"{0}\"")]
    PolicyNotAllowed(String),
    /// The action reaches beyond the caller's own sessions and needs a grant it lacks.
    #[error("this needs the grant \"{}\"", .0.as_str())]
    GrantRequired(Grant),
    /// No application by that id or name.
    #[error("no application is called \"{0}\"")]
    UnknownApplication(String),
    /// Another application already has the name.
    #[error("an application is already called \"{0}\"")]
    NameTaken(String),
}

impl EngineError {
    fn from_store(err: StoreError) -> Self {
        match err {
            StoreError::NameTaken(name) => Self::NameTaken(name),
            other => Self::Store(other),
        }
    }
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
    /// The owning application, named only by the operator (an application's sessions are its
    /// own, Portcullis's pages' are Portcullis's).
    pub application: Option<AppId>,
    /// Where to tell the application when the session ends (its OpenID Connect back-channel
    /// logout URI): the provider gives it for the sessions of clients that registered one.
    pub back_channel_logout_uri: Option<String>,
    /// The algorithm the client's ID tokens are signed with, kept with the URI (see
    /// [`Session::back_channel_logout_alg`]).
    pub back_channel_logout_alg: Option<SigningAlg>,
    /// A time the session ends by, whatever its policy allows, and the rule that sets it (an
    /// SSO session an upstream provider vouches for ends when the upstream's ID token does).
    pub ends_by: Option<(Timestamp, String)>,
    /// When the person authenticated, when that was before now (an upstream provider's
    /// `auth_time`): what `max_age` and `auth_time` then go by.
    pub authenticated_at: Option<Timestamp>,
}

/// A request to register an application or change one; `None` keeps what there is (or, when
/// registering, takes the default: policy `default`, no grants).
#[derive(Debug, Clone, Default)]
pub struct ApplicationChange {
    /// The unique name.
    pub name: Option<String>,
    /// Policies its sessions may follow.
    pub policies: Option<Vec<String>>,
    /// The policy of a session created without naming one.
    pub default_policy: Option<String>,
    /// What it may do beyond its own sessions.
    pub grants: Option<Vec<Grant>>,
}

/// What removing an application did.
#[derive(Debug, Clone)]
pub struct RemovedApplication {
    /// The application as it was.
    pub application: Application,
    /// Its API keys revoked.
    pub api_keys_revoked: usize,
    /// Its sessions ended (`app_removed`).
    pub sessions_ended: usize,
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
    /// Anomalies: the (address, user agent) pairs sessions were seen from (bounded).
    devices: crate::event::DeviceMemory,
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

impl<S: Store> Engine<S> {
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
            devices: crate::event::DeviceMemory::default(),
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

    /// A new session token carrying `subject`'s route, so a store that shards by subject finds
    /// its shard from the token alone; every store keeps its [`Token::routed_hash`].
    fn new_token(&self, subject: &str) -> Token {
        Token::generate_routed(
            TokenKind::Session,
            self.random.as_ref(),
            subject_route(subject),
        )
    }

    /// Stores `event`, which changes no session (a back-channel logout attempt), in the trail,
    /// then publishes it with its position. What it records has happened: a trail that cannot
    /// take it is logged, and the event still reaches the sink.
    pub async fn record_event(&self, mut event: AuditEvent) {
        match self.store.append_event(event.clone()).await {
            Ok(stored) => event.seq = stored.seq,
            Err(err) => tracing::warn!(
                kind = event.kind.as_str(),
                error = %err,
                "an event could not be stored in the audit trail"
            ),
        }
        self.sink.publish(&event);
    }

    fn publish(&self, events: &[AuditEvent]) {
        for event in events {
            self.sink.publish(event);
        }
    }

    /// `result` as it is, having published the events of a change the store made but could
    /// not confirm ([`StoreError::Unconfirmed`]): they are in the trail, so they reach the
    /// audit log too, though the caller is answered 503.
    fn published<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unconfirmed { events, .. }) = &result {
            self.publish(events);
        }
        result
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

    /// The application a new session belongs to and the policy it follows: an application's
    /// sessions are its own and follow a policy it may use; Portcullis's pages create only
    /// Portcullis's own, in the reserved namespace; the operator names the application.
    fn owner_and_policy(
        &self,
        request: &NewSession,
        principal: &Principal,
    ) -> Result<(AppId, String), EngineError> {
        let (application, default_policy) = match &principal.reach {
            Reach::Application(app) => {
                if request.application.as_ref().is_some_and(|a| a != &app.id) {
                    return Err(EngineError::Invalid(
                        "an application creates sessions of its own only".into(),
                    ));
                }
                (app.id.clone(), app.default_policy.as_str())
            }
            Reach::Portcullis => (crate::application::portcullis_app(), crate::SSO_POLICY),
            Reach::Everything => match &request.application {
                Some(app) => (app.clone(), "default"),
                None => {
                    return Err(EngineError::Invalid(
                        "name the application the session belongs to".into(),
                    ));
                }
            },
            Reach::Person(_) => {
                return Err(EngineError::Invalid(
                    "a person cannot create sessions here".into(),
                ));
            }
        };
        let policy = request.policy.as_deref().unwrap_or(default_policy);
        if self.policies.get(policy).is_none() {
            return Err(EngineError::UnknownPolicy(policy.to_owned()));
        }
        let own_kind = application.as_str() == PORTCULLIS_APP;
        let allowed = match &principal.reach {
            Reach::Application(app) => app.may_use(policy),
            // An offline grant is a session of the client's own, on Portcullis's policy for them.
            Reach::Everything if policy == crate::policy::OFFLINE_POLICY => !own_kind,
            _ => is_reserved_policy(policy) == own_kind,
        };
        if !allowed {
            return Err(EngineError::PolicyNotAllowed(policy.to_owned()));
        }
        Ok((application, policy.to_owned()))
    }

    /// Creates a session for a subject the application has authenticated.
    pub async fn create(
        &self,
        request: NewSession,
        principal: &Principal,
    ) -> Result<Issued, EngineError> {
        self.create_reserved(request, None, principal).await
    }

    /// A session id for a session not created yet, of a subject whose [`subject_route`] is
    /// `route`, for a caller that must name the session before it exists (an authorization code
    /// is redeemed for it, atomically, before the session is made). Routed like the ids
    /// [`Engine::create`] makes where the store routes by subject.
    pub fn reserve_session_id(&self, route: u8) -> SessionId {
        if S::ROUTES_BY_SUBJECT {
            PublicId::generate_routed("ses_", route, self.random.as_ref())
        } else {
            PublicId::generate("ses_", self.random.as_ref())
        }
    }

    /// Creates a session, with the id [`Engine::reserve_session_id`] gave when `reserved`.
    pub async fn create_reserved(
        &self,
        request: NewSession,
        reserved: Option<SessionId>,
        principal: &Principal,
    ) -> Result<Issued, EngineError> {
        if request.subject.is_empty() || request.subject.len() > MAX_SUBJECT_BYTES {
            return Err(EngineError::Invalid(format!(
                "subject must be 1 to {MAX_SUBJECT_BYTES} bytes"
            )));
        }
        let (application, policy_name) = self.owner_and_policy(&request, principal)?;
        let actor = &principal.actor;
        let policy = self
            .policies
            .get(&policy_name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPolicy(policy_name.clone()))?;
        Self::check_auth(&request.auth.methods, request.auth.level)?;
        self.check_data(&request.data)?;
        if let Some(parent) = &request.parent {
            // A parent SSO session belongs to the same person; keeping them together also lets
            // sharded stores end a family atomically. A parent out of the caller's reach is
            // answered like one that does not exist.
            let valid = self.store.find_by_id(parent).await?.is_some_and(|p| {
                p.is_live() && p.subject == request.subject && principal.reaches(&p)
            });
            if !valid {
                return Err(EngineError::Invalid(format!(
                    "parent session {parent} is not a live session of this subject"
                )));
            }
        }
        let now = self.clock.now();
        let token = self.new_token(&request.subject);
        let (idle, absolute) = policy.lifetimes(request.remember_me);
        let mut absolute = Deadline::after(now, absolute.lifetime, absolute.text);
        if let Some((at, rule)) = request.ends_by
            && at < absolute.at
        {
            absolute = Deadline::after(now, now.until(at), rule);
        }
        let id = match reserved {
            Some(id) => {
                if S::ROUTES_BY_SUBJECT && id.route(4) != Some(subject_route(&request.subject)) {
                    return Err(EngineError::Invalid(
                        "a reserved session id belongs to its subject".into(),
                    ));
                }
                id
            }
            None => self.reserve_session_id(subject_route(&request.subject)),
        };
        let session = Session {
            id,
            token_hash: token.routed_hash(),
            version: 1,
            subject: request.subject,
            application,
            policy: policy.name.clone(),
            created_at: now,
            last_seen_at: now,
            authenticated_at: request.authenticated_at.map_or(now, |at| at.min(now)),
            remember_me: request.remember_me,
            auth: request.auth,
            elevations: Vec::new(),
            device: request.device,
            data: request.data,
            idle: (!idle.lifetime.is_zero())
                .then(|| Deadline::after(now, idle.lifetime, idle.text)),
            absolute,
            parent: request.parent.clone(),
            reconstituted_from: None,
            back_channel_logout_uri: request.back_channel_logout_uri,
            back_channel_logout_alg: request.back_channel_logout_alg,
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
            .await;
        let inserted = self.published(inserted).map_err(|e| match e {
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
            .await;
        let ended = self.published(ended)?;
        self.publish(&ended.events);
        Ok(())
    }

    async fn end_session(
        &self,
        id: &SessionId,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<usize, EngineError> {
        let ended = self.published(self.store.end(id, self.ending(reason, actor)).await)?;
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
        principal: &Principal,
    ) -> Result<Arc<Session>, EngineError> {
        let hash = Token::hash_presented_routed(TokenKind::Session, token)
            .map_err(|_| EngineError::Rejected(Rejection::Malformed))?;
        // Another application's token answers exactly as an unknown one: the same lookups were
        // made, and nothing about the session (not even that it ended) is told.
        let mut found = self
            .store
            .find_by_token(&hash)
            .await?
            .filter(|s| principal.reaches(s));
        if found.is_none() {
            // Tokens issued before they carried their route (2026-12) are kept under their plain
            // SHA-256 (on Redis, drawn until it began with the route).
            let plain = Token::hash_presented(TokenKind::Session, token)
                .map_err(|_| EngineError::Rejected(Rejection::Malformed))?;
            if plain != hash {
                found = self
                    .store
                    .find_by_token(&plain)
                    .await?
                    .filter(|s| principal.reaches(s));
            }
        }
        let session = found.ok_or(EngineError::Rejected(Rejection::Unknown))?;
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
        principal: &Principal,
    ) -> Result<Validated, EngineError> {
        let mut session = self.live_session(token, Some(device), principal).await?;
        let now = self.clock.now();
        // Anomaly: presented from elsewhere than issued to, where the policy binds nothing
        // (a bound difference has just ended the session). To the audit log, not the trail.
        if let Some(changed) = self.devices.check(&session, device, now) {
            self.publish(std::slice::from_ref(&changed));
        }
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
        principal: &Principal,
    ) -> Result<Issued, EngineError> {
        let actor = &principal.actor;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.live_session(token, None, principal).await?;
            let now = self.clock.now();
            let new_token = self.new_token(&current.subject);
            let mut next = Session::clone(&current);
            next.token_hash = new_token.routed_hash();
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
            let replaced = self.store.replace(current.version, next, event).await;
            if let Some((session, event)) = self.published(replaced)? {
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
    pub async fn rotate(&self, token: &str, principal: &Principal) -> Result<Issued, EngineError> {
        self.reissue(token, EventKind::SessionRotated, |_, _| {}, principal)
            .await
    }

    /// Records a re-authentication for a sensitive action: a new `authenticated_at`, both
    /// timers restarted (SP 800-63B rev 4), an elevation with its own lifetime, a new token.
    pub async fn elevate(
        &self,
        token: &str,
        request: Elevate,
        principal: &Principal,
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
        // Portcullis's own pages checked the credentials themselves; an application only
        // claims it did, which restarts the absolute deadline only where the policy says so.
        let checked_here = matches!(principal.reach, Reach::Portcullis);
        self.reissue(
            token,
            EventKind::SessionElevated,
            |session, now| {
                let policy = self.policy_of(session);
                session.authenticated_at = now;
                if checked_here || policy.elevation_restarts_absolute.value {
                    session.absolute.at = now.plus(session.absolute.lifetime());
                }
                session.elevations.push(Elevation {
                    id: elevation_id.clone(),
                    scope: request.scope.clone(),
                    methods: request.methods.clone(),
                    level: request.level,
                    at: now,
                    expires_at: now.plus(policy.elevation.value),
                });
            },
            principal,
        )
        .await
    }

    /// Logs out. Idempotent: an unknown or already ended session is fine.
    pub async fn logout(&self, token: &str, principal: &Principal) -> Result<(), EngineError> {
        match self.live_session(token, None, principal).await {
            Ok(session) => {
                self.end_session(&session.id, EndReason::Logout, &principal.actor)
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

    /// One session by its public id (live or recently ended); another application's is
    /// [`EngineError::NotFound`].
    pub async fn get(
        &self,
        id: &SessionId,
        principal: &Principal,
    ) -> Result<Arc<Session>, EngineError> {
        let session = self
            .store
            .find_by_id(id)
            .await?
            .filter(|s| principal.reaches(s))
            .ok_or(EngineError::NotFound)?;
        self.settle(session).await
    }

    /// Validates a session by its id, as [`Engine::validate`] does by its token (the refresh
    /// grant and the access tokens of a client hold no session token): a session past a
    /// deadline ends, and so does one whose parent SSO session has ended or timed out
    /// (`parent_ended`); with `activity` the idle deadline moves. Answers the session, or why
    /// it is not live.
    pub async fn validate_by_id(
        &self,
        id: &SessionId,
        activity: bool,
        principal: &Principal,
    ) -> Result<Arc<Session>, EngineError> {
        let mut session = self.get(id, principal).await?;
        if session.is_live()
            && let Some(parent) = &session.parent
        {
            // Settling the parent ends it when it is past a deadline, and its children with it.
            let parent = self.store.find_by_id(parent).await?;
            let parent_live = match parent {
                Some(parent) => self.settle(parent).await?.is_live(),
                None => false,
            };
            if !parent_live {
                self.end_session(id, EndReason::ParentEnded, &Actor::system())
                    .await?;
                session = self.get(id, principal).await?;
            }
        }
        if let Some(ended) = &session.ended {
            return Err(EngineError::Rejected(Rejection::for_ending(ended.reason)));
        }
        let now = self.clock.now();
        if activity && now >= session.last_seen_at.plus(self.touch_interval(&session)) {
            self.store.touch(&session.id, now).await?;
            if let Some(touched) = self.store.find_by_id(&session.id).await? {
                session = touched;
            }
        }
        Ok(session)
    }

    /// Ends one session as an administrator (`revoked_admin`). Idempotent for ended sessions.
    pub async fn revoke(&self, id: &SessionId, principal: &Principal) -> Result<(), EngineError> {
        self.end(id, EndReason::RevokedAdmin, principal).await
    }

    /// Ends one live session for `reason` (a person signing out one of their devices).
    /// Idempotent for ended sessions.
    pub async fn end(
        &self,
        id: &SessionId,
        reason: EndReason,
        principal: &Principal,
    ) -> Result<(), EngineError> {
        let session = self.get(id, principal).await?;
        if session.is_live() {
            self.end_session(id, reason, &principal.actor).await?;
        }
        Ok(())
    }

    /// Refuses `all` (every application's sessions of a subject) without `grant`, and a person
    /// acting on a subject other than their own.
    fn check_subject_scope(
        principal: &Principal,
        subject: &str,
        all: bool,
        grant: Grant,
    ) -> Result<(), EngineError> {
        if let Reach::Person(user) = &principal.reach
            && user != subject
        {
            return Err(EngineError::NotFound);
        }
        if all && !principal.holds(grant) {
            return Err(EngineError::GrantRequired(grant));
        }
        Ok(())
    }

    /// A subject's live sessions, oldest first: the caller's own application's, or with `all`
    /// (grant `list_all_sessions`) every application's and the SSO session.
    pub async fn list_subject(
        &self,
        subject: &str,
        all: bool,
        principal: &Principal,
    ) -> Result<Vec<Arc<Session>>, EngineError> {
        Self::check_subject_scope(principal, subject, all, Grant::ListAllSessions)?;
        let mut live = Vec::new();
        for session in self.store.list_subject(subject).await? {
            if !all && !principal.reaches(&session) {
                continue;
            }
            let session = self.settle(session).await?;
            if session.is_live() {
                live.push(session);
            }
        }
        Ok(live)
    }

    /// Ends every live session of `subject` but `except` (force logout after a password change):
    /// the caller's own application's, or with `all` (grant `end_everywhere`) every
    /// application's and the SSO session.
    pub async fn end_subject(
        &self,
        subject: &str,
        except: Option<&SessionId>,
        reason: EndReason,
        all: bool,
        principal: &Principal,
    ) -> Result<usize, EngineError> {
        // Portcullis's own rules (a disabled account, a changed password) act as the person or
        // as Portcullis; an application or an operator names only what it may claim.
        let claimable = match principal.reach {
            Reach::Application(_) | Reach::Everything => reason.is_claimable(),
            Reach::Person(_) | Reach::Portcullis => {
                !reason.is_timeout() && reason != EndReason::ParentEnded
            }
        };
        if !claimable {
            return Err(EngineError::Invalid(format!(
                "{} is not a reason a caller can end sessions for (logout, revoked_admin, password_changed or security_action)",
                reason.as_str()
            )));
        }
        Self::check_subject_scope(principal, subject, all, Grant::EndEverywhere)?;
        // An `except` naming no session of this subject that the caller reaches (a typo,
        // another person's id) would end the very session the caller meant to keep: refused,
        // nothing ended. One that ended meanwhile is still named, and the others end.
        if let Some(except) = except {
            let kept = self.store.find_by_id(except).await?;
            if !kept.is_some_and(|s| s.subject == subject && (all || principal.reaches(&s))) {
                return Err(EngineError::NotFound);
            }
        }
        let only = match (&principal.reach, all) {
            (_, true) | (Reach::Everything | Reach::Person(_), false) => None,
            (Reach::Application(app), false) => Some(app.id.clone()),
            (Reach::Portcullis, false) => Some(crate::application::portcullis_app()),
        };
        let ended = self
            .store
            .end_subject(
                subject,
                only.as_ref(),
                except,
                self.ending(reason, &principal.actor),
            )
            .await;
        let ended = self.published(ended)?;
        self.publish(&ended.events);
        Ok(ended.sessions.len())
    }

    /// Replaces a live session's data.
    pub async fn replace_data(
        &self,
        id: &SessionId,
        data: serde_json::Value,
        principal: &Principal,
    ) -> Result<Arc<Session>, EngineError> {
        self.check_data(&data)?;
        let actor = &principal.actor;
        for _ in 0..CAS_ATTEMPTS {
            let current = self.get(id, principal).await?;
            if let Some(ended) = &current.ended {
                return Err(EngineError::Rejected(Rejection::for_ending(ended.reason)));
            }
            let mut next = Session::clone(&current);
            next.version += 1;
            next.data = data.clone();
            let event =
                AuditEvent::for_session(EventKind::SessionDataReplaced, &next, self.now(), actor);
            let replaced = self.store.replace(current.version, next, event).await;
            if let Some((session, event)) = self.published(replaced)? {
                self.publish(std::slice::from_ref(&event));
                return Ok(session);
            }
        }
        Err(EngineError::Conflict)
    }

    /// Audit events, oldest first: the caller's own application's, or with `all` (grant
    /// `read_all_events`) everyone's.
    pub async fn events(
        &self,
        query: &EventQuery,
        all: bool,
        principal: &Principal,
    ) -> Result<Vec<AuditEvent>, EngineError> {
        let mut query = query.clone();
        if all {
            if !principal.holds(Grant::ReadAllEvents) {
                return Err(EngineError::GrantRequired(Grant::ReadAllEvents));
            }
        } else {
            match &principal.reach {
                Reach::Everything => {}
                Reach::Application(app) => query.application = Some(app.id.clone()),
                Reach::Portcullis | Reach::Person(_) => {
                    return Err(EngineError::GrantRequired(Grant::ReadAllEvents));
                }
            }
        }
        Ok(self.store.events(&query).await?)
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

    /// Creates an API key for `application` (an id or a name); the secret is returned here and
    /// never again.
    pub async fn create_api_key(
        &self,
        name: &str,
        application: &str,
        actor: &Actor,
    ) -> Result<(Token, ApiKey), EngineError> {
        if name.is_empty() || name.len() > MAX_LABEL_BYTES {
            return Err(EngineError::Invalid(
                "an API key name must be 1 to 64 bytes".into(),
            ));
        }
        let app = self.application(application).await?;
        let token = Token::generate(TokenKind::ApiKey, self.random.as_ref());
        let key = ApiKey {
            id: PublicId::generate("key_", self.random.as_ref()),
            name: name.to_owned(),
            application: app.id.clone(),
            key_hash: token.hash(),
            created_at: self.now(),
            revoked_at: None,
        };
        let event = api_key_event(EventKind::ApiKeyCreated, &key, self.now(), actor);
        let event = self.store.add_api_key(key.clone(), event).await?;
        self.publish(std::slice::from_ref(&event));
        Ok((token, key))
    }

    /// The principal behind a presented API key: the key is live and its application exists.
    pub async fn authenticate_api_key(
        &self,
        presented: &str,
    ) -> Result<Option<Principal>, EngineError> {
        let Ok(hash) = Token::hash_presented(TokenKind::ApiKey, presented) else {
            return Ok(None);
        };
        let Some(key) = self
            .store
            .find_api_key(&hash)
            .await?
            .filter(|k| k.revoked_at.is_none())
        else {
            return Ok(None);
        };
        let Some(app) = self.store.find_application(&key.application).await? else {
            return Ok(None);
        };
        Ok(Some(Principal::application(Arc::new(app), &key.id)))
    }

    /// Every API key (their hashes only).
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, EngineError> {
        Ok(self.store.list_api_keys().await?)
    }

    /// How many API keys and applications this engine has revoked or changed. Whoever
    /// remembers a caller it checked (per connection, say) reads this before the check and
    /// trusts the memory only while it is unchanged, so a revocation, or a change of an
    /// application's grants, through this engine takes effect at once.
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
        let known = self
            .store
            .list_api_keys()
            .await?
            .into_iter()
            .find(|k| &k.id == id)
            .ok_or(EngineError::NotFound)?;
        let event = api_key_event(EventKind::ApiKeyRevoked, &known, now, actor);
        let revoked = self.store.revoke_api_key(id, now, event).await;
        if matches!(revoked, Err(StoreError::Unconfirmed { .. })) {
            // Revoked on the primary: callers' keys are checked again from now on.
            self.api_key_revocations.fetch_add(1, Ordering::AcqRel);
        }
        let (key, event) = self.published(revoked)?.ok_or(EngineError::NotFound)?;
        self.api_key_revocations.fetch_add(1, Ordering::AcqRel);
        self.publish(std::slice::from_ref(&event));
        Ok(key)
    }

    /// The application with this id or, failing that, this name.
    pub async fn application(&self, id_or_name: &str) -> Result<Application, EngineError> {
        if id_or_name.starts_with("app_")
            && let Some(app) = self
                .store
                .find_application(&PublicId::from_string(id_or_name.to_owned()))
                .await?
        {
            return Ok(app);
        }
        self.store
            .list_applications()
            .await?
            .into_iter()
            .find(|a| a.name == id_or_name)
            .ok_or_else(|| EngineError::UnknownApplication(id_or_name.to_owned()))
    }

    /// Every application, oldest first.
    pub async fn list_applications(&self) -> Result<Vec<Application>, EngineError> {
        Ok(self.store.list_applications().await?)
    }

    /// Checks an application's settings against the policies in force.
    fn check_application(&self, app: &Application) -> Result<(), EngineError> {
        // The name labels the application's sessions on the person's account page: no line
        // breaks or other control characters, no padding, and nothing that reads as Portcullis.
        if app.name.is_empty()
            || app.name.len() > MAX_LABEL_BYTES
            || app.name.starts_with("app_")
            || app.name.eq_ignore_ascii_case(PORTCULLIS_APP)
            || app.name.chars().any(char::is_control)
            || app.name.trim() != app.name
        {
            return Err(EngineError::Invalid(
                "an application name must be 1 to 64 bytes without control characters or spaces around it, not start with \"app_\" and not be \"portcullis\" in any case".into(),
            ));
        }
        if app.policies.is_empty() || app.policies.len() > 64 {
            return Err(EngineError::Invalid(
                "an application needs 1 to 64 policies".into(),
            ));
        }
        for policy in &app.policies {
            if is_reserved_policy(policy) {
                return Err(EngineError::PolicyNotAllowed(policy.clone()));
            }
            if policy != ANY_POLICY && self.policies.get(policy).is_none() {
                return Err(EngineError::UnknownPolicy(policy.clone()));
            }
        }
        if self.policies.get(&app.default_policy).is_none() {
            return Err(EngineError::UnknownPolicy(app.default_policy.clone()));
        }
        if !app.may_use(&app.default_policy) {
            return Err(EngineError::PolicyNotAllowed(app.default_policy.clone()));
        }
        Ok(())
    }

    /// Registers an application.
    pub async fn add_application(
        &self,
        change: ApplicationChange,
        actor: &Actor,
    ) -> Result<Application, EngineError> {
        let policies = change
            .policies
            .unwrap_or_else(|| vec!["default".to_owned()]);
        let default_policy = change
            .default_policy
            .unwrap_or_else(|| policies.first().cloned().unwrap_or_default());
        let default_policy = if default_policy == ANY_POLICY {
            "default".to_owned()
        } else {
            default_policy
        };
        let app = Application {
            id: PublicId::generate("app_", self.random.as_ref()),
            name: change.name.unwrap_or_default(),
            policies,
            default_policy,
            grants: change.grants.unwrap_or_default().into_iter().collect(),
            client: None,
            created_at: self.now(),
            version: 1,
        };
        self.check_application(&app)?;
        let event = application_event(EventKind::ApplicationCreated, &app, self.now(), actor);
        let event = self
            .store
            .add_application(app.clone(), event)
            .await
            .map_err(EngineError::from_store)?;
        self.publish(std::slice::from_ref(&event));
        Ok(app)
    }

    /// Changes an application's name, policies or grants; callers with its keys see the change
    /// on their next request.
    pub async fn update_application(
        &self,
        id_or_name: &str,
        change: ApplicationChange,
        actor: &Actor,
    ) -> Result<Application, EngineError> {
        self.change_application(id_or_name, actor, |next| {
            if let Some(name) = &change.name {
                next.name = name.clone();
            }
            if let Some(policies) = &change.policies {
                next.policies = policies.clone();
            }
            if let Some(default_policy) = &change.default_policy {
                next.default_policy = default_policy.clone();
            }
            if let Some(grants) = &change.grants {
                next.grants = grants.iter().copied().collect();
            }
            Ok(())
        })
        .await
    }

    /// Registers the application as an OpenID Connect client, replaces its registration, or
    /// (`None`) ends it; the registration is checked first.
    pub async fn register_client(
        &self,
        id_or_name: &str,
        client: Option<crate::oidc::Client>,
        actor: &Actor,
    ) -> Result<Application, EngineError> {
        if let Some(client) = &client {
            client
                .validate()
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        self.change_application(id_or_name, actor, |next| {
            next.client = client.clone();
            Ok(())
        })
        .await
    }

    /// A new client secret (`pcc_…`), for a registration that authenticates with one.
    pub fn new_client_secret(&self) -> Token {
        Token::generate(TokenKind::ClientSecret, self.random.as_ref())
    }

    /// Applies `change` to the application at the version read, retrying when it changed
    /// concurrently.
    async fn change_application(
        &self,
        id_or_name: &str,
        actor: &Actor,
        change: impl Fn(&mut Application) -> Result<(), EngineError>,
    ) -> Result<Application, EngineError> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.application(id_or_name).await?;
            let mut next = current.clone();
            change(&mut next)?;
            next.version += 1;
            self.check_application(&next)?;
            let event = application_event(EventKind::ApplicationUpdated, &next, self.now(), actor);
            if let Some(event) = self
                .store
                .update_application(current.version, next.clone(), event)
                .await
                .map_err(EngineError::from_store)?
            {
                self.api_key_revocations.fetch_add(1, Ordering::AcqRel);
                self.publish(std::slice::from_ref(&event));
                return Ok(next);
            }
        }
        Err(EngineError::Conflict)
    }

    /// Removes an application: its keys stop working at once (a key is accepted only while its
    /// application exists), then they are revoked and its sessions end with `app_removed`.
    pub async fn remove_application(
        &self,
        id_or_name: &str,
        actor: &Actor,
    ) -> Result<RemovedApplication, EngineError> {
        let app = self.application(id_or_name).await?;
        let event = application_event(EventKind::ApplicationRemoved, &app, self.now(), actor);
        let event = self
            .store
            .remove_application(&app.id, event)
            .await?
            .ok_or_else(|| EngineError::UnknownApplication(id_or_name.to_owned()))?;
        self.api_key_revocations.fetch_add(1, Ordering::AcqRel);
        self.publish(std::slice::from_ref(&event));
        let (api_keys_revoked, sessions_ended) = self.retire_application(&app.id, actor).await?;
        Ok(RemovedApplication {
            application: app,
            api_keys_revoked,
            sessions_ended,
        })
    }

    /// Revokes the keys and ends the sessions of a removed application.
    async fn retire_application(
        &self,
        id: &AppId,
        actor: &Actor,
    ) -> Result<(usize, usize), EngineError> {
        let mut keys = 0;
        for key in self.store.list_api_keys().await? {
            if &key.application == id && key.revoked_at.is_none() {
                self.revoke_api_key(&key.id, actor).await?;
                keys += 1;
            }
        }
        let mut sessions = 0;
        loop {
            let batch = self.store.application_sessions(id, 256).await?;
            if batch.is_empty() {
                break;
            }
            for session in batch {
                sessions += self
                    .end_session(&session.id, EndReason::AppRemoved, actor)
                    .await?;
            }
        }
        Ok((keys, sessions))
    }

    /// Moves the previous release's API keys to an application created for them (`legacy`,
    /// every policy and every grant, as those keys could do everything); their sessions already
    /// read back as that application's. Returns it when it was created now.
    pub async fn adopt_legacy_keys(&self) -> Result<Option<Application>, EngineError> {
        let legacy = legacy_app();
        let keys = self.store.list_api_keys().await?;
        if !keys.iter().any(|k| k.application == legacy)
            || self.store.find_application(&legacy).await?.is_some()
        {
            return Ok(None);
        }
        let taken: Vec<String> = self
            .store
            .list_applications()
            .await?
            .into_iter()
            .map(|a| a.name)
            .collect();
        let name = (0..)
            .map(|n| {
                if n == 0 {
                    "legacy".to_owned()
                } else {
                    format!("legacy-{n}")
                }
            })
            .find(|n| !taken.contains(n))
            .unwrap_or_default();
        let app = Application {
            id: legacy,
            name,
            policies: vec![ANY_POLICY.to_owned()],
            default_policy: "default".to_owned(),
            grants: Grant::ALL.into_iter().collect(),
            client: None,
            created_at: self.now(),
            version: 1,
        };
        let event = application_event(
            EventKind::ApplicationCreated,
            &app,
            self.now(),
            &Actor::system(),
        )
        .with_detail(serde_json::json!({
            "application": LEGACY_APP, "name": app.name, "upgrade": true,
        }));
        match self.store.add_application(app.clone(), event).await {
            Ok(event) => {
                self.publish(std::slice::from_ref(&event));
                Ok(Some(app))
            }
            // Another node adopted them first.
            Err(StoreError::NameTaken(_)) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

/// The event of an application change.
fn application_event(
    kind: EventKind,
    app: &Application,
    at: Timestamp,
    actor: &Actor,
) -> AuditEvent {
    let grants: Vec<&str> = app.grants.iter().map(|g| g.as_str()).collect();
    AuditEvent::for_application(
        kind,
        &app.id,
        at,
        actor,
        serde_json::json!({
            "application": app.id.as_str(), "name": app.name, "policies": app.policies,
            "default_policy": app.default_policy, "grants": grants,
        }),
    )
}

/// The event of an API-key change.
fn api_key_event(kind: EventKind, key: &ApiKey, at: Timestamp, actor: &Actor) -> AuditEvent {
    AuditEvent::for_application(
        kind,
        &key.application,
        at,
        actor,
        serde_json::json!({ "api_key": key.id.as_str(), "name": key.name }),
    )
}

impl<S: Store> crate::store::EventTrail for Engine<S> {
    fn append(&self, event: AuditEvent) -> crate::store::TrailFuture<'_> {
        Box::pin(self.store.append_event(event))
    }
}
