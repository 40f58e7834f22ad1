//! The compact binary form of a session: one string value per session in Redis, and one
//! allocation per session in the memory of [`crate::cache::CachedStore`] (the embedded store's
//! ten million sessions fit one machine only so).
//!
//! A fixed header carries what the Lua scripts read and change in place (liveness, version,
//! last activity and the deadlines); the rest is fields in a fixed order: a byte of flags for
//! what is present, session ids as their 16 random bytes, times after the creation as varint
//! deltas, strings length-prefixed. The token hash is not stored: it is the key. Rare, nested
//! parts (elevations, data, the ending) are JSON inside the record (elevations and the ending in
//! their stored form, `portcullis_core::stored`). JSON for the whole record was 3–4× larger and
//! slower to read; format 1 (fixed-width times, a byte per optional part) was 20 % larger than
//! this format 2, and is still read.
//!
//! Format 2 grew by flags, so every record written before a flag existed still reads: the
//! application, last (an engine's `app_` id as a marker and its 16 random bytes, any other id
//! as a marker and its text; no flag: the legacy application, as every record of the release
//! before applications), rule texts without their `policy <name>: ` opening (the policy is in
//! the record), the creation time and absolute lifetime as small differences from the absolute
//! deadline instead of 8 bytes and a 4-byte varint, and, after the application, the
//! back-channel logout URI of an OpenID Connect client's session, then a byte for the algorithm its
//! client's ID tokens were signed with. A plain session of an application (as the
//! scale benchmark writes them) must stay within 124 bytes, so that Redis keeps it in a
//! 128-byte allocation (sds header and terminator: 4 bytes): one byte more costs 32 (the next
//! jemalloc size is 160).
//!
//! Header (big-endian), mirrored by the Redis store's `touch.lua` and `commit.lua`:
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | format (1) |
//! | 1 | 1 | live (1), ended (0), or ended but not yet confirmed on the replicas (Redis: `UNCONFIRMED`) |
//! | 2 | 8 | version |
//! | 10 | 8 | last seen (ms) |
//! | 18 | 8 | idle deadline (ms; 0 without an idle timeout) |
//! | 26 | 8 | idle lifetime (ms; -1 without an idle timeout) |
//! | 34 | 8 | absolute deadline (ms) |

use crate::application::{AppId, LEGACY_APP, legacy_app};
use crate::oidc::SigningAlg;
use crate::session::{AuthContext, Deadline, Device, Elevation, Ended, Session};
use crate::store::StoreError;
use crate::stored::{StoredElevation, StoredEnded};
use crate::time::Timestamp;
use crate::token::{PublicId, TokenHash};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of the fixed header.
pub const HEADER: usize = 42;
const FORMAT: u8 = 2;
/// Records written before format 2, still read.
const FORMAT_1: u8 = 1;

/// Format 2's flags: what the record holds.
const REMEMBER_ME: u16 = 1;
const IDLE_RULE: u16 = 1 << 1;
const USER_AGENT: u16 = 1 << 2;
const IP: u16 = 1 << 3;
const PARENT: u16 = 1 << 4;
const RECONSTITUTED_FROM: u16 = 1 << 5;
const ELEVATIONS: u16 = 1 << 6;
const DATA: u16 = 1 << 7;
const ENDED: u16 = 1 << 8;
/// An application other than the legacy one, last in the record.
const APPLICATION: u16 = 1 << 9;
/// The idle rule is written without `policy <policy>: `.
const IDLE_RULE_OF_POLICY: u16 = 1 << 10;
/// The absolute rule is written without `policy <policy>: `.
const ABSOLUTE_RULE_OF_POLICY: u16 = 1 << 11;
/// The creation time is written as a varint before the absolute deadline, and the absolute
/// lifetime as a varint difference from the time between the two (0 for a session as created).
const TIMES_FROM_DEADLINE: u16 = 1 << 12;
/// The back-channel logout URI of the session's client, after the application.
const BACK_CHANNEL_LOGOUT_URI: u16 = 1 << 13;
/// The algorithm of the client's ID tokens, a byte after the back-channel logout URI.
const BACK_CHANNEL_LOGOUT_ALG: u16 = 1 << 14;

/// The byte the back-channel logout algorithm is written as.
fn alg_byte(alg: SigningAlg) -> u8 {
    match alg {
        SigningAlg::Es256 => 0,
        SigningAlg::EdDsa => 1,
        SigningAlg::Rs256 => 2,
    }
}

/// The algorithm written as `byte`.
fn alg_of_byte(byte: u8) -> Result<SigningAlg, StoreError> {
    match byte {
        0 => Ok(SigningAlg::Es256),
        1 => Ok(SigningAlg::EdDsa),
        2 => Ok(SigningAlg::Rs256),
        _ => Err(corrupt("back-channel logout algorithm")),
    }
}

/// How a session id is written: as text, or as the route and 16 random bytes of `ses_<route>…`.
const ID_TEXT: u8 = 0;
const ID_ROUTED: u8 = 1;
/// How an application id is written: as text (`ID_TEXT`), or as the 16 random bytes of an id
/// the engine made (`app_<22 base64url chars>`).
const APP_RANDOM: u8 = 2;

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

    /// A signed integer, zigzag LEB128: small deltas take a byte or two.
    fn varint(&mut self, value: i64) {
        let mut n = ((value << 1) ^ (value >> 63)) as u64;
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

    /// A session id: `ses_` ids made by the engine as their route and 16 random bytes.
    fn id(&mut self, id: &PublicId) {
        match routed_id(id.as_str()) {
            Some((route, random)) => {
                self.0.push(ID_ROUTED);
                self.0.push(route);
                self.0.extend_from_slice(&random);
            }
            None => {
                self.0.push(ID_TEXT);
                self.str(id.as_str());
            }
        }
    }

    /// An application id: `app_` ids made by the engine as their 16 random bytes.
    fn app(&mut self, id: &AppId) {
        match random_app(id.as_str()) {
            Some(random) => {
                self.0.push(APP_RANDOM);
                self.0.extend_from_slice(&random);
            }
            None => {
                self.0.push(ID_TEXT);
                self.str(id.as_str());
            }
        }
    }

    /// The elevations, as stored.
    fn elevations(&mut self, elevations: &[Elevation]) -> Result<(), StoreError> {
        self.json(
            &elevations
                .iter()
                .map(StoredElevation::from)
                .collect::<Vec<_>>(),
        )
    }

    /// The ending, as stored.
    fn ended(&mut self, ended: &Ended) -> Result<(), StoreError> {
        self.json(&StoredEnded::from(ended))
    }

    fn json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| corrupt(&e.to_string()))?;
        self.bytes(&json);
        Ok(())
    }

    /// Format 1's optional JSON part (its writer lives on in the tests).
    #[cfg(test)]
    fn opt_json<T: serde::Serialize>(&mut self, value: Option<&T>) -> Result<(), StoreError> {
        match value {
            Some(value) => {
                self.0.push(1);
                self.json(value)?;
            }
            None => self.0.push(0),
        }
        Ok(())
    }

    fn str(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    #[cfg(test)]
    fn opt_str(&mut self, text: Option<&str>) {
        match text {
            Some(text) => {
                self.0.push(1);
                self.str(text);
            }
            None => self.0.push(0),
        }
    }
}

/// How a session id stands in an index (a field of the id hash, a member of a time index): the
/// same compact form as in a record, 18 bytes for an engine id, else its text (which never starts
/// with the byte that marks the compact form).
pub fn id_member(id: &PublicId) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(18));
    match routed_id(id.as_str()) {
        Some(_) => w.id(id),
        None => w.0.extend_from_slice(id.as_str().as_bytes()),
    }
    w.0
}

/// The session id an index member stands for (`None` for a member no store of ours wrote).
pub fn member_id(member: &[u8]) -> Option<PublicId> {
    match member.first() {
        Some(&ID_ROUTED) if member.len() == 18 => Reader(member).id().ok(),
        _ => std::str::from_utf8(member)
            .ok()
            .map(|id| PublicId::from_string(id.to_owned())),
    }
}

/// The route and random bytes of an id of the form `ses_<2 hex digits><22 base64url chars>`
/// (every session id the engine makes), `None` for any other.
pub fn routed_id(id: &str) -> Option<(u8, [u8; 16])> {
    let rest = id.strip_prefix("ses_")?;
    let route = rest.get(..2)?;
    if !route
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || rest.len() != 24
    {
        return None;
    }
    let random: [u8; 16] = URL_SAFE_NO_PAD.decode(&rest[2..]).ok()?.try_into().ok()?;
    // Only ids that read back exactly (no other spelling of the same bytes).
    (URL_SAFE_NO_PAD.encode(random) == rest[2..])
        .then(|| u8::from_str_radix(route, 16).ok().map(|r| (r, random)))
        .flatten()
}

/// The session id `ses_<route><random>`: what [`routed_id`] reads.
pub fn routed_session_id(route: u8, random: &[u8]) -> PublicId {
    // Built in place: every read of a session decodes its id (no formatting machinery).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(28);
    text.push_str("ses_");
    text.push(char::from(HEX[usize::from(route >> 4)]));
    text.push(char::from(HEX[usize::from(route & 0xf)]));
    URL_SAFE_NO_PAD.encode_string(random, &mut text);
    PublicId::from_string(text)
}

/// The random bytes of an id of the form `app_<22 base64url chars>`.
fn random_app(id: &str) -> Option<[u8; 16]> {
    let rest = id.strip_prefix("app_")?;
    let random: [u8; 16] = URL_SAFE_NO_PAD.decode(rest).ok()?.try_into().ok()?;
    // Only ids that read back exactly (no other spelling of the same bytes).
    (URL_SAFE_NO_PAD.encode(random) == rest).then_some(random)
}

/// `policy <policy>: `, the opening of the rule texts the engine writes.
fn rule_opening(policy: &str) -> String {
    let mut text = String::with_capacity(9 + policy.len() + 32);
    text.push_str("policy ");
    text.push_str(policy);
    text.push_str(": ");
    text
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(&e.to_string()))
}

#[derive(Clone, Copy)]
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

    fn varint(&mut self) -> Result<i64, StoreError> {
        let mut n = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            n |= u64::from(byte & 0x7f).checked_shl(shift).unwrap_or(0);
            if byte & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err(corrupt("integer"))
    }

    fn id(&mut self) -> Result<PublicId, StoreError> {
        self.raw_id().map(RawId::to_id)
    }

    fn raw_id(&mut self) -> Result<RawId<'a>, StoreError> {
        match self.byte()? {
            ID_ROUTED => {
                let route = self.byte()?;
                let random = self.take(16)?.try_into().map_err(|_| corrupt("id"))?;
                Ok(RawId::Routed(route, random))
            }
            ID_TEXT => Ok(RawId::Text(self.str()?)),
            _ => Err(corrupt("id")),
        }
    }

    fn raw_app(&mut self) -> Result<RawApp<'a>, StoreError> {
        match self.byte()? {
            APP_RANDOM => Ok(RawApp::Random(
                self.take(16)?
                    .try_into()
                    .map_err(|_| corrupt("application"))?,
            )),
            ID_TEXT => Ok(RawApp::Text(self.str()?)),
            _ => Err(corrupt("application")),
        }
    }

    fn string(&mut self) -> Result<String, StoreError> {
        self.str().map(str::to_owned)
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| corrupt("text"))
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
            _ => from_json(self.bytes()?).map(Some),
        }
    }
}

/// A writer holding the header of `session`'s record in `format` (the header is the same in
/// every format: the Lua scripts read and patch it).
fn header(format: u8, session: &Session, capacity: usize) -> Writer {
    let mut w = Writer(Vec::with_capacity(capacity));
    w.0.push(format);
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
    w
}

/// The record of `session`.
pub fn encode(session: &Session) -> Result<Vec<u8>, StoreError> {
    let mut w = header(FORMAT, session, 128);
    let opening = rule_opening(&session.policy);
    let idle_rule = session.idle.as_ref().map(|idle| {
        idle.rule
            .strip_prefix(&opening)
            .map_or((idle.rule.as_str(), false), |rest| (rest, true))
    });
    let absolute_rule = session
        .absolute
        .rule
        .strip_prefix(&opening)
        .map_or((session.absolute.rule.as_str(), false), |rest| (rest, true));
    let flags = [
        (session.remember_me, REMEMBER_ME),
        (session.idle.is_some(), IDLE_RULE),
        (session.device.user_agent.is_some(), USER_AGENT),
        (session.device.ip.is_some(), IP),
        (session.parent.is_some(), PARENT),
        (session.reconstituted_from.is_some(), RECONSTITUTED_FROM),
        (!session.elevations.is_empty(), ELEVATIONS),
        (!session.data.is_null(), DATA),
        (session.ended.is_some(), ENDED),
        (session.application.as_str() != LEGACY_APP, APPLICATION),
        (
            idle_rule.is_some_and(|(_, short)| short),
            IDLE_RULE_OF_POLICY,
        ),
        (absolute_rule.1, ABSOLUTE_RULE_OF_POLICY),
        (true, TIMES_FROM_DEADLINE),
        (
            session.back_channel_logout_uri.is_some(),
            BACK_CHANNEL_LOGOUT_URI,
        ),
        (
            session.back_channel_logout_alg.is_some(),
            BACK_CHANNEL_LOGOUT_ALG,
        ),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .fold(0u16, |flags, (_, flag)| flags | flag);
    w.0.extend_from_slice(&flags.to_be_bytes());
    w.id(&session.id);
    w.str(&session.subject);
    w.str(&session.policy);
    let created = session.created_at.as_millis();
    // Wrapping, as the reader: any values make the round trip.
    let span = session.absolute.at.as_millis().wrapping_sub(created);
    w.varint(span);
    w.varint(created.wrapping_sub(session.authenticated_at.as_millis()));
    w.0.push(session.auth.level);
    w.len(session.auth.methods.len());
    for method in &session.auth.methods {
        w.str(method);
    }
    if let Some((rule, _)) = idle_rule {
        w.str(rule);
    }
    w.varint((session.absolute.lifetime_ms as i64).wrapping_sub(span));
    w.str(absolute_rule.0);
    if let Some(user_agent) = &session.device.user_agent {
        w.str(user_agent);
    }
    if let Some(ip) = &session.device.ip {
        w.str(ip);
    }
    if let Some(parent) = &session.parent {
        w.id(parent);
    }
    if let Some(from) = &session.reconstituted_from {
        w.id(from);
    }
    if !session.elevations.is_empty() {
        w.elevations(&session.elevations)?;
    }
    if !session.data.is_null() {
        // The application's own JSON, stored as it is.
        w.json(&session.data)?;
    }
    if let Some(ended) = &session.ended {
        w.ended(ended)?;
    }
    if session.application.as_str() != LEGACY_APP {
        w.app(&session.application);
    }
    if let Some(uri) = &session.back_channel_logout_uri {
        w.str(uri);
    }
    if let Some(alg) = session.back_channel_logout_alg {
        w.0.push(alg_byte(alg));
    }
    Ok(w.0)
}

/// The session stored under `token_hash` as `bytes`.
pub fn decode(token_hash: TokenHash, bytes: &[u8]) -> Result<Session, StoreError> {
    let mut r = Reader(bytes);
    let format = r.byte()?;
    if format != FORMAT && format != FORMAT_1 {
        return Err(corrupt("unknown format"));
    }
    let _live = r.byte()?;
    let version = r.int()? as u64;
    let last_seen_at = Timestamp::from_millis(r.int()?);
    let idle_at = Timestamp::from_millis(r.int()?);
    let idle_lifetime = r.int()?;
    let absolute_at = Timestamp::from_millis(r.int()?);
    let body = if format == FORMAT {
        body(&mut r, absolute_at.as_millis())?
    } else {
        body_v1(&mut r)?
    };
    let idle = match (idle_lifetime, body.idle_rule) {
        (lifetime, Some(rule)) if lifetime >= 0 => Some(Deadline {
            at: idle_at,
            lifetime_ms: lifetime as u64,
            rule,
        }),
        _ => None,
    };
    Ok(Session {
        id: body.id,
        token_hash,
        version,
        subject: body.subject,
        application: body.application,
        policy: body.policy,
        created_at: body.created_at,
        last_seen_at,
        authenticated_at: body.authenticated_at,
        remember_me: body.remember_me,
        auth: body.auth,
        elevations: body.elevations,
        device: body.device,
        data: body.data,
        idle,
        absolute: Deadline {
            at: absolute_at,
            lifetime_ms: body.absolute_lifetime as u64,
            rule: body.absolute_rule,
        },
        parent: body.parent,
        reconstituted_from: body.reconstituted_from,
        back_channel_logout_uri: body.back_channel_logout_uri,
        back_channel_logout_alg: body.back_channel_logout_alg,
        ended: body.ended,
    })
}

/// What a record holds after its header.
struct Body {
    id: PublicId,
    subject: String,
    application: AppId,
    policy: String,
    created_at: Timestamp,
    authenticated_at: Timestamp,
    remember_me: bool,
    auth: AuthContext,
    idle_rule: Option<String>,
    absolute_lifetime: i64,
    absolute_rule: String,
    device: Device,
    parent: Option<PublicId>,
    reconstituted_from: Option<PublicId>,
    back_channel_logout_uri: Option<String>,
    back_channel_logout_alg: Option<SigningAlg>,
    elevations: Vec<Elevation>,
    data: serde_json::Value,
    ended: Option<Ended>,
}

/// Elevations read as stored.
fn elevations(stored: Vec<StoredElevation>) -> Vec<Elevation> {
    stored.into_iter().map(Elevation::from).collect()
}

/// A session id as a record holds it, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawId<'a> {
    /// An id the engine made: its route and 16 random bytes.
    Routed(u8, [u8; 16]),
    /// Any other id, as its text.
    Text(&'a str),
}

impl RawId<'_> {
    /// The id itself.
    pub fn to_id(self) -> PublicId {
        match self {
            Self::Routed(route, random) => routed_session_id(route, &random),
            Self::Text(text) => PublicId::from_string(text.to_owned()),
        }
    }
}

/// A session's application as a record holds it, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawApp<'a> {
    /// The application of every session written before applications existed.
    Legacy,
    /// An id the engine made: its 16 random bytes.
    Random([u8; 16]),
    /// Any other id, as its text.
    Text(&'a str),
}

impl RawApp<'_> {
    /// The application's id.
    pub fn to_id(self) -> AppId {
        match self {
            Self::Legacy => legacy_app(),
            Self::Random(random) => {
                let mut text = String::with_capacity(26);
                text.push_str("app_");
                URL_SAFE_NO_PAD.encode_string(random, &mut text);
                PublicId::from_string(text)
            }
            Self::Text(text) => PublicId::from_string(text.to_owned()),
        }
    }
}

/// Format 2's body as it lies in the record: one walk of its fields, which [`decode`] turns into
/// a session and [`outline`] reads in place.
struct RawBody<'a> {
    flags: u16,
    id: RawId<'a>,
    subject: &'a str,
    policy: &'a str,
    created: i64,
    authenticated: i64,
    level: u8,
    /// The number of methods, and the reader positioned at the first.
    methods: (usize, Reader<'a>),
    idle_rule: Option<&'a str>,
    absolute_lifetime: i64,
    absolute_rule: &'a str,
    user_agent: Option<&'a str>,
    ip: Option<&'a str>,
    parent: Option<RawId<'a>>,
    reconstituted_from: Option<RawId<'a>>,
    elevations: Option<&'a [u8]>,
    data: Option<&'a [u8]>,
    ended: Option<&'a [u8]>,
    application: RawApp<'a>,
    back_channel_logout_uri: Option<&'a str>,
    back_channel_logout_alg: Option<SigningAlg>,
}

impl<'a> RawBody<'a> {
    /// Reads format 2's body; `absolute_at` is the absolute deadline from the header.
    fn read(r: &mut Reader<'a>, absolute_at: i64) -> Result<Self, StoreError> {
        let flags = u16::from_be_bytes(r.take(2)?.try_into().map_err(|_| corrupt("flags"))?);
        let has = |flag: u16| flags & flag != 0;
        let id = r.raw_id()?;
        let subject = r.str()?;
        let policy = r.str()?;
        let (created, span) = if has(TIMES_FROM_DEADLINE) {
            let span = r.varint()?;
            (absolute_at.wrapping_sub(span), Some(span))
        } else {
            (r.int()?, None)
        };
        let authenticated = created.wrapping_sub(r.varint()?);
        let level = r.byte()?;
        let count = r.len()?;
        let methods = (count, Reader(r.0));
        for _ in 0..count {
            r.bytes()?;
        }
        let idle_rule = has(IDLE_RULE).then(|| r.str()).transpose()?;
        let absolute_lifetime = match span {
            Some(span) => span.wrapping_add(r.varint()?),
            None => r.varint()?,
        };
        let body = Self {
            flags,
            id,
            subject,
            policy,
            created,
            authenticated,
            level,
            methods,
            idle_rule,
            absolute_lifetime,
            absolute_rule: r.str()?,
            user_agent: has(USER_AGENT).then(|| r.str()).transpose()?,
            ip: has(IP).then(|| r.str()).transpose()?,
            parent: has(PARENT).then(|| r.raw_id()).transpose()?,
            reconstituted_from: has(RECONSTITUTED_FROM).then(|| r.raw_id()).transpose()?,
            elevations: has(ELEVATIONS).then(|| r.bytes()).transpose()?,
            data: has(DATA).then(|| r.bytes()).transpose()?,
            ended: has(ENDED).then(|| r.bytes()).transpose()?,
            application: if has(APPLICATION) {
                r.raw_app()?
            } else {
                RawApp::Legacy
            },
            back_channel_logout_uri: has(BACK_CHANNEL_LOGOUT_URI).then(|| r.str()).transpose()?,
            back_channel_logout_alg: has(BACK_CHANNEL_LOGOUT_ALG)
                .then(|| alg_of_byte(r.byte()?))
                .transpose()?,
        };
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(body)
    }

    /// A rule's text: written without its `policy <policy>: ` opening when `flag` is set.
    fn rule(&self, text: &str, flag: u16) -> String {
        if self.flags & flag == 0 {
            return text.to_owned();
        }
        let mut rule = rule_opening(self.policy);
        rule.push_str(text);
        rule
    }
}

/// Format 2's body; `absolute_at` is the absolute deadline from the header.
fn body(r: &mut Reader<'_>, absolute_at: i64) -> Result<Body, StoreError> {
    let raw = RawBody::read(r, absolute_at)?;
    let (count, mut methods) = raw.methods;
    let methods = (0..count)
        .map(|_| methods.string())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Body {
        id: raw.id.to_id(),
        subject: raw.subject.to_owned(),
        application: raw.application.to_id(),
        policy: raw.policy.to_owned(),
        created_at: Timestamp::from_millis(raw.created),
        authenticated_at: Timestamp::from_millis(raw.authenticated),
        remember_me: raw.flags & REMEMBER_ME != 0,
        auth: AuthContext {
            methods,
            level: raw.level,
        },
        idle_rule: raw
            .idle_rule
            .map(|rule| raw.rule(rule, IDLE_RULE_OF_POLICY)),
        absolute_lifetime: raw.absolute_lifetime,
        absolute_rule: raw.rule(raw.absolute_rule, ABSOLUTE_RULE_OF_POLICY),
        device: Device {
            user_agent: raw.user_agent.map(str::to_owned),
            ip: raw.ip.map(str::to_owned),
        },
        parent: raw.parent.map(RawId::to_id),
        reconstituted_from: raw.reconstituted_from.map(RawId::to_id),
        back_channel_logout_uri: raw.back_channel_logout_uri.map(str::to_owned),
        back_channel_logout_alg: raw.back_channel_logout_alg,
        elevations: raw
            .elevations
            .map(from_json)
            .transpose()?
            .map(elevations)
            .unwrap_or_default(),
        data: raw
            .data
            .map(from_json)
            .transpose()?
            .unwrap_or(serde_json::Value::Null),
        ended: raw
            .ended
            .map(from_json::<StoredEnded>)
            .transpose()?
            .map(Ended::from),
    })
}

/// What the embedded store indexes a live session by, read in place from its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outline<'a> {
    /// The session's id.
    pub id: RawId<'a>,
    /// Its subject.
    pub subject: &'a str,
    /// Its application.
    pub application: RawApp<'a>,
    /// The policy it was created under.
    pub policy: &'a str,
    /// Its parent, if it has one.
    pub parent: Option<RawId<'a>>,
    /// [`Session::next_deadline`]'s time.
    pub next_deadline: Timestamp,
}

/// The outline of a live session from its record, without decoding it: opening ten million
/// sessions would otherwise allocate and free several strings for each. `None` for a record of
/// an ended session or in format 1: [`decode`] those.
pub fn outline(bytes: &[u8]) -> Result<Option<Outline<'_>>, StoreError> {
    let mut r = Reader(bytes);
    if r.byte()? != FORMAT {
        return Ok(None);
    }
    r.take(9)?;
    let _last_seen = r.int()?;
    let idle_at = r.int()?;
    let idle_lifetime = r.int()?;
    let absolute_at = r.int()?;
    let body = RawBody::read(&mut r, absolute_at)?;
    if body.ended.is_some() {
        return Ok(None);
    }
    let idle = body.idle_rule.is_some() && idle_lifetime >= 0;
    Ok(Some(Outline {
        id: body.id,
        subject: body.subject,
        application: body.application,
        policy: body.policy,
        parent: body.parent,
        next_deadline: Timestamp::from_millis(if idle && idle_at < absolute_at {
            idle_at
        } else {
            absolute_at
        }),
    }))
}

/// Format 1: fixed-width times, a presence byte before each optional part.
fn body_v1(r: &mut Reader<'_>) -> Result<Body, StoreError> {
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
    let elevations = r.opt_json()?.map(elevations).unwrap_or_default();
    let data = r.opt_json()?.unwrap_or(serde_json::Value::Null);
    let ended = r.opt_json::<StoredEnded>()?.map(Ended::from);
    Ok(Body {
        id,
        subject,
        application: legacy_app(),
        policy,
        created_at,
        authenticated_at,
        remember_me,
        auth: AuthContext { methods, level },
        idle_rule,
        absolute_lifetime,
        absolute_rule,
        device,
        parent,
        reconstituted_from,
        back_channel_logout_uri: None,
        back_channel_logout_alg: None,
        elevations,
        data,
        ended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::portcullis_app;
    use crate::session::EndReason;

    fn session() -> Session {
        let t = Timestamp::from_millis(1_764_000_000_123);
        Session {
            id: PublicId::from_string("ses_a3xyz".into()),
            token_hash: TokenHash([7; 32]),
            version: 12,
            subject: "usr_ü".into(),
            application: legacy_app(),
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
            back_channel_logout_uri: None,
            back_channel_logout_alg: None,
            ended: None,
        }
    }

    /// The writer of format 1, as it was, to show those records still read.
    fn encode_v1(session: &Session) -> Result<Vec<u8>, StoreError> {
        let mut w = header(FORMAT_1, session, 256);
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
        let elevations: Vec<StoredElevation> = session.elevations.iter().map(Into::into).collect();
        w.opt_json((!elevations.is_empty()).then_some(&elevations))?;
        w.opt_json((!session.data.is_null()).then_some(&session.data))?;
        w.opt_json(session.ended.as_ref().map(StoredEnded::from).as_ref())?;
        Ok(w.0)
    }

    /// The writer of format 2 as the release before applications had it (no application, rule
    /// texts whole, the creation time in 8 bytes), to show those records still read.
    fn encode_v2_before_applications(session: &Session) -> Result<Vec<u8>, StoreError> {
        let mut w = header(FORMAT, session, 128);
        let flags = [
            (session.remember_me, REMEMBER_ME),
            (session.idle.is_some(), IDLE_RULE),
            (session.device.user_agent.is_some(), USER_AGENT),
            (session.device.ip.is_some(), IP),
            (session.parent.is_some(), PARENT),
            (session.reconstituted_from.is_some(), RECONSTITUTED_FROM),
            (!session.elevations.is_empty(), ELEVATIONS),
            (!session.data.is_null(), DATA),
            (session.ended.is_some(), ENDED),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .fold(0u16, |flags, (_, flag)| flags | flag);
        w.0.extend_from_slice(&flags.to_be_bytes());
        w.id(&session.id);
        w.str(&session.subject);
        w.str(&session.policy);
        let created = session.created_at.as_millis();
        w.int(created);
        w.varint(created - session.authenticated_at.as_millis());
        w.0.push(session.auth.level);
        w.len(session.auth.methods.len());
        for method in &session.auth.methods {
            w.str(method);
        }
        if let Some(idle) = &session.idle {
            w.str(&idle.rule);
        }
        w.varint(session.absolute.lifetime_ms as i64);
        w.str(&session.absolute.rule);
        if let Some(user_agent) = &session.device.user_agent {
            w.str(user_agent);
        }
        if let Some(ip) = &session.device.ip {
            w.str(ip);
        }
        if let Some(parent) = &session.parent {
            w.id(parent);
        }
        if let Some(from) = &session.reconstituted_from {
            w.id(from);
        }
        if !session.elevations.is_empty() {
            w.elevations(&session.elevations)?;
        }
        if !session.data.is_null() {
            // The application's own JSON, stored as it is.
            w.json(&session.data)?;
        }
        if let Some(ended) = &session.ended {
            w.ended(ended)?;
        }
        Ok(w.0)
    }

    /// A session as the scale benchmark writes them: no data, a short rule, an engine id.
    fn plain(random: &crate::SeededRandom) -> Session {
        let mut plain = session();
        plain.id = PublicId::generate_routed("ses_", 0x1f, random);
        plain.subject = "user123456".into();
        plain.policy = "noidle".into();
        plain.auth.methods = vec!["pwd".into()];
        plain.idle = None;
        plain.absolute.rule = "policy noidle: absolute".into();
        plain
    }

    #[test]
    fn records_written_before_applications_read_as_the_legacy_applications() {
        let random = crate::SeededRandom::new(3);
        let mut full = session();
        full.device.ip = Some("192.0.2.1".into());
        full.parent = Some(PublicId::generate_routed("ses_", 0xa3, &random));
        full.ended = Some(Ended {
            reason: EndReason::Logout,
            at: full.created_at,
            reconstitute_until: None,
            reconstituted_into: None,
            purge_at: full.absolute.at,
        });
        for session in [session(), plain(&random), full] {
            let bytes = encode_v2_before_applications(&session).unwrap();
            let read = decode(session.token_hash, &bytes).unwrap();
            assert_eq!(read.application.as_str(), LEGACY_APP);
            assert_eq!(read, session);
            // Written again, the legacy application takes no byte.
            let again = encode(&read).unwrap();
            let flags = u16::from_be_bytes([again[HEADER], again[HEADER + 1]]);
            assert_eq!(flags & APPLICATION, 0);
            assert_eq!(decode(session.token_hash, &again).unwrap(), session);
        }
    }

    #[test]
    fn an_application_survives_a_round_trip() {
        let random = crate::SeededRandom::new(5);
        let app = PublicId::generate("app_", &random);
        let legacy = plain(&random);
        let legacy_len = encode(&legacy).unwrap().len();
        for (application, extra) in [
            // An engine id: a marker and its 16 random bytes.
            (app, 17),
            // Portcullis's own sessions, and ids of other shapes: a marker and the text.
            (portcullis_app(), 2 + PORTCULLIS_LEN),
            (PublicId::from_string("app_short".into()), 11),
            (PublicId::from_string(format!("app_{}", "A".repeat(22))), 17),
            // Not the one spelling of its bytes: kept as text.
            (
                PublicId::from_string(format!("app_{}B", "A".repeat(21))),
                28,
            ),
            (PublicId::from_string("shop".into()), 6),
        ] {
            let mut session = legacy.clone();
            session.application = application;
            let bytes = encode(&session).unwrap();
            assert_eq!(
                bytes.len(),
                legacy_len + extra,
                "{}",
                session.application.as_str()
            );
            assert_eq!(decode(session.token_hash, &bytes).unwrap(), session);
            let mut ended = session.clone();
            ended.data = serde_json::json!({"cart": 1});
            ended.ended = Some(Ended {
                reason: EndReason::AppRemoved,
                at: ended.created_at,
                reconstitute_until: None,
                reconstituted_into: None,
                purge_at: ended.absolute.at,
            });
            let bytes = encode(&ended).unwrap();
            assert_eq!(decode(ended.token_hash, &bytes).unwrap(), ended);
        }
    }

    const PORTCULLIS_LEN: usize = crate::PORTCULLIS_APP.len();

    #[test]
    fn the_portcullis_application_survives_a_round_trip() {
        let mut sso = session();
        sso.application = portcullis_app();
        sso.policy = crate::SSO_POLICY.into();
        sso.absolute.rule = format!("policy {}: absolute 12h (configured)", sso.policy);
        let bytes = encode(&sso).unwrap();
        let read = decode(sso.token_hash, &bytes).unwrap();
        assert_eq!(read.application.as_str(), crate::PORTCULLIS_APP);
        assert_eq!(read, sso);
    }

    #[test]
    fn rules_and_times_are_written_short_and_read_whole() {
        let random = crate::SeededRandom::new(9);
        let mut session = plain(&random);
        session.idle = Some(Deadline {
            at: Timestamp::from_millis(session.created_at.as_millis() + 900_000),
            lifetime_ms: 900_000,
            rule: "policy noidle: idle 15m (built-in default)".into(),
        });
        let short = encode(&session).unwrap();
        let whole = encode_v2_before_applications(&session).unwrap();
        // "policy noidle: " twice, 4 bytes of the creation time, 3 of the absolute lifetime.
        assert_eq!(short.len() + 2 * 15 + 4 + 3, whole.len());
        assert_eq!(decode(session.token_hash, &short).unwrap(), session);
        // Rules of another policy, or other texts, are kept whole; times far from the
        // deadline (a re-constituted session keeps its deadline) still make the round trip.
        session.idle.as_mut().unwrap().rule = "policy other: idle".into();
        session.absolute.rule = "policy noidle:absolute".into();
        session.created_at = Timestamp::from_millis(session.absolute.at.as_millis() + 5);
        session.authenticated_at = Timestamp::from_millis(-1);
        session.absolute.lifetime_ms = 1;
        let bytes = encode(&session).unwrap();
        assert_eq!(decode(session.token_hash, &bytes).unwrap(), session);
        session.absolute.at = Timestamp::from_millis(i64::MIN);
        session.created_at = Timestamp::from_millis(i64::MAX);
        session.absolute.lifetime_ms = u64::MAX;
        let bytes = encode(&session).unwrap();
        assert_eq!(decode(session.token_hash, &bytes).unwrap(), session);
    }

    #[test]
    fn records_of_format_1_still_read() {
        let mut full = session();
        full.device.ip = Some("192.0.2.1".into());
        full.parent = Some(PublicId::from_string("ses_parent".into()));
        for session in [session(), full] {
            let bytes = encode_v1(&session).unwrap();
            assert_eq!(bytes[0], FORMAT_1);
            assert_eq!(decode(session.token_hash, &bytes).unwrap(), session);
        }
    }

    #[test]
    fn engine_ids_take_their_random_bytes_and_others_their_text() {
        let random = crate::SeededRandom::new(7);
        let mut routed = session();
        routed.id = PublicId::generate_routed("ses_", 0xa3, &random);
        routed.parent = Some(PublicId::generate_routed("ses_", 0xa3, &random));
        routed.reconstituted_from = Some(PublicId::generate_routed("ses_", 0x00, &random));
        let compact = encode(&routed).unwrap();
        assert_eq!(decode(routed.token_hash, &compact).unwrap(), routed);
        let mut texts = routed.clone();
        texts.id = PublicId::from_string("ses_A3".repeat(4));
        texts.parent = Some(PublicId::from_string("key_a3xyz".into()));
        texts.reconstituted_from = Some(PublicId::from_string("ses_zz".into()));
        assert_eq!(
            decode(texts.token_hash, &encode(&texts).unwrap()).unwrap(),
            texts
        );
        assert!(compact.len() + 30 <= encode_v1(&routed).unwrap().len());
        assert_eq!(routed_id("ses_a3"), None);
        for id in [&routed.id, &texts.id] {
            assert_eq!(member_id(&id_member(id)).as_ref(), Some(id));
        }
        assert_eq!(id_member(&routed.id).len(), 18);
    }

    #[test]
    fn a_plain_session_of_an_application_fits_in_128_bytes() {
        // Redis adds 4 bytes (sds header and terminator); past 128 the allocation is 160.
        let random = crate::SeededRandom::new(1);
        let mut plain = plain(&random);
        plain.application = PublicId::generate("app_", &random);
        let bytes = encode(&plain).unwrap();
        assert!(bytes.len() <= 124, "{} bytes", bytes.len());
        let v1 = encode_v1(&plain).unwrap().len();
        assert!(
            bytes.len() + 25 <= v1,
            "format 2: {} bytes, format 1: {v1}",
            bytes.len()
        );
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
        full.back_channel_logout_uri = Some("https://rp.example/logout?x=1".into());
        full.back_channel_logout_alg = Some(SigningAlg::Rs256);
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

        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            full.back_channel_logout_alg = Some(alg);
            let bytes = encode(&full).unwrap();
            assert_eq!(decode(full.token_hash, &bytes).unwrap(), full);
        }
        let mut unknown = encode(&full).unwrap();
        *unknown.last_mut().unwrap() = 3;
        assert!(matches!(
            decode(full.token_hash, &unknown),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn the_outline_of_a_live_record_says_what_its_decode_says() {
        let random = crate::SeededRandom::new(9);
        let mut shapes = vec![session(), plain(&random)];
        let mut idle_last = session();
        idle_last.idle.as_mut().unwrap().at =
            Timestamp::from_millis(idle_last.absolute.at.as_millis() + 1);
        shapes.push(idle_last);
        let mut child = plain(&random);
        child.parent = Some(PublicId::generate_routed("ses_", 0xa3, &random));
        child.application = PublicId::generate("app_", &random);
        child.data = serde_json::json!({"cart": [1]});
        child.back_channel_logout_uri = Some("https://rp.example/logout".into());
        child.back_channel_logout_alg = Some(SigningAlg::EdDsa);
        shapes.push(child);
        let mut texts = session();
        texts.parent = Some(PublicId::from_string("ses_parent".into()));
        texts.application = PublicId::from_string("shop".into());
        texts.device.user_agent = Some("Mozilla/5.0".into());
        shapes.push(texts);
        for session in shapes {
            let bytes = encode(&session).unwrap();
            let outline = outline(&bytes)
                .unwrap()
                .expect("a live record has an outline");
            assert_eq!(outline.id.to_id(), session.id);
            assert_eq!(outline.subject, session.subject);
            assert_eq!(outline.application.to_id(), session.application);
            assert_eq!(outline.policy, session.policy);
            assert_eq!(outline.parent.map(RawId::to_id), session.parent);
            assert_eq!(outline.next_deadline, session.next_deadline().0);
            assert_eq!(session, decode(session.token_hash, &bytes).unwrap());
        }

        let mut ended = session();
        ended.ended = Some(Ended {
            reason: EndReason::Logout,
            at: ended.created_at,
            reconstitute_until: None,
            reconstituted_into: None,
            purge_at: ended.absolute.at,
        });
        assert_eq!(
            outline(&encode(&ended).unwrap()).unwrap(),
            None,
            "ended: decode it"
        );
        let v1 = encode_v1(&session()).unwrap();
        assert_eq!(outline(&v1).unwrap(), None, "format 1: decode it");
        let bytes = encode(&session()).unwrap();
        assert!(
            outline(&bytes[..bytes.len() - 1]).is_err(),
            "a damaged record"
        );
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
