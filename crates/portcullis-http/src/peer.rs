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
//!
//! It is also where the client's address is decided ([`resolve_client`]): the peer's, or, behind
//! a trusted proxy (`trusted_proxies`), the one the proxy reports.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderName};
use axum::serve::IncomingStream;
use ipnet::IpNet;
use portcullis_core::{Store, Timestamp, same_secret};

use crate::{AppState, Caller};

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

/// Parses a configured list of networks: CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single
/// addresses.
pub fn parse_networks<'a>(
    entries: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for entry in entries {
        let text = entry.trim();
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!(
                    "\"{entry}\" is not an address or a CIDR (like 10.0.0.0/8 or 2001:db8::/32)"
                )
            })?;
        nets.push(net.trunc());
    }
    Ok(nets)
}

/// Which headers the trusted proxies write (`proxy_headers`): only those are read, since a
/// proxy passes on what the client sent of the others, and a client would then name itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyHeaders {
    /// `X-Forwarded-For` and `X-Forwarded-Proto` (nginx, HAProxy, the cloud load balancers).
    #[default]
    XForwarded,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl ProxyHeaders {
    /// Reads `xforwarded` or `forwarded`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "xforwarded" => Ok(Self::XForwarded),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "\"{other}\": use xforwarded (X-Forwarded-For, X-Forwarded-Proto) or forwarded (RFC 7239)"
            )),
        }
    }

    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwarded => "xforwarded",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The proxies whose word on the client is taken (`trusted_proxies`): the header they write
/// (`proxy_headers`) is believed only when the connection comes from one of them. Empty by
/// default: the TCP peer is the client, and every such header is ignored.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Arc<[IpNet]>,
    headers: ProxyHeaders,
}

impl TrustedProxies {
    /// Parses a list of CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses; their
    /// headers are `X-Forwarded-*` unless [`Self::writing`] says otherwise.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        Ok(Self {
            networks: parse_networks(entries)?.into(),
            headers: ProxyHeaders::default(),
        })
    }

    /// The same proxies, writing `headers`.
    pub fn writing(mut self, headers: ProxyHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The headers they write.
    pub fn headers(&self) -> ProxyHeaders {
        self.headers
    }

    /// Whether `ip` is one of the trusted proxies (an IPv4-mapped IPv6 address counts as its
    /// IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.networks
    }
}

/// The client behind a request, as far as this server can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer, or the address a trusted proxy reports.
    pub ip: IpAddr,
    /// A trusted proxy says the client reached it over HTTPS (`Forwarded: proto=https`,
    /// `X-Forwarded-Proto: https`): TLS ends at the proxy.
    pub forwarded_https: bool,
}

/// Where a request comes from: **the one place** the pages and the API learn the client's
/// address.
///
/// The TCP `peer` is the client unless it is a trusted proxy. Then the client is read from the
/// header the proxies write (`proxy_headers`: `X-Forwarded-For`, or RFC 7239 `Forwarded`
/// `for=`; the other is never read): walking the hops from the right (the nearest proxy's entry
/// last) and skipping addresses that are themselves trusted proxies, the first other hop is the
/// client; when every hop is trusted, the leftmost is. Only the hops walked are read, so what a
/// client wrote to the left of its own entry (anything at all) changes nothing. A hop on the
/// way that names no address (`unknown`, an obfuscated `_identifier`, an element without
/// `for=`) or does not parse means the client cannot be named: the peer address stands.
/// Headers from a peer that is not trusted are never read, so a client cannot choose the
/// address it is counted under.
pub fn resolve_client(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Client {
    let peer = peer.to_canonical();
    let direct = Client {
        ip: peer,
        forwarded_https: false,
    };
    if trusted.is_empty() || !trusted.contains(peer) {
        return direct;
    }
    let rfc7239 = trusted.headers == ProxyHeaders::Forwarded;
    let name = if rfc7239 { FORWARDED } else { X_FORWARDED_FOR };
    let proto_https = |hop: &Hop| {
        if rfc7239 {
            hop.https
        } else {
            x_forwarded_proto_https(headers)
        }
    };
    if !headers.contains_key(&name) {
        return Client {
            ip: peer,
            forwarded_https: !rfc7239 && x_forwarded_proto_https(headers),
        };
    }
    let Some(elements) = list_elements(headers, &name, rfc7239) else {
        return direct;
    };
    let mut leftmost_trusted = None;
    for element in elements.iter().rev() {
        let Some(hop) = parse_hop(element, rfc7239) else {
            return direct;
        };
        match hop.node {
            Node::Ip(ip) if trusted.contains(ip) => leftmost_trusted = Some(hop),
            Node::Ip(ip) => {
                return Client {
                    ip,
                    forwarded_https: proto_https(&hop),
                };
            }
            Node::Unnamed => {
                return Client {
                    ip: peer,
                    forwarded_https: proto_https(&hop),
                };
            }
        }
    }
    match leftmost_trusted {
        Some(
            hop @ Hop {
                node: Node::Ip(ip), ..
            },
        ) => Client {
            ip,
            forwarded_https: proto_https(&hop),
        },
        _ => direct,
    }
}

/// The client of a request whose connection is known (`None` in process, where there is no
/// peer: the admin socket and tests).
pub fn client_of(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<Client> {
    let ConnectInfo(peer) = extensions.get::<ConnectInfo<Peer>>()?;
    Some(resolve_client(peer.addr().ip(), headers, trusted))
}

/// The client's address as an extractor, for API handlers and audit records (see
/// [`resolve_client`]); `None` when the request did not come over TCP.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Store> FromRequestParts<AppState<S>> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            client_of(
                &parts.extensions,
                &parts.headers,
                &state.edge().trusted_proxies,
            )
            .map(|client| client.ip),
        ))
    }
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// One proxy hop: who the proxy says it heard from, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    node: Node,
    https: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier, or no `for=`.
    Unnamed,
}

/// Every value of a list header, in order across its lines. Bytes that are not text (a client
/// may send any) become U+FFFD, so only the element that holds them fails to parse: the walk
/// from the right never reads it once it has found the client.
fn list_values(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    joined
}

/// Splits `text` at `separator` outside quoted strings; `None` when a quote is left open.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    if quoted || escaped {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

/// An RFC 7230 token character.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A `token` or `quoted-string` value, unquoted.
fn forwarded_value(raw: &str) -> Option<String> {
    if let Some(inner) = raw.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    } else if !raw.is_empty() && raw.chars().all(is_tchar) {
        Some(raw.to_owned())
    } else {
        None
    }
}

/// The elements of list header `name` in order across its lines, empty ones left out (RFC 9110
/// §5.6.1); `None` when (`Forwarded`) a quoted string is left open.
fn list_elements(headers: &HeaderMap, name: &HeaderName, rfc7239: bool) -> Option<Vec<String>> {
    let text = list_values(headers, name);
    let elements = if rfc7239 {
        split_outside_quotes(&text, ',')?
    } else {
        text.split(',').collect()
    };
    Some(
        elements
            .into_iter()
            .map(str::trim)
            .filter(|element| !element.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// One hop: an `X-Forwarded-For` entry, or a `Forwarded` element (RFC 7239 §4); `None` when it
/// does not parse.
fn parse_hop(element: &str, rfc7239: bool) -> Option<Hop> {
    if !rfc7239 {
        return parse_node(element, false).map(|node| Hop { node, https: false });
    }
    let (mut node, mut proto) = (None, None);
    for pair in split_outside_quotes(element, ';')? {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (name, raw) = pair.split_once('=')?;
        if name.is_empty() || !name.chars().all(is_tchar) {
            return None;
        }
        let value = forwarded_value(raw)?;
        let slot = if name.eq_ignore_ascii_case("for") {
            &mut node
        } else if name.eq_ignore_ascii_case("proto") {
            &mut proto
        } else {
            continue; // by=, host= and extensions say nothing about the client
        };
        if slot.replace(value).is_some() {
            return None; // a parameter twice in one element (RFC 7239 §4: MUST NOT)
        }
    }
    Some(Hop {
        node: match node {
            Some(node) => parse_node(&node, true)?,
            None => Node::Unnamed,
        },
        https: proto.is_some_and(|p| p.eq_ignore_ascii_case("https")),
    })
}

/// `X-Forwarded-Proto` names HTTPS (its first value: the proxy that met the client).
fn x_forwarded_proto_https(headers: &HeaderMap) -> bool {
    headers
        .get(X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// A node (RFC 7239 §6): `192.0.2.43`, `192.0.2.43:4711`, `[2001:db8::17]`,
/// `[2001:db8::17]:4711`, `unknown` or an obfuscated `_identifier` (with an optional port or
/// obfuscated port); a bare IPv6 address is accepted too, as `X-Forwarded-For` writes it.
fn parse_node(text: &str, rfc7239: bool) -> Option<Node> {
    let port_ok = |port: &str| {
        (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
            || (rfc7239 && obfuscated(port))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let ip = inner.parse::<std::net::Ipv6Addr>().ok()?;
        return match after {
            "" => Some(Node::Ip(IpAddr::V6(ip).to_canonical())),
            port => port
                .strip_prefix(':')
                .filter(|p| port_ok(p))
                .map(|_| Node::Ip(IpAddr::V6(ip).to_canonical())),
        };
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(Node::Ip(ip.to_canonical()));
    }
    let (name, port) = match text.split_once(':') {
        Some((name, port)) if port_ok(port) => (name, true),
        Some(_) => return None,
        None => (text, false),
    };
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return port.then_some(Node::Ip(IpAddr::V4(ip)));
    }
    (name.eq_ignore_ascii_case("unknown") || (rfc7239 && obfuscated(name))).then_some(Node::Unnamed)
}

/// An obfuscated identifier (RFC 7239 §6.3): `_` then letters, digits, `.`, `_` or `-`.
fn obfuscated(text: &str) -> bool {
    text.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use axum::http::{HeaderMap, HeaderName, HeaderValue};

    use super::{Client, ProxyHeaders, TrustedProxies, resolve_client};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse(["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.1"]).unwrap()
    }

    /// [`proxies`], writing `Forwarded` when `pairs` hold one, else `X-Forwarded-*`.
    fn proxies_for(pairs: &[(&str, &str)]) -> TrustedProxies {
        if pairs.iter().any(|(name, _)| *name == "forwarded") {
            proxies().writing(ProxyHeaders::Forwarded)
        } else {
            proxies()
        }
    }

    /// The address resolved for a request from `peer` with `pairs`, behind [`proxies_for`].
    fn client(peer: &str, pairs: &[(&str, &str)]) -> String {
        resolve_client(ip(peer), &headers(pairs), &proxies_for(pairs))
            .ip
            .to_string()
    }

    #[test]
    fn trusted_proxies_parse_cidrs_and_single_addresses_and_refuse_anything_else() {
        let trusted = proxies();
        assert!(trusted.contains(ip("10.255.0.1")));
        assert!(trusted.contains(ip("192.0.2.1")));
        assert!(!trusted.contains(ip("192.0.2.2")));
        assert!(trusted.contains(ip("2001:db8:ffff:1::9")));
        assert!(!trusted.contains(ip("2001:db8:fffe::9")));
        assert!(
            trusted.contains(ip("::ffff:10.0.0.7")),
            "an IPv4-mapped peer is its IPv4 address"
        );
        for bad in [
            "10.0.0.0/33",
            "proxy.internal",
            "",
            "10.0.0.0/8/8",
            "2001:db8::/129",
        ] {
            let err = TrustedProxies::parse([bad]).unwrap_err();
            assert!(err.contains("not an address or a CIDR"), "{bad}: {err}");
        }
        assert!(TrustedProxies::default().is_empty());
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = [
            ("forwarded", "for=198.51.100.7;proto=https"),
            ("x-forwarded-for", "198.51.100.8"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(
            resolve_client(ip("203.0.113.5"), &headers(&spoofed), &proxies()),
            Client {
                ip: ip("203.0.113.5"),
                forwarded_https: false
            }
        );
        // No proxy is trusted by default: the peer is the client whatever it says.
        let peer = ip("10.0.0.1");
        assert_eq!(
            resolve_client(peer, &headers(&spoofed), &TrustedProxies::default()).ip,
            peer
        );
    }

    #[test]
    fn rfc7239_forwarded_ipv4_ipv6_ports_and_quoting() {
        assert_eq!(
            client("10.0.0.1", &[("forwarded", "for=198.51.100.7")]),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.1", &[("forwarded", "For=\"198.51.100.7:47011\"")]),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.1", &[("forwarded", "for=\"[2001:db8:cafe::17]\"")]),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            client(
                "10.0.0.1",
                &[(
                    "forwarded",
                    "for=\"[2001:db8:cafe::17]:4711\";proto=https;by=10.0.0.1"
                )]
            ),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            client(
                "10.0.0.1",
                &[("forwarded", "for=\"[::ffff:198.51.100.7]\"")]
            ),
            "198.51.100.7"
        );
        assert_eq!(
            client(
                "10.0.0.1",
                &[(
                    "forwarded",
                    "host=example.com; for=198.51.100.7 ; proto=http"
                )]
            ),
            "198.51.100.7"
        );
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_client() {
        // The client lied about a hop on the left; the trusted proxies' entries are skipped.
        assert_eq!(
            client(
                "10.0.0.1",
                &[("forwarded", "for=1.1.1.1, for=198.51.100.7, for=10.0.0.2")]
            ),
            "198.51.100.7"
        );
        // Lines of the header count in order.
        assert_eq!(
            client(
                "10.0.0.1",
                &[
                    ("forwarded", "for=1.1.1.1"),
                    ("forwarded", "for=198.51.100.7;proto=https"),
                    ("forwarded", "for=\"[2001:db8:ffff::3]\""),
                ]
            ),
            "198.51.100.7"
        );
        // Every hop trusted: the leftmost is the client.
        assert_eq!(
            client("10.0.0.1", &[("forwarded", "for=10.0.0.9, for=10.0.0.2")]),
            "10.0.0.9"
        );
        // An untrusted proxy in the chain is as far as the trust goes.
        assert_eq!(
            client(
                "10.0.0.1",
                &[("x-forwarded-for", "198.51.100.7, 203.0.113.50, 10.0.0.2")]
            ),
            "203.0.113.50"
        );
    }

    /// What a client writes to the left of the entry its proxy appended is never read: it
    /// cannot discard that entry (leaving the proxy's address, which may open `/metrics`) nor
    /// name another address, and a client's own `Forwarded` is not read behind proxies that
    /// write `X-Forwarded-For`.
    #[test]
    fn what_a_client_writes_left_of_its_own_entry_changes_nothing() {
        for value in [
            "garbage, 203.0.113.5",
            "2001:db8::1%25eth0, 203.0.113.5",
            "[::1, 203.0.113.5",
            "127.0.0.1, 203.0.113.5, 10.0.0.2",
        ] {
            assert_eq!(
                client("10.0.0.1", &[("x-forwarded-for", value)]),
                "203.0.113.5",
                "{value:?}"
            );
        }
        for value in [
            "for=garbage!!, for=203.0.113.5",
            "by=x;;for, for=203.0.113.5",
        ] {
            assert_eq!(
                client("10.0.0.1", &[("forwarded", value)]),
                "203.0.113.5",
                "{value:?}"
            );
        }
        // Bytes that are not text, before the proxy's entry.
        let mut binary = HeaderMap::new();
        binary.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.5").unwrap(),
        );
        assert_eq!(
            resolve_client(ip("10.0.0.1"), &binary, &proxies()).ip,
            ip("203.0.113.5")
        );
        let spoofed = headers(&[
            ("forwarded", "for=127.0.0.1"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        assert_eq!(
            resolve_client(ip("10.0.0.1"), &spoofed, &proxies()).ip,
            ip("203.0.113.5")
        );
    }

    #[test]
    fn unknown_and_obfuscated_hops_leave_the_peer_address() {
        for value in [
            "for=unknown",
            "for=\"unknown:8080\"",
            "for=_hidden",
            "for=\"_SEVKISEK:_port-1\"",
            "proto=https",
            "for=198.51.100.7, for=_proxy9",
        ] {
            assert_eq!(
                client("10.0.0.1", &[("forwarded", value)]),
                "10.0.0.1",
                "{value}"
            );
        }
        // A trusted hop after an unnamed one is still skipped to reach it.
        assert_eq!(
            client("10.0.0.1", &[("forwarded", "for=unknown, for=10.0.0.3")]),
            "10.0.0.1"
        );
        assert_eq!(
            client("10.0.0.1", &[("x-forwarded-for", "unknown")]),
            "10.0.0.1"
        );
    }

    #[test]
    fn malformed_headers_from_a_trusted_proxy_leave_the_peer_address() {
        for value in [
            "for=",
            "for=\"198.51.100.7",
            "for=198.51.100.7:http",
            "for=[2001:db8::1]",
            "for=\"[2001:db8::1\"",
            "for=\"[2001:db8::1]:x\"",
            "for=300.1.1.1",
            "for=proxy.example",
            "for=198.51.100.7;for=198.51.100.8",
            "198.51.100.7",
            "for=198.51.100.7 junk",
            "",
            ",",
        ] {
            assert_eq!(
                client("10.0.0.1", &[("forwarded", value)]),
                "10.0.0.1",
                "{value:?}"
            );
        }
        for value in [
            "198.51.100.7, _hidden",
            "not-an-ip",
            "198.51.100.7:99999",
            "[::1",
        ] {
            assert_eq!(
                client("10.0.0.1", &[("x-forwarded-for", value)]),
                "10.0.0.1",
                "{value:?}"
            );
        }
        // A malformed Forwarded is not rescued by X-Forwarded-For.
        assert_eq!(
            client(
                "10.0.0.1",
                &[("forwarded", "for="), ("x-forwarded-for", "198.51.100.7")]
            ),
            "10.0.0.1"
        );
    }

    #[test]
    fn x_forwarded_for_with_ports_brackets_and_bare_ipv6() {
        assert_eq!(
            client("10.0.0.1", &[("x-forwarded-for", "198.51.100.7")]),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.1", &[("x-forwarded-for", "198.51.100.7:5123")]),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.1", &[("x-forwarded-for", "2001:db8:cafe::17")]),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            client(
                "10.0.0.1",
                &[("x-forwarded-for", "[2001:db8:cafe::17]:443")]
            ),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            client(
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-forwarded-for", "10.1.1.1, 192.0.2.1")
                ]
            ),
            "198.51.100.7"
        );
        // Only the header the proxies write is read: the other is the client's.
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.8"),
            ("forwarded", "for=198.51.100.7"),
        ]);
        let peer = ip("10.0.0.1");
        assert_eq!(
            resolve_client(peer, &both, &proxies()).ip,
            ip("198.51.100.8")
        );
        assert_eq!(
            resolve_client(peer, &both, &proxies().writing(ProxyHeaders::Forwarded)).ip,
            ip("198.51.100.7")
        );
        // An IPv6 peer in a trusted range.
        assert_eq!(
            client("2001:db8:ffff::1", &[("x-forwarded-for", "203.0.113.9")]),
            "203.0.113.9"
        );
    }

    #[test]
    fn https_is_what_a_trusted_proxy_says_of_the_clients_hop() {
        let https = |peer: &str, pairs: &[(&str, &str)]| {
            resolve_client(ip(peer), &headers(pairs), &proxies_for(pairs)).forwarded_https
        };
        assert!(https("10.0.0.1", &[("x-forwarded-proto", "https")]));
        assert!(https("10.0.0.1", &[("x-forwarded-proto", "HTTPS, http")]));
        assert!(https(
            "10.0.0.1",
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https")
            ]
        ));
        assert!(https("10.0.0.1", &[("forwarded", "proto=https")]));
        assert!(https(
            "10.0.0.1",
            &[(
                "forwarded",
                "for=198.51.100.7;proto=https, for=10.0.0.2;proto=http"
            )]
        ));
        assert!(!https(
            "10.0.0.1",
            &[
                ("forwarded", "for=198.51.100.7;proto=http"),
                ("x-forwarded-proto", "https")
            ]
        ));
        assert!(!https("10.0.0.1", &[("x-forwarded-proto", "http")]));
        assert!(!https("10.0.0.1", &[]));
        assert!(!https("203.0.113.5", &[("x-forwarded-proto", "https")]));
        assert!(!https("203.0.113.5", &[("forwarded", "proto=https")]));
    }
}
