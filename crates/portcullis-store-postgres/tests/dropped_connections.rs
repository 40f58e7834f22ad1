//! A connection the server ends (a restart, an administrator, a proxy's timeout) while it sits
//! in the pool: sqlx no longer pings a connection used within the last second as it hands it
//! out, so the request that meets it fails, closed, and the pool opens another.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_core::{SessionStore, StoreError};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{plain_insert, random, session_at, t0};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_ended_fails_one_request_closed_and_is_replaced() {
    let url = common::shared_server_url();
    let name = format!(
        "pc_test_{}_dropped_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    let store = PostgresStore::connect_url(&format!(
        "{url}{separator}schema={name}&max_connections=1&application_name={name}"
    ))
    .await
    .unwrap();
    let r = random();
    let (_, ann) = session_at("ann", t0(), &r);
    store.insert(plain_insert(ann.clone())).await.unwrap();

    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(ended, vec![true], "the store's one connection");

    let mut failures = 0;
    let mut found = None;
    for _ in 0..3 {
        match store.find_by_id(&ann.id).await {
            Ok(session) => found = session,
            Err(StoreError::Unavailable(_)) => failures += 1,
            Err(other) => panic!("a dropped connection is unavailable, not {other}"),
        }
    }
    assert!(
        failures <= 1,
        "{failures} requests failed on one dropped connection"
    );
    assert_eq!(found.map(|s| s.id.clone()), Some(ann.id.clone()));
    store.close().await;
    admin.close().await;
}
