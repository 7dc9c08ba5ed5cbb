//! `gc/state`: the condemned-pack set, the one object GC updates, only by compare-and-swap;
//! sealed for its name (see [`crate::store::sealed`]), so only a holder of the repository key
//! can forge it.
//!
//! It holds the condemned packs and when each was condemned. Backups read it after taking
//! their lease and never deduplicate against a condemned pack; readers building the block
//! index prefer a non-condemned copy of a block when a repack left two.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::{ObjectKey, ObjectVersion, StorageError};
use crate::store::ids::PackId;
use crate::store::sealed::{self, DocKind};

/// The CAS-updated GC state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcState {
    /// Condemned packs (as hex in the document) and when (unix seconds).
    pub condemned: BTreeMap<PackId, i64>,
    /// Incremented by every write. Each host remembers the highest it saw (`repo.state_dir`,
    /// as for catalog heads), so an older copy put back is refused: replayed, it could make gc
    /// sweep a pack it had since rescued because a backup uses it again.
    #[serde(default)]
    pub generation: u64,
}

/// The name under which hosts remember the gc state's generation.
const SEEN_AS: &str = "gc/state";

fn rolled_back(repo: &Repository, found: Option<u64>, seen: u64) -> Error {
    let cache = repo
        .generation_cache()
        .map(|c| c.path().display().to_string())
        .unwrap_or_default();
    let what = found.map_or("is missing".to_string(), |g| format!("is generation {g}"));
    Error::corrupt(
        state_key().to_string(),
        format!(
            "the gc state {what}, but this host has seen generation {seen} (recorded in {cache}): it was deleted or \
             replaced by an older copy, which could make gc delete packs backups use. Not running gc on it: put the \
             newest copy back; if the whole repository was restored from an old copy on purpose, delete {cache}"
        ),
    )
}

fn state_key() -> ObjectKey {
    layout::gc_state()
}

/// Reads the GC state (empty when none) and its version for a later swap.
pub async fn read_state(repo: &Repository) -> Result<(GcState, Option<ObjectVersion>)> {
    let cache = repo.generation_cache();
    let seen = cache.as_ref().map_or(0, |c| c.catalog_seen(SEEN_AS));
    match repo.storage().get_versioned(&state_key()).await {
        Ok((raw, v)) => {
            let state: GcState = sealed::open(repo, DocKind::GcState, &state_key(), &raw)?;
            if state.generation < seen {
                return Err(rolled_back(repo, Some(state.generation), seen));
            }
            if let Some(c) = &cache {
                c.record_catalog(SEEN_AS, state.generation);
            }
            Ok((state, Some(v)))
        }
        Err(StorageError::NotFound { .. }) if seen > 0 => Err(rolled_back(repo, None, seen)),
        Err(StorageError::NotFound { .. }) => Ok((GcState::default(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Writes the state (one generation up) if it is still at `version`; `what` says which
/// step, for the error.
pub async fn write_state(
    repo: &Repository,
    state: &mut GcState,
    version: Option<&ObjectVersion>,
    what: &str,
) -> Result<ObjectVersion> {
    state.generation += 1;
    let body = sealed::seal(repo, DocKind::GcState, &state_key(), &*state);
    let written = repo
        .storage()
        .put_swap(&state_key(), body, version)
        .await
        .map_err(|e| match e {
            StorageError::Precondition { .. } => Error::Conflict(format!(
                "gc/state changed under this gc while {what}; run gc again"
            )),
            other => other.into(),
        })?;
    if let Some(c) = repo.generation_cache() {
        c.record_catalog(SEEN_AS, state.generation);
    }
    Ok(written)
}

/// Packs condemned by GC: backups must not deduplicate against them.
pub async fn condemned_packs(repo: &Repository) -> Result<HashSet<PackId>> {
    let (state, _) = read_state(repo).await?;
    Ok(state.condemned.keys().copied().collect())
}
