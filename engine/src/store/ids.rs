//! Typed ids, so a pack id is never passed where an index segment id (or a block id, or a
//! cluster name, or a WAL file name) is meant: both are 32 bytes, and before these types a
//! pack id and a segment id were both `[u8; 32]` or a hex string, interchangeable to the
//! compiler. Object keys are built from them only by [`crate::repo::layout`]. Modelled on
//! rustic_core's `id.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A cluster name, checked to be safe in object names (see
/// [`crate::repo::layout::validate_cluster_name`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    /// Checks and wraps a cluster name.
    pub fn new(name: &str) -> Result<Self> {
        crate::repo::layout::validate_cluster_name(name)?;
        Ok(ClusterName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A backup id as `backup` makes them (`YYYYMMDD-HHMMSSF`, see `backup::new_backup_id`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(String);

impl BackupId {
    /// Wraps a backup id.
    pub fn new(id: impl Into<String>) -> Self {
        BackupId(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Defines a 32-byte id shown as 64 lowercase hex digits (as in its object key).
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps the bytes.
            pub const fn new(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            /// The bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits (`None`: not an id).
            pub fn from_hex(hex_id: &str) -> Option<Self> {
                let bytes: [u8; 32] = hex::decode(hex_id).ok()?.try_into().ok()?;
                Some($name(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        /// As its hex string (JSON documents and reports show ids as in object keys).
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                $name::from_hex(&text).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{:?} is not a {} (64 hex digits)",
                        text,
                        stringify!($name)
                    ))
                })
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

hex_id!(
    /// A pack's id: the unkeyed BLAKE3 hash of its bytes, so a pack can be checked against its
    /// name without a key (see [`crate::pack`]).
    PackId
);

hex_id!(
    /// An index segment's id: the keyed content id of its plaintext, bound into its
    /// authenticated data (see [`crate::index`]).
    IndexSegmentId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_hex() {
        let p = PackId::new([0xab; 32]);
        assert_eq!(p.to_string(), "ab".repeat(32));
        assert_eq!(PackId::from_hex(&p.to_hex()), Some(p));
        assert_eq!(PackId::from_hex("ab"), None);
        assert_eq!(PackId::from_hex(&"zz".repeat(32)), None);
        let s = IndexSegmentId::new([1; 32]);
        assert_eq!(IndexSegmentId::from_hex(&s.to_hex()), Some(s));
        assert!(format!("{s:?}").starts_with("IndexSegmentId(0101"));
        // JSON keeps the hex form, as a value and as a map key.
        let map = std::collections::BTreeMap::from([(p, 7)]);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, format!("{{\"{}\":7}}", "ab".repeat(32)));
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<PackId, i64>>(&json).unwrap(),
            map
        );
        assert!(serde_json::from_str::<PackId>("\"ab\"").is_err());
    }
}
