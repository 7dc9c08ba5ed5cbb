//! Referenced blocks and how many packs hold each: the mark's per-block state.
//!
//! One vector sorted by block id, 36 bytes per distinct referenced block (id and count), looked
//! up by binary search. A hash map of the same cost about 45 to 90 bytes per block depending
//! on its fill, and twice that while it grew. Each manifest's blocks are merged in place
//! (see [`crate::sorted`]).

use crate::crypto::ContentId;

/// Referenced block → number of holders.
#[derive(Debug, Default)]
pub struct Holders {
    entries: Vec<(ContentId, u32)>,
}

impl Holders {
    /// Adds referenced blocks (any order, repeats allowed), each with no holder yet.
    pub fn add_referenced(&mut self, mut ids: Vec<ContentId>) {
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| self.position(id).is_none());
        let fresh: Vec<(ContentId, u32)> = ids.into_iter().map(|id| (id, 0)).collect();
        crate::sorted::merge_into(&mut self.entries, &fresh, |e| e.0);
    }

    /// Where `id` is, if referenced (an index for [`Holders::seen_marks`]).
    pub fn position(&self, id: &ContentId) -> Option<usize> {
        self.entries.binary_search_by(|e| e.0.cmp(id)).ok()
    }

    /// The holder count of a referenced block.
    pub fn get(&self, id: &ContentId) -> Option<u32> {
        self.position(id).map(|i| self.entries[i].1)
    }

    /// The holder count of a referenced block, to update.
    pub fn get_mut(&mut self, id: &ContentId) -> Option<&mut u32> {
        self.position(id).map(|i| &mut self.entries[i].1)
    }

    /// Sets every count to zero.
    pub fn reset(&mut self) {
        self.entries.iter_mut().for_each(|e| e.1 = 0);
    }

    /// Distinct referenced blocks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// One bit per referenced block, all clear: for counting each block once.
    pub fn seen_marks(&self) -> Vec<u64> {
        vec![0; self.entries.len().div_ceil(64)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_keep_one_sorted_entry_per_block_and_its_count() {
        let id = |n: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&n.wrapping_mul(2654435761).to_be_bytes());
            ContentId(b)
        };
        let mut h = Holders::default();
        h.add_referenced((0..100).step_by(2).map(id).collect());
        *h.get_mut(&id(4)).unwrap() = 3;
        // Repeats, blocks already present and new ones interleaved, out of order.
        let mut more: Vec<ContentId> = (0..100).rev().map(id).collect();
        more.extend((0..10).map(id));
        h.add_referenced(more);
        assert_eq!(h.len(), 100);
        assert!(
            h.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
        assert_eq!(h.get(&id(4)), Some(3), "a count survives a merge");
        assert_eq!(h.get(&id(5)), Some(0));
        assert_eq!(h.get(&id(100)), None);
        h.reset();
        assert_eq!(h.get(&id(4)), Some(0));
        assert_eq!(h.seen_marks().len(), 2);
    }
}
