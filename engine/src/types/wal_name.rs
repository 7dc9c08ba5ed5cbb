//! WAL file names as PostgreSQL writes them in `pg_wal/`.
//!
//! The four kinds `archive_command` can be handed:
//! - segment: `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, then the segment number split in two);
//! - partial segment: a segment name plus `.partial` (end of an old timeline after promotion);
//! - timeline history: `TTTTTTTT.history`;
//! - backup history: a segment name plus `.OOOOOOOO.backup` (offset of the backup start).
//!
//! Only upper-case hex is accepted, as PostgreSQL writes it: a lower-case name would be a
//! second name for the same segment, which is how segments get mislabelled.

use std::fmt;
use std::str::FromStr;

/// PostgreSQL's default WAL segment size (16 MiB).
pub const DEFAULT_WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// A timeline id (`TimeLineID`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// The position of a segment in the WAL stream, as the two 8-digit halves of its name.
///
/// The halves are kept as written: turning them into one number needs the segment size,
/// which comes from the cluster, not from the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo {
    /// `XXXXXXXX`: the high 32 bits of the LSN.
    pub log: u32,
    /// `YYYYYYYY`: the segment within that 4 GiB range.
    pub seg: u32,
}

impl SegmentNo {
    /// Segments per 4 GiB "log" for a segment size.
    pub fn per_log(segment_size: u64) -> u64 {
        0x1_0000_0000 / segment_size
    }

    /// The absolute segment number (`XLogSegNo`).
    pub fn absolute(self, segment_size: u64) -> u64 {
        u64::from(self.log) * Self::per_log(segment_size) + u64::from(self.seg)
    }

    /// Builds the name halves from an absolute segment number.
    pub fn from_absolute(segno: u64, segment_size: u64) -> Self {
        let per = Self::per_log(segment_size);
        SegmentNo {
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
        }
    }

    /// The LSN where this segment starts.
    pub fn start_lsn(self, segment_size: u64) -> crate::types::Lsn {
        crate::types::Lsn(self.absolute(segment_size) * segment_size)
    }
}

/// A parsed WAL archive file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// A complete WAL segment.
    Segment { tli: TimelineId, segno: SegmentNo },
    /// A partial segment left when a timeline ended.
    Partial { tli: TimelineId, segno: SegmentNo },
    /// A timeline history file.
    History { tli: TimelineId },
    /// A backup history file (`.backup`) with the backup's start offset.
    BackupHistory {
        tli: TimelineId,
        segno: SegmentNo,
        offset: u32,
    },
}

/// Error parsing a WAL file name.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a WAL file name: expected a 24-hex-digit segment name (optionally with \
     .partial or .XXXXXXXX.backup) or TTTTTTTT.history, as PostgreSQL passes in %p/%f"
)]
pub struct ParseWalNameError(String);

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn segment_parts(s: &str) -> Option<(TimelineId, SegmentNo)> {
    if s.len() != 24 {
        return None;
    }
    Some((
        TimelineId(hex8(&s[0..8])?),
        SegmentNo {
            log: hex8(&s[8..16])?,
            seg: hex8(&s[16..24])?,
        },
    ))
}

impl WalFileName {
    /// The timeline this file belongs to.
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::History { tli }
            | WalFileName::BackupHistory { tli, .. } => *tli,
        }
    }

    /// The segment position, for the kinds that have one.
    pub fn segment(&self) -> Option<SegmentNo> {
        match self {
            WalFileName::Segment { segno, .. }
            | WalFileName::Partial { segno, .. }
            | WalFileName::BackupHistory { segno, .. } => Some(*segno),
            WalFileName::History { .. } => None,
        }
    }

    /// True for full or partial segments, whose content starts with a WAL page header.
    pub fn has_wal_pages(&self) -> bool {
        matches!(
            self,
            WalFileName::Segment { .. } | WalFileName::Partial { .. }
        )
    }

    /// A short word for messages and listings.
    pub fn kind_name(&self) -> &'static str {
        match self {
            WalFileName::Segment { .. } => "segment",
            WalFileName::Partial { .. } => "partial",
            WalFileName::History { .. } => "history",
            WalFileName::BackupHistory { .. } => "backup",
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment { tli, segno } => {
                write!(f, "{tli}{:08X}{:08X}", segno.log, segno.seg)
            }
            WalFileName::Partial { tli, segno } => {
                write!(f, "{tli}{:08X}{:08X}.partial", segno.log, segno.seg)
            }
            WalFileName::History { tli } => write!(f, "{tli}.history"),
            WalFileName::BackupHistory { tli, segno, offset } => {
                write!(
                    f,
                    "{tli}{:08X}{:08X}.{offset:08X}.backup",
                    segno.log, segno.seg
                )
            }
        }
    }
}

impl FromStr for WalFileName {
    type Err = ParseWalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseWalNameError(s.to_string());
        if let Some(base) = s.strip_suffix(".partial") {
            let (tli, segno) = segment_parts(base).ok_or_else(err)?;
            return Ok(WalFileName::Partial { tli, segno });
        }
        if let Some(base) = s.strip_suffix(".history") {
            return Ok(WalFileName::History {
                tli: TimelineId(hex8(base).ok_or_else(err)?),
            });
        }
        if let Some(base) = s.strip_suffix(".backup") {
            let (seg, off) = base.split_once('.').ok_or_else(err)?;
            let (tli, segno) = segment_parts(seg).ok_or_else(err)?;
            let offset = hex8(off).ok_or_else(err)?;
            return Ok(WalFileName::BackupHistory { tli, segno, offset });
        }
        let (tli, segno) = segment_parts(s).ok_or_else(err)?;
        Ok(WalFileName::Segment { tli, segno })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for name in [
            "000000010000000000000001",
            "0000000200000001000000FF.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            let parsed: WalFileName = name.parse().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        let seg: WalFileName = "0000000300000001000000FE".parse().unwrap();
        assert_eq!(seg.timeline(), TimelineId(3));
        assert_eq!(
            seg.segment().unwrap().absolute(DEFAULT_WAL_SEGMENT_SIZE),
            0x1FE
        );
    }

    #[test]
    fn rejects_lower_case_and_garbage() {
        for bad in [
            "00000001000000000000000a",
            "0000000100000000000001",
            "00000001.HISTORY",
            "000000010000000000000001.partial.x",
            "../000000010000000000000001",
            "000000010000000000000001.0000028.backup",
            "",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad} must not parse");
        }
    }

    #[test]
    fn absolute_segment_numbers_follow_segment_size() {
        let s = SegmentNo { log: 1, seg: 2 };
        assert_eq!(s.absolute(16 << 20), 256 + 2);
        assert_eq!(s.absolute(64 << 20), 64 + 2);
        assert_eq!(SegmentNo::from_absolute(258, 16 << 20), s);
        assert_eq!(s.start_lsn(16 << 20).to_string(), "1/2000000");
    }
}
