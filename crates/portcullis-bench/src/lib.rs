//! Shared pieces of the benchmarks: an engine over a store with a manual clock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    ANY_POLICY, Actor, AppId, Application, AuthContext, Engine, ManualClock, NewSession, OsRandom,
    Policy, PolicyOverrides, PolicySet, Principal, PublicId, Store, Timestamp,
};

/// The policies benchmarks use: `default`, and `noidle` (absolute only, so sessions stay live
/// however the clock moves until their absolute deadline).
pub fn policies() -> PolicySet {
    let noidle = PolicyOverrides {
        idle: Some(Duration::ZERO),
        ..Default::default()
    };
    PolicySet::new([Policy::resolve("noidle", &noidle).expect("a valid policy")])
}

/// An engine over `store` with a manual clock.
pub fn engine<S: Store>(store: S) -> (Engine<S>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let engine = Engine::new(store, policies(), clock.clone(), Arc::new(OsRandom));
    (engine, clock)
}

/// The application the benchmarks act as (every unreserved policy).
pub fn application() -> Application {
    Application {
        id: PublicId::from_string("app_bench".into()),
        name: "bench".into(),
        policies: vec![ANY_POLICY.into()],
        default_policy: "default".into(),
        grants: Default::default(),
        client: None,
        created_at: Timestamp::from_millis(0),
        version: 1,
    }
}

/// The id of [`application`].
pub fn application_id() -> AppId {
    application().id
}

/// The benchmark application's principal, as one of its API keys would be.
pub fn principal() -> Principal {
    Principal::application(
        Arc::new(application()),
        &PublicId::from_string("key_bench".into()),
    )
}

/// Registers [`application`] in the engine's store (needed before creating its API keys).
pub async fn register<S: Store>(engine: &Engine<S>) {
    let event = portcullis_core::AuditEvent::for_application(
        portcullis_core::EventKind::ApplicationCreated,
        &application_id(),
        engine.now(),
        &Actor::cli(),
        serde_json::Value::Null,
    );
    portcullis_core::ApplicationStore::add_application(engine.store(), application(), event)
        .await
        .expect("registering the benchmark application");
}

/// A create request for `subject`.
pub fn new_session(subject: &str) -> NewSession {
    NewSession {
        subject: subject.to_owned(),
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        ..Default::default()
    }
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
