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
//! The common case costs one write and one read: the start lands at once and no one holds the
//! expire lease then, so step 2 has nothing to do. Otherwise step 2 applies only when an
//! `expire` could cut above the start at all: `expire` keeps the newest backup and the WAL
//! from its start, so a start at or above the start of every stored backup needs nothing
//! (the catalog head's backups are looked at first, then any manifest the head does not list:
//! a crash between a manifest and its head update, an older version). That is every backup of
//! a primary but after a fork. For the same reason what step 1 could not learn (a start that
//! has not landed yet, an expire lease that could not be read) fails only a backup below that
//! start, and only if step 2 cannot learn it either. The holder's lease says what it does
//! ([`crate::lease::Purpose`]): a `pin` and a recovery hold take the expire lease for a
//! moment, a re-encryption (`key rotate --reencrypt`) for its whole run, and none of them
//! removes WAL, so only an `expire` is waited for (and a holder from an older version, whose
//! lease does not say).
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
pub enum StartRecord {
    /// The start landed, and then this was the live holder of the expire lease (`None`: no
    /// one held it).
    Landed(Option<Box<LeaseBody>>),
    /// The start landed, but who held the expire lease could not be read then: step 2 looks
    /// again (a holder found later is waited for too, which is safe, only maybe longer).
    LandedHolderUnknown,
    /// The start has not landed yet.
    NotLanded,
}

/// Step 1: records `start` in the backup's `lease` and, once that landed, who holds the
/// cluster's expire lease. Never fails: what it could not learn, step 2 settles, and only
/// for a backup that needs it.
pub async fn record_start(
    repo: &Repository,
    lease: &Lease,
    cluster: &str,
    start: Lsn,
) -> StartRecord {
    if !lease.record_start(start).await {
        return StartRecord::NotLanded;
    }
    match crate::lease::exclusive_holder(repo, &expire_lease(cluster)).await {
        Ok(holder) => StartRecord::Landed(holder.map(Box::new)),
        Err(e) => {
            tracing::debug!("reading the expire lease after recording this backup's start: {e}");
            StartRecord::LandedHolderUnknown
        }
    }
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
    // A pin, a hold or a re-encryption removes no WAL; whoever takes the lease after it reads
    // this backup's start.
    let removes_no_wal = |h: &LeaseBody| h.purpose.is_some_and(|p| !p.may_remove_wal());
    if let StartRecord::Landed(holder) = &record {
        if holder.as_deref().is_none_or(removes_no_wal) {
            // No one that removes WAL held the lease when the start landed: every later
            // holder reads it.
            return Ok(());
        }
    }
    let Some(newest) =
        stored_start_above(repo, cluster, start.segment_no(seg_size) + 1, seg_size).await?
    else {
        // Every stored backup starts in this segment or below (or none is stored): no expire
        // cuts above this start.
        return Ok(());
    };
    let below = format!(
        "this backup starts at {start}, in a segment below the start of a backup already stored ({newest})"
    );
    let deadline = tokio::time::Instant::now() + wait;
    let then = match record {
        StartRecord::Landed(holder) => holder,
        StartRecord::NotLanded if !lease.start_landed(6).await => {
            return Err(Error::Conflict(format!(
                "{below}, and its start could not be recorded in its lease (the repository did not take the \
                 write, or the lease no longer holds this backup's record), so an expire on another host could \
                 remove the WAL it needs. No manifest was written; take the backup again once the repository \
                 answers"
            )));
        }
        // Landed now (or landed with the holder unread): whoever holds the lease now is
        // waited for; one that held it at the landing and is gone has ended.
        StartRecord::NotLanded | StartRecord::LandedHolderUnknown => None,
    };
    let then = match then {
        Some(h) => *h,
        None => match holder_now(repo, cluster, deadline, &below).await? {
            Some(h) => h,
            None => return Ok(()),
        },
    };
    if removes_no_wal(&then) {
        return Ok(());
    }
    loop {
        match holder_now(repo, cluster, deadline, &below).await? {
            Some(now) if now == then => {}
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{below}, and the holder of the expire lease of cluster {cluster:?} when this backup's start was \
                 recorded ({}) on host {} (pid {}, since {}), which may remove WAL from there, did not end within \
                 {}s. No manifest was written: take the backup again once it has ended, or raise \
                 backup.archive_timeout",
                crate::lease::holder_activity(&expire_lease(cluster), &then),
                then.host,
                then.pid,
                crate::store::Timestamp::from_unix_seconds(then.started),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The live holder of the cluster's expire lease now; a read that fails is tried again each
/// second until `deadline`, then fails naming `below` (the backup cannot tell whether an
/// expire removes its WAL).
async fn holder_now(
    repo: &Repository,
    cluster: &str,
    deadline: tokio::time::Instant,
    below: &str,
) -> Result<Option<LeaseBody>> {
    loop {
        match crate::lease::exclusive_holder(repo, &expire_lease(cluster)).await {
            Ok(h) => return Ok(h),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Conflict(format!(
                    "{below}, and the expire lease of cluster {cluster:?} could not be read ({e}), so an expire \
                     on another host may remove the WAL it needs. No manifest was written"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn expire_lease(cluster: &str) -> String {
    format!("expire-{cluster}")
}

/// The start of a stored backup in segment `from_seg` or above, if any: the catalog head's
/// backups first, then manifests the head does not list (a crash between a manifest and its
/// head update, an older version), stopping at the first found. A manifest deleted since the
/// listing (an expire removing it) is skipped.
async fn stored_start_above(
    repo: &Repository,
    cluster: &str,
    from_seg: u64,
    seg_size: u64,
) -> Result<Option<Lsn>> {
    let above = |l: Lsn| l.segment_no(seg_size) >= from_seg;
    let head = crate::store::head::read(repo, cluster)
        .await?
        .map(|(h, _)| h);
    if let Some(l) = head
        .iter()
        .flat_map(|h| h.backups.values().map(|b| b.start_lsn))
        .filter(|l| above(*l))
        .max()
    {
        return Ok(Some(l));
    }
    let recorded: HashSet<&str> = head
        .iter()
        .flat_map(|h| h.backups.keys().map(|id| id.as_str()))
        .collect();
    // Newest first: a backup above this start is most likely among the latest.
    for id in crate::store::manifest::list_ids(repo, cluster)
        .await?
        .iter()
        .rev()
    {
        if recorded.contains(id.as_str()) {
            continue;
        }
        match crate::store::manifest::load_head(repo, cluster, id).await {
            Ok(m) if above(m.start_lsn) => return Ok(Some(m.start_lsn)),
            Ok(_) => {}
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::lease::Purpose;
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
        let record = record_start(&repo, &lease, "main", below).await;
        let expire =
            crate::lease::acquire_exclusive(&repo, "expire-main", "main", Purpose::Expire, short)
                .await
                .unwrap();
        before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .unwrap();
        lease.release().await;

        // An expire runs when the start lands: the backup below waits for it.
        let lease = backup_lease(&repo, "20261122-000000F").await;
        let record = record_start(&repo, &lease, "main", below).await;
        let e = before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .expect_err("the expire still runs");
        assert!(
            e.to_string().contains("did not end within") && e.to_string().contains("0/5000028"),
            "{e}"
        );
        // In the newest start's segment, or above it: no expire cuts there, so no wait.
        for start in [Lsn(9 * SEG), Lsn(9 * SEG + 0x28), Lsn(10 * SEG)] {
            let record = record_start(&repo, &lease, "main", start).await;
            before_wal_check(&repo, &lease, "main", (start, SEG), record, short)
                .await
                .unwrap();
        }
        // Once that expire has ended, the backup below goes on.
        let record = record_start(&repo, &lease, "main", below).await;
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

    /// Only an `expire` removes WAL: a backup below the newest stored start does not wait for
    /// a pin, a recovery hold or a re-encryption that held the expire lease when its start
    /// landed. A holder whose lease does not say what it does (an older version) is waited
    /// for, and named as possibly any of them.
    #[tokio::test]
    async fn a_backup_waits_only_for_a_holder_that_may_remove_wal() {
        let (_mem, repo) = memory_repo().await;
        record_backup_starting_at(&repo, Lsn(9 * SEG + 0x28)).await;
        let short = Duration::from_millis(300);
        let below = Lsn(5 * SEG + 0x28);
        let lease = backup_lease(&repo, "20261122-000000F").await;
        for purpose in [Purpose::Pin, Purpose::Hold, Purpose::Reencrypt] {
            let holder =
                crate::lease::acquire_exclusive(&repo, "expire-main", "main", purpose, short)
                    .await
                    .unwrap();
            let record = record_start(&repo, &lease, "main", below).await;
            assert!(
                matches!(&record, StartRecord::Landed(Some(h)) if h.purpose == Some(purpose)),
                "{record:?}"
            );
            before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
                .await
                .unwrap_or_else(|e| panic!("{purpose:?}: {e}"));
            holder.release().await;
        }
        // The lease of an older version's holder: no purpose.
        let key = crate::repo::layout::exclusive_lease("expire-main");
        let old = crate::lease::my_body("expire".into(), "main", "");
        let raw =
            crate::store::sealed::seal(&repo, crate::store::sealed::DocKind::Lease, &key, &old);
        repo.storage().put_create(&key, raw).await.unwrap();
        let record = record_start(&repo, &lease, "main", below).await;
        let e = before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .expect_err("an older holder may be an expire");
        assert!(
            e.to_string().contains("did not end within")
                && e.to_string().contains("of an older pgcairn"),
            "{e}"
        );
        lease.release().await;
    }

    /// A manifest the catalog head does not list (a crash between the two) still counts as
    /// stored: a backup below its start waits for a running expire.
    #[tokio::test]
    async fn a_manifest_missing_from_the_head_counts_as_stored() {
        let (_mem, repo) = memory_repo().await;
        let short = Duration::from_millis(300);
        let below = Lsn(5 * SEG + 0x28);
        let lease = backup_lease(&repo, "20261122-000000F").await;
        let expire =
            crate::lease::acquire_exclusive(&repo, "expire-main", "main", Purpose::Expire, short)
                .await
                .unwrap();
        // Nothing stored: nothing to wait for.
        let record = record_start(&repo, &lease, "main", below).await;
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
        let record = record_start(&repo, &lease, "main", below).await;
        before_wal_check(&repo, &lease, "main", (below, SEG), record, short)
            .await
            .expect_err("the manifest's start is above");
        expire.release().await;
        lease.release().await;
    }
}
