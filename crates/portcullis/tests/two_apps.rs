//! The two example applications (`examples/rp-axum`: axum and the `openidconnect` crate;
//! `examples/rp-node`: Node's http module and `openid-client`) signing one person in and out
//! through Portcullis, in Debian's `chromium` driven by `tests/browser/two_apps.mjs`
//! (`playwright-core`): a password at the first application, single sign-on at the second,
//! a session of each application under one SSO session, RP-initiated logout at the first and
//! `prompt=none` at the second; then again with the roles swapped.
//!
//! Portcullis runs in-process over HTTPS (a self-signed certificate made here, trusted by the
//! axum example through `SSL_CERT_FILE` and by the Node one through `NODE_EXTRA_CA_CERTS`) on
//! the embedded SQLite store with the provider on. Its clock is a `ManualClock` started at the
//! real time and never moved: the applications check `iat` and `exp` against their own clocks.
//! The examples run as their own processes, as they would be deployed: the axum one built
//! with `cargo build -p portcullis-example-rp-axum` (its path from cargo's JSON messages), the
//! Node one with `node examples/rp-node/app.mjs` (after `npm ci` there, as `.ci/run` does).
//! Each listens on a loopback port of its own and is registered as a confidential client
//! with the redirect URI it printed. A control server lets the script add the person and read
//! their sessions at Portcullis. Screenshots land in `target/browser-artifacts/two-apps/`.
//!
//! Both are registered for back-channel logout at their `/backchannel-logout`: every ending
//! of their sessions at Portcullis — a sign-out at the other application, the SSO session's
//! idle timeout, a password change that signs out everywhere else — is delivered to both by
//! Portcullis's own deliverer and sender (`HttpLogoutSender`, loopback allowed), run when the
//! script asks (`POST /deliver`), and each application ends its own session. The idle
//! timeout is 30 s, so moving the clock past it keeps Portcullis's times within the minute of
//! leeway the applications grant against their own clocks.

#[path = "common/apps.rs"]
mod apps;

use axum::Router;

use apps::{
    Apps, Portcullis, artifacts_dir, assert_node_example_installed, build_axum_example, run_script,
};

/// Single sign-on across two applications written with two different libraries, then
/// RP-initiated logout at one of them (OIDC-RPL-3: our ID token as `id_token_hint` signs the
/// browser's SSO session out without asking; OIDC-RPL-8: `state` comes back unchanged, which
/// the application checks): its own session and the SSO session end, every application session
/// under it at Portcullis too, and `prompt=none` at the other application is `login_required`.
/// Each application takes each part once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_rpl_3_8_two_applications_one_sign_in_one_sign_out() {
    assert_node_example_installed();
    // Before the clock starts: a fresh build may take minutes, and the ID tokens are issued
    // at the manual clock's time.
    let axum_example = build_axum_example().await;
    let portcullis = Portcullis::start(|_| None).await;
    let control_url = portcullis.serve_control(Router::new()).await;
    let apps = Apps::start(&portcullis, &axum_example).await;

    let mut env = vec![
        ("PORTCULLIS_URL", portcullis.issuer.clone()),
        ("CONTROL_URL", control_url),
        ("ARTIFACTS", artifacts_dir("two-apps").display().to_string()),
    ];
    env.extend(apps.script_env());
    run_script(
        "two_apps.mjs",
        &env,
        &[&apps.a, &apps.b],
        "all two-application scenarios passed",
    )
    .await;
}
