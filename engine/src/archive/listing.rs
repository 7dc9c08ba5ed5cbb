//! Archived WAL per timeline: continuous ranges and gaps, for `info` and, later, for
//! restore preflight. Built from one LIST of the cluster's pointers (names only, no GETs).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::repo::{layout, Repository};
use crate::store::cluster;
use crate::types::{SegmentNo, TimelineId, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};

/// A run of consecutive segments.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalRange {
    /// First segment name.
    pub first: String,
    /// Last segment name.
    pub last: String,
    /// Number of segments.
    pub segments: u64,
}

/// Missing segments between two ranges.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalGap {
    /// First missing segment.
    pub first_missing: String,
    /// Last missing segment.
    pub last_missing: String,
    /// Number of missing segments.
    pub segments: u64,
}

/// What is archived on one timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelineWal {
    /// Timeline id.
    pub timeline: u32,
    /// Whether its `.history` file is archived (timeline 1 has none).
    pub history_file: bool,
    /// Continuous ranges, oldest first.
    pub ranges: Vec<WalRange>,
    /// Gaps between ranges.
    pub gaps: Vec<WalGap>,
    /// `.partial` files.
    pub partial_files: Vec<String>,
    /// `.backup` history files.
    pub backup_history_files: Vec<String>,
    /// Bytes of pointers listed for this timeline are tiny; this is the segment count.
    pub segments: u64,
}

/// Archived WAL of one cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalListing {
    /// Cluster name.
    pub cluster: String,
    /// Bound system identifier, once the first segment was pushed.
    pub system_identifier: Option<String>,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// Per timeline, ascending.
    pub timelines: Vec<TimelineWal>,
}

#[derive(Default)]
struct Collect {
    history: bool,
    segments: Vec<SegmentNo>,
    partial: Vec<String>,
    backup: Vec<String>,
}

/// Lists the archive of `cluster`.
pub async fn list_wal(repo: &Repository, cluster: &str) -> Result<WalListing> {
    let record = cluster::read(repo, cluster).await?;
    let seg_size = record
        .as_ref()
        .map(|r| r.wal_segment_size)
        .unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
    let objects = repo
        .storage()
        .list(&layout::wal_pointer_prefix(cluster))
        .await?;
    let mut per_tli: BTreeMap<TimelineId, Collect> = BTreeMap::new();
    for o in objects {
        let Some((tli, name)) = layout::parse_wal_pointer(cluster, o.key.as_str()) else {
            continue;
        };
        let c = per_tli.entry(tli).or_default();
        match name {
            WalFileName::Segment { segno, .. } => c.segments.push(segno),
            WalFileName::Partial { .. } => c.partial.push(name.to_string()),
            WalFileName::History { .. } => c.history = true,
            WalFileName::BackupHistory { .. } => c.backup.push(name.to_string()),
        }
    }
    let timelines = per_tli
        .into_iter()
        .map(|(tli, mut c)| {
            c.segments.sort();
            let (ranges, gaps) = ranges_and_gaps(tli, &c.segments, seg_size);
            TimelineWal {
                timeline: tli.0,
                history_file: c.history,
                segments: c.segments.len() as u64,
                ranges,
                gaps,
                partial_files: c.partial,
                backup_history_files: c.backup,
            }
        })
        .collect();
    Ok(WalListing {
        cluster: cluster.to_string(),
        system_identifier: record.map(|r| r.system_identifier),
        wal_segment_size: seg_size,
        timelines,
    })
}

fn seg_name(tli: TimelineId, segno: u64, seg_size: u64) -> String {
    WalFileName::Segment {
        tli,
        segno: SegmentNo::from_absolute(segno, seg_size),
    }
    .to_string()
}

/// Splits sorted segments into continuous ranges and the gaps between them.
pub fn ranges_and_gaps(
    tli: TimelineId,
    sorted: &[SegmentNo],
    seg_size: u64,
) -> (Vec<WalRange>, Vec<WalGap>) {
    let mut ranges = Vec::new();
    let mut gaps = Vec::new();
    let mut iter = sorted.iter().map(|s| s.absolute(seg_size));
    let Some(first) = iter.next() else {
        return (ranges, gaps);
    };
    let (mut start, mut prev) = (first, first);
    let close = |start: u64, end: u64, ranges: &mut Vec<WalRange>| {
        ranges.push(WalRange {
            first: seg_name(tli, start, seg_size),
            last: seg_name(tli, end, seg_size),
            segments: end - start + 1,
        })
    };
    for n in iter {
        if n != prev + 1 {
            close(start, prev, &mut ranges);
            gaps.push(WalGap {
                first_missing: seg_name(tli, prev + 1, seg_size),
                last_missing: seg_name(tli, n - 1, seg_size),
                segments: n - prev - 1,
            });
            start = n;
        }
        prev = n;
    }
    close(start, prev, &mut ranges);
    (ranges, gaps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ranges_and_gaps_across_log_boundaries() {
        let size = 16 << 20;
        let segs: Vec<SegmentNo> = [1u64, 2, 3, 0xFE, 0xFF, 0x100, 0x105]
            .iter()
            .map(|n| SegmentNo::from_absolute(*n, size))
            .collect();
        let (ranges, gaps) = ranges_and_gaps(TimelineId(1), &segs, size);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[1].first, "0000000100000000000000FE");
        assert_eq!(ranges[1].last, "000000010000000100000000");
        assert_eq!(ranges[1].segments, 3);
        assert_eq!(gaps[0].first_missing, "000000010000000000000004");
        assert_eq!(gaps[0].segments, 0xFE - 4);
        assert_eq!(gaps[1].first_missing, "000000010000000100000001");
        assert_eq!(gaps[1].last_missing, "000000010000000100000004");
    }
}
