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
    /// An OpenID Connect client's secret (`pcc_`).
    ClientSecret,
    /// An authorization code (`pca_`).
    AuthorizationCode,
    /// A refresh token (`pcr_`).
    RefreshToken,
}

impl TokenKind {
    /// The recognisable prefix of this kind.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Session => "pcs_",
            Self::ApiKey => "pck_",
            Self::ClientSecret => "pcc_",
            Self::AuthorizationCode => "pca_",
            Self::RefreshToken => "pcr_",
        }
    }
}

/// The length of every kind's prefix.
const PREFIX_LEN: usize = 4;

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
        Self::encode(kind, &bytes)
    }

    fn encode(kind: TokenKind, bytes: &[u8; TOKEN_BYTES]) -> Self {
        let mut text = String::with_capacity(kind.prefix().len() + ENCODED_LEN);
        text.push_str(kind.prefix());
        URL_SAFE_NO_PAD.encode_string(bytes, &mut text);
        Self(text)
    }

    /// Issues a new token whose first byte is `route`, so a store that shards by subject finds
    /// the session's shard from the token alone (see [`subject_route`]); stores keep its
    /// [`Token::routed_hash`]. The token keeps its full shape; 248 of its bits are random.
    pub fn generate_routed(kind: TokenKind, random: &dyn RandomSource, route: u8) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        random.fill(&mut bytes);
        bytes[0] = route;
        Self::encode(kind, &bytes)
    }

    /// Checks the shape of an untrusted token (prefix, length, alphabet) without trusting it.
    pub fn parse(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        check_shape(kind, text)?;
        Ok(Self(text.to_owned()))
    }

    /// The hash of an untrusted token of `kind` after checking its shape like
    /// [`Token::parse`], without keeping a copy of the secret: what a lookup needs.
    pub fn hash_presented(kind: TokenKind, text: &str) -> Result<TokenHash, MalformedToken> {
        check_shape(kind, text)?;
        Ok(TokenHash::of(text))
    }

    /// [`Token::hash_presented`] for a token made by [`Token::generate_routed`]:
    /// [`Token::routed_hash`] of the untrusted token.
    pub fn hash_presented_routed(kind: TokenKind, text: &str) -> Result<TokenHash, MalformedToken> {
        check_shape(kind, text)?;
        Ok(TokenHash::routed_of(text))
    }

    /// The secret itself, for handing to its owner exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token: what stores keep and look up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// What stores keep of a token made by [`Token::generate_routed`]: its SHA-256 with the first byte replaced by the route the token carries, so the hash
    /// names its shard without a search for a token whose digest happens to start with it. The
    /// other 31 bytes, as unguessable as the token's 248 random bits, keep a dump of the store
    /// from letting anybody in.
    pub fn routed_hash(&self) -> TokenHash {
        TokenHash::routed_of(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = &self.0[..self.0.len().min(4)];
        write!(f, "Token({prefix}…redacted)")
    }
}

/// Prefix, length and alphabet of a token of `kind`.
fn check_shape(kind: TokenKind, text: &str) -> Result<(), MalformedToken> {
    let body = text.strip_prefix(kind.prefix()).ok_or(MalformedToken)?;
    let well_formed = body.len() == ENCODED_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(()).ok_or(MalformedToken)
}

/// The first byte of a token body: its first two base64url characters' top eight bits. The
/// body's shape is checked (or generated), so every character is of the alphabet.
fn carried_route(body: &str) -> u8 {
    let mut first = [0u8; 3];
    match URL_SAFE_NO_PAD.decode_slice(body.as_bytes().get(..4).unwrap_or_default(), &mut first) {
        Ok(3) => first[0],
        _ => 0,
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
        same_secret(&self.0, &other.0)
    }
}

/// Whether two secrets are equal, in time that depends only on their lengths (which are not
/// secret): eight bytes at a time, each word compared with `subtle`, no early exit.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut same = word(a_words.remainder()).ct_eq(&word(b_words.remainder()));
    // `chunks_exact` lets the compiler see eight bytes: a load, not a copy.
    for (x, y) in a_words.zip(b_words) {
        same &= word(x).ct_eq(&word(y));
    }
    same.into()
}

/// Up to eight bytes as one word, zero-padded.
fn word(bytes: &[u8]) -> u64 {
    let mut padded = [0u8; 8];
    padded[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(padded)
}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Eight bytes of a SHA-256 are as good a hash as all 32. Not the first: sharded
        // stores choose it (see `Token::generate_routed`).
        state.write_u64(word(&self.0[8..16]));
    }
}

/// The hasher of maps that hold only sessions and keys Portcullis generated, keyed by their
/// [`TokenHash`]: eight bytes of a SHA-256 of 256 random bits are already a uniform hash, so
/// hashing them again (SipHash) buys nothing. Flooding such a map is impossible, since nobody
/// outside chooses a key that gets inserted; a map keyed by presented tokens keeps SipHash.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeneratedTokens;

impl std::hash::BuildHasher for GeneratedTokens {
    type Hasher = TokenHashHasher;

    fn build_hasher(&self) -> TokenHashHasher {
        TokenHashHasher(0)
    }
}

/// See [`GeneratedTokens`].
#[derive(Debug)]
pub struct TokenHashHasher(u64);

impl std::hash::Hasher for TokenHashHasher {
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only a `TokenHash` is meant to be hashed here; anything else still gets a usable
        // (if slow) hash rather than a constant.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TokenHash {
    fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// See [`Token::routed_hash`]; `text` is a token of the right shape.
    fn routed_of(text: &str) -> Self {
        let mut hash = Self::of(text);
        hash.0[0] = carried_route(text.get(PREFIX_LEN..).unwrap_or_default());
        hash
    }

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
    fn same_secret_differs_on_any_byte_and_any_length() {
        for len in 0..=48usize {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            assert!(same_secret(&a, &a.clone()), "equal, {len} bytes");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_secret(&a, &b), "byte {at} of {len}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_secret(&a, &longer), "a zero byte more, {len} bytes");
        }
    }

    #[test]
    fn maps_of_generated_tokens_find_exactly_what_they_hold() {
        let tokens: Vec<TokenHash> = (0..2_000)
            .map(|_| Token::generate(TokenKind::Session, &OsRandom).hash())
            .collect();
        let (held, absent) = tokens.split_at(1_000);
        let map: std::collections::HashMap<TokenHash, usize, GeneratedTokens> =
            held.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        assert_eq!(map.len(), 1_000);
        for (i, h) in held.iter().enumerate() {
            assert_eq!(map.get(h), Some(&i));
        }
        assert!(absent.iter().all(|h| !map.contains_key(h)));
    }

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
        let routed = token.routed_hash();
        assert_eq!(routed.0[0], route);
        assert_eq!(
            routed.0[1..],
            token.hash().0[1..],
            "the rest is the SHA-256"
        );
        assert_eq!(
            Token::hash_presented_routed(TokenKind::Session, token.expose()),
            Ok(routed)
        );
        assert!(Token::parse(TokenKind::Session, token.expose()).is_ok());
        for kind in [
            TokenKind::Session,
            TokenKind::ApiKey,
            TokenKind::ClientSecret,
            TokenKind::AuthorizationCode,
            TokenKind::RefreshToken,
        ] {
            assert_eq!(kind.prefix().len(), PREFIX_LEN, "{kind:?}");
        }
        for route in [0, 1, 0x7f, 0x80, 0xfe, 0xff] {
            let token = Token::generate_routed(TokenKind::Session, &random, route);
            assert_eq!(token.routed_hash().0[0], route);
        }
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
