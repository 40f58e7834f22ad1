//! Portcullis's HTTP layer: the session API v1 (DESIGN §5), the local admin API, ops endpoints
//! and the OpenAPI document.
//!
//! **Architecture Invariant:** this is the only crate that knows HTTP, headers and the JSON wire
//! format. Domain types are converted to views in [`wire`]; errors become RFC 9457 problem
//! documents in [`error`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod error;
pub mod json;
pub mod oidc;
pub mod outbound;
pub mod peer;
pub mod ui;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Extension, Json, Router};
use portcullis_core::{Accounts, Engine, Principal, Store};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::peer::Peer;
use crate::wire::StatusView;

/// Renders the Prometheus exposition text.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What every handler shares: one pointer, so handing it to a handler costs one atomic add.
pub struct AppState<S>(Arc<Shared<S>>);

struct Shared<S> {
    services: Services<S>,
    edge: Edge,
}

/// What the server knows beyond its services: the network in front of it and the health of
/// the audit log it writes.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// The proxies whose `Forwarded` / `X-Forwarded-For` name the client
    /// ([`peer::resolve_client`]); empty: the TCP peer is the client.
    pub trusted_proxies: peer::TrustedProxies,
    /// The audit log's writes: `/readyz` answers 503 while the last one failed.
    pub audit: AuditHealth,
    /// Who may read `/metrics`.
    pub metrics: MetricsAccess,
}

/// Who may read `/metrics` over TCP: a client (as [`peer::resolve_client`] finds it) in
/// `allow`, or anyone presenting `token` as a bearer token. Default: loopback only, no token.
/// Requests that came over no TCP connection (the admin socket, in-process tests) always may.
#[derive(Clone)]
pub struct MetricsAccess {
    /// Clients allowed without a token.
    pub allow: peer::TrustedProxies,
    /// A bearer token that is also accepted.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for MetricsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsAccess")
            .field("allow", &self.allow)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Default for MetricsAccess {
    fn default() -> Self {
        Self {
            allow: peer::TrustedProxies::parse(["127.0.0.0/8", "::1"]).unwrap_or_default(),
            token: None,
        }
    }
}

impl MetricsAccess {
    /// Whether a request from `client` (`None`: not over TCP) with `headers` may read.
    pub fn allows(
        &self,
        client: Option<std::net::IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> bool {
        let Some(ip) = client else { return true };
        if self.allow.contains(ip) {
            return true;
        }
        let Some(token) = &self.token else {
            return false;
        };
        let presented = bearer(headers).unwrap_or("");
        use sha2::Digest;
        // Equal-length digests, so the comparison's time says nothing about the token.
        sha2::Sha256::digest(presented.as_bytes()) == sha2::Sha256::digest(token.as_bytes())
    }
}

/// Whether audit events are reaching the audit log: the writer reports each write, `/readyz`
/// reads it. A clone shares the same state.
#[derive(Debug, Clone, Default)]
pub struct AuditHealth(Arc<AtomicU64>);

impl AuditHealth {
    /// A write failed.
    pub fn write_failed(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A write succeeded: earlier failures no longer make the server unready.
    pub fn write_succeeded(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    /// Writes that failed since the last one that succeeded.
    pub fn failures_since_success(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The services behind [`AppState`].
pub struct Services<S> {
    /// The session engine.
    pub engine: Arc<Engine<S>>,
    /// Local accounts and their credentials.
    pub accounts: Arc<Accounts>,
    /// The pages' settings and templates.
    pub ui: Arc<ui::web::Ui>,
    /// Renders `/metrics` (absent when no recorder is installed).
    pub metrics: Option<MetricsRenderer>,
    /// The OpenID Connect provider (absent when it is not configured).
    pub provider: Option<Arc<portcullis_oidc::Provider<S>>>,
    /// The upstream identity providers people may sign in through (absent when none is
    /// configured).
    pub federation: Option<Arc<portcullis_upstream::Federation>>,
}

impl<S> AppState<S> {
    /// Shares `services` with every handler (no trusted proxies, no audit log watched).
    pub fn new(services: Services<S>) -> Self {
        Self::with_edge(services, Edge::default())
    }

    /// Shares `services` with every handler, with what the server knows of its `edge`.
    pub fn with_edge(services: Services<S>, edge: Edge) -> Self {
        Self(Arc::new(Shared { services, edge }))
    }

    /// The trusted proxies and the audit log's health.
    pub fn edge(&self) -> &Edge {
        &self.0.edge
    }
}

impl<S: Store> Services<S> {
    /// The rules that join accounts and sessions (password changes, disabling, recent
    /// authentication), shared by the admin API and the pages.
    pub fn rules(&self) -> portcullis_core::AccountRules<'_, S> {
        portcullis_core::AccountRules::new(&self.engine, &self.accounts)
    }
}

impl<S> std::ops::Deref for AppState<S> {
    type Target = Services<S>;

    fn deref(&self) -> &Services<S> {
        &self.0.services
    }
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

/// The credentials of an `Authorization: Bearer` header (the scheme in any case, RFC 9110
/// §11.1).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credentials.trim())
}

/// Who is calling and what they reach: an application's principal for an API key, the
/// operator on the admin socket.
///
/// As an extractor it is the API-key check of API v1: every v1 handler takes it first, so a
/// request without a valid key is refused before its body is read. On the admin socket the
/// router has already set it (the socket's permissions are the credential).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Store> FromRequestParts<AppState<S>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let presented = bearer(&parts.headers).ok_or(ApiError::MissingApiKey)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer);
        // Read before the check, so a revocation during it makes the memory stale.
        let revocations = state.engine.api_key_revocations();
        let now = state.engine.now();
        if let Some(caller) = peer.and_then(|p| p.checked_caller(presented, revocations, now)) {
            return Ok(caller);
        }
        match state.engine.authenticate_api_key(presented).await {
            Ok(Some(principal)) => {
                let caller = Caller(principal);
                if let Some(peer) = peer {
                    peer.remember(presented, &caller, revocations, now);
                }
                Ok(caller)
            }
            Ok(None) => Err(ApiError::InvalidApiKey),
            Err(err) => Err(ApiError::from(err)),
        }
    }
}

/// Bodies larger than the data limit plus room for the rest of a request are refused early.
fn body_limit<S: Store>(state: &AppState<S>) -> usize {
    state.engine.settings().max_data_bytes + 16 * 1024
}

fn v1_routes<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/v1/sessions", post(api::create_session::<S>))
        .route("/v1/sessions/validate", post(api::validate_session::<S>))
        .route("/v1/sessions/rotate", post(api::rotate_session::<S>))
        .route("/v1/sessions/elevate", post(api::elevate_session::<S>))
        .route("/v1/sessions/logout", post(api::logout_session::<S>))
        .route(
            "/v1/sessions/{id}",
            get(api::get_session::<S>).delete(api::revoke_session::<S>),
        )
        .route("/v1/sessions/{id}/data", put(api::replace_data::<S>))
        .route(
            "/v1/subjects/{subject}/sessions",
            get(api::list_subject::<S>).delete(api::end_subject::<S>),
        )
        .route("/v1/events", get(api::list_events::<S>))
}

fn ops_routes<S: Store>() -> Router<AppState<S>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .route("/openapi.json", get(openapi_json::<S>))
}

/// The layers every answer passes, applied once around the whole router (a layer on a
/// `Router` would wrap each route separately, at a cost on every request).
fn finish<S: Store>(router: Router<AppState<S>>, state: AppState<S>) -> Router {
    let limit = body_limit(&state);
    let settings = &state.ui.settings;
    let hsts = settings.tls.then(|| settings.hsts.header_value());
    let routes = router
        // Per matched route: the template is only known inside the routes.
        .route_layer(axum::middleware::from_fn(track_request))
        .fallback(no_route::<S>)
        .method_not_allowed_fallback(wrong_method::<S>)
        .with_state(state);
    let layered = tower::ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
        // ASVS5-14.3.2: answers carry tokens and personal data; nothing may cache them.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(DefaultBodyLimit::max(limit))
        // ASVS5-3.4.1: over TLS every answer carries HSTS, not only the pages (which also send
        // it when a trusted proxy ended TLS).
        .option_layer(hsts.map(|value| {
            SetResponseHeaderLayer::if_not_present(header::STRICT_TRANSPORT_SECURITY, value)
        }))
        // ASVS5-3.4.6: no answer may be framed, nor sniffed, pages or not (the
        // pages set their own, fuller policy).
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .service(routes);
    Router::new().fallback_service(layered)
}

async fn no_route<S: Store>(State(state): State<AppState<S>>, headers: HeaderMap) -> Response {
    ui::unrouted(&state, &headers, StatusCode::NOT_FOUND, ApiError::NoRoute)
}

async fn wrong_method<S: Store>(State(state): State<AppState<S>>, headers: HeaderMap) -> Response {
    ui::unrouted(
        &state,
        &headers,
        StatusCode::METHOD_NOT_ALLOWED,
        ApiError::MethodNotAllowed,
    )
}

/// The public listener: v1 behind API keys, the ops endpoints and the sign-in and account
/// pages.
pub fn api_router<S: Store>(state: AppState<S>) -> Router {
    let pages = ui::routes(&state);
    finish(
        v1_routes::<S>()
            .merge(ops_routes::<S>())
            .merge(oidc::routes::<S>())
            .merge(pages),
        state,
    )
}

/// The local admin API, served only on the data directory's Unix socket: v1 without API keys
/// (the socket's file permissions are the credential), API key management, and ops.
/// The CLI talks to a running server through it, so its changes take effect at once.
pub fn admin_router<S: Store>(state: AppState<S>) -> Router {
    let admin = Router::new()
        .route(
            "/admin/api-keys",
            post(api::create_api_key::<S>).get(api::list_api_keys::<S>),
        )
        .route("/admin/api-keys/{id}", delete(api::revoke_api_key::<S>))
        .route(
            "/admin/applications",
            post(api::create_application::<S>).get(api::list_applications::<S>),
        )
        .route(
            "/admin/applications/{app}",
            get(api::get_application::<S>)
                .patch(api::update_application::<S>)
                .delete(api::remove_application::<S>),
        )
        .route(
            "/admin/users",
            post(api::create_user::<S>).get(api::list_users::<S>),
        )
        .route(
            "/admin/applications/{app}/client",
            put(api::register_client::<S>).delete(api::unregister_client::<S>),
        )
        .route("/admin/oidc/keys", get(api::list_signing_keys::<S>))
        .route("/admin/deliveries", get(api::list_deliveries::<S>))
        .route("/admin/deliveries/{session}", get(api::get_delivery::<S>))
        .route(
            "/admin/deliveries/{session}/retry",
            post(api::retry_delivery::<S>),
        )
        .route(
            "/admin/oidc/keys/rotate",
            post(api::rotate_signing_key::<S>),
        )
        .route("/admin/users/{username}", patch(api::update_user::<S>))
        .route("/admin/openapi.json", get(admin_openapi_json));
    let routes = v1_routes::<S>()
        .merge(admin)
        .layer(Extension(Caller(Principal::operator())));
    finish(routes.merge(ops_routes::<S>()), state)
}

/// The route template of a path that matched a route (the routes with parameters are few).
pub fn route_template(path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let template = match segments.as_slice() {
        ["v1", "sessions", verb] if ["validate", "rotate", "elevate", "logout"].contains(verb) => {
            return path.to_owned();
        }
        ["v1", "sessions", _] => "/v1/sessions/{id}",
        ["v1", "sessions", _, "data"] => "/v1/sessions/{id}/data",
        ["v1", "subjects", _, "sessions"] => "/v1/subjects/{subject}/sessions",
        ["admin", "api-keys", _] => "/admin/api-keys/{id}",
        ["admin", "applications", _] => "/admin/applications/{app}",
        ["admin", "applications", _, "client"] => "/admin/applications/{app}/client",
        ["admin", "users", _] => "/admin/users/{username}",
        ["admin", "deliveries", _] => "/admin/deliveries/{session}",
        ["admin", "deliveries", _, "retry"] => "/admin/deliveries/{session}/retry",
        ["assets", _] => "/assets/{name}",
        _ => return path.to_owned(),
    };
    template.to_owned()
}

/// `portcullis_http_request_duration_seconds{route, method, status}`: the route template
/// (`/v1/sessions/{id}`), never the path a client typed, so the label set stays bounded.
async fn track_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = std::time::Instant::now();
    let route = route_template(request.uri().path());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(
        "portcullis_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => status,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

async fn healthz() -> Json<StatusView> {
    Json(StatusView { status: "ok" })
}

/// Ready when the store answers and the audit log takes events: a server that cannot write its
/// audit trail is taken out of rotation rather than acting unrecorded (503 `audit_unavailable`
/// from the first failed write until the next write succeeds).
async fn readyz<S: Store>(State(state): State<AppState<S>>) -> Response {
    if let Err(err) = state.engine.store().ping().await {
        return ApiError::from(portcullis_core::EngineError::from(err)).into_response();
    }
    let failures = state.edge().audit.failures_since_success();
    if failures > 0 {
        let problem = error::Problem {
            kind: "urn:portcullis:problem:audit_unavailable".to_owned(),
            title: "The audit log is not being written".to_owned(),
            status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            detail: format!(
                "{failures} audit event(s) could not be written to the audit log since the last successful write (see portcullis_audit_write_failures_total)"
            ),
            reason: "audit_unavailable".to_owned(),
            ended_reason: None,
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(problem),
        )
            .into_response();
    }
    Json(StatusView { status: "ready" }).into_response()
}

async fn metrics_text<S: Store>(
    State(state): State<AppState<S>>,
    peer::ClientAddr(client): peer::ClientAddr,
    headers: axum::http::HeaderMap,
) -> Response {
    if !state.edge().metrics.allows(client, &headers) {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics are not served to this client (see metrics_allow and metrics_token)\n",
        )
            .into_response();
    }
    let text = state
        .metrics
        .as_ref()
        .map(|render| render())
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

async fn admin_openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&AdminApiDoc::openapi()).unwrap_or_default(),
    )
        .into_response()
}

async fn openapi_json<S: Store>(State(state): State<AppState<S>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        served_openapi(state.engine.policies()).to_string(),
    )
        .into_response()
}

/// The OpenAPI document as this server serves it: [`ApiDoc`], with the names of its
/// configured policies as the values `policy` may take (a policy the caller's application may
/// not use is still refused, 403).
pub fn served_openapi(policies: &portcullis_core::PolicySet) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let names: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| serde_json::Value::from(p.name.clone()))
        .chain([serde_json::Value::Null])
        .collect();
    if let Some(policy) = doc.pointer_mut("/components/schemas/CreateSessionBody/properties/policy")
    {
        policy["enum"] = serde_json::Value::Array(names);
    }
    doc
}

/// The OpenAPI description of the admin API (`/admin/…`, on the data directory's Unix socket,
/// the CLI's contract), served there at `/admin/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis admin API", version = "1",
        description = "Local administration over the data directory's Unix socket (its file permissions are the credential): applications, API keys, accounts, OpenID Connect clients, signing keys and back-channel logout deliveries. Errors are application/problem+json."),
    paths(
        api::create_application, api::list_applications, api::get_application,
        api::update_application, api::remove_application, api::create_api_key,
        api::list_api_keys, api::revoke_api_key, api::create_user, api::list_users,
        api::update_user, api::register_client, api::unregister_client,
        api::list_signing_keys, api::rotate_signing_key, api::list_deliveries,
        api::get_delivery, api::retry_delivery,
    ),
    tags((name = "admin"), (name = "oidc")),
)]
pub struct AdminApiDoc;

/// The OpenAPI description of API v1.
#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis session API", version = "1",
        description = "Session authority: create, validate, rotate, elevate and end sessions. Errors are application/problem+json with a stable `reason`."),
    paths(
        api::create_session, api::validate_session, api::rotate_session, api::elevate_session,
        api::logout_session, api::get_session, api::revoke_session, api::replace_data,
        api::list_subject, api::end_subject, api::list_events,
    ),
    modifiers(&BearerAuth, &CommonProblems),
    tags((name = "sessions"), (name = "subjects"), (name = "events")),
)]
pub struct ApiDoc;

struct BearerAuth;

/// The problems any v1 operation can answer, added to each operation that does not describe
/// them itself: 401 (API key), 503 (fail closed), and for a body 400, 413, 415 and 422, for
/// parameters 400.
struct CommonProblems;

impl utoipa::Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let mut common = vec![
                    ("401", "`missing_api_key` or `invalid_api_key`"),
                    (
                        "503",
                        "`store_unavailable`: the store cannot answer (fail closed)",
                    ),
                ];
                if operation.request_body.is_some() {
                    common.extend([
                        ("400", "`malformed_json`: the body is not JSON"),
                        ("413", "`body_too_large`"),
                        ("415", "`unsupported_media_type`: send `Content-Type: application/json`"),
                        ("422", "`invalid_body`: the body does not match its schema (unknown field, wrong type, missing field, out of bounds)"),
                    ]);
                }
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    common.push(("400", "`invalid_parameter`: a path or query parameter that does not match its schema"));
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`pck_…`) from `portcullis api-keys create`",
                    ))
                    .build(),
            ),
        );
    }
}
