//! Referenced blocks and how many packs hold each: the mark's per-block state.
//!
//! In memory: the ids sorted, looked up by binary search, and the counts in a vector beside
//! them at each id's rank, 36 bytes per distinct referenced block (a hash map of the same cost
//! about 45 to 90 bytes per block depending on its fill, and twice that while it grew). The
//! ids are the vector the mark collected them in, kept as they are: copying them into (id,
//! count) pairs held both, 68 bytes per block, at the mark's peak. Past gc's `--index-memory`
//! budget: the ids in a sorted table on local disk ([`IdTable`], a quarter of a byte per block
//! in memory, one page read per lookup) and the counts in a file beside it, one `u32` per
//! block at the id's rank. Both answer the same questions; gc's decisions do not depend on
//! which one holds the counts.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::crypto::ContentId;
use crate::error::Result;
use crate::store::block_table::{read_error, spill_error, temp_file, IdTable, Ids};

/// Referenced block → number of holders.
#[derive(Debug)]
pub enum Holders {
    /// Ids sorted, and the count of each at its rank.
    Memory {
        /// Sorted, distinct.
        ids: Vec<ContentId>,
        /// One per id.
        counts: Vec<u32>,
    },
    /// Ids on disk, counts on disk at each id's rank.
    Table { ids: IdTable, counts: File },
}

impl Default for Holders {
    fn default() -> Self {
        Holders::Memory {
            ids: Vec::new(),
            counts: Vec::new(),
        }
    }
}

impl Holders {
    /// The referenced blocks (sorted, distinct), each with no holder yet.
    pub fn new(ids: Ids) -> Result<Self> {
        Ok(match ids {
            Ids::Memory(ids) => Holders::Memory {
                counts: vec![0; ids.len()],
                ids,
            },
            Ids::Table(ids) => {
                let counts = temp_file(&std::env::temp_dir())?;
                counts.set_len(ids.records() * 4).map_err(spill_error)?;
                Holders::Table { ids, counts }
            }
        })
    }

    /// Where `id` is, if referenced (an index for [`Holders::seen_marks`]).
    pub fn position(&self, id: &ContentId) -> Result<Option<usize>> {
        Ok(match self {
            Holders::Memory { ids, .. } => ids.binary_search(id).ok(),
            Holders::Table { ids, .. } => ids.position(id)?.map(|n| n as usize),
        })
    }

    /// The holder count of a referenced block.
    pub fn get(&self, id: &ContentId) -> Result<Option<u32>> {
        match self.position(id)? {
            Some(at) => self.count_at(at).map(Some),
            None => Ok(None),
        }
    }

    /// Adds `delta` to the holder count of `id`, if referenced.
    pub fn add(&mut self, id: &ContentId, delta: i32) -> Result<()> {
        let Some(at) = self.position(id)? else {
            return Ok(());
        };
        let now = self
            .count_at(at)?
            .checked_add_signed(delta)
            .expect("a holder count never goes below zero: only a counted holder is taken away");
        match self {
            Holders::Memory { counts, .. } => counts[at] = now,
            Holders::Table { counts, .. } => counts
                .write_all_at(&now.to_le_bytes(), at as u64 * 4)
                .map_err(spill_error)?,
        }
        Ok(())
    }

    fn count_at(&self, at: usize) -> Result<u32> {
        Ok(match self {
            Holders::Memory { counts, .. } => counts[at],
            Holders::Table { counts, .. } => {
                let mut b = [0u8; 4];
                counts
                    .read_exact_at(&mut b, at as u64 * 4)
                    .map_err(read_error)?;
                u32::from_le_bytes(b)
            }
        })
    }

    /// Sets every count to zero.
    pub fn reset(&mut self) -> Result<()> {
        match self {
            Holders::Memory { counts, .. } => counts.fill(0),
            Holders::Table { ids, counts } => {
                counts.set_len(0).map_err(spill_error)?;
                counts.set_len(ids.records() * 4).map_err(spill_error)?;
            }
        }
        Ok(())
    }

    /// Distinct referenced blocks.
    pub fn len(&self) -> usize {
        match self {
            Holders::Memory { ids, .. } => ids.len(),
            Holders::Table { ids, .. } => ids.records() as usize,
        }
    }

    /// Whether the counts are on local disk.
    pub fn on_disk(&self) -> bool {
        matches!(self, Holders::Table { .. })
    }

    /// One bit per referenced block, all clear: for counting each block once. In memory with
    /// the counts, else in a file beside them.
    pub fn seen_marks(&self) -> Result<SeenMarks> {
        Ok(match self {
            Holders::Memory { ids, .. } => SeenMarks::Memory(vec![0; ids.len().div_ceil(64)]),
            Holders::Table { ids, .. } => {
                let file = temp_file(&std::env::temp_dir())?;
                file.set_len(ids.records().div_ceil(8))
                    .map_err(spill_error)?;
                SeenMarks::Disk(file)
            }
        })
    }
}

/// One bit per referenced block, by its [`Holders::position`].
#[derive(Debug)]
pub enum SeenMarks {
    /// 64 blocks per word.
    Memory(Vec<u64>),
    /// 8 blocks per byte of a file.
    Disk(File),
}

impl SeenMarks {
    /// Whether block `at` is marked.
    pub fn is_marked(&self, at: usize) -> Result<bool> {
        Ok(match self {
            SeenMarks::Memory(words) => words[at / 64] & (1u64 << (at % 64)) != 0,
            SeenMarks::Disk(file) => {
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, (at / 8) as u64)
                    .map_err(read_error)?;
                b[0] & (1u8 << (at % 8)) != 0
            }
        })
    }

    /// Marks block `at`; true if it was not marked yet.
    pub fn mark(&mut self, at: usize) -> Result<bool> {
        match self {
            SeenMarks::Memory(words) => {
                let (word, bit) = (at / 64, 1u64 << (at % 64));
                let fresh = words[word] & bit == 0;
                words[word] |= bit;
                Ok(fresh)
            }
            SeenMarks::Disk(file) => {
                let (byte, bit) = ((at / 8) as u64, 1u8 << (at % 8));
                let mut b = [0u8; 1];
                file.read_exact_at(&mut b, byte).map_err(read_error)?;
                if b[0] & bit != 0 {
                    return Ok(false);
                }
                b[0] |= bit;
                file.write_all_at(&b, byte).map_err(spill_error)?;
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::block_table::WantedIds;

    fn id(n: u32) -> ContentId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.wrapping_mul(2654435761).to_be_bytes());
        ContentId(b)
    }

    /// The ids 0, 2, 4, ... 198, pushed with repeats and out of order, in memory or on disk.
    fn holders(in_memory: usize) -> Holders {
        let mut w = WantedIds::new(in_memory, 1024);
        for n in (0..200).step_by(2).rev().chain((0..40).step_by(2)) {
            w.push(id(n)).unwrap();
        }
        Holders::new(w.finish_ids().unwrap()).unwrap()
    }

    #[test]
    fn counts_answer_the_same_in_memory_and_on_disk() {
        for (in_memory, on_disk) in [(usize::MAX, false), (0, true)] {
            let mut h = holders(in_memory);
            assert_eq!(h.on_disk(), on_disk);
            assert_eq!(h.len(), 100, "one entry per distinct block");
            h.add(&id(4), 3).unwrap();
            h.add(&id(4), -1).unwrap();
            h.add(&id(5), 1).unwrap(); // not referenced: nothing
            assert_eq!(h.get(&id(4)).unwrap(), Some(2), "on disk: {on_disk}");
            assert_eq!(h.get(&id(6)).unwrap(), Some(0));
            assert_eq!(h.get(&id(5)).unwrap(), None);
            assert_eq!(h.get(&id(200)).unwrap(), None);
            let positions: Vec<usize> = (0..200)
                .step_by(2)
                .map(|n| h.position(&id(n)).unwrap().unwrap())
                .collect();
            let mut sorted = positions.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted,
                (0..100).collect::<Vec<_>>(),
                "ranks 0..len, each once"
            );
            h.reset().unwrap();
            assert_eq!(h.get(&id(4)).unwrap(), Some(0));
            let mut seen = h.seen_marks().unwrap();
            assert!(seen.mark(99).unwrap() && seen.mark(64).unwrap() && seen.mark(0).unwrap());
            assert!(!seen.mark(99).unwrap() && !seen.mark(64).unwrap() && !seen.mark(0).unwrap());
            assert!(seen.mark(63).unwrap(), "a neighbour is not marked with it");
            assert!(seen.is_marked(64).unwrap() && !seen.is_marked(65).unwrap());
        }
    }
}
