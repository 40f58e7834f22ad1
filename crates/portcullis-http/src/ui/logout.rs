//! Signing out (`/logout`): a confirmation page, and the POST that ends the SSO session (and,
//! through `parent`, every application session under it), clears the cookie and asks the
//! browser to clear what it kept of the site.

use super::web::PageForm;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use minijinja::context;
use portcullis_core::oidc::origin_of;
use portcullis_core::{Actor, Principal, Store};

use super::session::{SignedIn, current};
use super::web::{Browser, PageError, SESSION_COOKIE, clear_cookie, csrf_matches, framing_policy};
use super::{PageResult, page, see_other};
use crate::AppState;

/// "Sign out?" for someone signed in; anyone else goes to sign in.
pub(super) async fn logout_page<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
) -> PageResult {
    match current(&state, &browser, false).await? {
        Ok(signed_in) => Ok(page(
            &state,
            StatusCode::OK,
            "logout.html",
            Some(&signed_in),
            context! { upstream => super::federation::upstream_label(&state, &signed_in) },
        )),
        Err(_) => Ok(see_other("/login")),
    }
}

/// The sign-out form: its CSRF token, and whether to sign out of the upstream provider too.
#[derive(Debug, serde::Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    upstream: Option<String>,
}

/// Ends the session (when there is one and the CSRF token is its own) and clears the cookie.
pub(super) async fn logout_submit<S: Store>(
    State(state): State<AppState<S>>,
    browser: Browser,
    PageForm(form): PageForm<LogoutForm>,
) -> PageResult {
    let signed_in = current(&state, &browser, false)
        .await
        .map_err(unfinished_sign_out)?;
    match signed_in {
        Ok(signed_in) => {
            if !csrf_matches(&form.csrf, &signed_in.csrf()) {
                return Err(PageError::StaleForm);
            }
            end_sso_session(&state, &signed_in, None, form.upstream.is_some()).await
        }
        // Signed out already (another tab): the cookie and site data are cleared all the same.
        Err(_) => Ok(cleared(signed_out_page(&state, &[], None))),
    }
}

/// A sign-out the store could not carry out says that the person may still be signed in
/// (and keeps the cookie, so that trying again ends the same session).
pub(super) fn unfinished_sign_out(err: PageError) -> PageError {
    match err {
        PageError::Unavailable => PageError::SignOutUnavailable,
        other => other,
    }
}

/// Ends the SSO session and, through `parent`, every application session under it; clears
/// the cookie and asks the browser to clear what it kept of the site. The clients that
/// registered a front-channel logout page get it loaded on the signed-out page; then the
/// browser goes on to `continue_to` (RP-initiated logout's return), at once when no page is
/// to be loaded. With `upstream`, an SSO session started at an upstream provider ends there
/// too: the browser goes there first, and comes back to `continue_to`.
pub(super) async fn end_sso_session<S: Store>(
    state: &AppState<S>,
    signed_in: &SignedIn,
    continue_to: Option<&str>,
    upstream: bool,
) -> PageResult {
    let frames = match &state.provider {
        // Asked first: the SSO session's children say which clients the person used.
        Some(provider) => provider
            .frontchannel_logout_uris(signed_in.session())
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot list the front-channel logout pages; signing out without them");
                Vec::new()
            }),
        None => Vec::new(),
    };
    state
        .engine
        .logout(
            &signed_in.token,
            &Principal::portcullis(Actor::user(&signed_in.session().subject)),
        )
        .await
        .map_err(|err| unfinished_sign_out(err.into()))?;
    let upstream_logout = match upstream {
        true => super::federation::upstream_logout_url(state, signed_in, continue_to).await,
        false => None,
    };
    let response = match (&upstream_logout, continue_to, frames.is_empty()) {
        // Through the page, never a redirect of the form's POST: CSP `form-action` would have
        // to name the upstream, which this page cannot know before discovery.
        (Some(url), _, _) => signed_out_page(state, &frames, Some(url)),
        (None, Some(url), true) => see_other(url),
        (None, _, _) => signed_out_page(state, &frames, continue_to),
    };
    Ok(cleared(response))
}

/// `response` clearing the SSO cookie and asking the browser to clear what it kept of the
/// site (ASVS5-14.3.1 / OWASP-SM-18).
fn cleared(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, "Lax"));
    headers.insert(
        "clear-site-data",
        HeaderValue::from_static("\"cache\", \"cookies\", \"storage\""),
    );
    response
}

/// "You are signed out", loading `frames` (front-channel logout pages) and going on to
/// `continue_to` when given.
pub(super) fn signed_out_page<S: Store>(
    state: &AppState<S>,
    frames: &[String],
    continue_to: Option<&str>,
) -> Response {
    let mut response = page(
        state,
        StatusCode::OK,
        "signed_out.html",
        None,
        context! { frames => frames.to_vec(), continue_to => continue_to },
    );
    if !frames.is_empty() {
        let origins: Vec<&str> = frames.iter().filter_map(|f| origin_of(f)).collect();
        response.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            framing_policy(None, &origins),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Method, StatusCode, header};

    use crate::ui::tests::{Harness, max_age, request, sso, urlencoded};
    use crate::ui::web::{SESSION_COOKIE, csrf_token};

    #[tokio::test]
    async fn the_logout_page_asks_someone_signed_in_and_sends_anyone_else_to_sign_in() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let page = h.get("/logout", &sso(&token)).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.hidden("csrf"), csrf_token(&token));
        let nobody = h.get("/logout", "").await;
        assert_eq!(
            (nobody.status, nobody.location()),
            (StatusCode::SEE_OTHER, "/login")
        );
        assert!(h.session(&token).await.is_some(), "GET changes nothing");
    }

    #[tokio::test]
    async fn logout_without_the_csrf_token_is_refused() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h.post("/logout", &sso(&token), &[]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(answer.body.contains("This form has expired"));
        assert!(!answer.headers.contains_key("clear-site-data"));
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(h.session(&token).await.is_some());
    }

    #[tokio::test]
    async fn a_cross_site_logout_is_refused() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let form = urlencoded(&[("csrf", &csrf_token(&token))]);
        let post = |site: Option<&str>, origin: Option<&str>| {
            let mut builder = request(Method::POST, "/logout", &sso(&token))
                .header(header::HOST, "portcullis.example")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(site) = site {
                builder = builder.header("sec-fetch-site", site);
            }
            if let Some(origin) = origin {
                builder = builder.header(header::ORIGIN, origin);
            }
            builder.body(Body::from(form.clone())).unwrap()
        };
        for refused in [
            post(Some("cross-site"), None),
            post(Some("same-site"), Some("https://portcullis.example")),
            post(None, Some("https://evil.example")),
        ] {
            let answer = h.send(refused).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN);
            assert!(
                answer.body.contains("Request refused"),
                "a person sees why: {}",
                answer.body
            );
            assert!(answer.set_cookie(SESSION_COOKIE).is_none());
            assert!(h.session(&token).await.is_some());
        }
        // A matching Origin is enough when the browser sends no Sec-Fetch-Site.
        let answer = h.send(post(None, Some("https://portcullis.example"))).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(h.session(&token).await.is_none());
    }

    /// An HTTP/2 request has no `Host` header: the host is the URI's authority (`:authority`),
    /// as hyper gives it, and a matching Origin is same-origin there too.
    #[tokio::test]
    async fn an_http2_logout_with_a_matching_origin_is_same_origin() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let post = |origin: &str| {
            request(
                Method::POST,
                "https://portcullis.example/logout",
                &sso(&token),
            )
            .version(axum::http::Version::HTTP_2)
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(urlencoded(&[("csrf", &csrf_token(&token))])))
            .unwrap()
        };
        let refused = h.send(post("https://evil.example")).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(h.session(&token).await.is_some());
        let answer = h.send(post("https://portcullis.example")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(h.session(&token).await.is_none());
    }

    #[tokio::test]
    async fn logout_ends_the_session_clears_the_cookie_and_the_site_data() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let answer = h
            .post("/logout", &sso(&token), &[("csrf", &csrf_token(&token))])
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.contains("You are signed out"));
        let line = answer.set_cookie(SESSION_COOKIE).unwrap();
        assert_eq!(
            line,
            "__Host-portcullis=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
        );
        assert_eq!(max_age(line), Some(0));
        assert_eq!(
            answer.headers["clear-site-data"],
            "\"cache\", \"cookies\", \"storage\""
        );
        assert!(h.session(&token).await.is_none());
        let account = h.get("/account", &sso(&token)).await;
        assert!(account.location().starts_with("/login"));

        // Signing out again (another tab) still clears the cookie.
        let again = h.post("/logout", &sso(&token), &[]).await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.set_cookie(SESSION_COOKIE).is_some());
    }
}
