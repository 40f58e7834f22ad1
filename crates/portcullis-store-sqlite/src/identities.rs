//! Federated identities in the same SQLite file as the sessions, one row of `oidc_identities`
//! per upstream person, keyed by (issuer, subject).
//!
//! A link is one `INSERT … ON CONFLICT DO NOTHING`: the primary key makes the first of racing
//! links win, in any process that opens the file. An unlink is one `DELETE` whose condition
//! counts the account's links when the caller keeps one: SQLite runs writers one at a time, so
//! of two unlinks racing on an account's last two links the second counts what the first left
//! and deletes nothing. Only when nothing was deleted does a read tell the two refusals apart;
//! that read changes nothing, so a change landing between the two statements can only make it
//! name the refusal of a slightly later moment, never remove a link.
//!
//! Upstream sessions are rows of `oidc_upstream_sessions`, written by one upsert that keeps the
//! later `until` for the same person; each write first forgets up to [`FORGET_AT_ONCE`] that
//! ran out, so the table holds about the sessions that can still matter.

use portcullis_core::oidc::{
    FederatedIdentity, IdentityStore, ProviderFuture, Unlinked, UpstreamSession,
};
use portcullis_core::{StoreError, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use crate::unavailable;

/// How many upstream sessions that ran out one write forgets.
const FORGET_AT_ONCE: i64 = 64;

/// The federated identities of the embedded store (see [`crate::SqliteJournal::identities`]).
#[derive(Debug, Clone)]
pub struct SqliteIdentityStore {
    pool: SqlitePool,
}

impl SqliteIdentityStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// One row of `oidc_identities`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IdentityRow {
    issuer: String,
    subject: String,
    user_id: String,
    provider: String,
    /// Milliseconds since the Unix epoch.
    linked_at: i64,
}

/// The columns [`IdentityRow::read`] expects, in order.
const COLUMNS: &str = "issuer, subject, user_id, provider, linked_at";

impl IdentityRow {
    fn of(identity: &FederatedIdentity) -> Self {
        Self {
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            user_id: identity.user_id.clone(),
            provider: identity.provider.clone(),
            linked_at: identity.linked_at.as_millis(),
        }
    }

    /// Reads a row selected with [`COLUMNS`].
    fn read(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            issuer: row.try_get(0)?,
            subject: row.try_get(1)?,
            user_id: row.try_get(2)?,
            provider: row.try_get(3)?,
            linked_at: row.try_get(4)?,
        })
    }

    fn into_identity(self) -> FederatedIdentity {
        FederatedIdentity {
            user_id: self.user_id,
            provider: self.provider,
            issuer: self.issuer,
            subject: self.subject,
            linked_at: Timestamp::from_millis(self.linked_at),
        }
    }
}

fn identity_of(row: &SqliteRow) -> Result<FederatedIdentity, StoreError> {
    Ok(IdentityRow::read(row).map_err(unavailable)?.into_identity())
}

impl IdentityStore for SqliteIdentityStore {
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let row = IdentityRow::of(identity);
            let sql = format!(
                "INSERT INTO oidc_identities ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (issuer, subject) DO NOTHING"
            );
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&row.issuer)
                .bind(&row.subject)
                .bind(&row.user_id)
                .bind(&row.provider)
                .bind(row.linked_at)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn identity<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
    ) -> ProviderFuture<'a, Option<FederatedIdentity>> {
        Box::pin(async move {
            let sql =
                format!("SELECT {COLUMNS} FROM oidc_identities WHERE issuer = ?1 AND subject = ?2");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(issuer)
                .bind(subject)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.as_ref().map(identity_of).transpose()
        })
    }

    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>> {
        Box::pin(async move {
            // SQLite's BINARY collation orders by bytes, as `str`'s `Ord` does.
            let sql = format!(
                "SELECT {COLUMNS} FROM oidc_identities WHERE user_id = ?1
                 ORDER BY linked_at, issuer, subject"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter().map(identity_of).collect()
        })
    }

    fn unlink<'a>(
        &'a self,
        user_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
        keep_one: bool,
    ) -> ProviderFuture<'a, Unlinked> {
        Box::pin(async move {
            // The count is read by the DELETE itself, inside SQLite's one writer at a time: no
            // other unlink can remove a link between the count and the deletion.
            let done = sqlx::query(
                "DELETE FROM oidc_identities
                 WHERE issuer = ?1 AND subject = ?2 AND user_id = ?3
                   AND (NOT ?4 OR (SELECT count(*) FROM oidc_identities WHERE user_id = ?3) > 1)",
            )
            .bind(issuer)
            .bind(subject)
            .bind(user_id)
            .bind(keep_one)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            if done.rows_affected() == 1 {
                return Ok(Unlinked::Done);
            }
            if !keep_one {
                return Ok(Unlinked::NotLinked);
            }
            let linked = sqlx::query(
                "SELECT 1 FROM oidc_identities WHERE issuer = ?1 AND subject = ?2 AND user_id = ?3",
            )
            .bind(issuer)
            .bind(subject)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(if linked.is_some() {
                Unlinked::LastOne
            } else {
                Unlinked::NotLinked
            })
        })
    }

    fn remember_session<'a>(
        &'a self,
        session: &'a UpstreamSession,
        now: Timestamp,
    ) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM oidc_upstream_sessions WHERE rowid IN
                   (SELECT rowid FROM oidc_upstream_sessions WHERE until <= ?1 LIMIT ?2)",
            )
            .bind(now.as_millis())
            .bind(FORGET_AT_ONCE)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO oidc_upstream_sessions (issuer, sid, subject, until)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (issuer, sid) DO UPDATE SET
                   until = CASE WHEN subject = excluded.subject
                           THEN max(until, excluded.until) ELSE excluded.until END,
                   subject = excluded.subject",
            )
            .bind(&session.issuer)
            .bind(&session.sid)
            .bind(&session.subject)
            .bind(session.until.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }

    fn session_subject<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<String>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT subject FROM oidc_upstream_sessions
                 WHERE issuer = ?1 AND sid = ?2 AND until > ?3",
            )
            .bind(issuer)
            .bind(sid)
            .bind(now.as_millis())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.map(|row| row.try_get::<String, _>(0).map_err(unavailable))
                .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_round_trips_through_the_row() {
        let identity = FederatedIdentity {
            user_id: "usr_a".into(),
            provider: "corp".into(),
            issuer: "https://idp.example/realms/é".into(),
            subject: "248289761001".into(),
            linked_at: Timestamp::from_millis(42),
        };
        let row = IdentityRow::of(&identity);
        assert_eq!(row.linked_at, 42, "times are kept as milliseconds");
        assert_eq!(row.into_identity(), identity);
    }
}
