//! Typed ids for what the catalog head records, so a backup id is never confused with a
//! cluster name or a WAL file name in the head's API.

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
