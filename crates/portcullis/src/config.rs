//! Configuration (DESIGN §3): a TOML file (`PORTCULLIS_CONFIG`), every setting also from
//! `PORTCULLIS_*` environment variables (nested keys with `__`), then command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use portcullis_core::oidc::SigningAlg;
use portcullis_core::{
    Binding, EngineSettings, OnLimit, Policy, PolicyOverrides, PolicySet, Preset, parse_duration,
};
use portcullis_http::oidc::backchannel::OutboundPolicy;
use portcullis_http::peer::{ProxyHeaders, TrustedProxies};
use portcullis_http::ui::web::Hsts;
use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as text (`"15m"`); a bad one names its key through figment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConfigDuration(#[serde(serialize_with = "ser_duration")] pub Duration);

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&portcullis_core::format_duration(*d))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A [`ConfigDuration`] that may also be `off`, read as `0s`.
fn duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<ConfigDuration, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(ConfigDuration(Duration::ZERO));
    }
    parse_duration(&text)
        .map(ConfigDuration)
        .map_err(serde::de::Error::custom)
}

/// One `[policies.NAME]` table: names only what it changes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Start from a NIST preset.
    pub preset: Option<Preset>,
    /// Idle timeout.
    pub idle: Option<ConfigDuration>,
    /// Absolute lifetime.
    pub absolute: Option<ConfigDuration>,
    /// "Stay signed in" idle timeout.
    pub remember_me_idle: Option<ConfigDuration>,
    /// "Stay signed in" absolute lifetime.
    pub remember_me_absolute: Option<ConfigDuration>,
    /// Concurrent sessions per subject (0 = no limit).
    pub max_sessions: Option<u32>,
    /// `deny`, `evict_oldest` or `evict_idlest`.
    pub on_limit: Option<OnLimit>,
    /// Warning lead time.
    pub warn_before: Option<ConfigDuration>,
    /// Re-constitution window (`0s` = off).
    pub reconstitute_window: Option<ConfigDuration>,
    /// `none`, `user_agent` or `ip`.
    pub bind: Option<Binding>,
    /// Elevation lifetime.
    pub elevation: Option<ConfigDuration>,
    /// Whether the sign-in page asks "Stay signed in?" (default true).
    pub stay_signed_in: Option<bool>,
    /// Whether an application's `elevate` restarts the absolute deadline (default false).
    pub elevation_restarts_absolute: Option<bool>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the embedded store and the admin socket live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Store URL: `sqlite://PATH` (default: `sqlite://<data_dir>/portcullis.db`), `postgres://…`,
    /// `redis://…`, `redis+cluster://h1:p1,h2:p2` or `memory://`.
    #[serde(default)]
    pub store: Option<String>,
    /// `stdout`, `off`, or a file path for the JSON-lines audit log.
    #[serde(default = "default_audit_log")]
    pub audit_log: String,
    /// The shape of each audit line: `json` (the `/v1/events` shape) or `ocsf` (OCSF 1.1).
    #[serde(default)]
    pub audit_format: crate::audit::AuditFormat,
    /// Clients (CIDRs or addresses, after `trusted_proxies`) that may read `/metrics` without
    /// a token; default loopback only. The admin socket always may.
    #[serde(default = "default_metrics_allow")]
    pub metrics_allow: Vec<String>,
    /// A bearer token that also opens `/metrics` (`Authorization: Bearer …`), from any
    /// address. Best given as `PORTCULLIS_METRICS_TOKEN`; never printed.
    #[serde(default, skip_serializing)]
    pub metrics_token: Option<SecretText>,
    /// Largest session data in bytes (serialised JSON).
    #[serde(default = "default_max_data")]
    pub max_data_bytes: usize,
    /// Activity is written at most this often per session (bounds the idle-timeout error).
    #[serde(default = "default_touch")]
    pub touch_interval: ConfigDuration,
    /// How often expired sessions are swept.
    #[serde(default = "default_sweep")]
    pub sweep_interval: ConfigDuration,
    /// How long an ended session is remembered so validation can say why.
    #[serde(default = "default_retention")]
    pub ended_retention: ConfigDuration,
    /// How often live sessions are counted per application and policy for `/metrics`
    /// (`portcullis_live_sessions`); a count may walk every live session, so it runs on this
    /// interval, never per scrape. `"0s"` or `"off"`: never ([`Config::live_sessions_every`]).
    #[serde(
        default = "default_live_sessions",
        deserialize_with = "duration_or_off"
    )]
    pub live_sessions_interval: ConfigDuration,
    /// Named policies.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    /// The policy of SSO sessions (people signing in at Portcullis's own pages).
    #[serde(default = "default_sso_policy")]
    pub sso_policy: String,
    /// The policy of OpenID Connect offline grants (`offline_access`), which outlive the
    /// sign-out; unset: 30 days idle, 90 days at most.
    #[serde(default)]
    pub offline_policy: Option<String>,
    /// A theme directory: files in its `templates/` and `assets/` replace the built-in ones.
    #[serde(default)]
    pub ui_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM). With `tls_key`, the listener speaks HTTPS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Proxies (CIDRs or addresses) whose `Forwarded` / `X-Forwarded-For` headers name the
    /// client; empty: the TCP peer is the client and those headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The headers those proxies write, and the only ones read: `xforwarded`
    /// (`X-Forwarded-For`, `X-Forwarded-Proto`) or `forwarded` (RFC 7239).
    #[serde(default = "default_proxy_headers")]
    pub proxy_headers: String,
    /// HSTS `max-age` on the pages (sent over TLS, or behind a trusted proxy that ends TLS).
    #[serde(default = "default_hsts_max_age")]
    pub hsts_max_age: ConfigDuration,
    /// HSTS `includeSubDomains`.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Keys that seal second-factor secrets at rest: `<id>:<base64 of 32 bytes>`, comma
    /// separated, the current one first (older ones still open what they sealed). Best given
    /// as `PORTCULLIS_ENCRYPTION_KEYS`; never printed. Without one, second factors cannot be
    /// enrolled.
    #[serde(default, skip_serializing)]
    pub encryption_keys: Option<SecretText>,
    /// The OpenID Connect issuer: Portcullis's public base URL (`https://id.example.com`).
    /// Setting it turns the provider on (discovery, authorization, tokens); it needs
    /// `encryption_keys`, which seal its signing keys.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Networks (CIDRs or addresses) outbound requests may reach although they are not
    /// public: back-channel logout URIs on loopback or a private network. Empty: public
    /// addresses only, so a client's registration cannot make Portcullis call inside the
    /// deployment's network.
    #[serde(default)]
    pub outbound_allow: Vec<String>,
    /// The algorithms the OpenID Connect provider keeps signing keys for; ID tokens are signed
    /// with the first unless a client registered another of them.
    #[serde(default = "default_signing_algs")]
    pub signing_algs: Vec<String>,
    /// How long an outbound request (a back-channel logout, a call to an upstream provider)
    /// may take.
    #[serde(default = "default_outbound_timeout")]
    pub outbound_timeout: ConfigDuration,
    /// Upstream OpenID Connect providers people may sign in through, by id
    /// (`[upstreams.corp]`). They need `issuer` (Portcullis's public URL: their callback is
    /// `{issuer}/login/upstream/{id}/callback`) and `encryption_keys`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

/// One upstream provider (`[upstreams.<id>]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// What the sign-in page's button names ("Sign in with …"); default: the id.
    #[serde(default)]
    pub label: Option<String>,
    /// Its issuer identifier, exactly as its discovery document says it.
    pub issuer: String,
    /// Portcullis's client id there.
    pub client_id: String,
    /// How Portcullis authenticates at its token endpoint.
    #[serde(default)]
    pub client_auth: UpstreamAuthMethod,
    /// Portcullis's client secret there (`client_secret_basic`).
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretText>,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_upstream_scopes")]
    pub scopes: Vec<String>,
    /// The claim a new account's username comes from.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The claim holding the e-mail address.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// The claim holding the display name.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The most assurance (1–3) a sign-in there may claim; its `acr` (`aal2`) says how much
    /// it does, and none means 1.
    #[serde(default = "default_assurance")]
    pub assurance: u8,
    /// Whether people it vouches for who have no account here get one on first sign-in.
    #[serde(default)]
    pub create_accounts: bool,
    /// E-mail domains whose people sign in there: typing such an address on the sign-in page
    /// goes there (home-realm discovery).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Whether an SSO session it starts ends no later than its ID token.
    #[serde(default)]
    pub bound_session: bool,
    /// Whether answers come by `response_mode=form_post`.
    #[serde(default)]
    pub form_post: bool,
}

/// How Portcullis authenticates at an upstream token endpoint (`client_auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuthMethod {
    /// `client_secret_basic` with `client_secret`.
    #[default]
    ClientSecretBasic,
    /// `private_key_jwt` signed with the provider's own keys; the upstream registers
    /// `{issuer}/oidc/jwks` as the client's `jwks_uri`.
    PrivateKeyJwt,
}

fn default_upstream_scopes() -> Vec<String> {
    vec!["profile".into(), "email".into()]
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

fn default_email_claim() -> String {
    "email".into()
}

fn default_name_claim() -> String {
    "name".into()
}

fn default_assurance() -> u8 {
    1
}

/// Configuration text that is a secret: read like a string, never shown (`Debug` prints
/// `***`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Config {
    /// The keyring of `encryption_keys`; `None` when none is configured.
    pub fn keyring(&self) -> Result<Option<portcullis_core::Keyring>, ConfigError> {
        let Some(text) = self
            .encryption_keys
            .as_ref()
            .map(|t| t.0.as_str())
            .filter(|t| !t.trim().is_empty())
        else {
            return Ok(None);
        };
        let entries: Vec<&str> = text.split(',').filter(|e| !e.trim().is_empty()).collect();
        portcullis_core::Keyring::parse(&entries)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("encryption_keys: {e}")))
    }
}

fn default_signing_algs() -> Vec<String> {
    vec!["ES256".to_owned()]
}

fn default_outbound_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

fn default_proxy_headers() -> String {
    ProxyHeaders::default().as_str().to_owned()
}

fn default_hsts_max_age() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(31_536_000))
}

fn default_sso_policy() -> String {
    "default".into()
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    "./portcullis-data".into()
}
fn default_audit_log() -> String {
    "stdout".into()
}
fn default_metrics_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}
fn default_max_data() -> usize {
    16 * 1024
}
fn default_touch() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(15))
}
fn default_sweep() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_retention() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3600))
}
fn default_live_sessions() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

/// Settings given on the command line, which win over file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--store`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// `--audit-log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
    /// `--tls-cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or a type error (figment names the key and the source).
    #[error("{0}")]
    Load(String),
    /// A value that parses but cannot work.
    #[error("{0}")]
    Invalid(String),
}

/// Which store to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// Memory only (nothing survives a restart).
    Memory,
    /// A shared PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres(String),
    /// A shared Redis server or Redis Cluster (`redis://…`, `redis+cluster://h1:p1,h2:p2`;
    /// `rediss://…`, `rediss+cluster://…` over TLS).
    Redis(String),
}

/// Shown as the URL with its password replaced by `***` (in the user info or a `password=`
/// parameter): the start-up line and `config check` print it, and logs must not carry secrets.
impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Memory => f.write_str("memory://"),
            Self::Postgres(url) | Self::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with every password replaced by `***`.
pub fn redact(url: &str) -> String {
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match before_query.split_once("://") {
        Some((scheme, rest)) => {
            // The user info ends at the last '@' before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{hosts}{path}")
                }
                None => before_query.to_owned(),
            }
        }
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether `url` names a Redis server or Cluster, over TLS or not.
fn is_redis_url(url: &str) -> bool {
    let tls = url
        .strip_prefix("rediss")
        .map(|rest| format!("redis{rest}"));
    let url = tls.as_deref().unwrap_or(url);
    url.starts_with("redis://") || url.starts_with("redis+cluster://")
}

impl Config {
    /// Loads file (if `path`), environment, then `overrides`, and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist (PORTCULLIS_CONFIG / --config)",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment
            .merge(Env::prefixed("PORTCULLIS_").split("__").ignore(&["config"]))
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().map_err(|errors| {
            ConfigError::Load(
                errors
                    .into_iter()
                    .map(|e| describe(&e))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            ConfigError::Invalid(format!(
                "listen: \"{}\" is not an address like 127.0.0.1:8080 ({e})",
                self.listen
            ))
        })?;
        self.store_url()?;
        let policies = self.policies()?;
        if policies.get(&self.sso_policy).is_none() {
            return Err(ConfigError::Invalid(format!(
                "sso_policy: no policy is named \"{}\" (define [policies.{}])",
                self.sso_policy, self.sso_policy
            )));
        }
        if let Some(offline) = &self.offline_policy
            && (portcullis_core::is_reserved_policy(offline) || policies.get(offline).is_none())
        {
            return Err(ConfigError::Invalid(format!(
                "offline_policy: no policy is named \"{offline}\" (define [policies.{offline}])"
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key: give both (HTTPS) or neither (plain HTTP)".into(),
            ));
        }
        if self.max_data_bytes == 0 || self.max_data_bytes > 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "max_data_bytes: must be between 1 and 1048576".into(),
            ));
        }
        if self.sweep_interval.0.is_zero() {
            return Err(ConfigError::Invalid(
                "sweep_interval: must be greater than 0s".into(),
            ));
        }
        TrustedProxies::parse(self.trusted_proxies.iter().map(String::as_str))
            .map_err(|e| ConfigError::Invalid(format!("trusted_proxies: {e}")))?;
        ProxyHeaders::parse(&self.proxy_headers)
            .map_err(|e| ConfigError::Invalid(format!("proxy_headers: {e}")))?;
        // Read here, not first when the provider starts: what `serve` refuses, the check does.
        self.keyring()?;
        TrustedProxies::parse(self.metrics_allow.iter().map(String::as_str))
            .map_err(|e| ConfigError::Invalid(format!("metrics_allow: {e}")))?;
        OutboundPolicy::parse(self.outbound_allow.iter().map(String::as_str))
            .map_err(|e| ConfigError::Invalid(format!("outbound_allow: {e}")))?;
        self.signing_algs()?;
        if self.outbound_timeout.0.is_zero() {
            return Err(ConfigError::Invalid(
                "outbound_timeout: must be greater than 0s".into(),
            ));
        }
        self.upstream_settings()?;
        if self.metrics_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            return Err(ConfigError::Invalid(
                "metrics_token: must be at least 16 characters".into(),
            ));
        }
        Ok(())
    }

    /// The upstream providers, with the callback URI each answers at.
    pub fn upstream_settings(
        &self,
    ) -> Result<Vec<(portcullis_upstream::UpstreamSettings, String)>, ConfigError> {
        if self.upstreams.is_empty() {
            return Ok(Vec::new());
        }
        let invalid = |id: &str, why: &str| ConfigError::Invalid(format!("upstreams.{id}: {why}"));
        let Some(base) = self.issuer.as_deref() else {
            return Err(ConfigError::Invalid(
                "upstreams: set issuer (Portcullis's public URL: each provider's callback is under it)".into(),
            ));
        };
        if self.encryption_keys.is_none() {
            return Err(ConfigError::Invalid(
                "upstreams: set encryption_keys (they seal the sign-ins in progress)".into(),
            ));
        }
        let mut all = Vec::with_capacity(self.upstreams.len());
        for (id, upstream) in &self.upstreams {
            if !portcullis_upstream::UpstreamSettings::valid_id(id) {
                return Err(invalid(id, "an id is 1 to 32 letters, digits, - or _"));
            }
            if !(upstream.issuer.starts_with("https://") || upstream.issuer.starts_with("http://"))
            {
                return Err(invalid(id, "issuer must be an http(s) URL"));
            }
            if upstream.client_id.is_empty() {
                return Err(invalid(id, "give client_id"));
            }
            let secret = upstream
                .client_secret
                .as_ref()
                .map(|s| s.0.clone())
                .filter(|s| !s.is_empty());
            let client_auth = match (upstream.client_auth, secret) {
                (UpstreamAuthMethod::ClientSecretBasic, Some(secret)) => {
                    portcullis_upstream::UpstreamClientAuth::Secret(secret)
                }
                (UpstreamAuthMethod::ClientSecretBasic, None) => {
                    return Err(invalid(
                        id,
                        "give client_secret, or client_auth = \"private_key_jwt\"",
                    ));
                }
                (UpstreamAuthMethod::PrivateKeyJwt, None) => {
                    portcullis_upstream::UpstreamClientAuth::PrivateKeyJwt
                }
                (UpstreamAuthMethod::PrivateKeyJwt, Some(_)) => {
                    return Err(invalid(
                        id,
                        "private_key_jwt uses no client_secret; remove it",
                    ));
                }
            };
            if !(1..=3).contains(&upstream.assurance) {
                return Err(invalid(id, "assurance is 1, 2 or 3"));
            }
            let settings = portcullis_upstream::UpstreamSettings {
                id: id.clone(),
                label: upstream.label.clone().unwrap_or_else(|| id.clone()),
                issuer: upstream.issuer.clone(),
                client_id: upstream.client_id.clone(),
                client_auth,
                scopes: upstream.scopes.clone(),
                claims: portcullis_upstream::ClaimMapping {
                    username: upstream.username_claim.clone(),
                    email: upstream.email_claim.clone(),
                    name: upstream.name_claim.clone(),
                },
                assurance: upstream.assurance,
                create_accounts: upstream.create_accounts,
                domains: upstream.domains.clone(),
                bound_session: upstream.bound_session,
                form_post: upstream.form_post,
            };
            let callback = format!(
                "{}/login/upstream/{id}/callback",
                base.trim_end_matches('/')
            );
            all.push((settings, callback));
        }
        Ok(all)
    }

    /// The store to open.
    pub fn store_url(&self) -> Result<StoreUrl, ConfigError> {
        match self.store.as_deref() {
            None => Ok(StoreUrl::Sqlite(self.data_dir.join("portcullis.db"))),
            Some("memory://") => Ok(StoreUrl::Memory),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreUrl::Postgres(url.to_owned()))
            }
            Some(url) if is_redis_url(url) => Ok(StoreUrl::Redis(url.to_owned())),
            Some(url) => match url.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => Ok(StoreUrl::Sqlite(PathBuf::from(path))),
                _ => Err(ConfigError::Invalid(format!(
                    "store: \"{}\" is not supported by this build (use sqlite://PATH, postgres://…, redis://…, rediss://…, redis+cluster://…, rediss+cluster://… or memory://)",
                    redact(url)
                ))),
            },
        }
    }

    /// The resolved policies.
    pub fn policies(&self) -> Result<PolicySet, ConfigError> {
        let mut resolved = Vec::new();
        for (name, p) in &self.policies {
            if portcullis_core::is_reserved_policy(name) {
                return Err(ConfigError::Invalid(format!(
                    "policies.{name}: names starting with \"{}\" are Portcullis's own (the SSO session follows sso_policy)",
                    portcullis_core::RESERVED_POLICY_PREFIX
                )));
            }
            let d = |v: Option<ConfigDuration>| v.map(|c| c.0);
            let overrides = PolicyOverrides {
                preset: p.preset,
                idle: d(p.idle),
                absolute: d(p.absolute),
                remember_me_idle: d(p.remember_me_idle),
                remember_me_absolute: d(p.remember_me_absolute),
                max_sessions: p.max_sessions,
                on_limit: p.on_limit,
                warn_before: d(p.warn_before),
                reconstitute_window: d(p.reconstitute_window),
                bind: p.bind,
                elevation: d(p.elevation),
                stay_signed_in: p.stay_signed_in,
                elevation_restarts_absolute: p.elevation_restarts_absolute,
            };
            resolved.push(
                Policy::resolve(name, &overrides)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            );
        }
        let set = PolicySet::new(resolved).with_sso_from(&self.sso_policy);
        Ok(match &self.offline_policy {
            Some(offline) => set.with_offline_from(offline),
            None => set,
        })
    }

    /// The engine settings.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            touch_interval: self.touch_interval.0,
            max_data_bytes: self.max_data_bytes,
            ended_retention: self.ended_retention.0,
        }
    }

    /// How often live sessions are counted for `/metrics`; `None` when counting is off
    /// (`"0s"`, `"off"`, or `"none"`, which would be never as well).
    pub fn live_sessions_every(&self) -> Option<Duration> {
        Some(self.live_sessions_interval.0)
            .filter(|every| !every.is_zero() && *every != portcullis_core::NO_LIMIT)
    }

    /// The admin socket of this data directory.
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir.join("portcullis.sock")
    }

    /// The proxies whose forwarding headers are believed (checked by [`Config::load`]).
    pub fn trusted_proxies(&self) -> TrustedProxies {
        TrustedProxies::parse(self.trusted_proxies.iter().map(String::as_str))
            .unwrap_or_default()
            .writing(ProxyHeaders::parse(&self.proxy_headers).unwrap_or_default())
    }

    /// The provider's signing algorithms, the ID tokens' default first.
    pub fn signing_algs(&self) -> Result<Vec<SigningAlg>, ConfigError> {
        let mut algs = Vec::new();
        for name in &self.signing_algs {
            let alg = SigningAlg::parse(name).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "signing_algs: unknown algorithm \"{name}\" (ES256, EdDSA, RS256)"
                ))
            })?;
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        if algs.is_empty() {
            return Err(ConfigError::Invalid(
                "signing_algs: name at least one algorithm".into(),
            ));
        }
        Ok(algs)
    }

    /// Where outbound requests may go (checked by [`Config::load`]).
    pub fn outbound_policy(&self) -> OutboundPolicy {
        OutboundPolicy::parse(self.outbound_allow.iter().map(String::as_str)).unwrap_or_default()
    }

    /// The pages' `Strict-Transport-Security`.
    pub fn hsts(&self) -> Hsts {
        Hsts {
            max_age: self.hsts_max_age.0,
            include_subdomains: self.hsts_include_subdomains,
        }
    }

    /// The embedded store's single-writer lock file (`<database>.lock`, beside the database),
    /// or `None` for stores that take many writers.
    pub fn store_lock(&self) -> Result<Option<PathBuf>, ConfigError> {
        Ok(match self.store_url()? {
            StoreUrl::Sqlite(path) => {
                let mut lock = path.into_os_string();
                lock.push(".lock");
                Some(PathBuf::from(lock))
            }
            StoreUrl::Memory | StoreUrl::Postgres(_) | StoreUrl::Redis(_) => None,
        })
    }
}

/// One figment error as `key: problem (in source)`.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(src) => format!(" (in {src})"),
            None => format!(" (in {})", m.name),
        })
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{source}", e.kind)
    } else {
        format!("{key}: {}{source}", e.kind)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns its large error type; fine in tests
// `Config::load` reads `PORTCULLIS_*` variables, which tests set inside a `Jail`; every load runs in
// one, since only the Jail's lock keeps another test's variables out of the process environment.
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn store_urls_are_shown_without_their_passwords() {
        let cases = [
            (
                "postgres://portcullis:s3cret@db.internal/portcullis?schema=pc",
                "postgres://portcullis:***@db.internal/portcullis?schema=pc",
            ),
            (
                "postgres://db.internal/portcullis?user=pc&password=s3cret&sslmode=require",
                "postgres://db.internal/portcullis?user=pc&password=***&sslmode=require",
            ),
            (
                "redis://:s3cret@127.0.0.1:6379/?prefix=pc",
                "redis://:***@127.0.0.1:6379/?prefix=pc",
            ),
            (
                "redis+cluster://app:p@ss:w0rd@10.0.0.1:6379,10.0.0.2:6379?prefix=pc",
                "redis+cluster://app:***@10.0.0.1:6379,10.0.0.2:6379?prefix=pc",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("postgres://pc@db/portcullis", "postgres://pc@db/portcullis"),
        ];
        for (url, shown) in cases {
            let redacted = redact(url);
            assert_eq!(redacted, shown);
            assert!(!redacted.contains("s3cret") && !redacted.contains("w0rd"));
        }
        let store = StoreUrl::Postgres(cases[0].0.to_owned());
        assert_eq!(store.to_string(), cases[0].1);
        let overrides = Overrides {
            store: Some("mysql://root:s3cret@db/x".into()),
            ..Overrides::default()
        };
        Jail::expect_with(|_| {
            let err = Config::load(None, &overrides).unwrap_err().to_string();
            assert!(
                err.contains("mysql://root:***@db/x") && !err.contains("s3cret"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_and_hsts_are_read_and_checked() {
        Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(c.trusted_proxies().is_empty());
            assert_eq!(c.hsts(), Hsts::default());
            jail.create_file(
                "proxy.toml",
                r#"
                trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]
                hsts_max_age = "730d"
                hsts_include_subdomains = true
                "#,
            )?;
            let c = Config::load(Some(Path::new("proxy.toml")), &Overrides::default()).unwrap();
            let proxies = c.trusted_proxies();
            assert!(proxies.contains("10.1.2.3".parse().unwrap()));
            assert!(proxies.contains("2001:db8:5::1".parse().unwrap()));
            assert!(proxies.contains("192.0.2.1".parse().unwrap()));
            assert!(!proxies.contains("192.0.2.2".parse().unwrap()));
            assert_eq!(
                c.hsts().header_value(),
                "max-age=63072000; includeSubDomains"
            );
            jail.set_env("PORTCULLIS_TRUSTED_PROXIES", "[\"10.0.0.0/33\"]");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("trusted_proxies: \"10.0.0.0/33\""),
                "{err}"
            );
            jail.set_env("PORTCULLIS_TRUSTED_PROXIES", "[\"10.0.0.0/8\"]");
            assert_eq!(
                Config::load(None, &Overrides::default())
                    .unwrap()
                    .trusted_proxies()
                    .headers(),
                ProxyHeaders::XForwarded,
                "X-Forwarded-* by default"
            );
            jail.set_env("PORTCULLIS_PROXY_HEADERS", "forwarded");
            assert_eq!(
                Config::load(None, &Overrides::default())
                    .unwrap()
                    .trusted_proxies()
                    .headers(),
                ProxyHeaders::Forwarded
            );
            jail.set_env("PORTCULLIS_PROXY_HEADERS", "both");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().starts_with("proxy_headers: \"both\""),
                "{err}"
            );
            Ok(())
        });
    }

    /// What `serve` refuses, `config check` refuses: encryption keys that are not base64 or
    /// not 256 bits are refused when the configuration is read.
    #[test]
    fn bad_encryption_keys_are_refused_when_the_configuration_is_read() {
        Jail::expect_with(|jail| {
            for bad in ["k1:notbase64!!", "k1:c2hvcnQ="] {
                jail.set_env("PORTCULLIS_ENCRYPTION_KEYS", bad);
                let err = Config::load(None, &Overrides::default()).unwrap_err();
                assert!(
                    err.to_string().starts_with("encryption_keys:"),
                    "{bad}: {err}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn outbound_allow_and_offline_policy_are_read_and_checked() {
        Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(!c.outbound_policy().allows("127.0.0.1".parse().unwrap()));
            assert_eq!(c.outbound_timeout.0, Duration::from_secs(5));
            let offline = c.policies().unwrap();
            let offline = offline.get(portcullis_core::OFFLINE_POLICY).unwrap();
            assert_eq!(offline.absolute.value, Duration::from_secs(90 * 86_400));
            assert_eq!(c.signing_algs().unwrap(), vec![SigningAlg::Es256]);
            jail.create_file(
                "outbound.toml",
                r#"
                outbound_allow = ["127.0.0.0/8", "10.1.0.0/16"]
                outbound_timeout = "2s"
                signing_algs = ["RS256", "ES256", "RS256"]
                offline_policy = "devices"
                [policies.devices]
                idle = "7d"
                absolute = "30d"
                "#,
            )?;
            let c = Config::load(Some(Path::new("outbound.toml")), &Overrides::default()).unwrap();
            assert!(c.outbound_policy().allows("127.0.0.1".parse().unwrap()));
            assert!(c.outbound_policy().allows("10.1.2.3".parse().unwrap()));
            assert!(!c.outbound_policy().allows("10.2.0.1".parse().unwrap()));
            assert_eq!(c.outbound_timeout.0, Duration::from_secs(2));
            assert_eq!(
                c.signing_algs().unwrap(),
                vec![SigningAlg::Rs256, SigningAlg::Es256],
                "the first signs by default; a repeat counts once"
            );
            let policies = c.policies().unwrap();
            let offline = policies.get(portcullis_core::OFFLINE_POLICY).unwrap();
            assert_eq!(offline.absolute.value, Duration::from_secs(30 * 86_400));
            for (key, value, needle) in [
                (
                    "PORTCULLIS_OUTBOUND_ALLOW",
                    "[\"localhost\"]",
                    "outbound_allow",
                ),
                ("PORTCULLIS_OUTBOUND_TIMEOUT", "0s", "outbound_timeout"),
                ("PORTCULLIS_OFFLINE_POLICY", "nowhere", "offline_policy"),
                ("PORTCULLIS_SIGNING_ALGS", "[\"HS256\"]", "signing_algs"),
                ("PORTCULLIS_SIGNING_ALGS", "[]", "signing_algs"),
            ] {
                jail.set_env(key, value);
                let err = Config::load(Some(Path::new("outbound.toml")), &Overrides::default())
                    .unwrap_err();
                assert!(err.to_string().contains(needle), "{key}: {err}");
                jail.clear_env();
            }
            Ok(())
        });
    }

    #[test]
    fn upstream_providers_authenticate_with_a_secret_or_private_key_jwt() {
        Jail::expect_with(|jail| {
            let key = portcullis_core::Keyring::generate_entry("k1", &portcullis_core::OsRandom);
            let with = |upstream: &str| {
                format!(
                    "issuer = \"https://sso.example\"\nencryption_keys = \"{key}\"\n[upstreams.corp]\nissuer = \"https://idp.example\"\nclient_id = \"portcullis\"\n{upstream}\n"
                )
            };
            let load = |jail: &mut Jail, text: &str| {
                jail.create_file("upstream.toml", text)?;
                Ok::<_, figment::Error>(
                    Config::load(Some(Path::new("upstream.toml")), &Overrides::default())
                        .and_then(|c| c.upstream_settings()),
                )
            };
            let secret = load(jail, &with("client_secret = \"s3cret\""))?.unwrap();
            assert_eq!(
                secret[0].0.client_auth,
                portcullis_upstream::UpstreamClientAuth::Secret("s3cret".into())
            );
            assert_eq!(
                secret[0].1,
                "https://sso.example/login/upstream/corp/callback"
            );
            let jwt = load(jail, &with("client_auth = \"private_key_jwt\""))?.unwrap();
            assert_eq!(
                jwt[0].0.client_auth,
                portcullis_upstream::UpstreamClientAuth::PrivateKeyJwt
            );
            for (upstream, needle) in [
                ("", "give client_secret"),
                (
                    "client_auth = \"private_key_jwt\"\nclient_secret = \"s3cret\"",
                    "uses no client_secret",
                ),
                ("client_auth = \"tls_client_auth\"", "client_auth"),
            ] {
                let err = load(jail, &with(upstream))?.unwrap_err();
                assert!(err.to_string().contains(needle), "{upstream}: {err}");
            }
            Ok(())
        });
    }

    #[test]
    fn the_embedded_store_has_a_lock_beside_it() {
        Jail::expect_with(|_| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(
                c.store_lock().unwrap(),
                Some(PathBuf::from("./portcullis-data/portcullis.db.lock"))
            );
            let shared = Overrides {
                store: Some("postgres://db/portcullis".into()),
                ..Overrides::default()
            };
            assert_eq!(
                Config::load(None, &shared).unwrap().store_lock().unwrap(),
                None
            );
            Ok(())
        });
    }

    #[test]
    fn redis_store_urls_over_tls_are_accepted() {
        for url in [
            "rediss://localhost:6380?ca_file=/etc/portcullis/ca.pem",
            "rediss+cluster://10.0.0.1:6380,10.0.0.2:6380?wait_replicas=1",
        ] {
            let over_tls = Overrides {
                store: Some(url.into()),
                ..Overrides::default()
            };
            Jail::expect_with(|_| {
                assert_eq!(
                    Config::load(None, &over_tls).unwrap().store_url().unwrap(),
                    StoreUrl::Redis(url.into())
                );
                Ok(())
            });
        }
    }

    #[test]
    fn live_sessions_are_counted_every_minute_unless_told_otherwise_or_off() {
        Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.live_sessions_every(), Some(Duration::from_secs(60)));
            for (text, every) in [
                ("30s", Some(Duration::from_secs(30))),
                ("off", None),
                ("0s", None),
            ] {
                jail.set_env("PORTCULLIS_LIVE_SESSIONS_INTERVAL", text);
                let c = Config::load(None, &Overrides::default()).unwrap();
                assert_eq!(c.live_sessions_every(), every, "{text}");
            }
            jail.set_env("PORTCULLIS_LIVE_SESSIONS_INTERVAL", "often");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                err.to_string().starts_with("live_sessions_interval:"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn defaults_need_no_file() {
        Jail::expect_with(|_| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.listen, "127.0.0.1:8080");
            assert_eq!(
                c.store_url().unwrap(),
                StoreUrl::Sqlite("./portcullis-data/portcullis.db".into())
            );
            let p = c.policies().unwrap();
            assert_eq!(
                p.get("default").unwrap().idle.value,
                Duration::from_secs(900)
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_environment_then_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                r#"
                listen = "127.0.0.1:9000"
                audit_log = "off"
                [policies.bank]
                preset = "aal3"
                max_sessions = 1
                on_limit = "evict_oldest"
                "#,
            )?;
            jail.set_env("PORTCULLIS_LISTEN", "127.0.0.1:9001");
            jail.set_env("PORTCULLIS_POLICIES__BANK__IDLE", "5m");
            let flags = Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("p.toml")), &flags).unwrap();
            assert_eq!(c.listen, "127.0.0.1:9001");
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            let bank = c.policies().unwrap().get("bank").unwrap().clone();
            assert_eq!(bank.idle.value, Duration::from_secs(300));
            assert_eq!(bank.absolute.value, Duration::from_secs(12 * 3600));
            assert_eq!(bank.max_sessions.value, 1);
            Ok(())
        });
    }

    #[test]
    fn invalid_config_names_the_key() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[policies.shop]\nidle = \"15 minutes\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("policies.shop.idle"), "{err}");
            jail.create_file("unknown.toml", "[policies.shop]\nidel = \"15m\"\n")?;
            let err =
                Config::load(Some(Path::new("unknown.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("idel"), "{err}");
            jail.create_file("limit.toml", "[policies.shop]\non_limit = \"kick\"\n")?;
            let err =
                Config::load(Some(Path::new("limit.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("policies.shop.on_limit"), "{err}");
            jail.create_file("long.toml", "[policies.shop]\nidle = \"2d\"\n")?;
            let err =
                Config::load(Some(Path::new("long.toml")), &Overrides::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("policies.shop.idle: 2d is longer than absolute 12h"),
                "{err}"
            );
            jail.set_env("PORTCULLIS_STORE", "mongodb://127.0.0.1");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().starts_with("store:"), "{err}");
            Ok(())
        });
    }
}
