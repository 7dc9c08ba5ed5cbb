//! BLAKE3 computed part by part, so each part can be hashed on the thread that also
//! compresses (or restores) it, in any order.
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
//!
//! A restore does the same with plain BLAKE3 and its block size as the part: each block's
//! chaining value is computed where the block is opened and written, and the merged hash is
//! compared with the file's checksum in the manifest, so the file is checked without being
//! read back from disk.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartHash {
    /// The input is one part: this is its hash.
    Whole([u8; 32]),
    /// One part of several.
    Subtree(ChainingValue),
}

/// BLAKE3 (plain or keyed) of an input hashed in parts of `part_len` bytes: each part at its
/// own time and place (a thread, out of order), the results merged at the end. Restores use
/// it with their block size to check each whole file without reading it back.
impl PartHash {
    /// The first 8 bytes of the part's hash: tells changed parts from unchanged ones.
    pub fn fingerprint(&self) -> u64 {
        let bytes = match self {
            PartHash::Whole(h) => h,
            PartHash::Subtree(cv) => cv,
        };
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
    }
}

#[derive(Clone, Copy)]
pub struct PartedHash<'k> {
    key: Option<&'k [u8; 32]>,
    part_len: usize,
}

impl std::fmt::Debug for PartedHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("PartedHash")
            .field("keyed", &self.key.is_some())
            .field("part_len", &self.part_len)
            .finish()
    }
}

impl<'k> PartedHash<'k> {
    /// Keyed BLAKE3 (content ids) in parts of `part_len` bytes. `None` unless `part_len` is a
    /// power of two of at least one BLAKE3 chunk (1 KiB): only then is every part a subtree.
    pub fn keyed(key: &'k [u8; 32], part_len: usize) -> Option<Self> {
        Self::valid(part_len).then_some(PartedHash {
            key: Some(key),
            part_len,
        })
    }

    /// Plain BLAKE3 (the files' checksums in manifests) in parts of `part_len` bytes; `None`
    /// as for [`PartedHash::keyed`].
    pub fn plain(part_len: usize) -> Option<PartedHash<'static>> {
        Self::valid(part_len).then_some(PartedHash {
            key: None,
            part_len,
        })
    }

    fn valid(part_len: usize) -> bool {
        part_len.is_power_of_two() && part_len >= blake3::CHUNK_LEN
    }

    fn mode(&self) -> Mode<'k> {
        match self.key {
            Some(k) => Mode::KeyedHash(k),
            None => Mode::Hash,
        }
    }

    fn hasher(&self) -> blake3::Hasher {
        match self.key {
            Some(k) => blake3::Hasher::new_keyed(k),
            None => blake3::Hasher::new(),
        }
    }

    /// Hashes part `index` (`part` = `input[index * part_len..]`, at most `part_len` bytes) of
    /// an input of `total_len` bytes.
    pub fn part(&self, total_len: u64, index: usize, part: &[u8]) -> PartHash {
        let mut h = self.hasher();
        if total_len <= self.part_len as u64 {
            h.update(part);
            return PartHash::Whole(*h.finalize().as_bytes());
        }
        h.set_input_offset(index as u64 * self.part_len as u64);
        h.update(part);
        PartHash::Subtree(h.finalize_non_root())
    }

    /// Merges the part hashes of an input of `total_len` bytes (one per part, in order) into
    /// its hash. `None` if there is not exactly one hash per part.
    pub fn merge(&self, total_len: u64, parts: &[PartHash]) -> Option<[u8; 32]> {
        if let [PartHash::Whole(h)] = parts {
            return (total_len <= self.part_len as u64).then_some(*h);
        }
        if parts.len() as u64 != total_len.div_ceil(self.part_len as u64) {
            return None;
        }
        let cvs: Vec<ChainingValue> = parts
            .iter()
            .map(|p| match p {
                PartHash::Subtree(cv) => Some(*cv),
                PartHash::Whole(_) => None,
            })
            .collect::<Option<_>>()?;
        let mode = self.mode();
        let left = left_subtree_len(total_len);
        let (l, r) = cvs.split_at((left / self.part_len as u64) as usize);
        let root = merge_subtrees_root(
            &self.subtree(left, l),
            &self.subtree(total_len - left, r),
            mode,
        );
        Some(*root.as_bytes())
    }

    /// The chaining value of the subtree of `len` bytes whose parts' values are `cvs`.
    fn subtree(&self, len: u64, cvs: &[ChainingValue]) -> ChainingValue {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let left = left_subtree_len(len);
        let (l, r) = cvs.split_at((left / self.part_len as u64) as usize);
        merge_subtrees_non_root(
            &self.subtree(left, l),
            &self.subtree(len - left, r),
            self.mode(),
        )
    }
}

/// Hashes part `index` (`part` = `data[index * PART_LEN..]`, at most `PART_LEN` bytes) of an
/// input of `total_len` bytes, keyed (content ids of sealed objects).
pub fn hash_part(key: &[u8; 32], total_len: usize, index: usize, part: &[u8]) -> PartHash {
    keyed_parts(key).part(total_len as u64, index, part)
}

/// Merges the part hashes of an input of `total_len` bytes into its keyed hash.
pub fn merge(key: &[u8; 32], total_len: usize, parts: &[PartHash]) -> ContentId {
    ContentId(
        keyed_parts(key)
            .merge(total_len as u64, parts)
            .expect("one hash per part"),
    )
}

fn keyed_parts(key: &[u8; 32]) -> PartedHash<'_> {
    PartedHash::keyed(key, PART_LEN).expect("PART_LEN is a power of two")
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
    fn plain_hash_in_block_sized_parts_out_of_order_equals_the_one_shot_hash() {
        let data: Vec<u8> = (0..(9 * 65536 + 8192) as u32)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        let parted = PartedHash::plain(65536).unwrap();
        for len in [
            0,
            8192,
            65536,
            65536 + 8192,
            2 * 65536,
            3 * 65536,
            8 * 65536,
            9 * 65536 + 8192,
        ] {
            let input = &data[..len];
            let n = input.len().div_ceil(65536).max(1);
            // Hashed last part first, as a restore's runs may finish.
            let mut parts = vec![None; n];
            for i in (0..n).rev() {
                let part = &input[(i * 65536).min(len)..((i + 1) * 65536).min(len)];
                parts[i] = Some(parted.part(len as u64, i, part));
            }
            let parts: Vec<PartHash> = parts.into_iter().map(Option::unwrap).collect();
            assert_eq!(
                parted.merge(len as u64, &parts),
                Some(*blake3::hash(input).as_bytes()),
                "length {len}"
            );
        }
        // A missing part is refused, not merged into some other hash.
        let three = &data[..3 * 65536];
        let two: Vec<PartHash> = (0..2)
            .map(|i| parted.part(3 * 65536, i, &three[i * 65536..(i + 1) * 65536]))
            .collect();
        assert_eq!(parted.merge(3 * 65536, &two), None);
        assert!(PartedHash::plain(3000).is_none() && PartedHash::plain(512).is_none());
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
