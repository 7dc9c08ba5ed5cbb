//! The block store: which blocks the repository holds, and the packer that adds new ones.
//!
//! Write order (the crash story): sealed blocks accumulate in a pack; a full pack is uploaded
//! (create-only, named by its hash); only then is an index segment naming its blocks written;
//! only after every pack and index segment of a backup does its manifest commit it. A crash
//! leaves packs without index segments (unreferenced garbage) or indexed blocks no manifest
//! references yet; the next backup deduplicates against the indexed ones, so work already
//! uploaded is not uploaded again.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;

use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::index::{open_segment, seal_segment, IndexEntry};
use crate::pack::{FinishedPack, PackWriter};
use crate::repo::{layout, Repository};
use crate::storage::CreateOutcome;
use crate::store::block_table::{BlockTable, Ids, TableBuilder, Wanted, WantedIds, RUN_IDS};
use crate::store::ids::PackId;

/// Reads every index segment, a few at a time, and hands each one's entries (with its sealed
/// size) to `each`: the one way the index is read, whatever a reader keeps of it.
pub async fn for_each_index_segment(
    repo: &Repository,
    mut each: impl FnMut(Vec<IndexEntry>, u64),
) -> Result<usize> {
    let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
    for_each_listed_segment(repo, keys, |entries, len| {
        each(entries, len);
        Ok(())
    })
    .await
}

/// [`for_each_index_segment`] over segments already listed.
///
/// gc rewrites index segments while backups and restores read them: it writes the
/// replacement before it deletes the old segment, so a listed segment that is gone by the time
/// it is read (not found) means its entries are in a segment this listing did not see. The
/// index is then listed again and the segments not yet read are read, up to
/// [`INDEX_RELISTS`] times; only a segment that keeps vanishing is an error. The first error
/// `each` returns stops the reading (a table that cannot be spilled does not wait for the
/// rest of the index).
pub(crate) async fn for_each_listed_segment(
    repo: &Repository,
    keys: Vec<crate::storage::ObjectInfo>,
    mut each: impl FnMut(Vec<IndexEntry>, u64) -> Result<()>,
) -> Result<usize> {
    let listed = keys.len();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut pending = keys;
    for round in 0..=INDEX_RELISTS {
        let mut vanished = None;
        let mut segments = futures::stream::iter(pending)
            .map(|o| async move {
                let got = repo.storage().get(&o.key).await;
                (o, got)
            })
            .buffer_unordered(8);
        while let Some((o, got)) = segments.next().await {
            seen.insert(o.key.to_string());
            let sealed = match got {
                Ok(s) => s,
                Err(crate::storage::StorageError::NotFound { .. }) => {
                    vanished = Some(o.key.to_string());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let entries = open_index_segment(repo, &o.key, &sealed)?;
            each(entries, sealed.len() as u64)?;
        }
        drop(segments);
        let Some(gone) = vanished else {
            return Ok(listed);
        };
        if round == INDEX_RELISTS {
            return Err(Error::NotFound(format!(
                "index segment {gone} vanished while it was read, {INDEX_RELISTS} times in a row \
                 (is something other than gc deleting index segments?)"
            )));
        }
        pending = repo
            .storage()
            .list(layout::INDEX_PREFIX)
            .await?
            .into_iter()
            .filter(|o| !seen.contains(&o.key.to_string()))
            .collect();
    }
    Ok(listed)
}

/// Opens the index segment stored under `key`: authenticated for that name.
pub(crate) fn open_index_segment(
    repo: &Repository,
    key: &crate::storage::ObjectKey,
    sealed: &[u8],
) -> Result<Vec<IndexEntry>> {
    let id = layout::parse_index_segment(key.as_str()).ok_or_else(|| {
        Error::corrupt(
            key.to_string(),
            "not an index segment name (index/<64 hex digits>): it was not written by pgcairn",
        )
    })?;
    open_segment(repo.codec(), &id, sealed).map_err(|e| {
        Error::corrupt(
            key.to_string(),
            format!("index segment does not authenticate under its name: {e}"),
        )
    })
}

/// How many times a read of the index lists it again after a segment vanished (gc's rewrite).
const INDEX_RELISTS: usize = 3;

/// An upper bound on the entries of listed index segments, to size a vector once: an entry's
/// block id is 32 random bytes, which no compression shrinks, so a segment holds at most
/// one entry per 32 sealed bytes (in practice about 40).
pub(crate) fn max_entries(keys: &[crate::storage::ObjectInfo]) -> usize {
    keys.iter().map(|o| (o.size / 32) as usize).sum()
}

/// Gives every entry of the listed index segments to `table`, numbering their packs.
async fn found_in_segments(
    repo: &Repository,
    keys: Vec<crate::storage::ObjectInfo>,
    table: &mut TableBuilder,
    numbers: &mut PackNumbers,
) -> Result<()> {
    for_each_listed_segment(repo, keys, |entries, _| {
        entries
            .iter()
            .try_for_each(|e| table.found(e.entry.block_id, numbers.locate(e)))
    })
    .await?;
    Ok(())
}

/// Of the copies `found` of a block (at least one), one outside a condemned pack if there
/// is one.
fn outside_condemned(
    found: &[Location],
    condemned: &std::collections::HashSet<PackId>,
    packs: &[PackId],
) -> Location {
    *found
        .iter()
        .find(|l| !condemned.contains(&packs[l.pack as usize]))
        .unwrap_or(&found[0])
}

/// Where a block is, compactly: 20 bytes, its pack named by number (see [`BlockIndex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) pack: u32,
    pub(crate) offset: [u32; 2],
    pub(crate) sealed_len: u32,
    pub(crate) raw_len: u32,
}

impl Location {
    /// Wanted (by [`BlockIndex::load_wanted`]) but in no index segment so far.
    pub(crate) const NOWHERE: Location = Location {
        pack: u32::MAX,
        offset: [0; 2],
        sealed_len: 0,
        raw_len: 0,
    };

    pub(crate) fn is_somewhere(&self) -> bool {
        self.pack != u32::MAX
    }
}

/// Indexed blocks: id → location, as one vector sorted by id (52 bytes per block: the id and
/// a 20-byte [`Location`] whose pack is a number into a table of pack ids), looked up by
/// binary search. A hash map of full [`IndexEntry`] values cost about 130 bytes per block.
/// [`BlockIndex::load`] holds every block of the repository (verify); [`BlockIndex::load_wanted`]
/// only the blocks of one backup (restore), so a restore's memory follows the backup's size,
/// not the repository's; past a budget ([`BlockIndex::load_wanted_ids`]) those go to a table
/// on local disk ([`super::block_table`]) and memory keeps a quarter of a byte per block.
#[derive(Debug)]
pub struct BlockIndex {
    entries: Entries,
    packs: Vec<PackId>,
}

impl Default for BlockIndex {
    fn default() -> Self {
        BlockIndex {
            entries: Entries::Memory(Vec::new()),
            packs: Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Entries {
    Memory(Vec<(ContentId, Location)>),
    Table(BlockTable),
}

/// Numbers pack ids while an index is filled.
#[derive(Default)]
struct PackNumbers {
    numbers: HashMap<PackId, u32>,
    packs: Vec<PackId>,
}

impl PackNumbers {
    fn locate(&mut self, e: &IndexEntry) -> Location {
        let next = self.packs.len() as u32;
        let pack = *self.numbers.entry(e.pack_id).or_insert(next);
        if pack == next {
            self.packs.push(e.pack_id);
        }
        Location {
            pack,
            offset: [e.entry.offset as u32, (e.entry.offset >> 32) as u32],
            sealed_len: e.entry.sealed_len,
            raw_len: e.entry.raw_len,
        }
    }
}

impl BlockIndex {
    /// Loads every index segment (in parallel). Where a block is in two packs (a gc repack
    /// copied it), the copy in a pack gc has not condemned wins.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let condemned = crate::store::condemned::condemned_packs(repo).await?;
        let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
        let mut all = Vec::with_capacity(max_entries(&keys));
        let mut numbers = PackNumbers::default();
        for_each_listed_segment(repo, keys, |entries, _| {
            all.extend(
                entries
                    .iter()
                    .map(|e| (e.entry.block_id, numbers.locate(e))),
            );
            Ok(())
        })
        .await?;
        // In place (a stable sort would borrow half the vector again); which of two copies
        // outside condemned packs is kept does not matter.
        all.sort_unstable_by_key(|e| e.0);
        let packs = numbers.packs;
        let condemned_at = |l: &Location| condemned.contains(&packs[l.pack as usize]);
        // Keep one copy per block: one outside a condemned pack if there is one.
        let mut kept: usize = 0;
        for i in 0..all.len() {
            if kept > 0 && all[kept - 1].0 == all[i].0 {
                if condemned_at(&all[kept - 1].1) && !condemned_at(&all[i].1) {
                    all[kept - 1] = all[i];
                }
                continue;
            }
            all[kept] = all[i];
            kept += 1;
        }
        all.truncate(kept);
        all.shrink_to_fit();
        Ok(BlockIndex {
            entries: Entries::Memory(all),
            packs,
        })
    }

    /// [`BlockIndex::load`] within `memory` bytes: past them (52 bytes per index entry), the
    /// index goes to a table on local disk ([`super::block_table`]), with the same choice of
    /// copy. For `verify`, which looks up every block of every backup.
    pub async fn load_within(repo: &Repository, memory: u64) -> Result<Self> {
        let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
        if (max_entries(&keys) as u64).saturating_mul(52) <= memory {
            return Self::load(repo).await;
        }
        let condemned = crate::store::condemned::condemned_packs(repo).await?;
        let mut numbers = PackNumbers::default();
        // The sort runs stay within the same budget as the index would have.
        let mut table = TableBuilder::every_found(memory);
        found_in_segments(repo, keys, &mut table, &mut numbers).await?;
        let packs = numbers.packs;
        let (table, packs) = crate::cpu::run(move || {
            let table = table.build(|found| outside_condemned(found, &condemned, &packs));
            (table, packs)
        })
        .await;
        Ok(BlockIndex {
            entries: Entries::Table(table?),
            packs,
        })
    }

    /// Loads the locations of the blocks `wanted` names (in any order, repeats allowed), and
    /// only those, in memory.
    pub async fn load_wanted(repo: &Repository, wanted: Vec<ContentId>) -> Result<Self> {
        let mut ids = WantedIds::new(usize::MAX, usize::MAX);
        for id in wanted {
            ids.push(id)?;
        }
        Self::load_wanted_ids(repo, ids).await
    }

    /// Loads the locations of the blocks `wanted` collected: in memory, or in a table on
    /// local disk when there were more than its budget.
    pub async fn load_wanted_ids(repo: &Repository, wanted: WantedIds) -> Result<Self> {
        let condemned = crate::store::condemned::condemned_packs(repo).await?;
        let mut numbers = PackNumbers::default();
        // Merging spilled runs reads and writes them all: off the async worker.
        let entries = match crate::cpu::in_place(|| wanted.finish())? {
            Wanted::Memory(ids) => {
                let mut wanted: Vec<(ContentId, Location)> =
                    ids.into_iter().map(|id| (id, Location::NOWHERE)).collect();
                for_each_index_segment(repo, |entries, _| {
                    for e in entries {
                        let Ok(i) = wanted.binary_search_by(|w| w.0.cmp(&e.entry.block_id)) else {
                            continue;
                        };
                        let slot = &mut wanted[i].1;
                        // First copy found, or a copy outside a condemned pack replacing one
                        // inside.
                        if !slot.is_somewhere()
                            || condemned.contains(&numbers.packs[slot.pack as usize])
                        {
                            *slot = numbers.locate(&e);
                        }
                    }
                })
                .await?;
                Entries::Memory(wanted)
            }
            Wanted::Table(mut table) => {
                let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
                found_in_segments(repo, keys, &mut table, &mut numbers).await?;
                let packs = &numbers.packs;
                // A copy outside a condemned pack if there is one.
                let table = crate::cpu::in_place(|| {
                    table.build(|found| outside_condemned(found, &condemned, packs))
                })?;
                Entries::Table(table)
            }
        };
        Ok(BlockIndex {
            entries,
            packs: numbers.packs,
        })
    }

    /// Where a block is. An index in memory only: one on disk reports its read errors
    /// through [`BlockIndex::try_get`] (here they read as "not indexed").
    pub fn get(&self, id: &ContentId) -> Option<IndexEntry> {
        self.try_get(id).ok().flatten()
    }

    /// Where a block is; an error only when the table on local disk cannot be read.
    pub fn try_get(&self, id: &ContentId) -> Result<Option<IndexEntry>> {
        let l = match &self.entries {
            Entries::Memory(entries) => match entries.binary_search_by(|e| e.0.cmp(id)) {
                Ok(i) => entries[i].1,
                Err(_) => return Ok(None),
            },
            Entries::Table(table) => match table.get(id)? {
                Some(l) => l,
                None => return Ok(None),
            },
        };
        Ok(l.is_somewhere().then(|| IndexEntry {
            pack_id: self.packs[l.pack as usize],
            entry: crate::pack::PackEntry {
                block_id: *id,
                offset: u64::from(l.offset[0]) | u64::from(l.offset[1]) << 32,
                sealed_len: l.sealed_len,
                raw_len: l.raw_len,
            },
        }))
    }

    /// Distinct blocks wanted (or, from [`BlockIndex::load`], indexed).
    pub fn wanted(&self) -> u64 {
        match &self.entries {
            Entries::Memory(entries) => entries.len() as u64,
            Entries::Table(table) => table.records(),
        }
    }

    /// Whether the locations live in a table on local disk (over the memory budget).
    pub fn on_disk(&self) -> bool {
        matches!(self.entries, Entries::Table(_))
    }

    /// Number of blocks located.
    pub fn len(&self) -> usize {
        let mut n = 0;
        // A table that cannot be read counts nothing located.
        let _ = self.each(|_, l| n += usize::from(l.is_somewhere()));
        n
    }

    /// True when no block is located.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A block wanted (by [`BlockIndex::load_wanted`]) but in no index segment.
    pub fn first_missing(&self) -> Result<Option<ContentId>> {
        let mut missing = None;
        self.each(|id, l| {
            if missing.is_none() && !l.is_somewhere() {
                missing = Some(*id);
            }
        })?;
        Ok(missing)
    }

    /// The packs holding located blocks.
    pub fn pack_ids(&self) -> Result<std::collections::HashSet<PackId>> {
        let mut packs = std::collections::HashSet::new();
        self.each(|_, l| {
            if l.is_somewhere() {
                packs.insert(self.packs[l.pack as usize]);
            }
        })?;
        Ok(packs)
    }

    /// Every entry, located or not, in id order.
    fn each(&self, mut f: impl FnMut(&ContentId, &Location)) -> Result<()> {
        match &self.entries {
            Entries::Memory(entries) => {
                entries.iter().for_each(|(id, l)| f(id, l));
                Ok(())
            }
            Entries::Table(table) => table.scan(f),
        }
    }
}

/// Block ids known to the repository or already claimed by this backup, within a memory
/// budget (`backup --index-memory`).
///
/// - The repository's blocks: one vector sorted by id (32 bytes per block) while they take
///   at most half the budget; past it, a table sorted on local disk ([`super::block_table::IdTable`], in
///   `TMPDIR`), a quarter of a byte per block in memory and one page read per question.
/// - This backup's claims: a vector sorted by id and a hash set of the latest claims, merged
///   into the vector (see [`crate::sorted`]) whenever it reaches an eighth of it: about 40
///   bytes per claim, where a hash set of every claim cost 75, 120 while it grew. Past the
///   other half of the budget the claims are forgotten and collecting starts again; a block
///   met again after that is stored a second time (a copy in another pack, which restores and
///   gc take as they take any copy), never taken as stored when it is not.
/// - A question the table on disk cannot answer (a read error) counts as "not stored" (the
///   block is stored again rather than the backup depending on a block it could not find),
///   and the first such error is kept: the backup fails with it before its manifest
///   ([`KnownBlocks::failure`]).
#[derive(Debug)]
pub struct KnownBlocks {
    stored: Ids,
    claims: Mutex<Claims>,
    /// Claims held before they are forgotten.
    max_claims: usize,
    /// The first lookup in the table on disk that failed.
    failed: Mutex<Option<Error>>,
}

#[derive(Debug, Default)]
struct Claims {
    sorted: Vec<ContentId>,
    recent: std::collections::HashSet<ContentId>,
    /// Claims forgotten to stay within the budget.
    forgotten: u64,
}

/// Claims held in the hash set before a merge, at least.
const MIN_RECENT: usize = 1 << 16;

/// Memory per claim, sorted vector and hash set together (see [`KnownBlocks`]).
const CLAIM_BYTES: u64 = 40;

/// Default `backup --index-memory`: 64 MiB, the repository's ids of a million blocks (64 GiB
/// of distinct 64 KiB blocks) in memory, and as many claims.
pub const DEFAULT_KNOWN_MEMORY: u64 = 64 << 20;

impl Default for KnownBlocks {
    /// Nothing stored, the default budget.
    fn default() -> Self {
        KnownBlocks::new(Ids::Memory(Vec::new()), DEFAULT_KNOWN_MEMORY)
    }
}

impl KnownBlocks {
    fn new(stored: Ids, memory: u64) -> Self {
        KnownBlocks {
            stored,
            failed: Mutex::default(),
            claims: Mutex::default(),
            max_claims: usize::try_from(memory / 2 / CLAIM_BYTES)
                .unwrap_or(usize::MAX)
                .max(MIN_RECENT),
        }
    }

    /// Every indexed block outside the packs GC condemned, read segment by segment (a backup
    /// needs only the ids, so it never holds the whole index), within `memory` bytes (see
    /// [`KnownBlocks`]). A backup must never start depending on a pack that may be deleted:
    /// blocks only found in condemned packs are stored again.
    pub async fn load_excluding(
        repo: &Repository,
        condemned: &std::collections::HashSet<PackId>,
        memory: u64,
    ) -> Result<Self> {
        let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
        let in_memory = usize::try_from(memory / 2 / 32).unwrap_or(usize::MAX);
        if max_entries(&keys) <= in_memory {
            // One vector reserved for the whole index, sorted in place.
            let mut sorted = Vec::with_capacity(max_entries(&keys));
            for_each_listed_segment(repo, keys, |entries, _| {
                sorted.extend(
                    entries
                        .iter()
                        .filter(|e| !condemned.contains(&e.pack_id))
                        .map(|e| e.entry.block_id),
                );
                Ok(())
            })
            .await?;
            sorted.sort_unstable();
            sorted.dedup();
            sorted.shrink_to_fit();
            return Ok(KnownBlocks::new(Ids::Memory(sorted), memory));
        }
        // Runs of the half budget (and a sixteenth) while they are sorted (a run goes to disk
        // once it holds more distinct ids than the half keeps, see `WantedIds::new`).
        let mut ids = WantedIds::new(in_memory, RUN_IDS);
        for_each_listed_segment(repo, keys, |entries, _| {
            entries
                .iter()
                .filter(|e| !condemned.contains(&e.pack_id))
                .try_for_each(|e| ids.push(e.entry.block_id))
        })
        .await?;
        let stored = crate::cpu::run(move || ids.finish_ids()).await?;
        Ok(KnownBlocks::new(stored, memory))
    }

    /// Whether the repository's blocks went to a table on local disk, and how many there are.
    pub fn on_disk(&self) -> Option<u64> {
        match &self.stored {
            Ids::Memory(_) => None,
            Ids::Table(t) => Some(t.records()),
        }
    }

    /// The first lookup in the table on disk that failed, if one did: the backup must not
    /// commit (its blocks were stored again, but the local disk is failing).
    pub fn failure(&self) -> Option<Error> {
        self.failed.lock().expect("known blocks lock").take()
    }

    /// Claims forgotten to stay within the budget so far.
    pub fn forgotten(&self) -> u64 {
        self.claims.lock().expect("known blocks lock").forgotten
    }

    fn stored(&self, id: &ContentId) -> bool {
        match &self.stored {
            Ids::Memory(ids) => ids.binary_search(id).is_ok(),
            Ids::Table(table) => table.contains(id).unwrap_or_else(|e| {
                self.failed
                    .lock()
                    .expect("known blocks lock")
                    .get_or_insert(e);
                false
            }),
        }
    }

    /// Whether a block is known (stored, or claimed by this backup), without claiming it.
    pub fn contains(&self, id: &ContentId) -> bool {
        if self.stored(id) {
            return true;
        }
        let claims = self.claims.lock().expect("known blocks lock");
        claims.sorted.binary_search(id).is_ok() || claims.recent.contains(id)
    }

    /// Claims a block: true if it was unknown (the caller must store it).
    pub fn claim(&self, id: ContentId) -> bool {
        if self.stored(&id) {
            return false;
        }
        let mut claims = self.claims.lock().expect("known blocks lock");
        if claims.sorted.binary_search(&id).is_ok() || !claims.recent.insert(id) {
            return false;
        }
        if claims.sorted.len() + claims.recent.len() > self.max_claims {
            let held = (claims.sorted.len() + claims.recent.len() - 1) as u64;
            claims.forgotten += held;
            claims.sorted = Vec::new();
            claims.recent.clear();
            claims.recent.shrink_to(MIN_RECENT);
            claims.recent.insert(id);
        } else if claims.recent.len() >= MIN_RECENT.max(claims.sorted.len() / 8) {
            let Claims { sorted, recent, .. } = &mut *claims;
            let mut batch: Vec<ContentId> = recent.drain().collect();
            batch.sort_unstable();
            crate::sorted::merge_into(sorted, &batch, |id| *id);
        }
        true
    }
}

/// A sealed block on its way into a pack.
#[derive(Debug)]
pub struct SealedBlock {
    /// Block id.
    pub id: ContentId,
    /// Sealed bytes.
    pub sealed: Vec<u8>,
    /// Plaintext length.
    pub raw_len: u32,
}

/// Fills packs, uploads them, then indexes them.
///
/// A full pack is uploaded in the background while the next one fills: uploaded in line, every
/// pack stopped the backup's readers for as long as its upload took (they block on the bounded
/// channel into the packer), which showed as a tenth of a second or more of idle cores per pack
/// on a local disk and longer on an object store. At most one upload runs beside the pack
/// being filled, so memory stays at two packs' buffers. [`Packer::flush`] returns once every
/// pack is uploaded and indexed; a packer dropped before that aborts its upload (the pack may
/// remain without an index segment or with one; either way no manifest references it, and gc
/// reclaims it).
#[derive(Debug)]
pub struct Packer {
    repo: Repository,
    writer: PackWriter,
    /// Stored bytes uploaded so far.
    pub stored: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// With [`Packer::recording`]: each pack written, its size and entries (for gc's repack;
    /// a backup does not keep them, they would cost memory per block).
    pub written: Vec<(PackId, u64, Vec<crate::pack::PackEntry>)>,
    record: bool,
    uploading: tokio::task::JoinSet<Result<Uploaded>>,
}

/// A pack uploaded and indexed.
#[derive(Debug)]
struct Uploaded {
    pack_id: PackId,
    len: u64,
    entries: Vec<crate::pack::PackEntry>,
}

impl Packer {
    /// A packer for a repository.
    pub fn new(repo: Repository) -> Self {
        Packer {
            repo,
            writer: PackWriter::new(),
            stored: 0,
            packs: 0,
            written: Vec::new(),
            record: false,
            uploading: tokio::task::JoinSet::new(),
        }
    }

    /// A packer that remembers what it wrote in [`Packer::written`].
    pub fn recording(repo: Repository) -> Self {
        Packer {
            record: true,
            ..Packer::new(repo)
        }
    }

    /// Adds a block; starts the pack's upload when it is full.
    pub async fn add(&mut self, block: SealedBlock) -> Result<()> {
        self.writer
            .push_sealed(block.id, &block.sealed, block.raw_len);
        if self.writer.is_full() {
            self.start_upload().await?;
        }
        Ok(())
    }

    /// Uploads the current pack (if any) and waits until every pack is uploaded and indexed.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.writer.is_empty() {
            self.start_upload().await?;
        }
        self.wait_for_uploads().await
    }

    /// Waits for the upload in flight, then starts the current pack's.
    async fn start_upload(&mut self) -> Result<()> {
        self.wait_for_uploads().await?;
        let writer = std::mem::take(&mut self.writer);
        self.uploading.spawn(upload(self.repo.clone(), writer));
        Ok(())
    }

    async fn wait_for_uploads(&mut self) -> Result<()> {
        while let Some(done) = self.uploading.join_next().await {
            let up =
                done.map_err(|e| Error::InvalidInput(format!("uploading a pack failed: {e}")))??;
            self.stored += up.len;
            self.packs += 1;
            if self.record {
                self.written.push((up.pack_id, up.len, up.entries));
            }
        }
        Ok(())
    }
}

/// Seals `writer`'s pack, uploads it, then writes its index segment.
async fn upload(repo: Repository, writer: PackWriter) -> Result<Uploaded> {
    let codec = repo.codec().clone();
    // Off the async threads and off the shared CPU pool: this runs while readers wait for
    // the packer, and must not queue behind work that waits for it.
    let pack: FinishedPack = tokio::task::spawn_blocking(move || writer.finish(&codec))
        .await
        .map_err(|e| Error::InvalidInput(format!("sealing a pack failed: {e}")))?;
    let pack_id = PackId::new(*pack.pack_id.as_bytes());
    let len = pack.bytes.len() as u64;
    let key = layout::pack(&pack_id);
    if repo
        .storage()
        .put_create(&key, Bytes::from(pack.bytes))
        .await?
        == CreateOutcome::AlreadyExists
    {
        // A pack is named by the hash of its bytes, and the backend compared them: the object
        // under this name is damaged. Indexing our blocks there would point them at it.
        return Err(Error::corrupt(
            key.to_string(),
            "a pack already exists under this name holding other bytes: it is damaged; \
             this backup stored nothing in it and stopped (run `pgcairn verify --read-data` \
             to see which backups it harms)",
        ));
    }
    let entries: Vec<IndexEntry> = pack
        .entries
        .iter()
        .map(|e| IndexEntry { pack_id, entry: *e })
        .collect();
    let (seg_id, sealed) = seal_segment(repo.codec(), &entries);
    repo.storage()
        .put_create(&layout::index_segment(&seg_id), Bytes::from(sealed))
        .await?;
    Ok(Uploaded {
        pack_id,
        len,
        entries: pack.entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackEntry;

    #[test]
    fn compact_locations_keep_every_field_even_offsets_beyond_4_gib() {
        assert_eq!(std::mem::size_of::<Location>(), 20);
        let mut numbers = PackNumbers::default();
        let entries: Vec<IndexEntry> = (0..3u8)
            .map(|i| IndexEntry {
                pack_id: PackId::new([i % 2; 32]),
                entry: PackEntry {
                    block_id: ContentId([i; 32]),
                    offset: (5u64 << 32) + u64::from(i) * 1000 + 123,
                    sealed_len: 9 + u32::from(i),
                    raw_len: 65536 - u32::from(i),
                },
            })
            .collect();
        let index = BlockIndex {
            entries: Entries::Memory(
                entries
                    .iter()
                    .map(|e| (e.entry.block_id, numbers.locate(e)))
                    .collect(),
            ),
            packs: numbers.packs,
        };
        assert_eq!(index.packs.len(), 2, "pack ids are numbered once each");
        for e in &entries {
            assert_eq!(index.get(&e.entry.block_id), Some(*e));
        }
        assert_eq!(index.get(&ContentId([9; 32])), None);
    }

    #[test]
    fn claims_survive_the_merges_into_the_sorted_vector() {
        let id = |n: u32| ContentId(*blake3::hash(&n.to_le_bytes()).as_bytes());
        let known = KnownBlocks::default();
        let n = 3 * MIN_RECENT as u32 + 17;
        assert!(
            (0..n).all(|i| known.claim(id(i))),
            "every new block is claimed once"
        );
        assert!((0..n).all(|i| !known.claim(id(i))), "and never again");
        let k = known.claims.lock().unwrap();
        assert!(k.sorted.len() >= 2 * MIN_RECENT, "merged at least twice");
        assert_eq!(k.sorted.len() + k.recent.len(), n as usize);
        assert!(k.sorted.windows(2).all(|w| w[0] < w[1]));
    }

    fn numbered(n: u64) -> ContentId {
        ContentId(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    /// The repository's `stored` blocks on disk (no memory for them), within `memory`.
    fn known_on_disk(stored: u64, memory: u64) -> KnownBlocks {
        let mut ids = WantedIds::new(0, RUN_IDS);
        for i in 0..stored {
            ids.push(numbered(i)).unwrap();
        }
        let Ids::Table(table) = ids.finish_ids().unwrap() else {
            panic!("on disk");
        };
        KnownBlocks::new(Ids::Table(table), memory)
    }

    #[test]
    fn claims_past_the_budget_are_forgotten_never_taken_as_stored() {
        let known = known_on_disk(5000, 0);
        assert_eq!(known.on_disk(), Some(5000));
        assert!(
            (0..5000).all(|i| !known.claim(numbered(i))),
            "stored blocks"
        );
        assert!((0..5000).all(|i| known.contains(&numbered(i))));
        // The smallest budget still holds MIN_RECENT claims.
        let n = MIN_RECENT as u64 + 100;
        assert!(
            (5000..5000 + n).all(|i| known.claim(numbered(i))),
            "new blocks"
        );
        assert_eq!(known.forgotten(), MIN_RECENT as u64);
        // The latest claims are held; the forgotten ones are claimed (stored) again.
        assert!((5000 + MIN_RECENT as u64..5000 + n).all(|i| !known.claim(numbered(i))));
        assert!(known.claim(numbered(5000)), "forgotten: stored again");
        assert!(!known.claim(numbered(5000)), "and held again");
        assert!(!known.contains(&numbered(u64::MAX)));
    }

    /// A table on disk that cannot be read answers "not stored" (the block is stored again)
    /// and keeps the error for the backup to fail with.
    #[test]
    fn a_table_that_cannot_be_read_fails_the_backup_and_never_hides_a_block() {
        let known = known_on_disk(1000, 0);
        assert!(known.failure().is_none());
        let Ids::Table(table) = &known.stored else {
            panic!("on disk");
        };
        table.lose_file();
        assert!(
            known.claim(numbered(5)),
            "stored again, not taken as stored"
        );
        assert!(!known.claim(numbered(5)), "and claimed once");
        let e = known.failure().expect("the failure is kept");
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert!(e.to_string().contains("TMPDIR"), "{e}");
    }

    const CHILD: &str = "PGCAIRN_KNOWN_BLOCKS_MEMORY_CHILD";

    /// The workload of [`a_backups_known_blocks_stay_within_the_budget`], in a process of
    /// its own.
    #[test]
    #[ignore = "run by a_backups_known_blocks_stay_within_the_budget in its own process"]
    fn three_million_known_blocks_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let n = 3_000_000u64;
        let known = known_on_disk(n, DEFAULT_KNOWN_MEMORY);
        for i in (0..n).step_by(7) {
            assert!(!known.claim(numbered(i)), "stored");
        }
        // A full backup of as many new blocks.
        for i in n..2 * n {
            assert!(known.claim(numbered(i)), "new");
        }
        crate::test_support::report_peak_rss();
    }

    /// A repository of 3 million blocks and a backup of 3 million new ones (183 GiB each in
    /// 64 KiB blocks) took 216 MiB of ids in memory (32 bytes per stored block, 40 per
    /// claim); within the default budget of 64 MiB the process peaks at the runs' buffers
    /// (32 MiB of ids while the table is built), the claims' half of the budget and the test
    /// binary.
    #[test]
    fn a_backups_known_blocks_stay_within_the_budget() {
        let peak = crate::test_support::peak_rss_of_child(
            "store::blocks::tests::three_million_known_blocks_child",
            CHILD,
        );
        eprintln!(
            "peak RSS, 3 million blocks known and 3 million claimed: {} MiB",
            peak >> 20
        );
        assert!(
            peak < 112 << 20,
            "peak RSS {} MiB: known blocks are not bounded",
            peak >> 20
        );
    }

    /// Blocks of incompressible bytes, sealed, enough for `packs` packs (the last one partial).
    fn blocks_for(repo: &Repository, packs: usize) -> Vec<SealedBlock> {
        let n = packs * crate::pack::TARGET_PACK_SIZE / (1 << 20) - 8;
        (0..n as u32)
            .map(|i| {
                let mut plain = vec![0u8; 1 << 20];
                let mut h = blake3::Hasher::new();
                h.update(&i.to_le_bytes());
                h.finalize_xof().fill(&mut plain);
                let id = repo.codec().content_id(&plain);
                let sealed =
                    repo.codec()
                        .seal(crate::codec::ObjectKind::Block, &id, b"", &plain, 1);
                SealedBlock {
                    id,
                    sealed,
                    raw_len: plain.len() as u32,
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn packs_uploaded_in_the_background_are_all_indexed_when_flush_returns() {
        let (_, repo) = crate::test_support::memory_repo().await;
        let blocks = blocks_for(&repo, 3);
        let ids: Vec<ContentId> = blocks.iter().map(|b| b.id).collect();
        let mut packer = Packer::recording(repo.clone());
        for b in blocks {
            packer.add(b).await.unwrap();
        }
        packer.flush().await.unwrap();
        assert_eq!(packer.packs, 3);
        assert_eq!(packer.written.len(), 3);
        let total: u64 = packer.written.iter().map(|w| w.1).sum();
        assert_eq!(packer.stored, total);
        let index = BlockIndex::load(&repo).await.unwrap();
        assert!(
            ids.iter().all(|id| index.get(id).is_some()),
            "every block indexed"
        );
    }

    /// The first error packing `blocks` gives, from an add or else from the flush.
    async fn first_failure(packer: &mut Packer, blocks: Vec<SealedBlock>) -> Error {
        for b in blocks {
            if let Err(e) = packer.add(b).await {
                return e;
            }
        }
        packer.flush().await.unwrap_err()
    }

    #[tokio::test]
    async fn a_pack_name_holding_other_bytes_fails_the_packer_and_indexes_nothing() {
        // A pack is named by the hash of its bytes: other bytes under its name are a damaged
        // object, and an index segment would point this backup's blocks at them.
        let (mem, repo) = crate::test_support::memory_repo().await;
        let taken = std::sync::Arc::new(crate::test_support::LeaseFaults {
            inner: mem.clone(),
            taken_names: Some(layout::PACKS_PREFIX),
            ..Default::default()
        });
        let repo = repo.with_storage(taken);
        let mut packer = Packer::new(repo.clone());
        let failed = first_failure(&mut packer, blocks_for(&repo, 2)).await;
        assert!(matches!(failed, Error::Corrupt { .. }), "{failed}");
        assert!(
            failed.to_string().contains("holding other bytes"),
            "{failed}"
        );
        let segments = crate::storage::Storage::list(&*mem, layout::INDEX_PREFIX)
            .await
            .unwrap();
        assert!(segments.is_empty(), "no block indexed: {segments:?}");
        assert_eq!(packer.packs, 0);
    }

    #[tokio::test]
    async fn a_failed_background_upload_fails_the_packer() {
        // Storage that takes the first pack and its index segment, then fails: the second
        // pack's upload runs in the background and its failure must still reach the caller.
        let (mem, repo) = crate::test_support::memory_repo().await;
        let faulty = std::sync::Arc::new(crate::test_support::FailAfter::new(mem, 2));
        let repo = repo.with_storage(faulty);
        let mut packer = Packer::new(repo.clone());
        let failed = first_failure(&mut packer, blocks_for(&repo, 3)).await;
        assert!(failed.to_string().contains("injected failure"), "{failed}");
        assert_eq!(packer.packs, 1, "only the first pack was uploaded");
    }
}
