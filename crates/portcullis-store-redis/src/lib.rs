//! Redis session store, standalone or Redis Cluster: any number of stateless Portcullis nodes
//! share it.
//!
//! **Key design.** Everything about one subject lives under one hash tag, the subject's route
//! (`{a3}`, one of 256, see [`portcullis_core::subject_route`]); the engine issues tokens whose
//! SHA-256 starts with that route byte and session ids that carry it, so a validation finds its
//! session in one round trip (`GET pc:{a3}:s:<32 raw bytes of the token hash>`, a compact binary
//! record, see [`record`]; on a standalone Redis, the reads of concurrent validations leave
//! together as one `MGET`, see `gather.rs`), and every multi-key change —
//! limits, rotation, "end all but one", cascades — is one Lua script on one slot.
//!
//! **Other keys**, kept few and small (memory is what a large deployment pays for), are shared
//! by many sessions, each a field or member of a small hash or sorted set that Redis keeps in its
//! compact listpack form: the id → token hash link in one of the tag's id buckets
//! (`pc:{a3}:i:<c>`); a subject's entry (its version, then its live sessions' token hashes) in
//! one of its subject buckets (`pc:{a3}:ub:<nn>`).
//!
//! **Buckets grow with their tag** (`buckets.lua`): each kind starts as 64 per tag, and linear
//! hashing adds one bucket at a time, splitting the next bucket in turn whenever a bucket passes
//! `bucket_fill` entries (80 by default), so a bucket stays under Redis' 128-entry listpack limit
//! at any population: past it, an entry costs about twice as much. The tag's meta hash
//! (`pc:{a3}:n`) counts its buckets. A script finds a bucket from that count when it reaches
//! it, so callers name the meta hash only, and a split never races a change or a read.
//!
//! **Changes** are planned in Rust with the same rules as every store (`portcullis_core::plan`)
//! from what was read, then applied by `commit.lua` only if nothing it was planned from changed
//! (session versions and the subject's version); otherwise the plan is redone. Audit events are
//! appended to the tag's stream in the same script.
//!
//! **Applications** share one hash tag of their own, `{apps}` (`applications.rs`): their
//! records, a name index that refuses a taken name in the same script as the change, and their
//! events' stream. A session's application is in its record only (no index by application: it
//! would cost memory on every session), so finding an application's sessions when it is
//! removed walks every live session (`application_sessions`). **API keys** have a hash tag of
//! their own as well, `{k}` (`api_keys.rs`), with their events' stream.
//!
//! **The OpenID Connect provider's records** keep every atomic step on one key or one tag:
//! an authorization code is one hash redeemed by one script (`codes.rs`); a refresh-token
//! family is one hash under its own tag (`{<family>}`), with an index key per token hash
//! naming the family, written before its token, so rotations and a family's end are each one
//! script (`refresh_tokens.rs`); the signing keys are one hash (`{sk}`, `signing_keys.rs`);
//! a person's consents one hash under the tag of their sessions (`consents.rs`). Codes and
//! refresh tokens expire by TTL. A redemption, a rotation and a family's end wait for the
//! replicas as session endings do.
//!
//! **Expiry.** Deadlines of session ids are indexed in sorted sets, one per id bucket (`pc:{a3}:db:<c>`),
//! summarised per tag in `pc:{a3}:dd` (each bucket scored at or before its earliest deadline),
//! purge times in `pc:{a3}:p`; the sweeper reads 256 summaries, then the due buckets
//! (O(expired)). Records carry no TTL: they go only by the store's own changes (the sweeper's
//! endings and purges), so no index can outlive its record. A TTL per record would cost about
//! 40 bytes of Redis' expiry table per session, a tenth of a session, to cover only the case
//! of no node running. Should a record go missing anyway (deleted by hand), reads drop its
//! index entries and the sweeper unlinks its id.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use portcullis_core::oidc::LogoutDelivery;
use portcullis_core::record;
use portcullis_core::{
    ApiKeyCache, AppId, AuditEvent, BackendError, EndReason, EndedSessions, Ending, EventQuery,
    Insert, Inserted, Session, SessionId, SessionStore, StoreError, Timestamp, TokenHash, plan,
    subject_route,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, IntoConnectionInfo, Script};

/// How long a node trusts an API key it looked up (revocation reaches other nodes within this).
pub const API_KEY_CACHE: Duration = Duration::from_secs(1);

/// Retries of a change whose inputs moved under it (many racing creates for one subject).
const ATTEMPTS: usize = 200;

/// The event-stream index of the API-key tag (session tags are 0–255).
const KEY_TAG_INDEX: u64 = 256;

/// How old an event must be before a read of the trail shows it (see
/// `RedisStore::settled_events`): more than the clocks of a Cluster's nodes differ.
const EVENT_SETTLE: Duration = Duration::from_millis(250);

/// The event-stream index of the applications' tag.
const APP_TAG_INDEX: u64 = 257;

/// Due buckets read from each tag's deadline summary per pass of [`SessionStore::due`] (a tag
/// holds hundreds of buckets at ten million sessions, and a sweep's every call reads them all).
const SUMMARY_READ: usize = 64;

/// Records read by one `MGET` of a walk over every session.
const WALK_BATCH: usize = 256;

mod api_keys;
mod applications;
mod codes;
mod consents;
mod deliveries;
mod durable;
mod gather;
mod identities;
mod live;
mod options;
/// Byte 1 of a record whose ending the replicas have not confirmed yet (see `durable.rs`): the
/// scripts read it as not live, as they read 0, and a reader waits for the replicas before it
/// answers (`RedisStore::confirm`), then sets it to 0. Decoding does not look at byte 1 (the
/// ending is in the record), so a release that never writes this value reads it as ended too.
const UNCONFIRMED: u8 = 2;
mod refresh_tokens;
mod replays;
mod signing_keys;
mod throttle;
mod users;

pub use codes::RedisCodeStore;
pub use consents::RedisConsentStore;
pub use deliveries::RedisDeliveryStore;
pub use identities::RedisIdentityStore;
pub use refresh_tokens::RedisRefreshTokenStore;
pub use replays::RedisReplayStore;
pub use signing_keys::RedisSigningKeyStore;
pub use throttle::RedisThrottleStore;
pub use users::RedisUserStore;

/// A script that reaches a tag's buckets: `buckets.lua`, then `body`.
fn with_buckets(body: &str) -> Script {
    Script::new(&[include_str!("buckets.lua"), body].concat())
}

static COMMIT: LazyLock<Script> = LazyLock::new(|| with_buckets(include_str!("commit.lua")));
static TOUCH: LazyLock<Script> = LazyLock::new(|| with_buckets(include_str!("touch.lua")));
static UNLINK: LazyLock<Script> = LazyLock::new(|| with_buckets(include_str!("unlink.lua")));

/// What the id buckets hold for an id. KEYS[1]: the tag's meta hash; ARGV[1]: the id's member.
static LINK_OF: LazyLock<Script> = LazyLock::new(|| {
    with_buckets(
        r"
local _, ids = id_bucket(tag_of_meta(KEYS[1]), ARGV[1])
return redis.call('HGET', ids, ARGV[1])
",
    )
});

/// A subject's entry (nil before its first change). KEYS[1]: the tag's meta hash; ARGV[1]:
/// the subject; ARGV[2]: its hash (`subject_hash`).
static SUBJECT_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    with_buckets(
        r"
return redis.call('HGET', subject_bucket(tag_of_meta(KEYS[1]), ARGV[1], ARGV[2]), ARGV[1])
",
    )
});

/// The subject entries of buckets `ARGV[1]` to `ARGV[1] + ARGV[2] - 1` of a tag (those that
/// exist), after the tag's bucket count. KEYS[1]: the tag's meta hash.
static SUBJECT_ENTRIES: LazyLock<Script> = LazyLock::new(|| {
    with_buckets(
        r"
local tag = tag_of_meta(KEYS[1])
local count = bucket_count(tag, 'u')
local reply = {tostring(count)}
local first = tonumber(ARGV[1])
for b = first, math.min(first + tonumber(ARGV[2]), count) - 1 do
  for _, entry in ipairs(redis.call('HVALS', tag .. 'ub:' .. bucket_name('u', b))) do
    reply[#reply + 1] = entry
  end
end
return reply
",
    )
});

/// A session by id in one round trip: the id's token hash, then its record, which is on the
/// same slot (the hash starts with the route byte the id carries). KEYS[1]: the tag's meta
/// hash. ARGV: the id's member, the record keys' prefix, the route byte. Answers `{}` (no such
/// id), `{hash}` (no record, or a hash of another route, which the caller reads itself) or
/// `{hash, record}`.
static FIND_BY_ID: LazyLock<Script> = LazyLock::new(|| {
    with_buckets(
        r"
local _, ids = id_bucket(tag_of_meta(KEYS[1]), ARGV[1])
local hash = redis.call('HGET', ids, ARGV[1])
if not hash then return {} end
if string.len(hash) ~= 32 or string.sub(hash, 1, 1) ~= ARGV[3] then return {hash} end
local record = redis.call('GET', ARGV[2] .. hash)
if not record then return {hash} end
return {hash, record}
",
    )
});

/// Marks again (a write, so that a `WAIT` after it covers the record) a record whose ending is
/// not yet confirmed on the replicas; 0 when it is no longer so marked. KEYS[1]: the record.
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GETRANGE', KEYS[1], 1, 1) ~= '\2' then return 0 end
redis.call('SETRANGE', KEYS[1], 1, '\2')
return 1
",
    )
});

/// Records whose endings the replicas confirmed lose their mark. KEYS: the records.
static CONFIRMED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for _, key in ipairs(KEYS) do
  if redis.call('GETRANGE', key, 1, 1) == '\2' then redis.call('SETRANGE', key, 1, '\0') end
end
return 0
",
    )
});

/// Writes a subject's entry again as it is (so that a `WAIT` after it covers every earlier write
/// of the subject's slot); 0 when there is no entry. KEYS[1]: the tag's meta hash; ARGV[1]: the
/// subject.
static REWRITE_SUBJECT: LazyLock<Script> = LazyLock::new(|| {
    with_buckets(
        r"
local bucket = subject_bucket(tag_of_meta(KEYS[1]), ARGV[1])
local entry = redis.call('HGET', bucket, ARGV[1])
if not entry then return 0 end
redis.call('HSET', bucket, ARGV[1], entry)
return 1
",
    )
});

/// A write to the slot of `KEYS[1]` that changes nothing anyone reads (a counter of its own), so
/// the `WAIT` after it covers every earlier write to that slot.
static TOUCH_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return redis.call('INCR', KEYS[1])
",
    )
});

/// What connecting can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Bad URL, no server, or TLS refused (the server's certificate, its name, the CA).
    #[error("cannot connect to Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Bad prefix.
    #[error("invalid key prefix \"{0}\": use letters, digits, '-', '_' or ':'")]
    Prefix(String),
    /// A store URL option that cannot work.
    #[error("Redis store URL: {0}")]
    Option(String),
    /// A certificate or key file named in the URL cannot be read.
    #[error("Redis store URL: cannot read {}: {err}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The server cannot confirm endings the way the URL asks (too few replicas, no `WAITAOF`).
    #[error("Redis: {0}")]
    Replicas(String),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// Record reads, gathered into `MGET`s (standalone Redis only: in a Cluster the keys of one
    /// `MGET` would have to share a slot).
    gatherer: Option<gather::Gatherer>,
    prefix: Arc<str>,
    /// Where changes that must reach replicas before they are acknowledged go (`durable.rs`);
    /// `None` when the URL asks for no replica (`wait_replicas=0`).
    durable: Option<Arc<durable::Durable>>,
    api_keys: Arc<ApiKeyCache>,
    /// Where [`SessionStore::application_sessions`] stopped last for an application (a tag), so the next call goes on from there: only a hint where to
    /// start, as every call walks on round the ring until it has its sessions or has seen all.
    walks: Arc<Mutex<HashMap<AppId, u8>>>,
    /// `bucket_fill` of the URL, as the scripts take it.
    bucket_fill: Arc<[u8]>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Commands go out at once. redis-rs leaves Nagle's algorithm on by default, which lets a small
/// command written while an earlier one is unacknowledged wait for that ACK; a pipelined client
/// should not pay that on every validation.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(BackendError::new(err))
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// One change: what must still hold, and what to write.
#[derive(Default)]
struct Plan {
    /// `[kind, key, field, expected]`; see `commit.lua`.
    checks: Vec<[Vec<u8>; 4]>,
    ops: Vec<Vec<Vec<u8>>>,
    keys: BTreeSet<Vec<u8>>,
    events: Vec<(u64, AuditEvent)>,
    /// The subjects whose entries the change rewrites, by name.
    subjects: BTreeMap<String, SubjectChange>,
    /// The change takes access away (it ends a session or retires a token): it is acknowledged
    /// only once the replicas have it.
    durable: bool,
    /// Records the change ends, written marked as not yet confirmed on the replicas.
    unconfirmed: Vec<Vec<u8>>,
}

/// How a plan changes a subject's entry: applied by `commit.lua` to the entry as it is when
/// the change commits, which also moves the subject's version on. A change that depends on the
/// entry as it read it checks that version too ([`RedisStore::guard_subject`]).
#[derive(Default)]
struct SubjectChange {
    key: String,
    added: Vec<TokenHash>,
    removed: Vec<TokenHash>,
}

impl SubjectChange {
    fn add(&mut self, hash: TokenHash) {
        self.removed.retain(|h| h != &hash);
        if !self.added.contains(&hash) {
            self.added.push(hash);
        }
    }

    fn remove(&mut self, hash: TokenHash) {
        self.added.retain(|h| h != &hash);
        if !self.removed.contains(&hash) {
            self.removed.push(hash);
        }
    }
}

impl Plan {
    /// One command; its second part is the key it writes. Parts may be binary.
    fn op(&mut self, parts: &[&[u8]]) {
        if let Some(key) = parts.get(1) {
            self.keys.insert(key.to_vec());
        }
        self.ops.push(parts.iter().map(|p| p.to_vec()).collect());
    }

    fn check(&mut self, kind: &str, key: &[u8], field: &[u8], expected: &[u8]) {
        self.keys.insert(key.to_vec());
        self.checks.push([
            kind.as_bytes().to_vec(),
            key.to_vec(),
            field.to_vec(),
            expected.to_vec(),
        ]);
    }

    /// The session record at `key` has `version` ("" = there is no record).
    fn check_version(&mut self, key: &[u8], version: &str) {
        self.check("version", key, b"", version.as_bytes());
    }

    /// The session record at `key` is live.
    fn check_live(&mut self, key: &[u8]) {
        self.check("live", key, b"", b"");
    }

    /// `GET key` is `expected` (a missing key reads as empty).
    fn check_value(&mut self, key: &[u8], expected: &[u8]) {
        self.check("get", key, b"", expected);
    }

    /// The entry of `subject` in the subject hash at `key` has version `expected` (empty: there
    /// is no entry yet).
    fn check_subject_version(&mut self, key: &[u8], subject: &str, expected: &str) {
        self.check("subject", key, subject.as_bytes(), expected.as_bytes());
    }

    /// The set at `key` holds exactly `members` (token hashes).
    fn check_members(&mut self, key: &[u8], members: &[Vec<u8>]) {
        let expected: Vec<u8> = members
            .iter()
            .filter(|m| m.len() == 32)
            .flatten()
            .copied()
            .collect();
        self.check("members", key, b"", &expected);
    }

    /// Scores `member` of the deadline summary at `summary` with the earliest deadline of
    /// `bucket` (or removes it when the bucket is empty), after the plan's other changes.
    fn settle(&mut self, bucket: &[u8], summary: &[u8], member: &[u8]) {
        self.keys.insert(summary.to_vec());
        self.op(&[b"SETTLE", bucket, summary, member]);
    }

    /// How this plan changes the entry of `subject`, kept in the subject hash at `key`.
    fn subject(&mut self, key: impl FnOnce() -> String, subject: &str) -> &mut SubjectChange {
        self.subjects
            .entry(subject.to_owned())
            .or_insert_with(|| SubjectChange {
                key: key(),
                ..SubjectChange::default()
            })
    }

    /// Rewrites the entries of the subjects it changes, last (`fill`: see `buckets.lua`).
    fn seal_subjects(&mut self, fill: &[u8]) {
        for (subject, change) in std::mem::take(&mut self.subjects) {
            let added: Vec<u8> = change.added.iter().flat_map(|h| h.0).collect();
            let removed: Vec<u8> = change.removed.iter().flat_map(|h| h.0).collect();
            let hash = subject_hash(&subject).to_string();
            self.op(&[
                b"SUBJECT",
                change.key.as_bytes(),
                subject.as_bytes(),
                &added,
                &removed,
                fill,
                hash.as_bytes(),
            ]);
        }
    }

    /// The script's arguments, moved out of the plan: the checks, then each operation with its
    /// length first.
    fn take_args(&mut self) -> Vec<Vec<u8>> {
        let parts = self.ops.iter().map(|op| op.len() + 1).sum::<usize>();
        let mut args = Vec::with_capacity(1 + self.checks.len() * 4 + parts);
        args.push(self.checks.len().to_string().into_bytes());
        for check in std::mem::take(&mut self.checks) {
            args.extend(check);
        }
        for op in std::mem::take(&mut self.ops) {
            args.push(op.len().to_string().into_bytes());
            args.extend(op);
        }
        args
    }
}

/// A subject's entry in its subject hash: the subject's version (bumped by every change of its
/// sessions, so changes planned from what it was read as fail and plan again), then the token
/// hashes of its live sessions. One session fits Redis' compact listpack form (values ≤ 64 B).
#[derive(Debug, Default, Clone, PartialEq)]
struct SubjectEntry {
    version: u64,
    members: Vec<TokenHash>,
}

impl SubjectEntry {
    /// As `commit.lua` writes it.
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + 32 * self.members.len());
        bytes.extend_from_slice(&self.version.to_be_bytes());
        for member in &self.members {
            bytes.extend_from_slice(&member.0);
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(32) {
            return Err(corrupt("subject entry: bad length"));
        }
        let (version, members) = bytes.split_at(8);
        Ok(Self {
            version: u64::from_be_bytes(version.try_into().map_err(corrupt)?),
            members: members.chunks_exact(32).filter_map(member_hash).collect(),
        })
    }
}

/// The token hash an index member stands for (`None` for anything else).
fn member_hash(member: &[u8]) -> Option<TokenHash> {
    member.try_into().ok().map(TokenHash)
}

/// `ZRANGE` of the first `limit` members of `key` scored at or before `now`.
fn range_until(key: &str, now: Timestamp, limit: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(key)
        .arg("-inf")
        .arg(now.as_millis())
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(limit);
    cmd
}

/// What places a subject among its tag's subject buckets (`buckets.lua`, which computes the same
/// when a split moves the subject): the low 32 bits of its 64-bit FNV-1a hash. The route
/// already came from a SHA-256 of the subject; this only spreads subjects within the tag.
fn subject_hash(subject: &str) -> u32 {
    let hash = subject.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as u32
}

fn tag_of(route: u8) -> String {
    format!("{route:02x}")
}

/// An event as its stream keeps it: JSON, with `"application": null` written out when it has
/// none, as serde leaves that out and a missing application reads as the legacy one's (events
/// of the release before applications).
fn event_json(event: &AuditEvent) -> Result<String, StoreError> {
    let mut json = serde_json::to_string(event).map_err(corrupt)?;
    if event.application.is_none() && json.ends_with('}') {
        json.pop();
        json.push_str(r#","application":null}"#);
    }
    Ok(json)
}

fn stream_seq(id: &str, tag_index: u64) -> u64 {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    let n: u64 = n.parse().unwrap_or(0);
    (ms << 20) | (n.min(2047) << 9) | tag_index
}

/// The slot-owning primary with the fewest replicas in `CLUSTER NODES` output (failing
/// replicas count: they are expected back), as its address and count.
fn fewest_replicas(nodes: &str) -> Option<(String, u32)> {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    lines
        .iter()
        .filter(|f| f.len() > 8 && f[2].split(',').any(|flag| flag == "master"))
        .map(|primary| {
            let count = lines
                .iter()
                .filter(|f| f.len() > 3 && f[3] == primary[0])
                .count();
            let address = primary[1].split('@').next().unwrap_or(primary[1]);
            (address.to_owned(), u32::try_from(count).unwrap_or(u32::MAX))
        })
        .min_by_key(|(_, count)| *count)
}

impl RedisStore {
    /// Connects to a store URL: `redis://host:port[/db]`, `rediss://…` (TLS),
    /// `redis+cluster://h1:p1,h2:p2` or `rediss+cluster://…`, with options after `?`:
    /// `prefix=P` (default `pc`; every key starts with it, so stores can share a server),
    /// `wait_replicas=N`, `wait_timeout=500ms`, `wait_aof=true` (how endings reach replicas
    /// before they are acknowledged, see `durable.rs`), `ca_file=PATH`,
    /// `cert_file=PATH&key_file=PATH` (TLS). Every form and default: `options.rs`.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        let options = options::Options::parse(url)?;
        if options.tls {
            // rustls needs a process-wide crypto provider; the binary installs ring at start,
            // and this does the same for any other user of the store (a no-op after the first).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certificates = options.certificates()?;
        let wait = options.wait;
        let (conn, opener) = if options.cluster {
            let client = |response_timeout| {
                let mut builder = redis::cluster::ClusterClientBuilder::new(options.urls.clone())
                    .tcp_settings(tcp_settings())
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(response_timeout)
                    .retries(3);
                if let Some(certificates) = &certificates {
                    builder = builder.certs(certificates.clone());
                }
                builder.build()
            };
            let conn = client(Duration::from_secs(1))?
                .get_async_connection()
                .await?;
            let opener =
                durable::Opener::Cluster(client(durable::Durable::response_timeout(&wait))?);
            (Conn::Cluster(conn), opener)
        } else {
            let info = options.urls[0]
                .as_str()
                .into_connection_info()?
                .set_tcp_settings(tcp_settings());
            let client = match &certificates {
                Some(certificates) => redis::Client::build_with_tls(info, certificates.clone())?,
                None => redis::Client::open(info)?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(1);
            let conn = Conn::Single(client.get_connection_manager_with_config(config).await?);
            let waiting = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(durable::Durable::response_timeout(&wait)));
            (conn, durable::Opener::Single(client, waiting))
        };
        let gatherer = match &conn {
            Conn::Single(c) => Some(gather::Gatherer::start(c.clone())),
            Conn::Cluster(_) => None,
        };
        let mut store = Self {
            conn,
            gatherer,
            prefix: options.prefix.into(),
            durable: None,
            api_keys: Arc::new(ApiKeyCache::new(API_KEY_CACHE)),
            walks: Arc::default(),
            bucket_fill: options.bucket_fill.to_string().into_bytes().into(),
        };
        if wait.replicas > 0 {
            store.check_replicas(&wait).await?;
            store.durable = Some(Arc::new(durable::Durable::new(wait, opener)));
        }
        Ok(store)
    }

    /// Refuses to start when the server cannot confirm endings as `wait` asks: a primary with
    /// fewer replicas than it (every ending there would be answered 503), or `wait_aof` on a
    /// server without `WAITAOF` (Redis before 7.2).
    async fn check_replicas(&self, wait: &options::Wait) -> Result<(), ConnectError> {
        let failed =
            |err: StoreError| ConnectError::Replicas(format!("cannot check the replicas: {err}"));
        if wait.aof {
            let known: Vec<Option<redis::Value>> = self
                .query(redis::cmd("COMMAND").arg("INFO").arg("WAITAOF"))
                .await
                .map_err(failed)?;
            if known.first().is_none_or(Option::is_none) {
                return Err(ConnectError::Replicas(
                    "wait_aof=true needs the WAITAOF command (Redis 7.2 and later), which this server does not have; \
                     leave wait_aof out to wait with WAIT (the replicas received the change)"
                        .into(),
                ));
            }
        }
        let advice = "add replicas, or set wait_replicas=0 in the store URL to acknowledge \
                      endings without them (a failover may then lose the last ones)";
        match &self.conn {
            Conn::Cluster(_) => {
                let nodes: String = self
                    .query(redis::cmd("CLUSTER").arg("NODES"))
                    .await
                    .map_err(failed)?;
                if let Some((primary, count)) = fewest_replicas(&nodes)
                    && count < wait.replicas
                {
                    return Err(ConnectError::Replicas(format!(
                        "the Cluster primary {primary} has {count} replica(s), fewer than \
                         wait_replicas={}: every ending in its slots would be answered 503; {advice}",
                        wait.replicas
                    )));
                }
            }
            Conn::Single(_) => {
                let info: String = self
                    .query(redis::cmd("INFO").arg("replication"))
                    .await
                    .map_err(failed)?;
                let count = info
                    .lines()
                    .find_map(|l| l.strip_prefix("connected_slaves:"))
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .unwrap_or(0);
                if count < wait.replicas {
                    return Err(ConnectError::Replicas(format!(
                        "this Redis server has {count} connected replica(s), fewer than \
                         wait_replicas={}: every ending would be answered 503; {advice}",
                        wait.replicas
                    )));
                }
            }
        }
        Ok(())
    }

    /// The accounts kept beside the sessions (under the same prefix).
    pub fn users(&self) -> RedisUserStore {
        RedisUserStore::new(self.clone())
    }

    /// The failure counts of sign-in kept beside the sessions (under the same prefix), shared
    /// by every node.
    pub fn throttle(&self) -> RedisThrottleStore {
        RedisThrottleStore::new(self.clone())
    }

    /// The OpenID Connect provider's authorization codes, under the same prefix.
    pub fn codes(&self) -> RedisCodeStore {
        RedisCodeStore::new(self.clone())
    }

    /// The OpenID Connect provider's signing keys, under the same prefix, so every node signs
    /// with the same keys.
    pub fn signing_keys(&self) -> RedisSigningKeyStore {
        RedisSigningKeyStore::new(self.clone())
    }

    /// The OpenID Connect provider's refresh tokens, under the same prefix.
    pub fn refresh_tokens(&self) -> RedisRefreshTokenStore {
        RedisRefreshTokenStore::new(self.clone())
    }

    /// One-time identifiers (client assertions' `jti`), under the same prefix.
    pub fn replays(&self) -> RedisReplayStore {
        RedisReplayStore::new(self.clone())
    }

    /// What people consented to give OpenID Connect clients, under the same prefix.
    pub fn consents(&self) -> RedisConsentStore {
        RedisConsentStore::new(self.clone())
    }

    /// The accounts' links to people at upstream identity providers, under the same prefix,
    /// beside the accounts.
    pub fn identities(&self) -> RedisIdentityStore {
        RedisIdentityStore::new(self.clone())
    }

    /// The back-channel logout deliveries its endings wrote, under the same prefix: every node
    /// claims from them.
    pub fn deliveries(&self) -> RedisDeliveryStore {
        RedisDeliveryStore::new(self.clone())
    }

    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    /// Commands sent together (not atomically); in a Cluster their keys must share a slot.
    async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        match &self.conn {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    async fn script<T: FromRedisValue, K: redis::ToRedisArgs, A: redis::ToRedisArgs>(
        &self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<T, StoreError> {
        if let Some(durable) = self.durable.as_deref() {
            let keys: Vec<Vec<u8>> = keys.iter().flat_map(|k| k.to_redis_args()).collect();
            if keys.first().is_some_and(|k| self.takes_access_away(k)) {
                let args: Vec<Vec<u8>> = args.iter().flat_map(|a| a.to_redis_args()).collect();
                let (reply, confirmed) = durable.eval(script, &keys, &args).await?;
                durable.check(confirmed)?;
                return T::from_redis_value(reply).map_err(corrupt);
            }
        }
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        match &self.conn {
            Conn::Single(c) => invocation.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => invocation.invoke_async(&mut c.clone()).await,
        }
        .map_err(unavailable)
    }

    /// Runs `script` (its keys in one slot) and, when the store waits for replicas, answers only
    /// once they confirmed it, whatever its keys: for changes that take access away outside the
    /// tags [`Self::takes_access_away`] knows (a code's redemption, a refresh token's rotation,
    /// a refresh-token family's end). Too few confirmations is `StoreError::Unavailable`: the
    /// change is on the primary, and a retry is safe.
    async fn confirmed_script<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        match self.durable.as_deref() {
            Some(durable) => {
                let (reply, confirmed) = durable.eval(script, keys, args).await?;
                durable.check(confirmed)?;
                T::from_redis_value(reply).map_err(corrupt)
            }
            None => self.script(script, keys, args).await,
        }
    }

    fn key(&self, tag: &str, kind: &str, rest: &str) -> String {
        format!("{}:{{{tag}}}:{kind}:{rest}", self.prefix)
    }

    /// Whether `key` is an API key's, an application's or an account's: every change there
    /// may take access away (a revoked key, a removed application, a disabled account, a
    /// changed password), so each waits for the replicas when the store waits at all.
    fn takes_access_away(&self, key: &[u8]) -> bool {
        let Some(rest) = key
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return false;
        };
        [api_keys::TAG, applications::TAG, "users"]
            .iter()
            .any(|tag| rest.starts_with(format!("{{{tag}}}:").as_bytes()))
    }

    fn tag_key(&self, tag: &str, kind: &str) -> String {
        format!("{}:{{{tag}}}:{kind}", self.prefix)
    }

    /// The record of a session: the prefix, tag and kind, then the 32 bytes of its token hash.
    fn session_key(&self, hash: &TokenHash) -> Vec<u8> {
        let mut key = self.tag_key(&tag_of(hash.0[0]), "s").into_bytes();
        key.push(b':');
        key.extend_from_slice(&hash.0);
        key
    }

    /// The meta hash of tag `route`: how many buckets each kind of index has there
    /// (`buckets.lua`). The scripts find an index bucket from it, so every change and read of
    /// a bucket names the meta hash, and the bucket itself only inside the script.
    fn meta_key(&self, route: u8) -> String {
        self.tag_key(&tag_of(route), "n")
    }

    /// Deadline bucket `name` of tag `route`, as the tag's summary names it.
    fn deadlines_key(&self, route: u8, name: &str) -> String {
        self.key(&tag_of(route), "db", name)
    }

    /// The tag's summary of its deadline indexes: each non-empty bucket scored at its earliest
    /// deadline, so the sweeper reads only the buckets that hold due sessions. Whatever changes
    /// a bucket settles its score in the same atomic step ([`Plan::settle`], `touch.lua`).
    fn deadline_summary_key(&self, route: u8) -> String {
        self.tag_key(&tag_of(route), "dd")
    }

    /// The meta hash of the subject's tag, through which the scripts reach the bucket that
    /// holds its entry ([`SubjectEntry`]).
    fn subject_meta_key(&self, subject: &str) -> String {
        self.meta_key(subject_route(subject))
    }

    fn tombs_key(&self, subject: &str) -> String {
        self.key(&tag_of(subject_route(subject)), "t", subject)
    }

    fn children_key(&self, route: u8, parent: &SessionId) -> String {
        self.key(&tag_of(route), "c", parent.as_str())
    }

    /// The token hash of session `id`.
    async fn hash_of(&self, route: u8, id: &SessionId) -> Result<Option<TokenHash>, StoreError> {
        Ok(self
            .link_of(route, id)
            .await?
            .as_deref()
            .and_then(member_hash))
    }

    /// What the id hash holds for `id`, as stored.
    async fn link_of(&self, route: u8, id: &SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        self.script(&LINK_OF, &[self.meta_key(route)], &[record::id_member(id)])
            .await
    }

    /// The token hash and record of the session a time index names by `id`.
    async fn find_member(
        &self,
        route: u8,
        id: &SessionId,
    ) -> Result<(Option<Vec<u8>>, Option<Session>), StoreError> {
        let link = self.link_of(route, id).await?;
        let session = match link.as_deref().and_then(member_hash) {
            Some(hash) => self.read(&hash).await?,
            None => None,
        };
        Ok((link, session))
    }

    /// Drops time-index `index`'s entry for `id`, found without a record, given the id's `link`
    /// as it was read (see `unlink.lua`).
    async fn unlink(
        &self,
        route: u8,
        index: &str,
        id: &SessionId,
        link: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let meta = self.meta_key(route).into_bytes();
        let record = match link.as_deref().and_then(member_hash) {
            Some(hash) => self.session_key(&hash),
            None => meta.clone(),
        };
        let keys = [meta, index.as_bytes().to_vec(), record];
        let args = [record::id_member(id), link.unwrap_or_default()];
        let _: i64 = self.script(&UNLINK, &keys, &args).await?;
        Ok(())
    }

    /// The record under `hash`; on a standalone Redis, read together with concurrent reads.
    async fn read(&self, hash: &TokenHash) -> Result<Option<Session>, StoreError> {
        let record: Option<Vec<u8>> = match &self.gatherer {
            Some(gatherer) => gatherer.get(self.session_key(hash)).await?,
            None => {
                self.query(redis::cmd("GET").arg(self.session_key(hash)))
                    .await?
            }
        };
        self.decode_read(hash, record).await
    }

    /// A record as read: one whose ending is not yet confirmed is confirmed first.
    async fn decode_read(
        &self,
        hash: &TokenHash,
        record: Option<Vec<u8>>,
    ) -> Result<Option<Session>, StoreError> {
        if record
            .as_ref()
            .is_some_and(|bytes| bytes.get(1) == Some(&UNCONFIRMED))
        {
            self.confirm(hash).await?;
        }
        record
            .map(|bytes| record::decode(*hash, &bytes))
            .transpose()
    }

    /// The record under `hash` is ended but marked as not yet confirmed on the replicas (its
    /// ending was answered 503, or is being made now): waits for the replicas to have it before
    /// anyone reads it, so that a retried logout, which finds the session already ended, is
    /// acknowledged only once the ending would survive a failover.
    async fn confirm(&self, hash: &TokenHash) -> Result<(), StoreError> {
        let Some(durable) = self.durable.as_deref() else {
            return Ok(());
        };
        let key = self.session_key(hash);
        let (marked, confirmed) = durable.eval(&MARK, std::slice::from_ref(&key), &[]).await?;
        if marked == redis::Value::Int(1) {
            durable.check(confirmed)?;
            self.confirmed(vec![key]).await;
        }
        Ok(())
    }

    /// The subject's slot has every earlier change on the replicas (a retried force logout
    /// that finds nothing left to end is acknowledged only then).
    async fn confirm_subject(&self, subject: &str) -> Result<(), StoreError> {
        let Some(durable) = self.durable.as_deref() else {
            return Ok(());
        };
        let keys = [self.subject_meta_key(subject).into_bytes()];
        let (rewritten, confirmed) = durable
            .eval(&REWRITE_SUBJECT, &keys, &[subject.as_bytes().to_vec()])
            .await?;
        if rewritten == redis::Value::Int(1) {
            durable.check(confirmed)?;
        }
        Ok(())
    }

    /// The slot of hash tag `tag` has every earlier change on the replicas. A retried change
    /// of an API key or an application that finds it made already (revoked, removed) is
    /// answered only then: the first try may have been refused because the replicas did not
    /// confirm it, and the change is still only on the primary.
    pub(crate) async fn confirm_slot(&self, tag: &str) -> Result<(), StoreError> {
        let Some(durable) = self.durable.as_deref() else {
            return Ok(());
        };
        let keys = [self.tag_key(tag, "confirmations").into_bytes()];
        let (_, confirmed) = durable.eval(&TOUCH_SLOT, &keys, &[]).await?;
        durable.check(confirmed)
    }

    /// Takes the mark off records whose endings the replicas confirmed. Best effort: a record
    /// left marked costs its next reader one more wait, nothing else.
    async fn confirmed(&self, records: Vec<Vec<u8>>) {
        if !records.is_empty() {
            let _: Result<i64, _> = self.script(&CONFIRMED, &records, &[] as &[&[u8]]).await;
        }
    }

    /// The sessions whose token hashes are the members of set `set_key` (a parent's children,
    /// a subject's tombstones); members whose record is gone are dropped from the set.
    async fn read_members(&self, set_key: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        let members: Vec<Vec<u8>> = self.query(redis::cmd("SMEMBERS").arg(set_key)).await?;
        self.read_listed(set_key, members).await
    }

    /// [`Self::read_members`], for a plan that commits only if the set is still as it read it.
    async fn read_members_checked(
        &self,
        plan: &mut Plan,
        set_key: &str,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let members: Vec<Vec<u8>> = self.query(redis::cmd("SMEMBERS").arg(set_key)).await?;
        plan.check_members(set_key.as_bytes(), &members);
        self.read_listed(set_key, members).await
    }

    async fn read_listed(
        &self,
        set_key: &str,
        members: Vec<Vec<u8>>,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut sessions = Vec::with_capacity(members.len());
        for member in members {
            let session = match member_hash(&member) {
                Some(hash) => self.read(&hash).await?,
                None => None,
            };
            match session {
                Some(s) => sessions.push(Arc::new(s)),
                // Deleted behind our back (or not a token hash at all, as left by an earlier
                // layout): drop the dangling member.
                None => {
                    let _: i64 = self
                        .query(redis::cmd("SREM").arg(set_key).arg(&member))
                        .await?;
                }
            }
        }
        Ok(sessions)
    }

    /// Up to `limit` members of sorted set `key` scored at or before `now`, earliest first.
    async fn members_until(
        &self,
        key: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.query(&range_until(key, now, limit)).await
    }

    /// [`Self::members_until`] with each member's score.
    async fn entries_until(
        &self,
        key: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, f64)>, StoreError> {
        self.query(range_until(key, now, limit).arg("WITHSCORES"))
            .await
    }

    /// The subject's entry as stored (the default before its first change).
    async fn subject_entry(&self, subject: &str) -> Result<SubjectEntry, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .script(
                &SUBJECT_ENTRY,
                &[self.subject_meta_key(subject)],
                &[subject.to_owned(), subject_hash(subject).to_string()],
            )
            .await?;
        bytes
            .map(|b| SubjectEntry::decode(&b))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// The token hashes of every live session of tag `route`, from its subjects' entries, read
    /// 64 buckets per script call (a call blocks Redis for its buckets only). A split adds the
    /// bucket after the last and moves entries into it from one before it, so a walk in bucket
    /// order that reads the count again at each step sees every entry at least once.
    async fn tag_members(&self, route: u8) -> Result<Vec<TokenHash>, StoreError> {
        let meta = [self.meta_key(route)];
        let mut members = Vec::new();
        let mut first = 0;
        loop {
            let args = [first.to_string(), "64".to_owned()];
            let reply: Vec<Vec<u8>> = self.script(&SUBJECT_ENTRIES, &meta, &args).await?;
            let (count, entries) = reply
                .split_first()
                .ok_or_else(|| corrupt("subject buckets: no count"))?;
            let count: usize = std::str::from_utf8(count)
                .ok()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| corrupt("subject buckets: bad count"))?;
            for entry in entries {
                members.extend(SubjectEntry::decode(entry)?.members);
            }
            first += 64;
            if first >= count {
                // A member seen twice (moved by a split during the walk) is counted once.
                members.sort_unstable_by_key(|hash| hash.0);
                members.dedup();
                return Ok(members);
            }
        }
    }

    /// The change commits only if no other change of the subject commits first: for a change
    /// planned from the subject's sessions as they are now (its limit, its sessions' endings).
    async fn guard_subject(&self, plan: &mut Plan, subject: &str) -> Result<(), StoreError> {
        let key = self.subject_meta_key(subject);
        let entry = self.subject_entry(subject).await?;
        let expected = match entry.version {
            0 => String::new(),
            v => v.to_string(),
        };
        plan.check_subject_version(key.as_bytes(), subject, &expected);
        plan.subject(|| key, subject);
        Ok(())
    }

    /// Adds the writes that make the store agree with `next` (replacing `prev`).
    fn write(
        &self,
        plan: &mut Plan,
        prev: Option<&Session>,
        next: &Session,
    ) -> Result<(), StoreError> {
        let route = next.token_hash.0[0];
        let key = self.session_key(&next.token_hash);
        let member = &next.token_hash.0[..];
        let meta = self.meta_key(route);
        let meta = meta.as_bytes();
        let children = next.parent.as_ref().map(|p| self.children_key(route, p));
        let children = children.as_ref().map(String::as_bytes);
        // The time indexes hold session ids, so the sweeper can also unlink the id of a record
        // that went missing; the others hold token hashes, to read records in one step.
        let id = record::id_member(&next.id);
        let id = id.as_slice();
        if let Some(prev) = prev.filter(|p| p.token_hash != next.token_hash) {
            plan.subject(|| self.subject_meta_key(&next.subject), &next.subject)
                .remove(prev.token_hash);
            let old = &prev.token_hash.0[..];
            plan.op(&[b"DEL", &self.session_key(&prev.token_hash)]);
            if let Some(children) = children {
                plan.op(&[b"SREM", children, old]);
            }
        }
        let mut record = record::encode(next)?;
        if self.durable.is_some() {
            if next.ended.is_some() && prev.is_some_and(Session::is_live) {
                // Acknowledged only once the replicas have it (`commit`); until then readers
                // wait for them too (`confirm`).
                record[1] = UNCONFIRMED;
                plan.unconfirmed.push(key.clone());
                plan.durable = true;
            }
            if prev.is_some_and(|p| p.token_hash != next.token_hash) {
                // A rotation: the old token must stay dead after a failover.
                plan.durable = true;
            }
        }
        plan.op(&[b"SET", &key, &record]);
        plan.op(&[b"LINK", meta, id, member, &self.bucket_fill]);
        let tombs = self.tombs_key(&next.subject);
        let tombs = tombs.as_bytes();
        match &next.ended {
            None => {
                plan.subject(|| self.subject_meta_key(&next.subject), &next.subject)
                    .add(next.token_hash);
                let deadline = next.next_deadline().0.as_millis().to_string();
                plan.op(&[b"DEADLINE", meta, id, deadline.as_bytes()]);
                if let Some(children) = children {
                    plan.op(&[b"SADD", children, member]);
                }
            }
            Some(ended) => {
                plan.subject(|| self.subject_meta_key(&next.subject), &next.subject)
                    .remove(next.token_hash);
                let purge = ended.purge_at.as_millis().to_string();
                plan.op(&[b"DEADLINE", meta, id, b""]);
                if let Some(children) = children {
                    plan.op(&[b"SREM", children, member]);
                }
                let purges = self.tag_key(&tag_of(route), "p");
                plan.op(&[b"ZADD", purges.as_bytes(), purge.as_bytes(), id]);
                if ended.reconstitute_until.is_some() && ended.reconstituted_into.is_none() {
                    plan.op(&[b"SADD", tombs, member]);
                } else {
                    plan.op(&[b"SREM", tombs, member]);
                }
            }
        }
        Ok(())
    }

    fn event(
        &self,
        plan: &mut Plan,
        route: Option<u8>,
        event: AuditEvent,
    ) -> Result<(), StoreError> {
        let (tag, index) = match route {
            Some(r) => (tag_of(r), u64::from(r)),
            None => (api_keys::TAG.to_owned(), KEY_TAG_INDEX),
        };
        let body = event_json(&event)?;
        plan.op(&[
            b"XADD",
            self.tag_key(&tag, "e").as_bytes(),
            b"*",
            b"d",
            body.as_bytes(),
        ]);
        plan.events.push((index, event));
        Ok(())
    }

    /// Runs the plan; `None` when something it was planned from has changed.
    async fn commit(&self, mut plan: Plan) -> Result<Option<Vec<AuditEvent>>, StoreError> {
        plan.seal_subjects(&self.bucket_fill);
        let keys: Vec<Vec<u8>> = std::mem::take(&mut plan.keys).into_iter().collect();
        let args = plan.take_args();
        let waits = plan.durable || keys.first().is_some_and(|k| self.takes_access_away(k));
        let (reply, unconfirmed) = match self.durable.as_deref().filter(|_| waits) {
            Some(durable) => {
                let (reply, confirmed) = durable.eval(&COMMIT, &keys, &args).await?;
                let mut unconfirmed = None;
                if reply != redis::Value::Int(0) {
                    match durable.check(confirmed) {
                        Ok(()) => self.confirmed(std::mem::take(&mut plan.unconfirmed)).await,
                        Err(StoreError::Unavailable(source)) => unconfirmed = Some(source),
                        Err(other) => return Err(other),
                    }
                }
                (reply, unconfirmed)
            }
            None => (self.script(&COMMIT, &keys, &args).await?, None),
        };
        let ids: Vec<String> = match reply {
            redis::Value::Int(0) => return Ok(None),
            other => Vec::<String>::from_redis_value(other).map_err(corrupt)?,
        };
        let events = plan
            .events
            .into_iter()
            .zip(ids)
            .map(|((index, mut event), id)| {
                event.seq = stream_seq(&id, index);
                event
            })
            .collect();
        match unconfirmed {
            // Made on the primary, so its events are in the trail: the caller still publishes
            // them (a retry finds the change made and records nothing again).
            Some(source) => Err(StoreError::Unconfirmed { events, source }),
            None => Ok(Some(events)),
        }
    }

    /// Plans the ending of live session `session` and its live children.
    async fn plan_end_tree(
        &self,
        plan: &mut Plan,
        session: Arc<Session>,
        ending: &Ending,
        reason: EndReason,
    ) -> Result<Arc<Session>, StoreError> {
        let mut stack = vec![(session, reason)];
        let mut first = None;
        while let Some((current, reason)) = stack.pop() {
            let route = current.token_hash.0[0];
            plan.check_version(
                &self.session_key(&current.token_hash),
                &current.version.to_string(),
            );
            let record = Arc::new(plan::ended_record(&current, ending, reason));
            self.write(plan, Some(&current), &record)?;
            if let Some(delivery) = LogoutDelivery::for_ended(&record) {
                self.plan_delivery(plan, route, &delivery)?;
            }
            self.event(plan, Some(route), AuditEvent::ended(&record, &ending.actor))?;
            first.get_or_insert_with(|| Arc::clone(&record));
            // A child created after this read changes the set, which fails the plan.
            let children = self
                .read_members_checked(plan, &self.children_key(route, &current.id))
                .await?;
            for child in children.into_iter().filter(|c| c.is_live()) {
                stack.push((child, EndReason::ParentEnded));
            }
        }
        first.ok_or_else(|| corrupt("nothing to end"))
    }

    async fn backoff(attempt: usize) {
        if attempt > 2 {
            tokio::time::sleep(Duration::from_micros(200 * (attempt as u64 % 8 + 1))).await;
        }
    }
}

impl SessionStore for RedisStore {
    const ROUTES_BY_SUBJECT: bool = true;

    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, StoreError> {
        Ok(self.read(hash).await?.map(Arc::new))
    }

    async fn find_by_id(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(route) = id.route(4) else {
            return Ok(None);
        };
        let mut records = self.tag_key(&tag_of(route), "s").into_bytes();
        records.push(b':');
        let args = [record::id_member(id), records, vec![route]];
        let reply: Vec<Vec<u8>> = self
            .script(&FIND_BY_ID, &[self.meta_key(route)], &args)
            .await?;
        let Some(hash) = reply.first().and_then(|member| member_hash(member)) else {
            return Ok(None);
        };
        let session = match reply.get(1) {
            Some(record) => self.decode_read(&hash, Some(record.clone())).await?,
            None if hash.0[0] != route => self.read(&hash).await?,
            None => None,
        };
        Ok(session.map(Arc::new))
    }

    async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        let entry = self.subject_entry(subject).await?;
        let mut live = Vec::with_capacity(entry.members.len());
        let mut dangling = Vec::new();
        for hash in &entry.members {
            match self.read(hash).await? {
                Some(s) if s.is_live() => live.push(Arc::new(s)),
                _ => dangling.push(*hash),
            }
        }
        if !dangling.is_empty() {
            // Deleted behind our back: take it out of the entry. If the subject
            // changed meanwhile, whoever changed it read the entry afresh; the next read retries.
            let mut plan = Plan::default();
            let entry = plan.subject(|| self.subject_meta_key(subject), subject);
            for hash in dangling {
                entry.remove(hash);
            }
            self.commit(plan).await?;
        }
        live.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(live)
    }

    async fn insert(&self, insert: Insert) -> Result<Inserted, StoreError> {
        for attempt in 0..ATTEMPTS {
            let mut session = insert.session.clone();
            let route = session.token_hash.0[0];
            let mut plan = Plan::default();
            if insert.limit.is_some() {
                // The evictions are planned from the subject's sessions as they are now.
                self.guard_subject(&mut plan, &session.subject).await?;
            }
            if let Some(parent) = &session.parent {
                // An ending of the parent committed after this read moves the parent's version,
                // which fails this plan; the next attempt sees it ended.
                let parent = self.find_by_id(parent).await?;
                plan::parent_is_live(parent.as_deref(), &session.subject)?;
                if let Some(parent) = parent {
                    plan.check_version(
                        &self.session_key(&parent.token_hash),
                        &parent.version.to_string(),
                    );
                }
            }
            // The endings share the subject's entry with the creation.
            let mut ended_events = Plan {
                subjects: std::mem::take(&mut plan.subjects),
                ..Plan::default()
            };
            if let Some(limit) = insert.limit {
                let live = self.list_subject(&session.subject).await?;
                let ending = Ending {
                    reason: EndReason::NewDevice,
                    at: session.created_at,
                    actor: insert.actor.clone(),
                    reconstitute_until: None,
                    retention: insert.ended_retention,
                };
                for victim in plan::evictions(live, limit, &session)? {
                    self.plan_end_tree(&mut ended_events, victim, &ending, EndReason::NewDevice)
                        .await?;
                }
            }
            plan.subjects = std::mem::take(&mut ended_events.subjects);
            if insert.reconstitute {
                let tombs = self.read_members(&self.tombs_key(&session.subject)).await?;
                if let Some(tomb) = plan::pick_tombstone(&tombs, &session) {
                    plan.check_version(
                        &self.session_key(&tomb.token_hash),
                        &tomb.version.to_string(),
                    );
                    let used = plan::reconstitute(&mut session, tomb);
                    self.write(&mut plan, Some(tomb), &used)?;
                }
            }
            plan.check_version(&self.session_key(&session.token_hash), "");
            self.write(&mut plan, None, &session)?;
            self.event(
                &mut plan,
                Some(route),
                plan::created_event(&session, &insert.actor),
            )?;
            // Endings after the creation, as the other stores record them.
            plan.checks.extend(ended_events.checks);
            plan.ops.extend(ended_events.ops);
            plan.keys.extend(ended_events.keys);
            plan.events.extend(ended_events.events);
            if let Some(events) = self.commit(plan).await? {
                return Ok(Inserted {
                    session: Arc::new(session),
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> Result<Option<(Arc<Session>, AuditEvent)>, StoreError> {
        for attempt in 0..ATTEMPTS {
            let Some(current) = self.find_by_id(&next.id).await? else {
                return Ok(None);
            };
            if !current.is_live() || current.version != version {
                return Ok(None);
            }
            let mut plan = Plan::default();
            // A rotation moves the record to a new key. It moves the subject's version on too
            // (as every change of the subject's entry does), so an ending planned from the old
            // key (a parent's cascade, "end all but one") plans again, and the rotated session
            // cannot slip past it and stay live.
            plan.check_version(&self.session_key(&current.token_hash), &version.to_string());
            plan.check_live(&self.session_key(&current.token_hash));
            if next.token_hash != current.token_hash {
                plan.check_version(&self.session_key(&next.token_hash), "");
            }
            self.write(&mut plan, Some(&current), &next)?;
            self.event(&mut plan, Some(next.token_hash.0[0]), event.clone())?;
            if let Some(mut events) = self.commit(plan).await? {
                return Ok(Some((Arc::new(next), events.remove(0))));
            }
            // Another change of the subject committed first; whether this session itself
            // moved is decided by reading it again.
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn touch(&self, id: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        let Some(route) = id.route(4) else {
            return Ok(());
        };
        let Some(hash) = self.hash_of(route, id).await? else {
            return Ok(());
        };
        let keys = [self.session_key(&hash), self.meta_key(route).into_bytes()];
        let args = [
            at.as_millis().to_string().into_bytes(),
            record::id_member(id),
        ];
        let _: i64 = self.script(&TOUCH, &keys, &args).await?;
        Ok(())
    }

    async fn end(&self, id: &SessionId, ending: Ending) -> Result<EndedSessions, StoreError> {
        for attempt in 0..ATTEMPTS {
            let Some(current) = self.find_by_id(id).await?.filter(|s| s.is_live()) else {
                return Ok(EndedSessions::default());
            };
            let mut plan = Plan::default();
            let first = self
                .plan_end_tree(&mut plan, current, &ending, ending.reason)
                .await?;
            if let Some(events) = self.commit(plan).await? {
                return Ok(EndedSessions {
                    sessions: vec![first],
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    async fn end_subject(
        &self,
        subject: &str,
        application: Option<&AppId>,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> Result<EndedSessions, StoreError> {
        for attempt in 0..ATTEMPTS {
            let mut plan = Plan::default();
            self.guard_subject(&mut plan, subject).await?;
            let mut direct = Vec::new();
            for session in self.list_subject(subject).await? {
                if Some(&session.id) != except
                    && application.is_none_or(|app| &session.application == app)
                    && !plan.keys.contains(&self.session_key(&session.token_hash))
                {
                    direct.push(
                        self.plan_end_tree(&mut plan, session, &ending, ending.reason)
                            .await?,
                    );
                }
            }
            if direct.is_empty() {
                self.confirm_subject(subject).await?;
                return Ok(EndedSessions::default());
            }
            if let Some(events) = self.commit(plan).await? {
                return Ok(EndedSessions {
                    sessions: direct,
                    events,
                });
            }
            Self::backoff(attempt).await;
        }
        Err(StoreError::Unavailable(
            "too much contention on one subject; retry".into(),
        ))
    }

    /// There is no index of sessions by application (it would cost memory on every session for
    /// an operation as rare as removing an application), so this walks every live session: the
    /// subject entries of each of the 256 tags (one script per tag, [`Self::tag_members`]),
    /// then the records they name (`MGET`s of up to 256 records of one tag, one slot too),
    /// keeping the live sessions of `application`. One call costs O(all live sessions) reads
    /// when the application has fewer than `limit` of them: 256 round trips on an empty store,
    /// and all live records once. No key outside a known slot is read and no command spans
    /// slots, so it works the same on a Cluster (no `SCAN`).
    ///
    /// The engine calls this again after ending each batch until it answers nothing; so that
    /// removing an application with many sessions costs O(all sessions), not O(all sessions)
    /// per batch, each call starts at the tag where the previous call for the same application
    /// filled its batch (`RedisStore::walks`; the sessions it found there are ended by then),
    /// and a call answers nothing only after a whole round.
    async fn application_sessions(
        &self,
        application: &AppId,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        let mut found = Vec::new();
        if limit == 0 {
            return Ok(found);
        }
        let walks = || self.walks.lock().unwrap_or_else(PoisonError::into_inner);
        let start = walks().get(application).copied().unwrap_or(0);
        for route in (0..=u8::MAX).map(|step| start.wrapping_add(step)) {
            let members = self.tag_members(route).await?;
            for batch in members.chunks(WALK_BATCH) {
                let mut mget = redis::cmd("MGET");
                for hash in batch {
                    mget.arg(self.session_key(hash));
                }
                let records: Vec<Option<Vec<u8>>> = self.query(&mget).await?;
                for (hash, record) in batch.iter().zip(records) {
                    // A record deleted behind the store's back: `list_subject` drops its entry.
                    let Some(bytes) = record else { continue };
                    let session = record::decode(*hash, &bytes)?;
                    if session.is_live() && &session.application == application {
                        found.push(Arc::new(session));
                        if found.len() == limit {
                            walks().insert(application.clone(), route);
                            return Ok(found);
                        }
                    }
                }
            }
        }
        walks().remove(application);
        Ok(found)
    }

    async fn live_counts(&self) -> Result<Vec<portcullis_core::LiveCount>, StoreError> {
        self.count_live().await
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Arc<Session>>, StoreError> {
        // Each tag's summary scores its buckets at their earliest deadlines. Buckets are read
        // earliest first until `limit` entries are at hand that no unread bucket can precede,
        // then records only for those entries: reading every due record on each call made a
        // sweep of n expired sessions cost n²/limit reads. A pass whose entries all turn out
        // not due moves them out of the range, so the next pass makes progress; a few passes
        // bound the call if writers keep racing it.
        let summaries: Vec<String> = (0..=255u8)
            .map(|route| self.deadline_summary_key(route))
            .collect();
        for _ in 0..8 {
            let mut buckets = Vec::new();
            // A tag whose summary has more due buckets than are read may hold an entry as early
            // as the score of its first bucket left unread, and none earlier: the horizon is the
            // earliest such score, and nothing later than it is answered.
            let mut horizon = f64::INFINITY;
            for (route, summary) in (0..=255u8).zip(&summaries) {
                let mut due_buckets = self.entries_until(summary, now, SUMMARY_READ + 1).await?;
                if due_buckets.len() > SUMMARY_READ
                    && let Some((_, first_unread)) = due_buckets.pop()
                {
                    horizon = horizon.min(first_unread);
                }
                for (bucket, score) in due_buckets {
                    buckets.push((score, route, bucket));
                }
            }
            if buckets.is_empty() {
                break;
            }
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
            let mut visited: Vec<(u8, Vec<u8>, String)> = Vec::new();
            let mut entries: Vec<(f64, usize, Vec<u8>)> = Vec::new();
            // The buckets that had due entries when read.
            let mut read = BTreeSet::new();
            for (earliest, route, bucket) in buckets {
                if earliest > horizon
                    || entries.len() >= limit && entries.last().is_some_and(|e| e.0 <= earliest)
                {
                    break;
                }
                let key = match std::str::from_utf8(&bucket) {
                    Ok(name) if !name.is_empty() => self.deadlines_key(route, name),
                    // Not a bucket any store of ours wrote: nothing to read there.
                    _ => String::new(),
                };
                if !key.is_empty() {
                    let found = self.entries_until(&key, now, limit).await?;
                    // All past the horizon: the bucket's score is early, and is settled below.
                    if found.first().is_some_and(|(_, score)| *score <= horizon) {
                        read.insert(visited.len());
                    }
                    for (member, score) in found {
                        entries.push((score, visited.len(), member));
                    }
                    entries.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
                    entries.truncate(limit);
                    entries.retain(|e| e.0 <= horizon);
                }
                visited.push((route, bucket, key));
            }
            let mut due = Vec::new();
            let mut changed = BTreeSet::new();
            for (_, at, member) in entries {
                let (route, _, key) = &visited[at];
                let route = *route;
                let Some(id) = record::member_id(&member) else {
                    let _: i64 = self.query(redis::cmd("ZREM").arg(key).arg(&member)).await?;
                    changed.insert(at);
                    continue;
                };
                let (link, session) = self.find_member(route, &id).await?;
                match session {
                    Some(s) if s.is_live() && s.next_deadline().0 <= now => due.push(Arc::new(s)),
                    // Out of the bucket where it was found, and into the bucket the script
                    // finds for the id now (a split since the read may have moved it).
                    Some(s) => {
                        let score = match s.is_live() {
                            true => s.next_deadline().0.as_millis().to_string(),
                            false => String::new(),
                        };
                        let mut plan = Plan::default();
                        let meta = self.meta_key(route);
                        plan.op(&[b"ZREM", key.as_bytes(), &member]);
                        plan.op(&[b"DEADLINE", meta.as_bytes(), &member, score.as_bytes()]);
                        self.commit(plan).await?;
                        changed.insert(at);
                    }
                    None => {
                        self.unlink(route, key, &id, link).await?;
                        changed.insert(at);
                    }
                }
            }
            // Buckets this pass changed itself, or found with nothing due (their score was
            // early: a race with a writer, or data of an earlier version), are settled here;
            // endings settle their own.
            for (at, (route, bucket, key)) in visited.iter().enumerate() {
                let summary = &summaries[usize::from(*route)];
                if key.is_empty() {
                    let _: i64 = self
                        .query(redis::cmd("ZREM").arg(summary).arg(bucket))
                        .await?;
                } else if changed.contains(&at) || !read.contains(&at) {
                    let mut plan = Plan::default();
                    plan.settle(key.as_bytes(), summary.as_bytes(), bucket);
                    self.commit(plan).await?;
                }
            }
            if !due.is_empty() {
                due.sort_by(|a, b| (a.next_deadline().0, &a.id).cmp(&(b.next_deadline().0, &b.id)));
                return Ok(due);
            }
        }
        Ok(Vec::new())
    }

    async fn purge(&self, now: Timestamp) -> Result<usize, StoreError> {
        let mut purged = 0;
        for route in 0..=255u8 {
            let key = self.tag_key(&tag_of(route), "p");
            for member in self.members_until(&key, now, 1000).await? {
                let Some(id) = record::member_id(&member) else {
                    continue;
                };
                match self.find_member(route, &id).await? {
                    (Some(_), Some(session)) if !session.is_live() => {
                        let hash = session.token_hash;
                        let mut plan = Plan::default();
                        plan.op(&[b"ZREM", key.as_bytes(), &member]);
                        plan.op(&[b"DEL", &self.session_key(&hash)]);
                        let meta = self.meta_key(route);
                        plan.op(&[b"LINK", meta.as_bytes(), &member, b"", &self.bucket_fill]);
                        let tombs = self.tombs_key(&session.subject);
                        plan.op(&[b"SREM", tombs.as_bytes(), &hash.0]);
                        self.commit(plan).await?;
                    }
                    (_, Some(_)) => {
                        let _: i64 = self
                            .query(redis::cmd("ZREM").arg(&key).arg(&member))
                            .await?;
                    }
                    (link, None) => self.unlink(route, &key, &id, link).await?,
                }
                purged += 1;
            }
        }
        Ok(purged)
    }

    async fn append_event(&self, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        // In the stream of the subject's tag, where a query by subject reads; an event of no
        // subject (a failure for an unknown name) joins the stream of API-key events.
        let route = event.subject.as_deref().map(subject_route);
        let mut plan = Plan::default();
        self.event(&mut plan, route, event)?;
        let mut events = self
            .commit(plan)
            .await?
            .ok_or_else(|| corrupt("an event-only commit was refused"))?;
        Ok(events.remove(0))
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let (events, unsettled) = self.settled_events(query).await?;
        if !unsettled {
            return Ok(events);
        }
        // Events too new to be settled were left out; once they are, read again, so a read
        // shows every event written before it asked (its caller's own among them).
        tokio::time::sleep(EVENT_SETTLE).await;
        Ok(self.settled_events(query).await?.0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl RedisStore {
    /// The events of `query` below the settled horizon, and whether it left out newer ones.
    ///
    /// The streams are read one after another, not as one snapshot, and an event's position
    /// is its stream entry's time: an event added to a stream already read, while a later one
    /// is read, would lie below events this read returns, and a reader paging by `after`
    /// would pass it for good. So only events older than the read's start by
    /// [`EVENT_SETTLE`] are shown: any event not yet written when its stream was read gets a
    /// later time than that (Redis stamps an entry with its own clock, which the nodes of a
    /// Cluster keep within that of each other).
    async fn settled_events(
        &self,
        query: &EventQuery,
    ) -> Result<(Vec<AuditEvent>, bool), StoreError> {
        let (secs, micros): (u64, u64) = self.query(&redis::cmd("TIME")).await?;
        let started_ms = secs * 1000 + micros / 1000;
        let settle_ms = u64::try_from(EVENT_SETTLE.as_millis()).unwrap_or(u64::MAX);
        let horizon = started_ms.saturating_sub(settle_ms) << 20;
        let mut unsettled = false;
        let tags: Vec<(String, u64)> = match (&query.subject, &query.session_id) {
            (Some(subject), _) => vec![(
                tag_of(subject_route(subject)),
                u64::from(subject_route(subject)),
            )],
            (None, Some(id)) => match id.route(4) {
                Some(r) => vec![(tag_of(r), u64::from(r))],
                None => return Ok((Vec::new(), false)),
            },
            (None, None) => (0..=255u8)
                .map(|r| (tag_of(r), u64::from(r)))
                .chain([
                    (api_keys::TAG.to_owned(), KEY_TAG_INDEX),
                    (applications::TAG.to_owned(), APP_TAG_INDEX),
                ])
                .collect(),
        };
        let mut found = Vec::new();
        for (tag, index) in tags {
            let key = self.tag_key(&tag, "e");
            let mut start = format!("{}-0", query.after >> 20);
            let mut matched = 0;
            loop {
                let page: Vec<(String, HashMap<String, String>)> = self
                    .query(
                        redis::cmd("XRANGE")
                            .arg(&key)
                            .arg(&start)
                            .arg("+")
                            .arg("COUNT")
                            .arg(500),
                    )
                    .await?;
                let last = page.last().map(|(id, _)| id.clone());
                for (id, fields) in &page {
                    let seq = stream_seq(id, index);
                    let Some(body) = fields.get("d") else {
                        continue;
                    };
                    if seq <= query.after {
                        continue;
                    }
                    let mut event: AuditEvent = serde_json::from_str(body).map_err(corrupt)?;
                    event.seq = seq;
                    if query.matches(&event) {
                        if seq >= horizon {
                            unsettled = true;
                            continue;
                        }
                        found.push(event);
                        matched += 1;
                    }
                }
                match last {
                    Some(last) if page.len() == 500 && matched < query.limit => {
                        start = format!("({last}")
                    }
                    _ => break,
                }
            }
        }
        found.sort_by_key(|e| e.seq);
        // Past `limit`, what was left out comes on a later read anyway.
        unsettled &= found.len() < query.limit;
        found.truncate(query.limit);
        Ok((found, unsettled))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::PublicId;

    use super::*;

    #[test]
    fn a_subject_entry_survives_a_round_trip_and_rejects_damage() {
        let entry = SubjectEntry {
            version: 7,
            members: vec![TokenHash([1; 32]), TokenHash([2; 32])],
        };
        let bytes = entry.encode();
        assert_eq!(bytes.len(), 8 + 64);
        assert_eq!(SubjectEntry::decode(&bytes).unwrap(), entry);
        let one = SubjectEntry {
            version: 1,
            members: vec![TokenHash([3; 32])],
        };
        assert!(
            one.encode().len() <= 64,
            "one session stays in listpack form"
        );
        for cut in [0, 7, 9, bytes.len() - 1] {
            assert!(SubjectEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_event_keeps_its_application_or_its_lack_of_one() {
        let mut event = AuditEvent {
            seq: 0,
            at: Timestamp::from_millis(1),
            kind: portcullis_core::EventKind::ApiKeyCreated,
            actor: portcullis_core::Actor::cli(),
            session_id: None,
            subject: None,
            policy: None,
            application: None,
            reason: None,
            detail: serde_json::json!({"x": "}"}),
        };
        let read = |e: &AuditEvent| -> AuditEvent {
            serde_json::from_str(&event_json(e).unwrap()).unwrap()
        };
        assert_eq!(read(&event), event);
        event.application = Some(PublicId::from_string("app_shop".into()));
        assert_eq!(read(&event), event);
        // Events of the release before applications have no such field at all.
        let old = serde_json::to_string(&AuditEvent {
            application: None,
            ..event.clone()
        })
        .unwrap();
        let old: AuditEvent = serde_json::from_str(&old).unwrap();
        assert_eq!(old.application, Some(portcullis_core::legacy_app()));
    }
}
