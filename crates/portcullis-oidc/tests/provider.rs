//! The OpenID Connect provider as the HTTP layer calls it: authorization requests checked
//! against the registration, sign-in and consent decisions, codes issued and redeemed, refresh
//! rotation, introspection, userinfo, revocation and client authentication. It runs over an
//! engine on a `MemoryStore` with a `ManualClock` (time moves only when a case advances it, no
//! case sleeps) and the provider's in-memory stores; the SSO session is made the way the
//! sign-in pages make it (policy `SSO_POLICY`, principal Portcullis). Every signed token is
//! verified with the provider's own keys before its claims are read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_core::oidc::{
    Client, ClientAuth, DeliveryState, GrantType, LogoutDelivery, REFRESH_RETRY_GRACE, SigningAlg,
};
use portcullis_core::{
    Accounts, Actor, AppId, Application, ApplicationChange, ApplicationStore, AuditEvent,
    AuthContext, EndReason, Engine, EventKind, Issued, Keyring, ManualClock, MemoryStore,
    MemoryUserStore, NewSession, NoAuditSink, PolicySet, Principal, PublicId, SSO_POLICY,
    SeededRandom, Session, Timestamp, Token, TokenKind, User, UserStore,
};
use portcullis_oidc::{
    ACCESS_TOKEN_TYPE, AccessTokenClaims, AuthorizationParams, AuthorizationRequest,
    AuthorizeError, ClientCredentials, Decision, DeliveryReport, DeliverySettings, ID_TOKEN_TYPE,
    IdTokenClaims, LOGOUT_TOKEN_TYPE, LogoutError, LogoutParams, LogoutPost, LogoutSender,
    PostFuture, PostOutcome, Provider, ProviderOr, ProviderSettings, ProviderStores, TokenError,
    TokenResponse, generate_signing_key, token_hash_claim,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://id.example";
const TOKEN_ENDPOINT: &str = "https://id.example/oauth2/token";
const REDIRECT: &str = "https://app.example/cb";
const OTHER_REDIRECT: &str = "https://app.example/other-cb";
const STATE: &str = "af0ifjsldkj";
const NONCE: &str = "n-0S6_WzA2Mj";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// Well-formed, but not the verifier of [`CHALLENGE`].
const WRONG_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj";

/// One provider, its engine and clock, and the person who signs in.
struct Op {
    clock: Arc<ManualClock>,
    engine: Arc<Engine<MemoryStore>>,
    provider: Provider<MemoryStore>,
    random: Arc<SeededRandom>,
    user: User,
}

/// A registered client and what it authenticates with at the token endpoint.
struct Rp {
    app: Application,
    credentials: ClientCredentials,
}

impl Rp {
    fn id(&self) -> &str {
        self.app.id.as_str()
    }
}

/// The registration every case starts from: both redirect URIs, every known scope, both
/// grants, trusted (no consent asked).
fn registration(auth: ClientAuth) -> Client {
    Client {
        auth,
        redirect_uris: vec![REDIRECT.to_owned(), OTHER_REDIRECT.to_owned()],
        post_logout_redirect_uris: Vec::new(),
        backchannel_logout_uri: None,
        frontchannel_logout_uri: None,
        scopes: ["openid", "profile", "email", "offline_access"]
            .map(String::from)
            .into(),
        grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
        require_consent: false,
        id_token_signed_response_alg: None,
        upstream: None,
    }
}

/// An authorization request of `rp` as a well-behaved public client sends it.
fn params(rp: &Rp) -> AuthorizationParams {
    AuthorizationParams {
        client_id: Some(rp.id().to_owned()),
        redirect_uri: Some(REDIRECT.to_owned()),
        response_type: Some("code".to_owned()),
        scope: Some("openid profile".to_owned()),
        state: Some(STATE.to_owned()),
        nonce: Some(NONCE.to_owned()),
        code_challenge: Some(CHALLENGE.to_owned()),
        code_challenge_method: Some("S256".to_owned()),
        ..AuthorizationParams::default()
    }
}

/// The query of a redirect to `REDIRECT` or `OTHER_REDIRECT`, decoded.
fn query(url: &str) -> HashMap<String, String> {
    let (base, query) = url.split_once('?').expect("the answer has a query");
    assert!(base == REDIRECT || base == OTHER_REDIRECT, "{url}");
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

fn secs(at: Timestamp) -> i64 {
    at.as_millis().div_euclid(1000)
}

/// The protocol error of `result` (a provider failure or a success fails the case).
#[track_caller]
fn protocol<T: std::fmt::Debug, E: std::fmt::Debug>(result: Result<T, ProviderOr<E>>) -> E {
    match result {
        Err(ProviderOr::Protocol(error)) => error,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Asserts an error redirected to the client's `REDIRECT` with `STATE`.
#[track_caller]
fn assert_redirected(error: &AuthorizeError, code: &str) {
    match error {
        AuthorizeError::Redirect {
            redirect_uri,
            error,
            state,
            ..
        } => {
            assert_eq!(*error, code);
            assert_eq!(redirect_uri, REDIRECT);
            assert_eq!(state.as_deref(), Some(STATE), "state comes back unchanged");
        }
        other => panic!("expected a redirected {code}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_grant(result: Result<TokenResponse, TokenError>) {
    match result {
        Err(error) => assert_eq!(error.error, "invalid_grant", "{error}"),
        Ok(tokens) => panic!(
            "expected invalid_grant, got tokens for scope {}",
            tokens.scope
        ),
    }
}

fn inactive() -> Value {
    json!({ "active": false })
}

impl Op {
    async fn new() -> Self {
        Self::signing_with(vec![SigningAlg::Es256]).await
    }

    /// A provider keeping keys for `algs` (the first signs by default).
    async fn signing_with(algs: Vec<SigningAlg>) -> Self {
        let clock = Arc::new(ManualClock::default());
        let random = Arc::new(SeededRandom::new(20_260_101));
        let engine = Arc::new(Engine::new(
            MemoryStore::default(),
            PolicySet::default(),
            clock.clone(),
            random.clone(),
        ));
        // The account goes straight into the user store: no case signs in with a password, and
        // hashing one would only slow every case down.
        let users = Arc::new(MemoryUserStore::new());
        let user = User {
            id: PublicId::generate("usr_", &*random).as_str().to_owned(),
            username: "alice".to_owned(),
            version: 1,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$unused$unused".to_owned(),
            disabled: false,
            totp: None,
            created_at: engine.now(),
            password_changed_at: engine.now(),
            short_password: false,
        };
        users.add_user(&user).await.unwrap();
        let accounts = Arc::new(Accounts::new(
            users,
            clock.clone(),
            random.clone(),
            Arc::new(NoAuditSink),
        ));
        let keyring = Keyring::parse(&[Keyring::generate_entry("k1", &*random)]).unwrap();
        let provider = Provider::start(
            engine.clone(),
            accounts,
            ProviderStores::in_memory(engine.store()),
            keyring,
            random.clone(),
            ProviderSettings {
                algs,
                ..ProviderSettings::new(ISSUER)
            },
        )
        .await
        .unwrap();
        Self {
            clock,
            engine,
            provider,
            random,
            user,
        }
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn now(&self) -> Timestamp {
        self.engine.now()
    }

    /// Registers the application `name` as a client with `client`.
    async fn register_with(
        &self,
        name: &str,
        client: Client,
        credentials: ClientCredentials,
    ) -> Rp {
        client.validate().expect("a valid registration");
        let app = Application {
            id: PublicId::generate("app_", &*self.random),
            name: name.to_owned(),
            policies: vec!["*".to_owned()],
            default_policy: "default".to_owned(),
            grants: BTreeSet::new(),
            client: Some(client),
            created_at: self.now(),
            version: 1,
        };
        let event = AuditEvent::for_application(
            EventKind::ApplicationCreated,
            &app.id,
            self.now(),
            &Actor::cli(),
            json!({ "application": app.id.as_str(), "name": name }),
        );
        self.engine
            .store()
            .add_application(app.clone(), event)
            .await
            .unwrap();
        Rp { app, credentials }
    }

    /// A public client (PKCE required), trusted.
    async fn public_client(&self, name: &str) -> Rp {
        self.register_with(
            name,
            registration(ClientAuth::None),
            ClientCredentials::None,
        )
        .await
    }

    /// A confidential client with a client secret, trusted.
    async fn confidential_client(&self, name: &str) -> Rp {
        let secret = Token::generate(TokenKind::ClientSecret, &*self.random);
        self.register_with(
            name,
            registration(ClientAuth::Secret(secret.hash())),
            ClientCredentials::Secret(secret.expose().to_owned()),
        )
        .await
    }

    /// An SSO session for the person, made as the sign-in pages make it.
    async fn sign_in(&self) -> Issued {
        self.engine
            .create(
                NewSession {
                    subject: self.user.id.clone(),
                    policy: Some(SSO_POLICY.to_owned()),
                    auth: AuthContext {
                        methods: vec!["pwd".to_owned()],
                        level: 1,
                    },
                    data: json!({ "username": self.user.username }),
                    reconstitute: true,
                    ..NewSession::default()
                },
                &Principal::portcullis(Actor::user(&self.user.id)),
            )
            .await
            .unwrap()
    }

    /// Ends the SSO session as the sign-out page does, by its token.
    async fn sign_out(&self, sso: &Issued) {
        self.engine
            .logout(
                sso.token.expose(),
                &Principal::portcullis(Actor::user(&self.user.id)),
            )
            .await
            .unwrap();
    }

    async fn check(&self, params: &AuthorizationParams) -> AuthorizationRequest {
        self.provider.check_authorization(params).await.unwrap()
    }

    async fn check_error(&self, params: &AuthorizationParams) -> AuthorizeError {
        protocol(self.provider.check_authorization(params).await)
    }

    async fn decide(&self, request: &AuthorizationRequest, sso: &Issued) -> Decision {
        self.provider
            .decide(request, Some(&sso.session))
            .await
            .unwrap()
    }

    /// The authorization response URL for `params`, vouched for by `sso`, which must need
    /// no sign-in or consent.
    async fn authorize(&self, params: &AuthorizationParams, sso: &Issued) -> String {
        let request = self.check(params).await;
        assert_eq!(self.decide(&request, sso).await, Decision::Issue);
        self.provider
            .issue_code(&request, &sso.session)
            .await
            .unwrap()
    }

    /// A code for `params`.
    async fn code(&self, params: &AuthorizationParams, sso: &Issued) -> String {
        query(&self.authorize(params, sso).await)["code"].clone()
    }

    /// The token endpoint as `rp` calls it: client authentication, then the code grant.
    async fn exchange(
        &self,
        rp: &Rp,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, TokenError> {
        let (app, client) = self
            .provider
            .authenticate_client(Some(rp.id()), &rp.credentials, TOKEN_ENDPOINT)
            .await
            .unwrap();
        match self
            .provider
            .exchange_code(&app, &client, code, redirect_uri, verifier)
            .await
        {
            Ok(tokens) => Ok(tokens),
            Err(ProviderOr::Protocol(error)) => Err(error),
            Err(ProviderOr::Failed(error)) => panic!("the provider failed: {error}"),
        }
    }

    /// The token endpoint as `rp` calls it: client authentication, then the refresh grant.
    async fn refresh(
        &self,
        rp: &Rp,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, TokenError> {
        let (app, client) = self
            .provider
            .authenticate_client(Some(rp.id()), &rp.credentials, TOKEN_ENDPOINT)
            .await
            .unwrap();
        match self
            .provider
            .refresh(&app, &client, refresh_token, scope)
            .await
        {
            Ok(tokens) => Ok(tokens),
            Err(ProviderOr::Protocol(error)) => Err(error),
            Err(ProviderOr::Failed(error)) => panic!("the provider failed: {error}"),
        }
    }

    /// Signs in, authorizes `rp` (public or confidential: PKCE either way) and redeems the
    /// code.
    async fn log_in(&self, rp: &Rp) -> (Issued, TokenResponse) {
        let sso = self.sign_in().await;
        let code = self.code(&params(rp), &sso).await;
        let tokens = self
            .exchange(rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await
            .unwrap();
        (sso, tokens)
    }

    fn id_token(&self, tokens: &TokenResponse) -> IdTokenClaims {
        let token = tokens.id_token.as_deref().expect("an ID token for openid");
        self.provider
            .keys()
            .verify::<IdTokenClaims>(token, ID_TOKEN_TYPE)
            .unwrap()
    }

    fn access(&self, tokens: &TokenResponse) -> AccessTokenClaims {
        self.provider
            .keys()
            .verify::<AccessTokenClaims>(&tokens.access_token, ACCESS_TOKEN_TYPE)
            .unwrap()
    }

    /// The client's session at Portcullis the access token belongs to, live or ended.
    async fn client_session(&self, tokens: &TokenResponse) -> Arc<Session> {
        let ses = PublicId::from_string(self.access(tokens).ses);
        self.engine.get(&ses, &Principal::operator()).await.unwrap()
    }

    async fn authenticate(
        &self,
        client_id: Option<&str>,
        credentials: &ClientCredentials,
    ) -> Result<(Application, Client), ProviderOr<TokenError>> {
        self.provider
            .authenticate_client(client_id, credentials, TOKEN_ENDPOINT)
            .await
    }

    async fn introspect(&self, rp: &Rp, token: &str) -> Value {
        self.provider.introspect(&rp.app, token).await.unwrap()
    }
}

fn ended_reason(session: &Session) -> Option<EndReason> {
    session.ended.as_ref().map(|ended| ended.reason)
}

// ---------------------------------------------------------------------------------------------
// 1. Checking the authorization request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rfc9700_8_asvs5_10_4_1_unknown_clients_and_redirect_uris_get_no_redirect() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let plain_app = op
        .engine
        .add_application(
            ApplicationChange {
                name: Some("no-client".into()),
                policies: Some(vec!["*".into()]),
                ..ApplicationChange::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();

    let mut cases: Vec<(&str, AuthorizationParams)> = Vec::new();
    for client_id in [
        None,
        Some("app_nobody"),
        Some("web"),
        Some(plain_app.id.as_str()),
    ] {
        cases.push((
            "unknown client",
            AuthorizationParams {
                client_id: client_id.map(str::to_owned),
                ..params(&rp)
            },
        ));
    }
    for redirect in [
        None,
        Some("https://app.example/cb/"),
        Some("https://app.example/cb?x=1"),
        Some("https://app.example/CB"),
        Some("https://app.example.evil/cb"),
        Some("http://app.example/cb"),
        Some("https://evil.example/cb"),
    ] {
        cases.push((
            "unregistered redirect_uri",
            AuthorizationParams {
                redirect_uri: redirect.map(str::to_owned),
                ..params(&rp)
            },
        ));
    }
    for (what, case) in cases {
        let error = op.check_error(&case).await;
        assert!(
            matches!(error, AuthorizeError::NoRedirect(_)),
            "{what} {:?} {:?}: {error:?}",
            case.client_id,
            case.redirect_uri
        );
        assert_eq!(op.provider.error_url(&error), None, "nowhere to go");
    }
    // Even a request that is wrong in other ways is not redirected to an unregistered URI.
    let error = op
        .check_error(&AuthorizationParams {
            redirect_uri: Some("https://evil.example/cb".into()),
            response_type: Some("token".into()),
            ..params(&rp)
        })
        .await;
    assert!(matches!(error, AuthorizeError::NoRedirect(_)), "{error:?}");

    // The registered URI itself is accepted, byte for byte.
    let request = op.check(&params(&rp)).await;
    assert_eq!(request.redirect_uri, REDIRECT);
    assert_eq!(request.client, rp.app.id);
}

#[tokio::test]
async fn asvs5_10_6_1_a_response_type_other_than_code_is_unsupported_response_type_with_state() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    // RFC 6749 §4.1.2.1: one missing is `invalid_request`, one we do not support the other.
    for (response_type, expected) in [
        (None, "invalid_request"),
        (Some("token"), "unsupported_response_type"),
        (Some("id_token token"), "unsupported_response_type"),
        (Some("code token"), "unsupported_response_type"),
        (Some("code id_token"), "unsupported_response_type"),
        (Some("CODE"), "unsupported_response_type"),
    ] {
        let error = op
            .check_error(&AuthorizationParams {
                response_type: response_type.map(str::to_owned),
                ..params(&rp)
            })
            .await;
        assert_redirected(&error, expected);
        let url = op.provider.error_url(&error).expect("an error redirect");
        let answer = query(&url);
        assert!(url.starts_with(&format!("{REDIRECT}?")), "{url}");
        assert_eq!(answer["error"], expected);
        assert_eq!(answer["state"], STATE);
        assert_eq!(answer["iss"], ISSUER, "RFC 9207: errors carry iss too");
        assert!(!answer.contains_key("code"));
    }
}

#[tokio::test]
async fn asvs5_10_4_6_rfc9700_9_a_public_client_must_send_an_s256_code_challenge() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let cases = [
        ("no challenge", None, None),
        ("no challenge, method named", None, Some("S256")),
        ("plain", Some(CHALLENGE), Some("plain")),
        (
            "plain, verifier as challenge",
            Some(VERIFIER),
            Some("plain"),
        ),
        ("no method means plain", Some(CHALLENGE), None),
        ("unknown method", Some(CHALLENGE), Some("S512")),
        ("lower-case method", Some(CHALLENGE), Some("s256")),
        ("malformed challenge", Some("too-short"), Some("S256")),
    ];
    for (what, challenge, method) in cases {
        let error = op
            .check_error(&AuthorizationParams {
                code_challenge: challenge.map(str::to_owned),
                code_challenge_method: method.map(str::to_owned),
                ..params(&rp)
            })
            .await;
        assert!(
            matches!(
                &error,
                AuthorizeError::Redirect {
                    error: "invalid_request",
                    ..
                }
            ),
            "{what}: {error:?}"
        );
        assert_redirected(&error, "invalid_request");
    }
    let request = op.check(&params(&rp)).await;
    assert_eq!(request.code_challenge.as_deref(), Some(CHALLENGE));
}

#[tokio::test]
async fn oidc_core_2_prompt_none_combined_with_another_value_is_invalid_request() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    for prompt in [
        "none login",
        "login none",
        "none consent",
        "none select_account",
        "bogus",
    ] {
        let error = op
            .check_error(&AuthorizationParams {
                prompt: Some(prompt.to_owned()),
                ..params(&rp)
            })
            .await;
        assert_redirected(&error, "invalid_request");
    }
    for prompt in ["none", "login", "login consent"] {
        op.check(&AuthorizationParams {
            prompt: Some(prompt.to_owned()),
            ..params(&rp)
        })
        .await;
    }
}

#[tokio::test]
async fn oidc_core_3_1_2_1_a_scope_without_openid_is_invalid_scope() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    for scope in [
        None,
        Some(""),
        Some("profile email"),
        Some("OpenID profile"),
    ] {
        let error = op
            .check_error(&AuthorizationParams {
                scope: scope.map(str::to_owned),
                ..params(&rp)
            })
            .await;
        assert_redirected(&error, "invalid_scope");
    }
    // Scopes the client is not registered for are dropped, not granted.
    let mut narrow = registration(ClientAuth::None);
    narrow.scopes = ["openid", "profile"].map(String::from).into();
    let narrow = op
        .register_with("narrow", narrow, ClientCredentials::None)
        .await;
    let request = op
        .check(&AuthorizationParams {
            scope: Some("openid email profile openid admin".into()),
            ..params(&narrow)
        })
        .await;
    assert_eq!(request.scopes, ["openid", "profile"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Deciding: sign in, consent, or issue
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn oidc_core_2_no_sso_session_needs_a_sign_in_or_answers_login_required() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let request = op.check(&params(&rp)).await;
    assert_eq!(
        op.provider.decide(&request, None).await.unwrap(),
        Decision::SignIn
    );
    let silent = op
        .check(&AuthorizationParams {
            prompt: Some("none".into()),
            ..params(&rp)
        })
        .await;
    let error = protocol(op.provider.decide(&silent, None).await);
    assert_redirected(&error, "login_required");
    let answer = query(&op.provider.error_url(&error).unwrap());
    assert_eq!(answer["error"], "login_required");
    assert_eq!(answer["state"], STATE);
    assert_eq!(answer["iss"], ISSUER);

    // With a session, prompt=none issues silently.
    let sso = op.sign_in().await;
    assert_eq!(op.decide(&silent, &sso).await, Decision::Issue);
}

#[tokio::test]
async fn oidc_core_3_asvs4_3_6_1_max_age_exceeded_needs_a_sign_in_whose_time_is_auth_time() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let old = op.sign_in().await;
    op.advance(Duration::from_secs(120));

    let with_max_age = |max_age: &str, prompt: Option<&str>| AuthorizationParams {
        max_age: Some(max_age.to_owned()),
        prompt: prompt.map(str::to_owned),
        ..params(&rp)
    };
    let too_old = op.check(&with_max_age("60", None)).await;
    assert_eq!(too_old.max_age, Some(60));
    assert_eq!(op.decide(&too_old, &old).await, Decision::SignIn);
    let zero = op.check(&with_max_age("0", None)).await;
    assert_eq!(
        op.decide(&zero, &old).await,
        Decision::SignIn,
        "max_age=0 is prompt=login"
    );
    let silent = op.check(&with_max_age("60", Some("none"))).await;
    assert_redirected(
        &protocol(op.provider.decide(&silent, Some(&old.session)).await),
        "login_required",
    );
    let young_enough = op.check(&with_max_age("600", None)).await;
    assert_eq!(op.decide(&young_enough, &old).await, Decision::Issue);

    // Signing in again after the request satisfies it, and auth_time is the new sign-in's.
    op.advance(Duration::from_secs(1));
    let fresh = op.sign_in().await;
    assert_eq!(op.decide(&too_old, &fresh).await, Decision::Issue);
    let url = op
        .provider
        .issue_code(&too_old, &fresh.session)
        .await
        .unwrap();
    let tokens = op
        .exchange(&rp, &query(&url)["code"], Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    let id = op.id_token(&tokens);
    assert_eq!(id.auth_time, secs(fresh.session.authenticated_at));
    assert_ne!(id.auth_time, secs(old.session.authenticated_at));

    let error = op.check_error(&with_max_age("soon", None)).await;
    assert_redirected(&error, "invalid_request");
}

#[tokio::test]
async fn oidc_core_4_prompt_login_requires_a_sign_in_after_the_request() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let earlier = op.sign_in().await;
    op.advance(Duration::from_secs(1));
    for prompt in ["login", "select_account"] {
        let request = op
            .check(&AuthorizationParams {
                prompt: Some(prompt.to_owned()),
                ..params(&rp)
            })
            .await;
        assert_eq!(
            op.decide(&request, &earlier).await,
            Decision::SignIn,
            "prompt={prompt} with a session from before the request"
        );
    }
    let request = op
        .check(&AuthorizationParams {
            prompt: Some("login".to_owned()),
            ..params(&rp)
        })
        .await;
    op.advance(Duration::from_secs(1));
    let again = op.sign_in().await;
    assert_eq!(op.decide(&request, &again).await, Decision::Issue);
}

#[tokio::test]
async fn asvs5_7_6_2_oidc_core_6_a_client_that_requires_consent_asks_until_the_person_consents() {
    let op = Op::new().await;
    let mut third_party = registration(ClientAuth::None);
    third_party.require_consent = true;
    let rp = op
        .register_with("third-party", third_party, ClientCredentials::None)
        .await;
    let sso = op.sign_in().await;

    let request = op.check(&params(&rp)).await;
    let scopes = vec!["openid".to_owned(), "profile".to_owned()];
    assert_eq!(
        op.decide(&request, &sso).await,
        Decision::Consent(scopes.clone())
    );
    let silent_params = AuthorizationParams {
        prompt: Some("none".into()),
        ..params(&rp)
    };
    let silent = op.check(&silent_params).await;
    assert_redirected(
        &protocol(op.provider.decide(&silent, Some(&sso.session)).await),
        "consent_required",
    );
    // Still asked: nothing was recorded by asking.
    assert_eq!(
        op.decide(&request, &sso).await,
        Decision::Consent(scopes.clone())
    );

    op.provider.consent_to(&request, &op.user.id).await.unwrap();
    assert_eq!(op.decide(&request, &sso).await, Decision::Issue);
    assert_eq!(op.decide(&silent, &sso).await, Decision::Issue);

    // A scope not consented to yet is asked for alone.
    let wider = op
        .check(&AuthorizationParams {
            scope: Some("openid profile email".into()),
            ..params(&rp)
        })
        .await;
    assert_eq!(
        op.decide(&wider, &sso).await,
        Decision::Consent(vec!["email".to_owned()])
    );
    // prompt=consent asks again for everything.
    let again = op
        .check(&AuthorizationParams {
            prompt: Some("consent".into()),
            ..params(&rp)
        })
        .await;
    assert_eq!(op.decide(&again, &sso).await, Decision::Consent(scopes));

    // A trusted client is not asked.
    let trusted = op.public_client("first-party").await;
    let request = op.check(&params(&trusted)).await;
    assert_eq!(op.decide(&request, &sso).await, Decision::Issue);
}

#[tokio::test]
async fn oidc_core_11_offline_access_is_consented_to_even_by_a_trusted_client() {
    let op = Op::new().await;
    let rp = op.public_client("first-party").await;
    let sso = op.sign_in().await;
    let offline = AuthorizationParams {
        scope: Some("openid offline_access".into()),
        ..params(&rp)
    };
    let request = op.check(&offline).await;
    assert_eq!(
        op.decide(&request, &sso).await,
        Decision::Consent(vec!["openid".to_owned(), "offline_access".to_owned()])
    );
    let silent = op
        .check(&AuthorizationParams {
            prompt: Some("none".into()),
            ..offline.clone()
        })
        .await;
    assert_redirected(
        &protocol(op.provider.decide(&silent, Some(&sso.session)).await),
        "consent_required",
    );
    op.provider.consent_to(&request, &op.user.id).await.unwrap();
    assert_eq!(op.decide(&request, &sso).await, Decision::Issue);
}

// ---------------------------------------------------------------------------------------------
// 3. Codes: issued, then redeemed once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rfc9207_oidc_core_10_a_code_comes_with_state_and_iss_and_redeems_for_tokens() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;
    op.advance(Duration::from_secs(30));

    let url = op.authorize(&params(&rp), &sso).await;
    assert!(url.starts_with(&format!("{REDIRECT}?")), "{url}");
    let answer = query(&url);
    assert!(answer["code"].starts_with("pca_"), "{url}");
    assert_eq!(answer["state"], STATE);
    assert_eq!(answer["iss"], ISSUER, "RFC 9207");
    assert!(!answer.contains_key("error"));

    let tokens = op
        .exchange(&rp, &answer["code"], Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 300);
    assert_eq!(tokens.scope, "openid profile");
    let refresh_token = tokens.refresh_token.as_deref().expect("a refresh token");
    assert!(refresh_token.starts_with("pcr_"));
    assert!(!url.contains(refresh_token));

    let now = secs(op.now());
    let id = op.id_token(&tokens);
    assert_eq!(id.iss, ISSUER);
    assert_eq!(id.sub, op.user.id);
    assert_eq!(id.aud, rp.id());
    assert_eq!(id.azp, rp.id());
    assert_eq!(id.nonce.as_deref(), Some(NONCE), "OIDC-CORE-10");
    assert_eq!(id.sid, sso.session.id.as_str());
    assert_eq!(id.auth_time, secs(sso.session.authenticated_at));
    assert_eq!(id.iat, now);
    assert_eq!(id.exp, now + 300);
    assert_eq!(id.acr.as_deref(), Some("aal1"));
    assert_eq!(id.amr, ["pwd"]);
    assert_eq!(
        id.at_hash.as_deref(),
        Some(token_hash_claim(SigningAlg::Es256, &tokens.access_token).as_str())
    );
    let header = jsonwebtoken::decode_header(tokens.id_token.as_deref().unwrap()).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(
        header.kid.as_deref(),
        op.provider.keys().signing_kid(SigningAlg::Es256)
    );

    let access = op.access(&tokens);
    assert_eq!(access.iss, ISSUER);
    assert_eq!(access.aud, ISSUER);
    assert_eq!(access.sub, op.user.id);
    assert_eq!(access.client_id, rp.id());
    assert_eq!(access.scope, "openid profile");
    assert_eq!(access.sid, sso.session.id.as_str());
    assert_eq!(access.exp, now + 300);
    // JWTBCP-11: neither token passes for the other.
    let keys = op.provider.keys();
    assert!(
        keys.verify::<AccessTokenClaims>(tokens.id_token.as_deref().unwrap(), ACCESS_TOKEN_TYPE)
            .is_err()
    );
    assert!(
        keys.verify::<IdTokenClaims>(&tokens.access_token, ID_TOKEN_TYPE)
            .is_err()
    );

    // The client's session is a live child of the SSO session, of the client.
    let session = op.client_session(&tokens).await;
    assert!(session.is_live());
    assert_eq!(session.parent.as_ref(), Some(&sso.session.id));
    assert_eq!(session.application, rp.app.id);
    assert_eq!(session.subject, op.user.id);
}

#[tokio::test]
async fn rfc9700_10_asvs5_10_4_2_a_replayed_code_is_refused_and_ends_what_it_issued() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;
    let code = op.code(&params(&rp), &sso).await;
    let first = op
        .exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    assert!(op.client_session(&first).await.is_live());

    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );

    let session = op.client_session(&first).await;
    assert_eq!(ended_reason(&session), Some(EndReason::TokenReuse));
    assert_invalid_grant(
        op.refresh(&rp, first.refresh_token.as_deref().unwrap(), None)
            .await,
    );
    assert_eq!(op.introspect(&rp, &first.access_token).await, inactive());
    assert_eq!(
        op.provider.userinfo(&first.access_token).await.unwrap(),
        None
    );
    // The SSO session is the person's, not the code's: it stays.
    let sso_now = op
        .engine
        .get(&sso.session.id, &Principal::operator())
        .await
        .unwrap();
    assert!(sso_now.is_live());
}

#[tokio::test]
async fn asvs5_10_4_6_rfc9700_9_a_wrong_or_missing_code_verifier_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let sso = op.sign_in().await;

    let code = op.code(&params(&rp), &sso).await;
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(WRONG_VERIFIER))
            .await,
    );
    // One try per code: the right verifier after a wrong one does not redeem it.
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );

    let code = op.code(&params(&rp), &sso).await;
    assert_invalid_grant(op.exchange(&rp, &code, Some(REDIRECT), None).await);

    // The challenge itself is not a verifier.
    let code = op.code(&params(&rp), &sso).await;
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(CHALLENGE))
            .await,
    );

    let code = op.code(&params(&rp), &sso).await;
    op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
}

#[tokio::test]
async fn asvs5_10_4_6_a_confidential_client_must_send_a_code_challenge_too() {
    let op = Op::new().await;
    let rp = op.confidential_client("backend").await;
    let without_pkce = AuthorizationParams {
        code_challenge: None,
        code_challenge_method: None,
        ..params(&rp)
    };
    assert_redirected(&op.check_error(&without_pkce).await, "invalid_request");
    // With one, the secret and the verifier both count.
    let sso = op.sign_in().await;
    let code = op.code(&params(&rp), &sso).await;
    assert_invalid_grant(op.exchange(&rp, &code, Some(REDIRECT), None).await);
    let code = op.code(&params(&rp), &sso).await;
    op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
}

#[tokio::test]
async fn rfc9700_8_a_token_request_with_another_redirect_uri_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;
    for redirect in [
        OTHER_REDIRECT,
        "https://app.example/cb/",
        "https://evil.example/cb",
    ] {
        let code = op.code(&params(&rp), &sso).await;
        assert_invalid_grant(
            op.exchange(&rp, &code, Some(redirect), Some(VERIFIER))
                .await,
        );
    }
    // RFC 6749 §4.1.3: missing, it is a malformed request.
    let code = op.code(&params(&rp), &sso).await;
    let missing = op
        .exchange(&rp, &code, None, Some(VERIFIER))
        .await
        .unwrap_err();
    assert_eq!(missing.error, "invalid_request");
    // Each registered URI works when the token request repeats it.
    let other = AuthorizationParams {
        redirect_uri: Some(OTHER_REDIRECT.into()),
        ..params(&rp)
    };
    let url = op.authorize(&other, &sso).await;
    assert!(url.starts_with(&format!("{OTHER_REDIRECT}?")), "{url}");
    op.exchange(
        &rp,
        &query(&url)["code"],
        Some(OTHER_REDIRECT),
        Some(VERIFIER),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn asvs5_10_4_3_a_code_expires_a_minute_after_it_is_issued() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;

    let code = op.code(&params(&rp), &sso).await;
    op.advance(Duration::from_secs(61));
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );

    let code = op.code(&params(&rp), &sso).await;
    op.advance(Duration::from_secs(59));
    op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
}

#[tokio::test]
async fn rfc6749_4_1_3_a_code_issued_to_another_client_is_invalid_grant() {
    let op = Op::new().await;
    let web = op.public_client("web").await;
    let other = op.public_client("other").await;
    let sso = op.sign_in().await;
    let code = op.code(&params(&web), &sso).await;
    assert_invalid_grant(
        op.exchange(&other, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );
    assert_invalid_grant(
        op.exchange(
            &web,
            "pca_not-a-code-at-all",
            Some(REDIRECT),
            Some(VERIFIER),
        )
        .await,
    );
}

#[tokio::test]
async fn rfc9700_5_a_code_whose_sso_session_ended_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;
    let code = op.code(&params(&rp), &sso).await;
    op.sign_out(&sso).await;
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Refresh: rotation, reuse, scope, ID tokens, the end of the SSO session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rfc9700_2_asvs5_10_4_5_rotation_and_a_retry_within_the_grace_get_one_successor() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();

    op.advance(Duration::from_secs(5));
    let second = op.refresh(&rp, &rt1, None).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();
    assert_ne!(rt2, rt1, "rotated");
    assert_ne!(second.access_token, tokens.access_token);
    assert_eq!(second.scope, "openid profile");

    // The answer was lost; the client retries with the old token within the grace.
    op.advance(REFRESH_RETRY_GRACE - Duration::from_secs(1));
    let retried = op.refresh(&rp, &rt1, None).await.unwrap();
    assert_eq!(
        retried.refresh_token.as_deref(),
        Some(rt2.as_str()),
        "the same successor"
    );
    assert!(op.client_session(&retried).await.is_live());

    let third = op.refresh(&rp, &rt2, None).await.unwrap();
    let rt3 = third.refresh_token.clone().unwrap();
    assert!(rt3 != rt1 && rt3 != rt2);
    op.refresh(&rp, &rt3, None).await.unwrap();
}

#[tokio::test]
async fn rfc9700_2_asvs5_10_4_5_an_old_token_after_the_grace_ends_the_family_as_token_reuse() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    let second = op.refresh(&rp, &rt1, None).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();

    op.advance(REFRESH_RETRY_GRACE + Duration::from_secs(1));
    assert_invalid_grant(op.refresh(&rp, &rt1, None).await);

    let session = op.client_session(&second).await;
    assert_eq!(ended_reason(&session), Some(EndReason::TokenReuse));
    assert_invalid_grant(op.refresh(&rp, &rt2, None).await);
    assert_eq!(op.introspect(&rp, &rt2).await, inactive());
    assert_eq!(op.introspect(&rp, &second.access_token).await, inactive());
}

#[tokio::test]
async fn rfc9700_2_an_old_token_after_its_successor_was_used_is_reuse_even_within_the_grace() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    let rt2 = op
        .refresh(&rp, &rt1, None)
        .await
        .unwrap()
        .refresh_token
        .unwrap();
    op.advance(Duration::from_secs(2));
    let third = op.refresh(&rp, &rt2, None).await.unwrap();
    let rt3 = third.refresh_token.clone().unwrap();
    op.advance(Duration::from_secs(2));

    assert_invalid_grant(op.refresh(&rp, &rt1, None).await);
    let session = op.client_session(&third).await;
    assert_eq!(ended_reason(&session), Some(EndReason::TokenReuse));
    assert_invalid_grant(op.refresh(&rp, &rt3, None).await);
}

#[tokio::test]
async fn rfc9700_4_a_refresh_cannot_widen_the_scope() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    for wider in ["openid profile email", "email", "openid offline_access"] {
        let error = op.refresh(&rp, &rt1, Some(wider)).await.unwrap_err();
        assert_eq!(error.error, "invalid_scope", "{wider}: {error}");
    }
    // The refused request used nothing up; a narrower one is granted as asked.
    let narrower = op.refresh(&rp, &rt1, Some("openid")).await.unwrap();
    assert_eq!(narrower.scope, "openid");
    assert_eq!(op.access(&narrower).scope, "openid");
    assert!(narrower.id_token.is_some());
}

#[tokio::test]
async fn oidc_core_13_an_id_token_from_a_refresh_keeps_the_original_auth_time_and_has_no_nonce() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let sso = op.sign_in().await;
    op.advance(Duration::from_secs(30));
    let code = op.code(&params(&rp), &sso).await;
    let tokens = op
        .exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    let original = op.id_token(&tokens);
    assert_eq!(original.nonce.as_deref(), Some(NONCE));

    op.advance(Duration::from_secs(120));
    let refreshed = op
        .refresh(&rp, tokens.refresh_token.as_deref().unwrap(), None)
        .await
        .unwrap();
    let id = op.id_token(&refreshed);
    assert_eq!(id.iss, original.iss);
    assert_eq!(id.sub, original.sub);
    assert_eq!(id.aud, original.aud);
    assert_eq!(id.sid, original.sid);
    assert_eq!(id.auth_time, original.auth_time);
    assert_eq!(id.auth_time, secs(sso.session.authenticated_at));
    assert_eq!(id.iat, secs(op.now()));
    assert!(id.iat > original.iat);
    assert_eq!(id.nonce, None);
    assert_eq!(
        id.at_hash.as_deref(),
        Some(token_hash_claim(SigningAlg::Es256, &refreshed.access_token).as_str())
    );
    assert_eq!(op.access(&refreshed).auth_time, original.auth_time);
}

#[tokio::test]
async fn rfc9700_5_oidc_bcl_13_signing_out_of_the_sso_session_ends_the_refresh_tokens() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let rt = tokens.refresh_token.clone().unwrap();
    op.sign_out(&sso).await;

    assert_invalid_grant(op.refresh(&rp, &rt, None).await);
    assert_invalid_grant(op.refresh(&rp, &rt, None).await);
    let session = op.client_session(&tokens).await;
    assert_eq!(ended_reason(&session), Some(EndReason::ParentEnded));
    assert_eq!(op.introspect(&rp, &tokens.access_token).await, inactive());
    assert_eq!(op.introspect(&rp, &rt).await, inactive());
}

#[tokio::test]
async fn oidc_core_12_a_refresh_token_of_another_client_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let other = op.public_client("other").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt = tokens.refresh_token.clone().unwrap();
    assert_invalid_grant(op.refresh(&other, &rt, None).await);
    assert_invalid_grant(op.refresh(&rp, "pcr_not-a-refresh-token", None).await);
    // Still the owner's.
    op.refresh(&rp, &rt, None).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. Introspection, userinfo, revocation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rfc7662_3_4_tokens_are_active_only_to_their_own_client() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let other = op.confidential_client("other").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let rt = tokens.refresh_token.clone().unwrap();

    let active = op.introspect(&rp, &tokens.access_token).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], rp.id());
    assert_eq!(active["sub"], op.user.id.as_str());
    assert_eq!(active["scope"], "openid profile");
    assert_eq!(active["iss"], ISSUER);
    // RFC 7662 §2.2: the type of RFC 6749 §5.1, and the person's human-readable name.
    assert_eq!(active["token_type"], "Bearer");
    assert_eq!(active["username"], op.user.username.as_str());
    assert_eq!(active["sid"], sso.session.id.as_str());
    assert_eq!(active["exp"], op.access(&tokens).exp);

    let refresh = op.introspect(&rp, &rt).await;
    assert_eq!(refresh["active"], true, "{refresh}");
    assert_eq!(refresh["token_type"], "refresh_token");
    assert_eq!(refresh["username"], op.user.username.as_str());
    assert_eq!(refresh["client_id"], rp.id());
    assert_eq!(refresh["sub"], op.user.id.as_str());
    assert_eq!(refresh["scope"], "openid profile");

    // RFC7662-4: another client, an ID token, garbage: exactly {"active": false}.
    assert_eq!(
        op.introspect(&other, &tokens.access_token).await,
        inactive()
    );
    assert_eq!(op.introspect(&other, &rt).await, inactive());
    assert_eq!(
        op.introspect(&rp, tokens.id_token.as_deref().unwrap())
            .await,
        inactive()
    );
    assert_eq!(op.introspect(&rp, "not a token").await, inactive());
    assert_eq!(op.introspect(&rp, "pcr_AAAA").await, inactive());

    // Expired: exactly inactive too.
    op.advance(Duration::from_secs(301));
    assert_eq!(op.introspect(&rp, &tokens.access_token).await, inactive());
}

#[tokio::test]
async fn rfc7662_5_tokens_of_an_ended_or_rotated_grant_are_inactive_at_once() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    let second = op.refresh(&rp, &rt1, None).await.unwrap();
    assert_eq!(op.introspect(&rp, &rt1).await, inactive(), "rotated");
    let rt2 = second.refresh_token.clone().unwrap();
    assert_eq!(op.introspect(&rp, &rt2).await["active"], true);
    assert_eq!(
        op.introspect(&rp, &second.access_token).await["active"],
        true
    );

    let ses = PublicId::from_string(op.access(&second).ses);
    op.engine
        .end(&ses, EndReason::Logout, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(op.introspect(&rp, &second.access_token).await, inactive());
    assert_eq!(op.introspect(&rp, &tokens.access_token).await, inactive());
    assert_eq!(op.introspect(&rp, &rt2).await, inactive());
    assert_eq!(
        op.provider.userinfo(&second.access_token).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn rfc7009_6_a_revoked_refresh_token_is_refused_and_inactive_at_once() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt = tokens.refresh_token.clone().unwrap();

    op.provider.revoke(&rp.app, &rt).await.unwrap();
    assert_invalid_grant(op.refresh(&rp, &rt, None).await);
    assert_eq!(op.introspect(&rp, &rt).await, inactive());
    // RFC7009-3: the access tokens of the grant go with it.
    assert_eq!(op.introspect(&rp, &tokens.access_token).await, inactive());
    assert_eq!(
        ended_reason(&*op.client_session(&tokens).await),
        Some(EndReason::Logout)
    );
    // RFC7009-4: revoking again, or revoking garbage, is answered the same.
    op.provider.revoke(&rp.app, &rt).await.unwrap();
    op.provider.revoke(&rp.app, "not a token").await.unwrap();
}

#[tokio::test]
async fn rfc7009_2_another_clients_tokens_are_not_revoked() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let other = op.confidential_client("other").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt = tokens.refresh_token.clone().unwrap();

    op.provider.revoke(&other.app, &rt).await.unwrap();
    op.provider
        .revoke(&other.app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(
        op.introspect(&rp, &tokens.access_token).await["active"],
        true
    );
    assert!(op.client_session(&tokens).await.is_live());
    op.refresh(&rp, &rt, None).await.unwrap();
}

#[tokio::test]
async fn rfc7009_3_revoking_an_access_token_ends_its_grant() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    op.provider
        .revoke(&rp.app, &tokens.access_token)
        .await
        .unwrap();
    assert_eq!(op.introspect(&rp, &tokens.access_token).await, inactive());
    assert_invalid_grant(
        op.refresh(&rp, tokens.refresh_token.as_deref().unwrap(), None)
            .await,
    );
}

#[tokio::test]
async fn oidc_core_5_3_userinfo_answers_the_granted_scopes_claims() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let info = op
        .provider
        .userinfo(&tokens.access_token)
        .await
        .unwrap()
        .expect("a live token");
    assert_eq!(info["sub"], op.user.id.as_str());
    assert_eq!(info["preferred_username"], "alice");

    // openid alone: the subject and nothing of the profile.
    let code = op
        .code(
            &AuthorizationParams {
                scope: Some("openid".into()),
                ..params(&rp)
            },
            &sso,
        )
        .await;
    let bare = op
        .exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    let info = op
        .provider
        .userinfo(&bare.access_token)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info, json!({ "sub": op.user.id }));

    // Not for an ID token, nor for something that is not ours.
    assert_eq!(
        op.provider
            .userinfo(tokens.id_token.as_deref().unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(op.provider.userinfo("garbage").await.unwrap(), None);
}

#[tokio::test]
async fn asvs5_9_2_1_userinfo_refuses_an_expired_access_token() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    op.advance(Duration::from_secs(299));
    assert!(
        op.provider
            .userinfo(&tokens.access_token)
            .await
            .unwrap()
            .is_some()
    );
    op.advance(Duration::from_secs(2));
    assert_eq!(
        op.provider.userinfo(&tokens.access_token).await.unwrap(),
        None
    );
    // The session itself is still live: only the token expired.
    assert!(op.client_session(&tokens).await.is_live());
}

// ---------------------------------------------------------------------------------------------
// 6. Client authentication
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_invalid_client(result: Result<(Application, Client), ProviderOr<TokenError>>) {
    let error = protocol(result);
    assert_eq!(error.error, "invalid_client");
    assert!(error.is_client_authentication());
}

#[tokio::test]
async fn asvs5_10_4_10_a_confidential_client_authenticates_with_its_secret_only() {
    let op = Op::new().await;
    let rp = op.confidential_client("api").await;
    let other = op.confidential_client("other").await;
    let (app, client) = op
        .authenticate(Some(rp.id()), &rp.credentials)
        .await
        .unwrap();
    assert_eq!(app.id, rp.app.id);
    assert_eq!(Some(&client), rp.app.client.as_ref());

    let wrong = Token::generate(TokenKind::ClientSecret, &*op.random);
    for credentials in [
        ClientCredentials::Secret(wrong.expose().to_owned()),
        ClientCredentials::Secret("not-a-secret".into()),
        ClientCredentials::Secret(String::new()),
        other.credentials.clone(),
        ClientCredentials::None,
        ClientCredentials::Assertion("a.b.c".into()),
    ] {
        assert_invalid_client(op.authenticate(Some(rp.id()), &credentials).await);
    }
    // The right secret under another or no client id.
    assert_invalid_client(op.authenticate(None, &rp.credentials).await);
    assert_invalid_client(op.authenticate(Some(other.id()), &rp.credentials).await);
    assert_invalid_client(op.authenticate(Some("app_nobody"), &rp.credentials).await);
}

#[tokio::test]
async fn asvs5_10_4_10_a_public_client_presenting_a_secret_is_invalid_client() {
    let op = Op::new().await;
    let public = op.public_client("spa").await;
    let confidential = op.confidential_client("api").await;
    let provider = &op.provider;
    let (app, _) = provider
        .authenticate_client(Some(public.id()), &ClientCredentials::None, TOKEN_ENDPOINT)
        .await
        .unwrap();
    assert_eq!(app.id, public.app.id);
    for credentials in [
        confidential.credentials.clone(),
        ClientCredentials::Secret("anything".into()),
    ] {
        assert_invalid_client(
            provider
                .authenticate_client(Some(public.id()), &credentials, TOKEN_ENDPOINT)
                .await,
        );
    }
}

/// A client's ES256 key pair: the private half to sign assertions with, the public half as
/// the JWK Set it registers.
struct ClientKey {
    kid: String,
    key: EncodingKey,
    jwks: String,
}

fn client_key(random: &SeededRandom, now: Timestamp) -> ClientKey {
    let ring = Keyring::parse(&[Keyring::generate_entry("client", random)]).unwrap();
    let made = generate_signing_key(SigningAlg::Es256, &ring, random, now);
    let der = STANDARD
        .decode(ring.open(&made.sealed_private, &made.kid).unwrap())
        .unwrap();
    ClientKey {
        kid: made.kid,
        key: EncodingKey::from_ec_der(&der),
        jwks: format!(r#"{{"keys":[{}]}}"#, made.public_jwk),
    }
}

fn assertion(key: &ClientKey, claims: &Value) -> ClientCredentials {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    ClientCredentials::Assertion(jsonwebtoken::encode(&header, claims, &key.key).unwrap())
}

/// The claims of a client assertion, each with a `jti` of its own (an assertion is used once).
fn assertion_claims(client: &AppId, aud: Value, now: Timestamp, lifetime: i64) -> Value {
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({
        "iss": client.as_str(),
        "sub": client.as_str(),
        "aud": aud,
        "iat": secs(now),
        "exp": secs(now) + lifetime,
        "jti": format!("jti-{n}"),
    })
}

#[tokio::test]
async fn asvs5_10_4_16_a_private_key_jwt_assertion_by_a_registered_key_authenticates() {
    let op = Op::new().await;
    let key = client_key(&op.random, op.now());
    let stranger = client_key(&op.random, op.now());
    let rp = op
        .register_with(
            "signed",
            registration(ClientAuth::PrivateKeyJwt {
                jwks: key.jwks.clone(),
            }),
            ClientCredentials::None,
        )
        .await;
    let other = op.public_client("other").await;
    let provider = &op.provider;
    let now = op.now();

    // The token endpoint or the issuer as audience, alone or among others; the client named
    // or learnt from the assertion.
    for aud in [
        json!(TOKEN_ENDPOINT),
        json!(ISSUER),
        json!(["https://elsewhere.example", TOKEN_ENDPOINT]),
    ] {
        for id in [Some(rp.id()), None] {
            let signed = assertion(&key, &assertion_claims(&rp.app.id, aud.clone(), now, 60));
            let (app, _) = provider
                .authenticate_client(id, &signed, TOKEN_ENDPOINT)
                .await
                .unwrap_or_else(|e| panic!("aud {aud} id {id:?}: {e:?}"));
            assert_eq!(app.id, rp.app.id);
        }
    }

    // A wrong audience.
    for aud in [
        json!("https://other.example/oauth2/token"),
        json!(format!("{ISSUER}/")),
        json!([]),
        Value::Null,
    ] {
        let signed = assertion(&key, &assertion_claims(&rp.app.id, aud.clone(), now, 60));
        assert_invalid_client(
            provider
                .authenticate_client(Some(rp.id()), &signed, TOKEN_ENDPOINT)
                .await,
        );
    }
    // Signed by a key the client did not register.
    let forged = assertion(
        &stranger,
        &assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60),
    );
    assert_invalid_client(
        provider
            .authenticate_client(Some(rp.id()), &forged, TOKEN_ENDPOINT)
            .await,
    );
    // Claiming to be another client, or presented for one.
    let mut claims = assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60);
    claims["sub"] = json!(other.id());
    assert_invalid_client(
        provider
            .authenticate_client(Some(rp.id()), &assertion(&key, &claims), TOKEN_ENDPOINT)
            .await,
    );
    let good = assertion(
        &key,
        &assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60),
    );
    assert_invalid_client(
        provider
            .authenticate_client(Some(other.id()), &good, TOKEN_ENDPOINT)
            .await,
    );
    // No exp at all.
    let mut claims = assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60);
    claims.as_object_mut().unwrap().remove("exp");
    assert_invalid_client(
        provider
            .authenticate_client(Some(rp.id()), &assertion(&key, &claims), TOKEN_ENDPOINT)
            .await,
    );
    // JWTBCP-1: an HMAC keyed with the registered public key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let confused = jsonwebtoken::encode(
        &header,
        &assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60),
        &EncodingKey::from_secret(key.jwks.as_bytes()),
    )
    .unwrap();
    assert_invalid_client(
        provider
            .authenticate_client(
                Some(rp.id()),
                &ClientCredentials::Assertion(confused),
                TOKEN_ENDPOINT,
            )
            .await,
    );
    // A secret or nothing instead of an assertion.
    for credentials in [
        ClientCredentials::None,
        ClientCredentials::Secret("x".into()),
    ] {
        assert_invalid_client(
            provider
                .authenticate_client(Some(rp.id()), &credentials, TOKEN_ENDPOINT)
                .await,
        );
    }

    // Expired: the clock moves past its exp.
    op.advance(Duration::from_secs(61));
    assert_invalid_client(
        provider
            .authenticate_client(Some(rp.id()), &good, TOKEN_ENDPOINT)
            .await,
    );
}

// ---------------------------------------------------------------------------------------------
// More of the same standards: idle and absolute limits, acr_values, reuse whatever the scope,
// assertions not valid yet
// ---------------------------------------------------------------------------------------------

impl Op {
    /// The person using Portcullis's pages with the SSO session (activity at the OP).
    async fn browse(&self, sso: &Issued) {
        self.engine
            .validate(
                sso.token.expose(),
                true,
                &Default::default(),
                &Principal::portcullis(Actor::system()),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn rfc9700_6_a_refresh_token_unused_for_the_idle_limit_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();

    // Used within the 15-minute idle limit, it keeps working.
    op.advance(Duration::from_secs(14 * 60));
    op.browse(&sso).await;
    let second = op.refresh(&rp, &rt1, None).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();

    // Unused past it (the person still active at Portcullis), it is refused.
    for _ in 0..4 {
        op.advance(Duration::from_secs(4 * 60));
        op.browse(&sso).await;
    }
    assert_invalid_grant(op.refresh(&rp, &rt2, None).await);
    let session = op.client_session(&second).await;
    assert_eq!(ended_reason(&session), Some(EndReason::ExpiredIdle));
    assert_eq!(op.introspect(&rp, &rt2).await, inactive());
}

#[tokio::test]
async fn asvs5_10_4_8_refresh_tokens_end_at_the_absolute_limit_however_often_they_are_used() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let absolute = op.client_session(&tokens).await.absolute.at;
    let mut rt = tokens.refresh_token.clone().unwrap();
    let step = Duration::from_secs(10 * 60);
    while op.now().plus(step) < absolute {
        op.advance(step);
        op.browse(&sso).await;
        let next = op.refresh(&rp, &rt, None).await.unwrap();
        rt = next.refresh_token.unwrap();
    }
    op.advance(step);
    assert!(op.now() >= absolute);
    assert_invalid_grant(op.refresh(&rp, &rt, None).await);
    assert_eq!(op.introspect(&rp, &rt).await, inactive());
}

#[tokio::test]
async fn oidc_core_8_acr_values_asks_one_more_sign_in_then_answers_the_sessions_level() {
    let op = Op::new().await;
    let rp = op.public_client("web").await;
    let sso = op.sign_in().await;
    op.advance(Duration::from_secs(1));
    let stronger = AuthorizationParams {
        acr_values: Some("aal2".into()),
        ..params(&rp)
    };
    let request = op.check(&stronger).await;
    assert_eq!(request.acr_values, ["aal2"]);
    assert_eq!(op.decide(&request, &sso).await, Decision::SignIn);
    // acr_values is a wish, not a condition: after the sign-in, the level reached is answered.
    op.advance(Duration::from_secs(1));
    let again = op.sign_in().await;
    assert_eq!(op.decide(&request, &again).await, Decision::Issue);
    let url = op
        .provider
        .issue_code(&request, &again.session)
        .await
        .unwrap();
    let tokens = op
        .exchange(&rp, &query(&url)["code"], Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    assert_eq!(op.id_token(&tokens).acr.as_deref(), Some("aal1"));
}

#[tokio::test]
async fn rfc9700_2_an_already_used_token_is_reuse_whatever_scope_it_asks() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    let second = op.refresh(&rp, &rt1, None).await.unwrap();
    let rt2 = second.refresh_token.clone().unwrap();
    op.advance(REFRESH_RETRY_GRACE + Duration::from_secs(1));

    // The thief replays the used token; whatever else the request says, it is reuse.
    let error = op
        .refresh(&rp, &rt1, Some("openid profile email"))
        .await
        .unwrap_err();
    assert_eq!(error.error, "invalid_grant", "{error}");
    assert_eq!(
        ended_reason(&*op.client_session(&second).await),
        Some(EndReason::TokenReuse)
    );
    assert_invalid_grant(op.refresh(&rp, &rt2, None).await);
}

#[tokio::test]
async fn asvs5_9_2_1_rfc7523_3_a_client_assertion_not_valid_yet_is_refused() {
    let op = Op::new().await;
    let key = client_key(&op.random, op.now());
    let rp = op
        .register_with(
            "signed",
            registration(ClientAuth::PrivateKeyJwt {
                jwks: key.jwks.clone(),
            }),
            ClientCredentials::None,
        )
        .await;
    let now = op.now();
    let mut claims = assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 3660);
    claims["nbf"] = json!(secs(now) + 3600);
    assert_invalid_client(
        op.authenticate(Some(rp.id()), &assertion(&key, &claims))
            .await,
    );
    // Once it is valid, it authenticates.
    op.advance(Duration::from_secs(3600));
    op.authenticate(Some(rp.id()), &assertion(&key, &claims))
        .await
        .unwrap();
}

#[tokio::test]
async fn oidc_core_9_a_client_assertion_is_used_once_names_a_jti_and_expires_within_five_minutes() {
    let op = Op::new().await;
    let key = client_key(&op.random, op.now());
    let rp = op
        .register_with(
            "signed",
            registration(ClientAuth::PrivateKeyJwt {
                jwks: key.jwks.clone(),
            }),
            ClientCredentials::None,
        )
        .await;
    let now = op.now();
    let once = assertion(
        &key,
        &assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 300),
    );
    op.authenticate(Some(rp.id()), &once).await.unwrap();
    // Used once: the same assertion again is refused (a captured one cannot be replayed).
    assert_invalid_client(op.authenticate(Some(rp.id()), &once).await);
    // Valid for an hour: a bearer credential for an hour; refused.
    assert_invalid_client(
        op.authenticate(
            Some(rp.id()),
            &assertion(
                &key,
                &assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 3600),
            ),
        )
        .await,
    );
    let mut no_jti = assertion_claims(&rp.app.id, json!(TOKEN_ENDPOINT), now, 60);
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_invalid_client(
        op.authenticate(Some(rp.id()), &assertion(&key, &no_jti))
            .await,
    );
}

#[tokio::test]
async fn asvs5_7_3_1_nist3_9_a_refresh_after_the_sso_session_idled_out_is_invalid_grant() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let idle_deadline = sso.session.idle.as_ref().expect("an idle limit").at;
    let mut rt = tokens.refresh_token.clone().unwrap();
    // The client stays busy; the person does nothing more at Portcullis.
    while op.now().plus(Duration::from_secs(5 * 60)) < idle_deadline {
        op.advance(Duration::from_secs(5 * 60));
        rt = op
            .refresh(&rp, &rt, None)
            .await
            .unwrap()
            .refresh_token
            .unwrap();
    }
    op.advance(Duration::from_secs(6 * 60));
    assert!(op.now() > idle_deadline);

    // The client's activity is not the person's (NIST3-9): the SSO session has idled out, and
    // its children with it (design §1: ending the parent ends its children).
    assert_invalid_grant(op.refresh(&rp, &rt, None).await);
    let session = op.client_session(&tokens).await;
    assert_eq!(ended_reason(&session), Some(EndReason::ParentEnded));
}

const AFTER_LOGOUT: &str = "https://rp.example/signed-out";

/// A client that registered where to return after logout.
async fn client_with_logout_return(op: &Op, name: &str) -> Rp {
    let mut client = registration(ClientAuth::None);
    client.post_logout_redirect_uris = vec![AFTER_LOGOUT.to_owned()];
    op.register_with(name, client, ClientCredentials::None)
        .await
}

fn logout_refused<T: std::fmt::Debug>(result: Result<T, ProviderOr<LogoutError>>) -> LogoutError {
    protocol(result)
}

#[tokio::test]
async fn oidc_rpl_7_oidc_rpl_8_a_registered_return_with_our_id_token_keeps_state() {
    let op = Op::new().await;
    let rp = client_with_logout_return(&op, "rp").await;
    let (sso, tokens) = op.log_in(&rp).await;
    // Hints may be expired (OIDC-RPL-3): an hour later it still vouches.
    op.advance(Duration::from_secs(3600));
    let checked = op
        .provider
        .check_logout(&LogoutParams {
            id_token_hint: tokens.id_token.clone(),
            post_logout_redirect_uri: Some(AFTER_LOGOUT.to_owned()),
            state: Some("s t&=".to_owned()),
            ..LogoutParams::default()
        })
        .await
        .unwrap();
    assert_eq!(
        checked.redirect.as_deref(),
        Some("https://rp.example/signed-out?state=s+t%26%3D")
    );
    assert_eq!(checked.sid.as_ref(), Some(&sso.session.id));
    assert_eq!(checked.subject.as_deref(), Some(op.user.id.as_str()));
    assert_eq!(checked.client.as_ref(), Some(&rp.app.id));
}

#[tokio::test]
async fn oidc_rpl_7_without_an_id_token_nothing_vouches_for_a_redirect() {
    let op = Op::new().await;
    let rp = client_with_logout_return(&op, "rp").await;
    let checked = op
        .provider
        .check_logout(&LogoutParams {
            client_id: Some(rp.id().to_owned()),
            post_logout_redirect_uri: Some(AFTER_LOGOUT.to_owned()),
            ..LogoutParams::default()
        })
        .await
        .unwrap();
    assert_eq!(checked.redirect, None);
    assert_eq!(checked.client.as_ref(), Some(&rp.app.id));
    assert_eq!(checked.sid, None);
}

#[tokio::test]
async fn oidc_rpl_4_oidc_rpl_9_mismatched_or_foreign_requests_are_refused_without_redirect() {
    let op = Op::new().await;
    let rp = client_with_logout_return(&op, "rp").await;
    let other = client_with_logout_return(&op, "other").await;
    let (_, tokens) = op.log_in(&rp).await;
    let hint = tokens.id_token.clone();
    let check = |params: LogoutParams| {
        let provider = &op.provider;
        async move { provider.check_logout(&params).await }
    };
    logout_refused(
        check(LogoutParams {
            id_token_hint: hint.clone(),
            client_id: Some(other.id().to_owned()),
            ..LogoutParams::default()
        })
        .await,
    );
    logout_refused(
        check(LogoutParams {
            id_token_hint: hint.clone(),
            post_logout_redirect_uri: Some("https://rp.example/elsewhere".to_owned()),
            ..LogoutParams::default()
        })
        .await,
    );
    logout_refused(
        check(LogoutParams {
            post_logout_redirect_uri: Some(AFTER_LOGOUT.to_owned()),
            ..LogoutParams::default()
        })
        .await,
    );
    let mut forged = hint.clone().unwrap();
    forged.push('A');
    logout_refused(
        check(LogoutParams {
            id_token_hint: Some(forged),
            ..LogoutParams::default()
        })
        .await,
    );
    // An access token is not an ID token, though we signed it.
    logout_refused(
        check(LogoutParams {
            id_token_hint: Some(tokens.access_token.clone()),
            ..LogoutParams::default()
        })
        .await,
    );
    // Nothing named at all is a plain logout: accepted, no redirect (OIDC-RPL-10).
    let plain = check(LogoutParams::default()).await.unwrap();
    assert_eq!((plain.client, plain.redirect), (None, None));
}

#[tokio::test]
async fn rfc9700_10_a_replay_after_upkeep_still_ends_what_the_code_issued() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let sso = op.sign_in().await;
    let code = op.code(&params(&rp), &sso).await;
    let tokens = op
        .exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    // Past the code's lifetime, with the upkeep every node runs: the code is still remembered.
    op.advance(Duration::from_secs(120));
    op.provider.upkeep().await.unwrap();
    assert_invalid_grant(
        op.exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await,
    );
    assert_eq!(
        ended_reason(&*op.client_session(&tokens).await),
        Some(EndReason::TokenReuse),
        "the replay ended the session of the first redemption"
    );
}

#[tokio::test]
async fn oidc_core_7_an_id_token_hint_names_who_may_get_tokens() {
    let op = Op::new().await;
    let rp = op.public_client("spa").await;
    let other_rp = op.public_client("other").await;
    let (_, tokens) = op.log_in(&rp).await;
    let hint = tokens.id_token.clone().unwrap();

    // The hinted person signed in: the code is issued as usual, even once the hint expired.
    op.advance(Duration::from_secs(3600));
    let sso = op.sign_in().await;
    let hinted = AuthorizationParams {
        id_token_hint: Some(hint.clone()),
        prompt: Some("none".to_owned()),
        ..params(&rp)
    };
    let request = op.check(&hinted).await;
    assert_eq!(
        request.expected_subject.as_deref(),
        Some(op.user.id.as_str())
    );
    assert_eq!(op.decide(&request, &sso).await, Decision::Issue);

    // Someone else signed in in this browser: never their tokens.
    let stranger = op
        .engine
        .create(
            NewSession {
                subject: "usr_someone_else".to_owned(),
                policy: Some(SSO_POLICY.to_owned()),
                auth: AuthContext {
                    methods: vec!["pwd".to_owned()],
                    level: 1,
                },
                ..NewSession::default()
            },
            &Principal::portcullis(Actor::user("usr_someone_else")),
        )
        .await
        .unwrap();
    let silent = op.provider.decide(&request, Some(&stranger.session)).await;
    assert_redirected(&protocol(silent), "login_required");
    let mut interactive = request.clone();
    interactive.prompt.clear();
    assert!(matches!(
        protocol(
            op.provider
                .decide(&interactive, Some(&stranger.session))
                .await
        ),
        AuthorizeError::NoRedirect(_)
    ));

    // A hint issued to another client, or not ours at all, is refused.
    let foreign = AuthorizationParams {
        id_token_hint: Some(hint.clone()),
        ..params(&other_rp)
    };
    assert_redirected(&op.check_error(&foreign).await, "invalid_request");
    let forged = AuthorizationParams {
        id_token_hint: Some(format!("{hint}x")),
        ..params(&rp)
    };
    assert_redirected(&op.check_error(&forged).await, "invalid_request");
}

// ---------------------------------------------------------------------------------------------
// Back-channel logout: deliveries of every ending, their tokens and their retries
// ---------------------------------------------------------------------------------------------

const BACK_CHANNEL: &str = "https://rp.example/backchannel-logout";

/// A [`LogoutSender`] that records every post and answers each with the next of `answers`
/// (the last one again once they run out).
#[derive(Default)]
struct RecordingSender {
    answers: std::sync::Mutex<Vec<PostOutcome>>,
    posts: std::sync::Mutex<Vec<LogoutPost>>,
}

impl RecordingSender {
    fn answering(answers: &[PostOutcome]) -> Self {
        let mut answers = answers.to_vec();
        answers.reverse();
        Self {
            answers: std::sync::Mutex::new(answers),
            ..Self::default()
        }
    }

    fn posts(&self) -> Vec<LogoutPost> {
        self.posts.lock().unwrap().clone()
    }
}

impl LogoutSender for RecordingSender {
    fn post_all(&self, posts: Vec<LogoutPost>) -> PostFuture<'_> {
        let mut answers = self.answers.lock().unwrap();
        let outcomes = posts
            .iter()
            .map(|_| {
                if answers.len() > 1 {
                    answers.pop().unwrap()
                } else {
                    answers.last().cloned().unwrap_or(PostOutcome::Status(200))
                }
            })
            .collect();
        self.posts.lock().unwrap().extend(posts);
        Box::pin(async move { outcomes })
    }
}

/// A public client that registered [`BACK_CHANNEL`].
async fn back_channel_client(op: &Op, name: &str) -> Rp {
    let mut client = registration(ClientAuth::None);
    client.backchannel_logout_uri = Some(BACK_CHANNEL.to_owned());
    op.register_with(name, client, ClientCredentials::None)
        .await
}

impl Op {
    async fn deliver(&self, sender: &RecordingSender) -> DeliveryReport {
        self.provider
            .deliver_logouts(sender, &DeliverySettings::default())
            .await
            .unwrap()
    }

    async fn delivery_of(&self, session: &Session) -> Option<LogoutDelivery> {
        self.provider
            .stores()
            .deliveries
            .delivery(&session.id)
            .await
            .unwrap()
    }

    /// The logout token of `post`, verified with the provider's keys, as JSON.
    fn logout_claims(&self, post: &LogoutPost) -> Value {
        self.provider
            .keys()
            .verify::<Value>(&post.logout_token, LOGOUT_TOKEN_TYPE)
            .unwrap()
    }
}

#[tokio::test]
async fn oidc_bcl_3_to_9_a_sign_out_reaches_the_client_as_a_signed_logout_token() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "bcl").await;
    let plain = op.public_client("plain").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let code = op.code(&params(&plain), &sso).await;
    op.exchange(&plain, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    let id_token = op.id_token(&tokens);
    let session = op.client_session(&tokens).await;
    op.advance(Duration::from_secs(30));
    op.sign_out(&sso).await;

    let sender = RecordingSender::default();
    let report = op.deliver(&sender).await;
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 1,
            ..DeliveryReport::default()
        },
        "the client without a back-channel URI is not told"
    );
    let posts = sender.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].uri, BACK_CHANNEL);
    let header = jsonwebtoken::decode_header(&posts[0].logout_token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"), "OIDC-BCL-7");
    assert_eq!(
        header.alg,
        Algorithm::ES256,
        "OIDC-BCL-6: signed as ID tokens are"
    );
    let claims = op.logout_claims(&posts[0]);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], rp.id());
    assert_eq!(claims["sub"], op.user.id.as_str());
    assert_eq!(
        claims["sid"],
        id_token.sid.as_str(),
        "OIDC-BCL-4: the ID token's sid"
    );
    assert_eq!(
        claims["events"],
        json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
        "OIDC-BCL-3"
    );
    assert!(claims.get("nonce").is_none(), "OIDC-BCL-5");
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(iat, secs(op.now()));
    let lifetime = claims["exp"].as_i64().unwrap() - iat;
    assert!((1..=120).contains(&lifetime), "OIDC-BCL-8: {lifetime}");
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    let delivery = op.delivery_of(&session).await.unwrap();
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.reason, EndReason::ParentEnded);
    assert_eq!(delivery.attempts, 1);
    let delivered = op
        .engine
        .events(
            &portcullis_core::EventQuery {
                session_id: Some(session.id.clone()),
                limit: 100,
                ..portcullis_core::EventQuery::default()
            },
            false,
            &Principal::operator(),
        )
        .await
        .unwrap();
    assert!(
        delivered
            .iter()
            .any(|e| e.kind == EventKind::LogoutDelivered),
        "each attempt is audited: {delivered:?}"
    );
    assert_eq!(op.deliver(&sender).await, DeliveryReport::default());
    assert_eq!(sender.posts().len(), 1, "delivered once");
}

#[tokio::test]
async fn oidc_bcl_10_a_5xx_or_no_answer_is_retried_with_back_off_and_a_400_is_not() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "flaky").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let session = op.client_session(&tokens).await;
    op.sign_out(&sso).await;

    let sender = RecordingSender::answering(&[
        PostOutcome::Status(503),
        PostOutcome::Unreachable("connection refused".into()),
        PostOutcome::Status(204),
    ]);
    assert_eq!(op.deliver(&sender).await.retried, 1);
    let after_first = op.delivery_of(&session).await.unwrap();
    assert_eq!(after_first.state, DeliveryState::Pending);
    assert_eq!(after_first.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(
        after_first.next_attempt_at,
        op.now().plus(Duration::from_secs(10))
    );
    // Not before its time.
    op.advance(Duration::from_secs(9));
    assert_eq!(op.deliver(&sender).await, DeliveryReport::default());
    op.advance(Duration::from_secs(1));
    assert_eq!(op.deliver(&sender).await.retried, 1);
    // Three times longer after the second failure.
    op.advance(Duration::from_secs(29));
    assert_eq!(op.deliver(&sender).await, DeliveryReport::default());
    op.advance(Duration::from_secs(1));
    assert_eq!(
        op.deliver(&sender).await.delivered,
        1,
        "204 counts as success"
    );
    let posts = sender.posts();
    assert_eq!(posts.len(), 3);
    let jtis: BTreeSet<String> = posts
        .iter()
        .map(|p| op.logout_claims(p)["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        jtis.len(),
        1,
        "every attempt names the same logout, so a repeat is seen"
    );
    assert_eq!(op.delivery_of(&session).await.unwrap().attempts, 3);

    // A 400 is the client's refusal: not retried.
    let (sso, tokens) = op.log_in(&rp).await;
    let refused = op.client_session(&tokens).await;
    op.sign_out(&sso).await;
    let sender = RecordingSender::answering(&[PostOutcome::Status(400)]);
    assert_eq!(op.deliver(&sender).await.failed, 1);
    op.advance(Duration::from_secs(3600));
    assert_eq!(op.deliver(&sender).await, DeliveryReport::default());
    assert_eq!(sender.posts().len(), 1);
    let failed = op.delivery_of(&refused).await.unwrap();
    assert_eq!(
        (failed.state, failed.last_error.as_deref()),
        (DeliveryState::Failed, Some("HTTP 400"))
    );
}

#[tokio::test]
async fn oidc_bcl_10_a_client_down_for_a_day_is_given_up() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "down").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let session = op.client_session(&tokens).await;
    op.sign_out(&sso).await;
    let sender = RecordingSender::answering(&[PostOutcome::Unreachable("timed out".into())]);
    let mut rounds = 0;
    loop {
        let report = op.deliver(&sender).await;
        if report.failed == 1 {
            break;
        }
        rounds += 1;
        assert!(rounds < 100, "attempts go on no longer than a day");
        op.advance(Duration::from_secs(3600));
    }
    let failed = op.delivery_of(&session).await.unwrap();
    assert_eq!(failed.state, DeliveryState::Failed);
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("given up after")),
        "{failed:?}"
    );
    let waits: u64 = (1..failed.attempts)
        .map(|n| DeliverySettings::default().retry_delay(n).as_secs())
        .sum();
    assert!(waits <= 86_400, "{waits}");
}

#[tokio::test]
async fn oidc_bcl_every_way_a_client_session_ends_is_delivered() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "every").await;
    let sender = RecordingSender::default();

    // Token reuse ends the family and its session (RFC 9700 §4.14.2).
    let (_sso, tokens) = op.log_in(&rp).await;
    let rt1 = tokens.refresh_token.clone().unwrap();
    op.refresh(&rp, &rt1, None).await.unwrap();
    op.advance(REFRESH_RETRY_GRACE + Duration::from_secs(1));
    assert_invalid_grant(op.refresh(&rp, &rt1, None).await);
    let reused = op.client_session(&tokens).await;

    // An operator's revocation of the client's session.
    let (_sso, tokens) = op.log_in(&rp).await;
    let revoked = op.client_session(&tokens).await;
    op.engine
        .revoke(&revoked.id, &Principal::operator())
        .await
        .unwrap();

    // The SSO session's idle timeout, noticed by the sweeper.
    let (_sso, tokens) = op.log_in(&rp).await;
    let idled = op.client_session(&tokens).await;
    op.advance(Duration::from_secs(24 * 3600));
    op.engine.sweep().await.unwrap();

    let report = op.deliver(&sender).await;
    assert_eq!(report.delivered, 3, "{report:?}");
    for (session, reason) in [
        (&reused, EndReason::TokenReuse),
        (&revoked, EndReason::RevokedAdmin),
        (&idled, EndReason::ParentEnded),
    ] {
        let delivery = op.delivery_of(session).await.unwrap();
        assert_eq!(
            (delivery.reason, delivery.state),
            (reason, DeliveryState::Delivered)
        );
    }

    // The application removed: its sessions end with it, and the ending still reaches the URI
    // it had registered.
    let (_sso, tokens) = op.log_in(&rp).await;
    let removed = op.client_session(&tokens).await;
    op.engine
        .remove_application(rp.id(), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(op.deliver(&sender).await.delivered, 1);
    assert_eq!(sender.posts().last().unwrap().uri, BACK_CHANNEL);
    assert_eq!(
        op.delivery_of(&removed).await.unwrap().reason,
        EndReason::AppRemoved
    );
}

#[tokio::test]
async fn oidc_bcl_a_client_that_withdrew_its_back_channel_uri_is_not_posted_to() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "withdrawn").await;
    let (sso, tokens) = op.log_in(&rp).await;
    let session = op.client_session(&tokens).await;
    op.engine
        .register_client(rp.id(), Some(registration(ClientAuth::None)), &Actor::cli())
        .await
        .unwrap();
    op.sign_out(&sso).await;
    let sender = RecordingSender::default();
    assert_eq!(op.deliver(&sender).await.failed, 1);
    assert!(sender.posts().is_empty());
    assert_eq!(
        op.delivery_of(&session)
            .await
            .unwrap()
            .last_error
            .as_deref(),
        Some("the client no longer has a back-channel logout URI")
    );
}

// ---------------------------------------------------------------------------------------------
// Offline grants (offline_access): they outlive the sign-out, on lifetimes of their own
// ---------------------------------------------------------------------------------------------

impl Op {
    /// Signs in, consents to `openid offline_access` for `rp` and redeems the code.
    async fn log_in_offline(&self, rp: &Rp) -> (Issued, TokenResponse) {
        let sso = self.sign_in().await;
        let offline = AuthorizationParams {
            scope: Some("openid offline_access".into()),
            ..params(rp)
        };
        let request = self.check(&offline).await;
        self.provider
            .consent_to(&request, &self.user.id)
            .await
            .unwrap();
        let code = self.code(&offline, &sso).await;
        let tokens = self
            .exchange(rp, &code, Some(REDIRECT), Some(VERIFIER))
            .await
            .unwrap();
        (sso, tokens)
    }
}

#[tokio::test]
async fn oidc_core_11_oidc_bcl_13_an_offline_grant_outlives_the_sign_out_and_others_do_not() {
    let op = Op::new().await;
    let rp = back_channel_client(&op, "offline").await;
    let (sso, offline) = op.log_in_offline(&rp).await;
    let code = op.code(&params(&rp), &sso).await;
    let online = op
        .exchange(&rp, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    let session = op.client_session(&offline).await;
    assert_eq!(session.parent, None, "no child of the SSO session");
    assert_eq!(session.policy, portcullis_core::OFFLINE_POLICY);
    assert_eq!(
        op.id_token(&offline).sid,
        sso.session.id.as_str(),
        "its tokens still name the sign-in they came from"
    );

    op.sign_out(&sso).await;
    let sender = RecordingSender::default();
    assert_eq!(
        op.deliver(&sender).await.delivered,
        1,
        "the online session's ending reaches the client; the offline one has not ended"
    );
    assert_invalid_grant(
        op.refresh(&rp, online.refresh_token.as_deref().unwrap(), None)
            .await,
    );
    let renewed = op
        .refresh(&rp, offline.refresh_token.as_deref().unwrap(), None)
        .await
        .expect("the offline grant survives the sign-out");
    assert_eq!(op.access(&renewed).sid, sso.session.id.as_str());
    assert_eq!(
        op.introspect(&rp, renewed.refresh_token.as_deref().unwrap())
            .await["active"],
        true
    );
}

#[tokio::test]
async fn oidc_core_11_an_offline_grant_lives_by_its_own_idle_and_absolute_limits() {
    let op = Op::new().await;
    let rp = op.public_client("offline-limits").await;
    let (sso, tokens) = op.log_in_offline(&rp).await;
    let session = op.client_session(&tokens).await;
    op.sign_out(&sso).await;
    let mut refresh_token = tokens.refresh_token.clone().unwrap();
    // Used every 29 days, it lasts 90 days.
    for _ in 0..3 {
        op.advance(Duration::from_secs(29 * 86_400));
        let renewed = op.refresh(&rp, &refresh_token, None).await.unwrap();
        refresh_token = renewed.refresh_token.unwrap();
    }
    op.advance(Duration::from_secs(4 * 86_400));
    assert_invalid_grant(op.refresh(&rp, &refresh_token, None).await);
    let ended = op
        .engine
        .get(&session.id, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(ended_reason(&ended), Some(EndReason::ExpiredAbsolute));

    // Unused for 30 days, it is gone.
    let (_, tokens) = op.log_in_offline(&rp).await;
    op.advance(Duration::from_secs(30 * 86_400 + 1));
    assert_invalid_grant(
        op.refresh(&rp, tokens.refresh_token.as_deref().unwrap(), None)
            .await,
    );
    assert_eq!(
        ended_reason(&*op.client_session(&tokens).await),
        Some(EndReason::ExpiredIdle)
    );
}

#[tokio::test]
async fn oidc_bcl_6_an_rs256_client_gets_rs256_id_and_logout_tokens_even_once_removed() {
    let op = Op::signing_with(vec![SigningAlg::Es256, SigningAlg::Rs256]).await;
    let mut client = registration(ClientAuth::None);
    client.id_token_signed_response_alg = Some(SigningAlg::Rs256);
    client.backchannel_logout_uri = Some(BACK_CHANNEL.to_owned());
    let rs = op
        .register_with("legacy", client, ClientCredentials::None)
        .await;
    let es = op.public_client("modern").await;
    let alg_of = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().alg;

    let (sso, tokens) = op.log_in(&rs).await;
    assert_eq!(
        alg_of(tokens.id_token.as_deref().unwrap()),
        Algorithm::RS256
    );
    assert_eq!(
        op.id_token(&tokens).aud,
        rs.id(),
        "it verifies with the published RSA key"
    );
    let code = op.code(&params(&es), &sso).await;
    let other = op
        .exchange(&es, &code, Some(REDIRECT), Some(VERIFIER))
        .await
        .unwrap();
    assert_eq!(alg_of(other.id_token.as_deref().unwrap()), Algorithm::ES256);
    let jwks: Value = serde_json::from_str(op.provider.keys().jwks()).unwrap();
    let kinds: BTreeSet<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["EC", "RSA"]));

    op.sign_out(&sso).await;
    let sender = RecordingSender::default();
    op.deliver(&sender).await;
    let posts = sender.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        alg_of(&posts[0].logout_token),
        Algorithm::RS256,
        "as its ID tokens"
    );
    assert_eq!(op.logout_claims(&posts[0])["aud"], rs.id());

    // Removed, the client keeps no registration; its sessions' endings are still signed as
    // its ID tokens were.
    let (_sso, tokens) = op.log_in(&rs).await;
    let removed = op.client_session(&tokens).await;
    op.engine
        .remove_application(rs.id(), &Actor::cli())
        .await
        .unwrap();
    assert_eq!(op.deliver(&sender).await.delivered, 1);
    let post = sender.posts().pop().unwrap();
    assert_eq!(
        op.delivery_of(&removed).await.unwrap().reason,
        EndReason::AppRemoved
    );
    assert_eq!(
        alg_of(&post.logout_token),
        Algorithm::RS256,
        "as its ID tokens were"
    );
    assert_eq!(op.logout_claims(&post)["aud"], rs.id());
}
