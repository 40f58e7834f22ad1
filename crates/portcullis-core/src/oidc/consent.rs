//! Consents: what a person allowed a client to have. The consent page asks only for scopes
//! not granted before; revoking a consent makes the next authorization ask again.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::application::AppId;
use crate::time::Timestamp;

/// A person's consent to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The person (account id).
    pub subject: String,
    /// The client.
    pub client: AppId,
    /// Every scope granted so far.
    pub scopes: BTreeSet<String>,
    /// When a scope was last granted.
    pub granted_at: Timestamp,
}

/// Keeps consents. Object-safe: the HTTP layer holds one behind an `Arc`.
pub trait ConsentStore: Send + Sync + 'static {
    /// Adds `consent.scopes` to what the person granted the client before (a union, also when
    /// two grants race) and answers the whole consent, `granted_at` the latest grant's.
    fn grant_consent(&self, consent: Consent) -> ProviderFuture<'_, Consent>;

    /// What the person granted the client, if anything.
    fn consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, Option<Consent>>;

    /// Every consent of the person, ordered by client.
    fn consents_of<'a>(&'a self, subject: &'a str) -> ProviderFuture<'a, Vec<Consent>>;

    /// Forgets the person's consent to the client; `false` when there was none.
    fn revoke_consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, bool>;
}

/// Consents in process memory (tests and `memory://`).
#[derive(Debug, Default)]
pub struct MemoryConsentStore(Mutex<HashMap<(String, AppId), Consent>>);

impl MemoryConsentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ConsentStore for MemoryConsentStore {
    fn grant_consent(&self, consent: Consent) -> ProviderFuture<'_, Consent> {
        let mut consents = self.0.lock();
        let whole = consents
            .entry((consent.subject.clone(), consent.client.clone()))
            .and_modify(|had| {
                had.scopes.extend(consent.scopes.iter().cloned());
                had.granted_at = had.granted_at.max(consent.granted_at);
            })
            .or_insert(consent)
            .clone();
        Box::pin(async move { Ok(whole) })
    }

    fn consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, Option<Consent>> {
        let found = self
            .0
            .lock()
            .get(&(subject.to_owned(), client.clone()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn consents_of<'a>(&'a self, subject: &'a str) -> ProviderFuture<'a, Vec<Consent>> {
        let mut found: Vec<_> = self
            .0
            .lock()
            .values()
            .filter(|c| c.subject == subject)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.client.as_str().cmp(b.client.as_str()));
        Box::pin(async move { Ok(found) })
    }

    fn revoke_consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, bool> {
        let removed = self
            .0
            .lock()
            .remove(&(subject.to_owned(), client.clone()))
            .is_some();
        Box::pin(async move { Ok(removed) })
    }
}
