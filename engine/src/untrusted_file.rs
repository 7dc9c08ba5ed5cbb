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
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

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
    let not_beneath = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not a plain path beneath {}",
                rel.display(),
                trusted.display()
            ),
        )
    };
    let mut names = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(not_beneath()),
        })
        .collect::<io::Result<Vec<_>>>()?;
    let file = names.pop().ok_or_else(not_beneath)?;
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
