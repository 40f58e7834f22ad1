//! The conformance suite every Portcullis [`SessionStore`] must pass (DESIGN §4.7), after the
//! `route_tests!` pattern of tower-sessions: each case is an `async fn` over a fresh store, and
//! [`store_conformance!`] instantiates all of them as tests for one backend.
//!
//! Two layers are checked: the store contract itself, one case list per stored entity
//! ([`store`] for sessions and events, [`api_keys`]), and the whole session lifecycle run by the
//! [`portcullis_core::Engine`] on top of the store ([`lifecycle`]), with a manual clock so no
//! case sleeps; [`applications`] checks both for applications as principals (their records,
//! what each session, key and event belongs to, and who reaches what).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api_keys;
pub mod applications;
pub mod deliveries;
pub mod identities;
pub mod lifecycle;
pub mod model;
pub mod provider;
pub mod store;
pub mod throttle;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::{
    ANY_POLICY, Actor, AppId, Application, AuditEvent, AuthContext, Deadline, Device, EndReason,
    Ending, EventKind, Insert, ManualClock, Principal, PublicId, SeededRandom, Session,
    SessionLimit, Timestamp, Token, TokenKind, subject_route,
};

/// A fixed starting time for every case.
pub fn t0() -> Timestamp {
    use portcullis_core::Clock;
    ManualClock::default().now()
}

/// The application the store cases' sessions belong to unless a case says otherwise.
pub fn test_app() -> AppId {
    PublicId::from_string("app_test".into())
}

/// An application called `name` (id `app_<name>`) that may use every unreserved policy
/// (default `default`) and holds no grant.
pub fn application(name: &str) -> Application {
    Application {
        id: PublicId::from_string(format!("app_{name}")),
        name: name.to_owned(),
        policies: vec![ANY_POLICY.to_owned()],
        default_policy: "default".into(),
        grants: Default::default(),
        client: None,
        created_at: t0(),
        version: 1,
    }
}

/// The principal of `app` calling with an API key (`key_<name>`); the engine does not look the
/// application up for session calls, so it need not be stored.
pub fn app_principal(app: Application) -> Principal {
    let key = PublicId::from_string(format!("key_{}", app.name));
    Principal::application(Arc::new(app), &key)
}

/// A session for `subject` created at `at` with a 15 min idle and 12 h absolute deadline,
/// and the token that opens it; it belongs to [`test_app`].
///
/// Tokens and ids carry the subject's route, as the engine issues them for stores that shard
/// by subject; other stores ignore it.
pub fn session_at(subject: &str, at: Timestamp, random: &SeededRandom) -> (Token, Session) {
    session_of(subject, &test_app(), at, random)
}

/// [`session_at`] for a session of `application`.
pub fn session_of(
    subject: &str,
    application: &AppId,
    at: Timestamp,
    random: &SeededRandom,
) -> (Token, Session) {
    let route = subject_route(subject);
    let token = Token::generate_routed(TokenKind::Session, random, route);
    let session = Session {
        id: PublicId::generate_routed("ses_", route, random),
        token_hash: token.routed_hash(),
        version: 1,
        subject: subject.to_owned(),
        application: application.clone(),
        policy: "default".into(),
        created_at: at,
        last_seen_at: at,
        authenticated_at: at,
        remember_me: false,
        auth: AuthContext {
            methods: vec!["pwd".into()],
            level: 1,
        },
        elevations: vec![],
        device: Device::default(),
        data: serde_json::json!({"cart": [1, 2]}),
        idle: Some(Deadline::after(
            at,
            Duration::from_secs(900),
            "idle 15m".into(),
        )),
        absolute: Deadline::after(at, Duration::from_secs(43_200), "absolute 12h".into()),
        parent: None,
        reconstituted_from: None,
        back_channel_logout_uri: None,
        back_channel_logout_alg: None,
        ended: None,
    };
    (token, session)
}

/// `session` rotated to a new token (routed like the old one), one version on, with the
/// `session.rotated` event to commit it with, and the new token.
pub fn rotated(session: &Session, random: &SeededRandom) -> (Token, Session, AuditEvent) {
    let token = Token::generate_routed(TokenKind::Session, random, subject_route(&session.subject));
    let mut next = session.clone();
    next.token_hash = token.routed_hash();
    next.version += 1;
    let event = AuditEvent::for_session(EventKind::SessionRotated, &next, t0(), &Actor::system());
    (token, next, event)
}

/// An insert request with no limit.
pub fn plain_insert(session: Session) -> Insert {
    Insert {
        session,
        limit: None,
        reconstitute: false,
        actor: Actor("test".into()),
        ended_retention: Duration::from_secs(3600),
    }
}

/// An insert request under a limit.
pub fn limited_insert(session: Session, limit: SessionLimit) -> Insert {
    Insert {
        limit: Some(limit),
        ..plain_insert(session)
    }
}

/// An ending for `reason` at `at`.
pub fn ending(reason: EndReason, at: Timestamp) -> Ending {
    Ending {
        reason,
        at,
        actor: Actor("test".into()),
        reconstitute_until: None,
        retention: Duration::from_secs(3600),
    }
}

/// Shared randomness for a case (deterministic per case).
pub fn random() -> Arc<SeededRandom> {
    Arc::new(SeededRandom::new(7))
}

/// Instantiates every conformance case as a `#[tokio::test]` for one store.
///
/// `$make` is an async expression evaluating to a fresh, empty store; it is evaluated once per
/// case, so each case is isolated (its own file, key prefix or database).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        $crate::store_conformance!(@cases $make;
            store::insert_then_find_by_token_and_id,
            store::unknown_lookups_are_none,
            store::concurrent_lookups_each_get_their_own_session,
            store::list_subject_is_live_sessions_oldest_first,
            store::touch_moves_activity_forward_only,
            store::replace_is_compare_and_set_and_kills_the_old_token,
            store::end_is_recorded_exactly_once,
            store::end_cascades_to_children,
            store::a_child_needs_a_live_parent_of_its_subject,
            store::a_parent_ending_reaches_children_rotating_or_created_meanwhile,
            store::end_subject_spares_the_exception,
            store::limit_deny_refuses,
            store::limit_evicts_oldest,
            store::limit_evicts_idlest,
            store::limit_counts_one_policy_and_spares_the_parent,
            store::limit_holds_under_50_concurrent_creates,
            store::due_is_only_what_passed_in_deadline_order,
            store::due_in_batches_walks_every_subject_in_deadline_order,
            store::tombstone_reconstitutes_once,
            store::purge_forgets_after_retention,
            store::events_are_ordered_filtered_and_paged,
            store::events_paged_while_written_are_each_seen_once,
            store::account_events_join_the_session_trail,
            store::live_counts_are_live_sessions_per_application_and_policy,
            store::ping_answers,
            api_keys::api_keys_add_find_list_revoke,
            applications::applications_add_find_list_update_remove,
            applications::an_applications_client_registration_reads_back_and_updates,
            applications::api_keys_carry_their_application,
            applications::sessions_carry_their_application_through_insert_replace_and_end,
            applications::end_subject_of_an_application_ends_its_sessions_and_their_children_only,
            applications::application_sessions_are_exactly_its_live_sessions,
            applications::events_carry_their_application_and_filter_before_the_limit,
            applications::an_event_without_an_application_reads_back_without_one,
            lifecycle::asvs5_7_3_1_idle_timeout_and_activity,
            lifecycle::a_token_issued_before_tokens_carried_their_route_still_validates,
            lifecycle::asvs5_7_3_2_absolute_timeout_despite_activity,
            lifecycle::nist4_3_warning_inside_lead_time,
            lifecycle::validation_without_activity_changes_nothing,
            lifecycle::nist4_5_remember_me_keeps_its_absolute_cap,
            lifecycle::asvs5_7_2_4_rotation_kills_the_old_token,
            lifecycle::owasp_sm_11_elevation_rotates_and_restarts_timers,
            lifecycle::asvs4_3_3_1_logout_is_final_and_idempotent,
            lifecycle::asvs4_3_3_3_force_logout_all_but_current,
            lifecycle::asvs5_7_4_5_admin_revoke,
            lifecycle::asvs5_7_1_2_concurrent_limit_one_evicts_other_device,
            lifecycle::owasp_sm_20_binding_mismatch_ends_session,
            lifecycle::reconstitution_after_timeout_not_after_logout,
            lifecycle::sweep_expires_each_session_once,
            lifecycle::parent_end_ends_children,
            lifecycle::data_replace_is_size_limited,
            lifecycle::asvs4_7_1_1_events_never_hold_a_token,
            applications::another_applications_session_answers_like_an_unknown_one,
            applications::a_limit_and_a_reconstitution_reach_only_the_applications_own_sessions,
            applications::an_application_creates_only_its_own_sessions_with_its_policies,
            applications::grants_allow_exactly_what_they_name,
            applications::asvs5_7_4_5_remove_application_ends_its_sessions_and_stops_its_keys,
            applications::adopt_legacy_keys_creates_the_legacy_application_once,
            model::random_operations_match_the_model_seed_1,
            model::random_operations_match_the_model_seed_2,
            model::random_operations_match_the_model_seed_3,
        );
    };
    (@cases $make:expr; $($module:ident :: $case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::$module::$case(store).await;
            }
        )+
    };
}
