//! OpenID Connect Back-Channel Logout 1.0, the provider's side: the deliveries the stores write
//! with every ending ([`portcullis_core::oidc::LogoutDelivery`]) are claimed, turned into signed
//! logout tokens and posted to each client's `backchannel_logout_uri`, and each attempt's
//! outcome is recorded, audited and, when it may pass, retried with back-off. Posting is the
//! caller's ([`LogoutSender`]): this crate does no network I/O.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use portcullis_core::oidc::{Attempt, AttemptOutcome, Client, LogoutDelivery, SigningAlg};
use portcullis_core::{Actor, AuditEvent, EventKind, PublicId, Store, Timestamp};
use serde_json::json;

use crate::claims::{LOGOUT_TOKEN_TYPE, LogoutTokenClaims};
use crate::provider::{Provider, ProviderError, seconds};

/// How long a logout token is valid: it is posted at once, and a retry signs a new one
/// (OIDC-BCL-8: at most two minutes).
pub const LOGOUT_TOKEN_LIFETIME: Duration = Duration::from_secs(120);

/// What posting a logout token met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// The client answered with this HTTP status (redirects are not followed).
    Status(u16),
    /// No answer: the connection failed or timed out.
    Unreachable(String),
    /// The destination may not be called (outside the outbound allow-list, or not a URL this
    /// deployment posts to); nothing was sent.
    Forbidden(String),
}

/// One logout token to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutPost {
    /// The client's back-channel logout URI.
    pub uri: String,
    /// The signed logout token.
    pub logout_token: String,
}

/// The future a [`LogoutSender`] answers.
pub type PostFuture<'a> = Pin<Box<dyn Future<Output = Vec<PostOutcome>> + Send + 'a>>;

/// Posts logout tokens: `POST uri` with the form `logout_token=…` (OIDC-BCL-9).
pub trait LogoutSender: Send + Sync + 'static {
    /// Posts each of `posts`, concurrently (OIDC-BCL-9: "preferably in parallel"), and answers
    /// their outcomes in the same order.
    fn post_all(&self, posts: Vec<LogoutPost>) -> PostFuture<'_>;
}

/// How deliveries are made and retried.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How long a claimed delivery is left to its node before another may take it: longer
    /// than one attempt can last.
    pub lease: Duration,
    /// How many deliveries one pass claims (and posts concurrently).
    pub batch: usize,
    /// The wait after the first failed attempt; each further failure triples it.
    pub first_retry: Duration,
    /// The longest wait between attempts.
    pub longest_retry: Duration,
    /// How long after the ending attempts go on; then the delivery is given up.
    pub give_up_after: Duration,
}

impl Default for DeliverySettings {
    /// A one-minute lease, 32 at a time, retries after 10 s, 30 s, 90 s, … at most an hour
    /// apart, for a day.
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            batch: 32,
            first_retry: Duration::from_secs(10),
            longest_retry: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(86_400),
        }
    }
}

impl DeliverySettings {
    /// The wait after `failures` failed attempts (at least one).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let factor = 3u32.saturating_pow(failures.saturating_sub(1));
        self.first_retry
            .saturating_mul(factor)
            .min(self.longest_retry)
    }

    /// What follows an attempt at `delivery` made at `at` that met `outcome` (OIDC-BCL-10):
    /// 200 and 204 (any 2xx) deliver; a network failure, a 5xx, 408 or 429 is tried again
    /// after the back-off, until [`DeliverySettings::give_up_after`]; any other answer (400,
    /// a redirect, …) and a forbidden destination fail for good.
    pub fn judge(
        &self,
        delivery: &LogoutDelivery,
        at: Timestamp,
        outcome: &PostOutcome,
    ) -> AttemptOutcome {
        let error = match outcome {
            PostOutcome::Status(status) if (200..300).contains(status) => {
                return AttemptOutcome::Delivered;
            }
            PostOutcome::Status(status @ (408 | 429 | 500..=599)) => format!("HTTP {status}"),
            PostOutcome::Status(status) => {
                return AttemptOutcome::Failed {
                    error: format!("HTTP {status}"),
                };
            }
            PostOutcome::Unreachable(error) => error.clone(),
            PostOutcome::Forbidden(error) => {
                return AttemptOutcome::Failed {
                    error: error.clone(),
                };
            }
        };
        let next = at.plus(self.retry_delay(delivery.attempts + 1));
        if next > delivery.ended_at.plus(self.give_up_after) {
            AttemptOutcome::Failed {
                error: format!("given up after {} attempts: {error}", delivery.attempts + 1),
            }
        } else {
            AttemptOutcome::Retry { at: next, error }
        }
    }
}

/// What one pass of [`Provider::deliver_logouts`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Deliveries acknowledged by their client.
    pub delivered: usize,
    /// Attempts that failed and will be tried again.
    pub retried: usize,
    /// Deliveries given up.
    pub failed: usize,
}

impl<S: Store> Provider<S> {
    /// The logout token telling `delivery.client` that the session ended (OIDC-BCL-3 to 8):
    /// `sid` is the SSO session's id, as in the ID tokens; `jti` is the same on every attempt,
    /// so a client can recognise a repeated delivery.
    /// It is signed as `client`'s ID tokens are (OIDC-BCL-6); without `client` (the application
    /// was removed), as its ID tokens were when the session was created, while the provider
    /// still keeps keys for that algorithm.
    pub fn logout_token(
        &self,
        delivery: &LogoutDelivery,
        client: Option<&Client>,
        now: Timestamp,
    ) -> Result<String, ProviderError> {
        let iat = seconds(now);
        let claims = LogoutTokenClaims {
            iss: self.settings.issuer.clone(),
            aud: delivery.client.as_str().to_owned(),
            iat,
            exp: iat + LOGOUT_TOKEN_LIFETIME.as_secs() as i64,
            jti: format!("lgt_{}", delivery.session.as_str()),
            sub: Some(delivery.subject.clone()),
            sid: delivery
                .sso_session
                .as_ref()
                .unwrap_or(&delivery.session)
                .as_str()
                .to_owned(),
            events: LogoutTokenClaims::logout_event(),
        };
        Ok(self.keys().sign(
            self.logout_token_alg(delivery, client),
            LOGOUT_TOKEN_TYPE,
            &claims,
        )?)
    }

    /// The algorithm of `delivery`'s logout token (see [`Self::logout_token`]).
    fn logout_token_alg(&self, delivery: &LogoutDelivery, client: Option<&Client>) -> SigningAlg {
        match (client, delivery.alg) {
            (None, Some(alg)) if self.keys().signing_kid(alg).is_some() => alg,
            _ => self.id_token_alg(client),
        }
    }

    /// Where `delivery` goes, with the client's registration: the back-channel logout URI as
    /// registered now, or, when the application is gone (its removal ended the session), the
    /// one it had when the session was created. `None` when the client withdrew its URI.
    async fn destination(
        &self,
        delivery: &LogoutDelivery,
    ) -> Result<Option<(String, Option<Client>)>, ProviderError> {
        match self
            .engine
            .store()
            .find_application(&delivery.client)
            .await?
        {
            Some(app) => Ok(app.client.and_then(|client| {
                let uri = client.backchannel_logout_uri.clone()?;
                Some((uri, Some(client)))
            })),
            None => Ok(Some((delivery.uri.clone(), None))),
        }
    }

    /// The logout token to post for `delivery`, or what the attempt met without posting.
    async fn prepare(
        &self,
        delivery: &LogoutDelivery,
        now: Timestamp,
    ) -> Result<Result<LogoutPost, AttemptOutcome>, ProviderError> {
        let Some((uri, client)) = self.destination(delivery).await? else {
            return Ok(Err(AttemptOutcome::Failed {
                error: "the client no longer has a back-channel logout URI".into(),
            }));
        };
        Ok(Ok(LogoutPost {
            uri,
            logout_token: self.logout_token(delivery, client.as_ref(), now)?,
        }))
    }

    /// One pass of back-channel logout: claims the deliveries due now (for the settings'
    /// lease), posts a logout token for each, concurrently, and records each outcome in the
    /// store and the audit trail. Every node may run it; a claim keeps a delivery to one node
    /// until its lease runs out.
    pub async fn deliver_logouts(
        &self,
        sender: &dyn LogoutSender,
        settings: &DeliverySettings,
    ) -> Result<DeliveryReport, ProviderError> {
        let now = self.engine.now();
        let claimed = self
            .stores
            .deliveries
            .claim_deliveries(now, now.plus(settings.lease), settings.batch)
            .await?;
        let mut outcomes: Vec<Option<AttemptOutcome>> = Vec::with_capacity(claimed.len());
        let (mut posts, mut posted) = (Vec::new(), Vec::new());
        for (at, delivery) in claimed.iter().enumerate() {
            match self.prepare(delivery, now).await {
                Ok(Ok(post)) => {
                    posts.push(post);
                    posted.push(at);
                    outcomes.push(None);
                }
                Ok(Err(outcome)) => outcomes.push(Some(outcome)),
                // Our own failure (the store, the keys): the lease runs out and it is tried
                // again.
                Err(err) => {
                    tracing::warn!(session = %delivery.session, error = %err, "a back-channel logout could not be prepared");
                    outcomes.push(None);
                }
            }
        }
        let answers = if posts.is_empty() {
            Vec::new()
        } else {
            sender.post_all(posts).await
        };
        for (at, answer) in posted.into_iter().zip(answers) {
            outcomes[at] = Some(settings.judge(&claimed[at], now, &answer));
        }
        let mut report = DeliveryReport::default();
        for (delivery, outcome) in claimed.iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            match &outcome {
                AttemptOutcome::Delivered => report.delivered += 1,
                AttemptOutcome::Retry { .. } => report.retried += 1,
                AttemptOutcome::Failed { .. } => report.failed += 1,
            }
            let attempt = Attempt { at: now, outcome };
            let recorded = self
                .stores
                .deliveries
                .record_attempt(&delivery.session, &attempt)
                .await?;
            if let Some(recorded) = recorded {
                self.engine
                    .record_event(attempt_event(&recorded, &attempt))
                    .await;
            }
        }
        Ok(report)
    }
}

/// The audit event of `attempt` at `delivery` (as it stands after it).
fn attempt_event(delivery: &LogoutDelivery, attempt: &Attempt) -> AuditEvent {
    let (kind, detail) = match &attempt.outcome {
        AttemptOutcome::Delivered => (EventKind::LogoutDelivered, json!({})),
        AttemptOutcome::Retry { at, error } => (
            EventKind::LogoutDeliveryFailed,
            json!({ "error": error, "retry_at": at.as_millis() }),
        ),
        AttemptOutcome::Failed { error } => {
            (EventKind::LogoutDeliveryFailed, json!({ "error": error }))
        }
    };
    let mut event =
        AuditEvent::for_application(kind, &delivery.client, attempt.at, &Actor::system(), detail)
            .with_detail(json!({
                "attempt": delivery.attempts,
                "sid": delivery.sso_session.as_ref().map(PublicId::as_str),
            }));
    event.session_id = Some(delivery.session.clone());
    event.subject = Some(delivery.subject.clone());
    event.reason = Some(delivery.reason);
    event
}
