//! Time as the domain sees it: millisecond timestamps and an injected [`Clock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
///
/// A plain integer keeps deadline arithmetic and comparisons on the hot path cheap and makes the
/// value trivially storable in every backend; the HTTP layer renders it as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant moved forward by `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }

    /// This instant moved back by `d` (saturating).
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(d)))
    }

    /// How long from `self` until `later`; zero when `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0 - self.0).unwrap_or(0))
    }
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where "now" comes from. Production uses [`SystemClock`]; tests move a [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(duration_millis(since))
    }
}

/// A clock that only moves when told to, so timeouts are tested without sleeping.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start.0))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(duration_millis(d), Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// 2026-01-01T00:00:00Z, a fixed and readable starting point for tests.
    fn default() -> Self {
        Self::new(Timestamp(1_767_225_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A lifetime written `"none"`: no limit. Held as a hundred years rather than as a special
/// case, so that every store orders and stores such deadlines like any other.
pub const NO_LIMIT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration written as `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`, or
/// `none` ([`NO_LIMIT`]).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(portcullis_core::parse_duration("15m"), Ok(Duration::from_secs(900)));
/// assert!(portcullis_core::parse_duration("15").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "none" {
        return Ok(NO_LIMIT);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("\"{text}\" has no unit (use ms, s, m, h or d, e.g. \"15m\")"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" does not start with a whole number (e.g. \"15m\")"))?;
    let millis_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "\"{text}\" has unknown unit \"{unit}\" (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(millis_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// Writes a duration in the largest unit that divides it exactly (`900s` → `15m`).
pub fn format_duration(d: Duration) -> String {
    if d == NO_LIMIT {
        return "none".to_owned();
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_in_every_unit() {
        for text in ["900ms", "3s", "15m", "12h", "30d", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(parse_duration("15x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").unwrap_err().contains("whole number"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        clock.advance(Duration::from_secs(60));
        assert_eq!(t0.until(clock.now()), Duration::from_secs(60));
        assert_eq!(clock.now().until(t0), Duration::ZERO);
    }
}
