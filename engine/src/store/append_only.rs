//! A storage wrapper for the commands that only add to the repository (`archive-push`, its
//! background pusher, and `backup`): deletes and overwrites are refused before they reach
//! storage, so a bug or a compromised host running those commands cannot remove history.
//!
//! What it still allows, because those commands need it:
//! - create-only puts (everything they store);
//! - compare-and-swap of the cluster's catalog head (`clusters/<c>/head`, see
//!   [`super::head`]) and of its status object (`status/cluster/<c>`, see [`super::status`]):
//!   the mutable objects they update;
//! - writes and deletes of `leases/` (a backup announces itself to gc with a lease it
//!   refreshes and removes when it ends);
//! - compare-and-swap of a WAL data object against a version read, never a blind write:
//!   archive-push replaces one only after reading it back and finding it does not open as
//!   the file its name (which carries the content id) says, which is what a crash leaves
//!   when it tears a local write ([`crate::archive::push`]). No sound object can be the one
//!   replaced, because the replacement holds the same content. Object stores write objects
//!   whole, so there this never happens, and a bucket policy that refuses it costs nothing.
//!
//! - deletes of a manifest this very wrapper created (in this process, and not there before):
//!   a backup whose lease lapsed while its manifest was written takes that manifest back
//!   ([`crate::backup::commit`]); left there, later backups took it as their reference and
//!   `expire` as the newest backup. Nothing written before, by this process or another, can
//!   go this way. (A bucket policy for append-only writers refuses these deletes too; the
//!   backup then says to verify that backup.)
//!
//! The same rules, as an S3 bucket policy for an append-only writer role, are in the README
//! ("Least-privilege credentials"): `s3:PutObject` only with `If-None-Match: *` except on
//! heads and leases, `s3:DeleteObject` only under `leases/`. The wrapper is what makes the
//! commands work under such a policy, and what enforces the rule where storage cannot
//! (local disks).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::repo::layout;
use crate::storage::{CreateOutcome, ObjectInfo, ObjectKey, ObjectVersion, Storage, StorageError};

/// Refuses deletes and overwrites except of leases and catalog heads.
#[derive(Debug)]
pub struct AppendOnly {
    inner: Arc<dyn Storage>,
    command: &'static str,
    /// What this wrapper created: it may take those back.
    created: std::sync::Mutex<std::collections::HashSet<ObjectKey>>,
}

impl AppendOnly {
    /// Wraps `inner` for `command` (named in refusals).
    pub fn new(inner: Arc<dyn Storage>, command: &'static str) -> Self {
        AppendOnly {
            inner,
            command,
            created: Default::default(),
        }
    }

    fn refuse(&self, op: &'static str, key: &ObjectKey) -> StorageError {
        StorageError::Permanent {
            op,
            key: key.to_string(),
            detail: format!(
                "refused: `{}` runs append-only and never deletes or overwrites repository objects \
                 (only expire, gc and key commands do); this is a bug in pgcairn, please report it",
                self.command
            ),
        }
    }
}

/// A backup's manifest (`clusters/<c>/backups/<id>/manifest`).
fn is_manifest(key: &ObjectKey) -> bool {
    key.as_str()
        .strip_prefix("clusters/")
        .and_then(|rest| rest.split_once("/backups/"))
        .is_some_and(|(_, id)| {
            id.strip_suffix("/manifest")
                .is_some_and(|i| !i.contains('/'))
        })
}

#[async_trait]
impl crate::storage::StorageWrapper for AppendOnly {
    fn inner(&self) -> &dyn Storage {
        &*self.inner
    }

    async fn put_create(
        &self,
        key: &ObjectKey,
        data: Bytes,
    ) -> Result<CreateOutcome, StorageError> {
        if !is_manifest(key) {
            return self.inner.put_create(key, data).await;
        }
        // `Created` also answers a put of the bytes already there (a retry whose first try
        // landed): only a manifest that was not there before is this wrapper's to take back,
        // or a process could re-put any manifest it can read and then delete it.
        let was_there = match self.inner.head(key).await {
            Ok(_) => true,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(e),
        };
        let outcome = self.inner.put_create(key, data).await?;
        if outcome == CreateOutcome::Created && !was_there {
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone());
        }
        Ok(outcome)
    }

    async fn put_swap(
        &self,
        key: &ObjectKey,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion, StorageError> {
        if layout::is_lease(key)
            || layout::parse_catalog_head(key.as_str()).is_some()
            || layout::parse_cluster_status(key.as_str()).is_some()
            || (expected.is_some() && layout::is_wal_data(key.as_str()))
        {
            return self.inner.put_swap(key, data, expected).await;
        }
        Err(self.refuse("overwrite", key))
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        self.inner.list_after(prefix, after).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let ours = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key);
        if layout::is_lease(key) || ours {
            return self.inner.delete(key).await;
        }
        Err(self.refuse("delete", key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[tokio::test]
    async fn deletes_and_overwrites_are_refused_except_leases_and_heads() {
        let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let s = AppendOnly::new(mem.clone(), "archive-push");
        let wal = ObjectKey::new("clusters/main/wal/00000001/000000010000000000000001");
        s.put_create(&wal, Bytes::from_static(b"x")).await.unwrap();
        let err = s.delete(&wal).await.unwrap_err().to_string();
        assert!(
            err.contains("archive-push") && err.contains(wal.as_str()),
            "{err}"
        );
        assert!(mem.head(&wal).await.is_ok(), "still there");
        let v = mem.get_versioned(&wal).await.unwrap().1;
        assert!(s
            .put_swap(&wal, Bytes::from_static(b"y"), Some(&v))
            .await
            .is_err());
        assert!(s
            .put_swap(&ObjectKey::new("config"), Bytes::new(), None)
            .await
            .is_err());
        assert!(s
            .put_swap(&ObjectKey::new("gc/state"), Bytes::new(), None)
            .await
            .is_err());
        assert!(s
            .put_swap(&ObjectKey::new("clusters/a/b/head"), Bytes::new(), None)
            .await
            .is_err());
        let head = ObjectKey::new("clusters/main/head");
        s.put_swap(&head, Bytes::from_static(b"h"), None)
            .await
            .unwrap();
        let lease = ObjectKey::new("leases/backup-main-1");
        s.put_swap(&lease, Bytes::from_static(b"l"), None)
            .await
            .unwrap();
        s.delete(&lease).await.unwrap();
        // The cluster's status object may be swapped; the repository's (gc's) may not, and an
        // audit record is create-only like everything else.
        let status = crate::repo::layout::cluster_status("main");
        s.put_swap(&status, Bytes::from_static(b"s"), None)
            .await
            .unwrap();
        for refused in [
            crate::repo::layout::repository_status(),
            ObjectKey::new("status/cluster/a/b"),
            crate::repo::layout::audit_record(1, 2),
        ] {
            assert!(
                s.put_swap(&refused, Bytes::new(), None).await.is_err(),
                "{refused}"
            );
        }
        assert!(s.delete(&status).await.is_err());
        // A WAL data object: only swapped against a version read, never deleted.
        let data = ObjectKey::new(format!(
            "clusters/main/waldata/00000001/000000010000000000000001.{}",
            "ab".repeat(32)
        ));
        s.put_create(&data, Bytes::from_static(b"torn"))
            .await
            .unwrap();
        assert!(s.put_swap(&data, Bytes::new(), None).await.is_err());
        let v = mem.get_versioned(&data).await.unwrap().1;
        s.put_swap(&data, Bytes::from_static(b"whole"), Some(&v))
            .await
            .unwrap();
        assert!(s.delete(&data).await.is_err());
    }

    /// What this wrapper created it may take back; what was there before, or another
    /// wrapper (process) wrote, it may not.
    #[tokio::test]
    async fn only_what_it_created_itself_may_be_taken_back() {
        let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let before = ObjectKey::new("clusters/main/backups/20261101-000000F/manifest");
        mem.put_create(&before, Bytes::from_static(b"old"))
            .await
            .unwrap();
        let s = AppendOnly::new(mem.clone(), "backup");
        // Already there (the same bytes put again answer `Created`): not its to delete.
        s.put_create(&before, Bytes::from_static(b"old"))
            .await
            .unwrap();
        assert!(s.delete(&before).await.is_err());
        let mine = ObjectKey::new("clusters/main/backups/20261102-000000F/manifest");
        s.put_create(&mine, Bytes::from_static(b"new"))
            .await
            .unwrap();
        let other = AppendOnly::new(mem.clone(), "backup");
        assert!(other.delete(&mine).await.is_err(), "another process's");
        s.delete(&mine).await.unwrap();
        assert!(mem.head(&mine).await.is_err());
        assert!(mem.head(&before).await.is_ok());
    }
}
