//! Durability and compare-and-swap for local disk, which `object_store` leaves to us.
//!
//! - `object_store`'s LocalFileSystem writes a temporary file and links or renames it into
//!   place, but does not fsync. After every successful put we fsync the file and every
//!   directory from its parent up to the first one that already existed before the put,
//!   so the new name survives a power loss. Only then does the put return.
//! - Compare-and-swap: LocalFileSystem has no conditional update. We take an exclusive
//!   lock on `.pgcairn-locks/<key>` under the repository root, compare the current
//!   content hash with the expected version, write a temporary file, fsync, rename, fsync
//!   the directory. Versions on local disk are BLAKE3 hashes of the content.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use pgcairn_engine::storage::{ObjectVersion, StorageError};

/// Directory (under the root) that holds CAS lock files; never listed as objects.
pub const LOCK_DIR: &str = ".pgcairn-locks";

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Permanent {
        op,
        key: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Directories that a put of `path` will create: from its parent upward to, excluding, the
/// first existing ancestor; plus that ancestor (its entry list changes).
pub fn dirs_to_sync(root: &Path, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir {
        out.push(d.to_path_buf());
        if d.exists() || d == root {
            break;
        }
        dir = d.parent();
    }
    out
}

/// Creates a repository root for `init`: 0700 whatever the umask (parents likewise when
/// missing). Nothing below it is reachable by other users, even in the moment between
/// `object_store` creating a file under the umask and [`sync_file_and_dirs`] tightening it.
pub fn create_root(root: &Path) -> std::io::Result<()> {
    pgcairn_engine::private_fs::create_dir_all(root)
}

/// Who the files and directories a command creates in the local repository `root` go to:
/// the repository's owner when root runs the command in a repository another user owns
/// (`postgres`, whose `archive_command` writes and reads it), else nobody (`None`: they stay
/// the running user's). A root-run backup, drill, verify or restore (its audit record)
/// otherwise left root's 0600 files and 0700 directories there (the catalog head replaced by
/// compare-and-swap among them), which PostgreSQL's user could then neither read nor write.
pub fn owner_for(root: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let m = fs::metadata(root).ok()?;
    (m.uid() != 0).then_some((m.uid(), m.gid()))
}

fn give(f: &fs::File, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// fsyncs a file and the given directories (from [`dirs_to_sync`]), and makes the file 0600
/// and the directories the put created 0700: repository objects are for their owner only,
/// whatever the umask. With `owner` ([`owner_for`]), the file and those directories are given
/// to it.
pub fn sync_file_and_dirs(
    path: &Path,
    dirs: &[PathBuf],
    owner: Option<(u32, u32)>,
) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::File::open(path)
        .and_then(|f| {
            give(&f, owner)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.sync_all()
        })
        .map_err(|e| io_err("fsync", path, e))?;
    // The last directory is the first that already existed (or the root): leave its mode.
    let created = dirs.len().saturating_sub(1);
    for (i, d) in dirs.iter().enumerate() {
        fs::File::open(d)
            .and_then(|f| {
                if i < created {
                    give(&f, owner)?;
                    f.set_permissions(fs::Permissions::from_mode(0o700))?;
                }
                f.sync_all()
            })
            .map_err(|e| io_err("fsync", d, e))?;
    }
    Ok(())
}

/// Reads the object at `path` and fsyncs it and every directory from its parent up to `root`
/// (a killed create may have linked it, in directories it made, and never synced either);
/// returns what it made durable, or `None` when there is no object.
pub fn sync_existing(root: &Path, path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path, e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("fsync", path, e))?;
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err("fsync", d, e))?;
        dir = d.parent();
    }
    Ok(Some(bytes))
}

/// Content version of a local object.
pub fn version_of(data: &[u8]) -> ObjectVersion {
    ObjectVersion(blake3::hash(data).to_hex().to_string())
}

/// Suffix of a compare-and-swap's temporary file (`.<name>.cas-tmp`, beside the object).
const CAS_TMP_SUFFIX: &str = ".cas-tmp";

/// Whether `key` is a compare-and-swap's temporary file, not an object: one is there while a
/// swap writes it (and after a crash mid-swap), and a listing must not return it.
pub fn is_temporary(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with('.') && name.ends_with(CAS_TMP_SUFFIX)
}

/// Compare-and-swap write of `root/key`.
pub fn cas_write(
    root: &Path,
    key: &str,
    data: &[u8],
    expected: Option<&ObjectVersion>,
    owner: Option<(u32, u32)>,
) -> Result<ObjectVersion, StorageError> {
    let path = root.join(key);
    let lock_dir = root.join(LOCK_DIR);
    let lock_path = lock_dir.join(key.replace('/', "%"));
    fs::create_dir_all(&lock_dir).map_err(|e| io_err("mkdir", &lock_path, e))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("open", &lock_path, e))?;
    // The lock file and its directory too: the repository's owner opens them for writing.
    if owner.is_some() {
        fs::File::open(&lock_dir)
            .and_then(|d| give(&d, owner))
            .and_then(|()| give(&lock, owner))
            .map_err(|e| io_err("chown", &lock_path, e))?;
    }
    lock.lock().map_err(|e| io_err("lock", &lock_path, e))?;
    let current = match fs::read(&path) {
        Ok(b) => Some(version_of(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", &path, e)),
    };
    if current.as_ref() != expected {
        return Err(StorageError::Precondition {
            key: key.to_string(),
        });
    }
    let dirs = dirs_to_sync(root, &path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_err("mkdir", parent, e))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}{CAS_TMP_SUFFIX}",
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| io_err("write", &path, e))?;
    sync_file_and_dirs(&path, &dirs, owner)?;
    drop(lock);
    Ok(version_of(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run as root in a repository another user owns, what a write creates is that user's:
    /// the object, the directories made for it, the lock file and its directory.
    #[test]
    fn as_root_new_objects_go_to_the_repositorys_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        if !rustix::process::geteuid().is_root() {
            assert_eq!(owner_for(dir.path()), None);
            return;
        }
        // Root's own repository: nothing to give.
        assert_eq!(owner_for(dir.path()), None);
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65533)).unwrap();
        let owner = owner_for(dir.path());
        assert_eq!(owner, Some((65534, 65533)));
        let v1 = cas_write(dir.path(), "clusters/main/head", b"one", None, owner).unwrap();
        cas_write(dir.path(), "clusters/main/head", b"two", Some(&v1), owner).unwrap();
        let path = dir.path().join("clusters/main/head");
        let dirs = dirs_to_sync(dir.path(), &dir.path().join("packs/ab/cd/x"));
        std::fs::create_dir_all(dir.path().join("packs/ab/cd")).unwrap();
        std::fs::write(dir.path().join("packs/ab/cd/x"), b"pack").unwrap();
        sync_file_and_dirs(&dir.path().join("packs/ab/cd/x"), &dirs, owner).unwrap();
        for p in [
            path.clone(),
            dir.path().join("clusters"),
            dir.path().join("clusters/main"),
            dir.path().join(LOCK_DIR),
            dir.path().join(LOCK_DIR).join("clusters%main%head"),
            dir.path().join("packs"),
            dir.path().join("packs/ab/cd"),
            dir.path().join("packs/ab/cd/x"),
        ] {
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65533), "{}", p.display());
        }
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn cas_detects_a_lost_race() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = cas_write(dir.path(), "a/b", b"one", None, None).unwrap();
        assert!(matches!(
            cas_write(dir.path(), "a/b", b"x", None, None),
            Err(StorageError::Precondition { .. })
        ));
        let v2 = cas_write(dir.path(), "a/b", b"two", Some(&v1), None).unwrap();
        assert!(matches!(
            cas_write(dir.path(), "a/b", b"three", Some(&v1), None),
            Err(StorageError::Precondition { .. })
        ));
        cas_write(dir.path(), "a/b", b"three", Some(&v2), None).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b")).unwrap(), b"three");
    }

    #[test]
    fn dirs_to_sync_stops_at_the_first_existing_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        let dirs = dirs_to_sync(dir.path(), &dir.path().join("x/y/z/file"));
        assert_eq!(
            dirs,
            vec![
                dir.path().join("x/y/z"),
                dir.path().join("x/y"),
                dir.path().join("x")
            ]
        );
    }
}
