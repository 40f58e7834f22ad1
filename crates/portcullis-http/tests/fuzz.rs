//! A fuzzing-style test: random bodies at every endpoint never crash the server or get a
//! non-problem error; the server keeps answering.

mod common;

use common::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(
            "pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("subject".to_owned()),
                    Just("token".to_owned()),
                    Just("policy".to_owned()),
                    Just("auth".to_owned()),
                    Just("device".to_owned()),
                    Just("data".to_owned()),
                    Just("methods".to_owned()),
                    Just("level".to_owned()),
                    Just("activity".to_owned()),
                    Just("remember_me".to_owned()),
                    Just("parent".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => json_value().prop_map(Body::Json),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
    ]
}

const ENDPOINTS: [(&str, &str); 8] = [
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/validate"),
    ("POST", "/v1/sessions/rotate"),
    ("POST", "/v1/sessions/elevate"),
    ("POST", "/v1/sessions/logout"),
    ("PUT", "/v1/sessions/ses_x/data"),
    ("DELETE", "/v1/subjects/a%2Fb/sessions?except=%00"),
    ("GET", "/v1/events?subject=%FF"),
];

#[test]
fn random_bodies_never_crash_the_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    runner
        .run(&(0..ENDPOINTS.len(), body()), |(endpoint, body)| {
            let (method, path) = ENDPOINTS[endpoint];
            let status = runtime.block_on(async {
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let request = server
                    .http
                    .request(method, server.url(path))
                    .bearer_auth(&server.key);
                let request = match &body {
                    Body::Json(v) => request.json(v),
                    Body::Bytes(b) => request
                        .header("content-type", "application/json")
                        .body(b.clone()),
                };
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let content_type = response
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_owned());
                let text = response.text().await.unwrap();
                if status >= 400 {
                    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
                    let problem: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert!(problem["reason"].is_string());
                }
                status
            });
            prop_assert!(status < 500, "{path} answered {status} for {body:?}");
            Ok(())
        })
        .unwrap();
    let health = runtime.block_on(async {
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(health, 200);
}
