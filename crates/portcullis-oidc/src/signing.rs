//! The provider's signing keys at work. Keys are made here from the injected randomness,
//! named by their RFC 7638 thumbprint, and stored with the private half sealed by the
//! configured keyring, so every node signs with the same keys and a store dump reveals none.
//! [`ProviderKeys`] is one node's view: a signer per algorithm and every published key.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::EncodePrivateKey as _;
use portcullis_core::oidc::{SigningAlg, SigningKey, SigningKeyStore};
use portcullis_core::{Keyring, RandomSource, SealError, StoreError, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What working with signing keys can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored private key does not open with the configured keyring.
    #[error("signing key {kid}: {source}")]
    Sealed {
        /// The key.
        kid: String,
        /// Why it does not open.
        source: SealError,
    },
    /// A stored key that JOSE cannot use (a corrupt record).
    #[error("signing key {kid} is unusable: {source}")]
    Unusable {
        /// The key.
        kid: String,
        /// What JOSE said.
        source: jsonwebtoken::errors::Error,
    },
    /// A stored public key that is not a JWK (a corrupt record).
    #[error("signing key {kid} has no readable public key: {source}")]
    BadJwk {
        /// The key.
        kid: String,
        /// What JSON said.
        source: serde_json::Error,
    },
    /// No key of the algorithm signs (none made yet, or it was removed).
    #[error("no {0} signing key")]
    NoSigner(&'static str),
    /// Another node rotated the algorithm's key at the same time; its key signs now.
    #[error("another node rotated the {0} key first")]
    RotatedElsewhere(&'static str),
    /// A token that did not verify: malformed, unknown key, wrong type or bad signature.
    #[error("the token does not verify: {0}")]
    Invalid(&'static str),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The signer refused: `ring` says no more than that, and only when the system's random
    /// source fails.
    #[error("signing failed: the system's random source is unavailable")]
    Unsigned,
}

fn algorithm(alg: SigningAlg) -> Algorithm {
    match alg {
        SigningAlg::Es256 => Algorithm::ES256,
        SigningAlg::EdDsa => Algorithm::EdDSA,
        SigningAlg::Rs256 => Algorithm::RS256,
    }
}

/// The private key as JOSE reads it: PKCS#8 for EC and Ed25519, PKCS#1 for RSA.
fn encoding_key(alg: SigningAlg, der: &[u8]) -> EncodingKey {
    match alg {
        SigningAlg::Es256 => EncodingKey::from_ec_der(der),
        SigningAlg::EdDsa => EncodingKey::from_ed_der(der),
        SigningAlg::Rs256 => EncodingKey::from_rsa_der(der),
    }
}

/// The injected randomness as the RNG RSA key generation draws from.
struct Draw<'a>(&'a dyn RandomSource);

impl rand_core::RngCore for Draw<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.0.fill(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.0.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

// The source is the system's CSPRNG in production (a seeded one only in tests).
impl rand_core::CryptoRng for Draw<'_> {}

/// A new private key of `alg` as PKCS#8 DER, from the injected randomness.
fn private_key_der(alg: SigningAlg, random: &dyn RandomSource) -> Vec<u8> {
    let mut secret = [0u8; 32];
    match alg {
        SigningAlg::Es256 => loop {
            random.fill(&mut secret);
            // Fails only for zero or a value past the group order (about 2^-32 of draws).
            if let Ok(key) = p256::SecretKey::from_slice(&secret) {
                return key
                    .to_pkcs8_der()
                    .expect("a P-256 key encodes")
                    .as_bytes()
                    .to_vec();
            }
        },
        SigningAlg::EdDsa => {
            random.fill(&mut secret);
            // The one-key form (RFC 8410 without the public key) is what JOSE reads.
            ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: secret,
                public_key: None,
            }
            .to_pkcs8_der()
            .expect("an Ed25519 key encodes")
            .as_bytes()
            .to_vec()
        }
        SigningAlg::Rs256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey as _;
            rsa::RsaPrivateKey::new(&mut Draw(random), 2048)
                .expect("a 2048-bit RSA key can be made")
                .to_pkcs1_der()
                .expect("an RSA key encodes")
                .as_bytes()
                .to_vec()
        }
    }
}

/// `value` as a JWS segment: its JSON, base64url without padding.
fn segment<T: Serialize + ?Sized>(value: &T) -> Result<String, KeyError> {
    serde_json::to_vec(value)
        .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
        .map_err(|err| KeyError::Signing(err.into()))
}

/// Makes a signing key of `alg`, created at `now`: its public JWK (with `kid`, `use`, `alg`),
/// its `kid` the RFC 7638 SHA-256 thumbprint, its private half sealed by `keyring` under the
/// `kid`.
pub fn generate_signing_key(
    alg: SigningAlg,
    keyring: &Keyring,
    random: &dyn RandomSource,
    now: Timestamp,
) -> SigningKey {
    let der = private_key_der(alg, random);
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, &der), algorithm(alg))
        .expect("a key made here has a public half");
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .expect("RSA, EC and OKP keys have thumbprints");
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    SigningKey {
        sealed_private: keyring.seal(&STANDARD.encode(&der), &kid, random),
        public_jwk: serde_json::to_string(&jwk).expect("a JWK serializes"),
        kid,
        alg,
        created_at: now,
        retired_at: None,
    }
}

struct Signer {
    kid: String,
    key: PrivateKey,
}

/// A private key parsed once, when the keys are loaded: `jsonwebtoken`'s RustCrypto backend
/// parses the DER again for every token, which for P-256 is a full scalar multiplication and
/// was two thirds of a refresh grant's cost (bench/oidc_analysis.md). ES256 and RS256 sign with
/// `ring` (already in the build for TLS): its P-256 signature costs about a seventh of the
/// pure-Rust one's. Its ECDSA nonces are hedged: a digest of the key, the message and fresh
/// randomness, so a failing random source cannot repeat a nonce for two messages, which is
/// what JWTBCP-2's deterministic signing guards against, and a fault cannot be replayed as
/// it can against a purely deterministic nonce.
enum PrivateKey {
    Es256(ring::signature::EcdsaKeyPair),
    EdDsa(ed25519_dalek::SigningKey),
    Rs256(ring::signature::RsaKeyPair),
}

impl PrivateKey {
    /// The key of `alg` in `der` (PKCS#8 for EC and Ed25519, PKCS#1 for RSA).
    fn parse(alg: SigningAlg, der: &[u8]) -> Option<Self> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RsaKeyPair};
        match alg {
            SigningAlg::Es256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
                &ring::rand::SystemRandom::new(),
            )
            .ok()
            .map(Self::Es256),
            SigningAlg::EdDsa => ed25519_dalek::SigningKey::from_pkcs8_der(der)
                .ok()
                .map(Self::EdDsa),
            SigningAlg::Rs256 => RsaKeyPair::from_der(der).ok().map(Self::Rs256),
        }
    }

    /// The JWS signature of `message`: `r‖s` for ES256, as RFC 7518 §3.4 wants.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        use ed25519_dalek::Signer as _;
        let failed = |_: ring::error::Unspecified| KeyError::Unsigned;
        let random = ring::rand::SystemRandom::new();
        match self {
            Self::Es256(key) => key
                .sign(&random, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(failed),
            Self::EdDsa(key) => Ok(key.sign(message).to_bytes().to_vec()),
            Self::Rs256(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &random,
                    message,
                    &mut signature,
                )
                .map_err(failed)?;
                Ok(signature)
            }
        }
    }
}

struct Verifier {
    alg: Algorithm,
    key: DecodingKey,
}

/// One node's view of the provider's keys: the signing key of each algorithm and every
/// published key (retired ones verify until they are removed).
pub struct ProviderKeys {
    signers: BTreeMap<SigningAlg, Signer>,
    verifiers: BTreeMap<String, Verifier>,
    jwks: String,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let signing: Vec<_> = self.signers.values().map(|s| s.kid.as_str()).collect();
        let published: Vec<_> = self.verifiers.keys().collect();
        f.debug_struct("ProviderKeys")
            .field("signing", &signing)
            .field("published", &published)
            .finish()
    }
}

impl ProviderKeys {
    /// Opens the stored keys with `keyring`.
    pub fn load(keys: &[SigningKey], keyring: &Keyring) -> Result<Self, KeyError> {
        let mut signers = BTreeMap::new();
        let mut verifiers = BTreeMap::new();
        let mut published = JwkSet::default();
        for stored in keys {
            let unusable = |source| KeyError::Unusable {
                kid: stored.kid.clone(),
                source,
            };
            let jwk: Jwk =
                serde_json::from_str(&stored.public_jwk).map_err(|source| KeyError::BadJwk {
                    kid: stored.kid.clone(),
                    source,
                })?;
            let key = DecodingKey::from_jwk(&jwk).map_err(unusable)?;
            verifiers.insert(
                stored.kid.clone(),
                Verifier {
                    alg: algorithm(stored.alg),
                    key,
                },
            );
            published.keys.push(jwk);
            if stored.retired_at.is_none() {
                let encoded =
                    keyring
                        .open(&stored.sealed_private, &stored.kid)
                        .map_err(|source| KeyError::Sealed {
                            kid: stored.kid.clone(),
                            source,
                        })?;
                let der = STANDARD.decode(encoded).map_err(|_| KeyError::Sealed {
                    kid: stored.kid.clone(),
                    source: SealError::Corrupt,
                })?;
                let key = PrivateKey::parse(stored.alg, &der).ok_or_else(|| KeyError::Sealed {
                    kid: stored.kid.clone(),
                    source: SealError::Corrupt,
                })?;
                signers.insert(
                    stored.alg,
                    Signer {
                        kid: stored.kid.clone(),
                        key,
                    },
                );
            }
        }
        Ok(Self {
            signers,
            verifiers,
            jwks: serde_json::to_string(&published).expect("a JWK Set serializes"),
        })
    }

    /// The algorithms a token can be signed with, for discovery.
    pub fn algorithms(&self) -> Vec<SigningAlg> {
        self.signers.keys().copied().collect()
    }

    /// The `kid` of the key signing with `alg`.
    pub fn signing_kid(&self, alg: SigningAlg) -> Option<&str> {
        self.signers.get(&alg).map(|s| s.kid.as_str())
    }

    /// The published JWK Set (JSON), signing and retired keys alike.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Signs `claims` with the key of `alg`, the header naming its `kid` and `typ`.
    pub fn sign<T: Serialize>(
        &self,
        alg: SigningAlg,
        typ: &str,
        claims: &T,
    ) -> Result<String, KeyError> {
        let signer = self
            .signers
            .get(&alg)
            .ok_or(KeyError::NoSigner(alg.as_str()))?;
        let mut header = Header::new(algorithm(alg));
        header.typ = Some(typ.to_owned());
        header.kid = Some(signer.kid.clone());
        let signing_input = format!("{}.{}", segment(&header)?, segment(claims)?);
        let signature = signer.key.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// Checks that `token` was signed by one of these keys with the key's own algorithm and
    /// has header type `typ`, and reads its claims. Time and audience are the caller's to check
    /// (against the injected clock).
    pub fn verify<T: DeserializeOwned>(&self, token: &str, typ: &str) -> Result<T, KeyError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| KeyError::Invalid("malformed"))?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(typ))
        {
            return Err(KeyError::Invalid("wrong token type"));
        }
        let kid = header.kid.ok_or(KeyError::Invalid("no key id"))?;
        let verifier = self
            .verifiers
            .get(&kid)
            .ok_or(KeyError::Invalid("unknown key"))?;
        if header.alg != verifier.alg {
            return Err(KeyError::Invalid("algorithm does not match the key"));
        }
        let mut validation = Validation::new(verifier.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<T>(token, &verifier.key, &validation)
            .map(|data| data.claims)
            .map_err(|_| KeyError::Invalid("bad signature or claims"))
    }
}

/// Makes a signing key for each algorithm in `algs` that has none, and answers every stored
/// key. Nodes starting together each try; the store's compare-and-set keeps one key per
/// algorithm.
pub async fn ensure_signing_keys(
    store: &dyn SigningKeyStore,
    algs: &[SigningAlg],
    keyring: &Keyring,
    random: &dyn RandomSource,
    now: Timestamp,
) -> Result<Vec<SigningKey>, KeyError> {
    let keys = store.signing_keys().await?;
    for alg in algs {
        if !keys.iter().any(|k| k.alg == *alg && k.retired_at.is_none()) {
            store
                .add_signing_key(generate_signing_key(*alg, keyring, random, now), None)
                .await?;
        }
    }
    Ok(store.signing_keys().await?)
}

/// Replaces the signing key of `alg` by a new one; the old one stays published, retired.
pub async fn rotate_signing_key(
    store: &dyn SigningKeyStore,
    alg: SigningAlg,
    keyring: &Keyring,
    random: &dyn RandomSource,
    now: Timestamp,
) -> Result<SigningKey, KeyError> {
    let keys = store.signing_keys().await?;
    let current = keys
        .iter()
        .find(|k| k.alg == alg && k.retired_at.is_none())
        .map(|k| k.kid.as_str());
    let key = generate_signing_key(alg, keyring, random, now);
    if store.add_signing_key(key.clone(), current).await? {
        Ok(key)
    } else {
        Err(KeyError::RotatedElsewhere(alg.as_str()))
    }
}

/// Removes keys retired for longer than `published_for` (the longest lifetime of a token they
/// signed); answers their ids.
pub async fn remove_retired_keys(
    store: &dyn SigningKeyStore,
    now: Timestamp,
    published_for: Duration,
) -> Result<Vec<String>, KeyError> {
    let mut removed = Vec::new();
    for key in store.signing_keys().await? {
        if key
            .retired_at
            .is_some_and(|at| at.plus(published_for) < now)
            && store.remove_signing_key(&key.kid).await?
        {
            removed.push(key.kid);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Verifier as _;
    use portcullis_core::SeededRandom;
    use portcullis_core::oidc::MemorySigningKeyStore;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    fn keyring() -> Keyring {
        Keyring::parse(&[Keyring::generate_entry("k1", &SeededRandom::new(99))]).unwrap()
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_millis(0).plus(Duration::from_secs(1_800_000_000 + secs))
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    #[test]
    fn rfc7638_key_ids_are_thumbprints_and_private_halves_are_sealed() {
        let random = SeededRandom::new(1);
        let ring = keyring();
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Rs256] {
            let key = generate_signing_key(alg, &ring, &random, at(0));
            let jwk: Value = serde_json::from_str(&key.public_jwk).unwrap();
            // RFC 7638 §3.2: the required members in lexicographic order, no whitespace.
            let canonical = match alg {
                SigningAlg::Es256 => format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    jwk["x"].as_str().unwrap(),
                    jwk["y"].as_str().unwrap()
                ),
                SigningAlg::EdDsa => format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    jwk["x"].as_str().unwrap()
                ),
                SigningAlg::Rs256 => format!(
                    r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                    jwk["e"].as_str().unwrap(),
                    jwk["n"].as_str().unwrap()
                ),
            };
            assert_eq!(
                key.kid,
                URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
            );
            assert_eq!(jwk["kid"], key.kid.as_str());
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["alg"], alg.as_str());
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private).is_none(), "no private part is published");
            }
            assert!(key.sealed_private.starts_with("sealed:v1:k1:"));
            let der = STANDARD
                .decode(ring.open(&key.sealed_private, &key.kid).unwrap())
                .unwrap();
            assert!(
                !key.sealed_private
                    .contains(&URL_SAFE_NO_PAD.encode(&der[der.len() - 32..])),
                "the secret scalar is not stored in clear"
            );
            assert!(
                ring.open(&key.sealed_private, "another-kid").is_err(),
                "sealed for its own kid only"
            );
        }
    }

    #[test]
    fn jwtbcp_2_es256_tokens_verify_with_an_independent_p256_verifier() {
        let random = SeededRandom::new(2);
        let ring = keyring();
        let stored = generate_signing_key(SigningAlg::Es256, &ring, &random, at(0));
        let keys = ProviderKeys::load(std::slice::from_ref(&stored), &ring).unwrap();
        let token = keys
            .sign(SigningAlg::Es256, "JWT", &json!({"sub": "usr_1"}))
            .unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let header: Value =
            serde_json::from_slice(&b64(signed.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], stored.kid.as_str());
        assert_eq!(header["typ"], "JWT");

        let jwk: Value = serde_json::from_str(&stored.public_jwk).unwrap();
        let mut point = vec![4u8];
        point.extend(b64(jwk["x"].as_str().unwrap()));
        point.extend(b64(jwk["y"].as_str().unwrap()));
        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&b64(signature)).unwrap();
        verifying
            .verify(signed.as_bytes(), &signature)
            .expect("JWS ES256 is r‖s over header.payload");

        // JWTBCP-2: nonces are hedged (key, message and fresh randomness), so the same claims
        // signed twice carry two signatures, and both verify.
        let again = keys
            .sign(SigningAlg::Es256, "JWT", &json!({"sub": "usr_1"}))
            .unwrap();
        let (signed_again, signature_again) = again.rsplit_once('.').unwrap();
        assert_eq!(signed_again, signed);
        let signature_again = p256::ecdsa::Signature::from_slice(&b64(signature_again)).unwrap();
        assert_ne!(signature_again, signature, "a fresh nonce per signature");
        verifying
            .verify(signed.as_bytes(), &signature_again)
            .expect("the second signature verifies too");
    }

    #[test]
    fn rs256_keys_are_2048_bit_and_tokens_verify_with_an_independent_rsa_verifier() {
        use rsa::signature::Verifier as _;
        let random = SeededRandom::new(4);
        let ring = keyring();
        let stored = generate_signing_key(SigningAlg::Rs256, &ring, &random, at(0));
        let jwk: Value = serde_json::from_str(&stored.public_jwk).unwrap();
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        let modulus = rsa::BigUint::from_bytes_be(&b64(jwk["n"].as_str().unwrap()));
        assert_eq!(modulus.bits(), 2048);
        let exponent = rsa::BigUint::from_bytes_be(&b64(jwk["e"].as_str().unwrap()));

        let keys = ProviderKeys::load(std::slice::from_ref(&stored), &ring).unwrap();
        let claims = json!({"sub": "usr_1"});
        let token = keys.sign(SigningAlg::Rs256, "JWT", &claims).unwrap();
        assert_eq!(keys.verify::<Value>(&token, "JWT").unwrap(), claims);
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let public = rsa::RsaPublicKey::new(modulus, exponent).unwrap();
        let verifying = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public);
        let signature = rsa::pkcs1v15::Signature::try_from(b64(signature).as_slice()).unwrap();
        verifying
            .verify(signed.as_bytes(), &signature)
            .expect("JWS RS256 is RSASSA-PKCS1-v1_5 with SHA-256 over header.payload");
    }

    #[test]
    fn verification_refuses_other_types_keys_algorithms_and_tampering() {
        let random = SeededRandom::new(3);
        let ring = keyring();
        let es = generate_signing_key(SigningAlg::Es256, &ring, &random, at(0));
        let ed = generate_signing_key(SigningAlg::EdDsa, &ring, &random, at(0));
        let keys = ProviderKeys::load(&[es.clone(), ed], &ring).unwrap();
        let claims = json!({"sub": "usr_1", "n": 1});
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let token = keys.sign(alg, "at+jwt", &claims).unwrap();
            assert_eq!(keys.verify::<Value>(&token, "at+jwt").unwrap(), claims);
            assert!(matches!(
                keys.verify::<Value>(&token, "logout+jwt"),
                Err(KeyError::Invalid("wrong token type"))
            ));
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"usr_2","n":1}"#);
            assert!(keys.verify::<Value>(&parts.join("."), "at+jwt").is_err());
        }

        let other_ring = keyring();
        let stranger = generate_signing_key(SigningAlg::Es256, &other_ring, &random, at(0));
        let strangers = ProviderKeys::load(&[stranger], &other_ring).unwrap();
        let foreign = strangers.sign(SigningAlg::Es256, "JWT", &claims).unwrap();
        assert!(matches!(
            keys.verify::<Value>(&foreign, "JWT"),
            Err(KeyError::Invalid("unknown key"))
        ));

        // An HMAC token keyed with the public key, naming our kid: the classic confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        header.kid = Some(es.kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(es.public_jwk.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            keys.verify::<Value>(&forged, "JWT"),
            Err(KeyError::Invalid("algorithm does not match the key"))
        ));
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
                es.kid
            )),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(keys.verify::<Value>(&unsigned, "JWT").is_err());
    }

    #[tokio::test]
    async fn keys_are_made_once_rotated_and_retired_keys_published_until_removed() {
        let random = SeededRandom::new(4);
        let ring = keyring();
        let store = MemorySigningKeyStore::new();
        let made = ensure_signing_keys(
            &store,
            &[SigningAlg::Es256, SigningAlg::EdDsa],
            &ring,
            &random,
            at(0),
        )
        .await
        .unwrap();
        assert_eq!(made.len(), 2);
        let again = ensure_signing_keys(&store, &[SigningAlg::Es256], &ring, &random, at(5))
            .await
            .unwrap();
        assert_eq!(again, made, "a second start makes nothing");

        let before = ProviderKeys::load(&made, &ring).unwrap();
        let old_token = before
            .sign(SigningAlg::Es256, "JWT", &json!({"sub": "a"}))
            .unwrap();
        let new = rotate_signing_key(&store, SigningAlg::Es256, &ring, &random, at(100))
            .await
            .unwrap();
        let after = ProviderKeys::load(&store.signing_keys().await.unwrap(), &ring).unwrap();
        assert_eq!(after.signing_kid(SigningAlg::Es256), Some(new.kid.as_str()));
        assert!(
            after.verify::<Value>(&old_token, "JWT").is_ok(),
            "a retired key still verifies what it signed"
        );
        let published: Value = serde_json::from_str(after.jwks()).unwrap();
        assert_eq!(published["keys"].as_array().unwrap().len(), 3);

        let lifetime = Duration::from_secs(3600);
        assert!(
            remove_retired_keys(&store, at(100 + 3600), lifetime)
                .await
                .unwrap()
                .is_empty(),
            "kept while a token it signed can still be alive"
        );
        let removed = remove_retired_keys(&store, at(100 + 3601), lifetime)
            .await
            .unwrap();
        let old_kid = before.signing_kid(SigningAlg::Es256).unwrap().to_owned();
        assert_eq!(removed, vec![old_kid]);
        let last = ProviderKeys::load(&store.signing_keys().await.unwrap(), &ring).unwrap();
        assert!(matches!(
            last.verify::<Value>(&old_token, "JWT"),
            Err(KeyError::Invalid("unknown key"))
        ));
        assert_eq!(
            last.algorithms(),
            vec![SigningAlg::Es256, SigningAlg::EdDsa]
        );
    }

    #[test]
    fn a_key_sealed_under_an_unconfigured_key_is_a_clear_error() {
        let random = SeededRandom::new(5);
        let stored = generate_signing_key(SigningAlg::Es256, &keyring(), &random, at(0));
        let elsewhere =
            Keyring::parse(&[Keyring::generate_entry("k2", &SeededRandom::new(7))]).unwrap();
        let err = ProviderKeys::load(&[stored], &elsewhere).unwrap_err();
        assert!(
            matches!(err, KeyError::Sealed { source: SealError::UnknownKey(ref id), .. } if id == "k1"),
            "{err}"
        );
    }
}
