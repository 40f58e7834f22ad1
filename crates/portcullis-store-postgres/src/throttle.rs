//! Failure counts of sign-in in `pc_throttle`, beside the sessions, one row per key.
//!
//! Each attempt makes sure its key has a row (`INSERT … ON CONFLICT DO NOTHING`), locks it
//! (`SELECT … FOR UPDATE`) and writes the row [`Strikes::count`] makes of it, all in one
//! transaction: attempts on one key from any node count one after another, and the rule stays
//! in Rust, written once.

use portcullis_core::{
    BackendError, Strikes, ThrottleFuture, ThrottleRules, ThrottleStore, Timestamp, UserStoreError,
    Verdict,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

/// The failure counts beside the sessions (see [`crate::PostgresStore::throttle`]).
#[derive(Debug, Clone)]
pub struct PostgresThrottleStore {
    pool: PgPool,
}

impl PostgresThrottleStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One row of `pc_throttle`: the fields of [`Strikes`], times in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThrottleRow {
    failures: i64,
    last_failure: i64,
    blocked_until: i64,
    /// [`Strikes::expires_at`] under the rules the row was counted with.
    expires_at: i64,
}

impl ThrottleRow {
    /// The row an attempt inserts before locking it when its key has none: no failures, long
    /// expired, which [`Strikes::count`] counts from exactly as it counts from no record.
    const PLACEHOLDER: Self = Self {
        failures: 0,
        last_failure: 0,
        blocked_until: 0,
        expires_at: 0,
    };

    fn of(strikes: &Strikes, rules: &ThrottleRules) -> Self {
        Self {
            failures: i64::from(strikes.failures),
            last_failure: strikes.last_failure.as_millis(),
            blocked_until: strikes.blocked_until.as_millis(),
            expires_at: strikes.expires_at(rules).as_millis(),
        }
    }

    /// Reads a row selected as `failures, last_failure, blocked_until, expires_at`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            failures: row.try_get(0)?,
            last_failure: row.try_get(1)?,
            blocked_until: row.try_get(2)?,
            expires_at: row.try_get(3)?,
        })
    }

    fn strikes(&self) -> Result<Strikes, UserStoreError> {
        Ok(Strikes {
            failures: u32::try_from(self.failures).map_err(|e| {
                UserStoreError::Corrupt(format!("throttle row: failures {}: {e}", self.failures))
            })?,
            last_failure: Timestamp::from_millis(self.last_failure),
            blocked_until: Timestamp::from_millis(self.blocked_until),
        })
    }
}

fn unavailable(err: sqlx::Error) -> UserStoreError {
    UserStoreError::Unavailable(BackendError::new(err))
}

/// The row of `key`, locked until the caller's transaction ends.
async fn lock_row(
    conn: &mut PgConnection,
    key: &str,
) -> Result<Option<ThrottleRow>, UserStoreError> {
    let row = sqlx::query(
        "SELECT failures, last_failure, blocked_until, expires_at FROM pc_throttle
         WHERE key = $1 FOR UPDATE",
    )
    .bind(key)
    .fetch_optional(conn)
    .await
    .map_err(unavailable)?;
    row.as_ref()
        .map(ThrottleRow::read)
        .transpose()
        .map_err(unavailable)
}

impl ThrottleStore for PostgresThrottleStore {
    fn attempt<'a>(
        &'a self,
        key: &'a str,
        rules: &'a ThrottleRules,
        now: Timestamp,
    ) -> ThrottleFuture<'a, Verdict> {
        Box::pin(crate::bounded(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            let placeholder = ThrottleRow::PLACEHOLDER;
            // Waits for a concurrent first attempt's insert to commit, so the lock below
            // always finds a row.
            sqlx::query(
                "INSERT INTO pc_throttle (key, failures, last_failure, blocked_until, expires_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(placeholder.failures)
            .bind(placeholder.last_failure)
            .bind(placeholder.blocked_until)
            .bind(placeholder.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            let before = lock_row(&mut tx, key)
                .await?
                .map(|row| row.strikes())
                .transpose()?;
            let (after, verdict) = Strikes::count(before, rules, now);
            // A refused attempt changes nothing.
            if before != Some(after) {
                let row = ThrottleRow::of(&after, rules);
                sqlx::query(
                    "UPDATE pc_throttle SET failures = $2, last_failure = $3, blocked_until = $4,
                       expires_at = $5
                     WHERE key = $1",
                )
                .bind(key)
                .bind(row.failures)
                .bind(row.last_failure)
                .bind(row.blocked_until)
                .bind(row.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(verdict)
        }))
    }

    fn refund<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(crate::bounded(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            if let Some(row) = lock_row(&mut tx, key).await? {
                let refunded = row.strikes()?.refund();
                // `expires_at` stays: the refunded record expires no later (its block is gone),
                // and a row kept a little longer still reads as forgotten once it is.
                sqlx::query(
                    "UPDATE pc_throttle SET failures = $2, blocked_until = $3 WHERE key = $1",
                )
                .bind(key)
                .bind(i64::from(refunded.failures))
                .bind(refunded.blocked_until.as_millis())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        }))
    }

    fn clear<'a>(&'a self, key: &'a str) -> ThrottleFuture<'a, ()> {
        Box::pin(crate::bounded(async move {
            sqlx::query("DELETE FROM pc_throttle WHERE key = $1")
                .bind(key)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(())
        }))
    }

    fn forget_expired(&self, now: Timestamp) -> ThrottleFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM pc_throttle WHERE expires_at <= $1")
                .bind(now.as_millis())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}
