//! The authorization endpoint as the person meets it (`/oidc/authorize`), its continuation
//! after signing in (`/oidc/authorize/resume`) and the consent page (`/oidc/consent`).
//!
//! The checked request is the typed continuation: sealed with the keyring into a short-lived
//! cookie while the person signs in, re-authenticates or consents, so it survives on any node,
//! cannot be altered, and never travels as a URL to return to. The rules themselves are the
//! provider's (`portcullis_oidc`); this module only carries them to and from the browser.

use std::sync::Arc;
use std::time::Duration;

use super::web::{PageForm, PageQuery};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::Store;
use portcullis_core::oidc::origin_of;
use portcullis_oidc::{
    AuthorizationParams, AuthorizationRequest, AuthorizeError, Decision, Prompt, Provider,
    ProviderError, ProviderOr,
};
use serde::Deserialize;

use super::session::{SignedIn, current};
use super::web::{
    Browser, PageError, clear_cookie, content_security_policy, csrf_matches, read_cookie,
    set_cookie,
};
use super::{PageResult, page, see_other};
use crate::AppState;

/// The cookie holding the sealed authorization request while the person signs in.
pub const AUTHORIZE_COOKIE: &str = "__Host-portcullis-authorize";

/// What the sealed continuation is bound to, so no other sealed value can stand in for it.
const SEALED_FOR: &str = "oidc-authorize";

const RESUME: &str = "/oidc/authorize/resume";

fn provider_of<S: Store>(state: &AppState<S>) -> Result<Arc<Provider<S>>, PageError> {
    state.provider.clone().ok_or(PageError::NotFound)
}

/// The provider could not work (a store is down): fail closed with the friendly page.
fn unavailable(err: ProviderError) -> PageError {
    tracing::error!(error = %err, "the OpenID Connect provider cannot answer");
    PageError::Unavailable
}

fn failed<E>(error: ProviderOr<E>) -> Result<E, PageError> {
    match error {
        ProviderOr::Protocol(error) => Ok(error),
        ProviderOr::Failed(err) => Err(unavailable(err)),
    }
}

/// An error answer: a redirect to the client when its redirect URI is known, else a page.
fn answer_error<S: Store>(
    state: &AppState<S>,
    provider: &Provider<S>,
    error: &AuthorizeError,
) -> Response {
    match (provider.error_url(error), error) {
        (Some(url), _) => leave_to(&url),
        (None, AuthorizeError::NoRedirect(why)) => page(
            state,
            StatusCode::BAD_REQUEST,
            "error.html",
            None,
            context! {
                heading => "This sign-in link does not work",
                message => *why,
                next_href => "/account",
                next_label => "Go to your account",
            },
        ),
        (None, _) => see_other("/account"),
    }
}

/// A redirect to the client, dropping the continuation.
fn leave_to(url: &str) -> Response {
    let mut response = see_other(url);
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(AUTHORIZE_COOKIE, "Lax"));
    response
}

/// The authorization request, as a client sends the person.
pub(super) async fn authorize<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageQuery(params): PageQuery<AuthorizationParams>,
) -> PageResult {
    let provider = provider_of(&state)?;
    let request = match provider.check_authorization(&params).await {
        Ok(request) => request,
        Err(error) => return Ok(answer_error(&state, &provider, &failed(error)?)),
    };
    proceed(&state, &provider, &browser, request).await
}

/// An authorization request sent as a form (OpenID Connect Core §3.1.2.1: GET and POST), from
/// the client's site: the SSO cookie (SameSite=Lax) does not come with a cross-site POST, but
/// it does with the top-level GET this turns into, which then decides as any GET does.
pub(super) async fn authorize_post<S: Store>(
    State(state): State<AppState<S>>,
    body: String,
) -> PageResult {
    provider_of(&state)?;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(form_urlencoded::parse(body.as_bytes()));
    Ok(see_other(&format!("/oidc/authorize?{}", query.finish())))
}

/// Back from signing in, re-authenticating or consenting: the sealed request goes on.
pub(super) async fn resume<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let provider = provider_of(&state)?;
    let Some(request) = continuation(&provider, &browser) else {
        return Ok(expired_page(&state));
    };
    proceed(&state, &provider, &browser, request).await
}

/// The sealed request of this browser, if it is still fresh.
fn continuation<S: Store>(
    provider: &Provider<S>,
    browser: &Browser,
) -> Option<AuthorizationRequest> {
    sealed_request(provider, &browser.headers)
}

/// The sealed request in `headers`' cookie, if it is still fresh.
fn sealed_request<S: Store>(
    provider: &Provider<S>,
    headers: &HeaderMap,
) -> Option<AuthorizationRequest> {
    let sealed = read_cookie(headers, AUTHORIZE_COOKIE).filter(|v| !v.is_empty())?;
    let text = provider.open(sealed, SEALED_FOR).ok()?;
    let request: AuthorizationRequest = serde_json::from_str(&text).ok()?;
    let deadline = request
        .received_at
        .plus(provider.settings().interaction_lifetime);
    (provider.engine().now() < deadline).then_some(request)
}

/// The origin of the client an authorization in progress in this browser (its sealed request,
/// still fresh) returns to: the pages on the way there post forms whose answers end in the
/// redirect to it, so their CSP `form-action` must allow it ([`content_security_policy`]).
/// Only a request we sealed, with a redirect URI checked against the client's registration,
/// can name one.
///
/// [`content_security_policy`]: super::web::content_security_policy
pub(super) fn pending_form_target<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Option<String> {
    let provider = state.provider.as_ref()?;
    let request = sealed_request(provider, headers)?;
    origin_of(&request.redirect_uri).map(str::to_owned)
}

/// The authorization request in progress in this browser (its sealed request, still fresh),
/// if any: what it asks of a sign-in is passed to an upstream provider.
pub(super) fn pending_request<S: Store>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Option<AuthorizationRequest> {
    sealed_request(state.provider.as_ref()?, headers)
}

fn expired_page<S: Store>(state: &AppState<S>) -> Response {
    let mut response = page(
        state,
        StatusCode::BAD_REQUEST,
        "error.html",
        None,
        context! {
            heading => "This sign-in took too long",
            message => "Go back to the application and start again.",
            next_href => "/account",
            next_label => "Go to your account",
        },
    );
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(AUTHORIZE_COOKIE, "Lax"));
    response
}

/// Decides what the request needs now and answers it: the code, or a step on the way.
async fn proceed<S: Store>(
    state: &AppState<S>,
    provider: &Provider<S>,
    browser: &Browser,
    request: AuthorizationRequest,
) -> PageResult {
    let signed_in = current(state, browser, true).await?.ok();
    let sso = signed_in.as_ref().map(SignedIn::session);
    let decision = match provider.decide(&request, sso).await {
        Ok(decision) => decision,
        Err(error) => return Ok(answer_error(state, provider, &failed(error)?)),
    };
    match (decision, signed_in) {
        (Decision::Issue, Some(signed_in)) => {
            let url = provider
                .issue_code(&request, signed_in.session())
                .await
                .map_err(unavailable)?;
            Ok(leave_to(&url))
        }
        (Decision::Consent(scopes), Some(signed_in)) => {
            let client = match provider.client(request.client.as_str()).await {
                Ok(Some((app, _))) => app.name,
                Ok(None) => return Err(PageError::NotFound),
                Err(err) => return Err(unavailable(err)),
            };
            // The answer is bound to this very request: another authorization started meanwhile
            // in the same browser replaces the cookie, and an "Allow" given here must not
            // grant that one.
            let sealed = seal(provider, &request)?;
            let mut response = page(
                state,
                StatusCode::OK,
                "consent.html",
                Some(&signed_in),
                context! { client => client, scopes => scopes, request => digest(&sealed) },
            );
            set_continuation(provider, &mut response, &sealed);
            allow_form_to(&mut response, &request.redirect_uri);
            Ok(response)
        }
        // Someone signed in whose sign-in is too old or too weak: re-authenticate here.
        // Someone signed in through an upstream provider authenticates there again, with what
        // the request asks passed on (`super::federation`).
        (_, Some(signed_in)) => {
            let again = match portcullis_upstream::UpstreamLink::of(signed_in.session()) {
                Some(link) if upstream_configured(state, &link.provider) => {
                    format!("/login/upstream/{}?return_to={RESUME}", link.provider)
                }
                _ => format!("/reauth?return_to={RESUME}"),
            };
            let mut response = see_other(&again);
            keep(provider, &mut response, &request)?;
            Ok(response)
        }
        // A client whose people always sign in through an upstream provider sends them there.
        (_, None) => {
            let upstream = match provider.client(request.client.as_str()).await {
                Ok(Some((_, client))) => client.upstream,
                Ok(None) => None,
                Err(err) => return Err(unavailable(err)),
            };
            let sign_in = match upstream {
                Some(id) if upstream_configured(state, &id) => {
                    format!("/login/upstream/{id}?return_to={RESUME}")
                }
                _ => format!("/login?return_to={RESUME}"),
            };
            let mut response = see_other(&sign_in);
            keep(provider, &mut response, &request)?;
            Ok(response)
        }
    }
}

/// Whether the upstream provider `id` is configured here.
fn upstream_configured<S: Store>(state: &AppState<S>, id: &str) -> bool {
    state
        .federation
        .as_ref()
        .is_some_and(|f| f.upstream(id).is_some())
}

/// Seals the request into the browser for the steps to come.
fn keep<S: Store>(
    provider: &Provider<S>,
    response: &mut Response,
    request: &AuthorizationRequest,
) -> Result<(), PageError> {
    let sealed = seal(provider, request)?;
    set_continuation(provider, response, &sealed);
    Ok(())
}

fn seal<S: Store>(
    provider: &Provider<S>,
    request: &AuthorizationRequest,
) -> Result<String, PageError> {
    let text = serde_json::to_string(request).map_err(|_| PageError::Internal)?;
    Ok(provider.seal(&text, SEALED_FOR))
}

fn set_continuation<S: Store>(provider: &Provider<S>, response: &mut Response, sealed: &str) {
    let lifetime = provider.settings().interaction_lifetime;
    // Lax: the request arrives by a top-level navigation from the client's site.
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            AUTHORIZE_COOKIE,
            sealed,
            "Lax",
            Some(lifetime.max(Duration::from_secs(1))),
        ),
    );
}

/// What the consent form carries of the sealed request it was shown for.
fn digest(sealed: &str) -> String {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(sealed.as_bytes()))
}

/// The consent form posts here and is answered with a redirect to the client: CSP
/// `form-action` must allow that origin, or the browser stops the redirect. (The consent page
/// may be the answer that sets the sealed request's cookie, so the request does not carry it
/// yet: [`pending_form_target`] cannot see it.)
fn allow_form_to(response: &mut Response, redirect_uri: &str) {
    let Some(origin) = origin_of(redirect_uri) else {
        return;
    };
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        content_security_policy(Some(origin)),
    );
}

#[derive(Debug, Deserialize)]
pub(super) struct ConsentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    /// The digest of the sealed request the page was shown for.
    #[serde(default)]
    request: String,
}

/// The person's answer on the consent page.
pub(super) async fn consent_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<ConsentForm>,
) -> PageResult {
    let provider = provider_of(&state)?;
    let Some(request) = continuation(&provider, &browser) else {
        return Ok(expired_page(&state));
    };
    let Ok(signed_in) = current(&state, &browser, true).await? else {
        let mut response = see_other(&format!("/login?return_to={RESUME}"));
        keep(&provider, &mut response, &request)?;
        return Ok(response);
    };
    if !csrf_matches(&form.csrf, &signed_in.csrf()) {
        return Err(PageError::StaleForm);
    }
    let shown = read_cookie(&browser.headers, AUTHORIZE_COOKIE).map(digest);
    if !shown.is_some_and(|shown| csrf_matches(&form.request, &shown)) {
        // Another authorization replaced the one this page asked about.
        return Err(PageError::StaleForm);
    }
    if form.decision != "allow" {
        let error = AuthorizeError::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            error: "access_denied",
            description: "the person did not allow it",
            state: request.state.clone(),
        };
        return Ok(answer_error(&state, &provider, &error));
    }
    provider
        .consent_to(&request, &signed_in.session().subject)
        .await
        .map_err(unavailable)?;
    // `prompt=consent` asked for this answer; asking again would never end.
    let mut request = request;
    request.prompt.remove(&Prompt::Consent);
    proceed(&state, &provider, &browser, request).await
}
