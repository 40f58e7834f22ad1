//! Property tests of the core's parsers of untrusted input: presented tokens and API keys,
//! public ids, token hashes in hex, and durations in the configuration. Whatever the input, a
//! parser answers (never panics), accepts exactly the documented shape, and what Portcullis
//! writes reads back as it was.
//!
//! CI runs each property with proptest's default 256 cases; `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh` runs them for an hour).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_core::{
    OsRandom, PublicId, Token, TokenHash, TokenKind, format_duration, parse_duration,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

/// Text a caller might send: anything, biased toward the shapes the parsers look for.
fn presented() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(pcs_|pck_|pcs|PCS_|)[A-Za-z0-9_=+/ -]{0,50}",
        "pc[sk]_[A-Za-z0-9_-]{43}",
        "pc[sk]_[A-Za-z0-9_-]{42,44}[\\x00-\\x7f\\u{80}-\\u{10ffff}]?",
        prop::collection::vec(any::<u8>(), 0..60)
            .prop_map(|b| format!("pcs_{}", String::from_utf8_lossy(&b))),
    ]
}

/// The documented shape: the prefix of `kind`, then 43 base64url characters.
fn well_formed(kind: TokenKind, text: &str) -> bool {
    text.strip_prefix(kind.prefix()).is_some_and(|body| {
        body.len() == 43
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

proptest! {
    /// OWASP-SM-10: a presented session token or API key is validated as untrusted input:
    /// over-long, off-alphabet or injection-shaped text is refused, never a panic.
    #[test]
    fn owasp_sm_10_presented_tokens_are_accepted_exactly_in_their_shape(text in presented()) {
        for kind in [TokenKind::Session, TokenKind::ApiKey] {
            let parsed = Token::parse(kind, &text);
            prop_assert_eq!(parsed.is_ok(), well_formed(kind, &text), "{:?}", text);
            let hashed = Token::hash_presented(kind, &text);
            prop_assert_eq!(hashed.is_ok(), parsed.is_ok());
            if let (Ok(token), Ok(hash)) = (parsed, hashed) {
                prop_assert_eq!(token.hash(), hash);
                prop_assert_eq!(token.expose(), text.as_str());
                // Its Debug never shows the secret.
                let shown = format!("{token:?}");
                prop_assert!(!shown.contains(&text[4..]), "{}", shown);
            }
        }
    }

    #[test]
    fn any_256_bits_make_a_token_that_parses_and_hashes_the_same(bytes in any::<[u8; 32]>()) {
        for kind in [TokenKind::Session, TokenKind::ApiKey] {
            let text = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes));
            let token = Token::parse(kind, &text).unwrap();
            prop_assert_eq!(Token::hash_presented(kind, &text).unwrap(), token.hash());
            prop_assert_eq!(token.hash(), TokenHash(Sha256::digest(text.as_bytes()).into()));
            let other = if kind == TokenKind::Session { TokenKind::ApiKey } else { TokenKind::Session };
            prop_assert!(Token::parse(other, &text).is_err());
        }
    }

    #[test]
    fn token_hashes_read_back_from_hex_and_nothing_else_reads(
        bytes in any::<[u8; 32]>(),
        text in prop_oneof![any::<String>(), "[0-9a-fA-F]{0,70}"],
    ) {
        let hash = TokenHash(bytes);
        prop_assert_eq!(TokenHash::from_hex(&hash.to_hex()), Some(hash));
        let json = serde_json::to_string(&hash).unwrap();
        prop_assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), hash);
        if let Some(read) = TokenHash::from_hex(&text) {
            prop_assert_eq!(read.to_hex(), text.to_ascii_lowercase());
        }
        let _ = serde_json::from_str::<TokenHash>(&serde_json::to_string(&text).unwrap());
    }

    #[test]
    fn public_ids_give_their_route_or_none_and_never_panic(
        text in prop_oneof![any::<String>(), "ses_[0-9a-fA-F]{0,3}[A-Za-z0-9_-]{0,30}", "[^\\x00]{0,8}"],
        prefix_len in 0usize..12,
        route in any::<u8>(),
    ) {
        let id = PublicId::from_string(text.clone());
        prop_assert_eq!(id.as_str(), text.as_str());
        if let Some(read) = id.route(prefix_len) {
            let hex = &text[prefix_len..prefix_len + 2];
            prop_assert_eq!(u8::from_str_radix(hex, 16).ok(), Some(read));
        }
        let routed = PublicId::generate_routed("ses_", route, &OsRandom);
        prop_assert_eq!(routed.route(4), Some(route));
        prop_assert!(routed.as_str().starts_with("ses_"));
    }

    /// Durations in the configuration (`idle = "15m"`): any text answers Ok or an error that
    /// quotes it, never a panic or an overflow.
    #[test]
    fn durations_in_the_configuration_parse_or_say_why(
        text in prop_oneof![
            any::<String>(),
            "[ \\t]{0,2}[0-9]{0,22}(ms|s|m|h|d|x|M|)[ \\t]{0,2}",
            "-?[0-9]{1,3}(\\.[0-9])?(ms|s|m|h|d)",
        ],
    ) {
        match parse_duration(&text) {
            Ok(d) => {
                let trimmed = text.trim();
                let unit_at = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap();
                prop_assert!(unit_at > 0);
                prop_assert!(matches!(&trimmed[unit_at..], "ms" | "s" | "m" | "h" | "d"));
                // What it writes reads back as the same length of time.
                prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
            }
            Err(message) => prop_assert!(message.contains(text.trim()), "{}", message),
        }
    }

    #[test]
    fn durations_written_read_back_in_every_unit(millis in 0u64..u64::MAX / 1_000_000, unit in 0usize..5) {
        let (suffix, per) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
        let n = millis / per;
        let d = Duration::from_millis(n * per);
        prop_assert_eq!(parse_duration(&format!("{n}{suffix}")), Ok(d));
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}

#[test]
fn durations_too_large_for_milliseconds_are_refused() {
    let too_large = format!("{}d", u64::MAX / 86_400_000 + 1);
    assert!(
        parse_duration(&too_large)
            .unwrap_err()
            .contains("too large")
    );
    assert!(parse_duration(&format!("{}0s", u64::MAX)).is_err());
}
