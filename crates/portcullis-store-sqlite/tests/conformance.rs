//! The conformance suite against the SQLite store, each case on its own database file.

use portcullis_store_sqlite::SqliteStore;

async fn fresh() -> SqliteStore {
    // The directory is leaked on purpose: it must outlive the store inside the test.
    let dir = tempfile::tempdir().unwrap().keep();
    portcullis_store_sqlite::open(&dir.join("portcullis.db"))
        .await
        .unwrap()
}

portcullis_store_tests::store_conformance!(fresh());

#[tokio::test]
async fn user_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::users::user_store_contract(std::sync::Arc::new(
        store.journal().users(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::throttle::throttle_store_contract(
        std::sync::Arc::new(store.journal().throttle()),
        portcullis_store_tests::throttle::Expiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::code_store_contract(
        std::sync::Arc::new(store.journal().codes()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::signing_key_store_contract(std::sync::Arc::new(
        store.journal().signing_keys(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::refresh_token_store_contract(
        std::sync::Arc::new(store.journal().refresh_tokens()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::consent_store_contract(std::sync::Arc::new(
        store.journal().consents(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::identities::identity_store_contract(std::sync::Arc::new(
        store.journal().identities(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_store_contract() {
    let store = fresh().await;
    let deliveries = std::sync::Arc::new(store.journal().deliveries());
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
        std::sync::Arc::new(store.journal().replays()),
        portcullis_store_tests::provider::CodeExpiry::Swept,
    )
    .await;
}
