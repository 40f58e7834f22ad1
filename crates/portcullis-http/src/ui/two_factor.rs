//! Two-factor authentication (`/account/two-factor`): enrolling an authenticator app (TOTP)
//! with a code from it, and removing it. Both need a recent authentication, sign out every
//! other session and give this one a new token.

use super::web::PageForm;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;
use portcullis_core::{Acting, Actor, Store, User};
use serde::Deserialize;

use super::session::{SignedIn, after_security_change, check_csrf, require_recent};
use super::web::{Browser, PageError};
use super::{CsrfForm, PageResult, page};
use crate::AppState;

/// The enrolment form with a new secret, or the removal form when enrolled.
pub(super) async fn two_factor_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/two-factor").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    Ok(two_factor_form(&state, &signed_in, &user, None, None))
}

/// The two-factor page; `secret` keeps the one being enrolled when the code was wrong.
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
            available => state.accounts.can_seal_second_factors(),
            secret => secret,
            uri => uri,
            error => error,
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct EnrolForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    code: String,
}

/// Turns two-factor on when the code matches the secret; otherwise the form again.
pub(super) async fn totp_enrol<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<EnrolForm>,
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
        .enrol_totp(
            &user.id,
            &form.secret,
            &form.code,
            Acting {
                actor: &Actor::user(&user.id),
                origin: browser.origin(),
            },
        )
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

/// Turns two-factor off.
pub(super) async fn totp_remove<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/two-factor").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    match state
        .accounts
        .remove_totp(
            &user.id,
            Acting {
                actor: &Actor::user(&user.id),
                origin: browser.origin(),
            },
        )
        .await
    {
        Ok(_) => {}
        Err(portcullis_core::AccountError::PasswordTooShortAlone) => {
            return Ok(two_factor_form(
                &state,
                &signed_in,
                &user,
                None,
                Some(&format!(
                    "Your password is too short to be used alone. Set a password of at least {} characters first, then turn two-factor off.",
                    portcullis_core::account::MIN_PASSWORD_ALONE
                )),
            ));
        }
        Err(err) => return Err(err.into()),
    }
    state
        .rules()
        .after_security_action(&user.id, &signed_in.session().id, &Actor::user(&user.id))
        .await?;
    after_security_change(&state, &signed_in, "totp_off").await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use portcullis_core::Actor;

    use crate::ui::tests::{Harness, sso, unescape, wrong_code};
    use crate::ui::web::{SESSION_COOKIE, csrf_token};

    #[tokio::test]
    async fn enrolling_with_a_wrong_code_shows_the_form_with_the_message() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let form = h.get("/account/two-factor", &sso(&token)).await;
        assert_eq!(form.status, StatusCode::OK);
        let secret = form.hidden("secret");
        assert!(
            unescape(&form.body).contains(&format!("secret={secret}")),
            "the otpauth link carries the key"
        );

        let code = wrong_code(&secret, h.now());
        let answer = h
            .post(
                "/account/two-factor/enrol",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("secret", &secret),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body.contains(
            "That code does not match. Check the key in your app and try the next code."
        ));
        assert_eq!(answer.hidden("secret"), secret, "the same key to try again");
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(h.accounts.by_id(&alice.id).await.unwrap().totp.is_none());
    }

    #[tokio::test]
    async fn a_malformed_secret_is_a_bad_request() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/two-factor/enrol",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("secret", "SHORT"),
                    ("code", "123456"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body.contains("That did not work"), "the error page");
    }

    #[tokio::test]
    async fn enrolling_and_removing_sign_out_elsewhere_and_rotate_the_cookie() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let elsewhere = h.sso_session(&alice).await;
        let secret = h
            .get("/account/two-factor", &sso(&token))
            .await
            .hidden("secret");
        let code = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        let on = h
            .post(
                "/account/two-factor/enrol",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("secret", &secret),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(on.status, StatusCode::SEE_OTHER, "{}", on.body);
        assert_eq!(on.location(), "/account?done=totp_on");
        let rotated = on.cookie(SESSION_COOKIE).unwrap();
        assert_ne!(rotated, token);
        assert!(h.session(&token).await.is_none());
        assert!(
            h.session(&elsewhere).await.is_none(),
            "signed out elsewhere"
        );
        let user = h.accounts.by_id(&alice.id).await.unwrap();
        let kept = user.totp.map(|t| t.secret).unwrap();
        assert!(
            kept.starts_with("sealed:v1:test:") && !kept.contains(&secret),
            "sealed at rest: {kept}"
        );

        let page = h.get("/account/two-factor", &sso(&rotated)).await;
        assert!(
            page.body.contains("id=\"remove-totp\""),
            "enrolled: offers removal"
        );
        let off = h
            .post(
                "/account/two-factor/remove",
                &sso(&rotated),
                &[("csrf", &csrf_token(&rotated))],
            )
            .await;
        assert_eq!(off.location(), "/account?done=totp_off");
        assert!(off.cookie(SESSION_COOKIE).is_some());
        assert!(h.accounts.by_id(&alice.id).await.unwrap().totp.is_none());
    }

    #[tokio::test]
    async fn two_factor_changes_need_a_recent_authentication() {
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
        let page = h.get("/account/two-factor", &sso(&token)).await;
        assert_eq!(page.location(), "/reauth?return_to=/account/two-factor");
        let remove = h
            .post(
                "/account/two-factor/remove",
                &sso(&token),
                &[("csrf", &csrf_token(&token))],
            )
            .await;
        assert_eq!(remove.location(), "/reauth?return_to=/account/two-factor");
        assert!(h.accounts.by_id(&alice.id).await.unwrap().totp.is_some());
    }

    #[tokio::test]
    async fn a_password_too_short_to_stand_alone_keeps_the_second_factor() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let secret = h.accounts.new_totp_secret();
        let code = portcullis_core::account::totp_code(&secret, h.now()).unwrap();
        h.accounts
            .enrol_totp(&alice.id, &secret, &code, &Actor::cli())
            .await
            .unwrap();
        h.accounts
            .set_password(&alice.id, "Tr0ub4dor&3", &Actor::cli())
            .await
            .unwrap();
        let token = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/two-factor/remove",
                &sso(&token),
                &[("csrf", &crate::ui::web::csrf_token(&token))],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.body.contains("too short to be used alone"),
            "{}",
            answer.body
        );
        assert!(h.accounts.by_id(&alice.id).await.unwrap().totp.is_some());
    }
}
