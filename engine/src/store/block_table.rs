//! Block ids and locations in sorted tables on local disk: the restore's block index, and the
//! backup's set of the blocks its repository holds ([`IdTable`]), when they would not fit
//! their memory budget (`--index-memory`).
//!
//! A restore looks up every block of its backup by id. Held in memory
//! ([`super::blocks::BlockIndex`]) that costs 52 bytes per distinct block, and while the ids
//! are collected 32 more: 1.3 GiB for a 1 TiB cluster of 64 KiB blocks, where a restore's
//! peak must stay well under 256 MiB whatever the cluster's size. So, past a budget, the
//! index is built on local disk instead, as a sort-merge join:
//!
//! - the backup's block ids are collected in runs of at most [`RUN_IDS`], each sorted,
//!   deduplicated and written to an unnamed temporary file in `TMPDIR` (gone with the
//!   process, crash or not, like the manifest's file spool), then merged into one sorted file
//!   of distinct ids ([`WantedIds`]);
//! - every index segment's entries go the same way, in runs of [`RUN_LOCATED`] sorted by id
//!   ([`TableBuilder::found`]);
//! - one pass over both sorted streams writes the table: each wanted id with the location
//!   chosen among the entries found for it (one outside a condemned pack if there is one),
//!   fixed 52-byte records sorted by id ([`TableBuilder::build`]);
//! - memory keeps the first id of each page of [`PAGE_RECORDS`] records: a quarter of a byte
//!   per block, 4 MiB at 1 TiB;
//! - a lookup is one `pread` of a page (6.5 KiB, from the page cache) and a binary search in
//!   it; the checks that need every entry (missing blocks, packs to probe) read the table
//!   once, in order.
//!
//! Runs are merged [`MAX_FAN_IN`] at a time, as soon as that many are waiting ([`Runs`]), so
//! the open files and read buffers stay bounded too. Every step reads and writes
//! sequentially; filling the table in place from each index segment instead would read and
//! write most of its pages once per segment. Besides the fences, memory keeps a number for
//! every pack of the repository (about 100 bytes per pack).
//!
//! A backup asks, for every block it reads, whether the repository holds it already. Past its
//! budget the repository's ids go the same way as a restore's wanted ids, sorted and merged
//! into one file of distinct ids with a fence per page of 128 (4 KiB); a question is one
//! `pread` of a page from the page cache, a small part of the block's own hashing and
//! compression.
//!
//! `TMPDIR` should be on disk: where `/tmp` is a tmpfs, the table lives in memory after all
//! (point `TMPDIR` at a directory on disk for the restore).
//!
//! Local disk, in `TMPDIR` beside the file spool: 52 bytes per block for the table, 32 per
//! block for the ids and 52 per index entry for the runs while they are merged.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::crypto::ContentId;
use crate::error::{Error, Result};

use super::blocks::Location;

/// Ids sorted in memory before a run goes to disk (32 MiB of ids).
pub const RUN_IDS: usize = 1 << 20;

/// Index entries sorted in memory before a run goes to disk (26 MiB of entries).
pub const RUN_LOCATED: usize = 1 << 19;

/// The smallest run of index entries a table sorts in memory, whatever the budget: runs
/// smaller than this only add merge passes.
pub const MIN_RUN_LOCATED: usize = 4096;

/// Memory per index entry in a run being sorted: its id and location.
const LOCATED_BYTES: u64 = std::mem::size_of::<(ContentId, Location)>() as u64;

/// Largest run reserved at once (records); see [`Runs::push`].
const MAX_RESERVED_RUN: usize = 1 << 23;

/// Runs merged at once: each holds a file and a read buffer of [`MERGE_BUFFER`] bytes.
pub const MAX_FAN_IN: usize = 64;

/// Read buffer per run while merging.
const MERGE_BUFFER: usize = 64 << 10;

/// Records per page of the table: the unit read by a lookup.
pub const PAGE_RECORDS: usize = 128;

/// Every spill failure is local: an [`Error::Io`] naming `TMPDIR`, never a finding about the
/// repository.
pub(crate) fn spill_error(e: std::io::Error) -> Error {
    Error::io(
        "the block index could not be spilled to the temporary directory (TMPDIR, \
         default /tmp); free space there, point TMPDIR elsewhere, or give the command \
         more memory with --index-memory",
        e,
    )
}

/// Reading the table back failed: the local disk, not space.
pub(crate) fn read_error(e: std::io::Error) -> Error {
    Error::io(
        "the block index could not be read back from its table in the temporary \
         directory (TMPDIR, default /tmp); check that disk",
        e,
    )
}

pub(crate) fn temp_file(dir: &Path) -> Result<File> {
    tempfile::tempfile_in(dir).map_err(spill_error)
}

/// A fixed-size record sorted by block id in runs on disk.
pub(crate) trait Record: Copy {
    /// Bytes on disk.
    const LEN: usize;
    fn id(&self) -> &ContentId;
    fn encode(&self, out: &mut [u8]);
    fn decode(bytes: &[u8]) -> Self;
}

impl Record for ContentId {
    const LEN: usize = 32;
    fn id(&self) -> &ContentId {
        self
    }
    fn encode(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.0);
    }
    fn decode(bytes: &[u8]) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(bytes);
        ContentId(id)
    }
}

impl Record for (ContentId, Location) {
    const LEN: usize = 32 + 20;
    fn id(&self) -> &ContentId {
        &self.0
    }
    fn encode(&self, out: &mut [u8]) {
        let (id, l) = self;
        out[..32].copy_from_slice(&id.0);
        out[32..36].copy_from_slice(&l.pack.to_le_bytes());
        out[36..40].copy_from_slice(&l.offset[0].to_le_bytes());
        out[40..44].copy_from_slice(&l.offset[1].to_le_bytes());
        out[44..48].copy_from_slice(&l.sealed_len.to_le_bytes());
        out[48..52].copy_from_slice(&l.raw_len.to_le_bytes());
    }
    fn decode(r: &[u8]) -> Self {
        let u = |at: usize| u32::from_le_bytes(r[at..at + 4].try_into().expect("4 bytes"));
        (
            ContentId::decode(&r[..32]),
            Location {
                pack: u(32),
                offset: [u(36), u(40)],
                sealed_len: u(44),
                raw_len: u(48),
            },
        )
    }
}

/// Records collected with bounded memory: sorted by id in runs of at most `run_len` on disk.
///
/// Open files stay bounded too: runs carry a level (0 when spilled from memory), and as soon
/// as [`MAX_FAN_IN`] runs of one level are waiting they are merged into one run of the next
/// level, like the digits of a counter in base [`MAX_FAN_IN`]. At most `MAX_FAN_IN - 1` runs
/// per level are open (a few levels for any repository), and each record is rewritten once
/// per level.
#[derive(Debug)]
pub(crate) struct Runs<T> {
    dir: PathBuf,
    current: Vec<T>,
    /// Levels never increase along the vector.
    files: Vec<(u32, File)>,
    run_len: usize,
    /// Drop repeated records of a run (ids: only which, not how often, matters). Records of
    /// one id are repeats whatever else they carry: only runs of ids deduplicate.
    dedup: bool,
    /// With `dedup`: a full run left with at most this many distinct records after the
    /// dedup stays in memory and goes on collecting (always less than `run_len`).
    keep: usize,
    /// With `dedup`: how many records at the start of `current` are sorted and distinct (what
    /// the last [`Runs::absorb_tail`] left); the rest came after.
    sorted: usize,
}

impl<T: Record + Eq> Runs<T> {
    fn new(dir: PathBuf, run_len: usize, dedup: bool) -> Self {
        let run_len = run_len.max(1024);
        Runs {
            dir,
            current: Vec::new(),
            files: Vec::new(),
            run_len,
            dedup,
            keep: run_len / 2,
            sorted: 0,
        }
    }

    fn push(&mut self, r: T) -> Result<()> {
        if self.current.capacity() == 0 {
            // Exactly one run's room, reserved (not touched: only what is written becomes
            // resident), so the vector never doubles past it. Runs without a bound (an index
            // kept in memory whatever its size) grow as vectors do.
            self.current
                .reserve_exact(self.run_len.min(MAX_RESERVED_RUN));
        }
        self.current.push(r);
        if self.current.len() >= self.run_len {
            // Records arrive from index readers and manifest walks on the async runtime; a
            // full run's sort and spill take a few hundred milliseconds.
            crate::cpu::in_place(|| -> Result<()> {
                self.sort_current();
                // Mostly repeats: keep collecting in the same run.
                if !self.dedup || self.current.len() > self.keep {
                    self.spill_current()?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn sort_current(&mut self) {
        if self.dedup {
            self.absorb_tail();
        } else {
            self.current.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        }
    }

    /// Sorts and deduplicates `current` by bringing what came after its sorted prefix into it:
    /// the tail is sorted alone, its records already in the prefix (with mostly repeated ids,
    /// nearly all of them) are dropped in one galloping walk along the prefix, and the few new ones are merged in
    /// from the back through a buffer of at most a sixteenth of a run; more new ones than that
    /// and the whole run is sorted instead (each time adds more than a sixteenth of a run of
    /// distinct ids, so at most about sixteen times before the run holds more than `keep` and
    /// spills). A run kept in memory with its ids near its budget
    /// is refilled often by a little; sorting all of it each time cost a full sort per refill.
    fn absorb_tail(&mut self) {
        let by_id = |a: &T, b: &T| a.id().cmp(b.id());
        let k = self.sorted.min(self.current.len());
        let (prefix, tail) = self.current.split_at_mut(k);
        tail.sort_unstable_by(by_id);
        // The tail is sorted: walk the prefix along with it, galloping (a few neighbouring
        // compares per record rather than a binary search over the whole prefix, whose
        // cache misses cost more than the sort).
        let (mut fresh, mut at) = (0, 0);
        for r in 0..tail.len() {
            let rec = tail[r];
            let mut step = 1;
            while at + step < k && prefix[at + step].id() < rec.id() {
                step *= 2;
            }
            let end = (at + step + 1).min(k);
            at += prefix[at..end].partition_point(|p| p.id() < rec.id());
            let repeat = (fresh > 0 && tail[fresh - 1].id() == rec.id())
                || (at < k && prefix[at].id() == rec.id());
            if !repeat {
                tail[fresh] = rec;
                fresh += 1;
            }
        }
        self.current.truncate(k + fresh);
        if k > 0 && fresh > 0 {
            if fresh <= self.run_len / 16 {
                let new: Vec<T> = self.current[k..].to_vec();
                let (mut i, mut j) = (k, fresh);
                let mut out = k + fresh;
                while j > 0 {
                    out -= 1;
                    if i > 0 && by_id(&self.current[i - 1], &new[j - 1]).is_gt() {
                        self.current[out] = self.current[i - 1];
                        i -= 1;
                    } else {
                        self.current[out] = new[j - 1];
                        j -= 1;
                    }
                }
            } else {
                self.current.sort_unstable_by(by_id);
            }
        }
        self.sorted = self.current.len();
    }

    fn spill_current(&mut self) -> Result<()> {
        let file = write_records(&self.dir, self.current.iter().copied())?;
        self.files.push((0, file));
        self.current = Vec::new();
        self.sorted = 0;
        loop {
            let level = self.files.last().map(|f| f.0).unwrap_or(0);
            let same = self.files.iter().rev().take_while(|f| f.0 == level).count();
            if same < MAX_FAN_IN {
                return Ok(());
            }
            let group: Vec<File> = self
                .files
                .split_off(self.files.len() - same)
                .into_iter()
                .map(|f| f.1)
                .collect();
            let merged = self.merge_into_file(group)?;
            self.files.push((level + 1, merged));
        }
    }

    fn merge_into_file(&self, files: Vec<File>) -> Result<File> {
        let mut out = BufWriter::new(temp_file(&self.dir)?);
        let mut bytes = vec![0u8; T::LEN];
        merge_files::<T>(files, |r| {
            r.encode(&mut bytes);
            out.write_all(&bytes).map_err(spill_error)
        })?;
        out.into_inner().map_err(|e| spill_error(e.into_error()))
    }

    /// Runs spilled so far (open files).
    #[cfg(test)]
    fn open_runs(&self) -> usize {
        self.files.len()
    }

    /// Every record, in id order (equal ids from different runs next to each other).
    fn merge(mut self, each: impl FnMut(T) -> Result<()>) -> Result<()> {
        self.sort_current();
        if !self.current.is_empty() {
            self.spill_current()?;
        }
        let mut files: Vec<File> = std::mem::take(&mut self.files)
            .into_iter()
            .map(|f| f.1)
            .collect();
        while files.len() > MAX_FAN_IN {
            let rest = files.split_off(MAX_FAN_IN);
            let merged = self.merge_into_file(std::mem::replace(&mut files, rest))?;
            files.push(merged);
        }
        merge_files(files, each)
    }
}

impl Runs<(ContentId, Location)> {
    /// A table of every id among the records, each with the location `choose` picks among
    /// its records.
    fn build_every(self, choose: impl Fn(&[Location]) -> Location) -> Result<BlockTable> {
        let mut out = BufWriter::new(temp_file(&self.dir)?);
        let mut writer = TableWriter::default();
        let mut current: Option<ContentId> = None;
        let mut candidates: Vec<Location> = Vec::new();
        self.merge(|(id, at)| {
            if let Some(c) = current.filter(|c| *c != id) {
                writer.push(&mut out, c, choose(&candidates))?;
                candidates.clear();
            }
            current = Some(id);
            candidates.push(at);
            Ok(())
        })?;
        if let Some(c) = current {
            writer.push(&mut out, c, choose(&candidates))?;
        }
        writer.finish(out)
    }
}

/// Writes a table's records in id order and keeps its fences.
#[derive(Default)]
struct TableWriter {
    records: u64,
    fences: Vec<ContentId>,
}

impl TableWriter {
    fn push(&mut self, out: &mut BufWriter<File>, id: ContentId, at: Location) -> Result<()> {
        if self.records.is_multiple_of(PAGE_RECORDS as u64) {
            self.fences.push(id);
        }
        self.records += 1;
        let mut bytes = [0u8; 52];
        (id, at).encode(&mut bytes);
        out.write_all(&bytes).map_err(spill_error)
    }

    fn finish(mut self, out: BufWriter<File>) -> Result<BlockTable> {
        self.fences.shrink_to_fit();
        Ok(BlockTable {
            file: out.into_inner().map_err(|e| spill_error(e.into_error()))?,
            records: self.records,
            fences: self.fences,
        })
    }
}

/// A new temporary file holding `records`, in order.
fn write_records<T: Record>(dir: &Path, records: impl Iterator<Item = T>) -> Result<File> {
    let mut out = BufWriter::new(temp_file(dir)?);
    let mut bytes = vec![0u8; T::LEN];
    for r in records {
        r.encode(&mut bytes);
        out.write_all(&bytes).map_err(spill_error)?;
    }
    out.into_inner().map_err(|e| spill_error(e.into_error()))
}

/// Merges files of records sorted by id into `each`, in id order.
fn merge_files<T: Record>(files: Vec<File>, mut each: impl FnMut(T) -> Result<()>) -> Result<()> {
    let mut readers = Vec::with_capacity(files.len());
    let mut heap = BinaryHeap::new();
    for (n, file) in files.into_iter().enumerate() {
        let mut r = BufReader::with_capacity(MERGE_BUFFER, ReadFrom(file, 0));
        if let Some(first) = next_record::<T>(&mut r)? {
            heap.push(Head(first, n));
        }
        readers.push(r);
    }
    while let Some(Head(r, n)) = heap.pop() {
        each(r)?;
        if let Some(next) = next_record(&mut readers[n])? {
            heap.push(Head(next, n));
        }
    }
    Ok(())
}

fn next_record<T: Record>(r: &mut impl Read) -> Result<Option<T>> {
    let mut bytes = [0u8; 64];
    let bytes = &mut bytes[..T::LEN];
    match r.read_exact(bytes) {
        Ok(()) => Ok(Some(T::decode(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(spill_error(e)),
    }
}

/// A run's next record, ordered smallest id first in a max-heap.
struct Head<T>(T, usize);

impl<T: Record> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T: Record> Eq for Head<T> {}

impl<T: Record> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.id().cmp(self.0.id()).then(other.1.cmp(&self.1))
    }
}

impl<T: Record> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The block ids a restore needs, collected with bounded memory.
#[derive(Debug)]
pub struct WantedIds {
    runs: Runs<ContentId>,
    in_memory: usize,
}

/// What [`WantedIds::finish`] gives: the ids in memory, or a table on disk to fill.
#[derive(Debug)]
pub enum Wanted {
    /// Sorted, distinct.
    Memory(Vec<ContentId>),
    /// Sorted, distinct, on disk.
    Table(TableBuilder),
}

impl WantedIds {
    /// Ids kept in memory when at most `in_memory` distinct ones come; else a table on disk,
    /// built from runs of at most `run_ids` (at least 1024, and at least a sixteenth more
    /// than `in_memory`). A full run is sorted and deduplicated ([`Runs::absorb_tail`], with
    /// a buffer of at most a sixteenth of a run), and goes to disk only when it still holds
    /// more distinct ids than `in_memory`: a backup whose distinct ids fit never spills,
    /// however often they repeat, and the ids never take more than `run_ids` and its buffer
    /// (about 36 bytes per id of `in_memory`) in memory. Runs used to be at least twice
    /// `in_memory`, so a gc whose ids nearly filled its half of the budget held up to twice
    /// that half while collecting them.
    pub fn new(in_memory: usize, run_ids: usize) -> Self {
        Self::new_in(std::env::temp_dir(), in_memory, run_ids)
    }

    /// [`WantedIds::new`] spilling to `dir` instead of `TMPDIR`.
    pub fn new_in(dir: PathBuf, in_memory: usize, run_ids: usize) -> Self {
        let run_ids = run_ids.max(in_memory.saturating_add(in_memory / 16).saturating_add(1));
        let mut runs = Runs::new(dir, run_ids, true);
        runs.keep = runs.keep.max(in_memory).min(runs.run_len - 1);
        WantedIds { runs, in_memory }
    }

    /// Adds an id (repeats allowed).
    pub fn push(&mut self, id: ContentId) -> Result<()> {
        self.runs.push(id)
    }

    /// The distinct ids, in memory or on disk.
    pub fn finish(self) -> Result<Wanted> {
        let (run_len, dir) = (self.runs.run_len.min(RUN_IDS), self.runs.dir.clone());
        Ok(match self.finish_ids()? {
            Ids::Memory(ids) => Wanted::Memory(ids),
            Ids::Table(ids) => Wanted::Table(TableBuilder {
                ids: Some(ids.file),
                found: Runs::new(dir, run_len.min(RUN_LOCATED), false),
            }),
        })
    }

    /// The distinct ids, in memory or in a table on disk that answers membership tests.
    pub fn finish_ids(mut self) -> Result<Ids> {
        if self.runs.files.is_empty() {
            self.runs.sort_current();
            if self.runs.current.len() <= self.in_memory {
                let mut ids = std::mem::take(&mut self.runs.current);
                ids.shrink_to_fit();
                return Ok(Ids::Memory(ids));
            }
        }
        let mut last: Option<ContentId> = None;
        let mut out = BufWriter::new(temp_file(&self.runs.dir)?);
        let mut records = 0u64;
        let mut fences = Vec::new();
        self.runs.merge(|id| {
            if last != Some(id) {
                last = Some(id);
                if records.is_multiple_of(PAGE_RECORDS as u64) {
                    fences.push(id);
                }
                records += 1;
                out.write_all(&id.0).map_err(spill_error)?;
            }
            Ok(())
        })?;
        fences.shrink_to_fit();
        Ok(Ids::Table(IdTable {
            file: out.into_inner().map_err(|e| spill_error(e.into_error()))?,
            records,
            fences,
        }))
    }
}

/// What [`WantedIds::finish_ids`] gives.
#[derive(Debug)]
pub enum Ids {
    /// Sorted, distinct.
    Memory(Vec<ContentId>),
    /// Sorted, distinct, on disk.
    Table(IdTable),
}

/// Distinct block ids sorted on local disk, for membership tests: a backup's set of the
/// blocks its repository holds, past its memory budget. A lookup is one `pread` of a 4 KiB
/// page.
#[derive(Debug)]
pub struct IdTable {
    file: File,
    records: u64,
    fences: Vec<ContentId>,
}

impl IdTable {
    /// Distinct ids held.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether `id` is one of them.
    pub fn contains(&self, id: &ContentId) -> Result<bool> {
        Ok(find::<ContentId>(&self.file, self.records, &self.fences, id)?.is_some())
    }

    /// Where `id` is among them (its rank in id order), if it is one of them.
    pub fn position(&self, id: &ContentId) -> Result<Option<u64>> {
        Ok(find_at::<ContentId>(&self.file, self.records, &self.fences, id)?.map(|(n, _)| n))
    }

    /// Empties the file under the table, as a failing disk would lose it: every lookup
    /// fails from then on.
    #[cfg(test)]
    pub(crate) fn lose_file(&self) {
        self.file.set_len(0).unwrap();
    }
}

/// The record for `id` in a table of `records` fixed-size records sorted by id, whose pages
/// of [`PAGE_RECORDS`] start with `fences`: one read of that page.
fn find<T: Record>(
    file: &File,
    records: u64,
    fences: &[ContentId],
    id: &ContentId,
) -> Result<Option<T>> {
    Ok(find_at::<T>(file, records, fences, id)?.map(|(_, r)| r))
}

/// [`find`], with the record's number in the table.
fn find_at<T: Record>(
    file: &File,
    records: u64,
    fences: &[ContentId],
    id: &ContentId,
) -> Result<Option<(u64, T)>> {
    let Some(number) = fences.partition_point(|f| f <= id).checked_sub(1) else {
        return Ok(None);
    };
    let first = (number * PAGE_RECORDS) as u64;
    let n = (records - first).min(PAGE_RECORDS as u64) as usize;
    let mut page = [0u8; PAGE_RECORDS * 64];
    let page = &mut page[..n * T::LEN];
    file.read_exact_at(page, first * T::LEN as u64)
        .map_err(read_error)?;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let record = &page[mid * T::LEN..(mid + 1) * T::LEN];
        match record[..32].cmp(&id.0[..]) {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(Some((first + mid as u64, T::decode(record)))),
        }
    }
    Ok(None)
}

/// The wanted ids on disk (none: every id found is wanted), and the index entries found so
/// far (in runs on disk), until [`TableBuilder::build`] joins them into the table.
#[derive(Debug)]
pub struct TableBuilder {
    ids: Option<File>,
    found: Runs<(ContentId, Location)>,
}

impl TableBuilder {
    /// A table of every id found (verify's whole index), in `TMPDIR`, sorting runs of at most
    /// `memory` bytes of entries in memory (at least [`MIN_RUN_LOCATED`] entries, at most
    /// [`RUN_LOCATED`]).
    pub fn every_found(memory: u64) -> Self {
        let entries = usize::try_from(memory / LOCATED_BYTES).unwrap_or(usize::MAX);
        TableBuilder {
            ids: None,
            found: Runs::new(
                std::env::temp_dir(),
                entries.clamp(MIN_RUN_LOCATED, RUN_LOCATED),
                false,
            ),
        }
    }

    /// An index entry: where a block is (wanted or not: unwanted ones are dropped by
    /// [`TableBuilder::build`]).
    pub(crate) fn found(&mut self, id: ContentId, at: Location) -> Result<()> {
        self.found.push((id, at))
    }

    /// The table: each wanted id with the location `choose` picks among those found for it
    /// ([`Location::NOWHERE`] when none was). One pass over the sorted ids and the sorted
    /// entries.
    pub(crate) fn build(self, choose: impl Fn(&[Location]) -> Location) -> Result<BlockTable> {
        let Some(ids) = self.ids else {
            return self.found.build_every(choose);
        };
        let mut ids = BufReader::with_capacity(MERGE_BUFFER, ReadFrom(ids, 0));
        let mut out = BufWriter::new(temp_file(&self.found.dir)?);
        let mut writer = TableWriter::default();
        // The wanted id being matched, and the locations found for it.
        let mut wanted: Option<ContentId> = next_record(&mut ids)?;
        let mut candidates: Vec<Location> = Vec::new();
        let emit = |id: ContentId,
                    candidates: &mut Vec<Location>,
                    out: &mut BufWriter<File>,
                    writer: &mut TableWriter|
         -> Result<()> {
            let at = if candidates.is_empty() {
                Location::NOWHERE
            } else {
                choose(candidates)
            };
            candidates.clear();
            writer.push(out, id, at)
        };
        self.found.merge(|(id, at)| {
            // Wanted ids below this entry's are complete: write them.
            while let Some(w) = wanted.filter(|w| *w < id) {
                emit(w, &mut candidates, &mut out, &mut writer)?;
                wanted = next_record(&mut ids)?;
            }
            if wanted == Some(id) {
                candidates.push(at);
            }
            Ok(())
        })?;
        while let Some(w) = wanted {
            emit(w, &mut candidates, &mut out, &mut writer)?;
            wanted = next_record(&mut ids)?;
        }
        writer.finish(out)
    }
}

/// The wanted blocks' locations, sorted by id, on local disk; see the module docs.
#[derive(Debug)]
pub struct BlockTable {
    file: File,
    records: u64,
    fences: Vec<ContentId>,
}

type Located = (ContentId, Location);

impl BlockTable {
    /// Distinct blocks wanted.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Where a wanted block is: `None` when `id` is not wanted, [`Location::NOWHERE`] when it
    /// is but no index segment named it.
    pub(crate) fn get(&self, id: &ContentId) -> Result<Option<Location>> {
        Ok(find::<Located>(&self.file, self.records, &self.fences, id)?.map(|r| r.1))
    }

    /// Every record, in id order, read once.
    pub(crate) fn scan(&self, mut each: impl FnMut(&ContentId, &Location)) -> Result<()> {
        let mut r = BufReader::with_capacity(MERGE_BUFFER, ReadFrom(&self.file, 0));
        for _ in 0..self.records {
            let (id, at) = next_record::<Located>(&mut r)
                .map_err(|_| read_error(std::io::ErrorKind::InvalidData.into()))?
                .ok_or_else(|| read_error(std::io::ErrorKind::UnexpectedEof.into()))?;
            each(&id, &at);
        }
        Ok(())
    }
}

/// Sequential reads of a file from an offset, without moving its shared cursor.
struct ReadFrom<F>(F, u64);

impl<F: std::borrow::Borrow<File>> Read for ReadFrom<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.borrow().read_at(buf, self.1)?;
        self.1 += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ContentId {
        ContentId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn at(n: u64) -> Location {
        Location {
            pack: (n % 7) as u32,
            offset: [n as u32, (n >> 32) as u32],
            sealed_len: 100 + n as u32,
            raw_len: 65536,
        }
    }

    fn builder(ids: impl Iterator<Item = ContentId>, run_len: usize) -> TableBuilder {
        let mut w = WantedIds::new(0, run_len);
        for i in ids {
            w.push(i).unwrap();
        }
        match w.finish().unwrap() {
            Wanted::Table(t) => t,
            Wanted::Memory(_) => panic!("over the budget, the ids go to disk"),
        }
    }

    #[test]
    fn runs_merge_into_one_sorted_table_of_distinct_ids() {
        // 30 000 ids, each three times, in runs of 1024: 88 runs, more than MAX_FAN_IN, so
        // the merge also runs in two passes.
        let n = 30_000u64;
        let b = builder((0..3 * n).map(|i| id(i % n)), 1024);
        assert_eq!(b.found.run_len, 1024);
        let t = b.build(|_| panic!("nothing was found")).unwrap();
        assert_eq!(t.records(), n);
        let mut seen = Vec::new();
        t.scan(|i, l| {
            assert_eq!(*l, Location::NOWHERE);
            seen.push(*i)
        })
        .unwrap();
        let mut want: Vec<_> = (0..n).map(id).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
        assert_eq!(t.fences.len(), (n as usize).div_ceil(PAGE_RECORDS));
    }

    #[test]
    fn the_join_keeps_wanted_ids_and_chooses_among_every_copy_found() {
        let n = 5_000u64;
        let mut b = builder((0..n).map(id), 1024);
        // Every other wanted id found twice, far apart (in different runs), ids nobody wants
        // in between; `choose` takes the copy with the larger sealed length.
        for i in (0..n).step_by(2) {
            b.found(id(i), at(i)).unwrap();
        }
        for i in n..n + 3000 {
            b.found(id(i), at(i)).unwrap();
        }
        for i in (0..n).step_by(2) {
            b.found(id(i), at(i + 1)).unwrap();
        }
        let t = b
            .build(|found| {
                assert_eq!(found.len(), 2, "both copies of a block reach the choice");
                *found.iter().max_by_key(|l| l.sealed_len).unwrap()
            })
            .unwrap();
        assert_eq!(t.records(), n, "only wanted ids are in the table");
        for i in 0..n {
            let want = if i % 2 == 0 {
                at(i + 1)
            } else {
                Location::NOWHERE
            };
            assert_eq!(t.get(&id(i)).unwrap(), Some(want), "block {i}");
        }
        for i in n..n + 3000 {
            assert_eq!(t.get(&id(i)).unwrap(), None, "unwanted block {i}");
        }
        // The smallest possible id sorts before every fence.
        assert_eq!(t.get(&ContentId([0; 32])).unwrap(), None);
    }

    #[test]
    fn a_table_of_every_id_found_holds_each_once_with_the_chosen_copy() {
        let n = 40_000u64;
        let mut b = TableBuilder::every_found(u64::MAX);
        b.found.run_len = 1024;
        // Every third id found twice, in different runs; `choose` takes the larger copy.
        for i in 0..n {
            b.found(id(i), at(i)).unwrap();
        }
        for i in (0..n).step_by(3) {
            b.found(id(i), at(i + 1)).unwrap();
        }
        let t = b
            .build(|found| *found.iter().max_by_key(|l| l.sealed_len).unwrap())
            .unwrap();
        assert_eq!(t.records(), n);
        for i in 0..n {
            let want = if i % 3 == 0 { at(i + 1) } else { at(i) };
            assert_eq!(t.get(&id(i)).unwrap(), Some(want), "block {i}");
        }
        assert_eq!(t.get(&id(n)).unwrap(), None);
        let mut last = None;
        t.scan(|i, _| {
            assert!(last < Some(*i), "sorted, each id once");
            last = Some(*i);
        })
        .unwrap();
    }

    #[test]
    fn a_table_of_every_id_found_sorts_runs_within_its_budget() {
        // verify --index-memory 0: runs of the smallest size, not 26 MiB ones.
        let mut small = TableBuilder::every_found(0);
        for i in 0..=MIN_RUN_LOCATED as u64 {
            small.found(id(i), at(i)).unwrap();
        }
        assert_eq!(small.found.open_runs(), 1, "a full run went to disk");
        assert!(small.found.current.capacity() <= MIN_RUN_LOCATED);
        let budget = 4 << 20;
        let mid = TableBuilder::every_found(budget);
        assert_eq!(mid.found.run_len as u64, budget / LOCATED_BYTES);
        let large = TableBuilder::every_found(u64::MAX);
        assert_eq!(large.found.run_len, RUN_LOCATED);
    }

    #[test]
    fn an_id_table_answers_membership() {
        let n = 10_000u64;
        let mut w = WantedIds::new(0, 1024);
        for i in (0..n).chain(0..n / 2) {
            w.push(id(2 * i)).unwrap();
        }
        let Ids::Table(t) = w.finish_ids().unwrap() else {
            panic!("over the budget: on disk");
        };
        assert_eq!(t.records(), n);
        for i in 0..2 * n {
            assert_eq!(t.contains(&id(i)).unwrap(), i % 2 == 0, "id {i}");
        }
        assert!(!t.contains(&ContentId([0; 32])).unwrap());
        assert!(!t.contains(&ContentId([0xff; 32])).unwrap());
    }

    /// A spill that cannot write (its directory gone here; full or unwritable alike) fails
    /// with an error naming TMPDIR and what to do, not a finding about the repository.
    #[test]
    fn a_spill_that_cannot_write_says_where_and_what_to_do() {
        let gone = tempfile::tempdir().unwrap().path().to_path_buf();
        let mut w = WantedIds::new_in(gone, 0, 1024);
        let err = (0..2000u64)
            .try_for_each(|i| w.push(id(i)))
            .and_then(|()| w.finish().map(drop))
            .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("TMPDIR") && err.contains("--index-memory"),
            "{err}"
        );
    }

    /// Ids near the budget, repeated in a shuffled order (a gc reading thirty backups of one
    /// cluster): the runs absorb new ids into their sorted part a few at a time (through the
    /// buffer) and many at a time (a full sort), and what comes out is every distinct id once,
    /// sorted, in memory when it fits and on disk when it does not.
    #[test]
    fn ids_absorbed_into_a_sorted_run_come_out_sorted_and_distinct() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut next = move || rng.gen::<u64>();
        for (distinct, in_memory) in [(3000u64, 3000usize), (2990, 3000), (3000, 2900), (50, 3000)]
        {
            let mut w = WantedIds::new(in_memory, 1024);
            // Mostly repeats of ids seen already, now and then a new one (the next few
            // ids, so a refill brings few new ones), and bursts of new ones.
            let mut seen = 0u64;
            for round in 0..30_000u64 {
                let n = if round % 5000 == 0 {
                    seen = (seen + 700).min(distinct);
                    seen - 1
                } else if next() % 8 == 0 && seen < distinct {
                    seen += 1;
                    seen - 1
                } else {
                    next() % seen.max(1)
                };
                w.push(id(n)).unwrap();
            }
            for n in 0..distinct {
                w.push(id(n)).unwrap();
            }
            let mut want: Vec<ContentId> = (0..distinct).map(id).collect();
            want.sort_unstable();
            match w.finish_ids().unwrap() {
                Ids::Memory(ids) => {
                    assert!(distinct as usize <= in_memory, "{distinct} in memory");
                    assert_eq!(ids, want, "{distinct} distinct within {in_memory}");
                }
                Ids::Table(t) => {
                    assert!(distinct as usize > in_memory, "{distinct} on disk");
                    assert_eq!(t.records(), distinct);
                    for w in &want {
                        assert!(t.contains(w).unwrap());
                    }
                    assert!(!t.contains(&id(distinct)).unwrap());
                }
            }
        }
    }

    /// A backup whose distinct ids fit the budget stays in memory however often its blocks
    /// repeat (zero pages aside, a cluster repeats many): runs spill only past the budget.
    #[test]
    fn repeated_ids_within_the_budget_stay_in_memory() {
        let mut w = WantedIds::new(1000, 1024);
        for i in 0..2400u64 {
            w.push(id(i % 800)).unwrap();
        }
        let Wanted::Memory(ids) = w.finish().unwrap() else {
            panic!("800 distinct ids fit a budget of 1000");
        };
        assert_eq!(ids.len(), 800);
        let mut w = WantedIds::new(1000, 1024);
        for i in 0..2400u64 {
            w.push(id(i % 1200)).unwrap();
        }
        assert!(
            matches!(w.finish().unwrap(), Wanted::Table(_)),
            "1200 distinct ids do not fit a budget of 1000"
        );
    }

    /// However many runs a repository's index makes, at most MAX_FAN_IN - 1 per level are
    /// open; every record still comes out, in order.
    #[test]
    fn open_runs_stay_bounded_and_every_record_comes_out_in_order() {
        let dir = std::env::temp_dir();
        let mut runs: Runs<Located> = Runs::new(dir, 1024, false);
        let n = 150 * 1024u64;
        let mut most = 0;
        for i in 0..n {
            runs.push((id(i % (n / 2)), at(i))).unwrap();
            most = most.max(runs.open_runs());
        }
        assert!(most < 2 * MAX_FAN_IN, "{most} runs open at once");
        let mut out = Vec::new();
        runs.merge(|r| {
            out.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(out.len() as u64, n, "every record, repeats included");
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "in id order");
    }

    #[test]
    fn few_ids_stay_in_memory() {
        let mut w = WantedIds::new(10, RUN_IDS);
        for i in [3u64, 1, 3, 2] {
            w.push(id(i)).unwrap();
        }
        let Wanted::Memory(ids) = w.finish().unwrap() else {
            panic!("3 distinct ids fit a budget of 10");
        };
        let mut want = vec![id(1), id(2), id(3)];
        want.sort_unstable();
        assert_eq!(ids, want);
    }

    /// Peak memory of this process so far (`VmHWM`), in bytes.
    const CHILD: &str = "PGCAIRN_BLOCK_TABLE_MEMORY_CHILD";

    /// The workload of [`memory_stays_bounded_with_three_million_blocks`], run in a process of
    /// its own (other tests' memory would count in this one's peak).
    #[test]
    #[ignore = "run by memory_stays_bounded_with_three_million_blocks in its own process"]
    fn three_million_blocks_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let n = 3_000_000u64;
        let mut w = WantedIds::new(0, RUN_IDS);
        for i in 0..n {
            w.push(id(i)).unwrap();
        }
        let Wanted::Table(mut b) = w.finish().unwrap() else {
            panic!("on disk");
        };
        // The repository holds a million blocks more than the backup wants.
        for i in 0..n + 1_000_000 {
            b.found(id(i), at(i)).unwrap();
        }
        let t = b.build(|found| found[0]).unwrap();
        assert_eq!(t.records(), n);
        for i in (0..n).step_by(97) {
            assert_eq!(t.get(&id(i)).unwrap(), Some(at(i)));
        }
        crate::test_support::report_peak_rss();
    }

    /// 3 million blocks (a 183 GiB cluster in 64 KiB blocks) would take 252 MiB held in
    /// memory while loaded; on disk the process peaks at the runs' buffers (32 MiB of ids,
    /// then 26 MiB of entries), the fences (750 KiB) and the test binary itself.
    #[test]
    fn memory_stays_bounded_with_three_million_blocks() {
        let peak = crate::test_support::peak_rss_of_child(
            "store::block_table::tests::three_million_blocks_child",
            CHILD,
        );
        eprintln!("peak RSS with 3 million blocks on disk: {} MiB", peak >> 20);
        assert!(
            peak < 96 << 20,
            "peak RSS {} MiB: the index is not bounded",
            peak >> 20
        );
    }
}
