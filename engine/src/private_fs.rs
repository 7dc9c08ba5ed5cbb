//! Local files only their owner can read, whatever the umask.
//!
//! The spools hold decrypted WAL (prefetched segments), acknowledgements and locks; a
//! world-readable spool under the usual umask 022 hands every local user the database's
//! changes. Directories here are created 0700 and files 0600, and the mode is set on the open
//! descriptor afterwards, so neither the umask nor a file left by an older version with a
//! looser mode decides who can read them.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
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
