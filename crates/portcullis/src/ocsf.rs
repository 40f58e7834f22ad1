//! Audit events as OCSF 1.1 events (`audit_format = "ocsf"`), for a SIEM that ingests the
//! Open Cybersecurity Schema Framework without a parser of its own.
//!
//! | Portcullis event | OCSF class (`class_uid`) | `activity_id` | `status_id` | severity |
//! |---|---|---|---|---|
//! | `session.created` | Authentication (3002) | 1 Logon | 1 Success | 1 Informational |
//! | `session.ended` | Authentication (3002) | 2 Logoff | 1 Success | 1 Informational |
//! | `session.elevated` | Authentication (3002) | 99 Other (`Elevate`) | 1 Success | 1 Informational |
//! | `session.rotated` | Authentication (3002) | 99 Other (`Rotate`) | 1 Success | 1 Informational |
//! | `session.data_replaced` | Authentication (3002) | 99 Other (`Data Replaced`) | 1 Success | 1 Informational |
//! | `session.refreshed` | Authentication (3002) | 99 Other (`Refresh`) | 1 Success | 1 Informational |
//! | `session.device_changed` | Authentication (3002) | 99 Other (`Device Changed`) | 1 Success | 3 Medium |
//! | `session.burst` | Authentication (3002) | 99 Other (`Session Burst`) | 1 Success | 3 Medium |
//! | `login.failed` | Authentication (3002) | 1 Logon | 2 Failure | 2 Low |
//! | `login.throttled` | Authentication (3002) | 1 Logon | 2 Failure | 3 Medium |
//! | `login.stuffing_suspected` | Authentication (3002) | 99 Other (`Credential Stuffing Suspected`) | 2 Failure | 4 High |
//! | `user.created` | Account Change (3001) | 1 Create | 1 Success | 1 Informational |
//! | `user.enabled` | Account Change (3001) | 2 Enable | 1 Success | 1 Informational |
//! | `user.password_changed` | Account Change (3001) | 3 Password Change | 1 Success | 1 Informational |
//! | `user.disabled` | Account Change (3001) | 5 Disable | 1 Success | 1 Informational |
//! | `user.totp_enrolled` | Account Change (3001) | 10 MFA Factor Enable | 1 Success | 1 Informational |
//! | `user.totp_removed` | Account Change (3001) | 11 MFA Factor Disable | 1 Success | 2 Low |
//! | `api_key.created` | Entity Management (3004) | 1 Create | 1 Success | 1 Informational |
//! | `api_key.revoked` | Entity Management (3004) | 4 Delete | 1 Success | 1 Informational |
//! | `application.created` | Entity Management (3004) | 1 Create | 1 Success | 1 Informational |
//! | `application.updated` | Entity Management (3004) | 3 Update | 1 Success | 1 Informational |
//! | `application.removed` | Entity Management (3004) | 4 Delete | 1 Success | 1 Informational |
//!
//! Every event has `category_uid` 3 (Identity & Access Management), `type_uid` =
//! `class_uid * 100 + activity_id`, `time` (ms since the epoch), `metadata` (`version` 1.1.0,
//! `product {name: "Portcullis", vendor_name: "Portcullis"}`, `uid` the event's position,
//! `log_name` its Portcullis kind), `actor` (`user` for a person or Portcullis itself, `app_name`
//! for an application's key), `user` (the session's subject or the account: `uid`, `name`
//! where it is a real account's), `src_endpoint.ip` and `http_request.user_agent` where known,
//! `session` (`uid`, `issuer` the policy) for session events, `auth_protocol` ("Portcullis
//! session" / "Password" / "OTP"), `logon_type` "Web" (`logon_type_id` 99), `is_mfa`, and the
//! Portcullis fields without an OCSF home under `unmapped`. API keys and applications are
//! Entity Management (3004) with `entity {uid, name, type}`: they are neither people's
//! accounts nor API calls, and that class is what OCSF gives to the management of IAM objects.

use portcullis_core::event::context;
use portcullis_core::{AuditEvent, EventKind};
use serde_json::{Map, Value, json};

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.1.0";

/// Identity & Access Management.
pub const CATEGORY_IAM: u64 = 3;
/// Account Change.
pub const ACCOUNT_CHANGE: u64 = 3001;
/// Authentication.
pub const AUTHENTICATION: u64 = 3002;
/// Entity Management.
pub const ENTITY_MANAGEMENT: u64 = 3004;

/// The class, activity (id and name), whether it failed, and severity of each kind.
pub fn classify(kind: EventKind) -> (u64, u64, &'static str, bool, u64) {
    use EventKind as K;
    match kind {
        K::SessionCreated => (AUTHENTICATION, 1, "Logon", false, 1),
        K::SessionEnded => (AUTHENTICATION, 2, "Logoff", false, 1),
        K::SessionElevated => (AUTHENTICATION, 99, "Elevate", false, 1),
        K::SessionRotated => (AUTHENTICATION, 99, "Rotate", false, 1),
        K::SessionDataReplaced => (AUTHENTICATION, 99, "Data Replaced", false, 1),
        K::SessionRefreshed => (AUTHENTICATION, 99, "Refresh", false, 1),
        K::SessionDeviceChanged => (AUTHENTICATION, 99, "Device Changed", false, 3),
        K::SessionBurst => (AUTHENTICATION, 99, "Session Burst", false, 3),
        K::LoginFailed => (AUTHENTICATION, 1, "Logon", true, 2),
        K::LoginThrottled => (AUTHENTICATION, 1, "Logon", true, 3),
        K::LoginStuffingSuspected => (AUTHENTICATION, 99, "Credential Stuffing Suspected", true, 4),
        K::LogoutDelivered => (AUTHENTICATION, 99, "Logout Delivered", false, 1),
        K::LogoutDeliveryFailed => (AUTHENTICATION, 99, "Logout Delivery Failed", true, 3),
        K::UserCreated => (ACCOUNT_CHANGE, 1, "Create", false, 1),
        K::UserEnabled => (ACCOUNT_CHANGE, 2, "Enable", false, 1),
        K::UserPasswordChanged => (ACCOUNT_CHANGE, 3, "Password Change", false, 1),
        K::UserDisabled => (ACCOUNT_CHANGE, 5, "Disable", false, 1),
        K::UserTotpEnrolled => (ACCOUNT_CHANGE, 10, "MFA Factor Enable", false, 1),
        K::UserTotpRemoved => (ACCOUNT_CHANGE, 11, "MFA Factor Disable", false, 2),
        K::UserIdentityLinked => (ACCOUNT_CHANGE, 99, "Identity Linked", false, 1),
        K::UserIdentityUnlinked => (ACCOUNT_CHANGE, 99, "Identity Unlinked", false, 2),
        K::ApiKeyCreated | K::ApplicationCreated => (ENTITY_MANAGEMENT, 1, "Create", false, 1),
        K::ApplicationUpdated => (ENTITY_MANAGEMENT, 3, "Update", false, 1),
        K::ApiKeyRevoked | K::ApplicationRemoved => (ENTITY_MANAGEMENT, 4, "Delete", false, 1),
    }
}

fn class_name(class: u64) -> &'static str {
    match class {
        ACCOUNT_CHANGE => "Account Change",
        AUTHENTICATION => "Authentication",
        _ => "Entity Management",
    }
}

fn severity_name(id: u64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        _ => "Unknown",
    }
}

/// The OCSF `actor`: a person (`user:usr_…`), Portcullis itself or its CLI, or an application's
/// API key (`app:app_…/api_key:key_…`).
fn actor(event: &AuditEvent) -> Value {
    let who = event.actor.0.as_str();
    if let Some(id) = who.strip_prefix("user:") {
        return json!({ "user": { "uid": id, "type_id": 1, "type": "User" } });
    }
    if let Some(rest) = who.strip_prefix("app:") {
        let (app, key) = rest.split_once("/api_key:").unwrap_or((rest, ""));
        return json!({
            "app_name": app,
            "app_uid": app,
            "user": { "uid": key, "name": who, "type_id": 3, "type": "System" },
        });
    }
    json!({ "user": { "uid": who, "name": who, "type_id": 3, "type": "System" } })
}

/// The OCSF `user` the event is about.
fn user(event: &AuditEvent) -> Value {
    let mut user = Map::new();
    user.insert("type_id".into(), 1.into());
    user.insert("type".into(), "User".into());
    match &event.subject {
        Some(subject) => {
            user.insert("uid".into(), subject.clone().into());
        }
        // An attempt on no real account: the typed name is never recorded.
        None => {
            user.insert("type_id".into(), 0.into());
            user.insert("type".into(), "Unknown".into());
            user.insert("uid".into(), "".into());
        }
    }
    if let Some(name) = event.detail_str("username") {
        user.insert("name".into(), name.into());
    }
    Value::Object(user)
}

/// The event as one OCSF event.
pub fn to_ocsf(event: &AuditEvent) -> Value {
    let (class, activity, activity_name, failed, severity) = classify(event.kind);
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    put("class_uid", class.into());
    put("class_name", class_name(class).into());
    put("category_uid", CATEGORY_IAM.into());
    put("category_name", "Identity & Access Management".into());
    put("activity_id", activity.into());
    put("activity_name", activity_name.into());
    put("type_uid", (class * 100 + activity).into());
    put(
        "type_name",
        format!("{}: {activity_name}", class_name(class)).into(),
    );
    put("severity_id", severity.into());
    put("severity", severity_name(severity).into());
    put("time", event.at.as_millis().into());
    put("status_id", if failed { 2 } else { 1 }.into());
    put("status", if failed { "Failure" } else { "Success" }.into());
    put(
        "metadata",
        json!({
            "version": VERSION,
            "uid": event.seq.to_string(),
            "log_name": event.kind.as_str(),
            "product": { "name": "Portcullis", "vendor_name": "Portcullis" },
        }),
    );
    put("message", event.kind.as_str().into());
    put("actor", actor(event));
    put("user", user(event));
    if let Some(ip) = event.detail_str(context::CLIENT_IP) {
        put("src_endpoint", json!({ "ip": ip }));
    }
    if let Some(agent) = event.detail_str(context::USER_AGENT) {
        put("http_request", json!({ "user_agent": agent }));
    }
    if let Some(failed) = event.detail_str(context::FAILED) {
        put("status_detail", format!("failed: {failed}").into());
    }
    let methods: Vec<String> = event
        .detail
        .get(context::AUTH_METHODS)
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    match class {
        AUTHENTICATION => {
            let protocol = match (event.kind, event.detail_str(context::FAILED)) {
                (EventKind::LoginFailed | EventKind::LoginThrottled, Some("otp")) => "OTP",
                (EventKind::LoginFailed | EventKind::LoginThrottled, _) => "Password",
                _ => "Portcullis session",
            };
            put("auth_protocol", protocol.into());
            put("auth_protocol_id", 99.into());
            put("logon_type", "Web".into());
            put("logon_type_id", 99.into());
            if !methods.is_empty() {
                put(
                    "is_mfa",
                    (methods.iter().any(|m| m != "pwd") && methods.len() > 1).into(),
                );
            }
            if let Some(id) = &event.session_id {
                let mut session = json!({ "uid": id.as_str() });
                if let Some(policy) = &event.policy {
                    session["issuer"] = policy.clone().into();
                }
                put("session", session);
            }
            if let Some(app) = &event.application {
                put("dst_endpoint", json!({ "svc_name": app.as_str() }));
            }
        }
        ENTITY_MANAGEMENT => {
            let (kind, uid, name) = match event.kind {
                EventKind::ApiKeyCreated | EventKind::ApiKeyRevoked => (
                    "API Key",
                    event
                        .detail_str("api_key")
                        .or_else(|| event.detail_str("id"))
                        .unwrap_or(""),
                    event.detail_str("name").unwrap_or(""),
                ),
                _ => (
                    "Application",
                    event.application.as_ref().map_or("", |a| a.as_str()),
                    event.detail_str("name").unwrap_or(""),
                ),
            };
            put("entity", json!({ "uid": uid, "name": name, "type": kind }));
        }
        _ => {}
    }
    let mut unmapped = Map::new();
    unmapped.insert("kind".into(), event.kind.as_str().into());
    if let Some(app) = &event.application {
        unmapped.insert("application".into(), app.as_str().into());
    }
    if let Some(reason) = event.reason {
        unmapped.insert("reason".into(), reason.as_str().into());
    }
    if !methods.is_empty() {
        unmapped.insert("auth_methods".into(), methods.into());
    }
    if let Value::Object(detail) = &event.detail {
        let rest: Map<String, Value> = detail
            .iter()
            .filter(|(k, _)| {
                ![
                    context::CLIENT_IP,
                    context::USER_AGENT,
                    context::AUTH_METHODS,
                    context::ATTEMPT_KEY,
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rest.is_empty() {
            unmapped.insert("detail".into(), Value::Object(rest));
        }
    }
    put("unmapped", Value::Object(unmapped));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use portcullis_core::{Actor, AuditEvent, EndReason, EventKind, Timestamp};
    use serde_json::{Value, json};

    use super::{ACCOUNT_CHANGE, AUTHENTICATION, ENTITY_MANAGEMENT, to_ocsf};

    /// What OCSF 1.1.0 marks required, with the JSON type each must have: the base event's
    /// and the IAM category's attributes, then each class's own (`user` for Authentication
    /// and Account Change, `entity` for Entity Management); `metadata` requires `product`
    /// and `version`, `product` requires `vendor_name`.
    const BASE_REQUIRED: [(&str, &str); 8] = [
        ("activity_id", "integer"),
        ("category_uid", "integer"),
        ("class_uid", "integer"),
        ("metadata", "object"),
        ("severity_id", "integer"),
        ("time", "integer"),
        ("type_uid", "integer"),
        ("status_id", "integer"), // recommended in 1.1; always written here
    ];

    fn class_required(class: u64) -> &'static [(&'static str, &'static str)] {
        match class {
            AUTHENTICATION | ACCOUNT_CHANGE => &[("user", "object")],
            ENTITY_MANAGEMENT => &[("entity", "object")],
            other => panic!("unexpected class {other}"),
        }
    }

    fn type_of(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Number(_) => "float",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// A realistic event of each kind (what the engine, accounts and anomaly watch write).
    fn sample(kind: EventKind) -> AuditEvent {
        let at = Timestamp::from_millis(1_700_000_000_123);
        let session_detail = json!({
            "client_ip": "198.51.100.7", "user_agent": "Firefox/140", "auth_methods": ["pwd", "otp"],
        });
        let mut event = AuditEvent::for_account(kind, "usr_1", "alice", at, &Actor::user("usr_1"));
        let name = kind.as_str();
        if name.starts_with("session.") {
            event.session_id = Some(portcullis_core::PublicId::from_string("ses_1".into()));
            event.policy = Some("default".into());
            event.application = Some(portcullis_core::PublicId::from_string("app_1".into()));
            event.detail = session_detail;
            if kind == EventKind::SessionEnded {
                event.reason = Some(EndReason::Logout);
            }
        } else if name.starts_with("login.") {
            event.detail = json!({ "username": "alice", "client_ip": "198.51.100.7", "user_agent": "curl/8", "failed": "password" });
            if kind == EventKind::LoginStuffingSuspected {
                event.subject = None;
                event.detail = json!({ "client_ip": "198.51.100.7", "accounts": 10 });
            }
        } else if name.starts_with("logout.") {
            // A back-channel logout attempt: server to server, no client address.
            event = AuditEvent::for_application(
                kind,
                &portcullis_core::PublicId::from_string("app_1".into()),
                at,
                &Actor::system(),
                json!({ "attempt": 1, "sid": "ses_0", "error": "HTTP 503", "retry_at": 1_700_000_010_123_i64 }),
            );
            event.session_id = Some(portcullis_core::PublicId::from_string("ses_1".into()));
            event.subject = Some("usr_1".into());
            event.reason = Some(EndReason::ParentEnded);
        } else if name.starts_with("api_key.") || name.starts_with("application.") {
            event = AuditEvent::for_application(
                kind,
                &portcullis_core::PublicId::from_string("app_1".into()),
                at,
                &Actor::api_key(
                    &portcullis_core::PublicId::from_string("app_1".into()),
                    &portcullis_core::PublicId::from_string("key_1".into()),
                ),
                json!({ "api_key": "key_2", "name": "shop" }),
            );
        }
        event.seq = 42;
        event
    }

    #[test]
    fn every_event_kind_maps_to_an_ocsf_event_with_its_required_fields() {
        for kind in EventKind::ALL {
            let event = sample(kind);
            let ocsf = to_ocsf(&event);
            let class = ocsf["class_uid"].as_u64().unwrap();
            for (field, ty) in BASE_REQUIRED.iter().chain(class_required(class)) {
                assert_eq!(type_of(&ocsf[*field]), *ty, "{kind:?}: {field} in {ocsf:#}");
            }
            let activity = ocsf["activity_id"].as_u64().unwrap();
            assert_eq!(ocsf["category_uid"], 3, "{kind:?}");
            assert_eq!(ocsf["type_uid"].as_u64().unwrap(), class * 100 + activity);
            assert!(
                (0..=6).contains(&ocsf["severity_id"].as_u64().unwrap())
                    || ocsf["severity_id"] == 99
            );
            assert_eq!(ocsf["time"], 1_700_000_000_123_i64);
            assert_eq!(ocsf["metadata"]["version"], super::VERSION);
            assert_eq!(type_of(&ocsf["metadata"]["product"]), "object");
            assert_eq!(ocsf["metadata"]["product"]["vendor_name"], "Portcullis");
            assert_eq!(ocsf["metadata"]["product"]["name"], "Portcullis");
            assert!(matches!(ocsf["status_id"].as_u64(), Some(1 | 2)));
            assert_eq!(type_of(&ocsf["actor"]), "object");
            assert_eq!(ocsf["unmapped"]["kind"], kind.as_str());
            // Who, from where, how.
            let from_a_client = !matches!(
                kind,
                EventKind::SessionBurst
                    | EventKind::LogoutDelivered
                    | EventKind::LogoutDeliveryFailed
            );
            if class == AUTHENTICATION && from_a_client {
                assert_eq!(ocsf["src_endpoint"]["ip"], "198.51.100.7", "{kind:?}");
                assert_eq!(type_of(&ocsf["auth_protocol"]), "string");
                assert_eq!(ocsf["logon_type_id"], 99);
            }
        }
    }

    #[test]
    fn classes_and_activities_follow_the_table() {
        let of = |kind| {
            let o = to_ocsf(&sample(kind));
            (
                o["class_uid"].as_u64().unwrap(),
                o["activity_id"].as_u64().unwrap(),
                o["status_id"].as_u64().unwrap(),
            )
        };
        assert_eq!(of(EventKind::SessionCreated), (3002, 1, 1));
        assert_eq!(of(EventKind::SessionEnded), (3002, 2, 1));
        assert_eq!(of(EventKind::LoginFailed), (3002, 1, 2));
        assert_eq!(of(EventKind::LoginThrottled), (3002, 1, 2));
        assert_eq!(of(EventKind::UserPasswordChanged), (3001, 3, 1));
        assert_eq!(of(EventKind::UserTotpEnrolled), (3001, 10, 1));
        assert_eq!(of(EventKind::ApiKeyRevoked), (3004, 4, 1));
        assert_eq!(of(EventKind::LogoutDelivered), (3002, 99, 1));
        assert_eq!(of(EventKind::LogoutDeliveryFailed), (3002, 99, 2));
        let delivery = to_ocsf(&sample(EventKind::LogoutDeliveryFailed));
        assert_eq!(delivery["session"]["uid"], "ses_1");
        assert_eq!(
            delivery["dst_endpoint"]["svc_name"], "app_1",
            "the client told"
        );
        let failed = to_ocsf(&sample(EventKind::LoginFailed));
        assert_eq!(failed["http_request"]["user_agent"], "curl/8");
        assert_eq!(failed["status_detail"], "failed: password");
        assert_eq!(failed["user"]["name"], "alice");
        let created = to_ocsf(&sample(EventKind::SessionCreated));
        assert_eq!(created["is_mfa"], true);
        assert_eq!(created["session"]["uid"], "ses_1");
    }
}
