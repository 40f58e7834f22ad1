//! Federation as a person meets it, in Debian's `chromium` driven by
//! `tests/browser/federation_flows.mjs` (`playwright-core`): an external identity provider
//! (node-oidc-provider, `tests/browser/upstream_idp.mjs`, on loopback over plain HTTP), Portcullis
//! federating to it as the upstream `corp` (accounts made on first sign-in) and providing for
//! the two example applications of `two_apps.rs` (A: `examples/rp-axum`, B: `examples/rp-node`).
//! At each step the script checks which of the three sessions exist: the upstream's (its
//! `_session` cookie in the browser, and whether its login form appears), Portcullis's SSO
//! session (the control server: the person's live sessions, and the upstream session each SSO
//! session remembers) and each application's (its `/session.json`):
//!
//! 1. no session anywhere: the person authenticates at the external provider, and the
//!    sessions are made there, at Portcullis and at the application, in that order (the order
//!    of their `Set-Cookie`s along the redirects);
//! 2. only the external session (the SSO session ended by its idle timeout): no credentials
//!    are asked, Portcullis and the application make new sessions, vouched for by the same
//!    upstream session;
//! 3. an SSO session: the second application signs in without a visit to the external
//!    provider;
//! 4. an application session: nothing is asked of anyone (no request leaves the application);
//!
//! and logout: by the expiry of the SSO session (both applications told by back-channel
//! logout; the next visit is flow 2), and at the external provider (its back-channel logout
//! reaches Portcullis, which ends the SSO session and tells both applications; the next visit
//! asks for credentials there again). Screenshots land in
//! `target/browser-artifacts/federation-flows/`.
//!
//! Portcullis's clock is a `ManualClock` started at the real time; the script moves it once,
//! 31 s, past the 30 s idle timeout (within the minute of leeway the applications and
//! Portcullis grant against the other clocks). Portcullis reaches the provider and the
//! applications through `Outbound` with loopback allowed; the provider posts its back-channel
//! logout to Portcullis's HTTPS endpoint trusting Portcullis's certificate through
//! `NODE_EXTRA_CA_CERTS`.

#[path = "common/apps.rs"]
mod apps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use portcullis_core::{AccountError, Clock, OsRandom, PORTCULLIS_APP, Principal, SSO_POLICY};
use portcullis_http::oidc::backchannel::OutboundPolicy;
use portcullis_http::outbound::{Outbound, ProviderAssertions};
use portcullis_upstream::{
    ClaimMapping, Federation, Upstream, UpstreamClientAuth, UpstreamHttp, UpstreamLink,
    UpstreamSettings,
};
use serde_json::{Value, json};
use tokio::process::Command;

use apps::{
    Apps, Control, FederationParts, Portcullis, Username, artifacts_dir,
    assert_node_example_installed, build_axum_example, run_script, start_until,
};

/// Portcullis's client id at the upstream, where it authenticates with `private_key_jwt`: the
/// provider verifies its assertions with Portcullis's published keys (`{issuer}/oidc/jwks`).
const UPSTREAM_CLIENT_ID: &str = "portcullis";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The federation of `main.rs` with one upstream, `corp` at `issuer`, which may create
/// accounts.
fn corp(parts: FederationParts<'_>, issuer: &str) -> Arc<Federation> {
    let settings = UpstreamSettings {
        id: "corp".into(),
        label: "Corp".into(),
        issuer: issuer.into(),
        client_id: UPSTREAM_CLIENT_ID.into(),
        client_auth: UpstreamClientAuth::PrivateKeyJwt,
        scopes: vec!["profile".into(), "email".into()],
        claims: ClaimMapping::default(),
        assurance: 1,
        create_accounts: true,
        domains: Vec::new(),
        bound_session: false,
        form_post: false,
    };
    // The provider listens on loopback over plain HTTP, which only this allow-list reaches.
    let http: Arc<dyn UpstreamHttp> = Arc::new(Outbound::with_roots(
        OutboundPolicy::parse(["127.0.0.0/8"]).unwrap(),
        Duration::from_secs(5),
        rustls::RootCertStore::empty(),
    ));
    let clock: Arc<dyn Clock> = parts.clock;
    let upstream = Upstream::new(
        settings,
        &format!("{}/login/upstream/corp/callback", parts.issuer),
        http,
        clock,
    )
    .expect("the upstream corp")
    .with_client_assertions(Arc::new(ProviderAssertions(parts.provider.clone())));
    Arc::new(Federation::new(
        vec![Arc::new(upstream)],
        parts.stores.identities.clone(),
        parts.stores.replays.clone(),
        parts.keyring.clone(),
        Arc::new(OsRandom),
    ))
}

/// `GET /federated?username=`: whether the person has an account at Portcullis (and a
/// password), the upstream people linked to it, and its live SSO sessions with how each
/// authenticated and the upstream session that vouches for it.
fn federation_routes(control: Control, federation: Arc<Federation>) -> Router {
    Router::new()
        .route(
            "/federated",
            get(
                |State((c, federation)): State<(Control, Arc<Federation>)>,
                 Query(u): Query<Username>| async move {
                    let user = match c.accounts.by_name(&u.username).await {
                        Ok(user) => user,
                        Err(AccountError::NotFound) => return Json(json!({ "account": false })),
                        Err(err) => panic!("reading the account: {err}"),
                    };
                    let identities = federation
                        .identities()
                        .identities_of(&user.id)
                        .await
                        .expect("identities");
                    let live = c
                        .engine
                        .list_subject(&user.id, true, &Principal::operator())
                        .await
                        .expect("listing");
                    let sso: Vec<Value> = live
                        .iter()
                        .filter(|s| {
                            s.application.as_str() == PORTCULLIS_APP && s.policy == SSO_POLICY
                        })
                        .map(|s| {
                            let upstream = UpstreamLink::of(s).map(|l| {
                                json!({
                                    "provider": l.provider,
                                    "issuer": l.issuer,
                                    "subject": l.subject,
                                    "sid": l.sid,
                                    "auth_time": l.auth_time.map(|t| t.as_millis()),
                                })
                            });
                            json!({
                                "id": s.id.as_str(),
                                "auth": { "methods": s.auth.methods, "level": s.auth.level },
                                "upstream": upstream,
                            })
                        })
                        .collect();
                    Json(json!({
                        "account": true,
                        "id": user.id,
                        "has_password": user.has_password(),
                        "identities": identities.iter().map(|i| json!({
                            "provider": i.provider,
                            "issuer": i.issuer,
                            "subject": i.subject,
                        })).collect::<Vec<_>>(),
                        "sso": sso,
                    }))
                },
            ),
        )
        .with_state((control, federation))
}

/// The four sign-in flows and the two logouts of the federation's acceptance, each step
/// checking which sessions exist at the external provider, at Portcullis and at each
/// application.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_sign_in_flows_and_logouts_across_upstream_portcullis_and_two_applications() {
    assert_node_example_installed();
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/oidc-provider").is_dir(),
        "run `npm ci` in crates/portcullis/tests/browser first (.ci/run does)"
    );
    // Before the clock starts: a fresh build may take minutes.
    let axum_example = build_axum_example().await;

    let upstream_issuer = format!("http://127.0.0.1:{}", free_port());
    let portcullis = Portcullis::start(|parts| Some(corp(parts, &upstream_issuer))).await;
    let federation = portcullis.federation.clone().expect("a federation");
    let control_url = portcullis
        .serve_control(federation_routes(portcullis.control.clone(), federation))
        .await;

    // The external provider, with Portcullis registered there.
    let port = upstream_issuer.rsplit(':').next().unwrap().to_owned();
    let base = &portcullis.issuer;
    let mut command = Command::new("node");
    command
        .arg("upstream_idp.mjs")
        .current_dir(&browser_dir)
        .env("PORT", port)
        .env("CLIENT_ID", UPSTREAM_CLIENT_ID)
        .env("CLIENT_JWKS_URI", format!("{base}/oidc/jwks"))
        .env(
            "REDIRECT_URI",
            format!("{base}/login/upstream/corp/callback"),
        )
        .env(
            "POST_LOGOUT_REDIRECT_URI",
            format!("{base}/login/upstream/corp/signed-out"),
        )
        .env(
            "BACKCHANNEL_LOGOUT_URI",
            format!("{base}/federation/corp/backchannel-logout"),
        )
        .env("NODE_EXTRA_CA_CERTS", &portcullis.cert);
    let upstream = start_until("upstream_idp.mjs (node-oidc-provider)", command, "ready ").await;
    assert_eq!(upstream.url, upstream_issuer);

    let apps = Apps::start(&portcullis, &axum_example).await;

    let mut env = vec![
        ("PORTCULLIS_URL", portcullis.issuer.clone()),
        ("CONTROL_URL", control_url),
        ("UPSTREAM_URL", upstream.url.clone()),
        (
            "ARTIFACTS",
            artifacts_dir("federation-flows").display().to_string(),
        ),
    ];
    env.extend(apps.script_env());
    run_script(
        "federation_flows.mjs",
        &env,
        &[&apps.a, &apps.b, &upstream],
        "all federation flows passed",
    )
    .await;
}
