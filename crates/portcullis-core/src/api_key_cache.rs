//! A short-lived cache of API keys for stores shared by many nodes, so a validation does not
//! cost a second store round trip for its caller's key. Only keys that exist are cached, so a
//! new key works at once everywhere; a revoked key stops working on other nodes within the TTL.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::ApiKey;
use crate::token::TokenHash;

/// Cached API keys by hash, each trusted for a fixed time (monotonic clock: freshness only).
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
