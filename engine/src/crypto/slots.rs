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

use super::{KeyCommand, KeyFile, MasterSecret, KEY_LEN};
use crate::error::{Error, Result};
use crate::store::Timestamp;

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
    /// An external key manager: a random slot secret wrapped by `wrap_command`, opened by
    /// `unwrap_command` (see [`super::command`]).
    Command {
        /// The command that wrapped the slot secret (run again only when the operator names
        /// it on the command line or in `repo.wrap_command`).
        wrap_command: String,
        /// The command that opens it (informational: only `repo.unwrap_command` runs).
        unwrap_command: String,
        /// The wrapped slot secret (the wrap command's output), base64.
        blob: String,
    },
}

impl SlotKind {
    /// `passphrase`, `key-file` or `command`.
    pub fn name(&self) -> &'static str {
        match self {
            SlotKind::Passphrase { .. } => "passphrase",
            SlotKind::KeyFile { .. } => "key-file",
            SlotKind::Command { .. } => "command",
        }
    }
}

/// One wrapped copy of the keyring key (the master secret until the first rotation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeySlot {
    /// Random slot id (hex), bound in the AAD.
    pub id: String,
    /// How to unlock it.
    #[serde(flatten)]
    pub kind: SlotKind,
    /// XChaCha20 nonce, hex.
    pub nonce: String,
    /// Wrapped keyring key with its tag, hex.
    pub wrapped: String,
    /// Creation time (absent in slots made before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
}

/// What the operator gave us to unlock the repository.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// A passphrase (from `PGCAIRN_PASSPHRASE` or `passphrase_file`).
    Passphrase(String),
    /// A key file's secret.
    KeyFile(KeyFile),
    /// `repo.unwrap_command`: opens a command slot's blob.
    Command(KeyCommand),
}

impl Drop for Unlock {
    fn drop(&mut self) {
        if let Unlock::Passphrase(p) = self {
            p.zeroize();
        }
    }
}

/// A slot's key-encryption key and what the slot records about it: everything needed to
/// (re)wrap the keyring key for one slot.
#[derive(Clone)]
pub struct SlotKey {
    kind: SlotKind,
    kek: [u8; KEY_LEN],
}

impl Drop for SlotKey {
    fn drop(&mut self) {
        self.kek.zeroize();
    }
}

impl std::fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotKey({})", self.kind.name())
    }
}

impl SlotKey {
    /// A new passphrase slot's key (argon2id with fresh salt in `kdf`).
    pub fn passphrase(passphrase: &str, kdf: KdfParams) -> Result<Self> {
        let kek = kdf.kek(passphrase)?;
        Ok(SlotKey {
            kind: SlotKind::Passphrase { kdf },
            kek,
        })
    }

    /// A key file slot's key.
    pub fn key_file(k: &KeyFile) -> Self {
        SlotKey {
            kind: SlotKind::KeyFile {
                fingerprint: k.fingerprint(),
            },
            kek: k.kek(),
        }
    }

    /// A command slot's key: a fresh random slot secret, wrapped by `wrap` (run now).
    pub fn command(wrap: &KeyCommand, unwrap_command: &str) -> Result<Self> {
        use base64::Engine as _;
        let mut secret = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let blob = wrap.wrap(&secret);
        let kek = command_kek(&secret);
        secret.zeroize();
        Ok(SlotKey {
            kind: SlotKind::Command {
                wrap_command: wrap.command.clone(),
                unwrap_command: unwrap_command.to_string(),
                blob: base64::engine::general_purpose::STANDARD.encode(blob?),
            },
            kek,
        })
    }

    /// The key for an existing slot from what the operator gave: `Ok(None)` when `unlock` is
    /// not of the slot's kind (or, for key files, not its key). Runs argon2id or the unwrap
    /// command.
    pub fn for_slot(slot: &KeySlot, unlock: &Unlock) -> Result<Option<Self>> {
        let kek = match (&slot.kind, unlock) {
            (SlotKind::Passphrase { kdf }, Unlock::Passphrase(p)) => kdf.kek(p)?,
            (SlotKind::KeyFile { fingerprint }, Unlock::KeyFile(k)) => {
                if *fingerprint != k.fingerprint() {
                    return Ok(None);
                }
                k.kek()
            }
            (SlotKind::Command { blob, .. }, Unlock::Command(cmd)) => {
                use base64::Engine as _;
                let blob = base64::engine::general_purpose::STANDARD
                    .decode(blob)
                    .map_err(|_| {
                        Error::Key(format!(
                            "key slot {} has a blob that is not base64",
                            slot.id
                        ))
                    })?;
                let mut secret = cmd.unwrap(&blob)?;
                let kek = command_kek(&secret);
                secret.zeroize();
                kek
            }
            _ => return Ok(None),
        };
        Ok(Some(SlotKey {
            kind: slot.kind.clone(),
            kek,
        }))
    }

    /// Checks that `unwrap` opens this command slot key's blob (run once at `key add`, so a
    /// slot that could never be opened is not added).
    pub fn check_unwrap(&self, unwrap: &KeyCommand) -> Result<()> {
        match self.probe_unwrap(unwrap) {
            UnwrapProbe::Opens => Ok(()),
            UnwrapProbe::CannotRun(e) => Err(Error::Key(format!("{e}: the slot was not added"))),
            UnwrapProbe::Wrong(_) => Err(Error::Key(format!(
                "unwrap_command `{}` does not give back what the wrap command wrapped: the slot was not added",
                unwrap.command
            ))),
        }
    }

    /// Runs `unwrap` on this command slot key's blob, telling a key it gives back from one
    /// it gives back wrong from a command that cannot run here (a rotation on a host that may
    /// wrap, with a public key, but not unwrap).
    pub fn probe_unwrap(&self, unwrap: &KeyCommand) -> UnwrapProbe {
        use base64::Engine as _;
        let SlotKind::Command { blob, .. } = &self.kind else {
            return UnwrapProbe::CannotRun("not a command slot".into());
        };
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(blob) else {
            return UnwrapProbe::Wrong("the wrapped blob is not base64".into());
        };
        match unwrap.unwrap_ran(&blob) {
            // A command that failed, or printed no slot secret (an error on stdout, a wrapper
            // ending in `|| true`): it may only work on another host.
            Err(e) | Ok(Err(e)) => UnwrapProbe::CannotRun(e.to_string()),
            Ok(Ok(mut secret)) => {
                let kek = command_kek(&secret);
                secret.zeroize();
                if crate::codec::constant_time_eq(&kek, &self.kek) {
                    UnwrapProbe::Opens
                } else {
                    UnwrapProbe::Wrong(format!(
                        "unwrap_command `{}` gives back another secret than the wrap command wrapped",
                        unwrap.command
                    ))
                }
            }
        }
    }

    /// The slot kind this key makes.
    pub fn kind(&self) -> &SlotKind {
        &self.kind
    }
}

/// What running a command slot's unwrap command said about a freshly wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnwrapProbe {
    /// It gives the key back.
    Opens,
    /// It ran and gave back another well-formed secret: the slot could never be opened.
    Wrong(String),
    /// It could not run here (exit status, timeout) or printed no secret: nothing is known.
    CannotRun(String),
}

fn command_kek(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    blake3::derive_key("pgcairn 2026-12 command slot kek v1", secret)
}

/// The associated data of a slot: its repository, its id and the key epoch whose keyring
/// key it wraps. Epoch 1 keeps the form slots had before rotation existed. Binding the epoch
/// means a slot cannot be replayed from an older config into a newer one: whoever does not
/// hold a slot's own secret cannot make it claim another epoch.
fn aad(repo_id: &str, slot_id: &str, epoch: u32) -> Vec<u8> {
    if epoch <= 1 {
        format!("pgcairn key slot|{repo_id}|{slot_id}").into_bytes()
    } else {
        format!("pgcairn key slot|{repo_id}|{slot_id}|epoch {epoch}").into_bytes()
    }
}

impl KeySlot {
    /// Wraps `master` (epoch 1) for `unlock` in a new slot.
    pub fn wrap(
        repo_id: &str,
        master: &MasterSecret,
        unlock: &Unlock,
        kdf: KdfParams,
    ) -> Result<Self> {
        let key = match unlock {
            Unlock::Passphrase(p) => SlotKey::passphrase(p, kdf)?,
            Unlock::KeyFile(k) => SlotKey::key_file(k),
            Unlock::Command(_) => {
                return Err(Error::Key(
                    "a command slot needs a wrap command: add it with `pgcairn key add --wrap-command CMD --unwrap-command CMD`".into(),
                ))
            }
        };
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Ok(Self::seal(
            repo_id,
            &hex::encode(id),
            1,
            master,
            &key,
            Some(Timestamp::now()),
        ))
    }

    /// A new slot with a fresh id wrapping the keyring key `secret` of `epoch`.
    pub fn new_slot(repo_id: &str, epoch: u32, secret: &MasterSecret, key: &SlotKey) -> Self {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Self::seal(
            repo_id,
            &hex::encode(id),
            epoch,
            secret,
            key,
            Some(Timestamp::now()),
        )
    }

    /// This slot (same id and creation time) wrapping another keyring key, or with a new key.
    pub fn rewrapped(
        &self,
        repo_id: &str,
        epoch: u32,
        secret: &MasterSecret,
        key: &SlotKey,
    ) -> Self {
        Self::seal(repo_id, &self.id, epoch, secret, key, self.created_at)
    }

    fn seal(
        repo_id: &str,
        id: &str,
        epoch: u32,
        secret: &MasterSecret,
        key: &SlotKey,
        created_at: Option<Timestamp>,
    ) -> Self {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let wrapped = XChaCha20Poly1305::new((&key.kek).into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad(repo_id, id, epoch),
                },
            )
            .expect("in-memory encryption cannot fail");
        KeySlot {
            id: id.to_string(),
            kind: key.kind.clone(),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
            created_at,
        }
    }

    /// True if this slot is of the kind `unlock` can open (and, for key files, its slot).
    pub fn matches(&self, unlock: &Unlock) -> bool {
        match (&self.kind, unlock) {
            (SlotKind::Passphrase { .. }, Unlock::Passphrase(_)) => true,
            (SlotKind::KeyFile { fingerprint }, Unlock::KeyFile(k)) => {
                *fingerprint == k.fingerprint()
            }
            (SlotKind::Command { .. }, Unlock::Command(_)) => true,
            _ => false,
        }
    }

    /// Unwraps the keyring key of `epoch` with a slot key; `None` when it is not this slot's.
    pub fn open(&self, repo_id: &str, epoch: u32, key: &SlotKey) -> Result<Option<MasterSecret>> {
        let nonce = hex::decode(&self.nonce).ok().filter(|n| n.len() == 24);
        let wrapped = hex::decode(&self.wrapped).ok();
        let (Some(nonce), Some(wrapped)) = (nonce, wrapped) else {
            return Err(Error::Key(format!(
                "key slot {} is malformed (nonce or wrapped key is not hex)",
                self.id
            )));
        };
        let Ok(mut plain) = XChaCha20Poly1305::new((&key.kek).into()).decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &wrapped,
                aad: &aad(repo_id, &self.id, epoch),
            },
        ) else {
            return Ok(None);
        };
        let bytes: Option<[u8; KEY_LEN]> = plain.as_slice().try_into().ok();
        plain.zeroize();
        Ok(bytes.map(MasterSecret::from_bytes))
    }

    /// Unwraps the master secret of a never-rotated repository (epoch 1).
    pub fn unwrap_master(&self, repo_id: &str, unlock: &Unlock) -> Result<Option<MasterSecret>> {
        match SlotKey::for_slot(self, unlock)? {
            Some(key) => self.open(repo_id, 1, &key),
            None => Ok(None),
        }
    }

    /// A short public fingerprint of the slot: the key file's, or a hash of the
    /// passphrase salt or of the command slot's blob.
    pub fn fingerprint(&self) -> String {
        match &self.kind {
            SlotKind::KeyFile { fingerprint } => fingerprint.clone(),
            SlotKind::Passphrase { kdf } => {
                hex::encode(&blake3::hash(kdf.salt.as_bytes()).as_bytes()[..8])
            }
            SlotKind::Command { blob, .. } => {
                hex::encode(&blake3::hash(blob.as_bytes()).as_bytes()[..8])
            }
        }
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
