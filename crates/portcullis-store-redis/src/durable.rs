//! Changes that must survive a failover: an ending is acknowledged only once replicas have it.
//!
//! Redis replicates asynchronously: a primary answers a write before any replica has it, so a
//! logout acknowledged just before the primary dies can be missing from the replica that takes
//! its place, and the session validates again. So a change that takes access away (an ending —
//! logout, revocation, force logout, expiry, an eviction by a session limit —, a rotation, and
//! every change of API keys, applications and accounts) runs here: its script and then
//! `WAIT <replicas> <timeout>` (`WAITAOF 0 <replicas> <timeout>` with `wait_aof`) go together on
//! one connection to the primary that takes the write, and the change is acknowledged only when
//! enough replicas confirmed it. Otherwise the store answers `StoreError::Unavailable` (503): the
//! change stays on the primary and may or may not survive a failover, and a retry is safe.
//!
//! `WAIT` holds its connection until the replicas answer, and a multiplexed connection would
//! hold every other command behind it (validations among them), so these changes have
//! connections of their own, [`CONNECTIONS`] at most, each used by one change at a time.
//!
//! Creations do not wait: a creation lost in a failover fails closed (its token is unknown).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use portcullis_core::{BackendError, StoreError};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, Script, ServerErrorKind};

use crate::options::Wait;

/// Changes that may wait for replicas at once, each on its own connection.
pub(crate) const CONNECTIONS: usize = 16;

/// How a waiting connection is opened.
pub(crate) enum Opener {
    Single(redis::Client, redis::AsyncConnectionConfig),
    Cluster(redis::cluster::ClusterClient),
}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Single(c) => pipe.query_async(c).await,
            Self::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn load(&mut self, script: &Script) -> redis::RedisResult<String> {
        match self {
            Self::Single(c) => script.prepare_invoke().load_async(c).await,
            Self::Cluster(c) => script.prepare_invoke().load_async(c).await,
        }
    }
}

/// The waiting connections of one store.
pub(crate) struct Durable {
    pub(crate) wait: Wait,
    opener: Opener,
    idle: Mutex<Vec<Conn>>,
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: redis::RedisError) -> StoreError {
    StoreError::Unavailable(BackendError::new(err))
}

impl Durable {
    pub(crate) fn new(wait: Wait, opener: Opener) -> Self {
        Self {
            wait,
            opener,
            idle: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(CONNECTIONS),
        }
    }

    async fn open(&self) -> Result<Conn, StoreError> {
        match &self.opener {
            Opener::Single(client, config) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(Conn::Single),
            Opener::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
        .map_err(unavailable)
    }

    /// Runs `script` on the primary of its keys' slot and waits there for the replicas (the
    /// keys share one slot; the first names it). Answers the script's reply and how many
    /// replicas confirmed everything this connection has written, the script's writes among it.
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: &[Vec<u8>],
        args: &[Vec<u8>],
    ) -> Result<(redis::Value, u32), StoreError> {
        let _permit = tokio::time::timeout(self.wait.timeout, self.permits.acquire())
            .await
            .map_err(|_| {
                StoreError::Unavailable(BackendError::from(format!(
                    "{CONNECTIONS} changes are already waiting for Redis replicas to confirm them; \
                     nothing was changed, retrying is safe"
                )))
            })?
            .map_err(|_| StoreError::Unavailable("the store is closing".into()))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let mut pipe = redis::pipe();
        let eval = pipe.cmd("EVALSHA").arg(script.get_hash()).arg(keys.len());
        for key in keys {
            eval.arg(key.as_slice());
        }
        for arg in args {
            eval.arg(arg.as_slice());
        }
        let timeout = u64::try_from(self.wait.timeout.as_millis()).unwrap_or(u64::MAX);
        if self.wait.aof {
            pipe.cmd("WAITAOF")
                .arg(0)
                .arg(self.wait.replicas)
                .arg(timeout);
        } else {
            pipe.cmd("WAIT").arg(self.wait.replicas).arg(timeout);
        }
        let mut loaded = false;
        loop {
            match conn.pipeline::<(redis::Value, redis::Value)>(&pipe).await {
                Ok((reply, confirmed)) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(conn);
                    return Ok((reply, replicas_of(&confirmed)?));
                }
                // The script is not in that server's cache yet (a new primary after a
                // failover, a restart): load it there and run it again.
                Err(err)
                    if !loaded && err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
                {
                    conn.load(script).await.map_err(unavailable)?;
                    loaded = true;
                }
                Err(err) => return Err(unavailable(err)),
            }
        }
    }

    /// `Ok` when `confirmed` replicas are enough, else why the change is not acknowledged.
    pub(crate) fn check(&self, confirmed: u32) -> Result<(), StoreError> {
        if confirmed >= self.wait.replicas {
            return Ok(());
        }
        Err(StoreError::Unavailable(BackendError::from(format!(
            "Redis made the change, but {confirmed} of the {} replica(s) it must reach confirmed it \
             within {}: a failover now could lose it, so it is not acknowledged; retrying is safe \
             (an ending is idempotent)",
            self.wait.replicas,
            portcullis_core::format_duration(self.wait.timeout),
        ))))
    }

    /// How long a waiting connection may take to answer: the wait, and a second more.
    pub(crate) fn response_timeout(wait: &Wait) -> Duration {
        wait.timeout + Duration::from_secs(1)
    }
}

/// The replicas `WAIT` (an integer) or `WAITAOF` (local, replicas) counted.
fn replicas_of(reply: &redis::Value) -> Result<u32, StoreError> {
    let count = match reply {
        redis::Value::Int(n) => Some(*n),
        redis::Value::Array(parts) => match parts.get(1) {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    };
    count
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("unexpected answer to WAIT: {reply:?}")))
}
