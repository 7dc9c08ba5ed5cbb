//! The storage trait the engine needs, and an in-memory implementation for tests.
//!
//! The trait is repository-shaped: it stores immutable objects under [`ObjectKey`]s that only
//! the [`crate::repo::layout`] module builds, with exactly the write modes the repository
//! format relies on:
//! - [`Storage::put_create`]: create-only. Everything immutable (WAL objects, packs, index
//!   segments, manifests, key-bound cluster records) is written this way, so two writers can
//!   never silently overwrite each other.
//! - [`Storage::put_swap`]: compare-and-swap for the very few small mutable objects
//!   (the repository config when a key slot is added, GC generations).
//!
//! Error policy: [`StorageError`] keeps the meanings callers act on (not found, already
//! exists, precondition failed, transient vs permanent). Retries with a deadline live in the
//! backend crate, so by the time an error reaches the engine it is final.
//!
//! Durability contract: a successful put means the object is durable (for local disks the
//! backend fsyncs the file and its directory before returning).
//!
//! Wrappers: behaviour that cuts across every command (dry runs, the request cap, refused
//! deletes and overwrites, following key rotations, the tests' fault injection) lives in
//! storage wrappers around the backend. A wrapper implements [`StorageWrapper`], names its
//! inner storage and states only the operations it changes; the rest forward by default, and
//! one blanket impl makes every wrapper a [`Storage`]. A new storage operation is then
//! written once here and forwarded by every wrapper, instead of by hand in each.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

/// A key inside the repository (relative to the repository root, `/`-separated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Builds a key. Only the layout module should call this: it owns the naming scheme.
    pub fn new(key: impl Into<String>) -> Self {
        ObjectKey(key.into())
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Opaque version of an object, used for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion(pub String);

/// Listing entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: ObjectKey,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, unix seconds (when the backend knows it).
    pub modified: Option<i64>,
}

/// What a create-only put found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The object was created by this call (including a retried attempt whose first try
    /// landed: the backend recognises its own bytes).
    Created,
    /// An object already existed under that key; it was left untouched, and neither read
    /// nor made durable by this call: after a crash it may be torn or not yet synced. A
    /// caller that relies on it reads it back, and makes it durable by creating it again
    /// with the bytes read (`Created` then means durable).
    AlreadyExists,
}

/// Storage errors, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under this key.
    #[error("object {key} not found")]
    NotFound { key: String },
    /// Compare-and-swap lost: the object changed since it was read.
    #[error("object {key} was changed concurrently (compare-and-swap precondition failed)")]
    Precondition { key: String },
    /// The backend cannot do what was asked (for example compare-and-swap).
    #[error("{backend} does not support {what}")]
    Unsupported { backend: String, what: String },
    /// A fault that may pass (network, throttling, timeout), still failing after retries.
    #[error("{op} {key}: {detail} (transient; retries exhausted)")]
    Transient {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// A fault that will not pass by retrying (permissions, bad credentials, bad bucket).
    #[error("{op} {key}: {detail}")]
    Permanent {
        op: &'static str,
        key: String,
        detail: String,
    },
}

impl StorageError {
    /// True when the object definitely does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// The repository's view of object storage.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// A human-readable location (URL without credentials), for messages.
    fn describe(&self) -> String;

    /// Reads a whole object.
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError>;

    /// Reads a whole object and its version, for a later [`Storage::put_swap`].
    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError>;

    /// Reads a byte range of an object.
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError>;

    /// Size of an object.
    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError>;

    /// Creates an object; never overwrites. Durable when it returns `Created`.
    async fn put_create(&self, key: &ObjectKey, data: Bytes)
        -> Result<CreateOutcome, StorageError>;

    /// Replaces an object only if its version is still `expected` (`None`: only if absent).
    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError>;

    /// Lists every object whose key starts with `prefix` (a `/`-terminated folder prefix).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Lists the objects under `prefix` whose keys sort after `after` (byte order), in key
    /// order: the tail of a long folder without its head (S3 `start-after`). This default
    /// lists everything and filters; backends and wrappers that can do better say so.
    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut all = self.list(prefix).await?;
        all.retain(|o| o.key.as_str() > after);
        Ok(all)
    }

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// Makes an object that exists durable where storage can hold one that is not, and says
    /// what it made durable. On local disk a create links the name before it syncs, so an
    /// object a killed process created may sit in the page cache only: its bytes are read,
    /// it and its directories up to the root are fsynced, and the bytes returned. `None`:
    /// the object is missing, or this storage holds nothing readable that is not durable
    /// (an object store acknowledges a PUT once it is durable), so no request is made.
    async fn sync_existing(&self, _key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        Ok(None)
    }
}

/// A [`Storage`] that wraps another and changes some of its operations (see the module
/// docs). Every operation forwards to [`StorageWrapper::inner`] unless the wrapper says
/// otherwise, except [`StorageWrapper::list_after`], which like [`Storage::list_after`] lists
/// with the wrapper's own [`StorageWrapper::list`] and filters: a wrapper that changes
/// `list` changes its tail listings too.
///
/// Wrappers implement it by path (`impl crate::storage::StorageWrapper for ...`) rather than
/// importing it, so that calling an operation on a wrapper resolves to [`Storage`] alone.
#[async_trait]
pub trait StorageWrapper: Send + Sync + fmt::Debug {
    /// The storage this wraps.
    fn inner(&self) -> &dyn Storage;

    /// See [`Storage::describe`].
    fn describe(&self) -> String {
        self.inner().describe()
    }

    /// See [`Storage::get`].
    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        self.inner().get(key).await
    }

    /// See [`Storage::get_versioned`].
    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        self.inner().get_versioned(key).await
    }

    /// See [`Storage::get_range`].
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.inner().get_range(key, range).await
    }

    /// See [`Storage::head`].
    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        self.inner().head(key).await
    }

    /// See [`Storage::put_create`].
    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        self.inner().put_create(key, data).await
    }

    /// See [`Storage::put_swap`].
    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        self.inner().put_swap(key, data, expected).await
    }

    /// See [`Storage::list`].
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner().list(prefix).await
    }

    /// See [`Storage::list_after`]. Not forwarded by default: lists with this wrapper's own
    /// `list` and filters, as [`Storage::list_after`] does.
    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut all = StorageWrapper::list(self, prefix).await?;
        all.retain(|o| o.key.as_str() > after);
        Ok(all)
    }

    /// See [`Storage::delete`].
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.inner().delete(key).await
    }

    /// See [`Storage::sync_existing`].
    async fn sync_existing(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        self.inner().sync_existing(key).await
    }
}

#[async_trait]
impl<W: StorageWrapper> Storage for W {
    fn describe(&self) -> String {
        StorageWrapper::describe(self)
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        StorageWrapper::get(self, key).await
    }

    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        StorageWrapper::get_versioned(self, key).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        StorageWrapper::get_range(self, key, range).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        StorageWrapper::head(self, key).await
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        StorageWrapper::put_create(self, key, data).await
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        StorageWrapper::put_swap(self, key, data, expected).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        StorageWrapper::list(self, prefix).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        StorageWrapper::list_after(self, prefix, after).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        StorageWrapper::delete(self, key).await
    }

    async fn sync_existing(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        StorageWrapper::sync_existing(self, key).await
    }
}

fn unix_now() -> i64 {
    crate::store::Timestamp::now().unix_seconds()
}

/// An in-memory [`Storage`] for unit tests of the engine.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    /// Key → (bytes, version, modified unix seconds).
    objects: Mutex<BTreeMap<String, (Bytes, u64, i64)>>,
    next_version: std::sync::atomic::AtomicU64,
    /// Keys returned by listings so far.
    keys_listed: std::sync::atomic::AtomicU64,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes behind the repository's back (to simulate corruption).
    pub fn tamper(&self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut map = self.objects.lock().expect("memory storage lock");
        let entry = map.get_mut(key).expect("tampered object exists");
        let mut v = entry.0.to_vec();
        f(&mut v);
        entry.0 = Bytes::from(v);
    }

    /// Makes an object look `secs` older (to test age-based rules).
    pub fn backdate(&self, key: &str, secs: i64) {
        let mut map = self.objects.lock().expect("memory storage lock");
        if let Some(entry) = map.get_mut(key) {
            entry.2 -= secs;
        }
    }

    /// Keys returned by listings so far: what a listing cost a remote store.
    pub fn keys_listed(&self) -> u64 {
        self.keys_listed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The objects under `prefix` from `from` on, in key order.
    fn listed(&self, prefix: &str, from: std::ops::Bound<&str>) -> Vec<ObjectInfo> {
        let map = self.objects.lock().expect("memory storage lock");
        let out: Vec<ObjectInfo> = map
            .range::<str, _>((from, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (b, _, modified))| ObjectInfo {
                key: ObjectKey(k.clone()),
                size: b.len() as u64,
                modified: Some(*modified),
            })
            .collect();
        self.keys_listed
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::SeqCst);
        out
    }

    fn bump(&self) -> u64 {
        self.next_version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn describe(&self) -> String {
        "memory://".to_string()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        Ok(self.get_versioned(key).await?.0)
    }

    async fn get_versioned(&self, key: &ObjectKey) -> Result<(Bytes, ObjectVersion), StorageError> {
        let map = self.objects.lock().expect("memory storage lock");
        map.get(key.as_str())
            .map(|(b, v, _)| (b.clone(), ObjectVersion(v.to_string())))
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let all = self.get(key).await?;
        let end = (range.end as usize).min(all.len());
        let start = (range.start as usize).min(end);
        Ok(all.slice(start..end))
    }

    async fn head(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        Ok(self.get(key).await?.len() as u64)
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        let version = self.bump();
        let mut map = self.objects.lock().expect("memory storage lock");
        if let Some((existing, _, _)) = map.get(key.as_str()) {
            // Same contract as the real backends: identical bytes are our own write.
            return Ok(if *existing == data {
                CreateOutcome::Created
            } else {
                CreateOutcome::AlreadyExists
            });
        }
        map.insert(key.to_string(), (data, version, unix_now()));
        Ok(CreateOutcome::Created)
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        let version = self.bump();
        let mut map = self.objects.lock().expect("memory storage lock");
        let current = map.get(key.as_str()).map(|(_, v, _)| v.to_string());
        if current.as_deref() != expected.map(|v| v.0.as_str()) {
            return Err(StorageError::Precondition {
                key: key.to_string(),
            });
        }
        map.insert(key.to_string(), (data, version, unix_now()));
        Ok(ObjectVersion(version.to_string()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        Ok(self.listed(prefix, std::ops::Bound::Included(prefix)))
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let from = if after >= prefix {
            std::ops::Bound::Excluded(after)
        } else {
            std::ops::Bound::Included(prefix)
        };
        Ok(self.listed(prefix, from))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.objects
            .lock()
            .expect("memory storage lock")
            .remove(key.as_str());
        Ok(())
    }
}
