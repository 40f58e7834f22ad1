//! One-time identifiers in Redis: a key per identifier, `<prefix>:or:<32 raw bytes of its
//! hash>`, written by `SET … NX` (only the first use writes) with a TTL until it is forgotten,
//! counted from the caller's clock as the codes' are; so [`ReplayStore::forget_uses`] answers 0.

use portcullis_core::oidc::{ProviderFuture, ReplayStore};
use portcullis_core::{Timestamp, TokenHash};

use crate::RedisStore;
use crate::codes::ttl_millis;

/// The one-time identifiers of a [`RedisStore`] (see [`RedisStore::replays`]).
#[derive(Debug, Clone)]
pub struct RedisReplayStore {
    store: RedisStore,
}

impl RedisReplayStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }
}

impl ReplayStore for RedisReplayStore {
    fn first_use<'a>(
        &'a self,
        id: &'a TokenHash,
        now: Timestamp,
        until: Timestamp,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let mut key = format!("{}:or:", self.store.prefix).into_bytes();
            key.extend_from_slice(&id.0);
            let ttl = ttl_millis(now, until, std::time::Duration::ZERO);
            let written: Option<String> = self
                .store
                .query(
                    redis::cmd("SET")
                        .arg(key)
                        .arg("")
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl),
                )
                .await?;
            Ok(written.is_some())
        })
    }

    fn forget_uses(&self, _before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}
