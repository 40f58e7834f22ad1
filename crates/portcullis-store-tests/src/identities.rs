//! The federated-identity contract ([`IdentityStore`]), run against every backend: an upstream
//! person is linked to one account only, even when links race; an account's links read back
//! oldest first; unlinking with `keep_one` never leaves an account without a link, even when
//! two unlinks race; an upstream session names its person until it is no longer kept.
//!
//! Every case uses issuers and accounts of its own, so the cases can share one store.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::oidc::{FederatedIdentity, IdentityStore, Unlinked, UpstreamSession};
use portcullis_core::{PublicId, RandomSource, SeededRandom};

use crate::t0;

/// Runs every federated-identity case on `store`.
pub async fn identity_store_contract(store: Arc<dyn IdentityStore>) {
    an_identity_reads_back_exactly_as_linked(&*store).await;
    an_upstream_person_is_linked_to_one_account_only(&*store).await;
    of_racing_links_exactly_one_wins(store.clone()).await;
    unlinking_keeps_the_last_link_when_asked(&*store).await;
    racing_unlinks_keep_one_link(store.clone()).await;
    an_upstream_session_names_its_person_while_kept(&*store).await;
}

fn identity(random: &dyn RandomSource, user_id: &str, offset_secs: u64) -> FederatedIdentity {
    FederatedIdentity {
        user_id: user_id.to_owned(),
        provider: "corp".into(),
        issuer: format!(
            "https://{}.idp.example/realms/é",
            PublicId::generate("iss", random).as_str()
        ),
        subject: PublicId::generate("sub", random).as_str().to_owned(),
        linked_at: t0().plus(Duration::from_secs(offset_secs)),
    }
}

fn user(random: &dyn RandomSource) -> String {
    PublicId::generate("usr_", random).as_str().to_owned()
}

async fn an_identity_reads_back_exactly_as_linked(store: &dyn IdentityStore) {
    let random = SeededRandom::new(61);
    let user_id = user(&random);
    let second = identity(&random, &user_id, 20);
    let first = identity(&random, &user_id, 10);
    for linked in [&second, &first] {
        assert!(store.link(linked).await.unwrap());
    }
    assert_eq!(
        store.identity(&first.issuer, &first.subject).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.identities_of(&user_id).await.unwrap(),
        vec![first.clone(), second.clone()],
        "oldest first"
    );
    assert_eq!(
        store
            .identity(&first.issuer, &second.subject)
            .await
            .unwrap(),
        None,
        "issuer and subject are matched together"
    );
    assert_eq!(store.identities_of(&user(&random)).await.unwrap(), vec![]);
}

async fn an_upstream_person_is_linked_to_one_account_only(store: &dyn IdentityStore) {
    let random = SeededRandom::new(62);
    let owner = user(&random);
    let linked = identity(&random, &owner, 0);
    assert!(store.link(&linked).await.unwrap());
    let mut claimed = linked.clone();
    claimed.user_id = user(&random);
    assert!(
        !store.link(&claimed).await.unwrap(),
        "a second account cannot take the upstream person"
    );
    assert!(
        !store.link(&linked).await.unwrap(),
        "nor can it be linked twice"
    );
    assert_eq!(
        store
            .identity(&linked.issuer, &linked.subject)
            .await
            .unwrap(),
        Some(linked.clone())
    );
    assert_eq!(store.identities_of(&claimed.user_id).await.unwrap(), vec![]);
}

async fn of_racing_links_exactly_one_wins(store: Arc<dyn IdentityStore>) {
    let random = SeededRandom::new(63);
    let contested = identity(&random, "nobody", 0);
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let mut attempt = contested.clone();
            attempt.user_id = user(&random);
            tokio::spawn(async move { (store.link(&attempt).await.unwrap(), attempt) })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (won, attempt) = racer.await.unwrap();
        if won {
            winners.push(attempt);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one account gets the upstream person"
    );
    assert_eq!(
        store
            .identity(&contested.issuer, &contested.subject)
            .await
            .unwrap(),
        Some(winners[0].clone())
    );
}

async fn unlinking_keeps_the_last_link_when_asked(store: &dyn IdentityStore) {
    let random = SeededRandom::new(64);
    let user_id = user(&random);
    let first = identity(&random, &user_id, 0);
    let second = identity(&random, &user_id, 1);
    for linked in [&first, &second] {
        assert!(store.link(linked).await.unwrap());
    }
    assert_eq!(
        store
            .unlink(&user(&random), &first.issuer, &first.subject, false)
            .await
            .unwrap(),
        Unlinked::NotLinked,
        "another account cannot unlink it"
    );
    assert_eq!(
        store
            .unlink(&user_id, &first.issuer, &first.subject, true)
            .await
            .unwrap(),
        Unlinked::Done
    );
    assert_eq!(
        store
            .unlink(&user_id, &second.issuer, &second.subject, true)
            .await
            .unwrap(),
        Unlinked::LastOne
    );
    assert_eq!(
        store.identities_of(&user_id).await.unwrap(),
        vec![second.clone()],
        "the last link stays"
    );
    assert_eq!(
        store
            .unlink(&user_id, &first.issuer, &first.subject, true)
            .await
            .unwrap(),
        Unlinked::NotLinked
    );
    assert_eq!(
        store
            .unlink(&user_id, &second.issuer, &second.subject, false)
            .await
            .unwrap(),
        Unlinked::Done,
        "an account with a password may drop its last link"
    );
    assert_eq!(
        store
            .identity(&second.issuer, &second.subject)
            .await
            .unwrap(),
        None
    );
    let mut relinked = second.clone();
    relinked.user_id = user(&random);
    assert!(
        store.link(&relinked).await.unwrap(),
        "an unlinked upstream person may be linked again"
    );
}

async fn racing_unlinks_keep_one_link(store: Arc<dyn IdentityStore>) {
    let random = SeededRandom::new(65);
    for _round in 0..10 {
        let user_id = user(&random);
        let links = [
            identity(&random, &user_id, 0),
            identity(&random, &user_id, 1),
        ];
        for linked in &links {
            assert!(store.link(linked).await.unwrap());
        }
        let racers: Vec<_> = links
            .iter()
            .cloned()
            .map(|linked| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .unlink(&linked.user_id, &linked.issuer, &linked.subject, true)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut done = 0;
        for racer in racers {
            if racer.await.unwrap() == Unlinked::Done {
                done += 1;
            }
        }
        assert_eq!(done, 1, "one unlink wins, the other finds the last link");
        assert_eq!(store.identities_of(&user_id).await.unwrap().len(), 1);
    }
}

async fn an_upstream_session_names_its_person_while_kept(store: &dyn IdentityStore) {
    let random = SeededRandom::new(67);
    let issuer = format!(
        "https://{}.idp.example/realms/é",
        PublicId::generate("iss", &random).as_str()
    );
    let now = t0();
    let hour = Duration::from_secs(3600);
    let session = UpstreamSession {
        issuer: issuer.clone(),
        sid: "sid é/1".into(),
        subject: "alice-0001".into(),
        until: now.plus(hour),
    };
    assert_eq!(
        store
            .session_subject(&issuer, &session.sid, now)
            .await
            .unwrap(),
        None,
        "not kept yet"
    );
    store.remember_session(&session, now).await.unwrap();
    let subject = |sid: &'static str, at| {
        let issuer = issuer.clone();
        async move { store.session_subject(&issuer, sid, at).await.unwrap() }
    };
    assert_eq!(subject("sid é/1", now).await.as_deref(), Some("alice-0001"));
    assert_eq!(subject("sid é/2", now).await, None, "another session");
    assert_eq!(
        store
            .session_subject("https://other.idp.example", &session.sid, now)
            .await
            .unwrap(),
        None,
        "the same sid at another issuer"
    );

    // A shorter keep for the same session does not shorten it.
    let shorter = UpstreamSession {
        until: now.plus(Duration::from_secs(60)),
        ..session.clone()
    };
    store.remember_session(&shorter, now).await.unwrap();
    let later = now.plus(Duration::from_secs(120));
    assert_eq!(
        subject("sid é/1", later).await.as_deref(),
        Some("alice-0001")
    );
    assert_eq!(
        subject("sid é/1", now.plus(hour)).await,
        None,
        "no longer kept at its until"
    );

    // Kept again for someone else (an upstream that reuses session ids): the newest wins.
    let reused = UpstreamSession {
        subject: "bruno-0002".into(),
        until: later.plus(hour),
        ..session.clone()
    };
    store.remember_session(&reused, later).await.unwrap();
    assert_eq!(
        subject("sid é/1", later).await.as_deref(),
        Some("bruno-0002")
    );
}
