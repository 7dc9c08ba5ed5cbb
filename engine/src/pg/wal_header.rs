//! The long page header at the start of every WAL segment (`XLogLongPageHeaderData`).
//!
//! ```text
//! offset  field
//! 0       xlp_magic      u16   (per major version: 0xD106 for 13 ... 0xD118 for 18)
//! 2       xlp_info       u16   (XLP_LONG_HEADER = 0x0002 on a segment's first page)
//! 4       xlp_tli        u32
//! 8       xlp_pageaddr   u64   (LSN of this page: the segment's start)
//! 16      xlp_rem_len    u32
//! 24      xlp_sysid      u64   (database system identifier)
//! 32      xlp_seg_size   u32
//! 36      xlp_xlog_blcksz u32
//! ```
//! (little-endian on every platform PostgreSQL ships packages for.) The long header and the
//! segment naming are the same in PostgreSQL 13 to 18; only the magic changes with each major
//! version (`XLOG_PAGE_MAGIC` in `src/include/access/xlog_internal.h`), and it tells which
//! major wrote a segment: a cluster name holds one major version.
//!
//! archive-push reads it to refuse a segment of another cluster (system identifier), a file
//! that is not the size its header says, and a file whose content is another segment than its
//! name says (page address): the last is how a mislabelled segment would otherwise slip in.

use crate::types::{Lsn, WalFileName};

const XLP_LONG_HEADER: u16 = 0x0002;
/// Bytes needed to parse the long header.
pub const LONG_HEADER_LEN: usize = 40;

/// WAL page magic numbers by PostgreSQL major version.
const KNOWN_MAGIC: &[(u16, u32)] = &[
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The WAL page magic PostgreSQL `major` writes, if pgcairn supports it.
pub fn magic_for_major(major: u32) -> Option<u16> {
    KNOWN_MAGIC
        .iter()
        .find(|(_, v)| *v == major)
        .map(|(m, _)| *m)
}

/// What the first page of a segment says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// PostgreSQL major version (from the page magic).
    pub pg_major: u32,
    /// Timeline of the first page.
    pub timeline: u32,
    /// LSN where this segment starts.
    pub page_addr: Lsn,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// WAL segment size in bytes.
    pub segment_size: u32,
    /// WAL block size.
    pub block_size: u32,
}

/// Why a file is not a valid segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalHeaderError {
    /// Shorter than a page header.
    #[error("file is {0} bytes, too short for a WAL page header")]
    TooShort(usize),
    /// Unknown magic.
    #[error("WAL page magic 0x{0:04X} is not one of the PostgreSQL versions pgcairn supports (13 to 18)")]
    UnknownMagic(u16),
    /// First page lacks the long header.
    #[error("first page has no long header (xlp_info 0x{0:04X}): not the start of a segment")]
    NotLongHeader(u16),
    /// Segment size not a power of two between 1 MiB and 1 GiB.
    #[error("header says segment size {0}, which PostgreSQL never uses")]
    BadSegmentSize(u32),
}

/// The first [`LONG_HEADER_LEN`] bytes of the file at `path` (where a segment's long page
/// header is).
pub fn read_head(path: &std::path::Path) -> std::io::Result<[u8; LONG_HEADER_LEN]> {
    use std::io::Read;
    let mut head = [0u8; LONG_HEADER_LEN];
    std::fs::File::open(path)?.read_exact(&mut head)?;
    Ok(head)
}

impl LongPageHeader {
    /// Parses the header from the first bytes of a segment.
    pub fn parse(bytes: &[u8]) -> Result<Self, WalHeaderError> {
        if bytes.len() < LONG_HEADER_LEN {
            return Err(WalHeaderError::TooShort(bytes.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let magic = u16_at(0);
        let pg_major = KNOWN_MAGIC
            .iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, v)| *v)
            .ok_or(WalHeaderError::UnknownMagic(magic))?;
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(WalHeaderError::NotLongHeader(info));
        }
        let segment_size = u32_at(32);
        if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
            return Err(WalHeaderError::BadSegmentSize(segment_size));
        }
        Ok(LongPageHeader {
            pg_major,
            timeline: u32_at(4),
            page_addr: Lsn(u64_at(8)),
            system_identifier: u64_at(24),
            segment_size,
            block_size: u32_at(36),
        })
    }

    /// Checks the header agrees with the file's name and size; returns what is wrong.
    pub fn check_against(&self, name: &WalFileName, file_len: usize) -> Result<(), String> {
        let Some(segno) = name.segment() else {
            return Ok(());
        };
        let seg_size = u64::from(self.segment_size);
        let full = matches!(name, WalFileName::Segment { .. });
        if full && file_len as u64 != seg_size {
            return Err(format!(
                "file is {file_len} bytes but its header says segments are {seg_size} bytes (truncated or not a finished segment)"
            ));
        }
        if !full && file_len as u64 > seg_size {
            return Err(format!(
                "partial segment is {file_len} bytes, larger than the segment size {seg_size}"
            ));
        }
        let expected = segno.start_lsn(seg_size);
        if self.page_addr != expected {
            return Err(format!(
                "its content starts at LSN {} but the name {name} means LSN {expected}: the file is mislabelled",
                self.page_addr
            ));
        }
        // After a timeline switch the new timeline's first segment begins with pages written on
        // the old timeline, so the header's timeline may be lower, never higher.
        if self.timeline > name.timeline().0 {
            return Err(format!(
                "its first page is on timeline {} but the name says timeline {}",
                self.timeline,
                name.timeline().0
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a fake segment whose first page carries a valid long header.
    pub(crate) fn fake_segment(
        sysid: u64,
        tli: u32,
        page_addr: u64,
        seg_size: u32,
        len: usize,
    ) -> Vec<u8> {
        fake_segment_of(15, sysid, tli, page_addr, seg_size, len)
    }

    /// Like [`fake_segment`], written by PostgreSQL `major`.
    pub(crate) fn fake_segment_of(
        major: u32,
        sysid: u64,
        tli: u32,
        page_addr: u64,
        seg_size: u32,
        len: usize,
    ) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let magic = magic_for_major(major).expect("a supported major");
        v[0..2].copy_from_slice(&magic.to_le_bytes());
        v[2..4].copy_from_slice(&0x0007u16.to_le_bytes());
        v[4..8].copy_from_slice(&tli.to_le_bytes());
        v[8..16].copy_from_slice(&page_addr.to_le_bytes());
        v[24..32].copy_from_slice(&sysid.to_le_bytes());
        v[32..36].copy_from_slice(&seg_size.to_le_bytes());
        v[36..40].copy_from_slice(&8192u32.to_le_bytes());
        for (i, b) in v.iter_mut().enumerate().skip(64) {
            *b = (i % 97) as u8;
        }
        v
    }

    #[test]
    fn parses_and_checks_a_segment() {
        let seg = fake_segment(
            7_000_000_000_000_000_001,
            1,
            0x0300_0000,
            16 << 20,
            16 << 20,
        );
        let h = LongPageHeader::parse(&seg).unwrap();
        assert_eq!(h.pg_major, 15);
        assert_eq!(h.system_identifier, 7_000_000_000_000_000_001);
        let right: WalFileName = "000000010000000000000003".parse().unwrap();
        assert_eq!(h.check_against(&right, seg.len()), Ok(()));
        let wrong: WalFileName = "000000010000000000000004".parse().unwrap();
        assert!(h
            .check_against(&wrong, seg.len())
            .unwrap_err()
            .contains("mislabelled"));
        assert!(h
            .check_against(&right, seg.len() - 1)
            .unwrap_err()
            .contains("truncated"));
        let next_tli: WalFileName = "000000020000000000000003".parse().unwrap();
        assert_eq!(
            h.check_against(&next_tli, seg.len()),
            Ok(()),
            "a new timeline starts with old pages"
        );
    }

    #[test]
    fn every_supported_major_is_recognised_by_its_magic() {
        // The magic of each major, as its initdb writes it (checked against 13.23, 14.23,
        // 15.18, 16.14, 17.10 and 18.4).
        for (major, magic) in [
            (13, 0xD106),
            (14, 0xD10D),
            (15, 0xD110),
            (16, 0xD113),
            (17, 0xD116),
            (18, 0xD118),
        ] {
            assert_eq!(magic_for_major(major), Some(magic));
            let seg = fake_segment_of(major, 1, 1, 0, 16 << 20, 64);
            assert_eq!(LongPageHeader::parse(&seg).unwrap().pg_major, major);
        }
        let mut seg = fake_segment(1, 1, 0, 16 << 20, 64);
        seg[0..2].copy_from_slice(&0xD104u16.to_le_bytes()); // PostgreSQL 12
        assert_eq!(
            LongPageHeader::parse(&seg),
            Err(WalHeaderError::UnknownMagic(0xD104))
        );
    }

    #[test]
    fn rejects_non_wal() {
        assert_eq!(
            LongPageHeader::parse(&[0u8; 10]),
            Err(WalHeaderError::TooShort(10))
        );
        assert_eq!(
            LongPageHeader::parse(&[0u8; 64]),
            Err(WalHeaderError::UnknownMagic(0))
        );
        let mut seg = fake_segment(1, 1, 0, 16 << 20, 64);
        seg[32..36].copy_from_slice(&12345u32.to_le_bytes());
        assert_eq!(
            LongPageHeader::parse(&seg),
            Err(WalHeaderError::BadSegmentSize(12345))
        );
    }
}
