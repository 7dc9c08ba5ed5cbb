//! Index segments: which pack holds which block.
//!
//! An index segment is one sealed object (kind `Index`, metadata key) whose plaintext is a
//! sequence of fixed 80-byte entries:
//! `block id (32) || pack id (32) || offset u64 LE || sealed length u32 LE || raw length u32 LE`.
//! Segments are immutable and named `index/<keyed content id of the plaintext>`; that id is
//! part of the segment's authenticated data, so a segment renamed (or copied under another
//! segment's name) fails authentication instead of being read as that segment. The index is
//! the union of all segments. A backup writes its packs first, then the index segments naming
//! them, then its manifest: a crash leaves packs without index (garbage that GC removes, or
//! that the pack trailers can re-index), never an index entry without its pack.
//!
//! Memory: a reader holding the whole index pays 80 bytes per distinct block (plus map
//! overhead); at 64 KiB blocks that is about 1.3 MB per GiB of unique data.

use crate::codec::{Codec, CodecError, ObjectKind};
use crate::crypto::ContentId;
use crate::pack::PackEntry;
use crate::store::ids::{IndexSegmentId, PackId};

const ENTRY_LEN: usize = 80;
pub(crate) const CONTEXT: &[u8] = b"index-segment";

/// One block's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Unkeyed BLAKE3 hash naming the pack.
    pub pack_id: PackId,
    /// Where the block is in that pack.
    pub entry: PackEntry,
}

/// Serialises and seals an index segment; returns its id (its name, see
/// [`crate::repo::layout::index_segment`]) and its bytes.
pub fn seal_segment(codec: &Codec, entries: &[IndexEntry]) -> (IndexSegmentId, Vec<u8>) {
    let mut plain = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        plain.extend_from_slice(&e.entry.block_id.0);
        plain.extend_from_slice(e.pack_id.as_bytes());
        plain.extend_from_slice(&e.entry.offset.to_le_bytes());
        plain.extend_from_slice(&e.entry.sealed_len.to_le_bytes());
        plain.extend_from_slice(&e.entry.raw_len.to_le_bytes());
    }
    let id = codec.content_id(&plain);
    (
        IndexSegmentId::new(id.0),
        codec.seal(ObjectKind::Index, &id, CONTEXT, &plain, 3),
    )
}

/// Opens and parses the index segment named `id`.
pub fn open_segment(
    codec: &Codec,
    id: &IndexSegmentId,
    sealed: &[u8],
) -> Result<Vec<IndexEntry>, CodecError> {
    let plain = codec.open(
        ObjectKind::Index,
        &ContentId(*id.as_bytes()),
        CONTEXT,
        sealed,
    )?;
    if plain.len() % ENTRY_LEN != 0 {
        return Err(CodecError::Malformed(
            "index segment length is not a multiple of its entry size".into(),
        ));
    }
    Ok(plain
        .chunks_exact(ENTRY_LEN)
        .map(|c| IndexEntry {
            pack_id: PackId::new(c[32..64].try_into().expect("32 bytes")),
            entry: PackEntry {
                block_id: ContentId(c[..32].try_into().expect("32 bytes")),
                offset: u64::from_le_bytes(c[64..72].try_into().expect("8 bytes")),
                sealed_len: u32::from_le_bytes(c[72..76].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(c[76..80].try_into().expect("4 bytes")),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterSecret;

    #[test]
    fn segment_round_trip_and_tamper_detection() {
        let codec = Codec::new("r", MasterSecret::generate().derive(), true, 1);
        let entries: Vec<IndexEntry> = (0..1000u32)
            .map(|i| IndexEntry {
                pack_id: PackId::new([i as u8; 32]),
                entry: PackEntry {
                    block_id: codec.content_id(&i.to_le_bytes()),
                    offset: u64::from(i) * 100,
                    sealed_len: 100,
                    raw_len: 65536,
                },
            })
            .collect();
        let (id, sealed) = seal_segment(&codec, &entries);
        assert_eq!(open_segment(&codec, &id, &sealed).unwrap(), entries);
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(open_segment(&codec, &id, &bad).is_err());
        // Under another segment's name it is not that segment.
        let (other, _) = seal_segment(&codec, &entries[..10]);
        assert_eq!(
            open_segment(&codec, &other, &sealed),
            Err(CodecError::Authentication)
        );
    }
}
