//! Recovery holds: a restore or a drill keeps `expire` away from the backup it restores and
//! the WAL after it, until its recovery can have finished.
//!
//! Why: a restore writes the files and exits; PostgreSQL then replays WAL, calling
//! `archive-get` for each segment, for minutes or hours. A nightly `backup` with
//! `retention.auto`, or a cron `expire`, may run meanwhile. When the restored backup was the
//! oldest kept one (a point-in-time recovery to a moment days ago is exactly that), expire
//! removed it and the WAL from its start to the next kept backup's, while the recovery was
//! still asking for it: `archive-get` then answered "not found", and PostgreSQL ended recovery
//! early (no target: promoted at an earlier point, silently) or stopped with FATAL after
//! hours of replay (a time target it can no longer reach). A drill of an old backup failed
//! the same way, reported as a failed restore.
//!
//! What: a hold is an object `clusters/<cluster>/holds/<nonce>`, sealed like a lease
//! ([`crate::lease`], kind `hold`; not under `leases/`, where earlier versions refuse to go
//! on past a kind they do not know), naming the backup, the host and process that took it, and
//! the time it ends. `expire` keeps every held backup and the WAL from its start onward
//! (whatever `pitr_window` says), and names the hold in its report. A hold ends by time, not
//! by heartbeat, since it must outlive the restore that took it: `restore` extends it every
//! [`EXTEND_EVERY`] while it runs and holds for `--hold` (24 hours by default) after it
//! finishes; a drill holds until it is done (it removes its hold then). Ended holds are
//! ignored, and removed by the next `expire` (read again first: one extended meanwhile stays).
//!
//! The race: a restore that chose its backup while an expire was deciding could lose it all
//! the same. So a hold is taken under the cluster's expire lease (as `pin` is: a running
//! expire is waited for), and the restore plans again after holding: a backup or WAL that
//! went before the hold is then reported as missing, before anything is written, as it would
//! be for a restore started a moment later.
//!
//! A hold is a courtesy, not a condition: a restore with read-only storage credentials (see
//! Security in the README) cannot write one, and goes on with a warning.

use std::time::Duration;

use crate::error::Result;
use crate::lease::{self, LeaseBody};
use crate::repo::{layout, Repository};
use crate::storage::ObjectKey;
use crate::store::sealed::{self, DocKind};
use crate::store::Timestamp;

/// How long a restore waits for a running expire before giving up on its hold (an expire
/// takes seconds; one deleting a long archive from object storage, minutes).
pub const EXPIRE_WAIT: Duration = Duration::from_secs(300);

/// How often a restore extends its hold while it runs (at most: half the hold if shorter).
pub const EXTEND_EVERY: Duration = Duration::from_secs(600);

/// Longest hold (`restore --hold`): ten years, far from overflowing a timestamp.
pub const MAX_HOLD: Duration = Duration::from_secs(3650 * 86_400);

/// A live hold of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Its object.
    pub key: ObjectKey,
    /// The backup it holds.
    pub backup_id: String,
    /// Who took it.
    pub host: String,
    /// Its process.
    pub pid: u32,
    /// When it ends, unix seconds.
    pub until: i64,
}

impl Hold {
    /// For reports: what holds the backup, and until when.
    pub fn describe(&self) -> String {
        format!(
            "a recovery from it may still be running: held by pid {} on {} until {} ({})",
            self.pid,
            self.host,
            Timestamp::from_unix_seconds(self.until),
            self.key
        )
    }
}

fn body(cluster: &str, backup_id: &str, until: i64) -> LeaseBody {
    let mut b = lease::my_body("hold".into(), cluster, backup_id);
    b.until = Some(until);
    b
}

/// Holds `backup_id` of `cluster` for `hold` from now, under the cluster's expire lease
/// (waiting up to `expire_wait` for a running expire); returns the hold's object.
pub async fn take(
    repo: &Repository,
    cluster: &str,
    backup_id: &str,
    hold: Duration,
    expire_wait: Duration,
) -> Result<ObjectKey> {
    let nonce = format!("{}-{:016x}", backup_id, rand::random::<u64>());
    let key = layout::recovery_hold(cluster, &nonce);
    let until = Timestamp::now().unix_seconds() + hold.min(MAX_HOLD).as_secs() as i64;
    let raw = sealed::seal(repo, DocKind::Lease, &key, &body(cluster, backup_id, until));
    let name = format!("expire-{cluster}");
    let k = key.clone();
    lease::exclusive(
        repo,
        &name,
        cluster,
        lease::Purpose::Hold,
        expire_wait,
        async move {
            repo.storage().put_create(&k, raw).await?;
            Ok(())
        },
    )
    .await?;
    Ok(key)
}

/// Moves the end of the hold at `key` (of `backup_id`) to `hold` from now.
pub async fn extend(
    repo: &Repository,
    cluster: &str,
    backup_id: &str,
    key: &ObjectKey,
    hold: Duration,
) -> Result<()> {
    let until = Timestamp::now().unix_seconds() + hold.min(MAX_HOLD).as_secs() as i64;
    let raw = sealed::seal(repo, DocKind::Lease, key, &body(cluster, backup_id, until));
    let (_, version) = repo.storage().get_versioned(key).await?;
    repo.storage().put_swap(key, raw, Some(&version)).await?;
    Ok(())
}

/// Ends the hold at `key`.
pub async fn release(repo: &Repository, key: &ObjectKey) -> Result<()> {
    Ok(repo.storage().delete(key).await?)
}

/// Removes the hold at `key` if it has still ended (`expire`, which listed it as ended: a
/// restore may have extended it since).
pub async fn remove_if_ended(repo: &Repository, key: &ObjectKey) -> Result<()> {
    let raw = match repo.storage().get(key).await {
        Ok(raw) => raw,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let b: LeaseBody = sealed::open(repo, DocKind::Lease, key, &raw)?;
    if b.until.unwrap_or(0) > Timestamp::now().unix_seconds() {
        return Ok(());
    }
    release(repo, key).await
}

/// The holds of `cluster`: live ones, and the keys of ended ones (for `expire` to remove).
pub async fn list(repo: &Repository, cluster: &str) -> Result<(Vec<Hold>, Vec<ObjectKey>)> {
    let prefix = layout::recovery_holds_prefix(cluster);
    let now = Timestamp::now().unix_seconds();
    let (mut live, mut ended) = (Vec::new(), Vec::new());
    for o in repo.storage().list(&prefix).await? {
        let raw = match repo.storage().get(&o.key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        // Unreadable: fails closed, as leases do (it may hold a running recovery's WAL).
        let b: LeaseBody = sealed::open(repo, DocKind::Lease, &o.key, &raw).map_err(|e| {
            crate::error::Error::corrupt(
                o.key.to_string(),
                format!(
                    "{e}. It is a recovery hold: expire stops while it cannot read \
                     it. Once no restore or drill of cluster {cluster:?} is running, delete it"
                ),
            )
        })?;
        if b.kind != "hold" || b.cluster != cluster {
            continue;
        }
        match b.until {
            Some(until) if until > now => live.push(Hold {
                key: o.key,
                backup_id: b.backup_id,
                host: b.host,
                pid: b.pid,
                until,
            }),
            _ => ended.push(o.key),
        }
    }
    Ok((live, ended))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::memory_repo;

    #[tokio::test]
    async fn a_hold_is_listed_for_its_cluster_until_it_ends() {
        let (_mem, repo) = memory_repo().await;
        let day = Duration::from_secs(86_400);
        let k = take(&repo, "main", "20261101-000000F", day, Duration::ZERO)
            .await
            .unwrap();
        // Another cluster's: not this one's.
        take(&repo, "main-2", "20261102-000000F", day, Duration::ZERO)
            .await
            .unwrap();
        let (live, ended) = list(&repo, "main").await.unwrap();
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(
            (live[0].key.clone(), live[0].backup_id.as_str()),
            (k.clone(), "20261101-000000F")
        );
        assert!(live[0].until >= Timestamp::now().unix_seconds() + 86_000);
        assert!(ended.is_empty());
        // Ended (moved to now): listed to be removed, not held.
        extend(&repo, "main", "20261101-000000F", &k, Duration::ZERO)
            .await
            .unwrap();
        let (live, ended) = list(&repo, "main").await.unwrap();
        assert!(live.is_empty(), "{live:?}");
        assert_eq!(ended, vec![k.clone()]);
        // Extended again after being listed as ended: not removed.
        extend(&repo, "main", "20261101-000000F", &k, day)
            .await
            .unwrap();
        remove_if_ended(&repo, &k).await.unwrap();
        assert_eq!(list(&repo, "main").await.unwrap().0.len(), 1);
        extend(&repo, "main", "20261101-000000F", &k, Duration::ZERO)
            .await
            .unwrap();
        remove_if_ended(&repo, &k).await.unwrap();
        assert_eq!(list(&repo, "main").await.unwrap(), (vec![], vec![]));
    }

    /// A hold waits for a running expire (which read the holds before it landed).
    #[tokio::test]
    async fn a_hold_waits_for_a_running_expire() {
        let (_mem, repo) = memory_repo().await;
        let running = crate::lease::acquire_exclusive(
            &repo,
            "expire-main",
            "main",
            crate::lease::Purpose::Expire,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let day = Duration::from_secs(86_400);
        take(&repo, "main", "x", day, Duration::from_millis(300))
            .await
            .expect_err("held while an expire runs");
        assert!(list(&repo, "main").await.unwrap().0.is_empty());
        running.release().await;
        take(&repo, "main", "x", day, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(list(&repo, "main").await.unwrap().0.len(), 1);
    }
}
