//! Writing answers as JSON.
//!
//! Most answers go through serde. The session views do not: every validation answers with a
//! whole session view, and serde's way of writing it (an owned view of some twenty strings, then
//! every key and every string byte by byte through the escaper, timestamps through `time`'s
//! formatter) cost as much server CPU as all the rest of a validation. The views write
//! themselves instead ([`WriteJson`]): keys are literals, strings that need no escaping are
//! copied in one go, timestamps are written digit by digit (see `bench/analysis.md`).

use portcullis_core::Timestamp;
use serde::Serialize;

/// A value that can write itself as one JSON document into a buffer.
pub trait WriteJson {
    /// Appends the JSON text of `self` to `out`.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error>;
}

impl<T: Serialize> WriteJson for T {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, self)
    }
}

/// Appends `s` as a JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    // Folding without an early exit lets the compiler check many bytes at a time.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json's escaping is the one we use; writing a `&str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Appends `s` as a JSON string, or `null`.
pub fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends a list of strings.
pub fn strings(out: &mut Vec<u8>, list: &[String]) {
    out.push(b'[');
    for (i, s) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, s);
    }
    out.push(b']');
}

/// Appends an unsigned number.
pub fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `true` or `false`.
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends `t` as a JSON string of its RFC 3339 text (see [`rfc3339`]).
pub fn timestamp(out: &mut Vec<u8>, t: Timestamp) {
    out.push(b'"');
    rfc3339(out, t);
    out.push(b'"');
}

/// Appends `t` in RFC 3339 UTC, as the API has always written it: milliseconds without
/// trailing zeros (none at all on a whole second), `Z` for UTC. A time outside the years
/// 0–9999, which RFC 3339 cannot express, appends nothing.
pub fn rfc3339(out: &mut Vec<u8>, t: Timestamp) {
    let millis = t.as_millis();
    let (year, month, day) = civil_date(millis.div_euclid(86_400_000));
    let Ok(year @ 0..=9999) = u32::try_from(year) else {
        return;
    };
    // Below 86,400,000, so it fits.
    let of_day = millis.rem_euclid(86_400_000) as u32;
    let (seconds, ms) = (of_day / 1000, of_day % 1000);
    let mut text = *b"0000-00-00T00:00:00.000";
    put_two(&mut text[0..2], year / 100);
    put_two(&mut text[2..4], year % 100);
    put_two(&mut text[5..7], month);
    put_two(&mut text[8..10], day);
    put_two(&mut text[11..13], seconds / 3600);
    put_two(&mut text[14..16], seconds / 60 % 60);
    put_two(&mut text[17..19], seconds % 60);
    let fraction = match ms {
        0 => 0,
        _ if ms % 100 == 0 => 1,
        _ if ms % 10 == 0 => 2,
        _ => 3,
    };
    if fraction == 0 {
        out.extend_from_slice(&text[..19]);
    } else {
        text[20] = b'0' + (ms / 100) as u8;
        put_two(&mut text[21..23], ms % 100);
        out.extend_from_slice(&text[..20 + fraction]);
    }
    out.push(b'Z');
}

/// Writes `n` (below 100) as two digits into `slot`.
fn put_two(slot: &mut [u8], n: u32) {
    slot[0] = b'0' + (n / 10) as u8;
    slot[1] = b'0' + (n % 10) as u8;
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Counted in 400-year eras that start on 1 March, so the leap day ends each year.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // Both in 1..=31 and 1..=12 by construction.
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    /// What `time` writes for the same instant (the API's format before this writer).
    fn by_time(millis: i64) -> String {
        let text = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .ok()
            .and_then(|dt| dt.format(&Rfc3339).ok())
            .unwrap_or_default();
        serde_json::to_string(&text).expect("string")
    }

    #[test]
    fn timestamps_read_as_before() {
        for millis in [
            0,
            1,
            10,
            100,
            999,
            1_000,
            86_399_999,
            951_782_400_000,     // 2000-02-29
            1_764_625_890_364,   // 2025-12-01T21:51:30.364Z
            253_402_300_799_999, // 9999-12-31T23:59:59.999Z
            253_402_300_800_000, // year 10000: not RFC 3339
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // before year 0
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(
                written(|o| timestamp(o, Timestamp::from_millis(millis))),
                by_time(millis),
                "{millis}"
            );
            // The plain text that events, API keys and accounts carry.
            assert_eq!(
                serde_json::to_string(&crate::wire::rfc3339(Timestamp::from_millis(millis)))
                    .expect("string"),
                by_time(millis),
                "{millis}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_timestamp_reads_as_time_writes_it(millis in -62_200_000_000_000i64..253_500_000_000_000) {
            prop_assert_eq!(written(|o| timestamp(o, Timestamp::from_millis(millis))), by_time(millis));
        }

        #[test]
        fn any_string_is_written_as_serde_json_writes_it(s in any::<String>()) {
            prop_assert_eq!(written(|o| string(o, &s)), serde_json::to_string(&s).expect("string"));
        }
    }

    #[test]
    fn strings_that_need_escaping_are_escaped() {
        assert_eq!(
            written(|o| string(o, "a\"b\\c\nd\u{1}é")),
            r#""a\"b\\c\nd\u0001é""#
        );
        assert_eq!(written(|o| optional_string(o, None)), "null");
        assert_eq!(
            written(|o| strings(o, &["pwd".into(), "o\"tp".into()])),
            r#"["pwd","o\"tp"]"#
        );
        assert_eq!(written(|o| strings(o, &[])), "[]");
    }
}
