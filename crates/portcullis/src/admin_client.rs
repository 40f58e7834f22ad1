//! The CLI's client for a running server's admin socket (HTTP/1.1 over a Unix socket).

use std::path::Path;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// A connection to a running server, if one answers on the socket.
pub struct AdminClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl AdminClient {
    /// Connects when a server listens on `socket`; `None` when none does.
    pub async fn connect(socket: &Path) -> Option<Self> {
        let stream = UnixStream::connect(socket).await.ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Some(Self { sender })
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
