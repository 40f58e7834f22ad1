//! Every error the API answers, each with its status and stable `reason`, as RFC 9457
//! `application/problem+json`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::{EngineError, Rejection, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document with Portcullis's machine-readable `reason`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:portcullis:problem:<reason>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human-readable summary.
    pub title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What happened in this case.
    pub detail: String,
    /// Stable machine-readable reason (`unknown`, `expired_idle`, `session_limit`, …).
    pub reason: String,
    /// For `reason: revoked` and `session_ended`: the ending reason (`logout`,
    /// `password_changed`, `revoked_admin`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_reason: Option<String>,
}

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// No `Authorization: Bearer` header.
    #[error("this call needs an API key: send `Authorization: Bearer pck_…`")]
    MissingApiKey,
    /// An API key that is unknown, malformed or revoked.
    #[error("the API key is not valid")]
    InvalidApiKey,
    /// A body that is not JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON of the wrong shape (unknown field, wrong type, missing field).
    #[error("the body does not match the expected shape: {0}")]
    InvalidBody(String),
    /// Not `Content-Type: application/json`.
    #[error("send the body as `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// Over the body size limit.
    #[error("the body is larger than the limit")]
    BodyTooLarge,
    /// A bad query string or path parameter.
    #[error("{0}")]
    InvalidParameter(String),
    /// No such route.
    #[error("no such endpoint")]
    NoRoute,
    /// Route exists, method does not.
    #[error("this endpoint does not support that method")]
    MethodNotAllowed,
    /// From the accounts service.
    #[error(transparent)]
    Account(#[from] portcullis_core::AccountError),
    /// A grant name that does not exist.
    #[error(
        "there is no grant \"{0}\" (grants: end_everywhere, read_all_events, list_all_sessions)"
    )]
    UnknownGrant(String),
    /// A session read or changed by id has ended (410 Gone): it stays readable, with its
    /// ending, until it is purged (then 404).
    #[error("the session has ended ({})", .0.as_str())]
    SessionEnded(portcullis_core::EndReason),
    /// A new session's `parent` is not a live session of the same subject that the caller
    /// reaches.
    #[error("the parent session is not a live session of this subject")]
    ParentNotLive,
    /// An API key naming another application than its own for a new session.
    #[error("an application creates sessions of its own only")]
    ApplicationNotAllowed,
    /// A bug: the request panicked.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use EngineError as E;
        match self {
            Self::Engine(E::Store(StoreError::Unavailable(_) | StoreError::Unconfirmed { .. })) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None)
            }
            Self::Engine(E::Store(StoreError::Corrupt(_))) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", None)
            }
            Self::Engine(E::Store(StoreError::LimitReached) | E::LimitReached) => {
                (StatusCode::CONFLICT, "session_limit", None)
            }
            Self::Engine(E::Rejected(r)) => (
                StatusCode::UNAUTHORIZED,
                r.reason(),
                match r {
                    Rejection::Revoked(ended) => Some(ended.as_str()),
                    _ => None,
                },
            ),
            Self::Engine(E::UnknownPolicy(_)) => (StatusCode::BAD_REQUEST, "unknown_policy", None),
            Self::Engine(E::NotFound) => (StatusCode::NOT_FOUND, "not_found", None),
            Self::Engine(E::DataTooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "data_too_large", None)
            }
            Self::Engine(E::Invalid(_) | E::Store(StoreError::ParentNotLive)) => {
                (StatusCode::BAD_REQUEST, "invalid_request", None)
            }
            Self::Engine(E::Conflict) => (StatusCode::CONFLICT, "conflict", None),
            Self::Engine(E::PolicyNotAllowed(_)) => {
                (StatusCode::FORBIDDEN, "policy_not_allowed", None)
            }
            Self::Engine(E::GrantRequired(_)) => (StatusCode::FORBIDDEN, "grant_required", None),
            Self::Engine(E::UnknownApplication(_)) => {
                (StatusCode::NOT_FOUND, "unknown_application", None)
            }
            Self::Engine(E::NameTaken(_) | E::Store(StoreError::NameTaken(_))) => {
                (StatusCode::CONFLICT, "name_taken", None)
            }
            Self::UnknownGrant(_) => (StatusCode::BAD_REQUEST, "unknown_grant", None),
            Self::MissingApiKey => (StatusCode::UNAUTHORIZED, "missing_api_key", None),
            Self::InvalidApiKey => (StatusCode::UNAUTHORIZED, "invalid_api_key", None),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json", None),
            Self::InvalidBody(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            Self::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "invalid_parameter", None),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route", None),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
            Self::Account(err) => {
                use portcullis_core::AccountError as A;
                match err {
                    A::InvalidUsername => (StatusCode::BAD_REQUEST, "invalid_username", None),
                    A::Exists => (StatusCode::CONFLICT, "user_exists", None),
                    A::NotFound => (StatusCode::NOT_FOUND, "not_found", None),
                    A::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password", None),
                    A::WrongCode => (StatusCode::BAD_REQUEST, "wrong_code", None),
                    A::Conflict => (StatusCode::CONFLICT, "conflict", None),
                    A::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy", None),
                    A::NoEncryptionKey => (StatusCode::CONFLICT, "encryption_key_missing", None),
                    A::Sealed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "sealed_secret", None),
                    A::PasswordTooShortAlone => (StatusCode::CONFLICT, "password_too_short", None),
                    A::Store(portcullis_core::UserStoreError::Corrupt(_)) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt", None)
                    }
                    A::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", None),
                }
            }
            Self::SessionEnded(reason) => {
                (StatusCode::GONE, "session_ended", Some(reason.as_str()))
            }
            Self::ParentNotLive => (StatusCode::CONFLICT, "parent_not_live", None),
            Self::ApplicationNotAllowed => (StatusCode::FORBIDDEN, "application_not_allowed", None),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }

    /// The stable `reason` of this error.
    pub fn reason(&self) -> &'static str {
        self.parts().1
    }

    /// What the caller is told. A server error's own text (a driver's message, a decoding
    /// error) is for the operator's log, not for a caller: it says how the store is reached and
    /// what it holds, and the caller can do nothing with it.
    fn public_detail(&self, status: StatusCode) -> String {
        use EngineError as E;
        if matches!(self, Self::Engine(E::Store(StoreError::Unconfirmed { .. }))) {
            // Portcullis's own words, which say that a retry is safe.
            self.to_string()
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            "the store is unavailable; try again".into()
        } else if status.is_server_error() {
            "Portcullis could not answer this request; its log says why".into()
        } else {
            self.to_string()
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let (status, reason, ended) = self.parts();
        Problem {
            kind: format!("urn:portcullis:problem:{reason}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.public_detail(status),
            reason: reason.to_owned(),
            ended_reason: ended.map(str::to_owned),
        }
    }
}

/// The `Retry-After` of a 503: a store that is back answers at once, and a caller that waits
/// this long between tries adds little load to one that is not.
pub(crate) const RETRY_AFTER_SECONDS: &str = "5";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::warn!(reason = %problem.reason, error = %self, "request failed");
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Self::MissingApiKey | Self::InvalidApiKey) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // RFC 9110 §10.2.3: when to try again (a store that is back answers at once).
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

impl From<portcullis_core::RuleError> for ApiError {
    fn from(err: portcullis_core::RuleError) -> Self {
        match err {
            portcullis_core::RuleError::Account(err) => Self::Account(err),
            portcullis_core::RuleError::Engine(err) => Self::Engine(err),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonSyntaxError(e) => Self::MalformedJson(e.body_text()),
            JsonRejection::JsonDataError(e) => Self::InvalidBody(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(_) => Self::BodyTooLarge,
            other => Self::InvalidBody(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::InvalidParameter(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidParameter(rejection.body_text())
    }
}
