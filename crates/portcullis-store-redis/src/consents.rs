//! Consents in Redis: one hash per person, `<prefix>:{<route>}:cn:<subject>`, under the tag of
//! the subject's sessions (its route, see `portcullis_core::subject_route`), holding every
//! consent the person gave: field `g<client>` when a scope was last granted to the client (ms),
//! and a field per scope granted, `s<length of the client id>:<client><scope>` (the length
//! keeps a client id and a scope apart whatever they contain), with an empty value.
//!
//! A grant sets its scopes' fields ([`GRANT`], one Lua script on the one key): setting a field
//! that is there changes nothing, so grants add up, also when they race on any nodes, as a
//! set's `SADD` would; keeping a person's consents in one small hash instead of a set per
//! client costs one key per person, in Redis' compact listpack form. A person has few
//! consents, so a read takes the whole hash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use portcullis_core::oidc::{Consent, ConsentStore, ProviderFuture};
use portcullis_core::{AppId, PublicId, StoreError, Timestamp, subject_route};
use redis::Script;

use crate::{RedisStore, corrupt, tag_of};

/// Adds scopes to a consent. KEYS: the person's consents. ARGV: the client, when (ms), the
/// scopes. Answers when a scope was last granted (ms) and every scope granted to the client.
static GRANT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local scope = 's' .. #ARGV[1] .. ':' .. ARGV[1]
for i = 3, #ARGV do redis.call('HSET', KEYS[1], scope .. ARGV[i], '') end
local at = ARGV[2]
local had = redis.call('HGET', KEYS[1], 'g' .. ARGV[1])
if had and tonumber(had) > tonumber(at) then at = had end
redis.call('HSET', KEYS[1], 'g' .. ARGV[1], at)
local scopes = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #scope) == scope then table.insert(scopes, string.sub(field, #scope + 1)) end
end
return {at, scopes}
",
    )
});

/// Forgets a consent. KEYS: the person's consents. ARGV: the client. Answers 1 when there was
/// one.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local had = redis.call('HDEL', KEYS[1], 'g' .. ARGV[1])
local scope = 's' .. #ARGV[1] .. ':' .. ARGV[1]
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #scope) == scope then redis.call('HDEL', KEYS[1], field) end
end
return had
",
    )
});

/// The consents of a [`RedisStore`] (see [`RedisStore::consents`]).
#[derive(Debug, Clone)]
pub struct RedisConsentStore {
    store: RedisStore,
}

impl RedisConsentStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn consents_key(&self, subject: &str) -> String {
        self.store
            .key(&tag_of(subject_route(subject)), "cn", subject)
    }

    /// The person's hash, field → value.
    async fn fields(&self, subject: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.store
            .query(redis::cmd("HGETALL").arg(self.consents_key(subject)))
            .await
    }
}

/// What a field of a person's hash is.
enum Field<'a> {
    /// When a scope was last granted to the client.
    Granted { client: &'a str },
    /// A scope granted to the client.
    Scope { client: &'a str, scope: &'a str },
}

fn field(name: &str) -> Result<Field<'_>, StoreError> {
    let bad = || corrupt(format!("consent: field {name:?}"));
    if let Some(client) = name.strip_prefix('g') {
        return Ok(Field::Granted { client });
    }
    let rest = name.strip_prefix('s').ok_or_else(bad)?;
    let (length, rest) = rest.split_once(':').ok_or_else(bad)?;
    let length: usize = length.parse().map_err(|_| bad())?;
    if length > rest.len() || !rest.is_char_boundary(length) {
        return Err(bad());
    }
    let (client, scope) = rest.split_at(length);
    Ok(Field::Scope { client, scope })
}

/// The person's consents from the names (and values) of their hash's fields, by client.
fn consents_of<'a>(
    subject: &str,
    fields: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<BTreeMap<String, Consent>, StoreError> {
    let mut granted: BTreeMap<String, Timestamp> = BTreeMap::new();
    let mut scopes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, value) in fields {
        match field(name)? {
            Field::Granted { client } => {
                let at = value
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| corrupt(format!("consent: {client:?} granted at {value:?}")))?;
                granted.insert(client.to_owned(), Timestamp::from_millis(at));
            }
            Field::Scope { client, scope } => {
                scopes
                    .entry(client.to_owned())
                    .or_default()
                    .insert(scope.to_owned());
            }
        }
    }
    // Scopes without a grant time are not a consent (none is written without the other).
    Ok(granted
        .into_iter()
        .map(|(client, granted_at)| {
            let consent = Consent {
                subject: subject.to_owned(),
                client: PublicId::from_string(client.clone()),
                scopes: scopes.remove(&client).unwrap_or_default(),
                granted_at,
            };
            (client, consent)
        })
        .collect())
}

impl ConsentStore for RedisConsentStore {
    fn grant_consent(&self, consent: Consent) -> ProviderFuture<'_, Consent> {
        Box::pin(async move {
            let client = consent.client.as_str();
            let mut args = vec![
                client.to_owned(),
                consent.granted_at.as_millis().to_string(),
            ];
            args.extend(consent.scopes.iter().cloned());
            let (at, scopes): (String, BTreeSet<String>) = self
                .store
                .script(&GRANT, &[self.consents_key(&consent.subject)], &args)
                .await?;
            let at = at
                .parse()
                .map_err(|_| corrupt(format!("consent: granted at {at:?}")))?;
            Ok(Consent {
                scopes,
                granted_at: Timestamp::from_millis(at),
                ..consent
            })
        })
    }

    fn consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, Option<Consent>> {
        Box::pin(async move {
            let fields = self.fields(subject).await?;
            let fields = fields
                .iter()
                .map(|(name, value)| (name.as_str(), Some(value.as_str())));
            Ok(consents_of(subject, fields)?.remove(client.as_str()))
        })
    }

    fn consents_of<'a>(&'a self, subject: &'a str) -> ProviderFuture<'a, Vec<Consent>> {
        Box::pin(async move {
            let fields = self.fields(subject).await?;
            let fields = fields
                .iter()
                .map(|(name, value)| (name.as_str(), Some(value.as_str())));
            Ok(consents_of(subject, fields)?.into_values().collect())
        })
    }

    fn revoke_consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let revoked: i64 = self
                .store
                .script(&REVOKE, &[self.consents_key(subject)], &[client.as_str()])
                .await?;
            Ok(revoked == 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_clients_and_scopes_apart_whatever_they_contain() {
        let fields = [
            ("gapp_a", Some("5")),
            ("s5:app_aopenid", Some("")),
            ("s5:app_ae:mail", Some("")),
            ("ga:b", Some("7")),
            ("s3:a:bx", Some("")),
            ("s1:zorphan", Some("")),
        ];
        let consents = consents_of("usr_1", fields).unwrap();
        assert_eq!(
            consents.len(),
            2,
            "scopes without a grant time are no consent"
        );
        let a = &consents["app_a"];
        assert_eq!(
            a.scopes,
            ["e:mail", "openid"].map(String::from).into_iter().collect()
        );
        assert_eq!(a.granted_at, Timestamp::from_millis(5));
        assert_eq!(
            consents["a:b"].scopes,
            ["x".to_owned()].into_iter().collect()
        );
        for bad in ["x", "s", "s9:ab", "sx:ab", "s1ab"] {
            assert!(field(bad).is_err(), "{bad}");
        }
        assert!(consents_of("usr_1", [("gapp_a", Some("soon"))]).is_err());
    }
}
