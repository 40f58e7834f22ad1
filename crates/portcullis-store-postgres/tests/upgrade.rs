//! Schemas written by earlier releases migrate: the release before applications existed (what
//! it holds belongs to its application, `app_legacy`), and the release before the OpenID
//! Connect provider (its applications are not clients).

mod common;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use portcullis_core::oidc::{Client, ClientAuth, GrantType, SigningKeyStore};
use portcullis_core::{
    Actor, ApiKey, ApiKeyStore, ApplicationStore, AuditEvent, Device, Engine, EventKind,
    EventQuery, Grant, ManualClock, PolicySet, PublicId, SeededRandom, SessionStore, Token,
    TokenHash, TokenKind, legacy_app,
};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{application, session_at, t0};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations of the previous release, exactly as it shipped them.
const OLD_MIGRATIONS: [&str; 2] = ["20261122000001_sessions.sql", "20261122000002_users.sql"];

/// The migrations of the release before the OpenID Connect provider.
const BEFORE_PROVIDER: [&str; 4] = [
    "20261122000001_sessions.sql",
    "20261122000002_users.sql",
    "20261202000001_applications.sql",
    "20261202000002_throttle.sql",
];

/// `value`'s JSON with the `application` field removed, as the previous release wrote it.
fn without_application(mut json: serde_json::Value) -> String {
    json.as_object_mut().unwrap().remove("application");
    json.to_string()
}

/// An empty schema `pc_test_<pid>_<name>`: named like the conformance schemas, so a later run
/// drops it once this process is gone.
async fn empty_schema(name: &str) -> (String, PgConnectOptions) {
    let schema = format!("pc_test_{}_{name}", std::process::id());
    let options = PgConnectOptions::from_str(&common::shared_server_url()).unwrap();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .expect("PostgreSQL must run on loopback (see .ci/run)");
    for sql in [
        format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        format!("CREATE SCHEMA \"{schema}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
    (schema, options)
}

/// A pool inside `schema`, migrated with exactly the migrations `names` (as a release that
/// shipped only those left it).
async fn migrated_by(names: &[&str], options: &PgConnectOptions, schema: &str) -> PgPool {
    let old = tempfile::tempdir().unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in names {
        std::fs::copy(here.join(name), old.path().join(name)).unwrap();
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().options([("search_path", schema)]))
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

#[tokio::test]
async fn a_previous_release_schema_migrates_and_its_data_is_the_legacy_applications() {
    let (schema, options) = empty_schema("upgrade").await;

    // The previous release's schema, and a session, its event and an API key as it wrote them.
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
    {
        let pool = migrated_by(&OLD_MIGRATIONS, &options, &schema).await;
        sqlx::query(
            "INSERT INTO pc_sessions (id, token_hash, subject, policy, parent, live, created_at,
                last_seen_at, idle_at, next_deadline, tomb_until, purge_at, body)
             VALUES ($1, $2, $3, $4, NULL, TRUE, $5, $5, $6, $6, NULL, NULL, $7)",
        )
        .bind(session.id.as_str())
        .bind(&session.token_hash.0[..])
        .bind(&session.subject)
        .bind(&session.policy)
        .bind(session.created_at.as_millis())
        .bind(session.idle.as_ref().unwrap().at.as_millis())
        .bind(without_application(serde_json::to_value(&session).unwrap()))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO pc_events (at, kind, subject, session_id, body)
             VALUES ($1, 'session.created', $2, $3, $4)",
        )
        .bind(t0().as_millis())
        .bind(&session.subject)
        .bind(session.id.as_str())
        .bind(without_application(serde_json::to_value(&event).unwrap()))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO pc_api_keys (id, key_hash, body) VALUES ($1, $2, $3)")
            .bind(key.id.as_str())
            .bind(&key.key_hash.0[..])
            .bind(without_application(serde_json::to_value(&key).unwrap()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    let store = PostgresStore::connect(&common::shared_server_url(), Some(&schema))
        .await
        .unwrap();
    let found = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    let mut expected = session.clone();
    expected.application = legacy_app();
    assert_eq!(*found, expected);
    // The new column was backfilled: the old session is found as the legacy application's.
    let legacy_sessions = store.application_sessions(&legacy_app(), 10).await.unwrap();
    assert_eq!(legacy_sessions.len(), 1);
    assert_eq!(legacy_sessions[0].id, session.id);
    assert_eq!(store.list_api_keys().await.unwrap(), vec![key.clone()]);
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
    assert!(store.list_applications().await.unwrap().is_empty());

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
    let rotated = engine.rotate(token.expose(), &principal).await.unwrap();
    assert_eq!(rotated.session.application, legacy_app());
    engine
        .validate(rotated.token.expose(), true, &Device::default(), &principal)
        .await
        .unwrap();
    assert_eq!(
        engine.list_applications().await.unwrap(),
        vec![adopted.clone()]
    );
    assert!(engine.adopt_legacy_keys().await.unwrap().is_none());
    engine.store().close().await;
}

#[tokio::test]
async fn applications_of_the_release_before_the_provider_are_no_clients_and_can_become_one() {
    let (schema, options) = empty_schema("upgrade_provider").await;
    let mut app = application("shop");
    app.grants = Grant::ALL.into_iter().collect();
    {
        let pool = migrated_by(&BEFORE_PROVIDER, &options, &schema).await;
        // As that release wrote it: no client column.
        sqlx::query(
            "INSERT INTO pc_applications (id, name, policies, default_policy, grants, created_at,
                version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(app.id.as_str())
        .bind(&app.name)
        .bind(&app.policies)
        .bind(&app.default_policy)
        .bind(app.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>())
        .bind(app.created_at.as_millis())
        .bind(i64::try_from(app.version).unwrap())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }

    let store = PostgresStore::connect(&common::shared_server_url(), Some(&schema))
        .await
        .unwrap();
    assert_eq!(
        store.find_application(&app.id).await.unwrap(),
        Some(app.clone()),
        "read back as it was, not a client"
    );
    assert!(
        store
            .signing_keys()
            .signing_keys()
            .await
            .unwrap()
            .is_empty()
    );

    let mut client = app.clone();
    client.version += 1;
    client.client = Some(Client {
        auth: ClientAuth::Secret(TokenHash([5; 32])),
        redirect_uris: vec!["https://shop.example/cb".into()],
        post_logout_redirect_uris: Vec::new(),
        backchannel_logout_uri: None,
        frontchannel_logout_uri: None,
        scopes: ["openid".to_owned()].into(),
        grant_types: [GrantType::AuthorizationCode].into(),
        require_consent: true,
        id_token_signed_response_alg: None,
        upstream: None,
    });
    let event = AuditEvent::for_application(
        EventKind::ApplicationUpdated,
        &app.id,
        t0(),
        &Actor::cli(),
        serde_json::json!({}),
    );
    store
        .update_application(app.version, client.clone(), event)
        .await
        .unwrap()
        .expect("updated");
    assert_eq!(store.list_applications().await.unwrap(), vec![client]);
    store.close().await;
}
