//! What `pgcairn info` reports per cluster: backups, archived WAL, the recoverable window,
//! and the catalog head compared with storage (its generation and anything missing).

use serde::Serialize;

use crate::archive::listing::{list_wal, WalListing};
use crate::error::Result;
use crate::repo::Repository;
use crate::store::manifest::{self, BackupStats, BackupType, Database};
use crate::store::Timestamp;
use crate::types::{Lsn, SegmentNo, TimelineId, WalFileName};

/// One backup, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// Id.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// Reference backup (what decided which files were re-read).
    pub reference: Option<String>,
    /// Timeline.
    pub timeline: u32,
    /// Start.
    pub start_time: crate::store::Timestamp,
    /// Consistency point time.
    pub stop_time: crate::store::Timestamp,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Consistency LSN.
    pub stop_lsn: Lsn,
    /// Counts: `size` is the database size, `stored_new` the bytes this backup added.
    pub stats: BackupStats,
    /// Database size divided by the bytes this backup added.
    pub dedup_ratio: f64,
    /// Pages whose checksum failed.
    pub bad_pages: usize,
    /// Taken on a standby.
    pub from_standby: bool,
    /// WAL segments the backup carries itself (not archived when it finished).
    pub wal_in_backup: Vec<String>,
    /// The cluster's databases at the backup's end (names for `restore --db-include`);
    /// empty for backups taken before they were recorded.
    pub databases: Vec<Database>,
    /// Where `pg_wal` pointed when it was a link (`restore --wal-dir`).
    pub wal_link: Option<std::path::PathBuf>,
    /// Configuration files from outside the data directory it holds (`restore
    /// --config-dir`).
    pub config_files: Vec<std::path::PathBuf>,
}

/// From the oldest backup's consistency point to the end of continuous WAL after it.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverableWindow {
    /// Earliest target: the oldest backup's consistency point.
    pub from_lsn: Lsn,
    /// Its time.
    pub from_time: crate::store::Timestamp,
    /// Latest reachable position: end of the continuous archive after that backup.
    pub to_lsn: Lsn,
    /// Last segment of that continuous range.
    pub to_wal: String,
    /// Timeline of `to_wal`.
    pub timeline: u32,
}

/// Everything `info` shows for one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// Name.
    pub name: String,
    /// System identifier.
    pub system_identifier: Option<String>,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// Backups, oldest first.
    pub backups: Vec<BackupSummary>,
    /// Archived WAL.
    pub wal: WalListing,
    /// Recoverable window, once there is a backup.
    pub recoverable: Option<RecoverableWindow>,
    /// The most recent restore drill.
    pub last_drill: Option<LastDrill>,
    /// The catalog head (generation, latest verify and drill) and what it records that
    /// storage no longer holds.
    pub catalog: crate::store::audit::HeadAudit,
    /// What `wal-receive` streamed (see [`crate::walstream`]).
    pub wal_receive: WalReceiveInfo,
    /// Recovery holds in force ([`crate::hold`]): backups `expire` keeps, with the WAL after
    /// them, because a restore or drill of them may still be recovering.
    pub holds: Vec<HoldInfo>,
    /// Why the holds could not be read, if they could not (`expire` stops on the same).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds_problem: Option<String>,
}

/// A recovery hold, for `info`.
#[derive(Debug, Clone, Serialize)]
pub struct HoldInfo {
    /// The backup held.
    pub backup_id: String,
    /// Until when.
    pub until: Timestamp,
    /// Host and process of the restore or drill that took it.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its object in the repository.
    pub object: String,
}

/// The streamed tail in the repository, and the running receiver's own report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalReceiveInfo {
    /// Timeline of the newest streamed segment.
    pub streamed_timeline: Option<u32>,
    /// The newest streamed segment: the tail `archive-get` serves, or, when the stream sits
    /// at a segment boundary, the segment it completed last (its chunks stay after it is
    /// archived, as the receiver's mark, until the next one is).
    pub streamed_segment: Option<String>,
    /// End of the durable stream: the last position the receiver acknowledged (none when
    /// nothing is streamed, or the stream sits exactly at a segment boundary).
    pub streamed_end_lsn: Option<String>,
    /// The receiver's status file (flush position, lag, state), when the binary knows where
    /// it is and it exists.
    pub receiver: Option<crate::walstream::status::ReceiverStatus>,
}

/// The most recent drill, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    /// Drill id.
    pub id: String,
    /// Outcome.
    pub outcome: String,
    /// MTTR in seconds.
    pub mttr_seconds: f64,
    /// Backup restored.
    pub backup_id: String,
    /// One-line summary.
    pub summary: String,
}

/// Gathers a cluster's info.
pub async fn cluster_info(repo: &Repository, cluster: &str) -> Result<ClusterInfo> {
    let wal = list_wal(repo, cluster).await?;
    let wal_receive = wal_receive_info(repo, cluster, wal.wal_segment_size).await?;
    let mut backups = Vec::new();
    for id in manifest::list_ids(repo, cluster).await? {
        let m = manifest::load_unexpanded(repo, cluster, &id).await?;
        let dedup_ratio = if m.stats.stored_new > 0 {
            m.stats.size as f64 / m.stats.stored_new as f64
        } else {
            f64::INFINITY
        };
        backups.push(BackupSummary {
            bad_pages: m.bad_page_count(),
            from_standby: m.from_standby,
            wal_in_backup: m.wal_in_backup,
            databases: m.databases,
            wal_link: m.wal_link,
            config_files: m.config_files.into_iter().map(|f| f.path).collect(),
            id: m.id,
            backup_type: m.backup_type,
            reference: m.reference,
            timeline: m.timeline,
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            stats: m.stats,
            dedup_ratio: if dedup_ratio.is_finite() {
                (dedup_ratio * 10.0).round() / 10.0
            } else {
                0.0
            },
        });
    }
    let recoverable = backups.first().and_then(|b| window(&wal, b));
    let last_drill = crate::drill::report::history(repo, cluster)
        .await?
        .pop()
        .map(|r| LastDrill {
            id: r.id,
            outcome: r.outcome,
            mttr_seconds: r.mttr_seconds,
            backup_id: r.backup_id,
            summary: r.summary,
        });
    let (holds, holds_problem) = match crate::hold::list(repo, cluster).await {
        Ok((live, _ended)) => (
            live.into_iter()
                .map(|h| HoldInfo {
                    backup_id: h.backup_id,
                    until: Timestamp::from_unix_seconds(h.until),
                    host: h.host,
                    pid: h.pid,
                    object: h.key.to_string(),
                })
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(ClusterInfo {
        holds,
        holds_problem,
        name: cluster.to_string(),
        system_identifier: wal.system_identifier.clone(),
        wal_segment_size: wal.wal_segment_size,
        backups,
        wal,
        recoverable,
        last_drill,
        catalog: crate::store::audit::audit(repo, cluster, None).await?,
        wal_receive,
    })
}

async fn wal_receive_info(
    repo: &Repository,
    cluster: &str,
    seg_size: u64,
) -> Result<WalReceiveInfo> {
    let all = crate::walstream::chunks::list_all(repo, cluster, seg_size).await?;
    let newest = all
        .iter()
        .rev()
        .map(|((tli, segno), c)| (*tli, *segno, crate::walstream::chunks::contiguous(c).1))
        .find(|(_, _, end)| *end > 0);
    Ok(match newest {
        Some((tli, segno, end)) => WalReceiveInfo {
            streamed_timeline: Some(tli),
            streamed_segment: Some(
                crate::walstream::chunks::segment_name(tli, segno, seg_size).to_string(),
            ),
            streamed_end_lsn: Some(Lsn(segno * seg_size + end).to_string()),
            receiver: None,
        },
        None => WalReceiveInfo::default(),
    })
}

fn window(wal: &WalListing, oldest: &BackupSummary) -> Option<RecoverableWindow> {
    let seg = wal.wal_segment_size;
    let start_seg = oldest.start_lsn.segment_no(seg);
    let absolute = |name: &str| {
        name.parse::<WalFileName>()
            .ok()?
            .segment()
            .map(|s| s.absolute(seg))
    };
    // Segments a standby backup carries itself need not be archived.
    let carried: Vec<u64> = oldest
        .wal_in_backup
        .iter()
        .filter_map(|n| absolute(n))
        .collect();
    let consistency =
        crate::store::manifest::last_segment_before(oldest.start_lsn, oldest.stop_lsn, seg);
    let mut stop_seg = consistency;
    while stop_seg > start_seg && carried.contains(&stop_seg) {
        stop_seg -= 1;
    }
    let own_wal_only = RecoverableWindow {
        from_lsn: oldest.stop_lsn,
        from_time: oldest.stop_time,
        to_lsn: oldest.stop_lsn,
        to_wal: oldest.wal_in_backup.last().cloned().unwrap_or_default(),
        timeline: oldest.timeline,
    };
    let everything_carried = (start_seg..=consistency).all(|s| carried.contains(&s));
    let Some(tl) = wal.timelines.iter().find(|t| t.timeline == oldest.timeline) else {
        return everything_carried.then_some(own_wal_only);
    };
    if everything_carried {
        // Archived since (the completed segment), the window goes on from there.
        stop_seg = consistency;
        let archived_since = tl.ranges.iter().any(|r| {
            absolute(&r.first).is_some_and(|f| f <= stop_seg)
                && absolute(&r.last).is_some_and(|l| stop_seg <= l)
        });
        if !archived_since {
            return Some(own_wal_only);
        }
    }
    let start_seg = if everything_carried {
        consistency
    } else {
        start_seg
    };
    let range = tl.ranges.iter().find(|r| {
        let (Some(first), Some(last)) = (absolute(&r.first), absolute(&r.last)) else {
            return false;
        };
        first <= start_seg && stop_seg <= last
    })?;
    let last = absolute(&range.last)?;
    let to_wal = WalFileName::Segment {
        tli: TimelineId(tl.timeline),
        segno: SegmentNo::from_absolute(last, seg),
    };
    Some(RecoverableWindow {
        from_lsn: oldest.stop_lsn,
        from_time: oldest.stop_time,
        to_lsn: Lsn((last + 1) * seg).max(oldest.stop_lsn),
        to_wal: to_wal.to_string(),
        timeline: tl.timeline,
    })
}
