//! Refresh tokens in the same SQLite file as the sessions, one row per token, every field a
//! column.
//!
//! Every write goes through the file's writer task ([`crate::writer`]), inside its
//! `BEGIN IMMEDIATE` transaction: rotations arriving together share one commit. A rotation marks
//! the old token's row if it is not rotated yet and inserts the successor in that transaction,
//! which holds the file's write lock, so racing rotations (from any task or process) run one
//! after another, only the first finds the token current and only its successor is stored.

use portcullis_core::oidc::{ProviderFuture, RefreshToken, RefreshTokenStore, Rotated, Rotation};
use portcullis_core::{PublicId, SessionId, StoreError, Timestamp, TokenHash};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::unavailable;
use crate::writer::{Write, WriteFuture, Writer};

/// The refresh tokens of the embedded store (see [`crate::SqliteJournal::refresh_tokens`]).
#[derive(Debug, Clone)]
pub struct SqliteRefreshTokenStore {
    /// For reads.
    pool: SqlitePool,
    writer: Writer,
}

impl SqliteRefreshTokenStore {
    pub(crate) fn new(pool: SqlitePool, writer: Writer) -> Self {
        Self { pool, writer }
    }
}

/// One row of `oidc_refresh_tokens`; times in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefreshTokenRow {
    hash: String,
    family: String,
    client: String,
    subject: String,
    /// A JSON array of scope names, in the order asked.
    scopes: String,
    issued_at: i64,
    expires_at: i64,
    /// The three fields of [`Rotated`]: all set once the token is rotated, all `None` before.
    rotated_at: Option<i64>,
    successor: Option<String>,
    sealed_successor: Option<String>,
}

/// The columns [`RefreshTokenRow::read`] expects, in order.
const COLUMNS: &str = "hash, family, client, subject, scopes, issued_at, expires_at, \
                       rotated_at, successor, sealed_successor";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("refresh token row: {what}"))
}

impl RefreshTokenRow {
    fn of(token: &RefreshToken) -> Result<Self, StoreError> {
        let rotated = token.rotated.as_ref();
        Ok(Self {
            hash: token.hash.to_hex(),
            family: token.family.as_str().to_owned(),
            client: token.client.as_str().to_owned(),
            subject: token.subject.clone(),
            scopes: serde_json::to_string(&token.scopes).map_err(corrupt)?,
            issued_at: token.issued_at.as_millis(),
            expires_at: token.expires_at.as_millis(),
            rotated_at: rotated.map(|r| r.at.as_millis()),
            successor: rotated.map(|r| r.successor.to_hex()),
            sealed_successor: rotated.map(|r| r.sealed_successor.clone()),
        })
    }

    /// Reads a row selected with [`COLUMNS`].
    fn read(row: &SqliteRow) -> Result<Self, sqlx::Error> {
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
        let hash = |hex: &str| {
            TokenHash::from_hex(hex).ok_or_else(|| corrupt(format!("bad token hash {hex:?}")))
        };
        let rotated = match (self.rotated_at, self.successor, self.sealed_successor) {
            (None, None, None) => None,
            (Some(at), Some(successor), Some(sealed_successor)) => Some(Rotated {
                at: Timestamp::from_millis(at),
                successor: hash(&successor)?,
                sealed_successor,
            }),
            _ => return Err(corrupt("a rotation recorded in part")),
        };
        Ok(RefreshToken {
            hash: hash(&self.hash)?,
            family: PublicId::from_string(self.family),
            client: PublicId::from_string(self.client),
            subject: self.subject,
            scopes: serde_json::from_str(&self.scopes).map_err(corrupt)?,
            issued_at: Timestamp::from_millis(self.issued_at),
            expires_at: Timestamp::from_millis(self.expires_at),
            rotated,
        })
    }

    async fn insert(&self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oidc_refresh_tokens (hash, family, client, subject, scopes, issued_at,
               expires_at, rotated_at, successor, sealed_successor)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&self.hash)
        .bind(&self.family)
        .bind(&self.client)
        .bind(&self.subject)
        .bind(&self.scopes)
        .bind(self.issued_at)
        .bind(self.expires_at)
        .bind(self.rotated_at)
        .bind(&self.successor)
        .bind(&self.sealed_successor)
        .execute(conn)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}

/// The token with hash `hex`, read on `conn` (inside the caller's transaction, if any).
async fn token_of(
    conn: &mut SqliteConnection,
    hex: &str,
) -> Result<Option<RefreshToken>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM oidc_refresh_tokens WHERE hash = ?1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(hex)
        .fetch_optional(conn)
        .await
        .map_err(unavailable)?;
    row.as_ref()
        .map(|row| {
            RefreshTokenRow::read(row)
                .map_err(unavailable)?
                .into_token()
        })
        .transpose()
}

/// Stores the first token of a family.
struct AddToken(RefreshTokenRow);

impl Write for AddToken {
    type Output = ();

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()> {
        Box::pin(self.0.insert(conn))
    }
}

/// Rotates the token with hash `hex` to `successor`.
struct RotateToken {
    hex: String,
    successor: RefreshTokenRow,
    sealed_successor: String,
}

impl Write for RotateToken {
    type Output = Rotation;

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, Rotation> {
        Box::pin(async move {
            let next = &self.successor;
            // One statement marks the token if it is current and answers it (as marked: the
            // token as it was is that without its rotation); only when none is marked is the
            // row read to tell a rotated token from an unknown one.
            let sql = format!(
                "UPDATE oidc_refresh_tokens
                 SET rotated_at = ?2, successor = ?3, sealed_successor = ?4
                 WHERE hash = ?1 AND family = ?5 AND rotated_at IS NULL
                 RETURNING {COLUMNS}"
            );
            let marked = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&self.hex)
                .bind(next.issued_at)
                .bind(&next.hash)
                .bind(&self.sealed_successor)
                .bind(&next.family)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
            let Some(marked) = marked else {
                return Ok(match token_of(conn, &self.hex).await? {
                    Some(old) if old.family.as_str() == next.family && old.rotated.is_some() => {
                        Rotation::AlreadyRotated(old)
                    }
                    _ => Rotation::Unknown,
                });
            };
            let mut old = RefreshTokenRow::read(&marked)
                .map_err(unavailable)?
                .into_token()?;
            old.rotated = None;
            next.insert(conn).await?;
            Ok(Rotation::Rotated(old))
        })
    }
}

/// Forgets a family, or the tokens expired before a time; answers how many went.
enum DeleteTokens {
    Family(String),
    ExpiredBefore(i64),
}

impl Write for DeleteTokens {
    type Output = u64;

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, u64> {
        Box::pin(async move {
            let delete = match self {
                DeleteTokens::Family(family) => {
                    sqlx::query("DELETE FROM oidc_refresh_tokens WHERE family = ?1").bind(family)
                }
                DeleteTokens::ExpiredBefore(before) => {
                    sqlx::query("DELETE FROM oidc_refresh_tokens WHERE expires_at < ?1")
                        .bind(*before)
                }
            };
            let done = delete.execute(conn).await.map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}

impl RefreshTokenStore for SqliteRefreshTokenStore {
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            let row = RefreshTokenRow::of(&token)?;
            self.writer.write(AddToken(row)).await
        })
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
        successor: RefreshToken,
        sealed_successor: String,
    ) -> ProviderFuture<'a, Rotation> {
        Box::pin(async move {
            let rotate = RotateToken {
                hex: hash.to_hex(),
                successor: RefreshTokenRow::of(&successor)?,
                sealed_successor,
            };
            self.writer.write(rotate).await
        })
    }

    fn refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<RefreshToken>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            token_of(&mut conn, &hash.to_hex()).await
        })
    }

    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64> {
        Box::pin(
            self.writer
                .write(DeleteTokens::Family(family.as_str().to_owned())),
        )
    }

    fn forget_refresh_tokens(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(
            self.writer
                .write(DeleteTokens::ExpiredBefore(before.as_millis())),
        )
    }
}
