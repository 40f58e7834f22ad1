//! One-time identifiers: what the provider must accept only once within their lifetime, such as
//! the `jti` of a client assertion (OpenID Connect Core §9: "MUST only be used once"). Each is
//! kept by its SHA-256 until it would have expired anyway.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::time::Timestamp;
use crate::token::TokenHash;

/// Remembers one-time identifiers. Object-safe: the provider holds one behind an `Arc`.
pub trait ReplayStore: Send + Sync + 'static {
    /// Records, at `now`, the identifier hashing to `id`, remembered until `until`, atomically:
    /// `true` for its first use, `false` when it was recorded before (and not forgotten),
    /// whichever node asks.
    fn first_use<'a>(
        &'a self,
        id: &'a TokenHash,
        now: Timestamp,
        until: Timestamp,
    ) -> ProviderFuture<'a, bool>;

    /// Forgets identifiers remembered until before `before`; answers how many went (stores
    /// that expire keys themselves answer 0).
    fn forget_uses(&self, before: Timestamp) -> ProviderFuture<'_, u64>;
}

/// One-time identifiers in process memory.
#[derive(Debug, Default)]
pub struct MemoryReplayStore(Mutex<HashMap<TokenHash, Timestamp>>);

impl MemoryReplayStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn first_use<'a>(
        &'a self,
        id: &'a TokenHash,
        _now: Timestamp,
        until: Timestamp,
    ) -> ProviderFuture<'a, bool> {
        let first = match self.0.lock().entry(*id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(until);
                true
            }
        };
        Box::pin(async move { Ok(first) })
    }

    fn forget_uses(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        let mut uses = self.0.lock();
        let had = uses.len();
        uses.retain(|_, until| *until >= before);
        let gone = (had - uses.len()) as u64;
        Box::pin(async move { Ok(gone) })
    }
}
