//! The OpenID Connect provider's entities: applications registered as clients
//! ([`Client`]), authorization codes ([`AuthorizationCode`], kept by a [`CodeStore`]), refresh
//! tokens ([`RefreshToken`], kept by a [`RefreshTokenStore`]), consents ([`Consent`], kept by a
//! [`ConsentStore`]) and the provider's signing keys ([`SigningKey`], kept by a
//! [`SigningKeyStore`]), and the outbox of back-channel logout ([`LogoutDelivery`], kept by a
//! [`LogoutDeliveryStore`]), one-time identifiers ([`ReplayStore`]), and accounts' links to
//! people at upstream providers ([`FederatedIdentity`], kept by an [`IdentityStore`]). The protocol itself
//! (JOSE, claims, endpoints) lives in `portcullis-oidc` and `portcullis-http`.

mod client;
mod code;
mod consent;
mod delivery;
mod identity;
mod keys;
mod refresh;
mod replay;

pub use client::{Client, ClientAuth, ClientError, GrantType, SCOPES, origin_of};
pub use code::{
    AuthorizationCode, CODE_LIFETIME, CODE_REMEMBERED, CodeStore, MemoryCodeStore, Redemption,
};
pub use consent::{Consent, ConsentStore, MemoryConsentStore};
pub use delivery::{
    Attempt, AttemptOutcome, DELIVERY_KEPT, DeliveryQuery, DeliveryState, LogoutDelivery,
    LogoutDeliveryStore, MemoryDeliveryStore, newest_first,
};
pub use identity::{
    FederatedIdentity, IdentityStore, MemoryIdentityStore, Unlinked, UpstreamSession,
};
pub use keys::{MemorySigningKeyStore, SigningAlg, SigningKey, SigningKeyStore};
pub use refresh::{
    MemoryRefreshTokenStore, REFRESH_RETRY_GRACE, RefreshToken, RefreshTokenStore, Rotated,
    Rotation,
};
pub use replay::{MemoryReplayStore, ReplayStore};

use std::future::Future;
use std::pin::Pin;

/// The future the provider's object-safe store traits answer.
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, crate::store::StoreError>> + Send + 'a>>;
