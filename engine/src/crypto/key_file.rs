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
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("creating key file {}", path.display()), e))?;
        let line = format!(
            "{PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        );
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
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
