//! The browser-facing plumbing of the pages: cookies, CSRF tokens, security headers, the
//! same-origin check, templates and HTML error pages.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{Device, EngineError, SignInError, Store, Timestamp, same_secret};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::peer::client_of;

/// The SSO session cookie (ASVS4-3.4.4, COOKIE-1): `__Host-`, `Secure`, `HttpOnly`,
/// `SameSite=Lax` (D4: it must survive an application's top-level redirect to us), `Path=/`.
pub const SESSION_COOKIE: &str = "__Host-portcullis";
/// The sign-in in progress (between the password and the last step). Strict: only our pages.
pub const SIGN_IN_COOKIE: &str = "__Host-portcullis-sign-in";
/// The double-submit value that protects the sign-in form before any session exists.
pub const LOGIN_CSRF_COOKIE: &str = "__Host-portcullis-csrf";
/// A browser someone signed in on before ([`portcullis_core::Accounts::device_cookie`]):
/// their password attempts from it are not blocked by strangers' failures. Strict, 180 days;
/// signing out clears it with the rest of the site's data.
pub const DEVICE_COOKIE: &str = "__Host-portcullis-device";
/// How long a device cookie lasts.
pub const DEVICE_COOKIE_AGE: Duration = Duration::from_secs(180 * 86_400);

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
/// (absolute URLs, `//host`, `/\host`) becomes the account page: no open redirects. What a
/// URI may not hold as it is (a space, a non-ASCII letter, a backslash, which browsers read as
/// `/`) is percent-encoded, so the `Location` it becomes is a valid URI.
pub fn safe_return_to(candidate: Option<&str>) -> String {
    match candidate {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && path.len() <= 512
                && !path.chars().any(|c| c.is_control()) =>
        {
            let mut safe = String::with_capacity(path.len());
            for b in path.bytes() {
                if b.is_ascii_graphic()
                    && !matches!(
                        b,
                        b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
                    )
                {
                    safe.push(char::from(b));
                } else {
                    safe.push_str(&format!("%{b:02X}"));
                }
            }
            safe
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
    /// The client's address: the TCP peer, or what a trusted proxy reports
    /// ([`crate::peer::resolve_client`]).
    pub ip: Option<String>,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The request headers (for cookies).
    pub headers: HeaderMap,
}

impl Browser {
    /// Where a credential attempt from this browser comes from.
    pub fn origin(&self) -> portcullis_core::Origin<'_> {
        portcullis_core::Origin {
            address: self.ip.as_deref(),
            device: self.cookie(DEVICE_COOKIE),
            user_agent: self.user_agent.as_deref(),
        }
    }

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

impl<S: Store> FromRequestParts<AppState<S>> for Browser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let ip = client_of(
            &parts.extensions,
            &parts.headers,
            &state.edge().trusted_proxies,
        )
        .map(|client| client.ip.to_string());
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

/// `Strict-Transport-Security` on the pages (ASVS5-3.4.1), sent when they are served over
/// TLS: by Portcullis itself, or by a trusted proxy that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hsts {
    /// `max-age` (default one year, the ASVS minimum).
    pub max_age: Duration,
    /// `includeSubDomains`: every subdomain must be HTTPS too (ASVS L2); off unless configured,
    /// because it breaks any plain-HTTP site under the same domain.
    pub include_subdomains: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(31_536_000),
            include_subdomains: false,
        }
    }
}

impl Hsts {
    /// The header's value.
    pub fn header_value(&self) -> HeaderValue {
        let mut text = format!("max-age={}", self.max_age.as_secs());
        if self.include_subdomains {
            text.push_str("; includeSubDomains");
        }
        HeaderValue::from_str(&text)
            .unwrap_or_else(|_| HeaderValue::from_static("max-age=31536000"))
    }
}

/// How the pages are served.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Served over TLS by Portcullis itself (adds HSTS).
    pub tls: bool,
    /// The HSTS header sent over TLS.
    pub hsts: Hsts,
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
            hsts: Hsts::default(),
            theme_dir: None,
            product: "Portcullis".to_owned(),
        }
    }
}

const TEMPLATES: [(&str, &str); 14] = [
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
    (
        "consent.html",
        include_str!("../../ui/templates/consent.html"),
    ),
    (
        "end_session.html",
        include_str!("../../ui/templates/end_session.html"),
    ),
    (
        "continue.html",
        include_str!("../../ui/templates/continue.html"),
    ),
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

/// The pages' Content Security Policy: no inline script, nothing framed, nothing from
/// elsewhere. Forms post only to us, and to `form_target` (`scheme://host[:port]`) when one of
/// our answers to them redirects there: `form-action` also governs the redirects after a form
/// submission (CSP3 §6.3.1, enforced by Chromium), so a sign-in that ends with the redirect to
/// an OpenID Connect client must name that client's origin.
pub fn content_security_policy(form_target: Option<&str>) -> HeaderValue {
    framing_policy(form_target, &[])
}

/// [`content_security_policy`] for a page that also frames `frames` (origins): the sign-out
/// page loads each client's front-channel logout page.
pub fn framing_policy(form_target: Option<&str>, frames: &[&str]) -> HeaderValue {
    const BASE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                        img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                        frame-ancestors 'none'; base-uri 'none'";
    let mut policy = BASE.to_owned();
    if let Some(origin) = form_target {
        policy = policy.replace(
            "form-action 'self';",
            &format!("form-action 'self' {origin};"),
        );
    }
    if !frames.is_empty() {
        policy.push_str("; frame-src ");
        policy.push_str(&frames.join(" "));
    }
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static(BASE))
}

/// Adds the pages' security headers: CSP without inline script, no framing, no referrer,
/// no sniffing, HSTS on TLS — whether Portcullis serves TLS itself or a trusted proxy ends it
/// and says so (`Forwarded: proto=https`, `X-Forwarded-Proto: https`).
pub async fn security_headers<S: Store>(
    State(state): State<AppState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let settings = &state.ui.settings;
    let https = settings.tls
        || client_of(
            request.extensions(),
            request.headers(),
            &state.edge().trusted_proxies,
        )
        .is_some_and(|client| client.forwarded_https);
    // While an authorization is in progress in this browser, the forms on the way (sign-in,
    // "Stay signed in?", re-authentication) end in a redirect to the client.
    let form_target = super::authorize::pending_form_target(&state, request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A page that must let its form lead elsewhere (the consent page, to the client) sets its
    // own policy.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert_with(|| content_security_policy(form_target.as_deref()));
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
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            settings.hsts.header_value(),
        );
    }
    response
}

/// Refuses cross-site state changes (ASVS5-3.5.1): a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` whose host is not ours. The per-form CSRF token is checked
/// by each handler on top of this.
pub async fn same_origin_only(request: Request, next: Next) -> Response {
    // The authorization and RP-initiated logout endpoints accept an application's cross-site
    // POST (OIDC Core §3.1.2.1, OIDC-RPL-2); their handlers change nothing on such a POST (they
    // turn it into the GET), and the logout confirmation checks its own form's CSRF token. An
    // upstream provider's `form_post` answer is a cross-site POST too.
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) || (request.method() == Method::POST
        && (matches!(request.uri().path(), "/oidc/logout" | "/oidc/authorize")
            || is_upstream_callback(request.uri().path())))
    {
        return next.run(request).await;
    }
    let headers = request.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = match (text("sec-fetch-site"), text("origin")) {
        (Some(site), _) => !matches!(site, "same-origin" | "none"),
        (None, Some(origin)) => {
            // HTTP/2 sends no `Host`: its `:authority` is the URI's.
            let host = text("host")
                .or_else(|| request.uri().authority().map(|a| a.as_str()))
                .unwrap_or_default();
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

/// Whether `path` is where an upstream provider's `form_post` answer arrives: a cross-site
/// POST by design, bound to this browser by its sealed cookie and `state` instead.
fn is_upstream_callback(path: &str) -> bool {
    path.strip_prefix("/login/upstream/")
        .and_then(|rest| rest.strip_suffix("/callback"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// What a page can fail with; each becomes a friendly HTML page.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The store or user store cannot answer: fail closed.
    #[error("sign-in is unavailable right now")]
    Unavailable,
    /// Signing out could not be carried out because the store cannot answer: the person may
    /// still be signed in, here and in the applications under the SSO session.
    #[error("sign-out is unavailable right now")]
    SignOutUnavailable,
    /// Too many credential checks are queued: come back shortly (503 with `Retry-After`).
    #[error("too busy to check credentials")]
    Busy,
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
            SignInError::Busy(_) => Self::Busy,
            _ => Self::Internal,
        }
    }
}

impl From<portcullis_core::AccountError> for PageError {
    fn from(err: portcullis_core::AccountError) -> Self {
        use portcullis_core::AccountError as E;
        match err {
            E::Store(_) => Self::Unavailable,
            E::Busy(_) => Self::Busy,
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
            Self::SignOutUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "You may still be signed in",
                    "We cannot reach the sessions right now, so signing out did not finish: you may still be signed in, here and in the applications you used. Please try again in a minute.",
                ),
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                page(
                    "Too many sign-ins at once",
                    "We are checking many sign-ins right now. Wait a moment, then try again.",
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

/// A form of the pages. What cannot be read as the form (another content type, a field that is
/// missing or of the wrong kind) gets the pages' friendly error, not the framework's plain text.
pub struct PageForm<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for PageForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(form)) => Ok(Self(form)),
            Err(rejection) => {
                tracing::debug!(%rejection, "a page's form could not be read");
                Err(PageError::BadRequest("the form could not be read".into()))
            }
        }
    }
}

/// The query of a page, read as [`PageForm`] reads a form: what cannot be read (a parameter
/// given twice, one of the wrong kind) gets the pages' friendly error.
pub struct PageQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for PageQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(query)) => Ok(Self(query)),
            Err(rejection) => {
                tracing::debug!(%rejection, "a page's query could not be read");
                Err(PageError::BadRequest("the query could not be read".into()))
            }
        }
    }
}

/// The path parameters of a page, read as [`PageQuery`] reads a query: one that cannot be read
/// (bytes that are not UTF-8) gets the pages' friendly error.
pub struct PagePath<T>(pub T);

impl<T, S> FromRequestParts<S> for PagePath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, PageError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                tracing::debug!(%rejection, "a page's path could not be read");
                Err(PageError::BadRequest(
                    "the address could not be read".into(),
                ))
            }
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, page) = self.page();
        let mut response = status.into_response();
        match self {
            Self::Busy => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unavailable | Self::SignOutUnavailable => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(crate::error::RETRY_AFTER_SECONDS),
                );
            }
            _ => {}
        }
        response.extensions_mut().insert(page);
        response
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, header};
    use axum::routing::get;
    use portcullis_core::{
        Accounts, Engine, MemoryStore, MemoryUserStore, NoAuditSink, OsRandom, PolicySet,
        SystemClock,
    };
    use tower::ServiceExt;

    use super::{Browser, Hsts, Ui, UiSettings};
    use crate::peer::{ClientAddr, Peer, ProxyHeaders, TrustedProxies};
    use crate::{AppState, Edge, Services, api_router};

    fn state(settings: UiSettings, trusted: &[&str]) -> AppState<MemoryStore> {
        state_behind(settings, trusted, ProxyHeaders::XForwarded)
    }

    /// [`state`], behind proxies that write `headers`.
    fn state_behind(
        settings: UiSettings,
        trusted: &[&str],
        headers: ProxyHeaders,
    ) -> AppState<MemoryStore> {
        let clock = Arc::new(SystemClock);
        let services = Services {
            engine: Arc::new(Engine::new(
                MemoryStore::new(),
                PolicySet::default(),
                clock.clone(),
                Arc::new(OsRandom),
            )),
            accounts: Arc::new(Accounts::new(
                Arc::new(MemoryUserStore::new()),
                clock,
                Arc::new(OsRandom),
                Arc::new(NoAuditSink),
            )),
            ui: Arc::new(Ui::new(settings)),
            metrics: None,
            provider: None,
            federation: None,
        };
        let edge = Edge {
            trusted_proxies: TrustedProxies::parse(trusted.iter().copied())
                .unwrap()
                .writing(headers),
            ..Edge::default()
        };
        AppState::with_edge(services, edge)
    }

    /// A page answering the client address the pages' extractor and the API's see, behind
    /// the pages' header layer.
    fn whoami(state: AppState<MemoryStore>) -> Router {
        Router::new()
            .route(
                "/whoami",
                get(|browser: Browser, ClientAddr(api): ClientAddr| async move {
                    let api = api.map(|ip| ip.to_string()).unwrap_or_default();
                    format!("{} {api}", browser.ip.unwrap_or_default())
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                super::security_headers::<MemoryStore>,
            ))
            .with_state(state)
    }

    async fn call(
        router: &Router,
        path: &str,
        peer: &str,
        pairs: &[(&str, &str)],
    ) -> axum::response::Response {
        let mut request = Request::get(path);
        for (name, value) in pairs {
            request = request.header(*name, *value);
        }
        let mut request = request.body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(Peer::new(peer)));
        router.clone().oneshot(request).await.unwrap()
    }

    async fn text(response: axum::response::Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn hsts(response: &axum::response::Response) -> Option<&str> {
        response
            .headers()
            .get(header::STRICT_TRANSPORT_SECURITY)
            .and_then(|v| v.to_str().ok())
    }

    const SPOOFED: [(&str, &str); 3] = [
        ("x-forwarded-for", "198.51.100.66"),
        ("forwarded", "for=198.51.100.67;proto=https"),
        ("x-forwarded-proto", "https"),
    ];

    #[test]
    fn return_to_stays_on_this_site_and_is_a_valid_uri() {
        use super::safe_return_to;
        for foreign in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_return_to(Some(foreign)), "/account", "{foreign:?}");
        }
        assert_eq!(safe_return_to(None), "/account");
        assert_eq!(
            safe_return_to(Some("/oidc/authorize/resume")),
            "/oidc/authorize/resume"
        );
        assert_eq!(safe_return_to(Some("/a?b=c&d=%2F")), "/a?b=c&d=%2F");
        // A space, a letter outside ASCII and a backslash are percent-encoded, once.
        let encoded = safe_return_to(Some("/caf\u{e9} a\\b"));
        assert_eq!(encoded, "/caf%C3%A9%20a%5Cb");
        assert_eq!(safe_return_to(Some(&encoded)), encoded);
    }

    #[tokio::test]
    async fn a_spoofed_forwarded_header_from_an_untrusted_peer_is_ignored() {
        // The default: no proxy is trusted.
        let router = whoami(state(UiSettings::default(), &[]));
        let answer = call(&router, "/whoami", "203.0.113.5:4000", &SPOOFED).await;
        assert_eq!(
            hsts(&answer),
            None,
            "a client cannot ask for HSTS over http"
        );
        assert_eq!(text(answer).await, "203.0.113.5 203.0.113.5");

        // Proxies are trusted, but this peer is not one of them.
        let router = whoami(state(UiSettings::default(), &["10.0.0.0/8"]));
        let answer = call(&router, "/whoami", "203.0.113.5:4000", &SPOOFED).await;
        assert_eq!(text(answer).await, "203.0.113.5 203.0.113.5");

        // The same headers through a trusted proxy name the client.
        let answer = call(
            &router,
            "/whoami",
            "10.0.0.2:4000",
            &[("x-forwarded-for", "198.51.100.66, 10.0.0.9")],
        )
        .await;
        assert_eq!(text(answer).await, "198.51.100.66 198.51.100.66");
        // Proxies that write X-Forwarded-For (the default) pass on a client's Forwarded: it is
        // not read. Behind proxies that write Forwarded, X-Forwarded-For is not.
        let answer = call(&router, "/whoami", "[::ffff:10.0.0.2]:4000", &SPOOFED).await;
        assert_eq!(text(answer).await, "198.51.100.66 198.51.100.66");
        let router = whoami(state_behind(
            UiSettings::default(),
            &["10.0.0.0/8"],
            ProxyHeaders::Forwarded,
        ));
        let answer = call(&router, "/whoami", "[::ffff:10.0.0.2]:4000", &SPOOFED).await;
        assert_eq!(text(answer).await, "198.51.100.67 198.51.100.67");
    }

    #[tokio::test]
    async fn asvs5_3_4_1_hsts_when_tls_ends_here_or_at_a_trusted_proxy() {
        let include = UiSettings {
            hsts: Hsts {
                max_age: Duration::from_secs(63_072_000),
                include_subdomains: true,
            },
            ..UiSettings::default()
        };
        let router = api_router(state(include.clone(), &["10.0.0.0/8"]));
        let proxied_https = [("x-forwarded-proto", "https")];
        let answer = call(&router, "/login", "10.0.0.2:4000", &proxied_https).await;
        assert_eq!(hsts(&answer), Some("max-age=63072000; includeSubDomains"));
        let forwarded_https = [("forwarded", "for=198.51.100.7;proto=https")];
        let answer = call(&router, "/login", "10.0.0.2:4000", &forwarded_https).await;
        assert_eq!(
            hsts(&answer),
            None,
            "X-Forwarded-* proxies pass a client's Forwarded on"
        );
        let behind_forwarded = api_router(state_behind(
            include.clone(),
            &["10.0.0.0/8"],
            ProxyHeaders::Forwarded,
        ));
        let answer = call(
            &behind_forwarded,
            "/login",
            "10.0.0.2:4000",
            &forwarded_https,
        )
        .await;
        assert_eq!(hsts(&answer), Some("max-age=63072000; includeSubDomains"));
        // Plain HTTP through the proxy, or anyone else claiming HTTPS: none.
        let answer = call(&router, "/login", "10.0.0.2:4000", &[]).await;
        assert_eq!(hsts(&answer), None);
        let answer = call(&router, "/login", "203.0.113.5:4000", &proxied_https).await;
        assert_eq!(hsts(&answer), None);

        // Served over TLS here: always, one year by default, subdomains only when configured.
        let tls = UiSettings {
            tls: true,
            ..UiSettings::default()
        };
        let answer = call(
            &api_router(state(tls, &[])),
            "/login",
            "203.0.113.5:4000",
            &[],
        )
        .await;
        assert_eq!(hsts(&answer), Some("max-age=31536000"));
        let tls = UiSettings {
            tls: true,
            ..include
        };
        let answer = call(
            &api_router(state(tls, &[])),
            "/login",
            "203.0.113.5:4000",
            &[],
        )
        .await;
        assert_eq!(hsts(&answer), Some("max-age=63072000; includeSubDomains"));
    }
}
