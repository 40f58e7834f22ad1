//! Applications in `pc_applications`: every field a column, converted to and from the domain
//! type here, so the stored format is this crate's and not the serde form of [`Application`]
//! (the client registration is one column of JSON, the stored form [`StoredClient`]).
//! A unique violation (the name, or the id) answers [`StoreError::NameTaken`].

use std::collections::BTreeSet;

use portcullis_core::{
    AppId, Application, ApplicationStore, AuditEvent, Grant, PublicId, StoreError, StoredClient,
    Timestamp,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{PostgresStore, append_events, unavailable};

/// One row of `pc_applications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApplicationRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) policies: Vec<String>,
    pub(crate) default_policy: String,
    /// Grant names (`end_everywhere`, …).
    pub(crate) grants: Vec<String>,
    /// The client registration as [`StoredClient`] JSON; `None` for an application that is
    /// not a client.
    pub(crate) client: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_at: i64,
    pub(crate) version: i64,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("application row: {what}"))
}

fn version(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(corrupt)
}

impl ApplicationRow {
    /// The row of `app`.
    pub(crate) fn of(app: &Application) -> Result<Self, StoreError> {
        Ok(Self {
            id: app.id.as_str().to_owned(),
            name: app.name.clone(),
            policies: app.policies.clone(),
            default_policy: app.default_policy.clone(),
            grants: app.grants.iter().map(|g| g.as_str().to_owned()).collect(),
            client: app.client.as_ref().map(StoredClient::encode).transpose()?,
            created_at: app.created_at.as_millis(),
            version: version(app.version)?,
        })
    }

    /// Reads a row selected with `columns!()`.
    fn read(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            policies: row.try_get(2)?,
            default_policy: row.try_get(3)?,
            grants: row.try_get(4)?,
            client: row.try_get(5)?,
            created_at: row.try_get(6)?,
            version: row.try_get(7)?,
        })
    }

    /// The application this row holds; a grant this release does not know is corrupt data.
    pub(crate) fn into_application(self) -> Result<Application, StoreError> {
        let grants = self
            .grants
            .iter()
            .map(|name| {
                Grant::parse(name).ok_or_else(|| corrupt(format!("unknown grant \"{name}\"")))
            })
            .collect::<Result<BTreeSet<Grant>, _>>()?;
        Ok(Application {
            id: PublicId::from_string(self.id),
            name: self.name,
            policies: self.policies,
            default_policy: self.default_policy,
            grants,
            client: self
                .client
                .as_deref()
                .map(StoredClient::decode)
                .transpose()?,
            created_at: Timestamp::from_millis(self.created_at),
            version: u64::try_from(self.version).map_err(corrupt)?,
        })
    }
}

/// The columns [`ApplicationRow::read`] expects, in order.
macro_rules! columns {
    () => {
        "id, name, policies, default_policy, grants, client, created_at, version"
    };
}

fn taken_or_unavailable(err: sqlx::Error, name: &str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::NameTaken(name.to_owned()),
        _ => unavailable(err),
    }
}

fn decode(row: &PgRow) -> Result<Application, StoreError> {
    ApplicationRow::read(row)
        .map_err(unavailable)?
        .into_application()
}

impl ApplicationStore for PostgresStore {
    async fn add_application(
        &self,
        app: Application,
        event: AuditEvent,
    ) -> Result<AuditEvent, StoreError> {
        crate::bounded(async move {
            let row = ApplicationRow::of(&app)?;
            let mut tx = self.begin().await?;
            sqlx::query(concat!(
                "INSERT INTO pc_applications (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ))
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.policies)
            .bind(&row.default_policy)
            .bind(&row.grants)
            .bind(&row.client)
            .bind(row.created_at)
            .bind(row.version)
            .execute(&mut *tx)
            .await
            .map_err(|err| taken_or_unavailable(err, &app.name))?;
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(events.remove(0))
        })
        .await
    }

    async fn find_application(&self, id: &AppId) -> Result<Option<Application>, StoreError> {
        crate::bounded(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_applications WHERE id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            row.as_ref().map(decode).transpose()
        })
        .await
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        crate::bounded(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM pc_applications ORDER BY created_at, id"
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(decode).collect()
        })
        .await
    }

    async fn update_application(
        &self,
        current: u64,
        next: Application,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        crate::bounded(async move {
            let row = ApplicationRow::of(&next)?;
            let mut tx = self.begin().await?;
            let done = sqlx::query(
                "UPDATE pc_applications SET name = $2, policies = $3, default_policy = $4,
                    grants = $5, client = $6, version = $7
                 WHERE id = $1 AND version = $8",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.policies)
            .bind(&row.default_policy)
            .bind(&row.grants)
            .bind(&row.client)
            .bind(row.version)
            .bind(version(current)?)
            .execute(&mut *tx)
            .await
            .map_err(|err| taken_or_unavailable(err, &next.name))?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Some(events.remove(0)))
        })
        .await
    }

    async fn remove_application(
        &self,
        id: &AppId,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        crate::bounded(async move {
            let mut tx = self.begin().await?;
            let done = sqlx::query("DELETE FROM pc_applications WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            if done.rows_affected() == 0 {
                return Ok(None);
            }
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Some(events.remove(0)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::TokenHash;
    use portcullis_core::oidc::{Client, ClientAuth, GrantType};

    use super::*;

    #[test]
    fn every_field_round_trips_through_the_row() {
        let app = Application {
            id: PublicId::from_string("app_shop".into()),
            name: "shop".into(),
            policies: vec!["default".into(), "aal2".into()],
            default_policy: "aal2".into(),
            grants: Grant::ALL.into_iter().collect(),
            client: Some(Client {
                auth: ClientAuth::Secret(TokenHash([9; 32])),
                redirect_uris: vec!["https://shop.example/cb".into()],
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: None,
                frontchannel_logout_uri: None,
                scopes: ["openid".to_owned()].into(),
                grant_types: [GrantType::AuthorizationCode].into(),
                require_consent: true,
                id_token_signed_response_alg: None,
                upstream: None,
            }),
            created_at: Timestamp::from_millis(1_800_000_000_123),
            version: 7,
        };
        let row = ApplicationRow::of(&app).unwrap();
        assert_eq!(
            row.grants,
            ["end_everywhere", "read_all_events", "list_all_sessions"]
        );
        assert!(
            row.client
                .as_deref()
                .is_some_and(|c| c.contains("client_secret_basic")),
            "{:?}",
            row.client
        );
        assert_eq!(row.into_application().unwrap(), app);
    }

    #[test]
    fn an_unknown_grant_is_corrupt() {
        let mut row = ApplicationRow::of(&Application {
            id: PublicId::from_string("app_x".into()),
            name: "x".into(),
            policies: vec!["*".into()],
            default_policy: "default".into(),
            grants: BTreeSet::new(),
            client: None,
            created_at: Timestamp::from_millis(0),
            version: 1,
        })
        .unwrap();
        row.grants = vec!["root".into()];
        assert!(matches!(
            row.into_application(),
            Err(StoreError::Corrupt(_))
        ));
    }
}
