//! Many nodes, one system: several real `portcullis serve` processes share one store
//! (PostgreSQL, Redis, Redis Cluster) on loopback.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::json;

fn postgres_url(name: &str) -> String {
    let base = std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    format!("{base}?schema=pc_test_{}_{name}", std::process::id())
}

fn redis_url(name: &str) -> String {
    let base =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    format!("{base}?prefix=pctest:{}:{name}", std::process::id())
}

fn cluster_url(name: &str) -> String {
    let nodes = std::env::var("PORTCULLIS_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102".into());
    format!(
        "redis+cluster://{nodes}?prefix=pctest:{}:{name}",
        std::process::id()
    )
}

fn limit_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    std::fs::write(
        &path,
        "[policies.three]\nmax_sessions = 3\non_limit = \"evict_oldest\"\n",
    )
    .unwrap();
    path
}

/// Three nodes on one store: what one node does, the others see on their very next call.
async fn one_system(store: &str) {
    let root = data_dir();
    let key = create_key_in(&root.join("cli"), store);
    let config = limit_config(&root);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            Server::start_with(&root.join(format!("node{i}")), Some(store), Some(&config)).await,
        );
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Created on A, valid on B and C.
    let (token, _) = a.create(&key, "alice").await;
    assert_eq!(b.validate(&key, &token).await.0, 200);
    assert_eq!(c.validate(&key, &token).await.0, 200);

    // Logged out on B: refused on A on the very next call. Revocation reaches every node at
    // once because no node caches sessions; measure the delay from B's answer to A's refusal.
    let (status, _) = b
        .call(
            &key,
            Method::POST,
            "/v1/sessions/logout",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, 204);
    let since = Instant::now();
    let (status, problem) = a.validate(&key, &token).await;
    let propagation = since.elapsed();
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("logged_out"))
    );
    eprintln!(
        "{store}: revocation seen by the next node's next call, {propagation:?} after the logout answer"
    );

    // Force logout on C: refused on A and B.
    let (keep, keep_id) = a.create(&key, "bob").await;
    let (other, _) = b.create(&key, "bob").await;
    let (status, ended) = c
        .call(
            &key,
            Method::DELETE,
            &format!("/v1/subjects/bob/sessions?except={keep_id}&reason=password_changed"),
            None,
        )
        .await;
    assert_eq!((status, ended["ended"].as_u64()), (200, Some(1)));
    assert_eq!(
        a.validate(&key, &other).await.1["ended_reason"],
        "password_changed"
    );
    assert_eq!(b.validate(&key, &keep).await.0, 200);

    // The concurrent-session limit holds when creates for one subject race across nodes.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let node = &nodes[i % 3];
        let (http, url, key) = (
            node.http.clone(),
            format!("{}/v1/sessions", node.base),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"subject": "carol", "policy": "three"}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 201);
    }
    let (_, list) = c
        .call(&key, Method::GET, "/v1/subjects/carol/sessions", None)
        .await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 3);

    // The CLI, pointed at the same store, acts on every node at once too.
    let (t, id) = c.create(&key, "dave").await;
    let out = cli_with_store(&root.join("cli"), store, &["sessions", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        b.validate(&key, &t).await.1["ended_reason"],
        "revoked_admin"
    );

    for node in nodes {
        node.stop();
    }
}

#[tokio::test]
async fn postgres_nodes_are_one_system() {
    one_system(&postgres_url("nodes")).await;
}

#[tokio::test]
async fn redis_nodes_are_one_system() {
    one_system(&redis_url("nodes")).await;
}

#[tokio::test]
async fn redis_cluster_nodes_are_one_system() {
    one_system(&cluster_url("nodes")).await;
}

/// A private redis-server this test can stop and start (AOF on, so a restart loses nothing).
struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start(port: u16, dir: &Path) -> Self {
        let status = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--pidfile")
            .arg(dir.join("redis.pid"))
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        while std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .map(|o| o.stdout != b"PONG\n")
            .unwrap_or(true)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            dir: dir.to_owned(),
        }
    }

    fn stop(&self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        let started = Instant::now();
        while self.dir.join("redis.pid").exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node on `store` fails closed while `stop` has taken the store away — every validation
/// answers 503 `store_unavailable`, never 200, and `/readyz` is unready — and after `start` the
/// same session validates again. Returns how long the recovery took.
async fn fails_closed_then_recovers(
    root: &Path,
    store: &str,
    stop: impl FnOnce(),
    start: impl FnOnce(),
) -> Duration {
    let key = create_key_in(&root.join("cli"), store);
    let node = Server::start_with(&root.join("node"), Some(store), None).await;
    let (token, _) = node.create(&key, "erin").await;

    stop();
    // Each refused call may wait for the store's connection timeout (PostgreSQL: 2 s).
    for _ in 0..6 {
        let (status, problem) = node.validate(&key, &token).await;
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["reason"], "store_unavailable");
    }
    let ready = node
        .http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    start();
    let started = Instant::now();
    loop {
        let (status, _) = node.validate(&key, &token).await;
        assert!(
            status == 200 || status == 503,
            "never anything but 200 or 503, got {status}"
        );
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = started.elapsed();
    let ready = node
        .http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    node.stop();
    recovered
}

/// Stop Redis under validation traffic: fail closed; when Redis is back nothing is lost.
#[tokio::test]
async fn fail_closed_when_redis_stops_and_recover_when_it_returns() {
    let root = data_dir();
    let port = free_port();
    let redis = PrivateRedis::start(port, &root);
    let store = format!("redis://127.0.0.1:{port}");
    let recovered = fails_closed_then_recovers(
        &root,
        &store,
        || redis.stop(),
        || {
            PrivateRedis::start(port, &root);
        },
    )
    .await;
    eprintln!("redis back: validations recovered {recovered:?} after restart");
    redis.stop();
}

/// A private PostgreSQL server this test can stop and start (its own data directory and port).
struct PrivatePostgres {
    data: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl PrivatePostgres {
    fn as_postgres(program: &Path) -> std::process::Command {
        // initdb and postgres refuse to run as root: run them as the postgres user then.
        let mut command = if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    fn create(root: &Path, port: u16) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .map(|e| e.unwrap().path().join("bin"))
            .max()
            .unwrap();
        // Not under `root`: the server's data directory is private (0700), and the postgres
        // user must be able to reach its own directory.
        let _ = root;
        let dir = tempfile::tempdir().unwrap().keep();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if is_root() {
            std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let ok = Self::as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(ok.success(), "initdb failed");
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!("port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = on\n", dir.display()),
        )
        .unwrap();
        Self { data, bin }
    }

    fn start(&self) {
        let ok = Self::as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-l"])
            .arg(self.data.join("log"))
            .arg("-D")
            .arg(&self.data)
            .arg("start")
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl start failed");
    }

    fn stop(&self) {
        let _ = Self::as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "fast", "-D"])
            .arg(&self.data)
            .arg("stop")
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Stop PostgreSQL under validation traffic: fail closed; back again with nothing lost.
#[tokio::test]
async fn fail_closed_when_postgres_stops_and_recover_when_it_returns() {
    let root = data_dir();
    let port = free_port();
    let pg = PrivatePostgres::create(&root, port);
    pg.start();
    let store = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let recovered = fails_closed_then_recovers(&root, &store, || pg.stop(), || pg.start()).await;
    eprintln!("postgres back: validations recovered {recovered:?} after restart");
    pg.stop();
}

/// Kill a Redis Cluster primary that has a replica: validations fail closed during the
/// failover and recover after it; the time it takes is printed.
#[tokio::test]
async fn redis_cluster_primary_failover() {
    let base = 7300;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/redis-cluster.sh"
    );
    let run = |action: &str| {
        let ok = std::process::Command::new("bash")
            .arg(script)
            .arg(action)
            .env("REDIS_CLUSTER_PORT", base.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "redis-cluster.sh {action}");
    };
    run("stop");
    run("start");
    let root = data_dir();
    let store = format!(
        "redis+cluster://127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}?prefix=failover",
        base + 1,
        base + 2
    );
    let key = create_key_in(&root.join("cli"), &store);
    let node = Server::start_with(&root.join("node"), Some(&store), None).await;
    let mut tokens = Vec::new();
    for i in 0..24 {
        tokens.push(node.create(&key, &format!("user{i}")).await.0);
    }
    // Redis replicates asynchronously: a write acknowledged by a primary that dies before its
    // replica has it is lost (Redis's own guarantee, not ours). Wait until the replica has
    // everything, so the test measures failover and not that window.
    let replicated = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &base.to_string(), "INFO", "replication"])
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout).into_owned();
        let field = |line: &str, key: &str| {
            line.split([',', ':'])
                .find_map(|part| part.strip_prefix(&format!("{key}=")).map(str::to_owned))
        };
        let primary = info
            .lines()
            .find_map(|l| l.strip_prefix("master_repl_offset:"))
            .map(|v| v.trim().to_owned());
        let replica = info
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| field(l, "offset"));
        primary.is_some() && primary == replica
    };
    let waiting = Instant::now();
    while !replicated() {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill the primary on the first port (it holds a third of the slots and has a replica).
    let pid = std::fs::read_to_string(format!(
        "/tmp/portcullis-redis-cluster-{base}/{base}/redis.pid"
    ))
    .unwrap();
    std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    let killed = Instant::now();
    let mut refused = 0;
    loop {
        let mut all_ok = true;
        for token in &tokens {
            let (status, problem) = node.validate(&key, token).await;
            assert!(
                status == 200 || status == 503,
                "never anything but 200 or 503, got {status}: {problem}"
            );
            if status != 200 {
                all_ok = false;
                refused += 1;
            }
        }
        if all_ok && killed.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "validations did not recover after failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "redis cluster failover: every session validates again {:?} after the primary was killed ({refused} validations answered 503 meanwhile)",
        killed.elapsed()
    );
    node.stop();
    run("stop");
}
