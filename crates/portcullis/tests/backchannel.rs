//! Back-channel logout from a real server process: a person signs in to a client through the
//! pages (plain HTTP, no browser), the client redeems the code, and when the person's sessions
//! end the client's endpoint receives a logout token. The delivery is durable: the server is
//! killed (`kill -9`) while the client's endpoint holds the first post unanswered, and the
//! restarted server delivers it again (same `jti`) once the dead node's claim runs out. The
//! operator reads it with `portcullis deliveries`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, State};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::person::Person;
use common::*;
use openidconnect::url::{Url, form_urlencoded};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple 7";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The client's back-channel logout endpoint: every logout token posted, and whether to hold
/// the next post unanswered.
#[derive(Clone, Default)]
struct Receiver {
    tokens: Arc<std::sync::Mutex<Vec<String>>>,
    hold: Arc<AtomicBool>,
}

#[derive(serde::Deserialize)]
struct LogoutForm {
    logout_token: String,
}

async fn receive(State(r): State<Receiver>, Form(form): Form<LogoutForm>) -> &'static str {
    r.tokens.lock().unwrap().push(form.logout_token);
    if r.hold.load(Ordering::SeqCst) {
        // The server dies while it waits for this answer.
        std::future::pending::<()>().await;
    }
    ""
}

impl Receiver {
    fn received(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }

    /// Waits until `n` tokens have arrived (the server delivers within seconds).
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                started.elapsed() < within,
                "{n} logout tokens within {within:?}; got {}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn cli_with_input(dir: &std::path::Path, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
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
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli_json(dir: &std::path::Path, config: &std::path::Path, args: &[&str]) -> Value {
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("PORTCULLIS_CONFIG", config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_bcl_9_a_logout_in_flight_when_the_server_is_killed_is_delivered_after_restart() {
    let dir = data_dir();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "issuer = \"{base}\"\n\
             encryption_keys = \"k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n\
             outbound_allow = [\"127.0.0.0/8\"]\n\
             outbound_timeout = \"1s\"\n"
        ),
    )
    .unwrap();

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rp = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/backchannel-logout", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    cli_with_input(
        &dir,
        &["users", "add", "alice"],
        &format!("{PASSWORD}\n{PASSWORD}\n"),
    );
    let server = Server::start_at(&dir, port, None, Some(&config)).await;
    cli_json(&dir, &config, &["apps", "add", "shop"]);
    let registered = cli_json(
        &dir,
        &config,
        &[
            "apps",
            "client",
            "shop",
            "--redirect-uri",
            &format!("{rp}/callback"),
            "--backchannel-logout-uri",
            &format!("{rp}/backchannel-logout"),
        ],
    );
    let client_id = registered["client"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = registered["client"]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();

    // The person signs in to the client; the client redeems the code.
    let mut authorize = Url::parse(&format!("{base}/oidc/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &format!("{rp}/callback"))
        .append_pair("response_type", "code")
        .append_pair("scope", "openid")
        .append_pair("state", "s1")
        .append_pair("nonce", "n1")
        .append_pair("code_challenge", CHALLENGE)
        .append_pair("code_challenge_method", "S256");
    let callback = Person::new(&base)
        .sign_in_through(&authorize, "alice", PASSWORD)
        .await;
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");
    let tokens: Value = server
        .http
        .post(format!("{base}/oidc/token"))
        .basic_auth(&client_id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "authorization_code")
                .append_pair("code", &code)
                .append_pair("redirect_uri", &format!("{rp}/callback"))
                .append_pair("code_verifier", VERIFIER)
                .finish(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id_token = claims(tokens["id_token"].as_str().expect("an ID token"));

    // The account is disabled: every session of the person ends, the client's with them. The
    // client holds the post unanswered, and the server is killed meanwhile.
    receiver.hold.store(true, Ordering::SeqCst);
    cli_json(&dir, &config, &["users", "disable", "alice"]);
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    server.kill9();
    receiver.hold.store(false, Ordering::SeqCst);

    let server = Server::start_at(&dir, port, None, Some(&config)).await;
    // The dead node's claim lasts twice the outbound timeout and 5 s more.
    let both = receiver.wait_for(2, Duration::from_secs(20)).await;
    let (before, after) = (claims(&first[0]), claims(&both[1]));
    assert_eq!(
        before["jti"], after["jti"],
        "the same logout, delivered again"
    );
    assert_eq!(after["aud"], client_id.as_str());
    assert_eq!(after["iss"], base.as_str());
    assert_eq!(after["sid"], id_token["sid"], "OIDC-BCL-4");
    assert_eq!(after["sub"], id_token["sub"]);
    assert!(after.get("nonce").is_none());
    assert!(after["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());

    // The operator sees it delivered, in one attempt the restarted server made.
    let listed = cli_json(&dir, &config, &["deliveries", "list", "--client", "shop"]);
    let deliveries = listed["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{listed}");
    assert_eq!(deliveries[0]["state"], "delivered", "{listed}");
    assert_eq!(deliveries[0]["reason"], "parent_ended");
    assert_eq!(deliveries[0]["attempts"], 1);
    assert_eq!(listed["pending"], 0);
    let session = deliveries[0]["session"].as_str().unwrap();
    let shown = cli_json(&dir, &config, &["deliveries", "show", session]);
    assert_eq!(shown["uri"], format!("{rp}/backchannel-logout"));
    assert_eq!(receiver.received().len(), 2, "delivered, then left alone");
    server.stop();
}
