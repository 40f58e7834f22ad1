//! Handlers of the session API v1 and the local admin API.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_core::oidc::{DeliveryQuery, DeliveryState};
use portcullis_core::{
    ApplicationChange, Elevate, EndReason, EngineError, EventQuery, Grant, PublicId, Reach,
    Session, Store, Timestamp,
};
use serde::de::DeserializeOwned;
use std::sync::OnceLock;

use crate::error::{ApiError, Problem};
use crate::json::WriteJson;
use crate::wire::*;
use crate::{AppState, Caller};

/// A JSON body whose rejections are problem documents.
///
/// Every validation reads one, so the common case takes a short way: a body sent as plain
/// `application/json` is parsed directly. Anything else, and every body that fails to parse,
/// goes through axum's `Json`, whose rejections say where in the body the problem is.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, Self::Rejection> {
        let plain_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"));
        if !plain_json {
            let Json(value) = Json::<T>::from_request(req, state).await?;
            return Ok(Self(value));
        }
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::BodyTooLarge)?;
        if let Ok(value) = serde_json::from_slice(&body) {
            return Ok(Self(value));
        }
        let Json(value) = Json::<T>::from_bytes(&body)?;
        Ok(Self(value))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A path parameter whose rejection (bad percent-encoding, invalid UTF-8) is a problem document.
type ApiPath = Result<Path<String>, PathRejection>;

/// The answer for a session asked for by id after it ended: 410 Gone, a problem document
/// (`session_ended`, `ended_reason`) that carries the session as it ended under `session`.
/// An ended session stays readable so until it is purged (`ended_retention`); then 404.
pub fn session_gone(session: &Session, now: Timestamp) -> Response {
    let Some(ended) = &session.ended else {
        return ApiError::Internal.into_response();
    };
    let problem = ApiError::SessionEnded(ended.reason).problem();
    let mut body = Vec::with_capacity(1280);
    let written = serde_json::to_writer(&mut body, &problem)
        .and_then(|()| {
            // The problem's closing brace makes way for one more member.
            body.pop();
            body.extend_from_slice(b",\"session\":");
            SessionView::of(session, now).write_json(&mut body)
        })
        .map(|()| body.push(b'}'));
    match written {
        Ok(()) => (
            StatusCode::GONE,
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => ApiError::Internal.into_response(),
    }
}

/// A JSON answer written in one go into a buffer sized for a session view (axum's `Json`
/// starts at 128 bytes and grows, copying, on every answer of the hot path).
#[derive(Debug)]
pub struct Answer<T>(pub T);

impl<T: WriteJson> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(1024);
        match self.0.write_json(&mut body) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(_) => ApiError::Internal.into_response(),
        }
    }
}

fn record_validation(result: &'static str) {
    // The registry lookup behind `counter!` costs a hash per call; the answer of nearly every
    // validation is "ok", so that handle is looked up once (the recorder is installed before
    // the server starts).
    static OK: OnceLock<metrics::Counter> = OnceLock::new();
    if result == "ok" {
        OK.get_or_init(|| metrics::counter!("portcullis_validations_total", "result" => "ok"))
            .increment(1);
    } else {
        metrics::counter!("portcullis_validations_total", "result" => result).increment(1);
    }
}

/// Create a session after the application has authenticated the person.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", request_body = CreateSessionBody,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created; the token is shown only here", body = IssuedView),
        (status = 400, description = "`malformed_json`; `unknown_policy`; `invalid_request` (a subject of more than 256 bytes of UTF-8)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`policy_not_allowed`: the application may not use the policy; `application_not_allowed`: `application` names another application", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`session_limit`: the policy denies more sessions; `parent_not_live`: `parent` is not a live session of this subject", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`data_too_large` (over `max_data_bytes`) or `body_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    ApiJson(Obj(body)): ApiJson<Obj<CreateSessionBody>>,
) -> ApiResult<Response> {
    body.check()?;
    if let Reach::Application(app) = &caller.0.reach
        && body
            .application
            .as_deref()
            .is_some_and(|named| named != app.id.as_str())
    {
        return Err(ApiError::ApplicationNotAllowed);
    }
    if let Some(parent) = &body.parent {
        // The engine checks it again when it inserts; this answers a parent that is gone, of
        // another subject or out of reach (all alike) as a conflict with the parent's state.
        let live = match state
            .engine
            .get(&PublicId::from_string(parent.clone()), &caller.0)
            .await
        {
            Ok(p) => p.is_live() && p.subject == body.subject,
            Err(EngineError::NotFound) => false,
            Err(err) => return Err(err.into()),
        };
        if !live {
            return Err(ApiError::ParentNotLive);
        }
    }
    let issued = state.engine.create(body.into(), &caller.0).await?;
    metrics::counter!("portcullis_sessions_created_total").increment(1);
    let view = IssuedView::of(&issued, state.engine.now());
    Ok((StatusCode::CREATED, Answer(view)).into_response())
}

/// Validate a session token on a request.
#[utoipa::path(post, path = "/v1/sessions/validate", tag = "sessions", request_body = ValidateBody,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The session is live", body = ValidatedView),
        (status = 401, description = "Rejected: `reason` is `unknown`, `malformed_token`, `expired_idle`, `expired_absolute`, `logged_out`, `revoked` (see `ended_reason`) or `binding_mismatch`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`store_unavailable`: fail closed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn validate_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    ApiJson(Obj(body)): ApiJson<Obj<ValidateBody>>,
) -> ApiResult<Response> {
    body.check()?;
    let device = body.device.into();
    match state
        .engine
        .validate(&body.token, body.activity, &device, &caller.0)
        .await
    {
        Ok(validated) => {
            record_validation("ok");
            Ok(Answer(ValidatedView::of(&validated, state.engine.now())).into_response())
        }
        Err(err) => {
            let error = ApiError::from(err);
            record_validation(error.reason());
            Err(error)
        }
    }
}

/// Rotate the token (after login or a privilege change): the old token is dead at once.
#[utoipa::path(post, path = "/v1/sessions/rotate", tag = "sessions", request_body = TokenBody,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The new token", body = IssuedView),
        (status = 401, description = "Rejected token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the session changed concurrently (another rotation, elevation or data change) more often than the engine retries; try again", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    ApiJson(Obj(body)): ApiJson<Obj<TokenBody>>,
) -> ApiResult<Response> {
    let issued = state.engine.rotate(&body.token, &caller.0).await?;
    Ok(Answer(IssuedView::of(&issued, state.engine.now())).into_response())
}

/// Record a re-authentication for a sensitive action (rotates the token).
#[utoipa::path(post, path = "/v1/sessions/elevate", tag = "sessions", request_body = ElevateBody,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Elevated; the new token", body = IssuedView),
        (status = 400, description = "`malformed_json`; `invalid_request`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Rejected token (as for validation)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the session changed concurrently (another rotation, elevation or data change) more often than the engine retries; try again", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn elevate_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    ApiJson(Obj(body)): ApiJson<Obj<ElevateBody>>,
) -> ApiResult<Response> {
    body.check()?;
    let request = Elevate {
        methods: body.methods,
        level: body.level,
        scope: body.scope,
    };
    let issued = state
        .engine
        .elevate(&body.token, request, &caller.0)
        .await?;
    Ok(Answer(IssuedView::of(&issued, state.engine.now())).into_response())
}

/// Log out. Idempotent.
#[utoipa::path(post, path = "/v1/sessions/logout", tag = "sessions", request_body = TokenBody,
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Logged out (or already ended)"),
        (status = 401, description = "`malformed_token`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn logout_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    ApiJson(Obj(body)): ApiJson<Obj<TokenBody>>,
) -> ApiResult<StatusCode> {
    state.engine.logout(&body.token, &caller.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read one session. A live session answers 200; an ended one 410 Gone with its ending and
/// the session as it ended (`session`), until it is purged (`ended_retention`); then, like
/// one that never existed or belongs to another application, 404.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The live session", body = SessionView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`session_ended`: the session has ended (`ended_reason`); `session` is the session as it ended", body = SessionGoneProblem, content_type = "application/problem+json"),
    ))]
pub async fn get_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    id: ApiPath,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let session = state
        .engine
        .get(&PublicId::from_string(id), &caller.0)
        .await?;
    let now = state.engine.now();
    if session.ended.is_some() {
        return Ok(session_gone(&session, now));
    }
    Ok(Answer(SessionView::of(&session, now)).into_response())
}

/// End one session as an administrator (`revoked_admin`). Idempotent while the ended session
/// is retained; a `GET` of it then answers 410.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Ended (or already ended)"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_session<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    id: ApiPath,
) -> ApiResult<StatusCode> {
    let Path(id) = id?;
    state
        .engine
        .revoke(&PublicId::from_string(id), &caller.0)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a session's data (size-limited).
#[utoipa::path(put, path = "/v1/sessions/{id}/data", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = serde_json::Value, description = "Any JSON value"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The session with its new data", body = SessionView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "`session_ended`: the session has ended; its data is kept as it was", body = SessionGoneProblem, content_type = "application/problem+json"),
        (status = 413, description = "`data_too_large` (over `max_data_bytes`) or `body_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the session changed concurrently (another rotation, elevation or data change) more often than the engine retries; try again", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replace_data<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    id: ApiPath,
    ApiJson(data): ApiJson<serde_json::Value>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let id = PublicId::from_string(id);
    match state.engine.replace_data(&id, data, &caller.0).await {
        Ok(session) => Ok(Answer(SessionView::of(&session, state.engine.now())).into_response()),
        // The engine refuses an ended session as it refuses its token; by id, it is gone.
        Err(EngineError::Rejected(_)) => {
            let session = state.engine.get(&id, &caller.0).await?;
            if session.ended.is_none() {
                return Err(EngineError::Conflict.into());
            }
            Ok(session_gone(&session, state.engine.now()))
        }
        Err(err) => Err(err.into()),
    }
}

/// A subject's live sessions: the caller's application's, or every application's and the
/// SSO session with `scope=all` (grant `list_all_sessions`).
#[utoipa::path(get, path = "/v1/subjects/{subject}/sessions", tag = "subjects",
    params(("subject" = String, Path, description = "Subject"), ListSubjectQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Live sessions, oldest first", body = SessionListView),
        (status = 400, description = "`invalid_parameter`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`grant_required`: `scope=all` without the grant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_subject<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    subject: ApiPath,
    query: Result<Query<ListSubjectQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Path(subject) = subject?;
    let Query(query) = query?;
    let all = query.scope == Some(Scope::All);
    let sessions = state.engine.list_subject(&subject, all, &caller.0).await?;
    Ok(Answer(SessionListView::of(&sessions, state.engine.now())).into_response())
}

/// End all of a subject's sessions except one (force logout after a password change): the
/// caller's application's, or with `scope=all` (grant `end_everywhere`) every application's
/// and the SSO session.
#[utoipa::path(delete, path = "/v1/subjects/{subject}/sessions", tag = "subjects",
    params(("subject" = String, Path, description = "Subject"), EndSubjectQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "How many ended", body = EndedCountView),
        (status = 400, description = "`invalid_parameter`: unknown reason; `invalid_request`: a reason only the engine records", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`grant_required`: `scope=all` without the grant", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: `except` names no session of this subject (nothing is ended)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn end_subject<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    subject: ApiPath,
    query: Result<Query<EndSubjectQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Answer<EndedCountView>> {
    let Path(subject) = subject?;
    let Query(query) = query?;
    let reason = match query.reason.as_deref() {
        None => EndReason::RevokedAdmin,
        Some(text) => EndReason::parse(text).ok_or_else(|| {
            ApiError::InvalidParameter(format!("reason \"{text}\" is not an ending reason"))
        })?,
    };
    let except = query.except.map(PublicId::from_string);
    let all = query.scope == Some(Scope::All);
    let ended = state
        .engine
        .end_subject(&subject, except.as_ref(), reason, all, &caller.0)
        .await?;
    Ok(Answer(EndedCountView { ended }))
}

/// Read the audit trail: the caller's application's events, or everyone's with `scope=all`
/// (grant `read_all_events`).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Events, oldest first", body = EventsView),
        (status = 400, description = "`invalid_parameter`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`grant_required`: `scope=all` without the grant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_events<S: Store>(
    State(state): State<AppState<S>>,
    caller: Caller,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Answer<EventsView>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidParameter("limit must be 1 to 1000".into()));
    }
    if query
        .after
        .is_some_and(|after| i64::try_from(after).is_err())
    {
        return Err(ApiError::InvalidParameter(
            "after must be 0 to 9223372036854775807".into(),
        ));
    }
    let events = state
        .engine
        .events(
            &EventQuery {
                subject: query.subject,
                session_id: query.session.map(PublicId::from_string),
                application: None,
                after: query.after.unwrap_or(0),
                limit,
            },
            query.scope == Some(Scope::All),
            &caller.0,
        )
        .await?;
    let next = (events.len() == limit).then(|| events.last().map_or(0, |e| e.seq));
    Ok(Answer(EventsView {
        events: events.iter().map(Into::into).collect(),
        next,
    }))
}

/// Create an API key (local admin socket only).
#[utoipa::path(post, path = "/admin/api-keys", tag = "admin", request_body = CreateApiKeyBody,
    responses(
        (status = 201, description = "Created; the key is shown only here", body = ApiKeyView),
        (status = 404, description = "`not_found`: no such application", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_api_key<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    ApiJson(Obj(body)): ApiJson<Obj<CreateApiKeyBody>>,
) -> ApiResult<Response> {
    let (secret, key) = state
        .engine
        .create_api_key(&body.name, &body.application, &caller.0.actor)
        .await?;
    let mut view = ApiKeyView::from(&key);
    view.key = Some(secret.expose().to_owned());
    Ok((StatusCode::CREATED, Answer(view)).into_response())
}

/// List API keys (local admin socket only).
#[utoipa::path(get, path = "/admin/api-keys", tag = "admin",
    responses((status = 200, description = "Every API key (never a secret)", body = ApiKeyListView)))]
pub async fn list_api_keys<S: Store>(
    State(state): State<AppState<S>>,
) -> ApiResult<Answer<ApiKeyListView>> {
    let keys = state.engine.list_api_keys().await?;
    Ok(Answer(ApiKeyListView {
        api_keys: keys.iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key (local admin socket only).
#[utoipa::path(delete, path = "/admin/api-keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_api_key<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    id: ApiPath,
) -> ApiResult<StatusCode> {
    let Path(id) = id?;
    state
        .engine
        .revoke_api_key(&PublicId::from_string(id), &caller.0.actor)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a local account (local admin socket only).
#[utoipa::path(post, path = "/admin/users", tag = "admin", request_body = CreateUserBody,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 409, description = "`name_taken`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_user<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    ApiJson(Obj(body)): ApiJson<Obj<CreateUserBody>>,
) -> ApiResult<Response> {
    let user = state
        .accounts
        .add_user(&body.username, &body.password, &caller.0.actor)
        .await?;
    Ok((StatusCode::CREATED, Answer(UserView::from(&user))).into_response())
}

/// List local accounts (local admin socket only).
#[utoipa::path(get, path = "/admin/users", tag = "admin",
    responses((status = 200, description = "Every local account (never a password)", body = UserListView)))]
pub async fn list_users<S: Store>(
    State(state): State<AppState<S>>,
) -> ApiResult<Answer<UserListView>> {
    let users = state.accounts.list().await?;
    Ok(Answer(UserListView {
        users: users.iter().map(Into::into).collect(),
    }))
}

/// Disable, enable or set the password of an account (local admin socket only). Disabling
/// ends every session of the account at once (ASVS5-7.4.2); an administrator's password
/// reset ends them with `password_changed`.
#[utoipa::path(patch, path = "/admin/users/{username}", tag = "admin", request_body = UpdateUserBody,
    params(("username" = String, Path, description = "The username")),
    responses(
        (status = 200, description = "Changed; `sessions_ended` says how many sessions ended", body = UserView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_user<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    username: ApiPath,
    ApiJson(Obj(body)): ApiJson<Obj<UpdateUserBody>>,
) -> ApiResult<Answer<UserView>> {
    let Path(username) = username?;
    let mut user = state.accounts.by_name(&username).await?;
    let mut ended = None;
    let actor = &caller.0.actor;
    if let Some(password) = &body.password {
        let (changed, n) = state
            .rules()
            .change_password(&user.id, password, true, None, actor)
            .await?;
        user = changed;
        ended = Some(ended.unwrap_or(0) + n);
    }
    if let Some(disabled) = body.disabled {
        let (changed, n) = state
            .rules()
            .set_disabled(&user.id, disabled, actor)
            .await?;
        user = changed;
        if disabled {
            ended = Some(ended.unwrap_or(0) + n);
        }
    }
    let mut view = UserView::from(&user);
    view.sessions_ended = ended;
    Ok(Answer(view))
}

fn application_change(body: ApplicationBody) -> ApiResult<ApplicationChange> {
    let grants = match body.grants {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|name| Grant::parse(name).ok_or_else(|| ApiError::UnknownGrant(name.clone())))
                .collect::<ApiResult<Vec<Grant>>>()?,
        ),
    };
    Ok(ApplicationChange {
        name: body.name,
        policies: body.policies,
        default_policy: body.default_policy,
        grants,
    })
}

/// Register an application (local admin socket only).
#[utoipa::path(post, path = "/admin/applications", tag = "admin", request_body = ApplicationBody,
    responses(
        (status = 201, description = "Registered", body = ApplicationView),
        (status = 409, description = "`name_taken`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_application<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    ApiJson(Obj(body)): ApiJson<Obj<ApplicationBody>>,
) -> ApiResult<Response> {
    if body.name.is_none() {
        return Err(ApiError::InvalidParameter(
            "an application needs a name".into(),
        ));
    }
    let app = state
        .engine
        .add_application(application_change(body)?, &caller.0.actor)
        .await?;
    Ok((StatusCode::CREATED, Json(ApplicationView::from(&app))).into_response())
}

/// Every application, with how many live keys each has (local admin socket only).
#[utoipa::path(get, path = "/admin/applications", tag = "admin",
    responses((status = 200, description = "Every application", body = ApplicationListView)))]
pub async fn list_applications<S: Store>(
    State(state): State<AppState<S>>,
) -> ApiResult<Json<ApplicationListView>> {
    let apps = state.engine.list_applications().await?;
    let keys = state.engine.list_api_keys().await?;
    let applications = apps
        .iter()
        .map(|app| {
            let mut view = ApplicationView::from(app);
            view.api_keys = Some(
                keys.iter()
                    .filter(|k| k.application == app.id && k.revoked_at.is_none())
                    .count(),
            );
            view
        })
        .collect();
    Ok(Json(ApplicationListView { applications }))
}

/// One application by id or name (local admin socket only).
#[utoipa::path(get, path = "/admin/applications/{app}", tag = "admin",
    params(("app" = String, Path, description = "The application's id or name")),
    responses(
        (status = 200, description = "The application", body = ApplicationView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_application<S: Store>(
    State(state): State<AppState<S>>,
    app: ApiPath,
) -> ApiResult<Json<ApplicationView>> {
    let Path(app) = app?;
    let app = state.engine.application(&app).await?;
    let keys = state.engine.list_api_keys().await?;
    let mut view = ApplicationView::from(&app);
    view.api_keys = Some(
        keys.iter()
            .filter(|k| k.application == app.id && k.revoked_at.is_none())
            .count(),
    );
    Ok(Json(view))
}

/// Change an application's name, policies or grants (local admin socket only).
#[utoipa::path(patch, path = "/admin/applications/{app}", tag = "admin", request_body = ApplicationBody,
    params(("app" = String, Path, description = "The application's id or name")),
    responses(
        (status = 200, description = "Changed", body = ApplicationView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`name_taken` or `conflict` (changed meanwhile)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_application<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    app: ApiPath,
    ApiJson(Obj(body)): ApiJson<Obj<ApplicationBody>>,
) -> ApiResult<Json<ApplicationView>> {
    let Path(app) = app?;
    let app = state
        .engine
        .update_application(&app, application_change(body)?, &caller.0.actor)
        .await?;
    Ok(Json(ApplicationView::from(&app)))
}

/// Register an application as an OpenID Connect client, or change its registration (local
/// admin socket only). A secret-authenticated client gets a new secret, shown only in this
/// answer, when it has none yet or `new_secret` asks for one.
#[utoipa::path(put, path = "/admin/applications/{app}/client", tag = "oidc", request_body = ClientBody,
    params(("app" = String, Path, description = "The application's id or name")),
    responses(
        (status = 200, description = "Registered as an OpenID Connect client; a new `client_secret` is shown only here", body = ApplicationView),
        (status = 400, description = "`invalid_parameter`: a URI, scope, grant or key set that is not allowed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register_client<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    app: ApiPath,
    ApiJson(Obj(body)): ApiJson<Obj<ClientBody>>,
) -> ApiResult<Json<ApplicationView>> {
    use portcullis_core::oidc::{Client, ClientAuth, GrantType};
    let Path(app) = app?;
    let current = state.engine.application(&app).await?;
    let invalid = |what: String| ApiError::InvalidParameter(what);
    let mut secret = None;
    let auth = match body
        .token_endpoint_auth_method
        .as_deref()
        .unwrap_or("client_secret_basic")
    {
        "none" => ClientAuth::None,
        "client_secret_basic" | "client_secret_post" => {
            let kept = current.client.as_ref().and_then(|c| match &c.auth {
                ClientAuth::Secret(hash) if !body.new_secret => Some(*hash),
                _ => None,
            });
            match kept {
                Some(hash) => ClientAuth::Secret(hash),
                None => {
                    let token = state.engine.new_client_secret();
                    let hash = token.hash();
                    secret = Some(token.expose().to_owned());
                    ClientAuth::Secret(hash)
                }
            }
        }
        "private_key_jwt" => {
            let jwks = body
                .jwks
                .as_ref()
                .filter(|j| j.get("keys").is_some_and(serde_json::Value::is_array))
                .ok_or_else(|| invalid("private_key_jwt needs jwks, a JWK Set".into()))?;
            ClientAuth::PrivateKeyJwt {
                jwks: jwks.to_string(),
            }
        }
        other => {
            return Err(invalid(format!(
                "unknown token_endpoint_auth_method {other:?}"
            )));
        }
    };
    let scopes = body
        .scopes
        .unwrap_or_else(|| ["openid", "profile", "email"].map(str::to_owned).to_vec());
    let grant_types = match body.grant_types {
        None => [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
        Some(names) => names
            .iter()
            .map(|n| {
                GrantType::parse(n).ok_or_else(|| invalid(format!("unknown grant type {n:?}")))
            })
            .collect::<Result<_, _>>()?,
    };
    let id_token_signed_response_alg = match &body.id_token_signed_response_alg {
        None => None,
        Some(name) => {
            let alg = portcullis_core::oidc::SigningAlg::parse(name).ok_or_else(|| {
                invalid(format!(
                    "unknown signing algorithm {name:?} (ES256, EdDSA, RS256)"
                ))
            })?;
            // Only an algorithm the provider keeps a key for can sign its tokens.
            let signs = state
                .provider
                .as_ref()
                .is_some_and(|p| p.keys().signing_kid(alg).is_some());
            if !signs {
                return Err(invalid(format!(
                    "the provider signs no {name} tokens: add it to signing_algs"
                )));
            }
            Some(alg)
        }
    };
    // Only a provider of the configuration: a name it does not know would strand the
    // client's people on a "not found" page.
    if let Some(id) = &body.upstream
        && state
            .federation
            .as_ref()
            .is_none_or(|f| f.upstream(id).is_none())
    {
        return Err(invalid(format!(
            "no upstream provider {id:?} is configured (see [upstreams])"
        )));
    }
    let client = Client {
        auth,
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        backchannel_logout_uri: body.backchannel_logout_uri,
        frontchannel_logout_uri: body.frontchannel_logout_uri,
        scopes: scopes.into_iter().collect(),
        grant_types,
        require_consent: body.require_consent,
        id_token_signed_response_alg,
        upstream: body.upstream,
    };
    let app = state
        .engine
        .register_client(current.id.as_str(), Some(client), &caller.0.actor)
        .await?;
    let mut view = ApplicationView::from(&app);
    if let Some(client) = view.client.as_mut() {
        client.client_secret = secret;
    }
    Ok(Json(view))
}

/// End an application's registration as an OpenID Connect client (local admin socket only).
#[utoipa::path(delete, path = "/admin/applications/{app}/client", tag = "oidc",
    params(("app" = String, Path, description = "The application's id or name")),
    responses(
        (status = 200, description = "No longer a client", body = ApplicationView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn unregister_client<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    app: ApiPath,
) -> ApiResult<Json<ApplicationView>> {
    let Path(app) = app?;
    let app = state
        .engine
        .register_client(&app, None, &caller.0.actor)
        .await?;
    Ok(Json(ApplicationView::from(&app)))
}

/// The provider's signing keys, or why there are none to manage.
fn provider_for_keys<S: Store>(
    state: &AppState<S>,
) -> ApiResult<std::sync::Arc<portcullis_oidc::Provider<S>>> {
    state.provider.clone().ok_or_else(|| {
        ApiError::InvalidParameter(
            "the OpenID Connect provider is not configured (set issuer and encryption_keys)".into(),
        )
    })
}

fn provider_failed(err: portcullis_oidc::ProviderError) -> ApiError {
    use portcullis_oidc::{KeyError, ProviderError};
    match err {
        ProviderError::Engine(err) => ApiError::Engine(err),
        ProviderError::Store(err) | ProviderError::Keys(KeyError::Store(err)) => {
            ApiError::Engine(EngineError::Store(err))
        }
        ProviderError::Keys(KeyError::RotatedElsewhere(_)) => {
            ApiError::Engine(EngineError::Conflict)
        }
        other => {
            tracing::error!(error = %other, "the OpenID Connect provider cannot answer");
            ApiError::Engine(EngineError::Store(
                portcullis_core::StoreError::Unavailable(portcullis_core::BackendError::new(other)),
            ))
        }
    }
}

/// The provider's signing keys, signing and retired (local admin socket only).
#[utoipa::path(get, path = "/admin/oidc/keys", tag = "oidc",
    responses(
        (status = 200, description = "Signing and retired keys, oldest first", body = SigningKeyListView),
        (status = 400, description = "`invalid_parameter`: the provider is not configured", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_signing_keys<S: Store>(
    State(state): State<AppState<S>>,
) -> ApiResult<Json<SigningKeyListView>> {
    let provider = provider_for_keys(&state)?;
    let keys = provider.signing_keys().await.map_err(provider_failed)?;
    Ok(Json(SigningKeyListView {
        keys: keys.iter().map(SigningKeyView::from).collect(),
    }))
}

/// Rotate a signing key: a new key signs, the old one stays published, retired (local admin
/// socket only).
#[utoipa::path(post, path = "/admin/oidc/keys/rotate", tag = "oidc", request_body = RotateKeyBody,
    responses(
        (status = 200, description = "The new signing key; the old one stays published, retired", body = SigningKeyView),
        (status = 400, description = "`invalid_parameter`: unknown algorithm, or the provider is not configured", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: rotated elsewhere meanwhile", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate_signing_key<S: Store>(
    State(state): State<AppState<S>>,
    ApiJson(Obj(body)): ApiJson<Obj<RotateKeyBody>>,
) -> ApiResult<Json<SigningKeyView>> {
    let provider = provider_for_keys(&state)?;
    let name = body.alg.as_deref().unwrap_or("ES256");
    let alg = portcullis_core::oidc::SigningAlg::parse(name).ok_or_else(|| {
        ApiError::InvalidParameter(format!("unknown algorithm {name:?} (ES256, EdDSA, RS256)"))
    })?;
    let key = provider.rotate_key(alg).await.map_err(provider_failed)?;
    Ok(Json(SigningKeyView::from(&key)))
}

/// Back-channel logout deliveries, most recent ending first (local admin socket only).
#[utoipa::path(get, path = "/admin/deliveries", tag = "oidc",
    params(
        ("state" = Option<String>, Query, description = "`pending`, `delivered` or `failed`"),
        ("client" = Option<String>, Query, description = "Only those to this client (application id or name)"),
        ("limit" = Option<usize>, Query, description = "1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Back-channel logout deliveries, most recent ending first, and how many are pending", body = DeliveryListView),
        (status = 400, description = "`invalid_parameter`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`: no such client", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries<S: Store>(
    State(state): State<AppState<S>>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DeliveryListView>> {
    let Query(query) = query?;
    let provider = provider_for_keys(&state)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::InvalidParameter("limit must be 1 to 1000".into()));
    }
    let delivery_state = query
        .state
        .as_deref()
        .map(|name| {
            DeliveryState::parse(name).ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "unknown state {name:?} (pending, delivered, failed)"
                ))
            })
        })
        .transpose()?;
    let client = match &query.client {
        Some(client) => Some(state.engine.application(client).await?.id),
        None => None,
    };
    let deliveries = &provider.stores().deliveries;
    let found = deliveries
        .deliveries(&DeliveryQuery {
            state: delivery_state,
            client,
            limit,
        })
        .await
        .map_err(|e| ApiError::Engine(EngineError::Store(e)))?;
    let pending = deliveries
        .pending_deliveries()
        .await
        .map_err(|e| ApiError::Engine(EngineError::Store(e)))?;
    Ok(Json(DeliveryListView {
        deliveries: found.iter().map(DeliveryView::from).collect(),
        pending,
    }))
}

/// One back-channel logout delivery, by the ended session's id (local admin socket only).
#[utoipa::path(get, path = "/admin/deliveries/{session}", tag = "oidc",
    params(("session" = String, Path, description = "The ended application session's id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_delivery<S: Store>(
    State(state): State<AppState<S>>,
    session: ApiPath,
) -> ApiResult<Json<DeliveryView>> {
    let Path(session) = session?;
    let provider = provider_for_keys(&state)?;
    let delivery = provider
        .stores()
        .deliveries
        .delivery(&PublicId::from_string(session))
        .await
        .map_err(|e| ApiError::Engine(EngineError::Store(e)))?
        .ok_or(ApiError::Engine(EngineError::NotFound))?;
    Ok(Json(DeliveryView::from(&delivery)))
}

/// Try a failed back-channel logout delivery again, now (local admin socket only); 409 unless
/// it failed.
#[utoipa::path(post, path = "/admin/deliveries/{session}/retry", tag = "oidc",
    params(("session" = String, Path, description = "The ended application session's id")),
    responses(
        (status = 200, description = "Pending again, due now", body = DeliveryView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: it has not failed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry_delivery<S: Store>(
    State(state): State<AppState<S>>,
    session: ApiPath,
) -> ApiResult<Json<DeliveryView>> {
    let Path(session) = session?;
    let provider = provider_for_keys(&state)?;
    let deliveries = &provider.stores().deliveries;
    let session = PublicId::from_string(session);
    let store_failed = |e| ApiError::Engine(EngineError::Store(e));
    match deliveries
        .retry_delivery(&session, state.engine.now())
        .await
        .map_err(store_failed)?
    {
        Some(retried) => Ok(Json(DeliveryView::from(&retried))),
        None => match deliveries.delivery(&session).await.map_err(store_failed)? {
            Some(_) => Err(ApiError::Engine(EngineError::Conflict)),
            None => Err(ApiError::Engine(EngineError::NotFound)),
        },
    }
}

/// Remove an application: its keys are revoked and its sessions end with `app_removed`
/// (local admin socket only).
#[utoipa::path(delete, path = "/admin/applications/{app}", tag = "admin",
    params(("app" = String, Path, description = "The application's id or name")),
    responses(
        (status = 200, description = "Removed: its keys revoked and its sessions ended (`app_removed`, each told to its client's back-channel logout URI)", body = ApplicationView),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn remove_application<S: Store>(
    State(state): State<AppState<S>>,
    Extension(caller): Extension<Caller>,
    app: ApiPath,
) -> ApiResult<Json<ApplicationView>> {
    let Path(app) = app?;
    let removed = state
        .engine
        .remove_application(&app, &caller.0.actor)
        .await?;
    let mut view = ApplicationView::from(&removed.application);
    view.api_keys_revoked = Some(removed.api_keys_revoked);
    view.sessions_ended = Some(removed.sessions_ended);
    Ok(Json(view))
}
