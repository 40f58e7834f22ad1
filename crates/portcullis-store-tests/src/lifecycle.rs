//! Cases for the whole session lifecycle, run by the engine over the store under test.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, AuthContext, Binding, Device, Elevate, EndReason, Engine, EngineError, EventKind,
    EventQuery, ManualClock, NewSession, OnLimit, Policy, PolicyOverrides, PolicySet, Principal,
    Rejection, SeededRandom, SessionId, Store,
};
use recorder::Recorder;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

mod recorder {
    use portcullis_core::{AuditEvent, AuditSink};
    use std::sync::Mutex;

    /// Keeps what the engine publishes, to compare with what the store recorded.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<AuditEvent>>);

    impl AuditSink for Recorder {
        fn publish(&self, event: &AuditEvent) {
            self.0.lock().unwrap().push(event.clone());
        }
    }
}

struct Harness<S> {
    engine: Engine<S>,
    clock: Arc<ManualClock>,
    sink: Arc<Recorder>,
    /// The application every case acts as (every unreserved policy, no grant).
    app: Principal,
}

fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(MIN * 5),
        absolute: Some(MIN * 60),
        remember_me_idle: Some(MIN * 30),
        remember_me_absolute: Some(MIN * 120),
        warn_before: Some(MIN),
        reconstitute_window: Some(MIN * 30),
        ..Default::default()
    };
    let single = PolicyOverrides {
        max_sessions: Some(1),
        on_limit: Some(OnLimit::EvictOldest),
        ..Default::default()
    };
    let bound = PolicyOverrides {
        bind: Some(Binding::UserAgent),
        ..Default::default()
    };
    let restarting = PolicyOverrides {
        elevation_restarts_absolute: Some(true),
        ..short.clone()
    };
    PolicySet::new([
        Policy::resolve("short", &short).unwrap(),
        Policy::resolve("restarting", &restarting).unwrap(),
        Policy::resolve("single", &single).unwrap(),
        Policy::resolve("bound", &bound).unwrap(),
    ])
}

fn harness<S: Store>(store: S) -> Harness<S> {
    let clock = Arc::new(ManualClock::default());
    let sink = Arc::new(Recorder::default());
    let engine = Engine::new(
        store,
        policies(),
        clock.clone(),
        Arc::new(SeededRandom::new(11)),
    )
    .with_sink(sink.clone());
    Harness {
        engine,
        clock,
        sink,
        app: crate::app_principal(crate::application("shop")),
    }
}

fn new_session(subject: &str, policy: &str) -> NewSession {
    NewSession {
        subject: subject.into(),
        policy: Some(policy.into()),
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        device: Device {
            user_agent: Some("Firefox".into()),
            ip: Some("192.0.2.1".into()),
        },
        data: serde_json::json!({"theme": "dark"}),
        ..Default::default()
    }
}

fn rejection<T: std::fmt::Debug>(result: Result<T, EngineError>) -> Rejection {
    match result {
        Err(EngineError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Idle limit + 1 s without activity ends the session; activity before the limit extends it.
pub async fn asvs5_7_3_1_idle_timeout_and_activity<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "short"), &h.app)
        .await
        .unwrap();
    let token = issued.token.expose();
    h.clock.advance(MIN * 4);
    let v = h
        .engine
        .validate(token, true, &Device::default(), &h.app)
        .await
        .unwrap();
    assert_eq!(v.expires_in, MIN * 5);
    h.clock.advance(MIN * 4);
    h.engine
        .validate(token, true, &Device::default(), &h.app)
        .await
        .unwrap();
    h.clock.advance(MIN * 5 + SEC);
    assert_eq!(
        rejection(
            h.engine
                .validate(token, true, &Device::default(), &h.app)
                .await
        ),
        Rejection::ExpiredIdle
    );
    // It stays ended, with the deadline as the time it ended.
    assert_eq!(
        rejection(
            h.engine
                .validate(token, true, &Device::default(), &h.app)
                .await
        ),
        Rejection::ExpiredIdle
    );
    let ended = h.engine.get(&issued.session.id, &h.app).await.unwrap();
    let ended = ended.ended.as_ref().unwrap();
    assert_eq!(ended.reason, EndReason::ExpiredIdle);
    assert_eq!(ended.at, issued.session.created_at.plus(MIN * 13));
}

/// A session whose token was issued before tokens carried their route (drawn until its SHA-256
/// began with the subject's route, and stored under that plain hash) is still found by it,
/// rotates to a token of today's form, and the old one is then refused.
pub async fn a_token_issued_before_tokens_carried_their_route_still_validates<S: Store>(store: S) {
    use portcullis_core::{Token, TokenKind, subject_route};

    let h = harness(store);
    let random = crate::random();
    let route = subject_route("alice");
    let old = loop {
        let token = Token::generate(TokenKind::Session, random.as_ref());
        if token.hash().0[0] == route {
            break token;
        }
    };
    let (_, mut session) = crate::session_of(
        "alice",
        &crate::application("shop").id,
        crate::t0(),
        &random,
    );
    session.token_hash = old.hash();
    h.engine
        .store()
        .insert(crate::plain_insert(session.clone()))
        .await
        .unwrap();
    let valid = h
        .engine
        .validate(old.expose(), false, &Device::default(), &h.app)
        .await
        .unwrap();
    assert_eq!(valid.session.id, session.id);
    let rotated = h.engine.rotate(old.expose(), &h.app).await.unwrap();
    h.engine
        .validate(rotated.token.expose(), false, &Device::default(), &h.app)
        .await
        .unwrap();
    assert_eq!(
        rejection(
            h.engine
                .validate(old.expose(), false, &Device::default(), &h.app)
                .await
        ),
        Rejection::Unknown
    );
}

/// Activity every minute never carries a session past its absolute lifetime.
pub async fn asvs5_7_3_2_absolute_timeout_despite_activity<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "short"), &h.app)
        .await
        .unwrap();
    let token = issued.token.expose();
    for _ in 0..59 {
        h.clock.advance(MIN);
        h.engine
            .validate(token, true, &Device::default(), &h.app)
            .await
            .unwrap();
    }
    h.clock.advance(MIN);
    assert_eq!(
        rejection(
            h.engine
                .validate(token, true, &Device::default(), &h.app)
                .await
        ),
        Rejection::ExpiredAbsolute
    );
}

/// Validation says `warning: true` only inside the lead time before the nearest deadline.
pub async fn nist4_3_warning_inside_lead_time<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "short"), &h.app)
        .await
        .unwrap();
    let token = issued.token.expose();
    h.clock.advance(MIN * 3 + SEC * 59);
    let v = h
        .engine
        .validate(token, false, &Device::default(), &h.app)
        .await
        .unwrap();
    assert!(!v.warning);
    h.clock.advance(SEC);
    let v = h
        .engine
        .validate(token, false, &Device::default(), &h.app)
        .await
        .unwrap();
    assert!(v.warning);
    assert_eq!(v.expires_in, MIN);
    // "Stay signed in": activity moves the deadline and the warning goes away.
    let v = h
        .engine
        .validate(token, true, &Device::default(), &h.app)
        .await
        .unwrap();
    assert!(!v.warning);
    assert_eq!(v.expires_in, MIN * 5);
}

/// A background poll (`activity: false`) neither extends the session nor writes anything.
pub async fn validation_without_activity_changes_nothing<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "short"), &h.app)
        .await
        .unwrap();
    let token = issued.token.expose();
    for _ in 0..4 {
        h.clock.advance(MIN);
        h.engine
            .validate(token, false, &Device::default(), &h.app)
            .await
            .unwrap();
    }
    let seen = h.engine.get(&issued.session.id, &h.app).await.unwrap();
    assert_eq!(seen.last_seen_at, issued.session.created_at);
    h.clock.advance(MIN + SEC);
    assert_eq!(
        rejection(
            h.engine
                .validate(token, false, &Device::default(), &h.app)
                .await
        ),
        Rejection::ExpiredIdle
    );
}

/// "Stay signed in" gets the remember-me lifetimes and its absolute cap still holds.
pub async fn nist4_5_remember_me_keeps_its_absolute_cap<S: Store>(store: S) {
    let h = harness(store);
    let mut request = new_session("alice", "short");
    request.remember_me = true;
    let issued = h.engine.create(request, &h.app).await.unwrap();
    let s = &issued.session;
    assert!(s.remember_me);
    assert_eq!(
        s.idle.as_ref().unwrap().rule,
        "policy short: remember_me_idle 30m (configured)"
    );
    assert_eq!(s.absolute.at, s.created_at.plus(MIN * 120));
    for _ in 0..7 {
        h.clock.advance(MIN * 15);
        h.engine
            .validate(issued.token.expose(), true, &Device::default(), &h.app)
            .await
            .unwrap();
    }
    h.clock.advance(MIN * 15);
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::ExpiredAbsolute
    );
}

/// Rotation issues a new token; the old one is dead at once; the session keeps its id.
pub async fn asvs5_7_2_4_rotation_kills_the_old_token<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    let rotated = h
        .engine
        .rotate(issued.token.expose(), &h.app)
        .await
        .unwrap();
    assert_ne!(rotated.token, issued.token);
    assert_eq!(rotated.session.id, issued.session.id);
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::Unknown
    );
    h.engine
        .validate(rotated.token.expose(), true, &Device::default(), &h.app)
        .await
        .unwrap();
    assert_eq!(
        rejection(h.engine.rotate(issued.token.expose(), &h.app).await),
        Rejection::Unknown
    );
}

/// Elevation rotates the token, records the elevation with its own lifetime, and restarts
/// `authenticated_at` and both timers.
pub async fn owasp_sm_11_elevation_rotates_and_restarts_timers<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "short"), &h.app)
        .await
        .unwrap();
    for _ in 0..12 {
        h.clock.advance(MIN * 4);
        h.engine
            .validate(issued.token.expose(), true, &Device::default(), &h.app)
            .await
            .unwrap();
    }
    let request = Elevate {
        methods: vec!["pwd".into(), "otp".into()],
        level: 2,
        scope: "payments".into(),
    };
    let elevated = h
        .engine
        .elevate(issued.token.expose(), request.clone(), &h.app)
        .await
        .unwrap();
    let s = &elevated.session;
    let now = h.engine.now();
    assert_eq!(s.authenticated_at, now);
    assert_eq!(
        s.absolute.at, issued.session.absolute.at,
        "an application's claim does not restart the absolute deadline unless its policy says so"
    );
    assert_eq!(s.elevations.len(), 1);
    assert_eq!(s.elevations[0].scope, "payments");
    assert_eq!(s.elevations[0].expires_at, now.plus(MIN * 10));
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::Unknown
    );
    h.clock.advance(MIN * 11);
    let v = h
        .engine
        .validate(elevated.token.expose(), true, &Device::default(), &h.app)
        .await;
    // Idle is 5 min, so 11 min later the session itself has gone idle.
    assert_eq!(rejection(v), Rejection::ExpiredIdle);
    let empty = Elevate {
        methods: vec![],
        level: 2,
        scope: "x".into(),
    };
    assert!(matches!(
        h.engine
            .elevate(elevated.token.expose(), empty, &h.app)
            .await,
        Err(EngineError::Invalid(_))
    ));

    // A policy with `elevation_restarts_absolute` restarts it.
    let issued = h
        .engine
        .create(new_session("alice", "restarting"), &h.app)
        .await
        .unwrap();
    h.clock.advance(MIN * 4);
    let elevated = h
        .engine
        .elevate(issued.token.expose(), request, &h.app)
        .await
        .unwrap();
    assert_eq!(elevated.session.absolute.at, h.engine.now().plus(MIN * 60));
}

/// After logout the token is refused with `logged_out`; logging out again is fine.
pub async fn asvs4_3_3_1_logout_is_final_and_idempotent<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    h.engine
        .logout(issued.token.expose(), &h.app)
        .await
        .unwrap();
    h.engine
        .logout(issued.token.expose(), &h.app)
        .await
        .unwrap();
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::LoggedOut
    );
    assert_eq!(
        rejection(h.engine.rotate(issued.token.expose(), &h.app).await),
        Rejection::LoggedOut
    );
    let ends = h
        .sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::SessionEnded)
        .count();
    assert_eq!(ends, 1);
}

/// Force logout after a password change ends every session but the current one.
pub async fn asvs4_3_3_3_force_logout_all_but_current<S: Store>(store: S) {
    let h = harness(store);
    let mut tokens = vec![];
    for _ in 0..3 {
        tokens.push(
            h.engine
                .create(new_session("alice", "default"), &h.app)
                .await
                .unwrap(),
        );
    }
    let current = &tokens[2];
    // An `except` naming no session of alice's (a typo, bob's) ends nothing, not even the one
    // the caller meant to keep.
    let bobs = h
        .engine
        .create(new_session("bob", "default"), &h.app)
        .await
        .unwrap();
    for wrong in [
        SessionId::from_string("ses_nosuchsession".into()),
        bobs.session.id.clone(),
    ] {
        let refused = h
            .engine
            .end_subject(
                "alice",
                Some(&wrong),
                EndReason::PasswordChanged,
                false,
                &h.app,
            )
            .await;
        assert!(matches!(refused, Err(EngineError::NotFound)), "{refused:?}");
    }
    for token in &tokens {
        h.engine
            .validate(token.token.expose(), false, &Device::default(), &h.app)
            .await
            .unwrap();
    }
    let n = h
        .engine
        .end_subject(
            "alice",
            Some(&current.session.id),
            EndReason::PasswordChanged,
            false,
            &h.app,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    for other in &tokens[..2] {
        assert_eq!(
            rejection(
                h.engine
                    .validate(other.token.expose(), true, &Device::default(), &h.app)
                    .await
            ),
            Rejection::Revoked(EndReason::PasswordChanged)
        );
    }
    h.engine
        .validate(current.token.expose(), true, &Device::default(), &h.app)
        .await
        .unwrap();
    // What only Portcullis sees happen is not the application's to claim, nor the operator's:
    // the trail must be able to trust a `token_reuse` or an `app_removed`.
    for reason in EndReason::ALL.into_iter().filter(|r| !r.is_claimable()) {
        for caller in [&h.app, &Principal::operator()] {
            assert!(
                matches!(
                    h.engine
                        .end_subject("alice", None, reason, false, caller)
                        .await,
                    Err(EngineError::Invalid(_))
                ),
                "{reason:?}"
            );
        }
    }
    h.engine
        .validate(current.token.expose(), true, &Device::default(), &h.app)
        .await
        .expect("nothing ended for a refused reason");
}

/// An administrator ends one session; the effect is immediate and audited.
pub async fn asvs5_7_4_5_admin_revoke<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    h.engine
        .revoke(&issued.session.id, &Principal::operator())
        .await
        .unwrap();
    h.engine
        .revoke(&issued.session.id, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::Revoked(EndReason::RevokedAdmin)
    );
    let events = h
        .engine
        .events(
            &EventQuery {
                session_id: Some(issued.session.id.clone()),
                limit: 10,
                ..Default::default()
            },
            false,
            &h.app,
        )
        .await
        .unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind, last.reason, last.actor.clone()),
        (
            EventKind::SessionEnded,
            Some(EndReason::RevokedAdmin),
            Actor::cli()
        )
    );
    let missing = portcullis_core::PublicId::from_string("ses_missing".into());
    assert!(matches!(
        h.engine.revoke(&missing, &Principal::operator()).await,
        Err(EngineError::NotFound)
    ));
}

/// A limit of 1 with eviction: signing in on another device ends the other session.
pub async fn asvs5_7_1_2_concurrent_limit_one_evicts_other_device<S: Store>(store: S) {
    let h = harness(store);
    let first = h
        .engine
        .create(new_session("alice", "single"), &h.app)
        .await
        .unwrap();
    let second = h
        .engine
        .create(new_session("alice", "single"), &h.app)
        .await
        .unwrap();
    assert_eq!(
        rejection(
            h.engine
                .validate(first.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::Revoked(EndReason::NewDevice)
    );
    h.engine
        .validate(second.token.expose(), true, &Device::default(), &h.app)
        .await
        .unwrap();
}

/// A session bound to its user agent ends when presented by another one.
pub async fn owasp_sm_20_binding_mismatch_ends_session<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "bound"), &h.app)
        .await
        .unwrap();
    let same = Device {
        user_agent: Some("Firefox".into()),
        ip: Some("198.51.100.7".into()),
    };
    h.engine
        .validate(issued.token.expose(), true, &same, &h.app)
        .await
        .unwrap();
    let other = Device {
        user_agent: Some("curl".into()),
        ip: None,
    };
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &other, &h.app)
                .await
        ),
        Rejection::BindingMismatch
    );
    assert_eq!(
        rejection(
            h.engine
                .validate(issued.token.expose(), true, &same, &h.app)
                .await
        ),
        Rejection::BindingMismatch
    );
}

/// Data comes back after a timeout (new token, fresh deadlines, no elevation), never after logout.
pub async fn reconstitution_after_timeout_not_after_logout<S: Store>(store: S) {
    let h = harness(store);
    let mut request = new_session("alice", "short");
    request.data = serde_json::json!({"draft": "half-written letter"});
    let first = h.engine.create(request, &h.app).await.unwrap();
    let elevate = Elevate {
        methods: vec!["pwd".into()],
        level: 1,
        scope: "s".into(),
    };
    let first = h
        .engine
        .elevate(first.token.expose(), elevate, &h.app)
        .await
        .unwrap();
    h.clock.advance(MIN * 6);
    assert_eq!(h.engine.sweep().await.unwrap().expired, 1);

    let mut again = new_session("alice", "short");
    again.data = serde_json::Value::Null;
    again.reconstitute = true;
    let back = h.engine.create(again, &h.app).await.unwrap();
    assert_eq!(
        back.session.data,
        serde_json::json!({"draft": "half-written letter"})
    );
    assert_eq!(
        back.session.reconstituted_from.as_ref(),
        Some(&first.session.id)
    );
    assert!(back.session.elevations.is_empty());
    assert_ne!(back.token, first.token);
    assert_eq!(back.session.created_at, h.engine.now());

    h.engine.logout(back.token.expose(), &h.app).await.unwrap();
    let mut third = new_session("alice", "short");
    third.data = serde_json::Value::Null;
    third.reconstitute = true;
    let fresh = h.engine.create(third, &h.app).await.unwrap();
    assert_eq!(fresh.session.data, serde_json::Value::Null);
    assert!(fresh.session.reconstituted_from.is_none());
}

/// The sweep ends every expired session exactly once, even when validation noticed first,
/// and leaves live ones alone.
pub async fn sweep_expires_each_session_once<S: Store>(store: S) {
    let h = harness(store);
    let mut expiring = vec![];
    for i in 0..20 {
        expiring.push(
            h.engine
                .create(new_session(&format!("user{i}"), "short"), &h.app)
                .await
                .unwrap(),
        );
    }
    h.clock.advance(MIN * 4);
    let survivor = h
        .engine
        .create(new_session("survivor", "short"), &h.app)
        .await
        .unwrap();
    h.clock.advance(MIN * 2);
    let _ = h
        .engine
        .validate(expiring[0].token.expose(), true, &Device::default(), &h.app)
        .await;
    let report = h.engine.sweep().await.unwrap();
    assert_eq!(report.expired, 19);
    assert_eq!(h.engine.sweep().await.unwrap().expired, 0);
    let ends: Vec<_> = h
        .sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::SessionEnded)
        .cloned()
        .collect();
    assert_eq!(ends.len(), 20);
    assert!(
        ends.iter()
            .all(|e| e.reason == Some(EndReason::ExpiredIdle))
    );
    h.engine
        .validate(survivor.token.expose(), true, &Device::default(), &h.app)
        .await
        .unwrap();
    // What was published is exactly what the store recorded. (Sharded stores order events of
    // different subjects within one millisecond by shard, so compare in position order.)
    let mut published = h.sink.0.lock().unwrap().clone();
    published.sort_by_key(|e| e.seq);
    let stored = h
        .engine
        .events(
            &EventQuery {
                limit: 1000,
                ..Default::default()
            },
            false,
            &Principal::operator(),
        )
        .await
        .unwrap();
    assert_eq!(stored, published);
}

/// Ending an SSO session ends the application sessions that name it as parent.
pub async fn parent_end_ends_children<S: Store>(store: S) {
    let h = harness(store);
    let sso = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    let mut child = new_session("alice", "default");
    child.parent = Some(sso.session.id.clone());
    let child = h.engine.create(child, &h.app).await.unwrap();
    h.engine.logout(sso.token.expose(), &h.app).await.unwrap();
    assert_eq!(
        rejection(
            h.engine
                .validate(child.token.expose(), true, &Device::default(), &h.app)
                .await
        ),
        Rejection::Revoked(EndReason::ParentEnded)
    );
    let mut orphan = new_session("alice", "default");
    orphan.parent = Some(sso.session.id.clone());
    assert!(matches!(
        h.engine.create(orphan, &h.app).await,
        Err(EngineError::Invalid(_))
    ));
}

/// Data is replaced whole, and data over the limit is refused without changing anything.
pub async fn data_replace_is_size_limited<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    let updated = h
        .engine
        .replace_data(&issued.session.id, serde_json::json!({"cart": [3]}), &h.app)
        .await
        .unwrap();
    assert_eq!(updated.data, serde_json::json!({"cart": [3]}));
    let big = serde_json::json!({"blob": "x".repeat(20_000)});
    assert!(matches!(
        h.engine
            .replace_data(&issued.session.id, big.clone(), &h.app)
            .await,
        Err(EngineError::DataTooLarge { .. })
    ));
    assert_eq!(
        h.engine.get(&issued.session.id, &h.app).await.unwrap().data,
        serde_json::json!({"cart": [3]})
    );
    let mut request = new_session("bob", "default");
    request.data = big;
    assert!(matches!(
        h.engine.create(request, &h.app).await,
        Err(EngineError::DataTooLarge { .. })
    ));
    let mut unknown = new_session("bob", "default");
    unknown.policy = Some("nope".into());
    assert!(matches!(
        h.engine.create(unknown, &h.app).await,
        Err(EngineError::UnknownPolicy(_))
    ));
}

/// No event, stored or published, contains a token that was issued.
pub async fn asvs4_7_1_1_events_never_hold_a_token<S: Store>(store: S) {
    let h = harness(store);
    let issued = h
        .engine
        .create(new_session("alice", "default"), &h.app)
        .await
        .unwrap();
    let rotated = h
        .engine
        .rotate(issued.token.expose(), &h.app)
        .await
        .unwrap();
    let elevate = Elevate {
        methods: vec!["pwd".into()],
        level: 2,
        scope: "s".into(),
    };
    let elevated = h
        .engine
        .elevate(rotated.token.expose(), elevate, &h.app)
        .await
        .unwrap();
    h.engine
        .logout(elevated.token.expose(), &h.app)
        .await
        .unwrap();
    let stored = h
        .engine
        .events(
            &EventQuery {
                limit: 100,
                ..Default::default()
            },
            false,
            &h.app,
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 4);
    let text = serde_json::to_string(&stored).unwrap();
    for token in [&issued.token, &rotated.token, &elevated.token] {
        assert!(!text.contains(token.expose()));
        assert!(!text.contains(&token.hash().to_hex()));
        assert!(!text.contains(&token.routed_hash().to_hex()));
    }
}
