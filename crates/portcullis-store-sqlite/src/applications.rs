//! Applications as rows of their own table: every field a column, converted to and from the
//! domain type here, so the stored format is this crate's and not the serde form of
//! [`Application`].

use std::collections::BTreeSet;

use portcullis_core::{Application, Grant, PublicId, StoreError, StoredClient, Timestamp};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// One row of `applications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApplicationRow {
    pub(crate) id: String,
    pub(crate) name: String,
    /// A JSON array of policy names.
    pub(crate) policies: String,
    pub(crate) default_policy: String,
    /// A JSON array of grant names (`end_everywhere`, …).
    pub(crate) grants: String,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_at: i64,
    pub(crate) version: i64,
    /// The registration as a client (the JSON of [`StoredClient`]); `None` when it is not one.
    pub(crate) client: Option<String>,
}

/// The columns [`ApplicationRow::read`] expects, in order.
pub(crate) const COLUMNS: &str =
    "id, name, policies, default_policy, grants, created_at, version, client";

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("application row: {what}"))
}

impl ApplicationRow {
    /// The row of `app`.
    pub(crate) fn of(app: &Application) -> Result<Self, StoreError> {
        let grants: Vec<&str> = app.grants.iter().map(|g| g.as_str()).collect();
        Ok(Self {
            id: app.id.as_str().to_owned(),
            name: app.name.clone(),
            policies: serde_json::to_string(&app.policies).map_err(corrupt)?,
            default_policy: app.default_policy.clone(),
            grants: serde_json::to_string(&grants).map_err(corrupt)?,
            created_at: app.created_at.as_millis(),
            version: i64::try_from(app.version).map_err(corrupt)?,
            client: app.client.as_ref().map(StoredClient::encode).transpose()?,
        })
    }

    /// Reads a row selected with [`COLUMNS`].
    pub(crate) fn read(row: &SqliteRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            policies: row.try_get(2)?,
            default_policy: row.try_get(3)?,
            grants: row.try_get(4)?,
            created_at: row.try_get(5)?,
            version: row.try_get(6)?,
            client: row.try_get(7)?,
        })
    }

    /// The application this row holds; a grant this release does not know is corrupt data.
    pub(crate) fn into_application(self) -> Result<Application, StoreError> {
        let policies: Vec<String> = serde_json::from_str(&self.policies).map_err(corrupt)?;
        let names: Vec<String> = serde_json::from_str(&self.grants).map_err(corrupt)?;
        let grants = names
            .iter()
            .map(|name| {
                Grant::parse(name).ok_or_else(|| corrupt(format!("unknown grant \"{name}\"")))
            })
            .collect::<Result<BTreeSet<Grant>, _>>()?;
        Ok(Application {
            id: PublicId::from_string(self.id),
            name: self.name,
            policies,
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

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::oidc::{Client, ClientAuth, GrantType};

    #[test]
    fn every_field_round_trips_through_the_row() {
        let app = Application {
            id: PublicId::from_string("app_shop".into()),
            name: "shop".into(),
            policies: vec!["default".into(), "aal2".into()],
            default_policy: "aal2".into(),
            grants: Grant::ALL.into_iter().collect(),
            client: Some(Client {
                auth: ClientAuth::None,
                redirect_uris: vec!["https://shop.example/cb".into()],
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: None,
                frontchannel_logout_uri: None,
                scopes: ["openid".to_owned()].into(),
                grant_types: [GrantType::AuthorizationCode].into(),
                require_consent: false,
                id_token_signed_response_alg: None,
                upstream: None,
            }),
            created_at: Timestamp::from_millis(1_800_000_000_123),
            version: 7,
        };
        let row = ApplicationRow::of(&app).unwrap();
        assert_eq!(row.policies, r#"["default","aal2"]"#);
        assert_eq!(
            row.grants,
            r#"["end_everywhere","read_all_events","list_all_sessions"]"#
        );
        assert_eq!(
            row.client.as_deref(),
            app.client
                .as_ref()
                .map(|c| StoredClient::encode(c).unwrap())
                .as_deref(),
            "the client column is its stored form"
        );
        assert_eq!(row.into_application().unwrap(), app);
    }

    #[test]
    fn an_application_that_is_no_client_has_no_client_column() {
        let app = Application {
            id: PublicId::from_string("app_x".into()),
            name: "x".into(),
            policies: vec!["*".into()],
            default_policy: "default".into(),
            grants: BTreeSet::new(),
            client: None,
            created_at: Timestamp::from_millis(0),
            version: 1,
        };
        let row = ApplicationRow::of(&app).unwrap();
        assert_eq!(row.client, None);
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
        row.grants = r#"["root"]"#.into();
        assert!(matches!(
            row.into_application(),
            Err(StoreError::Corrupt(_))
        ));
    }
}
