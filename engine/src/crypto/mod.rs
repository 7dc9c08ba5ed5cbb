//! Keys: the master secret, how it is wrapped, and the subkeys derived from it.
//!
//! - `init` draws a random 32-byte **master secret**. It never reaches storage in clear
//!   (except in a repository created with `--no-encryption`, where it only serves as the
//!   integrity and id key and protects nothing).
//! - The master secret is **wrapped** (XChaCha20-Poly1305) in one or more **key slots**
//!   stored in the repository config: by a passphrase through argon2id, or by a key file
//!   (32 random bytes on the server, mode 0600) through BLAKE3 `derive_key`. Changing a
//!   passphrase rewrites one slot; the data is untouched.
//! - **Subkeys** come from the master secret with BLAKE3 `derive_key` and distinct
//!   contexts: the id key (keyed BLAKE3 content ids, so ids leak nothing about contents),
//!   the metadata key (pack trailers, index, manifests), the WAL key, and versioned data
//!   keys (the version is written in every sealed object, so rotation never rewrites history).

mod key_file;
mod slots;

pub use key_file::KeyFile;
pub use slots::{KdfParams, KeySlot, SlotKind, Unlock};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every symmetric key and of the master secret.
pub const KEY_LEN: usize = 32;

/// The repository's master secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterSecret([u8; KEY_LEN]);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    /// Draws a fresh random master secret.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        MasterSecret(k)
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterSecret(bytes)
    }

    /// The raw bytes (only for wrapping).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives every subkey.
    pub fn derive(&self) -> RepoKeys {
        let sub = |ctx: &str| blake3::derive_key(ctx, &self.0);
        RepoKeys {
            id_key: sub("pgcairn 2026-12 content id key v1"),
            meta_key: sub("pgcairn 2026-12 metadata key v1"),
            wal_key: sub("pgcairn 2026-12 wal key v1"),
            master: self.clone(),
        }
    }
}

/// Subkeys derived from the master secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RepoKeys {
    /// Key of the keyed BLAKE3 content ids.
    pub id_key: [u8; KEY_LEN],
    /// Key sealing metadata (pack trailers, index segments, manifests, reports).
    pub meta_key: [u8; KEY_LEN],
    /// Key sealing WAL objects.
    pub wal_key: [u8; KEY_LEN],
    master: MasterSecret,
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

impl RepoKeys {
    /// The data key of a given version (block contents).
    pub fn data_key(&self, version: u32) -> [u8; KEY_LEN] {
        let mut material = Vec::with_capacity(KEY_LEN + 4);
        material.extend_from_slice(self.master.as_bytes());
        material.extend_from_slice(&version.to_le_bytes());
        let key = blake3::derive_key("pgcairn 2026-12 data key v1", &material);
        material.zeroize();
        key
    }

    /// The keyed BLAKE3 content id of some plaintext.
    pub fn content_id(&self, plaintext: &[u8]) -> ContentId {
        let mut hasher = blake3::Hasher::new_keyed(&self.id_key);
        if plaintext.len() >= 1 << 20 {
            // Large inputs (WAL segments) hash on all cores: this is on the archive-push
            // latency path.
            hasher.update_rayon(plaintext);
        } else {
            hasher.update(plaintext);
        }
        ContentId(*hasher.finalize().as_bytes())
    }
}

/// A keyed BLAKE3 content id: names objects and blocks, binds them in AEAD associated data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(ContentId(v.try_into().ok()?))
    }
}

impl std::fmt::Debug for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentId({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for ContentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_are_distinct_and_deterministic() {
        let m = MasterSecret::from_bytes([7; 32]);
        let a = m.derive();
        let b = m.derive();
        assert_eq!(a.id_key, b.id_key);
        assert_ne!(a.id_key, a.meta_key);
        assert_ne!(a.meta_key, a.wal_key);
        assert_ne!(a.data_key(1), a.data_key(2));
        assert_eq!(a.data_key(1), b.data_key(1));
    }

    #[test]
    fn content_ids_depend_on_the_key() {
        let a = MasterSecret::from_bytes([1; 32]).derive();
        let b = MasterSecret::from_bytes([2; 32]).derive();
        let data = vec![42u8; 3 << 20];
        assert_eq!(a.content_id(&data), a.content_id(&data));
        assert_ne!(a.content_id(&data), b.content_id(&data));
        assert_ne!(a.content_id(&data).0, *blake3::hash(&data).as_bytes());
    }
}
