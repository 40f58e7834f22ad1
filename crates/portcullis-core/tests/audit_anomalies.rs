//! The audit trail says who, from where and how, and reports anomalies: a token used from
//! another device, credential stuffing, session bursts (issue 15). Injected clocks only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_core::event::{AnomalySink, BurstRules, DeviceMemory, StuffingRules, context};
use portcullis_core::{
    Actor, AuditEvent, AuditSink, AuthContext, Device, Engine, EventKind, ManualClock, MemoryStore,
    NewSession, PolicySet, Principal, SeededRandom, Timestamp,
};

#[derive(Default)]
struct Recorder(Mutex<Vec<AuditEvent>>);

impl AuditSink for Recorder {
    fn publish(&self, event: &AuditEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    fn kinds(&self, kind: EventKind) -> Vec<AuditEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }
}

fn device(ip: &str, agent: &str) -> Device {
    Device {
        ip: Some(ip.into()),
        user_agent: Some(agent.into()),
    }
}

fn engine(clock: Arc<ManualClock>, sink: Arc<dyn AuditSink>) -> Engine<MemoryStore> {
    Engine::new(
        MemoryStore::new(),
        PolicySet::default(),
        clock,
        Arc::new(SeededRandom::new(7)),
    )
    .with_sink(sink)
}

#[tokio::test]
async fn session_events_carry_client_address_user_agent_and_methods() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let recorder = Arc::new(Recorder::default());
    let engine = engine(clock, recorder.clone());
    engine
        .create(
            NewSession {
                subject: "alice".into(),
                auth: AuthContext {
                    methods: vec!["pwd".into(), "otp".into()],
                    level: 2,
                },
                device: device("198.51.100.7", "Firefox/140"),
                application: Some(portcullis_core::application::portcullis_app()),
                policy: Some(portcullis_core::application::SSO_POLICY.into()),
                ..NewSession::default()
            },
            &Principal::operator(),
        )
        .await
        .unwrap();
    let created = &recorder.kinds(EventKind::SessionCreated)[0];
    assert_eq!(created.detail_str(context::CLIENT_IP), Some("198.51.100.7"));
    assert_eq!(created.detail_str(context::USER_AGENT), Some("Firefox/140"));
    assert_eq!(
        created.detail[context::AUTH_METHODS],
        serde_json::json!(["pwd", "otp"])
    );
    assert!(created.application.is_some());
}

#[tokio::test]
async fn a_token_from_another_device_is_reported_once_per_new_pair_even_unbound() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let recorder = Arc::new(Recorder::default());
    let engine = engine(clock.clone(), recorder.clone());
    let issued = engine
        .create(
            NewSession {
                subject: "alice".into(),
                device: device("198.51.100.7", "Firefox/140"),
                application: Some(portcullis_core::application::portcullis_app()),
                policy: Some(portcullis_core::application::SSO_POLICY.into()),
                auth: AuthContext {
                    methods: vec!["pwd".into()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &Principal::operator(),
        )
        .await
        .unwrap();
    let token = issued.token.expose().to_owned();
    let op = Principal::operator();
    // The issuing device: nothing to report.
    engine
        .validate(&token, true, &device("198.51.100.7", "Firefox/140"), &op)
        .await
        .unwrap();
    assert!(recorder.kinds(EventKind::SessionDeviceChanged).is_empty());
    // Elsewhere: reported once, however often it comes back (the default policy binds
    // nothing, so the session lives on).
    for _ in 0..3 {
        clock.advance(Duration::from_secs(1));
        engine
            .validate(&token, true, &device("203.0.113.9", "curl/8"), &op)
            .await
            .unwrap();
    }
    let changed = recorder.kinds(EventKind::SessionDeviceChanged);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        changed[0].detail_str(context::CLIENT_IP),
        Some("203.0.113.9")
    );
    assert_eq!(changed[0].detail["issued_ip"], "198.51.100.7");
    assert_eq!(changed[0].detail["ip_changed"], true);
    assert_eq!(changed[0].detail["user_agent_changed"], true);
    // Another new pair is another report.
    engine
        .validate(&token, true, &device("203.0.113.9", "Firefox/140"), &op)
        .await
        .unwrap();
    assert_eq!(recorder.kinds(EventKind::SessionDeviceChanged).len(), 2);
    // Unknown on either side is no change.
    engine
        .validate(&token, true, &Device::default(), &op)
        .await
        .unwrap();
    assert_eq!(recorder.kinds(EventKind::SessionDeviceChanged).len(), 2);
}

#[tokio::test]
async fn device_memory_is_bounded() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let engine = engine(clock, Arc::new(Recorder::default()));
    let issued = engine
        .create(
            NewSession {
                subject: "alice".into(),
                device: device("198.51.100.7", "a"),
                application: Some(portcullis_core::application::portcullis_app()),
                policy: Some(portcullis_core::application::SSO_POLICY.into()),
                auth: AuthContext {
                    methods: vec!["pwd".into()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &Principal::operator(),
        )
        .await
        .unwrap();
    let session = &issued.session;
    let memory = DeviceMemory::new(3);
    let at = Timestamp::from_millis(0);
    for n in 0..10 {
        assert!(
            memory
                .check(session, &device(&format!("203.0.113.{n}"), "a"), at)
                .is_some()
        );
    }
    // The oldest were forgotten (reported again); the newest are remembered.
    assert!(
        memory
            .check(session, &device("203.0.113.9", "a"), at)
            .is_none()
    );
    assert!(
        memory
            .check(session, &device("203.0.113.0", "a"), at)
            .is_some()
    );
}

fn failure(ip: &str, attempt: &str, at: i64) -> AuditEvent {
    AuditEvent::for_account(
        EventKind::LoginFailed,
        "",
        "",
        Timestamp::from_millis(at),
        &Actor::system(),
    )
    .with_detail(serde_json::json!({
        "failed": "username",
        context::CLIENT_IP: ip,
        context::ATTEMPT_KEY: portcullis_core::event::attempt_key(attempt),
    }))
}

#[test]
fn many_accounts_failing_from_one_address_is_credential_stuffing() {
    let recorder = Arc::new(Recorder::default());
    let rules = StuffingRules {
        accounts: 5,
        window: Duration::from_secs(600),
        tracked: 100,
    };
    let sink = AnomalySink::with_rules(recorder.clone(), rules, BurstRules::default());
    // One person mistyping their own name many times is not stuffing.
    for n in 0..20 {
        sink.publish(&failure("198.51.100.7", "alice", n * 1000));
    }
    assert!(recorder.kinds(EventKind::LoginStuffingSuspected).is_empty());
    // Four other names and the fifth distinct one from the same /64 sets it off.
    for (n, name) in ["bob", "carol", "dave", "erin"].iter().enumerate() {
        sink.publish(&failure(
            &format!("2001:db8:1:2::{n}"),
            name,
            30_000 + n as i64,
        ));
        sink.publish(&failure("2001:db8:1:2:ffff::1", name, 30_000));
    }
    assert!(recorder.kinds(EventKind::LoginStuffingSuspected).is_empty());
    sink.publish(&failure("2001:db8:1:2::99", "frank", 40_000));
    let alarms = recorder.kinds(EventKind::LoginStuffingSuspected);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0].detail["accounts"], 5);
    assert_eq!(alarms[0].detail["address_key"], "2001:db8:1:2::/64");
    // Reported once per window, and the digest never reaches the log.
    sink.publish(&failure("2001:db8:1:2::99", "grace", 50_000));
    assert_eq!(recorder.kinds(EventKind::LoginStuffingSuspected).len(), 1);
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.detail.get(context::ATTEMPT_KEY).is_none())
    );
    // Failures older than the window are forgotten.
    let later = 50_000 + 601_000;
    for (n, name) in ["h1", "h2", "h3", "h4"].iter().enumerate() {
        sink.publish(&failure("2001:db8:1:2::1", name, later + n as i64));
    }
    assert_eq!(recorder.kinds(EventKind::LoginStuffingSuspected).len(), 1);
}

#[test]
fn the_stuffing_watch_follows_a_bounded_number_of_addresses() {
    let recorder = Arc::new(Recorder::default());
    let rules = StuffingRules {
        accounts: 2,
        window: Duration::from_secs(600),
        tracked: 10,
    };
    let sink = AnomalySink::with_rules(recorder.clone(), rules, BurstRules::default());
    sink.publish(&failure("198.51.100.1", "a", 0));
    for n in 0..50 {
        sink.publish(&failure(&format!("203.0.113.{n}"), "x", 1));
    }
    // 198.51.100.1 was forgotten: its next name is its first again.
    sink.publish(&failure("198.51.100.1", "b", 2));
    assert!(recorder.kinds(EventKind::LoginStuffingSuspected).is_empty());
}

#[tokio::test]
async fn one_subjects_sessions_created_fast_are_a_burst() {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_700_000_000_000)));
    let recorder = Arc::new(Recorder::default());
    let burst = BurstRules {
        sessions: 5,
        window: Duration::from_secs(60),
        tracked: 100,
    };
    let sink = Arc::new(AnomalySink::with_rules(
        recorder.clone(),
        StuffingRules::default(),
        burst,
    ));
    let engine = engine(clock.clone(), sink);
    let create = |subject: &str| NewSession {
        subject: subject.into(),
        application: Some(portcullis_core::application::portcullis_app()),
        policy: Some(portcullis_core::application::SSO_POLICY.into()),
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        ..NewSession::default()
    };
    // Four a minute apart, for a long time: no burst.
    for _ in 0..8 {
        engine
            .create(create("alice"), &Principal::operator())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(20));
    }
    assert!(recorder.kinds(EventKind::SessionBurst).is_empty());
    // Five within a minute: one burst, for that subject.
    clock.advance(Duration::from_secs(120));
    for _ in 0..7 {
        engine
            .create(create("bob"), &Principal::operator())
            .await
            .unwrap();
        clock.advance(Duration::from_secs(5));
    }
    let bursts = recorder.kinds(EventKind::SessionBurst);
    assert_eq!(bursts.len(), 1, "{bursts:?}");
    assert_eq!(bursts[0].subject.as_deref(), Some("bob"));
    assert_eq!(bursts[0].detail["sessions"], 5);
}
