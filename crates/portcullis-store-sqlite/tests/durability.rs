//! What the SQLite store acknowledged is there after reopening the file.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, Device, EndReason, Engine, EngineError, EventQuery, ManualClock, NewSession, OsRandom,
    PolicySet, Rejection, SessionStore,
};

#[tokio::test]
async fn sessions_endings_touches_keys_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let actor = Actor::cli();
    let (kept, ended, key_secret, last_seq) = {
        let store = portcullis_store_sqlite::open(&path).await.unwrap();
        let engine = Engine::new(
            store,
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        );
        let request = |s: &str| NewSession {
            subject: s.into(),
            auth: portcullis_core::AuthContext {
                methods: vec![],
                level: 1,
            },
            ..Default::default()
        };
        let kept = engine.create(request("alice"), &actor).await.unwrap();
        let ended = engine.create(request("alice"), &actor).await.unwrap();
        engine.logout(ended.token.expose(), &actor).await.unwrap();
        clock.advance(Duration::from_secs(600));
        engine
            .validate(kept.token.expose(), true, &Device::default())
            .await
            .unwrap();
        engine.sweep().await.unwrap(); // writes the coalesced touch
        let (key_secret, _) = engine.create_api_key("shop", &actor).await.unwrap();
        let last_seq = engine
            .events(&EventQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq;
        engine.store().journal().close().await;
        (kept, ended, key_secret, last_seq)
    };
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let engine = Engine::new(
        store,
        PolicySet::default(),
        clock.clone(),
        Arc::new(OsRandom),
    );
    let v = engine
        .validate(kept.token.expose(), false, &Device::default())
        .await
        .unwrap();
    assert_eq!(
        v.session.last_seen_at,
        kept.session.created_at.plus(Duration::from_secs(600))
    );
    assert_eq!(v.expires_in, Duration::from_secs(900));
    assert!(matches!(
        engine
            .validate(ended.token.expose(), true, &Device::default())
            .await,
        Err(EngineError::Rejected(Rejection::LoggedOut))
    ));
    assert_eq!(
        engine
            .get(&ended.session.id)
            .await
            .unwrap()
            .ended
            .as_ref()
            .unwrap()
            .reason,
        EndReason::Logout
    );
    assert!(
        engine
            .authenticate_api_key(key_secret.expose())
            .await
            .unwrap()
            .is_some()
    );
    // Positions continue after the last one written before the restart.
    let next = engine
        .create(
            NewSession {
                subject: "bob".into(),
                auth: portcullis_core::AuthContext {
                    methods: vec![],
                    level: 1,
                },
                ..Default::default()
            },
            &actor,
        )
        .await
        .unwrap();
    let events = engine
        .events(&EventQuery {
            session_id: Some(next.session.id.clone()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events[0].seq, last_seq + 1);
    assert_eq!(engine.store().list_subject("alice").await.unwrap().len(), 1);
}
