//! The stored form of records kept as JSON: sessions, accounts and API keys in the SQL stores'
//! `body` columns and under Redis keys, and the JSON parts of a Redis session record
//! (elevations, the ending).
//!
//! Field names here are the storage contract; the domain types may change freely. Every store
//! writes through these types and reads through them, converting to and from the domain types
//! field by field, so renaming a field of [`Session`], [`User`] or [`ApiKey`] changes no stored
//! byte: only a change here does, and then data already stored (the previous release's too)
//! must still read. Ids are their text, times milliseconds since the Unix epoch, token hashes
//! lower-case hex. Empty parts are left out to keep records small and read back as empty; a
//! record written before applications existed reads as the legacy application's.
//!
//! Session data (`data`) is the application's own JSON and is stored as it is.

use serde::{Deserialize, Serialize};

use crate::account::{TotpFactor, User};
use crate::api_key::ApiKey;
use crate::application::LEGACY_APP;
use crate::oidc::{
    AuthorizationCode, Client, ClientAuth, DeliveryState, GrantType, LogoutDelivery, SigningAlg,
    SigningKey,
};
use crate::session::{AuthContext, Deadline, Device, Elevation, EndReason, Ended, Session};
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::token::{PublicId, TokenHash};

/// The application of records written before applications existed.
fn legacy_application() -> String {
    LEGACY_APP.to_owned()
}

fn id(text: String) -> PublicId {
    PublicId::from_string(text)
}

fn opt_id(text: Option<String>) -> Option<PublicId> {
    text.map(PublicId::from_string)
}

fn at(millis: i64) -> Timestamp {
    Timestamp::from_millis(millis)
}

fn to_json<T: Serialize>(stored: &T) -> Result<String, StoreError> {
    serde_json::to_string(stored).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The signing algorithm a stored field names, if it names one.
fn opt_alg(name: Option<String>) -> Result<Option<SigningAlg>, StoreError> {
    name.map(|name| {
        SigningAlg::parse(&name)
            .ok_or_else(|| StoreError::Corrupt(format!("signing algorithm {name:?}")))
    })
    .transpose()
}

fn hash(what: &str, hex: &str) -> Result<TokenHash, StoreError> {
    TokenHash::from_hex(hex).ok_or_else(|| StoreError::Corrupt(format!("{what}: bad token hash")))
}

/// A session as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSession {
    /// Public id (`ses_…`).
    pub id: String,
    /// SHA-256 of the current token, hex.
    pub token_hash: String,
    /// The version.
    pub version: u64,
    /// Who it belongs to.
    pub subject: String,
    /// The owning application's id; absent in records written before applications existed.
    #[serde(default = "legacy_application")]
    pub application: String,
    /// The policy's name.
    pub policy: String,
    /// Created (ms).
    pub created_at: i64,
    /// Last activity (ms).
    pub last_seen_at: i64,
    /// Last authentication (ms).
    pub authenticated_at: i64,
    /// "Stay signed in".
    pub remember_me: bool,
    /// How the person authenticated.
    pub auth: StoredAuth,
    /// Elevations; left out when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elevations: Vec<StoredElevation>,
    /// Where it is used from.
    pub device: StoredDevice,
    /// The application's data, as it is; left out when null.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// The idle deadline; left out without an idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<StoredDeadline>,
    /// The absolute deadline.
    pub absolute: StoredDeadline,
    /// The parent session's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The id of the timed-out session whose data this one got back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstituted_from: Option<String>,
    /// Where its client is told when it ends (back-channel logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout_uri: Option<String>,
    /// The algorithm its client's ID tokens were signed with (`ES256`, `EdDSA`, `RS256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_channel_logout_alg: Option<String>,
    /// The ending; left out while the session is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<StoredEnded>,
}

/// How the person authenticated, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAuth {
    /// RFC 8176 `amr` values.
    pub methods: Vec<String>,
    /// Assurance level.
    pub level: u8,
}

/// Where a session is used from, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDevice {
    /// The user agent; left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client IP address; left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// An elevation, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredElevation {
    /// Public id (`elv_…`).
    pub id: String,
    /// What it allows.
    pub scope: String,
    /// Methods used to re-authenticate.
    pub methods: Vec<String>,
    /// Assurance level.
    pub level: u8,
    /// Granted (ms).
    pub at: i64,
    /// Lapses (ms).
    pub expires_at: i64,
}

/// A deadline and its rule, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredDeadline {
    /// When (ms).
    pub at: i64,
    /// The lifetime it was computed from (ms).
    pub lifetime_ms: u64,
    /// The rule's text.
    pub rule: String,
}

/// The ending of a session, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEnded {
    /// Why.
    pub reason: StoredEndReason,
    /// When (ms).
    pub at: i64,
    /// Until when it may be re-constituted (ms); left out when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstitute_until: Option<i64>,
    /// The session that re-constituted it; left out until one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconstituted_into: Option<String>,
    /// When the store may forget it (ms).
    pub purge_at: i64,
}

/// Why a session ended, as stored: each reason's name spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum StoredEndReason {
    #[serde(rename = "logout")]
    Logout,
    #[serde(rename = "expired_idle")]
    ExpiredIdle,
    #[serde(rename = "expired_absolute")]
    ExpiredAbsolute,
    #[serde(rename = "revoked_admin")]
    RevokedAdmin,
    #[serde(rename = "password_changed")]
    PasswordChanged,
    #[serde(rename = "security_action")]
    SecurityAction,
    #[serde(rename = "new_device")]
    NewDevice,
    #[serde(rename = "parent_ended")]
    ParentEnded,
    #[serde(rename = "upstream_logout")]
    UpstreamLogout,
    #[serde(rename = "token_reuse")]
    TokenReuse,
    #[serde(rename = "binding_mismatch")]
    BindingMismatch,
    #[serde(rename = "app_removed")]
    AppRemoved,
    #[serde(rename = "account_disabled")]
    AccountDisabled,
}

impl From<EndReason> for StoredEndReason {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::Logout => Self::Logout,
            EndReason::ExpiredIdle => Self::ExpiredIdle,
            EndReason::ExpiredAbsolute => Self::ExpiredAbsolute,
            EndReason::RevokedAdmin => Self::RevokedAdmin,
            EndReason::PasswordChanged => Self::PasswordChanged,
            EndReason::SecurityAction => Self::SecurityAction,
            EndReason::NewDevice => Self::NewDevice,
            EndReason::ParentEnded => Self::ParentEnded,
            EndReason::UpstreamLogout => Self::UpstreamLogout,
            EndReason::TokenReuse => Self::TokenReuse,
            EndReason::BindingMismatch => Self::BindingMismatch,
            EndReason::AppRemoved => Self::AppRemoved,
            EndReason::AccountDisabled => Self::AccountDisabled,
        }
    }
}

impl From<StoredEndReason> for EndReason {
    fn from(reason: StoredEndReason) -> Self {
        match reason {
            StoredEndReason::Logout => Self::Logout,
            StoredEndReason::ExpiredIdle => Self::ExpiredIdle,
            StoredEndReason::ExpiredAbsolute => Self::ExpiredAbsolute,
            StoredEndReason::RevokedAdmin => Self::RevokedAdmin,
            StoredEndReason::PasswordChanged => Self::PasswordChanged,
            StoredEndReason::SecurityAction => Self::SecurityAction,
            StoredEndReason::NewDevice => Self::NewDevice,
            StoredEndReason::ParentEnded => Self::ParentEnded,
            StoredEndReason::UpstreamLogout => Self::UpstreamLogout,
            StoredEndReason::TokenReuse => Self::TokenReuse,
            StoredEndReason::BindingMismatch => Self::BindingMismatch,
            StoredEndReason::AppRemoved => Self::AppRemoved,
            StoredEndReason::AccountDisabled => Self::AccountDisabled,
        }
    }
}

impl From<&AuthContext> for StoredAuth {
    fn from(auth: &AuthContext) -> Self {
        Self {
            methods: auth.methods.clone(),
            level: auth.level,
        }
    }
}

impl From<StoredAuth> for AuthContext {
    fn from(auth: StoredAuth) -> Self {
        Self {
            methods: auth.methods,
            level: auth.level,
        }
    }
}

impl From<&Device> for StoredDevice {
    fn from(device: &Device) -> Self {
        Self {
            user_agent: device.user_agent.clone(),
            ip: device.ip.clone(),
        }
    }
}

impl From<StoredDevice> for Device {
    fn from(device: StoredDevice) -> Self {
        Self {
            user_agent: device.user_agent,
            ip: device.ip,
        }
    }
}

impl From<&Elevation> for StoredElevation {
    fn from(elevation: &Elevation) -> Self {
        Self {
            id: elevation.id.as_str().to_owned(),
            scope: elevation.scope.clone(),
            methods: elevation.methods.clone(),
            level: elevation.level,
            at: elevation.at.as_millis(),
            expires_at: elevation.expires_at.as_millis(),
        }
    }
}

impl From<StoredElevation> for Elevation {
    fn from(elevation: StoredElevation) -> Self {
        Self {
            id: id(elevation.id),
            scope: elevation.scope,
            methods: elevation.methods,
            level: elevation.level,
            at: at(elevation.at),
            expires_at: at(elevation.expires_at),
        }
    }
}

impl From<&Deadline> for StoredDeadline {
    fn from(deadline: &Deadline) -> Self {
        Self {
            at: deadline.at.as_millis(),
            lifetime_ms: deadline.lifetime_ms,
            rule: deadline.rule.clone(),
        }
    }
}

impl From<StoredDeadline> for Deadline {
    fn from(deadline: StoredDeadline) -> Self {
        Self {
            at: at(deadline.at),
            lifetime_ms: deadline.lifetime_ms,
            rule: deadline.rule,
        }
    }
}

impl From<&Ended> for StoredEnded {
    fn from(ended: &Ended) -> Self {
        Self {
            reason: ended.reason.into(),
            at: ended.at.as_millis(),
            reconstitute_until: ended.reconstitute_until.map(Timestamp::as_millis),
            reconstituted_into: ended
                .reconstituted_into
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            purge_at: ended.purge_at.as_millis(),
        }
    }
}

impl From<StoredEnded> for Ended {
    fn from(ended: StoredEnded) -> Self {
        Self {
            reason: ended.reason.into(),
            at: at(ended.at),
            reconstitute_until: ended.reconstitute_until.map(at),
            reconstituted_into: opt_id(ended.reconstituted_into),
            purge_at: at(ended.purge_at),
        }
    }
}

impl From<&Session> for StoredSession {
    fn from(session: &Session) -> Self {
        Self {
            id: session.id.as_str().to_owned(),
            token_hash: session.token_hash.to_hex(),
            version: session.version,
            subject: session.subject.clone(),
            application: session.application.as_str().to_owned(),
            policy: session.policy.clone(),
            created_at: session.created_at.as_millis(),
            last_seen_at: session.last_seen_at.as_millis(),
            authenticated_at: session.authenticated_at.as_millis(),
            remember_me: session.remember_me,
            auth: (&session.auth).into(),
            elevations: session.elevations.iter().map(Into::into).collect(),
            device: (&session.device).into(),
            data: session.data.clone(),
            idle: session.idle.as_ref().map(Into::into),
            absolute: (&session.absolute).into(),
            parent: session.parent.as_ref().map(|id| id.as_str().to_owned()),
            reconstituted_from: session
                .reconstituted_from
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            back_channel_logout_uri: session.back_channel_logout_uri.clone(),
            back_channel_logout_alg: session
                .back_channel_logout_alg
                .map(|alg| alg.as_str().to_owned()),
            ended: session.ended.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<StoredSession> for Session {
    type Error = StoreError;

    /// Fails only on a token hash that is not 64 hex digits, or an algorithm it does not know.
    fn try_from(stored: StoredSession) -> Result<Self, StoreError> {
        Ok(Self {
            token_hash: hash("session", &stored.token_hash)?,
            id: id(stored.id),
            version: stored.version,
            subject: stored.subject,
            application: id(stored.application),
            policy: stored.policy,
            created_at: at(stored.created_at),
            last_seen_at: at(stored.last_seen_at),
            authenticated_at: at(stored.authenticated_at),
            remember_me: stored.remember_me,
            auth: stored.auth.into(),
            elevations: stored.elevations.into_iter().map(Into::into).collect(),
            device: stored.device.into(),
            data: stored.data,
            idle: stored.idle.map(Into::into),
            absolute: stored.absolute.into(),
            parent: opt_id(stored.parent),
            reconstituted_from: opt_id(stored.reconstituted_from),
            back_channel_logout_uri: stored.back_channel_logout_uri,
            back_channel_logout_alg: opt_alg(stored.back_channel_logout_alg)?,
            ended: stored.ended.map(Into::into),
        })
    }
}

/// A local account, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredUser {
    /// Public id (`usr_…`).
    pub id: String,
    /// The normalised username.
    pub username: String,
    /// The version.
    pub version: u64,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Left out unless the account is disabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The TOTP factor; left out when none is enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<StoredTotp>,
    /// Created (ms).
    pub created_at: i64,
    /// Password last set (ms).
    pub password_changed_at: i64,
    /// Left out unless the password is too short to stand without the second factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short_password: bool,
}

impl std::fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password hash and the TOTP secret stay out of logs.
        f.debug_struct("StoredUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// An enrolled TOTP factor, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredTotp {
    /// The shared secret: `sealed:v1:<key id>:…` (see `crate::sealed`), or base32 in clear
    /// as an earlier release stored it.
    pub secret: String,
    /// The last time step accepted.
    pub last_step: u64,
    /// Enrolled (ms).
    pub enrolled_at: i64,
}

impl From<&User> for StoredUser {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.clone(),
            username: user.username.clone(),
            version: user.version,
            password_hash: user.password_hash.clone(),
            disabled: user.disabled,
            totp: user.totp.as_ref().map(|totp| StoredTotp {
                secret: totp.secret.clone(),
                last_step: totp.last_step,
                enrolled_at: totp.enrolled_at.as_millis(),
            }),
            created_at: user.created_at.as_millis(),
            password_changed_at: user.password_changed_at.as_millis(),
            short_password: user.short_password,
        }
    }
}

impl From<StoredUser> for User {
    fn from(user: StoredUser) -> Self {
        Self {
            id: user.id,
            username: user.username,
            version: user.version,
            password_hash: user.password_hash,
            disabled: user.disabled,
            totp: user.totp.map(|totp| TotpFactor {
                secret: totp.secret,
                last_step: totp.last_step,
                enrolled_at: at(totp.enrolled_at),
            }),
            created_at: at(user.created_at),
            password_changed_at: at(user.password_changed_at),
            short_password: user.short_password,
        }
    }
}

/// An API key, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredApiKey {
    /// Public id (`key_…`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// The owning application's id; absent in keys written before applications existed.
    #[serde(default = "legacy_application")]
    pub application: String,
    /// SHA-256 of the key, hex.
    pub key_hash: String,
    /// Created (ms).
    pub created_at: i64,
    /// Revoked (ms); written as `null` while the key is not revoked.
    pub revoked_at: Option<i64>,
}

impl From<&ApiKey> for StoredApiKey {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.as_str().to_owned(),
            name: key.name.clone(),
            application: key.application.as_str().to_owned(),
            key_hash: key.key_hash.to_hex(),
            created_at: key.created_at.as_millis(),
            revoked_at: key.revoked_at.map(Timestamp::as_millis),
        }
    }
}

impl StoredApiKey {
    /// The JSON a store keeps for `key` (the stores that keep API keys as JSON share it).
    pub fn encode(key: &ApiKey) -> Result<String, StoreError> {
        to_json(&Self::from(key))
    }

    /// The key a store's JSON holds.
    pub fn decode(json: &str) -> Result<ApiKey, StoreError> {
        let stored: Self = from_json(json)?;
        ApiKey::try_from(stored)
    }
}

impl TryFrom<StoredApiKey> for ApiKey {
    type Error = StoreError;

    /// Fails only on a key hash that is not 64 hex digits.
    fn try_from(stored: StoredApiKey) -> Result<Self, StoreError> {
        Ok(Self {
            key_hash: hash("API key", &stored.key_hash)?,
            id: id(stored.id),
            name: stored.name,
            application: id(stored.application),
            created_at: at(stored.created_at),
            revoked_at: stored.revoked_at.map(at),
        })
    }
}

/// An application's OpenID Connect registration, as stored (the SQL stores' `client` column,
/// the `client` field of a Redis application).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredClient {
    /// `none`, `client_secret_basic` or `private_key_jwt`.
    pub auth: String,
    /// SHA-256 of the client secret, hex (`client_secret_basic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// The client's JWK Set (`private_key_jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_logout_redirect_uris: Vec<String>,
    /// Back-channel logout URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    /// Front-channel logout URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_uri: Option<String>,
    /// Scope names.
    pub scopes: Vec<String>,
    /// Grant type names.
    pub grant_types: Vec<String>,
    /// Whether consent is asked.
    #[serde(default)]
    pub require_consent: bool,
    /// The ID token signing algorithm, when not the provider's first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signed_response_alg: Option<String>,
    /// The upstream provider its people always sign in through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl StoredClient {
    /// The JSON a store keeps for `client`.
    pub fn encode(client: &Client) -> Result<String, StoreError> {
        let (secret_hash, jwks) = match &client.auth {
            ClientAuth::None => (None, None),
            ClientAuth::Secret(hash) => (Some(hash.to_hex()), None),
            ClientAuth::PrivateKeyJwt { jwks } => (None, Some(jwks.clone())),
        };
        let stored = Self {
            auth: client.auth.method().to_owned(),
            secret_hash,
            jwks,
            redirect_uris: client.redirect_uris.clone(),
            post_logout_redirect_uris: client.post_logout_redirect_uris.clone(),
            backchannel_logout_uri: client.backchannel_logout_uri.clone(),
            frontchannel_logout_uri: client.frontchannel_logout_uri.clone(),
            scopes: client.scopes.iter().cloned().collect(),
            grant_types: client
                .grant_types
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            require_consent: client.require_consent,
            id_token_signed_response_alg: client
                .id_token_signed_response_alg
                .map(|alg| alg.as_str().to_owned()),
            upstream: client.upstream.clone(),
        };
        to_json(&stored)
    }

    /// The registration a store's JSON holds.
    pub fn decode(json: &str) -> Result<Client, StoreError> {
        let stored: Self = from_json(json)?;
        let auth = match (stored.auth.as_str(), stored.secret_hash, stored.jwks) {
            ("none", _, _) => ClientAuth::None,
            ("client_secret_basic", Some(hash), _) => {
                ClientAuth::Secret(self::hash("client secret", &hash)?)
            }
            ("private_key_jwt", _, Some(jwks)) => ClientAuth::PrivateKeyJwt { jwks },
            (other, _, _) => {
                return Err(StoreError::Corrupt(format!(
                    "client authentication {other:?}"
                )));
            }
        };
        let grant_types = stored
            .grant_types
            .iter()
            .map(|g| {
                GrantType::parse(g).ok_or_else(|| StoreError::Corrupt(format!("grant type {g:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Client {
            auth,
            redirect_uris: stored.redirect_uris,
            post_logout_redirect_uris: stored.post_logout_redirect_uris,
            backchannel_logout_uri: stored.backchannel_logout_uri,
            frontchannel_logout_uri: stored.frontchannel_logout_uri,
            scopes: stored.scopes.into_iter().collect(),
            grant_types,
            require_consent: stored.require_consent,
            id_token_signed_response_alg: opt_alg(stored.id_token_signed_response_alg)?,
            upstream: stored.upstream,
        })
    }
}

/// A back-channel logout delivery as the SQL stores keep it: a column per field (times in
/// milliseconds), converted here once for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The ended session's id.
    pub session: String,
    /// Its SSO session's id.
    pub sso_session: Option<String>,
    /// Account id.
    pub subject: String,
    /// Client (application id).
    pub client: String,
    /// Why the session ended.
    pub reason: String,
    /// Ended (ms).
    pub ended_at: i64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Due (pending) or finished (ms).
    pub next_attempt_at: i64,
    /// What the last failed attempt met.
    pub last_error: Option<String>,
    /// The client's back-channel logout URI when the session was created.
    pub uri: String,
    /// The algorithm its ID tokens were signed with then.
    pub alg: Option<String>,
}

impl DeliveryRow {
    /// The columns of `d`.
    pub fn of(d: &LogoutDelivery) -> Self {
        Self {
            session: d.session.as_str().to_owned(),
            sso_session: d.sso_session.as_ref().map(|s| s.as_str().to_owned()),
            subject: d.subject.clone(),
            client: d.client.as_str().to_owned(),
            reason: d.reason.as_str().to_owned(),
            ended_at: d.ended_at.as_millis(),
            state: d.state.as_str().to_owned(),
            attempts: i64::from(d.attempts),
            next_attempt_at: d.next_attempt_at.as_millis(),
            last_error: d.last_error.clone(),
            uri: d.uri.clone(),
            alg: d.alg.map(|alg| alg.as_str().to_owned()),
        }
    }

    /// The delivery these columns hold.
    pub fn into_delivery(self) -> Result<LogoutDelivery, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("delivery {}: {what}", self.session));
        Ok(LogoutDelivery {
            reason: EndReason::parse(&self.reason).ok_or_else(|| corrupt("unknown reason"))?,
            state: DeliveryState::parse(&self.state).ok_or_else(|| corrupt("unknown state"))?,
            attempts: u32::try_from(self.attempts).map_err(|_| corrupt("attempts"))?,
            sso_session: opt_id(self.sso_session),
            subject: self.subject,
            client: id(self.client),
            ended_at: at(self.ended_at),
            next_attempt_at: at(self.next_attempt_at),
            last_error: self.last_error,
            uri: self.uri,
            alg: opt_alg(self.alg)?,
            session: id(self.session),
        })
    }
}

/// A back-channel logout delivery, as the Redis store keeps it (the SQL stores keep every
/// field in a column of its own).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredDelivery {
    /// The ended application session's id.
    pub session: String,
    /// Its SSO session's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sso_session: Option<String>,
    /// Account id.
    pub subject: String,
    /// Client (application id).
    pub client: String,
    /// Why the session ended.
    pub reason: StoredEndReason,
    /// Ended (ms).
    pub ended_at: i64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Due (pending) or finished (ms).
    pub next_attempt_at: i64,
    /// What the last failed attempt met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The client's back-channel logout URI when the session was created.
    pub uri: String,
    /// The algorithm its ID tokens were signed with then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

impl StoredDelivery {
    /// The JSON a store keeps for `delivery`.
    pub fn encode(delivery: &LogoutDelivery) -> Result<String, StoreError> {
        to_json(&Self {
            session: delivery.session.as_str().to_owned(),
            sso_session: delivery.sso_session.as_ref().map(|s| s.as_str().to_owned()),
            subject: delivery.subject.clone(),
            client: delivery.client.as_str().to_owned(),
            reason: delivery.reason.into(),
            ended_at: delivery.ended_at.as_millis(),
            state: delivery.state.as_str().to_owned(),
            attempts: delivery.attempts,
            next_attempt_at: delivery.next_attempt_at.as_millis(),
            last_error: delivery.last_error.clone(),
            uri: delivery.uri.clone(),
            alg: delivery.alg.map(|alg| alg.as_str().to_owned()),
        })
    }

    /// The delivery a store's JSON holds.
    pub fn decode(json: &str) -> Result<LogoutDelivery, StoreError> {
        let stored: Self = from_json(json)?;
        Ok(LogoutDelivery {
            state: DeliveryState::parse(&stored.state)
                .ok_or_else(|| StoreError::Corrupt(format!("delivery state {:?}", stored.state)))?,
            session: id(stored.session),
            sso_session: opt_id(stored.sso_session),
            subject: stored.subject,
            client: id(stored.client),
            reason: stored.reason.into(),
            ended_at: at(stored.ended_at),
            attempts: stored.attempts,
            next_attempt_at: at(stored.next_attempt_at),
            last_error: stored.last_error,
            uri: stored.uri,
            alg: opt_alg(stored.alg)?,
        })
    }
}

/// An authorization code, as stored (what is not a column of its own in the SQL stores).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCode {
    /// SHA-256 of the code, hex.
    pub hash: String,
    /// Client (application id).
    pub client: String,
    /// Account id.
    pub subject: String,
    /// SSO session id.
    pub sso_session: String,
    /// Redirect URI of the request.
    pub redirect_uri: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// PKCE S256 challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge: Option<String>,
    /// Authentication time (ms).
    pub auth_time: i64,
    /// `acr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// `amr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Issued (ms).
    pub issued_at: i64,
    /// Expires (ms).
    pub expires_at: i64,
    /// The session its redemption created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_for: Option<String>,
}

impl StoredCode {
    /// The JSON a store keeps for `code`.
    pub fn encode(code: &AuthorizationCode) -> Result<String, StoreError> {
        let stored = Self {
            hash: code.hash.to_hex(),
            client: code.client.as_str().to_owned(),
            subject: code.subject.clone(),
            sso_session: code.sso_session.as_str().to_owned(),
            redirect_uri: code.redirect_uri.clone(),
            scopes: code.scopes.clone(),
            nonce: code.nonce.clone(),
            code_challenge: code.code_challenge.clone(),
            auth_time: code.auth_time.as_millis(),
            acr: code.acr.clone(),
            amr: code.amr.clone(),
            issued_at: code.issued_at.as_millis(),
            expires_at: code.expires_at.as_millis(),
            redeemed_for: code.redeemed_for.as_ref().map(|s| s.as_str().to_owned()),
        };
        to_json(&stored)
    }

    /// The code a store's JSON holds.
    pub fn decode(json: &str) -> Result<AuthorizationCode, StoreError> {
        let stored: Self = from_json(json)?;
        Ok(AuthorizationCode {
            hash: hash("authorization code", &stored.hash)?,
            client: id(stored.client),
            subject: stored.subject,
            sso_session: id(stored.sso_session),
            redirect_uri: stored.redirect_uri,
            scopes: stored.scopes,
            nonce: stored.nonce,
            code_challenge: stored.code_challenge,
            auth_time: at(stored.auth_time),
            acr: stored.acr,
            amr: stored.amr,
            issued_at: at(stored.issued_at),
            expires_at: at(stored.expires_at),
            redeemed_for: opt_id(stored.redeemed_for),
        })
    }
}

/// A signing key, as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredSigningKey {
    /// Key id.
    pub kid: String,
    /// JWS algorithm name.
    pub alg: String,
    /// Sealed PKCS#8 private key.
    pub sealed_private: String,
    /// Public JWK (JSON text).
    pub public_jwk: String,
    /// Created (ms).
    pub created_at: i64,
    /// Retired (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
}

impl StoredSigningKey {
    /// The JSON a store keeps for `key`.
    pub fn encode(key: &SigningKey) -> Result<String, StoreError> {
        let stored = Self {
            kid: key.kid.clone(),
            alg: key.alg.as_str().to_owned(),
            sealed_private: key.sealed_private.clone(),
            public_jwk: key.public_jwk.clone(),
            created_at: key.created_at.as_millis(),
            retired_at: key.retired_at.map(Timestamp::as_millis),
        };
        to_json(&stored)
    }

    /// The key a store's JSON holds.
    pub fn decode(json: &str) -> Result<SigningKey, StoreError> {
        let stored: Self = from_json(json)?;
        Ok(SigningKey {
            alg: SigningAlg::parse(&stored.alg).ok_or_else(|| {
                StoreError::Corrupt(format!("signing algorithm {:?}", stored.alg))
            })?,
            kid: stored.kid,
            sealed_private: stored.sealed_private,
            public_jwk: stored.public_jwk,
            created_at: at(stored.created_at),
            retired_at: stored.retired_at.map(at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::portcullis_app;

    fn t(offset: i64) -> Timestamp {
        Timestamp::from_millis(1_796_197_682_469 + offset)
    }

    fn full_session() -> Session {
        Session {
            id: PublicId::from_string("ses_a3xyz".into()),
            token_hash: TokenHash([0xab; 32]),
            version: 7,
            subject: "usr_ü\"x".into(),
            application: portcullis_app(),
            policy: "portcullis.sso".into(),
            created_at: t(0),
            last_seen_at: t(5),
            authenticated_at: t(3),
            remember_me: true,
            auth: AuthContext {
                methods: vec!["pwd".into(), "otp".into()],
                level: 2,
            },
            elevations: vec![Elevation {
                id: PublicId::from_string("elv_1".into()),
                scope: "payments".into(),
                methods: vec!["otp".into()],
                level: 2,
                at: t(4),
                expires_at: t(600_000),
            }],
            device: Device {
                user_agent: Some("Mozilla/5.0".into()),
                ip: Some("192.0.2.1".into()),
            },
            data: serde_json::json!({"cart": [1, 2], "note": "é"}),
            idle: Some(Deadline {
                at: t(900_005),
                lifetime_ms: 900_000,
                rule: "policy portcullis.sso: idle 15m (built-in default)".into(),
            }),
            absolute: Deadline {
                at: t(43_200_000),
                lifetime_ms: 43_200_000,
                rule: "policy portcullis.sso: absolute 12h (configured)".into(),
            },
            parent: Some(PublicId::from_string("ses_parent".into())),
            reconstituted_from: Some(PublicId::from_string("ses_old".into())),
            back_channel_logout_uri: Some("https://rp.example/bcl".into()),
            back_channel_logout_alg: Some(SigningAlg::Rs256),
            ended: Some(Ended {
                reason: EndReason::ExpiredIdle,
                at: t(900_005),
                reconstitute_until: Some(t(1_000_000)),
                reconstituted_into: Some(PublicId::from_string("ses_new".into())),
                purge_at: t(2_000_000),
            }),
        }
    }

    fn minimal_session() -> Session {
        Session {
            id: PublicId::from_string("ses_min".into()),
            token_hash: TokenHash([1; 32]),
            version: 1,
            subject: "u-1".into(),
            application: PublicId::from_string("app_shop".into()),
            policy: "noidle".into(),
            created_at: t(0),
            last_seen_at: t(0),
            authenticated_at: t(0),
            remember_me: false,
            auth: AuthContext {
                methods: Vec::new(),
                level: 1,
            },
            elevations: Vec::new(),
            device: Device::default(),
            data: serde_json::Value::Null,
            idle: None,
            absolute: Deadline {
                at: t(1_000),
                lifetime_ms: 1_000,
                rule: "policy noidle: absolute".into(),
            },
            parent: None,
            reconstituted_from: None,
            back_channel_logout_uri: None,
            back_channel_logout_alg: None,
            ended: None,
        }
    }

    fn user(totp: bool) -> User {
        User {
            id: "usr_alice".into(),
            username: "alice".into(),
            version: 3,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            disabled: totp,
            totp: totp.then(|| TotpFactor {
                secret: "JBSWY3DPEHPK3PXP".into(),
                last_step: 59_873_256,
                enrolled_at: t(7),
            }),
            created_at: t(0),
            password_changed_at: t(1),
            short_password: false,
        }
    }

    fn api_key(revoked: bool) -> ApiKey {
        ApiKey {
            id: PublicId::from_string("key_shop".into()),
            name: "shop".into(),
            application: PublicId::from_string("app_shop".into()),
            key_hash: TokenHash([0x5b; 32]),
            created_at: t(-760),
            revoked_at: revoked.then(|| t(10)),
        }
    }

    fn session_json(session: &Session) -> String {
        serde_json::to_string(&StoredSession::from(session)).unwrap()
    }

    fn read_session(json: &str) -> Session {
        serde_json::from_str::<StoredSession>(json)
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn user_json(user: &User) -> String {
        serde_json::to_string(&StoredUser::from(user)).unwrap()
    }

    fn read_user(json: &str) -> User {
        serde_json::from_str::<StoredUser>(json).unwrap().into()
    }

    fn key_json(key: &ApiKey) -> String {
        serde_json::to_string(&StoredApiKey::from(key)).unwrap()
    }

    fn read_key(json: &str) -> ApiKey {
        serde_json::from_str::<StoredApiKey>(json)
            .unwrap()
            .try_into()
            .unwrap()
    }

    const FULL_SESSION: &str = r#"{"id":"ses_a3xyz","token_hash":"abababababababababababababababababababababababababababababababab","version":7,"subject":"usr_ü\"x","application":"portcullis","policy":"portcullis.sso","created_at":1796197682469,"last_seen_at":1796197682474,"authenticated_at":1796197682472,"remember_me":true,"auth":{"methods":["pwd","otp"],"level":2},"elevations":[{"id":"elv_1","scope":"payments","methods":["otp"],"level":2,"at":1796197682473,"expires_at":1796198282469}],"device":{"user_agent":"Mozilla/5.0","ip":"192.0.2.1"},"data":{"cart":[1,2],"note":"é"},"idle":{"at":1796198582474,"lifetime_ms":900000,"rule":"policy portcullis.sso: idle 15m (built-in default)"},"absolute":{"at":1796240882469,"lifetime_ms":43200000,"rule":"policy portcullis.sso: absolute 12h (configured)"},"parent":"ses_parent","reconstituted_from":"ses_old","back_channel_logout_uri":"https://rp.example/bcl","back_channel_logout_alg":"RS256","ended":{"reason":"expired_idle","at":1796198582474,"reconstitute_until":1796198682469,"reconstituted_into":"ses_new","purge_at":1796199682469}}"#;
    const MINIMAL_SESSION: &str = r#"{"id":"ses_min","token_hash":"0101010101010101010101010101010101010101010101010101010101010101","version":1,"subject":"u-1","application":"app_shop","policy":"noidle","created_at":1796197682469,"last_seen_at":1796197682469,"authenticated_at":1796197682469,"remember_me":false,"auth":{"methods":[],"level":1},"device":{},"absolute":{"at":1796197683469,"lifetime_ms":1000,"rule":"policy noidle: absolute"}}"#;
    const USER_WITHOUT_TOTP: &str = r#"{"id":"usr_alice","username":"alice","version":3,"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA","created_at":1796197682469,"password_changed_at":1796197682470}"#;
    const USER_WITH_TOTP: &str = r#"{"id":"usr_alice","username":"alice","version":3,"password_hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA","disabled":true,"totp":{"secret":"JBSWY3DPEHPK3PXP","last_step":59873256,"enrolled_at":1796197682476},"created_at":1796197682469,"password_changed_at":1796197682470}"#;
    const API_KEY: &str = r#"{"id":"key_shop","name":"shop","application":"app_shop","key_hash":"5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b","created_at":1796197681709,"revoked_at":null}"#;
    const REVOKED_API_KEY: &str = r#"{"id":"key_shop","name":"shop","application":"app_shop","key_hash":"5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b","created_at":1796197681709,"revoked_at":1796197682479}"#;

    #[test]
    fn a_full_session_is_stored_as_ever_and_reads_back() {
        let session = full_session();
        assert_eq!(session_json(&session), FULL_SESSION);
        assert_eq!(read_session(FULL_SESSION), session);
    }

    #[test]
    fn a_minimal_session_is_stored_as_ever_and_reads_back() {
        let session = minimal_session();
        assert_eq!(session_json(&session), MINIMAL_SESSION);
        assert_eq!(read_session(MINIMAL_SESSION), session);
    }

    /// An ending as the previous release wrote it (`fixtures/v10c603b`), and as it is written now.
    #[test]
    fn a_plain_ending_is_stored_as_ever_and_reads_back() {
        let old = r#"{"reason":"logout","at":1796197682499,"purge_at":2111557682499}"#;
        let ended: Ended = serde_json::from_str::<StoredEnded>(old).unwrap().into();
        assert_eq!(
            ended,
            Ended {
                reason: EndReason::Logout,
                at: Timestamp::from_millis(1_796_197_682_499),
                reconstitute_until: None,
                reconstituted_into: None,
                purge_at: Timestamp::from_millis(2_111_557_682_499),
            }
        );
        assert_eq!(
            serde_json::to_string(&StoredEnded::from(&ended)).unwrap(),
            old
        );
    }

    #[test]
    fn every_end_reason_keeps_its_stored_name() {
        for reason in EndReason::ALL {
            let stored = serde_json::to_string(&StoredEndReason::from(reason)).unwrap();
            assert_eq!(stored, format!("\"{}\"", reason.as_str()));
            let read: StoredEndReason = serde_json::from_str(&stored).unwrap();
            assert_eq!(EndReason::from(read), reason);
        }
    }

    #[test]
    fn users_are_stored_as_ever_and_read_back() {
        for (user, json) in [
            (user(false), USER_WITHOUT_TOTP),
            (user(true), USER_WITH_TOTP),
        ] {
            assert_eq!(user_json(&user), json);
            assert_eq!(read_user(json), user);
        }
        // Added after 10c603b: written only when set.
        let short = User {
            short_password: true,
            ..user(true)
        };
        let json = user_json(&short);
        assert!(json.ends_with(r#","short_password":true}"#), "{json}");
        assert_eq!(read_user(&json), short);
    }

    #[test]
    fn api_keys_are_stored_as_ever_and_read_back() {
        for (key, json) in [(api_key(false), API_KEY), (api_key(true), REVOKED_API_KEY)] {
            assert_eq!(key_json(&key), json);
            assert_eq!(read_key(json), key);
        }
    }

    fn provider_records() -> (Client, AuthorizationCode, SigningKey) {
        let client = Client {
            auth: ClientAuth::Secret(TokenHash([0x5c; 32])),
            redirect_uris: vec!["https://rp.example/cb".into()],
            post_logout_redirect_uris: vec!["https://rp.example/bye".into()],
            backchannel_logout_uri: Some("https://rp.example/bc".into()),
            frontchannel_logout_uri: None,
            scopes: ["openid", "profile"].map(String::from).into(),
            grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
            require_consent: true,
            id_token_signed_response_alg: Some(SigningAlg::Rs256),
            upstream: None,
        };
        let code = AuthorizationCode {
            hash: TokenHash([0x3a; 32]),
            client: id("app_rp".into()),
            subject: "usr_1".into(),
            sso_session: id("ses_sso".into()),
            redirect_uri: "https://rp.example/cb".into(),
            scopes: vec!["openid".into()],
            nonce: Some("n".into()),
            code_challenge: None,
            auth_time: t(-1000),
            acr: None,
            amr: vec!["pwd".into()],
            issued_at: t(0),
            expires_at: t(60_000),
            redeemed_for: Some(id("ses_app".into())),
        };
        let key = SigningKey {
            kid: "k1".into(),
            alg: SigningAlg::Es256,
            sealed_private: "v1.main.xyz".into(),
            public_jwk: r#"{"kty":"EC"}"#.into(),
            created_at: t(0),
            retired_at: Some(t(5)),
        };
        (client, code, key)
    }

    const CLIENT: &str = r#"{"auth":"client_secret_basic","secret_hash":"5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c","redirect_uris":["https://rp.example/cb"],"post_logout_redirect_uris":["https://rp.example/bye"],"backchannel_logout_uri":"https://rp.example/bc","scopes":["openid","profile"],"grant_types":["authorization_code","refresh_token"],"require_consent":true,"id_token_signed_response_alg":"RS256"}"#;
    const CODE: &str = r#"{"hash":"3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a","client":"app_rp","subject":"usr_1","sso_session":"ses_sso","redirect_uri":"https://rp.example/cb","scopes":["openid"],"nonce":"n","auth_time":1796197681469,"amr":["pwd"],"issued_at":1796197682469,"expires_at":1796197742469,"redeemed_for":"ses_app"}"#;
    const SIGNING_KEY: &str = r#"{"kid":"k1","alg":"ES256","sealed_private":"v1.main.xyz","public_jwk":"{\"kty\":\"EC\"}","created_at":1796197682469,"retired_at":1796197682474}"#;

    #[test]
    fn provider_records_are_stored_as_ever_and_read_back() {
        let (client, code, key) = provider_records();
        assert_eq!(StoredClient::encode(&client).unwrap(), CLIENT);
        assert_eq!(StoredClient::decode(CLIENT).unwrap(), client);
        assert_eq!(StoredCode::encode(&code).unwrap(), CODE);
        assert_eq!(StoredCode::decode(CODE).unwrap(), code);
        assert_eq!(StoredSigningKey::encode(&key).unwrap(), SIGNING_KEY);
        assert_eq!(StoredSigningKey::decode(SIGNING_KEY).unwrap(), key);
        let public = StoredClient::encode(&Client {
            auth: ClientAuth::None,
            ..client.clone()
        })
        .unwrap();
        assert_eq!(
            StoredClient::decode(&public).unwrap().auth,
            ClientAuth::None
        );
        assert!(
            StoredClient::decode(&CLIENT.replace("client_secret_basic", "client_secret_jwt"))
                .is_err()
        );
        assert!(StoredSigningKey::decode(&SIGNING_KEY.replace("ES256", "HS256")).is_err());
    }

    /// A session and an API key as the release before applications wrote them
    /// (`crates/portcullis/tests/fixtures/v10c603b`): no `application`.
    #[test]
    fn records_without_an_application_read_as_the_legacy_applications() {
        let old = r#"{"id":"ses_Y9tM0ct-7MKka29T3Y6rHA","token_hash":"d5d04a8f3b5c9f647fb4b382b8cd66963629d5a19a41f2a03a01fe16dd686c6a","version":1,"subject":"u-1","policy":"default","created_at":1796197682485,"last_seen_at":1796197682485,"authenticated_at":1796197682485,"remember_me":false,"auth":{"methods":["pwd"],"level":1},"device":{},"data":{"draft":42},"idle":{"at":2055397682485,"lifetime_ms":259200000000,"rule":"policy default: idle 3000d (configured)"},"absolute":{"at":2111557682485,"lifetime_ms":315360000000,"rule":"policy default: absolute 3650d (configured)"}}"#;
        let session = read_session(old);
        assert_eq!(session.application.as_str(), LEGACY_APP);
        assert_eq!(session.subject, "u-1");
        assert_eq!(session.data, serde_json::json!({"draft": 42}));
        assert!(session.is_live());
        // Written again, it names the legacy application and otherwise keeps every byte.
        let again = session_json(&session);
        assert_eq!(
            again,
            old.replace(
                r#""subject":"u-1","#,
                r#""subject":"u-1","application":"app_legacy","#
            )
        );

        let old_key = r#"{"id":"key_uT19p0F6yqLLsMM7-GsMVA","name":"shop","key_hash":"761d88960fc36a6bfb367f2ef1eaeed77a87fddad48fac42a368f17326a04c3c","created_at":1796197681709,"revoked_at":null}"#;
        let key = read_key(old_key);
        assert_eq!(key.application.as_str(), LEGACY_APP);
        assert_eq!(key.revoked_at, None);
    }

    #[test]
    fn a_bad_token_hash_is_corrupt_data() {
        let json = MINIMAL_SESSION.replace(&TokenHash([1; 32]).to_hex(), "zz");
        let stored: StoredSession = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            Session::try_from(stored),
            Err(StoreError::Corrupt(_))
        ));
    }
}
