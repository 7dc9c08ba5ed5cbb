//! Local files only their owner can read, whatever the umask.
//!
//! The spools hold decrypted WAL (prefetched segments), acknowledgements and locks; a
//! world-readable spool under the usual umask 022 hands every local user the database's
//! changes. Directories here are created 0700 and files 0600, and the mode is set on the open
//! descriptor afterwards, so neither the umask nor a file left by an older version with a
//! looser mode decides who can read them.
//!
//! Files that others read while they change (a restored WAL file PostgreSQL is waiting for,
//! the prefetch spool, acknowledgements, the host's catalog generations) are replaced whole
//! ([`replace`], [`replace_durably`], [`replace_with`]): written under a temporary name beside
//! them and renamed over them, so a reader sees the old file or the new one, never a part.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and missing parents as 0700; `dir` itself ends up 0700 even if it existed.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
}

/// Creates or truncates `path` as a 0600 file open for writing.
pub fn create_file(path: &Path) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `body` to `path` as a 0600 file.
pub fn write(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(body)
}

/// What [`replace_with`] guarantees once it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Readers see the old file or the new one; a crash may bring the old one back.
    Atomic,
    /// As `Atomic`, and the new file survives a crash: file and directory are fsynced.
    Durable,
}

/// Replaces `path` whole with `body` (mode 0600), atomically but without fsync: for state a
/// crash may roll back (counters, hints).
pub fn replace(path: &Path, body: &[u8]) -> io::Result<()> {
    replace_with(path, FILE_MODE, Durability::Atomic, |mut f| {
        io::Write::write_all(&mut f, body)
    })
}

/// Replaces `path` whole with `body` (mode 0600) and makes it durable before returning.
pub fn replace_durably(path: &Path, body: &[u8]) -> io::Result<()> {
    replace_with(path, FILE_MODE, Durability::Durable, |mut f| {
        io::Write::write_all(&mut f, body)
    })
}

/// Replaces `path` whole with what `fill` writes into a temporary file beside it (created with
/// `mode`, named for this process and call, so concurrent writers never share one). When
/// `fill` or any step fails the temporary file is removed and `path` is untouched.
pub fn replace_with<E: From<io::Error>>(
    path: &Path,
    mode: u32,
    durability: Durability,
    fill: impl FnOnce(&fs::File) -> Result<(), E>,
) -> Result<(), E> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        fill(&f)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durability == Durability::Durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replacing_leaves_the_new_file_whole_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        replace_durably(&dest, b"one").unwrap();
        replace(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(mode(&dest), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("state.json");
        replace(&dest, b"old").unwrap();
        let err = replace_with(&dest, 0o644, Durability::Durable, |_| {
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn spool_files_are_not_world_readable_under_a_permissive_umask() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&root.path().join("a")), 0o700);
        let f = dir.join("f");
        write(&f, b"x").unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn a_file_left_with_a_loose_mode_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("old");
        fs::write(&f, b"old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        write(&f, b"new").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"new");
        let d = root.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir_all(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }
}
