//! Positions in the audit trail against a private PostgreSQL: the test holds a writing
//! transaction open, which holds back every reader of a shared server's trail (see
//! `PostgresStore::event_horizon`), so it has a server of its own.

mod common;

use common::PrivatePostgres;
use portcullis_core::{Actor, AuditEvent, EventKind, EventQuery, SessionStore};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{plain_insert, random, session_at, t0};

/// ASVS4-7.2.1: paging the trail by `after` never skips an event. Positions are given as
/// events are written, without a lock, so an event of a transaction still running can lie
/// below one already committed; a reader must not show the later one (and move its cursor
/// past the earlier) until the earlier transaction has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs4_7_2_1_paging_never_skips_the_event_of_a_transaction_still_running() {
    let server = PrivatePostgres::start("", "host all all 127.0.0.1/32 trust\n", |_| {});
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let store = PostgresStore::connect(&url, None).await.unwrap();
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let r = random();
    let (_, early) = session_at("early", t0(), &r);
    let (_, late) = session_at("late", t0(), &r);

    // An earlier transaction writes its event as `append_events` does, and stays open.
    let mut running = raw.begin().await.unwrap();
    let event = AuditEvent::for_session(EventKind::SessionCreated, &early, t0(), &Actor::cli());
    sqlx::query(
        "INSERT INTO pc_events (seq, at, kind, subject, session_id, body)
         VALUES (pg_current_xact_id()::text::bigint << 20, $1, 'session.created', $2, $3, $4)",
    )
    .bind(t0().as_millis())
    .bind("early")
    .bind(early.id.as_str())
    .bind(serde_json::to_string(&event).unwrap())
    .execute(&mut *running)
    .await
    .unwrap();
    let inserted = store.insert(plain_insert(late.clone())).await.unwrap();
    let all = EventQuery {
        limit: 100,
        ..Default::default()
    };

    let while_running = store.events(&all).await.unwrap();
    assert_eq!(
        while_running,
        vec![],
        "the committed event lies above one still to come: showing it would skip that one"
    );

    running.commit().await.unwrap();
    let after = store.events(&all).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|e| e.subject.as_deref())
            .collect::<Vec<_>>(),
        vec![Some("early"), Some("late")]
    );
    assert!(after[0].seq < after[1].seq);
    assert_eq!(after[1].seq, inserted.events[0].seq);
    raw.close().await;
}

/// A node of the release before, still running beside upgraded ones, drew its events' positions
/// from the column's sequence, below positions readers have passed: it gets an error instead,
/// so its change is not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_before_cannot_draw_positions_any_more() {
    let server = PrivatePostgres::start("", "host all all 127.0.0.1/32 trust\n", |_| {});
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    PostgresStore::connect(&url, None).await.unwrap();
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let drawn =
        sqlx::query_scalar::<_, i64>("SELECT nextval(pg_get_serial_sequence('pc_events', 'seq'))")
            .fetch_one(&raw)
            .await;
    let err = drawn
        .expect_err("the sequence still gives positions")
        .to_string();
    assert!(err.contains("reached maximum value"), "{err}");
    raw.close().await;
}
