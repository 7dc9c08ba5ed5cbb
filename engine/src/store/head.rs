//! The catalog head: one sealed object per cluster, `clusters/<cluster>/head`, recording
//! what the repository must hold, updated only by compare-and-swap.
//!
//! What it records:
//! - the committed backups (id, timeline, start and stop LSN, stop time), added by `backup`
//!   right after its manifest and removed by `expire` *before* the manifest is deleted;
//! - per timeline, the WAL it has seen archived: `first ..= high` (absolute segment numbers)
//!   minus ranges `expire` removed. PostgreSQL archives a timeline's segments in order, so
//!   every segment in that range was pushed; one missing now was deleted or lost;
//! - the latest `verify` and `drill` results;
//! - the pinned backups.
//!
//! # How far the high-water mark may trail (why archive-push stays fast)
//!
//! A synchronous `archive-push` updates the head only for segments whose number is a
//! multiple of [`HEAD_EVERY_SEGMENTS`] (one GET and one conditional PUT every 16 segments,
//! 256 MiB of WAL at the default size; nothing on the other pushes). The asynchronous
//! pusher updates it after every batch it pushed, and `backup` sets it to at least the
//! backup's stop segment. So the mark trails the newest archived segment by fewer than
//! [`HEAD_EVERY_SEGMENTS`] segments while WAL is archived synchronously, and by one batch
//! with the asynchronous pusher. Segments above the mark are not protected: deleting them
//! looks like WAL never archived (archive-get exits 1 there, as before).
//!
//! # Rollback and deletion
//!
//! Every update increments the head's generation. Each host records the highest generation
//! it has read or written, per repository and cluster, in the same local state file as the
//! config generation (`repo.state_dir`, see [`crate::repo::keys::GenerationCache`]). A head
//! older than that, or a missing head on a host that saw one, is reported as tampering
//! ([`Error::Corrupt`] naming the object). The head is created before the cluster record
//! (see [`ensure`]), so a cluster record without a head means the head was deleted, which
//! [`super::audit`] reports even on a host that never saw the head.
//!
//! A failed head update never loses WAL: archive-push logs it and succeeds (the segment is
//! durable); the next update catches up, as every update takes the maximum.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ids::{BackupId, ClusterName};
use super::sealed::{self, DocKind};
use super::Timestamp;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::{ObjectVersion, StorageError};
use crate::types::{Lsn, SegmentNo, TimelineId, WalFileName};

/// A synchronous archive-push updates the head for segments whose number is a multiple of
/// this: the high-water mark trails the newest push by fewer segments than this.
pub const HEAD_EVERY_SEGMENTS: u64 = 16;

/// Attempts of one compare-and-swap update before giving up.
const CAS_ATTEMPTS: usize = 20;

/// A backup the head records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadBackup {
    /// Timeline it was taken on.
    pub timeline: u32,
    /// `pg_backup_start` LSN.
    pub start_lsn: Lsn,
    /// Consistency point.
    pub stop_lsn: Lsn,
    /// RFC 3339 time of its consistency point.
    pub stop_time: Timestamp,
}

/// The WAL the head has seen archived on one timeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadTimeline {
    /// Lowest segment (absolute number) seen archived and not expired.
    pub first: u64,
    /// The high-water mark: highest segment seen archived.
    pub high: u64,
    /// Inclusive ranges `expire` removed above `first` (with `pitr_window`).
    #[serde(default)]
    pub expired: Vec<(u64, u64)>,
    /// `expire` removed everything below this (0: nothing yet). A segment pushed late below
    /// it (a standby archiving with `archive_mode = always` long after the primary, a
    /// re-archived old file) does not lower `first`: the segments between it and `first` are
    /// gone by design, and counting them as required would report them deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired_below: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl HeadTimeline {
    /// True when the head says segment `seg` must be in the archive.
    pub fn must_exist(&self, seg: u64) -> bool {
        seg >= self.first
            && seg <= self.high
            && !self.expired.iter().any(|(a, b)| seg >= *a && seg <= *b)
    }

    /// Records that `seg` was archived (ordered archiving: everything from `first` on). A
    /// segment pushed late into what `expire` removed is required again by itself, not the
    /// rest of what was removed with it.
    fn saw(&mut self, seg: u64) -> bool {
        let before = self.clone();
        if seg >= self.expired_below {
            self.first = self.first.min(seg);
        }
        self.high = self.high.max(seg);
        let mut kept = Vec::with_capacity(self.expired.len() + 1);
        for (a, b) in self.expired.drain(..) {
            if seg < a || seg > b {
                kept.push((a, b));
                continue;
            }
            if seg > a {
                kept.push((a, seg - 1));
            }
            if seg < b {
                kept.push((seg + 1, b));
            }
        }
        self.expired = kept;
        *self != before
    }

    /// Records that `expire` removed `a ..= b`.
    fn forget(&mut self, a: u64, b: u64) -> bool {
        let before = self.clone();
        if a <= self.first {
            self.first = self.first.max(b.saturating_add(1));
        } else if a <= self.high {
            self.expired.push((a, b.min(self.high)));
        }
        self.expired.retain(|(_, e)| *e >= self.first);
        self.expired.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in self.expired.drain(..) {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        // A removed range starting right after `first`'s run joins it.
        if let Some(&(a, b)) = merged.first() {
            if a <= self.first {
                self.first = self.first.max(b + 1);
                merged.remove(0);
            }
        }
        self.expired = merged;
        if self.first > before.first {
            self.expired_below = self.expired_below.max(self.first);
        }
        *self != before
    }
}

/// The outcome of a `verify` or `drill`, as the head keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// RFC 3339 time.
    pub at: Timestamp,
    /// Passed.
    pub ok: bool,
    /// One line.
    pub summary: String,
}

/// `clusters/<cluster>/head`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogHead {
    /// The cluster (also bound by the sealing context; kept for readers of dumps).
    pub cluster: ClusterName,
    /// Incremented by every update.
    pub generation: u64,
    /// RFC 3339 time of the last update.
    pub updated_at: Timestamp,
    /// The cluster's WAL segment size.
    pub wal_segment_size: u64,
    /// Committed backups.
    pub backups: BTreeMap<BackupId, HeadBackup>,
    /// Archived WAL per timeline.
    pub timelines: BTreeMap<u32, HeadTimeline>,
    /// Latest `verify`.
    #[serde(default)]
    pub last_verify: Option<CheckResult>,
    /// Latest `drill`.
    #[serde(default)]
    pub last_drill: Option<CheckResult>,
    /// Pinned backups (`pin` adds one after writing its pin object, `unpin` removes it before
    /// deleting the object): a pin object deleted outside pgcairn is noticed, and `expire`
    /// still keeps the backup.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub pinned: BTreeSet<BackupId>,
}

impl CatalogHead {
    fn new(cluster: ClusterName, wal_segment_size: u64) -> Self {
        CatalogHead {
            cluster,
            generation: 0,
            updated_at: Timestamp::now(),
            wal_segment_size,
            backups: BTreeMap::new(),
            timelines: BTreeMap::new(),
            last_verify: None,
            last_drill: None,
            pinned: BTreeSet::new(),
        }
    }

    /// Records that segment `seg` of timeline `tli` was archived.
    pub fn saw_segment(&mut self, tli: u32, seg: u64) -> bool {
        match self.timelines.get_mut(&tli) {
            Some(t) => t.saw(seg),
            None => {
                self.timelines.insert(
                    tli,
                    HeadTimeline {
                        first: seg,
                        high: seg,
                        expired: Vec::new(),
                        expired_below: 0,
                    },
                );
                true
            }
        }
    }

    /// Records that `expire` removed segments `a ..= b` of timeline `tli`.
    pub fn forget_segments(&mut self, tli: u32, a: u64, b: u64) -> bool {
        self.timelines.get_mut(&tli).is_some_and(|t| t.forget(a, b))
    }

    /// True when the head says `name` must be in the archive: a segment within a timeline's
    /// recorded range, or the history file of a timeline the head knows.
    pub fn must_exist(&self, name: &WalFileName) -> bool {
        match name {
            WalFileName::Segment { tli, segno } => self
                .timelines
                .get(&tli.0)
                .is_some_and(|t| t.must_exist(segno.absolute(self.wal_segment_size))),
            WalFileName::History { tli } => tli.0 > 1 && self.timelines.contains_key(&tli.0),
            _ => false,
        }
    }

    /// The segment name of `seg` on `tli`.
    pub fn segment_name(&self, tli: u32, seg: u64) -> WalFileName {
        WalFileName::Segment {
            tli: TimelineId(tli),
            segno: SegmentNo::from_absolute(seg, self.wal_segment_size),
        }
    }
}

fn seen(repo: &Repository, cluster: &str) -> u64 {
    repo.generation_cache()
        .map(|c| c.catalog_seen(cluster))
        .unwrap_or(0)
}

fn record_seen(repo: &Repository, cluster: &str, generation: u64) {
    if let Some(c) = repo.generation_cache() {
        c.record_catalog(cluster, generation);
    }
}

fn rolled_back(repo: &Repository, cluster: &str, found: Option<u64>, seen: u64) -> Error {
    let key = layout::catalog_head(cluster);
    let cache = repo
        .generation_cache()
        .map(|c| c.path().display().to_string())
        .unwrap_or_default();
    let what = match found {
        Some(g) => format!("is generation {g}"),
        None => "is missing".to_string(),
    };
    Error::corrupt(
        key.to_string(),
        format!(
            "the catalog head of cluster {cluster:?} {what}, but this host has seen generation {seen} (recorded in {cache}): \
             it was deleted or replaced by an older copy, so backups or WAL recorded since may have been deleted with it. \
             Run `pgcairn verify` and `pgcairn info`, and restore the repository's objects from a copy you trust; \
             if you restored the whole repository from an old copy on purpose, delete {cache} and run again"
        ),
    )
}

/// Waits before retry `attempt` of a compare-and-swap another writer won: a random 5 to 40 ms,
/// times the attempt number (at most 10).
pub(crate) async fn cas_backoff(attempt: usize) {
    use rand::Rng;
    let ms = rand::thread_rng().gen_range(5..40) * (attempt as u64 + 1).min(10);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Reads the head (with its version), refusing one older than this host has seen.
/// `Ok(None)` only when there is none and this host never saw one.
pub async fn read(
    repo: &Repository,
    cluster: &str,
) -> Result<Option<(CatalogHead, ObjectVersion)>> {
    let key = layout::catalog_head(cluster);
    let seen = seen(repo, cluster);
    match repo.storage().get_versioned(&key).await {
        Ok((raw, version)) => {
            let head: CatalogHead = sealed::open(repo, DocKind::CatalogHead, &key, &raw)?;
            if head.generation < seen {
                return Err(rolled_back(repo, cluster, Some(head.generation), seen));
            }
            if head.generation > seen {
                record_seen(repo, cluster, head.generation);
            }
            Ok(Some((head, version)))
        }
        Err(StorageError::NotFound { .. }) if seen > 0 => {
            Err(rolled_back(repo, cluster, None, seen))
        }
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates the cluster's head if it has none (before its cluster record is created).
pub async fn ensure(repo: &Repository, cluster: &str, wal_segment_size: u64) -> Result<()> {
    update(repo, cluster, wal_segment_size, |_| false).await?;
    Ok(())
}

/// Applies `change` to the head by compare-and-swap, retrying when another writer got there
/// first; `change` returns whether it changed anything (nothing is written otherwise, except
/// that a missing head is created). Returns the head as written (or as found).
pub async fn update(
    repo: &Repository,
    cluster: &str,
    wal_segment_size: u64,
    mut change: impl FnMut(&mut CatalogHead) -> bool,
) -> Result<CatalogHead> {
    let key = layout::catalog_head(cluster);
    for attempt in 0..CAS_ATTEMPTS {
        let (mut head, version) = match read(repo, cluster).await? {
            Some((h, v)) => (h, Some(v)),
            None => {
                // Created before the cluster record: a record without a head means the head
                // was deleted, and a new empty one would hide what it recorded.
                if crate::store::cluster::read(repo, cluster).await?.is_some() {
                    return Err(Error::corrupt(
                        key.to_string(),
                        format!(
                            "the catalog head of cluster {cluster:?} is missing although the cluster is bound: it was \
                             deleted outside pgcairn. Not creating an empty one (that would hide what it recorded): \
                             put it back from a copy, or run `pgcairn verify` to see what else is missing"
                        ),
                    ));
                }
                (
                    CatalogHead::new(ClusterName::new(cluster)?, wal_segment_size),
                    None,
                )
            }
        };
        let changed = change(&mut head);
        if !changed && version.is_some() {
            return Ok(head);
        }
        head.generation += 1;
        head.updated_at = Timestamp::now();
        let body = sealed::seal(repo, DocKind::CatalogHead, &key, &head);
        match repo.storage().put_swap(&key, body, version.as_ref()).await {
            Ok(_) => {
                record_seen(repo, cluster, head.generation);
                return Ok(head);
            }
            Err(StorageError::Precondition { .. }) => cas_backoff(attempt).await,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "{key}: {CAS_ATTEMPTS} concurrent updates in a row won the compare-and-swap; try again"
    )))
}

/// Records that `name` was archived, if the head should hear of it: segments whose number is
/// a multiple of [`HEAD_EVERY_SEGMENTS`] (see the module docs). A failure is logged, not
/// returned: the segment itself is durable.
pub async fn note_pushed(repo: &Repository, cluster: &str, name: &WalFileName, seg_size: u64) {
    let WalFileName::Segment { tli, segno } = name else {
        return;
    };
    let seg = segno.absolute(seg_size);
    if seg % HEAD_EVERY_SEGMENTS != 0 {
        return;
    }
    note_segments(repo, cluster, seg_size, &[(tli.0, seg)]).await;
}

/// Records archived segments (timeline, absolute number), logging a failure.
pub async fn note_segments(repo: &Repository, cluster: &str, seg_size: u64, segs: &[(u32, u64)]) {
    if segs.is_empty() {
        return;
    }
    let res = update(repo, cluster, seg_size, |h| {
        segs.iter()
            .fold(false, |c, (t, s)| h.saw_segment(*t, *s) || c)
    })
    .await;
    if let Err(e) = res {
        tracing::warn!(
            "could not record archived WAL in the catalog head of {cluster:?} (the WAL itself is archived): {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;

    #[test]
    fn ranges_follow_pushes_and_expiry() {
        let mut t = HeadTimeline {
            first: 10,
            high: 10,
            expired: vec![],
            expired_below: 0,
        };
        assert!(t.saw(20));
        assert!(!t.saw(15));
        assert!((10..=20).all(|s| t.must_exist(s)));
        assert!(!t.must_exist(9) && !t.must_exist(21));
        assert!(t.forget(10, 12));
        assert_eq!(t.first, 13);
        assert!(t.forget(15, 16));
        assert!(t.must_exist(14) && !t.must_exist(15) && !t.must_exist(16) && t.must_exist(17));
        assert!(t.forget(13, 14));
        assert_eq!((t.first, t.expired.clone()), (17, vec![]));
    }

    /// A segment archived late, below what expire removed or inside a range it removed
    /// (a standby with `archive_mode = always` far behind the primary), is recorded without
    /// making the removed segments around it required: they would be reported deleted.
    #[test]
    fn a_late_push_does_not_make_expired_segments_required_again() {
        let mut t = HeadTimeline {
            first: 10,
            high: 30,
            expired: vec![],
            expired_below: 0,
        };
        assert!(t.forget(10, 14));
        assert!(t.forget(20, 24));
        assert_eq!((t.first, t.expired_below), (15, 15));
        // Below the removed start: `first` stays.
        t.saw(11);
        assert_eq!(t.first, 15);
        assert!((10..15).all(|s| !t.must_exist(s)));
        // Inside a removed range: that segment only.
        t.saw(22);
        assert_eq!(t.expired, vec![(20, 21), (23, 24)]);
        assert!(t.must_exist(22));
        assert!([20, 21, 23, 24].iter().all(|s| !t.must_exist(*s)));
        // At a range's ends.
        t.saw(20);
        t.saw(24);
        assert_eq!(t.expired, vec![(21, 21), (23, 23)]);
        // A timeline expire never touched still takes lower segments (ordered archiving
        // reached the head late, as with synchronous pushes recorded every 16 segments).
        let mut fresh = HeadTimeline {
            first: 32,
            high: 32,
            expired: vec![],
            expired_below: 0,
        };
        fresh.saw(20);
        assert_eq!(fresh.first, 20);
    }

    #[tokio::test]
    async fn updates_bump_the_generation_and_a_rollback_is_detected() {
        let (mem, repo) = memory_repo().await;
        let dir = tempfile::tempdir().unwrap();
        let repo = repo.with_state_dir(dir.path());
        ensure(&repo, "main", 16 << 20).await.unwrap();
        let key = layout::catalog_head("main");
        use crate::storage::Storage;
        let old = mem.get(&key).await.unwrap();
        let h = update(&repo, "main", 16 << 20, |h| h.saw_segment(1, 5))
            .await
            .unwrap();
        assert_eq!(h.generation, 2);
        assert!(h.must_exist(&h.segment_name(1, 5)));
        // Put the old head back behind the repository's back: detected on this host.
        let cur = mem.get_versioned(&key).await.unwrap().1;
        mem.put_swap(&key, old.clone(), Some(&cur)).await.unwrap();
        let err = read(&repo, "main").await.unwrap_err().to_string();
        assert!(
            err.contains("generation 1") && err.contains("seen generation 2"),
            "{err}"
        );
        mem.delete(&key).await.unwrap();
        let err = read(&repo, "main").await.unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");
        // A head of another cluster copied here fails authentication.
        ensure(&repo, "other", 16 << 20).await.unwrap();
        let theirs = mem.get(&layout::catalog_head("other")).await.unwrap();
        mem.put_create(&key, theirs).await.unwrap();
        let err = read(&repo, "main").await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
