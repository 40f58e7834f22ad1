//! The token endpoint (`POST /oidc/token`): client authentication as the registration says
//! (`client_secret_basic`, `client_secret_post`, `private_key_jwt`, or none with PKCE), then
//! the authorization code or refresh token grant.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use portcullis_core::Store;
use portcullis_oidc::{ClientCredentials, ProviderOr, TokenError, TokenResponse};
use serde::Deserialize;

use super::{endpoints, no_store, not_configured, oauth_error, provider_of, unavailable};
use crate::AppState;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form of a token request; the fields of both grants and every client authentication.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

/// The credentials a client presented and the client id it named: one way only (RFC 6749
/// §2.3: a client must not use more than one method in a request).
/// The RFC 6749 error for a body that is not a readable form, saying what is wrong with it.
pub(super) fn unreadable_form(rejection: &FormRejection) -> TokenError {
    let description = match rejection {
        FormRejection::InvalidFormContentType(_) => {
            "the body must be application/x-www-form-urlencoded"
        }
        FormRejection::BytesRejection(_) => "the body is too large or could not be read",
        // RFC 6749 §3.2: a parameter must not be given more than once.
        _ => "the form cannot be read: a parameter is given twice or is not text",
    };
    TokenError {
        error: "invalid_request",
        description,
    }
}

pub(super) fn credentials(
    headers: &HeaderMap,
    client_id: Option<&str>,
    client_secret: Option<&str>,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
) -> Result<(Option<String>, ClientCredentials), TokenError> {
    let invalid = |description| TokenError {
        error: "invalid_request",
        description,
    };
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if let Some(encoded) = basic {
        if client_secret.is_some() || assertion.is_some() {
            return Err(invalid("use one client authentication method"));
        }
        let bad = TokenError {
            error: "invalid_client",
            description: "malformed Basic credentials",
        };
        let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad)?;
        let text = String::from_utf8(decoded).map_err(|_| bad)?;
        let (id, secret) = text.split_once(':').ok_or(bad)?;
        // RFC 6749 §2.3.1: both halves are form-urlencoded before they are joined.
        let decode = |part: &str| -> String {
            form_urlencoded::parse(format!("x={part}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (decode(id), decode(secret));
        if client_id.is_some_and(|named| named != id) {
            return Err(invalid("client_id differs from the Basic credentials"));
        }
        return Ok((Some(id), ClientCredentials::Secret(secret)));
    }
    match (client_secret, assertion_type, assertion) {
        (Some(_), _, Some(_)) => Err(invalid("use one client authentication method")),
        (None, Some(JWT_BEARER), Some(assertion)) => Ok((
            client_id.map(str::to_owned),
            ClientCredentials::Assertion(assertion.to_owned()),
        )),
        (None, _, Some(_)) | (None, Some(_), None) => Err(invalid(
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )),
        (Some(secret), _, None) => Ok((
            client_id.map(str::to_owned),
            ClientCredentials::Secret(secret.to_owned()),
        )),
        (None, None, None) => Ok((client_id.map(str::to_owned), ClientCredentials::None)),
    }
}

/// The token endpoint.
pub(super) async fn token<S: Store>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let Some(provider) = provider_of(&state) else {
        return not_configured();
    };
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return oauth_error(unreadable_form(&rejection)),
    };
    let (client_id, presented) = match credentials(
        &headers,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
        form.client_assertion_type.as_deref(),
        form.client_assertion.as_deref(),
    ) {
        Ok(found) => found,
        Err(error) => return oauth_error(error),
    };
    let endpoint = endpoints(&provider.settings().issuer).token;
    let answer: Result<TokenResponse, ProviderOr<TokenError>> = async {
        let (app, client) = provider
            .authenticate_client(client_id.as_deref(), &presented, &endpoint)
            .await?;
        match form.grant_type.as_deref() {
            Some("authorization_code") => {
                let code = form.code.as_deref().ok_or(TokenError {
                    error: "invalid_request",
                    description: "code is missing",
                })?;
                provider
                    .exchange_code(
                        &app,
                        &client,
                        code,
                        form.redirect_uri.as_deref(),
                        form.code_verifier.as_deref(),
                    )
                    .await
            }
            Some("refresh_token") => {
                let token = form.refresh_token.as_deref().ok_or(TokenError {
                    error: "invalid_request",
                    description: "refresh_token is missing",
                })?;
                provider
                    .refresh(&app, &client, token, form.scope.as_deref())
                    .await
            }
            Some(_) => Err(TokenError {
                error: "unsupported_grant_type",
                description: "only authorization_code and refresh_token are supported",
            }
            .into()),
            None => Err(TokenError {
                error: "invalid_request",
                description: "grant_type is missing",
            }
            .into()),
        }
    }
    .await;
    match answer {
        Ok(tokens) => no_store(
            StatusCode::OK,
            serde_json::to_value(tokens).unwrap_or_default(),
        ),
        Err(ProviderOr::Protocol(error)) => oauth_error(error),
        Err(ProviderOr::Failed(err)) => unavailable(&err),
    }
}
