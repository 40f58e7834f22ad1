//! The rules of signing in through an upstream provider, shared by the pages and the
//! back-channel endpoint: which account a person at an upstream is (by issuer and subject,
//! never by e-mail), what their SSO session claims, what it remembers of the upstream session,
//! and which SSO sessions an upstream logout ends.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::oidc::{
    FederatedIdentity, IdentityStore, ReplayStore, Unlinked, UpstreamSession,
};
use portcullis_core::{
    AccountError, Accounts, Acting, Actor, AuthContext, EndReason, Engine, EngineError, EventKind,
    Keyring, Origin, PORTCULLIS_APP, Principal, RandomSource, SSO_POLICY, SealError, Session,
    Store, StoreError, Timestamp, TokenHash, User,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::logout::UpstreamLogout;
use crate::provider::{Upstream, UpstreamSignIn};

/// The key of the SSO session's data that holds its [`UpstreamLink`].
pub const UPSTREAM_KEY: &str = "upstream";

/// What an SSO session started upstream remembers of it (in the session's data, so it lives
/// and ends with the session): which upstream session vouches for it, and how the person
/// authenticated there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamLink {
    /// The provider's id (`corp`).
    pub provider: String,
    /// Its issuer.
    pub issuer: String,
    /// The person's `sub` there.
    pub subject: String,
    /// The upstream session (`sid`), when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the person authenticated there, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<Timestamp>,
    /// Its `acr`, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    /// Its `amr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// The upstream's ID token: the `id_token_hint` of a logout there.
    pub id_token: String,
}

impl UpstreamLink {
    /// The link an SSO session's data holds, if it was started upstream.
    pub fn of(session: &Session) -> Option<Self> {
        serde_json::from_value(session.data.get(UPSTREAM_KEY)?.clone()).ok()
    }
}

/// Why a person an upstream vouches for has no account to sign in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAccount {
    /// Their account is disabled.
    Disabled,
    /// They have none, and the provider may not create one.
    NotAllowed,
    /// They have none, and the name it would take belongs to an account already: they must
    /// sign in to that account with its own credentials to link it (proving both).
    NameTaken(String),
}

/// What resolving an account can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A store could not answer: fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The account service failed.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The configured upstream providers and what they share.
pub struct Federation {
    upstreams: Vec<Arc<Upstream>>,
    identities: Arc<dyn IdentityStore>,
    replays: Arc<dyn ReplayStore>,
    keyring: Keyring,
    random: Arc<dyn RandomSource>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// The providers `upstreams`, linking accounts in `identities`; `replays` remembers the
    /// answers and logout tokens already taken; `keyring` seals what a browser keeps of a
    /// sign-in in progress.
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        identities: Arc<dyn IdentityStore>,
        replays: Arc<dyn ReplayStore>,
        keyring: Keyring,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            upstreams,
            identities,
            replays,
            keyring,
            random,
        }
    }

    /// The injected randomness (`state`, `nonce`, PKCE verifiers, assertion ids).
    pub fn random(&self) -> &dyn RandomSource {
        &*self.random
    }

    /// Seals `text` for `purpose` (what a browser keeps of a sign-in in progress).
    pub fn seal(&self, text: &str, purpose: &str) -> String {
        self.keyring.seal(text, purpose, &*self.random)
    }

    /// Opens what [`Federation::seal`] sealed for `purpose`.
    pub fn open(&self, sealed: &str, purpose: &str) -> Result<String, SealError> {
        self.keyring.open(sealed, purpose)
    }

    /// Every provider, in configuration order.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The provider `id`.
    pub fn upstream(&self, id: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.settings().id == id)
    }

    /// The provider whose people have the address `email` (home-realm discovery).
    pub fn for_email(&self, email: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|u| u.settings().serves_email(email))
    }

    /// The identity store.
    pub fn identities(&self) -> &Arc<dyn IdentityStore> {
        &self.identities
    }

    /// Records that `what` (an answer's `state`, a logout token's `jti`) of `provider` was
    /// taken, remembered until `until`: `false` when it was taken before, on any node.
    pub async fn first_use(
        &self,
        provider: &str,
        what: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let id = Sha256::new()
            .chain_update(b"portcullis upstream v1\0")
            .chain_update(provider.as_bytes())
            .chain_update(b"\0")
            .chain_update(what.as_bytes())
            .finalize();
        self.replays
            .first_use(&TokenHash(id.into()), now, until)
            .await
    }

    /// The account of the person `signed_in` through `upstream`: the one linked to them, or
    /// (when the provider allows) a new one without a password, linked at once.
    pub async fn account(
        &self,
        accounts: &Accounts,
        upstream: &Upstream,
        signed_in: &UpstreamSignIn,
        origin: Origin<'_>,
    ) -> Result<Result<User, NoAccount>, FederationError> {
        // Portcullis acts on the provider's word; the event's detail names the provider.
        let actor = Actor::system();
        let by = Acting {
            actor: &actor,
            origin,
        };
        if let Some(linked) = self
            .identities
            .identity(&signed_in.issuer, &signed_in.subject)
            .await?
        {
            return match accounts.by_id(&linked.user_id).await {
                Ok(user) if user.disabled => Ok(Err(NoAccount::Disabled)),
                Ok(user) => Ok(Ok(user)),
                // The account was deleted under its link: as if there were none.
                Err(AccountError::NotFound) => Ok(Err(NoAccount::NotAllowed)),
                Err(err) => Err(err.into()),
            };
        }
        let settings = upstream.settings();
        if !settings.create_accounts {
            return Ok(Err(NoAccount::NotAllowed));
        }
        let username = signed_in
            .username
            .clone()
            .or_else(|| signed_in.email.clone())
            .unwrap_or_else(|| format!("{}-{}", settings.id, signed_in.subject));
        // A name that is not one here (too long, odd characters) falls back to one made of
        // the provider and the subject.
        let created = match accounts.add_federated_user(&username, by).await {
            Err(AccountError::InvalidUsername) => {
                let fallback = format!("{}-{}", settings.id, signed_in.subject);
                (accounts.add_federated_user(&fallback, by).await, fallback)
            }
            other => (other, username),
        };
        let user = match created {
            (Ok(user), _) => user,
            (Err(AccountError::Exists), name) => return Ok(Err(NoAccount::NameTaken(name))),
            (Err(err), _) => return Err(err.into()),
        };
        let identity = FederatedIdentity {
            user_id: user.id.clone(),
            provider: settings.id.clone(),
            issuer: signed_in.issuer.clone(),
            subject: signed_in.subject.clone(),
            linked_at: user.created_at,
        };
        if !self.identities.link(&identity).await? {
            // Another sign-in of the same person won the race and made its account: that one
            // is theirs (the account made here stays unused and unlinked).
            return match self
                .identities
                .identity(&signed_in.issuer, &signed_in.subject)
                .await?
            {
                Some(linked) => Ok(Ok(accounts.by_id(&linked.user_id).await?)),
                None => Ok(Err(NoAccount::NotAllowed)),
            };
        }
        accounts
            .record_identity(EventKind::UserIdentityLinked, &user, &settings.id, by)
            .await;
        Ok(Ok(user))
    }

    /// Links the signed-in account `user` to the person `signed_in` through `upstream`: the
    /// person proved both (signed in here, then there). `false` when that upstream person is
    /// linked already, to this account or another.
    pub async fn link_account(
        &self,
        accounts: &Accounts,
        user: &User,
        upstream: &Upstream,
        signed_in: &UpstreamSignIn,
        origin: Origin<'_>,
    ) -> Result<bool, FederationError> {
        let identity = FederatedIdentity {
            user_id: user.id.clone(),
            provider: upstream.settings().id.clone(),
            issuer: signed_in.issuer.clone(),
            subject: signed_in.subject.clone(),
            linked_at: upstream.now(),
        };
        if !self.identities.link(&identity).await? {
            return Ok(false);
        }
        let actor = Actor::user(&user.id);
        accounts
            .record_identity(
                EventKind::UserIdentityLinked,
                user,
                &identity.provider,
                Acting {
                    actor: &actor,
                    origin,
                },
            )
            .await;
        Ok(true)
    }

    /// Removes the account's link to the person `subject` at `issuer`, never the last way in:
    /// an account without a password keeps its last link.
    pub async fn unlink_account(
        &self,
        accounts: &Accounts,
        user: &User,
        issuer: &str,
        subject: &str,
        origin: Origin<'_>,
    ) -> Result<Unlinked, FederationError> {
        let linked = self.identities.identity(issuer, subject).await?;
        let unlinked = self
            .identities
            .unlink(&user.id, issuer, subject, !user.has_password())
            .await?;
        if let (Unlinked::Done, Some(linked)) = (unlinked, linked) {
            let actor = Actor::user(&user.id);
            accounts
                .record_identity(
                    EventKind::UserIdentityUnlinked,
                    user,
                    &linked.provider,
                    Acting {
                        actor: &actor,
                        origin,
                    },
                )
                .await;
        }
        Ok(unlinked)
    }

    /// How an SSO session started through `upstream` authenticated the person: the upstream's
    /// `amr` (`fed` when it says none), and the assurance its `acr` claims, the weakest when it
    /// claims none, never more than the provider is trusted for.
    pub fn auth_context(upstream: &Upstream, signed_in: &UpstreamSignIn) -> AuthContext {
        let claimed = signed_in
            .acr
            .as_deref()
            .and_then(|acr| acr.strip_prefix("aal")?.parse::<u8>().ok())
            .unwrap_or(1);
        let mut methods: Vec<String> = signed_in
            .amr
            .iter()
            .filter(|m| !m.is_empty() && m.len() <= 64)
            .take(15)
            .cloned()
            .collect();
        if methods.is_empty() {
            methods.push("fed".into());
        }
        AuthContext {
            methods,
            level: claimed.clamp(1, upstream.settings().assurance.clamp(1, 3)),
        }
    }

    /// What the SSO session remembers of `signed_in`.
    pub fn link(upstream: &Upstream, signed_in: &UpstreamSignIn) -> UpstreamLink {
        UpstreamLink {
            provider: upstream.settings().id.clone(),
            issuer: signed_in.issuer.clone(),
            subject: signed_in.subject.clone(),
            sid: signed_in.sid.clone(),
            auth_time: signed_in.auth_time,
            acr: signed_in.acr.clone(),
            amr: signed_in.amr.clone(),
            id_token: signed_in.id_token.clone(),
        }
    }

    /// Keeps, for `lasts` from now, which person the upstream session of `signed_in` is (when
    /// its ID token names one), so that a logout token naming only that session finds them.
    pub async fn remember_session(
        &self,
        upstream: &Upstream,
        signed_in: &UpstreamSignIn,
        lasts: Duration,
    ) -> Result<(), FederationError> {
        let Some(sid) = &signed_in.sid else {
            return Ok(());
        };
        let now = upstream.now();
        let session = UpstreamSession {
            issuer: upstream.settings().issuer.clone(),
            sid: sid.clone(),
            subject: signed_in.subject.clone(),
            until: now.plus(lasts),
        };
        self.identities.remember_session(&session, now).await?;
        Ok(())
    }

    /// Ends every live SSO session `logout` names (the upstream session `sid`, or every one the
    /// person `sub` started there), with reason `upstream_logout`; their applications' sessions
    /// end with them. Answers how many ended. A person who is not linked here has none; a
    /// session never kept ([`Federation::remember_session`]) names nobody.
    pub async fn end_vouched_sessions<S: Store>(
        &self,
        engine: &Engine<S>,
        upstream: &Upstream,
        logout: &UpstreamLogout,
    ) -> Result<usize, FederationError> {
        let issuer = &upstream.settings().issuer;
        // A token naming only the session finds its person through what the sign-in kept.
        let subject = match (&logout.subject, &logout.sid) {
            (Some(subject), _) => subject.clone(),
            (None, Some(sid)) => match self
                .identities
                .session_subject(issuer, sid, upstream.now())
                .await?
            {
                Some(subject) => subject,
                None => return Ok(0),
            },
            (None, None) => return Ok(0),
        };
        let subject = &subject;
        let Some(linked) = self.identities.identity(issuer, subject).await? else {
            return Ok(0);
        };
        let operator = Principal {
            actor: Actor::system(),
            ..Principal::operator()
        };
        let mut ended = 0;
        for session in engine
            .list_subject(&linked.user_id, true, &operator)
            .await?
        {
            if session.application.as_str() != PORTCULLIS_APP
                || session.policy != SSO_POLICY
                || !session.is_live()
            {
                continue;
            }
            let Some(link) = UpstreamLink::of(&session) else {
                continue;
            };
            let same_session = match &logout.sid {
                Some(sid) => link.sid.as_deref() == Some(sid.as_str()),
                None => true,
            };
            if link.issuer == *issuer && link.subject == *subject && same_session {
                engine
                    .end(&session.id, EndReason::UpstreamLogout, &operator)
                    .await?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}
