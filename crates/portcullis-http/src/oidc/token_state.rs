//! What a client can ask or change about a token it holds: revocation (`/oidc/revoke`,
//! RFC 7009) and introspection (`/oidc/introspect`, RFC 7662). Both need the client to
//! authenticate, and both treat another client's token as unknown.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::{Application, Store};
use portcullis_oidc::{Provider, ProviderOr, TokenError};
use serde::Deserialize;

use super::token::{credentials, unreadable_form};
use super::{endpoints, no_store, not_configured, oauth_error, provider_of, unavailable};
use crate::AppState;

/// The form of a revocation or introspection request.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenStateForm {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// The authenticated client and the token it names, or the answer to give instead.
#[allow(clippy::result_large_err)] // either way the handler answers a Response
async fn authenticated<S: Store>(
    provider: &Provider<S>,
    headers: &HeaderMap,
    form: Result<Form<TokenStateForm>, FormRejection>,
    endpoint: &str,
) -> Result<(Application, String), Response> {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return Err(oauth_error(unreadable_form(&rejection))),
    };
    let (client_id, presented) = credentials(
        headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
        form.client_assertion_type.as_deref(),
        form.client_assertion.as_deref(),
    )
    .map_err(oauth_error)?;
    let (app, _) = match provider
        .authenticate_client(client_id.as_deref(), &presented, endpoint)
        .await
    {
        Ok(found) => found,
        Err(ProviderOr::Protocol(error)) => return Err(oauth_error(error)),
        Err(ProviderOr::Failed(err)) => return Err(unavailable(&err)),
    };
    let token = form.token.ok_or_else(|| {
        oauth_error(TokenError {
            error: "invalid_request",
            description: "token is missing",
        })
    })?;
    Ok((app, token))
}

/// Revocation: 200 whether or not there was anything to revoke (RFC 7009 §2.2).
pub(super) async fn revoke<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    form: Result<Form<TokenStateForm>, FormRejection>,
) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let endpoint = endpoints(&provider.settings().issuer).revocation;
    let (app, token) = match authenticated(&provider, &headers, form, &endpoint).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match provider.revoke(&app, &token).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => unavailable(&err),
    }
}

/// Introspection.
pub(super) async fn introspect<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    form: Result<Form<TokenStateForm>, FormRejection>,
) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let endpoint = endpoints(&provider.settings().issuer).introspection;
    let (app, token) = match authenticated(&provider, &headers, form, &endpoint).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match provider.introspect(&app, &token).await {
        Ok(answer) => no_store(StatusCode::OK, answer),
        Err(err) => unavailable(&err),
    }
}
