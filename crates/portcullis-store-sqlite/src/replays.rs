//! One-time identifiers in the same SQLite file: a row per identifier, recorded by one
//! `INSERT … ON CONFLICT DO NOTHING`, which only the first use changes.

use portcullis_core::oidc::{ProviderFuture, ReplayStore};
use portcullis_core::{Timestamp, TokenHash};
use sqlx::SqlitePool;

use crate::unavailable;

/// The one-time identifiers of the embedded store (see [`crate::SqliteJournal::replays`]).
#[derive(Debug, Clone)]
pub struct SqliteReplayStore {
    pool: SqlitePool,
}

impl SqliteReplayStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

impl ReplayStore for SqliteReplayStore {
    fn first_use<'a>(
        &'a self,
        id: &'a TokenHash,
        _now: Timestamp,
        until: Timestamp,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let done = sqlx::query(
                "INSERT INTO oidc_replays (hash, until) VALUES (?1, ?2) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(id.to_hex())
            .bind(until.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn forget_uses(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM oidc_replays WHERE until < ?1")
                .bind(before.as_millis())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}
