//! `pgcairn expire`: apply the retention policy to backups and WAL.
//!
//! Order: decide (see [`crate::retention`]); delete the manifests of expired backups (the
//! manifest is a backup's commit record: once it is gone the backup is gone, and since every
//! backup is self-contained no other backup is affected); then delete WAL no retained backup
//! needs ([`crate::retention::wal_plan`]: below the oldest retained backup's start, or with
//! `pitr_window` also between older backups' consistency ranges, and never above the start a
//! running backup recorded in its lease), on every timeline (history files are kept); then
//! streamed WAL chunks the archive made redundant or that no retained backup needs
//! ([`crate::walstream::sweep`]; never the newest tail). One expire per cluster runs at a time
//! (lease `leases/expire-<cluster>`), and it reads the backup leases under it: an unreadable
//! lease stops it, as it stops gc and backups ([`crate::lease`]). For each WAL file the
//! pointer goes first, then its data, so a crash in between leaves garbage, never a pointer to
//! missing data. Packs and index entries only expired backups used are garbage for `gc`.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::Result;
use crate::repo::{layout, Repository};
use crate::retention::{decide, wal_plan, Candidate, Decision, Policy, WalNeed};
use crate::storage::ObjectKey;
use crate::store::head;
use crate::store::ids::BackupId;
use crate::store::manifest;
use crate::store::sealed::{self, DocKind};
use crate::store::Timestamp;
use crate::types::WalFileName;

/// What expire decided and did (on a dry-run repository: would have done).
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    /// Per backup, oldest first.
    pub backups: Vec<Decision>,
    /// WAL files removed (or to remove).
    pub wal_files: usize,
    /// Runs of archived WAL per timeline, each kept or removed with its reason.
    pub wal_ranges: Vec<WalRange>,
    /// Streamed WAL (`wal-receive` chunks) per segment, kept or removed with its reason.
    pub streamed_tails: Vec<crate::walstream::sweep::TailDecision>,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

/// A run of consecutive archived WAL files with one decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WalRange {
    /// Timeline (hex, as in file names).
    pub timeline: String,
    /// First file.
    pub first: String,
    /// Last file.
    pub last: String,
    /// Files in the run.
    pub files: usize,
    /// Kept or removed.
    pub keep: bool,
    /// The rule.
    pub reason: String,
}

/// What a pin says (sealed for its name, see [`crate::store::sealed`]: a pin copied to
/// another backup's name is refused, naming it).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Pin {
    /// The pinned backup.
    pub backup_id: String,
    /// When it was pinned.
    pub pinned_at: Timestamp,
}

/// Whether a backup is pinned.
pub async fn is_pinned(repo: &Repository, cluster: &str, id: &str) -> Result<bool> {
    let pin: Option<Pin> = sealed::read(repo, DocKind::Pin, &layout::pin(cluster, id)).await?;
    Ok(pin.is_some())
}

/// Pins or unpins a backup (it must exist) while holding the cluster's expire lease, so that
/// a running expire, which read the pins when it listed the backups, cannot remove a backup
/// pinned after that: the pin waits (up to `lease_wait`) for it to finish, and the next
/// expire sees it.
pub async fn pin(
    repo: &Repository,
    cluster: &str,
    id: &str,
    pinned: bool,
    lease_wait: std::time::Duration,
) -> Result<()> {
    let name = format!("expire-{cluster}");
    crate::lease::exclusive(
        repo,
        &name,
        cluster,
        crate::lease::Purpose::Pin,
        lease_wait,
        set_pin(repo, cluster, id, pinned),
    )
    .await
}

/// Pins or unpins a backup (it must exist), without the expire lease: for the newest backup
/// right after it is taken (expire never removes the newest), and for tests.
///
/// The catalog head records the pin too, after the pin object is written and before it is
/// deleted: the head never names a pin that was not made, and a pin object deleted outside
/// pgcairn is reported (and the backup still kept).
pub async fn set_pin(repo: &Repository, cluster: &str, id: &str, pinned: bool) -> Result<()> {
    let seg_size = crate::store::cluster::read(repo, cluster)
        .await?
        .map(|r| r.wal_segment_size)
        .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
    let bid = BackupId::new(id.to_string());
    let key = layout::pin(cluster, id);
    // Only an existing backup is pinned. Unpinning also works for a pin whose backup is gone
    // (its object, or its entry in the head, is left), not for a name that is neither.
    let exists = manifest::load_head(repo, cluster, id).await.map(|_| ());
    if pinned {
        exists?;
        let pin = Pin {
            backup_id: id.to_string(),
            pinned_at: Timestamp::now(),
        };
        // Pinning twice keeps the first pin.
        repo.storage()
            .put_create(&key, sealed::seal(repo, DocKind::Pin, &key, &pin))
            .await?;
        head::update(repo, cluster, seg_size, |h| h.pinned.insert(bid.clone())).await?;
    } else {
        if let Err(e) = exists {
            let in_head = head::read(repo, cluster)
                .await?
                .is_some_and(|(h, _)| h.pinned.contains(&bid));
            if !in_head && !is_pinned(repo, cluster, id).await? {
                return Err(e);
            }
        }
        head::update(repo, cluster, seg_size, |h| h.pinned.remove(&bid)).await?;
        match repo.storage().delete(&key).await {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Records the run and what the catalog head now holds in the cluster's status object.
async fn record_in_status(
    repo: &Repository,
    cluster: &str,
    seg_size: u64,
    decisions: &[Decision],
    wal_files: usize,
) {
    use crate::store::status::{self, ExpireStatus, RetainedStatus};
    let retained = match head::update(repo, cluster, seg_size, |_| false).await {
        Ok(h) => Some(RetainedStatus::from_head(&h)),
        Err(e) => {
            tracing::warn!("could not read the catalog head of {cluster:?} for its status: {e}");
            None
        }
    };
    let done = ExpireStatus {
        finished_at: Timestamp::now(),
        backups_removed: decisions.iter().filter(|d| !d.keep).count() as u64,
        wal_files_removed: wal_files as u64,
    };
    status::record(repo, cluster, "expire", |s| {
        s.expire = Some(done.clone());
        if let Some(r) = &retained {
            s.retained = Some(r.clone());
        }
        true
    })
    .await;
}

/// Applies `policy` to `cluster`, holding the cluster's exclusive expire lease. On a dry-run
/// repository ([`Repository::into_dry_run`]) the same steps run, nothing is deleted or
/// written, and no lease is taken.
pub async fn expire(
    repo: &Repository,
    cluster: &str,
    policy: &Policy,
    lease_wait: std::time::Duration,
) -> Result<ExpireReport> {
    if repo.is_dry_run() {
        return expire_locked(repo, cluster, policy, None).await;
    }
    let name = format!("expire-{cluster}");
    let lease = crate::lease::acquire_exclusive(
        repo,
        &name,
        cluster,
        crate::lease::Purpose::Expire,
        lease_wait,
    )
    .await?;
    let result = expire_locked(repo, cluster, policy, Some(&lease)).await;
    lease.release().await;
    result
}

/// [`expire`]'s work under `lease` (`None` on a dry run). What it decided stands only while
/// the lease holds: a run stalled past the lease's expiry (a paused VM, an unreachable store)
/// may have been taken over by `pin`, which then pinned a backup this run had listed as
/// unpinned; so the lease is checked before the head is changed and before each deletion.
async fn expire_locked(
    repo: &Repository,
    cluster: &str,
    policy: &Policy,
    lease: Option<&crate::lease::Lease>,
) -> Result<ExpireReport> {
    let held = || lease.map_or(Ok(()), crate::lease::Lease::ensure_held);
    let mut candidates = Vec::new();
    let mut needs = Vec::new();
    let seg_size = crate::store::cluster::read(repo, cluster)
        .await?
        .map(|r| r.wal_segment_size)
        .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
    // A pin the head records counts even when its object is gone (deleted outside pgcairn:
    // `verify` and `info` report that).
    let head_pins = match head::read(repo, cluster).await? {
        Some((h, _)) => h.pinned,
        None => Default::default(),
    };
    let mut unrecorded_pins = Vec::new();
    let mut bases = Vec::new();
    for id in manifest::list_ids(repo, cluster).await? {
        let m = manifest::load_head(repo, cluster, &id).await?;
        let stop_time = m.stop_time.datetime();
        let in_head = head_pins.contains(&BackupId::new(id.clone()));
        let has_object = is_pinned(repo, cluster, &id).await?;
        if has_object && !in_head {
            unrecorded_pins.push(BackupId::new(id.clone()));
        }
        candidates.push(Candidate {
            pinned: in_head || has_object,
            id: id.clone(),
            backup_type: m.backup_type,
            stop_time,
        });
        bases.push(Base {
            id: id.clone(),
            timeline: m.timeline,
            stop_lsn: m.stop_lsn,
            stop_time,
        });
        needs.push(WalNeed {
            id,
            stop_time,
            start_seg: m.start_lsn.segment_no(seg_size),
            stop_seg: m.stop_lsn.segment_no(seg_size),
        });
    }
    // Pins made before the head recorded pins, or dropped from it by an older pgcairn that
    // rewrote the head: recorded now (this run holds the expire lease, which `pin` takes).
    if !unrecorded_pins.is_empty() && !repo.is_dry_run() {
        head::update(repo, cluster, seg_size, |h| {
            let before = h.pinned.len();
            h.pinned.extend(unrecorded_pins.iter().cloned());
            h.pinned.len() != before
        })
        .await?;
    }
    let now = Timestamp::now();
    let mut decisions = decide(&candidates, policy, now.datetime());
    if let Some(lock) = policy.object_lock {
        // A manifest still under the bucket's Object Lock retention stays (its backup with
        // it, and the WAL that backup needs): deleting it would only hide it behind a delete
        // marker while its version stays.
        let written: HashMap<String, i64> = repo
            .storage()
            .list(&layout::backups_prefix(cluster))
            .await?
            .into_iter()
            .filter_map(|o| {
                let id = o
                    .key
                    .as_str()
                    .strip_prefix(&layout::backups_prefix(cluster))?
                    .strip_suffix("/manifest")?
                    .to_string();
                Some((id, o.modified?))
            })
            .collect();
        for d in decisions.iter_mut().filter(|d| !d.keep) {
            if let Some(until) = locked_until(written.get(&d.id).copied(), lock, now) {
                d.keep = true;
                d.reasons = vec![format!(
                    "under the bucket's Object Lock retention until {until} (repo.object_lock_days): expire removes it after that"
                )];
            }
        }
    }
    // A backup a restore or a drill is recovering from stays, with the WAL after it
    // ([`crate::hold`]).
    let (holds, ended_holds) = crate::hold::list(repo, cluster).await?;
    for h in &holds {
        if let Some(d) = decisions.iter_mut().find(|d| d.id == h.backup_id) {
            if !d.keep {
                d.keep = true;
                d.reasons.clear();
            }
            d.reasons.push(h.describe());
        }
    }
    // Every archived WAL file; history files always stay.
    let pointers = repo
        .storage()
        .list(&layout::wal_pointer_prefix(cluster))
        .await?;
    // Each archived WAL file's name, with when it was archived.
    let mut listed: Vec<(WalFileName, Option<i64>)> = pointers
        .iter()
        .filter_map(|o| {
            Some((
                layout::parse_wal_pointer(cluster, o.key.as_str())?.1,
                o.modified,
            ))
        })
        .collect();
    let live = live_timelines(&listed, &bases);
    // Timelines whose history file the repository holds (one never archived, as for a
    // cluster already past timeline 1 when pgcairn was set up, is not read).
    let histories: Vec<u32> = listed
        .iter()
        .filter(|(n, _)| matches!(n, WalFileName::History { .. }))
        .map(|(n, _)| n.timeline().0)
        .collect();
    let window_edge = policy.pitr_window.map(|w| {
        now.datetime()
            .saturating_sub(time::Duration::try_from(w).unwrap_or(time::Duration::MAX))
    });
    let LiveBases {
        newest: bases_of_live,
        window: window_bases,
    } = keep_bases_of(
        repo,
        cluster,
        seg_size,
        &live,
        &histories,
        &bases,
        window_edge,
        &mut decisions,
    )
    .await?;
    let retained: Vec<WalNeed> = needs
        .into_iter()
        .filter(|n| decisions.iter().any(|d| d.keep && d.id == n.id))
        .collect();
    let mut plan = wal_plan(&retained, policy.pitr_window, now.datetime());
    // A backup still running needs the WAL from its start: read after this run took its
    // lease, so a backup that recorded its start before then is seen here, and one recording
    // it later checks its WAL only once this run has ended ([`crate::backup`]).
    let running: Vec<(u64, String)> = crate::lease::live(repo)
        .await?
        .into_iter()
        .filter(|l| l.body.cluster == cluster)
        .filter_map(|l| {
            let start = crate::types::Lsn(l.body.start_lsn?);
            Some((
                start.segment_no(seg_size),
                format!(
                    "{} (a backup running on host {}, from its start at {start})",
                    l.body.backup_id, l.body.host
                ),
            ))
        })
        .collect();
    if let Some(p) = plan.as_mut() {
        for (seg, who) in &running {
            if *seg < p.pitr_from.0 {
                p.pitr_from = (*seg, who.clone());
            }
        }
        for n in &retained {
            let why = if holds.iter().any(|h| h.backup_id == n.id) {
                "held by a recovery"
            } else if bases_of_live.contains(&n.id) {
                "the newest base of the live timeline"
            } else if window_bases.contains(&n.id) {
                "the start of pitr_window on the live timeline"
            } else {
                continue;
            };
            if n.start_seg < p.pitr_from.0 {
                p.pitr_from = (n.start_seg, format!("{} ({why})", n.id));
            }
        }
    }
    let pointer_written: HashMap<String, Option<i64>> = pointers
        .iter()
        .map(|o| (o.key.as_str().to_string(), o.modified))
        .collect();
    listed.sort_by_key(|(n, _)| (n.timeline(), n.to_string()));
    let names: Vec<WalFileName> = listed.into_iter().map(|(n, _)| n).collect();
    let mut wal: Vec<WalFileName> = Vec::new();
    let mut ranges: Vec<WalRange> = Vec::new();
    for name in names {
        let (mut keep, mut reason) = match (&plan, name.segment()) {
            (_, None) => (true, "timeline history: always kept".to_string()),
            (None, Some(_)) => (true, "no retained backup: nothing removed".to_string()),
            (Some(p), Some(seg)) => match p.keep_reason(seg.absolute(seg_size)) {
                Some(r) => (true, r),
                None => (false, "no retained backup needs it".to_string()),
            },
        };
        if let Some(lock) = policy.object_lock.filter(|_| !keep) {
            let written = pointer_written
                .get(layout::wal_pointer(cluster, &name).as_str())
                .copied()
                .flatten();
            if locked_until(written, lock, now).is_some() {
                keep = true;
                reason = format!(
                    "no retained backup needs it, but it is under the bucket's Object Lock retention ({} days \
                     after it was archived, repo.object_lock_days): expire removes it after that",
                    lock.as_secs() / 86_400
                );
            }
        }
        if !keep {
            wal.push(name.clone());
        }
        let tli = name.timeline().to_string();
        match ranges.last_mut() {
            Some(r) if r.timeline == tli && r.keep == keep && r.reason == reason => {
                r.last = name.to_string();
                r.files += 1;
            }
            _ => ranges.push(WalRange {
                timeline: tli,
                first: name.to_string(),
                last: name.to_string(),
                files: 1,
                keep,
                reason,
            }),
        }
    }
    let archived: std::collections::HashSet<String> = pointers
        .iter()
        .filter_map(|o| layout::parse_wal_pointer(cluster, o.key.as_str()))
        .map(|(_, n)| n.to_string())
        .collect();
    let tails = crate::walstream::sweep::decide(repo, cluster, seg_size, &archived, |segno| {
        let p = plan.as_ref()?;
        match p.keep_reason(segno) {
            Some(_) => None,
            None => Some("no retained backup needs it".to_string()),
        }
    })
    .await?;
    // The catalog head forgets what goes first: a crash after this leaves objects the
    // head no longer lists (garbage), never a head listing what was deleted on purpose.
    let gone: Vec<BackupId> = decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| BackupId::new(d.id.clone()))
        .collect();
    let gone_wal: Vec<(u32, u64)> = wal
        .iter()
        .filter_map(|n| match n {
            WalFileName::Segment { tli, segno } => Some((tli.0, segno.absolute(seg_size))),
            _ => None,
        })
        .collect();
    crate::pause_point::pause("expire:removing");
    if !gone.is_empty() || !gone_wal.is_empty() {
        held()?;
        head::update(repo, cluster, seg_size, |h| {
            let mut changed = false;
            for id in &gone {
                changed |= h.backups.remove(id).is_some();
            }
            for (t, s) in &gone_wal {
                changed |= h.forget_segments(*t, *s, *s);
            }
            changed
        })
        .await?;
    }
    for d in decisions.iter().filter(|d| !d.keep) {
        held()?;
        manifest::delete(repo, cluster, &d.id).await?;
    }
    if !wal.is_empty() {
        // Each file's data objects by its exact name: a prefix `<segment>.` also matched
        // that segment's `.partial` and `.backup` files, whose records may stay (written
        // later, under Object Lock) and would then name deleted data.
        let mut data: HashMap<WalFileName, Vec<ObjectKey>> = HashMap::new();
        for o in repo
            .storage()
            .list(&layout::wal_data_prefix(cluster))
            .await?
        {
            if let Some((_, name)) = layout::parse_wal_data(cluster, o.key.as_str()) {
                data.entry(name).or_default().push(o.key);
            }
        }
        for name in &wal {
            held()?;
            repo.storage()
                .delete(&layout::wal_pointer(cluster, name))
                .await?;
            for key in data.get(name).into_iter().flatten() {
                repo.storage().delete(key).await?;
            }
        }
    }
    held()?;
    crate::walstream::sweep::remove(repo, &tails).await?;
    for k in &ended_holds {
        crate::hold::remove_if_ended(repo, k).await?;
    }
    record_in_status(repo, cluster, seg_size, &decisions, wal.len()).await;
    Ok(ExpireReport {
        backups: decisions,
        wal_files: wal.len(),
        wal_ranges: ranges,
        streamed_tails: tails,
        dry_run: repo.is_dry_run(),
    })
}

/// When an object written at `written` (unix seconds; `None`: unknown, so assumed just
/// written) leaves a retention of `lock`, if that is after `now`.
pub fn locked_until(
    written: Option<i64>,
    lock: std::time::Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let written = written.unwrap_or(now.unix_seconds());
    let until = written.saturating_add(lock.as_secs() as i64);
    (until > now.unix_seconds()).then(|| Timestamp::from_unix_seconds(until))
}

/// What [`keep_a_base_of`] needs to know of a backup.
struct Base {
    id: String,
    timeline: u32,
    stop_lsn: crate::types::Lsn,
    stop_time: time::OffsetDateTime,
}

/// The timelines WAL is archived on now: the one archived to last (ties: the higher one), and
/// every one archived to since the newest backup ended. Partial segments and backup history
/// files do not count: a promoted standby archives its old timeline's `.partial` after the
/// new timeline's history file.
fn live_timelines(listed: &[(WalFileName, Option<i64>)], bases: &[Base]) -> Vec<u32> {
    let mut last: HashMap<u32, i64> = HashMap::new();
    for (n, modified) in listed {
        if matches!(
            n,
            WalFileName::Partial { .. } | WalFileName::BackupHistory { .. }
        ) {
            continue;
        }
        let at = last.entry(n.timeline().0).or_insert(i64::MIN);
        *at = (*at).max(modified.unwrap_or(i64::MIN));
    }
    let newest_backup = bases
        .iter()
        .map(|b| b.stop_time.unix_timestamp())
        .max()
        .unwrap_or(i64::MIN);
    let mut live: Vec<u32> = last
        .iter()
        .filter(|(_, at)| **at >= newest_backup)
        .map(|(tli, _)| *tli)
        .collect();
    if let Some((_, tli)) = last.iter().map(|(tli, at)| (*at, *tli)).max() {
        live.push(tli);
    }
    live.sort_unstable();
    live.dedup();
    live
}

/// For each of the `live` timelines, the newest retained backup a restore along it can start
/// from (the newest one on its history, kept now if no rule kept it): their ids, whose WAL
/// from their start must stay.
///
/// Why: a point-in-time recovery that promotes forks a new timeline below the newer backups
/// of the old one, which are then off its history (PostgreSQL refuses to start from them).
/// Its only base is the backup the recovery started from, held for a day ([`crate::hold`]).
/// Retention counts backups, not timelines: once the hold ended, before the first backup of
/// the new timeline (a failing nightly backup, a weekend), expire removed that base and its
/// WAL (or, with `pitr_window`, kept the backup and only its consistency range), and the
/// cluster running on the new timeline had no restorable backup at all. Live timelines only
/// ([`live_timelines`]): a clone that promoted into the repository and stopped must not keep
/// an old backup and its WAL for ever.
///
/// With `pitr_window`, the same holds for the window's first moment (`window_edge`): the
/// backup a recovery to it along a live timeline starts from is the newest one on that
/// timeline's history that ended before it ([`LiveBases::window`]). [`decide`] picks the
/// newest by time alone, which after a fork may be a backup of the old timeline, off the new
/// one's history: the WAL from the fork's true base to the new timeline's first backup then
/// went, and recovery to a moment inside the window along the live timeline was lost.
///
/// A history file the repository lists but that cannot be read fails the run (nothing is
/// deleted): without it expire cannot tell which backup the timeline needs. One it does not
/// hold at all (never archived) is warned about: the timeline's own backups still count.
#[allow(clippy::too_many_arguments)]
async fn keep_bases_of(
    repo: &Repository,
    cluster: &str,
    seg_size: u64,
    live: &[u32],
    histories: &[u32],
    bases: &[Base],
    window_edge: Option<time::OffsetDateTime>,
    decisions: &mut [Decision],
) -> Result<LiveBases> {
    let mut kept = LiveBases::default();
    if bases.is_empty() {
        return Ok(kept);
    }
    for &tli in live {
        let mut view = crate::recovery::ArchiveView::new(seg_size);
        if tli > 1 && !histories.contains(&tli) {
            tracing::warn!(
                "timeline {tli} has WAL but no history file in the repository: expire cannot \
                 tell which older backup a restore along it would start from"
            );
        } else if tli > 1 {
            let name = WalFileName::History {
                tli: crate::types::TimelineId(tli),
            };
            match crate::archive::get::get_wal_file(repo, cluster, &name).await {
                Ok(text) => {
                    view.histories.insert(
                        tli,
                        crate::recovery::parse_history(&String::from_utf8_lossy(&text)),
                    );
                }
                Err(e) => {
                    tracing::error!(
                        "reading the history file of timeline {tli}: expire removes nothing while \
                         it cannot tell which backup that timeline needs (`pgcairn verify` checks \
                         the archive)"
                    );
                    return Err(e);
                }
            }
        }
        if let Some(id) = keep_a_base_of(&view, tli, bases, decisions) {
            if !kept.newest.contains(&id) {
                kept.newest.push(id);
            }
        }
        if let Some(edge) = window_edge {
            if let Some(id) = keep_window_base_of(&view, tli, bases, edge, decisions) {
                if !kept.window.contains(&id) {
                    kept.window.push(id);
                }
            }
        }
    }
    Ok(kept)
}

/// The backups [`keep_bases_of`] keeps for the live timelines.
#[derive(Debug, Default)]
struct LiveBases {
    /// The newest base of each live timeline: recovery to its present starts there.
    newest: Vec<String>,
    /// Where recovery along each live timeline to the first moment of `pitr_window` starts.
    window: Vec<String>,
}

/// The newest backup on timeline `tli`'s history that ended at or before `edge` (the first
/// moment of `pitr_window`), kept now if no rule kept it; `None` when none did (the window
/// then starts at the timeline's oldest backup, as it does without a fork).
fn keep_window_base_of(
    view: &crate::recovery::ArchiveView,
    tli: u32,
    bases: &[Base],
    edge: time::OffsetDateTime,
    decisions: &mut [Decision],
) -> Option<String> {
    let base = bases
        .iter()
        .filter(|b| b.stop_time <= edge && view.on_path(tli, b.timeline, b.stop_lsn))
        .max_by_key(|b| (b.stop_time, b.stop_lsn))?;
    let d = decisions.iter_mut().find(|d| d.id == base.id)?;
    if !d.keep {
        d.keep = true;
        d.reasons = vec![format!(
            "point-in-time recovery along timeline {tli} to the start of pitr_window starts \
             from it (the newest backup on that timeline's history before the window)"
        )];
    }
    Some(base.id.clone())
}

/// The newest retained backup on timeline `tli`'s history (`view` holds that history), kept
/// now if no rule kept it; `None` when no backup lies on it.
fn keep_a_base_of(
    view: &crate::recovery::ArchiveView,
    tli: u32,
    bases: &[Base],
    decisions: &mut [Decision],
) -> Option<String> {
    let mut on_path: Vec<&Base> = bases
        .iter()
        .filter(|b| view.on_path(tli, b.timeline, b.stop_lsn))
        .collect();
    on_path.sort_by_key(|b| (b.stop_time, b.stop_lsn));
    let kept = |b: &&&Base| decisions.iter().any(|d| d.keep && d.id == b.id);
    if let Some(b) = on_path.iter().rev().find(kept) {
        return Some(b.id.clone());
    }
    let newest = on_path.last()?;
    let d = decisions.iter_mut().find(|d| d.id == newest.id)?;
    d.keep = true;
    d.reasons = vec![format!(
        "the newest backup on the history of timeline {tli}, which WAL is archived on and \
         which has no backup of its own yet: kept, with the WAL after it, until one is (take a \
         backup now)"
    )];
    Some(newest.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
    use crate::pg::wal_header::tests::fake_segment;
    use crate::test_support::manifest;

    const SEG: u64 = 1 << 20; // 1 MiB segments keep the test light

    async fn push(repo: &Repository, tli: u32, n: u64) {
        let name: WalFileName = format!("{tli:08X}00000000{n:08X}").parse().unwrap();
        let data = fake_segment(9, tli, n * SEG, SEG as u32, SEG as usize);
        push_wal_file(repo, "main", &name, WalSource::Bytes(data))
            .await
            .unwrap();
    }

    /// Segments 1..=10 archived, and two full backups: the older starting in segment 3, the
    /// newer in segment 9.
    async fn two_backups(repo: &Repository) -> (&'static str, &'static str) {
        for n in 1..=10 {
            push(repo, 1, n).await;
        }
        let (old, new) = ("20261101-000000F", "20261120-000000F");
        for (id, lsn, t) in [
            (old, "0/300028", "2026-11-01T00:00:00Z"),
            (new, "0/900028", "2026-11-20T00:00:00Z"),
        ] {
            manifest::save(repo, &manifest(id, lsn, lsn, t, &[]))
                .await
                .unwrap();
        }
        (old, new)
    }

    async fn archived(repo: &Repository) -> Vec<String> {
        let mut v: Vec<String> = repo
            .storage()
            .list(&layout::wal_pointer_prefix("main"))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| layout::parse_wal_pointer("main", o.key.as_str()))
            .map(|(_, n)| n.to_string())
            .collect();
        v.sort();
        v
    }

    /// Two full backups of timeline 1: the older in segment 3 (Nov 1), the newer in segment 9
    /// (Nov 20). Returns their ids.
    async fn old_and_new(repo: &Repository) -> (&'static str, &'static str) {
        let (old, new) = ("20261101-000000F", "20261120-000000F");
        save_full(
            repo,
            old,
            ("0/300028", "0/300100"),
            "2026-11-01T00:00:00Z",
            1,
        )
        .await;
        save_full(
            repo,
            new,
            ("0/900028", "0/900100"),
            "2026-11-20T00:00:00Z",
            1,
        )
        .await;
        (old, new)
    }

    /// The ids of the backups `report` keeps.
    fn kept_ids(report: &ExpireReport) -> Vec<&str> {
        report
            .backups
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    /// The backup a restore with no target or timeline chooses (the latest timeline).
    async fn default_restore_base(repo: &Repository) -> crate::store::manifest::Manifest {
        let target = crate::recovery::Target::EndOfArchive;
        let latest = crate::recovery::TimelineTarget::Latest;
        let (chosen, _) = crate::recovery::plan(repo, "main", None, &target, latest)
            .await
            .unwrap();
        chosen
    }

    /// Saves a full backup `id` of timeline `tli` from `start` to `stop`, ended at `t`.
    async fn save_full(
        repo: &Repository,
        id: &str,
        (start, stop): (&str, &str),
        t: &str,
        tli: u32,
    ) {
        let mut m = manifest(id, start, stop, t, &[]);
        m.timeline = tli;
        manifest::save(repo, &m).await.unwrap();
    }

    /// Timeline 2 forked from timeline 1 at `lsn`: its history file and segments `segments`
    /// archived. Returns the history file's name.
    async fn fork(
        repo: &Repository,
        lsn: &str,
        segments: std::ops::RangeInclusive<u64>,
    ) -> WalFileName {
        let history: WalFileName = "00000002.history".parse().unwrap();
        let text = format!("1\t{lsn}\tbefore the target\n");
        push_wal_file(repo, "main", &history, WalSource::Bytes(text.into_bytes()))
            .await
            .unwrap();
        for n in segments {
            push(repo, 2, n).await;
        }
        history
    }

    /// Dates the WAL archived on timeline `tli` back to `at` (RFC 3339): when its primary
    /// archived it, for the rule that keeps a base for live timelines.
    async fn archived_on(
        repo: &Repository,
        mem: &crate::storage::MemoryStorage,
        tli: u32,
        at: &str,
    ) {
        let keys = repo
            .storage()
            .list(&layout::wal_pointer_prefix("main"))
            .await
            .unwrap();
        let at = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp();
        let prefix = format!("{tli:08X}");
        for o in &keys {
            let name = o.key.as_str().rsplit('/').next().unwrap();
            if name.starts_with(&prefix) {
                mem.backdate(o.key.as_str(), o.modified.unwrap() - at);
            }
        }
    }

    /// An expire whose lease stopped being refreshed (a stalled run, an unreachable store)
    /// for longer than others wait before taking it over deletes nothing: `pin` may have
    /// taken the lease meanwhile and pinned a backup this run listed as unpinned.
    #[tokio::test(start_paused = true)]
    async fn an_expire_that_lost_its_lease_deletes_nothing() {
        use crate::test_support::{LeaseFaults, SlowReads};
        use std::sync::Arc;
        let (mem, repo) = memory_repo().await;
        two_backups(&repo).await;
        let before = archived(&repo).await;
        // Every read takes 30 s, and no refresh of the lease lands.
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            fail_swaps: 1000.into(),
            ..Default::default()
        });
        let slow = crate::test_support::open_with(Arc::new(SlowReads::new(
            faults,
            std::time::Duration::from_secs(30),
        )))
        .await;
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        let err = expire(&slow, "main", &policy, Default::default())
            .await
            .expect_err("expired without its lease")
            .to_string();
        assert!(
            err.contains("leases/expire-main") && err.contains("no longer protects"),
            "{err}"
        );
        assert_eq!(manifest::list_ids(&repo, "main").await.unwrap().len(), 2);
        assert_eq!(archived(&repo).await, before);
        // With its refreshes landing, the same expire removes the older backup.
        let report = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(report.backups.iter().filter(|b| !b.keep).count(), 1);
    }

    /// A restore of the older of two backups holds it: expire keeps it and the WAL from its
    /// start onward (pitr_window notwithstanding) while the hold lasts, and removes both, and
    /// the ended hold, after.
    #[tokio::test]
    async fn a_held_backup_and_the_wal_after_it_stay_while_a_recovery_may_need_them() {
        let (_mem, repo) = memory_repo().await;
        let (old, new) = two_backups(&repo).await;
        let before = archived(&repo).await;
        let day = std::time::Duration::from_secs(86_400);
        let hold = crate::hold::take(&repo, "main", old, day, Default::default())
            .await
            .unwrap();
        let policy = Policy {
            full: Some(1),
            pitr_window: Some(std::time::Duration::from_secs(1)),
            ..Policy::default()
        };
        let report = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        let d = report.backups.iter().find(|d| d.id == old).unwrap();
        assert!(d.keep && d.reasons[0].contains("recovery"), "{d:?}");
        // Only what is below its start went (segments 1 and 2).
        assert_eq!(archived(&repo).await, before[2..]);
        // The hold ended: the backup and the WAL below the newer one go, and so does the hold.
        crate::hold::extend(&repo, "main", old, &hold, Default::default())
            .await
            .unwrap();
        expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(
            manifest::list_ids(&repo, "main").await.unwrap(),
            vec![new.to_string()]
        );
        assert_eq!(
            archived(&repo).await.first().map(String::as_str),
            Some("000000010000000000000009")
        );
        assert_eq!(
            crate::hold::list(&repo, "main").await.unwrap(),
            (vec![], vec![])
        );
    }

    /// A backup still running (from a standby, say) whose start lies below the newest stored
    /// backup's: the WAL from the start its lease records stays while the lease is live, and
    /// goes once the backup has ended.
    #[tokio::test]
    async fn a_running_backup_keeps_the_wal_from_the_start_in_its_lease() {
        let (_mem, repo) = memory_repo().await;
        let (old, new) = two_backups(&repo).await;
        let before = archived(&repo).await;
        let running = crate::lease::acquire_backup(
            &repo,
            "main",
            "20261121-000000F",
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(
            running
                .record_start(crate::types::Lsn(5 * SEG + 0x28))
                .await
        );
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        let report = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(kept_ids(&report), [new], "{old} expires");
        assert_eq!(archived(&repo).await, before[4..], "segments 1 to 4 go");
        let kept = report.wal_ranges.iter().find(|r| r.keep).unwrap();
        assert!(
            kept.reason
                .contains("20261121-000000F (a backup running on host"),
            "{kept:?}"
        );
        running.release().await;
        expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(
            archived(&repo).await.first().map(String::as_str),
            Some("000000010000000000000009")
        );
    }

    /// A pin waits for a running expire: that expire read the pins before the pin landed.
    #[tokio::test]
    async fn a_pin_waits_for_a_running_expire() {
        let (_mem, repo) = memory_repo().await;
        crate::store::manifest::save(
            &repo,
            &manifest(
                "20261124-000000F",
                "0/1000000",
                "0/1000100",
                "2026-11-24T00:00:01Z",
                &[],
            ),
        )
        .await
        .unwrap();
        let running = crate::lease::acquire_exclusive(
            &repo,
            "expire-main",
            "main",
            crate::lease::Purpose::Expire,
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
        let e = pin(
            &repo,
            "main",
            "20261124-000000F",
            true,
            std::time::Duration::from_millis(300),
        )
        .await
        .expect_err("an expire holds the lease");
        assert!(
            !is_pinned(&repo, "main", "20261124-000000F").await.unwrap(),
            "{e}"
        );
        running.release().await;
        pin(
            &repo,
            "main",
            "20261124-000000F",
            true,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(is_pinned(&repo, "main", "20261124-000000F").await.unwrap());
    }

    /// A pin object deleted outside pgcairn: the catalog head still records the pin, so
    /// expire keeps the backup and the audit names the missing object; unpinning removes the
    /// pin from both, and the backup then expires.
    #[tokio::test]
    async fn a_pin_deleted_outside_pgcairn_still_keeps_its_backup_and_is_reported() {
        let (mem, repo) = memory_repo().await;
        let (old, new) = two_backups(&repo).await;
        set_pin(&repo, "main", old, true).await.unwrap();
        let audit = |repo: Repository| async move {
            crate::store::audit::audit(&repo, "main", None)
                .await
                .unwrap()
        };
        assert!(audit(repo.clone()).await.missing_pins.is_empty());
        crate::storage::Storage::delete(&*mem, &layout::pin("main", old))
            .await
            .unwrap();
        let found = audit(repo.clone()).await;
        assert_eq!(found.missing_pins, vec![old.to_string()], "{found:?}");
        assert!(!found.is_clean());
        assert!(found.findings()[0].1.contains("deleted outside pgcairn"));
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        let kept = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert!(kept.backups.iter().all(|b| b.keep), "{kept:?}");
        assert_eq!(manifest::list_ids(&repo, "main").await.unwrap().len(), 2);
        // Unpinned: gone from the head too, nothing reported, and expire removes it.
        set_pin(&repo, "main", old, false).await.unwrap();
        assert!(audit(repo.clone()).await.missing_pins.is_empty());
        expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(
            manifest::list_ids(&repo, "main").await.unwrap(),
            vec![new.to_string()]
        );
    }

    /// A pin object the head does not record (made before heads recorded pins, or dropped
    /// from the head by an older pgcairn rewriting it) is recorded by the next expire, so its
    /// deletion is noticed from then on.
    #[tokio::test]
    async fn expire_records_pins_the_head_does_not_know() {
        let (mem, repo) = memory_repo().await;
        let id = "20261101-000000F";
        manifest::save(
            &repo,
            &manifest(id, "0/300028", "0/300028", "2026-11-01T00:00:00Z", &[]),
        )
        .await
        .unwrap();
        let key = layout::pin("main", id);
        let pin = Pin {
            backup_id: id.into(),
            pinned_at: Timestamp::now(),
        };
        crate::storage::Storage::put_create(
            &*mem,
            &key,
            sealed::seal(&repo, DocKind::Pin, &key, &pin),
        )
        .await
        .unwrap();
        let pinned = |repo: Repository| async move {
            head::read(&repo, "main")
                .await
                .unwrap()
                .map(|(h, _)| h.pinned)
                .unwrap_or_default()
        };
        assert!(pinned(repo.clone()).await.is_empty());
        expire(&repo, "main", &Policy::default(), Default::default())
            .await
            .unwrap();
        assert!(pinned(repo.clone())
            .await
            .contains(&BackupId::new(id.to_string())));
        // Unpinning a backup whose manifest is gone still clears the head.
        crate::storage::Storage::delete(&*mem, &layout::backup_manifest("main", id))
            .await
            .unwrap();
        set_pin(&repo, "main", id, false).await.unwrap();
        assert!(pinned(repo.clone()).await.is_empty());
        // A name that is neither a backup nor a pin is an error.
        assert!(set_pin(&repo, "main", "20000101-000000F", false)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn object_lock_keeps_what_is_still_under_retention_and_says_until_when() {
        let (mem, repo) = memory_repo().await;
        two_backups(&repo).await;
        let policy = Policy {
            full: Some(1),
            object_lock: Some(std::time::Duration::from_secs(86_400)),
            ..Policy::default()
        };
        // Everything was written just now: under a day's retention, nothing goes.
        let locked = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(locked.wal_files, 0, "{locked:?}");
        let old = &locked.backups[0];
        assert!(old.keep, "{locked:?}");
        assert!(
            old.reasons[0].contains("Object Lock retention until 20"),
            "{old:?}"
        );
        assert!(
            locked
                .wal_ranges
                .iter()
                .any(|r| r.keep && r.reason.contains("Object Lock")),
            "{locked:?}"
        );
        assert_eq!(archived(&repo).await.len(), 10);
        assert_eq!(manifest::list_ids(&repo, "main").await.unwrap().len(), 2);
        // Two days later the retention has ended: expire removes them.
        for o in crate::storage::Storage::list(&*mem, "").await.unwrap() {
            mem.backdate(o.key.as_str(), 2 * 86_400);
        }
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert!(!done.backups[0].keep, "{done:?}");
        assert_eq!(done.wal_files, 8, "{done:?}");
        assert_eq!(manifest::list_ids(&repo, "main").await.unwrap().len(), 1);
    }

    /// A segment's `.partial` archived after it (a standby promoted with `archive_mode =
    /// always`) is still under Object Lock when the segment's retention has ended: the segment
    /// goes, the partial's record and its data stay. Its data was deleted with the segment's
    /// when data objects were matched by the prefix `<segment>.`.
    #[tokio::test]
    async fn a_kept_partial_keeps_its_data_when_its_segment_goes() {
        let (mem, repo) = memory_repo().await;
        two_backups(&repo).await;
        for o in crate::storage::Storage::list(&*mem, "").await.unwrap() {
            mem.backdate(o.key.as_str(), 2 * 86_400);
        }
        let partial: WalFileName = "000000010000000000000002.partial".parse().unwrap();
        let data = fake_segment(9, 1, 2 * SEG, SEG as u32, SEG as usize);
        push_wal_file(&repo, "main", &partial, WalSource::Bytes(data))
            .await
            .unwrap();
        let policy = Policy {
            full: Some(1),
            object_lock: Some(std::time::Duration::from_secs(86_400)),
            ..Policy::default()
        };
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        let names = archived(&repo).await;
        assert!(
            !names.contains(&"000000010000000000000002".to_string())
                && names.contains(&partial.to_string()),
            "{names:?} {done:?}"
        );
        let data: Vec<WalFileName> = repo
            .storage()
            .list(&layout::wal_data_prefix("main"))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| layout::parse_wal_data("main", o.key.as_str()))
            .map(|(_, n)| n)
            .collect();
        assert!(
            data.contains(&partial),
            "the partial's data stays: {data:?}"
        );
        assert_eq!(data.len(), names.len(), "{data:?} {names:?}");
    }

    #[tokio::test]
    async fn wal_goes_below_the_retained_backup_on_every_timeline_and_history_stays() {
        let (_mem, repo) = memory_repo().await;
        for n in 1..=10 {
            push(&repo, 1, n).await;
        }
        // Timeline 2 forked in segment 8.
        fork(&repo, "0/800000", 8..=12).await;
        let old = manifest(
            "20261101-000000F",
            "0/300028",
            "0/300100",
            "2026-11-01T00:00:00Z",
            &[],
        );
        // The newer backup is of timeline 2 (a backup of timeline 1 that late would be off
        // timeline 2's history: see the next test).
        manifest::save(&repo, &old).await.unwrap();
        let new = ("0/900028", "0/900100");
        save_full(&repo, "20261120-000000F", new, "2026-11-20T00:00:00Z", 2).await;
        // Timeline 1's primary archived its last before the fork's backup.
        archived_on(&repo, &_mem, 1, "2026-11-15T00:00:00Z").await;
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };

        let dry_repo = repo.clone().into_dry_run();
        let dry = expire(&dry_repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert!(dry.dry_run);
        // It asked for the manifest, the 9 pointers and their data to go; none went.
        let asked = dry_repo.dry_run().unwrap().deleted();
        assert!(
            asked.contains(&layout::backup_manifest("main", "20261101-000000F")),
            "{asked:?}"
        );
        assert_eq!(asked.len(), 1 + 9 * 2, "{asked:?}");
        assert_eq!(dry.wal_files, 8 + 1, "tli 1: 1..=8; tli 2: 8");
        let history_rule = dry
            .wal_ranges
            .iter()
            .find(|r| r.first == "00000002.history")
            .unwrap();
        assert!(history_rule.keep && history_rule.reason.contains("history"));
        assert_eq!(archived(&repo).await.len(), 16, "a dry run removes nothing");

        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(done.backups.iter().filter(|d| !d.keep).count(), 1);
        assert_eq!(
            archived(&repo).await,
            [
                "000000010000000000000009",
                "00000001000000000000000A",
                "00000002.history",
                "000000020000000000000009",
                "00000002000000000000000A",
                "00000002000000000000000B",
                "00000002000000000000000C",
            ]
        );
        // WAL data objects went with their pointers.
        let data = repo
            .storage()
            .list(&layout::wal_data_prefix("main"))
            .await
            .unwrap();
        assert_eq!(data.len(), 7);
        assert!(manifest::list_ids(&repo, "main")
            .await
            .unwrap()
            .iter()
            .all(|id| id == "20261120-000000F"));
    }

    /// A point-in-time recovery forked timeline 2 in segment 8, below the newer backup of
    /// timeline 1, which is then off timeline 2's history. Retention (one full) would keep
    /// that newer backup only, and the cluster running on timeline 2 would have no restorable
    /// backup: the older one stays, with the WAL after it, until timeline 2 has a backup.
    #[tokio::test]
    async fn the_live_timelines_only_base_stays_until_it_has_a_backup_of_its_own() {
        let (_mem, repo) = memory_repo().await;
        for n in 1..=10 {
            push(&repo, 1, n).await;
        }
        let history = fork(&repo, "0/800000", 8..=12).await;
        let (old, _) = old_and_new(&repo).await;
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        // A history file that cannot be read fails the run before anything is deleted.
        let history_key = layout::wal_pointer("main", &history);
        _mem.tamper(history_key.as_str(), |v| {
            let last = v.len() - 1;
            v[last] ^= 1;
        });
        let before = archived(&repo).await;
        assert!(expire(&repo, "main", &policy, Default::default())
            .await
            .is_err());
        assert_eq!(archived(&repo).await, before);
        assert_eq!(manifest::list_ids(&repo, "main").await.unwrap().len(), 2);
        _mem.tamper(history_key.as_str(), |v| {
            let last = v.len() - 1;
            v[last] ^= 1;
        });
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        let kept = done.backups.iter().find(|d| d.id == old).unwrap();
        assert!(kept.keep, "{done:?}");
        assert!(kept.reasons[0].contains("timeline 2"), "{kept:?}");
        assert!(done.backups.iter().all(|d| d.keep), "{done:?}");
        // Its WAL onward stays on both timelines; below its start it goes.
        let wal = archived(&repo).await;
        assert_eq!(wal.len(), 8 + 1 + 5, "{wal:?}");
        assert_eq!(wal[0], "000000010000000000000003");
        // Restorable: a plan along the latest timeline chooses it.
        let chosen = default_restore_base(&repo).await;
        assert_eq!(chosen.id, old);

        // Timeline 2 gets a backup: retention decides alone again.
        let own = ("0/B00028", "0/B00100");
        save_full(&repo, "20261121-000000F", own, "2026-11-21T00:00:00Z", 2).await;
        // Timeline 1's primary archived its last just after its own backup, before this one.
        archived_on(&repo, &_mem, 1, "2026-11-20T00:10:00Z").await;
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(kept_ids(&done), ["20261121-000000F"], "{done:?}");
        assert_eq!(
            archived(&repo).await,
            [
                "00000002.history",
                "00000002000000000000000B",
                "00000002000000000000000C",
            ]
        );
    }

    /// Timeline 2 forked in segment 4 from the oldest of three backups of timeline 1, all
    /// three kept by `full = 3`. With `pitr_window`, WAL stays from the newest backup before
    /// the window only (the newest here), the older two keep their consistency ranges, and
    /// timeline 2's WAL below it would go: the base stays whole, WAL from its start too.
    #[tokio::test]
    async fn with_a_pitr_window_the_live_timelines_base_keeps_its_wal_too() {
        let (_mem, repo) = memory_repo().await;
        for n in 1..=12 {
            push(&repo, 1, n).await;
        }
        fork(&repo, "0/400000", 4..=8).await;
        let base = "20261101-000000F";
        for (id, start, stop, t) in [
            (base, "0/200028", "0/200100", "2026-11-01T00:00:00Z"),
            (
                "20261110-000000F",
                "0/600028",
                "0/600100",
                "2026-11-10T00:00:00Z",
            ),
            (
                "20261120-000000F",
                "0/A00028",
                "0/A00100",
                "2026-11-20T00:00:00Z",
            ),
        ] {
            manifest::save(&repo, &manifest(id, start, stop, t, &[]))
                .await
                .unwrap();
        }
        let policy = Policy {
            full: Some(3),
            pitr_window: Some(std::time::Duration::from_secs(7 * 86_400)),
            ..Policy::default()
        };
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert!(done.backups.iter().all(|d| d.keep), "{done:?}");
        let from_base = done
            .wal_ranges
            .iter()
            .find(|r| r.first == "000000010000000000000002")
            .unwrap();
        assert!(
            from_base.keep
                && from_base
                    .reason
                    .contains("newest base of the live timeline"),
            "{from_base:?}"
        );
        let wal = archived(&repo).await;
        assert_eq!(wal.len(), 11 + 1 + 5, "only segment 1 goes: {wal:?}");
        let chosen = default_restore_base(&repo).await;
        assert_eq!(chosen.id, base);
    }

    /// Timeline 2 forked in segment 4 from backup A (segment 2); backup B of timeline 1
    /// (segment 6) is off its history; backup C of timeline 2 ended a day ago. The window's
    /// first moment lies between B and C: recovery to it along timeline 2 starts from A, so
    /// A stays and so does the WAL from segment 2. By time alone B was the window's base and
    /// segments 3 to 5 went.
    #[tokio::test]
    async fn a_pitr_window_after_a_fork_starts_from_the_live_timelines_base() {
        let (_mem, repo) = memory_repo().await;
        for n in 1..=12 {
            push(&repo, 1, n).await;
        }
        fork(&repo, "0/400000", 4..=10).await;
        let now = time::OffsetDateTime::now_utc();
        let rfc = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        let a = "20261101-000000F";
        save_full(
            &repo,
            a,
            ("0/200028", "0/200100"),
            "2026-11-01T00:00:00Z",
            1,
        )
        .await;
        let b = "20261110-000000F";
        save_full(
            &repo,
            b,
            ("0/600028", "0/600100"),
            "2026-11-10T00:00:00Z",
            1,
        )
        .await;
        let c = rfc(now - time::Duration::days(1));
        save_full(&repo, "29991231-000000F", ("0/900028", "0/900100"), &c, 2).await;
        let edge = time::macros::datetime!(2026-11-12 00:00 UTC);
        let policy = Policy {
            full: Some(1),
            pitr_window: Some(std::time::Duration::from_secs(
                (now - edge).whole_seconds() as u64
            )),
            ..Policy::default()
        };
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        let a_kept = done.backups.iter().find(|d| d.id == a).unwrap();
        assert!(
            a_kept.keep && a_kept.reasons[0].contains("along timeline 2"),
            "{done:?}"
        );
        let wal = archived(&repo).await;
        assert!(
            wal.contains(&"000000010000000000000003".to_string()),
            "the WAL from A to the fork stays: {wal:?}"
        );
        assert_eq!(wal.len(), 11 + 1 + 7, "only segment 1 goes: {wal:?}");
    }

    /// Timeline 2 forked in segment 4 from the older of [`old_and_new`] and archived on last
    /// at `quiet_since`, then timeline 1 archives once more; expire with `full = 1`. Returns
    /// what it decided for the older backup (timeline 2's only base).
    async fn fork_quiet_since(quiet_since: &str) -> Decision {
        let (mem, repo) = memory_repo().await;
        for n in 1..=10 {
            push(&repo, 1, n).await;
        }
        fork(&repo, "0/400000", 4..=4).await;
        for tli in [1, 2] {
            archived_on(&repo, &mem, tli, quiet_since).await;
        }
        push(&repo, 1, 11).await;
        let (old, _) = old_and_new(&repo).await;
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        done.backups.into_iter().find(|d| d.id == old).unwrap()
    }

    /// A clone promoted into the repository (timeline 2) and stopped archiving before the
    /// newest backup, while the primary goes on along timeline 1: retention decides alone
    /// (the old backup goes).
    #[tokio::test]
    async fn an_abandoned_fork_keeps_nothing() {
        let d = fork_quiet_since("2026-11-07T00:00:00Z").await;
        assert!(!d.keep, "{d:?}");
    }

    /// The old primary archives once more after the fork (a split brain, or a standby with
    /// `archive_mode = always`), so timeline 1 is the one archived to last; timeline 2, quiet
    /// since but archived to after the newest backup ended, is live all the same.
    #[tokio::test]
    async fn a_quiet_fork_stays_live_when_the_old_timeline_archives_after_it() {
        let d = fork_quiet_since("2026-11-25T00:00:00Z").await;
        assert!(d.keep && d.reasons[0].contains("timeline 2"), "{d:?}");
    }

    /// A cluster already on timeline 2 when pgcairn was set up: its history file was never
    /// archived. Expire still runs (it warns), and retention decides as before.
    #[tokio::test]
    async fn a_timeline_whose_history_was_never_archived_does_not_stop_expire() {
        let (_mem, repo) = memory_repo().await;
        for n in 1..=10 {
            push(&repo, 2, n).await;
        }
        save_full(
            &repo,
            "20261101-000000F",
            ("0/300028", "0/300100"),
            "2026-11-01T00:00:00Z",
            2,
        )
        .await;
        save_full(
            &repo,
            "20261120-000000F",
            ("0/900028", "0/900100"),
            "2026-11-20T00:00:00Z",
            2,
        )
        .await;
        let policy = Policy {
            full: Some(1),
            ..Policy::default()
        };
        let done = expire(&repo, "main", &policy, Default::default())
            .await
            .unwrap();
        assert_eq!(kept_ids(&done), ["20261120-000000F"], "{done:?}");
        assert_eq!(archived(&repo).await.len(), 2, "segments 9 and 10 stay");
    }
}
