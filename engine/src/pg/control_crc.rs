//! A whole copy of `global/pg_control`: one whose CRC-32C matches.
//!
//! PostgreSQL rewrites `pg_control` in place (every checkpoint, and on a standby every advance
//! of its minimum recovery point), so a read that overlaps a write can return a mix of the old
//! and the new contents. A backup that stored such a copy would report success and restore
//! into a cluster that refuses to start ("incorrect checksum in control file"); a backup from
//! a standby, which copies `pg_control` last while replay keeps rewriting it, is where that is
//! likeliest. PostgreSQL's own readers (`pg_controldata`, `pg_basebackup` since 17) check the
//! CRC and read again; so does the backup ([`read_whole`]).
//!
//! Where the CRC lies: `ControlFileData` ends with `pg_crc32c crc`, computed over every byte
//! before it, and fields were added between majors, so its offset differs (288 bytes in
//! PostgreSQL 13 to 17, 292 in 18, measured on files `initdb` wrote). Rather than a table of offsets per major, the check accepts a copy when the
//! CRC-32C of its first `n` bytes equals the little-endian word at `n` for some 4-byte aligned
//! `n` in the head of the file ([`has_matching_crc`]): the true offset always matches in a
//! whole copy, and a torn one matches at one of these ~250 offsets by chance with a
//! probability of about 6 in 100 million.

use std::time::Duration;

/// Offsets tried for the CRC: past the fixed head (system identifier, versions, state, time,
/// checkpoint), within the first KiB (`ControlFileData` is about 300 bytes in 13 to 18).
const CRC_OFFSETS: std::ops::Range<usize> = 40..1024;

/// How many times `pg_control` is read before the backup gives up.
pub const ATTEMPTS: u32 = 50;
/// The pause between two reads: a write of `pg_control` takes microseconds.
pub const PAUSE: Duration = Duration::from_millis(20);

/// CRC-32C (Castagnoli, reflected, as PostgreSQL's `pg_crc32c`) lookup table.
const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn update(state: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(state, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    !update(!0, bytes)
}

/// Whether `bytes` (a `pg_control` file) holds a CRC-32C of everything before it at one of the
/// offsets [`CRC_OFFSETS`]: a whole copy, not one torn by a concurrent rewrite.
pub fn has_matching_crc(bytes: &[u8]) -> bool {
    let end = CRC_OFFSETS.end.min(bytes.len().saturating_sub(4));
    let mut state = update(!0, &bytes[..CRC_OFFSETS.start.min(end)]);
    let mut at = CRC_OFFSETS.start;
    while at <= end {
        let stored = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        if !state == stored {
            return true;
        }
        state = update(state, &bytes[at..(at + 4).min(bytes.len())]);
        at += 4;
    }
    false
}

/// Why no whole copy was read.
#[derive(Debug)]
pub enum Unread {
    /// Reading failed.
    Io(std::io::Error),
    /// Every one of `attempts` copies failed the CRC check.
    NoMatchingCrc {
        /// Copies read.
        attempts: u32,
    },
}

/// Reads `pg_control` with `read_all` (the whole file, from its start) until a copy passes
/// [`has_matching_crc`], at most `attempts` times, `pause` apart; returns that copy.
pub fn read_whole(
    mut read_all: impl FnMut() -> std::io::Result<Vec<u8>>,
    attempts: u32,
    pause: Duration,
) -> Result<Vec<u8>, Unread> {
    for attempt in 1..=attempts.max(1) {
        let bytes = read_all().map_err(Unread::Io)?;
        if has_matching_crc(&bytes) {
            return Ok(bytes);
        }
        if attempt < attempts {
            std::thread::sleep(pause);
        }
    }
    Err(Unread::NoMatchingCrc { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pg_control-like file: `head` bytes of content, their CRC-32C, zeros to 8 KiB.
    fn control_with_crc_at(head: usize, seed: u8) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..head)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let crc = crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.resize(8192, 0);
        bytes
    }

    #[test]
    fn the_crc_is_postgresqls_crc32c() {
        // The check value of CRC-32C (iSCSI): the same polynomial, reflection and final xor
        // as PostgreSQL's COMP_CRC32C / FIN_CRC32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_whole_copy_passes_wherever_its_major_puts_the_crc() {
        for head in [256, 288, 292, 304, 320] {
            assert!(
                has_matching_crc(&control_with_crc_at(head, 7)),
                "crc at {head}"
            );
        }
    }

    #[test]
    fn a_torn_copy_fails() {
        // The first 512 bytes of one version, the rest of another: as a read that overlaps
        // PostgreSQL's rewrite can return (the CRC comes from the new contents, the head
        // from the old).
        let old = control_with_crc_at(296, 1);
        let new = control_with_crc_at(296, 2);
        let mut torn = old[..100].to_vec();
        torn.extend_from_slice(&new[100..]);
        assert!(has_matching_crc(&old) && has_matching_crc(&new));
        assert!(!has_matching_crc(&torn));
        let mut flipped = old.clone();
        flipped[50] ^= 1;
        assert!(!has_matching_crc(&flipped));
        assert!(!has_matching_crc(&[0u8; 20]), "too short for a CRC");
    }

    #[test]
    fn a_torn_read_is_read_again_until_whole() {
        let whole = control_with_crc_at(296, 3);
        let mut torn = whole.clone();
        torn[60] ^= 0xff;
        let mut reads = 0;
        let got = read_whole(
            || {
                reads += 1;
                Ok(if reads < 3 {
                    torn.clone()
                } else {
                    whole.clone()
                })
            },
            5,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!((got, reads), (whole, 3));

        let mut reads = 0;
        let err = read_whole(
            || {
                reads += 1;
                Ok(torn.clone())
            },
            4,
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(
            matches!(err, Unread::NoMatchingCrc { attempts: 4 }),
            "{err:?}"
        );
        assert_eq!(reads, 4);
    }
}
