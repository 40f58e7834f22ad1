//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): checking the request. A
//! redirect afterwards is allowed only to a post-logout URI the client registered, and only
//! when an ID token we issued vouches for the client (OIDC-RPL-7); anything that does not check
//! out gets no redirect at all (OIDC-RPL-9).

use std::collections::BTreeSet;

use portcullis_core::{AppId, PublicId, Session, Store};
use serde::Deserialize;

use crate::authorize::{ProviderOr, with_query};
use crate::claims::{ID_TOKEN_TYPE, IdTokenClaims};
use crate::provider::{Provider, ProviderError};

/// The parameters of a logout request, as received (query or form).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LogoutParams {
    /// An ID token we issued to the client, expired or not.
    pub id_token_hint: Option<String>,
    /// Who the client thinks is signed in (accepted, not relied on).
    pub logout_hint: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// Where to go afterwards.
    pub post_logout_redirect_uri: Option<String>,
    /// Returned unchanged on that redirect.
    pub state: Option<String>,
    /// Accepted and ignored.
    pub ui_locales: Option<String>,
    /// Present (any value, `?federated` too): the client asks that an SSO session started at
    /// an upstream provider end there as well (the name Auth0 gives it).
    pub federated: Option<String>,
}

/// A checked logout request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    /// The client, when the request names one we know.
    pub client: Option<AppId>,
    /// The SSO session the ID token names (`sid`).
    pub sid: Option<PublicId>,
    /// The person the ID token names (`sub`).
    pub subject: Option<String>,
    /// Where the browser goes afterwards, `state` included; only when vouched for.
    pub redirect: Option<String>,
}

/// Why a logout request is refused (no redirect; the person sees why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LogoutError(pub &'static str);

impl<S: Store> Provider<S> {
    /// Checks a logout request.
    pub async fn check_logout(
        &self,
        params: &LogoutParams,
    ) -> Result<LogoutRequest, ProviderOr<LogoutError>> {
        let refuse = |why| Err(ProviderOr::Protocol(LogoutError(why)));
        let hint = match params.id_token_hint.as_deref().filter(|h| !h.is_empty()) {
            None => None,
            Some(token) => {
                // Expired hints are fine (OIDC-RPL-3): only the signature and issuer count.
                let Ok(claims) = self.keys().verify::<IdTokenClaims>(token, ID_TOKEN_TYPE) else {
                    return refuse(
                        "The sign-out link carries an ID token that was not issued here.",
                    );
                };
                if claims.iss != self.settings.issuer {
                    return refuse("The sign-out link carries an ID token of another issuer.");
                }
                Some(claims)
            }
        };
        if let (Some(hint), Some(client_id)) = (&hint, &params.client_id)
            && hint.aud != *client_id
        {
            return refuse("The sign-out link names a client its ID token was not issued to.");
        }
        let client_id = hint
            .as_ref()
            .map(|h| h.aud.clone())
            .or_else(|| params.client_id.clone());
        let client = match &client_id {
            Some(id) => match self.client(id).await? {
                Some(found) => Some(found),
                None => return refuse("The application that sent you here is not registered."),
            },
            None => None,
        };
        let redirect = match (&params.post_logout_redirect_uri, &client) {
            (None, _) => None,
            (Some(_), None) => {
                return refuse(
                    "The sign-out link asks to return to an application it does not name.",
                );
            }
            (Some(uri), Some((_, registration))) => {
                if !registration.returns_after_logout_to(uri) {
                    return refuse(
                        "The application asked to send you back to an address it did not register.",
                    );
                }
                // Without an ID token of ours nothing vouches for the client: no redirect.
                hint.as_ref().map(|_| {
                    let state: Vec<(&str, &str)> =
                        params.state.iter().map(|s| ("state", s.as_str())).collect();
                    with_query(uri, &state)
                })
            }
        };
        Ok(LogoutRequest {
            client: client.map(|(app, _)| app.id),
            sid: hint.as_ref().map(|h| PublicId::from_string(h.sid.clone())),
            subject: hint.map(|h| h.sub),
            redirect,
        })
    }
}

impl<S: Store> Provider<S> {
    /// The front-channel logout pages to load when `sso` ends (OpenID Connect Front-Channel
    /// Logout): one per client with a session under it that registered one (OIDC-FCL-5), each
    /// with `iss` and `sid` (OIDC-FCL-2). Asked before the SSO session ends, while its children
    /// still say which clients the person used.
    pub async fn frontchannel_logout_uris(
        &self,
        sso: &Session,
    ) -> Result<Vec<String>, ProviderError> {
        let sessions = self
            .engine
            .list_subject(&sso.subject, true, &Self::acting_for(&sso.subject))
            .await?;
        let clients: BTreeSet<AppId> = sessions
            .iter()
            .filter(|s| s.parent.as_ref() == Some(&sso.id))
            .map(|s| s.application.clone())
            .collect();
        let mut uris = Vec::new();
        for id in clients {
            if let Some((_, client)) = self.client(id.as_str()).await?
                && let Some(uri) = &client.frontchannel_logout_uri
            {
                uris.push(with_query(
                    uri,
                    &[("iss", &self.settings.issuer), ("sid", sso.id.as_str())],
                ));
            }
        }
        Ok(uris)
    }
}
