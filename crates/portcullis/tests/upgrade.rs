//! Upgrading keeps data: a data directory, a PostgreSQL schema and a Redis prefix written by the
//! previous release (10c603b, `tests/fixtures/v10c603b`, made by that release's own binary) are
//! opened by this one. Live sessions stay valid, both API keys keep working (they move to the
//! `legacy` application), and the old SSO session, which nobody can tell apart from a session an
//! API key minted, no longer opens the account pages.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v10c603b")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
        .unwrap()
}

fn postgres_base() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Restores the PostgreSQL dump into a fresh schema and returns its store URL.
fn restore_postgres() -> (String, String) {
    let schema = format!("pc_upgrade_{}", std::process::id());
    let sql = std::fs::read_to_string(fixtures().join("postgres.sql"))
        .unwrap()
        .replace("pc_fixture_10c603b", &schema);
    let base = postgres_base();
    let run = |sql: &str| {
        let mut child = std::process::Command::new("psql")
            .env("PGOPTIONS", "--client-min-messages=warning")
            .args([&base, "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "psql failed");
    };
    run(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE;"));
    run(&sql);
    (format!("{base}?schema={schema}"), schema)
}

fn drop_postgres(schema: &str) {
    let _ = std::process::Command::new("psql")
        .env("PGOPTIONS", "--client-min-messages=warning")
        .args([
            &postgres_base(),
            "-q",
            "-c",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .status();
}

/// Restores every key of the Redis dump under a fresh prefix and returns its store URL.
async fn restore_redis() -> (String, String) {
    let base =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("pcupgrade{}", std::process::id());
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("redis.json")).unwrap())
            .unwrap();
    // The dump names the prefix with the separator the store adds itself.
    let old = dump["prefix"]
        .as_str()
        .unwrap()
        .trim_end_matches(':')
        .as_bytes();
    let client = redis::Client::open(base.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    clear_redis(&base, &prefix).await;
    for entry in dump["keys"].as_array().unwrap() {
        let mut key = B64.decode(entry["key_b64"].as_str().unwrap()).unwrap();
        assert!(key.starts_with(old));
        key.splice(..old.len(), prefix.bytes());
        let payload = B64.decode(entry["dump_b64"].as_str().unwrap()).unwrap();
        let ttl = entry["pttl"].as_i64().unwrap().max(0);
        redis::cmd("RESTORE")
            .arg(&key)
            .arg(ttl)
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    (format!("{base}?prefix={prefix}"), prefix)
}

async fn clear_redis(base: &str, prefix: &str) {
    let client = redis::Client::open(base).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

/// Opens the old data with this release and checks everything the upgrade promises.
async fn upgrade_keeps_data(store_name: &str, dir: &Path, store: Option<&str>) {
    let manifest = manifest();
    let fixture = &manifest["stores"][store_name];
    let config = fixtures().join("config.toml");
    let server = Server::start_with(dir, store, Some(&config)).await;
    let keys: Vec<(String, String)> = fixture["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_owned(),
                k["secret"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 2);

    // Every live session stays valid, for both keys, and shows the legacy application.
    let mut live = 0;
    for session in fixture["sessions"].as_array().unwrap() {
        let token = session["token"].as_str().unwrap();
        for (name, key) in &keys {
            let (status, body) = server.validate(key, token).await;
            let expected = session["expected_validate"]["status"].as_u64().unwrap();
            let label = session["label"].as_str().unwrap();
            assert_eq!(
                u64::from(status),
                expected,
                "{store_name} {label} with {name}: {body}"
            );
            if status == 200 {
                assert_eq!(body["session"]["application"], "app_legacy");
                assert_eq!(body["session"]["id"], session["id"]);
                assert_eq!(body["session"]["subject"], session["subject"]);
                assert_eq!(body["session"]["data"], session["data"]);
            } else {
                assert_eq!(body["reason"], session["expected_validate"]["reason"]);
            }
        }
        if session["state"] == "live" {
            live += 1;
        }
        for dead in session["dead_tokens"].as_array().into_iter().flatten() {
            let token = dead["token"].as_str().unwrap_or_default();
            let (status, _) = server.validate(&keys[0].1, token).await;
            assert_eq!(
                status, 401,
                "a token replaced before the upgrade stays dead"
            );
        }
    }
    assert!(live >= 5, "{store_name}: the fixture holds live sessions");

    // The keys now belong to the `legacy` application, which can do what they could.
    let listed = cli_with_store_config(dir, store, &config, &["apps", "show", "legacy"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let app: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(app["id"], "app_legacy");
    assert_eq!(app["api_keys"], 2);
    assert_eq!(
        app["grants"],
        json!(["end_everywhere", "read_all_events", "list_all_sessions"])
    );
    let (status, events) = server
        .call(&keys[0].1, Method::GET, "/v1/events?limit=1000", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        events["events"].as_array().unwrap().len() > 5,
        "the legacy application reads the trail it wrote: {events}"
    );

    // The old SSO session was minted by the pages, but so could it have been by a key: after
    // the upgrade it is an ordinary legacy session, and the pages send its holder to sign in.
    let sso = fixture["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["label"] == "sso-alice-remember-me")
        .unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let account = no_redirects
        .get(format!("{}/account", server.base))
        .header(
            "cookie",
            format!("__Host-portcullis={}", sso["token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 303);

    // Tightening, as the README says: a new application with its own key, the legacy one
    // without grants. New sessions are the new application's; the legacy key still works.
    let added = cli_with_store_config(dir, store, &config, &["apps", "add", "shop"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let created = cli_with_store_config(
        dir,
        store,
        &config,
        &["api-keys", "create", "--app", "shop"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let shop = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let tightened = cli_with_store_config(
        dir,
        store,
        &config,
        &["apps", "update", "legacy", "--no-grants"],
    );
    assert!(
        tightened.status.success(),
        "{}",
        String::from_utf8_lossy(&tightened.stderr)
    );
    let old_token = fixture["sessions"][0]["token"].as_str().unwrap();
    let (status, _) = server.validate(&shop, old_token).await;
    assert_eq!(
        status, 401,
        "the new application does not reach legacy sessions"
    );
    // The change went through this node's admin socket, so it takes effect here at once.
    let (status, _) = server
        .call(&keys[0].1, Method::GET, "/v1/events?scope=all", None)
        .await;
    assert_eq!(status, 403, "grants taken away stop working");
    let (status, _) = server.validate(&keys[0].1, old_token).await;
    assert_eq!(status, 200);
    server.stop();
}

fn cli_with_store_config(
    dir: &Path,
    store: Option<&str>,
    config: &Path,
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command.arg("--data-dir").arg(dir);
    if let Some(store) = store {
        command.args(["--store", store]);
    }
    command
        .args(args)
        .env("PORTCULLIS_CONFIG", config)
        .output()
        .unwrap()
}

#[tokio::test]
async fn upgrade_from_10c603b_keeps_sqlite_data() {
    let dir = data_dir();
    std::fs::copy(
        fixtures().join("sqlite/portcullis.db"),
        dir.join("portcullis.db"),
    )
    .unwrap();
    upgrade_keeps_data("sqlite", &dir, None).await;
}

#[tokio::test]
async fn upgrade_from_10c603b_keeps_postgres_data() {
    let dir = data_dir();
    let (url, schema) = restore_postgres();
    upgrade_keeps_data("postgres", &dir, Some(&url)).await;
    drop_postgres(&schema);
}

#[tokio::test]
async fn upgrade_from_10c603b_keeps_redis_data() {
    let dir = data_dir();
    let (url, prefix) = restore_redis().await;
    upgrade_keeps_data("redis", &dir, Some(&url)).await;
    let base =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    clear_redis(&base, &prefix).await;
}
