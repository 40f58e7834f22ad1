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
