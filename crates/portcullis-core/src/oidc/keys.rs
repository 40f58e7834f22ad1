//! The provider's signing keys, kept in the store so every node signs with the same keys. One
//! key per algorithm signs at a time; a rotated-out key stays published (its `retired_at`
//! set) until every token it signed has expired, then it is removed.

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::time::Timestamp;

/// A JWS algorithm Portcullis signs with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256, the default.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and a 2048-bit key, for clients that verify nothing
    /// else.
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlg {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        }
    }

    /// The algorithm named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Es256, Self::EdDsa, Self::Rs256]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// A signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The key id: its RFC 7638 JWK thumbprint.
    pub kid: String,
    /// What it signs with.
    pub alg: SigningAlg,
    /// The private key (PKCS#8), sealed with the configured keyring under the key id.
    pub sealed_private: String,
    /// The public key as a JWK (JSON), as published.
    pub public_jwk: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stopped signing (a newer key of its algorithm replaced it); it stays published.
    pub retired_at: Option<Timestamp>,
}

/// Keeps signing keys. Object-safe: the HTTP layer holds one behind an `Arc`.
pub trait SigningKeyStore: Send + Sync + 'static {
    /// Adds `key` as the signing key of its algorithm, atomically, if the current one is still
    /// `replacing` (`None`: no key of the algorithm signs yet); the replaced key is retired at
    /// `key.created_at`. Answers `false`, changing nothing, when another node got there first.
    fn add_signing_key<'a>(
        &'a self,
        key: SigningKey,
        replacing: Option<&'a str>,
    ) -> ProviderFuture<'a, bool>;

    /// Every key, signing and retired, oldest first.
    fn signing_keys(&self) -> ProviderFuture<'_, Vec<SigningKey>>;

    /// Removes a retired key (no longer published); `false` when there was no such retired key.
    /// A key that still signs is never removed.
    fn remove_signing_key<'a>(&'a self, kid: &'a str) -> ProviderFuture<'a, bool>;
}

/// Signing keys in process memory (tests and `memory://`).
#[derive(Debug, Default)]
pub struct MemorySigningKeyStore(Mutex<Vec<SigningKey>>);

impl MemorySigningKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SigningKeyStore for MemorySigningKeyStore {
    fn add_signing_key<'a>(
        &'a self,
        key: SigningKey,
        replacing: Option<&'a str>,
    ) -> ProviderFuture<'a, bool> {
        let mut keys = self.0.lock();
        let current = keys
            .iter_mut()
            .find(|k| k.alg == key.alg && k.retired_at.is_none());
        let added = match (current, replacing) {
            (None, None) => true,
            (Some(current), Some(kid)) if current.kid == kid => {
                current.retired_at = Some(key.created_at);
                true
            }
            _ => false,
        };
        if added {
            keys.push(key);
        }
        Box::pin(async move { Ok(added) })
    }

    fn signing_keys(&self) -> ProviderFuture<'_, Vec<SigningKey>> {
        let keys = self.0.lock().clone();
        Box::pin(async move { Ok(keys) })
    }

    fn remove_signing_key<'a>(&'a self, kid: &'a str) -> ProviderFuture<'a, bool> {
        let mut keys = self.0.lock();
        let had = keys.len();
        keys.retain(|k| k.kid != kid || k.retired_at.is_none());
        let removed = keys.len() < had;
        Box::pin(async move { Ok(removed) })
    }
}
