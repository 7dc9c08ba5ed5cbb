//! Following a `key rotate` from a process that is already running.
//!
//! A process unlocks the repository once, when it starts. A `pgcairn key rotate` (or a
//! re-encryption) while it runs seals new objects, and reseals old ones, under a key epoch
//! the process does not hold: a backup that started before would fail on the first index
//! segment, catalog head or WAL record sealed under the new epoch. Instead of teaching every
//! command to retry, the repository's storage is wrapped ([`FollowKeys`]): every object read
//! is peeked at (the envelope header names its key epoch, see [`crate::codec`]; a whole pack
//! also its trailer's), and one naming an epoch newer than the process holds makes it read
//! the config again, authenticate and unlock it with the same slot credentials it started
//! with (kept in memory only, as they were), check it against this host's generation cache
//! like any open does, and add the new epochs to the codec every clone of the repository
//! shares. The read then returns and the caller opens the object as usual: one reload,
//! then the ordinary open, which is the retry. Epochs already held stay held, so what the
//! process read before still opens after a `key reencrypt` dropped them from the config.
//!
//! If the reload fails (the slot this process used was removed before the rotation: that is
//! revocation working; the config cannot be read; it was rolled back), the failure is
//! logged and the open fails as before, naming the unknown epoch.
//!
//! Writers move to the new epoch too: a write made more than [`FOLLOW_EVERY`] after the last
//! look at the config starts a reload in the background (the write itself never waits for
//! it), and so does a watch that looks every [`LOOK_TICK`] whether the config was read in
//! the last [`FOLLOW_EVERY`]. The watch matters for a writer that sat idle (`wal-receive` on
//! a quiet server, a backup waiting for WAL): without it, its first write after the rotation
//! would still be sealed under the old epoch, however late, and after `key reencrypt` dropped
//! that epoch nobody else could open it. With it, every running process that can read the
//! config seals under the new epoch within [`FOLLOWED_WITHIN`] of a rotation, which (with a
//! minute for uploads in flight) is how long `key reencrypt` waits before it drops old epochs. A write never fails because a
//! reload did; a process that cannot reload (its key slot was removed: revocation) keeps
//! the old epoch, and what it writes after the drop opens for nobody else.
//!
//! Unencrypted repositories have no key epochs to follow and are not wrapped.
//!
//! Not covered: a range read that starts at a block sealed under an older epoch than a later
//! block of the same range (a pack a writer was filling while it switched epochs) is judged
//! by its first block. Such a pack only exists once the writer itself followed the rotation,
//! after which any reader that reads the backup's manifest or index (sealed later still)
//! follows too.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use super::{keys, layout, parse_config, RepoConfig};
use crate::codec::Codec;
use crate::crypto::{RepoKeys, Unlock};
use crate::error::{Error, Result};
use crate::storage::{CreateOutcome, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError};

/// How long a writing process goes without looking at the config for a newer key epoch.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(60);
/// How often a process's watch checks whether it looked at the config within [`FOLLOW_EVERY`].
pub const LOOK_TICK: Duration = Duration::from_secs(15);
/// Within this long of a key change, every running process that can read the config seals
/// under the newest epoch: [`FOLLOW_EVERY`] and a [`LOOK_TICK`], and a margin for the reload
/// itself (a config read and a key unwrap, perhaps through a key manager).
pub const FOLLOWED_WITHIN: Duration =
    Duration::from_secs(FOLLOW_EVERY.as_secs() + LOOK_TICK.as_secs() + 45);

/// Reloads the config of one open repository and hands new key epochs to its codec.
pub(crate) struct Follower {
    /// The storage under every wrapper (the config is read from it).
    base: Arc<dyn Storage>,
    /// What this process unlocked with (in memory only, as it was at open).
    unlock: Option<Unlock>,
    state_dir: Option<PathBuf>,
    repo_id: String,
    codec: Codec,
    /// The config generation whose keys the codec holds.
    generation: AtomicU64,
    /// When the config was last read (opening counts).
    last_look: Mutex<Instant>,
    /// One reload at a time; the others wait for it and find the epoch held.
    reloading: tokio::sync::Mutex<()>,
    /// A background reload started by a write is running.
    background: AtomicBool,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No `unlock`: it holds the repository's secret.
        f.debug_struct("Follower")
            .field("repo_id", &self.repo_id)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Follows the repository `config` (just opened with `unlock`) whose objects `codec`
    /// opens.
    pub(crate) fn new(
        base: Arc<dyn Storage>,
        unlock: Option<Unlock>,
        state_dir: Option<PathBuf>,
        config: &RepoConfig,
        codec: Codec,
    ) -> Self {
        Follower {
            base,
            unlock,
            state_dir,
            repo_id: config.repo_id.clone(),
            codec,
            generation: AtomicU64::new(config.generation),
            last_look: Mutex::new(Instant::now()),
            reloading: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        }
    }

    /// An object read names key epoch `epoch`: when this process does not hold it, reload
    /// the config once (a failure is logged; opening the object then fails, naming it).
    async fn saw(&self, epoch: u32) {
        if epoch <= self.codec.newest_epoch() {
            return;
        }
        let _one = self.reloading.lock().await;
        if epoch <= self.codec.newest_epoch() {
            return;
        }
        let held = self.codec.newest_epoch();
        match self.reload().await {
            Ok(()) if epoch <= self.codec.newest_epoch() => tracing::info!(
                from = held,
                to = self.codec.newest_epoch(),
                "the repository keys were rotated while this command ran; it now holds the new key epoch"
            ),
            // A header naming an epoch the config does not have: damage or forgery, which
            // opening the object reports.
            Ok(()) => {}
            Err(e) => tracing::warn!(
                epoch,
                held,
                "an object is sealed under key epoch {epoch}, newer than this process holds ({held}; the keys were \
                 rotated after it started), and reading the repository config again failed: {e}"
            ),
        }
    }

    /// A write: when the config was last read more than [`FOLLOW_EVERY`] ago, read it again
    /// in the background so that later writes seal under the newest epoch.
    fn wrote(self: &Arc<Self>) {
        self.look_if_stale();
    }

    /// Starts the watch (in a tokio runtime; a process without one has no idle time to
    /// cover): every `every`, the config is read again in the background when it was last
    /// read more than [`FOLLOW_EVERY`] ago. It ends when the repository is dropped.
    pub(crate) fn watch(self: &Arc<Self>, every: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = me.upgrade() else { break };
                me.look_if_stale();
            }
        });
    }

    /// Reads the config again in the background when it was last read more than
    /// [`FOLLOW_EVERY`] ago.
    fn look_if_stale(self: &Arc<Self>) {
        {
            let mut last = self.last_look.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < FOLLOW_EVERY {
                return;
            }
            *last = Instant::now();
        }
        if self.background.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.background.store(false, Ordering::SeqCst);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let held = me.codec.newest_epoch();
            // Bounded: a hung config read or key manager would otherwise leave `background`
            // set, and this process would never follow a rotation again.
            let result = {
                let _one = me.reloading.lock().await;
                match tokio::time::timeout(FOLLOW_EVERY, me.reload()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(format!(
                        "reading and unlocking the repository config took longer than {}s",
                        FOLLOW_EVERY.as_secs()
                    ))),
                }
            };
            if result.is_err() {
                // Look again at the next tick or write, not a minute from now: the wait
                // before `key reencrypt` drops old epochs counts on writers following soon.
                if let Some(t) = Instant::now().checked_sub(FOLLOW_EVERY) {
                    *me.last_look.lock().unwrap_or_else(|e| e.into_inner()) = t;
                }
            }
            match result {
                Ok(()) if me.codec.newest_epoch() > held => tracing::info!(
                    from = held,
                    to = me.codec.newest_epoch(),
                    "the repository keys were rotated while this command ran; it now writes under the new key epoch"
                ),
                Ok(()) => {}
                Err(e) => tracing::warn!(
                    "reading the repository config for a key rotation failed (writing goes on under key epoch {held}): {e}"
                ),
            }
            me.background.store(false, Ordering::SeqCst);
        });
    }

    /// Reads the config; when it changed, authenticates and unlocks it with this process's
    /// credentials, checks it against this host's generation cache, and adds its epochs to
    /// the codec.
    async fn reload(&self) -> Result<()> {
        *self.last_look.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let raw = self.base.get(&layout::config()).await?;
        let config = parse_config(&self.base, &raw)?;
        if config.repo_id != self.repo_id {
            return Err(Error::Key(format!(
                "the repository config now belongs to repository {}, not {} which this command opened",
                config.repo_id, self.repo_id
            )));
        }
        if config.generation == self.generation.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (config, unlocked) = keys::unlock_blocking(config, self.unlock.clone()).await?;
        if let Some(dir) = &self.state_dir {
            keys::GenerationCache::new(dir, &config.repo_id)
                .check_and_record(&config, &unlocked.slot_id)?;
        }
        self.codec
            .adopt(
                &RepoKeys::from_keyring(&unlocked.keyring),
                config.data_key_version,
            )
            .map_err(|e| Error::Key(format!("the repository config's keys do not fit: {e}")))?;
        self.generation.store(config.generation, Ordering::SeqCst);
        Ok(())
    }
}

/// The newest key epoch `bytes` (an object, or a range of one, as read) names: its
/// envelope header's, and for a whole pack also its trailer's.
fn named_epoch(bytes: &[u8]) -> Option<u32> {
    let lead = Codec::epoch_of(bytes);
    let trailer = crate::pack::sealed_trailer(bytes).and_then(Codec::epoch_of);
    lead.max(trailer)
}

/// A storage whose reads make the repository follow key rotations (see the module docs).
#[derive(Debug)]
pub(crate) struct FollowKeys {
    inner: Arc<dyn Storage>,
    follower: Arc<Follower>,
}

impl FollowKeys {
    /// Wraps `inner`, reporting what is read to `follower`.
    pub(crate) fn new(inner: Arc<dyn Storage>, follower: Arc<Follower>) -> Self {
        FollowKeys { inner, follower }
    }

    async fn peek(&self, bytes: &[u8]) {
        if let Some(epoch) = named_epoch(bytes) {
            self.follower.saw(epoch).await;
        }
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for FollowKeys {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let b = self.inner.get(key).await?;
        self.peek(&b).await;
        Ok(b)
    }

    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        let (b, v) = self.inner.get_versioned(key).await?;
        self.peek(&b).await;
        Ok((b, v))
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let b = self.inner.get_range(key, range).await?;
        self.peek(&b).await;
        Ok(b)
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        self.follower.wrote();
        self.inner.put_create(key, data).await
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        self.follower.wrote();
        self.inner.put_swap(key, data, expected).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list_after(prefix, after).await
    }

    /// Bytes read back to be opened, like a read's.
    async fn sync_existing(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        let b = self.inner.sync_existing(key).await?;
        if let Some(b) = &b {
            self.peek(b).await;
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyFile, SlotKey};
    use crate::repo::keys::tests::repo_with;
    use crate::repo::keys::{change, KeyChange, RotateInputs};
    use crate::repo::Repository;
    use crate::store::sealed::{self, DocKind};

    async fn rotate(s: &Arc<dyn Storage>, u: &Unlock) {
        change(s, Some(u), None, KeyChange::Rotate(RotateInputs::default()))
            .await
            .unwrap();
    }

    /// A pin sealed by a process that opened the repository after a rotation.
    async fn pin_sealed_after(s: &Arc<dyn Storage>, u: &Unlock, key: &ObjectKey) {
        let after = Repository::open(s.clone(), Some(u)).await.unwrap();
        assert_eq!(after.codec().write_epoch(), 2);
        let body = sealed::seal(&after, DocKind::Pin, key, &"kept");
        s.put_create(key, body).await.unwrap();
    }

    #[tokio::test]
    async fn a_process_opened_before_a_rotation_reads_what_is_sealed_after_it_and_writes_under_it()
    {
        let a = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let state = tempfile::tempdir().unwrap();
        let before = Repository::open_with(s.clone(), Some(&ua), Some(state.path()))
            .await
            .unwrap();
        let old = before.codec().clone();
        let id = old.content_id(b"old");
        let sealed_old = old.seal(crate::codec::ObjectKind::Manifest, &id, b"", b"old", 1);
        rotate(&s, &ua).await;
        let key = layout::pin("main", "20260101-000000F");
        pin_sealed_after(&s, &ua, &key).await;
        let doc: Option<String> = sealed::read(&before, DocKind::Pin, &key).await.unwrap();
        assert_eq!(doc.as_deref(), Some("kept"));
        // Every clone made before holds the new epoch and seals under it; the old one stays.
        assert_eq!(old.epochs(), vec![1, 2]);
        assert_eq!(old.write_epoch(), 2);
        let again = old.seal(crate::codec::ObjectKind::Manifest, &id, b"", b"new", 1);
        assert_eq!(Codec::epoch_of(&again), Some(2));
        assert_eq!(
            old.open(crate::codec::ObjectKind::Manifest, &id, b"", &sealed_old)
                .unwrap(),
            b"old"
        );
        // The reload went through this host's generation cache.
        let seen = keys::GenerationCache::new(state.path(), &before.config().repo_id).read();
        assert_eq!(seen.key_epoch, 2);
    }

    #[tokio::test]
    async fn a_process_whose_key_slot_was_removed_before_the_rotation_does_not_follow() {
        let a = KeyFile::generate();
        let b = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a.clone());
        let ub = Unlock::KeyFile(b.clone());
        change(&s, Some(&ua), None, KeyChange::Add(SlotKey::key_file(&b)))
            .await
            .unwrap();
        let leaked = Repository::open(s.clone(), Some(&ua)).await.unwrap();
        let slot = leaked.unlocked_slot().to_string();
        change(
            &s,
            Some(&ub),
            None,
            KeyChange::Remove {
                id: slot,
                force: false,
            },
        )
        .await
        .unwrap();
        rotate(&s, &ub).await;
        let key = layout::pin("main", "20260101-000000F");
        pin_sealed_after(&s, &ub, &key).await;
        let err = sealed::read::<String>(&leaked, DocKind::Pin, &key)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("key epoch 2"), "{err}");
        assert_eq!(leaked.codec().epochs(), vec![1]);
    }

    /// A repository opened with a key file, and a follower of its own for the test to drive.
    async fn opened_with_follower() -> (Arc<dyn Storage>, Unlock, Repository, Arc<Follower>) {
        let a = KeyFile::generate();
        let s = repo_with(&a).await;
        let ua = Unlock::KeyFile(a);
        let repo = Repository::open(s.clone(), Some(&ua)).await.unwrap();
        let follower = Arc::new(Follower::new(
            s.clone(),
            Some(ua.clone()),
            None,
            repo.config(),
            repo.codec().clone(),
        ));
        (s, ua, repo, follower)
    }

    #[tokio::test]
    async fn a_write_long_after_the_last_look_moves_writers_to_the_new_epoch() {
        let (s, ua, repo, follower) = opened_with_follower().await;
        let watched = FollowKeys::new(s.clone(), follower.clone());
        rotate(&s, &ua).await;
        watched
            .put_create(&ObjectKey::new("x/1"), Bytes::from_static(b"1"))
            .await
            .unwrap();
        assert_eq!(
            repo.codec().write_epoch(),
            1,
            "looked at the config just now"
        );
        if let Some(t) = Instant::now().checked_sub(FOLLOW_EVERY * 2) {
            *follower.last_look.lock().unwrap() = t;
        }
        watched
            .put_create(&ObjectKey::new("x/2"), Bytes::from_static(b"2"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while repo.codec().write_epoch() != 2 {
            assert!(Instant::now() < deadline, "never followed the rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A process that neither reads nor writes (wal-receive on a quiet server) still follows
    /// a rotation: its watch looks at the config, so its next write, however late, is sealed
    /// under the new epoch.
    #[tokio::test]
    async fn an_idle_process_follows_a_rotation_through_its_watch() {
        let (s, ua, repo, follower) = opened_with_follower().await;
        follower.watch(Duration::from_millis(20));
        rotate(&s, &ua).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            repo.codec().write_epoch(),
            1,
            "looked at the config just now"
        );
        if let Some(t) = Instant::now().checked_sub(FOLLOW_EVERY * 2) {
            *follower.last_look.lock().unwrap() = t;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while repo.codec().write_epoch() != 2 {
            assert!(Instant::now() < deadline, "never followed the rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The watch ends with the repository.
        let weak = Arc::downgrade(&follower);
        drop(follower);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(weak.upgrade().is_none());
    }
}
