//! The pages people use: sign in (password, TOTP, "Stay signed in?"), the account page
//! (sessions and devices, password, two-factor), re-authentication, sign out, and the
//! session status the expiry-warning script polls. Server-rendered; only the expiry warning
//! needs JavaScript.
//!
//! A sign-in in progress is itself a short session (policy [`SIGN_IN_POLICY`], subject
//! `sign-in:<user id>`, its own cookie) so every step survives on any node of a cluster and a
//! half-finished sign-in reaches nothing: account pages accept only the SSO cookie.
//!
//! One module per page flow: `sign_in` (password, code, "Stay signed in?"), `account`
//! (sessions and devices), `password`, `two_factor`, `reauth`, `logout` and `status` (the
//! expiry script's poll and extend). `session` finds the signed-in person behind the cookie
//! for all of them; this module holds the routes and the page helpers they share.
//!
//! [`SIGN_IN_POLICY`]: portcullis_core::SIGN_IN_POLICY

pub mod device;
pub mod web;

mod account;
pub mod authorize;
mod end_session;
pub mod federation;
mod logout;
mod password;
mod reauth;
mod session;
mod sign_in;
mod status;
mod two_factor;

#[cfg(test)]
mod tests;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use portcullis_core::Store;
use serde::Deserialize;

use self::session::SignedIn;
use self::web::{ErrorPage, PageError, PagePath};
use crate::AppState;

/// What a page handler answers: the page, or an error the error-page layer renders.
type PageResult = Result<Response, PageError>;

/// The pages, with their security headers, same-origin check and error pages.
pub fn routes<S: Store>(state: &AppState<S>) -> Router<AppState<S>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/account") }))
        .route(
            "/login",
            get(sign_in::login_page::<S>).post(sign_in::login_submit::<S>),
        )
        .route(
            "/login/otp",
            get(sign_in::otp_page::<S>).post(sign_in::otp_submit::<S>),
        )
        .route(
            "/login/stay",
            get(sign_in::stay_page::<S>).post(sign_in::stay_submit::<S>),
        )
        .route(
            "/logout",
            get(logout::logout_page::<S>).post(logout::logout_submit::<S>),
        )
        .route(
            "/reauth",
            get(reauth::reauth_page::<S>).post(reauth::reauth_submit::<S>),
        )
        .route("/login/upstream/{id}", get(federation::start::<S>))
        .route(
            "/login/upstream/{id}/callback",
            get(federation::callback::<S>).post(federation::callback_post::<S>),
        )
        .route(
            "/login/upstream/{id}/signed-out",
            get(federation::signed_out::<S>),
        )
        .route(
            "/login/upstream/{id}/link",
            post(federation::start_link::<S>),
        )
        .route("/account", get(account::account_page::<S>))
        .route(
            "/account/identities/unlink",
            post(account::unlink_identity::<S>),
        )
        .route(
            "/account/sessions/{id}/end",
            post(account::end_one_session::<S>),
        )
        .route(
            "/account/sessions/end-others",
            post(account::end_other_sessions::<S>),
        )
        .route(
            "/account/password",
            get(password::password_page::<S>).post(password::password_submit::<S>),
        )
        .route("/account/two-factor", get(two_factor::two_factor_page::<S>))
        .route(
            "/account/two-factor/enrol",
            post(two_factor::totp_enrol::<S>),
        )
        .route(
            "/account/two-factor/remove",
            post(two_factor::totp_remove::<S>),
        )
        .route(
            "/oidc/authorize",
            get(authorize::authorize::<S>).post(authorize::authorize_post::<S>),
        )
        .route("/oidc/authorize/resume", get(authorize::resume::<S>))
        .route("/oidc/consent", post(authorize::consent_submit::<S>))
        .route(
            "/oidc/logout",
            get(end_session::end_session_page::<S>).post(end_session::end_session_submit::<S>),
        )
        .route("/session/status", get(status::session_status::<S>))
        .route("/session/extend", post(status::session_extend::<S>))
        .route("/assets/{name}", get(asset::<S>))
        // Inside the error-page layer, so a refused cross-site post gets the friendly page too.
        .layer(middleware::from_fn(web::same_origin_only))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            render_error_pages::<S>,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            web::security_headers::<S>,
        ))
}

/// Turns a response marked with an [`ErrorPage`] into the rendered error page, keeping its
/// status.
async fn render_error_pages<S: Store>(
    State(state): State<AppState<S>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if let Some(page) = response.extensions_mut().remove::<ErrorPage>() {
        let mut rendered = error_page(&state, response.status(), page);
        // What the error set besides its body (`Retry-After`, a cookie) goes with the page.
        for (name, value) in response.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                rendered.headers_mut().append(name, value.clone());
            }
        }
        return rendered;
    }
    response
}

/// The error page `page` with `status`.
fn error_page<S: Store>(state: &AppState<S>, status: StatusCode, page: ErrorPage) -> Response {
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
    html_response(status, html)
}

/// What answers a request no route takes (`status` 404, or 405 for a wrong method): a browser
/// that asked for a page (`Accept: text/html`: someone typed or followed a link) gets the
/// friendly page, with the pages' policy; any other caller, `api`'s problem+json.
pub(crate) fn unrouted<S: Store>(
    state: &AppState<S>,
    headers: &axum::http::HeaderMap,
    status: StatusCode,
    api: crate::error::ApiError,
) -> Response {
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if !wants_page {
        return api.into_response();
    }
    let page = if status == StatusCode::NOT_FOUND {
        ErrorPage {
            heading: "Page not found",
            message: "There is nothing here.",
        }
    } else {
        ErrorPage {
            heading: "That did not work",
            message: "This page cannot be used that way. Go back and try again.",
        }
    };
    let mut response = error_page(state, status, page);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        web::content_security_policy(None),
    );
    response
}

/// An HTML answer with `status`.
fn html_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// A `303 See Other` to `location`.
fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

/// What every page's template gets: the product's name and, when signed in, who and the
/// session's CSRF token.
fn base_context<S: Store>(state: &AppState<S>, signed_in: Option<&SignedIn>) -> minijinja::Value {
    context! {
        product => &state.ui.settings.product,
        signed_in => signed_in.is_some(),
        username => signed_in.map(SignedIn::username),
        csrf => signed_in.map(SignedIn::csrf),
    }
}

/// Renders template `name` with `extra` over the base context.
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

/// A form that carries only the CSRF token.
#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The stylesheet and the expiry script (the theme's copy when it has one).
async fn asset<S: Store>(
    State(state): State<AppState<S>>,
    PagePath(name): PagePath<String>,
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
