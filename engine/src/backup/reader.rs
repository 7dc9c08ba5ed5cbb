//! Reading one file into blocks: split, keyed hash, dedup, verify page checksums, seal.
//!
//! Runs on the backup's reader threads (its reads are page-cache reads of the data directory).
//! Dedup looks first at the reference backup's block at the same position (no lock, no
//! lookup), then at the repository-wide set of known blocks. A changed block whose reference
//! version has part fingerprints is stored as a patch on the reference's base when at most
//! half of it changed ([`crate::store::patches`]). Only unknown blocks are compressed and
//! sealed, and handed to the packer through a bounded channel: a slow object store blocks
//! readers instead of growing memory.
//!
//! New blocks go to the packer in batches of up to [`BATCH_BYTES`] sealed bytes, each batch
//! one file's consecutive new blocks. Block by block, the blocks of the files read in parallel
//! interleaved in the pack, and a restore, which reads a file's blocks by ranges of adjacent
//! blocks, made a range read per block or two (17,000 reads for 1.5 GB at scale 100; on S3
//! as many requests). With batches a file's blocks lie in runs of about a mebibyte.
//!
//! Large files are read in pieces of [`PIECE_BYTES`] ([`pieces`]), every piece a job of its
//! own on the reader threads, and the pieces are put together in order ([`assemble`]). Read
//! whole, one file per thread, a backup ended on one core: the last gigabyte segment of a
//! large table compressed alone for a second or more while the other cores had nothing
//! left (a scale-200 full spent its last 1.2 s of 3.9 s that way). A piece that ends short
//! (the file was truncated while it was read) ends the file there, as a short block does
//! when the file is read whole ([`BlockReader`]): what later pieces read is dropped.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::codec::{Codec, ObjectKind};
use crate::cpu::CpuPool;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::pg::checksum::{check_page, relation_segment_of_path, PageCheck, BLCKSZ, RELSEG_SIZE};
use crate::pg::datadir::{Entry, EntryKind};
use crate::store::block_lists;
use crate::store::blocks::{KnownBlocks, SealedBlock};
use crate::store::manifest::entries::Patch;
use crate::store::manifest::{BlockRef, FileEntry};
use crate::store::patches::{self, PART_LEN};

/// What the reader needs to know (cheap to clone: one per reader job).
#[derive(Debug, Clone)]
pub struct ReadContext {
    /// Codec.
    pub codec: Arc<Codec>,
    /// Block size (a multiple of 8 KiB).
    pub block_size: usize,
    /// zstd level for blocks.
    pub compress_level: i32,
    /// Verify page checksums of relation files.
    pub verify_checksums: bool,
    /// Backup start LSN (pages newer than this are not checked).
    pub start_lsn: u64,
    /// Known blocks.
    pub known: Arc<KnownBlocks>,
    /// Where new blocks go, a batch at a time.
    pub sink: mpsc::Sender<Vec<SealedBlock>>,
    /// Which files the data directory's owner could read ([`super::owner_reads`]).
    pub owner_reads: Arc<super::owner_reads::OwnerReads>,
}

/// Sealed bytes of new blocks a reader gathers before handing them to the packer.
pub const BATCH_BYTES: usize = 1 << 20;

/// Bytes of a file one reader job reads: files larger than this are read in pieces, in
/// parallel. Large enough that a piece is tens of milliseconds of work (a job's overhead is
/// microseconds) and a relation segment of 1 GiB makes 16 pieces; small enough that the
/// last piece of a backup keeps one core busy for a fraction of a second only.
pub const PIECE_BYTES: u64 = 64 << 20;

/// Outcome of reading a file.
#[derive(Debug)]
pub struct FileRead {
    /// The manifest entry (`None`: the file vanished).
    pub entry: Option<FileEntry>,
    /// Bytes read.
    pub read: u64,
    /// Plaintext bytes of new blocks.
    pub new_bytes: u64,
    /// New blocks.
    pub new_blocks: u64,
}

impl FileRead {
    fn vanished() -> Self {
        FileRead {
            entry: None,
            read: 0,
            new_bytes: 0,
            new_blocks: 0,
        }
    }
}

/// What reading one piece of a file found: its blocks from block `first` on.
#[derive(Debug, Default)]
pub struct Piece {
    blocks: Vec<BlockRef>,
    /// Part fingerprints, `parts` per block (0 where unknown).
    fps: Vec<u64>,
    patched: Vec<Patch>,
    bad_pages: Vec<u32>,
    read: u64,
    new_bytes: u64,
    new_blocks: u64,
    /// The file ended inside this piece (a short block, or the end of the file before the
    /// piece's end).
    ended: bool,
}

/// The block ranges `[first, end)` a file of `size` bytes (at the walk) is read in, in order;
/// the last is open-ended (`None`), so what was appended since the walk is read, as when the
/// file is read whole. One range for a file of at most [`PIECE_BYTES`].
pub fn pieces(size: u64, block_size: usize) -> Vec<(usize, Option<usize>)> {
    let per = (PIECE_BYTES / block_size as u64).max(1) as usize;
    let blocks = size.div_ceil(block_size as u64) as usize;
    let mut out = Vec::new();
    let mut first = 0;
    while first + per < blocks {
        out.push((first, Some(first + per)));
        first += per;
    }
    out.push((first, None));
    out
}

/// Opens `entry` to read it; `None` if it was dropped since the walk (WAL replay does not
/// need it), or if what was opened is a file the data directory's owner could not read
/// ([`super::owner_reads`]: a link to root's file planted for a backup run as root), said
/// in a warning when `warn` (once per file: a large file's pieces each open it).
fn open(ctx: &ReadContext, entry: &Entry, warn: bool) -> Result<Option<std::fs::File>> {
    use super::owner_reads::Reached;
    match ctx.owner_reads.open_file(&entry.abs) {
        Ok(Reached::File(f)) => Ok(Some(f)),
        Ok(Reached::Refused(_)) if !warn => Ok(None),
        Ok(Reached::Refused(why)) => {
            tracing::warn!(
                "left out of the backup: {} ({why}; reached through a link or put there by \
                 another user, so PostgreSQL cannot have needed it)",
                entry.abs.display()
            );
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", entry.abs.display()), e)),
    }
}

/// Reads `entry` (a file) into blocks, whole, on this thread. `parent` is the reference
/// backup's entry for the same path.
pub fn read_file(ctx: &ReadContext, entry: &Entry, parent: Option<&FileEntry>) -> Result<FileRead> {
    let Some(file) = open(ctx, entry, true)? else {
        return Ok(FileRead::vanished());
    };
    let piece = read_piece(ctx, entry, &file, parent, 0, None)?;
    assemble(ctx, entry, vec![piece])
}

/// Reads `global/pg_control` (`entry`) into blocks: a copy whose CRC matches, read again
/// while PostgreSQL's rewrites tear it ([`crate::pg::control_crc`]), stored as read. A backup
/// fails rather than store a copy that never matched: its restore would not start.
pub fn read_control_file(ctx: &ReadContext, entry: &Entry) -> Result<FileRead> {
    use crate::pg::control_crc::{read_whole, Unread, ATTEMPTS, PAUSE};
    let Some(file) = open(ctx, entry, true)? else {
        return Ok(FileRead::vanished());
    };
    let read_all = || {
        let mut bytes = Vec::with_capacity(8192);
        std::io::Read::read_to_end(
            &mut At {
                file: &file,
                pos: 0,
            },
            &mut bytes,
        )?;
        Ok(bytes)
    };
    let bytes = read_whole(read_all, ATTEMPTS, PAUSE).map_err(|e| match e {
        Unread::Io(e) => Error::io(format!("reading {}", entry.abs.display()), e),
        Unread::NoMatchingCrc { attempts } => Error::InvalidInput(format!(
            "{}: read {attempts} times, never with a matching CRC: it is damaged (PostgreSQL \
             itself would refuse to start with it) or was being rewritten during every read. \
             No backup was written; check the server's log and run the backup again",
            entry.abs.display()
        )),
    })?;
    // Blocks from the copy that passed, not from another read of the file.
    let copy = memory_file(&bytes)
        .map_err(|e| Error::io(format!("copying {}", entry.abs.display()), e))?;
    let piece = read_piece(ctx, entry, &copy, None, 0, None)?;
    assemble(ctx, entry, vec![piece])
}

/// An anonymous file holding `bytes`, read like the file it copies: in memory
/// (`memfd_create`), or where a sandbox refuses that, an unlinked file in `TMPDIR`.
fn memory_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    let file = match rustix::fs::memfd_create("pgcairn-pg_control", rustix::fs::MemfdFlags::CLOEXEC)
    {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => tempfile::tempfile()?,
    };
    file.write_all_at(bytes, 0)?;
    Ok(file)
}

/// Reads `entry` in the pieces `ranges` ([`pieces`]), each a job on `pool`, and puts them
/// together.
pub(crate) async fn read_in_pieces(
    pool: &CpuPool,
    ctx: ReadContext,
    entry: Entry,
    parent: Option<FileEntry>,
    ranges: Vec<(usize, Option<usize>)>,
) -> Result<FileRead> {
    let (entry, parent) = (Arc::new(entry), Arc::new(parent));
    // A descriptor per piece: the kernel's readahead follows one descriptor's sequential
    // reads; pieces sharing one would look to it like reads jumping between offsets.
    let jobs = ranges.into_iter().map(|(first, end)| {
        let (ctx, entry, parent) = (ctx.clone(), entry.clone(), parent.clone());
        pool.run(move || match open(&ctx, &entry, first == 0)? {
            Some(file) => {
                read_piece(&ctx, &entry, &file, parent.as_ref().as_ref(), first, end).map(Some)
            }
            None => Ok(None),
        })
    });
    let pieces = futures::future::try_join_all(jobs).await?;
    if pieces.first().is_some_and(Option::is_none) {
        return Ok(FileRead::vanished());
    }
    // A later piece that found the file gone: it ends there (dropped while it was read).
    let pieces = pieces
        .into_iter()
        .map(|p| {
            p.unwrap_or(Piece {
                ended: true,
                ..Piece::default()
            })
        })
        .collect();
    pool.run(move || assemble(&ctx, &entry, pieces)).await
}

/// Reads blocks `first..end` of `file` (to its end if `end` is `None`), stopping early at a
/// short block or the end of the file.
fn read_piece(
    ctx: &ReadContext,
    entry: &Entry,
    file: &std::fs::File,
    parent: Option<&FileEntry>,
    first: usize,
    end: Option<usize>,
) -> Result<Piece> {
    let relation_seg = if ctx.verify_checksums {
        relation_segment_of_path(&entry.path)
    } else {
        None
    };
    let start = first as u64 * ctx.block_size as u64;
    let mut buf = vec![0u8; ctx.block_size];
    let parts = patches::parts(ctx.block_size);
    let mut p = Piece::default();
    let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
    let mut new_block =
        |id: ContentId, plain: &[u8], batch: &mut Vec<SealedBlock>, p: &mut Piece| {
            let sealed = ctx
                .codec
                .seal(ObjectKind::Block, &id, b"", plain, ctx.compress_level);
            batch_bytes += sealed.len();
            batch.push(SealedBlock {
                id,
                sealed,
                raw_len: plain.len() as u32,
            });
            p.new_bytes += plain.len() as u64;
            p.new_blocks += 1;
            if batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                send(ctx, std::mem::take(batch))
            } else {
                Ok(())
            }
        };
    let mut blocks_in = BlockReader::new(At { file, pos: start });
    loop {
        let position = first + p.blocks.len();
        if end.is_some_and(|e| position >= e) {
            break;
        }
        let Some(n) = blocks_in
            .next_block(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", entry.abs.display()), e))?
        else {
            p.ended = true;
            break;
        };
        p.ended = n < ctx.block_size;
        let data = &buf[..n];
        let at = start + p.read;
        if let Some(seg) = relation_seg {
            for (i, page) in data.chunks_exact(BLCKSZ).enumerate() {
                let blkno = seg * RELSEG_SIZE + ((at as usize + i * BLCKSZ) / BLCKSZ) as u32;
                if let PageCheck::Invalid { .. } = check_page(page, blkno, ctx.start_lsn) {
                    p.bad_pages.push(blkno);
                }
            }
        }
        p.read += n as u64;
        let fps_at = p.fps.len();
        if data.iter().all(|b| *b == 0) {
            p.blocks.push(BlockRef::ZERO);
            p.fps.extend(std::iter::repeat_n(0, parts.unwrap_or(0)));
            continue;
        }
        let id = match parts {
            Some(k) if n == ctx.block_size => {
                let id = ctx.codec.content_id_parted(data, PART_LEN, &mut p.fps);
                assert_eq!(p.fps.len(), fps_at + k);
                id
            }
            Some(k) => {
                p.fps.extend(std::iter::repeat_n(0, k));
                ctx.codec.content_id(data)
            }
            None => ctx.codec.content_id(data),
        };
        if parent.and_then(|f| f.content_id_at(position)) == Some(id) {
            // As in the reference: its block, and its patch if it was one.
            let f = parent.expect("matched above");
            p.blocks.push(f.blocks[position]);
            if let Some(patch) = f.patch_at(position) {
                p.patched.push(*patch);
            }
            continue;
        }
        // A patch if at most half the block changed and the whole block is not stored
        // already (then it costs nothing); the known set is only asked twice for blocks that
        // could be patches, not for every block of a full backup.
        let mask = parts.and_then(|k| patch_mask(parent, position, &p.fps[fps_at..], k));
        if let Some(mask) = mask.filter(|_| !ctx.known.contains(&id)) {
            let f = parent.expect("a patch needs a reference");
            let plain = patches::encode(data, mask);
            let delta = ctx.codec.content_id(&plain);
            if ctx.known.claim(delta) {
                new_block(delta, &plain, &mut batch, &mut p)?;
            }
            p.blocks.push(f.blocks[position]);
            p.patched.push(Patch {
                pos: position as u32,
                id,
                delta,
                mask,
            });
            continue;
        }
        if ctx.known.claim(id) {
            new_block(id, data, &mut batch, &mut p)?;
        }
        p.blocks.push(BlockRef(Some(id)));
    }
    if !batch.is_empty() {
        send(ctx, batch)?;
    }
    Ok(p)
}

/// Puts a file's pieces together in order, up to and including the first that ended short
/// (what pieces after it read is dropped: the file ends there), and lists its blocks.
fn assemble(ctx: &ReadContext, entry: &Entry, pieces: Vec<Piece>) -> Result<FileRead> {
    let EntryKind::File { mtime_ns, .. } = entry.kind else {
        return Err(Error::InvalidInput(format!("{} is not a file", entry.path)));
    };
    let mut all = Piece::default();
    for p in pieces {
        all.blocks.extend(p.blocks);
        all.fps.extend(p.fps);
        all.patched.extend(p.patched);
        all.bad_pages.extend(p.bad_pages);
        all.read += p.read;
        all.new_bytes += p.new_bytes;
        all.new_blocks += p.new_blocks;
        if p.ended {
            break;
        }
    }
    let Piece {
        blocks,
        mut fps,
        patched,
        bad_pages,
        read,
        new_bytes,
        new_blocks,
        ..
    } = all;
    if patches::parts(ctx.block_size).is_none() {
        fps.clear();
    }
    let (block_lists, lists_new) = block_lists::list(
        &ctx.codec,
        &blocks,
        &fps,
        &patched,
        ctx.compress_level,
        |id| ctx.known.claim(id),
    );
    if block_lists.is_empty() {
        // Recorded block by block: nothing keeps fingerprints (and there are no patches).
        fps = Vec::new();
    }
    if !lists_new.is_empty() {
        send(ctx, lists_new)?;
    }
    Ok(FileRead {
        entry: Some(FileEntry {
            path: entry.path.clone(),
            size: read,
            mtime_ns,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            blocks,
            block_lists,
            // Format 3: a restore checks each block against its id (one BLAKE3 pass here,
            // for the ids, instead of two).
            checksum: String::new(),
            bad_pages,
            patches: patched,
            part_fps: fps,
        }),
        read,
        new_bytes,
        new_blocks,
    })
}

/// A file read from `pos` on with positioned reads (a piece starts where its blocks do).
struct At<'a> {
    file: &'a std::fs::File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The parts to patch block `pos` with, if it is worth a patch: the reference's block there
/// is whole and has fingerprints (`new`: this block's), and what differs from its base (the
/// parts that changed since the reference, and those the reference's own patch replaced) is
/// at most half the block.
fn patch_mask(parent: Option<&FileEntry>, pos: usize, new: &[u64], parts: usize) -> Option<u64> {
    let p = parent?;
    p.blocks.get(pos)?.0?;
    if p.part_fps.len() != p.blocks.len() * parts {
        return None;
    }
    let old = &p.part_fps[pos * parts..(pos + 1) * parts];
    let mut mask = patches::changed_parts(old, new);
    if let Some(earlier) = p.patch_at(pos) {
        mask |= earlier.mask;
    }
    patches::worth_patching(mask, parts).then_some(mask)
}

fn send(ctx: &ReadContext, batch: Vec<SealedBlock>) -> Result<()> {
    ctx.sink
        .blocking_send(batch)
        .map_err(|_| Error::InvalidInput("the packer stopped (see the error above)".into()))
}

/// A file's blocks as the manifest records them: every block full except the last.
///
/// A restore places block `i` at `i * block_size`, so a short block anywhere but at the end
/// would shift everything after it. A file PostgreSQL extends while it is read gives a short
/// read at the end seen then, and reading on would make one: the file ends at the first short
/// block (what was appended after it reaches the restore through WAL replay, like any change
/// made during the backup).
struct BlockReader<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> BlockReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            ended: false,
        }
    }

    /// Fills `buf` with the next block and returns its length; `None` after the end.
    fn next_block(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        if self.ended {
            return Ok(None);
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.ended = filled < buf.len();
        Ok((filled > 0).then_some(filled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Gives its chunks one read at a time; an empty chunk is an end of file seen then.
    struct Growing(VecDeque<Vec<u8>>);

    impl Read for Growing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some(mut chunk) = self.0.pop_front() else {
                return Ok(0);
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    fn lengths(chunks: &[usize], block: usize) -> Vec<usize> {
        let mut r = BlockReader::new(Growing(chunks.iter().map(|n| vec![1u8; *n]).collect()));
        let mut buf = vec![0u8; block];
        let mut out = Vec::new();
        while let Some(n) = r.next_block(&mut buf).unwrap() {
            out.push(n);
        }
        out
    }

    #[test]
    fn a_file_growing_while_read_ends_at_its_first_short_block() {
        // 24 KiB, then end of file, then 8 KiB appended: one short block, nothing after it.
        assert_eq!(lengths(&[24 << 10, 0, 8 << 10], 64 << 10), vec![24 << 10]);
        // Reads that return less than asked are joined into full blocks.
        assert_eq!(
            lengths(&[8 << 10, 100, (64 << 10) - 100, 64 << 10, 5], 16 << 10),
            [vec![16 << 10; 8], vec![(8 << 10) + 5]].concat()
        );
        // A file of whole blocks ends with the first empty read.
        assert_eq!(
            lengths(&[32 << 10, 0, 8 << 10], 16 << 10),
            vec![16 << 10, 16 << 10]
        );
        assert_eq!(lengths(&[], 16 << 10), Vec::<usize>::new());
    }

    #[test]
    fn only_files_larger_than_a_piece_are_split_and_the_last_piece_reads_to_the_end() {
        let block = 1 << 20;
        let per = (PIECE_BYTES / block as u64) as usize;
        assert_eq!(pieces(0, block), vec![(0, None)]);
        assert_eq!(pieces(PIECE_BYTES, block), vec![(0, None)]);
        assert_eq!(
            pieces(PIECE_BYTES + 1, block),
            vec![(0, Some(per)), (per, None)]
        );
        let gib = pieces(1 << 30, block);
        assert_eq!(gib.len(), (1 << 30) / PIECE_BYTES as usize);
        assert!(gib.windows(2).all(|w| w[0].1 == Some(w[1].0)), "contiguous");
        // Blocks larger than a piece: a block per piece.
        assert_eq!(
            pieces(3 * PIECE_BYTES, 2 * PIECE_BYTES as usize),
            vec![(0, Some(1)), (1, None)]
        );
    }

    const BLOCK: usize = 64 << 10;

    /// A relation segment `base/1/16384.1`: `blocks` whole blocks of distinct pages with
    /// valid checksums, block 2 all zeros, a short last block of one page, and pages whose
    /// checksum is wrong at `bad` (page numbers in the file).
    fn relation_file(dir: &std::path::Path, blocks: usize, bad: &[usize]) -> Entry {
        let pages = blocks * BLOCK / BLCKSZ + 1;
        let mut data = vec![0u8; pages * BLCKSZ];
        for (n, page) in data.chunks_exact_mut(BLCKSZ).enumerate() {
            if n * BLCKSZ / BLOCK == 2 {
                continue;
            }
            page.fill((n * 7 + 1) as u8);
            page[..8].fill(0); // LSN 0: older than the backup, so checked
            page[14..16].copy_from_slice(&64u16.to_le_bytes()); // pd_upper: not a new page
            let blkno = RELSEG_SIZE + n as u32;
            let sum = crate::pg::checksum::checksum_page(page, blkno);
            let sum = if bad.contains(&n) { sum ^ 1 } else { sum };
            page[8..10].copy_from_slice(&sum.to_le_bytes());
        }
        let abs = dir.join("16384.1");
        std::fs::write(&abs, &data).unwrap();
        Entry {
            path: "base/1/16384.1".into(),
            abs,
            kind: EntryKind::File {
                size: data.len() as u64,
                mtime_ns: 1,
            },
            mode: 0o600,
            uid: 0,
            gid: 0,
        }
    }

    fn context() -> (ReadContext, mpsc::Receiver<Vec<SealedBlock>>) {
        let (sink, rx) = mpsc::channel(1 << 16);
        let ctx = ReadContext {
            codec: Arc::new(crate::codec::tests::codec(true)),
            block_size: BLOCK,
            compress_level: 1,
            verify_checksums: true,
            start_lsn: u64::MAX,
            known: Arc::new(KnownBlocks::default()),
            sink,
            owner_reads: Arc::new(crate::backup::owner_reads::OwnerReads::unchecked()),
        };
        (ctx, rx)
    }

    fn stored(rx: &mut mpsc::Receiver<Vec<SealedBlock>>) -> Vec<ContentId> {
        let mut ids = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            ids.extend(batch.into_iter().map(|b| b.id));
        }
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_file_read_in_pieces_is_recorded_as_when_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let pool = CpuPool::new("test", 2).unwrap();
        for bad in [vec![], vec![0, 9, 8 * 5 + 3]] {
            let entry = relation_file(dir.path(), 10, &bad);
            let (ctx, mut rx) = context();
            let whole = {
                let (ctx, entry) = (ctx.clone(), entry.clone());
                pool.run(move || read_file(&ctx, &entry, None))
                    .await
                    .unwrap()
            };
            let whole_stored = stored(&mut rx);
            // Uneven pieces, the last open-ended past the walk's size.
            for ranges in [
                vec![(0, Some(3)), (3, Some(6)), (6, None)],
                vec![(0, Some(1)), (1, Some(10)), (10, None)],
                vec![(0, Some(4)), (4, Some(11)), (11, Some(14)), (14, None)],
            ] {
                let (ctx, mut rx) = context();
                let read = read_in_pieces(&pool, ctx, entry.clone(), None, ranges.clone())
                    .await
                    .unwrap();
                let (a, b) = (whole.entry.as_ref().unwrap(), read.entry.as_ref().unwrap());
                assert_eq!(a.blocks, b.blocks, "{ranges:?}");
                assert_eq!(a.part_fps, b.part_fps, "{ranges:?}");
                assert_eq!(a.block_lists, b.block_lists, "{ranges:?}");
                assert_eq!(a.size, b.size);
                assert_eq!((whole.read, whole.new_blocks), (read.read, read.new_blocks));
                assert_eq!(whole_stored, stored(&mut rx), "the same blocks were stored");
                // Pages are numbered from the segment's start, whichever piece read them.
                let expected: Vec<u32> = bad.iter().map(|p| RELSEG_SIZE + *p as u32).collect();
                assert_eq!(b.bad_pages, expected, "{ranges:?}");
                assert_eq!(a.bad_pages, expected);
            }
            assert_eq!(whole.read, 10 * BLOCK as u64 + BLCKSZ as u64);
            assert_eq!(whole.entry.unwrap().blocks.len(), 11);
        }
        // Dropped since the walk: nothing to record, as when read whole.
        let gone = Entry {
            abs: dir.path().join("dropped"),
            ..relation_file(dir.path(), 10, &[])
        };
        let (ctx, _rx) = context();
        let read = read_in_pieces(&pool, ctx, gone, None, vec![(0, Some(3)), (3, None)])
            .await
            .unwrap();
        assert!(read.entry.is_none() && read.read == 0);
    }

    #[test]
    fn a_piece_that_ended_short_ends_the_file_there() {
        let (ctx, _rx) = context();
        let id = |n: u8| BlockRef(Some(ContentId([n; 32])));
        let piece = |blocks: Vec<BlockRef>, ended: bool| Piece {
            read: blocks.len() as u64 * BLOCK as u64 - u64::from(ended) * 100,
            blocks,
            ended,
            ..Piece::default()
        };
        let entry = Entry {
            path: "base/1/2".into(),
            abs: "/nonexistent".into(),
            kind: EntryKind::File {
                size: 0,
                mtime_ns: 0,
            },
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        // The file was truncated inside the second piece and grew again before the third was
        // read: the third piece's blocks would sit past a short block, so they are dropped.
        let read = assemble(
            &ctx,
            &entry,
            vec![
                piece(vec![id(1), id(2)], false),
                piece(vec![id(3)], true),
                piece(vec![id(4), id(5)], false),
            ],
        )
        .unwrap();
        let f = read.entry.unwrap();
        assert_eq!(f.blocks, vec![id(1), id(2), id(3)]);
        assert_eq!(f.size, 3 * BLOCK as u64 - 100);
    }
}
