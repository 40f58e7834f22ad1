//! People who sign in at Portcullis: local accounts, their credentials (an Argon2id password
//! and an optional TOTP second factor), the [`UserStore`] contract and the [`Accounts`]
//! service that checks credentials under a [`LoginThrottle`].
//!
//! The SSO session of a person is an ordinary [`crate::Session`] whose subject is the
//! account's `id` (`usr_…`), never the username: usernames are what people type, ids are what
//! sessions and applications keep.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::event::{Actor, AuditEvent, AuditSink, EventKind};
use crate::random::RandomSource;
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
    /// Argon2id PHC string.
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
    /// The shared secret, base32.
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

/// Passwords people pick first; refused outright (SP 800-63B §3.1.1.2 blocklist).
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password123",
    "12345678",
    "123456789",
    "1234567890",
    "qwertyuiop",
    "qwerty123",
    "iloveyou",
    "letmein1",
    "11111111",
    "00000000",
    "abc12345",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "portcullis",
];

/// Why a new password is refused (SP 800-63B: length and a blocklist, no composition rules).
pub fn password_problem(username: &str, password: &str) -> Option<String> {
    let length = password.chars().count();
    if length < 8 {
        return Some("Use at least 8 characters.".into());
    }
    if length > 256 {
        return Some("Use at most 256 characters.".into());
    }
    let lower = password.to_lowercase();
    if lower == username || COMMON_PASSWORDS.contains(&lower.as_str()) {
        return Some("That password is too easy to guess; choose another.".into());
    }
    None
}

/// Hashes a password with Argon2id (OWASP parameters: 19 MiB, 2 passes). CPU-heavy: call it
/// off the async threads.
pub fn hash_password(password: &str, random: &dyn RandomSource) -> String {
    let mut salt = [0u8; 16];
    random.fill(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        // Default parameters and a 16-byte salt are always valid.
        .expect("Argon2id with default parameters")
}

/// Whether `password` matches the PHC string `hash` (constant-time inside argon2).
pub fn verify_password(hash: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A hash of a password nobody knows: an unknown username is checked against it so that it
/// costs the same time as a wrong password.
static DECOY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("no account has this password", &crate::random::OsRandom));

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

/// How failures slow down further attempts for one key (an account or an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRules {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// The first delay; each further failure doubles it.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    pub forget_after: Duration,
}

impl ThrottleRules {
    /// Per account: 5 free failures, then 30 s doubling up to 15 min.
    pub const ACCOUNT: Self = Self {
        free_failures: 5,
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(15 * 60),
        forget_after: Duration::from_secs(3600),
    };
    /// Per client address: 20 free failures, then 30 s doubling up to 15 min.
    pub const ADDRESS: Self = Self {
        free_failures: 20,
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(15 * 60),
        forget_after: Duration::from_secs(3600),
    };

    fn delay_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.free_failures)?.checked_sub(1)?;
        let delay = self.first_delay.saturating_mul(1u32 << over.min(20));
        Some(delay.min(self.max_delay))
    }
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last_failure: Timestamp,
    blocked_until: Timestamp,
}

/// Exponential back-off on failed sign-ins, per account name (known or not, so both look the
/// same) and per client address. Held in memory by each server process.
#[derive(Debug)]
pub struct LoginThrottle {
    account: ThrottleRules,
    address: ThrottleRules,
    accounts: Mutex<HashMap<String, Strikes>>,
    addresses: Mutex<HashMap<String, Strikes>>,
}

/// Past this many keys, forgotten entries are dropped on the next failure.
const THROTTLE_PRUNE_AT: usize = 100_000;

impl LoginThrottle {
    /// A throttle with these rules.
    pub fn new(account: ThrottleRules, address: ThrottleRules) -> Self {
        Self {
            account,
            address,
            accounts: Mutex::default(),
            addresses: Mutex::default(),
        }
    }

    /// How long the caller must wait before trying `username` from `address` again.
    pub fn wait(&self, username: &str, address: Option<&str>, now: Timestamp) -> Option<Duration> {
        let blocked = |map: &Mutex<HashMap<String, Strikes>>, key: &str| {
            map.lock()
                .get(key)
                .filter(|s| s.blocked_until > now)
                .map(|s| now.until(s.blocked_until))
        };
        let by_account = blocked(&self.accounts, username);
        let by_address = address.and_then(|a| blocked(&self.addresses, a));
        by_account.max(by_address)
    }

    /// Records a failure; returns the wait it imposes, if any.
    pub fn failed(
        &self,
        username: &str,
        address: Option<&str>,
        now: Timestamp,
    ) -> Option<Duration> {
        let strike = |map: &Mutex<HashMap<String, Strikes>>, key: &str, rules: &ThrottleRules| {
            let mut map = map.lock();
            if map.len() >= THROTTLE_PRUNE_AT {
                map.retain(|_, s| s.last_failure.plus(rules.forget_after) > now);
            }
            let entry = map.entry(key.to_owned()).or_insert(Strikes {
                failures: 0,
                last_failure: now,
                blocked_until: now,
            });
            if entry.last_failure.plus(rules.forget_after) <= now {
                entry.failures = 0;
            }
            entry.failures += 1;
            entry.last_failure = now;
            let delay = rules.delay_after(entry.failures)?;
            entry.blocked_until = now.plus(delay);
            Some(delay)
        };
        let by_account = strike(&self.accounts, username, &self.account);
        let by_address = address.and_then(|a| strike(&self.addresses, a, &self.address));
        by_account.max(by_address)
    }

    /// Forgets the account's failures after a successful sign-in.
    pub fn succeeded(&self, username: &str) {
        self.accounts.lock().remove(username);
    }
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(ThrottleRules::ACCOUNT, ThrottleRules::ADDRESS)
    }
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
    /// The credentials are right but the account is disabled.
    #[error("the account is disabled")]
    Disabled,
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
    throttle: LoginThrottle,
}

/// Runs CPU-heavy credential work (Argon2id) on the blocking pool, off the async threads.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
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
            throttle: LoginThrottle::default(),
        }
    }

    /// Replaces the throttle (tests use tighter rules).
    pub fn with_throttle(mut self, throttle: LoginThrottle) -> Self {
        self.throttle = throttle;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn UserStore> {
        &self.users
    }

    fn publish(&self, kind: EventKind, user: &User, actor: &Actor) {
        self.sink.publish(&AuditEvent::for_account(
            kind,
            &user.id,
            &user.username,
            self.clock.now(),
            actor,
        ));
    }

    /// Creates an account.
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        actor: &Actor,
    ) -> Result<User, AccountError> {
        let username = normalize_username(username).ok_or(AccountError::InvalidUsername)?;
        if let Some(problem) = password_problem(&username, password) {
            return Err(AccountError::WeakPassword(problem));
        }
        let random = Arc::clone(&self.random);
        let password = password.to_owned();
        let password_hash = off_thread(move || hash_password(&password, random.as_ref())).await;
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
        };
        self.users.add_user(&user).await?;
        self.publish(EventKind::UserCreated, &user, actor);
        Ok(user)
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
    pub async fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        actor: &Actor,
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
        self.publish(kind, &user, actor);
        Ok(user)
    }

    /// Sets a new password.
    pub async fn set_password(
        &self,
        id: &str,
        password: &str,
        actor: &Actor,
    ) -> Result<User, AccountError> {
        let current = self.by_id(id).await?;
        if let Some(problem) = password_problem(&current.username, password) {
            return Err(AccountError::WeakPassword(problem));
        }
        let random = Arc::clone(&self.random);
        let owned = password.to_owned();
        let hash = off_thread(move || hash_password(&owned, random.as_ref())).await;
        let now = self.clock.now();
        let user = self
            .update(id, |user| {
                user.password_hash.clone_from(&hash);
                user.password_changed_at = now;
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserPasswordChanged, &user, actor);
        Ok(user)
    }

    /// Checks a username and password from `address`, under the throttle. An unknown username
    /// costs the same Argon2id work and gets the same answer as a wrong password.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
        address: Option<&str>,
    ) -> Result<User, SignInError> {
        let key = normalize_username(username).unwrap_or_else(|| username.to_owned());
        let now = self.clock.now();
        if let Some(wait) = self.throttle.wait(&key, address, now) {
            self.publish_failure(EventKind::LoginThrottled, &key, None);
            return Err(SignInError::Throttled(wait));
        }
        let user = match normalize_username(username) {
            Some(name) => self.users.user_by_name(&name).await?,
            None => None,
        };
        let hash = user
            .as_ref()
            .map_or_else(|| DECOY_HASH.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let matches = off_thread(move || verify_password(&hash, &password)).await;
        match user {
            Some(user) if matches => {
                self.throttle.succeeded(&key);
                if user.disabled {
                    return Err(SignInError::Disabled);
                }
                Ok(user)
            }
            user => {
                self.publish_failure(EventKind::LoginFailed, &key, user.as_ref());
                match self.throttle.failed(&key, address, self.clock.now()) {
                    Some(wait) => Err(SignInError::Throttled(wait)),
                    None => Err(SignInError::Invalid),
                }
            }
        }
    }

    fn publish_failure(&self, kind: EventKind, username: &str, user: Option<&User>) {
        let id = user.map_or("", |u| u.id.as_str());
        self.sink.publish(&AuditEvent::for_account(
            kind,
            id,
            username,
            self.clock.now(),
            &Actor::system(),
        ));
    }

    /// Checks the second factor of `user` (after its password) and uses the code up.
    pub async fn check_totp(&self, user_id: &str, code: &str) -> Result<User, SignInError> {
        let user = self.by_id(user_id).await.map_err(|err| match err {
            AccountError::Store(err) => SignInError::Store(err),
            _ => SignInError::Invalid,
        })?;
        let now = self.clock.now();
        if let Some(wait) = self.throttle.wait(&user.username, None, now) {
            return Err(SignInError::Throttled(wait));
        }
        let accepted = self
            .update(user_id, |u| {
                let factor = u.totp.as_mut().ok_or(AccountError::WrongCode)?;
                let step = totp_step(&factor.secret, code, now, factor.last_step)
                    .ok_or(AccountError::WrongCode)?;
                factor.last_step = step;
                Ok(())
            })
            .await;
        match accepted {
            Ok(user) => {
                self.throttle.succeeded(&user.username);
                Ok(user)
            }
            Err(AccountError::Store(err)) => Err(SignInError::Store(err)),
            Err(_) => {
                self.publish_failure(EventKind::LoginFailed, &user.username, Some(&user));
                match self.throttle.failed(&user.username, None, now) {
                    Some(wait) => Err(SignInError::Throttled(wait)),
                    None => Err(SignInError::Invalid),
                }
            }
        }
    }

    /// A fresh secret for enrolment (not stored until a code proves the app has it).
    pub fn new_totp_secret(&self) -> String {
        new_totp_secret(self.random.as_ref())
    }

    /// Enrols `secret` once `code` proves the authenticator app holds it.
    pub async fn enrol_totp(
        &self,
        user_id: &str,
        secret: &str,
        code: &str,
        actor: &Actor,
    ) -> Result<User, AccountError> {
        let now = self.clock.now();
        let step = totp_step(secret, code, now, 0).ok_or(AccountError::WrongCode)?;
        let user = self
            .update(user_id, |user| {
                user.totp = Some(TotpFactor {
                    secret: secret.to_owned(),
                    last_step: step,
                    enrolled_at: now,
                });
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserTotpEnrolled, &user, actor);
        Ok(user)
    }

    /// Removes the TOTP factor.
    pub async fn remove_totp(&self, user_id: &str, actor: &Actor) -> Result<User, AccountError> {
        let user = self
            .update(user_id, |user| {
                user.totp = None;
                Ok(())
            })
            .await?;
        self.publish(EventKind::UserTotpRemoved, &user, actor);
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use crate::time::ManualClock;

    #[test]
    fn nist4_throttle_backs_off_exponentially_and_forgets() {
        let throttle = LoginThrottle::default();
        let mut now = Timestamp::from_millis(1_000_000);
        for _ in 0..5 {
            assert_eq!(throttle.failed("alice", Some("10.0.0.1"), now), None);
        }
        assert_eq!(throttle.wait("alice", None, now), None);
        assert_eq!(
            throttle.failed("alice", None, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            throttle.wait("alice", Some("10.0.0.9"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            throttle.failed("alice", None, now),
            Some(Duration::from_secs(60))
        );
        // Another account is not slowed by alice's failures (nor is this address yet).
        assert_eq!(throttle.wait("bob", Some("10.0.0.1"), now), None);
        now = now.plus(Duration::from_secs(61));
        assert_eq!(throttle.wait("alice", None, now), None);
        now = now.plus(Duration::from_secs(3600));
        assert_eq!(throttle.failed("alice", None, now), None, "forgotten");
    }

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

    #[tokio::test]
    async fn asvs4_2_2_unknown_user_and_wrong_password_answer_alike() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
        let accounts = Accounts::new(
            Arc::new(MemoryUserStore::new()),
            clock,
            Arc::new(SeededRandom::new(1)),
            Arc::new(crate::event::NoAuditSink),
        );
        let alice = accounts
            .add_user("Alice", "correct horse", &Actor::cli())
            .await
            .unwrap();
        assert_eq!(alice.username, "alice");
        assert!(matches!(
            accounts
                .add_user("alice", "another one", &Actor::cli())
                .await,
            Err(AccountError::Exists)
        ));
        assert!(matches!(
            accounts.add_user("bob", "password", &Actor::cli()).await,
            Err(AccountError::WeakPassword(_))
        ));
        let ok = accounts
            .check_password(" ALICE ", "correct horse", None)
            .await
            .unwrap();
        assert_eq!(ok.id, alice.id);
        let wrong = accounts.check_password("alice", "wrong", None).await;
        let unknown = accounts.check_password("mallory", "wrong", None).await;
        assert_eq!(
            wrong.unwrap_err().to_string(),
            unknown.unwrap_err().to_string()
        );
        accounts
            .set_disabled(&alice.id, true, &Actor::cli())
            .await
            .unwrap();
        assert!(matches!(
            accounts
                .check_password("alice", "correct horse", None)
                .await,
            Err(SignInError::Disabled)
        ));
    }
}
