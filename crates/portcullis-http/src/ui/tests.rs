//! Shared setup for the pages' in-process handler tests: the public router over an engine on a
//! `MemoryStore` with a `ManualClock` and accounts on a `MemoryUserStore`, called through
//! `tower::ServiceExt::oneshot` (no sockets). Each flow's module has its own `mod tests`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use portcullis_core::{
    Accounts, Actor, ApplicationChange, AuthContext, Engine, ManualClock, MemoryStore,
    MemoryUserStore, NewSession, NoAuditSink, OsRandom, PolicySet, Principal, SSO_POLICY, Session,
    Timestamp, User, Validated,
};
use tower::ServiceExt;

use super::web::{LOGIN_CSRF_COOKIE, SESSION_COOKIE, SIGN_IN_COOKIE, csrf_token};
use crate::{AppState, Services, api_router};

/// The password every test account starts with.
pub(super) const PASSWORD: &str = "correct horse battery staple";

/// One engine, its accounts and the public router over them.
pub(super) struct Harness {
    pub(super) clock: Arc<ManualClock>,
    pub(super) engine: Arc<Engine<MemoryStore>>,
    pub(super) accounts: Arc<Accounts>,
    router: Router,
}

/// An answer, its body read.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: String,
}

impl Answer {
    /// Where a redirect points.
    pub(super) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `Set-Cookie` line for cookie `name`.
    pub(super) fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|line| line.starts_with(&prefix))
    }

    /// The value a `Set-Cookie` gives cookie `name`.
    pub(super) fn cookie(&self, name: &str) -> Option<String> {
        let line = self.set_cookie(name)?;
        let value = line[name.len() + 1..].split(';').next().unwrap_or_default();
        Some(value.to_owned())
    }

    /// The body as JSON.
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    /// The `value` of the hidden form field `name` in the page.
    pub(super) fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no field {name} in {}", self.body))
            + marker.len();
        let end = start + self.body[start..].find('"').unwrap_or_default();
        unescape(&self.body[start..end])
    }
}

impl Harness {
    /// A fresh engine (built-in policies), clock, accounts and router.
    pub(super) fn new() -> Self {
        let clock = Arc::new(ManualClock::default());
        let engine = Arc::new(Engine::new(
            MemoryStore::default(),
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        ));
        let accounts = Arc::new(
            Accounts::new(
                Arc::new(MemoryUserStore::new()),
                clock.clone(),
                Arc::new(OsRandom),
                Arc::new(NoAuditSink),
            )
            .with_keyring(
                portcullis_core::Keyring::parse(&[portcullis_core::Keyring::generate_entry(
                    "test", &OsRandom,
                )])
                .unwrap(),
            )
            .with_trail(engine.clone()),
        );
        let router = api_router(AppState::new(Services {
            engine: Arc::clone(&engine),
            accounts: Arc::clone(&accounts),
            ui: Arc::new(super::web::Ui::new(Default::default())),
            metrics: None,
            provider: None,
            federation: None,
        }));
        Self {
            clock,
            engine,
            accounts,
            router,
        }
    }

    /// Moves the clock; nothing ever sleeps.
    pub(super) fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The engine's time.
    pub(super) fn now(&self) -> Timestamp {
        self.engine.now()
    }

    /// Creates the account `username` with [`PASSWORD`].
    pub(super) async fn user(&self, username: &str) -> User {
        self.accounts
            .add_user(username, PASSWORD, &Actor::cli())
            .await
            .unwrap()
    }

    /// An SSO session for `user` made the way the pages make one (policy [`SSO_POLICY`],
    /// principal Portcullis), without going through the forms; returns its token.
    pub(super) async fn sso_session(&self, user: &User) -> String {
        let issued = self
            .engine
            .create(
                NewSession {
                    subject: user.id.clone(),
                    policy: Some(SSO_POLICY.to_owned()),
                    auth: AuthContext {
                        methods: vec!["pwd".to_owned()],
                        level: 1,
                    },
                    data: serde_json::json!({ "username": user.username }),
                    ..NewSession::default()
                },
                &Principal::portcullis(Actor::user(&user.id)),
            )
            .await
            .unwrap();
        issued.token.expose().to_owned()
    }

    /// The session behind `token` as the pages see it (without counting as activity), or
    /// `None` when it no longer opens anything.
    pub(super) async fn session(&self, token: &str) -> Option<Arc<Session>> {
        self.engine
            .validate(
                token,
                false,
                &Default::default(),
                &Principal::portcullis(Actor::system()),
            )
            .await
            .ok()
            .map(|Validated { session, .. }| session)
    }

    /// Registers an application with an API key and creates a session of it for `subject`
    /// through API v1; returns the session's token and id.
    pub(super) async fn application_session(&self, subject: &str) -> (String, String) {
        self.engine
            .add_application(
                ApplicationChange {
                    name: Some("shop".into()),
                    policies: Some(vec!["*".into()]),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap();
        let (key, _) = self
            .engine
            .create_api_key("shop", "shop", &Actor::cli())
            .await
            .unwrap();
        let body = serde_json::json!({
            "subject": subject,
            "auth": {"methods": ["pwd"], "level": 2},
        });
        let request = Request::post("/v1/sessions")
            .header(header::AUTHORIZATION, format!("Bearer {}", key.expose()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let answer = self.send(request).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        let created = answer.json();
        (
            created["token"].as_str().unwrap().to_owned(),
            created["session"]["id"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends a request through the router.
    pub(super) async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    /// `GET path` with `cookies` (`name=value; …`, empty for none).
    pub(super) async fn get(&self, path: &str, cookies: &str) -> Answer {
        self.send(
            request(Method::GET, path, cookies)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// A same-origin form `POST` (as a browser sends it from our own page).
    pub(super) async fn post(&self, path: &str, cookies: &str, form: &[(&str, &str)]) -> Answer {
        self.send(form_post(path, cookies, form)).await
    }

    /// Signs `username` in through the forms (password, then "Stay signed in?" answered
    /// `stay`), as a browser would; returns the SSO token.
    pub(super) async fn sign_in(&self, username: &str, stay: bool) -> String {
        let form = self.get("/login", "").await;
        let csrf = form.cookie(LOGIN_CSRF_COOKIE).unwrap();
        let password = self
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("return_to", "/account"),
                    ("username", username),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(password.location(), "/login/stay", "{}", password.body);
        let pending = password.cookie(SIGN_IN_COOKIE).unwrap();
        let answer = if stay { "yes" } else { "no" };
        let done = self
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", answer)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        done.cookie(SESSION_COOKIE).unwrap()
    }
}

/// A request builder for `path` with the `Cookie` header `cookies` (when not empty).
pub(super) fn request(method: Method, path: &str, cookies: &str) -> axum::http::request::Builder {
    let builder = Request::builder().method(method).uri(path);
    if cookies.is_empty() {
        builder
    } else {
        builder.header(header::COOKIE, cookies)
    }
}

/// A same-origin `POST` of `form`, urlencoded.
pub(super) fn form_post(path: &str, cookies: &str, form: &[(&str, &str)]) -> Request<Body> {
    request(Method::POST, path, cookies)
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(urlencoded(form)))
        .unwrap()
}

/// `application/x-www-form-urlencoded` text of `pairs`.
pub(super) fn urlencoded(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Undoes the HTML escaping minijinja applies to `.html` templates (it escapes `/` too).
pub(super) fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A `Cookie` header value with one cookie.
pub(super) fn cookie(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

/// The SSO cookie for `token`.
pub(super) fn sso(token: &str) -> String {
    cookie(SESSION_COOKIE, token)
}

/// The `Max-Age` a `Set-Cookie` line gives, if any.
pub(super) fn max_age(set_cookie: &str) -> Option<u64> {
    set_cookie
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age="))
        .map(|age| age.parse().unwrap())
}

/// The account's password is `password`.
pub(super) async fn password_is(accounts: &Accounts, username: &str, password: &str) -> bool {
    accounts
        .check_password(username, password, portcullis_core::Origin::default())
        .await
        .is_ok()
}

/// The live sessions of `user` as the account page lists them.
pub(super) async fn live_sessions(harness: &Harness, user: &User) -> Vec<Arc<Session>> {
    harness
        .engine
        .list_subject(&user.id, true, &Principal::person(&user.id))
        .await
        .unwrap()
}

/// A six-digit code that `secret` does not accept around `now` (the current step ±2).
pub(super) fn wrong_code(secret: &str, now: Timestamp) -> String {
    let near: Vec<String> = (-2i64..=2)
        .filter_map(|step| {
            let at = Timestamp::from_millis(now.as_millis() + step * 30_000);
            portcullis_core::account::totp_code(secret, at)
        })
        .collect();
    (0..10)
        .map(|digit| digit.to_string().repeat(6))
        .find(|code| !near.contains(code))
        .unwrap()
}

#[tokio::test]
async fn the_harness_serves_the_pages_in_process() {
    let h = Harness::new();
    let answer = h.get("/assets/portcullis.css", "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    let root = h.get("/", "").await;
    assert_eq!(
        (root.status, root.location()),
        (StatusCode::SEE_OTHER, "/account")
    );
}

/// A form or a query that cannot be read (JSON posted to a page, a body without its type, a
/// parameter given twice) gets the pages' friendly error, never the framework's plain text.
#[tokio::test]
async fn a_form_that_cannot_be_read_gets_the_friendly_error_page() {
    let h = Harness::new();
    let json = request(Method::POST, "/login", "")
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let no_type = request(Method::POST, "/login/stay", "")
        .header("sec-fetch-site", "same-origin")
        .body(Body::from("stay=yes"))
        .unwrap();
    let twice = request(Method::GET, "/login?return_to=/a&return_to=/b", "")
        .body(Body::empty())
        .unwrap();
    for request in [json, no_type, twice] {
        let answer = h.send(request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert!(
            answer.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{:?}",
            answer.headers
        );
        assert!(answer.body.contains("That did not work"), "{}", answer.body);
    }
}

/// ASVS5-3.4.6: a page that is not there, a page asked with the wrong method, or an address
/// that cannot be read (bytes that are not UTF-8) gets a friendly page with the pages' policy
/// when a browser asked; an API caller gets problem+json, and every answer forbids framing and
/// sniffing.
#[tokio::test]
async fn what_no_page_answers_gets_a_friendly_page_or_problem_json_never_framed() {
    let h = Harness::new();
    let html = |method: Method, path: &str| {
        request(method, path, "")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .header("sec-fetch-site", "same-origin")
            .body(Body::empty())
            .unwrap()
    };
    for (request, status, says) in [
        (
            html(Method::GET, "/account/"),
            StatusCode::NOT_FOUND,
            "Page not found",
        ),
        (
            html(Method::GET, "/nope"),
            StatusCode::NOT_FOUND,
            "Page not found",
        ),
        (
            html(Method::PUT, "/account"),
            StatusCode::METHOD_NOT_ALLOWED,
            "That did not work",
        ),
        (
            html(Method::POST, "/account/sessions/ses_%ff/end"),
            StatusCode::BAD_REQUEST,
            "That did not work",
        ),
        (
            html(Method::GET, "/assets/%ff"),
            StatusCode::BAD_REQUEST,
            "That did not work",
        ),
    ] {
        let path = request.uri().to_string();
        let answer = h.send(request).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.body.contains(says), "{path}: {}", answer.body);
        assert!(
            answer.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        let policy = answer.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        assert!(policy.contains("default-src"), "{path}: the pages' policy");
    }
    let api = h
        .send(
            request(Method::GET, "/nope", "")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.headers[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(
        api.headers[header::CONTENT_SECURITY_POLICY],
        "frame-ancestors 'none'"
    );
    assert_eq!(api.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(api.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
}

/// The machine endpoints answer a browser's CORS preflight (README: any origin, without
/// credentials), so a public client in a browser can send `Authorization`.
#[tokio::test]
async fn the_machine_endpoints_answer_a_cors_preflight() {
    let h = Harness::new();
    for (path, method) in [
        ("/oidc/userinfo", "GET"),
        ("/oidc/token", "POST"),
        ("/oidc/introspect", "POST"),
        ("/oidc/revoke", "POST"),
        ("/oidc/jwks", "GET"),
        ("/.well-known/openid-configuration", "GET"),
    ] {
        let preflight = request(Method::OPTIONS, path, "")
            .header(header::ORIGIN, "https://spa.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .unwrap();
        let answer = h.send(preflight).await;
        assert!(answer.status.is_success(), "{path}: {}", answer.status);
        assert_eq!(
            answer.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "{path}"
        );
        let allowed = answer.headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{path}: {allowed}");
    }
}

/// README: errors at the OAuth endpoints are RFC 6749's, a wrong method's too.
#[tokio::test]
async fn a_wrong_method_at_an_oauth_endpoint_is_an_rfc6749_error() {
    let h = Harness::new();
    for path in ["/oidc/token", "/oidc/introspect", "/oidc/revoke"] {
        let answer = h.get(path, "").await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(answer.headers[header::ALLOW], "POST", "{path}");
        assert_eq!(answer.json()["error"], "invalid_request", "{path}");
    }
}
