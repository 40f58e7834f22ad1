//! People who sign in at Portcullis: local accounts, their credentials (an Argon2id password
//! and an optional TOTP second factor), the [`UserStore`] contract and the [`Accounts`]
//! service that checks credentials under the shared [`ThrottleStore`].
//!
//! The SSO session of a person is an ordinary [`crate::Session`] whose subject is the
//! account's `id` (`usr_…`), never the username: usernames are what people type, ids are what
//! sessions and applications keep.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::event::{Actor, AuditEvent, AuditSink, EventKind};
use crate::random::{OsRandom, RandomSource};
use crate::sealed::{Keyring, SealError, sealed_key_id};
use crate::store::EventTrail;
use crate::throttle::{
    MemoryThrottleStore, ThrottleRules, ThrottleStore, Verdict, account_key, address_key,
    device_key, pending_key, second_factor_key,
};
use crate::time::{Clock, Timestamp};
use crate::token::PublicId;

/// A local account.
///
/// User stores keep it as [`crate::stored::StoredUser`], whose field names are the storage
/// contract, so this type may change freely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable public id (`usr_…`); the subject of the person's sessions.
    pub id: String,
    /// What the person types to sign in (normalised: trimmed, lower case).
    pub username: String,
    /// Bumped on every change; stores replace a user only at the version read.
    pub version: u64,
    /// Argon2id PHC string; empty for an account without a password.
    pub password_hash: String,
    /// A disabled account cannot sign in, and disabling it ends its sessions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The enrolled TOTP second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpFactor>,
    /// When the account was created.
    pub created_at: Timestamp,
    /// When the password was last set.
    pub password_changed_at: Timestamp,
    /// The password is shorter than a password alone may be ([`MIN_PASSWORD_ALONE`]): set
    /// while a second factor was enrolled, so that factor cannot be removed before a longer
    /// password is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short_password: bool,
}

impl User {
    /// Whether the account has a password (one made by a sign-in upstream has none).
    pub fn has_password(&self) -> bool {
        !self.password_hash.is_empty()
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password hash and the TOTP secret stay out of logs.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("version", &self.version)
            .field("disabled", &self.disabled)
            .field("totp", &self.totp.is_some())
            .finish_non_exhaustive()
    }
}

/// An enrolled TOTP authenticator (RFC 6238: SHA-1, 6 digits, 30 s steps, ±1 step).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpFactor {
    /// The shared secret (base32), sealed with the [`Keyring`] for the account's id
    /// (`sealed:v1:…`); an earlier release stored it in clear, and it is sealed at its next use.
    pub secret: String,
    /// The last time step accepted; a code is accepted once (RFC 6238 §5.2).
    pub last_step: u64,
    /// When it was enrolled.
    pub enrolled_at: Timestamp,
}

/// What a user store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    /// The username is taken.
    #[error("the username is taken")]
    Exists,
    /// The backend cannot answer: fail closed.
    #[error("the user store is unavailable: {0}")]
    Unavailable(#[source] crate::store::BackendError),
    /// A stored record cannot be read.
    #[error("a stored user record is corrupt: {0}")]
    Corrupt(String),
}

/// The future a [`UserStore`] method returns. Boxed so the store can be shared as
/// `Arc<dyn UserStore>`: account operations are rare next to validation.
pub type UserFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, UserStoreError>> + Send + 'a>>;

/// Where accounts live. `portcullis-store-tests` checks every implementation the same way.
pub trait UserStore: Send + Sync + 'static {
    /// Adds an account; [`UserStoreError::Exists`] when the username is taken.
    fn add_user<'a>(&'a self, user: &'a User) -> UserFuture<'a, ()>;
    /// The account with this (normalised) username.
    fn user_by_name<'a>(&'a self, username: &'a str) -> UserFuture<'a, Option<User>>;
    /// The account with this id.
    fn user_by_id<'a>(&'a self, id: &'a str) -> UserFuture<'a, Option<User>>;
    /// Every account, by username.
    fn list_users(&self) -> UserFuture<'_, Vec<User>>;
    /// Replaces `next.id`'s record if it is still at `next.version - 1`; `Ok(false)` when it
    /// changed meanwhile (or is gone).
    fn replace_user<'a>(&'a self, next: &'a User) -> UserFuture<'a, bool>;
}

/// Accounts in memory (tests, `memory://`).
#[derive(Debug, Default)]
pub struct MemoryUserStore(Mutex<HashMap<String, User>>);

impl MemoryUserStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl UserStore for MemoryUserStore {
    fn add_user<'a>(&'a self, user: &'a User) -> UserFuture<'a, ()> {
        Box::pin(async move {
            let mut users = self.0.lock();
            if users.values().any(|u| u.username == user.username) {
                return Err(UserStoreError::Exists);
            }
            users.insert(user.id.clone(), user.clone());
            Ok(())
        })
    }

    fn user_by_name<'a>(&'a self, username: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(async move {
            Ok(self
                .0
                .lock()
                .values()
                .find(|u| u.username == username)
                .cloned())
        })
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> UserFuture<'a, Option<User>> {
        Box::pin(async move { Ok(self.0.lock().get(id).cloned()) })
    }

    fn list_users(&self) -> UserFuture<'_, Vec<User>> {
        Box::pin(async move {
            let mut users: Vec<User> = self.0.lock().values().cloned().collect();
            users.sort_by(|a, b| a.username.cmp(&b.username));
            Ok(users)
        })
    }

    fn replace_user<'a>(&'a self, next: &'a User) -> UserFuture<'a, bool> {
        Box::pin(async move {
            let mut users = self.0.lock();
            match users.get_mut(&next.id) {
                Some(current) if current.version + 1 == next.version => {
                    *current = next.clone();
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }
}

/// Normalises a username as typed; `None` when it is not an acceptable username
/// (1–64 characters of letters, digits, `.`, `_`, `-`, `@`).
pub fn normalize_username(text: &str) -> Option<String> {
    let name = text.trim().to_lowercase();
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    ok.then_some(name)
}

/// The shortest password accepted when it is the only factor (SP 800-63B-4 §3.1.1.2).
pub const MIN_PASSWORD_ALONE: usize = 15;
/// The shortest password accepted beside a second factor.
pub const MIN_PASSWORD_WITH_SECOND_FACTOR: usize = 8;
/// The longest password accepted (SP 800-63B-4 asks for at least 64).
pub const MAX_PASSWORD: usize = 256;

/// Why a new password is refused (SP 800-63B-4: length, and no password found in a list of
/// common and compromised ones or built from the account's own name; no composition rules).
///
/// The list is zxcvbn's: the 30,000 most frequent passwords of public breaches with English
/// words and names, matched through common substitutions, reversals, repeats and keyboard
/// patterns; a password that it estimates under 10^8 guesses is refused.
pub fn password_problem(username: &str, password: &str, second_factor: bool) -> Option<String> {
    let length = password.chars().count();
    let min = if second_factor {
        MIN_PASSWORD_WITH_SECOND_FACTOR
    } else {
        MIN_PASSWORD_ALONE
    };
    if length < min {
        return Some(if second_factor {
            format!("Use at least {min} characters.")
        } else {
            format!(
                "Use at least {min} characters (or {MIN_PASSWORD_WITH_SECOND_FACTOR} once a second factor is set up)."
            )
        });
    }
    if length > MAX_PASSWORD {
        return Some(format!("Use at most {MAX_PASSWORD} characters."));
    }
    let estimate = zxcvbn::zxcvbn(password, &[username, "portcullis"]);
    if estimate.score() < zxcvbn::Score::Three {
        return Some(
            "That password is common or too easy to guess; choose another, such as a few unrelated words."
                .into(),
        );
    }
    None
}

/// Argon2id's working memory for one hash (19 MiB with the default parameters). Each hashing
/// permit keeps one and reuses it, so password checks never hand the allocator 19 MiB blocks
/// that it may keep mapped at whatever high-water mark a burst of sign-ins reached.
pub struct HashMemory(Vec<argon2::Block>);

impl HashMemory {
    /// Memory for a hash with the parameters [`hash_password`] uses.
    pub fn new() -> Self {
        Self(vec![
            argon2::Block::default();
            argon2::Params::DEFAULT.block_count()
        ])
    }
}

impl Default for HashMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// Hashes a password with Argon2id (OWASP parameters: 19 MiB, 2 passes) in `memory`.
/// CPU-heavy: call it off the async threads.
pub fn hash_password(password: &str, random: &dyn RandomSource, memory: &mut HashMemory) -> String {
    let mut salt = [0u8; 16];
    random.fill(&mut salt);
    let argon2 = Argon2::default();
    let mut output = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    let phc = argon2
        .hash_password_into_with_memory(password.as_bytes(), &salt, &mut output, &mut memory.0)
        .map_err(argon2::password_hash::Error::from)
        .and_then(|()| {
            Ok(argon2::PasswordHash {
                algorithm: argon2::Algorithm::Argon2id.ident(),
                version: Some(argon2::Version::default().into()),
                params: argon2::Params::DEFAULT.try_into()?,
                salt: Some(argon2::password_hash::phc::Salt::new(&salt)?),
                hash: Some(argon2::password_hash::phc::Output::new(&output)?),
            })
        });
    // Default parameters, a 16-byte salt and memory sized for them are always valid.
    phc.expect("Argon2id with default parameters").to_string()
}

/// Whether `password` matches the PHC string `hash`, computed in `memory` when it is large
/// enough for the hash's parameters (a hash made with larger ones gets its own for this
/// check). The outputs are compared in constant time.
pub fn verify_password(hash: &str, password: &str, memory: &mut HashMemory) -> bool {
    let Ok(phc) = argon2::PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc
        .version
        .map_or(Ok(argon2::Version::default()), argon2::Version::try_from)
    else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&phc) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut output = vec![0u8; expected.len()];
    let computed = if params.block_count() <= memory.0.len() {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut output, &mut memory.0)
    } else {
        argon2.hash_password_into(password.as_bytes(), salt, &mut output)
    };
    computed.is_ok() && crate::token::same_secret(&output, expected.as_bytes())
}

/// A hash of a password nobody knows: an unknown username is checked against it so that it
/// costs the same time as a wrong password.
static DECOY_HASH: LazyLock<String> = LazyLock::new(|| {
    hash_password(
        "no account has this password",
        &crate::random::OsRandom,
        &mut HashMemory::new(),
    )
});

/// A new TOTP secret (160 bits), base32.
pub fn new_totp_secret(random: &dyn RandomSource) -> String {
    let mut bytes = [0u8; 20];
    random.fill(&mut bytes);
    totp_rs::Secret::from(bytes.to_vec()).to_base32()
}

/// The `otpauth://` URI an authenticator app reads (as a QR code or pasted).
pub fn totp_uri(secret: &str, issuer: &str, account: &str) -> String {
    fn enc(text: &str) -> String {
        let mut out = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'@') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits=6&period=30",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// The time step a TOTP `code` matches at `now` (±1 step), if it is newer than `last_step`.
pub fn totp_step(secret: &str, code: &str, now: Timestamp, last_step: u64) -> Option<u64> {
    let secret = totp_rs::Secret::try_from_base32(secret).ok()?;
    let totp = totp_rs::Builder::new().with_secret(secret).build().ok()?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let step = totp.check(&code, u64::try_from(now.as_millis() / 1000).ok()?)?;
    (step > last_step).then_some(step)
}

/// The TOTP code for `secret` at `now` (for tests and tooling).
pub fn totp_code(secret: &str, now: Timestamp) -> Option<String> {
    let secret = totp_rs::Secret::try_from_base32(secret).ok()?;
    let totp = totp_rs::Builder::new().with_secret(secret).build().ok()?;
    Some(
        totp.generate(u64::try_from(now.as_millis() / 1000).ok()?)
            .to_string(),
    )
}

/// Why a sign-in step failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown username or wrong password/code: deliberately the same answer.
    #[error("the username or password is wrong")]
    Invalid,
    /// Too many failures: wait this long.
    #[error("too many failed attempts; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// Too many wrong codes in this sign-in in progress: it must start again.
    #[error("too many wrong codes; sign in again")]
    SignInSpent,
    /// Too many credential checks are waiting: try again after this long.
    #[error("the server is busy checking credentials; try again in {} s", .0.as_secs().max(1))]
    Busy(Duration),
    /// The user store cannot answer: fail closed.
    #[error(transparent)]
    Store(#[from] UserStoreError),
}

/// What an account operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The username is not acceptable.
    #[error("usernames are 1–64 letters, digits, '.', '_', '-' or '@'")]
    InvalidUsername,
    /// The username is taken.
    #[error("the username is taken")]
    Exists,
    /// No such account.
    #[error("no such account")]
    NotFound,
    /// The new password is refused.
    #[error("{0}")]
    WeakPassword(String),
    /// The TOTP code does not match.
    #[error("the code is wrong or was already used")]
    WrongCode,
    /// The account changed concurrently; the caller may retry.
    #[error("the account changed concurrently; retry")]
    Conflict,
    /// Too many credential checks are waiting: try again after this long.
    #[error("the server is busy checking credentials; try again in {} s", .0.as_secs().max(1))]
    Busy(Duration),
    /// Second factors are kept encrypted and no encryption key is configured.
    #[error(
        "second factors need an encryption key: set `encryption_keys` (or PORTCULLIS_ENCRYPTION_KEYS)"
    )]
    NoEncryptionKey,
    /// A stored second factor cannot be opened with the configured keys.
    #[error(transparent)]
    Sealed(#[from] SealError),
    /// The second factor cannot be removed while the password is too short to stand alone.
    #[error(
        "set a password of at least {MIN_PASSWORD_ALONE} characters before removing the second factor"
    )]
    PasswordTooShortAlone,
    /// The user store cannot answer.
    #[error(transparent)]
    Store(UserStoreError),
}

impl From<UserStoreError> for AccountError {
    fn from(err: UserStoreError) -> Self {
        match err {
            UserStoreError::Exists => Self::Exists,
            other => Self::Store(other),
        }
    }
}

/// Accounts and their credentials: adding people, checking passwords and codes under the
/// throttle, changing factors. Every change is published to the audit log.
pub struct Accounts {
    users: Arc<dyn UserStore>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    sink: Arc<dyn AuditSink>,
    /// Where account and sign-in events are stored with the session events (none in tests
    /// that read only the log).
    trail: Option<Arc<dyn EventTrail>>,
    throttle: Arc<dyn ThrottleStore>,
    hashing: HashGate,
    keyring: Option<Keyring>,
    /// Seals device cookies: the configured keys, or a key of this process when none is
    /// configured (its cookies then last until a restart).
    device_ring: Keyring,
}

/// Who changes an account, and from where: the audit trail records both. An [`Actor`] alone
/// converts into one with no origin (the command line, the API).
#[derive(Debug, Clone, Copy)]
pub struct Acting<'a> {
    /// Who.
    pub actor: &'a Actor,
    /// The request's client, when the change comes over HTTP.
    pub origin: Origin<'a>,
}

impl<'a> From<&'a Actor> for Acting<'a> {
    fn from(actor: &'a Actor) -> Self {
        Self {
            actor,
            origin: Origin::default(),
        }
    }
}

/// Where a credential attempt comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The client address (the HTTP layer resolves proxies).
    pub address: Option<&'a str>,
    /// The device cookie the browser presents ([`Accounts::device_cookie`]), if any.
    pub device: Option<&'a str>,
    /// The client's user agent, for the audit trail.
    pub user_agent: Option<&'a str>,
}

fn device_cookie_context(user_id: &str) -> String {
    format!("device-cookie:{user_id}")
}

/// The longest username or password read from a sign-in form: longer input is refused before
/// any hashing or store lookup (usernames are at most 64 characters, passwords 256).
const MAX_TYPED_BYTES: usize = 1024;

/// The characters of why an upstream sign-in failed that its event keeps (the upstream's own
/// error text is in it, and is not ours to store at any length).
const MAX_FAILURE_WHY: usize = 200;

/// How long a caller turned away by a full [`HashGate`] is asked to wait.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Bounds Argon2id work (19 MiB and ~50 ms of a core each): at most one hash per core runs,
/// and at most [`HashGate::QUEUE_PER_PERMIT`] per core wait; beyond that the caller is told
/// to come back, so unauthenticated load cannot exhaust memory or threads.
struct HashGate {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
    /// Working memory of the permits that have hashed; never more than one per permit, since a
    /// hash takes one only while it holds a permit.
    memory: Arc<Mutex<Vec<HashMemory>>>,
}

impl HashGate {
    const QUEUE_PER_PERMIT: usize = 8;

    fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(permits)),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting: permits * Self::QUEUE_PER_PERMIT,
            memory: Arc::new(Mutex::new(Vec::with_capacity(permits))),
        }
    }

    fn for_this_machine() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Runs `work` on the blocking pool, in a permit's hashing memory, once a permit is free;
    /// `None` when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Option<T> {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        // The semaphore is never closed.
        let permit = permit.ok()?;
        let pool = Arc::clone(&self.memory);
        let done = tokio::task::spawn_blocking(move || {
            let mut memory = pool.lock().pop().unwrap_or_default();
            let value = work(&mut memory);
            pool.lock().push(memory);
            drop(permit);
            value
        })
        .await;
        match done {
            Ok(value) => Some(value),
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }
}

impl Accounts {
    /// The service over `users`.
    pub fn new(
        users: Arc<dyn UserStore>,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
        sink: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            users,
            clock,
            random,
            sink,
            trail: None,
            throttle: Arc::new(MemoryThrottleStore::new()),
            hashing: HashGate::for_this_machine(),
            keyring: None,
            device_ring: Keyring::parse(&[Keyring::generate_entry("process", &OsRandom)])
                .expect("a generated key parses"),
        }
    }

    /// Seals second factors and device cookies with `keyring` (without one, enrolling a
    /// factor is refused).
    pub fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.device_ring = keyring.clone();
        self.keyring = Some(keyring);
        self
    }

    /// Whether second factors can be enrolled (an encryption key is configured).
    pub fn can_seal_second_factors(&self) -> bool {
        self.keyring.is_some()
    }

    /// A device cookie for a browser `user_id` just signed in on (OWASP's "device cookies"):
    /// its password attempts are then counted apart from the name's, so strangers' failures
    /// cannot lock the person out on a device they used before.
    pub fn device_cookie(&self, user_id: &str) -> String {
        let device = PublicId::generate("dev_", self.random.as_ref());
        let sealed = self.device_ring.seal(
            device.as_str(),
            &device_cookie_context(user_id),
            self.random.as_ref(),
        );
        format!("{user_id}~{sealed}")
    }

    /// The device id a device cookie proves for `user_id`; `None` for a cookie of another
    /// account, a forged or tampered one, or one sealed with a key no longer configured.
    fn device_of(&self, cookie: &str, user_id: &str) -> Option<String> {
        let (owner, sealed) = cookie.split_once('~')?;
        if owner != user_id {
            return None;
        }
        self.device_ring
            .open(sealed, &device_cookie_context(user_id))
            .ok()
    }

    /// The usernames of accounts whose second factor the configured keys cannot open (all
    /// of them when no key is configured): `config check` refuses to pass while any exist.
    pub async fn unreadable_second_factors(&self) -> Result<Vec<String>, AccountError> {
        let users = self.users.list_users().await?;
        Ok(users
            .into_iter()
            .filter(|u| {
                u.totp.as_ref().is_some_and(|f| match &self.keyring {
                    None => true,
                    Some(ring) => {
                        sealed_key_id(&f.secret).is_some() && ring.open(&f.secret, &u.id).is_err()
                    }
                })
            })
            .map(|u| u.username)
            .collect())
    }

    /// Stores account and sign-in events in `trail`, the store's audit trail, so they are
    /// queried with the session events (`/v1/events`), besides publishing them to the sink.
    pub fn with_trail(mut self, trail: Arc<dyn EventTrail>) -> Self {
        self.trail = Some(trail);
        self
    }

    /// Keeps failure counts in `throttle` (the shared store's; memory by default).
    pub fn with_throttle(mut self, throttle: Arc<dyn ThrottleStore>) -> Self {
        self.throttle = throttle;
        self
    }

    /// Runs at most `permits` password hashes at once (tests use 1).
    pub fn with_hash_permits(mut self, permits: usize) -> Self {
        self.hashing = HashGate::new(permits.max(1));
        self
    }

    /// The failure counts.
    pub fn throttle(&self) -> &Arc<dyn ThrottleStore> {
        &self.throttle
    }

    async fn hash(&self, password: &str) -> Result<String, AccountError> {
        let random = Arc::clone(&self.random);
        let password = password.to_owned();
        self.hashing
            .run(move |memory| hash_password(&password, random.as_ref(), memory))
            .await
            .ok_or(AccountError::Busy(BUSY_RETRY))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.users
    }

    async fn publish(&self, kind: EventKind, user: &User, by: Acting<'_>) {
        let event =
            AuditEvent::for_account(kind, &user.id, &user.username, self.clock.now(), by.actor)
                .with_client(by.origin.address, by.origin.user_agent);
        self.record(event).await;
    }

    /// Stores `event` in the trail, then publishes it with its position. The change it
    /// records has happened: a trail that cannot take it is logged, and the event still
    /// reaches the sink (whose log then holds it alone).
    async fn record(&self, mut event: AuditEvent) {
        if let Some(trail) = &self.trail {
            match trail.append(event.clone().without_internal_detail()).await {
                Ok(stored) => event.seq = stored.seq,
                Err(err) => tracing::warn!(
                    kind = event.kind.as_str(),
                    error = %err,
                    "an account event could not be stored in the audit trail"
                ),
            }
        }
        self.sink.publish(&event);
    }

    /// Creates an account.
    pub async fn add_user<'a>(
        &self,
        username: &str,
        password: &str,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let username = normalize_username(username).ok_or(AccountError::InvalidUsername)?;
        if let Some(problem) = password_problem(&username, password, false) {
            return Err(AccountError::WeakPassword(problem));
        }
        let password_hash = self.hash(password).await?;
        let now = self.clock.now();
        let user = User {
            id: PublicId::generate("usr_", self.random.as_ref())
                .as_str()
                .to_owned(),
            username,
            version: 1,
            password_hash,
            disabled: false,
            totp: None,
            created_at: now,
            password_changed_at: now,
            short_password: false,
        };
        self.users.add_user(&user).await?;
        self.publish(EventKind::UserCreated, &user, by.into()).await;
        Ok(user)
    }

    /// Creates an account without a password for a person an upstream identity provider
    /// vouches for: they sign in there, and only there, until they set a password.
    pub async fn add_federated_user<'a>(
        &self,
        username: &str,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let username = normalize_username(username).ok_or(AccountError::InvalidUsername)?;
        let now = self.clock.now();
        let user = User {
            id: PublicId::generate("usr_", self.random.as_ref())
                .as_str()
                .to_owned(),
            username,
            version: 1,
            password_hash: String::new(),
            disabled: false,
            totp: None,
            created_at: now,
            password_changed_at: now,
            short_password: false,
        };
        self.users.add_user(&user).await?;
        self.publish(EventKind::UserCreated, &user, by.into()).await;
        Ok(user)
    }

    /// Records that the account `user` was linked to (or unlinked from) a person at the
    /// upstream provider `provider` ([`EventKind::UserIdentityLinked`] or
    /// [`EventKind::UserIdentityUnlinked`]).
    pub async fn record_identity<'a>(
        &self,
        kind: EventKind,
        user: &User,
        provider: &str,
        by: impl Into<Acting<'a>>,
    ) {
        let by = by.into();
        let event =
            AuditEvent::for_account(kind, &user.id, &user.username, self.clock.now(), by.actor)
                .with_client(by.origin.address, by.origin.user_agent)
                .with_detail(serde_json::json!({ "provider": provider }));
        self.record(event).await;
    }

    /// Every account.
    pub async fn list(&self) -> Result<Vec<User>, AccountError> {
        Ok(self.users.list_users().await?)
    }

    /// The account by username (as typed).
    pub async fn by_name(&self, username: &str) -> Result<User, AccountError> {
        let username = normalize_username(username).ok_or(AccountError::NotFound)?;
        self.users
            .user_by_name(&username)
            .await?
            .ok_or(AccountError::NotFound)
    }

    /// The account by id.
    pub async fn by_id(&self, id: &str) -> Result<User, AccountError> {
        self.users
            .user_by_id(id)
            .await?
            .ok_or(AccountError::NotFound)
    }

    /// Applies `change` to the account with compare-and-set, retrying a few times on races.
    async fn update(
        &self,
        id: &str,
        mut change: impl FnMut(&mut User) -> Result<(), AccountError>,
    ) -> Result<User, AccountError> {
        for _ in 0..5 {
            let mut user = self.by_id(id).await?;
            change(&mut user)?;
            user.version += 1;
            if self.users.replace_user(&user).await? {
                return Ok(user);
            }
        }
        Err(AccountError::Conflict)
    }

    /// Disables or enables an account. The caller ends a disabled account's sessions.
    pub async fn set_disabled<'a>(
        &self,
        id: &str,
        disabled: bool,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let user = self
            .update(id, |user| {
                user.disabled = disabled;
                Ok(())
            })
            .await?;
        let kind = if disabled {
            EventKind::UserDisabled
        } else {
            EventKind::UserEnabled
        };
        self.publish(kind, &user, by.into()).await;
        Ok(user)
    }

    /// Sets a new password.
    pub async fn set_password<'a>(
        &self,
        id: &str,
        password: &str,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let current = self.by_id(id).await?;
        if let Some(problem) = password_problem(&current.username, password, current.totp.is_some())
        {
            return Err(AccountError::WeakPassword(problem));
        }
        let hash = self.hash(password).await?;
        let now = self.clock.now();
        let user = self
            .update(id, |user| {
                user.password_hash.clone_from(&hash);
                user.password_changed_at = now;
                user.short_password = password.chars().count() < MIN_PASSWORD_ALONE;
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserPasswordChanged, &user, by.into())
            .await;
        Ok(user)
    }

    /// Counts one attempt against `key`; `Err` when it is blocked.
    async fn count(
        &self,
        key: &str,
        rules: &ThrottleRules,
        now: Timestamp,
    ) -> Result<Option<Duration>, SignInError> {
        match self.throttle.attempt(key, rules, now).await? {
            Verdict::Blocked(wait) => Err(SignInError::Throttled(wait)),
            Verdict::Allowed { then_wait, .. } => Ok(then_wait),
        }
    }

    /// Checks a username and password, under the throttle. The attempt is counted against the
    /// client address and the typed name *before* the hash is checked, in the shared store, so
    /// parallel guesses and many nodes get no more tries than one. An unknown username, a
    /// wrong password and a disabled account all cost the same Argon2id work and get the same
    /// answer; only a right password on an enabled account clears the name's count.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
        origin: Origin<'_>,
    ) -> Result<User, SignInError> {
        let now = self.clock.now();
        let address = origin.address.map(address_key);
        let mut waits = Vec::with_capacity(2);
        if let Some(key) = &address {
            match self.count(key, &ThrottleRules::ADDRESS, now).await {
                Ok(wait) => waits.push(wait),
                Err(err) => {
                    // Only a throttle's verdict is a throttled sign-in: a store that cannot
                    // answer is an outage, not an attack on this address.
                    if matches!(err, SignInError::Throttled(_)) {
                        self.publish_failure(
                            EventKind::LoginThrottled,
                            None,
                            "address",
                            origin,
                            None,
                        )
                        .await;
                    }
                    return Err(err);
                }
            }
        }
        let typed = (username.len() <= MAX_TYPED_BYTES)
            .then(|| normalize_username(username))
            .flatten();
        let Some(name) = typed else {
            // Nothing anyone could sign in with: no hash, no lookup, counted by address only.
            self.publish_failure(EventKind::LoginFailed, None, "username", origin, None)
                .await;
            return Err(Self::failure(&waits));
        };
        let user = self.users.user_by_name(&name).await?;
        if password.len() > MAX_TYPED_BYTES {
            // No one's password: not hashed, counted by address only, and told as the wrong
            // password of the account it was typed for.
            let failed = if user.is_some() {
                "password"
            } else {
                "username"
            };
            self.publish_failure(
                EventKind::LoginFailed,
                user.as_ref(),
                failed,
                origin,
                Some(&name),
            )
            .await;
            return Err(Self::failure(&waits));
        }
        // A device this account signed in on before is counted on its own.
        let known_device = user
            .as_ref()
            .zip(origin.device)
            .and_then(|(u, cookie)| self.device_of(cookie, &u.id));
        let name_key = match &known_device {
            Some(device) => device_key(device),
            None => account_key(&name),
        };
        match self.count(&name_key, &ThrottleRules::ACCOUNT, now).await {
            Ok(wait) => waits.push(wait),
            Err(err) => {
                if matches!(err, SignInError::Throttled(_)) {
                    self.publish_failure(
                        EventKind::LoginThrottled,
                        user.as_ref(),
                        "password",
                        origin,
                        Some(&name),
                    )
                    .await;
                }
                return Err(err);
            }
        }
        // An account without a password (made by a sign-in upstream) costs the same work too.
        let hash = user
            .as_ref()
            .filter(|u| u.has_password())
            .map_or_else(|| DECOY_HASH.clone(), |u| u.password_hash.clone());
        let owned = password.to_owned();
        let Some(matches) = self
            .hashing
            .run(move |memory| verify_password(&hash, &owned, memory))
            .await
        else {
            // Not checked, so not counted either.
            if let Some(key) = &address {
                self.throttle.refund(key).await?;
            }
            self.throttle.refund(&name_key).await?;
            return Err(SignInError::Busy(BUSY_RETRY));
        };
        match user {
            Some(user) if matches && !user.disabled => {
                self.throttle.clear(&name_key).await?;
                if let Some(key) = &address {
                    self.throttle.refund(key).await?;
                }
                Ok(user)
            }
            user => {
                let factor = match &user {
                    Some(u) if matches && u.disabled => "account_disabled",
                    Some(_) => "password",
                    None => "username",
                };
                self.publish_failure(
                    EventKind::LoginFailed,
                    user.as_ref(),
                    factor,
                    origin,
                    Some(&name),
                )
                .await;
                Err(Self::failure(&waits))
            }
        }
    }

    /// The answer to a failed attempt: the longest wait it set off, if any.
    fn failure(waits: &[Option<Duration>]) -> SignInError {
        match waits.iter().flatten().max() {
            Some(wait) => SignInError::Throttled(*wait),
            None => SignInError::Invalid,
        }
    }

    /// Publishes a sign-in at the upstream provider `provider` that failed: its answer refused,
    /// or failing a check (`why`). As a wrong password is, it is `login.failed`, here with
    /// `failed: "upstream"`, so the trail and the SIEM see every failed authentication
    /// (ASVS5-16.3.1). Nobody is named: a failed answer proves no one.
    pub async fn upstream_sign_in_failed(&self, provider: &str, why: &str, origin: Origin<'_>) {
        let mut event = AuditEvent::for_account(
            EventKind::LoginFailed,
            "",
            "",
            self.clock.now(),
            &Actor::system(),
        );
        event.detail = serde_json::json!({
            "failed": "upstream",
            "provider": provider,
            "why": why.chars().take(MAX_FAILURE_WHY).collect::<String>(),
        });
        event = event.with_client(origin.address, origin.user_agent);
        self.record(event).await;
    }

    /// Publishes a failed or throttled attempt: who (a real account's username only, never a
    /// typed one), from where (`origin`), which factor `failed`. `typed` (the normalized name
    /// tried) reaches the sink only as a keyed digest the stuffing detector counts and strips.
    async fn publish_failure(
        &self,
        kind: EventKind,
        user: Option<&User>,
        failed: &str,
        origin: Origin<'_>,
        typed: Option<&str>,
    ) {
        let mut event = AuditEvent::for_account(
            kind,
            user.map_or("", |u| u.id.as_str()),
            user.map_or("", |u| u.username.as_str()),
            self.clock.now(),
            &Actor::system(),
        );
        event.detail = match user {
            Some(u) => serde_json::json!({ "username": u.username, "failed": failed }),
            None => serde_json::json!({ "failed": failed }),
        };
        event = event.with_client(origin.address, origin.user_agent);
        if let Some(name) = typed.or(user.map(|u| u.username.as_str())) {
            event = event.with_detail(serde_json::json!({
                crate::event::context::ATTEMPT_KEY: crate::event::attempt_key(name),
            }));
        }
        self.record(event).await;
    }

    /// Checks the second factor of `user` (after its password) and uses the code up. Wrong
    /// codes are counted on their own, never reset by a right password: per account (NIST
    /// SP 800-63B §5.2.2), per client address, and per sign-in in progress (`pending`, its
    /// session id), whose fifth wrong code spends it ([`SignInError::SignInSpent`]).
    pub async fn check_totp(
        &self,
        user_id: &str,
        code: &str,
        origin: Origin<'_>,
        pending: Option<&str>,
    ) -> Result<User, SignInError> {
        let user = self.by_id(user_id).await.map_err(|err| match err {
            AccountError::Store(err) => SignInError::Store(err),
            _ => SignInError::Invalid,
        })?;
        let now = self.clock.now();
        let mut waits = Vec::with_capacity(3);
        if let Some(address) = origin.address {
            waits.push(
                self.count(&address_key(address), &ThrottleRules::ADDRESS, now)
                    .await?,
            );
        }
        let factor_key = second_factor_key(&user.id);
        waits.push(
            self.count(&factor_key, &ThrottleRules::SECOND_FACTOR, now)
                .await?,
        );
        let pending_key = pending.map(pending_key);
        let mut pending_tries = 0;
        if let Some(key) = &pending_key {
            match self
                .throttle
                .attempt(key, &ThrottleRules::PENDING_SIGN_IN, now)
                .await?
            {
                Verdict::Blocked(_) => return Err(SignInError::SignInSpent),
                Verdict::Allowed { failures, .. } => pending_tries = failures,
            }
        }
        let accepted = self
            .update(user_id, |u| {
                if u.disabled {
                    return Err(AccountError::WrongCode);
                }
                let id = u.id.clone();
                let factor = u.totp.as_mut().ok_or(AccountError::WrongCode)?;
                let secret = match (&self.keyring, sealed_key_id(&factor.secret)) {
                    (Some(ring), _) => match ring.open(&factor.secret, &id) {
                        Ok(secret) => secret,
                        // Stored in clear by an earlier release: sealed below.
                        Err(_) if sealed_key_id(&factor.secret).is_none() => factor.secret.clone(),
                        Err(err) => return Err(err.into()),
                    },
                    (None, None) => factor.secret.clone(),
                    (None, Some(_)) => return Err(AccountError::NoEncryptionKey),
                };
                let step = totp_step(&secret, code, now, factor.last_step)
                    .ok_or(AccountError::WrongCode)?;
                factor.last_step = step;
                if let Some(ring) = self
                    .keyring
                    .as_ref()
                    .filter(|r| r.needs_resealing(&factor.secret))
                {
                    factor.secret = ring.seal(&secret, &id, self.random.as_ref());
                }
                Ok(())
            })
            .await;
        match accepted {
            Ok(user) => {
                self.throttle.clear(&factor_key).await?;
                if let Some(address) = origin.address {
                    self.throttle.refund(&address_key(address)).await?;
                }
                Ok(user)
            }
            Err(AccountError::Store(err)) => Err(SignInError::Store(err)),
            Err(err @ (AccountError::Sealed(_) | AccountError::NoEncryptionKey)) => {
                // Fail closed, and say why where an operator looks.
                Err(SignInError::Store(UserStoreError::Corrupt(err.to_string())))
            }
            Err(_) => {
                self.publish_failure(EventKind::LoginFailed, Some(&user), "otp", origin, None)
                    .await;
                let spent = ThrottleRules::PENDING_SIGN_IN
                    .lock_after
                    .is_some_and(|limit| pending_tries >= limit);
                if spent {
                    return Err(SignInError::SignInSpent);
                }
                Err(Self::failure(&waits))
            }
        }
    }

    /// A fresh secret for enrolment (not stored until a code proves the app has it).
    pub fn new_totp_secret(&self) -> String {
        new_totp_secret(self.random.as_ref())
    }

    /// Enrols `secret` once `code` proves the authenticator app holds it.
    pub async fn enrol_totp<'a>(
        &self,
        user_id: &str,
        secret: &str,
        code: &str,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let ring = self.keyring.as_ref().ok_or(AccountError::NoEncryptionKey)?;
        let now = self.clock.now();
        let step = totp_step(secret, code, now, 0).ok_or(AccountError::WrongCode)?;
        let user = self
            .update(user_id, |user| {
                user.totp = Some(TotpFactor {
                    secret: ring.seal(secret, &user.id, self.random.as_ref()),
                    last_step: step,
                    enrolled_at: now,
                });
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserTotpEnrolled, &user, by.into())
            .await;
        Ok(user)
    }

    /// Removes the TOTP factor.
    pub async fn remove_totp<'a>(
        &self,
        user_id: &str,
        by: impl Into<Acting<'a>>,
    ) -> Result<User, AccountError> {
        let user = self
            .update(user_id, |user| {
                if user.short_password {
                    return Err(AccountError::PasswordTooShortAlone);
                }
                user.totp = None;
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserTotpRemoved, &user, by.into())
            .await;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use crate::time::ManualClock;

    #[test]
    fn totp_codes_are_accepted_once_within_one_step() {
        let secret = new_totp_secret(&SeededRandom::new(7));
        let now = Timestamp::from_millis(1_800_000_000_000);
        let code = totp_code(&secret, now).unwrap();
        let step = totp_step(&secret, &code, now, 0).unwrap();
        assert_eq!(totp_step(&secret, &code, now, step), None, "replay");
        let later = now.plus(Duration::from_secs(30));
        assert!(
            totp_step(&secret, &code, later, 0).is_some(),
            "one step of skew"
        );
        let much_later = now.plus(Duration::from_secs(120));
        assert_eq!(totp_step(&secret, &code, much_later, 0), None);
        assert!(totp_uri(&secret, "Portcullis", "alice").contains(&secret));
    }

    const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);
    const PASSWORD: &str = "correct horse battery staple";

    fn keyring() -> Keyring {
        Keyring::parse(&[Keyring::generate_entry("k1", &SeededRandom::new(9))]).unwrap()
    }

    fn accounts_at(clock: &Arc<ManualClock>) -> Accounts {
        Accounts::new(
            Arc::new(MemoryUserStore::new()),
            clock.clone(),
            Arc::new(SeededRandom::new(1)),
            Arc::new(crate::event::NoAuditSink),
        )
        .with_keyring(keyring())
    }

    fn from(address: &str) -> Origin<'_> {
        Origin {
            address: Some(address),
            ..Origin::default()
        }
    }

    /// Alice with a second factor enrolled; returns her and the factor's secret.
    async fn alice_with_totp(accounts: &Accounts, clock: &ManualClock) -> (User, String) {
        let alice = accounts
            .add_user("alice", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        let secret = accounts.new_totp_secret();
        let code = totp_code(&secret, clock.now()).unwrap();
        let alice = accounts
            .enrol_totp(&alice.id, &secret, &code, &Actor::cli())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(30));
        (alice, secret)
    }

    fn wrong_code(secret: &str, now: Timestamp) -> String {
        let right = totp_code(secret, now).unwrap();
        let near = [
            right.clone(),
            totp_code(secret, now.plus(Duration::from_secs(30))).unwrap(),
            totp_code(secret, Timestamp::from_millis(now.as_millis() - 30_000)).unwrap(),
        ];
        (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !near.contains(c))
            .unwrap()
    }

    #[tokio::test]
    async fn asvs4_2_2_unknown_user_wrong_password_and_disabled_account_answer_alike() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = accounts_at(&clock);
        let alice = accounts
            .add_user("Alice", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        assert_eq!(alice.username, "alice");
        assert!(matches!(
            accounts.add_user("alice", PASSWORD, &Actor::cli()).await,
            Err(AccountError::Exists)
        ));
        let ok = accounts
            .check_password(" ALICE ", PASSWORD, Origin::default())
            .await
            .unwrap();
        assert_eq!(ok.id, alice.id);
        let wrong = accounts
            .check_password("alice", "wrong", Origin::default())
            .await;
        let unknown = accounts
            .check_password("mallory", "wrong", Origin::default())
            .await;
        assert_eq!(
            wrong.unwrap_err().to_string(),
            unknown.unwrap_err().to_string()
        );
        accounts
            .set_disabled(&alice.id, true, &Actor::cli())
            .await
            .unwrap();
        // The right password on a disabled account is no oracle: the same answer as a wrong
        // one, and it does not clear the failures a guesser built up.
        for _ in 0..4 {
            let right = accounts
                .check_password("alice", PASSWORD, Origin::default())
                .await;
            assert!(matches!(right, Err(SignInError::Invalid)), "{right:?}");
        }
        let throttled = accounts
            .check_password("alice", PASSWORD, Origin::default())
            .await;
        assert!(
            matches!(throttled, Err(SignInError::Throttled(_))),
            "the sixth failure in a row is throttled, right password or not: {throttled:?}"
        );
    }

    #[tokio::test]
    async fn nist5_2_2_parallel_guesses_get_no_more_tries_than_serial_ones() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = Arc::new(accounts_at(&clock).with_hash_permits(64));
        accounts
            .add_user("alice", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        let guesses = (0..20).map(|n| {
            let accounts = Arc::clone(&accounts);
            tokio::spawn(async move {
                accounts
                    .check_password("alice", &format!("guess number {n}"), Origin::default())
                    .await
            })
        });
        let mut checked = 0;
        for guess in guesses {
            match guess.await.unwrap() {
                Err(SignInError::Invalid) => checked += 1,
                Err(SignInError::Throttled(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(
            checked <= 5,
            "only the free attempts are checked ({checked} were)"
        );
    }

    #[tokio::test]
    async fn nist5_2_2_wrong_codes_are_counted_apart_from_the_password_and_per_sign_in() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = accounts_at(&clock);
        let (alice, secret) = alice_with_totp(&accounts, &clock).await;
        let wrong = wrong_code(&secret, clock.now());
        // Four wrong codes in one sign-in in progress are answered one by one…
        for _ in 0..4 {
            let answer = accounts
                .check_totp(&alice.id, &wrong, from("10.0.0.1"), Some("ses_one"))
                .await;
            assert!(matches!(answer, Err(SignInError::Invalid)), "{answer:?}");
        }
        // …the fifth spends it: the person must start again with the password.
        let fifth = accounts
            .check_totp(&alice.id, &wrong, from("10.0.0.1"), Some("ses_one"))
            .await;
        assert!(matches!(fifth, Err(SignInError::SignInSpent)), "{fifth:?}");
        let again = accounts
            .check_totp(&alice.id, &wrong, from("10.0.0.1"), Some("ses_one"))
            .await;
        assert!(matches!(again, Err(SignInError::SignInSpent)), "{again:?}");
        // A right password does not reset the code failures: the account's count goes on in
        // a new sign-in, and the next wrong code is throttled.
        accounts
            .check_password("alice", PASSWORD, from("10.0.0.1"))
            .await
            .unwrap();
        let next = accounts
            .check_totp(&alice.id, &wrong, from("10.0.0.1"), Some("ses_two"))
            .await;
        assert!(matches!(next, Err(SignInError::Throttled(_))), "{next:?}");
        let blocked = accounts
            .check_totp(
                &alice.id,
                &totp_code(&secret, clock.now()).unwrap(),
                from("10.0.0.1"),
                Some("ses_two"),
            )
            .await;
        assert!(
            matches!(blocked, Err(SignInError::Throttled(_))),
            "even the right code waits: {blocked:?}"
        );
        clock.advance(Duration::from_secs(31));
        accounts
            .check_totp(
                &alice.id,
                &totp_code(&secret, clock.now()).unwrap(),
                from("10.0.0.1"),
                Some("ses_three"),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn credential_checks_beyond_the_queue_are_turned_away_not_queued_without_bound() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = Arc::new(accounts_at(&clock).with_hash_permits(1));
        let attempts = (0..30).map(|n| {
            let accounts = Arc::clone(&accounts);
            async move {
                accounts
                    .check_password(&format!("user{n}"), "some password", Origin::default())
                    .await
            }
        });
        let answers = futures_join_all(attempts).await;
        let busy = answers
            .iter()
            .filter(|a| matches!(a, Err(SignInError::Busy(_))))
            .count();
        let checked = answers
            .iter()
            .filter(|a| matches!(a, Err(SignInError::Invalid)))
            .count();
        assert_eq!(
            checked,
            1 + HashGate::QUEUE_PER_PERMIT,
            "one running, a queue of 8"
        );
        assert_eq!(busy, 30 - checked);
        // A turned-away attempt was not counted against the name.
        for _ in 0..5 {
            let answer = accounts
                .check_password("user29", "some password", Origin::default())
                .await;
            assert!(matches!(answer, Err(SignInError::Invalid)), "{answer:?}");
        }
    }

    #[tokio::test]
    async fn password_checks_reuse_one_hashing_memory_per_permit() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = Arc::new(accounts_at(&clock).with_hash_permits(2));
        for round in 0..3 {
            let attempts = (0..6).map(|n| {
                let accounts = Arc::clone(&accounts);
                async move {
                    accounts
                        .check_password(
                            &format!("user{round}-{n}"),
                            "some password",
                            Origin::default(),
                        )
                        .await
                }
            });
            let answers = futures_join_all(attempts).await;
            assert!(
                answers
                    .iter()
                    .all(|a| matches!(a, Err(SignInError::Invalid)))
            );
            let kept = accounts.hashing.memory.lock().len();
            assert!(
                (1..=2).contains(&kept),
                "round {round}: {kept} memories kept"
            );
        }
    }

    #[test]
    fn password_hashes_are_standard_phc_strings_both_ways() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let mut memory = HashMemory::new();
        let ours = hash_password("correct horse battery", &SeededRandom::new(3), &mut memory);
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery", ours.as_str())
                .is_ok(),
            "the argon2 crate accepts our hash"
        );
        let theirs = Argon2::default()
            .hash_password_with_salt(b"correct horse battery", b"sixteen byte slt")
            .unwrap()
            .to_string();
        assert!(verify_password(
            &theirs,
            "correct horse battery",
            &mut memory
        ));
        assert!(!verify_password(
            &theirs,
            "correct horse batterz",
            &mut memory
        ));
        assert!(!verify_password(&ours, "", &mut memory));
        assert!(!verify_password("$argon2id$v=19$garbage", "x", &mut memory));
        assert!(!verify_password("", "", &mut memory));
    }

    #[test]
    fn hashes_made_with_other_parameters_still_verify() {
        use argon2::PasswordHasher;
        let mut memory = HashMemory::new();
        for (m_cost, t_cost) in [(8 * 1024, 3), (32 * 1024, 1)] {
            let params = argon2::Params::new(m_cost, t_cost, 1, None).unwrap();
            let hash = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_with_salt(b"an older password", b"sixteen byte slt")
                .unwrap()
                .to_string();
            assert!(
                verify_password(&hash, "an older password", &mut memory),
                "{hash}"
            );
            assert!(
                !verify_password(&hash, "an older passwore", &mut memory),
                "{hash}"
            );
        }
    }

    /// Polls every future in turn on this task (as a burst of requests arrives together).
    async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
        let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut all = true;
            for (slot, future) in done.iter_mut().zip(pending.iter_mut()) {
                if slot.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *slot = Some(value),
                        std::task::Poll::Pending => all = false,
                    }
                }
            }
            if all {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        done.into_iter().map(Option::unwrap).collect()
    }

    #[tokio::test]
    async fn a_username_longer_than_any_account_is_refused_without_hashing_or_keeping_it() {
        let clock = Arc::new(ManualClock::new(T0));
        let throttle = Arc::new(MemoryThrottleStore::new());
        let accounts = accounts_at(&clock).with_throttle(throttle.clone());
        let huge = "x".repeat(100_000);
        let answer = accounts
            .check_password(&huge, "password", from("10.0.0.7"))
            .await;
        assert!(matches!(answer, Err(SignInError::Invalid)));
        assert_eq!(throttle.len(), 1, "only the address was counted");
    }

    /// The failures an [`Accounts`] publishes.
    #[derive(Default)]
    struct Failures(parking_lot::Mutex<Vec<AuditEvent>>);

    impl AuditSink for Failures {
        fn publish(&self, event: &AuditEvent) {
            self.0.lock().push(event.clone());
        }
    }

    /// Accounts over `throttle` that publish to a [`Failures`] of their own, returned with it.
    fn accounts_publishing(throttle: Arc<dyn ThrottleStore>) -> (Accounts, Arc<Failures>) {
        let failures = Arc::new(Failures::default());
        let accounts = Accounts::new(
            Arc::new(MemoryUserStore::new()),
            Arc::new(ManualClock::new(T0)),
            Arc::new(SeededRandom::new(1)),
            failures.clone(),
        )
        .with_throttle(throttle);
        (accounts, failures)
    }

    #[tokio::test]
    async fn a_password_longer_than_any_is_the_wrong_password_of_the_account_it_was_typed_for() {
        let throttle = Arc::new(MemoryThrottleStore::new());
        let (accounts, failures) = accounts_publishing(throttle.clone());
        let alice = accounts
            .add_user("alice", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        let huge = "a".repeat(1100);
        let answer = accounts
            .check_password("alice", &huge, from("10.0.0.7"))
            .await;
        assert!(matches!(answer, Err(SignInError::Invalid)));
        assert_eq!(throttle.len(), 1, "not hashed, so counted by address only");
        let failed = failures
            .0
            .lock()
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::LoginFailed)
            .cloned()
            .expect("the failure is published");
        assert_eq!(failed.subject.as_deref(), Some(alice.id.as_str()));
        assert_eq!(failed.detail["failed"], "password");
    }

    /// A throttle store that cannot answer.
    struct DownThrottle;

    impl crate::throttle::ThrottleStore for DownThrottle {
        fn attempt<'a>(
            &'a self,
            _key: &'a str,
            _rules: &'a ThrottleRules,
            _now: Timestamp,
        ) -> crate::throttle::ThrottleFuture<'a, crate::throttle::Verdict> {
            Box::pin(async { Err(down()) })
        }
        fn refund<'a>(&'a self, _key: &'a str) -> crate::throttle::ThrottleFuture<'a, ()> {
            Box::pin(async { Err(down()) })
        }
        fn clear<'a>(&'a self, _key: &'a str) -> crate::throttle::ThrottleFuture<'a, ()> {
            Box::pin(async { Err(down()) })
        }
        fn forget_expired(&self, _now: Timestamp) -> crate::throttle::ThrottleFuture<'_, u64> {
            Box::pin(async { Err(down()) })
        }
    }

    fn down() -> UserStoreError {
        UserStoreError::Unavailable(crate::store::BackendError::new(std::io::Error::other(
            "the throttle store is down",
        )))
    }

    /// A sign-in while the throttle's store is down fails closed, and is not published as a
    /// throttled sign-in: a SIEM would read an outage as an attack on the address.
    #[tokio::test]
    async fn a_sign_in_during_an_outage_fails_closed_and_is_not_called_throttled() {
        let (accounts, failures) = accounts_publishing(Arc::new(DownThrottle));
        let answer = accounts
            .check_password("alice", PASSWORD, from("10.0.0.7"))
            .await;
        assert!(answer.is_err(), "fails closed");
        assert!(!matches!(answer, Err(SignInError::Throttled(_))));
        assert!(
            failures
                .0
                .lock()
                .iter()
                .all(|e| e.kind != EventKind::LoginThrottled),
            "an outage is no throttling"
        );
    }

    #[test]
    fn nist4_3_1_1_2_passwords_need_15_characters_alone_8_with_a_second_factor_and_no_common_ones()
    {
        assert!(password_problem("alice", "fourteen chars", false).is_some());
        assert!(password_problem("alice", "correct horse battery", false).is_none());
        assert!(password_problem("alice", "Tr0ub4dor&3", true).is_none());
        assert!(password_problem("alice", "Tr0ub4d", true).is_some());
        for common in [
            "password1234567890",
            "qwertyuiopasdfghjkl",
            "iloveyouiloveyou",
            "1qaz2wsx3edc4rfv",
            "alicealicealice1",
            "portcullisportcullis",
        ] {
            assert!(
                password_problem("alice", common, false).is_some(),
                "{common} is refused"
            );
        }
        assert!(password_problem("alice", &"ab1!".repeat(65), false).is_some());
    }

    #[tokio::test]
    async fn a_short_password_keeps_the_second_factor_it_was_allowed_beside() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = accounts_at(&clock);
        let (alice, _) = alice_with_totp(&accounts, &clock).await;
        let alice = accounts
            .set_password(&alice.id, "Tr0ub4dor&3", &Actor::cli())
            .await
            .unwrap();
        assert!(alice.short_password);
        assert!(matches!(
            accounts.remove_totp(&alice.id, &Actor::cli()).await,
            Err(AccountError::PasswordTooShortAlone)
        ));
        accounts
            .set_password(&alice.id, PASSWORD, &Actor::cli())
            .await
            .unwrap();
        accounts
            .remove_totp(&alice.id, &Actor::cli())
            .await
            .unwrap();
        assert!(matches!(
            accounts
                .set_password(&alice.id, "Tr0ub4dor&3", &Actor::cli())
                .await,
            Err(AccountError::WeakPassword(_))
        ));
    }

    #[tokio::test]
    async fn totp_secrets_are_sealed_at_rest_and_clear_ones_are_sealed_at_their_next_use() {
        let clock = Arc::new(ManualClock::new(T0));
        let users = Arc::new(MemoryUserStore::new());
        let accounts = Accounts::new(
            users.clone(),
            clock.clone(),
            Arc::new(SeededRandom::new(1)),
            Arc::new(crate::event::NoAuditSink),
        )
        .with_keyring(keyring());
        let (alice, secret) = alice_with_totp(&accounts, &clock).await;
        let stored = users.user_by_id(&alice.id).await.unwrap().unwrap();
        let sealed = &stored.totp.as_ref().unwrap().secret;
        assert!(sealed.starts_with("sealed:v1:k1:"), "{sealed}");
        assert!(
            !serde_json::to_string(&crate::stored::StoredUser::from(&stored))
                .unwrap()
                .contains(&secret)
        );

        // A secret an earlier release stored in clear still works, and is sealed on use.
        let mut legacy = stored.clone();
        legacy.totp.as_mut().unwrap().secret = secret.clone();
        legacy.version += 1;
        assert!(users.replace_user(&legacy).await.unwrap());
        accounts
            .check_totp(
                &alice.id,
                &totp_code(&secret, clock.now()).unwrap(),
                Origin::default(),
                None,
            )
            .await
            .unwrap();
        let resealed = users.user_by_id(&alice.id).await.unwrap().unwrap();
        assert!(
            resealed.totp.unwrap().secret.starts_with("sealed:v1:k1:"),
            "sealed at its next use"
        );

        // Without a key nothing can be enrolled, and a sealed factor fails closed.
        let keyless = Accounts::new(
            users.clone(),
            clock.clone(),
            Arc::new(SeededRandom::new(2)),
            Arc::new(crate::event::NoAuditSink),
        );
        assert_eq!(
            keyless.unreadable_second_factors().await.unwrap(),
            ["alice"]
        );
        assert!(
            accounts
                .unreadable_second_factors()
                .await
                .unwrap()
                .is_empty()
        );
        clock.advance(Duration::from_secs(30));
        let code = totp_code(&secret, clock.now()).unwrap();
        assert!(matches!(
            keyless
                .check_totp(&alice.id, &code, Origin::default(), None)
                .await,
            Err(SignInError::Store(_))
        ));
        let bob = keyless
            .add_user("bob", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        let bob_secret = keyless.new_totp_secret();
        let code = totp_code(&bob_secret, clock.now()).unwrap();
        assert!(matches!(
            keyless
                .enrol_totp(&bob.id, &bob_secret, &code, &Actor::cli())
                .await,
            Err(AccountError::NoEncryptionKey)
        ));
    }

    #[tokio::test]
    async fn owasp_device_cookies_keep_strangers_failures_from_locking_the_owner_out() {
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = accounts_at(&clock);
        let alice = accounts
            .add_user("alice", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        let cookie = accounts.device_cookie(&alice.id);
        let bob = accounts
            .add_user("bob", PASSWORD, &Actor::cli())
            .await
            .unwrap();
        for _ in 0..6 {
            let _ = accounts
                .check_password("alice", "a stranger's guess", from("203.0.113.9"))
                .await;
        }
        let stranger = accounts
            .check_password("alice", PASSWORD, Origin::default())
            .await;
        assert!(matches!(stranger, Err(SignInError::Throttled(_))));
        let owner = Origin {
            address: Some("198.51.100.4"),
            device: Some(&cookie),
            ..Origin::default()
        };
        accounts
            .check_password("alice", PASSWORD, owner)
            .await
            .unwrap();
        // The cookie is alice's only, and a tampered one is no cookie at all.
        let borrowed = Origin {
            device: Some(&cookie),
            ..Origin::default()
        };
        for _ in 0..6 {
            let _ = accounts
                .check_password("bob", "guess", Origin::default())
                .await;
        }
        assert!(matches!(
            accounts.check_password("bob", PASSWORD, borrowed).await,
            Err(SignInError::Throttled(_))
        ));
        let forged = cookie.replacen(&alice.id, &bob.id, 1);
        assert!(accounts.device_of(&forged, &bob.id).is_none());
        let mut tampered = cookie.clone();
        tampered.pop();
        assert!(accounts.device_of(&tampered, &alice.id).is_none());
    }
}
