//! The repository config object and the cluster record.

use serde::{Deserialize, Serialize};

use crate::crypto::{KdfParams, KeySlot, MasterSecret, Unlock};
use crate::error::{Error, Result};

/// Repository format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

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
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Protection.
    pub encryption: Encryption,
    /// The master secret in clear, only for unencrypted repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_master: Option<String>,
    /// Wrapped copies of the master secret.
    #[serde(default)]
    pub key_slots: Vec<KeySlot>,
    /// Current data key version.
    pub data_key_version: u32,
    /// zstd level used for WAL objects.
    pub wal_compress_level: i32,
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
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 formatting");
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
        })
    }

    /// Recovers the master secret with what the operator configured.
    pub fn unlock(&self, unlock: Option<&Unlock>) -> Result<MasterSecret> {
        if self.format > FORMAT_VERSION {
            return Err(Error::Config(format!(
                "repository format {} is newer than this pgcairn understands ({FORMAT_VERSION}); upgrade pgcairn",
                self.format
            )));
        }
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
            (Encryption::XChaCha20Poly1305, Some(u)) => {
                let candidates: Vec<&KeySlot> = self.key_slots.iter().filter(|s| s.matches(u)).collect();
                for slot in &candidates {
                    if let Some(m) = slot.unwrap_master(&self.repo_id, u)? {
                        return Ok(m);
                    }
                }
                Err(Error::Key(match u {
                    Unlock::Passphrase(_) => "wrong passphrase: it does not unlock any key slot of this repository".into(),
                    Unlock::KeyFile(k) => format!(
                        "key file (fingerprint {}) does not unlock this repository; check repo.key_file points at the key created by `pgcairn init`",
                        k.fingerprint()
                    ),
                }))
            }
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
    pub bound_at: String,
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
