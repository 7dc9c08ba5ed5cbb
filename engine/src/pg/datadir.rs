//! Walking a data directory the way PostgreSQL's documentation says a base backup must.
//!
//! Skipped (as pg_basebackup and pgBackRest skip them): the contents of `pg_wal`,
//! `pg_replslot`, `pg_dynshmem`, `pg_notify`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp` and
//! `pg_subtrans` (the directories themselves are kept); `postmaster.pid`, `postmaster.opts`,
//! `backup_label(.old)`, `tablespace_map`, `current_logfiles`, `recovery.signal`,
//! `standby.signal`, `postgresql.auto.conf.tmp`; `pg_internal.init` and `pgsql_tmp*` anywhere;
//! every fork of an unlogged relation except its `_init` fork.
//!
//! Tablespaces: each `pg_tblspc/<oid>` symlink is followed; the contents of this cluster's
//! directory there (`PG_<major>_<catversion>`, [`crate::pg::tablespace_dir`]) are reported under
//! the path `pg_tblspc/<oid>/...`, the rest of the location (another cluster's directory) is
//! left alone, and the link target is returned, so a restore can recreate the link (or remap
//! it).
//!
//! Run by another user than the data directory's owner (root, from cron), the walk enters only
//! directories the owner could list and takes a link to a file only where the owner could
//! reach and read what it points to ([`walk_as`], [`crate::backup::owner_reads`]); the rest is
//! left out with a warning.
//!
//! A link to a directory that holds the data directory (`/`, `..`, the data directory itself)
//! or to a directory the walk is inside is left out with a warning: followed, it would walk
//! the data directory again inside itself, without end (the backup failed once the path grew
//! too long), or the whole file system. The owner of the data directory can plant such a link.
//!
//! Memory: the walk holds one sorted listing per directory on its current path, never the
//! whole tree; entries go to a callback as they are found.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup::owner_reads::{names_in, DirReached, OwnerReads};
use crate::error::{Error, Result};

const SKIP_CONTENTS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
const SKIP_TOP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "current_logfiles",
    "recovery.signal",
    "standby.signal",
    "recovery.done",
    "postgresql.auto.conf.tmp",
    "backup_manifest",
];

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File {
        /// Size when listed.
        size: u64,
        /// Modification time, nanoseconds since the epoch.
        mtime_ns: i64,
    },
}

/// One entry, with its path relative to the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path, `/`-separated (`pg_tblspc/<oid>/...` for tablespace contents).
    pub path: String,
    /// Where it is on disk.
    pub abs: PathBuf,
    /// Directory or file.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A tablespace found under `pg_tblspc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    /// Its OID (the link name).
    pub oid: u32,
    /// Where the link points.
    pub location: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("reading {}", path.display()), e)
}

/// Walks `pgdata`, calling `visit` for each entry to back up (parents before children); in
/// tablespace locations, only the directory named `tablespace_dir` is entered. Says nothing
/// of what it leaves out of tablespace locations ([`walk_as`] does).
pub fn walk(
    pgdata: &Path,
    tablespace_dir: &str,
    visit: impl FnMut(Entry) -> Result<()>,
) -> Result<Vec<Tablespace>> {
    run(
        pgdata,
        tablespace_dir,
        &OwnerReads::unchecked(),
        false,
        visit,
    )
}

/// [`walk`], leaving out (with a warning) directories `owner` could not list and links to
/// files it could not reach and read, and saying what it leaves out of tablespace locations
/// (a warning when a location holds no `tablespace_dir`: the tablespace is then empty in the
/// backup).
pub fn walk_as(
    pgdata: &Path,
    tablespace_dir: &str,
    owner: &OwnerReads,
    visit: impl FnMut(Entry) -> Result<()>,
) -> Result<Vec<Tablespace>> {
    run(pgdata, tablespace_dir, owner, true, visit)
}

fn run(
    pgdata: &Path,
    tablespace_dir: &str,
    owner: &OwnerReads,
    report: bool,
    mut visit: impl FnMut(Entry) -> Result<()>,
) -> Result<Vec<Tablespace>> {
    let mut tablespaces = Vec::new();
    let mut walk = Walk {
        tablespace_dir,
        report,
        owner,
        tablespaces: &mut tablespaces,
        visit: &mut visit,
        around: holding(pgdata)?,
    };
    let top = match owner.open_dir(pgdata).map_err(|e| io(pgdata, e))? {
        DirReached::Dir(fd) => fd,
        DirReached::Refused(why) => {
            return Err(Error::io(
                format!("listing {}", pgdata.display()),
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, why),
            ))
        }
    };
    walk.dir(top, pgdata, "", true)?;
    Ok(tablespaces)
}

/// Device and inode of a directory.
type DirId = (u64, u64);

/// The data directory and every directory above it, up to `/`.
fn holding(pgdata: &Path) -> Result<Vec<DirId>> {
    let canonical = std::fs::canonicalize(pgdata).map_err(|e| io(pgdata, e))?;
    canonical
        .ancestors()
        .map(|d| {
            let m = std::fs::metadata(d).map_err(|e| io(d, e))?;
            Ok((m.dev(), m.ino()))
        })
        .collect()
}

struct Walk<'a> {
    /// This cluster's directory in each tablespace location.
    tablespace_dir: &'a str,
    /// Whether to say what is left out of tablespace locations.
    report: bool,
    owner: &'a OwnerReads,
    tablespaces: &'a mut Vec<Tablespace>,
    visit: &'a mut dyn FnMut(Entry) -> Result<()>,
    /// Directories a link must not lead to: the data directory, those above it, and those
    /// the walk is inside (pushed on the way down, popped on the way up).
    around: Vec<DirId>,
}

/// Relfilenodes in `names` that have an `_init` fork (unlogged relations).
fn unlogged_nodes(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .filter_map(|n| n.strip_suffix("_init"))
        .collect()
}

fn fork_node(name: &str) -> &str {
    let base = name.split('.').next().unwrap_or(name);
    base.split('_').next().unwrap_or(base)
}

impl Walk<'_> {
    /// Whether `owner` could have the file `abs` (links followed); `false` after warning why
    /// not. Directories are checked as they are opened ([`Walk::open`]).
    fn owner_could(&self, abs: &Path) -> Result<bool> {
        if !self.owner.checks() {
            return Ok(true);
        }
        // A file in a directory walked already: its own bits are checked once open, unless it
        // is a link (to a file wherever the owner chose).
        if !std::fs::symlink_metadata(abs).is_ok_and(|m| m.is_symlink()) {
            return Ok(true);
        }
        match self.owner.refusal(abs) {
            Ok(None) => Ok(true),
            Ok(Some(why)) => {
                left_out(abs, &why);
                Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(abs, e)),
        }
    }

    /// The directory `abs`, open for listing when `owner` could list it; `None` after warning
    /// why not, or when it is gone.
    fn open(&self, abs: &Path) -> Result<Option<OwnedFd>> {
        match self.owner.open_dir(abs) {
            Ok(DirReached::Dir(fd)) => Ok(Some(fd)),
            Ok(DirReached::Refused(why)) => {
                left_out(abs, &why);
                Ok(None)
            }
            // Gone, or no longer a directory, since the walk looked: as for a vanished file.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io(abs, e)),
        }
    }

    /// Says what of the tablespace location `dir` (at `rel`, holding `names`) is not this
    /// cluster's and left out; warns when nothing is (the tablespace is then empty in the
    /// backup: a location emptied by hand, or a catalog version that is not the server's).
    fn report_location(&self, dir: &Path, rel: &str, names: &[String]) {
        let others: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != self.tablespace_dir)
            .collect();
        if names.is_empty() {
            tracing::warn!(
                "tablespace location {} ({rel}) is empty, without this cluster's directory {}: \
                 nothing of it is backed up",
                dir.display(),
                self.tablespace_dir
            );
            return;
        }
        if others.is_empty() {
            return;
        }
        if others.len() == names.len() {
            tracing::warn!(
                "tablespace location {} ({rel}) holds no directory {} of this cluster, only \
                 {}: nothing of it is backed up",
                dir.display(),
                self.tablespace_dir,
                others.join(", ")
            );
        } else {
            tracing::info!(
                "not backed up from tablespace location {} ({rel}): {} (not this cluster's \
                 directory {}: another cluster's, or not PostgreSQL's)",
                dir.display(),
                others.join(", "),
                self.tablespace_dir
            );
        }
    }

    /// Walks the directory open at `fd` (`dir`, at `rel`), listing it from that descriptor.
    fn dir(&mut self, fd: OwnedFd, dir: &Path, rel: &str, top: bool) -> Result<()> {
        let names = names_in(fd).map_err(|e| io(dir, e))?;
        let unlogged = unlogged_nodes(&names);
        let in_location = rel
            .strip_prefix("pg_tblspc/")
            .is_some_and(|oid| !oid.contains('/'));
        if in_location && self.report {
            self.report_location(dir, rel, &names);
        }
        for name in &names {
            if name == "pg_internal.init" || name.starts_with("pgsql_tmp") {
                continue;
            }
            if in_location && name != self.tablespace_dir {
                continue;
            }
            if top && SKIP_TOP_FILES.contains(&name.as_str()) {
                continue;
            }
            if !name.ends_with("_init") && unlogged.contains(&fork_node(name)) {
                continue;
            }
            let abs = dir.join(name);
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            // Follow symlinks (pg_wal and tablespaces are often links); vanished entries are skipped:
            // PostgreSQL drops files while a backup runs, and WAL replay recreates what matters.
            let meta = match std::fs::metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&abs, e)),
            };
            // Checked and listed from one descriptor: the names are those of what was checked.
            let listing = if meta.is_dir() {
                match self.open(&abs)? {
                    Some(fd) => Some(fd),
                    None => continue,
                }
            } else {
                if !self.owner_could(&abs)? {
                    continue;
                }
                None
            };
            let entry = |kind| Entry {
                path: path.clone(),
                abs: abs.clone(),
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            };
            if let Some(listing) = listing {
                let st = rustix::fs::fstat(&listing).map_err(|e| io(&abs, e.into()))?;
                #[allow(clippy::unnecessary_cast)]
                let id = (st.st_dev as u64, st.st_ino as u64);
                if self.around.contains(&id) {
                    tracing::warn!(
                        "left out of the backup: {} (a link to a directory that holds the data \
                         directory or this very directory: followed, the walk would never end)",
                        abs.display()
                    );
                    continue;
                }
                // Its mode and owner as listed, not as the path showed them a moment before.
                (self.visit)(Entry {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                    ..entry(EntryKind::Dir)
                })?;
                if rel == "pg_tblspc" {
                    if let (Ok(oid), Ok(target)) = (name.parse::<u32>(), std::fs::read_link(&abs)) {
                        self.tablespaces.push(Tablespace {
                            oid,
                            location: target,
                        });
                    }
                }
                if top && SKIP_CONTENTS.contains(&name.as_str()) {
                    if name == "pg_wal" {
                        let status = abs.join("archive_status");
                        if let Ok(m) = std::fs::metadata(&status) {
                            (self.visit)(Entry {
                                path: "pg_wal/archive_status".into(),
                                abs: status,
                                kind: EntryKind::Dir,
                                mode: m.mode() & 0o7777,
                                uid: m.uid(),
                                gid: m.gid(),
                            })?;
                        }
                    }
                    continue;
                }
                self.around.push(id);
                self.dir(listing, &abs, &path, false)?;
                self.around.pop();
            } else if meta.is_file() {
                let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
                (self.visit)(entry(EntryKind::File {
                    size: meta.len(),
                    mtime_ns,
                }))?;
            }
        }
        Ok(())
    }
}

fn left_out(abs: &Path, why: &str) {
    tracing::warn!(
        "left out of the backup: {} ({why}; reached through a link or put there by another \
         user, so PostgreSQL cannot have needed it)",
        abs.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_to_the_data_directory_or_above_it_are_left_out() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("pgdata");
        std::fs::create_dir_all(d.join("base/1")).unwrap();
        std::fs::create_dir_all(root.path().join("elsewhere")).unwrap();
        std::fs::write(d.join("PG_VERSION"), "15").unwrap();
        std::fs::write(d.join("base/1/1259"), "x").unwrap();
        std::fs::write(root.path().join("elsewhere/kept.conf"), "x").unwrap();
        symlink(&d, d.join("itself")).unwrap();
        symlink("..", d.join("up")).unwrap();
        symlink("/", d.join("root")).unwrap();
        symlink("../..", d.join("base/1/loop")).unwrap();
        symlink("../elsewhere", d.join("conf.d")).unwrap();
        let mut paths = Vec::new();
        walk(&d, "PG_15_x", |e| {
            paths.push(e.path);
            Ok(())
        })
        .unwrap();
        paths.sort();
        assert_eq!(
            paths,
            [
                "PG_VERSION",
                "base",
                "base/1",
                "base/1/1259",
                "conf.d",
                "conf.d/kept.conf"
            ]
        );
    }

    #[test]
    fn skips_what_postgres_says_to_skip_and_follows_tablespaces_into_this_clusters_directory() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("pgdata");
        let ts = root.path().join("ts1");
        for dir in [
            "base/1",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_tblspc",
            "base/1/pgsql_tmp",
        ] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        std::fs::create_dir_all(ts.join("PG_15_x/5")).unwrap();
        std::os::unix::fs::symlink(&ts, d.join("pg_tblspc/16400")).unwrap();
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "base/1/1259",
            "base/1/16390",
            "base/1/16390_init",
            "base/1/16390_fsm",
            "base/1/pg_internal.init",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "global/pg_control",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(ts.join("PG_15_x/5/123"), b"y").unwrap();
        // Another cluster's directory, and a mount point's: not this cluster's to back up.
        std::fs::create_dir_all(ts.join("PG_14_202007201/5")).unwrap();
        std::fs::write(ts.join("PG_14_202007201/5/123"), b"z").unwrap();
        std::fs::create_dir_all(ts.join("lost+found")).unwrap();
        let mut seen = Vec::new();
        let tbs = walk(&d, "PG_15_x", |e| {
            seen.push(e.path);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                "PG_VERSION",
                "base",
                "base/1",
                "base/1/1259",
                "base/1/16390_init",
                "global",
                "global/pg_control",
                "pg_stat_tmp",
                "pg_tblspc",
                "pg_tblspc/16400",
                "pg_tblspc/16400/PG_15_x",
                "pg_tblspc/16400/PG_15_x/5",
                "pg_tblspc/16400/PG_15_x/5/123",
                "pg_wal",
                "pg_wal/archive_status",
            ]
        );
        assert_eq!(
            tbs,
            vec![Tablespace {
                oid: 16400,
                location: ts
            }]
        );
    }
}
