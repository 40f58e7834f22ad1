//! API keys: the secrets applications call Portcullis with. Each belongs to one application
//! ([`ApiKey::application`]); only its SHA-256 is stored, and the secret is shown once, when the
//! key is created.
//!
//! Stores keep them through [`ApiKeyStore`]; stores shared by many nodes cache the keys they
//! look up for a short time in an [`ApiKeyCache`].

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::application::AppId;
use crate::event::AuditEvent;
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::token::{PublicId, TokenHash};

/// An API key for backend callers; only its hash is stored.
///
/// Stores keep it as [`crate::stored::StoredApiKey`], whose field names are the storage
/// contract, so this type may change freely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id (`key_…`).
    pub id: PublicId,
    /// What it is for (`shop`).
    pub name: String,
    /// The application it belongs to; keys of the previous release read back as the legacy
    /// application's.
    #[serde(default = "crate::application::legacy_app")]
    pub application: AppId,
    /// SHA-256 of the key.
    pub key_hash: TokenHash,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
}

/// Where API keys are kept, each change atomic with its audit event. A key is never deleted:
/// revoking it records when, and lookups and the list still return it with its `revoked_at`.
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores an API key and its `api_key.created` event.
    fn add_api_key(
        &self,
        key: ApiKey,
        event: AuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, StoreError>> + Send;

    /// The API key whose secret hashes to `hash` (revoked ones too).
    fn find_api_key(
        &self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<ApiKey>, StoreError>> + Send;

    /// Every API key.
    fn list_api_keys(&self) -> impl Future<Output = Result<Vec<ApiKey>, StoreError>> + Send;

    /// Revokes an API key; `Ok(None)` when there is no such live key.
    fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<(ApiKey, AuditEvent)>, StoreError>> + Send;
}

/// A short-lived cache of API keys by hash for stores shared by many nodes, so a validation
/// does not cost a second store round trip for its caller's key. Each entry is trusted for a
/// fixed time (monotonic clock: freshness only). Only keys that exist are cached, so a new key
/// works at once everywhere; a revoked key stops working on other nodes within the TTL.
#[derive(Debug)]
pub struct ApiKeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<TokenHash, (Instant, ApiKey)>>,
}

const MAX_ENTRIES: usize = 10_000;

impl ApiKeyCache {
    /// A cache trusting each entry for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
        }
    }

    /// The cached key, if still fresh.
    pub fn get(&self, hash: &TokenHash) -> Option<ApiKey> {
        self.entries
            .lock()
            .get(hash)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, key)| key.clone())
    }

    /// Remembers a key that was just read from the store.
    pub fn put(&self, key: &ApiKey) {
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key.key_hash, (Instant::now(), key.clone()));
    }

    /// Forgets a key this node changed.
    pub fn forget(&self, hash: &TokenHash) {
        self.entries.lock().remove(hash);
    }
}
