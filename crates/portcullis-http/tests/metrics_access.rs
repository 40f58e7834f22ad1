//! `/metrics` is limited to an address or a token, and latency is labelled by route template.

use axum::http::{HeaderMap, HeaderValue, header};
use portcullis_http::peer::TrustedProxies;
use portcullis_http::{MetricsAccess, route_template};

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

#[test]
fn metrics_are_served_to_loopback_by_default_and_to_no_one_else() {
    let access = MetricsAccess::default();
    let none = HeaderMap::new();
    assert!(access.allows(Some("127.0.0.1".parse().unwrap()), &none));
    assert!(access.allows(Some("::1".parse().unwrap()), &none));
    assert!(!access.allows(Some("203.0.113.9".parse().unwrap()), &none));
    assert!(!access.allows(Some("203.0.113.9".parse().unwrap()), &bearer("anything")));
    // Not over TCP (the admin socket): the socket's permissions are the credential.
    assert!(access.allows(None, &none));
}

#[test]
fn metrics_are_served_to_configured_networks_or_the_token() {
    let access = MetricsAccess {
        allow: TrustedProxies::parse(["10.0.0.0/8"]).unwrap(),
        token: Some("a-long-metrics-token".into()),
    };
    let none = HeaderMap::new();
    assert!(access.allows(Some("10.1.2.3".parse().unwrap()), &none));
    assert!(!access.allows(Some("127.0.0.1".parse().unwrap()), &none));
    let outside = Some("203.0.113.9".parse().unwrap());
    assert!(access.allows(outside, &bearer("a-long-metrics-token")));
    assert!(!access.allows(outside, &bearer("a-long-metrics-tokeN")));
    assert!(!access.allows(outside, &none));
    // RFC 9110 §11.1: the scheme's name is case-insensitive.
    let mut lower = HeaderMap::new();
    lower.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("bearer a-long-metrics-token"),
    );
    assert!(access.allows(outside, &lower));
}

#[test]
fn request_latency_is_labelled_by_route_template_not_by_path() {
    assert_eq!(route_template("/v1/sessions/ses_abc"), "/v1/sessions/{id}");
    assert_eq!(
        route_template("/v1/sessions/ses_abc/data"),
        "/v1/sessions/{id}/data"
    );
    assert_eq!(
        route_template("/v1/sessions/validate"),
        "/v1/sessions/validate"
    );
    assert_eq!(
        route_template("/v1/subjects/alice/sessions"),
        "/v1/subjects/{subject}/sessions"
    );
    assert_eq!(
        route_template("/admin/users/bob"),
        "/admin/users/{username}"
    );
    assert_eq!(route_template("/assets/app.css"), "/assets/{name}");
    assert_eq!(route_template("/metrics"), "/metrics");
}
