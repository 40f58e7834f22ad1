//! A server that stops answering without closing its connections: a private PostgreSQL whose
//! processes are stopped (`SIGSTOP`). The kernel still accepts what the store sends, so nothing
//! fails on its own; every call on a request's path must fail closed at its deadline instead of
//! waiting for the server to come back.

mod common;

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use common::PrivatePostgres;
use portcullis_core::oidc::SigningKeyStore;
use portcullis_core::{SessionStore, StoreError, ThrottleStore, UserStore, UserStoreError};
use portcullis_store_postgres::{CALL_DEADLINE, PostgresStore};
use portcullis_store_tests::{plain_insert, random, session_at, t0};

/// The server's processes: the postmaster (first line of `postmaster.pid`) and its children.
fn server_processes(server: &PrivatePostgres) -> Vec<String> {
    let postmaster = std::fs::read_to_string(server.data.join("postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap().trim().to_owned();
    let children = Command::new("pgrep")
        .args(["-P", &postmaster])
        .output()
        .unwrap();
    let mut pids: Vec<String> = String::from_utf8(children.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    pids.push(postmaster);
    pids
}

fn signal(pids: &[String], signal: &str) {
    let ok = Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(ok.success(), "kill {signal} {pids:?}");
}

/// Lets the server go on when the test ends, also when it fails: a stopped server would
/// never stop.
struct Frozen(Vec<String>);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

/// Awaits `call`, which must fail closed within its deadline (the clock is paused, so this
/// takes no time: tokio moves it to the next timer whenever everything waits).
async fn fails_closed_in_time<T: std::fmt::Debug, E: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
    unavailable: impl Fn(&E) -> bool,
) {
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(CALL_DEADLINE * 3, call)
        .await
        .unwrap_or_else(|_| panic!("{what} was held past its deadline by a frozen server"));
    let error = answer.expect_err(what);
    assert!(unavailable(&error), "{what}: {error:?}");
    // tokio's timers round up to the millisecond.
    assert!(
        started.elapsed() <= CALL_DEADLINE + Duration::from_millis(5),
        "{what} failed after {:?}",
        started.elapsed()
    );
}

/// The session store, the accounts, the sign-in throttle and the provider's stores each answer
/// `Unavailable` within `CALL_DEADLINE` while the server is frozen, and answer again once it
/// goes on.
#[tokio::test]
async fn every_call_fails_closed_at_its_deadline_when_the_server_freezes() {
    let server = PrivatePostgres::start("", "host all all 127.0.0.1/32 trust\n", |_| {});
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let store = PostgresStore::connect(&url, None).await.unwrap();
    let users = store.users();
    let throttle = store.throttle();
    let keys = store.signing_keys();
    let r = random();
    let (_, ann) = session_at("ann", t0(), &r);
    store.insert(plain_insert(ann.clone())).await.unwrap();
    assert!(users.user_by_name("ann").await.unwrap().is_none());

    let frozen = Frozen(server_processes(&server));
    signal(&frozen.0, "-STOP");
    tokio::time::pause();

    let (_, bob) = session_at("bob", t0(), &r);
    let session_unavailable = |e: &StoreError| matches!(e, StoreError::Unavailable(_));
    let user_unavailable = |e: &UserStoreError| matches!(e, UserStoreError::Unavailable(_));
    fails_closed_in_time(
        "a session read",
        store.find_by_id(&ann.id),
        session_unavailable,
    )
    .await;
    fails_closed_in_time(
        "a create",
        store.insert(plain_insert(bob)),
        session_unavailable,
    )
    .await;
    fails_closed_in_time("a ping", store.ping(), session_unavailable).await;
    fails_closed_in_time(
        "an account lookup",
        users.user_by_name("ann"),
        user_unavailable,
    )
    .await;
    fails_closed_in_time(
        "a throttle's clearing",
        throttle.clear("ann"),
        user_unavailable,
    )
    .await;
    fails_closed_in_time("the signing keys", keys.signing_keys(), session_unavailable).await;

    drop(frozen);
    tokio::time::resume();
    // A connection whose call was dropped mid-statement is discarded; the next call opens
    // another, so each answers again within a few tries.
    let mut found = None;
    for _ in 0..20 {
        if let Ok(session) = store.find_by_id(&ann.id).await {
            found = session;
            break;
        }
    }
    assert_eq!(found.map(|s| s.id.clone()), Some(ann.id.clone()));
    assert!(users.user_by_name("ann").await.unwrap().is_none());
    store.close().await;
}
