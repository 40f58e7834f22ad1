//! Shared pieces of the benchmarks: an engine over a store with a manual clock.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    AuthContext, Engine, ManualClock, NewSession, OsRandom, Policy, PolicyOverrides, PolicySet,
    SessionStore,
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
pub fn engine<S: SessionStore>(store: S) -> (Engine<S>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let engine = Engine::new(store, policies(), clock.clone(), Arc::new(OsRandom));
    (engine, clock)
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
