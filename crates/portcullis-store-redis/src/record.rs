//! The compact binary form of a session in Redis: one string value per session.
//!
//! A fixed header carries what the Lua scripts read and change in place (liveness, version,
//! last activity and the deadlines); the rest is length-prefixed fields in a fixed order. The
//! token hash is not stored: it is the key. Rare, nested parts (elevations, data, the ending)
//! are JSON inside the record. JSON for the whole record was 3–4× larger and slower to read.
//!
//! Header (big-endian), mirrored by `touch.lua` and `commit.lua`:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | format (1) |
//! | 1 | 1 | live (1) or ended (0) |
//! | 2 | 8 | version |
//! | 10 | 8 | last seen (ms) |
//! | 18 | 8 | idle deadline (ms; 0 without an idle timeout) |
//! | 26 | 8 | idle lifetime (ms; -1 without an idle timeout) |
//! | 34 | 8 | absolute deadline (ms) |

use portcullis_core::{
    AuthContext, Deadline, Device, PublicId, Session, StoreError, Timestamp, TokenHash,
};

/// Length of the fixed header.
pub(crate) const HEADER: usize = 42;
const FORMAT: u8 = 1;

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("session record: {what}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn int(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn len(&mut self, mut n: usize) {
        // LEB128: strings here are short, so one byte nearly always.
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    fn opt_str(&mut self, text: Option<&str>) {
        match text {
            Some(text) => {
                self.0.push(1);
                self.str(text);
            }
            None => self.0.push(0),
        }
    }

    fn opt_json<T: serde::Serialize>(&mut self, value: Option<&T>) -> Result<(), StoreError> {
        match value {
            Some(value) => {
                self.0.push(1);
                let json = serde_json::to_vec(value).map_err(|e| corrupt(&e.to_string()))?;
                self.bytes(&json);
            }
            None => self.0.push(0),
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| corrupt("int"))?;
        Ok(i64::from_be_bytes(bytes))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let mut n = 0usize;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(corrupt("length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("text"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, StoreError> {
        match self.byte()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    fn opt_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, StoreError> {
        match self.byte()? {
            0 => Ok(None),
            _ => serde_json::from_slice(self.bytes()?)
                .map(Some)
                .map_err(|e| corrupt(&e.to_string())),
        }
    }
}

/// The record of `session`.
pub(crate) fn encode(session: &Session) -> Result<Vec<u8>, StoreError> {
    let mut w = Writer(Vec::with_capacity(256));
    w.0.push(FORMAT);
    w.0.push(u8::from(session.is_live()));
    w.int(session.version as i64);
    w.int(session.last_seen_at.as_millis());
    match &session.idle {
        Some(idle) => {
            w.int(idle.at.as_millis());
            w.int(idle.lifetime_ms as i64);
        }
        None => {
            w.int(0);
            w.int(-1);
        }
    }
    w.int(session.absolute.at.as_millis());
    debug_assert_eq!(w.0.len(), HEADER);
    w.str(session.id.as_str());
    w.str(&session.subject);
    w.str(&session.policy);
    w.int(session.created_at.as_millis());
    w.int(session.authenticated_at.as_millis());
    w.0.push(u8::from(session.remember_me));
    w.0.push(session.auth.level);
    w.len(session.auth.methods.len());
    for method in &session.auth.methods {
        w.str(method);
    }
    w.opt_str(session.idle.as_ref().map(|i| i.rule.as_str()));
    w.int(session.absolute.lifetime_ms as i64);
    w.str(&session.absolute.rule);
    w.opt_str(session.device.user_agent.as_deref());
    w.opt_str(session.device.ip.as_deref());
    w.opt_str(session.parent.as_ref().map(PublicId::as_str));
    w.opt_str(session.reconstituted_from.as_ref().map(PublicId::as_str));
    w.opt_json((!session.elevations.is_empty()).then_some(&session.elevations))?;
    w.opt_json((!session.data.is_null()).then_some(&session.data))?;
    w.opt_json(session.ended.as_ref())?;
    Ok(w.0)
}

/// The session stored under `token_hash` as `bytes`.
pub(crate) fn decode(token_hash: TokenHash, bytes: &[u8]) -> Result<Session, StoreError> {
    let mut r = Reader(bytes);
    if r.byte()? != FORMAT {
        return Err(corrupt("unknown format"));
    }
    let _live = r.byte()?;
    let version = r.int()? as u64;
    let last_seen_at = Timestamp::from_millis(r.int()?);
    let idle_at = Timestamp::from_millis(r.int()?);
    let idle_lifetime = r.int()?;
    let absolute_at = Timestamp::from_millis(r.int()?);
    let id = PublicId::from_string(r.string()?);
    let subject = r.string()?;
    let policy = r.string()?;
    let created_at = Timestamp::from_millis(r.int()?);
    let authenticated_at = Timestamp::from_millis(r.int()?);
    let remember_me = r.byte()? != 0;
    let level = r.byte()?;
    let methods = (0..r.len()?)
        .map(|_| r.string())
        .collect::<Result<Vec<_>, _>>()?;
    let idle_rule = r.opt_string()?;
    let absolute_lifetime = r.int()?;
    let absolute_rule = r.string()?;
    let device = Device {
        user_agent: r.opt_string()?,
        ip: r.opt_string()?,
    };
    let parent = r.opt_string()?.map(PublicId::from_string);
    let reconstituted_from = r.opt_string()?.map(PublicId::from_string);
    let elevations = r.opt_json()?.unwrap_or_default();
    let data = r.opt_json()?.unwrap_or(serde_json::Value::Null);
    let ended = r.opt_json()?;
    let idle = match (idle_lifetime, idle_rule) {
        (lifetime, Some(rule)) if lifetime >= 0 => Some(Deadline {
            at: idle_at,
            lifetime_ms: lifetime as u64,
            rule,
        }),
        _ => None,
    };
    Ok(Session {
        id,
        token_hash,
        version,
        subject,
        policy,
        created_at,
        last_seen_at,
        authenticated_at,
        remember_me,
        auth: AuthContext { methods, level },
        elevations,
        device,
        data,
        idle,
        absolute: Deadline {
            at: absolute_at,
            lifetime_ms: absolute_lifetime as u64,
            rule: absolute_rule,
        },
        parent,
        reconstituted_from,
        ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::{Elevation, EndReason, Ended};

    fn session() -> Session {
        let t = Timestamp::from_millis(1_764_000_000_123);
        Session {
            id: PublicId::from_string("ses_a3xyz".into()),
            token_hash: TokenHash([7; 32]),
            version: 12,
            subject: "usr_ü".into(),
            policy: "default".into(),
            created_at: t,
            last_seen_at: t,
            authenticated_at: t,
            remember_me: true,
            auth: AuthContext {
                methods: vec!["pwd".into(), "otp".into()],
                level: 2,
            },
            elevations: Vec::new(),
            device: Device::default(),
            data: serde_json::Value::Null,
            idle: Some(Deadline {
                at: Timestamp::from_millis(t.as_millis() + 900_000),
                lifetime_ms: 900_000,
                rule: "policy default: idle 15m".into(),
            }),
            absolute: Deadline {
                at: Timestamp::from_millis(t.as_millis() + 43_200_000),
                lifetime_ms: 43_200_000,
                rule: "x".repeat(300),
            },
            parent: None,
            reconstituted_from: None,
            ended: None,
        }
    }

    #[test]
    fn every_field_survives_a_round_trip() {
        let plain = session();
        let bytes = encode(&plain).unwrap();
        assert_eq!(decode(plain.token_hash, &bytes).unwrap(), plain);
        assert_eq!(bytes[1], 1, "live");

        let mut full = session();
        full.idle = None;
        full.device = Device {
            user_agent: Some("Mozilla/5.0".into()),
            ip: Some("192.0.2.1".into()),
        };
        full.data = serde_json::json!({"cart": [1, 2, 3]});
        full.parent = Some(PublicId::from_string("ses_parent".into()));
        full.reconstituted_from = Some(PublicId::from_string("ses_old".into()));
        full.elevations = vec![Elevation {
            id: PublicId::from_string("elv_1".into()),
            scope: "payments".into(),
            methods: vec!["otp".into()],
            level: 2,
            at: full.created_at,
            expires_at: full.absolute.at,
        }];
        full.ended = Some(Ended {
            reason: EndReason::Logout,
            at: full.created_at,
            reconstitute_until: None,
            reconstituted_into: None,
            purge_at: full.absolute.at,
        });
        let bytes = encode(&full).unwrap();
        assert_eq!(decode(full.token_hash, &bytes).unwrap(), full);
        assert_eq!(bytes[1], 0, "ended");
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_session() {
        let bytes = encode(&session()).unwrap();
        for cut in [0, 1, HEADER, bytes.len() - 1] {
            assert!(
                decode(TokenHash([7; 32]), &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode(TokenHash([7; 32]), &other).is_err());
    }
}
