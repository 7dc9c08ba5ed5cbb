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
use std::io::Write;
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

/// fsyncs a file and the given directories (from [`dirs_to_sync`]), and makes the file 0600
/// and the directories the put created 0700: repository objects are for their owner only,
/// whatever the umask.
pub fn sync_file_and_dirs(path: &Path, dirs: &[PathBuf]) -> Result<(), StorageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::File::open(path)
        .and_then(|f| {
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
                    f.set_permissions(fs::Permissions::from_mode(0o700))?;
                }
                f.sync_all()
            })
            .map_err(|e| io_err("fsync", d, e))?;
    }
    Ok(())
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
) -> Result<ObjectVersion, StorageError> {
    let path = root.join(key);
    let lock_path = root.join(LOCK_DIR).join(key.replace('/', "%"));
    fs::create_dir_all(root.join(LOCK_DIR)).map_err(|e| io_err("mkdir", &lock_path, e))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("open", &lock_path, e))?;
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
    sync_file_and_dirs(&path, &dirs)?;
    drop(lock);
    Ok(version_of(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_detects_a_lost_race() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = cas_write(dir.path(), "a/b", b"one", None).unwrap();
        assert!(matches!(
            cas_write(dir.path(), "a/b", b"x", None),
            Err(StorageError::Precondition { .. })
        ));
        let v2 = cas_write(dir.path(), "a/b", b"two", Some(&v1)).unwrap();
        assert!(matches!(
            cas_write(dir.path(), "a/b", b"three", Some(&v1)),
            Err(StorageError::Precondition { .. })
        ));
        cas_write(dir.path(), "a/b", b"three", Some(&v2)).unwrap();
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
