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
//! ([`replace`], [`replace_durably`], [`replace_with`]): written beside them and renamed over
//! them, so a reader sees the old file or the new one, never a part. While it is written the
//! new file has no name (`O_TMPFILE`, where the file system has it): a process killed
//! meanwhile (PostgreSQL stops a standby's `archive-get` with SIGTERM) leaves no temporary
//! file behind in `pg_wal` or a spool. It gets a temporary name once whole, just before the
//! rename.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and missing parents as 0700; `dir` itself ends up 0700 even if it existed.
/// The mode is set through a descriptor opened without following a link: a link at `dir` is
/// refused, never the mode of where it points changed.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let d = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    d.set_permissions(fs::Permissions::from_mode(DIR_MODE))
}

/// Checks that the directories from `root` down to `dir` (those that exist; `dir` lies
/// beneath `root`) are this user's own, and that none below `root` is a link. `root` itself
/// may be a link (a spool moved to another disk), to a directory of this user's.
///
/// Why: a spool belongs to the user who runs the archive commands, PostgreSQL's. Run by hand
/// as root with the same settings, a command would otherwise create files there that user
/// cannot read or remove (a lock that keeps every later prefetcher from starting, segments it
/// cannot serve), and follow links that user planted to files of root's.
pub fn check_own_tree(root: &Path, dir: &Path) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let below = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut at = root.to_path_buf();
    let mut components = below.components();
    loop {
        let meta = if at == root {
            fs::metadata(&at)
        } else {
            fs::symlink_metadata(&at)
        };
        match meta {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link; a spool holds only its own directories: remove it",
                    at.display()
                )))
            }
            Ok(m) if !m.is_dir() => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    at.display()
                )))
            }
            Ok(m) if std::os::unix::fs::MetadataExt::uid(&m) != me => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{} belongs to uid {}, not to this user (uid {me}): run this command as its owner \
                         (the user PostgreSQL runs archive commands as), or give this user a spool of its own",
                        at.display(),
                        std::os::unix::fs::MetadataExt::uid(&m)
                    ),
                ))
            }
            Ok(_) => {}
        }
        match components.next() {
            Some(c) => at.push(c),
            None => return Ok(()),
        }
    }
}

/// Creates or truncates `path` as a 0600 file open for writing; never through a link at
/// `path` (refused).
pub fn create_file(path: &Path) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `body` to `path` as a 0600 file.
pub fn write(path: &Path, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(body)
}

/// An unnamed file in `dir` (`O_TMPFILE`), or `None` where the file system has none or
/// `/proc` is not there to name it afterwards.
fn open_anonymous(dir: &Path, mode: u32) -> io::Result<Option<fs::File>> {
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    match fs::OpenOptions::new()
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => Ok(Some(f)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
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
        // Filled as an anonymous file where the file system has them, given its temporary
        // name only once whole: a process killed while filling it (PostgreSQL stops the
        // archive-get of a standby with SIGTERM) leaves nothing behind. Elsewhere, filled
        // under the temporary name.
        // A file already under the temporary name was left by a killed process whose pid
        // this one now has: taken away, and the name tried once more.
        let stale_once = |make: &dyn Fn() -> io::Result<()>| match make() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                make()
            }
            r => r,
        };
        let anonymous = open_anonymous(dir, mode)?;
        let f = match &anonymous {
            Some(f) => f.try_clone()?,
            None => {
                let named = std::cell::OnceCell::new();
                stale_once(&|| {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .open(&tmp)?;
                    let _ = named.set(f);
                    Ok(())
                })?;
                named.into_inner().expect("opened")
            }
        };
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        fill(&f)?;
        if durability == Durability::Durable {
            f.sync_all()?;
        }
        if anonymous.is_some() {
            stale_once(&|| {
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)),
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(io::Error::from)
            })?;
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

/// Whether `a` and `b` name the same place: equal as written, or once links and `.`/`..`
/// are resolved (both must exist for that).
pub fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (fs::canonicalize(a), fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_never_created_or_chmodded_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let marker = dir.path().join(".000000010000000000000002.fetching");
        std::os::unix::fs::symlink(&victim, &marker).unwrap();
        assert!(write(&marker, b"").is_err(), "a link is refused");
        assert_eq!(fs::read(&victim).unwrap(), b"keep", "not truncated");
        assert_eq!(mode(&victim), 0o644, "mode untouched");

        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let area = dir.path().join("area");
        std::os::unix::fs::symlink(&shared, &area).unwrap();
        assert!(create_dir_all(&area).is_err(), "a link is refused");
        assert_eq!(mode(&shared), 0o755, "mode untouched");
    }

    #[test]
    fn a_spool_tree_must_be_this_users_own_and_hold_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("spool");
        let area = root.join("main/prefetch/0123");
        check_own_tree(&root, &area).expect("nothing there yet");
        create_dir_all(&area).unwrap();
        check_own_tree(&root, &area).expect("all our own");
        // The spool itself may be a link (moved to another disk).
        let moved = dir.path().join("moved");
        std::os::unix::fs::symlink(&root, &moved).unwrap();
        check_own_tree(&moved, &moved.join("main/prefetch/0123")).expect("a linked root");
        // Below it, no link.
        fs::rename(root.join("main/prefetch"), root.join("main/elsewhere")).unwrap();
        std::os::unix::fs::symlink(root.join("main/elsewhere"), root.join("main/prefetch"))
            .unwrap();
        let e = check_own_tree(&root, &area).expect_err("a link below the root");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Another user's spool (only root can make one to test with).
        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            create_dir_all(&theirs.join("main")).unwrap();
            std::os::unix::fs::chown(theirs.join("main"), Some(65534), Some(65534)).unwrap();
            let e = check_own_tree(&theirs, &theirs.join("main/prefetch"))
                .expect_err("another user's directory");
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }

    /// A temporary file a killed process left under the name this call picks (its pid now
    /// this process's) does not fail the call.
    #[test]
    fn a_stale_temporary_file_under_the_same_name_is_replaced() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        for n in 0..1000 {
            // The names this process picks next (other tests use a few numbers first).
            let stale = dir
                .path()
                .join(format!(".RECOVERYXLOG.{}.{n}.tmp", std::process::id()));
            fs::write(&stale, b"stale").unwrap();
        }
        for _ in 0..4 {
            replace(&dest, b"fresh").unwrap();
        }
        assert_eq!(fs::read(&dest).unwrap(), b"fresh");
    }

    /// A process killed while a file is filled leaves nothing: during the fill the directory
    /// holds no new entry (the file is anonymous until whole).
    #[test]
    fn a_file_being_filled_has_no_name_yet() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let names = || -> Vec<String> {
            fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        if open_anonymous(dir.path(), FILE_MODE).unwrap().is_none() {
            eprintln!("skipped: {} has no anonymous files", dir.path().display());
            return;
        }
        replace_with::<io::Error>(&dest, FILE_MODE, Durability::Atomic, |f| {
            use std::io::Write;
            (&*f).write_all(b"half")?;
            assert_eq!(names(), Vec::<String>::new(), "nothing named while filling");
            (&*f).write_all(b" and half")
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"half and half");
        assert_eq!(names(), vec!["RECOVERYXLOG".to_string()]);
        assert_eq!(mode(&dest), FILE_MODE);
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
