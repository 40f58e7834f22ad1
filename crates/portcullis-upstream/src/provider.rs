//! One upstream provider at work: discovery, the authorization request, the callback's checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthenticationContextClass,
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken,
    IdTokenFields, IdTokenVerifier, IssuerUrl, LoginHint, LogoutProviderMetadata, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use portcullis_core::{Clock, RandomSource, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;

use crate::http::{Adapter, ClientAssertionSigner, UpstreamHttp};
use crate::settings::{UpstreamClientAuth, UpstreamSettings};

/// How long fetched keys are trusted before they are fetched again (so a key the upstream
/// removed stops verifying within this).
const KEYS_KEPT: Duration = Duration::from_secs(300);
/// The least time between two fetches of the keys for an unknown `kid` (tokens naming made-up
/// keys must not make us hammer the upstream).
const KEY_REFETCH_GAP: Duration = Duration::from_secs(1);
/// How long a client assertion we sign is valid (it is used at once).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);
/// `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How far in the future an `iat` may be (the upstream's clock may run a little ahead).
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long an authorization request may take at the upstream before its answer is refused.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(600);

/// The `sid` claim, which the core claims leave out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

impl AdditionalClaims for SessionClaim {}

/// RFC 9207: whether authorization responses carry `iss`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IssParameter {
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

impl AdditionalProviderMetadata for IssParameter {}

type Metadata = ProviderMetadata<
    LogoutProviderMetadata<IssParameter>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type UpstreamIdToken = IdToken<
    SessionClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type Tokens = StandardTokenResponse<
    IdTokenFields<
        SessionClaim,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type RpClient = Client<
    SessionClaim,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What going through an upstream provider can fail with.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream could not be reached or answered nonsense (discovery, keys, token
    /// endpoint): nobody is signed in, and local sign-in is unaffected.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The upstream refused (an error at the callback, or at the token endpoint).
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// The answer does not belong to a request of ours or does not verify: a wrong or replayed
    /// `state`, another issuer, a token that fails its checks.
    #[error("the answer from the identity provider is not valid: {0}")]
    Invalid(String),
}

/// What an application's authorization request asks of the sign-in, passed upstream when our
/// own session cannot satisfy it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHints {
    /// `login_hint`.
    pub login_hint: Option<String>,
    /// `prompt=login`: the person gives credentials again upstream.
    pub force_login: bool,
    /// `max_age`.
    pub max_age: Option<Duration>,
    /// `acr_values`.
    pub acr_values: Vec<String>,
}

/// An authorization request sent upstream, as the browser keeps it (the HTTP layer seals it in
/// a cookie) until the answer comes back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingUpstream {
    /// The provider's id.
    pub provider: String,
    /// The `state` sent.
    pub state: String,
    /// The `nonce` sent.
    pub nonce: String,
    /// The PKCE verifier of the challenge sent.
    pub verifier: String,
    /// When it was sent (the injected clock).
    pub started_at: Timestamp,
    /// `prompt=login` was sent: only an authentication made since `started_at` answers it.
    #[serde(default)]
    pub force_login: bool,
    /// The `max_age` sent, in seconds: only an authentication that recent answers it.
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

/// The longest `sub` OpenID Connect Core §2 allows.
const MAX_SUBJECT_LEN: usize = 255;

impl PendingUpstream {
    /// OpenID Connect Core §3.1.3.7 step 13 (and ASVS5-6.8.4): a request that asked the person
    /// to authenticate again (`prompt=login`, `max_age`) is answered only by an ID token whose
    /// `auth_time` says they did: after the request was sent, or no more than `max_age` before
    /// it (the upstream judged the age when the request reached it). An upstream that ignores
    /// the request, or does not say, passes for no re-authentication.
    fn check_recent(&self, auth_time: Option<Timestamp>) -> Result<(), UpstreamError> {
        let since = [
            self.force_login.then_some(self.started_at),
            self.max_age_secs
                .map(|secs| self.started_at.minus(Duration::from_secs(secs))),
        ]
        .into_iter()
        .flatten()
        .max();
        let Some(since) = since else {
            return Ok(());
        };
        match auth_time {
            None => Err(UpstreamError::Refused(
                "it did not say when the person authenticated (auth_time), as a new authentication needs"
                    .into(),
            )),
            Some(at) if at.plus(CLOCK_SKEW) < since => Err(UpstreamError::Refused(
                "it did not authenticate the person again, as asked".into(),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Who the upstream says signed in, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSignIn {
    /// The issuer.
    pub issuer: String,
    /// The person's `sub` there.
    pub subject: String,
    /// The upstream session (`sid`), when its ID token names it.
    pub sid: Option<String>,
    /// When the person authenticated there (`auth_time`), when it says.
    pub auth_time: Option<Timestamp>,
    /// `acr`, when it says.
    pub acr: Option<String>,
    /// `amr`, when it says.
    pub amr: Vec<String>,
    /// When the ID token expires.
    pub expires_at: Timestamp,
    /// The mapped username claim, when there is one.
    pub username: Option<String>,
    /// The mapped e-mail claim.
    pub email: Option<String>,
    /// The mapped name claim.
    pub name: Option<String>,
    /// The ID token as it came (the `id_token_hint` of a logout there).
    pub id_token: String,
}

/// What discovery and the keys say, as of their last fetch.
struct Discovered {
    client: RpClient,
    jwks_uri: String,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    end_session: Option<String>,
    iss_parameter: bool,
    keys: CoreJsonWebKeySet,
    jose_keys: jsonwebtoken::jwk::JwkSet,
    keys_fetched_at: Timestamp,
}

/// One upstream provider; see the crate documentation.
pub struct Upstream {
    settings: UpstreamSettings,
    redirect_uri: RedirectUrl,
    http: Arc<dyn UpstreamHttp>,
    clock: Arc<dyn Clock>,
    assertions: Option<Arc<dyn ClientAssertionSigner>>,
    discovered: tokio::sync::Mutex<Option<Arc<Discovered>>>,
    last_key_refetch: parking_lot::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("id", &self.settings.id)
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// A random URL-safe value of 32 bytes.
fn random_value(random: &dyn RandomSource) -> String {
    let mut bytes = [0u8; 32];
    random.fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unavailable(format!("{what}: {err}"))
}

impl Upstream {
    /// The provider `settings`, answering at `redirect_uri` (its callback here).
    pub fn new(
        settings: UpstreamSettings,
        redirect_uri: &str,
        http: Arc<dyn UpstreamHttp>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, UpstreamError> {
        let redirect_uri = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| UpstreamError::Invalid(format!("the callback URI: {e}")))?;
        IssuerUrl::new(settings.issuer.clone())
            .map_err(|e| UpstreamError::Invalid(format!("the issuer: {e}")))?;
        Ok(Self {
            settings,
            redirect_uri,
            http,
            clock,
            assertions: None,
            discovered: tokio::sync::Mutex::new(None),
            last_key_refetch: parking_lot::Mutex::new(None),
        })
    }

    /// With `signer` signing the client assertions of `private_key_jwt`.
    pub fn with_client_assertions(mut self, signer: Arc<dyn ClientAssertionSigner>) -> Self {
        self.assertions = Some(signer);
        self
    }

    /// Its settings.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// Where the upstream returns the browser after a logout there: beside the callback,
    /// `…/signed-out` (to register at the upstream as a post-logout redirect URI).
    pub fn signed_out_uri(&self) -> String {
        let callback = self.redirect_uri.as_str();
        match callback.strip_suffix("/callback") {
            Some(base) => format!("{base}/signed-out"),
            None => format!("{callback}/signed-out"),
        }
    }

    /// What discovery said, read now if it never was (or failed before).
    async fn discovered(&self) -> Result<Arc<Discovered>, UpstreamError> {
        let mut slot = self.discovered.lock().await;
        if let Some(found) = slot.as_ref() {
            if self.clock.now() < found.keys_fetched_at.plus(KEYS_KEPT) {
                return Ok(found.clone());
            }
            let refreshed = Arc::new(self.with_fresh_keys(found).await?);
            *slot = Some(refreshed.clone());
            return Ok(refreshed);
        }
        let fresh = Arc::new(self.discover().await?);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn discover(&self) -> Result<Discovered, UpstreamError> {
        let http = Adapter(self.http.clone());
        let issuer = IssuerUrl::new(self.settings.issuer.clone())
            .map_err(|e| UpstreamError::Invalid(format!("the issuer: {e}")))?;
        // Also checks that the document names exactly this issuer.
        let metadata = Metadata::discover_async(issuer, &http)
            .await
            .map_err(|e| unavailable("discovery", error_chain(&e)))?;
        let jwks_uri = metadata.jwks_uri().url().to_string();
        let algorithms = metadata.id_token_signing_alg_values_supported().clone();
        let extra = metadata.additional_metadata();
        let end_session = extra
            .end_session_endpoint
            .as_ref()
            .map(|url| url.url().to_string());
        let iss_parameter = extra
            .additional_metadata
            .authorization_response_iss_parameter_supported;
        let client = RpClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            // Without a secret the client id goes in the body, beside the assertion.
            match &self.settings.client_auth {
                UpstreamClientAuth::Secret(secret) => Some(ClientSecret::new(secret.clone())),
                UpstreamClientAuth::PrivateKeyJwt => None,
            },
        )
        .set_redirect_uri(self.redirect_uri.clone());
        let (keys, jose_keys) = self.fetch_keys(&jwks_uri).await?;
        Ok(Discovered {
            client,
            jwks_uri,
            algorithms,
            end_session,
            iss_parameter,
            keys,
            jose_keys,
            keys_fetched_at: self.clock.now(),
        })
    }

    async fn fetch_keys(
        &self,
        jwks_uri: &str,
    ) -> Result<(CoreJsonWebKeySet, jsonwebtoken::jwk::JwkSet), UpstreamError> {
        let request = openidconnect::http::Request::get(jwks_uri)
            .header(openidconnect::http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| unavailable("the key set's URI", e))?;
        let answer = self
            .http
            .send(request)
            .await
            .map_err(|e| unavailable("the key set", e))?;
        if !answer.status().is_success() {
            return Err(unavailable("the key set", answer.status()));
        }
        // Read twice: one for ID tokens (openidconnect), one for logout tokens (JOSE).
        let keys: CoreJsonWebKeySet =
            serde_json::from_slice(answer.body()).map_err(|e| unavailable("the key set", e))?;
        let jose_keys: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(answer.body()).map_err(|e| unavailable("the key set", e))?;
        Ok((keys, jose_keys))
    }

    async fn with_fresh_keys(&self, found: &Discovered) -> Result<Discovered, UpstreamError> {
        let (keys, jose_keys) = self.fetch_keys(&found.jwks_uri).await?;
        Ok(Discovered {
            client: found.client.clone(),
            jwks_uri: found.jwks_uri.clone(),
            algorithms: found.algorithms.clone(),
            end_session: found.end_session.clone(),
            iss_parameter: found.iss_parameter,
            keys,
            jose_keys,
            keys_fetched_at: self.clock.now(),
        })
    }

    /// The keys fetched again because a token names one we do not have: at most once per
    /// [`KEY_REFETCH_GAP`]; `None` when it is too soon.
    async fn refetched_keys(&self) -> Result<Option<Arc<Discovered>>, UpstreamError> {
        {
            let mut last = self.last_key_refetch.lock();
            if last.is_some_and(|at| at.elapsed() < KEY_REFETCH_GAP) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let mut slot = self.discovered.lock().await;
        let Some(found) = slot.as_ref() else {
            return Ok(None);
        };
        let refreshed = Arc::new(self.with_fresh_keys(found).await?);
        *slot = Some(refreshed.clone());
        Ok(Some(refreshed))
    }

    /// A new authorization request: the URL to send the browser to, and what its answer is
    /// checked with.
    pub async fn begin(
        &self,
        random: &dyn RandomSource,
        hints: &UpstreamHints,
    ) -> Result<(String, PendingUpstream), UpstreamError> {
        let discovered = self.discovered().await?;
        let pending = PendingUpstream {
            provider: self.settings.id.clone(),
            state: random_value(random),
            nonce: random_value(random),
            verifier: random_value(random),
            started_at: self.clock.now(),
            force_login: hints.force_login,
            max_age_secs: hints.max_age.map(|age| age.as_secs()),
        };
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pending.verifier.clone(),
        ));
        let (state, nonce) = (pending.state.clone(), pending.nonce.clone());
        let mut request = discovered
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(
                self.settings
                    .scopes
                    .iter()
                    .filter(|s| s.as_str() != "openid")
                    .map(|s| Scope::new(s.clone())),
            )
            .set_pkce_challenge(challenge);
        if let Some(hint) = &hints.login_hint {
            request = request.set_login_hint(LoginHint::new(hint.clone()));
        }
        if hints.force_login {
            request = request.add_prompt(CoreAuthPrompt::Login);
        }
        if let Some(max_age) = hints.max_age {
            request = request.set_max_age(max_age);
        }
        for acr in &hints.acr_values {
            request = request.add_auth_context_value(AuthenticationContextClass::new(acr.clone()));
        }
        if self.settings.form_post {
            request = request.add_extra_param("response_mode", "form_post");
        }
        let (url, _, _) = request.url();
        Ok((url.to_string(), pending))
    }

    /// A `private_key_jwt` assertion for the token endpoint `audience` (RFC 7523 §3): `iss` and
    /// `sub` our client id, a fresh `jti`, valid for a minute.
    fn client_assertion(
        &self,
        audience: &str,
        random: &dyn RandomSource,
    ) -> Result<String, UpstreamError> {
        let signer = self.assertions.as_ref().ok_or_else(|| {
            UpstreamError::Unavailable(
                "private_key_jwt needs the OpenID Connect provider's keys (set issuer)".into(),
            )
        })?;
        let now = self.clock.now();
        let mut claims = Map::new();
        let client_id = Value::from(self.settings.client_id.clone());
        claims.insert("iss".into(), client_id.clone());
        claims.insert("sub".into(), client_id);
        claims.insert("aud".into(), audience.into());
        claims.insert("jti".into(), random_value(random).into());
        claims.insert("iat".into(), (now.as_millis() / 1000).into());
        claims.insert(
            "exp".into(),
            (now.plus(ASSERTION_LIFETIME).as_millis() / 1000).into(),
        );
        signer
            .sign(&claims)
            .map_err(|why| unavailable("the client assertion", why))
    }

    /// Checks the answer to `pending` (`state` and RFC 9207 `iss` as they came back), redeems
    /// `code` (the client assertion's `jti` drawn from `random`) and verifies the ID token.
    pub async fn finish(
        &self,
        pending: &PendingUpstream,
        state: &str,
        iss: Option<&str>,
        code: &str,
        random: &dyn RandomSource,
    ) -> Result<UpstreamSignIn, UpstreamError> {
        if pending.provider != self.settings.id
            || !bool::from(pending.state.as_bytes().ct_eq(state.as_bytes()))
        {
            return Err(UpstreamError::Invalid(
                "the state does not match this browser's request".into(),
            ));
        }
        if self.clock.now() > pending.started_at.plus(PENDING_LIFETIME) {
            return Err(UpstreamError::Invalid(
                "the sign-in took too long; start again".into(),
            ));
        }
        let discovered = self.discovered().await?;
        match iss {
            Some(iss) if iss != self.settings.issuer => {
                return Err(UpstreamError::Invalid(
                    "the answer names another issuer (RFC 9207)".into(),
                ));
            }
            None if discovered.iss_parameter => {
                return Err(UpstreamError::Invalid(
                    "the answer lacks the issuer its provider always sends (RFC 9207)".into(),
                ));
            }
            _ => {}
        }
        let http = Adapter(self.http.clone());
        let mut exchange = discovered
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| UpstreamError::Invalid(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()));
        if self.settings.client_auth == UpstreamClientAuth::PrivateKeyJwt {
            let audience = discovered
                .client
                .token_uri()
                .map(|uri| uri.url().to_string())
                .ok_or_else(|| unavailable("discovery", "no token endpoint"))?;
            exchange = exchange
                .add_extra_param("client_assertion_type", JWT_BEARER_ASSERTION)
                .add_extra_param(
                    "client_assertion",
                    self.client_assertion(&audience, random)?,
                );
        }
        let tokens = exchange.request_async(&http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(answer) => {
                UpstreamError::Refused(format!("the code exchange: {}", answer.error()))
            }
            RequestTokenError::Request(why) => unavailable("the code exchange", why),
            // An answer that does not parse as a token response (an ID token without
            // `sub`, say) is the upstream's error, not an outage.
            RequestTokenError::Parse(why, _) => {
                UpstreamError::Invalid(format!("the token response: {}", error_chain(&why)))
            }
            other => unavailable("the code exchange", error_chain(&other)),
        })?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| UpstreamError::Invalid("the token response has no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let (discovered, claims) = match self.verify_id_token(&discovered, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => match self.refetched_keys().await? {
                Some(fresh) => {
                    let claims = self.verify_id_token(&fresh, id_token, &nonce);
                    (fresh, claims)
                }
                None => (
                    discovered,
                    Err(ClaimsVerificationError::Other("unknown key".into())),
                ),
            },
            other => (discovered, other),
        };
        let claims = claims.map_err(|e| UpstreamError::Invalid(format!("the ID token: {e}")))?;
        let raw = id_token.to_string();
        let mut mapped = payload(&raw).unwrap_or_default();
        self.check_claims_beyond_the_verifier(&claims, &mapped)?;
        pending.check_recent(
            claims
                .auth_time()
                .map(|t| Timestamp::from_millis(t.timestamp_millis())),
        )?;
        // The access token is the one the ID token was issued with, when it says so.
        if let Some(expected) = claims.access_token_hash() {
            let verifier = self.id_token_verifier(&discovered);
            let actual = id_token
                .signing_alg()
                .ok()
                .zip(id_token.signing_key(&verifier).ok())
                .and_then(|(alg, key)| {
                    AccessTokenHash::from_token(tokens.access_token(), alg, key).ok()
                });
            if actual.as_ref() != Some(expected) {
                return Err(UpstreamError::Invalid(
                    "the ID token's at_hash does not match the access token".into(),
                ));
            }
        }
        let settings = &self.settings;
        let wanted = [
            &settings.claims.username,
            &settings.claims.email,
            &settings.claims.name,
        ];
        if wanted
            .iter()
            .any(|claim| !mapped.contains_key(claim.as_str()))
            && let Some(info) = self
                .user_info(
                    &discovered,
                    tokens.access_token().secret(),
                    claims.subject().as_str(),
                )
                .await?
        {
            for (name, value) in info {
                mapped.entry(name).or_insert(value);
            }
        }
        let text = |claim: &str| {
            mapped
                .get(claim)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(UpstreamSignIn {
            issuer: settings.issuer.clone(),
            subject: claims.subject().as_str().to_owned(),
            sid: claims.additional_claims().sid.clone(),
            auth_time: claims
                .auth_time()
                .map(|t| Timestamp::from_millis(t.timestamp_millis())),
            acr: claims.auth_context_ref().map(|acr| acr.as_str().to_owned()),
            amr: claims
                .auth_method_refs()
                .map(|amr| amr.iter().map(|m| m.as_str().to_owned()).collect())
                .unwrap_or_default(),
            expires_at: Timestamp::from_millis(claims.expiration().timestamp_millis()),
            username: text(&settings.claims.username),
            email: text(&settings.claims.email),
            name: text(&settings.claims.name),
            id_token: raw,
        })
    }

    /// What `openidconnect` leaves to its caller (OpenID Connect Core §2, §3.1.3.7 step 5, and
    /// ASVS5-9.2.1): an `azp` other than our client id, an `nbf` still ahead, and a `sub` longer
    /// than 255 characters are refused.
    fn check_claims_beyond_the_verifier(
        &self,
        claims: &openidconnect::IdTokenClaims<SessionClaim, CoreGenderClaim>,
        payload: &Map<String, Value>,
    ) -> Result<(), UpstreamError> {
        if claims
            .authorized_party()
            .is_some_and(|azp| azp.as_str() != self.settings.client_id)
        {
            return Err(UpstreamError::Invalid(
                "the ID token was issued to another client (azp)".into(),
            ));
        }
        if payload
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| {
                Timestamp::from_millis(nbf.saturating_mul(1000)) > self.clock.now().plus(CLOCK_SKEW)
            })
        {
            return Err(UpstreamError::Invalid(
                "the ID token is not valid yet (nbf)".into(),
            ));
        }
        if claims.subject().as_str().len() > MAX_SUBJECT_LEN {
            return Err(UpstreamError::Invalid(
                "the ID token's sub is longer than 255 characters".into(),
            ));
        }
        Ok(())
    }

    fn id_token_verifier(
        &self,
        discovered: &Discovered,
    ) -> IdTokenVerifier<'static, CoreJsonWebKey> {
        let clock = self.clock.clone();
        let now = move || {
            chrono::DateTime::from_timestamp_millis(clock.now().as_millis()).unwrap_or_default()
        };
        let clock = self.clock.clone();
        let issued = move |iat: chrono::DateTime<chrono::Utc>| {
            let latest = clock.now().plus(CLOCK_SKEW);
            if iat.timestamp_millis() > latest.as_millis() {
                Err("issued in the future".to_owned())
            } else {
                Ok(())
            }
        };
        // Symmetric algorithms are never allowed below, so no client secret verifies anything.
        IdTokenVerifier::new_public_client(
            ClientId::new(self.settings.client_id.clone()),
            IssuerUrl::new(self.settings.issuer.clone()).expect("checked when made"),
            discovered.keys.clone(),
        )
        .set_allowed_algs(
            discovered
                .algorithms
                .iter()
                .filter(|alg| !is_symmetric(alg))
                .cloned(),
        )
        .set_time_fn(now)
        .set_issue_time_verifier_fn(issued)
    }

    fn verify_id_token(
        &self,
        discovered: &Discovered,
        id_token: &UpstreamIdToken,
        nonce: &Nonce,
    ) -> Result<openidconnect::IdTokenClaims<SessionClaim, CoreGenderClaim>, ClaimsVerificationError>
    {
        let verifier = self.id_token_verifier(discovered);
        id_token.claims(&verifier, nonce).cloned()
    }

    /// The userinfo endpoint's claims for `subject`, if the upstream has one; its `sub` must be
    /// the ID token's.
    async fn user_info(
        &self,
        discovered: &Discovered,
        access_token: &str,
        subject: &str,
    ) -> Result<Option<Map<String, Value>>, UpstreamError> {
        let Some(endpoint) = discovered.client.user_info_url() else {
            return Ok(None);
        };
        let request = openidconnect::http::Request::get(endpoint.url().as_str())
            .header(openidconnect::http::header::ACCEPT, "application/json")
            .header(
                openidconnect::http::header::AUTHORIZATION,
                format!("Bearer {access_token}"),
            )
            .body(Vec::new())
            .map_err(|e| unavailable("userinfo", e))?;
        let answer = self
            .http
            .send(request)
            .await
            .map_err(|e| unavailable("userinfo", e))?;
        if !answer.status().is_success() {
            return Err(unavailable("userinfo", answer.status()));
        }
        // A signed (JWT) userinfo answer is not asked for; anything but JSON is refused.
        let claims: Map<String, Value> =
            serde_json::from_slice(answer.body()).map_err(|e| unavailable("userinfo", e))?;
        if claims.get("sub").and_then(Value::as_str) != Some(subject) {
            return Err(UpstreamError::Invalid(
                "userinfo answered for another subject".into(),
            ));
        }
        Ok(Some(claims))
    }

    /// Where to send the browser to end the person's session upstream too (RP-initiated logout
    /// there), coming back to `post_logout_redirect_uri` with `state`; `None` when the upstream
    /// has no `end_session_endpoint`.
    pub async fn end_session_url(
        &self,
        id_token_hint: &str,
        post_logout_redirect_uri: &str,
        state: &str,
    ) -> Result<Option<String>, UpstreamError> {
        let discovered = self.discovered().await?;
        let Some(endpoint) = &discovered.end_session else {
            return Ok(None);
        };
        let mut url = openidconnect::url::Url::parse(endpoint)
            .map_err(|e| unavailable("the end-session endpoint", e))?;
        url.query_pairs_mut()
            .append_pair("id_token_hint", id_token_hint)
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("post_logout_redirect_uri", post_logout_redirect_uri)
            .append_pair("state", state);
        Ok(Some(url.to_string()))
    }

    /// The issuer, discovered keys for JOSE and the accepted algorithms, for logout tokens.
    pub(crate) async fn jose_keys(
        &self,
    ) -> Result<(jsonwebtoken::jwk::JwkSet, Vec<String>), UpstreamError> {
        let discovered = self.discovered().await?;
        Ok((
            discovered.jose_keys.clone(),
            jose_names(&discovered.algorithms),
        ))
    }

    /// The keys for JOSE fetched again (an unknown `kid`), when not too soon.
    pub(crate) async fn refetched_jose_keys(
        &self,
    ) -> Result<Option<jsonwebtoken::jwk::JwkSet>, UpstreamError> {
        Ok(self.refetched_keys().await?.map(|d| d.jose_keys.clone()))
    }

    /// The injected clock's time.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

fn is_symmetric(alg: &CoreJwsSigningAlgorithm) -> bool {
    matches!(
        alg,
        CoreJwsSigningAlgorithm::HmacSha256
            | CoreJwsSigningAlgorithm::HmacSha384
            | CoreJwsSigningAlgorithm::HmacSha512
            | CoreJwsSigningAlgorithm::None
    )
}

/// The JOSE names (`ES256`) of the asymmetric algorithms among `algs`.
fn jose_names(algs: &[CoreJwsSigningAlgorithm]) -> Vec<String> {
    algs.iter()
        .filter(|alg| !is_symmetric(alg))
        .filter_map(|alg| match serde_json::to_value(alg) {
            Ok(Value::String(name)) => Some(name),
            _ => None,
        })
        .collect()
}

/// The claims of a compact JWS, unchecked (the caller verified it).
pub(crate) fn payload(token: &str) -> Option<Map<String, Value>> {
    let middle = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).ok()?).ok()
}

/// An error and its sources, one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use portcullis_core::Timestamp;

    use super::{PendingUpstream, UpstreamError};

    fn asked(force_login: bool, max_age_secs: Option<u64>) -> PendingUpstream {
        PendingUpstream {
            provider: "corp".into(),
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            started_at: Timestamp::from_millis(1_800_000_000_000),
            force_login,
            max_age_secs,
        }
    }

    /// ASVS5-6.8.4: what a re-authentication asked is what its answer's `auth_time` must show,
    /// measured from when the request was sent, not from when the answer came back.
    #[test]
    fn asvs5_6_8_4_a_reauthentication_is_answered_only_by_an_auth_time_that_shows_it() {
        let refused = |r: Result<(), UpstreamError>| matches!(r, Err(UpstreamError::Refused(_)));
        let at = |pending: &PendingUpstream, secs: i64| {
            Some(Timestamp::from_millis(
                pending.started_at.as_millis() + secs * 1000,
            ))
        };
        let plain = asked(false, None);
        assert!(plain.check_recent(None).is_ok(), "nothing was asked");
        assert!(plain.check_recent(at(&plain, -86_400)).is_ok());

        let login = asked(true, None);
        assert!(
            login.check_recent(at(&login, 30)).is_ok(),
            "after the request"
        );
        assert!(refused(login.check_recent(at(&login, -3_600))));
        assert!(refused(login.check_recent(None)), "an auth_time is needed");

        let recent = asked(false, Some(300));
        assert!(recent.check_recent(at(&recent, -200)).is_ok());
        assert!(refused(recent.check_recent(at(&recent, -400))));
        assert!(refused(recent.check_recent(None)));
        // Within the minute an upstream clock may lag.
        assert!(recent.check_recent(at(&recent, -330)).is_ok());
    }
}
