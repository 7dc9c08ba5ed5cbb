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
    /// The generation whose write recorded each condemnation (packs condemned by versions
    /// that did not record it have none: see [`GcState::condemned_in`]). A backup that read
    /// an older generation may deduplicate against the pack; gc compares these, not clocks.
    #[serde(default)]
    pub condemned_gen: BTreeMap<PackId, u64>,
}

impl GcState {
    /// Condemns `id` at unix time `at`, in the generation the next write makes.
    pub fn condemn(&mut self, id: PackId, at: i64) {
        self.condemned.insert(id, at);
        self.condemned_gen.insert(id, self.generation + 1);
    }

    /// Forgets `id` (reprieved, swept, or gone).
    pub fn forget(&mut self, id: &PackId) {
        self.condemned.remove(id);
        self.condemned_gen.remove(id);
    }

    /// Keeps only the condemnations `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&PackId) -> bool) {
        self.condemned.retain(|id, _| keep(id));
        self.condemned_gen.retain(|id, _| keep(id));
    }

    /// Gives every condemnation recorded without its generation (by an older version) the
    /// generation read, at or after the one that recorded it, so that the next write records
    /// it and it no longer rises with every write ([`GcState::condemned_in`]).
    pub fn date_condemnations(&mut self) {
        for id in self.condemned.keys() {
            self.condemned_gen.entry(*id).or_insert(self.generation);
        }
    }

    /// The generation that recorded `id`'s condemnation; for one recorded by an older version,
    /// the generation read (it was recorded in that one or before, so no later one is claimed).
    pub fn condemned_in(&self, id: &PackId) -> u64 {
        self.condemned_gen
            .get(id)
            .copied()
            .unwrap_or(self.generation)
    }
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
    Ok(condemned_packs_seen(repo).await?.0)
}

/// [`condemned_packs`], and the generation of the state they were read from (a backup records
/// it in its lease: [`crate::lease::Lease::record_gc_seen`]).
pub async fn condemned_packs_seen(repo: &Repository) -> Result<(HashSet<PackId>, u64)> {
    let (state, _) = read_state(repo).await?;
    Ok((state.condemned.keys().copied().collect(), state.generation))
}
