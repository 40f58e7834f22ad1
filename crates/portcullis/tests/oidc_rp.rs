//! The OpenID Connect provider against a relying party nobody here wrote: the Rust crate
//! `openidconnect` (4.x) talks to a running Portcullis over real HTTP. Portcullis runs
//! in-process on the embedded SQLite store (the provider's codes, refresh tokens, consents
//! and signing keys in its journal too) with a manual clock, served over plain HTTP on
//! 127.0.0.1. The crate refuses to revoke a token over plain HTTP (RFC 7009 §2), so the
//! revocation case posts the revocation itself and lets the crate introspect; the Chromium test
//! (`oidc_clients.rs`) revokes through `openid-client` over HTTPS.
//!
//! The crate's HTTP client is a small adapter over the workspace's `reqwest` with redirects
//! off ([`Http`]). The person's part — the sign-in form, "Stay signed in?", the resume of the
//! sealed authorization request — is plain HTTP from the test with a hand-kept cookie jar
//! ([`Person`], shared with the other tests that sign in without a browser), every redirect
//! followed by hand. Time moves only through the manual clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::person::Person;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreIdToken, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
    CoreTokenResponse, CoreUserInfoClaims,
};
use openidconnect::url::{Url, form_urlencoded};
use openidconnect::{
    AccessToken, AccessTokenHash, AdditionalClaims, AdditionalProviderMetadata, AsyncHttpClient,
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken, IdTokenClaims,
    IntrospectionUrl, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, RefreshToken, RequestTokenError, RevocationUrl, Scope,
    StandardErrorResponse, SubjectIdentifier, TokenIntrospectionResponse, TokenResponse,
};
use portcullis_core::oidc::{Client, ClientAuth, GrantType};
use portcullis_core::{
    Accounts, Actor, ApplicationChange, Clock, Engine, EventKind, EventQuery, Keyring, ManualClock,
    NoAuditSink, OsRandom, PolicySet, SessionStore, SystemClock, UserStore,
};
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, Services, api_router};
use portcullis_oidc::{Provider, ProviderSettings, ProviderStores};
use serde::{Deserialize, Serialize};

const USERNAME: &str = "alice";
const PASSWORD: &str = "correct horse battery staple 7";

// ---------------------------------------------------------------------------------------
// The crate's HTTP client over the workspace's reqwest.

/// `openidconnect`'s [`AsyncHttpClient`] over `reqwest` 0.13, redirects off (a token
/// endpoint that redirects is an error the crate must see, not a hop we take).
struct Http(reqwest::Client);

impl Http {
    fn new() -> Self {
        Self(no_redirects())
    }
}

/// A client that follows no redirect.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// What the adapter fails with: the transport's error, as text.
#[derive(Debug)]
struct HttpError(String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(e.to_string()))?;
            let mut answer = HttpResponse::new(Vec::new());
            *answer.status_mut() = response.status();
            *answer.headers_mut() = response.headers().clone();
            *answer.body_mut() = response
                .bytes()
                .await
                .map_err(|e| HttpError(e.to_string()))?
                .to_vec();
            Ok(answer)
        })
    }
}

// ---------------------------------------------------------------------------------------
// What the relying party reads beyond the core types.

/// The discovery members `openidconnect`'s core metadata leaves out: where to revoke
/// (RFC 7009) and introspect (RFC 7662).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenStateEndpoints {
    revocation_endpoint: String,
    introspection_endpoint: String,
}

impl AdditionalProviderMetadata for TokenStateEndpoints {}

type Metadata = ProviderMetadata<
    TokenStateEndpoints,
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

/// The session id claim of the ID token (OpenID Connect Front-/Back-Channel Logout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionClaim {
    sid: Option<String>,
}

impl AdditionalClaims for SessionClaim {}

type SidIdToken = IdToken<
    SessionClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// The relying party's client: every endpoint from discovery.
type RpClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointSet,
    EndpointSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type TokenResult = Result<
    CoreTokenResponse,
    RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>,
>;

/// The OAuth error code of a refused token request; panics on success or a transport error.
fn oauth_error(result: TokenResult) -> CoreErrorResponseType {
    match result {
        Err(RequestTokenError::ServerResponse(response)) => response.error().clone(),
        Err(other) => panic!("expected an OAuth error response, got {other:?}"),
        Ok(tokens) => panic!(
            "expected an OAuth error response, got tokens (refresh token present: {})",
            tokens.refresh_token().is_some()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Portcullis in-process.

/// A running Portcullis with the provider on, one person and one confidential client.
struct Portcullis {
    base: String,
    clock: Arc<ManualClock>,
    engine: Arc<Engine<portcullis_store_sqlite::SqliteStore>>,
    user_id: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    _data: tempfile::TempDir,
}

impl Portcullis {
    async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        // The manual clock starts at the real time: the crate checks `exp` against its own.
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let store = portcullis_store_sqlite::open(&data.path().join("portcullis.db"))
            .await
            .unwrap();
        let journal = store.journal();
        let users: Arc<dyn UserStore> = Arc::new(journal.users());
        let stores = ProviderStores {
            codes: Arc::new(journal.codes()),
            refresh_tokens: Arc::new(journal.refresh_tokens()),
            consents: Arc::new(journal.consents()),
            signing_keys: Arc::new(journal.signing_keys()),
            deliveries: Arc::new(journal.deliveries()),
            replays: Arc::new(journal.replays()),
            identities: Arc::new(journal.identities()),
        };
        let engine = Arc::new(Engine::new(
            store,
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        ));
        let keyring = Keyring::parse(&[Keyring::generate_entry("test", &OsRandom)]).unwrap();
        let accounts = Arc::new(
            Accounts::new(
                users,
                clock.clone(),
                Arc::new(OsRandom),
                Arc::new(NoAuditSink),
            )
            .with_keyring(keyring.clone())
            .with_trail(engine.clone()),
        );
        let user = accounts
            .add_user(USERNAME, PASSWORD, &Actor::cli())
            .await
            .expect("adding the person");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let provider = Provider::start(
            engine.clone(),
            accounts.clone(),
            stores,
            keyring,
            Arc::new(OsRandom),
            ProviderSettings::new(&base),
        )
        .await
        .expect("starting the provider");

        let app = engine
            .add_application(
                ApplicationChange {
                    name: Some("Notes".into()),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .expect("adding the application");
        let secret = engine.new_client_secret();
        let redirect_uri = format!("{base}/cb");
        engine
            .register_client(
                app.id.as_str(),
                Some(Client {
                    auth: ClientAuth::Secret(secret.hash()),
                    redirect_uris: vec![redirect_uri.clone()],
                    post_logout_redirect_uris: vec![],
                    backchannel_logout_uri: None,
                    frontchannel_logout_uri: None,
                    scopes: ["openid", "profile"].map(String::from).into(),
                    grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
                    require_consent: false,
                    id_token_signed_response_alg: None,
                    upstream: None,
                }),
                &Actor::cli(),
            )
            .await
            .expect("registering the client");

        let state = AppState::new(Services {
            engine: engine.clone(),
            accounts,
            ui: Arc::new(Ui::new(UiSettings::default())),
            metrics: None,
            provider: Some(Arc::new(provider)),
            federation: None,
        });
        tokio::spawn(async move {
            axum::serve(
                listener,
                api_router(state)
                    .into_make_service_with_connect_info::<portcullis_http::peer::Peer>(),
            )
            .await
            .unwrap()
        });
        Self {
            base,
            clock,
            engine,
            user_id: user.id.clone(),
            client_id: app.id.as_str().to_owned(),
            client_secret: secret.expose().to_owned(),
            redirect_uri,
            _data: data,
        }
    }

    /// The server's time, in whole seconds (JWT `NumericDate`).
    fn now_seconds(&self) -> i64 {
        self.clock.now().as_millis().div_euclid(1000)
    }

    /// The relying party: discovery read, the client made from it with its secret.
    async fn relying_party(&self, http: &Http) -> (Metadata, RpClient) {
        let metadata = Metadata::discover_async(IssuerUrl::new(self.base.clone()).unwrap(), http)
            .await
            .expect("discovery read by openidconnect");
        let extra = metadata.additional_metadata().clone();
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            ClientId::new(self.client_id.clone()),
            Some(ClientSecret::new(self.client_secret.clone())),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone()).unwrap())
        .set_revocation_url(RevocationUrl::new(extra.revocation_endpoint).unwrap())
        .set_introspection_url(IntrospectionUrl::new(extra.introspection_endpoint).unwrap());
        (metadata, client)
    }
}

// ---------------------------------------------------------------------------------------
// The person, by hand.

/// The query parameters of the client's callback.
fn callback_params(callback: &Url) -> BTreeMap<String, String> {
    callback
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The relying party's flow.

/// What a completed code flow leaves the relying party with.
struct SignedIn {
    tokens: CoreTokenResponse,
    nonce: Nonce,
    auth_time: i64,
}

/// The authorization request the relying party makes: code flow, PKCE S256, state, nonce.
fn authorization_request(client: &RpClient) -> (Url, CsrfToken, Nonce, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    (url, state, nonce, verifier)
}

/// Signs the person in and checks the callback: the code, the same `state`, and `iss`
/// (RFC 9207). Returns the code.
async fn code_for(
    portcullis: &Portcullis,
    client: &RpClient,
    issuer: &IssuerUrl,
) -> (AuthorizationCode, Nonce, PkceCodeVerifier) {
    let (url, state, nonce, verifier) = authorization_request(client);
    let callback = Person::new(&portcullis.base)
        .sign_in_through(&url, USERNAME, PASSWORD)
        .await;
    assert!(
        callback
            .as_str()
            .starts_with(&format!("{}?", portcullis.redirect_uri)),
        "back to the registered redirect URI: {callback}"
    );
    let params = callback_params(&callback);
    assert_eq!(
        params.get("state").map(String::as_str),
        Some(state.secret().as_str()),
        "the state comes back unchanged"
    );
    assert_eq!(
        params.get("iss").map(String::as_str),
        Some(issuer.as_str()),
        "RFC 9207: the issuer is named in the response"
    );
    assert!(!params.contains_key("error"), "{callback}");
    let code = params.get("code").expect("a code").clone();
    (AuthorizationCode::new(code), nonce, verifier)
}

/// The whole code flow up to the tokens, the ID token verified.
async fn sign_in(
    portcullis: &Portcullis,
    http: &Http,
    client: &RpClient,
    issuer: &IssuerUrl,
) -> SignedIn {
    let auth_time = portcullis.now_seconds();
    let (code, nonce, verifier) = code_for(portcullis, client, issuer).await;
    let tokens = client
        .exchange_code(code)
        .expect("a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .expect("the code exchanged for tokens");
    verified_claims(client, &tokens, Some(&nonce));
    SignedIn {
        tokens,
        nonce,
        auth_time,
    }
}

/// The ID token of `tokens` verified by the crate (signature from the JWKS, `iss`, `aud`,
/// `exp`, the nonce when one was sent, `at_hash`), with its `sid`.
fn verified_claims(
    client: &RpClient,
    tokens: &CoreTokenResponse,
    nonce: Option<&Nonce>,
) -> IdTokenClaims<SessionClaim, CoreGenderClaim> {
    let id_token: &CoreIdToken = tokens.id_token().expect("an ID token (scope openid)");
    let verifier = client.id_token_verifier();
    let claims = match nonce {
        Some(nonce) => id_token.claims(&verifier, nonce),
        // OIDC-CORE-13: an ID token from a refresh has no nonce (or the original one).
        None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .expect("the ID token verifies")
    .clone();
    let alg = id_token.signing_alg().expect("a signing algorithm");
    let key = id_token
        .signing_key(&verifier)
        .expect("its key in the JWKS");
    let at_hash = AccessTokenHash::from_token(tokens.access_token(), alg, key).unwrap();
    assert_eq!(
        claims.access_token_hash(),
        Some(&at_hash),
        "at_hash binds the access token"
    );
    // The same token read with the `sid` member the core claims leave out.
    let with_sid: SidIdToken = id_token.to_string().parse().unwrap();
    let with_sid = with_sid
        .claims(&verifier, |_: Option<&Nonce>| Ok(()))
        .expect("the ID token verifies")
        .clone();
    assert_eq!(with_sid.subject(), claims.subject());
    with_sid
}

fn sid_of(claims: &IdTokenClaims<SessionClaim, CoreGenderClaim>) -> String {
    claims
        .additional_claims()
        .sid
        .clone()
        .expect("sid in the ID token")
}

fn auth_time_of(claims: &IdTokenClaims<SessionClaim, CoreGenderClaim>) -> i64 {
    claims
        .auth_time()
        .expect("auth_time in the ID token")
        .timestamp()
}

async fn refresh(http: &Http, client: &RpClient, token: &RefreshToken) -> TokenResult {
    client
        .exchange_refresh_token(token)
        .expect("a token endpoint")
        .request_async(http)
        .await
}

async fn active(http: &Http, client: &RpClient, token: &str, hint: &str) -> bool {
    client
        .introspect(&AccessToken::new(token.to_owned()))
        .set_token_type_hint(hint)
        .request_async(http)
        .await
        .expect("an introspection answer")
        .active()
}

// ---------------------------------------------------------------------------------------
// The cases.

/// Discovery, the code flow with PKCE S256, state and nonce, `iss` in the callback, the ID
/// token verified by the crate, then userinfo.
#[tokio::test]
async fn oidc_core_15_rfc9207_code_flow_with_pkce_verified_by_openidconnect() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();

    // The crate's own core discovery reads the document and the JWKS.
    let core = CoreProviderMetadata::discover_async(
        IssuerUrl::new(portcullis.base.clone()).unwrap(),
        &http,
    )
    .await
    .expect("discovery read by openidconnect");
    assert_eq!(core.issuer().as_str(), portcullis.base);
    assert_eq!(
        core.authorization_endpoint().as_str(),
        format!("{}/oidc/authorize", portcullis.base)
    );
    assert_eq!(
        core.token_endpoint().map(|u| u.as_str().to_owned()),
        Some(format!("{}/oidc/token", portcullis.base))
    );
    assert!(!core.jwks().keys().is_empty(), "the JWKS has a key");
    assert!(
        core.id_token_signing_alg_values_supported()
            .contains(&CoreJwsSigningAlgorithm::EcdsaP256Sha256)
    );
    let core_client = CoreClient::from_provider_metadata(
        core,
        ClientId::new(portcullis.client_id.clone()),
        Some(ClientSecret::new(portcullis.client_secret.clone())),
    )
    .set_redirect_uri(RedirectUrl::new(portcullis.redirect_uri.clone()).unwrap());
    let (url, _, _) = core_client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .url();
    assert!(
        url.as_str()
            .starts_with(&format!("{}/oidc/authorize?", portcullis.base))
    );

    let (metadata, client) = portcullis.relying_party(&http).await;
    let issuer = metadata.issuer().clone();
    let (url, _, _, _) = authorization_request(&client);
    let asked = callback_params(&url);
    assert_eq!(asked["code_challenge_method"], "S256");
    assert!(asked.contains_key("nonce") && asked.contains_key("state"));

    let signed_in = sign_in(&portcullis, &http, &client, &issuer).await;
    let claims = verified_claims(&client, &signed_in.tokens, Some(&signed_in.nonce));
    assert_eq!(claims.issuer(), &issuer);
    assert_eq!(claims.subject().as_str(), portcullis.user_id);
    assert_eq!(
        claims
            .audiences()
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>(),
        [portcullis.client_id.as_str()]
    );
    assert_eq!(
        claims.nonce().map(Nonce::secret),
        Some(signed_in.nonce.secret()),
        "OIDC-CORE-10"
    );
    assert!(!sid_of(&claims).is_empty(), "sid names the sign-in");
    assert_eq!(auth_time_of(&claims), signed_in.auth_time);
    assert!(
        claims.expiration().timestamp() > portcullis.now_seconds(),
        "not expired"
    );
    assert!(
        signed_in.tokens.refresh_token().is_some(),
        "a refresh token for a client with the refresh grant"
    );

    let info: CoreUserInfoClaims = client
        .user_info(
            signed_in.tokens.access_token().clone(),
            Some(SubjectIdentifier::new(portcullis.user_id.clone())),
        )
        .expect("a userinfo endpoint")
        .request_async(&http)
        .await
        .expect("userinfo answers for the access token");
    assert_eq!(info.subject().as_str(), portcullis.user_id);
    assert_eq!(
        info.preferred_username().map(|u| u.as_str()),
        Some(USERNAME),
        "scope profile"
    );

    // A relying party of another client id does not accept this ID token (aud).
    let other = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new("app_somebody_else".into()),
        None,
    );
    let id_token = signed_in.tokens.id_token().unwrap();
    assert!(
        id_token
            .claims(&other.id_token_verifier(), &signed_in.nonce)
            .is_err(),
        "the audience is this client only"
    );
}

/// Refresh rotates the refresh token every time; the ID token from a refresh keeps the
/// original `auth_time`, `sub`, `iss`, `aud` and `sid`, with a new `iat`. Each renewal is one
/// `session.refreshed` event of the client's session (OWASP-SM-21: renewals are in the trail).
#[tokio::test]
async fn oidc_core_13_rfc9700_2_refresh_rotates_and_keeps_auth_time() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();
    let (metadata, client) = portcullis.relying_party(&http).await;
    let signed_in = sign_in(&portcullis, &http, &client, metadata.issuer()).await;
    let first = verified_claims(&client, &signed_in.tokens, Some(&signed_in.nonce));

    let mut seen = vec![signed_in.tokens.refresh_token().unwrap().secret().clone()];
    let mut current = signed_in.tokens.refresh_token().unwrap().clone();
    for _ in 0..2 {
        portcullis.clock.advance(Duration::from_secs(60));
        let tokens = refresh(&http, &client, &current)
            .await
            .expect("the refresh token is exchanged");
        let next = tokens
            .refresh_token()
            .expect("a new refresh token each time")
            .clone();
        assert!(
            !seen.contains(next.secret()),
            "RFC9700-2: the refresh token rotates"
        );
        seen.push(next.secret().clone());

        let claims = verified_claims(&client, &tokens, None);
        assert_eq!(
            auth_time_of(&claims),
            signed_in.auth_time,
            "OIDC-CORE-13: auth_time is the original authentication"
        );
        assert_eq!(auth_time_of(&claims), auth_time_of(&first));
        assert_eq!(claims.issuer(), first.issuer());
        assert_eq!(claims.subject(), first.subject());
        assert_eq!(claims.audiences(), first.audiences());
        assert_eq!(sid_of(&claims), sid_of(&first), "the same sign-in");
        assert_eq!(
            claims.issue_time().timestamp(),
            portcullis.now_seconds(),
            "a new iat"
        );
        assert!(
            claims
                .nonce()
                .is_none_or(|n| n.secret() == signed_in.nonce.secret()),
            "no nonce, or the original one"
        );
        current = next;
    }
    let events = portcullis
        .engine
        .store()
        .events(&EventQuery {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let refreshed: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::SessionRefreshed)
        .collect();
    assert_eq!(refreshed.len(), 2, "one event per renewal");
    assert!(refreshed.iter().all(|e| {
        e.subject.as_deref() == Some(portcullis.user_id.as_str())
            && e.application.as_ref().map(|a| a.as_str()) == Some(portcullis.client_id.as_str())
            && e.session_id == refreshed[0].session_id
    }));
}

/// A refresh token presented again after its rotation, past the retry grace, is reuse: the
/// crate is told `invalid_grant`, and the newest token of the family is dead too.
#[tokio::test]
async fn rfc9700_2_reused_refresh_token_ends_the_family() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();
    let (metadata, client) = portcullis.relying_party(&http).await;
    let signed_in = sign_in(&portcullis, &http, &client, metadata.issuer()).await;
    let first = signed_in.tokens.refresh_token().unwrap().clone();

    let rotated = refresh(&http, &client, &first)
        .await
        .expect("the first rotation");
    let newest = rotated.refresh_token().unwrap().clone();
    assert_ne!(newest.secret(), first.secret());
    // Within the retry grace a client that lost the answer gets the same successor again.
    let retried = refresh(&http, &client, &first)
        .await
        .expect("a retry within the grace");
    assert_eq!(retried.refresh_token().unwrap().secret(), newest.secret());

    portcullis.clock.advance(Duration::from_secs(11));
    assert_eq!(
        oauth_error(refresh(&http, &client, &first).await),
        CoreErrorResponseType::InvalidGrant,
        "the rotated token presented again"
    );
    assert_eq!(
        oauth_error(refresh(&http, &client, &newest).await),
        CoreErrorResponseType::InvalidGrant,
        "reuse ends the whole family, the newest token too"
    );
    assert!(
        !active(&http, &client, newest.secret(), "refresh_token").await,
        "introspection agrees"
    );
}

/// A code is redeemed once: the second exchange is `invalid_grant`, and what the first
/// gave is ended (RFC 9700 §4.5).
#[tokio::test]
async fn rfc9700_10_code_used_twice_is_invalid_grant() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();
    let (metadata, client) = portcullis.relying_party(&http).await;
    let (code, nonce, verifier) = code_for(&portcullis, &client, metadata.issuer()).await;
    let again = PkceCodeVerifier::new(verifier.secret().clone());

    let tokens = client
        .exchange_code(AuthorizationCode::new(code.secret().clone()))
        .expect("a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the first exchange");
    verified_claims(&client, &tokens, Some(&nonce));

    let second = client
        .exchange_code(code)
        .expect("a token endpoint")
        .set_pkce_verifier(again)
        .request_async(&http)
        .await;
    assert_eq!(oauth_error(second), CoreErrorResponseType::InvalidGrant);

    // SHOULD: the tokens of the first redemption are revoked.
    assert_eq!(
        oauth_error(refresh(&http, &client, tokens.refresh_token().unwrap()).await),
        CoreErrorResponseType::InvalidGrant,
        "the refresh token of the first redemption is ended"
    );
    assert!(
        !active(
            &http,
            &client,
            tokens.access_token().secret(),
            "access_token"
        )
        .await,
        "the access token of the first redemption is ended"
    );
}

/// Revocation takes effect at once: the revoked refresh token, and the access token of the
/// same grant, introspect as inactive, and the refresh token no longer refreshes.
#[tokio::test]
async fn rfc7009_6_revoked_token_introspects_inactive() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();
    let (metadata, client) = portcullis.relying_party(&http).await;
    let signed_in = sign_in(&portcullis, &http, &client, metadata.issuer()).await;
    let access = signed_in.tokens.access_token().clone();
    let refresh_token = signed_in.tokens.refresh_token().unwrap().clone();

    let introspected = client
        .introspect(&access)
        .request_async(&http)
        .await
        .expect("an introspection answer");
    assert!(introspected.active(), "a fresh access token is active");
    assert_eq!(
        introspected.client_id().map(|c| c.as_str()),
        Some(portcullis.client_id.as_str())
    );
    assert_eq!(introspected.sub(), Some(portcullis.user_id.as_str()));
    assert!(active(&http, &client, refresh_token.secret(), "refresh_token").await);

    // The crate revokes over TLS only; the same request, by hand (client_secret_basic).
    let revoked = http
        .0
        .post(format!("{}/oidc/revoke", portcullis.base))
        .basic_auth(&portcullis.client_id, Some(&portcullis.client_secret))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("token", refresh_token.secret())
                .append_pair("token_type_hint", "refresh_token")
                .finish(),
        )
        .send()
        .await
        .expect("a revocation answer");
    assert_eq!(revoked.status(), 200);

    assert!(
        !active(&http, &client, refresh_token.secret(), "refresh_token").await,
        "the revoked refresh token is inactive"
    );
    assert!(
        !active(&http, &client, access.secret(), "access_token").await,
        "RFC7009-3: the access token of the same grant is inactive too"
    );
    assert_eq!(
        oauth_error(refresh(&http, &client, &refresh_token).await),
        CoreErrorResponseType::InvalidGrant,
        "the revoked refresh token no longer refreshes"
    );
}

/// RFC 6749 §3.2 and §5.2: a body that is not a readable form is `invalid_request`, and the
/// description says what is wrong with it (a parameter given twice is not a wrong content type).
#[tokio::test]
async fn rfc6749_5_2_an_unreadable_token_request_says_why() {
    let portcullis = Portcullis::start().await;
    let http = Http::new();
    let post = |path: &'static str, content_type: &'static str, body: &'static str| {
        http.0
            .post(format!("{}{path}", portcullis.base))
            .basic_auth(&portcullis.client_id, Some(&portcullis.client_secret))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";
    for (path, content_type, body, says) in [
        (
            "/oidc/token",
            form,
            "grant_type=authorization_code&code=a&code=b",
            "given twice",
        ),
        ("/oidc/revoke", form, "token=a&token=b", "given twice"),
        ("/oidc/introspect", form, "token=a&token=b", "given twice"),
        (
            "/oidc/token",
            "application/json",
            r#"{"grant_type":"refresh_token"}"#,
            "application/x-www-form-urlencoded",
        ),
    ] {
        let answer = post(path, content_type, body).await.unwrap();
        assert_eq!(answer.status(), 400, "{path} {body}");
        let error: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{path} {body}");
        let description = error["error_description"].as_str().unwrap();
        assert!(description.contains(says), "{path} {body}: {description}");
    }
}
