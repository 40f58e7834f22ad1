//! What the application keeps about browsers, each entry bound to a random cookie: sign-ins in
//! progress, its own sessions, sign-outs in progress. Entries are kept in memory under the
//! SHA-256 of their cookie (a copy of the memory gives no cookie), and forgotten after their
//! lifetime.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Entries of one kind, each reached by the cookie it was stored under.
pub struct CookieStore<T> {
    entries: Mutex<HashMap<[u8; 32], (Instant, T)>>,
    lifetime: Duration,
}

impl<T: Clone> CookieStore<T> {
    /// A store whose entries last `lifetime`.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            lifetime,
        }
    }

    /// Keeps `value` and returns the new cookie value that reaches it (256 random bits).
    pub fn insert(&self, value: T) -> Result<String, getrandom::Error> {
        let cookie = random_token()?;
        let mut entries = self.lock();
        let lifetime = self.lifetime;
        entries.retain(|_, (created, _)| created.elapsed() < lifetime);
        entries.insert(digest(&cookie), (Instant::now(), value));
        Ok(cookie)
    }

    /// The value reached by `cookie`, if it is there and not past its lifetime.
    pub fn get(&self, cookie: &str) -> Option<T> {
        let entries = self.lock();
        let (created, value) = entries.get(&digest(cookie))?;
        (created.elapsed() < self.lifetime).then(|| value.clone())
    }

    /// Removes and returns the value reached by `cookie` (a value used once).
    pub fn take(&self, cookie: &str) -> Option<T> {
        let (created, value) = self.lock().remove(&digest(cookie))?;
        (created.elapsed() < self.lifetime).then_some(value)
    }

    /// Removes every value `matches` picks; returns how many there were.
    pub fn remove_where(&self, matches: impl Fn(&T) -> bool) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, (_, value)| !matches(value));
        before - entries.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Instant, T)>> {
        // A panic elsewhere while holding the lock leaves the map as it was: still usable.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// 256 random bits from the operating system, base64url.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The application's cookies. Browsers do not keep cookies apart by port, so two applications
/// on one host (as in development: `127.0.0.1:3001` and `127.0.0.1:3002`) need different names.
#[derive(Debug, Clone)]
pub struct Cookies {
    /// Its own session.
    pub session: String,
    /// A sign-in in progress (PKCE verifier, state, nonce).
    pub login: String,
    /// A sign-out at the provider in progress (its state).
    pub logout: String,
    secure: bool,
}

impl Cookies {
    /// Cookies named after `prefix`; `secure` (an https application) makes them `__Host-`
    /// cookies, sent only over TLS.
    pub fn new(prefix: &str, secure: bool) -> Self {
        let host = if secure { "__Host-" } else { "" };
        Self {
            session: format!("{host}{prefix}-session"),
            login: format!("{host}{prefix}-login"),
            logout: format!("{host}{prefix}-logout"),
            secure,
        }
    }

    /// The `Set-Cookie` value that sets `name` to `value`: `HttpOnly`, `SameSite=Lax` (so it
    /// comes back with the provider's top-level redirect to the callback), `Secure` over TLS,
    /// for `max_age` or the browser's session.
    pub fn set(&self, name: &str, value: &str, max_age: Option<Duration>) -> String {
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            cookie.push_str("; Secure");
        }
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        cookie
    }

    /// The `Set-Cookie` value that removes `name`.
    pub fn clear(&self, name: &str) -> String {
        self.set(name, "", Some(Duration::ZERO))
    }
}

/// The value of the cookie `name` the request carries.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn an_entry_is_reached_by_its_cookie_only_and_taken_once() {
        let store = CookieStore::new(Duration::from_secs(60));
        let cookie = store.insert("alice".to_owned()).unwrap();
        assert_eq!(store.get(&cookie).as_deref(), Some("alice"));
        assert_eq!(store.get("another"), None);
        assert_eq!(store.take(&cookie).as_deref(), Some("alice"));
        assert_eq!(store.take(&cookie), None);
    }

    #[test]
    fn entries_past_their_lifetime_are_gone() {
        let store = CookieStore::new(Duration::ZERO);
        let cookie = store.insert(1).unwrap();
        assert_eq!(store.get(&cookie), None);
    }

    #[test]
    fn remove_where_counts_what_it_removed() {
        let store = CookieStore::new(Duration::from_secs(60));
        for n in [1, 2, 3, 4] {
            store.insert(n).unwrap();
        }
        assert_eq!(store.remove_where(|n| n % 2 == 0), 2);
        assert_eq!(store.remove_where(|n| n % 2 == 0), 0);
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("rp-session-x=1; rp-session=abc; other=2"),
        );
        assert_eq!(cookie(&headers, "rp-session"), Some("abc"));
        assert_eq!(cookie(&headers, "rp"), None);
    }

    #[test]
    fn cookies_over_tls_are_host_cookies() {
        let cookies = Cookies::new("app", true);
        assert_eq!(cookies.session, "__Host-app-session");
        assert_eq!(
            cookies.set(&cookies.session, "v", None),
            "__Host-app-session=v; Path=/; HttpOnly; SameSite=Lax; Secure"
        );
        let plain = Cookies::new("app", false);
        assert_eq!(
            plain.clear(&plain.login),
            "app-login=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }
}
