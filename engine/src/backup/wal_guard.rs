//! A running backup and an `expire` on another host: how the backup's WAL is kept.
//!
//! `expire` removes the WAL below the start of the backups it retains. A backup still running
//! is not among them, and its start is not always above theirs: a backup from a standby
//! starts at the standby's last restartpoint, which can be older than the start of a backup
//! just taken on the primary; a backup on a timeline that a point-in-time restore forked
//! starts below the old timeline's backups. An `expire` that removed such a backup's WAL
//! between the backup's check that its WAL is archived and the commit of its manifest left a
//! backup recorded as good that no restore could make consistent.
//!
//! Two steps close that, both against the cluster's expire lease (`leases/expire-<cluster>`,
//! which one `expire` at a time holds, and under which it reads the backup leases):
//! 1. Once `pg_backup_start` has returned, the backup records its start in its own lease and
//!    waits for that write to land ([`crate::lease::Lease::record_start`]). Every `expire`
//!    that reads the leases after that keeps the WAL from that start.
//! 2. Before it checks that its WAL is archived, the backup waits for a running `expire` of its
//!    cluster to end ([`wait_for_running_expire`]). An `expire` that read the leases before
//!    step 1 has then ended, so whatever it removed is missing at the check: the backup fails
//!    (from a standby, it first carries the segments from `pg_wal`) instead of committing.
//!
//! Step 2 waits only when an `expire` could cut above the start at all: `expire` always keeps
//! the newest backup and the WAL from its start, so a start at or above the start of every
//! backup the catalog head records is safe (a backup of a primary, not after a fork). A
//! missing head (no backup recorded yet) waits too: it costs a look when nothing runs.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::types::Lsn;

/// Waits, for up to `wait`, for a running `expire` of `cluster` to end when one could remove
/// WAL from `start` on (see the module docs); fails naming it when it does not end in time.
pub async fn wait_for_running_expire(
    repo: &Repository,
    cluster: &str,
    start: Lsn,
    seg_size: u64,
    wait: Duration,
) -> Result<()> {
    let start_seg = start.segment_no(seg_size);
    let newest_start = crate::store::head::read(repo, cluster)
        .await?
        .and_then(|(h, _)| h.backups.values().map(|b| b.start_lsn.0).max());
    if newest_start.is_some_and(|s| Lsn(s).segment_no(seg_size) <= start_seg) {
        return Ok(());
    }
    let name = format!("expire-{cluster}");
    crate::lease::exclusive(repo, &name, cluster, wait, async { Ok(()) })
        .await
        .map_err(|e| match e {
            Error::Conflict(why) => Error::Timeout(format!(
                "this backup starts at {start}, below the start of a backup already stored, and an expire of \
                 cluster {cluster:?} that may remove WAL from there did not end within {}s ({why}). No manifest \
                 was written: take the backup again once the expire has ended",
                wait.as_secs()
            )),
            other => other,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::store::head::HeadBackup;
    use crate::store::ids::BackupId;
    use crate::store::Timestamp;

    const SEG: u64 = 16 << 20;

    async fn record_backup_starting_at(repo: &Repository, start: Lsn) {
        crate::store::head::update(repo, "main", SEG, |h| {
            h.backups.insert(
                BackupId::new("20261120-000000F"),
                HeadBackup {
                    timeline: 1,
                    start_lsn: start,
                    stop_lsn: Lsn(start.0 + 0x100),
                    stop_time: Timestamp::now(),
                },
            );
            true
        })
        .await
        .unwrap();
    }

    /// A backup starting below the newest stored backup's start waits for the running expire
    /// (and fails, naming it, when the expire outlasts the wait); one starting above it does
    /// not wait.
    #[tokio::test]
    async fn a_backup_below_the_newest_start_waits_for_a_running_expire() {
        let (_mem, repo) = memory_repo().await;
        record_backup_starting_at(&repo, Lsn(9 * SEG + 0x28)).await;
        let expire =
            crate::lease::acquire_exclusive(&repo, "expire-main", "main", Duration::from_secs(1))
                .await
                .unwrap();
        let short = Duration::from_millis(300);
        let below = Lsn(5 * SEG + 0x28);
        let e = wait_for_running_expire(&repo, "main", below, SEG, short)
            .await
            .expect_err("an expire runs");
        assert!(
            e.to_string().contains("did not end within") && e.to_string().contains("0/5000028"),
            "{e}"
        );
        // Above the newest start (or at it): no expire can cut there, so no wait.
        for start in [Lsn(9 * SEG + 0x28), Lsn(10 * SEG)] {
            wait_for_running_expire(&repo, "main", start, SEG, short)
                .await
                .unwrap();
        }
        // Once the expire has ended, the backup below goes on.
        let waiting = tokio::spawn({
            let repo = repo.clone();
            async move {
                wait_for_running_expire(&repo, "main", below, SEG, Duration::from_secs(30)).await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "it waits while the expire runs");
        expire.release().await;
        waiting.await.unwrap().unwrap();
    }
}
