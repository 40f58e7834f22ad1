//! Upstream back-channel logout: a logout token the upstream posts when a person's session
//! there ends (OpenID Connect Back-Channel Logout 1.0 §2.4–2.6), checked like an ID token.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_core::Timestamp;
use serde_json::{Map, Value};

use crate::provider::{CLOCK_SKEW, Upstream, UpstreamError};

/// The `events` member a logout token carries.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old a logout token may be (its `iat`), so a `jti` need be remembered only this long.
pub const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);

/// A verified upstream logout token: which upstream session (or person) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLogout {
    /// The person (`sub`), when named.
    pub subject: Option<String>,
    /// The upstream session (`sid`), when named.
    pub sid: Option<String>,
    /// The token's `jti`: a second token with it is a replay.
    pub jti: String,
    /// Until when the `jti` must be remembered (the token's age limit).
    pub remember_until: Timestamp,
}

fn invalid(why: &str) -> UpstreamError {
    UpstreamError::Invalid(format!("the logout token {why}"))
}

impl Upstream {
    /// Verifies `token`: signed with an upstream key by an algorithm discovery names (never
    /// `none` nor a symmetric one), `iss` the upstream, `aud` our client id, `iat` recent, the
    /// back-channel logout event, `sub` or `sid`, a `jti`, and no `nonce`.
    pub async fn verify_logout_token(&self, token: &str) -> Result<UpstreamLogout, UpstreamError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("is malformed"))?;
        let (keys, algorithms) = self.jose_keys().await?;
        let alg_name = serde_json::to_value(header.alg)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !algorithms.contains(&alg_name) {
            return Err(invalid(
                "is signed with an algorithm the provider does not use",
            ));
        }
        // RFC 7515 §4.1.9: `application/` may be left out of a media type, or given.
        if header.typ.as_deref().is_some_and(|typ| {
            let typ = typ
                .get(..12)
                .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
                .map_or(typ, |_| &typ[12..]);
            !typ.eq_ignore_ascii_case("logout+jwt") && !typ.eq_ignore_ascii_case("JWT")
        }) {
            return Err(invalid("has another type"));
        }
        let key = match find_key(&keys, header.kid.as_deref()) {
            Some(key) => key,
            None => match self.refetched_jose_keys().await? {
                Some(fresh) => find_key(&fresh, header.kid.as_deref())
                    .ok_or_else(|| invalid("names a key the provider does not publish"))?,
                None => return Err(invalid("names a key the provider does not publish")),
            },
        };
        let claims = self.checked_claims(token, header.alg, &key)?;
        let now = self.now();
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("has no iat"))?;
        let issued = Timestamp::from_millis(iat.saturating_mul(1000));
        if issued > now.plus(CLOCK_SKEW) || issued.plus(LOGOUT_TOKEN_MAX_AGE) < now {
            return Err(invalid("is not recent"));
        }
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64)
            && Timestamp::from_millis(exp.saturating_mul(1000)) <= now
        {
            return Err(invalid("has expired"));
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64)
            && Timestamp::from_millis(nbf.saturating_mul(1000)) > now.plus(CLOCK_SKEW)
        {
            return Err(invalid("is not valid yet"));
        }
        if claims.contains_key("nonce") {
            return Err(invalid("carries a nonce (it would pass for an ID token)"));
        }
        if !claims
            .get("events")
            .and_then(Value::as_object)
            .is_some_and(|events| events.get(BACKCHANNEL_EVENT).is_some_and(Value::is_object))
        {
            return Err(invalid("lacks the back-channel logout event"));
        }
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (subject, sid) = (text("sub"), text("sid"));
        if subject.is_none() && sid.is_none() {
            return Err(invalid("names neither a person nor a session"));
        }
        let jti = text("jti").ok_or_else(|| invalid("has no jti"))?;
        Ok(UpstreamLogout {
            subject,
            sid,
            jti,
            remember_until: issued.plus(LOGOUT_TOKEN_MAX_AGE).plus(CLOCK_SKEW),
        })
    }

    /// The token's claims once its signature, `iss` and `aud` hold (times are checked by the
    /// caller against the injected clock).
    fn checked_claims(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let settings = self.settings();
        let mut validation = Validation::new(alg);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.client_id.as_str()]);
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| invalid(&format!("does not verify ({e})")))
    }
}

/// The key named `kid` (or the only key, when the token names none).
fn find_key(keys: &JwkSet, kid: Option<&str>) -> Option<DecodingKey> {
    let jwk = match kid {
        Some(kid) => keys.find(kid)?,
        None if keys.keys.len() == 1 => &keys.keys[0],
        None => return None,
    };
    DecodingKey::from_jwk(jwk).ok()
}
