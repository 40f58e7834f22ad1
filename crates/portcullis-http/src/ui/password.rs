//! Changing the password (`/account/password`): only after a recent authentication and with
//! the current password (ASVS 5.0 6.2.3), optionally signing out everywhere else; the session
//! then gets a new token.

use super::web::PageForm;
use axum::extract::State;
use axum::http::StatusCode;
use minijinja::context;
use portcullis_core::{Acting, Actor, SignInError, Store};
use serde::Deserialize;

use super::session::{after_security_change, check_csrf, require_recent};
use super::sign_in::{retry_after, throttled_message};
use super::web::Browser;
use super::{PageResult, page};
use crate::AppState;

/// The form (or the redirect to re-authenticate first).
pub(super) async fn password_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/password").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    Ok(page(
        &state,
        StatusCode::OK,
        "password.html",
        Some(&signed_in),
        context! { min_length => min_length(&user) },
    ))
}

/// The shortest new password the account may have (longer without a second factor).
fn min_length(user: &portcullis_core::User) -> usize {
    if user.totp.is_some() {
        portcullis_core::account::MIN_PASSWORD_WITH_SECOND_FACTOR
    } else {
        portcullis_core::account::MIN_PASSWORD_ALONE
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
    sign_out_others: Option<String>,
}

/// Changes the password: the form again with the problem when the two differ or the password
/// is too weak.
pub(super) async fn password_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<PasswordForm>,
) -> PageResult {
    let (signed_in, user) = match require_recent(&state, &browser, "/account/password").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let end_others = form.sign_out_others.is_some();
    let current = state
        .accounts
        .check_password(&user.username, &form.current, browser.origin())
        .await;
    let refused = match current {
        Ok(_) => None,
        Err(SignInError::Throttled(wait)) => {
            let form = page(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                "password.html",
                Some(&signed_in),
                context! { error => throttled_message(wait), min_length => min_length(&user) },
            );
            return Ok(retry_after(form, wait));
        }
        Err(SignInError::Invalid | SignInError::SignInSpent) => Some((
            StatusCode::UNAUTHORIZED,
            "The current password is wrong.".to_owned(),
        )),
        Err(err) => return Err(err.into()),
    };
    if let Some((status, problem)) = refused {
        return Ok(page(
            &state,
            status,
            "password.html",
            Some(&signed_in),
            context! { error => problem, min_length => min_length(&user) },
        ));
    }
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
                Acting {
                    actor: &Actor::user(&user.id),
                    origin: browser.origin(),
                },
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
            context! { error => problem, min_length => min_length(&user) },
        ));
    }
    let done = if end_others {
        "password_others"
    } else {
        "password"
    };
    after_security_change(&state, &signed_in, done).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use crate::ui::tests::{Harness, PASSWORD, password_is, sso};
    use crate::ui::web::{SESSION_COOKIE, csrf_token};

    const NEW: &str = "a different long passphrase";

    /// The audit trail keeps account events with the session events, saying who, from where
    /// and how: a failed current password and a change made on the page are both there, under
    /// Portcullis's application, with the browser's address and user agent, and the name
    /// digest the anomaly detector reads is never stored.
    #[tokio::test]
    async fn account_events_are_stored_in_the_trail_with_who_and_from_where() {
        use axum::extract::ConnectInfo;
        use portcullis_core::{EventKind, EventQuery, SessionStore, portcullis_app};

        use crate::peer::Peer;
        use crate::ui::tests::form_post;

        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let from_firefox = |current: &str| {
            let mut request = form_post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", current),
                    ("password", NEW),
                    ("confirm", NEW),
                ],
            );
            request.extensions_mut().insert(ConnectInfo(Peer::new(
                "198.51.100.4:50000".parse().unwrap(),
            )));
            request.headers_mut().insert(
                axum::http::header::USER_AGENT,
                "Mozilla/5.0 Firefox/140.0".parse().unwrap(),
            );
            request
        };
        let wrong = h.send(from_firefox("not the password at all")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let changed = h.send(from_firefox(PASSWORD)).await;
        assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.body);

        let trail = h
            .engine
            .store()
            .events(&EventQuery {
                application: Some(portcullis_app()),
                limit: 100,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let kinds: Vec<_> = trail.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::UserCreated,
                EventKind::SessionCreated,
                EventKind::LoginFailed,
                EventKind::UserPasswordChanged,
                EventKind::SessionRotated,
            ],
            "{trail:#?}"
        );
        assert!(trail.windows(2).all(|w| w[0].seq < w[1].seq));
        let failed = &trail[2];
        assert_eq!(failed.subject.as_deref(), Some(alice.id.as_str()));
        assert_eq!(failed.detail_str("failed"), Some("password"));
        assert_eq!(failed.detail_str("client_ip"), Some("198.51.100.4"));
        assert!(failed.detail.get("_attempt").is_none(), "{failed:?}");
        let change = &trail[3];
        assert_eq!(change.actor, portcullis_core::Actor::user(&alice.id));
        assert_eq!(change.detail_str("client_ip"), Some("198.51.100.4"));
        assert_eq!(
            change.detail_str("user_agent"),
            Some("Mozilla/5.0 Firefox/140.0")
        );
    }

    #[tokio::test]
    async fn an_old_sign_in_must_reauthenticate_first() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let fresh = h.get("/account/password", &sso(&token)).await;
        assert_eq!(fresh.status, StatusCode::OK);
        assert_eq!(fresh.hidden("csrf"), csrf_token(&token));

        h.advance(Duration::from_secs(11 * 60));
        let page = h.get("/account/password", &sso(&token)).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert_eq!(page.location(), "/reauth?return_to=/account/password");
        let change = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", PASSWORD),
                    ("password", NEW),
                    ("confirm", NEW),
                ],
            )
            .await;
        assert_eq!(change.location(), "/reauth?return_to=/account/password");
        assert!(password_is(&h.accounts, "alice", PASSWORD).await);
    }

    #[tokio::test]
    async fn a_wrong_confirmation_shows_the_form_with_the_message() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", PASSWORD),
                    ("password", NEW),
                    ("confirm", "a different long passphrasf"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body.contains("The two passwords are not the same."));
        assert!(answer.body.contains("Change password"));
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(password_is(&h.accounts, "alice", PASSWORD).await);
    }

    #[tokio::test]
    async fn a_weak_password_shows_why() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", PASSWORD),
                    ("password", "short"),
                    ("confirm", "short"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(
            answer.body.contains("Use at least 15 characters"),
            "{}",
            answer.body
        );
    }

    #[tokio::test]
    async fn a_stale_csrf_token_changes_nothing() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token("pcs_old")),
                    ("password", NEW),
                    ("confirm", NEW),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(password_is(&h.accounts, "alice", PASSWORD).await);
    }

    #[tokio::test]
    async fn a_change_rotates_the_cookie_and_signs_out_elsewhere_when_asked() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let elsewhere = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", PASSWORD),
                    ("password", NEW),
                    ("confirm", NEW),
                    ("sign_out_others", "yes"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/account?done=password_others");
        let rotated = answer.cookie(SESSION_COOKIE).unwrap();
        assert_ne!(rotated, token);
        assert!(h.session(&token).await.is_none(), "the old token is gone");
        assert!(h.session(&rotated).await.is_some());
        assert!(
            h.session(&elsewhere).await.is_none(),
            "signed out elsewhere"
        );
        assert!(password_is(&h.accounts, "alice", NEW).await);
        assert!(!password_is(&h.accounts, "alice", PASSWORD).await);
        let page = h.get(answer.location(), &sso(&rotated)).await;
        assert!(
            page.body
                .contains("you have been signed out everywhere else")
        );
    }

    #[tokio::test]
    async fn a_change_can_keep_the_other_sessions() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let elsewhere = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", PASSWORD),
                    ("password", NEW),
                    ("confirm", NEW),
                ],
            )
            .await;
        assert_eq!(answer.location(), "/account?done=password");
        assert!(answer.cookie(SESSION_COOKIE).is_some());
        assert!(h.session(&elsewhere).await.is_some());
        assert!(password_is(&h.accounts, "alice", NEW).await);
    }

    #[tokio::test]
    async fn asvs5_6_2_3_a_change_needs_the_current_password() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let elsewhere = h.sso_session(&alice).await;
        let answer = h
            .post(
                "/account/password",
                &sso(&token),
                &[
                    ("csrf", &csrf_token(&token)),
                    ("current", "not the password"),
                    ("password", NEW),
                    ("confirm", NEW),
                    ("sign_out_others", "yes"),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(answer.body.contains("The current password is wrong."));
        assert!(password_is(&h.accounts, "alice", PASSWORD).await);
        assert!(h.session(&elsewhere).await.is_some(), "nothing ended");
    }
}
