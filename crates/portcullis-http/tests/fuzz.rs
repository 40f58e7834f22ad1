//! Fuzzing-style property tests over real HTTP: random JSON and byte bodies at every API
//! endpoint never crash the server, and every refusal is a 4xx problem document; random form
//! bodies and cookies at every page that takes a form never get a server error; the server
//! keeps answering. CI runs 256 cases each; `PROPTEST_CASES` raises it (`bench/fuzz.sh`).

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

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

const ENDPOINTS: [(&str, &str); 10] = [
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/validate"),
    ("POST", "/v1/sessions/rotate"),
    ("POST", "/v1/sessions/elevate"),
    ("POST", "/v1/sessions/logout"),
    ("PUT", "/v1/sessions/ses_x/data"),
    ("DELETE", "/v1/subjects/a%2Fb/sessions?except=%00"),
    ("GET", "/v1/events?subject=%FF"),
    ("GET", "/v1/sessions/%C0%AF"),
    ("DELETE", "/v1/sessions/ses_%00"),
];

#[test]
fn random_bodies_never_crash_the_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let mut runner = TestRunner::new(Config::with_cases(cases()));
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
                    assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
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

/// Every page route that takes a form.
const FORMS: [&str; 12] = [
    "/login",
    "/login/otp",
    "/login/stay",
    "/logout",
    "/reauth",
    "/account/password",
    "/account/sessions/end-others",
    "/account/sessions/ses_x/end",
    "/account/two-factor/enrol",
    "/account/two-factor/remove",
    "/session/extend",
    "/account",
];

#[derive(Debug, Clone)]
struct FormRequest {
    path: usize,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    cookie: Option<String>,
    same_origin: bool,
}

fn form_body() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "csrf",
            "username",
            "password",
            "code",
            "stay",
            "return_to",
            "current",
            "new",
            "others",
        ])
        .prop_map(str::to_owned),
        "[a-z%=&]{0,6}",
    ];
    let value = prop_oneof![".{0,40}", "%[0-9A-Fa-f]{0,2}", "[=&+%]{0,5}"];
    let field = (name, value).prop_map(|(k, v)| format!("{k}={v}"));
    prop_oneof![
        3 => prop::collection::vec(field, 0..6).prop_map(|f| f.join("&").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn form_request() -> impl Strategy<Value = FormRequest> {
    (
        0..FORMS.len(),
        form_body(),
        prop_oneof![
            Just(Some("application/x-www-form-urlencoded")),
            Just(Some("application/json")),
            Just(Some("multipart/form-data; boundary=x")),
            Just(None),
        ],
        prop::option::of(prop_oneof![
            "__Host-portcullis(-csrf|-sign-in)?=[A-Za-z0-9_\\x21-\\x7e-]{0,50}",
            "__Host-portcullis=pcs_[A-Za-z0-9_-]{43}; __Host-portcullis-csrf=[a-z]{0,5}",
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(path, body, content_type, cookie, same_origin)| FormRequest {
                path,
                body,
                content_type,
                cookie,
                same_origin,
            },
        )
}

#[test]
fn random_forms_and_cookies_never_crash_the_pages() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    let mut runner = TestRunner::new(Config::with_cases(cases()));
    runner
        .run(&form_request(), |request| {
            let path = FORMS[request.path];
            let status = runtime.block_on(async {
                let mut call = server
                    .http
                    .post(server.url(path))
                    .body(request.body.clone());
                if let Some(content_type) = request.content_type {
                    call = call.header("content-type", content_type);
                }
                if let Some(cookie) = &request.cookie {
                    call = call.header("cookie", cookie.as_str());
                }
                if request.same_origin {
                    call = call.header("sec-fetch-site", "same-origin");
                }
                let response = call.send().await.unwrap();
                let status = response.status().as_u16();
                let _ = response.bytes().await.unwrap();
                status
            });
            prop_assert!(status < 500, "{path} answered {status} for {request:?}");
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
