//! Who is signed in: the SSO session behind the request's cookie, the redirects to sign in or
//! to re-authenticate when there is none or it is not recent enough, the per-session CSRF
//! check, and the cookie a new or rotated SSO session is sent with.
//!
//! Only an SSO session Portcullis issued opens the pages: never a sign-in in progress, never
//! an application's session planted as the cookie.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use portcullis_core::{
    Actor, EngineError, Issued, PORTCULLIS_APP, Principal, Rejection, SSO_POLICY, Session, Store,
    User, Validated,
};

use super::account::{account_of, signed_out_redirect};
use super::web::{
    Browser, PageError, SESSION_COOKIE, clear_cookie, csrf_matches, csrf_token, encode_query,
    set_cookie,
};
use super::{PageResult, see_other};
use crate::AppState;

/// The SSO session behind the request's cookie.
pub(super) struct SignedIn {
    /// The cookie's token.
    pub(super) token: String,
    /// The session as validated for this request.
    pub(super) validated: Validated,
}

impl SignedIn {
    /// The session.
    pub(super) fn session(&self) -> &Session {
        &self.validated.session
    }

    /// The CSRF token the session's forms carry.
    pub(super) fn csrf(&self) -> String {
        csrf_token(&self.token)
    }

    /// The username recorded in the session at sign-in.
    pub(super) fn username(&self) -> String {
        self.session().data["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Why there is no SSO session.
pub(super) enum NotSignedIn {
    /// No cookie, or one we never issued.
    Absent,
    /// The session timed out.
    Expired,
    /// It ended for another reason (signed out, revoked…).
    Ended,
}

/// Who handles the SSO and sign-in cookies: Portcullis, reaching only its own sessions.
pub(super) fn cookie_principal() -> Principal {
    Principal::portcullis(Actor::system())
}

/// The SSO session behind the cookie, or why there is none; `activity` counts the request as
/// the person's activity.
pub(super) async fn current<S: Store>(
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
pub(super) async fn require_signed_in<S: Store>(
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

/// The signed-in session if it may make account changes; otherwise the redirect to sign in
/// or to re-authenticate (returning to `here`).
pub(super) async fn require_recent<S: Store>(
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

/// Checks the form's CSRF token against the signed-in session.
pub(super) fn check_csrf(signed_in: &SignedIn, presented: &str) -> Result<(), PageError> {
    if csrf_matches(presented, &signed_in.csrf()) {
        Ok(())
    } else {
        Err(PageError::StaleForm)
    }
}

/// The `Set-Cookie` of an SSO session: persistent until its absolute deadline only when the
/// person chose "Stay signed in" (OWASP-SM-8).
pub(super) fn session_cookie<S: Store>(state: &AppState<S>, issued: &Issued) -> HeaderValue {
    let max_age = issued
        .session
        .remember_me
        .then(|| state.engine.now().until(issued.session.absolute.at));
    set_cookie(SESSION_COOKIE, issued.token.expose(), "Lax", max_age)
}

/// After a security change (whose rule has ended the other sessions when it should), this
/// session gets a new token (OWASP-SM-11) and the person sees `done`.
pub(super) async fn after_security_change<S: Store>(
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
