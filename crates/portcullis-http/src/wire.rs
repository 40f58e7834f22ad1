//! The JSON wire format of API v1: request bodies (unknown fields refused) and views.
//! Domain types are never serialised directly; they are converted here, at the edge.

use std::sync::Arc;

use portcullis_core::{
    ApiKey, AuditEvent, AuthContext, Deadline, Device, Elevation, Issued, NewSession, Session,
    Timestamp, Validated,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

/// Renders a timestamp as RFC 3339 UTC.
pub fn rfc3339(t: Timestamp) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_millis()) * 1_000_000)
        .ok()
        .and_then(|dt| dt.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// How the person authenticated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthBody {
    /// RFC 8176 method names (`pwd`, `otp`, `hwk`…).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Authenticator assurance level 1–3 (default 1).
    #[serde(default = "level_one")]
    pub level: u8,
}

fn level_one() -> u8 {
    1
}

impl Default for AuthBody {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            level: level_one(),
        }
    }
}

/// Where the request comes from, as the application saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// The browser's user agent.
    pub user_agent: Option<String>,
    /// The client's IP address.
    pub ip: Option<String>,
}

impl From<DeviceBody> for Device {
    fn from(d: DeviceBody) -> Self {
        Device {
            user_agent: d.user_agent,
            ip: d.ip,
        }
    }
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionBody {
    /// Who signed in (the application's user id).
    pub subject: String,
    /// The person answered "Stay signed in?" with yes.
    #[serde(default)]
    pub remember_me: bool,
    /// Policy name (default `default`).
    pub policy: Option<String>,
    /// How they authenticated.
    #[serde(default)]
    pub auth: AuthBody,
    /// Their device.
    #[serde(default)]
    pub device: DeviceBody,
    /// Application data (size-limited).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Take back the data of the subject's last timed-out session.
    #[serde(default)]
    pub reconstitute: bool,
    /// Id of the parent SSO session.
    pub parent: Option<String>,
}

impl From<CreateSessionBody> for NewSession {
    fn from(b: CreateSessionBody) -> Self {
        NewSession {
            subject: b.subject,
            policy: b.policy,
            remember_me: b.remember_me,
            auth: AuthContext {
                methods: b.auth.methods,
                level: b.auth.level,
            },
            device: b.device.into(),
            data: b.data,
            reconstitute: b.reconstitute,
            parent: b.parent.map(portcullis_core::PublicId::from_string),
        }
    }
}

/// `POST /v1/sessions/validate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    /// The session token.
    pub token: String,
    /// Count this request as activity (default true; false for background polls).
    #[serde(default = "yes")]
    pub activity: bool,
    /// The device presenting the token (checked when the policy binds sessions).
    #[serde(default)]
    pub device: DeviceBody,
}

fn yes() -> bool {
    true
}

/// `POST /v1/sessions/rotate` and `/logout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The session token.
    pub token: String,
}

/// `POST /v1/sessions/elevate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElevateBody {
    /// The session token.
    pub token: String,
    /// How the person re-authenticated.
    pub methods: Vec<String>,
    /// Assurance level of the re-authentication (default 1).
    #[serde(default = "level_one")]
    pub level: u8,
    /// What the elevation allows (default `sensitive`).
    #[serde(default = "sensitive")]
    pub scope: String,
}

fn sensitive() -> String {
    "sensitive".into()
}

/// A deadline and the rule that set it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadlineView {
    /// RFC 3339.
    pub at: String,
    /// E.g. `policy default: idle 15m (built-in default)`.
    pub rule: String,
}

impl From<&Deadline> for DeadlineView {
    fn from(d: &Deadline) -> Self {
        Self {
            at: rfc3339(d.at),
            rule: d.rule.clone(),
        }
    }
}

/// The session's deadlines.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadlinesView {
    /// Idle deadline (`null` when the policy has no idle timeout).
    pub idle: Option<DeadlineView>,
    /// Absolute deadline.
    pub absolute: DeadlineView,
}

/// An elevation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ElevationView {
    /// Public id.
    pub id: String,
    /// What it allows.
    pub scope: String,
    /// Methods used.
    pub methods: Vec<String>,
    /// Assurance level.
    pub level: u8,
    /// When granted.
    pub at: String,
    /// When it lapses.
    pub expires_at: String,
}

impl From<&Elevation> for ElevationView {
    fn from(e: &Elevation) -> Self {
        Self {
            id: e.id.to_string(),
            scope: e.scope.clone(),
            methods: e.methods.clone(),
            level: e.level,
            at: rfc3339(e.at),
            expires_at: rfc3339(e.expires_at),
        }
    }
}

/// How a session ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndedView {
    /// `logout`, `expired_idle`, `revoked_admin`, …
    pub reason: String,
    /// When.
    pub at: String,
}

/// How the person authenticated.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthView {
    /// Methods.
    pub methods: Vec<String>,
    /// Assurance level.
    pub level: u8,
}

/// The device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// User agent.
    pub user_agent: Option<String>,
    /// IP address.
    pub ip: Option<String>,
}

/// A session as the API shows it. Never contains the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Public id (also the OIDC `sid`).
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Policy name.
    pub policy: String,
    /// RFC 3339.
    pub created_at: String,
    /// Last recorded activity (coalesced).
    pub last_seen_at: String,
    /// Last (re-)authentication.
    pub authenticated_at: String,
    /// "Stay signed in" chosen.
    pub remember_me: bool,
    /// How the person authenticated.
    pub auth: AuthView,
    /// Elevations in force.
    pub elevations: Vec<ElevationView>,
    /// Device.
    pub device: DeviceView,
    /// Application data.
    pub data: serde_json::Value,
    /// Deadlines with the rule behind each.
    pub deadlines: DeadlinesView,
    /// The nearest deadline.
    pub expires_at: String,
    /// Parent SSO session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The timed-out session whose data this one got back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconstituted_from: Option<String>,
    /// Present once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndedView>,
}

impl SessionView {
    /// The view of `s` at `now` (lapsed elevations are not shown).
    pub fn of(s: &Session, now: Timestamp) -> Self {
        Self {
            id: s.id.to_string(),
            subject: s.subject.clone(),
            policy: s.policy.clone(),
            created_at: rfc3339(s.created_at),
            last_seen_at: rfc3339(s.last_seen_at),
            authenticated_at: rfc3339(s.authenticated_at),
            remember_me: s.remember_me,
            auth: AuthView {
                methods: s.auth.methods.clone(),
                level: s.auth.level,
            },
            elevations: s.active_elevations(now).map(Into::into).collect(),
            device: DeviceView {
                user_agent: s.device.user_agent.clone(),
                ip: s.device.ip.clone(),
            },
            data: s.data.clone(),
            deadlines: DeadlinesView {
                idle: s.idle.as_ref().map(Into::into),
                absolute: (&s.absolute).into(),
            },
            expires_at: rfc3339(s.next_deadline().0),
            parent: s.parent.as_ref().map(ToString::to_string),
            reconstituted_from: s.reconstituted_from.as_ref().map(ToString::to_string),
            ended: s.ended.as_ref().map(|e| EndedView {
                reason: e.reason.as_str().to_owned(),
                at: rfc3339(e.at),
            }),
        }
    }
}

/// A session with its new token: shown once, never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedView {
    /// The secret session token (`pcs_…`).
    pub token: String,
    /// The session.
    pub session: SessionView,
}

impl IssuedView {
    /// The view of an issued session.
    pub fn of(issued: &Issued, now: Timestamp) -> Self {
        Self {
            token: issued.token.expose().to_owned(),
            session: SessionView::of(&issued.session, now),
        }
    }
}

/// An accepted validation.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatedView {
    /// The session.
    pub session: SessionView,
    /// Whole seconds until the nearest deadline.
    pub expires_in: u64,
    /// Inside the policy's warning lead time: time to offer "Stay signed in?".
    pub warning: bool,
}

impl ValidatedView {
    /// The view of a validation.
    pub fn of(v: &Validated, now: Timestamp) -> Self {
        Self {
            session: SessionView::of(&v.session, now),
            expires_in: v.expires_in.as_secs(),
            warning: v.warning,
        }
    }
}

/// A subject's live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionListView {
    /// Oldest first.
    pub sessions: Vec<SessionView>,
}

impl SessionListView {
    /// The view of a list.
    pub fn of(sessions: &[Arc<Session>], now: Timestamp) -> Self {
        Self {
            sessions: sessions.iter().map(|s| SessionView::of(s, now)).collect(),
        }
    }
}

/// How many sessions a force logout ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndedCountView {
    /// Sessions ended.
    pub ended: usize,
}

/// `DELETE /v1/subjects/{subject}/sessions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EndSubjectQuery {
    /// The session to keep (the one that changed the password).
    pub except: Option<String>,
    /// Ending reason (default `revoked_admin`; e.g. `password_changed`, `security_action`).
    pub reason: Option<String>,
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this subject's events.
    pub subject: Option<String>,
    /// Only this session's events.
    pub session: Option<String>,
    /// Only events after this position (the `next` of the previous page).
    pub after: Option<u64>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the trail.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// `session.created`, `session.ended`, …
    pub kind: String,
    /// Who caused it (`api_key:key_…`, `cli`, `system`).
    pub actor: String,
    /// Session id.
    pub session_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Policy.
    pub policy: Option<String>,
    /// Ending reason.
    pub reason: Option<String>,
    /// Extra detail.
    pub detail: serde_json::Value,
}

impl From<&AuditEvent> for EventView {
    fn from(e: &AuditEvent) -> Self {
        Self {
            seq: e.seq,
            at: rfc3339(e.at),
            kind: e.kind.as_str().to_owned(),
            actor: e.actor.0.clone(),
            session_id: e.session_id.as_ref().map(ToString::to_string),
            subject: e.subject.clone(),
            policy: e.policy.clone(),
            reason: e.reason.map(|r| r.as_str().to_owned()),
            detail: e.detail.clone(),
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsView {
    /// Oldest first.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; `null` when this page was the last.
    pub next: Option<u64>,
}

/// `POST /admin/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyBody {
    /// What the key is for.
    pub name: String,
}

/// An API key (never its secret, except once at creation).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
    /// The secret: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            created_at: rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(rfc3339),
            key: None,
        }
    }
}

/// Every API key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyListView {
    /// Oldest first.
    pub api_keys: Vec<ApiKeyView>,
}

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// A new local account (admin socket only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// What the person types to sign in.
    pub username: String,
    /// The initial password (sent over the admin socket only; never logged).
    pub password: String,
}

/// A change to an account (admin socket only). Disabling ends every session of the account;
/// setting the password ends them too (`password_changed`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    /// Disable (`true`) or enable (`false`).
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A new password.
    #[serde(default)]
    pub password: Option<String>,
}

/// A local account (never its password hash or TOTP secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Public id: the subject of the person's sessions.
    pub id: String,
    /// Username.
    pub username: String,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether a TOTP second factor is enrolled.
    pub totp: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub password_changed_at: String,
    /// Sessions ended by this change (disable or password reset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_ended: Option<usize>,
}

impl From<&portcullis_core::User> for UserView {
    fn from(u: &portcullis_core::User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            disabled: u.disabled,
            totp: u.totp.is_some(),
            created_at: rfc3339(u.created_at),
            password_changed_at: rfc3339(u.password_changed_at),
            sessions_ended: None,
        }
    }
}

/// Every account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserListView {
    /// The accounts, by username.
    pub users: Vec<UserView>,
}
