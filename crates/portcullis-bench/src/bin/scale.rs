//! Scale: load N live sessions into the embedded store and into Redis, then report bytes per
//! session (on disk, in process memory, in Redis memory), validation latency at that size, and
//! the cost of a sweep when 1 % have expired. Prints tab-separated rows for bench/report.py.
//!
//! `scale --sessions N --dir DIR [--redis URL] [--redis-max M] [--prefix P] [--reuse] [--redis-only]`
//!
//! `--redis-only` skips the embedded store.
//!
//! `--reuse` measures the embedded store's load and validation alone: it opens the database an
//! earlier `--reuse` run left under DIR (writing it first when there is none), reports load
//! time, memory and validation latency (no sweep, which would change the database), and keeps
//! the database for the next run. Several runs over one database give the spread of each.
//!
//! Keys go under `--prefix` (default `pcscale:<pid>`); give the store's default `pc` on a Redis of
//! the benchmark's own, so key lengths are those of a real deployment. Its keys are deleted after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_bench::{engine, rss_bytes};
use portcullis_core::{
    AuthContext, Change, Clock, Deadline, Device, Journal, ManualClock, PublicId, SeededRandom,
    Session, SessionStore, Store, Token, TokenKind, subject_route,
};

/// The server's allocator (see `portcullis`'s `main.rs`): memory per session is measured as
/// the server would hold it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    sessions: usize,
    dir: std::path::PathBuf,
    redis: String,
    redis_max: usize,
    prefix: String,
    reuse: bool,
    redis_only: bool,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 100_000,
        dir: std::env::temp_dir().join("portcullis-scale"),
        redis: "redis://127.0.0.1:6379".into(),
        redis_max: 200_000,
        prefix: format!("pcscale:{}", std::process::id()),
        reuse: false,
        redis_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--reuse" {
            a.reuse = true;
            continue;
        }
        if flag == "--redis-only" {
            a.redis_only = true;
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--sessions" => a.sessions = value.parse().expect("--sessions N"),
            "--dir" => a.dir = value.into(),
            "--redis" => a.redis = value,
            "--redis-max" => a.redis_max = value.parse().expect("--redis-max N"),
            "--prefix" => a.prefix = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Session `i` of a load: 1 in 100 has a 1-minute absolute lifetime (it will be expired when
/// the sweep runs), the rest 12 hours; no idle timeout, no data.
fn session(i: usize, at: portcullis_core::Timestamp, random: &SeededRandom) -> (Token, Session) {
    let subject = format!("user{i}");
    let route = subject_route(&subject);
    let token = Token::generate_routed(TokenKind::Session, random, route);
    let lifetime = if i.is_multiple_of(100) {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(43_200)
    };
    let session = Session {
        id: PublicId::generate_routed("ses_", route, random),
        token_hash: token.routed_hash(),
        version: 1,
        subject,
        application: portcullis_bench::application_id(),
        policy: "noidle".into(),
        created_at: at,
        last_seen_at: at,
        authenticated_at: at,
        remember_me: false,
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        elevations: vec![],
        device: Device::default(),
        data: serde_json::Value::Null,
        idle: None,
        absolute: Deadline::after(at, lifetime, "policy noidle: absolute".into()),
        parent: None,
        reconstituted_from: None,
        back_channel_logout_uri: None,
        back_channel_logout_alg: None,
        ended: None,
    };
    (token, session)
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e6
}

/// Validation latency over `tokens`, then (with `sweep`) the cost of a sweep 2 minutes later.
async fn measure<S: Store>(
    label: &str,
    n: usize,
    store: S,
    tokens: &[Token],
    sweep: bool,
    extra: String,
) {
    let (engine, clock) = engine(store);
    let principal = portcullis_bench::principal();
    clock.set(ManualClock::default().now());
    let mut samples = Vec::with_capacity(20_000);
    for i in 0..20_000usize {
        let token = &tokens[(i * 7919 + 1) % tokens.len()];
        let started = Instant::now();
        let _ = engine
            .validate(token.expose(), false, &Device::default(), &principal)
            .await;
        samples.push(started.elapsed());
    }
    let p50 = percentile(&mut samples, 0.50);
    let p99 = percentile(&mut samples, 0.99);
    if !sweep {
        println!("scale\t{label}\t{n}\tvalidate_p50_us={p50:.2} validate_p99_us={p99:.2} {extra}");
        return;
    }
    clock.advance(Duration::from_secs(120));
    let started = Instant::now();
    let report = engine.sweep().await.expect("sweep");
    let sweep = started.elapsed();
    let per_expired = sweep.as_secs_f64() * 1e6 / report.expired.max(1) as f64;
    println!(
        "scale\t{label}\t{n}\tvalidate_p50_us={p50:.2} validate_p99_us={p99:.2} sweep_ms={:.1} expired={} sweep_us_per_expired={per_expired:.2} {extra}",
        sweep.as_secs_f64() * 1e3,
        report.expired,
    );
}

fn file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    // Without the store's own options (`?bucket_fill=…`), which the client does not know.
    let server = url.split('?').next().unwrap_or(url);
    redis::Client::open(server)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn redis_used_memory(url: &str) -> u64 {
    let mut conn = redis_connection(url).await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `MEMORY USAGE` per session of each kind of key under `prefix` (the letter after the hash
/// tag: `s` records, `u` subject indexes, `d` deadline indexes, …), audit streams left out.
/// Keys one per session or subject are sampled (the first 1,000 of a kind), per-tag keys summed.
async fn redis_bytes_by_kind(url: &str, prefix: &str, n: usize) -> String {
    let mut conn = redis_connection(url).await;
    // kind -> (keys seen, bytes of the sampled ones, sampled)
    let mut kinds: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for key in keys_under(&mut conn, prefix).await {
        let text = String::from_utf8_lossy(&key);
        let Some(rest) = text.split_once("}:").map(|(_, rest)| rest) else {
            continue;
        };
        let (kind, per_tag) = match rest.split_once(':') {
            Some((kind, _)) => (kind.to_owned(), false),
            None => (rest.to_owned(), true),
        };
        if kind == "e" {
            continue;
        }
        let entry = kinds.entry(kind).or_default();
        entry.0 += 1;
        if per_tag || entry.2 < 1000 {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            entry.1 += bytes.unwrap_or(0);
            entry.2 += 1;
        }
    }
    kinds
        .iter()
        .map(|(kind, (count, bytes, sampled))| {
            let total = *bytes as f64 * *count as f64 / (*sampled).max(1) as f64;
            format!("redis_{kind}_bytes={:.0}", total / n as f64)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let at = ManualClock::default().now();
    let random = SeededRandom::new(1);

    if !a.redis_only {
        // Embedded SQLite: write the sessions through the journal in large transactions, then open
        // the store as a server would (loading every live session into memory).
        let dir = a.dir.join(format!("sqlite-{}", a.sessions));
        let path = dir.join("portcullis.db");
        let reused = a.reuse && path.exists();
        if !reused {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).expect("scale dir");
        let mut tokens = Vec::with_capacity(a.sessions);
        if !reused {
            let store = portcullis_store_sqlite::open(&path)
                .await
                .expect("open sqlite");
            let started = Instant::now();
            let mut batch = Vec::with_capacity(10_000);
            for i in 0..a.sessions {
                let (token, s) = session(i, at, &random);
                tokens.push(token);
                batch.push(Arc::new(s));
                if batch.len() == 10_000 || i + 1 == a.sessions {
                    let change = Change {
                        sessions: std::mem::take(&mut batch),
                        ..Change::default()
                    };
                    store.journal().commit(&change).await.expect("write");
                }
            }
            eprintln!(
                "sqlite: wrote {} sessions in {:?}",
                a.sessions,
                started.elapsed()
            );
            store.journal().close().await;
        }
        let before = rss_bytes();
        let started = Instant::now();
        let store = portcullis_store_sqlite::open(&path)
            .await
            .expect("reopen sqlite");
        let load = started.elapsed();
        let memory = rss_bytes().saturating_sub(before) as f64 / a.sessions as f64;
        let disk = file_bytes(&dir) as f64 / a.sessions as f64;
        let extra = format!(
            "load_s={:.1} disk_bytes_per_session={disk:.0} memory_bytes_per_session={memory:.0}",
            load.as_secs_f64()
        );
        if a.reuse {
            if reused {
                // The tokens of a database written by an earlier run: the same seeded draws again.
                tokens.extend((0..a.sessions).map(|i| session(i, at, &random).0));
            }
            measure("sqlite", a.sessions, store, &tokens, false, extra).await;
            return;
        }
        measure("sqlite", a.sessions, store, &tokens, true, extra).await;
        drop(tokens);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Redis: insert through the store (the real write path), bounded in count.
    let n = a.sessions.min(a.redis_max);
    let prefix = a.prefix.clone();
    let before = redis_used_memory(&a.redis).await;
    let store = portcullis_store_redis::RedisStore::connect(&format!(
        "{}{}prefix={prefix}",
        a.redis,
        if a.redis.contains('?') { '&' } else { '?' }
    ))
    .await
    .expect("redis");
    let started = Instant::now();
    let mut tokens = Vec::with_capacity(n);
    // 64 inserts in flight: each is still the store's whole write path (plan, script, events),
    // but they share the connection's pipeline, so loading is not bounded by one round trip each.
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..n {
        let (token, s) = session(i, at, &random);
        tokens.push(token);
        let store = store.clone();
        inflight.spawn(async move {
            store
                .insert(portcullis_core::Insert {
                    session: s,
                    limit: None,
                    reconstitute: false,
                    actor: portcullis_core::Actor("scale".into()),
                    ended_retention: Duration::from_secs(3600),
                })
                .await
                .expect("insert")
        });
        if inflight.len() >= 64
            && let Some(done) = inflight.join_next().await
        {
            done.expect("insert task");
        }
    }
    while let Some(done) = inflight.join_next().await {
        done.expect("insert task");
    }
    let write = started.elapsed();
    let used = redis_used_memory(&a.redis).await.saturating_sub(before) as f64 / n as f64;
    // The audit trail (one `session.created` event per session) lives in the per-tag streams.
    let mut conn = redis_connection(&a.redis).await;
    let mut events = 0u64;
    for tag in 0..=255u8 {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{prefix}:{{{tag:02x}}}:e"))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        events += bytes.unwrap_or(0);
    }
    let events = events as f64 / n as f64;
    let by_kind = redis_bytes_by_kind(&a.redis, &prefix, n).await;
    let extra = format!(
        "write_s={:.1} redis_bytes_per_session={:.0} audit_event_bytes_per_session={events:.0} {by_kind}",
        write.as_secs_f64(),
        used - events
    );
    measure("redis", n, store, &tokens, true, extra).await;
    // Leave nothing behind (a `KEYS` answer of millions of keys timed out and left them all).
    let mut conn = redis_connection(&a.redis).await;
    for keys in keys_under(&mut conn, &prefix).await.chunks(10_000) {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("delete the scale keys");
    }
}

/// Every key under `prefix`, walked with `SCAN` so a large keyspace never blocks Redis.
async fn keys_under(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(conn)
            .await
            .expect("scan");
        all.extend(keys);
        if next == 0 {
            return all;
        }
        cursor = next;
    }
}
