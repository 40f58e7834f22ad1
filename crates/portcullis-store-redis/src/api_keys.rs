//! API keys in Redis. Every API-key key shares one hash tag of its own (`{k}`), so each change,
//! with its event, is one `commit.lua` script on one slot of a Cluster; API-key events are the
//! stream of that tag.
//!
//! Keys: `pc:{k}:a:<hex of the secret's hash>`, the key (JSON), what a validation reads;
//! `pc:{k}:ai:<key id>`, the hex of its hash, to revoke it by id; `pc:{k}:ak`, the set of every
//! key's hash hex, to list them; `pc:{k}:e`, the stream of API-key events. A node caches the keys
//! it finds for [`API_KEY_CACHE`] and forgets the ones it revokes.
//!
//! [`API_KEY_CACHE`]: crate::API_KEY_CACHE

use portcullis_core::{
    ApiKey, ApiKeyStore, AuditEvent, PublicId, StoreError, StoredApiKey, Timestamp, TokenHash,
};

use crate::{Plan, RedisStore, corrupt};

/// The hash tag of every API-key key (and of the stream of API-key events).
pub(crate) const TAG: &str = "k";

impl ApiKeyStore for RedisStore {
    async fn add_api_key(&self, key: ApiKey, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        let mut plan = Plan::default();
        let hex = key.key_hash.to_hex();
        let record = self.key(TAG, "a", &hex);
        plan.check_value(record.as_bytes(), b"");
        let body = StoredApiKey::encode(&key)?;
        plan.op(&[b"SET", record.as_bytes(), body.as_bytes()]);
        plan.op(&[b"SADD", self.tag_key(TAG, "ak").as_bytes(), hex.as_bytes()]);
        let id_key = self.key(TAG, "ai", key.id.as_str());
        plan.op(&[b"SET", id_key.as_bytes(), hex.as_bytes()]);
        self.event(&mut plan, None, event)?;
        let mut events = self
            .commit(plan)
            .await?
            .ok_or_else(|| corrupt("an API key with this secret already exists"))?;
        Ok(events.remove(0))
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        if let Some(key) = self.api_keys.get(hash) {
            return Ok(Some(key));
        }
        let body: Option<String> = self
            .query(redis::cmd("GET").arg(self.key(TAG, "a", &hash.to_hex())))
            .await?;
        let key: Option<ApiKey> = body.map(|b| StoredApiKey::decode(&b)).transpose()?;
        if let Some(key) = &key {
            self.api_keys.put(key);
        }
        Ok(key)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let hashes: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(self.tag_key(TAG, "ak")))
            .await?;
        let mut keys = Vec::new();
        for hex in hashes {
            let body: Option<String> = self
                .query(redis::cmd("GET").arg(self.key(TAG, "a", &hex)))
                .await?;
            if let Some(body) = body {
                keys.push(StoredApiKey::decode(&body)?);
            }
        }
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    async fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> Result<Option<(ApiKey, AuditEvent)>, StoreError> {
        let hex: Option<String> = self
            .query(redis::cmd("GET").arg(self.key(TAG, "ai", id.as_str())))
            .await?;
        let Some(hex) = hex else { return Ok(None) };
        let record = self.key(TAG, "a", &hex);
        let body: Option<String> = self.query(redis::cmd("GET").arg(&record)).await?;
        let Some(body) = body else { return Ok(None) };
        let mut key = StoredApiKey::decode(&body)?;
        if key.revoked_at.is_some() {
            self.confirm_slot(TAG).await?;
            return Ok(None);
        }
        key.revoked_at = Some(at);
        let mut plan = Plan::default();
        plan.check_value(record.as_bytes(), body.as_bytes());
        let body = StoredApiKey::encode(&key)?;
        plan.op(&[b"SET", record.as_bytes(), body.as_bytes()]);
        self.event(&mut plan, None, event)?;
        let committed = self.commit(plan).await;
        if matches!(committed, Ok(Some(_)) | Err(StoreError::Unconfirmed { .. })) {
            // Revoked on the primary, confirmed or not: this node stops trusting its copy.
            self.api_keys.forget(&key.key_hash);
        }
        let Some(mut events) = committed? else {
            return Ok(None);
        };
        Ok(Some((key, events.remove(0))))
    }
}
