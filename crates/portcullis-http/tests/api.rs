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
    let (status, view) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(
        (status, view["ended"]["reason"].as_str()),
        (200, Some("revoked_admin"))
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
    let (status, ended) = s.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(ended["ended"]["reason"], "revoked_admin");
    assert_matches_schema(&doc, &schema("SessionView"), &ended, "ended");
}
