//! Private Redis servers for the tests that stop, pause or kill them: each on a free loopback
//! port, in its own directory, ended with the test (also when it fails).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port nothing listens on now, and never handed out before in this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Whether something accepts connections on `port`.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{signal} {pid}");
}

/// Polls `done` every 20 ms until it holds; fails the test after `limit`.
pub async fn until(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` child process (no persistence), killed when dropped.
pub struct RedisProcess {
    /// The port it answers on (its TLS port when it has one).
    pub port: u16,
    /// Its directory (log, files).
    pub dir: PathBuf,
    child: Child,
}

impl RedisProcess {
    /// Starts `redis-server` on a free port with `args` after the defaults (`--port` among the
    /// args replaces the default one; `port` is then the port to wait for).
    pub fn start(root: &Path, name: &str, port: u16, args: &[&str]) -> Self {
        Self::start_binary(Path::new("redis-server"), root, name, port, args)
    }

    /// [`RedisProcess::start`] with another `redis-server` binary (a Redis built from source,
    /// for a command the installed one lacks); a bare name is looked up in `PATH`.
    pub fn start_binary(binary: &Path, root: &Path, name: &str, port: u16, args: &[&str]) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // A restart in the same directory must not read the last run's log as its own.
        let _ = std::fs::remove_file(dir.join("redis.log"));
        let mut command = Command::new(binary);
        if !args.contains(&"--port") {
            command.args(["--port", &port.to_string()]);
        }
        command
            .args([
                "--bind",
                "127.0.0.1",
                "-::1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", binary.display()));
        let mut server = Self { port, dir, child };
        let started = Instant::now();
        // Ready when this process says so (something else may listen on the port).
        while !server.log().contains("Ready to accept connections") {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server {name} exited ({status}): {}", server.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server {name} did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes it (`SIGSTOP`): it takes no command and, as a replica, confirms nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// Lets it run again.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain connection to the server on `port` (for looking at keys).
pub async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// `INFO <section>` of the server behind `conn`, field `name`.
pub async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    name: &str,
) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}

/// `INFO replication` of the server behind `conn`, field `name`.
pub async fn replication_field(
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> Option<String> {
    info_field(conn, "replication", name).await
}

/// One line of `CLUSTER NODES`: the node's id, its port, the id of its primary when it is a
/// replica, and the slot ranges it holds.
#[derive(Debug)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary_of: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

/// The Cluster as the node behind `conn` sees it.
pub async fn cluster_nodes(conn: &mut redis::aio::MultiplexedConnection) -> Vec<ClusterNode> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .unwrap();
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .unwrap()
                .parse()
                .unwrap();
            let slots = f[8..]
                .iter()
                // `[slot->-id]`: a slot being migrated, not held.
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            ClusterNode {
                id: f[0].to_owned(),
                port,
                primary_of: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            }
        })
        .collect()
}
