//! Authorization codes in Redis: one small hash per code, `<prefix>:oc:<32 raw bytes of the
//! code's hash>`, field `c` the code as issued (its stored form, [`StoredCode`], written once)
//! and field `r` the session its redemption created, set by the first redemption.
//!
//! A redemption is one Lua script on that one key ([`REDEEM`]), so of redemptions racing on any
//! nodes exactly one sets `r`; it goes through the store's confirmation path
//! (`RedisStore::confirmed_script`): with `wait_replicas` above 0 it is answered only once the
//! replicas have it, so a failover cannot make a redeemed code redeemable again. A replay
//! writes `r` again as it is, so that its own wait covers the redemption it found (which may
//! itself have been answered 503 for want of confirmations).
//!
//! Each code expires by itself: its TTL is its lifetime plus [`CODE_REMEMBERED`], counted from
//! its `issued_at` (the caller's clock, not the server's, as the throttle records do), so
//! [`CodeStore::forget_codes`] answers 0.

use std::sync::LazyLock;

use portcullis_core::oidc::{
    AuthorizationCode, CODE_REMEMBERED, CodeStore, ProviderFuture, Redemption,
};
use portcullis_core::{PublicId, SessionId, StoreError, StoredCode, Timestamp, TokenHash};
use redis::Script;

use crate::{RedisStore, corrupt};

/// Writes a code. KEYS: the code. ARGV: the code as issued, the session it was redeemed for
/// ("" when it was not), its TTL (ms).
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'c', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'r', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Redeems a code. KEYS: the code. ARGV: the session the redemption creates. Answers
/// `{0}` for no such code, `{1, code}` for the first redemption, `{2, code, session}` for a
/// replay (`session`: what the first redemption named).
static REDEEM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local code = redis.call('HGET', KEYS[1], 'c')
if not code then return {0, false, false} end
local first = redis.call('HGET', KEYS[1], 'r')
if first then
  redis.call('HSET', KEYS[1], 'r', first)
  return {2, code, first}
end
redis.call('HSET', KEYS[1], 'r', ARGV[1])
return {1, code, false}
",
    )
});

/// The authorization codes of a [`RedisStore`] (see [`RedisStore::codes`]).
#[derive(Debug, Clone)]
pub struct RedisCodeStore {
    store: RedisStore,
}

impl RedisCodeStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn code_key(&self, hash: &TokenHash) -> Vec<u8> {
        let mut key = format!("{}:oc:", self.store.prefix).into_bytes();
        key.extend_from_slice(&hash.0);
        key
    }
}

/// Milliseconds from `from` to `to` plus `extra`, at least 1 (`PEXPIRE` of 0 or less deletes
/// the key at once, which is right only for what expired long ago; 1 ms does the same).
pub(crate) fn ttl_millis(from: Timestamp, to: Timestamp, extra: std::time::Duration) -> i64 {
    let extra = i64::try_from(extra.as_millis()).unwrap_or(i64::MAX);
    to.as_millis()
        .saturating_sub(from.as_millis())
        .saturating_add(extra)
        .max(1)
}

/// The code as a redemption found it: as issued, redeemed for `session`.
fn redeemed(body: Option<String>, session: SessionId) -> Result<AuthorizationCode, StoreError> {
    let body = body.ok_or_else(|| corrupt("authorization code: the script answered no code"))?;
    let mut code = StoredCode::decode(&body)?;
    code.redeemed_for = Some(session);
    Ok(code)
}

impl CodeStore for RedisCodeStore {
    fn add_code(&self, code: AuthorizationCode) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            let redeemed_for = code
                .redeemed_for
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            // The body stays as issued; whether and for what it was redeemed is field `r` alone.
            let body = StoredCode::encode(&AuthorizationCode {
                redeemed_for: None,
                ..code.clone()
            })?;
            let ttl = ttl_millis(code.issued_at, code.expires_at, CODE_REMEMBERED);
            let args = [
                body.into_bytes(),
                redeemed_for.into_bytes(),
                ttl.to_string().into_bytes(),
            ];
            let _: i64 = self
                .store
                .script(&ADD, &[self.code_key(&code.hash)], &args)
                .await?;
            Ok(())
        })
    }

    fn redeem_code<'a>(
        &'a self,
        hash: &'a TokenHash,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Redemption> {
        Box::pin(async move {
            let keys = [self.code_key(hash)];
            let args = [session.as_str().as_bytes().to_vec()];
            let (answer, body, first): (i64, Option<String>, Option<String>) =
                self.store.confirmed_script(&REDEEM, &keys, &args).await?;
            match answer {
                0 => Ok(Redemption::Unknown),
                1 => Ok(Redemption::First(redeemed(body, session.clone())?)),
                2 => {
                    let first = first.ok_or_else(|| corrupt("authorization code: no session"))?;
                    Ok(Redemption::Replayed(redeemed(
                        body,
                        PublicId::from_string(first),
                    )?))
                }
                other => Err(corrupt(format!(
                    "authorization code: the script answered {other}"
                ))),
            }
        })
    }

    fn find_code<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<AuthorizationCode>> {
        Box::pin(async move {
            let (body, first): (Option<String>, Option<String>) = self
                .store
                .query(
                    redis::cmd("HMGET")
                        .arg(self.code_key(hash))
                        .arg("c")
                        .arg("r"),
                )
                .await?;
            let Some(body) = body else { return Ok(None) };
            let mut code = StoredCode::decode(&body)?;
            code.redeemed_for = first.map(PublicId::from_string);
            Ok(Some(code))
        })
    }

    /// Redis drops each code by itself ([`CODE_REMEMBERED`] after its expiry): nothing is left
    /// to sweep.
    fn forget_codes(&self, _before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_ttl_counts_from_the_issue_and_is_never_below_one_millisecond() {
        let at = Timestamp::from_millis(1_000_000);
        assert_eq!(
            ttl_millis(at, at.plus(Duration::from_secs(60)), CODE_REMEMBERED),
            660_000
        );
        assert_eq!(
            ttl_millis(at.plus(Duration::from_secs(5)), at, Duration::ZERO),
            1
        );
    }
}
