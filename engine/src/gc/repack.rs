//! Repack: copy the live blocks out of packs that are mostly garbage, so those packs can be
//! condemned and swept like any unreferenced pack.
//!
//! Blocks are copied as ciphertext: each block is sealed on its own with its block id as
//! associated data, not its pack, so a sealed block moves between packs unchanged and
//! nothing is decrypted. The source pack's bytes are checked against its name (the unkeyed
//! BLAKE3 of the pack) before anything is copied: a damaged pack is skipped (and reported),
//! never spread, and stays where it is for `verify` to name the backups it hurts.
//! New packs and their index segments are written exactly like a backup writes them
//! ([`crate::store::blocks::Packer`]); only after that may the old pack be condemned.
//! A crash in between leaves two copies of some blocks, which the next gc resolves.
//!
//! Memory: one source pack and one pack being filled (about 32 MiB each).

use std::collections::HashSet;

use crate::codec::{Codec, ObjectKind};
use crate::cpu;
use crate::error::Result;
use crate::repo::{layout, Repository};
use crate::store::blocks::{Packer, SealedBlock};
use crate::store::ids::PackId;

use super::liveness::RepoUsage;

/// What a repack did.
#[derive(Debug, Default)]
pub struct RepackOutcome {
    /// Source packs whose live blocks were copied.
    pub repacked: Vec<PackId>,
    /// Bytes read from source packs.
    pub bytes_read: u64,
    /// Sealed bytes copied.
    pub copied_bytes: u64,
    /// Packs written.
    pub new_packs: u64,
    /// Source packs left alone because they are damaged (pack, why): `verify` names the
    /// backups that depend on them.
    pub skipped: Vec<(PackId, String)>,
}

/// Copies the blocks only `sources` hold into new packs and records those packs in `usage`.
pub async fn repack(
    repo: &Repository,
    usage: &mut RepoUsage,
    sources: &[PackId],
) -> Result<RepackOutcome> {
    let mut out = RepackOutcome::default();
    let mut packer = Packer::recording(repo.clone());
    for src in sources {
        let to_copy = usage.sole_copies(src)?;
        let key = layout::pack(src);
        let bytes = repo.storage().get(&key).await?;
        out.bytes_read += bytes.len() as u64;
        if blake3::hash(&bytes).as_bytes() != src.as_bytes() {
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
        // Packs already uploaded and indexed join the usage now: what the packer remembers
        // stays at a pack or two, whatever the size of the repack.
        for (id, size, entries) in packer.written.drain(..) {
            usage.add_pack(id, size, entries)?;
        }
    }
    packer.flush().await?;
    out.new_packs = packer.packs;
    for (id, size, entries) in packer.written.drain(..) {
        usage.add_pack(id, size, entries)?;
    }
    Ok(out)
}

/// What a reencrypting repack did.
#[derive(Debug, Default)]
pub struct ReencryptOutcome {
    /// Packs copied out (`repacked`: those holding old key epochs), bytes, packs written,
    /// damaged packs left alone.
    pub outcome: RepackOutcome,
    /// Blocks resealed under the write epoch.
    pub resealed_blocks: u64,
    /// Packs read and found sealed under the write epoch only, and packs written: nothing
    /// in them needs resealing.
    pub clean: HashSet<PackId>,
}

/// Key rotation's repack ([`crate::reencrypt`]): reads every pack of `candidates`; one holding
/// anything (trailer or block) sealed under a key epoch older than the write epoch has its
/// referenced blocks copied into new packs, each block resealed under the write epoch on the
/// way (same size, same id: [`crate::codec::Codec::reseal`]). The source is then an ordinary
/// unneeded pack that gc condemns and sweeps. A block several old packs hold is copied once.
pub async fn reencrypt(
    repo: &Repository,
    usage: &mut RepoUsage,
    candidates: &[PackId],
) -> Result<ReencryptOutcome> {
    let mut out = ReencryptOutcome::default();
    // Referenced blocks copied so far, one bit each (on disk when the counts are).
    let mut copied = usage.referenced_marks()?;
    let mut packer = Packer::recording(repo.clone());
    for src in candidates {
        let key = layout::pack(src);
        let bytes = match repo.storage().get(&key).await {
            Ok(b) => b,
            // Swept by nothing else (the caller holds the gc lease): gone is gone.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        out.outcome.bytes_read += bytes.len() as u64;
        if blake3::hash(&bytes).as_bytes() != src.as_bytes() {
            tracing::warn!("{key}: contents do not match its name; not reencrypting it");
            out.outcome
                .skipped
                .push((*src, "contents do not match its name".into()));
            continue;
        }
        let codec = repo.codec().clone();
        let wanted: Vec<bool> = {
            let entries = match crate::pack::read_pack_entries(&codec, &bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("{key}: its trailer does not open ({e}); not reencrypting it");
                    out.outcome
                        .skipped
                        .push((*src, format!("its trailer does not open: {e}")));
                    continue;
                }
            };
            let mut wanted = Vec::with_capacity(entries.len());
            for e in &entries {
                wanted.push(match usage.referenced_position(&e.block_id)? {
                    Some(at) => !copied.is_marked(at)?,
                    None => false,
                });
            }
            wanted
        };
        let (resealed, dirty) = cpu::run(move || reseal_pack(&codec, &bytes, &wanted)).await;
        let resealed = match resealed {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!("{key}: {why}; not reencrypting it");
                out.outcome.skipped.push((*src, why));
                continue;
            }
        };
        if !dirty {
            out.clean.insert(*src);
            continue;
        }
        for (block, was_old) in resealed {
            out.outcome.copied_bytes += block.sealed.len() as u64;
            out.resealed_blocks += u64::from(was_old);
            if let Some(at) = usage.referenced_position(&block.id)? {
                copied.mark(at)?;
            }
            packer.add(block).await?;
        }
        out.outcome.repacked.push(*src);
    }
    packer.flush().await?;
    out.outcome.new_packs = packer.packs;
    for (id, size, entries) in packer.written.drain(..) {
        out.clean.insert(id);
        usage.add_pack(id, size, entries)?;
    }
    Ok(out)
}

/// Resealed copies of the `wanted` blocks of a whole pack (each with whether it was under an
/// old epoch), and whether the pack holds anything under an old epoch at all.
type Resealed = (std::result::Result<Vec<(SealedBlock, bool)>, String>, bool);

fn reseal_pack(codec: &Codec, pack: &[u8], wanted: &[bool]) -> Resealed {
    let entries = match crate::pack::read_pack_entries(codec, pack) {
        Ok(e) => e,
        Err(e) => return (Err(format!("its trailer does not open: {e}")), false),
    };
    let mut dirty = crate::pack::sealed_trailer(pack).is_some_and(|t| codec.needs_reseal(t));
    let mut blocks = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let want = wanted.get(i).copied().unwrap_or(false);
        let start = e.offset as usize;
        let Some(sealed) = pack.get(start..start + e.sealed_len as usize) else {
            return (Err("an entry points past its end".into()), true);
        };
        let old = codec.needs_reseal(sealed);
        dirty |= old;
        if !want {
            continue;
        }
        let block = if old {
            match codec.reseal(ObjectKind::Block, &e.block_id, b"", sealed) {
                Ok(b) => b,
                Err(err) => {
                    return (
                        Err(format!(
                            "block {} does not open ({err})",
                            e.block_id.to_hex()
                        )),
                        true,
                    )
                }
            }
        } else {
            sealed.to_vec()
        };
        blocks.push((
            SealedBlock {
                id: e.block_id,
                sealed: block,
                raw_len: e.raw_len,
            },
            old,
        ));
    }
    (Ok(blocks), dirty)
}

/// Whether a whole pack holds anything (trailer or block) sealed under a key epoch older than
/// the write epoch; an error when it cannot be read as a pack.
pub(crate) fn holds_old_epochs(codec: &Codec, pack: &[u8]) -> std::result::Result<bool, String> {
    let (res, dirty) = reseal_pack(codec, pack, &[]);
    res.map(|_| dirty)
}
