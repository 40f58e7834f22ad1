//! Userinfo (`/oidc/userinfo`, OpenID Connect Core §5.3): the claims of the person behind a
//! live access token.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::Store;

use super::{no_store, not_configured, provider_of, unavailable};
use crate::{AppState, bearer};

/// RFC 6750 §3: a missing token gets a bare challenge, a bad one `invalid_token`.
fn challenge(error: Option<&'static str>) -> Response {
    let value = match error {
        Some(error) => format!("Bearer error=\"{error}\""),
        None => "Bearer".to_owned(),
    };
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    if let Ok(value) = HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The userinfo endpoint.
pub(super) async fn userinfo<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let Some(token) = bearer(&headers) else {
        return challenge(None);
    };
    match provider.userinfo(token).await {
        Ok(Some(claims)) => no_store(StatusCode::OK, claims),
        Ok(None) => challenge(Some("invalid_token")),
        Err(err) => unavailable(&err),
    }
}
