//! The application as an OpenID Connect relying party (`openidconnect` crate): discovery, the
//! authorization request (code flow, PKCE S256, state, nonce), the code exchange with its ID
//! token checks, userinfo, and the provider's logout URL.

use jsonwebtoken::Algorithm;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AuthenticationFlow,
    AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret, ConfigurationError,
    CsrfToken, EmptyAdditionalClaims, EmptyExtraTokenFields, EndSessionUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IdToken, IdTokenClaims, IdTokenFields, IdTokenVerifier, IssuerUrl,
    LogoutProviderMetadata, LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadata, RedirectUrl, RequestTokenError,
    Scope, SignatureVerificationError, SigningError, StandardErrorResponse, StandardTokenResponse,
    TokenResponse, UserInfoClaims, UserInfoError, url::Url,
};
use serde::{Deserialize, Serialize};

use crate::http::{HttpClient, HttpError};
use crate::keys::{KeysError, ProviderKeys};
use crate::logout_token::LogoutTokenVerifier;

/// The `sid` claim (the provider's session), which the core claims leave out: a back-channel
/// logout token names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaim {
    /// The provider's session the ID token was issued in.
    pub sid: Option<String>,
}

impl AdditionalClaims for SessionClaim {}

/// Discovery members beyond the core ones: whether authorization responses carry `iss`
/// (RFC 9207), and `end_session_endpoint` (through [`LogoutProviderMetadata`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssParameter {
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

/// An ID token with its `sid`.
pub type SidIdToken = IdToken<
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

/// The client made from discovery: authorization and token endpoints set, userinfo perhaps.
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

/// What the application is registered as at the provider.
pub struct Registration {
    /// The provider's issuer identifier, exactly as it names itself.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret (`client_secret_basic`).
    pub client_secret: String,
    /// Where authorization responses come back: `{base}/callback`.
    pub redirect_uri: String,
    /// Where the provider returns after signing out: `{base}/signed-out`.
    pub post_logout_redirect_uri: String,
}

/// Why the application could not start with this provider.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Discovery failed.
    #[error("discovery at {issuer}: {why}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// Why.
        why: String,
    },
    /// A URL of the configuration is not one.
    #[error("{what}: {why}")]
    Url {
        /// Which.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// The JWK Set could not be fetched.
    #[error(transparent)]
    Keys(#[from] KeysError),
}

/// Why a sign-in did not complete after the provider sent the person back with a code.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The token request failed or was refused.
    #[error("the code exchange failed: {0}")]
    Token(#[from] RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>),
    /// The token response had no ID token.
    #[error("the token response has no ID token")]
    NoIdToken,
    /// The ID token did not verify (signature, `iss`, `aud`, `exp`, `iat`, nonce).
    #[error("the ID token does not verify: {0}")]
    IdToken(#[from] ClaimsVerificationError),
    /// `at_hash` does not match the access token.
    #[error("the ID token's at_hash does not match the access token")]
    AccessTokenHash,
    /// `at_hash` could not be computed.
    #[error("at_hash: {0}")]
    Signing(#[from] SigningError),
    /// The ID token's algorithm or key, needed for `at_hash`, could not be had.
    #[error("at_hash: {0}")]
    Signature(#[from] SignatureVerificationError),
    /// The provider's keys could not be fetched again.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// The client lacks an endpoint it needs.
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    /// Userinfo failed.
    #[error("userinfo: {0}")]
    UserInfo(#[from] UserInfoError<HttpError>),
}

/// An authorization request on its way: what the callback checks its answer with.
pub struct PendingSignIn {
    /// The state sent, to come back unchanged.
    pub state: CsrfToken,
    /// The nonce sent, to come back in the ID token.
    pub nonce: Nonce,
    /// The PKCE verifier of the challenge sent.
    pub verifier: PkceCodeVerifier,
}

/// Who signed in, as the provider said.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The subject (the provider's stable id of the person).
    pub sub: String,
    /// The provider's session, when the ID token names it.
    pub sid: Option<String>,
    /// A name to show: `preferred_username` or `name` from userinfo, else the subject.
    pub name: String,
    /// The ID token, sent back as `id_token_hint` when signing out.
    pub id_token: SidIdToken,
}

/// The provider as this application uses it.
pub struct Provider {
    registration: Registration,
    issuer: IssuerUrl,
    client: RpClient,
    end_session: Option<EndSessionUrl>,
    iss_parameter: bool,
    id_token_algorithms: Vec<CoreJwsSigningAlgorithm>,
    /// Its signing keys.
    pub keys: ProviderKeys,
    /// The checks of its logout tokens to this client.
    pub logout_tokens: LogoutTokenVerifier,
    /// How requests reach it.
    pub http: HttpClient,
}

impl Provider {
    /// Reads the provider's discovery document and keys.
    pub async fn discover(
        registration: Registration,
        http: HttpClient,
    ) -> Result<Self, SetupError> {
        let url_error = |what| {
            move |e: openidconnect::url::ParseError| SetupError::Url {
                what,
                why: e.to_string(),
            }
        };
        let issuer = IssuerUrl::new(registration.issuer.clone()).map_err(url_error("ISSUER"))?;
        // Also checks that the document names exactly this issuer.
        let metadata = Metadata::discover_async(issuer.clone(), &http)
            .await
            .map_err(|e| SetupError::Discovery {
                issuer: registration.issuer.clone(),
                why: error_chain(&e),
            })?;
        let keys = ProviderKeys::fetch(metadata.jwks_uri().url().as_str(), &http).await?;
        let id_token_algorithms = metadata.id_token_signing_alg_values_supported().clone();
        let logout_tokens = LogoutTokenVerifier::new(
            registration.issuer.clone(),
            registration.client_id.clone(),
            id_token_algorithms
                .iter()
                .filter_map(|alg| jose_name(alg)?.parse::<Algorithm>().ok())
                .collect(),
        );
        let extra = metadata.additional_metadata();
        let end_session = extra.end_session_endpoint.clone();
        let iss_parameter = extra
            .additional_metadata
            .authorization_response_iss_parameter_supported;
        let redirect = RedirectUrl::new(registration.redirect_uri.clone())
            .map_err(url_error("the redirect URI"))?;
        let client = RpClient::from_provider_metadata(
            metadata,
            ClientId::new(registration.client_id.clone()),
            Some(ClientSecret::new(registration.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            registration,
            issuer,
            client,
            end_session,
            iss_parameter,
            id_token_algorithms,
            keys,
            logout_tokens,
            http,
        })
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.registration.issuer
    }

    /// Whether every authorization response must carry `iss` (RFC 9207: the provider says it
    /// sends it, so one without it did not come from this provider).
    pub fn requires_iss(&self) -> bool {
        self.iss_parameter
    }

    /// A new authorization request: the URL to send the browser to and what its answer is
    /// checked with. `prompt` is passed on (`none` asks whether the person is signed in
    /// there without showing them anything).
    pub fn authorization(&self, prompt: Option<CoreAuthPrompt>) -> (Url, PendingSignIn) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("profile".to_owned()))
            .set_pkce_challenge(challenge);
        if let Some(prompt) = prompt {
            request = request.add_prompt(prompt);
        }
        let (url, state, nonce) = request.url();
        (
            url,
            PendingSignIn {
                state,
                nonce,
                verifier,
            },
        )
    }

    /// Exchanges `code` for tokens, verifies the ID token and asks userinfo who it is.
    pub async fn sign_in(
        &self,
        code: String,
        pending: PendingSignIn,
    ) -> Result<SignedIn, SignInError> {
        let tokens = self
            .client
            .exchange_code(AuthorizationCode::new(code))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await?;
        let id_token = tokens.id_token().ok_or(SignInError::NoIdToken)?;
        let claims = self.verified_claims(id_token, &pending.nonce).await?;

        // The access token is the one the ID token was issued with (OpenID Connect Core
        // §3.1.3.8), when the ID token says so.
        if let Some(expected) = claims.access_token_hash() {
            let verifier = self.id_token_verifier(self.keys.current().id_tokens.clone());
            let actual = AccessTokenHash::from_token(
                tokens.access_token(),
                id_token.signing_alg()?,
                id_token.signing_key(&verifier)?,
            )?;
            if &actual != expected {
                return Err(SignInError::AccessTokenHash);
            }
        }

        let info: UserInfoClaims<EmptyAdditionalClaims, CoreGenderClaim> = self
            .client
            .user_info(
                tokens.access_token().clone(),
                Some(claims.subject().clone()),
            )?
            .request_async(&self.http)
            .await?;
        let name = info
            .preferred_username()
            .map(|n| n.as_str().to_owned())
            .or_else(|| {
                info.name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.as_str().to_owned())
            })
            .unwrap_or_else(|| claims.subject().as_str().to_owned());
        Ok(SignedIn {
            sub: claims.subject().as_str().to_owned(),
            sid: claims.additional_claims().sid.clone(),
            name,
            id_token: id_token.clone(),
        })
    }

    /// The ID token's claims, checked (signature, `iss`, `aud`, `azp`, `exp`, `iat`, the
    /// nonce); with the keys fetched again once when it names a key we do not have.
    async fn verified_claims(
        &self,
        id_token: &SidIdToken,
        nonce: &Nonce,
    ) -> Result<IdTokenClaims<SessionClaim, CoreGenderClaim>, SignInError> {
        let verifier = self.id_token_verifier(self.keys.current().id_tokens.clone());
        match id_token.claims(&verifier, nonce) {
            Ok(claims) => Ok(claims.clone()),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let keys = self.keys.refresh(&self.http).await?;
                let verifier = self.id_token_verifier(keys.id_tokens.clone());
                Ok(id_token.claims(&verifier, nonce)?.clone())
            }
            Err(other) => Err(other.into()),
        }
    }

    fn id_token_verifier(
        &self,
        keys: openidconnect::core::CoreJsonWebKeySet,
    ) -> IdTokenVerifier<'static, CoreJsonWebKey> {
        IdTokenVerifier::new_confidential_client(
            ClientId::new(self.registration.client_id.clone()),
            ClientSecret::new(self.registration.client_secret.clone()),
            self.issuer.clone(),
            keys,
        )
        .set_allowed_algs(self.id_token_algorithms.iter().cloned())
    }

    /// Where to send the browser to sign out at the provider too (RP-initiated logout): with
    /// the ID token as `id_token_hint`, so the provider signs the person out without asking,
    /// and `state`, which comes back unchanged; `None` when the provider has no
    /// `end_session_endpoint`.
    pub fn logout_url(&self, id_token: &SidIdToken, state: CsrfToken) -> Option<Url> {
        let endpoint = self.end_session.clone()?;
        let back =
            PostLogoutRedirectUrl::new(self.registration.post_logout_redirect_uri.clone()).ok()?;
        Some(
            LogoutRequest::from(endpoint)
                .set_id_token_hint(id_token)
                .set_client_id(ClientId::new(self.registration.client_id.clone()))
                .set_post_logout_redirect_uri(back)
                .set_state(state)
                .http_get_url(),
        )
    }
}

/// The JOSE name of `alg` (`ES256`), as discovery spells it.
fn jose_name(alg: &CoreJwsSigningAlgorithm) -> Option<String> {
    match serde_json::to_value(alg) {
        Ok(serde_json::Value::String(name)) => Some(name),
        _ => None,
    }
}

/// An error with its sources, on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
