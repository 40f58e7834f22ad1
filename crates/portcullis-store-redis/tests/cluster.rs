//! The conformance suite against a Redis Cluster on loopback (three primaries, three replicas;
//! `scripts/redis-cluster.sh start`), each case under its own key prefix.
//! `PORTCULLIS_TEST_REDIS_CLUSTER` overrides the nodes.

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_store_redis::RedisStore;

static NEXT: AtomicU32 = AtomicU32::new(0);

async fn fresh() -> RedisStore {
    let nodes = std::env::var("PORTCULLIS_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102".into());
    let prefix = format!(
        "pctest:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    RedisStore::connect(&format!("redis+cluster://{nodes}?prefix={prefix}"))
        .await
        .expect("a Redis Cluster must run on loopback: scripts/redis-cluster.sh start")
}

portcullis_store_tests::store_conformance!(fresh());

#[tokio::test]
async fn user_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::users::user_store_contract(std::sync::Arc::new(store.users())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::throttle::throttle_store_contract(
        std::sync::Arc::new(store.throttle()),
        portcullis_store_tests::throttle::Expiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::provider::code_store_contract(
        std::sync::Arc::new(store.codes()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::provider::signing_key_store_contract(std::sync::Arc::new(
        store.signing_keys(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::provider::refresh_token_store_contract(
        std::sync::Arc::new(store.refresh_tokens()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::provider::consent_store_contract(std::sync::Arc::new(store.consents()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::identities::identity_store_contract(std::sync::Arc::new(
        store.identities(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_store_contract_on_cluster() {
    let store = fresh().await;
    let deliveries = std::sync::Arc::new(store.deliveries());
    portcullis_store_tests::deliveries::delivery_store_contract(
        std::sync::Arc::new(store),
        deliveries,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_store_contract_on_cluster() {
    let store = fresh().await;
    portcullis_store_tests::provider::replay_store_contract(
        std::sync::Arc::new(store.replays()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}
