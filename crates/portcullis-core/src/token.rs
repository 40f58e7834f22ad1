//! Secrets and identifiers: bearer tokens (shown once, stored only as SHA-256) and public ids.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::random::RandomSource;

/// The kinds of bearer secret Portcullis issues, each with a prefix secret scanners can recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A session token (`pcs_`).
    Session,
    /// An API key for backend callers (`pck_`).
    ApiKey,
}

impl TokenKind {
    /// The recognisable prefix of this kind.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Session => "pcs_",
            Self::ApiKey => "pck_",
        }
    }
}

/// Random bytes in a token: 256 bits (DESIGN §4.1, ASVS5-7.2.3 asks for at least 128).
pub const TOKEN_BYTES: usize = 32;
const ENCODED_LEN: usize = 43;

/// A bearer secret in its wire form (`pcs_…`). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Issues a new token of `kind` from `random`.
    pub fn generate(kind: TokenKind, random: &dyn RandomSource) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        random.fill(&mut bytes);
        let mut text = String::with_capacity(kind.prefix().len() + ENCODED_LEN);
        text.push_str(kind.prefix());
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        Self(text)
    }

    /// Issues a new token whose hash starts with `route`, so a store that shards by subject
    /// finds the session's shard from the token hash alone (see [`subject_route`]). The token
    /// keeps its full shape; 248 of its bits remain unpredictable.
    pub fn generate_routed(kind: TokenKind, random: &dyn RandomSource, route: u8) -> Self {
        loop {
            let token = Self::generate(kind, random);
            if token.hash().0[0] == route {
                return token;
            }
        }
    }

    /// Checks the shape of an untrusted token (prefix, length, alphabet) without trusting it.
    pub fn parse(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        let body = text.strip_prefix(kind.prefix()).ok_or(MalformedToken)?;
        let well_formed = body.len() == ENCODED_LEN
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(MalformedToken)
        }
    }

    /// The secret itself, for handing to its owner exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token: what stores keep and look up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = &self.0[..self.0.len().min(4)];
        write!(f, "Token({prefix}…redacted)")
    }
}

/// A token that is not of the expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token is malformed")]
pub struct MalformedToken;

/// SHA-256 of a token. A dump of a store holds only these, which let nobody in.
#[derive(Clone, Copy, Eq, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl TokenHash {
    /// Lower-case hex, the form stores use as a key.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// Parses the hex form written by [`TokenHash::to_hex`].
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).ok_or_else(|| serde::de::Error::custom("bad token hash"))
    }
}

/// A public, non-secret identifier (`ses_…` for sessions, `key_…` for API keys, `elv_…` for
/// elevations): safe to list, log and use as the OIDC `sid`; it lets nobody in.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PublicId(String);

impl PublicId {
    /// A new random id with `prefix` (128 bits, so ids never collide in practice).
    pub fn generate(prefix: &str, random: &dyn RandomSource) -> Self {
        let mut bytes = [0u8; 16];
        random.fill(&mut bytes);
        let mut text = String::with_capacity(prefix.len() + 22);
        text.push_str(prefix);
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        Self(text)
    }

    /// A new random id carrying `route` as two hex digits after the prefix (`ses_a3…`).
    pub fn generate_routed(prefix: &str, route: u8, random: &dyn RandomSource) -> Self {
        Self::generate(&format!("{prefix}{route:02x}"), random)
    }

    /// The route of an id made by [`PublicId::generate_routed`] with a prefix of `prefix_len` bytes.
    pub fn route(&self, prefix_len: usize) -> Option<u8> {
        let hex = self.0.get(prefix_len..prefix_len + 2)?;
        u8::from_str_radix(hex, 16).ok()
    }

    /// Wraps an id received from outside (it is only ever used as a lookup key).
    pub fn from_string(text: String) -> Self {
        Self(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public id of a session.
pub type SessionId = PublicId;

/// The shard (0–255) a subject's sessions live in, for stores that keep one subject's data
/// together (Redis Cluster hash tags). Derived from the subject so every node agrees.
pub fn subject_route(subject: &str) -> u8 {
    let mut hasher = Sha256::new();
    hasher.update(b"portcullis-route\0");
    hasher.update(subject.as_bytes());
    hasher.finalize()[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{OsRandom, SeededRandom};
    use std::collections::HashSet;

    #[test]
    fn asvs5_7_2_3_tokens_are_256_bit_prefixed_and_unique() {
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let token = Token::generate(TokenKind::Session, &OsRandom);
            assert!(token.expose().starts_with("pcs_"));
            let body = URL_SAFE_NO_PAD.decode(&token.expose()[4..]).unwrap();
            assert_eq!(body.len(), 32);
            assert!(seen.insert(token.hash()));
        }
    }

    #[test]
    fn owasp_sm_10_parse_rejects_wrong_shapes() {
        let good = Token::generate(TokenKind::Session, &SeededRandom::new(1));
        assert!(Token::parse(TokenKind::Session, good.expose()).is_ok());
        assert!(Token::parse(TokenKind::ApiKey, good.expose()).is_err());
        for bad in [
            "",
            "pcs_",
            "pcs_short",
            "pcs_ab/cdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            &format!("{}x", good.expose()),
        ] {
            assert_eq!(
                Token::parse(TokenKind::Session, bad),
                Err(MalformedToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = Token::generate(TokenKind::Session, &OsRandom);
        let shown = format!("{token:?} {:?}", token.hash());
        assert!(!shown.contains(&token.expose()[4..]));
    }

    #[test]
    fn routed_tokens_and_ids_carry_their_route() {
        let random = OsRandom;
        let route = subject_route("alice");
        assert_eq!(route, subject_route("alice"));
        let token = Token::generate_routed(TokenKind::Session, &random, route);
        assert_eq!(token.hash().0[0], route);
        assert!(Token::parse(TokenKind::Session, token.expose()).is_ok());
        let id = PublicId::generate_routed("ses_", route, &random);
        assert_eq!(id.route(4), Some(route));
        assert_eq!(PublicId::from_string("ses_zz".into()).route(4), None);
    }

    #[test]
    fn hash_hex_round_trips() {
        let hash = Token::generate(TokenKind::ApiKey, &OsRandom).hash();
        assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }
}
