//! The provider's signing keys in `pc_signing_keys`: each key as JSON (its stored form,
//! [`StoredSigningKey`]) beside its algorithm and retirement as columns.
//!
//! One key per algorithm signs: a partial unique index on `alg` over the keys not retired
//! makes a second one impossible, whichever node adds it. A rotation retires the key it
//! replaces (`UPDATE … WHERE retired_at IS NULL`) and adds its own in one transaction: a racing
//! rotation waits for the row, then finds it retired and adds nothing; a racing first key
//! conflicts with the index and is not added.

use portcullis_core::oidc::{ProviderFuture, SigningKey, SigningKeyStore};
use portcullis_core::{StoreError, StoredSigningKey, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::unavailable;

/// The signing keys beside the sessions (see [`crate::PostgresStore::signing_keys`]).
#[derive(Debug, Clone)]
pub struct PostgresSigningKeyStore {
    pool: PgPool,
}

impl PostgresSigningKeyStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One row of `pc_signing_keys` (`seq` is the database's).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SigningKeyRow {
    kid: String,
    /// The JWS name (`ES256`, `EdDSA`).
    alg: String,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
    retired_at: Option<i64>,
    /// [`StoredSigningKey`] JSON.
    body: String,
}

impl SigningKeyRow {
    fn of(key: &SigningKey) -> Result<Self, StoreError> {
        Ok(Self {
            kid: key.kid.clone(),
            alg: key.alg.as_str().to_owned(),
            created_at: key.created_at.as_millis(),
            retired_at: key.retired_at.map(Timestamp::as_millis),
            body: StoredSigningKey::encode(key)?,
        })
    }

    /// Reads a row selected as `kid, alg, created_at, retired_at, body`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            kid: row.try_get(0)?,
            alg: row.try_get(1)?,
            created_at: row.try_get(2)?,
            retired_at: row.try_get(3)?,
            body: row.try_get(4)?,
        })
    }

    /// The key this row holds, retired as the column says.
    fn into_key(self) -> Result<SigningKey, StoreError> {
        let mut key = StoredSigningKey::decode(&self.body)?;
        if key.kid != self.kid || key.alg.as_str() != self.alg {
            return Err(StoreError::Corrupt(format!(
                "signing key {}: its columns and its body disagree",
                self.kid
            )));
        }
        key.retired_at = self.retired_at.map(Timestamp::from_millis);
        Ok(key)
    }
}

/// Inserts `row` unless it conflicts with a key of the same id or with the algorithm's signing
/// key; answers whether it was inserted.
async fn insert(conn: &mut PgConnection, row: &SigningKeyRow) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO pc_signing_keys (kid, alg, created_at, retired_at, body)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(&row.kid)
    .bind(&row.alg)
    .bind(row.created_at)
    .bind(row.retired_at)
    .bind(&row.body)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected() == 1)
}

impl SigningKeyStore for PostgresSigningKeyStore {
    fn add_signing_key<'a>(
        &'a self,
        key: SigningKey,
        replacing: Option<&'a str>,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let row = SigningKeyRow::of(&key)?;
            let Some(replacing) = replacing else {
                let mut conn = self.pool.acquire().await.map_err(unavailable)?;
                return insert(&mut conn, &row).await;
            };
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            let retired = sqlx::query(
                "UPDATE pc_signing_keys SET retired_at = $3
                 WHERE kid = $1 AND alg = $2 AND retired_at IS NULL",
            )
            .bind(replacing)
            .bind(&row.alg)
            .bind(row.created_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            // Dropping the transaction rolls it back: nothing changes when either step finds
            // that another node got there first.
            if retired.rows_affected() == 0 || !insert(&mut tx, &row).await? {
                return Ok(false);
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(true)
        }))
    }

    fn signing_keys(&self) -> ProviderFuture<'_, Vec<SigningKey>> {
        Box::pin(crate::bounded(async move {
            let rows = sqlx::query(
                "SELECT kid, alg, created_at, retired_at, body FROM pc_signing_keys
                 ORDER BY created_at, seq",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter()
                .map(|r| SigningKeyRow::read(r).map_err(unavailable)?.into_key())
                .collect()
        }))
    }

    fn remove_signing_key<'a>(&'a self, kid: &'a str) -> ProviderFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let done = sqlx::query(
                "DELETE FROM pc_signing_keys WHERE kid = $1 AND retired_at IS NOT NULL",
            )
            .bind(kid)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        }))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::oidc::SigningAlg;

    use super::*;

    fn key() -> SigningKey {
        SigningKey {
            kid: "kid-1".into(),
            alg: SigningAlg::EdDsa,
            sealed_private: "v1.k1.kid-1".into(),
            public_jwk: r#"{"kty":"OKP"}"#.into(),
            created_at: Timestamp::from_millis(5),
            retired_at: None,
        }
    }

    #[test]
    fn the_column_is_when_a_key_retired() {
        let mut row = SigningKeyRow::of(&key()).unwrap();
        assert_eq!((row.alg.as_str(), row.retired_at), ("EdDSA", None));
        row.retired_at = Some(9);
        assert_eq!(
            row.into_key().unwrap(),
            SigningKey {
                retired_at: Some(Timestamp::from_millis(9)),
                ..key()
            }
        );
    }

    #[test]
    fn a_body_of_another_key_is_corrupt() {
        let mut row = SigningKeyRow::of(&key()).unwrap();
        row.kid = "kid-2".into();
        assert!(matches!(row.into_key(), Err(StoreError::Corrupt(_))));
    }
}
