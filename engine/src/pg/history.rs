//! Timeline history files (`TTTTTTTT.history`) and backup history files
//! (`<segment>.<offset>.backup`), checked as PostgreSQL writes them before archive-push stores
//! them.
//!
//! Why: pushes are create-only, and a different content under an existing name is refused.
//! A garbage or foreign `00000002.history` archived once would stay for good and refuse the
//! genuine one when the server later promotes to timeline 2, and the planner would follow
//! whatever it says. So a history file is refused unless it parses exactly as PostgreSQL's
//! `writeTimeLineHistory` writes it:
//!
//! - one line per ancestor, `parentTLI<TAB>X/X<TAB>reason` (the reason may be empty), plus
//!   comment lines (`#`) and blank lines, which PostgreSQL's reader skips;
//! - parent timelines strictly increasing, each at least 1 and below the file's own timeline
//!   (which must be above 1: timeline 1 has no history);
//! - switch points never decreasing;
//! - at least one entry; the last one names the timeline the new one forked from;
//! - at most [`MAX_HISTORY_FILE`] bytes.
//!
//! A backup history file must start with PostgreSQL's `START WAL LOCATION: X/X (file NAME)`
//! line, agreeing with its own name.

use crate::recovery::HistoryEntry;
use crate::types::{Lsn, WalFileName};

/// Largest history or backup history file accepted (PostgreSQL's are a few hundred bytes).
pub const MAX_HISTORY_FILE: usize = 1 << 20;

fn hex_field(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Parses `X/X` strictly (hex digits only, 1 to 8 on each side).
fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.split_once('/')?;
    Some(Lsn((hex_field(hi)? << 32) | hex_field(lo)?))
}

/// Checks a timeline history file of timeline `tli` and returns its entries. The error says
/// which line is at fault and why (the caller names the file).
pub fn parse_timeline_history(tli: u32, data: &[u8]) -> Result<Vec<HistoryEntry>, String> {
    if tli <= 1 {
        return Err(format!(
            "timeline {tli} cannot have a history file (only timelines above 1, created by a promotion, do)"
        ));
    }
    if data.is_empty() {
        return Err("empty; a timeline history file never is".into());
    }
    if data.len() > MAX_HISTORY_FILE {
        return Err(format!(
            "{} bytes; a timeline history file is at most {MAX_HISTORY_FILE} bytes (PostgreSQL writes one short line per ancestor)",
            data.len()
        ));
    }
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in data.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let trimmed = raw.trim_ascii_start();
        if trimmed.is_empty() || trimmed[0] == b'#' {
            continue;
        }
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
        let bad = |why: &str| {
            format!(
                "line {n} ({shown:?}): {why}; expected PostgreSQL's format \
                 \"parentTLI<TAB>X/X<TAB>reason\""
            )
        };
        let mut fields = raw.splitn(3, |b| *b == b'\t');
        let parent = fields.next().unwrap_or_default();
        let lsn = fields
            .next()
            .ok_or_else(|| bad("no tab-separated switch point"))?;
        let parent: u32 = std::str::from_utf8(parent)
            .ok()
            .filter(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad("the parent timeline is not a decimal number"))?;
        let switch_lsn = std::str::from_utf8(lsn)
            .ok()
            .and_then(parse_lsn)
            .ok_or_else(|| bad("the switch point is not an LSN like 0/3000000"))?;
        if parent == 0 {
            return Err(bad("timeline 0 does not exist"));
        }
        if parent >= tli {
            return Err(bad(&format!(
                "parent timeline {parent} is not below the file's own timeline {tli}"
            )));
        }
        if let Some(prev) = out.last() {
            if parent <= prev.parent {
                return Err(bad(&format!(
                    "parent timelines must increase (timeline {parent} after {})",
                    prev.parent
                )));
            }
            if switch_lsn < prev.switch_lsn {
                return Err(bad(&format!(
                    "switch point {switch_lsn} is before the previous one ({})",
                    prev.switch_lsn
                )));
            }
        }
        out.push(HistoryEntry { parent, switch_lsn });
    }
    if out.is_empty() {
        return Err(
            "no entry: a timeline history file has at least the line of the timeline it forked from"
                .into(),
        );
    }
    Ok(out)
}

/// Checks a backup history file's first line against its name.
pub fn check_backup_history(name: &WalFileName, data: &[u8]) -> Result<(), String> {
    let WalFileName::BackupHistory { tli, segno, offset } = name else {
        return Ok(());
    };
    if data.is_empty() || data.len() > MAX_HISTORY_FILE {
        return Err(format!(
            "{} bytes; a backup history file has between 1 and {MAX_HISTORY_FILE}",
            data.len()
        ));
    }
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let shown = String::from_utf8_lossy(&first[..first.len().min(100)]).into_owned();
    let bad = |why: &str| {
        format!(
            "line 1 ({shown:?}): {why}; expected PostgreSQL's \"START WAL LOCATION: X/X (file NAME)\""
        )
    };
    let line = std::str::from_utf8(first).map_err(|_| bad("not text"))?;
    let rest = line
        .strip_prefix("START WAL LOCATION: ")
        .ok_or_else(|| bad("no START WAL LOCATION"))?;
    let (lsn, file) = rest
        .split_once(" (file ")
        .ok_or_else(|| bad("no (file NAME)"))?;
    let file = file
        .strip_suffix(')')
        .ok_or_else(|| bad("no (file NAME)"))?;
    let lsn = parse_lsn(lsn).ok_or_else(|| bad("the start location is not an LSN"))?;
    let own = format!("{tli}{:08X}{:08X}", segno.log, segno.seg);
    if file != own {
        return Err(bad(&format!(
            "it names segment {file}, the file name says {own}"
        )));
    }
    // The name's offset and segment must place the same LSN, for one of PostgreSQL's segment
    // sizes (powers of two, 1 MiB to 1 GiB).
    let fits = (20..=30).any(|shift| {
        let size = 1u64 << shift;
        lsn.0 >> 32 == u64::from(segno.log)
            && u64::from(segno.seg) * size + u64::from(*offset) == lsn.0 & 0xFFFF_FFFF
            && u64::from(*offset) < size
    });
    if !fits {
        return Err(bad(&format!(
            "start location {lsn} does not match the name's segment and offset {offset:08X}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(v: &[(u32, &str)]) -> Vec<HistoryEntry> {
        v.iter()
            .map(|(p, l)| HistoryEntry {
                parent: *p,
                switch_lsn: l.parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn what_postgresql_writes_parses() {
        let two = b"1\t0/3000158\tno recovery target specified\n";
        assert_eq!(
            parse_timeline_history(2, two).unwrap(),
            entries(&[(1, "0/3000158")])
        );
        let three = b"1\t0/3000158\tno recovery target specified\n\n\
            2\t0/5000000\tbefore 2026-11-24 07:10:00+00\n";
        assert_eq!(
            parse_timeline_history(3, three).unwrap(),
            entries(&[(1, "0/3000158"), (2, "0/5000000")])
        );
        // Comments, blank lines, an empty reason, no final newline, a jump in timelines
        // (ancestors need not be consecutive), equal switch points.
        let odd = b"# made by hand\n  # indented comment\n\n1\t0/3000000\t\n4\t0/3000000";
        assert_eq!(
            parse_timeline_history(7, odd).unwrap(),
            entries(&[(1, "0/3000000"), (4, "0/3000000")])
        );
        // Reasons are arbitrary text, tabs included.
        parse_timeline_history(2, b"1\t1/A\tat restore point \"x\ty\"\n").unwrap();
    }

    #[test]
    fn garbage_and_foreign_formats_are_refused_naming_the_line() {
        for (tli, body, expect) in [
            (2, &b""[..], "empty"),
            (2, b"\n\n# nothing\n", "no entry"),
            (2, b"hello world\n", "line 1"),
            (2, b"{\"timeline\": 2, \"parent\": 1}\n", "line 1"),
            (2, b"1 0/3000000 reason\n", "line 1"), // spaces, not tabs
            (2, b"1\t3000000\treason\n", "line 1"), // not X/X
            (2, b"1\t0/G000000\treason\n", "line 1"), // not hex
            (2, b"1\t0/123456789\tr\n", "line 1"),  // too long
            (2, b"0\t0/3000000\tr\n", "timeline 0"),
            (2, b"2\t0/3000000\tr\n", "not below"),
            (3, b"# c\n1\t0/3000000\tr\n1\t0/4000000\tr\n", "line 3"),
            (3, b"2\t0/3000000\tr\n1\t0/4000000\tr\n", "must increase"),
            (
                4,
                b"1\t0/5000000\tr\n2\t0/4000000\tr\n",
                "before the previous",
            ),
            (2, b"+1\t0/3000000\tr\n", "decimal"),
            (2, b"1\t+0/3000000\tr\n", "line 1"),
        ] {
            let err = parse_timeline_history(tli, body).unwrap_err();
            assert!(
                err.contains(expect),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_timeline_history(1, b"1\t0/3000000\tr\n")
            .unwrap_err()
            .contains("timeline 1"));
        let huge = vec![b'#'; MAX_HISTORY_FILE + 1];
        assert!(parse_timeline_history(2, &huge)
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn backup_history_files_must_agree_with_their_name() {
        let name: WalFileName = "000000010000000000000002.00000028.backup".parse().unwrap();
        let good = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
            STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n";
        check_backup_history(&name, good).unwrap();
        // 64 MiB segments: segment 0/8 starts at 0/20000000.
        let big: WalFileName = "000000010000000000000008.00000028.backup".parse().unwrap();
        check_backup_history(
            &big,
            b"START WAL LOCATION: 0/20000028 (file 000000010000000000000008)\n",
        )
        .unwrap();
        for (body, expect) in [
            (&b"garbage\n"[..], "START WAL LOCATION"),
            (b"", "bytes"),
            (
                b"START WAL LOCATION: 0/2000028 (file 000000010000000000000003)\n",
                "names segment",
            ),
            (
                b"START WAL LOCATION: 0/2000030 (file 000000010000000000000002)\n",
                "does not match",
            ),
            (
                b"START WAL LOCATION: zz (file 000000010000000000000002)\n",
                "not an LSN",
            ),
        ] {
            let err = check_backup_history(&name, body).unwrap_err();
            assert!(err.contains(expect), "{err}");
        }
    }
}
