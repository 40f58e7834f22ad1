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
