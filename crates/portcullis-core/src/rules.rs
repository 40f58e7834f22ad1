//! The rules that join accounts and sessions, in one place for every caller: the admin API,
//! the account pages and (next) the OpenID Connect endpoints call these, never their own copy.

use std::time::Duration;

use crate::account::{AccountError, Accounts, Acting, User};
use crate::application::Principal;
use crate::engine::{Engine, EngineError};
use crate::event::Actor;
use crate::session::{EndReason, Session};
use crate::store::Store;
use crate::token::SessionId;

/// The elevation scope that account changes (password, second factor) accept.
pub const ACCOUNT_SCOPE: &str = "account";

/// The subject of a person's sign-ins in progress (sessions of [`crate::SIGN_IN_POLICY`]):
/// apart from their sessions, so that a half-finished sign-in reaches nothing.
pub fn sign_in_subject(user_id: &str) -> String {
    format!("sign-in:{user_id}")
}

/// What an account rule can fail with; each keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// From the accounts.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// From the session engine.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The account rules over one engine and one set of accounts.
pub struct AccountRules<'a, S> {
    engine: &'a Engine<S>,
    accounts: &'a Accounts,
}

impl<S> std::fmt::Debug for AccountRules<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRules").finish_non_exhaustive()
    }
}

impl<'a, S: Store> AccountRules<'a, S> {
    /// The rules over `engine` and `accounts`.
    pub fn new(engine: &'a Engine<S>, accounts: &'a Accounts) -> Self {
        Self { engine, accounts }
    }

    /// Sets a new password. With `end_others`, every other session of the person ends with
    /// `password_changed`, in every application and the SSO session, except `keep` (the session
    /// that changed it). Returns the account and how many sessions ended.
    pub async fn change_password<'b>(
        &self,
        user_id: &str,
        password: &str,
        end_others: bool,
        keep: Option<&SessionId>,
        by: impl Into<Acting<'b>>,
    ) -> Result<(User, usize), RuleError> {
        let by = by.into();
        let actor = by.actor;
        let user = self.accounts.set_password(user_id, password, by).await?;
        let ended = if end_others {
            self.end_everywhere(&user.id, keep, EndReason::PasswordChanged, actor)
                .await?
        } else {
            0
        };
        Ok((user, ended))
    }

    /// Disables or enables an account; disabling ends every session of it at once
    /// (`account_disabled`, ASVS5-7.4.2).
    pub async fn set_disabled<'b>(
        &self,
        user_id: &str,
        disabled: bool,
        by: impl Into<Acting<'b>>,
    ) -> Result<(User, usize), RuleError> {
        let by = by.into();
        let actor = by.actor;
        let user = self.accounts.set_disabled(user_id, disabled, by).await?;
        let ended = if disabled {
            self.end_everywhere(&user.id, None, EndReason::AccountDisabled, actor)
                .await?
        } else {
            0
        };
        Ok((user, ended))
    }

    /// After a change of the second factor (or another security action): every other session
    /// of the person ends with `security_action`.
    pub async fn after_security_action(
        &self,
        user_id: &str,
        keep: &SessionId,
        actor: &Actor,
    ) -> Result<usize, RuleError> {
        Ok(self
            .end_everywhere(user_id, Some(keep), EndReason::SecurityAction, actor)
            .await?)
    }

    async fn end_everywhere(
        &self,
        user_id: &str,
        keep: Option<&SessionId>,
        reason: EndReason,
        actor: &Actor,
    ) -> Result<usize, EngineError> {
        let person = Principal {
            actor: actor.clone(),
            ..Principal::person(user_id)
        };
        let ended = self
            .engine
            .end_subject(user_id, keep, reason, true, &person)
            .await?;
        // A sign-in in progress would otherwise finish after the account changed under it.
        let in_progress = self
            .engine
            .end_subject(
                &sign_in_subject(user_id),
                None,
                reason,
                false,
                &Principal::portcullis(actor.clone()),
            )
            .await?;
        Ok(ended + in_progress)
    }

    /// Whether `session` authenticated recently enough for an account change: an
    /// [`ACCOUNT_SCOPE`] elevation in force, or a sign-in younger than its policy's elevation
    /// lifetime.
    pub fn recently_authenticated(&self, session: &Session) -> bool {
        let now = self.engine.now();
        let lifetime = self
            .engine
            .policies()
            .get(&session.policy)
            .map_or(Duration::ZERO, |p| p.elevation.value);
        session
            .active_elevations(now)
            .any(|e| e.scope == ACCOUNT_SCOPE)
            || now < session.authenticated_at.plus(lifetime)
    }
}

/// The authenticator assurance level a sign-in with `methods` reaches (SP 800-63B): two
/// factors (`otp` beside the password) reach AAL2, a password alone AAL1.
pub fn assurance_level(methods: &[String]) -> u8 {
    if methods.len() > 1 && methods.iter().any(|m| m == "otp") {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::assurance_level;

    #[test]
    fn a_second_factor_reaches_aal2_and_a_password_alone_aal1() {
        let m = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(assurance_level(&m(&["pwd"])), 1);
        assert_eq!(assurance_level(&m(&["pwd", "otp"])), 2);
        assert_eq!(assurance_level(&m(&["otp"])), 1, "one factor is one factor");
    }
}
