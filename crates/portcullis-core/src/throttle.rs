//! Failure counting shared by every node: the [`ThrottleStore`] contract, the rule that turns
//! a count into a delay ([`Strikes::count`]), and the keys sign-in counts under.
//!
//! An attempt is counted *before* the credential is checked, atomically in the store, so
//! parallel guesses cannot all pass a block check made before any of them failed, and N nodes
//! do not give N times the attempts. A success then clears (an account) or refunds (an
//! address) what it counted.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::account::UserStoreError;
use crate::time::Timestamp;

/// How failures slow down further attempts for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRules {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Failures are forgotten this long after the last one.
    pub forget_after: Duration,
    /// At this many failures the key is locked until they are forgotten (NIST SP 800-63B
    /// §5.2.2: no more than 100 consecutive failures).
    pub lock_after: Option<u32>,
}

impl ThrottleRules {
    /// Passwords per account name: 5 free failures, then 30 s doubling up to 15 min; 100
    /// failures lock the name for a day.
    pub const ACCOUNT: Self = Self {
        free_failures: 5,
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(15 * 60),
        forget_after: Duration::from_secs(24 * 3600),
        lock_after: Some(100),
    };
    /// Every failure (password or code) per client address (IPv6 per /64): 20 free failures,
    /// then 30 s doubling up to 15 min, forgotten after an hour.
    pub const ADDRESS: Self = Self {
        free_failures: 20,
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(15 * 60),
        forget_after: Duration::from_secs(3600),
        lock_after: None,
    };
    /// Second-factor codes per account, never reset by a correct password: 5 free failures,
    /// then 30 s doubling up to an hour; 100 consecutive failures lock the factor for 30 days.
    pub const SECOND_FACTOR: Self = Self {
        free_failures: 5,
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(3600),
        forget_after: Duration::from_secs(30 * 24 * 3600),
        lock_after: Some(100),
    };
    /// Codes per sign-in in progress: the fifth wrong code ends it.
    pub const PENDING_SIGN_IN: Self = Self {
        free_failures: 4,
        first_delay: Duration::from_secs(15 * 60),
        max_delay: Duration::from_secs(15 * 60),
        forget_after: Duration::from_secs(15 * 60),
        lock_after: Some(5),
    };

    /// The wait imposed once `failures` have been counted.
    pub(crate) fn delay_after(&self, failures: u32) -> Option<Duration> {
        if self.lock_after.is_some_and(|lock| failures >= lock) {
            return Some(self.forget_after);
        }
        let over = failures.checked_sub(self.free_failures)?.checked_sub(1)?;
        let delay = self.first_delay.saturating_mul(1u32 << over.min(20));
        Some(delay.min(self.max_delay))
    }
}

/// What a store keeps per key. Stores persist the three fields as they are and may drop the
/// record at [`Strikes::expires_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strikes {
    /// Attempts counted and not cleared, refunded or forgotten.
    pub failures: u32,
    /// When the last attempt was counted.
    pub last_failure: Timestamp,
    /// No attempt is counted or allowed before this.
    pub blocked_until: Timestamp,
}

/// The answer to one counted attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The key is blocked: nothing was counted; try again after this long.
    Blocked(Duration),
    /// The attempt was counted and may go ahead.
    Allowed {
        /// Attempts counted now, this one included.
        failures: u32,
        /// The wait that follows if this attempt fails too.
        then_wait: Option<Duration>,
    },
}

impl Strikes {
    /// The record after one attempt at `now` under `rules`, and the verdict, given the record
    /// before (`None` when there is none). The one rule every backend applies, atomically.
    pub fn count(before: Option<Self>, rules: &ThrottleRules, now: Timestamp) -> (Self, Verdict) {
        let current = before.filter(|s| s.expires_at(rules) > now);
        // An attempt stamped before the last one counted (a task that read the clock before
        // another counted, or a node whose clock is behind) counts as at the same instant:
        // otherwise "no block" (blocked until the last attempt) would read as a block of a
        // few milliseconds, and concurrent right passwords would be refused.
        let at = current.map_or(now, |s| now.max(s.last_failure));
        if let Some(s) = current.filter(|s| s.blocked_until > at) {
            return (s, Verdict::Blocked(now.until(s.blocked_until)));
        }
        let failures = current.map_or(0, |s| s.failures).saturating_add(1);
        let then_wait = rules.delay_after(failures);
        let next = Self {
            failures,
            last_failure: at,
            blocked_until: then_wait.map_or(at, |wait| at.plus(wait)),
        };
        (
            next,
            Verdict::Allowed {
                failures,
                then_wait,
            },
        )
    }

    /// The record after a success is refunded: one attempt fewer, no block.
    pub fn refund(self) -> Self {
        Self {
            failures: self.failures.saturating_sub(1),
            blocked_until: self.last_failure,
            ..self
        }
    }

    /// When the record is forgotten (and a store may drop it).
    pub fn expires_at(&self, rules: &ThrottleRules) -> Timestamp {
        self.last_failure
            .plus(rules.forget_after)
            .max(self.blocked_until)
    }
}

/// The future a [`ThrottleStore`] method returns.
pub type ThrottleFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, UserStoreError>> + Send + 'a>>;

/// Where failure counts live: in the same backend as the accounts, shared by every node.
/// `portcullis-store-tests` checks every implementation the same way.
pub trait ThrottleStore: Send + Sync + 'static {
    /// Counts one attempt against `key` at `now` with [`Strikes::count`], atomically (two
    /// nodes counting at once count two), and answers its verdict. A record is kept at least
    /// until its [`Strikes::expires_at`].
    fn attempt<'a>(
        &'a self,
        key: &'a str,
        rules: &'a ThrottleRules,
        now: Timestamp,
    ) -> ThrottleFuture<'a, Verdict>;
    /// Takes back one counted attempt of `key` and lifts its block ([`Strikes::refund`]); a
    /// missing record stays missing.
    fn refund<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()>;
    /// Forgets `key`.
    fn clear<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()>;
    /// Drops records that expired before `now` (stores that expire records themselves
    /// answer 0); returns how many went.
    fn forget_expired(&self, now: Timestamp) -> ThrottleFuture<'_, u64>;
}

/// Past this many keys the memory store drops expired records, then the oldest.
const MEMORY_KEYS: usize = 100_000;

/// Failure counts in process memory (tests, `memory://`), bounded to [`MEMORY_KEYS`] keys.
#[derive(Debug, Default)]
pub struct MemoryThrottleStore(Mutex<HashMap<String, (Strikes, Timestamp)>>);

impl MemoryThrottleStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ThrottleStore for MemoryThrottleStore {
    fn attempt<'a>(
        &'a self,
        key: &'a str,
        rules: &'a ThrottleRules,
        now: Timestamp,
    ) -> ThrottleFuture<'a, Verdict> {
        Box::pin(async move {
            let mut map = self.0.lock();
            if map.len() >= MEMORY_KEYS && !map.contains_key(key) {
                map.retain(|_, (_, expires)| *expires > now);
                if map.len() >= MEMORY_KEYS {
                    let oldest = map
                        .iter()
                        .min_by_key(|(_, (s, _))| s.last_failure)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        map.remove(&oldest);
                    }
                }
            }
            let before = map.get(key).map(|(s, _)| *s);
            let (after, verdict) = Strikes::count(before, rules, now);
            map.insert(key.to_owned(), (after, after.expires_at(rules)));
            Ok(verdict)
        })
    }

    fn refund<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(async move {
            if let Some((strikes, _)) = self.0.lock().get_mut(key) {
                *strikes = strikes.refund();
            }
            Ok(())
        })
    }

    fn clear<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(async move {
            self.0.lock().remove(key);
            Ok(())
        })
    }

    fn forget_expired(&self, now: Timestamp) -> ThrottleFuture<'_, u64> {
        Box::pin(async move {
            let mut map = self.0.lock();
            let before = map.len();
            map.retain(|_, (_, expires)| *expires > now);
            Ok((before - map.len()) as u64)
        })
    }
}

/// The longest key a caller passes (stores may size columns by it).
pub const MAX_KEY_LEN: usize = 96;

/// The key of password attempts on an account name as typed: hashed, so what someone typed
/// (perhaps a password in the wrong field) is never stored, and bounded in length.
pub fn account_key(normalized_name: &str) -> String {
    let digest = Sha256::digest(normalized_name.as_bytes());
    format!("acct:{}", hex(&digest[..16]))
}

/// The key of every failure from a client address: IPv4 as it is, IPv6 by its /64 (one
/// subscriber's allocation); text that is not an address is hashed.
pub fn address_key(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => format!("addr:{v4}"),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("addr:{v4}"),
            None => {
                let s = v6.segments();
                format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => format!("addr:{}", hex(&Sha256::digest(address.as_bytes())[..16])),
    }
}

/// The key of second-factor failures of an account (by id).
pub fn second_factor_key(user_id: &str) -> String {
    format!("otp:{user_id}")
}

/// The key of codes tried in one sign-in in progress (by its session's public id).
pub fn pending_key(pending_id: &str) -> String {
    format!("pending:{pending_id}")
}

/// The key of password attempts from a device that signed in before (by its cookie's id).
pub fn device_key(device_id: &str) -> String {
    format!("device:{device_id}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    async fn run(store: &MemoryThrottleStore, key: &str, rules: &ThrottleRules, n: u32) -> Verdict {
        let mut last = None;
        for _ in 0..n {
            last = Some(store.attempt(key, rules, T0).await.unwrap());
        }
        last.unwrap()
    }

    #[tokio::test]
    async fn nist4_attempts_are_counted_before_the_check_and_back_off_exponentially() {
        let store = MemoryThrottleStore::new();
        let rules = ThrottleRules::ACCOUNT;
        assert_eq!(
            run(&store, "k", &rules, 5).await,
            Verdict::Allowed {
                failures: 5,
                then_wait: None
            }
        );
        assert_eq!(
            store.attempt("k", &rules, T0).await.unwrap(),
            Verdict::Allowed {
                failures: 6,
                then_wait: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            store.attempt("k", &rules, T0).await.unwrap(),
            Verdict::Blocked(Duration::from_secs(30)),
            "the sixth attempt blocks the seventh at once"
        );
        let later = T0.plus(Duration::from_secs(30));
        assert_eq!(
            store.attempt("k", &rules, later).await.unwrap(),
            Verdict::Allowed {
                failures: 7,
                then_wait: Some(Duration::from_secs(60))
            },
            "blocked attempts were not counted; the delay doubles"
        );
    }

    #[tokio::test]
    async fn nist5_2_2_a_hundred_failures_lock_the_key_until_they_are_forgotten() {
        let rules = ThrottleRules::SECOND_FACTOR;
        let mut before = None;
        let mut now = T0;
        let mut counted = 0;
        while counted < 200 {
            let (after, verdict) = Strikes::count(before, &rules, now);
            before = Some(after);
            match verdict {
                Verdict::Allowed { failures, .. } => counted = failures,
                Verdict::Blocked(wait) => {
                    if wait >= Duration::from_secs(29 * 24 * 3600) {
                        break;
                    }
                    now = now.plus(wait);
                }
            }
        }
        assert_eq!(counted, 100, "locked at the hundredth consecutive failure");
        let (_, verdict) = Strikes::count(before, &rules, now.plus(Duration::from_secs(86_400)));
        assert!(matches!(verdict, Verdict::Blocked(_)));
    }

    #[tokio::test]
    async fn a_refund_lifts_the_block_and_a_clear_forgets() {
        let store = MemoryThrottleStore::new();
        let rules = ThrottleRules::ACCOUNT;
        run(&store, "k", &rules, 6).await;
        store.refund("k").await.unwrap();
        assert_eq!(
            store.attempt("k", &rules, T0).await.unwrap(),
            Verdict::Allowed {
                failures: 6,
                then_wait: Some(Duration::from_secs(30))
            }
        );
        store.clear("k").await.unwrap();
        assert_eq!(
            store.attempt("k", &rules, T0).await.unwrap(),
            Verdict::Allowed {
                failures: 1,
                then_wait: None
            }
        );
        let forgotten = T0.plus(rules.forget_after);
        assert_eq!(store.forget_expired(forgotten).await.unwrap(), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn ipv6_addresses_share_a_key_per_64_and_typed_names_are_never_kept() {
        assert_eq!(
            address_key("2001:db8:1:2:aaaa::1"),
            address_key("2001:db8:1:2:bbbb::9")
        );
        assert_ne!(
            address_key("2001:db8:1:2::1"),
            address_key("2001:db8:1:3::1")
        );
        assert_eq!(address_key("::ffff:10.0.0.1"), address_key("10.0.0.1"));
        assert_eq!(address_key("10.0.0.1"), "addr:10.0.0.1");
        let key = account_key("hunter2-typed-as-a-name");
        assert!(!key.contains("hunter2"));
        assert!(key.len() <= MAX_KEY_LEN);
    }
}
