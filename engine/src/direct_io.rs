//! Writing restored relation files with `O_DIRECT`, past the page cache.
//!
//! Why: profiles of a restore, ours and pgBackRest's alike, spend most of their time in the
//! kernel copying written data into freshly allocated page-cache pages
//! (`copy_folio_from_iter_atomic`: 38 % of pgcairn's restore, 57 % of pgBackRest's, at scale
//! 100 on the 2-core test machine), and the final fsyncs then wait for the same bytes to
//! reach the disk. A write with `O_DIRECT` goes from our buffer to the device: on the same
//! machine `dd` wrote 1.5 GB in 1.2–1.4 s with 1 MiB direct writes against 2.5–3.2 s buffered
//! (fsync included). Direct writes must start at an aligned offset, from an aligned buffer,
//! for an aligned length, and are slow when small (each waits for the device), so restores use
//! them only for large files, in groups of whole blocks ([`GROUP_LEN`]) gathered into an
//! aligned buffer; the file's last, short block is padded with zeros to the alignment and the
//! file truncated to its size afterwards.
//!
//! Where a filesystem does not take `O_DIRECT` (the flag is refused, or a write fails with
//! `EINVAL`), the descriptor goes back to ordinary buffered writes: the result is the same
//! file, only slower. `fsync` is still needed afterwards: a direct write does not make the
//! file's size and block allocation durable.
//!
//! The page cache stays cold for what was written this way: PostgreSQL reads the pages from
//! disk when it first needs them. Recovery mostly does not: a page's first change after a
//! checkpoint is logged as a full-page image, which replay writes without reading.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Alignment of direct writes: offsets, lengths and buffer addresses. 4 KiB covers the
/// logical block size of every common device.
pub const ALIGN: usize = 4096;

/// Bytes gathered before a direct write: large enough that the device, not the per-write
/// latency, bounds throughput (1 MiB writes reached the disk's speed in the `dd` test, 64 KiB
/// writes ran three times slower), small enough to keep a few per restore job in memory.
pub const GROUP_LEN: usize = 2 << 20;

/// Files smaller than this are written through the page cache: a few direct writes each
/// would wait for the device for little gain.
pub const MIN_FILE_LEN: u64 = 4 << 20;

/// Asks for direct writes on `file`; `false` if the filesystem refuses them.
pub fn enable(file: &File) -> bool {
    use rustix::fs::OFlags;
    let Ok(flags) = rustix::fs::fcntl_getfl(file) else {
        return false;
    };
    rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT).is_ok()
        && rustix::fs::fcntl_getfl(file).is_ok_and(|f| f.contains(OFlags::DIRECT))
}

/// Goes back to buffered I/O on `file` (nothing if it was buffered): after a refused direct
/// write, and before reads into ordinary, unaligned buffers, which fail with `EINVAL` on a
/// descriptor with `O_DIRECT`.
pub fn disable(file: &File) -> std::io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(file)?;
    if flags.contains(OFlags::DIRECT) {
        rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    }
    Ok(())
}

/// Allocates the byte ranges `ranges` of `file` (each end rounded up to [`ALIGN`]) before its
/// direct writes: the ranges that will be written, not the all-zero blocks between them, which
/// stay holes (allocating the whole file and punching those back out needed the whole file's
/// space for a moment, and a restore into a tight file system failed for space the sparse
/// result did not need). Why allocate: ext4 takes a file's lock exclusively for a direct write
/// that extends the file or fills a hole, so the parallel runs of one large file wrote one at a
/// time; into allocated (unwritten) extents below the file's size they write under a shared
/// lock, side by side. It also gives each range one contiguous allocation, and a full disk
/// fails here, before any block is opened. A filesystem without `fallocate` is fine: the writes
/// allocate as before.
pub fn preallocate(
    file: &File,
    ranges: impl IntoIterator<Item = (u64, u64)>,
) -> std::io::Result<()> {
    use rustix::io::Errno;
    for (at, len) in ranges {
        let len = (at + len).next_multiple_of(ALIGN as u64) - at;
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), at, len) {
            Ok(()) => {}
            Err(e @ (Errno::NOSPC | Errno::DQUOT | Errno::FBIG)) => return Err(e.into()),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A buffer whose data starts at an [`ALIGN`]-aligned address, for direct writes. Allocated
/// once per thread and reused ([`with_group_buf`]). An anonymous mapping, so page-aligned
/// without `unsafe`; one of [`GROUP_LEN`] or more asks for transparent huge pages, so that
/// pinning it for each direct write takes one 2 MiB page instead of 512 small ones (a restore
/// profile showed `get_user_pages` and the bio's per-page work at 5 % of its CPU).
pub struct AlignedBuf {
    raw: memmap2::MmapMut,
    len: usize,
    capacity: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AlignedBuf {
    /// An empty buffer that holds up to `capacity` bytes (rounded up to [`ALIGN`]).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.next_multiple_of(ALIGN);
        // Like a vector's allocation, a mapping that fails is out of memory: abort.
        let raw = memmap2::MmapMut::map_anon(capacity.max(ALIGN)).expect("mapping a write buffer");
        if capacity >= GROUP_LEN {
            // Advice only: without huge pages the buffer works the same, a little slower.
            let _ = raw.advise(memmap2::Advice::HugePage);
        }
        AlignedBuf {
            raw,
            len: 0,
            capacity,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// The room after what it holds, to fill in place; [`AlignedBuf::commit`] then says how
    /// much was filled.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let at = self.len;
        &mut self.raw[at..self.capacity]
    }

    /// Counts `n` bytes written into [`AlignedBuf::spare_mut`] as held.
    pub fn commit(&mut self, n: usize) {
        assert!(n <= self.remaining(), "committed past the buffer's end");
        self.len += n;
    }

    /// The last `n` bytes it holds.
    pub fn tail(&self, n: usize) -> &[u8] {
        &self.raw[self.len - n..self.len]
    }

    /// The last `n` bytes it holds, to change in place.
    pub fn tail_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.len - n..self.len]
    }

    /// Appends `data`; the caller keeps within [`AlignedBuf::remaining`].
    pub fn push(&mut self, data: &[u8]) {
        let at = self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Writes what it holds at `offset` (aligned) with one write, the length padded with zeros
    /// to [`ALIGN`] (only a file's last block is short: the caller truncates the file to its
    /// size afterwards), then empties the buffer. A write refused with `EINVAL` (a filesystem
    /// that takes the flag but not the write) switches the descriptor back to buffered writes
    /// and writes the same bytes that way.
    pub fn write_at(&mut self, file: &File, offset: u64) -> std::io::Result<()> {
        let padded = self.len.next_multiple_of(ALIGN);
        self.raw[self.len..padded].fill(0);
        let data = &self.raw[..padded];
        let result = match file.write_all_at(data, offset) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                disable(file)?;
                file.write_all_at(data, offset)
            }
            other => other,
        };
        self.len = 0;
        result
    }
}

thread_local! {
    static GROUP_BUF: std::cell::RefCell<Option<AlignedBuf>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's group buffer (at least `capacity` bytes, empty), allocated on a
/// thread's first use and kept: a fresh 2 MiB buffer per group was mapped, faulted in and
/// unmapped each time, and the unmapping's TLB shootdowns interrupted every core.
pub fn with_group_buf<R>(capacity: usize, f: impl FnOnce(&mut AlignedBuf) -> R) -> R {
    GROUP_BUF.with(|cell| {
        let mut slot = cell.borrow_mut();
        let buf = match slot.take() {
            Some(b) if b.capacity >= capacity => b,
            _ => AlignedBuf::new(capacity),
        };
        let mut buf = buf;
        buf.len = 0;
        let r = f(&mut buf);
        buf.len = 0;
        *slot = Some(buf);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_the_ranges_to_be_written_are_allocated() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        // 8 MiB of file whose data are its first 2 MiB and 2 MiB from 4 MiB; the rest holes.
        preallocate(&file, [(0, 2 << 20), (4 << 20, (2 << 20) - 100)]).unwrap();
        let allocated = file.metadata().unwrap().blocks() * 512;
        if allocated == 0 {
            return; // no fallocate here: the writes allocate
        }
        assert!(
            (4 << 20..=(4 << 20) + 65536).contains(&allocated),
            "{allocated} bytes allocated"
        );
        file.set_len(8 << 20).unwrap();
        assert_eq!(file.metadata().unwrap().blocks() * 512, allocated);
    }

    #[test]
    fn aligned_writes_make_the_same_file_as_plain_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        // Whether or not this filesystem takes O_DIRECT, the bytes must come out the same.
        let _ = enable(&file);
        let data: Vec<u8> = (0..(GROUP_LEN + 3 * 8192 + 100) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let mut buf = AlignedBuf::new(GROUP_LEN);
        assert_eq!(buf.raw.as_ptr() as usize % ALIGN, 0);
        buf.push(&data[..GROUP_LEN]);
        assert_eq!(buf.remaining(), 0);
        buf.write_at(&file, 0).unwrap();
        assert!(buf.is_empty());
        buf.push(&data[GROUP_LEN..]);
        buf.write_at(&file, GROUP_LEN as u64).unwrap();
        file.set_len(data.len() as u64).unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }
}
