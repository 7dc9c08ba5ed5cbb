//! Creating large objects on local disk past the page cache.
//!
//! Why: a full backup writes its packs (32 MiB each) once and reads them rarely, yet through
//! `object_store` they went through the page cache. On the 2-core test VM, profiles of a
//! full backup at pgbench scale 500 spent 17 % of the backup's CPU in the kernel copying pack
//! bytes into freshly allocated page-cache pages (`copy_folio_from_iter_atomic`), and a plain
//! `dd` of 400 MB into the same file system took 3.1 s of system time through the page cache
//! against 0.03 s with `O_DIRECT`. The same measurement made restores write relation files
//! directly ([`pgcairn_engine::direct_io`]). Writing past the cache also leaves the database's
//! cached pages alone, which a DBA wants of a backup.
//!
//! How: the object is written into an unnamed file (`O_TMPFILE`) in its directory, in aligned
//! groups through this thread's aligned buffer (the last one padded with zeros, the file then
//! truncated to its size), synced, and only then linked under its name. `link` fails when the
//! name exists, which is exactly the create-only semantics of `put_create`; and a crash at any
//! point leaves no half-written object and no temporary name behind (an unnamed file vanishes
//! with its descriptor).
//!
//! Where the file system refuses `O_TMPFILE` or `O_DIRECT` (tmpfs before Linux 6.6, some
//! network file systems), or `/proc` is not mounted (the link goes through
//! `/proc/self/fd`), [`create`] says [`Direct::Unsupported`] before anything is linked and the
//! caller writes the ordinary way. A direct write refused with `EINVAL` after the open falls
//! back to buffered writes on the same descriptor ([`AlignedBuf::write_at`]).

use std::fs::File;
use std::path::Path;

use pgcairn_engine::direct_io::{self, AlignedBuf, GROUP_LEN};
use pgcairn_engine::storage::StorageError;
use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

/// Objects at least this large are created past the page cache; smaller ones (index
/// segments, manifests, status documents) would wait for the device on every write for
/// little gain.
pub const MIN_LEN: usize = 4 << 20;

/// What [`create`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// The object is in place, synced; its directories still need syncing.
    Created,
    /// Something already has the name; nothing was written under it.
    Exists,
    /// This file system cannot do it; nothing was written. Use the ordinary path.
    Unsupported,
}

fn io_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> StorageError {
    StorageError::Permanent {
        op,
        key: path.display().to_string(),
        detail: e.into().to_string(),
    }
}

/// Creates `path` holding `data`, mode 0600, past the page cache; see the module docs.
/// Missing directories are created 0700 (as the ordinary path leaves them once synced);
/// existing ones are left as they are.
pub fn create(path: &Path, data: &[u8]) -> Result<Direct, StorageError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| io_err("mkdir", parent, e))?;
    let fd = match rustix::fs::open(
        parent,
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
            return Ok(Direct::Unsupported)
        }
        Err(e) => return Err(io_err("create", path, e)),
    };
    let file = File::from(fd);
    write_aligned(&file, data).map_err(|e| io_err("write", path, e))?;
    file.sync_all().map_err(|e| io_err("fsync", path, e))?;
    let unnamed = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&file));
    match rustix::fs::linkat(CWD, unnamed.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Ok(()) => Ok(Direct::Created),
        Err(Errno::EXIST) => Ok(Direct::Exists),
        // No /proc: the unnamed file cannot be named. Nothing is under `path`.
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Ok(Direct::Unsupported),
        Err(e) => Err(io_err("link", path, e)),
    }
}

/// Writes `data` from offset 0 in aligned groups, then truncates the padding of the last one.
fn write_aligned(file: &File, data: &[u8]) -> std::io::Result<()> {
    direct_io::with_group_buf(GROUP_LEN, |buf: &mut AlignedBuf| {
        let mut at = 0u64;
        for group in data.chunks(GROUP_LEN) {
            buf.push(group);
            buf.write_at(file, at)?;
            at += group.len() as u64;
        }
        Ok::<(), std::io::Error>(())
    })?;
    if !data.len().is_multiple_of(direct_io::ALIGN) {
        file.set_len(data.len() as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Bytes that differ at every offset, so a misplaced group shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn an_object_of_any_length_is_written_exactly_and_privately_with_no_name_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            direct_io::ALIGN,
            GROUP_LEN,
            GROUP_LEN + 1,
            3 * GROUP_LEN - 100,
        ] {
            let path = dir.path().join(format!("obj-{len}"));
            let data = pattern(len);
            match create(&path, &data).unwrap() {
                Direct::Created => {}
                Direct::Unsupported => return, // this file system: the ordinary path is used
                Direct::Exists => panic!("{len}: nothing had the name"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{len} bytes");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("obj-"))
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }

    /// How many of 16 pages spread over `path` (all but its last) are in the page cache: a
    /// read with `RWF_NOWAIT` fails with `EAGAIN` rather than go to the device. Each page is
    /// asked once, from the end back, so readahead started by one cannot answer a later one.
    /// `None` where such reads are not supported (tmpfs, whose pages are all in memory).
    fn cached_pages(path: &Path) -> Option<usize> {
        use rustix::io::ReadWriteFlags;
        let file = File::open(path).unwrap();
        let pages = file.metadata().unwrap().len() / 4096 - 1;
        let mut buf = [0u8; 4096];
        let mut cached = 0;
        for i in (0..16u64).rev() {
            let at = i * pages / 16 * 4096;
            let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
            match rustix::io::preadv2(&file, &mut bufs, at, ReadWriteFlags::NOWAIT) {
                Ok(n) => cached += usize::from(n > 0),
                Err(Errno::AGAIN) => {}
                Err(Errno::OPNOTSUPP) => return None,
                Err(e) => panic!("{e}"),
            }
        }
        Some(cached)
    }

    #[test]
    fn what_is_written_does_not_fill_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let data = pattern(4 * GROUP_LEN + 12345);
        if create(&path, &data).unwrap() == Direct::Unsupported {
            return;
        }
        let Some(cached) = cached_pages(&path) else {
            return; // no way to tell here
        };
        assert_eq!(cached, 0, "pages of the new object in the page cache");
        std::fs::write(dir.path().join("buffered"), &data).unwrap();
        let buffered = cached_pages(&dir.path().join("buffered"));
        assert_eq!(buffered, Some(16), "the check sees cached pages");
    }

    #[test]
    fn an_existing_name_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        std::fs::write(&path, b"first").unwrap();
        match create(&path, &pattern(GROUP_LEN + 5)).unwrap() {
            Direct::Exists => assert_eq!(std::fs::read(&path).unwrap(), b"first"),
            Direct::Unsupported => {}
            Direct::Created => panic!("an existing object was replaced"),
        }
    }
}
