//! Authorization codes in `pc_codes`: the code as issued as JSON (its stored form,
//! [`StoredCode`]) beside the columns a redemption and the sweep need.
//!
//! A redemption is one `UPDATE … WHERE redeemed_for IS NULL`: PostgreSQL locks the row, and a
//! racing redemption on any node waits for that lock, then finds the column set and updates
//! nothing; exactly one redemption comes back first.

use portcullis_core::oidc::{AuthorizationCode, CodeStore, ProviderFuture, Redemption};
use portcullis_core::{PublicId, SessionId, StoreError, StoredCode, Timestamp, TokenHash};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::unavailable;

/// The authorization codes beside the sessions (see [`crate::PostgresStore::codes`]).
#[derive(Debug, Clone)]
pub struct PostgresCodeStore {
    pool: PgPool,
}

impl PostgresCodeStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One row of `pc_codes`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodeRow {
    hash: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    expires_at: i64,
    redeemed_for: Option<String>,
    /// [`StoredCode`] JSON.
    body: String,
}

impl CodeRow {
    fn of(code: &AuthorizationCode) -> Result<Self, StoreError> {
        Ok(Self {
            hash: code.hash.0.to_vec(),
            expires_at: code.expires_at.as_millis(),
            redeemed_for: code.redeemed_for.as_ref().map(|s| s.as_str().to_owned()),
            body: StoredCode::encode(code)?,
        })
    }

    /// Reads the `body, redeemed_for` a redemption selects (the key columns are not needed).
    fn read_redemption(row: &PgRow) -> Result<(String, Option<String>), sqlx::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The code whose body is `body`, redeemed as the column says.
    fn code(body: &str, redeemed_for: Option<String>) -> Result<AuthorizationCode, StoreError> {
        let mut code = StoredCode::decode(body)?;
        code.redeemed_for = redeemed_for.map(PublicId::from_string);
        Ok(code)
    }
}

impl CodeStore for PostgresCodeStore {
    fn add_code(&self, code: AuthorizationCode) -> ProviderFuture<'_, ()> {
        Box::pin(crate::bounded(async move {
            let row = CodeRow::of(&code)?;
            // A plain INSERT: a second code with the same 256-bit hash is an error, never a
            // silent replacement of a code that may have been redeemed.
            sqlx::query(
                "INSERT INTO pc_codes (hash, expires_at, redeemed_for, body)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&row.hash)
            .bind(row.expires_at)
            .bind(&row.redeemed_for)
            .bind(&row.body)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn redeem_code<'a>(
        &'a self,
        hash: &'a TokenHash,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Redemption> {
        Box::pin(crate::bounded(async move {
            let won = sqlx::query(
                "UPDATE pc_codes SET redeemed_for = $2
                 WHERE hash = $1 AND redeemed_for IS NULL
                 RETURNING body, redeemed_for",
            )
            .bind(&hash.0[..])
            .bind(session.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            if let Some(row) = won {
                let (body, redeemed_for) = CodeRow::read_redemption(&row).map_err(unavailable)?;
                return Ok(Redemption::First(CodeRow::code(&body, redeemed_for)?));
            }
            // A statement of its own, so its snapshot is taken after the UPDATE above: a
            // redemption that won while that UPDATE waited for the row is seen here with its
            // session (one statement, e.g. a CTE, would read the row as it was before).
            let had = sqlx::query("SELECT body, redeemed_for FROM pc_codes WHERE hash = $1")
                .bind(&hash.0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            let Some(row) = had else {
                return Ok(Redemption::Unknown);
            };
            let (body, redeemed_for) = CodeRow::read_redemption(&row).map_err(unavailable)?;
            if redeemed_for.is_none() {
                return Err(StoreError::Corrupt(
                    "authorization code: neither redeemed nor redeemable".into(),
                ));
            }
            Ok(Redemption::Replayed(CodeRow::code(&body, redeemed_for)?))
        }))
    }

    fn find_code<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> ProviderFuture<'a, Option<AuthorizationCode>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query("SELECT body, redeemed_for FROM pc_codes WHERE hash = $1")
                .bind(&hash.0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let (body, redeemed_for) = CodeRow::read_redemption(&row).map_err(unavailable)?;
            Ok(Some(CodeRow::code(&body, redeemed_for)?))
        }))
    }

    fn forget_codes(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM pc_codes WHERE expires_at < $1")
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

    #[test]
    fn the_column_is_what_a_code_was_redeemed_for() {
        let code = AuthorizationCode {
            hash: TokenHash([3; 32]),
            client: PublicId::from_string("app_rp".into()),
            subject: "usr_a".into(),
            sso_session: PublicId::from_string("ses_sso".into()),
            redirect_uri: "https://rp.example/cb".into(),
            scopes: vec!["openid".into()],
            nonce: None,
            code_challenge: None,
            auth_time: Timestamp::from_millis(1),
            acr: None,
            amr: Vec::new(),
            issued_at: Timestamp::from_millis(2),
            expires_at: Timestamp::from_millis(60_002),
            redeemed_for: None,
        };
        let row = CodeRow::of(&code).unwrap();
        assert_eq!(row.expires_at, 60_002);
        assert_eq!(row.redeemed_for, None);
        let redeemed = CodeRow::code(&row.body, Some("ses_app".into())).unwrap();
        assert_eq!(
            redeemed,
            AuthorizationCode {
                redeemed_for: Some(PublicId::from_string("ses_app".into())),
                ..code
            }
        );
    }
}
