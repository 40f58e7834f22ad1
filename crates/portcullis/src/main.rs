//! `portcullis`: the session server and its admin command line.

mod admin_client;
mod audit;
mod config;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Router;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use portcullis_core::{
    AuditSink, Engine, MemoryStore, NoAuditSink, OsRandom, SessionStore, SystemClock,
};
use portcullis_http::{AppState, admin_router, api_router};
use tower::ServiceExt;

use crate::admin_client::AdminClient;
use crate::audit::JsonLinesSink;
use crate::config::{Config, Overrides, StoreUrl};

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
    },
    /// Manage sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
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
enum ApiKeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
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
    if let Command::Serve { listen, audit_log } = &cli.command {
        overrides.listen = listen.clone();
        overrides.audit_log = audit_log.clone();
    }
    let config =
        Config::load(cli.config.as_deref(), &overrides).context("invalid configuration")?;
    match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Config(ConfigCommand::Check) => config_check(&config),
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
        Command::ApiKeys(cmd) => {
            match cmd {
                ApiKeysCommand::Create { name } => {
                    let body = serde_json::json!({ "name": name });
                    let (_, key) =
                        admin_call(&config, Method::POST, "/admin/api-keys", Some(body)).await?;
                    eprintln!(
                        "Created API key {} ({}). Keep this secret now; it is not shown again:",
                        key["id"].as_str().unwrap_or("?"),
                        key["name"].as_str().unwrap_or("?"),
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

fn config_check(config: &Config) -> Result<()> {
    println!("configuration is valid");
    println!("listen: {}", config.listen);
    println!("data_dir: {}", config.data_dir.display());
    println!("store: {:?}", config.store_url()?);
    println!("audit_log: {}", config.audit_log);
    for policy in config.policies()?.iter() {
        println!("policy {}:", policy.name);
        for remember in [false, true] {
            let (idle, absolute) = policy.lifetimes(remember);
            println!("  {}", idle.text);
            println!("  {}", absolute.text);
        }
        println!(
            "  max_sessions {} ({:?}), warn_before {}, reconstitute_window {}, bind {:?}, elevation {}",
            policy.max_sessions.value,
            policy.on_limit.value,
            portcullis_core::format_duration(policy.warn_before.value),
            portcullis_core::format_duration(policy.reconstitute_window.value),
            policy.bind.value,
            portcullis_core::format_duration(policy.elevation.value),
        );
    }
    Ok(())
}

fn engine<S: SessionStore>(
    store: S,
    config: &Config,
    sink: Arc<dyn AuditSink>,
) -> Result<Engine<S>> {
    Ok(Engine::new(
        store,
        config.policies()?,
        Arc::new(SystemClock),
        Arc::new(OsRandom),
    )
    .with_settings(config.engine_settings())
    .with_sink(sink))
}

/// Calls the admin API: through the running server's socket when one answers, otherwise
/// in-process on the store opened directly. Either way one code path does the work.
async fn admin_call(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value)> {
    let (status, value) =
        if let Some(mut client) = AdminClient::connect(&config.admin_socket()).await {
            client.call(method, path, body).await?
        } else {
            let sink: Arc<dyn AuditSink> = match config.audit_log.as_str() {
                "stdout" => Arc::new(NoAuditSink),
                other => Arc::new(JsonLinesSink::open(other).context("cannot open the audit log")?),
            };
            let router = match open_store(config).await? {
                Opened::Sqlite(store) => local_router(engine(store, config, sink)?),
                Opened::Memory(store) => local_router(engine(store, config, sink)?),
                Opened::Postgres(store) => local_router(engine(store, config, sink)?),
                Opened::Redis(store) => local_router(engine(store, config, sink)?),
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
            (status, value)
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

fn local_router<S: SessionStore>(engine: Engine<S>) -> Router {
    admin_router(AppState {
        engine: Arc::new(engine),
        metrics: None,
    })
}

enum Opened {
    Sqlite(portcullis_store_sqlite::SqliteStore),
    Memory(MemoryStore),
    Postgres(portcullis_store_postgres::PostgresStore),
    Redis(portcullis_store_redis::RedisStore),
}

async fn open_store(config: &Config) -> Result<Opened> {
    Ok(match config.store_url()? {
        StoreUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            Opened::Sqlite(portcullis_store_sqlite::open(&path).await?)
        }
        StoreUrl::Memory => Opened::Memory(MemoryStore::new()),
        StoreUrl::Postgres(url) => {
            Opened::Postgres(portcullis_store_postgres::PostgresStore::connect_url(&url).await?)
        }
        StoreUrl::Redis(url) => {
            Opened::Redis(portcullis_store_redis::RedisStore::connect(&url).await?)
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
    create_private_dir(&config.data_dir)?;
    let socket = config.admin_socket();
    if AdminClient::connect(&socket).await.is_some() {
        bail!(
            "another portcullis server is running with data directory {}",
            config.data_dir.display()
        );
    }
    let sink: Arc<dyn AuditSink> =
        Arc::new(JsonLinesSink::open(&config.audit_log).context("cannot open the audit log")?);
    match open_store(&config).await? {
        Opened::Sqlite(store) => run_server(engine(store, &config, sink)?, &config).await,
        Opened::Memory(store) => run_server(engine(store, &config, sink)?, &config).await,
        Opened::Postgres(store) => run_server(engine(store, &config, sink)?, &config).await,
        Opened::Redis(store) => run_server(engine(store, &config, sink)?, &config).await,
    }
}

async fn run_server<S: SessionStore>(engine: Engine<S>, config: &Config) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let state = AppState {
        engine: Arc::new(engine),
        metrics: Some(Arc::new(move || recorder.render())),
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let socket = config.admin_socket();
    let _ = std::fs::remove_file(&socket);
    let admin = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot create the admin socket {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;

    let sweeper = {
        let engine = Arc::clone(&state.engine);
        let every = config.sweep_interval.0;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match engine.sweep().await {
                    Ok(report) if report.expired > 0 || report.purged > 0 => {
                        tracing::debug!(expired = report.expired, purged = report.purged, "swept");
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "sweep failed; will retry"),
                }
            }
        })
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = axum::serve(listener, api_router(state.clone()))
        .with_graceful_shutdown(wait(stop_rx.clone()));
    let admin_server =
        axum::serve(admin, admin_router(state.clone())).with_graceful_shutdown(wait(stop_rx));
    eprintln!(
        "portcullis listening on http://{} (store: {:?}, admin socket: {})",
        config.listen,
        config.store_url()?,
        socket.display()
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let (a, b) = tokio::join!(api, admin_server);
    a.context("the API server failed")?;
    b.context("the admin socket failed")?;
    sweeper.abort();
    if let Err(err) = state.engine.store().flush().await {
        tracing::warn!(error = %err, "could not write the last activity updates");
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
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
