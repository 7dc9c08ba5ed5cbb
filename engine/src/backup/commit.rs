//! Writing a backup's manifest under its lease.
//!
//! gc on other hosts judges a running backup by its lease alone: a lease whose refreshes
//! stopped landing looks dead, and gc may then sweep packs the backup deduplicated against.
//! So the lease is checked before the manifest is written (no manifest for a backup whose
//! lease lapsed) and again after: writing a large manifest to a struggling object store can
//! itself outlast a lease. A lapse during the write leaves a manifest that may reference
//! swept packs, and a later incremental would take it as its reference and copy the block
//! lists of unchanged files without reading them. So that manifest is removed again before
//! the backup fails (it was never recorded in the catalog head, so nothing else notices it
//! going); only where the repository refuses the delete (append-only access, Object Lock) does
//! it stay, and the error says to verify it.

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
    manifest::save_streamed(repo, m, files).await?;
    let Err(lapsed) = lease.ensure_held() else {
        return Ok(());
    };
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

    /// The manifest write takes 80 s. With every lease refresh failing meanwhile, the lease
    /// lapses (70 s) during the write: the manifest is removed again. With refreshes landing,
    /// the same slow write commits the backup.
    #[tokio::test(start_paused = true)]
    async fn a_lease_lapsing_while_the_manifest_is_written_removes_the_manifest_again() {
        let (mem, _) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            fail_swaps: 1000.into(),
            slow_creates: Some(("/manifest".into(), Duration::from_secs(80))),
            ..Default::default()
        });
        let repo = crate::test_support::open_with(faults.clone()).await;
        let id = "20261124-000000F";
        let lease = acquire_backup(&repo, "main", id, Duration::ZERO)
            .await
            .unwrap();
        let err = write_manifest(&repo, &lease, &manifest_of(id, &[]), std::iter::empty())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("was removed again") && err.contains(id),
            "{err}"
        );
        assert!(written(&repo).await.is_empty(), "the manifest stayed");
        lease.release().await;

        faults
            .fail_swaps
            .store(0, std::sync::atomic::Ordering::SeqCst);
        let id = "20261124-000100F";
        let lease = acquire_backup(&repo, "main", id, Duration::ZERO)
            .await
            .unwrap();
        write_manifest(&repo, &lease, &manifest_of(id, &[]), std::iter::empty())
            .await
            .unwrap();
        assert_eq!(written(&repo).await, vec![id.to_string()]);
        lease.release().await;
    }
}
