//! The browser-facing plumbing of the pages: cookies, CSRF tokens, security headers, the
//! same-origin check, templates and HTML error pages.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{Device, EngineError, SignInError, Timestamp, same_secret};
use sha2::{Digest, Sha256};

use crate::peer::Peer;

/// The SSO session cookie (ASVS4-3.4.4, COOKIE-1): `__Host-`, `Secure`, `HttpOnly`,
/// `SameSite=Lax` (D4: it must survive an application's top-level redirect to us), `Path=/`.
pub const SESSION_COOKIE: &str = "__Host-portcullis";
/// The sign-in in progress (between the password and the last step). Strict: only our pages.
pub const SIGN_IN_COOKIE: &str = "__Host-portcullis-sign-in";
/// The double-submit value that protects the sign-in form before any session exists.
pub const LOGIN_CSRF_COOKIE: &str = "__Host-portcullis-csrf";

/// Browsers keep persistent cookies at most 400 days (COOKIE-8); the server's deadline rules.
const MAX_COOKIE_AGE: Duration = Duration::from_secs(400 * 86_400);

/// The value of cookie `name`, matched exactly (COOKIE-3: `__host-…` from an attacker is not
/// ours). The first one wins when a browser sends several.
pub fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// A `Set-Cookie` for one of our cookies; `max_age: None` makes a browser-session cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    same_site: &str,
    max_age: Option<Duration>,
) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}");
    if let Some(age) = max_age {
        text.push_str(&format!("; Max-Age={}", age.min(MAX_COOKIE_AGE).as_secs()));
    }
    // Cookie values are our own base64url tokens: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A `Set-Cookie` that removes one of our cookies (OWASP-SM-16).
pub fn clear_cookie(name: &str, same_site: &str) -> HeaderValue {
    set_cookie(name, "", same_site, Some(Duration::ZERO))
}

/// The CSRF token of a session: derived from its secret token, so it is bound to the session,
/// changes when the token rotates and needs no storage (NIST4-9).
pub fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"portcullis csrf\0");
    hasher.update(session_token.as_bytes());
    URL_SAFE_NO_PAD.encode(hasher.finalize())
}

/// Constant-time comparison of a presented CSRF value with the expected one.
pub fn csrf_matches(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && same_secret(presented.as_bytes(), expected.as_bytes())
}

/// A `return_to` that stays on this site: a path starting with one `/`. Anything else
/// (absolute URLs, `//host`, `/\host`) becomes the account page: no open redirects.
pub fn safe_return_to(candidate: Option<&str>) -> String {
    match candidate {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && path.len() <= 512
                && !path.chars().any(|c| c.is_control()) =>
        {
            path.to_owned()
        }
        _ => "/account".to_owned(),
    }
}

/// Percent-encodes a query value.
pub fn encode_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Formats a time for people: `2026-11-22 14:03 UTC`.
pub fn human_time(at: Timestamp) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.as_millis()) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// The browser behind a request: where it connects from, what it says it is, its cookies.
#[derive(Debug, Clone)]
pub struct Browser {
    /// The peer address (no proxy headers are trusted).
    pub ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The request headers (for cookies).
    pub headers: HeaderMap,
}

impl Browser {
    /// The device as sessions record it.
    pub fn device(&self) -> Device {
        Device {
            user_agent: self.user_agent.clone(),
            ip: self.ip.clone(),
        }
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        read_cookie(&self.headers, name).filter(|v| !v.is_empty())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Browser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer.addr().ip().to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect());
        Ok(Self {
            ip,
            user_agent,
            headers: parts.headers.clone(),
        })
    }
}

/// How the pages are served.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Served over TLS (adds HSTS).
    pub tls: bool,
    /// An operator's directory whose `templates/` and `assets/` replace the built-in files of
    /// the same name.
    pub theme_dir: Option<PathBuf>,
    /// The name shown in the pages and authenticator apps.
    pub product: String,
}

impl Default for UiSettings {
    fn default() -> Self {
        Self {
            tls: false,
            theme_dir: None,
            product: "Portcullis".to_owned(),
        }
    }
}

const TEMPLATES: [(&str, &str); 11] = [
    ("base.html", include_str!("../../ui/templates/base.html")),
    ("login.html", include_str!("../../ui/templates/login.html")),
    ("otp.html", include_str!("../../ui/templates/otp.html")),
    ("stay.html", include_str!("../../ui/templates/stay.html")),
    (
        "reauth.html",
        include_str!("../../ui/templates/reauth.html"),
    ),
    (
        "account.html",
        include_str!("../../ui/templates/account.html"),
    ),
    (
        "password.html",
        include_str!("../../ui/templates/password.html"),
    ),
    (
        "two_factor.html",
        include_str!("../../ui/templates/two_factor.html"),
    ),
    (
        "logout.html",
        include_str!("../../ui/templates/logout.html"),
    ),
    (
        "signed_out.html",
        include_str!("../../ui/templates/signed_out.html"),
    ),
    ("error.html", include_str!("../../ui/templates/error.html")),
];

const ASSETS: [(&str, &str, &str); 2] = [
    (
        "portcullis.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/assets/portcullis.css"),
    ),
    (
        "expiry.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/assets/expiry.js"),
    ),
];

/// The pages' templates and assets: built in, each replaceable from the theme directory.
pub struct Ui {
    /// The settings.
    pub settings: UiSettings,
    templates: minijinja::Environment<'static>,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Ui {
    /// Pages with these settings.
    pub fn new(settings: UiSettings) -> Self {
        let mut templates = minijinja::Environment::new();
        let theme = settings.theme_dir.clone();
        templates.set_loader(move |name| {
            if let Some(dir) = theme.as_ref().filter(|_| plain_name(name)) {
                match std::fs::read_to_string(dir.join("templates").join(name)) {
                    Ok(text) => return Ok(Some(text)),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(minijinja::Error::new(
                            minijinja::ErrorKind::TemplateNotFound,
                            format!("cannot read the theme's {name}: {err}"),
                        ));
                    }
                }
            }
            Ok(TEMPLATES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| (*text).to_owned()))
        });
        Self {
            settings,
            templates,
        }
    }

    /// Renders a page; a broken theme template gives the built-in error page's text.
    pub fn render(&self, name: &str, context: minijinja::Value) -> String {
        let page = self
            .templates
            .get_template(name)
            .and_then(|template| template.render(&context));
        match page {
            Ok(html) => html,
            Err(err) => {
                tracing::error!(template = name, error = %err, "a page template failed to render");
                "<!doctype html><title>Error</title><h1>Something went wrong</h1><p>Please try again later.</p>".to_owned()
            }
        }
    }

    /// An asset's content type and bytes.
    pub fn asset(&self, name: &str) -> Option<(&'static str, Vec<u8>)> {
        let (_, content_type, built_in) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
        if let Some(bytes) = self
            .settings
            .theme_dir
            .as_ref()
            .and_then(|dir| std::fs::read(dir.join("assets").join(name)).ok())
        {
            return Some((content_type, bytes));
        }
        Some((content_type, built_in.as_bytes().to_vec()))
    }
}

/// Adds the pages' security headers: CSP without inline script, no framing, no referrer,
/// no sniffing, HSTS on TLS.
pub async fn security_headers(State(tls): State<bool>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    if tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Refuses cross-site state changes (ASVS5-3.5.1): a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` whose host is not ours. The per-form CSRF token is checked
/// by each handler on top of this.
pub async fn same_origin_only(request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) => !matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => {
            let host = text("host").unwrap_or_default();
            let origin_host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            origin_host != Some(host)
        }
        (None, None) => false,
    };
    if cross_site {
        return PageError::CrossSite.into_response();
    }
    next.run(request).await
}

/// What a page can fail with; each becomes a friendly HTML page.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The store or user store cannot answer: fail closed.
    #[error("sign-in is unavailable right now")]
    Unavailable,
    /// A cross-site request for a state change.
    #[error("cross-site request refused")]
    CrossSite,
    /// The form's CSRF token is missing or stale (e.g. the session rotated in another tab).
    #[error("the form expired")]
    StaleForm,
    /// No such thing (or not yours).
    #[error("not found")]
    NotFound,
    /// A request that cannot be carried out.
    #[error("{0}")]
    BadRequest(String),
    /// Something unexpected.
    #[error("internal error")]
    Internal,
}

impl From<EngineError> for PageError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Store(_) => Self::Unavailable,
            EngineError::NotFound => Self::NotFound,
            EngineError::Invalid(text) => Self::BadRequest(text),
            other => {
                tracing::warn!(error = %other, "a page request failed");
                Self::Internal
            }
        }
    }
}

impl From<SignInError> for PageError {
    fn from(err: SignInError) -> Self {
        match err {
            SignInError::Store(_) => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

impl From<portcullis_core::AccountError> for PageError {
    fn from(err: portcullis_core::AccountError) -> Self {
        use portcullis_core::AccountError as E;
        match err {
            E::Store(_) => Self::Unavailable,
            E::NotFound => Self::NotFound,
            other => Self::BadRequest(other.to_string()),
        }
    }
}

impl From<portcullis_core::RuleError> for PageError {
    fn from(err: portcullis_core::RuleError) -> Self {
        match err {
            portcullis_core::RuleError::Account(err) => err.into(),
            portcullis_core::RuleError::Engine(err) => err.into(),
        }
    }
}

/// Marks a response whose body the error-page layer renders.
#[derive(Debug, Clone, Copy)]
pub struct ErrorPage {
    /// Heading.
    pub heading: &'static str,
    /// What happened and what to do.
    pub message: &'static str,
}

impl PageError {
    fn page(&self) -> (StatusCode, ErrorPage) {
        let page = |heading, message| ErrorPage { heading, message };
        match self {
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Sign-in is unavailable",
                    "We cannot check sessions right now, so nobody is let in. Please try again in a minute.",
                ),
            ),
            Self::CrossSite => (
                StatusCode::FORBIDDEN,
                page(
                    "Request refused",
                    "This request came from another site, so it was not carried out.",
                ),
            ),
            Self::StaleForm => (
                StatusCode::FORBIDDEN,
                page(
                    "This form has expired",
                    "The page was open for too long or you signed in again elsewhere. Go back, reload the page and try again.",
                ),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                page("Page not found", "There is nothing here."),
            ),
            Self::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                page(
                    "That did not work",
                    "The request could not be carried out. Go back and try again.",
                ),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                page("Something went wrong", "Please try again later."),
            ),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, page) = self.page();
        let mut response = status.into_response();
        response.extensions_mut().insert(page);
        response
    }
}
