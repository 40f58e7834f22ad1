//! The JSON wire format of API v1: request bodies (unknown fields refused) and views.
//! Domain types are never serialised directly; they are converted here, at the edge.

use std::sync::Arc;

use portcullis_core::{
    ApiKey, AuditEvent, AuthContext, Deadline, Device, Elevation, Issued, NewSession, PublicId,
    Session, Timestamp, Validated,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::json::{self, WriteJson};

/// Longest subject, in characters (the engine also refuses more than 256 bytes of UTF-8).
pub const MAX_SUBJECT_CHARS: usize = 256;
/// Longest authentication method name or elevation scope.
pub const MAX_LABEL_CHARS: usize = 64;
/// Most authentication methods in one request.
pub const MAX_METHODS: usize = 16;
/// Longest user agent a request may carry.
pub const MAX_USER_AGENT_CHARS: usize = 1024;
/// Longest client address a request may carry.
pub const MAX_IP_CHARS: usize = 128;
/// The pattern of method names and scopes: printable ASCII without spaces (what the
/// OpenAPI document says and [`check_label`] enforces).
pub const LABEL_PATTERN: &str = "^[!-~]+$";

/// Whether `text` is at most `max` characters (cheap for ASCII-sized text).
fn within(text: &str, max: usize) -> bool {
    text.len() <= max || text.chars().count() <= max
}

/// A method name or scope: 1 to 64 printable ASCII characters without spaces.
fn check_label(what: &str, text: &str) -> Result<(), ApiError> {
    let ok =
        (1..=MAX_LABEL_CHARS).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(()).ok_or_else(|| {
        ApiError::InvalidBody(format!(
            "{what} must be 1 to {MAX_LABEL_CHARS} printable ASCII characters without spaces"
        ))
    })
}

fn check_methods(at: &str, methods: &[String]) -> Result<(), ApiError> {
    if methods.len() > MAX_METHODS {
        return Err(ApiError::InvalidBody(format!(
            "{at} has more than {MAX_METHODS} methods"
        )));
    }
    methods.iter().try_for_each(|m| check_label(at, m))
}

/// Deserializes a `T` only from a JSON object. Serde's derived structs also take an array of
/// their fields in order (`"device": [null, null]`), which no schema allows; bodies and their
/// nested objects go through this instead.
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OnlyMap<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OnlyMap<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(OnlyMap(std::marker::PhantomData))
}

/// A request body that must be a JSON object (see [`object`]).
#[derive(Debug)]
pub struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        object(deserializer).map(Obj)
    }
}

/// An assurance level: a JSON integer, which JSON Schema also writes as `2.0`; anything that is
/// not a whole number from 0 to 255 is refused here (422), and the engine takes only 1 to 3
/// (400).
fn level<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    struct Level;

    impl serde::de::Visitor<'_> for Level {
        type Value = u8;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an assurance level (1, 2 or 3)")
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u8, E> {
            u8::try_from(n).map_err(|_| E::custom(format!("{n} is not an assurance level")))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u8, E> {
            u8::try_from(n).map_err(|_| E::custom(format!("{n} is not an assurance level")))
        }

        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<u8, E> {
            if n.fract() == 0.0 && (0.0..=255.0).contains(&n) {
                // Whole and in range, so exact.
                Ok(n as u8)
            } else {
                Err(E::custom(format!("{n} is not an assurance level")))
            }
        }
    }

    deserializer.deserialize_any(Level)
}

/// An authentication method name (RFC 8176 `amr` value such as `pwd`, `otp`, `hwk`) in the
/// OpenAPI document: 1 to 64 printable ASCII characters without spaces.
#[derive(Debug)]
pub struct MethodName;

impl utoipa::PartialSchema for MethodName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An RFC 8176 method name (`pwd`, `otp`, `hwk`…): printable ASCII, no spaces.",
            ))
            .min_length(Some(1))
            .max_length(Some(MAX_LABEL_CHARS))
            .pattern(Some(LABEL_PATTERN))
            .into()
    }
}

impl ToSchema for MethodName {}

/// Renders a timestamp as RFC 3339 UTC (see [`json::rfc3339`]).
pub fn rfc3339(t: Timestamp) -> String {
    let mut text = Vec::with_capacity(24);
    json::rfc3339(&mut text, t);
    // ASCII digits and separators only.
    String::from_utf8(text).unwrap_or_default()
}

/// How the person authenticated.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthBody {
    /// RFC 8176 method names (`pwd`, `otp`, `hwk`…), at most 16.
    #[serde(default)]
    #[schema(value_type = Vec<MethodName>, max_items = 16)]
    pub methods: Vec<String>,
    /// Authenticator assurance level 1–3 (default 1).
    #[serde(default = "level_one", deserialize_with = "level")]
    #[schema(minimum = 1, maximum = 3)]
    pub level: u8,
}

fn level_one() -> u8 {
    1
}

impl Default for AuthBody {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            level: level_one(),
        }
    }
}

/// Where the request comes from, as the application saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceBody {
    /// The browser's user agent (at most 1024 characters).
    #[schema(max_length = 1024)]
    pub user_agent: Option<String>,
    /// The client's IP address (at most 128 characters).
    #[schema(max_length = 128)]
    pub ip: Option<String>,
}

impl DeviceBody {
    fn check(&self, at: &str) -> Result<(), ApiError> {
        if self
            .user_agent
            .as_deref()
            .is_some_and(|ua| !within(ua, MAX_USER_AGENT_CHARS))
        {
            return Err(ApiError::InvalidBody(format!(
                "{at}.user_agent is longer than {MAX_USER_AGENT_CHARS} characters"
            )));
        }
        if self
            .ip
            .as_deref()
            .is_some_and(|ip| !within(ip, MAX_IP_CHARS))
        {
            return Err(ApiError::InvalidBody(format!(
                "{at}.ip is longer than {MAX_IP_CHARS} characters"
            )));
        }
        Ok(())
    }
}

impl From<DeviceBody> for Device {
    fn from(d: DeviceBody) -> Self {
        Device {
            user_agent: d.user_agent,
            ip: d.ip,
        }
    }
}

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionBody {
    /// Who signed in (the application's user id): 1 to 256 characters, and at most 256 bytes
    /// of UTF-8 (a longer one is refused with 400 `invalid_request`).
    #[schema(min_length = 1, max_length = 256)]
    pub subject: String,
    /// The person answered "Stay signed in?" with yes.
    #[serde(default)]
    pub remember_me: bool,
    /// Policy name (default: the application's default policy). The served document lists
    /// this server's policies; one the application may not use is refused with 403
    /// `policy_not_allowed`.
    pub policy: Option<String>,
    /// How they authenticated.
    #[serde(default, deserialize_with = "object")]
    pub auth: AuthBody,
    /// Their device.
    #[serde(default, deserialize_with = "object")]
    pub device: DeviceBody,
    /// Application data (size-limited).
    #[serde(default)]
    pub data: serde_json::Value,
    /// Take back the data of the subject's last timed-out session.
    #[serde(default)]
    pub reconstitute: bool,
    /// Id of the parent SSO session: a live session of the same subject (otherwise 409
    /// `parent_not_live`).
    pub parent: Option<String>,
    /// The owning application: only the operator names another (on the admin socket); an API
    /// key creates sessions of its own application (another is refused with 403
    /// `application_not_allowed`).
    pub application: Option<String>,
}

impl CreateSessionBody {
    /// What the schema says and serde cannot: lengths and patterns (422 `invalid_body`).
    pub fn check(&self) -> Result<(), ApiError> {
        if self.subject.is_empty() || !within(&self.subject, MAX_SUBJECT_CHARS) {
            return Err(ApiError::InvalidBody(format!(
                "subject must be 1 to {MAX_SUBJECT_CHARS} characters"
            )));
        }
        check_methods("auth.methods", &self.auth.methods)?;
        self.device.check("device")
    }
}

impl From<CreateSessionBody> for NewSession {
    fn from(b: CreateSessionBody) -> Self {
        NewSession {
            subject: b.subject,
            policy: b.policy,
            remember_me: b.remember_me,
            auth: AuthContext {
                methods: b.auth.methods,
                level: b.auth.level,
            },
            device: b.device.into(),
            data: b.data,
            reconstitute: b.reconstitute,
            parent: b.parent.map(portcullis_core::PublicId::from_string),
            application: b.application.map(portcullis_core::PublicId::from_string),
            back_channel_logout_uri: None,
            back_channel_logout_alg: None,
            ends_by: None,
            authenticated_at: None,
        }
    }
}

/// `POST /v1/sessions/validate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    /// The session token.
    pub token: String,
    /// Count this request as activity (default true; false for background polls).
    #[serde(default = "yes")]
    pub activity: bool,
    /// The device presenting the token (checked when the policy binds sessions).
    #[serde(default, deserialize_with = "object")]
    pub device: DeviceBody,
}

impl ValidateBody {
    /// What the schema says and serde cannot (422 `invalid_body`).
    pub fn check(&self) -> Result<(), ApiError> {
        self.device.check("device")
    }
}

fn yes() -> bool {
    true
}

/// `POST /v1/sessions/rotate` and `/logout`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The session token.
    pub token: String,
}

/// `POST /v1/sessions/elevate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElevateBody {
    /// The session token.
    pub token: String,
    /// How the person re-authenticated: 1 to 16 RFC 8176 method names.
    #[schema(value_type = Vec<MethodName>, min_items = 1, max_items = 16)]
    pub methods: Vec<String>,
    /// Assurance level of the re-authentication (default 1).
    #[serde(default = "level_one", deserialize_with = "level")]
    #[schema(minimum = 1, maximum = 3)]
    pub level: u8,
    /// What the elevation allows (default `sensitive`).
    #[serde(default = "sensitive")]
    #[schema(min_length = 1, max_length = 64, pattern = "^[!-~]+$")]
    pub scope: String,
}

impl ElevateBody {
    /// What the schema says and serde cannot (422 `invalid_body`).
    pub fn check(&self) -> Result<(), ApiError> {
        check_methods("methods", &self.methods)?;
        check_label("scope", &self.scope)
    }
}

fn sensitive() -> String {
    "sensitive".into()
}

/// A timestamp on the wire: RFC 3339 UTC, milliseconds without trailing zeros.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(value_type = String, format = DateTime)]
pub struct Rfc3339(pub Timestamp);

/// A deadline and the rule that set it.
#[derive(Debug, ToSchema)]
pub struct DeadlineView<'a> {
    /// When.
    pub at: Rfc3339,
    /// E.g. `policy default: idle 15m (built-in default)`.
    pub rule: &'a str,
}

impl<'a> From<&'a Deadline> for DeadlineView<'a> {
    fn from(d: &'a Deadline) -> Self {
        Self {
            at: Rfc3339(d.at),
            rule: &d.rule,
        }
    }
}

impl DeadlineView<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"at\":");
        json::timestamp(out, self.at.0);
        out.extend_from_slice(b",\"rule\":");
        json::string(out, self.rule);
        out.push(b'}');
    }
}

/// The session's deadlines.
#[derive(Debug, ToSchema)]
pub struct DeadlinesView<'a> {
    /// Idle deadline (`null` when the policy has no idle timeout).
    pub idle: Option<DeadlineView<'a>>,
    /// Absolute deadline.
    pub absolute: DeadlineView<'a>,
}

/// An elevation.
#[derive(Debug, ToSchema)]
pub struct ElevationView<'a> {
    /// Public id.
    pub id: &'a str,
    /// What it allows.
    pub scope: &'a str,
    /// Methods used.
    pub methods: &'a [String],
    /// Assurance level.
    pub level: u8,
    /// When granted.
    pub at: Rfc3339,
    /// When it lapses.
    pub expires_at: Rfc3339,
}

impl<'a> From<&'a Elevation> for ElevationView<'a> {
    fn from(e: &'a Elevation) -> Self {
        Self {
            id: e.id.as_str(),
            scope: &e.scope,
            methods: &e.methods,
            level: e.level,
            at: Rfc3339(e.at),
            expires_at: Rfc3339(e.expires_at),
        }
    }
}

impl ElevationView<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        json::string(out, self.id);
        out.extend_from_slice(b",\"scope\":");
        json::string(out, self.scope);
        out.extend_from_slice(b",\"methods\":");
        json::strings(out, self.methods);
        out.extend_from_slice(b",\"level\":");
        json::number(out, u64::from(self.level));
        out.extend_from_slice(b",\"at\":");
        json::timestamp(out, self.at.0);
        out.extend_from_slice(b",\"expires_at\":");
        json::timestamp(out, self.expires_at.0);
        out.push(b'}');
    }
}

/// How a session ended.
#[derive(Debug, ToSchema)]
pub struct EndedView {
    /// `logout`, `expired_idle`, `revoked_admin`, …
    pub reason: &'static str,
    /// When.
    pub at: Rfc3339,
}

/// How the person authenticated.
#[derive(Debug, ToSchema)]
pub struct AuthView<'a> {
    /// Methods.
    pub methods: &'a [String],
    /// Assurance level.
    pub level: u8,
}

/// The device.
#[derive(Debug, ToSchema)]
pub struct DeviceView<'a> {
    /// User agent.
    pub user_agent: Option<&'a str>,
    /// IP address.
    pub ip: Option<&'a str>,
}

/// A session as the API shows it. Never contains the token.
// It borrows from the session and writes itself (`WriteJson`): it is the answer of every
// validation.
#[derive(Debug, ToSchema)]
pub struct SessionView<'a> {
    /// Public id (also the OIDC `sid`).
    pub id: &'a str,
    /// Subject.
    pub subject: &'a str,
    /// The owning application (`app_…`, or `portcullis` for the SSO session).
    pub application: &'a str,
    /// Policy name.
    pub policy: &'a str,
    /// When it was created.
    pub created_at: Rfc3339,
    /// Last recorded activity (coalesced).
    pub last_seen_at: Rfc3339,
    /// Last (re-)authentication.
    pub authenticated_at: Rfc3339,
    /// "Stay signed in" chosen.
    pub remember_me: bool,
    /// How the person authenticated.
    pub auth: AuthView<'a>,
    /// Elevations in force.
    pub elevations: Vec<ElevationView<'a>>,
    /// Device.
    pub device: DeviceView<'a>,
    /// Application data.
    pub data: &'a serde_json::Value,
    /// Deadlines with the rule behind each.
    pub deadlines: DeadlinesView<'a>,
    /// The nearest deadline.
    pub expires_at: Rfc3339,
    /// Parent SSO session.
    pub parent: Option<&'a str>,
    /// The timed-out session whose data this one got back.
    pub reconstituted_from: Option<&'a str>,
    /// Present once ended.
    pub ended: Option<EndedView>,
}

impl<'a> SessionView<'a> {
    /// The view of `s` at `now` (lapsed elevations are not shown).
    pub fn of(s: &'a Session, now: Timestamp) -> Self {
        Self {
            id: s.id.as_str(),
            subject: &s.subject,
            application: s.application.as_str(),
            policy: &s.policy,
            created_at: Rfc3339(s.created_at),
            last_seen_at: Rfc3339(s.last_seen_at),
            authenticated_at: Rfc3339(s.authenticated_at),
            remember_me: s.remember_me,
            auth: AuthView {
                methods: &s.auth.methods,
                level: s.auth.level,
            },
            elevations: s.active_elevations(now).map(Into::into).collect(),
            device: DeviceView {
                user_agent: s.device.user_agent.as_deref(),
                ip: s.device.ip.as_deref(),
            },
            data: &s.data,
            deadlines: DeadlinesView {
                idle: s.idle.as_ref().map(Into::into),
                absolute: (&s.absolute).into(),
            },
            expires_at: Rfc3339(s.next_deadline().0),
            parent: s.parent.as_ref().map(PublicId::as_str),
            reconstituted_from: s.reconstituted_from.as_ref().map(PublicId::as_str),
            ended: s.ended.as_ref().map(|e| EndedView {
                reason: e.reason.as_str(),
                at: Rfc3339(e.at),
            }),
        }
    }
}

impl WriteJson for SessionView<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"id\":");
        json::string(out, self.id);
        out.extend_from_slice(b",\"subject\":");
        json::string(out, self.subject);
        out.extend_from_slice(b",\"application\":");
        json::string(out, self.application);
        out.extend_from_slice(b",\"policy\":");
        json::string(out, self.policy);
        out.extend_from_slice(b",\"created_at\":");
        json::timestamp(out, self.created_at.0);
        out.extend_from_slice(b",\"last_seen_at\":");
        json::timestamp(out, self.last_seen_at.0);
        out.extend_from_slice(b",\"authenticated_at\":");
        json::timestamp(out, self.authenticated_at.0);
        out.extend_from_slice(b",\"remember_me\":");
        json::boolean(out, self.remember_me);
        out.extend_from_slice(b",\"auth\":{\"methods\":");
        json::strings(out, self.auth.methods);
        out.extend_from_slice(b",\"level\":");
        json::number(out, u64::from(self.auth.level));
        out.extend_from_slice(b"},\"elevations\":[");
        for (i, elevation) in self.elevations.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            elevation.write(out);
        }
        out.extend_from_slice(b"],\"device\":{\"user_agent\":");
        json::optional_string(out, self.device.user_agent);
        out.extend_from_slice(b",\"ip\":");
        json::optional_string(out, self.device.ip);
        out.extend_from_slice(b"},\"data\":");
        serde_json::to_writer(&mut *out, self.data)?;
        out.extend_from_slice(b",\"deadlines\":{\"idle\":");
        match &self.deadlines.idle {
            Some(idle) => idle.write(out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"absolute\":");
        self.deadlines.absolute.write(out);
        out.extend_from_slice(b"},\"expires_at\":");
        json::timestamp(out, self.expires_at.0);
        if let Some(parent) = self.parent {
            out.extend_from_slice(b",\"parent\":");
            json::string(out, parent);
        }
        if let Some(from) = self.reconstituted_from {
            out.extend_from_slice(b",\"reconstituted_from\":");
            json::string(out, from);
        }
        if let Some(ended) = &self.ended {
            out.extend_from_slice(b",\"ended\":{\"reason\":");
            json::string(out, ended.reason);
            out.extend_from_slice(b",\"at\":");
            json::timestamp(out, ended.at.0);
            out.push(b'}');
        }
        out.push(b'}');
        Ok(())
    }
}

/// A session with its new token: shown once, never again.
#[derive(Debug, ToSchema)]
pub struct IssuedView<'a> {
    /// The secret session token (`pcs_…`).
    pub token: &'a str,
    /// The session.
    pub session: SessionView<'a>,
}

impl<'a> IssuedView<'a> {
    /// The view of an issued session.
    pub fn of(issued: &'a Issued, now: Timestamp) -> Self {
        Self {
            token: issued.token.expose(),
            session: SessionView::of(&issued.session, now),
        }
    }
}

impl WriteJson for IssuedView<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"token\":");
        json::string(out, self.token);
        out.extend_from_slice(b",\"session\":");
        self.session.write_json(out)?;
        out.push(b'}');
        Ok(())
    }
}

/// An accepted validation.
#[derive(Debug, ToSchema)]
pub struct ValidatedView<'a> {
    /// The session.
    pub session: SessionView<'a>,
    /// Whole seconds until the nearest deadline.
    pub expires_in: u64,
    /// Inside the policy's warning lead time: time to offer "Stay signed in?".
    pub warning: bool,
}

impl<'a> ValidatedView<'a> {
    /// The view of a validation.
    pub fn of(v: &'a Validated, now: Timestamp) -> Self {
        Self {
            session: SessionView::of(&v.session, now),
            expires_in: v.expires_in.as_secs(),
            warning: v.warning,
        }
    }
}

impl WriteJson for ValidatedView<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"session\":");
        self.session.write_json(out)?;
        out.extend_from_slice(b",\"expires_in\":");
        json::number(out, self.expires_in);
        out.extend_from_slice(b",\"warning\":");
        json::boolean(out, self.warning);
        out.push(b'}');
        Ok(())
    }
}

/// A subject's live sessions.
#[derive(Debug, ToSchema)]
pub struct SessionListView<'a> {
    /// Oldest first.
    pub sessions: Vec<SessionView<'a>>,
}

impl<'a> SessionListView<'a> {
    /// The view of a list.
    pub fn of(sessions: &'a [Arc<Session>], now: Timestamp) -> Self {
        Self {
            sessions: sessions.iter().map(|s| SessionView::of(s, now)).collect(),
        }
    }
}

impl WriteJson for SessionListView<'_> {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"sessions\":[");
        for (i, session) in self.sessions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            session.write_json(out)?;
        }
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

/// How many sessions a force logout ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndedCountView {
    /// Sessions ended.
    pub ended: usize,
}

/// `DELETE /v1/subjects/{subject}/sessions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EndSubjectQuery {
    /// The session to keep (the one that changed the password).
    pub except: Option<String>,
    /// Ending reason (default `revoked_admin`; `logout`, `password_changed`, `security_action`).
    /// The others are recorded only when Portcullis sees what they name happen.
    #[param(value_type = Option<CallerEndReason>, inline)]
    pub reason: Option<String>,
    /// `application` (default): the caller's own application's sessions; `all`: every
    /// application's and the SSO session (grant `end_everywhere`).
    #[param(inline)]
    pub scope: Option<Scope>,
}

/// The ending reasons a caller may give ([`portcullis_core::EndReason::is_claimable`]).
/// Documentation only: the query keeps the text, and the engine decides.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum CallerEndReason {
    /// `logout`.
    Logout,
    /// `revoked_admin`.
    RevokedAdmin,
    /// `password_changed`.
    PasswordChanged,
    /// `security_action`.
    SecurityAction,
}

/// How far a subject-wide call reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The caller's own application.
    Application,
    /// Every application (needs the grant the call names).
    All,
}

/// `GET /v1/subjects/{subject}/sessions` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListSubjectQuery {
    /// `application` (default) or `all` (grant `list_all_sessions`).
    #[param(inline)]
    pub scope: Option<Scope>,
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this subject's events.
    pub subject: Option<String>,
    /// Only this session's events.
    pub session: Option<String>,
    /// Only events after this position (the `next` of the previous page). Positions are 64-bit
    /// integers, past 2^53 on Redis: read them exactly, not as floating-point numbers.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// Page size, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `application` (default): the caller's own application's events; `all`: everyone's
    /// (grant `read_all_events`).
    #[param(inline)]
    pub scope: Option<Scope>,
}

/// One audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Position in the trail.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// `session.created`, `session.ended`, …
    pub kind: String,
    /// Who caused it (`app:app_…/api_key:key_…`, `user:usr_…`, `cli`, `system`).
    pub actor: String,
    /// The application it concerns (`portcullis` for the SSO session's).
    pub application: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Policy.
    pub policy: Option<String>,
    /// Ending reason.
    pub reason: Option<String>,
    /// Extra detail.
    pub detail: serde_json::Value,
    /// The client address, where known (the session's device, or the sign-in request's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// The client's user agent, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The session's authentication methods (RFC 8176 `amr` values), for session events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_methods: Option<Vec<String>>,
    /// For `login.failed` and `login.throttled`: which factor failed (`username`,
    /// `password`, `otp`, `account_disabled`, `address`); also in `detail.failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl From<&AuditEvent> for EventView {
    fn from(e: &AuditEvent) -> Self {
        use portcullis_core::event::context;
        let mut detail = e.detail.clone();
        let mut take = |key: &str| {
            detail
                .as_object_mut()
                .and_then(|d| d.remove(key))
                .filter(|v| !v.is_null())
        };
        let client_ip = take(context::CLIENT_IP).and_then(|v| v.as_str().map(str::to_owned));
        let user_agent = take(context::USER_AGENT).and_then(|v| v.as_str().map(str::to_owned));
        let auth_methods = take(context::AUTH_METHODS).and_then(|v| serde_json::from_value(v).ok());
        // Never written out: a digest only the anomaly detector reads.
        take(context::ATTEMPT_KEY);
        if detail.as_object().is_some_and(serde_json::Map::is_empty) {
            detail = serde_json::Value::Null;
        }
        let failed = e.detail_str(context::FAILED).map(str::to_owned);
        Self {
            seq: e.seq,
            at: rfc3339(e.at),
            kind: e.kind.as_str().to_owned(),
            actor: e.actor.0.clone(),
            application: e.application.as_ref().map(ToString::to_string),
            session_id: e.session_id.as_ref().map(ToString::to_string),
            subject: e.subject.clone(),
            policy: e.policy.clone(),
            reason: e.reason.map(|r| r.as_str().to_owned()),
            detail,
            client_ip,
            user_agent,
            auth_methods,
            failed,
        }
    }
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsView {
    /// Oldest first.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page; `null` when this page was the last.
    pub next: Option<u64>,
}

/// `POST /admin/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyBody {
    /// What the key is for.
    pub name: String,
    /// The application it belongs to (id or name).
    pub application: String,
}

/// An API key (never its secret, except once at creation).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// The application it belongs to.
    pub application: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
    /// The secret: only in the answer to its creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(k: &ApiKey) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            application: k.application.to_string(),
            created_at: rfc3339(k.created_at),
            revoked_at: k.revoked_at.map(rfc3339),
            key: None,
        }
    }
}

/// Every API key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyListView {
    /// Oldest first.
    pub api_keys: Vec<ApiKeyView>,
}

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// A new local account (admin socket only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserBody {
    /// What the person types to sign in.
    pub username: String,
    /// The initial password (sent over the admin socket only; never logged).
    pub password: String,
}

/// A change to an account (admin socket only). Disabling ends every session of the account;
/// setting the password ends them too (`password_changed`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    /// Disable (`true`) or enable (`false`).
    #[serde(default)]
    pub disabled: Option<bool>,
    /// A new password.
    #[serde(default)]
    pub password: Option<String>,
}

/// A local account (never its password hash or TOTP secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Public id: the subject of the person's sessions.
    pub id: String,
    /// Username.
    pub username: String,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// Whether a TOTP second factor is enrolled.
    pub totp: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub password_changed_at: String,
    /// Sessions ended by this change (disable or password reset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_ended: Option<usize>,
}

impl From<&portcullis_core::User> for UserView {
    fn from(u: &portcullis_core::User) -> Self {
        Self {
            id: u.id.clone(),
            username: u.username.clone(),
            disabled: u.disabled,
            totp: u.totp.is_some(),
            created_at: rfc3339(u.created_at),
            password_changed_at: rfc3339(u.password_changed_at),
            sessions_ended: None,
        }
    }
}

/// Every account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserListView {
    /// The accounts, by username.
    pub users: Vec<UserView>,
}

/// `POST /admin/applications` and `PATCH /admin/applications/{app}`: what to set (on creation,
/// `name` is required; policies default to `["default"]`, grants to none).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplicationBody {
    /// Unique name.
    pub name: Option<String>,
    /// Policies its sessions may follow (`*` for every policy outside Portcullis's own).
    pub policies: Option<Vec<String>>,
    /// The policy of a session created without naming one.
    pub default_policy: Option<String>,
    /// Grants: `end_everywhere`, `read_all_events`, `list_all_sessions`.
    pub grants: Option<Vec<String>>,
}

/// A registered application.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApplicationView {
    /// Public id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Policies its sessions may follow.
    pub policies: Vec<String>,
    /// The policy of a session created without naming one.
    pub default_policy: String,
    /// What it may do beyond its own sessions.
    pub grants: Vec<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Its live API keys (in lists and answers that count them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<usize>,
    /// What a removal revoked and ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_revoked: Option<usize>,
    /// Sessions a removal ended (`app_removed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_ended: Option<usize>,
    /// Its registration as an OpenID Connect client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientView>,
}

/// A registration as an OpenID Connect client (`PUT /admin/applications/{app}/client`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientBody {
    /// `client_secret_basic` (default; `client_secret_post` is accepted too), `private_key_jwt`
    /// or `none` (a public client, PKCE required).
    pub token_endpoint_auth_method: Option<String>,
    /// Where authorization responses may go, compared exactly.
    pub redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Back-channel logout endpoint.
    pub backchannel_logout_uri: Option<String>,
    /// Front-channel logout page.
    pub frontchannel_logout_uri: Option<String>,
    /// Scopes it may be granted (default `openid profile email`).
    pub scopes: Option<Vec<String>>,
    /// Grants it may use (default `authorization_code refresh_token`).
    pub grant_types: Option<Vec<String>>,
    /// Ask the person before the first grant (third-party clients).
    #[serde(default)]
    pub require_consent: bool,
    /// The algorithm its ID tokens are signed with (`ES256`, `EdDSA`, `RS256`: one of the
    /// provider's `signing_algs`); default: the first of them.
    pub id_token_signed_response_alg: Option<String>,
    /// The client's public keys (a JWK Set) for `private_key_jwt`.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// The upstream provider (its id in `[upstreams]`) the client's people always sign in
    /// through.
    pub upstream: Option<String>,
    /// Make a new secret even though the client has one.
    #[serde(default)]
    pub new_secret: bool,
}

/// A client registration as shown; the secret only in the answer that made it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientView {
    /// The `client_id`: the application's public id.
    pub client_id: String,
    /// How it authenticates at the token endpoint.
    pub token_endpoint_auth_method: String,
    /// Registered redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Registered post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Back-channel logout endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backchannel_logout_uri: Option<String>,
    /// Front-channel logout page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontchannel_logout_uri: Option<String>,
    /// Scopes it may be granted.
    pub scopes: Vec<String>,
    /// Grants it may use.
    pub grant_types: Vec<String>,
    /// Whether the person is asked to consent.
    pub require_consent: bool,
    /// The algorithm its ID tokens are signed with, when not the provider's first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_signed_response_alg: Option<String>,
    /// The upstream provider its people always sign in through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The secret, shown once when it is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

impl ClientView {
    /// The registration of `app`.
    pub fn of(app: &portcullis_core::Application, client: &portcullis_core::oidc::Client) -> Self {
        Self {
            client_id: app.id.to_string(),
            token_endpoint_auth_method: client.auth.method().to_owned(),
            redirect_uris: client.redirect_uris.clone(),
            post_logout_redirect_uris: client.post_logout_redirect_uris.clone(),
            backchannel_logout_uri: client.backchannel_logout_uri.clone(),
            frontchannel_logout_uri: client.frontchannel_logout_uri.clone(),
            scopes: client.scopes.iter().cloned().collect(),
            grant_types: client
                .grant_types
                .iter()
                .map(|g| g.as_str().to_owned())
                .collect(),
            require_consent: client.require_consent,
            id_token_signed_response_alg: client
                .id_token_signed_response_alg
                .map(|alg| alg.as_str().to_owned()),
            upstream: client.upstream.clone(),
            client_secret: None,
        }
    }
}

impl From<&portcullis_core::Application> for ApplicationView {
    fn from(a: &portcullis_core::Application) -> Self {
        Self {
            id: a.id.to_string(),
            name: a.name.clone(),
            policies: a.policies.clone(),
            default_policy: a.default_policy.clone(),
            grants: a.grants.iter().map(|g| g.as_str().to_owned()).collect(),
            created_at: rfc3339(a.created_at),
            api_keys: None,
            api_keys_revoked: None,
            sessions_ended: None,
            client: a.client.as_ref().map(|c| ClientView::of(a, c)),
        }
    }
}

/// Every application.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApplicationListView {
    /// Oldest first.
    pub applications: Vec<ApplicationView>,
}

/// 410 Gone for a session asked for by id after it ended: a problem document
/// (`reason: session_ended`) with the ending reason and the session as it ended. Written by
/// `api::session_gone`; this type only describes it.
#[derive(Debug, ToSchema)]
pub struct SessionGoneProblem<'a> {
    /// `urn:portcullis:problem:session_ended`.
    #[schema(rename = "type")]
    pub kind: String,
    /// `Gone`.
    pub title: String,
    /// 410.
    #[schema(minimum = 410, maximum = 410)]
    pub status: u16,
    /// What happened.
    pub detail: String,
    /// `session_ended`.
    pub reason: String,
    /// How it ended (`logout`, `expired_idle`, `revoked_admin`, …).
    pub ended_reason: String,
    /// The session as it ended (its `ended` says why and when).
    pub session: SessionView<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::EndReason;

    #[test]
    fn the_documented_caller_reasons_are_those_the_engine_takes() {
        let schema =
            serde_json::to_value(<CallerEndReason as utoipa::PartialSchema>::schema()).unwrap();
        let documented: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let taken: Vec<&str> = EndReason::ALL
            .into_iter()
            .filter(|r| r.is_claimable())
            .map(EndReason::as_str)
            .collect();
        assert_eq!(documented, taken);
    }

    #[test]
    fn levels_are_whole_numbers_written_either_way() {
        let level = |text: &str| {
            serde_json::from_str::<Obj<AuthBody>>(&format!(r#"{{"level":{text}}}"#))
                .map(|Obj(b)| b.level)
                .ok()
        };
        assert_eq!(level("2"), Some(2));
        assert_eq!(level("2.0"), Some(2));
        assert_eq!(level("2e0"), Some(2));
        assert_eq!(level("255"), Some(255));
        for bad in ["256", "-1", "1.5", "\"2\"", "null", "1e300"] {
            assert_eq!(level(bad), None, "{bad}");
        }
        assert!(serde_json::from_str::<Obj<AuthBody>>(r#"[["pwd"], 1]"#).is_err());
    }
}

/// A rotation request (`POST /admin/oidc/keys/rotate`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyBody {
    /// `ES256` (default) or `EdDSA`.
    pub alg: Option<String>,
}

/// A signing key as the operator sees it (never its private half).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyView {
    /// The key id (RFC 7638 thumbprint).
    pub kid: String,
    /// Its algorithm.
    pub alg: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; absent while it signs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

impl From<&portcullis_core::oidc::SigningKey> for SigningKeyView {
    fn from(key: &portcullis_core::oidc::SigningKey) -> Self {
        Self {
            kid: key.kid.clone(),
            alg: key.alg.as_str().to_owned(),
            created_at: rfc3339(key.created_at),
            retired_at: key.retired_at.map(rfc3339),
        }
    }
}

/// Every signing key, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyListView {
    /// The keys.
    pub keys: Vec<SigningKeyView>,
}

/// `GET /admin/deliveries` parameters.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state: `pending`, `delivered` or `failed`.
    pub state: Option<String>,
    /// Only deliveries to this client (application id or name).
    pub client: Option<String>,
    /// At most this many, most recent ending first (1 to 1000; default 100).
    pub limit: Option<usize>,
}

/// A back-channel logout delivery as the operator sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The ended application session (the delivery's id).
    pub session: String,
    /// Its SSO session: the logout token's `sid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sso_session: Option<String>,
    /// The person.
    pub subject: String,
    /// The client told.
    pub client: String,
    /// Why the session ended.
    pub reason: String,
    /// RFC 3339.
    pub ended_at: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// RFC 3339: when a pending delivery is tried next, or when it finished.
    pub next_attempt_at: String,
    /// What the last failed attempt met.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The back-channel logout URI the client had when the session was created.
    pub uri: String,
}

impl From<&portcullis_core::oidc::LogoutDelivery> for DeliveryView {
    fn from(d: &portcullis_core::oidc::LogoutDelivery) -> Self {
        Self {
            session: d.session.as_str().to_owned(),
            sso_session: d.sso_session.as_ref().map(|s| s.as_str().to_owned()),
            subject: d.subject.clone(),
            client: d.client.as_str().to_owned(),
            reason: d.reason.as_str().to_owned(),
            ended_at: rfc3339(d.ended_at),
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            next_attempt_at: rfc3339(d.next_attempt_at),
            last_error: d.last_error.clone(),
            uri: d.uri.clone(),
        }
    }
}

/// Back-channel logout deliveries, most recent ending first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryListView {
    /// The deliveries.
    pub deliveries: Vec<DeliveryView>,
    /// How many are pending, in all.
    pub pending: u64,
}
