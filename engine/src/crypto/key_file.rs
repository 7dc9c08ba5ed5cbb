//! Raw key files for unattended servers.
//!
//! Format: one line `pgcairn-key-v1:<base64 of 32 random bytes>`. Created with mode 0600
//! and never overwritten. The key file unlocks its slot through BLAKE3 `derive_key`; its
//! fingerprint (a second derivation) lets the repository find the right slot without trying
//! them all.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

const PREFIX: &str = "pgcairn-key-v1:";

/// The secret of a key file.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyFile([u8; 32]);

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFile(fingerprint {})", self.fingerprint())
    }
}

impl KeyFile {
    /// A fresh random key.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        KeyFile(k)
    }

    /// Reads and parses a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Key(format!(
                "cannot read key file {}: {e}; check repo.key_file and that this user can read it",
                path.display()
            ))
        })?;
        Self::parse(text.trim()).ok_or_else(|| {
            Error::Key(format!(
                "key file {} is not a pgcairn key file (expected one line starting with {PREFIX}); \
                 create one with `pgcairn init --key-file PATH`",
                path.display()
            ))
        })
    }

    fn parse(text: &str) -> Option<Self> {
        let b64 = text.strip_prefix(PREFIX)?;
        let mut raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let key: [u8; 32] = raw.as_slice().try_into().ok()?;
        raw.zeroize();
        Some(KeyFile(key))
    }

    /// Writes a new key file with mode 0600; refuses to replace an existing file.
    pub fn create(&self, path: &Path) -> Result<()> {
        if self.create_exclusive(path)? {
            Ok(())
        } else {
            Err(Error::io(
                format!("creating key file {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ))
        }
    }

    /// Writes a new key file with mode 0600 unless `path` exists: `Ok(false)` then, and
    /// nothing is touched.
    ///
    /// The file appears whole or not at all: the key is written and fsynced under a temporary
    /// name and hard-linked into place (a link, unlike a rename, fails when the name exists).
    /// A concurrent `init` therefore never reads a half-written key, and exactly one of two
    /// racing creators wins.
    pub fn create_exclusive(&self, path: &Path) -> Result<bool> {
        let err = |e| Error::io(format!("creating key file {}", path.display()), e);
        let name = path.file_name().ok_or_else(|| {
            Error::Config(format!("key file {} has no file name", path.display()))
        })?;
        let tmp = path.with_file_name(format!(
            ".{}.{}.{:016x}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let line = format!(
                "{PREFIX}{}\n",
                base64::engine::general_purpose::STANDARD.encode(self.0)
            );
            f.write_all(line.as_bytes())?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(err)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// True when the file at `path` holds this key.
    pub fn is_at(&self, path: &Path) -> bool {
        Self::load(path).is_ok_and(|k| k.0 == self.0)
    }

    /// The key-encryption key for its slot.
    pub fn kek(&self) -> [u8; 32] {
        blake3::derive_key("pgcairn 2026-12 key-file kek v1", &self.0)
    }

    /// A public fingerprint that names the slot this key file opens.
    pub fn fingerprint(&self) -> String {
        hex::encode(&blake3::derive_key("pgcairn 2026-12 key-file fingerprint v1", &self.0)[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_load_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.key");
        let k = KeyFile::generate();
        k.create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = KeyFile::load(&path).unwrap();
        assert_eq!(back.kek(), k.kek());
        assert!(
            k.create(&path).is_err(),
            "an existing key file is never overwritten"
        );
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "hello").unwrap();
        let err = KeyFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a pgcairn key file"), "{err}");
    }
}
