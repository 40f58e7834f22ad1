//! The outbound side of back-channel logout against real HTTP servers on loopback: what a post
//! carries (OIDC-BCL-9), and what it refuses to do — reach an address outside the allow-list,
//! follow a redirect, wait past its timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use portcullis_http::oidc::backchannel::{HttpLogoutSender, OutboundPolicy};
use portcullis_oidc::{LogoutPost, LogoutSender, PostOutcome};

/// What the endpoint saw: content type and body of each post.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

async fn serve(seen: Seen) -> String {
    let app = Router::new()
        .route(
            "/bc",
            post(move |headers: HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let kind = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    seen.lock().unwrap().push((kind, body));
                    StatusCode::OK
                }
            }),
        )
        .route("/gone", post(|| async { StatusCode::BAD_REQUEST }))
        .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/bc")]).into_response() }),
        )
        .route(
            "/slow",
            // Never answers: the sender's own timeout ends the wait.
            post(std::future::pending::<StatusCode>),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

fn loopback_sender() -> HttpLogoutSender {
    HttpLogoutSender::with_roots(
        OutboundPolicy::parse(["127.0.0.0/8"]).unwrap(),
        Duration::from_millis(500),
        rustls_roots(),
    )
}

fn rustls_roots() -> rustls::RootCertStore {
    rustls::RootCertStore::empty()
}

#[tokio::test]
async fn oidc_bcl_9_a_logout_token_is_posted_as_a_form_and_every_answer_is_reported() {
    let seen = Seen::default();
    let base = serve(seen.clone()).await;
    let sender = loopback_sender();
    let posts = ["/bc", "/gone", "/busy", "/moved", "/slow"]
        .iter()
        .map(|path| LogoutPost {
            uri: format!("{base}{path}?tenant=a%20b"),
            logout_token: "eyJ.a+b/c=.sig".to_owned(),
        })
        .collect();
    let outcomes = sender.post_all(posts).await;
    assert_eq!(outcomes[0], PostOutcome::Status(200));
    assert_eq!(outcomes[1], PostOutcome::Status(400));
    assert_eq!(outcomes[2], PostOutcome::Status(503));
    assert_eq!(
        outcomes[3],
        PostOutcome::Status(302),
        "a redirect is reported, not followed"
    );
    assert!(
        matches!(&outcomes[4], PostOutcome::Unreachable(why) if why.contains("no answer within")),
        "{:?}",
        outcomes[4]
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the redirect's target was never posted to");
    assert_eq!(seen[0].0, "application/x-www-form-urlencoded");
    assert_eq!(seen[0].1, "logout_token=eyJ.a%2Bb%2Fc%3D.sig");
}

#[tokio::test]
async fn ssrf_addresses_outside_the_allow_list_are_never_connected_to() {
    let seen = Seen::default();
    let base = serve(seen.clone()).await;
    let public_only = HttpLogoutSender::with_roots(
        OutboundPolicy::default(),
        Duration::from_secs(2),
        rustls_roots(),
    );
    for uri in [
        format!("{base}/bc"),
        base.replace("127.0.0.1", "localhost") + "/bc",
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]/bc".to_owned(),
    ] {
        let outcome = public_only.post(&uri, "t").await;
        assert!(
            matches!(outcome, PostOutcome::Forbidden(_)),
            "{uri}: {outcome:?}"
        );
    }
    assert!(
        matches!(
            public_only
                .post("https://user:pw@example.com/bc", "t")
                .await,
            PostOutcome::Forbidden(_)
        ),
        "credentials in the URI"
    );
    assert!(seen.lock().unwrap().is_empty());
    // Allowed explicitly, the same endpoint is reached.
    assert_eq!(
        loopback_sender().post(&format!("{base}/bc"), "t").await,
        PostOutcome::Status(200)
    );
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_and_tls_is_verified() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let sender = loopback_sender();
    assert!(matches!(
        sender.post(&format!("http://{closed}/bc"), "t").await,
        PostOutcome::Unreachable(_)
    ));
    // A plain HTTP server is no TLS server, and no root vouches for it either way.
    let base = serve(Seen::default()).await;
    assert!(matches!(
        sender
            .post(&base.replace("http://", "https://"), "t")
            .await,
        PostOutcome::Unreachable(why) if why.contains("TLS")
    ));
}
