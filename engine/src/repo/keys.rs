//! Key management: adding, removing and re-keying slots, rotating key epochs, and noticing a
//! config that was rolled back.
//!
//! # Every change is a compare-and-swap of an authenticated config
//!
//! A change reads `config` with its storage version, opens it with the operator's key,
//! checks its MAC, applies the change, increments `generation`, recomputes the MAC under the
//! (possibly new) keyring key and writes it back only if the object is still at the version
//! read. Two concurrent changes cannot both win; the loser is told to run again.
//!
//! # Rollback
//!
//! Whoever can write to the storage can put back an older config, for instance one that
//! still holds a slot removed because its key file leaked. The MAC does not stop that (the
//! old config was genuine), so each host remembers, per repository, the highest generation
//! and key epoch it has seen ([`GenerationCache`], a small JSON file under the state
//! directory, not secret) and refuses a config older than either: exit 2 with what to do.
//! Renumbering an old config needs its keyring key: a holder of a leaked key can do that for
//! the generation, but not for the key epoch, which each slot's wrapping binds, so a
//! rollback past a `key rotate` is always detected by a host that saw the rotation. A host
//! that never saw the repository before trusts the first config it reads.
//!
//! # Rotation
//!
//! `rotate` adds a key epoch with fresh random material and a fresh keyring key, and
//! rewraps every remaining slot for it. Rewrapping needs each slot's own key: the one this
//! invocation opened, key files and passphrases given in addition, and command slots whose
//! wrap command the operator confirms (a wrap command read from the repository is never run
//! on its own authority). A slot that cannot be rewrapped stops the rotation, naming it:
//! remove it first, or supply its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::config::{Encryption, RepoConfig, Unlocked};
use super::{layout, parse_config};
use crate::crypto::{
    KdfParams, KeyCommand, KeySlot, MasterSecret, SlotKey, SlotKind, Unlock, UnwrapProbe,
};
use crate::error::{Error, Result};
use crate::storage::{Storage, StorageError};
use crate::store::Timestamp;

/// Opens a config on the blocking pool (argon2id and unwrap commands take time).
pub(crate) async fn unlock_blocking(
    config: RepoConfig,
    unlock: Option<Unlock>,
) -> Result<(RepoConfig, Unlocked)> {
    tokio::task::spawn_blocking(move || {
        let u = config.unlock_full(unlock.as_ref())?;
        Ok((config, u))
    })
    .await
    .map_err(|e| Error::Key(format!("unlocking the repository panicked: {e}")))?
}

/// What this host remembers about one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    /// Highest config generation seen.
    pub generation: u64,
    /// Highest key epoch seen.
    pub key_epoch: u32,
    /// Slot id → when this host last unlocked with it (RFC 3339).
    #[serde(default)]
    pub slots_used: BTreeMap<String, String>,
    /// Catalog object → highest generation seen: each cluster's head under the cluster's
    /// name (see [`crate::store::head`]), the gc state under `gc/state` (cluster names
    /// cannot contain `/`).
    #[serde(default)]
    pub heads: BTreeMap<String, u64>,
}

/// The local record of the newest config seen, per repository: `<state_dir>/repo-<id>.json`.
#[derive(Debug, Clone)]
pub struct GenerationCache {
    path: PathBuf,
    /// A dry run checks against what was seen but records nothing: what it "wrote" is not
    /// in the repository, and recording it would make the next real run see a rollback.
    read_only: bool,
}

impl GenerationCache {
    /// The cache of repository `repo_id` under `state_dir`.
    pub fn new(state_dir: &Path, repo_id: &str) -> Self {
        GenerationCache {
            path: state_dir.join(format!("repo-{repo_id}.json")),
            read_only: false,
        }
    }

    /// The same cache, recording nothing when `read_only` (a dry run).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was recorded (nothing yet: defaults).
    pub fn read(&self) -> Seen {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Refuses a config older than the newest seen; records this one (and the slot used).
    /// A cache that cannot be written is a warning, never a failed archive-push.
    pub fn check_and_record(&self, config: &RepoConfig, slot_id: &str) -> Result<()> {
        let seen = self.read();
        if config.generation < seen.generation || config.data_key_version < seen.key_epoch {
            return Err(Error::Key(format!(
                "the repository config was rolled back: it is generation {} with key epoch {}, but this host has seen \
                 generation {} with key epoch {} (recorded in {}). Someone replaced it with an older copy, possibly to \
                 bring back a removed key slot. Do not write to this repository: restore the newest config (or run \
                 `pgcairn key rotate` again from a host that sees it); if you restored the whole repository from an \
                 old copy on purpose, delete {} and run again",
                config.generation,
                config.data_key_version,
                seen.generation,
                seen.key_epoch,
                self.path.display(),
                self.path.display()
            )));
        }
        let now = Timestamp::now();
        // A local cache: an unreadable time only means "record it again".
        let stale = |t: Option<&String>| {
            t.and_then(|t| t.parse::<Timestamp>().ok())
                .is_none_or(|t| (now - t).whole_minutes() >= 10)
        };
        let changed = config.generation != seen.generation
            || config.data_key_version != seen.key_epoch
            || (!slot_id.is_empty() && stale(seen.slots_used.get(slot_id)));
        if !changed {
            return Ok(());
        }
        let mut next = seen;
        next.generation = config.generation;
        next.key_epoch = config.data_key_version;
        next.slots_used
            .retain(|id, _| config.key_slots.iter().any(|s| &s.id == id));
        if !slot_id.is_empty() {
            next.slots_used.insert(slot_id.to_string(), now.to_string());
        }
        if let Err(e) = self.write(&next) {
            tracing::warn!(
                path = %self.path.display(),
                "cannot record the repository config generation ({e}): rollback of the config cannot be detected on this host; \
                 check repo.state_dir is writable by this user"
            );
        }
        Ok(())
    }

    /// The highest generation of catalog object `name` (a cluster's head: the cluster name;
    /// the gc state: `gc/state`) this host has seen (0: none).
    pub fn catalog_seen(&self, name: &str) -> u64 {
        self.read().heads.get(name).copied().unwrap_or(0)
    }

    /// Records that this host saw generation `generation` of catalog object `name` (never
    /// lowers what was recorded). A cache that cannot be written is a warning.
    pub fn record_catalog(&self, name: &str, generation: u64) {
        let mut seen = self.read();
        if seen.heads.get(name).is_some_and(|g| *g >= generation) {
            return;
        }
        seen.heads.insert(name.to_string(), generation);
        if let Err(e) = self.write(&seen) {
            tracing::warn!(
                path = %self.path.display(),
                "cannot record the catalog generation ({e}): its rollback cannot be detected on this host; \
                 check repo.state_dir is writable by this user"
            );
        }
    }

    fn write(&self, seen: &Seen) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let body = serde_json::to_vec_pretty(seen).expect("serialises");
        // 0644: a state directory shared by root and the postgres user stays readable to both.
        crate::private_fs::replace_with(
            &self.path,
            0o644,
            crate::private_fs::Durability::Durable,
            |mut f| std::io::Write::write_all(&mut f, &body),
        )
    }
}

/// One change of the key configuration.
#[derive(Debug)]
pub enum KeyChange {
    /// Adds a slot.
    Add(SlotKey),
    /// Removes a slot (by id or unique id prefix). Refuses the last slot, and without
    /// `force` the slot this invocation unlocked with.
    Remove {
        /// Slot id or unique prefix.
        id: String,
        /// Allow removing the slot used to unlock.
        force: bool,
    },
    /// New passphrase for a passphrase slot.
    Passwd {
        /// Slot id or unique prefix.
        id: String,
        /// The new passphrase.
        passphrase: String,
        /// argon2id parameters (fresh salt).
        kdf: KdfParams,
    },
    /// A new key epoch with fresh material and keyring key.
    Rotate(RotateInputs),
    /// Forget every key epoch older than the given one. Only a completed re-encryption
    /// can ask for it ([`NothingSealedBefore`] has no public constructor): dropping an epoch
    /// while anything is still sealed under it would make that object unreadable for good.
    DropBefore(NothingSealedBefore),
}

/// Proof that a scan of the whole repository ([`crate::reencrypt`]) found nothing sealed
/// under a key epoch older than `keep_from`; the only way to drop key epochs.
#[derive(Debug)]
pub struct NothingSealedBefore {
    pub(crate) keep_from: u32,
}

/// What a rotation may use to rewrap slots other than the one that unlocked.
#[derive(Debug, Default)]
pub struct RotateInputs {
    /// Further key files and passphrases (each opens its own slot).
    pub others: Vec<Unlock>,
    /// Wrap commands the operator confirms may run (matched against the slots' ones).
    pub trusted_wrap: Vec<KeyCommand>,
    /// Unwrap commands configured on this host (`repo.unwrap_command`): a rewrapped command
    /// slot whose stored unwrap command is one of them is unwrapped as a check. A command
    /// stored in the config is never run on its own authority.
    pub trusted_unwrap: Vec<KeyCommand>,
}

/// The result of a change.
#[derive(Debug)]
pub struct ChangeOutcome {
    /// The config now stored.
    pub config: RepoConfig,
    /// The slot that unlocked.
    pub used_slot: String,
    /// The slot added (Add) or changed (Passwd, Remove).
    pub slot: Option<String>,
}

/// Applies one change with compare-and-swap.
pub async fn change(
    storage: &Arc<dyn Storage>,
    unlock: Option<&Unlock>,
    state_dir: Option<&Path>,
    change: KeyChange,
) -> Result<ChangeOutcome> {
    let (raw, version) = match storage.get_versioned(&layout::config()).await {
        Ok(v) => v,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::Config(format!(
                "no pgcairn repository at {}: check repo.url",
                storage.describe()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let config = parse_config(storage, &raw)?;
    if config.encryption == Encryption::None {
        return Err(Error::Config(
            "the repository was created with --no-encryption: it has no keys to manage".into(),
        ));
    }
    let (config, unlocked) = unlock_blocking(config, unlock.cloned()).await?;
    let cache = state_dir.map(|d| GenerationCache::new(d, &config.repo_id));
    if let Some(c) = &cache {
        c.check_and_record(&config, &unlocked.slot_id)?;
    }
    let used = unlocked.slot_id.clone();
    let (config, slot) = tokio::task::spawn_blocking(move || apply(config, unlocked, change))
        .await
        .map_err(|e| Error::Key(format!("changing keys panicked: {e}")))??;
    let body = Bytes::from(serde_json::to_vec_pretty(&config).expect("config serialises"));
    storage
        .put_swap(&layout::config(), body, Some(&version))
        .await
        .map_err(|e| match e {
            StorageError::Precondition { .. } => Error::Conflict(
                "the repository config changed while this command ran (another key change?); nothing was changed: run the command again"
                    .into(),
            ),
            other => other.into(),
        })?;
    if let Some(c) = &cache {
        c.check_and_record(&config, &used)?;
    }
    Ok(ChangeOutcome {
        config,
        used_slot: used,
        slot,
    })
}

fn find_slot<'a>(config: &'a RepoConfig, id: &str) -> Result<&'a KeySlot> {
    let hits: Vec<&KeySlot> = config
        .key_slots
        .iter()
        .filter(|s| !id.is_empty() && s.id.starts_with(id))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::Config(format!(
            "no key slot {id:?} in this repository; see `pgcairn key list`"
        ))),
        _ => Err(Error::Config(format!(
            "key slot {id:?} is ambiguous ({} slots start with it); give more of its id",
            hits.len()
        ))),
    }
}

/// Applies a change to an opened config; returns the config to write.
fn apply(
    mut config: RepoConfig,
    unlocked: Unlocked,
    change: KeyChange,
) -> Result<(RepoConfig, Option<String>)> {
    let repo_id = config.repo_id.clone();
    let epoch = config.data_key_version;
    let mut secret = unlocked.secret.clone();
    let mut slot_changed = None;
    match change {
        KeyChange::Add(key) => {
            let slot = KeySlot::new_slot(&repo_id, epoch, &secret, &key);
            slot_changed = Some(slot.id.clone());
            config.key_slots.push(slot);
        }
        KeyChange::Remove { id, force } => {
            let slot = find_slot(&config, &id)?.id.clone();
            if config.key_slots.len() <= 1 {
                return Err(Error::Config(format!(
                    "refusing to remove key slot {slot}: it is the last one, and the repository could never be opened again. \
                     Add another key first (`pgcairn key add`)"
                )));
            }
            if slot == unlocked.slot_id && !force {
                return Err(Error::Config(format!(
                    "refusing to remove key slot {slot}: it is the one this command unlocked with. Unlock with another key, \
                     or pass --force if you are sure another key works"
                )));
            }
            config.key_slots.retain(|s| s.id != slot);
            slot_changed = Some(slot);
        }
        KeyChange::Passwd {
            id,
            passphrase,
            kdf,
        } => {
            let slot = find_slot(&config, &id)?.clone();
            if !matches!(slot.kind, SlotKind::Passphrase { .. }) {
                return Err(Error::Config(format!(
                    "key slot {} is a {} slot: `key passwd` changes passphrase slots only (add a new key and remove the old one instead)",
                    slot.id,
                    slot.kind.name()
                )));
            }
            let key = SlotKey::passphrase(&passphrase, kdf)?;
            let new = slot.rewrapped(&repo_id, epoch, &secret, &key);
            for s in config.key_slots.iter_mut() {
                if s.id == slot.id {
                    *s = new.clone();
                }
            }
            slot_changed = Some(slot.id);
        }
        KeyChange::Rotate(inputs) => {
            // Every slot's key first: nothing changes unless all remaining slots can be rewrapped.
            let mut keys: Vec<SlotKey> = Vec::with_capacity(config.key_slots.len());
            let mut missing = Vec::new();
            for slot in &config.key_slots {
                match slot_key_for_rotation(&config, slot, &unlocked, &inputs)? {
                    Some(k) => keys.push(k),
                    None => missing.push(describe_slot(slot)),
                }
            }
            if !missing.is_empty() {
                return Err(Error::Config(format!(
                    "cannot rotate: these key slots cannot be rewrapped for the new key epoch: {}. Give their key \
                     (--also-key-file PATH, --also-passphrase-file PATH) or confirm their wrap command (--wrap-command CMD), \
                     or remove them first with `pgcairn key remove SLOT`",
                    missing.join("; ")
                )));
            }
            let mut ring = unlocked.keyring.clone();
            let new_epoch = ring.rotate();
            secret = MasterSecret::generate();
            config.keyring = Some(ring.seal(&repo_id, new_epoch, &secret));
            config.key_slots = config
                .key_slots
                .iter()
                .zip(&keys)
                .map(|(s, k)| s.rewrapped(&repo_id, new_epoch, &secret, k))
                .collect();
            config.data_key_version = new_epoch;
            config.format = super::config::FORMAT_VERSION;
        }
        KeyChange::DropBefore(NothingSealedBefore { keep_from }) => {
            if keep_from > epoch {
                return Err(Error::Config(format!(
                    "cannot drop key epochs before {keep_from}: the newest is {epoch}"
                )));
            }
            let mut ring = unlocked.keyring.clone();
            ring.drop_before(keep_from);
            config.keyring = Some(ring.seal(&repo_id, epoch, &secret));
        }
    }
    config.seal_for_write(&secret);
    Ok((config, slot_changed))
}

fn describe_slot(slot: &KeySlot) -> String {
    match &slot.kind {
        SlotKind::KeyFile { fingerprint } => {
            format!("{} (key file, fingerprint {fingerprint})", slot.id)
        }
        SlotKind::Passphrase { .. } => format!("{} (passphrase)", slot.id),
        SlotKind::Command { wrap_command, .. } => {
            format!("{} (command, wrap command `{wrap_command}`)", slot.id)
        }
    }
}

fn slot_key_for_rotation(
    config: &RepoConfig,
    slot: &KeySlot,
    unlocked: &Unlocked,
    inputs: &RotateInputs,
) -> Result<Option<SlotKey>> {
    if slot.id == unlocked.slot_id {
        if let Some(k) = &unlocked.slot_key {
            return Ok(Some(k.clone()));
        }
    }
    match &slot.kind {
        SlotKind::Command {
            wrap_command,
            unwrap_command,
            ..
        } => {
            let Some(wrap) = inputs
                .trusted_wrap
                .iter()
                .find(|c| c.command == *wrap_command)
            else {
                return Ok(None);
            };
            let key = SlotKey::command(wrap, unwrap_command)?;
            // Unwrapped here where it can be: a wrap command that no longer matches its
            // unwrap command (another KMS key, a changed recipient) would lock the slot out.
            // Where the unwrap command cannot run (only the database host holds the private
            // key), nothing is known: said, and the rotation goes on.
            let Some(unwrap) = inputs
                .trusted_unwrap
                .iter()
                .find(|c| c.command == *unwrap_command)
            else {
                tracing::warn!(
                    "key slot {}: its unwrap command is not configured on this host (repo.unwrap_command), so the \
                     rewrapped secret was not checked: run `pgcairn key list` where it unwraps to see that it opens",
                    slot.id
                );
                return Ok(Some(key));
            };
            match key.probe_unwrap(unwrap) {
                UnwrapProbe::Opens => {}
                UnwrapProbe::Wrong(why) => {
                    return Err(Error::Key(format!(
                        "key slot {}: rewrapped by `{wrap_command}`, its unwrap command `{unwrap_command}` run here \
                         does not give the new secret back ({why}); the rotation would lock this slot out, so \
                         nothing was changed. Make the two commands match again (or remove the slot) first",
                        slot.id
                    )))
                }
                UnwrapProbe::CannotRun(why) => tracing::warn!(
                    "key slot {}: its unwrap command could not run on this host ({why}), so the rewrapped secret \
                     was not checked: run `pgcairn key list` where it unwraps to see that it opens",
                    slot.id
                ),
            }
            Ok(Some(key))
        }
        _ => {
            for u in &inputs.others {
                if let Some(k) = SlotKey::for_slot(slot, u)? {
                    if slot
                        .open(&config.repo_id, config.data_key_version, &k)?
                        .is_some()
                    {
                        return Ok(Some(k));
                    }
                }
            }
            Ok(None)
        }
    }
}

/// One slot as `key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    /// Slot id.
    pub id: String,
    /// `key-file`, `passphrase` or `command`.
    pub kind: String,
    /// Public fingerprint.
    pub fingerprint: String,
    /// Creation time, where recorded.
    pub created: Option<Timestamp>,
    /// When this host last unlocked with it, where known.
    pub last_used: Option<String>,
    /// The slot this command unlocked with.
    pub current: bool,
    /// Wrap command (command slots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrap_command: Option<String>,
    /// Unwrap command (command slots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwrap_command: Option<String>,
}

/// The slots of a config, with local last-use times.
pub fn list_slots(config: &RepoConfig, used: &str, state_dir: Option<&Path>) -> Vec<SlotInfo> {
    let seen = state_dir
        .map(|d| GenerationCache::new(d, &config.repo_id).read())
        .unwrap_or_default();
    config
        .key_slots
        .iter()
        .map(|s| {
            let (wrap, unwrap) = match &s.kind {
                SlotKind::Command {
                    wrap_command,
                    unwrap_command,
                    ..
                } => (Some(wrap_command.clone()), Some(unwrap_command.clone())),
                _ => (None, None),
            };
            SlotInfo {
                id: s.id.clone(),
                kind: s.kind.name().to_string(),
                fingerprint: s.fingerprint(),
                created: s.created_at,
                last_used: seen.slots_used.get(&s.id).cloned(),
                current: s.id == used,
                wrap_command: wrap,
                unwrap_command: unwrap,
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::KeyFile;
    use crate::repo::{InitOptions, Repository};
    use crate::storage::MemoryStorage;

    /// A new repository in memory, unlocked by key file `kf`.
    pub(crate) async fn repo_with(kf: &KeyFile) -> Arc<dyn Storage> {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        Repository::init(
            s.clone(),
            InitOptions {
                unlock: Some(Unlock::KeyFile(kf.clone())),
                kdf: KdfParams::insecure_for_tests(),
                wal_compress_level: 1,
            },
        )
        .await
        .unwrap();
        s
    }

    #[tokio::test]
    async fn remove_refuses_the_last_and_the_used_slot() {
        let a = KeyFile::generate();
        let b = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let ub = Unlock::KeyFile(b.clone());
        let repo = Repository::open(s.clone(), Some(&ua)).await.unwrap();
        let slot_a = repo.unlocked_slot().to_string();
        let last = change(
            &s,
            Some(&ua),
            None,
            KeyChange::Remove {
                id: slot_a.clone(),
                force: true,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(last.contains("last one"), "{last}");
        change(&s, Some(&ua), None, KeyChange::Add(SlotKey::key_file(&b)))
            .await
            .unwrap();
        let used = change(
            &s,
            Some(&ua),
            None,
            KeyChange::Remove {
                id: slot_a.clone(),
                force: false,
            },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(used.contains("unlocked with"), "{used}");
        change(
            &s,
            Some(&ub),
            None,
            KeyChange::Remove {
                id: slot_a[..6].into(),
                force: false,
            },
        )
        .await
        .unwrap();
        let gone = Repository::open(s.clone(), Some(&ua)).await.unwrap_err();
        assert!(matches!(gone, Error::Key(_)), "{gone}");
        Repository::open(s, Some(&ub)).await.unwrap();
    }

    #[tokio::test]
    async fn rotation_needs_every_slot_and_old_objects_stay_readable() {
        use crate::codec::ObjectKind;
        let a = KeyFile::generate();
        let b = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let ub = Unlock::KeyFile(b.clone());
        change(&s, Some(&ua), None, KeyChange::Add(SlotKey::key_file(&b)))
            .await
            .unwrap();
        let before = Repository::open(s.clone(), Some(&ua)).await.unwrap();
        let id = before.codec().content_id(b"old");
        let old = before
            .codec()
            .seal(ObjectKind::Manifest, &id, b"", b"old", 1);
        let err = change(
            &s,
            Some(&ua),
            None,
            KeyChange::Rotate(RotateInputs::default()),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot be rewrapped"), "{err}");
        let out = change(
            &s,
            Some(&ua),
            None,
            KeyChange::Rotate(RotateInputs {
                others: vec![ub.clone()],
                ..Default::default()
            }),
        )
        .await
        .unwrap();
        assert_eq!(out.config.data_key_version, 2);
        let after = Repository::open(s.clone(), Some(&ub)).await.unwrap();
        assert_eq!(after.codec().write_epoch(), 2);
        assert_eq!(
            after.codec().content_id(b"old"),
            id,
            "content ids are stable"
        );
        assert_eq!(
            after
                .codec()
                .open(ObjectKind::Manifest, &id, b"", &old)
                .unwrap(),
            b"old"
        );
        let new = after
            .codec()
            .seal(ObjectKind::Manifest, &id, b"", b"new", 1);
        // The keys before the rotation cannot open what is sealed after it.
        assert!(matches!(
            before.codec().open(ObjectKind::Manifest, &id, b"", &new),
            Err(crate::codec::CodecError::UnknownKeyEpoch(2))
        ));
        // (The proof is made here by hand: the manifest sealed under epoch 1 is orphaned on
        // purpose, to show what dropping does.)
        change(
            &s,
            Some(&ub),
            None,
            KeyChange::DropBefore(NothingSealedBefore { keep_from: 2 }),
        )
        .await
        .unwrap();
        let dropped = Repository::open(s.clone(), Some(&ub)).await.unwrap();
        assert!(dropped
            .codec()
            .open(ObjectKind::Manifest, &id, b"", &old)
            .is_err());
        assert_eq!(
            dropped
                .codec()
                .open(ObjectKind::Manifest, &id, b"", &new)
                .unwrap(),
            b"new"
        );
    }

    /// A rotation rewraps command slots and unwraps each where it can: a slot whose unwrap
    /// command no longer gives back what its wrap command wraps stops the rotation (it would
    /// be locked out); one whose unwrap command cannot run here does not.
    #[tokio::test]
    async fn a_rotation_refuses_to_lock_out_a_command_slot() {
        let a = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let wrap = KeyCommand::new("base64 -w0");
        // Gives back a well-formed secret, but another one.
        let other = "base64 -d >/dev/null; echo pgcairn-slot-v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        for unwrap in ["base64 -d", other, "exit 3"] {
            let key = tokio::task::spawn_blocking({
                let wrap = wrap.clone();
                move || SlotKey::command(&wrap, unwrap).unwrap()
            })
            .await
            .unwrap();
            change(&s, Some(&ua), None, KeyChange::Add(key))
                .await
                .unwrap();
        }
        let rotate = |s: Arc<dyn Storage>| {
            let ua = ua.clone();
            let wrap = wrap.clone();
            async move {
                change(
                    &s,
                    Some(&ua),
                    None,
                    KeyChange::Rotate(RotateInputs {
                        others: vec![],
                        trusted_wrap: vec![wrap],
                        trusted_unwrap: ["base64 -d", other, "exit 3"]
                            .into_iter()
                            .map(KeyCommand::new)
                            .collect(),
                    }),
                )
                .await
            }
        };
        let err = rotate(s.clone()).await.unwrap_err().to_string();
        assert!(
            err.contains("echo pgcairn-slot-v1") && err.contains("lock this slot out"),
            "{err}"
        );
        let still = Repository::open(s.clone(), Some(&ua)).await.unwrap();
        assert_eq!(still.config().data_key_version, 1, "nothing was changed");
        // Without the mismatched slot, the rotation goes on (the slot whose unwrap command
        // fails here is only warned about).
        let bad = still
            .config()
            .key_slots
            .iter()
            .find(|k| matches!(&k.kind, SlotKind::Command { unwrap_command, .. } if unwrap_command == other))
            .unwrap()
            .id
            .clone();
        change(
            &s,
            Some(&ua),
            None,
            KeyChange::Remove {
                id: bad,
                force: false,
            },
        )
        .await
        .unwrap();
        let out = rotate(s.clone()).await.unwrap();
        assert_eq!(out.config.data_key_version, 2);
        // The matching command slot opens the rotated config.
        let good = Unlock::Command(KeyCommand::new("base64 -d"));
        let opened = Repository::open(s.clone(), Some(&good)).await.unwrap();
        assert_eq!(opened.codec().write_epoch(), 2);
    }

    #[tokio::test]
    async fn a_rolled_back_or_forged_config_is_detected() {
        let a = KeyFile::generate();
        let b = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let state = tempfile::tempdir().unwrap();
        let old = s.get(&layout::config()).await.unwrap();
        change(
            &s,
            Some(&ua),
            Some(state.path()),
            KeyChange::Add(SlotKey::key_file(&b)),
        )
        .await
        .unwrap();
        Repository::open_with(s.clone(), Some(&ua), Some(state.path()))
            .await
            .unwrap();
        // Put the older config back: this host saw a newer one.
        let (_, v) = s.get_versioned(&layout::config()).await.unwrap();
        s.put_swap(&layout::config(), old.clone(), Some(&v))
            .await
            .unwrap();
        let e = Repository::open_with(s.clone(), Some(&ua), Some(state.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("rolled back"), "{e}");
        // Renumbering it without the key breaks its authentication.
        let mut forged: RepoConfig = serde_json::from_slice(&old).unwrap();
        forged.generation = 99;
        let (_, v) = s.get_versioned(&layout::config()).await.unwrap();
        s.put_swap(
            &layout::config(),
            serde_json::to_vec(&forged).unwrap().into(),
            Some(&v),
        )
        .await
        .unwrap();
        let e = Repository::open(s.clone(), Some(&ua))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("fails authentication"), "{e}");
    }
}
