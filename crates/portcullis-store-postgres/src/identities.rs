//! Federated identities in `pc_identities`, one row per upstream person, keyed by (issuer,
//! subject).
//!
//! A link is one `INSERT … ON CONFLICT DO NOTHING`: the primary key makes exactly one of links
//! racing on any nodes insert the row (the others wait for it and then find it).
//!
//! An unlink that keeps one must count the account's links and delete one as one step, which a
//! single statement cannot promise under PostgreSQL's default isolation (two `DELETE`s each
//! counting two links in their own snapshot would both go ahead). So it takes a
//! transaction-scoped advisory lock on the account ([`ACCOUNT_LOCK_SEED`]), then counts the
//! account's links (and whether this one is among them) in one statement and deletes in the
//! next, in the same transaction: the count's snapshot is taken after the lock is granted, so
//! it sees whatever the unlink before it committed, and the next unlink of the account waits
//! for this one's commit. Links do not take the lock: a link only adds to the count, which can
//! make an unlink refuse, never let one remove the last link.
//!
//! Upstream sessions are rows of `pc_upstream_sessions`, written by one upsert that keeps the
//! later `until_ms` for the same person; each write first forgets up to [`FORGET_AT_ONCE`] that
//! ran out (`SKIP LOCKED`: writers on other nodes forget others).

use portcullis_core::oidc::{
    FederatedIdentity, IdentityStore, ProviderFuture, Unlinked, UpstreamSession,
};
use portcullis_core::{StoreError, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::unavailable;

/// Seed of `hashtextextended` for an account's advisory lock (subjects' locks use 7, refresh
/// token families' 11), so an account and a subject or family with the same text (a person's
/// sessions have their account's id as subject) do not share a lock.
const ACCOUNT_LOCK_SEED: i64 = 13;

/// How many upstream sessions that ran out one write forgets.
const FORGET_AT_ONCE: i64 = 64;

/// The federated identities beside the sessions (see [`crate::PostgresStore::identities`]).
#[derive(Debug, Clone)]
pub struct PostgresIdentityStore {
    pool: PgPool,
}

impl PostgresIdentityStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One row of `pc_identities`.
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
macro_rules! columns {
    () => {
        "issuer, subject, user_id, provider, linked_at"
    };
}

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

    /// Reads a row selected with `columns!()`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
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

fn decode(row: &PgRow) -> Result<FederatedIdentity, StoreError> {
    Ok(IdentityRow::read(row).map_err(unavailable)?.into_identity())
}

impl IdentityStore for PostgresIdentityStore {
    fn link<'a>(&'a self, identity: &'a FederatedIdentity) -> ProviderFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let row = IdentityRow::of(identity);
            let done = sqlx::query(concat!(
                "INSERT INTO pc_identities (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer, subject) DO NOTHING"
            ))
            .bind(&row.issuer)
            .bind(&row.subject)
            .bind(&row.user_id)
            .bind(&row.provider)
            .bind(row.linked_at)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        }))
    }

    fn identity<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
    ) -> ProviderFuture<'a, Option<FederatedIdentity>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_identities WHERE issuer = $1 AND subject = $2"
            ))
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.as_ref().map(decode).transpose()
        }))
    }

    fn identities_of<'a>(&'a self, user_id: &'a str) -> ProviderFuture<'a, Vec<FederatedIdentity>> {
        Box::pin(crate::bounded(async move {
            // `COLLATE "C"`: byte order, the order of Rust's `str` that the trait promises,
            // whatever the database's collation.
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_identities WHERE user_id = $1
                  ORDER BY linked_at, issuer COLLATE \"C\", subject COLLATE \"C\""
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(decode).collect()
        }))
    }

    fn unlink<'a>(
        &'a self,
        user_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
        keep_one: bool,
    ) -> ProviderFuture<'a, Unlinked> {
        Box::pin(crate::bounded(async move {
            let mut tx = self.pool.begin().await.map_err(unavailable)?;
            // Its own statement: the count below must take its snapshot after the lock is
            // granted, to see what the unlink before it left.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
                .bind(user_id)
                .bind(ACCOUNT_LOCK_SEED)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            // The decision comes from one snapshot; every removal of a link takes the lock, so
            // the link counted here is still there for the DELETE.
            let counted = sqlx::query(
                "SELECT count(*) FILTER (WHERE issuer = $1 AND subject = $2), count(*)
                 FROM pc_identities WHERE user_id = $3",
            )
            .bind(issuer)
            .bind(subject)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            let this: i64 = counted.try_get(0).map_err(unavailable)?;
            let all: i64 = counted.try_get(1).map_err(unavailable)?;
            let answer = if this == 0 {
                Unlinked::NotLinked
            } else if keep_one && all <= 1 {
                Unlinked::LastOne
            } else {
                let done = sqlx::query(
                    "DELETE FROM pc_identities WHERE issuer = $1 AND subject = $2 AND user_id = $3",
                )
                .bind(issuer)
                .bind(subject)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                if done.rows_affected() == 1 {
                    Unlinked::Done
                } else {
                    Unlinked::NotLinked
                }
            };
            tx.commit().await.map_err(unavailable)?;
            Ok(answer)
        }))
    }

    fn remember_session<'a>(
        &'a self,
        session: &'a UpstreamSession,
        now: Timestamp,
    ) -> ProviderFuture<'a, ()> {
        Box::pin(crate::bounded(async move {
            sqlx::query(
                "DELETE FROM pc_upstream_sessions WHERE (issuer, sid) IN
                   (SELECT issuer, sid FROM pc_upstream_sessions WHERE until_ms <= $1
                    LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(now.as_millis())
            .bind(FORGET_AT_ONCE)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            sqlx::query(
                "INSERT INTO pc_upstream_sessions AS kept (issuer, sid, subject, until_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (issuer, sid) DO UPDATE SET
                   until_ms = CASE WHEN kept.subject = excluded.subject
                              THEN GREATEST(kept.until_ms, excluded.until_ms)
                              ELSE excluded.until_ms END,
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
        }))
    }

    fn session_subject<'a>(
        &'a self,
        issuer: &'a str,
        sid: &'a str,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<String>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query(
                "SELECT subject FROM pc_upstream_sessions
                 WHERE issuer = $1 AND sid = $2 AND until_ms > $3",
            )
            .bind(issuer)
            .bind(sid)
            .bind(now.as_millis())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.map(|row| row.try_get::<String, _>(0).map_err(unavailable))
                .transpose()
        }))
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
