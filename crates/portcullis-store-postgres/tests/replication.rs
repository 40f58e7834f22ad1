//! What PostgreSQL does with an ending when the server names a synchronous standby
//! (`synchronous_standby_names`) that is not there: with `synchronous_commit` at its default
//! (`on`) or `remote_apply`, the commit is not acknowledged until the standby confirms it, so
//! the store does not answer (PostgreSQL has no timeout for this wait; the change is never
//! acknowledged and lost). The store URL's `synchronous_commit` option is the setting of the
//! store's sessions: `local` acknowledges at the local commit again.

mod common;

use std::time::Duration;

use common::PrivatePostgres;
use portcullis_core::{EndReason, SessionStore};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{ending, plain_insert, random, session_at, t0};

#[tokio::test]
async fn a_commit_waits_for_the_synchronous_standby_unless_the_url_says_local() {
    let server = PrivatePostgres::start(
        "synchronous_standby_names = 'portcullis_standby'",
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        |_| {},
    );
    let url = |options: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{options}",
            server.port
        )
    };

    // `local`: committed here is acknowledged (what a server without standbys does anyway).
    let store = PostgresStore::connect_url(&url("schema=sync_local&synchronous_commit=local"))
        .await
        .unwrap();
    let (_, session) = session_at("ann", t0(), &random());
    store.insert(plain_insert(session.clone())).await.unwrap();
    store
        .end(&session.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();

    // The server's default (`on`) and `remote_apply` wait for the standby, which never comes:
    // nothing is acknowledged (connecting commits the schema's migrations first).
    for options in [
        "schema=sync_default",
        "schema=sync_apply&synchronous_commit=remote_apply",
    ] {
        let waiting = tokio::time::timeout(
            Duration::from_secs(1),
            PostgresStore::connect_url(&url(options)),
        )
        .await;
        assert!(
            waiting.is_err(),
            "{options}: a commit was acknowledged without the synchronous standby"
        );
    }

    let off = PostgresStore::connect_url(&url("synchronous_commit=off"))
        .await
        .unwrap_err()
        .to_string();
    assert!(off.contains("synchronous_commit=off: use local"), "{off}");
}
