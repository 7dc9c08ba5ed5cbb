//! The repository: layout, config, creation and opening.
//!
//! # On-storage format (version 3)
//!
//! ```text
//! config                                       plaintext JSON (RepoConfig) with a MAC: format, repo id,
//!                                              encryption, key slots; CAS-updated when keys change
//! clusters/<cluster>/head                      sealed catalog document (CatalogHead), CAS-updated: what
//!                                              the cluster must hold (see `store::head`)
//! clusters/<cluster>/cluster.json              sealed catalog document (ClusterRecord), create-only: binds
//!                                              the cluster name to a PostgreSQL system identifier
//! clusters/<cluster>/wal/<TLI>/<file>          sealed catalog document (WalPointer), create-only: the
//!                                              commit record of one archived WAL file
//! clusters/<cluster>/waldata/<TLI>/<file>.<id> sealed WAL contents (codec kind Wal; context
//!                                              "<cluster>/<file>"), named by keyed content id
//! clusters/<cluster>/backups/<id>/manifest     sealed manifest (see `store::manifest`)
//! clusters/<cluster>/pins/<id>                 sealed catalog document (Pin)
//! clusters/<cluster>/restore-points/<hex name> sealed catalog document (RestorePoint)
//! packs/<2 hex>/<pack id>                      pack objects (see `pack`), named by BLAKE3 of their bytes
//! index/<id>                                   index segments (see `index`), named by keyed content id
//! gc/state                                     sealed catalog document (GcState), CAS-updated by gc
//! leases/...                                   sealed catalog documents (Lease), CAS-updated (see `lease`)
//! ```
//!
//! A catalog document is sealed with its kind and exact key as authenticated context
//! ([`crate::store::sealed`]): renamed, copied or forged, it fails authentication, naming the
//! object. Formats 1 and 2 (plaintext catalog objects, index segments named by the hash of
//! their bytes) are not readable: `config::check_format` refuses them with a clear error.
//!
//! Writes go data first, pointer (or index, then manifest) last, always create-only: a crash
//! at any point leaves unreferenced objects (garbage), never a pointer to missing data.
//! Reading a WAL file costs two GETs (pointer, then data) and no LIST; `info` lists pointers.

pub mod config;
pub mod follow;
pub mod keys;
pub mod layout;

use std::sync::Arc;

use bytes::Bytes;

pub use config::{ClusterRecord, Encryption, RepoConfig};

use crate::codec::Codec;
use crate::crypto::{KdfParams, MasterSecret, RepoKeys, SlotKey, Unlock};
use crate::error::{Error, Result};
use crate::storage::{CreateOutcome, Storage, StorageError};

/// An open repository: storage, its config and the codec built from the unlocked keys.
#[derive(Debug, Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    config: RepoConfig,
    codec: Codec,
    slot_id: String,
    state_dir: Option<std::path::PathBuf>,
    /// Set by [`Repository::into_dry_run`]: the storage is that wrapper.
    dry_run: Option<Arc<crate::store::dry_run::DryRun>>,
}

/// Options for `init`.
#[derive(Debug)]
pub struct InitOptions {
    /// How the master secret is wrapped; `None` creates an unencrypted repository.
    pub unlock: Option<Unlock>,
    /// argon2id parameters for a passphrase slot.
    pub kdf: KdfParams,
    /// zstd level for WAL objects.
    pub wal_compress_level: i32,
}

impl Repository {
    /// Creates a repository in empty storage; refuses storage that holds anything.
    pub async fn init(storage: Arc<dyn Storage>, opts: InitOptions) -> Result<RepoConfig> {
        let existing = storage.list("").await?;
        if !existing.is_empty() {
            let what = if existing.iter().any(|o| o.key.as_str() == layout::CONFIG) {
                "a pgcairn repository already exists there"
            } else {
                "it is not empty"
            };
            return Err(Error::Config(format!(
                "refusing to create a repository at {}: {what} ({} objects). Choose an empty location.",
                storage.describe(),
                existing.len()
            )));
        }
        let master = MasterSecret::generate();
        let mut config = RepoConfig::new(
            &master,
            opts.unlock.as_ref(),
            opts.kdf,
            opts.wal_compress_level,
        )?;
        config.seal_for_write(&master);
        let body = Bytes::from(serde_json::to_vec_pretty(&config).expect("config serialises"));
        match storage.put_create(&layout::config(), body).await? {
            CreateOutcome::Created => Ok(config),
            CreateOutcome::AlreadyExists => Err(Error::Config(format!(
                "refusing to create a repository at {}: another init created one at the same moment",
                storage.describe()
            ))),
        }
    }

    /// Opens a repository and unlocks its keys (no local generation cache: see
    /// [`Repository::open_with`]).
    pub async fn open(storage: Arc<dyn Storage>, unlock: Option<&Unlock>) -> Result<Self> {
        Self::open_with(storage, unlock, None).await
    }

    /// Opens a repository and unlocks its keys; with a state directory, refuses a config
    /// older than one this host has seen (see [`keys::GenerationCache`]) and records this one.
    pub async fn open_with(
        storage: Arc<dyn Storage>,
        unlock: Option<&Unlock>,
        state_dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        let raw = match storage.get(&layout::config()).await {
            Ok(raw) => raw,
            Err(StorageError::NotFound { .. }) => {
                return Err(Error::Config(format!(
                    "no pgcairn repository at {} (object `config` missing): check repo.url, or create one with `pgcairn init`",
                    storage.describe()
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let config = parse_config(&storage, &raw)?;
        let (config, unlocked) = keys::unlock_blocking(config, unlock.cloned()).await?;
        if let Some(dir) = state_dir {
            keys::GenerationCache::new(dir, &config.repo_id)
                .check_and_record(&config, &unlocked.slot_id)?;
        }
        let encrypted = config.encryption == Encryption::XChaCha20Poly1305;
        let codec = Codec::new(
            &config.repo_id,
            RepoKeys::from_keyring(&unlocked.keyring),
            encrypted,
            config.data_key_version,
        );
        // A key rotation while this process runs is followed (see `follow`).
        let storage: Arc<dyn Storage> = if encrypted {
            let follower = follow::Follower::new(
                storage.clone(),
                unlock.cloned(),
                state_dir.map(|d| d.to_path_buf()),
                &config,
                codec.clone(),
            );
            let follower = Arc::new(follower);
            follower.watch(follow::LOOK_TICK);
            Arc::new(follow::FollowKeys::new(storage, follower))
        } else {
            storage
        };
        Ok(Repository {
            storage,
            config,
            codec,
            slot_id: unlocked.slot_id.clone(),
            state_dir: state_dir.map(|d| d.to_path_buf()),
            dry_run: None,
        })
    }

    /// Adds a key slot (another passphrase or key file) with compare-and-swap on the config.
    pub async fn add_key_slot(
        &mut self,
        current: Option<&Unlock>,
        new: &Unlock,
        kdf: KdfParams,
    ) -> Result<()> {
        let key = match new {
            Unlock::Passphrase(p) => SlotKey::passphrase(p, kdf)?,
            Unlock::KeyFile(k) => SlotKey::key_file(k),
            Unlock::Command(_) => {
                return Err(Error::Key(
                    "a command slot is added with its wrap command (keys::KeyChange::Add)".into(),
                ))
            }
        };
        let outcome = keys::change(&self.storage, current, None, keys::KeyChange::Add(key)).await?;
        self.config = outcome.config;
        Ok(())
    }

    /// The key slot this repository was opened with (empty for unencrypted repositories).
    pub fn unlocked_slot(&self) -> &str {
        &self.slot_id
    }

    /// The same repository with this host's state directory (where the generations of the
    /// config and catalog heads seen are kept).
    pub fn with_state_dir(mut self, dir: &std::path::Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// The same repository over other storage (a wrapper of [`Repository::storage`], such as
    /// [`crate::store::append_only::AppendOnly`]: reads through it still follow key
    /// rotations, see [`follow`]).
    pub fn with_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// The same repository for `--dry-run`: its storage reads but records writes and deletes
    /// instead of doing them ([`crate::store::dry_run`]); the log is [`Repository::dry_run`].
    pub fn into_dry_run(mut self) -> Self {
        let dry = Arc::new(crate::store::dry_run::DryRun::new(self.storage.clone()));
        self.storage = dry.clone();
        self.dry_run = Some(dry);
        self
    }

    /// The dry-run wrapper under this repository, if it is one ([`Repository::into_dry_run`]).
    pub fn dry_run(&self) -> Option<&crate::store::dry_run::DryRun> {
        self.dry_run.as_deref()
    }

    /// True when nothing this repository is asked to write is written.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run.is_some()
    }

    /// This host's state directory (`repo.state_dir`), if any.
    pub fn state_dir(&self) -> Option<&std::path::Path> {
        self.state_dir.as_deref()
    }

    /// This host's record of the generations seen, when a state directory is configured.
    pub fn generation_cache(&self) -> Option<keys::GenerationCache> {
        self.state_dir.as_deref().map(|d| {
            keys::GenerationCache::new(d, &self.config.repo_id).read_only(self.is_dry_run())
        })
    }

    /// The storage.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }
}

/// Parses the config object.
pub(crate) fn parse_config(storage: &Arc<dyn Storage>, raw: &[u8]) -> Result<RepoConfig> {
    serde_json::from_slice(raw).map_err(|e| {
        Error::corrupt(
            format!("{}/config", storage.describe()),
            format!("not a valid repository config: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyFile;
    use crate::storage::MemoryStorage;

    fn opts(unlock: Option<Unlock>) -> InitOptions {
        InitOptions {
            unlock,
            kdf: KdfParams::insecure_for_tests(),
            wal_compress_level: 1,
        }
    }

    #[tokio::test]
    async fn init_refuses_an_existing_repository() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        Repository::init(s.clone(), opts(Some(Unlock::Passphrase("pw".into()))))
            .await
            .unwrap();
        let err = Repository::init(s, opts(None))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[tokio::test]
    async fn open_needs_the_right_key_and_refuses_downgrade() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let kf = KeyFile::generate();
        Repository::init(s.clone(), opts(Some(Unlock::KeyFile(kf.clone()))))
            .await
            .unwrap();
        let repo = Repository::open(s.clone(), Some(&Unlock::KeyFile(kf.clone())))
            .await
            .unwrap();
        assert_eq!(repo.config().encryption, Encryption::XChaCha20Poly1305);
        let wrong = Repository::open(s.clone(), Some(&Unlock::KeyFile(KeyFile::generate())))
            .await
            .unwrap_err();
        assert!(matches!(wrong, Error::Key(_)), "{wrong}");
        let none = Repository::open(s.clone(), None).await.unwrap_err();
        assert!(matches!(none, Error::Key(_)), "{none}");

        let plain: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        Repository::init(plain.clone(), opts(None)).await.unwrap();
        let downgrade = Repository::open(plain.clone(), Some(&Unlock::KeyFile(kf)))
            .await
            .unwrap_err();
        assert!(downgrade.to_string().contains("unencrypted"), "{downgrade}");
        Repository::open(plain, None).await.unwrap();
    }

    #[tokio::test]
    async fn a_second_key_slot_opens_the_same_repository() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let kf = KeyFile::generate();
        Repository::init(s.clone(), opts(Some(Unlock::KeyFile(kf.clone()))))
            .await
            .unwrap();
        let mut repo = Repository::open(s.clone(), Some(&Unlock::KeyFile(kf.clone())))
            .await
            .unwrap();
        let pw = Unlock::Passphrase("second".into());
        repo.add_key_slot(
            Some(&Unlock::KeyFile(kf.clone())),
            &pw,
            KdfParams::insecure_for_tests(),
        )
        .await
        .unwrap();
        let by_pw = Repository::open(s.clone(), Some(&pw)).await.unwrap();
        assert_eq!(
            by_pw.codec().content_id(b"x"),
            repo.codec().content_id(b"x")
        );
    }
}
