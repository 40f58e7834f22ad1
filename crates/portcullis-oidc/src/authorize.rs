//! The authorization endpoint's rules (OpenID Connect Core §3.1.2, RFC 6749 §4.1, RFC 9700):
//! checking a request, deciding whether the person must sign in or consent, and issuing the
//! code. Errors found before the redirect URI is known to be the client's are shown to the
//! person, never redirected (RFC 6749 §4.1.2.1).

use std::collections::BTreeSet;
use std::time::Duration;

use portcullis_core::oidc::{AuthorizationCode, CODE_LIFETIME, Consent, GrantType};
use portcullis_core::{AppId, Session, Store, Timestamp, Token, TokenKind};
use serde::{Deserialize, Serialize};

use crate::claims::{ID_TOKEN_TYPE, IdTokenClaims};
use crate::pkce::is_code_challenge;
use crate::provider::{Provider, ProviderError};

/// The query of an authorization request, as received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct AuthorizationParams {
    /// `client_id`.
    pub client_id: Option<String>,
    /// `redirect_uri`.
    pub redirect_uri: Option<String>,
    /// `response_type` (only `code`).
    pub response_type: Option<String>,
    /// `response_mode` (only `query`).
    pub response_mode: Option<String>,
    /// `scope`, space-separated.
    pub scope: Option<String>,
    /// `state`, returned unchanged.
    pub state: Option<String>,
    /// `nonce`, copied into the ID token.
    pub nonce: Option<String>,
    /// `code_challenge` (PKCE).
    pub code_challenge: Option<String>,
    /// `code_challenge_method` (only `S256`).
    pub code_challenge_method: Option<String>,
    /// `prompt`, space-separated.
    pub prompt: Option<String>,
    /// `max_age` in seconds.
    pub max_age: Option<String>,
    /// `acr_values`, space-separated.
    pub acr_values: Option<String>,
    /// `login_hint`.
    pub login_hint: Option<String>,
    /// `id_token_hint`: an ID token we issued to this client, naming who it expects.
    pub id_token_hint: Option<String>,
    /// `request` (request objects are not supported).
    pub request: Option<String>,
    /// `request_uri` (not supported).
    pub request_uri: Option<String>,
}

/// A `prompt` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Show nothing; fail if anything is needed.
    None,
    /// Authenticate again.
    Login,
    /// Ask for consent again.
    Consent,
    /// Let the person choose an account (one account per browser here: sign in again).
    SelectAccount,
}

/// A checked authorization request: what the rest of the flow carries (sealed in the browser
/// while the person signs in), typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    /// The client.
    pub client: AppId,
    /// Its registered redirect URI named in the request.
    pub redirect_uri: String,
    /// The scopes asked for and allowed to the client, in the order asked.
    pub scopes: Vec<String>,
    /// `state`.
    pub state: Option<String>,
    /// `nonce`.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub code_challenge: Option<String>,
    /// `prompt` values.
    pub prompt: BTreeSet<Prompt>,
    /// `max_age`.
    pub max_age: Option<u64>,
    /// The assurance levels asked for (`aal1`, `aal2`), most wanted first.
    pub acr_values: Vec<String>,
    /// `login_hint`.
    pub login_hint: Option<String>,
    /// When the request arrived: a sign-in after it satisfies `prompt=login` and `max_age`.
    pub received_at: Timestamp,
    /// The person an `id_token_hint` names: tokens are never issued for anyone else
    /// (OIDC-CORE-7).
    #[serde(default)]
    pub expected_subject: Option<String>,
}

/// An error answer to an authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: tell the person, redirect nowhere.
    NoRedirect(&'static str),
    /// An error response to the client (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6).
    Redirect {
        /// Where.
        redirect_uri: String,
        /// The error code.
        error: &'static str,
        /// Why, for the developer.
        description: &'static str,
        /// The request's `state`.
        state: Option<String>,
    },
}

/// What must happen before a code can be issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody is signed in, or the request wants a fresh or stronger authentication.
    SignIn,
    /// The person must allow these scopes.
    Consent(Vec<String>),
    /// Issue the code.
    Issue,
}

const MAX_STATE: usize = 2048;
const MAX_NONCE: usize = 512;
/// `login_hint` and `acr_values` each: with `state` and `nonce` the sealed request stays far
/// under a browser's 4 KiB cookie.
const MAX_HINT: usize = 256;

/// The `acr` of a session's assurance level.
pub fn acr_of_level(level: u8) -> String {
    format!("aal{level}")
}

fn level_of_acr(acr: &str) -> Option<u8> {
    acr.strip_prefix("aal")?.parse().ok()
}

impl AuthorizationRequest {
    /// Where the browser goes with `params` (a code or an error), with `iss` (RFC 9207).
    pub fn response_url(redirect_uri: &str, issuer: &str, params: &[(&str, &str)]) -> String {
        let mut all = params.to_vec();
        all.push(("iss", issuer));
        with_query(redirect_uri, &all)
    }

    fn error(&self, error: &'static str, description: &'static str) -> AuthorizeError {
        AuthorizeError::Redirect {
            redirect_uri: self.redirect_uri.clone(),
            error,
            description,
            state: self.state.clone(),
        }
    }
}

impl<S: Store> Provider<S> {
    /// Checks an authorization request against the client's registration.
    pub async fn check_authorization(
        &self,
        params: &AuthorizationParams,
    ) -> Result<AuthorizationRequest, ProviderOr<AuthorizeError>> {
        let client_id = params
            .client_id
            .as_deref()
            .ok_or(AuthorizeError::NoRedirect("The request names no client."))?;
        let (app, client) = self
            .client(client_id)
            .await?
            .ok_or(AuthorizeError::NoRedirect(
                "The application that sent you here is not registered.",
            ))?;
        let redirect_uri = params
            .redirect_uri
            .as_deref()
            .filter(|uri| client.redirects_to(uri))
            .ok_or(AuthorizeError::NoRedirect(
                "The application asked to send you back to an address it did not register.",
            ))?;
        let mut request = AuthorizationRequest {
            client: app.id.clone(),
            redirect_uri: redirect_uri.to_owned(),
            scopes: Vec::new(),
            state: params.state.clone().filter(|s| !s.is_empty()),
            nonce: params.nonce.clone().filter(|n| !n.is_empty()),
            code_challenge: None,
            prompt: BTreeSet::new(),
            max_age: None,
            acr_values: Vec::new(),
            login_hint: params.login_hint.clone(),
            received_at: self.engine.now(),
            expected_subject: None,
        };
        let fail = |request: &AuthorizationRequest, error, description| {
            Err(ProviderOr::Protocol(request.error(error, description)))
        };
        if request.state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
            request.state = None;
            return fail(&request, "invalid_request", "state is too long");
        }
        if params.request.is_some() {
            return fail(
                &request,
                "request_not_supported",
                "request objects are not supported",
            );
        }
        if params.request_uri.is_some() {
            return fail(
                &request,
                "request_uri_not_supported",
                "request_uri is not supported",
            );
        }
        // RFC 6749 §4.1.2.1: a parameter missing is `invalid_request`; one we do not support,
        // `unsupported_response_type`.
        match params.response_type.as_deref() {
            Some("code") => {}
            None => return fail(&request, "invalid_request", "response_type is missing"),
            Some(_) => {
                return fail(
                    &request,
                    "unsupported_response_type",
                    "only response_type=code is supported",
                );
            }
        }
        if !matches!(params.response_mode.as_deref(), None | Some("query")) {
            return fail(
                &request,
                "invalid_request",
                "only response_mode=query is supported",
            );
        }
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return fail(
                &request,
                "unauthorized_client",
                "the client may not use the authorization code grant",
            );
        }
        let asked: Vec<&str> = params
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .collect();
        if !asked.contains(&"openid") {
            return fail(&request, "invalid_scope", "the scope must include openid");
        }
        for scope in asked {
            let allowed = client.scopes.contains(scope)
                && (scope != "offline_access"
                    || client.grant_types.contains(&GrantType::RefreshToken));
            if allowed && !request.scopes.iter().any(|s| s == scope) {
                request.scopes.push(scope.to_owned());
            }
        }
        if request.nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE) {
            return fail(&request, "invalid_request", "nonce is too long");
        }
        match (
            params.code_challenge.as_deref(),
            params.code_challenge_method.as_deref(),
        ) {
            // ASVS5-10.4.6 and OAuth 2.1: every client, confidential ones too (PKCE also stops
            // a stolen code from being injected into the client's own session).
            (None, _) => {
                return fail(
                    &request,
                    "invalid_request",
                    "a PKCE code_challenge (S256) is required",
                );
            }
            (Some(challenge), Some("S256")) if is_code_challenge(challenge) => {
                request.code_challenge = Some(challenge.to_owned());
            }
            (Some(_), Some("S256")) => {
                return fail(&request, "invalid_request", "code_challenge is malformed");
            }
            (Some(_), _) => {
                return fail(
                    &request,
                    "invalid_request",
                    "code_challenge_method must be S256",
                );
            }
        }
        for value in params.prompt.as_deref().unwrap_or_default().split(' ') {
            let prompt = match value {
                "" => continue,
                "none" => Prompt::None,
                "login" => Prompt::Login,
                "consent" => Prompt::Consent,
                "select_account" => Prompt::SelectAccount,
                _ => return fail(&request, "invalid_request", "unknown prompt value"),
            };
            request.prompt.insert(prompt);
        }
        if request.prompt.contains(&Prompt::None) && request.prompt.len() > 1 {
            return fail(
                &request,
                "invalid_request",
                "prompt=none cannot be combined with other values",
            );
        }
        if let Some(max_age) = params.max_age.as_deref() {
            match max_age.parse() {
                Ok(seconds) => request.max_age = Some(seconds),
                Err(_) => return fail(&request, "invalid_request", "max_age is not a number"),
            }
        }
        if params
            .login_hint
            .as_ref()
            .is_some_and(|h| h.len() > MAX_HINT)
            || params
                .acr_values
                .as_ref()
                .is_some_and(|a| a.len() > MAX_HINT)
        {
            return fail(
                &request,
                "invalid_request",
                "login_hint or acr_values is too long",
            );
        }
        request.acr_values = params
            .acr_values
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(hint) = params.id_token_hint.as_deref().filter(|h| !h.is_empty()) {
            // Expired hints are fine: only who issued it, to whom, and about whom count.
            match self.keys().verify::<IdTokenClaims>(hint, ID_TOKEN_TYPE) {
                Ok(claims)
                    if claims.iss == self.settings.issuer && claims.aud == app.id.as_str() =>
                {
                    request.expected_subject = Some(claims.sub);
                }
                _ => {
                    return fail(
                        &request,
                        "invalid_request",
                        "id_token_hint is not an ID token issued here to this client",
                    );
                }
            }
        }
        Ok(request)
    }

    /// Whether `sso` (the browser's live SSO session, if any) lets a code be issued now, or
    /// what must happen first. With `prompt=none` whatever must happen is an error instead.
    pub async fn decide(
        &self,
        request: &AuthorizationRequest,
        sso: Option<&Session>,
    ) -> Result<Decision, ProviderOr<AuthorizeError>> {
        let interactive = !request.prompt.contains(&Prompt::None);
        let must = |decision: Decision, error| {
            if interactive {
                Ok(decision)
            } else {
                Err(ProviderOr::Protocol(
                    request.error(error, "the person must interact with Portcullis"),
                ))
            }
        };
        let Some(sso) = sso else {
            return must(Decision::SignIn, "login_required");
        };
        // OIDC-CORE-7: someone else is signed in here than the client expects. One account per
        // browser: without a prompt, `login_required`; with one, a page asks to sign out first.
        if request
            .expected_subject
            .as_ref()
            .is_some_and(|expected| *expected != sso.subject)
        {
            return Err(ProviderOr::Protocol(if interactive {
                AuthorizeError::NoRedirect(
                    "You are signed in with another account than the application expects. Sign out, then sign in with that account.",
                )
            } else {
                request.error("login_required", "another person is signed in")
            }));
        }
        let fresh = sso.authenticated_at >= request.received_at;
        let now = self.engine.now();
        let too_old = request
            .max_age
            .is_some_and(|max_age| sso.authenticated_at.until(now) > Duration::from_secs(max_age));
        let wants_login = request.prompt.contains(&Prompt::Login)
            || request.prompt.contains(&Prompt::SelectAccount);
        // A stronger level asked for and not reached yet: one more sign-in may reach it; after
        // that, the session's own level is answered (acr_values is a wish, not a condition).
        let weaker = request
            .acr_values
            .iter()
            .filter_map(|v| level_of_acr(v))
            .min()
            .is_some_and(|wanted| sso.auth.level < wanted);
        if !fresh && (wants_login || too_old || weaker) {
            return must(Decision::SignIn, "login_required");
        }
        let (_, client) = self
            .client(request.client.as_str())
            .await?
            .ok_or_else(|| request.error("unauthorized_client", "the client is gone"))?;
        let wants_consent = request.prompt.contains(&Prompt::Consent);
        let needs_asking = client.require_consent
            || request.scopes.iter().any(|s| s == "offline_access")
            || wants_consent;
        if needs_asking {
            let granted = self
                .stores
                .consents
                .consent(&sso.subject, &request.client)
                .await?
                .map(|c| c.scopes)
                .unwrap_or_default();
            let missing: Vec<String> = request
                .scopes
                .iter()
                .filter(|s| wants_consent || !granted.contains(*s))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return must(Decision::Consent(missing), "consent_required");
            }
        }
        Ok(Decision::Issue)
    }

    /// Records that the person allowed the request's scopes.
    pub async fn consent_to(
        &self,
        request: &AuthorizationRequest,
        subject: &str,
    ) -> Result<(), ProviderError> {
        self.stores
            .consents
            .grant_consent(Consent {
                subject: subject.to_owned(),
                client: request.client.clone(),
                scopes: request.scopes.iter().cloned().collect(),
                granted_at: self.engine.now(),
            })
            .await?;
        Ok(())
    }

    /// Issues a code for the request, vouched for by the SSO session `sso`, and answers where
    /// the browser goes with it.
    pub async fn issue_code(
        &self,
        request: &AuthorizationRequest,
        sso: &Session,
    ) -> Result<String, ProviderError> {
        let code = Token::generate(TokenKind::AuthorizationCode, &*self.random);
        let now = self.engine.now();
        self.stores
            .codes
            .add_code(AuthorizationCode {
                hash: code.hash(),
                client: request.client.clone(),
                subject: sso.subject.clone(),
                sso_session: sso.id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                scopes: request.scopes.clone(),
                nonce: request.nonce.clone(),
                code_challenge: request.code_challenge.clone(),
                auth_time: sso.authenticated_at,
                acr: Some(acr_of_level(sso.auth.level.max(1))),
                amr: sso.auth.methods.clone(),
                issued_at: now,
                expires_at: now.plus(CODE_LIFETIME),
                redeemed_for: None,
            })
            .await?;
        let mut params = vec![("code", code.expose())];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        Ok(AuthorizationRequest::response_url(
            &request.redirect_uri,
            &self.settings.issuer,
            &params,
        ))
    }

    /// Where the browser goes with `error`.
    pub fn error_url(&self, error: &AuthorizeError) -> Option<String> {
        match error {
            AuthorizeError::NoRedirect(_) => None,
            AuthorizeError::Redirect {
                redirect_uri,
                error,
                description,
                state,
            } => {
                let mut params = vec![("error", *error), ("error_description", *description)];
                if let Some(state) = state {
                    params.push(("state", state));
                }
                Some(AuthorizationRequest::response_url(
                    redirect_uri,
                    &self.settings.issuer,
                    &params,
                ))
            }
        }
    }
}

/// `uri` with `params` added to its query (a registered URI keeps the query it has).
pub(crate) fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return uri.to_owned();
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", query.finish())
}

/// A protocol answer, or the provider's own failure (the store is down: fail closed).
#[derive(Debug, thiserror::Error)]
pub enum ProviderOr<E> {
    /// The protocol's answer.
    #[error("protocol error")]
    Protocol(E),
    /// The provider could not work.
    #[error(transparent)]
    Failed(#[from] ProviderError),
}

impl From<AuthorizeError> for ProviderOr<AuthorizeError> {
    fn from(error: AuthorizeError) -> Self {
        Self::Protocol(error)
    }
}

impl<E> From<portcullis_core::StoreError> for ProviderOr<E> {
    fn from(error: portcullis_core::StoreError) -> Self {
        Self::Failed(error.into())
    }
}
