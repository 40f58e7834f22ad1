//! `portcullis`: the session server and its admin command line.

mod admin_client;
mod audit;
mod config;
mod ocsf;
mod timed_store;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use portcullis_core::oidc::{IdentityStore, ReplayStore};
use portcullis_core::{
    Accounts, AuditSink, Clock, Engine, MemoryStore, MemoryThrottleStore, MemoryUserStore,
    NoAuditSink, OsRandom, RandomSource, SessionStore, Store, SystemClock, ThrottleStore,
    UserStore,
};
use portcullis_http::oidc::backchannel::HttpLogoutSender;
use portcullis_http::outbound::{Outbound, ProviderAssertions};
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, AuditHealth, Edge, Services, admin_router, api_router};
use portcullis_oidc::{DeliverySettings, Provider, ProviderSettings, ProviderStores};
use portcullis_upstream::{Federation, Upstream, UpstreamHttp};
use tower::ServiceExt;

use crate::admin_client::AdminClient;
use crate::audit::JsonLinesSink;
use crate::config::{Config, Overrides, StoreUrl};
use crate::timed_store::TimedStore;

/// Validation allocates a few short-lived buffers per request on one worker thread and often
/// frees them on another; glibc's allocator spent about a fifth of the server's CPU on that
/// under load (`_int_free`, `malloc_consolidate`), mimalloc's thread-local free lists far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis: the session authority"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (embedded store, admin socket).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Store URL (`sqlite://PATH`, `postgres://…`, `redis://…`, `redis+cluster://…`, `memory://`).
    #[arg(long, global = true)]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address of the HTTP API.
        #[arg(long)]
        listen: Option<String>,
        /// Audit log: `stdout`, `off` or a file path.
        #[arg(long)]
        audit_log: Option<String>,
        /// TLS certificate chain (PEM); with `--tls-key` the listener speaks HTTPS.
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
    /// Manage the local accounts people sign in with.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Manage the applications that call Portcullis (each API key belongs to one).
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage the OpenID Connect provider's signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read and retry back-channel logout deliveries (each ended session of a client that
    /// registered a back-channel logout URI).
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Manage API keys for backend callers.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List a subject's live sessions.
    List {
        /// The subject.
        #[arg(long)]
        subject: String,
    },
    /// End one session (`revoked_admin`).
    Revoke {
        /// The session id.
        id: String,
    },
    /// End all of a subject's sessions, except one if given.
    RevokeSubject {
        /// The subject.
        subject: String,
        /// The session to keep.
        #[arg(long)]
        except: Option<String>,
        /// Ending reason (default `revoked_admin`).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Add an account; the password is read from standard input (first line).
    Add {
        /// What the person types to sign in.
        username: String,
    },
    /// List accounts (never their passwords or secrets).
    List,
    /// Disable an account and end all its sessions at once.
    Disable {
        /// The username.
        username: String,
    },
    /// Enable a disabled account.
    Enable {
        /// The username.
        username: String,
    },
    /// Set a new password (read from standard input) and end the account's sessions.
    SetPassword {
        /// The username.
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum AppsCommand {
    /// Register an application.
    Add {
        /// Its unique name (`shop`).
        name: String,
        /// A policy its sessions may follow (repeat; default `default`; `*` for every policy).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// The policy of sessions created without one (default: the first `--policy`).
        #[arg(long)]
        default_policy: Option<String>,
        /// A grant beyond its own sessions (repeat): `end_everywhere`, `read_all_events`,
        /// `list_all_sessions`.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// List applications with their policies, grants and live keys.
    List,
    /// Show one application (by name or id).
    Show {
        /// Name or id.
        app: String,
    },
    /// Change an application; each option given replaces what there was.
    Update {
        /// Name or id.
        app: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// The policies it may use (repeat; replaces the list).
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// The policy of sessions created without one.
        #[arg(long)]
        default_policy: Option<String>,
        /// Its grants (repeat; replaces the list).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Take every grant away.
        #[arg(long, conflicts_with = "grants")]
        no_grants: bool,
    },
    /// Remove an application: revoke its keys and end its sessions (`app_removed`).
    Remove {
        /// Name or id.
        app: String,
    },
    /// Register an application as an OpenID Connect client (or replace its registration); a
    /// client secret, when one is made, is printed once.
    Client {
        /// Name or id.
        app: String,
        /// A redirect URI, compared exactly (repeat).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A post-logout redirect URI (repeat).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// `client_secret_basic` (default), `client_secret_post`, `private_key_jwt` or `none`
        /// (a public client: PKCE required).
        #[arg(long)]
        auth_method: Option<String>,
        /// For `private_key_jwt`: a file holding the client's JWK Set.
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// A scope it may be granted (repeat; default `openid profile email`).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A grant it may use (repeat; default `authorization_code refresh_token`).
        #[arg(long = "grant-type")]
        grant_types: Vec<String>,
        /// Back-channel logout endpoint.
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
        /// Front-channel logout page.
        #[arg(long)]
        frontchannel_logout_uri: Option<String>,
        /// Ask the person before the first grant (third-party clients).
        #[arg(long)]
        require_consent: bool,
        /// Sign its ID tokens with this algorithm (`ES256`, `EdDSA`, `RS256`; one of
        /// `signing_algs`) instead of the provider's first.
        #[arg(long)]
        id_token_alg: Option<String>,
        /// Its people always sign in through this upstream provider (an id of `[upstreams]`).
        #[arg(long)]
        upstream: Option<String>,
        /// Make a new secret even though the client has one.
        #[arg(long)]
        new_secret: bool,
    },
    /// End an application's registration as an OpenID Connect client.
    ClientRemove {
        /// Name or id.
        app: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the OpenID Connect provider's signing keys, signing and retired.
    List,
    /// Make a new signing key; the old one stays published, retired, for a day.
    Rotate {
        /// `ES256` (default), `EdDSA` or `RS256`.
        #[arg(long)]
        alg: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, most recent ending first, with how many are pending.
    List {
        /// `pending`, `delivered` or `failed`.
        #[arg(long)]
        state: Option<String>,
        /// Only those to this client (application name or id).
        #[arg(long)]
        client: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show the delivery of one ended session.
    Show {
        /// The ended session's id.
        session: String,
    },
    /// Try a failed delivery again now.
    Retry {
        /// The ended session's id.
        session: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Create a key for an application; its secret is printed once.
    Create {
        /// The application it belongs to (name or id).
        #[arg(long)]
        app: String,
        /// What the key is for (default: the application's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key.
    Revoke {
        /// The key id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the resolved policies.
    Check,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut overrides = Overrides {
        data_dir: cli.data_dir,
        store: cli.store,
        ..Default::default()
    };
    if let Command::Serve {
        listen,
        audit_log,
        tls_cert,
        tls_key,
    } = &cli.command
    {
        overrides.listen = listen.clone();
        overrides.audit_log = audit_log.clone();
        overrides.tls_cert = tls_cert.clone();
        overrides.tls_key = tls_key.clone();
    }
    let config =
        Config::load(cli.config.as_deref(), &overrides).context("invalid configuration")?;
    match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Config(ConfigCommand::Check) => config_check(&config).await,
        Command::Sessions(cmd) => {
            let (method, path) = match cmd {
                SessionsCommand::List { subject } => (
                    Method::GET,
                    format!("/v1/subjects/{}/sessions", encode(&subject)),
                ),
                SessionsCommand::Revoke { id } => {
                    (Method::DELETE, format!("/v1/sessions/{}", encode(&id)))
                }
                SessionsCommand::RevokeSubject {
                    subject,
                    except,
                    reason,
                } => {
                    let mut query = Vec::new();
                    if let Some(except) = except {
                        query.push(format!("except={}", encode(&except)));
                    }
                    if let Some(reason) = reason {
                        query.push(format!("reason={}", encode(&reason)));
                    }
                    let mut path = format!("/v1/subjects/{}/sessions", encode(&subject));
                    if !query.is_empty() {
                        path = format!("{path}?{}", query.join("&"));
                    }
                    (Method::DELETE, path)
                }
            };
            let (_, body) = admin_call(&config, method, &path, None).await?;
            print_json(&body);
            Ok(())
        }
        Command::Users(cmd) => users_command(&config, cmd).await,
        Command::Apps(cmd) => apps_command(&config, cmd).await,
        Command::Keys(KeysCommand::List) => {
            let (_, keys) = admin_call(&config, Method::GET, "/admin/oidc/keys", None).await?;
            print_json(&keys);
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { alg }) => {
            let body = serde_json::json!({ "alg": alg });
            let (_, key) =
                admin_call(&config, Method::POST, "/admin/oidc/keys/rotate", Some(body)).await?;
            eprintln!(
                "A new {} key signs now: {}. The one it replaced stays published for a day.",
                key["alg"].as_str().unwrap_or("?"),
                key["kid"].as_str().unwrap_or("?"),
            );
            print_json(&key);
            Ok(())
        }
        Command::Deliveries(cmd) => {
            let (method, path) = match cmd {
                DeliveriesCommand::List {
                    state,
                    client,
                    limit,
                } => {
                    let mut query = Vec::new();
                    if let Some(state) = state {
                        query.push(format!("state={}", encode(&state)));
                    }
                    if let Some(client) = client {
                        query.push(format!("client={}", encode(&client)));
                    }
                    if let Some(limit) = limit {
                        query.push(format!("limit={limit}"));
                    }
                    let mut path = "/admin/deliveries".to_owned();
                    if !query.is_empty() {
                        path = format!("{path}?{}", query.join("&"));
                    }
                    (Method::GET, path)
                }
                DeliveriesCommand::Show { session } => (
                    Method::GET,
                    format!("/admin/deliveries/{}", encode(&session)),
                ),
                DeliveriesCommand::Retry { session } => (
                    Method::POST,
                    format!("/admin/deliveries/{}/retry", encode(&session)),
                ),
            };
            let (_, body) = admin_call(&config, method, &path, None).await?;
            print_json(&body);
            Ok(())
        }
        Command::ApiKeys(cmd) => {
            match cmd {
                ApiKeysCommand::Create { app, name } => {
                    let name = name.unwrap_or_else(|| app.clone());
                    let body = serde_json::json!({ "name": name, "application": app });
                    let (_, key) =
                        admin_call(&config, Method::POST, "/admin/api-keys", Some(body)).await?;
                    eprintln!(
                        "Created API key {} ({}) for application {}. Keep this secret now; it is not shown again:",
                        key["id"].as_str().unwrap_or("?"),
                        key["name"].as_str().unwrap_or("?"),
                        key["application"].as_str().unwrap_or("?"),
                    );
                    println!("{}", key["key"].as_str().unwrap_or_default());
                }
                ApiKeysCommand::List => {
                    let (_, keys) =
                        admin_call(&config, Method::GET, "/admin/api-keys", None).await?;
                    print_json(&keys);
                }
                ApiKeysCommand::Revoke { id } => {
                    admin_call(
                        &config,
                        Method::DELETE,
                        &format!("/admin/api-keys/{}", encode(&id)),
                        None,
                    )
                    .await?;
                    eprintln!("Revoked API key {id}.");
                }
            }
            Ok(())
        }
    }
}

async fn apps_command(config: &Config, cmd: AppsCommand) -> Result<()> {
    let path = |app: &str| format!("/admin/applications/{}", encode(app));
    let non_empty = |list: Vec<String>| (!list.is_empty()).then_some(list);
    match cmd {
        AppsCommand::Add {
            name,
            policies,
            default_policy,
            grants,
        } => {
            let body = serde_json::json!({
                "name": name,
                "policies": non_empty(policies),
                "default_policy": default_policy,
                "grants": grants,
            });
            let (_, app) =
                admin_call(config, Method::POST, "/admin/applications", Some(body)).await?;
            eprintln!(
                "Registered application {} ({}). Create its key with: portcullis api-keys create --app {}",
                app["name"].as_str().unwrap_or("?"),
                app["id"].as_str().unwrap_or("?"),
                app["id"].as_str().unwrap_or("?"),
            );
            print_json(&app);
        }
        AppsCommand::List => {
            let (_, apps) = admin_call(config, Method::GET, "/admin/applications", None).await?;
            print_json(&apps);
        }
        AppsCommand::Show { app } => {
            let (_, app) = admin_call(config, Method::GET, &path(&app), None).await?;
            print_json(&app);
        }
        AppsCommand::Update {
            app,
            name,
            policies,
            default_policy,
            grants,
            no_grants,
        } => {
            let grants = if no_grants {
                Some(Vec::new())
            } else {
                non_empty(grants)
            };
            let body = serde_json::json!({
                "name": name,
                "policies": non_empty(policies),
                "default_policy": default_policy,
                "grants": grants,
            });
            let (_, app) = admin_call(config, Method::PATCH, &path(&app), Some(body)).await?;
            print_json(&app);
        }
        AppsCommand::Client {
            app,
            redirect_uris,
            post_logout_redirect_uris,
            auth_method,
            jwks_file,
            scopes,
            grant_types,
            backchannel_logout_uri,
            frontchannel_logout_uri,
            require_consent,
            id_token_alg,
            upstream,
            new_secret,
        } => {
            let jwks = match jwks_file {
                Some(file) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    Some(
                        serde_json::from_str::<serde_json::Value>(&text)
                            .with_context(|| format!("{} is not a JSON JWK Set", file.display()))?,
                    )
                }
                None => None,
            };
            let body = serde_json::json!({
                "token_endpoint_auth_method": auth_method,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "backchannel_logout_uri": backchannel_logout_uri,
                "frontchannel_logout_uri": frontchannel_logout_uri,
                "scopes": non_empty(scopes),
                "grant_types": non_empty(grant_types),
                "require_consent": require_consent,
                "id_token_signed_response_alg": id_token_alg,
                "upstream": upstream,
                "jwks": jwks,
                "new_secret": new_secret,
            });
            let client_path = format!("{}/client", path(&app));
            let (_, app) = admin_call(config, Method::PUT, &client_path, Some(body)).await?;
            if let Some(secret) = app["client"]["client_secret"].as_str() {
                eprintln!(
                    "client_id {} — its secret, shown only now: {secret}",
                    app["client"]["client_id"].as_str().unwrap_or("?")
                );
            }
            print_json(&app);
        }
        AppsCommand::ClientRemove { app } => {
            let client_path = format!("{}/client", path(&app));
            let (_, app) = admin_call(config, Method::DELETE, &client_path, None).await?;
            print_json(&app);
        }
        AppsCommand::Remove { app } => {
            let (_, removed) = admin_call(config, Method::DELETE, &path(&app), None).await?;
            eprintln!(
                "Removed application {}: {} API key(s) revoked, {} session(s) ended.",
                removed["name"].as_str().unwrap_or("?"),
                removed["api_keys_revoked"].as_u64().unwrap_or(0),
                removed["sessions_ended"].as_u64().unwrap_or(0),
            );
        }
    }
    Ok(())
}

async fn users_command(config: &Config, cmd: UsersCommand) -> Result<()> {
    let path = |username: &str| format!("/admin/users/{}", encode(username));
    match cmd {
        UsersCommand::Add { username } => {
            let password = read_password()?;
            let body = serde_json::json!({ "username": username, "password": password });
            let (_, user) = admin_call(config, Method::POST, "/admin/users", Some(body)).await?;
            eprintln!(
                "Added {} ({}).",
                user["username"].as_str().unwrap_or("?"),
                user["id"].as_str().unwrap_or("?")
            );
        }
        UsersCommand::List => {
            let (_, users) = admin_call(config, Method::GET, "/admin/users", None).await?;
            print_json(&users);
        }
        UsersCommand::Disable { username } => {
            let body = serde_json::json!({ "disabled": true });
            let (_, user) = admin_call(config, Method::PATCH, &path(&username), Some(body)).await?;
            eprintln!(
                "Disabled {username}; {} session(s) ended.",
                user["sessions_ended"].as_u64().unwrap_or(0)
            );
        }
        UsersCommand::Enable { username } => {
            let body = serde_json::json!({ "disabled": false });
            admin_call(config, Method::PATCH, &path(&username), Some(body)).await?;
            eprintln!("Enabled {username}.");
        }
        UsersCommand::SetPassword { username } => {
            let password = read_password()?;
            let body = serde_json::json!({ "password": password });
            let (_, user) = admin_call(config, Method::PATCH, &path(&username), Some(body)).await?;
            eprintln!(
                "Set the password of {}; {} session(s) ended.",
                username,
                user["sessions_ended"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// The first line of standard input (so a password never appears in the process list).
fn read_password() -> Result<String> {
    use std::io::BufRead;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("Password (the input is shown; pipe it in to hide it): ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password given on standard input");
    }
    Ok(password)
}

fn print_json(value: &serde_json::Value) {
    if !value.is_null() {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    }
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks the configuration as `serve` would (the TLS files too), and prints what it resolves to.
async fn config_check(config: &Config) -> Result<()> {
    tls_config(config).await?;
    let mut out = String::new();
    // Written at once at the end: a reader that stops early (`| head`) is no error.
    macro_rules! say {
        ($($arg:tt)*) => {{
            let _ = writeln!(out, $($arg)*);
        }};
    }
    say!("configuration is valid");
    say!("listen: {}", config.listen);
    say!("data_dir: {}", config.data_dir.display());
    say!("store: {}", config.store_url()?);
    say!("audit_log: {}", config.audit_log);
    say!("audit_format: {:?}", config.audit_format);
    say!(
        "metrics: from {}{}",
        if config.metrics_allow.is_empty() {
            "no address".to_owned()
        } else {
            config.metrics_allow.join(", ")
        },
        if config.metrics_token.is_some() {
            ", or with the metrics token"
        } else {
            ""
        }
    );
    match config.live_sessions_every() {
        Some(every) => say!(
            "live_sessions_interval: {} (live sessions per application and policy on /metrics)",
            portcullis_core::format_duration(every)
        ),
        None => say!("live_sessions_interval: off"),
    }
    if config.outbound_allow.is_empty() {
        say!("outbound_allow: none (outbound requests reach public addresses only)");
    } else {
        say!(
            "outbound_allow: {} (besides public addresses)",
            config.outbound_allow.join(", ")
        );
    }
    say!(
        "outbound_timeout: {}",
        portcullis_core::format_duration(config.outbound_timeout.0)
    );
    let proxies = config.trusted_proxies();
    if proxies.is_empty() {
        say!("trusted_proxies: none (the TCP peer is the client)");
    } else {
        let nets: Vec<String> = proxies.networks().iter().map(|n| n.to_string()).collect();
        say!(
            "trusted_proxies: {} (they write {}; no other forwarding header is read)",
            nets.join(", "),
            proxies.headers().as_str()
        );
    }
    say!(
        "hsts: {}",
        config.hsts().header_value().to_str().unwrap_or_default()
    );
    for policy in config.policies()?.iter() {
        say!("policy {}:", policy.name);
        if policy.absolute.value == portcullis_core::NO_LIMIT
            || policy.remember_me_absolute.value == portcullis_core::NO_LIMIT
        {
            say!(
                "  warning: no absolute lifetime: a session that keeps being used never has to sign in again (OWASP and SP 800-63B advise a limit)"
            );
        }
        for remember in [false, true] {
            let (idle, absolute) = policy.lifetimes(remember);
            say!("  {}", idle.text);
            say!("  {}", absolute.text);
        }
        say!(
            "  max_sessions {} ({:?}), warn_before {}, reconstitute_window {}, bind {:?}, elevation {}",
            policy.max_sessions.value,
            policy.on_limit.value,
            portcullis_core::format_duration(policy.warn_before.value),
            portcullis_core::format_duration(policy.reconstitute_window.value),
            policy.bind.value,
            portcullis_core::format_duration(policy.elevation.value),
        );
    }
    print_all(&out)
}

/// Writes `text` to standard output; a reader gone before the end (a closed pipe) is not an
/// error of ours.
fn print_all(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

/// The TLS configuration of the listener, read now so that a certificate or key that cannot be
/// used stops the server before it says it listens; `None` without TLS.
async fn tls_config(config: &Config) -> Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot use the TLS certificate {} with the key {}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(tls))
}

/// Everything a router needs, over an opened store. Data of the previous release is adopted
/// here: its API keys move to the `legacy` application, so they keep working. Every store
/// call is timed ([`TimedStore`]).
async fn app_state<S: Store>(
    store: TimedStore<S>,
    backing: AccountBacking,
    config: &Config,
    sink: Arc<dyn AuditSink>,
) -> Result<Services<TimedStore<S>>> {
    let clock = Arc::new(SystemClock);
    let random = Arc::new(OsRandom);
    let mut accounts = Accounts::new(backing.users, clock.clone(), random.clone(), sink.clone())
        .with_throttle(backing.throttle);
    if let Some(keyring) = config.keyring()? {
        accounts = accounts.with_keyring(keyring);
    }
    let unreadable = accounts
        .unreadable_second_factors()
        .await
        .context("cannot read the accounts")?;
    if !unreadable.is_empty() {
        bail!(
            "{} account(s) have a second factor that the configured encryption_keys cannot open (e.g. {}); set encryption_keys (or PORTCULLIS_ENCRYPTION_KEYS) to the key(s) they were sealed with",
            unreadable.len(),
            unreadable[0]
        );
    }
    let engine = Arc::new(
        Engine::new(store, config.policies()?, clock.clone(), random.clone())
            .with_settings(config.engine_settings())
            .with_sink(Arc::clone(&sink)),
    );
    let accounts = accounts.with_trail(engine.clone());
    if let Some(app) = engine
        .adopt_legacy_keys()
        .await
        .context("cannot move the previous release's API keys to an application")?
    {
        tracing::info!(application = %app.id, name = %app.name, "API keys of the previous release now belong to this application; tighten its grants with `portcullis apps update`");
    }
    let accounts = Arc::new(accounts);
    let upstream_stores = (
        backing.provider.identities.clone(),
        backing.provider.replays.clone(),
    );
    let provider = match config.issuer.as_deref() {
        None => None,
        Some(issuer) => {
            let keyring = config.keyring()?.context(
                "the OpenID Connect provider (issuer) needs encryption_keys: its signing keys are sealed with them",
            )?;
            let provider = Provider::start(
                engine.clone(),
                accounts.clone(),
                backing.provider,
                keyring,
                random.clone(),
                ProviderSettings {
                    algs: config.signing_algs()?,
                    ..ProviderSettings::new(issuer)
                },
            )
            .await
            .context("cannot start the OpenID Connect provider")?;
            Some(Arc::new(provider))
        }
    };
    let federation = federation(
        config,
        upstream_stores,
        provider.clone(),
        clock.clone(),
        random.clone(),
    )?;
    Ok(Services {
        engine,
        accounts,
        provider,
        federation,
        ui: Arc::new(Ui::new(UiSettings {
            tls: config.tls_cert.is_some(),
            hsts: config.hsts(),
            theme_dir: config.ui_dir.clone(),
            ..UiSettings::default()
        })),
        metrics: None,
    })
}

/// Calls the admin API: through the running server's socket when one answers, otherwise
/// in-process on the store opened directly. Either way one code path does the work.
///
/// The embedded store has one writer: opening it directly needs its lock
/// ([`StoreLock`]), held until the call is done. When a server holds it but its socket does
/// not answer (a lost socket, another `--data-dir` over the same database), the call is
/// refused and nothing changes.
async fn admin_call(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value)> {
    let socket = config.admin_socket();
    let (status, value) = match AdminClient::connect(&socket).await? {
        Some(mut client) => client.call(method, path, body).await?,
        None => match StoreLock::try_take(config)? {
            Locking::Busy(lock) => match AdminClient::connect(&socket).await? {
                // A server that was starting a moment ago.
                Some(mut client) => client.call(method, path, body).await?,
                None => bail!(
                    "the embedded store is in use by a running portcullis server (it holds {}), but nothing answers on the admin socket {}; nothing was changed. Run the command with that server's --data-dir, or stop the server first",
                    lock.display(),
                    socket.display()
                ),
            },
            Locking::Held(lock) => {
                let answer = in_process_call(config, method, path, body).await;
                drop(lock);
                answer?
            }
            Locking::NotNeeded => in_process_call(config, method, path, body).await?,
        },
    };
    if !status.is_success() {
        bail!(
            "{} ({})",
            value["detail"].as_str().unwrap_or("request failed"),
            value["reason"].as_str().unwrap_or(status.as_str())
        );
    }
    Ok((status, value))
}

/// The admin API in this process, on the store opened directly.
async fn in_process_call(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value)> {
    let sink: Arc<dyn AuditSink> = match config.audit_log.as_str() {
        "stdout" => Arc::new(NoAuditSink),
        other => Arc::new(
            JsonLinesSink::open(other)
                .context("cannot open the audit log")?
                .with_format(config.audit_format),
        ),
    };
    let (opened, users) = open_store(config).await?;
    let router = match opened {
        Opened::Sqlite(store) => admin_router(AppState::new(
            app_state(TimedStore::new(store), users, config, sink).await?,
        )),
        Opened::Memory(store) => admin_router(AppState::new(
            app_state(TimedStore::new(store), users, config, sink).await?,
        )),
        Opened::Postgres(store) => admin_router(AppState::new(
            app_state(TimedStore::new(store), users, config, sink).await?,
        )),
        Opened::Redis(store) => admin_router(AppState::new(
            app_state(TimedStore::new(store), users, config, sink).await?,
        )),
    };
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))?;
    let response = router.oneshot(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

/// The embedded store's single-writer lock: an exclusive `flock` on `<database>.lock`, held by
/// the server for its whole life and by a CLI that opens the store directly while it writes.
/// The kernel lets go of it when its holder exits, even on `kill -9`.
struct StoreLock {
    _file: std::fs::File,
}

enum Locking {
    /// This process holds it now.
    Held(StoreLock),
    /// Another process holds the lock file named.
    Busy(PathBuf),
    /// A shared store (many writers) or memory: nothing to lock.
    NotNeeded,
}

impl StoreLock {
    /// Takes the lock of the configured store if it has one and nobody holds it.
    fn try_take(config: &Config) -> Result<Locking> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = config.store_lock()? else {
            return Ok(Locking::NotNeeded);
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the store's lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Locking::Held(Self { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Locking::Busy(path)),
            Err(std::fs::TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

enum Opened {
    Sqlite(portcullis_store_sqlite::SqliteStore),
    Memory(MemoryStore),
    Postgres(portcullis_store_postgres::PostgresStore),
    Redis(portcullis_store_redis::RedisStore),
}

/// The upstream providers of the configuration, calling out through the outbound policy;
/// `None` when there are none.
fn federation<S: Store>(
    config: &Config,
    (identities, replays): (Arc<dyn IdentityStore>, Arc<dyn ReplayStore>),
    provider: Option<Arc<Provider<S>>>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
) -> Result<Option<Arc<Federation>>> {
    let settings = config.upstream_settings()?;
    if settings.is_empty() {
        return Ok(None);
    }
    let keyring = config
        .keyring()?
        .context("upstream providers need encryption_keys")?;
    let http: Arc<dyn UpstreamHttp> = Arc::new(Outbound::new(
        config.outbound_policy(),
        config.outbound_timeout.0,
    ));
    let upstreams = settings
        .into_iter()
        .map(|(settings, callback)| {
            let id = settings.id.clone();
            let upstream = Upstream::new(settings, &callback, http.clone(), clock.clone())
                .with_context(|| format!("upstreams.{id}"))?;
            Ok(Arc::new(match &provider {
                Some(provider) => {
                    upstream.with_client_assertions(Arc::new(ProviderAssertions(provider.clone())))
                }
                None => upstream,
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Arc::new(Federation::new(
        upstreams, identities, replays, keyring, random,
    ))))
}

/// The accounts, their failure counts and the OpenID Connect provider's entities, in the same
/// backend as the sessions.
struct AccountBacking {
    users: Arc<dyn UserStore>,
    throttle: Arc<dyn ThrottleStore>,
    provider: ProviderStores,
}

impl AccountBacking {
    fn new(users: impl UserStore, throttle: impl ThrottleStore, provider: ProviderStores) -> Self {
        Self {
            users: Arc::new(users),
            throttle: Arc::new(throttle),
            provider,
        }
    }
}

/// The provider's stores of one backend.
macro_rules! provider_stores {
    ($backend:expr) => {{
        let backend = $backend;
        ProviderStores {
            codes: Arc::new(backend.codes()),
            refresh_tokens: Arc::new(backend.refresh_tokens()),
            consents: Arc::new(backend.consents()),
            signing_keys: Arc::new(backend.signing_keys()),
            deliveries: Arc::new(backend.deliveries()),
            replays: Arc::new(backend.replays()),
            identities: Arc::new(backend.identities()),
        }
    }};
}

/// Opens the session store and, in the same backend, the accounts and the sign-in throttle:
/// one place holds them all, so every node behind a shared store sees the same people and
/// counts the same failures.
async fn open_store(config: &Config) -> Result<(Opened, AccountBacking)> {
    Ok(match config.store_url()? {
        StoreUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            let store = portcullis_store_sqlite::open(&path).await?;
            let journal = store.journal();
            let backing = AccountBacking::new(
                journal.users(),
                journal.throttle(),
                provider_stores!(journal),
            );
            (Opened::Sqlite(store), backing)
        }
        StoreUrl::Memory => {
            let store = MemoryStore::new();
            let backing = AccountBacking::new(
                MemoryUserStore::new(),
                MemoryThrottleStore::new(),
                ProviderStores::in_memory(&store),
            );
            (Opened::Memory(store), backing)
        }
        StoreUrl::Postgres(url) => {
            let store = portcullis_store_postgres::PostgresStore::connect_url(&url).await?;
            let backing =
                AccountBacking::new(store.users(), store.throttle(), provider_stores!(&store));
            (Opened::Postgres(store), backing)
        }
        StoreUrl::Redis(url) => {
            let store = portcullis_store_redis::RedisStore::connect(&url).await?;
            let backing =
                AccountBacking::new(store.users(), store.throttle(), provider_stores!(&store));
            (Opened::Redis(store), backing)
        }
    })
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let tls = tls_config(&config).await?;
    create_private_dir(&config.data_dir)?;
    check_private_dir(&config.data_dir)?;
    let socket = config.admin_socket();
    let running = || {
        anyhow::anyhow!(
            "another portcullis server is running with data directory {}",
            config.data_dir.display()
        )
    };
    if server_answers(&socket).await {
        return Err(running());
    }
    // Held until the server has stopped: the embedded store's one writer.
    let started = std::time::Instant::now();
    let _lock = loop {
        match StoreLock::try_take(&config)? {
            Locking::Held(lock) => break Some(lock),
            Locking::NotNeeded => break None,
            // A CLI writes for a moment; another server holds it for good.
            Locking::Busy(_) if server_answers(&socket).await => return Err(running()),
            Locking::Busy(path) if started.elapsed() > std::time::Duration::from_secs(5) => bail!(
                "the embedded store is in use by another portcullis process (it holds {}); stop it first",
                path.display()
            ),
            Locking::Busy(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    let audit = AuditHealth::default();
    let log: Arc<dyn AuditSink> = Arc::new(
        JsonLinesSink::open(&config.audit_log)
            .context("cannot open the audit log")?
            .with_format(config.audit_format)
            .reporting_to(audit.clone()),
    );
    // Credential stuffing and session bursts are watched on the way to the log.
    let sink: Arc<dyn AuditSink> = Arc::new(portcullis_core::event::AnomalySink::new(log));
    let edge = Edge {
        trusted_proxies: config.trusted_proxies(),
        audit,
        metrics: portcullis_http::MetricsAccess {
            allow: portcullis_http::peer::TrustedProxies::parse(
                config.metrics_allow.iter().map(String::as_str),
            )
            .unwrap_or_default(),
            token: config
                .metrics_token
                .as_ref()
                .map(|t| Arc::from(t.0.as_str())),
        },
    };
    // Before the store opens: the store's metric handles are looked up on their first call
    // and kept (`TimedStore`), and a handle taken before the recorder is installed records
    // nothing.
    let recorder = install_metrics_recorder()?;
    let (opened, users) = open_store(&config).await?;
    match opened {
        Opened::Sqlite(store) => {
            let services = app_state(TimedStore::new(store), users, &config, sink).await?;
            run_server(services, &config, edge, recorder, tls).await
        }
        Opened::Memory(store) => {
            let services = app_state(TimedStore::new(store), users, &config, sink).await?;
            run_server(services, &config, edge, recorder, tls).await
        }
        Opened::Postgres(store) => {
            let services = app_state(TimedStore::new(store), users, &config, sink).await?;
            run_server(services, &config, edge, recorder, tls).await
        }
        Opened::Redis(store) => {
            let services = app_state(TimedStore::new(store), users, &config, sink).await?;
            run_server(services, &config, edge, recorder, tls).await
        }
    }
}

/// How long a new connection may take to send its first request.
const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an HTTP/1 connection may take to send a request's headers, waiting for the next
/// request included: longer than the 60 s that load balancers keep an idle connection to a
/// backend by default (nginx, AWS ALB), or one would send a request on a connection this end is
/// closing.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(65);

/// `server` closing connections that send nothing, or their headers a byte at a time
/// (slowloris): without this, each held a socket for as long as the client liked, and enough of
/// them took every file descriptor, `/healthz` included.
fn with_connection_timeouts<A: axum_server::Address, Acceptor>(
    mut server: axum_server::Server<A, Acceptor>,
) -> axum_server::Server<A, Acceptor> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_READ_TIMEOUT);
    server.first_request_timeout(FIRST_REQUEST_TIMEOUT)
}

/// Installs the process's Prometheus recorder: latencies as histograms (Prometheus can
/// aggregate them across nodes).
fn install_metrics_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .context("cannot configure the metrics recorder")?
        // A store call can take microseconds (a validation's lookup in memory), so the
        // store's buckets start lower.
        .set_buckets_for_metric(
            Matcher::Full(timed_store::CALL_SECONDS.into()),
            &[
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .context("cannot configure the metrics recorder")?
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Whether a server of ours answers on `socket`.
async fn server_answers(socket: &Path) -> bool {
    matches!(AdminClient::connect(socket).await, Ok(Some(_)))
}

/// The data directory holds the store and the admin socket, whose permissions are the admin
/// API's only credential: the server refuses to run when group or others may enter it.
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "the data directory {dir} is open to group or others (mode {mode:03o}); it holds the store and the admin socket, so it must be private: run `chmod 700 {dir}`",
            dir = dir.display()
        );
    }
    Ok(())
}

/// Binds the admin socket with its final permissions before anyone can reach it: bound inside a
/// fresh directory only this user can enter, made 0600 there, then renamed into place (which
/// also replaces a stale socket in one step).
fn bind_admin_socket(socket: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Short, so the path fits a socket address wherever `portcullis.sock` does.
    let staging = dir.join(format!(".s{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let bound = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let inside = staging.join("s");
            let listener = tokio::net::UnixListener::bind(&inside)?;
            std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&inside, socket)?;
            Ok(listener)
        });
    let _ = std::fs::remove_dir_all(&staging);
    bound.with_context(|| format!("cannot create the admin socket {}", socket.display()))
}

/// Back-channel logout on every node: each second, the deliveries due are claimed and posted
/// ([`portcullis_oidc::Provider::deliver_logouts`]); a claim lasts long enough for one attempt
/// to time out, so a delivery this node claims and cannot finish (it was killed) goes to
/// another node, or to this one restarted, soon after.
async fn deliver_logouts<S: Store>(
    provider: Arc<portcullis_oidc::Provider<S>>,
    sender: HttpLogoutSender,
    timeout: std::time::Duration,
) {
    let settings = DeliverySettings {
        lease: timeout * 2 + std::time::Duration::from_secs(5),
        ..DeliverySettings::default()
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        if let Err(err) = provider.deliver_logouts(&sender, &settings).await {
            tracing::warn!(error = %err, "back-channel logout deliveries failed; will retry");
        }
        if ticks.is_multiple_of(15) {
            match provider.stores().deliveries.pending_deliveries().await {
                Ok(pending) => {
                    metrics::gauge!("portcullis_logout_deliveries_pending").set(pending as f64);
                }
                Err(err) => tracing::warn!(error = %err, "counting pending deliveries failed"),
            }
        }
        ticks += 1;
    }
}

async fn run_server<S: Store>(
    mut services: Services<TimedStore<S>>,
    config: &Config,
    edge: Edge,
    recorder: metrics_exporter_prometheus::PrometheusHandle,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
) -> Result<()> {
    // Histogram samples wait in the recorder until they are folded into their buckets: on a
    // scrape, or here, so a node nobody scrapes does not keep every store call's sample.
    let upkeep = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                recorder.run_upkeep();
            }
        })
    };
    services.metrics = Some(Arc::new(move || recorder.render()));
    let state = AppState::with_edge(services, edge);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let socket = config.admin_socket();
    let admin = bind_admin_socket(&socket)?;

    let sweeper = {
        let engine = Arc::clone(&state.engine);
        let accounts = Arc::clone(&state.accounts);
        let provider = state.provider.clone();
        let every = config.sweep_interval.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u64 = 0;
            loop {
                let due = tick.tick().await;
                // How late the sweep starts: a busy runtime or a slow last sweep.
                metrics::gauge!("portcullis_sweep_lag_seconds").set(due.elapsed().as_secs_f64());
                ticks += 1;
                // Forgotten failure counts go about once a minute (Redis drops its own).
                let minute = (60_000 / every.as_millis().max(1)).max(1) as u64;
                if ticks.is_multiple_of(minute)
                    && let Err(err) = accounts.throttle().forget_expired(engine.now()).await
                {
                    tracing::warn!(error = %err, "dropping forgotten sign-in failures failed; will retry");
                }
                if ticks.is_multiple_of(minute)
                    && let Some(provider) = &provider
                    && let Err(err) = provider.upkeep().await
                {
                    tracing::warn!(error = %err, "the OpenID Connect provider's upkeep failed; will retry");
                }
                let started = std::time::Instant::now();
                let swept = engine.sweep().await;
                metrics::histogram!("portcullis_sweep_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                if swept.is_err() {
                    metrics::counter!("portcullis_store_errors_total", "op" => "sweep")
                        .increment(1);
                }
                match swept {
                    Ok(report) if report.expired > 0 || report.purged > 0 => {
                        tracing::debug!(expired = report.expired, purged = report.purged, "swept");
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "sweep failed; will retry"),
                }
            }
        })
    };

    let live_counter = config
        .live_sessions_every()
        .map(|every| tokio::spawn(count_live_sessions(Arc::clone(&state.engine), every)));
    let deliverer = state.provider.clone().map(|provider| {
        let sender = HttpLogoutSender::new(config.outbound_policy(), config.outbound_timeout.0);
        tokio::spawn(deliver_logouts(provider, sender, config.outbound_timeout.0))
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let app = api_router(state.clone())
        .into_make_service_with_connect_info::<portcullis_http::peer::Peer>();
    let api = async {
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        let stop = wait(stop_rx.clone());
        tokio::spawn(async move {
            stop.await;
            stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
        });
        let listener = listener.into_std()?;
        match tls {
            Some(tls) => {
                let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle);
                with_connection_timeouts(server)
                    .serve(app)
                    .await
                    .context("the HTTPS server failed")
            }
            None => {
                let server = axum_server::from_tcp(listener)?.handle(handle);
                with_connection_timeouts(server)
                    .serve(app)
                    .await
                    .context("the API server failed")
            }
        }
    };
    let admin_server = axum::serve(admin, admin_router(state.clone()))
        .with_graceful_shutdown(wait(stop_rx.clone()));
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!(
        "portcullis listening on {scheme}://{} (store: {}, admin socket: {})",
        config.listen,
        config.store_url()?,
        socket.display()
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let (a, b) = tokio::join!(api, admin_server);
    a?;
    b.context("the admin socket failed")?;
    sweeper.abort();
    upkeep.abort();
    if let Some(deliverer) = deliverer {
        deliverer.abort();
    }
    if let Some(counter) = live_counter {
        counter.abort();
    }
    if let Err(err) = state.engine.store().flush().await {
        tracing::warn!(error = %err, "could not write the last activity updates");
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Sets `portcullis_live_sessions{application,policy}` every `every` from the store's count
/// (which may walk every live session, so never per scrape). A pair counted last time and not
/// now is set to 0, not left at its old value. A failed count is counted by the store
/// wrapper (`portcullis_store_errors_total{op="live_counts"}`) and leaves the gauges as they
/// were until a count succeeds.
async fn count_live_sessions<S: Store>(
    engine: Arc<Engine<TimedStore<S>>>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: std::collections::HashSet<(portcullis_core::AppId, String)> =
        std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let counts = match engine.store().live_counts().await {
            Ok(counts) => counts,
            Err(err) => {
                tracing::warn!(error = %err, "counting live sessions failed; will retry");
                continue;
            }
        };
        let mut counted = std::collections::HashSet::with_capacity(counts.len());
        for count in counts {
            live_sessions_gauge(&count.application, &count.policy).set(count.sessions as f64);
            counted.insert((count.application, count.policy));
        }
        for (application, policy) in reported.difference(&counted) {
            live_sessions_gauge(application, policy).set(0.0);
        }
        reported = counted;
    }
}

fn live_sessions_gauge(application: &portcullis_core::AppId, policy: &str) -> metrics::Gauge {
    metrics::gauge!(
        "portcullis_live_sessions",
        "application" => application.as_str().to_owned(),
        "policy" => policy.to_owned()
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{
        FIRST_REQUEST_TIMEOUT, HEADER_READ_TIMEOUT, bind_admin_socket, check_private_dir,
        with_connection_timeouts,
    };

    /// Reads until the peer closes; how much it sent. Bounded, so a connection held open fails
    /// the test instead of hanging it.
    async fn until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(600), stream.read(&mut buf))
                .await
                .expect("the server closes the connection");
            match read {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// A connection that sends nothing is closed after `FIRST_REQUEST_TIMEOUT`, and one that
    /// answered a request and then sends nothing (or headers a byte at a time) after
    /// `HEADER_READ_TIMEOUT`: no client holds a socket for as long as it likes. tokio's clock
    /// is paused, and moves to the next timer whenever everything waits.
    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_connections_are_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let server = with_connection_timeouts(axum_server::from_tcp(listener).unwrap());
        tokio::spawn(server.serve(app.into_make_service()));

        let started = tokio::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
        assert!(until_closed(&mut silent).await.is_empty());
        let waited = started.elapsed();
        assert!(
            waited >= FIRST_REQUEST_TIMEOUT && waited < HEADER_READ_TIMEOUT,
            "{waited:?}"
        );

        let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 15];
        slow.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK");
        let started = tokio::time::Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let dripping = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if slow.write_all(b"x").await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(HEADER_READ_TIMEOUT * 2, dripping).await;
        let rest = until_closed(&mut slow).await;
        let waited = started.elapsed();
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "no second answer"
        );
        // Closed at the header timeout; the drip notices within two of its writes.
        assert!(
            waited >= HEADER_READ_TIMEOUT
                && waited <= HEADER_READ_TIMEOUT + Duration::from_secs(20),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn the_admin_socket_is_bound_with_its_final_permissions_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("portcullis.sock");
        std::fs::write(&socket, b"stale").unwrap();
        let _listener = bind_admin_socket(&socket).unwrap();
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["portcullis.sock"], "no staging directory is left");
        tokio::net::UnixStream::connect(&socket).await.unwrap();
    }

    #[test]
    fn a_data_directory_open_to_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(dir.path()).unwrap();
        for mode in [0o750, 0o705, 0o755, 0o777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let err = check_private_dir(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 700 {}", dir.path().display())),
                "{err}"
            );
        }
    }
}
