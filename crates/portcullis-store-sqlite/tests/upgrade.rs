//! Databases written by earlier releases open: one from before applications existed, whose
//! data then belongs to the previous release's application, `app_legacy`; and one from before
//! the OpenID Connect provider, whose applications are then no clients.

use std::path::Path;
use std::sync::Arc;

use portcullis_core::oidc::{Client, ClientAuth, GrantType};
use std::time::Duration;

use portcullis_core::{
    Actor, ApiKey, ApiKeyStore, ApplicationStore, AuditEvent, Device, EndReason, Ending, Engine,
    EventKind, EventQuery, Grant, ManualClock, PolicySet, PublicId, SeededRandom, SessionStore,
    Token, TokenKind, legacy_app,
};
use portcullis_store_tests::{session_at, t0};
use sqlx::sqlite::SqliteConnectOptions;

/// The migrations of the release before applications, exactly as it shipped them.
const OLD_MIGRATIONS: [&str; 2] = ["20261122000001_sessions.sql", "20261122000002_users.sql"];

/// The migrations of the release before the OpenID Connect provider.
const BEFORE_PROVIDER: [&str; 4] = [
    "20261122000001_sessions.sql",
    "20261122000002_users.sql",
    "20261202000001_applications.sql",
    "20261202000002_throttle.sql",
];

/// A database at `path` with the schema `migrations` make (files of this crate's
/// `migrations/`, which are never edited once released).
async fn migrated_as_released(path: &Path, migrations: &[&str]) -> sqlx::SqlitePool {
    let old = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in migrations {
        std::fs::copy(here.join(name), old.path().join(name)).unwrap();
    }
    let pool = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

/// `value`'s JSON with the `application` field removed, as the previous release wrote it.
fn without_application(value: &impl serde::Serialize) -> String {
    let mut json = serde_json::to_value(value).unwrap();
    json.as_object_mut().unwrap().remove("application");
    json.to_string()
}

/// Creates the previous release's schema at `path` and writes one session (and its event) and
/// one API key the way it wrote them.
async fn write_previous_release(path: &Path, session_body: &str, event_body: &str, key: &ApiKey) {
    let pool = migrated_as_released(path, &OLD_MIGRATIONS).await;
    let session: serde_json::Value = serde_json::from_str(session_body).unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, subject, live, next_deadline, purge_at, body)
         VALUES (?1, ?2, ?3, 1, ?4, NULL, ?5)",
    )
    .bind(session["id"].as_str().unwrap())
    .bind(session["token_hash"].as_str().unwrap())
    .bind(session["subject"].as_str().unwrap())
    .bind(session["absolute"]["at"].as_i64().unwrap())
    .bind(session_body)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (seq, at, kind, subject, session_id, body)
         VALUES (1, ?1, 'session.created', ?2, ?3, ?4)",
    )
    .bind(t0().as_millis())
    .bind(session["subject"].as_str().unwrap())
    .bind(session["id"].as_str().unwrap())
    .bind(event_body)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO api_keys (id, key_hash, body) VALUES (?1, ?2, ?3)")
        .bind(key.id.as_str())
        .bind(key.key_hash.to_hex())
        .bind(without_application(key))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_previous_release_database_opens_and_its_data_is_the_legacy_applications() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let random = SeededRandom::new(3);
    let (token, session) = session_at("alice", t0(), &random);
    let event = AuditEvent::for_session(EventKind::SessionCreated, &session, t0(), &Actor::cli());
    let key_secret = Token::generate(TokenKind::ApiKey, &random);
    let key = ApiKey {
        id: PublicId::from_string("key_old".into()),
        name: "old".into(),
        application: legacy_app(),
        key_hash: key_secret.hash(),
        created_at: t0(),
        revoked_at: None,
    };
    let session_body = without_application(&session);
    assert!(!session_body.contains("application"));
    write_previous_release(&path, &session_body, &without_application(&event), &key).await;

    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    // The records read back as the legacy application's, through the serde defaults.
    let found = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.application, legacy_app());
    let mut expected = session.clone();
    expected.application = legacy_app();
    assert_eq!(*found, expected);
    assert_eq!(store.list_api_keys().await.unwrap(), vec![key.clone()]);
    // The old event was backfilled: found by the legacy application's filter.
    let old_events = store
        .events(&EventQuery {
            application: Some(legacy_app()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(old_events.len(), 1);
    assert_eq!(old_events[0].application, Some(legacy_app()));
    assert_eq!(old_events[0].session_id, Some(session.id.clone()));

    // The upgrade adopts the old keys; the old key then reaches the old session.
    let engine = Engine::new(
        store,
        PolicySet::default(),
        Arc::new(ManualClock::default()),
        Arc::new(SeededRandom::new(4)),
    );
    let adopted = engine.adopt_legacy_keys().await.unwrap().unwrap();
    assert_eq!(adopted.id, legacy_app());
    let principal = engine
        .authenticate_api_key(key_secret.expose())
        .await
        .unwrap()
        .unwrap();
    engine
        .validate(token.expose(), true, &Device::default(), &principal)
        .await
        .unwrap();
    let seen = engine
        .events(
            &EventQuery {
                limit: 10,
                ..Default::default()
            },
            false,
            &principal,
        )
        .await
        .unwrap();
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::SessionCreated, EventKind::ApplicationCreated]
    );
    assert_eq!(seen[1].seq, 2, "positions continue after the old ones");

    // And all of it is still there after reopening.
    engine.store().journal().close().await;
    drop(engine);
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let engine = Engine::new(
        store,
        PolicySet::default(),
        Arc::new(ManualClock::default()),
        Arc::new(SeededRandom::new(5)),
    );
    assert_eq!(engine.list_applications().await.unwrap(), vec![adopted]);
    assert!(engine.adopt_legacy_keys().await.unwrap().is_none());
}

#[tokio::test]
async fn a_database_from_before_the_provider_opens_and_its_applications_are_no_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let pool = migrated_as_released(&path, &BEFORE_PROVIDER).await;
    // The row as the release before the provider wrote it.
    sqlx::query(
        "INSERT INTO applications
           (id, name, policies, default_policy, grants, created_at, version)
         VALUES ('app_shop', 'shop', '[\"*\"]', 'default', '[\"read_all_events\"]', ?1, 3)",
    )
    .bind(t0().as_millis())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let shop = PublicId::from_string("app_shop".into());
    let found = store.find_application(&shop).await.unwrap().unwrap();
    assert_eq!(found.name, "shop");
    assert_eq!(found.grants, [Grant::ReadAllEvents].into());
    assert_eq!(found.version, 3);
    assert_eq!(
        found.client, None,
        "an application of the old release is no client"
    );

    // It can become one, and stays one after reopening.
    let mut registered = found.clone();
    registered.version += 1;
    registered.client = Some(Client {
        auth: ClientAuth::None,
        redirect_uris: vec!["https://shop.example/cb".into()],
        post_logout_redirect_uris: Vec::new(),
        backchannel_logout_uri: None,
        frontchannel_logout_uri: None,
        scopes: ["openid".to_owned()].into(),
        grant_types: [GrantType::AuthorizationCode].into(),
        require_consent: false,
        id_token_signed_response_alg: None,
        upstream: None,
    });
    let event = AuditEvent::for_application(
        EventKind::ApplicationUpdated,
        &shop,
        t0(),
        &Actor::cli(),
        serde_json::json!({}),
    );
    store
        .update_application(found.version, registered.clone(), event)
        .await
        .unwrap()
        .expect("updated");
    store.journal().close().await;
    drop(store);
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    assert_eq!(
        store.find_application(&shop).await.unwrap(),
        Some(registered)
    );
}

/// Every migration of the release before session records.
const BEFORE_RECORDS: [&str; 10] = [
    "20261122000001_sessions.sql",
    "20261122000002_users.sql",
    "20261202000001_applications.sql",
    "20261202000002_throttle.sql",
    "20261203000001_provider.sql",
    "20261204000001_deliveries.sql",
    "20261204000002_replays.sql",
    "20261205000001_identities.sql",
    "20261206000001_upstream_sessions.sql",
    "20261207000001_sessions_without_read_indexes.sql",
];

/// What the row of session `id` holds: whether it has a record, and its JSON body.
async fn session_row(path: &Path, id: &PublicId) -> (bool, String) {
    let pool = sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
        .await
        .unwrap();
    let row: (bool, String) =
        sqlx::query_as("SELECT record IS NOT NULL, body FROM sessions WHERE id = ?1")
            .bind(id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    row
}

#[tokio::test]
async fn a_session_row_from_before_records_is_touched_in_its_json_and_next_written_as_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let pool = migrated_as_released(&path, &BEFORE_RECORDS).await;
    let random = SeededRandom::new(6);
    let (token, session) = session_at("alice", t0(), &random);
    sqlx::query(
        "INSERT INTO sessions (id, token_hash, subject, live, next_deadline, purge_at, body)
         VALUES (?1, ?2, ?3, 1, ?4, NULL, ?5)",
    )
    .bind(session.id.as_str())
    .bind(session.token_hash.to_hex())
    .bind(session.subject.as_str())
    .bind(session.next_deadline().0.as_millis())
    .bind(serde_json::to_string(&session).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // A touch patches the old row's JSON: it keeps no record until it changes.
    let seen = t0().plus(Duration::from_secs(60));
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    store.touch(&session.id, seen).await.unwrap();
    store.flush().await.unwrap();
    store.journal().close().await;
    drop(store);
    let (has_record, body) = session_row(&path, &session.id).await;
    assert!(!has_record);
    assert!(body.contains(&format!("\"last_seen_at\":{}", seen.as_millis())));
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let found = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    let mut touched = session.clone();
    touched.last_seen_at = seen;
    touched.idle.as_mut().unwrap().at = seen.plus(Duration::from_secs(900));
    assert_eq!(*found, touched);

    // Its next change writes it as a record, which reads back the same.
    let ending = Ending {
        reason: EndReason::Logout,
        at: seen,
        actor: Actor::cli(),
        reconstitute_until: None,
        retention: Duration::from_secs(3600),
    };
    store.end(&session.id, ending).await.unwrap();
    let ended = store.find_by_id(&session.id).await.unwrap().unwrap();
    store.journal().close().await;
    drop(store);
    let (has_record, body) = session_row(&path, &session.id).await;
    assert!(has_record);
    assert_eq!(body, "");
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    assert_eq!(store.find_by_id(&session.id).await.unwrap().unwrap(), ended);
}
