//! Reading files another OS user controls, from a more privileged process.
//!
//! A drill run as root starts its throwaway PostgreSQL as the data directory's owner, and that
//! user writes the server log and the prefetch spool's counters that root reads afterwards. A
//! compromised database account could put a FIFO there (root's read blocks for ever), a
//! symlink to `/dev/zero` or to a file only root may read (an endless read, or root's secrets
//! copied into a drill report), a hard link to such a file, or a file of many gigabytes. Here a
//! read follows no symlink in the last component, never blocks on opening a FIFO, refuses
//! anything but a regular file with one link and reads at most a bound. Directories above
//! the file are the caller's, unless it names a directory it trusts
//! ([`read_capped_beneath`]): then every directory below that one is opened without
//! following a link, so a directory the other user swapped for a link (a drill's spool,
//! which belongs to its instance's user) cannot send the read elsewhere.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// Opens `path` for reading only if it is a regular file reached without following a symlink.
fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    regular(f, path)
}

/// `f` if it is a regular file with one link.
fn regular(f: File, path: &Path) -> io::Result<File> {
    let meta = f.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file with one link", path.display()),
        ));
    }
    Ok(f)
}

/// The whole of `path`, which must be a regular file of at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_all_capped(open_regular(path)?, path, max)
}

/// The whole of `trusted/rel`, a regular file of at most `max` bytes, where no directory
/// below `trusted` may be a link: each is opened without following one.
pub fn read_capped_beneath(trusted: &Path, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
    let path = trusted.join(rel);
    let rel = rel.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not UTF-8", rel.display()),
        )
    })?;
    let mut names = crate::fs_beneath::components(rel)?;
    let file = names.pop().expect("components are never empty");
    let mut dir = crate::fs_beneath::open_root(trusted)?;
    for name in names {
        dir = crate::fs_beneath::open_dir(dir.as_fd(), Path::new(name))?;
    }
    let fd = rustix::fs::openat(
        dir.as_fd(),
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    read_all_capped(regular(File::from(fd), &path)?, &path, max)
}

fn read_all_capped(f: File, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    f.take(max + 1).read_to_end(&mut body)?;
    if body.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    Ok(body)
}

/// The last `max` bytes of the regular file `path`, as text (invalid UTF-8 replaced); empty
/// when it cannot be read that way.
pub fn read_tail(path: &Path, max: u64) -> String {
    let read = || -> io::Result<Vec<u8>> {
        let mut f = open_regular(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut body = Vec::new();
        f.take(max).read_to_end(&mut body)?;
        Ok(body)
    };
    read()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Longest line [`matching_lines`] keeps whole; the rest of a longer one is dropped.
const LINE_MAX: usize = 64 * 1024;

/// The lines of the regular file `path` that contain one of `needles`, read from its start
/// in pieces, never more than `max_read` bytes of it; at most `max_kept` bytes of such lines
/// are kept, the last ones. Only whole lines count: one without its newline yet is left out. Empty when it cannot be read that way. Unlike [`read_tail`], a
/// line of interest is found wherever it is, however much was logged after it.
pub fn matching_lines(path: &Path, needles: &[&str], max_read: u64, max_kept: usize) -> String {
    let Ok(f) = open_regular(path) else {
        return String::new();
    };
    let mut reader = BufReader::with_capacity(LINE_MAX, f.take(max_read));
    let mut kept: std::collections::VecDeque<String> = Default::default();
    let mut kept_len = 0usize;
    let mut line: Vec<u8> = Vec::new();
    while let Ok(buf) = reader.fill_buf() {
        if buf.is_empty() {
            break;
        }
        let (piece, ends_line) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = LINE_MAX.saturating_sub(line.len());
        line.extend_from_slice(&piece[..piece.len().min(room)]);
        let used = piece.len();
        reader.consume(used);
        if !ends_line {
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if needles.iter().any(|n| text.contains(n)) {
            let mut text = text.into_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            kept_len += text.len();
            kept.push_back(text);
            while kept_len > max_kept {
                match kept.pop_front() {
                    Some(old) => kept_len -= old.len(),
                    None => break,
                }
            }
        }
        line.clear();
    }
    // A last line without its newline is left out: the server may be writing it right now
    // (or the read stopped at max_read inside it), and a half line would read as a whole one.
    kept.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fifos_symlinks_devices_and_oversized_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let started = Instant::now();
        assert!(read_capped(&fifo, 1024).is_err());
        assert_eq!(read_tail(&fifo, 1024), "");
        assert!(started.elapsed() < Duration::from_secs(5), "never blocks");

        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_capped(&link, 1024).is_err());
        assert_eq!(read_tail(&link, 1024), "");
        assert!(read_capped(Path::new("/dev/zero"), 1024).is_err(), "device");

        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert!(read_capped(&hard, 1024).is_err(), "a second link");
        assert_eq!(read_tail(&hard, 1024), "");

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(read_capped(&big, 1024).is_err());
        assert_eq!(read_capped(&big, 2048).unwrap().len(), 2048);

        let log = dir.path().join("log");
        std::fs::write(&log, "first line\nlast line\n").unwrap();
        assert_eq!(read_tail(&log, 10), "last line\n");
        assert_eq!(read_tail(&log, 1 << 20), "first line\nlast line\n");
    }

    #[test]
    fn lines_of_interest_are_found_however_much_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut text = String::from("LOG:  consistent recovery state reached at 0/A6000100\n");
        let noise = "LOG:  restored log file \"000000010000000000000001\" from archive\n";
        while text.len() < 4 << 20 {
            text.push_str(noise);
        }
        // A line longer than any kept whole, then the end of recovery.
        text.push_str(&"x".repeat(200_000));
        text.push_str(" FATAL  in a long line\nLOG:  redo done at 0/AE4B47F8\nLOG:  last");
        std::fs::write(&log, &text).unwrap();
        let needles = ["consistent recovery state", "redo done at", "FATAL", "last"];
        let found = matching_lines(&log, &needles, 1 << 30, 1 << 20);
        assert!(
            found.starts_with("LOG:  consistent recovery state reached at 0/A6000100\n"),
            "{found:.200}"
        );
        assert!(found.contains("LOG:  redo done at 0/AE4B47F8\n"));
        assert!(
            found.ends_with("LOG:  redo done at 0/AE4B47F8\n"),
            "a last line without its newline is not taken whole: {found:.200}"
        );
        assert!(!found.contains("restored log file"));
        // The long line was cut to its first LINE_MAX bytes, where its needle is not.
        assert!(!found.contains("FATAL"));
        // A tail of the same file misses the first line.
        assert!(!read_tail(&log, 1 << 20).contains("consistent recovery state"));
        // Reading stops at max_read; the kept lines are the last ones within max_kept.
        assert_eq!(matching_lines(&log, &needles, 10, 1 << 20), "");
        let kept = matching_lines(&log, &["restored log file"], 1 << 30, noise.len() * 3);
        assert_eq!(kept, noise.repeat(3));
        // Not a regular file: nothing.
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        assert_eq!(
            matching_lines(&dir.path().join("zero"), &needles, 1 << 30, 1 << 20),
            ""
        );
    }

    #[test]
    fn beneath_a_trusted_directory_no_directory_may_be_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = dir.path().join("work");
        std::fs::create_dir_all(trusted.join("spool/main")).unwrap();
        std::fs::write(trusted.join("spool/main/stats.json"), "{}").unwrap();
        let rel = Path::new("spool/main/stats.json");
        assert_eq!(read_capped_beneath(&trusted, rel, 64).unwrap(), b"{}");
        // The other user swaps `spool/main` for a link to a directory of their choosing.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("stats.json"), "chosen").unwrap();
        std::fs::remove_dir_all(trusted.join("spool/main")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, trusted.join("spool/main")).unwrap();
        assert_eq!(
            read_capped(&trusted.join(rel), 64).unwrap(),
            b"chosen",
            "a plain read follows it"
        );
        assert!(read_capped_beneath(&trusted, rel, 64).is_err());
        // Paths that climb out are refused before anything is opened.
        for bad in ["../elsewhere/stats.json", "/etc/passwd", ""] {
            assert!(
                read_capped_beneath(&trusted, Path::new(bad), 64).is_err(),
                "{bad}"
            );
        }
    }
}
