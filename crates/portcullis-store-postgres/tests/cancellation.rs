//! A caller cancelled while its transaction's `BEGIN` is on the wire (a client that hung up, a
//! timeout) must not leave its pooled connection inside that transaction: every statement the
//! next caller commits on its own there would be acknowledged and never committed.
//!
//! The store reaches PostgreSQL through a proxy in this test that can hold the server's answer
//! to a `BEGIN`, so the cancellation lands exactly while `BEGIN` waits for it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::atomic::{AtomicU32, Ordering as Counter};

use portcullis_core::{EndReason, SessionStore};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_tests::{ending, plain_insert, random, session_at, t0};
use sqlx::postgres::PgConnectOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The simple-query message that sqlx sends to begin a transaction.
const BEGIN: &[u8] = b"Q\0\0\0\x0aBEGIN\0";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Forwards connections to PostgreSQL; once armed, it holds the server's answers from the next
/// `BEGIN` on until released.
struct Proxy {
    port: u16,
    armed: Arc<AtomicBool>,
    begun: Arc<Notify>,
    hold: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            armed: Arc::new(AtomicBool::new(false)),
            begun: Arc::new(Notify::new()),
            hold: Arc::new(watch::channel(false).0),
        };
        let (armed, begun, hold) = (proxy.armed.clone(), proxy.begun.clone(), proxy.hold.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let (armed, begun, hold) = (armed.clone(), begun.clone(), hold.clone());
                let mut held = hold.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        // Held before `BEGIN` leaves, so its answer cannot slip through.
                        if buf[..n].windows(BEGIN.len()).any(|w| w == BEGIN)
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            hold.send_replace(true);
                            begun.notify_one();
                        }
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                        if held.wait_for(|held| !held).await.is_err()
                            || to_client.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        proxy
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.hold.send_replace(false);
    }
}

/// The pool has one connection, so the create after the cancellation gets the very connection
/// the cancelled `BEGIN` was sent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_acknowledged_after_a_cancelled_begin_is_committed() {
    let url = common::shared_server_url();
    let server: PgConnectOptions = url.parse().unwrap();
    let proxy = Proxy::start(format!("{}:{}", server.get_host(), server.get_port())).await;
    let schema = format!(
        "pc_test_{}_cancel_{}",
        std::process::id(),
        NEXT.fetch_add(1, Counter::SeqCst)
    );
    let user = server.get_username();
    let database = server.get_database().unwrap_or(user);
    let store = PostgresStore::connect_url(&format!(
        "postgres://{user}@127.0.0.1:{}/{database}?schema={schema}&max_connections=1",
        proxy.port
    ))
    .await
    .unwrap();
    let direct = PostgresStore::connect(&url, Some(&schema)).await.unwrap();
    let r = random();
    let (_, ann) = session_at("ann", t0(), &r);
    store.insert(plain_insert(ann.clone())).await.unwrap();

    proxy.arm();
    let logout = tokio::spawn({
        let store = store.clone();
        let id = ann.id.clone();
        async move { store.end(&id, ending(EndReason::Logout, t0())).await }
    });
    proxy.begun.notified().await;
    logout.abort();
    assert!(logout.await.unwrap_err().is_cancelled());
    proxy.release();

    // A plain create is one statement committed on its own.
    let (_, bob) = session_at("bob", t0(), &r);
    store.insert(plain_insert(bob.clone())).await.unwrap();
    assert!(
        direct.find_by_id(&bob.id).await.unwrap().is_some(),
        "the create was acknowledged, but another connection cannot see it: it is still inside \
         the cancelled caller's transaction"
    );
    store.close().await;
    direct.close().await;
}
