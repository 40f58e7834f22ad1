//! Applications in Redis. They are few, so every application key shares one hash tag of its own
//! (`{apps}`): each change, with its name index and its event, is one Lua script on one slot of
//! a Cluster.
//!
//! Keys: `pc:{apps}:a`, a hash of application id → the application (JSON, with its OpenID
//! Connect registration, if it has one, as a `client` object in its stored form,
//! [`StoredClient`]); `pc:{apps}:n`, a hash of name → application id, so a name is taken
//! atomically at most once; `pc:{apps}:e`, the stream of the applications' events (read by
//! `events` with the other tags' streams).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use portcullis_core::{
    AppId, Application, ApplicationStore, AuditEvent, Grant, PublicId, StoreError, StoredClient,
    Timestamp,
};
use redis::{FromRedisValue, Script};
use serde::{Deserialize, Serialize};

use crate::{APP_TAG_INDEX, ATTEMPTS, RedisStore, corrupt, event_json, stream_seq};

/// The hash tag of every application key.
pub(crate) const TAG: &str = "apps";

/// Adds an application unless its id or name is taken. KEYS: applications, names, events.
/// ARGV: id, name, application, event. Returns 0 when taken, else the event's stream id.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return redis.call('XADD', KEYS[3], '*', 'd', ARGV[4])
",
    )
});

/// Replaces an application if it is still as read. KEYS: applications, names, events. ARGV: id,
/// the application as read, its name as read, the new name, the new application, event.
/// Returns 0 when the application changed meanwhile, -1 when another application has the new
/// name, else the event's stream id.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local owner = redis.call('HGET', KEYS[2], ARGV[4])
if owner and owner ~= ARGV[1] then return -1 end
if ARGV[3] ~= ARGV[4] and redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
return redis.call('XADD', KEYS[3], '*', 'd', ARGV[6])
",
    )
});

/// Deletes an application if it is still as read, with its name. KEYS: applications, names,
/// events. ARGV: id, the application as read, its name, event. Returns 0 when it changed or
/// went meanwhile, else the event's stream id.
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[3]) end
return redis.call('XADD', KEYS[3], '*', 'd', ARGV[4])
",
    )
});

/// An application as stored.
#[derive(Serialize, Deserialize)]
struct Stored {
    id: String,
    name: String,
    policies: Vec<String>,
    default_policy: String,
    grants: Vec<String>,
    /// The registration as a client; absent for an application that is none (and for every
    /// application written before clients existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<StoredClient>,
    created_at: Timestamp,
    version: u64,
}

fn encode(app: &Application) -> Result<String, StoreError> {
    // `StoredClient` converts to and from the domain type only through its JSON text.
    let client = app
        .client
        .as_ref()
        .map(|c| serde_json::from_str::<StoredClient>(&StoredClient::encode(c)?).map_err(corrupt))
        .transpose()?;
    serde_json::to_string(&Stored {
        id: app.id.as_str().to_owned(),
        name: app.name.clone(),
        policies: app.policies.clone(),
        default_policy: app.default_policy.clone(),
        grants: app.grants.iter().map(|g| g.as_str().to_owned()).collect(),
        client,
        created_at: app.created_at,
        version: app.version,
    })
    .map_err(corrupt)
}

fn decode(body: &str) -> Result<Application, StoreError> {
    let stored: Stored = serde_json::from_str(body).map_err(corrupt)?;
    let grants = stored
        .grants
        .iter()
        .map(|g| Grant::parse(g).ok_or_else(|| corrupt(format!("unknown grant \"{g}\""))))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let client = stored
        .client
        .map(|c| StoredClient::decode(&serde_json::to_string(&c).map_err(corrupt)?))
        .transpose()?;
    Ok(Application {
        id: PublicId::from_string(stored.id),
        name: stored.name,
        policies: stored.policies,
        default_policy: stored.default_policy,
        grants,
        client,
        created_at: stored.created_at,
        version: stored.version,
    })
}

/// What a script answered: `Ok(id)` for the stream id of the event it wrote, `Err(code)` for
/// the number it returned instead.
fn outcome(reply: redis::Value) -> Result<Result<String, i64>, StoreError> {
    match reply {
        redis::Value::Int(code) => Ok(Err(code)),
        other => String::from_redis_value(other).map(Ok).map_err(corrupt),
    }
}

impl RedisStore {
    fn applications_key(&self) -> String {
        self.tag_key(TAG, "a")
    }

    fn application_names_key(&self) -> String {
        self.tag_key(TAG, "n")
    }

    fn application_keys(&self) -> [String; 3] {
        [
            self.applications_key(),
            self.application_names_key(),
            self.tag_key(TAG, "e"),
        ]
    }

    /// The application `id` as stored, and as its value reads.
    async fn application_body(&self, id: &AppId) -> Result<Option<String>, StoreError> {
        self.query(
            redis::cmd("HGET")
                .arg(self.applications_key())
                .arg(id.as_str()),
        )
        .await
    }

    /// `event` as written at stream id `id`.
    fn written(mut event: AuditEvent, id: &str) -> AuditEvent {
        event.seq = stream_seq(id, APP_TAG_INDEX);
        event
    }
}

impl ApplicationStore for RedisStore {
    async fn add_application(
        &self,
        app: Application,
        event: AuditEvent,
    ) -> Result<AuditEvent, StoreError> {
        let args = [
            app.id.as_str().to_owned(),
            app.name.clone(),
            encode(&app)?,
            event_json(&event)?,
        ];
        let reply = self.script(&ADD, &self.application_keys(), &args).await?;
        match outcome(reply)? {
            Ok(id) => Ok(Self::written(event, &id)),
            Err(_) => Err(StoreError::NameTaken(app.name)),
        }
    }

    async fn find_application(&self, id: &AppId) -> Result<Option<Application>, StoreError> {
        self.application_body(id)
            .await?
            .as_deref()
            .map(decode)
            .transpose()
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        let bodies: Vec<String> = self
            .query(redis::cmd("HVALS").arg(self.applications_key()))
            .await?;
        let mut apps = bodies
            .iter()
            .map(|b| decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        apps.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(apps)
    }

    async fn update_application(
        &self,
        version: u64,
        next: Application,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let body = encode(&next)?;
        let event_body = event_json(&event)?;
        for attempt in 0..ATTEMPTS {
            let Some(read) = self.application_body(&next.id).await? else {
                return Ok(None);
            };
            let current = decode(&read)?;
            if current.version != version {
                return Ok(None);
            }
            let args = [
                next.id.as_str(),
                read.as_str(),
                current.name.as_str(),
                next.name.as_str(),
                body.as_str(),
                event_body.as_str(),
            ];
            let reply = self
                .script(&UPDATE, &self.application_keys(), &args)
                .await?;
            match outcome(reply)? {
                Ok(id) => return Ok(Some(Self::written(event, &id))),
                Err(-1) => return Err(StoreError::NameTaken(next.name)),
                // Changed since it was read: whether it is still at `version` is read again.
                Err(_) => Self::backoff(attempt).await,
            }
        }
        Err(StoreError::Unavailable(
            "too much contention on one application; retry".into(),
        ))
    }

    async fn remove_application(
        &self,
        id: &AppId,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        let event_body = event_json(&event)?;
        for attempt in 0..ATTEMPTS {
            let Some(read) = self.application_body(id).await? else {
                self.confirm_slot(TAG).await?;
                return Ok(None);
            };
            let current = decode(&read)?;
            let args = [
                id.as_str(),
                read.as_str(),
                current.name.as_str(),
                event_body.as_str(),
            ];
            let reply = self
                .script(&REMOVE, &self.application_keys(), &args)
                .await?;
            match outcome(reply)? {
                Ok(stream_id) => return Ok(Some(Self::written(event, &stream_id))),
                Err(_) => Self::backoff(attempt).await,
            }
        }
        Err(StoreError::Unavailable(
            "too much contention on one application; retry".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_application_survives_a_round_trip() {
        let app = Application {
            id: PublicId::from_string("app_x".into()),
            name: "shop".into(),
            policies: vec!["default".into(), "*".into()],
            default_policy: "default".into(),
            grants: Grant::ALL.into_iter().collect(),
            client: None,
            created_at: Timestamp::from_millis(1_764_000_000_123),
            version: 3,
        };
        assert_eq!(decode(&encode(&app).unwrap()).unwrap(), app);
        assert!(
            !encode(&app).unwrap().contains("client"),
            "an application that is no client is written as before clients existed"
        );
        let unknown = encode(&app).unwrap().replace("end_everywhere", "end_all");
        assert!(decode(&unknown).is_err(), "an unknown grant is not dropped");
    }

    #[test]
    fn a_client_registration_survives_a_round_trip_and_old_records_have_none() {
        use portcullis_core::TokenHash;
        use portcullis_core::oidc::{Client, ClientAuth, GrantType};

        let client = Client {
            auth: ClientAuth::Secret(TokenHash([9; 32])),
            redirect_uris: vec!["https://rp.example/cb".into()],
            post_logout_redirect_uris: vec!["https://rp.example/bye".into()],
            backchannel_logout_uri: Some("https://rp.example/bc".into()),
            frontchannel_logout_uri: None,
            scopes: ["openid".to_owned(), "profile".to_owned()].into(),
            grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
            require_consent: true,
            id_token_signed_response_alg: None,
            upstream: None,
        };
        let app = Application {
            id: PublicId::from_string("app_rp".into()),
            name: "rp".into(),
            policies: vec!["default".into()],
            default_policy: "default".into(),
            grants: BTreeSet::new(),
            client: Some(client.clone()),
            created_at: Timestamp::from_millis(1_764_000_000_123),
            version: 1,
        };
        let body = encode(&app).unwrap();
        assert_eq!(decode(&body).unwrap(), app);
        // Nested as an object in the registration's stored form, not as a string of JSON.
        let stored = StoredClient::encode(&client).unwrap();
        assert!(body.contains(&format!(r#""client":{stored}"#)), "{body}");

        // Written by the release before clients: no `client` field at all.
        let old = r#"{"id":"app_old","name":"old","policies":["default"],"default_policy":"default","grants":[],"created_at":1764000000123,"version":2}"#;
        assert_eq!(decode(old).unwrap().client, None);
        let damaged = body.replace("client_secret_basic", "client_secret_jwt");
        assert!(
            decode(&damaged).is_err(),
            "an unknown client authentication"
        );
    }
}
