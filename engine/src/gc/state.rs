//! `gc/state`: the one object GC updates, only by compare-and-swap; sealed for its name
//! (see [`crate::store::sealed`]), so only a holder of the repository key can forge it.
//!
//! It holds the condemned packs and when each was condemned. Backups read it after taking
//! their lease and never deduplicate against a condemned pack; readers building the block
//! index prefer a non-condemned copy of a block when a repack left two.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::{ObjectKey, ObjectVersion, StorageError};
use crate::store::sealed::{self, DocKind};

/// The CAS-updated GC state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcState {
    /// Condemned packs (hex id) and when (unix seconds).
    pub condemned: BTreeMap<String, i64>,
}

fn state_key() -> ObjectKey {
    layout::gc_state()
}

/// Reads the GC state (empty when none) and its version for a later swap.
pub async fn read_state(repo: &Repository) -> Result<(GcState, Option<ObjectVersion>)> {
    match repo.storage().get_versioned(&state_key()).await {
        Ok((raw, v)) => Ok((
            sealed::open(repo, DocKind::GcState, &state_key(), &raw)?,
            Some(v),
        )),
        Err(StorageError::NotFound { .. }) => Ok((GcState::default(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Writes the state if it is still at `version`; `what` says which step, for the error.
pub async fn write_state(
    repo: &Repository,
    state: &GcState,
    version: Option<&ObjectVersion>,
    what: &str,
) -> Result<ObjectVersion> {
    let body = sealed::seal(repo, DocKind::GcState, &state_key(), state);
    repo.storage()
        .put_swap(&state_key(), body, version)
        .await
        .map_err(|e| match e {
            StorageError::Precondition { .. } => Error::Conflict(format!(
                "gc/state changed under this gc while {what}; run gc again"
            )),
            other => other.into(),
        })
}

/// Parses a hex pack id.
pub fn pack_id(hex_id: &str) -> Option<[u8; 32]> {
    hex::decode(hex_id).ok()?.try_into().ok()
}

/// Packs condemned by GC: backups must not deduplicate against them.
pub async fn condemned_packs(repo: &Repository) -> Result<HashSet<[u8; 32]>> {
    let (state, _) = read_state(repo).await?;
    Ok(state.condemned.keys().filter_map(|h| pack_id(h)).collect())
}
