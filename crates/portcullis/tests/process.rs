//! The real `portcullis` binary: served over loopback, driven by its own CLI, killed with -9.

use std::process::Command;

use serde_json::{Value, json};

mod common;

use common::*;

#[tokio::test]
async fn cli_changes_take_effect_on_the_running_server_at_once() {
    let dir = data_dir();
    let server = Server::start(&dir).await;
    // A key created while the server runs works on its very next request.
    let key = create_key(&dir, "shop");
    let (token, id) = server.create(&key, "alice").await;
    let out = cli(&dir, &["sessions", "list", "--subject", "alice"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["sessions"][0]["id"], id.as_str());

    let out = cli(&dir, &["sessions", "revoke", &id]);
    assert!(out.status.success());
    let (status, problem) = server.validate(&key, &token).await;
    assert_eq!(
        (status, problem["ended_reason"].as_str()),
        (401, Some("revoked_admin"))
    );

    let (keep, keep_id) = server.create(&key, "alice").await;
    let (other, _) = server.create(&key, "alice").await;
    let out = cli(
        &dir,
        &[
            "sessions",
            "revoke-subject",
            "alice",
            "--except",
            &keep_id,
            "--reason",
            "password_changed",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended["ended"], 1);
    assert_eq!(server.validate(&key, &other).await.0, 401);
    assert_eq!(server.validate(&key, &keep).await.0, 200);

    let out = cli(&dir, &["api-keys", "list"]);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key_id = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&key),
        "listing never shows a secret"
    );
    assert!(cli(&dir, &["api-keys", "revoke", &key_id]).status.success());
    let (status, problem) = server.validate(&key, &keep).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("invalid_api_key"))
    );

    let out = cli(&dir, &["sessions", "revoke", "ses_nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
    server.stop();

    // The audit log has one JSON line per change and never a token.
    let log = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let kinds: Vec<String> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "session.created").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "session.ended").count(), 2);
    assert!(
        kinds.contains(&"api_key.created".to_owned())
            && kinds.contains(&"api_key.revoked".to_owned())
    );
    for secret in [&token, &keep, &other, &key] {
        assert!(!log.contains(secret.as_str()));
    }
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    let dir = data_dir();
    let key = create_key(&dir, "shop"); // no server yet: the CLI works on the store directly
    let server = Server::start(&dir).await;
    let mut created = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = server.http.clone();
        let url = format!("{}/v1/sessions", server.base);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"subject": format!("user{}", i % 20)}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            let body: Value = response.json().await.unwrap();
            body["token"].as_str().unwrap().to_owned()
        }));
    }
    for task in tasks {
        created.push(task.await.unwrap());
    }
    let (kept, logged_out) = created.split_at(100);
    for token in logged_out {
        let (status, _) = server
            .call(
                &key,
                reqwest::Method::POST,
                "/v1/sessions/logout",
                Some(json!({"token": token})),
            )
            .await;
        assert_eq!(status, 204);
    }
    server.kill9();

    let server = Server::start(&dir).await;
    for token in kept {
        assert_eq!(server.validate(&key, token).await.0, 200);
    }
    for token in logged_out {
        let (status, problem) = server.validate(&key, token).await;
        assert_eq!(
            (status, problem["reason"].as_str()),
            (401, Some("logged_out"))
        );
    }
    // Starting a second server on the same data directory is refused.
    let second = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another portcullis server is running")
    );
    server.stop();
}

#[test]
fn invalid_configuration_is_refused_with_the_key_named() {
    let dir = data_dir();
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, "[policies.shop]\nidle = \"fifteen minutes\"\n").unwrap();
    for args in [vec!["config", "check"], vec!["serve"]] {
        let out = Command::new(BIN)
            .args(&args)
            .env("PORTCULLIS_CONFIG", &config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("policies.shop.idle"), "{stderr}");
    }
    std::fs::write(
        &config,
        "[policies.shop]\npreset = \"aal2\"\nmax_sessions = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("PORTCULLIS_CONFIG", &config)
        .env("PORTCULLIS_POLICIES__SHOP__IDLE", "10m")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("policy shop: idle 10m (configured)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy shop: absolute 12h (preset aal2)"),
        "{stdout}"
    );
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("PORTCULLIS_LISTEN", "nowhere")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen:"));
}

/// A certificate or key that cannot be used stops `serve` at once, before it says it listens,
/// and `config check` refuses it: a server that announced itself and then never listened would
/// hang with the data directory locked.
#[test]
fn an_unusable_tls_certificate_or_key_is_refused_at_start() {
    let dir = data_dir();
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let missing = dir.join("missing.pem");
    for cert in [&missing, &junk] {
        for args in [
            vec!["config", "check"],
            vec!["serve", "--listen", "127.0.0.1:0"],
        ] {
            let child = Command::new(BIN)
                .arg("--data-dir")
                .arg(&dir)
                .args(&args)
                .env("PORTCULLIS_TLS_CERT", cert)
                .env("PORTCULLIS_TLS_KEY", &junk)
                .env_remove("PORTCULLIS_CONFIG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            let (done, finished) = std::sync::mpsc::channel();
            std::thread::spawn(move || done.send(child.wait_with_output()));
            let out = finished
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                    panic!("{args:?} with {} did not stop", cert.display())
                })
                .unwrap();
            let status = out.status;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!status.success(), "{args:?}: {stderr}");
            assert!(
                stderr.contains("cannot use the TLS certificate"),
                "{stderr}"
            );
            assert!(!stderr.contains("listening"), "{stderr}");
        }
    }
}

/// `config check | head -1`: a reader that stops early is no error (it was a panic).
#[test]
fn config_check_into_a_closed_pipe_is_no_error() {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir())
        .args(["config", "check"])
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the CLI with `input` on standard input (how passwords are given).
fn cli_with_input(dir: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn asvs5_7_4_2_users_cli_and_disabling_ends_every_session_at_once() {
    let dir = data_dir();
    let server = Server::start(&dir).await;
    let key = create_key(&dir, "shop");
    let password = "a long enough passphrase";
    let out = cli_with_input(&dir, &["users", "add", "Alice"], &format!("{password}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weak = cli_with_input(&dir, &["users", "add", "bob"], "password\n");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("weak_password"));
    let taken = cli_with_input(&dir, &["users", "add", "alice"], &format!("{password}\n"));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("user_exists"));

    let out = cli(&dir, &["users", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let users: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
    assert_eq!(users["users"][0]["username"], "alice");
    assert!(!listed.contains("argon2") && !listed.contains(password));
    let id = users["users"][0]["id"].as_str().unwrap().to_owned();

    let (first, _) = server.create(&key, &id).await;
    let (second, _) = server.create(&key, &id).await;
    let out = cli(&dir, &["users", "disable", "alice"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 session(s) ended"));
    for token in [&first, &second] {
        let (status, problem) = server.validate(&key, token).await;
        assert_eq!(
            (status, problem["ended_reason"].as_str()),
            (401, Some("account_disabled"))
        );
    }
    assert!(cli(&dir, &["users", "enable", "alice"]).status.success());
    let (third, _) = server.create(&key, &id).await;
    let reset = cli_with_input(
        &dir,
        &["users", "set-password", "alice"],
        "another long passphrase\n",
    );
    assert!(reset.status.success());
    let (status, problem) = server.validate(&key, &third).await;
    assert_eq!(
        (status, problem["ended_reason"].as_str()),
        (401, Some("password_changed"))
    );
    server.stop();

    let log = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    for kind in [
        "user.created",
        "user.disabled",
        "user.enabled",
        "user.password_changed",
    ] {
        assert!(log.contains(kind), "{kind} in the audit log");
    }
    assert!(!log.contains(password) && !log.contains("argon2"));
}

#[tokio::test]
async fn owasp_sm_5_serve_speaks_https_with_a_certificate() {
    let dir = data_dir();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let port = common::free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--audit-log", "off", "--store", "memory://"])
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .env_remove("PORTCULLIS_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let curl = |url: String| {
        Command::new("curl")
            .args(["-sk", "-D", "-", "--max-time", "5"])
            .arg(url)
            .output()
            .unwrap()
    };
    let started = std::time::Instant::now();
    let answer = loop {
        let out = curl(format!("https://localhost:{port}/login"));
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no HTTPS answer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        answer.starts_with("HTTP/2 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(
        answer
            .to_lowercase()
            .contains("strict-transport-security: max-age=")
    );
    // ASVS5-3.4.1: every answer over TLS carries HSTS, the API's and the ops endpoints' too.
    let ops = curl(format!("https://localhost:{port}/healthz"));
    assert!(
        String::from_utf8_lossy(&ops.stdout)
            .to_lowercase()
            .contains("strict-transport-security: max-age="),
        "{}",
        String::from_utf8_lossy(&ops.stdout)
    );
    let plain = curl(format!("http://localhost:{port}/healthz"));
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("200 OK"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `portcullis apps …` end to end, through the running server's admin socket: bad input is a
/// clear message that changes nothing, and removing an application revokes its keys and ends
/// its sessions at once.
#[tokio::test]
async fn apps_cli_registers_refuses_bad_input_and_removes() {
    let dir = data_dir();
    let server = Server::start(&dir).await;
    let refused = |args: &[&str], needle: &str| {
        let out = cli(&dir, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    let out = cli(&dir, &["apps", "add", "shop", "--grant", "read_all_events"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(&["apps", "add", "shop"], "name_taken");
    refused(
        &["apps", "add", "blog", "--grant", "everything"],
        "unknown_grant",
    );
    refused(
        &["apps", "add", "blog", "--policy", "nope"],
        "unknown_policy",
    );
    refused(
        &["apps", "add", "blog", "--policy", "portcullis.sso"],
        "policy_not_allowed",
    );
    refused(
        &["api-keys", "create", "--app", "nope"],
        "unknown_application",
    );
    refused(
        &["apps", "update", "nope", "--no-grants"],
        "unknown_application",
    );
    refused(
        &["apps", "update", "shop", "--grant", "all"],
        "unknown_grant",
    );
    let listed: Value = serde_json::from_slice(&cli(&dir, &["apps", "list"]).stdout).unwrap();
    let apps = listed["applications"].as_array().unwrap();
    assert_eq!(apps.len(), 1, "nothing changed: {listed}");
    assert_eq!(apps[0]["grants"], json!(["read_all_events"]));

    let key = create_key(&dir, "shop");
    let (token, _) = server.create(&key, "u-1").await;
    let out = cli(&dir, &["apps", "remove", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("1 API key(s) revoked, 1 session(s) ended"),
        "{said}"
    );
    let (status, problem) = server.validate(&key, &token).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("invalid_api_key"))
    );
    refused(
        &["api-keys", "create", "--app", "shop"],
        "unknown_application",
    );
    let keys: Value = serde_json::from_slice(&cli(&dir, &["api-keys", "list"]).stdout).unwrap();
    assert!(keys["api_keys"][0]["revoked_at"].is_string(), "{keys}");
    server.stop();
}

/// The embedded store has one writer. With the server's admin socket lost, a CLI can neither
/// reach the server nor take the store's lock: it says so and changes nothing, so nothing it
/// would have revoked stays valid on the server and the server's event numbers stay its own.
/// Once the server has stopped, the CLI writes to the store directly.
#[tokio::test]
async fn a_cli_that_cannot_reach_the_running_server_changes_nothing() {
    let dir = data_dir();
    let server = Server::start(&dir).await;
    let key = create_key(&dir, "shop");
    let (token, session) = server.create(&key, "alice").await;
    let keys: Value = serde_json::from_slice(&cli(&dir, &["api-keys", "list"]).stdout).unwrap();
    let key_id = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();

    std::fs::rename(dir.join("portcullis.sock"), dir.join("lost.sock")).unwrap();
    let refused = |out: std::process::Output, what: &str| {
        assert!(!out.status.success(), "{what} should be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("in use by a running portcullis server")
                && stderr.contains("nothing was changed"),
            "{what}: {stderr}"
        );
    };
    refused(
        cli(&dir, &["api-keys", "revoke", &key_id]),
        "api-keys revoke",
    );
    refused(
        cli(&dir, &["sessions", "revoke", &session]),
        "sessions revoke",
    );
    refused(cli(&dir, &["apps", "add", "blog"]), "apps add");
    refused(
        cli_with_input(&dir, &["users", "add", "bob"], "a long enough passphrase\n"),
        "users add",
    );

    // The running server still honours the key and the session, and writes on.
    assert_eq!(server.validate(&key, &token).await.0, 200);
    let (later, _) = server.create(&key, "bob").await;
    server.stop();

    // Nothing reached the store while the server ran; now the CLI may write to it.
    let users: Value = serde_json::from_slice(&cli(&dir, &["users", "list"]).stdout).unwrap();
    assert_eq!(users["users"], json!([]));
    let apps: Value = serde_json::from_slice(&cli(&dir, &["apps", "list"]).stdout).unwrap();
    assert_eq!(apps["applications"].as_array().unwrap().len(), 1, "{apps}");
    let out = cli(&dir, &["api-keys", "revoke", &key_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::start(&dir).await;
    let (status, problem) = server.validate(&key, &later).await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (401, Some("invalid_api_key"))
    );
    server.stop();
}

/// The data directory holds the store and the admin socket: a server refuses to run in one
/// that group or others can enter, and names the fix; in a private one its socket is 0600.
#[tokio::test]
async fn serve_refuses_a_data_directory_open_to_others() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--audit-log", "off"])
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("chmod 700 {}", dir.display())),
        "{stderr}"
    );
    assert!(!dir.join("portcullis.sock").exists());
    assert!(
        !dir.join("portcullis.db").exists(),
        "the store is not opened"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let server = Server::start(&dir).await;
    let mode = std::fs::metadata(dir.join("portcullis.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    server.stop();
}

/// The OpenID Connect provider managed end to end through the running server's admin socket:
/// a client registered with a secret shown once (kept on a later update, replaced on request),
/// registrations that could leak a code refused, signing keys rotated with the old key still
/// published, and the registration removed.
#[tokio::test]
async fn oidc_clients_and_signing_keys_are_managed_by_the_cli() {
    let dir = data_dir();
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        "issuer = \"https://id.example.test\"\nencryption_keys = \"k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n",
    )
    .unwrap();
    let server = Server::start_with(&dir, None, Some(&config)).await;
    let ok = |args: &[&str]| {
        let out = cli(&dir, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let refused = |args: &[&str], needle: &str| {
        let out = cli(&dir, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    ok(&["apps", "add", "shop"]);
    let registered = ok(&[
        "apps",
        "client",
        "shop",
        "--redirect-uri",
        "https://shop.example/cb",
    ]);
    let client = &registered["client"];
    assert_eq!(client["client_id"], registered["id"]);
    assert_eq!(client["token_endpoint_auth_method"], "client_secret_basic");
    let secret = client["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("pcc_") && secret.len() == 47, "{secret}");

    let updated = ok(&[
        "apps",
        "client",
        "shop",
        "--redirect-uri",
        "https://shop.example/cb",
        "--redirect-uri",
        "https://shop.example/cb2",
    ]);
    assert!(
        updated["client"].get("client_secret").is_none(),
        "the secret is shown once and kept: {updated}"
    );
    assert_eq!(
        updated["client"]["redirect_uris"].as_array().unwrap().len(),
        2
    );
    let renewed = ok(&[
        "apps",
        "client",
        "shop",
        "--redirect-uri",
        "https://shop.example/cb",
        "--new-secret",
    ]);
    let new_secret = renewed["client"]["client_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);

    refused(
        &[
            "apps",
            "client",
            "shop",
            "--redirect-uri",
            "http://shop.example/cb",
        ],
        "loopback",
    );
    refused(
        &[
            "apps",
            "client",
            "shop",
            "--redirect-uri",
            "https://shop.example/cb#frag",
        ],
        "fragment",
    );
    refused(
        &[
            "apps",
            "client",
            "shop",
            "--redirect-uri",
            "https://shop.example/cb",
            "--auth-method",
            "private_key_jwt",
        ],
        "jwks",
    );
    // Only an algorithm the provider keeps a key for (signing_algs, ES256 here) can sign.
    refused(
        &[
            "apps",
            "client",
            "shop",
            "--redirect-uri",
            "https://shop.example/cb",
            "--id-token-alg",
            "RS256",
        ],
        "signing_algs",
    );
    let shown = ok(&["apps", "show", "shop"]);
    assert_eq!(
        shown["client"]["redirect_uris"],
        json!(["https://shop.example/cb"]),
        "refused registrations changed nothing"
    );

    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!("{}/.well-known/openid-configuration", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], "https://id.example.test");
    assert_eq!(
        discovery["token_endpoint"],
        "https://id.example.test/oidc/token"
    );
    let published = |server_base: String| {
        let http = http.clone();
        async move {
            let jwks: Value = http
                .get(format!("{server_base}/oidc/jwks"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let before = published(server.base.clone()).await;
    assert_eq!(before.len(), 1);
    let rotated = ok(&["keys", "rotate"]);
    let new_kid = rotated["kid"].as_str().unwrap();
    let after = published(server.base.clone()).await;
    assert_eq!(after.len(), 2, "the old key stays published: {after:?}");
    assert!(after.contains(&before[0]) && after.iter().any(|k| k == new_kid));
    let keys = ok(&["keys", "list"]);
    let retired: Vec<&Value> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k.get("retired_at").is_some())
        .collect();
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0]["kid"], before[0].as_str());

    let removed = ok(&["apps", "client-remove", "shop"]);
    assert!(removed.get("client").is_none(), "{removed}");
    server.stop();
}
