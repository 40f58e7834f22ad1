//! The token endpoint's grants (RFC 6749 §4.1.3 and §6, RFC 9700 §2.2.2 and §4.14), and the
//! endpoints that read tokens back: userinfo, introspection (RFC 7662) and revocation
//! (RFC 7009). Every answer about a token follows the application session it belongs to, so
//! an ended session is reflected at once.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_core::oidc::{
    AuthorizationCode, Client, ClientAuth, GrantType, Redemption, RefreshToken, Rotation,
};
use portcullis_core::{
    Actor, Application, AuditEvent, AuthContext, EndReason, EngineError, EventKind, Keyring,
    NewSession, OFFLINE_POLICY, PublicId, Session, SessionId, Store, Timestamp, Token, TokenHash,
    TokenKind, subject_route,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::authorize::{ProviderOr, acr_of_level};
use crate::claims::{
    ACCESS_TOKEN_TYPE, AccessTokenClaims, ID_TOKEN_TYPE, IdTokenClaims, token_hash_claim,
};
use crate::pkce::verifier_matches;
use crate::provider::{Provider, ProviderError, seconds};

/// An error answer of the token, revocation or introspection endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {description}")]
pub struct TokenError {
    /// The error code.
    pub error: &'static str,
    /// Why, for the developer.
    pub description: &'static str,
}

impl TokenError {
    fn new(error: &'static str, description: &'static str) -> Self {
        Self { error, description }
    }

    /// The grant is not valid (RFC 6749 §5.2 `invalid_grant`).
    fn grant(description: &'static str) -> Self {
        Self::new("invalid_grant", description)
    }

    /// The client did not authenticate: answered with 401.
    pub fn is_client_authentication(&self) -> bool {
        self.error == "invalid_client"
    }
}

impl From<TokenError> for ProviderOr<TokenError> {
    fn from(error: TokenError) -> Self {
        Self::Protocol(error)
    }
}

impl From<EngineError> for ProviderOr<TokenError> {
    fn from(error: EngineError) -> Self {
        Self::Failed(error.into())
    }
}

/// How a client proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredentials {
    /// Nothing (a public client).
    None,
    /// A client secret (`client_secret_basic` or `client_secret_post`).
    Secret(String),
    /// A `private_key_jwt` assertion.
    Assertion(String),
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token (a JWT, RFC 9068).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The ID token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scopes.
    pub scope: String,
}

/// Seals a refresh token's successor under a key only the holder of the old token can derive.
/// How far ahead a client assertion may expire (`private_key_jwt`).
pub const MAX_ASSERTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(300);

fn successor_ring(old_token: &str) -> Keyring {
    let key = Sha256::new()
        .chain_update(b"portcullis refresh successor v1\0")
        .chain_update(old_token.as_bytes())
        .finalize();
    Keyring::parse(&[format!("rt:{}", STANDARD.encode(key))]).expect("a well-formed key entry")
}

/// The SSO session a client's session was made from (the `sid` of its tokens): its parent, or
/// for an offline grant, which has none, the one its data names.
fn sso_of(session: &Session) -> SessionId {
    session
        .parent
        .clone()
        .or_else(|| {
            session
                .data
                .get("sso")
                .and_then(Value::as_str)
                .map(|id| PublicId::from_string(id.to_owned()))
        })
        .unwrap_or_else(|| session.id.clone())
}

impl<S: Store> Provider<S> {
    /// Authenticates the client calling the token, revocation or introspection endpoint.
    /// `endpoint` is the URL called (an assertion's audience may name it or the issuer).
    pub async fn authenticate_client(
        &self,
        client_id: Option<&str>,
        credentials: &ClientCredentials,
        endpoint: &str,
    ) -> Result<(Application, Client), ProviderOr<TokenError>> {
        let unknown = TokenError::new("invalid_client", "client authentication failed");
        let client_id = match (client_id, credentials) {
            (Some(id), _) => id.to_owned(),
            (None, ClientCredentials::Assertion(assertion)) => {
                // Only to learn which client claims to sign; the signature is checked next.
                jsonwebtoken::dangerous::insecure_decode_claims::<Value>(assertion)
                    .ok()
                    .and_then(|claims| claims.get("iss")?.as_str().map(str::to_owned))
                    .ok_or(unknown)?
            }
            (None, _) => return Err(unknown.into()),
        };
        let (app, client) = self.client(&client_id).await?.ok_or(unknown)?;
        let authenticated = match (&client.auth, credentials) {
            (ClientAuth::None, ClientCredentials::None) => true,
            (ClientAuth::Secret(hash), ClientCredentials::Secret(secret)) => {
                Token::hash_presented(TokenKind::ClientSecret, secret)
                    .is_ok_and(|presented| presented == *hash)
            }
            (ClientAuth::PrivateKeyJwt { jwks }, ClientCredentials::Assertion(assertion)) => {
                match self.assertion_holds(&client_id, jwks, assertion, endpoint) {
                    // OpenID Connect Core §9: an assertion is used once, on any node.
                    Some((jti, exp)) => {
                        let id = Sha256::new()
                            .chain_update(b"portcullis client assertion v1\0")
                            .chain_update(client_id.as_bytes())
                            .chain_update(b"\0")
                            .chain_update(jti.as_bytes())
                            .finalize();
                        self.stores
                            .replays
                            .first_use(&TokenHash(id.into()), self.engine.now(), exp)
                            .await?
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if authenticated {
            Ok((app, client))
        } else {
            Err(unknown.into())
        }
    }

    /// RFC 7523 §3 as OpenID Connect Core §9 uses it: signed by a key of the client's JWK Set
    /// with an asymmetric algorithm, `iss` = `sub` = the client, `aud` naming us, a `jti`, not
    /// expired, and expiring within [`MAX_ASSERTION_LIFETIME`] (so the record that it was used
    /// need not be kept long). Answers its `jti` and expiry.
    fn assertion_holds(
        &self,
        client_id: &str,
        jwks: &str,
        assertion: &str,
        endpoint: &str,
    ) -> Option<(String, Timestamp)> {
        let set = serde_json::from_str::<JwkSet>(jwks).ok()?;
        let header = jsonwebtoken::decode_header(assertion).ok()?;
        if !matches!(
            header.alg,
            Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256 | Algorithm::PS256
        ) {
            return None;
        }
        let candidates: Vec<_> = match &header.kid {
            Some(kid) => set.find(kid).into_iter().collect(),
            None => set.keys.iter().collect(),
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        let now = seconds(self.engine.now());
        candidates.into_iter().find_map(|jwk| {
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
                .ok()?
                .claims;
            let text = |name: &str| claims.get(name).and_then(Value::as_str);
            let audience_ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == endpoint || *aud == self.settings.issuer,
                Some(Value::Array(auds)) => auds.iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| a == endpoint || a == self.settings.issuer)
                }),
                _ => false,
            };
            let longest = now + MAX_ASSERTION_LIFETIME.as_secs() as i64;
            let exp = claims
                .get("exp")
                .and_then(Value::as_i64)
                .filter(|exp| *exp > now && *exp <= longest)?;
            let jti = text("jti").filter(|jti| !jti.is_empty())?;
            let holds = text("iss") == Some(client_id)
                && text("sub") == Some(client_id)
                && audience_ok
                && claims
                    .get("nbf")
                    .is_none_or(|nbf| nbf.as_i64().is_some_and(|nbf| nbf <= now));
            holds.then(|| {
                (
                    jti.to_owned(),
                    Timestamp::from_millis(exp.saturating_mul(1000)),
                )
            })
        })
    }

    /// The authorization code grant.
    pub async fn exchange_code(
        &self,
        app: &Application,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, ProviderOr<TokenError>> {
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return Err(TokenError::new(
                "unauthorized_client",
                "the client may not use the authorization code grant",
            )
            .into());
        }
        let hash = Token::hash_presented(TokenKind::AuthorizationCode, code)
            .map_err(|_| TokenError::grant("the code is not valid"))?;
        let Some(issued) = self.stores.codes.find_code(&hash).await? else {
            return Err(TokenError::grant("the code is not valid").into());
        };
        if issued.redeemed_for.is_some() {
            return Err(self.replayed(app, &issued).await?.into());
        }
        let now = self.engine.now();
        let session_id = self
            .engine
            .reserve_session_id(subject_route(&issued.subject));
        if let Err(refused) = Self::check_code(app, &issued, now, redirect_uri, verifier) {
            // One try per code: a failed redemption uses it up too, for a session never made.
            return Err(
                match self.stores.codes.redeem_code(&hash, &session_id).await? {
                    Redemption::Replayed(code) => self.replayed(app, &code).await?,
                    _ => refused,
                }
                .into(),
            );
        }
        // The session exists before the code is redeemed for it, so a replay racing this
        // redemption always finds what to end (RFC 9700 §4.5): of redemptions racing on any
        // nodes, the one whose claim comes first keeps its session; the others end theirs and
        // the winner's.
        let session = self.create_client_session(app, &issued, session_id).await?;
        match self.stores.codes.redeem_code(&hash, &session.id).await? {
            Redemption::First(_) => {}
            lost => {
                self.end_family(&session.id, &issued.subject, EndReason::TokenReuse)
                    .await?;
                return Err(match lost {
                    Redemption::Replayed(code) => self.replayed(app, &code).await?,
                    _ => TokenError::grant("the code is not valid"),
                }
                .into());
            }
        }
        let refresh = if client.grant_types.contains(&GrantType::RefreshToken) {
            let token = Token::generate(TokenKind::RefreshToken, &*self.random);
            self.stores
                .refresh_tokens
                .add_refresh_token(RefreshToken {
                    hash: token.hash(),
                    family: session.id.clone(),
                    client: app.id.clone(),
                    subject: issued.subject.clone(),
                    scopes: issued.scopes.clone(),
                    issued_at: now,
                    expires_at: session.absolute.at,
                    rotated: None,
                })
                .await?;
            Some(token.expose().to_owned())
        } else {
            None
        };
        Ok(self.tokens(
            client,
            &session,
            &issued.scopes,
            issued.nonce.as_deref(),
            refresh,
        )?)
    }

    /// Whether `app` may redeem `code` now with `redirect_uri` and the PKCE `verifier`.
    fn check_code(
        app: &Application,
        code: &AuthorizationCode,
        now: Timestamp,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<(), TokenError> {
        if code.client != app.id {
            return Err(TokenError::grant("the code was issued to another client"));
        }
        if code.expires_at <= now {
            return Err(TokenError::grant("the code has expired"));
        }
        // RFC 6749 §4.1.3: required when the authorization request had it (ours always do).
        let Some(redirect_uri) = redirect_uri else {
            return Err(TokenError::new(
                "invalid_request",
                "redirect_uri is missing",
            ));
        };
        if redirect_uri != code.redirect_uri {
            return Err(TokenError::grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        match (&code.code_challenge, verifier) {
            (Some(challenge), Some(verifier)) if verifier_matches(verifier, challenge) => Ok(()),
            (None, None) => Ok(()),
            // RFC 9700 §2.1.1: a verifier without a challenge is a downgrade.
            _ => Err(TokenError::grant("the PKCE code_verifier does not match")),
        }
    }

    /// RFC 9700 §4.5: someone else holds the code; end what its first redemption gave (when
    /// `app` is the client it was issued to: another client's code changes nothing).
    async fn replayed(
        &self,
        app: &Application,
        code: &AuthorizationCode,
    ) -> Result<TokenError, ProviderError> {
        if code.client == app.id
            && let Some(first) = &code.redeemed_for
        {
            self.end_family(first, &code.subject, EndReason::TokenReuse)
                .await?;
        }
        Ok(TokenError::grant("the code was already used"))
    }

    async fn create_client_session(
        &self,
        app: &Application,
        code: &AuthorizationCode,
        id: SessionId,
    ) -> Result<Session, ProviderOr<TokenError>> {
        let level = code
            .acr
            .as_deref()
            .and_then(|acr| acr.strip_prefix("aal")?.parse().ok())
            .unwrap_or(1);
        // An offline grant (OpenID Connect Core §11) is no child of the SSO session: it outlives
        // the sign-out, on lifetimes of its own. It is made only while the sign-in behind the
        // code lasts, as a child's parent is checked by the store.
        let offline = code.scopes.iter().any(|s| s == "offline_access");
        if offline
            && !self
                .engine
                .store()
                .find_by_id(&code.sso_session)
                .await
                .map_err(EngineError::from)?
                .is_some_and(|sso| sso.is_live() && sso.subject == code.subject)
        {
            return Err(TokenError::grant("the sign-in behind the code has ended").into());
        }
        let created = self
            .engine
            .create_reserved(
                NewSession {
                    subject: code.subject.clone(),
                    policy: Some(if offline {
                        OFFLINE_POLICY.to_owned()
                    } else {
                        app.default_policy.clone()
                    }),
                    auth: AuthContext {
                        methods: code.amr.clone(),
                        level,
                    },
                    data: json!({
                        "scope": code.scopes.join(" "),
                        "auth_time": seconds(code.auth_time),
                        "sso": code.sso_session.as_str(),
                    }),
                    parent: (!offline).then(|| code.sso_session.clone()),
                    application: Some(app.id.clone()),
                    back_channel_logout_uri: app
                        .client
                        .as_ref()
                        .and_then(|c| c.backchannel_logout_uri.clone()),
                    back_channel_logout_alg: app
                        .client
                        .as_ref()
                        .filter(|c| c.backchannel_logout_uri.is_some())
                        .map(|c| self.id_token_alg(Some(c))),
                    ..NewSession::default()
                },
                Some(id),
                &Self::acting_for(&code.subject),
            )
            .await;
        match created {
            Ok(issued) => Ok(Session::clone(&issued.session)),
            // The SSO session ended between the code and its redemption.
            Err(EngineError::Invalid(_)) => {
                Err(TokenError::grant("the sign-in behind the code has ended").into())
            }
            Err(EngineError::LimitReached) => {
                Err(TokenError::grant("too many sessions for this person").into())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Ends a client's session and its refresh tokens.
    async fn end_family(
        &self,
        session: &SessionId,
        subject: &str,
        reason: EndReason,
    ) -> Result<(), ProviderError> {
        self.stores
            .refresh_tokens
            .end_refresh_family(session)
            .await?;
        match self
            .engine
            .end(session, reason, &Self::acting_for(subject))
            .await
        {
            Ok(()) | Err(EngineError::NotFound) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// The refresh token grant, with rotation: a token is exchanged once; a retry within the
    /// grace gets the same successor; any later use ends the family (`token_reuse`).
    pub async fn refresh(
        &self,
        app: &Application,
        client: &Client,
        presented: &str,
        scope: Option<&str>,
    ) -> Result<TokenResponse, ProviderOr<TokenError>> {
        if !client.grant_types.contains(&GrantType::RefreshToken) {
            return Err(TokenError::new(
                "unauthorized_client",
                "the client may not use the refresh token grant",
            )
            .into());
        }
        let invalid = TokenError::grant("the refresh token is not valid");
        let hash =
            Token::hash_presented(TokenKind::RefreshToken, presented).map_err(|_| invalid)?;
        let current = self
            .stores
            .refresh_tokens
            .refresh_token(&hash)
            .await?
            .ok_or(invalid)?;
        let now = self.engine.now();
        if current.client != app.id || current.expires_at <= now {
            return Err(invalid.into());
        }
        // A used token is judged first: reuse ends the family whatever else the request asks.
        if let Some(rotated) = &current.rotated {
            return self
                .refresh_again(client, &current, rotated, presented, &current.scopes)
                .await;
        }
        let scopes = match scope {
            None => current.scopes.clone(),
            Some(asked) => {
                let asked: Vec<String> = asked
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if asked.iter().any(|s| !current.scopes.contains(s)) {
                    return Err(TokenError::new(
                        "invalid_scope",
                        "a refresh cannot widen the scope",
                    )
                    .into());
                }
                asked
            }
        };
        let session = match self
            .engine
            .validate_by_id(&current.family, true, &Self::acting_for(&current.subject))
            .await
        {
            Ok(session) => Session::clone(&session),
            Err(EngineError::Rejected(_) | EngineError::NotFound) => {
                self.stores
                    .refresh_tokens
                    .end_refresh_family(&current.family)
                    .await?;
                return Err(
                    TokenError::grant("the session behind the refresh token has ended").into(),
                );
            }
            Err(err) => return Err(err.into()),
        };
        let successor = Token::generate(TokenKind::RefreshToken, &*self.random);
        let record = RefreshToken {
            hash: successor.hash(),
            issued_at: now,
            expires_at: session.absolute.at,
            rotated: None,
            ..current.clone()
        };
        let sealed =
            successor_ring(presented).seal(successor.expose(), &hash.to_hex(), &*self.random);
        match self
            .stores
            .refresh_tokens
            .rotate_refresh_token(&hash, record, sealed)
            .await?
        {
            Rotation::Rotated(_) => {
                let tokens = self.tokens(
                    client,
                    &session,
                    &scopes,
                    None,
                    Some(successor.expose().to_owned()),
                )?;
                // A renewal is a change of the session's tokens: one event, as a rotation is.
                // Its application is the client's.
                let event = AuditEvent::for_session(
                    EventKind::SessionRefreshed,
                    &session,
                    now,
                    &Actor::user(&session.subject),
                );
                self.engine.record_event(event).await;
                Ok(tokens)
            }
            Rotation::AlreadyRotated(old) => {
                let rotated = old.rotated.clone().ok_or(invalid)?;
                self.refresh_again(client, &old, &rotated, presented, &scopes)
                    .await
            }
            Rotation::Unknown => Err(invalid.into()),
        }
    }

    /// A token presented again after it was rotated: the same successor within the grace (a
    /// client retrying a refresh whose answer it lost), reuse after it.
    async fn refresh_again(
        &self,
        client: &Client,
        old: &RefreshToken,
        rotated: &portcullis_core::oidc::Rotated,
        presented: &str,
        scopes: &[String],
    ) -> Result<TokenResponse, ProviderOr<TokenError>> {
        let now = self.engine.now();
        let within_grace = now <= rotated.at.plus(self.settings.refresh_retry_grace);
        let successor = successor_ring(presented)
            .open(&rotated.sealed_successor, &old.hash.to_hex())
            .ok();
        // The successor must still be unused: once its holder moved on, the old token is stale.
        let successor_unused = match &successor {
            Some(_) => self
                .stores
                .refresh_tokens
                .refresh_token(&rotated.successor)
                .await?
                .is_some_and(|s| s.rotated.is_none()),
            None => false,
        };
        if within_grace
            && successor_unused
            && let Some(successor) = successor
        {
            let session = match self
                .engine
                .validate_by_id(&old.family, true, &Self::acting_for(&old.subject))
                .await
            {
                Ok(session) => Session::clone(&session),
                Err(EngineError::Rejected(_) | EngineError::NotFound) => {
                    return Err(TokenError::grant(
                        "the session behind the refresh token has ended",
                    )
                    .into());
                }
                Err(err) => return Err(err.into()),
            };
            return Ok(self.tokens(client, &session, scopes, None, Some(successor))?);
        }
        self.end_family(&old.family, &old.subject, EndReason::TokenReuse)
            .await?;
        Err(TokenError::grant("the refresh token was already used").into())
    }

    /// An access token, an ID token (for `openid`) and the refresh token given, for `session`
    /// of `client`, signed with the client's algorithm.
    fn tokens(
        &self,
        client: &Client,
        session: &Session,
        scopes: &[String],
        nonce: Option<&str>,
        refresh_token: Option<String>,
    ) -> Result<TokenResponse, ProviderError> {
        let keys = self.keys();
        let alg = self.id_token_alg(Some(client));
        let now = self.engine.now();
        let iat = seconds(now);
        let sso = sso_of(session);
        let auth_time = session
            .data
            .get("auth_time")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| seconds(session.authenticated_at));
        let acr = Some(acr_of_level(session.auth.level.max(1)));
        let access_lifetime = self.settings.access_token_lifetime.as_secs();
        let access = AccessTokenClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.issuer.clone(),
            sub: session.subject.clone(),
            client_id: session.application.as_str().to_owned(),
            exp: iat + i64::try_from(access_lifetime).unwrap_or(i64::MAX),
            iat,
            jti: PublicId::generate("at_", &*self.random).as_str().to_owned(),
            scope: scopes.join(" "),
            sid: sso.as_str().to_owned(),
            ses: session.id.as_str().to_owned(),
            auth_time,
            acr: acr.clone(),
            amr: session.auth.methods.clone(),
        };
        let access_token = keys.sign(alg, ACCESS_TOKEN_TYPE, &access)?;
        let id_token = if scopes.iter().any(|s| s == "openid") {
            let claims = IdTokenClaims {
                iss: self.settings.issuer.clone(),
                sub: session.subject.clone(),
                aud: session.application.as_str().to_owned(),
                azp: session.application.as_str().to_owned(),
                exp: iat
                    + i64::try_from(self.settings.id_token_lifetime.as_secs()).unwrap_or(i64::MAX),
                iat,
                auth_time,
                sid: sso.as_str().to_owned(),
                nonce: nonce.map(str::to_owned),
                acr,
                amr: session.auth.methods.clone(),
                at_hash: Some(token_hash_claim(alg, &access_token)),
                profile: serde_json::Map::new(),
            };
            Some(keys.sign(alg, ID_TOKEN_TYPE, &claims)?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: access_lifetime,
            id_token,
            refresh_token,
            scope: scopes.join(" "),
        })
    }

    /// The claims of a live access token: signed by us, of our issuer and audience, not
    /// expired, and its session still live.
    pub async fn access_token_claims(
        &self,
        token: &str,
    ) -> Result<Option<AccessTokenClaims>, ProviderError> {
        let Ok(claims) = self
            .keys()
            .verify::<AccessTokenClaims>(token, ACCESS_TOKEN_TYPE)
        else {
            return Ok(None);
        };
        let now = seconds(self.engine.now());
        if claims.iss != self.settings.issuer
            || claims.aud != self.settings.issuer
            || claims.exp <= now
        {
            return Ok(None);
        }
        let live = match self
            .engine
            .validate_by_id(
                &PublicId::from_string(claims.ses.clone()),
                false,
                &Self::acting_for(&claims.sub),
            )
            .await
        {
            Ok(_) => true,
            Err(EngineError::Rejected(_) | EngineError::NotFound) => false,
            Err(err) => return Err(err.into()),
        };
        Ok(live.then_some(claims))
    }

    /// The userinfo response (OpenID Connect Core §5.3) for a live access token.
    pub async fn userinfo(&self, token: &str) -> Result<Option<Value>, ProviderError> {
        let Some(claims) = self.access_token_claims(token).await? else {
            return Ok(None);
        };
        let mut info = serde_json::Map::new();
        info.insert("sub".into(), Value::String(claims.sub.clone()));
        if claims.scope.split(' ').any(|s| s == "profile") {
            let user = self.accounts.by_id(&claims.sub).await?;
            info.insert(
                "preferred_username".into(),
                Value::String(user.username.clone()),
            );
            info.insert("name".into(), Value::String(user.username));
        }
        Ok(Some(Value::Object(info)))
    }

    /// The person's username, the human-readable identifier of introspection (RFC 7662 §2.2);
    /// `None` for a subject with no account here.
    async fn username_of(&self, subject: &str) -> Result<Option<String>, ProviderError> {
        match self.accounts.by_id(subject).await {
            Ok(user) => Ok(Some(user.username)),
            Err(portcullis_core::AccountError::NotFound) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Introspection (RFC 7662) by `app`: only its own tokens are active to it, and nothing
    /// but `active: false` is told of any other.
    pub async fn introspect(&self, app: &Application, token: &str) -> Result<Value, ProviderError> {
        let inactive = json!({ "active": false });
        if let Some(claims) = self.access_token_claims(token).await? {
            if claims.client_id != app.id.as_str() {
                return Ok(inactive);
            }
            let username = self.username_of(&claims.sub).await?;
            return Ok(with_username(
                json!({
                    "active": true,
                    // RFC 7662 §2.2: the token type of RFC 6749 §5.1.
                    "token_type": "Bearer",
                    "scope": claims.scope,
                    "client_id": claims.client_id,
                    "sub": claims.sub,
                    "aud": claims.aud,
                    "iss": claims.iss,
                    "exp": claims.exp,
                    "iat": claims.iat,
                    "jti": claims.jti,
                    "sid": claims.sid,
                }),
                username,
            ));
        }
        let Ok(hash) = Token::hash_presented(TokenKind::RefreshToken, token) else {
            return Ok(inactive);
        };
        let Some(record) = self.stores.refresh_tokens.refresh_token(&hash).await? else {
            return Ok(inactive);
        };
        let now = self.engine.now();
        if record.client != app.id || record.rotated.is_some() || record.expires_at <= now {
            return Ok(inactive);
        }
        let session = match self
            .engine
            .validate_by_id(&record.family, false, &Self::acting_for(&record.subject))
            .await
        {
            Ok(session) => session,
            Err(EngineError::Rejected(_) | EngineError::NotFound) => return Ok(inactive),
            Err(err) => return Err(err.into()),
        };
        let username = self.username_of(&record.subject).await?;
        Ok(with_username(
            json!({
                "active": true,
                "token_type": "refresh_token",
                "scope": record.scopes.join(" "),
                "client_id": record.client.as_str(),
                "sub": record.subject,
                "iss": self.settings.issuer,
                "exp": seconds(record.expires_at),
                "iat": seconds(record.issued_at),
                "sid": sso_of(&session).as_str(),
            }),
            username,
        ))
    }

    /// Revocation (RFC 7009) by `app`: a refresh or access token of its own ends the client's
    /// session it belongs to with every token of it; anything else changes nothing, and the
    /// answer is the same.
    pub async fn revoke(&self, app: &Application, token: &str) -> Result<(), ProviderError> {
        if let Ok(hash) = Token::hash_presented(TokenKind::RefreshToken, token) {
            if let Some(record) = self.stores.refresh_tokens.refresh_token(&hash).await?
                && record.client == app.id
            {
                self.end_family(&record.family, &record.subject, EndReason::Logout)
                    .await?;
            }
            return Ok(());
        }
        if let Some(claims) = self.access_token_claims(token).await?
            && claims.client_id == app.id.as_str()
        {
            self.end_family(
                &PublicId::from_string(claims.ses),
                &claims.sub,
                EndReason::Logout,
            )
            .await?;
        }
        Ok(())
    }
}

/// `answer` with `username` when there is one (RFC 7662 §2.2: the member is optional).
fn with_username(mut answer: Value, username: Option<String>) -> Value {
    if let (Some(name), Some(members)) = (username, answer.as_object_mut()) {
        members.insert("username".into(), Value::String(name));
    }
    answer
}
