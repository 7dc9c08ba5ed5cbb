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

/// Reads every index segment, a few at a time, and hands each one's entries (with its sealed
/// size) to `each`: the one way the index is read, whatever a reader keeps of it.
pub async fn for_each_index_segment(
    repo: &Repository,
    mut each: impl FnMut(Vec<IndexEntry>, u64),
) -> Result<usize> {
    let keys = repo.storage().list(layout::INDEX_PREFIX).await?;
    let listed = keys.len();
    let mut segments = futures::stream::iter(keys)
        .map(|o| async move {
            let sealed = repo.storage().get(&o.key).await?;
            let entries = open_segment(repo.codec(), &sealed)
                .map_err(|e| Error::corrupt(o.key.to_string(), e.to_string()))?;
            Ok::<_, Error>((entries, sealed.len() as u64))
        })
        .buffer_unordered(8);
    while let Some(seg) = segments.next().await {
        let (entries, len) = seg?;
        each(entries, len);
    }
    Ok(listed)
}

/// Indexed blocks: id → location. About 130 bytes per block in memory (80-byte entry plus
/// hash map overhead). [`BlockIndex::load`] holds every block of the repository (verify);
/// [`BlockIndex::load_for`] only the blocks of one backup (restore), so a restore's memory
/// follows the backup's size, not the repository's.
#[derive(Debug, Default)]
pub struct BlockIndex {
    /// `None`: wanted (by `load_for`) but in no index segment.
    map: HashMap<ContentId, Option<IndexEntry>>,
}

impl BlockIndex {
    /// Loads every index segment (in parallel). Where a block is in two packs (a gc repack
    /// copied it), the copy in a pack gc has not condemned wins.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let mut index = BlockIndex::default();
        index.fill(repo, true).await?;
        Ok(index)
    }

    /// Loads the locations of the blocks `m` references, and only those.
    pub async fn load_for(
        repo: &Repository,
        m: &crate::backup::manifest::Manifest,
    ) -> Result<Self> {
        let mut map = HashMap::new();
        for f in &m.files {
            for id in f.blocks.iter().filter_map(|b| b.0) {
                map.insert(id, None);
            }
        }
        let mut index = BlockIndex { map };
        index.fill(repo, false).await?;
        Ok(index)
    }

    /// Reads every segment; `all`: keep every block, else only blocks already in the map.
    async fn fill(&mut self, repo: &Repository, all: bool) -> Result<()> {
        let condemned = crate::gc::condemned_packs(repo).await?;
        let map = &mut self.map;
        for_each_index_segment(repo, |entries, _| {
            for e in entries {
                let slot = match map.get_mut(&e.entry.block_id) {
                    Some(slot) => slot,
                    None if all => map.entry(e.entry.block_id).or_insert(None),
                    None => continue,
                };
                // First copy found, or a copy outside a condemned pack replacing one inside.
                if slot
                    .as_ref()
                    .is_none_or(|cur| condemned.contains(&cur.pack_id))
                {
                    *slot = Some(e);
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Where a block is.
    pub fn get(&self, id: &ContentId) -> Option<&IndexEntry> {
        self.map.get(id).and_then(Option::as_ref)
    }

    /// Number of blocks located.
    pub fn len(&self) -> usize {
        self.map.values().filter(|e| e.is_some()).count()
    }

    /// True when no block is located.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the blocks located.
    pub fn ids(&self) -> impl Iterator<Item = &ContentId> {
        self.map
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(id, _)| id)
    }
}

/// Block ids known to the repository or already queued by this backup.
#[derive(Debug, Default)]
pub struct KnownBlocks(Mutex<std::collections::HashSet<ContentId>>);

impl KnownBlocks {
    /// Every indexed block outside the packs GC condemned, read segment by segment: a backup
    /// needs only the ids, so it never holds the whole index (about a third of the memory).
    /// A backup must never start depending on a pack that may be deleted: blocks only found
    /// in condemned packs are stored again.
    pub async fn load_excluding(
        repo: &Repository,
        condemned: &std::collections::HashSet<[u8; 32]>,
    ) -> Result<Self> {
        let mut ids = std::collections::HashSet::new();
        for_each_index_segment(repo, |entries, _| {
            ids.extend(
                entries
                    .iter()
                    .filter(|e| !condemned.contains(&e.pack_id))
                    .map(|e| e.entry.block_id),
            );
        })
        .await?;
        Ok(KnownBlocks(Mutex::new(ids)))
    }

    /// Claims a block: true if it was unknown (the caller must store it).
    pub fn claim(&self, id: ContentId) -> bool {
        self.0.lock().expect("known blocks lock").insert(id)
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
    pub written: Vec<([u8; 32], u64, Vec<crate::pack::PackEntry>)>,
    record: bool,
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
        }
    }

    /// A packer that remembers what it wrote in [`Packer::written`].
    pub fn recording(repo: Repository) -> Self {
        Packer {
            record: true,
            ..Packer::new(repo)
        }
    }

    /// Adds a block; uploads the pack when full.
    pub async fn add(&mut self, block: SealedBlock) -> Result<()> {
        self.writer
            .push_sealed(block.id, &block.sealed, block.raw_len);
        if self.writer.is_full() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Uploads the current pack (if any) and writes its index segment.
    pub async fn flush(&mut self) -> Result<()> {
        if self.writer.is_empty() {
            return Ok(());
        }
        let writer = std::mem::take(&mut self.writer);
        let codec = self.repo.codec().clone();
        // Not on the rayon pool: readers on that pool block on the bounded channel into this
        // packer, so a pool task here could wait for a thread that waits for us (deadlock).
        let pack: FinishedPack = tokio::task::spawn_blocking(move || writer.finish(&codec))
            .await
            .map_err(|e| Error::InvalidInput(format!("sealing a pack failed: {e}")))?;
        let pack_id = *pack.pack_id.as_bytes();
        let len = pack.bytes.len() as u64;
        self.repo
            .storage()
            .put_create(&layout::pack(&pack_id), Bytes::from(pack.bytes))
            .await?;
        let entries: Vec<IndexEntry> = pack
            .entries
            .iter()
            .map(|e| IndexEntry { pack_id, entry: *e })
            .collect();
        let sealed = seal_segment(self.repo.codec(), &entries);
        let seg_id = *blake3::hash(&sealed).as_bytes();
        self.repo
            .storage()
            .put_create(&layout::index_segment(&seg_id), Bytes::from(sealed))
            .await?;
        self.stored += len;
        self.packs += 1;
        if self.record {
            self.written.push((pack_id, len, pack.entries));
        }
        Ok(())
    }
}
