//! The provider's signing keys in the same SQLite file as the sessions, one row per key.
//!
//! A rotation reads the algorithm's current key and, if it is still the one the caller saw,
//! retires it and adds the new one, all inside one `BEGIN IMMEDIATE` transaction: it takes the
//! file's write lock before the read, so racing rotations (from any connection or process)
//! run one after another and only the first finds the key it expected. The partial unique
//! index `oidc_signing_keys_current` refuses a second signing key of an algorithm besides.

use portcullis_core::StoredSigningKey;
use portcullis_core::oidc::{ProviderFuture, SigningKey, SigningKeyStore};
use sqlx::{Row, SqlitePool};

use crate::unavailable;

/// The signing keys of the embedded store (see [`crate::SqliteJournal::signing_keys`]).
#[derive(Debug, Clone)]
pub struct SqliteSigningKeyStore {
    pool: SqlitePool,
}

impl SqliteSigningKeyStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// One row of `oidc_signing_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SigningKeyRow {
    kid: String,
    alg: &'static str,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
    retired_at: Option<i64>,
    /// The JSON of [`StoredSigningKey`].
    body: String,
}

impl SigningKeyRow {
    fn of(key: &SigningKey) -> Result<Self, portcullis_core::StoreError> {
        Ok(Self {
            kid: key.kid.clone(),
            alg: key.alg.as_str(),
            created_at: key.created_at.as_millis(),
            retired_at: key.retired_at.map(|at| at.as_millis()),
            body: StoredSigningKey::encode(key)?,
        })
    }
}

impl SigningKeyStore for SqliteSigningKeyStore {
    fn add_signing_key<'a>(
        &'a self,
        key: SigningKey,
        replacing: Option<&'a str>,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let row = SigningKeyRow::of(&key)?;
            let mut tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(unavailable)?;
            let current: Option<String> = sqlx::query(
                "SELECT kid FROM oidc_signing_keys WHERE alg = ?1 AND retired_at IS NULL",
            )
            .bind(row.alg)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
            .map(|r| r.get(0));
            if current.as_deref() != replacing {
                // Dropping the transaction rolls it back; nothing was written.
                return Ok(false);
            }
            if let Some(kid) = current {
                // The body is kept whole, so reading the keys reads one column.
                sqlx::query(
                    "UPDATE oidc_signing_keys SET retired_at = ?2,
                       body = json_set(body, '$.retired_at', ?2)
                     WHERE kid = ?1",
                )
                .bind(kid)
                .bind(row.created_at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            sqlx::query(
                "INSERT INTO oidc_signing_keys (kid, alg, created_at, retired_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(&row.kid)
            .bind(row.alg)
            .bind(row.created_at)
            .bind(row.retired_at)
            .bind(&row.body)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(true)
        })
    }

    fn signing_keys(&self) -> ProviderFuture<'_, Vec<SigningKey>> {
        Box::pin(async move {
            // Keys made in the same millisecond keep the order they were added in.
            let rows = sqlx::query("SELECT body FROM oidc_signing_keys ORDER BY created_at, rowid")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|row| StoredSigningKey::decode(row.get(0)))
                .collect()
        })
    }

    fn remove_signing_key<'a>(&'a self, kid: &'a str) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM oidc_signing_keys WHERE kid = ?1 AND retired_at IS NOT NULL",
            )
            .bind(kid)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
    }
}
