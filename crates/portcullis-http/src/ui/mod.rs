//! The pages people use: sign in (password, TOTP, "Stay signed in?"), the account page
//! (sessions and devices, password, two-factor), re-authentication, sign out, and the
//! session status the expiry-warning script polls. Server-rendered; only the expiry warning
//! needs JavaScript.
//!
//! A sign-in in progress is itself a short session (policy [`SIGN_IN_POLICY`], subject
//! `sign-in:<user id>`, its own cookie) so every step survives on any node of a cluster and a
//! half-finished sign-in reaches nothing: account pages accept only the SSO cookie.

pub mod device;
pub mod web;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use minijinja::context;
use portcullis_core::{
    Actor, AuthContext, Elevate, EndReason, EngineError, Issued, NewSession, PORTCULLIS_APP,
    Principal, Rejection, SIGN_IN_POLICY, SSO_POLICY, Session, SessionId, SignInError, Store, User,
    Validated,
};
use serde::Deserialize;

use self::web::{
    Browser, ErrorPage, LOGIN_CSRF_COOKIE, PageError, SESSION_COOKIE, SIGN_IN_COOKIE, clear_cookie,
    csrf_matches, csrf_token, encode_query, human_time, safe_return_to, set_cookie,
};
use crate::AppState;

type PageResult = Result<Response, PageError>;

/// The pages, with their security headers, same-origin check and error pages.
pub fn routes<S: Store>(state: &AppState<S>) -> Router<AppState<S>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/account") }))
        .route("/login", get(login_page::<S>).post(login_submit::<S>))
        .route("/login/otp", get(otp_page::<S>).post(otp_submit::<S>))
        .route("/login/stay", get(stay_page::<S>).post(stay_submit::<S>))
        .route("/logout", get(logout_page::<S>).post(logout_submit::<S>))
        .route("/reauth", get(reauth_page::<S>).post(reauth_submit::<S>))
        .route("/account", get(account_page::<S>))
        .route("/account/sessions/{id}/end", post(end_one_session::<S>))
        .route(
            "/account/sessions/end-others",
            post(end_other_sessions::<S>),
        )
        .route(
            "/account/password",
            get(password_page::<S>).post(password_submit::<S>),
        )
        .route("/account/two-factor", get(two_factor_page::<S>))
        .route("/account/two-factor/enrol", post(totp_enrol::<S>))
        .route("/account/two-factor/remove", post(totp_remove::<S>))
        .route("/session/status", get(session_status::<S>))
        .route("/session/extend", post(session_extend::<S>))
        .route("/assets/{name}", get(asset::<S>))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            render_error_pages::<S>,
        ))
        .layer(middleware::from_fn(web::same_origin_only))
        .layer(middleware::from_fn_with_state(
            state.ui.settings.tls,
            web::security_headers,
        ))
}

async fn render_error_pages<S: Store>(
    State(state): State<AppState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(page) = response.extensions_mut().remove::<ErrorPage>() {
        let status = response.status();
        let html = state.ui.render(
            "error.html",
            context! {
                product => &state.ui.settings.product,
                heading => page.heading,
                message => page.message,
                next_href => "/account",
                next_label => "Go to your account",
            },
        );
        return html_response(status, html);
    }
    response
}

fn html_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

/// The SSO session behind the request's cookie.
struct SignedIn {
    token: String,
    validated: Validated,
}

impl SignedIn {
    fn session(&self) -> &Session {
        &self.validated.session
    }

    fn csrf(&self) -> String {
        csrf_token(&self.token)
    }

    fn username(&self) -> String {
        self.session().data["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Why there is no SSO session.
enum NotSignedIn {
    /// No cookie, or one we never issued.
    Absent,
    /// The session timed out.
    Expired,
    /// It ended for another reason (signed out, revoked…).
    Ended,
}

/// Who handles the SSO and sign-in cookies: Portcullis, reaching only its own sessions.
fn cookie_principal() -> Principal {
    Principal::portcullis(Actor::system())
}

async fn current<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    activity: bool,
) -> Result<Result<SignedIn, NotSignedIn>, PageError> {
    let Some(token) = browser.cookie(SESSION_COOKIE) else {
        return Ok(Err(NotSignedIn::Absent));
    };
    match state
        .engine
        .validate(token, activity, &browser.device(), &cookie_principal())
        .await
    {
        // Only an SSO session Portcullis issued opens the pages: never a sign-in in progress,
        // never an application's session.
        Ok(validated)
            if validated.session.policy == SSO_POLICY
                && validated.session.application.as_str() == PORTCULLIS_APP =>
        {
            Ok(Ok(SignedIn {
                token: token.to_owned(),
                validated,
            }))
        }
        Ok(_) => Ok(Err(NotSignedIn::Absent)),
        Err(EngineError::Rejected(rejection)) => Ok(Err(match rejection {
            Rejection::ExpiredIdle | Rejection::ExpiredAbsolute => NotSignedIn::Expired,
            Rejection::Malformed | Rejection::Unknown => {
                // OWASP-SM-9: a session id we never issued is never adopted.
                metrics::counter!("portcullis_unknown_session_cookies_total").increment(1);
                NotSignedIn::Absent
            }
            _ => NotSignedIn::Ended,
        })),
        Err(err) => Err(err.into()),
    }
}

/// The signed-in session, or a redirect to sign in that comes back to `here`.
async fn require_signed_in<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    here: &str,
) -> Result<Result<SignedIn, Response>, PageError> {
    match current(state, browser, true).await? {
        Ok(signed_in) => Ok(Ok(signed_in)),
        Err(why) => {
            let expired = if matches!(why, NotSignedIn::Expired) {
                "expired=1&"
            } else {
                ""
            };
            let mut response =
                see_other(&format!("/login?{expired}return_to={}", encode_query(here)));
            if !matches!(why, NotSignedIn::Absent) || browser.cookie(SESSION_COOKIE).is_some() {
                response
                    .headers_mut()
                    .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, "Lax"));
            }
            Ok(Err(response))
        }
    }
}

/// The `Set-Cookie` of an SSO session: persistent until its absolute deadline only when the
/// person chose "Stay signed in" (OWASP-SM-8).
fn session_cookie<S: Store>(state: &AppState<S>, issued: &Issued) -> HeaderValue {
    let max_age = issued
        .session
        .remember_me
        .then(|| state.engine.now().until(issued.session.absolute.at));
    set_cookie(SESSION_COOKIE, issued.token.expose(), "Lax", max_age)
}

fn base_context<S: Store>(state: &AppState<S>, signed_in: Option<&SignedIn>) -> minijinja::Value {
    context! {
        product => &state.ui.settings.product,
        signed_in => signed_in.is_some(),
        username => signed_in.map(SignedIn::username),
        csrf => signed_in.map(SignedIn::csrf),
    }
}

fn page<S: Store>(
    state: &AppState<S>,
    status: StatusCode,
    name: &str,
    signed_in: Option<&SignedIn>,
    extra: minijinja::Value,
) -> Response {
    let context = context! { ..extra, ..base_context(state, signed_in) };
    html_response(status, state.ui.render(name, context))
}

fn notice_for(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "signed_out_one" => "That session has been signed out.",
        "signed_out_others" => "All your other sessions have been signed out.",
        "password" => "Your password has been changed.",
        "password_others" => {
            "Your password has been changed and you have been signed out everywhere else."
        }
        "totp_on" => "Two-factor authentication is on. You have been signed out everywhere else.",
        "totp_off" => "Two-factor authentication is off. You have been signed out everywhere else.",
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Sign in

#[derive(Debug, Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
    expired: Option<String>,
}

async fn login_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Query(query): Query<LoginQuery>,
) -> PageResult {
    let return_to = safe_return_to(query.return_to.as_deref());
    if current(&state, &browser, false).await?.is_ok() {
        return Ok(see_other(&return_to));
    }
    let notice = query
        .expired
        .is_some()
        .then_some("Your session has ended. Sign in again to continue.");
    Ok(login_form(
        &state,
        &browser,
        &return_to,
        "",
        notice,
        None,
        StatusCode::OK,
    ))
}

fn login_form<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    return_to: &str,
    username_typed: &str,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let existing = browser.cookie(LOGIN_CSRF_COOKIE).map(str::to_owned);
    let csrf = existing.clone().unwrap_or_else(|| {
        portcullis_core::Token::generate(
            portcullis_core::TokenKind::Session,
            &portcullis_core::OsRandom,
        )
        .expose()
        .trim_start_matches("pcs_")
        .to_owned()
    });
    let mut response = page(
        state,
        status,
        "login.html",
        None,
        context! {
            csrf => &csrf,
            return_to => return_to,
            username_typed => username_typed,
            notice => notice,
            error => error,
        },
    );
    if existing.is_none() {
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(LOGIN_CSRF_COOKIE, &csrf, "Strict", None),
        );
    }
    response
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    return_to: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

async fn login_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let expected = browser.cookie(LOGIN_CSRF_COOKIE).unwrap_or_default();
    if !csrf_matches(&form.csrf, expected) {
        return Err(PageError::StaleForm);
    }
    let return_to = safe_return_to(Some(&form.return_to));
    let typed: String = form.username.chars().take(64).collect();
    let failed = |status, message: &str| {
        Ok(login_form(
            &state,
            &browser,
            &return_to,
            &typed,
            None,
            Some(message),
            status,
        ))
    };
    let user = match state
        .accounts
        .check_password(&form.username, &form.password, browser.ip.as_deref())
        .await
    {
        Ok(user) => user,
        Err(SignInError::Invalid) => {
            return failed(
                StatusCode::UNAUTHORIZED,
                "The username or password is wrong.",
            );
        }
        Err(SignInError::Throttled(wait)) => {
            let mut response = failed(StatusCode::TOO_MANY_REQUESTS, &throttled_message(wait))?;
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
            return Ok(response);
        }
        Err(SignInError::Disabled) => {
            return failed(
                StatusCode::FORBIDDEN,
                "This account is disabled. Contact your administrator.",
            );
        }
        Err(err) => return Err(err.into()),
    };
    let stage = if user.totp.is_some() {
        Stage::Otp
    } else {
        Stage::Stay
    };
    let pending = PendingSignIn {
        user_id: user.id.clone(),
        username: user.username.clone(),
        stage,
        methods: vec!["pwd".to_owned()],
        return_to,
    };
    advance(&state, &browser, None, pending).await
}

fn throttled_message(wait: std::time::Duration) -> String {
    format!(
        "Too many failed sign-in attempts. Wait {} seconds, then try again.",
        wait.as_secs().max(1)
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    Otp,
    Stay,
}

/// What a sign-in in progress carries from one step to the next.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct PendingSignIn {
    user_id: String,
    username: String,
    stage: Stage,
    methods: Vec<String>,
    return_to: String,
}

/// Moves a sign-in to its next step: the code, the "Stay signed in?" question, or done.
async fn advance<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    previous: Option<&str>,
    pending: PendingSignIn,
) -> PageResult {
    let policy = state
        .engine
        .policies()
        .get(SSO_POLICY)
        .cloned()
        .ok_or(PageError::Internal)?;
    if pending.stage == Stage::Stay && !policy.stay_signed_in.value {
        return complete(state, browser, previous, &pending, false).await;
    }
    if let Some(token) = previous {
        state.engine.logout(token, &cookie_principal()).await?;
    }
    let issued = state
        .engine
        .create(
            NewSession {
                subject: format!("sign-in:{}", pending.user_id),
                policy: Some(SIGN_IN_POLICY.to_owned()),
                // A sign-in in progress claims only what has been checked so far.
                auth: AuthContext {
                    methods: pending.methods.clone(),
                    level: 1,
                },
                device: browser.device(),
                data: serde_json::to_value(&pending).map_err(|_| PageError::Internal)?,
                ..NewSession::default()
            },
            &Principal::portcullis(Actor::user(&pending.user_id)),
        )
        .await?;
    let next = match pending.stage {
        Stage::Otp => "/login/otp",
        Stage::Stay => "/login/stay",
    };
    let mut response = see_other(next);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, issued.token.expose(), "Strict", None),
    );
    Ok(response)
}

/// Creates the SSO session with a new token (ASVS4-3.2.1: whatever cookie the browser had is
/// never adopted) and sends the person back where they were.
async fn complete<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    pending_token: Option<&str>,
    pending: &PendingSignIn,
    remember_me: bool,
) -> PageResult {
    if let Some(token) = pending_token {
        state.engine.logout(token, &cookie_principal()).await?;
    }
    let level = portcullis_core::assurance_level(&pending.methods);
    let created = state
        .engine
        .create(
            NewSession {
                subject: pending.user_id.clone(),
                policy: Some(SSO_POLICY.to_owned()),
                remember_me,
                auth: AuthContext {
                    methods: pending.methods.clone(),
                    level,
                },
                device: browser.device(),
                data: serde_json::json!({ "username": pending.username }),
                reconstitute: true,
                parent: None,
                application: None,
            },
            &Principal::portcullis(Actor::user(&pending.user_id)),
        )
        .await;
    let issued = match created {
        Ok(issued) => issued,
        Err(EngineError::LimitReached) => {
            return Ok(page(
                state,
                StatusCode::CONFLICT,
                "error.html",
                None,
                context! {
                    heading => "Too many sessions",
                    message => "You are signed in on as many devices as allowed. Sign out on another device, then try again.",
                    next_href => "/login",
                    next_label => "Back to sign in",
                },
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let mut response = see_other(&pending.return_to);
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, session_cookie(state, &issued));
    headers.append(header::SET_COOKIE, clear_cookie(SIGN_IN_COOKIE, "Strict"));
    Ok(response)
}

/// The sign-in in progress at `stage`, with its token; `None` sends the person back to the start.
async fn pending_at<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    stage: Stage,
) -> Result<Option<(String, PendingSignIn)>, PageError> {
    let Some(token) = browser.cookie(SIGN_IN_COOKIE) else {
        return Ok(None);
    };
    let validated = match state
        .engine
        .validate(token, true, &browser.device(), &cookie_principal())
        .await
    {
        Ok(v)
            if v.session.policy == SIGN_IN_POLICY
                && v.session.application.as_str() == PORTCULLIS_APP =>
        {
            v
        }
        Ok(_) | Err(EngineError::Rejected(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let pending: PendingSignIn =
        serde_json::from_value(validated.session.data.clone()).map_err(|_| PageError::Internal)?;
    Ok((pending.stage == stage).then(|| (token.to_owned(), pending)))
}

fn restart_sign_in() -> Response {
    let mut response = see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SIGN_IN_COOKIE, "Strict"));
    response
}

async fn otp_page<S: Store>(State(state): State<AppState<S>>, browser: Browser) -> PageResult {
    let Some((token, _)) = pending_at(&state, &browser, Stage::Otp).await? else {
        return Ok(restart_sign_in());
    };
    Ok(page(
        &state,
        StatusCode::OK,
        "otp.html",
        None,
        context! { csrf => csrf_token(&token), action => "/login/otp" },
    ))
}

#[derive(Debug, Deserialize)]
struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

async fn otp_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<CodeForm>,
) -> PageResult {
    let Some((token, mut pending)) = pending_at(&state, &browser, Stage::Otp).await? else {
        return Ok(restart_sign_in());
    };
    if !csrf_matches(&form.csrf, &csrf_token(&token)) {
        return Err(PageError::StaleForm);
    }
    let error = match state
        .accounts
        .check_totp(&pending.user_id, &form.code)
        .await
    {
        Ok(_) => {
            pending.methods.push("otp".to_owned());
            pending.stage = Stage::Stay;
            return advance(&state, &browser, Some(&token), pending).await;
        }
        Err(SignInError::Throttled(wait)) => {
            (StatusCode::TOO_MANY_REQUESTS, throttled_message(wait))
        }
        Err(SignInError::Invalid | SignInError::Disabled) => (
            StatusCode::UNAUTHORIZED,
            "That code is wrong or was already used. Wait for the next code and try again."
                .to_owned(),
        ),
        Err(err) => return Err(err.into()),
    };
    Ok(page(
        &state,
        error.0,
        "otp.html",
        None,
        context! { csrf => csrf_token(&token), action => "/login/otp", error => error.1 },
    ))
}

async fn stay_page<S: Store>(State(state): State<AppState<S>>, browser: Browser) -> PageResult {
    let Some((token, _)) = pending_at(&state, &browser, Stage::Stay).await? else {
        return Ok(restart_sign_in());
    };
    let remember_for = state
        .engine
        .policies()
        .get(SSO_POLICY)
        .map(|p| portcullis_core::format_duration(p.remember_me_absolute.value))
        .unwrap_or_default();
    Ok(page(
        &state,
        StatusCode::OK,
        "stay.html",
        None,
        context! { csrf => csrf_token(&token), remember_for => remember_for },
    ))
}

#[derive(Debug, Deserialize)]
struct StayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    stay: String,
}

async fn stay_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<StayForm>,
) -> PageResult {
    let Some((token, pending)) = pending_at(&state, &browser, Stage::Stay).await? else {
        return Ok(restart_sign_in());
    };
    if !csrf_matches(&form.csrf, &csrf_token(&token)) {
        return Err(PageError::StaleForm);
    }
    complete(&state, &browser, Some(&token), &pending, form.stay == "yes").await
}

// ---------------------------------------------------------------------------------------------
// Sign out

async fn logout_page<S: Store>(State(state): State<AppState<S>>, browser: Browser) -> PageResult {
    match current(&state, &browser, false).await? {
        Ok(signed_in) => Ok(page(
            &state,
            StatusCode::OK,
            "logout.html",
            Some(&signed_in),
            context! {},
        )),
        Err(_) => Ok(see_other("/login")),
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    if let Ok(signed_in) = current(&state, &browser, false).await? {
        if !csrf_matches(&form.csrf, &signed_in.csrf()) {
            return Err(PageError::StaleForm);
        }
        // Ends the SSO session and, through `parent`, every application session under it.
        state
            .engine
            .logout(
                &signed_in.token,
                &Principal::portcullis(Actor::user(&signed_in.session().subject)),
            )
            .await?;
    }
    let mut response = page(&state, StatusCode::OK, "signed_out.html", None, context! {});
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, "Lax"));
    // ASVS5-14.3.1 / OWASP-SM-18.
    headers.insert(
        "clear-site-data",
        HeaderValue::from_static("\"cache\", \"cookies\", \"storage\""),
    );
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Account

/// The account behind a signed-in session; a deleted or disabled account ends the session.
async fn account_of<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
) -> Result<Option<User>, PageError> {
    match state.accounts.by_id(&signed_in.session().subject).await {
        Ok(user) if !user.disabled => return Ok(Some(user)),
        Ok(_) | Err(portcullis_core::AccountError::NotFound) => {}
        Err(err) => return Err(err.into()),
    }
    state
        .engine
        .end(
            &signed_in.session().id,
            EndReason::AccountDisabled,
            &cookie_principal(),
        )
        .await?;
    Ok(None)
}

fn signed_out_redirect() -> Response {
    let mut response = see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, "Lax"));
    response
}

#[derive(Debug, Deserialize)]
struct AccountQuery {
    done: Option<String>,
}

async fn account_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Query(query): Query<AccountQuery>,
) -> PageResult {
    let signed_in = match require_signed_in(&state, &browser, "/account").await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let Some(user) = account_of(&state, &signed_in).await? else {
        return Ok(signed_out_redirect());
    };
    let sessions = state
        .engine
        .list_subject(&user.id, true, &Principal::person(&user.id))
        .await?;
    let applications = state.engine.list_applications().await?;
    let app_name = |s: &Session| {
        (s.application.as_str() != PORTCULLIS_APP).then(|| {
            applications
                .iter()
                .find(|a| a.id == s.application)
                .map_or_else(|| s.application.to_string(), |a| a.name.clone())
        })
    };
    let rows: Vec<minijinja::Value> = sessions
        .iter()
        .rev()
        .map(|s| {
            context! {
                id => s.id.as_str(),
                device => device::describe(s.device.user_agent.as_deref()),
                app => app_name(s),
                ip => s.device.ip.clone().unwrap_or_else(|| "unknown".to_owned()),
                created => human_time(s.created_at),
                last_seen => human_time(s.last_seen_at),
                current => s.id == signed_in.session().id,
            }
        })
        .collect();
    Ok(page(
        &state,
        StatusCode::OK,
        "account.html",
        Some(&signed_in),
        context! {
            sessions => rows,
            totp => user.totp.is_some(),
            password_changed => human_time(user.password_changed_at),
            notice => notice_for(query.done.as_deref()),
        },
    ))
}

/// Checks the form's CSRF token against the signed-in session.
fn check_csrf(signed_in: &SignedIn, presented: &str) -> Result<(), PageError> {
    if csrf_matches(presented, &signed_in.csrf()) {
        Ok(())
    } else {
        Err(PageError::StaleForm)
    }
}

async fn end_one_session<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let signed_in = match require_signed_in(&state, &browser, "/account").await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let id = SessionId::from_string(id);
    // Only one's own sessions: a foreign id is answered as if it did not exist.
    let person = Principal::person(&signed_in.session().subject);
    state.engine.end(&id, EndReason::Logout, &person).await?;
    Ok(see_other("/account?done=signed_out_one"))
}

async fn end_other_sessions<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let signed_in = match require_signed_in(&state, &browser, "/account").await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let session = signed_in.session();
    state
        .engine
        .end_subject(
            &session.subject,
            Some(&session.id),
            EndReason::Logout,
            true,
            &Principal::person(&session.subject),
        )
        .await?;
    Ok(see_other("/account?done=signed_out_others"))
}

/// The signed-in session if it may make account changes; otherwise the redirect to sign in
/// or to re-authenticate (returning to `here`).
async fn require_recent<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    here: &str,
) -> Result<Result<(SignedIn, User), Response>, PageError> {
    let signed_in = match require_signed_in(state, browser, here).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(Err(redirect)),
    };
    let Some(user) = account_of(state, &signed_in).await? else {
        return Ok(Err(signed_out_redirect()));
    };
    if !state.rules().recently_authenticated(signed_in.session()) {
        return Ok(Err(see_other(&format!(
            "/reauth?return_to={}",
            encode_query(here)
        ))));
    }
    Ok(Ok((signed_in, user)))
}

/// After a security change (whose rule has ended the other sessions when it should), this
/// session gets a new token (OWASP-SM-11) and the person sees `done`.
async fn after_security_change<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    done: &str,
) -> PageResult {
    let issued = state
        .engine
        .rotate(
            &signed_in.token,
            &Principal::portcullis(Actor::user(&signed_in.session().subject)),
        )
        .await?;
    let mut response = see_other(&format!("/account?done={done}"));
    response
        .headers_mut()
        .append(header::SET_COOKIE, session_cookie(state, &issued));
    Ok(response)
}

async fn password_page<S: Store>(State(state): State<AppState<S>>, browser: Browser) -> PageResult {
    let (signed_in, _) = match require_recent(&state, &browser, "/account/password").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    Ok(page(
        &state,
        StatusCode::OK,
        "password.html",
        Some(&signed_in),
        context! {},
    ))
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    sign_out_others: Option<String>,
}

async fn password_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<PasswordForm>,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/password").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let end_others = form.sign_out_others.is_some();
    let problem = if form.password != form.confirm {
        Some("The two passwords are not the same.".to_owned())
    } else {
        match state
            .rules()
            .change_password(
                &user.id,
                &form.password,
                end_others,
                Some(&signed_in.session().id),
                &Actor::user(&user.id),
            )
            .await
        {
            Ok(_) => None,
            Err(portcullis_core::RuleError::Account(
                portcullis_core::AccountError::WeakPassword(problem),
            )) => Some(problem),
            Err(err) => return Err(err.into()),
        }
    };
    if let Some(problem) = problem {
        return Ok(page(
            &state,
            StatusCode::BAD_REQUEST,
            "password.html",
            Some(&signed_in),
            context! { error => problem },
        ));
    }
    let done = if end_others {
        "password_others"
    } else {
        "password"
    };
    after_security_change(&state, &signed_in, done).await
}

async fn two_factor_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/two-factor").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    Ok(two_factor_form(&state, &signed_in, &user, None, None))
}

fn two_factor_form<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    user: &User,
    secret: Option<&str>,
    error: Option<&str>,
) -> Response {
    let secret = secret.map_or_else(|| state.accounts.new_totp_secret(), str::to_owned);
    let uri =
        portcullis_core::account::totp_uri(&secret, &state.ui.settings.product, &user.username);
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    page(
        state,
        status,
        "two_factor.html",
        Some(signed_in),
        context! {
            enrolled => user.totp.is_some(),
            secret => secret,
            uri => uri,
            error => error,
        },
    )
}

#[derive(Debug, Deserialize)]
struct EnrolForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    code: String,
}

async fn totp_enrol<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<EnrolForm>,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/two-factor").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    if form.secret.len() < 26 || form.secret.len() > 64 {
        return Err(PageError::BadRequest("malformed secret".into()));
    }
    match state
        .accounts
        .enrol_totp(&user.id, &form.secret, &form.code, &Actor::user(&user.id))
        .await
    {
        Ok(_) => {
            state
                .rules()
                .after_security_action(&user.id, &signed_in.session().id, &Actor::user(&user.id))
                .await?;
            after_security_change(&state, &signed_in, "totp_on").await
        }
        Err(portcullis_core::AccountError::WrongCode) => Ok(two_factor_form(
            &state,
            &signed_in,
            &user,
            Some(&form.secret),
            Some("That code does not match. Check the key in your app and try the next code."),
        )),
        Err(err) => Err(err.into()),
    }
}

async fn totp_remove<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/two-factor").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    state
        .accounts
        .remove_totp(&user.id, &Actor::user(&user.id))
        .await?;
    state
        .rules()
        .after_security_action(&user.id, &signed_in.session().id, &Actor::user(&user.id))
        .await?;
    after_security_change(&state, &signed_in, "totp_off").await
}

// ---------------------------------------------------------------------------------------------
// Re-authentication

#[derive(Debug, Deserialize)]
struct ReauthQuery {
    return_to: Option<String>,
}

async fn reauth_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Query(query): Query<ReauthQuery>,
) -> PageResult {
    let return_to = safe_return_to(query.return_to.as_deref());
    let here = format!("/reauth?return_to={}", encode_query(&return_to));
    let signed_in = match require_signed_in(&state, &browser, &here).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let Some(user) = account_of(&state, &signed_in).await? else {
        return Ok(signed_out_redirect());
    };
    Ok(reauth_form(
        &state,
        &signed_in,
        &user,
        &return_to,
        None,
        StatusCode::OK,
    ))
}

fn reauth_form<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    user: &User,
    return_to: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    page(
        state,
        status,
        "reauth.html",
        Some(signed_in),
        context! {
            return_to => return_to,
            totp => user.totp.is_some(),
            error => error,
        },
    )
}

#[derive(Debug, Deserialize)]
struct ReauthForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    return_to: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

async fn reauth_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    Form(form): Form<ReauthForm>,
) -> PageResult {
    let return_to = safe_return_to(Some(&form.return_to));
    let signed_in = match require_signed_in(&state, &browser, "/account").await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let Some(user) = account_of(&state, &signed_in).await? else {
        return Ok(signed_out_redirect());
    };
    let mut methods = vec!["pwd".to_owned()];
    let mut checked = state
        .accounts
        .check_password(&user.username, &form.password, browser.ip.as_deref())
        .await;
    if checked.is_ok() && user.totp.is_some() {
        checked = state.accounts.check_totp(&user.id, &form.code).await;
        methods.push("otp".to_owned());
    }
    let error = match checked {
        Ok(_) => None,
        Err(SignInError::Throttled(wait)) => {
            Some((StatusCode::TOO_MANY_REQUESTS, throttled_message(wait)))
        }
        Err(SignInError::Invalid | SignInError::Disabled) => Some((
            StatusCode::UNAUTHORIZED,
            "That did not match. Try again.".to_owned(),
        )),
        Err(err) => return Err(err.into()),
    };
    if let Some((status, message)) = error {
        return Ok(reauth_form(
            &state,
            &signed_in,
            &user,
            &return_to,
            Some(&message),
            status,
        ));
    }
    let level = portcullis_core::assurance_level(&methods);
    // Re-authentication rotates the token (ASVS5-7.2.4) and restarts both timers.
    let issued = state
        .engine
        .elevate(
            &signed_in.token,
            Elevate {
                methods,
                level,
                scope: portcullis_core::ACCOUNT_SCOPE.to_owned(),
            },
            &Principal::portcullis(Actor::user(&user.id)),
        )
        .await?;
    let mut response = see_other(&return_to);
    response
        .headers_mut()
        .append(header::SET_COOKIE, session_cookie(&state, &issued));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Session status for the expiry warning

#[derive(Debug, serde::Serialize)]
struct StatusBody {
    expires_in_ms: u64,
    warn_before_ms: u64,
    absolute_in_ms: u64,
    warning: bool,
}

fn status_body<S: Store>(state: &AppState<S>, validated: &Validated) -> Response {
    let session = &validated.session;
    let warn_before = state
        .engine
        .policies()
        .get(&session.policy)
        .map_or(std::time::Duration::ZERO, |p| p.warn_before.value);
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Json(StatusBody {
        expires_in_ms: ms(validated.expires_in),
        warn_before_ms: ms(warn_before),
        absolute_in_ms: ms(state.engine.now().until(session.absolute.at)),
        warning: validated.warning,
    })
    .into_response()
}

fn signed_out_json() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "signed_in": false })),
    )
        .into_response()
}

/// The session's remaining time, without counting as activity (a background poll).
async fn session_status<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> Result<Response, PageError> {
    match current(&state, &browser, false).await? {
        Ok(signed_in) => Ok(status_body(&state, &signed_in.validated)),
        Err(_) => Ok(signed_out_json()),
    }
}

/// "Stay signed in" from the expiry warning: counts as activity (never past the absolute
/// deadline). CSRF: the session's token in `X-CSRF-Token`.
async fn session_extend<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> Result<Response, PageError> {
    let signed_in = match current(&state, &browser, false).await? {
        Ok(s) => s,
        Err(_) => return Ok(signed_out_json()),
    };
    let presented = browser
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !csrf_matches(presented, &signed_in.csrf()) {
        return Err(PageError::StaleForm);
    }
    let validated = state
        .engine
        .validate(
            &signed_in.token,
            true,
            &browser.device(),
            &cookie_principal(),
        )
        .await?;
    Ok(status_body(&state, &validated))
}

async fn asset<S: Store>(
    State(state): State<AppState<S>>,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let (content_type, bytes) = state.ui.asset(&name).ok_or(PageError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        bytes,
    )
        .into_response())
}
