//! `restore --wal-dir DIR`: `pg_wal` restored as a link to a directory of its own, as
//! `initdb -X` and `pg_basebackup --waldir` set it up (pgBackRest: `--link-map pg_wal=DIR`).
//!
//! Why: production clusters often keep WAL on its own disk, `pg_wal` a link to it. A restore
//! made `pg_wal` a directory in the data directory, and a delta restore over such a cluster
//! replaced the link with one: the next day's WAL then filled the data disk, silently. So:
//!
//! - a backup records where `pg_wal` pointed ([`crate::store::manifest::Manifest::wal_link`]);
//!   a restore without `--wal-dir` of such a backup says where it was, and a delta restore
//!   over a data directory whose `pg_wal` is a link refuses until the operator says where
//!   WAL goes (the link may also have been planted by the data directory's owner, and a root
//!   restore must not empty whatever it points to);
//! - with `--wal-dir`, `pg_wal` is made a link to it and everything under `pg_wal/` (its
//!   `archive_status`, a standby backup's own segments) is written beneath a descriptor of
//!   the directory, never through the link ([`crate::fs_beneath::Tree`]);
//! - the directory must not overlap the data directory or a tablespace (a delta restore would
//!   remove one from the other); a plain restore wants it new or empty, like a tablespace
//!   location. A delta restore empties it of stale WAL (segments of another history that
//!   recovery could read from `pg_wal`) only where it is the directory the data directory's
//!   `pg_wal` already links to and belongs to the data directory's owner, and only if it
//!   holds nothing but WAL; any other non-empty directory is refused. Names alone would not
//!   do: a WAL archive of `cp %p`, a `pg_receivewal` directory or another cluster's `pg_wal`
//!   hold only WAL-like names too, and a mistyped `--wal-dir` must empty none of them.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Checks `--wal-dir`: absolute, and neither inside nor around the data directory or a
/// tablespace location (by the paths as the restore will resolve them).
pub fn check_place(wal_dir: &Path, target: &Path, tablespaces: &[&Path]) -> Result<()> {
    if !wal_dir.is_absolute() {
        return Err(Error::Config(format!(
            "--wal-dir {}: give an absolute path",
            wal_dir.display()
        )));
    }
    // `a/link/..` is resolved by the kernel through the link, not textually: refused rather
    // than judged by a spelling PostgreSQL would not follow.
    if wal_dir
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Error::Config(format!(
            "--wal-dir {}: give the path without . or .. components",
            wal_dir.display()
        )));
    }
    let wal = resolved(wal_dir);
    let places = std::iter::once(("the data directory", target))
        .chain(tablespaces.iter().map(|t| ("a tablespace location", *t)));
    for (what, place) in places {
        let place_r = resolved(place);
        if wal.starts_with(&place_r) || place_r.starts_with(&wal) {
            return Err(Error::Config(format!(
                "--wal-dir {} overlaps {what} ({}): WAL goes in a directory of its own, \
                 outside the data directory and every tablespace",
                wal_dir.display(),
                place.display()
            )));
        }
    }
    Ok(())
}

/// Checks what `--wal-dir` holds before anything is written: nothing (or no such
/// directory), unless this is a delta restore and it is the directory `target`'s `pg_wal`
/// already links to, owned by the data directory's owner; then only what PostgreSQL keeps in
/// `pg_wal` (it is emptied of it).
pub fn check_contents(wal_dir: &Path, delta: bool, target: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(wal_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(wal_dir.display().to_string(), e)),
    };
    let reusable = delta && already_linked(target, wal_dir);
    for e in entries {
        let e = e.map_err(|e| Error::io(wal_dir.display().to_string(), e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !reusable {
            let mount = if name == "lost+found" {
                " (a mount point: use a directory below it, as initdb -X asks too)"
            } else {
                ""
            };
            return Err(Error::Config(format!(
                "--wal-dir {} is not empty (it holds {name:?}){mount}; restore into a new or \
                 empty directory. A delta restore (--delta) empties only the WAL directory that \
                 {}/pg_wal already links to and the data directory's owner owns",
                wal_dir.display(),
                target.display()
            )));
        }
        if !is_wal_entry(&name) {
            return Err(Error::Config(format!(
                "--wal-dir {} holds {name:?}, which is not WAL: a delta restore empties the WAL \
                 directory, so it refuses one that holds anything else. Check the path, or \
                 move that entry away",
                wal_dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether `target/pg_wal` is a link that reaches `wal_dir` (the same directory, by device
/// and inode) and `wal_dir` belongs to the owner of `target`.
fn already_linked(target: &Path, wal_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let link = target.join("pg_wal");
    let is_link = std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink());
    match (
        std::fs::metadata(&link),
        std::fs::metadata(wal_dir),
        std::fs::metadata(target),
    ) {
        (Ok(l), Ok(w), Ok(t)) => {
            is_link && l.dev() == w.dev() && l.ino() == w.ino() && w.uid() == t.uid()
        }
        _ => false,
    }
}

/// What a delta restore says when the data directory's `pg_wal` is a link and no
/// `--wal-dir` was given.
pub fn linked_without_option(target: &Path, link: &Path) -> Error {
    Error::Config(format!(
        "{}/pg_wal is a symbolic link to {}: restoring would replace it with a directory on \
         the data directory's disk. Keep WAL there with --wal-dir {}, or remove the link to \
         have pg_wal restored inside the data directory",
        target.display(),
        link.display(),
        link.display()
    ))
}

/// Names PostgreSQL keeps in `pg_wal`: segments (also `.partial`), history and backup
/// history files, `archive_status`, `summaries` (17), temporary files of segment creation
/// and of `restore_command`.
pub fn is_wal_entry(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    if let Some((base, rest)) = name.split_once('.') {
        return match rest {
            "partial" => hex(base, 24),
            "history" => hex(base, 8),
            _ if base.len() == 24 && rest.ends_with(".backup") => {
                hex(base, 24) && rest.strip_suffix(".backup").is_some_and(|o| hex(o, 8))
            }
            _ => base == "xlogtemp" && !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()),
        };
    }
    hex(name, 24)
        || matches!(
            name,
            "archive_status" | "summaries" | "RECOVERYXLOG" | "RECOVERYHISTORY"
        )
}

/// `path` with `.` and `..` resolved and its longest existing ancestor's links followed, so
/// that two spellings of one place compare equal.
fn resolved(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut base = lexical.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(base) {
            return rest
                .iter()
                .rev()
                .fold(real, |p, c: &&std::ffi::OsStr| p.join(c));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                base = parent;
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_postgresql_keeps_in_pg_wal_is_recognised_and_nothing_else() {
        for name in [
            "000000010000000000000003",
            "00000002000000000000000A.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "archive_status",
            "summaries",
            "xlogtemp.1234",
            "RECOVERYXLOG",
            "RECOVERYHISTORY",
        ] {
            assert!(is_wal_entry(name), "{name}");
        }
        for name in [
            "passwd",
            "lost+found",
            "00000001000000000000000",
            "0000000100000000000000031",
            "00000002.history.bak",
            "000000010000000000000002.backup",
            "000000010000000000000002.00000028.backup.backup",
            "00000001000000000000000a",
            "xlogtemp.",
            "xlogtemp.12a",
            "PG_VERSION",
            "base",
        ] {
            assert!(!is_wal_entry(name), "{name}");
        }
    }

    #[test]
    fn a_wal_dir_inside_or_around_the_data_directory_or_a_tablespace_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        let ts = t.path().join("ts");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(&data, t.path().join("alias")).unwrap();
        for bad in [
            data.join("pg_wal"),
            t.path().join("alias/wal"),
            t.path().to_path_buf(),
            ts.join("wal"),
        ] {
            let err = check_place(&bad, &data, &[&ts]).unwrap_err();
            assert!(
                err.to_string().contains("overlaps"),
                "{}: {err}",
                bad.display()
            );
        }
        assert!(
            check_place(Path::new("wal"), &data, &[]).is_err(),
            "relative"
        );
        // Through a link, `..` is the link target's parent: not judged by its spelling.
        let err = check_place(&t.path().join("alias/../wal"), &data, &[]).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        check_place(&t.path().join("wal"), &data, &[&ts]).unwrap();
        check_place(&t.path().join("data-wal"), &data, &[&ts]).unwrap();
    }

    #[test]
    fn a_plain_restore_wants_the_wal_dir_empty_and_a_delta_only_wal_in_its_own() {
        let t = tempfile::tempdir().unwrap();
        let (wal, data) = (t.path().join("wal"), t.path().join("data"));
        std::fs::create_dir_all(&data).unwrap();
        check_contents(&wal, false, &data).unwrap();
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        std::fs::write(wal.join("000000010000000000000007"), b"").unwrap();
        let err = check_contents(&wal, false, &data).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        // Only WAL names, but not the directory the data directory links to (an archive, a
        // pg_receivewal directory, another cluster's pg_wal): a delta does not empty it.
        let err = check_contents(&wal, true, &data).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        check_contents(&wal, true, &data).unwrap();
        std::fs::write(wal.join("notes.txt"), b"").unwrap();
        let err = check_contents(&wal, true, &data).unwrap_err();
        assert!(err.to_string().contains("\"notes.txt\""), "{err}");
    }

    #[test]
    fn as_root_a_linked_wal_dir_someone_else_owns_is_not_emptied() {
        if crate::pg::instance::current_uid() != 0 {
            eprintln!("skipping: needs root (a root delta restore is what this guards)");
            return;
        }
        // The data directory's owner planted pg_wal -> a directory of WAL names root owns
        // (an archive): a root delta restore told to use it refuses.
        let t = tempfile::tempdir().unwrap();
        let (wal, data) = (t.path().join("archive"), t.path().join("data"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("000000010000000000000007"), b"archived").unwrap();
        std::os::unix::fs::symlink(&wal, data.join("pg_wal")).unwrap();
        std::os::unix::fs::chown(&data, Some(54321), Some(54321)).unwrap();
        let err = check_contents(&wal, true, &data).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        // Given to the data directory's owner, it is that cluster's own WAL directory.
        std::os::unix::fs::chown(&wal, Some(54321), Some(54321)).unwrap();
        check_contents(&wal, true, &data).unwrap();
    }
}
