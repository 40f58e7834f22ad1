//! Back-channel logout deliveries in the same SQLite file as the sessions, one row each. The
//! journal adds a delivery in the transaction that ends its session ([`insert_new`]); a claim
//! is one `UPDATE … RETURNING` (SQLite runs writers one at a time, across connections and
//! processes, so two claims never take the same delivery), and an attempt is recorded in one
//! `BEGIN IMMEDIATE` transaction.

use portcullis_core::oidc::{
    Attempt, DeliveryQuery, DeliveryState, LogoutDelivery, LogoutDeliveryStore, ProviderFuture,
};
use portcullis_core::{DeliveryRow, SessionId, StoreError, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::unavailable;

/// The columns of `oidc_deliveries`, in [`DeliveryRow`]'s order.
const COLUMNS: &str = "session, sso_session, subject, client, reason, ended_at, state, attempts,
    next_attempt_at, last_error, uri, alg";

/// The back-channel logout deliveries of the embedded store (see
/// [`crate::SqliteJournal::deliveries`]).
#[derive(Debug, Clone)]
pub struct SqliteDeliveryStore {
    pool: SqlitePool,
}

impl SqliteDeliveryStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// The columns of one row, in [`COLUMNS`]' order.
fn read_row(row: &SqliteRow) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        session: row.try_get(0)?,
        sso_session: row.try_get(1)?,
        subject: row.try_get(2)?,
        client: row.try_get(3)?,
        reason: row.try_get(4)?,
        ended_at: row.try_get(5)?,
        state: row.try_get(6)?,
        attempts: row.try_get(7)?,
        next_attempt_at: row.try_get(8)?,
        last_error: row.try_get(9)?,
        uri: row.try_get(10)?,
        alg: row.try_get(11)?,
    })
}

fn read_all(rows: &[SqliteRow]) -> Result<Vec<LogoutDelivery>, StoreError> {
    rows.iter()
        .map(|row| read_row(row).map_err(unavailable)?.into_delivery())
        .collect()
}

/// Writes `delivery` in the caller's transaction, unless its session already has one.
pub(crate) async fn insert_new(
    conn: &mut SqliteConnection,
    delivery: &LogoutDelivery,
) -> Result<(), StoreError> {
    let row = DeliveryRow::of(delivery);
    write(
        conn,
        &row,
        "INSERT INTO oidc_deliveries (session, sso_session, subject, client, reason, ended_at,
           state, attempts, next_attempt_at, last_error, uri, alg)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (session) DO NOTHING",
    )
    .await
}

async fn write(
    conn: &mut SqliteConnection,
    row: &DeliveryRow,
    sql: &'static str,
) -> Result<(), StoreError> {
    sqlx::query(sql)
        .bind(&row.session)
        .bind(&row.sso_session)
        .bind(&row.subject)
        .bind(&row.client)
        .bind(&row.reason)
        .bind(row.ended_at)
        .bind(&row.state)
        .bind(row.attempts)
        .bind(row.next_attempt_at)
        .bind(&row.last_error)
        .bind(&row.uri)
        .bind(&row.alg)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

const REPLACE: &str = "UPDATE oidc_deliveries SET sso_session = ?2, subject = ?3, client = ?4,
    reason = ?5, ended_at = ?6, state = ?7, attempts = ?8, next_attempt_at = ?9, last_error = ?10,
    uri = ?11, alg = ?12 WHERE session = ?1";

impl SqliteDeliveryStore {
    /// Changes the delivery of `session` to what `next` makes of it, in one `BEGIN IMMEDIATE`
    /// transaction (the write lock is taken before the read).
    async fn change(
        &self,
        session: &SessionId,
        next: impl FnOnce(&LogoutDelivery) -> Option<LogoutDelivery>,
    ) -> Result<Option<LogoutDelivery>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        let outcome = async {
            let sql = format!("SELECT {COLUMNS} FROM oidc_deliveries WHERE session = ?1");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(session.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let current = read_row(&row).map_err(unavailable)?.into_delivery()?;
            let Some(changed) = next(&current) else {
                return Ok(None);
            };
            write(&mut conn, &DeliveryRow::of(&changed), REPLACE).await?;
            Ok(Some(changed))
        }
        .await;
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        sqlx::query(end)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        outcome
    }
}

impl LogoutDeliveryStore for SqliteDeliveryStore {
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> ProviderFuture<'_, Vec<LogoutDelivery>> {
        Box::pin(async move {
            let sql = format!(
                "UPDATE oidc_deliveries SET next_attempt_at = ?1
                 WHERE session IN (SELECT session FROM oidc_deliveries
                   WHERE state = 'pending' AND next_attempt_at <= ?2
                   ORDER BY next_attempt_at, session LIMIT ?3)
                 RETURNING {COLUMNS}"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lease_until.as_millis())
                .bind(now.as_millis())
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            read_all(&rows)
        })
    }

    fn record_attempt<'a>(
        &'a self,
        session: &'a SessionId,
        attempt: &'a Attempt,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(self.change(session, |d| d.after(attempt)))
    }

    fn retry_delivery<'a>(
        &'a self,
        session: &'a SessionId,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(self.change(session, move |d| d.retried(now)))
    }

    fn delivery<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(async move {
            let sql = format!("SELECT {COLUMNS} FROM oidc_deliveries WHERE session = ?1");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(session.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(read_all(&rows)?.pop())
        })
    }

    fn deliveries<'a>(
        &'a self,
        query: &'a DeliveryQuery,
    ) -> ProviderFuture<'a, Vec<LogoutDelivery>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM oidc_deliveries
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR client = ?2)
                 ORDER BY ended_at DESC, session LIMIT ?3"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(query.state.map(DeliveryState::as_str))
                .bind(query.client.as_ref().map(|c| c.as_str()))
                .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            read_all(&rows)
        })
    }

    fn pending_deliveries(&self) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let count: i64 =
                sqlx::query("SELECT COUNT(*) FROM oidc_deliveries WHERE state = 'pending'")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?
                    .get(0);
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    fn forget_deliveries(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM oidc_deliveries WHERE state <> 'pending' AND next_attempt_at < ?1",
            )
            .bind(before.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}
