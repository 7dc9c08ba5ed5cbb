//! Repack: copy the live blocks out of packs that are mostly garbage, so those packs can be
//! condemned and swept like any unreferenced pack.
//!
//! Blocks are copied as ciphertext: each block is sealed on its own with its block id as
//! associated data, not its pack, so a sealed block moves between packs unchanged and
//! nothing is decrypted. The source pack's bytes are checked against its name (the unkeyed
//! BLAKE3 of the pack) before anything is copied: a damaged pack is skipped (and reported),
//! never spread, and stays where it is for `verify` to name the backups it hurts.
//! New packs and their index segments are written exactly like a backup writes them
//! ([`crate::backup::blockstore::Packer`]); only after that may the old pack be condemned.
//! A crash in between leaves two copies of some blocks, which the next gc resolves.
//!
//! Memory: one source pack and one pack being filled (about 32 MiB each).

use crate::backup::blockstore::{Packer, SealedBlock};
use crate::error::Result;
use crate::repo::{layout, Repository};

use super::liveness::RepoUsage;

/// What a repack did.
#[derive(Debug, Default)]
pub struct RepackOutcome {
    /// Source packs whose live blocks were copied.
    pub repacked: Vec<[u8; 32]>,
    /// Bytes read from source packs.
    pub bytes_read: u64,
    /// Sealed bytes copied.
    pub copied_bytes: u64,
    /// Packs written.
    pub new_packs: u64,
    /// Source packs left alone because they are damaged (pack, why): `verify` names the
    /// backups that depend on them.
    pub skipped: Vec<([u8; 32], String)>,
}

/// Copies the blocks only `sources` hold into new packs and records those packs in `usage`.
pub async fn repack(
    repo: &Repository,
    usage: &mut RepoUsage,
    sources: &[[u8; 32]],
) -> Result<RepackOutcome> {
    let mut out = RepackOutcome::default();
    let mut packer = Packer::recording(repo.clone());
    for src in sources {
        let to_copy = usage.sole_copies(src);
        let key = layout::pack(src);
        let bytes = repo.storage().get(&key).await?;
        out.bytes_read += bytes.len() as u64;
        if blake3::hash(&bytes).as_bytes() != src {
            tracing::warn!("{key}: contents do not match its name; not repacking it");
            out.skipped
                .push((*src, "contents do not match its name".into()));
            continue;
        }
        let past_end = to_copy
            .iter()
            .any(|e| e.offset as usize + e.sealed_len as usize > bytes.len());
        if past_end {
            tracing::warn!("{key}: an index entry points past its end; not repacking it");
            out.skipped
                .push((*src, "an index entry points past its end".into()));
            continue;
        }
        for e in &to_copy {
            let start = e.offset as usize;
            let sealed = &bytes[start..start + e.sealed_len as usize];
            packer
                .add(SealedBlock {
                    id: e.block_id,
                    sealed: sealed.to_vec(),
                    raw_len: e.raw_len,
                })
                .await?;
            out.copied_bytes += u64::from(e.sealed_len);
        }
        out.repacked.push(*src);
    }
    packer.flush().await?;
    out.new_packs = packer.packs;
    for (id, size, entries) in packer.written.drain(..) {
        usage.add_pack(id, size, entries);
    }
    Ok(out)
}
