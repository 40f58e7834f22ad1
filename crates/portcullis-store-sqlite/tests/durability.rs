//! What the SQLite store acknowledged is there after reopening the file.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, ApplicationChange, Clock, Device, EndReason, Engine, EngineError, EventKind, EventQuery,
    Grant, ManualClock, NewSession, OsRandom, PolicySet, Principal, Rejection, SessionStore,
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

/// An engine over the SQLite file at `path`, opened now, on `clock`.
async fn engine_over(
    path: &std::path::Path,
    clock: &Arc<ManualClock>,
) -> Engine<portcullis_store_sqlite::SqliteStore> {
    let store = portcullis_store_sqlite::open(path).await.unwrap();
    Engine::new(
        store,
        PolicySet::default(),
        clock.clone(),
        Arc::new(OsRandom),
    )
}

/// Registers the application "shop" and signs in as it with a key of its own.
async fn shop<S: portcullis_core::Store>(engine: &Engine<S>) -> Principal {
    engine
        .add_application(named("shop"), &Actor::cli())
        .await
        .unwrap();
    shop_key(engine, "shop").await
}

/// Signs in as the application "shop" with a new key named `name`.
async fn shop_key<S: portcullis_core::Store>(engine: &Engine<S>, name: &str) -> Principal {
    let (key, _) = engine
        .create_api_key(name, "shop", &Actor::cli())
        .await
        .unwrap();
    engine
        .authenticate_api_key(key.expose())
        .await
        .unwrap()
        .unwrap()
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
        let engine = engine_over(&path, &clock).await;
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

    let engine = engine_over(&path, &clock).await;
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

/// A client registration, code, signing key, refresh token and consent written before a
/// restart read back whole after it, and an application that is no client reads back as none.
#[tokio::test]
async fn the_providers_records_survive_reopen() {
    use portcullis_core::oidc::{
        AuthorizationCode, Client, ClientAuth, CodeStore, Consent, ConsentStore, GrantType,
        Redemption, RefreshToken, RefreshTokenStore, Rotated, SigningAlg, SigningKey,
        SigningKeyStore,
    };
    use portcullis_core::{ApplicationStore, AuditEvent, PublicId, TokenHash};
    use portcullis_store_tests::{application, t0};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let event = |app: &portcullis_core::Application, kind| {
        AuditEvent::for_application(kind, &app.id, t0(), &Actor::cli(), serde_json::json!({}))
    };
    let mut rp = application("rp");
    rp.client = Some(Client {
        auth: ClientAuth::Secret(TokenHash([7; 32])),
        redirect_uris: vec!["https://rp.example/cb".into()],
        post_logout_redirect_uris: vec!["https://rp.example/bye".into()],
        backchannel_logout_uri: Some("https://rp.example/backchannel".into()),
        frontchannel_logout_uri: None,
        scopes: ["openid", "offline_access"].map(String::from).into(),
        grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
        require_consent: true,
        id_token_signed_response_alg: None,
        upstream: None,
    });
    let plain = application("plain");
    let code = AuthorizationCode {
        hash: TokenHash([1; 32]),
        client: rp.id.clone(),
        subject: "usr_alice".into(),
        sso_session: PublicId::from_string("ses_sso".into()),
        redirect_uri: "https://rp.example/cb".into(),
        scopes: vec!["openid".into()],
        nonce: Some("n".into()),
        code_challenge: None,
        auth_time: t0(),
        acr: None,
        amr: vec!["pwd".into()],
        issued_at: t0(),
        expires_at: t0().plus(portcullis_core::oidc::CODE_LIFETIME),
        redeemed_for: None,
    };
    let redeemed_for = PublicId::from_string("ses_app".into());
    let key = SigningKey {
        kid: "kid-1".into(),
        alg: SigningAlg::Es256,
        sealed_private: "v1.k1.sealed".into(),
        public_jwk: r#"{"kty":"EC"}"#.into(),
        created_at: t0(),
        retired_at: None,
    };
    let first = RefreshToken {
        hash: TokenHash([2; 32]),
        family: redeemed_for.clone(),
        client: rp.id.clone(),
        subject: "usr_alice".into(),
        scopes: vec!["openid".into(), "offline_access".into()],
        issued_at: t0(),
        expires_at: t0().plus(Duration::from_secs(86_400)),
        rotated: None,
    };
    let second = RefreshToken {
        hash: TokenHash([3; 32]),
        issued_at: t0().plus(Duration::from_secs(60)),
        ..first.clone()
    };
    let consent = Consent {
        subject: "usr_alice".into(),
        client: rp.id.clone(),
        scopes: ["openid", "offline_access"].map(String::from).into(),
        granted_at: t0(),
    };
    {
        let store = portcullis_store_sqlite::open(&path).await.unwrap();
        for app in [&rp, &plain] {
            store
                .add_application(app.clone(), event(app, EventKind::ApplicationCreated))
                .await
                .unwrap();
        }
        let journal = store.journal();
        journal.codes().add_code(code.clone()).await.unwrap();
        assert!(matches!(
            journal
                .codes()
                .redeem_code(&code.hash, &redeemed_for)
                .await
                .unwrap(),
            Redemption::First(_)
        ));
        assert!(
            journal
                .signing_keys()
                .add_signing_key(key.clone(), None)
                .await
                .unwrap()
        );
        journal
            .refresh_tokens()
            .add_refresh_token(first.clone())
            .await
            .unwrap();
        journal
            .refresh_tokens()
            .rotate_refresh_token(&first.hash, second.clone(), "sealed".into())
            .await
            .unwrap();
        journal
            .consents()
            .grant_consent(consent.clone())
            .await
            .unwrap();
        journal.close().await;
    }

    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    assert_eq!(
        store.find_application(&rp.id).await.unwrap(),
        Some(rp.clone())
    );
    assert_eq!(
        store.find_application(&plain.id).await.unwrap(),
        Some(plain)
    );
    let journal = store.journal();
    match journal
        .codes()
        .redeem_code(&code.hash, &PublicId::from_string("ses_late".into()))
        .await
        .unwrap()
    {
        Redemption::Replayed(replayed) => {
            assert_eq!(replayed.redeemed_for, Some(redeemed_for.clone()));
            assert_eq!(
                AuthorizationCode {
                    redeemed_for: None,
                    ..replayed
                },
                code
            );
        }
        other => panic!("the redemption was kept: {other:?}"),
    }
    assert_eq!(
        journal.signing_keys().signing_keys().await.unwrap(),
        vec![key]
    );
    let kept = journal.refresh_tokens();
    assert_eq!(
        kept.refresh_token(&first.hash).await.unwrap(),
        Some(RefreshToken {
            rotated: Some(Rotated {
                at: second.issued_at,
                successor: second.hash,
                sealed_successor: "sealed".into(),
            }),
            ..first
        })
    );
    assert_eq!(
        kept.refresh_token(&second.hash).await.unwrap(),
        Some(second)
    );
    assert_eq!(
        journal
            .consents()
            .consent("usr_alice", &rp.id)
            .await
            .unwrap(),
        Some(consent)
    );
}

/// Makes SQLite refuse, from another connection, every row of `table` whose subject is `doomed`.
async fn refuse_doomed_rows(path: &std::path::Path, table: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&options)
        .await
        .unwrap();
    let trigger = format!(
        "CREATE TRIGGER refuse_doomed_{table} BEFORE INSERT ON {table}
         WHEN NEW.subject = 'doomed' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    );
    sqlx::query(sqlx::AssertSqlSafe(trigger))
        .execute(&mut other)
        .await
        .unwrap();
}

/// Group commit's failure path: a change whose transaction fails is refused, and the cache
/// reloads what is durable at once, so nothing of it shows (no session listed for its subject),
/// the store takes changes again, and reopening finds exactly what was acknowledged.
#[tokio::test]
async fn a_failed_queued_change_is_refused_and_memory_goes_back_to_what_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let operator = Principal::operator();
    let (alice, carol) = {
        let engine = engine_over(&path, &clock).await;
        let shop = shop(&engine).await;
        let alice = engine.create(request("alice"), &shop).await.unwrap();

        refuse_doomed_rows(&path, "sessions").await;

        let refused = engine.create(request("doomed"), &shop).await;
        assert!(
            matches!(refused, Err(EngineError::Store(_))),
            "{:?}",
            refused.map(|i| i.session.id.clone())
        );
        assert!(
            engine
                .list_subject("doomed", true, &operator)
                .await
                .unwrap()
                .is_empty(),
            "nothing of the refused change is in memory"
        );
        engine
            .validate(alice.token.expose(), false, &Device::default(), &shop)
            .await
            .expect("what was durable before is still there");
        let carol = engine.create(request("carol"), &shop).await.unwrap();
        (alice, carol)
    };
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    for (subject, issued) in [("alice", &alice), ("carol", &carol)] {
        let found = store.find_by_id(&issued.session.id).await.unwrap();
        assert!(found.is_some_and(|s| s.is_live()), "{subject}");
    }
    assert!(store.list_subject("doomed").await.unwrap().is_empty());
}

/// The provider's refresh tokens share the journal's writer: a rotation refused by SQLite is
/// answered as unavailable and nothing of it is stored, and it does not make the journal refuse
/// the session changes that come after it (those plan on nothing the rotation did).
#[tokio::test]
async fn a_refused_provider_write_fails_alone() {
    use portcullis_core::oidc::{RefreshToken, RefreshTokenStore, Rotation};
    use portcullis_core::{PublicId, StoreError, TokenHash};
    use portcullis_store_tests::t0;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let tokens = store.journal().refresh_tokens();
    let token = |byte: u8, subject: &str| RefreshToken {
        hash: TokenHash([byte; 32]),
        family: PublicId::from_string("ses_family".into()),
        client: PublicId::from_string("app_rp".into()),
        subject: subject.into(),
        scopes: vec!["openid".into()],
        issued_at: t0(),
        expires_at: t0().plus(Duration::from_secs(3600)),
        rotated: None,
    };
    tokens.add_refresh_token(token(1, "alice")).await.unwrap();

    refuse_doomed_rows(&path, "oidc_refresh_tokens").await;

    let refused = tokens
        .rotate_refresh_token(&TokenHash([1; 32]), token(2, "doomed"), "sealed".into())
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let first = tokens.refresh_token(&TokenHash([1; 32])).await.unwrap();
    assert!(
        first.is_some_and(|t| t.rotated.is_none()),
        "the refused rotation marked nothing"
    );
    assert!(
        tokens
            .refresh_token(&TokenHash([2; 32]))
            .await
            .unwrap()
            .is_none()
    );

    let clock = Arc::new(ManualClock::default());
    let engine = Engine::new(store, PolicySet::default(), clock, Arc::new(OsRandom));
    let cli = Actor::cli();
    engine
        .add_application(named("shop"), &cli)
        .await
        .expect("the journal still takes changes");

    let rotated = tokens
        .rotate_refresh_token(&TokenHash([1; 32]), token(3, "alice"), "sealed".into())
        .await
        .unwrap();
    assert!(matches!(rotated, Rotation::Rotated(_)), "{rotated:?}");
}

/// Sessions read back on open still time out, in deadline order: opening rebuilds the deadline
/// index from them (at once, after the last batch).
#[tokio::test]
async fn reopened_sessions_still_time_out_in_deadline_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let created = {
        let engine = engine_over(&path, &clock).await;
        let shop = shop(&engine).await;
        let mut created = Vec::new();
        for subject in ["first", "second", "third"] {
            created.push(
                engine
                    .create(request(subject), &shop)
                    .await
                    .unwrap()
                    .session,
            );
            clock.advance(Duration::from_secs(60));
        }
        engine.store().journal().close().await;
        created
    };
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    // Idle deadlines 15 minutes after each creation: 16.5 minutes after the first, the
    // first two have passed and the third has not.
    clock.set(
        created[0]
            .created_at
            .plus(Duration::from_secs(15 * 60 + 90)),
    );
    let due: Vec<_> = store
        .due(clock.now(), 10)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(due, [created[0].id.clone(), created[1].id.clone()]);
}

/// Sessions read back on open (indexed from their records' outlines, not decoded) keep their
/// places in every index: listed under their subject, counted live per application and policy,
/// and under their parent, so that ending it still ends them.
#[tokio::test]
async fn reopened_sessions_keep_their_subject_parent_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let (parent, child, counts) = {
        let engine = engine_over(&path, &clock).await;
        let shop = shop(&engine).await;
        let parent = engine.create(request("alice"), &shop).await.unwrap();
        let child = NewSession {
            parent: Some(parent.session.id.clone()),
            ..request("alice")
        };
        let child = engine.create(child, &shop).await.unwrap();
        engine.create(request("bob"), &shop).await.unwrap();
        let ended = engine.create(request("alice"), &shop).await.unwrap();
        engine.logout(ended.token.expose(), &shop).await.unwrap();
        let counts = engine.store().live_counts().await.unwrap();
        assert_eq!(counts.iter().map(|c| c.sessions).sum::<u64>(), 3);
        engine.store().journal().close().await;
        (parent.session, child.session, counts)
    };
    let engine = engine_over(&path, &clock).await;
    let shop = shop_key(&engine, "again").await;
    assert_eq!(engine.store().live_counts().await.unwrap(), counts);
    let alice: Vec<_> = engine
        .store()
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(alice, [parent.id.clone(), child.id.clone()]);
    engine
        .end(&parent.id, EndReason::Logout, &shop)
        .await
        .unwrap();
    let child = engine.store().find_by_id(&child.id).await.unwrap().unwrap();
    assert_eq!(
        child.ended.as_ref().map(|e| e.reason),
        Some(EndReason::ParentEnded)
    );
}

/// A failed change's recovery sets back what it and every change refused behind it held (a
/// logout queued behind it is undone, a create behind it is gone), and only that: the other
/// sessions are answered all the while, never "not found" as if they had ended (which tells an
/// application to drop its cookie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_sets_back_only_what_failed_and_every_other_session_is_answered_throughout() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let clock = Arc::new(ManualClock::default());
    let engine = Arc::new(engine_over(&path, &clock).await);
    let shop = shop(&engine).await;
    // Enough sessions that reading them all again would take a while.
    let mut tokens = Vec::new();
    for chunk in 0..20 {
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..500 {
            let (engine, shop) = (engine.clone(), shop.clone());
            creates.spawn(async move {
                let issued = engine
                    .create(request(&format!("user-{chunk}-{i}")), &shop)
                    .await
                    .unwrap();
                issued.token.expose().to_owned()
            });
        }
        tokens.extend(creates.join_all().await);
    }
    let alice = engine.create(request("alice"), &shop).await.unwrap();
    refuse_doomed_rows(&path, "sessions").await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (engine, shop, stop) = (engine.clone(), shop.clone(), stop.clone());
        async move {
            let mut answered = 0usize;
            while !stop.load(Ordering::Acquire) {
                for token in tokens.iter().step_by(97) {
                    let validated = engine
                        .validate(token, false, &Device::default(), &shop)
                        .await;
                    assert!(
                        validated.is_ok(),
                        "an untouched session was refused during recovery: {:?}",
                        validated.err()
                    );
                    answered += 1;
                }
                tokio::task::yield_now().await;
            }
            answered
        }
    });

    // The doomed create fails; the logout and the create queued behind it are refused.
    let (doomed, logout, dave) = tokio::join!(
        engine.create(request("doomed"), &shop),
        engine.logout(alice.token.expose(), &shop),
        engine.create(request("dave"), &shop),
    );
    assert!(doomed.is_err() && logout.is_err() && dave.is_err());
    let carol = engine.create(request("carol"), &shop).await.unwrap();
    stop.store(true, Ordering::Release);
    assert!(reader.await.unwrap() > 0);

    for subject in ["doomed", "dave"] {
        let listed = engine
            .list_subject(subject, true, &Principal::operator())
            .await
            .unwrap();
        assert!(listed.is_empty(), "{subject}'s refused create is gone");
    }
    engine
        .validate(alice.token.expose(), false, &Device::default(), &shop)
        .await
        .expect("alice's logout was refused: she is still signed in");
    drop(engine);

    let reopened = engine_over(&path, &clock).await;
    for (subject, issued) in [("alice", &alice), ("carol", &carol)] {
        reopened
            .validate(issued.token.expose(), false, &Device::default(), &shop)
            .await
            .unwrap_or_else(|err| panic!("{subject}: {err:?}"));
    }
    assert!(
        reopened
            .list_subject("dave", true, &Principal::operator())
            .await
            .unwrap()
            .is_empty()
    );
}

/// The database holds password hashes and the audit trail: a new one, its write-ahead log and
/// its shared memory are readable by their owner only, whatever the process's umask.
#[tokio::test]
async fn a_new_database_and_its_journal_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = portcullis_store_sqlite::open(&path).await.unwrap();
    let engine = Engine::new(
        store,
        PolicySet::default(),
        Arc::new(ManualClock::default()),
        Arc::new(OsRandom),
    );
    engine
        .add_application(
            ApplicationChange {
                name: Some("shop".into()),
                ..Default::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let file = dir.path().join(format!("portcullis.db{suffix}"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
}
