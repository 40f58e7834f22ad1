//! Applications as principals over real HTTP: an API key reaches only its own application's
//! sessions and events, grants allow exactly what they name, and no API key reaches
//! Portcullis's own sessions (the SSO session, a sign-in in progress).

mod common;

use common::TestServer;
use portcullis_core::{
    Actor, AuthContext, Grant, NewSession, PORTCULLIS_APP, Principal, SSO_POLICY,
};
use reqwest::Method;
use serde_json::{Value, json};

fn auth() -> Value {
    json!({"methods": ["pwd"], "level": 1})
}

/// A problem document without its free text, for comparing two answers.
fn shape(status: u16, body: &Value) -> (u16, Value, Value) {
    (status, body["reason"].clone(), body["ended_reason"].clone())
}

#[tokio::test]
async fn another_applications_token_answers_exactly_like_an_unknown_one() {
    let s = TestServer::start().await;
    let shop = s.add_app("shop", &[]).await;
    let blog = s.add_app("blog", &[]).await;
    let (status, created) = s
        .send_as(
            &shop,
            Method::POST,
            "/v1/sessions",
            Some(json!({"subject": "u-1", "auth": auth(), "data": {"cart": [1]}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["session"]["id"].as_str().unwrap().to_owned();
    let shop_app = s.engine.application("shop").await.unwrap();
    assert_eq!(created["session"]["application"], shop_app.id.as_str());

    let unknown = "pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for path in ["/v1/sessions/validate", "/v1/sessions/rotate"] {
        let (status, theirs) = s
            .send_as(&blog, Method::POST, path, Some(json!({"token": token})))
            .await;
        let (u_status, nobody) = s
            .send_as(&blog, Method::POST, path, Some(json!({"token": unknown})))
            .await;
        assert_eq!(shape(status, &theirs), shape(u_status, &nobody), "{path}");
        assert_eq!(theirs["reason"], "unknown", "{path}");
    }
    let (status, theirs) = s
        .send_as(
            &blog,
            Method::POST,
            "/v1/sessions/elevate",
            Some(json!({"token": token, "methods": ["pwd"], "level": 1, "scope": "pay"})),
        )
        .await;
    assert_eq!((status, theirs["reason"].as_str()), (401, Some("unknown")));
    // Logout is idempotent: another application's token is "already gone", and stays live.
    let (status, _) = s
        .send_as(
            &blog,
            Method::POST,
            "/v1/sessions/logout",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, 204);

    for (method, body) in [
        (Method::GET, None),
        (Method::DELETE, None),
        (Method::PUT, Some(json!({"stolen": true}))),
    ] {
        let path = if method == Method::PUT {
            format!("/v1/sessions/{id}/data")
        } else {
            format!("/v1/sessions/{id}")
        };
        let (status, body) = s.send_as(&blog, method.clone(), &path, body).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    let (status, list) = s
        .send_as(&blog, Method::GET, "/v1/subjects/u-1/sessions", None)
        .await;
    assert_eq!(
        (status, list["sessions"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, ended) = s
        .send_as(&blog, Method::DELETE, "/v1/subjects/u-1/sessions", None)
        .await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(0)));
    let (_, events) = s
        .send_as(&blog, Method::GET, "/v1/events?subject=u-1", None)
        .await;
    assert!(
        events["events"].as_array().unwrap().is_empty(),
        "blog reads none of shop's events: {events}"
    );

    // After all that, the session is untouched for its own application.
    let (status, mine) = s
        .send_as(
            &shop,
            Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["session"]["data"], json!({"cart": [1]}));
    let (_, events) = s
        .send_as(&shop, Method::GET, "/v1/events?subject=u-1", None)
        .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["session.created"]);
    assert_eq!(events["events"][0]["application"], shop_app.id.as_str());

    // An ended session of another application is unknown too, not "logged out".
    s.send_as(
        &shop,
        Method::POST,
        "/v1/sessions/logout",
        Some(json!({"token": token})),
    )
    .await;
    let (status, theirs) = s
        .send_as(
            &blog,
            Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!((status, theirs["reason"].as_str()), (401, Some("unknown")));
    let (_, mine) = s
        .send_as(
            &shop,
            Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(mine["reason"], "logged_out");
}

#[tokio::test]
async fn each_grant_allows_exactly_what_it_names() {
    let s = TestServer::start().await;
    let shop = s.add_app("shop", &[]).await;
    let ender = s.add_app("passwords", &[Grant::EndEverywhere]).await;
    let siem = s.add_app("siem", &[Grant::ReadAllEvents]).await;
    let support = s.add_app("support", &[Grant::ListAllSessions]).await;
    let (_, created) = s
        .send_as(
            &shop,
            Method::POST,
            "/v1/sessions",
            Some(json!({"subject": "u-1", "auth": auth()})),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_owned();

    let list_all = "/v1/subjects/u-1/sessions?scope=all";
    let end_all = "/v1/subjects/u-1/sessions?scope=all&reason=password_changed";
    let events_all = "/v1/events?scope=all&subject=u-1";
    let refused = |(status, body): (u16, Value), grant: &str| {
        assert_eq!(
            (status, body["reason"].as_str()),
            (403, Some("grant_required"))
        );
        assert!(body["detail"].as_str().unwrap().contains(grant), "{body}");
    };

    // Without the grant, each cross-application call is refused, whoever asks.
    refused(
        s.send_as(&shop, Method::GET, list_all, None).await,
        "list_all_sessions",
    );
    refused(
        s.send_as(&ender, Method::GET, list_all, None).await,
        "list_all_sessions",
    );
    refused(
        s.send_as(&siem, Method::DELETE, end_all, None).await,
        "end_everywhere",
    );
    refused(
        s.send_as(&support, Method::GET, events_all, None).await,
        "read_all_events",
    );
    refused(
        s.send_as(&ender, Method::GET, events_all, None).await,
        "read_all_events",
    );

    // Each grant does its own thing, and nothing else: none of them opens the token.
    let (status, listed) = s.send_as(&support, Method::GET, list_all, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
    let (status, events) = s.send_as(&siem, Method::GET, events_all, None).await;
    assert_eq!(status, 200);
    assert_eq!(events["events"][0]["kind"], "session.created");
    for key in [&ender, &siem, &support] {
        let (status, body) = s
            .send_as(
                key,
                Method::POST,
                "/v1/sessions/validate",
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("unknown")));
    }

    let (status, ended) = s.send_as(&ender, Method::DELETE, end_all, None).await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(1)));
    let (_, mine) = s
        .send_as(
            &shop,
            Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(
        (mine["reason"].as_str(), mine["ended_reason"].as_str()),
        (Some("revoked"), Some("password_changed"))
    );
    // The ending is audited with the acting application.
    let passwords = s.engine.application("passwords").await.unwrap();
    let (_, events) = s.send_as(&siem, Method::GET, events_all, None).await;
    let ended = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "session.ended")
        .unwrap()
        .clone();
    assert!(
        ended["actor"]
            .as_str()
            .unwrap()
            .starts_with(&format!("app:{}/api_key:key_", passwords.id)),
        "{ended}"
    );
}

#[tokio::test]
async fn an_application_uses_only_its_own_policies_and_never_portcullis_s() {
    let s = TestServer::start().await;
    s.engine
        .add_application(
            portcullis_core::ApplicationChange {
                name: Some("narrow".into()),
                policies: Some(vec!["short".into()]),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let (narrow, _) = s
        .engine
        .create_api_key("narrow", "narrow", &Actor::cli())
        .await
        .unwrap();
    let narrow = narrow.expose().to_owned();
    let (status, created) = s
        .send_as(
            &narrow,
            Method::POST,
            "/v1/sessions",
            Some(json!({"subject": "u-1", "auth": auth()})),
        )
        .await;
    assert_eq!(status, 201, "its default policy is its only one: {created}");
    assert_eq!(created["session"]["policy"], "short");
    for (key, policy) in [
        (&narrow, "single"),
        (&narrow, "default"),
        (&s.key, SSO_POLICY),
        (&s.key, "portcullis.sign_in"),
    ] {
        let (status, body) = s
            .send_as(
                key,
                Method::POST,
                "/v1/sessions",
                Some(json!({"subject": "u-1", "policy": policy, "auth": auth()})),
            )
            .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (403, Some("policy_not_allowed")),
            "{policy}: {body}"
        );
    }
    // Naming another application is refused too.
    let (status, body) = s
        .send_as(
            &narrow,
            Method::POST,
            "/v1/sessions",
            Some(json!({"subject": "u-1", "application": "portcullis", "auth": auth()})),
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("application_not_allowed"))
    );
}

#[tokio::test]
async fn no_api_key_reaches_the_sso_session_but_the_end_everywhere_grant() {
    let s = TestServer::start().await;
    let ender = s.add_app("passwords", &[Grant::EndEverywhere]).await;
    let sso = s
        .engine
        .create(
            NewSession {
                subject: "usr_alice".into(),
                policy: Some(SSO_POLICY.into()),
                auth: AuthContext {
                    methods: vec!["pwd".into()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &Principal::portcullis(Actor::user("usr_alice")),
        )
        .await
        .unwrap();
    assert_eq!(sso.session.application.as_str(), PORTCULLIS_APP);
    let token = sso.token.expose().to_owned();
    let id = sso.session.id.to_string();
    for key in [&s.key, &ender] {
        for path in [
            "/v1/sessions/validate",
            "/v1/sessions/rotate",
            "/v1/sessions/logout",
        ] {
            s.send_as(key, Method::POST, path, Some(json!({"token": token})))
                .await;
        }
        let (status, _) = s
            .send_as(key, Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(status, 404);
        let (status, _) = s
            .send_as(
                key,
                Method::PUT,
                &format!("/v1/sessions/{id}/data"),
                Some(json!({"x": 1})),
            )
            .await;
        assert_eq!(status, 404);
        let (_, ended) = s
            .send_as(key, Method::DELETE, "/v1/subjects/usr_alice/sessions", None)
            .await;
        assert_eq!(ended["ended"], 0);
    }
    let live = s
        .engine
        .validate(
            &token,
            false,
            &Default::default(),
            &Principal::portcullis(Actor::system()),
        )
        .await
        .unwrap();
    assert_eq!(live.session.version, 1, "nothing rotated or changed it");
    assert!(live.session.data.is_null());

    // Force logout after a password change, by the application that owns passwords.
    let (status, ended) = s
        .send_as(
            &ender,
            Method::DELETE,
            "/v1/subjects/usr_alice/sessions?scope=all&reason=password_changed",
            None,
        )
        .await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(1)));
    assert!(
        s.engine
            .validate(
                &token,
                false,
                &Default::default(),
                &Principal::portcullis(Actor::system())
            )
            .await
            .is_err()
    );
}

/// The finding behind the applications work: an API key minted a session for a local account's
/// id, planted it as the SSO cookie and changed the person's password.
#[tokio::test]
async fn an_api_key_session_never_opens_an_account_page_nor_changes_a_password() {
    let s = TestServer::start().await;
    let alice = s
        .accounts
        .add_user("alice", "correct horse battery staple", &Actor::cli())
        .await
        .unwrap();
    let (status, created) = s
        .post(
            "/v1/sessions",
            json!({"subject": alice.id, "auth": {"methods": ["pwd"], "level": 2}}),
        )
        .await;
    assert_eq!(status, 201);
    let token = created["token"].as_str().unwrap();
    let csrf = portcullis_http::ui::web::csrf_token(token);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = format!("__Host-portcullis={token}");
    let account = no_redirects
        .get(s.url("/account"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 303);
    assert!(
        account.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login"),
        "sent to sign in, not shown the account"
    );
    let change = no_redirects
        .post(s.url("/account/password"))
        .header("cookie", &cookie)
        .header("origin", &s.base)
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&password=an+attacker%27s+new+passphrase&confirm=an+attacker%27s+new+passphrase"
        ))
        .send()
        .await
        .unwrap();
    assert_ne!(change.status(), 200);
    assert!(
        s.accounts
            .check_password("alice", "correct horse battery staple", Default::default())
            .await
            .is_ok(),
        "the password is unchanged"
    );
}

#[tokio::test]
async fn removing_an_application_revokes_its_keys_and_ends_its_sessions() {
    let s = TestServer::start().await;
    let blog = s.add_app("blog", &[]).await;
    let mut tokens = Vec::new();
    for subject in ["u-1", "u-2", "u-3"] {
        let (_, created) = s
            .send_as(
                &blog,
                Method::POST,
                "/v1/sessions",
                Some(json!({"subject": subject, "auth": auth()})),
            )
            .await;
        tokens.push(created["session"]["id"].as_str().unwrap().to_owned());
    }
    let (mine, _) = s.create("u-1", "default").await;
    let removed = s
        .engine
        .remove_application("blog", &Actor::cli())
        .await
        .unwrap();
    assert_eq!((removed.api_keys_revoked, removed.sessions_ended), (1, 3));
    let (status, body) = s
        .send_as(
            &blog,
            Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": mine})),
        )
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("invalid_api_key"))
    );
    for id in &tokens {
        let session = s
            .engine
            .get(
                &portcullis_core::PublicId::from_string(id.clone()),
                &Principal::operator(),
            )
            .await
            .unwrap();
        assert_eq!(
            session.ended.as_ref().map(|e| e.reason.as_str()),
            Some("app_removed")
        );
    }
    let (status, _) = s.validate(&mine).await;
    assert_eq!(status, 200, "other applications' sessions go on");
    assert!(matches!(
        s.engine.application("blog").await,
        Err(portcullis_core::EngineError::UnknownApplication(_))
    ));
}
