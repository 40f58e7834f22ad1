//! RP-initiated logout (`/oidc/logout`, the discovery document's `end_session_endpoint`): an
//! application sends the person here to sign out of Portcullis. The rules are the provider's
//! (`Provider::check_logout`); this module asks the person when it should, ends the SSO
//! session (and with it every application session under it), and returns to the application
//! only where the provider allows.
//!
//! The person is asked unless an ID token we issued names the very SSO session the browser
//! holds (OIDC-RPL-5); someone not signed in is simply signed out (OIDC-RPL-10). A client may
//! ask, with `federated`, that an SSO session started upstream end there too; the confirmation
//! page then offers it ticked.

use super::web::{PageForm, PageQuery};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::Store;
use portcullis_core::oidc::origin_of;
use portcullis_oidc::{LogoutParams, LogoutRequest, Provider, ProviderOr};

use super::logout::{end_sso_session, signed_out_page, unfinished_sign_out};
use super::session::current;
use super::web::{Browser, PageError, content_security_policy, csrf_matches};
use super::{PageResult, page, see_other};
use crate::AppState;

/// The logout request as an application sends it (GET).
pub(super) async fn end_session_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageQuery(params): PageQuery<LogoutParams>,
) -> PageResult {
    let provider = state.provider.clone().ok_or(PageError::NotFound)?;
    let request = match checked(&state, &provider, &params).await? {
        Ok(request) => request,
        Err(refused) => return Ok(refused),
    };
    let signed_in = current(&state, &browser, false)
        .await
        .map_err(unfinished_sign_out)?
        .ok();
    match signed_in {
        None => Ok(signed_out(&state, &request)),
        Some(signed_in) if request.sid.as_ref() == Some(&signed_in.session().id) => {
            let upstream = params.federated.is_some();
            end_sso_session(&state, &signed_in, request.redirect.as_deref(), upstream).await
        }
        Some(signed_in) => {
            let client = match &request.client {
                Some(id) => provider
                    .client(id.as_str())
                    .await
                    .map_err(|_| PageError::Unavailable)?
                    .map(|(app, _)| app.name),
                None => None,
            };
            let mut response = page(
                &state,
                StatusCode::OK,
                "end_session.html",
                Some(&signed_in),
                context! {
                    client => client,
                    upstream => super::federation::upstream_label(&state, &signed_in),
                    id_token_hint => params.id_token_hint,
                    client_id => params.client_id,
                    post_logout_redirect_uri => params.post_logout_redirect_uri,
                    state => params.state,
                    federated => params.federated.is_some(),
                },
            );
            if let Some(origin) = request.redirect.as_deref().and_then(origin_of) {
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    content_security_policy(Some(origin)),
                );
            }
            Ok(response)
        }
    }
}

/// The form of the confirmation page: the request again, with the session's CSRF token.
#[derive(Debug, serde::Deserialize)]
pub(super) struct EndSessionForm {
    #[serde(default)]
    csrf: String,
    /// The person asked to sign out of the upstream provider too.
    #[serde(default)]
    upstream: Option<String>,
    #[serde(flatten)]
    params: LogoutParams,
}

/// The person confirmed.
pub(super) async fn end_session_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<EndSessionForm>,
) -> PageResult {
    let provider = state.provider.clone().ok_or(PageError::NotFound)?;
    if form.csrf.is_empty() {
        // An application's POST (OIDC-RPL-2), cross-site: the SSO cookie (SameSite=Lax) does not
        // come with it, but it does with the top-level GET this turns into, which then decides
        // exactly as a GET from the application would.
        return Ok(see_other(&format!(
            "/oidc/logout?{}",
            logout_query(&form.params)
        )));
    }
    let request = match checked(&state, &provider, &form.params).await? {
        Ok(request) => request,
        Err(refused) => return Ok(refused),
    };
    match current(&state, &browser, false)
        .await
        .map_err(unfinished_sign_out)?
    {
        Ok(signed_in) => {
            if !csrf_matches(&form.csrf, &signed_in.csrf()) {
                return Err(PageError::StaleForm);
            }
            end_sso_session(
                &state,
                &signed_in,
                request.redirect.as_deref(),
                form.upstream.is_some(),
            )
            .await
        }
        Err(_) => Ok(signed_out(&state, &request)),
    }
}

/// The logout parameters as a query string.
fn logout_query(params: &LogoutParams) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("id_token_hint", &params.id_token_hint),
        ("logout_hint", &params.logout_hint),
        ("client_id", &params.client_id),
        ("post_logout_redirect_uri", &params.post_logout_redirect_uri),
        ("state", &params.state),
        ("ui_locales", &params.ui_locales),
        ("federated", &params.federated),
    ] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    query.finish()
}

/// The checked request, or the page that says why it was refused (no redirect: OIDC-RPL-9).
async fn checked<S: Store>(
    state: &AppState<S>,
    provider: &Provider<S>,
    params: &LogoutParams,
) -> Result<Result<LogoutRequest, Response>, PageError> {
    match provider.check_logout(params).await {
        Ok(request) => Ok(Ok(request)),
        Err(ProviderOr::Protocol(why)) => Ok(Err(page(
            state,
            StatusCode::BAD_REQUEST,
            "error.html",
            None,
            context! {
                heading => "This sign-out link does not work",
                message => why.0,
                next_href => "/logout",
                next_label => "Sign out here instead",
            },
        ))),
        Err(ProviderOr::Failed(err)) => {
            tracing::error!(error = %err, "the OpenID Connect provider cannot answer");
            Err(PageError::Unavailable)
        }
    }
}

/// Someone not signed in: back to the application where allowed, else the signed-out page.
fn signed_out<S: Store>(state: &AppState<S>, request: &LogoutRequest) -> Response {
    match &request.redirect {
        Some(url) => see_other(url),
        None => signed_out_page(state, &[], None),
    }
}
