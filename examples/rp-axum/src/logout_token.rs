//! Checking a logout token (OpenID Connect Back-Channel Logout 1.0 §2.6): a JWT the provider
//! POSTs when a person's session there ends, naming the session (`sid`) or the person (`sub`)
//! whose sessions here must end too.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::http::HttpClient;
use crate::keys::{KeySet, KeysError, ProviderKeys};

/// The member of `events` that makes a JWT a logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a logout token was refused. Every variant but [`LogoutTokenError::Keys`] is the
/// token's fault (answered 400); that one is ours, for a while (answered 503, so the provider
/// tries again).
#[derive(Debug, thiserror::Error)]
pub enum LogoutTokenError {
    /// Not three base64url parts with a JSON header, or an algorithm we do not know (`none`).
    #[error("not a signed JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    /// Signed with an algorithm the provider does not sign ID tokens with.
    #[error("alg {0:?} is not one the provider signs with")]
    Algorithm(Algorithm),
    /// Explicitly typed as something else (an ID token, an access token).
    #[error("typ {0:?} is not logout+jwt")]
    Type(String),
    /// No key of the provider's set has the token's `kid` (or, without one, exactly one key
    /// fits).
    #[error("no key of the provider matches kid {}", .0.as_deref().unwrap_or("(none)"))]
    UnknownKey(Option<String>),
    /// The signature, `iss`, `aud`, `exp` or the claims' shape (`iat`, `jti`, `events`).
    #[error("the logout token does not verify: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    /// `events` lacks the back-channel logout event, or its value is not an object.
    #[error("events has no {BACKCHANNEL_LOGOUT_EVENT} object")]
    NoEvent,
    /// A logout token must not carry a `nonce` (it could then pass for an ID token).
    #[error("a logout token must not contain a nonce")]
    Nonce,
    /// Neither `sub` nor `sid`: nobody to sign out.
    #[error("a logout token names sub, sid or both")]
    NobodyNamed,
    /// The provider's keys could not be fetched.
    #[error("{0}")]
    Keys(#[from] KeysError),
}

/// Whose sessions a verified logout token ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutTarget {
    /// The sessions made under the provider's session `sid` (of `sub`, when given too).
    Session {
        /// The provider's session.
        sid: String,
        /// The person, when the token names them as well.
        sub: Option<String>,
    },
    /// Every session of the person `sub`.
    Subject(String),
}

impl LogoutTarget {
    /// Whether a local session signed in as `sub` under the provider's session `sid` is one
    /// of those to end.
    pub fn covers(&self, sub: &str, sid: Option<&str>) -> bool {
        match self {
            Self::Session {
                sid: target,
                sub: target_sub,
            } => sid == Some(target) && target_sub.as_deref().is_none_or(|t| t == sub),
            Self::Subject(target) => target == sub,
        }
    }
}

/// The claims of a logout token; `iat` and `jti` are required (§2.4) though only checked for
/// presence here, `iss`, `aud` and `exp` are checked by [`jsonwebtoken::decode`].
#[derive(Debug, Deserialize)]
struct LogoutClaims {
    #[serde(rename = "iat")]
    _iat: i64,
    #[serde(rename = "jti")]
    _jti: String,
    #[serde(default)]
    events: Map<String, Value>,
    sub: Option<String>,
    sid: Option<String>,
    nonce: Option<Value>,
}

/// Checks logout tokens from one provider for one client.
pub struct LogoutTokenVerifier {
    issuer: String,
    client_id: String,
    /// The algorithms the provider signs ID tokens with (its discovery document), `none` and
    /// the symmetric ones left out.
    algorithms: Vec<Algorithm>,
}

impl LogoutTokenVerifier {
    /// A verifier for tokens of `issuer` to `client_id`, signed with one of `algorithms`.
    pub fn new(issuer: String, client_id: String, algorithms: Vec<Algorithm>) -> Self {
        let algorithms = algorithms
            .into_iter()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        Self {
            issuer,
            client_id,
            algorithms,
        }
    }

    /// Verifies `token` (signature against the provider's keys, fetched again once when its
    /// `kid` is unknown) and says whose sessions it ends.
    pub async fn verify(
        &self,
        token: &str,
        keys: &ProviderKeys,
        http: &HttpClient,
    ) -> Result<LogoutTarget, LogoutTokenError> {
        // `alg: none` is no `Algorithm`, so it fails here.
        let header = jsonwebtoken::decode_header(token).map_err(LogoutTokenError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(LogoutTokenError::Algorithm(header.alg));
        }
        if let Some(typ) = &header.typ
            && !is_logout_type(typ)
        {
            return Err(LogoutTokenError::Type(typ.clone()));
        }
        let key = match key_for(&keys.current(), &header) {
            Some(key) => key,
            None => {
                let refreshed = keys.refresh(http).await?;
                key_for(&refreshed, &header)
                    .ok_or_else(|| LogoutTokenError::UnknownKey(header.kid.clone()))?
            }
        };

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["iss", "aud", "exp"]);
        let claims = jsonwebtoken::decode::<LogoutClaims>(token, &key, &validation)
            .map_err(LogoutTokenError::Invalid)?
            .claims;

        if !claims
            .events
            .get(BACKCHANNEL_LOGOUT_EVENT)
            .is_some_and(Value::is_object)
        {
            return Err(LogoutTokenError::NoEvent);
        }
        if claims.nonce.is_some() {
            return Err(LogoutTokenError::Nonce);
        }
        match (claims.sid, claims.sub) {
            (Some(sid), sub) => Ok(LogoutTarget::Session { sid, sub }),
            (None, Some(sub)) => Ok(LogoutTarget::Subject(sub)),
            (None, None) => Err(LogoutTokenError::NobodyNamed),
        }
    }
}

/// `logout+jwt`, also spelled as a full media type (RFC 7515 §4.1.9).
fn is_logout_type(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    typ == "logout+jwt" || typ == "application/logout+jwt"
}

/// The key of `set` that may have signed a token with `header`: the one with its `kid`, or
/// without a `kid` the only signing key that fits the algorithm.
fn key_for(set: &KeySet, header: &Header) -> Option<DecodingKey> {
    let fits = |jwk: &&Jwk| {
        let common = &jwk.common;
        let signs = !matches!(common.public_key_use, Some(PublicKeyUse::Encryption));
        let same_alg = common
            .key_algorithm
            .is_none_or(|alg| Algorithm::try_from(alg).ok() == Some(header.alg));
        let same_kid = header.kid.is_none() || common.key_id == header.kid;
        signs && same_alg && same_kid
    };
    let mut candidates = set.logout_tokens.keys.iter().filter(fits);
    let key = candidates.next()?;
    if candidates.next().is_some() {
        return None;
    }
    DecodingKey::from_jwk(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, encode};
    use serde_json::json;

    const ISSUER: &str = "https://id.example.test";
    const CLIENT: &str = "app_shop";
    /// An Ed25519 key made for these tests (PKCS#8), and its public half as a JWK Set.
    const PRIVATE_KEY: &str = "MC4CAQAwBQYDK2VwBCIEIHofrgm2KrtPiztecgKHqwLPmpoe2/lOlCggK2qWJ3+q";
    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","use":"sig","alg":"EdDSA",
        "kid":"k1","x":"Fyr7omn-ZaKMLXz8JpRUU0q8WOZh-lInZpT2fWdai3I"}]}"#;

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": CLIENT,
            "iat": now(),
            "exp": now() + 120,
            "jti": "bcl_1",
            "sub": "usr_a",
            "sid": "ses_1",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
        })
    }

    fn header() -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("logout+jwt".to_owned());
        header.kid = Some("k1".to_owned());
        header
    }

    fn sign(header: &Header, claims: &Value) -> String {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(PRIVATE_KEY)
            .unwrap();
        encode(header, claims, &EncodingKey::from_ed_der(&der)).unwrap()
    }

    async fn verify(token: &str) -> Result<LogoutTarget, LogoutTokenError> {
        let verifier = LogoutTokenVerifier::new(
            ISSUER.to_owned(),
            CLIENT.to_owned(),
            vec![Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256],
        );
        let keys = ProviderKeys::fixed(JWKS);
        let http = HttpClient::new().unwrap();
        verifier.verify(token, &keys, &http).await
    }

    /// The claims with `name` set to `value`, or removed when `value` is null.
    fn with(name: &str, value: Value) -> Value {
        let mut claims = claims();
        let map = claims.as_object_mut().unwrap();
        if value.is_null() {
            map.remove(name);
        } else {
            map.insert(name.to_owned(), value);
        }
        claims
    }

    #[tokio::test]
    async fn oidc_bcl_11_a_valid_logout_token_names_the_session_and_person() {
        let target = verify(&sign(&header(), &claims())).await.unwrap();
        assert_eq!(
            target,
            LogoutTarget::Session {
                sid: "ses_1".into(),
                sub: Some("usr_a".into())
            }
        );
        let target = verify(&sign(&header(), &with("sid", Value::Null)))
            .await
            .unwrap();
        assert_eq!(target, LogoutTarget::Subject("usr_a".into()));
        // Untyped tokens are accepted, and several audiences among which this client.
        let mut untyped = header();
        untyped.typ = None;
        let token = sign(&untyped, &with("aud", json!(["other", CLIENT])));
        assert!(verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn oidc_bcl_11_signature_algorithm_and_type_are_checked() {
        let token = sign(&header(), &claims());
        let (signed, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", "A".repeat(86));
        assert!(matches!(
            verify(&forged).await,
            Err(LogoutTokenError::Invalid(_))
        ));
        // alg none: no signature to check, refused before any key is looked at.
        let payload = token.split('.').nth(1).unwrap();
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoibG9nb3V0K2p3dCJ9.{payload}.");
        assert!(matches!(
            verify(&unsigned).await,
            Err(LogoutTokenError::Malformed(_))
        ));
        // HS256 (keyed with anything public) is never accepted.
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("k1".to_owned());
        let token = encode(&hs, &claims(), &EncodingKey::from_secret(b"public")).unwrap();
        assert!(matches!(
            verify(&token).await,
            Err(LogoutTokenError::Algorithm(Algorithm::HS256))
        ));
        let mut id_token_type = header();
        id_token_type.typ = Some("JWT".to_owned());
        assert!(matches!(
            verify(&sign(&id_token_type, &claims())).await,
            Err(LogoutTokenError::Type(_))
        ));
        // A key the provider does not have (no new fetch within the minimum interval).
        let mut unknown = header();
        unknown.kid = Some("k2".to_owned());
        assert!(matches!(
            verify(&sign(&unknown, &claims())).await,
            Err(LogoutTokenError::UnknownKey(Some(_)))
        ));
    }

    #[tokio::test]
    async fn oidc_bcl_11_issuer_audience_and_times_are_checked() {
        for (name, value) in [
            ("iss", json!("https://other.example.test")),
            ("iss", Value::Null),
            ("aud", json!("another_client")),
            ("aud", Value::Null),
            ("exp", json!(now() - 3600)),
            ("exp", Value::Null),
            ("iat", Value::Null),
            ("jti", Value::Null),
        ] {
            let result = verify(&sign(&header(), &with(name, value.clone()))).await;
            assert!(
                matches!(result, Err(LogoutTokenError::Invalid(_))),
                "{name} = {value}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn oidc_bcl_11_events_nonce_and_subject_are_checked() {
        for events in [
            Value::Null,
            json!({}),
            json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" }),
        ] {
            let result = verify(&sign(&header(), &with("events", events))).await;
            assert!(
                matches!(result, Err(LogoutTokenError::NoEvent)),
                "{result:?}"
            );
        }
        let result = verify(&sign(&header(), &with("nonce", json!("n-1")))).await;
        assert!(matches!(result, Err(LogoutTokenError::Nonce)), "{result:?}");
        let mut nobody = with("sub", Value::Null);
        nobody.as_object_mut().unwrap().remove("sid");
        let result = verify(&sign(&header(), &nobody)).await;
        assert!(
            matches!(result, Err(LogoutTokenError::NobodyNamed)),
            "{result:?}"
        );
    }

    #[test]
    fn a_session_target_covers_its_sid_and_only_its_subject() {
        let target = LogoutTarget::Session {
            sid: "ses_1".into(),
            sub: Some("usr_a".into()),
        };
        assert!(target.covers("usr_a", Some("ses_1")));
        assert!(!target.covers("usr_b", Some("ses_1")));
        assert!(!target.covers("usr_a", Some("ses_2")));
        assert!(!target.covers("usr_a", None));
        let any_subject = LogoutTarget::Session {
            sid: "ses_1".into(),
            sub: None,
        };
        assert!(any_subject.covers("usr_b", Some("ses_1")));
        let subject = LogoutTarget::Subject("usr_a".into());
        assert!(subject.covers("usr_a", Some("ses_9")));
        assert!(subject.covers("usr_a", None));
        assert!(!subject.covers("usr_b", Some("ses_1")));
    }

    #[test]
    fn logout_types_are_recognised_in_either_spelling() {
        assert!(is_logout_type("logout+jwt"));
        assert!(is_logout_type("application/logout+JWT"));
        assert!(!is_logout_type("JWT"));
        assert!(!is_logout_type("at+jwt"));
    }
}
