//! Key slots: the master secret wrapped by a passphrase (argon2id) or a key file.
//!
//! A slot stores `XChaCha20-Poly1305(kek, nonce, master, aad = repo_id || slot_id)`. A wrong
//! passphrase or key file fails authentication, which is reported as "does not unlock",
//! never as corruption.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::{KeyFile, MasterSecret, KEY_LEN};
use crate::error::{Error, Result};

/// argon2id cost parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Salt, hex.
    pub salt: String,
}

impl KdfParams {
    /// OWASP's argon2id recommendation (19 MiB, t=2) raised to 64 MiB, t=3: about a quarter
    /// of a second here, paid once per command (key files cost nothing: prefer them for
    /// `archive_command`).
    pub fn recommended() -> Self {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt: hex::encode(salt),
        }
    }

    /// Cheap parameters, for unit tests only.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
            salt: "00112233445566778899aabbccddeeff".into(),
        }
    }

    fn kek(&self, passphrase: &str) -> Result<[u8; KEY_LEN]> {
        let params = Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map_err(|e| Error::Key(format!("invalid argon2id parameters in key slot: {e}")))?;
        let salt =
            hex::decode(&self.salt).map_err(|_| Error::Key("key slot salt is not hex".into()))?;
        let mut out = [0u8; KEY_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
            .map_err(|e| Error::Key(format!("argon2id failed: {e}")))?;
        Ok(out)
    }
}

/// How a slot is unlocked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SlotKind {
    /// A passphrase through argon2id.
    Passphrase { kdf: KdfParams },
    /// A key file, found by its fingerprint.
    KeyFile { fingerprint: String },
}

/// One wrapped copy of the master secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeySlot {
    /// Random slot id (hex), bound in the AAD.
    pub id: String,
    /// How to unlock it.
    #[serde(flatten)]
    pub kind: SlotKind,
    /// XChaCha20 nonce, hex.
    pub nonce: String,
    /// Wrapped master secret with its tag, hex.
    pub wrapped: String,
}

/// What the operator gave us to unlock the repository.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// A passphrase (from `PGCAIRN_PASSPHRASE` or `passphrase_file`).
    Passphrase(String),
    /// A key file's secret.
    KeyFile(KeyFile),
}

impl Drop for Unlock {
    fn drop(&mut self) {
        if let Unlock::Passphrase(p) = self {
            p.zeroize();
        }
    }
}

fn aad(repo_id: &str, slot_id: &str) -> Vec<u8> {
    format!("pgcairn key slot|{repo_id}|{slot_id}").into_bytes()
}

impl KeySlot {
    /// Wraps `master` for `unlock`.
    pub fn wrap(
        repo_id: &str,
        master: &MasterSecret,
        unlock: &Unlock,
        kdf: KdfParams,
    ) -> Result<Self> {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let (kind, mut kek) = match unlock {
            Unlock::Passphrase(p) => {
                let kek = kdf.kek(p)?;
                (SlotKind::Passphrase { kdf }, kek)
            }
            Unlock::KeyFile(k) => (
                SlotKind::KeyFile {
                    fingerprint: k.fingerprint(),
                },
                k.kek(),
            ),
        };
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&kek).into());
        kek.zeroize();
        let wrapped = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: master.as_bytes(),
                    aad: &aad(repo_id, &id),
                },
            )
            .map_err(|_| Error::Key("wrapping the master secret failed".into()))?;
        Ok(KeySlot {
            id,
            kind,
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        })
    }

    /// True if this slot is of the kind `unlock` can open (and, for key files, its slot).
    pub fn matches(&self, unlock: &Unlock) -> bool {
        match (&self.kind, unlock) {
            (SlotKind::Passphrase { .. }, Unlock::Passphrase(_)) => true,
            (SlotKind::KeyFile { fingerprint }, Unlock::KeyFile(k)) => {
                *fingerprint == k.fingerprint()
            }
            _ => false,
        }
    }

    /// Unwraps the master secret; `None` when the passphrase or key is not the right one.
    pub fn unwrap_master(&self, repo_id: &str, unlock: &Unlock) -> Result<Option<MasterSecret>> {
        let mut kek = match (&self.kind, unlock) {
            (SlotKind::Passphrase { kdf }, Unlock::Passphrase(p)) => kdf.kek(p)?,
            (SlotKind::KeyFile { .. }, Unlock::KeyFile(k)) => k.kek(),
            _ => return Ok(None),
        };
        let nonce = hex::decode(&self.nonce).ok().filter(|n| n.len() == 24);
        let wrapped = hex::decode(&self.wrapped).ok();
        let (Some(nonce), Some(wrapped)) = (nonce, wrapped) else {
            return Err(Error::Key(format!(
                "key slot {} is malformed (nonce or wrapped key is not hex)",
                self.id
            )));
        };
        let cipher = XChaCha20Poly1305::new((&kek).into());
        kek.zeroize();
        let Ok(mut plain) = cipher.decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &wrapped,
                aad: &aad(repo_id, &self.id),
            },
        ) else {
            return Ok(None);
        };
        let bytes: Option<[u8; KEY_LEN]> = plain.as_slice().try_into().ok();
        plain.zeroize();
        Ok(bytes.map(MasterSecret::from_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_slot_opens_only_with_the_right_passphrase() {
        let master = MasterSecret::generate();
        let slot = KeySlot::wrap(
            "repo1",
            &master,
            &Unlock::Passphrase("correct horse".into()),
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        let ok = slot
            .unwrap_master("repo1", &Unlock::Passphrase("correct horse".into()))
            .unwrap()
            .unwrap();
        assert_eq!(ok.as_bytes(), master.as_bytes());
        assert!(slot
            .unwrap_master("repo1", &Unlock::Passphrase("wrong".into()))
            .unwrap()
            .is_none());
        // The slot is bound to its repository.
        assert!(slot
            .unwrap_master("repo2", &Unlock::Passphrase("correct horse".into()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn key_file_slot_is_found_by_fingerprint() {
        let master = MasterSecret::generate();
        let kf = KeyFile::generate();
        let other = KeyFile::generate();
        let slot = KeySlot::wrap(
            "r",
            &master,
            &Unlock::KeyFile(kf.clone()),
            KdfParams::insecure_for_tests(),
        )
        .unwrap();
        assert!(slot.matches(&Unlock::KeyFile(kf.clone())));
        assert!(!slot.matches(&Unlock::KeyFile(other.clone())));
        assert!(!slot.matches(&Unlock::Passphrase("x".into())));
        let ok = slot
            .unwrap_master("r", &Unlock::KeyFile(kf))
            .unwrap()
            .unwrap();
        assert_eq!(ok.as_bytes(), master.as_bytes());
        assert!(slot
            .unwrap_master("r", &Unlock::KeyFile(other))
            .unwrap()
            .is_none());
    }
}
