//! The per-file part of a backup manifest: a file and its blocks, and the counts a backup
//! adds up while it reads files.
//!
//! Apart from [`super`] (the manifest) because the spilled file list ([`super::file_spool`])
//! stores and returns these entries while the manifest streams from that list: with the
//! entries in the manifest module the two imported each other.

use serde::{Deserialize, Serialize};

use crate::crypto::ContentId;

/// One block of a file: its id, or `None` for an all-zero block.
///
/// In the manifest's JSON it is 64 hex digits, or `""` for a zero block; in memory it is 33
/// bytes, a third of a hex `String`, which is what bounds a backup's memory per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef(pub Option<ContentId>);

impl BlockRef {
    /// An all-zero block.
    pub const ZERO: BlockRef = BlockRef(None);

    /// True for an all-zero block.
    pub fn is_zero(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for BlockRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.0 {
            Some(id) => s.serialize_str(id.hex_in(&mut [0; 64])),
            None => s.serialize_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for BlockRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if text.is_empty() {
            return Ok(BlockRef::ZERO);
        }
        ContentId::from_hex(&text)
            .map(|id| BlockRef(Some(id)))
            .ok_or_else(|| serde::de::Error::custom("block id is not 64 hex digits"))
    }
}

/// Parses a block list without the spare capacity a growing vector leaves (up to half of it):
/// a manifest in memory costs 33 bytes per block, not up to 66.
fn blocks_exact<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<BlockRef>, D::Error> {
    let mut blocks = Vec::<BlockRef>::deserialize(d)?;
    blocks.shrink_to_fit();
    Ok(blocks)
}

/// Block list ids as 64 hex digits each.
mod list_ids {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::crypto::ContentId;

    pub fn serialize<S: Serializer>(ids: &[ContentId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(ContentId::to_hex))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ContentId>, D::Error> {
        Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?
            .iter()
            .map(|text| {
                ContentId::from_hex(text)
                    .ok_or_else(|| serde::de::Error::custom("block list id is not 64 hex digits"))
            })
            .collect()
    }
}

/// A file and its blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path.
    pub path: String,
    /// Bytes stored (what was read; may be less than listed if the file shrank).
    pub size: u64,
    /// Modification time when listed (ns since the epoch).
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Block ids in order; zero for an all-zero block.
    #[serde(deserialize_with = "blocks_exact")]
    pub blocks: Vec<BlockRef>,
    /// For a file of at least [`crate::store::block_lists::LIST_BLOCKS`] blocks (backups
    /// since manifest format 2): the ids of its block lists, blocks that hold its block ids.
    /// A manifest then records these and an empty `blocks`; loaded, `blocks` is filled from
    /// them (see [`crate::store::block_lists`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "list_ids")]
    pub block_lists: Vec<ContentId>,
    /// BLAKE3 (unkeyed) of the whole file as stored, checked after restore; empty in backups
    /// since manifest format 3, whose restores check every block against its id instead
    /// (the backup then hashes each block once, for its id, not a second time for this).
    pub checksum: String,
    /// Pages whose checksum failed while reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_pages: Vec<u32>,
    /// Blocks stored as a patch on an earlier version of themselves (backups since manifest
    /// format 4, files recorded as block lists only, see [`crate::store::patches`]), by
    /// position: `blocks[pos]` is then the base the patch applies to. In a manifest they are
    /// in the block lists; here (and in a spooled entry) they are expanded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    /// Fingerprints of each block's parts ([`crate::store::patches::PART_LEN`] bytes each,
    /// `parts` per block, 0 where unknown), for the next backup to tell which parts changed.
    /// In a manifest they are in the block lists; empty for a file recorded block by block.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "fingerprints")]
    pub part_fps: Vec<u64>,
}

/// A block stored as a patch: its content is `blocks[pos]` with the parts in `mask` replaced
/// by those the patch block `delta` holds, and must hash to `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// Block position in the file.
    pub pos: u32,
    /// Content id of the patched block (what a restore checks).
    pub id: ContentId,
    /// The block holding the replaced parts.
    pub delta: ContentId,
    /// Which parts it replaces (bit `i`: part `i`).
    pub mask: u64,
}

impl Serialize for Patch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.pos, self.id.to_hex(), self.delta.to_hex(), self.mask).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Patch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (pos, id, delta, mask) = <(
            u32,
            std::borrow::Cow<'de, str>,
            std::borrow::Cow<'de, str>,
            u64,
        )>::deserialize(d)?;
        let hex = |t: &str| {
            ContentId::from_hex(t)
                .ok_or_else(|| serde::de::Error::custom("patch id is not 64 hex digits"))
        };
        Ok(Patch {
            pos,
            id: hex(&id)?,
            delta: hex(&delta)?,
            mask,
        })
    }
}

/// Part fingerprints as one hex string (16 digits each).
mod fingerprints {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(fps: &[u64], s: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write;
        let mut text = String::with_capacity(fps.len() * 16);
        for fp in fps {
            write!(text, "{fp:016x}").expect("writing to a String");
        }
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if !text.is_ascii() || text.len() % 16 != 0 {
            return Err(serde::de::Error::custom(
                "part fingerprints are not 16 hex digits each",
            ));
        }
        (0..text.len() / 16)
            .map(|i| {
                u64::from_str_radix(&text[i * 16..i * 16 + 16], 16)
                    .map_err(|_| serde::de::Error::custom("part fingerprint is not hex"))
            })
            .collect()
    }
}

impl FileEntry {
    /// The patch of block `pos`, if it is stored as one.
    pub fn patch_at(&self, pos: usize) -> Option<&Patch> {
        self.patches
            .binary_search_by_key(&(pos as u32), |p| p.pos)
            .ok()
            .map(|i| &self.patches[i])
    }

    /// The content id of block `pos` as restored (`None`: all zeros or past the end): the
    /// patched block's for a patch, the block's own otherwise.
    pub fn content_id_at(&self, pos: usize) -> Option<ContentId> {
        match self.patch_at(pos) {
            Some(p) => Some(p.id),
            None => self.blocks.get(pos).and_then(|b| b.0),
        }
    }

    /// Whether the blocks cover the size exactly as a restore places them (block `i` at
    /// `i * block_size`, every block full but the last). Backups made before the reader
    /// stopped at a growing file's first short block could list one short block mid-file.
    pub fn blocks_fit(&self, block_size: u64) -> bool {
        block_size > 0 && self.blocks.len() as u64 == self.size.div_ceil(block_size)
    }

    /// Why the blocks do not fit the size ([`Self::blocks_fit`]), for `restore` and `verify`.
    pub fn misfit(&self, block_size: u64) -> Option<String> {
        (!self.blocks_fit(block_size)).then(|| {
            format!(
                "lists {} blocks for {} bytes in blocks of {block_size}: a restore cannot place \
                 them (a file that grew while an older pgcairn read it)",
                self.blocks.len(),
                self.size
            )
        })
    }
}

/// Byte counts of one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Files in the backup.
    pub files: u64,
    /// Database size: bytes of all files.
    pub size: u64,
    /// Bytes read (files not skipped as unchanged).
    pub bytes_read: u64,
    /// Plaintext bytes of blocks this backup stored for the first time.
    pub bytes_new: u64,
    /// Stored (compressed, sealed) bytes this backup added.
    pub stored_new: u64,
    /// Blocks referenced.
    pub blocks: u64,
    /// Of which stored by this backup.
    pub blocks_new: u64,
    /// Files reused from the reference backup without reading.
    pub files_unchanged: u64,
    /// Of the blocks referenced, those recorded as a patch on a base block
    /// ([`crate::store::patches`]), by this backup or (unchanged since) an earlier one.
    #[serde(default)]
    pub blocks_patched: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_fit_only_when_every_block_but_the_last_is_full() {
        let entry = |size: u64, blocks: usize| FileEntry {
            path: "base/1/1".into(),
            size,
            mtime_ns: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            blocks: vec![BlockRef::ZERO; blocks],
            block_lists: Vec::new(),
            checksum: String::new(),
            bad_pages: Vec::new(),
            patches: Vec::new(),
            part_fps: Vec::new(),
        };
        let bs = 64 << 10;
        assert!(entry(0, 0).blocks_fit(bs));
        assert!(entry(bs, 1).blocks_fit(bs));
        assert!(entry(bs + 8192, 2).blocks_fit(bs));
        // 24 KiB then 8 KiB read as two blocks from a growing file.
        assert!(!entry(32 << 10, 2).blocks_fit(bs));
        assert!(!entry(2 * bs, 1).blocks_fit(bs));
    }
}
