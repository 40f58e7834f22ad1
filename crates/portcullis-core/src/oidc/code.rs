//! Authorization codes: issued at the authorization endpoint, redeemed once at the token
//! endpoint. A code is remembered after it is redeemed, so a replay (someone else holding the
//! code) can end what the first redemption issued (RFC 6749 §4.1.2, RFC 9700 §4.5).

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::ProviderFuture;
use crate::application::AppId;
use crate::time::Timestamp;
use crate::token::{SessionId, TokenHash};

/// How long a code can be redeemed after it is issued.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// How long a code is remembered past its expiry, so a late replay is still recognised.
pub const CODE_REMEMBERED: Duration = Duration::from_secs(600);

/// An authorization code, as stored: what the token endpoint needs to issue tokens for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationCode {
    /// SHA-256 of the code (`pca_…`); the code itself is never stored.
    pub hash: TokenHash,
    /// The client it was issued to.
    pub client: AppId,
    /// The person (account id).
    pub subject: String,
    /// The SSO session that vouched for the person; the application session is its child.
    pub sso_session: SessionId,
    /// The redirect URI of the authorization request, which the token request must repeat.
    pub redirect_uri: String,
    /// The granted scopes, in the order asked.
    pub scopes: Vec<String>,
    /// The `nonce` of the authorization request, for the ID token.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge (base64url of SHA-256 of the verifier).
    pub code_challenge: Option<String>,
    /// When the person last authenticated (the SSO session's authentication).
    pub auth_time: Timestamp,
    /// The assurance the sign-in reached (`acr`).
    pub acr: Option<String>,
    /// How the person authenticated (`amr`: `pwd`, `otp`, …).
    pub amr: Vec<String>,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being redeemable.
    pub expires_at: Timestamp,
    /// The application session its redemption created; `None` until it is redeemed.
    pub redeemed_for: Option<SessionId>,
}

/// The answer to a redemption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// The first redemption: the code as issued, now marked redeemed for the given session.
    First(AuthorizationCode),
    /// The code was redeemed before; `redeemed_for` names what that redemption created.
    Replayed(AuthorizationCode),
    /// No such code (never issued, or forgotten).
    Unknown,
}

/// Keeps authorization codes. Object-safe: the HTTP layer holds one behind an `Arc`.
pub trait CodeStore: Send + Sync + 'static {
    /// Stores a new code.
    fn add_code(&self, code: AuthorizationCode) -> ProviderFuture<'_, ()>;

    /// Marks the code with hash `hash` redeemed for `session`, atomically: of two redemptions
    /// racing on any nodes, exactly one gets [`Redemption::First`]. Expiry is the caller's
    /// rule (the code comes back with its `expires_at`).
    fn redeem_code<'a>(
        &'a self,
        hash: &'a TokenHash,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Redemption>;

    /// The code with hash `hash` as it stands (redeemed or not), changing nothing.
    fn find_code<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<AuthorizationCode>>;

    /// Forgets codes that expired before `before`; answers how many went (stores that expire
    /// keys themselves answer 0).
    fn forget_codes(&self, before: Timestamp) -> ProviderFuture<'_, u64>;
}

/// Codes in process memory (tests, `memory://`, and the embedded store's cache-less default).
#[derive(Debug, Default)]
pub struct MemoryCodeStore(Mutex<HashMap<TokenHash, AuthorizationCode>>);

impl MemoryCodeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CodeStore for MemoryCodeStore {
    fn add_code(&self, code: AuthorizationCode) -> ProviderFuture<'_, ()> {
        self.0.lock().insert(code.hash, code);
        Box::pin(async { Ok(()) })
    }

    fn redeem_code<'a>(
        &'a self,
        hash: &'a TokenHash,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Redemption> {
        let answer = match self.0.lock().get_mut(hash) {
            None => Redemption::Unknown,
            Some(code) if code.redeemed_for.is_some() => Redemption::Replayed(code.clone()),
            Some(code) => {
                code.redeemed_for = Some(session.clone());
                Redemption::First(code.clone())
            }
        };
        Box::pin(async { Ok(answer) })
    }

    fn find_code<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<AuthorizationCode>> {
        let found = self.0.lock().get(hash).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn forget_codes(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        let mut codes = self.0.lock();
        let had = codes.len();
        codes.retain(|_, code| code.expires_at >= before);
        let gone = (had - codes.len()) as u64;
        Box::pin(async move { Ok(gone) })
    }
}
