//! Consents in `pc_consents`, one row per person and client.
//!
//! A grant is one `INSERT … ON CONFLICT DO UPDATE` whose update takes the union of the row's
//! scopes and the grant's: PostgreSQL applies it to the row as the last committed grant left it
//! (it locks the row, or waits for the racing insert of it), so racing grants on any nodes all
//! add up and none is lost.

use std::collections::BTreeSet;

use portcullis_core::oidc::{Consent, ConsentStore, ProviderFuture};
use portcullis_core::{AppId, PublicId, StoreError, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::unavailable;

/// The consents beside the sessions (see [`crate::PostgresStore::consents`]).
#[derive(Debug, Clone)]
pub struct PostgresConsentStore {
    pool: PgPool,
}

impl PostgresConsentStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One row of `pc_consents`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsentRow {
    subject: String,
    client: String,
    scopes: Vec<String>,
    /// Milliseconds since the Unix epoch.
    granted_at: i64,
}

/// The columns [`ConsentRow::read`] expects, in order.
macro_rules! columns {
    () => {
        "subject, client, scopes, granted_at"
    };
}

impl ConsentRow {
    fn of(consent: &Consent) -> Self {
        Self {
            subject: consent.subject.clone(),
            client: consent.client.as_str().to_owned(),
            scopes: consent.scopes.iter().cloned().collect(),
            granted_at: consent.granted_at.as_millis(),
        }
    }

    /// Reads a row selected with `columns!()`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            subject: row.try_get(0)?,
            client: row.try_get(1)?,
            scopes: row.try_get(2)?,
            granted_at: row.try_get(3)?,
        })
    }

    fn into_consent(self) -> Consent {
        Consent {
            subject: self.subject,
            client: PublicId::from_string(self.client),
            scopes: self.scopes.into_iter().collect::<BTreeSet<_>>(),
            granted_at: Timestamp::from_millis(self.granted_at),
        }
    }
}

fn decode(row: &PgRow) -> Result<Consent, StoreError> {
    Ok(ConsentRow::read(row).map_err(unavailable)?.into_consent())
}

impl ConsentStore for PostgresConsentStore {
    fn grant_consent(&self, consent: Consent) -> ProviderFuture<'_, Consent> {
        Box::pin(crate::bounded(async move {
            let row = ConsentRow::of(&consent);
            let whole = sqlx::query(concat!(
                "INSERT INTO pc_consents AS had (",
                columns!(),
                ") VALUES ($1, $2, $3, $4)
                 ON CONFLICT (subject, client) DO UPDATE SET
                    scopes = ARRAY(SELECT DISTINCT s FROM unnest(had.scopes || EXCLUDED.scopes) AS s
                                   ORDER BY s),
                    granted_at = GREATEST(had.granted_at, EXCLUDED.granted_at)
                 RETURNING ",
                columns!()
            ))
            .bind(&row.subject)
            .bind(&row.client)
            .bind(&row.scopes)
            .bind(row.granted_at)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
            decode(&whole)
        }))
    }

    fn consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, Option<Consent>> {
        Box::pin(crate::bounded(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_consents WHERE subject = $1 AND client = $2"
            ))
            .bind(subject)
            .bind(client.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.as_ref().map(decode).transpose()
        }))
    }

    fn consents_of<'a>(&'a self, subject: &'a str) -> ProviderFuture<'a, Vec<Consent>> {
        Box::pin(crate::bounded(async move {
            // `COLLATE "C"`: byte order, the order of Rust's `str` that the trait promises,
            // whatever the database's collation.
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_consents WHERE subject = $1 ORDER BY client COLLATE \"C\""
            ))
            .bind(subject)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(decode).collect()
        }))
    }

    fn revoke_consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(crate::bounded(async move {
            let done = sqlx::query("DELETE FROM pc_consents WHERE subject = $1 AND client = $2")
                .bind(subject)
                .bind(client.as_str())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_round_trips_through_the_row() {
        let consent = Consent {
            subject: "usr_a".into(),
            client: PublicId::from_string("app_rp".into()),
            scopes: ["openid", "email"].map(String::from).into(),
            granted_at: Timestamp::from_millis(42),
        };
        let row = ConsentRow::of(&consent);
        assert_eq!(row.scopes, ["email", "openid"]);
        assert_eq!(row.into_consent(), consent);
    }
}
