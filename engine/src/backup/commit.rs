//! Writing a backup's manifest under its lease.
//!
//! gc on other hosts judges a running backup by its lease alone: a lease whose refreshes
//! stopped landing looks dead, and gc may then sweep packs the backup deduplicated against.
//! So the lease is checked before the manifest is written (no manifest for a backup whose
//! lease lapsed) and again after: writing a large manifest to a struggling object store can
//! itself outlast a lease. A lapse during the write leaves a manifest that may reference
//! swept packs, and a later incremental would take it as its reference and copy the block
//! lists of unchanged files without reading them. So that manifest is removed again before
//! the backup fails, also when the write itself reported an error (a timeout on a struggling
//! store may come after the object landed). It was not recorded in the catalog head yet, so
//! the audit does not report it missing. The append-only wrapper every backup runs behind
//! lets it take back a manifest it created itself ([`crate::store::append_only`]); only where
//! the storage refuses the delete (a bucket policy for append-only writers, Object Lock) does
//! it stay, and the error says to verify it.
//!
//! This narrows the window, it does not close it: backups and restores find manifests by
//! listing, so one that lists the manifest between its write and its removal may still take
//! it (a backup then fails to load its reference and says to run again; one that had loaded it
//! already, or a restore, reads blocks that may be gone and fails on them, or `verify` finds
//! them missing). Writing under a staging name and publishing after the check would close it.

use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::repo::Repository;
use crate::store::manifest::{self, FileEntry, Manifest};

/// Writes `m` with its `files`, under `lease`; see the module docs.
pub async fn write_manifest(
    repo: &Repository,
    lease: &Lease,
    m: &Manifest,
    files: impl Iterator<Item = Result<FileEntry>> + Send + 'static,
) -> Result<()> {
    lease.ensure_held().map_err(|e| {
        Error::Conflict(format!(
            "{e}; no manifest was written for backup {}. Take the backup again (and look at why the \
             repository stopped answering)",
            m.id
        ))
    })?;
    let saved = manifest::save_streamed(repo, m, files).await;
    let Err(lapsed) = lease.ensure_held() else {
        return saved;
    };
    if let Err(e) = saved {
        // The write may have landed all the same: it must not stay either.
        let _ = manifest::delete(repo, &m.cluster, &m.id).await;
        return Err(Error::Conflict(format!(
            "{lapsed} while the manifest of backup {} was written, and the write failed ({e}); \
             any part of it that landed was removed. Take the backup again (and look at why the \
             repository stopped answering)",
            m.id
        )));
    }
    Err(Error::Conflict(
        match manifest::delete(repo, &m.cluster, &m.id).await {
            Ok(()) => format!(
                "{lapsed} while the manifest of backup {} was written: gc elsewhere may have \
                 removed packs it uses, so the manifest was removed again and no backup was \
                 recorded. Take the backup again (and look at why the repository stopped \
                 answering)",
                m.id
            ),
            Err(e) => format!(
                "{lapsed} while the manifest of backup {} was written, and removing it again \
                 failed ({e}): check the repository with `pgcairn verify --read-data` before \
                 relying on that backup",
                m.id
            ),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::lease::acquire_backup;
    use crate::test_support::{manifest_of, LeaseFaults};
    use std::sync::Arc;
    use std::time::Duration;

    async fn written(repo: &Repository) -> Vec<String> {
        manifest::list_ids(repo, "main").await.unwrap()
    }

    /// The test repository through storage where every lease refresh fails and creating a
    /// manifest takes 80 s (and, with `time_out`, then reports a timeout although it landed).
    async fn slow_manifests(
        mem: Arc<crate::storage::MemoryStorage>,
        time_out: bool,
    ) -> (Arc<LeaseFaults>, Repository) {
        let faults = Arc::new(LeaseFaults {
            inner: mem,
            fail_swaps: 1000.into(),
            slow_creates: Some(("/manifest".into(), Duration::from_secs(80))),
            slow_creates_time_out: time_out,
            ..Default::default()
        });
        let repo = crate::test_support::open_with(faults.clone()).await;
        (faults, repo)
    }

    /// Backup `id`'s manifest written under its own lease, released afterwards.
    async fn commit(repo: &Repository, id: &str) -> Result<()> {
        let lease = acquire_backup(repo, "main", id, Duration::ZERO)
            .await
            .unwrap();
        let r = write_manifest(repo, &lease, &manifest_of(id, &[]), std::iter::empty()).await;
        lease.release().await;
        r
    }

    /// The manifest write takes 80 s. With every lease refresh failing meanwhile, the lease
    /// lapses (70 s) during the write: the manifest is removed again. With refreshes landing,
    /// the same slow write commits the backup.
    #[tokio::test(start_paused = true)]
    async fn a_lease_lapsing_while_the_manifest_is_written_removes_the_manifest_again() {
        let (mem, _) = memory_repo().await;
        let (faults, repo) = slow_manifests(mem.clone(), false).await;
        let id = "20261124-000000F";
        let err = commit(&repo, id).await.unwrap_err().to_string();
        assert!(
            err.contains("was removed again") && err.contains(id),
            "{err}"
        );
        assert!(written(&repo).await.is_empty(), "the manifest stayed");

        // The same, the write reporting a timeout after it landed.
        let (_, timing_out) = slow_manifests(mem, true).await;
        let err = commit(&timing_out, "20261124-000050F")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the write failed"), "{err}");
        assert!(
            written(&repo).await.is_empty(),
            "the landed manifest stayed"
        );

        faults
            .fail_swaps
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let id = "20261124-000100F";
        commit(&repo, id).await.unwrap();
        assert_eq!(written(&repo).await, vec![id.to_string()]);
    }

    /// The same through the append-only wrapper every `backup` runs behind: it refused the
    /// delete, so the manifest stayed, and later backups took it as their reference.
    #[tokio::test(start_paused = true)]
    async fn an_append_only_backup_takes_back_the_manifest_it_wrote_when_its_lease_lapsed() {
        let (mem, _) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem,
            fail_swaps: 1000.into(),
            slow_creates: Some(("/manifest".into(), Duration::from_secs(80))),
            ..Default::default()
        });
        let repo = crate::test_support::open_with(Arc::new(
            crate::store::append_only::AppendOnly::new(faults, "backup"),
        ))
        .await;
        let id = "20261124-000000F";
        let err = commit(&repo, id).await.unwrap_err().to_string();
        assert!(err.contains("was removed again"), "{err}");
        assert!(written(&repo).await.is_empty(), "the manifest stayed");
    }
}
