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
            Self::LoginFailed => "login.failed",
            Self::LoginThrottled => "login.throttled",
            Self::ApplicationCreated => "application.created",
            Self::ApplicationUpdated => "application.updated",
            Self::ApplicationRemoved => "application.removed",
        }
    }
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
    }

    /// An event about an account (published to the audit log; the session trail keeps only
    /// session and API-key events). `user_id` is empty for an attempt on an unknown username.
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
            application: None,
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

    /// Adds detail to the event.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
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
