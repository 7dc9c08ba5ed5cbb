//! Keys: the master secret, how it is wrapped, and the subkeys derived from it.
//!
//! - `init` draws a random 32-byte **master secret**. It never reaches storage in clear
//!   (except in a repository created with `--no-encryption`, where it only serves as the
//!   integrity and id key and protects nothing).
//! - The master secret is **wrapped** (XChaCha20-Poly1305) in one or more **key slots**
//!   stored in the repository config: by a passphrase through argon2id, or by a key file
//!   (32 random bytes on the server, mode 0600) through BLAKE3 `derive_key`. Changing a
//!   passphrase rewrites one slot; the data is untouched.
//! - **Subkeys** come with BLAKE3 `derive_key` and distinct contexts: the id key (keyed
//!   BLAKE3 content ids, from the first master secret, never rotated) and, per **key epoch**,
//!   the metadata key (pack trailers, index, manifests), the WAL key and the data key. Epoch
//!   1's material is the master secret; `key rotate` adds epochs with fresh random material
//!   ([`keyring`]), the epoch is written in every sealed object, and rotation never rewrites
//!   history. Key slots may also be opened by an external key manager ([`command`]).

pub mod command;
mod key_file;
pub mod keyring;
mod slots;

use std::collections::BTreeMap;

pub use command::KeyCommand;
pub use key_file::KeyFile;
pub use keyring::Keyring;
pub use slots::{KdfParams, KeySlot, SlotKey, SlotKind, Unlock, UnwrapProbe};

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

    /// Derives every subkey of a repository whose only key epoch is 1 and whose epoch-1
    /// material is this master secret (every repository before its first `key rotate`).
    pub fn derive(&self) -> RepoKeys {
        let mut epochs = BTreeMap::new();
        epochs.insert(1, EpochKeys::derive(1, &self.0));
        RepoKeys {
            id_key: id_key_of(self),
            epochs,
        }
    }
}

/// The content-id key of a repository: derived from its first master secret and never
/// rotated (content ids name objects and drive deduplication, so they stay stable).
pub fn id_key_of(first_master: &MasterSecret) -> [u8; KEY_LEN] {
    blake3::derive_key("pgcairn 2026-12 content id key v1", &first_master.0)
}

/// The keys of one key epoch, derived from that epoch's random material.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct EpochKeys {
    meta: [u8; KEY_LEN],
    wal: [u8; KEY_LEN],
    data: [u8; KEY_LEN],
}

impl EpochKeys {
    /// For epoch 1 the material is the master secret, so these are the keys every repository
    /// has used since `init`; later epochs' material is fresh randomness (see [`keyring`]).
    fn derive(epoch: u32, material: &[u8; KEY_LEN]) -> Self {
        let mut m = Vec::with_capacity(KEY_LEN + 4);
        m.extend_from_slice(material);
        m.extend_from_slice(&epoch.to_le_bytes());
        let data = blake3::derive_key("pgcairn 2026-12 data key v1", &m);
        m.zeroize();
        EpochKeys {
            meta: blake3::derive_key("pgcairn 2026-12 metadata key v1", material),
            wal: blake3::derive_key("pgcairn 2026-12 wal key v1", material),
            data,
        }
    }
}

/// Which family of subkey seals an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Block contents.
    Data,
    /// WAL objects.
    Wal,
    /// Pack trailers, index segments, manifests, reports.
    Meta,
}

/// Subkeys of every key epoch the repository's keyring holds, and the content-id key.
#[derive(Clone)]
pub struct RepoKeys {
    /// Key of the keyed BLAKE3 content ids.
    pub id_key: [u8; KEY_LEN],
    epochs: BTreeMap<u32, EpochKeys>,
}

impl Drop for RepoKeys {
    fn drop(&mut self) {
        self.id_key.zeroize();
    }
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RepoKeys(epochs {:?})",
            self.epochs.keys().collect::<Vec<_>>()
        )
    }
}

impl RepoKeys {
    /// Keys from an opened keyring.
    pub fn from_keyring(ring: &Keyring) -> Self {
        RepoKeys {
            id_key: ring.id_key,
            epochs: ring
                .epochs
                .iter()
                .map(|(e, m)| (*e, EpochKeys::derive(*e, m)))
                .collect(),
        }
    }

    /// The subkey for `usage` in key epoch `epoch`; `None` when the keyring does not hold
    /// that epoch (dropped by `key rotate --reencrypt`, or never known to this keyring).
    pub fn key(&self, usage: KeyUse, epoch: u32) -> Option<[u8; KEY_LEN]> {
        let k = self.epochs.get(&epoch)?;
        Some(match usage {
            KeyUse::Data => k.data,
            KeyUse::Wal => k.wal,
            KeyUse::Meta => k.meta,
        })
    }

    /// The content-id key alone (no epoch).
    pub fn ids_only(&self) -> RepoKeys {
        RepoKeys {
            id_key: self.id_key,
            epochs: BTreeMap::new(),
        }
    }

    /// Adds the epochs of `other` this does not hold yet (same repository: the caller checks
    /// the content-id keys match).
    pub fn absorb(&mut self, other: &RepoKeys) {
        for (e, k) in &other.epochs {
            self.epochs.entry(*e).or_insert_with(|| k.clone());
        }
    }

    /// The newest epoch held.
    pub fn newest_epoch(&self) -> u32 {
        self.epochs.keys().next_back().copied().unwrap_or(1)
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.epochs.keys().copied().collect()
    }

    /// The keyed BLAKE3 content id of `plaintext`, computed from parts of `part_len` bytes
    /// (a power of two of at least 1 KiB) whose chaining values' first 8 bytes go to `fps`,
    /// one per part: the same id as [`Self::content_id`], plus fingerprints of the parts at
    /// about the same cost (BLAKE3 hashes a tree of such parts anyway).
    pub fn content_id_parted(
        &self,
        plaintext: &[u8],
        part_len: usize,
        fps: &mut Vec<u64>,
    ) -> ContentId {
        let total = plaintext.len() as u64;
        let Some(parted) = crate::codec::tree_hash::PartedHash::keyed(&self.id_key, part_len)
        else {
            return self.content_id(plaintext);
        };
        if total <= part_len as u64 {
            return self.content_id(plaintext);
        }
        let parts: Vec<_> = plaintext
            .chunks(part_len)
            .enumerate()
            .map(|(i, p)| {
                let h = parted.part(total, i, p);
                fps.push(h.fingerprint());
                h
            })
            .collect();
        ContentId(parted.merge(total, &parts).expect("every part hashed"))
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
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentId(pub [u8; 32]);

/// Ids order as their bytes do. The derived order called `memcmp` for each comparison, and
/// ids are compared by the million: a restore's block index is loaded by a binary search of
/// the wanted ids for every entry of the repository's index, and at scale 500 `memcmp` was
/// 27 % of a restore's preflight. Ids are uniformly random, so their first eight bytes, read
/// as one big-endian word, almost always decide; the rest is compared only when those tie.
/// (Reading all four words for every comparison was as fast optimized, but half of the
/// engine's unoptimized test time went to it.)
impl Ord for ContentId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let head = |id: &ContentId| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&id.0[..8]);
            u64::from_be_bytes(w)
        };
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for ContentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl ContentId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.hex_in(&mut [0; 64]).to_string()
    }

    /// Lower-case hex, written into `buf`: for the manifests' block lists, which spell out
    /// every block's id (`hex::encode` collected each of them char by char into a string of
    /// its own).
    pub fn hex_in<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        hex::encode_to_slice(self.0, buf).expect("32 bytes are 64 hex digits");
        std::str::from_utf8(buf).expect("hex digits are ASCII")
    }

    /// Parses 64 hex digits. Straight into the id: every block of a manifest is parsed
    /// through here (twice in a restore), and decoding into a vector first was 29 % of a
    /// restore's preflight at scale 500.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(ContentId(id))
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
        let meta = a.key(KeyUse::Meta, 1).unwrap();
        let wal = a.key(KeyUse::Wal, 1).unwrap();
        let data = a.key(KeyUse::Data, 1).unwrap();
        assert_ne!(a.id_key, meta);
        assert_ne!(meta, wal);
        assert_ne!(wal, data);
        assert_eq!(Some(data), b.key(KeyUse::Data, 1));
        assert_eq!(
            a.key(KeyUse::Data, 2),
            None,
            "an epoch the keyring lacks has no key"
        );
        // The subkeys of epoch 1 are the ones every repository used before rotation existed.
        assert_eq!(
            meta,
            blake3::derive_key("pgcairn 2026-12 metadata key v1", &[7; 32])
        );
    }

    #[test]
    fn parted_content_ids_are_content_ids_and_fingerprint_each_part() {
        let k = MasterSecret::from_bytes([1; 32]).derive();
        let mut block: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
        let mut fps = Vec::new();
        assert_eq!(
            k.content_id_parted(&block, 16 << 10, &mut fps),
            k.content_id(&block)
        );
        assert_eq!(fps.len(), 4);
        block[20 << 10] ^= 1;
        let mut changed = Vec::new();
        assert_eq!(
            k.content_id_parted(&block, 16 << 10, &mut changed),
            k.content_id(&block)
        );
        let differ: Vec<bool> = fps.iter().zip(&changed).map(|(a, b)| a != b).collect();
        assert_eq!(differ, [false, true, false, false]);
    }

    #[test]
    fn ids_order_as_their_bytes() {
        let k = MasterSecret::from_bytes([3; 32]).derive();
        let mut ids: Vec<ContentId> = (0..2000u32)
            .map(|i| k.content_id(&i.to_le_bytes()))
            .collect();
        // Ids that differ only in a later word, or in a word's low byte, or not at all.
        for at in [0, 7, 8, 15, 31] {
            let mut a = ids[0];
            a.0[at] ^= 0x80;
            ids.push(a);
            let mut b = ids[1];
            b.0[at] = b.0[at].wrapping_add(1);
            ids.push(b);
        }
        ids.push(ids[5]);
        for a in &ids {
            for b in ids.iter().step_by(7) {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a} against {b}");
                assert_eq!(a.partial_cmp(b), Some(a.0.cmp(&b.0)));
            }
        }
    }

    #[test]
    fn ids_parse_from_exactly_64_hex_digits() {
        let id = MasterSecret::from_bytes([4; 32]).derive().content_id(b"x");
        let hex = id.to_hex();
        assert_eq!(hex, hex::encode(id.0));
        assert_eq!(ContentId::from_hex(&hex), Some(id));
        assert_eq!(ContentId::from_hex(&hex.to_uppercase()), Some(id));
        for bad in [
            &hex[..62],
            &hex[..63],
            &format!("{hex}00"),
            &format!("{}g", &hex[..63]),
            "",
        ] {
            assert_eq!(ContentId::from_hex(bad), None, "{bad:?}");
        }
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
