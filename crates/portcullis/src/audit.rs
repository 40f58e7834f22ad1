//! The JSON-lines audit log a SIEM ingests: one line per committed event, to stdout or a file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
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
    use std::os::unix::fs::PermissionsExt;

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
}
