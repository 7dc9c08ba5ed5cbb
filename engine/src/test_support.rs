//! Shared helpers for the engine's unit tests: synthetic manifests without a PostgreSQL, and
//! storage that fails on cue ([`FailAfter`], [`LeaseFaults`]), answers late ([`SlowReads`]) or
//! lets a test see or answer single calls ([`Hooked`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::crypto::{ContentId, KdfParams, KeyFile, Unlock};
use crate::repo::{InitOptions, Repository};
use crate::storage::{
    CreateOutcome, MemoryStorage, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError,
};
use crate::store::manifest::{self, Manifest};

/// A new repository on in-memory storage, opened with a fresh key file.
pub async fn memory_repo() -> (Arc<MemoryStorage>, Repository) {
    let mem = Arc::new(MemoryStorage::new());
    let (_, repo) = init_repo(mem.clone()).await;
    (mem, repo)
}

/// Initialises a repository on `storage` with a fresh key file and opens it.
pub async fn init_repo(storage: Arc<dyn Storage>) -> (Unlock, Repository) {
    let unlock = Unlock::KeyFile(KeyFile::generate());
    Repository::init(
        storage.clone(),
        InitOptions {
            unlock: Some(unlock.clone()),
            kdf: KdfParams::insecure_for_tests(),
            wal_compress_level: 1,
        },
    )
    .await
    .unwrap();
    let repo = Repository::open(storage, Some(&unlock)).await.unwrap();
    (unlock, repo)
}

/// A full backup of cluster `main` with one file made of `blocks`, consistent between
/// `start_lsn` and `stop_lsn` (like `"0/1000000"`), ending at `stop_time` (RFC 3339).
pub fn manifest(
    id: &str,
    start_lsn: &str,
    stop_lsn: &str,
    stop_time: &str,
    blocks: &[ContentId],
) -> Manifest {
    let hexes: Vec<String> = blocks.iter().map(|b| b.to_hex()).collect();
    serde_json::from_value(serde_json::json!({
        "format": 1, "id": id, "type": "full", "reference": null, "cluster": "main",
        "system_identifier": "1", "pg_version_num": 150000, "timeline": 1,
        "start_lsn": start_lsn, "stop_lsn": stop_lsn,
        "start_wal": "", "stop_wal": "",
        "start_time": stop_time, "stop_time": stop_time,
        "block_size": 8192, "checksums_verified": true, "backup_label": "", "tablespace_map": null,
        "tablespaces": [], "directories": [],
        "files": [{"path": "base/1/1", "size": 8192 * blocks.len(), "mtime_ns": 0, "mode": 384,
                   "uid": 0, "gid": 0, "blocks": hexes, "checksum": "", "bad_pages": []}],
        "stats": {"files": 1, "size": 0, "bytes_read": 0, "bytes_new": 0, "stored_new": 0,
                  "blocks": 0, "blocks_new": 0, "files_unchanged": 0}
    }))
    .expect("synthetic manifest")
}

/// [`manifest`] at a fixed position and time, referencing `blocks`.
pub fn manifest_of(id: &str, blocks: &[ContentId]) -> Manifest {
    manifest(id, "0/1000000", "0/1000100", "2026-11-24T00:00:01Z", blocks)
}

/// Saves [`manifest_of`] a backup referencing `blocks`.
pub async fn save_manifest(repo: &Repository, id: &str, blocks: &[ContentId]) {
    manifest::save(repo, &manifest_of(id, blocks))
        .await
        .unwrap();
}

/// The test repository (passphrase "pw") opened through `storage`, a wrapper around the
/// storage [`crate::archive::push::tests::memory_repo`] initialised.
pub async fn open_with(storage: Arc<dyn Storage>) -> Repository {
    Repository::open(
        storage,
        Some(&crate::crypto::Unlock::Passphrase("pw".into())),
    )
    .await
    .unwrap()
}

/// Writes `blocks` (plaintexts) sealed into one pack (more if they overflow one), indexed;
/// returns their ids in order.
pub async fn pack_holding(repo: &Repository, blocks: Vec<Vec<u8>>) -> Vec<ContentId> {
    use crate::store::blocks::{Packer, SealedBlock};
    let mut packer = Packer::new(repo.clone());
    let mut ids = Vec::new();
    for b in blocks {
        let id = repo.codec().content_id(&b);
        let sealed = repo
            .codec()
            .seal(crate::codec::ObjectKind::Block, &id, b"", &b, 1);
        let raw_len = b.len() as u32;
        packer
            .add(SealedBlock {
                id,
                sealed,
                raw_len,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    packer.flush().await.unwrap();
    ids
}

/// Storage whose writes and deletes fail after a budget: a run killed at that point.
#[derive(Debug)]
pub struct FailAfter {
    inner: Arc<dyn Storage>,
    left: AtomicI64,
}

impl FailAfter {
    /// `budget` writes and deletes succeed, every later one fails.
    pub fn new(inner: Arc<dyn Storage>, budget: i64) -> Self {
        FailAfter {
            inner,
            left: AtomicI64::new(budget),
        }
    }

    fn spend(&self, key: &ObjectKey) -> std::result::Result<(), StorageError> {
        if self.left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(StorageError::Permanent {
                op: "put",
                key: key.to_string(),
                detail: "injected failure".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for FailAfter {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }
    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> std::result::Result<CreateOutcome, StorageError> {
        self.spend(key)?;
        self.inner.put_create(key, data).await
    }
    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> std::result::Result<ObjectVersion, StorageError> {
        self.spend(key)?;
        self.inner.put_swap(key, data, expected).await
    }
    async fn delete(&self, key: &ObjectKey) -> std::result::Result<(), StorageError> {
        self.spend(key)?;
        self.inner.delete(key).await
    }
}

/// Storage whose reads (`get`, `get_range`, `head`, `list`) each take `delay` longer: a
/// remote store's round trip, so that work in flight stays in flight for a while.
#[derive(Debug)]
pub struct SlowReads {
    inner: Arc<dyn Storage>,
    delay: std::time::Duration,
}

impl SlowReads {
    /// Reads of `inner`, each `delay` late.
    pub fn new(inner: Arc<dyn Storage>, delay: std::time::Duration) -> Self {
        SlowReads { inner, delay }
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for SlowReads {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }
    async fn get(&self, key: &ObjectKey) -> std::result::Result<Bytes, StorageError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get(key).await
    }
    async fn get_versioned(
        &self,
        key: &ObjectKey,
    ) -> std::result::Result<(Bytes, ObjectVersion), StorageError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get_versioned(key).await
    }
    async fn get_range(
        &self,
        key: &ObjectKey,
        range: std::ops::Range<u64>,
    ) -> std::result::Result<Bytes, StorageError> {
        tokio::time::sleep(self.delay).await;
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &ObjectKey) -> std::result::Result<u64, StorageError> {
        tokio::time::sleep(self.delay).await;
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectInfo>, StorageError> {
        tokio::time::sleep(self.delay).await;
        self.inner.list(prefix).await
    }
}

/// A call [`Hooked`] shows its hook before forwarding it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// `get` or `get_versioned` of a key.
    Read(&'a ObjectKey),
    /// `put_create` of a key with these bytes.
    Create(&'a ObjectKey, &'a Bytes),
    /// `sync_existing` of a key.
    Sync(&'a ObjectKey),
}

/// The hook of a [`Hooked`] storage: `Err` is answered instead of forwarding the call.
type Hook = Box<dyn Fn(Call<'_>) -> std::result::Result<(), StorageError> + Send + Sync>;

/// Storage that shows reads and creates to a hook (to record them, or to answer one in its
/// stead) and forwards everything else untouched: one wrapper for tests that need a single
/// call to behave differently.
pub struct Hooked {
    inner: Arc<dyn Storage>,
    hook: Hook,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Hooked {
    /// `inner`, its reads and creates shown to `hook` first.
    pub fn new(
        inner: Arc<dyn Storage>,
        hook: impl Fn(Call<'_>) -> std::result::Result<(), StorageError> + Send + Sync + 'static,
    ) -> Self {
        Hooked {
            inner,
            hook: Box::new(hook),
        }
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for Hooked {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }
    async fn get(&self, key: &ObjectKey) -> std::result::Result<Bytes, StorageError> {
        (self.hook)(Call::Read(key))?;
        self.inner.get(key).await
    }
    async fn get_versioned(
        &self,
        key: &ObjectKey,
    ) -> std::result::Result<(Bytes, ObjectVersion), StorageError> {
        (self.hook)(Call::Read(key))?;
        self.inner.get_versioned(key).await
    }
    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> std::result::Result<CreateOutcome, StorageError> {
        (self.hook)(Call::Create(key, &data))?;
        self.inner.put_create(key, data).await
    }
    async fn sync_existing(
        &self,
        key: &ObjectKey,
    ) -> std::result::Result<Option<Bytes>, StorageError> {
        (self.hook)(Call::Sync(key))?;
        self.inner.sync_existing(key).await
    }
}

/// Storage with faults on leases (`leases/`): reads that fail with a permission error, lease
/// refreshes whose answer is lost after they landed (`lose_swap_answers` of them), lease
/// refreshes that fail without landing (`fail_swaps` of them), and the first two listings
/// of the leases held until both have begun (`meet_in_list`: two commands looking at
/// once). Also slow creates (`slow_creates`) and names already taken (`taken_names`).
#[derive(Debug, Default)]
pub struct LeaseFaults {
    pub inner: Arc<MemoryStorage>,
    pub reads_fail: bool,
    pub lose_swap_answers: std::sync::atomic::AtomicU32,
    pub fail_swaps: std::sync::atomic::AtomicU32,
    pub swaps_ok: std::sync::atomic::AtomicU32,
    pub meet_in_list: Option<tokio::sync::Barrier>,
    pub lists: std::sync::atomic::AtomicU32,
    /// Creating an object whose key ends with this takes this long (a large manifest
    /// written to a struggling object store).
    pub slow_creates: Option<(String, std::time::Duration)>,
    /// A slow create lands, then reports a timeout.
    pub slow_creates_time_out: bool,
    /// Every name created under this prefix is already taken by other bytes: a damaged object
    /// that was there first.
    pub taken_names: Option<&'static str>,
}

impl LeaseFaults {
    /// Lease reads fail with a permission error.
    pub fn reads_fail(inner: Arc<MemoryStorage>) -> Self {
        LeaseFaults {
            inner,
            reads_fail: true,
            ..Default::default()
        }
    }
    fn is_lease(&self, key: &ObjectKey) -> bool {
        key.as_str().starts_with("leases/")
    }
}

fn denied(key: &ObjectKey) -> StorageError {
    StorageError::Permanent {
        op: "get",
        key: key.to_string(),
        detail: "access denied".into(),
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for LeaseFaults {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        if self.reads_fail && self.is_lease(key) {
            return Err(denied(key));
        }
        self.inner.get(key).await
    }
    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        if self.reads_fail && self.is_lease(key) {
            return Err(denied(key));
        }
        self.inner.get_versioned(key).await
    }
    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        if let Some((suffix, pause)) = &self.slow_creates {
            if key.as_str().ends_with(suffix.as_str()) {
                tokio::time::sleep(*pause).await;
                if self.slow_creates_time_out {
                    self.inner.put_create(key, data).await?;
                    return Err(StorageError::Transient {
                        op: "put",
                        key: key.to_string(),
                        detail: "timed out (the write landed)".into(),
                    });
                }
            }
        }
        if self
            .taken_names
            .is_some_and(|p| key.as_str().starts_with(p))
        {
            let mut damaged = data.to_vec();
            if let Some(b) = damaged.last_mut() {
                *b ^= 0x5a;
            }
            self.inner.put_create(key, Bytes::from(damaged)).await?;
        }
        self.inner.put_create(key, data).await
    }
    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        use std::sync::atomic::Ordering;
        let fail = self.is_lease(key)
            && expected.is_some()
            && self
                .fail_swaps
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            return Err(StorageError::Transient {
                op: "put",
                key: key.to_string(),
                detail: "connection refused".into(),
            });
        }
        let r = self.inner.put_swap(key, data, expected).await;
        if self.is_lease(key) && r.is_ok() && expected.is_some() {
            let lose = self
                .lose_swap_answers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lose {
                return Err(StorageError::Transient {
                    op: "put",
                    key: key.to_string(),
                    detail: "timed out (the write landed)".into(),
                });
            }
            self.swaps_ok.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let n = self.lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let listed = self.inner.list(prefix).await;
        if let Some(b) = self.meet_in_list.as_ref().filter(|_| n < 2) {
            b.wait().await;
        }
        listed
    }
}

/// Makes a FIFO at `path` (something planted where a file should be: opening it for reading
/// would block).
pub fn make_fifo(path: &std::path::Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// This process's peak RSS, printed for [`peak_rss_of_child`].
pub fn report_peak_rss() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("peak_rss={}", kib << 10);
}

/// Runs the ignored test `test` alone in a child process with `env_var` set (other tests'
/// memory would count in this one's peak), and returns the peak RSS it reported with
/// [`report_peak_rss`], in bytes.
pub fn peak_rss_of_child(test: &str, env_var: &str) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(env_var, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split("peak_rss=").nth(1))
        .unwrap_or_else(|| panic!("the child ran no workload: {stdout}"))
        .parse()
        .unwrap()
}
