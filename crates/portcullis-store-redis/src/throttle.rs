//! Failure counts of sign-in in Redis, under the store's prefix: one hash per throttle key,
//! `<prefix>:th:<key>`, holding the fields of [`Strikes`] (`f` failures, `l` last failure,
//! `b` blocked until; milliseconds since the epoch). Every command touches that one key, so a
//! Cluster has nothing cross-slot to refuse.
//!
//! Counting is one Lua script ([`ATTEMPT`]), atomic on the server: attempts from any number of
//! nodes count one after another. The script mirrors [`Strikes::count`] line for line, as Redis
//! cannot run the Rust; the answer it gives back is turned into the [`Verdict`] by
//! [`Strikes::count`] itself, and the conformance suite compares the script with the Rust rule
//! over random operation sequences. Each count sets the key's TTL to what is left until
//! [`Strikes::expires_at`], so Redis drops records by itself and
//! [`ThrottleStore::forget_expired`] answers 0. The TTL is relative to the caller's `now`, not
//! an absolute `PEXPIREAT`: a node's clock skewed from the server's then neither drops a
//! record early nor keeps it late, and records counted at fixed test times are kept.

use std::sync::LazyLock;

use portcullis_core::{
    BackendError, StoreError, Strikes, ThrottleFuture, ThrottleRules, ThrottleStore, Timestamp,
    UserStoreError, Verdict,
};
use redis::Script;

use crate::RedisStore;

/// One attempt: [`Strikes::count`] (with [`Strikes::expires_at`] and
/// `ThrottleRules::delay_after` inlined). KEYS: the record. ARGV: now, free failures, first
/// delay, longest delay, forget after (milliseconds), lock after ("" for none). Answers
/// `{0, blocked_until}` when blocked (nothing counted) or `{1, failures}`.
static ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now, free, first, longest, forget =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local lock = tonumber(ARGV[6])
local r = redis.call('HMGET', KEYS[1], 'f', 'l', 'b')
local failures = 0
if r[1] then
  local l, b = tonumber(r[2]), tonumber(r[3])
  -- Strikes::expires_at: a record is current until then.
  if math.max(l + forget, b) > now then
    -- Strikes::count: an earlier stamp counts as at the last attempt.
    now = math.max(now, l)
    if b > now then return {0, b} end
    failures = tonumber(r[1])
  end
end
failures = failures + 1
-- ThrottleRules::delay_after
local blocked = now
if lock and failures >= lock then
  blocked = now + forget
elseif failures > free then
  blocked = now + math.min(first * 2 ^ math.min(failures - free - 1, 20), longest)
end
redis.call('HSET', KEYS[1], 'f', failures, 'l', now, 'b', blocked)
redis.call('PEXPIRE', KEYS[1], math.max(now + forget, blocked) - now)
return {1, failures}
",
    )
});

/// [`Strikes::refund`]: one attempt fewer (not below 0), blocked until the last failure (no
/// longer blocked); a missing record stays missing, and the TTL stays (the refunded record
/// expires no later). KEYS: the record.
static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('HMGET', KEYS[1], 'f', 'l')
if not r[1] then return 0 end
redis.call('HSET', KEYS[1], 'f', math.max(tonumber(r[1]) - 1, 0), 'b', r[2])
return 1
",
    )
});

/// The failure counts of a [`RedisStore`] (see [`RedisStore::throttle`]).
#[derive(Debug, Clone)]
pub struct RedisThrottleStore {
    store: RedisStore,
}

impl RedisThrottleStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn record_key(&self, key: &str) -> String {
        format!("{}:th:{key}", self.store.prefix)
    }
}

fn from_store(err: StoreError) -> UserStoreError {
    match err {
        StoreError::Corrupt(text) => UserStoreError::Corrupt(text),
        other => UserStoreError::Unavailable(BackendError::new(other)),
    }
}

fn corrupt(what: impl std::fmt::Display) -> UserStoreError {
    UserStoreError::Corrupt(format!("throttle record: {what}"))
}

/// Milliseconds as the script reads them.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The verdict of an attempt the script counted as the `failures`th: that of [`Strikes::count`]
/// on a record of one failure fewer, so the wait it announces comes from the Rust rule.
fn allowed(failures: u32, rules: &ThrottleRules, now: Timestamp) -> Verdict {
    let before = failures.checked_sub(1).map(|failures| Strikes {
        failures,
        last_failure: now,
        blocked_until: now,
    });
    Strikes::count(before, rules, now).1
}

impl ThrottleStore for RedisThrottleStore {
    fn attempt<'a>(
        &'a self,
        key: &'a str,
        rules: &'a ThrottleRules,
        now: Timestamp,
    ) -> ThrottleFuture<'a, Verdict> {
        Box::pin(async move {
            let args = [
                now.as_millis().to_string(),
                rules.free_failures.to_string(),
                millis(rules.first_delay).to_string(),
                millis(rules.max_delay).to_string(),
                millis(rules.forget_after).to_string(),
                rules.lock_after.map(|n| n.to_string()).unwrap_or_default(),
            ];
            let answer: Vec<i64> = self
                .store
                .script(&ATTEMPT, &[self.record_key(key)], &args)
                .await
                .map_err(from_store)?;
            match answer[..] {
                [0, blocked_until] => Ok(Verdict::Blocked(
                    now.until(Timestamp::from_millis(blocked_until)),
                )),
                [1, failures] => Ok(allowed(
                    u32::try_from(failures).map_err(corrupt)?,
                    rules,
                    now,
                )),
                _ => Err(corrupt(format!("the script answered {answer:?}"))),
            }
        })
    }

    fn refund<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .store
                .script(&REFUND, &[self.record_key(key)], &[] as &[String])
                .await
                .map_err(from_store)?;
            Ok(())
        })
    }

    fn clear<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .store
                .query(redis::cmd("DEL").arg(self.record_key(key)))
                .await
                .map_err(from_store)?;
            Ok(())
        })
    }

    /// Redis drops each record at its expiry (its TTL): nothing is left to sweep.
    fn forget_expired(&self, _now: Timestamp) -> ThrottleFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}
