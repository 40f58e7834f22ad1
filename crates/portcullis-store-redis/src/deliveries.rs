//! Back-channel logout deliveries in Redis, under the tag of the ended session's subject (its
//! route), so the commit that ends a session writes its delivery in the same script:
//! `<prefix>:{<route>}:ld:<session id>` holds the delivery ([`StoredDelivery`] JSON),
//! `<prefix>:{<route>}:ldq` scores each pending delivery's id at when it is due, and
//! `<prefix>:{<route>}:lda` scores every delivery's id at when its session ended (for listing
//! and forgetting).
//!
//! Every change after the first write is one compare-and-set script on the record and the due
//! index ([`SWAP`]): a claim reads a due delivery and swaps in the claimed one, so of claims
//! racing on any nodes exactly one wins; the losers move on. Claims and attempts do not wait for
//! replicas: losing one in a failover delivers again, which a delivery may always do (its `jti`
//! does not change).

use std::sync::LazyLock;

use portcullis_core::oidc::{
    Attempt, DeliveryQuery, DeliveryState, LogoutDelivery, LogoutDeliveryStore, ProviderFuture,
    newest_first,
};
use portcullis_core::{SessionId, StoreError, StoredDelivery, Timestamp};
use redis::Script;

use crate::{Plan, RedisStore, tag_of};

/// Replaces a delivery if it is as read. KEYS: the delivery, its tag's due index. ARGV: the
/// JSON read, the JSON to write, the session id, the due score ("" once it is not pending).
/// Answers 1 when it wrote, 0 when the delivery had changed.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return 1
",
    )
});

/// How many ids a listing reads from one tag at a time.
const PAGE: usize = 100;

/// The back-channel logout deliveries of a [`RedisStore`] (see [`RedisStore::deliveries`]).
#[derive(Debug, Clone)]
pub struct RedisDeliveryStore {
    store: RedisStore,
}

impl RedisStore {
    fn delivery_key(&self, route: u8, session: &str) -> String {
        self.key(&tag_of(route), "ld", session)
    }

    fn due_deliveries_key(&self, route: u8) -> String {
        self.tag_key(&tag_of(route), "ldq")
    }

    fn all_deliveries_key(&self, route: u8) -> String {
        self.tag_key(&tag_of(route), "lda")
    }

    /// Adds to `plan` the delivery of session `ended` (of route `route`), unless it has one.
    pub(crate) fn plan_delivery(
        &self,
        plan: &mut Plan,
        route: u8,
        delivery: &LogoutDelivery,
    ) -> Result<(), StoreError> {
        let body = StoredDelivery::encode(delivery)?;
        let id = delivery.session.as_str().as_bytes();
        plan.op(&[
            b"SET",
            self.delivery_key(route, delivery.session.as_str())
                .as_bytes(),
            body.as_bytes(),
            b"NX",
        ]);
        plan.op(&[
            b"ZADD",
            self.due_deliveries_key(route).as_bytes(),
            b"NX",
            delivery.next_attempt_at.as_millis().to_string().as_bytes(),
            id,
        ]);
        plan.op(&[
            b"ZADD",
            self.all_deliveries_key(route).as_bytes(),
            b"NX",
            delivery.ended_at.as_millis().to_string().as_bytes(),
            id,
        ]);
        Ok(())
    }
}

impl RedisDeliveryStore {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self { store }
    }

    /// The delivery of `session` as stored (its JSON too), with its route.
    async fn read(
        &self,
        session: &SessionId,
    ) -> Result<Option<(u8, String, LogoutDelivery)>, StoreError> {
        let Some(route) = session.route(4) else {
            return Ok(None);
        };
        let body: Option<String> = self
            .store
            .query(redis::cmd("GET").arg(self.store.delivery_key(route, session.as_str())))
            .await?;
        body.map(|body| {
            let delivery = StoredDelivery::decode(&body)?;
            Ok((route, body, delivery))
        })
        .transpose()
    }

    /// Writes `next` over `read` if the delivery is still as read.
    async fn swap(&self, route: u8, read: &str, next: &LogoutDelivery) -> Result<bool, StoreError> {
        let id = next.session.as_str();
        let due = if next.state == DeliveryState::Pending {
            next.next_attempt_at.as_millis().to_string()
        } else {
            String::new()
        };
        let args = [
            read.to_owned(),
            StoredDelivery::encode(next)?,
            id.to_owned(),
            due,
        ];
        let keys = [
            self.store.delivery_key(route, id),
            self.store.due_deliveries_key(route),
        ];
        let wrote: i64 = self.store.script(&SWAP, &keys, &args).await?;
        Ok(wrote == 1)
    }

    /// Changes the delivery of `session` to what `next` makes of it, reading again when another
    /// node changed it meanwhile.
    async fn change(
        &self,
        session: &SessionId,
        next: impl Fn(&LogoutDelivery) -> Option<LogoutDelivery>,
    ) -> Result<Option<LogoutDelivery>, StoreError> {
        loop {
            let Some((route, body, current)) = self.read(session).await? else {
                return Ok(None);
            };
            let Some(changed) = next(&current) else {
                return Ok(None);
            };
            if self.swap(route, &body, &changed).await? {
                return Ok(Some(changed));
            }
        }
    }

    /// The ids in `key` scored from `min` to `max`, `count` from `offset`, highest first when
    /// `reverse`.
    async fn ids(
        &self,
        key: &str,
        (min, max): (&str, &str),
        (offset, count): (usize, usize),
        reverse: bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd(if reverse {
            "ZREVRANGEBYSCORE"
        } else {
            "ZRANGEBYSCORE"
        });
        if reverse {
            cmd.arg(key).arg(max).arg(min);
        } else {
            cmd.arg(key).arg(min).arg(max);
        }
        cmd.arg("LIMIT").arg(offset).arg(count);
        self.store.query(&cmd).await
    }
}

impl LogoutDeliveryStore for RedisDeliveryStore {
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> ProviderFuture<'_, Vec<LogoutDelivery>> {
        Box::pin(async move {
            let now_ms = now.as_millis().to_string();
            let mut claimed = Vec::new();
            for route in 0..=255u8 {
                if claimed.len() >= limit {
                    break;
                }
                let key = self.store.due_deliveries_key(route);
                let due = self
                    .ids(&key, ("-inf", &now_ms), (0, limit - claimed.len()), false)
                    .await?;
                for id in due {
                    let session = SessionId::from_string(id);
                    let Some((route, body, current)) = self.read(&session).await? else {
                        // An index entry whose delivery was forgotten.
                        let _: i64 = self
                            .store
                            .query(redis::cmd("ZREM").arg(&key).arg(session.as_str()))
                            .await?;
                        continue;
                    };
                    if !current.is_due(now) {
                        continue;
                    }
                    let lease = LogoutDelivery {
                        next_attempt_at: lease_until,
                        ..current
                    };
                    if self.swap(route, &body, &lease).await? {
                        claimed.push(lease);
                    }
                }
            }
            claimed.sort_by(|a, b| a.session.as_str().cmp(b.session.as_str()));
            Ok(claimed)
        })
    }

    fn record_attempt<'a>(
        &'a self,
        session: &'a SessionId,
        attempt: &'a Attempt,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(self.change(session, |d| d.after(attempt)))
    }

    fn retry_delivery<'a>(
        &'a self,
        session: &'a SessionId,
        now: Timestamp,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(self.change(session, move |d| d.retried(now)))
    }

    fn delivery<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> ProviderFuture<'a, Option<LogoutDelivery>> {
        Box::pin(async move { Ok(self.read(session).await?.map(|(_, _, d)| d)) })
    }

    fn deliveries<'a>(
        &'a self,
        query: &'a DeliveryQuery,
    ) -> ProviderFuture<'a, Vec<LogoutDelivery>> {
        Box::pin(async move {
            let mut found = Vec::new();
            for route in 0..=255u8 {
                let key = self.store.all_deliveries_key(route);
                let mut matched = 0;
                let mut offset = 0;
                while matched < query.limit {
                    let ids = self
                        .ids(&key, ("-inf", "+inf"), (offset, PAGE), true)
                        .await?;
                    offset += ids.len();
                    for id in &ids {
                        let session = SessionId::from_string(id.clone());
                        if let Some((_, _, d)) = self.read(&session).await?
                            && query.matches(&d)
                        {
                            matched += 1;
                            found.push(d);
                        }
                    }
                    if ids.len() < PAGE {
                        break;
                    }
                }
            }
            found.sort_by(newest_first);
            found.truncate(query.limit);
            Ok(found)
        })
    }

    fn pending_deliveries(&self) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            let mut pending = 0;
            for route in 0..=255u8 {
                let count: u64 = self
                    .store
                    .query(redis::cmd("ZCARD").arg(self.store.due_deliveries_key(route)))
                    .await?;
                pending += count;
            }
            Ok(pending)
        })
    }

    fn forget_deliveries(&self, before: Timestamp) -> ProviderFuture<'_, u64> {
        Box::pin(async move {
            // A delivery finishes after its session ended, so one that finished before `before`
            // ended before it too: only those are read.
            let before_ms = format!("({}", before.as_millis());
            let mut gone = 0;
            for route in 0..=255u8 {
                let key = self.store.all_deliveries_key(route);
                let mut offset = 0;
                loop {
                    let ids = self
                        .ids(&key, ("-inf", &before_ms), (offset, PAGE), false)
                        .await?;
                    let mut kept = 0;
                    for id in &ids {
                        let session = SessionId::from_string(id.clone());
                        let finished = match self.read(&session).await? {
                            Some((_, _, d)) => {
                                d.state != DeliveryState::Pending && d.next_attempt_at < before
                            }
                            None => true,
                        };
                        if finished {
                            let mut pipe = redis::pipe();
                            pipe.atomic()
                                .del(self.store.delivery_key(route, id))
                                .zrem(&key, id)
                                .zrem(self.store.due_deliveries_key(route), id);
                            let _: () = self.store.pipeline(&pipe).await?;
                            gone += 1;
                        } else {
                            kept += 1;
                        }
                    }
                    offset += kept;
                    if ids.len() < PAGE {
                        break;
                    }
                }
            }
            Ok(gone)
        })
    }
}
