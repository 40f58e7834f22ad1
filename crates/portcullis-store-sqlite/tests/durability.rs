//! What the SQLite store acknowledged is there after reopening the file.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, ApplicationChange, Device, EndReason, Engine, EngineError, EventKind, EventQuery, Grant,
    ManualClock, NewSession, OsRandom, PolicySet, Principal, Rejection, SessionStore,
};

fn request(subject: &str) -> NewSession {
    NewSession {
        subject: subject.into(),
        auth: portcullis_core::AuthContext {
            methods: vec![],
            level: 1,
        },
        ..Default::default()
    }
}

fn named(name: &str) -> ApplicationChange {
    ApplicationChange {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn sessions_endings_touches_keys_applications_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let cli = Actor::cli();
    let operator = Principal::operator();
    let (kept, ended, key_secret, last_seq, applications) = {
        let store = portcullis_store_sqlite::open(&path).await.unwrap();
        let engine = Engine::new(
            store,
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        );
        // Listed oldest first: a millisecond apart, so the order does not fall to the random ids.
        engine.add_application(named("shop"), &cli).await.unwrap();
        clock.advance(Duration::from_millis(1));
        engine.add_application(named("blog"), &cli).await.unwrap();
        engine.add_application(named("gone"), &cli).await.unwrap();
        engine
            .update_application(
                "blog",
                ApplicationChange {
                    name: Some("journal".into()),
                    grants: Some(vec![Grant::ReadAllEvents, Grant::ListAllSessions]),
                    ..Default::default()
                },
                &cli,
            )
            .await
            .unwrap();
        engine.remove_application("gone", &cli).await.unwrap();
        let (key_secret, _) = engine.create_api_key("shop", "shop", &cli).await.unwrap();
        let shop = engine
            .authenticate_api_key(key_secret.expose())
            .await
            .unwrap()
            .unwrap();
        let kept = engine.create(request("alice"), &shop).await.unwrap();
        let ended = engine.create(request("alice"), &shop).await.unwrap();
        engine.logout(ended.token.expose(), &shop).await.unwrap();
        clock.advance(Duration::from_secs(600));
        engine
            .validate(kept.token.expose(), true, &Device::default(), &shop)
            .await
            .unwrap();
        engine.sweep().await.unwrap(); // writes the coalesced touch
        let last_seq = engine
            .events(
                &EventQuery {
                    limit: 100,
                    ..Default::default()
                },
                false,
                &operator,
            )
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq;
        let applications = engine.list_applications().await.unwrap();
        engine.store().journal().close().await;
        (kept, ended, key_secret, last_seq, applications)
    };
    let names: Vec<&str> = applications.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["shop", "journal"]);

    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let engine = Engine::new(
        store,
        PolicySet::default(),
        clock.clone(),
        Arc::new(OsRandom),
    );
    assert_eq!(engine.list_applications().await.unwrap(), applications);
    assert!(matches!(
        engine.application("gone").await,
        Err(EngineError::UnknownApplication(_))
    ));
    let shop = engine
        .authenticate_api_key(key_secret.expose())
        .await
        .unwrap()
        .expect("the key and its application survive");
    assert_eq!(shop.application_id(), Some(&applications[0].id));
    let v = engine
        .validate(kept.token.expose(), false, &Device::default(), &shop)
        .await
        .unwrap();
    assert_eq!(v.session.application, applications[0].id);
    assert_eq!(
        v.session.last_seen_at,
        kept.session.created_at.plus(Duration::from_secs(600))
    );
    assert_eq!(v.expires_in, Duration::from_secs(900));
    assert!(matches!(
        engine
            .validate(ended.token.expose(), true, &Device::default(), &shop)
            .await,
        Err(EngineError::Rejected(Rejection::LoggedOut))
    ));
    assert_eq!(
        engine
            .get(&ended.session.id, &shop)
            .await
            .unwrap()
            .ended
            .as_ref()
            .unwrap()
            .reason,
        EndReason::Logout
    );
    // The events keep their application: the shop's own are found by it.
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
    let kinds: Vec<EventKind> = own.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::ApplicationCreated,
            EventKind::ApiKeyCreated,
            EventKind::SessionCreated,
            EventKind::SessionCreated,
            EventKind::SessionEnded,
        ]
    );
    // Positions continue after the last one written before the restart.
    let next = engine.create(request("bob"), &shop).await.unwrap();
    let events = engine
        .events(
            &EventQuery {
                session_id: Some(next.session.id.clone()),
                limit: 10,
                ..Default::default()
            },
            false,
            &shop,
        )
        .await
        .unwrap();
    assert_eq!(events[0].seq, last_seq + 1);
    assert_eq!(engine.store().list_subject("alice").await.unwrap().len(), 1);
}
