//! Portcullis domain core: the session model, policies, the lifecycle [`Engine`], audit events
//! and the [`SessionStore`] contract.
//!
//! **Architecture Invariant:** this crate does no I/O. Time comes from a [`Clock`], randomness
//! from a [`RandomSource`]; it knows nothing of HTTP, SQL or Redis. Stores and the HTTP layer
//! depend on it, never the other way round.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod account;
pub mod api_key;
pub mod application;
pub mod cache;
pub mod engine;
pub mod event;
pub mod oidc;
pub mod plan;
pub mod policy;
pub mod random;
pub mod record;
pub mod rules;
pub mod sealed;
pub mod session;
pub mod store;
pub mod stored;
pub mod throttle;
pub mod time;
pub mod token;

pub use account::{
    AccountError, Accounts, Acting, MemoryUserStore, Origin, SignInError, TotpFactor, User,
    UserFuture, UserStore, UserStoreError,
};
pub use api_key::{ApiKey, ApiKeyCache, ApiKeyStore};
pub use application::{
    ANY_POLICY, AppId, Application, ApplicationStore, Grant, LEGACY_APP, PORTCULLIS_APP, Principal,
    RESERVED_POLICY_PREFIX, Reach, SSO_POLICY, is_reserved_policy, legacy_app, portcullis_app,
};
pub use cache::{
    CachedStore, Change, CommitTicket, Journal, MemoryJournal, MemoryStore, Recovery, Restored,
    Restoring, Snapshot, Touch,
};
pub use engine::{
    ApplicationChange, Elevate, Engine, EngineError, EngineSettings, Issued, NewSession, Rejection,
    RemovedApplication, SweepReport, Validated,
};
pub use event::{Actor, AuditEvent, AuditSink, EventKind, EventQuery, NoAuditSink};
pub use policy::{
    Binding, OFFLINE_POLICY, OnLimit, Policy, PolicyError, PolicyOverrides, PolicySet, Preset,
    SIGN_IN_POLICY,
};
pub use random::{OsRandom, RandomSource, SeededRandom};
pub use rules::{ACCOUNT_SCOPE, AccountRules, RuleError, assurance_level, sign_in_subject};
pub use sealed::{Keyring, KeyringError, SealError};
pub use session::{AuthContext, Deadline, Device, Elevation, EndReason, Ended, Session};
pub use store::{
    BackendError, EndedSessions, Ending, EventTrail, Insert, Inserted, LiveCount, LiveTally,
    SessionLimit, SessionStore, Store, StoreError, TrailFuture,
};
pub use stored::{
    DeliveryRow, StoredApiKey, StoredAuth, StoredClient, StoredCode, StoredDeadline,
    StoredDelivery, StoredDevice, StoredElevation, StoredEndReason, StoredEnded, StoredSession,
    StoredSigningKey, StoredTotp, StoredUser,
};
pub use throttle::{
    MemoryThrottleStore, Strikes, ThrottleFuture, ThrottleRules, ThrottleStore, Verdict,
};
pub use time::{
    Clock, ManualClock, NO_LIMIT, SystemClock, Timestamp, format_duration, parse_duration,
};
pub use token::{
    GeneratedTokens, MalformedToken, PublicId, SessionId, Token, TokenHash, TokenKind, same_secret,
    subject_route,
};
