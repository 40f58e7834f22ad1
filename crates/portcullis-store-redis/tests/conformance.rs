//! The conformance suite against Redis on loopback, each case under its own key prefix.
//! `PORTCULLIS_TEST_REDIS` overrides the server (default: the machine's, 127.0.0.1:6379).

use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_store_redis::RedisStore;

static NEXT: AtomicU32 = AtomicU32::new(0);

static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Deletes the keys left by earlier test processes that are gone.
async fn clean_old_keys(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run on loopback (see .ci/run)");
    // Keys are binary (session records end in the raw token hash).
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("pctest:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let text = String::from_utf8_lossy(&key);
        let pid = text.split(':').nth(1).unwrap_or("");
        if pid != std::process::id().to_string()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

/// The test server's URL.
fn server_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The server's URL and a key prefix of this process no other case uses (`pctest:<pid>:<kind><n>`),
/// once the keys of gone test processes are deleted.
async fn fresh_prefix(kind: &str) -> (String, String) {
    let url = server_url();
    CLEANED.get_or_init(|| clean_old_keys(&url)).await;
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let prefix = format!("pctest:{}:{kind}{n}", std::process::id());
    (url, prefix)
}

async fn fresh() -> RedisStore {
    let (url, prefix) = fresh_prefix("").await;
    RedisStore::connect(&format!("{url}?prefix={prefix}"))
        .await
        .expect("Redis must run on loopback (see .ci/run)")
}

portcullis_store_tests::store_conformance!(fresh());

/// How the store writes an engine's session id in its indexes: a marker byte, the route and the
/// id's 16 random bytes.
fn id_member(id: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut member = vec![1, u8::from_str_radix(&id[4..6], 16).unwrap()];
    member.extend(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&id[6..])
            .unwrap(),
    );
    member
}

/// A store under the prefix `pctest:<pid>:<name>`, with the prefix and a plain connection to its
/// server, for tests that look at the keys themselves.
async fn store_and_keys(name: &str) -> (RedisStore, String, redis::aio::MultiplexedConnection) {
    let url = server_url();
    let prefix = format!("pctest:{}:{name}", std::process::id());
    let store = RedisStore::connect(&format!("{url}?prefix={prefix}"))
        .await
        .unwrap();
    let conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    (store, prefix, conn)
}

/// Records carry no TTL (they go only by the store's own changes); when one goes missing anyway
/// (deleted by hand), the per-subject and deadline indexes and the tag's id hash do not keep the
/// dead entry: the next read of the index removes it.
#[tokio::test]
async fn indexes_never_keep_entries_of_sessions_deleted_behind_their_back() {
    use portcullis_core::SessionStore;
    use portcullis_store_tests::{plain_insert, random, session_at, t0};

    let (store, prefix, mut conn) = store_and_keys("ttl").await;
    let (token, session) = session_at("ivy", t0(), &random());
    store.insert(plain_insert(session.clone())).await.unwrap();
    let tag = format!("{:02x}", portcullis_core::subject_route("ivy"));
    let mut session_key = format!("{prefix}:{{{tag}}}:s:").into_bytes();
    session_key.extend_from_slice(&token.routed_hash().0);
    let subject_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:{{{tag}}}:ub:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(subject_keys.len(), 1, "one subject hash holds ivy");
    let deadline_key = format!("{prefix}:{{{tag}}}:db:{}", &session.id.as_str()[6..7]);
    let summary_key = format!("{prefix}:{{{tag}}}:dd");
    let ids_key = format!("{prefix}:{{{tag}}}:i:{}", &session.id.as_str()[6..7]);
    let id_entry: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(&ids_key)
        .arg(id_member(session.id.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(id_entry.as_deref(), Some(&token.routed_hash().0[..]));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&session_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "a live record has no TTL");
    let _: i64 = redis::cmd("DEL")
        .arg(&session_key)
        .query_async(&mut conn)
        .await
        .unwrap();

    assert!(store.list_subject("ivy").await.unwrap().is_empty());
    // What is left of the subject's entry is its version (8 bytes).
    let left: Vec<u8> = redis::cmd("HGET")
        .arg(&subject_keys[0])
        .arg("ivy")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left.len(), 8, "no token hash is left in the entry");
    assert!(
        store
            .due(t0().plus(std::time::Duration::from_secs(86_400)), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let left: i64 = redis::cmd("ZCARD")
        .arg(&deadline_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let left: i64 = redis::cmd("ZCARD")
        .arg(&summary_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the emptied bucket leaves the summary");
    let left: i64 = redis::cmd("HLEN")
        .arg(&ids_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the id of the dropped session is unlinked too");
    assert!(store.find_by_id(&session.id).await.unwrap().is_none());
}

#[tokio::test]
async fn user_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::users::user_store_contract(std::sync::Arc::new(store.users())).await;
}

/// An ended session stays in Redis until the sweeper's purge removes it with its id link; if it
/// goes missing before (deleted by hand), the purge still removes its id link and index entry.
#[tokio::test]
async fn purge_unlinks_ended_sessions_even_when_their_record_went_missing() {
    use portcullis_core::{EndReason, SessionStore};
    use portcullis_store_tests::{ending, plain_insert, random, session_at, t0};
    use std::time::Duration;

    let (store, prefix, mut conn) = store_and_keys("purge").await;
    let tag = format!("{:02x}", portcullis_core::subject_route("jo"));
    let purges_key = format!("{prefix}:{{{tag}}}:p");
    let random = random();
    let mut kept = Vec::new();
    for dropped in [false, true] {
        let (token, session) = session_at("jo", t0(), &random);
        store.insert(plain_insert(session.clone())).await.unwrap();
        let ended = store
            .end(&session.id, ending(EndReason::Logout, t0()))
            .await
            .unwrap();
        assert_eq!(ended.sessions.len(), 1);
        let mut record_key = format!("{prefix}:{{{tag}}}:s:").into_bytes();
        record_key.extend_from_slice(&token.routed_hash().0);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&record_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            ttl, -1,
            "an ended record waits for the purge, got a TTL of {ttl} ms"
        );
        if dropped {
            let _: i64 = redis::cmd("DEL")
                .arg(&record_key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        kept.push(session);
    }
    let purged = store
        .purge(t0().plus(Duration::from_secs(3601)))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    for session in &kept {
        let ids_key = format!("{prefix}:{{{tag}}}:i:{}", &session.id.as_str()[6..7]);
        let link: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&ids_key)
            .arg(id_member(session.id.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(link, None, "the id link of {} is gone", session.id.as_str());
        assert!(store.find_by_id(&session.id).await.unwrap().is_none());
    }
    let left: i64 = redis::cmd("ZCARD")
        .arg(&purges_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// The tag's deadline summary scores each bucket at its earliest deadline, through activity
/// (which moves deadlines later) and endings; a score left early (by a race with a writer, or
/// by data of an earlier version) makes a sweep find nothing there, end nobody and settle it.
#[tokio::test]
async fn the_deadline_summary_follows_activity_and_endings() {
    use portcullis_core::{EndReason, SessionStore};
    use portcullis_store_tests::{ending, plain_insert, random, session_at, t0};
    use std::time::Duration;

    let (store, prefix, mut conn) = store_and_keys("summary").await;
    let (_, session) = session_at("kim", t0(), &random());
    store.insert(plain_insert(session.clone())).await.unwrap();
    let tag = format!("{:02x}", portcullis_core::subject_route("kim"));
    let summary_key = format!("{prefix}:{{{tag}}}:dd");
    let bucket = session.id.as_str()[6..7].to_owned();
    let score = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut cmd = redis::cmd("ZSCORE");
        cmd.arg(&summary_key).arg(&bucket);
        let mut conn = conn.clone();
        async move { cmd.query_async::<Option<i64>>(&mut conn).await.unwrap() }
    };
    let first_idle = t0().plus(Duration::from_secs(900)).as_millis();
    assert_eq!(score(&mut conn).await, Some(first_idle));

    // Activity ten minutes in moves the idle deadline to 25 minutes.
    let later = t0().plus(Duration::from_secs(600));
    store.touch(&session.id, later).await.unwrap();
    let moved_idle = later.plus(Duration::from_secs(900)).as_millis();
    assert_eq!(score(&mut conn).await, Some(moved_idle));

    // A score left early is settled by the sweep that finds nothing due behind it.
    let _: i64 = redis::cmd("ZADD")
        .arg(&summary_key)
        .arg(first_idle)
        .arg(&bucket)
        .query_async(&mut conn)
        .await
        .unwrap();
    let at_old_deadline = t0().plus(Duration::from_secs(901));
    assert!(store.due(at_old_deadline, 10).await.unwrap().is_empty());
    assert_eq!(
        score(&mut conn).await,
        Some(moved_idle),
        "settled to the real deadline"
    );
    let due = store
        .due(later.plus(Duration::from_secs(901)), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "due at the moved deadline");
    assert_eq!(due[0].id, session.id);

    // Its ending empties the bucket, which leaves the summary.
    store
        .end(
            &session.id,
            ending(EndReason::ExpiredIdle, later.plus(Duration::from_secs(901))),
        )
        .await
        .unwrap();
    assert_eq!(score(&mut conn).await, None);
}

/// Applications live under a hash tag of their own (`{apps}`: the applications, their names and
/// their events), so each change is one script on one slot; the name index follows a rename and
/// goes with the application.
#[tokio::test]
async fn applications_keep_every_key_under_their_own_tag() {
    use portcullis_core::{Actor, ApplicationStore, AuditEvent, EventKind};
    use portcullis_store_tests::{application, t0};

    let (store, prefix, mut conn) = store_and_keys("apps").await;
    let keys = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let pattern = format!("{prefix}:*");
        async move {
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    let name_of = |conn: &mut redis::aio::MultiplexedConnection, name: &str| {
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("HGET");
        cmd.arg(format!("{prefix}:{{apps}}:n")).arg(name);
        async move { cmd.query_async::<Option<String>>(&mut conn).await.unwrap() }
    };
    let event = |kind| AuditEvent {
        seq: 0,
        at: t0(),
        kind,
        actor: Actor::cli(),
        session_id: None,
        subject: None,
        policy: None,
        application: None,
        reason: None,
        detail: serde_json::Value::Null,
    };
    let shop = application("shop");
    store
        .add_application(shop.clone(), event(EventKind::ApplicationCreated))
        .await
        .unwrap();
    let under_tag = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| format!("{prefix}:{{apps}}:{n}"))
            .collect()
    };
    assert_eq!(keys(&mut conn).await, under_tag(&["a", "e", "n"]));
    assert_eq!(
        name_of(&mut conn, "shop").await.as_deref(),
        Some(shop.id.as_str())
    );

    let mut renamed = shop.clone();
    renamed.name = "store".into();
    renamed.version += 1;
    store
        .update_application(1, renamed.clone(), event(EventKind::ApplicationUpdated))
        .await
        .unwrap()
        .expect("updated at the version read");
    assert_eq!(
        name_of(&mut conn, "shop").await,
        None,
        "the old name is free"
    );
    assert_eq!(
        name_of(&mut conn, "store").await.as_deref(),
        Some(shop.id.as_str())
    );
    let mut again = application("shop");
    again.id = portcullis_core::PublicId::from_string("app_other".into());
    store
        .add_application(again, event(EventKind::ApplicationCreated))
        .await
        .expect("the old name can be taken again");

    store
        .remove_application(&shop.id, event(EventKind::ApplicationRemoved))
        .await
        .unwrap()
        .expect("removed");
    assert_eq!(name_of(&mut conn, "store").await, None);
    assert_eq!(keys(&mut conn).await, under_tag(&["a", "e", "n"]));
    let events: i64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:{{apps}}:e"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(events, 4, "one event per change, in the same script");
}

/// `application_sessions` walks every live session; a call that fills its batch leaves a mark
/// where it stopped and the next goes on from there, and only a whole round with nothing found
/// answers empty, so sessions added anywhere meanwhile are still found.
#[tokio::test]
async fn application_sessions_goes_on_where_it_stopped_until_a_whole_round_is_empty() {
    use portcullis_core::{EndReason, PublicId, SessionStore};
    use portcullis_store_tests::{ending, plain_insert, random, session_of, t0};
    use std::collections::BTreeSet;

    let store = fresh().await;
    let random = random();
    let shop = PublicId::from_string("app_shop".into());
    let other = PublicId::from_string("app_other".into());
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        let app = if i % 4 == 3 { &other } else { &shop };
        let (_, session) = session_of(&format!("walker{i}"), app, t0(), &random);
        if app == &shop {
            expected.insert(session.id.clone());
        }
        store.insert(plain_insert(session)).await.unwrap();
    }
    let mut found = BTreeSet::new();
    let mut calls = 0;
    loop {
        let batch = store.application_sessions(&shop, 4).await.unwrap();
        assert!(batch.len() <= 4);
        if batch.is_empty() {
            break;
        }
        calls += 1;
        for session in batch {
            assert_eq!(session.application, shop);
            assert!(session.is_live());
            assert!(found.insert(session.id.clone()), "answered once");
            store
                .end(&session.id, ending(EndReason::AppRemoved, t0()))
                .await
                .unwrap();
        }
        if calls == 2 {
            // Sessions added mid-way, on both sides of where the walk stands.
            for i in 0..20 {
                let (_, session) = session_of(&format!("late{i}"), &shop, t0(), &random);
                expected.insert(session.id.clone());
                store.insert(plain_insert(session)).await.unwrap();
            }
        }
    }
    assert_eq!(found, expected);
    assert!(calls >= 50 / 4);
    assert!(
        store
            .application_sessions(&shop, 4)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.application_sessions(&other, 100).await.unwrap().len(),
        10,
        "the other application's sessions are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::throttle::throttle_store_contract(
        std::sync::Arc::new(store.throttle()),
        portcullis_store_tests::throttle::Expiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::code_store_contract(
        std::sync::Arc::new(store.codes()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::signing_key_store_contract(std::sync::Arc::new(
        store.signing_keys(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::refresh_token_store_contract(
        std::sync::Arc::new(store.refresh_tokens()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::consent_store_contract(std::sync::Arc::new(store.consents()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::identities::identity_store_contract(std::sync::Arc::new(
        store.identities(),
    ))
    .await;
}

/// A code is one key whose TTL is its lifetime plus `CODE_REMEMBERED`, counted from its issue;
/// a redemption keeps the TTL.
#[tokio::test]
async fn codes_expire_by_themselves_after_they_are_remembered() {
    use portcullis_core::oidc::{AuthorizationCode, CODE_LIFETIME, CODE_REMEMBERED, CodeStore};
    use portcullis_core::{PublicId, TokenHash};
    use portcullis_store_tests::t0;

    let (store, prefix, mut conn) = store_and_keys("code-ttl").await;
    let codes = store.codes();
    let code = AuthorizationCode {
        hash: TokenHash([0x7b; 32]),
        client: PublicId::from_string("app_rp".into()),
        subject: "usr_1".into(),
        sso_session: PublicId::from_string("ses_sso".into()),
        redirect_uri: "https://rp.example/cb".into(),
        scopes: vec!["openid".into()],
        nonce: None,
        code_challenge: None,
        auth_time: t0(),
        acr: None,
        amr: Vec::new(),
        issued_at: t0(),
        expires_at: t0().plus(CODE_LIFETIME),
        redeemed_for: None,
    };
    codes.add_code(code.clone()).await.unwrap();
    let mut key = format!("{prefix}:oc:").into_bytes();
    key.extend_from_slice(&code.hash.0);
    let remembered = i64::try_from((CODE_LIFETIME + CODE_REMEMBERED).as_millis()).unwrap();
    let ttl = pttl_bytes(&mut conn, &key).await;
    assert!(remembered - 60_000 < ttl && ttl <= remembered, "ttl {ttl}");
    codes
        .redeem_code(&code.hash, &PublicId::from_string("ses_app".into()))
        .await
        .unwrap();
    let ttl = pttl_bytes(&mut conn, &key).await;
    assert!(
        remembered - 60_000 < ttl && ttl <= remembered,
        "kept: {ttl}"
    );
}

/// A family is one hash under a tag of its own, with an index key per token; the family lives
/// until its latest token expires, each index until its own token does; a refused successor
/// leaves no index, an ended family none of its own, and an index whose token is not in its
/// family reads as no token.
#[tokio::test]
async fn refresh_families_and_their_indexes_expire_and_go_together() {
    use portcullis_core::oidc::{RefreshToken, RefreshTokenStore, Rotation};
    use portcullis_core::{PublicId, TokenHash};
    use portcullis_store_tests::t0;
    use std::time::Duration;

    let (store, prefix, mut conn) = store_and_keys("refresh-ttl").await;
    let tokens = store.refresh_tokens();
    let family = PublicId::from_string("ses_fam".into());
    let first = RefreshToken {
        hash: TokenHash([1; 32]),
        family: family.clone(),
        client: PublicId::from_string("app_rp".into()),
        subject: "usr_1".into(),
        scopes: vec!["openid".into()],
        issued_at: t0(),
        expires_at: t0().plus(Duration::from_secs(3600)),
        rotated: None,
    };
    let index = |hash: &TokenHash| {
        let mut key = format!("{prefix}:rt:").into_bytes();
        key.extend_from_slice(&hash.0);
        key
    };
    let family_key = format!("{prefix}:{{ses_fam}}:rf").into_bytes();
    let hour = 3_600_000;
    tokens.add_refresh_token(first.clone()).await.unwrap();
    let ttl = pttl_bytes(&mut conn, &family_key).await;
    assert!(hour - 60_000 < ttl && ttl <= hour, "family ttl {ttl}");
    let ttl = pttl_bytes(&mut conn, &index(&first.hash)).await;
    assert!(hour - 60_000 < ttl && ttl <= hour, "index ttl {ttl}");

    // The successor lives two hours: the family's TTL grows with it, the old index keeps its own.
    let second = RefreshToken {
        hash: TokenHash([2; 32]),
        issued_at: t0(),
        expires_at: t0().plus(Duration::from_secs(7200)),
        ..first.clone()
    };
    let rotated = tokens
        .rotate_refresh_token(&first.hash, second.clone(), "sealed".into())
        .await
        .unwrap();
    assert_eq!(rotated, Rotation::Rotated(first.clone()));
    let ttl = pttl_bytes(&mut conn, &family_key).await;
    assert!(
        2 * hour - 60_000 < ttl && ttl <= 2 * hour,
        "family ttl {ttl}"
    );
    let ttl = pttl_bytes(&mut conn, &index(&first.hash)).await;
    assert!(ttl <= hour, "the old index keeps its ttl: {ttl}");

    let refused = RefreshToken {
        hash: TokenHash([3; 32]),
        ..second.clone()
    };
    assert!(matches!(
        tokens
            .rotate_refresh_token(&first.hash, refused.clone(), "late".into())
            .await
            .unwrap(),
        Rotation::AlreadyRotated(_)
    ));
    assert_eq!(pttl_bytes(&mut conn, &index(&refused.hash)).await, -2);

    // An index whose token is not in the family (as a rotation writes before its script).
    let stray = TokenHash([4; 32]);
    let _: () = redis::cmd("SET")
        .arg(index(&stray))
        .arg("ses_fam")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(tokens.refresh_token(&stray).await.unwrap(), None);
    assert_eq!(
        tokens
            .rotate_refresh_token(&stray, refused.clone(), "x".into())
            .await
            .unwrap(),
        Rotation::Unknown
    );

    assert_eq!(tokens.end_refresh_family(&family).await.unwrap(), 2);
    for key in [family_key, index(&first.hash), index(&second.hash)] {
        assert_eq!(
            pttl_bytes(&mut conn, &key).await,
            -2,
            "gone with the family"
        );
    }
    let left: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, vec![index(&stray)], "nothing else is left");
}

/// A person's consents are one hash under the tag of their sessions.
#[tokio::test]
async fn a_persons_consents_are_one_key_under_the_tag_of_their_sessions() {
    use portcullis_core::PublicId;
    use portcullis_core::oidc::{Consent, ConsentStore};
    use portcullis_store_tests::t0;

    let (store, prefix, mut conn) = store_and_keys("consents").await;
    let consents = store.consents();
    for client in ["app_a", "app_b"] {
        consents
            .grant_consent(Consent {
                subject: "usr_1".into(),
                client: PublicId::from_string(client.into()),
                scopes: ["openid".to_owned(), "profile".to_owned()].into(),
                granted_at: t0(),
            })
            .await
            .unwrap();
    }
    let tag = format!("{:02x}", portcullis_core::subject_route("usr_1"));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, vec![format!("{prefix}:{{{tag}}}:cn:usr_1")]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "kept until revoked");
    for client in ["app_a", "app_b"] {
        assert!(
            consents
                .revoke_consent("usr_1", &PublicId::from_string(client.into()))
                .await
                .unwrap()
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "nothing is left: {keys:?}");
}

/// An account's links are one hash in the accounts' tag, beside one index of upstream people
/// there; unlinking everything leaves no key (a refused unlink's write leaves none either).
#[tokio::test]
async fn federated_identities_are_two_keys_in_the_accounts_tag() {
    use portcullis_core::oidc::{FederatedIdentity, IdentityStore, Unlinked};
    use portcullis_store_tests::t0;

    let (store, prefix, mut conn) = store_and_keys("identities").await;
    let identities = store.identities();
    let linked = |subject: &str| FederatedIdentity {
        user_id: "usr_1".into(),
        provider: "corp".into(),
        issuer: "https://idp.example".into(),
        subject: subject.into(),
        linked_at: t0(),
    };
    for subject in ["a", "b"] {
        assert!(identities.link(&linked(subject)).await.unwrap());
    }
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:{{users}}:fi"),
            format!("{prefix}:{{users}}:fl:usr_1"),
        ]
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "kept until unlinked");
    let unlink = |subject: &'static str, keep_one| {
        let identities = identities.clone();
        async move {
            identities
                .unlink("usr_1", "https://idp.example", subject, keep_one)
                .await
                .unwrap()
        }
    };
    assert_eq!(unlink("a", true).await, Unlinked::Done);
    assert_eq!(unlink("b", true).await, Unlinked::LastOne);
    assert_eq!(unlink("a", true).await, Unlinked::NotLinked);
    assert_eq!(unlink("b", false).await, Unlinked::Done);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "nothing is left: {keys:?}");
}

/// A throttle record is one key under the store's prefix whose TTL is what is left until the
/// record expires (`Strikes::expires_at`, from the caller's `now`), so Redis drops it by itself;
/// a refund keeps the TTL and a clear deletes the key.
#[tokio::test]
async fn throttle_records_expire_by_themselves() {
    use portcullis_core::{ThrottleRules, ThrottleStore};
    use portcullis_store_tests::t0;
    use std::time::Duration;

    let (store, prefix, mut conn) = store_and_keys("throttle-ttl").await;
    let key = format!("{prefix}:th:acct:1");
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let throttle = store.throttle();
    let rules = ThrottleRules::ACCOUNT;
    let day = 86_400_000;
    let about_a_day = |ttl: i64| day - 60_000 < ttl && ttl <= day;

    throttle.attempt("acct:1", &rules, t0()).await.unwrap();
    let ttl = pttl(&mut conn, &key).await;
    assert!(about_a_day(ttl), "ttl {ttl}");
    // Later attempts move the expiry on from their own time (the sixth blocks the seventh).
    for _ in 0..7 {
        throttle
            .attempt("acct:1", &rules, t0().plus(Duration::from_secs(3600)))
            .await
            .unwrap();
    }
    let ttl = pttl(&mut conn, &key).await;
    assert!(about_a_day(ttl), "ttl {ttl}");
    throttle.refund("acct:1").await.unwrap();
    let ttl = pttl(&mut conn, &key).await;
    assert!(about_a_day(ttl), "a refund keeps the ttl: {ttl}");
    throttle.clear("acct:1").await.unwrap();
    assert_eq!(pttl(&mut conn, &key).await, -2, "a clear deletes the key");
    assert_eq!(throttle.forget_expired(t0()).await.unwrap(), 0);

    // A block longer than forget_after keeps the record until the block ends.
    let rules = ThrottleRules {
        free_failures: 0,
        first_delay: Duration::from_secs(2 * 86_400),
        max_delay: Duration::from_secs(2 * 86_400),
        forget_after: Duration::from_secs(60),
        lock_after: None,
    };
    throttle.attempt("acct:1", &rules, t0()).await.unwrap();
    let ttl = pttl(&mut conn, &key).await;
    assert!(about_a_day(ttl - day), "ttl {ttl}");
}

/// The `PTTL` of `key`: -2 when it does not exist.
async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

/// The `PTTL` of a binary `key`: -2 when it does not exist.
async fn pttl_bytes(conn: &mut redis::aio::MultiplexedConnection, key: &[u8]) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_store_contract() {
    let store = fresh().await;
    let deliveries = std::sync::Arc::new(store.deliveries());
    portcullis_store_tests::deliveries::delivery_store_contract(
        std::sync::Arc::new(store),
        deliveries,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_store_contract() {
    let store = fresh().await;
    portcullis_store_tests::provider::replay_store_contract(
        std::sync::Arc::new(store.replays()),
        portcullis_store_tests::provider::CodeExpiry::ByBackend,
    )
    .await;
}

/// A store whose index buckets split all the time: every tag starts from one bucket of each
/// kind (a real tag starts from 64) and splits when a bucket holds more than one entry.
async fn fresh_tiny() -> RedisStore {
    let (url, prefix) = fresh_prefix("tiny").await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for route in 0..=u8::MAX {
        pipe.hset_multiple(format!("{prefix}:{{{route:02x}}}:n"), &[("i", 1), ("u", 1)])
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await.unwrap();
    RedisStore::connect(&format!("{url}?prefix={prefix}&bucket_fill=1"))
        .await
        .expect("Redis must run on loopback (see .ci/run)")
}

/// The whole suite again on buckets that split on nearly every new session or subject.
mod tiny_buckets {
    portcullis_store_tests::store_conformance!(super::fresh_tiny());
}

/// Sums `command` (`HLEN`, `ZCARD`) over the keys of a tag that match `pattern`, with how many
/// keys there are and the largest.
async fn tally(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
    command: &str,
) -> (usize, usize, usize) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    let mut sizes = Vec::new();
    for key in &keys {
        let size: usize = redis::cmd(command)
            .arg(key)
            .query_async(conn)
            .await
            .unwrap();
        sizes.push(size);
    }
    (
        keys.len(),
        sizes.iter().sum(),
        sizes.iter().copied().max().unwrap_or(0),
    )
}

/// A tag's id buckets (with its deadline buckets) and subject buckets start as the 64 of the
/// layout before growth, then split as the tag fills, one at a time; no entry is lost or kept
/// twice on the way, and every session stays reachable by token, by id, by subject, by
/// deadline and by application.
#[tokio::test]
async fn index_buckets_grow_with_their_tag_and_every_session_stays_reachable() {
    use portcullis_core::{EndReason, SessionStore, subject_route};
    use portcullis_store_tests::{ending, plain_insert, random, session_at, t0, test_app};
    use std::time::Duration;

    let url = server_url();
    let prefix = format!("pctest:{}:grow", std::process::id());
    let store = RedisStore::connect(&format!("{url}?prefix={prefix}&bucket_fill=2"))
        .await
        .unwrap();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let route = subject_route("many");
    let tag = format!("{prefix}:{{{route:02x}}}");
    let random = random();

    // Before any split, the keys are those of the layout before growth: an id's bucket is its
    // first random character, a subject's the low bits of its 64-bit FNV-1a hash.
    let (_, first) = session_at("many", t0(), &random);
    store.insert(plain_insert(first.clone())).await.unwrap();
    let link: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(format!("{tag}:i:{}", &first.id.as_str()[6..7]))
        .arg(id_member(first.id.as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(link.as_deref(), Some(&first.token_hash.0[..]));
    let fnv = "many".bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let entry: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(format!("{tag}:ub:{:02x}", fnv % 64))
        .arg("many")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entry.map(|e| e.len()), Some(8 + 32));

    // 300 sessions of one subject, and 300 subjects of the same tag with one each.
    let mut sessions = vec![first];
    for _ in 1..300 {
        let (_, session) = session_at("many", t0(), &random);
        store.insert(plain_insert(session.clone())).await.unwrap();
        sessions.push(session);
    }
    let others: Vec<String> = (0..)
        .map(|i| format!("one{i}"))
        .filter(|s| subject_route(s) == route)
        .take(300)
        .collect();
    for (i, subject) in others.iter().enumerate() {
        let at = t0().plus(Duration::from_secs(i as u64));
        let (_, session) = session_at(subject, at, &random);
        store.insert(plain_insert(session.clone())).await.unwrap();
        sessions.push(session);
    }

    let counts: std::collections::HashMap<String, usize> = redis::cmd("HGETALL")
        .arg(format!("{tag}:n"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (id_buckets, links, fullest) = tally(&mut conn, &format!("{tag}:i:*"), "HLEN").await;
    let (_, deadlines, _) = tally(&mut conn, &format!("{tag}:db:*"), "ZCARD").await;
    let (subject_buckets, entries, _) = tally(&mut conn, &format!("{tag}:ub:*"), "HLEN").await;
    assert!(counts["i"] > 64 && counts["u"] > 64, "{counts:?}");
    // Fill 2: 600 links need about 300 buckets, and the fullest waits little for its split.
    assert!(
        counts["i"] >= 300 && id_buckets <= counts["i"],
        "{counts:?}"
    );
    assert!(fullest <= 8, "a bucket of {fullest} links");
    assert!(subject_buckets <= counts["u"]);
    assert_eq!((links, deadlines, entries), (600, 600, 301));

    for session in &sessions {
        let by_id = store.find_by_id(&session.id).await.unwrap();
        assert_eq!(by_id.map(|s| s.token_hash), Some(session.token_hash));
        let by_token = store.find_by_token(&session.token_hash).await.unwrap();
        assert_eq!(by_token.map(|s| s.id.clone()), Some(session.id.clone()));
    }
    assert_eq!(store.list_subject("many").await.unwrap().len(), 300);
    for subject in &others {
        assert_eq!(store.list_subject(subject).await.unwrap().len(), 1);
    }
    let live: u64 = store
        .live_counts()
        .await
        .unwrap()
        .iter()
        .map(|c| c.sessions)
        .sum();
    assert_eq!(live, 600);
    assert_eq!(
        store
            .application_sessions(&test_app(), 1000)
            .await
            .unwrap()
            .len(),
        600
    );

    // Ending and purging one subject's sessions takes their links out of the split buckets.
    let later = t0().plus(Duration::from_secs(30 * 86_400));
    let ended = store
        .end_subject("many", None, None, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 300);
    assert_eq!(store.purge(later).await.unwrap(), 300);
    let (_, links, _) = tally(&mut conn, &format!("{tag}:i:*"), "HLEN").await;
    let (_, deadlines, _) = tally(&mut conn, &format!("{tag}:db:*"), "ZCARD").await;
    assert_eq!((links, deadlines), (300, 300));

    // A sweep over hundreds of buckets of one tag, more than one pass of `due` reads: every
    // deadline is found once, in order.
    let mut swept: Vec<portcullis_core::Session> = Vec::new();
    loop {
        let due = store.due(later, 1000).await.unwrap();
        if due.is_empty() {
            break;
        }
        for session in due {
            store
                .end(&session.id, ending(EndReason::ExpiredAbsolute, later))
                .await
                .unwrap();
            swept.push((*session).clone());
        }
    }
    assert_eq!(swept.len(), 300);
    assert!(
        swept
            .windows(2)
            .all(|w| w[0].next_deadline().0 <= w[1].next_deadline().0)
    );
    for session in &sessions[..300] {
        assert!(store.find_by_id(&session.id).await.unwrap().is_none());
    }
}
