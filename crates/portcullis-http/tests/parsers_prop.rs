//! Property tests of the HTTP layer's parsers of untrusted input and of its problem answers:
//! cookie headers, user agents, `return_to`, CSRF values, `Forwarded` and `X-Forwarded-For`
//! chains, and every error as a problem
//! document. Whatever a client sends, a parser answers (never panics) within its contract.
//!
//! CI runs each property with proptest's default 256 cases; `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh` runs them for an hour).

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;
use portcullis_core::{EndReason, EngineError, Grant, Rejection, StoreError};
use portcullis_http::error::ApiError;
use portcullis_http::ui::device::describe;
use portcullis_http::ui::web::{csrf_matches, csrf_token, read_cookie, safe_return_to};
use proptest::prelude::*;
use proptest::strategy::LazyJust;

/// A `Cookie` header as a browser, a proxy or an attacker might send it.
fn cookie_line() -> impl Strategy<Value = Vec<u8>> {
    let pair = prop_oneof![
        "(__Host-portcullis|__host-portcullis|__Host-portcullis-csrf|__Host-portcullis-sign-in|[a-z_-]{1,12})=\"?[A-Za-z0-9_=;\" -]{0,50}\"?",
        "[ \\t;=]{0,3}",
        any::<String>(),
    ];
    prop_oneof![
        prop::collection::vec(pair, 0..6).prop_map(|pairs| pairs.join("; ").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..120),
    ]
}

proptest! {
    /// OWASP-SM-10 / COOKIE-3: any `Cookie` header reads without a panic, and what it reads is
    /// exactly the value of the first pair whose name is the cookie's, byte for byte (a
    /// `__host-` look-alike is never ours).
    #[test]
    fn owasp_sm_10_cookie_headers_read_only_the_exact_name(
        lines in prop::collection::vec(cookie_line(), 0..3),
        name in prop_oneof![
            Just("__Host-portcullis".to_owned()),
            Just("__Host-portcullis-csrf".to_owned()),
            "[a-z_-]{1,12}",
        ],
    ) {
        let mut headers = HeaderMap::new();
        for line in &lines {
            if let Ok(value) = HeaderValue::from_bytes(line) {
                headers.append(header::COOKIE, value);
            }
        }
        let read = read_cookie(&headers, &name);
        // The reference reading: the same pairs, split the plain way.
        let expected = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|l| l.split(';'))
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'));
        prop_assert_eq!(read, expected);
        if let Some(value) = read {
            prop_assert!(!value.contains(';'));
            prop_assert!(!value.starts_with('"') && !value.ends_with('"'));
        }
    }

    /// Any user agent names a device for the account page, never empty, never a panic, and
    /// never the raw header (it is shown to the person).
    #[test]
    fn any_user_agent_names_a_device(ua in prop_oneof![
        any::<String>(),
        "(Mozilla/5.0 \\((X11; Linux x86_64|Windows NT 10.0|Macintosh; Intel Mac OS X 10_15|iPhone|Android 14)\\) )?(Firefox|Chrome|Edg|OPR|Safari|CriOS)/[0-9.]{1,8}",
    ]) {
        let named = describe(Some(&ua));
        prop_assert!(!named.is_empty());
        prop_assert!(named.len() <= 40, "{}", named);
        prop_assert!(named.chars().all(|c| c.is_ascii_alphanumeric() || " ()".contains(c)), "{}", named);
        prop_assert_eq!(describe(None), "Unknown device");
    }

    /// `return_to` never leaves the site: what comes back is a path on this host.
    #[test]
    fn return_to_stays_on_the_site(candidate in prop_oneof![
        any::<String>(),
        "(/|//|/\\\\|https?://|javascript:)[a-z./\\\\@:%?#]{0,30}",
    ]) {
        let target = safe_return_to(Some(&candidate));
        prop_assert!(target.starts_with('/'));
        prop_assert!(!target.starts_with("//") && !target.starts_with("/\\"));
        // A valid URI: visible ASCII only, what a URI may not hold percent-encoded, once.
        prop_assert!(target.bytes().all(|b| b.is_ascii_graphic()), "{}", target);
        prop_assert_eq!(safe_return_to(Some(&target)), target.clone());
        let plain = candidate
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
        if plain {
            prop_assert!(target == candidate || target == "/account");
        }
    }

    /// A CSRF value matches only the session's own, and an empty expectation matches nothing.
    #[test]
    fn csrf_values_match_only_their_session(token in "pcs_[A-Za-z0-9_-]{43}", presented in any::<String>()) {
        let expected = csrf_token(&token);
        prop_assert!(csrf_matches(&expected, &expected));
        prop_assert_eq!(csrf_matches(&presented, &expected), presented == expected);
        prop_assert!(!csrf_matches(&presented, ""));
    }

    /// Every error the API answers is an RFC 9457 problem document: the HTTP status is the
    /// document's, the type names the reason, and the text, whatever it quotes, is valid JSON.
    #[test]
    fn every_error_is_a_valid_problem_document(error in api_error()) {
        let problem = error.problem();
        let response = error.into_response();
        prop_assert_eq!(response.status().as_u16(), problem.status);
        prop_assert!(response.status().is_client_error() || response.status().is_server_error());
        prop_assert_eq!(
            response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(b"application/problem+json".as_slice())
        );
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let reason = json["reason"].as_str().unwrap();
        prop_assert!(!reason.is_empty() && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        prop_assert_eq!(json["type"].as_str().unwrap(), format!("urn:portcullis:problem:{reason}"));
        prop_assert_eq!(json["status"].as_u64(), Some(u64::from(problem.status)));
        prop_assert!(json["title"].as_str().is_some_and(|t| !t.is_empty()));
        prop_assert!(json["detail"].is_string());
        for key in json.as_object().unwrap().keys() {
            prop_assert!(
                ["type", "title", "status", "detail", "reason", "ended_reason"].contains(&key.as_str()),
                "{} is not a documented member", key
            );
        }
        if reason == "revoked" || reason == "session_ended" {
            prop_assert!(json["ended_reason"].is_string());
        }
    }
}

fn api_error() -> impl Strategy<Value = ApiError> {
    let text = || any::<String>();
    let reason = (0..EndReason::ALL.len()).prop_map(|i| EndReason::ALL[i]);
    prop_oneof![
        reason
            .clone()
            .prop_map(|r| ApiError::Engine(EngineError::Rejected(Rejection::for_ending(r)))),
        prop_oneof![Just(Rejection::Malformed), Just(Rejection::Unknown)]
            .prop_map(|r| ApiError::Engine(EngineError::Rejected(r))),
        text().prop_map(|t| ApiError::Engine(EngineError::UnknownPolicy(t))),
        text().prop_map(|t| ApiError::Engine(EngineError::Invalid(t))),
        text().prop_map(|t| ApiError::Engine(EngineError::PolicyNotAllowed(t))),
        text().prop_map(|t| ApiError::Engine(EngineError::UnknownApplication(t))),
        text().prop_map(|t| ApiError::Engine(EngineError::NameTaken(t))),
        (any::<usize>(), any::<usize>())
            .prop_map(|(size, limit)| ApiError::Engine(EngineError::DataTooLarge { size, limit })),
        LazyJust::new(|| ApiError::Engine(EngineError::NotFound)),
        LazyJust::new(|| ApiError::Engine(EngineError::Conflict)),
        LazyJust::new(|| ApiError::Engine(EngineError::LimitReached)),
        LazyJust::new(|| ApiError::Engine(EngineError::GrantRequired(Grant::EndEverywhere))),
        text().prop_map(|t| ApiError::Engine(EngineError::Store(StoreError::Corrupt(t)))),
        text()
            .prop_map(|t| ApiError::Engine(EngineError::Store(StoreError::Unavailable(t.into())))),
        text().prop_map(ApiError::MalformedJson),
        text().prop_map(ApiError::InvalidBody),
        text().prop_map(ApiError::InvalidParameter),
        text().prop_map(ApiError::UnknownGrant),
        reason.prop_map(ApiError::SessionEnded),
        LazyJust::new(|| ApiError::MissingApiKey),
        LazyJust::new(|| ApiError::InvalidApiKey),
        LazyJust::new(|| ApiError::UnsupportedMediaType),
        LazyJust::new(|| ApiError::BodyTooLarge),
        LazyJust::new(|| ApiError::NoRoute),
        LazyJust::new(|| ApiError::MethodNotAllowed),
        LazyJust::new(|| ApiError::ParentNotLive),
        LazyJust::new(|| ApiError::ApplicationNotAllowed),
        LazyJust::new(|| ApiError::Internal),
    ]
}

/// An address a hop may report: IPv4, IPv6, or IPv4-mapped IPv6 (which names the IPv4 client).
fn hop_address() -> impl Strategy<Value = std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ]
}

/// `ip` as an `X-Forwarded-For` entry, with or without a port.
fn xff_entry(ip: std::net::IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (std::net::IpAddr::V4(v4), Some(port)) => format!("{v4}:{port}"),
        (std::net::IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
        (ip, None) => ip.to_string(),
    }
}

/// `ip` as a `Forwarded` element (RFC 7239 §6: IPv6 quoted and bracketed).
fn forwarded_element(ip: std::net::IpAddr, port: Option<u16>, https: bool) -> String {
    let node = match (ip, port) {
        (std::net::IpAddr::V4(v4), None) => v4.to_string(),
        (std::net::IpAddr::V4(v4), Some(port)) => format!("\"{v4}:{port}\""),
        (std::net::IpAddr::V6(v6), None) => format!("\"[{v6}]\""),
        (std::net::IpAddr::V6(v6), Some(port)) => format!("\"[{v6}]:{port}\""),
    };
    let proto = if https { "https" } else { "http" };
    format!("for={node};proto={proto};by=_proxy")
}

/// The client a chain names, the plain way: the nearest hop that is not a trusted proxy, or the
/// farthest one when every hop is.
fn expected_client(
    hops: &[std::net::IpAddr],
    trusted: &portcullis_http::peer::TrustedProxies,
) -> std::net::IpAddr {
    let hops: Vec<_> = hops.iter().map(|ip| ip.to_canonical()).collect();
    hops.iter()
        .rev()
        .find(|ip| !trusted.contains(**ip))
        .or_else(|| hops.first())
        .copied()
        .expect("a chain has a hop")
}

proptest! {
    /// Throttling counts the right address: whatever `Forwarded` and `X-Forwarded-For` headers a
    /// client sends straight to us (no trusted proxy in between), they are never read: the
    /// client is the TCP peer.
    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_never_read(
        peer in hop_address(),
        forwarded in prop::collection::vec(any::<u8>(), 0..80),
        xff in prop::collection::vec(any::<u8>(), 0..80),
        proxies in prop::collection::vec(hop_address(), 0..3),
    ) {
        use portcullis_http::peer::{TrustedProxies, resolve_client};
        let nets: Vec<String> = proxies.iter().map(|ip| ip.to_canonical().to_string()).collect();
        let trusted = TrustedProxies::parse(nets.iter().map(String::as_str)).unwrap();
        prop_assume!(!trusted.contains(peer.to_canonical()));
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&forwarded) {
            headers.insert("forwarded", value);
        }
        if let Ok(value) = HeaderValue::from_bytes(&xff) {
            headers.insert("x-forwarded-for", value);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let client = resolve_client(peer, &headers, &trusted);
        prop_assert_eq!(client.ip, peer.to_canonical());
        prop_assert!(!client.forwarded_https);
    }

    /// From a trusted proxy, a well-formed chain names the same client in either header: the
    /// nearest hop that is not itself a trusted proxy, ports, quoting and IPv4-mapped forms
    /// aside. Entries a client prepends cannot move it, and any bytes at all answer without a
    /// panic, naming the peer or an address the headers carry.
    #[test]
    fn a_trusted_proxys_chain_names_the_nearest_untrusted_hop(
        chain in prop::collection::vec((hop_address(), any::<Option<u16>>(), any::<bool>()), 1..6),
        trusted_hops in prop::collection::vec(any::<bool>(), 6),
        spoofed in prop::collection::vec(hop_address(), 0..3),
        garbage in prop::collection::vec(any::<u8>(), 0..60),
    ) {
        use portcullis_http::peer::{ProxyHeaders, TrustedProxies, resolve_client};
        let peer: std::net::IpAddr = "10.9.9.9".parse().unwrap();
        let mut nets = vec!["10.9.9.9/32".to_owned()];
        for ((ip, _, _), trusted) in chain.iter().zip(&trusted_hops) {
            if *trusted {
                nets.push(ip.to_canonical().to_string());
            }
        }
        let trusted = TrustedProxies::parse(nets.iter().map(String::as_str)).unwrap();
        let ips: Vec<_> = chain.iter().map(|(ip, _, _)| *ip).collect();
        let want = expected_client(&ips, &trusted);

        let xff = chain.iter().map(|(ip, port, _)| xff_entry(*ip, *port)).collect::<Vec<_>>().join(", ");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(&xff).unwrap());
        prop_assert_eq!(resolve_client(peer, &headers, &trusted).ip, want, "X-Forwarded-For: {}", xff);

        let forwarded = chain
            .iter()
            .map(|(ip, port, https)| forwarded_element(*ip, *port, *https))
            .collect::<Vec<_>>()
            .join(", ");
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_str(&forwarded).unwrap());
        let behind_forwarded = trusted.clone().writing(ProxyHeaders::Forwarded);
        let client = resolve_client(peer, &headers, &behind_forwarded);
        prop_assert_eq!(client.ip, want, "Forwarded: {}", &forwarded);

        // A client's own entries come first (leftmost): they can only matter when every hop
        // after them is a trusted proxy.
        let last_untrusted = ips.iter().any(|ip| !trusted.contains(ip.to_canonical()));
        let spoof = spoofed.iter().map(|ip| xff_entry(*ip, None)).collect::<Vec<_>>();
        let prefixed = spoof.iter().cloned().chain([xff.clone()]).collect::<Vec<_>>().join(", ");
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(&prefixed).unwrap());
        if last_untrusted {
            prop_assert_eq!(resolve_client(peer, &headers, &trusted).ip, want);
        }

        // Garbage before a chain (any bytes a client can send): never read once the walk from
        // the right has found an untrusted hop; else the answer is the peer or an address the
        // header carries.
        let mut headers = HeaderMap::new();
        let mut line = garbage.clone();
        line.extend_from_slice(b", ");
        line.extend_from_slice(xff.as_bytes());
        if let Ok(value) = HeaderValue::from_bytes(&line) {
            headers.insert("x-forwarded-for", value.clone());
            headers.insert("forwarded", value);
            let got = resolve_client(peer, &headers, &trusted).ip;
            if last_untrusted {
                prop_assert_eq!(got, want, "from {:?}", String::from_utf8_lossy(&line));
            }
            let carried = got == peer
                || ips.iter().any(|ip| ip.to_canonical() == got)
                || String::from_utf8_lossy(&line).contains(&got.to_string());
            prop_assert!(carried, "{} from {:?}", got, String::from_utf8_lossy(&line));
        }
    }
}
