//! Back-channel logout's outbound side: logout tokens posted to clients' endpoints
//! ([`HttpLogoutSender`], the [`LogoutSender`] the server runs with), through [`Outbound`], so
//! a registered URI reaches only the addresses the [`OutboundPolicy`] allows, is never
//! redirected, and is given up after the timeout.

use std::time::Duration;

use hyper::Request;
use portcullis_oidc::{LogoutPost, LogoutSender, PostFuture, PostOutcome};

pub use crate::outbound::OutboundPolicy;
use crate::outbound::{Outbound, OutboundError};

/// Posts logout tokens over HTTP. Clones share one TLS setup.
#[derive(Debug, Clone)]
pub struct HttpLogoutSender {
    outbound: Outbound,
}

impl HttpLogoutSender {
    /// A sender that trusts the system's certificate authorities.
    pub fn new(policy: OutboundPolicy, timeout: Duration) -> Self {
        Self {
            outbound: Outbound::new(policy, timeout),
        }
    }

    /// A sender that trusts exactly `roots` (tests, private authorities).
    pub fn with_roots(
        policy: OutboundPolicy,
        timeout: Duration,
        roots: rustls::RootCertStore,
    ) -> Self {
        Self {
            outbound: Outbound::with_roots(policy, timeout, roots),
        }
    }

    /// Posts `logout_token` to `uri` and answers what that met.
    pub async fn post(&self, uri: &str, logout_token: &str) -> PostOutcome {
        let request = match logout_request(uri, logout_token) {
            Ok(request) => request,
            Err(why) => return PostOutcome::Forbidden(why),
        };
        match self.outbound.send(request).await {
            Ok(answer) => PostOutcome::Status(answer.status().as_u16()),
            Err(OutboundError::Forbidden(why)) => PostOutcome::Forbidden(why),
            Err(OutboundError::Unreachable(why)) => PostOutcome::Unreachable(why),
        }
    }
}

/// OIDC-BCL-9: `POST` of the form `logout_token=…`.
fn logout_request(uri: &str, logout_token: &str) -> Result<Request<Vec<u8>>, String> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", logout_token)
        .finish();
    Request::post(uri)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(hyper::header::USER_AGENT, "Portcullis back-channel logout")
        .body(body.into_bytes())
        .map_err(|_| format!("{uri:?} is not a URI outbound requests can go to"))
}

impl LogoutSender for HttpLogoutSender {
    fn post_all(&self, posts: Vec<LogoutPost>) -> PostFuture<'_> {
        Box::pin(async move {
            let tasks: Vec<_> = posts
                .into_iter()
                .map(|post| {
                    let sender = self.clone();
                    tokio::spawn(async move { sender.post(&post.uri, &post.logout_token).await })
                })
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await.unwrap_or_else(|err| {
                    PostOutcome::Unreachable(format!("the attempt failed: {err}"))
                }));
            }
            outcomes
        })
    }
}
