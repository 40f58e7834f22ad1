//! Refresh tokens: each family belongs to one application session (the client's session at
//! Portcullis, a child of the SSO session). A refresh rotates the token; the old one is kept,
//! marked with its successor, so that
//! - a second use shortly after (a client retrying a refresh whose answer it lost) gets the
//!   **same** successor back, sealed under a key only the old token's holder can derive, and
//! - a use after that grace is reuse: someone else holds the family, which ends
//!   (RFC 9700 §4.14.2).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::application::AppId;
use crate::time::Timestamp;
use crate::token::{SessionId, TokenHash};

/// How long after a rotation the same old token still gets the same successor.
pub const REFRESH_RETRY_GRACE: Duration = Duration::from_secs(10);

/// A refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// SHA-256 of the token (`pcr_…`); the token itself is never stored.
    pub hash: TokenHash,
    /// The application session the family belongs to.
    pub family: SessionId,
    /// The client it was issued to.
    pub client: AppId,
    /// The person (account id).
    pub subject: String,
    /// The scopes granted, in the order asked.
    pub scopes: Vec<String>,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being usable (at the latest, the family's absolute deadline).
    pub expires_at: Timestamp,
    /// Set once it has been exchanged for a successor.
    pub rotated: Option<Rotated>,
}

/// What replaced a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// When.
    pub at: Timestamp,
    /// The successor's hash.
    pub successor: TokenHash,
    /// The successor token sealed under a key derived from the old token, so a retry within
    /// the grace can be answered with it and nobody without the old token can read it.
    pub sealed_successor: String,
}

/// The answer to a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: it is now marked rotated and the successor is stored. Holds the
    /// old token as it was before.
    Rotated(RefreshToken),
    /// The token was rotated before (by this family's holder or by a thief): it comes back with
    /// its [`Rotated`], and the successor offered was not stored.
    AlreadyRotated(RefreshToken),
    /// No such token (never issued, expired and forgotten, or its family ended).
    Unknown,
}

/// Keeps refresh tokens. Object-safe: the HTTP layer holds one behind an `Arc`.
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Stores the first token of a family.
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()>;

    /// Replaces the token with hash `hash` by `successor`, atomically: of two rotations racing
    /// on any nodes, exactly one gets [`Rotation::Rotated`] and only its successor is stored;
    /// the old token is marked with [`Rotated`] at `successor.issued_at`. The successor is of
    /// the old token's family (callers make it from the old token); a token that is not in
    /// `successor.family` is [`Rotation::Unknown`].
    fn rotate_refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
        successor: RefreshToken,
        sealed_successor: String,
    ) -> ProviderFuture<'a, Rotation>;

    /// The token with hash `hash`, rotated or not.
    fn refresh_token<'a>(&'a self, hash: &'a TokenHash)
    -> ProviderFuture<'a, Option<RefreshToken>>;

    /// Forgets every token of the family (revocation, reuse, the session's end); answers how
    /// many went.
    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64>;

    /// Forgets tokens that expired before `before`; answers how many went (stores that expire
    /// keys themselves answer 0).
    fn forget_refresh_tokens(&self, before: Timestamp) -> ProviderFuture<'_, u64>;
}

/// Refresh tokens in process memory (tests and `memory://`).
#[derive(Debug, Default)]
pub struct MemoryRefreshTokenStore(Mutex<HashMap<TokenHash, RefreshToken>>);

impl MemoryRefreshTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RefreshTokenStore for MemoryRefreshTokenStore {
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()> {
        self.0.lock().insert(token.hash, token);
        Box::pin(async { Ok(()) })
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
        successor: RefreshToken,
        sealed_successor: String,
    ) -> ProviderFuture<'a, Rotation> {
        let mut tokens = self.0.lock();
        let answer = match tokens.get_mut(hash) {
            None => Rotation::Unknown,
            Some(old) if old.family != successor.family => Rotation::Unknown,
            Some(old) if old.rotated.is_some() => Rotation::AlreadyRotated(old.clone()),
            Some(old) => {
                let before = old.clone();
                old.rotated = Some(Rotated {
                    at: successor.issued_at,
                    successor: successor.hash,
                    sealed_successor,
                });
                tokens.insert(successor.hash, successor);
                Rotation::Rotated(before)
            }
        };
        Box::pin(async move { Ok(answer) })
    }

    fn refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<RefreshToken>> {
        let found = self.0.lock().get(hash).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64> {
        let mut tokens = self.0.lock();
        let had = tokens.len();
        tokens.retain(|_, t| t.family != *family);
        let gone = (had - tokens.len()) as u64;
        Box::pin(async move { Ok(gone) })
    }

    fn forget_refresh_tokens(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        let mut tokens = self.0.lock();
        let had = tokens.len();
        tokens.retain(|_, t| t.expires_at >= before);
        let gone = (had - tokens.len()) as u64;
        Box::pin(async move { Ok(gone) })
    }
}
