//! The CLI's client for a running server's admin socket (HTTP/1.1 over a Unix socket).
//!
//! What the CLI sends there can carry a password (`users add`, `users set-password`), so it
//! talks only to a server run by the same user or by root: the socket file's owner is checked
//! before connecting and the owner of the process that accepted, by its peer credentials
//! (`SO_PEERCRED`), before a byte is sent.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// A connection to a running server, if one answers on the socket.
pub struct AdminClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// Whether a socket (or the process behind it) owned by `owner` may receive what a CLI run by
/// `me` sends: only the same user, or root (who can read everything of ours anyway).
pub fn trusted_owner(owner: u32, me: u32) -> bool {
    owner == me || owner == 0
}

fn refuse(socket: &Path, what: &str, owner: u32, me: u32) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing to talk to the admin socket {}: {what} belongs to uid {owner}, not to you (uid {me}) or root; nothing was sent (check who created it, and the permissions of its directory)",
        socket.display()
    )
}

impl AdminClient {
    /// Connects when a server listens on `socket`; `Ok(None)` when none does (no socket, or a
    /// stale one). An error when the socket, or the server behind it, belongs to someone else.
    pub async fn connect(socket: &Path) -> Result<Option<Self>> {
        let me = rustix::process::getuid().as_raw();
        let Ok(meta) = std::fs::metadata(socket) else {
            return Ok(None);
        };
        if !meta.file_type().is_socket() {
            bail!(
                "{} is not a socket; remove it if no portcullis server uses this data directory",
                socket.display()
            );
        }
        if !trusted_owner(meta.uid(), me) {
            return Err(refuse(socket, "the socket", meta.uid(), me));
        }
        let Ok(stream) = UnixStream::connect(socket).await else {
            return Ok(None);
        };
        let server = stream
            .peer_cred()
            .context("cannot learn who runs the server behind the admin socket")?
            .uid();
        if !trusted_owner(server, me) {
            return Err(refuse(socket, "the server behind", server, me));
        }
        let Ok((sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            return Ok(None);
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Some(Self { sender }))
    }

    /// Sends one request; answers the status and the JSON body (`null` when empty).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value)> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("the running server did not answer on its admin socket")?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body)
                .context("the server answered something that is not JSON")?
        };
        Ok((status, value))
    }
}

#[cfg(test)]
mod tests {
    use super::trusted_owner;

    #[test]
    fn the_cli_talks_only_to_a_socket_of_its_own_user_or_root() {
        assert!(trusted_owner(1000, 1000), "the same user");
        assert!(trusted_owner(0, 1000), "root");
        assert!(trusted_owner(0, 0), "root to root");
        assert!(!trusted_owner(1001, 1000), "another user");
        assert!(
            !trusted_owner(1000, 0),
            "root does not talk to a user's socket"
        );
        assert!(!trusted_owner(65534, 1000), "nobody");
    }

    #[tokio::test]
    async fn a_socket_of_this_user_is_trusted_and_a_missing_one_is_no_server() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s");
        assert!(
            super::AdminClient::connect(&socket)
                .await
                .unwrap()
                .is_none()
        );
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "{}" }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut client = super::AdminClient::connect(&socket).await.unwrap().unwrap();
        let (status, _) = client.call(hyper::Method::GET, "/", None).await.unwrap();
        assert_eq!(status, 200);
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = super::AdminClient::connect(&dir.path().join("file"))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }
}
