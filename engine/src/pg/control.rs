//! The few `global/pg_control` fields pgcairn reads without a connection.
//!
//! `ControlFileData` starts with `uint64 system_identifier`, then `uint32 pg_control_version`
//! and `uint32 catalog_version_no`; `data_checksum_version` sits further in at a
//! version-dependent offset, so pgcairn asks the server (`SHOW data_checksums`) for that.

use std::path::Path;

use crate::error::{Error, Result};

/// What pg_control says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// Database system identifier.
    pub system_identifier: u64,
    /// `pg_control_version` (1300 for PostgreSQL 13 to 16).
    pub control_version: u32,
    /// The latest checkpoint's location (`checkPoint`, at offset 32 in PostgreSQL 13 to 18:
    /// after `state` (4 bytes, padded) and `time` (8 bytes)); `None` in a short file.
    pub checkpoint: Option<crate::types::Lsn>,
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
        checkpoint: bytes
            .get(32..40)
            .map(|b| crate::types::Lsn(u64::from_le_bytes(b.try_into().expect("8 bytes")))),
    })
}
