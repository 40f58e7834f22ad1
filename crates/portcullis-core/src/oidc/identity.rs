//! Federated identities: an account's links to people at upstream identity providers. A
//! person who signs in through an upstream provider is found by the upstream's issuer and
//! their `sub` there, never by e-mail, so that nobody can take over an account by claiming its
//! address at a provider that lets them choose it.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::time::Timestamp;

/// An account's link to the person `subject` at the upstream provider `issuer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedIdentity {
    /// The account (`usr_…`).
    pub user_id: String,
    /// The configured provider it came through (`corp`): what the account page names.
    pub provider: String,
    /// The upstream's issuer, exactly as its discovery document and ID tokens say it.
    pub issuer: String,
    /// The person's `sub` at the upstream.
    pub subject: String,
    /// When the link was made.
    pub linked_at: Timestamp,
}

/// What [`IdentityStore::unlink`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlinked {
    /// The link is gone.
    Done,
    /// The account has no such link.
    NotLinked,
    /// It is the account's last link and the caller asked to keep one: nothing changed.
    LastOne,
}

/// Keeps federated identities. Object-safe: the HTTP layer holds one behind an `Arc`.
pub trait IdentityStore: Send + Sync + 'static {
    /// Links `identity.user_id` to (`issuer`, `subject`), atomically: `false` when that upstream
    /// person is linked already (to this account or another), whichever node asks.
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool>;

    /// The link of the person `subject` at `issuer`.
    fn identity<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
    ) -> ProviderFuture<'a, Option<FederatedIdentity>>;

    /// Every link of the account, oldest first.
    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>>;

    /// Removes the account's link to (`issuer`, `subject`). With `keep_one`, refuses
    /// ([`Unlinked::LastOne`]) when it is the account's only link, atomically, so that two
    /// racing unlinks cannot leave an account without a password and without a way in.
    fn unlink<'a>(
        &'a self,
        user_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
        keep_one: bool,
    ) -> ProviderFuture<'a, Unlinked>;
}

/// Federated identities in process memory (tests and `memory://`).
#[derive(Debug, Default)]
pub struct MemoryIdentityStore(Mutex<HashMap<(String, String), FederatedIdentity>>);

impl MemoryIdentityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl IdentityStore for MemoryIdentityStore {
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool> {
        let key = (identity.issuer.clone(), identity.subject.clone());
        let linked = match self.0.lock().entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(identity.clone());
                true
            }
        };
        Box::pin(async move { Ok(linked) })
    }

    fn identity<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
    ) -> ProviderFuture<'a, Option<FederatedIdentity>> {
        let found = self
            .0
            .lock()
            .get(&(issuer.to_owned(), subject.to_owned()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>> {
        let mut found: Vec<_> = self
            .0
            .lock()
            .values()
            .filter(|i| i.user_id == user_id)
            .cloned()
            .collect();
        found.sort_by(|a, b| {
            (a.linked_at, &a.issuer, &a.subject).cmp(&(b.linked_at, &b.issuer, &b.subject))
        });
        Box::pin(async move { Ok(found) })
    }

    fn unlink<'a>(
        &'a self,
        user_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
        keep_one: bool,
    ) -> ProviderFuture<'a, Unlinked> {
        let mut identities = self.0.lock();
        let key = (issuer.to_owned(), subject.to_owned());
        let answer = if identities.get(&key).is_none_or(|i| i.user_id != user_id) {
            Unlinked::NotLinked
        } else if keep_one && identities.values().filter(|i| i.user_id == user_id).count() == 1 {
            Unlinked::LastOne
        } else {
            identities.remove(&key);
            Unlinked::Done
        };
        Box::pin(async move { Ok(answer) })
    }
}
