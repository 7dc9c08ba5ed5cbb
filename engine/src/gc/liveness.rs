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
//! Memory: every index entry of every pack (48 bytes, grouped by pack), 36 bytes per distinct
//! referenced block (see [`Holders`]), and one manifest at a time while it is read (its
//! compressed form and its parsed form, 33 bytes per inline block; the JSON is streamed).
//! Block lists are read after the manifests, each distinct list once, 256 at a time, with a
//! block index of the lists alone (52 bytes per list, one list per 128 blocks). See the
//! README's benchmarks for the peak RSS per block measured with `benches/gc_scale.sh`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::holders::Holders;
use crate::crypto::ContentId;
use crate::error::Result;
use crate::pack::PackEntry;
use crate::repo::{layout, Repository};
use crate::store::block_lists::ListReader;
use crate::store::blocks::for_each_index_segment;
use crate::store::ids::PackId;
use crate::store::manifest;

/// A pack as listed, with the blocks the index says it holds.
#[derive(Debug, Clone)]
pub struct PackUsage {
    /// Object size.
    pub size: u64,
    /// Last modified, unix seconds.
    pub modified: Option<i64>,
    /// Its blocks, one entry per block id.
    pub entries: Vec<PackEntry>,
}

/// What the repository holds and what the backups use.
#[derive(Debug, Default)]
pub struct RepoUsage {
    /// Every pack in the repository.
    pub packs: BTreeMap<PackId, PackUsage>,
    /// Referenced block → number of holders (see the module docs).
    holders: Holders,
    /// Objects listed to build this.
    pub objects_listed: usize,
    /// Bytes read (index segments and manifests).
    pub bytes_read: u64,
    /// Manifests read.
    pub manifests: usize,
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

impl RepoUsage {
    /// Lists packs, reads every index segment and every manifest.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let mut usage = RepoUsage::default();
        let listed = repo.storage().list(layout::PACKS_PREFIX).await?;
        usage.objects_listed += listed.len();
        for o in listed {
            let Some(id) = layout::parse_pack(o.key.as_str()) else {
                continue;
            };
            usage.packs.insert(
                id,
                PackUsage {
                    size: o.size,
                    modified: o.modified,
                    entries: Vec::new(),
                },
            );
        }
        let (packs, mut read, mut dangling) = (&mut usage.packs, 0, 0);
        let segments = for_each_index_segment(repo, |entries, len| {
            read += len;
            for e in entries {
                match packs.get_mut(&e.pack_id) {
                    Some(p) => p.entries.push(e.entry),
                    None => dangling += 1,
                }
            }
        })
        .await?;
        usage.objects_listed += segments;
        usage.bytes_read += read;
        usage.dangling_entries += dangling;
        for p in usage.packs.values_mut() {
            p.entries.sort_by_key(|e| e.block_id.0);
            p.entries.dedup_by_key(|e| e.block_id.0);
            p.entries.shrink_to_fit();
        }
        // Manifests as stored: inline blocks, and the ids of block lists (blocks too), whose
        // own blocks are marked below, each distinct list read once.
        let mut lists: BTreeSet<ContentId> = BTreeSet::new();
        for c in manifest::cluster_names(repo).await? {
            for id in manifest::list_ids(repo, &c).await? {
                let m = manifest::load_unexpanded(repo, &c, &id).await?;
                usage.manifests += 1;
                usage.holders.add_referenced(
                    m.files
                        .iter()
                        .flat_map(|f| {
                            f.blocks
                                .iter()
                                .filter_map(|b| b.0)
                                .chain(f.patches.iter().map(|p| p.delta))
                                .chain(f.block_lists.iter().copied())
                        })
                        .collect(),
                );
                lists.extend(m.files.iter().flat_map(|f| f.block_lists.iter().copied()));
            }
        }
        usage
            .mark_listed_blocks(repo, lists.into_iter().collect())
            .await?;
        Ok(usage)
    }

    /// Marks the blocks named in block lists `lists` (distinct ids), reading each list once
    /// with the block index loaded for the lists alone: gc's memory holds no full index.
    async fn mark_listed_blocks(&mut self, repo: &Repository, lists: Vec<ContentId>) -> Result<()> {
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
            self.holders
                .add_referenced(runs.iter().flat_map(|r| r.referenced()).collect());
        }
        Ok(())
    }

    /// True if a retained backup references the block.
    pub fn is_referenced(&self, id: &ContentId) -> bool {
        self.holders.position(id).is_some()
    }

    /// Distinct referenced blocks.
    pub fn referenced_blocks(&self) -> usize {
        self.holders.len()
    }

    /// Index entries over all packs.
    pub fn indexed_entries(&self) -> usize {
        self.packs.values().map(|p| p.entries.len()).sum()
    }

    /// Sealed bytes of the referenced blocks `pack` holds.
    pub fn referenced_bytes(&self, pack: &PackId) -> u64 {
        self.packs.get(pack).map_or(0, |p| {
            p.entries
                .iter()
                .filter(|e| self.is_referenced(&e.block_id))
                .map(|e| u64::from(e.sealed_len))
                .sum()
        })
    }

    /// Sealed bytes of the blocks `pack` holds that no backup references: what a repack of it
    /// would reclaim (its header and trailer aside). Zero means copying it gains nothing.
    pub fn unreferenced_bytes(&self, pack: &PackId) -> u64 {
        self.packs.get(pack).map_or(0, |p| {
            p.entries
                .iter()
                .filter(|e| !self.is_referenced(&e.block_id))
                .map(|e| u64::from(e.sealed_len))
                .sum()
        })
    }

    /// Counts holders: every existing pack not in `condemned`.
    pub fn count_holders(&mut self, condemned: &HashSet<PackId>) {
        self.holders.reset();
        for (id, p) in &self.packs {
            if condemned.contains(id) {
                continue;
            }
            for e in &p.entries {
                if let Some(c) = self.holders.get_mut(&e.block_id) {
                    *c += 1;
                }
            }
        }
    }

    /// Referenced blocks in `pack` that no holder other than `pack` has (with `pack` counted as
    /// a holder, these are its blocks with exactly one holder).
    pub fn sole_copies(&self, pack: &PackId) -> Vec<PackEntry> {
        self.packs.get(pack).map_or_else(Vec::new, |p| {
            p.entries
                .iter()
                .filter(|e| self.holders.get(&e.block_id) == Some(1))
                .copied()
                .collect()
        })
    }

    /// For a condemned pack (not counted as a holder): true if it holds a referenced block
    /// that has no holder at all, so it must be reprieved.
    pub fn needed_while_condemned(&self, pack: &PackId) -> bool {
        self.packs.get(pack).is_some_and(|p| {
            p.entries
                .iter()
                .any(|e| self.holders.get(&e.block_id) == Some(0))
        })
    }

    /// Adds `pack` as a holder of its blocks (after a reprieve, or a new pack from a repack).
    pub fn add_holder(&mut self, pack: &PackId) {
        if let Some(p) = self.packs.get(pack) {
            for e in &p.entries {
                if let Some(c) = self.holders.get_mut(&e.block_id) {
                    *c += 1;
                }
            }
        }
    }

    /// Records a pack written by this run (a repack).
    pub fn add_pack(&mut self, id: PackId, size: u64, entries: Vec<PackEntry>) {
        self.packs.insert(
            id,
            PackUsage {
                size,
                modified: None,
                entries,
            },
        );
        self.add_holder(&id);
    }

    /// Condemns `pack` (a holder until now) if every referenced block it holds has another
    /// holder; updates the counts. False, and nothing changes, otherwise.
    pub fn try_condemn(&mut self, pack: &PackId) -> bool {
        let Some(p) = self.packs.get(pack) else {
            return false;
        };
        if p.entries
            .iter()
            .any(|e| self.holders.get(&e.block_id).is_some_and(|c| c < 2))
        {
            return false;
        }
        for e in &p.entries {
            if let Some(c) = self.holders.get_mut(&e.block_id) {
                *c -= 1;
            }
        }
        true
    }

    /// Pack space: total, referenced (each block once), reclaimable.
    pub fn space(&self) -> SpaceSummary {
        let mut seen = self.holders.seen_marks();
        let mut s = SpaceSummary {
            packs: self.packs.len(),
            ..Default::default()
        };
        for p in self.packs.values() {
            s.pack_bytes += p.size;
            for e in &p.entries {
                let Some(i) = self.holders.position(&e.block_id) else {
                    continue;
                };
                let (word, bit) = (i / 64, 1u64 << (i % 64));
                if seen[word] & bit == 0 {
                    seen[word] |= bit;
                    s.referenced_bytes += u64::from(e.sealed_len);
                }
            }
        }
        s.reclaimable_bytes = s.pack_bytes.saturating_sub(s.referenced_bytes);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: u8) -> PackEntry {
        PackEntry {
            block_id: ContentId([b; 32]),
            offset: 0,
            sealed_len: 100,
            raw_len: 100,
        }
    }

    fn usage(packs: &[(u8, &[u8])], referenced: &[u8]) -> RepoUsage {
        let mut u = RepoUsage::default();
        for (id, blocks) in packs {
            u.packs.insert(
                PackId::new([*id; 32]),
                PackUsage {
                    size: 1000,
                    modified: Some(0),
                    entries: blocks.iter().map(|b| entry(*b)).collect(),
                },
            );
        }
        u.holders
            .add_referenced(referenced.iter().map(|b| ContentId([*b; 32])).collect());
        u.count_holders(&HashSet::new());
        u
    }

    #[test]
    fn two_copies_of_a_block_are_never_both_condemned() {
        let mut u = usage(&[(1, &[7, 8]), (2, &[7])], &[7]);
        assert!(
            u.try_condemn(&PackId::new([1; 32])),
            "block 7 is also in pack 2"
        );
        assert!(
            !u.try_condemn(&PackId::new([2; 32])),
            "pack 2 now holds the only copy"
        );
        assert_eq!(u.sole_copies(&PackId::new([2; 32])), vec![entry(7)]);
    }

    #[test]
    fn a_condemned_pack_holding_the_only_copy_is_needed() {
        let mut u = usage(&[(1, &[7]), (2, &[9])], &[7]);
        u.count_holders(&HashSet::from([PackId::new([1; 32])]));
        assert!(u.needed_while_condemned(&PackId::new([1; 32])));
        u.add_holder(&PackId::new([1; 32]));
        assert!(!u.needed_while_condemned(&PackId::new([1; 32])));
        assert!(
            u.try_condemn(&PackId::new([2; 32])),
            "pack 2 holds nothing referenced"
        );
    }

    #[test]
    fn space_counts_each_referenced_block_once() {
        let u = usage(&[(1, &[7, 8]), (2, &[7])], &[7]);
        let s = u.space();
        assert_eq!(s.pack_bytes, 2000);
        assert_eq!(s.referenced_bytes, 100);
        assert_eq!(s.reclaimable_bytes, 1900);
        assert_eq!(u.referenced_bytes(&PackId::new([1; 32])), 100);
    }
}
