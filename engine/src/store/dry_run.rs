//! A storage wrapper for `--dry-run`: reads reach storage, writes and deletes become no-ops
//! that are recorded, so a command runs its real code path and changes nothing.
//!
//! Why a wrapper: before it, a `dry_run` flag was threaded through gc, expire and the leases,
//! and every write site had to remember to check it; one that forgot changed the repository
//! in a dry run. Below the engine, no write can slip through, and what the run *would* have
//! done is the list of calls it made ([`DryRun::changes`]). Modelled on rustic_core's
//! `backend/dry_run.rs`.
//!
//! Fidelity: a create-only put answers as storage would (`AlreadyExists` when different
//! bytes are there), and a compare-and-swap is checked against the object's real version, or
//! against the version this wrapper handed out for an earlier swap of the same key, so a
//! command that would lose a race in a real run loses it here too. Reads do not see the
//! recorded writes or deletes (nothing reads back what it just wrote in the commands that
//! support `--dry-run`).
//!
//! What a wrapper cannot see: a few decisions differ in a dry run because the real action is
//! expensive or blocks others, not because it writes. They ask
//! [`crate::repo::Repository::is_dry_run`]: gc plans its repack instead of copying packs (no
//! download of whole packs to report what would be copied), exclusive leases are not taken
//! (a run that changes nothing never waits for, or keeps out, another), and this host's
//! record of catalog generations is not advanced (see
//! [`crate::repo::keys::GenerationCache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{CreateOutcome, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError};

/// A write or delete a dry run did not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A create-only put of `size` bytes.
    Create { key: ObjectKey, size: u64 },
    /// A compare-and-swap replacing (or creating) the object with `size` bytes.
    Replace { key: ObjectKey, size: u64 },
    /// A delete.
    Delete { key: ObjectKey },
}

impl Change {
    /// The object concerned.
    pub fn key(&self) -> &ObjectKey {
        match self {
            Change::Create { key, .. } | Change::Replace { key, .. } | Change::Delete { key } => {
                key
            }
        }
    }
}

#[derive(Debug, Default)]
struct Log {
    changes: Vec<Change>,
    /// Versions handed out for swaps not done, per key: a later swap expecting one of them
    /// is the same run going on.
    versions: HashMap<ObjectKey, ObjectVersion>,
    next: u64,
}

/// Passes reads through; records writes and deletes instead of doing them.
#[derive(Debug)]
pub struct DryRun {
    inner: Arc<dyn Storage>,
    log: Mutex<Log>,
}

impl DryRun {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        DryRun {
            inner,
            log: Mutex::new(Log::default()),
        }
    }

    /// What the run would have written or deleted, in order.
    pub fn changes(&self) -> Vec<Change> {
        self.lock().changes.clone()
    }

    /// The objects the run would have deleted, in order.
    pub fn deleted(&self) -> Vec<ObjectKey> {
        self.lock()
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Delete { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, change: Change) {
        tracing::debug!(?change, "dry run: not done");
        self.lock().changes.push(change);
    }
}

#[async_trait]
impl crate::storage::StorageWrapper for DryRun {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        match self.inner.get(key).await {
            // Same contract as the backends: identical bytes count as this run's own write.
            Ok(existing) if existing != data => return Ok(CreateOutcome::AlreadyExists),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        self.record(Change::Create {
            key: key.clone(),
            size: data.len() as u64,
        });
        Ok(CreateOutcome::Created)
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        let ours = self.lock().versions.get(key).cloned();
        let matches = match (&ours, expected) {
            (Some(v), Some(e)) if v == e => true,
            _ => {
                let current = match self.inner.get_versioned(key).await {
                    Ok((_, v)) => Some(v),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e),
                };
                current.as_ref() == expected
            }
        };
        if !matches {
            return Err(StorageError::Precondition {
                key: key.to_string(),
            });
        }
        self.record(Change::Replace {
            key: key.clone(),
            size: data.len() as u64,
        });
        let mut log = self.lock();
        log.next += 1;
        let version = ObjectVersion(format!("dry-run-{}", log.next));
        log.versions.insert(key.clone(), version.clone());
        Ok(version)
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list_after(prefix, after).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.record(Change::Delete { key: key.clone() });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn writes_and_deletes_are_recorded_not_done() {
        let mem = Arc::new(MemoryStorage::new());
        let a = ObjectKey::new("packs/aa");
        let b = ObjectKey::new("gc/state");
        mem.put_create(&a, Bytes::from_static(b"a")).await.unwrap();
        let (_, v) = mem.get_versioned(&a).await.unwrap();
        let dry = DryRun::new(mem.clone());

        dry.delete(&a).await.unwrap();
        assert_eq!(dry.get(&a).await.unwrap(), Bytes::from_static(b"a"));
        assert_eq!(
            dry.put_create(&a, Bytes::from_static(b"other"))
                .await
                .unwrap(),
            CreateOutcome::AlreadyExists
        );
        assert_eq!(
            dry.put_create(&b, Bytes::from_static(b"new"))
                .await
                .unwrap(),
            CreateOutcome::Created
        );
        assert!(mem.get(&b).await.unwrap_err().is_not_found(), "not created");

        // A swap is checked against the real version, then against the one it handed out.
        let stale = ObjectVersion("stale".into());
        assert!(matches!(
            dry.put_swap(&a, Bytes::new(), Some(&stale)).await,
            Err(StorageError::Precondition { .. })
        ));
        let next = dry.put_swap(&a, Bytes::new(), Some(&v)).await.unwrap();
        dry.put_swap(&a, Bytes::from_static(b"xy"), Some(&next))
            .await
            .unwrap();
        assert_eq!(mem.get(&a).await.unwrap(), Bytes::from_static(b"a"));

        assert_eq!(dry.deleted(), vec![a.clone()]);
        assert_eq!(
            dry.changes(),
            vec![
                Change::Delete { key: a.clone() },
                Change::Create {
                    key: b.clone(),
                    size: 3
                },
                Change::Replace {
                    key: a.clone(),
                    size: 0
                },
                Change::Replace { key: a, size: 2 },
            ]
        );
    }
}
