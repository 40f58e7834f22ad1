//! The session API v1 over real HTTP on loopback: every row of DESIGN §5, and every error as
//! a problem document.

mod common;

use std::time::Duration;

use common::TestServer;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn every_v1_call_end_to_end() {
    let s = TestServer::start().await;
    // Create, with the deadlines and the rule behind each.
    let (status, created) = s
        .post(
            "/v1/sessions",
            json!({
                "subject": "alice", "remember_me": false, "policy": "short",
                "auth": {"methods": ["pwd", "otp"], "level": 2},
                "device": {"user_agent": "Firefox", "ip": "192.0.2.10"},
                "data": {"cart": [1]},
            }),
        )
        .await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["session"]["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("pcs_"));
    assert!(id.starts_with("ses_"));
    let session = &created["session"];
    assert_eq!(
        session["deadlines"]["idle"]["rule"],
        "policy short: idle 5m (configured)"
    );
    assert_eq!(
        session["deadlines"]["absolute"]["rule"],
        "policy short: absolute 12h (built-in default)"
    );
    assert_eq!(session["created_at"], "2026-01-01T00:00:00Z");
    assert_eq!(session["auth"]["level"], 2);

    // Validate with and without activity; warning inside the lead time.
    s.clock.advance(Duration::from_secs(250));
    let (status, v) = s
        .post(
            "/v1/sessions/validate",
            json!({"token": token, "activity": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["expires_in"].as_u64(), v["warning"].as_bool()),
        (Some(50), Some(true))
    );
    let (_, v) = s.validate(&token).await;
    assert_eq!(
        (v["expires_in"].as_u64(), v["warning"].as_bool()),
        (Some(300), Some(false))
    );

    // Rotate: the old token is dead at once.
    let (status, rotated) = s.post("/v1/sessions/rotate", json!({"token": token})).await;
    assert_eq!(status, 200);
    let token2 = rotated["token"].as_str().unwrap().to_owned();
    let (status, problem) = s.validate(&token).await;
    assert_eq!((status, problem["reason"].as_str()), (401, Some("unknown")));

    // Elevate: listed with its scope; the token rotates again.
    let (status, elevated) = s
        .post(
            "/v1/sessions/elevate",
            json!({"token": token2, "methods": ["pwd"], "level": 2, "scope": "payments"}),
        )
        .await;
    assert_eq!(status, 200);
    let token3 = elevated["token"].as_str().unwrap().to_owned();
    assert_eq!(elevated["session"]["elevations"][0]["scope"], "payments");
    assert_eq!(s.validate(&token2).await.0, 401);

    // Read one, replace its data.
    let (status, view) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!((status, view["subject"].as_str()), (200, Some("alice")));
    assert!(
        view.to_string().find(&token3).is_none(),
        "the view never holds the token"
    );
    let (status, view) = s
        .send(
            Method::PUT,
            &format!("/v1/sessions/{id}/data"),
            Some(json!({"cart": [1, 2]})),
        )
        .await;
    assert_eq!(
        (status, view["data"].clone()),
        (200, json!({"cart": [1, 2]}))
    );

    // List the subject; force logout all but the current one.
    let (other, _) = s.create("alice", "default").await;
    let (status, list) = s.get("/v1/subjects/alice/sessions").await;
    assert_eq!(
        (status, list["sessions"].as_array().unwrap().len()),
        (200, 2)
    );
    let (status, ended) = s
        .delete(&format!(
            "/v1/subjects/alice/sessions?except={id}&reason=password_changed"
        ))
        .await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(1)));
    let (status, problem) = s.validate(&other).await;
    assert_eq!(
        (
            status,
            problem["reason"].as_str(),
            problem["ended_reason"].as_str()
        ),
        (401, Some("revoked"), Some("password_changed"))
    );
    assert_eq!(s.validate(&token3).await.0, 200);

    // Admin end, then logout is idempotent.
    let (status, _) = s.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 204);
    let (status, problem) = s.validate(&token3).await;
    assert_eq!(
        (status, problem["ended_reason"].as_str()),
        (401, Some("revoked_admin"))
    );
    // Ended, it is gone (410) and says how, with the session as it ended.
    let (status, gone) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(
        (
            status,
            gone["reason"].as_str(),
            gone["ended_reason"].as_str(),
            gone["session"]["ended"]["reason"].as_str()
        ),
        (
            410,
            Some("session_ended"),
            Some("revoked_admin"),
            Some("revoked_admin")
        )
    );
    let (t, _) = s.create("bob", "default").await;
    assert_eq!(
        s.post("/v1/sessions/logout", json!({"token": t})).await.0,
        204
    );
    assert_eq!(
        s.post("/v1/sessions/logout", json!({"token": t})).await.0,
        204
    );
    let (status, problem) = s.validate(&t).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("logged_out"))
    );

    // The audit trail, paged.
    let (status, page) = s.get("/v1/events?subject=alice&limit=3").await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["kind"], "session.created");
    let next = page["next"].as_u64().unwrap();
    let (_, rest) = s
        .get(&format!("/v1/events?subject=alice&after={next}&limit=1000"))
        .await;
    let kinds: Vec<_> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(kinds.contains(&"session.ended".to_owned()));
    assert!(rest["next"].is_null());
    let (_, by_session) = s.get(&format!("/v1/events?session={id}")).await;
    assert!(
        by_session["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["session_id"] == id.as_str())
    );
    for token in [&token, &token2, &token3, &other, &t] {
        assert!(
            !page.to_string().contains(token.as_str())
                && !rest.to_string().contains(token.as_str())
        );
    }
}

#[tokio::test]
async fn asvs5_7_3_1_timeouts_over_http_by_moving_the_clock() {
    let s = TestServer::start().await;
    let (token, _) = s.create("alice", "short").await;
    s.clock.advance(Duration::from_secs(301));
    let (status, problem) = s.validate(&token).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("expired_idle"))
    );
    let (token, _) = s.create("alice", "default").await;
    for _ in 0..80 {
        s.clock.advance(Duration::from_secs(600));
        if s.validate(&token).await.0 != 200 {
            break;
        }
    }
    let (status, problem) = s.validate(&token).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("expired_absolute"))
    );
}

#[tokio::test]
async fn bad_input_gets_a_problem_with_the_right_status_and_reason() {
    let s = TestServer::start().await;
    let post_raw = |path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let request = s
            .http
            .post(s.url(path))
            .bearer_auth(&s.key)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body["reason"].as_str().unwrap().to_owned())
        }
    };
    assert_eq!(
        post_raw("/v1/sessions", "application/json", b"{not json".to_vec()).await,
        (400, "malformed_json".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            br#"{"subject":"a","extra":1}"#.to_vec()
        )
        .await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            br#"{"subject":7}"#.to_vec()
        )
        .await,
        (422, "invalid_body".into())
    );
    assert_eq!(
        post_raw("/v1/sessions", "text/plain", br#"{"subject":"a"}"#.to_vec()).await,
        (415, "unsupported_media_type".into())
    );
    // A media type with parameters takes axum's way; a body that fails to parse says where.
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json; charset=utf-8",
            b"{not json".to_vec()
        )
        .await,
        (400, "malformed_json".into())
    );
    let (status, problem) = s
        .post("/v1/sessions", json!({"subject": "a", "device": {"ip": 7}}))
        .await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (422, Some("invalid_body"))
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("device.ip"),
        "{problem}"
    );
    let huge = format!(r#"{{"subject":"a","data":"{}"}}"#, "x".repeat(200_000));
    assert_eq!(
        post_raw("/v1/sessions", "application/json", huge.into_bytes()).await,
        (413, "body_too_large".into())
    );
    let big = format!(r#"{{"subject":"a","data":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(
        post_raw("/v1/sessions", "application/json", big.into_bytes()).await,
        (413, "data_too_large".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            br#"{"subject":"a","policy":"nope"}"#.to_vec()
        )
        .await,
        (400, "unknown_policy".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            br#"{"subject":""}"#.to_vec()
        )
        .await,
        (422, "invalid_body".into())
    );
    // 256 characters are within the schema, but over the engine's 256 bytes of UTF-8.
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            json!({"subject": "é".repeat(256)}).to_string().into_bytes()
        )
        .await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions",
            "application/json",
            br#"{"subject":"a","auth":{"level":9}}"#.to_vec()
        )
        .await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions/validate",
            "application/json",
            br#"{"token":"pcs_short"}"#.to_vec()
        )
        .await,
        (401, "malformed_token".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions/validate",
            "application/json",
            format!(r#"{{"token":"pcs_{}"}}"#, "A".repeat(43)).into_bytes()
        )
        .await,
        (401, "unknown".into())
    );
    assert_eq!(
        post_raw(
            "/v1/sessions/logout",
            "application/json",
            br#"{"token":"nonsense"}"#.to_vec()
        )
        .await,
        (401, "malformed_token".into())
    );

    // Session limit with `deny`.
    s.create("carol", "single").await;
    let (status, problem) = s
        .post(
            "/v1/sessions",
            json!({"subject": "carol", "policy": "single"}),
        )
        .await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (409, Some("session_limit"))
    );

    // Unknown things.
    assert_eq!(s.get("/v1/sessions/ses_nope").await.0, 404);
    assert_eq!(s.delete("/v1/sessions/ses_nope").await.0, 404);
    let (status, problem) = s.get("/v1/nothing-here").await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (404, Some("no_route"))
    );
    let (status, problem) = s.send(Method::PATCH, "/v1/sessions", None).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, problem) = s.get("/v1/events?limit=0").await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, problem) = s.get("/v1/events?after=-1").await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, problem) = s.delete("/v1/subjects/carol/sessions?reason=because").await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (400, Some("invalid_parameter"))
    );
    let (status, problem) = s
        .delete("/v1/subjects/carol/sessions?reason=expired_idle")
        .await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn api_keys_are_required_and_checked() {
    let s = TestServer::start().await;
    let response = s
        .http
        .post(s.url("/v1/sessions/validate"))
        .json(&json!({"token": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "missing_api_key");
    for wrong in [
        "pck_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "garbage",
        "pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let response = s
            .http
            .get(s.url("/v1/events"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["reason"], "invalid_api_key");
    }
    // A revoked key stops working at once.
    let (secret, key) = s
        .engine
        .create_api_key("temp", "test", &portcullis_core::Actor::cli())
        .await
        .unwrap();
    let ok = s
        .http
        .get(s.url("/v1/events"))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    s.engine
        .revoke_api_key(&key.id, &portcullis_core::Actor::cli())
        .await
        .unwrap();
    let refused = s
        .http
        .get(s.url("/v1/events"))
        .bearer_auth(secret.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Ops endpoints need no key.
    for path in ["/healthz", "/readyz", "/openapi.json", "/metrics"] {
        assert_eq!(
            s.http.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
}

/// A kept-alive connection checks its key once and then trusts exactly those bytes: until the
/// engine revokes any key (at once), or for `KEY_MEMORY` when the key is revoked behind the
/// engine's back, as another node of a shared store would. Another key on the same connection
/// is checked on its own and is the one the audit trail names.
#[tokio::test]
async fn a_connection_trusts_a_checked_api_key_until_a_revocation_or_key_memory() {
    use portcullis_core::{Actor, ApiKeyStore, AuditEvent, EventKind, EventQuery};
    use portcullis_http::peer::KEY_MEMORY;

    let s = TestServer::start().await;
    let (a, key_a) = s
        .engine
        .create_api_key("a", "test", &Actor::cli())
        .await
        .unwrap();
    let (b, key_b) = s
        .engine
        .create_api_key("b", "test", &Actor::cli())
        .await
        .unwrap();
    // One client, so one kept-alive connection; `fresh` opens its own.
    let kept = reqwest::Client::new();
    let status = |client: &reqwest::Client, secret: &str| {
        let request = client
            .get(s.url("/v1/events?limit=1"))
            .bearer_auth(secret)
            .send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(status(&kept, a.expose()).await, 200);

    // Revoked in the store without this engine knowing.
    let revoked = AuditEvent {
        seq: 0,
        at: s.engine.now(),
        kind: EventKind::ApiKeyRevoked,
        actor: Actor::cli(),
        session_id: None,
        subject: None,
        policy: None,
        application: Some(key_a.application.clone()),
        reason: None,
        detail: json!({}),
    };
    s.engine
        .store()
        .revoke_api_key(&key_a.id, s.engine.now(), revoked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status(&reqwest::Client::new(), a.expose()).await,
        401,
        "a new connection checks the key"
    );
    assert_eq!(
        status(&kept, a.expose()).await,
        200,
        "the kept connection still trusts what it checked"
    );
    s.clock.advance(KEY_MEMORY);
    assert_eq!(
        status(&kept, a.expose()).await,
        401,
        "not beyond KEY_MEMORY"
    );

    // Another key on the same connection: checked, remembered, and named in the trail.
    assert_eq!(status(&kept, b.expose()).await, 200);
    // One byte off: the last character replaced by another (never by itself).
    let last = if b.expose().ends_with('A') { "B" } else { "A" };
    let wrong = format!("{}{last}", &b.expose()[..b.expose().len() - 1]);
    assert_ne!(wrong, b.expose());
    assert_eq!(status(&kept, &wrong).await, 401, "one byte off is refused");
    let created = kept
        .post(s.url("/v1/sessions"))
        .bearer_auth(b.expose())
        .json(&json!({"subject": "memo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let events = s
        .engine
        .events(
            &EventQuery {
                subject: Some("memo".into()),
                limit: 10,
                ..EventQuery::default()
            },
            false,
            &portcullis_core::Principal::operator(),
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].actor,
        Actor::api_key(&key_b.application, &key_b.id)
    );

    // A revocation through the engine ends the trust at once, with no clock movement.
    s.engine
        .revoke_api_key(&key_b.id, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(status(&kept, b.expose()).await, 401);
}

/// Every route of API v1 refuses a caller without a key before it reads the request: the key
/// check is an extractor each v1 handler takes first, so one left out would show here.
#[tokio::test]
async fn every_v1_route_refuses_a_caller_without_a_key() {
    let s = TestServer::start().await;
    let (token, id) = s.create("alice", "default").await;
    let routes = [
        ("POST", "/v1/sessions".to_owned()),
        ("POST", "/v1/sessions/validate".to_owned()),
        ("POST", "/v1/sessions/rotate".to_owned()),
        ("POST", "/v1/sessions/elevate".to_owned()),
        ("POST", "/v1/sessions/logout".to_owned()),
        ("GET", format!("/v1/sessions/{id}")),
        ("DELETE", format!("/v1/sessions/{id}")),
        ("PUT", format!("/v1/sessions/{id}/data")),
        ("GET", "/v1/subjects/alice/sessions".to_owned()),
        ("DELETE", "/v1/subjects/alice/sessions".to_owned()),
        ("GET", "/v1/events".to_owned()),
    ];
    for (method, path) in routes {
        for key in [
            None,
            Some("pck_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            let mut request = s
                .http
                .request(method.parse().unwrap(), s.url(&path))
                .json(&json!({"token": token, "subject": "alice"}));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            let body: serde_json::Value = response.json().await.unwrap();
            let expected = if key.is_some() {
                "invalid_api_key"
            } else {
                "missing_api_key"
            };
            assert_eq!(body["reason"], expected, "{method} {path}");
        }
    }
    // Nothing above reached the session.
    let (status, _) = s.validate(&token).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn asvs5_14_3_2_answers_are_not_cacheable() {
    let s = TestServer::start().await;
    let response = s
        .http
        .post(s.url("/v1/sessions"))
        .bearer_auth(&s.key)
        .json(&json!({"subject": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn fail_closed_when_the_store_cannot_write() {
    let s = TestServer::start().await;
    let (token, id) = s.create("alice", "default").await;
    s.store_down(true);
    let (status, problem) = s.post("/v1/sessions", json!({"subject": "bob"})).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (503, Some("store_unavailable"))
    );
    // The store's own error text is for the operator's log, not for the caller.
    assert_eq!(problem["detail"], "the store is unavailable; try again");
    let (status, problem) = s.post("/v1/sessions/logout", json!({"token": token})).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (503, Some("store_unavailable"))
    );
    let (status, _) = s.post("/v1/sessions/rotate", json!({"token": token})).await;
    assert_eq!(status, 503);
    let (status, _) = s.delete(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 503);
    let response = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    // RFC 9110 §10.2.3: a 503 says when to try again.
    assert_eq!(response.headers()["retry-after"], "5");
    // Nothing was lost or half-done: once back, the session works and can be ended.
    s.store_down(false);
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(s.validate(&token).await.0, 200);
    assert_eq!(
        s.post("/v1/sessions/logout", json!({"token": token}))
            .await
            .0,
        204
    );
    assert_eq!(s.validate(&token).await.0, 401);
}

/// Signing out while the store cannot record it says so, with the cookie kept: the person may
/// still be signed in (here and in the applications under the SSO session), and trying again
/// once the store is back ends the same session.
#[tokio::test]
async fn a_sign_out_the_store_cannot_record_says_the_person_may_still_be_signed_in() {
    use portcullis_core::{Actor, AuthContext, NewSession, Principal, SSO_POLICY};
    use portcullis_http::ui::web::csrf_token;

    let s = TestServer::start().await;
    let alice = s
        .accounts
        .add_user("alice", "a long passphrase", &Actor::cli())
        .await
        .unwrap();
    let sso = s
        .engine
        .create(
            NewSession {
                subject: alice.id.clone(),
                policy: Some(SSO_POLICY.to_owned()),
                auth: AuthContext {
                    methods: vec!["pwd".to_owned()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &Principal::portcullis(Actor::user(&alice.id)),
        )
        .await
        .unwrap();
    let token = sso.token.expose().to_owned();
    let sign_out = || {
        s.http
            .post(s.url("/logout"))
            .header("cookie", format!("__Host-portcullis={token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={}", csrf_token(&token)))
            .send()
    };

    s.store_down(true);
    let refused = sign_out().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(
        refused.headers().get("set-cookie").is_none(),
        "the cookie is kept for the next try"
    );
    let page = refused.text().await.unwrap();
    assert!(page.contains("You may still be signed in"), "{page}");

    let live = || async {
        s.engine
            .validate(
                &token,
                false,
                &Default::default(),
                &Principal::portcullis(Actor::system()),
            )
            .await
            .is_ok()
    };
    s.store_down(false);
    assert!(live().await, "the session is still live");
    let signed_out = sign_out().await.unwrap();
    assert_eq!(signed_out.status(), 200);
    assert!(
        signed_out
            .text()
            .await
            .unwrap()
            .contains("You are signed out")
    );
    assert!(!live().await);
}

#[tokio::test]
async fn openapi_describes_every_v1_call() {
    let s = TestServer::start().await;
    let doc: serde_json::Value = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/sessions", "post"),
        ("/v1/sessions/validate", "post"),
        ("/v1/sessions/rotate", "post"),
        ("/v1/sessions/elevate", "post"),
        ("/v1/sessions/logout", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/sessions/{id}/data", "put"),
        ("/v1/subjects/{subject}/sessions", "get"),
        ("/v1/subjects/{subject}/sessions", "delete"),
        ("/v1/events", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(doc["components"]["schemas"]["SessionView"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
}

/// The keys of `value` against the OpenAPI schema `schema`: nothing undocumented, nothing
/// required missing, and the same for every nested object the schema names.
fn assert_matches_schema(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let resolve = |schema: &Value| -> Value {
        let mut schema = schema.clone();
        if let Some(one_of) = schema.get("oneOf").and_then(Value::as_array) {
            schema = one_of
                .iter()
                .find(|s| s.get("type") != Some(&json!("null")))
                .cloned()
                .unwrap_or(Value::Null);
        }
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => doc["components"]["schemas"][r.rsplit('/').next().unwrap()].clone(),
            None => schema,
        }
    };
    let schema = resolve(schema);
    match value {
        Value::Object(fields) if schema.get("properties").is_some() => {
            let properties = schema["properties"].as_object().unwrap();
            for key in fields.keys() {
                assert!(properties.contains_key(key), "{at}.{key} is not documented");
            }
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap();
                assert!(
                    fields.contains_key(key),
                    "{at}.{key} is required but missing"
                );
            }
            for (key, field) in fields {
                assert_matches_schema(doc, &properties[key], field, &format!("{at}.{key}"));
            }
        }
        Value::Array(items) if schema.get("items").is_some() => {
            for (i, item) in items.iter().enumerate() {
                assert_matches_schema(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
        }
        Value::String(text) if schema.get("format") == Some(&json!("date-time")) => {
            assert!(
                text.ends_with('Z') && text.len() >= 20,
                "{at} = {text} is not RFC 3339 UTC"
            );
        }
        _ => {}
    }
}

#[tokio::test]
async fn session_views_write_what_openapi_describes() {
    let s = TestServer::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let (status, issued) = s
        .post(
            "/v1/sessions",
            json!({
                "subject": "zoë \"quoted\"", "policy": "short",
                "auth": {"methods": ["pwd"], "level": 1},
                "device": {"user_agent": "Mozilla/5.0 (X11; \u{1}) \"x\"", "ip": "2001:db8::1"},
                "data": {"nested": {"list": [1, "two", null, true]}, "text": "a\nb"},
            }),
        )
        .await;
    assert_eq!(status, 201);
    assert_matches_schema(&doc, &schema("IssuedView"), &issued, "issued");
    assert_eq!(issued["session"]["subject"], "zoë \"quoted\"");
    assert_eq!(
        issued["session"]["device"]["user_agent"],
        "Mozilla/5.0 (X11; \u{1}) \"x\""
    );
    assert_eq!(issued["session"]["data"]["text"], "a\nb");
    let token = issued["token"].as_str().unwrap();
    let (status, elevated) = s
        .post(
            "/v1/sessions/elevate",
            json!({"token": token, "methods": ["otp"], "level": 2, "scope": "payments"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(elevated["session"]["elevations"][0]["scope"], "payments");
    assert_matches_schema(&doc, &schema("IssuedView"), &elevated, "elevated");
    let token = elevated["token"].as_str().unwrap();
    let (status, validated) = s.validate(token).await;
    assert_eq!(status, 200);
    assert_matches_schema(&doc, &schema("ValidatedView"), &validated, "validated");
    assert_eq!(validated["session"], elevated["session"]);

    let id = validated["session"]["id"].as_str().unwrap();
    let subject = "zo%C3%AB%20%22quoted%22";
    let (status, list) = s.get(&format!("/v1/subjects/{subject}/sessions")).await;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"].as_array().map(Vec::len), Some(1));
    assert_matches_schema(&doc, &schema("SessionListView"), &list, "list");
    assert_eq!(s.delete(&format!("/v1/sessions/{id}")).await.0, 204);
    let (status, gone) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 410);
    assert_eq!(gone["session"]["ended"]["reason"], "revoked_admin");
    assert_matches_schema(&doc, &schema("SessionGoneProblem"), &gone, "gone");
    let (status, problem) = s.get("/v1/sessions/ses_nope").await;
    assert_eq!(status, 404);
    assert_matches_schema(&doc, &schema("Problem"), &problem, "problem");
}

// What Schemathesis (`crates/portcullis/tests/contract.rs`) found on the document as it was, one
// test per kind of finding: statuses documented on no operation, integers and strings without
// the bounds the server applies, schema-violating bodies accepted, and an ended session
// answering 200 by id after its `DELETE`.

/// A raw request with the test key; the status, and the problem's `reason` when there is one.
async fn raw(
    s: &TestServer,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Option<String>) {
    let mut request = s
        .http
        .request(method, s.url(path))
        .bearer_auth(&s.key)
        .body(body.to_vec());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let problem = response.headers().get("content-type").map(|v| v.as_bytes())
        == Some(b"application/problem+json".as_slice());
    let text = response.text().await.unwrap();
    if status >= 400 {
        assert!(
            problem,
            "{path}: {status} is not a problem document: {text}"
        );
    }
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned));
    (status, reason)
}

#[tokio::test]
async fn openapi_documents_every_status_an_operation_answers() {
    let s = TestServer::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let (_, id) = s.create("alice", "default").await;
    let mut provoked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", &id).replace("{subject}", "alice");
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.as_str() >= "400" {
                    assert!(
                        response["content"]["application/problem+json"]["schema"]["$ref"]
                            .is_string(),
                        "{method} {path}: {status} is not documented as a problem"
                    );
                }
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let with_body = operation.get("requestBody").is_some();
            // Answers every operation can give: no key, and for a body every way it can be
            // wrong; each must be documented on the operation.
            let mut answers = vec![{
                let response = s
                    .http
                    .request(method.clone(), s.url(&concrete))
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            }];
            if with_body {
                for (content_type, body) in [
                    (None, b"{}".as_slice()),
                    (Some("text/plain"), b"{}".as_slice()),
                    (Some("application/json"), b"{not json".as_slice()),
                    (Some("application/json"), &[b'"'; 40_000]),
                ] {
                    answers.push(
                        raw(&s, method.clone(), &concrete, content_type, body)
                            .await
                            .0,
                    );
                }
                if path != "/v1/sessions/{id}/data" {
                    for body in [b"{\"unknown\":1}".as_slice(), b"[]".as_slice()] {
                        let (status, _) = raw(
                            &s,
                            method.clone(),
                            &concrete,
                            Some("application/json"),
                            body,
                        )
                        .await;
                        assert_eq!(status, 422, "{method} {path}");
                        answers.push(status);
                    }
                }
            }
            if operation["parameters"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
            {
                let bad = if path.contains('{') {
                    path.replace("{id}", "%FF").replace("{subject}", "%FF")
                } else {
                    format!("{concrete}?unknown=1")
                };
                let (content_type, body) = if with_body {
                    (Some("application/json"), b"{}".as_slice())
                } else {
                    (None, b"".as_slice())
                };
                let (status, reason) = raw(&s, method.clone(), &bad, content_type, body).await;
                assert_eq!(
                    (status, reason.as_deref()),
                    (400, Some("invalid_parameter")),
                    "{method} {bad}"
                );
                answers.push(status);
            }
            for status in answers {
                assert!(
                    responses.contains_key(&status.to_string()),
                    "{method} {path} answered {status}, which its description does not list"
                );
                provoked += 1;
            }
            for status in ["401", "503"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
        }
    }
    assert!(provoked > 40, "{provoked}");
    // Every reference resolves (a dangling one kept Schemathesis from testing three operations).
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    found.push(r.clone());
                }
                map.values().for_each(|v| references(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    references(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "{r}");
    }
    // Query parameters are documented as such (they were "path" parameters, all required).
    for path in ["/v1/events", "/v1/subjects/{subject}/sessions"] {
        for (method, operation) in doc["paths"][path].as_object().unwrap() {
            for param in operation["parameters"].as_array().unwrap() {
                let expected = if param["name"] == "subject" && path.contains("{subject}") {
                    "path"
                } else {
                    "query"
                };
                assert_eq!(param["in"], expected, "{method} {path} {param}");
            }
        }
    }
}

#[tokio::test]
async fn openapi_bounds_what_the_server_bounds_and_the_server_agrees() {
    let s = TestServer::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    // Every integer a caller sends has both bounds; every object they send refuses unknown
    // fields, as the server does.
    for name in [
        "CreateSessionBody",
        "AuthBody",
        "DeviceBody",
        "ValidateBody",
        "TokenBody",
        "ElevateBody",
    ] {
        let schema = &schemas[name];
        assert_eq!(schema["additionalProperties"], false, "{name}");
        for (field, property) in schema["properties"].as_object().unwrap() {
            if property["type"] == "integer" {
                assert!(
                    property["minimum"].is_number() && property["maximum"].is_number(),
                    "{name}.{field} is an integer without bounds"
                );
            }
        }
    }
    for operation in [&doc["paths"]["/v1/events"]["get"]] {
        for param in operation["parameters"].as_array().unwrap() {
            let schema = &param["schema"];
            if schema["type"].to_string().contains("integer") {
                assert!(
                    schema["minimum"].is_number() && schema["maximum"].is_number(),
                    "{param}"
                );
            }
        }
    }
    assert_eq!(
        (
            &schemas["AuthBody"]["properties"]["level"]["minimum"],
            &schemas["AuthBody"]["properties"]["level"]["maximum"]
        ),
        (&json!(1), &json!(3))
    );
    assert_eq!(
        schemas["CreateSessionBody"]["properties"]["subject"]["maxLength"],
        256
    );
    assert_eq!(schemas["MethodName"]["pattern"], "^[!-~]+$");
    let policies = &schemas["CreateSessionBody"]["properties"]["policy"]["enum"];
    for name in ["default", "short", "single"] {
        assert!(
            policies.as_array().unwrap().contains(&json!(name)),
            "{policies}"
        );
    }

    // The server takes what the schema allows, up to each bound, and refuses one past it.
    let create = |body: Value| s.post("/v1/sessions", body);
    for (body, expected) in [
        (json!({"subject": "a", "auth": {"level": 3}}), 201),
        (json!({"subject": "a", "auth": {"level": 2.0}}), 201),
        (json!({"subject": "a", "auth": {"level": 4}}), 400),
        (json!({"subject": "a", "auth": {"level": 823}}), 422),
        (json!({"subject": "a", "auth": {"level": 1.5}}), 422),
        (json!({"subject": "a".repeat(256)}), 201),
        (json!({"subject": "a".repeat(257)}), 422),
        (
            json!({"subject": "a", "auth": {"methods": ["x".repeat(64)]}}),
            201,
        ),
        (
            json!({"subject": "a", "auth": {"methods": ["x".repeat(65)]}}),
            422,
        ),
        (
            json!({"subject": "a", "auth": {"methods": ["two words"]}}),
            422,
        ),
        (json!({"subject": "a", "auth": {"methods": ["ü"]}}), 422),
        (
            json!({"subject": "a", "auth": {"methods": vec!["pwd"; 17]}}),
            422,
        ),
        (
            json!({"subject": "a", "device": {"user_agent": "u".repeat(1024)}}),
            201,
        ),
        (
            json!({"subject": "a", "device": {"user_agent": "u".repeat(1025)}}),
            422,
        ),
        (
            json!({"subject": "a", "device": {"ip": "1".repeat(129)}}),
            422,
        ),
        (json!({"subject": "a", "policy": "nope"}), 400),
    ] {
        let (status, problem) = create(body.clone()).await;
        assert_eq!(status, expected, "{body} → {problem}");
    }
    let (token, _) = s.create("alice", "default").await;
    for (body, expected) in [
        (
            json!({"token": token, "methods": ["pwd"], "scope": "two words"}),
            422,
        ),
        (
            json!({"token": token, "methods": ["pwd"], "scope": "s".repeat(65)}),
            422,
        ),
        (json!({"token": token, "methods": ["pwd"], "level": 4}), 400),
        (json!({"token": token, "methods": []}), 400),
        (
            json!({"token": token, "methods": ["pwd"], "level": 2.0, "scope": "pay-ments"}),
            200,
        ),
    ] {
        let (status, problem) = s.post("/v1/sessions/elevate", body.clone()).await;
        assert_eq!(status, expected, "{body} → {problem}");
    }
    for (query, expected) in [
        ("limit=1000", 200),
        ("limit=1001", 400),
        ("after=9223372036854775807", 200),
        ("after=9223372036854775808", 400),
        ("scope=everything", 400),
    ] {
        let (status, _) = s.get(&format!("/v1/events?{query}")).await;
        assert_eq!(status, expected, "{query}");
    }
    for (reason, expected) in [("password_changed", 200), ("expired_idle", 400)] {
        let (status, _) = s
            .delete(&format!("/v1/subjects/nobody/sessions?reason={reason}"))
            .await;
        assert_eq!(status, expected, "{reason}");
    }
}

#[tokio::test]
async fn schema_violating_bodies_are_refused() {
    let s = TestServer::start().await;
    let (token, _) = s.create("alice", "default").await;
    // Serde takes an array of a struct's fields in order; no schema does.
    for (path, body) in [
        (
            "/v1/sessions",
            json!({"subject": "a", "device": [null, null]}),
        ),
        (
            "/v1/sessions",
            json!({"subject": "a", "auth": [["pwd"], 1]}),
        ),
        ("/v1/sessions", json!(["a", false])),
        ("/v1/sessions/validate", json!([token])),
        (
            "/v1/sessions/validate",
            json!({"token": token, "device": ["ua", "ip"]}),
        ),
        ("/v1/sessions/rotate", json!([token])),
        ("/v1/sessions/logout", json!([token])),
        ("/v1/sessions/elevate", json!([token, ["pwd"], 1, "s"])),
    ] {
        let (status, problem) = s.post(path, body.clone()).await;
        assert_eq!(
            (status, problem["reason"].as_str()),
            (422, Some("invalid_body")),
            "{path} {body}"
        );
    }
    // The token was never touched by any of them.
    assert_eq!(s.validate(&token).await.0, 200);
    // Bad percent-encoding in a path parameter is a problem document too.
    let (status, reason) = raw(&s, Method::GET, "/v1/sessions/%FF%FE", None, b"").await;
    assert_eq!(
        (status, reason.as_deref()),
        (400, Some("invalid_parameter"))
    );
}

#[tokio::test]
async fn an_ended_session_is_gone_by_id_with_its_ending_until_it_is_purged() {
    let s = TestServer::start().await;
    let (_, id) = s.create("alice", "default").await;
    let path = format!("/v1/sessions/{id}");
    assert_eq!(s.get(&path).await.0, 200);
    assert_eq!(s.delete(&path).await.0, 204);
    let (status, gone) = s.get(&path).await;
    assert_eq!(status, 410);
    assert_eq!(
        (
            gone["type"].as_str(),
            gone["status"].as_u64(),
            gone["reason"].as_str(),
            gone["ended_reason"].as_str(),
            gone["session"]["id"].as_str(),
            gone["session"]["ended"]["reason"].as_str(),
        ),
        (
            Some("urn:portcullis:problem:session_ended"),
            Some(410),
            Some("session_ended"),
            Some("revoked_admin"),
            Some(id.as_str()),
            Some("revoked_admin"),
        )
    );
    // Its data cannot change, and is kept as it was.
    let (status, gone) = s
        .send(Method::PUT, &format!("{path}/data"), Some(json!({"x": 1})))
        .await;
    assert_eq!(
        (status, gone["session"]["data"].clone()),
        (410, Value::Null)
    );
    // Ending it again is idempotent.
    assert_eq!(s.delete(&path).await.0, 204);
    // A logout reads the same way.
    let (token, other) = s.create("bob", "default").await;
    s.post("/v1/sessions/logout", json!({"token": token})).await;
    let (status, gone) = s.get(&format!("/v1/sessions/{other}")).await;
    assert_eq!(
        (status, gone["ended_reason"].as_str()),
        (410, Some("logout"))
    );
    // Once purged (after `ended_retention`), it is not found, as one that never existed.
    s.clock.advance(Duration::from_secs(2 * 3600));
    s.engine.sweep().await.unwrap();
    let (status, problem) = s.get(&path).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(s.delete(&path).await.0, 404);
}

#[tokio::test]
async fn a_parent_or_application_that_cannot_be_is_a_conflict_or_forbidden_not_a_bad_request() {
    let s = TestServer::start().await;
    let (token, parent) = s.create("alice", "default").await;
    let (status, _) = s
        .post(
            "/v1/sessions",
            json!({"subject": "alice", "parent": parent}),
        )
        .await;
    assert_eq!(status, 201);
    for (subject, parent) in [("bob", parent.as_str()), ("alice", "ses_nope")] {
        let (status, problem) = s
            .post(
                "/v1/sessions",
                json!({"subject": subject, "parent": parent}),
            )
            .await;
        assert_eq!(
            (status, problem["reason"].as_str()),
            (409, Some("parent_not_live")),
            "{subject} {parent}"
        );
    }
    s.post("/v1/sessions/logout", json!({"token": token})).await;
    let (status, _) = s
        .post(
            "/v1/sessions",
            json!({"subject": "alice", "parent": parent}),
        )
        .await;
    assert_eq!(status, 409);
    // Another application's session is out of reach: answered as one that does not exist.
    let other = s.add_app("other", &[]).await;
    let (status, created) = s
        .send_as(
            &other,
            Method::POST,
            "/v1/sessions",
            Some(json!({"subject": "carol"})),
        )
        .await;
    assert_eq!(status, 201);
    let theirs = created["session"]["id"].as_str().unwrap();
    let (status, _) = s
        .post(
            "/v1/sessions",
            json!({"subject": "carol", "parent": theirs}),
        )
        .await;
    assert_eq!(status, 409);
    let other_app = created["session"]["application"].as_str().unwrap();
    let (status, problem) = s
        .post(
            "/v1/sessions",
            json!({"subject": "carol", "application": other_app}),
        )
        .await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (403, Some("application_not_allowed"))
    );
    let (_, mine) = s.create("dave", "default").await;
    let (_, view) = s.get(&format!("/v1/sessions/{mine}")).await;
    let own = view["application"].as_str().unwrap();
    let (status, _) = s
        .post(
            "/v1/sessions",
            json!({"subject": "dave", "application": own}),
        )
        .await;
    assert_eq!(status, 201);
}

/// Every `$ref` in `value` names a schema of `doc`'s components.
fn refs_resolve(doc: &serde_json::Value, value: &serde_json::Value, missing: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(reference) = map.get("$ref").and_then(|r| r.as_str()) {
                let name = reference.trim_start_matches("#/components/schemas/");
                if !doc["components"]["schemas"][name].is_object() {
                    missing.push(reference.to_owned());
                }
            }
            for v in map.values() {
                refs_resolve(doc, v, missing);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                refs_resolve(doc, v, missing);
            }
        }
        _ => {}
    }
}

#[test]
fn the_admin_openapi_describes_every_admin_call_with_schemas_that_resolve() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(portcullis_http::AdminApiDoc::openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/admin/applications", "post"),
        ("/admin/applications", "get"),
        ("/admin/applications/{app}", "get"),
        ("/admin/applications/{app}", "patch"),
        ("/admin/applications/{app}", "delete"),
        ("/admin/applications/{app}/client", "put"),
        ("/admin/applications/{app}/client", "delete"),
        ("/admin/api-keys", "post"),
        ("/admin/api-keys", "get"),
        ("/admin/api-keys/{id}", "delete"),
        ("/admin/users", "post"),
        ("/admin/users", "get"),
        ("/admin/users/{username}", "patch"),
        ("/admin/oidc/keys", "get"),
        ("/admin/oidc/keys/rotate", "post"),
        ("/admin/deliveries", "get"),
        ("/admin/deliveries/{session}", "get"),
        ("/admin/deliveries/{session}/retry", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let mut missing = Vec::new();
    refs_resolve(&doc, &doc, &mut missing);
    assert!(missing.is_empty(), "unresolved: {missing:?}");
    assert!(doc["components"]["schemas"]["DeliveryView"]["properties"]["state"].is_object());
}
