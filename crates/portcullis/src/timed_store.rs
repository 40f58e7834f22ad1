//! [`TimedStore`]: every call the server makes to its store, timed and its failures counted, in
//! one place rather than at each call site, whichever backend is behind it.
//!
//! Metrics: `portcullis_store_call_seconds{op}` (a histogram) and
//! `portcullis_store_errors_total{op}` (the counter the sweeper also counts failed sweeps in),
//! `op` being the store method's name (`find_by_token`, `insert`, …).

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use portcullis_core::{
    ApiKey, ApiKeyStore, AppId, Application, ApplicationStore, AuditEvent, EndedSessions, Ending,
    EventQuery, Insert, Inserted, LiveCount, PublicId, Session, SessionId, SessionStore,
    StoreError, Timestamp, TokenHash,
};

/// The histogram of store calls' durations.
pub const CALL_SECONDS: &str = "portcullis_store_call_seconds";

/// The counter of failed store calls (and failed sweeps).
pub const ERRORS_TOTAL: &str = "portcullis_store_errors_total";

/// A store whose every call records its duration and, when it fails, an error, under the
/// method's name; otherwise exactly the inner store.
#[derive(Debug)]
pub struct TimedStore<S> {
    inner: S,
}

impl<S> TimedStore<S> {
    /// Times every call to `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// The metric handles of one operation. Looking a handle up in the registry costs a hash of
/// its key per call, so each operation's are looked up once, on its first call (the recorder
/// is installed before the store is opened; a call made before that would keep no-op handles).
struct OpMetrics {
    seconds: metrics::Histogram,
    errors: metrics::Counter,
}

/// Runs `call`, recording its duration in `op`'s histogram and a failure in its counter.
async fn timed<T>(
    handles: &'static OnceLock<OpMetrics>,
    op: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let handles = handles.get_or_init(|| OpMetrics {
        seconds: metrics::histogram!(CALL_SECONDS, "op" => op),
        errors: metrics::counter!(ERRORS_TOTAL, "op" => op),
    });
    let started = Instant::now();
    let result = call.await;
    handles.seconds.record(started.elapsed().as_secs_f64());
    if result.is_err() {
        handles.errors.increment(1);
    }
    result
}

/// `timed` with the handles of operation `$op` in a static of the call site's own.
macro_rules! timed {
    ($op:literal, $call:expr) => {{
        static HANDLES: OnceLock<OpMetrics> = OnceLock::new();
        timed(&HANDLES, $op, $call).await
    }};
}

impl<S: SessionStore> SessionStore for TimedStore<S> {
    const ROUTES_BY_SUBJECT: bool = S::ROUTES_BY_SUBJECT;

    async fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Arc<Session>>, StoreError> {
        timed!("find_by_token", self.inner.find_by_token(hash))
    }

    async fn find_by_id(&self, id: &SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        timed!("find_by_id", self.inner.find_by_id(id))
    }

    async fn list_subject(&self, subject: &str) -> Result<Vec<Arc<Session>>, StoreError> {
        timed!("list_subject", self.inner.list_subject(subject))
    }

    async fn insert(&self, insert: Insert) -> Result<Inserted, StoreError> {
        timed!("insert", self.inner.insert(insert))
    }

    async fn replace(
        &self,
        version: u64,
        next: Session,
        event: AuditEvent,
    ) -> Result<Option<(Arc<Session>, AuditEvent)>, StoreError> {
        timed!("replace", self.inner.replace(version, next, event))
    }

    async fn touch(&self, id: &SessionId, at: Timestamp) -> Result<(), StoreError> {
        timed!("touch", self.inner.touch(id, at))
    }

    async fn end(&self, id: &SessionId, ending: Ending) -> Result<EndedSessions, StoreError> {
        timed!("end", self.inner.end(id, ending))
    }

    async fn end_subject(
        &self,
        subject: &str,
        application: Option<&AppId>,
        except: Option<&SessionId>,
        ending: Ending,
    ) -> Result<EndedSessions, StoreError> {
        timed!(
            "end_subject",
            self.inner.end_subject(subject, application, except, ending)
        )
    }

    async fn application_sessions(
        &self,
        application: &AppId,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        timed!(
            "application_sessions",
            self.inner.application_sessions(application, limit)
        )
    }

    async fn live_counts(&self) -> Result<Vec<LiveCount>, StoreError> {
        timed!("live_counts", self.inner.live_counts())
    }

    async fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Arc<Session>>, StoreError> {
        timed!("due", self.inner.due(now, limit))
    }

    async fn purge(&self, now: Timestamp) -> Result<usize, StoreError> {
        timed!("purge", self.inner.purge(now))
    }

    async fn append_event(&self, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        timed!("append_event", self.inner.append_event(event))
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<AuditEvent>, StoreError> {
        timed!("events", self.inner.events(query))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        timed!("ping", self.inner.ping())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        timed!("flush", self.inner.flush())
    }
}

impl<S: ApplicationStore> ApplicationStore for TimedStore<S> {
    async fn add_application(
        &self,
        app: Application,
        event: AuditEvent,
    ) -> Result<AuditEvent, StoreError> {
        timed!("add_application", self.inner.add_application(app, event))
    }

    async fn find_application(&self, id: &AppId) -> Result<Option<Application>, StoreError> {
        timed!("find_application", self.inner.find_application(id))
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        timed!("list_applications", self.inner.list_applications())
    }

    async fn update_application(
        &self,
        version: u64,
        next: Application,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        timed!(
            "update_application",
            self.inner.update_application(version, next, event)
        )
    }

    async fn remove_application(
        &self,
        id: &AppId,
        event: AuditEvent,
    ) -> Result<Option<AuditEvent>, StoreError> {
        timed!(
            "remove_application",
            self.inner.remove_application(id, event)
        )
    }
}

impl<S: ApiKeyStore> ApiKeyStore for TimedStore<S> {
    async fn add_api_key(&self, key: ApiKey, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        timed!("add_api_key", self.inner.add_api_key(key, event))
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        timed!("find_api_key", self.inner.find_api_key(hash))
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        timed!("list_api_keys", self.inner.list_api_keys())
    }

    async fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> Result<Option<(ApiKey, AuditEvent)>, StoreError> {
        timed!("revoke_api_key", self.inner.revoke_api_key(id, at, event))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::{MemoryStore, SessionStore};
    use portcullis_store_redis::RedisStore;

    use super::TimedStore;

    /// The wrapper routes tokens exactly as the store it wraps, or the engine would issue tokens
    /// a sharded store cannot find.
    #[test]
    fn routes_by_subject_follow_the_inner_store() {
        assert_eq!(
            <TimedStore<MemoryStore> as SessionStore>::ROUTES_BY_SUBJECT,
            <MemoryStore as SessionStore>::ROUTES_BY_SUBJECT
        );
        assert_eq!(
            <TimedStore<RedisStore> as SessionStore>::ROUTES_BY_SUBJECT,
            <RedisStore as SessionStore>::ROUTES_BY_SUBJECT
        );
        assert_ne!(
            <MemoryStore as SessionStore>::ROUTES_BY_SUBJECT,
            <RedisStore as SessionStore>::ROUTES_BY_SUBJECT,
            "both values are covered"
        );
    }
}
