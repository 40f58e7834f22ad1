//! Refresh tokens in `pc_refresh_tokens`, every field a column.
//!
//! A rotation marks the old token with one `UPDATE … WHERE rotated_at IS NULL` and inserts the
//! successor in the same transaction: a racing rotation on any node waits for the row, then
//! finds it rotated, changes nothing and reads the winner's successor. Rotations hold their
//! family's advisory lock shared and ending a family holds it exclusively, so an ending waits
//! for the rotations in flight and its `DELETE` then sees their successors: no token of an
//! ended family is left behind.

use portcullis_core::oidc::{ProviderFuture, RefreshToken, RefreshTokenStore, Rotated, Rotation};
use portcullis_core::{PublicId, SessionId, StoreError, Timestamp, TokenHash};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::unavailable;

/// The refresh tokens beside the sessions (see [`crate::PostgresStore::refresh_tokens`]).
#[derive(Debug, Clone)]
pub struct PostgresRefreshTokenStore {
    pool: PgPool,
}

impl PostgresRefreshTokenStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Seed of `hashtextextended` for a family's advisory lock (subjects' locks use 7), so a family
/// and a subject with the same text do not share a lock.
const FAMILY_LOCK_SEED: i64 = 11;

/// One row of `pc_refresh_tokens`; times in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefreshTokenRow {
    hash: Vec<u8>,
    family: String,
    client: String,
    subject: String,
    scopes: Vec<String>,
    issued_at: i64,
    expires_at: i64,
    rotated_at: Option<i64>,
    successor: Option<Vec<u8>>,
    sealed_successor: Option<String>,
}

/// The columns [`RefreshTokenRow::read`] expects, in order.
macro_rules! columns {
    () => {
        "hash, family, client, subject, scopes, issued_at, expires_at, rotated_at, successor,
         sealed_successor"
    };
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("refresh token row: {what}"))
}

fn token_hash(bytes: &[u8]) -> Result<TokenHash, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenHash)
        .map_err(|_| corrupt(format!("a hash of {} bytes", bytes.len())))
}

impl RefreshTokenRow {
    fn of(token: &RefreshToken) -> Self {
        let rotated = token.rotated.as_ref();
        Self {
            hash: token.hash.0.to_vec(),
            family: token.family.as_str().to_owned(),
            client: token.client.as_str().to_owned(),
            subject: token.subject.clone(),
            scopes: token.scopes.clone(),
            issued_at: token.issued_at.as_millis(),
            expires_at: token.expires_at.as_millis(),
            rotated_at: rotated.map(|r| r.at.as_millis()),
            successor: rotated.map(|r| r.successor.0.to_vec()),
            sealed_successor: rotated.map(|r| r.sealed_successor.clone()),
        }
    }

    /// Reads a row selected with `columns!()`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            hash: row.try_get(0)?,
            family: row.try_get(1)?,
            client: row.try_get(2)?,
            subject: row.try_get(3)?,
            scopes: row.try_get(4)?,
            issued_at: row.try_get(5)?,
            expires_at: row.try_get(6)?,
            rotated_at: row.try_get(7)?,
            successor: row.try_get(8)?,
            sealed_successor: row.try_get(9)?,
        })
    }

    fn into_token(self) -> Result<RefreshToken, StoreError> {
        let rotated = match (self.rotated_at, self.successor, self.sealed_successor) {
            (None, None, None) => None,
            (Some(at), Some(successor), Some(sealed_successor)) => Some(Rotated {
                at: Timestamp::from_millis(at),
                successor: token_hash(&successor)?,
                sealed_successor,
            }),
            _ => return Err(corrupt("a rotation only partly recorded")),
        };
        Ok(RefreshToken {
            hash: token_hash(&self.hash)?,
            family: PublicId::from_string(self.family),
            client: PublicId::from_string(self.client),
            subject: self.subject,
            scopes: self.scopes,
            issued_at: Timestamp::from_millis(self.issued_at),
            expires_at: Timestamp::from_millis(self.expires_at),
            rotated,
        })
    }
}

async fn insert(conn: &mut PgConnection, row: &RefreshTokenRow) -> Result<(), StoreError> {
    // A plain INSERT: a second token with the same 256-bit hash is an error, never a silent
    // replacement of a token that may have been rotated.
    sqlx::query(concat!(
        "INSERT INTO pc_refresh_tokens (",
        columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&row.hash)
    .bind(&row.family)
    .bind(&row.client)
    .bind(&row.subject)
    .bind(&row.scopes)
    .bind(row.issued_at)
    .bind(row.expires_at)
    .bind(row.rotated_at)
    .bind(&row.successor)
    .bind(&row.sealed_successor)
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

async fn find(
    conn: &mut PgConnection,
    hash: &TokenHash,
) -> Result<Option<RefreshToken>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM pc_refresh_tokens WHERE hash = $1"
    ))
    .bind(&hash.0[..])
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?;
    row.map(|r| RefreshTokenRow::read(&r).map_err(unavailable)?.into_token())
        .transpose()
}

impl RefreshTokenStore for PostgresRefreshTokenStore {
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()> {
        Box::pin(crate::bounded(async move {
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            insert(&mut conn, &RefreshTokenRow::of(&token)).await
        }))
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
        successor: RefreshToken,
        sealed_successor: String,
    ) -> ProviderFuture<'a, Rotation> {
        Box::pin(crate::bounded(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            // The stored token's family lock first, then its row, in the order an ending takes
            // them, so a rotation and an ending never wait for each other in a cycle.
            let known = sqlx::query(
                "SELECT pg_advisory_xact_lock_shared(hashtextextended(family, $2))
                 FROM pc_refresh_tokens WHERE hash = $1 AND family = $3",
            )
            .bind(&hash.0[..])
            .bind(FAMILY_LOCK_SEED)
            .bind(successor.family.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            if known.is_none() {
                return Ok(Rotation::Unknown);
            }
            let won = sqlx::query(concat!(
                "UPDATE pc_refresh_tokens SET rotated_at = $2, successor = $3,
                    sealed_successor = $4
                 WHERE hash = $1 AND rotated_at IS NULL
                 RETURNING ",
                columns!()
            ))
            .bind(&hash.0[..])
            .bind(successor.issued_at.as_millis())
            .bind(&successor.hash.0[..])
            .bind(&sealed_successor)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some(won) = won else {
                // Read by a statement of its own, whose snapshot includes the rotation that
                // won while the UPDATE waited for the row. `None`: the family ended meanwhile.
                return match find(&mut tx, hash).await? {
                    Some(old) if old.rotated.is_some() => Ok(Rotation::AlreadyRotated(old)),
                    Some(_) => Err(corrupt("neither rotated nor rotatable")),
                    None => Ok(Rotation::Unknown),
                };
            };
            let mut before = RefreshTokenRow::read(&won)
                .map_err(unavailable)?
                .into_token()?;
            before.rotated = None;
            insert(&mut tx, &RefreshTokenRow::of(&successor)).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Rotation::Rotated(before))
        }))
    }

    fn refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<RefreshToken>> {
        Box::pin(crate::bounded(async move {
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            find(&mut conn, hash).await
        }))
    }

    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64> {
        Box::pin(crate::bounded(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
                .bind(family.as_str())
                .bind(FAMILY_LOCK_SEED)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let done = sqlx::query("DELETE FROM pc_refresh_tokens WHERE family = $1")
                .bind(family.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            Ok(done.rows_affected())
        }))
    }

    fn forget_refresh_tokens(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM pc_refresh_tokens WHERE expires_at < $1")
                .bind(before.as_millis())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> RefreshToken {
        RefreshToken {
            hash: TokenHash([1; 32]),
            family: PublicId::from_string("ses_app".into()),
            client: PublicId::from_string("app_rp".into()),
            subject: "usr_a".into(),
            scopes: vec!["openid".into(), "offline_access".into()],
            issued_at: Timestamp::from_millis(10),
            expires_at: Timestamp::from_millis(20),
            rotated: Some(Rotated {
                at: Timestamp::from_millis(15),
                successor: TokenHash([2; 32]),
                sealed_successor: "sealed".into(),
            }),
        }
    }

    #[test]
    fn every_field_round_trips_through_the_row() {
        let token = token();
        assert_eq!(RefreshTokenRow::of(&token).into_token().unwrap(), token);
        let fresh = RefreshToken {
            rotated: None,
            ..token
        };
        assert_eq!(RefreshTokenRow::of(&fresh).into_token().unwrap(), fresh);
    }

    #[test]
    fn a_partly_recorded_rotation_or_a_short_hash_is_corrupt() {
        let mut row = RefreshTokenRow::of(&token());
        row.sealed_successor = None;
        assert!(matches!(row.into_token(), Err(StoreError::Corrupt(_))));
        let mut row = RefreshTokenRow::of(&token());
        row.hash.pop();
        assert!(matches!(row.into_token(), Err(StoreError::Corrupt(_))));
    }
}
