//! A large file's block ids, recorded as lists of [`LIST_BLOCKS`] ids that are blocks
//! themselves.
//!
//! Why: a manifest listed every block of every file, about 36 bytes per 64 KiB block once
//! compressed: 4 MiB per backup of a 7.5 GB database, paid again by every incremental even when
//! one file in a hundred changed. That alone made an incremental after a 1 % update half as
//! large again as pgBackRest's block incremental. Now a file of at least [`LIST_BLOCKS`]
//! blocks is recorded as the ids of its block lists, and each list (a run of
//! [`LIST_BLOCKS`] block ids, see [`encode`]) is content-addressed and stored in the block
//! store like any block: sealed, packed, indexed, deduplicated. A list none of whose blocks
//! changed is stored once and shared by every backup that has it, so an incremental stores
//! the lists of the parts that changed and a few bytes per unchanged part.
//!
//! Backups still never depend on one another: a manifest references blocks, and some blocks
//! hold block ids. gc marks the lists a manifest names and the blocks in them; deleting any
//! backup leaves every other one whole.
//!
//! In memory, a loaded manifest's entries are expanded ([`ListReader::expand`]): `blocks` is
//! the whole list, as before, and `block_lists` stays for gc and verify. A manifest written
//! with lists is format 2; older pgcairn versions refuse it instead of restoring empty files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use crate::codec::{Codec, ObjectKind};
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::store::blocks::{BlockIndex, SealedBlock};
use crate::store::manifest::{BlockRef, FileEntry};

/// Block ids per list: 8 MiB of a file at 64 KiB blocks, about 4 KiB of ids.
pub const LIST_BLOCKS: usize = 128;

/// What a list's plaintext starts with: the format's name and version.
const MAGIC: &[u8; 5] = b"PGCL1";

/// Lists fetched at once while a file is expanded.
const FETCH_AHEAD: usize = 16;

/// Lists a [`ListReader`] keeps once read (about 4 KiB each, 4 MiB in all): verify loads every
/// manifest, and backups share most of their lists with the first one read.
const CACHED_LISTS: usize = 1 << 10;

/// Whether a file of `blocks` blocks is recorded as block lists.
pub fn applies(blocks: usize) -> bool {
    blocks >= LIST_BLOCKS
}

/// A list's plaintext: [`MAGIC`], the count (u32, little-endian), then per block `0` (an
/// all-zero block) or `1` and its 32-byte id.
pub fn encode(blocks: &[BlockRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + blocks.len() * 33);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        match &b.0 {
            None => out.push(0),
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
    }
    out
}

/// Parses a list's plaintext; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> std::result::Result<Vec<BlockRef>, String> {
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a block list (wrong magic)")?;
    let (count, mut rest) = rest.split_at_checked(4).ok_or("truncated count")?;
    let count = u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize;
    if count == 0 || count > LIST_BLOCKS {
        return Err(format!("holds {count} blocks, not 1 to {LIST_BLOCKS}"));
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        let (tag, after) = rest.split_first().ok_or("truncated")?;
        rest = after;
        match tag {
            0 => blocks.push(BlockRef::ZERO),
            1 => {
                let (id, after) = rest.split_at_checked(32).ok_or("truncated id")?;
                rest = after;
                blocks.push(BlockRef(Some(ContentId(id.try_into().expect("32 bytes")))));
            }
            t => return Err(format!("unknown block tag {t}")),
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after its last block", rest.len()));
    }
    Ok(blocks)
}

/// The lists of a file's blocks: their ids in order, and those `claim` accepted, sealed for
/// the packer (`claim` is the backup's set of known blocks: a list already stored, by this
/// backup or an earlier one, is not stored again).
pub fn list(
    codec: &Codec,
    blocks: &[BlockRef],
    compress_level: i32,
    mut claim: impl FnMut(ContentId) -> bool,
) -> (Vec<ContentId>, Vec<SealedBlock>) {
    let (mut ids, mut new) = (Vec::new(), Vec::new());
    if !applies(blocks.len()) {
        return (ids, new);
    }
    for run in blocks.chunks(LIST_BLOCKS) {
        let plain = encode(run);
        let id = codec.content_id(&plain);
        if claim(id) {
            new.push(SealedBlock {
                id,
                sealed: codec.seal(ObjectKind::Block, &id, b"", &plain, compress_level),
                raw_len: plain.len() as u32,
            });
        }
        ids.push(id);
    }
    (ids, new)
}

/// Reads block lists through a block index that locates them, and keeps lists once read, up
/// to [`CACHED_LISTS`], for the next manifest that shares them.
#[derive(Debug)]
pub struct ListReader {
    repo: Repository,
    index: Arc<BlockIndex>,
    cache: Mutex<HashMap<ContentId, Arc<[BlockRef]>>>,
}

impl ListReader {
    /// A reader for the lists `ids` (repeats allowed): the block index is loaded for them
    /// alone, so memory follows the lists, not the repository.
    pub async fn for_lists(repo: &Repository, ids: Vec<ContentId>) -> Result<Self> {
        let index = BlockIndex::load_wanted(repo, ids).await?;
        Ok(Self::with_index(repo, Arc::new(index)))
    }

    /// A reader using a block index the caller already holds (verify): not loaded twice.
    pub fn with_index(repo: &Repository, index: Arc<BlockIndex>) -> Self {
        ListReader {
            repo: repo.clone(),
            index,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Fills `f.blocks` from its lists (nothing to do for a file recorded block by block).
    /// `manifest` names the manifest in errors: a list missing, damaged or not fitting the
    /// file makes that manifest corrupt.
    pub async fn expand(&self, f: &mut FileEntry, manifest: &str) -> Result<()> {
        if f.block_lists.is_empty() {
            return Ok(());
        }
        let corrupt = |detail: String| Error::corrupt(manifest, format!("{}: {detail}", f.path));
        if !f.blocks.is_empty() {
            return Err(corrupt(
                "lists its blocks both inline and as block lists".into(),
            ));
        }
        let prefix = format!("{}: ", f.path);
        let runs: Vec<Arc<[BlockRef]>> = futures::stream::iter(f.block_lists.iter().copied())
            .map(|id| self.read(id, manifest, &prefix))
            .buffered(FETCH_AHEAD)
            .try_collect()
            .await?;
        let last = runs.len() - 1;
        if let Some(i) = runs[..last].iter().position(|r| r.len() != LIST_BLOCKS) {
            return Err(corrupt(format!(
                "block list {} holds {} blocks; every list but the last holds {LIST_BLOCKS}",
                f.block_lists[i],
                runs[i].len()
            )));
        }
        f.blocks = Vec::with_capacity(last * LIST_BLOCKS + runs[last].len());
        for r in &runs {
            f.blocks.extend_from_slice(r);
        }
        Ok(())
    }

    /// The block ids in list `id`; `object` (what names the list) is the corrupt object if
    /// the list is missing or damaged.
    pub async fn list(&self, id: ContentId, object: &str) -> Result<Arc<[BlockRef]>> {
        self.read(id, object, "").await
    }

    /// One list, from the cache or the block store (authenticated: its plaintext must hash to
    /// its id). Errors name `manifest`; their detail starts with `prefix` (the file that needs
    /// the list, and a colon).
    async fn read(&self, id: ContentId, manifest: &str, prefix: &str) -> Result<Arc<[BlockRef]>> {
        if let Some(hit) = self.cache.lock().expect("list cache lock").get(&id) {
            return Ok(hit.clone());
        }
        let corrupt =
            |detail: String| Error::corrupt(manifest, format!("{prefix}block list {id}: {detail}"));
        let Some(at) = self.index.get(&id) else {
            return Err(corrupt(
                "in no index segment (the block store lost it; run `pgcairn verify`)".into(),
            ));
        };
        let range = at.entry.offset..at.entry.offset + u64::from(at.entry.sealed_len);
        let sealed = match self
            .repo
            .storage()
            .get_range(&layout::pack(&at.pack_id), range)
            .await
        {
            Ok(sealed) => sealed,
            Err(crate::storage::StorageError::NotFound { .. }) => {
                return Err(corrupt(format!(
                    "its pack {} is gone (run `pgcairn verify`)",
                    at.pack_id
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let plain = crate::pack::open_block(self.repo.codec(), &at.entry, &sealed)
            .map_err(|e| corrupt(format!("does not open: {e}")))?;
        let run: Arc<[BlockRef]> = decode(&plain).map_err(corrupt)?.into();
        let mut cache = self.cache.lock().expect("list cache lock");
        if cache.len() < CACHED_LISTS {
            cache.insert(id, run.clone());
        }
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::blocks::Packer;
    use crate::store::manifest;

    fn id(n: u8) -> BlockRef {
        BlockRef(Some(ContentId([n; 32])))
    }

    #[test]
    fn lists_round_trip_with_zero_blocks() {
        let blocks = vec![id(1), BlockRef::ZERO, id(2), id(1)];
        assert_eq!(decode(&encode(&blocks)).unwrap(), blocks);
    }

    #[test]
    fn damaged_lists_are_refused_naming_the_fault() {
        let good = encode(&[id(1), BlockRef::ZERO]);
        assert!(decode(&good[..good.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        let mut tag = good.clone();
        tag[9] = 7;
        assert!(decode(&tag).unwrap_err().contains("tag 7"));
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().contains("after its last block"));
        assert!(decode(b"PGCL1\0\0\0\0").unwrap_err().contains("holds 0"));
        assert!(decode(b"nope").unwrap_err().contains("magic"));
    }

    /// Stores `blocks` (plaintexts) in one pack; returns their refs.
    async fn store_blocks(repo: &Repository, blocks: &[Vec<u8>]) -> Vec<BlockRef> {
        let mut packer = Packer::new(repo.clone());
        let mut refs = Vec::new();
        for b in blocks {
            let id = repo.codec().content_id(b);
            let sealed = repo.codec().seal(ObjectKind::Block, &id, b"", b, 1);
            let raw_len = b.len() as u32;
            packer
                .add(SealedBlock {
                    id,
                    sealed,
                    raw_len,
                })
                .await
                .unwrap();
            refs.push(BlockRef(Some(id)));
        }
        packer.flush().await.unwrap();
        refs
    }

    /// A backup of one file made of `refs`, recorded as its lists (stored in a pack of their
    /// own) when `claim` accepts them; returns how many lists were new.
    async fn backup(
        repo: &Repository,
        id: &str,
        refs: &[BlockRef],
        seen: &mut HashSet<ContentId>,
    ) -> usize {
        let (ids, new) = list(repo.codec(), refs, 1, |id| seen.insert(id));
        let fresh = new.len();
        let mut packer = Packer::new(repo.clone());
        for b in new {
            packer.add(b).await.unwrap();
        }
        packer.flush().await.unwrap();
        let mut m = crate::test_support::manifest_of(id, &[]);
        m.format = manifest::MANIFEST_FORMAT;
        m.files[0].size = 8192 * refs.len() as u64;
        m.files[0].blocks = refs.to_vec();
        m.files[0].block_lists = ids;
        manifest::save(repo, &m).await.unwrap();
        fresh
    }

    #[tokio::test]
    async fn a_large_file_is_recorded_as_shared_lists_loaded_whole_and_kept_by_gc() {
        let repo = crate::test_support::memory_repo().await.1;
        let data: Vec<Vec<u8>> = (0..300u32).map(|n| n.to_le_bytes().repeat(16)).collect();
        let mut refs = store_blocks(&repo, &data).await;
        refs[7] = BlockRef::ZERO;
        let mut seen = HashSet::new();
        assert_eq!(backup(&repo, "20261124-000000F", &refs, &mut seen).await, 3);
        // What the manifest holds: three list ids, no inline blocks.
        let raw = manifest::load_unexpanded(&repo, "main", "20261124-000000F")
            .await
            .unwrap();
        assert!(raw.files[0].blocks.is_empty());
        assert_eq!(raw.files[0].block_lists.len(), 3);
        // Loaded, whole or spilled: the blocks in order, zero block included.
        let m = manifest::load(&repo, "main", "20261124-000000F")
            .await
            .unwrap();
        assert_eq!(m.files[0].blocks, refs);
        let (_, mut spilled) = manifest::load_spilled(&repo, "main", "20261124-000000F")
            .await
            .unwrap();
        assert_eq!(spilled.take("base/1/1").unwrap().unwrap().blocks, refs);

        // One block changes in the second run of 128: one new list, the others shared.
        let changed = store_blocks(&repo, &[b"changed".repeat(9)]).await;
        refs[200] = changed[0];
        assert_eq!(backup(&repo, "20261124-000100I", &refs, &mut seen).await, 1);
        let m = manifest::load(&repo, "main", "20261124-000100I")
            .await
            .unwrap();
        assert_eq!(m.files[0].blocks, refs);

        // gc keeps the packs of lists: they are referenced like any block.
        let before = repo
            .storage()
            .list(layout::PACKS_PREFIX)
            .await
            .unwrap()
            .len();
        let r = crate::gc::gc(
            &repo,
            &crate::gc::GcOptions::with_grace(std::time::Duration::ZERO),
        )
        .await
        .unwrap();
        assert!(r.condemned.is_empty() && r.swept.is_empty(), "{r:?}");
        assert_eq!(
            repo.storage()
                .list(layout::PACKS_PREFIX)
                .await
                .unwrap()
                .len(),
            before
        );

        // A list gone from the block store makes the manifest corrupt, naming the list and
        // the file, and verify reports it.
        let lost = m.files[0].block_lists[1];
        let at = BlockIndex::load(&repo).await.unwrap().get(&lost).unwrap();
        repo.storage()
            .delete(&layout::pack(&at.pack_id))
            .await
            .unwrap();
        let e = manifest::load(&repo, "main", "20261124-000100I")
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Corrupt { .. }), "{text}");
        assert!(
            text.contains(&lost.to_hex()) && text.contains("base/1/1"),
            "{text}"
        );
        let v = crate::verify::verify(
            &repo,
            &crate::verify::VerifyOptions {
                read_data: crate::verify::ReadData::None,
                all_again: false,
                state_file: None,
                jobs: 1,
            },
        )
        .await
        .unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.detail.contains(&lost.to_hex()) && p.backups == ["20261124-000100I"]),
            "{:?}",
            v.problems
        );
    }
}
