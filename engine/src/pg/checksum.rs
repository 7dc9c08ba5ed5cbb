//! PostgreSQL data page checksums (`pg_checksum_page`, FNV-1a based, from
//! `src/include/storage/checksum_impl.h`), verified while a base backup reads relation files,
//! and over a whole stopped data directory ([`verify_data_directory`]) where a drill has no
//! `pg_checksums` of the data directory's major version.
//!
//! The algorithm, the page header fields it reads (`pd_lsn`, `pd_checksum`, `pd_upper`) and
//! the 8 KiB page are the same in every PostgreSQL from 9.3 to 18.

/// Page size.
pub const BLCKSZ: usize = 8192;
/// Blocks per 1 GiB relation segment file.
pub const RELSEG_SIZE: u32 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline]
fn comp(sum: &mut u32, value: u32) {
    let tmp = *sum ^ value;
    *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
}

/// `pg_checksum_page(page, blkno)`; `page` must be [`BLCKSZ`] bytes.
pub fn checksum_page(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), BLCKSZ);
    let mut sums = BASE_OFFSETS;
    for (i, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in row.chunks_exact(4).enumerate() {
            let mut v = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            // pd_checksum (bytes 8..10) counts as zero.
            if i == 0 && j == 2 {
                v &= 0xFFFF_0000;
            }
            comp(&mut sums[j], v);
        }
    }
    for _ in 0..2 {
        for s in sums.iter_mut() {
            comp(s, 0);
        }
    }
    let result = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((result % 65535) + 1) as u16
}

/// What checking one page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// Checksum matches.
    Valid,
    /// A new (all-zero or never initialised) page: nothing to check.
    New,
    /// Changed after the backup started (its LSN is newer): WAL replay rewrites it.
    SkippedNewer,
    /// The checksum does not match.
    Invalid { expected: u16, found: u16 },
}

/// Checks one page of a relation file; `start_lsn` is the backup's start.
pub fn check_page(page: &[u8], blkno: u32, start_lsn: u64) -> PageCheck {
    let pd_upper = u16::from_le_bytes([page[14], page[15]]);
    if pd_upper == 0 {
        return if page.iter().all(|b| *b == 0) {
            PageCheck::New
        } else {
            PageCheck::Invalid {
                expected: 0,
                found: 0,
            }
        };
    }
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as u64;
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes")) as u64;
    if (hi << 32 | lo) >= start_lsn {
        return PageCheck::SkippedNewer;
    }
    let found = u16::from_le_bytes([page[8], page[9]]);
    let expected = checksum_page(page, blkno);
    if expected == found {
        PageCheck::Valid
    } else {
        PageCheck::Invalid { expected, found }
    }
}

/// For a path relative to the data directory, the segment number when it is a relation
/// file (under `base/`, `global/` or `pg_tblspc/`); `None` otherwise.
pub fn relation_segment_of_path(path: &str) -> Option<u32> {
    let in_db_dir =
        path.starts_with("base/") || path.starts_with("global/") || path.starts_with("pg_tblspc/");
    let name = path.rsplit('/').next()?;
    if in_db_dir {
        relation_segment(name)
    } else {
        None
    }
}

/// What [`verify_data_directory`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryChecksums {
    /// Relation files read.
    pub files: u64,
    /// Pages whose checksum was verified (new, all-zero pages are not counted).
    pub pages: u64,
    /// Pages whose checksum does not match: (relative path, block number).
    pub bad: Vec<(String, u32)>,
}

/// Verifies the checksum of every page of every relation file of a stopped data directory
/// (tablespaces included), as `pg_checksums --check` does. The server must be stopped: a
/// running one may have written a page half-way.
pub fn verify_data_directory(pgdata: &std::path::Path) -> crate::error::Result<DirectoryChecksums> {
    use std::io::Read;
    let mut found = DirectoryChecksums::default();
    let mut buf = vec![0u8; 128 * BLCKSZ];
    let tablespace_dir = crate::pg::tablespace_dir::of_data_directory(pgdata)?;
    crate::pg::datadir::walk(pgdata, &tablespace_dir, |e| {
        let crate::pg::datadir::EntryKind::File { .. } = e.kind else {
            return Ok(());
        };
        let Some(seg) = relation_segment_of_path(&e.path) else {
            return Ok(());
        };
        let mut f = match std::fs::File::open(&e.abs) {
            Ok(f) => f,
            // Dropped since the walk listed it (it cannot happen on a stopped server).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(crate::error::Error::io(
                    format!("reading {}", e.abs.display()),
                    err,
                ))
            }
        };
        found.files += 1;
        let mut blkno = seg * RELSEG_SIZE;
        loop {
            let mut n = 0;
            while n < buf.len() {
                match f.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        return Err(crate::error::Error::io(
                            format!("reading {}", e.abs.display()),
                            err,
                        ))
                    }
                }
            }
            // A partial page at the end is what pg_checksums reports too: a torn file.
            if n % BLCKSZ != 0 {
                found
                    .bad
                    .push((e.path.clone(), blkno + (n / BLCKSZ) as u32));
            }
            for page in buf[..n - n % BLCKSZ].chunks_exact(BLCKSZ) {
                match check_page(page, blkno, u64::MAX) {
                    PageCheck::Valid => found.pages += 1,
                    PageCheck::Invalid { .. } => found.bad.push((e.path.clone(), blkno)),
                    PageCheck::New | PageCheck::SkippedNewer => {}
                }
                blkno += 1;
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    })?;
    Ok(found)
}

/// For a relation file name (`16384`, `16384.2`, `16384_fsm`, `16384_vm.1`, `16384_init`),
/// the segment number; `None` if the name is not a relation file.
pub fn relation_segment(file_name: &str) -> Option<u32> {
    let (base, seg) = match file_name.split_once('.') {
        Some((b, s)) => (b, s.parse::<u32>().ok()?),
        None => (file_name, 0),
    };
    let node = base
        .strip_suffix("_fsm")
        .or_else(|| base.strip_suffix("_vm"))
        .or_else(|| base.strip_suffix("_init"))
        .unwrap_or(base);
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_scan_finds_a_flipped_bit() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("base/5");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(dir.path().join("global")).unwrap();
        let mut page = vec![0u8; BLCKSZ];
        page[0..8].copy_from_slice(&[0, 0, 0, 0, 0x28, 0, 0, 1]);
        page[12..14].copy_from_slice(&40u16.to_le_bytes());
        page[14..16].copy_from_slice(&8000u16.to_le_bytes());
        let mut file = Vec::new();
        for blkno in 0..3u32 {
            let mut p = page.clone();
            p[8000] = blkno as u8;
            let sum = checksum_page(&p, blkno);
            p[8..10].copy_from_slice(&sum.to_le_bytes());
            file.extend_from_slice(&p);
        }
        file.extend_from_slice(&vec![0u8; BLCKSZ]); // a new page: not checked
        std::fs::write(db.join("16384"), &file).unwrap();
        std::fs::write(db.join("PG_VERSION"), "17\n").unwrap();
        // What names this cluster's directory in tablespaces.
        std::fs::write(dir.path().join("PG_VERSION"), "17\n").unwrap();
        std::fs::write(dir.path().join("global/pg_control"), [0u8; 64]).unwrap();
        let clean = verify_data_directory(dir.path()).unwrap();
        assert_eq!((clean.files, clean.pages, clean.bad.len()), (1, 3, 0));
        file[BLCKSZ + 8100] ^= 0x10;
        std::fs::write(db.join("16384"), &file).unwrap();
        let bad = verify_data_directory(dir.path()).unwrap();
        assert_eq!(bad.bad, vec![("base/5/16384".to_string(), 1)]);
    }

    #[test]
    fn recognises_relation_files() {
        assert_eq!(relation_segment("16384"), Some(0));
        assert_eq!(relation_segment("16384.3"), Some(3));
        assert_eq!(relation_segment("16384_fsm"), Some(0));
        assert_eq!(relation_segment("16384_vm.1"), Some(1));
        assert_eq!(relation_segment("PG_VERSION"), None);
        assert_eq!(relation_segment("pg_filenode.map"), None);
        assert_eq!(relation_segment("16384_x"), None);
    }

    #[test]
    fn a_stamped_page_validates_and_a_flipped_byte_does_not() {
        let mut page = vec![0u8; BLCKSZ];
        page[0..8].copy_from_slice(&[0, 0, 0, 0, 0x28, 0, 0, 1]); // LSN 0/1000028
        page[12..14].copy_from_slice(&40u16.to_le_bytes());
        page[14..16].copy_from_slice(&8000u16.to_le_bytes());
        for (i, b) in page.iter_mut().enumerate().skip(8000) {
            *b = i as u8;
        }
        let sum = checksum_page(&page, 7);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(check_page(&page, 7, u64::MAX), PageCheck::Valid);
        assert!(
            matches!(check_page(&page, 8, u64::MAX), PageCheck::Invalid { .. }),
            "block number is mixed in"
        );
        page[8100] ^= 1;
        assert!(matches!(
            check_page(&page, 7, u64::MAX),
            PageCheck::Invalid { .. }
        ));
        assert_eq!(check_page(&page, 7, 0), PageCheck::SkippedNewer);
        assert_eq!(check_page(&vec![0u8; BLCKSZ], 0, u64::MAX), PageCheck::New);
    }
}
