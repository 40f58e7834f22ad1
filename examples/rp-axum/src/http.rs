//! The HTTP client that talks to the provider (discovery, JWKS, token and userinfo endpoints):
//! one HTTP/1.1 exchange per connection over TCP, TLS for `https` (rustls with the system's
//! trusted roots; `SSL_CERT_FILE` / `SSL_CERT_DIR` replace them, e.g. with a development CA).
//!
//! `openidconnect` takes any [`AsyncHttpClient`]; with its `reqwest` feature a
//! `reqwest::Client` (redirects off) does the same job. This one is built from what the
//! Portcullis workspace already compiles.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use openidconnect::http::{self, HeaderValue, header};
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one exchange (connect, TLS, request, whole answer) may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read: discovery documents and key sets are a few kilobytes.
const MAX_BODY: usize = 1 << 20;

/// Why a request to the provider got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL names no host, or a scheme other than `http` and `https`.
    #[error("cannot request {0}")]
    Url(String),
    /// No TCP connection.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// The host and port.
        host: String,
        /// What the socket said.
        source: std::io::Error,
    },
    /// The TLS handshake failed (an untrusted certificate, a wrong name).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The answer's body could not be read, or was larger than [`MAX_BODY`].
    #[error("reading the answer: {0}")]
    Body(String),
    /// Nothing within [`TIMEOUT`].
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

/// Sends requests to the provider. Cheap to share: one TLS configuration for all requests.
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
}

impl HttpClient {
    /// A client trusting the system's root certificates.
    pub fn new() -> Result<Self, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            eprintln!("warning: reading the system's root certificates: {error}");
        }
        let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            eprintln!("warning: no trusted root certificates: an https issuer will not verify");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends `request` and reads the whole answer; redirects are answers, not followed.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        tokio::time::timeout(TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (mut parts, body) = request.into_parts();
        let url = parts.uri.clone();
        let bad_url = || HttpError::Url(url.to_string());
        let tls = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url()),
        };
        let authority = url.authority().ok_or_else(bad_url)?.clone();
        // An IPv6 literal keeps its brackets in the URI, not in a socket address or a name.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });

        // The request line carries the path; the host goes in `Host`.
        parts.uri = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| bad_url())?;
        let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| bad_url())?;
        parts.headers.insert(header::HOST, host_header);
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));

        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| HttpError::Connect {
                host: format!("{host}:{port}"),
                source,
            })?;
        if tls {
            let name = ServerName::try_from(host.clone()).map_err(|_| bad_url())?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls { host, source })?;
            exchange_over(stream, request).await
        } else {
            exchange_over(tcp, request).await
        }
    }
}

/// One request and its answer over an open connection.
async fn exchange_over<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<HttpResponse, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection is driven on its own task; it ends once the answer is read and the
    // sender dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Body(e.to_string()))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
