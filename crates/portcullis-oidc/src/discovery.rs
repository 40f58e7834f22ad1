//! The discovery document (OpenID Connect Discovery §3, RFC 8414): what the provider does,
//! said once, from the same lists the endpoints check against.

use portcullis_core::oidc::{GrantType, SCOPES, SigningAlg};
use serde_json::{Value, json};

/// Where the provider's endpoints are, as absolute URLs under the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The authorization endpoint.
    pub authorization: String,
    /// The token endpoint.
    pub token: String,
    /// The userinfo endpoint.
    pub userinfo: String,
    /// The JWK Set.
    pub jwks: String,
    /// Token revocation (RFC 7009).
    pub revocation: String,
    /// Token introspection (RFC 7662).
    pub introspection: String,
    /// RP-initiated logout.
    pub end_session: String,
}

/// The discovery document of the provider `issuer`, signing ID tokens with `algs`.
pub fn provider_metadata(issuer: &str, endpoints: &Endpoints, algs: &[SigningAlg]) -> Value {
    let algs: Vec<&str> = algs.iter().map(|a| a.as_str()).collect();
    let grants: Vec<&str> = [GrantType::AuthorizationCode, GrantType::RefreshToken]
        .iter()
        .map(|g| g.as_str())
        .collect();
    let client_auth = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ];
    json!({
        "issuer": issuer,
        "authorization_endpoint": endpoints.authorization,
        "token_endpoint": endpoints.token,
        "userinfo_endpoint": endpoints.userinfo,
        "jwks_uri": endpoints.jwks,
        "revocation_endpoint": endpoints.revocation,
        "introspection_endpoint": endpoints.introspection,
        "end_session_endpoint": endpoints.end_session,
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": grants,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": client_auth,
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "EdDSA", "RS256"],
        "revocation_endpoint_auth_methods_supported": client_auth,
        "introspection_endpoint_auth_methods_supported": client_auth,
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "azp",
            "at_hash", "name", "preferred_username", "email", "email_verified"
        ],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "authorization_response_iss_parameter_supported": true,
        // OIDC-BCL-1: logout tokens carry `sid`, the same as the ID tokens'.
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
        "frontchannel_logout_session_supported": true,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
    })
}
