//! Portcullis' OpenID Connect protocol, apart from HTTP: the provider's signing keys (made,
//! sealed, rotated, published as a JWK Set), the tokens it signs (ID tokens, RFC 9068 access
//! tokens, back-channel logout tokens and their delivery), PKCE, and the discovery document. The entities these
//! work on and their store traits are in `portcullis_core::oidc`; the endpoints are in
//! `portcullis-http`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod authorize;
mod backchannel;
mod claims;
mod discovery;
mod grant;
mod logout;
mod pkce;
mod provider;
mod signing;

pub use authorize::{
    AuthorizationParams, AuthorizationRequest, AuthorizeError, Decision, Prompt, ProviderOr,
    acr_of_level,
};
pub use backchannel::{
    DeliveryReport, DeliverySettings, LOGOUT_TOKEN_LIFETIME, LogoutPost, LogoutSender, PostFuture,
    PostOutcome,
};
pub use claims::{
    ACCESS_TOKEN_TYPE, AccessTokenClaims, BACKCHANNEL_LOGOUT_EVENT, ID_TOKEN_TYPE, IdTokenClaims,
    LOGOUT_TOKEN_TYPE, LogoutTokenClaims, token_hash_claim,
};
pub use discovery::{Endpoints, provider_metadata};
pub use grant::{ClientCredentials, MAX_ASSERTION_LIFETIME, TokenError, TokenResponse};
pub use logout::{LogoutError, LogoutParams, LogoutRequest};
pub use pkce::{is_code_challenge, verifier_matches};
pub use provider::{
    Provider, ProviderError, ProviderSettings, ProviderStores, RETIRED_KEY_PUBLISHED,
};
pub use signing::{
    KeyError, ProviderKeys, ensure_signing_keys, generate_signing_key, remove_retired_keys,
    rotate_signing_key,
};
