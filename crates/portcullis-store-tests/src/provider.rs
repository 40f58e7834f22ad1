//! The OpenID Connect provider's store contracts, run against every backend: authorization
//! codes ([`CodeStore`]: kept whole, redeemed exactly once even when redemptions race,
//! remembered after redemption, forgotten after expiry) and signing keys
//! ([`SigningKeyStore`]: one signing key per algorithm, rotation by compare-and-set, retired
//! keys published until removed), refresh tokens ([`RefreshTokenStore`]: rotated exactly once
//! even when rotations race, the old token kept with its sealed successor, families ended
//! whole) and consents ([`ConsentStore`]: grants add up, revocation forgets).
//!
//! Cases use codes, tokens and subjects of their own; the forgetting cases keeps to a stretch of time before
//! [`t0`], so every case can share one store in any order. Signing-key cases need a store with
//! no keys (each backend gives the contract a fresh database, schema or prefix).

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use portcullis_core::oidc::{
    AuthorizationCode, CodeStore, Consent, ConsentStore, Redemption, RefreshToken,
    RefreshTokenStore, ReplayStore, Rotated, Rotation, SigningAlg, SigningKey, SigningKeyStore,
};
use portcullis_core::{PublicId, RandomSource, SeededRandom, Timestamp, TokenHash};

use crate::t0;

/// How a store lets go of codes and refresh tokens past their expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeExpiry {
    /// [`CodeStore::forget_codes`] and [`RefreshTokenStore::forget_refresh_tokens`] delete
    /// them and answer how many (SQL stores, memory).
    Swept,
    /// The backend drops each by itself some time after its expiry (Redis: a TTL), so the
    /// forgetting calls answer 0.
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

/// Runs every refresh-token case on `store`.
pub async fn refresh_token_store_contract(store: Arc<dyn RefreshTokenStore>, expiry: CodeExpiry) {
    a_refresh_token_reads_back_exactly_as_issued(&*store).await;
    rfc9700_4_14_2_a_rotated_token_is_kept_with_its_sealed_successor(&*store).await;
    rfc9700_4_14_2_of_racing_rotations_exactly_one_stores_its_successor(store.clone()).await;
    a_token_rotates_only_within_its_own_family(&*store).await;
    an_ended_family_forgets_every_token_and_no_other(&*store).await;
    expired_refresh_tokens_are_forgotten(&*store, expiry).await;
}

/// Runs every consent case on `store`.
pub async fn consent_store_contract(store: Arc<dyn ConsentStore>) {
    consents_add_up_and_read_back_per_client(&*store).await;
    racing_grants_keep_every_scope(store.clone()).await;
    a_revoked_consent_is_forgotten_and_others_stay(&*store).await;
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
        auth_time: issued_at.minus(Duration::from_secs(300)),
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
        assert_eq!(
            store.find_code(&issued.hash).await.unwrap().as_ref(),
            Some(&issued),
            "found as issued, and finding it changes nothing"
        );
        let session = PublicId::generate("ses_", &random);
        let answer = store.redeem_code(&issued.hash, &session).await.unwrap();
        let mut expected = issued.clone();
        expected.redeemed_for = Some(session);
        assert_eq!(answer, Redemption::First(expected.clone()));
        assert_eq!(
            store.find_code(&issued.hash).await.unwrap(),
            Some(expected),
            "found redeemed, for the first redemption's session"
        );
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
    assert_eq!(store.find_code(&never.hash).await.unwrap(), None);
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
    let long_ago = t0().minus(Duration::from_secs(30 * 86_400));
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

fn refresh(random: &dyn RandomSource, family: &PublicId, issued_at: Timestamp) -> RefreshToken {
    let mut hash = [0u8; 32];
    random.fill(&mut hash);
    RefreshToken {
        hash: TokenHash(hash),
        family: family.clone(),
        client: PublicId::generate("app_", random),
        subject: PublicId::generate("usr_", random).as_str().to_owned(),
        scopes: vec!["openid".into(), "offline_access".into(), "profile".into()],
        issued_at,
        expires_at: issued_at.plus(Duration::from_secs(86_400)),
        rotated: None,
    }
}

fn successor_of(random: &dyn RandomSource, old: &RefreshToken, at: Timestamp) -> RefreshToken {
    let mut next = refresh(random, &old.family, at);
    next.client = old.client.clone();
    next.subject = old.subject.clone();
    next.scopes = old.scopes.clone();
    next.expires_at = old.expires_at;
    next
}

async fn a_refresh_token_reads_back_exactly_as_issued(store: &dyn RefreshTokenStore) {
    let random = SeededRandom::new(11);
    let family = PublicId::generate("ses_", &random);
    let issued = refresh(&random, &family, t0());
    let mut bare = refresh(&random, &family, t0());
    bare.scopes.clear();
    for token in [issued, bare] {
        store.add_refresh_token(token.clone()).await.unwrap();
        assert_eq!(store.refresh_token(&token.hash).await.unwrap(), Some(token));
    }
    let mut never = [0u8; 32];
    random.fill(&mut never);
    assert_eq!(store.refresh_token(&TokenHash(never)).await.unwrap(), None);
}

/// Stores may go straight to the family the caller names (Redis keeps each family on one slot):
/// a successor of another family finds no token, and nothing changes.
async fn a_token_rotates_only_within_its_own_family(store: &dyn RefreshTokenStore) {
    let random = SeededRandom::new(19);
    let family = PublicId::generate("ses_", &random);
    let token = refresh(&random, &family, t0());
    store.add_refresh_token(token.clone()).await.unwrap();
    let mut elsewhere = successor_of(&random, &token, t0().plus(Duration::from_secs(1)));
    elsewhere.family = PublicId::generate("ses_", &random);
    assert_eq!(
        store
            .rotate_refresh_token(&token.hash, elsewhere.clone(), "sealed".into())
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        store.refresh_token(&token.hash).await.unwrap(),
        Some(token.clone()),
        "the token is not rotated"
    );
    assert_eq!(store.refresh_token(&elsewhere.hash).await.unwrap(), None);
    let next = successor_of(&random, &token, t0().plus(Duration::from_secs(2)));
    assert_eq!(
        store
            .rotate_refresh_token(&token.hash, next, "sealed".into())
            .await
            .unwrap(),
        Rotation::Rotated(token),
        "its own family's successor still rotates it"
    );
}

async fn rfc9700_4_14_2_a_rotated_token_is_kept_with_its_sealed_successor(
    store: &dyn RefreshTokenStore,
) {
    let random = SeededRandom::new(12);
    let family = PublicId::generate("ses_", &random);
    let first = refresh(&random, &family, t0());
    store.add_refresh_token(first.clone()).await.unwrap();
    let at = t0().plus(Duration::from_secs(30));
    let second = successor_of(&random, &first, at);
    let sealed = "v1.k1.sealed-successor".to_owned();
    assert_eq!(
        store
            .rotate_refresh_token(&first.hash, second.clone(), sealed.clone())
            .await
            .unwrap(),
        Rotation::Rotated(first.clone()),
        "the first rotation answers the token as it was"
    );
    let mut rotated = first.clone();
    rotated.rotated = Some(Rotated {
        at,
        successor: second.hash,
        sealed_successor: sealed,
    });
    assert_eq!(
        store.refresh_token(&first.hash).await.unwrap(),
        Some(rotated.clone())
    );
    assert_eq!(
        store.refresh_token(&second.hash).await.unwrap(),
        Some(second.clone())
    );

    let intruder = successor_of(&random, &first, at.plus(Duration::from_secs(1)));
    assert_eq!(
        store
            .rotate_refresh_token(&first.hash, intruder.clone(), "other".into())
            .await
            .unwrap(),
        Rotation::AlreadyRotated(rotated),
        "a second use names the successor already issued"
    );
    assert_eq!(
        store.refresh_token(&intruder.hash).await.unwrap(),
        None,
        "the refused successor is not stored"
    );
    let mut never = [0u8; 32];
    random.fill(&mut never);
    assert_eq!(
        store
            .rotate_refresh_token(&TokenHash(never), intruder, "x".into())
            .await
            .unwrap(),
        Rotation::Unknown
    );
}

async fn rfc9700_4_14_2_of_racing_rotations_exactly_one_stores_its_successor(
    store: Arc<dyn RefreshTokenStore>,
) {
    let random = SeededRandom::new(13);
    for _ in 0..5 {
        let family = PublicId::generate("ses_", &random);
        let first = refresh(&random, &family, t0());
        store.add_refresh_token(first.clone()).await.unwrap();
        let racers: Vec<_> = (0..8)
            .map(|n| {
                let store = store.clone();
                let hash = first.hash;
                let next = successor_of(&random, &first, t0().plus(Duration::from_secs(n)));
                tokio::spawn(async move {
                    let answer = store
                        .rotate_refresh_token(&hash, next.clone(), format!("sealed-{n}"))
                        .await
                        .unwrap();
                    (answer, next.hash)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut named = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                (Rotation::Rotated(_), successor) => winners.push(successor),
                (Rotation::AlreadyRotated(old), _) => {
                    named.push(old.rotated.expect("marked rotated").successor)
                }
                (Rotation::Unknown, _) => panic!("the token exists"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one rotation wins");
        assert!(
            named.iter().all(|s| *s == winners[0]),
            "every loser is told the winner's successor"
        );
        let kept = store.refresh_token(&first.hash).await.unwrap().unwrap();
        assert_eq!(kept.rotated.unwrap().successor, winners[0]);
        assert!(store.refresh_token(&winners[0]).await.unwrap().is_some());
    }
}

async fn an_ended_family_forgets_every_token_and_no_other(store: &dyn RefreshTokenStore) {
    let random = SeededRandom::new(14);
    let family = PublicId::generate("ses_", &random);
    let other_family = PublicId::generate("ses_", &random);
    let first = refresh(&random, &family, t0());
    let second = successor_of(&random, &first, t0().plus(Duration::from_secs(5)));
    let bystander = refresh(&random, &other_family, t0());
    store.add_refresh_token(first.clone()).await.unwrap();
    store.add_refresh_token(bystander.clone()).await.unwrap();
    store
        .rotate_refresh_token(&first.hash, second.clone(), "s".into())
        .await
        .unwrap();
    assert_eq!(store.end_refresh_family(&family).await.unwrap(), 2);
    assert_eq!(store.refresh_token(&first.hash).await.unwrap(), None);
    assert_eq!(store.refresh_token(&second.hash).await.unwrap(), None);
    assert_eq!(
        store.refresh_token(&bystander.hash).await.unwrap(),
        Some(bystander)
    );
    assert_eq!(
        store.end_refresh_family(&family).await.unwrap(),
        0,
        "ending twice ends nothing more"
    );
}

async fn expired_refresh_tokens_are_forgotten(store: &dyn RefreshTokenStore, expiry: CodeExpiry) {
    let random = SeededRandom::new(15);
    // A stretch of time of its own, before every other case's tokens.
    let long_ago = t0().minus(Duration::from_secs(60 * 86_400));
    let family = PublicId::generate("ses_", &random);
    let mut old = refresh(&random, &family, long_ago);
    old.expires_at = long_ago.plus(Duration::from_secs(600));
    let mut newer = refresh(&random, &family, long_ago);
    newer.expires_at = long_ago.plus(Duration::from_secs(7200));
    store.add_refresh_token(old.clone()).await.unwrap();
    store.add_refresh_token(newer.clone()).await.unwrap();
    let gone = store
        .forget_refresh_tokens(long_ago.plus(Duration::from_secs(3600)))
        .await
        .unwrap();
    match expiry {
        CodeExpiry::Swept => {
            assert_eq!(gone, 1, "only the token that expired before the cutoff");
            assert_eq!(store.refresh_token(&old.hash).await.unwrap(), None);
        }
        CodeExpiry::ByBackend => assert_eq!(gone, 0),
    }
    assert_eq!(store.refresh_token(&newer.hash).await.unwrap(), Some(newer));
}

fn scopes(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

async fn consents_add_up_and_read_back_per_client(store: &dyn ConsentStore) {
    let random = SeededRandom::new(16);
    let subject = PublicId::generate("usr_", &random).as_str().to_owned();
    let client = PublicId::generate("app_", &random);
    let other_client = PublicId::generate("app_", &random);
    assert_eq!(store.consent(&subject, &client).await.unwrap(), None);
    assert!(store.consents_of(&subject).await.unwrap().is_empty());

    let first = Consent {
        subject: subject.clone(),
        client: client.clone(),
        scopes: scopes(&["openid", "profile"]),
        granted_at: t0(),
    };
    assert_eq!(store.grant_consent(first.clone()).await.unwrap(), first);
    let later = t0().plus(Duration::from_secs(60));
    let more = Consent {
        scopes: scopes(&["openid", "email"]),
        granted_at: later,
        ..first.clone()
    };
    let whole = Consent {
        scopes: scopes(&["email", "openid", "profile"]),
        granted_at: later,
        ..first.clone()
    };
    assert_eq!(
        store.grant_consent(more).await.unwrap(),
        whole,
        "a grant adds to what was granted"
    );
    assert_eq!(
        store.consent(&subject, &client).await.unwrap(),
        Some(whole.clone())
    );
    let elsewhere = Consent {
        client: other_client.clone(),
        scopes: scopes(&["openid"]),
        ..first.clone()
    };
    store.grant_consent(elsewhere.clone()).await.unwrap();
    let mut expected = vec![whole, elsewhere];
    expected.sort_by(|a, b| a.client.as_str().cmp(b.client.as_str()));
    assert_eq!(store.consents_of(&subject).await.unwrap(), expected);
    let stranger = PublicId::generate("usr_", &random).as_str().to_owned();
    assert_eq!(store.consent(&stranger, &client).await.unwrap(), None);
}

async fn racing_grants_keep_every_scope(store: Arc<dyn ConsentStore>) {
    let random = SeededRandom::new(17);
    let subject = PublicId::generate("usr_", &random).as_str().to_owned();
    let client = PublicId::generate("app_", &random);
    let asked = ["openid", "profile", "email", "offline_access"];
    let racers: Vec<_> = asked
        .iter()
        .map(|scope| {
            let store = store.clone();
            let consent = Consent {
                subject: subject.clone(),
                client: client.clone(),
                scopes: scopes(&[scope]),
                granted_at: t0(),
            };
            tokio::spawn(async move { store.grant_consent(consent).await.unwrap() })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    let kept = store.consent(&subject, &client).await.unwrap().unwrap();
    assert_eq!(kept.scopes, scopes(&asked), "no grant lost to another");
}

async fn a_revoked_consent_is_forgotten_and_others_stay(store: &dyn ConsentStore) {
    let random = SeededRandom::new(18);
    let subject = PublicId::generate("usr_", &random).as_str().to_owned();
    let client = PublicId::generate("app_", &random);
    let kept_client = PublicId::generate("app_", &random);
    for c in [&client, &kept_client] {
        store
            .grant_consent(Consent {
                subject: subject.clone(),
                client: c.clone(),
                scopes: scopes(&["openid"]),
                granted_at: t0(),
            })
            .await
            .unwrap();
    }
    assert!(store.revoke_consent(&subject, &client).await.unwrap());
    assert!(!store.revoke_consent(&subject, &client).await.unwrap());
    assert_eq!(store.consent(&subject, &client).await.unwrap(), None);
    let left = store.consents_of(&subject).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].client, kept_client);
}

/// Runs every one-time-identifier case on `store` (OpenID Connect Core §9: a client assertion
/// is used once).
pub async fn replay_store_contract(store: Arc<dyn ReplayStore>, expiry: CodeExpiry) {
    let random = SeededRandom::new(40);
    let id = |random: &SeededRandom| {
        let mut bytes = [0u8; 32];
        random.fill(&mut bytes);
        TokenHash(bytes)
    };
    let now = t0();
    let until = now.plus(Duration::from_secs(300));
    let first = id(&random);
    assert!(
        store.first_use(&first, now, until).await.unwrap(),
        "its first use"
    );
    assert!(
        !store.first_use(&first, now, until).await.unwrap(),
        "used again: refused"
    );
    assert!(
        store.first_use(&id(&random), now, until).await.unwrap(),
        "another one is new"
    );

    // Racing first uses on any nodes: exactly one wins.
    for _ in 0..5 {
        let raced = id(&random);
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.first_use(&raced, now, until).await.unwrap() })
            })
            .collect();
        let mut firsts = 0;
        for racer in racers {
            firsts += usize::from(racer.await.unwrap());
        }
        assert_eq!(firsts, 1, "exactly one racer uses it first");
    }

    // Forgotten once its time is over (a stretch before t0, so no other case's are).
    let long_ago = now.minus(Duration::from_secs(86_400));
    let old = id(&random);
    assert!(
        store
            .first_use(&old, long_ago, long_ago.plus(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let forgotten = store
        .forget_uses(long_ago.plus(Duration::from_secs(61)))
        .await
        .unwrap();
    match expiry {
        CodeExpiry::Swept => {
            assert_eq!(forgotten, 1);
            assert!(
                store.first_use(&old, now, until).await.unwrap(),
                "forgotten, so new again"
            );
        }
        CodeExpiry::ByBackend => assert_eq!(forgotten, 0),
    }
    assert!(
        !store.first_use(&first, now, until).await.unwrap(),
        "still remembered"
    );
}
