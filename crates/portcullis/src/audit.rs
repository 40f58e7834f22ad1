//! The JSON-lines audit log a SIEM ingests: one line per committed event, to stdout or a file,
//! as Portcullis's own JSON (`audit_format = "json"`) or OCSF (`"ocsf"`, [`crate::ocsf`]).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use portcullis_core::{AuditEvent, AuditSink, EventKind};
use portcullis_http::AuditHealth;
use portcullis_http::wire::EventView;
use std::sync::Mutex;

/// The shape of each line of the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// The shape of `GET /v1/events` (the default).
    #[default]
    Json,
    /// An OCSF 1.1 event ([`crate::ocsf`]).
    Ocsf,
}

/// Writes each event as one JSON line (the same shape as `GET /v1/events`, or OCSF) and
/// counts it.
pub struct JsonLinesSink {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    health: AuditHealth,
    format: AuditFormat,
}

impl JsonLinesSink {
    /// `stdout`, `off`, or a file path (appended to, created if missing).
    pub fn open(target: &str) -> io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            "off" => None,
            "stdout" => Some(Box::new(io::stdout())),
            // Created readable by the owner only: the trail names people and their devices. A
            // file that exists keeps the permissions its operator gave it (a SIEM's group, say).
            path => Some(Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(Path::new(path))?,
            )),
        };
        Ok(Self::to_writer(out))
    }

    /// Writes to `out` (`None`: nowhere).
    pub fn to_writer(out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            out: out.map(Mutex::new),
            health: AuditHealth::default(),
            format: AuditFormat::Json,
        }
    }

    /// Writes lines in `format`.
    pub fn with_format(mut self, format: AuditFormat) -> Self {
        self.format = format;
        self
    }

    /// Reports every write's outcome to `health` (what `/readyz` reads).
    pub fn reporting_to(mut self, health: AuditHealth) -> Self {
        self.health = health;
        self
    }
}

/// Counts what operators watch from the events: endings by reason, sign-ins by outcome.
fn count(event: &AuditEvent) {
    match event.kind {
        EventKind::SessionEnded => {
            let reason = event.reason.map_or("unknown", |r| r.as_str());
            metrics::counter!("portcullis_sessions_ended_total", "reason" => reason).increment(1);
        }
        // A sign-in is complete when its SSO session is created.
        EventKind::SessionCreated
            if event.policy.as_deref() == Some(portcullis_core::application::SSO_POLICY) =>
        {
            metrics::counter!("portcullis_sign_ins_total", "outcome" => "success").increment(1);
        }
        EventKind::LoginFailed => {
            metrics::counter!("portcullis_sign_ins_total", "outcome" => "failure").increment(1);
        }
        EventKind::LoginThrottled => {
            metrics::counter!("portcullis_sign_ins_total", "outcome" => "throttled").increment(1);
        }
        EventKind::LogoutDelivered => {
            metrics::counter!("portcullis_logout_deliveries_total", "outcome" => "delivered")
                .increment(1);
        }
        EventKind::LogoutDeliveryFailed => {
            let outcome = if event.detail.get("retry_at").is_some() {
                "retry"
            } else {
                "failed"
            };
            metrics::counter!("portcullis_logout_deliveries_total", "outcome" => outcome)
                .increment(1);
        }
        EventKind::SessionDeviceChanged
        | EventKind::SessionBurst
        | EventKind::LoginStuffingSuspected => {
            metrics::counter!("portcullis_anomalies_total", "kind" => event.kind.as_str())
                .increment(1);
        }
        _ => {}
    }
}

impl AuditSink for JsonLinesSink {
    fn publish(&self, event: &AuditEvent) {
        count(event);
        let Some(out) = &self.out else { return };
        let written = match self.format {
            AuditFormat::Json => serde_json::to_vec(&EventView::from(event)),
            AuditFormat::Ocsf => serde_json::to_vec(&crate::ocsf::to_ocsf(event)),
        };
        let Ok(mut line) = written else {
            return;
        };
        line.push(b'\n');
        let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if out.write_all(&line).and_then(|()| out.flush()).is_ok() {
            self.health.write_succeeded();
        } else {
            self.health.write_failed();
            metrics::counter!("portcullis_audit_write_failures_total").increment(1);
            tracing::error!(
                seq = event.seq,
                "could not write an audit event to the audit log"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;
    use portcullis_core::{
        Accounts, Actor, ApplicationChange, AuditSink, Engine, MemoryStore, MemoryUserStore,
        OsRandom, PolicySet, SystemClock,
    };
    use portcullis_http::ui::web::{Ui, UiSettings};
    use portcullis_http::{AppState, AuditHealth, Edge, Services};
    use tower::ServiceExt;

    use super::JsonLinesSink;

    #[test]
    fn the_audit_log_is_created_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        JsonLinesSink::open(path.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "created {mode:o}");

        // An existing file keeps what its operator set.
        let shared = dir.path().join("shared.log");
        std::fs::write(&shared, b"").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        JsonLinesSink::open(shared.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    /// A log whose writes fail while `failing` is set (a full disk that is then cleaned up).
    struct Flaky(Arc<AtomicBool>);

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0.load(Ordering::SeqCst) {
                Err(io::Error::other("no space left on device"))
            } else {
                Ok(buf.len())
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    async fn ready(router: &axum::Router) -> (u16, serde_json::Value) {
        let response = router
            .clone()
            .oneshot(
                axum::http::Request::get("/readyz")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn readyz_is_503_while_audit_writes_fail_and_200_once_one_succeeds() {
        let failing = Arc::new(AtomicBool::new(false));
        let health = AuditHealth::default();
        let sink: Arc<dyn AuditSink> = Arc::new(
            JsonLinesSink::to_writer(Some(Box::new(Flaky(Arc::clone(&failing)))))
                .reporting_to(health.clone()),
        );
        let clock = Arc::new(SystemClock);
        let engine = Engine::new(
            MemoryStore::new(),
            PolicySet::default(),
            clock.clone(),
            Arc::new(OsRandom),
        )
        .with_sink(Arc::clone(&sink));
        let accounts = Accounts::new(
            Arc::new(MemoryUserStore::new()),
            clock,
            Arc::new(OsRandom),
            sink,
        );
        let engine = Arc::new(engine);
        let router = portcullis_http::api_router(AppState::with_edge(
            Services {
                engine: Arc::clone(&engine),
                accounts: Arc::new(accounts),
                ui: Arc::new(Ui::new(UiSettings::default())),
                metrics: None,
                provider: None,
                federation: None,
            },
            Edge {
                audit: health,
                ..Edge::default()
            },
        ));
        let add = |name: &str| ApplicationChange {
            name: Some(name.to_owned()),
            ..ApplicationChange::default()
        };

        engine
            .add_application(add("first"), &Actor::cli())
            .await
            .unwrap();
        assert_eq!(ready(&router).await.0, 200);

        failing.store(true, Ordering::SeqCst);
        engine
            .add_application(add("second"), &Actor::cli())
            .await
            .unwrap();
        let (status, problem) = ready(&router).await;
        assert_eq!(status, 503, "{problem}");
        assert_eq!(problem["reason"], "audit_unavailable");

        failing.store(false, Ordering::SeqCst);
        engine
            .add_application(add("third"), &Actor::cli())
            .await
            .unwrap();
        assert_eq!(
            ready(&router).await,
            (200, serde_json::json!({"status": "ready"}))
        );
    }
}
