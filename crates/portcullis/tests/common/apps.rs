//! The harness of the browser tests with the example applications (`examples/rp-axum`,
//! `examples/rp-node`): Portcullis in-process over HTTPS (a self-signed certificate made here)
//! on the embedded SQLite store with the provider on and a `ManualClock` started at the real
//! time; a control server for the script (add a person, read their sessions and deliveries,
//! move the clock, sweep, deliver logout tokens); the examples built and started as their own
//! processes and registered as confidential clients with back-channel logout; the script run
//! with `node`. Included with `#[path = "common/apps.rs"] mod apps;` by `two_apps.rs` and
//! `federation_flows.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::oidc::DeliveryQuery;
use portcullis_core::oidc::{Client, ClientAuth, GrantType};
use portcullis_core::{
    Accounts, Actor, ApplicationChange, Clock, Engine, EventKind, EventQuery, Keyring, ManualClock,
    NoAuditSink, OsRandom, Policy, PolicyOverrides, PolicySet, Principal, Timestamp, UserStore,
};
use portcullis_http::oidc::backchannel::{HttpLogoutSender, OutboundPolicy};
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, Services, api_router};
use portcullis_oidc::{DeliverySettings, Provider, ProviderSettings, ProviderStores};
use portcullis_upstream::Federation;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

pub type Store = portcullis_store_sqlite::SqliteStore;

/// How long an example may take to read the provider's discovery and start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/browser-artifacts/<name>`, made if need be.
pub fn artifacts_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("browser-artifacts")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------
// The test's handle on Portcullis.

#[derive(Clone)]
pub struct Control {
    pub engine: Arc<Engine<Store>>,
    pub accounts: Arc<Accounts>,
    pub clock: Arc<ManualClock>,
    pub provider: Arc<Provider<Store>>,
    pub sender: HttpLogoutSender,
}

#[derive(Deserialize)]
struct Advance {
    ms: u64,
}

#[derive(Deserialize)]
pub struct Username {
    pub username: String,
}

/// `POST /users` adds a person; `GET /sessions?username=` lists their live sessions at
/// Portcullis (id, application, parent) and how the ended ones ended; `POST
/// /clock/advance?ms=` moves the clock, `POST /sweep` ends what timed out, `POST /deliver`
/// makes one pass of back-channel logout, and `GET /deliveries?username=` lists the person's
/// deliveries.
pub fn control_router(control: Control) -> Router {
    Router::new()
        .route(
            "/clock/advance",
            post(
                |State(c): State<Control>, Query(a): Query<Advance>| async move {
                    c.clock.advance(Duration::from_millis(a.ms));
                    Json(json!({ "now": c.clock.now().as_millis() }))
                },
            ),
        )
        .route(
            "/sweep",
            post(|State(c): State<Control>| async move {
                let report = c.engine.sweep().await.expect("sweeping");
                Json(json!({ "expired": report.expired }))
            }),
        )
        .route(
            "/deliver",
            post(|State(c): State<Control>| async move {
                let report = c
                    .provider
                    .deliver_logouts(&c.sender, &DeliverySettings::default())
                    .await
                    .expect("delivering");
                Json(json!({
                    "delivered": report.delivered,
                    "retried": report.retried,
                    "failed": report.failed,
                }))
            }),
        )
        .route(
            "/deliveries",
            get(
                |State(c): State<Control>, Query(u): Query<Username>| async move {
                    let user = c.accounts.by_name(&u.username).await.expect("a test user");
                    let all = c
                        .provider
                        .stores()
                        .deliveries
                        .deliveries(&DeliveryQuery {
                            limit: 1000,
                            ..DeliveryQuery::default()
                        })
                        .await
                        .expect("deliveries");
                    Json(Value::Array(
                        all.iter()
                            .filter(|d| d.subject == user.id)
                            .map(|d| {
                                json!({
                                    "session": d.session.as_str(),
                                    "client": d.client.as_str(),
                                    "reason": d.reason.as_str(),
                                    "state": d.state.as_str(),
                                    "attempts": d.attempts,
                                    "last_error": d.last_error,
                                })
                            })
                            .collect(),
                    ))
                },
            ),
        )
        .route(
            "/users",
            post(
                |State(c): State<Control>, Json(body): Json<Value>| async move {
                    let user = c
                        .accounts
                        .add_user(
                            body["username"].as_str().unwrap_or_default(),
                            body["password"].as_str().unwrap_or_default(),
                            &Actor::cli(),
                        )
                        .await
                        .expect("adding a test user");
                    Json(json!({ "id": user.id }))
                },
            ),
        )
        .route(
            "/sessions",
            get(
                |State(c): State<Control>, Query(u): Query<Username>| async move {
                    let user = c.accounts.by_name(&u.username).await.expect("a test user");
                    let operator = Principal::operator();
                    let live = c
                        .engine
                        .list_subject(&user.id, true, &operator)
                        .await
                        .expect("listing");
                    let query = EventQuery {
                        subject: Some(user.id.clone()),
                        limit: 1000,
                        ..EventQuery::default()
                    };
                    let events = c
                        .engine
                        .events(&query, false, &operator)
                        .await
                        .expect("events");
                    let ended: Vec<Value> = events
                        .iter()
                        .filter(|e| e.kind == EventKind::SessionEnded)
                        .map(|e| {
                            json!({
                                "session": e.session_id.as_ref().map(|s| s.as_str().to_owned()),
                                "reason": e.reason.map(|r| r.as_str()),
                            })
                        })
                        .collect();
                    Json(json!({
                        "live": live.iter().map(|s| json!({
                            "id": s.id.as_str(),
                            "application": s.application.as_str(),
                            "parent": s.parent.as_ref().map(|p| p.as_str().to_owned()),
                        })).collect::<Vec<_>>(),
                        "ended": ended,
                    }))
                },
            ),
        )
        .with_state(control)
}

pub async fn serve_https(listener: std::net::TcpListener, router: Router, dir: &Path) -> PathBuf {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert_path, &key_path)
        .await
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
    tokio::spawn(async move {
        server
            .serve(router.into_make_service_with_connect_info::<portcullis_http::peer::Peer>())
            .await
            .unwrap()
    });
    cert_path
}

/// What a federation is made of, for [`Portcullis::start`]'s caller to build one.
pub struct FederationParts<'a> {
    /// Portcullis's issuer (its public URL: the upstreams' callbacks are under it).
    pub issuer: &'a str,
    /// The provider's stores (identities, replays).
    pub stores: &'a ProviderStores,
    /// The keyring (it seals what a browser keeps of a sign-in upstream).
    pub keyring: &'a Keyring,
    /// Portcullis's clock.
    pub clock: Arc<ManualClock>,
    /// Its OpenID Connect provider (its keys sign client assertions, `private_key_jwt`).
    pub provider: &'a Arc<Provider<Store>>,
}

/// Portcullis in-process: HTTPS on a loopback port, SQLite in a temporary directory.
pub struct Portcullis {
    /// `https://localhost:<port>`.
    pub issuer: String,
    /// Its certificate (PEM), for the processes that must trust it.
    pub cert: PathBuf,
    /// What the control server works on.
    pub control: Control,
    /// The federation it was started with, if any.
    pub federation: Option<Arc<Federation>>,
    _data: tempfile::TempDir,
}

impl Portcullis {
    /// Starts Portcullis with the provider on and the federation `federate` makes (if any). A
    /// 30 s idle timeout (the SSO session's too): past it by moving the clock 31 s, which keeps
    /// Portcullis's times within the minute of leeway the applications grant against their own
    /// clocks.
    pub async fn start(
        federate: impl FnOnce(FederationParts<'_>) -> Option<Arc<Federation>>,
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(
            i64::try_from(started).unwrap(),
        )));
        let store = portcullis_store_sqlite::open(&data.path().join("portcullis.db"))
            .await
            .unwrap();
        let users: Arc<dyn UserStore> = Arc::new(store.journal().users());
        let stores = ProviderStores {
            codes: Arc::new(store.journal().codes()),
            refresh_tokens: Arc::new(store.journal().refresh_tokens()),
            consents: Arc::new(store.journal().consents()),
            signing_keys: Arc::new(store.journal().signing_keys()),
            deliveries: Arc::new(store.journal().deliveries()),
            replays: Arc::new(store.journal().replays()),
            identities: Arc::new(store.journal().identities()),
        };
        let short = PolicyOverrides {
            idle: Some(Duration::from_secs(30)),
            ..PolicyOverrides::default()
        };
        let engine = Arc::new(Engine::new(
            store,
            PolicySet::new([Policy::resolve("default", &short).unwrap()]),
            clock.clone(),
            Arc::new(OsRandom),
        ));
        let keyring = Keyring::parse(&[Keyring::generate_entry("test", &OsRandom)]).unwrap();
        let accounts = Arc::new(
            Accounts::new(
                users,
                clock.clone(),
                Arc::new(OsRandom),
                Arc::new(NoAuditSink),
            )
            .with_keyring(keyring.clone())
            .with_trail(engine.clone()),
        );

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let issuer = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let provider = Provider::start(
            engine.clone(),
            accounts.clone(),
            stores.clone(),
            keyring.clone(),
            Arc::new(OsRandom),
            ProviderSettings::new(&issuer),
        )
        .await
        .expect("starting the provider");
        let provider = Arc::new(provider);
        let federation = federate(FederationParts {
            issuer: &issuer,
            stores: &stores,
            keyring: &keyring,
            clock: clock.clone(),
            provider: &provider,
        });
        let state = AppState::new(Services {
            engine: Arc::clone(&engine),
            accounts: Arc::clone(&accounts),
            ui: Arc::new(Ui::new(UiSettings {
                tls: true,
                ..UiSettings::default()
            })),
            metrics: None,
            provider: Some(Arc::clone(&provider)),
            federation: federation.clone(),
        });
        let cert = serve_https(listener, api_router(state), data.path()).await;
        let control = Control {
            engine,
            accounts,
            clock,
            provider,
            // The examples listen on loopback, which only this allow-list lets the sender reach.
            sender: HttpLogoutSender::with_roots(
                OutboundPolicy::parse(["127.0.0.0/8"]).unwrap(),
                Duration::from_secs(5),
                rustls::RootCertStore::empty(),
            ),
        };
        Self {
            issuer,
            cert,
            control,
            federation,
            _data: data,
        }
    }

    /// Serves the control server ([`control_router`] and `more` routes) on a loopback port;
    /// answers its URL.
    pub async fn serve_control(&self, more: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = control_router(self.control.clone()).merge(more);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    }
}

// ---------------------------------------------------------------------------------------
// The example applications as processes.

/// Builds the axum example with the cargo running this test (same target directory, so an
/// up-to-date build costs nothing) and returns its executable, as cargo reports it.
pub async fn build_axum_example() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // What cargo sets for this test's process describes this package, not the build: build
    // scripts (ring's) that watch those names would see them change, and every later build
    // would run them and recompile their dependents again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_for_the_test = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if set_for_the_test {
            command.env_remove(name.as_ref());
        }
    }
    let output = command
        .current_dir(workspace_root())
        .args([
            "build",
            "--locked",
            "-p",
            "portcullis-example-rp-axum",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("running cargo");
    assert!(output.status.success(), "building examples/rp-axum failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == "portcullis-example-rp-axum")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the example's executable")
}

/// Fails unless `npm ci` ran in examples/rp-node.
pub fn assert_node_example_installed() {
    let node_modules = workspace_root().join("examples/rp-node/node_modules");
    assert!(
        node_modules.join("openid-client").is_dir(),
        "run `npm ci` in examples/rp-node first (.ci/run does)"
    );
}

/// A running process (an example application, an identity provider) and what it wrote
/// besides its first line.
pub struct Running {
    pub name: &'static str,
    /// Where it listens (`http://127.0.0.1:<port>`), from its first line.
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    _child: Child,
}

impl Running {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Keeps every line `from` writes in `log`.
fn collect<R: AsyncRead + Unpin + Send + 'static>(from: R, log: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(line);
        }
    });
}

/// Starts an example and waits for its first line, `listening on <url>`.
pub async fn start(name: &'static str, command: Command) -> Running {
    start_until(name, command, "listening on ").await
}

/// Starts a process and waits for its first line, `<said><url>` (the URL is `http://…`).
pub async fn start_until(name: &'static str, mut command: Command, said: &str) -> Running {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let log = Arc::new(Mutex::new(Vec::new()));
    collect(child.stderr.take().unwrap(), Arc::clone(&log));
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(START_TIMEOUT, stdout.next_line()).await;
    let url = match first {
        Ok(Ok(Some(line)))
            if line
                .strip_prefix(said)
                .is_some_and(|u| u.starts_with("http://")) =>
        {
            line[said.len()..].to_owned()
        }
        other => {
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            panic!(
                "{name} did not say where it listens ({other:?}); its output:\n{}",
                log.lock().unwrap().join("\n")
            );
        }
    };
    collect(stdout.into_inner(), Arc::clone(&log));
    Running {
        name,
        url,
        log,
        _child: child,
    }
}

/// The common part of both examples' environment.
pub fn example_env(command: &mut Command, issuer: &str, client_id: &str, secret: &str, name: &str) {
    command
        .env("ISSUER", issuer)
        .env("CLIENT_ID", client_id)
        .env("CLIENT_SECRET", secret)
        .env("LISTEN", "127.0.0.1:0")
        .env("APP_NAME", name)
        .env_remove("BASE_URL")
        .env_remove("COOKIE_PREFIX");
}

/// Adds the application `name` (its id is the client id).
pub async fn add_application(engine: &Engine<Store>, name: &str) -> String {
    engine
        .add_application(
            ApplicationChange {
                name: Some(name.into()),
                ..ApplicationChange::default()
            },
            &Actor::cli(),
        )
        .await
        .expect("adding the application")
        .id
        .as_str()
        .to_owned()
}

/// Registers the application `client_id`, listening at `base`, as a confidential client: the
/// redirect and post-logout redirect URIs the examples use under their base URL, and
/// back-channel logout at its `/backchannel-logout`.
pub async fn register(
    engine: &Engine<Store>,
    client_id: &str,
    secret_hash: ClientAuth,
    base: &str,
) {
    let client = Client {
        auth: secret_hash,
        redirect_uris: vec![format!("{base}/callback")],
        post_logout_redirect_uris: vec![format!("{base}/signed-out")],
        backchannel_logout_uri: Some(format!("{base}/backchannel-logout")),
        frontchannel_logout_uri: None,
        scopes: ["openid", "profile"].map(str::to_owned).into(),
        grant_types: [GrantType::AuthorizationCode].into(),
        require_consent: false,
        id_token_signed_response_alg: None,
        upstream: None,
    };
    engine
        .register_client(client_id, Some(client), &Actor::cli())
        .await
        .expect("registering the client");
}

/// Both example applications, started and registered at Portcullis.
pub struct Apps {
    /// A: the axum example ("Shop (axum)").
    pub a: Running,
    pub client_a: String,
    /// B: the Node example ("Notes (Node)").
    pub b: Running,
    pub client_b: String,
}

impl Apps {
    /// Starts application A (the axum example, built at `axum_example`; it trusts
    /// Portcullis's certificate through `SSL_CERT_FILE`) and B (the Node example, through
    /// `NODE_EXTRA_CA_CERTS`) and registers each as a confidential client with the redirect
    /// URI it printed.
    pub async fn start(portcullis: &Portcullis, axum_example: &Path) -> Self {
        let engine = &portcullis.control.engine;
        let issuer = &portcullis.issuer;
        let cert = &portcullis.cert;

        let client_a = add_application(engine, "Shop").await;
        let secret_a = engine.new_client_secret();
        let mut command = Command::new(axum_example);
        example_env(
            &mut command,
            issuer,
            &client_a,
            secret_a.expose(),
            "Shop (axum)",
        );
        // rustls-native-certs reads the trusted roots from here instead of the system's.
        command
            .env("SSL_CERT_FILE", cert)
            .env_remove("SSL_CERT_DIR");
        let a = start("examples/rp-axum", command).await;
        register(
            engine,
            &client_a,
            ClientAuth::Secret(secret_a.hash()),
            &a.url,
        )
        .await;

        let client_b = add_application(engine, "Notes").await;
        let secret_b = engine.new_client_secret();
        let mut command = Command::new("node");
        command
            .arg("app.mjs")
            .current_dir(workspace_root().join("examples/rp-node"));
        example_env(
            &mut command,
            issuer,
            &client_b,
            secret_b.expose(),
            "Notes (Node)",
        );
        command.env("NODE_EXTRA_CA_CERTS", cert);
        let b = start("examples/rp-node", command).await;
        register(
            engine,
            &client_b,
            ClientAuth::Secret(secret_b.hash()),
            &b.url,
        )
        .await;
        assert_ne!(a.url, b.url, "two loopback ports");
        Self {
            a,
            client_a,
            b,
            client_b,
        }
    }

    /// The script's environment for both applications.
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("APP_A_URL", self.a.url.clone()),
            ("APP_A_CLIENT_ID", self.client_a.clone()),
            ("APP_B_URL", self.b.url.clone()),
            ("APP_B_CLIENT_ID", self.client_b.clone()),
        ]
    }
}

/// Runs `tests/browser/<script>` with `env`, prints its output and then the logs of
/// `processes`, and fails unless it succeeded and its last words were `finished`.
pub async fn run_script(
    script: &str,
    env: &[(&str, String)],
    processes: &[&Running],
    finished: &str,
) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let mut command = Command::new("node");
    command.arg(&script);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .expect("running node (is Node.js installed?)");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    for process in processes {
        println!("--- {} ({}):\n{}", process.name, process.url, process.log());
    }
    assert!(
        output.status.success(),
        "{} failed (see the output above)",
        script.display()
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(finished),
        "the script did not finish"
    );
}
