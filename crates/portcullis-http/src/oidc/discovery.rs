//! Discovery (`/.well-known/openid-configuration`) and the JWK Set (`/oidc/jwks`).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::Store;
use portcullis_oidc::provider_metadata;

use super::{endpoints, not_configured, provider_of};
use crate::AppState;

/// The discovery document.
pub(super) async fn configuration<S: Store>(State(state): State<AppState<S>>) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let issuer = &provider.settings().issuer;
    let document = provider_metadata(issuer, &endpoints(issuer), &provider.keys().algorithms());
    axum::Json(document).into_response()
}

/// The published keys. Clients cache them briefly: a rotation is seen within minutes, and a
/// retired key stays published far longer than that.
pub(super) async fn jwks<S: Store>(State(state): State<AppState<S>>) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let mut response = (StatusCode::OK, provider.keys().jwks().to_owned()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
