//! Outbound HTTP: every request Portcullis makes to an address it was given rather than one
//! it chose: a client's back-channel logout URI (the client's word, and a client may be
//! anyone), an upstream identity provider's endpoints (its discovery document names them; the
//! provider's requests come as `portcullis_upstream::UpstreamHttp`).
//!
//! [`Outbound`] resolves the host itself, keeps only addresses the [`OutboundPolicy`] allows
//! (public addresses, and the private networks the configuration names), and connects to one
//! of those very addresses, so a name cannot be made to point elsewhere between the check and
//! the connection. It speaks HTTP/1.1 (TLS for `https`, verified against the system's roots),
//! follows no redirect (a redirect is an answer), reads at most [`MAX_ANSWER`] bytes and gives
//! up after a timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::peer::parse_networks;

/// The largest answer read: discovery documents, key sets and token responses are a few
/// kilobytes.
pub const MAX_ANSWER: usize = 1 << 20;

/// Which addresses outbound requests may reach: every public address, and the networks the
/// configuration allows besides (`outbound_allow`: loopback for tests and development, a
/// private network where the clients run). Nothing else: loopback, private, link-local
/// (cloud metadata), shared, documentation and reserved ranges are refused by default.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy(Arc<[IpNet]>);

impl OutboundPolicy {
    /// Parses the allowed networks: CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        Ok(Self(parse_networks(entries)?.into()))
    }

    /// Whether a request may go to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        is_public(ip) || self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Whether `ip` is a public unicast address (IANA's special-purpose registries, roughly: what
/// no deployment means by "the client's server" unless it says so).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            // Global unicast only, less documentation, 6to4 and Teredo (which embed IPv4
            // addresses this check would not see).
            (segments[0] & 0xe000) == 0x2000
                && !(segments[0] == 0x2001 && segments[1] == 0x0db8)
                && segments[0] != 0x2002
                && !(segments[0] == 0x2001 && segments[1] == 0)
        }
    }
}

/// Why an outbound request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The request may not go there: not `http(s)`, credentials in the URI, or an address the
    /// policy refuses.
    #[error("refused: {0}")]
    Forbidden(String),
    /// No answer: the name did not resolve, no connection, TLS failed, the exchange broke, the
    /// answer was too large, or nothing came within the timeout.
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// Sends outbound requests; see the module documentation. Clones share one TLS setup.
#[derive(Clone)]
pub struct Outbound {
    policy: OutboundPolicy,
    timeout: Duration,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// A client that trusts the system's certificate authorities.
    pub fn new(policy: OutboundPolicy, timeout: Duration) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                "no system certificate authority was found: outbound https requests will fail"
            );
        }
        Self::with_roots(policy, timeout, roots)
    }

    /// A client that trusts exactly `roots` (tests, private authorities).
    pub fn with_roots(
        policy: OutboundPolicy,
        timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            policy,
            timeout,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// Sends `request` (its URI absolute) and reads the whole answer.
    pub async fn send(
        &self,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, OutboundError> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(OutboundError::Unreachable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn exchange(
        &self,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, OutboundError> {
        let (mut parts, body) = request.into_parts();
        let target = Target::parse(&parts.uri).map_err(OutboundError::Forbidden)?;
        let addresses = target.resolve().await.map_err(OutboundError::Unreachable)?;
        let allowed: Vec<SocketAddr> = addresses
            .iter()
            .copied()
            .filter(|a| self.policy.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(OutboundError::Forbidden(format!(
                "{} resolves to no address outbound requests may reach (see outbound_allow)",
                target.host
            )));
        }
        // The request line carries the path; the host goes in `Host`.
        parts.uri = target
            .path_and_query
            .parse()
            .map_err(|_| OutboundError::Forbidden("a path that is not one".into()))?;
        let host = hyper::header::HeaderValue::from_str(&target.authority)
            .map_err(|_| OutboundError::Forbidden("a host that is not one".into()))?;
        parts.headers.insert(hyper::header::HOST, host);
        let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
        let mut last_error = String::new();
        for address in allowed {
            let stream = match TcpStream::connect(address).await {
                Ok(stream) => stream,
                Err(err) => {
                    last_error = format!("cannot connect to {address}: {err}");
                    continue;
                }
            };
            let answer = if target.tls {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|err| OutboundError::Forbidden(err.to_string()))?;
                match self.tls.connect(name, stream).await {
                    Ok(tls) => send(tls, request).await,
                    Err(err) => Err(format!("TLS with {}: {err}", target.host)),
                }
            } else {
                send(stream, request).await
            };
            return answer.map_err(OutboundError::Unreachable);
        }
        Err(OutboundError::Unreachable(last_error))
    }
}

impl portcullis_upstream::UpstreamHttp for Outbound {
    fn send(&self, request: Request<Vec<u8>>) -> portcullis_upstream::HttpFuture<'_> {
        Box::pin(async move {
            Outbound::send(self, request)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The OpenID Connect provider's keys signing the client assertions Portcullis sends upstream
/// (`private_key_jwt`).
pub struct ProviderAssertions<S: portcullis_core::Store>(pub Arc<portcullis_oidc::Provider<S>>);

impl<S: portcullis_core::Store> portcullis_upstream::ClientAssertionSigner
    for ProviderAssertions<S>
{
    fn sign(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<String, String> {
        self.0
            .sign_client_assertion(claims)
            .map_err(|e| e.to_string())
    }
}

/// Where a request goes.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(uri: &Uri) -> Result<Self, String> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{uri:?} is neither http nor https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{uri:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{uri:?} carries credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            tls,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            host,
        })
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map(Iterator::collect)
            .map_err(|err| format!("cannot resolve {}: {err}", self.host))
    }
}

/// Sends `request` over `io` (HTTP/1.1) and reads the answer, at most [`MAX_ANSWER`] bytes.
async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response<Vec<u8>>, String>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|err| format!("HTTP handshake: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("HTTP: {err}"))?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|err| format!("reading the answer: {err}"))?
        .to_bytes();
    Ok(Response::from_parts(parts, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_and_allowed_networks_are_reached() {
        let none = OutboundPolicy::default();
        for public in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(none.allows(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
            "ff02::1",
        ] {
            assert!(!none.allows(private.parse().unwrap()), "{private}");
        }
        let loopback = OutboundPolicy::parse(["127.0.0.0/8", "::1"]).unwrap();
        assert!(loopback.allows("127.0.0.1".parse().unwrap()));
        assert!(loopback.allows("::ffff:127.0.0.2".parse().unwrap()));
        assert!(loopback.allows("::1".parse().unwrap()));
        assert!(!loopback.allows("10.0.0.1".parse().unwrap()));
        assert!(OutboundPolicy::parse(["localhost"]).is_err());
    }

    #[test]
    fn targets_keep_their_path_and_query_and_refuse_what_cannot_be_reached() {
        let t = Target::parse(&"https://rp.example:8443/bc?tenant=1".parse().unwrap()).unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("rp.example", 8443));
        assert_eq!(t.path_and_query, "/bc?tenant=1");
        let t = Target::parse(&"http://[::1]/logout".parse().unwrap()).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 80, false));
        for bad in [
            "ftp://rp.example/bc",
            "https://user:pw@rp.example/bc",
            "/bc",
        ] {
            assert!(Target::parse(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
