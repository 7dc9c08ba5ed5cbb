//! Keyed BLAKE3 computed part by part, so each part can be hashed on the thread that also
//! compresses it.
//!
//! Why: a 16 MiB WAL segment is sealed on every core in [`PART_LEN`] parts. Hashing the whole
//! segment as one task next to the compression tasks left one core waiting at the end; hashing
//! each part where it is compressed keeps the work even and reads every byte from memory once.
//!
//! BLAKE3 is a tree of 1 KiB chunks. A part of `PART_LEN` bytes (a power of two) that starts at
//! a multiple of `PART_LEN` is a complete subtree, and so is the shorter last part, because
//! every split BLAKE3 makes above that size (the largest power of two below the length) falls
//! on a part boundary. The chaining values of the parts are merged the way BLAKE3 splits, so
//! the result is exactly `blake3::keyed_hash` of the whole input; the tests check that.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::crypto::ContentId;

/// Size of the parts sealed in parallel: a power of two (a BLAKE3 subtree), large enough that
/// independent zstd frames cost about 0.5% in size on real WAL, small enough that two cores
/// share a 16 MiB segment evenly.
pub const PART_LEN: usize = 1 << 20;

/// The hash state of one part: the finished hash when the input is a single part, otherwise
/// the part's chaining value.
#[derive(Debug, Clone, Copy)]
pub enum PartHash {
    /// The input is one part: this is its keyed hash.
    Whole(ContentId),
    /// One part of several.
    Subtree(ChainingValue),
}

/// Hashes part `index` (`part` = `data[index * PART_LEN..]`, at most `PART_LEN` bytes) of an
/// input of `total_len` bytes.
pub fn hash_part(key: &[u8; 32], total_len: usize, index: usize, part: &[u8]) -> PartHash {
    if total_len <= PART_LEN {
        return PartHash::Whole(ContentId(*blake3::keyed_hash(key, part).as_bytes()));
    }
    let mut h = blake3::Hasher::new_keyed(key);
    h.set_input_offset((index * PART_LEN) as u64);
    h.update(part);
    PartHash::Subtree(h.finalize_non_root())
}

/// Merges the part hashes of an input of `total_len` bytes into its keyed hash.
pub fn merge(key: &[u8; 32], total_len: usize, parts: &[PartHash]) -> ContentId {
    if let [PartHash::Whole(id)] = parts {
        return *id;
    }
    let cvs: Vec<ChainingValue> = parts
        .iter()
        .map(|p| match p {
            PartHash::Subtree(cv) => *cv,
            PartHash::Whole(_) => unreachable!("a whole hash only when the input is one part"),
        })
        .collect();
    assert_eq!(cvs.len(), total_len.div_ceil(PART_LEN), "one hash per part");
    let mode = Mode::KeyedHash(key);
    let left = left_subtree_len(total_len as u64) as usize;
    let (l, r) = cvs.split_at(left / PART_LEN);
    let root = merge_subtrees_root(
        &subtree(mode, left, l),
        &subtree(mode, total_len - left, r),
        mode,
    );
    ContentId(*root.as_bytes())
}

/// The chaining value of the subtree of `len` bytes whose parts' values are `cvs`.
fn subtree(mode: Mode, len: usize, cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len as u64) as usize;
    let (l, r) = cvs.split_at(left / PART_LEN);
    merge_subtrees_non_root(&subtree(mode, left, l), &subtree(mode, len - left, r), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_parts(key: &[u8; 32], data: &[u8]) -> ContentId {
        let parts: Vec<PartHash> = data
            .chunks(PART_LEN)
            .enumerate()
            .map(|(i, p)| hash_part(key, data.len(), i, p))
            .collect();
        if data.is_empty() {
            return merge(key, 0, &[hash_part(key, 0, 0, data)]);
        }
        merge(key, data.len(), &parts)
    }

    #[test]
    fn equals_the_one_shot_keyed_hash_for_awkward_lengths() {
        let key = [7u8; 32];
        let data: Vec<u8> = (0..(5 * PART_LEN + 3000) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0,
            1,
            1024,
            PART_LEN - 1,
            PART_LEN,
            PART_LEN + 1,
            2 * PART_LEN,
            2 * PART_LEN + 1025,
            3 * PART_LEN,
            4 * PART_LEN,
            4 * PART_LEN + 1,
            5 * PART_LEN + 3000,
        ] {
            assert_eq!(
                by_parts(&key, &data[..len]),
                ContentId(*blake3::keyed_hash(&key, &data[..len]).as_bytes()),
                "length {len}"
            );
        }
    }

    #[test]
    fn sixteen_mebibyte_segment_matches() {
        let key = [1u8; 32];
        let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        assert_eq!(
            by_parts(&key, &data),
            ContentId(*blake3::keyed_hash(&key, &data).as_bytes())
        );
    }
}
