//! Portcullis as a relying party of upstream OpenID Connect providers: an organisation's own
//! identity provider signs its people in, and Portcullis's SSO session remembers which upstream
//! session vouches for it.
//!
//! [`Upstream`] is one configured provider: discovery (read when first needed, so Portcullis
//! starts while a provider is down), the authorization request (code flow, PKCE S256, `state`
//! and `nonce` from the injected randomness), the callback's checks (RFC 9207 `iss`, the code
//! exchange, the ID token's signature, `iss`, `aud`, `azp`, `exp`, `iat` and `nonce` against the
//! injected clock, the keys fetched again once for an unknown `kid`), upstream back-channel
//! logout tokens, and the upstream's logout URL. `openidconnect` does the protocol; requests go
//! through the caller's [`UpstreamHttp`], which in the server keeps to the outbound policy.
//!
//! What the person is called here, and which account they are, is decided by the caller (the
//! HTTP layer's federation pages, with the account service and the identity store).

mod federation;
mod http;
mod logout;
mod provider;
mod settings;

pub use federation::{Federation, FederationError, NoAccount, UPSTREAM_KEY, UpstreamLink};
pub use http::{ClientAssertionSigner, HttpFuture, UpstreamHttp};
pub use logout::{LOGOUT_TOKEN_MAX_AGE, UpstreamLogout};
pub use provider::{
    PENDING_LIFETIME, PendingUpstream, Upstream, UpstreamError, UpstreamHints, UpstreamSignIn,
};
pub use settings::{ClaimMapping, UpstreamClientAuth, UpstreamSettings};
