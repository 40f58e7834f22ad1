//! The JSON-lines audit log a SIEM ingests: one line per committed event, to stdout or a file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use portcullis_core::{AuditEvent, AuditSink, EventKind};
use portcullis_http::wire::EventView;
use std::sync::Mutex;

/// Writes each event as one JSON line (the same shape as `GET /v1/events`) and counts it.
pub struct JsonLinesSink {
    out: Option<Mutex<Box<dyn Write + Send>>>,
}

impl JsonLinesSink {
    /// `stdout`, `off`, or a file path (appended to, created if missing).
    pub fn open(target: &str) -> io::Result<Self> {
        let out: Option<Box<dyn Write + Send>> = match target {
            "off" => None,
            "stdout" => Some(Box::new(io::stdout())),
            path => Some(Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(path))?,
            )),
        };
        Ok(Self {
            out: out.map(Mutex::new),
        })
    }
}

impl AuditSink for JsonLinesSink {
    fn publish(&self, event: &AuditEvent) {
        if event.kind == EventKind::SessionEnded {
            let reason = event.reason.map_or("unknown", |r| r.as_str());
            metrics::counter!("portcullis_sessions_ended_total", "reason" => reason).increment(1);
        }
        let Some(out) = &self.out else { return };
        let Ok(mut line) = serde_json::to_vec(&EventView::from(event)) else {
            return;
        };
        line.push(b'\n');
        let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if out.write_all(&line).and_then(|()| out.flush()).is_err() {
            tracing::error!(
                seq = event.seq,
                "could not write an audit event to the audit log"
            );
        }
    }
}
