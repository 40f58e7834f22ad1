//! Refresh tokens in the same SQLite file as the sessions, one row per token, every field a
//! column.
//!
//! Every write goes through the file's writer task ([`crate::writer`]), inside its
//! `BEGIN IMMEDIATE` transaction: rotations arriving together share one commit. The current
//! (not yet rotated) token of every family is also kept in memory ([`CurrentTokens`]), changed
//! by the writer after each commit in commit order, so a refresh reads its token without a
//! query; a rotated or unknown token is read from SQLite. The server is the file's only writer
//! (ARCHITECTURE), so the copy is what the file holds; a copy a moment behind a commit is
//! harmless, since the rotation itself is decided in the writer's transaction. A rotation marks
//! the old token's row if it is not rotated yet and inserts the successor in that transaction,
//! which holds the file's write lock, so racing rotations (from any task or process) run one
//! after another, only the first finds the token current and only its successor is stored.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use portcullis_core::oidc::{ProviderFuture, RefreshToken, RefreshTokenStore, Rotated, Rotation};
use portcullis_core::{PublicId, SessionId, StoreError, Timestamp, TokenHash};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::unavailable;
use crate::writer::{Write, WriteFuture, Writer};

/// The refresh tokens of the embedded store (see [`crate::SqliteJournal::refresh_tokens`]).
#[derive(Debug, Clone)]
pub struct SqliteRefreshTokenStore {
    /// For reads of tokens not in `current`.
    pool: SqlitePool,
    writer: Writer,
    current: Arc<Mutex<CurrentTokens>>,
}

impl SqliteRefreshTokenStore {
    pub(crate) fn new(
        pool: SqlitePool,
        writer: Writer,
        current: Arc<Mutex<CurrentTokens>>,
    ) -> Self {
        Self {
            pool,
            writer,
            current,
        }
    }
}

/// The current token of every family, by hash, and which that is for each family (a family has
/// at most one token not rotated).
#[derive(Debug, Default)]
pub(crate) struct CurrentTokens {
    by_hash: HashMap<TokenHash, RefreshToken>,
    by_family: HashMap<PublicId, TokenHash>,
}

impl CurrentTokens {
    /// Every token of the file not rotated yet.
    pub(crate) async fn load(pool: &SqlitePool) -> Result<Self, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM oidc_refresh_tokens WHERE rotated_at IS NULL");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
        let mut current = Self::default();
        for row in &rows {
            current.add(
                RefreshTokenRow::read(row)
                    .map_err(unavailable)?
                    .into_token()?,
            );
        }
        Ok(current)
    }

    fn add(&mut self, token: RefreshToken) {
        if let Some(before) = self.by_family.insert(token.family.clone(), token.hash) {
            self.by_hash.remove(&before);
        }
        self.by_hash.insert(token.hash, token);
    }

    fn remove_family(&mut self, family: &PublicId) {
        if let Some(hash) = self.by_family.remove(family) {
            self.by_hash.remove(&hash);
        }
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
struct AddToken {
    row: RefreshTokenRow,
    token: RefreshToken,
    current: Arc<Mutex<CurrentTokens>>,
}

impl Write for AddToken {
    type Output = ();

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()> {
        Box::pin(self.row.insert(conn))
    }

    fn committed(&self, (): &()) {
        self.current.lock().add(self.token.clone());
    }
}

/// Rotates the token with hash `hex` to `successor`.
struct RotateToken {
    hex: String,
    successor: RefreshTokenRow,
    sealed_successor: String,
    token: RefreshToken,
    current: Arc<Mutex<CurrentTokens>>,
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

    fn committed(&self, found: &Rotation) {
        let mut current = self.current.lock();
        match found {
            Rotation::Rotated(_) => current.add(self.token.clone()),
            // The copy was behind: the token is not current.
            Rotation::AlreadyRotated(old) => {
                if current.by_family.get(&old.family) == Some(&old.hash) {
                    current.remove_family(&old.family);
                }
            }
            Rotation::Unknown => {}
        }
    }
}

/// Forgets a family, or the tokens expired before a time; answers how many went.
struct DeleteTokens {
    which: Deleted,
    current: Arc<Mutex<CurrentTokens>>,
}

enum Deleted {
    Family(PublicId),
    ExpiredBefore(Timestamp),
}

impl Write for DeleteTokens {
    type Output = u64;

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, u64> {
        Box::pin(async move {
            let delete = match &self.which {
                Deleted::Family(family) => {
                    sqlx::query("DELETE FROM oidc_refresh_tokens WHERE family = ?1")
                        .bind(family.as_str())
                }
                Deleted::ExpiredBefore(before) => {
                    sqlx::query("DELETE FROM oidc_refresh_tokens WHERE expires_at < ?1")
                        .bind(before.as_millis())
                }
            };
            let done = delete.execute(conn).await.map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }

    fn committed(&self, _gone: &u64) {
        let mut current = self.current.lock();
        match &self.which {
            Deleted::Family(family) => current.remove_family(family),
            Deleted::ExpiredBefore(before) => {
                let CurrentTokens { by_hash, by_family } = &mut *current;
                by_hash.retain(|_, token| token.expires_at >= *before);
                by_family.retain(|_, hash| by_hash.contains_key(hash));
            }
        }
    }
}

impl RefreshTokenStore for SqliteRefreshTokenStore {
    fn add_refresh_token(&self, token: RefreshToken) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            let add = AddToken {
                row: RefreshTokenRow::of(&token)?,
                token,
                current: Arc::clone(&self.current),
            };
            self.writer.write(add).await
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
                token: successor,
                current: Arc::clone(&self.current),
            };
            self.writer.write(rotate).await
        })
    }

    fn refresh_token<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<RefreshToken>> {
        Box::pin(async move {
            if let Some(token) = self.current.lock().by_hash.get(hash) {
                return Ok(Some(token.clone()));
            }
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            token_of(&mut conn, &hash.to_hex()).await
        })
    }

    fn end_refresh_family<'a>(&'a self, family: &'a SessionId) -> ProviderFuture<'a, u64> {
        Box::pin(self.writer.write(DeleteTokens {
            which: Deleted::Family(family.clone()),
            current: Arc::clone(&self.current),
        }))
    }

    fn forget_refresh_tokens(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(self.writer.write(DeleteTokens {
            which: Deleted::ExpiredBefore(before),
            current: Arc::clone(&self.current),
        }))
    }
}
