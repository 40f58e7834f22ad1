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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_store_contract() {
    portcullis_store_tests::provider::code_store_contract(
        std::sync::Arc::new(portcullis_core::oidc::MemoryCodeStore::new()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_store_contract() {
    portcullis_store_tests::provider::signing_key_store_contract(std::sync::Arc::new(
        portcullis_core::oidc::MemorySigningKeyStore::new(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_store_contract() {
    portcullis_store_tests::provider::refresh_token_store_contract(
        std::sync::Arc::new(portcullis_core::oidc::MemoryRefreshTokenStore::new()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_store_contract() {
    portcullis_store_tests::provider::consent_store_contract(std::sync::Arc::new(
        portcullis_core::oidc::MemoryConsentStore::new(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_store_contract() {
    portcullis_store_tests::identities::identity_store_contract(std::sync::Arc::new(
        portcullis_core::oidc::MemoryIdentityStore::new(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_store_contract() {
    let store = MemoryStore::new();
    let deliveries = std::sync::Arc::new(store.journal().deliveries());
    portcullis_store_tests::deliveries::delivery_store_contract(
        std::sync::Arc::new(store),
        deliveries,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_store_contract() {
    portcullis_store_tests::provider::replay_store_contract(
        std::sync::Arc::new(portcullis_core::oidc::MemoryReplayStore::new()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}
