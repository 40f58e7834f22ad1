//! The decisions every store makes the same way, as pure functions: whom a session limit
//! evicts, what an ended record looks like, which tombstone a re-constitution takes. Stores
//! call these inside their own atomic unit of work, so every backend behaves alike.

use std::sync::Arc;

use crate::event::{Actor, AuditEvent, EventKind};
use crate::policy::OnLimit;
use crate::session::{EndReason, Ended, Session};
use crate::store::{Ending, SessionLimit, StoreError};

/// The live sessions to end (`new_device`) so that `new` fits under its policy's `limit`, given
/// the subject's `live` sessions; [`StoreError::LimitReached`] when the policy says `deny` and
/// there is no room.
///
/// A limit counts the subject's sessions of the same application and policy only: applications
/// may share a policy, and one application's sessions must never push out, or be refused for,
/// another's (nor tell it that the person has sessions there). `new`'s parent is never chosen:
/// creating a child must not end the session it belongs to.
pub fn evictions(
    mut live: Vec<Arc<Session>>,
    limit: SessionLimit,
    new: &Session,
) -> Result<Vec<Arc<Session>>, StoreError> {
    let max = usize::try_from(limit.max).unwrap_or(usize::MAX);
    live.retain(|s| s.policy == new.policy && s.application == new.application);
    let parent = new.parent.as_ref();
    let kept = live.iter().filter(|s| Some(&s.id) == parent).count();
    live.retain(|s| Some(&s.id) != parent);
    let max = max.saturating_sub(kept);
    if limit.max == 0 || live.len() < max {
        return Ok(Vec::new());
    }
    if max == 0 {
        // Only the parent would be left to end.
        return Err(StoreError::LimitReached);
    }
    match limit.on_limit {
        OnLimit::Deny => return Err(StoreError::LimitReached),
        OnLimit::EvictOldest => {
            live.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
        }
        OnLimit::EvictIdlest => {
            live.sort_by(|a, b| {
                (a.last_seen_at, a.created_at, &a.id).cmp(&(b.last_seen_at, b.created_at, &b.id))
            });
        }
    }
    live.truncate(live.len() + 1 - max);
    Ok(live)
}

/// `session` as it is once ended by `ending` for `reason` (the reason differs for cascaded
/// children, which never keep data for re-constitution).
pub fn ended_record(session: &Session, ending: &Ending, reason: EndReason) -> Session {
    let mut ended = session.clone();
    ended.version += 1;
    let reconstitute_until = if reason == ending.reason {
        ending.reconstitute_until
    } else {
        None
    };
    ended.ended = Some(Ended {
        reason,
        at: ending.at,
        reconstitute_until,
        reconstituted_into: None,
        purge_at: reconstitute_until
            .unwrap_or(ending.at)
            .max(ending.at.plus(ending.retention)),
    });
    ended
}

/// Whether `parent` may take a new child of `subject`: it exists, is live and is the subject's.
pub fn parent_is_live(parent: Option<&Session>, subject: &str) -> Result<(), StoreError> {
    match parent {
        Some(p) if p.is_live() && p.subject == subject => Ok(()),
        _ => Err(StoreError::ParentNotLive),
    }
}

/// Whether the ended session `tomb` may give its data to `new` (same subject, application and
/// policy, timed out, window still open, not used yet): an application's data goes back only to
/// that application.
pub fn can_reconstitute(tomb: &Session, new: &Session) -> bool {
    tomb.subject == new.subject
        && tomb.application == new.application
        && tomb.policy == new.policy
        && tomb.ended.as_ref().is_some_and(|e| {
            e.reconstituted_into.is_none()
                && e.reconstitute_until
                    .is_some_and(|until| until > new.created_at)
        })
}

/// Of the candidates, the tombstone to re-constitute from: the latest one that qualifies.
pub fn pick_tombstone<'a>(
    candidates: impl IntoIterator<Item = &'a Arc<Session>>,
    new: &Session,
) -> Option<&'a Arc<Session>> {
    candidates
        .into_iter()
        .filter(|t| can_reconstitute(t, new))
        .max_by_key(|t| (t.ended.as_ref().map(|e| e.at), t.id.clone()))
}

/// Gives `tomb`'s data to `new` and returns the tombstone marked as used.
pub fn reconstitute(new: &mut Session, tomb: &Session) -> Session {
    new.data = tomb.data.clone();
    new.reconstituted_from = Some(tomb.id.clone());
    let mut used = tomb.clone();
    used.version += 1;
    if let Some(ended) = used.ended.as_mut() {
        ended.reconstituted_into = Some(new.id.clone());
    }
    used
}

/// The `session.created` event, with `reconstituted_from` and `parent` as detail.
pub fn created_event(session: &Session, actor: &Actor) -> AuditEvent {
    let mut detail = serde_json::Map::new();
    if let Some(from) = &session.reconstituted_from {
        detail.insert("reconstituted_from".into(), from.as_str().into());
    }
    if let Some(parent) = &session.parent {
        detail.insert("parent".into(), parent.as_str().into());
    }
    AuditEvent::for_session(
        EventKind::SessionCreated,
        session,
        session.created_at,
        actor,
    )
    .with_detail(if detail.is_empty() {
        serde_json::Value::Null
    } else {
        detail.into()
    })
}
