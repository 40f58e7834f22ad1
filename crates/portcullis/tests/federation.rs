//! Federation over real loopback HTTP, without a browser: Portcullis signs people in through an
//! upstream OpenID Connect provider that this file runs in-process, an axum server with
//! discovery, a JWKS whose keys the test rotates, an authorization endpoint that answers at once
//! for the person the test chose (by redirect, or by an auto-submitting form for `form_post`),
//! a token endpoint that checks `client_secret_basic` and the PKCE verifier (S256) and answers
//! an ES256 ID token whose claims each case may tamper with, and logout tokens it posts to
//! Portcullis's back-channel logout endpoint.
//!
//! Portcullis runs in-process on the embedded SQLite store with a `ManualClock` started at the
//! real time, which the upstream reads too for its `iat` and `exp`; its federation is built as
//! `main.rs` builds it (`Upstream` answering at `{portcullis}/login/upstream/corp/callback`,
//! the `Outbound` client with loopback allowed, `Federation` over the store's identities and
//! replays), and for the cases of applications asking for a re-authentication with its OpenID
//! Connect provider on, whose clients the test registers by hand and redeems codes for. The
//! upstream's discovery names an end-session endpoint, where signing out upstream too goes.
//! Portcullis's cookies are `Secure` and `__Host-`: the test's browser keeps them itself and
//! sends them over plain HTTP, as a browser does to localhost, and follows redirects by hand,
//! sending Portcullis's cookies to Portcullis only.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::person::hidden;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openidconnect::url::{Url, form_urlencoded};
use openidconnect::{PkceCodeChallenge, PkceCodeVerifier};
use portcullis_core::oidc::{
    Client, ClientAuth, FederatedIdentity, GrantType, IdentityStore, ReplayStore,
};
use portcullis_core::{
    AccountError, Accounts, Actor, ApplicationChange, AuditEvent, AuthContext, Clock, EndReason,
    Engine, EventKind, EventQuery, Keyring, ManualClock, NoAuditSink, OsRandom, PORTCULLIS_APP,
    PolicySet, Principal, SSO_POLICY, Session, ThrottleStore, Timestamp, User, UserStore,
};
use portcullis_http::outbound::{Outbound, OutboundPolicy, ProviderAssertions};
use portcullis_http::peer::Peer;
use portcullis_http::ui::web::{Ui, UiSettings};
use portcullis_http::{AppState, Services, api_router};
use portcullis_oidc::{Provider, ProviderSettings, ProviderStores};
use portcullis_upstream::{
    ClaimMapping, Federation, Upstream, UpstreamClientAuth, UpstreamHttp, UpstreamLink,
    UpstreamSettings,
};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

type Store = portcullis_store_sqlite::SqliteStore;

/// The provider's id at Portcullis.
const PROVIDER: &str = "corp";
/// Portcullis's client id at the upstream.
const CLIENT_ID: &str = "portcullis-rp";
/// Portcullis's client secret at the upstream.
const CLIENT_SECRET: &str = "secret-of-portcullis-at-corp-0123456789";
/// The event a logout token carries.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Portcullis's SSO cookie.
const SESSION_COOKIE: &str = "__Host-portcullis";
/// The cookie holding the sealed request sent upstream.
const UPSTREAM_COOKIE: &str = "__Host-portcullis-upstream";
/// The sign-in form's double-submit CSRF cookie.
const LOGIN_CSRF_COOKIE: &str = "__Host-portcullis-csrf";
/// What the 400 page says of an answer that does not verify.
const NOT_VALID: &str = "is not valid here";

// ---------------------------------------------------------------------------------------
// The upstream identity provider.

/// One of the upstream's P-256 signing keys.
struct Key {
    kid: String,
    der: Vec<u8>,
    jwk: Jwk,
}

impl Key {
    fn generate(kid: &str) -> Arc<Self> {
        let pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
        let der = pair.serialize_der();
        let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_der(&der), Algorithm::ES256)
            .expect("its public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Arc::new(Self {
            kid: kid.to_owned(),
            der,
            jwk,
        })
    }

    /// A compact JWS of `claims`, ES256 with this key's `kid`, of type `typ`.
    fn sign(&self, typ: &str, claims: &Map<String, Value>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.der))
            .expect("signing")
    }
}

/// How the upstream signs its ID tokens.
#[derive(Clone)]
enum Signer {
    /// ES256 with this key (published or not).
    Key(Arc<Key>),
    /// HS256 with the client secret, an algorithm its discovery does not name.
    ClientSecret,
}

/// What the upstream's authorization answer says its issuer is (RFC 9207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssParameter {
    Correct,
    Another,
    Omitted,
}

/// An authorization code the upstream issued, and what redeeming it needs.
struct Grant {
    challenge: String,
    nonce: Option<String>,
    redirect_uri: String,
}

struct IdpState {
    /// The keys its JWKS lists.
    published: Vec<Arc<Key>>,
    signer: Signer,
    /// The claims of the person who signs in next (`sub` among them).
    person: Map<String, Value>,
    /// Claims of the next ID tokens replaced (`null`: removed).
    tamper: Map<String, Value>,
    iss: IssParameter,
    codes: HashMap<String, Grant>,
    /// Every authorization request, as its query said.
    authorizations: Vec<HashMap<String, String>>,
    jwks_fetches: usize,
    token_requests: usize,
    /// Why token requests were refused.
    refusals: Vec<String>,
    issued: u64,
    /// The token endpoint answers 500 with an HTML page, as a server in trouble does.
    token_outage: bool,
}

struct IdpShared {
    issuer: String,
    clock: Arc<ManualClock>,
    state: Mutex<IdpState>,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// The upstream identity provider this file runs.
#[derive(Clone)]
struct Idp(Arc<IdpShared>);

impl Idp {
    /// Starts it on a loopback port, signing with a first key, `key-1`.
    async fn start(clock: Arc<ManualClock>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let first = Key::generate("key-1");
        let idp = Self(Arc::new(IdpShared {
            issuer,
            clock,
            state: Mutex::new(IdpState {
                published: vec![first.clone()],
                signer: Signer::Key(first),
                person: Map::new(),
                tamper: Map::new(),
                iss: IssParameter::Correct,
                codes: HashMap::new(),
                authorizations: Vec::new(),
                jwks_fetches: 0,
                token_requests: 0,
                refusals: Vec::new(),
                issued: 0,
                token_outage: false,
            }),
            server: Mutex::new(None),
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(idp_discovery))
            .route("/jwks", get(idp_jwks))
            .route("/authorize", get(idp_authorize))
            .route("/token", post(idp_token))
            .route("/logout", get(|| async { "signed out" }))
            .with_state(idp.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        *idp.0.server.lock().unwrap() = Some(server);
        idp
    }

    fn issuer(&self) -> &str {
        &self.0.issuer
    }

    fn with<R>(&self, f: impl FnOnce(&mut IdpState) -> R) -> R {
        f(&mut self.0.state.lock().unwrap())
    }

    /// The person who signs in next: `sub` and the other claims in `claims`.
    fn person(&self, claims: Value) {
        let Value::Object(claims) = claims else {
            panic!("claims are an object")
        };
        assert!(claims.contains_key("sub"));
        self.with(|s| s.person = claims);
    }

    /// The next ID tokens' claims replaced (`null`: removed).
    fn tamper(&self, claims: Value) {
        let Value::Object(claims) = claims else {
            panic!("claims are an object")
        };
        self.with(|s| s.tamper = claims);
    }

    /// Honest again: no tampering, the right `iss`, the first published key.
    fn honest(&self) {
        self.with(|s| {
            s.tamper.clear();
            s.iss = IssParameter::Correct;
            s.signer = Signer::Key(s.published[0].clone());
        });
    }

    fn iss_parameter(&self, iss: IssParameter) {
        self.with(|s| s.iss = iss);
    }

    fn sign_with(&self, signer: Signer) {
        self.with(|s| s.signer = signer);
    }

    /// Its JWKS lists exactly `keys` from now on.
    fn publish(&self, keys: &[&Arc<Key>]) {
        self.with(|s| s.published = keys.iter().map(|k| Arc::clone(k)).collect());
    }

    fn jwks_fetches(&self) -> usize {
        self.with(|s| s.jwks_fetches)
    }

    fn token_requests(&self) -> usize {
        self.with(|s| s.token_requests)
    }

    fn refusals(&self) -> Vec<String> {
        self.with(|s| s.refusals.clone())
    }

    fn authorizations(&self) -> Vec<HashMap<String, String>> {
        self.with(|s| s.authorizations.clone())
    }

    /// Its time in seconds (the manual clock).
    fn now(&self) -> i64 {
        self.0.clock.now().as_millis() / 1000
    }

    /// The claims of a valid logout token for the person `sub` and the session `sid`.
    fn logout_claims(&self, sub: Option<&str>, sid: Option<&str>) -> Map<String, Value> {
        let jti = self.with(|s| {
            s.issued += 1;
            format!("logout-{}", s.issued)
        });
        let now = self.now();
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer().into());
        claims.insert("aud".into(), CLIENT_ID.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + 120).into());
        claims.insert("jti".into(), jti.into());
        claims.insert("events".into(), json!({ BACKCHANNEL_EVENT: {} }));
        if let Some(sub) = sub {
            claims.insert("sub".into(), sub.into());
        }
        if let Some(sid) = sid {
            claims.insert("sid".into(), sid.into());
        }
        claims
    }

    /// Its listener gone.
    async fn stop(&self) {
        let server = self.0.server.lock().unwrap().take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
    }
}

async fn idp_discovery(State(idp): State<Idp>) -> Json<Value> {
    let issuer = idp.issuer();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
        "scopes_supported": ["openid", "profile", "email"],
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    }))
}

async fn idp_jwks(State(idp): State<Idp>) -> Json<Value> {
    idp.with(|s| {
        s.jwks_fetches += 1;
        let keys: Vec<Value> = s
            .published
            .iter()
            .map(|k| serde_json::to_value(&k.jwk).unwrap())
            .collect();
        Json(json!({ "keys": keys }))
    })
}

/// Answers at once for the person the test chose: a redirect to `redirect_uri` with the code,
/// the `state` and (RFC 9207) `iss`, or with `response_mode=form_post` a form posting them.
async fn idp_authorize(
    State(idp): State<Idp>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut s = idp.0.state.lock().unwrap();
    s.authorizations.push(query.clone());
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    let wrong = if param("response_type") != "code" {
        Some("response_type")
    } else if param("client_id") != CLIENT_ID {
        Some("client_id")
    } else if param("code_challenge_method") != "S256" || param("code_challenge").is_empty() {
        Some("code_challenge")
    } else if param("redirect_uri").is_empty() {
        Some("redirect_uri")
    } else {
        None
    };
    if let Some(wrong) = wrong {
        s.refusals.push(format!("authorization request: {wrong}"));
        return (StatusCode::BAD_REQUEST, format!("bad {wrong}")).into_response();
    }
    s.issued += 1;
    let code = format!(
        "code-{}-{}",
        s.issued,
        URL_SAFE_NO_PAD.encode(s.issued.to_be_bytes())
    );
    s.codes.insert(
        code.clone(),
        Grant {
            challenge: param("code_challenge").to_owned(),
            nonce: query.get("nonce").cloned(),
            redirect_uri: param("redirect_uri").to_owned(),
        },
    );
    let mut answer = vec![("code", code), ("state", param("state").to_owned())];
    match s.iss {
        IssParameter::Correct => answer.push(("iss", idp.issuer().to_owned())),
        IssParameter::Another => answer.push(("iss", "http://127.0.0.1:9/other".to_owned())),
        IssParameter::Omitted => {}
    }
    if param("response_mode") == "form_post" {
        let inputs: String = answer
            .iter()
            .map(|(name, value)| {
                format!("<input type=\"hidden\" name=\"{name}\" value=\"{value}\">")
            })
            .collect();
        return Html(format!(
            "<!doctype html><html><body onload=\"document.forms[0].submit()\">\
             <form method=\"post\" action=\"{}\">{inputs}</form></body></html>",
            param("redirect_uri")
        ))
        .into_response();
    }
    let mut back = Url::parse(param("redirect_uri")).expect("an absolute redirect URI");
    back.query_pairs_mut().extend_pairs(answer);
    Redirect::to(back.as_str()).into_response()
}

/// The client's id and secret of a `client_secret_basic` header (RFC 6749 §2.3.1: each
/// form-urlencoded, then base64).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let decoded = STANDARD.decode(value.strip_prefix("Basic ")?).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |part: &str| {
        form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

/// A refused token request, and why, kept for the test to see.
fn refuse(s: &mut IdpState, status: StatusCode, error: &str, why: &str) -> Response {
    s.refusals.push(format!("token request: {why}"));
    (status, Json(json!({ "error": error }))).into_response()
}

/// Redeems a code: the client authenticated by `client_secret_basic`, the code issued and not
/// used, the same `redirect_uri`, the PKCE verifier of its S256 challenge.
async fn idp_token(
    State(idp): State<Idp>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = idp.0.state.lock().unwrap();
    s.token_requests += 1;
    if s.token_outage {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html("<h1>Internal Server Error</h1>"),
        )
            .into_response();
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if basic_credentials(&headers) != Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())) {
        return refuse(
            &mut s,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication",
        );
    }
    if field("grant_type") != "authorization_code" {
        return refuse(
            &mut s,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type",
        );
    }
    let code = field("code").to_owned();
    let Some(grant) = s.codes.remove(&code) else {
        return refuse(
            &mut s,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if field("redirect_uri") != grant.redirect_uri {
        return refuse(
            &mut s,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri",
        );
    }
    let verifier = field("code_verifier");
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.to_owned()));
    if verifier.is_empty() || challenge.as_str() != grant.challenge {
        return refuse(
            &mut s,
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verifier",
        );
    }
    let now = idp.now();
    let mut claims = Map::new();
    claims.insert("iss".into(), idp.issuer().into());
    claims.insert("aud".into(), CLIENT_ID.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + 600).into());
    claims.insert("auth_time".into(), now.into());
    if let Some(nonce) = grant.nonce {
        claims.insert("nonce".into(), nonce.into());
    }
    claims.extend(s.person.clone());
    for (name, value) in s.tamper.clone() {
        if value.is_null() {
            claims.remove(&name);
        } else {
            claims.insert(name, value);
        }
    }
    let id_token = match &s.signer {
        Signer::Key(key) => key.sign("JWT", &claims),
        Signer::ClientSecret => jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        )
        .unwrap(),
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "access_token": format!("access-{code}"),
            "token_type": "Bearer",
            "expires_in": 600,
            "scope": "openid profile email",
            "id_token": id_token,
        })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Portcullis, in-process.

struct Portcullis {
    base: String,
    engine: Arc<Engine<Store>>,
    accounts: Arc<Accounts>,
    identities: Arc<dyn IdentityStore>,
    /// Its OpenID Connect provider, when on.
    provider: Option<Arc<Provider<Store>>>,
    _data: tempfile::TempDir,
}

/// The provider `corp` at `issuer`, as a configuration would say it.
fn corp(issuer: &str) -> UpstreamSettings {
    UpstreamSettings {
        id: PROVIDER.into(),
        label: "Corp ID".into(),
        issuer: issuer.into(),
        client_id: CLIENT_ID.into(),
        client_auth: UpstreamClientAuth::Secret(CLIENT_SECRET.into()),
        scopes: vec!["openid".into(), "profile".into(), "email".into()],
        claims: ClaimMapping::default(),
        assurance: 2,
        create_accounts: true,
        domains: vec!["corp.example".into()],
        bound_session: false,
        form_post: false,
    }
}

impl Portcullis {
    /// Portcullis on a fresh SQLite store with the one upstream provider `settings`, and with
    /// `with_provider` its OpenID Connect provider on.
    async fn start(
        clock: &Arc<ManualClock>,
        settings: UpstreamSettings,
        with_provider: bool,
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let store = portcullis_store_sqlite::open(&data.path().join("portcullis.db"))
            .await
            .unwrap();
        let users: Arc<dyn UserStore> = Arc::new(store.journal().users());
        let throttle: Arc<dyn ThrottleStore> = Arc::new(store.journal().throttle());
        let identities: Arc<dyn IdentityStore> = Arc::new(store.journal().identities());
        let replays: Arc<dyn ReplayStore> = Arc::new(store.journal().replays());
        let journal = store.journal();
        let provider_stores = ProviderStores {
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
            .with_throttle(throttle)
            .with_keyring(keyring.clone())
            .with_trail(engine.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // As `main.rs` builds it: the one outbound client, loopback allowed.
        let http: Arc<dyn UpstreamHttp> = Arc::new(Outbound::with_roots(
            OutboundPolicy::parse(["127.0.0.0/8"]).unwrap(),
            Duration::from_secs(5),
            rustls::RootCertStore::empty(),
        ));
        let upstream = Upstream::new(
            settings,
            &format!("{base}/login/upstream/{PROVIDER}/callback"),
            http,
            clock.clone(),
        )
        .unwrap();
        let provider = match with_provider {
            true => Some(Arc::new(
                Provider::start(
                    engine.clone(),
                    accounts.clone(),
                    provider_stores,
                    keyring.clone(),
                    Arc::new(OsRandom),
                    ProviderSettings::new(&base),
                )
                .await
                .expect("starting the provider"),
            )),
            false => None,
        };
        // As `main.rs` does: the provider's keys sign client assertions (`private_key_jwt`).
        let upstream = match &provider {
            Some(provider) => {
                upstream.with_client_assertions(Arc::new(ProviderAssertions(provider.clone())))
            }
            None => upstream,
        };
        let federation = Federation::new(
            vec![Arc::new(upstream)],
            identities.clone(),
            replays,
            keyring,
            Arc::new(OsRandom),
        );
        let state = AppState::new(Services {
            engine: engine.clone(),
            accounts: accounts.clone(),
            ui: Arc::new(Ui::new(UiSettings::default())),
            metrics: None,
            provider: provider.clone(),
            federation: Some(Arc::new(federation)),
        });
        let router = api_router(state);
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<Peer>(),
            )
            .await
            .unwrap()
        });
        Self {
            base,
            engine,
            accounts,
            identities,
            provider,
            _data: data,
        }
    }

    fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    /// The link of the person `subject` at `issuer`.
    async fn linked(&self, issuer: &str, subject: &str) -> Option<FederatedIdentity> {
        self.identities.identity(issuer, subject).await.unwrap()
    }

    /// The account `user_id`.
    async fn user(&self, user_id: &str) -> User {
        self.accounts.by_id(user_id).await.unwrap()
    }

    /// The live SSO sessions of the account `user_id`.
    async fn sso_sessions(&self, user_id: &str) -> Vec<Arc<Session>> {
        self.engine
            .list_subject(user_id, true, &Principal::operator())
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.policy == SSO_POLICY && s.is_live())
            .collect()
    }

    /// Every event of the trail.
    async fn events(&self) -> Vec<AuditEvent> {
        let query = EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        };
        self.engine
            .events(&query, true, &Principal::operator())
            .await
            .unwrap()
    }

    /// How many SSO sessions were ever created.
    async fn sso_sessions_created(&self) -> usize {
        self.events()
            .await
            .iter()
            .filter(|e| e.kind == EventKind::SessionCreated)
            .filter(|e| e.policy.as_deref() == Some(SSO_POLICY))
            .count()
    }

    async fn count(&self, kind: EventKind) -> usize {
        self.events()
            .await
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    }

    /// Posts `token` to the upstream back-channel logout endpoint, as the upstream does.
    async fn upstream_logout(&self, token: &str) -> (u16, Value, Option<String>) {
        let answer = reqwest::Client::new()
            .post(format!(
                "{}/federation/{PROVIDER}/backchannel-logout",
                self.base
            ))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&[("logout_token", token)]))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let cache = answer
            .headers()
            .get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_owned());
        (status, answer.json().await.unwrap_or(Value::Null), cache)
    }
}

/// A client of Portcullis's provider, registered by hand (its redirect URI is never visited:
/// the test reads the code off the redirect).
struct Rp {
    id: String,
    secret: String,
    redirect_uri: String,
}

impl Portcullis {
    /// Registers the application `name` as a confidential client of the provider, its people
    /// signing in through `upstream` when given.
    async fn register_client(&self, name: &str, upstream: Option<&str>) -> Rp {
        let app = self
            .engine
            .add_application(
                ApplicationChange {
                    name: Some(name.into()),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .expect("adding the application");
        let secret = self.engine.new_client_secret();
        let redirect_uri = "http://127.0.0.1:9/cb".to_owned();
        self.engine
            .register_client(
                app.id.as_str(),
                Some(Client {
                    auth: ClientAuth::Secret(secret.hash()),
                    redirect_uris: vec![redirect_uri.clone()],
                    post_logout_redirect_uris: vec![],
                    backchannel_logout_uri: None,
                    frontchannel_logout_uri: None,
                    scopes: ["openid", "profile"].map(String::from).into(),
                    grant_types: [GrantType::AuthorizationCode].into(),
                    require_consent: false,
                    id_token_signed_response_alg: None,
                    upstream: upstream.map(str::to_owned),
                }),
                &Actor::cli(),
            )
            .await
            .expect("registering the client");
        Rp {
            id: app.id.as_str().to_owned(),
            secret: secret.expose().to_owned(),
            redirect_uri,
        }
    }

    /// Redeems `code` at the token endpoint as `rp` does (`client_secret_basic`, PKCE): the
    /// status and the answer.
    async fn redeem(&self, rp: &Rp, code: &str, verifier: &PkceCodeVerifier) -> (u16, Value) {
        let answer = reqwest::Client::new()
            .post(format!("{}/oidc/token", self.base))
            .basic_auth(&rp.id, Some(&rp.secret))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &rp.redirect_uri),
                ("code_verifier", verifier.secret()),
            ]))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// The live sessions of applications under the SSO session `parent`.
    async fn application_sessions(&self, user_id: &str, parent: &str) -> Vec<Arc<Session>> {
        self.engine
            .list_subject(user_id, true, &Principal::operator())
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.application.as_str() != PORTCULLIS_APP && s.is_live())
            .filter(|s| s.parent.as_ref().is_some_and(|p| p.as_str() == parent))
            .collect()
    }
}

/// An authorization request of `rp` (code flow, PKCE S256, `state`, `nonce`) with `extra`
/// parameters: the path to send the browser to, and the PKCE verifier.
fn authorization(rp: &Rp, extra: &[(&str, &str)]) -> (String, PkceCodeVerifier) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.extend_pairs([
        ("response_type", "code"),
        ("client_id", rp.id.as_str()),
        ("redirect_uri", rp.redirect_uri.as_str()),
        ("scope", "openid profile"),
        ("state", "rp-state"),
        ("nonce", "rp-nonce"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    query.extend_pairs(extra);
    (format!("/oidc/authorize?{}", query.finish()), verifier)
}

/// The code of an authorization answer redirecting to `rp`.
fn code_of(rp: &Rp, answer: &Answer) -> String {
    assert_eq!(answer.status, 303, "{}", answer.body);
    let location = answer.location.as_deref().unwrap();
    assert!(
        location.starts_with(&format!("{}?", rp.redirect_uri)),
        "back to the client: {location}"
    );
    let params = query_of(&Url::parse(location).unwrap());
    assert!(!params.contains_key("error"), "{location}");
    params["code"].clone()
}

/// What the pages' HTML escaping did to `text`, undone.
fn unescape(text: &str) -> String {
    text.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of the attribute `attribute` of the first tag whose text contains `marker`.
fn attribute_after(html: &str, marker: &str, attribute: &str) -> Option<String> {
    let at = html.find(marker)?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..tag_start + html[tag_start..].find('>')?];
    let prefix = format!("{attribute}=\"");
    let start = tag.find(&prefix)? + prefix.len();
    let end = start + tag[start..].find('"')?;
    Some(unescape(&tag[start..end]))
}

/// Whether the account page offers to link `corp`: its form posting to the link endpoint.
fn offers_link(html: &str) -> bool {
    html.contains(&format!("action=\"/login/upstream/{PROVIDER}/link\""))
        && html.contains("Link Corp ID")
}

/// The CSRF token a page carries for the signed-in person.
fn page_csrf(html: &str) -> String {
    attribute_after(html, "name=\"portcullis-csrf\"", "content").expect("the page's CSRF token")
}

/// A manual clock at the real time (the upstream's tokens carry it; `reqwest` does not care).
fn clock_now() -> Arc<ManualClock> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    Arc::new(ManualClock::new(Timestamp::from_millis(
        i64::try_from(now).unwrap(),
    )))
}

/// The upstream and Portcullis with the provider `corp` on it, as `tweak` changes it.
async fn world(tweak: impl FnOnce(&mut UpstreamSettings)) -> (Arc<ManualClock>, Idp, Portcullis) {
    // Why an answer was refused, with RUST_LOG=warn.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let clock = clock_now();
    let idp = Idp::start(clock.clone()).await;
    let mut settings = corp(idp.issuer());
    tweak(&mut settings);
    let portcullis = Portcullis::start(&clock, settings, false).await;
    (clock, idp, portcullis)
}

/// As [`world`], with Portcullis's OpenID Connect provider on.
async fn world_with_provider() -> (Arc<ManualClock>, Idp, Portcullis) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let clock = clock_now();
    let idp = Idp::start(clock.clone()).await;
    let portcullis = Portcullis::start(&clock, corp(idp.issuer()), true).await;
    (clock, idp, portcullis)
}

// ---------------------------------------------------------------------------------------
// A browser reduced to cookies and redirects.

#[derive(Clone)]
struct Browser {
    http: reqwest::Client,
    portcullis: String,
    /// Portcullis's cookies (the upstream sets none).
    cookies: BTreeMap<String, String>,
}

/// One answer.
struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
    set_cookies: Vec<String>,
}

impl Answer {
    /// The `Set-Cookie` line of `name`.
    fn set_cookie(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}=");
        self.set_cookies
            .iter()
            .find(|line| line.starts_with(&prefix))
            .map(String::as_str)
    }

    /// Whether it starts an SSO session.
    fn signs_in(&self) -> bool {
        self.set_cookie(SESSION_COOKIE)
            .is_some_and(|line| !line.starts_with(&format!("{SESSION_COOKIE}=;")))
    }
}

impl Browser {
    fn new(portcullis: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            portcullis: portcullis.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    /// One request; a path is Portcullis's. Portcullis's cookies go to Portcullis only.
    async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.portcullis)
        } else {
            url.to_owned()
        };
        let ours = url.starts_with(&format!("{}/", self.portcullis));
        let mut request = self.http.request(method, &url);
        if ours && !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(fields) = form {
            request = request
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form_body(fields));
        }
        let response = request.send().await.expect("an answer");
        let set_cookies: Vec<String> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        if ours {
            for line in &set_cookies {
                let (name, value) = line.split(';').next().unwrap().split_once('=').unwrap();
                if value.is_empty() || line.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Answer {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_owned()),
            body: response.text().await.unwrap(),
            set_cookies,
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        self.send(reqwest::Method::GET, url, None, &[]).await
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::POST, url, Some(form), &[]).await
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// `/login/upstream/corp` (with `query`): the upstream authorization request it sends the
    /// browser to.
    async fn go_upstream(&mut self, query: &str) -> Url {
        let path = format!("/login/upstream/{PROVIDER}{query}");
        let answer = self.get(&path).await;
        assert_eq!(answer.status, 303, "{path}: {}", answer.body);
        Url::parse(&answer.location.unwrap()).expect("an absolute URL upstream")
    }

    /// The upstream answers at once: the callback it sends the browser back to.
    async fn upstream_answers(&mut self, authorize: &Url) -> Url {
        let answer = self.get(authorize.as_str()).await;
        assert_eq!(answer.status, 303, "the upstream answers: {}", answer.body);
        Url::parse(&answer.location.unwrap()).expect("an absolute callback")
    }

    /// The account page's "Link Corp ID" form posted with `csrf`: the continue page's link
    /// to the upstream authorization request (with the sealed request's cookie set).
    async fn link_upstream(&mut self, csrf: &str) -> Url {
        let answer = self
            .post(
                &format!("/login/upstream/{PROVIDER}/link"),
                &[("csrf", csrf)],
            )
            .await;
        assert_eq!(answer.status, 200, "the continue page: {}", answer.body);
        assert!(answer.set_cookie(UPSTREAM_COOKIE).is_some());
        let url = attribute_after(&answer.body, "id=\"continue\"", "href")
            .unwrap_or_else(|| panic!("a continue link: {}", answer.body));
        Url::parse(&url).expect("an absolute URL upstream")
    }

    /// A whole sign-in upstream: the callback's answer.
    async fn sign_in_upstream(&mut self) -> Answer {
        let authorize = self.go_upstream("").await;
        let callback = self.upstream_answers(&authorize).await;
        self.get(callback.as_str()).await
    }

    /// Signs in with a password on the sign-in form, saying no to "Stay signed in?".
    async fn sign_in_with_password(&mut self, username: &str, password: &str) -> Answer {
        self.sign_in_with_password_to(username, password, "/account")
            .await
    }

    /// As [`Browser::sign_in_with_password`], going on to `return_to`.
    async fn sign_in_with_password_to(
        &mut self,
        username: &str,
        password: &str,
        return_to: &str,
    ) -> Answer {
        let form = self.get("/login").await;
        assert_eq!(form.status, 200, "the sign-in form: {}", form.body);
        let csrf = hidden(&form.body, "csrf");
        assert_eq!(self.cookie(LOGIN_CSRF_COOKIE), Some(csrf.as_str()));
        let answer = self
            .post(
                "/login",
                &[
                    ("username", username),
                    ("password", password),
                    ("csrf", &csrf),
                    ("return_to", return_to),
                ],
            )
            .await;
        assert_eq!(answer.status, 303, "the password is right: {}", answer.body);
        assert_eq!(answer.location.as_deref(), Some("/login/stay"));
        let stay = self.get("/login/stay").await;
        assert_eq!(stay.status, 200, "Stay signed in?: {}", stay.body);
        let csrf = hidden(&stay.body, "csrf");
        self.post("/login/stay", &[("csrf", &csrf), ("stay", "no")])
            .await
    }
}

/// `fields` as an `application/x-www-form-urlencoded` body.
fn form_body(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// The query of `url` as a map.
fn query_of(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// An answer refusing a sign-in: `status`, a page saying `says`, no SSO session.
fn assert_refused(answer: &Answer, status: u16, says: &str, case: &str) {
    assert_eq!(answer.status, status, "{case}: {}", answer.body);
    assert!(
        answer.body.contains(says),
        "{case}: the page says {says:?}: {}",
        answer.body
    );
    assert!(!answer.signs_in(), "{case}: nobody is signed in");
}

/// An answer signing the browser in: to `/account`, with the SSO cookie.
fn assert_signed_in(answer: &Answer, case: &str) {
    assert_eq!(answer.status, 303, "{case}: {}", answer.body);
    assert_eq!(answer.location.as_deref(), Some("/account"), "{case}");
    assert!(answer.signs_in(), "{case}: the SSO cookie is set");
}

// ---------------------------------------------------------------------------------------

/// ASVS5-10.1.2 (PKCE S256, `state` and `nonce` per request), ASVS5-10.5.2 (the account is
/// found by issuer and subject), ASVS5-6.8.4 (assurance from `acr`/`amr`, the weakest when
/// absent, never above the provider's): the first sign-in makes an account linked to the
/// upstream person and an SSO session remembering the upstream session; the second reuses the
/// account, whatever the person is called there now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_10_1_2_10_5_2_6_8_4_sign_in_upstream_links_an_account_by_issuer_and_subject() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({
        "sub": "alice-0001",
        "sid": "upstream-session-1",
        "preferred_username": "alice.corp",
        "email": "alice@corp.example",
        "name": "Alice Example",
        "acr": "aal3",
        "amr": ["pwd", "hwk"],
    }));

    let mut browser = portcullis.browser();
    let page = browser.get("/login").await;
    assert!(
        page.body.contains(&format!("/login/upstream/{PROVIDER}")),
        "the sign-in page offers the provider"
    );
    let start = browser.get(&format!("/login/upstream/{PROVIDER}")).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let sealed = start
        .set_cookie(UPSTREAM_COOKIE)
        .expect("the request is sealed in a cookie");
    for attribute in ["Secure", "HttpOnly", "Path=/", "SameSite=Lax"] {
        assert!(sealed.contains(attribute), "{attribute} in {sealed}");
    }
    let authorize = Url::parse(start.location.as_deref().unwrap()).unwrap();
    assert_eq!(
        authorize.as_str().split('?').next(),
        Some(format!("{issuer}/authorize").as_str())
    );
    let request = query_of(&authorize);
    assert_eq!(request["response_type"], "code");
    assert_eq!(request["client_id"], CLIENT_ID);
    assert_eq!(
        request["redirect_uri"],
        format!("{}/login/upstream/{PROVIDER}/callback", portcullis.base)
    );
    let scopes: Vec<&str> = request["scope"].split(' ').collect();
    for scope in ["openid", "profile", "email"] {
        assert!(scopes.contains(&scope), "{scope} in {scopes:?}");
    }
    assert_eq!(request["code_challenge_method"], "S256");
    for name in ["state", "nonce", "code_challenge"] {
        // 32 random bytes, or their SHA-256, in base64url.
        assert_eq!(request[name].len(), 43, "{name}: {}", request[name]);
        assert!(
            !request[name].contains(['+', '/', '=']),
            "{name} is base64url"
        );
    }
    assert_ne!(request["state"], request["nonce"]);

    let callback = browser.upstream_answers(&authorize).await;
    assert_eq!(query_of(&callback)["state"], request["state"]);
    let answer = browser.get(callback.as_str()).await;
    assert_signed_in(&answer, "the first sign-in");
    assert!(
        answer
            .set_cookie(UPSTREAM_COOKIE)
            .is_some_and(|c| c.contains("Max-Age=0")),
        "the sealed request is taken once"
    );
    assert!(browser.cookie(UPSTREAM_COOKIE).is_none());
    assert_eq!(idp.token_requests(), 1);
    assert!(
        idp.refusals().is_empty(),
        "client_secret_basic and the PKCE verifier were right: {:?}",
        idp.refusals()
    );

    let link = portcullis
        .linked(&issuer, "alice-0001")
        .await
        .expect("the upstream person is linked");
    assert_eq!(link.provider, PROVIDER);
    assert_eq!(link.issuer, issuer);
    let user = portcullis.user(&link.user_id).await;
    assert_eq!(
        user.username, "alice.corp",
        "named after preferred_username"
    );
    assert!(
        !user.has_password(),
        "an account made upstream has no password"
    );
    assert_eq!(portcullis.count(EventKind::UserIdentityLinked).await, 1);

    let sessions = portcullis.sso_sessions(&user.id).await;
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(
        session.auth,
        AuthContext {
            methods: vec!["pwd".into(), "hwk".into()],
            level: 2,
        },
        "the upstream's amr; its acr aal3 capped at the provider's assurance 2"
    );
    let remembered = UpstreamLink::of(session).expect("the SSO session holds its upstream link");
    assert_eq!(remembered.provider, PROVIDER);
    assert_eq!(remembered.issuer, issuer);
    assert_eq!(remembered.subject, "alice-0001");
    assert_eq!(remembered.sid.as_deref(), Some("upstream-session-1"));
    assert_eq!(remembered.acr.as_deref(), Some("aal3"));
    assert_eq!(remembered.amr, ["pwd", "hwk"]);
    assert_eq!(
        remembered.auth_time.map(|t| t.as_millis() / 1000),
        Some(idp.now())
    );
    assert_eq!(
        remembered.id_token.split('.').count(),
        3,
        "the ID token, for a logout there"
    );

    let account = browser.get("/account").await;
    assert_eq!(
        account.status, 200,
        "the SSO cookie works: {}",
        account.body
    );
    assert!(account.body.contains("alice.corp"));

    // The same person again, in another browser, called otherwise there now and claiming
    // nothing about how they authenticated.
    idp.person(json!({
        "sub": "alice-0001",
        "preferred_username": "alice.renamed",
        "email": "alice.renamed@corp.example",
    }));
    let mut other = portcullis.browser();
    let answer = other.sign_in_upstream().await;
    assert_signed_in(&answer, "the second sign-in");
    let second = &idp.authorizations()[1];
    assert_ne!(second["state"], request["state"], "a state per request");
    assert_ne!(second["nonce"], request["nonce"], "a nonce per request");
    assert_ne!(second["code_challenge"], request["code_challenge"]);
    let again = portcullis.linked(&issuer, "alice-0001").await.unwrap();
    assert_eq!(again.user_id, user.id, "the same account");
    assert!(matches!(
        portcullis.accounts.by_name("alice.renamed").await,
        Err(AccountError::NotFound)
    ));
    assert_eq!(
        portcullis
            .identities
            .identities_of(&user.id)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        portcullis.count(EventKind::UserCreated).await,
        1,
        "one account"
    );
    let sessions = portcullis.sso_sessions(&user.id).await;
    assert_eq!(sessions.len(), 2, "one SSO session per browser");
    let newest = sessions
        .iter()
        .find(|s| s.id != session.id)
        .expect("the second browser's session");
    assert_eq!(
        newest.auth,
        AuthContext {
            methods: vec!["fed".into()],
            level: 1,
        },
        "no amr: federated; no acr: the weakest level"
    );
}

/// ASVS5-10.1.2 / ASVS5-10.2.1: an answer is taken once, by the browser that asked, with the
/// `state` it sent: a wrong `state`, the same answer again, or the answer in a browser without
/// the sealed request signs nobody in, and only the first redeems the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_10_1_2_10_2_1_wrong_state_replayed_answer_or_another_browser_sign_nobody_in() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({ "sub": "bruno-0002", "preferred_username": "bruno" }));

    // A wrong state: refused before the code is redeemed.
    let mut browser = portcullis.browser();
    let authorize = browser.go_upstream("").await;
    let callback = browser.upstream_answers(&authorize).await;
    let mut forged = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == "state" {
                (k, format!("{v}x"))
            } else {
                (k, v)
            }
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let answer = browser.get(forged.as_str()).await;
    assert_refused(&answer, 400, NOT_VALID, "a wrong state");
    assert_eq!(idp.token_requests(), 0, "the code was not redeemed");
    assert!(portcullis.linked(&issuer, "bruno-0002").await.is_none());
    assert_eq!(portcullis.sso_sessions_created().await, 0);

    // The right answer, then the same answer again with the same cookie.
    let mut browser = portcullis.browser();
    let authorize = browser.go_upstream("").await;
    let callback = browser.upstream_answers(&authorize).await;
    let mut replayer = browser.clone();
    assert!(replayer.cookie(UPSTREAM_COOKIE).is_some());
    let answer = browser.get(callback.as_str()).await;
    assert_signed_in(&answer, "the first use of the answer");
    assert_eq!(idp.token_requests(), 1);
    let replayed = replayer.get(callback.as_str()).await;
    assert_refused(&replayed, 400, NOT_VALID, "the same answer again");
    assert_eq!(
        idp.token_requests(),
        1,
        "the replay was refused before the code went upstream"
    );
    let user = portcullis
        .linked(&issuer, "bruno-0002")
        .await
        .unwrap()
        .user_id;
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 1);

    // The answer in a browser that did not ask: refused, and the one that asked can still
    // use it.
    let mut asker = portcullis.browser();
    let authorize = asker.go_upstream("").await;
    let callback = asker.upstream_answers(&authorize).await;
    // Answers forged for the asker's browser (any site can send it to the callback): another
    // state, or an error without one, are refused and leave its sign-in in progress.
    let endpoint = callback.as_str().split('?').next().unwrap().to_owned();
    for forged in [
        format!("{endpoint}?code=forged&state=not-the-state"),
        format!("{endpoint}?error=access_denied"),
    ] {
        let answer = asker.get(&forged).await;
        assert_refused(&answer, 400, NOT_VALID, &forged);
        assert!(
            answer.set_cookie(UPSTREAM_COOKIE).is_none(),
            "{forged}: the sign-in in progress stays"
        );
    }
    let mut stranger = portcullis.browser();
    let answer = stranger.get(callback.as_str()).await;
    assert_refused(&answer, 400, NOT_VALID, "an answer without its cookie");
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 1);
    let answer = asker.get(callback.as_str()).await;
    assert_signed_in(&answer, "the browser that asked");
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 2);
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

/// OIDC-CORE-15, ASVS5-10.5.1 (nonce), ASVS5-10.5.4 (aud), ASVS5-6.8.2 / JWTBCP-1 (signed
/// with an allowed algorithm), ASVS5-9.2.1 (`nbf`): an ID token of another issuer, for another
/// audience or client (`azp`), expired, issued in the future, not valid yet, with a wrong or no
/// nonce, a `sub` longer than OpenID Connect allows, or MACed with the client secret signs
/// nobody in; an `iat` within the minute of skew does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_15_asvs5_10_5_1_10_5_4_id_tokens_failing_their_checks_sign_nobody_in() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({ "sub": "carla-0003", "preferred_username": "carla" }));
    let now = idp.now();
    let long_subject = "c".repeat(256);
    let cases: [(&str, Value, Option<Signer>); 10] = [
        (
            "another issuer",
            json!({ "iss": "http://127.0.0.1:9/other" }),
            None,
        ),
        ("another audience", json!({ "aud": "someone-else" }), None),
        (
            "issued to another client (azp)",
            json!({ "azp": "someone-else" }),
            None,
        ),
        (
            "not valid for another hour (nbf)",
            json!({ "nbf": now + 3600 }),
            None,
        ),
        (
            "a sub longer than 255 characters",
            json!({ "sub": long_subject }),
            None,
        ),
        (
            "expired",
            json!({ "iat": now - 700, "auth_time": now - 700, "exp": now - 100 }),
            None,
        ),
        (
            "issued more than a minute ahead",
            json!({ "iat": now + 120 }),
            None,
        ),
        (
            "a wrong nonce",
            json!({ "nonce": "not-the-nonce-sent" }),
            None,
        ),
        ("no nonce", json!({ "nonce": null }), None),
        (
            "MACed with the client secret (HS256)",
            json!({}),
            Some(Signer::ClientSecret),
        ),
    ];
    for (case, tamper, signer) in cases {
        idp.honest();
        idp.tamper(tamper);
        if let Some(signer) = signer {
            idp.sign_with(signer);
        }
        let before = idp.token_requests();
        let failures = portcullis.count(EventKind::LoginFailed).await;
        let answer = portcullis.browser().sign_in_upstream().await;
        assert_refused(&answer, 400, NOT_VALID, case);
        assert_eq!(
            idp.token_requests(),
            before + 1,
            "{case}: the token was fetched, then refused"
        );
        // ASVS5-16.3.1: a failed authentication is in the trail, whatever the way in.
        assert_eq!(
            portcullis.count(EventKind::LoginFailed).await,
            failures + 1,
            "{case}: one login.failed"
        );
    }
    let failed = portcullis.events().await;
    let failed = failed
        .iter()
        .rfind(|e| e.kind == EventKind::LoginFailed)
        .unwrap();
    assert_eq!(failed.detail["failed"], "upstream");
    assert_eq!(failed.detail["provider"], PROVIDER);
    assert!(failed.subject.is_none(), "a failed answer names no one");
    // An ID token without `sub` does not parse as a token response at all: an invalid answer
    // (400), not an outage (the person is not told the provider is down).
    idp.honest();
    idp.tamper(json!({ "sub": null }));
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_refused(&answer, 400, NOT_VALID, "no sub");

    assert!(portcullis.linked(&issuer, "carla-0003").await.is_none());
    assert_eq!(portcullis.sso_sessions_created().await, 0);
    assert_eq!(portcullis.count(EventKind::UserCreated).await, 0);

    // Within the minute an upstream clock may run ahead, the same person signs in.
    idp.honest();
    idp.tamper(json!({ "iat": now + 30 }));
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_signed_in(&answer, "iat 30 s ahead");
    assert!(portcullis.linked(&issuer, "carla-0003").await.is_some());
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

/// RFC9700-17 / ASVS5-10.2.2 (RFC 9207 mix-up defence): an authorization answer naming another
/// issuer, or lacking `iss` when the provider's discovery says it always sends it, is refused
/// before its code is redeemed; the same answer with the right `iss` signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9700_17_asvs5_10_2_2_an_answer_naming_another_issuer_or_none_is_refused() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({ "sub": "dmitri-0004", "preferred_username": "dmitri" }));
    for (case, iss) in [
        ("another issuer's iss", IssParameter::Another),
        ("no iss", IssParameter::Omitted),
    ] {
        idp.iss_parameter(iss);
        let mut browser = portcullis.browser();
        let authorize = browser.go_upstream("").await;
        let callback = browser.upstream_answers(&authorize).await;
        assert_eq!(
            query_of(&callback).get("iss").map(String::as_str),
            match iss {
                IssParameter::Another => Some("http://127.0.0.1:9/other"),
                _ => None,
            },
            "{case}"
        );
        let answer = browser.get(callback.as_str()).await;
        assert_refused(&answer, 400, NOT_VALID, case);
    }
    assert_eq!(idp.token_requests(), 0, "no code was redeemed");
    assert!(portcullis.linked(&issuer, "dmitri-0004").await.is_none());
    assert_eq!(portcullis.sso_sessions_created().await, 0);

    idp.iss_parameter(IssParameter::Correct);
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_signed_in(&answer, "the right iss");
}

/// OIDC-BCL-11 / OIDC-BCL-12 / ASVS5-10.5.5 (as receiver of the upstream's logout tokens): a
/// logout token that fails a check (a nonce, no events, an unknown key, `alg: none`, another
/// audience, an `nbf` ahead) is answered 400 and ends nothing; a valid one ends exactly the SSO session its
/// `sid` vouched for (`upstream_logout`) and is answered 200 `no-store`; the same `jti` again is
/// answered 400. A token naming only `sid` finds the person through what the sign-in kept (an
/// unknown `sid` ends nothing, 200); one naming only `sub` ends every session of the person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_bcl_11_12_upstream_logout_tokens_end_the_sso_session_they_name() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    // The upstream's signing key, as its JWKS publishes it.
    let signing = idp.with(|s| s.published[0].clone());
    idp.person(json!({ "sub": "erika-0005", "sid": "sid-laptop", "preferred_username": "erika" }));
    let mut laptop = portcullis.browser();
    assert_signed_in(&laptop.sign_in_upstream().await, "the laptop");
    idp.person(json!({ "sub": "erika-0005", "sid": "sid-phone", "preferred_username": "erika" }));
    let mut phone = portcullis.browser();
    assert_signed_in(&phone.sign_in_upstream().await, "the phone");
    let user = portcullis
        .linked(&issuer, "erika-0005")
        .await
        .unwrap()
        .user_id;
    let sessions = portcullis.sso_sessions(&user).await;
    assert_eq!(sessions.len(), 2);
    let session_of = |sid: &str| {
        sessions
            .iter()
            .find(|s| UpstreamLink::of(s).and_then(|l| l.sid).as_deref() == Some(sid))
            .expect("a session per upstream session")
            .id
            .clone()
    };
    let (laptop_session, phone_session) = (session_of("sid-laptop"), session_of("sid-phone"));

    let valid = |idp: &Idp| idp.logout_claims(Some("erika-0005"), Some("sid-laptop"));
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"logout+jwt"}"#);
    let unsigned = format!(
        "{header}.{}.",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&valid(&idp)).unwrap())
    );
    let with_nonce = {
        let mut claims = valid(&idp);
        claims.insert("nonce".into(), "n-0S6_WzA2Mj".into());
        signing.sign("logout+jwt", &claims)
    };
    let without_events = {
        let mut claims = valid(&idp);
        claims.remove("events");
        signing.sign("logout+jwt", &claims)
    };
    let other_audience = {
        let mut claims = valid(&idp);
        claims.insert("aud".into(), "someone-else".into());
        signing.sign("logout+jwt", &claims)
    };
    let not_yet_valid = {
        let mut claims = valid(&idp);
        claims.insert("nbf".into(), (idp.now() + 3600).into());
        signing.sign("logout+jwt", &claims)
    };
    let unknown_key = Key::generate("not-published").sign("logout+jwt", &valid(&idp));
    for (case, token) in [
        ("a nonce", with_nonce),
        ("no events", without_events),
        ("another audience", other_audience),
        ("an nbf an hour ahead (ASVS5-9.2.1)", not_yet_valid),
        ("an unknown key", unknown_key),
        ("alg none", unsigned),
    ] {
        let (status, body, cache) = portcullis.upstream_logout(&token).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert_eq!(body["error"], "invalid_request", "{case}");
        assert_eq!(cache.as_deref(), Some("no-store"), "{case}");
    }
    assert_eq!(
        portcullis.sso_sessions(&user).await.len(),
        2,
        "a refused token ends nothing"
    );

    // RFC 7515 §4.1.9: the media type's `application/` may be given.
    let token = signing.sign("application/logout+jwt", &valid(&idp));
    let (status, body, cache) = portcullis.upstream_logout(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    let live = portcullis.sso_sessions(&user).await;
    assert_eq!(live.len(), 1, "only the laptop's upstream session ended");
    assert_eq!(live[0].id, phone_session);
    let ended = portcullis
        .engine
        .get(&laptop_session, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(
        ended.ended.as_ref().map(|e| e.reason.as_str()),
        Some("upstream_logout")
    );
    assert!(
        portcullis.events().await.iter().any(|e| {
            e.kind == EventKind::SessionEnded
                && e.session_id.as_ref() == Some(&laptop_session)
                && e.reason.map(|r| r.as_str()) == Some("upstream_logout")
        }),
        "the trail records the ending and why"
    );
    let account = laptop.get("/account").await;
    assert_eq!(account.status, 303, "the laptop is signed out");
    assert!(
        account
            .location
            .as_deref()
            .is_some_and(|l| l.starts_with("/login")),
        "{:?}",
        account.location
    );
    assert_eq!(phone.get("/account").await.status, 200, "the phone is not");

    let (status, body, _) = portcullis.upstream_logout(&token).await;
    assert_eq!(status, 400, "the same jti again: {body}");

    // `sid` alone: a session nobody signed in with ends nothing; the phone's ends the phone's.
    let token = signing.sign("logout+jwt", &idp.logout_claims(None, Some("sid-unknown")));
    let (status, body, _) = portcullis.upstream_logout(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 1);
    let token = signing.sign("logout+jwt", &idp.logout_claims(None, Some("sid-phone")));
    let (status, body, _) = portcullis.upstream_logout(&token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        portcullis.sso_sessions(&user).await.is_empty(),
        "the phone's session, found by its sid alone"
    );
    assert_eq!(phone.get("/account").await.status, 303, "the phone is out");

    // `sub` alone ends every SSO session the person started there.
    for sid in ["sid-tablet", "sid-desktop"] {
        idp.person(json!({ "sub": "erika-0005", "sid": sid, "preferred_username": "erika" }));
        assert_signed_in(&portcullis.browser().sign_in_upstream().await, sid);
    }
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 2);
    let token = signing.sign("logout+jwt", &idp.logout_claims(Some("erika-0005"), None));
    let (status, body, _) = portcullis.upstream_logout(&token).await;
    assert_eq!(status, 200, "{body}");
    assert!(portcullis.sso_sessions(&user).await.is_empty());
}

/// The upstream's keys rotate: an ID token signed by a key Portcullis has not seen makes it
/// fetch the keys again at once; a key the upstream removed still verifies while the fetched
/// keys are kept (5 minutes), and no longer once they are fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_key_rotation_new_keys_fetched_for_an_unknown_kid_removed_keys_expire() {
    let (clock, idp, portcullis) = world(|_| {}).await;
    idp.person(json!({ "sub": "farid-0006", "preferred_username": "farid" }));
    let first = idp.with(|s| s.published[0].clone());
    assert_signed_in(
        &portcullis.browser().sign_in_upstream().await,
        "signed with the first key",
    );

    // The upstream switches to a second key and drops the first.
    let second = Key::generate("key-2");
    idp.publish(&[&second]);
    idp.sign_with(Signer::Key(second.clone()));
    let fetches = idp.jwks_fetches();
    assert_signed_in(
        &portcullis.browser().sign_in_upstream().await,
        "signed with a key not yet seen",
    );
    assert_eq!(
        idp.jwks_fetches(),
        fetches + 1,
        "the unknown kid made Portcullis fetch the keys again"
    );

    // Then to a third, dropping the second: the second is kept for 5 minutes after its fetch.
    let third = Key::generate("key-3");
    idp.publish(&[&third]);
    assert_signed_in(
        &portcullis.browser().sign_in_upstream().await,
        "signed with the removed key, while the fetched keys are kept",
    );
    let fetches = idp.jwks_fetches();
    clock.advance(Duration::from_secs(5 * 60 + 1));
    for (case, key) in [("the removed key", &second), ("the first key", &first)] {
        idp.sign_with(Signer::Key(key.clone()));
        let answer = portcullis.browser().sign_in_upstream().await;
        assert_refused(&answer, 400, NOT_VALID, case);
    }
    assert!(
        idp.jwks_fetches() > fetches,
        "past 5 minutes the keys were fetched again"
    );
    idp.sign_with(Signer::Key(third.clone()));
    assert_signed_in(
        &portcullis.browser().sign_in_upstream().await,
        "signed with the current key",
    );
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

/// An upstream that cannot be reached: its sign-in answers a 503 page saying so, and signing in
/// with a password still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_answers_503_and_password_sign_in_still_works() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    idp.stop().await;
    let mut browser = portcullis.browser();
    let answer = browser.get(&format!("/login/upstream/{PROVIDER}")).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("cannot be reached"), "{}", answer.body);
    assert!(browser.cookie(UPSTREAM_COOKIE).is_none());

    let user = portcullis
        .accounts
        .add_user("gina", "tangerine-Kite-Orbit-7431", &Actor::cli())
        .await
        .unwrap();
    let answer = browser
        .sign_in_with_password("gina", "tangerine-Kite-Orbit-7431")
        .await;
    assert_signed_in(&answer, "the password");
    let sessions = portcullis.sso_sessions(&user.id).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].auth.methods, ["pwd"]);
    assert!(UpstreamLink::of(&sessions[0]).is_none());
}

/// A token endpoint that fails (500, an HTML body) is an outage, not an invalid answer: the
/// person is told the provider cannot be reached, not that their answer was old or forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_is_an_outage() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    idp.person(json!({ "sub": "hana-0021", "preferred_username": "hana" }));
    idp.with(|s| s.token_outage = true);
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_refused(
        &answer,
        503,
        "cannot be reached",
        "a 500 at the token endpoint",
    );
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(
        portcullis.count(EventKind::LoginFailed).await,
        0,
        "an outage is no failed authentication"
    );
    idp.with(|s| s.token_outage = false);
    assert_signed_in(
        &portcullis.browser().sign_in_upstream().await,
        "the endpoint back",
    );
}

/// ASVS5-10.5.2: with account creation off, an upstream person nobody linked gets a 403 page
/// and no account, even when a local account has their upstream username.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_10_5_2_without_account_creation_an_unlinked_person_gets_no_account() {
    let (_clock, idp, portcullis) = world(|s| s.create_accounts = false).await;
    let issuer = idp.issuer().to_owned();
    idp.person(
        json!({ "sub": "hugo-0007", "preferred_username": "hugo", "email": "hugo@corp.example" }),
    );
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_refused(&answer, 403, "cannot create one", "an unlinked person");
    assert!(matches!(
        portcullis.accounts.by_name("hugo").await,
        Err(AccountError::NotFound)
    ));
    assert!(portcullis.linked(&issuer, "hugo-0007").await.is_none());

    let local = portcullis
        .accounts
        .add_user("hugo", "marmalade-Cactus-Violin-2209", &Actor::cli())
        .await
        .unwrap();
    let answer = portcullis.browser().sign_in_upstream().await;
    assert_refused(
        &answer,
        403,
        "cannot create one",
        "a local account of that name",
    );
    assert!(portcullis.linked(&issuer, "hugo-0007").await.is_none());
    assert!(portcullis.sso_sessions(&local.id).await.is_empty());
    assert_eq!(
        portcullis.count(EventKind::UserCreated).await,
        1,
        "only the local one"
    );
    assert_eq!(portcullis.sso_sessions_created().await, 0);
}

/// The people of `name_taken_cases`: a local account's name, and an upstream person called so
/// there (by `preferred_username`, or lacking one, by e-mail address).
fn name_taken_cases() -> [(&'static str, &'static str, Value); 2] {
    [
        (
            "the same preferred_username",
            "ivan",
            json!({ "sub": "ivan-0008", "preferred_username": "ivan", "email": "ivan@corp.example" }),
        ),
        (
            "the same e-mail address",
            "jo@elsewhere.example",
            json!({ "sub": "jo-0009", "email": "jo@elsewhere.example" }),
        ),
    ]
}

/// ASVS5-10.5.2 / ASVS5-6.8.1: accounts are never matched by name or e-mail: an upstream person
/// whose `preferred_username` (or, lacking one, e-mail address) is a local account's name is
/// not signed in, and the local account stays unlinked and signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_10_5_2_6_8_1_a_local_account_of_the_same_name_or_address_is_never_linked() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    for (case, name, person) in name_taken_cases() {
        let local = portcullis
            .accounts
            .add_user(name, "periwinkle-Harbor-Lantern-5817", &Actor::cli())
            .await
            .unwrap();
        let subject = person["sub"].as_str().unwrap().to_owned();
        idp.person(person);
        let answer = portcullis.browser().sign_in_upstream().await;
        assert!(answer.status >= 400, "{case}: refused: {}", answer.status);
        assert!(!answer.signs_in(), "{case}: nobody is signed in");
        assert!(
            portcullis.linked(&issuer, &subject).await.is_none(),
            "{case}"
        );
        assert!(
            portcullis
                .identities
                .identities_of(&local.id)
                .await
                .unwrap()
                .is_empty(),
            "{case}: the local account is not linked"
        );
        assert!(
            portcullis.sso_sessions(&local.id).await.is_empty(),
            "{case}"
        );
    }
    assert_eq!(portcullis.count(EventKind::UserIdentityLinked).await, 0);
    assert_eq!(
        portcullis.count(EventKind::UserCreated).await,
        2,
        "only the local ones"
    );
    assert_eq!(portcullis.sso_sessions_created().await, 0);
}

/// An upstream person whose name here is taken by a local account is told so (409, "exists
/// here already", sign in to it and link from the account page), not that sign-in is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_gets_the_409_page_saying_the_account_exists() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    for (case, name, person) in name_taken_cases() {
        portcullis
            .accounts
            .add_user(name, "periwinkle-Harbor-Lantern-5817", &Actor::cli())
            .await
            .unwrap();
        idp.person(person);
        let answer = portcullis.browser().sign_in_upstream().await;
        assert_refused(&answer, 409, "exists here already", case);
        assert!(answer.body.contains(name), "{case}: the page names {name}");
    }
}

/// Home-realm discovery: an address of a domain the provider serves, typed on the sign-in form,
/// goes upstream with it as `login_hint`; the password typed is not checked, right or wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_realm_discovery_sends_the_domain_upstream_without_checking_the_password() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let password = "saffron-Glacier-Anchor-6120";
    portcullis
        .accounts
        .add_user("kim@corp.example", password, &Actor::cli())
        .await
        .unwrap();
    idp.person(
        json!({ "sub": "kim-0010", "preferred_username": "kim", "email": "kim@corp.example" }),
    );
    for typed in [password, "wrong"] {
        let mut browser = portcullis.browser();
        let form = browser.get("/login").await;
        let csrf = hidden(&form.body, "csrf");
        let answer = browser
            .post(
                "/login",
                &[
                    ("username", "Kim@Corp.Example"),
                    ("password", typed),
                    ("csrf", &csrf),
                    ("return_to", "/account"),
                ],
            )
            .await;
        assert_eq!(answer.status, 303, "{}", answer.body);
        let location = answer.location.unwrap();
        assert!(
            location.starts_with(&format!("/login/upstream/{PROVIDER}?")),
            "{location}"
        );
        let next = Url::parse(&format!("{}{location}", portcullis.base)).unwrap();
        assert_eq!(query_of(&next)["login_hint"], "Kim@Corp.Example");
        assert!(browser.cookie("__Host-portcullis-sign-in").is_none());

        let authorize = browser
            .go_upstream(&format!("?{}", next.query().unwrap()))
            .await;
        assert_eq!(query_of(&authorize)["login_hint"], "Kim@Corp.Example");
        let callback = browser.upstream_answers(&authorize).await;
        assert_signed_in(&browser.get(callback.as_str()).await, typed);
    }
    assert_eq!(
        portcullis.count(EventKind::LoginFailed).await,
        0,
        "no password was checked"
    );
    let local = portcullis
        .accounts
        .by_name("kim@corp.example")
        .await
        .unwrap();
    assert!(
        portcullis.sso_sessions(&local.id).await.is_empty(),
        "the local account of that name was not signed in"
    );
}

/// `form_post`: the upstream answers by a cross-site POST to the callback, which the pages'
/// same-origin check lets through to that path alone; the sealed request's cookie is
/// `SameSite=None` so that the POST carries it (COOKIE-6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_post_answer_by_a_cross_site_post_signs_in() {
    let (_clock, idp, portcullis) = world(|s| s.form_post = true).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({ "sub": "lena-0011", "preferred_username": "lena" }));
    let mut browser = portcullis.browser();
    let start = browser.get(&format!("/login/upstream/{PROVIDER}")).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let sealed = start.set_cookie(UPSTREAM_COOKIE).unwrap();
    assert!(
        sealed.contains("SameSite=None") && sealed.contains("Secure"),
        "{sealed}"
    );
    let authorize = Url::parse(start.location.as_deref().unwrap()).unwrap();
    assert_eq!(query_of(&authorize)["response_mode"], "form_post");

    let page = browser.get(authorize.as_str()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let action_at = page.body.find("action=\"").unwrap() + "action=\"".len();
    let action = &page.body[action_at..action_at + page.body[action_at..].find('"').unwrap()];
    assert_eq!(
        action,
        format!("{}/login/upstream/{PROVIDER}/callback", portcullis.base)
    );
    let (code, state, iss) = (
        hidden(&page.body, "code"),
        hidden(&page.body, "state"),
        hidden(&page.body, "iss"),
    );
    assert_eq!(iss, issuer);
    let cross_site = [
        ("sec-fetch-site", "cross-site"),
        ("origin", issuer.as_str()),
    ];
    let form = [
        ("code", code.as_str()),
        ("state", state.as_str()),
        ("iss", iss.as_str()),
    ];

    // The same cross-site POST anywhere else is refused.
    let mut elsewhere = browser.clone();
    let refused = elsewhere
        .send(reqwest::Method::POST, "/login", Some(&form), &cross_site)
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    let answer = browser
        .send(reqwest::Method::POST, action, Some(&form), &cross_site)
        .await;
    assert_signed_in(&answer, "the form_post answer");
    let user = portcullis
        .linked(&issuer, "lena-0011")
        .await
        .unwrap()
        .user_id;
    assert_eq!(portcullis.sso_sessions(&user).await.len(), 1);
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

/// ASVS5-6.8.4 / NIST4-13 (recency goes by the upstream's `auth_time`), ASVS5-7.6.1 (an SSO
/// session an upstream bounds ends with its ID token): an ID token whose `auth_time` is an
/// hour old gives an SSO session authenticated an hour ago, not now; with `bound_session` its
/// absolute deadline is the ID token's `exp`, by a rule naming the upstream, and it ends then;
/// without, the policy's deadline stands and it lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_6_8_4_7_6_1_upstream_auth_time_and_bound_session_deadline() {
    for bound in [false, true] {
        let case = if bound { "bound" } else { "not bound" };
        let (clock, idp, portcullis) = world(|s| s.bound_session = bound).await;
        let issuer = idp.issuer().to_owned();
        idp.person(json!({ "sub": "rosa-0016", "preferred_username": "rosa" }));
        let now = idp.now();
        idp.tamper(json!({ "auth_time": now - 3600 }));
        let mut browser = portcullis.browser();
        assert_signed_in(&browser.sign_in_upstream().await, case);
        let user = portcullis
            .linked(&issuer, "rosa-0016")
            .await
            .unwrap()
            .user_id;
        let sessions = portcullis.sso_sessions(&user).await;
        assert_eq!(sessions.len(), 1, "{case}");
        let session = &sessions[0];
        assert_eq!(
            session.authenticated_at,
            Timestamp::from_millis((now - 3600) * 1000),
            "{case}: the upstream's auth_time, not now"
        );
        assert_eq!(session.created_at, clock.now(), "{case}");
        assert_eq!(
            UpstreamLink::of(session).and_then(|l| l.auth_time),
            Some(Timestamp::from_millis((now - 3600) * 1000)),
            "{case}"
        );
        let exp = Timestamp::from_millis((now + 600) * 1000);
        if bound {
            assert_eq!(session.absolute.at, exp, "the ID token's exp");
            assert_eq!(
                session.absolute.rule,
                format!("upstream {PROVIDER}: no longer than its ID token")
            );
        } else {
            assert!(session.absolute.at > exp, "{:?}", session.absolute);
            assert_eq!(
                session.absolute.at,
                session.created_at.plus(session.absolute.lifetime()),
                "the policy's lifetime"
            );
            assert!(
                !session.absolute.rule.contains("upstream"),
                "{}",
                session.absolute.rule
            );
        }
        // Just past the ID token's exp, well within the idle timeout.
        clock.advance(Duration::from_secs(601));
        let account = browser.get("/account").await;
        if bound {
            assert_eq!(account.status, 303, "ended with the ID token");
            assert!(
                account
                    .location
                    .as_deref()
                    .is_some_and(|l| l.starts_with("/login")),
                "{:?}",
                account.location
            );
            assert!(portcullis.sso_sessions(&user).await.is_empty());
        } else {
            assert_eq!(account.status, 200, "the policy's deadline stands");
        }
    }
}

/// ASVS5-6.8.1 / ASVS4-3.3.4: linking an upstream identity adds a way into the account and
/// unlinking removes one, so both need a recent authentication, as a password change does: a
/// borrowed session, past its elevation, is sent to `/reauth` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_6_8_1_linking_and_unlinking_need_a_recent_authentication() {
    let (clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    let password = "juniper-Falcon-Meadow-3381";
    let local = portcullis
        .accounts
        .add_user("nadia", password, &Actor::cli())
        .await
        .unwrap();
    let mut browser = portcullis.browser();
    assert_signed_in(
        &browser.sign_in_with_password("nadia", password).await,
        "the password",
    );
    idp.person(json!({ "sub": "nadia-0012", "preferred_username": "nadia.corp" }));
    let page = browser.get("/account").await;
    let authorize = browser.link_upstream(&page_csrf(&page.body)).await;
    let callback = browser.upstream_answers(&authorize).await;
    let answer = browser.get(callback.as_str()).await;
    assert_eq!(answer.location.as_deref(), Some("/account?done=linked"));

    // Past the policy's elevation (10 minutes), still signed in.
    clock.advance(Duration::from_secs(11 * 60));
    let page = browser.get("/account").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page_csrf(&page.body);
    let link = browser
        .post(
            &format!("/login/upstream/{PROVIDER}/link"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(link.status, 303, "{}", link.body);
    assert_eq!(link.location.as_deref(), Some("/reauth?return_to=/account"));
    assert!(
        link.set_cookie(UPSTREAM_COOKIE).is_none(),
        "nothing started"
    );
    let unlink = browser
        .post(
            "/account/identities/unlink",
            &[
                ("csrf", &csrf),
                ("issuer", &issuer),
                ("subject", "nadia-0012"),
            ],
        )
        .await;
    assert_eq!(
        unlink.location.as_deref(),
        Some("/reauth?return_to=/account")
    );
    let link = portcullis.linked(&issuer, "nadia-0012").await;
    assert_eq!(
        link.map(|l| l.user_id),
        Some(local.id.clone()),
        "still linked"
    );
    assert_eq!(portcullis.count(EventKind::UserIdentityUnlinked).await, 0);
}

/// ASVS5-10.5.2 / ASVS5-6.8.1 (linking by proving both): a person signed in here with a
/// password links an upstream person from the account page; no SSO session is started, the
/// one they have goes on. An upstream person linked to another account is refused (409).
/// Unlinking from the account page removes the link; an account made upstream, without a
/// password, is offered no Unlink, and a forged one is refused (409) with the link kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_10_5_2_6_8_1_link_from_the_account_page_by_proving_both_and_unlink() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    let password = "juniper-Falcon-Meadow-3381";
    let local = portcullis
        .accounts
        .add_user("nadia", password, &Actor::cli())
        .await
        .unwrap();

    // Someone else came from the upstream first: their account is made there, linked.
    idp.person(json!({ "sub": "omar-0013", "preferred_username": "omar" }));
    let mut omar = portcullis.browser();
    assert_signed_in(&omar.sign_in_upstream().await, "omar");
    let omars = portcullis.linked(&issuer, "omar-0013").await.unwrap();

    let mut browser = portcullis.browser();
    assert_signed_in(
        &browser.sign_in_with_password("nadia", password).await,
        "the password",
    );
    let cookie = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
    let session_id = portcullis.sso_sessions(&local.id).await[0].id.clone();
    let page = browser.get("/account").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(offers_link(&page.body), "{}", page.body);
    assert!(!page.body.contains("/account/identities/unlink"));
    let csrf = page_csrf(&page.body);

    // Without the page's CSRF token (another site's form), nothing starts.
    let refused = browser
        .post(
            &format!("/login/upstream/{PROVIDER}/link"),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.set_cookie(UPSTREAM_COOKIE).is_none());

    // Omar's upstream account, linked here to Omar's: refused, nothing changes.
    let authorize = browser.link_upstream(&csrf).await;
    let callback = browser.upstream_answers(&authorize).await;
    let answer = browser.get(callback.as_str()).await;
    assert_refused(&answer, 409, "linked to another account here", "omar's");
    assert_eq!(
        portcullis.linked(&issuer, "omar-0013").await,
        Some(omars.clone())
    );
    assert!(
        portcullis
            .identities
            .identities_of(&local.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Nadia's own upstream account, linked to no one yet.
    idp.person(json!({ "sub": "nadia-0012", "preferred_username": "nadia.corp" }));
    let authorize = browser.link_upstream(&csrf).await;
    let callback = browser.upstream_answers(&authorize).await;
    let answer = browser.get(callback.as_str()).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location.as_deref(), Some("/account?done=linked"));
    assert!(!answer.signs_in(), "no new SSO session");
    assert_eq!(browser.cookie(SESSION_COOKIE), Some(cookie.as_str()));
    let link = portcullis
        .linked(&issuer, "nadia-0012")
        .await
        .expect("linked");
    assert_eq!(link.user_id, local.id);
    assert_eq!(link.provider, PROVIDER);
    assert!(matches!(
        portcullis.accounts.by_name("nadia.corp").await,
        Err(AccountError::NotFound)
    ));
    let sessions = portcullis.sso_sessions(&local.id).await;
    assert_eq!(sessions.len(), 1, "the one SSO session");
    assert_eq!(sessions[0].id, session_id);
    assert!(UpstreamLink::of(&sessions[0]).is_none());
    assert_eq!(
        portcullis.sso_sessions_created().await,
        2,
        "omar's and nadia's password sign-in"
    );
    assert_eq!(portcullis.count(EventKind::UserIdentityLinked).await, 2);
    let page = browser.get("/account?done=linked").await;
    assert_eq!(page.status, 200, "the same cookie works: {}", page.body);
    assert!(page.body.contains("The identity provider is linked"));
    assert!(!offers_link(&page.body), "linked already");

    // Unlink, with the page's form.
    let csrf = page_csrf(&page.body);
    assert_eq!(hidden(&page.body, "issuer"), issuer);
    assert_eq!(hidden(&page.body, "subject"), "nadia-0012");
    let answer = browser
        .post(
            "/account/identities/unlink",
            &[
                ("csrf", &csrf),
                ("issuer", &issuer),
                ("subject", "nadia-0012"),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location.as_deref(), Some("/account?done=unlinked"));
    assert!(portcullis.linked(&issuer, "nadia-0012").await.is_none());
    assert_eq!(portcullis.count(EventKind::UserIdentityUnlinked).await, 1);
    let page = browser.get("/account").await;
    assert!(offers_link(&page.body), "linkable again");

    // The old way in, a GET (any site can send one), links nothing: it is a sign-in.
    let mut lured = browser.clone();
    let authorize = lured.go_upstream("?link=1&return_to=/account").await;
    let callback = lured.upstream_answers(&authorize).await;
    lured.get(callback.as_str()).await;
    assert!(
        portcullis
            .identities
            .identities_of(&local.id)
            .await
            .unwrap()
            .is_empty(),
        "nadia's account is not linked by a GET"
    );

    // Omar's account has no password: its one link is its only way in.
    let page = omar.get("/account").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("your only way to sign in"));
    assert!(!page.body.contains("/account/identities/unlink"));
    let forged = omar
        .post(
            "/account/identities/unlink",
            &[
                ("csrf", &page_csrf(&page.body)),
                ("issuer", &issuer),
                ("subject", "omar-0013"),
            ],
        )
        .await;
    assert_eq!(forged.status, 409, "{}", forged.body);
    assert!(
        forged.body.contains("only way to sign in"),
        "{}",
        forged.body
    );
    assert_eq!(portcullis.linked(&issuer, "omar-0013").await, Some(omars));
    assert_eq!(portcullis.count(EventKind::UserIdentityUnlinked).await, 1);
}

/// ASVS4-3.6.1 / NIST3-13 / OIDC-CORE-3 / OIDC-CORE-4 (as RP upstream): a person signed in
/// through the upstream whom an application asks to authenticate again (`max_age` passed,
/// `prompt=login`) goes back upstream, with `max_age` and `prompt=login` passed on; their SSO
/// session is the same one after (same id), elevated: a new token (ASVS5-7.2.4), a new
/// `authenticated_at`; the application's session under it lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs4_3_6_1_oidc_core_3_4_reauthentication_goes_upstream_and_elevates_the_sso_session() {
    let (clock, idp, portcullis) = world_with_provider().await;
    let issuer = idp.issuer().to_owned();
    let rp = portcullis.register_client("Notes", None).await;
    idp.person(json!({ "sub": "pia-0014", "sid": "sid-pia", "preferred_username": "pia" }));
    let mut browser = portcullis.browser();
    assert_signed_in(&browser.sign_in_upstream().await, "pia");
    let user = portcullis
        .linked(&issuer, "pia-0014")
        .await
        .unwrap()
        .user_id;
    let first = portcullis.sso_sessions(&user).await[0].clone();

    // The application signs the person in: its session under the SSO session.
    let (path, verifier) = authorization(&rp, &[]);
    let code = code_of(&rp, &browser.get(&path).await);
    let (status, tokens) = portcullis.redeem(&rp, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let applications = portcullis
        .application_sessions(&user, first.id.as_str())
        .await;
    assert_eq!(applications.len(), 1);
    let application = applications[0].id.clone();

    for (case, extra) in [
        ("max_age", vec![("max_age", "1")]),
        ("prompt=login", vec![("prompt", "login")]),
    ] {
        clock.advance(Duration::from_secs(5));
        let before = portcullis.sso_sessions(&user).await[0].clone();
        let old_cookie = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
        let requests = idp.authorizations().len();
        let (path, verifier) = authorization(&rp, &extra);
        let answer = browser.get(&path).await;
        assert_eq!(answer.status, 303, "{case}: {}", answer.body);
        assert_eq!(
            answer.location.as_deref(),
            Some(format!("/login/upstream/{PROVIDER}?return_to=/oidc/authorize/resume").as_str()),
            "{case}: upstream, not the password form"
        );
        let authorize = browser
            .go_upstream("?return_to=/oidc/authorize/resume")
            .await;
        let sent = query_of(&authorize);
        match case {
            "max_age" => {
                assert_eq!(
                    sent.get("max_age").map(String::as_str),
                    Some("1"),
                    "{sent:?}"
                );
                assert!(!sent.contains_key("prompt"), "{sent:?}");
            }
            _ => assert_eq!(
                sent.get("prompt").map(String::as_str),
                Some("login"),
                "{sent:?}"
            ),
        }
        let callback = browser.upstream_answers(&authorize).await;
        assert_eq!(idp.authorizations().len(), requests + 1);
        let answer = browser.get(callback.as_str()).await;
        assert_eq!(answer.status, 303, "{case}: {}", answer.body);
        assert_eq!(
            answer.location.as_deref(),
            Some("/oidc/authorize/resume"),
            "{case}"
        );
        let new_cookie = browser.cookie(SESSION_COOKIE).unwrap().to_owned();
        assert_ne!(new_cookie, old_cookie, "{case}: a new token");
        let sessions = portcullis.sso_sessions(&user).await;
        assert_eq!(sessions.len(), 1, "{case}: no second SSO session");
        let after = &sessions[0];
        assert_eq!(after.id, first.id, "{case}: the same SSO session");
        assert_eq!(after.authenticated_at, clock.now(), "{case}");
        assert!(after.authenticated_at > before.authenticated_at, "{case}");
        assert!(
            after.elevations.len() > before.elevations.len(),
            "{case}: elevated"
        );
        let mut stale = browser.clone();
        stale.cookies.insert(SESSION_COOKIE.into(), old_cookie);
        assert_eq!(
            stale.get("/account").await.status,
            303,
            "{case}: the old token no longer works"
        );

        let code = code_of(&rp, &browser.get("/oidc/authorize/resume").await);
        let (status, tokens) = portcullis.redeem(&rp, &code, &verifier).await;
        assert_eq!(status, 200, "{case}: {tokens}");
        let live = portcullis
            .application_sessions(&user, first.id.as_str())
            .await;
        assert!(
            live.iter().any(|s| s.id == application),
            "{case}: the application's first session lives on"
        );
    }
    assert_eq!(portcullis.sso_sessions_created().await, 1);
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
}

/// ASVS5-6.2.3 / ASVS4-3.6.1 / ASVS5-6.8.4 for an account the upstream made (no password
/// here): a sensitive account page asks to confirm it is them, offering only "Confirm with Corp
/// ID", which signs in there again (`prompt=login`, `max_age=0`) and elevates the same SSO
/// session: the page then opens. An answer whose `auth_time` is old or missing confirms
/// nothing; posting a password instead gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asvs5_6_2_3_an_upstream_account_confirms_it_is_them_upstream() {
    let (clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    idp.person(json!({ "sub": "uma-0017", "sid": "sid-uma", "preferred_username": "uma" }));
    let mut browser = portcullis.browser();
    assert_signed_in(&browser.sign_in_upstream().await, "uma");
    let user = portcullis
        .linked(&issuer, "uma-0017")
        .await
        .unwrap()
        .user_id;
    let before = portcullis.sso_sessions(&user).await[0].clone();
    // Past the 10 minutes a sign-in counts as recent, within the 15 of idleness.
    clock.advance(Duration::from_secs(11 * 60));

    let asked = browser.get("/account/two-factor").await;
    assert_eq!(asked.status, 303, "{}", asked.body);
    let reauth = asked.location.expect("to confirm first");
    assert!(reauth.starts_with("/reauth?"), "{reauth}");
    let page = browser.get(&reauth).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("name=\"password\""),
        "no password to give"
    );
    let href = attribute_after(&page.body, "id=\"reauth-upstream\"", "href")
        .unwrap_or_else(|| panic!("a way to confirm upstream: {}", page.body));
    assert!(page.body.contains("Confirm with Corp ID"), "{}", page.body);

    // An upstream that does not sign the person in again, as asked, or does not say when it
    // did, confirms nothing (OIDC Core §3.1.3.7 step 13, ASVS5-6.8.4): its answer is refused
    // and the page still asks.
    let now = idp.now();
    for (case, tamper) in [
        ("an old auth_time", json!({ "auth_time": now - 3600 })),
        ("no auth_time", json!({ "auth_time": null })),
    ] {
        idp.tamper(tamper);
        let started = browser.get(&href).await;
        let authorize = Url::parse(started.location.as_deref().unwrap()).unwrap();
        let callback = browser.upstream_answers(&authorize).await;
        let back = browser.get(callback.as_str()).await;
        assert_refused(&back, 403, "did not sign you in", case);
        let sessions = portcullis.sso_sessions(&user).await;
        assert_eq!(
            sessions[0].elevations.len(),
            before.elevations.len(),
            "{case}: not elevated"
        );
        let asked = browser.get("/account/two-factor").await;
        assert_eq!(asked.status, 303, "{case}: {}", asked.body);
    }
    idp.honest();

    let csrf = hidden(&browser.get("/account").await.body, "csrf");
    let guessed = browser
        .post(
            "/reauth",
            &[
                ("csrf", &csrf),
                ("return_to", "/account/two-factor"),
                ("password", ""),
            ],
        )
        .await;
    assert_eq!(guessed.status, 401, "{}", guessed.body);

    let started = browser.get(&href).await;
    assert_eq!(started.status, 303, "{}", started.body);
    let authorize = Url::parse(started.location.as_deref().unwrap()).unwrap();
    let sent = query_of(&authorize);
    assert_eq!(
        sent.get("prompt").map(String::as_str),
        Some("login"),
        "{sent:?}"
    );
    assert_eq!(
        sent.get("max_age").map(String::as_str),
        Some("0"),
        "{sent:?}"
    );
    let callback = browser.upstream_answers(&authorize).await;
    let back = browser.get(callback.as_str()).await;
    assert_eq!(back.status, 303, "{}", back.body);
    assert_eq!(back.location.as_deref(), Some("/account/two-factor"));
    let sessions = portcullis.sso_sessions(&user).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].id, before.id, "the same SSO session, elevated");
    assert!(sessions[0].elevations.len() > before.elevations.len());
    assert_eq!(browser.get("/account/two-factor").await.status, 200);
}

/// A client registered with `upstream = corp` sends a person who is not signed in to that
/// provider, not to the password form; one without sends them to the password form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_one_upstream_sends_its_people_there_to_sign_in() {
    let (_clock, idp, portcullis) = world_with_provider().await;
    let corp_only = portcullis.register_client("Intranet", Some(PROVIDER)).await;
    let any = portcullis.register_client("Notes", None).await;
    idp.person(json!({ "sub": "rui-0017", "preferred_username": "rui" }));

    let mut browser = portcullis.browser();
    let answer = browser.get(&authorization(&any, &[]).0).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(
        answer.location.as_deref(),
        Some("/login?return_to=/oidc/authorize/resume")
    );

    let mut browser = portcullis.browser();
    let answer = browser.get(&authorization(&corp_only, &[]).0).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(
        answer.location.as_deref(),
        Some(format!("/login/upstream/{PROVIDER}?return_to=/oidc/authorize/resume").as_str())
    );
    // And through it the authorization completes.
    let authorize = browser
        .go_upstream("?return_to=/oidc/authorize/resume")
        .await;
    let callback = browser.upstream_answers(&authorize).await;
    let answer = browser.get(callback.as_str()).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location.as_deref(), Some("/oidc/authorize/resume"));
    assert!(answer.signs_in());
    code_of(&corp_only, &browser.get("/oidc/authorize/resume").await);
}

/// NIST3-14 (sign-out propagated explicitly, as RP upstream): a person signed in through the
/// upstream is offered to sign out of it too; with it, the SSO session ends and the signed-out
/// page continues to the upstream's end-session endpoint with its ID token as `id_token_hint`,
/// our `client_id`, our signed-out URI and a sealed `state`; back there with that state, the
/// signed-out page; with a forged or no state, home (`/`), no page claiming a sign-out. A person
/// signed in with a password is not offered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nist3_14_sign_out_of_the_upstream_too_through_its_end_session_endpoint() {
    let (_clock, idp, portcullis) = world(|_| {}).await;
    let issuer = idp.issuer().to_owned();
    let password = "cobalt-Willow-Summit-4402";
    portcullis
        .accounts
        .add_user("sam", password, &Actor::cli())
        .await
        .unwrap();
    let mut local = portcullis.browser();
    assert_signed_in(&local.sign_in_with_password("sam", password).await, "sam");
    let page = local.get("/logout").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("name=\"upstream\""), "not offered");

    idp.person(json!({ "sub": "quinn-0015", "sid": "sid-quinn", "preferred_username": "quinn" }));
    let mut browser = portcullis.browser();
    assert_signed_in(&browser.sign_in_upstream().await, "quinn");
    let user = portcullis
        .linked(&issuer, "quinn-0015")
        .await
        .unwrap()
        .user_id;
    let session = portcullis.sso_sessions(&user).await[0].clone();
    let id_token = UpstreamLink::of(&session).unwrap().id_token;

    let page = browser.get("/logout").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Also sign out of Corp ID"),
        "{}",
        page.body
    );
    assert!(page.body.contains("name=\"upstream\""));
    let csrf = hidden(&page.body, "csrf");
    let answer = browser
        .post("/logout", &[("csrf", &csrf), ("upstream", "1")])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body.contains("You are signed out"),
        "{}",
        answer.body
    );
    assert!(portcullis.sso_sessions(&user).await.is_empty());
    let ended = portcullis
        .engine
        .get(&session.id, &Principal::operator())
        .await
        .unwrap();
    assert_eq!(
        ended.ended.as_ref().map(|e| e.reason.as_str()),
        Some("logout")
    );
    assert!(browser.cookie(SESSION_COOKIE).is_none(), "cookie cleared");

    let continue_to =
        attribute_after(&answer.body, "id=\"continue\"", "href").expect("a continue link");
    let upstream_logout = Url::parse(&continue_to).unwrap();
    assert_eq!(
        continue_to.split('?').next(),
        Some(format!("{issuer}/logout").as_str())
    );
    let params = query_of(&upstream_logout);
    assert_eq!(params["id_token_hint"], id_token);
    assert_eq!(params["client_id"], CLIENT_ID);
    let signed_out_uri = format!("{}/login/upstream/{PROVIDER}/signed-out", portcullis.base);
    assert_eq!(params["post_logout_redirect_uri"], signed_out_uri);
    let state = params["state"].clone();
    assert!(!state.is_empty());
    assert_eq!(
        browser.get(&continue_to).await.status,
        200,
        "the upstream signs out"
    );

    // Back from the upstream with the state: the signed-out page.
    let back = browser
        .get(&format!(
            "{signed_out_uri}?{}",
            form_body(&[("state", &state)])
        ))
        .await;
    assert_eq!(back.status, 200, "{}", back.body);
    assert!(back.location.is_none());
    assert!(back.body.contains("You are signed out"));
    assert!(back.body.contains("id=\"sign-in-again\""));

    // A forged or missing state (any site can link here): no page saying "signed out" to
    // someone who may still be signed in, and no redirect anywhere but home.
    for forged in [
        format!("?{}", form_body(&[("state", &format!("{state}x"))])),
        format!("?{}", form_body(&[("state", "https://evil.example/")])),
        String::new(),
    ] {
        let answer = browser.get(&format!("{signed_out_uri}{forged}")).await;
        assert_eq!(answer.status, 303, "{forged}: {}", answer.body);
        assert_eq!(answer.location.as_deref(), Some("/"), "{forged}");
        assert!(!answer.body.contains("You are signed out"));
    }

    // Without the box ticked, only here.
    let mut again = portcullis.browser();
    assert_signed_in(&again.sign_in_upstream().await, "quinn again");
    let page = again.get("/logout").await;
    let answer = again
        .post("/logout", &[("csrf", &hidden(&page.body, "csrf"))])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(!answer.body.contains(&format!("{issuer}/logout")));
    assert!(!answer.body.contains("id=\"continue\""));
}

/// OIDC-RPL-5 with a global logout the application asks for: RP-initiated logout at
/// Portcullis with `federated` (the parameter Auth0 gives it) ends the SSO session and goes on
/// to the upstream's end-session endpoint with the upstream's ID token; without it, the person
/// is signed out here only; a request that must be confirmed offers the upstream box ticked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_rpl_5_an_application_asks_to_sign_out_of_the_upstream_too() {
    let (_clock, idp, portcullis) = world_with_provider().await;
    let issuer = idp.issuer().to_owned();
    let rp = portcullis.register_client("Notes", None).await;
    idp.person(json!({ "sub": "rhea-0016", "sid": "sid-rhea", "preferred_username": "rhea" }));

    for federated in [true, false] {
        let mut browser = portcullis.browser();
        assert_signed_in(&browser.sign_in_upstream().await, "rhea");
        let user_id = portcullis
            .linked(&issuer, "rhea-0016")
            .await
            .unwrap()
            .user_id;
        let session = portcullis.sso_sessions(&user_id).await[0].clone();
        let upstream_id_token = UpstreamLink::of(&session).unwrap().id_token;
        let (path, verifier) = authorization(&rp, &[]);
        let code = code_of(&rp, &browser.get(&path).await);
        let (status, tokens) = portcullis.redeem(&rp, &code, &verifier).await;
        assert_eq!(status, 200, "{tokens}");
        let id_token = tokens["id_token"].as_str().unwrap();
        let mut params = vec![("id_token_hint", id_token)];
        if federated {
            params.push(("federated", ""));
        }
        let answer = browser
            .get(&format!("/oidc/logout?{}", form_body(&params)))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body.contains("You are signed out"),
            "{}",
            answer.body
        );
        assert!(
            portcullis.sso_sessions(&user_id).await.is_empty(),
            "federated={federated}: signed out here"
        );
        let continue_to = attribute_after(&answer.body, "id=\"continue\"", "href");
        if federated {
            let continue_to = continue_to.expect("on to the upstream");
            assert!(
                continue_to.starts_with(&format!("{issuer}/logout?")),
                "{continue_to}"
            );
            let upstream = query_of(&Url::parse(&continue_to).unwrap());
            assert_eq!(upstream["id_token_hint"], upstream_id_token);
        } else {
            assert!(continue_to.is_none(), "{continue_to:?}");
            assert!(!answer.body.contains(&format!("{issuer}/logout")));
        }
    }

    // Without an ID token naming the session, the person confirms; the box comes ticked.
    let mut browser = portcullis.browser();
    assert_signed_in(&browser.sign_in_upstream().await, "rhea");
    let page = browser
        .get(&format!(
            "/oidc/logout?{}",
            form_body(&[("client_id", &rp.id), ("federated", "1")])
        ))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("id=\"sign-out-upstream\" checked"),
        "{}",
        page.body
    );
}

// ---------------------------------------------------------------------------------------
// Two Portcullis instances, one upstream of the other: both sides of the protocol ours.

/// The browser's request to whichever instance `url` names (each keeps its own cookies).
async fn chained_get(a: &mut Browser, b: &mut Browser, url: &str) -> Answer {
    if url.starts_with(&format!("{}/", b.portcullis)) {
        b.get(url).await
    } else {
        a.get(url).await
    }
}

/// Two Portcullis instances: A signs people in through B's provider (A's client at B
/// authenticating as `auth` says), and B knows `ada` by her password.
struct Chain {
    a: Portcullis,
    b: Portcullis,
    ada: User,
    password: &'static str,
}

/// How A authenticates at B's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainAuth {
    /// A client secret B issued.
    Secret,
    /// `private_key_jwt`, B registering A's published key set.
    PrivateKeyJwt,
    /// `private_key_jwt`, B registering keys that are not A's.
    PrivateKeyJwtWrongKeys,
}

async fn chain(clock: &Arc<ManualClock>, auth: ChainAuth) -> Chain {
    // B: the provider; its own upstream is never asked (discovery is read when first needed).
    let b = Portcullis::start(clock, corp("http://127.0.0.1:9"), true).await;
    let app = b
        .engine
        .add_application(
            ApplicationChange {
                name: Some("portcullis-a".into()),
                ..ApplicationChange::default()
            },
            &Actor::cli(),
        )
        .await
        .unwrap();
    let secret = b.engine.new_client_secret();
    let mut settings = corp(&b.base);
    settings.client_id = app.id.as_str().to_owned();
    settings.scopes = vec!["openid".into(), "profile".into()];
    settings.client_auth = match auth {
        ChainAuth::Secret => UpstreamClientAuth::Secret(secret.expose().to_owned()),
        _ => UpstreamClientAuth::PrivateKeyJwt,
    };
    // A's provider is on only to sign its client assertions.
    let a = Portcullis::start(clock, settings, auth != ChainAuth::Secret).await;
    let client_auth = match auth {
        ChainAuth::Secret => ClientAuth::Secret(secret.hash()),
        ChainAuth::PrivateKeyJwt => ClientAuth::PrivateKeyJwt {
            jwks: a.provider.as_ref().unwrap().keys().jwks().to_owned(),
        },
        ChainAuth::PrivateKeyJwtWrongKeys => ClientAuth::PrivateKeyJwt {
            jwks: b.provider.as_ref().unwrap().keys().jwks().to_owned(),
        },
    };
    b.engine
        .register_client(
            app.id.as_str(),
            Some(Client {
                auth: client_auth,
                redirect_uris: vec![format!("{}/login/upstream/{PROVIDER}/callback", a.base)],
                post_logout_redirect_uris: vec![format!(
                    "{}/login/upstream/{PROVIDER}/signed-out",
                    a.base
                )],
                backchannel_logout_uri: Some(format!(
                    "{}/federation/{PROVIDER}/backchannel-logout",
                    a.base
                )),
                frontchannel_logout_uri: None,
                scopes: ["openid", "profile"].map(String::from).into(),
                grant_types: [GrantType::AuthorizationCode].into(),
                require_consent: false,
                id_token_signed_response_alg: None,
                upstream: None,
            }),
            &Actor::cli(),
        )
        .await
        .unwrap();
    let password = "correct horse battery staple";
    let ada = b
        .accounts
        .add_user("ada", password, &Actor::cli())
        .await
        .unwrap();
    Chain {
        a,
        b,
        ada,
        password,
    }
}

/// The chain App → Portcullis A → Portcullis B: A signs people in through B's OpenID Connect
/// provider. Flow 1 (no session anywhere: B asks for the password, then A's SSO session is
/// made, linked to B's person and B's SSO session by `sid`), flow 3 (A's SSO session: A
/// answers without visiting B), flow 2 (only B's session: no credentials asked), and logout
/// at B reaching A by B's own back-channel logout (A's SSO session ends, `upstream_logout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_bcl_chained_portcullis_instances_sign_in_and_log_out_along_the_chain() {
    let clock = clock_now();
    let Chain {
        a,
        b,
        ada,
        password,
    } = chain(&clock, ChainAuth::Secret).await;
    let b_provider = b.provider.clone().expect("B's provider is on");
    let (mut at_a, mut at_b) = (a.browser(), b.browser());

    // Flow 1: nobody signed in anywhere.
    let authorize = at_a.go_upstream("?return_to=/account").await;
    assert!(
        authorize
            .as_str()
            .starts_with(&format!("{}/oidc/authorize?", b.base))
    );
    let to_sign_in = at_b.get(authorize.as_str()).await;
    assert_eq!(to_sign_in.status, 303, "{}", to_sign_in.body);
    assert_eq!(
        to_sign_in.location.as_deref(),
        Some("/login?return_to=/oidc/authorize/resume"),
        "B asks for credentials"
    );
    let signed_in_at_b = at_b
        .sign_in_with_password_to("ada", password, "/oidc/authorize/resume")
        .await;
    assert_eq!(signed_in_at_b.status, 303, "{}", signed_in_at_b.body);
    let resumed = at_b.get("/oidc/authorize/resume").await;
    let callback = resumed.location.clone().expect("B answers A");
    assert!(
        callback.starts_with(&format!("{}/login/upstream/{PROVIDER}/callback?", a.base)),
        "{callback}"
    );
    let b_sso = b.sso_sessions(&ada.id).await;
    assert_eq!(b_sso.len(), 1, "B's SSO session first");
    assert!(
        a.linked(&b.base, &ada.id).await.is_none(),
        "nothing at A yet"
    );
    let answer = chained_get(&mut at_a, &mut at_b, &callback).await;
    assert_signed_in(&answer, "flow 1");
    let linked = a
        .linked(&b.base, &ada.id)
        .await
        .expect("A's account is linked to B's person by issuer and subject");
    let a_sso = a.sso_sessions(&linked.user_id).await;
    assert_eq!(a_sso.len(), 1);
    let link = UpstreamLink::of(&a_sso[0]).expect("A's SSO session remembers B's");
    assert_eq!(
        link.sid.as_deref(),
        Some(b_sso[0].id.as_str()),
        "B's sid is its SSO session"
    );
    assert_eq!(link.issuer, b.base);
    assert_eq!(
        a_sso[0].auth.level, 1,
        "B's aal1 (a password) is what A claims"
    );
    assert_eq!(
        b.application_sessions(&ada.id, b_sso[0].id.as_str())
            .await
            .len(),
        1,
        "A's session at B is a child of B's SSO session"
    );

    // Flow 3: A's own SSO session answers; B is not visited.
    let again = at_a.get("/login?return_to=/account").await;
    assert_eq!(again.status, 303, "signed in at A already: {}", again.body);
    assert_eq!(again.location.as_deref(), Some("/account"));

    // Flow 2: only B's session: A signs in again without a password being asked.
    let mut fresh_a = a.browser();
    let authorize = fresh_a.go_upstream("?return_to=/account").await;
    let straight_back = at_b.get(authorize.as_str()).await;
    assert_eq!(straight_back.status, 303, "{}", straight_back.body);
    let callback = straight_back.location.clone().unwrap();
    assert!(
        callback.starts_with(&format!("{}/login/upstream/{PROVIDER}/callback?", a.base)),
        "no credentials asked at B: {callback}"
    );
    assert_signed_in(&fresh_a.get(&callback).await, "flow 2");
    assert_eq!(a.sso_sessions(&linked.user_id).await.len(), 2);

    // Logout at B: B's back-channel logout reaches A, which ends both SSO sessions B's
    // session vouched for.
    let page = at_b.get("/logout").await;
    let csrf = hidden(&page.body, "csrf");
    let out = at_b.post("/logout", &[("csrf", &csrf)]).await;
    assert!(out.status == 200 || out.status == 303, "{}", out.body);
    assert!(b.sso_sessions(&ada.id).await.is_empty(), "signed out at B");
    let sender = portcullis_http::oidc::backchannel::HttpLogoutSender::with_roots(
        OutboundPolicy::parse(["127.0.0.0/8"]).unwrap(),
        Duration::from_secs(5),
        rustls::RootCertStore::empty(),
    );
    let report = b_provider
        .deliver_logouts(&sender, &portcullis_oidc::DeliverySettings::default())
        .await
        .unwrap();
    assert!(report.delivered >= 1, "B told A: {report:?}");
    assert!(
        a.sso_sessions(&linked.user_id).await.is_empty(),
        "A's SSO sessions that B's session vouched for ended"
    );
    let ended: Vec<_> = a
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::SessionEnded)
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(
        ended,
        vec![EndReason::UpstreamLogout, EndReason::UpstreamLogout],
        "both ended for B's logout"
    );
    assert_eq!(
        at_a.get("/account").await.location.as_deref(),
        Some("/login?return_to=/account"),
        "the browser at A must sign in again"
    );
}

/// OIDC-CORE-9 (`private_key_jwt`) / RFC 7523, Portcullis as the client: A authenticates at B's
/// token endpoint with an assertion signed by A's own provider key, which B verifies with A's
/// published key set. B registering other keys refuses the code exchange (`invalid_client`):
/// nobody is signed in at A, and the page says B did not sign the person in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_core_9_portcullis_authenticates_upstream_with_private_key_jwt() {
    let clock = clock_now();
    for (auth, signs_in) in [
        (ChainAuth::PrivateKeyJwtWrongKeys, false),
        (ChainAuth::PrivateKeyJwt, true),
    ] {
        let Chain {
            a,
            b,
            ada,
            password,
        } = chain(&clock, auth).await;
        let (mut at_a, mut at_b) = (a.browser(), b.browser());
        let authorize = at_a.go_upstream("?return_to=/account").await;
        at_b.get(authorize.as_str()).await;
        let signed_in_at_b = at_b
            .sign_in_with_password_to("ada", password, "/oidc/authorize/resume")
            .await;
        assert_eq!(signed_in_at_b.status, 303, "{}", signed_in_at_b.body);
        let resumed = at_b.get("/oidc/authorize/resume").await;
        let callback = resumed.location.clone().expect("B answers A");
        let answer = chained_get(&mut at_a, &mut at_b, &callback).await;
        let linked = a.linked(&b.base, &ada.id).await;
        if signs_in {
            assert_signed_in(&answer, "A's assertion verified by A's keys");
            let linked = linked.expect("A's account linked to B's person");
            assert_eq!(a.sso_sessions(&linked.user_id).await.len(), 1);
        } else {
            assert_refused(
                &answer,
                403,
                "did not sign you in",
                "an assertion B cannot verify",
            );
            assert!(linked.is_none(), "{auth:?}: nobody signed in at A");
        }
    }
}

/// OIDC-RPL-5 along the chain, both sides ours: a person signed in at A through B signs out at
/// A asking to sign out of B too; A's signed-out page continues to B's end-session endpoint with
/// B's ID token, B ends its SSO session without asking (the hint names the browser's session)
/// and returns to A's signed-out URI with A's state, and A shows the signed-out page. Neither
/// instance has a live SSO session of the person afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_rpl_5_chained_signing_out_at_a_signs_out_at_b_too() {
    let clock = clock_now();
    let Chain {
        a,
        b,
        ada,
        password,
    } = chain(&clock, ChainAuth::Secret).await;
    let (mut at_a, mut at_b) = (a.browser(), b.browser());
    let authorize = at_a.go_upstream("?return_to=/account").await;
    at_b.get(authorize.as_str()).await;
    at_b.sign_in_with_password_to("ada", password, "/oidc/authorize/resume")
        .await;
    let resumed = at_b.get("/oidc/authorize/resume").await;
    let callback = resumed.location.clone().expect("B answers A");
    assert_signed_in(
        &chained_get(&mut at_a, &mut at_b, &callback).await,
        "signed in at A through B",
    );
    let linked = a.linked(&b.base, &ada.id).await.unwrap();
    assert_eq!(a.sso_sessions(&linked.user_id).await.len(), 1);
    assert_eq!(b.sso_sessions(&ada.id).await.len(), 1);

    let page = at_a.get("/logout").await;
    assert!(page.body.contains("name=\"upstream\""), "{}", page.body);
    let out = at_a
        .post(
            "/logout",
            &[("csrf", &hidden(&page.body, "csrf")), ("upstream", "1")],
        )
        .await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(a.sso_sessions(&linked.user_id).await.is_empty(), "out at A");
    let continue_to = attribute_after(&out.body, "id=\"continue\"", "href").expect("on to B");
    assert!(
        continue_to.starts_with(&format!("{}/oidc/logout?", b.base)),
        "{continue_to}"
    );
    let at_b_logout = chained_get(&mut at_a, &mut at_b, &continue_to).await;
    assert_eq!(
        at_b_logout.status, 303,
        "B signs out at once: {}",
        at_b_logout.body
    );
    assert!(b.sso_sessions(&ada.id).await.is_empty(), "out at B");
    let back = at_b_logout.location.expect("back to A");
    assert!(
        back.starts_with(&format!("{}/login/upstream/{PROVIDER}/signed-out?", a.base)),
        "{back}"
    );
    let signed_out = chained_get(&mut at_a, &mut at_b, &back).await;
    assert_eq!(signed_out.status, 200, "{}", signed_out.body);
    assert!(signed_out.body.contains("You are signed out"));
}
