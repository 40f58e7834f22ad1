//! The conformance suite against Redis on loopback, each case under its own key prefix.
//! `PORTCULLIS_TEST_REDIS` overrides the server (default: the machine's, 127.0.0.1:6379).

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_store_redis::RedisStore;

static NEXT: AtomicU32 = AtomicU32::new(0);

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Deletes the keys left by earlier test processes that are gone.
async fn clean_old_keys(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run on loopback (see .ci/run)");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("pctest:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let pid = key.split(':').nth(1).unwrap_or("");
        if pid != std::process::id().to_string()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn fresh() -> RedisStore {
    let url =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    CLEANED.get_or_init(|| clean_old_keys(&url)).await;
    let prefix = format!(
        "pctest:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    RedisStore::connect(&format!("{url}?prefix={prefix}"))
        .await
        .expect("Redis must run on loopback (see .ci/run)")
}

portcullis_store_tests::store_conformance!(fresh());
