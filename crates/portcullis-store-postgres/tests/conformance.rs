//! The conformance suite against PostgreSQL on loopback, each case in its own schema.
//! `PORTCULLIS_TEST_POSTGRES` overrides the server (default: the machine's, trust auth).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_store_postgres::PostgresStore;

static NEXT: AtomicU32 = AtomicU32::new(0);

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Drops the schemas left by earlier test processes that are gone.
async fn clean_old_schemas(url: &str) {
    let pool = sqlx::PgPool::connect(url)
        .await
        .expect("PostgreSQL must run on loopback (see .ci/run)");
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pc_test_%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (schema,) in rows {
        let pid = schema
            .trim_start_matches("pc_test_")
            .split('_')
            .next()
            .unwrap_or("");
        if pid != std::process::id().to_string()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        }
    }
    pool.close().await;
}

async fn fresh() -> PostgresStore {
    let url = common::shared_server_url();
    CLEANED.get_or_init(|| clean_old_schemas(&url)).await;
    let schema = format!(
        "pc_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    PostgresStore::connect(&url, Some(&schema))
        .await
        .expect("PostgreSQL must run on loopback (see .ci/run)")
}

portcullis_store_tests::store_conformance!(fresh());

#[tokio::test]
async fn user_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::users::user_store_contract(std::sync::Arc::new(store.users())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::throttle::throttle_store_contract(
        std::sync::Arc::new(store.throttle()),
        portcullis_store_tests::throttle::Expiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::code_store_contract(
        std::sync::Arc::new(store.codes()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_store_contract() {
    // A fresh schema holds no keys, as the contract needs.
    let store = fresh().await;
    portcullis_store_tests::provider::signing_key_store_contract(std::sync::Arc::new(
        store.signing_keys(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::refresh_token_store_contract(
        std::sync::Arc::new(store.refresh_tokens()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::consent_store_contract(std::sync::Arc::new(store.consents()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::identities::identity_store_contract(std::sync::Arc::new(
        store.identities(),
    ))
    .await;
}

/// Ending a family while its token is being rotated on another node leaves no token of it: the
/// ending waits for the rotation in flight and removes its successor too, or the rotation finds
/// the family gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ending_racing_a_rotation_leaves_no_successor() {
    use std::time::Duration;

    use portcullis_core::oidc::{RefreshToken, RefreshTokenStore, Rotation};
    use portcullis_core::{PublicId, RandomSource, SeededRandom, TokenHash};
    use portcullis_store_tests::t0;

    let tokens = std::sync::Arc::new(fresh().await.refresh_tokens());
    let random = SeededRandom::new(21);
    let token = |family: &PublicId| {
        let mut hash = [0u8; 32];
        random.fill(&mut hash);
        RefreshToken {
            hash: TokenHash(hash),
            family: family.clone(),
            client: PublicId::from_string("app_rp".into()),
            subject: "usr_a".into(),
            scopes: vec!["openid".into()],
            issued_at: t0(),
            expires_at: t0().plus(Duration::from_secs(3600)),
            rotated: None,
        }
    };
    let mut rotated = 0;
    for _ in 0..40 {
        let family = PublicId::generate("ses_", &random);
        let first = token(&family);
        let next = token(&family);
        tokens.add_refresh_token(first.clone()).await.unwrap();
        let rotation = {
            let tokens = tokens.clone();
            let (hash, next) = (first.hash, next.clone());
            tokio::spawn(async move { tokens.rotate_refresh_token(&hash, next, "s".into()).await })
        };
        let ending = {
            let tokens = tokens.clone();
            let family = family.clone();
            tokio::spawn(async move { tokens.end_refresh_family(&family).await })
        };
        let rotation = rotation.await.unwrap().unwrap();
        ending.await.unwrap().unwrap();
        rotated += usize::from(matches!(rotation, Rotation::Rotated(_)));
        assert!(!matches!(rotation, Rotation::AlreadyRotated(_)));
        for hash in [first.hash, next.hash] {
            assert_eq!(tokens.refresh_token(&hash).await.unwrap(), None);
        }
    }
    // Which side won varies from run to run; both orders must leave nothing.
    eprintln!("{rotated} of 40 rotations went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_store_contract() {
    let store = fresh().await;
    let deliveries = std::sync::Arc::new(store.deliveries());
    portcullis_store_tests::deliveries::delivery_store_contract(
        std::sync::Arc::new(store),
        deliveries,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::replay_store_contract(
        std::sync::Arc::new(store.replays()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}
