//! The provider's signing keys in Redis: all of them in one hash, `<prefix>:{sk}:h`, so that a
//! rotation, which reads the algorithm's current key, retires it and adds the next, is one Lua
//! script on one key ([`ADD`]): of rotations racing on any nodes, one finds the key it
//! replaces still current and the others find it gone.
//!
//! Fields: `k:<kid>` the key as added (its stored form, [`StoredSigningKey`], written once);
//! `r:<kid>` when it was retired (ms), which wins over the body's copy, so retiring rewrites
//! no JSON; `o:<kid>` the order it was added in (keys made in the same millisecond are listed
//! in that order); `s:<alg>` the kid of the algorithm's signing key; `n` the last order given.
//! Keys are few (one or two per algorithm and rotation period), so every listing reads them all.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use portcullis_core::oidc::{ProviderFuture, SigningKey, SigningKeyStore};
use portcullis_core::{StoreError, StoredSigningKey, Timestamp};
use redis::Script;

use crate::{RedisStore, corrupt};

/// The hash tag of the signing keys.
const TAG: &str = "sk";

/// Adds a key as its algorithm's signing key if the current one is still as expected. KEYS: the
/// keys. ARGV: the algorithm, the kid it replaces ("" for none), the new kid, the new key, when
/// the replaced key retires (ms). Answers 1 when added, 0 when the current key is another.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], 's:' .. ARGV[1]) or ''
if current ~= ARGV[2] then return 0 end
if current ~= '' then redis.call('HSET', KEYS[1], 'r:' .. current, ARGV[5]) end
local order = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HDEL', KEYS[1], 'r:' .. ARGV[3])
redis.call('HSET', KEYS[1], 'k:' .. ARGV[3], ARGV[4], 'o:' .. ARGV[3], order, 's:' .. ARGV[1], ARGV[3])
return 1
",
    )
});

/// Removes a retired key. KEYS: the keys. ARGV: the kid. Answers 1 when removed, 0 when there
/// was no such retired key (a retired key never signs again, so being retired is enough).
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], 'r:' .. ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'k:' .. ARGV[1], 'o:' .. ARGV[1], 'r:' .. ARGV[1])
return 1
",
    )
});

/// The signing keys of a [`RedisStore`] (see [`RedisStore::signing_keys`]).
#[derive(Debug, Clone)]
pub struct RedisSigningKeyStore {
    store: RedisStore,
}

impl RedisSigningKeyStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn keys_key(&self) -> String {
        self.store.tag_key(TAG, "h")
    }
}

/// What the hash's fields say of one key.
#[derive(Default)]
struct Fields {
    body: Option<String>,
    retired_at: Option<i64>,
    order: i64,
}

/// Every key in the hash `fields` (field, value), oldest first.
fn keys_of(fields: Vec<(String, String)>) -> Result<Vec<SigningKey>, StoreError> {
    let number = |value: &str| -> Result<i64, StoreError> {
        value
            .parse()
            .map_err(|_| corrupt(format!("signing keys: {value:?} is not a number")))
    };
    let mut by_kid: BTreeMap<String, Fields> = BTreeMap::new();
    for (field, value) in fields {
        let Some((kind, kid)) = field.split_once(':') else {
            continue;
        };
        match kind {
            "k" => by_kid.entry(kid.to_owned()).or_default().body = Some(value),
            "r" => by_kid.entry(kid.to_owned()).or_default().retired_at = Some(number(&value)?),
            "o" => by_kid.entry(kid.to_owned()).or_default().order = number(&value)?,
            _ => {}
        }
    }
    let mut keys = Vec::with_capacity(by_kid.len());
    for (kid, fields) in by_kid {
        let body = fields
            .body
            .ok_or_else(|| corrupt(format!("signing key {kid:?}: fields without the key")))?;
        let mut key = StoredSigningKey::decode(&body)?;
        if let Some(at) = fields.retired_at {
            key.retired_at = Some(Timestamp::from_millis(at));
        }
        keys.push((fields.order, key));
    }
    keys.sort_by(|(a_order, a), (b_order, b)| {
        (a.created_at, a_order).cmp(&(b.created_at, b_order))
    });
    Ok(keys.into_iter().map(|(_, key)| key).collect())
}

impl SigningKeyStore for RedisSigningKeyStore {
    fn add_signing_key<'a>(
        &'a self,
        key: SigningKey,
        replacing: Option<&'a str>,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let args = [
                key.alg.as_str().to_owned(),
                replacing.unwrap_or_default().to_owned(),
                key.kid.clone(),
                StoredSigningKey::encode(&key)?,
                key.created_at.as_millis().to_string(),
            ];
            let added: i64 = self.store.script(&ADD, &[self.keys_key()], &args).await?;
            Ok(added == 1)
        })
    }

    fn signing_keys(&self) -> ProviderFuture<'_, Vec<SigningKey>> {
        Box::pin(async move {
            let fields: Vec<(String, String)> = self
                .store
                .query(redis::cmd("HGETALL").arg(self.keys_key()))
                .await?;
            keys_of(fields)
        })
    }

    fn remove_signing_key<'a>(&'a self, kid: &'a str) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let removed: i64 = self
                .store
                .script(&REMOVE, &[self.keys_key()], &[kid])
                .await?;
            Ok(removed == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::oidc::SigningAlg;

    use super::*;

    fn key(kid: &str, created_at: i64) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: SigningAlg::Es256,
            sealed_private: format!("v1.k1.{kid}"),
            public_jwk: r#"{"kty":"EC"}"#.into(),
            created_at: Timestamp::from_millis(created_at),
            retired_at: None,
        }
    }

    fn field(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn keys_are_listed_oldest_first_then_in_the_order_added_with_their_retirement() {
        let (a, b, c) = (key("a", 5), key("b", 5), key("c", 1));
        let body = |k: &SigningKey| StoredSigningKey::encode(k).unwrap();
        let fields = vec![
            field("n", "3"),
            field("s:ES256", "a"),
            field("k:a", &body(&a)),
            field("o:a", "3"),
            field("k:b", &body(&b)),
            field("o:b", "2"),
            field("r:b", "9"),
            field("k:c", &body(&c)),
            field("o:c", "1"),
            field("r:c", "5"),
        ];
        let mut retired_b = b.clone();
        retired_b.retired_at = Some(Timestamp::from_millis(9));
        let mut retired_c = c.clone();
        retired_c.retired_at = Some(Timestamp::from_millis(5));
        assert_eq!(keys_of(fields).unwrap(), vec![retired_c, retired_b, a]);
        assert!(keys_of(vec![field("o:x", "1")]).is_err(), "an order alone");
        assert!(keys_of(vec![field("o:x", "one")]).is_err());
    }
}
