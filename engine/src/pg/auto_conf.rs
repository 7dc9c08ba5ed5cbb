//! pgcairn's blocks in `postgresql.auto.conf`, edited as bytes.
//!
//! The file is PostgreSQL's and its users': `ALTER SYSTEM` writes values in the server's
//! encoding, which need not be UTF-8 (a LATIN1 comment or value). Read as text, such bytes came
//! back as U+FFFD and the user's settings were silently changed by a restore or by the first
//! `archive-get` after one. Here only lines between pgcairn's own markers are taken out; every
//! other byte is kept as it was. A begin marker with no end marker after it (a hand edit) is
//! not a block: what follows it is not known to be pgcairn's, and it all stays.

/// `conf` without every complete block from a line `begin` to the next line `end` (both
/// included), and how many blocks were taken out. Kept lines end with `\n` (a last line
/// without one gets it); a marker line may end with `\r`.
pub fn without_blocks(conf: &[u8], begin: &str, end: &str) -> (Vec<u8>, usize) {
    let is =
        |line: &[u8], marker: &str| line.strip_suffix(b"\r").unwrap_or(line) == marker.as_bytes();
    let mut lines: Vec<&[u8]> = conf.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::with_capacity(conf.len());
    let mut removed = 0;
    let mut i = 0;
    while i < lines.len() {
        if is(lines[i], begin) {
            if let Some(len) = lines[i + 1..].iter().position(|l| is(l, end)) {
                i += len + 2;
                removed += 1;
                continue;
            }
        }
        out.extend_from_slice(lines[i]);
        out.push(b'\n');
        i += 1;
    }
    (out, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "# pgcairn x (begin)";
    const E: &str = "# pgcairn x (end)";

    #[test]
    fn blocks_go_and_every_other_byte_stays() {
        // A LATIN1 value ALTER SYSTEM wrote: not UTF-8.
        let mut conf = b"application_name = 'caf\xe9'\n".to_vec();
        conf.extend_from_slice(
            format!("{B}\nrestore_command = 'x'\n{E}\nwork_mem = '8MB'\n{B}\r\na = 1\r\n{E}\r\n")
                .as_bytes(),
        );
        let (kept, n) = without_blocks(&conf, B, E);
        assert_eq!(n, 2);
        assert_eq!(
            kept,
            b"application_name = 'caf\xe9'\nwork_mem = '8MB'\n".to_vec()
        );
        assert_eq!(
            without_blocks(&kept, B, E),
            (kept.clone(), 0),
            "nothing left to take"
        );
    }

    #[test]
    fn an_unterminated_block_is_kept_with_what_follows() {
        let conf = format!("a = 1\n{B}\nrestore_command = 'x'\nwork_mem = '8MB'");
        let (kept, n) = without_blocks(conf.as_bytes(), B, E);
        assert_eq!(n, 0);
        assert_eq!(kept, format!("{conf}\n").into_bytes());
    }

    #[test]
    fn a_block_nested_in_another_goes_with_the_outer_one() {
        let conf = format!("a = 1\n{B}\nx = 1\n# inner (begin)\ny = 2\n# inner (end)\n{E}\n");
        let (kept, n) = without_blocks(conf.as_bytes(), B, E);
        assert_eq!((kept, n), (b"a = 1\n".to_vec(), 1));
    }
}
