//! Applications: the principals that call Portcullis. Every API key belongs to one, every
//! application session records its own, and a caller reaches only its own application's
//! sessions and events unless a [`Grant`] on the application says more.
//!
//! Portcullis's own sessions (the SSO session and a sign-in in progress) belong to the reserved
//! application [`PORTCULLIS_APP`] and follow policies in the reserved namespace
//! [`RESERVED_POLICY_PREFIX`]: no application can name one, and no API key reaches them.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use crate::event::{Actor, AuditEvent};
use crate::session::Session;
use crate::store::StoreError;
use crate::time::Timestamp;
use crate::token::PublicId;

/// The public id of an application (`app_…`).
pub type AppId = PublicId;

/// The owner of Portcullis's own sessions: the SSO session and sign-ins in progress.
pub const PORTCULLIS_APP: &str = "portcullis";

/// The application that data written before applications existed belongs to: API keys and
/// sessions of the previous release move to it on upgrade, so they keep working.
pub const LEGACY_APP: &str = "app_legacy";

/// Policies whose names start with this belong to Portcullis's own sessions.
pub const RESERVED_POLICY_PREFIX: &str = "portcullis.";

/// The policy of the SSO session: the configured `sso_policy`'s lifetimes under a reserved name.
pub const SSO_POLICY: &str = "portcullis.sso";

/// In an application's policy list, "every policy outside the reserved namespace".
pub const ANY_POLICY: &str = "*";

/// The id of Portcullis's own application.
pub fn portcullis_app() -> AppId {
    PublicId::from_string(PORTCULLIS_APP.to_owned())
}

/// The id of the application created for the previous release's data.
pub fn legacy_app() -> AppId {
    PublicId::from_string(LEGACY_APP.to_owned())
}

/// Whether `policy` is in Portcullis's reserved namespace.
pub fn is_reserved_policy(policy: &str) -> bool {
    policy.starts_with(RESERVED_POLICY_PREFIX)
}

/// Something an application may do beyond its own sessions; each is named on the application
/// and allows exactly what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Grant {
    /// End a person's sessions in every application and their SSO session (force logout after a
    /// password change done by an application that owns passwords).
    EndEverywhere,
    /// Read every application's events (a SIEM exporter).
    ReadAllEvents,
    /// List a person's sessions across applications (a support tool).
    ListAllSessions,
}

impl Grant {
    /// Every grant.
    pub const ALL: [Self; 3] = [
        Self::EndEverywhere,
        Self::ReadAllEvents,
        Self::ListAllSessions,
    ];

    /// The grant's name in the API, the CLI and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EndEverywhere => "end_everywhere",
            Self::ReadAllEvents => "read_all_events",
            Self::ListAllSessions => "list_all_sessions",
        }
    }

    /// Parses a grant's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == text)
    }
}

/// A registered application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Public id (`app_…`).
    pub id: AppId,
    /// Unique name (`shop`), used by the CLI.
    pub name: String,
    /// Policies its sessions may follow ([`ANY_POLICY`] for every unreserved one).
    pub policies: Vec<String>,
    /// The policy of a session created without naming one.
    pub default_policy: String,
    /// What it may do beyond its own sessions.
    pub grants: BTreeSet<Grant>,
    /// Its registration as an OpenID Connect client, when it signs people in through
    /// Portcullis.
    pub client: Option<crate::oidc::Client>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Bumped on every change; stores update an application only at the version read.
    pub version: u64,
}

impl Application {
    /// Whether sessions of this application may follow `policy`.
    pub fn may_use(&self, policy: &str) -> bool {
        !is_reserved_policy(policy) && self.policies.iter().any(|p| p == policy || p == ANY_POLICY)
    }
}

/// Who acts, and what they can reach.
#[derive(Debug, Clone)]
pub struct Principal {
    /// As the audit trail records it.
    pub actor: Actor,
    /// What it can reach.
    pub reach: Reach,
}

/// The sessions a principal reaches.
#[derive(Debug, Clone)]
pub enum Reach {
    /// The operator (CLI, admin socket): everything.
    Everything,
    /// Portcullis's sign-in and SSO cookies: only Portcullis's own sessions.
    Portcullis,
    /// A signed-in person on their account pages: every session whose subject is their account
    /// id, of any application.
    Person(String),
    /// An application's API key: its own sessions, and what its grants add.
    Application(Arc<Application>),
}

impl Principal {
    /// The operator on this machine.
    pub fn operator() -> Self {
        Self {
            actor: Actor::cli(),
            reach: Reach::Everything,
        }
    }

    /// Portcullis's own pages handling their cookies, acting as `actor`.
    pub fn portcullis(actor: Actor) -> Self {
        Self {
            actor,
            reach: Reach::Portcullis,
        }
    }

    /// A signed-in person acting on their own sessions.
    pub fn person(user_id: &str) -> Self {
        Self {
            actor: Actor::user(user_id),
            reach: Reach::Person(user_id.to_owned()),
        }
    }

    /// An application calling with one of its API keys.
    pub fn application(app: Arc<Application>, key: &PublicId) -> Self {
        Self {
            actor: Actor::api_key(&app.id, key),
            reach: Reach::Application(app),
        }
    }

    /// Whether `session` is within reach (for every operation, by token or by id).
    pub fn reaches(&self, session: &Session) -> bool {
        match &self.reach {
            Reach::Everything => true,
            Reach::Portcullis => session.application.as_str() == PORTCULLIS_APP,
            Reach::Person(user) => &session.subject == user,
            Reach::Application(app) => session.application == app.id,
        }
    }

    /// Whether the principal holds `grant`. The operator holds every grant; a person on their
    /// account pages may list and end their own sessions across applications.
    pub fn holds(&self, grant: Grant) -> bool {
        match &self.reach {
            Reach::Everything => true,
            Reach::Portcullis => false,
            Reach::Person(_) => grant != Grant::ReadAllEvents,
            Reach::Application(app) => app.grants.contains(&grant),
        }
    }

    /// The application this principal acts as, when it is one.
    pub fn application_id(&self) -> Option<&AppId> {
        match &self.reach {
            Reach::Application(app) => Some(&app.id),
            _ => None,
        }
    }
}

/// How an application store can fail besides the store's own errors.
pub trait ApplicationStore: Send + Sync + 'static {
    /// Stores a new application and its `application.created` event;
    /// [`StoreError::NameTaken`] when another application has the name.
    fn add_application(
        &self,
        app: Application,
        event: AuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, StoreError>> + Send;

    /// The application with id `id`.
    fn find_application(
        &self,
        id: &AppId,
    ) -> impl Future<Output = Result<Option<Application>, StoreError>> + Send;

    /// Every application, oldest first.
    fn list_applications(
        &self,
    ) -> impl Future<Output = Result<Vec<Application>, StoreError>> + Send;

    /// Replaces an application if it is still at `version`; `Ok(None)` when it changed or went
    /// meanwhile, [`StoreError::NameTaken`] when another application has the new name.
    fn update_application(
        &self,
        version: u64,
        next: Application,
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<AuditEvent>, StoreError>> + Send;

    /// Deletes an application; its API keys stop working with it (a key is accepted only while
    /// its application exists). `Ok(None)` when there is no such application.
    fn remove_application(
        &self,
        id: &AppId,
        event: AuditEvent,
    ) -> impl Future<Output = Result<Option<AuditEvent>, StoreError>> + Send;
}
