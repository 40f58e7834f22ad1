//! PostgreSQL session store: any number of stateless Portcullis nodes share one database.
//!
//! Every read goes to PostgreSQL (validation is one primary-key lookup by token hash), so a
//! revocation made on any node is refused by every node on its very next call: there is no
//! cache to invalidate. Per-subject changes (limits, "end all but one") are serialised by a
//! transaction-scoped advisory lock on the subject. Events take no lock: an event's position
//! is its transaction's id and its place in the transaction (`append_events`), and a reader
//! shows only events of transactions older than every one still running, so paging by `after`
//! never skips one ([`SessionStore::events`]).
//! API keys are cached for [`API_KEY_CACHE`] per node; applications are not, so a removed
//! application's keys stop working on every node at once. The OpenID Connect provider's
//! authorization codes, signing keys, refresh tokens and consents live beside them, each
//! changed by single conditional statements so that racing nodes redeem a code once, rotate a
//! token or a key once, and add up consents ([`PostgresStore::codes`] and its siblings).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::oidc::LogoutDelivery;
use portcullis_core::{
    ApiKeyCache, AppId, AuditEvent, BackendError, EndReason, EndedSessions, Ending, EventQuery,
    Insert, Inserted, LiveCount, PublicId, Session, SessionId, SessionStore, StoreError,
    StoredSession, Timestamp, TokenHash, plan,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Arguments, PgConnection, PgPool, Postgres, Row, Transaction};

/// How long a node trusts an API key it looked up (revocation reaches other nodes within this).
pub const API_KEY_CACHE: Duration = Duration::from_secs(1);

/// Bits of an event's position that number it within its transaction; the transaction's id
/// is above them (`append_events`).
const EVENT_INDEX_BITS: u32 = 20;

/// How long a read of the trail waits for the transactions that began before an event it can
/// already see (so that it also sees an event committed before it asked); past that, it
/// answers what is settled, and the rest comes on a later read.
const EVENT_SETTLE_WAIT: Duration = Duration::from_secs(1);

mod api_keys;
mod applications;
mod codes;
mod consents;
mod deliveries;
mod gather;
mod identities;
mod refresh_tokens;
mod replays;
mod signing_keys;
mod throttle;
mod users;

pub use codes::PostgresCodeStore;
pub use consents::PostgresConsentStore;
pub use deliveries::PostgresDeliveryStore;
pub use identities::PostgresIdentityStore;
pub use refresh_tokens::PostgresRefreshTokenStore;
pub use replays::PostgresReplayStore;
pub use signing_keys::PostgresSigningKeyStore;
pub use throttle::PostgresThrottleStore;
pub use users::PostgresUserStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// What connecting can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Bad URL or no server.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] sqlx::Error),
    /// A migration failed.
    #[error("cannot migrate the PostgreSQL schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A store URL option that cannot work.
    #[error("PostgreSQL store URL: {0}")]
    Option(String),
}

/// The values of `synchronous_commit` a store URL may ask for: each makes a commit durable
/// before it is acknowledged (`off` would not, and is refused).
const SYNCHRONOUS_COMMIT: [&str; 4] = ["local", "remote_write", "on", "remote_apply"];

/// The connections one node opens at most, unless its URL says `max_connections=`.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// The most `max_connections=` accepts (PostgreSQL's own default limit is 100 for all clients).
const MAX_CONNECTIONS_LIMIT: u32 = 1_000;

/// How long a connection may have been idle before it is pinged as it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// How long a call on a request's path may wait for PostgreSQL before it fails closed
/// (`Unavailable`): a statement of ours takes milliseconds, and a sign-in's few at most a
/// second, even behind a row lock. A server that stops answering without closing its
/// connections (frozen, or a network that drops packets) would otherwise hold the call until it
/// came back, since a statement on a connection already taken has no timeout of its own. A call
/// dropped half-way is safe: its transaction is rolled back. The sweeper's calls over whole
/// tables (`purge`, `live_counts`, the `forget_*` of the provider's stores) get none: they may
/// take longer than this at millions of rows, and no request waits for them.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// What each store's error type says of a call past [`CALL_DEADLINE`].
trait PastDeadline {
    fn past_deadline() -> Self;
}

fn past_deadline_message() -> BackendError {
    format!("PostgreSQL did not answer within {CALL_DEADLINE:?}").into()
}

impl PastDeadline for StoreError {
    fn past_deadline() -> Self {
        StoreError::Unavailable(past_deadline_message())
    }
}

impl PastDeadline for portcullis_core::UserStoreError {
    fn past_deadline() -> Self {
        portcullis_core::UserStoreError::Unavailable(past_deadline_message())
    }
}

/// Runs `call` within [`CALL_DEADLINE`].
async fn bounded<T, E: PastDeadline>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| Err(E::past_deadline()))
}

/// A store URL read: what the client connects with, and what Portcullis takes itself.
struct ClientOptions {
    url: String,
    schema: Option<String>,
    max_connections: u32,
}

/// Whether the query of `url` names an `sslmode`.
fn names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|p| matches!(p.split('=').next(), Some("sslmode" | "ssl-mode")))
    })
}

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Validations' token lookups, gathered into one query per batch.
    gatherer: gather::Gatherer,
    api_keys: Arc<ApiKeyCache>,
}

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(BackendError::new(err))
}

fn corrupt(err: serde_json::Error) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

fn encode(err: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Corrupt(format!("cannot encode a statement's parameter: {err}"))
}

fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…`), optionally inside `schema` (created if missing),
    /// and migrates.
    ///
    /// TLS is what the URL's `sslmode` says (`verify-full` with `sslrootcert=PATH` checks the
    /// server's certificate and name; rustls with ring). Without `sslmode` (and without
    /// `PGSSLMODE`), the connection is plain, as before this build spoke TLS: libpq's default,
    /// `prefer`, would encrypt without checking who answers.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, ConnectError> {
        Self::open(url, schema, DEFAULT_MAX_CONNECTIONS).await
    }

    async fn open(
        url: &str,
        schema: Option<&str>,
        max_connections: u32,
    ) -> Result<Self, ConnectError> {
        let mut options = PgConnectOptions::from_str(url)?;
        if !names_ssl_mode(url) && std::env::var_os("PGSSLMODE").is_none() {
            options = options.ssl_mode(PgSslMode::Disable);
        }
        if let Some(schema) = schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {quoted}"
            )))
            .execute(&admin)
            .await?;
            admin.close().await;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // Fail fast (and closed) when the server is gone instead of queueing for 30 s.
            .acquire_timeout(Duration::from_secs(2))
            // sqlx pings every connection it hands out, a round trip before each statement
            // (and a second one as it takes the connection back). Only a connection idle for
            // a while is pinged here: one the server dropped while busy costs its one request
            // an error (fail closed), and the release ping discards it.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            gatherer: gather::Gatherer::start(pool.clone()),
            pool,
            api_keys: Arc::new(ApiKeyCache::new(API_KEY_CACHE)),
        })
    }

    /// The accounts kept in the same database (and schema).
    pub fn users(&self) -> PostgresUserStore {
        PostgresUserStore::new(self.pool.clone())
    }

    /// The failure counts of sign-in kept in the same database (and schema), shared by every
    /// node.
    pub fn throttle(&self) -> PostgresThrottleStore {
        PostgresThrottleStore::new(self.pool.clone())
    }

    /// The OpenID Connect provider's authorization codes, in the same database (and schema).
    pub fn codes(&self) -> PostgresCodeStore {
        PostgresCodeStore::new(self.pool.clone())
    }

    /// The OpenID Connect provider's signing keys, in the same database (and schema), so every
    /// node signs with the same keys.
    pub fn signing_keys(&self) -> PostgresSigningKeyStore {
        PostgresSigningKeyStore::new(self.pool.clone())
    }

    /// The OpenID Connect provider's refresh tokens, in the same database (and schema).
    pub fn refresh_tokens(&self) -> PostgresRefreshTokenStore {
        PostgresRefreshTokenStore::new(self.pool.clone())
    }

    /// The back-channel logout deliveries its endings wrote, in the same database (and schema):
    /// every node claims from them.
    pub fn deliveries(&self) -> PostgresDeliveryStore {
        PostgresDeliveryStore::new(self.pool.clone())
    }

    /// One-time identifiers (client assertions' `jti`), in the same database (and schema).
    pub fn replays(&self) -> PostgresReplayStore {
        PostgresReplayStore::new(self.pool.clone())
    }

    /// What people consented to give OpenID Connect clients, in the same database (and
    /// schema).
    pub fn consents(&self) -> PostgresConsentStore {
        PostgresConsentStore::new(self.pool.clone())
    }

    /// The accounts' links to people at upstream identity providers, in the same database
    /// (and schema).
    pub fn identities(&self) -> PostgresIdentityStore {
        PostgresIdentityStore::new(self.pool.clone())
    }

    /// Connects to a store URL: `postgres://…` with optional parameters `schema=NAME` (the
    /// schema is created if missing and holds every Portcullis table) and
    /// `synchronous_commit=VALUE` (`local`, `remote_write`, `on` or `remote_apply`: the setting
    /// of every session of the store, so a commit, and with it an acknowledged ending, waits
    /// for the synchronous standbys the server names in `synchronous_standby_names`) and
    /// `max_connections=N` (the connections this node opens at most, 16 unless said); the rest
    /// (`sslmode`, `sslrootcert`, …) as PostgreSQL's own URLs have them.
    pub async fn connect_url(url: &str) -> Result<Self, ConnectError> {
        let client = Self::client_url(url)?;
        Self::open(
            &client.url,
            client.schema.as_deref(),
            client.max_connections,
        )
        .await
    }

    /// The URL for the client (`synchronous_commit` as a session option), the schema and the
    /// pool's size.
    fn client_url(url: &str) -> Result<ClientOptions, ConnectError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut max_connections = DEFAULT_MAX_CONNECTIONS;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            if let Some(name) = pair.strip_prefix("schema=") {
                schema = Some(name.to_owned());
            } else if let Some(value) = pair.strip_prefix("max_connections=") {
                max_connections = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_CONNECTIONS_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ConnectError::Option(format!(
                            "max_connections={value}: use a whole number from 1 to \
                             {MAX_CONNECTIONS_LIMIT} (the connections one node may open)"
                        ))
                    })?;
            } else if let Some(value) = pair.strip_prefix("synchronous_commit=") {
                if !SYNCHRONOUS_COMMIT.contains(&value) {
                    return Err(ConnectError::Option(format!(
                        "synchronous_commit={value}: use local, remote_write, on or remote_apply \
                         (Portcullis acknowledges a change only once it is committed)"
                    )));
                }
                rest.push(format!("options[synchronous_commit]={value}"));
            } else {
                rest.push(pair.to_owned());
            }
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        Ok(ClientOptions {
            url,
            schema,
            max_connections,
        })
    }

    /// The position below which the trail is settled: every event there belongs to a
    /// transaction older than any still running, so none can appear there later. When an event
    /// the reader can see already lies at or past it (a transaction that began earlier is still
    /// running), waits up to [`EVENT_SETTLE_WAIT`] for those earlier transactions to end, so a
    /// read shows every event committed before it (its caller's own among them).
    async fn event_horizon(&self) -> Result<i64, StoreError> {
        let read = format!(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {EVENT_INDEX_BITS},
                    (SELECT max(seq) FROM pc_events)"
        );
        let give_up = tokio::time::Instant::now() + EVENT_SETTLE_WAIT;
        let (mut horizon, newest): (i64, Option<i64>) = sqlx::query_as(sqlx::AssertSqlSafe(&*read))
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        // Only what was committed at the first look is waited for: under load, newer events
        // keep coming, and waiting for them would never end.
        while newest.is_some_and(|newest| newest >= horizon)
            && tokio::time::Instant::now() < give_up
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
            (horizon, _) = sqlx::query_as::<_, (i64, Option<i64>)>(sqlx::AssertSqlSafe(&*read))
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        }
        Ok(horizon)
    }

    /// A session that needs nothing read first (no limit, parent or tombstone): the subject's
    /// lock, the session's row and its event in one statement, committed on its own: one round
    /// trip instead of five. That is safe only because no pooled connection is ever left inside
    /// a transaction: sqlx 0.9.1 rolls back a transaction whose caller was cancelled while
    /// `BEGIN` was on the wire (0.9.0 did not; `tests/cancellation.rs`).
    async fn insert_alone(&self, insert: Insert) -> Result<Inserted, StoreError> {
        let session = insert.session;
        let events = vec![plan::created_event(&session, &insert.actor)];
        let args = session_and_event_arguments(&session, &events)?;
        let sql = session_and_events(
            &format!("locked AS (SELECT {}),", subject_lock(3)),
            // `WHERE true`: without it, PostgreSQL would read `ON CONFLICT` as a join's `ON`.
            &format!("SELECT {SESSION_PARAMETERS} FROM locked WHERE true"),
        );
        let positions = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let events = placed(events, positions)?;
        Ok(Inserted {
            session: Arc::new(session),
            events,
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(unavailable)
    }
}

fn decode(row: &PgRow) -> Result<Session, StoreError> {
    let body: &str = row.try_get(0).map_err(unavailable)?;
    let stored: StoredSession = serde_json::from_str(body).map_err(corrupt)?;
    let mut session = Session::try_from(stored)?;
    let last_seen: i64 = row.try_get(1).map_err(unavailable)?;
    let idle_at: Option<i64> = row.try_get(2).map_err(unavailable)?;
    session.last_seen_at = Timestamp::from_millis(last_seen);
    if let (Some(idle), Some(at)) = (session.idle.as_mut(), idle_at) {
        idle.at = Timestamp::from_millis(at);
    }
    Ok(session)
}

async fn fetch_sessions(
    conn: &mut PgConnection,
    sql: &'static str,
    key: &str,
) -> Result<Vec<Arc<Session>>, StoreError> {
    let rows = sqlx::query(sql)
        .bind(key)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    rows.iter().map(|r| decode(r).map(Arc::new)).collect()
}

/// The upsert of a session row from parameters `$1`–`$14` ([`session_arguments`]); `rows` gives
/// them as a row: `VALUES (…)`, or a `SELECT … FROM` another step of the statement to wait for.
fn session_upsert(rows: &str) -> String {
    format!(
        "INSERT INTO pc_sessions (id, token_hash, subject, policy, parent, live, created_at,
            last_seen_at, idle_at, next_deadline, tomb_until, purge_at, body, application)
         {rows}
         ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash, live = EXCLUDED.live,
            last_seen_at = EXCLUDED.last_seen_at, idle_at = EXCLUDED.idle_at,
            next_deadline = EXCLUDED.next_deadline, tomb_until = EXCLUDED.tomb_until,
            purge_at = EXCLUDED.purge_at, body = EXCLUDED.body,
            application = EXCLUDED.application"
    )
}

/// The parameters of `$1, $2, …, $14` ([`session_upsert`]).
const SESSION_PARAMETERS: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14";

/// `s`'s columns, as [`session_upsert`] takes them.
fn session_arguments(args: &mut PgArguments, s: &Session) -> Result<(), StoreError> {
    let body = serde_json::to_string(&StoredSession::from(s)).map_err(corrupt)?;
    let tomb_until = s
        .ended
        .as_ref()
        .filter(|e| e.reconstituted_into.is_none())
        .and_then(|e| e.reconstitute_until)
        .map(millis);
    let added = [
        args.add(s.id.as_str()),
        args.add(&s.token_hash.0[..]),
        args.add(&s.subject),
        args.add(&s.policy),
        args.add(s.parent.as_ref().map(|p| p.as_str())),
        args.add(s.is_live()),
        args.add(millis(s.created_at)),
        args.add(millis(s.last_seen_at)),
        args.add(s.idle.as_ref().map(|i| millis(i.at))),
        args.add(millis(s.next_deadline().0)),
        args.add(tomb_until),
        args.add(s.ended.as_ref().map(|e| millis(e.purge_at))),
        args.add(body),
        args.add(s.application.as_str()),
    ];
    added.into_iter().collect::<Result<(), _>>().map_err(encode)
}

async fn write_session(conn: &mut PgConnection, s: &Session) -> Result<(), StoreError> {
    let mut args = PgArguments::default();
    session_arguments(&mut args, s)?;
    let sql = session_upsert(&format!("VALUES ({SESSION_PARAMETERS})"));
    sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// One statement that writes a session's row from `rows` (parameters `$1`–`$14`,
/// [`session_arguments`]) and then its events (`$15`–`$20`, [`event_arguments`]), answering
/// the events' positions; `steps` come first (`name AS (…), `), for `rows` to read from. No
/// row written, no event and no position.
fn session_and_events(steps: &str, rows: &str) -> String {
    let steps = format!(
        "{steps} session AS ({upsert} RETURNING 1),",
        upsert = session_upsert(rows)
    );
    events_insert(&steps, 15, "session, ")
}

/// The parameters of [`session_and_events`].
fn session_and_event_arguments(
    session: &Session,
    events: &[AuditEvent],
) -> Result<PgArguments, StoreError> {
    let mut args = PgArguments::default();
    session_arguments(&mut args, session)?;
    event_arguments(&mut args, events)?;
    Ok(args)
}

/// The insert of a change's events from parameters `$first`–`$first+5` ([`event_arguments`]),
/// answering their positions. An event's position is its transaction's id shifted left by
/// [`EVENT_INDEX_BITS`], plus its place among the transaction's events: no lock, and no
/// round trip to learn it first. `steps` are earlier steps of the statement (`name AS (…), `)
/// and `after` those the events wait for (`name, `). It ends with `RETURNING seq`, which a
/// caller may extend by more columns.
fn events_insert(steps: &str, first: usize, after: &str) -> String {
    let bits = EVENT_INDEX_BITS;
    let p = |i: usize| format!("${}", first + i);
    let (at, kinds, subjects, sessions, applications, bodies) =
        (p(0), p(1), p(2), p(3), p(4), p(5));
    format!(
        "WITH {steps}
              tx AS (SELECT pg_current_xact_id()::text::bigint << {bits} AS base),
              used AS (SELECT count(*) AS n FROM pc_events, tx
                       WHERE seq >= tx.base AND seq < tx.base + (1::bigint << {bits}))
         INSERT INTO pc_events (seq, at, kind, subject, session_id, application, body)
         SELECT tx.base + used.n + e.ord - 1, e.at, e.kind, e.subject, e.session_id,
                e.application, e.body
         FROM {after}tx, used,
              unnest({at}::bigint[], {kinds}::text[], {subjects}::text[], {sessions}::text[],
                     {applications}::text[], {bodies}::text[])
              WITH ORDINALITY AS e(at, kind, subject, session_id, application, body, ord)
         WHERE used.n + cardinality({at}::bigint[]) <= (1::bigint << {bits})
         RETURNING seq"
    )
}

/// `events`' columns, as [`events_insert`] takes them. Each body is written before its
/// position is known; reads take the position from the column.
fn event_arguments(args: &mut PgArguments, events: &[AuditEvent]) -> Result<(), StoreError> {
    let mut at = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut subjects = Vec::with_capacity(events.len());
    let mut sessions = Vec::with_capacity(events.len());
    let mut applications = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for event in events {
        at.push(millis(event.at));
        kinds.push(event.kind.as_str());
        subjects.push(event.subject.as_deref());
        sessions.push(event.session_id.as_ref().map(|id| id.as_str()));
        applications.push(event.application.as_ref().map(|id| id.as_str()));
        bodies.push(serde_json::to_string(event).map_err(corrupt)?);
    }
    let added = [
        args.add(at),
        args.add(kinds),
        args.add(subjects),
        args.add(sessions),
        args.add(applications),
        args.add(bodies),
    ];
    added.into_iter().collect::<Result<(), _>>().map_err(encode)
}

/// `events` with the positions [`events_insert`] answered for them.
fn placed(
    mut events: Vec<AuditEvent>,
    mut positions: Vec<i64>,
) -> Result<Vec<AuditEvent>, StoreError> {
    if positions.len() != events.len() {
        return Err(StoreError::Unavailable(BackendError::from(format!(
            "a change of more than {} events cannot be recorded in one transaction",
            1_u64 << EVENT_INDEX_BITS
        ))));
    }
    // Numbered in the order given; RETURNING promises no order.
    positions.sort_unstable();
    for (event, seq) in events.iter_mut().zip(positions) {
        event.seq = u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt(format!("event position {seq} is negative")))?;
    }
    Ok(events)
}

/// Appends events in order and returns them with their positions ([`events_insert`]).
async fn append_events(
    conn: &mut PgConnection,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditEvent>, StoreError> {
    if events.is_empty() {
        return Ok(events);
    }
    let mut args = PgArguments::default();
    event_arguments(&mut args, &events)?;
    let positions = sqlx::query_scalar_with(sqlx::AssertSqlSafe(events_insert("", 1, "")), args)
        .fetch_all(&mut *conn)
        .await
        .map_err(unavailable)?;
    placed(events, positions)
}

/// The query for `query`'s events below a horizon (`$2`, see `event_horizon`): only the
/// filters it sets, so PostgreSQL reads the index of the one that narrows
/// (`pc_events_application` for one application's) in position order, with LIMIT applied after
/// every filter.
fn events_sql(query: &EventQuery) -> String {
    let mut sql =
        String::from("SELECT body, application, seq FROM pc_events WHERE seq > $1 AND seq < $2");
    let mut n = 2;
    for (set, column) in [
        (query.subject.is_some(), "subject"),
        (query.session_id.is_some(), "session_id"),
        (query.application.is_some(), "application"),
    ] {
        if set {
            n += 1;
            sql.push_str(&format!(" AND {column} = ${n}"));
        }
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
    sql
}

/// The call that takes the transaction-scoped lock of the subject in parameter `$param`.
fn subject_lock(param: usize) -> String {
    format!("pg_advisory_xact_lock(hashtextextended(${param}, 7))")
}

async fn lock_subject(conn: &mut PgConnection, subject: &str) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", subject_lock(1))))
        .bind(subject)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Ends live session `id` and, recursively, its live children, inside the transaction; each
/// ending's event is recorded as it is written, so `events` come back with their positions.
async fn end_tree(
    conn: &mut PgConnection,
    id: &SessionId,
    ending: &Ending,
    reason: EndReason,
    ended: &mut Vec<Arc<Session>>,
    events: &mut Vec<AuditEvent>,
) -> Result<Option<Arc<Session>>, StoreError> {
    let mut stack = vec![(id.clone(), reason)];
    let mut first = None;
    while let Some((id, reason)) = stack.pop() {
        let current = fetch_sessions(
            conn,
            "SELECT body, last_seen_at, idle_at FROM pc_sessions WHERE id = $1 AND live FOR UPDATE",
            id.as_str(),
        )
        .await?;
        let Some(current) = current.into_iter().next() else {
            continue;
        };
        let record = Arc::new(plan::ended_record(&current, ending, reason));
        // The ended row, its event and the ids of its live children in one statement. Its
        // snapshot is taken after the lock above: a child whose insert held the parent (FOR
        // SHARE) before it has committed, and any later one waits and then finds the parent
        // ended.
        let event = vec![AuditEvent::ended(&record, &ending.actor)];
        let args = session_and_event_arguments(&record, &event)?;
        // The children ride on the event's row.
        let sql = format!(
            "{}, ARRAY(SELECT id FROM pc_sessions WHERE parent = $1 AND live)",
            session_and_events("", &format!("VALUES ({SESSION_PARAMETERS})"))
        );
        let rows: Vec<(i64, Vec<String>)> = sqlx::query_as_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
        let (positions, children): (Vec<i64>, Vec<Vec<String>>) = rows.into_iter().unzip();
        events.extend(placed(event, positions)?);
        if let Some(delivery) = LogoutDelivery::for_ended(&record) {
            deliveries::insert_new(conn, &delivery).await?;
        }
        if first.is_none() {
            first = Some(Arc::clone(&record));
        }
        ended.push(record);
        for child in children.into_iter().flatten() {
            stack.push((PublicId::from_string(child), EndReason::ParentEnded));
        }
    }
    Ok(first)
}

impl SessionStore for PostgresStore {
    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, StoreError> {
        bounded(async move { self.gatherer.find(*hash).await }).await
    }

    async fn find_by_id(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        bounded(async move {
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            Ok(fetch_sessions(
                &mut conn,
                "SELECT body, last_seen_at, idle_at FROM pc_sessions WHERE id = $1",
                id.as_str(),
            )
            .await?
            .into_iter()
            .next())
        })
        .await
    }

    async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        bounded(async move {
            let mut conn = self.pool.acquire().await.map_err(unavailable)?;
            fetch_sessions(
                &mut conn,
                "SELECT body, last_seen_at, idle_at FROM pc_sessions WHERE subject = $1 AND live
                 ORDER BY created_at, id",
                subject,
            )
            .await
        })
        .await
    }

    async fn insert(&self, insert: Insert) -> Result<Inserted, StoreError> {
        bounded(async move {
            if insert.limit.is_none() && insert.session.parent.is_none() && !insert.reconstitute {
                return self.insert_alone(insert).await;
            }
            let mut tx = self.begin().await?;
            let mut session = insert.session;
            lock_subject(&mut tx, &session.subject).await?;
            if let Some(parent) = &session.parent {
                // The row lock waits for an ending of the parent in flight (`end_tree` locks it FOR
                // UPDATE) and holds off the next one until this child is committed, where that
                // ending's search for children will find it.
                let parent = fetch_sessions(
                    &mut tx,
                    "SELECT body, last_seen_at, idle_at FROM pc_sessions WHERE id = $1 AND live FOR SHARE",
                    parent.as_str(),
                )
                .await?;
                plan::parent_is_live(parent.first().map(Arc::as_ref), &session.subject)?;
            }
            let mut evictions = Vec::new();
            if let Some(limit) = insert.limit {
                let live = fetch_sessions(
                    &mut tx,
                    "SELECT body, last_seen_at, idle_at FROM pc_sessions WHERE subject = $1 AND live",
                    &session.subject,
                )
                .await?;
                evictions = plan::evictions(live, limit, &session)?;
            }
            if insert.reconstitute {
                let rows = sqlx::query(
                    "SELECT body, last_seen_at, idle_at FROM pc_sessions
                     WHERE subject = $1 AND policy = $2 AND tomb_until > $3 FOR UPDATE",
                )
                .bind(&session.subject)
                .bind(&session.policy)
                .bind(millis(session.created_at))
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
                let candidates = rows
                    .iter()
                    .map(|r| decode(r).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(tomb) = plan::pick_tombstone(&candidates, &session) {
                    let used = plan::reconstitute(&mut session, tomb);
                    write_session(&mut tx, &used).await?;
                }
            }
            // The session with its creation's event, then the evictions it caused.
            let created = vec![plan::created_event(&session, &insert.actor)];
            let args = session_and_event_arguments(&session, &created)?;
            let sql = session_and_events("", &format!("VALUES ({SESSION_PARAMETERS})"));
            let positions = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args)
                .fetch_all(&mut *tx)
                .await
                .map_err(unavailable)?;
            let mut events = placed(created, positions)?;
            let eviction = Ending {
                reason: EndReason::NewDevice,
                at: session.created_at,
                actor: insert.actor.clone(),
                reconstitute_until: None,
                retention: insert.ended_retention,
            };
            let mut ended = Vec::new();
            for victim in evictions {
                end_tree(
                    &mut tx,
                    &victim.id,
                    &eviction,
                    EndReason::NewDevice,
                    &mut ended,
                    &mut events,
                )
                .await?;
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(Inserted {
                session: Arc::new(session),
                events,
            })
        })
        .await
    }

    async fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> Result<Option<(Arc<Session>, AuditEvent)>, StoreError> {
        bounded(async move {
            // One statement committed on its own, as `insert_alone`: the row is locked only if it
            // is live at `version` (a concurrent change is waited for, then the row as it left it is
            // checked again), and the next version and its event are written only then.
            let version = i64::try_from(version)
                .map_err(|_| StoreError::Corrupt(format!("session version {version}")))?;
            let events = vec![event];
            let mut args = session_and_event_arguments(&next, &events)?;
            // After the session's fourteen parameters and the events' six.
            args.add(version).map_err(encode)?;
            let sql = session_and_events(
                "current AS (SELECT id FROM pc_sessions
                             WHERE id = $1 AND live AND (body::jsonb ->> 'version')::bigint = $21
                             FOR UPDATE),",
                &format!("SELECT {SESSION_PARAMETERS} FROM current WHERE true"),
            );
            let positions = sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), args)
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            if positions.is_empty() {
                return Ok(None);
            }
            let mut events = placed(events, positions)?;
            Ok(Some((Arc::new(next), events.remove(0))))
        })
        .await
    }

    async fn touch(&self, id: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        bounded(async move {
            // Only forward, only while live; the idle deadline moves with it.
            sqlx::query(
                "UPDATE pc_sessions
                 SET last_seen_at = $2,
                     idle_at = CASE WHEN idle_at IS NULL THEN NULL
                               ELSE $2 + ((body::jsonb -> 'idle' ->> 'lifetime_ms')::bigint) END,
                     next_deadline = LEAST(
                         COALESCE($2 + ((body::jsonb -> 'idle' ->> 'lifetime_ms')::bigint), 9223372036854775807),
                         (body::jsonb -> 'absolute' ->> 'at')::bigint)
                 WHERE id = $1 AND live AND last_seen_at < $2",
            )
            .bind(id.as_str())
            .bind(millis(at))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn end(&self, id: &SessionId, ending: Ending) -> Result<EndedSessions, StoreError> {
        bounded(async move {
            let mut tx = self.begin().await?;
            let (mut all, mut events) = (Vec::new(), Vec::new());
            let Some(first) =
                end_tree(&mut tx, id, &ending, ending.reason, &mut all, &mut events).await?
            else {
                return Ok(EndedSessions::default());
            };
            tx.commit().await.map_err(unavailable)?;
            Ok(EndedSessions {
                sessions: vec![first],
                events,
            })
        })
        .await
    }

    async fn end_subject(
        &self,
        subject: &str,
        application: Option<&AppId>,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> Result<EndedSessions, StoreError> {
        bounded(async move {
            let mut tx = self.begin().await?;
            lock_subject(&mut tx, subject).await?;
            // Children of these end with them in `end_tree`, whatever their application.
            let rows = sqlx::query(
                "SELECT body, last_seen_at, idle_at FROM pc_sessions
                 WHERE subject = $1 AND live AND ($2::text IS NULL OR application = $2)
                 ORDER BY created_at, id",
            )
            .bind(subject)
            .bind(application.map(|a| a.as_str()))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            let live = rows
                .iter()
                .map(|r| decode(r).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?;
            let (mut all, mut events, mut direct) = (Vec::new(), Vec::new(), Vec::new());
            for session in live.iter().filter(|s| Some(&s.id) != except) {
                if let Some(first) = end_tree(
                    &mut tx,
                    &session.id,
                    &ending,
                    ending.reason,
                    &mut all,
                    &mut events,
                )
                .await?
                {
                    direct.push(first);
                }
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(EndedSessions {
                sessions: direct,
                events,
            })
        })
        .await
    }

    async fn application_sessions(
        &self,
        application: &AppId,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        bounded(async move {
            let rows = sqlx::query(
                "SELECT body, last_seen_at, idle_at FROM pc_sessions
                 WHERE application = $1 AND live LIMIT $2",
            )
            .bind(application.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(|r| decode(r).map(Arc::new)).collect()
        })
        .await
    }

    async fn live_counts(&self) -> Result<Vec<LiveCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT application, policy, count(*) FROM pc_sessions
             WHERE live GROUP BY application, policy",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let application: String = r.try_get(0).map_err(unavailable)?;
                let sessions: i64 = r.try_get(2).map_err(unavailable)?;
                Ok(LiveCount {
                    application: PublicId::from_string(application),
                    policy: r.try_get(1).map_err(unavailable)?,
                    sessions: u64::try_from(sessions)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                })
            })
            .collect()
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Arc<Session>>, StoreError> {
        bounded(async move {
            let rows = sqlx::query(
                "SELECT body, last_seen_at, idle_at FROM pc_sessions
                 WHERE live AND next_deadline <= $1 ORDER BY next_deadline, id LIMIT $2",
            )
            .bind(millis(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(|r| decode(r).map(Arc::new)).collect()
        })
        .await
    }

    async fn purge(&self, now: Timestamp) -> Result<usize, StoreError> {
        let done = sqlx::query("DELETE FROM pc_sessions WHERE NOT live AND purge_at <= $1")
            .bind(millis(now))
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn append_event(&self, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        bounded(async move {
            let mut tx = self.begin().await?;
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(events.remove(0))
        })
        .await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        bounded(async move {
            let horizon = self.event_horizon().await?;
            let sql = events_sql(query);
            let mut select = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(i64::try_from(query.after).unwrap_or(i64::MAX))
                .bind(horizon);
            if let Some(subject) = &query.subject {
                select = select.bind(subject.as_str());
            }
            if let Some(id) = &query.session_id {
                select = select.bind(id.as_str());
            }
            if let Some(app) = &query.application {
                select = select.bind(app.as_str());
            }
            let rows = select
                .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    let mut event: AuditEvent =
                        serde_json::from_str(r.get::<&str, _>(0)).map_err(corrupt)?;
                    // The column is the record: an event of no application is NULL there (its body
                    // omits the field, which would read back as the previous release's).
                    event.application = r.get::<Option<String>, _>(1).map(PublicId::from_string);
                    // The body was written before its position was known (`append_events`).
                    event.seq = u64::try_from(r.get::<i64, _>(2))
                        .map_err(|_| StoreError::Corrupt("an event position is negative".into()))?;
                    Ok(event)
                })
                .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bounded(async move {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn store_url_options_become_client_settings() {
        let client = PostgresStore::client_url(
            "postgres://pc@db/portcullis?schema=pc&synchronous_commit=remote_apply&max_connections=4&sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        let url = client.url;
        assert_eq!(client.schema.as_deref(), Some("pc"));
        assert_eq!(client.max_connections, 4);
        assert_eq!(
            PostgresStore::client_url("postgres://db/p")
                .unwrap()
                .max_connections,
            DEFAULT_MAX_CONNECTIONS
        );
        for bad in ["0", "1001", "many", ""] {
            let err = PostgresStore::client_url(&format!("postgres://db/p?max_connections={bad}"))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("max_connections="), "{err}");
        }
        let options = PgConnectOptions::from_str(&url).unwrap();
        assert!(
            options
                .get_options()
                .is_some_and(|o| o.contains("synchronous_commit=remote_apply")),
            "{url}"
        );
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
        let err = PostgresStore::client_url("postgres://db/p?synchronous_commit=off")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("synchronous_commit=off: use local"), "{err}");
        assert!(names_ssl_mode("postgres://db/p?schema=x&sslmode=require"));
        assert!(!names_ssl_mode("postgres://db/p?schema=sslmode"));
    }
}
