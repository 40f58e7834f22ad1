//! Property tests of the HTTP layer's parsers of untrusted input and of its problem answers:
//! cookie headers, user agents, `return_to`, CSRF values, and every error as a problem
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
        prop_assert!(!target.chars().any(char::is_control));
        prop_assert!(target == candidate || target == "/account");
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
