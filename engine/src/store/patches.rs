//! Changed blocks stored as patches: the parts of a block that changed since the reference
//! backup, applied to the block the reference stored.
//!
//! Why: PostgreSQL updates spread over a table (pgbench's uniform workload) change one or
//! two 8 KiB pages in most 64 KiB blocks, and an incremental stored each such block whole.
//! pgBackRest's block incremental stored a quarter less (1.24× ours at scale 50). Smaller
//! blocks would fix that but cost compression on every full backup (64 KiB blocks compress
//! a third better than 16 KiB ones on pgbench data) and four times the blocks in memory.
//! So blocks stay 64 KiB, and a changed block may be stored as a patch: the
//! [`PART_LEN`]-byte parts that differ from the reference's version, found by comparing
//! fingerprints of each part (the first 8 bytes of the part's keyed BLAKE3 chaining value,
//! computed while hashing the block for its id, see
//! [`crate::crypto::RepoKeys::content_id_parted`]), never by reading the old block back.
//!
//! Backups still stand alone. A patch is a block like any other, and a manifest references
//! both the patch and the block it applies to (the base), so gc keeps both and deleting any
//! backup leaves every other one whole. Patches never stack: the base is always a whole
//! block. A block whose reference version was itself a patch is patched against the same
//! base, with the parts that patch replaced plus those that changed since; once that is more
//! than half the block ([`worth_patching`]), the block is stored whole and becomes a base.
//!
//! A restore writes the base with the patch applied and checks the result against the
//! patched block's content id, as it checks every block: a lost, damaged or misapplied patch
//! is refused, never written silently.
//!
//! Only files recorded as block lists carry patches and fingerprints (the lists hold them,
//! see [`crate::store::block_lists`]); a file recorded block by block is small.

/// Bytes per part: a block's parts are compared one by one. 16 KiB, not PostgreSQL's 8 KiB
/// pages: hashing a 64 KiB block as four parts costs 7 % more than hashing it whole (eight
/// parts cost 50 % more: BLAKE3 then fills half of its SIMD lanes).
pub const PART_LEN: usize = 16 << 10;

/// What a patch block's plaintext starts with.
const MAGIC: &[u8; 5] = b"PGCP1";

/// Parts per block of `block_size` bytes, if blocks of that size can be patched (a whole
/// number of parts, from 2 to 64: the part mask is a `u64`).
pub fn parts(block_size: usize) -> Option<usize> {
    let n = block_size / PART_LEN;
    (block_size.is_multiple_of(PART_LEN) && (2..=64).contains(&n)).then_some(n)
}

/// Whether replacing the parts in `mask` is worth a patch rather than the whole block: at
/// most half of the block's `parts`.
pub fn worth_patching(mask: u64, parts: usize) -> bool {
    mask != 0 && (mask.count_ones() as usize) * 2 <= parts
}

/// The parts whose fingerprints differ (bit `i` for part `i`); every part if either side
/// has no fingerprints.
pub fn changed_parts(old: &[u64], new: &[u64]) -> u64 {
    if old.len() != new.len() || old.is_empty() || old.len() > 64 {
        return u64::MAX;
    }
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (a, b))| a != b || **a == 0)
        .fold(0, |m, (i, _)| m | 1 << i)
}

/// A patch's plaintext: [`MAGIC`], the mask (u64, little-endian), then the parts of `block`
/// the mask names, in order.
pub fn encode(block: &[u8], mask: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + mask.count_ones() as usize * PART_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&mask.to_le_bytes());
    for (i, part) in block.chunks(PART_LEN).enumerate() {
        if i < 64 && mask & (1 << i) != 0 {
            out.extend_from_slice(part);
        }
    }
    out
}

/// Applies a patch's plaintext to `block` (the base, whole) in place; `mask` is what the
/// manifest says it replaces. The error says what is wrong with the patch.
pub fn apply(block: &mut [u8], patch: &[u8], mask: u64) -> Result<(), String> {
    let rest = patch
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a patch (wrong magic)")?;
    let (recorded, mut rest) = rest.split_at_checked(8).ok_or("truncated mask")?;
    let recorded = u64::from_le_bytes(recorded.try_into().expect("8 bytes"));
    if recorded != mask {
        return Err(format!(
            "replaces parts {recorded:#x} where the manifest says {mask:#x}"
        ));
    }
    if !block.len().is_multiple_of(PART_LEN) || block.len() / PART_LEN > 64 {
        return Err(format!("cannot patch a block of {} bytes", block.len()));
    }
    let parts = block.len() / PART_LEN;
    if parts < 64 && mask >> parts != 0 {
        return Err(format!(
            "names parts past the block's {parts} (mask {mask:#x})"
        ));
    }
    for (i, part) in block.chunks_mut(PART_LEN).enumerate() {
        if mask & (1 << i) != 0 {
            let (new, after) = rest.split_at_checked(PART_LEN).ok_or("truncated part")?;
            part.copy_from_slice(new);
            rest = after;
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after its last part", rest.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seed: u8) -> Vec<u8> {
        (0..64 << 10)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect()
    }

    #[test]
    fn a_patch_turns_the_base_into_the_new_block() {
        let base = block(3);
        let mut new = base.clone();
        new[PART_LEN + 5] ^= 0xff;
        new[3 * PART_LEN] ^= 0x01;
        let mask = 0b1010;
        let patch = encode(&new, mask);
        assert_eq!(patch.len(), 13 + 2 * PART_LEN);
        let mut out = base.clone();
        apply(&mut out, &patch, mask).unwrap();
        assert_eq!(out, new);
    }

    #[test]
    fn damaged_or_mismatched_patches_are_refused() {
        let new = block(5);
        let patch = encode(&new, 0b1);
        let mut out = block(3);
        assert!(apply(&mut out, &patch, 0b10)
            .unwrap_err()
            .contains("manifest says"));
        assert!(apply(&mut out, &patch[..patch.len() - 1], 0b1)
            .unwrap_err()
            .contains("truncated"));
        let mut long = patch.clone();
        long.push(0);
        assert!(apply(&mut out, &long, 0b1)
            .unwrap_err()
            .contains("after its last"));
        assert!(apply(&mut out, b"PGCL1\0\0\0\0\0\0\0\0", 0)
            .unwrap_err()
            .contains("magic"));
        let past = encode(&new, 1 << 5);
        assert!(apply(&mut out, &past, 1 << 5).unwrap_err().contains("past"));
    }

    #[test]
    fn changed_parts_compares_fingerprints_and_trusts_no_unknown_one() {
        assert_eq!(changed_parts(&[1, 2, 3, 4], &[1, 9, 3, 4]), 0b10);
        assert_eq!(changed_parts(&[1, 0, 3, 4], &[1, 0, 3, 4]), 0b10);
        assert_eq!(changed_parts(&[], &[1, 2, 3, 4]), u64::MAX);
        assert!(worth_patching(0b11, 4));
        assert!(!worth_patching(0b111, 4));
        assert!(!worth_patching(0, 4));
        assert_eq!(parts(64 << 10), Some(4));
        assert_eq!(parts(16 << 10), None);
        assert_eq!(parts(24 << 10), None);
    }
}
