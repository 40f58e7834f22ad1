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

async fn fresh() -> RedisStore {
    let url =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    CLEANED.get_or_init(|| clean_old_keys(&url)).await;
    let prefix = format!(
        "pctest:{}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
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
    let url =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
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
    session_key.extend_from_slice(&token.hash().0);
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
    assert_eq!(id_entry.as_deref(), Some(&token.hash().0[..]));
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
        record_key.extend_from_slice(&token.hash().0);
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
