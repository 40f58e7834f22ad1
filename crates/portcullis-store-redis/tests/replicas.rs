//! Endings acknowledged only once a replica has them, on a private Redis primary with one
//! replica (`wait_replicas=1`): the replica frozen (`SIGSTOP`) confirms nothing, so an ending
//! answers 503 (`StoreError::Unconfirmed`) after `wait_timeout` with the change left on the
//! primary, marked; anyone who then reads it (a retried logout, a revocation) waits for the
//! replica too, and once the replica is back the retry is acknowledged. Validations never
//! queue behind a waiting ending.

mod common;

use std::time::{Duration, Instant};

use common::{RedisProcess, connection, free_port, info_field, replication_field, until};
use portcullis_core::{
    Actor, ApiKey, ApiKeyStore, ApplicationStore, AuditEvent, EndReason, EventKind, PublicId,
    SessionStore, StoreError, Token, TokenHash, TokenKind,
};
use portcullis_store_redis::RedisStore;
use portcullis_store_tests::{application, ending, plain_insert, random, rotated, session_at, t0};

/// A primary and its replica, in sync.
struct Pair {
    primary: RedisProcess,
    replica: RedisProcess,
    _root: tempfile::TempDir,
}

async fn pair() -> Pair {
    let root = tempfile::tempdir().unwrap();
    // Diskless sync without its default 5 s delay (waiting for more replicas to join).
    let primary = RedisProcess::start(
        root.path(),
        "primary",
        free_port(),
        &["--repl-diskless-sync-delay", "0"],
    );
    let replica = RedisProcess::start(
        root.path(),
        "replica",
        free_port(),
        &["--replicaof", "127.0.0.1", &primary.port.to_string()],
    );
    let mut conn = connection(replica.port).await;
    until(Duration::from_secs(10), "the replica syncs", async || {
        replication_field(&mut conn, "master_link_status")
            .await
            .as_deref()
            == Some("up")
    })
    .await;
    let mut conn = connection(primary.port).await;
    until(
        Duration::from_secs(10),
        "the primary sees its replica",
        async || {
            replication_field(&mut conn, "connected_slaves")
                .await
                .as_deref()
                == Some("1")
        },
    )
    .await;
    Pair {
        primary,
        replica,
        _root: root,
    }
}

/// The raw record of `hash` under `prefix` on the server behind `conn`.
async fn raw(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    hash: &TokenHash,
) -> Vec<u8> {
    let mut key = format!("{prefix}:{{{:02x}}}:s:", hash.0[0]).into_bytes();
    key.extend_from_slice(&hash.0);
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

fn unavailable(result: Result<impl std::fmt::Debug, StoreError>, what: &str) -> String {
    match result {
        Err(err @ (StoreError::Unavailable(_) | StoreError::Unconfirmed { .. })) => err.to_string(),
        other => panic!("{what}: expected 503 store_unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_ending_waits_for_the_replica_and_a_lagging_replica_gets_a_503_that_is_safe_to_retry() {
    let pair = pair().await;
    // Long enough that a healthy replica on a loaded 2-core CI machine always confirms in time;
    // each refused call in the paused phase costs this much.
    let timeout = Duration::from_secs(2);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=w&wait_replicas=1&wait_timeout=2s",
        pair.primary.port
    ))
    .await
    .unwrap();
    let mut primary = connection(pair.primary.port).await;
    let random = random();

    // The replica answers: an ending is acknowledged, confirmed, and carries no mark.
    let (_, ann) = session_at("ann", t0(), &random);
    store.insert(plain_insert(ann.clone())).await.unwrap();
    let ended = store
        .end(&ann.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 1);
    assert_eq!(raw(&mut primary, "w", &ann.token_hash).await[1], 0);
    // The replica has it as soon as the ending is acknowledged.
    let on_replica =
        RedisStore::connect(&format!("redis://127.0.0.1:{}?prefix=w", pair.replica.port))
            .await
            .unwrap();
    let seen = on_replica.find_by_id(&ann.id).await.unwrap().unwrap();
    assert!(!seen.is_live(), "the replica has the ending");

    // The replica stops confirming.
    pair.replica.pause();
    let (bob_token, bob) = session_at("bob", t0(), &random);
    let (_, cy) = session_at("cy", t0(), &random);
    let created = Instant::now();
    store.insert(plain_insert(bob.clone())).await.unwrap();
    store.insert(plain_insert(cy.clone())).await.unwrap();
    assert!(
        created.elapsed() < timeout,
        "creations do not wait for replicas"
    );

    // Validations go on while an ending waits (it has a connection of its own).
    let started = Instant::now();
    let waiting = {
        let store = store.clone();
        let id = bob.id.clone();
        tokio::spawn(async move { store.end(&id, ending(EndReason::Logout, t0())).await })
    };
    let mut validations = 0;
    while !waiting.is_finished() {
        let asked = Instant::now();
        let found = store.find_by_token(&cy.token_hash).await.unwrap();
        assert!(found.is_some_and(|s| s.is_live()));
        assert!(
            asked.elapsed() < timeout / 2,
            "a validation waited {:?} behind an ending",
            asked.elapsed()
        );
        validations += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(validations > 3, "validations ran while the ending waited");
    let refused = unavailable(
        waiting.await.unwrap(),
        "a logout the replica did not confirm",
    );
    assert!(started.elapsed() >= timeout, "it waited wait_timeout");
    assert!(
        refused.contains("0 of the 1 replica(s)") && refused.contains("retrying is safe"),
        "{refused}"
    );
    // The primary made it, marked as not confirmed.
    let record = raw(&mut primary, "w", &bob.token_hash).await;
    assert_eq!(record[1], 2, "marked as not confirmed on the replicas");

    // Whoever reads it now waits for the replica as well: a retried logout (the engine finds
    // the session by its token), a revocation by id, a force logout with nothing left to end.
    unavailable(
        store.find_by_token(&bob_token.routed_hash()).await,
        "reading an unconfirmed ending",
    );
    unavailable(
        store.end(&bob.id, ending(EndReason::Logout, t0())).await,
        "a retried ending",
    );
    unavailable(
        store
            .end_subject("bob", None, None, ending(EndReason::PasswordChanged, t0()))
            .await,
        "a force logout with nothing left to end",
    );
    // A rotation waits as well (the old token must stay dead).
    let (_, next, event) = rotated(&cy, &random);
    unavailable(store.replace(cy.version, next, event).await, "a rotation");

    // The replica is back: the retry is acknowledged, and the mark is gone.
    pair.replica.resume();
    let retried = store
        .end(&bob.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert!(retried.sessions.is_empty(), "it was ended already");
    assert_eq!(raw(&mut primary, "w", &bob.token_hash).await[1], 0);
    let found = store.find_by_token(&bob_token.routed_hash()).await.unwrap();
    assert!(found.is_some_and(|s| !s.is_live()));
    let forced = store
        .end_subject("bob", None, None, ending(EndReason::PasswordChanged, t0()))
        .await
        .unwrap();
    assert!(forced.sessions.is_empty());
    let seen = on_replica.find_by_id(&bob.id).await.unwrap().unwrap();
    assert!(!seen.is_live(), "the replica has the ending");
}

#[tokio::test]
async fn a_server_that_cannot_confirm_as_asked_is_refused_at_start() {
    let pair = pair().await;
    let url = |options: &str| format!("redis://127.0.0.1:{}?{options}", pair.primary.port);

    let err = RedisStore::connect(&url("wait_replicas=2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 connected replica(s), fewer than wait_replicas=2"),
        "{err}"
    );
    // Redis 7.0 has no WAITAOF (7.2 added it).
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection(pair.primary.port).await)
        .await
        .unwrap();
    if version.contains("redis_version:7.0.") {
        let err = RedisStore::connect(&url("wait_replicas=1&wait_aof=true"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("WAITAOF"), "{err}");
    }

    // One server waits for no replica unless asked: an ending is acknowledged at once even
    // while its replica is frozen.
    let store = RedisStore::connect(&url("prefix=d")).await.unwrap();
    pair.replica.pause();
    let (_, dee) = session_at("dee", t0(), &random());
    store.insert(plain_insert(dee.clone())).await.unwrap();
    let ended = store
        .end(&dee.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert_eq!(ended.sessions.len(), 1);
    pair.replica.resume();
}

/// An event about `key` of kind `kind` (the store fills in its position).
fn key_event(kind: EventKind, key: &ApiKey) -> AuditEvent {
    AuditEvent::for_application(
        kind,
        &key.application,
        t0(),
        &Actor::cli(),
        serde_json::json!({ "api_key": key.id.as_str() }),
    )
}

#[tokio::test]
async fn a_retried_revocation_or_removal_found_done_waits_for_the_replica_too() {
    let pair = pair().await;
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=a&wait_replicas=1&wait_timeout=2s",
        pair.primary.port
    ))
    .await
    .unwrap();
    let random = random();
    let app = application("shop");
    let added = AuditEvent::for_application(
        EventKind::ApplicationCreated,
        &app.id,
        t0(),
        &Actor::cli(),
        serde_json::Value::Null,
    );
    store.add_application(app.clone(), added).await.unwrap();
    let key = ApiKey {
        id: PublicId::generate("key_", random.as_ref()),
        name: "shop".into(),
        application: app.id.clone(),
        key_hash: Token::generate(TokenKind::ApiKey, random.as_ref()).hash(),
        created_at: t0(),
        revoked_at: None,
    };
    store
        .add_api_key(key.clone(), key_event(EventKind::ApiKeyCreated, &key))
        .await
        .unwrap();

    // The replica stops confirming: the revocation and the removal are made on the primary
    // and refused.
    pair.replica.pause();
    let revoke = || store.revoke_api_key(&key.id, t0(), key_event(EventKind::ApiKeyRevoked, &key));
    unavailable(revoke().await, "a revocation the replica did not confirm");
    let removed = || {
        let event = AuditEvent::for_application(
            EventKind::ApplicationRemoved,
            &app.id,
            t0(),
            &Actor::cli(),
            serde_json::Value::Null,
        );
        store.remove_application(&app.id, event)
    };
    unavailable(removed().await, "a removal the replica did not confirm");
    // A retry finds them made, and still waits: until the replica has them, a failover could
    // lose them, so "already done" is no acknowledgement either.
    unavailable(revoke().await, "a retried revocation");
    unavailable(removed().await, "a retried removal");

    // The replica is back: the retries are acknowledged as done already.
    pair.replica.resume();
    assert!(revoke().await.unwrap().is_none(), "revoked already");
    assert!(removed().await.unwrap().is_none(), "removed already");
    let on_replica =
        RedisStore::connect(&format!("redis://127.0.0.1:{}?prefix=a", pair.replica.port))
            .await
            .unwrap();
    let seen = on_replica
        .find_api_key(&key.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.revoked_at.is_some(), "the replica has the revocation");
    assert!(
        on_replica
            .find_application(&app.id)
            .await
            .unwrap()
            .is_none(),
        "the replica has the removal"
    );
}

/// The provider's endings wait for the replica as session endings do: a code's redemption, a
/// refresh token's rotation and a family's end are refused (503) while the replica confirms
/// nothing, and so are their retries, which find them made (a replay, a token rotated already,
/// a family gone) but must not answer before a failover could no longer undo that; once the
/// replica is back the retries are answered, naming what the refused calls made.
#[tokio::test]
async fn a_redemption_a_rotation_and_a_family_end_wait_for_the_replica_and_so_do_their_retries() {
    use portcullis_core::oidc::{
        AuthorizationCode, CODE_LIFETIME, CodeStore, Redemption, RefreshToken, RefreshTokenStore,
        Rotation,
    };

    let pair = pair().await;
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=o&wait_replicas=1&wait_timeout=2s",
        pair.primary.port
    ))
    .await
    .unwrap();
    // Retries come from another node, whose connections wrote nothing before: its wait covers
    // the change it found only if it writes to that slot itself.
    let node2 = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=o&wait_replicas=1&wait_timeout=2s",
        pair.primary.port
    ))
    .await
    .unwrap();
    let (codes, tokens) = (store.codes(), store.refresh_tokens());
    let (codes2, tokens2) = (node2.codes(), node2.refresh_tokens());
    let session = |name: &str| PublicId::from_string(format!("ses_{name}"));
    let code = AuthorizationCode {
        hash: TokenHash([0xc0; 32]),
        client: PublicId::from_string("app_rp".into()),
        subject: "usr_1".into(),
        sso_session: session("sso"),
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
    let family = session("family");
    let first = RefreshToken {
        hash: TokenHash([0xf1; 32]),
        family: family.clone(),
        client: PublicId::from_string("app_rp".into()),
        subject: "usr_1".into(),
        scopes: vec!["openid".into()],
        issued_at: t0(),
        expires_at: t0().plus(Duration::from_secs(3600)),
        rotated: None,
    };
    let successor = |byte: u8| RefreshToken {
        hash: TokenHash([byte; 32]),
        ..first.clone()
    };
    codes.add_code(code.clone()).await.unwrap();
    tokens.add_refresh_token(first.clone()).await.unwrap();

    pair.replica.pause();
    let (app1, app2, app3) = (session("app1"), session("app2"), session("app3"));
    unavailable(
        codes.redeem_code(&code.hash, &app1).await,
        "a redemption the replica did not confirm",
    );
    unavailable(
        codes2.redeem_code(&code.hash, &app2).await,
        "a replay of an unconfirmed redemption",
    );
    unavailable(
        tokens
            .rotate_refresh_token(&first.hash, successor(0xf2), "s".into())
            .await,
        "a rotation the replica did not confirm",
    );
    unavailable(
        tokens2
            .rotate_refresh_token(&first.hash, successor(0xf3), "s".into())
            .await,
        "a retried rotation",
    );
    let other = session("other");
    tokens
        .add_refresh_token(RefreshToken {
            hash: TokenHash([0xe1; 32]),
            family: other.clone(),
            ..first.clone()
        })
        .await
        .unwrap();
    unavailable(
        tokens.end_refresh_family(&other).await,
        "an end the replica did not confirm",
    );
    unavailable(tokens2.end_refresh_family(&other).await, "a retried end");

    pair.replica.resume();
    match codes.redeem_code(&code.hash, &app3).await.unwrap() {
        Redemption::Replayed(found) => {
            assert_eq!(found.redeemed_for, Some(app1), "the refused one's");
        }
        other => panic!("a replay: {other:?}"),
    }
    match tokens2
        .rotate_refresh_token(&first.hash, successor(0xf4), "s".into())
        .await
        .unwrap()
    {
        Rotation::AlreadyRotated(found) => {
            assert_eq!(found.rotated.unwrap().successor, TokenHash([0xf2; 32]));
        }
        other => panic!("rotated already: {other:?}"),
    }
    assert_eq!(tokens.end_refresh_family(&other).await.unwrap(), 0);
    let on_replica =
        RedisStore::connect(&format!("redis://127.0.0.1:{}?prefix=o", pair.replica.port))
            .await
            .unwrap();
    let seen = on_replica
        .refresh_tokens()
        .refresh_token(&first.hash)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.rotated.is_some(), "the replica has the rotation");
    assert_eq!(
        on_replica
            .refresh_tokens()
            .refresh_token(&TokenHash([0xe1; 32]))
            .await
            .unwrap(),
        None,
        "the replica has the end"
    );
}

/// What the engine publishes to the audit log.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<AuditEvent>>);

impl portcullis_core::AuditSink for Recorded {
    fn publish(&self, event: &AuditEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[tokio::test]
async fn an_ending_refused_unconfirmed_still_reaches_the_audit_log_once() {
    use std::sync::Arc;

    use portcullis_core::{
        AuthContext, Engine, NewSession, OsRandom, PolicySet, Principal, SystemClock, legacy_app,
    };

    let pair = pair().await;
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=l&wait_replicas=1&wait_timeout=2s",
        pair.primary.port
    ))
    .await
    .unwrap();
    let log = Arc::new(Recorded::default());
    let engine = Engine::new(
        store,
        PolicySet::default(),
        Arc::new(SystemClock),
        Arc::new(OsRandom),
    )
    .with_sink(log.clone());
    let operator = Principal::operator();
    let issued = engine
        .create(
            NewSession {
                subject: "eve".into(),
                application: Some(legacy_app()),
                auth: AuthContext {
                    methods: vec!["pwd".into()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &operator,
        )
        .await
        .unwrap();

    pair.replica.pause();
    let refused = engine
        .end(&issued.session.id, EndReason::RevokedAdmin, &operator)
        .await;
    assert!(
        matches!(
            refused,
            Err(portcullis_core::EngineError::Store(
                StoreError::Unconfirmed { .. }
            ))
        ),
        "{refused:?}"
    );
    let ended = |log: &Recorded| {
        log.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == EventKind::SessionEnded)
            .cloned()
            .collect::<Vec<_>>()
    };
    let logged = ended(&log);
    assert_eq!(logged.len(), 1, "the ending made on the primary is logged");
    assert!(logged[0].seq > 0, "with its position in the trail");
    assert_eq!(logged[0].session_id.as_ref(), Some(&issued.session.id));

    // The retry, once the replica is back, is acknowledged and logs nothing again.
    pair.replica.resume();
    engine
        .end(&issued.session.id, EndReason::RevokedAdmin, &operator)
        .await
        .unwrap_or_else(|err| panic!("the retry: {err}"));
    assert_eq!(ended(&log).len(), 1, "recorded exactly once");
}

/// The variable naming a `redis-server` of Redis 7.2 or later, for the `WAITAOF` test below.
const WAITAOF_SERVER: &str = "PORTCULLIS_REDIS_WAITAOF_SERVER";

/// `wait_aof=true`: an ending is acknowledged only once the replica has written it to its
/// append-only file (`WAITAOF 0 1 <timeout>`), and refused (503) when the replica, frozen,
/// cannot say so.
///
/// `WAITAOF` came with Redis 7.2, and CI installs an older Redis and does not build one from
/// source, so this is a manual check: it runs only when `PORTCULLIS_REDIS_WAITAOF_SERVER` names a
/// `redis-server` binary of 7.2 or later, and otherwise says it is skipped and passes. E.g.
///
/// ```text
/// git clone --branch 7.4.1 --depth 1 https://github.com/redis/redis /var/tmp/redis-src
/// make -C /var/tmp/redis-src -j2 BUILD_TLS=no
/// PORTCULLIS_REDIS_WAITAOF_SERVER=/var/tmp/redis-src/src/redis-server \
///     cargo test -p portcullis-store-redis --test replicas wait_aof -- --nocapture
/// ```
#[tokio::test]
async fn with_wait_aof_an_ending_waits_for_the_replicas_append_only_file() {
    let Some(binary) = std::env::var_os(WAITAOF_SERVER).map(std::path::PathBuf::from) else {
        eprintln!(
            "skipped: set {WAITAOF_SERVER} to a redis-server of Redis 7.2 or later (WAITAOF) to \
             run this check; CI does not build Redis from source"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    // Both write an append-only file and sync it on every write (`always`): a replica reports
    // what it has synced in its once-a-second acknowledgement, so with `always` the next one
    // covers the ending (a confirmation within about a second), where with `everysec` (a sync
    // once a second as well) it could be the one after, too close to the 2 s wait.
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    let mut args = vec!["--repl-diskless-sync-delay", "0"];
    args.extend(aof);
    let primary = RedisProcess::start_binary(&binary, root.path(), "primary", free_port(), &args);
    let primary_port = primary.port.to_string();
    let mut args = vec!["--replicaof", "127.0.0.1", &primary_port];
    args.extend(aof);
    let replica = RedisProcess::start_binary(&binary, root.path(), "replica", free_port(), &args);
    let mut on_primary = connection(primary.port).await;
    let mut on_replica = connection(replica.port).await;
    let version = info_field(&mut on_primary, "server", "redis_version")
        .await
        .unwrap();
    eprintln!("{WAITAOF_SERVER}: {} is Redis {version}", binary.display());
    until(Duration::from_secs(10), "the replica syncs", async || {
        replication_field(&mut on_replica, "master_link_status")
            .await
            .as_deref()
            == Some("up")
    })
    .await;
    // A replica rewrites its append-only file after a full sync; until that is done it has no
    // file to report writes to.
    for (conn, who) in [(&mut on_primary, "primary"), (&mut on_replica, "replica")] {
        until(
            Duration::from_secs(20),
            &format!("the {who}'s append-only file is on, no rewrite pending"),
            async || {
                info_field(conn, "persistence", "aof_enabled")
                    .await
                    .as_deref()
                    == Some("1")
                    && info_field(conn, "persistence", "aof_rewrite_in_progress")
                        .await
                        .as_deref()
                        == Some("0")
                    && info_field(conn, "persistence", "aof_rewrite_scheduled")
                        .await
                        .as_deref()
                        == Some("0")
            },
        )
        .await;
    }

    // A server that has WAITAOF is accepted with wait_aof (7.0 refuses it at start, see
    // `a_server_that_cannot_confirm_as_asked_is_refused_at_start`).
    let timeout = Duration::from_secs(2);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}?prefix=aof&wait_replicas=1&wait_aof=true&wait_timeout=2s",
        primary.port
    ))
    .await
    .unwrap_or_else(|err| panic!("Redis {version} with wait_aof=true: {err}"));
    let random = random();

    // The replica writes it: the ending is acknowledged, confirmed, and the replica has it.
    let (_, ann) = session_at("ann", t0(), &random);
    store.insert(plain_insert(ann.clone())).await.unwrap();
    let acknowledged = Instant::now();
    let ended = store
        .end(&ann.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    eprintln!(
        "an ending confirmed by WAITAOF in {:?}",
        acknowledged.elapsed()
    );
    assert_eq!(ended.sessions.len(), 1);
    assert_eq!(raw(&mut on_primary, "aof", &ann.token_hash).await[1], 0);
    assert_ne!(
        raw(&mut on_replica, "aof", &ann.token_hash).await[1],
        1,
        "the replica has the ending"
    );

    // The replica stops: the ending is made on the primary, marked, and refused after the wait.
    replica.pause();
    let (bob_token, bob) = session_at("bob", t0(), &random);
    store.insert(plain_insert(bob.clone())).await.unwrap();
    let started = Instant::now();
    let refused = unavailable(
        store.end(&bob.id, ending(EndReason::Logout, t0())).await,
        "an ending the frozen replica did not write",
    );
    let waited = started.elapsed();
    eprintln!("refused after {waited:?}: {refused}");
    assert!(waited >= timeout, "it waited wait_timeout");
    assert!(
        refused.contains("0 of the 1 replica(s)") && refused.contains("retrying is safe"),
        "{refused}"
    );
    assert_eq!(
        raw(&mut on_primary, "aof", &bob.token_hash).await[1],
        2,
        "marked as not confirmed on the replicas"
    );

    // The replica is back: the retry is acknowledged, the mark gone, the replica has it.
    replica.resume();
    let retried = store
        .end(&bob.id, ending(EndReason::Logout, t0()))
        .await
        .unwrap();
    assert!(retried.sessions.is_empty(), "it was ended already");
    assert_eq!(raw(&mut on_primary, "aof", &bob.token_hash).await[1], 0);
    let found = store.find_by_token(&bob_token.routed_hash()).await.unwrap();
    assert!(found.is_some_and(|s| !s.is_live()));
    assert_ne!(
        raw(&mut on_replica, "aof", &bob.token_hash).await[1],
        1,
        "the replica has the ending"
    );
}
