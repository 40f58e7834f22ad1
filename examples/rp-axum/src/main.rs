//! An application that signs people in with Portcullis, as an application developer would
//! write it: axum, and the `openidconnect` crate as a confidential client
//! (`client_secret_basic`). It keeps its own sessions (a random cookie → who signed in, under
//! which provider session, with which ID token), signs out at the provider too
//! (RP-initiated logout) and ends its sessions when the provider says so (Back-Channel Logout).
//!
//! Configuration, from the environment:
//!
//! - `ISSUER`: the provider's issuer (`https://id.example.com`);
//! - `CLIENT_ID`, `CLIENT_SECRET`: the application's registration;
//! - `LISTEN`: the address to listen on (default `127.0.0.1:3001`; port `0` picks one);
//! - `BASE_URL`: where browsers reach the application (default `http://` and the address
//!   listened on); the redirect URI is `{BASE_URL}/callback`, the post-logout redirect URI
//!   `{BASE_URL}/signed-out`, the back-channel logout URI `{BASE_URL}/backchannel-logout`;
//! - `APP_NAME`: the title of its pages; `COOKIE_PREFIX`: its cookies' names (default
//!   `rp-axum`), to run two copies on one host.
//!
//! The first line on standard output is `listening on <address>`, once the provider's
//! discovery document and keys are read.

#![forbid(unsafe_code)]

mod http;
mod keys;
mod logout_token;
mod oidc;
mod store;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openidconnect::core::CoreAuthPrompt;
use openidconnect::url::form_urlencoded;
use openidconnect::{CsrfToken, Nonce};
use serde::Deserialize;
use serde_json::json;

use crate::logout_token::LogoutTokenError;
use crate::oidc::{PendingSignIn, Provider, Registration, SignedIn, error_chain};
use crate::store::{CookieStore, Cookies, cookie};

/// How long a sign-in may take at the provider.
const SIGN_IN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long the application's own session lasts at most.
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long a sign-out at the provider may take.
const SIGN_OUT_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// A sign-in on its way, as kept between `/login` and `/callback`.
#[derive(Clone)]
struct PendingLogin {
    state: CsrfToken,
    nonce: Nonce,
    /// The PKCE verifier's secret (`PkceCodeVerifier` is not `Clone`).
    verifier: String,
    /// Whether it asked with `prompt=none`.
    silent: bool,
}

/// The application and what it keeps.
struct App {
    name: String,
    provider: Provider,
    cookies: Cookies,
    logins: CookieStore<PendingLogin>,
    sessions: CookieStore<SignedIn>,
    /// The `state` of each sign-out at the provider on its way.
    logouts: CookieStore<String>,
}

type Shared = Arc<App>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rp-axum: {error}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name} (see README.md)"))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = env("ISSUER")?;
    let client_id = env("CLIENT_ID")?;
    let client_secret = env("CLIENT_SECRET")?;
    let listen = env("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    let base = env("BASE_URL").unwrap_or_else(|_| format!("http://{address}"));
    let base = base.trim_end_matches('/').to_owned();

    let registration = Registration {
        issuer,
        client_id,
        client_secret,
        redirect_uri: format!("{base}/callback"),
        post_logout_redirect_uri: format!("{base}/signed-out"),
    };
    let provider = Provider::discover(registration, http::HttpClient::new()?).await?;
    let prefix = env("COOKIE_PREFIX").unwrap_or_else(|_| "rp-axum".to_owned());
    let app = Arc::new(App {
        name: env("APP_NAME").unwrap_or_else(|_| "Example application (axum)".to_owned()),
        provider,
        cookies: Cookies::new(&prefix, base.starts_with("https://")),
        logins: CookieStore::new(SIGN_IN_LIFETIME),
        sessions: CookieStore::new(SESSION_LIFETIME),
        logouts: CookieStore::new(SIGN_OUT_LIFETIME),
    });

    println!("listening on http://{address}");
    eprintln!(
        "rp-axum: {base} signs in with {}; back-channel logout URI {base}/backchannel-logout",
        app.provider.issuer()
    );
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/callback", get(callback))
        .route("/logout", get(logout))
        .route("/signed-out", get(signed_out))
        .route("/backchannel-logout", post(backchannel_logout))
        .route("/session.json", get(session_json))
        .with_state(app)
}

impl App {
    /// The session the request's cookie reaches.
    fn session(&self, headers: &HeaderMap) -> Option<SignedIn> {
        self.sessions.get(cookie(headers, &self.cookies.session)?)
    }
}

// ---------------------------------------------------------------------------------------
// Pages.

/// `GET /`: who is signed in here, or a link to sign in.
async fn home(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let body = match app.session(&headers) {
        Some(session) => format!(
            "<h1>Signed in</h1>\
             <p>Signed in as <strong id=\"who\">{name}</strong> \
             (subject <code id=\"sub\">{sub}</code>, provider session <code id=\"sid\">{sid}</code>).</p>\
             <p><a id=\"sign-out\" href=\"/logout\">Sign out</a></p>",
            name = escape(&session.name),
            sub = escape(&session.sub),
            sid = escape(session.sid.as_deref().unwrap_or("none")),
        ),
        None => "<h1>Not signed in</h1>\
                 <p><a id=\"sign-in\" href=\"/login\">Sign in</a> with your Portcullis account.</p>"
            .to_owned(),
    };
    page(&app, StatusCode::OK, &body)
}

#[derive(Deserialize)]
struct LoginParams {
    prompt: Option<String>,
}

/// `GET /login`: off to the provider's authorization endpoint, with PKCE (S256), state and a
/// nonce kept here under a new cookie. `?prompt=none` asks the provider whether the person is
/// signed in there, without showing them anything.
async fn login(State(app): State<Shared>, Query(params): Query<LoginParams>) -> Response {
    let prompt = match params.prompt.as_deref() {
        None => None,
        Some("none") => Some(CoreAuthPrompt::None),
        Some("login") => Some(CoreAuthPrompt::Login),
        Some(_) => return error_page(&app, StatusCode::BAD_REQUEST, "prompt is none or login"),
    };
    let silent = prompt == Some(CoreAuthPrompt::None);
    let (url, pending) = app.provider.authorization(prompt);
    let login = PendingLogin {
        state: pending.state,
        nonce: pending.nonce,
        verifier: pending.verifier.secret().clone(),
        silent,
    };
    let Ok(cookie) = app.logins.insert(login) else {
        return error_page(&app, StatusCode::SERVICE_UNAVAILABLE, "no randomness");
    };
    let set = app
        .cookies
        .set(&app.cookies.login, &cookie, Some(SIGN_IN_LIFETIME));
    redirect(url.as_str(), [set])
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /callback`: the provider's answer. The state must be the one this browser's sign-in
/// sent (and `iss` the issuer); then an error is shown, or the code exchanged, the ID token
/// verified, and a new session of the application begins.
async fn callback(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<CallbackParams>,
) -> Response {
    let clear_login = app.cookies.clear(&app.cookies.login);
    let pending = cookie(&headers, &app.cookies.login).and_then(|c| app.logins.take(c));
    let Some(pending) = pending else {
        return with_cookies(
            error_page(
                &app,
                StatusCode::BAD_REQUEST,
                "No sign-in is in progress in this browser (or it took too long). Sign in again.",
            ),
            [clear_login],
        );
    };
    if params.state.as_deref() != Some(pending.state.secret().as_str()) {
        return with_cookies(
            error_page(&app, StatusCode::BAD_REQUEST, "The state does not match."),
            [clear_login],
        );
    }
    // RFC 9207: the answer says which provider sent it.
    let iss_ok = match params.iss.as_deref() {
        Some(iss) => iss == app.provider.issuer(),
        None => !app.provider.requires_iss(),
    };
    if !iss_ok {
        return with_cookies(
            error_page(
                &app,
                StatusCode::BAD_REQUEST,
                "The answer is from another issuer.",
            ),
            [clear_login],
        );
    }
    if let Some(error) = params.error {
        let what = if pending.silent {
            "The provider did not sign you in silently"
        } else {
            "The provider did not sign you in"
        };
        let body = format!(
            "<h1>Not signed in</h1><p>{what}: <code id=\"error\">{}</code>{}</p>\
             <p><a id=\"sign-in\" href=\"/login\">Sign in</a></p>",
            escape(&error),
            params
                .error_description
                .map(|d| format!(" — {}", escape(&d)))
                .unwrap_or_default(),
        );
        return with_cookies(page(&app, StatusCode::FORBIDDEN, &body), [clear_login]);
    }
    let Some(code) = params.code else {
        return with_cookies(
            error_page(&app, StatusCode::BAD_REQUEST, "The answer has no code."),
            [clear_login],
        );
    };
    let pending = PendingSignIn {
        state: pending.state,
        nonce: pending.nonce,
        verifier: openidconnect::PkceCodeVerifier::new(pending.verifier),
    };
    let signed_in = match app.provider.sign_in(code, pending).await {
        Ok(signed_in) => signed_in,
        Err(error) => {
            let why = error_chain(&error);
            eprintln!("rp-axum: sign-in failed: {why}");
            return with_cookies(
                error_page(
                    &app,
                    StatusCode::BAD_GATEWAY,
                    &format!("Sign-in failed: {why}"),
                ),
                [clear_login],
            );
        }
    };

    // A sign-in always begins a new session: one this browser held before ends.
    if let Some(old) = cookie(&headers, &app.cookies.session) {
        app.sessions.take(old);
    }
    eprintln!(
        "rp-axum: signed in {} (sid {})",
        signed_in.sub,
        signed_in.sid.as_deref().unwrap_or("none")
    );
    let Ok(session) = app.sessions.insert(signed_in) else {
        return error_page(&app, StatusCode::SERVICE_UNAVAILABLE, "no randomness");
    };
    let set = app.cookies.set(&app.cookies.session, &session, None);
    redirect("/", [set, clear_login])
}

/// `GET /logout`: ends the application's session, then sends the browser to the provider to
/// sign out there too, with the ID token as `id_token_hint` and a `state` kept under a cookie.
async fn logout(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let clear_session = app.cookies.clear(&app.cookies.session);
    let session = cookie(&headers, &app.cookies.session).and_then(|c| app.sessions.take(c));
    let Some(session) = session else {
        return redirect("/", [clear_session]);
    };
    eprintln!("rp-axum: signed out {}", session.sub);
    let state = CsrfToken::new_random();
    let Some(url) = app.provider.logout_url(&session.id_token, state.clone()) else {
        return redirect("/signed-out", [clear_session]);
    };
    let Ok(cookie) = app.logouts.insert(state.secret().clone()) else {
        return redirect("/signed-out", [clear_session]);
    };
    let set = app
        .cookies
        .set(&app.cookies.logout, &cookie, Some(SIGN_OUT_LIFETIME));
    redirect(url.as_str(), [clear_session, set])
}

#[derive(Deserialize)]
struct SignedOutParams {
    state: Option<String>,
}

/// `GET /signed-out`: where the provider sends the browser back after signing out. The
/// `state` this browser's sign-out sent says it went through the provider.
async fn signed_out(
    State(app): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<SignedOutParams>,
) -> Response {
    let expected = cookie(&headers, &app.cookies.logout).and_then(|c| app.logouts.take(c));
    let at_provider = expected.is_some() && expected == params.state;
    let body = if at_provider {
        "<h1>Signed out</h1><p id=\"signed-out\">You are signed out of this application and of \
         Portcullis.</p><p><a id=\"sign-in\" href=\"/login\">Sign in again</a></p>"
    } else {
        "<h1>Signed out</h1><p id=\"signed-out\">You are signed out of this application.</p>\
         <p><a id=\"sign-in\" href=\"/login\">Sign in again</a></p>"
    };
    let clear = app.cookies.clear(&app.cookies.logout);
    with_cookies(page(&app, StatusCode::OK, body), [clear])
}

// ---------------------------------------------------------------------------------------
// Machine endpoints.

/// `POST /backchannel-logout`: the provider says a session there ended (OpenID Connect
/// Back-Channel Logout 1.0). The form's `logout_token` is verified, then every session here
/// under that provider session (`sid`), or of that person (`sub`), ends. 200 when done; 400
/// with an OAuth error body when the request or token is not acceptable; 503 when the
/// provider's keys cannot be fetched (a later delivery may succeed).
async fn backchannel_logout(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return logout_refused("the body must be application/x-www-form-urlencoded");
    }
    let tokens: Vec<String> = form_urlencoded::parse(&body)
        .filter(|(name, _)| name == "logout_token")
        .map(|(_, value)| value.into_owned())
        .collect();
    let [token] = tokens.as_slice() else {
        return logout_refused("exactly one logout_token is required");
    };
    let provider = &app.provider;
    match provider
        .logout_tokens
        .verify(token, &provider.keys, &provider.http)
        .await
    {
        Ok(target) => {
            let ended = app
                .sessions
                .remove_where(|s| target.covers(&s.sub, s.sid.as_deref()));
            eprintln!("rp-axum: back-channel logout {target:?}: {ended} session(s) ended");
            (StatusCode::OK, [(CACHE_CONTROL, "no-store")]).into_response()
        }
        Err(LogoutTokenError::Keys(error)) => {
            eprintln!("rp-axum: back-channel logout: {error}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(CACHE_CONTROL, "no-store")],
                Json(json!({
                    "error": "temporarily_unavailable",
                    "error_description": "the provider's keys cannot be fetched",
                })),
            )
                .into_response()
        }
        Err(error) => {
            eprintln!("rp-axum: back-channel logout refused: {error}");
            logout_refused(&error.to_string())
        }
    }
}

fn logout_refused(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(CACHE_CONTROL, "no-store")],
        Json(json!({ "error": "invalid_request", "error_description": why })),
    )
        .into_response()
}

/// `GET /session.json`: whether the request's cookie reaches a live session here, and whose.
async fn session_json(State(app): State<Shared>, headers: HeaderMap) -> Response {
    let body = match app.session(&headers) {
        Some(s) => json!({ "signed_in": true, "sub": s.sub, "sid": s.sid, "name": s.name }),
        None => json!({ "signed_in": false }),
    };
    ([(CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

// ---------------------------------------------------------------------------------------
// Answers.

fn page(app: &App, status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}\
         code{{background:#f2f2f2;padding:0 .2rem}}</style></head>\
         <body><header><p><strong>{title}</strong></p></header><main>{body}</main></body></html>",
        title = escape(&app.name),
    );
    (status, [(CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn error_page(app: &App, status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>Something went wrong</h1><p id=\"problem\">{}</p><p><a href=\"/\">Home</a></p>",
        escape(message)
    );
    page(app, status, &body)
}

/// A 303 to `to`, setting `cookies`.
fn redirect<const N: usize>(to: &str, cookies: [String; N]) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, to.to_owned())],
        AppendHeaders(cookies.map(|c| (SET_COOKIE, c))),
    )
        .into_response()
}

fn with_cookies<const N: usize>(response: Response, cookies: [String; N]) -> Response {
    (AppendHeaders(cookies.map(|c| (SET_COOKIE, c))), response).into_response()
}

/// `text` with the characters that mean something in HTML escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
