//! One client connection: its address, and the API key it last proved it holds.
//!
//! A backend calls the API over kept-alive connections, presenting the same key on every
//! request. Checking it means hashing it (SHA-256) and looking the hash up, which was the
//! largest single cost of a validation after the answer itself. A [`Peer`] remembers the
//! exact bytes that passed the check on its connection, so a later request that presents the
//! same bytes (compared in constant time) is the same caller without hashing again. The
//! memory is trusted only while the engine has revoked no key since the check, so a
//! revocation through this server takes effect at once, and for [`KEY_MEMORY`] at most, so a
//! key revoked on another node of a shared store stops working here within the store's own
//! key-cache time plus that.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use portcullis_core::{Timestamp, same_secret};

use crate::Caller;

/// How long a connection trusts a key it checked, measured on the engine's clock.
pub const KEY_MEMORY: Duration = Duration::from_millis(500);

/// The connect info the API is served with (`into_make_service_with_connect_info::<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    checked: Arc<Mutex<Option<CheckedKey>>>,
}

/// A key that passed the check on this connection.
struct CheckedKey {
    presented: Box<[u8]>,
    caller: Caller,
    revocations: u64,
    at: Timestamp,
}

impl std::fmt::Debug for CheckedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedKey")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// A new connection from `addr`, with nothing checked yet.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            checked: Arc::default(),
        }
    }

    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The caller behind `presented` if exactly these bytes passed the check on this
    /// connection, no key has been revoked since (`revocations` is the engine's count now) and
    /// the check is younger than [`KEY_MEMORY`] at `now`.
    pub(crate) fn checked_caller(
        &self,
        presented: &str,
        revocations: u64,
        now: Timestamp,
    ) -> Option<Caller> {
        let checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner);
        let known = checked.as_ref()?;
        let fresh =
            known.revocations == revocations && now >= known.at && known.at.until(now) < KEY_MEMORY;
        (fresh && same_secret(presented.as_bytes(), &known.presented)).then(|| known.caller.clone())
    }

    /// Remembers that `presented` passed the check at `at`, when the engine's revocation count
    /// read before the check was `revocations`.
    pub(crate) fn remember(
        &self,
        presented: &str,
        caller: &Caller,
        revocations: u64,
        at: Timestamp,
    ) {
        *self.checked.lock().unwrap_or_else(PoisonError::into_inner) = Some(CheckedKey {
            presented: presented.as_bytes().into(),
            caller: caller.clone(),
            revocations,
            at,
        });
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self::new(*stream.remote_addr())
    }
}

/// For servers that hand over only the address (the TLS listener).
impl Connected<SocketAddr> for Peer {
    fn connect_info(addr: SocketAddr) -> Self {
        Self::new(addr)
    }
}
