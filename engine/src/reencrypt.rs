//! Re-encryption (`pgcairn key rotate --reencrypt`, `pgcairn key reencrypt`): every object
//! sealed under a key epoch older than the newest is sealed again under the newest, and then
//! the old epochs are dropped from the keyring, so a leaked key (even with a copy of an old
//! config) opens nothing at all.
//!
//! # What is rewritten, and how
//!
//! - **Objects with a stable name** (catalog documents, WAL contents, manifests, index
//!   segments, drill reports, gc state, catalog heads): resealed in place
//!   ([`crate::codec::Codec::reseal`]: same payload, size, content id and name binding, new
//!   epoch and nonce) and written back by compare-and-swap against the version read. The
//!   swap is atomic: a reader sees the old or the new object, and both open while the keyring
//!   holds both epochs. The catalog heads and gc state, which writers replace by
//!   compare-and-swap, go last, right before the drop: a backup that opened the repository
//!   before the rotation records itself in its cluster's head when it ends, and could not
//!   open a head sealed under an epoch it does not know. A concurrent update makes the swap
//!   fail; the object is read again and resealed again.
//! - **Packs** are named by the hash of their bytes, so they cannot be rewritten in place:
//!   gc's repack does it ([`crate::gc::repack::reencrypt`]): every pack holding anything under
//!   an old epoch has its referenced blocks copied, resealed, into new packs indexed like a
//!   backup's, and the old pack is then condemned and swept by gc's own protocol (grace
//!   period, backup leases, reprieve), under the gc lease.
//! - **Dropping** the old epochs is a compare-and-swap of the config that only this module can
//!   ask for ([`crate::repo::keys::NothingSealedBefore`]), after a final scan of the whole
//!   repository found nothing left under them.
//!
//! # Concurrency and crashes
//!
//! The run holds the gc lease and every cluster's expire lease (what gc and expire take), so
//! neither deletes what it rewrites. Writers keep running: `archive-push` and `backup` only
//! create objects, and those that read the config after the rotation seal under the newest
//! epoch. A writer that read the config *before* the rotation seals under the old one until it
//! follows the rotation ([`crate::repo::follow`]: at its first read of an object under the new
//! epoch, or a write more than a minute after it last looked at the config), so the drop waits
//! until the config has been unchanged for a grace period (`gc_grace`: longer than any backup)
//! and for at least [`WRITERS_SETTLE`] (a shorter `gc_grace`, even `0s`, does not shorten
//! the wait for such writers unless the operator says none runs: `writers_stopped`), and
//! until no backup lease started before that change, and the final scan then finds and
//! reseals whatever such writers left.
//!
//! Nothing is dropped until the end: a crash or kill at any point leaves every object readable
//! under a keyring that still holds every epoch (some resealed, some not; a pack and its copy
//! both present), and the next run continues. Damaged objects are never resealed (their
//! damage would be laundered into a valid seal): they are reported, and block the drop until
//! `verify` has named what they hurt and they are dealt with.
//!
//! # Storage that keeps old versions
//!
//! On a versioned bucket (and with S3 Object Lock) an overwrite or delete keeps the previous
//! version: resealing cannot remove the old ciphertext, and whoever can read old versions
//! (`s3:GetObjectVersion`) with a leaked key still opens it until those versions expire. The
//! README says what to do.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::archive::push::wal_context;
use crate::codec::{Codec, ObjectKind};
use crate::cpu;
use crate::crypto::{ContentId, Unlock};
use crate::error::{Error, Result};
use crate::gc::{GcOptions, GcReport};
use crate::repo::config::Encryption;
use crate::repo::follow::FOLLOWED_WITHIN;

/// How long after a key change old epochs stay whatever the grace period: every running
/// writer seals under the new epoch within [`FOLLOWED_WITHIN`], and what it sealed just before
/// may still be in flight for a request's retries (a minute by default, `retry_timeout`).
pub const WRITERS_SETTLE: Duration = Duration::from_secs(FOLLOWED_WITHIN.as_secs() + 60);
use crate::repo::keys::{self, KeyChange, NothingSealedBefore};
use crate::repo::{layout, Repository};
use crate::storage::{ObjectKey, StorageError};
use crate::store::sealed::DocKind;

/// A backup lease that started less than this after the last key change may have read the
/// configuration before it: slack for clock differences between its host and the host that
/// changed the keys (a check that only delays dropping old epochs, never loses data).
const KEY_CHANGE_MARGIN: i64 = 60;
/// How many objects still under an old epoch a report names (the count is always complete).
const NAMED_REMAINING: usize = 20;
/// Attempts at resealing one object that keeps changing under us.
const SWAP_ATTEMPTS: usize = 8;

/// How a re-encryption runs.
#[derive(Debug, Clone)]
pub struct ReencryptOptions {
    /// gc's grace period: old packs are swept, and old epochs dropped, only after it.
    pub grace: Duration,
    /// How long to wait for a running gc or expire.
    pub lease_wait: Duration,
    /// The bucket's default Object Lock retention: old packs are swept (and the old epochs
    /// dropped) only once it has ended for them.
    pub object_lock: Option<Duration>,
    /// The operator says no process that read the config before the last key change still
    /// runs (archiving and backups stopped, or restarted since): the old epochs may be dropped
    /// after `grace` alone, without waiting [`WRITERS_SETTLE`] for such processes to follow.
    pub writers_stopped: bool,
    /// How long one upload may keep retrying (`retry_timeout` of this host's storage
    /// options): what a writer sealed just before it followed the rotation may land that
    /// late, so the wait for writers covers it when it is longer than the default minute.
    pub upload_retries: Duration,
    /// Memory for gc's mark ([`crate::gc::GcOptions::index_memory`]).
    pub index_memory: u64,
}

/// How long old epochs stay after a key change whatever the grace period: [`WRITERS_SETTLE`],
/// or longer when uploads here retry for longer than its minute.
pub fn writers_settle(upload_retries: Duration) -> Duration {
    WRITERS_SETTLE.max(FOLLOWED_WITHIN + upload_retries)
}

/// What a re-encryption did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReencryptReport {
    /// The key epoch everything is sealed under now.
    pub key_epoch: u32,
    /// Older epochs the keyring held when the run started.
    pub old_epochs: Vec<u32>,
    /// Objects read (packs excluded).
    pub objects_checked: usize,
    /// Objects resealed in place.
    pub objects_resealed: usize,
    /// Bytes of the objects resealed in place.
    pub bytes_resealed: u64,
    /// The gc run that rewrote and swept packs.
    pub gc: GcReport,
    /// Objects still sealed under an old epoch (the first few), and why.
    pub remaining: Vec<String>,
    /// How many objects are still sealed under an old epoch.
    pub remaining_count: usize,
    /// Epochs dropped from the keyring by this run (empty: none yet).
    pub dropped_epochs: Vec<u32>,
    /// Why the old epochs are not dropped yet, and when to run again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// How an object with a stable name is opened: its codec kind, content id and context.
#[derive(Debug, Clone)]
struct Binding {
    kind: ObjectKind,
    id: ContentId,
    context: Vec<u8>,
    /// Replaced by compare-and-swap in normal operation (catalog heads, gc state): checked
    /// again at the end of the run. Everything else is create-only.
    mutable: bool,
}

/// What one object sealed where: how to open it, from its key (`None`: not one pgcairn seals
/// under a stable name: packs, the config, leases, or something unknown).
fn binding_of(key: &ObjectKey) -> Option<Binding> {
    let k = key.as_str();
    let catalog = |doc: DocKind, mutable: bool| Binding {
        kind: ObjectKind::Catalog,
        id: ContentId([0; 32]),
        context: crate::store::sealed::context(doc, key),
        mutable,
    };
    if k == layout::gc_state().as_str() {
        return Some(catalog(DocKind::GcState, true));
    }
    if let Some(id) = layout::parse_index_segment(k) {
        return Some(Binding {
            kind: ObjectKind::Index,
            id: ContentId(*id.as_bytes()),
            context: crate::index::CONTEXT.to_vec(),
            mutable: false,
        });
    }
    // Status objects are swapped by every writer: resealed last, like the catalog heads.
    if key == &layout::repository_status() {
        return Some(catalog(DocKind::RepositoryStatus, true));
    }
    if let Some(c) = k.strip_prefix(layout::CLUSTER_STATUS_PREFIX) {
        return (layout::validate_cluster_name(c).is_ok() && key == &layout::cluster_status(c))
            .then(|| catalog(DocKind::ClusterStatus, true));
    }
    if layout::parse_audit_record(k).is_some() {
        return Some(catalog(DocKind::AuditRecord, false));
    }
    let rest = k.strip_prefix("clusters/")?;
    let (cluster, tail) = rest.split_once('/')?;
    layout::validate_cluster_name(cluster).ok()?;
    if key == &layout::catalog_head(cluster) {
        return Some(catalog(DocKind::CatalogHead, true));
    }
    if key == &layout::cluster_record(cluster) {
        return Some(catalog(DocKind::ClusterRecord, false));
    }
    if layout::parse_wal_pointer(cluster, k).is_some() {
        return Some(catalog(DocKind::WalRecord, false));
    }
    if let Some((_, name)) = layout::parse_wal_data(cluster, k) {
        let id = ContentId::from_hex(k.rsplit_once('.')?.1)?;
        return Some(Binding {
            kind: ObjectKind::Wal,
            id,
            context: wal_context(cluster, &name),
            mutable: false,
        });
    }
    // wal-receive's chunks: an old timeline's tail can stay for the whole retention period.
    if let Some((segment, start, end, id)) = layout::parse_walstream_chunk(cluster, k) {
        return Some(Binding {
            kind: ObjectKind::Wal,
            id,
            context: crate::walstream::chunks::context(cluster, &segment, start, end),
            mutable: false,
        });
    }
    let (folder, name) = tail.split_once('/')?;
    match folder {
        "backups" => {
            let id = name.strip_suffix("/manifest")?;
            (key == &layout::backup_manifest(cluster, id)).then(|| Binding {
                kind: ObjectKind::Manifest,
                id: ContentId([0; 32]),
                context: crate::store::manifest::context(cluster, id),
                mutable: false,
            })
        }
        "pins" if key == &layout::pin(cluster, name) => Some(catalog(DocKind::Pin, false)),
        // Extended by compare-and-swap while a restore runs ([`crate::hold`]).
        "holds" if key == &layout::recovery_hold(cluster, name) => {
            Some(catalog(DocKind::Lease, true))
        }
        "restore-points" => Some(catalog(DocKind::RestorePoint, false)),
        "drills" if key == &layout::drill_report(cluster, name) => Some(Binding {
            kind: ObjectKind::Document,
            id: ContentId([0; 32]),
            context: crate::drill::report::context(cluster, name),
            mutable: false,
        }),
        _ => None,
    }
}

/// Replaced by compare-and-swap in normal operation (catalog heads, gc state).
fn is_mutable(key: &ObjectKey) -> bool {
    binding_of(key).is_some_and(|b| b.mutable)
}

/// What resealing one object found.
enum Resealed {
    /// Already under the write epoch (or not an envelope at all).
    Clean,
    /// Rewritten: its new size.
    Done(u64),
    /// Deleted meanwhile.
    Gone,
    /// Under an old epoch and not resealable (damaged, or unknown): why.
    Stuck(String),
}

/// Reseals one object in place if it is under an old epoch (compare-and-swap, retried when a
/// concurrent writer moved it).
async fn reseal_object(repo: &Repository, key: &ObjectKey) -> Result<Resealed> {
    for _ in 0..SWAP_ATTEMPTS {
        let (bytes, version) = match repo.storage().get_versioned(key).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() => return Ok(Resealed::Gone),
            Err(e) => return Err(e.into()),
        };
        if !repo.codec().needs_reseal(&bytes) {
            return Ok(Resealed::Clean);
        }
        let Some(b) = binding_of(key) else {
            return Ok(Resealed::Stuck(format!(
                "sealed under key epoch {}, but not an object pgcairn knows how to reseal",
                Codec::epoch_of(&bytes).unwrap_or(0)
            )));
        };
        let codec = repo.codec().clone();
        let new = cpu::run(move || codec.reseal(b.kind, &b.id, &b.context, &bytes)).await;
        let new = match new {
            Ok(n) => n,
            Err(e) => {
                return Ok(Resealed::Stuck(format!(
                    "does not open ({e}): not resealed; run `pgcairn verify` to see what it hurts"
                )))
            }
        };
        let len = new.len() as u64;
        match repo
            .storage()
            .put_swap(key, bytes::Bytes::from(new), Some(&version))
            .await
        {
            Ok(_) => return Ok(Resealed::Done(len)),
            Err(StorageError::Precondition { .. }) => continue,
            Err(e) if e.is_not_found() => return Ok(Resealed::Gone),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Conflict(format!(
        "{key} changed {SWAP_ATTEMPTS} times while being resealed; run the command again"
    )))
}

/// Reseals everything under old key epochs and, when nothing is left under them and the
/// rotation is a grace period old, drops them from the keyring. Holds the gc lease and every
/// cluster's expire lease. Safe to run again at any time (it continues where it stopped).
pub async fn reencrypt(
    repo: &Repository,
    unlock: Option<&Unlock>,
    state_dir: Option<&Path>,
    opts: &ReencryptOptions,
) -> Result<ReencryptReport> {
    if repo.config().encryption == Encryption::None {
        return Err(Error::Config(
            "the repository was created with --no-encryption: there is nothing to re-encrypt"
                .into(),
        ));
    }
    let mut leases = vec![
        crate::lease::acquire_exclusive(
            repo,
            "gc",
            "",
            crate::lease::Purpose::Reencrypt,
            opts.lease_wait,
        )
        .await?,
    ];
    let clusters = crate::store::manifest::cluster_names(repo).await;
    let result = match clusters {
        Ok(clusters) => {
            let mut taken = Ok(());
            for c in &clusters {
                match crate::lease::acquire_exclusive(
                    repo,
                    &format!("expire-{c}"),
                    c,
                    crate::lease::Purpose::Reencrypt,
                    opts.lease_wait,
                )
                .await
                {
                    Ok(l) => leases.push(l),
                    Err(e) => {
                        taken = Err(e);
                        break;
                    }
                }
            }
            match taken {
                Ok(()) => reencrypt_locked(repo, unlock, state_dir, opts, &leases).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    for l in leases {
        l.release().await;
    }
    result
}

async fn reencrypt_locked(
    repo: &Repository,
    unlock: Option<&Unlock>,
    state_dir: Option<&Path>,
    opts: &ReencryptOptions,
    held: &[crate::lease::Lease],
) -> Result<ReencryptReport> {
    let newest = repo.codec().write_epoch();
    let mut report = ReencryptReport {
        key_epoch: newest,
        old_epochs: repo
            .codec()
            .epochs()
            .into_iter()
            .filter(|e| *e < newest)
            .collect(),
        ..Default::default()
    };
    if report.old_epochs.is_empty() {
        return Ok(report);
    }
    // 1. Objects with stable names, resealed in place.
    let mut checked: HashSet<ObjectKey> = HashSet::new();
    let mut stuck: HashMap<ObjectKey, String> = HashMap::new();
    for prefix in ["clusters/", "index/", "gc/", layout::AUDIT_PREFIX] {
        for o in repo.storage().list(prefix).await? {
            if is_mutable(&o.key) {
                // Resealed last, right before the drop (see `reseal_mutable`).
                continue;
            }
            report.objects_checked += 1;
            match reseal_object(repo, &o.key).await? {
                Resealed::Done(n) => {
                    report.objects_resealed += 1;
                    report.bytes_resealed += n;
                }
                Resealed::Stuck(why) => {
                    stuck.insert(o.key.clone(), why);
                }
                Resealed::Clean | Resealed::Gone => {}
            }
            checked.insert(o.key);
        }
    }
    // 2. Packs: gc's repack, resealing, then its condemn and sweep.
    let gc_opts = GcOptions {
        grace: opts.grace,
        repack_below: 0.0,
        lease_wait: Duration::ZERO,
        reencrypt: true,
        object_lock: opts.object_lock,
        index_memory: opts.index_memory,
    };
    let (gc_report, clean_packs) = crate::gc::gc_locked_with(repo, &gc_opts, held).await?;
    report.gc = gc_report;
    // 3. The final scan: everything listed now. Packs not known clean are read; objects
    // created since step 1, and mutable ones, are resealed again if needed.
    // The wait for writers is measured to this listing, not to the end of the scan: an
    // object a writer uploads after the listing is not resealed, so the listing itself must
    // come after every writer from before the key change has finished.
    let listed_at = crate::store::Timestamp::now().unix_seconds();
    let listed = repo.storage().list("").await?;
    let config_changed = listed
        .iter()
        .find(|o| o.key.as_str() == layout::CONFIG)
        .and_then(|o| o.modified);
    let mut remaining: Vec<String> = Vec::new();
    for o in &listed {
        let k = o.key.as_str();
        if k == layout::CONFIG || k.starts_with(layout::LEASES_PREFIX) {
            continue;
        }
        if k.starts_with(layout::PACKS_PREFIX) {
            let id = layout::parse_pack(k);
            if id.is_some_and(|id| clean_packs.contains(&id)) {
                continue;
            }
            let bytes = match repo.storage().get(&o.key).await {
                Ok(b) => b,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let codec = repo.codec().clone();
            match cpu::run(move || crate::gc::repack::holds_old_epochs(&codec, &bytes)).await {
                Ok(false) => {}
                Ok(true) => remaining.push(format!(
                    "{k}: a pack holding old key epochs (condemned, or younger than the grace period: \
                     gc sweeps it once the grace period has passed)"
                )),
                Err(why) => remaining.push(format!(
                    "{k}: {why}; run `pgcairn verify --read-data` to see what it hurts"
                )),
            }
            continue;
        }
        if is_mutable(&o.key) {
            continue;
        }
        if checked.contains(&o.key) {
            if let Some(why) = stuck.get(&o.key) {
                remaining.push(format!("{k}: {why}"));
            }
            continue;
        }
        report.objects_checked += 1;
        match reseal_object(repo, &o.key).await? {
            Resealed::Done(n) => {
                report.objects_resealed += 1;
                report.bytes_resealed += n;
            }
            Resealed::Stuck(why) => remaining.push(format!("{k}: {why}")),
            Resealed::Clean | Resealed::Gone => {}
        }
    }
    report.remaining_count = remaining.len();
    remaining.truncate(NAMED_REMAINING);
    report.remaining = remaining;
    if report.remaining_count > 0 {
        report.waiting = Some(format!(
            "{} objects are still sealed under key epochs {:?}; the epochs stay in the keyring until none is. \
             Run `pgcairn key reencrypt` again once gc's grace period ({}s) has passed",
            report.remaining_count,
            report.old_epochs,
            opts.grace.as_secs()
        ));
        return Ok(report);
    }
    // 4. Writers that read the config before the rotation may still be sealing under an old
    // epoch: wait until the config is a grace period old and no backup from before it runs.
    let now = listed_at;
    let changed = config_changed.unwrap_or(now);
    let writers = writers_settle(opts.upload_retries);
    let settle = if opts.writers_stopped {
        opts.grace
    } else {
        opts.grace.max(writers)
    };
    let ready_at = changed + settle.as_secs() as i64;
    if now < ready_at {
        let why = if settle > opts.grace {
            format!(
                "the {}s a running archive-push, wal-receive or backup needs to follow a key change and \
                 finish what it was uploading; --writers-stopped skips it when none runs",
                writers.as_secs()
            )
        } else {
            "gc's grace period after the last key change".to_string()
        };
        report.waiting = Some(format!(
            "everything is resealed under key epoch {newest}, but the config changed {}s ago: a backup, \
             archive-push or wal-receive that read it before may still write under the old epochs. Run \
             `pgcairn key reencrypt` again after {} ({why}) to drop them",
            now - changed,
            crate::store::Timestamp::from_unix_seconds(ready_at)
        ));
        return Ok(report);
    }
    let early = crate::lease::live(repo)
        .await?
        .into_iter()
        .filter(|l| l.body.started <= changed + KEY_CHANGE_MARGIN)
        .map(|l| format!("{} of cluster {}", l.body.backup_id, l.body.cluster))
        .collect::<Vec<_>>();
    if !early.is_empty() {
        report.waiting = Some(format!(
            "backups that started before the last key change are still running ({}): they may write under the \
             old epochs. Run `pgcairn key reencrypt` again when they have finished",
            early.join(", ")
        ));
        return Ok(report);
    }
    // Leases sealed under an old epoch. A dead one (its holder killed before the rotation:
    // no heartbeat for longer than a lease lives) is removed: once its epoch is dropped no
    // command could read it, and every backup, gc and expire would stop on it as a forgery.
    // A live one is a holder that may still write under the old epochs: wait for it.
    let mut live_old = Vec::new();
    for o in repo.storage().list(layout::LEASES_PREFIX).await? {
        let raw = match repo.storage().get(&o.key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        if !repo.codec().needs_reseal(&raw) {
            continue;
        }
        let age = now - o.modified.unwrap_or(now);
        if age > crate::lease::EXPIRY.as_secs() as i64 {
            match repo.storage().delete(&o.key).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            live_old.push(o.key.to_string());
        }
    }
    if !live_old.is_empty() {
        report.waiting = Some(format!(
            "leases taken before the last key change are still held ({}): their holders may write under the old \
             epochs. Run `pgcairn key reencrypt` again when they have finished",
            live_old.join(", ")
        ));
        return Ok(report);
    }
    // 5. The catalog heads (and gc state) last: a writer that opened the repository before
    // the rotation reads its cluster's head at the end of its work (a backup records itself
    // there) and could not open one sealed under an epoch it does not know; by now no such
    // writer is left.
    let mut stuck_mutable = Vec::new();
    for o in listed.iter().filter(|o| is_mutable(&o.key)) {
        report.objects_checked += 1;
        match reseal_object(repo, &o.key).await? {
            Resealed::Done(n) => {
                report.objects_resealed += 1;
                report.bytes_resealed += n;
            }
            Resealed::Stuck(why) => stuck_mutable.push(format!("{}: {why}", o.key)),
            Resealed::Clean | Resealed::Gone => {}
        }
    }
    if !stuck_mutable.is_empty() {
        report.remaining_count = stuck_mutable.len();
        report.remaining = stuck_mutable;
        report.waiting = Some(format!(
            "{} objects are still sealed under key epochs {:?} and cannot be resealed; the epochs stay in the keyring",
            report.remaining_count, report.old_epochs
        ));
        return Ok(report);
    }
    // A gc or expire that judged our leases dead may be running: no drop then.
    crate::lease::Lease::ensure_all_held(held)?;
    let out = keys::change(
        repo.storage(),
        unlock,
        state_dir,
        KeyChange::DropBefore(NothingSealedBefore { keep_from: newest }),
    )
    .await?;
    report.dropped_epochs = report
        .old_epochs
        .iter()
        .copied()
        .filter(|e| *e < out.config.data_key_version.min(newest))
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests;
