//! The OpenID Connect provider against a relying party nobody here wrote: `openid-client`
//! (certified, by panva), driven from `tests/browser/oidc.mjs`, with Debian's `chromium`
//! (through `playwright-core`) as the person's browser. Portcullis is served over HTTPS (a
//! self-signed certificate made here) on the embedded SQLite store with a manual clock and
//! the provider on.
//!
//! The redirect URI of every client is `http://127.0.0.1:<port>/callback` on the test's
//! control server (loopback `http`, RFC 8252 §7.3), which also moves the server's clock and
//! reports a person's sessions. Nothing sleeps for a timeout. Screenshots land in
//! `target/browser-artifacts/oidc/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::oidc::{Client, ClientAuth, GrantType, SigningAlg};
use portcullis_core::{
    Accounts, Actor, ApplicationChange, Clock, Engine, EventKind, EventQuery, Keyring, ManualClock,
    NoAuditSink, OsRandom, Policy, PolicyOverrides, PolicySet, Principal, Timestamp, UserStore,
};
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, Services, api_router};
use portcullis_oidc::{Provider, ProviderSettings, ProviderStores};
use serde::Deserialize;
use serde_json::{Value, json};

type Store = portcullis_store_sqlite::SqliteStore;

#[derive(Clone)]
struct Control {
    clock: Arc<ManualClock>,
    engine: Arc<Engine<Store>>,
    accounts: Arc<Accounts>,
    /// The query of every front-channel logout page a browser loaded.
    frontchannel: Arc<std::sync::Mutex<Vec<Value>>>,
}

#[derive(Deserialize)]
struct Advance {
    ms: u64,
}

#[derive(Deserialize)]
struct Username {
    username: String,
}

/// The test's own handle on the server (move its clock, add people, read their sessions and
/// how they ended) and the clients' callback page.
fn control_router(control: Control) -> Router {
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
                    let events = c
                        .engine
                        .events(
                            &EventQuery {
                                subject: Some(user.id.clone()),
                                limit: 1000,
                                ..EventQuery::default()
                            },
                            false,
                            &operator,
                        )
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
        .route(
            "/frontchannel",
            get(
                |State(c): State<Control>,
                 Query(query): Query<std::collections::BTreeMap<String, String>>| async move {
                    c.frontchannel.lock().unwrap().push(json!(query));
                    Html("<!doctype html><title>Front-channel logout</title>")
                },
            ),
        )
        .route(
            "/frontchannel/hits",
            get(|State(c): State<Control>| async move {
                Json(Value::Array(c.frontchannel.lock().unwrap().clone()))
            }),
        )
        .route(
            "/signed-out",
            get(|| async {
                Html(
                    "<!doctype html><html lang=en><title>Signed out</title>\
                     <main><h1>Signed out at the client</h1></main></html>",
                )
            }),
        )
        .route(
            "/callback",
            get(|| async {
                Html(
                    "<!doctype html><html lang=en><title>Callback</title>\
                     <main><h1>Back at the client</h1></main></html>",
                )
            }),
        )
        .with_state(control)
}

fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(Duration::from_secs(30 * 60)),
        absolute: Some(Duration::from_secs(8 * 3600)),
        remember_me_idle: Some(Duration::from_secs(86_400)),
        remember_me_absolute: Some(Duration::from_secs(7 * 86_400)),
        ..PolicyOverrides::default()
    };
    PolicySet::new([Policy::resolve("default", &short).unwrap()])
}

async fn serve_https(
    listener: std::net::TcpListener,
    router: Router,
    dir: &std::path::Path,
) -> PathBuf {
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

fn artifacts_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("browser-artifacts")
        .join("oidc");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Registers the application `name` as a client redirecting to `redirect_uri`.
async fn register(
    engine: &Engine<Store>,
    name: &str,
    auth: ClientAuth,
    redirect_uri: &str,
    require_consent: bool,
    id_token_signed_response_alg: Option<SigningAlg>,
) -> String {
    let app = engine
        .add_application(
            ApplicationChange {
                name: Some(name.into()),
                ..ApplicationChange::default()
            },
            &Actor::cli(),
        )
        .await
        .expect("adding the application");
    let client = Client {
        auth,
        redirect_uris: vec![redirect_uri.to_owned()],
        // Where RP-initiated logout returns to, and the page framed at sign-out: beside the
        // callback, on the client's own site.
        post_logout_redirect_uris: vec![redirect_uri.replace("/callback", "/signed-out")],
        backchannel_logout_uri: None,
        frontchannel_logout_uri: Some(format!(
            "{}?client={}",
            redirect_uri.replace("/callback", "/frontchannel"),
            name.replace(' ', "-")
        )),
        scopes: ["openid", "profile", "offline_access"]
            .map(str::to_owned)
            .into(),
        grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
        require_consent,
        id_token_signed_response_alg,
        upstream: None,
    };
    engine
        .register_client(app.id.as_str(), Some(client), &Actor::cli())
        .await
        .expect("registering the client");
    app.id.as_str().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_and_chromium() {
    let data = tempfile::tempdir().unwrap();
    // The server's clock starts at the real time: the relying party checks `iat` and `exp`
    // against its own clock (and tolerates the few seconds the test moves it ahead).
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
    let engine = Arc::new(Engine::new(
        store,
        policies(),
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
        stores,
        keyring,
        Arc::new(OsRandom),
        ProviderSettings {
            algs: vec![SigningAlg::Es256, SigningAlg::Rs256],
            ..ProviderSettings::new(&issuer)
        },
    )
    .await
    .expect("starting the provider");

    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr: SocketAddr = control_listener.local_addr().unwrap();
    let redirect_uri = format!("http://{control_addr}/callback");
    let secret = engine.new_client_secret();
    let confidential = register(
        &engine,
        "Notes",
        ClientAuth::Secret(secret.hash()),
        &redirect_uri,
        false,
        None,
    )
    .await;
    // A client that verifies RS256 only (`id_token_signed_response_alg`).
    let public = register(
        &engine,
        "Notes SPA",
        ClientAuth::None,
        &redirect_uri,
        false,
        Some(SigningAlg::Rs256),
    )
    .await;
    let third_party_secret = engine.new_client_secret();
    let third_party = register(
        &engine,
        "Photo Printer",
        ClientAuth::Secret(third_party_secret.hash()),
        &redirect_uri,
        true,
        None,
    )
    .await;

    let state = AppState::new(Services {
        engine: Arc::clone(&engine),
        accounts: Arc::clone(&accounts),
        ui: Arc::new(Ui::new(UiSettings {
            tls: true,
            ..UiSettings::default()
        })),
        metrics: None,
        provider: Some(Arc::new(provider)),
        federation: None,
    });
    let cert = serve_https(listener, api_router(state), data.path()).await;
    let control = Control {
        clock,
        engine,
        accounts,
        frontchannel: Arc::default(),
    };
    tokio::spawn(async move {
        axum::serve(control_listener, control_router(control))
            .await
            .unwrap()
    });

    let clients = json!({
        "confidential": { "client_id": confidential, "client_secret": secret.expose() },
        "public": { "client_id": public },
        "third_party": { "client_id": third_party, "client_secret": third_party_secret.expose() },
        "redirect_uri": redirect_uri,
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/oidc.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("PORTCULLIS_URL", &issuer)
        .env("CONTROL_URL", format!("http://{control_addr}"))
        .env("CLIENTS", clients.to_string())
        // openid-client (Node's fetch) trusts the self-signed certificate, and only here.
        .env("NODE_EXTRA_CA_CERTS", &cert)
        .env("ARTIFACTS", artifacts_dir())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the OpenID Connect scenarios failed (see the output above)"
    );
    assert!(
        stdout.contains("all OpenID Connect scenarios passed"),
        "the script did not finish"
    );
}
