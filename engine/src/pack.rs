//! Pack objects: many sealed blocks in one object, with an encrypted trailer.
//!
//! ```text
//! pack  = sealed block 1 || ... || sealed block n || sealed trailer || trailer_len u32 LE || "PGCAPAK1"
//! trailer (plaintext) = count u32 LE, then per block:
//!         block id (32) || offset u64 LE || sealed length u32 LE || raw length u32 LE
//! ```
//!
//! Every block is sealed on its own ([`crate::codec`], kind `Block`, AAD binding its block id),
//! so a restore fetches one block with a range read, and repacking copies ciphertext without
//! decrypting. The trailer is sealed with the metadata key (kind `PackTrailer`) so a pack lists
//! its contents without the index, which is how a lost index is rebuilt. Its authenticated
//! data binds the BLAKE3 hash of the blocks before it, so a trailer moved onto other blocks
//! (another pack's, or a pack spliced together) fails authentication instead of describing
//! blocks it was not written for.
//!
//! A pack's name is the unkeyed BLAKE3 hash of its bytes, so anyone holding only the
//! repository (no keys) can check a pack is intact, and a duplicate upload is detectable
//! by name alone.

use crate::codec::{Codec, CodecError, ObjectKind};
use crate::crypto::ContentId;

/// Target size of a pack before it is closed (about 32 MiB).
pub const TARGET_PACK_SIZE: usize = 32 << 20;
/// A pack's buffer is reserved whole on its first block: the target, a last block past it,
/// and the trailer. Grown by doubling instead, it was copied a dozen times per pack and its
/// last doubling reserved 64 MiB (54 MB of heap at the peak of a profiled full backup).
/// Reserved whole it is one mapping, returned to the system when the pack is uploaded.
const PACK_CAPACITY: usize = TARGET_PACK_SIZE + (4 << 20);
const PACK_MAGIC: &[u8; 8] = b"PGCAPAK1";
const ENTRY_LEN: usize = 32 + 8 + 4 + 4;
const TRAILER_CONTEXT: &[u8] = b"pack-trailer";

/// Where a block lives inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// Keyed BLAKE3 id of the block's plaintext.
    pub block_id: ContentId,
    /// Offset of the sealed block.
    pub offset: u64,
    /// Length of the sealed block.
    pub sealed_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

/// Accumulates sealed blocks into one pack.
#[derive(Debug, Default)]
pub struct PackWriter {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub struct FinishedPack {
    /// Unkeyed BLAKE3 of `bytes`: the pack's name.
    pub pack_id: blake3::Hash,
    /// The object's bytes.
    pub bytes: Vec<u8>,
    /// What it contains.
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an already sealed block.
    pub fn push_sealed(&mut self, block_id: ContentId, sealed: &[u8], raw_len: u32) -> PackEntry {
        let entry = PackEntry {
            block_id,
            offset: self.buf.len() as u64,
            sealed_len: sealed.len() as u32,
            raw_len,
        };
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(PACK_CAPACITY);
        }
        self.buf.extend_from_slice(sealed);
        self.entries.push(entry);
        entry
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no block was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True once the pack reached its target size.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= TARGET_PACK_SIZE
    }

    /// Seals the trailer and returns the pack.
    pub fn finish(mut self, codec: &Codec) -> FinishedPack {
        let mut trailer = Vec::with_capacity(4 + self.entries.len() * ENTRY_LEN);
        trailer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            trailer.extend_from_slice(&e.block_id.0);
            trailer.extend_from_slice(&e.offset.to_le_bytes());
            trailer.extend_from_slice(&e.sealed_len.to_le_bytes());
            trailer.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let blocks_hash = ContentId(*blake3::hash(&self.buf).as_bytes());
        let sealed = codec.seal(
            ObjectKind::PackTrailer,
            &blocks_hash,
            TRAILER_CONTEXT,
            &trailer,
            3,
        );
        self.buf.extend_from_slice(&sealed);
        self.buf
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PACK_MAGIC);
        FinishedPack {
            pack_id: blake3::hash(&self.buf),
            bytes: self.buf,
            entries: self.entries,
        }
    }
}

/// Bytes at the end of a pack that locate its trailer.
pub const FOOTER_LEN: usize = 4 + PACK_MAGIC.len();

/// Reads the trailer length from the last [`FOOTER_LEN`] bytes of a pack.
pub fn trailer_len(footer: &[u8]) -> Result<usize, CodecError> {
    if footer.len() != FOOTER_LEN || &footer[4..] != PACK_MAGIC {
        return Err(CodecError::Malformed("pack footer missing".into()));
    }
    Ok(u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) as usize)
}

/// Opens and parses a sealed trailer; `blocks`: the pack's bytes before the trailer.
pub fn read_trailer(
    codec: &Codec,
    sealed_trailer: &[u8],
    blocks: &[u8],
) -> Result<Vec<PackEntry>, CodecError> {
    let plain = codec.open(
        ObjectKind::PackTrailer,
        &ContentId(*blake3::hash(blocks).as_bytes()),
        TRAILER_CONTEXT,
        sealed_trailer,
    )?;
    if plain.len() < 4 {
        return Err(CodecError::Malformed("pack trailer too short".into()));
    }
    let count = u32::from_le_bytes(plain[..4].try_into().expect("4 bytes")) as usize;
    if plain.len() != 4 + count * ENTRY_LEN {
        return Err(CodecError::Malformed(
            "pack trailer length does not match its count".into(),
        ));
    }
    Ok(plain[4..]
        .chunks_exact(ENTRY_LEN)
        .map(|c| PackEntry {
            block_id: ContentId(c[..32].try_into().expect("32 bytes")),
            offset: u64::from_le_bytes(c[32..40].try_into().expect("8 bytes")),
            sealed_len: u32::from_le_bytes(c[40..44].try_into().expect("4 bytes")),
            raw_len: u32::from_le_bytes(c[44..48].try_into().expect("4 bytes")),
        })
        .collect())
}

/// The sealed trailer of a whole pack held in memory (`None`: no valid footer).
pub fn sealed_trailer(pack: &[u8]) -> Option<&[u8]> {
    let end = pack.len().checked_sub(FOOTER_LEN)?;
    let tlen = trailer_len(&pack[end..]).ok()?;
    pack.get(end.checked_sub(tlen)?..end)
}

/// Reads every entry of a whole pack held in memory.
pub fn read_pack_entries(codec: &Codec, pack: &[u8]) -> Result<Vec<PackEntry>, CodecError> {
    if pack.len() < FOOTER_LEN {
        return Err(CodecError::Malformed("pack shorter than its footer".into()));
    }
    let tlen = trailer_len(&pack[pack.len() - FOOTER_LEN..])?;
    let end = pack.len() - FOOTER_LEN;
    let start = end
        .checked_sub(tlen)
        .ok_or_else(|| CodecError::Malformed("trailer longer than pack".into()))?;
    read_trailer(codec, &pack[start..end], &pack[..start])
}

/// Opens one block given its sealed bytes (from a range read of `entry`), and checks that the
/// plaintext's content id is the block's.
pub fn open_block(codec: &Codec, entry: &PackEntry, sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
    let plain = open_block_authenticated(codec, entry, sealed)?;
    if codec.content_id(&plain) != entry.block_id {
        return Err(CodecError::Authentication);
    }
    Ok(plain)
}

/// [`open_block_authenticated`] into `out`; returns the plaintext's length.
pub fn open_block_authenticated_into(
    codec: &Codec,
    entry: &PackEntry,
    sealed: &[u8],
    out: &mut [u8],
) -> Result<usize, CodecError> {
    codec.open_into(ObjectKind::Block, &entry.block_id, b"", sealed, out)
}

/// Opens one block without recomputing its content id: the envelope still authenticates it,
/// and binds the block id in its associated data, so only a holder of the repository's key
/// could have sealed other content under that id. For a caller that checks a hash covering
/// the plaintext anyway (a restore compares each whole file with its checksum), the second
/// BLAKE3 pass over every block would be spent twice.
pub fn open_block_authenticated(
    codec: &Codec,
    entry: &PackEntry,
    sealed: &[u8],
) -> Result<Vec<u8>, CodecError> {
    codec.open(ObjectKind::Block, &entry.block_id, b"", sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterSecret;

    #[test]
    fn blocks_round_trip_through_a_pack_by_range() {
        let codec = Codec::new("r", MasterSecret::generate().derive(), true, 1);
        let mut w = PackWriter::new();
        let blocks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 65536]).collect();
        for b in &blocks {
            let id = codec.content_id(b);
            let sealed = codec.seal(ObjectKind::Block, &id, b"", b, 3);
            w.push_sealed(id, &sealed, b.len() as u32);
        }
        let pack = w.finish(&codec);
        assert_eq!(pack.pack_id, blake3::hash(&pack.bytes));
        let entries = read_pack_entries(&codec, &pack.bytes).unwrap();
        assert_eq!(entries, pack.entries);
        for (e, b) in entries.iter().zip(&blocks) {
            let range = e.offset as usize..e.offset as usize + e.sealed_len as usize;
            assert_eq!(&open_block(&codec, e, &pack.bytes[range]).unwrap(), b);
        }
    }

    #[test]
    fn damaged_trailer_is_detected() {
        let codec = Codec::new("r", MasterSecret::generate().derive(), true, 1);
        let mut w = PackWriter::new();
        let id = codec.content_id(b"x");
        w.push_sealed(id, &codec.seal(ObjectKind::Block, &id, b"", b"x", 0), 1);
        let mut bytes = w.finish(&codec).bytes;
        let n = bytes.len();
        bytes[n - FOOTER_LEN - 3] ^= 1;
        assert_eq!(
            read_pack_entries(&codec, &bytes),
            Err(CodecError::Authentication)
        );
        bytes[n - FOOTER_LEN - 3] ^= 1;
        // Other blocks under the same trailer: the trailer does not describe them.
        bytes[3] ^= 1;
        assert_eq!(
            read_pack_entries(&codec, &bytes),
            Err(CodecError::Authentication)
        );
        bytes[n - 1] = b'X';
        assert!(matches!(
            read_pack_entries(&codec, &bytes),
            Err(CodecError::Malformed(_))
        ));
    }
}
