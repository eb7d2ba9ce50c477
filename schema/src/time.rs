//! `Timestamp`: a UTC instant with microsecond precision, the precision
//! PostgreSQL stores. Its text form (RFC 3339, UTC, exactly six fractional
//! digits, `Z`) is part of the canonical encoding and must never change.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    pub fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Only clocks call this; the domain takes
    /// `now` as an argument.
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_micros())
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1_000_000)))
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
        Utc.timestamp_micros(self.0).single().unwrap_or_default()
    }

    pub fn parse(text: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Timestamp(t.with_timezone(&Utc).timestamp_micros()))
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(value: DateTime<Utc>) -> Self {
        Timestamp(value.timestamp_micros())
    }
}

impl Timestamp {
    /// Appends the text form to `out` without allocating: the canonical
    /// encoder writes two per event. Years 0–9999 are formatted here;
    /// others (which RFC 3339 cannot spell plainly) go through chrono.
    pub fn write_text(self, out: &mut Vec<u8>) {
        let datetime = self.to_datetime();
        let year = datetime.year();
        if !(0..=9999).contains(&year) {
            out.extend_from_slice(
                datetime
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
                    .as_bytes(),
            );
            return;
        }
        let micros = datetime.timestamp_subsec_micros();
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, digits: usize, mut value: u32| {
            for index in (at..at + digits).rev() {
                text[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, datetime.month());
        put(8, 2, datetime.day());
        put(11, 2, datetime.hour());
        put(14, 2, datetime.minute());
        put(17, 2, datetime.second());
        put(20, 6, micros);
        out.extend_from_slice(&text);
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(27);
        self.write_text(&mut text);
        f.write_str(&String::from_utf8_lossy(&text))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
    use proptest::prelude::*;

    #[test]
    fn text_form_is_utc_with_six_fraction_digits() {
        let t = Timestamp::from_micros(1_700_000_000_000_001);
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.000001Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2023-11-14T22:13:20.000001Z\"");
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = Timestamp::parse("2023-11-14T23:13:20.5+01:00").unwrap();
        assert_eq!(t.to_string(), "2023-11-14T22:13:20.500000Z");
    }

    proptest! {
        #[test]
        fn text_form_round_trips(micros in -1_000_000_000_000_000i64..8_000_000_000_000_000i64) {
            let t = Timestamp::from_micros(micros);
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }

        /// The hand-written formatter is chrono's RFC 3339 form exactly,
        /// over the whole range of the type.
        #[test]
        fn text_form_is_chronos_rfc3339(micros in any::<i64>()) {
            let t = Timestamp::from_micros(micros);
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
            prop_assert_eq!(t.to_string(), chrono);
        }

        #[test]
        fn text_form_is_chronos_rfc3339_in_years_0_to_9999(
            micros in -62_167_219_200_000_000i64..253_402_300_800_000_000i64,
        ) {
            let t = Timestamp::from_micros(micros);
            let chrono = t.to_datetime().to_rfc3339_opts(SecondsFormat::Micros, true);
            prop_assert_eq!(t.to_string(), chrono);
        }
    }
}
