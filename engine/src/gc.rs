//! Garbage collection: remove packs no backup references, safely while backups and
//! archive-push run, from any number of hosts.
//!
//! # Protocol
//!
//! State lives in one small object, `gc/state`, updated only by compare-and-swap: the set of
//! **condemned** packs, each with the time it was condemned.
//!
//! 1. **Mark.** Read every manifest of every cluster; a pack is live if any manifest references
//!    one of its blocks (through the index). Packs and index segments younger than the grace
//!    period are treated as live whatever the manifests say: a backup in progress writes packs
//!    and index segments before its manifest.
//! 2. **Condemn.** Unreferenced packs older than the grace period are added to `gc/state`.
//!    From then on, new backups exclude condemned packs from deduplication: they never start
//!    depending on a pack GC may delete (a block only found there is stored again).
//! 3. **Sweep** (a later run, or the same run when the grace period is zero). A condemned pack
//!    is deleted only if (a) it was condemned at least a grace period ago, (b) it is still
//!    unreferenced by the manifests read *now*, and (c) no backup lease older than its
//!    condemnation exists (see [`crate::lease`]; a backup that started before the condemnation may have
//!    deduplicated against it; its manifest is not written yet). Index segments listing a
//!    swept pack are first rewritten without its entries (new segment created, then the old
//!    one deleted), then the pack is deleted, then `gc/state` forgets it.
//!
//! Invariants: an index entry never points to a deleted pack (index rewritten before the pack
//! goes); a manifest never references a deleted pack (only unreferenced packs are swept, and
//! backups that might reference them are excluded by (2) and (c)). A crash anywhere leaves at
//! worst an extra index segment (duplicates are harmless) or a condemned pack not yet swept:
//! the next run completes the work. WAL objects are not GC's business (expire removes them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backup::blockstore::BlockIndex;
use crate::backup::manifest;
use crate::error::{Error, Result};
use crate::index::{open_segment, seal_segment};
use crate::repo::{layout, Repository};
use crate::storage::{ObjectKey, StorageError};

/// The CAS-updated GC state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcState {
    /// Condemned packs (hex id) and when (unix seconds).
    pub condemned: BTreeMap<String, i64>,
}

fn state_key() -> ObjectKey {
    ObjectKey::new("gc/state")
}

/// Reads the GC state (empty when none).
pub async fn read_state(
    repo: &Repository,
) -> Result<(GcState, Option<crate::storage::ObjectVersion>)> {
    match repo.storage().get_versioned(&state_key()).await {
        Ok((raw, v)) => Ok((
            serde_json::from_slice(&raw).map_err(|e| Error::corrupt("gc/state", e.to_string()))?,
            Some(v),
        )),
        Err(StorageError::NotFound { .. }) => Ok((GcState::default(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Packs condemned by GC: backups must not deduplicate against them.
pub async fn condemned_packs(repo: &Repository) -> Result<HashSet<[u8; 32]>> {
    let (state, _) = read_state(repo).await?;
    Ok(state
        .condemned
        .keys()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect())
}

/// What a GC run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Packs in the repository.
    pub packs: usize,
    /// Packs referenced by a backup (or too young to judge).
    pub live_packs: usize,
    /// Packs newly condemned.
    pub condemned: Vec<String>,
    /// Packs deleted.
    pub swept: Vec<String>,
    /// Bytes reclaimed.
    pub reclaimed_bytes: u64,
    /// Bytes held by condemned packs not yet swept.
    pub pending_bytes: u64,
    /// Objects listed.
    pub objects_listed: usize,
    /// Index segments rewritten.
    pub index_rewritten: usize,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Runs GC with a grace period.
pub async fn gc(repo: &Repository, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run,
        ..Default::default()
    };
    let now = unix_now();
    let grace_s = grace.as_secs() as i64;
    // Mark.
    let index = BlockIndex::load(repo).await?;
    let mut referenced: HashSet<[u8; 32]> = HashSet::new();
    let clusters = manifest::cluster_names(repo).await?;
    for c in &clusters {
        for id in manifest::list_ids(repo, c).await? {
            let m = manifest::load(repo, c, &id).await?;
            for f in &m.files {
                for id in f.blocks.iter().filter_map(|b| b.0.as_ref()) {
                    if let Some(e) = index.get(id) {
                        referenced.insert(e.pack_id);
                    }
                }
            }
        }
    }
    let packs = repo.storage().list("packs/").await?;
    report.objects_listed += packs.len();
    report.packs = packs.len();
    let (mut state, version) = read_state(repo).await?;
    let mut sizes: HashMap<String, u64> = HashMap::new();
    for p in &packs {
        let Some(hex_id) = p.key.as_str().rsplit('/').next() else {
            continue;
        };
        sizes.insert(hex_id.to_string(), p.size);
        let id: Option<[u8; 32]> = hex::decode(hex_id).ok().and_then(|v| v.try_into().ok());
        let Some(id) = id else { continue };
        let young = p.modified.is_some_and(|m| now - m < grace_s);
        if referenced.contains(&id) || young {
            report.live_packs += 1;
            // Referenced again (a backup deduplicated before the condemnation): reprieve.
            state.condemned.remove(hex_id);
            continue;
        }
        if !state.condemned.contains_key(hex_id) {
            report.condemned.push(hex_id.to_string());
            state.condemned.insert(hex_id.to_string(), now);
        }
    }
    // Condemned packs that no longer exist are forgotten.
    state.condemned.retain(|h, _| sizes.contains_key(h));
    // Sweep candidates: condemned long enough, and no older backup lease.
    let leases = crate::lease::live(repo).await?;
    report.objects_listed += leases.len();
    let oldest_live_lease = leases.iter().map(|l| l.body.started).min();
    let sweep: Vec<String> = state
        .condemned
        .iter()
        .filter(|(_, at)| now - **at >= grace_s)
        .filter(|(_, at)| oldest_live_lease.is_none_or(|l| l > **at))
        .map(|(h, _)| h.clone())
        .collect();
    report.pending_bytes = state
        .condemned
        .keys()
        .filter(|h| !sweep.contains(h))
        .filter_map(|h| sizes.get(h))
        .sum();
    if dry_run {
        report.swept = sweep;
        report.reclaimed_bytes = report.swept.iter().filter_map(|h| sizes.get(h)).sum();
        return Ok(report);
    }
    // Record condemnations first (CAS): backups starting from now on avoid these packs.
    let body = Bytes::from(serde_json::to_vec_pretty(&state).expect("state serialises"));
    let version = repo
        .storage()
        .put_swap(&state_key(), body, version.as_ref())
        .await
        .map_err(|e| match e {
            StorageError::Precondition { .. } => {
                Error::Conflict("another gc changed gc/state at the same time; run gc again".into())
            }
            other => other.into(),
        })?;
    if sweep.is_empty() {
        return Ok(report);
    }
    let doomed: HashSet<[u8; 32]> = sweep
        .iter()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect();
    // Rewrite index segments that mention doomed packs, before any pack goes.
    let segments = repo.storage().list(layout::INDEX_PREFIX).await?;
    report.objects_listed += segments.len();
    for seg in segments {
        let sealed = repo.storage().get(&seg.key).await?;
        let entries = open_segment(repo.codec(), &sealed)
            .map_err(|e| Error::corrupt(seg.key.to_string(), e.to_string()))?;
        if !entries.iter().any(|e| doomed.contains(&e.pack_id)) {
            continue;
        }
        let kept: Vec<_> = entries
            .into_iter()
            .filter(|e| !doomed.contains(&e.pack_id))
            .collect();
        if !kept.is_empty() {
            let new = seal_segment(repo.codec(), &kept);
            let id = *blake3::hash(&new).as_bytes();
            repo.storage()
                .put_create(&layout::index_segment(&id), Bytes::from(new))
                .await?;
        }
        repo.storage().delete(&seg.key).await?;
        report.index_rewritten += 1;
    }
    for h in &sweep {
        let id: [u8; 32] = hex::decode(h)
            .ok()
            .and_then(|v| v.try_into().ok())
            .expect("hex pack id");
        repo.storage().delete(&layout::pack(&id)).await?;
        report.reclaimed_bytes += sizes.get(h).copied().unwrap_or(0);
        state.condemned.remove(h);
    }
    report.swept = sweep;
    let body = Bytes::from(serde_json::to_vec_pretty(&state).expect("state serialises"));
    repo.storage()
        .put_swap(&state_key(), body, Some(&version))
        .await
        .map_err(|e| match e {
            StorageError::Precondition { .. } => {
                Error::Conflict("gc/state changed during the sweep; run gc again to tidy it".into())
            }
            other => other.into(),
        })?;
    Ok(report)
}
