//! The session model: who, since when, at what assurance, until when and why.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::application::AppId;
use crate::oidc::SigningAlg;
use crate::time::Timestamp;
use crate::token::{PublicId, SessionId, TokenHash};

/// Why a session ended (DESIGN §2). Every ending carries one, is audited and propagated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The person logged out.
    Logout,
    /// No activity for the idle timeout.
    ExpiredIdle,
    /// The absolute lifetime ran out.
    ExpiredAbsolute,
    /// An administrator ended it.
    RevokedAdmin,
    /// The person changed their password (every session but the one that changed it).
    PasswordChanged,
    /// Another security action (MFA change, email change…).
    SecurityAction,
    /// The concurrent-session limit evicted it for a new sign-in.
    NewDevice,
    /// Its parent SSO session ended.
    ParentEnded,
    /// The upstream identity provider logged the person out.
    UpstreamLogout,
    /// A refresh token was used twice (theft detected).
    TokenReuse,
    /// It was presented from a device it is not bound to.
    BindingMismatch,
    /// Its application was removed.
    AppRemoved,
    /// The person's account was disabled.
    AccountDisabled,
}

impl EndReason {
    /// Every reason, in the order of DESIGN §2.
    pub const ALL: [Self; 13] = [
        Self::Logout,
        Self::ExpiredIdle,
        Self::ExpiredAbsolute,
        Self::RevokedAdmin,
        Self::PasswordChanged,
        Self::SecurityAction,
        Self::NewDevice,
        Self::ParentEnded,
        Self::UpstreamLogout,
        Self::TokenReuse,
        Self::BindingMismatch,
        Self::AppRemoved,
        Self::AccountDisabled,
    ];

    /// The reason's wire name (`expired_idle`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::ExpiredIdle => "expired_idle",
            Self::ExpiredAbsolute => "expired_absolute",
            Self::RevokedAdmin => "revoked_admin",
            Self::PasswordChanged => "password_changed",
            Self::SecurityAction => "security_action",
            Self::NewDevice => "new_device",
            Self::ParentEnded => "parent_ended",
            Self::UpstreamLogout => "upstream_logout",
            Self::TokenReuse => "token_reuse",
            Self::BindingMismatch => "binding_mismatch",
            Self::AppRemoved => "app_removed",
            Self::AccountDisabled => "account_disabled",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether an application or an operator may end sessions for this reason: the others say
    /// that something happened which only Portcullis itself sees (a timeout, a stolen refresh
    /// token, a removed application…), and the audit trail must be able to trust them.
    pub const fn is_claimable(self) -> bool {
        matches!(
            self,
            Self::Logout | Self::RevokedAdmin | Self::PasswordChanged | Self::SecurityAction
        )
    }

    /// Whether the session timed out (and so may be re-constituted).
    pub const fn is_timeout(self) -> bool {
        matches!(self, Self::ExpiredIdle | Self::ExpiredAbsolute)
    }
}

/// How the person authenticated when the session was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthContext {
    /// Methods used (RFC 8176 `amr` values such as `pwd`, `otp`, `hwk`).
    pub methods: Vec<String>,
    /// Authenticator assurance level, 1–3. A session never claims more than its login gave.
    pub level: u8,
}

/// Where a session is used from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The user agent string, as the application saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client IP address, as the application saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A re-authentication for sensitive actions, with its own short lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elevation {
    /// Public id of the elevation.
    pub id: PublicId,
    /// What it allows (`password_change`, `payments`, …).
    pub scope: String,
    /// Methods used to re-authenticate.
    pub methods: Vec<String>,
    /// Assurance level of the re-authentication.
    pub level: u8,
    /// When it was granted.
    pub at: Timestamp,
    /// When it lapses.
    pub expires_at: Timestamp,
}

/// A deadline and the rule that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// When the session ends unless something happens.
    pub at: Timestamp,
    /// The lifetime the deadline is computed from.
    pub lifetime_ms: u64,
    /// Human-readable rule, e.g. `policy default: idle 15m (built-in default)`.
    pub rule: String,
}

impl Deadline {
    /// A deadline `lifetime` after `from`.
    pub fn after(from: Timestamp, lifetime: Duration, rule: String) -> Self {
        Self {
            at: from.plus(lifetime),
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            rule,
        }
    }

    /// The lifetime as a [`Duration`].
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_ms)
    }
}

/// How and when a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// Why.
    pub reason: EndReason,
    /// When (for a timeout: the deadline that passed, not the moment it was noticed).
    pub at: Timestamp,
    /// Until when its data may be re-constituted (timeouts only, when the policy allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstitute_until: Option<Timestamp>,
    /// The session that re-constituted it; a tombstone is used at most once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstituted_into: Option<SessionId>,
    /// When the store may forget it entirely.
    pub purge_at: Timestamp,
}

/// A session: the store's record. Stores key it by `token_hash` and by `id`.
///
/// Stores keep it as [`crate::stored::StoredSession`], whose field names are the storage
/// contract, so this type may change freely (the API has its own views too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Public, non-secret id (also the OIDC `sid`).
    pub id: SessionId,
    /// SHA-256 of the current token; the token itself is never stored.
    pub token_hash: TokenHash,
    /// Bumped on every change but touches; stores replace a session only at the version read.
    pub version: u64,
    /// Who the session belongs to.
    pub subject: String,
    /// The application that owns it ([`crate::application::PORTCULLIS_APP`] for Portcullis's own
    /// sessions). Records written before applications existed read back as the legacy
    /// application's.
    #[serde(default = "crate::application::legacy_app")]
    pub application: AppId,
    /// Name of the policy it follows.
    pub policy: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Last activity (coalesced: see [`crate::engine::EngineSettings::touch_interval`]).
    pub last_seen_at: Timestamp,
    /// Last primary authentication or re-authentication.
    pub authenticated_at: Timestamp,
    /// Whether the person chose "Stay signed in".
    pub remember_me: bool,
    /// How the person authenticated.
    pub auth: AuthContext,
    /// Elevations granted (lapsed ones are dropped when the session next changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elevations: Vec<Elevation>,
    /// Where it is used from.
    pub device: Device,
    /// Application data (size-limited).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// The idle deadline; `None` when the policy has no idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Deadline>,
    /// The absolute deadline.
    pub absolute: Deadline,
    /// The parent SSO session, whose end ends this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SessionId>,
    /// The timed-out session whose data this one got back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstituted_from: Option<SessionId>,
    /// Where its application is told when it ends (its OpenID Connect back-channel logout
    /// URI when the session was created): the store writes a [`crate::oidc::LogoutDelivery`]
    /// with the ending. Kept so that the ending of an application's sessions when it is removed
    /// still reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout_uri: Option<String>,
    /// The algorithm its client's ID tokens were signed with when the session was created,
    /// kept with [`Self::back_channel_logout_uri`]: a removed client's logout token is signed
    /// with it, as the client verifies its tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout_alg: Option<SigningAlg>,
    /// Set once the session has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

impl Session {
    /// Whether the session has not ended (it may still be past a deadline nobody noticed yet).
    pub fn is_live(&self) -> bool {
        self.ended.is_none()
    }

    /// The nearest deadline and which kind it is.
    pub fn next_deadline(&self) -> (Timestamp, EndReason) {
        match &self.idle {
            Some(idle) if idle.at < self.absolute.at => (idle.at, EndReason::ExpiredIdle),
            _ => (self.absolute.at, EndReason::ExpiredAbsolute),
        }
    }

    /// The timeout that has passed at `now`, if any.
    pub fn timed_out(&self, now: Timestamp) -> Option<(Timestamp, EndReason)> {
        let (at, reason) = self.next_deadline();
        (at <= now).then_some((at, reason))
    }

    /// Elevations still in force at `now`.
    pub fn active_elevations(&self, now: Timestamp) -> impl Iterator<Item = &Elevation> {
        self.elevations.iter().filter(move |e| e.expires_at > now)
    }
}
