//! Authorization codes in the same SQLite file as the sessions, one row per code.
//!
//! Every write goes through the file's writer task ([`crate::writer`]), so codes issued and
//! redeemed together share one commit. A redemption is one
//! `UPDATE … WHERE redeemed_for IS NULL RETURNING body` in the writer's transaction: SQLite runs
//! writers one at a time (across connections and processes), so of racing redemptions exactly
//! one finds the column still empty and changes the row; the others change nothing and read
//! the row as the winner left it.

use portcullis_core::oidc::{AuthorizationCode, CodeStore, ProviderFuture, Redemption};
use portcullis_core::{SessionId, StoredCode, Timestamp, TokenHash};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::unavailable;
use crate::writer::{Write, WriteFuture, Writer};

/// The authorization codes of the embedded store (see [`crate::SqliteJournal::codes`]).
#[derive(Debug, Clone)]
pub struct SqliteCodeStore {
    /// For reads.
    pool: SqlitePool,
    writer: Writer,
}

impl SqliteCodeStore {
    pub(crate) fn new(pool: SqlitePool, writer: Writer) -> Self {
        Self { pool, writer }
    }
}

/// One row of `oidc_codes`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodeRow {
    hash: String,
    /// Milliseconds since the Unix epoch.
    expires_at: i64,
    redeemed_for: Option<String>,
    /// The JSON of [`StoredCode`].
    body: String,
}

impl CodeRow {
    fn of(code: &AuthorizationCode) -> Result<Self, portcullis_core::StoreError> {
        Ok(Self {
            hash: code.hash.to_hex(),
            expires_at: code.expires_at.as_millis(),
            redeemed_for: code.redeemed_for.as_ref().map(|id| id.as_str().to_owned()),
            body: StoredCode::encode(code)?,
        })
    }
}

/// Stores a new code.
struct AddCode(CodeRow);

impl Write for AddCode {
    type Output = ();

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()> {
        Box::pin(async move {
            let row = &self.0;
            sqlx::query(
                "INSERT INTO oidc_codes (hash, expires_at, redeemed_for, body)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(&row.hash)
            .bind(row.expires_at)
            .bind(&row.redeemed_for)
            .bind(&row.body)
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }
}

/// Redeems the code with hash `hex` for the session `session`.
struct RedeemCode {
    hex: String,
    session: String,
}

impl Write for RedeemCode {
    type Output = Redemption;

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, Redemption> {
        Box::pin(async move {
            // The body is kept whole (with its `redeemed_for`), so a replay reads one column.
            let first = sqlx::query(
                "UPDATE oidc_codes SET redeemed_for = ?2,
                   body = json_set(body, '$.redeemed_for', ?2)
                 WHERE hash = ?1 AND redeemed_for IS NULL
                 RETURNING body",
            )
            .bind(&self.hex)
            .bind(&self.session)
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?;
            if let Some(row) = first {
                return Ok(Redemption::First(StoredCode::decode(row.get(0))?));
            }
            // Nothing changed: the code was redeemed before (a redemption is never undone, so
            // this read sees the winner's session) or there is no such code.
            let before = sqlx::query("SELECT body FROM oidc_codes WHERE hash = ?1")
                .bind(&self.hex)
                .fetch_optional(conn)
                .await
                .map_err(unavailable)?;
            match before {
                Some(row) => Ok(Redemption::Replayed(StoredCode::decode(row.get(0))?)),
                None => Ok(Redemption::Unknown),
            }
        })
    }
}

/// Forgets the codes that expired before a time (milliseconds); answers how many went.
struct ForgetCodes(i64);

impl Write for ForgetCodes {
    type Output = u64;

    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM oidc_codes WHERE expires_at < ?1")
                .bind(self.0)
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}

impl CodeStore for SqliteCodeStore {
    fn add_code(&self, code: AuthorizationCode) -> ProviderFuture<'_, ()> {
        Box::pin(async move { self.writer.write(AddCode(CodeRow::of(&code)?)).await })
    }

    fn redeem_code<'a>(
        &'a self,
        hash: &'a TokenHash,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Redemption> {
        Box::pin(self.writer.write(RedeemCode {
            hex: hash.to_hex(),
            session: session.as_str().to_owned(),
        }))
    }

    fn find_code<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<AuthorizationCode>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT body FROM oidc_codes WHERE hash = ?1")
                .bind(hash.to_hex())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.map(|row| StoredCode::decode(row.get(0))).transpose()
        })
    }

    fn forget_codes(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(self.writer.write(ForgetCodes(before.as_millis())))
    }
}
