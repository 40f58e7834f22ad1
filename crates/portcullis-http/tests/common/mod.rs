//! A real HTTP server on loopback over an engine with a manual clock.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use portcullis_core::{
    Actor, ApplicationChange, AuditEvent, CachedStore, Change, Engine, EventQuery, Grant, Journal,
    ManualClock, MemoryJournal, OnLimit, OsRandom, Policy, PolicyOverrides, PolicySet, Snapshot,
    StoreError, Touch,
};
use portcullis_http::peer::Peer;
use portcullis_http::{AppState, Services, api_router};
use serde_json::{Value, json};

/// A memory journal that can be switched off, to see the API fail closed.
#[derive(Default)]
pub struct SwitchableJournal {
    inner: MemoryJournal,
    pub down: AtomicBool,
}

impl SwitchableJournal {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("switched off by the test".into()))
        } else {
            Ok(())
        }
    }
}

impl Journal for SwitchableJournal {
    async fn commit(&self, change: &Change) -> Result<(), StoreError> {
        self.check()?;
        self.inner.commit(change).await
    }
    async fn commit_touches(&self, touches: &[Touch]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.commit_touches(touches).await
    }
    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        self.check()?;
        self.inner.events(query).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

pub type TestStore = CachedStore<SwitchableJournal>;

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub key: String,
    pub clock: Arc<ManualClock>,
    pub engine: Arc<Engine<TestStore>>,
    pub accounts: Arc<portcullis_core::Accounts>,
}

pub fn policies() -> PolicySet {
    let short = PolicyOverrides {
        idle: Some(std::time::Duration::from_secs(300)),
        warn_before: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let deny = PolicyOverrides {
        max_sessions: Some(1),
        on_limit: Some(OnLimit::Deny),
        ..Default::default()
    };
    PolicySet::new([
        Policy::resolve("short", &short).unwrap(),
        Policy::resolve("single", &deny).unwrap(),
    ])
}

impl TestServer {
    pub async fn start() -> Self {
        let clock = Arc::new(ManualClock::default());
        let store = CachedStore::open(SwitchableJournal::default(), Snapshot::default());
        let engine = Arc::new(Engine::new(
            store,
            policies(),
            clock.clone(),
            Arc::new(OsRandom),
        ));
        engine
            .add_application(
                ApplicationChange {
                    name: Some("test".into()),
                    policies: Some(vec!["*".into()]),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap();
        let (secret, _) = engine
            .create_api_key("test", "test", &Actor::cli())
            .await
            .unwrap();
        let accounts = Arc::new(
            portcullis_core::Accounts::new(
                Arc::new(portcullis_core::MemoryUserStore::new()),
                clock.clone(),
                Arc::new(OsRandom),
                Arc::new(portcullis_core::NoAuditSink),
            )
            .with_keyring(
                portcullis_core::Keyring::parse(&[portcullis_core::Keyring::generate_entry(
                    "test", &OsRandom,
                )])
                .unwrap(),
            )
            .with_trail(engine.clone()),
        );
        let state = AppState::new(Services {
            engine: Arc::clone(&engine),
            accounts: Arc::clone(&accounts),
            ui: Arc::new(portcullis_http::ui::web::Ui::new(Default::default())),
            metrics: None,
            provider: None,
            federation: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = api_router(state).into_make_service_with_connect_info::<Peer>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base,
            http: reqwest::Client::new(),
            key: secret.expose().to_owned(),
            clock,
            engine,
            accounts,
        }
    }

    pub fn store_down(&self, down: bool) {
        self.engine
            .store()
            .journal()
            .down
            .store(down, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers another application (every unreserved policy, the given grants) and returns
    /// the secret of a new key of it.
    pub async fn add_app(&self, name: &str, grants: &[Grant]) -> String {
        self.engine
            .add_application(
                ApplicationChange {
                    name: Some(name.into()),
                    policies: Some(vec!["*".into()]),
                    grants: Some(grants.to_vec()),
                    ..ApplicationChange::default()
                },
                &Actor::cli(),
            )
            .await
            .unwrap();
        let (secret, _) = self
            .engine
            .create_api_key(name, name, &Actor::cli())
            .await
            .unwrap();
        secret.expose().to_owned()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.send_as(&self.key, method, path, body).await
    }

    /// Calls with another application's key.
    pub async fn send_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status >= 400 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "every error is a problem document ({path})"
            );
        }
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create(&self, subject: &str, policy: &str) -> (String, String) {
        let (status, body) = self
            .post("/v1/sessions", json!({"subject": subject, "policy": policy, "auth": {"methods": ["pwd"], "level": 1}}))
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["token"].as_str().unwrap().to_owned(),
            body["session"]["id"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn validate(&self, token: &str) -> (u16, Value) {
        self.post("/v1/sessions/validate", json!({"token": token}))
            .await
    }
}
