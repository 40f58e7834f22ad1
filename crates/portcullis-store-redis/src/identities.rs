//! Federated identities in Redis, in the accounts' hash tag (`{users}`, see `users.rs`).
//!
//! Keys:
//! - `<prefix>:{users}:fi`, the index of upstream people: a hash whose field names the person
//!   (`<byte length of the issuer>:<issuer><subject>`: the length keeps issuer and subject apart
//!   whatever they contain) and whose value is the identity in its stored form ([`Stored`],
//!   JSON).
//! - `<prefix>:{users}:fl:<user id>`, the account's links: a hash of the same fields and values,
//!   only those of the account's links.
//!
//! **Why one tag.** A link must claim the upstream person (unique across accounts) and add to
//! the account's links as one step, and an unlink must check the account's count and remove
//! from both as one step. With the index and the account's links in different slots of a
//! Cluster, no order of two separate writes is safe: a link that claimed the index and then
//! failed (or a node that died) before writing the account's links would leave a claim that
//! blocks the person for good, and a repair that frees such a claim cannot tell it from a link
//! still in flight, so two accounts could get the same person. In one slot each step is one Lua
//! script ([`LINK`], [`UNLINK`]) and the two keys never disagree. The slot is the accounts':
//! a link is a way into an account and lives with it; accounts are few and each has a handful
//! of links, so the one slot holds little more than it did.
//!
//! **Replicas.** Every change in the accounts' tag waits for the replicas when the store does
//! (`RedisStore::takes_access_away`): an acknowledged unlink survives a failover, so a person
//! cut off from an account stays cut off. An unlink that changes nothing writes (and deletes) a
//! key of the slot, so that its wait also covers an unlink it found made (which may itself have
//! been answered 503 for want of confirmations).
//!
//! Links carry no TTL: they go only by an unlink.
//!
//! Upstream sessions are keys of their own, `<prefix>:us:<the session's field>` (spread over
//! the slots: nothing else is written with them), holding `<until>:<subject>` with a TTL to
//! `until` counted from the caller's clock, as the codes' are. [`REMEMBER`] keeps the later
//! `until` for the same person in one step.

use std::sync::LazyLock;

use portcullis_core::oidc::{
    FederatedIdentity, IdentityStore, ProviderFuture, Unlinked, UpstreamSession,
};
use portcullis_core::{StoreError, Timestamp};
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::{RedisStore, corrupt};

/// The accounts' hash tag (`users.rs`), which the identities share.
const TAG: &str = "users";

/// Links an upstream person to an account unless someone has them. KEYS: the index, the
/// account's links. ARGV: the person's field, the identity. Answers 1 when linked, 0 when the
/// person was linked already.
static LINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
",
    )
});

/// Unlinks an upstream person from an account. KEYS: the account's links, the index, a key of
/// the slot that is never kept. ARGV: the person's field, `1` to keep the account's last link.
/// Answers 1 when unlinked, 0 when the account has no such link, 2 when it is the last one and
/// was kept.
static UNLINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local answer
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  answer = 0
elseif ARGV[2] == '1' and redis.call('HLEN', KEYS[1]) <= 1 then
  answer = 2
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
redis.call('SET', KEYS[3], '1')
redis.call('DEL', KEYS[3])
return answer
",
    )
});

/// Keeps an upstream session. KEYS: its key. ARGV: the subject, `until` and now (milliseconds).
/// The same person's later `until` wins; the TTL runs to the `until` kept.
static REMEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local untl = tonumber(ARGV[2])
local kept = redis.call('GET', KEYS[1])
if kept then
  local at = string.find(kept, ':', 1, true)
  local kept_until = tonumber(string.sub(kept, 1, at - 1))
  if string.sub(kept, at + 1) == ARGV[1] and kept_until > untl then untl = kept_until end
end
local ttl = untl - tonumber(ARGV[3])
if ttl < 1 then ttl = 1 end
redis.call('SET', KEYS[1], string.format('%d', untl) .. ':' .. ARGV[1], 'PX', string.format('%d', ttl))
return 1
",
    )
});

/// A federated identity as Redis keeps it; `linked_at` in milliseconds since the Unix epoch.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    user_id: String,
    provider: String,
    issuer: String,
    subject: String,
    linked_at: i64,
}

fn encode(identity: &FederatedIdentity) -> Result<String, StoreError> {
    serde_json::to_string(&Stored {
        user_id: identity.user_id.clone(),
        provider: identity.provider.clone(),
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        linked_at: identity.linked_at.as_millis(),
    })
    .map_err(corrupt)
}

fn decode(value: &str) -> Result<FederatedIdentity, StoreError> {
    let stored: Stored = serde_json::from_str(value).map_err(corrupt)?;
    Ok(FederatedIdentity {
        user_id: stored.user_id,
        provider: stored.provider,
        issuer: stored.issuer,
        subject: stored.subject,
        linked_at: Timestamp::from_millis(stored.linked_at),
    })
}

/// The field that names the person `subject` at `issuer`.
fn person_field(issuer: &str, subject: &str) -> String {
    format!("{}:{issuer}{subject}", issuer.len())
}

/// The federated identities of a [`RedisStore`] (see [`RedisStore::identities`]).
#[derive(Debug, Clone)]
pub struct RedisIdentityStore {
    store: RedisStore,
}

impl RedisIdentityStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn index_key(&self) -> String {
        self.store.tag_key(TAG, "fi")
    }

    fn links_key(&self, user_id: &str) -> String {
        self.store.key(TAG, "fl", user_id)
    }

    /// A key of the slot that is written and deleted in one script, never kept.
    fn scratch_key(&self) -> String {
        self.store.tag_key(TAG, "fw")
    }

    /// The key of the upstream session `sid` at `issuer`.
    fn session_key(&self, issuer: &str, sid: &str) -> String {
        format!("{}:us:{}", self.store.prefix, person_field(issuer, sid))
    }
}

impl IdentityStore for RedisIdentityStore {
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let linked: i64 = self
                .store
                .script(
                    &LINK,
                    &[self.index_key(), self.links_key(&identity.user_id)],
                    &[
                        person_field(&identity.issuer, &identity.subject),
                        encode(identity)?,
                    ],
                )
                .await?;
            Ok(linked == 1)
        })
    }

    fn identity<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
    ) -> ProviderFuture<'a, Option<FederatedIdentity>> {
        Box::pin(async move {
            let value: Option<String> = self
                .store
                .query(
                    redis::cmd("HGET")
                        .arg(self.index_key())
                        .arg(person_field(issuer, subject)),
                )
                .await?;
            let Some(identity) = value.as_deref().map(decode).transpose()? else {
                return Ok(None);
            };
            if identity.issuer != issuer || identity.subject != subject {
                return Err(corrupt(format!(
                    "federated identity: the field of {issuer:?} {subject:?} holds another's"
                )));
            }
            Ok(Some(identity))
        })
    }

    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>> {
        Box::pin(async move {
            let values: Vec<String> = self
                .store
                .query(redis::cmd("HVALS").arg(self.links_key(user_id)))
                .await?;
            let mut identities = values
                .iter()
                .map(|value| decode(value))
                .collect::<Result<Vec<_>, _>>()?;
            identities.sort_by(|a, b| {
                (a.linked_at, &a.issuer, &a.subject).cmp(&(b.linked_at, &b.issuer, &b.subject))
            });
            Ok(identities)
        })
    }

    fn unlink<'a>(
        &'a self,
        user_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
        keep_one: bool,
    ) -> ProviderFuture<'a, Unlinked> {
        Box::pin(async move {
            let answer: i64 = self
                .store
                .script(
                    &UNLINK,
                    &[
                        self.links_key(user_id),
                        self.index_key(),
                        self.scratch_key(),
                    ],
                    &[
                        person_field(issuer, subject),
                        if keep_one { "1" } else { "0" }.to_owned(),
                    ],
                )
                .await?;
            match answer {
                1 => Ok(Unlinked::Done),
                0 => Ok(Unlinked::NotLinked),
                2 => Ok(Unlinked::LastOne),
                other => Err(corrupt(format!(
                    "federated identity: unlink answered {other}"
                ))),
            }
        })
    }

    fn remember_session<'a>(
        &'a self,
        session: &'a UpstreamSession,
        now: Timestamp,
    ) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            let _: i64 = self
                .store
                .script(
                    &REMEMBER,
                    &[self.session_key(&session.issuer, &session.sid)],
                    &[
                        session.subject.clone(),
                        session.until.as_millis().to_string(),
                        now.as_millis().to_string(),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn session_subject<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<String>> {
        Box::pin(async move {
            let value: Option<String> = self
                .store
                .query(redis::cmd("GET").arg(self.session_key(issuer, sid)))
                .await?;
            let Some(value) = value else {
                return Ok(None);
            };
            let (until, subject) = value
                .split_once(':')
                .and_then(|(until, subject)| Some((until.parse::<i64>().ok()?, subject)))
                .ok_or_else(|| corrupt(format!("upstream session: {value:?}")))?;
            Ok((until > now.as_millis()).then(|| subject.to_owned()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> FederatedIdentity {
        FederatedIdentity {
            user_id: "usr_a".into(),
            provider: "corp".into(),
            issuer: "https://idp.example/realms/é".into(),
            subject: "248289761001".into(),
            linked_at: Timestamp::from_millis(42),
        }
    }

    #[test]
    fn the_stored_form_keeps_its_bytes() {
        let json = encode(&identity()).unwrap();
        assert_eq!(
            json,
            r#"{"user_id":"usr_a","provider":"corp","issuer":"https://idp.example/realms/é","subject":"248289761001","linked_at":42}"#
        );
        assert_eq!(decode(&json).unwrap(), identity());
    }

    #[test]
    fn a_persons_field_keeps_issuer_and_subject_apart() {
        assert_eq!(person_field("ab", "c"), "2:abc");
        assert_ne!(person_field("ab", "c"), person_field("a", "bc"));
        assert_ne!(person_field("1:a", "b"), person_field("1", ":ab"));
    }
}
