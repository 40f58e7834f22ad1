//! Signing in through an upstream identity provider (federation), as the browser meets it.
//!
//! `/login/upstream/{id}` sends the browser to the provider with a fresh authorization request
//! (PKCE, `state`, `nonce`), sealed with the keyring into a short-lived cookie of this
//! browser; `/login/upstream/{id}/callback` takes the answer (a redirect, or with
//! `response_mode=form_post` a cross-site POST, which the page layers let through to this path
//! alone: the sealed cookie and its `state` are what bind the answer to this browser), checks
//! it, finds or makes the account and starts the SSO session, which remembers the upstream
//! session vouching for it. `/federation/{id}/backchannel-logout` takes the provider's logout
//! tokens. The rules are `portcullis_upstream`'s; this module carries them to and from the
//! browser.

use std::sync::Arc;

use super::web::{PageForm, PagePath, PageQuery};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;
use portcullis_core::Store;
use portcullis_oidc::Prompt;
use portcullis_upstream::{
    Federation, NoAccount, PENDING_LIFETIME, PendingUpstream, UPSTREAM_KEY, Upstream,
    UpstreamError, UpstreamHints, UpstreamLink,
};
use serde::{Deserialize, Serialize};

use super::session::{SignedIn, current};
use super::sign_in::{SsoStart, start_sso_session};
use super::web::{Browser, PageError, clear_cookie, read_cookie, safe_return_to, set_cookie};
use super::{PageResult, page, see_other};
use crate::AppState;

/// The cookie holding the sealed request sent upstream.
pub const UPSTREAM_COOKIE: &str = "__Host-portcullis-upstream";

/// What the sealed request is bound to, so no other sealed value can stand in for it.
const SEALED_FOR: &str = "upstream-sign-in";

/// A sign-in sent upstream, as the browser keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    pending: PendingUpstream,
    return_to: String,
    /// The account a signed-in person asked to link the upstream person to (from the account
    /// page): the answer links, and signs nobody in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_to: Option<String>,
}

fn federation_of<S: Store>(state: &AppState<S>) -> Result<&Arc<Federation>, PageError> {
    state.federation.as_ref().ok_or(PageError::NotFound)
}

fn upstream_of<'a>(federation: &'a Federation, id: &str) -> Result<&'a Arc<Upstream>, PageError> {
    federation.upstream(id).ok_or(PageError::NotFound)
}

/// The cookie's `SameSite`: a `form_post` answer is a cross-site POST, which carries only a
/// `None` cookie; a redirect is a top-level navigation, which carries a `Lax` one.
fn same_site(upstream: &Upstream) -> &'static str {
    if upstream.settings().form_post {
        "None"
    } else {
        "Lax"
    }
}

/// A friendly page for a sign-in upstream that did not work; local sign-in still does. The
/// browser's sign-in in progress there ends with it.
fn upstream_failed<S: Store>(
    state: &AppState<S>,
    upstream: &Upstream,
    status: StatusCode,
    message: &str,
) -> Response {
    let mut response = failed_page(state, upstream, status, message);
    response.headers_mut().append(
        header::SET_COOKIE,
        clear_cookie(UPSTREAM_COOKIE, same_site(upstream)),
    );
    response
}

/// The page of [`upstream_failed`], leaving the sign-in in progress as it is.
fn failed_page<S: Store>(
    state: &AppState<S>,
    upstream: &Upstream,
    status: StatusCode,
    message: &str,
) -> Response {
    let label = &upstream.settings().label;
    page(
        state,
        status,
        "error.html",
        None,
        context! {
            heading => format!("Signing in with {label} did not work"),
            message => message,
            next_href => "/login",
            next_label => "Back to sign in",
        },
    )
}

fn failure_page<S: Store>(
    state: &AppState<S>,
    upstream: &Upstream,
    err: &UpstreamError,
) -> Response {
    let (status, message) = failure(upstream, err);
    upstream_failed(state, upstream, status, message)
}

/// What a person is told of a sign-in upstream that failed with `err`.
fn failure(upstream: &Upstream, err: &UpstreamError) -> (StatusCode, &'static str) {
    tracing::warn!(provider = %upstream.settings().id, error = %err, "a sign-in upstream failed");
    match err {
        UpstreamError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The identity provider cannot be reached right now. Try again later, or sign in with your password.",
        ),
        UpstreamError::Refused(_) => (
            StatusCode::FORBIDDEN,
            "The identity provider did not sign you in.",
        ),
        UpstreamError::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "This answer from the identity provider is not valid here (it may be old, or meant for another browser). Start again.",
        ),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct StartQuery {
    return_to: Option<String>,
    login_hint: Option<String>,
    /// Present when the person confirms it is them before an account change (`/reauth`): the
    /// upstream is asked for credentials again (`prompt=login`, `max_age=0`).
    reauth: Option<String>,
}

/// What an application's authorization in progress in this browser asks of the sign-in,
/// passed upstream: our own session could not satisfy it, or the person would not be here.
fn hints_of<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    login_hint: Option<String>,
) -> UpstreamHints {
    let request = super::authorize::pending_request(state, &browser.headers);
    UpstreamHints {
        login_hint: login_hint.or_else(|| request.as_ref().and_then(|r| r.login_hint.clone())),
        force_login: request
            .as_ref()
            .is_some_and(|r| r.prompt.contains(&Prompt::Login)),
        max_age: request
            .as_ref()
            .and_then(|r| r.max_age)
            .map(std::time::Duration::from_secs),
        acr_values: request.map(|r| r.acr_values).unwrap_or_default(),
    }
}

/// Sends the browser upstream.
pub(super) async fn start<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(id): PagePath<String>,
    browser: Browser,
    PageQuery(query): PageQuery<StartQuery>,
) -> PageResult {
    let federation = federation_of(&state)?;
    let upstream = upstream_of(federation, &id)?;
    let mut hints = hints_of(&state, &browser, query.login_hint);
    if query.reauth.is_some() {
        hints.force_login = true;
        hints.max_age = Some(std::time::Duration::ZERO);
    }
    let return_to = safe_return_to(query.return_to.as_deref());
    let (url, sealed) = match begin(federation, upstream, &hints, return_to, None).await? {
        Ok(begun) => begun,
        Err(failed) => return Ok(failure_page(&state, upstream, &failed)),
    };
    let response = see_other(&url);
    Ok(with_pending(response, upstream, &sealed))
}

/// `response` setting the browser's cookie of the sign-in in progress upstream (`sealed`).
fn with_pending(mut response: Response, upstream: &Upstream, sealed: &str) -> Response {
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            UPSTREAM_COOKIE,
            sealed,
            same_site(upstream),
            Some(PENDING_LIFETIME),
        ),
    );
    response
}

/// A new request upstream and its sealed [`Flow`] for the browser's cookie.
async fn begin(
    federation: &Federation,
    upstream: &Upstream,
    hints: &UpstreamHints,
    return_to: String,
    link_to: Option<String>,
) -> Result<Result<(String, String), UpstreamError>, PageError> {
    let (url, pending) = match upstream.begin(federation.random(), hints).await {
        Ok(begun) => begun,
        Err(err) => return Ok(Err(err)),
    };
    let flow = Flow {
        pending,
        return_to,
        link_to,
    };
    let text = serde_json::to_string(&flow).map_err(|_| PageError::Internal)?;
    Ok(Ok((url, federation.seal(&text, SEALED_FOR))))
}

/// Links the upstream provider `id` to the signed-in account (the account page's form): a
/// POST with the session's CSRF token, so no other site can start a link — one that could,
/// having signed the browser in upstream as someone else, would have that person linked here.
/// The browser then goes upstream by a page of its own (CSP `form-action` would stop a
/// redirect of this POST to another origin).
pub(super) async fn start_link<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(id): PagePath<String>,
    browser: Browser,
    PageForm(form): PageForm<super::CsrfForm>,
) -> PageResult {
    let federation = federation_of(&state)?;
    let upstream = upstream_of(federation, &id)?;
    // A new way into the account: only after a recent authentication, as a password change,
    // or a borrowed session could leave its own upstream identity linked for later.
    let (signed_in, _) = match super::session::require_recent(&state, &browser, "/account").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    super::session::check_csrf(&signed_in, &form.csrf)?;
    let link_to = Some(signed_in.session().subject.clone());
    let begun = begin(
        federation,
        upstream,
        &UpstreamHints::default(),
        "/account".into(),
        link_to,
    )
    .await?;
    let (url, sealed) = match begun {
        Ok(begun) => begun,
        Err(failed) => return Ok(failure_page(&state, upstream, &failed)),
    };
    let label = &upstream.settings().label;
    let response = page(
        &state,
        StatusCode::OK,
        "continue.html",
        Some(&signed_in),
        context! { heading => format!("Going to {label}…"), continue_to => url },
    );
    Ok(with_pending(response, upstream, &sealed))
}

/// The upstream's answer, as a redirect's query or a `form_post` form.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Answer {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// The answer by redirect.
pub(super) async fn callback<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(id): PagePath<String>,
    browser: Browser,
    PageQuery(answer): PageQuery<Answer>,
) -> PageResult {
    finish(&state, &id, &browser, answer).await
}

/// The answer by `form_post`.
pub(super) async fn callback_post<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(id): PagePath<String>,
    browser: Browser,
    PageForm(answer): PageForm<Answer>,
) -> PageResult {
    finish(&state, &id, &browser, answer).await
}

async fn finish<S: Store>(
    state: &AppState<S>,
    id: &str,
    browser: &Browser,
    answer: Answer,
) -> PageResult {
    let federation = federation_of(state)?;
    let upstream = upstream_of(federation, id)?;
    let (flow, signed_in) =
        match checked_answer(state, federation, upstream, id, browser, answer).await? {
            Ok(checked) => checked,
            Err((failed, flow_kept)) => {
                return Ok(failed_sign_in(state, upstream, browser, &failed, flow_kept).await);
            }
        };
    if let Some(user_id) = &flow.link_to {
        let mut response = link(state, federation, upstream, browser, user_id, &signed_in).await?;
        response.headers_mut().append(
            header::SET_COOKIE,
            clear_cookie(UPSTREAM_COOKIE, same_site(upstream)),
        );
        return Ok(response);
    }
    let account = federation
        .account(&state.accounts, upstream, &signed_in, browser.origin())
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "an account for a sign-in upstream cannot be found");
            PageError::Unavailable
        })?;
    let user = match account {
        Ok(user) => user,
        Err(NoAccount::Disabled) => {
            return Ok(upstream_failed(
                state,
                upstream,
                StatusCode::FORBIDDEN,
                "Your account here is disabled.",
            ));
        }
        Err(NoAccount::NotAllowed) => {
            return Ok(upstream_failed(
                state,
                upstream,
                StatusCode::FORBIDDEN,
                "You have no account here, and this identity provider cannot create one.",
            ));
        }
        Err(NoAccount::NameTaken(name)) => {
            let message = format!(
                "An account named “{name}” exists here already. Sign in to it with its password, then link {} from your account page.",
                upstream.settings().label
            );
            return Ok(upstream_failed(
                state,
                upstream,
                StatusCode::CONFLICT,
                &message,
            ));
        }
    };
    // No SSO session lives longer than its policy's longest lifetime; until then a logout
    // token naming only the upstream session must find the person.
    let lasts = state
        .engine
        .policies()
        .get(portcullis_core::SSO_POLICY)
        .map(|p| p.absolute.value.max(p.remember_me_absolute.value))
        .ok_or(PageError::Internal)?;
    federation
        .remember_session(upstream, &signed_in, lasts)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "the identity store cannot keep the upstream session");
            PageError::Unavailable
        })?;
    // The same person, signed in here through the same upstream, authenticated there again
    // (an application asked for `max_age`, `prompt=login` or more assurance): their SSO session
    // is re-authenticated, so the applications' sessions under it carry on.
    if let Ok(Ok(current)) = current(state, browser, false).await
        && current.session().subject == user.id
        && UpstreamLink::of(current.session()).is_some_and(|l| l.provider == upstream.settings().id)
    {
        let auth = Federation::auth_context(upstream, &signed_in);
        let issued = state
            .engine
            .elevate(
                &current.token,
                portcullis_core::Elevate {
                    methods: auth.methods,
                    level: auth.level,
                    scope: portcullis_core::ACCOUNT_SCOPE.to_owned(),
                },
                &portcullis_core::Principal::portcullis(portcullis_core::Actor::user(&user.id)),
            )
            .await?;
        let mut response = see_other(&flow.return_to);
        let headers = response.headers_mut();
        headers.append(
            header::SET_COOKIE,
            super::session::session_cookie(state, &issued),
        );
        headers.append(
            header::SET_COOKIE,
            clear_cookie(UPSTREAM_COOKIE, same_site(upstream)),
        );
        return Ok(response);
    }
    let link = Federation::link(upstream, &signed_in);
    let mut data = serde_json::Map::new();
    data.insert(
        UPSTREAM_KEY.into(),
        serde_json::to_value(&link).map_err(|_| PageError::Internal)?,
    );
    let ends_by = upstream.settings().bound_session.then(|| {
        (
            signed_in.expires_at,
            format!(
                "upstream {}: no longer than its ID token",
                upstream.settings().id
            ),
        )
    });
    let mut response = start_sso_session(
        state,
        browser,
        SsoStart {
            user_id: user.id.clone(),
            username: user.username.clone(),
            auth: Federation::auth_context(upstream, &signed_in),
            remember_me: false,
            data,
            ends_by,
            authenticated_at: signed_in.auth_time,
            return_to: flow.return_to,
        },
    )
    .await?;
    response.headers_mut().append(
        header::SET_COOKIE,
        clear_cookie(UPSTREAM_COOKIE, same_site(upstream)),
    );
    Ok(response)
}

/// The sign-in in progress of this browser and who the upstream says signed in, once its
/// answer passes every check (this browser's sealed request, its `state`, used once, the code
/// redeemed and the ID token verified); otherwise why not, and whether the answer was not
/// this browser's request's (no `state`, or another), which leaves its sign-in in progress
/// for the right answer: a forged one, sent by any site, cannot cancel it.
async fn checked_answer<S: Store>(
    state: &AppState<S>,
    federation: &Federation,
    upstream: &Upstream,
    id: &str,
    browser: &Browser,
    answer: Answer,
) -> Result<Result<(Flow, portcullis_upstream::UpstreamSignIn), (UpstreamError, bool)>, PageError> {
    let invalid = |why: &str| Ok(Err((UpstreamError::Invalid(why.into()), false)));
    let not_ours = |why: &str| Ok(Err((UpstreamError::Invalid(why.into()), true)));
    // The sealed request is taken whatever happens next: an answer is used once.
    let flow = read_cookie(&browser.headers, UPSTREAM_COOKIE)
        .filter(|v| !v.is_empty())
        .and_then(|sealed| federation.open(sealed, SEALED_FOR).ok())
        .and_then(|text| serde_json::from_str::<Flow>(&text).ok());
    let Some(flow) = flow else {
        return invalid("no sign-in of this browser is waiting for this answer");
    };
    // A wrong state is refused before anything else, an error answer's too (RFC 6749 §4.1.2.1
    // gives it the request's `state`).
    let Some(answered_state) = &answer.state else {
        return not_ours("the answer has no state");
    };
    if !portcullis_core::same_secret(flow.pending.state.as_bytes(), answered_state.as_bytes()) {
        return not_ours("the state does not match this browser's request");
    }
    if let Some(error) = &answer.error {
        return Ok(Err((
            UpstreamError::Refused(error.chars().take(64).collect()),
            false,
        )));
    }
    let Some(code) = &answer.code else {
        return invalid("the answer has no code");
    };
    let now = state.engine.now();
    // The same answer taken twice (a replayed callback, on any node) signs nobody in.
    let first = federation
        .first_use(
            id,
            &flow.pending.state,
            now,
            flow.pending.started_at.plus(PENDING_LIFETIME),
        )
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "the replay store cannot answer");
            PageError::Unavailable
        })?;
    if !first {
        return invalid("this answer was used already");
    }
    let signed_in = upstream
        .finish(
            &flow.pending,
            answered_state,
            answer.iss.as_deref(),
            code,
            federation.random(),
        )
        .await;
    Ok(signed_in
        .map(|signed_in| (flow, signed_in))
        .map_err(|err| (err, false)))
}

/// The page of a sign-in upstream that failed, published first when it was an attempt (an
/// answer refused or failing a check, not an outage): `login.failed`, as a wrong password is,
/// so the audit trail and the SIEM see every failed authentication (ASVS5-16.3.1).
async fn failed_sign_in<S: Store>(
    state: &AppState<S>,
    upstream: &Upstream,
    browser: &Browser,
    failed: &UpstreamError,
    flow_kept: bool,
) -> Response {
    if !matches!(failed, UpstreamError::Unavailable(_)) {
        state
            .accounts
            .upstream_sign_in_failed(
                &upstream.settings().id,
                &failed.to_string(),
                browser.origin(),
            )
            .await;
    }
    if flow_kept {
        let (status, message) = failure(upstream, failed);
        return failed_page(state, upstream, status, message);
    }
    failure_page(state, upstream, failed)
}

/// Links the upstream person `signed_in` to the account `user_id` that asked from the account
/// page, if that account is still the one signed in here: the person proved both.
async fn link<S: Store>(
    state: &AppState<S>,
    federation: &Federation,
    upstream: &Upstream,
    browser: &Browser,
    user_id: &str,
    signed_in: &portcullis_upstream::UpstreamSignIn,
) -> PageResult {
    let still_signed_in = current(state, browser, false)
        .await?
        .is_ok_and(|s| s.session().subject == user_id);
    if !still_signed_in {
        return Ok(upstream_failed(
            state,
            upstream,
            StatusCode::BAD_REQUEST,
            "You are no longer signed in to the account that asked for this link. Sign in and start again from your account page.",
        ));
    }
    let user = state.accounts.by_id(user_id).await?;
    let failed = |err: portcullis_upstream::FederationError| {
        tracing::error!(error = %err, "an upstream identity cannot be linked");
        PageError::Unavailable
    };
    if let Some(linked) = federation
        .identities()
        .identity(&signed_in.issuer, &signed_in.subject)
        .await
        .map_err(|err| failed(err.into()))?
    {
        if linked.user_id == user.id {
            return Ok(see_other("/account?done=linked"));
        }
        return Ok(upstream_failed(
            state,
            upstream,
            StatusCode::CONFLICT,
            &format!(
                "That {} account is linked to another account here.",
                upstream.settings().label
            ),
        ));
    }
    let linked = federation
        .link_account(
            &state.accounts,
            &user,
            upstream,
            signed_in,
            browser.origin(),
        )
        .await
        .map_err(failed)?;
    if linked {
        Ok(see_other("/account?done=linked"))
    } else {
        Ok(upstream_failed(
            state,
            upstream,
            StatusCode::CONFLICT,
            &format!(
                "That {} account is linked to another account here.",
                upstream.settings().label
            ),
        ))
    }
}

/// What an upstream posts to the back-channel logout endpoint.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    logout_token: Option<String>,
}

/// Back-Channel Logout §2.8: 200 when the logout was done, 400 with an error otherwise.
fn logout_answer(status: StatusCode, error: Option<&str>) -> Response {
    let body = match error {
        Some(why) => serde_json::json!({ "error": "invalid_request", "error_description": why }),
        None => serde_json::json!({}),
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// An upstream's back-channel logout: every SSO session its ended session vouched for ends
/// (`upstream_logout`), and the applications of those sessions are told in turn.
pub async fn backchannel_logout<S: Store>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
    PageForm(form): PageForm<LogoutForm>,
) -> Response {
    let Some(federation) = state.federation.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(upstream) = federation.upstream(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(token) = form.logout_token.filter(|t| !t.is_empty()) else {
        return logout_answer(StatusCode::BAD_REQUEST, Some("no logout_token"));
    };
    let logout = match upstream.verify_logout_token(&token).await {
        Ok(logout) => logout,
        Err(UpstreamError::Unavailable(why)) => {
            tracing::warn!(provider = %id, error = %why, "an upstream logout token cannot be checked");
            return logout_answer(StatusCode::SERVICE_UNAVAILABLE, Some("try again later"));
        }
        Err(err) => {
            tracing::warn!(provider = %id, error = %err, "an upstream logout token was refused");
            return logout_answer(
                StatusCode::BAD_REQUEST,
                Some("the logout token is not valid"),
            );
        }
    };
    let now = state.engine.now();
    match federation
        .first_use(
            &id,
            &format!("jti {}", logout.jti),
            now,
            logout.remember_until,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return logout_answer(
                StatusCode::BAD_REQUEST,
                Some("this logout token was used already"),
            );
        }
        Err(err) => {
            tracing::error!(error = %err, "the replay store cannot answer");
            return logout_answer(StatusCode::SERVICE_UNAVAILABLE, Some("try again later"));
        }
    }
    match federation
        .end_vouched_sessions(&state.engine, upstream, &logout)
        .await
    {
        Ok(ended) => {
            tracing::info!(provider = %id, ended, "an upstream session ended");
            logout_answer(StatusCode::OK, None)
        }
        Err(err) => {
            tracing::error!(error = %err, "the sessions of an upstream logout cannot be ended");
            logout_answer(StatusCode::SERVICE_UNAVAILABLE, Some("try again later"))
        }
    }
}

/// The label of the upstream provider whose session vouches for `signed_in`, if it can be
/// signed out of (the sign-out pages offer it).
pub(super) fn upstream_label<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
) -> Option<String> {
    session_upstream(state, signed_in).map(|upstream| upstream.settings().label.clone())
}

/// The configured upstream provider whose session vouches for `signed_in`, if any.
pub(super) fn session_upstream<'s, S: Store>(
    state: &'s AppState<S>,
    signed_in: &SignedIn,
) -> Option<&'s Arc<Upstream>> {
    let link = UpstreamLink::of(signed_in.session())?;
    state.federation.as_ref()?.upstream(&link.provider)
}

/// What the browser keeps while it signs out upstream: where to go when it comes back.
#[derive(Debug, Serialize, Deserialize)]
struct SigningOut {
    provider: String,
    continue_to: Option<String>,
}

/// What sealed the [`SigningOut`] (carried as the upstream logout's `state`).
const SIGNING_OUT_FOR: &str = "upstream-sign-out";

/// Where to send the browser to end the upstream session that vouched for `signed_in` (just
/// ended here), coming back to `continue_to`; `None` when it was not started upstream, or the
/// upstream has no end-session endpoint or cannot be reached (the person is signed out here
/// all the same).
pub(super) async fn upstream_logout_url<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    continue_to: Option<&str>,
) -> Option<String> {
    let link = UpstreamLink::of(signed_in.session())?;
    let federation = state.federation.as_ref()?;
    let upstream = federation.upstream(&link.provider)?;
    let text = serde_json::to_string(&SigningOut {
        provider: link.provider.clone(),
        continue_to: continue_to.map(str::to_owned),
    })
    .ok()?;
    let sealed = federation.seal(&text, SIGNING_OUT_FOR);
    match upstream
        .end_session_url(&link.id_token, &upstream.signed_out_uri(), &sealed)
        .await
    {
        Ok(url) => url,
        Err(err) => {
            tracing::warn!(provider = %link.provider, error = %err, "cannot sign out upstream; signed out here only");
            None
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SignedOutQuery {
    state: Option<String>,
}

/// Back from signing out upstream: on to where the sign-out was going (an application's
/// post-logout redirect URI, checked when the sign-out began), else the signed-out page. Without
/// the state of a sign-out that began here, nothing was signed out here, and the page would
/// tell a person so who may still be signed in: the browser goes to `/`, which says.
pub(super) async fn signed_out<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(id): PagePath<String>,
    PageQuery(query): PageQuery<SignedOutQuery>,
) -> PageResult {
    let federation = federation_of(&state)?;
    upstream_of(federation, &id)?;
    let going = query
        .state
        .as_deref()
        .and_then(|sealed| federation.open(sealed, SIGNING_OUT_FOR).ok())
        .and_then(|text| serde_json::from_str::<SigningOut>(&text).ok())
        .filter(|going| going.provider == id);
    match going.map(|g| g.continue_to) {
        Some(Some(url)) => Ok(see_other(&url)),
        Some(None) => Ok(super::logout::signed_out_page(&state, &[], None)),
        None => Ok(see_other("/")),
    }
}
