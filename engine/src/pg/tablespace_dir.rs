//! Which part of a tablespace location is this cluster's.
//!
//! PostgreSQL keeps a cluster's files for tablespace `<oid>` in one directory of the location,
//! `PG_<major>_<catversion>` (`TABLESPACE_VERSION_DIRECTORY`), and `CREATE TABLESPACE` asks
//! only that this directory not exist: the location itself may hold anything else. Several
//! clusters do share a location: `pg_upgrade` leaves the old cluster's `PG_14_...` beside the
//! new one's (kept for a rollback), and a mount point has its `lost+found`. pg_basebackup and
//! pgBackRest back up the version directory alone.
//!
//! pgcairn does too: the backup walks only this directory of each location
//! ([`crate::pg::datadir`]) and records its name in the manifest; a restore writes only it,
//! a delta restore cleans only it, and a location that already holds something else is
//! accepted. Before 2026-12-08 the backup took the whole location, the other cluster's files
//! as a fuzzy copy, and a delta restore put that copy back over them, or deleted a directory
//! made after the backup. A manifest from then names no directory: its own is told by its
//! major version ([`Own::Major`]), and what it holds of other majors is left out of the
//! restore.

/// The name of the directory cluster files have in each tablespace location.
pub fn name(major: u32, catalog_version: u32) -> String {
    format!("PG_{major}_{catalog_version}")
}

/// The name of this directory for the data directory `pgdata`, from its `PG_VERSION` and
/// `global/pg_control`.
pub fn of_data_directory(pgdata: &std::path::Path) -> crate::error::Result<String> {
    let path = pgdata.join("PG_VERSION");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| crate::error::Error::io(format!("reading {}", path.display()), e))?;
    let major: u32 = text.trim().parse().map_err(|_| {
        crate::error::Error::InvalidInput(format!(
            "{} says {:?}, not a PostgreSQL major version",
            path.display(),
            text.trim()
        ))
    })?;
    let control = crate::pg::control::read(pgdata)?;
    Ok(name(major, control.catalog_version))
}

/// The name of the top directory in a tablespace location that `path` (relative to the data
/// directory, `pg_tblspc/<oid>/<name>/...`) lies in; `None` for a path outside tablespaces, or
/// the link `pg_tblspc/<oid>` itself.
pub fn of_path(path: &str) -> Option<&str> {
    let mut parts = path.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("pg_tblspc"), Some(_), Some(name)) => Some(name),
        _ => None,
    }
}

/// This cluster's directory in each tablespace location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Own {
    /// Known by name, `PG_<major>_<catversion>`: recorded by the backup.
    Named(String),
    /// Known by major version only: the directories named `PG_<major>_...` (manifests from
    /// before the name was recorded).
    Major(u32),
}

impl Own {
    /// This cluster's directory: named by the manifest, or told by `pg_version_num`.
    pub fn of(recorded: Option<&str>, pg_version_num: u32) -> Own {
        match recorded {
            Some(name) => Own::Named(name.to_string()),
            None => Own::Major(pg_version_num / 10000),
        }
    }

    /// Whether `name`, in a tablespace location, is this cluster's directory.
    pub fn is(&self, name: &str) -> bool {
        match self {
            Own::Named(own) => name == own,
            Own::Major(major) => name
                .strip_prefix(&format!("PG_{major}_"))
                .is_some_and(|cat| !cat.is_empty() && cat.bytes().all(|b| b.is_ascii_digit())),
        }
    }

    /// Whether `path` (relative to the data directory) is in a tablespace location but
    /// outside this cluster's directory there: another cluster's.
    pub fn excludes(&self, path: &str) -> bool {
        of_path(path).is_some_and(|name| !self.is(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_a_tablespace_location_are_named_by_its_top_directory() {
        assert_eq!(
            of_path("pg_tblspc/16400/PG_15_202209061/5/16401"),
            Some("PG_15_202209061")
        );
        assert_eq!(of_path("pg_tblspc/16400/lost+found"), Some("lost+found"));
        assert_eq!(of_path("pg_tblspc/16400"), None);
        assert_eq!(of_path("base/5/16401"), None);
    }

    #[test]
    fn another_clusters_directory_is_excluded() {
        let named = Own::of(Some("PG_15_202209061"), 150004);
        assert!(!named.excludes("pg_tblspc/1/PG_15_202209061/5/1"));
        assert!(!named.excludes("pg_tblspc/1"));
        assert!(!named.excludes("base/5/1"));
        assert!(named.excludes("pg_tblspc/1/PG_14_202007201/5/1"));
        assert!(named.excludes("pg_tblspc/1/PG_15_202209060"));
        assert!(named.excludes("pg_tblspc/1/lost+found"));
        // Older manifests: told by the major version alone.
        let major = Own::of(None, 150004);
        assert_eq!(major, Own::Major(15));
        assert!(!major.excludes("pg_tblspc/1/PG_15_202209061/5/1"));
        assert!(major.excludes("pg_tblspc/1/PG_16_202307071/5/1"));
        assert!(major.excludes("pg_tblspc/1/PG_15_"));
        assert!(major.excludes("pg_tblspc/1/PG_15_x"));
        assert!(major.excludes("pg_tblspc/1/lost+found"));
    }
}
