//! Signing in: the password form (`/login`), the second-factor code (`/login/otp`) and the
//! "Stay signed in?" question (`/login/stay`).
//!
//! Between the steps the sign-in in progress is a short session of its own (policy
//! [`SIGN_IN_POLICY`], subject `sign-in:<user id>`, cookie [`SIGN_IN_COOKIE`]) carrying a
//! [`PendingSignIn`]; each step ends it and issues the next, and the last creates the SSO
//! session with a new token. Before any session exists the password form is protected by a
//! double-submit cookie ([`LOGIN_CSRF_COOKIE`]).

use super::web::{PageForm, PageQuery};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::{
    Actor, AuthContext, EngineError, NewSession, PORTCULLIS_APP, Principal, SIGN_IN_POLICY,
    SSO_POLICY, SignInError, Store, sign_in_subject,
};
use serde::Deserialize;

use super::session::{cookie_principal, current, session_cookie};
use super::web::{
    Browser, DEVICE_COOKIE, DEVICE_COOKIE_AGE, LOGIN_CSRF_COOKIE, PageError, SESSION_COOKIE,
    SIGN_IN_COOKIE, clear_cookie, csrf_matches, csrf_token, safe_return_to, set_cookie,
};
use super::{PageResult, page, see_other};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    return_to: Option<String>,
    expired: Option<String>,
    restarted: Option<String>,
}

/// The sign-in form; someone already signed in goes straight to `return_to`.
pub(super) async fn login_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageQuery(query): PageQuery<LoginQuery>,
) -> PageResult {
    let return_to = safe_return_to(query.return_to.as_deref());
    if current(&state, &browser, false).await?.is_ok() {
        return Ok(see_other(&return_to));
    }
    let notice = if query.restarted.is_some() {
        Some("That sign-in was stopped after too many wrong codes. Sign in again.")
    } else {
        query
            .expired
            .is_some()
            .then_some("Your session has ended. Sign in again to continue.")
    };
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

/// The sign-in form with its double-submit CSRF value, setting the cookie when the browser
/// has none yet.
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
    let upstreams: Vec<_> = state
        .federation
        .iter()
        .flat_map(|f| f.upstreams())
        .map(|u| context! { id => &u.settings().id, label => &u.settings().label })
        .collect();
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
            upstreams => upstreams,
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
pub(super) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    return_to: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Checks the password (under the throttle) and starts the sign-in's next step.
pub(super) async fn login_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<LoginForm>,
) -> PageResult {
    let expected = browser.cookie(LOGIN_CSRF_COOKIE).unwrap_or_default();
    if !csrf_matches(&form.csrf, expected) {
        return Err(PageError::StaleForm);
    }
    let return_to = safe_return_to(Some(&form.return_to));
    // Home-realm discovery: the people of a domain an upstream provider serves sign in there;
    // whatever was typed as a password is neither checked nor kept.
    if let Some(upstream) = state
        .federation
        .as_ref()
        .and_then(|f| f.for_email(&form.username))
    {
        return Ok(see_other(&format!(
            "/login/upstream/{}?return_to={}&login_hint={}",
            upstream.settings().id,
            super::web::encode_query(&return_to),
            super::web::encode_query(form.username.trim()),
        )));
    }
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
        .check_password(&form.username, &form.password, browser.origin())
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
            let response = failed(StatusCode::TOO_MANY_REQUESTS, &throttled_message(wait))?;
            return Ok(retry_after(response, wait));
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

/// A throttled answer (`response`) says when to try again in `Retry-After` too (RFC 6585 §4),
/// as its page does in words.
pub(super) fn retry_after(mut response: Response, wait: std::time::Duration) -> Response {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    response
}

/// What a throttled sign-in (or re-authentication) is told.
pub(super) fn throttled_message(wait: std::time::Duration) -> String {
    format!(
        "Too many failed sign-in attempts. Wait {} seconds, then try again.",
        wait.as_secs().max(1)
    )
}

/// The step a sign-in in progress waits at.
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
                subject: sign_in_subject(&pending.user_id),
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

/// Ends a sign-in in progress with the SSO session, unless the account was disabled meanwhile.
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
    // The account may have been disabled while the sign-in was in progress.
    let account = state.accounts.by_id(&pending.user_id).await;
    match account {
        Ok(user) if !user.disabled => {}
        Ok(_) | Err(portcullis_core::AccountError::NotFound) => return Ok(restart_sign_in()),
        Err(err) => return Err(err.into()),
    }
    start_sso_session(
        state,
        browser,
        SsoStart {
            auth: AuthContext {
                methods: pending.methods.clone(),
                level: portcullis_core::assurance_level(&pending.methods),
            },
            user_id: pending.user_id.clone(),
            username: pending.username.clone(),
            remember_me,
            data: serde_json::Map::new(),
            ends_by: None,
            authenticated_at: None,
            return_to: pending.return_to.clone(),
        },
    )
    .await
}

/// An SSO session to start: for whom, how they authenticated, what it remembers.
pub(super) struct SsoStart {
    /// The account.
    pub(super) user_id: String,
    /// Its username (kept in the session's data for the pages).
    pub(super) username: String,
    /// How the person authenticated.
    pub(super) auth: AuthContext,
    /// "Stay signed in?" answered yes.
    pub(super) remember_me: bool,
    /// The session's data besides the username (an upstream link).
    pub(super) data: serde_json::Map<String, serde_json::Value>,
    /// A time it ends by, whatever the SSO policy allows, and why.
    pub(super) ends_by: Option<(portcullis_core::Timestamp, String)>,
    /// When the person authenticated, when before now (at an upstream provider).
    pub(super) authenticated_at: Option<portcullis_core::Timestamp>,
    /// Where the person goes next.
    pub(super) return_to: String,
}

/// Creates the SSO session with a new token (ASVS4-3.2.1: whatever cookie the browser had is
/// never adopted) and sends the person back where they were: the one way every kind of
/// sign-in (password, upstream provider) ends.
pub(super) async fn start_sso_session<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    start: SsoStart,
) -> PageResult {
    // One SSO session per browser: a second sign-in replaces the one the browser holds.
    if let Some(previous) = browser.cookie(SESSION_COOKIE) {
        match state.engine.logout(previous, &cookie_principal()).await {
            Ok(_) | Err(EngineError::Rejected(_) | EngineError::NotFound) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let mut data = start.data;
    data.insert("username".into(), start.username.into());
    let created = state
        .engine
        .create(
            NewSession {
                subject: start.user_id.clone(),
                policy: Some(SSO_POLICY.to_owned()),
                remember_me: start.remember_me,
                auth: start.auth,
                device: browser.device(),
                data: serde_json::Value::Object(data),
                reconstitute: true,
                parent: None,
                application: None,
                back_channel_logout_uri: None,
                back_channel_logout_alg: None,
                ends_by: start.ends_by,
                authenticated_at: start.authenticated_at,
            },
            &Principal::portcullis(Actor::user(&start.user_id)),
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
    let mut response = see_other(&start.return_to);
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, session_cookie(state, &issued));
    headers.append(header::SET_COOKIE, clear_cookie(SIGN_IN_COOKIE, "Strict"));
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            DEVICE_COOKIE,
            &state.accounts.device_cookie(&start.user_id),
            "Strict",
            Some(DEVICE_COOKIE_AGE),
        ),
    );
    Ok(response)
}

/// A sign-in in progress as the browser presents it.
struct InProgress {
    token: String,
    /// Its session's public id: what wrong codes are counted under.
    id: String,
    pending: PendingSignIn,
}

/// The sign-in in progress at `stage`; `None` sends the person back to the start.
async fn pending_at<S: Store>(
    state: &AppState<S>,
    browser: &Browser,
    stage: Stage,
) -> Result<Option<InProgress>, PageError> {
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
    Ok((pending.stage == stage).then(|| InProgress {
        token: token.to_owned(),
        id: validated.session.id.as_str().to_owned(),
        pending,
    }))
}

/// Back to the password form, forgetting the sign-in in progress.
fn restart_sign_in() -> Response {
    let mut response = see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SIGN_IN_COOKIE, "Strict"));
    response
}

/// The second-factor form.
pub(super) async fn otp_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let Some(InProgress { token, .. }) = pending_at(&state, &browser, Stage::Otp).await? else {
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
pub(super) struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

/// Checks the code (under the throttle) and moves on to "Stay signed in?".
pub(super) async fn otp_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<CodeForm>,
) -> PageResult {
    let Some(InProgress {
        token,
        id,
        mut pending,
    }) = pending_at(&state, &browser, Stage::Otp).await?
    else {
        return Ok(restart_sign_in());
    };
    if !csrf_matches(&form.csrf, &csrf_token(&token)) {
        return Err(PageError::StaleForm);
    }
    let mut throttled = None;
    let error = match state
        .accounts
        .check_totp(&pending.user_id, &form.code, browser.origin(), Some(&id))
        .await
    {
        Ok(_) => {
            pending.methods.push("otp".to_owned());
            pending.stage = Stage::Stay;
            return advance(&state, &browser, Some(&token), pending).await;
        }
        Err(SignInError::Throttled(wait)) => {
            throttled = Some(wait);
            (StatusCode::TOO_MANY_REQUESTS, throttled_message(wait))
        }
        Err(SignInError::SignInSpent) => {
            state.engine.logout(&token, &cookie_principal()).await?;
            let mut response = restart_sign_in();
            response.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_static("/login?restarted=1"),
            );
            return Ok(response);
        }
        Err(SignInError::Invalid) => (
            StatusCode::UNAUTHORIZED,
            "That code is wrong or was already used. Wait for the next code and try again."
                .to_owned(),
        ),
        Err(err) => return Err(err.into()),
    };
    let response = page(
        &state,
        error.0,
        "otp.html",
        None,
        context! { csrf => csrf_token(&token), action => "/login/otp", error => error.1 },
    );
    Ok(match throttled {
        Some(wait) => retry_after(response, wait),
        None => response,
    })
}

/// The "Stay signed in?" question.
pub(super) async fn stay_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let Some(InProgress { token, .. }) = pending_at(&state, &browser, Stage::Stay).await? else {
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
pub(super) struct StayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    stay: String,
}

/// Finishes the sign-in: a persistent cookie only for `stay=yes`.
pub(super) async fn stay_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<StayForm>,
) -> PageResult {
    let Some(InProgress { token, pending, .. }) = pending_at(&state, &browser, Stage::Stay).await?
    else {
        return Ok(restart_sign_in());
    };
    if !csrf_matches(&form.csrf, &csrf_token(&token)) {
        return Err(PageError::StaleForm);
    }
    complete(&state, &browser, Some(&token), &pending, form.stay == "yes").await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use portcullis_core::{Actor, Principal};

    use crate::ui::tests::{Harness, PASSWORD, cookie, live_sessions, max_age, sso, wrong_code};
    use crate::ui::web::{
        DEVICE_COOKIE, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SIGN_IN_COOKIE, csrf_token,
    };

    /// The double-submit value: from the login page's cookie, as a browser would send it back.
    async fn login_csrf(h: &Harness) -> String {
        h.get("/login", "").await.cookie(LOGIN_CSRF_COOKIE).unwrap()
    }

    #[tokio::test]
    async fn the_login_page_sets_a_double_submit_csrf_cookie_once() {
        let h = Harness::new();
        let first = h.get("/login", "").await;
        assert_eq!(first.status, StatusCode::OK);
        let line = first.set_cookie(LOGIN_CSRF_COOKIE).unwrap().to_owned();
        assert!(
            line.ends_with("; Path=/; Secure; HttpOnly; SameSite=Strict"),
            "a browser-session __Host- cookie: {line}"
        );
        let csrf = first.cookie(LOGIN_CSRF_COOKIE).unwrap();
        assert_eq!(
            first.hidden("csrf"),
            csrf,
            "the form carries the cookie's value"
        );
        assert_eq!(first.hidden("return_to"), "/account");
        assert_eq!(first.headers["x-frame-options"], "DENY");
        assert!(first.headers.contains_key("content-security-policy"));

        let again = h.get("/login", &cookie(LOGIN_CSRF_COOKIE, &csrf)).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(
            again.set_cookie(LOGIN_CSRF_COOKIE).is_none(),
            "kept, not replaced"
        );
        assert_eq!(again.hidden("csrf"), csrf);
    }

    #[tokio::test]
    async fn a_login_without_the_double_submit_cookie_is_refused() {
        let h = Harness::new();
        h.user("alice").await;
        let csrf = login_csrf(&h).await;
        let answer = h
            .post(
                "/login",
                "",
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(
            answer.body.contains("This form has expired"),
            "{}",
            answer.body
        );
        assert!(answer.set_cookie(SIGN_IN_COOKIE).is_none());
    }

    #[tokio::test]
    async fn a_wrong_password_shows_the_form_again_and_creates_no_session() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let csrf = login_csrf(&h).await;
        let answer = h
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("return_to", "/account/password"),
                    ("username", "alice"),
                    ("password", "not the password"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("The username or password is wrong."));
        assert!(
            answer.body.contains("value=\"alice\""),
            "the username stays typed"
        );
        assert_eq!(answer.hidden("return_to"), "/account/password");
        assert_eq!(answer.hidden("csrf"), csrf);
        assert!(answer.set_cookie(SIGN_IN_COOKIE).is_none());
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(live_sessions(&h, &alice).await.is_empty());
        let pending = h
            .engine
            .list_subject(
                &portcullis_core::sign_in_subject(&alice.id),
                true,
                &Principal::operator(),
            )
            .await
            .unwrap();
        assert!(pending.is_empty(), "no sign-in in progress either");
    }

    #[tokio::test]
    async fn an_unknown_username_answers_like_a_wrong_password() {
        let h = Harness::new();
        h.user("alice").await;
        let csrf = login_csrf(&h).await;
        let answer = h
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("username", "mallory"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("The username or password is wrong."));
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_with_retry_after() {
        let h = Harness::new();
        h.user("alice").await;
        let csrf = login_csrf(&h).await;
        let jar = cookie(LOGIN_CSRF_COOKIE, &csrf);
        let wrong = [
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", "nope nope"),
        ];
        let mut throttled = None;
        for _ in 0..10 {
            let answer = h.post("/login", &jar, &wrong).await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                throttled = Some(answer);
                break;
            }
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
        let throttled = throttled.expect("throttled within ten failures");
        let wait: u64 = throttled.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 1);
        assert!(throttled.body.contains("Too many failed sign-in attempts"));
        // Even the right password waits…
        let right = [
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ];
        let early = h.post("/login", &jar, &right).await;
        assert_eq!(early.status, StatusCode::TOO_MANY_REQUESTS);
        // …until the clock has moved past the delay.
        h.advance(Duration::from_secs(wait));
        let later = h.post("/login", &jar, &right).await;
        assert_eq!(later.location(), "/login/stay", "{}", later.body);
    }

    #[tokio::test]
    async fn the_right_password_leads_to_stay_signed_in_with_a_sign_in_cookie() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let csrf = login_csrf(&h).await;
        let answer = h
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/login/stay");
        let line = answer.set_cookie(SIGN_IN_COOKIE).unwrap();
        assert!(
            line.ends_with("; Path=/; Secure; HttpOnly; SameSite=Strict"),
            "{line}"
        );
        assert!(
            answer.set_cookie(SESSION_COOKIE).is_none(),
            "not signed in yet"
        );
        let pending = answer.cookie(SIGN_IN_COOKIE).unwrap();
        let session = h.session(&pending).await.unwrap();
        assert_eq!(session.subject, portcullis_core::sign_in_subject(&alice.id));
        assert_eq!(session.policy, portcullis_core::SIGN_IN_POLICY);
        assert!(live_sessions(&h, &alice).await.is_empty());

        // A sign-in in progress reaches nothing, not even planted as the SSO cookie.
        let account = h.get("/account", &sso(&pending)).await;
        assert_eq!(account.status, StatusCode::SEE_OTHER);
        assert!(account.location().starts_with("/login"));

        let stay = h
            .get("/login/stay", &cookie(SIGN_IN_COOKIE, &pending))
            .await;
        assert_eq!(stay.status, StatusCode::OK);
        assert!(stay.body.contains("Stay signed in?"));
        assert_eq!(stay.hidden("csrf"), csrf_token(&pending));
        // The code step is not where this sign-in is.
        let otp = h.get("/login/otp", &cookie(SIGN_IN_COOKIE, &pending)).await;
        assert_eq!(otp.location(), "/login");
    }

    /// Signs in up to the "Stay signed in?" question; returns the sign-in token.
    async fn up_to_stay(h: &Harness, return_to: &str) -> String {
        let csrf = login_csrf(h).await;
        let answer = h
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("return_to", return_to),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.location(), "/login/stay");
        answer.cookie(SIGN_IN_COOKIE).unwrap()
    }

    #[tokio::test]
    async fn staying_signed_in_gives_a_persistent_cookie_and_not_staying_a_browser_session_one() {
        let h = Harness::new();
        let alice = h.user("alice").await;

        let pending = up_to_stay(&h, "/account/password").await;
        let yes = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", "yes")],
            )
            .await;
        assert_eq!(yes.status, StatusCode::SEE_OTHER);
        assert_eq!(
            yes.location(),
            "/account/password",
            "back where they were going"
        );
        let line = yes.set_cookie(SESSION_COOKIE).unwrap();
        assert!(
            line.contains("; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{line}"
        );
        assert_eq!(
            max_age(line),
            Some(30 * 86_400),
            "until the remember-me deadline"
        );
        assert_eq!(
            max_age(yes.set_cookie(SIGN_IN_COOKIE).unwrap()),
            Some(0),
            "the sign-in cookie is cleared"
        );
        let remembered = yes.cookie(SESSION_COOKIE).unwrap();
        assert_ne!(remembered, pending, "a new token");
        assert!(
            h.session(&pending).await.is_none(),
            "the sign-in in progress ended"
        );
        let session = h.session(&remembered).await.unwrap();
        assert!(session.remember_me);
        assert_eq!(session.subject, alice.id);

        let pending = up_to_stay(&h, "https://elsewhere.example/").await;
        let no = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", "no")],
            )
            .await;
        assert_eq!(no.location(), "/account", "never an open redirect");
        let line = no.set_cookie(SESSION_COOKIE).unwrap();
        assert_eq!(max_age(line), None, "a browser-session cookie: {line}");
        let token = no.cookie(SESSION_COOKIE).unwrap();
        assert!(!h.session(&token).await.unwrap().remember_me);
        assert_eq!(live_sessions(&h, &alice).await.len(), 2);

        // The answered question cannot be answered again.
        let replay = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", "yes")],
            )
            .await;
        assert_eq!(replay.location(), "/login");
        assert_eq!(max_age(replay.set_cookie(SIGN_IN_COOKIE).unwrap()), Some(0));
    }

    #[tokio::test]
    async fn stay_signed_in_with_a_stale_csrf_token_is_refused() {
        let h = Harness::new();
        h.user("alice").await;
        let pending = up_to_stay(&h, "/account").await;
        let answer = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token("pcs_another")), ("stay", "yes")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(
            h.session(&pending).await.is_some(),
            "still waiting for the answer"
        );
    }

    #[tokio::test]
    async fn someone_signed_in_skips_the_login_form() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .get("/login?return_to=/account/two-factor", &sso(&token))
            .await;
        assert_eq!(
            (answer.status, answer.location()),
            (StatusCode::SEE_OTHER, "/account/two-factor")
        );
    }

    /// Alice with a second factor enrolled, after the right password: the factor's secret and
    /// the password step's answer.
    async fn password_with_two_factor(h: &Harness) -> (String, crate::ui::tests::Answer) {
        let alice = h.user("alice").await;
        let secret = h.accounts.new_totp_secret();
        let code = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        h.accounts
            .enrol_totp(&alice.id, &secret, &code, &Actor::cli())
            .await
            .unwrap();
        // The enrolment used this time step's code up.
        h.advance(Duration::from_secs(30));
        let csrf = login_csrf(h).await;
        let password = h
            .post(
                "/login",
                &cookie(LOGIN_CSRF_COOKIE, &csrf),
                &[
                    ("csrf", &csrf),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        (secret, password)
    }

    #[tokio::test]
    async fn with_two_factor_the_code_comes_between_the_password_and_stay_signed_in() {
        let h = Harness::new();
        let (secret, password) = password_with_two_factor(&h).await;
        assert_eq!(password.location(), "/login/otp");
        let pending = password.cookie(SIGN_IN_COOKIE).unwrap();
        let jar = cookie(SIGN_IN_COOKIE, &pending);
        assert_eq!(
            h.get("/login/stay", &jar).await.location(),
            "/login",
            "not yet"
        );
        let form = h.get("/login/otp", &jar).await;
        assert_eq!(form.status, StatusCode::OK);
        assert_eq!(form.hidden("csrf"), csrf_token(&pending));

        let right = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        let wrong = wrong_code(&secret, h.now());
        let refused = h
            .post(
                "/login/otp",
                &jar,
                &[("csrf", &csrf_token(&pending)), ("code", &wrong)],
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(
            refused
                .body
                .contains("That code is wrong or was already used.")
        );
        assert!(refused.set_cookie(SIGN_IN_COOKIE).is_none());

        let accepted = h
            .post(
                "/login/otp",
                &jar,
                &[("csrf", &csrf_token(&pending)), ("code", &right)],
            )
            .await;
        assert_eq!(accepted.location(), "/login/stay");
        let next = accepted.cookie(SIGN_IN_COOKIE).unwrap();
        assert_ne!(next, pending, "each step issues a new token");
        assert!(h.session(&pending).await.is_none());
        let step = h.session(&next).await.unwrap();
        assert_eq!(step.auth.methods, ["pwd", "otp"]);

        let done = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &next),
                &[("csrf", &csrf_token(&next)), ("stay", "no")],
            )
            .await;
        let token = done.cookie(SESSION_COOKIE).unwrap();
        let session = h.session(&token).await.unwrap();
        assert_eq!(session.auth.level, 2, "two factors reach AAL2");
    }

    #[tokio::test]
    async fn a_second_sign_in_replaces_the_browsers_sso_session() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let first = h.sso_session(&alice).await;
        let pending = up_to_stay(&h, "/account").await;
        let done = h
            .post(
                "/login/stay",
                &format!("{}; {}", cookie(SIGN_IN_COOKIE, &pending), sso(&first)),
                &[("csrf", &csrf_token(&pending)), ("stay", "no")],
            )
            .await;
        let second = done.cookie(SESSION_COOKIE).unwrap();
        assert!(h.session(&first).await.is_none(), "the first one ended");
        assert!(h.session(&second).await.is_some());
        assert_eq!(live_sessions(&h, &alice).await.len(), 1, "never two");
    }

    #[tokio::test]
    async fn disabling_the_account_ends_its_sign_in_in_progress() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let pending = up_to_stay(&h, "/account").await;
        portcullis_core::AccountRules::new(&h.engine, &h.accounts)
            .set_disabled(&alice.id, true, &Actor::cli())
            .await
            .unwrap();
        assert!(
            h.session(&pending).await.is_none(),
            "ended with the account"
        );
        let done = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", "yes")],
            )
            .await;
        assert_eq!(done.location(), "/login");
        assert!(done.set_cookie(SESSION_COOKIE).is_none());
        assert!(live_sessions(&h, &alice).await.is_empty());
    }

    #[tokio::test]
    async fn a_password_reset_ends_the_sign_in_in_progress_too() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let pending = up_to_stay(&h, "/account").await;
        portcullis_core::AccountRules::new(&h.engine, &h.accounts)
            .change_password(
                &alice.id,
                "a brand new long passphrase",
                true,
                None,
                &Actor::cli(),
            )
            .await
            .unwrap();
        assert!(h.session(&pending).await.is_none());
    }

    #[tokio::test]
    async fn nist5_2_2_the_fifth_wrong_code_ends_the_sign_in_in_progress() {
        let h = Harness::new();
        let (secret, password) = password_with_two_factor(&h).await;
        let pending = password.cookie(SIGN_IN_COOKIE).unwrap();
        let jar = cookie(SIGN_IN_COOKIE, &pending);
        let wrong = wrong_code(&secret, h.now());
        for _ in 0..4 {
            let refused = h
                .post(
                    "/login/otp",
                    &jar,
                    &[("csrf", &csrf_token(&pending)), ("code", &wrong)],
                )
                .await;
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        }
        let spent = h
            .post(
                "/login/otp",
                &jar,
                &[("csrf", &csrf_token(&pending)), ("code", &wrong)],
            )
            .await;
        assert_eq!(spent.location(), "/login?restarted=1");
        assert_eq!(max_age(spent.set_cookie(SIGN_IN_COOKIE).unwrap()), Some(0));
        assert!(h.session(&pending).await.is_none(), "the sign-in ended");
        let notice = h.get("/login?restarted=1", "").await;
        assert!(
            notice.body.contains("too many wrong codes"),
            "{}",
            notice.body
        );
    }

    #[tokio::test]
    async fn owasp_a_device_signed_in_on_before_is_not_locked_out_by_strangers() {
        let h = Harness::new();
        h.user("alice").await;
        let pending = up_to_stay(&h, "/account").await;
        let done = h
            .post(
                "/login/stay",
                &cookie(SIGN_IN_COOKIE, &pending),
                &[("csrf", &csrf_token(&pending)), ("stay", "no")],
            )
            .await;
        let line = done.set_cookie(DEVICE_COOKIE).unwrap().to_owned();
        assert!(
            line.contains("; Secure; HttpOnly; SameSite=Strict"),
            "{line}"
        );
        assert_eq!(max_age(&line), Some(180 * 86_400));
        let device = done.cookie(DEVICE_COOKIE).unwrap();

        // A stranger fails until the name is blocked…
        let csrf = login_csrf(&h).await;
        let jar = cookie(LOGIN_CSRF_COOKIE, &csrf);
        let mut blocked = false;
        for _ in 0..10 {
            let answer = h
                .post(
                    "/login",
                    &jar,
                    &[
                        ("csrf", &csrf),
                        ("username", "alice"),
                        ("password", "guess guess"),
                    ],
                )
                .await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                blocked = true;
                break;
            }
        }
        assert!(blocked);
        let right = [
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", PASSWORD),
        ];
        assert_eq!(
            h.post("/login", &jar, &right).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // …but alice, on her device, still gets in.
        let with_device = format!("{jar}; {}", cookie(DEVICE_COOKIE, &device));
        let answer = h.post("/login", &with_device, &right).await;
        assert_eq!(answer.location(), "/login/stay", "{}", answer.body);
    }
}
