//! The provider as a service the HTTP layer calls: its settings, its stores, its keys, and
//! the engine and accounts it shares with the session API and the pages. Authorization
//! ([`crate::authorize`]) and the token endpoints ([`crate::grant`]) are its methods.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use portcullis_core::oidc::{
    CODE_REMEMBERED, Client, CodeStore, ConsentStore, DELIVERY_KEPT, IdentityStore,
    LogoutDeliveryStore, MemoryCodeStore, MemoryConsentStore, MemoryIdentityStore,
    MemoryRefreshTokenStore, MemoryReplayStore, MemorySigningKeyStore, REFRESH_RETRY_GRACE,
    RefreshTokenStore, ReplayStore, SigningAlg, SigningKey, SigningKeyStore,
};
use portcullis_core::{
    AccountError, Accounts, Actor, Application, Engine, EngineError, Keyring, MemoryStore,
    Principal, RandomSource, Reach, SealError, Store, StoreError, Timestamp,
};

use crate::signing::{
    KeyError, ProviderKeys, ensure_signing_keys, remove_retired_keys, rotate_signing_key,
};

/// How long a retired signing key stays published: far past the lifetime of any token it
/// signed and of any client's cached copy of the JWK Set.
pub const RETIRED_KEY_PUBLISHED: Duration = Duration::from_secs(86_400);

/// What the provider is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The issuer identifier (`iss`): the public base URL, no trailing slash.
    pub issuer: String,
    /// The algorithms keys are kept for; ID tokens are signed with the first.
    pub algs: Vec<SigningAlg>,
    /// Lifetime of access tokens.
    pub access_token_lifetime: Duration,
    /// Lifetime of ID tokens (never of the session: OIDC-CORE-14).
    pub id_token_lifetime: Duration,
    /// How long a retried refresh gets the same successor back.
    pub refresh_retry_grace: Duration,
    /// How long an authorization request may wait for the person to sign in or consent.
    pub interaction_lifetime: Duration,
}

impl ProviderSettings {
    /// The defaults for `issuer`: ES256, 5-minute access and ID tokens, the retry grace of
    /// [`REFRESH_RETRY_GRACE`], 10 minutes to sign in.
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            algs: vec![SigningAlg::Es256],
            access_token_lifetime: Duration::from_secs(300),
            id_token_lifetime: Duration::from_secs(300),
            refresh_retry_grace: REFRESH_RETRY_GRACE,
            interaction_lifetime: Duration::from_secs(600),
        }
    }

    /// The longest a token signed by a key can live, so a retired key stays published that
    /// long.
    pub fn longest_token_lifetime(&self) -> Duration {
        self.access_token_lifetime.max(self.id_token_lifetime)
    }
}

/// `at` in whole seconds since the Unix epoch, as JWT times are.
pub(crate) fn seconds(at: Timestamp) -> i64 {
    at.as_millis().div_euclid(1000)
}

/// The stores the provider keeps its entities in (the configured backend's, or memory).
#[derive(Clone)]
pub struct ProviderStores {
    /// Authorization codes.
    pub codes: Arc<dyn CodeStore>,
    /// Refresh tokens.
    pub refresh_tokens: Arc<dyn RefreshTokenStore>,
    /// Consents.
    pub consents: Arc<dyn ConsentStore>,
    /// Signing keys.
    pub signing_keys: Arc<dyn SigningKeyStore>,
    /// Back-channel logout deliveries, which the session store writes with each ending: the
    /// same backend's.
    pub deliveries: Arc<dyn LogoutDeliveryStore>,
    /// One-time identifiers (client assertions' `jti`, upstream answers and logout tokens).
    pub replays: Arc<dyn ReplayStore>,
    /// Accounts' links to people at upstream providers (federation).
    pub identities: Arc<dyn IdentityStore>,
}

impl ProviderStores {
    /// Stores in process memory beside the in-memory session store `sessions` (tests and
    /// `memory://`), whose endings write the deliveries.
    pub fn in_memory(sessions: &MemoryStore) -> Self {
        Self {
            codes: Arc::new(MemoryCodeStore::new()),
            refresh_tokens: Arc::new(MemoryRefreshTokenStore::new()),
            consents: Arc::new(MemoryConsentStore::new()),
            signing_keys: Arc::new(MemorySigningKeyStore::new()),
            deliveries: Arc::new(sessions.journal().deliveries()),
            replays: Arc::new(MemoryReplayStore::new()),
            identities: Arc::new(MemoryIdentityStore::new()),
        }
    }
}

impl std::fmt::Debug for ProviderStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderStores")
    }
}

/// What the provider's own work can fail with (not a protocol error: the store or the keys).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Signing keys could not be made, read or opened.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The session engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The accounts could not be read.
    #[error(transparent)]
    Accounts(#[from] AccountError),
}

/// The OpenID Connect provider of one node.
pub struct Provider<S> {
    pub(crate) engine: Arc<Engine<S>>,
    pub(crate) accounts: Arc<Accounts>,
    pub(crate) stores: ProviderStores,
    pub(crate) keyring: Keyring,
    pub(crate) random: Arc<dyn RandomSource>,
    pub(crate) settings: ProviderSettings,
    keys: RwLock<Arc<ProviderKeys>>,
}

impl<S> std::fmt::Debug for Provider<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Provider<S> {
    /// Starts the provider: makes the signing keys the settings name if the store has none
    /// (any node may; one key per algorithm wins) and opens them.
    pub async fn start(
        engine: Arc<Engine<S>>,
        accounts: Arc<Accounts>,
        stores: ProviderStores,
        keyring: Keyring,
        random: Arc<dyn RandomSource>,
        settings: ProviderSettings,
    ) -> Result<Self, ProviderError> {
        let stored = ensure_signing_keys(
            &*stores.signing_keys,
            &settings.algs,
            &keyring,
            &*random,
            engine.now(),
        )
        .await?;
        let keys = ProviderKeys::load(&stored, &keyring)?;
        Ok(Self {
            engine,
            accounts,
            stores,
            keyring,
            random,
            settings,
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Reads the keys again (after a rotation on any node).
    pub async fn reload_keys(&self) -> Result<(), ProviderError> {
        let stored = self.stores.signing_keys.signing_keys().await?;
        let keys = ProviderKeys::load(&stored, &self.keyring)?;
        *self.keys.write() = Arc::new(keys);
        Ok(())
    }

    /// The keys this node signs and verifies with.
    pub fn keys(&self) -> Arc<ProviderKeys> {
        self.keys.read().clone()
    }

    /// The settings.
    pub fn settings(&self) -> &ProviderSettings {
        &self.settings
    }

    /// The stores.
    pub fn stores(&self) -> &ProviderStores {
        &self.stores
    }

    /// The session engine.
    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }

    /// The algorithm `client`'s ID tokens and logout tokens are signed with: its registered
    /// one, else the provider's first.
    pub(crate) fn id_token_alg(&self, client: Option<&Client>) -> SigningAlg {
        client
            .and_then(|c| c.id_token_signed_response_alg)
            .or_else(|| self.settings.algs.first().copied())
            .unwrap_or(SigningAlg::Es256)
    }

    /// Signs `claims` as a JWT (`typ: JWT`) with the provider's first algorithm: the client
    /// assertions Portcullis makes as a client of upstream providers (`private_key_jwt`), which
    /// they verify with this provider's published JWK Set.
    pub fn sign_client_assertion(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, KeyError> {
        self.keys().sign(self.id_token_alg(None), "JWT", claims)
    }

    /// The registered client `client_id` (an application's public id), with its registration.
    pub async fn client(
        &self,
        client_id: &str,
    ) -> Result<Option<(Application, Client)>, ProviderError> {
        if !client_id.starts_with("app_") {
            return Ok(None);
        }
        match self.engine.application(client_id).await {
            Ok(app) => Ok(app.client.clone().map(|client| (app, client))),
            Err(EngineError::UnknownApplication(_) | EngineError::NotFound) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The provider acting for the person `subject` through a client: it reaches every
    /// session (a client's session is a child of Portcullis's SSO session).
    pub(crate) fn acting_for(subject: &str) -> Principal {
        Principal {
            actor: Actor::user(subject),
            reach: Reach::Everything,
        }
    }

    /// Every signing key, signing and retired, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKey>, ProviderError> {
        Ok(self.stores.signing_keys.signing_keys().await?)
    }

    /// Replaces the signing key of `alg` (`portcullis keys rotate`); this node signs with the
    /// new key at once, the others after their next [`Provider::upkeep`].
    pub async fn rotate_key(&self, alg: SigningAlg) -> Result<SigningKey, ProviderError> {
        let key = rotate_signing_key(
            &*self.stores.signing_keys,
            alg,
            &self.keyring,
            &*self.random,
            self.engine.now(),
        )
        .await?;
        self.reload_keys().await?;
        Ok(key)
    }

    /// What every node does about once a minute: reads the keys again (a rotation made on
    /// another node), removes keys retired for longer than [`RETIRED_KEY_PUBLISHED`] (so far
    /// past every token they signed and every client's cached JWK Set), and forgets expired
    /// codes and refresh tokens where the store does not expire them itself, and back-channel
    /// logout deliveries finished more than [`DELIVERY_KEPT`] ago.
    pub async fn upkeep(&self) -> Result<(), ProviderError> {
        let now = self.engine.now();
        let published = RETIRED_KEY_PUBLISHED.max(self.settings.longest_token_lifetime());
        let removed = remove_retired_keys(&*self.stores.signing_keys, now, published).await?;
        if !removed.is_empty() {
            tracing::info!(keys = ?removed, "retired signing keys removed from the JWK Set");
        }
        self.reload_keys().await?;
        // A redeemed code is remembered past its expiry, so a late replay still ends what its
        // first redemption issued (RFC 9700 §4.5).
        self.stores
            .codes
            .forget_codes(now.minus(CODE_REMEMBERED))
            .await?;
        self.stores
            .refresh_tokens
            .forget_refresh_tokens(now)
            .await?;
        self.stores
            .deliveries
            .forget_deliveries(now.minus(DELIVERY_KEPT))
            .await?;
        self.stores.replays.forget_uses(now).await?;
        Ok(())
    }

    /// Seals `text` with the configured keyring for `purpose` (a continuation kept by the
    /// browser while the person signs in).
    pub fn seal(&self, text: &str, purpose: &str) -> String {
        self.keyring.seal(text, purpose, &*self.random)
    }

    /// Opens what [`Provider::seal`] sealed for `purpose`.
    pub fn open(&self, sealed: &str, purpose: &str) -> Result<String, SealError> {
        self.keyring.open(sealed, purpose)
    }
}
