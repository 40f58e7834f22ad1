//! The provider's signing keys (its JWK Set), fetched at start and again when a token names a
//! key the set does not hold (the provider rotated its keys), at most once per
//! [`REFETCH_AFTER`] so that tokens with made-up key ids cannot make us hammer the provider.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::CoreJsonWebKeySet;
use openidconnect::http::{Method, Request, StatusCode, header};

use crate::http::{HttpClient, HttpError};

/// The shortest time between two fetches of the key set.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

/// Why the key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The request failed.
    #[error("fetching {url}: {source}")]
    Http {
        /// The `jwks_uri`.
        url: String,
        /// Why.
        source: HttpError,
    },
    /// The provider answered something else than a JWK Set.
    #[error("{url} answered {why}")]
    Answer {
        /// The `jwks_uri`.
        url: String,
        /// What was wrong.
        why: String,
    },
}

/// One fetched JWK Set, read by each library that checks signatures with it.
pub struct KeySet {
    /// For ID tokens (`openidconnect`).
    pub id_tokens: CoreJsonWebKeySet,
    /// For logout tokens (`jsonwebtoken`).
    pub logout_tokens: jsonwebtoken::jwk::JwkSet,
}

/// The provider's current keys.
pub struct ProviderKeys {
    url: String,
    current: RwLock<(Arc<KeySet>, Instant)>,
    /// Held while fetching, so that concurrent misses fetch once.
    fetching: tokio::sync::Mutex<()>,
}

impl ProviderKeys {
    /// Fetches the key set at `url` (the discovery document's `jwks_uri`).
    pub async fn fetch(url: &str, http: &HttpClient) -> Result<Self, KeysError> {
        let set = fetch(url, http).await?;
        Ok(Self {
            url: url.to_owned(),
            current: RwLock::new((Arc::new(set), Instant::now())),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The keys in use.
    pub fn current(&self) -> Arc<KeySet> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current.0)
    }

    /// Fetches the set again, unless it was fetched less than [`REFETCH_AFTER`] ago, and
    /// returns the keys in use afterwards.
    pub async fn refresh(&self, http: &HttpClient) -> Result<Arc<KeySet>, KeysError> {
        let _one_at_a_time = self.fetching.lock().await;
        let fetched_at = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1;
        if fetched_at.elapsed() < REFETCH_AFTER {
            return Ok(self.current());
        }
        let set = Arc::new(fetch(&self.url, http).await?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            (Arc::clone(&set), Instant::now());
        Ok(set)
    }
}

async fn fetch(url: &str, http: &HttpClient) -> Result<KeySet, KeysError> {
    let answer = |why: String| KeysError::Answer {
        url: url.to_owned(),
        why,
    };
    let request = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header(header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| answer(e.to_string()))?;
    let response = http.send(request).await.map_err(|source| KeysError::Http {
        url: url.to_owned(),
        source,
    })?;
    if response.status() != StatusCode::OK {
        return Err(answer(format!("status {}", response.status())));
    }
    let body = response.body();
    Ok(KeySet {
        id_tokens: serde_json::from_slice(body).map_err(|e| answer(e.to_string()))?,
        logout_tokens: serde_json::from_slice(body).map_err(|e| answer(e.to_string()))?,
    })
}

#[cfg(test)]
impl ProviderKeys {
    /// A fixed key set, just fetched (so a miss does not fetch again).
    pub fn fixed(jwks: &str) -> Self {
        let set = KeySet {
            id_tokens: serde_json::from_str(jwks).expect("a JWK Set"),
            logout_tokens: serde_json::from_str(jwks).expect("a JWK Set"),
        };
        Self {
            url: "http://127.0.0.1:9/jwks".to_owned(),
            current: RwLock::new((Arc::new(set), Instant::now())),
            fetching: tokio::sync::Mutex::new(()),
        }
    }
}
