//! Cases for the session store contract itself: sessions, their events and the readiness ping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    Actor, AppId, AuditEvent, EndReason, EventKind, EventQuery, LiveCount, OnLimit, PublicId,
    SessionLimit, SessionStore, StoreError, Token, TokenKind, portcullis_app, subject_route,
};

use crate::{ending, limited_insert, plain_insert, random, rotated, session_at, session_of, t0};

const SEC: Duration = Duration::from_secs(1);

/// Lookups that arrive together (stores may batch them, and share the answer of one token read
/// many times) each get their own session, and a token nobody issued gets nothing.
pub async fn concurrent_lookups_each_get_their_own_session<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let random = random();
    let mut issued = Vec::new();
    for i in 0..40 {
        let (token, session) = session_at(&format!("user{i}"), t0(), &random);
        store.insert(plain_insert(session.clone())).await.unwrap();
        issued.push((token.routed_hash(), Some(session.id)));
    }
    for _ in 0..10 {
        let stranger = Token::generate(TokenKind::Session, &*random);
        issued.push((stranger.hash(), None));
    }
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..20 {
        for (hash, id) in issued.iter().cloned() {
            let store = Arc::clone(&store);
            lookups.spawn(async move {
                let found = store.find_by_token(&hash).await.unwrap();
                (found.map(|s| (s.token_hash, s.id.clone())), hash, id)
            });
        }
    }
    let mut answered = 0;
    while let Some(lookup) = lookups.join_next().await {
        match lookup.unwrap() {
            (Some((found_hash, found_id)), hash, Some(id)) => {
                assert_eq!(found_hash, hash);
                assert_eq!(found_id, id);
            }
            (None, _, None) => {}
            (found, hash, id) => panic!("lookup of {hash:?}: found {found:?}, expected {id:?}"),
        }
        answered += 1;
    }
    assert_eq!(answered, 20 * 50);
}

/// A created session is found by its token hash and by its id, unchanged.
pub async fn insert_then_find_by_token_and_id<S: SessionStore>(store: S) {
    let (token, session) = session_at("alice", t0(), &random());
    let inserted = store.insert(plain_insert(session.clone())).await.unwrap();
    assert_eq!(*inserted.session, session);
    assert_eq!(inserted.events.len(), 1);
    assert_eq!(inserted.events[0].kind, EventKind::SessionCreated);
    let by_token = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*by_token, session);
    let by_id = store.find_by_id(&session.id).await.unwrap().unwrap();
    assert_eq!(*by_id, session);
}

/// Lookups of what was never stored answer `None`, not an error.
pub async fn unknown_lookups_are_none<S: SessionStore>(store: S) {
    let r = random();
    let token = Token::generate(TokenKind::Session, r.as_ref());
    assert!(
        store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_by_id(&PublicId::generate("ses_", r.as_ref()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_subject("nobody").await.unwrap().is_empty());
}

/// Listing a subject gives its live sessions, oldest first, and nobody else's.
pub async fn list_subject_is_live_sessions_oldest_first<S: SessionStore>(store: S) {
    let r = random();
    let mut ids = vec![];
    for i in 0..3 {
        let (_, s) = session_at("alice", t0().plus(SEC * (3 - i)), &r);
        ids.push(s.id.clone());
        store.insert(plain_insert(s)).await.unwrap();
    }
    let (_, other) = session_at("bob", t0(), &r);
    store.insert(plain_insert(other)).await.unwrap();
    store
        .end(&ids[1], ending(EndReason::Logout, t0().plus(SEC * 5)))
        .await
        .unwrap();
    let listed: Vec<_> = store
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[0].clone()]);
}

/// A touch moves `last_seen_at` and the idle deadline forward, never back, and keeps the version.
pub async fn touch_moves_activity_forward_only<S: SessionStore>(store: S) {
    let (token, s) = session_at("alice", t0(), &random());
    store.insert(plain_insert(s.clone())).await.unwrap();
    store.touch(&s.id, t0().plus(SEC * 60)).await.unwrap();
    store.touch(&s.id, t0().plus(SEC * 30)).await.unwrap();
    store.flush().await.unwrap();
    let after = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.last_seen_at, t0().plus(SEC * 60));
    assert_eq!(after.idle.as_ref().unwrap().at, t0().plus(SEC * 960));
    assert_eq!(after.version, s.version);
}

/// Replace succeeds only at the version read; afterwards the old token finds nothing.
pub async fn replace_is_compare_and_set_and_kills_the_old_token<S: SessionStore>(store: S) {
    let r = random();
    let (old_token, s) = session_at("alice", t0(), &r);
    store.insert(plain_insert(s.clone())).await.unwrap();
    let (new_token, next, event) = rotated(&s, &r);
    let (stored, event) = store
        .replace(s.version, next.clone(), event.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*stored, next);
    assert!(event.seq > 0);
    assert!(
        store
            .find_by_token(&old_token.routed_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        *store
            .find_by_token(&new_token.routed_hash())
            .await
            .unwrap()
            .unwrap(),
        next
    );
    // A second writer that read the old version loses.
    let mut stale = s.clone();
    stale.data = serde_json::json!("lost update");
    stale.version += 1;
    assert!(
        store
            .replace(s.version, stale, event.clone())
            .await
            .unwrap()
            .is_none()
    );
    // An ended session cannot be replaced.
    store
        .end(&s.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    let mut late = next.clone();
    late.version += 1;
    assert!(
        store
            .replace(next.version + 1, late, event)
            .await
            .unwrap()
            .is_none()
    );
}

/// Ending twice records one ending and one event.
pub async fn end_is_recorded_exactly_once<S: SessionStore>(store: S) {
    let (token, s) = session_at("alice", t0(), &random());
    store.insert(plain_insert(s.clone())).await.unwrap();
    let first = store
        .end(&s.id, ending(EndReason::Logout, t0().plus(SEC)))
        .await
        .unwrap();
    assert_eq!(first.sessions.len(), 1);
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].reason, Some(EndReason::Logout));
    let second = store
        .end(&s.id, ending(EndReason::RevokedAdmin, t0().plus(SEC * 2)))
        .await
        .unwrap();
    assert!(second.sessions.is_empty() && second.events.is_empty());
    let found = store
        .find_by_token(&token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    let ended = found.ended.as_ref().unwrap();
    assert_eq!(
        (ended.reason, ended.at),
        (EndReason::Logout, t0().plus(SEC))
    );
    let q = EventQuery {
        session_id: Some(s.id.clone()),
        limit: 100,
        ..Default::default()
    };
    let ends = store
        .events(&q)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::SessionEnded)
        .count();
    assert_eq!(ends, 1);
}

/// Ending a parent ends its live children with `parent_ended`, in the same unit.
pub async fn end_cascades_to_children<S: SessionStore>(store: S) {
    let r = random();
    let (_, parent) = session_at("alice", t0(), &r);
    let (child_token, mut child) = session_at("alice", t0(), &r);
    child.parent = Some(parent.id.clone());
    store.insert(plain_insert(parent.clone())).await.unwrap();
    store.insert(plain_insert(child.clone())).await.unwrap();
    let ended = store
        .end(&parent.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 1);
    assert_eq!(ended.events.len(), 2);
    let child = store
        .find_by_token(&child_token.routed_hash())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child.ended.as_ref().unwrap().reason, EndReason::ParentEnded);
}

/// A sweep in small batches over many subjects: each call answers the earliest due sessions
/// across all of them, in deadline order, and ending what it answered moves on to the next,
/// until nothing is left.
pub async fn due_in_batches_walks_every_subject_in_deadline_order<S: SessionStore>(store: S) {
    let r = random();
    let mut expected = vec![];
    for i in 0..30u32 {
        // Created in a shuffled order, so deadlines and subjects (hence shards) do not line up.
        let at = t0().plus(SEC * ((i * 7) % 30));
        let (_, s) = session_at(&format!("user{i}"), at, &r);
        expected.push((s.idle.as_ref().unwrap().at, s.id.clone()));
        store.insert(plain_insert(s)).await.unwrap();
    }
    expected.sort();
    let later = t0().plus(SEC * 10_000);
    let mut swept = vec![];
    for _ in 0..10 {
        let due = store.due(later, 7).await.unwrap();
        if due.is_empty() {
            break;
        }
        assert!(due.len() <= 7);
        for session in &due {
            swept.push((session.next_deadline().0, session.id.clone()));
            store
                .end(&session.id, ending(EndReason::ExpiredIdle, later))
                .await
                .unwrap();
        }
    }
    assert_eq!(swept, expected);
}

/// A child is stored only under a live parent of its own subject: under someone else's
/// session, an unknown one or one that has ended, the insert is refused and nothing is stored.
pub async fn a_child_needs_a_live_parent_of_its_subject<S: SessionStore>(store: S) {
    let r = random();
    let (_, parent) = session_at("alice", t0(), &r);
    store.insert(plain_insert(parent.clone())).await.unwrap();
    let (_, bobs) = session_at("bob", t0(), &r);
    store.insert(plain_insert(bobs.clone())).await.unwrap();
    let unknown = PublicId::generate_routed("ses_", subject_route("alice"), r.as_ref());
    let refused = |parent: PublicId| {
        let (token, mut child) = session_at("alice", t0(), &r);
        child.parent = Some(parent);
        (token, child)
    };
    for parent_id in [bobs.id.clone(), unknown] {
        let (token, child) = refused(parent_id);
        let err = store.insert(plain_insert(child)).await.unwrap_err();
        assert!(matches!(err, StoreError::ParentNotLive), "{err:?}");
        assert!(
            store
                .find_by_token(&token.routed_hash())
                .await
                .unwrap()
                .is_none()
        );
    }
    store
        .end(&parent.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    let (token, child) = refused(parent.id.clone());
    let err = store.insert(plain_insert(child)).await.unwrap_err();
    assert!(matches!(err, StoreError::ParentNotLive), "{err:?}");
    assert!(
        store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.list_subject("alice").await.unwrap().is_empty());
}

/// Ending a parent while its child keeps rotating and new children keep arriving leaves none of
/// them live: a rotation moves a child under the ending's feet, and a child created meanwhile is
/// either refused or ended with the rest.
pub async fn a_parent_ending_reaches_children_rotating_or_created_meanwhile<S: SessionStore>(
    store: S,
) {
    let store = Arc::new(store);
    let r = random();
    for round in 0..12u64 {
        let subject = format!("family{round}");
        let (_, parent) = session_at(&subject, t0(), &r);
        let (_, mut child) = session_at(&subject, t0(), &r);
        child.parent = Some(parent.id.clone());
        store.insert(plain_insert(parent.clone())).await.unwrap();
        store.insert(plain_insert(child.clone())).await.unwrap();
        let rotating = {
            let (store, r, id) = (Arc::clone(&store), Arc::clone(&r), child.id.clone());
            tokio::spawn(async move {
                // Bounded: a child that escaped the ending would rotate forever.
                for _ in 0..300 {
                    let Some(current) = store.find_by_id(&id).await.unwrap() else {
                        break;
                    };
                    let (_, next, event) = rotated(&current, &r);
                    if store
                        .replace(current.version, next, event)
                        .await
                        .unwrap()
                        .is_none()
                    {
                        break;
                    }
                }
            })
        };
        let creating = {
            let (store, r, subject, parent_id) = (
                Arc::clone(&store),
                Arc::clone(&r),
                subject.clone(),
                parent.id.clone(),
            );
            tokio::spawn(async move {
                for _ in 0..8 {
                    let (_, mut late) = session_at(&subject, t0(), &r);
                    late.parent = Some(parent_id.clone());
                    match store.insert(plain_insert(late)).await {
                        Ok(_) | Err(StoreError::ParentNotLive) => {}
                        Err(other) => panic!("unexpected store error: {other}"),
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        for _ in 0..round % 4 {
            tokio::task::yield_now().await;
        }
        store
            .end(&parent.id, ending(EndReason::Logout, t0()))
            .await
            .unwrap();
        rotating.await.unwrap();
        creating.await.unwrap();
        let live = store.list_subject(&subject).await.unwrap();
        assert!(
            live.is_empty(),
            "round {round}: still live after the parent ended: {:?}",
            live.iter().map(|s| (&s.id, &s.parent)).collect::<Vec<_>>()
        );
    }
}

/// Ending a subject's sessions spares the exception and nobody else is touched.
pub async fn end_subject_spares_the_exception<S: SessionStore>(store: S) {
    let r = random();
    let mut ids = vec![];
    for _ in 0..3 {
        let (_, s) = session_at("alice", t0(), &r);
        ids.push(s.id.clone());
        store.insert(plain_insert(s)).await.unwrap();
    }
    let (_, bob) = session_at("bob", t0(), &r);
    store.insert(plain_insert(bob.clone())).await.unwrap();
    let ended = store
        .end_subject(
            "alice",
            None,
            Some(&ids[1]),
            ending(EndReason::PasswordChanged, t0()),
        )
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 2);
    assert!(
        ended
            .events
            .iter()
            .all(|e| e.reason == Some(EndReason::PasswordChanged))
    );
    let live: Vec<_> = store
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(live, vec![ids[1].clone()]);
    assert_eq!(store.list_subject("bob").await.unwrap().len(), 1);
}

fn limit(max: u32, on_limit: OnLimit) -> SessionLimit {
    SessionLimit { max, on_limit }
}

/// With `deny`, the insert over the limit fails and nothing changes.
pub async fn limit_deny_refuses<S: SessionStore>(store: S) {
    let r = random();
    for _ in 0..2 {
        let (_, s) = session_at("alice", t0(), &r);
        store
            .insert(limited_insert(s, limit(2, OnLimit::Deny)))
            .await
            .unwrap();
    }
    let (_, third) = session_at("alice", t0(), &r);
    let err = store
        .insert(limited_insert(third.clone(), limit(2, OnLimit::Deny)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LimitReached));
    assert!(store.find_by_id(&third.id).await.unwrap().is_none());
    assert_eq!(store.list_subject("alice").await.unwrap().len(), 2);
}

/// With `evict_oldest`, the session created first ends with `new_device`.
pub async fn limit_evicts_oldest<S: SessionStore>(store: S) {
    let r = random();
    let mut ids = vec![];
    for i in 0..2 {
        let (_, s) = session_at("alice", t0().plus(SEC * i), &r);
        ids.push(s.id.clone());
        store
            .insert(limited_insert(s, limit(2, OnLimit::EvictOldest)))
            .await
            .unwrap();
    }
    store.touch(&ids[1], t0().plus(SEC * 5)).await.unwrap();
    let (_, third) = session_at("alice", t0().plus(SEC * 10), &r);
    let inserted = store
        .insert(limited_insert(
            third.clone(),
            limit(2, OnLimit::EvictOldest),
        ))
        .await
        .unwrap();
    // The creation first, then the eviction it caused, in the answer and in the trail.
    let kinds: Vec<_> = inserted.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::SessionCreated, EventKind::SessionEnded]
    );
    assert!(inserted.events[0].seq < inserted.events[1].seq);
    let trail = store
        .events(&EventQuery {
            after: inserted.events[0].seq - 1,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(trail, inserted.events);
    let evicted = store.find_by_id(&ids[0]).await.unwrap().unwrap();
    assert_eq!(evicted.ended.as_ref().unwrap().reason, EndReason::NewDevice);
    let live: Vec<_> = store
        .list_subject("alice")
        .await
        .unwrap()
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(live, vec![ids[1].clone(), third.id]);
}

/// With `evict_idlest`, the session idle longest ends, even if it is not the oldest.
pub async fn limit_evicts_idlest<S: SessionStore>(store: S) {
    let r = random();
    let mut ids = vec![];
    for i in 0..2 {
        let (_, s) = session_at("alice", t0().plus(SEC * i), &r);
        ids.push(s.id.clone());
        store
            .insert(limited_insert(s, limit(2, OnLimit::EvictIdlest)))
            .await
            .unwrap();
    }
    store.touch(&ids[0], t0().plus(SEC * 5)).await.unwrap();
    let (_, third) = session_at("alice", t0().plus(SEC * 10), &r);
    store
        .insert(limited_insert(third, limit(2, OnLimit::EvictIdlest)))
        .await
        .unwrap();
    let evicted = store.find_by_id(&ids[1]).await.unwrap().unwrap();
    assert_eq!(evicted.ended.as_ref().unwrap().reason, EndReason::NewDevice);
    assert!(store.find_by_id(&ids[0]).await.unwrap().unwrap().is_live());
}

/// A limit counts only the sessions of the new session's policy (an application's sessions
/// never push out another's), and a child never evicts its own parent: when only the parent
/// would be left to end, the insert is refused.
pub async fn limit_counts_one_policy_and_spares_the_parent<S: SessionStore>(store: S) {
    let r = random();
    let (_, parent) = session_at("alice", t0(), &r);
    let (_, second) = session_at("alice", t0().plus(SEC), &r);
    store.insert(plain_insert(parent.clone())).await.unwrap();
    store.insert(plain_insert(second.clone())).await.unwrap();
    let (_, mut app) = session_at("alice", t0().plus(SEC * 2), &r);
    app.policy = "app".into();
    let inserted = store
        .insert(limited_insert(app, limit(2, OnLimit::EvictOldest)))
        .await
        .unwrap();
    assert_eq!(
        inserted.events.len(),
        1,
        "nothing evicted for another policy"
    );
    assert_eq!(store.list_subject("alice").await.unwrap().len(), 3);

    let (_, mut child) = session_at("alice", t0().plus(SEC * 3), &r);
    child.parent = Some(parent.id.clone());
    let inserted = store
        .insert(limited_insert(
            child.clone(),
            limit(2, OnLimit::EvictOldest),
        ))
        .await
        .unwrap();
    let evicted: Vec<_> = inserted
        .events
        .iter()
        .filter(|e| e.kind == EventKind::SessionEnded)
        .filter_map(|e| e.session_id.clone())
        .collect();
    assert!(
        evicted.contains(&second.id),
        "the other default session makes room"
    );
    assert!(!evicted.contains(&parent.id), "the parent is spared");
    let parent_now = store.find_by_id(&parent.id).await.unwrap().unwrap();
    assert!(parent_now.is_live());

    let (token, mut another) = session_at("alice", t0().plus(SEC * 4), &r);
    another.parent = Some(parent.id.clone());
    let err = store
        .insert(limited_insert(another, limit(1, OnLimit::EvictOldest)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LimitReached), "{err:?}");
    assert!(
        store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .find_by_id(&child.id)
            .await
            .unwrap()
            .unwrap()
            .is_live()
    );
}

/// 50 parallel creates for one subject with a limit of 3 leave exactly 3 live sessions,
/// under `evict_oldest` and under `deny` alike.
pub async fn limit_holds_under_50_concurrent_creates<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let r = random();
    for (subject, on_limit) in [
        ("evicting", OnLimit::EvictOldest),
        ("denying", OnLimit::Deny),
    ] {
        let mut tasks = Vec::new();
        for i in 0..50u32 {
            let (_, s) = session_at(subject, t0().plus(Duration::from_millis(i.into())), &r);
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store.insert(limited_insert(s, limit(3, on_limit))).await
            }));
        }
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::LimitReached) => {}
                Err(other) => panic!("unexpected store error: {other}"),
            }
        }
        assert_eq!(
            store.list_subject(subject).await.unwrap().len(),
            3,
            "{subject}"
        );
        let expected_created = if on_limit == OnLimit::Deny { 3 } else { 50 };
        assert_eq!(created, expected_created, "{subject}");
    }
}

/// `due` returns the live sessions whose nearest deadline passed, earliest first, and no other.
pub async fn due_is_only_what_passed_in_deadline_order<S: SessionStore>(store: S) {
    let r = random();
    let mut ids = vec![];
    for i in 0..4u32 {
        let (_, s) = session_at("alice", t0().plus(SEC * (10 * (4 - i))), &r);
        ids.push(s.id.clone());
        store.insert(plain_insert(s)).await.unwrap();
    }
    // Idle deadlines: +940s, +930s, +920s, +910s. Keep the earliest alive by activity.
    store.touch(&ids[3], t0().plus(SEC * 100)).await.unwrap();
    store
        .end(&ids[2], ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    let due = store.due(t0().plus(SEC * 935), 10).await.unwrap();
    let due_ids: Vec<_> = due.iter().map(|s| s.id.clone()).collect();
    assert_eq!(due_ids, vec![ids[1].clone()]);
    let due = store.due(t0().plus(SEC * 10_000), 10).await.unwrap();
    let due_ids: Vec<_> = due.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        due_ids,
        vec![ids[1].clone(), ids[0].clone(), ids[3].clone()]
    );
    assert_eq!(
        store.due(t0().plus(SEC * 10_000), 2).await.unwrap().len(),
        2
    );
}

/// A timed-out session's data is given back once, to the same subject and policy; a logged-out
/// session's never is.
pub async fn tombstone_reconstitutes_once<S: SessionStore>(store: S) {
    let r = random();
    let (_, timed_out) = session_at("alice", t0(), &r);
    let (_, logged_out) = session_at("alice", t0(), &r);
    store.insert(plain_insert(timed_out.clone())).await.unwrap();
    store
        .insert(plain_insert(logged_out.clone()))
        .await
        .unwrap();
    let mut timeout = ending(EndReason::ExpiredIdle, t0().plus(SEC * 900));
    timeout.reconstitute_until = Some(t0().plus(SEC * 5000));
    store.end(&timed_out.id, timeout).await.unwrap();
    let mut logout = ending(EndReason::Logout, t0().plus(SEC * 950));
    logout.reconstitute_until = None;
    store.end(&logged_out.id, logout).await.unwrap();

    let (_, mut fresh) = session_at("alice", t0().plus(SEC * 1000), &r);
    fresh.data = serde_json::Value::Null;
    let mut insert = plain_insert(fresh.clone());
    insert.reconstitute = true;
    let inserted = store.insert(insert).await.unwrap();
    assert_eq!(inserted.session.data, timed_out.data);
    assert_eq!(
        inserted.session.reconstituted_from,
        Some(timed_out.id.clone())
    );

    let (_, mut again) = session_at("alice", t0().plus(SEC * 1001), &r);
    again.data = serde_json::Value::Null;
    let mut insert = plain_insert(again);
    insert.reconstitute = true;
    let second = store.insert(insert).await.unwrap();
    assert_eq!(second.session.data, serde_json::Value::Null);
    assert_eq!(second.session.reconstituted_from, None);
}

/// Ended sessions are forgotten once their retention is over, not before.
pub async fn purge_forgets_after_retention<S: SessionStore>(store: S) {
    let (token, s) = session_at("alice", t0(), &random());
    store.insert(plain_insert(s.clone())).await.unwrap();
    store
        .end(&s.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(store.purge(t0().plus(SEC * 3599)).await.unwrap(), 0);
    assert!(
        store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.purge(t0().plus(SEC * 3600)).await.unwrap(), 1);
    assert!(
        store
            .find_by_token(&token.routed_hash())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_by_id(&s.id).await.unwrap().is_none());
}

/// ASVS4-7.2.1: a reader paging the trail by `after` while sessions are written (for many
/// subjects: a sharded store writes them to many streams) sees every event exactly once, in
/// order: no event turns up later below a position the reader has passed.
pub async fn events_paged_while_written_are_each_seen_once<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    let r = random();
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let store = Arc::clone(&store);
            let sessions: Vec<_> = (0..40u32)
                .map(|i| session_at(&format!("tail-{w}-{i}"), t0(), &r).1)
                .collect();
            tokio::spawn(async move {
                for session in sessions {
                    store.insert(plain_insert(session)).await.unwrap();
                }
            })
        })
        .collect();
    // Pages large enough for the reader to keep up with the writers: it is at the head of the
    // trail, where an event written late below its position would be passed.
    let page = |after| EventQuery {
        after,
        limit: 1_000,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let written = writers.iter().all(|w| w.is_finished());
        let events = store.events(&page(after)).await.unwrap();
        let Some(last) = events.last() else {
            if written {
                break;
            }
            tokio::task::yield_now().await;
            continue;
        };
        after = last.seq;
        seen.extend(events.iter().map(|e| e.seq));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all: Vec<u64> = store
        .events(&EventQuery {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all.len(), 320, "one event per session");
    let missed = all.iter().filter(|seq| !seen.contains(seq)).count();
    assert_eq!(missed, 0, "events the reader passed without seeing");
    assert_eq!(seen, all, "each seen once, in order");
}

/// Events come back in order, filtered by subject or session, and paged by position.
pub async fn events_are_ordered_filtered_and_paged<S: SessionStore>(store: S) {
    let r = random();
    let (_, a) = session_at("alice", t0(), &r);
    let (_, b) = session_at("bob", t0(), &r);
    store.insert(plain_insert(a.clone())).await.unwrap();
    store.insert(plain_insert(b.clone())).await.unwrap();
    store
        .end(&a.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    let all = store
        .events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let alice = store
        .events(&EventQuery {
            subject: Some("alice".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        alice.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventKind::SessionCreated, EventKind::SessionEnded]
    );
    let by_session = store
        .events(&EventQuery {
            session_id: Some(b.id.clone()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_session.len(), 1);
    let page = store
        .events(&EventQuery {
            after: all[0].seq,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page, vec![all[1].clone()]);
}

/// Account and sign-in events (no session) join the same trail: positions keep increasing
/// across both kinds, a query by subject finds a person's account events beside their session
/// events, one by application finds Portcullis's own, and an event of no subject (a failure
/// for an unknown name) is kept too, with its detail.
pub async fn account_events_join_the_session_trail<S: SessionStore>(store: S) {
    let r = random();
    let (_, session) = session_at("usr_carol", t0(), &r);
    store.insert(plain_insert(session)).await.unwrap();
    let changed = store
        .append_event(
            AuditEvent::for_account(
                EventKind::UserPasswordChanged,
                "usr_carol",
                "carol",
                t0().plus(SEC),
                &Actor::user("usr_carol"),
            )
            .with_client(Some("192.0.2.7"), Some("Firefox")),
        )
        .await
        .unwrap();
    let mut unknown = AuditEvent::for_account(
        EventKind::LoginFailed,
        "",
        "",
        t0().plus(SEC * 2),
        &Actor::system(),
    );
    unknown.detail = serde_json::json!({ "failed": "username" });
    let unknown = store.append_event(unknown).await.unwrap();
    // Positions are unique; their order across a Redis store's streams (a subject's, and the
    // one for events of no subject) follows time only to the millisecond, so it is not asserted.
    assert!(changed.seq > 0 && unknown.seq > 0 && changed.seq != unknown.seq);

    let carol = store
        .events(&EventQuery {
            subject: Some("usr_carol".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        carol.iter().map(|e| e.kind).collect::<Vec<_>>(),
        vec![EventKind::SessionCreated, EventKind::UserPasswordChanged]
    );
    assert_eq!(carol[1], changed, "read back as appended");
    assert_eq!(carol[1].detail_str("client_ip"), Some("192.0.2.7"));

    let ours = store
        .events(&EventQuery {
            application: Some(portcullis_app()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut both = vec![changed.clone(), unknown.clone()];
    both.sort_by_key(|e| e.seq);
    assert_eq!(ours, both);
    let all = store
        .events(&EventQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let after = store
        .events(&EventQuery {
            after: changed.seq,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let later: Vec<_> = all.into_iter().filter(|e| e.seq > changed.seq).collect();
    assert_eq!(after, later, "paged by position like every event");
    assert_eq!(after.contains(&unknown), unknown.seq > changed.seq);
}

/// A healthy store answers its readiness ping.
pub async fn ping_answers<S: SessionStore>(store: S) {
    store.ping().await.unwrap();
}

/// Live sessions are counted per application and policy, exactly: an ended session is not
/// counted, a child counts as a session of its own policy, a rotated session once, and a pair
/// whose sessions have all ended is no longer listed.
pub async fn live_counts_are_live_sessions_per_application_and_policy<S: SessionStore>(store: S) {
    let r = random();
    let shop = PublicId::from_string("app_shop".into());
    let blog = PublicId::from_string("app_blog".into());
    let under = |subject: &str, app: &AppId, policy: &str| {
        let (_, mut s) = session_of(subject, app, t0(), &r);
        s.policy = policy.into();
        s
    };
    let alice = under("alice", &shop, "default");
    let bob = under("bob", &shop, "default");
    let carol = under("carol", &shop, "bank");
    let dave = under("dave", &blog, "default");
    let mut child = under("alice", &shop, "bank");
    child.parent = Some(alice.id.clone());
    for s in [&alice, &bob, &carol, &dave, &child] {
        store.insert(plain_insert(s.clone())).await.unwrap();
    }
    store
        .end(&bob.id, ending(EndReason::Logout, t0().plus(SEC)))
        .await
        .unwrap();
    let (_, next, event) = rotated(&carol, &r);
    store
        .replace(carol.version, next, event)
        .await
        .unwrap()
        .unwrap();

    let counts = |counts: Vec<LiveCount>| -> BTreeMap<(String, String), u64> {
        let mut seen = BTreeMap::new();
        for c in counts {
            let pair = (c.application.as_str().to_owned(), c.policy);
            assert!(seen.insert(pair, c.sessions).is_none(), "each pair once");
        }
        seen
    };
    let pair = |app: &str, policy: &str| (app.to_owned(), policy.to_owned());
    assert_eq!(
        counts(store.live_counts().await.unwrap()),
        BTreeMap::from([
            (pair("app_blog", "default"), 1),
            (pair("app_shop", "bank"), 2),
            (pair("app_shop", "default"), 1),
        ])
    );

    // Ending alice's session ends her child with it; dave's was blog's only one.
    for s in [&alice, &dave] {
        store
            .end(&s.id, ending(EndReason::Logout, t0().plus(SEC * 2)))
            .await
            .unwrap();
    }
    assert_eq!(
        counts(store.live_counts().await.unwrap()),
        BTreeMap::from([(pair("app_shop", "bank"), 1)])
    );
}
