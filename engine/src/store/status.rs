//! The status object: one small sealed document per cluster, `status/cluster/<cluster>`, plus
//! one for the repository, `status/repository`, holding what monitoring asks for (the last
//! backup, the newest archived WAL, the last drill, verify and expire, space after the last
//! gc). `pgcairn metrics` and `pgcairn serve` answer a scrape from these objects alone: one
//! LIST of `status/cluster/` and one GET per cluster, never the full mark `info` makes.
//!
//! # Who writes what
//!
//! | writer | fields |
//! |---|---|
//! | `backup` | `last_backup`, `last_success_by_type`, `retained` (from the catalog head it just updated) |
//! | `archive-push`, the async pusher | `wal` (at most every [`STATUS_EVERY`] or [`super::head::HEAD_EVERY_SEGMENTS`] segments), `wal_dropped_total` |
//! | `drill` | `drill` |
//! | `verify` | `verify` |
//! | `expire` | `expire`, `retained` |
//! | `gc` | the repository object |
//! | `wal-receive` (not yet) | `receiver` |
//!
//! Every update is a compare-and-swap (like the catalog head) so writers of different fields
//! never lose each other's work. A failed update is logged and never fails the command: the
//! status object is for monitoring, the catalog head and the objects themselves are the truth.
//! It is therefore not rollback-checked the way the head is; a status object that cannot be
//! read or authenticated makes the scrape say `pgcairn_up 0`, never zeros that look healthy.
//!
//! # Why archive-push is rate limited, and by how much
//!
//! PostgreSQL calls `archive-push` once per segment; one GET and one PUT more on every call
//! would double its round trips. A push updates the status only when the segment number is a
//! multiple of [`super::head::HEAD_EVERY_SEGMENTS`], or when this host last updated it more than
//! [`STATUS_EVERY`] ago (a marker file in `repo.state_dir`; a stat per push). So the newest
//! archived WAL the status shows trails the real one by at most [`STATUS_EVERY`] plus the
//! time between two segment switches; the RPO alert threshold should be above that. Without a
//! state directory only the segment-number rule applies (pushes stay fast; the status then
//! trails by up to [`super::head::HEAD_EVERY_SEGMENTS`] segments).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::head::CatalogHead;
use super::sealed::{self, DocKind};
use super::Timestamp;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::StorageError;
use crate::types::{Lsn, WalFileName};

/// archive-push updates the status at least this often while WAL is archived (see the module
/// docs).
pub const STATUS_EVERY: Duration = Duration::from_secs(30);

/// Attempts of one compare-and-swap update before giving up.
const CAS_ATTEMPTS: usize = 20;

/// The last successful backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupStatus {
    /// Backup id.
    pub id: String,
    /// `full`, `diff` or `incr`.
    pub backup_type: String,
    /// RFC 3339.
    pub started_at: Timestamp,
    /// RFC 3339: when its manifest was committed.
    pub finished_at: Timestamp,
    /// Wall time.
    pub duration_seconds: f64,
    /// Bytes read from the data directory.
    pub bytes_read: u64,
    /// Plaintext bytes of blocks stored for the first time.
    pub bytes_new: u64,
    /// Stored (compressed, sealed) bytes added.
    pub bytes_stored: u64,
    /// Database size.
    pub size: u64,
}

/// The backups the catalog head holds, after the latest backup or expire.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RetainedStatus {
    /// Committed backups.
    pub count: u64,
    /// The oldest one's id.
    pub oldest_id: Option<String>,
    /// Its consistency point (RFC 3339): the start of the recoverable window.
    pub oldest_stop_time: Option<Timestamp>,
}

impl RetainedStatus {
    /// Summarises the head's backups.
    pub fn from_head(head: &CatalogHead) -> Self {
        let oldest = head.backups.iter().next();
        RetainedStatus {
            count: head.backups.len() as u64,
            oldest_id: oldest.map(|(id, _)| id.to_string()),
            oldest_stop_time: oldest.map(|(_, b)| b.stop_time),
        }
    }
}

/// The newest archived WAL segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WalStatus {
    /// Segment name.
    pub segment: String,
    /// Timeline.
    pub timeline: u32,
    /// End of the segment (the first LSN after it).
    pub end_lsn: Lsn,
    /// RFC 3339: when PostgreSQL last wrote the segment (its mtime, capped at the push time):
    /// data written before it is archived.
    pub end_time: Timestamp,
    /// RFC 3339: when it was archived.
    pub archived_at: Timestamp,
}

/// The last drill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DrillStatus {
    /// Drill id.
    pub id: String,
    /// RFC 3339.
    pub finished_at: Timestamp,
    /// `passed`, `integrity-failed` (exit 3), `objective-missed` (exit 4) or `error` (exit 1).
    pub outcome: String,
    /// Measured time to recover.
    pub mttr_seconds: f64,
    /// The `--max-mttr` objective, if one was given.
    pub max_mttr_seconds: Option<f64>,
    /// Seconds per phase (preflight, restore, startup, replay, checks).
    pub phases: BTreeMap<String, f64>,
}

/// The last verify.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyStatus {
    /// RFC 3339.
    pub finished_at: Timestamp,
    /// Nothing damaged.
    pub ok: bool,
    /// Problems found.
    pub problems: u64,
    /// Whether data was read (`--read-data`).
    pub read_data: bool,
}

/// The last expire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExpireStatus {
    /// RFC 3339.
    pub finished_at: Timestamp,
    /// Backups removed.
    pub backups_removed: u64,
    /// WAL files removed.
    pub wal_files_removed: u64,
}

/// Where a streaming WAL receiver (`pgcairn wal-receive`) reports its position. Nothing
/// writes it yet; the metrics already export it when present.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverStatus {
    /// RFC 3339 of the report.
    pub at: Timestamp,
    /// Highest LSN flushed durably to the repository.
    pub flush_lsn: Lsn,
    /// Bytes between the server's current position and `flush_lsn`, when known.
    pub lag_bytes: Option<u64>,
}

/// `status/cluster/<cluster>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    /// Cluster name.
    pub cluster: String,
    /// Incremented by every update.
    pub generation: u64,
    /// RFC 3339 of the last update.
    pub updated_at: Timestamp,
    /// The last successful backup.
    #[serde(default)]
    pub last_backup: Option<BackupStatus>,
    /// Finish time (RFC 3339) of the last successful backup of each type.
    #[serde(default)]
    pub last_success_by_type: BTreeMap<String, Timestamp>,
    /// Backups the catalog head holds.
    #[serde(default)]
    pub retained: Option<RetainedStatus>,
    /// The newest archived WAL this status heard of.
    #[serde(default)]
    pub wal: Option<WalStatus>,
    /// Segments the asynchronous pusher acknowledged without archiving them
    /// (`archive.queue_max`), as reported by the pusher.
    #[serde(default)]
    pub wal_dropped_total: u64,
    /// The last drill.
    #[serde(default)]
    pub drill: Option<DrillStatus>,
    /// The last verify.
    #[serde(default)]
    pub verify: Option<VerifyStatus>,
    /// The last expire.
    #[serde(default)]
    pub expire: Option<ExpireStatus>,
    /// A streaming receiver's position (reserved for `wal-receive`).
    #[serde(default)]
    pub receiver: Option<ReceiverStatus>,
}

impl ClusterStatus {
    /// An empty status for `cluster`, as of now.
    pub fn new(cluster: &str) -> Self {
        ClusterStatus {
            cluster: cluster.to_string(),
            generation: 0,
            updated_at: Timestamp::now(),
            last_backup: None,
            last_success_by_type: BTreeMap::new(),
            retained: None,
            wal: None,
            wal_dropped_total: 0,
            drill: None,
            verify: None,
            expire: None,
            receiver: None,
        }
    }

    /// Records `wal` if it is newer than what the status holds.
    pub fn saw_wal(&mut self, wal: WalStatus) -> bool {
        let newer = match &self.wal {
            None => true,
            Some(w) => (wal.timeline, wal.end_lsn) > (w.timeline, w.end_lsn),
        };
        if newer {
            self.wal = Some(wal);
        }
        newer
    }
}

/// `status/repository`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepositoryStatus {
    /// Incremented by every update.
    pub generation: u64,
    /// RFC 3339 of the last update.
    pub updated_at: Timestamp,
    /// RFC 3339 of the last gc (not a dry run).
    pub gc_finished_at: Option<Timestamp>,
    /// Bytes in packs after it.
    pub pack_bytes: u64,
    /// Bytes of referenced blocks.
    pub referenced_bytes: u64,
    /// Bytes gc (with repacking) could give back.
    pub reclaimable_bytes: u64,
    /// Condemned bytes waiting for their grace period.
    pub pending_bytes: u64,
}

impl RepositoryStatus {
    /// An empty repository status, as of now.
    pub fn new() -> Self {
        RepositoryStatus {
            generation: 0,
            updated_at: Timestamp::now(),
            gc_finished_at: None,
            pack_bytes: 0,
            referenced_bytes: 0,
            reclaimable_bytes: 0,
            pending_bytes: 0,
        }
    }
}

impl Default for RepositoryStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Compare-and-swap update of a sealed status document at `key`.
async fn update_doc<T>(
    repo: &Repository,
    kind: DocKind,
    key: &crate::storage::ObjectKey,
    fresh: impl Fn() -> T,
    mut change: impl FnMut(&mut T) -> bool,
    bump: impl Fn(&mut T),
) -> Result<T>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    for attempt in 0..CAS_ATTEMPTS {
        let (mut doc, version) = match repo.storage().get_versioned(key).await {
            Ok((raw, v)) => match sealed::open::<T>(repo, kind, key, &raw) {
                Ok(d) => (d, Some(v)),
                // Monitoring data only: an unreadable status is replaced, not kept.
                Err(e) => {
                    tracing::warn!("replacing an unreadable status object: {e}");
                    (fresh(), Some(v))
                }
            },
            Err(StorageError::NotFound { .. }) => (fresh(), None),
            Err(e) => return Err(e.into()),
        };
        if !change(&mut doc) {
            return Ok(doc);
        }
        bump(&mut doc);
        let body = sealed::seal(repo, kind, key, &doc);
        match repo.storage().put_swap(key, body, version.as_ref()).await {
            Ok(_) => return Ok(doc),
            Err(StorageError::Precondition { .. }) => super::head::cas_backoff(attempt).await,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "{key}: {CAS_ATTEMPTS} concurrent updates in a row won the compare-and-swap; try again"
    )))
}

/// Applies `change` to the cluster's status (created when missing); returns it as written.
pub async fn update(
    repo: &Repository,
    cluster: &str,
    change: impl FnMut(&mut ClusterStatus) -> bool,
) -> Result<ClusterStatus> {
    let key = layout::cluster_status(cluster);
    update_doc(
        repo,
        DocKind::ClusterStatus,
        &key,
        || ClusterStatus::new(cluster),
        change,
        |s| {
            s.generation += 1;
            s.updated_at = Timestamp::now();
        },
    )
    .await
}

/// Like [`update`], logging a failure instead of returning it (`what` names the writer).
pub async fn record(
    repo: &Repository,
    cluster: &str,
    what: &str,
    change: impl FnMut(&mut ClusterStatus) -> bool,
) {
    if let Err(e) = update(repo, cluster, change).await {
        tracing::warn!(
            "could not record the {what} in the status object of cluster {cluster:?} (monitoring will show the previous one): {e}"
        );
    }
}

/// Applies `change` to the repository status, logging a failure.
pub async fn record_repository(
    repo: &Repository,
    change: impl FnMut(&mut RepositoryStatus) -> bool,
) {
    let key = layout::repository_status();
    let res = update_doc(
        repo,
        DocKind::RepositoryStatus,
        &key,
        RepositoryStatus::new,
        change,
        |s| {
            s.generation += 1;
            s.updated_at = Timestamp::now();
        },
    )
    .await;
    if let Err(e) = res {
        tracing::warn!("could not record gc's result in the repository status object: {e}");
    }
}

/// Reads one cluster's status; `None` when it has none yet.
pub async fn read(repo: &Repository, cluster: &str) -> Result<Option<ClusterStatus>> {
    sealed::read(
        repo,
        DocKind::ClusterStatus,
        &layout::cluster_status(cluster),
    )
    .await
}

/// Reads the repository status; `None` when gc never ran.
pub async fn read_repository(repo: &Repository) -> Result<Option<RepositoryStatus>> {
    sealed::read(
        repo,
        DocKind::RepositoryStatus,
        &layout::repository_status(),
    )
    .await
}

/// Clusters with a status object (one LIST of `status/cluster/`).
pub async fn clusters(repo: &Repository) -> Result<Vec<String>> {
    let prefix = layout::CLUSTER_STATUS_PREFIX;
    let mut names: Vec<String> = repo
        .storage()
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key.as_str().strip_prefix(prefix).map(str::to_string))
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .collect();
    names.sort();
    Ok(names)
}

/// The marker whose mtime says when this host last recorded archived WAL.
fn push_marker(repo: &Repository, cluster: &str) -> Option<PathBuf> {
    let dir = repo.state_dir()?;
    Some(dir.join(format!("status-push-{}-{cluster}", repo.config().repo_id)))
}

fn marker_is_fresh(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < STATUS_EVERY)
}

/// The WAL status of a pushed segment whose file was last modified at `mtime`.
pub fn wal_status(
    name: &WalFileName,
    seg_size: u64,
    mtime: Option<SystemTime>,
) -> Option<WalStatus> {
    let WalFileName::Segment { tli, segno } = name else {
        return None;
    };
    let pushed = Timestamp::now();
    let end = mtime
        .map(Timestamp::from)
        .map(|m| m.min(pushed))
        .unwrap_or(pushed);
    Some(WalStatus {
        segment: name.to_string(),
        timeline: tli.0,
        end_lsn: Lsn((segno.absolute(seg_size) + 1) * seg_size),
        end_time: end,
        archived_at: pushed,
    })
}

/// Called after a synchronous push of `name`: records it when due (see the module docs).
pub async fn note_pushed(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    seg_size: u64,
    mtime: Option<SystemTime>,
) {
    let Some(wal) = wal_status(name, seg_size, mtime) else {
        return;
    };
    let seg = (wal.end_lsn.0 / seg_size).saturating_sub(1);
    let on_boundary = seg.checked_rem(super::head::HEAD_EVERY_SEGMENTS) == Some(0);
    // Without a state directory there is no marker: only segment boundaries, never every push.
    let stale = push_marker(repo, cluster).is_some_and(|m| !marker_is_fresh(&m));
    if !on_boundary && !stale {
        return;
    }
    note_wal(repo, cluster, wal, 0).await;
}

/// Records `wal` (if newer) and a pusher's dropped-segment count (if higher); touches this
/// host's marker.
pub async fn note_wal(repo: &Repository, cluster: &str, wal: WalStatus, dropped_total: u64) {
    record(repo, cluster, "archived WAL", |s| {
        let mut changed = s.saw_wal(wal.clone());
        if dropped_total > s.wal_dropped_total {
            s.wal_dropped_total = dropped_total;
            changed = true;
        }
        changed
    })
    .await;
    if let Some(m) = push_marker(repo, cluster) {
        let _ = std::fs::create_dir_all(m.parent().unwrap_or(&m));
        let _ = std::fs::write(&m, b"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::types::{SegmentNo, TimelineId};

    fn seg(n: u64) -> WalFileName {
        WalFileName::Segment {
            tli: TimelineId(1),
            segno: SegmentNo::from_absolute(n, 16 << 20),
        }
    }

    #[tokio::test]
    async fn writers_of_different_fields_keep_each_others_work() {
        let (_mem, repo) = memory_repo().await;
        update(&repo, "main", |s| {
            s.wal_dropped_total = 2;
            true
        })
        .await
        .unwrap();
        let w = wal_status(&seg(5), 16 << 20, None).unwrap();
        assert_eq!(w.end_lsn, Lsn(6 * (16 << 20)));
        note_wal(&repo, "main", w.clone(), 0).await;
        // An older segment never replaces a newer one.
        note_wal(
            &repo,
            "main",
            wal_status(&seg(3), 16 << 20, None).unwrap(),
            1,
        )
        .await;
        let s = read(&repo, "main").await.unwrap().unwrap();
        assert_eq!(s.wal.unwrap().segment, w.segment);
        assert_eq!(s.wal_dropped_total, 2);
        assert_eq!(s.generation, 2);
        assert_eq!(clusters(&repo).await.unwrap(), vec!["main".to_string()]);
        assert!(read(&repo, "other").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn archive_push_records_wal_only_when_due() {
        let (_mem, repo) = memory_repo().await;
        let dir = tempfile::tempdir().unwrap();
        let repo = repo.with_state_dir(dir.path());
        let size = 16 << 20;
        let newest = |repo: Repository| async move {
            read(&repo, "main")
                .await
                .unwrap()
                .and_then(|s| s.wal)
                .map(|w| w.segment)
        };
        // First push on this host: due (no marker yet).
        note_pushed(&repo, "main", &seg(33), size, None).await;
        assert_eq!(newest(repo.clone()).await, Some(seg(33).to_string()));
        // Within STATUS_EVERY and not a multiple of HEAD_EVERY_SEGMENTS: skipped.
        note_pushed(&repo, "main", &seg(34), size, None).await;
        assert_eq!(newest(repo.clone()).await, Some(seg(33).to_string()));
        // A multiple of HEAD_EVERY_SEGMENTS: recorded.
        note_pushed(&repo, "main", &seg(48), size, None).await;
        assert_eq!(newest(repo.clone()).await, Some(seg(48).to_string()));
        // The marker aged past STATUS_EVERY: recorded again.
        let marker = push_marker(&repo, "main").unwrap();
        let old = SystemTime::now() - STATUS_EVERY - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&marker)
            .unwrap()
            .set_modified(old)
            .unwrap();
        note_pushed(&repo, "main", &seg(49), size, None).await;
        assert_eq!(newest(repo.clone()).await, Some(seg(49).to_string()));
    }

    #[tokio::test]
    async fn without_a_state_directory_only_segment_boundaries_are_recorded() {
        let (_mem, repo) = memory_repo().await;
        assert!(repo.state_dir().is_none());
        let size = 16 << 20;
        note_pushed(&repo, "main", &seg(33), size, None).await;
        assert!(
            read(&repo, "main").await.unwrap().is_none(),
            "not every push"
        );
        note_pushed(&repo, "main", &seg(48), size, None).await;
        let s = read(&repo, "main").await.unwrap().unwrap();
        assert_eq!(s.wal.unwrap().segment, seg(48).to_string());
    }

    #[tokio::test]
    async fn a_status_copied_to_another_cluster_does_not_open() {
        let (mem, repo) = memory_repo().await;
        update(&repo, "main", |_| true).await.unwrap();
        use crate::storage::Storage;
        let raw = mem.get(&layout::cluster_status("main")).await.unwrap();
        mem.put_create(&layout::cluster_status("other"), raw)
            .await
            .unwrap();
        let err = read(&repo, "other").await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
