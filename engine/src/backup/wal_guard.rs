//! A running backup and an `expire` on another host: how the backup's WAL is kept.
//!
//! `expire` removes the WAL below the start of the backups it retains. A backup still running
//! is not among them, and its start is not always above theirs: a backup from a standby
//! starts at the standby's last restartpoint, which lags behind a backup just taken on the
//! primary when the standby's replay lags (a delayed or paused standby); a backup on a
//! timeline that a point-in-time restore forked starts below the old timeline's backups. An
//! `expire` that removed such a backup's WAL between the backup's check that its WAL is
//! archived and the commit of its manifest left a backup recorded as good that no restore
//! could make consistent.
//!
//! Two steps close that. `expire` holds the cluster's exclusive lease
//! (`leases/expire-<cluster>`) and reads the backup leases under it.
//! 1. Once `pg_backup_start` has returned, the backup records its start in its own lease
//!    ([`crate::lease::Lease::record_start`]) and, once that write has landed, notes who holds
//!    the expire lease at that moment ([`record_start`]). Every `expire` that takes the lease
//!    after that reads the start and keeps the WAL from it.
//! 2. Before it checks that its WAL is archived, the backup waits for that holder, if any, to
//!    be gone ([`before_wal_check`]): an `expire` that may have read the leases before the
//!    start landed has then ended, so whatever it removed is missing at the check, and the
//!    backup fails (from a standby, it first carries the segments from `pg_wal`) instead of
//!    committing. A later holder saw the start and is not waited for.
//!
//! Step 2 applies only when an `expire` could cut above the start at all: `expire` keeps the
//! newest backup and the WAL from its start, so a start at or above the start of every stored
//! backup (the catalog head's, and any manifest the head does not list: a crash between a
//! manifest and its head update, an older version) needs nothing, which is every backup of a
//! primary but after a fork. For the same reason a start that did not land by then fails only
//! such a backup. `pin` and recovery holds take the same lease for a moment and are waited for
//! like an `expire`.
//!
//! Every host running `expire` must know the recorded start: an `expire` from before
//! 2026-12-07 ignores it (and a backup from before then records none).

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseBody};
use crate::repo::Repository;
use crate::types::Lsn;

/// What step 1 left for step 2 (see the module docs).
#[derive(Debug)]
pub struct StartRecord {
    /// The start landed in the lease.
    landed: bool,
    /// Who held the expire lease once it had.
    expire_then: Option<LeaseBody>,
}

/// Step 1: records `start` in the backup's `lease` and, once that landed, who holds the
/// cluster's expire lease.
pub async fn record_start(
    repo: &Repository,
    lease: &Lease,
    cluster: &str,
    start: Lsn,
) -> Result<StartRecord> {
    let landed = lease.record_start(start).await;
    let expire_then = match landed {
        true => crate::lease::exclusive_holder(repo, &expire_lease(cluster)).await?,
        false => None,
    };
    Ok(StartRecord {
        landed,
        expire_then,
    })
}

/// Step 2: before the WAL check of a backup that started at `start`, waits (up to `wait`)
/// until whoever held the expire lease when the start landed is gone, if an `expire` could
/// remove WAL from `start` at all. Fails, naming the holder, when it stays longer, and when
/// the start never landed.
pub async fn before_wal_check(
    repo: &Repository,
    lease: &Lease,
    cluster: &str,
    (start, seg_size): (Lsn, u64),
    record: StartRecord,
    wait: Duration,
) -> Result<()> {
    let Some(newest) = newest_stored_start(repo, cluster).await? else {
        // Nothing stored: an expire has no backup to keep WAL for and removes none.
        return Ok(());
    };
    if newest.segment_no(seg_size) <= start.segment_no(seg_size) {
        return Ok(());
    }
    let below = format!(
        "this backup starts at {start}, in a segment below the start of a backup already stored ({newest})"
    );
    let expire_then = if record.landed {
        record.expire_then
    } else if lease.start_landed(6).await {
        crate::lease::exclusive_holder(repo, &expire_lease(cluster)).await?
    } else {
        return Err(Error::Conflict(format!(
            "{below}, and its start could not be recorded in its lease (the repository did not take the \
             write), so an expire on another host could remove the WAL it needs. No manifest was written; \
             take the backup again once the repository answers"
        )));
    };
    let Some(then) = expire_then else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match crate::lease::exclusive_holder(repo, &expire_lease(cluster)).await? {
            Some(now) if now == then => {}
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{below}, and the expire of cluster {cluster:?} (or pin, or recovery hold, under the same lease) \
                 running on host {} (pid {}, since {}) when this backup's start was recorded, which may remove WAL \
                 from there, did not end within {}s. No manifest was written: take the backup again once it has \
                 ended, or raise backup.archive_timeout",
                then.host,
                then.pid,
                crate::store::Timestamp::from_unix_seconds(then.started),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn expire_lease(cluster: &str) -> String {
    format!("expire-{cluster}")
}

/// The highest start of the cluster's stored backups: those the catalog head records, and any
/// manifest it does not list.
async fn newest_stored_start(repo: &Repository, cluster: &str) -> Result<Option<Lsn>> {
    let head = crate::store::head::read(repo, cluster)
        .await?
        .map(|(h, _)| h);
    let mut newest = head
        .as_ref()
        .and_then(|h| h.backups.values().map(|b| b.start_lsn).max());
    let recorded: HashSet<&str> = head
        .iter()
        .flat_map(|h| h.backups.keys().map(|id| id.as_str()))
        .collect();
    for id in crate::store::manifest::list_ids(repo, cluster).await? {
        if !recorded.contains(id.as_str()) {
            let m = crate::store::manifest::load_head(repo, cluster, &id).await?;
            newest = newest.max(Some(m.start_lsn));
        }
    }
    Ok(newest)
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

    async fn backup_lease(repo: &Repository, id: &str) -> Lease {
        crate::lease::acquire_backup(repo, "main", id, Duration::ZERO)
            .await
            .unwrap()
    }

    /// A backup starting in a segment below the newest stored backup's start waits for the
    /// expire that was running when its start landed (and fails, naming it, when that expire
    /// outlasts the wait); one starting in that segment or above does not wait, and neither
    /// does one whose start landed before the expire began.
    #[tokio::test]
    async fn a_backup_below_the_newest_start_waits_for_the_expire_running_when_its_start_landed() {
        let (_mem, repo) = memory_repo().await;
        record_backup_starting_at(&repo, Lsn(9 * SEG + 0x28)).await;
        let short = Duration::from_millis(300);
        let below = Lsn(5 * SEG + 0x28);

        // The start lands first, then an expire begins: it reads the start; no wait.
        let lease = backup_lease(&repo, "20261121-000000F").await;
        let record = record_start(&repo, &lease, "main", below).await.unwrap();
        let expire = crate::lease::acquire_exclusive(&repo, "expire-main", "main", short)
            .await
            .unwrap();
        before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .unwrap();
        lease.release().await;

        // An expire runs when the start lands: the backup below waits for it.
        let lease = backup_lease(&repo, "20261122-000000F").await;
        let record = record_start(&repo, &lease, "main", below).await.unwrap();
        let e = before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .expect_err("the expire still runs");
        assert!(
            e.to_string().contains("did not end within") && e.to_string().contains("0/5000028"),
            "{e}"
        );
        // In the newest start's segment, or above it: no expire cuts there, so no wait.
        for start in [Lsn(9 * SEG), Lsn(9 * SEG + 0x28), Lsn(10 * SEG)] {
            let record = record_start(&repo, &lease, "main", start).await.unwrap();
            before_wal_check(&repo, &lease, "main", (start, SEG), record, short)
                .await
                .unwrap();
        }
        // Once that expire has ended, the backup below goes on.
        let record = record_start(&repo, &lease, "main", below).await.unwrap();
        let waiting = tokio::spawn({
            let repo = repo.clone();
            async move {
                let r = before_wal_check(
                    &repo,
                    &lease,
                    "main",
                    (below, SEG),
                    record,
                    Duration::from_secs(30),
                )
                .await;
                lease.release().await;
                r
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "it waits while the expire runs");
        expire.release().await;
        waiting.await.unwrap().unwrap();
    }

    /// A manifest the catalog head does not list (a crash between the two) still counts as
    /// stored: a backup below its start waits for a running expire.
    #[tokio::test]
    async fn a_manifest_missing_from_the_head_counts_as_stored() {
        let (_mem, repo) = memory_repo().await;
        let short = Duration::from_millis(300);
        let below = Lsn(5 * SEG + 0x28);
        let lease = backup_lease(&repo, "20261122-000000F").await;
        let expire = crate::lease::acquire_exclusive(&repo, "expire-main", "main", short)
            .await
            .unwrap();
        // Nothing stored: nothing to wait for.
        let record = record_start(&repo, &lease, "main", below).await.unwrap();
        before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .unwrap();
        crate::store::manifest::save(
            &repo,
            &crate::test_support::manifest(
                "20261121-000000F",
                "0/9000028",
                "0/9000100",
                "2026-11-21T00:00:00Z",
                &[],
            ),
        )
        .await
        .unwrap();
        let record = record_start(&repo, &lease, "main", below).await.unwrap();
        before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .expect_err("the manifest's start is above");
        expire.release().await;
        lease.release().await;
    }
}
