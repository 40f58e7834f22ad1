//! Re-authentication (`/reauth`): the password (and the code, when two-factor is on) again
//! before an account change, or, for a session an upstream provider vouches for, a sign-in
//! there again (`ui::federation`'s callback elevates the same session). Success elevates the
//! session for account changes, rotates its token and returns to the page that asked.

use super::web::{PageForm, PageQuery};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::{Actor, Elevate, Principal, SignInError, Store, User};
use serde::Deserialize;

use super::account::{account_of, signed_out_redirect};
use super::session::{SignedIn, check_csrf, require_signed_in, session_cookie};
use super::sign_in::{retry_after, throttled_message};
use super::web::{Browser, encode_query, safe_return_to};
use super::{PageResult, page, see_other};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct ReauthQuery {
    return_to: Option<String>,
}

/// The "Confirm it's you" form.
pub(super) async fn reauth_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageQuery(query): PageQuery<ReauthQuery>,
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

/// The form, asking for a code too when the account has two-factor on; for a session an
/// upstream provider vouches for, a way to confirm there instead (an account made by that
/// provider has no password to give).
fn reauth_form<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    user: &User,
    return_to: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let upstream = super::federation::session_upstream(state, signed_in);
    page(
        state,
        status,
        "reauth.html",
        Some(signed_in),
        context! {
            return_to => return_to,
            password => user.has_password(),
            totp => user.totp.is_some(),
            upstream => upstream.map(|u| u.settings().label.clone()),
            upstream_href => upstream.map(|u| format!(
                "/login/upstream/{}?return_to={}&reauth=1",
                u.settings().id,
                encode_query(return_to)
            )),
            error => error,
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct ReauthForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    return_to: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

/// Checks the credentials (under the throttle); on success elevates and rotates the session.
pub(super) async fn reauth_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<ReauthForm>,
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
        .check_password(&user.username, &form.password, browser.origin())
        .await;
    if checked.is_ok() && user.totp.is_some() {
        checked = state
            .accounts
            .check_totp(&user.id, &form.code, browser.origin(), None)
            .await;
        methods.push("otp".to_owned());
    }
    let error = match checked {
        Ok(_) => None,
        Err(SignInError::Throttled(wait)) => {
            let form = reauth_form(
                &state,
                &signed_in,
                &user,
                &return_to,
                Some(&throttled_message(wait)),
                StatusCode::TOO_MANY_REQUESTS,
            );
            return Ok(retry_after(form, wait));
        }
        Err(SignInError::Invalid | SignInError::SignInSpent) => Some((
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use portcullis_core::Actor;

    use crate::ui::tests::{Harness, PASSWORD, max_age, sso, wrong_code};
    use crate::ui::web::{SESSION_COOKIE, csrf_token};

    /// An SSO session whose sign-in is too old for account changes.
    async fn old_session(h: &Harness) -> String {
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        h.advance(Duration::from_secs(11 * 60));
        token
    }

    #[tokio::test]
    async fn without_a_session_reauth_sends_to_sign_in_and_back_here() {
        let h = Harness::new();
        let answer = h.get("/reauth?return_to=/account/password", "").await;
        assert_eq!(
            answer.location(),
            "/login?return_to=/reauth%3Freturn_to%3D/account/password"
        );
    }

    #[tokio::test]
    async fn a_wrong_password_shows_the_form_again() {
        let h = Harness::new();
        let token = old_session(&h).await;
        let form = h
            .get("/reauth?return_to=/account/password", &sso(&token))
            .await;
        assert_eq!(form.status, StatusCode::OK);
        assert_eq!(form.hidden("return_to"), "/account/password");
        assert!(
            !form.body.contains("name=\"code\""),
            "no code without two-factor"
        );

        let answer = h
            .post(
                "/reauth",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("return_to", "/account/password"),
                    ("password", "not the password"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("That did not match. Try again."));
        assert_eq!(answer.hidden("return_to"), "/account/password");
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(
            h.session(&token).await.is_some(),
            "same session, same token"
        );
        let still = h.get("/account/password", &sso(&token)).await;
        assert_eq!(still.location(), "/reauth?return_to=/account/password");
    }

    #[tokio::test]
    async fn the_right_password_rotates_the_cookie_and_goes_back() {
        let h = Harness::new();
        let token = old_session(&h).await;
        let answer = h
            .post(
                "/reauth",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("return_to", "/account/password"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/account/password");
        let line = answer.set_cookie(SESSION_COOKIE).unwrap();
        assert_eq!(max_age(line), None, "still a browser-session cookie");
        let rotated = answer.cookie(SESSION_COOKIE).unwrap();
        assert_ne!(rotated, token);
        assert!(h.session(&token).await.is_none(), "the old token is gone");
        let page = h.get("/account/password", &sso(&rotated)).await;
        assert_eq!(page.status, StatusCode::OK, "recent enough now");
    }

    #[tokio::test]
    async fn a_foreign_return_to_goes_to_the_account_page() {
        let h = Harness::new();
        let token = old_session(&h).await;
        let answer = h
            .post(
                "/reauth",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("return_to", "//evil.example/"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(answer.location(), "/account");
    }

    #[tokio::test]
    async fn a_stale_csrf_token_is_refused() {
        let h = Harness::new();
        let token = old_session(&h).await;
        let answer = h
            .post(
                "/reauth",
                &sso(&token),
                &[("csrf", "stale"), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(h.session(&token).await.is_some());
    }

    #[tokio::test]
    async fn with_two_factor_the_code_is_needed_too() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let secret = h.accounts.new_totp_secret();
        let code = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        h.accounts
            .enrol_totp(&alice.id, &secret, &code, &Actor::cli())
            .await
            .unwrap();
        let token = h.sso_session(&alice).await;
        h.advance(Duration::from_secs(11 * 60));
        let form = h.get("/reauth", &sso(&token)).await;
        assert!(form.body.contains("name=\"code\""));
        let csrf = csrf_token(&token);
        let wrong = wrong_code(&secret, h.now());
        let refused = h
            .post(
                "/reauth",
                &sso(&token),
                &[("csrf", &csrf), ("password", PASSWORD), ("code", &wrong)],
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(h.session(&token).await.is_some());
        let right = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        let accepted = h
            .post(
                "/reauth",
                &sso(&token),
                &[("csrf", &csrf), ("password", PASSWORD), ("code", &right)],
            )
            .await;
        assert_eq!(accepted.location(), "/account");
        let rotated = accepted.cookie(SESSION_COOKIE).unwrap();
        let session = h.session(&rotated).await.unwrap();
        let elevation = session.elevations.last().unwrap();
        assert_eq!(elevation.methods, ["pwd", "otp"]);
        assert_eq!(elevation.level, 2);
    }

    /// RFC 6585 §4: a throttled re-authentication, and a throttled password change (the same
    /// account's count), say in `Retry-After` how long to wait, as their pages say in words.
    #[tokio::test]
    async fn throttled_answers_say_when_to_try_again() {
        let h = Harness::new();
        let token = old_session(&h).await;
        let mut throttled = None;
        for _ in 0..10 {
            let answer = h
                .post(
                    "/reauth",
                    &sso(&token),
                    &[
                        ("csrf", &csrf_token(&token)),
                        ("return_to", "/account/password"),
                        ("password", "not the password at all"),
                    ],
                )
                .await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                throttled = Some(answer);
                break;
            }
        }
        let throttled = throttled.expect("re-authentication is throttled");
        let wait: u64 = throttled.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait >= 1);
        assert!(throttled.body.contains(&format!("Wait {wait} seconds")));

        let alice = h.accounts.by_name("alice").await.unwrap();
        let fresh = h.sso_session(&alice).await;
        let changed = h
            .post(
                "/account/password",
                &sso(&fresh),
                &[
                    ("csrf", &csrf_token(&fresh)),
                    ("current", "not the password either"),
                    ("password", "a new and long passphrase"),
                    ("confirm", "a new and long passphrase"),
                ],
            )
            .await;
        assert_eq!(changed.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(changed.headers.contains_key("retry-after"));
    }
}
