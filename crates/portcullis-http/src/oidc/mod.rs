//! The provider's machine endpoints: discovery and the JWK Set (`discovery`), the token
//! endpoint (`token`), userinfo (`userinfo`), revocation and introspection (`token_state`).
//! Errors here are OAuth's (`{error, error_description}`, RFC 6749 §5.2), never problem+json;
//! the person-facing authorization endpoint is a page flow (`ui::authorize`).
//!
//! Browser clients call these from their own origin: CORS allows any origin without
//! credentials, since nothing here reads a cookie.

pub mod backchannel;
mod discovery;
mod token;
mod token_state;
mod userinfo;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{options, post};
use portcullis_core::Store;
use portcullis_oidc::{Endpoints, Provider, ProviderError, TokenError};
use serde_json::json;
use tower_http::cors::{Any, CorsLayer};

use crate::AppState;

/// Where each endpoint is under the issuer.
pub fn endpoints(issuer: &str) -> Endpoints {
    Endpoints {
        authorization: format!("{issuer}/oidc/authorize"),
        token: format!("{issuer}/oidc/token"),
        userinfo: format!("{issuer}/oidc/userinfo"),
        jwks: format!("{issuer}/oidc/jwks"),
        revocation: format!("{issuer}/oidc/revoke"),
        introspection: format!("{issuer}/oidc/introspect"),
        end_session: format!("{issuer}/oidc/logout"),
    }
}

/// The machine endpoints, with CORS.
pub fn routes<S: Store>() -> Router<AppState<S>> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600));
    // A preflight (`OPTIONS`) must reach the CORS layer: a method a route does not take goes to
    // the router's one 405 answer, outside every route's layers.
    let preflight = || options(|| async { StatusCode::NO_CONTENT });
    // The OAuth endpoints answer even a wrong method in RFC 6749's form.
    let oauth = || preflight().fallback(post_only);
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            preflight().get(discovery::configuration::<S>),
        )
        .route("/oidc/jwks", preflight().get(discovery::jwks::<S>))
        .route("/oidc/token", oauth().post(token::token::<S>))
        .route(
            "/oidc/userinfo",
            preflight()
                .get(userinfo::userinfo::<S>)
                .post(userinfo::userinfo::<S>),
        )
        .route("/oidc/revoke", oauth().post(token_state::revoke::<S>))
        .route(
            "/oidc/introspect",
            oauth().post(token_state::introspect::<S>),
        )
        .route(
            "/federation/{id}/backchannel-logout",
            post(crate::ui::federation::backchannel_logout::<S>),
        )
        .layer(cors)
}

/// The provider, or the 404 to answer when it is not configured.
fn provider_of<S: Store>(state: &AppState<S>) -> Option<Arc<Provider<S>>> {
    state.provider.clone()
}

fn not_configured() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// A method an OAuth endpoint does not take: 405 with `Allow`, its body an RFC 6749 error.
async fn post_only() -> Response {
    let mut response = no_store(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "invalid_request", "error_description": "this endpoint takes POST"}),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// A JSON answer that no cache keeps (RFC 6749 §5.1).
fn no_store(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// An OAuth error answer; a failed client authentication is 401 with a challenge.
fn oauth_error(error: TokenError) -> Response {
    let status = if error.is_client_authentication() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut response = no_store(
        status,
        json!({ "error": error.error, "error_description": error.description }),
    );
    if error.is_client_authentication() {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    response
}

/// The provider could not work (a store is down): fail closed, and say a retry may help.
fn unavailable(err: &ProviderError) -> Response {
    tracing::error!(error = %err, "the OpenID Connect provider cannot answer");
    let mut response = no_store(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({
            "error": "temporarily_unavailable",
            "error_description": "Portcullis cannot answer right now; try again",
        }),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(crate::error::RETRY_AFTER_SECONDS),
    );
    response
}
