//! The few `global/pg_control` fields pgcairn reads without a connection.
//!
//! `ControlFileData` starts with `uint64 system_identifier`, then `uint32 pg_control_version`
//! and `uint32 catalog_version_no`, `state` (4 bytes, padded to 8), `time` (8 bytes) and
//! `checkPoint` (8 bytes, offset 32): that head is the same in PostgreSQL 13 to 18, while
//! fields further in move between versions (`data_checksum_version` among them), so pgcairn
//! asks the server (`SHOW data_checksums`) for those. `pg_control_version` is 1300 in 13 to 16,
//! 1700 in 17 and 1800 in 18 ([`control_version_majors`]): the backup checks it against the
//! server's major version, so a data directory of another major is never taken for the
//! server's.

use std::path::Path;

use crate::error::{Error, Result};

/// What pg_control says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// Database system identifier.
    pub system_identifier: u64,
    /// `pg_control_version` (1300 for PostgreSQL 13 to 16, 1700 for 17, 1800 for 18).
    pub control_version: u32,
    /// `catalog_version_no` (offset 12): with the major version it names this cluster's
    /// directory in each tablespace location ([`crate::pg::tablespace_dir`]).
    pub catalog_version: u32,
    /// The latest checkpoint's location (`checkPoint`, at offset 32 in PostgreSQL 13 to 18:
    /// after `state` (4 bytes, padded) and `time` (8 bytes)); `None` in a short file.
    pub checkpoint: Option<crate::types::Lsn>,
}

/// The PostgreSQL majors that write `pg_control_version` `v` (of those pgcairn supports).
pub fn control_version_majors(v: u32) -> Option<std::ops::RangeInclusive<u32>> {
    match v {
        1300 => Some(13..=16),
        1700 => Some(17..=17),
        1800 => Some(18..=18),
        _ => None,
    }
}

impl ControlFile {
    /// Checks this pg_control could be written by PostgreSQL `major`; says what is wrong.
    pub fn check_major(&self, major: u32) -> std::result::Result<(), String> {
        match control_version_majors(self.control_version) {
            Some(majors) if majors.contains(&major) => Ok(()),
            Some(majors) => Err(format!(
                "its pg_control version {} is written by PostgreSQL {}, not by PostgreSQL {major}",
                self.control_version,
                if majors.start() == majors.end() {
                    majors.start().to_string()
                } else {
                    format!("{} to {}", majors.start(), majors.end())
                }
            )),
            None => Err(format!(
                "its pg_control version {} is not one of PostgreSQL 13 to 18 (1300, 1700, 1800)",
                self.control_version
            )),
        }
    }
}

/// Reads `global/pg_control` under `pgdata`.
pub fn read(pgdata: &Path) -> Result<ControlFile> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::Config(format!(
            "cannot read {}: {e}; is cluster.pgdata the data directory, readable by this user?",
            path.display()
        ))
    })?;
    if bytes.len() < 16 {
        return Err(Error::InvalidInput(format!(
            "{} is too short to be pg_control",
            path.display()
        )));
    }
    Ok(ControlFile {
        system_identifier: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
        control_version: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        catalog_version: u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")),
        checkpoint: bytes
            .get(32..40)
            .map(|b| crate::types::Lsn(u64::from_le_bytes(b.try_into().expect("8 bytes")))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(version: u32) -> ControlFile {
        ControlFile {
            system_identifier: 1,
            control_version: version,
            catalog_version: 202209061,
            checkpoint: None,
        }
    }

    #[test]
    fn control_versions_map_to_majors() {
        for major in 13..=16 {
            assert_eq!(control(1300).check_major(major), Ok(()));
        }
        assert_eq!(control(1700).check_major(17), Ok(()));
        assert_eq!(control(1800).check_major(18), Ok(()));
        let e = control(1300).check_major(17).unwrap_err();
        assert!(
            e.contains("PostgreSQL 13 to 16, not by PostgreSQL 17"),
            "{e}"
        );
        let e = control(1800).check_major(17).unwrap_err();
        assert!(e.contains("PostgreSQL 18, not by PostgreSQL 17"), "{e}");
        assert!(control(1201).check_major(12).is_err());
    }
}
