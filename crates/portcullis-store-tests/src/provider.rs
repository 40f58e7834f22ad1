//! The OpenID Connect provider's store contracts, run against every backend: authorization
//! codes ([`CodeStore`]: kept whole, redeemed exactly once even when redemptions race,
//! remembered after redemption, forgotten after expiry) and signing keys
//! ([`SigningKeyStore`]: one signing key per algorithm, rotation by compare-and-set, retired
//! keys published until removed).
//!
//! Cases use codes of their own; the forgetting case keeps to a stretch of time before
//! [`t0`], so every case can share one store in any order. Signing-key cases need a store with
//! no keys (each backend gives the contract a fresh database, schema or prefix).

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::oidc::{
    AuthorizationCode, CodeStore, Redemption, SigningAlg, SigningKey, SigningKeyStore,
};
use portcullis_core::{PublicId, RandomSource, SeededRandom, Timestamp, TokenHash};

use crate::t0;

/// How a store lets go of codes past their expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeExpiry {
    /// [`CodeStore::forget_codes`] deletes them and answers how many (SQL stores, memory).
    Swept,
    /// The backend drops each code by itself some time after its expiry (Redis: a TTL), so
    /// [`CodeStore::forget_codes`] answers 0.
    ByBackend,
}

/// Runs every authorization-code case on `store`.
pub async fn code_store_contract(store: Arc<dyn CodeStore>, expiry: CodeExpiry) {
    a_code_reads_back_exactly_as_issued(&*store).await;
    rfc6749_4_1_2_a_code_is_redeemed_once_and_a_replay_names_what_it_issued(&*store).await;
    an_unknown_code_is_unknown(&*store).await;
    rfc6749_4_1_2_of_racing_redemptions_exactly_one_is_first(store.clone()).await;
    expired_codes_are_forgotten(&*store, expiry).await;
}

/// Runs every signing-key case on `store`, which must hold no keys yet.
pub async fn signing_key_store_contract(store: Arc<dyn SigningKeyStore>) {
    keys_rotate_by_compare_and_set_one_signing_key_per_algorithm(&*store).await;
    racing_first_keys_leave_exactly_one(store.clone()).await;
    only_retired_keys_are_removed(&*store).await;
}

fn earlier(at: Timestamp, by: Duration) -> Timestamp {
    Timestamp::from_millis(at.as_millis() - i64::try_from(by.as_millis()).unwrap())
}

fn code(random: &dyn RandomSource, issued_at: Timestamp) -> AuthorizationCode {
    let mut hash = [0u8; 32];
    random.fill(&mut hash);
    AuthorizationCode {
        hash: TokenHash(hash),
        client: PublicId::generate("app_", random),
        subject: PublicId::generate("usr_", random).as_str().to_owned(),
        sso_session: PublicId::generate("ses_", random),
        redirect_uri: "https://app.example/cb?x=1&y=é".into(),
        scopes: vec!["openid".into(), "profile".into(), "offline_access".into()],
        nonce: Some("n-0S6_WzA2Mj".into()),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        auth_time: earlier(issued_at, Duration::from_secs(300)),
        acr: Some("aal2".into()),
        amr: vec!["pwd".into(), "otp".into()],
        issued_at,
        expires_at: issued_at.plus(portcullis_core::oidc::CODE_LIFETIME),
        redeemed_for: None,
    }
}

async fn a_code_reads_back_exactly_as_issued(store: &dyn CodeStore) {
    let random = SeededRandom::new(1);
    let issued = code(&random, t0());
    let mut bare = code(&random, t0());
    bare.nonce = None;
    bare.code_challenge = None;
    bare.acr = None;
    bare.amr.clear();
    for issued in [issued, bare] {
        store.add_code(issued.clone()).await.unwrap();
        let session = PublicId::generate("ses_", &random);
        let answer = store.redeem_code(&issued.hash, &session).await.unwrap();
        let mut expected = issued.clone();
        expected.redeemed_for = Some(session);
        assert_eq!(answer, Redemption::First(expected));
    }
}

async fn rfc6749_4_1_2_a_code_is_redeemed_once_and_a_replay_names_what_it_issued(
    store: &dyn CodeStore,
) {
    let random = SeededRandom::new(2);
    let issued = code(&random, t0());
    store.add_code(issued.clone()).await.unwrap();
    let first = PublicId::generate("ses_", &random);
    let Redemption::First(redeemed) = store.redeem_code(&issued.hash, &first).await.unwrap() else {
        panic!("the first redemption is first");
    };
    assert_eq!(redeemed.redeemed_for.as_ref(), Some(&first));
    for _ in 0..2 {
        let again = PublicId::generate("ses_", &random);
        match store.redeem_code(&issued.hash, &again).await.unwrap() {
            Redemption::Replayed(code) => {
                assert_eq!(
                    code.redeemed_for.as_ref(),
                    Some(&first),
                    "the first session, not the replay's"
                );
                assert_eq!(code.client, issued.client);
            }
            other => panic!("a replay is a replay: {other:?}"),
        }
    }
}

async fn an_unknown_code_is_unknown(store: &dyn CodeStore) {
    let random = SeededRandom::new(3);
    let never = code(&random, t0());
    let session = PublicId::generate("ses_", &random);
    assert_eq!(
        store.redeem_code(&never.hash, &session).await.unwrap(),
        Redemption::Unknown
    );
}

async fn rfc6749_4_1_2_of_racing_redemptions_exactly_one_is_first(store: Arc<dyn CodeStore>) {
    let random = SeededRandom::new(4);
    for _ in 0..5 {
        let issued = code(&random, t0());
        store.add_code(issued.clone()).await.unwrap();
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let hash = issued.hash;
                let session = PublicId::generate("ses_", &random);
                tokio::spawn(async move { store.redeem_code(&hash, &session).await.unwrap() })
            })
            .collect();
        let mut firsts = Vec::new();
        let mut replays = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                Redemption::First(code) => firsts.push(code.redeemed_for),
                Redemption::Replayed(code) => replays.push(code.redeemed_for),
                Redemption::Unknown => panic!("the code exists"),
            }
        }
        assert_eq!(firsts.len(), 1, "exactly one redemption wins");
        assert!(
            replays.iter().all(|r| *r == firsts[0]),
            "every replay names the winner's session"
        );
    }
}

async fn expired_codes_are_forgotten(store: &dyn CodeStore, expiry: CodeExpiry) {
    let random = SeededRandom::new(5);
    // A stretch of time of its own, before every other case's codes.
    let long_ago = earlier(t0(), Duration::from_secs(30 * 86_400));
    let old = code(&random, long_ago);
    let newer = code(&random, long_ago.plus(Duration::from_secs(3600)));
    store.add_code(old.clone()).await.unwrap();
    store.add_code(newer.clone()).await.unwrap();
    let cutoff = long_ago.plus(Duration::from_secs(1800));
    let gone = store.forget_codes(cutoff).await.unwrap();
    let session = PublicId::generate("ses_", &random);
    match expiry {
        CodeExpiry::Swept => {
            assert_eq!(gone, 1, "only the code that expired before the cutoff");
            assert_eq!(
                store.redeem_code(&old.hash, &session).await.unwrap(),
                Redemption::Unknown
            );
        }
        CodeExpiry::ByBackend => assert_eq!(gone, 0),
    }
    assert!(matches!(
        store.redeem_code(&newer.hash, &session).await.unwrap(),
        Redemption::First(_)
    ));
}

fn key(random: &dyn RandomSource, alg: SigningAlg, created_at: Timestamp) -> SigningKey {
    let kid = PublicId::generate("", random).as_str().to_owned();
    SigningKey {
        public_jwk: format!(r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"…","y":"…"}}"#),
        sealed_private: format!("v1.k1.{kid}"),
        kid,
        alg,
        created_at,
        retired_at: None,
    }
}

async fn keys_rotate_by_compare_and_set_one_signing_key_per_algorithm(store: &dyn SigningKeyStore) {
    let random = SeededRandom::new(6);
    assert!(
        store.signing_keys().await.unwrap().is_empty(),
        "a fresh store"
    );
    let first = key(&random, SigningAlg::Es256, t0());
    assert!(store.add_signing_key(first.clone(), None).await.unwrap());
    let late_first = key(&random, SigningAlg::Es256, t0());
    assert!(
        !store.add_signing_key(late_first, None).await.unwrap(),
        "a second first key of the algorithm is refused"
    );
    let ed = key(&random, SigningAlg::EdDsa, t0());
    assert!(
        store.add_signing_key(ed.clone(), None).await.unwrap(),
        "algorithms are apart"
    );

    let second = key(
        &random,
        SigningAlg::Es256,
        t0().plus(Duration::from_secs(60)),
    );
    assert!(
        !store
            .add_signing_key(second.clone(), Some(&ed.kid))
            .await
            .unwrap(),
        "the key replaced must be the algorithm's current one"
    );
    assert!(
        store
            .add_signing_key(second.clone(), Some(&first.kid))
            .await
            .unwrap()
    );
    let third = key(
        &random,
        SigningAlg::Es256,
        t0().plus(Duration::from_secs(120)),
    );
    assert!(
        !store
            .add_signing_key(third, Some(&first.kid))
            .await
            .unwrap(),
        "a rotation from a stale view is refused"
    );

    let keys = store.signing_keys().await.unwrap();
    let mut retired_first = first.clone();
    retired_first.retired_at = Some(second.created_at);
    assert_eq!(
        keys,
        vec![retired_first, ed, second],
        "oldest first, exactly as stored"
    );
}

async fn racing_first_keys_leave_exactly_one(store: Arc<dyn SigningKeyStore>) {
    let random = SeededRandom::new(7);
    let before = store.signing_keys().await.unwrap().len();
    let current = store
        .signing_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.alg == SigningAlg::EdDsa && k.retired_at.is_none())
        .expect("the EdDSA key of the previous case");
    let racers: Vec<_> = (0..6)
        .map(|n| {
            let store = store.clone();
            let next = key(
                &random,
                SigningAlg::EdDsa,
                t0().plus(Duration::from_secs(200 + n)),
            );
            let replacing = current.kid.clone();
            tokio::spawn(
                async move { store.add_signing_key(next, Some(&replacing)).await.unwrap() },
            )
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        won += usize::from(racer.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one rotation wins");
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), before + 1);
    let signing: Vec<_> = keys
        .iter()
        .filter(|k| k.alg == SigningAlg::EdDsa && k.retired_at.is_none())
        .collect();
    assert_eq!(signing.len(), 1, "one signing key per algorithm");
}

async fn only_retired_keys_are_removed(store: &dyn SigningKeyStore) {
    let keys = store.signing_keys().await.unwrap();
    let signing = keys.iter().find(|k| k.retired_at.is_none()).unwrap();
    assert!(
        !store.remove_signing_key(&signing.kid).await.unwrap(),
        "a signing key stays"
    );
    let retired = keys.iter().find(|k| k.retired_at.is_some()).unwrap();
    assert!(store.remove_signing_key(&retired.kid).await.unwrap());
    assert!(
        !store.remove_signing_key(&retired.kid).await.unwrap(),
        "already gone"
    );
    assert!(!store.remove_signing_key("no-such-kid").await.unwrap());
    let after = store.signing_keys().await.unwrap();
    assert_eq!(after.len(), keys.len() - 1);
    assert!(after.iter().all(|k| k.kid != retired.kid));
}
