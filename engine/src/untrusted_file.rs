//! Reading files another OS user controls, from a more privileged process.
//!
//! A drill run as root starts its throwaway PostgreSQL as the data directory's owner, and that
//! user writes the server log and the prefetch spool's counters that root reads afterwards. A
//! compromised database account could put a FIFO there (root's read blocks for ever), a
//! symlink to `/dev/zero` or to a file only root may read (an endless read, or root's secrets
//! copied into a drill report), a hard link to such a file, or a file of many gigabytes. Here a
//! read follows no symlink in the last component, never blocks on opening a FIFO, refuses
//! anything but a regular file with one link and reads at most a bound. (Directories above
//! the file are the caller's: a drill's are root's, except its spool, where the worst a
//! swapped directory can do is feed the report counters.)

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading only if it is a regular file reached without following a symlink.
fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
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
    let f = open_regular(path)?;
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
}
