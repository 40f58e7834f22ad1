//! The sign-in and account pages in a real browser: Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/run.mjs`, against Portcullis served over HTTPS (a
//! self-signed certificate made here) on the embedded SQLite store with a manual clock.
//!
//! The script moves time through a small control server that only this test runs (the
//! server's clock) and Playwright's fake timers (the page's clock): nothing sleeps for a
//! timeout. Screenshots of every page land in `target/browser-artifacts/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::{
    Accounts, Actor, ApplicationChange, AuthContext, Clock, Device, Engine, EventKind, EventQuery,
    ManualClock, NewSession, NoAuditSink, OsRandom, Policy, PolicyOverrides, PolicySet, Principal,
    Timestamp, UserStore,
};
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, Services, api_router};
use serde::Deserialize;
use serde_json::{Value, json};

type Store = portcullis_store_sqlite::SqliteStore;

#[derive(Clone)]
struct Control {
    clock: Arc<ManualClock>,
    engine: Arc<Engine<Store>>,
    accounts: Arc<Accounts>,
}

#[derive(Deserialize)]
struct Advance {
    ms: u64,
}

#[derive(Deserialize)]
struct Username {
    username: String,
}

#[derive(Deserialize)]
struct Secret {
    secret: String,
}

/// The test's own handle on the server: move its clock, add people, read codes and endings.
fn control_router(control: Control) -> Router {
    Router::new()
        .route(
            "/clock/advance",
            post(|State(c): State<Control>, Query(a): Query<Advance>| async move {
                c.clock.advance(Duration::from_millis(a.ms));
                Json(json!({ "now": c.clock_now() }))
            }),
        )
        .route(
            "/users",
            post(|State(c): State<Control>, Json(body): Json<Value>| async move {
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
            }),
        )
        .route(
            "/totp",
            get(|State(c): State<Control>, Query(s): Query<Secret>| async move {
                let code = portcullis_core::account::totp_code(&s.secret, c.clock.now());
                Json(json!({ "code": code }))
            }),
        )
        .route(
            "/sessions",
            get(|State(c): State<Control>, Query(u): Query<Username>| async move {
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
                let ended: Vec<&str> = events
                    .iter()
                    .filter(|e| e.kind == EventKind::SessionEnded)
                    .filter_map(|e| e.reason.map(|r| r.as_str()))
                    .collect();
                Json(json!({
                    "live": live.iter().map(|s| json!({
                        "id": s.id.as_str(),
                        "remember_me": s.remember_me,
                        "reconstituted_from": s.reconstituted_from.as_ref().map(|r| r.as_str().to_owned()),
                        "methods": s.auth.methods,
                        "level": s.auth.level,
                    })).collect::<Vec<_>>(),
                    "ended_reasons": ended,
                }))
            }),
        )
        .route(
            "/app-session",
            post(|State(c): State<Control>, Query(u): Query<Username>| async move {
                // What an application does after it authenticated the person: a session of
                // its own for the person's account id, on its own device.
                let user = c.accounts.by_name(&u.username).await.expect("a test user");
                let shop = match c.engine.application("Shop").await {
                    Ok(app) => app,
                    Err(_) => c
                        .engine
                        .add_application(
                            ApplicationChange {
                                name: Some("Shop".into()),
                                ..ApplicationChange::default()
                            },
                            &Actor::cli(),
                        )
                        .await
                        .expect("registering Shop"),
                };
                let issued = c
                    .engine
                    .create(
                        NewSession {
                            subject: user.id.clone(),
                            auth: AuthContext {
                                methods: vec!["pwd".into()],
                                level: 1,
                            },
                            device: Device {
                                user_agent: Some(
                                    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
                                        .into(),
                                ),
                                ip: Some("192.0.2.7".into()),
                            },
                            ..NewSession::default()
                        },
                        &Principal::application(
                            Arc::new(shop),
                            &portcullis_core::PublicId::from_string("key_control".into()),
                        ),
                    )
                    .await
                    .expect("an application session");
                Json(json!({ "id": issued.session.id.as_str() }))
            }),
        )
        .with_state(control)
}

impl Control {
    fn clock_now(&self) -> i64 {
        self.clock.now().as_millis()
    }
}

fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(Duration::from_secs(120)),
        absolute: Some(Duration::from_secs(30 * 60)),
        remember_me_idle: Some(Duration::from_secs(86_400)),
        remember_me_absolute: Some(Duration::from_secs(7 * 86_400)),
        warn_before: Some(Duration::from_secs(60)),
        elevation: Some(Duration::from_secs(90)),
        ..PolicyOverrides::default()
    };
    PolicySet::new([Policy::resolve("default", &short).unwrap()])
}

async fn serve_https(router: Router, dir: &std::path::Path) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert_path, &key_path)
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum_server::from_tcp_rustls(listener, tls).unwrap();
    tokio::spawn(async move {
        server
            .serve(router.into_make_service_with_connect_info::<portcullis_http::peer::Peer>())
            .await
            .unwrap()
    });
    addr
}

fn artifacts_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
    let store = portcullis_store_sqlite::open(&data.path().join("portcullis.db"))
        .await
        .unwrap();
    let users: Arc<dyn UserStore> = Arc::new(store.journal().users());
    let engine = Arc::new(Engine::new(
        store,
        policies(),
        clock.clone(),
        Arc::new(OsRandom),
    ));
    let accounts = Arc::new(
        Accounts::new(
            users,
            clock.clone(),
            Arc::new(OsRandom),
            Arc::new(NoAuditSink),
        )
        .with_keyring(
            portcullis_core::Keyring::parse(&[portcullis_core::Keyring::generate_entry(
                "test", &OsRandom,
            )])
            .unwrap(),
        )
        .with_trail(engine.clone()),
    );
    let state = AppState::new(Services {
        engine: Arc::clone(&engine),
        accounts: Arc::clone(&accounts),
        ui: Arc::new(Ui::new(UiSettings {
            tls: true,
            ..UiSettings::default()
        })),
        metrics: None,
        provider: None,
        federation: None,
    });
    let addr = serve_https(api_router(state), data.path()).await;
    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr = control_listener.local_addr().unwrap();
    let control = Control {
        clock,
        engine,
        accounts,
    };
    tokio::spawn(async move {
        axum::serve(control_listener, control_router(control))
            .await
            .unwrap()
    });

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/run.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env(
            "PORTCULLIS_URL",
            format!("https://localhost:{}", addr.port()),
        )
        .env("CONTROL_URL", format!("http://{control_addr}"))
        .env("ARTIFACTS", artifacts_dir())
        .env("PROFILE_DIR", data.path().join("chromium-profile"))
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
        "the browser scenarios failed (see the output above)"
    );
    assert!(
        stdout.contains("all browser scenarios passed"),
        "the script did not finish"
    );
}
