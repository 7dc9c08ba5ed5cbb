//! The repository config object and the cluster record.

use serde::{Deserialize, Serialize};

use crate::crypto::keyring::{config_mac, SealedKeyring};
use crate::crypto::{KdfParams, KeySlot, Keyring, MasterSecret, SlotKey, Unlock};
use crate::error::{Error, Result};

/// The repository format this build writes and reads.
///
/// Format 3 authenticates every catalog object and binds it to its name and kind (sealed WAL
/// records, cluster records, pins, restore points, gc state and catalog heads; index segments
/// named by their content id; pack trailers bound to their blocks: see [`crate::store`]).
/// Formats 1 and 2 (plaintext catalog objects) are **not readable** by this build: they
/// only ever existed in tests, and are refused with a clear error rather than half-read.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format this build reads.
pub const OLDEST_READABLE_FORMAT: u32 = 3;

/// How objects are protected.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// XChaCha20-Poly1305 with keys wrapped in key slots.
    #[serde(rename = "xchacha20poly1305")]
    XChaCha20Poly1305,
    /// No encryption (explicit `--no-encryption`); objects still carry keyed checksums.
    None,
}

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Format version; a newer format is refused with a clear error.
    pub format: u32,
    /// Random id, bound into every object's authenticated data.
    pub repo_id: String,
    /// Creation time.
    pub created_at: crate::store::Timestamp,
    /// Protection.
    pub encryption: Encryption,
    /// The master secret in clear, only for unencrypted repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_master: Option<String>,
    /// Wrapped copies of the master secret.
    #[serde(default)]
    pub key_slots: Vec<KeySlot>,
    /// The newest key epoch: new objects are sealed under it, and the key slots wrap its
    /// keyring key (see [`crate::crypto::keyring`]).
    pub data_key_version: u32,
    /// zstd level used for WAL objects.
    pub wal_compress_level: i32,
    /// Every epoch's material, sealed under the keyring key; absent until the first rotation
    /// (epoch 1's material is then the master secret the slots wrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<SealedKeyring>,
    /// Incremented by every change of the config; authenticated by `mac`, and remembered
    /// by each host (see `repo::keys`), so a config replaced by an older one is detected.
    /// 0 in configs written before it existed.
    #[serde(default)]
    pub generation: u64,
    /// Keyed BLAKE3 of this config (with `mac` absent) under a key derived from the keyring
    /// key: only a holder of a current key can change the config undetected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A config opened with one of its slots.
#[derive(Debug)]
pub struct Unlocked {
    /// The keyring key of the newest epoch (the master secret before any rotation).
    pub secret: MasterSecret,
    /// Every epoch's material.
    pub keyring: Keyring,
    /// The slot that opened it.
    pub slot_id: String,
    /// That slot's key (reused to rewrap the slot at rotation).
    pub slot_key: Option<SlotKey>,
}

impl RepoConfig {
    /// A config for a new repository.
    pub fn new(
        master: &MasterSecret,
        unlock: Option<&Unlock>,
        kdf: KdfParams,
        wal_compress_level: i32,
    ) -> Result<Self> {
        use rand::RngCore;
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let repo_id = hex::encode(id);
        let created_at = crate::store::Timestamp::now();
        let (encryption, plain_master, key_slots) = match unlock {
            Some(u) => (
                Encryption::XChaCha20Poly1305,
                None,
                vec![KeySlot::wrap(&repo_id, master, u, kdf)?],
            ),
            None => (
                Encryption::None,
                Some(hex::encode(master.as_bytes())),
                vec![],
            ),
        };
        Ok(RepoConfig {
            format: FORMAT_VERSION,
            repo_id,
            created_at,
            encryption,
            plain_master,
            key_slots,
            data_key_version: 1,
            wal_compress_level,
            keyring: None,
            generation: 0,
            mac: None,
        })
    }

    /// The bytes the MAC covers: this config without its MAC.
    fn mac_body(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.mac = None;
        serde_json::to_vec(&c).expect("config serialises")
    }

    /// Bumps the generation and authenticates the config under `secret` (the keyring key of
    /// its newest epoch).
    pub fn seal_for_write(&mut self, secret: &MasterSecret) {
        self.generation += 1;
        self.mac = None;
        if self.encryption == Encryption::XChaCha20Poly1305 {
            self.mac = Some(config_mac(secret, &self.mac_body()));
        }
    }

    /// Checks the MAC (configs from before it existed, generation 0, have none).
    fn check_mac(&self, secret: &MasterSecret) -> Result<()> {
        match &self.mac {
            None if self.generation == 0 => Ok(()),
            None => Err(Error::Key(format!(
                "the repository config (generation {}) carries no authentication: it was altered by someone without                  the repository key; do not write to this repository until you have restored its config",
                self.generation
            ))),
            Some(m) => {
                let expected = config_mac(secret, &self.mac_body());
                if crate::codec::constant_time_eq(expected.as_bytes(), m.as_bytes()) {
                    Ok(())
                } else {
                    Err(Error::Key(format!(
                        "the repository config (generation {}) fails authentication: it was altered by someone without                          the repository key; do not write to this repository until you have restored its config",
                        self.generation
                    )))
                }
            }
        }
    }

    /// Opens the config with what the operator configured: the keyring key, the keyring and
    /// the slot used. Checks the config's authentication.
    pub fn unlock_full(&self, unlock: Option<&Unlock>) -> Result<Unlocked> {
        if self.encryption == Encryption::None || unlock.is_none() {
            let master = self.unlock(unlock)?;
            return Ok(Unlocked {
                keyring: Keyring::initial(&master),
                secret: master,
                slot_id: String::new(),
                slot_key: None,
            });
        }
        self.check_format()?;
        let u = unlock.expect("checked above");
        let epoch = self.data_key_version;
        let mut last_err = None;
        for slot in self.key_slots.iter().filter(|s| s.matches(u)) {
            let key = match SlotKey::for_slot(slot, u) {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                // A command that fails for one slot (another key manager's blob) may open
                // the next; a timeout or failure is reported if none opens.
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            if let Some(secret) = slot.open(&self.repo_id, epoch, &key)? {
                let keyring = match &self.keyring {
                    Some(sealed) => Keyring::open(sealed, &self.repo_id, epoch, &secret)?,
                    None if epoch == 1 => Keyring::initial(&secret),
                    None => {
                        return Err(Error::corrupt(
                            "config",
                            format!("key epoch {epoch} but no sealed keyring"),
                        ))
                    }
                };
                self.check_mac(&secret)?;
                return Ok(Unlocked {
                    secret,
                    keyring,
                    slot_id: slot.id.clone(),
                    slot_key: Some(key),
                });
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        Err(self.no_slot_error(u))
    }

    fn check_format(&self) -> Result<()> {
        if self.format < OLDEST_READABLE_FORMAT {
            return Err(Error::Config(format!(
                "repository format {} was written by an earlier pgcairn and is not readable by this one \
                 (format {FORMAT_VERSION} authenticates every catalog object; earlier formats never existed outside tests): \
                 create a new repository with `pgcairn init` and take a new backup",
                self.format
            )));
        }
        if self.format > FORMAT_VERSION {
            return Err(Error::Config(format!(
                "repository format {} is newer than this pgcairn understands ({FORMAT_VERSION}); upgrade pgcairn",
                self.format
            )));
        }
        Ok(())
    }

    fn no_slot_error(&self, u: &Unlock) -> Error {
        Error::Key(match u {
            Unlock::Passphrase(_) => "wrong passphrase: it does not unlock any key slot of this repository".into(),
            Unlock::KeyFile(k) => format!(
                "key file (fingerprint {}) does not unlock this repository (no key slot for it: it was never added, or it was removed                  with `pgcairn key remove`); check repo.key_file",
                k.fingerprint()
            ),
            Unlock::Command(c) => format!(
                "repo.unwrap_command `{}` does not unlock any command key slot of this repository; see `pgcairn key list`",
                c.command
            ),
        })
    }

    /// Recovers the keyring key (the master secret before any rotation) with what the
    /// operator configured.
    pub fn unlock(&self, unlock: Option<&Unlock>) -> Result<MasterSecret> {
        self.check_format()?;
        match (self.encryption, unlock) {
            (Encryption::None, None) => {
                let raw = self.plain_master.as_deref().and_then(|h| hex::decode(h).ok());
                let bytes: [u8; 32] = raw
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| Error::corrupt("config", "unencrypted repository without a valid plain_master"))?;
                Ok(MasterSecret::from_bytes(bytes))
            }
            (Encryption::None, Some(_)) => Err(Error::Key(
                "the repository is unencrypted but a key file or passphrase is configured; refusing to continue \
                 (if you created it with --no-encryption, remove repo.key_file / passphrase settings; \
                 otherwise the repository config may have been replaced)"
                    .into(),
            )),
            (Encryption::XChaCha20Poly1305, None) => Err(Error::Key(
                "the repository is encrypted: set repo.key_file, repo.passphrase_file or PGCAIRN_PASSPHRASE".into(),
            )),
            (Encryption::XChaCha20Poly1305, Some(u)) => Ok(self.unlock_full(Some(u))?.secret),
        }
    }
}

/// `clusters/<name>/cluster.json`: binds a cluster name to one PostgreSQL system.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    /// Cluster name.
    pub name: String,
    /// `pg_control` system identifier (as a decimal string: it does not fit JSON numbers safely).
    pub system_identifier: String,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// PostgreSQL major version.
    pub pg_major: u32,
    /// When the first push bound it.
    pub bound_at: crate::store::Timestamp,
}

impl ClusterRecord {
    /// Why WAL or a backup of a server of PostgreSQL `pg_major` does not belong under this
    /// cluster name, if it does not: a cluster name holds one major version. `pg_upgrade`
    /// makes a new system (new system identifier, new WAL history) that must be archived
    /// under a new name; the old name keeps the old backups and WAL for restores.
    pub fn other_major(&self, pg_major: u32) -> Option<String> {
        (self.pg_major != pg_major).then(|| {
            format!(
                "cluster {:?} in this repository holds PostgreSQL {} (system {}, bound {}), this server is \
                 PostgreSQL {pg_major}: a cluster name keeps one major version. After pg_upgrade, archive and \
                 back up the upgraded server under a new cluster name, such as \"{}-pg{pg_major}\" ([cluster] \
                 name, and --cluster in archive_command); the old name keeps its backups and WAL for restores",
                self.name, self.pg_major, self.system_identifier, self.bound_at, self.name
            )
        })
    }
}
