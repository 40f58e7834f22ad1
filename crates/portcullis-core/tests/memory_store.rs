//! The conformance suite against the in-memory store.

use portcullis_core::MemoryStore;

portcullis_store_tests::store_conformance!(async { MemoryStore::new() });
