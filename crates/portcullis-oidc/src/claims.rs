//! The claims of the tokens the provider signs. Times are seconds since the epoch, as JWTs
//! carry them; the caller takes them from the injected clock.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::oidc::SigningAlg;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// The `typ` header of ID tokens.
pub const ID_TOKEN_TYPE: &str = "JWT";
/// The `typ` header of access tokens (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The `typ` header of back-channel logout tokens (OpenID Connect Back-Channel Logout §2.4).
pub const LOGOUT_TOKEN_TYPE: &str = "logout+jwt";
/// The event a logout token carries.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// An ID token (OpenID Connect Core §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The person (account id).
    pub sub: String,
    /// The client.
    pub aud: String,
    /// The client it was issued to (one audience, so equal to `aud`).
    pub azp: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// When the person authenticated.
    pub auth_time: i64,
    /// The SSO session's public id (Front- and Back-Channel Logout).
    pub sid: String,
    /// The `nonce` of the authorization request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The assurance reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// How the person authenticated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The left half of the access token's hash ([`token_hash_claim`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_hash: Option<String>,
    /// Claims of the granted scopes (`name`, `email`, …).
    #[serde(flatten)]
    pub profile: serde_json::Map<String, serde_json::Value>,
}

/// An access token (RFC 9068 §2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The resource it is for: the issuer itself (userinfo and the API) when no resource was
    /// asked for.
    pub aud: String,
    /// The person (account id).
    pub sub: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// A unique id (revocation lists name it).
    pub jti: String,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// The SSO session's public id, as in the ID token.
    pub sid: String,
    /// The client's session at Portcullis it belongs to: it is inactive once that ends.
    pub ses: String,
    /// When the person authenticated.
    pub auth_time: i64,
    /// The assurance reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// How the person authenticated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
}

/// A back-channel logout token (OpenID Connect Back-Channel Logout §2.4): never a `nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutTokenClaims {
    /// The issuer.
    pub iss: String,
    /// The client told.
    pub aud: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry (short: the token is delivered at once or retried with a new one).
    pub exp: i64,
    /// A unique id, so the client can refuse a replay.
    pub jti: String,
    /// The person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The SSO session that ended.
    pub sid: String,
    /// `{ BACKCHANNEL_LOGOUT_EVENT: {} }`.
    pub events: serde_json::Map<String, serde_json::Value>,
}

impl LogoutTokenClaims {
    /// The `events` claim of every logout token.
    pub fn logout_event() -> serde_json::Map<String, serde_json::Value> {
        let mut events = serde_json::Map::new();
        events.insert(
            BACKCHANNEL_LOGOUT_EVENT.to_owned(),
            serde_json::Value::Object(serde_json::Map::new()),
        );
        events
    }
}

/// `at_hash` / `c_hash` (OpenID Connect Core §3.1.3.6): the left half of the token's hash
/// with the hash function of the signing algorithm (SHA-512 for Ed25519), base64url.
pub fn token_hash_claim(alg: SigningAlg, token: &str) -> String {
    let digest: Vec<u8> = match alg {
        SigningAlg::Es256 | SigningAlg::Rs256 => Sha256::digest(token.as_bytes()).to_vec(),
        SigningAlg::EdDsa => Sha512::digest(token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}
