//! The conformance suite against PostgreSQL on loopback, each case in its own schema.
//! `PORTCULLIS_TEST_POSTGRES` overrides the server (default: the machine's, trust auth).

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
    let url = std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
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
