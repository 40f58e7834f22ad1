//! Refresh tokens in Redis, kept by family (the application session they belong to), so that a
//! rotation and a family's end are each one Lua script on one slot of a Cluster although tokens
//! are looked up by their hash alone.
//!
//! Keys:
//! - `<prefix>:{<family>}:rf`, the family: a hash of token hash (32 raw bytes) → the token in
//!   its stored form ([`Stored`], JSON), followed once it is rotated by a newline and the
//!   rotation ([`StoredRotation`], JSON), so marking a token rotated appends and never parses.
//! - `<prefix>:rt:<32 raw bytes of the token hash>`, the token's index: its family's id.
//!
//! A lookup reads the index, then the token's field in its family; a rotation goes straight to
//! the family its caller names. Every index is written
//! before its token (a successor's before the rotation that stores it), so a token never exists
//! without its index; an index whose token is not there (a refused successor, a family ended)
//! reads as no token at all.
//!
//! **Rotation** ([`ROTATE`]): the script finds the old token in the family and, only if it is
//! not rotated yet, appends the rotation and stores the successor; of rotations racing on any
//! nodes exactly one does, and the others get the old token with the winner's rotation.
//! **Ending a family** ([`END`]) deletes the family's hash in one step, then the indexes of the
//! tokens it held (best effort: a left index reads as no token, and expires with its token).
//! Both go through the store's confirmation path (`RedisStore::confirmed_script`): with
//! `wait_replicas` above 0 they are answered only once the replicas have them, so a failover
//! cannot bring back a rotated token's currency or an ended family. A rotation that finds the
//! token rotated writes it again as it is, and an ending that finds nothing writes (and
//! deletes) a key of the family's slot, so that their waits also cover the change they found
//! made (which may itself have been answered 503 for want of confirmations).
//!
//! **Expiry**: each index expires with its token, and a family when its latest token does (its
//! TTL only ever grows), so [`RefreshTokenStore::forget_refresh_tokens`] answers 0. TTLs count
//! from the tokens' `issued_at` (the caller's clock, as the throttle records do).

use std::sync::LazyLock;

use portcullis_core::oidc::{ProviderFuture, RefreshToken, RefreshTokenStore, Rotated, Rotation};
use portcullis_core::{PublicId, SessionId, StoreError, Timestamp, TokenHash};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::codes::ttl_millis;
use crate::{RedisStore, corrupt};

/// Adds a token to its family. KEYS: the family. ARGV: the token hash, the token, its TTL (ms).
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    )
});

/// Rotates a token. KEYS: the family. ARGV: the old token's hash, the successor's hash, the
/// successor, the rotation, the successor's TTL (ms). Answers `{0}` when the old token is not
/// in the family, `{1, old}` when it is now rotated (as it was before), `{2, old}` when it was
/// rotated already.
static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return {0, false} end
if string.find(old, '\n', 1, true) then
  redis.call('HSET', KEYS[1], ARGV[1], old)
  return {2, old}
end
redis.call('HSET', KEYS[1], ARGV[1], old .. '\n' .. ARGV[4], ARGV[2], ARGV[3])
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, old}
",
    )
});

/// Ends a family. KEYS: the family, a key of the family's slot that is never kept. Answers the
/// hashes of the tokens it held.
static END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local tokens = redis.call('HKEYS', KEYS[1])
if #tokens == 0 then
  redis.call('SET', KEYS[2], '1')
  redis.call('DEL', KEYS[2])
else
  redis.call('DEL', KEYS[1])
end
return tokens
",
    )
});

/// A refresh token as its family keeps it (its hash is the field, its family the key);
/// times in milliseconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    client: String,
    subject: String,
    scopes: Vec<String>,
    issued_at: i64,
    expires_at: i64,
}

/// What replaced a token, appended to it after a newline.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRotation {
    at: i64,
    /// The successor's hash, hex.
    successor: String,
    sealed_successor: String,
}

fn encode(token: &RefreshToken) -> Result<String, StoreError> {
    serde_json::to_string(&Stored {
        client: token.client.as_str().to_owned(),
        subject: token.subject.clone(),
        scopes: token.scopes.clone(),
        issued_at: token.issued_at.as_millis(),
        expires_at: token.expires_at.as_millis(),
    })
    .map_err(corrupt)
}

fn encode_rotation(rotated: &Rotated) -> Result<String, StoreError> {
    serde_json::to_string(&StoredRotation {
        at: rotated.at.as_millis(),
        successor: rotated.successor.to_hex(),
        sealed_successor: rotated.sealed_successor.clone(),
    })
    .map_err(corrupt)
}

/// The token with hash `hash` of `family` from its field's value.
fn decode(hash: TokenHash, family: &SessionId, value: &str) -> Result<RefreshToken, StoreError> {
    let (token, rotation) = match value.split_once('\n') {
        Some((token, rotation)) => (token, Some(rotation)),
        None => (value, None),
    };
    let stored: Stored = serde_json::from_str(token).map_err(corrupt)?;
    let rotated = rotation
        .map(|json| -> Result<Rotated, StoreError> {
            let rotation: StoredRotation = serde_json::from_str(json).map_err(corrupt)?;
            Ok(Rotated {
                at: Timestamp::from_millis(rotation.at),
                successor: TokenHash::from_hex(&rotation.successor)
                    .ok_or_else(|| corrupt("refresh token: bad successor hash"))?,
                sealed_successor: rotation.sealed_successor,
            })
        })
        .transpose()?;
    Ok(RefreshToken {
        hash,
        family: family.clone(),
        client: PublicId::from_string(stored.client),
        subject: stored.subject,
        scopes: stored.scopes,
        issued_at: Timestamp::from_millis(stored.issued_at),
        expires_at: Timestamp::from_millis(stored.expires_at),
        rotated,
    })
}

/// How long a token is kept: until its expiry.
fn ttl(token: &RefreshToken) -> String {
    ttl_millis(token.issued_at, token.expires_at, std::time::Duration::ZERO).to_string()
}

/// The refresh tokens of a [`RedisStore`] (see [`RedisStore::refresh_tokens`]).
#[derive(Debug, Clone)]
pub struct RedisRefreshTokenStore {
    store: RedisStore,
}

impl RedisRefreshTokenStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn family_key(&self, family: &SessionId) -> Vec<u8> {
        self.store.tag_key(family.as_str(), "rf").into_bytes()
    }

    /// A key of the family's slot that is written and deleted in one script, never kept.
    fn family_scratch_key(&self, family: &SessionId) -> Vec<u8> {
        self.store.tag_key(family.as_str(), "rw").into_bytes()
    }

    fn index_key(&self, hash: &TokenHash) -> Vec<u8> {
        let mut key = format!("{}:rt:", self.store.prefix).into_bytes();
        key.extend_from_slice(&hash.0);
        key
    }

    /// The family the index of `hash` names.
    async fn family_of(&self, hash: &TokenHash) -> Result<Option<SessionId>, StoreError> {
        let family: Option<String> = self
            .store
            .query(redis::cmd("GET").arg(self.index_key(hash)))
            .await?;
        Ok(family.map(PublicId::from_string))
    }

    /// Writes the index of `token` (before the token itself, always).
    async fn index(&self, token: &RefreshToken) -> Result<(), StoreError> {
        let _: () = self
            .store
            .query(
                redis::cmd("SET")
                    .arg(self.index_key(&token.hash))
                    .arg(token.family.as_str())
                    .arg("PX")
                    .arg(ttl(token)),
            )
            .await?;
        Ok(())
    }

    /// Deletes indexes whose tokens are not (or no longer) stored. Best effort: an index left
    /// reads as no token, and expires with the token it named.
    async fn drop_indexes(&self, hashes: &[TokenHash]) {
        for hash in hashes {
            let _: Result<i64, _> = self
                .store
                .query(redis::cmd("DEL").arg(self.index_key(hash)))
                .await;
        }
    }
}

impl RefreshTokenStore for RedisRefreshTokenStore {
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            self.index(&token).await?;
            let args = [
                token.hash.0.to_vec(),
                encode(&token)?.into_bytes(),
                ttl(&token).into_bytes(),
            ];
            let _: i64 = self
                .store
                .script(&ADD, &[self.family_key(&token.family)], &args)
                .await?;
            Ok(())
        })
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
        successor: RefreshToken,
        sealed_successor: String,
    ) -> ProviderFuture<'a, Rotation> {
        Box::pin(async move {
            // The caller names the family (the successor is made from the old token), so the
            // old token's index is not read again: the script finds the token in that family
            // or answers that it is not there.
            let family = successor.family.clone();
            let rotation = encode_rotation(&Rotated {
                at: successor.issued_at,
                successor: successor.hash,
                sealed_successor,
            })?;
            self.index(&successor).await?;
            let args = [
                hash.0.to_vec(),
                successor.hash.0.to_vec(),
                encode(&successor)?.into_bytes(),
                rotation.into_bytes(),
                ttl(&successor).into_bytes(),
            ];
            let (answer, was): (i64, Option<String>) = self
                .store
                .confirmed_script(&ROTATE, &[self.family_key(&family)], &args)
                .await?;
            let old = || -> Result<RefreshToken, StoreError> {
                let was = was
                    .as_deref()
                    .ok_or_else(|| corrupt("refresh token: the script answered none"))?;
                decode(*hash, &family, was)
            };
            match answer {
                1 => Ok(Rotation::Rotated(old()?)),
                0 => {
                    self.drop_indexes(&[successor.hash]).await;
                    Ok(Rotation::Unknown)
                }
                2 => {
                    self.drop_indexes(&[successor.hash]).await;
                    Ok(Rotation::AlreadyRotated(old()?))
                }
                other => Err(corrupt(format!(
                    "refresh token: the script answered {other}"
                ))),
            }
        })
    }

    fn refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<RefreshToken>> {
        Box::pin(async move {
            let Some(family) = self.family_of(hash).await? else {
                return Ok(None);
            };
            let value: Option<String> = self
                .store
                .query(
                    redis::cmd("HGET")
                        .arg(self.family_key(&family))
                        .arg(&hash.0[..]),
                )
                .await?;
            value
                .map(|value| decode(*hash, &family, &value))
                .transpose()
        })
    }

    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64> {
        Box::pin(async move {
            let keys = [self.family_key(family), self.family_scratch_key(family)];
            let tokens: Vec<Vec<u8>> = self
                .store
                .confirmed_script(&END, &keys, &[] as &[Vec<u8>])
                .await?;
            let hashes: Vec<TokenHash> = tokens
                .iter()
                .filter_map(|t| <[u8; 32]>::try_from(t.as_slice()).ok().map(TokenHash))
                .collect();
            self.drop_indexes(&hashes).await;
            Ok(tokens.len() as u64)
        })
    }

    /// Redis drops each token with its index and family at its expiry: nothing is left to
    /// sweep.
    fn forget_refresh_tokens(&self, _before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async { Ok(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a family keeps for a token, rotated and not: the storage contract of this
    /// store (there is no shared stored form of refresh tokens; the SQL stores keep columns).
    #[test]
    fn a_token_is_stored_as_these_bytes_and_reads_back_whole() {
        let family = PublicId::from_string("ses_a3fam".into());
        let mut token = RefreshToken {
            hash: TokenHash([0x11; 32]),
            family: family.clone(),
            client: PublicId::from_string("app_rp".into()),
            subject: "usr_1".into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            issued_at: Timestamp::from_millis(1_796_197_682_469),
            expires_at: Timestamp::from_millis(1_796_284_082_469),
            rotated: None,
        };
        let body = encode(&token).unwrap();
        assert_eq!(
            body,
            r#"{"client":"app_rp","subject":"usr_1","scopes":["openid","offline_access"],"issued_at":1796197682469,"expires_at":1796284082469}"#
        );
        assert_eq!(decode(token.hash, &family, &body).unwrap(), token);

        token.rotated = Some(Rotated {
            at: Timestamp::from_millis(1_796_197_712_469),
            successor: TokenHash([0x22; 32]),
            sealed_successor: "v1.k1.sealed\nwith a newline".into(),
        });
        let rotation = encode_rotation(token.rotated.as_ref().unwrap()).unwrap();
        assert_eq!(
            rotation,
            r#"{"at":1796197712469,"successor":"2222222222222222222222222222222222222222222222222222222222222222","sealed_successor":"v1.k1.sealed\nwith a newline"}"#,
            "JSON escapes newlines, so the first raw newline is the separator"
        );
        let value = format!("{body}\n{rotation}");
        assert_eq!(decode(token.hash, &family, &value).unwrap(), token);
        assert!(decode(token.hash, &family, &format!("{body}\n{{}}")).is_err());
        assert!(decode(token.hash, &family, "").is_err());
    }
}
