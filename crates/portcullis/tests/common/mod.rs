//! Shared helpers: start the real binary, call it, drive its CLI.
#![allow(dead_code)]

pub mod person;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

pub struct Server {
    pub child: Child,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server on `dir` and waits until it answers (a real process has to start).
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, None, None).await
    }

    /// Starts a server on `dir` with a store URL and a configuration file.
    pub async fn start_with(dir: &Path, store: Option<&str>, config: Option<&Path>) -> Self {
        Self::start_at(dir, free_port(), store, config).await
    }

    /// [`Server::start_with`] listening on `port` (a server restarted where it was, or one
    /// whose configuration names its own address).
    pub async fn start_at(
        dir: &Path,
        port: u16,
        store: Option<&str>,
        config: Option<&Path>,
    ) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .arg("--audit-log")
            .arg(dir.join("audit.log"))
            .env_remove("PORTCULLIS_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(store) = store {
            command.args(["--store", store]);
        }
        if let Some(config) = config {
            command.env("PORTCULLIS_CONFIG", config);
        }
        let child = command.spawn().unwrap();
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let started = Instant::now();
        loop {
            if let Ok(r) = server
                .http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                && r.status() == 200
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub async fn call(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    pub async fn create(&self, key: &str, subject: &str) -> (String, String) {
        let (status, body) = self
            .call(
                key,
                reqwest::Method::POST,
                "/v1/sessions",
                Some(json!({"subject": subject})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["session"]["id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn validate(&self, key: &str, token: &str) -> (u16, Value) {
        self.call(
            key,
            reqwest::Method::POST,
            "/v1/sessions/validate",
            Some(json!({"token": token})),
        )
        .await
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

pub fn cli_with_store(dir: &Path, store: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["--store", store])
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap()
}

pub fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap()
}

/// Registers application `app` (every unreserved policy) unless it exists, and creates a key of
/// it, through `run` (the CLI on some store).
fn create_app_key(run: impl Fn(&[&str]) -> Output, app: &str) -> String {
    let shown = run(&["apps", "show", app]);
    if !shown.status.success() {
        let added = run(&["apps", "add", app, "--policy", "*"]);
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    let out = run(&["api-keys", "create", "--app", app]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("pck_"), "{key}");
    key
}

/// Creates a key of application `tests` with the CLI working on `store` directly (no server on
/// `dir`).
pub fn create_key_in(dir: &Path, store: &str) -> String {
    create_app_key(|args| cli_with_store(dir, store, args), "tests")
}

/// Creates a key of application `app` (registered on first use).
pub fn create_key(dir: &Path, app: &str) -> String {
    create_app_key(|args| cli(dir, args), app)
}

/// A fresh data directory, private to this user as the server requires.
pub fn data_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}
