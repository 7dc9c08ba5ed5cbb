//! Garbage collection: remove packs no backup needs, and repack packs that are mostly
//! garbage, safely while backups and archive-push run, from any number of hosts.
//!
//! # Protocol
//!
//! State lives in one small object, `gc/state` ([`state`]), updated only by compare-and-swap:
//! the set of **condemned** packs, each with the time it was condemned. One gc runs at a time:
//! it holds the exclusive lease `leases/gc` ([`crate::lease`]).
//!
//! 1. **Leases first.** Read the live backup leases *before* the manifests: a backup that ends
//!    after this snapshot wrote its manifest before releasing its lease, so either its lease
//!    is in the snapshot or its manifest is in the listing below. A lease that cannot be read
//!    stops the run (fail closed): it might be a running backup's.
//! 2. **Mark** ([`liveness`]). Read every manifest of every cluster and every index segment. A
//!    block is referenced if a manifest names it, directly or in one of its block lists
//!    ([`crate::store::block_lists`], themselves referenced); its *holders* are the existing, uncondemned
//!    packs the index says hold it.
//! 3. **Reprieve.** A condemned pack holding a referenced block that has no holder (a backup
//!    deduplicated against it before it was condemned) leaves the condemned set.
//! 4. **Repack** ([`repack`]). An uncondemned pack older than the grace period whose referenced
//!    bytes are below `repack_below` of its size, and which holds some unreferenced block, has
//!    its sole-copy blocks copied, still sealed, into new packs, indexed like a backup's. It is
//!    then an ordinary unneeded pack. (A small pack whose blocks are all referenced is below the
//!    threshold because of its header and trailer alone: copying it gains nothing, and every run
//!    did it again, leaving a condemned copy pending for ever.)
//! 5. **Condemn.** A pack older than the grace period is condemned when every referenced block
//!    it holds has another holder (for most, it holds none), the emptiest packs first (so a
//!    repack source goes, not its copy). Packs younger than the grace
//!    period (or of unknown age) are never condemned: a backup in progress writes packs
//!    before its index segments and manifest. From then on new backups exclude condemned packs from
//!    deduplication, and readers prefer another copy.
//! 6. **Sweep** (a later run, or the same run with a zero grace period). A condemned pack is
//!    deleted only if (a) it was condemned at least a grace period ago, (b) it survived step 3
//!    of *this* run, and (c) no running backup may use it ([`RunningBackups`]): every live
//!    backup lease says it read a `gc/state` generation at or after the one that recorded the
//!    condemnation (a backup records the generation it read in its lease before it loads the
//!    index, and never deduplicates against a pack condemned by then), and every running
//!    incremental's reference backup is among the manifests the mark read (it carries blocks
//!    over from its reference without looking them up; with the reference expired, those
//!    blocks are referenced by no manifest gc can see until the backup commits, so nothing is
//!    swept meanwhile). A lease that names no generation (a backup starting, or an older
//!    version's) holds every sweep. The leases and then the manifests are read again after
//!    the condemnations are written, before anything is deleted: a backup that began after
//!    the first read shows in one or the other, and a manifest the mark did not read is
//!    judged like a lease (the manifest records the generation its backup read, and its
//!    reference); one of an older version, which records none, holds every sweep of the run. Index segments listing
//!    a swept pack are first rewritten without its entries (new segment created, then the old
//!    one deleted), then the pack is deleted, then `gc/state` forgets it.
//! 7. **Merge index segments** ([`merge_index`]): once there are enough small ones, they are
//!    merged into larger ones (merged segment written, then the small ones deleted), so that
//!    every command that reads the index makes a few requests instead of one per pack.
//!
//! Invariants: an index entry never points to a deleted pack (index rewritten before the pack
//! goes); every block a manifest references keeps at least one holder (a pack is condemned only
//! while its referenced blocks have another holder, counted one condemnation at a time, and
//! backups that might reference a condemned pack's other blocks are excluded by (c) and then
//! reprieve it). A crash anywhere leaves at worst an extra index segment or pack (duplicates
//! are harmless), or a condemned pack not yet swept: the next run completes the work. WAL
//! objects are not gc's business (expire removes them).
//!
//! Clocks: (c) compares generations of `gc/state`, which only gc's compare-and-swap advances,
//! never times. It used to compare a backup lease's start (the backup host's clock) with the
//! condemnation time (gc's) plus a minute; a backup host a minute ahead, or a slow
//! `gc/state` write, used that minute up, and gc could sweep a pack a running backup had
//! just deduplicated against. Only (a) reads a clock, against a grace period of hours. Readers hold no lease: a
//! restore, drill or verify that located a block in a pack before it was condemned may read
//! that pack for up to a grace period afterwards, so the grace period must outlast them too.

mod holders;
pub mod liveness;
pub mod merge_index;
pub mod repack;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;
use crate::index::seal_segment;
use crate::repo::{layout, Repository};
use crate::store::ids::PackId;
use crate::store::Timestamp;

use crate::store::condemned as state;
pub use crate::store::condemned::{condemned_packs, read_state, GcState};
pub use liveness::SpaceSummary;

/// What a backup tells gc about what it may use: from its live lease while it runs, from its
/// manifest once it has committed.
struct BackupSays<'a> {
    cluster: &'a str,
    reference: Option<&'a str>,
    gc_seen: Option<u64>,
}

impl<'a> From<&'a crate::lease::LiveLease> for BackupSays<'a> {
    fn from(l: &'a crate::lease::LiveLease) -> Self {
        BackupSays {
            cluster: &l.body.cluster,
            reference: l.body.reference.as_deref(),
            gc_seen: l.body.gc_seen,
        }
    }
}

impl<'a> From<&'a crate::store::manifest::Manifest> for BackupSays<'a> {
    fn from(m: &'a crate::store::manifest::Manifest) -> Self {
        BackupSays {
            cluster: &m.cluster,
            reference: m.reference.as_deref(),
            gc_seen: m.gc_seen,
        }
    }
}

/// What the backups the mark did not see (running ones, from their leases; ones committed
/// while gc marked, from their manifests) allow gc to sweep.
struct RunningBackups {
    /// Some backup may carry any block over: it has not said which `gc/state` it read (it is
    /// starting, or an older version wrote it), or its reference backup's manifest is not
    /// among those the mark read, so the blocks it takes from there may be referenced by no
    /// manifest gc read.
    hold_all: bool,
    /// The oldest `gc/state` generation such a backup read.
    oldest_seen: Option<u64>,
}

impl RunningBackups {
    fn of<'a>(
        backups: impl IntoIterator<Item = BackupSays<'a>>,
        manifests: &HashSet<(String, String)>,
    ) -> RunningBackups {
        let mut r = RunningBackups {
            hold_all: false,
            oldest_seen: None,
        };
        for b in backups {
            let reference_unread = b
                .reference
                .is_some_and(|id| !manifests.contains(&(b.cluster.to_string(), id.to_string())));
            r.hold_all |= b.gc_seen.is_none() || reference_unread;
            if let Some(g) = b.gc_seen {
                r.oldest_seen = Some(r.oldest_seen.map_or(g, |o| o.min(g)));
            }
        }
        r
    }

    /// Whether a running backup may use a pack condemned in gc/state generation `condemned_in`:
    /// one that read an older generation may have deduplicated against it.
    fn may_use(&self, condemned_in: u64) -> bool {
        self.hold_all || self.oldest_seen.is_some_and(|seen| seen < condemned_in)
    }
}

/// How gc runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Grace period: longer than the longest backup and restore.
    pub grace: Duration,
    /// Repack packs whose referenced bytes are below this fraction of their size (0 = never).
    pub repack_below: f64,
    /// How long to wait for another gc to finish.
    pub lease_wait: Duration,
    /// Key rotation ([`crate::reencrypt`]): every pack holding anything sealed under a key
    /// epoch older than the write epoch is treated as a repack source whatever its fill,
    /// and its referenced blocks are resealed under the write epoch as they are copied.
    pub reencrypt: bool,
    /// The bucket's default S3 Object Lock retention (`repo.object_lock_days`): a condemned
    /// pack written less than this long ago stays condemned, unswept, until it may go.
    pub object_lock: Option<Duration>,
    /// Bytes of index entries and referenced blocks the mark holds in memory; past them, on
    /// local disk ([`liveness`]).
    pub index_memory: u64,
}

impl GcOptions {
    /// Defaults with a grace period: repack packs less than half live.
    pub fn with_grace(grace: Duration) -> Self {
        GcOptions {
            grace,
            repack_below: 0.5,
            lease_wait: Duration::ZERO,
            reencrypt: false,
            object_lock: None,
            index_memory: liveness::DEFAULT_MEMORY,
        }
    }
}

/// What a GC run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Packs in the repository.
    pub packs: usize,
    /// Packs still needed (referenced or too young to judge) after this run.
    pub live_packs: usize,
    /// Packs newly condemned.
    pub condemned: Vec<PackId>,
    /// Condemned packs a backup turned out to need.
    pub reprieved: Vec<PackId>,
    /// Packs whose live blocks were copied out (with `--dry-run`: would be).
    pub repacked: Vec<PackId>,
    /// Sealed bytes copied by the repack.
    pub repack_copied_bytes: u64,
    /// Packs the repack wrote.
    pub repack_new_packs: u64,
    /// Damaged packs the repack left alone, and why (run `verify --read-data`).
    pub repack_skipped: Vec<String>,
    /// Packs deleted (with `--dry-run`: would be).
    pub swept: Vec<PackId>,
    /// Bytes reclaimed.
    pub reclaimed_bytes: u64,
    /// Bytes held by condemned packs not yet swept.
    pub pending_bytes: u64,
    /// Condemned packs whose sweep waits for a running backup that may use them.
    pub waiting_for_backups: usize,
    /// Condemned packs still under the bucket's Object Lock retention: swept once it ends.
    pub waiting_for_object_lock: usize,
    /// When the first of those leaves its retention (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_lock_until: Option<Timestamp>,
    /// Space after this run (packs written and deleted included).
    pub space: SpaceSummary,
    /// Objects listed.
    pub objects_listed: usize,
    /// Bytes read (index segments, manifests' sealed size excluded, packs being repacked).
    pub bytes_read: u64,
    /// Manifests read.
    pub manifests: usize,
    /// Index entries read.
    pub index_entries: usize,
    /// Distinct blocks the manifests reference.
    pub referenced_blocks: usize,
    /// Whether the mark's index entries or holder counts were past `--index-memory` and went
    /// to files in `TMPDIR`.
    pub mark_on_disk: bool,
    /// Index segments rewritten.
    pub index_rewritten: usize,
    /// Small index segments merged ([`merge_index`]), and the segments written in their place.
    pub index_merged: usize,
    /// Segments the merged ones were written into.
    pub index_merged_into: usize,
    /// Packs holding objects sealed under an old key epoch whose referenced blocks were
    /// copied out and resealed (key rotation only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reencrypted: Vec<PackId>,
    /// Blocks resealed under the newest key epoch (key rotation only).
    #[serde(skip_serializing_if = "is_zero")]
    pub resealed_blocks: u64,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn unix_now() -> i64 {
    Timestamp::now().unix_seconds()
}

/// Pack space for `info`: total, referenced by retained backups, and reclaimable by gc (with
/// repacking). Reads every index segment and manifest, like gc's mark.
pub async fn space_summary(repo: &Repository) -> Result<SpaceSummary> {
    liveness::RepoUsage::load(repo).await?.space()
}

/// Runs GC under the exclusive gc lease. On a dry-run repository
/// ([`Repository::into_dry_run`]) the same steps run and nothing is written or deleted; no
/// lease is taken and the repack is planned, not done (see [`crate::store::dry_run`]).
pub async fn gc(repo: &Repository, opts: &GcOptions) -> Result<GcReport> {
    // A dry run changes nothing: it neither waits for nor keeps out another gc.
    let held: Vec<crate::lease::Lease> = if repo.is_dry_run() {
        Vec::new()
    } else {
        vec![
            crate::lease::acquire_exclusive(
                repo,
                "gc",
                "",
                crate::lease::Purpose::Gc,
                opts.lease_wait,
            )
            .await?,
        ]
    };
    let result = gc_locked_with(repo, opts, &held).await.map(|(r, _)| r);
    for lease in held {
        lease.release().await;
    }
    let report = result?;
    let at = Timestamp::now();
    crate::store::status::record_repository(repo, |s| {
        s.gc_finished_at = Some(at);
        s.pack_bytes = report.space.pack_bytes;
        s.referenced_bytes = report.space.referenced_bytes;
        s.reclaimable_bytes = report.space.reclaimable_bytes;
        s.pending_bytes = report.pending_bytes;
        true
    })
    .await;
    Ok(report)
}

/// Runs gc; the caller holds the gc lease. Also returns, with `opts.reencrypt`, the packs
/// read and found sealed under the write epoch only, and the packs this run wrote.
///
/// `held`: the leases the caller holds (the gc lease among them), checked before anything
/// is condemned or deleted: a gc whose lease lapsed may have been judged dead, and another
/// gc may be running on the same packs.
pub(crate) async fn gc_locked_with(
    repo: &Repository,
    opts: &GcOptions,
    held: &[crate::lease::Lease],
) -> Result<(GcReport, HashSet<PackId>)> {
    let mut clean = HashSet::new();
    // Planned, not done, in a dry run: copying packs means downloading them whole.
    let plan_only = repo.is_dry_run();
    let mut report = GcReport {
        dry_run: plan_only,
        ..Default::default()
    };
    let grace_s = opts.grace.as_secs() as i64;
    // 1. Leases before manifests.
    let leases = crate::lease::live(repo).await?;
    report.objects_listed += leases.len();
    // 2. Mark.
    let mut usage = liveness::RepoUsage::load_within(repo, opts.index_memory).await?;
    report.objects_listed += usage.objects_listed;
    report.bytes_read += usage.bytes_read;
    report.manifests = usage.manifests;
    report.index_entries = usage.indexed_entries();
    report.referenced_blocks = usage.referenced_blocks();
    report.mark_on_disk = usage.on_disk();
    report.packs = usage.packs.len();
    let (mut state, version) = read_state(repo).await?;
    state.retain(|id| usage.packs.contains_key(id));
    // Condemnations recorded without their generation (by older versions) get the one read,
    // at or after theirs: written back below, it stops rising with every run.
    state.date_condemnations();
    let condemned: HashSet<PackId> = state.condemned.keys().copied().collect();
    usage.count_holders(&condemned)?;
    // 3. Reprieve.
    for id in &condemned {
        if usage.needed_while_condemned(id)? {
            state.forget(id);
            usage.add_holder(id)?;
            report.reprieved.push(*id);
        }
    }
    let now = unix_now();
    // An object of unknown age is never judged old enough.
    let old = |modified: Option<i64>| modified.is_some_and(|m| now - m >= grace_s);
    let uncondemned_old: Vec<PackId> = usage
        .packs
        .iter()
        .filter(|(id, p)| !state.condemned.contains_key(id) && old(p.modified))
        .map(|(id, _)| *id)
        .collect();
    // Their referenced and unreferenced bytes, once (a pass over each pack's entries): the
    // repack picks by them, the condemnation orders by them. A repack adds packs and holders
    // but changes neither what is referenced nor what these packs hold.
    let mut fill: HashMap<PackId, (u64, u64)> = HashMap::with_capacity(uncondemned_old.len());
    for id in &uncondemned_old {
        fill.insert(*id, usage.block_bytes(id)?);
    }
    // 4. Repack (with `reencrypt`: every pack holding old key epochs, resealing).
    if opts.reencrypt && !plan_only {
        let done = repack::reencrypt(repo, &mut usage, &uncondemned_old).await?;
        report.bytes_read += done.outcome.bytes_read;
        report.repack_copied_bytes = done.outcome.copied_bytes;
        report.repack_new_packs = done.outcome.new_packs;
        report.resealed_blocks = done.resealed_blocks;
        report.reencrypted = done.outcome.repacked.clone();
        report.repack_skipped = done
            .outcome
            .skipped
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        clean = done.clean;
    } else if opts.repack_below > 0.0 {
        let mut sources: Vec<PackId> = Vec::new();
        let mut live_bytes = 0;
        for id in &uncondemned_old {
            let (live, dead) = fill[id];
            let size = usage.packs[id].size;
            // A pack holding only referenced blocks is below the threshold when it is
            // small (its header and trailer outweigh its blocks); copying it gains nothing.
            if live > 0 && dead > 0 && (live as f64) < opts.repack_below * size as f64 {
                sources.push(*id);
                live_bytes += live;
            }
        }
        if plan_only {
            report.repack_copied_bytes = live_bytes;
            report.repacked = sources.clone();
        } else if !sources.is_empty() {
            let done = repack::repack(repo, &mut usage, &sources).await?;
            report.bytes_read += done.bytes_read;
            report.repack_copied_bytes = done.copied_bytes;
            report.repack_new_packs = done.new_packs;
            report.repacked = done.repacked.clone();
            report.repack_skipped = done
                .skipped
                .iter()
                .map(|(id, why)| format!("{id}: {why}"))
                .collect();
        }
    }
    // 5. Condemn, one pack at a time, most garbage first: where two packs hold the same
    // blocks (a repack source and its copy), the source goes and the dense copy stays; in id
    // order the copy could go instead and undo the repack.
    let mut by_garbage: Vec<(u128, PackId)> = Vec::with_capacity(uncondemned_old.len());
    for id in &uncondemned_old {
        let size = usage.packs.get(id).map_or(1, |p| p.size.max(1));
        let live = fill[id].0;
        by_garbage.push((live as u128 * 1_000_000 / u128::from(size), *id));
    }
    by_garbage.sort_unstable();
    let by_garbage: Vec<PackId> = by_garbage.into_iter().map(|(_, id)| id).collect();
    let condemned_at = unix_now();
    for id in &by_garbage {
        let would_empty = plan_only && report.repacked.contains(id);
        if would_empty || usage.try_condemn(id)? {
            report.condemned.push(*id);
            state.condemn(*id, condemned_at);
        }
    }
    // 6. Sweep candidates.
    let backups = RunningBackups::of(leases.iter().map(BackupSays::from), &usage.backups);
    let mut sweep: Vec<PackId> = Vec::new();
    for (&id, at) in &state.condemned {
        // The clock read at condemnation, not at the start: with a zero grace period, packs
        // condemned by this run are swept by it whatever second the repack ended in.
        if condemned_at - at < grace_s {
            continue;
        }
        if backups.may_use(state.condemned_in(&id)) {
            report.waiting_for_backups += 1;
            continue;
        }
        if let Some(lock) = opts.object_lock {
            let written = usage.packs.get(&id).and_then(|p| p.modified);
            if let Some(until) = crate::expire::locked_until(written, lock, Timestamp::now()) {
                report.waiting_for_object_lock += 1;
                if report.object_lock_until.as_ref().is_none_or(|u| until < *u) {
                    report.object_lock_until = Some(until);
                }
                continue;
            }
        }
        sweep.push(id);
    }
    // Record condemnations first: backups starting from now on avoid these packs.
    crate::lease::Lease::ensure_all_held(held)?;
    let version = state::write_state(repo, &mut state, version.as_ref(), "condemning").await?;
    // Backups that began after the leases were read: one may have read the generation before
    // that write, or a reference the mark did not see (expired since); one that has already
    // ended wrote a manifest the mark did not read. The leases again, then the manifests (a
    // backup writes its manifest before it lets its lease go): either shows each of them.
    if !sweep.is_empty() {
        let running = crate::lease::live(repo).await?;
        let committed = manifests_since(repo, &usage.backups).await?;
        let later = RunningBackups::of(
            running
                .iter()
                .map(BackupSays::from)
                .chain(committed.iter().map(BackupSays::from)),
            &usage.backups,
        );
        let before = sweep.len();
        sweep.retain(|id| !later.may_use(state.condemned_in(id)));
        report.waiting_for_backups += before - sweep.len();
        report.manifests += committed.len();
    }
    let size = |id: &PackId| usage.packs.get(id).map_or(0, |p| p.size);
    report.pending_bytes = state
        .condemned
        .keys()
        .filter(|id| !sweep.contains(id))
        .map(size)
        .sum();
    report.reclaimed_bytes = sweep.iter().map(size).sum();
    report.swept = sweep.clone();
    report.live_packs = usage.packs.len() - state.condemned.len();
    if !sweep.is_empty() {
        crate::lease::Lease::ensure_all_held(held)?;
        let doomed: HashSet<PackId> = sweep.iter().copied().collect();
        report.index_rewritten = drop_index_entries(repo, &doomed, &mut report).await?;
        for id in &sweep {
            crate::lease::Lease::ensure_all_held(held)?;
            repo.storage().delete(&layout::pack(id)).await?;
            state.forget(id);
            usage.packs.remove(id);
        }
        state::write_state(repo, &mut state, Some(&version), "sweeping").await?;
    }
    // 7. Merge small index segments.
    let merged = merge_index::merge_small_segments(repo, opts.object_lock, held).await?;
    report.objects_listed += merged.listed;
    report.bytes_read += merged.bytes_read;
    report.index_merged = merged.replaced;
    report.index_merged_into = merged.written;
    report.space = usage.space()?;
    Ok((report, clean))
}

/// The manifests (without their file lists) of backups not among `read`: committed while gc
/// marked.
async fn manifests_since(
    repo: &Repository,
    read: &HashSet<(String, String)>,
) -> Result<Vec<crate::store::manifest::Manifest>> {
    let mut out = Vec::new();
    for c in crate::store::manifest::cluster_names(repo).await? {
        for id in crate::store::manifest::list_ids(repo, &c).await? {
            if read.contains(&(c.clone(), id.clone())) {
                continue;
            }
            // The head only: its file list is parsed past, never held (a manifest of a
            // million files does not land in memory whole at the end of the mark).
            match crate::store::manifest::load_head(repo, &c, &id).await {
                Ok(m) => out.push(m),
                // Expired since the listing: it carries nothing into the future.
                Err(crate::error::Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// Rewrites every index segment naming a doomed pack without those entries (new segment
/// first, then the old one deleted). Returns how many segments were rewritten.
async fn drop_index_entries(
    repo: &Repository,
    doomed: &HashSet<PackId>,
    report: &mut GcReport,
) -> Result<usize> {
    let segments = repo.storage().list(layout::INDEX_PREFIX).await?;
    report.objects_listed += segments.len();
    let mut rewritten = 0;
    for seg in segments {
        let sealed = repo.storage().get(&seg.key).await?;
        report.bytes_read += sealed.len() as u64;
        let entries = crate::store::blocks::open_index_segment(repo, &seg.key, &sealed)?;
        if !entries.iter().any(|e| doomed.contains(&e.pack_id)) {
            continue;
        }
        let kept: Vec<_> = entries
            .into_iter()
            .filter(|e| !doomed.contains(&e.pack_id))
            .collect();
        if !kept.is_empty() {
            let (id, new) = seal_segment(repo.codec(), &kept);
            repo.storage()
                .put_create(&layout::index_segment(&id), bytes::Bytes::from(new))
                .await?;
        }
        repo.storage().delete(&seg.key).await?;
        rewritten += 1;
    }
    Ok(rewritten)
}

#[cfg(test)]
mod tests;
