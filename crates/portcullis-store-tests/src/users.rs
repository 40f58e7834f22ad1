//! The account-store contract, run against every backend's `UserStore` (each in its own
//! database, schema or key prefix): round trips, unique usernames, listing, compare-and-set.

use std::sync::Arc;

use portcullis_core::{Timestamp, TotpFactor, User, UserStore, UserStoreError};

fn user(id: &str, username: &str) -> User {
    User {
        id: id.to_owned(),
        username: username.to_owned(),
        version: 1,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA${username}"),
        disabled: false,
        totp: None,
        created_at: Timestamp::from_millis(1_800_000_000_000),
        password_changed_at: Timestamp::from_millis(1_800_000_000_000),
        short_password: false,
    }
}

/// Runs every case of the contract on `store`, which must start empty.
pub async fn user_store_contract(store: Arc<dyn UserStore>) {
    // Round trip of every field, by name and by id.
    let mut alice = user("usr_alice", "alice");
    alice.disabled = true;
    alice.totp = Some(TotpFactor {
        secret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into(),
        last_step: 60_000_001,
        enrolled_at: Timestamp::from_millis(1_800_000_100_000),
    });
    store.add_user(&alice).await.unwrap();
    assert_eq!(
        store.user_by_name("alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.user_by_id("usr_alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.user_by_name("nobody").await.unwrap(), None);
    assert_eq!(store.user_by_id("usr_nobody").await.unwrap(), None);

    // Usernames are unique; the first record is unchanged.
    let impostor = user("usr_other", "alice");
    assert!(matches!(
        store.add_user(&impostor).await,
        Err(UserStoreError::Exists)
    ));
    assert_eq!(
        store.user_by_name("alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.user_by_id("usr_other").await.unwrap(), None);

    // Listing is by username.
    store.add_user(&user("usr_carol", "carol")).await.unwrap();
    store.add_user(&user("usr_bob", "bob")).await.unwrap();
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);

    // Compare-and-set: the next version replaces, a stale one changes nothing.
    let mut next = alice.clone();
    next.version = 2;
    next.disabled = false;
    assert!(store.replace_user(&next).await.unwrap());
    assert_eq!(
        store.user_by_id("usr_alice").await.unwrap(),
        Some(next.clone())
    );
    let mut stale = alice.clone();
    stale.version = 2;
    stale.password_hash = "stale".into();
    assert!(
        !store.replace_user(&stale).await.unwrap(),
        "same version twice"
    );
    let mut skipped = next.clone();
    skipped.version = 4;
    assert!(
        !store.replace_user(&skipped).await.unwrap(),
        "a version skipped"
    );
    assert_eq!(store.user_by_id("usr_alice").await.unwrap(), Some(next));
    assert!(
        !store
            .replace_user(&user("usr_ghost", "ghost"))
            .await
            .unwrap()
    );
}
