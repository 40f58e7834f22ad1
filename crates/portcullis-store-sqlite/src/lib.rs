//! The embedded default store: SQLite in one WAL file, zero setup.
//!
//! Live sessions are answered from memory by [`portcullis_core::CachedStore`]; every change is
//! written through [`SqliteJournal`] before it is acknowledged, and on open the live sessions
//! are loaded back. Validation never reads SQLite (DESIGN §7).
//!
//! **Group commit.** The journal queues changes ([`Journal::enqueue`]) for one writer task, which
//! takes every job waiting when it starts a transaction (up to [`MAX_BATCH`]), writes them in
//! queue order in one `BEGIN IMMEDIATE` transaction and answers each once it has committed. A
//! failed transaction fails its jobs and every change queued after them, until the cache has
//! set memory back to what is durable ([`Journal::recover`]: the sessions those changes held,
//! read again one by one). The writes of the OpenID Connect provider's
//! busiest entities, refresh tokens and authorization codes, go through the same writer, so a
//! refresh grant's rotation shares its transaction with whatever else arrived with it.
//!
//! Durability: the writer runs WAL with `synchronous = FULL`, so an acknowledged change of
//! sessions, keys, applications, events, refresh tokens or codes survives a crash, a `kill -9`
//! of the process and a power loss: each transaction's commit waits for the disk, and group
//! commit shares that wait among the jobs that arrived together. The other stores of the file
//! write on pooled connections with `synchronous = NORMAL`: their changes survive a crash or
//! `kill -9` at once, and a power loss from the writer's next commit on.
//!
//! Accounts, sign-in failure counts and the OpenID Connect provider's codes, signing keys,
//! refresh tokens, consents and back-channel logout deliveries live in the same file, each
//! behind a store of its own reached from the journal ([`SqliteJournal::throttle`],
//! [`SqliteJournal::codes`], …). They are not cached: every call reads or writes SQLite, so
//! each of their atomic steps is one statement or one `BEGIN IMMEDIATE` transaction (the
//! writer's, for codes and refresh tokens), whichever connection or process makes it.
//! Deliveries are added by the journal, in the transaction that ends their session.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod applications;
mod codes;
mod consents;
mod deliveries;
mod identities;
mod refresh_tokens;
mod replays;
mod signing_keys;
mod throttle;
mod users;
mod writer;

pub use codes::SqliteCodeStore;
pub use consents::SqliteConsentStore;
pub use deliveries::SqliteDeliveryStore;
pub use identities::SqliteIdentityStore;
pub use refresh_tokens::SqliteRefreshTokenStore;
pub use replays::SqliteReplayStore;
pub use signing_keys::SqliteSigningKeyStore;
pub use throttle::SqliteThrottleStore;
pub use users::SqliteUserStore;
pub use writer::MAX_BATCH;

use applications::ApplicationRow;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use portcullis_core::{
    AuditEvent, BackendError, CachedStore, Change, CommitTicket, EventQuery, Journal, PublicId,
    Recovery, Restored, Session, SessionId, Snapshot, StoreError, StoredApiKey, StoredSession,
    Timestamp, TokenHash, Touch, record,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Row, Sqlite, SqlitePool, Transaction};
use writer::Writer;

/// The SQLite-backed store.
pub type SqliteStore = CachedStore<SqliteJournal>;

/// What opening the SQLite store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database could not be opened or created.
    #[error("cannot open SQLite database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate SQLite database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be loaded.
    #[error(transparent)]
    Load(#[from] StoreError),
}

/// Persists the changes of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteJournal {
    pool: SqlitePool,
    writer: Writer,
    /// The current refresh token of every family, shared by every [`SqliteRefreshTokenStore`]
    /// of this journal.
    refresh_tokens: Arc<parking_lot::Mutex<refresh_tokens::CurrentTokens>>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(BackendError::new(err))
}

fn corrupt(err: serde_json::Error) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// Opens (creating if needed) the database file at `path`, migrates it and loads it.
pub async fn open(path: &Path) -> Result<SqliteStore, OpenError> {
    let display = path.display().to_string();
    // Created readable by its owner only: it holds accounts' password hashes and the trail.
    // SQLite gives its WAL and shared-memory files the database file's permissions.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(_) => {}
            // Another process made it meanwhile, with these permissions too.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(OpenError::Open {
                    path: display,
                    source: sqlx::Error::Io(err),
                });
            }
        }
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(|source| OpenError::Open {
            path: display.clone(),
            source,
        })?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // The other stores' writes (codes, refresh tokens, throttle, …) are one transaction each
        // on these connections: each waiting for the disk would hold SQLite's one write lock that
        // long. They reach the disk with the writer's next commit (a WAL fsync covers every frame
        // before it), or a checkpoint.
        .synchronous(SqliteSynchronous::Normal)
        // Checkpoints every 32 MiB of WAL rather than 4: a page written again and again (the
        // tables' last pages, the indexes' hot ones) is copied to the database once per
        // checkpoint, and each checkpoint waits for the disk.
        .pragma("wal_autocheckpoint", "8192")
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await
        .map_err(|source| OpenError::Open {
            path: display,
            source,
        })?;
    MIGRATOR.run(&pool).await?;
    // The writer's own connection, so its page cache stays warm from one batch to the next.
    // Its page cache: 64 MiB, so the pages its batches write again are at hand. Each commit
    // waits for the disk: what it acknowledges survives a power cut.
    let writer = options
        .clone()
        .synchronous(SqliteSynchronous::Full)
        .pragma("cache_size", "-65536")
        .connect()
        .await
        .map_err(|source| OpenError::Open {
            path: path.display().to_string(),
            source,
        })?;
    let refresh_tokens = refresh_tokens::CurrentTokens::load(&pool).await?;
    let journal = SqliteJournal {
        pool,
        writer: Writer::start(writer),
        refresh_tokens: Arc::new(parking_lot::Mutex::new(refresh_tokens)),
    };
    let snapshot = journal.load_all_but_sessions().await?;
    let store = CachedStore::open(journal, snapshot);
    store.journal().restore_sessions(&store).await?;
    Ok(store)
}

/// A `body` column read as its stored form `S` and converted to the domain type `T`.
fn read_body<S, T>(body: &str) -> Result<T, StoreError>
where
    S: serde::de::DeserializeOwned,
    T: TryFrom<S, Error = StoreError>,
{
    T::try_from(serde_json::from_str::<S>(body).map_err(corrupt)?)
}

/// The columns [`read_session`] reads, then the row's `rowid`.
const SELECT_SESSIONS: &str = "SELECT record, token_hash, body, rowid FROM sessions";

/// A session row: its record, or the JSON body of a row last written before records.
fn read_session(row: &sqlx::sqlite::SqliteRow) -> Result<Session, StoreError> {
    match read_restored(row)? {
        Restored::Record(hash, record) => record::decode(hash, &record),
        Restored::Session(session) => Ok(*session),
    }
}

/// A session row as the cache restores it: its record as stored, or the session decoded from
/// the JSON body of a row last written before records.
fn read_restored(row: &sqlx::sqlite::SqliteRow) -> Result<Restored, StoreError> {
    match row.get::<Option<&[u8]>, _>(0) {
        Some(bytes) => {
            let hash = TokenHash::from_hex(row.get(1))
                .ok_or_else(|| StoreError::Corrupt("a session row's token hash".into()))?;
            Ok(Restored::Record(hash, bytes.into()))
        }
        None => Ok(Restored::Session(Box::new(read_body::<
            StoredSession,
            Session,
        >(row.get(2))?))),
    }
}

/// Reads the session rows in batches of [`RESTORE_BATCH`] (keyset by `rowid`) into `batches`,
/// until the table or the receiver ends; a batch that fails to read is
/// sent as its error and ends the reading. Batches the receiver has emptied come back through
/// `spares` to be filled again: allocated afresh, each batch's several megabytes were faulted
/// in (and zeroed by the kernel) again every time.
async fn read_session_batches(
    pool: SqlitePool,
    batches: tokio::sync::mpsc::Sender<Result<Vec<Restored>, StoreError>>,
    mut spares: tokio::sync::mpsc::UnboundedReceiver<Vec<Restored>>,
) {
    let sql = format!("{SELECT_SESSIONS} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2");
    let mut after = i64::MIN;
    loop {
        let mut batch = spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(RESTORE_BATCH as usize));
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(after)
            .bind(RESTORE_BATCH)
            .fetch_all(&pool)
            .await
            .map_err(unavailable);
        let read = rows.and_then(|rows| {
            if let Some(last) = rows.last() {
                after = last.get(3);
            }
            for row in &rows {
                batch.push(read_restored(row)?);
            }
            Ok(())
        });
        match read {
            Ok(()) if batch.is_empty() => return,
            Ok(()) => {
                if batches.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                let _ = batches.send(Err(err)).await;
                return;
            }
        }
    }
}

/// A time as a record header keeps it, in `hex()`'s upper-case digits.
fn header_hex(at: Timestamp) -> String {
    format!("{:016X}", at.as_millis())
}

/// Sessions read back per query on open: a batch is all that is ever held twice, as rows and as
/// records (or decoded, for rows without a record).
const RESTORE_BATCH: i64 = 10_000;

impl SqliteJournal {
    /// Hands every retained session to `store`, a batch at a time, in the order of the table.
    /// A task reads the next batches while this one is indexed: on a runtime with
    /// two threads the two halves of opening ten million sessions overlap.
    async fn restore_sessions(&self, store: &SqliteStore) -> Result<(), StoreError> {
        let (batches, mut arrived) = tokio::sync::mpsc::channel(2);
        let (spare, spares) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(read_session_batches(self.pool.clone(), batches, spares));
        let mut restoring = store.restoring()?;
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        restoring.reserve(usize::try_from(count).unwrap_or(0));
        while let Some(batch) = arrived.recv().await {
            let mut batch = batch?;
            restoring.add(batch.drain(..))?;
            let _ = spare.send(batch);
        }
        drop(restoring);
        reader
            .await
            .map_err(|err| StoreError::Unavailable(BackendError::new(err)))
    }

    /// Reads back every API key, every application and the last event position.
    async fn load_all_but_sessions(&self) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot {
            api_keys: self
                .read_bodies::<StoredApiKey, _>("SELECT body FROM api_keys")
                .await?,
            applications: self.read_applications().await?,
            ..Snapshot::default()
        };
        let last: Option<i64> = sqlx::query("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?
            .get(0);
        snapshot.last_seq = u64::try_from(last.unwrap_or(0)).unwrap_or(0);
        Ok(snapshot)
    }

    /// Every row of a one-column `body` query, read as its stored form `S` and converted to
    /// the domain type `T`.
    async fn read_bodies<S, T>(&self, sql: &'static str) -> Result<Vec<T>, StoreError>
    where
        S: serde::de::DeserializeOwned,
        T: TryFrom<S, Error = StoreError>,
    {
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| read_body::<S, T>(row.get(0)))
            .collect()
    }

    /// Every application, oldest first.
    async fn read_applications(&self) -> Result<Vec<portcullis_core::Application>, StoreError> {
        let sql = format!(
            "SELECT {} FROM applications ORDER BY created_at, id",
            applications::COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                ApplicationRow::read(row)
                    .map_err(unavailable)?
                    .into_application()
            })
            .collect()
    }

    /// The accounts kept in the same database file.
    pub fn users(&self) -> SqliteUserStore {
        SqliteUserStore::new(self.pool.clone())
    }

    /// The failure counts of sign-in kept in the same database file, shared by every process
    /// that opens it.
    pub fn throttle(&self) -> SqliteThrottleStore {
        SqliteThrottleStore::new(self.pool.clone())
    }

    /// The OpenID Connect provider's authorization codes, kept in the same database file and
    /// written through the journal's writer.
    pub fn codes(&self) -> SqliteCodeStore {
        SqliteCodeStore::new(self.pool.clone(), self.writer.clone())
    }

    /// The OpenID Connect provider's signing keys, kept in the same database file.
    pub fn signing_keys(&self) -> SqliteSigningKeyStore {
        SqliteSigningKeyStore::new(self.pool.clone())
    }

    /// The OpenID Connect provider's refresh tokens, kept in the same database file, written
    /// through the journal's writer, the current one of each family also in memory.
    pub fn refresh_tokens(&self) -> SqliteRefreshTokenStore {
        SqliteRefreshTokenStore::new(
            self.pool.clone(),
            self.writer.clone(),
            Arc::clone(&self.refresh_tokens),
        )
    }

    /// What people consented to give clients, kept in the same database file.
    pub fn consents(&self) -> SqliteConsentStore {
        SqliteConsentStore::new(self.pool.clone())
    }

    /// The accounts' links to people at upstream identity providers, kept in the same
    /// database file.
    pub fn identities(&self) -> SqliteIdentityStore {
        SqliteIdentityStore::new(self.pool.clone())
    }

    /// The back-channel logout deliveries its endings wrote, kept in the same database file.
    pub fn deliveries(&self) -> SqliteDeliveryStore {
        SqliteDeliveryStore::new(self.pool.clone())
    }

    /// One-time identifiers (client assertions' `jti`), kept in the same database file.
    pub fn replays(&self) -> SqliteReplayStore {
        SqliteReplayStore::new(self.pool.clone())
    }

    /// Closes the connections (tests reopen the same file).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A unique violation on an application's row means its name (or id) is taken.
fn application_error(err: sqlx::Error, name: &str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::NameTaken(name.to_owned()),
        _ => unavailable(err),
    }
}

/// The query for `query`'s events: only the filters it sets, so SQLite can read the index of
/// the one that narrows (`events_by_application` for one application's) in position order,
/// with LIMIT applied after every filter.
fn events_sql(query: &EventQuery) -> String {
    let mut sql = String::from("SELECT body, application FROM events WHERE seq > ?");
    if query.subject.is_some() {
        sql.push_str(" AND subject = ?");
    }
    if query.session_id.is_some() {
        sql.push_str(" AND session_id = ?");
    }
    if query.application.is_some() {
        sql.push_str(" AND application = ?");
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    sql
}

/// Rows per multi-row statement: 7 parameters each, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 1000;

/// Deletes the sessions `ids`.
async fn delete_sessions(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[&SessionId],
) -> Result<(), StoreError> {
    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
        let mut delete = sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM sessions WHERE id IN (");
        let mut list = delete.separated(", ");
        for id in chunk {
            list.push_bind(id.as_str());
        }
        delete.push(")");
        delete
            .build()
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Writes `sessions` whole, in order (a later row of the same session wins).
async fn upsert_sessions(
    tx: &mut Transaction<'_, Sqlite>,
    sessions: &[&Arc<Session>],
) -> Result<(), StoreError> {
    for chunk in sessions.chunks(ROWS_PER_STATEMENT) {
        let records = chunk
            .iter()
            .map(|s| record::encode(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO sessions \
             (id, token_hash, subject, live, next_deadline, purge_at, body, record) ",
        );
        insert.push_values(chunk.iter().zip(records), |mut row, (session, record)| {
            row.push_bind(session.id.as_str())
                .push_bind(session.token_hash.to_hex())
                .push_bind(session.subject.as_str())
                .push_bind(session.is_live())
                .push_bind(session.next_deadline().0.as_millis())
                .push_bind(session.ended.as_ref().map(|e| e.purge_at.as_millis()))
                .push_bind("")
                .push_bind(record);
        });
        insert.push(
            " ON CONFLICT (id) DO UPDATE SET token_hash = excluded.token_hash,
               live = excluded.live, next_deadline = excluded.next_deadline,
               purge_at = excluded.purge_at, body = excluded.body, record = excluded.record",
        );
        insert
            .build()
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Appends `events`.
async fn insert_events(
    tx: &mut Transaction<'_, Sqlite>,
    events: &[&AuditEvent],
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let bodies = chunk
            .iter()
            .map(|e| serde_json::to_string(e).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (seq, at, kind, subject, session_id, application, body) ",
        );
        insert.push_values(chunk.iter().zip(bodies), |mut row, (event, body)| {
            row.push_bind(seq_param(event.seq))
                .push_bind(event.at.as_millis())
                .push_bind(event.kind.as_str())
                .push_bind(event.subject.as_deref())
                .push_bind(event.session_id.as_ref().map(|id| id.as_str()))
                .push_bind(event.application.as_ref().map(|id| id.as_str()))
                .push_bind(body);
        });
        insert
            .build()
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Writes `changes` in `tx`, in order: the sessions and events of all of them in a few
/// multi-row statements, the rest (deliveries, keys, applications: rare) change by change.
/// Purges go first; no change purges a session that another change of the same batch writes
/// (a purged session ended past its retention, and nothing changes such a session), and a batch
/// where one would is written change by change all the same.
pub(crate) async fn write_changes(
    tx: &mut Transaction<'_, Sqlite>,
    changes: &[&Change],
) -> Result<(), StoreError> {
    let purged: Vec<&SessionId> = changes.iter().flat_map(|c| &c.purged).collect();
    let sessions: Vec<&Arc<Session>> = changes.iter().flat_map(|c| &c.sessions).collect();
    if changes.len() > 1 && sessions.iter().any(|s| purged.contains(&&s.id)) {
        for change in changes {
            Box::pin(write_changes(tx, &[change])).await?;
        }
        return Ok(());
    }
    delete_sessions(tx, &purged).await?;
    upsert_sessions(tx, &sessions).await?;
    let events: Vec<&AuditEvent> = changes.iter().flat_map(|c| &c.events).collect();
    insert_events(tx, &events).await?;
    for change in changes {
        write_rest(tx, change).await?;
    }
    Ok(())
}

/// Writes what of `change` is not sessions or events.
async fn write_rest(tx: &mut Transaction<'_, Sqlite>, change: &Change) -> Result<(), StoreError> {
    for delivery in &change.deliveries {
        deliveries::insert_new(tx, delivery).await?;
    }
    for key in &change.api_keys {
        let body = StoredApiKey::encode(key)?;
        sqlx::query(
            "INSERT INTO api_keys (id, key_hash, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        )
        .bind(key.id.as_str())
        .bind(key.key_hash.to_hex())
        .bind(body)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    }
    for id in &change.removed_applications {
        sqlx::query("DELETE FROM applications WHERE id = ?1")
            .bind(id.as_str())
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    for app in &change.applications {
        let row = ApplicationRow::of(app)?;
        sqlx::query(
            "INSERT INTO applications
                   (id, name, policies, default_policy, grants, created_at, version, client)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                   policies = excluded.policies, default_policy = excluded.default_policy,
                   grants = excluded.grants, version = excluded.version,
                   client = excluded.client",
        )
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.policies)
        .bind(&row.default_policy)
        .bind(&row.grants)
        .bind(row.created_at)
        .bind(row.version)
        .bind(&row.client)
        .execute(&mut **tx)
        .await
        .map_err(|err| application_error(err, &app.name))?;
    }
    Ok(())
}

impl Journal for SqliteJournal {
    async fn commit(&self, change: &Change) -> Result<(), StoreError> {
        match self.enqueue(change.clone()) {
            Some(ticket) => ticket.durable().await,
            None => Err(StoreError::Unavailable("the writer stopped".into())),
        }
    }

    fn enqueue(&self, change: Change) -> Option<CommitTicket> {
        let (answer, ticket) = CommitTicket::new();
        self.writer.change(change, answer);
        Some(ticket)
    }

    async fn recover(&self) -> Result<Recovery, StoreError> {
        self.writer.barrier().await?;
        let ids = self.writer.not_durable();
        let kept = self.load_all_but_sessions().await?;
        let mut sessions = Vec::with_capacity(ids.len());
        let sql = format!("{SELECT_SESSIONS} WHERE id = ?1");
        for id in ids {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            let durable = row.as_ref().map(read_session).transpose()?;
            sessions.push((id, durable));
        }
        self.writer.recovered();
        Ok(Recovery {
            sessions,
            api_keys: kept.api_keys,
            applications: kept.applications,
            last_seq: kept.last_seq,
        })
    }

    async fn commit_touches(&self, touches: &[Touch]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for touch in touches {
            // Only ever forward, and never on a session that has ended meanwhile.
            // A record's header holds last seen and the idle deadline as 8-byte big-endian
            // integers at bytes 10 and 18 (`portcullis_core::record`): patched in place as hex
            // (`||` would make text of the bytes), and compared as fixed-width hex, which orders
            // as the numbers do. A row from before records patches its JSON body instead.
            sqlx::query(
                "UPDATE sessions SET next_deadline = ?2,
                   record = CASE WHEN record IS NULL THEN NULL
                     WHEN ?6 IS NULL THEN unhex(substr(hex(record), 1, 20) || ?5
                       || substr(hex(record), 37))
                     ELSE unhex(substr(hex(record), 1, 20) || ?5 || ?6
                       || substr(hex(record), 53)) END,
                   body = CASE WHEN record IS NOT NULL THEN body
                     WHEN ?4 IS NULL THEN json_set(body, '$.last_seen_at', ?3)
                     ELSE json_set(body, '$.last_seen_at', ?3, '$.idle.at', ?4) END
                 WHERE id = ?1 AND live = 1 AND CASE WHEN record IS NULL
                   THEN json_extract(body, '$.last_seen_at') < ?3
                   ELSE substr(hex(record), 21, 16) < ?5 END",
            )
            .bind(touch.id.as_str())
            .bind(touch.next_deadline.as_millis())
            .bind(touch.last_seen_at.as_millis())
            .bind(touch.idle_at.map(|t| t.as_millis()))
            .bind(header_hex(touch.last_seen_at))
            .bind(touch.idle_at.map(header_hex))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = events_sql(query);
        let mut select = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(seq_param(query.after));
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
        rows.into_iter()
            .map(|row| {
                let mut event: AuditEvent =
                    serde_json::from_str(row.get::<&str, _>(0)).map_err(corrupt)?;
                // The column is the record: an event of no application is NULL there (its body
                // omits the field, which would read back as the previous release's).
                event.application = row.get::<Option<String>, _>(1).map(PublicId::from_string);
                Ok(event)
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
