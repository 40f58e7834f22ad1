//! The account page (`/account`): where the person is signed in (their SSO sessions and the
//! applications' sessions under them), signing out one session or all the others, and the
//! links to the password and two-factor pages.

use super::web::{PageForm, PagePath, PageQuery};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::oidc::Unlinked;
use portcullis_core::{EndReason, PORTCULLIS_APP, Principal, Session, SessionId, Store, User};
use serde::Deserialize;

use super::device;
use super::session::{SignedIn, check_csrf, cookie_principal, require_recent, require_signed_in};
use super::web::{Browser, PageError, SESSION_COOKIE, clear_cookie, human_time};
use super::{CsrfForm, PageResult, page, see_other};
use crate::AppState;

/// The account behind a signed-in session; a deleted or disabled account ends the session.
pub(super) async fn account_of<S: Store>(
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

/// To sign in, clearing the SSO cookie of a session that has just been ended.
pub(super) fn signed_out_redirect() -> Response {
    let mut response = see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, "Lax"));
    response
}

/// The notice for `?done=…` after an action that sent the person back to the account page.
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
        "linked" => "The identity provider is linked: you can sign in with it.",
        "unlinked" => "The identity provider is no longer linked to your account.",
        _ => return None,
    })
}

#[derive(Debug, Deserialize)]
pub(super) struct AccountQuery {
    done: Option<String>,
}

/// The account page: every live session of the person, newest first.
pub(super) async fn account_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageQuery(query): PageQuery<AccountQuery>,
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
    let (linked, linkable) = providers(&state, &user).await?;
    Ok(page(
        &state,
        StatusCode::OK,
        "account.html",
        Some(&signed_in),
        context! {
            sessions => rows,
            totp => user.totp.is_some(),
            has_password => user.has_password(),
            password_changed => human_time(user.password_changed_at),
            notice => notice_for(query.done.as_deref()),
            linked => linked,
            linkable => linkable,
        },
    ))
}

/// The upstream providers linked to the account, and those it could link.
async fn providers<S: Store>(
    state: &AppState<S>,
    user: &User,
) -> Result<(Vec<minijinja::Value>, Vec<minijinja::Value>), PageError> {
    let Some(federation) = &state.federation else {
        return Ok((Vec::new(), Vec::new()));
    };
    let identities = federation
        .identities()
        .identities_of(&user.id)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "the identity store cannot answer");
            PageError::Unavailable
        })?;
    let label = |provider: &str| {
        federation
            .upstream(provider)
            .map_or_else(|| provider.to_owned(), |u| u.settings().label.clone())
    };
    // The last link of an account without a password is its only way in: not offered.
    let removable = user.has_password() || identities.len() > 1;
    let linked = identities
        .iter()
        .map(|i| {
            context! {
                label => label(&i.provider),
                issuer => &i.issuer,
                subject => &i.subject,
                linked => human_time(i.linked_at),
                removable => removable,
            }
        })
        .collect();
    let linkable = federation
        .upstreams()
        .iter()
        .filter(|u| !identities.iter().any(|i| i.issuer == u.settings().issuer))
        .map(|u| context! { id => &u.settings().id, label => &u.settings().label })
        .collect();
    Ok((linked, linkable))
}

#[derive(Debug, Deserialize)]
pub(super) struct UnlinkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    subject: String,
}

/// Removes a link to an upstream provider, never the account's last way in.
pub(super) async fn unlink_identity<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<UnlinkForm>,
) -> PageResult {
    // A way to sign in is changed as a password is: only after a recent authentication.
    let (signed_in, user) = match require_recent(&state, &browser, "/account").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let federation = state.federation.as_ref().ok_or(PageError::NotFound)?;
    let unlinked = federation
        .unlink_account(
            &state.accounts,
            &user,
            &form.issuer,
            &form.subject,
            browser.origin(),
        )
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "an upstream identity cannot be unlinked");
            PageError::Unavailable
        })?;
    match unlinked {
        Unlinked::Done => Ok(see_other("/account?done=unlinked")),
        Unlinked::NotLinked => Err(PageError::NotFound),
        Unlinked::LastOne => Ok(page(
            &state,
            StatusCode::CONFLICT,
            "error.html",
            Some(&signed_in),
            context! {
                heading => "This is your only way to sign in",
                message => "Your account has no password: set one before you remove your last identity provider.",
                next_href => "/account",
                next_label => "Back to your account",
            },
        )),
    }
}

/// Signs out one of the person's own sessions.
pub(super) async fn end_one_session<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    // As for all of them (below): one at a time, they would all end just the same.
    let (signed_in, _) = match require_recent(&state, &browser, "/account").await? {
        Ok(ok) => ok,
        Err(redirect) => return Ok(redirect),
    };
    check_csrf(&signed_in, &form.csrf)?;
    let id = SessionId::from_string(id);
    // Only one's own sessions: a foreign id is answered as if it did not exist.
    let person = Principal::person(&signed_in.session().subject);
    state.engine.end(&id, EndReason::Logout, &person).await?;
    Ok(see_other("/account?done=signed_out_one"))
}

/// Signs out every session of the person but this one: only after a recent authentication
/// (ASVS 5.0 7.5.2), so a borrowed or stolen session cannot lock its owner's devices out.
pub(super) async fn end_other_sessions<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    let (signed_in, _) = match require_recent(&state, &browser, "/account").await? {
        Ok(ok) => ok,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use portcullis_core::Actor;

    use crate::ui::tests::{Harness, live_sessions, max_age, sso};
    use crate::ui::web::{SESSION_COOKIE, csrf_token};

    #[tokio::test]
    async fn without_a_cookie_the_account_page_sends_to_sign_in_and_back() {
        let h = Harness::new();
        let answer = h.get("/account", "").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/login?return_to=/account");
        assert!(
            answer.set_cookie(SESSION_COOKIE).is_none(),
            "nothing to clear"
        );
        let unknown = h
            .get(
                "/account",
                &sso("pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            )
            .await;
        assert_eq!(unknown.location(), "/login?return_to=/account");
        assert_eq!(
            max_age(unknown.set_cookie(SESSION_COOKIE).unwrap()),
            Some(0),
            "a cookie we never issued is cleared"
        );
    }

    #[tokio::test]
    async fn with_an_sso_cookie_the_account_page_lists_the_persons_sessions() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        let here = h.sign_in("alice", false).await;
        let elsewhere = h.sso_session(&alice).await;
        let theirs = h.sso_session(&bob).await;
        let (_, app) = h.application_session(&alice.id).await;

        let answer = h.get("/account", &sso(&here)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(answer.body.contains("Your account"));
        assert!(answer.body.contains("<span class=\"who\">alice</span>"));
        assert!(answer.body.contains(&format!(
            "<meta name=\"portcullis-csrf\" content=\"{}\">",
            csrf_token(&here)
        )));
        let mut ids = vec![app];
        for token in [&here, &elsewhere] {
            ids.push(h.session(token).await.unwrap().id.to_string());
        }
        for id in ids {
            assert!(
                answer.body.contains(&format!("data-session=\"{id}\"")),
                "{id} is listed"
            );
        }
        let bobs = h.session(&theirs).await.unwrap().id.clone();
        assert!(!answer.body.contains(bobs.as_str()), "only alice's own");
        assert_eq!(answer.body.matches("data-session=").count(), 3);
        assert_eq!(answer.body.matches("class=\"current\"").count(), 1);
        assert!(answer.body.contains("<strong class=\"app\">shop</strong>"));
        assert!(answer.body.contains("id=\"end-others\""));
    }

    #[tokio::test]
    async fn an_applications_session_as_the_cookie_is_sent_to_sign_in() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let (token, _) = h.application_session(&alice.id).await;
        let answer = h.get("/account", &sso(&token)).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/login?return_to=/account");
        assert_eq!(max_age(answer.set_cookie(SESSION_COOKIE).unwrap()), Some(0));
        let live = live_sessions(&h, &alice).await;
        assert_eq!(
            live.len(),
            1,
            "the application's session itself is left alone"
        );
    }

    #[tokio::test]
    async fn an_expired_session_is_sent_to_sign_in_with_a_notice() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        h.advance(Duration::from_secs(16 * 60));
        let answer = h.get("/account", &sso(&token)).await;
        assert_eq!(answer.location(), "/login?expired=1&return_to=/account");
        assert_eq!(max_age(answer.set_cookie(SESSION_COOKIE).unwrap()), Some(0));
        let login = h.get(answer.location(), "").await;
        assert!(
            login
                .body
                .contains("Your session has ended. Sign in again to continue.")
        );
    }

    #[tokio::test]
    async fn a_disabled_account_ends_its_session() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        h.accounts
            .set_disabled(&alice.id, true, &Actor::cli())
            .await
            .unwrap();
        let answer = h.get("/account", &sso(&token)).await;
        assert_eq!(
            (answer.status, answer.location()),
            (StatusCode::SEE_OTHER, "/login")
        );
        assert_eq!(max_age(answer.set_cookie(SESSION_COOKIE).unwrap()), Some(0));
        assert!(h.session(&token).await.is_none());
    }

    #[tokio::test]
    async fn ending_one_session_then_all_the_others() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let bob = h.user("bob").await;
        let here = h.sso_session(&alice).await;
        let second = h.sso_session(&alice).await;
        let third = h.sso_session(&alice).await;
        let theirs = h.sso_session(&bob).await;
        let jar = sso(&here);
        let csrf = csrf_token(&here);
        let second_id = h.session(&second).await.unwrap().id.to_string();
        let bobs_id = h.session(&theirs).await.unwrap().id.to_string();

        let stale = h
            .post(
                &format!("/account/sessions/{second_id}/end"),
                &jar,
                &[("csrf", "stale")],
            )
            .await;
        assert_eq!(stale.status, StatusCode::FORBIDDEN);
        assert!(h.session(&second).await.is_some());

        let foreign = h
            .post(
                &format!("/account/sessions/{bobs_id}/end"),
                &jar,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(
            foreign.status,
            StatusCode::NOT_FOUND,
            "as if it did not exist"
        );
        assert!(h.session(&theirs).await.is_some());

        let one = h
            .post(
                &format!("/account/sessions/{second_id}/end"),
                &jar,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(one.location(), "/account?done=signed_out_one");
        assert!(h.session(&second).await.is_none());
        assert!(h.session(&third).await.is_some());
        let page = h.get(one.location(), &jar).await;
        assert!(page.body.contains("That session has been signed out."));

        let others = h
            .post("/account/sessions/end-others", &jar, &[("csrf", &csrf)])
            .await;
        assert_eq!(others.location(), "/account?done=signed_out_others");
        assert!(h.session(&third).await.is_none());
        assert!(h.session(&here).await.is_some(), "this one stays");
        assert!(h.session(&theirs).await.is_some(), "bob is untouched");
        assert_eq!(live_sessions(&h, &alice).await.len(), 1);
    }

    #[tokio::test]
    async fn asvs5_7_5_2_signing_out_everywhere_else_needs_a_recent_authentication() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let here = h.sso_session(&alice).await;
        let other = h.sso_session(&alice).await;
        let other_id = h.session(&other).await.unwrap().id.clone();
        h.advance(Duration::from_secs(11 * 60));
        // All at once, or one at a time: both need the recent authentication.
        for path in [
            "/account/sessions/end-others".to_owned(),
            format!("/account/sessions/{other_id}/end"),
        ] {
            let answer = h
                .post(&path, &sso(&here), &[("csrf", &csrf_token(&here))])
                .await;
            assert_eq!(answer.location(), "/reauth?return_to=/account", "{path}");
            assert!(h.session(&other).await.is_some(), "nothing ended: {path}");
        }
    }
}
