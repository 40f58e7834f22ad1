//! One-time identifiers in `pc_replays`: a row per identifier, recorded by one `INSERT … ON
//! CONFLICT DO NOTHING`, which only the first use changes, whichever node makes it.

use portcullis_core::oidc::{ProviderFuture, ReplayStore};
use portcullis_core::{Timestamp, TokenHash};
use sqlx::PgPool;

use crate::unavailable;

/// The one-time identifiers beside the sessions (see [`crate::PostgresStore::replays`]).
#[derive(Debug, Clone)]
pub struct PostgresReplayStore {
    pool: PgPool,
}

impl PostgresReplayStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl ReplayStore for PostgresReplayStore {
    fn first_use<'a>(
        &'a self,
        id: &'a TokenHash,
        _now: Timestamp,
        until: Timestamp,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let done = sqlx::query(
                "INSERT INTO pc_replays (hash, until) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(&id.0[..])
            .bind(until.as_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        }))
    }

    fn forget_uses(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM pc_replays WHERE until < $1")
                .bind(before.as_millis())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}
