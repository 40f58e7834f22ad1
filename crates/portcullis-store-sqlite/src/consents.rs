//! Consents in the same SQLite file as the sessions, one row per (person, client).
//!
//! A grant is one upsert that merges the scopes granted into the row's (a union of the two JSON
//! arrays, computed by SQLite inside the statement): SQLite runs writers one at a time, so each
//! grant merges into what the grant before it left, and racing grants all add up.

use std::collections::BTreeSet;

use portcullis_core::oidc::{Consent, ConsentStore, ProviderFuture};
use portcullis_core::{AppId, PublicId, StoreError, Timestamp};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use crate::unavailable;

/// The consents of the embedded store (see [`crate::SqliteJournal::consents`]).
#[derive(Debug, Clone)]
pub struct SqliteConsentStore {
    pool: SqlitePool,
}

impl SqliteConsentStore {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// One row of `oidc_consents`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConsentRow {
    subject: String,
    client: String,
    /// A JSON array of scope names.
    scopes: String,
    /// Milliseconds since the Unix epoch.
    granted_at: i64,
}

/// The columns [`ConsentRow::read`] expects, in order.
const COLUMNS: &str = "subject, client, scopes, granted_at";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("consent row: {what}"))
}

impl ConsentRow {
    fn of(consent: &Consent) -> Result<Self, StoreError> {
        Ok(Self {
            subject: consent.subject.clone(),
            client: consent.client.as_str().to_owned(),
            scopes: serde_json::to_string(&consent.scopes).map_err(corrupt)?,
            granted_at: consent.granted_at.as_millis(),
        })
    }

    /// Reads a row selected with [`COLUMNS`].
    fn read(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            subject: row.try_get(0)?,
            client: row.try_get(1)?,
            scopes: row.try_get(2)?,
            granted_at: row.try_get(3)?,
        })
    }

    fn into_consent(self) -> Result<Consent, StoreError> {
        let scopes: BTreeSet<String> = serde_json::from_str(&self.scopes).map_err(corrupt)?;
        Ok(Consent {
            subject: self.subject,
            client: PublicId::from_string(self.client),
            scopes,
            granted_at: Timestamp::from_millis(self.granted_at),
        })
    }
}

fn consent_of(row: &SqliteRow) -> Result<Consent, StoreError> {
    ConsentRow::read(row).map_err(unavailable)?.into_consent()
}

impl ConsentStore for SqliteConsentStore {
    fn grant_consent(&self, consent: Consent) -> ProviderFuture<'_, Consent> {
        Box::pin(async move {
            let row = ConsentRow::of(&consent)?;
            let sql = format!(
                "INSERT INTO oidc_consents ({COLUMNS}) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (subject, client) DO UPDATE SET
                   scopes = (SELECT json_group_array(value) FROM (
                       SELECT value FROM json_each(oidc_consents.scopes)
                       UNION SELECT value FROM json_each(excluded.scopes)
                       ORDER BY value)),
                   granted_at = max(oidc_consents.granted_at, excluded.granted_at)
                 RETURNING {COLUMNS}"
            );
            let whole = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&row.subject)
                .bind(&row.client)
                .bind(&row.scopes)
                .bind(row.granted_at)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
            consent_of(&whole)
        })
    }

    fn consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, Option<Consent>> {
        Box::pin(async move {
            let sql =
                format!("SELECT {COLUMNS} FROM oidc_consents WHERE subject = ?1 AND client = ?2");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(subject)
                .bind(client.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            row.as_ref().map(consent_of).transpose()
        })
    }

    fn consents_of<'a>(&'a self, subject: &'a str) -> ProviderFuture<'a, Vec<Consent>> {
        Box::pin(async move {
            // SQLite's BINARY collation orders by bytes, as `str`'s `Ord` does.
            let sql =
                format!("SELECT {COLUMNS} FROM oidc_consents WHERE subject = ?1 ORDER BY client");
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(subject)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter().map(consent_of).collect()
        })
    }

    fn revoke_consent<'a>(
        &'a self,
        subject: &'a str,
        client: &'a AppId,
    ) -> ProviderFuture<'a, bool> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM oidc_consents WHERE subject = ?1 AND client = ?2")
                .bind(subject)
                .bind(client.as_str())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() == 1)
        })
    }
}
