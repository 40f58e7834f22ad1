//! Local accounts in the same PostgreSQL database (and schema) as the sessions.

use portcullis_core::{StoredUser, User, UserFuture, UserStore, UserStoreError};
use sqlx::{PgPool, Row};

/// The accounts table beside the sessions (see [`crate::PostgresStore::users`]).
#[derive(Debug, Clone)]
pub struct PostgresUserStore {
    pool: PgPool,
}

impl PostgresUserStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn unavailable(err: sqlx::Error) -> UserStoreError {
    UserStoreError::Unavailable(portcullis_core::BackendError::new(err))
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

fn version(user: &User) -> i64 {
    i64::try_from(user.version).unwrap_or(i64::MAX)
}

impl UserStore for PostgresUserStore {
    fn add_user<'a>(&'a self, user: &'a User) -> UserFuture<'a, ()> {
        Box::pin(crate::bounded(async move {
            let inserted = sqlx::query(
                "INSERT INTO users (id, username, version, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&user.id)
            .bind(&user.username)
            .bind(version(user))
            .bind(encode(user)?)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            if inserted.rows_affected() == 0 {
                return Err(UserStoreError::Exists);
            }
            Ok(())
        }))
    }

    fn user_by_name<'a>(&'a self, username: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query("SELECT body FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|r| decode(r.get::<&str, _>(0))).transpose()
        }))
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query("SELECT body FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|r| decode(r.get::<&str, _>(0))).transpose()
        }))
    }

    fn list_users(&self) -> UserFuture<'_, Vec<User>> {
        Box::pin(crate::bounded(async move {
            let rows = sqlx::query("SELECT body FROM users ORDER BY username")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter().map(|r| decode(r.get::<&str, _>(0))).collect()
        }))
    }

    fn replace_user<'a>(&'a self, next: &'a User) -> UserFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let updated = sqlx::query(
                "UPDATE users SET username = $1, version = $2, body = $3 WHERE id = $4 AND version = $5",
            )
            .bind(&next.username)
            .bind(version(next))
            .bind(encode(next)?)
            .bind(&next.id)
            .bind(version(next) - 1)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(updated.rows_affected() == 1)
        }))
    }
}
