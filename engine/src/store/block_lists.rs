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
use crate::index::IndexEntry as Located;
use crate::repo::{layout, Repository};
use crate::store::blocks::{BlockIndex, SealedBlock};
use crate::store::manifest::entries::Patch;
use crate::store::manifest::{BlockRef, FileEntry};

/// Block ids per list: 8 MiB of a file at 64 KiB blocks, about 4 KiB of ids.
pub const LIST_BLOCKS: usize = 128;

/// What a list's plaintext starts with: the format's name and version. Version 1 holds
/// block ids; version 2 (manifest format 4) also each block's part fingerprints and patches
/// ([`crate::store::patches`]).
const MAGIC_V1: &[u8; 5] = b"PGCL1";
const MAGIC: &[u8; 5] = b"PGCL2";

/// Range reads in flight while a file's lists are fetched (at most [`SPAN_MAX`] each).
const FETCH_AHEAD: usize = 16;

/// A file's lists are read in spans: lists of one pack at most [`SPAN_GAP`] bytes apart are
/// fetched by one range read of at most [`SPAN_MAX`] bytes. Why: a backup writes a file's
/// lists one after the other, so the 128 lists of a 1 GiB relation segment sit side by side in
/// a pack, and reading them one request each made loading a manifest cost a round trip per
/// list: about 400 requests for a scale-200 pgbench database, 21 s of an incremental backup on
/// the local S3 server (5 s at scale 50), paid again by every restore and verify.
const SPAN_GAP: u64 = 64 << 10;
/// See [`SPAN_GAP`].
const SPAN_MAX: u64 = 1 << 20;

/// Lists a [`ListReader`] keeps once read (4 to 12 KiB each, at most 12 MiB in all): verify
/// loads every manifest, and backups share most of their lists with the first one read.
const CACHED_LISTS: usize = 1 << 10;

/// Whether a file of `blocks` blocks, `patches` of them stored as patches, is recorded as
/// block lists (patches are recorded only there).
pub fn applies(blocks: usize, patches: usize) -> bool {
    blocks >= LIST_BLOCKS || patches > 0
}

/// One list, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListContents {
    /// Block ids (a patched block's base).
    pub blocks: Vec<BlockRef>,
    /// Part fingerprints, `parts` per block; empty in a version 1 list.
    pub fps: Vec<u64>,
    /// Patched blocks, by position in the list.
    pub patches: Vec<Patch>,
}

impl ListContents {
    /// The stored blocks the list references: its blocks (bases included) and its patches.
    pub fn referenced(&self) -> impl Iterator<Item = ContentId> + '_ {
        let blocks = self.blocks.iter().filter_map(|b| b.0);
        blocks.chain(self.patches.iter().map(|p| p.delta))
    }
}

/// A list's plaintext: [`MAGIC`], the count (u32, little-endian), the parts per block (u8,
/// 0 without fingerprints), then per block `0` (an all-zero block), or `1`, its 32-byte id
/// and its fingerprints (u64 each), or `2`, the base's id, the fingerprints, the patched
/// block's id, the patch's id and the mask (u64). `fps` holds `parts` per block or nothing;
/// `patches` are by position in `blocks`, in order.
pub fn encode(blocks: &[BlockRef], fps: &[u64], patches: &[Patch]) -> Vec<u8> {
    let parts = if blocks.is_empty() {
        0
    } else {
        fps.len() / blocks.len()
    };
    let mut out = Vec::with_capacity(10 + blocks.len() * (33 + parts * 8) + patches.len() * 72);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    out.push(parts as u8);
    let mut patches = patches.iter().peekable();
    for (i, b) in blocks.iter().enumerate() {
        let patch = patches.next_if(|p| p.pos as usize == i);
        match (&b.0, patch) {
            (None, _) => out.push(0),
            (Some(id), patch) => {
                out.push(if patch.is_some() { 2 } else { 1 });
                out.extend_from_slice(&id.0);
                for fp in &fps[i * parts..(i + 1) * parts] {
                    out.extend_from_slice(&fp.to_le_bytes());
                }
                if let Some(p) = patch {
                    out.extend_from_slice(&p.id.0);
                    out.extend_from_slice(&p.delta.0);
                    out.extend_from_slice(&p.mask.to_le_bytes());
                }
            }
        }
    }
    out
}

/// Takes `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
    let (head, after) = rest
        .split_at_checked(n)
        .ok_or_else(|| format!("truncated {what}"))?;
    *rest = after;
    Ok(head)
}

fn take_id(rest: &mut &[u8], what: &str) -> std::result::Result<ContentId, String> {
    Ok(ContentId(
        take(rest, 32, what)?.try_into().expect("32 bytes"),
    ))
}

fn take_u64(rest: &mut &[u8], what: &str) -> std::result::Result<u64, String> {
    Ok(u64::from_le_bytes(
        take(rest, 8, what)?.try_into().expect("8 bytes"),
    ))
}

/// Parses a list's plaintext (version 1 or 2); the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> std::result::Result<ListContents, String> {
    let (v2, mut rest) = match (
        bytes.strip_prefix(MAGIC.as_slice()),
        bytes.strip_prefix(MAGIC_V1.as_slice()),
    ) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err("not a block list (wrong magic)".into()),
    };
    let count = u32::from_le_bytes(take(&mut rest, 4, "count")?.try_into().expect("4 bytes"));
    let count = count as usize;
    if count == 0 || count > LIST_BLOCKS {
        return Err(format!("holds {count} blocks, not 1 to {LIST_BLOCKS}"));
    }
    let parts = if v2 {
        take(&mut rest, 1, "parts")?[0] as usize
    } else {
        0
    };
    if parts > 64 {
        return Err(format!("{parts} parts per block, more than 64"));
    }
    let mut list = ListContents {
        blocks: Vec::with_capacity(count),
        fps: Vec::with_capacity(count * parts),
        patches: Vec::new(),
    };
    for pos in 0..count {
        let tag = take(&mut rest, 1, "block")?[0];
        match (tag, v2) {
            (0, _) => {
                list.blocks.push(BlockRef::ZERO);
                list.fps.extend(std::iter::repeat_n(0, parts));
            }
            (1, _) | (2, true) => {
                list.blocks.push(BlockRef(Some(take_id(&mut rest, "id")?)));
                for _ in 0..parts {
                    list.fps.push(take_u64(&mut rest, "fingerprint")?);
                }
                if tag == 2 {
                    let id = take_id(&mut rest, "patched id")?;
                    let delta = take_id(&mut rest, "patch id")?;
                    let mask = take_u64(&mut rest, "patch mask")?;
                    if mask == 0 || (parts > 0 && parts < 64 && mask >> parts != 0) {
                        return Err(format!("patch of block {pos} replaces no part, or parts past the block's {parts} (mask {mask:#x})"));
                    }
                    list.patches.push(Patch {
                        pos: pos as u32,
                        id,
                        delta,
                        mask,
                    });
                }
            }
            (t, _) => return Err(format!("unknown block tag {t}")),
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after its last block", rest.len()));
    }
    Ok(list)
}

/// The lists of a file's blocks (`fps`: `parts` fingerprints per block, or none;
/// `patches`: in position order): their ids in order, and those `claim` accepted, sealed for
/// the packer (`claim` is the backup's set of known blocks: a list already stored, by this
/// backup or an earlier one, is not stored again).
pub fn list(
    codec: &Codec,
    blocks: &[BlockRef],
    fps: &[u64],
    patches: &[Patch],
    compress_level: i32,
    mut claim: impl FnMut(ContentId) -> bool,
) -> (Vec<ContentId>, Vec<SealedBlock>) {
    let (mut ids, mut new) = (Vec::new(), Vec::new());
    if blocks.is_empty() || !applies(blocks.len(), patches.len()) {
        return (ids, new);
    }
    let parts = match fps.len() % blocks.len() {
        0 => fps.len() / blocks.len(),
        _ => 0,
    };
    assert!(
        patches.windows(2).all(|w| w[0].pos < w[1].pos)
            && patches
                .iter()
                .all(|p| blocks.get(p.pos as usize).is_some_and(|b| !b.is_zero())),
        "patches in position order, each on a stored block"
    );
    let mut patches = patches;
    for (n, run) in blocks.chunks(LIST_BLOCKS).enumerate() {
        let first = n * LIST_BLOCKS;
        let here = patches.partition_point(|p| (p.pos as usize) < first + run.len());
        let local: Vec<Patch> = patches[..here]
            .iter()
            .map(|p| Patch {
                pos: p.pos - first as u32,
                ..*p
            })
            .collect();
        patches = &patches[here..];
        let run_fps = if parts > 0 {
            &fps[first * parts..(first + run.len()) * parts]
        } else {
            &[]
        };
        let plain = encode(run, run_fps, &local);
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
    cache: Mutex<HashMap<ContentId, Arc<ListContents>>>,
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
        let fetched = self.fetch(&f.block_lists, manifest, &prefix).await?;
        let runs: Vec<Arc<ListContents>> =
            f.block_lists.iter().map(|id| fetched[id].clone()).collect();
        let last = runs.len() - 1;
        if let Some(i) = runs[..last]
            .iter()
            .position(|r| r.blocks.len() != LIST_BLOCKS)
        {
            return Err(corrupt(format!(
                "block list {} holds {} blocks; every list but the last holds {LIST_BLOCKS}",
                f.block_lists[i],
                runs[i].blocks.len()
            )));
        }
        let count = last * LIST_BLOCKS + runs[last].blocks.len();
        // Fingerprints only if every list has them, as many parts per block in each.
        let parts = runs[0].fps.len() / runs[0].blocks.len();
        let fps = parts > 0 && runs.iter().all(|r| r.fps.len() == r.blocks.len() * parts);
        f.blocks = Vec::with_capacity(count);
        f.part_fps = Vec::with_capacity(if fps { count * parts } else { 0 });
        f.patches = Vec::new();
        for (n, r) in runs.iter().enumerate() {
            f.blocks.extend_from_slice(&r.blocks);
            if fps {
                f.part_fps.extend_from_slice(&r.fps);
            }
            f.patches.extend(r.patches.iter().map(|p| Patch {
                pos: p.pos + (n * LIST_BLOCKS) as u32,
                ..*p
            }));
        }
        Ok(())
    }

    /// The block ids in list `id`; `object` (what names the list) is the corrupt object if
    /// the list is missing or damaged.
    pub async fn list(&self, id: ContentId, object: &str) -> Result<Arc<ListContents>> {
        self.read(id, object, "").await
    }

    /// One list, from the cache or the block store (authenticated: its plaintext must hash to
    /// its id). Errors name `manifest`; their detail starts with `prefix` (the file that needs
    /// the list, and a colon).
    async fn read(&self, id: ContentId, manifest: &str, prefix: &str) -> Result<Arc<ListContents>> {
        let mut got = self.fetch(&[id], manifest, prefix).await?;
        Ok(got.remove(&id).expect("fetch returns every list asked for"))
    }

    /// The lists `ids` (repeats allowed), from the cache or the block store in spans (see
    /// [`SPAN_GAP`]); lists read are cached while there is room.
    async fn fetch(
        &self,
        ids: &[ContentId],
        manifest: &str,
        prefix: &str,
    ) -> Result<HashMap<ContentId, Arc<ListContents>>> {
        let corrupt = |id: ContentId, detail: String| {
            Error::corrupt(manifest, format!("{prefix}block list {id}: {detail}"))
        };
        let mut out = HashMap::with_capacity(ids.len());
        let mut wanted: Vec<(ContentId, Located)> = Vec::new();
        {
            let cache = self.cache.lock().expect("list cache lock");
            for id in ids {
                if out.contains_key(id) || wanted.iter().any(|(w, _)| w == id) {
                    continue;
                }
                if let Some(hit) = cache.get(id) {
                    out.insert(*id, hit.clone());
                    continue;
                }
                let Some(at) = self.index.try_get(id)? else {
                    return Err(corrupt(
                        *id,
                        "in no index segment (the block store lost it; run `pgcairn verify`)"
                            .into(),
                    ));
                };
                wanted.push((*id, at));
            }
        }
        let spans = spans(wanted);
        let read: Vec<Vec<(ContentId, Arc<ListContents>)>> = futures::stream::iter(spans)
            .map(|span| self.read_span(span, &corrupt))
            .buffered(FETCH_AHEAD)
            .try_collect()
            .await?;
        let mut cache = self.cache.lock().expect("list cache lock");
        for (id, run) in read.into_iter().flatten() {
            if cache.len() < CACHED_LISTS {
                cache.insert(id, run.clone());
            }
            out.insert(id, run);
        }
        Ok(out)
    }

    /// Reads one span of lists with one range read and opens each list in it.
    async fn read_span(
        &self,
        span: Vec<(ContentId, Located)>,
        corrupt: &impl Fn(ContentId, String) -> Error,
    ) -> Result<Vec<(ContentId, Arc<ListContents>)>> {
        let (first, last) = (&span[0].1, &span[span.len() - 1].1);
        let start = first.entry.offset;
        let end = last.entry.offset + u64::from(last.entry.sealed_len);
        let bytes = match self
            .repo
            .storage()
            .get_range(&layout::pack(&first.pack_id), start..end)
            .await
        {
            Ok(bytes) => bytes,
            Err(crate::storage::StorageError::NotFound { .. }) => {
                return Err(corrupt(
                    span[0].0,
                    format!("its pack {} is gone (run `pgcairn verify`)", first.pack_id),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        span.iter()
            .map(|(id, at)| {
                let from = (at.entry.offset - start) as usize;
                let sealed = bytes
                    .get(from..from + at.entry.sealed_len as usize)
                    .ok_or_else(|| corrupt(*id, format!("its pack {} is short", at.pack_id)))?;
                let plain = crate::pack::open_block(self.repo.codec(), &at.entry, sealed)
                    .map_err(|e| corrupt(*id, format!("does not open: {e}")))?;
                let run = decode(&plain).map_err(|e| corrupt(*id, e))?;
                Ok((*id, Arc::new(run)))
            })
            .collect()
    }
}

/// Groups lists into spans: by pack, in offset order, a list joining the previous one's span
/// when it starts at most [`SPAN_GAP`] bytes after it ends and the span stays within
/// [`SPAN_MAX`] bytes.
fn spans(mut wanted: Vec<(ContentId, Located)>) -> Vec<Vec<(ContentId, Located)>> {
    wanted.sort_by_key(|(_, at)| (at.pack_id, at.entry.offset));
    let mut out: Vec<Vec<(ContentId, Located)>> = Vec::new();
    for w in wanted {
        let joins = out.last().is_some_and(|span| {
            let (first, last) = (&span[0].1, &span[span.len() - 1].1);
            let end = last.entry.offset + u64::from(last.entry.sealed_len);
            let new_end = w.1.entry.offset + u64::from(w.1.entry.sealed_len);
            first.pack_id == w.1.pack_id
                && w.1.entry.offset >= end
                && w.1.entry.offset - end <= SPAN_GAP
                && new_end - first.entry.offset <= SPAN_MAX
        });
        match out.last_mut() {
            Some(span) if joins => span.push(w),
            _ => out.push(vec![w]),
        }
    }
    out
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

    fn plain(blocks: &[BlockRef]) -> ListContents {
        ListContents {
            blocks: blocks.to_vec(),
            fps: Vec::new(),
            patches: Vec::new(),
        }
    }

    #[test]
    fn lists_round_trip_with_zero_blocks() {
        let blocks = vec![id(1), BlockRef::ZERO, id(2), id(1)];
        assert_eq!(decode(&encode(&blocks, &[], &[])).unwrap(), plain(&blocks));
    }

    #[test]
    fn lists_round_trip_with_fingerprints_and_patches() {
        let blocks = vec![id(1), BlockRef::ZERO, id(2), id(3)];
        let fps: Vec<u64> = (1..=16).collect();
        let patches = vec![Patch {
            pos: 2,
            id: ContentId([9; 32]),
            delta: ContentId([8; 32]),
            mask: 0b10,
        }];
        let back = decode(&encode(&blocks, &fps, &patches)).unwrap();
        assert_eq!(back.blocks, blocks);
        // A zero block's fingerprints are not stored: they read back as unknown.
        assert_eq!(back.fps[..4], fps[..4]);
        assert_eq!(back.fps[4..8], [0; 4]);
        assert_eq!(back.fps[8..], fps[8..]);
        assert_eq!(back.patches, patches);
        // A version 1 list (manifest formats 2 and 3) still reads, without fingerprints.
        let mut v1 = b"PGCL1".to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.push(1);
        v1.extend_from_slice(&[1; 32]);
        assert_eq!(decode(&v1).unwrap(), plain(&[id(1)]));
    }

    #[test]
    fn lists_side_by_side_in_a_pack_are_read_as_one_span() {
        use crate::store::ids::PackId;
        let at = |pack: u8, offset: u64, len: u32| Located {
            pack_id: PackId::new([pack; 32]),
            entry: crate::pack::PackEntry {
                block_id: ContentId([0; 32]),
                offset,
                sealed_len: len,
                raw_len: len,
            },
        };
        let w =
            |n: u8, pack: u8, offset: u64, len: u32| (ContentId([n; 32]), at(pack, offset, len));
        // Out of order, two packs; in pack 1: three adjacent lists, one after a small gap,
        // one after a gap larger than SPAN_GAP.
        let wanted = vec![
            w(3, 1, 16_000, 8_000),
            w(1, 1, 0, 8_000),
            w(9, 2, 0, 8_000),
            w(2, 1, 8_000, 8_000),
            w(4, 1, 24_000 + SPAN_GAP, 8_000),
            w(5, 1, 32_000 + 3 * SPAN_GAP, 8_000),
        ];
        let ids = |span: &Vec<(ContentId, Located)>| -> Vec<u8> {
            span.iter().map(|(id, _)| id.0[0]).collect()
        };
        let got: Vec<Vec<u8>> = spans(wanted).iter().map(ids).collect();
        assert_eq!(got, vec![vec![1, 2, 3, 4], vec![5], vec![9]]);
        // A span never grows past SPAN_MAX: 300 adjacent 8 KB lists take 3 reads.
        let many: Vec<_> = (0..300u64)
            .map(|i| w((i % 250) as u8, 1, i * 8_000, 8_000))
            .collect();
        let got = spans(many);
        assert_eq!(got.len(), 3);
        for span in &got {
            let (first, last) = (&span[0].1.entry, &span[span.len() - 1].1.entry);
            assert!(last.offset + u64::from(last.sealed_len) - first.offset <= SPAN_MAX);
        }
    }

    #[test]
    fn damaged_lists_are_refused_naming_the_fault() {
        let good = encode(&[id(1), BlockRef::ZERO], &[], &[]);
        assert!(decode(&good[..good.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        let mut tag = good.clone();
        tag[10] = 7;
        assert!(decode(&tag).unwrap_err().contains("tag 7"));
        let mut long = good.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().contains("after its last block"));
        assert!(decode(b"PGCL1\0\0\0\0").unwrap_err().contains("holds 0"));
        assert!(decode(b"nope").unwrap_err().contains("magic"));
    }

    /// A gc run with no grace period.
    async fn gc_now(repo: &Repository) -> crate::gc::GcReport {
        crate::gc::gc(
            repo,
            &crate::gc::GcOptions::with_grace(std::time::Duration::ZERO),
        )
        .await
        .unwrap()
    }

    /// Stores `blocks` (plaintexts) in one pack; returns their refs.
    async fn store_blocks(repo: &Repository, blocks: &[Vec<u8>]) -> Vec<BlockRef> {
        crate::test_support::pack_holding(repo, blocks.to_vec())
            .await
            .into_iter()
            .map(|id| BlockRef(Some(id)))
            .collect()
    }

    /// A backup of one file made of `refs`, recorded as its lists (stored in a pack of their
    /// own) when `claim` accepts them; returns how many lists were new.
    async fn backup(
        repo: &Repository,
        id: &str,
        refs: &[BlockRef],
        seen: &mut HashSet<ContentId>,
    ) -> usize {
        backup_patched(repo, id, refs, &[], &[], seen).await
    }

    /// [`backup`] with part fingerprints and patches.
    async fn backup_patched(
        repo: &Repository,
        id: &str,
        refs: &[BlockRef],
        fps: &[u64],
        patches: &[Patch],
        seen: &mut HashSet<ContentId>,
    ) -> usize {
        let (ids, new) = list(repo.codec(), refs, fps, patches, 1, |id| seen.insert(id));
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

    /// The spilled entry of `base/1/1` in backup `id`.
    async fn spilled_entry(
        repo: &Repository,
        id: &str,
        fps: manifest::PartFingerprints,
    ) -> FileEntry {
        let (_, mut spilled) = manifest::load_spilled(repo, "main", id, fps).await.unwrap();
        spilled.take("base/1/1").unwrap().unwrap()
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
        assert_eq!(
            spilled_entry(&repo, "20261124-000000F", manifest::PartFingerprints::Keep)
                .await
                .blocks,
            refs
        );

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
        let r = gc_now(&repo).await;
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
                index_memory: crate::verify::DEFAULT_INDEX_MEMORY,
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

    #[tokio::test]
    async fn patches_and_fingerprints_live_in_the_lists_and_gc_keeps_patch_blocks() {
        let repo = crate::test_support::memory_repo().await.1;
        let data: Vec<Vec<u8>> = (0..200u32).map(|n| n.to_le_bytes().repeat(16)).collect();
        let refs = store_blocks(&repo, &data).await;
        // The patch block alone in a pack of its own: only the list references it.
        let delta = store_blocks(&repo, &[b"a patch".repeat(5)]).await[0]
            .0
            .unwrap();
        let fps: Vec<u64> = (1..=200 * 4).collect();
        let patches = [Patch {
            pos: 150,
            id: ContentId([5; 32]),
            delta,
            mask: 0b1,
        }];
        let mut seen = HashSet::new();
        backup_patched(&repo, "20261124-000000F", &refs, &fps, &patches, &mut seen).await;
        let raw = manifest::load_unexpanded(&repo, "main", "20261124-000000F")
            .await
            .unwrap();
        assert!(raw.files[0].patches.is_empty() && raw.files[0].part_fps.is_empty());
        let m = manifest::load(&repo, "main", "20261124-000000F")
            .await
            .unwrap();
        assert_eq!(m.files[0].patches, patches);
        assert_eq!(m.files[0].part_fps, fps);
        assert_eq!(m.files[0].content_id_at(150), Some(ContentId([5; 32])));
        assert_eq!(m.files[0].content_id_at(149), refs[149].0);
        let f = spilled_entry(&repo, "20261124-000000F", manifest::PartFingerprints::Keep).await;
        assert_eq!(
            (f.patches.as_slice(), f.part_fps.len()),
            (&patches[..], 800)
        );
        // A restore's load drops the fingerprints, nothing else.
        let g = spilled_entry(&repo, "20261124-000000F", manifest::PartFingerprints::Drop).await;
        assert!(g.part_fps.is_empty());
        assert_eq!((g.blocks, g.patches), (f.blocks, f.patches));

        let r = gc_now(&repo).await;
        assert!(r.condemned.is_empty() && r.swept.is_empty(), "{r:?}");
        let at = BlockIndex::load(&repo).await.unwrap().get(&delta).unwrap();
        repo.storage()
            .head(&layout::pack(&at.pack_id))
            .await
            .unwrap();

        // A patch whose block the store never had: a restore's preflight refuses before
        // writing anything, naming the file.
        let lost = Patch {
            delta: ContentId([6; 32]),
            ..patches[0]
        };
        backup_patched(&repo, "20261124-000100I", &refs, &fps, &[lost], &mut seen).await;
        let (m, files) = manifest::load_spilled(
            &repo,
            "main",
            "20261124-000100I",
            manifest::PartFingerprints::Drop,
        )
        .await
        .unwrap();
        let e = crate::restore::preflight(&repo, &m, &files, usize::MAX, &Default::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&ContentId([6; 32]).to_hex()) && e.contains("base/1/1"),
            "{e}"
        );
    }
}
