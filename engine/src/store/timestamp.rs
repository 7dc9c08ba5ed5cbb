//! [`Timestamp`]: the one type the repository's documents use for a point in time.
//!
//! Why a type: documents (manifests, the catalog head, status objects, audit records, pins,
//! drill reports, WAL records) used to keep times as RFC 3339 strings, and each command that
//! needed the instant parsed them itself, some falling back silently (to "now" or to the
//! epoch) on a value that did not parse. Now there is one parse site and one format site:
//! a document with an invalid time is rejected when it is read, naming the value, instead of
//! being misread at one use and accepted at another.
//!
//! The on-disk and JSON form is unchanged: the same RFC 3339 string, in UTC with a `Z`
//! suffix and the fractional seconds `time` prints (none when zero, else up to nine digits
//! without trailing zeros). A value written with another offset is read as the same instant
//! and written back in UTC.
//!
//! Invariant: the instant is in UTC and within the years 0000 to 9999, which RFC 3339 can
//! express, so formatting never fails; constructors from arbitrary instants saturate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A point in time, in UTC, written as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// A string that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not an RFC 3339 time (like 2026-01-31T14:05:00Z): {reason}")]
pub struct BadTimestamp {
    /// The value given.
    pub value: String,
    /// What the parser said.
    pub reason: String,
}

fn earliest() -> OffsetDateTime {
    PrimitiveDateTime::new(
        Date::from_calendar_date(0, Month::January, 1).expect("valid date"),
        Time::MIDNIGHT,
    )
    .assume_utc()
}

fn latest() -> OffsetDateTime {
    PrimitiveDateTime::new(
        Date::from_calendar_date(9999, Month::December, 31).expect("valid date"),
        Time::from_hms_nano(23, 59, 59, 999_999_999).expect("valid time"),
    )
    .assume_utc()
}

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(OffsetDateTime::UNIX_EPOCH);

    /// The current time.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// `t` in UTC (saturating to the years RFC 3339 can write).
    pub fn from_datetime(t: OffsetDateTime) -> Self {
        Timestamp(t.to_offset(UtcOffset::UTC).clamp(earliest(), latest()))
    }

    /// The instant `secs` seconds after the Unix epoch (saturating).
    pub fn from_unix_seconds(secs: i64) -> Self {
        let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(if secs < 0 {
            earliest()
        } else {
            latest()
        });
        Self::from_datetime(t)
    }

    /// Parses an RFC 3339 time (any offset; kept as the same instant in UTC).
    pub fn parse(value: &str) -> Result<Self, BadTimestamp> {
        OffsetDateTime::parse(value, &Rfc3339)
            .map(Self::from_datetime)
            .map_err(|e| BadTimestamp {
                value: value.to_string(),
                reason: e.to_string(),
            })
    }

    /// The instant as a `time` value (UTC).
    pub fn datetime(self) -> OffsetDateTime {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_seconds(self) -> i64 {
        self.0.unix_timestamp()
    }

    /// Seconds since the Unix epoch with the fraction (for metrics).
    pub fn unix_seconds_f64(self) -> f64 {
        self.0.unix_timestamp_nanos() as f64 / 1e9
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> i128 {
        self.0.unix_timestamp_nanos()
    }
}

impl From<OffsetDateTime> for Timestamp {
    fn from(t: OffsetDateTime) -> Self {
        Self::from_datetime(t)
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        Self::from_datetime(OffsetDateTime::from(t))
    }
}

impl From<Timestamp> for OffsetDateTime {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

impl std::ops::Add<time::Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: time::Duration) -> Timestamp {
        Self::from_datetime(self.0.saturating_add(d))
    }
}

impl std::ops::Sub<time::Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: time::Duration) -> Timestamp {
        Self::from_datetime(self.0.saturating_sub(d))
    }
}

impl std::ops::Sub<std::time::Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, d: std::time::Duration) -> Timestamp {
        self - time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
    }
}

impl std::ops::Sub for Timestamp {
    type Output = time::Duration;
    fn sub(self, other: Timestamp) -> time::Duration {
        self.0 - other.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Within 0000..=9999 in UTC (the invariant), so RFC 3339 formatting cannot fail.
        let s = self.0.format(&Rfc3339).map_err(|_| fmt::Error)?;
        f.pad(&s)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = BadTimestamp;
    fn from_str(s: &str) -> Result<Self, BadTimestamp> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the documents held before this type: `now_utc().format(&Rfc3339)`.
    fn old_format(t: OffsetDateTime) -> String {
        t.format(&Rfc3339).unwrap()
    }

    #[test]
    fn serialises_as_the_string_documents_held_before() {
        for t in [
            OffsetDateTime::now_utc(),
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::from_unix_timestamp_nanos(1_767_225_600_120_000_000).unwrap(),
        ] {
            let ts = Timestamp::from(t);
            let json = serde_json::to_string(&ts).unwrap();
            assert_eq!(json, format!("\"{}\"", old_format(t)));
            assert_eq!(ts.to_string(), old_format(t));
            let back: Timestamp = serde_json::from_str(&json).unwrap();
            assert_eq!(back, ts);
            assert_eq!(back.datetime(), t);
        }
        let s = "2026-01-31T14:05:00.12Z";
        let ts: Timestamp = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(ts.to_string(), s);
        assert_eq!(ts.unix_seconds(), 1_769_868_300);
        // Tables pad it like a string.
        assert_eq!(format!("[{ts:<25}]"), format!("[{s}  ]"));
    }

    #[test]
    fn another_offset_is_the_same_instant_written_in_utc() {
        let ts = Timestamp::parse("2026-01-31T16:05:00+02:00").unwrap();
        assert_eq!(ts, Timestamp::parse("2026-01-31T14:05:00Z").unwrap());
        assert_eq!(ts.to_string(), "2026-01-31T14:05:00Z");
    }

    #[test]
    fn a_bad_value_is_rejected_naming_it() {
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            #[allow(dead_code)]
            at: Timestamp,
        }
        let e = serde_json::from_str::<Doc>(r#"{"at": "yesterday at noon"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"yesterday at noon\""), "{e}");
        assert!(e.contains("not an RFC 3339 time"), "{e}");
        let e = Timestamp::parse("2026-02-30T00:00:00Z").unwrap_err();
        assert_eq!(e.value, "2026-02-30T00:00:00Z");
        assert!(serde_json::from_str::<Doc>(r#"{"at": 17}"#).is_err());
    }

    #[test]
    fn orders_by_instant_not_by_text() {
        let a = Timestamp::parse("2026-01-31T14:05:00.5Z").unwrap();
        let b = Timestamp::parse("2026-01-31T14:05:01Z").unwrap();
        let c = Timestamp::parse("2026-01-31T16:04:59+02:00").unwrap();
        assert!(a < b);
        assert!(c < a);
        let mut v = vec![b, a, c];
        v.sort();
        assert_eq!(v, [c, a, b]);
        assert!(Timestamp::UNIX_EPOCH < Timestamp::now());
    }

    #[test]
    fn out_of_range_instants_saturate_and_still_format() {
        let far = Timestamp::from_unix_seconds(i64::MAX);
        assert!(far.to_string().starts_with("9999-12-31T23:59:59"));
        let early = Timestamp::from_unix_seconds(i64::MIN);
        assert!(early.to_string().starts_with("0000-01-01T00:00:00"));
        let t = Timestamp::parse("2026-01-31T14:05:00Z").unwrap();
        assert_eq!(
            (t + time::Duration::seconds(60)).to_string(),
            "2026-01-31T14:06:00Z"
        );
        assert_eq!(t + time::Duration::seconds(60) - t, time::Duration::MINUTE);
        assert_eq!(
            (t - std::time::Duration::from_secs(3600)).to_string(),
            "2026-01-31T13:05:00Z"
        );
        assert!((t - std::time::Duration::MAX)
            .to_string()
            .starts_with("0000-01-01"));
    }
}
