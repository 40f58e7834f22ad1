//! Local accounts in Redis, beside the sessions. Accounts are few, so every account key
//! shares one hash tag (`{users}`): adding and replacing stay atomic in one slot of a Cluster.

use std::sync::LazyLock;

use portcullis_core::{StoreError, StoredUser, User, UserFuture, UserStore, UserStoreError};
use redis::Script;

use crate::RedisStore;

/// Adds an account unless its username is taken. KEYS: bodies, names. ARGV: id, username, body.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
",
    )
});

/// Replaces an account if it is still at the expected version. KEYS: bodies. ARGV: id,
/// expected version, body.
static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
if tostring(cjson.decode(current).version) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
",
    )
});

/// The accounts of a [`RedisStore`] (see [`RedisStore::users`]).
#[derive(Debug, Clone)]
pub struct RedisUserStore {
    store: RedisStore,
}

impl RedisUserStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    fn bodies(&self) -> String {
        self.store.tag_key("users", "h")
    }

    fn names(&self) -> String {
        self.store.tag_key("users", "n")
    }
}

fn from_store(err: StoreError) -> UserStoreError {
    match err {
        StoreError::Corrupt(text) => UserStoreError::Corrupt(text),
        other => UserStoreError::Unavailable(portcullis_core::BackendError::new(other)),
    }
}

fn decode(body: &str) -> Result<User, UserStoreError> {
    serde_json::from_str::<StoredUser>(body)
        .map(User::from)
        .map_err(|e| UserStoreError::Corrupt(e.to_string()))
}

fn encode(user: &User) -> Result<String, UserStoreError> {
    serde_json::to_string(&StoredUser::from(user))
        .map_err(|e| UserStoreError::Corrupt(e.to_string()))
}

impl UserStore for RedisUserStore {
    fn add_user<'a>(&'a self, user: &'a User) -> UserFuture<'a, ()> {
        Box::pin(async move {
            let added: i64 = self
                .store
                .script(
                    &ADD,
                    &[self.bodies(), self.names()],
                    &[user.id.clone(), user.username.clone(), encode(user)?],
                )
                .await
                .map_err(from_store)?;
            if added == 0 {
                return Err(UserStoreError::Exists);
            }
            Ok(())
        })
    }

    fn user_by_name<'a>(&'a self, username: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(async move {
            let id: Option<String> = self
                .store
                .query(redis::cmd("HGET").arg(self.names()).arg(username))
                .await
                .map_err(from_store)?;
            match id {
                Some(id) => self.user_by_id(&id).await,
                None => Ok(None),
            }
        })
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(async move {
            let body: Option<String> = self
                .store
                .query(redis::cmd("HGET").arg(self.bodies()).arg(id))
                .await
                .map_err(from_store)?;
            body.as_deref().map(decode).transpose()
        })
    }

    fn list_users(&self) -> UserFuture<'_, Vec<User>> {
        Box::pin(async move {
            let bodies: Vec<String> = self
                .store
                .query(redis::cmd("HVALS").arg(self.bodies()))
                .await
                .map_err(from_store)?;
            let mut users = bodies
                .iter()
                .map(|b| decode(b))
                .collect::<Result<Vec<_>, _>>()?;
            users.sort_by(|a, b| a.username.cmp(&b.username));
            Ok(users)
        })
    }

    fn replace_user<'a>(&'a self, next: &'a User) -> UserFuture<'a, bool> {
        Box::pin(async move {
            let replaced: i64 = self
                .store
                .script(
                    &REPLACE,
                    &[self.bodies()],
                    &[
                        next.id.clone(),
                        next.version.saturating_sub(1).to_string(),
                        encode(next)?,
                    ],
                )
                .await
                .map_err(from_store)?;
            Ok(replaced == 1)
        })
    }
}
