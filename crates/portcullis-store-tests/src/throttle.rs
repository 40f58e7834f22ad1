//! The failure-counting contract ([`ThrottleStore`]), run against every backend's store: the
//! back-off sequence of [`portcullis_core::Strikes::count`], refunds, clears, forgetting, locking, independent
//! keys, sweeping expired records, atomic counting under concurrent attempts, and random
//! operation sequences compared with [`MemoryThrottleStore`] (the model).
//!
//! Every case keeps to keys of its own; the two that act on the whole store
//! ([`ThrottleStore::forget_expired`]) keep to a stretch of time of their own before
//! [`t0`], so all cases can share one store, in any order. No case sleeps: time is the
//! `now` each call is given.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::throttle::MAX_KEY_LEN;
use portcullis_core::{
    MemoryThrottleStore, RandomSource, SeededRandom, ThrottleRules, ThrottleStore, Timestamp,
    Verdict,
};

use crate::t0;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// How a store lets go of records past their [`portcullis_core::Strikes::expires_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// [`ThrottleStore::forget_expired`] deletes them and answers how many (SQL stores, memory).
    Swept,
    /// The backend drops each record at its expiry by itself (Redis: a TTL), so
    /// [`ThrottleStore::forget_expired`] answers 0.
    ByBackend,
}

/// Runs every case of the contract on `store`, whose records go as `expiry` says. Give it a
/// store of its own (a fresh database, schema or key prefix), as the other contracts do.
pub async fn throttle_store_contract(store: Arc<dyn ThrottleStore>, expiry: Expiry) {
    nist5_2_2_failures_back_off_exponentially_and_blocked_attempts_are_not_counted(&*store).await;
    a_refund_takes_back_one_attempt_and_lifts_the_block(&*store).await;
    a_clear_forgets_the_key(&*store).await;
    an_attempt_stamped_before_the_last_one_counted_is_not_blocked_by_it(&*store).await;
    failures_are_forgotten_forget_after_the_last_one(&*store).await;
    nist5_2_2_lock_after_locks_the_key_until_its_failures_are_forgotten(&*store).await;
    keys_are_counted_apart_whatever_their_text(&*store).await;
    forget_expired_drops_exactly_the_expired_records(&*store, expiry).await;
    concurrent_attempts_are_each_counted_once(store.clone()).await;
    random_operations_match_the_model(&*store, expiry).await;
}

fn allowed(failures: u32, then_wait: Option<Duration>) -> Verdict {
    Verdict::Allowed {
        failures,
        then_wait,
    }
}

/// Counts `n` attempts of `key` at `now` and answers the last verdict.
async fn attempts(
    store: &dyn ThrottleStore,
    key: &str,
    rules: &ThrottleRules,
    now: Timestamp,
    n: u32,
) -> Verdict {
    let mut last = None;
    for _ in 0..n {
        last = Some(store.attempt(key, rules, now).await.unwrap());
    }
    last.expect("at least one attempt")
}

/// `days` days before [`t0`]: the stretch of time of a case that sweeps the whole store.
fn days_before_t0(days: u32) -> Timestamp {
    let millis = i64::try_from(DAY.as_millis()).unwrap() * i64::from(days);
    Timestamp::from_millis(t0().as_millis() - millis)
}

/// Five free failures, then 30 s doubling up to 15 min ([`ThrottleRules::ACCOUNT`]); while
/// blocked, attempts are refused with the time left and not counted.
pub async fn nist5_2_2_failures_back_off_exponentially_and_blocked_attempts_are_not_counted(
    store: &dyn ThrottleStore,
) {
    let rules = ThrottleRules::ACCOUNT;
    let key = "backoff";
    for failures in 1..=5 {
        assert_eq!(
            store.attempt(key, &rules, t0()).await.unwrap(),
            allowed(failures, None),
            "failure {failures} is free"
        );
    }
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(6, Some(30 * SEC)),
        "the sixth attempt is counted and blocks what follows"
    );
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        Verdict::Blocked(30 * SEC)
    );
    assert_eq!(
        store
            .attempt(key, &rules, t0().plus(10 * SEC))
            .await
            .unwrap(),
        Verdict::Blocked(20 * SEC),
        "the wait is what is left of the block"
    );
    let mut now = t0().plus(30 * SEC);
    let mut wait = 60 * SEC;
    for failures in 7..=12 {
        assert_eq!(
            store.attempt(key, &rules, now).await.unwrap(),
            allowed(failures, Some(wait)),
            "blocked attempts were not counted; the delay doubles"
        );
        assert_eq!(
            store
                .attempt(key, &rules, now.plus(wait - SEC))
                .await
                .unwrap(),
            Verdict::Blocked(SEC),
            "blocked one second before the end of the block"
        );
        now = now.plus(wait);
        wait = (wait * 2).min(15 * MIN);
    }
    assert_eq!(wait, 15 * MIN, "the delay reached its cap");
    assert_eq!(
        store.attempt(key, &rules, now).await.unwrap(),
        allowed(13, Some(15 * MIN)),
        "the delay stays at its cap"
    );
}

/// A refund takes back one counted attempt and lifts the block; it never goes below zero, and
/// a key with no record stays without one.
pub async fn a_refund_takes_back_one_attempt_and_lifts_the_block(store: &dyn ThrottleStore) {
    let rules = ThrottleRules::ACCOUNT;
    let key = "refund";
    assert_eq!(
        attempts(store, key, &rules, t0(), 6).await,
        allowed(6, Some(30 * SEC))
    );
    store.refund(key).await.unwrap();
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(6, Some(30 * SEC)),
        "the refund lifted the block and took the sixth attempt back"
    );
    store.refund(key).await.unwrap();
    store.refund(key).await.unwrap();
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(5, None),
        "two refunds take back two attempts"
    );

    let key = "refund:floor";
    store.attempt(key, &rules, t0()).await.unwrap();
    for _ in 0..3 {
        store.refund(key).await.unwrap();
    }
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(1, None),
        "refunds stop at zero"
    );

    let key = "refund:missing";
    store.refund(key).await.unwrap();
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(1, None),
        "refunding a key with no record leaves it without one"
    );
}

/// Attempts reach the store out of clock order (a task reads the clock, another counts first;
/// nodes' clocks differ by milliseconds): an attempt stamped before the last one counted counts
/// as at the same instant, so the absence of a block never reads as a short one, and a real
/// block still holds.
pub async fn an_attempt_stamped_before_the_last_one_counted_is_not_blocked_by_it(
    store: &dyn ThrottleStore,
) {
    let rules = ThrottleRules::ACCOUNT;
    let key = "out-of-order";
    let later = t0().plus(Duration::from_millis(40));
    assert_eq!(
        store.attempt(key, &rules, later).await.unwrap(),
        allowed(1, None)
    );
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(2, None),
        "an earlier stamp is not blocked by a record without a block"
    );
    store.refund(key).await.unwrap();
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(2, None),
        "nor by a refunded one"
    );
    assert_eq!(
        attempts(store, key, &rules, t0(), 4).await,
        allowed(6, Some(30 * SEC))
    );
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        Verdict::Blocked(30 * SEC + Duration::from_millis(40)),
        "a real block holds for an earlier stamp, until its end"
    );
    store.clear(key).await.unwrap();
}

/// A clear forgets the key at once, block and all; clearing a key with no record is no error.
pub async fn a_clear_forgets_the_key(store: &dyn ThrottleStore) {
    let rules = ThrottleRules::ACCOUNT;
    let key = "clear";
    attempts(store, key, &rules, t0(), 7).await;
    assert!(matches!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        Verdict::Blocked(_)
    ));
    store.clear(key).await.unwrap();
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(1, None)
    );
    store.clear("clear:missing").await.unwrap();
    store.clear("clear:missing").await.unwrap();
}

/// Failures are forgotten `forget_after` the last one (not the first): an attempt then counts
/// as the first again.
pub async fn failures_are_forgotten_forget_after_the_last_one(store: &dyn ThrottleStore) {
    let rules = ThrottleRules::ADDRESS;
    let key = "forget";
    attempts(store, key, &rules, t0(), 3).await;
    let last = t0().plus(HOUR - SEC);
    assert_eq!(
        store.attempt(key, &rules, last).await.unwrap(),
        allowed(4, None),
        "an hour less a second after the last failure, it is still counted"
    );
    assert_eq!(
        store
            .attempt(key, &rules, last.plus(HOUR - SEC))
            .await
            .unwrap(),
        allowed(5, None),
        "counted from the last failure, not the first"
    );
    let last = last.plus(HOUR - SEC);
    assert_eq!(
        store.attempt(key, &rules, last.plus(HOUR)).await.unwrap(),
        allowed(1, None),
        "forgotten an hour after the last failure"
    );

    // A block that outlasts `forget_after` keeps the record until the block ends.
    let rules = ThrottleRules {
        free_failures: 0,
        first_delay: 2 * HOUR,
        max_delay: 2 * HOUR,
        forget_after: HOUR,
        lock_after: None,
    };
    let key = "forget:long-block";
    assert_eq!(
        store.attempt(key, &rules, t0()).await.unwrap(),
        allowed(1, Some(2 * HOUR))
    );
    assert_eq!(
        store.attempt(key, &rules, t0().plus(HOUR)).await.unwrap(),
        Verdict::Blocked(HOUR),
        "still blocked past forget_after"
    );
    assert_eq!(
        store
            .attempt(key, &rules, t0().plus(2 * HOUR))
            .await
            .unwrap(),
        allowed(1, Some(2 * HOUR)),
        "forgotten when the block ends, as it is past forget_after"
    );
}

/// At `lock_after` failures the key is locked for `forget_after` (NIST SP 800-63B §5.2.2: no
/// more than 100 consecutive failures), then everything is forgotten.
pub async fn nist5_2_2_lock_after_locks_the_key_until_its_failures_are_forgotten(
    store: &dyn ThrottleStore,
) {
    let rules = ThrottleRules {
        free_failures: 2,
        first_delay: SEC,
        max_delay: 4 * SEC,
        forget_after: HOUR,
        lock_after: Some(6),
    };
    let key = "lock";
    let mut now = t0();
    for (failures, wait) in [
        (1, None),
        (2, None),
        (3, Some(SEC)),
        (4, Some(2 * SEC)),
        (5, Some(4 * SEC)),
    ] {
        assert_eq!(
            store.attempt(key, &rules, now).await.unwrap(),
            allowed(failures, wait)
        );
        now = now.plus(wait.unwrap_or_default());
    }
    assert_eq!(
        store.attempt(key, &rules, now).await.unwrap(),
        allowed(6, Some(HOUR)),
        "the sixth failure locks the key for forget_after"
    );
    assert_eq!(
        store
            .attempt(key, &rules, now.plus(59 * MIN))
            .await
            .unwrap(),
        Verdict::Blocked(MIN),
        "locked, not counted"
    );
    assert_eq!(
        store.attempt(key, &rules, now.plus(HOUR)).await.unwrap(),
        allowed(1, None),
        "the lock ends with the failures forgotten"
    );
}

/// Keys never share a count: similar texts, upper and lower case, the characters of address
/// keys and Redis hash tags, and keys of [`MAX_KEY_LEN`].
pub async fn keys_are_counted_apart_whatever_their_text(store: &dyn ThrottleStore) {
    let rules = ThrottleRules::ADDRESS;
    let long = |last: char| {
        let mut key = "odd:".to_owned();
        key.extend(std::iter::repeat_n('x', MAX_KEY_LEN - key.len() - 1));
        key.push(last);
        key
    };
    let keys = [
        "odd:k".to_owned(),
        "odd:k:".to_owned(),
        "odd:K".to_owned(),
        "odd:{k}".to_owned(),
        "odd:{k}:".to_owned(),
        "odd:addr:2001:db8:1:2::/64".to_owned(),
        "odd:naïve café".to_owned(),
        long('x'),
        long('y'),
    ];
    assert_eq!(keys[7].len(), MAX_KEY_LEN);
    for (n, key) in (1..).zip(&keys) {
        assert_eq!(
            attempts(store, key, &rules, t0(), n).await,
            allowed(n, None),
            "{key}"
        );
    }
    for (n, key) in (1..).zip(&keys) {
        assert_eq!(
            store.attempt(key, &rules, t0()).await.unwrap(),
            allowed(n + 1, None),
            "{key} kept its own count"
        );
    }
    store.clear(&keys[3]).await.unwrap();
    store.refund(&keys[1]).await.unwrap();
    for (n, key) in (1..).zip(&keys) {
        let expected = match n {
            4 => 1,
            2 => 3,
            _ => n + 2,
        };
        assert_eq!(
            store.attempt(key, &rules, t0()).await.unwrap(),
            allowed(expected, None),
            "clearing and refunding other keys left {key} alone"
        );
    }
}

/// [`ThrottleStore::forget_expired`] drops records whose expiry is at or before `now` and
/// answers how many (a store whose backend expires records answers 0), and leaves the others:
/// either way an expired key then counts from one and a kept key goes on.
pub async fn forget_expired_drops_exactly_the_expired_records(
    store: &dyn ThrottleStore,
    expiry: Expiry,
) {
    let expect = |swept: u64| match expiry {
        Expiry::Swept => swept,
        Expiry::ByBackend => 0,
    };
    let start = days_before_t0(200);
    let address = ThrottleRules::ADDRESS;
    let account = ThrottleRules::ACCOUNT;
    // Expires at start + 1 h.
    store.attempt("sweep:a", &address, start).await.unwrap();
    // Expires at start + 1 h + 1 s.
    store
        .attempt("sweep:b", &address, start.plus(SEC))
        .await
        .unwrap();
    // Blocked; expires at start + 24 h.
    attempts(store, "sweep:c", &account, start, 6).await;

    assert_eq!(
        store.forget_expired(start.plus(HOUR - SEC)).await.unwrap(),
        0,
        "nothing has expired yet"
    );
    assert_eq!(
        store.forget_expired(start.plus(HOUR)).await.unwrap(),
        expect(1),
        "exactly the record expiring then"
    );
    assert_eq!(
        store.forget_expired(start.plus(HOUR)).await.unwrap(),
        0,
        "a record goes once"
    );
    let now = start.plus(HOUR + SEC);
    assert_eq!(
        store.attempt("sweep:a", &address, now).await.unwrap(),
        allowed(1, None),
        "the expired record behaves as absent"
    );
    assert_eq!(
        store.attempt("sweep:c", &account, now).await.unwrap(),
        allowed(7, Some(60 * SEC)),
        "the record that had not expired was kept"
    );
    let later = start.plus(10 * DAY);
    assert_eq!(
        store.forget_expired(later).await.unwrap(),
        expect(3),
        "every record has expired"
    );
    assert_eq!(store.forget_expired(later).await.unwrap(), 0);
    for key in ["sweep:a", "sweep:b", "sweep:c"] {
        assert_eq!(
            store.attempt(key, &account, later).await.unwrap(),
            allowed(1, None),
            "{key} was forgotten"
        );
        store.clear(key).await.unwrap();
    }
}

/// Twenty attempts at once on a key with three free failures: exactly four go ahead (counted
/// 1 to 4, each once) and the fourth's block refuses the sixteen others, none of them counted.
pub async fn concurrent_attempts_are_each_counted_once(store: Arc<dyn ThrottleStore>) {
    const KEY: &str = "race";
    let rules = ThrottleRules {
        free_failures: 3,
        first_delay: 30 * SEC,
        max_delay: 15 * MIN,
        forget_after: HOUR,
        lock_after: None,
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.attempt(KEY, &rules, t0()).await.unwrap() })
        })
        .collect();
    let mut counted = Vec::new();
    let mut blocked = 0;
    for task in tasks {
        match task.await.unwrap() {
            Verdict::Allowed {
                failures,
                then_wait,
            } => {
                let expected = (failures == 4).then_some(30 * SEC);
                assert_eq!(then_wait, expected, "failure {failures}");
                counted.push(failures);
            }
            Verdict::Blocked(wait) => {
                assert_eq!(wait, 30 * SEC);
                blocked += 1;
            }
        }
    }
    counted.sort_unstable();
    assert_eq!(counted, [1, 2, 3, 4], "each count given out exactly once");
    assert_eq!(blocked, 16);
    assert_eq!(
        store
            .attempt(KEY, &rules, t0().plus(30 * SEC))
            .await
            .unwrap(),
        allowed(5, Some(60 * SEC)),
        "the refused attempts were not counted"
    );
}

/// 400 random attempts, refunds, clears, sweeps and steps of time over three keys (two sets
/// of rules) give the same verdicts on the store as on [`MemoryThrottleStore`]; sweeps answer
/// the same count on a store that sweeps, 0 on one whose backend expires records.
pub async fn random_operations_match_the_model(store: &dyn ThrottleStore, expiry: Expiry) {
    let model = MemoryThrottleStore::new();
    let quick = ThrottleRules {
        free_failures: 2,
        first_delay: 5 * SEC,
        max_delay: 20 * SEC,
        forget_after: 10 * MIN,
        lock_after: Some(6),
    };
    let rules = [quick, quick, ThrottleRules::PENDING_SIGN_IN];
    let keys = ["model:0", "model:1", "model:2"];
    let random = SeededRandom::new(11);
    let mut now = days_before_t0(100);
    // What the sequence went through: the most failures counted per key, and blocks met.
    let mut most: HashMap<&str, u32> = HashMap::new();
    let mut blocks = 0;
    let mut swept = 0;
    for step in 0..400 {
        let mut bytes = [0u8; 3];
        random.fill(&mut bytes);
        let k = usize::from(bytes[1]) % keys.len();
        let (key, rules) = (keys[k], &rules[k]);
        match bytes[0] % 20 {
            0..=10 => {
                let got = store.attempt(key, rules, now).await.unwrap();
                let want = model.attempt(key, rules, now).await.unwrap();
                assert_eq!(got, want, "step {step}: attempt on {key} at {now:?}");
                match got {
                    Verdict::Allowed { failures, .. } => {
                        let most = most.entry(key).or_default();
                        *most = failures.max(*most);
                    }
                    Verdict::Blocked(_) => blocks += 1,
                }
            }
            11..=13 => {
                store.refund(key).await.unwrap();
                model.refund(key).await.unwrap();
            }
            14 => {
                store.clear(key).await.unwrap();
                model.clear(key).await.unwrap();
            }
            15 => {
                let got = store.forget_expired(now).await.unwrap();
                let want = model.forget_expired(now).await.unwrap();
                swept += want;
                let want = if expiry == Expiry::Swept { want } else { 0 };
                assert_eq!(got, want, "step {step}: forget_expired at {now:?}");
            }
            16..=18 => now = now.plus(Duration::from_secs(u64::from(bytes[2] % 40))),
            _ => now = now.plus(Duration::from_secs(u64::from(bytes[2]) * 4)),
        }
    }
    for (key, rules) in keys.iter().zip(&rules) {
        assert!(
            most.get(key) >= rules.lock_after.as_ref(),
            "the sequence locked {key}: {most:?}"
        );
    }
    assert!(blocks > 0 && swept > 0, "blocks {blocks}, swept {swept}");
    for key in keys {
        store.clear(key).await.unwrap();
    }
}
