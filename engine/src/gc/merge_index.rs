//! Merging small index segments, the last step of a gc run.
//!
//! Every pack gets an index segment of its own when it is written (a backup's packs, a
//! repack's copies, an incremental's few blocks), and nothing used to merge them: a repository
//! that had taken a thousand backups held thousands of segments, and every backup, restore,
//! verify and gc read all of them first, one request each. On an object store that is the
//! start of every command: read 8 at a time at 30 ms a request, 6,000 segments (a repository
//! of about 200 GB of packs) take over 20 s before the first block moves.
//!
//! So gc merges the small ones ([`SMALL_SEGMENT`]) once there are [`MERGE_AT`] of them, into
//! segments of at most [`MERGED_ENTRIES`] entries (what a reader holds at once while it reads
//! the index). The merged segment is written first, then the segments it replaces are deleted,
//! as gc's rewrite of segments naming swept packs does: a crash in between leaves duplicate
//! entries, which every reader of the index already tolerates, and a reader that listed a
//! segment merged away before it could read it lists the index again and reads the merged one
//! ([`crate::store::blocks::for_each_index_segment`]). Entries are copied as they are,
//! including those of condemned packs (the sweep drops them when their pack goes). Segments
//! still under the bucket's Object Lock retention are left for a later run.

use std::time::Duration;

use futures::StreamExt;

use crate::error::Result;
use crate::index::{seal_segment, IndexEntry};
use crate::repo::{layout, Repository};
use crate::storage::ObjectInfo;
use crate::store::Timestamp;

/// A segment smaller than this (sealed bytes) is merged: a full 32 MiB pack of 64 KiB blocks
/// indexes in about 100–250 KB, an incremental's last pack in a few hundred bytes.
pub const SMALL_SEGMENT: u64 = 1 << 20;
/// Small segments there must be before a run merges them: fewer cost a reader nothing worth
/// rewriting them for.
pub const MERGE_AT: usize = 16;
/// Entries of a merged segment, at most: 5 MiB of plaintext (80 bytes an entry).
pub const MERGED_ENTRIES: usize = 1 << 16;

/// What the merge did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Segments replaced.
    pub replaced: usize,
    /// Segments written in their place.
    pub written: usize,
    /// Index segments listed.
    pub listed: usize,
    /// Sealed bytes read.
    pub bytes_read: u64,
}

/// Merges the repository's small index segments if there are at least [`MERGE_AT`] of them.
/// `object_lock`: the bucket's default retention; younger segments cannot be deleted yet.
/// `held`: the caller's leases, checked before each merged segment is written (a gc whose
/// lease lapsed could merge entries another gc has since removed).
pub async fn merge_small_segments(
    repo: &Repository,
    object_lock: Option<Duration>,
    held: &[crate::lease::Lease],
) -> Result<Merged> {
    let now = Timestamp::now();
    let listed = repo.storage().list(layout::INDEX_PREFIX).await?;
    let mut done = Merged {
        listed: listed.len(),
        ..Merged::default()
    };
    let mut small: Vec<ObjectInfo> = listed
        .into_iter()
        .filter(|o| o.size < SMALL_SEGMENT)
        .filter(|o| {
            object_lock
                .is_none_or(|lock| crate::expire::locked_until(o.modified, lock, now).is_none())
        })
        .collect();
    if small.len() < MERGE_AT {
        return Ok(done);
    }
    // Oldest first: segments written together (one backup's) stay together.
    small.sort_by(|a, b| (a.modified, a.key.as_str()).cmp(&(b.modified, b.key.as_str())));
    let mut group = Group::default();
    // In order (groups stay oldest first), 8 requests in flight as every index reader does.
    let mut segments = futures::stream::iter(small)
        .map(|o| async move {
            let got = repo.storage().get(&o.key).await;
            (o, got)
        })
        .buffered(8);
    while let Some((o, got)) = segments.next().await {
        let sealed = match got {
            Ok(s) => s,
            // Gone since the listing: only gc deletes segments, and this run holds gc's lease,
            // so an operator removed it; nothing to merge.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        done.bytes_read += sealed.len() as u64;
        let entries = crate::store::blocks::open_index_segment(repo, &o.key, &sealed)?;
        if !group.keys.is_empty() && group.entries.len() + entries.len() > MERGED_ENTRIES {
            group.write(repo, &mut done, held).await?;
        }
        group.entries.extend(entries);
        group.keys.push(o);
    }
    group.write(repo, &mut done, held).await?;
    Ok(done)
}

/// Segments read, to be replaced by one.
#[derive(Default)]
struct Group {
    entries: Vec<IndexEntry>,
    keys: Vec<ObjectInfo>,
}

impl Group {
    /// Writes the merged segment, then deletes the ones it replaces (a group of one is left as
    /// it is); empties the group.
    async fn write(
        &mut self,
        repo: &Repository,
        done: &mut Merged,
        held: &[crate::lease::Lease],
    ) -> Result<()> {
        let Group { mut entries, keys } = std::mem::take(self);
        if keys.len() < 2 {
            return Ok(());
        }
        crate::lease::Lease::ensure_all_held(held)?;
        entries.sort_unstable_by_key(|e| (e.entry.block_id, e.pack_id, e.entry.offset));
        entries.dedup();
        // In a dry run the storage wrapper records these instead ([`crate::store::dry_run`]).
        // A segment is named by its entries, so a group can come out under the name of one of
        // its own members: a merged segment read again with the sources a crashed run had not
        // deleted yet. That one holds every entry and stays; deleting it with the others would
        // leave their blocks in no segment (and gc would then sweep their packs).
        let (id, sealed) = seal_segment(repo.codec(), &entries);
        let merged = layout::index_segment(&id);
        if !keys.iter().any(|o| o.key == merged) {
            repo.storage()
                .put_create(&merged, bytes::Bytes::from(sealed))
                .await?;
        }
        for o in keys.iter().filter(|o| o.key != merged) {
            repo.storage().delete(&o.key).await?;
        }
        done.replaced += keys.len();
        done.written += 1;
        Ok(())
    }
}
