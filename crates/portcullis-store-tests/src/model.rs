//! Model check: random sequences of operations run against the store under test and against
//! the in-memory store (the model), through the engine, must give the same observable results.
//! Each operation is made by one of two applications or by the operator, so what one
//! application reaches of another's sessions is compared as well.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    AuthContext, Clock, Device, Elevate, EndReason, Engine, EngineError, ManualClock, MemoryStore,
    NewSession, OnLimit, Policy, PolicyOverrides, PolicySet, Principal, RandomSource, SeededRandom,
    Store, Token,
};

use crate::{app_principal, application};

const SUBJECTS: [&str; 3] = ["ann", "ben", "cat"];

#[derive(Debug, Clone, Copy)]
enum Op {
    Create {
        subject: usize,
        policy: usize,
        remember: bool,
        reconstitute: bool,
    },
    Validate {
        token: usize,
        activity: bool,
    },
    Rotate {
        token: usize,
    },
    Elevate {
        token: usize,
    },
    Logout {
        token: usize,
    },
    Revoke {
        token: usize,
    },
    EndSubject {
        subject: usize,
        except: Option<usize>,
    },
    ReplaceData {
        token: usize,
        value: u8,
    },
    List {
        subject: usize,
    },
    Advance {
        seconds: u64,
    },
    Sweep,
}

fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(Duration::from_secs(120)),
        absolute: Some(Duration::from_secs(600)),
        remember_me_idle: Some(Duration::from_secs(300)),
        remember_me_absolute: Some(Duration::from_secs(900)),
        reconstitute_window: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let two = PolicyOverrides {
        max_sessions: Some(2),
        on_limit: Some(OnLimit::EvictIdlest),
        ..short.clone()
    };
    let deny = PolicyOverrides {
        max_sessions: Some(2),
        on_limit: Some(OnLimit::Deny),
        ..short.clone()
    };
    PolicySet::new([
        Policy::resolve("short", &short).unwrap(),
        Policy::resolve("two", &two).unwrap(),
        Policy::resolve("deny", &deny).unwrap(),
    ])
}

const POLICIES: [&str; 3] = ["short", "two", "deny"];

/// Who makes an operation: application `one` (half of them), application `two`, or the
/// operator (who creates sessions of `one`).
#[derive(Debug, Clone, Copy)]
enum Caller {
    One,
    Two,
    Operator,
}

/// The callers of `count` operations, from their own random stream so the operations of a seed
/// are the same as before callers were drawn.
fn random_callers(seed: u64, count: usize) -> Vec<Caller> {
    let random = SeededRandom::new(seed ^ 0x00A1_1CE5);
    (0..count)
        .map(|_| {
            let mut b = [0u8; 1];
            random.fill(&mut b);
            match b[0] % 4 {
                0 | 1 => Caller::One,
                2 => Caller::Two,
                _ => Caller::Operator,
            }
        })
        .collect()
}

fn random_ops(seed: u64, count: usize) -> Vec<Op> {
    let random = SeededRandom::new(seed);
    let next = |n: u64| {
        let mut b = [0u8; 8];
        random.fill(&mut b);
        u64::from_le_bytes(b) % n
    };
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let token = usize::try_from(next(12)).unwrap_or(0);
        let subject = usize::try_from(next(3)).unwrap_or(0);
        ops.push(match next(20) {
            0..=4 => Op::Create {
                subject,
                policy: usize::try_from(next(3)).unwrap_or(0),
                remember: next(4) == 0,
                reconstitute: next(2) == 0,
            },
            5..=8 => Op::Validate {
                token,
                activity: next(3) != 0,
            },
            9 => Op::Rotate { token },
            10 => Op::Elevate { token },
            11 => Op::Logout { token },
            12 => Op::Revoke { token },
            13 => Op::EndSubject {
                subject,
                except: (next(2) == 0).then_some(token),
            },
            14 => Op::ReplaceData {
                token,
                value: u8::try_from(next(200)).unwrap_or(0),
            },
            15 => Op::List { subject },
            16..=18 => Op::Advance { seconds: next(200) },
            _ => Op::Sweep,
        });
    }
    ops
}

/// One side of the comparison: an engine and the tokens it issued, by creation order.
struct Side<S> {
    engine: Engine<S>,
    clock: Arc<ManualClock>,
    tokens: Vec<Token>,
    ids: Vec<portcullis_core::SessionId>,
    one: Principal,
    two: Principal,
    operator: Principal,
}

fn outcome<T>(r: &Result<T, EngineError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(EngineError::Rejected(rejection)) => format!("rejected:{rejection:?}"),
        Err(EngineError::LimitReached) => "limit".into(),
        Err(EngineError::NotFound) => "not_found".into(),
        Err(EngineError::Invalid(_)) => "invalid".into(),
        Err(other) => format!("error:{other}"),
    }
}

impl<S: Store> Side<S> {
    fn new(store: S) -> Self {
        let clock = Arc::new(ManualClock::default());
        let engine = Engine::new(
            store,
            policies(),
            clock.clone(),
            Arc::new(SeededRandom::new(99)),
        );
        Self {
            engine,
            clock,
            tokens: Vec::new(),
            ids: Vec::new(),
            one: app_principal(application("one")),
            two: app_principal(application("two")),
            operator: Principal::operator(),
        }
    }

    fn index_of(&self, id: &portcullis_core::SessionId) -> usize {
        self.ids.iter().position(|x| x == id).unwrap_or(usize::MAX)
    }

    async fn apply(&mut self, op: Op, caller: Caller) -> String {
        let principal = match caller {
            Caller::One => self.one.clone(),
            Caller::Two => self.two.clone(),
            Caller::Operator => self.operator.clone(),
        };
        let principal = &principal;
        let operator_names = matches!(caller, Caller::Operator).then(|| application("one").id);
        let token = |i: usize| {
            self.tokens
                .get(i)
                .map(|t| t.expose().to_owned())
                .unwrap_or_else(|| "pcs_none".into())
        };
        match op {
            Op::Create {
                subject,
                policy,
                remember,
                reconstitute,
            } => {
                let r = self
                    .engine
                    .create(
                        NewSession {
                            subject: SUBJECTS[subject].into(),
                            policy: Some(POLICIES[policy].into()),
                            remember_me: remember,
                            auth: AuthContext {
                                methods: vec!["pwd".into()],
                                level: 1,
                            },
                            data: serde_json::json!({"n": self.tokens.len()}),
                            reconstitute,
                            application: operator_names,
                            ..Default::default()
                        },
                        principal,
                    )
                    .await;
                let o = outcome(&r);
                if let Ok(issued) = r {
                    let from = issued
                        .session
                        .reconstituted_from
                        .as_ref()
                        .map(|id| self.index_of(id));
                    self.tokens.push(issued.token);
                    self.ids.push(issued.session.id.clone());
                    return format!("{o} data={} from={from:?}", issued.session.data);
                }
                o
            }
            Op::Validate { token: i, activity } => {
                let r = self
                    .engine
                    .validate(&token(i), activity, &Device::default(), principal)
                    .await;
                match &r {
                    Ok(v) => format!(
                        "ok expires_in={:?} warning={} data={}",
                        v.expires_in, v.warning, v.session.data
                    ),
                    Err(_) => outcome(&r),
                }
            }
            Op::Rotate { token: i } => {
                let r = self.engine.rotate(&token(i), principal).await;
                let o = outcome(&r);
                if let (Ok(issued), Some(slot)) = (r, self.tokens.get_mut(i)) {
                    *slot = issued.token;
                }
                o
            }
            Op::Elevate { token: i } => {
                let request = Elevate {
                    methods: vec!["otp".into()],
                    level: 2,
                    scope: "pay".into(),
                };
                let r = self.engine.elevate(&token(i), request, principal).await;
                let o = outcome(&r);
                if let (Ok(issued), Some(slot)) = (r, self.tokens.get_mut(i)) {
                    *slot = issued.token;
                }
                o
            }
            Op::Logout { token: i } => outcome(&self.engine.logout(&token(i), principal).await),
            Op::Revoke { token: i } => match self.ids.get(i).cloned() {
                Some(id) => outcome(&self.engine.revoke(&id, principal).await),
                None => "no such session".into(),
            },
            Op::EndSubject { subject, except } => {
                let except = except.and_then(|i| self.ids.get(i).cloned());
                let r = self
                    .engine
                    .end_subject(
                        SUBJECTS[subject],
                        except.as_ref(),
                        EndReason::PasswordChanged,
                        false,
                        principal,
                    )
                    .await;
                match r {
                    Ok(n) => format!("ended {n}"),
                    Err(e) => outcome::<()>(&Err(e)),
                }
            }
            Op::ReplaceData { token: i, value } => match self.ids.get(i).cloned() {
                Some(id) => outcome(
                    &self
                        .engine
                        .replace_data(&id, serde_json::json!(value), principal)
                        .await,
                ),
                None => "no such session".into(),
            },
            Op::List { subject } => match self
                .engine
                .list_subject(SUBJECTS[subject], false, principal)
                .await
            {
                Ok(list) => {
                    let mut idx: Vec<usize> = list.iter().map(|s| self.index_of(&s.id)).collect();
                    idx.sort_unstable();
                    format!("live {idx:?}")
                }
                Err(e) => outcome::<()>(&Err(e)),
            },
            Op::Advance { seconds } => {
                self.clock.advance(Duration::from_secs(seconds));
                format!("now {:?}", self.clock.now())
            }
            Op::Sweep => match self.engine.sweep().await {
                Ok(report) => format!("expired {}", report.expired),
                Err(e) => outcome::<()>(&Err(e)),
            },
        }
    }
}

async fn compare<S: Store>(store: S, seed: u64) {
    let mut tested = Side::new(store);
    let mut model = Side::new(MemoryStore::new());
    let mut results = Vec::new();
    let callers = random_callers(seed, 300);
    for (step, (op, caller)) in random_ops(seed, 300).into_iter().zip(callers).enumerate() {
        // Every operation happens at its own second, so no two sessions tie on a timestamp
        // and eviction order is the same whatever ids the stores were given.
        tested.clock.advance(Duration::from_secs(1));
        model.clock.advance(Duration::from_secs(1));
        let expected = model.apply(op, caller).await;
        let actual = tested.apply(op, caller).await;
        assert_eq!(
            actual, expected,
            "seed {seed}, step {step}: {op:?} by {caller:?}"
        );
        results.push(actual);
    }
    // The sequence must exercise the store, not only bounce off unknown tokens.
    let count = |prefix: &str| results.iter().filter(|r| r.starts_with(prefix)).count();
    assert!(
        count("ok") >= 30,
        "only {} successes: {results:?}",
        count("ok")
    );
    assert!(
        count("rejected") >= 10,
        "only {} rejections",
        count("rejected")
    );
    assert!(count("ended ") + count("expired ") >= 5);
}

/// 300 random operations (seed 1) give the same results on the store as on the model.
pub async fn random_operations_match_the_model_seed_1<S: Store>(store: S) {
    compare(store, 1).await;
}

/// 300 random operations (seed 2) give the same results on the store as on the model.
pub async fn random_operations_match_the_model_seed_2<S: Store>(store: S) {
    compare(store, 2).await;
}

/// 300 random operations (seed 3) give the same results on the store as on the model.
pub async fn random_operations_match_the_model_seed_3<S: Store>(store: S) {
    compare(store, 3).await;
}
