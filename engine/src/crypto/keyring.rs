//! The keyring: the key material of every key epoch the repository still reads, sealed
//! under the keyring key that the key slots wrap.
//!
//! # Why epochs, and why fresh randomness
//!
//! Revoking a leaked key file is only real if nothing written afterwards can be read with
//! what the leak gave away. A leaked slot gives the keyring key of its time, hence the
//! material of every epoch up to then. `key rotate` therefore draws *new random* material for
//! a new epoch (never derived from the old, which the attacker holds), and a *new random*
//! keyring key, wrapped only by the slots that remain. Every sealed object names the epoch
//! it was sealed under (the envelope's key version field), so old objects stay readable
//! through the old material, which the new keyring keeps, until `key rotate --reencrypt`
//! rewrites them and drops it.
//!
//! Epoch 1 is special so that repositories made before rotation existed need no migration:
//! its material *is* the master secret, and its keyring key is that same master secret, so
//! a repository that was never rotated has no sealed keyring at all (the slots wrap the
//! master secret, as they always did).
//!
//! The content-id key is not rotated: content ids name objects and drive deduplication. It
//! stays the one derived from the first master secret, and the keyring carries it. What a
//! holder of an old key can still learn is therefore what content ids tell: whether a
//! stored block or WAL segment equals a plaintext they guess, and object sizes. Contents
//! written after the rotation stay sealed from them.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{id_key_of, MasterSecret, KEY_LEN};
use crate::error::{Error, Result};

/// Every key epoch's material and the content-id key.
#[derive(Clone)]
pub struct Keyring {
    /// Key of the keyed BLAKE3 content ids (never rotated).
    pub id_key: [u8; KEY_LEN],
    /// Material of each epoch still held.
    pub epochs: BTreeMap<u32, [u8; KEY_LEN]>,
}

impl Drop for Keyring {
    fn drop(&mut self) {
        self.id_key.zeroize();
        for m in self.epochs.values_mut() {
            m.zeroize();
        }
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring(epochs {:?})",
            self.epochs.keys().collect::<Vec<_>>()
        )
    }
}

/// The keyring as the config stores it: sealed under the keyring key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SealedKeyring {
    /// XChaCha20 nonce, hex.
    pub nonce: String,
    /// Sealed JSON of the epochs and the id key, hex.
    pub sealed: String,
}

#[derive(Serialize, Deserialize)]
struct KeyringBody {
    id_key: String,
    epochs: BTreeMap<u32, String>,
}

fn aad(repo_id: &str, epoch: u32) -> Vec<u8> {
    format!("pgcairn keyring|{repo_id}|{epoch}").into_bytes()
}

impl Keyring {
    /// The keyring of a repository never rotated: epoch 1 is the master secret.
    pub fn initial(master: &MasterSecret) -> Self {
        let mut epochs = BTreeMap::new();
        epochs.insert(1, *master.as_bytes());
        Keyring {
            id_key: id_key_of(master),
            epochs,
        }
    }

    /// The newest epoch (new objects are sealed under it).
    pub fn newest(&self) -> u32 {
        self.epochs.keys().next_back().copied().unwrap_or(1)
    }

    /// Adds a new epoch with fresh random material; returns it.
    pub fn rotate(&mut self) -> u32 {
        let next = self.newest() + 1;
        let mut m = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut m);
        self.epochs.insert(next, m);
        m.zeroize();
        next
    }

    /// Forgets every epoch older than `epoch`.
    pub fn drop_before(&mut self, epoch: u32) {
        let old: Vec<u32> = self.epochs.range(..epoch).map(|(e, _)| *e).collect();
        for e in old {
            if let Some(mut m) = self.epochs.remove(&e) {
                m.zeroize();
            }
        }
    }

    /// Seals the keyring under `key` (the keyring key of `epoch`).
    pub fn seal(&self, repo_id: &str, epoch: u32, key: &MasterSecret) -> SealedKeyring {
        let body = KeyringBody {
            id_key: hex::encode(self.id_key),
            epochs: self
                .epochs
                .iter()
                .map(|(e, m)| (*e, hex::encode(m)))
                .collect(),
        };
        let mut plain = serde_json::to_vec(&body).expect("keyring serialises");
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = XChaCha20Poly1305::new(key.as_bytes().into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(repo_id, epoch),
                },
            )
            .expect("in-memory encryption cannot fail");
        plain.zeroize();
        SealedKeyring {
            nonce: hex::encode(nonce),
            sealed: hex::encode(sealed),
        }
    }

    /// Opens a sealed keyring with the keyring key of `epoch`.
    pub fn open(
        sealed: &SealedKeyring,
        repo_id: &str,
        epoch: u32,
        key: &MasterSecret,
    ) -> Result<Self> {
        let bad = |why: &str| {
            Error::corrupt(
                "config",
                format!(
                    "the sealed keyring does not open ({why}): the config was altered or damaged"
                ),
            )
        };
        let nonce = hex::decode(&sealed.nonce)
            .ok()
            .filter(|n| n.len() == 24)
            .ok_or_else(|| bad("nonce"))?;
        let ct = hex::decode(&sealed.sealed).map_err(|_| bad("not hex"))?;
        let mut plain = XChaCha20Poly1305::new(key.as_bytes().into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: &aad(repo_id, epoch),
                },
            )
            .map_err(|_| bad("authentication failed"))?;
        let body: std::result::Result<KeyringBody, _> = serde_json::from_slice(&plain);
        plain.zeroize();
        let body = body.map_err(|_| bad("not a keyring"))?;
        let key32 = |h: &str| -> Option<[u8; KEY_LEN]> {
            let mut v = hex::decode(h).ok()?;
            let k = v.as_slice().try_into().ok();
            v.zeroize();
            k
        };
        let id_key = key32(&body.id_key).ok_or_else(|| bad("id key"))?;
        let mut epochs = BTreeMap::new();
        for (e, m) in &body.epochs {
            epochs.insert(*e, key32(m).ok_or_else(|| bad("epoch material"))?);
        }
        if !epochs.contains_key(&epoch) {
            return Err(bad("it lacks its own epoch"));
        }
        Ok(Keyring { id_key, epochs })
    }
}

/// The key authenticating the config (its generation, slots and keyring) under the keyring
/// key: whoever holds none of the current keys cannot forge or renumber a config.
pub fn config_mac(key: &MasterSecret, body: &[u8]) -> String {
    let mac_key = blake3::derive_key("pgcairn 2026-12 config mac v1", key.as_bytes());
    hex::encode(blake3::keyed_hash(&mac_key, body).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_adds_fresh_material_and_seal_round_trips() {
        let master = MasterSecret::generate();
        let mut ring = Keyring::initial(&master);
        assert_eq!(ring.newest(), 1);
        let e = ring.rotate();
        assert_eq!(e, 2);
        assert_ne!(ring.epochs[&2], ring.epochs[&1]);
        let kr = MasterSecret::generate();
        let sealed = ring.seal("r", 2, &kr);
        let back = Keyring::open(&sealed, "r", 2, &kr).unwrap();
        assert_eq!(back.epochs, ring.epochs);
        assert_eq!(back.id_key, ring.id_key);
        // Bound to its repository, epoch and key.
        assert!(Keyring::open(&sealed, "other", 2, &kr).is_err());
        assert!(Keyring::open(&sealed, "r", 3, &kr).is_err());
        assert!(Keyring::open(&sealed, "r", 2, &master).is_err());
        ring.drop_before(2);
        assert_eq!(ring.epochs.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(ring.id_key, id_key_of(&master), "the id key survives");
    }
}
