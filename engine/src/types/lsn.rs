//! Log sequence numbers.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number: a byte position in the WAL stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The segment number holding this position, for a given segment size.
    pub fn segment_no(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Error parsing an LSN.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/', like 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |p: &str| !p.is_empty() && p.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_postgres_format() {
        let lsn: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(lsn.0, 0x16B3748);
        assert_eq!(lsn.to_string(), "0/16B3748");
        let big: Lsn = "1A/FF000028".parse().unwrap();
        assert_eq!(big.0, 0x1A_FF00_0028);
        assert_eq!(big.to_string(), "1A/FF000028");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "0", "/1", "1/", "G/0", "123456789/0", "0/0/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} must not parse");
        }
    }

    #[test]
    fn segment_number() {
        let lsn: Lsn = "1/2000000".parse().unwrap();
        assert_eq!(lsn.segment_no(16 << 20), 0x102);
    }
}
