//! The OpenID Connect provider as one system across nodes: two nodes, each its own `Engine` and
//! `Provider` over its own connection to the same shared store (one PostgreSQL schema, one
//! Redis key prefix, one Redis Cluster key prefix), with their own randomness and the same
//! keyring, kept in step by one `ManualClock` (time moves only when a case advances it; no case
//! sleeps). A code issued on one node is redeemed on the other; a code or a refresh token
//! presented on both nodes at the same moment is redeemed or rotated once; reuse ends a family
//! exactly once; a key rotated on one node reaches the other at its next upkeep.
//!
//! Requests run without HTTP, as `tests/provider.rs` drives the provider: the SSO session is
//! made the way the sign-in pages make it (policy `SSO_POLICY`, principal Portcullis), then
//! `check_authorization`, `decide`, `issue_code`, and the token endpoint's calls.
//!
//! PostgreSQL (`PORTCULLIS_TEST_POSTGRES`, default the machine's on loopback), Redis
//! (`PORTCULLIS_TEST_REDIS`, default 127.0.0.1:6379) and a Redis Cluster
//! (`PORTCULLIS_TEST_REDIS_CLUSTER`, default 127.0.0.1:7100-7102, `scripts/redis-cluster.sh
//! start`) must run. Schemas are `pc_test_<pid>_nodes<n>` and prefixes `pctest:<pid>:nodes<n>`,
//! the conformance suites' naming, so their clean-up removes what a finished run left.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use portcullis_core::oidc::{Client, ClientAuth, GrantType, REFRESH_RETRY_GRACE, SigningAlg};
use portcullis_core::{
    Accounts, Actor, Application, ApplicationChange, AuditEvent, AuthContext, Clock, EndReason,
    Engine, EventKind, EventQuery, Issued, Keyring, ManualClock, NewSession, NoAuditSink,
    PolicySet, Principal, PublicId, SSO_POLICY, SeededRandom, Session, SessionId, Store, User,
    UserStore,
};
use portcullis_oidc::{
    ACCESS_TOKEN_TYPE, AccessTokenClaims, AuthorizationParams, ClientCredentials, Decision,
    ID_TOKEN_TYPE, IdTokenClaims, Provider, ProviderOr, ProviderSettings, ProviderStores,
    TokenError, TokenResponse,
};
use portcullis_store_postgres::PostgresStore;
use portcullis_store_redis::RedisStore;
use serde_json::{Value, json};
use tokio::sync::Barrier;

const ISSUER: &str = "https://id.example";
const TOKEN_ENDPOINT: &str = "https://id.example/oauth2/token";
const REDIRECT: &str = "https://app.example/cb";
const STATE: &str = "af0ifjsldkj";
const NONCE: &str = "n-0S6_WzA2Mj";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// How many times each race is run.
const ROUNDS: usize = 20;

// ---------------------------------------------------------------------------------------------
// The shared stores, one fresh schema or prefix per case
// ---------------------------------------------------------------------------------------------

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name of its own for the case's schema or prefix.
fn fresh_name(separator: char) -> String {
    format!(
        "{}{separator}nodes{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// One node's connection to the shared backend: its session store, and from the same backend
/// the provider's stores and the accounts, as `provider_stores!` in the binary builds them.
struct Connection<S> {
    store: S,
    stores: ProviderStores,
    users: Arc<dyn UserStore>,
}

macro_rules! connection {
    ($store:expr) => {{
        let store = $store;
        Connection {
            stores: ProviderStores {
                codes: Arc::new(store.codes()),
                refresh_tokens: Arc::new(store.refresh_tokens()),
                consents: Arc::new(store.consents()),
                signing_keys: Arc::new(store.signing_keys()),
                deliveries: Arc::new(store.deliveries()),
                replays: Arc::new(store.replays()),
                identities: Arc::new(store.identities()),
            },
            users: Arc::new(store.users()),
            store,
        }
    }};
}

/// Two connections to one fresh PostgreSQL schema.
async fn postgres() -> (Connection<PostgresStore>, Connection<PostgresStore>) {
    let url = std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("pc_test_{}", fresh_name('_'));
    let connect = || async {
        PostgresStore::connect(&url, Some(&schema))
            .await
            .expect("PostgreSQL must run on loopback (see .ci/run)")
    };
    // One after the other: the first one creates the schema and migrates it.
    let a = connect().await;
    let b = connect().await;
    (connection!(a), connection!(b))
}

/// Two connections to a standalone Redis under one fresh prefix.
async fn redis() -> (Connection<RedisStore>, Connection<RedisStore>) {
    let url =
        std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let url = format!("{url}?prefix=pctest:{}", fresh_name(':'));
    let connect = || async {
        RedisStore::connect(&url)
            .await
            .expect("Redis must run on loopback (see .ci/run)")
    };
    (connection!(connect().await), connection!(connect().await))
}

/// Two connections to a Redis Cluster under one fresh prefix (each change waits for a replica,
/// as the Cluster's default asks).
async fn redis_cluster() -> (Connection<RedisStore>, Connection<RedisStore>) {
    let nodes = std::env::var("PORTCULLIS_TEST_REDIS_CLUSTER")
        .unwrap_or_else(|_| "127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102".into());
    let url = format!("redis+cluster://{nodes}?prefix=pctest:{}", fresh_name(':'));
    let connect = || async {
        RedisStore::connect(&url)
            .await
            .expect("a Redis Cluster must run on loopback: scripts/redis-cluster.sh start")
    };
    (connection!(connect().await), connection!(connect().await))
}

// ---------------------------------------------------------------------------------------------
// Nodes and the system they make
// ---------------------------------------------------------------------------------------------

/// One node: its own engine and provider over its own connection.
struct Node<S> {
    name: &'static str,
    engine: Arc<Engine<S>>,
    provider: Provider<S>,
}

/// A registered client, and what it authenticates with at the token endpoint.
#[derive(Clone)]
struct Rp {
    app: Application,
    credentials: ClientCredentials,
}

impl Rp {
    fn id(&self) -> &str {
        self.app.id.as_str()
    }
}

/// Two nodes over one store, the clock they share, the person and a public client.
struct System<S> {
    clock: Arc<ManualClock>,
    a: Arc<Node<S>>,
    b: Arc<Node<S>>,
    user: User,
    rp: Rp,
}

/// The outcome of a token request: tokens, or the protocol's error (a provider failure fails
/// the case, naming the node).
type Answer = Result<TokenResponse, TokenError>;

#[track_caller]
fn assert_invalid_grant(what: &str, answer: &Answer) {
    match answer {
        Err(error) => assert_eq!(error.error, "invalid_grant", "{what}: {error}"),
        Ok(tokens) => panic!(
            "{what}: expected invalid_grant, got tokens ({})",
            tokens.scope
        ),
    }
}

fn inactive() -> Value {
    json!({ "active": false })
}

fn ended_reason(session: &Session) -> Option<EndReason> {
    session.ended.as_ref().map(|ended| ended.reason)
}

/// The `kid` in a JWT's header.
fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .expect("a kid")
}

/// The key ids of a published JWK Set.
fn jwks_kids(jwks: &str) -> BTreeSet<String> {
    let set: Value = serde_json::from_str(jwks).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect()
}

impl<S: Store> Node<S> {
    async fn start(
        name: &'static str,
        connection: Connection<S>,
        clock: Arc<ManualClock>,
        seed: u64,
        keyring: &str,
    ) -> Self {
        // Each node draws its own randomness (as each would from the OS); only the keyring that
        // seals the signing keys is configured alike.
        let random = Arc::new(SeededRandom::new(seed));
        let engine = Arc::new(Engine::new(
            connection.store,
            PolicySet::default(),
            clock.clone(),
            random.clone(),
        ));
        let accounts = Arc::new(Accounts::new(
            connection.users,
            clock,
            random.clone(),
            Arc::new(NoAuditSink),
        ));
        let provider = Provider::start(
            engine.clone(),
            accounts,
            connection.stores,
            Keyring::parse(&[keyring]).unwrap(),
            random,
            ProviderSettings::new(ISSUER),
        )
        .await
        .unwrap_or_else(|err| panic!("node {name} does not start: {err}"));
        Self {
            name,
            engine,
            provider,
        }
    }

    /// An SSO session for `user`, made as the sign-in pages make it.
    async fn sign_in(&self, user: &User) -> Issued {
        self.engine
            .create(
                NewSession {
                    subject: user.id.clone(),
                    policy: Some(SSO_POLICY.to_owned()),
                    auth: AuthContext {
                        methods: vec!["pwd".to_owned()],
                        level: 1,
                    },
                    data: json!({ "username": user.username }),
                    reconstitute: true,
                    ..NewSession::default()
                },
                &Principal::portcullis(Actor::user(&user.id)),
            )
            .await
            .unwrap()
    }

    /// A code for `rp`, vouched for by `sso`, issued by this node.
    async fn code(&self, rp: &Rp, sso: &Issued) -> String {
        let params = AuthorizationParams {
            client_id: Some(rp.id().to_owned()),
            redirect_uri: Some(REDIRECT.to_owned()),
            response_type: Some("code".to_owned()),
            scope: Some("openid profile".to_owned()),
            state: Some(STATE.to_owned()),
            nonce: Some(NONCE.to_owned()),
            code_challenge: Some(CHALLENGE.to_owned()),
            code_challenge_method: Some("S256".to_owned()),
            ..AuthorizationParams::default()
        };
        let request = self.provider.check_authorization(&params).await.unwrap();
        assert_eq!(
            self.provider
                .decide(&request, Some(&sso.session))
                .await
                .unwrap(),
            Decision::Issue
        );
        let url = self
            .provider
            .issue_code(&request, &sso.session)
            .await
            .unwrap();
        let (base, query) = url.split_once('?').expect("the answer has a query");
        assert_eq!(base, REDIRECT);
        let answer: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(answer["state"], STATE);
        answer["code"].clone()
    }

    fn answer(&self, result: Result<TokenResponse, ProviderOr<TokenError>>) -> Answer {
        match result {
            Ok(tokens) => Ok(tokens),
            Err(ProviderOr::Protocol(error)) => Err(error),
            Err(ProviderOr::Failed(error)) => panic!("node {} failed: {error}", self.name),
        }
    }

    /// The token endpoint as `rp` calls it on this node: client authentication, then the code
    /// grant.
    async fn exchange(&self, rp: &Rp, code: &str) -> Answer {
        let (app, client) = self
            .provider
            .authenticate_client(Some(rp.id()), &rp.credentials, TOKEN_ENDPOINT)
            .await
            .unwrap();
        self.answer(
            self.provider
                .exchange_code(&app, &client, code, Some(REDIRECT), Some(VERIFIER))
                .await,
        )
    }

    /// The token endpoint as `rp` calls it on this node: client authentication, then the
    /// refresh grant.
    async fn refresh(&self, rp: &Rp, refresh_token: &str) -> Answer {
        let (app, client) = self
            .provider
            .authenticate_client(Some(rp.id()), &rp.credentials, TOKEN_ENDPOINT)
            .await
            .unwrap();
        self.answer(
            self.provider
                .refresh(&app, &client, refresh_token, None)
                .await,
        )
    }

    async fn introspect(&self, rp: &Rp, token: &str) -> Value {
        self.provider.introspect(&rp.app, token).await.unwrap()
    }

    /// The access token's claims, verified with this node's keys.
    fn access(&self, tokens: &TokenResponse) -> AccessTokenClaims {
        self.provider
            .keys()
            .verify::<AccessTokenClaims>(&tokens.access_token, ACCESS_TOKEN_TYPE)
            .unwrap_or_else(|err| panic!("node {}: the access token: {err}", self.name))
    }

    /// The ID token's claims, verified with this node's keys.
    fn id_token(&self, tokens: &TokenResponse) -> IdTokenClaims {
        let token = tokens.id_token.as_deref().expect("an ID token for openid");
        self.provider
            .keys()
            .verify::<IdTokenClaims>(token, ID_TOKEN_TYPE)
            .unwrap_or_else(|err| panic!("node {}: the ID token: {err}", self.name))
    }

    /// The session `id` as this node reads it, live or ended.
    async fn session(&self, id: &SessionId) -> Arc<Session> {
        self.engine
            .get(id, &Principal::operator())
            .await
            .unwrap_or_else(|err| panic!("node {}: session {id}: {err}", self.name))
    }

    /// The trail's events about the session `id`, as this node reads them.
    async fn events_of(&self, id: &SessionId) -> Vec<AuditEvent> {
        self.engine
            .events(
                &EventQuery {
                    session_id: Some(id.clone()),
                    limit: 1000,
                    ..EventQuery::default()
                },
                false,
                &Principal::operator(),
            )
            .await
            .unwrap()
    }
}

impl<S: Store> System<S> {
    /// Starts two nodes on the two connections together (each makes the signing key if the
    /// store has none: one key wins), then registers the person and a public client through A;
    /// B reads them from the store.
    async fn start((a, b): (Connection<S>, Connection<S>)) -> Self {
        let clock = Arc::new(ManualClock::default());
        let now = clock.now();
        let user = User {
            id: "usr_nodes0person".to_owned(),
            username: "alice".to_owned(),
            version: 1,
            // No case signs in with a password (the SSO session is made directly).
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$unused$unused".to_owned(),
            disabled: false,
            totp: None,
            created_at: now,
            password_changed_at: now,
            short_password: false,
        };
        a.users.add_user(&user).await.unwrap();
        let keyring = Keyring::generate_entry("k1", &SeededRandom::new(7));
        let (a, b) = tokio::join!(
            Node::start("A", a, clock.clone(), 20_260_101, &keyring),
            Node::start("B", b, clock.clone(), 20_260_202, &keyring),
        );
        let app = a
            .engine
            .add_application(
                ApplicationChange {
                    name: Some("web".into()),
                    policies: Some(vec!["*".into()]),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap();
        let client = Client {
            auth: ClientAuth::None,
            redirect_uris: vec![REDIRECT.to_owned()],
            post_logout_redirect_uris: Vec::new(),
            backchannel_logout_uri: None,
            frontchannel_logout_uri: None,
            scopes: ["openid", "profile", "email"].map(String::from).into(),
            grant_types: [GrantType::AuthorizationCode, GrantType::RefreshToken].into(),
            require_consent: false,
            id_token_signed_response_alg: None,
            upstream: None,
        };
        let app = a
            .engine
            .register_client(app.id.as_str(), Some(client), &Actor::cli())
            .await
            .unwrap();
        Self {
            clock,
            a: Arc::new(a),
            b: Arc::new(b),
            user,
            rp: Rp {
                app,
                credentials: ClientCredentials::None,
            },
        }
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// Both nodes.
    fn nodes(&self) -> [&Arc<Node<S>>; 2] {
        [&self.a, &self.b]
    }

    /// Signs in on `issuer`, has it issue a code, and `redeemer` redeem it.
    async fn log_in(&self, issuer: &Node<S>, redeemer: &Node<S>) -> (Issued, TokenResponse) {
        let sso = issuer.sign_in(&self.user).await;
        let code = issuer.code(&self.rp, &sso).await;
        let tokens = redeemer
            .exchange(&self.rp, &code)
            .await
            .unwrap_or_else(|err| panic!("node {} redeems: {err}", redeemer.name));
        (sso, tokens)
    }

    /// The client's session the access token belongs to.
    fn client_session_id(&self, tokens: &TokenResponse) -> SessionId {
        PublicId::from_string(self.a.access(tokens).ses)
    }
}

/// Runs `first` on A and `second` on B at the same moment (each on a task of its own, both
/// released by one barrier), and answers both outcomes.
async fn at_once<S, F, G, FutF, FutG>(system: &System<S>, first: F, second: G) -> (Answer, Answer)
where
    S: Store,
    F: FnOnce(Arc<Node<S>>) -> FutF,
    G: FnOnce(Arc<Node<S>>) -> FutG,
    FutF: Future<Output = Answer> + Send + 'static,
    FutG: Future<Output = Answer> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(2));
    let spawn = |fut: std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            fut.await
        })
    };
    let a = spawn(Box::pin(first(system.a.clone())));
    let b = spawn(Box::pin(second(system.b.clone())));
    (a.await.unwrap(), b.await.unwrap())
}

/// The `session.ended` events of the session `id` in the trail, as `node` reads it.
async fn endings<S: Store>(node: &Node<S>, id: &SessionId) -> Vec<Option<EndReason>> {
    node.events_of(id)
        .await
        .into_iter()
        .filter(|event| event.kind == EventKind::SessionEnded)
        .map(|event| event.reason)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cases, each run on PostgreSQL, Redis and a Redis Cluster
// ---------------------------------------------------------------------------------------------

/// A code issued on A is redeemed on B: the tokens are signed with the key both nodes hold
/// from the store, so each verifies them; the client's session is one record both read; its
/// refresh token goes on at A; and a replay of the code at A ends what B issued, as B sees.
async fn oidc_core_10_rfc9700_10_a_code_issued_on_one_node_is_redeemed_on_another<S: Store>(
    system: System<S>,
) {
    let (a, b, rp) = (&system.a, &system.b, &system.rp);
    // Started together, the nodes sign with one key: the one the store kept.
    let signing = a
        .provider
        .keys()
        .signing_kid(SigningAlg::Es256)
        .expect("A signs with ES256")
        .to_owned();
    assert_eq!(
        b.provider.keys().signing_kid(SigningAlg::Es256),
        Some(signing.as_str())
    );
    assert_eq!(a.provider.keys().jwks(), b.provider.keys().jwks());
    assert_eq!(a.provider.signing_keys().await.unwrap().len(), 1);

    let sso = a.sign_in(&system.user).await;
    system.advance(Duration::from_secs(30));
    let code = a.code(rp, &sso).await;
    let tokens = b.exchange(rp, &code).await.expect("B redeems A's code");
    assert_eq!(kid(tokens.id_token.as_deref().unwrap()), signing);
    assert_eq!(kid(&tokens.access_token), signing);
    let refresh_token = tokens.refresh_token.clone().expect("a refresh token");

    let ses = system.client_session_id(&tokens);
    for node in system.nodes() {
        let id = node.id_token(&tokens);
        assert_eq!(id.iss, ISSUER);
        assert_eq!(id.sub, system.user.id);
        assert_eq!(id.aud, rp.id());
        assert_eq!(id.nonce.as_deref(), Some(NONCE), "OIDC-CORE-10");
        assert_eq!(id.sid, sso.session.id.as_str());
        assert_eq!(
            id.auth_time,
            sso.session.authenticated_at.as_millis().div_euclid(1000)
        );
        assert_eq!(node.access(&tokens).ses, ses.as_str());

        let session = node.session(&ses).await;
        assert!(session.is_live(), "node {}", node.name);
        assert_eq!(session.parent.as_ref(), Some(&sso.session.id));
        assert_eq!(session.application, rp.app.id);
        assert_eq!(session.subject, system.user.id);

        let active = node.introspect(rp, &tokens.access_token).await;
        assert_eq!(active["active"], true, "node {}: {active}", node.name);
        assert_eq!(active["sid"], sso.session.id.as_str());
        let refresh = node.introspect(rp, &refresh_token).await;
        assert_eq!(refresh["active"], true, "node {}: {refresh}", node.name);
        assert_eq!(refresh["token_type"], "refresh_token");
    }

    // B's refresh token is rotated at A.
    system.advance(Duration::from_secs(5));
    let second = a.refresh(rp, &refresh_token).await.expect("A rotates");
    let rotated = second.refresh_token.clone().unwrap();
    assert_ne!(rotated, refresh_token);
    assert_eq!(b.access(&second).ses, ses.as_str());
    assert_eq!(b.introspect(rp, &refresh_token).await, inactive());
    assert_eq!(b.introspect(rp, &rotated).await["active"], true);

    // The code is spent everywhere: its replay at A ends what B issued.
    assert_invalid_grant("the code again at A", &a.exchange(rp, &code).await);
    for node in system.nodes() {
        assert_eq!(
            ended_reason(&*node.session(&ses).await),
            Some(EndReason::TokenReuse),
            "node {}",
            node.name
        );
        assert_eq!(node.introspect(rp, &rotated).await, inactive());
        assert_eq!(node.introspect(rp, &second.access_token).await, inactive());
        assert_invalid_grant("the family's token", &node.refresh(rp, &rotated).await);
    }
    assert_eq!(endings(a, &ses).await, [Some(EndReason::TokenReuse)]);
}

/// The same code presented on A and B at the same moment, round after round: exactly one
/// redemption gets tokens, the other is `invalid_grant`, and that replay ends what the first
/// redemption issued (RFC 9700 §4.5) however the two interleave: its session ends once, as
/// `token_reuse`, and its tokens are refused and inactive on both nodes.
async fn rfc9700_10_asvs5_10_4_2_a_code_redeemed_on_two_nodes_at_once_is_redeemed_once_and_ended<
    S: Store,
>(
    system: System<S>,
) {
    let (a, b, rp) = (&system.a, &system.b, &system.rp);
    let sso = a.sign_in(&system.user).await;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let issuer = if round % 2 == 0 { a } else { b };
        let code = issuer.code(rp, &sso).await;
        let redeem = |node: Arc<Node<S>>| {
            let (rp, code) = (rp.clone(), code.clone());
            async move { node.exchange(&rp, &code).await }
        };
        let (on_a, on_b) = at_once(&system, redeem, redeem).await;
        let (winner, first, replay) = match (on_a, on_b) {
            (Ok(first), replay @ Err(_)) => ("A", first, replay),
            (replay @ Err(_), Ok(first)) => ("B", first, replay),
            (on_a, on_b) => panic!(
                "round {round}: exactly one redemption gets tokens; A: {:?}, B: {:?}",
                on_a.map(|t| t.scope),
                on_b.map(|t| t.scope)
            ),
        };
        assert_invalid_grant(&format!("round {round}: the other redemption"), &replay);

        let ses = system.client_session_id(&first);
        let refresh_token = first.refresh_token.clone().unwrap();
        let mut wrong = Vec::new();
        for node in system.nodes() {
            let session = node.session(&ses).await;
            if ended_reason(&session) != Some(EndReason::TokenReuse) {
                wrong.push(format!(
                    "on {} the session is {}",
                    node.name,
                    match &session.ended {
                        None => "live".to_owned(),
                        Some(ended) => format!("ended ({:?})", ended.reason),
                    }
                ));
            }
            if node.introspect(rp, &first.access_token).await != inactive() {
                wrong.push(format!("on {} the access token is active", node.name));
            }
            if node.introspect(rp, &refresh_token).await != inactive() {
                wrong.push(format!("on {} the refresh token is active", node.name));
            }
        }
        for node in system.nodes() {
            if let Ok(tokens) = node.refresh(rp, &refresh_token).await {
                wrong.push(format!(
                    "on {} the refresh token refreshes (scope {})",
                    node.name, tokens.scope
                ));
            }
        }
        let ended = endings(a, &ses).await;
        assert_eq!(ended, endings(b, &ses).await, "one trail");
        if ended != [Some(EndReason::TokenReuse)] {
            wrong.push(format!("the trail's endings of the session: {ended:?}"));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "round {round} (code issued on {}, redeemed first on {winner}, session {ses}): {}",
                issuer.name,
                wrong.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "in {} of {ROUNDS} rounds the replay did not end what the first redemption issued:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One refresh token presented on A and B at the same moment (a client retrying on another
/// node), within the retry grace: both get the same successor, the family goes on, nothing
/// ends, and the successor refreshes on either node.
async fn rfc9700_2_asvs5_10_4_5_a_refresh_on_two_nodes_at_once_gets_one_successor<S: Store>(
    system: System<S>,
) {
    let (a, b, rp) = (&system.a, &system.b, &system.rp);
    for round in 0..ROUNDS {
        let (first_node, other_node) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let (_sso, tokens) = system.log_in(first_node, other_node).await;
        let rt1 = tokens.refresh_token.clone().unwrap();
        let ses = system.client_session_id(&tokens);
        system.advance(Duration::from_secs(1));

        let refresh = |node: Arc<Node<S>>| {
            let (rp, rt1) = (rp.clone(), rt1.clone());
            async move { node.refresh(&rp, &rt1).await }
        };
        let (on_a, on_b) = at_once(&system, refresh, refresh).await;
        let on_a = on_a.unwrap_or_else(|err| panic!("round {round}: A refreshes: {err}"));
        let on_b = on_b.unwrap_or_else(|err| panic!("round {round}: B refreshes: {err}"));
        let rt2 = on_a.refresh_token.clone().unwrap();
        assert_eq!(
            on_b.refresh_token.as_deref(),
            Some(rt2.as_str()),
            "round {round}: the same successor on both nodes"
        );
        assert_ne!(rt2, rt1, "round {round}: rotated");

        for node in system.nodes() {
            assert!(
                node.session(&ses).await.is_live(),
                "round {round}: on {}",
                node.name
            );
            assert_eq!(node.introspect(rp, &rt1).await, inactive(), "rotated");
            assert_eq!(node.introspect(rp, &rt2).await["active"], true);
            for answer in [&on_a, &on_b] {
                assert_eq!(node.access(answer).ses, ses.as_str());
                assert_eq!(
                    node.introspect(rp, &answer.access_token).await["active"],
                    true
                );
            }
        }
        assert_eq!(endings(a, &ses).await, [], "round {round}: nothing ended");

        // The successor goes on, on either node.
        let third = other_node
            .refresh(rp, &rt2)
            .await
            .unwrap_or_else(|err| panic!("round {round}: the successor refreshes: {err}"));
        let rt3 = third.refresh_token.unwrap();
        assert!(rt3 != rt1 && rt3 != rt2);
        assert_eq!(first_node.introspect(rp, &rt3).await["active"], true);
        assert_eq!(endings(b, &ses).await, []);
    }
}

/// A refresh token rotated on B and presented again after the grace on A while B sees it too
/// (even rounds: the old token on both nodes; odd rounds: the old token on A while the holder
/// refreshes its successor on B): the family ends exactly once, as one `session.ended` of
/// reason `token_reuse` in the trail, and every token of the family is refused and inactive on
/// both nodes.
async fn rfc9700_2_asvs5_10_4_5_reuse_on_two_nodes_at_once_ends_the_family_exactly_once<
    S: Store,
>(
    system: System<S>,
) {
    let (a, b, rp) = (&system.a, &system.b, &system.rp);
    for round in 0..ROUNDS {
        let (_sso, tokens) = system.log_in(a, a).await;
        let ses = system.client_session_id(&tokens);
        let rt1 = tokens.refresh_token.clone().unwrap();
        let second = b.refresh(rp, &rt1).await.expect("B rotates");
        let rt2 = second.refresh_token.clone().unwrap();
        system.advance(REFRESH_RETRY_GRACE + Duration::from_secs(1));

        let holder_too = round % 2 == 1;
        let reuse = {
            let (rp, rt1) = (rp.clone(), rt1.clone());
            move |node: Arc<Node<S>>| async move { node.refresh(&rp, &rt1).await }
        };
        let on_b_token = if holder_too { rt2.clone() } else { rt1.clone() };
        let on_b = {
            let rp = rp.clone();
            move |node: Arc<Node<S>>| async move { node.refresh(&rp, &on_b_token).await }
        };
        let (on_a, on_b) = at_once(&system, reuse, on_b).await;
        assert_invalid_grant(&format!("round {round}: the old token on A"), &on_a);
        let mut refresh_tokens = vec![rt1.clone(), rt2.clone()];
        let mut access_tokens = vec![tokens.access_token.clone(), second.access_token.clone()];
        match (holder_too, on_b) {
            // The holder's refresh may have won the race; its tokens then go with the family.
            (true, Ok(third)) => {
                refresh_tokens.push(third.refresh_token.unwrap());
                access_tokens.push(third.access_token);
            }
            (_, on_b) => assert_invalid_grant(&format!("round {round}: on B"), &on_b),
        }

        for node in system.nodes() {
            assert_eq!(
                ended_reason(&*node.session(&ses).await),
                Some(EndReason::TokenReuse),
                "round {round}: on {}",
                node.name
            );
            for token in refresh_tokens.iter().chain(&access_tokens) {
                assert_eq!(
                    node.introspect(rp, token).await,
                    inactive(),
                    "round {round}: on {}",
                    node.name
                );
            }
            for token in &refresh_tokens {
                assert_invalid_grant(
                    &format!("round {round}: a token of the family on {}", node.name),
                    &node.refresh(rp, token).await,
                );
            }
        }
        for node in system.nodes() {
            assert_eq!(
                endings(node, &ses).await,
                [Some(EndReason::TokenReuse)],
                "round {round}: exactly one ending in the trail, read on {}",
                node.name
            );
        }
    }
}

/// A signing key rotated on A: A signs with it at once; B, until its upkeep reads the store
/// again, signs with the old key and does not know the new one; after it, B verifies what A
/// signs, signs with the new key itself, and both publish both keys (the retired one still
/// verifies what was signed before).
async fn a_signing_key_rotated_on_one_node_reaches_the_other_at_its_upkeep<S: Store>(
    system: System<S>,
) {
    let (a, b, rp) = (&system.a, &system.b, &system.rp);
    let old = a
        .provider
        .keys()
        .signing_kid(SigningAlg::Es256)
        .unwrap()
        .to_owned();
    let (_sso, before) = system.log_in(a, b).await;
    assert_eq!(kid(&before.access_token), old);

    system.advance(Duration::from_secs(60));
    let new = a.provider.rotate_key(SigningAlg::Es256).await.unwrap();
    assert_ne!(new.kid, old);
    assert_eq!(
        a.provider.keys().signing_kid(SigningAlg::Es256),
        Some(new.kid.as_str())
    );
    let stored = a.provider.signing_keys().await.unwrap();
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .any(|k| k.kid == old && k.retired_at.is_some())
    );
    assert!(
        stored
            .iter()
            .any(|k| k.kid == new.kid && k.retired_at.is_none())
    );

    // A signs with the new key; B, not having read the store since, with the old one.
    let sso = b.sign_in(&system.user).await;
    let code = b.code(rp, &sso).await;
    let by_a = a.exchange(rp, &code).await.expect("A redeems");
    assert_eq!(kid(by_a.id_token.as_deref().unwrap()), new.kid);
    assert_eq!(kid(&by_a.access_token), new.kid);
    let by_b = b
        .refresh(rp, before.refresh_token.as_deref().unwrap())
        .await
        .expect("B refreshes");
    assert_eq!(
        kid(&by_b.access_token),
        old,
        "B has not read the new key yet"
    );
    assert!(
        b.provider
            .keys()
            .verify::<IdTokenClaims>(by_a.id_token.as_deref().unwrap(), ID_TOKEN_TYPE)
            .is_err(),
        "until its upkeep B does not know the key A rotated to"
    );
    // A still publishes the retired key, so what B signed verifies there.
    a.id_token(&by_b);
    assert_eq!(a.introspect(rp, &by_b.access_token).await["active"], true);

    b.provider.upkeep().await.unwrap();
    assert_eq!(
        b.provider.keys().signing_kid(SigningAlg::Es256),
        Some(new.kid.as_str())
    );
    let both: BTreeSet<String> = [old.clone(), new.kid.clone()].into();
    for node in system.nodes() {
        assert_eq!(
            jwks_kids(node.provider.keys().jwks()),
            both,
            "node {}",
            node.name
        );
        // What either node signed, before the rotation or after, verifies on both.
        for tokens in [&before, &by_a, &by_b] {
            node.id_token(tokens);
            node.access(tokens);
        }
        assert_eq!(
            node.introspect(rp, &by_a.access_token).await["active"],
            true
        );
    }
    assert_eq!(a.provider.keys().jwks(), b.provider.keys().jwks());

    // B now signs with the new key too.
    let next = b
        .refresh(rp, by_a.refresh_token.as_deref().unwrap())
        .await
        .expect("B refreshes A's grant");
    assert_eq!(kid(next.id_token.as_deref().unwrap()), new.kid);
    a.id_token(&next);
}

macro_rules! on_backend {
    ($module:ident, $open:ident, [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::System::start(super::$open().await).await).await;
                }
            )*
        }
    };
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        on_backend!(on_postgres, postgres, [$($case),*]);
        on_backend!(on_redis, redis, [$($case),*]);
        on_backend!(on_redis_cluster, redis_cluster, [$($case),*]);
    };
}

on_every_backend!(
    oidc_core_10_rfc9700_10_a_code_issued_on_one_node_is_redeemed_on_another,
    rfc9700_10_asvs5_10_4_2_a_code_redeemed_on_two_nodes_at_once_is_redeemed_once_and_ended,
    rfc9700_2_asvs5_10_4_5_a_refresh_on_two_nodes_at_once_gets_one_successor,
    rfc9700_2_asvs5_10_4_5_reuse_on_two_nodes_at_once_ends_the_family_exactly_once,
    a_signing_key_rotated_on_one_node_reaches_the_other_at_its_upkeep,
);
