//! Named session policies, NIST SP 800-63B presets, and the explainable rules behind each deadline.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::{NO_LIMIT, format_duration};

/// What happens when a subject already has `max_sessions` live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Refuse the new session.
    Deny,
    /// End the session created longest ago (`new_device`).
    EvictOldest,
    /// End the session idle longest (`new_device`).
    EvictIdlest,
}

/// What a session is bound to; a validation from elsewhere ends it with `binding_mismatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Not bound.
    None,
    /// Bound to the user agent it was created with.
    UserAgent,
    /// Bound to the IP address it was created from.
    Ip,
}

/// A NIST SP 800-63B assurance-level preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// AAL1: re-authenticate at least every 30 days; no inactivity limit.
    Aal1,
    /// AAL2: 12 h overall, 30 min inactivity (rev 3 SHALL; also within rev 4's SHOULD).
    Aal2,
    /// AAL3: 12 h overall, 15 min inactivity.
    Aal3,
}

impl Preset {
    /// The preset's name as written in configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Aal1 => "aal1",
            Self::Aal2 => "aal2",
            Self::Aal3 => "aal3",
        }
    }
}

/// Where a policy value came from, so every deadline can say which rule set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Portcullis's built-in default.
    BuiltIn,
    /// A NIST preset.
    Preset(Preset),
    /// Written in the policy's configuration.
    Configured,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("built-in default"),
            Self::Preset(p) => write!(f, "preset {}", p.name()),
            Self::Configured => f.write_str("configured"),
        }
    }
}

/// A policy value with its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

pub use crate::application::SSO_POLICY;

/// The built-in policy of sign-ins in progress (see [`Policy::sign_in`]).
pub const SIGN_IN_POLICY: &str = "portcullis.sign_in";

/// The policy of an OpenID Connect client's offline grant (`offline_access`): a session of the
/// client's with no SSO parent, so it outlives the sign-out, on lifetimes of its own
/// ([`Policy::offline`] unless `offline_policy` names another).
pub const OFFLINE_POLICY: &str = "portcullis.offline";

/// A duration in a policy; zero means "off" where the field allows it.
pub type Lifetime = Sourced<Duration>;

/// A resolved, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name (`default`, `shop`, …).
    pub name: String,
    /// Inactivity limit; zero = no idle timeout.
    pub idle: Lifetime,
    /// Overall lifetime from authentication, whatever the activity.
    pub absolute: Lifetime,
    /// Inactivity limit of a "Stay signed in" session; zero = none.
    pub remember_me_idle: Lifetime,
    /// Overall lifetime of a "Stay signed in" session.
    pub remember_me_absolute: Lifetime,
    /// Live sessions per subject; zero = no limit.
    pub max_sessions: Sourced<u32>,
    /// The rule when the limit is reached.
    pub on_limit: Sourced<OnLimit>,
    /// How long before the nearest deadline validation answers `warning: true`.
    pub warn_before: Lifetime,
    /// How long the data of a timed-out session is kept for re-constitution; zero = off.
    pub reconstitute_window: Lifetime,
    /// What sessions are bound to.
    pub bind: Sourced<Binding>,
    /// Lifetime of an elevation (re-authentication for a sensitive action).
    pub elevation: Lifetime,
    /// Whether the sign-in page asks "Stay signed in?"; when off, every sign-in gets a
    /// browser-session cookie.
    pub stay_signed_in: Sourced<bool>,
    /// Whether an application's `elevate` call restarts the absolute deadline. Off by default:
    /// the methods are only what the application claims, and a claim must not keep a session
    /// alive for ever. Portcullis's own re-authentication page, which checks the credentials
    /// itself, always restarts it.
    pub elevation_restarts_absolute: Sourced<bool>,
}

/// The overrides a configured policy may write; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    /// Start from this preset instead of the built-in default.
    pub preset: Option<Preset>,
    /// See [`Policy::idle`].
    pub idle: Option<Duration>,
    /// See [`Policy::absolute`].
    pub absolute: Option<Duration>,
    /// See [`Policy::remember_me_idle`].
    pub remember_me_idle: Option<Duration>,
    /// See [`Policy::remember_me_absolute`].
    pub remember_me_absolute: Option<Duration>,
    /// See [`Policy::max_sessions`].
    pub max_sessions: Option<u32>,
    /// See [`Policy::on_limit`].
    pub on_limit: Option<OnLimit>,
    /// See [`Policy::warn_before`].
    pub warn_before: Option<Duration>,
    /// See [`Policy::reconstitute_window`].
    pub reconstitute_window: Option<Duration>,
    /// See [`Policy::bind`].
    pub bind: Option<Binding>,
    /// See [`Policy::elevation`].
    pub elevation: Option<Duration>,
    /// See [`Policy::stay_signed_in`].
    pub stay_signed_in: Option<bool>,
    /// See [`Policy::elevation_restarts_absolute`].
    pub elevation_restarts_absolute: Option<bool>,
}

/// A policy that cannot work as written; `field` names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policies.{policy}.{field}: {message}")]
pub struct PolicyError {
    /// The policy's name.
    pub policy: String,
    /// The offending key.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

const fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}
const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}
const fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

impl Policy {
    /// The built-in default: idle 15 min, absolute 12 h, "Stay signed in" 7 d idle / 30 d overall,
    /// warning 2 min before the nearest deadline.
    pub fn built_in(name: &str) -> Self {
        let b = |value| Sourced {
            value,
            source: Source::BuiltIn,
        };
        Self {
            name: name.to_owned(),
            idle: b(mins(15)),
            absolute: b(hours(12)),
            remember_me_idle: b(days(7)),
            remember_me_absolute: b(days(30)),
            max_sessions: Sourced {
                value: 0,
                source: Source::BuiltIn,
            },
            on_limit: Sourced {
                value: OnLimit::EvictOldest,
                source: Source::BuiltIn,
            },
            warn_before: b(mins(2)),
            reconstitute_window: b(hours(24)),
            bind: Sourced {
                value: Binding::None,
                source: Source::BuiltIn,
            },
            elevation: b(mins(10)),
            stay_signed_in: Sourced {
                value: true,
                source: Source::BuiltIn,
            },
            elevation_restarts_absolute: Sourced {
                value: false,
                source: Source::BuiltIn,
            },
        }
    }

    /// The policy of a sign-in in progress (password given, second factor or "Stay signed
    /// in?" still to answer): short-lived, never remembered, never re-constituted.
    pub fn sign_in() -> Self {
        let mut policy = Self::built_in(SIGN_IN_POLICY);
        policy.idle.value = mins(5);
        policy.absolute.value = mins(10);
        policy.remember_me_idle.value = mins(5);
        policy.remember_me_absolute.value = mins(10);
        policy.warn_before.value = Duration::ZERO;
        policy.reconstitute_window.value = Duration::ZERO;
        policy.stay_signed_in.value = false;
        policy
    }

    /// The policy of offline grants: 30 days idle (each refresh is activity), 90 days at most,
    /// no "Stay signed in", no re-constitution, no expiry warning (nobody is there to see it).
    pub fn offline() -> Self {
        let mut policy = Self::built_in(OFFLINE_POLICY);
        policy.idle.value = days(30);
        policy.absolute.value = days(90);
        policy.remember_me_idle.value = days(30);
        policy.remember_me_absolute.value = days(90);
        policy.warn_before.value = Duration::ZERO;
        policy.reconstitute_window.value = Duration::ZERO;
        policy.stay_signed_in.value = false;
        policy
    }

    /// A preset's policy. Remember-me never outlives the preset's own limits: at AAL2 and AAL3
    /// "Stay signed in" only makes the cookie persistent (SP 800-63B: a remembered browser never
    /// replaces the overall timeout).
    pub fn preset(name: &str, preset: Preset) -> Self {
        let mut policy = Self::built_in(name);
        let (idle, absolute, elevation) = match preset {
            Preset::Aal1 => (Duration::ZERO, days(30), mins(15)),
            Preset::Aal2 => (mins(30), hours(12), mins(10)),
            Preset::Aal3 => (mins(15), hours(12), mins(5)),
        };
        let p = |value| Sourced {
            value,
            source: Source::Preset(preset),
        };
        policy.idle = p(idle);
        policy.absolute = p(absolute);
        policy.remember_me_idle = p(idle);
        policy.remember_me_absolute = p(absolute);
        policy.elevation = p(elevation);
        policy
    }

    /// Resolves a configured policy: the preset (or built-in default), then the overrides.
    pub fn resolve(name: &str, o: &PolicyOverrides) -> Result<Self, PolicyError> {
        let mut policy = match o.preset {
            Some(preset) => Self::preset(name, preset),
            None => Self::built_in(name),
        };
        fn set<T: Copy>(slot: &mut Sourced<T>, value: Option<T>) {
            if let Some(value) = value {
                *slot = Sourced {
                    value,
                    source: Source::Configured,
                };
            }
        }
        set(&mut policy.idle, o.idle);
        set(&mut policy.absolute, o.absolute);
        set(&mut policy.remember_me_idle, o.remember_me_idle);
        set(&mut policy.remember_me_absolute, o.remember_me_absolute);
        set(&mut policy.max_sessions, o.max_sessions);
        set(&mut policy.on_limit, o.on_limit);
        set(&mut policy.warn_before, o.warn_before);
        set(&mut policy.reconstitute_window, o.reconstitute_window);
        set(&mut policy.bind, o.bind);
        set(&mut policy.elevation, o.elevation);
        set(&mut policy.stay_signed_in, o.stay_signed_in);
        set(
            &mut policy.elevation_restarts_absolute,
            o.elevation_restarts_absolute,
        );
        policy.check()?;
        if let Some(preset) = o.preset {
            for (field, value) in [
                ("absolute", policy.absolute.value),
                ("remember_me_absolute", policy.remember_me_absolute.value),
            ] {
                if value == NO_LIMIT {
                    return Err(PolicyError {
                        policy: policy.name.clone(),
                        field,
                        message: format!(
                            "\"none\" is not allowed under preset {preset:?}: SP 800-63B sets an overall limit at every assurance level"
                        ),
                    });
                }
            }
        }
        Ok(policy)
    }

    fn check(&self) -> Result<(), PolicyError> {
        let err = |field, message: String| PolicyError {
            policy: self.name.clone(),
            field,
            message,
        };
        if self.absolute.value.is_zero() {
            return Err(err("absolute", "must be greater than 0s".into()));
        }
        if self.remember_me_absolute.value.is_zero() {
            return Err(err(
                "remember_me_absolute",
                "must be greater than 0s".into(),
            ));
        }
        if self.idle.value > self.absolute.value {
            return Err(err(
                "idle",
                format!(
                    "{} is longer than absolute {}",
                    format_duration(self.idle.value),
                    format_duration(self.absolute.value)
                ),
            ));
        }
        if self.remember_me_idle.value > self.remember_me_absolute.value {
            return Err(err(
                "remember_me_idle",
                format!(
                    "{} is longer than remember_me_absolute {}",
                    format_duration(self.remember_me_idle.value),
                    format_duration(self.remember_me_absolute.value)
                ),
            ));
        }
        if self.elevation.value.is_zero() || self.elevation.value == NO_LIMIT {
            return Err(err("elevation", "must be a finite time above 0s".into()));
        }
        // With no absolute limit, inactivity is what ends a session: it must have a limit.
        for (absolute, idle, field) in [
            (self.absolute.value, self.idle.value, "idle"),
            (
                self.remember_me_absolute.value,
                self.remember_me_idle.value,
                "remember_me_idle",
            ),
        ] {
            if absolute == NO_LIMIT && (idle.is_zero() || idle == NO_LIMIT) {
                return Err(err(
                    field,
                    "must be set (above 0s, not \"none\") when the absolute lifetime is \"none\""
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The idle and absolute lifetimes that apply to a session, with the rule text for each.
    pub fn lifetimes(&self, remember_me: bool) -> (Rule, Rule) {
        if remember_me {
            (
                Rule::new(self, "remember_me_idle", self.remember_me_idle),
                Rule::new(self, "remember_me_absolute", self.remember_me_absolute),
            )
        } else {
            (
                Rule::new(self, "idle", self.idle),
                Rule::new(self, "absolute", self.absolute),
            )
        }
    }
}

/// One lifetime and the human-readable rule that set it, e.g.
/// `policy default: idle 15m (built-in default)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The lifetime; zero = this deadline does not apply.
    pub lifetime: Duration,
    /// The explanation carried with the deadline.
    pub text: String,
}

impl Rule {
    fn new(policy: &Policy, field: &str, lifetime: Lifetime) -> Self {
        Self {
            lifetime: lifetime.value,
            text: format!(
                "policy {}: {field} {} ({})",
                policy.name,
                format_duration(lifetime.value),
                lifetime.source
            ),
        }
    }
}

/// The named policies in force; `default` always exists.
#[derive(Debug, Clone)]
pub struct PolicySet(BTreeMap<String, std::sync::Arc<Policy>>);

impl PolicySet {
    /// Builds the set; a missing `default` policy is the built-in one.
    pub fn new(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut map: BTreeMap<_, _> = policies
            .into_iter()
            .map(|p| (p.name.clone(), std::sync::Arc::new(p)))
            .collect();
        map.entry("default".to_owned())
            .or_insert_with(|| std::sync::Arc::new(Policy::built_in("default")));
        map.entry(SIGN_IN_POLICY.to_owned())
            .or_insert_with(|| std::sync::Arc::new(Policy::sign_in()));
        map.entry(OFFLINE_POLICY.to_owned())
            .or_insert_with(|| std::sync::Arc::new(Policy::offline()));
        let mut set = Self(map);
        if set.get(SSO_POLICY).is_none() {
            set = set.with_sso_from("default");
        }
        set
    }

    /// Gives the SSO session ([`SSO_POLICY`], a reserved name no application can use) the
    /// lifetimes of the policy called `name`; `None` when there is no such policy.
    pub fn with_sso_from(mut self, name: &str) -> Self {
        if let Some(source) = self.0.get(name) {
            let mut sso = Policy::clone(source);
            sso.name = SSO_POLICY.to_owned();
            self.0
                .insert(SSO_POLICY.to_owned(), std::sync::Arc::new(sso));
        }
        self
    }

    /// Gives offline grants ([`OFFLINE_POLICY`]) the lifetimes of the policy called `name`;
    /// unchanged when there is no such policy.
    pub fn with_offline_from(mut self, name: &str) -> Self {
        if let Some(source) = self.0.get(name) {
            let mut offline = Policy::clone(source);
            offline.name = OFFLINE_POLICY.to_owned();
            self.0
                .insert(OFFLINE_POLICY.to_owned(), std::sync::Arc::new(offline));
        }
        self
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<Policy>> {
        self.0.get(name)
    }

    /// Every policy, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.0.values().map(|p| p.as_ref())
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::new([])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nist3_5_presets_carry_the_sp_800_63b_numbers() {
        let aal2 = Policy::preset("p", Preset::Aal2);
        assert_eq!(
            (aal2.idle.value, aal2.absolute.value),
            (mins(30), hours(12))
        );
        let aal3 = Policy::preset("p", Preset::Aal3);
        assert_eq!(
            (aal3.idle.value, aal3.absolute.value),
            (mins(15), hours(12))
        );
        let aal1 = Policy::preset("p", Preset::Aal1);
        assert_eq!(
            (aal1.idle.value, aal1.absolute.value),
            (Duration::ZERO, days(30))
        );
        // Remember-me never lifts the preset's overall cap (NIST4-5).
        assert_eq!(aal2.remember_me_absolute.value, hours(12));
    }

    #[test]
    fn asvs5_7_1_1_default_policy_is_the_documented_one() {
        let p = Policy::built_in("default");
        assert_eq!(p.idle.value, mins(15));
        assert_eq!(p.absolute.value, hours(12));
        assert_eq!(p.remember_me_absolute.value, days(30));
        assert_eq!(p.warn_before.value, mins(2));
    }

    #[test]
    fn overrides_apply_on_top_of_a_preset_and_rules_say_where_values_came_from() {
        let o = PolicyOverrides {
            preset: Some(Preset::Aal2),
            idle: Some(mins(5)),
            ..Default::default()
        };
        let p = Policy::resolve("bank", &o).unwrap();
        let (idle, absolute) = p.lifetimes(false);
        assert_eq!(idle.text, "policy bank: idle 5m (configured)");
        assert_eq!(absolute.text, "policy bank: absolute 12h (preset aal2)");
    }

    #[test]
    fn an_impossible_policy_names_the_key() {
        let o = PolicyOverrides {
            idle: Some(days(2)),
            ..Default::default()
        };
        let err = Policy::resolve("shop", &o).unwrap_err();
        assert_eq!(err.field, "idle");
        assert!(
            err.to_string()
                .starts_with("policies.shop.idle: 2d is longer than absolute 12h")
        );
    }

    #[test]
    fn an_absolute_lifetime_of_none_needs_an_idle_limit_and_no_nist_preset() {
        let none = crate::time::parse_duration("none").unwrap();
        let unlimited = PolicyOverrides {
            absolute: Some(none),
            idle: Some(Duration::from_secs(1800)),
            ..Default::default()
        };
        let policy = Policy::resolve("kiosk", &unlimited).unwrap();
        assert_eq!(format_duration(policy.absolute.value), "none");
        let no_idle = PolicyOverrides {
            idle: Some(Duration::ZERO),
            ..unlimited
        };
        let err = Policy::resolve("kiosk", &no_idle).unwrap_err();
        assert_eq!(err.field, "idle", "{err}");
        let under_preset = PolicyOverrides {
            preset: Some(Preset::Aal2),
            ..unlimited
        };
        let err = Policy::resolve("kiosk", &under_preset).unwrap_err();
        assert_eq!(err.field, "absolute", "{err}");
        let endless_elevation = PolicyOverrides {
            elevation: Some(none),
            ..unlimited
        };
        assert!(Policy::resolve("kiosk", &endless_elevation).is_err());
    }
}
