//! The HTTP client upstream requests go through, as a small object-safe trait so the server
//! can give its policy-keeping client and this crate never opens a socket itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// The future an [`UpstreamHttp`] answers.
pub type HttpFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, String>> + Send + 'a>>;

/// Sends one request and reads the whole answer; redirects are answers, never followed. The
/// error says why there was no answer (refused by policy, unreachable, too slow).
pub trait UpstreamHttp: Send + Sync + 'static {
    /// Sends `request`.
    fn send(&self, request: HttpRequest) -> HttpFuture<'_>;
}

/// Signs the client assertions of `private_key_jwt` (RFC 7523) with a key the upstream can
/// fetch; the server gives the OpenID Connect provider's own keys.
pub trait ClientAssertionSigner: Send + Sync + 'static {
    /// `claims` as a signed JWT, or why it cannot be signed.
    fn sign(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<String, String>;
}

/// Why an upstream request got no answer, as `openidconnect` wants an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unanswered(pub(crate) String);

/// [`UpstreamHttp`] as `openidconnect` takes a client.
pub(crate) struct Adapter(pub(crate) Arc<dyn UpstreamHttp>);

impl<'c> AsyncHttpClient<'c> for Adapter {
    type Error = Unanswered;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Unanswered>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let answer = self.0.send(request).await.map_err(Unanswered)?;
            // A server error is an outage, whatever its body says: not an answer to check.
            if answer.status().is_server_error() {
                return Err(Unanswered(format!("it answered {}", answer.status())));
            }
            Ok(answer)
        })
    }
}
