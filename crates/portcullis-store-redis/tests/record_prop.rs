//! Property tests of the Redis session record (`record.rs`, private to the crate), through the
//! store as every node reads it, on the machine's Redis (`PORTCULLIS_TEST_REDIS` overrides):
//!
//! * a session of any content (subjects, user agents, addresses, methods, data, elevations, an
//!   ending) is read back exactly as it was written;
//! * whatever bytes stand where a record should (written by hand, truncated, with bytes
//!   changed, or any bytes at all), a read answers a session, nothing, or
//!   `StoreError::Corrupt`, and never panics.
//!
//! Each property runs 64 cases in CI; `PROPTEST_CASES` raises it (`bench/fuzz.sh`).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, ApplicationChange, AuthContext, Device, Elevate, Engine, ManualClock, NewSession,
    OsRandom, PolicySet, Principal, Session, SessionStore, StoreError, TokenHash,
};
use portcullis_store_redis::RedisStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine<RedisStore>,
    prefix: String,
    redis: redis::aio::MultiplexedConnection,
    app: portcullis_core::AppId,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let prefix = format!("pctest:{}:{name}", std::process::id());
        let (store, redis) = runtime.block_on(async {
            let store = RedisStore::connect(&format!("{}?prefix={prefix}", url()))
                .await
                .expect("Redis must run on loopback (see .ci/run)");
            let redis = redis::Client::open(url().as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            (store, redis)
        });
        let clock = Arc::new(ManualClock::default());
        let engine = Engine::new(
            store,
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        );
        let app = runtime
            .block_on(engine.add_application(
                ApplicationChange {
                    name: Some(format!("records-{name}")),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            ))
            .unwrap()
            .id;
        Self {
            runtime,
            engine,
            prefix,
            redis,
            app,
            clock,
        }
    }

    /// The key of the record behind `hash`, as the store names it.
    fn record_key(&self, hash: &TokenHash) -> Vec<u8> {
        let mut key = format!("{}:{{{:02x}}}:s:", self.prefix, hash.0[0]).into_bytes();
        key.extend_from_slice(&hash.0);
        key
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut conn = self.redis.clone();
        self.runtime
            .block_on(redis::cmd("GET").arg(key).query_async(&mut conn))
            .unwrap()
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        let mut conn = self.redis.clone();
        let () = self
            .runtime
            .block_on(redis::cmd("SET").arg(key).arg(value).query_async(&mut conn))
            .unwrap();
    }

    /// A read of whatever is at `hash`'s record: a session, nothing, or a corrupt record.
    fn read(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, TestCaseError> {
        match self
            .runtime
            .block_on(self.engine.store().find_by_token(hash))
        {
            Ok(found) => Ok(found),
            Err(StoreError::Corrupt(_)) => Ok(None),
            Err(other) => Err(TestCaseError::fail(format!(
                "a bad record must read as corrupt, not {other:?}"
            ))),
        }
    }

    fn cleanup(&self) {
        let mut conn = self.redis.clone();
        self.runtime.block_on(async {
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            for key in keys {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
            }
        });
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text of 1 to `max` bytes.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@._-]{1,24}",
        any::<String>(),
        "\\PC{1,40}",
        Just("x".repeat(max)),
    ]
    .prop_map(move |s| {
        let mut s: String = s.chars().take(max).collect();
        while s.len() > max {
            s.pop();
        }
        if s.is_empty() { "s".to_owned() } else { s }
    })
}

#[derive(Debug, Clone)]
struct Shape {
    subject: String,
    remember_me: bool,
    methods: Vec<String>,
    level: u8,
    user_agent: Option<String>,
    ip: Option<String>,
    data: serde_json::Value,
    elevate: Option<(String, Vec<String>)>,
    end: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        text(256),
        any::<bool>(),
        prop::collection::vec(text(64), 0..4),
        1u8..=3,
        prop::option::of(any::<String>()),
        prop::option::of("[0-9a-f:.]{1,39}|\\PC{0,20}"),
        json_value(),
        prop::option::of((text(64), prop::collection::vec(text(64), 1..3))),
        0u8..4,
    )
        .prop_map(
            |(subject, remember_me, methods, level, user_agent, ip, data, elevate, end)| Shape {
                subject,
                remember_me,
                methods,
                level,
                user_agent,
                ip,
                data,
                elevate,
                end,
            },
        )
}

#[test]
fn any_session_reads_back_from_redis_exactly_as_written() {
    let f = Fixture::new("roundtrip");
    let operator = Principal::operator();
    let mut runner = TestRunner::new(Config::with_cases(cases(64)));
    runner
        .run(&shape(), |shape| {
            let issued = f
                .runtime
                .block_on(f.engine.create(
                    NewSession {
                        subject: shape.subject.clone(),
                        remember_me: shape.remember_me,
                        auth: AuthContext {
                            methods: shape.methods.clone(),
                            level: shape.level,
                        },
                        device: Device {
                            user_agent: shape.user_agent.clone(),
                            ip: shape.ip.clone(),
                        },
                        data: shape.data.clone(),
                        application: Some(f.app.clone()),
                        ..NewSession::default()
                    },
                    &operator,
                ))
                .map_err(|e| TestCaseError::fail(format!("create: {e}")))?;
            let mut written = issued.session.clone();
            let mut token = issued.token.expose().to_owned();
            if let Some((scope, methods)) = &shape.elevate {
                f.clock.advance(Duration::from_millis(1234));
                let elevated = f
                    .runtime
                    .block_on(f.engine.elevate(
                        &token,
                        Elevate {
                            methods: methods.clone(),
                            level: shape.level,
                            scope: scope.clone(),
                        },
                        &operator,
                    ))
                    .map_err(|e| TestCaseError::fail(format!("elevate: {e}")))?;
                token = elevated.token.expose().to_owned();
                written = elevated.session.clone();
            }
            let read = f
                .runtime
                .block_on(f.engine.store().find_by_token(&written.token_hash))
                .map_err(|e| TestCaseError::fail(format!("read: {e}")))?
                .ok_or_else(|| TestCaseError::fail("the record is gone"))?;
            prop_assert_eq!(&*read, &*written);
            // Ended in one of the ways a session ends, it reads back ended, the same.
            if shape.end > 0 {
                let ended = match shape.end {
                    1 => f.runtime.block_on(f.engine.logout(&token, &operator)),
                    2 => f.runtime.block_on(f.engine.revoke(&written.id, &operator)),
                    _ => {
                        // Past every deadline, "Stay signed in" ones too.
                        f.clock.advance(Duration::from_secs(31 * 86_400));
                        f.runtime
                            .block_on(f.engine.validate(
                                &token,
                                true,
                                &Device::default(),
                                &operator,
                            ))
                            .map(|_| ())
                            .or(Ok(()))
                    }
                };
                ended.map_err(|e| TestCaseError::fail(format!("end: {e}")))?;
                let read = f
                    .runtime
                    .block_on(f.engine.store().find_by_token(&written.token_hash))
                    .map_err(|e| TestCaseError::fail(format!("read: {e}")))?
                    .ok_or_else(|| TestCaseError::fail("the ended record is gone"))?;
                prop_assert!(read.ended.is_some());
                let by_id = f
                    .runtime
                    .block_on(f.engine.get(&written.id, &operator))
                    .map_err(|e| TestCaseError::fail(format!("get: {e}")))?;
                prop_assert_eq!(&*read, &*by_id);
            }
            Ok(())
        })
        .unwrap();
}

#[derive(Debug, Clone)]
enum Damage {
    /// Any bytes at all.
    Replace(Vec<u8>),
    /// The first `n` bytes of a real record.
    Truncate(usize),
    /// A real record with bytes changed (position, value).
    Flip(Vec<(usize, u8)>),
    /// A real record with bytes added at the end.
    Extend(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Damage::Replace),
        (0usize..400).prop_map(Damage::Truncate),
        prop::collection::vec((0usize..400, any::<u8>()), 1..6).prop_map(Damage::Flip),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Damage::Extend),
    ]
}

#[test]
fn any_bytes_where_a_record_should_be_read_as_corrupt_or_a_session_never_a_panic() {
    let f = Fixture::new("damage");
    let operator = Principal::operator();
    let mut runner = TestRunner::new(Config::with_cases(cases(128)));
    runner
        .run(&(shape(), damage()), |(shape, damage)| {
            let issued = f
                .runtime
                .block_on(f.engine.create(
                    NewSession {
                        subject: shape.subject.clone(),
                        auth: AuthContext {
                            methods: shape.methods.clone(),
                            level: shape.level,
                        },
                        device: Device {
                            user_agent: shape.user_agent.clone(),
                            ip: shape.ip.clone(),
                        },
                        data: shape.data.clone(),
                        application: Some(f.app.clone()),
                        ..NewSession::default()
                    },
                    &operator,
                ))
                .map_err(|e| TestCaseError::fail(format!("create: {e}")))?;
            let hash = issued.session.token_hash;
            let key = f.record_key(&hash);
            let original = f
                .get(&key)
                .ok_or_else(|| TestCaseError::fail("no record under the expected key"))?;
            let damaged = match damage {
                Damage::Replace(bytes) => bytes,
                Damage::Truncate(n) => original[..n.min(original.len())].to_vec(),
                Damage::Flip(changes) => {
                    let mut bytes = original.clone();
                    for (at, value) in changes {
                        let at = at % bytes.len();
                        bytes[at] = value;
                    }
                    bytes
                }
                Damage::Extend(tail) => [original.clone(), tail].concat(),
            };
            f.set(&key, &damaged);
            // By token, by id, and the subject's list: each answers, none panics.
            f.read(&hash)?;
            let _ = f
                .runtime
                .block_on(f.engine.store().find_by_id(&issued.session.id));
            let _ = f
                .runtime
                .block_on(f.engine.store().list_subject(&issued.session.subject));
            let _ = f.runtime.block_on(f.engine.validate(
                issued.token.expose(),
                true,
                &Device::default(),
                &operator,
            ));
            // The real record reads again once it is back.
            f.set(&key, &original);
            let back = f.read(&hash)?;
            prop_assert_eq!(back.as_deref(), Some(&*issued.session));
            Ok(())
        })
        .unwrap();
}
