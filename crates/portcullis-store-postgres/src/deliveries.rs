//! Back-channel logout deliveries in `pc_deliveries`, one row each, every field a column. The
//! store adds a delivery in the transaction that ends its session ([`insert_new`]); a claim is
//! one `UPDATE` of rows picked `FOR UPDATE SKIP LOCKED`, so claims racing on any nodes never take
//! the same delivery, and an attempt is recorded under the row's lock.

use portcullis_core::oidc::{
    Attempt, DeliveryQuery, DeliveryState, LogoutDelivery, LogoutDeliveryStore, ProviderFuture,
};
use portcullis_core::{DeliveryRow, SessionId, StoreError, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::unavailable;

/// The columns of `pc_deliveries`, in [`DeliveryRow`]'s order.
const COLUMNS: &str = "session, sso_session, subject, client, reason, ended_at, state, attempts,
    next_attempt_at, last_error, uri, alg";

/// The back-channel logout deliveries of the embedded store (see
/// [`crate::PostgresStore::deliveries`]).
#[derive(Debug, Clone)]
pub struct PostgresDeliveryStore {
    pool: PgPool,
}

impl PostgresDeliveryStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The columns of one row, in [`COLUMNS`]' order.
fn read_row(row: &PgRow) -> Result<DeliveryRow, sqlx::Error> {
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

fn read_all(rows: &[PgRow]) -> Result<Vec<LogoutDelivery>, StoreError> {
    rows.iter()
        .map(|row| read_row(row).map_err(unavailable)?.into_delivery())
        .collect()
}

/// Writes `delivery` in the caller's transaction, unless its session already has one.
pub(crate) async fn insert_new(
    conn: &mut PgConnection,
    delivery: &LogoutDelivery,
) -> Result<(), StoreError> {
    let row = DeliveryRow::of(delivery);
    write(
        conn,
        &row,
        "INSERT INTO pc_deliveries (session, sso_session, subject, client, reason, ended_at,
           state, attempts, next_attempt_at, last_error, uri, alg)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (session) DO NOTHING",
    )
    .await
}

async fn write(
    conn: &mut PgConnection,
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

const REPLACE: &str = "UPDATE pc_deliveries SET sso_session = $2, subject = $3, client = $4,
    reason = $5, ended_at = $6, state = $7, attempts = $8, next_attempt_at = $9, last_error = $10,
    uri = $11, alg = $12 WHERE session = $1";

impl PostgresDeliveryStore {
    /// Changes the delivery of `session` to what `next` makes of it, under its row lock.
    async fn change(
        &self,
        session: &SessionId,
        next: impl FnOnce(&LogoutDelivery) -> Option<LogoutDelivery>,
    ) -> Result<Option<LogoutDelivery>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let sql = format!("SELECT {COLUMNS} FROM pc_deliveries WHERE session = $1 FOR UPDATE");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let current = read_row(&row).map_err(unavailable)?.into_delivery()?;
        let Some(changed) = next(&current) else {
            return Ok(None);
        };
        write(&mut tx, &DeliveryRow::of(&changed), REPLACE).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(changed))
    }
}

impl LogoutDeliveryStore for PostgresDeliveryStore {
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> ProviderFuture<'_, Vec<LogoutDelivery>> {
        Box::pin(crate::bounded(async move {
            let sql = format!(
                "UPDATE pc_deliveries SET next_attempt_at = $1
                 WHERE session IN (SELECT session FROM pc_deliveries
                   WHERE state = 'pending' AND next_attempt_at <= $2
                   ORDER BY next_attempt_at, session COLLATE \"C\" LIMIT $3
                   FOR UPDATE SKIP LOCKED)
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
        }))
    }

    fn record_attempt<'a>(
        &'a self,
        session: &'a SessionId,
        attempt: &'a Attempt,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(crate::bounded(self.change(session, |d| d.after(attempt))))
    }

    fn retry_delivery<'a>(
        &'a self,
        session: &'a SessionId,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(crate::bounded(
            self.change(session, move |d| d.retried(now)),
        ))
    }

    fn delivery<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(crate::bounded(async move {
            let sql = format!("SELECT {COLUMNS} FROM pc_deliveries WHERE session = $1");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(session.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(read_all(&rows)?.pop())
        }))
    }

    fn deliveries<'a>(
        &'a self,
        query: &'a DeliveryQuery,
    ) -> ProviderFuture<'a, Vec<LogoutDelivery>> {
        Box::pin(crate::bounded(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM pc_deliveries
                 WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR client = $2)
                 ORDER BY ended_at DESC, session COLLATE \"C\" LIMIT $3"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(query.state.map(DeliveryState::as_str))
                .bind(query.client.as_ref().map(|c| c.as_str()))
                .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            read_all(&rows)
        }))
    }

    fn pending_deliveries(&self) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let count: i64 =
                sqlx::query("SELECT COUNT(*) FROM pc_deliveries WHERE state = 'pending'")
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
                "DELETE FROM pc_deliveries WHERE state <> 'pending' AND next_attempt_at < $1",
            )
            .bind(before.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}
