//! Mark: which blocks the backups reference, which packs hold them, and so which packs are
//! still needed.
//!
//! A block may be held by several packs (a repack copies live blocks before the old pack is
//! condemned; a crash between the two leaves both). So liveness is counted per block: the
//! number of *holders*, existing packs that hold the block and are not condemned. A pack is
//! needed while it holds a referenced block no other holder has; it may be condemned once every
//! referenced block it holds has another holder. Condemning one pack at a time and updating the
//! counts as we go is what keeps two copies of a block from both being condemned in one run.
//!
//! Memory: within gc's `--index-memory` budget (default [`DEFAULT_MEMORY`]), half for the
//! index entries of every pack (48 bytes each, grouped by pack) and half for the referenced
//! blocks and their holder counts (36 bytes each, see [`Holders`]); past either half, that
//! part goes to files in `TMPDIR` and is read back where it is needed (a pack's entries with
//! one read each time they are visited; a holder count with one page read per lookup). The
//! decisions are the same either way, only slower on disk. The referenced ids are collected in
//! sort runs of their half (a sixteenth more, and a buffer of a sixteenth of that to merge new
//! ids into the sorted part, see [`WantedIds::new`]), and the counts are a vector beside them,
//! so the peak is the budget (it was about 1.4× while runs were twice the half and the ids
//! were copied into (id, count) pairs: `the_mark_in_memory_stays_within_its_budget`). Also one
//! manifest at a time while
//! it is read (its compressed form and its parsed form, 33 bytes per inline block; the JSON is
//! streamed), and block lists after the manifests, each distinct list once, 256 at a time,
//! with a block index of the lists alone (52 bytes per list, one list per 128 blocks). See
//! the README's benchmarks for the peak RSS per block measured with `benches/gc_scale.sh`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::Serialize;

use super::holders::{Holders, SeenMarks};
use crate::crypto::ContentId;
use crate::error::Result;
use crate::pack::PackEntry;
use crate::repo::{layout, Repository};
use crate::store::block_lists::ListReader;
use crate::store::block_table::{read_error, spill_error, temp_file, WantedIds, RUN_IDS};
use crate::store::ids::PackId;
use crate::store::manifest;

/// gc's memory for the mark when none is given: the index entries and the referenced blocks
/// of a repository of about 1.5 million distinct blocks (100 GB of unique 64 KiB blocks).
pub const DEFAULT_MEMORY: u64 = 128 << 20;

/// Bytes of an index entry on local disk: id, offset, sealed and raw lengths.
const ENTRY_BYTES: usize = 32 + 8 + 4 + 4;

/// Bytes of a referenced block's id and count in memory.
const HOLDER_BYTES: u64 = 36;

/// A pack as listed, with the blocks the index says it holds.
#[derive(Debug, Clone)]
pub struct PackUsage {
    /// Object size.
    pub size: u64,
    /// Last modified, unix seconds.
    pub modified: Option<i64>,
    /// Its blocks.
    entries: PackEntries,
}

/// A pack's index entries: in memory, one per block id, sorted by id; or where they lie in
/// the entries file (maybe repeated, maybe in several runs: sorted and deduplicated when read).
#[derive(Debug, Clone)]
enum PackEntries {
    Memory(Vec<PackEntry>),
    Disk(Vec<(u64, u32)>),
}

impl PackUsage {
    /// A pack holding `entries` (in memory).
    pub fn new(size: u64, modified: Option<i64>, entries: Vec<PackEntry>) -> Self {
        PackUsage {
            size,
            modified,
            entries: PackEntries::Memory(entries),
        }
    }
}

/// What the repository holds and what the backups use.
#[derive(Debug, Default)]
pub struct RepoUsage {
    /// Every pack in the repository.
    pub packs: BTreeMap<PackId, PackUsage>,
    /// Referenced block → number of holders (see the module docs).
    holders: Holders,
    /// Index entries past the memory budget, by pack ([`PackEntries::Disk`]).
    entries_file: Option<File>,
    /// Bytes written to `entries_file`.
    entries_len: u64,
    /// Index entries read (or, in memory, distinct per pack).
    entries_read: usize,
    /// Objects listed to build this.
    pub objects_listed: usize,
    /// Bytes read (index segments and manifests).
    pub bytes_read: u64,
    /// Manifests read.
    pub manifests: usize,
    /// The backups whose manifests were read, as (cluster, backup id): gc asks whether a
    /// running backup's reference is among them.
    pub backups: HashSet<(String, String)>,
    /// Index entries naming a pack that does not exist (should be none).
    pub dangling_entries: usize,
}

/// Space held by packs, for `info` and gc reports.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SpaceSummary {
    /// Packs.
    pub packs: usize,
    /// Bytes in packs.
    pub pack_bytes: u64,
    /// Sealed bytes of referenced blocks, each counted once.
    pub referenced_bytes: u64,
    /// What gc (with repacking) could give back: pack bytes not holding a referenced block.
    pub reclaimable_bytes: u64,
}

fn encode(e: &PackEntry, out: &mut [u8]) {
    out[..32].copy_from_slice(&e.block_id.0);
    out[32..40].copy_from_slice(&e.offset.to_le_bytes());
    out[40..44].copy_from_slice(&e.sealed_len.to_le_bytes());
    out[44..48].copy_from_slice(&e.raw_len.to_le_bytes());
}

fn decode(b: &[u8]) -> PackEntry {
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    PackEntry {
        block_id: ContentId(id),
        offset: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
        sealed_len: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
        raw_len: u32::from_le_bytes(b[44..48].try_into().expect("4 bytes")),
    }
}

impl RepoUsage {
    /// Lists packs, reads every index segment and every manifest, within [`DEFAULT_MEMORY`].
    pub async fn load(repo: &Repository) -> Result<Self> {
        Self::load_within(repo, DEFAULT_MEMORY).await
    }

    /// Lists packs, reads every index segment and every manifest, holding at most about
    /// `memory` bytes of index entries and referenced blocks (see the module docs).
    pub async fn load_within(repo: &Repository, memory: u64) -> Result<Self> {
        let mut usage = RepoUsage::default();
        let listed = repo.storage().list(layout::PACKS_PREFIX).await?;
        usage.objects_listed += listed.len();
        for o in listed {
            let Some(id) = layout::parse_pack(o.key.as_str()) else {
                continue;
            };
            usage
                .packs
                .insert(id, PackUsage::new(o.size, o.modified, Vec::new()));
        }
        let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
        let entries_fit =
            (crate::store::blocks::max_entries(&keys) * ENTRY_BYTES) as u64 <= memory / 2;
        if !entries_fit {
            usage.entries_file = Some(temp_file(&std::env::temp_dir())?);
        }
        let segments = {
            let usage = &mut usage;
            crate::store::blocks::for_each_listed_segment(repo, keys, |mut entries, len| {
                usage.bytes_read += len;
                if usage.entries_file.is_some() {
                    entries.sort_unstable_by_key(|e| e.pack_id);
                }
                for group in entries.chunk_by(|a, b| a.pack_id == b.pack_id) {
                    usage.take_entries(group)?;
                }
                Ok(())
            })
            .await?
        };
        usage.objects_listed += segments;
        for p in usage.packs.values_mut() {
            if let PackEntries::Memory(v) = &mut p.entries {
                v.sort_by_key(|e| e.block_id.0);
                v.dedup_by_key(|e| e.block_id.0);
                v.shrink_to_fit();
                usage.entries_read += v.len();
            }
        }
        // Manifests as stored: inline blocks, and the ids of block lists (blocks too), whose
        // own blocks are marked below, each distinct list read once.
        let in_memory = usize::try_from(memory / 2 / HOLDER_BYTES).unwrap_or(usize::MAX);
        let mut referenced = WantedIds::new(in_memory, RUN_IDS);
        let mut lists: BTreeSet<ContentId> = BTreeSet::new();
        for c in manifest::cluster_names(repo).await? {
            for id in manifest::list_ids(repo, &c).await? {
                let m = manifest::load_unexpanded(repo, &c, &id).await?;
                usage.manifests += 1;
                usage.backups.insert((c.clone(), id.clone()));
                for f in &m.files {
                    for id in f.blocks.iter().filter_map(|b| b.0) {
                        referenced.push(id)?;
                    }
                    for p in &f.patches {
                        referenced.push(p.delta)?;
                    }
                    for l in &f.block_lists {
                        referenced.push(*l)?;
                        lists.insert(*l);
                    }
                }
            }
        }
        mark_listed_blocks(repo, lists.into_iter().collect(), &mut referenced).await?;
        let ids = crate::cpu::in_place(|| referenced.finish_ids())?;
        usage.holders = Holders::new(ids)?;
        Ok(usage)
    }

    /// One segment's entries of one pack: into the pack's vector, or appended to the entries
    /// file with their place recorded.
    fn take_entries(&mut self, group: &[crate::index::IndexEntry]) -> Result<()> {
        let Some(first) = group.first() else {
            return Ok(());
        };
        let Some(p) = self.packs.get_mut(&first.pack_id) else {
            self.dangling_entries += group.len();
            return Ok(());
        };
        match (&mut p.entries, &self.entries_file) {
            (PackEntries::Memory(v), None) => v.extend(group.iter().map(|e| e.entry)),
            (entries, Some(file)) => {
                let mut bytes = vec![0u8; group.len() * ENTRY_BYTES];
                for (e, out) in group.iter().zip(bytes.chunks_mut(ENTRY_BYTES)) {
                    encode(&e.entry, out);
                }
                file.write_all_at(&bytes, self.entries_len)
                    .map_err(spill_error)?;
                let at = (self.entries_len, group.len() as u32);
                self.entries_len += bytes.len() as u64;
                self.entries_read += group.len();
                match entries {
                    PackEntries::Disk(runs) => runs.push(at),
                    PackEntries::Memory(_) => *entries = PackEntries::Disk(vec![at]),
                }
            }
            (PackEntries::Disk(_), None) => unreachable!("entries go to disk only with a file"),
        }
        Ok(())
    }

    /// The index entries of `pack`, one per block id, sorted by id.
    fn entries(&self, pack: &PackId) -> Result<Cow<'_, [PackEntry]>> {
        let Some(p) = self.packs.get(pack) else {
            return Ok(Cow::Borrowed(&[]));
        };
        match (&p.entries, &self.entries_file) {
            (PackEntries::Memory(v), _) => Ok(Cow::Borrowed(v)),
            (PackEntries::Disk(runs), Some(file)) => {
                let mut out = Vec::new();
                for (at, n) in runs {
                    let mut bytes = vec![0u8; *n as usize * ENTRY_BYTES];
                    file.read_exact_at(&mut bytes, *at).map_err(read_error)?;
                    out.extend(bytes.chunks(ENTRY_BYTES).map(decode));
                }
                out.sort_by_key(|e| e.block_id.0);
                out.dedup_by_key(|e| e.block_id.0);
                Ok(Cow::Owned(out))
            }
            (PackEntries::Disk(_), None) => unreachable!("entries on disk have a file"),
        }
    }

    /// True if a retained backup references the block.
    pub fn is_referenced(&self, id: &ContentId) -> Result<bool> {
        Ok(self.holders.position(id)?.is_some())
    }

    /// Distinct referenced blocks.
    pub fn referenced_blocks(&self) -> usize {
        self.holders.len()
    }

    /// Index entries over all packs.
    pub fn indexed_entries(&self) -> usize {
        self.entries_read
    }

    /// Whether index entries or holder counts went to local disk.
    pub fn on_disk(&self) -> bool {
        self.entries_file.is_some() || self.holders.on_disk()
    }

    /// Sealed bytes of the blocks `pack` holds that backups reference, and of those none
    /// references (what a repack of it would reclaim, its header and trailer aside), in one
    /// pass over its entries.
    pub fn block_bytes(&self, pack: &PackId) -> Result<(u64, u64)> {
        let (mut referenced, mut unreferenced) = (0, 0);
        for e in self.entries(pack)?.iter() {
            match self.is_referenced(&e.block_id)? {
                true => referenced += u64::from(e.sealed_len),
                false => unreferenced += u64::from(e.sealed_len),
            }
        }
        Ok((referenced, unreferenced))
    }

    /// Sealed bytes of the referenced blocks `pack` holds.
    pub fn referenced_bytes(&self, pack: &PackId) -> Result<u64> {
        Ok(self.block_bytes(pack)?.0)
    }

    /// Sealed bytes of the blocks `pack` holds that no backup references. Zero means copying
    /// it gains nothing.
    pub fn unreferenced_bytes(&self, pack: &PackId) -> Result<u64> {
        Ok(self.block_bytes(pack)?.1)
    }

    /// Counts holders: every existing pack not in `condemned`.
    pub fn count_holders(&mut self, condemned: &HashSet<PackId>) -> Result<()> {
        self.holders.reset()?;
        let ids: Vec<PackId> = self.packs.keys().copied().collect();
        for id in ids.iter().filter(|id| !condemned.contains(id)) {
            self.add_holder(id)?;
        }
        Ok(())
    }

    /// Referenced blocks in `pack` that no holder other than `pack` has (with `pack` counted as
    /// a holder, these are its blocks with exactly one holder).
    pub fn sole_copies(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let mut out = Vec::new();
        for e in self.entries(pack)?.iter() {
            if self.holders.get(&e.block_id)? == Some(1) {
                out.push(*e);
            }
        }
        Ok(out)
    }

    /// For a condemned pack (not counted as a holder): true if it holds a referenced block
    /// that has no holder at all, so it must be reprieved.
    pub fn needed_while_condemned(&self, pack: &PackId) -> Result<bool> {
        for e in self.entries(pack)?.iter() {
            if self.holders.get(&e.block_id)? == Some(0) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds `pack` as a holder of its blocks (after a reprieve, or a new pack from a repack).
    pub fn add_holder(&mut self, pack: &PackId) -> Result<()> {
        let entries = self.entries(pack)?.into_owned();
        for e in &entries {
            self.holders.add(&e.block_id, 1)?;
        }
        Ok(())
    }

    /// Records a pack written by this run (a repack): its entries where the others are.
    pub fn add_pack(&mut self, id: PackId, size: u64, mut entries: Vec<PackEntry>) -> Result<()> {
        entries.sort_by_key(|e| e.block_id.0);
        entries.dedup_by_key(|e| e.block_id.0);
        if self.entries_file.is_some() {
            self.packs
                .insert(id, PackUsage::new(size, None, Vec::new()));
            let group: Vec<crate::index::IndexEntry> = entries
                .into_iter()
                .map(|entry| crate::index::IndexEntry { pack_id: id, entry })
                .collect();
            self.take_entries(&group)?;
        } else {
            self.entries_read += entries.len();
            self.packs.insert(id, PackUsage::new(size, None, entries));
        }
        self.add_holder(&id)
    }

    /// One clear mark per referenced block (see [`SeenMarks`]), in memory or on disk like the
    /// counts.
    pub fn referenced_marks(&self) -> Result<SeenMarks> {
        self.holders.seen_marks()
    }

    /// Where `id` is among the referenced blocks, for [`RepoUsage::referenced_marks`].
    pub fn referenced_position(&self, id: &ContentId) -> Result<Option<usize>> {
        self.holders.position(id)
    }

    /// Condemns `pack` (a holder until now) if every referenced block it holds has another
    /// holder; updates the counts. False, and nothing changes, otherwise.
    pub fn try_condemn(&mut self, pack: &PackId) -> Result<bool> {
        if !self.packs.contains_key(pack) {
            return Ok(false);
        }
        let entries = self.entries(pack)?.into_owned();
        for e in &entries {
            if self.holders.get(&e.block_id)?.is_some_and(|c| c < 2) {
                return Ok(false);
            }
        }
        for e in &entries {
            self.holders.add(&e.block_id, -1)?;
        }
        Ok(true)
    }

    /// Pack space: total, referenced (each block once), reclaimable.
    pub fn space(&self) -> Result<SpaceSummary> {
        let mut seen = self.holders.seen_marks()?;
        let mut s = SpaceSummary {
            packs: self.packs.len(),
            ..Default::default()
        };
        for (id, p) in &self.packs {
            s.pack_bytes += p.size;
            for e in self.entries(id)?.iter() {
                let Some(i) = self.holders.position(&e.block_id)? else {
                    continue;
                };
                if seen.mark(i)? {
                    s.referenced_bytes += u64::from(e.sealed_len);
                }
            }
        }
        s.reclaimable_bytes = s.pack_bytes.saturating_sub(s.referenced_bytes);
        Ok(s)
    }
}

/// Marks the blocks named in block lists `lists` (distinct ids), reading each list once with
/// the block index loaded for the lists alone: gc's memory holds no full index.
async fn mark_listed_blocks(
    repo: &Repository,
    lists: Vec<ContentId>,
    referenced: &mut WantedIds,
) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    if lists.is_empty() {
        return Ok(());
    }
    let reader = ListReader::for_lists(repo, lists.clone()).await?;
    let named_by = "a backup manifest's block list (run `pgcairn verify` to name the backups)";
    for batch in lists.chunks(256) {
        let runs: Vec<_> = futures::stream::iter(batch.iter().copied())
            .map(|id| reader.list(id, named_by))
            .buffered(16)
            .try_collect()
            .await?;
        for id in runs.iter().flat_map(|r| r.referenced()) {
            referenced.push(id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexEntry;

    fn entry(b: u8) -> PackEntry {
        PackEntry {
            block_id: ContentId([b; 32]),
            offset: u64::from(b) << 33,
            sealed_len: 100,
            raw_len: 100 + u32::from(b),
        }
    }

    fn pack(id: u8) -> PackId {
        PackId::new([id; 32])
    }

    /// Packs `packs` holding blocks, `referenced` blocks, holders counted with nothing
    /// condemned: everything in memory, or everything on local disk (each pack's entries in
    /// two runs of the entries file, one of them repeated).
    fn usage(packs: &[(u8, &[u8])], referenced: &[u8], on_disk: bool) -> RepoUsage {
        let mut u = RepoUsage::default();
        if on_disk {
            u.entries_file = Some(temp_file(&std::env::temp_dir()).unwrap());
        }
        for (id, blocks) in packs {
            u.packs
                .insert(pack(*id), PackUsage::new(1000, Some(0), Vec::new()));
            let group: Vec<IndexEntry> = blocks
                .iter()
                .map(|b| IndexEntry {
                    pack_id: pack(*id),
                    entry: entry(*b),
                })
                .collect();
            let (a, b) = group.split_at(group.len() / 2);
            for run in [b, a, b] {
                u.take_entries(run).unwrap();
            }
            if let PackEntries::Memory(v) = &mut u.packs.get_mut(&pack(*id)).unwrap().entries {
                v.sort_by_key(|e| e.block_id.0);
                v.dedup_by_key(|e| e.block_id.0);
            }
        }
        let mut w = WantedIds::new(if on_disk { 0 } else { usize::MAX }, 1024);
        for b in referenced {
            w.push(ContentId([*b; 32])).unwrap();
        }
        u.holders = Holders::new(w.finish_ids().unwrap()).unwrap();
        assert_eq!(u.on_disk(), on_disk);
        u.count_holders(&HashSet::new()).unwrap();
        u
    }

    #[test]
    fn two_copies_of_a_block_are_never_both_condemned() {
        for on_disk in [false, true] {
            let mut u = usage(&[(1, &[7, 8]), (2, &[7])], &[7], on_disk);
            assert!(
                u.try_condemn(&pack(1)).unwrap(),
                "block 7 is also in pack 2"
            );
            assert!(
                !u.try_condemn(&pack(2)).unwrap(),
                "pack 2 now holds the only copy"
            );
            assert_eq!(u.sole_copies(&pack(2)).unwrap(), vec![entry(7)]);
        }
    }

    #[test]
    fn a_condemned_pack_holding_the_only_copy_is_needed() {
        for on_disk in [false, true] {
            let mut u = usage(&[(1, &[7]), (2, &[9])], &[7], on_disk);
            u.count_holders(&HashSet::from([pack(1)])).unwrap();
            assert!(u.needed_while_condemned(&pack(1)).unwrap());
            u.add_holder(&pack(1)).unwrap();
            assert!(!u.needed_while_condemned(&pack(1)).unwrap());
            assert!(
                u.try_condemn(&pack(2)).unwrap(),
                "pack 2 holds nothing referenced"
            );
        }
    }

    #[test]
    fn space_counts_each_referenced_block_once() {
        for on_disk in [false, true] {
            let u = usage(&[(1, &[7, 8]), (2, &[7])], &[7], on_disk);
            let s = u.space().unwrap();
            assert_eq!(s.pack_bytes, 2000);
            assert_eq!(s.referenced_bytes, 100);
            assert_eq!(s.reclaimable_bytes, 1900);
            assert_eq!(u.referenced_bytes(&pack(1)).unwrap(), 100);
            assert_eq!(u.unreferenced_bytes(&pack(1)).unwrap(), 100);
        }
    }

    const CHILD: &str = "PGCAIRN_TEST_GC_MARK_CHILD";

    /// 2 million index entries and as many referenced blocks (a 122 GiB repository of 64 KiB
    /// blocks), every block referenced once, marked within `memory` bytes as
    /// [`RepoUsage::load_within`] splits them (half for the entries, half for the referenced
    /// blocks); reports the peak RSS.
    fn mark_two_million_blocks(memory: u64) {
        let (packs, per_pack) = (2000u32, 1000u32);
        let blocks = u64::from(packs * per_pack);
        let block = |n: u32| ContentId(*blake3::hash(&n.to_le_bytes()).as_bytes());
        let entries_fit = blocks * ENTRY_BYTES as u64 <= memory / 2;
        let mut u = RepoUsage {
            entries_file: (!entries_fit).then(|| temp_file(&std::env::temp_dir()).unwrap()),
            ..Default::default()
        };
        let in_memory = usize::try_from(memory / 2 / HOLDER_BYTES).unwrap();
        let mut referenced = WantedIds::new(in_memory, RUN_IDS);
        for p in 0..packs {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&p.to_be_bytes());
            let pack_id = PackId::new(id);
            u.packs
                .insert(pack_id, PackUsage::new(64 << 20, Some(0), Vec::new()));
            let group: Vec<IndexEntry> = (0..per_pack)
                .map(|i| {
                    let n = p * per_pack + i;
                    referenced.push(block(n)).unwrap();
                    IndexEntry {
                        pack_id,
                        entry: PackEntry {
                            block_id: block(n),
                            offset: u64::from(i) * 30_000,
                            sealed_len: 30_000,
                            raw_len: 65_536,
                        },
                    }
                })
                .collect();
            u.take_entries(&group).unwrap();
        }
        u.holders = Holders::new(referenced.finish_ids().unwrap()).unwrap();
        assert_eq!(u.on_disk(), !entries_fit);
        assert_eq!(u.holders.on_disk(), blocks > in_memory as u64);
        u.count_holders(&HashSet::new()).unwrap();
        let s = u.space().unwrap();
        assert_eq!(s.referenced_bytes, blocks * 30_000);
        assert_eq!(u.referenced_blocks(), blocks as usize);
        crate::test_support::report_peak_rss();
    }

    /// Just enough for everything in memory: 48 bytes per entry in one half, so the other half
    /// holds the referenced blocks with room to spare.
    const ALL_IN_MEMORY: u64 = 2 * 2_000_000 * ENTRY_BYTES as u64;

    /// Run alone in a child process by [`the_mark_on_disk_stays_bounded_with_two_million_blocks`].
    #[test]
    #[ignore = "run by the_mark_on_disk_stays_bounded_with_two_million_blocks in its own process"]
    fn two_million_blocks_child() {
        if std::env::var_os(CHILD).is_some() {
            mark_two_million_blocks(0);
        }
    }

    /// Run alone in a child process by [`the_mark_in_memory_stays_within_its_budget`].
    #[test]
    #[ignore = "run by the_mark_in_memory_stays_within_its_budget in its own process"]
    fn two_million_blocks_in_memory_child() {
        if std::env::var_os(CHILD).is_some() {
            mark_two_million_blocks(ALL_IN_MEMORY);
        }
    }

    /// On disk the mark peaks at the sort runs of the referenced ids (32 MiB) and what every
    /// process has.
    #[test]
    fn the_mark_on_disk_stays_bounded_with_two_million_blocks() {
        let peak = crate::test_support::peak_rss_of_child(
            "gc::liveness::tests::two_million_blocks_child",
            CHILD,
        );
        eprintln!(
            "gc mark peak RSS with 2 million blocks on disk: {} MiB",
            peak >> 20
        );
        assert!(
            peak < 80 << 20,
            "peak RSS {} MiB: the mark is not bounded",
            peak >> 20
        );
    }

    /// In memory, the budget is the peak (plus what every process has, 10-20 MiB): it was
    /// about 1.4 times the budget while the referenced ids were collected in runs of twice
    /// their half and then copied into (id, count) pairs.
    #[test]
    fn the_mark_in_memory_stays_within_its_budget() {
        let peak = crate::test_support::peak_rss_of_child(
            "gc::liveness::tests::two_million_blocks_in_memory_child",
            CHILD,
        );
        eprintln!(
            "gc mark peak RSS with 2 million blocks in memory: {} MiB, budget {} MiB",
            peak >> 20,
            ALL_IN_MEMORY >> 20
        );
        assert!(
            peak < ALL_IN_MEMORY + (24 << 20),
            "peak RSS {} MiB against a budget of {} MiB",
            peak >> 20,
            ALL_IN_MEMORY >> 20
        );
    }

    #[test]
    fn entries_on_disk_come_back_whole_once_each_in_id_order() {
        let blocks: Vec<u8> = (0..=200).rev().step_by(3).collect();
        let u = usage(&[(1, &blocks), (2, &[5, 4])], &[], true);
        let mut want: Vec<PackEntry> = blocks.iter().map(|b| entry(*b)).collect();
        want.sort_by_key(|e| e.block_id.0);
        assert_eq!(u.entries(&pack(1)).unwrap().into_owned(), want);
        assert_eq!(
            u.entries(&pack(2)).unwrap().into_owned(),
            [entry(4), entry(5)]
        );
        assert!(u.entries(&pack(3)).unwrap().is_empty());
    }
}
