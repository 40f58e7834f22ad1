//! API keys in `pc_api_keys`: the key's id, the hash of its secret (what a validation looks it
//! up by) and the key itself as JSON. A node caches the keys it finds for [`API_KEY_CACHE`] and
//! forgets the ones it changes.
//!
//! [`API_KEY_CACHE`]: crate::API_KEY_CACHE

use portcullis_core::{
    ApiKey, ApiKeyStore, AuditEvent, PublicId, StoreError, StoredApiKey, Timestamp, TokenHash,
};
use sqlx::Row;

use crate::{PostgresStore, append_events, unavailable};

impl ApiKeyStore for PostgresStore {
    async fn add_api_key(&self, key: ApiKey, event: AuditEvent) -> Result<AuditEvent, StoreError> {
        crate::bounded(async move {
            let mut tx = self.begin().await?;
            sqlx::query("INSERT INTO pc_api_keys (id, key_hash, body) VALUES ($1, $2, $3)")
                .bind(key.id.as_str())
                .bind(&key.key_hash.0[..])
                .bind(StoredApiKey::encode(&key)?)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            self.api_keys.forget(&key.key_hash);
            Ok(events.remove(0))
        })
        .await
    }

    async fn find_api_key(&self, hash: &TokenHash) -> Result<Option<ApiKey>, StoreError> {
        crate::bounded(async move {
            if let Some(key) = self.api_keys.get(hash) {
                return Ok(Some(key));
            }
            let row = sqlx::query("SELECT body FROM pc_api_keys WHERE key_hash = $1")
                .bind(&hash.0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            let key: Option<ApiKey> = row
                .map(|r| StoredApiKey::decode(r.get::<&str, _>(0)))
                .transpose()?;
            if let Some(key) = &key {
                self.api_keys.put(key);
            }
            Ok(key)
        })
        .await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        crate::bounded(async move {
            let rows = sqlx::query("SELECT body FROM pc_api_keys")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            let mut keys = rows
                .iter()
                .map(|r| StoredApiKey::decode(r.get::<&str, _>(0)))
                .collect::<Result<Vec<_>, _>>()?;
            keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(keys)
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        id: &PublicId,
        at: Timestamp,
        event: AuditEvent,
    ) -> Result<Option<(ApiKey, AuditEvent)>, StoreError> {
        crate::bounded(async move {
            let mut tx = self.begin().await?;
            let row = sqlx::query("SELECT body FROM pc_api_keys WHERE id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            let Some(row) = row else { return Ok(None) };
            let mut key = StoredApiKey::decode(row.get::<&str, _>(0))?;
            if key.revoked_at.is_some() {
                return Ok(None);
            }
            key.revoked_at = Some(at);
            sqlx::query("UPDATE pc_api_keys SET body = $2 WHERE id = $1")
                .bind(id.as_str())
                .bind(StoredApiKey::encode(&key)?)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let mut events = append_events(&mut tx, vec![event]).await?;
            tx.commit().await.map_err(unavailable)?;
            self.api_keys.forget(&key.key_hash);
            Ok(Some((key, events.remove(0))))
        })
        .await
    }
}
