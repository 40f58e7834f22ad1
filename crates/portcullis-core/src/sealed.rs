//! Secrets kept encrypted at rest: a [`Keyring`] of named 256-bit keys seals a secret with
//! XChaCha20-Poly1305 under its current key, bound to what it belongs to (the associated data),
//! and opens what any of its keys sealed, so keys can be rotated: put the new key first and
//! keep the old ones until every secret sealed with them has been sealed again.
//!
//! A sealed value reads `sealed:v1:<key id>:<base64url(nonce ‖ ciphertext)>`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::random::RandomSource;

const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;

/// What opening a sealed secret can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The value names a key the keyring does not hold.
    #[error("the secret was sealed with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// The value is not a sealed secret or does not open with its key (tampered, or moved
    /// to another record).
    #[error("the sealed secret is corrupt or belongs elsewhere")]
    Corrupt,
}

/// What configuring keys can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyringError(String);

/// Named encryption keys; the first is the one new secrets are sealed with.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses keys written `<id>:<base64 of 32 bytes>`, current first. Ids are 1–32 letters,
    /// digits, `-` or `_`, and unique.
    pub fn parse<T: AsRef<str>>(entries: &[T]) -> Result<Self, KeyringError> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (id, encoded) = entry.split_once(':').ok_or_else(|| {
                KeyringError("an encryption key is written `<id>:<base64 of 32 bytes>`".into())
            })?;
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !id_ok {
                return Err(KeyringError(format!(
                    "encryption key id `{id}` must be 1–32 letters, digits, '-' or '_'"
                )));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .or_else(|_| URL_SAFE_NO_PAD.decode(encoded.trim()))
                .map_err(|_| KeyringError(format!("encryption key `{id}` is not base64")))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| {
                KeyringError(format!("encryption key `{id}` must be 32 bytes (256 bits)"))
            })?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeyringError(format!(
                    "encryption key `{id}` is given twice"
                )));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err(KeyringError("no encryption key is given".into()));
        }
        Ok(Self { keys })
    }

    /// A new random key written as [`Keyring::parse`] reads it.
    pub fn generate_entry(id: &str, random: &dyn RandomSource) -> String {
        let mut key = [0u8; 32];
        random.fill(&mut key);
        format!("{id}:{}", STANDARD.encode(key))
    }

    /// The id of the key new secrets are sealed with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `secret` for `belongs_to` with the current key.
    pub fn seal(&self, secret: &str, belongs_to: &str, random: &dyn RandomSource) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        random.fill(&mut nonce);
        let cipher = XChaCha20Poly1305::new(key.into());
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: belongs_to.as_bytes(),
                },
            )
            // Encryption fails only for messages of gigabytes.
            .expect("a short secret seals");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{PREFIX}{id}:{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Opens what [`Keyring::seal`] sealed for `belongs_to` with any key of the ring.
    pub fn open(&self, sealed: &str, belongs_to: &str) -> Result<String, SealError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SealError::Corrupt)?;
        let (id, encoded) = rest.split_once(':').ok_or(SealError::Corrupt)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::Corrupt)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Corrupt)?;
        let plain = XChaCha20Poly1305::new(key.into())
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: belongs_to.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SealError::Corrupt)
    }

    /// Whether `value` is sealed with a key other than the current one (or not sealed).
    pub fn needs_resealing(&self, value: &str) -> bool {
        sealed_key_id(value) != Some(self.current_id())
    }
}

/// The key id a sealed value names; `None` for a value that is not sealed (a secret stored
/// in clear by an earlier release).
pub fn sealed_key_id(value: &str) -> Option<&str> {
    value
        .strip_prefix(PREFIX)?
        .split_once(':')
        .map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    fn ring(entries: &[&str]) -> Keyring {
        Keyring::parse(entries).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_owner_and_names_its_key() {
        let random = SeededRandom::new(1);
        let k1 = Keyring::generate_entry("k1", &random);
        let keys = ring(&[&k1]);
        let sealed = keys.seal("JBSWY3DPEHPK3PXP", "usr_alice", &random);
        assert!(sealed.starts_with("sealed:v1:k1:"), "{sealed}");
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(keys.open(&sealed, "usr_alice").unwrap(), "JBSWY3DPEHPK3PXP");
        assert_eq!(keys.open(&sealed, "usr_bob"), Err(SealError::Corrupt));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(keys.open(&tampered, "usr_alice"), Err(SealError::Corrupt));
        assert_eq!(
            keys.open("JBSWY3DPEHPK3PXP", "usr_alice"),
            Err(SealError::Corrupt)
        );
    }

    #[test]
    fn keys_rotate_new_first_and_old_ones_still_open() {
        let random = SeededRandom::new(2);
        let k1 = Keyring::generate_entry("k1", &random);
        let k2 = Keyring::generate_entry("k2", &random);
        let old = ring(&[&k1]).seal("secret", "usr_a", &random);
        let rotated = ring(&[&k2, &k1]);
        assert_eq!(rotated.open(&old, "usr_a").unwrap(), "secret");
        assert!(rotated.needs_resealing(&old));
        let resealed = rotated.seal("secret", "usr_a", &random);
        assert!(!rotated.needs_resealing(&resealed));
        assert_eq!(
            ring(&[&k2]).open(&old, "usr_a"),
            Err(SealError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn bad_key_entries_are_refused_with_a_reason() {
        assert!(Keyring::parse::<&str>(&[]).is_err());
        assert!(Keyring::parse(&["nocolon"]).is_err());
        assert!(Keyring::parse(&["k1:c2hvcnQ="]).is_err(), "too short");
        let random = SeededRandom::new(3);
        let k1 = Keyring::generate_entry("k1", &random);
        assert!(Keyring::parse(&[k1.as_str(), k1.as_str()]).is_err());
        let bad_id = k1.replacen("k1", "k 1", 1);
        assert!(Keyring::parse(&[bad_id.as_str()]).is_err());
    }
}
