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

/// An upstream session that vouched for a sign-in here: which person it is, so that a logout
/// token naming only the session (`sid`, Back-Channel Logout §2.4) finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSession {
    /// The upstream's issuer.
    pub issuer: String,
    /// The upstream session (`sid`).
    pub sid: String,
    /// The person's `sub` there.
    pub subject: String,
    /// Until when it is kept: no SSO session it vouched for lives longer.
    pub until: Timestamp,
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

    /// Keeps `session` until its `until` (a later `until` for the same session wins; one
    /// already kept for another subject is replaced), forgetting some that ran out by `now`.
    fn remember_session<'a>(
        &'a self,
        session: &'a UpstreamSession,
        now: Timestamp,
    ) -> ProviderFuture<'a, ()>;

    /// The person the upstream session `sid` at `issuer` belongs to, while kept (`until` after
    /// `now`).
    fn session_subject<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<String>>;
}

/// Federated identities in process memory (tests and `memory://`).
#[derive(Debug, Default)]
pub struct MemoryIdentityStore {
    links: Mutex<HashMap<(String, String), FederatedIdentity>>,
    /// (issuer, sid) → (subject, until).
    sessions: Mutex<HashMap<(String, String), (String, Timestamp)>>,
}

impl MemoryIdentityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl IdentityStore for MemoryIdentityStore {
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool> {
        let key = (identity.issuer.clone(), identity.subject.clone());
        let linked = match self.links.lock().entry(key) {
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
            .links
            .lock()
            .get(&(issuer.to_owned(), subject.to_owned()))
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>> {
        let mut found: Vec<_> = self
            .links
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
        let mut identities = self.links.lock();
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

    fn remember_session<'a>(
        &'a self,
        session: &'a UpstreamSession,
        now: Timestamp,
    ) -> ProviderFuture<'a, ()> {
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, (_, until)| *until > now);
        let key = (session.issuer.clone(), session.sid.clone());
        let until = match sessions.get(&key) {
            Some((subject, until)) if *subject == session.subject => (*until).max(session.until),
            _ => session.until,
        };
        sessions.insert(key, (session.subject.clone(), until));
        Box::pin(async move { Ok(()) })
    }

    fn session_subject<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<String>> {
        let found = self
            .sessions
            .lock()
            .get(&(issuer.to_owned(), sid.to_owned()))
            .filter(|(_, until)| *until > now)
            .map(|(subject, _)| subject.clone());
        Box::pin(async move { Ok(found) })
    }
}
