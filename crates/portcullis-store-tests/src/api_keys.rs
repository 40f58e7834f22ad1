//! Cases for the API-key store: keys are kept by the hash of their secret, listed, and revoked
//! once, each change with its event.

use std::time::Duration;

use portcullis_core::{
    Actor, ApiKey, ApiKeyStore, AuditEvent, EventKind, PublicId, Token, TokenKind,
};

use crate::{random, t0, test_app};

const SEC: Duration = Duration::from_secs(1);

/// API keys are stored by hash (a hash never stored is `None`), listed, and revoked once.
pub async fn api_keys_add_find_list_revoke<S: ApiKeyStore>(store: S) {
    let r = random();
    let token = Token::generate(TokenKind::ApiKey, r.as_ref());
    assert!(store.find_api_key(&token.hash()).await.unwrap().is_none());
    let key = ApiKey {
        id: PublicId::generate("key_", r.as_ref()),
        name: "shop".into(),
        application: test_app(),
        key_hash: token.hash(),
        created_at: t0(),
        revoked_at: None,
    };
    let event = AuditEvent {
        seq: 0,
        at: t0(),
        kind: EventKind::ApiKeyCreated,
        actor: Actor::cli(),
        session_id: None,
        subject: None,
        policy: None,
        application: Some(key.application.clone()),
        reason: None,
        detail: serde_json::json!({"api_key": key.id.as_str()}),
    };
    let stored = store.add_api_key(key.clone(), event.clone()).await.unwrap();
    assert!(stored.seq > 0);
    assert_eq!(
        store.find_api_key(&token.hash()).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.list_api_keys().await.unwrap(), vec![key.clone()]);
    let mut revoke_event = event.clone();
    revoke_event.kind = EventKind::ApiKeyRevoked;
    let (revoked, _) = store
        .revoke_api_key(&key.id, t0().plus(SEC), revoke_event.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(t0().plus(SEC)));
    assert!(
        store
            .revoke_api_key(&key.id, t0().plus(SEC), revoke_event)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .find_api_key(&token.hash())
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(t0().plus(SEC))
    );
}
