//! The one writer task of a database file: every journal change and the writes of the busiest
//! other stores (refresh tokens, codes) go through it.
//!
//! It takes everything waiting when it starts a transaction (up to [`MAX_BATCH`] jobs), writes
//! it in queue order in one `BEGIN IMMEDIATE` transaction on its own connection and answers each
//! job once that transaction has committed. So concurrent writers share one commit and its wait
//! for the disk, and never wait for SQLite's write lock behind each other's connection (whose
//! busy handler sleeps milliseconds at a time).
//!
//! A failed transaction fails every job in it. When it held journal changes, every change queued
//! after them is refused too, until the cache has set memory back to what is durable
//! ([`portcullis_core::Journal::recover`]): those changes were planned on top of the failed ones.
//! The writer keeps the ids of the sessions the failed and refused changes held, so that only
//! those are read again.
//! The other stores' writes plan on nothing in memory and are written all the same.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use portcullis_core::{Change, SessionId, StoreError};
use sqlx::{Connection as _, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::{unavailable, write_changes};

/// The most jobs one transaction of the writer takes.
pub const MAX_BATCH: usize = 256;

/// A boxed future of a write on the writer's connection.
pub(crate) type WriteFuture<'c, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'c>>;

/// One atomic step of another store, made inside the writer's transaction.
pub(crate) trait Write: Send + 'static {
    /// What the step found, answered once its transaction has committed.
    type Output: Send + 'static;

    /// Makes the step on `conn`, inside the batch's transaction. An error fails the whole
    /// batch, so a step answers what it found (a token already rotated, a code already
    /// redeemed) as output, never as an error.
    fn apply<'c>(&'c self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, Self::Output>;

    /// Called once the step's transaction has committed, before its caller is answered, by the
    /// writer task in queue order: a store that keeps a copy in memory changes it here, so the
    /// copy follows the commits in their order.
    fn committed(&self, _found: &Self::Output) {}
}

/// A [`Write`] with its caller's answer, its type erased for the queue.
trait QueuedWrite: Send {
    fn apply<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()>;
    fn answer(self: Box<Self>, committed: Result<(), String>);
}

struct Queued<W: Write> {
    write: W,
    found: Option<W::Output>,
    answer: oneshot::Sender<Result<W::Output, StoreError>>,
}

impl<W: Write> QueuedWrite for Queued<W> {
    fn apply<'c>(&'c mut self, conn: &'c mut SqliteConnection) -> WriteFuture<'c, ()> {
        Box::pin(async move {
            self.found = Some(self.write.apply(conn).await?);
            Ok(())
        })
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let Queued {
            write,
            found,
            answer,
        } = *self;
        if committed.is_ok()
            && let Some(found) = &found
        {
            write.committed(found);
        }
        let outcome = committed
            .and_then(|()| found.ok_or_else(|| "the write was not made".to_owned()))
            .map_err(|why| StoreError::Unavailable(why.into()));
        let _ = answer.send(outcome);
    }
}

/// What the writer task is asked.
enum Job {
    /// Write this journal change, then answer.
    Change(Box<Change>, oneshot::Sender<Result<(), StoreError>>),
    /// Make this step of another store, then answer what it found.
    Write(Box<dyn QueuedWrite>),
    /// Answer once everything queued before is answered.
    Barrier(oneshot::Sender<()>),
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Change(..) => "Change",
            Job::Write(_) => "Write",
            Job::Barrier(_) => "Barrier",
        })
    }
}

/// The queue of a database file's writer task; cloned into every store that writes through it.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: mpsc::UnboundedSender<Job>,
    /// A transaction with journal changes failed: changes are refused until [`Writer::recovered`].
    failed: Arc<AtomicBool>,
    /// The sessions the failed and refused changes wrote or purged, since the last recovery.
    not_durable: Arc<Mutex<Vec<SessionId>>>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the writer stopped".into())
}

impl Writer {
    /// Starts the writer task on `conn`.
    pub(crate) fn start(conn: SqliteConnection) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let not_durable = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(write_queued(
            conn,
            jobs,
            failed.clone(),
            not_durable.clone(),
        ));
        Self {
            queue,
            failed,
            not_durable,
        }
    }

    /// Queues `change`; `answer` is sent once it is durable (or failed).
    pub(crate) fn change(&self, change: Change, answer: oneshot::Sender<Result<(), StoreError>>) {
        // A closed queue drops the answer: its receiver then says the writer stopped.
        let _ = self.queue.send(Job::Change(Box::new(change), answer));
    }

    /// Makes `write` in the writer's next transaction and answers what it found once that
    /// transaction has committed.
    pub(crate) async fn write<W: Write>(&self, write: W) -> Result<W::Output, StoreError> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            write,
            found: None,
            answer,
        };
        self.queue
            .send(Job::Write(Box::new(queued)))
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Waits until everything queued before is answered.
    pub(crate) async fn barrier(&self) -> Result<(), StoreError> {
        let (done, answered) = oneshot::channel();
        self.queue.send(Job::Barrier(done)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())
    }

    /// The sessions the changes that failed (or were refused) since the last recovery wrote or
    /// purged; complete once every change queued before is answered ([`Writer::barrier`]). Kept
    /// until [`Writer::recovered`], so that a recovery that fails half-way is made again whole.
    pub(crate) fn not_durable(&self) -> Vec<SessionId> {
        let mut ids = self.not_durable.lock().clone();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The cache has set memory back to what is durable: changes are taken again.
    pub(crate) fn recovered(&self) {
        self.not_durable.lock().clear();
        self.failed.store(false, Ordering::Release);
    }
}

/// The writer task: batches what is queued into transactions, answers each job after its
/// transaction commits (or failed).
async fn write_queued(
    mut conn: SqliteConnection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    failed: Arc<AtomicBool>,
    not_durable: Arc<Mutex<Vec<SessionId>>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let refusing = failed.load(Ordering::Acquire);
        let mut changes: Vec<&Change> = Vec::new();
        let mut writes: Vec<&mut Box<dyn QueuedWrite>> = Vec::new();
        for job in &mut batch {
            match job {
                Job::Change(change, _) if !refusing => changes.push(&**change),
                Job::Write(write) => writes.push(write),
                Job::Change(..) | Job::Barrier(_) => {}
            }
        }
        let had_changes = !changes.is_empty();
        let outcome = if changes.is_empty() && writes.is_empty() {
            Ok(())
        } else {
            write_batch(&mut conn, &changes, writes)
                .await
                .map_err(|err| err.to_string())
        };
        if had_changes && outcome.is_err() {
            failed.store(true, Ordering::Release);
        }
        for job in batch.drain(..) {
            match job {
                Job::Change(change, answer) => {
                    if refusing || outcome.is_err() {
                        let mut ids = not_durable.lock();
                        ids.extend(change.sessions.iter().map(|s| s.id.clone()));
                        ids.extend(change.purged.iter().cloned());
                    }
                    let answered = if refusing {
                        Err("an earlier change failed; this one was planned after it".to_owned())
                    } else {
                        outcome.clone()
                    };
                    let _ =
                        answer.send(answered.map_err(|why| StoreError::Unavailable(why.into())));
                }
                Job::Write(write) => write.answer(outcome.clone()),
                Job::Barrier(answer) => {
                    let _ = answer.send(());
                }
            }
        }
    }
}

/// Writes `changes`, then makes `writes`, in one `BEGIN IMMEDIATE` transaction.
async fn write_batch(
    conn: &mut SqliteConnection,
    changes: &[&Change],
    writes: Vec<&mut Box<dyn QueuedWrite>>,
) -> Result<(), StoreError> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unavailable)?;
    write_changes(&mut tx, changes).await?;
    for write in writes {
        write.apply(&mut tx).await?;
    }
    tx.commit().await.map_err(unavailable)
}
