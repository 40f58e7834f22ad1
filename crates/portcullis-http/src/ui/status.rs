//! The session status the expiry-warning script polls (`/session/status`, never counted as
//! activity) and its "Stay signed in" button (`/session/extend`, counted as activity). Both
//! answer JSON; without a session, `401 {"signed_in":false}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_core::{Store, Validated};

use super::session::{cookie_principal, current};
use super::web::{Browser, PageError, csrf_matches};
use crate::AppState;

/// What the expiry script reads.
#[derive(Debug, serde::Serialize)]
struct StatusBody {
    expires_in_ms: u64,
    warn_before_ms: u64,
    absolute_in_ms: u64,
    warning: bool,
}

/// The remaining time of a validated session and when its policy warns.
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

/// `401 {"signed_in":false}`: the script then shows that the session has ended.
fn signed_out_json() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "signed_in": false })),
    )
        .into_response()
}

/// The session's remaining time, without counting as activity (a background poll).
pub(super) async fn session_status<S: Store>(
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
pub(super) async fn session_extend<S: Store>(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Method, StatusCode, header};
    use serde_json::json;

    use crate::ui::tests::{Harness, request, sso};
    use crate::ui::web::csrf_token;

    /// `POST /session/extend` as the expiry script sends it.
    async fn extend(h: &Harness, token: &str, csrf: Option<&str>) -> crate::ui::tests::Answer {
        let mut builder = request(Method::POST, "/session/extend", &sso(token))
            .header("sec-fetch-site", "same-origin");
        if let Some(csrf) = csrf {
            builder = builder.header("x-csrf-token", csrf);
        }
        h.send(builder.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn without_a_cookie_the_status_is_signed_out_json() {
        let h = Harness::new();
        let answer = h.get("/session/status", "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(answer.body, r#"{"signed_in":false}"#);
        let extend = extend(&h, "pcs_unknown", None).await;
        assert_eq!(extend.status, StatusCode::UNAUTHORIZED);
        assert_eq!(extend.json(), json!({"signed_in": false}));
    }

    #[tokio::test]
    async fn the_status_counts_down_without_counting_as_activity_and_extend_restarts_it() {
        let h = Harness::new();
        let alice = h.user("alice").await;
        let token = h.sso_session(&alice).await;
        let status = h.get("/session/status", &sso(&token)).await;
        assert_eq!(status.status, StatusCode::OK);
        assert_eq!(
            status.json(),
            json!({
                "expires_in_ms": 15 * 60_000,
                "warn_before_ms": 2 * 60_000,
                "absolute_in_ms": 12 * 3_600_000,
                "warning": false,
            })
        );

        h.advance(Duration::from_secs(14 * 60));
        let late = h.get("/session/status", &sso(&token)).await.json();
        assert_eq!(late["expires_in_ms"], 60_000, "polling is not activity");
        assert_eq!(late["warning"], true);

        let stale = extend(&h, &token, Some("stale")).await;
        assert_eq!(stale.status, StatusCode::FORBIDDEN);
        let missing = extend(&h, &token, None).await;
        assert_eq!(missing.status, StatusCode::FORBIDDEN);

        let extended = extend(&h, &token, Some(&csrf_token(&token))).await;
        assert_eq!(extended.status, StatusCode::OK, "{}", extended.body);
        let body = extended.json();
        assert_eq!(body["expires_in_ms"], 15 * 60_000);
        assert_eq!(body["warning"], false);
        assert_eq!(body["absolute_in_ms"], 12 * 3_600_000 - 14 * 60_000);

        h.advance(Duration::from_secs(16 * 60));
        let ended = h.get("/session/status", &sso(&token)).await;
        assert_eq!(ended.status, StatusCode::UNAUTHORIZED);
        assert_eq!(ended.json(), json!({"signed_in": false}));
    }
}
