//! `Timestamp`: a UTC instant with microsecond precision, the precision
//! PostgreSQL stores, always within [`Timestamp::MIN`, `Timestamp::MAX`]
//! (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z). Its text form
//! (RFC 3339, UTC, four-digit year, exactly six fractional digits, `Z`) is
//! part of the canonical encoding and must never change.
//!
//! The range is an invariant of the type, not a check somewhere: every
//! constructor either refuses a value outside it (`parse`,
//! `try_from_micros`, deserialization — what clients and stored rows go
//! through) or says in its name that it saturates (`from_micros_saturating`,
//! `plus_seconds`: clocks and arithmetic). So every `Timestamp` has exactly
//! one text form, which parses back to itself; the encoder never needs a
//! fallback and an event can never hold an instant its log cannot read.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a text or a number is not a `Timestamp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("expected an RFC 3339 date-time such as 2030-01-31T12:00:00Z ({0})")]
    Syntax(chrono::ParseError),
    #[error("must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z once converted to UTC")]
    OutOfRange,
    #[error("expected an RFC 3339 date-time such as 2030-01-31T12:00:00Z (`T` and `Z` in capitals, seconds 00 to 59)")]
    Form,
}

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const MIN: Timestamp = Timestamp(0);
    /// 9999-12-31T23:59:59.999999Z: the last instant RFC 3339 spells with
    /// a four-digit year.
    pub const MAX: Timestamp = Timestamp(253_402_300_799_999_999);
    pub const UNIX_EPOCH: Timestamp = Timestamp::MIN;

    /// The instant `micros` after the epoch, if it lies in the range.
    pub fn try_from_micros(micros: i64) -> Result<Self, TimestampError> {
        if (Self::MIN.0..=Self::MAX.0).contains(&micros) {
            Ok(Timestamp(micros))
        } else {
            Err(TimestampError::OutOfRange)
        }
    }

    /// The instant `micros` after the epoch, clamped to the range: for
    /// clocks and test fixtures, never for values read from a client or a
    /// row (those use `try_from_micros` and fail instead).
    pub fn from_micros_saturating(micros: i64) -> Self {
        Timestamp(micros.clamp(Self::MIN.0, Self::MAX.0))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Only clocks call this; the domain takes
    /// `now` as an argument.
    pub fn now() -> Self {
        Timestamp::from_micros_saturating(Utc::now().timestamp_micros())
    }

    /// `seconds` later, saturating at the ends of the range (a lease's
    /// expiry computed in the year 9999 stops at `MAX`).
    pub fn plus_seconds(self, seconds: i64) -> Self {
        Timestamp::from_micros_saturating(self.0.saturating_add(seconds.saturating_mul(1_000_000)))
    }

    pub fn minus_seconds(self, seconds: i64) -> Self {
        self.plus_seconds(seconds.saturating_neg())
    }

    /// Whole and fractional seconds from `earlier` to `self` (negative when
    /// `earlier` is later), in microseconds.
    pub fn micros_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        // Total: every value in the range is a valid chrono instant.
        Utc.timestamp_micros(self.0).single().unwrap_or_default()
    }

    /// Parses RFC 3339 with any offset, normalizes it to UTC (digits past
    /// microseconds are truncated) and refuses an instant outside the range.
    /// The form is the one OpenAPI's `date-time` validators check (and the
    /// document's pattern states): `T` and `Z` in capitals, seconds 00 to
    /// 59; chrono's tolerance of a space, lower case and leap seconds is
    /// not taken up, so what the contract calls invalid the server refuses.
    /// Stored events written by older versions are read by
    /// [`Self::parse_legacy`], which keeps that tolerance.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let bytes = text.as_bytes();
        if bytes.get(10) != Some(&b'T')
            || bytes.get(17..19) == Some(b"60".as_slice())
            || text.contains(['t', 'z'])
        {
            return Err(TimestampError::Form);
        }
        let parsed = DateTime::parse_from_rfc3339(text).map_err(TimestampError::Syntax)?;
        Timestamp::try_from_micros(parsed.with_timezone(&Utc).timestamp_micros())
    }

    /// Parses a timestamp as an older version may have stored it: also the
    /// wider text forms (`+10000-01-01T…`, `-0001-…`, years before 1970)
    /// that versions before the range check wrote for out-of-range
    /// instants. Those are clamped to the nearest end of the range, which
    /// decides the same everywhere it is used (an expiry in the year 10000
    /// and one at the end of 9999 have both not passed; an expiry before
    /// 1970 and one at 1970 have both passed). Only the legacy decoder of
    /// stored events calls this; see `Event::decode`.
    pub fn parse_legacy(text: &str) -> Result<Self, TimestampError> {
        if let Ok(parsed) = DateTime::parse_from_rfc3339(text) {
            return Ok(Timestamp::from_micros_saturating(
                parsed.with_timezone(&Utc).timestamp_micros(),
            ));
        }
        // Expanded years: a sign, then at least four digits, then `-MM-…`.
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Timestamp::parse(text),
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits < 4 || rest.as_bytes().get(digits) != Some(&b'-') {
            return Timestamp::parse(text);
        }
        // Check the rest is a date-time by parsing it with a stand-in year.
        let probe = format!("2000{}", &rest[digits..]);
        DateTime::parse_from_rfc3339(&probe).map_err(TimestampError::Syntax)?;
        Ok(if sign > 0 {
            Timestamp::MAX
        } else {
            Timestamp::MIN
        })
    }
}

impl TryFrom<DateTime<Utc>> for Timestamp {
    type Error = TimestampError;

    fn try_from(value: DateTime<Utc>) -> Result<Self, Self::Error> {
        Timestamp::try_from_micros(value.timestamp_micros())
    }
}

impl Timestamp {
    /// Appends the text form to `out` without allocating: the canonical
    /// encoder writes two per event.
    pub fn write_text(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.text());
    }

    /// The text form, on the stack. The range guarantees a four-digit
    /// year, so there is one form and no fallback.
    fn text(self) -> [u8; 27] {
        let datetime = self.to_datetime();
        let year = datetime.year();
        debug_assert!((1970..=9999).contains(&year), "Timestamp out of its range");
        let micros = datetime.timestamp_subsec_micros();
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, digits: usize, mut value: u32| {
            for index in (at..at + digits).rev() {
                text[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year.unsigned_abs());
        put(5, 2, datetime.month());
        put(8, 2, datetime.day());
        put(11, 2, datetime.hour());
        put(14, 2, datetime.minute());
        put(17, 2, datetime.second());
        put(20, 6, micros);
        text
    }

    /// [`Timestamp::text`] as a `&str` for `f`, without allocating.
    fn with_text<T>(self, f: impl FnOnce(&str) -> T) -> T {
        let text = self.text();
        // Digits and ASCII punctuation only: always UTF-8.
        f(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_text(|text| f.write_str(text))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.with_text(|text| serializer.serialize_str(text))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;
    use proptest::prelude::*;

    #[test]
    fn text_form_is_utc_with_six_fraction_digits() {
        let t = Timestamp::try_from_micros(1_700_000_000_000_001).unwrap();
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.000001Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.000001Z\"");
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = Timestamp::parse("2023-11-14T23:13:20.5+01:00").unwrap();
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.500000Z");
    }

    #[test]
    fn the_ends_of_the_range_are_spelled_with_four_digit_years() {
        assert_eq!(Timestamp::MIN.to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp::parse("9999-12-31T23:59:59.999999Z"),
            Ok(Timestamp::MAX)
        );
        assert_eq!(Timestamp::parse("1970-01-01T00:00:00Z"), Ok(Timestamp::MIN));
    }

    /// Requests with offsets that move a four-digit year out of
    /// the range once normalized.
    #[test]
    fn offsets_that_leave_the_range_are_refused() {
        for text in [
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+23:59",
            "1969-12-31T23:59:59.999999Z",
            "1970-01-01T00:59:59+01:00",
        ] {
            assert_eq!(
                Timestamp::parse(text),
                Err(TimestampError::OutOfRange),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<Timestamp>("\"9999-12-31T23:59:59-23:59\"").is_err());
    }

    #[test]
    fn only_the_form_openapi_calls_date_time_is_accepted() {
        assert!(Timestamp::parse("2030-01-31T12:00:00+01:00").is_ok());
        for text in [
            "2030-01-31 12:00:00Z",
            "2030-01-31t12:00:00Z",
            "2030-01-31T12:00:00z",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(Timestamp::parse(text), Err(TimestampError::Form), "{text}");
        }
        // What older versions stored stays readable.
        assert_eq!(
            Timestamp::parse_legacy("2016-12-31T23:59:60Z")
                .unwrap()
                .to_string(),
            "2017-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn extra_digits_are_truncated() {
        assert_eq!(
            Timestamp::parse("2030-01-01T00:00:00.1234567Z")
                .unwrap()
                .to_string(),
            "2030-01-01T00:00:00.123456Z"
        );
    }

    #[test]
    fn legacy_wide_forms_clamp_to_the_nearest_end() {
        assert_eq!(
            Timestamp::parse_legacy("+10000-01-01T23:58:59.000000Z"),
            Ok(Timestamp::MAX)
        );
        assert_eq!(
            Timestamp::parse_legacy("-0001-12-31T00:01:00.000000Z"),
            Ok(Timestamp::MIN)
        );
        assert_eq!(
            Timestamp::parse_legacy("0000-12-31T00:01:00.000000Z"),
            Ok(Timestamp::MIN)
        );
        assert_eq!(
            Timestamp::parse_legacy("2030-01-01T00:00:00.000000Z"),
            Timestamp::parse("2030-01-01T00:00:00Z")
        );
        assert!(Timestamp::parse_legacy("+10000-13-01T00:00:00Z").is_err());
        assert!(Timestamp::parse_legacy("yesterday").is_err());
    }

    #[test]
    fn arithmetic_saturates_at_the_ends() {
        assert_eq!(Timestamp::MAX.plus_seconds(1), Timestamp::MAX);
        assert_eq!(Timestamp::MIN.minus_seconds(1), Timestamp::MIN);
        assert_eq!(Timestamp::from_micros_saturating(i64::MIN), Timestamp::MIN);
        assert_eq!(
            Timestamp::try_from_micros(-1),
            Err(TimestampError::OutOfRange)
        );
    }

    fn any_timestamp() -> impl Strategy<Value = Timestamp> {
        (Timestamp::MIN.0..=Timestamp::MAX.0).prop_map(Timestamp)
    }

    proptest! {
        #[test]
        fn text_form_round_trips(t in any_timestamp()) {
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
            prop_assert_eq!(Timestamp::parse_legacy(&t.to_string()).unwrap(), t);
        }

        /// The hand-written formatter is chrono's RFC 3339 form exactly,
        /// over the whole range of the type.
        #[test]
        fn text_form_is_chronos_rfc3339(t in any_timestamp()) {
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
            prop_assert_eq!(t.to_string(), chrono);
        }

        /// Whatever the offset, a parsed instant is in the range or refused.
        #[test]
        fn any_offset_parses_into_the_range_or_is_refused(
            year in 0u32..=9999, month in 1u32..=12, day in 1u32..=28,
            hour in 0u32..=23, minute in 0u32..=59, second in 0u32..=60,
            offset_minutes in -1439i32..=1439,
        ) {
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let offset = offset_minutes.unsigned_abs();
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{sign}{:02}:{:02}",
                offset / 60, offset % 60
            );
            match Timestamp::parse(&text) {
                Ok(t) => {
                    prop_assert!((Timestamp::MIN..=Timestamp::MAX).contains(&t));
                    prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
                }
                Err(TimestampError::Form) => prop_assert_eq!(second, 60, "{}", text),
                Err(error) => prop_assert!(matches!(error, TimestampError::OutOfRange | TimestampError::Syntax(_)), "{text}"),
            }
        }
    }
}
