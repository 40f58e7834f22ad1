//! The outbox of back-channel logout, run against every backend: the session store writes a
//! [`LogoutDelivery`] in the same step as every ending of a session that has a back-channel
//! logout URI (logout, a parent's ending, an eviction, an ending of every session of a subject),
//! once, and the [`LogoutDeliveryStore`] hands each due delivery to one claimer at a time,
//! moves it along by attempts and lets operators list, retry and forget them.
//!
//! Each case uses an application of its own (so listings filter to its deliveries) and
//! finishes every delivery it claimed; the forgetting case keeps to a stretch of time before
//! [`t0`]. A backend runs the cases in order on one fresh store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portcullis_core::oidc::{
    Attempt, AttemptOutcome, DeliveryQuery, DeliveryState, LogoutDelivery, LogoutDeliveryStore,
    SigningAlg,
};
use portcullis_core::{
    Actor, AppId, EndReason, Ending, PublicId, SeededRandom, Session, SessionLimit, SessionStore,
    Timestamp,
};

use crate::{limited_insert, plain_insert, session_of, t0};

const LEASE: Duration = Duration::from_secs(60);

/// Runs every delivery case on `store` and its deliveries.
pub async fn delivery_store_contract<S: SessionStore>(
    store: Arc<S>,
    deliveries: Arc<dyn LogoutDeliveryStore>,
) {
    oidc_bcl_every_ending_of_a_marked_session_writes_one_delivery(&*store, &*deliveries).await;
    oidc_bcl_a_delivery_is_claimed_by_one_node_until_its_lease_runs_out(
        &*store,
        deliveries.clone(),
    )
    .await;
    oidc_bcl_10_attempts_retry_deliver_or_fail_and_operators_retry(&*store, &*deliveries).await;
    finished_deliveries_are_forgotten_and_pending_ones_kept(&*store, &*deliveries).await;
}

fn app(name: &str) -> AppId {
    PublicId::from_string(format!("app_bcl_{name}"))
}

fn ending(reason: EndReason, at: Timestamp) -> Ending {
    Ending {
        reason,
        at,
        actor: Actor("test".into()),
        reconstitute_until: None,
        retention: Duration::from_secs(3600),
    }
}

/// A live session of `subject` for `client`, with a back-channel logout URI when `marked`,
/// child of `parent` when given.
async fn live<S: SessionStore>(
    store: &S,
    subject: &str,
    client: &AppId,
    at: Timestamp,
    marked: bool,
    parent: Option<&Session>,
) -> Session {
    static SEED: AtomicU64 = AtomicU64::new(0xb0c1);
    let random = SeededRandom::new(SEED.fetch_add(1, Ordering::Relaxed));
    let (_, mut session) = session_of(subject, client, at, &random);
    session.back_channel_logout_uri = marked.then(|| format!("https://rp.example/{client}/bcl"));
    session.back_channel_logout_alg = marked.then_some(SigningAlg::Rs256);
    session.parent = parent.map(|p| p.id.clone());
    Arc::unwrap_or_clone(store.insert(plain_insert(session)).await.unwrap().session)
}

async fn of_client(deliveries: &dyn LogoutDeliveryStore, client: &AppId) -> Vec<LogoutDelivery> {
    deliveries
        .deliveries(&DeliveryQuery {
            client: Some(client.clone()),
            ..DeliveryQuery::default()
        })
        .await
        .unwrap()
}

/// Claims whatever is due at `at` and records it delivered, so later cases start clean.
async fn deliver_all(deliveries: &dyn LogoutDeliveryStore, at: Timestamp) {
    for d in deliveries
        .claim_deliveries(at, at.plus(LEASE), 10_000)
        .await
        .unwrap()
    {
        let attempt = Attempt {
            at,
            outcome: AttemptOutcome::Delivered,
        };
        deliveries
            .record_attempt(&d.session, &attempt)
            .await
            .unwrap();
    }
}

/// OIDC-BCL-9, "on every ending": the delivery is written with the ending, for the marked
/// session only, whichever way it ends; ending it again writes nothing more.
pub async fn oidc_bcl_every_ending_of_a_marked_session_writes_one_delivery<S: SessionStore>(
    store: &S,
    deliveries: &dyn LogoutDeliveryStore,
) {
    let (sso_app, client, other) = (app("sso"), app("endings"), app("endings_plain"));
    let at = t0();
    let sso = live(store, "bcl-ending", &sso_app, at, false, None).await;
    let marked = live(store, "bcl-ending", &client, at, true, Some(&sso)).await;
    let plain = live(store, "bcl-ending", &other, at, false, Some(&sso)).await;

    let later = at.plus(Duration::from_secs(5));
    store
        .end(&sso.id, ending(EndReason::Logout, later))
        .await
        .unwrap();
    let written = of_client(deliveries, &client).await;
    assert_eq!(
        written,
        vec![LogoutDelivery {
            session: marked.id.clone(),
            sso_session: Some(sso.id.clone()),
            subject: "bcl-ending".into(),
            client: client.clone(),
            reason: EndReason::ParentEnded,
            ended_at: later,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: later,
            last_error: None,
            uri: format!("https://rp.example/{client}/bcl"),
            alg: Some(SigningAlg::Rs256),
        }],
        "the marked child's ending wrote its delivery"
    );
    for unmarked in [&sso_app, &other] {
        assert!(of_client(deliveries, unmarked).await.is_empty());
    }
    assert!(deliveries.delivery(&plain.id).await.unwrap().is_none());
    assert_eq!(
        deliveries.delivery(&marked.id).await.unwrap().as_ref(),
        written.first()
    );

    // Ending what has ended records nothing again.
    store
        .end(&marked.id, ending(EndReason::Logout, later.plus(LEASE)))
        .await
        .unwrap();
    assert_eq!(of_client(deliveries, &client).await, written);

    // An ending of every session of the subject, and an eviction by a session limit.
    let direct = live(store, "bcl-ending", &client, later, true, None).await;
    store
        .end_subject(
            "bcl-ending",
            None,
            None,
            ending(EndReason::RevokedAdmin, later),
        )
        .await
        .unwrap();
    let evicted = live(store, "bcl-evict", &client, later, true, None).await;
    let random = SeededRandom::new(77);
    let (_, newcomer) = session_of("bcl-evict", &client, later, &random);
    store
        .insert(limited_insert(
            newcomer,
            SessionLimit {
                max: 1,
                on_limit: portcullis_core::OnLimit::EvictOldest,
            },
        ))
        .await
        .unwrap();
    let reasons: Vec<(String, EndReason)> = of_client(deliveries, &client)
        .await
        .into_iter()
        .map(|d| (d.session.as_str().to_owned(), d.reason))
        .collect();
    for (session, reason) in [
        (&direct, EndReason::RevokedAdmin),
        (&evicted, EndReason::NewDevice),
        (&marked, EndReason::ParentEnded),
    ] {
        assert!(
            reasons.contains(&(session.id.as_str().to_owned(), reason)),
            "{reason:?} wrote a delivery: {reasons:?}"
        );
    }
    assert_eq!(reasons.len(), 3);
    deliver_all(deliveries, later).await;
}

/// A node killed mid-delivery loses none: its claim lasts a lease, then another node claims.
/// Claims racing on several nodes never hand one delivery to two of them.
pub async fn oidc_bcl_a_delivery_is_claimed_by_one_node_until_its_lease_runs_out<
    S: SessionStore,
>(
    store: &S,
    deliveries: Arc<dyn LogoutDeliveryStore>,
) {
    let client = app("claims");
    let at = t0().plus(Duration::from_secs(3600));
    let mut ended = Vec::new();
    for n in 0..6 {
        let session = live(store, &format!("bcl-claim-{n}"), &client, at, true, None).await;
        store
            .end(&session.id, ending(EndReason::Logout, at))
            .await
            .unwrap();
        ended.push(session.id);
    }
    assert!(
        deliveries
            .claim_deliveries(at.minus(Duration::from_secs(1)), at.plus(LEASE), 100)
            .await
            .unwrap()
            .is_empty(),
        "nothing is due before its ending"
    );
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let deliveries = deliveries.clone();
            tokio::spawn(async move {
                deliveries
                    .claim_deliveries(at, at.plus(LEASE), 100)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for racer in racers {
        claimed.extend(racer.await.unwrap());
    }
    let mut ids: Vec<_> = claimed.iter().map(|d| d.session.clone()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ended.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(ids, ended, "every delivery claimed exactly once");
    assert!(claimed.iter().all(|d| d.next_attempt_at == at.plus(LEASE)));
    assert!(
        deliveries
            .claim_deliveries(at.plus(LEASE).minus(Duration::from_millis(1)), at, 100)
            .await
            .unwrap()
            .is_empty(),
        "a leased delivery is not claimed again before its lease ends"
    );
    let again = deliveries
        .claim_deliveries(at.plus(LEASE), at.plus(LEASE * 2), 2)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        2,
        "after the lease, claimable again, `limit` at a time"
    );
    deliver_all(&*deliveries, at.plus(LEASE * 3)).await;
    assert!(
        of_client(&*deliveries, &client)
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
}

/// OIDC-BCL-10: an attempt that may pass later leaves the delivery pending until its next
/// time; one delivered or refused finishes it, and a finished delivery takes no attempt more;
/// an operator can make a failed one pending again.
pub async fn oidc_bcl_10_attempts_retry_deliver_or_fail_and_operators_retry<S: SessionStore>(
    store: &S,
    deliveries: &dyn LogoutDeliveryStore,
) {
    let client = app("attempts");
    let at = t0().plus(Duration::from_secs(7200));
    let first = live(store, "bcl-attempt-1", &client, at, true, None).await;
    let second = live(store, "bcl-attempt-2", &client, at, true, None).await;
    for s in [&first, &second] {
        store
            .end(&s.id, ending(EndReason::Logout, at))
            .await
            .unwrap();
    }
    let pending_before = deliveries.pending_deliveries().await.unwrap();
    assert!(pending_before >= 2);
    let claimed = deliveries
        .claim_deliveries(at, at.plus(LEASE), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);

    let retry_at = at.plus(Duration::from_secs(10));
    let retry = Attempt {
        at,
        outcome: AttemptOutcome::Retry {
            at: retry_at,
            error: "HTTP 503".into(),
        },
    };
    let after = deliveries
        .record_attempt(&first.id, &retry)
        .await
        .unwrap()
        .expect("a pending delivery takes an attempt");
    assert_eq!(
        (after.state, after.attempts, after.next_attempt_at),
        (DeliveryState::Pending, 1, retry_at)
    );
    assert_eq!(after.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(deliveries.delivery(&first.id).await.unwrap(), Some(after));

    let refused = Attempt {
        at,
        outcome: AttemptOutcome::Failed {
            error: "HTTP 400".into(),
        },
    };
    let failed = deliveries
        .record_attempt(&second.id, &refused)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((failed.state, failed.attempts), (DeliveryState::Failed, 1));
    assert_eq!(
        deliveries.pending_deliveries().await.unwrap(),
        pending_before - 1
    );
    assert_eq!(
        deliveries.record_attempt(&second.id, &retry).await.unwrap(),
        None,
        "a failed delivery takes no attempt"
    );

    // Due again at its retry time, and only then.
    let due = deliveries
        .claim_deliveries(retry_at, retry_at.plus(LEASE), 100)
        .await
        .unwrap();
    assert_eq!(
        due.iter().map(|d| &d.session).collect::<Vec<_>>(),
        vec![&first.id]
    );
    let delivered = deliveries
        .record_attempt(
            &first.id,
            &Attempt {
                at: retry_at,
                outcome: AttemptOutcome::Delivered,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (delivered.state, delivered.attempts, delivered.last_error),
        (DeliveryState::Delivered, 2, None)
    );

    // Listing: newest ending first, filtered by state.
    let failed_only = deliveries
        .deliveries(&DeliveryQuery {
            state: Some(DeliveryState::Failed),
            client: Some(client.clone()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(failed_only.len(), 1);
    assert_eq!(failed_only[0].session, second.id);

    // An operator retries the failed one; a delivered one cannot be retried.
    let now = retry_at.plus(Duration::from_secs(60));
    let retried = deliveries
        .retry_delivery(&second.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (retried.state, retried.next_attempt_at, retried.attempts),
        (DeliveryState::Pending, now, 1)
    );
    assert_eq!(
        deliveries.retry_delivery(&first.id, now).await.unwrap(),
        None
    );
    assert_eq!(
        deliveries
            .retry_delivery(&PublicId::from_string("ses_00nothing".into()), now)
            .await
            .unwrap(),
        None
    );
    deliver_all(deliveries, now).await;
}

/// Finished deliveries are forgotten after the time operators may read them; pending ones
/// never are.
pub async fn finished_deliveries_are_forgotten_and_pending_ones_kept<S: SessionStore>(
    store: &S,
    deliveries: &dyn LogoutDeliveryStore,
) {
    let client = app("forget");
    let long_ago = t0().minus(Duration::from_secs(30 * 86_400));
    let mut ids = Vec::new();
    for n in 0..3 {
        let s = live(
            store,
            &format!("bcl-forget-{n}"),
            &client,
            long_ago,
            true,
            None,
        )
        .await;
        store
            .end(&s.id, ending(EndReason::Logout, long_ago))
            .await
            .unwrap();
        ids.push(s.id);
    }
    let finished = long_ago.plus(Duration::from_secs(60));
    for (id, outcome) in [
        (&ids[0], AttemptOutcome::Delivered),
        (
            &ids[1],
            AttemptOutcome::Failed {
                error: "HTTP 404".into(),
            },
        ),
    ] {
        deliveries
            .record_attempt(
                id,
                &Attempt {
                    at: finished,
                    outcome,
                },
            )
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        deliveries.forget_deliveries(finished).await.unwrap(),
        0,
        "nothing finished before its own finishing time"
    );
    assert_eq!(
        deliveries
            .forget_deliveries(finished.plus(Duration::from_millis(1)))
            .await
            .unwrap(),
        2
    );
    let left = of_client(deliveries, &client).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (&left[0].session, left[0].state),
        (&ids[2], DeliveryState::Pending)
    );
    deliver_all(deliveries, t0().plus(Duration::from_secs(86_400))).await;
}
