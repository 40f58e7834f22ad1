//! In-process cost of the engine's hot paths on the memory and SQLite stores, and of tokens.

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_bench::{engine, new_session, principal, register};
use portcullis_core::{Actor, Device, MemoryStore, OsRandom, Token, TokenKind};
use portcullis_http::json::WriteJson;

fn tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("token");
    group.bench_function("generate", |b| {
        b.iter(|| Token::generate(TokenKind::Session, &OsRandom))
    });
    let token = Token::generate(TokenKind::Session, &OsRandom);
    group.bench_function("hash", |b| b.iter(|| std::hint::black_box(&token).hash()));
    group.bench_function("parse+hash", |b| {
        b.iter(|| {
            Token::parse(TokenKind::Session, std::hint::black_box(token.expose())).map(|t| t.hash())
        })
    });
    group.finish();
}

fn on_store<S: portcullis_core::Store>(
    c: &mut Criterion,
    name: &str,
    store: S,
    runtime: &tokio::runtime::Runtime,
) {
    let (engine, _clock) = engine(store);
    let actor = principal();
    let mut group = c.benchmark_group(format!("engine_{name}"));
    let issued = runtime
        .block_on(engine.create(new_session("alice"), &actor))
        .unwrap();
    let token = issued.token.expose().to_owned();
    group.bench_function("validate", |b| {
        b.iter(|| {
            runtime
                .block_on(engine.validate(&token, true, &Device::default(), &actor))
                .unwrap()
        })
    });
    let mut n = 0u64;
    group.bench_function("create", |b| {
        b.iter(|| {
            n += 1;
            runtime
                .block_on(engine.create(new_session(&format!("user{n}")), &actor))
                .unwrap()
        })
    });
    let mut current = runtime
        .block_on(engine.create(new_session("rotating"), &actor))
        .unwrap()
        .token;
    group.bench_function("rotate", |b| {
        b.iter(|| {
            current = runtime
                .block_on(engine.rotate(current.expose(), &actor))
                .unwrap()
                .token;
        })
    });
    group.finish();
}

fn memory(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    on_store(c, "memory", MemoryStore::new(), &runtime);
}

fn sqlite(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(portcullis_store_sqlite::open(&dir.join("bench.db")))
        .unwrap();
    on_store(c, "sqlite", store, &runtime);
    let _ = std::fs::remove_dir_all(dir);
}

fn wire(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (engine, _clock) = engine(MemoryStore::new());
    let actor = principal();
    let mut request = new_session("alice");
    request.data = serde_json::json!({"cart": [1, 2, 3]});
    let issued = runtime.block_on(engine.create(request, &actor)).unwrap();
    let validated = runtime
        .block_on(engine.validate(issued.token.expose(), false, &Device::default(), &actor))
        .unwrap();
    let now = engine.now();
    c.bench_function("wire/validated_view_json", |b| {
        b.iter(|| {
            let mut body = Vec::with_capacity(1024);
            portcullis_http::wire::ValidatedView::of(std::hint::black_box(&validated), now)
                .write_json(&mut body)
                .unwrap();
            body
        })
    });
    c.bench_function("wire/rfc3339", |b| {
        b.iter(|| portcullis_http::wire::rfc3339(std::hint::black_box(now)))
    });
}

/// The whole API router in process (no sockets): what one `POST /v1/sessions/validate` costs in
/// the HTTP layer (API key, JSON in and out, headers), next to a router that only answers "ok".
fn router(c: &mut Criterion) {
    use axum::body::Body;
    use tower::ServiceExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (engine, clock) = engine(MemoryStore::new());
    let engine = std::sync::Arc::new(engine);
    let actor = principal();
    let (key, _) = runtime
        .block_on(async {
            register(&engine).await;
            engine.create_api_key("bench", "bench", &Actor::cli()).await
        })
        .unwrap();
    let mut request = new_session("alice");
    request.data = serde_json::json!({"cart": [1, 2, 3]});
    let issued = runtime.block_on(engine.create(request, &actor)).unwrap();
    let accounts = portcullis_core::Accounts::new(
        std::sync::Arc::new(portcullis_core::MemoryUserStore::new()),
        clock,
        std::sync::Arc::new(OsRandom),
        std::sync::Arc::new(portcullis_core::NoAuditSink),
    );
    let app =
        portcullis_http::api_router(portcullis_http::AppState::new(portcullis_http::Services {
            engine,
            accounts: std::sync::Arc::new(accounts),
            ui: std::sync::Arc::new(portcullis_http::ui::web::Ui::new(Default::default())),
            metrics: None,
            provider: None,
            federation: None,
        }));
    let body = format!(r#"{{"token":"{}"}}"#, issued.token.expose());
    let authorization = format!("Bearer {}", key.expose());
    let validate = || {
        axum::http::Request::post("/v1/sessions/validate")
            .header("content-type", "application/json")
            .header("authorization", &authorization)
            .body(Body::from(body.clone()))
            .unwrap()
    };
    let answer = runtime.block_on(app.clone().oneshot(validate())).unwrap();
    assert_eq!(answer.status(), 200);
    c.bench_function("router/validate", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let answer = app.clone().oneshot(validate()).await.unwrap();
                axum::body::to_bytes(answer.into_body(), usize::MAX)
                    .await
                    .unwrap()
            })
        })
    });
    let ok = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    c.bench_function("router/ok", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let answer = ok
                    .clone()
                    .oneshot(axum::http::Request::get("/").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                axum::body::to_bytes(answer.into_body(), usize::MAX)
                    .await
                    .unwrap()
            })
        })
    });
}

criterion_group!(benches, tokens, memory, sqlite, wire, router);
criterion_main!(benches);
