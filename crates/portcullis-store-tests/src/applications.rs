//! Cases for applications as principals (DESIGN §1, "Applications, and who may touch which
//! session"): the application records a store keeps, the application every session, API key
//! and event belongs to, and, run by the engine over the store, what an application reaches of
//! another's sessions and what its grants add.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, ApiKey, AppId, Application, ApplicationChange, AuditEvent, AuthContext, Device, Elevate,
    EndReason, Engine, EngineError, EventKind, EventQuery, Grant, ManualClock, NewSession, Policy,
    PolicyOverrides, PolicySet, Principal, PublicId, Rejection, SeededRandom, SessionId,
    SessionStore, Store, StoreError, Token, TokenKind, legacy_app, portcullis_app,
};

use crate::{application, ending, plain_insert, random, rotated, session_of, t0};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// The event an application change is stored with.
fn app_event(kind: EventKind, app: &Application) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at: app.created_at,
        kind,
        actor: Actor::cli(),
        session_id: None,
        subject: None,
        policy: None,
        application: Some(app.id.clone()),
        reason: None,
        detail: serde_json::json!({"application": app.id.as_str(), "name": app.name}),
    }
}

/// An API key of `application`, and its secret.
fn api_key(name: &str, application: &AppId, random: &SeededRandom) -> (Token, ApiKey) {
    let token = Token::generate(TokenKind::ApiKey, random);
    let key = ApiKey {
        id: PublicId::from_string(format!("key_{name}")),
        name: name.to_owned(),
        application: application.clone(),
        key_hash: token.hash(),
        created_at: t0(),
        revoked_at: None,
    };
    (token, key)
}

fn key_event(kind: EventKind, key: &ApiKey) -> AuditEvent {
    AuditEvent {
        seq: 0,
        at: t0(),
        kind,
        actor: Actor::cli(),
        session_id: None,
        subject: None,
        policy: None,
        application: Some(key.application.clone()),
        reason: None,
        detail: serde_json::json!({"api_key": key.id.as_str(), "name": key.name}),
    }
}

fn ids(sessions: &[Arc<portcullis_core::Session>]) -> BTreeSet<SessionId> {
    sessions.iter().map(|s| s.id.clone()).collect()
}

async fn all_events<S: SessionStore>(store: &S, query: EventQuery) -> Vec<AuditEvent> {
    store
        .events(&EventQuery {
            limit: 1000,
            ..query
        })
        .await
        .unwrap()
}

/// Applications are added, found by id, listed oldest first, updated only at the version read
/// and removed once; a name (or id) already taken is refused with `NameTaken` and changes
/// nothing; every field reads back as written.
pub async fn applications_add_find_list_update_remove<S: Store>(store: S) {
    let shop = application("shop");
    let mut blog = application("blog");
    blog.created_at = t0().plus(SEC);
    blog.policies = vec!["default".into(), "short".into()];
    blog.default_policy = "short".into();
    blog.grants = [Grant::ReadAllEvents, Grant::EndEverywhere].into();
    let created = store
        .add_application(
            shop.clone(),
            app_event(EventKind::ApplicationCreated, &shop),
        )
        .await
        .unwrap();
    assert!(created.seq > 0);
    assert_eq!(created.application, Some(shop.id.clone()));
    store
        .add_application(
            blog.clone(),
            app_event(EventKind::ApplicationCreated, &blog),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_application(&shop.id).await.unwrap(),
        Some(shop.clone())
    );
    assert_eq!(
        store.find_application(&blog.id).await.unwrap(),
        Some(blog.clone())
    );
    let nobody = PublicId::from_string("app_nobody".into());
    assert_eq!(store.find_application(&nobody).await.unwrap(), None);
    assert_eq!(
        store.list_applications().await.unwrap(),
        vec![shop.clone(), blog.clone()]
    );

    // A name or an id already taken: refused, and nothing is stored or recorded.
    let mut impostor = application("impostor");
    impostor.name = "shop".into();
    let mut same_id = shop.clone();
    same_id.name = "shop-two".into();
    for refused in [impostor.clone(), same_id] {
        let err = store
            .add_application(
                refused.clone(),
                app_event(EventKind::ApplicationCreated, &refused),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NameTaken(_)), "{err:?}");
    }
    assert_eq!(store.find_application(&impostor.id).await.unwrap(), None);
    assert_eq!(
        store.list_applications().await.unwrap(),
        vec![shop.clone(), blog.clone()]
    );
    let created_events = all_events(&store, EventQuery::default())
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::ApplicationCreated)
        .count();
    assert_eq!(created_events, 2);

    // Update at the version read.
    let mut renamed = shop.clone();
    renamed.name = "store".into();
    renamed.policies = vec!["short".into()];
    renamed.default_policy = "short".into();
    renamed.grants = [Grant::ListAllSessions].into();
    renamed.version = 2;
    let updated = store
        .update_application(
            1,
            renamed.clone(),
            app_event(EventKind::ApplicationUpdated, &renamed),
        )
        .await
        .unwrap()
        .expect("updated at the version read");
    assert!(updated.seq > created.seq);
    assert_eq!(updated.application, Some(shop.id.clone()));
    assert_eq!(
        store.find_application(&shop.id).await.unwrap(),
        Some(renamed.clone())
    );
    // A writer that read version 1 too loses, and changes nothing.
    let mut stale = shop.clone();
    stale.name = "stale".into();
    stale.version = 2;
    assert!(
        store
            .update_application(1, stale, app_event(EventKind::ApplicationUpdated, &shop))
            .await
            .unwrap()
            .is_none()
    );
    // An application that does not exist is not updated (nor created).
    let mut ghost = application("ghost");
    ghost.version = 2;
    assert!(
        store
            .update_application(
                1,
                ghost.clone(),
                app_event(EventKind::ApplicationUpdated, &ghost)
            )
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.find_application(&ghost.id).await.unwrap(), None);
    // Another application's name: refused, and nothing changes.
    let mut clash = renamed.clone();
    clash.name = "blog".into();
    clash.version = 3;
    let err = store
        .update_application(2, clash, app_event(EventKind::ApplicationUpdated, &renamed))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NameTaken(_)), "{err:?}");
    assert_eq!(
        store.find_application(&shop.id).await.unwrap(),
        Some(renamed.clone())
    );
    // The name given up is free again.
    let mut second_shop = application("shop2");
    second_shop.name = "shop".into();
    second_shop.created_at = t0().plus(SEC * 2);
    store
        .add_application(
            second_shop.clone(),
            app_event(EventKind::ApplicationCreated, &second_shop),
        )
        .await
        .unwrap();

    // Remove once; afterwards it is gone and its name is free.
    assert!(
        store
            .remove_application(&blog.id, app_event(EventKind::ApplicationRemoved, &blog))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .remove_application(&blog.id, app_event(EventKind::ApplicationRemoved, &blog))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .remove_application(&nobody, app_event(EventKind::ApplicationRemoved, &blog))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.find_application(&blog.id).await.unwrap(), None);
    assert_eq!(
        store.list_applications().await.unwrap(),
        vec![renamed.clone(), second_shop.clone()]
    );
    let mut blog_again = application("blog2");
    blog_again.name = "blog".into();
    blog_again.created_at = t0().plus(SEC * 3);
    store
        .add_application(
            blog_again.clone(),
            app_event(EventKind::ApplicationCreated, &blog_again),
        )
        .await
        .unwrap();
    // Each change was recorded once, in order.
    let of_blog: Vec<EventKind> = all_events(
        &store,
        EventQuery {
            application: Some(blog.id.clone()),
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        of_blog,
        vec![EventKind::ApplicationCreated, EventKind::ApplicationRemoved]
    );
    let of_shop: Vec<EventKind> = all_events(
        &store,
        EventQuery {
            application: Some(shop.id.clone()),
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        of_shop,
        vec![EventKind::ApplicationCreated, EventKind::ApplicationUpdated]
    );
}

/// An application's OpenID Connect registration is stored whole, for each way a client
/// authenticates, and an update can add, change or drop it.
pub async fn an_applications_client_registration_reads_back_and_updates<S: Store>(store: S) {
    use portcullis_core::TokenHash;
    use portcullis_core::oidc::{Client, ClientAuth, GrantType};
    let full = Client {
        auth: ClientAuth::Secret(TokenHash([7; 32])),
        redirect_uris: vec![
            "https://rp.example/cb".into(),
            "http://127.0.0.1:9/cb?x=é".into(),
        ],
        post_logout_redirect_uris: vec!["https://rp.example/bye".into()],
        backchannel_logout_uri: Some("https://rp.example/backchannel".into()),
        frontchannel_logout_uri: Some("https://rp.example/frontchannel".into()),
        scopes: ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .into(),
        grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
        require_consent: true,
        id_token_signed_response_alg: None,
        upstream: Some("corp".into()),
    };
    let public = Client {
        auth: ClientAuth::None,
        redirect_uris: vec!["http://localhost:3000/cb".into()],
        post_logout_redirect_uris: Vec::new(),
        backchannel_logout_uri: None,
        frontchannel_logout_uri: None,
        scopes: ["openid".to_owned()].into(),
        grant_types: [GrantType::AuthorizationCode].into(),
        require_consent: false,
        id_token_signed_response_alg: None,
        upstream: None,
    };
    let keyed = Client {
        auth: ClientAuth::PrivateKeyJwt {
            jwks: r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#.into(),
        },
        ..public.clone()
    };
    let mut apps = Vec::new();
    for (name, client) in [
        ("rp-full", full.clone()),
        ("rp-public", public),
        ("rp-keyed", keyed),
    ] {
        let mut app = application(name);
        app.client = Some(client);
        store
            .add_application(app.clone(), app_event(EventKind::ApplicationCreated, &app))
            .await
            .unwrap();
        assert_eq!(
            store.find_application(&app.id).await.unwrap(),
            Some(app.clone())
        );
        apps.push(app);
    }
    let listed = store.list_applications().await.unwrap();
    for app in &apps {
        assert!(listed.contains(app), "{} is listed whole", app.name);
    }

    let mut changed = apps[0].clone();
    changed.version += 1;
    changed.client = Some(Client {
        redirect_uris: vec!["https://rp.example/cb2".into()],
        auth: ClientAuth::Secret(TokenHash([8; 32])),
        ..full
    });
    store
        .update_application(
            apps[0].version,
            changed.clone(),
            app_event(EventKind::ApplicationUpdated, &changed),
        )
        .await
        .unwrap()
        .expect("updated");
    assert_eq!(
        store.find_application(&changed.id).await.unwrap(),
        Some(changed.clone())
    );
    let mut dropped = changed.clone();
    dropped.version += 1;
    dropped.client = None;
    store
        .update_application(
            changed.version,
            dropped.clone(),
            app_event(EventKind::ApplicationUpdated, &dropped),
        )
        .await
        .unwrap()
        .expect("updated");
    assert_eq!(
        store.find_application(&dropped.id).await.unwrap(),
        Some(dropped)
    );
}

/// An API key records its application, through adding, finding, listing and revoking; keys of
/// the previous release's application read back as such.
pub async fn api_keys_carry_their_application<S: Store>(store: S) {
    let r = random();
    let shop = application("shop").id;
    let (shop_secret, shop_key) = api_key("shop", &shop, &r);
    let (legacy_secret, mut legacy_key) = api_key("old", &legacy_app(), &r);
    legacy_key.created_at = t0().plus(SEC);
    let stored = store
        .add_api_key(
            shop_key.clone(),
            key_event(EventKind::ApiKeyCreated, &shop_key),
        )
        .await
        .unwrap();
    assert_eq!(stored.application, Some(shop.clone()));
    store
        .add_api_key(
            legacy_key.clone(),
            key_event(EventKind::ApiKeyCreated, &legacy_key),
        )
        .await
        .unwrap();
    assert_eq!(
        store.find_api_key(&shop_secret.hash()).await.unwrap(),
        Some(shop_key.clone())
    );
    assert_eq!(
        store
            .find_api_key(&legacy_secret.hash())
            .await
            .unwrap()
            .unwrap()
            .application,
        legacy_app()
    );
    assert_eq!(
        store.list_api_keys().await.unwrap(),
        vec![shop_key.clone(), legacy_key.clone()]
    );
    let (revoked, event) = store
        .revoke_api_key(
            &shop_key.id,
            t0().plus(SEC * 2),
            key_event(EventKind::ApiKeyRevoked, &shop_key),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.application, shop);
    assert_eq!(event.application, Some(shop.clone()));
    let found = store
        .find_api_key(&shop_secret.hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.application, found.revoked_at),
        (shop, Some(t0().plus(SEC * 2)))
    );
}

/// A session records its application, and it reads back equal after being inserted, rotated,
/// touched and ended; its events carry it too. Sessions of several applications (and of the
/// previous release's) share a subject without mixing.
pub async fn sessions_carry_their_application_through_insert_replace_and_end<S: Store>(store: S) {
    let r = random();
    let shop = application("shop").id;
    let blog = application("blog").id;
    let (token, s) = session_of("alice", &shop, t0(), &r);
    let inserted = store.insert(plain_insert(s.clone())).await.unwrap();
    assert_eq!(*inserted.session, s);
    assert_eq!(inserted.events[0].application, Some(shop.clone()));
    assert_eq!(
        *store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .unwrap(),
        s
    );
    assert_eq!(*store.find_by_id(&s.id).await.unwrap().unwrap(), s);

    let (_, b) = session_of("alice", &blog, t0().plus(SEC), &r);
    store.insert(plain_insert(b.clone())).await.unwrap();
    let (legacy_token, l) = session_of("alice", &legacy_app(), t0().plus(SEC * 2), &r);
    store.insert(plain_insert(l.clone())).await.unwrap();
    assert_eq!(
        *store
            .find_by_token(&legacy_token.routed_hash())
            .await
            .unwrap()
            .unwrap(),
        l
    );
    let listed: Vec<(SessionId, AppId)> = store
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| (s.id.clone(), s.application.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (s.id.clone(), shop.clone()),
            (b.id.clone(), blog.clone()),
            (l.id.clone(), legacy_app()),
        ]
    );

    let (new_token, next, event) = rotated(&s, &r);
    let (stored, event) = store
        .replace(s.version, next.clone(), event)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*stored, next);
    assert_eq!(stored.application, shop);
    assert_eq!(event.application, Some(shop.clone()));
    store.touch(&s.id, t0().plus(SEC * 60)).await.unwrap();
    store.flush().await.unwrap();
    let touched = store
        .find_by_token(&new_token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(touched.application, shop);
    assert_eq!(touched.last_seen_at, t0().plus(SEC * 60));

    let ended = store
        .end(&s.id, ending(EndReason::Logout, t0().plus(SEC * 61)))
        .await
        .unwrap();
    assert_eq!(ended.sessions[0].application, shop);
    assert_eq!(ended.events[0].application, Some(shop.clone()));
    let record = store.find_by_id(&s.id).await.unwrap().unwrap();
    assert_eq!(record.application, shop);
    assert_eq!(record.ended.as_ref().unwrap().reason, EndReason::Logout);
    assert_eq!(
        *store.find_by_id(&b.id).await.unwrap().unwrap(),
        b,
        "the other application's session is untouched"
    );
    let of_session: Vec<Option<AppId>> = all_events(
        &store,
        EventQuery {
            session_id: Some(s.id.clone()),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| e.application)
    .collect();
    assert_eq!(of_session, vec![Some(shop); 3]);
}

/// Ending a subject's sessions of one application ends exactly those (and, as ever, their
/// children, whatever application those belong to), spares the exception, and leaves the
/// subject's other applications' sessions, Portcullis's own and other subjects' alone.
pub async fn end_subject_of_an_application_ends_its_sessions_and_their_children_only<S: Store>(
    store: S,
) {
    let r = random();
    let shop = application("shop").id;
    let blog = application("blog").id;
    let at = |n: u32| t0().plus(SEC * n);
    let (_, sso) = session_of("alice", &portcullis_app(), at(0), &r);
    let (_, shop1) = session_of("alice", &shop, at(1), &r);
    let (_, mut shop2) = session_of("alice", &shop, at(2), &r);
    shop2.parent = Some(sso.id.clone());
    let (_, blog1) = session_of("alice", &blog, at(3), &r);
    let (_, mut blog_child) = session_of("alice", &blog, at(4), &r);
    blog_child.parent = Some(shop1.id.clone());
    let (_, shop3) = session_of("alice", &shop, at(5), &r);
    let (_, bobs) = session_of("bob", &shop, at(6), &r);
    for s in [&sso, &shop1, &shop2, &blog1, &blog_child, &shop3, &bobs] {
        store.insert(plain_insert(s.clone())).await.unwrap();
    }

    let ended = store
        .end_subject(
            "alice",
            Some(&shop),
            Some(&shop3.id),
            ending(EndReason::PasswordChanged, at(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&ended.sessions),
        [shop1.id.clone(), shop2.id.clone()].into(),
        "the application's sessions but the exception"
    );
    let mut by_event: Vec<(SessionId, Option<&str>, Option<AppId>)> = ended
        .events
        .iter()
        .map(|e| {
            (
                e.session_id.clone().unwrap(),
                e.reason.map(EndReason::as_str),
                e.application.clone(),
            )
        })
        .collect();
    by_event.sort();
    let mut expected = vec![
        (
            shop1.id.clone(),
            Some("password_changed"),
            Some(shop.clone()),
        ),
        (
            shop2.id.clone(),
            Some("password_changed"),
            Some(shop.clone()),
        ),
        (
            blog_child.id.clone(),
            Some("parent_ended"),
            Some(blog.clone()),
        ),
    ];
    expected.sort();
    assert_eq!(by_event, expected);
    let live: Vec<SessionId> = store
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(
        live,
        vec![sso.id.clone(), blog1.id.clone(), shop3.id.clone()]
    );
    assert!(
        store.find_by_id(&sso.id).await.unwrap().unwrap().is_live(),
        "the parent of an ended session is not its child"
    );
    assert_eq!(store.list_subject("bob").await.unwrap().len(), 1);

    // An application with nothing left to end (its one session is the exception) ends nothing.
    let none = store
        .end_subject(
            "alice",
            Some(&blog),
            Some(&blog1.id),
            ending(EndReason::PasswordChanged, at(11)),
        )
        .await
        .unwrap();
    assert!(none.sessions.is_empty() && none.events.is_empty());
    // Portcullis's own sessions are an application like any other.
    let sso_only = store
        .end_subject(
            "alice",
            Some(&portcullis_app()),
            None,
            ending(EndReason::Logout, at(12)),
        )
        .await
        .unwrap();
    assert_eq!(ids(&sso_only.sessions), [sso.id.clone()].into());
    // Without an application, every application's.
    let rest = store
        .end_subject("alice", None, None, ending(EndReason::RevokedAdmin, at(13)))
        .await
        .unwrap();
    assert_eq!(
        ids(&rest.sessions),
        [blog1.id.clone(), shop3.id.clone()].into()
    );
    assert!(store.list_subject("alice").await.unwrap().is_empty());
    assert_eq!(store.list_subject("bob").await.unwrap().len(), 1);
}

/// `application_sessions` answers exactly the live sessions of the application, across
/// subjects, never an ended one (ended directly or with its parent), up to the limit; walking
/// it while ending what it answers ends them all, as removing an application does.
pub async fn application_sessions_are_exactly_its_live_sessions<S: Store>(store: S) {
    let r = random();
    let shop = application("shop").id;
    let blog = application("blog").id;
    let mut shops = vec![];
    for (i, subject) in (0u32..).zip(["alice", "alice", "bob", "carol", "dave", "erin"]) {
        let (_, s) = session_of(subject, &shop, t0().plus(SEC * i), &r);
        store.insert(plain_insert(s.clone())).await.unwrap();
        shops.push(s);
    }
    let (_, blog_parent) = session_of("frank", &blog, t0(), &r);
    let (_, blog_other) = session_of("alice", &blog, t0(), &r);
    let (_, mut shop_child) = session_of("frank", &shop, t0(), &r);
    shop_child.parent = Some(blog_parent.id.clone());
    for s in [&blog_parent, &blog_other, &shop_child] {
        store.insert(plain_insert(s.clone())).await.unwrap();
    }
    store
        .end(&shops[2].id, ending(EndReason::Logout, t0().plus(SEC * 10)))
        .await
        .unwrap();
    store
        .end(
            &blog_parent.id,
            ending(EndReason::Logout, t0().plus(SEC * 10)),
        )
        .await
        .unwrap();

    let expected: BTreeSet<SessionId> = [0, 1, 3, 4, 5]
        .into_iter()
        .map(|i| shops[i].id.clone())
        .collect();
    let found = store.application_sessions(&shop, 100).await.unwrap();
    assert_eq!(found.len(), expected.len(), "each once");
    assert_eq!(ids(&found), expected);
    assert!(found.iter().all(|s| s.is_live() && s.application == shop));
    let some = store.application_sessions(&shop, 2).await.unwrap();
    assert_eq!(some.len(), 2);
    assert!(ids(&some).is_subset(&expected));
    assert_eq!(
        ids(&store.application_sessions(&blog, 100).await.unwrap()),
        [blog_other.id.clone()].into()
    );
    let nobody = PublicId::from_string("app_nobody".into());
    assert!(
        store
            .application_sessions(&nobody, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let mut ended = BTreeSet::new();
    for _ in 0..10 {
        let batch = store.application_sessions(&shop, 2).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for s in batch {
            store
                .end(&s.id, ending(EndReason::AppRemoved, t0().plus(SEC * 20)))
                .await
                .unwrap();
            ended.insert(s.id.clone());
        }
    }
    assert_eq!(ended, expected);
    assert!(
        store
            .application_sessions(&shop, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .find_by_id(&blog_other.id)
            .await
            .unwrap()
            .unwrap()
            .is_live()
    );
}

/// Events record their application and a query for one application answers exactly its
/// events, with the limit applied after the filter: one event of B among many of A is found
/// with a limit of 1, though A's come both before and after it.
pub async fn events_carry_their_application_and_filter_before_the_limit<S: Store>(store: S) {
    let r = random();
    let a = application("a").id;
    let b = application("b").id;
    // One subject, so every store keeps these in the order written.
    let mut written = vec![];
    for i in 0..11u32 {
        let app = if i == 5 { &b } else { &a };
        let (_, s) = session_of("alice", app, t0().plus(SEC * i), &r);
        store.insert(plain_insert(s.clone())).await.unwrap();
        written.push(s);
    }
    let every = all_events(&store, EventQuery::default()).await;
    let recorded: Vec<(Option<SessionId>, Option<AppId>)> = every
        .iter()
        .map(|e| (e.session_id.clone(), e.application.clone()))
        .collect();
    let expected: Vec<(Option<SessionId>, Option<AppId>)> = written
        .iter()
        .map(|s| (Some(s.id.clone()), Some(s.application.clone())))
        .collect();
    assert_eq!(recorded, expected);
    // Another subject's events of A.
    for subject in ["bob", "carol"] {
        let (_, s) = session_of(subject, &a, t0().plus(SEC * 20), &r);
        store.insert(plain_insert(s)).await.unwrap();
    }
    let every = all_events(&store, EventQuery::default()).await;
    assert_eq!(every.len(), 13);
    let of = |app: &AppId| -> Vec<AuditEvent> {
        every
            .iter()
            .filter(|e| e.application.as_ref() == Some(app))
            .cloned()
            .collect()
    };
    let (of_a, of_b) = (of(&a), of(&b));
    assert_eq!((of_a.len(), of_b.len()), (12, 1));

    let query = |application: &AppId, after: u64, limit: usize| EventQuery {
        application: Some(application.clone()),
        after,
        limit,
        ..Default::default()
    };
    assert_eq!(store.events(&query(&b, 0, 1)).await.unwrap(), of_b);
    assert_eq!(store.events(&query(&b, 0, 100)).await.unwrap(), of_b);
    assert_eq!(store.events(&query(&a, 0, 100)).await.unwrap(), of_a);
    assert_eq!(store.events(&query(&a, 0, 2)).await.unwrap(), of_a[..2]);
    let b_seq = of_b[0].seq;
    let a_after_b: Vec<AuditEvent> = of_a.iter().filter(|e| e.seq > b_seq).cloned().collect();
    assert_eq!(a_after_b.len(), 7);
    assert_eq!(
        store.events(&query(&a, b_seq, 1)).await.unwrap(),
        a_after_b[..1]
    );
    assert_eq!(
        store.events(&query(&a, b_seq, 100)).await.unwrap(),
        a_after_b
    );
    assert!(
        store
            .events(&query(&b, b_seq, 10))
            .await
            .unwrap()
            .is_empty()
    );
    // With the other filters.
    assert_eq!(
        store
            .events(&EventQuery {
                subject: Some("alice".into()),
                ..query(&b, 0, 10)
            })
            .await
            .unwrap(),
        of_b
    );
    assert!(
        store
            .events(&EventQuery {
                subject: Some("bob".into()),
                ..query(&b, 0, 10)
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .events(&EventQuery {
                session_id: Some(written[5].id.clone()),
                ..query(&a, 0, 10)
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .events(&query(&legacy_app(), 0, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

/// An event written without an application reads back without one, and no application's
/// query (not even the previous release's) answers it.
pub async fn an_event_without_an_application_reads_back_without_one<S: Store>(store: S) {
    let (_, key) = api_key("shop", &application("shop").id, &random());
    let mut event = key_event(EventKind::ApiKeyCreated, &key);
    event.application = None;
    let stored = store.add_api_key(key, event.clone()).await.unwrap();
    assert_eq!(stored.application, None);
    let every = all_events(&store, EventQuery::default()).await;
    assert_eq!(every, vec![stored.clone()]);
    assert_eq!(every[0].application, None);
    for app in [legacy_app(), application("shop").id] {
        assert!(
            all_events(
                &store,
                EventQuery {
                    application: Some(app),
                    ..Default::default()
                }
            )
            .await
            .is_empty()
        );
    }
}

// --- Through the engine -------------------------------------------------------------------

fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(MIN * 5),
        absolute: Some(MIN * 60),
        ..Default::default()
    };
    let one = PolicyOverrides {
        max_sessions: Some(1),
        on_limit: Some(portcullis_core::OnLimit::EvictOldest),
        ..short.clone()
    };
    let only = PolicyOverrides {
        max_sessions: Some(1),
        on_limit: Some(portcullis_core::OnLimit::Deny),
        ..short.clone()
    };
    let back = PolicyOverrides {
        idle: Some(MIN),
        reconstitute_window: Some(MIN * 10),
        ..short.clone()
    };
    PolicySet::new([
        Policy::resolve("short", &short).unwrap(),
        Policy::resolve("one", &one).unwrap(),
        Policy::resolve("only", &only).unwrap(),
        Policy::resolve("back", &back).unwrap(),
    ])
}

fn engine<S: Store>(store: S) -> Engine<S> {
    Engine::new(
        store,
        policies(),
        Arc::new(ManualClock::default()),
        Arc::new(SeededRandom::new(13)),
    )
}

/// Registers an application that may use every policy, with `grants`, and one API key; the
/// key's secret and the principal it authenticates as.
async fn register<S: Store>(
    engine: &Engine<S>,
    name: &str,
    grants: &[Grant],
) -> (Application, Token, Principal) {
    let app = engine
        .add_application(
            ApplicationChange {
                name: Some(name.into()),
                policies: Some(vec!["*".into()]),
                grants: Some(grants.to_vec()),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let (secret, key) = engine
        .create_api_key(&format!("{name}-key"), name, &Actor::cli())
        .await
        .unwrap();
    assert_eq!(key.application, app.id);
    let principal = engine
        .authenticate_api_key(secret.expose())
        .await
        .unwrap()
        .expect("a live key of an existing application");
    assert_eq!(principal.application_id(), Some(&app.id));
    (app, secret, principal)
}

fn request(subject: &str) -> NewSession {
    NewSession {
        subject: subject.into(),
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        data: serde_json::json!({"cart": [1]}),
        ..Default::default()
    }
}

fn rejection<T: std::fmt::Debug>(result: Result<T, EngineError>) -> Rejection {
    match result {
        Err(EngineError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, EngineError>) {
    assert!(
        matches!(result, Err(EngineError::NotFound)),
        "expected not found, got {result:?}"
    );
}

fn grant_required<T: std::fmt::Debug>(result: Result<T, EngineError>, grant: Grant) {
    match result {
        Err(EngineError::GrantRequired(g)) => assert_eq!(g, grant),
        other => panic!(
            "expected grant {} to be required, got {other:?}",
            grant.as_str()
        ),
    }
}

/// Application B cannot validate, rotate, elevate, log out, read, change, revoke, list or end
/// application A's sessions, nor read their events or parent a session on one: every answer is
/// exactly the answer for a session that does not exist (even once A's has ended), and A's
/// session is unchanged.
pub async fn another_applications_session_answers_like_an_unknown_one<S: Store>(store: S) {
    let engine = engine(store);
    let (shop_app, _, shop) = register(&engine, "shop", &[]).await;
    let (_, _, blog) = register(&engine, "blog", &[]).await;
    let issued = engine.create(request("alice"), &shop).await.unwrap();
    assert_eq!(issued.session.application, shop_app.id);
    let theirs = issued.token.expose();
    let id = &issued.session.id;
    let stranger = Token::generate(TokenKind::Session, &SeededRandom::new(5));
    let nobody = stranger.expose();
    let nobody_id = PublicId::from_string("ses_nobody".into());
    let device = Device::default();

    for token in [theirs, nobody] {
        assert_eq!(
            rejection(engine.validate(token, true, &device, &blog).await),
            Rejection::Unknown
        );
        assert_eq!(
            rejection(engine.rotate(token, &blog).await),
            Rejection::Unknown
        );
        let elevate = Elevate {
            methods: vec!["otp".into()],
            level: 2,
            scope: "pay".into(),
        };
        assert_eq!(
            rejection(engine.elevate(token, elevate, &blog).await),
            Rejection::Unknown
        );
        // Logging out an unknown token is fine, and so it is for another application's: nothing.
        engine.logout(token, &blog).await.unwrap();
    }
    for target in [id, &nobody_id] {
        not_found(engine.get(target, &blog).await);
        not_found(
            engine
                .replace_data(target, serde_json::json!({"stolen": true}), &blog)
                .await,
        );
        not_found(engine.revoke(target, &blog).await);
        not_found(engine.end(target, EndReason::Logout, &blog).await);
    }
    assert!(
        engine
            .list_subject("alice", false, &blog)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        engine
            .end_subject("alice", None, EndReason::PasswordChanged, false, &blog)
            .await
            .unwrap(),
        0
    );
    for query in [
        EventQuery {
            session_id: Some(id.clone()),
            limit: 100,
            ..Default::default()
        },
        EventQuery {
            application: Some(shop_app.id.clone()),
            limit: 100,
            ..Default::default()
        },
    ] {
        // Only ever B's own (a query naming A's application is answered with B's).
        let seen = engine.events(&query, false, &blog).await.unwrap();
        assert!(
            seen.iter()
                .all(|e| e.application == blog.application_id().cloned()
                    && e.session_id.as_ref() != Some(id)),
            "{seen:?}"
        );
    }
    let mut child = request("alice");
    child.parent = Some(id.clone());
    assert!(matches!(
        engine.create(child, &blog).await,
        Err(EngineError::Invalid(_))
    ));

    // A's session is as it was, and A still reaches it.
    let now = engine.get(id, &shop).await.unwrap();
    assert_eq!(*now, *issued.session);
    engine.validate(theirs, true, &device, &shop).await.unwrap();
    assert_eq!(
        engine
            .list_subject("alice", false, &shop)
            .await
            .unwrap()
            .len(),
        1
    );
    // Once ended, it is still unknown to B (not even that it ended is told).
    engine.logout(theirs, &shop).await.unwrap();
    assert_eq!(
        rejection(engine.validate(theirs, true, &device, &shop).await),
        Rejection::LoggedOut
    );
    assert_eq!(
        rejection(engine.validate(theirs, true, &device, &blog).await),
        Rejection::Unknown
    );
    not_found(engine.get(id, &blog).await);
    // A's own events are all A's.
    let own = engine
        .events(
            &EventQuery {
                limit: 100,
                ..Default::default()
            },
            false,
            &shop,
        )
        .await
        .unwrap();
    assert!(own.iter().any(|e| e.session_id.as_ref() == Some(id)));
    assert!(
        own.iter()
            .all(|e| e.application.as_ref() == Some(&shop_app.id))
    );
}

/// An application's sessions are its own, follow only the policies it may use (never one of
/// Portcullis's reserved ones), and the operator names the application of the sessions it
/// creates.
pub async fn an_application_creates_only_its_own_sessions_with_its_policies<S: Store>(store: S) {
    let engine = engine(store);
    let shop = engine
        .add_application(
            ApplicationChange {
                name: Some("shop".into()),
                policies: Some(vec!["short".into()]),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    assert_eq!(shop.default_policy, "short");
    let (blog, _, _) = register(&engine, "blog", &[]).await;
    let as_shop = crate::app_principal(shop.clone());

    let issued = engine.create(request("alice"), &as_shop).await.unwrap();
    assert_eq!(issued.session.application, shop.id);
    assert_eq!(issued.session.policy, "short");
    for policy in ["default", "portcullis.sso", "portcullis.sign_in"] {
        let mut other = request("alice");
        other.policy = Some(policy.into());
        assert!(
            matches!(
                engine.create(other, &as_shop).await,
                Err(EngineError::PolicyNotAllowed(p)) if p == policy
            ),
            "{policy}"
        );
    }
    // A policy that does not exist is named so, whichever the application may use.
    let mut unknown = request("alice");
    unknown.policy = Some("nope".into());
    assert!(matches!(
        engine.create(unknown, &as_shop).await,
        Err(EngineError::UnknownPolicy(p)) if p == "nope"
    ));
    // A name labels the application's sessions on the account page.
    for name in [
        "Portcullis",
        "PORTCULLIS",
        "two\nlines",
        " padded",
        "tab\there",
    ] {
        assert!(
            matches!(
                engine
                    .add_application(
                        ApplicationChange {
                            name: Some(name.into()),
                            ..Default::default()
                        },
                        &Actor::cli(),
                    )
                    .await,
                Err(EngineError::Invalid(_))
            ),
            "{name:?}"
        );
    }
    let mut for_blog = request("alice");
    for_blog.application = Some(blog.id.clone());
    assert!(matches!(
        engine.create(for_blog.clone(), &as_shop).await,
        Err(EngineError::Invalid(_))
    ));
    assert!(matches!(
        engine
            .create(request("alice"), &Principal::operator())
            .await,
        Err(EngineError::Invalid(_))
    ));
    let by_operator = engine
        .create(for_blog, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(by_operator.session.application, blog.id);
    assert_eq!(by_operator.session.policy, "default");
    let live: BTreeSet<(SessionId, AppId)> = engine
        .list_subject("alice", true, &Principal::operator())
        .await
        .unwrap()
        .iter()
        .map(|s| (s.id.clone(), s.application.clone()))
        .collect();
    assert_eq!(
        live,
        [
            (issued.session.id.clone(), shop.id),
            (by_operator.session.id.clone(), blog.id)
        ]
        .into()
    );
}

/// Each grant allows exactly what it names: listing a person's sessions across applications
/// (`list_all_sessions`), ending them everywhere (`end_everywhere`), reading every
/// application's events (`read_all_events`); without it the answer is `GrantRequired`, and no
/// grant lets an application use another's token or read another's session by id. A grant
/// added later applies from the key's next authentication.
pub async fn grants_allow_exactly_what_they_name<S: Store>(store: S) {
    let engine = engine(store);
    let (_, plain_secret, plain) = register(&engine, "plain", &[]).await;
    let (_, _, lister) = register(&engine, "lister", &[Grant::ListAllSessions]).await;
    let (_, _, ender) = register(&engine, "ender", &[Grant::EndEverywhere]).await;
    let (_, _, reader) = register(&engine, "reader", &[Grant::ReadAllEvents]).await;
    let mut sessions = vec![];
    for principal in [&plain, &lister, &ender, &reader] {
        sessions.push(engine.create(request("alice"), principal).await.unwrap());
    }
    let every: BTreeSet<SessionId> = sessions.iter().map(|i| i.session.id.clone()).collect();
    let plains = &sessions[0];
    let all_events = EventQuery {
        limit: 1000,
        ..Default::default()
    };
    let device = Device::default();

    // No grant: none of the three.
    grant_required(
        engine.list_subject("alice", true, &plain).await,
        Grant::ListAllSessions,
    );
    grant_required(
        engine
            .end_subject("alice", None, EndReason::PasswordChanged, true, &plain)
            .await,
        Grant::EndEverywhere,
    );
    grant_required(
        engine.events(&all_events, true, &plain).await,
        Grant::ReadAllEvents,
    );

    // list_all_sessions: lists everyone's, and nothing else.
    let listed = engine.list_subject("alice", true, &lister).await.unwrap();
    assert_eq!(ids(&listed), every);
    grant_required(
        engine
            .end_subject("alice", None, EndReason::PasswordChanged, true, &lister)
            .await,
        Grant::EndEverywhere,
    );
    grant_required(
        engine.events(&all_events, true, &lister).await,
        Grant::ReadAllEvents,
    );

    // read_all_events: reads everyone's, and nothing else.
    let read = engine.events(&all_events, true, &reader).await.unwrap();
    assert!(
        read.iter()
            .any(|e| e.session_id.as_ref() == Some(&plains.session.id))
    );
    let read_ids: BTreeSet<SessionId> = read.iter().filter_map(|e| e.session_id.clone()).collect();
    assert_eq!(read_ids, every);
    grant_required(
        engine.list_subject("alice", true, &reader).await,
        Grant::ListAllSessions,
    );
    grant_required(
        engine
            .end_subject("alice", None, EndReason::PasswordChanged, true, &reader)
            .await,
        Grant::EndEverywhere,
    );

    // No grant reaches another application's session by token or by id.
    for principal in [&lister, &ender, &reader] {
        assert_eq!(
            rejection(
                engine
                    .validate(plains.token.expose(), true, &device, principal)
                    .await
            ),
            Rejection::Unknown
        );
        not_found(engine.get(&plains.session.id, principal).await);
        not_found(engine.revoke(&plains.session.id, principal).await);
    }

    // end_everywhere: ends everyone's but the exception, and nothing else.
    grant_required(
        engine.list_subject("alice", true, &ender).await,
        Grant::ListAllSessions,
    );
    grant_required(
        engine.events(&all_events, true, &ender).await,
        Grant::ReadAllEvents,
    );
    let own = &sessions[2];
    let ended = engine
        .end_subject(
            "alice",
            Some(&own.session.id),
            EndReason::PasswordChanged,
            true,
            &ender,
        )
        .await
        .unwrap();
    assert_eq!(ended, 3);
    assert_eq!(
        rejection(
            engine
                .validate(plains.token.expose(), true, &device, &plain)
                .await
        ),
        Rejection::Revoked(EndReason::PasswordChanged)
    );
    engine
        .validate(own.token.expose(), true, &device, &ender)
        .await
        .unwrap();
    assert_eq!(
        ids(&engine.list_subject("alice", true, &lister).await.unwrap()),
        [own.session.id.clone()].into()
    );

    // A grant given later holds from the next authentication of the key.
    engine
        .update_application(
            "plain",
            ApplicationChange {
                grants: Some(vec![Grant::ListAllSessions]),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let plain = engine
        .authenticate_api_key(plain_secret.expose())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&engine.list_subject("alice", true, &plain).await.unwrap()),
        [own.session.id.clone()].into()
    );
    grant_required(
        engine.events(&all_events, true, &plain).await,
        Grant::ReadAllEvents,
    );
}

/// Removing an application (an administrator's action) ends every one of its sessions at once
/// with `app_removed`, audited; its keys stop authenticating (even where a removal stopped
/// before revoking them) and no new key is made for it; other applications carry on.
pub async fn asvs5_7_4_5_remove_application_ends_its_sessions_and_stops_its_keys<S: Store>(
    store: S,
) {
    let engine = engine(store);
    let (shop_app, shop_secret, shop) = register(&engine, "shop", &[]).await;
    let (_, blog_secret, blog) = register(&engine, "blog", &[]).await;
    let alice = engine.create(request("alice"), &shop).await.unwrap();
    let bob = engine.create(request("bob"), &shop).await.unwrap();
    let blogs = engine.create(request("alice"), &blog).await.unwrap();

    let removed = engine
        .remove_application("shop", &Actor::cli())
        .await
        .unwrap();
    assert_eq!(removed.application, shop_app);
    assert_eq!(removed.sessions_ended, 2);
    assert_eq!(removed.api_keys_revoked, 1);
    let operator = Principal::operator();
    let device = Device::default();
    for issued in [&alice, &bob] {
        let record = engine.get(&issued.session.id, &operator).await.unwrap();
        assert_eq!(
            record.ended.as_ref().map(|e| e.reason),
            Some(EndReason::AppRemoved)
        );
        assert_eq!(
            rejection(
                engine
                    .validate(issued.token.expose(), true, &device, &operator)
                    .await
            ),
            Rejection::Revoked(EndReason::AppRemoved)
        );
    }
    assert!(
        engine
            .authenticate_api_key(shop_secret.expose())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        engine
            .authenticate_api_key(blog_secret.expose())
            .await
            .unwrap()
            .is_some()
    );
    engine
        .validate(blogs.token.expose(), true, &device, &blog)
        .await
        .unwrap();
    assert!(matches!(
        engine.application("shop").await,
        Err(EngineError::UnknownApplication(_))
    ));
    assert!(matches!(
        engine.application(shop_app.id.as_str()).await,
        Err(EngineError::UnknownApplication(_))
    ));
    let names: Vec<String> = engine
        .list_applications()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, vec!["blog".to_owned()]);
    assert!(matches!(
        engine.remove_application("shop", &Actor::cli()).await,
        Err(EngineError::UnknownApplication(_))
    ));
    assert!(matches!(
        engine
            .create_api_key("again", shop_app.id.as_str(), &Actor::cli())
            .await,
        Err(EngineError::UnknownApplication(_))
    ));
    // Audited: the removal, the key's revocation and each session's ending, by the operator.
    let trail = engine
        .events(
            &EventQuery {
                application: Some(shop_app.id.clone()),
                limit: 100,
                ..Default::default()
            },
            true,
            &operator,
        )
        .await
        .unwrap();
    // (Sharded stores order events of different subjects within a millisecond by shard, so
    // compare them as a set.)
    let mut recorded: Vec<(&str, Option<&str>)> = trail
        .iter()
        .map(|e| (e.kind.as_str(), e.reason.map(EndReason::as_str)))
        .collect();
    recorded.sort_unstable();
    let mut expected = vec![
        ("application.created", None),
        ("api_key.created", None),
        ("session.created", None),
        ("session.created", None),
        ("application.removed", None),
        ("api_key.revoked", None),
        ("session.ended", Some("app_removed")),
        ("session.ended", Some("app_removed")),
    ];
    expected.sort_unstable();
    assert_eq!(recorded, expected);
    assert!(
        trail
            .iter()
            .all(|e| e.actor == Actor::cli() || e.kind == EventKind::SessionCreated)
    );

    // A key is accepted only while its application exists, revoked or not.
    let (temp, temp_secret, _) = register(&engine, "temp", &[]).await;
    engine
        .store()
        .remove_application(&temp.id, app_event(EventKind::ApplicationRemoved, &temp))
        .await
        .unwrap()
        .unwrap();
    assert!(
        engine
            .authenticate_api_key(temp_secret.expose())
            .await
            .unwrap()
            .is_none()
    );
}

/// On upgrade, API keys of the previous release (which could do everything) move to an
/// application created for them, `app_legacy`, with every policy and every grant, once; the
/// previous release's sessions are that application's and it reaches them. Without such keys
/// nothing is created.
pub async fn adopt_legacy_keys_creates_the_legacy_application_once<S: Store>(store: S) {
    let engine = engine(store);
    assert!(engine.adopt_legacy_keys().await.unwrap().is_none());
    assert!(engine.list_applications().await.unwrap().is_empty());
    // Someone already called an application "legacy".
    let (named_legacy, _, _) = register(&engine, "legacy", &[]).await;
    assert!(engine.adopt_legacy_keys().await.unwrap().is_none());

    // What the previous release left: a key and a session of no application.
    let (secret, key) = api_key("old", &legacy_app(), &random());
    engine
        .store()
        .add_api_key(key.clone(), key_event(EventKind::ApiKeyCreated, &key))
        .await
        .unwrap();
    let (old_token, old_session) = session_of("alice", &legacy_app(), engine.now(), &random());
    engine
        .store()
        .insert(plain_insert(old_session.clone()))
        .await
        .unwrap();
    assert!(
        engine
            .authenticate_api_key(secret.expose())
            .await
            .unwrap()
            .is_none(),
        "a key is accepted only while its application exists"
    );

    let adopted = engine
        .adopt_legacy_keys()
        .await
        .unwrap()
        .expect("created for the keys");
    assert_eq!(adopted.id, legacy_app());
    assert_eq!(adopted.name, "legacy-1");
    assert_eq!(adopted.policies, vec!["*".to_owned()]);
    assert_eq!(adopted.grants, Grant::ALL.into_iter().collect());
    assert!(engine.adopt_legacy_keys().await.unwrap().is_none(), "once");
    assert_eq!(
        engine.list_applications().await.unwrap(),
        vec![named_legacy, adopted.clone()]
    );

    let principal = engine
        .authenticate_api_key(secret.expose())
        .await
        .unwrap()
        .expect("the old key works again");
    assert_eq!(principal.application_id(), Some(&legacy_app()));
    assert!(Grant::ALL.into_iter().all(|g| principal.holds(g)));
    let validated = engine
        .validate(old_token.expose(), true, &Device::default(), &principal)
        .await
        .unwrap();
    assert_eq!(validated.session.id, old_session.id);
    let created = engine
        .events(
            &EventQuery {
                limit: 100,
                ..Default::default()
            },
            false,
            &principal,
        )
        .await
        .unwrap();
    assert!(
        created
            .iter()
            .any(|e| e.kind == EventKind::ApplicationCreated
                && e.application == Some(legacy_app()))
    );
}

/// Applications sharing a policy: a session limit counts only the creating application's
/// sessions (another's are neither ended nor make it refuse), and a re-constitution gives back
/// only the same application's data.
pub async fn a_limit_and_a_reconstitution_reach_only_the_applications_own_sessions<S: Store>(
    store: S,
) {
    let clock = Arc::new(ManualClock::default());
    let engine = Engine::new(
        store,
        policies(),
        clock.clone(),
        Arc::new(SeededRandom::new(17)),
    );
    let (_, _, shop) = register(&engine, "shop", &[]).await;
    let (_, _, blog) = register(&engine, "blog", &[]).await;
    let with = |policy: &str, data: serde_json::Value, reconstitute: bool| NewSession {
        policy: Some(policy.into()),
        data,
        reconstitute,
        ..request("alice")
    };
    let device = Device::default();

    // Evicting: the other application's session neither is ended nor ends the first.
    let shops = engine
        .create(with("one", serde_json::Value::Null, false), &shop)
        .await
        .unwrap();
    let blogs = engine
        .create(with("one", serde_json::Value::Null, false), &blog)
        .await
        .unwrap();
    engine
        .validate(shops.token.expose(), false, &device, &shop)
        .await
        .expect("another application's session evicts nothing");
    engine
        .create(with("one", serde_json::Value::Null, false), &shop)
        .await
        .unwrap();
    assert_eq!(
        rejection(
            engine
                .validate(shops.token.expose(), false, &device, &shop)
                .await
        ),
        Rejection::Revoked(EndReason::NewDevice),
        "the application's own session is evicted"
    );
    engine
        .validate(blogs.token.expose(), false, &device, &blog)
        .await
        .expect("another application's session is never evicted");

    // Refusing: only for the application's own sessions.
    engine
        .create(with("only", serde_json::Value::Null, false), &shop)
        .await
        .unwrap();
    engine
        .create(with("only", serde_json::Value::Null, false), &blog)
        .await
        .expect("another application's session does not count");
    assert!(matches!(
        engine
            .create(with("only", serde_json::Value::Null, false), &shop)
            .await,
        Err(EngineError::LimitReached)
    ));

    // Re-constituting: the timed-out session's data goes back to its own application only.
    let secret = serde_json::json!({"secret": "shop only"});
    let timed_out = engine
        .create(with("back", secret.clone(), false), &shop)
        .await
        .unwrap();
    clock.advance(MIN * 2);
    engine.sweep().await.unwrap();
    let other = engine
        .create(with("back", serde_json::Value::Null, true), &blog)
        .await
        .unwrap();
    assert_eq!(other.session.data, serde_json::Value::Null);
    assert_eq!(other.session.reconstituted_from, None);
    let own = engine
        .create(with("back", serde_json::Value::Null, true), &shop)
        .await
        .unwrap();
    assert_eq!(own.session.data, secret);
    assert_eq!(
        own.session.reconstituted_from.as_ref(),
        Some(&timed_out.session.id)
    );
}
