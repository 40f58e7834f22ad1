//! The conformance suite against the in-memory store.

use portcullis_core::MemoryStore;

portcullis_store_tests::store_conformance!(async { MemoryStore::new() });

#[tokio::test]
async fn user_store_contract() {
    portcullis_store_tests::users::user_store_contract(std::sync::Arc::new(
        portcullis_core::MemoryUserStore::new(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_store_contract() {
    portcullis_store_tests::throttle::throttle_store_contract(
        std::sync::Arc::new(portcullis_core::MemoryThrottleStore::new()),
        portcullis_store_tests::throttle::Expiry::Swept,
    )
    .await;
}
