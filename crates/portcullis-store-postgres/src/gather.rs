//! Gathers the token lookups of concurrent validations into one query.
//!
//! A validation's lookup is one primary-key `SELECT`, but under load each costs PostgreSQL a
//! round trip, a wake-up of its backend and an executor run, and costs this node a pool
//! checkout and socket calls: about 70 µs of PostgreSQL's CPU and 85 µs of the node's per
//! validation, measured. One lookup is in flight at a time; the lookups that arrive meanwhile
//! go together as the next `… WHERE token_hash = ANY($1)`, and lookups of the same token share
//! the answer. An idle node sends each lookup at once.

use std::sync::Arc;

use portcullis_core::{Session, StoreError, TokenHash};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};

/// The most lookups one query carries.
const BATCH: usize = 128;

type Reply = Result<Option<Arc<Session>>, StoreError>;

/// A handle to the task that gathers lookups; cloned with the store.
#[derive(Clone, Debug)]
pub(crate) struct Gatherer {
    requests: mpsc::UnboundedSender<(TokenHash, oneshot::Sender<Reply>)>,
}

impl Gatherer {
    /// Starts the gathering task on `pool`; it ends when the last handle is dropped.
    pub(crate) fn start(pool: PgPool) -> Self {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, queue));
        Self { requests }
    }

    /// The session whose token hashes to `hash`, looked up with whatever other lookups wait.
    pub(crate) async fn find(&self, hash: TokenHash) -> Reply {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the PostgreSQL reader has stopped".into());
        self.requests.send((hash, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(
    pool: PgPool,
    mut queue: mpsc::UnboundedReceiver<(TokenHash, oneshot::Sender<Reply>)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut hashes: Vec<TokenHash> = batch.iter().map(|(hash, _)| *hash).collect();
        hashes.sort_unstable_by_key(|h| h.0);
        hashes.dedup();
        match lookup(&pool, &hashes).await {
            Ok(found) => {
                for (hash, reply) in batch.drain(..) {
                    let session = match found.iter().find(|(h, _)| *h == hash) {
                        None => Ok(None),
                        Some((_, Ok(session))) => Ok(Some(Arc::clone(session))),
                        Some((_, Err(damage))) => Err(StoreError::Corrupt(damage.clone())),
                    };
                    let _ = reply.send(session);
                }
            }
            // Fail closed: every lookup of the batch gets the error.
            Err(err) => {
                let err = portcullis_core::BackendError::new(err);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Unavailable(err.clone())));
                }
            }
        }
    }
}

/// The sessions of `hashes` that exist, each decoded once (a damaged one as what is wrong).
async fn lookup(
    pool: &PgPool,
    hashes: &[TokenHash],
) -> Result<Vec<(TokenHash, Result<Arc<Session>, String>)>, sqlx::Error> {
    let rows = if let [hash] = hashes {
        sqlx::query(
            "SELECT body, last_seen_at, idle_at, token_hash FROM pc_sessions WHERE token_hash = $1",
        )
        .bind(&hash.0[..])
        .fetch_all(pool)
        .await?
    } else {
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
        sqlx::query(
            "SELECT body, last_seen_at, idle_at, token_hash FROM pc_sessions
             WHERE token_hash = ANY($1)",
        )
        .bind(keys)
        .fetch_all(pool)
        .await?
    };
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let key: &[u8] = row.try_get(3)?;
        // The row matched one of our 32-byte hashes, so its key is one.
        if let Ok(key) = key.try_into() {
            let session = crate::decode(row)
                .map(Arc::new)
                .map_err(|err| err.to_string());
            found.push((TokenHash(key), session));
        }
    }
    Ok(found)
}
