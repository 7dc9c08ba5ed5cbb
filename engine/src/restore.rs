//! Restoring a backup into a data directory.
//!
//! Before writing anything, a preflight checks that the manifest authenticates, that every
//! block it references is indexed, and that every pack holding them exists. Then directories
//! (tablespaces as links to their recorded locations), then files in parallel on the restore's
//! own threads ([`restore_pool`]). Reads: a file's blocks that follow each other in one pack
//! (up to [`MAX_GAP`] bytes apart) come in one range read; small files are sorted by where
//! they lie and read together in spans ([`plan_work`]), so an object store sees a few hundred
//! requests for a cluster of a thousand files, not one per file. Each block is authenticated
//! and opened (the AEAD binds its id; the content id is not recomputed), written at its offset
//! (all-zero blocks are left as holes), and checked without the file being read back: for
//! backups since manifest format 3 each block's keyed content id is recomputed and must be the
//! id the manifest lists at that position (the backup hashed each block once, for its id, and
//! no longer a second time for a whole-file checksum); for older ones the block's BLAKE3
//! chaining value is computed at its offset and the merged value must equal the file's
//! checksum in the manifest ([`crate::codec::tree_hash`]). Files of [`direct_io::MIN_FILE_LEN`]
//! or more are written with `O_DIRECT` ([`direct_io`]). Each file is fsynced in the background
//! ([`BackgroundSyncs`]) while the next are written. Last, `backup_label`, `tablespace_map`,
//! `recovery.signal` and the recovery settings. Run as root, every directory and file goes to
//! the data directory's owner (that of `PG_VERSION` in the manifest), with the recorded
//! permission bits and never a setuid, setgid or sticky bit: PostgreSQL reads and writes
//! everything in its data directory as one user, and per-file owners and modes from a manifest
//! are what its OS user could shape (a file swapped for a link to `/usr/bin/passwd` between a
//! full and an incremental backup is recorded with root's uid and mode `04755`).
//!
//! Hostile data directories: `restore` often runs as root into a directory owned by
//! PostgreSQL's OS user, and `--delta` reuses whatever that user left there. Nothing here
//! touches the target by path: every directory, file, `chmod` and `chown` goes through
//! descriptors opened beneath the data directory without following links
//! ([`crate::fs_beneath`]). A link where the backup has a directory or file is removed (the
//! link, not its target) and the real thing created; the delta walk that removes extra files
//! never descends through a link. The only links left are the tablespace links
//! `pg_tblspc/<oid>` and, with `--wal-dir`, `pg_wal` ([`wal_dir`]), which the restore
//! recreates itself; files of a tablespace or of `pg_wal` are written beneath a descriptor of
//! the location the restore set up, never through the link. The
//! target directory and tablespace locations themselves are followed if they are links, unless
//! the link sits in a directory owned by another user than the one restoring
//! ([`fs_beneath::open_root_checked`]): that user could have pointed it anywhere.
//!
//! Unfinished restores: a restore that is killed, crashes or fails part-way must never look
//! like a data directory PostgreSQL can start. So, in this order: the marker
//! [`INCOMPLETE_MARKER`] is written and fsynced in the data directory (a delta restore also
//! removes an existing `global/pg_control`); directories and files are restored, with
//! `global/pg_control` held back from the parallel stream; the recovery files are written;
//! every restored directory is fsynced; only then is `global/pg_control` restored (and
//! fsynced with its directory); last the marker is removed and the data directory fsynced.
//! PostgreSQL refuses to start without `pg_control`, so an interrupted restore cannot be
//! started by mistake; a plain restore into a directory with the marker refuses and says to
//! finish it with `--delta`, which recognises the marker, reuses what was already written
//! and completes the restore.
//!
//! Memory: the manifest's file list is spilled to a temporary file while it is parsed
//! ([`crate::store::manifest::file_spool`]) and each file's entry is read back when it is restored, so
//! what grows with the backup is the index of its blocks and each file's path. The index is
//! held in memory (52 bytes per distinct block, 84 while it loads, see [`BlockIndex`]) up to
//! [`RestoreOptions::index_memory`]; past it, in a sorted table in `TMPDIR`
//! ([`crate::store::block_table`]: a quarter of a byte per block in memory, one `pread` per
//! lookup).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use crate::codec::tree_hash::{PartHash, PartedHash};
use crate::cpu::{self, CpuPool};
use crate::crypto::ContentId;
use crate::db_select::{self, DbSelection, LeftOut};
use crate::direct_io;
use crate::error::{Error, Result};
use crate::fs_beneath;
use crate::index::IndexEntry;
use crate::pack::{open_block, open_block_authenticated, open_block_authenticated_into};
use crate::pg::tablespace_dir;
use crate::progress::Progress;
use crate::recovery::{self, Plan, Target, TimelineTarget};
use crate::repo::{layout, Repository};
use crate::store::block_table::{self, WantedIds};
use crate::store::blocks::BlockIndex;
use crate::store::ids::PackId;
use crate::store::manifest::entries::Patch;
use crate::store::manifest::file_spool::SpooledFiles;
use crate::store::manifest::{self, FileEntry, Manifest};
use crate::store::patches;
use crate::wal_dir;

/// Largest single range read.
const MAX_RUN: u64 = 8 << 20;
/// Most file bytes one run restores. A run is opened and written by one thread, block after
/// block; bounded by sealed bytes alone, a run of well-compressed blocks (pgbench tables seal
/// at a twentieth of their size) was 160 MiB of file, and the last such runs of a restore
/// kept one core busy while the other idled for a few tenths of a second. Smaller runs spread
/// a large file over every thread of the pool, for a few more range reads.
const MAX_RUN_FILE_BYTES: u64 = 16 << 20;
/// Bytes of other blocks a range read may carry between two blocks of the file it restores:
/// reading past a few blocks costs less than another request. Packs written before backups
/// batched each file's blocks interleave the blocks of the files read in parallel.
const MAX_GAP: u64 = 256 << 10;
/// Runs (range reads, each up to [`MAX_RUN`] sealed bytes, opened and written by one thread)
/// in flight at once, over all files: one per thread of the pool ([`restore_threads`]), so at
/// most that many times [`MAX_RUN`] of sealed bytes in memory (64 MiB on 2 cores), whatever
/// `jobs` says. It was two per file, so memory grew with `--jobs` (512 MiB of sealed bytes at
/// `--jobs 32`), and a file restored alone at the end had two threads of the pool. Measured at
/// scale 500 against two per file: 0.99x the wall time (five alternating pairs), inside the
/// noise; what it buys is the bound.
struct RunBudget {
    turns: tokio::sync::Semaphore,
    size: usize,
}

impl RunBudget {
    fn new(size: usize) -> Self {
        RunBudget {
            turns: tokio::sync::Semaphore::new(size),
            size,
        }
    }
}

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Cluster.
    pub cluster: String,
    /// Backup id; `None`: the newest.
    pub backup: Option<String>,
    /// Target data directory (must not exist or be empty).
    pub target: PathBuf,
    /// Files restored in parallel.
    pub jobs: usize,
    /// `restore_command` to write into the recovery settings.
    pub restore_command: String,
    /// Restore recorded ownership (only meaningful as root).
    pub restore_owner: bool,
    /// Recovery target.
    pub target_spec: Target,
    /// Stop just before the target instead of just after (`recovery_target_inclusive = off`).
    pub target_exclusive: bool,
    /// `recovery_target_action` (`None`: PostgreSQL's default, pause).
    pub target_action: Option<String>,
    /// Timeline to follow.
    pub target_timeline: TimelineTarget,
    /// Restore as a standby (`standby.signal`, no target).
    pub standby: bool,
    /// With `standby`: `primary_conninfo`, so the replica streams from the primary once it
    /// has replayed what the archive holds.
    pub primary_conninfo: Option<String>,
    /// Only plan and check; write nothing.
    pub dry_run: bool,
    /// Reuse an existing data directory, rewriting only blocks that differ.
    pub delta: bool,
    /// Tablespace locations by OID, replacing the recorded ones.
    pub tablespace_map: Vec<(u32, PathBuf)>,
    /// Put every tablespace under this directory (`DIR/<oid>`).
    pub tablespace_map_all: Option<PathBuf>,
    /// Write large files with `O_DIRECT` where the filesystem takes it ([`direct_io`]);
    /// `false`: through the page cache.
    pub direct_io: bool,
    /// Memory for the index of the backup's blocks, in bytes: a backup with more blocks than
    /// fit ([`INDEX_BYTES_PER_BLOCK`] each) has its index in a table on local disk instead
    /// ([`crate::store::block_table`]).
    pub index_memory: u64,
    /// Databases to restore or leave out ([`db_select`]); empty: all of them.
    pub databases: DbSelection,
    /// `archive_mode = off` in the recovery settings: a copy restored beside production
    /// (promoted to look at something, never to take over) must not archive its new
    /// timeline into production's repository, where a later restore to the latest timeline
    /// would follow it.
    pub archive_off: bool,
    /// The operator's own settings for the block ([`crate::recovery_options`]), written after
    /// pgcairn's.
    pub recovery_options: Vec<(String, String)>,
    /// Make `pg_wal` a link to this directory and restore its contents there
    /// ([`crate::wal_dir`]); `None`: a directory in the data directory.
    pub wal_dir: Option<PathBuf>,
    /// Write the backup's configuration files from outside the data directory under this
    /// directory, at their recorded paths ([`crate::config_files`]); `None`: not written.
    pub config_dir: Option<PathBuf>,
    /// Keep `expire` away from the backup restored and the WAL after it for this long after
    /// the restore ends ([`crate::hold`]); `None`: no hold.
    pub hold: Option<std::time::Duration>,
}

/// Default [`RestoreOptions::hold`]: a day, for the recovery that follows the restore.
pub const DEFAULT_HOLD: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Default [`RestoreOptions::index_memory`]: 64 MiB, the index of about 800 000 blocks
/// (50 GiB of data in 64 KiB blocks) held in memory.
pub const DEFAULT_INDEX_MEMORY: u64 = 64 << 20;

/// Memory per distinct block of an index held in memory, while it is loaded: the id
/// collected (32 bytes) and its entry (52).
pub const INDEX_BYTES_PER_BLOCK: u64 = 84;

impl RestoreOptions {
    /// Options for a plain restore to the end of the archive.
    pub fn new(cluster: &str, target: PathBuf, restore_command: String) -> Self {
        RestoreOptions {
            cluster: cluster.to_string(),
            backup: None,
            target,
            jobs: 2,
            restore_command,
            restore_owner: false,
            target_spec: Target::EndOfArchive,
            target_exclusive: false,
            target_action: None,
            target_timeline: TimelineTarget::Latest,
            standby: false,
            primary_conninfo: None,
            dry_run: false,
            delta: false,
            tablespace_map: Vec::new(),
            tablespace_map_all: None,
            direct_io: true,
            index_memory: DEFAULT_INDEX_MEMORY,
            databases: DbSelection::default(),
            hold: Some(DEFAULT_HOLD),
            archive_off: false,
            recovery_options: Vec::new(),
            wal_dir: None,
            config_dir: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// The plan it followed.
    pub plan: Plan,
    /// Bytes already right in the target (delta restore).
    pub bytes_reused: u64,
    /// Files removed because the backup does not have them (delta restore).
    pub files_removed: u64,
    /// Backup restored.
    pub backup_id: String,
    /// Files written.
    pub files: u64,
    /// Files this restore fsynced: every file, including those a delta restore found already
    /// right (a restore interrupted before its syncs may have left them in the page cache
    /// only).
    pub files_synced: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Distinct blocks the backup references (the size of its block index).
    pub index_blocks: u64,
    /// Whether the block index was over `index_memory` and went to a table on local disk.
    pub index_on_disk: bool,
    /// Databases left out ([`db_select`]): their files created sparse, to be dropped.
    pub left_out: LeftOut,
    /// Bytes of the files left out (created sparse, neither read nor written).
    pub bytes_left_out: u64,
    /// Where `pg_wal` was a link to when the backup was taken ([`Manifest::wal_link`]).
    pub backup_wal_link: Option<PathBuf>,
    /// The backup's configuration files from outside the data directory, as recorded.
    pub config_files: Vec<crate::config_files::ConfigFile>,
    /// Where `--config-dir` wrote them.
    pub config_written: Vec<PathBuf>,
    /// What to review in the files written ([`crate::config_files::review`]).
    pub config_review: Vec<String>,
    /// The hold keeping expire away from the backup and its WAL ([`crate::hold`]), if one
    /// was taken.
    pub hold: Option<crate::storage::ObjectKey>,
}

/// Checks that everything the backup references is present; returns the index of its
/// blocks, in memory when it has at most `in_memory_blocks` distinct blocks, else in a table
/// on local disk ([`crate::store::block_table`]). `files` is the backup's file list (spilled
/// to local disk: read here twice at most, one entry at a time). The files of databases
/// `left_out` are not restored: their blocks are neither wanted nor checked.
pub async fn preflight(
    repo: &Repository,
    m: &Manifest,
    files: &SpooledFiles,
    in_memory_blocks: usize,
    left_out: &LeftOut,
) -> Result<BlockIndex> {
    let mut wanted = WantedIds::new(in_memory_blocks, block_table::RUN_IDS);
    for f in files.entries() {
        let f = f?;
        if left_out.covers(&f.path) {
            continue;
        }
        for id in f.blocks.iter().filter_map(|b| b.0) {
            wanted.push(id)?;
        }
        for p in &f.patches {
            wanted.push(p.delta)?;
        }
    }
    let index = BlockIndex::load_wanted_ids(repo, wanted).await?;
    if let Some(missing) = index.first_missing()? {
        let mut path = String::from("?");
        for f in files.entries() {
            let f = f?;
            if f.blocks.iter().any(|b| b.0 == Some(missing))
                || f.patches.iter().any(|p| p.delta == missing)
            {
                path = f.path;
                break;
            }
        }
        return Err(Error::corrupt(
            format!("backup {}", m.id),
            format!(
                "block {} of {path} is not in any index segment",
                missing.to_hex()
            ),
        ));
    }
    let mut checks = futures::stream::iter(index.pack_ids()?)
        .map(|p| async move { (p, repo.storage().head(&layout::pack(&p)).await) })
        .buffer_unordered(16);
    while let Some((p, r)) = checks.next().await {
        if let Err(e) = r {
            return Err(if e.is_not_found() {
                Error::corrupt(
                    layout::pack(&p).to_string(),
                    format!("pack referenced by backup {} is missing", m.id),
                )
            } else {
                e.into()
            });
        }
    }
    Ok(index)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("writing {}", path.display()), e)
}

/// Marks a data directory whose restore has not finished. Written (and fsynced) before
/// anything else, removed after everything else is durable.
pub const INCOMPLETE_MARKER: &str = "pgcairn.restore-incomplete";

/// Whether `dir` holds an unfinished restore ([`INCOMPLETE_MARKER`]).
pub fn is_incomplete(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(INCOMPLETE_MARKER)).is_ok()
}

/// What to tell an operator about an unfinished restore in `dir`.
pub fn incomplete_hint(dir: &Path) -> String {
    format!(
        "{} holds an unfinished restore (marked by {INCOMPLETE_MARKER}; it has no global/pg_control, \
         so PostgreSQL will not start it): finish it with `pgcairn restore --delta --pgdata {}` \
         (same backup and target), or empty the directory",
        dir.display(),
        dir.display()
    )
}

/// Written last, so that a data directory without it (PostgreSQL refuses to start) is one
/// whose restore did not finish.
const PG_CONTROL: &str = "global/pg_control";

fn ensure_empty_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                if is_incomplete(dir) {
                    return Err(Error::Config(incomplete_hint(dir)));
                }
                return Err(Error::Config(format!(
                    "{what} {} is not empty; restore into an empty or new directory (delta restore comes with --delta)",
                    dir.display()
                )));
            }
            Ok(())
        }
        // Created later, through trusted links only ([`fs_beneath::create_root_checked`]).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir, e)),
    }
}

/// The `(uid, gid)` every restored entry gets when restoring as root: PG_VERSION's. Root
/// itself is refused (PostgreSQL never runs as root, and everything restored, a tablespace
/// location included, would be root's as the manifest dictates): a manifest can say so only
/// if PG_VERSION was missing or a link to a file of root's when the backup read it.
fn data_directory_owner(backup: &str, pg_version: Option<FileEntry>) -> Result<(u32, u32)> {
    match pg_version {
        Some(f) if f.uid != 0 => Ok((f.uid, f.gid)),
        found => Err(Error::Config(format!(
            "backup {backup} {}: PostgreSQL never runs as root, so a root restore has no owner \
             to give the files. Restore as the cluster's OS user (`runuser -u postgres -- pgcairn \
             restore ...`), into a directory that user can write",
            if found.is_some() {
                "records PG_VERSION as root's"
            } else {
                "has no PG_VERSION"
            }
        ))),
    }
}

/// Refuses a tablespace location that is not a plain absolute path. The manifest records
/// where `pg_tblspc/<oid>` pointed, which PostgreSQL's OS user can set to anything: a relative
/// path would be taken from the restore's working directory and a `..` could lead elsewhere on
/// this host than it did on the source.
fn tablespace_location_is_plain(oid: u32, location: &Path) -> Result<()> {
    use std::path::Component;
    let plain = location.is_absolute()
        && location
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && location.components().count() > 1;
    if plain {
        return Ok(());
    }
    Err(Error::Config(format!(
        "tablespace {oid}: the backup records its location as {:?}, not a plain absolute path \
         (no `..`, not relative, not `/`); restore it to a directory of your choice with \
         --tablespace-map {oid}=DIR",
        location.display().to_string()
    )))
}

/// Restores a backup.
pub async fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    if opts.standby && opts.target_spec != Target::EndOfArchive {
        return Err(Error::Config(
            "--type standby takes no recovery target: a standby follows the archive".into(),
        ));
    }
    if let Some(c) = &opts.primary_conninfo {
        check_primary_conninfo(c, opts.standby)?;
    }
    crate::recovery_options::check(&opts.recovery_options)?;
    if opts.standby && opts.archive_off {
        return Err(Error::Config(
            "--archive-mode off with --type standby: a standby is there to take over, and once \
             promoted it must archive. Use --archive-mode off for a copy that is not to become \
             the primary"
                .into(),
        ));
    }
    let (chosen, plan, hold) = plan_and_hold(repo, opts).await?;
    let work = restore_planned(repo, opts, progress, started, chosen, plan);
    let Some((id, key)) = hold else {
        return work.await;
    };
    // Kept alive while the restore runs (a restore can outlast the hold: hours of data, a
    // short `--hold`), then extended from its end, when the recovery starts.
    let d = opts.hold.unwrap_or_default();
    let keep = async {
        loop {
            tokio::time::sleep(
                (d / 2).clamp(std::time::Duration::from_secs(1), crate::hold::EXTEND_EVERY),
            )
            .await;
            if let Err(e) = crate::hold::extend(repo, &opts.cluster, &id, &key, d).await {
                tracing::warn!("could not extend the hold {key} on backup {id}: {e}");
            }
        }
    };
    let result = tokio::select! {
        r = work => r,
        _ = keep => unreachable!("the hold is kept until the restore ends"),
    };
    match result {
        Ok(s) => match crate::hold::extend(repo, &opts.cluster, &id, &key, d).await {
            Ok(()) => Ok(RestoreSummary {
                hold: Some(key),
                ..s
            }),
            Err(e) => {
                tracing::warn!(
                    "could not extend the hold {key} on backup {id} ({e}): an expire running \
                     during the recovery may remove WAL it needs"
                );
                Ok(s)
            }
        },
        Err(e) => {
            let _ = crate::hold::release(repo, &key).await;
            Err(e)
        }
    }
}

/// Chooses the backup and, unless told not to or dry, holds it against `expire`
/// ([`crate::hold`]), then plans again: whatever an expire removed before the hold is then
/// missing, before anything is written. Returns the hold (backup id, object) with the plan.
#[allow(clippy::type_complexity)]
async fn plan_and_hold(
    repo: &Repository,
    opts: &RestoreOptions,
) -> Result<(Manifest, Plan, Option<(String, crate::storage::ObjectKey)>)> {
    let plan_once = || {
        recovery::plan(
            repo,
            &opts.cluster,
            opts.backup.as_deref(),
            &opts.target_spec,
            opts.target_timeline,
        )
    };
    let (mut chosen, mut plan) = plan_once().await?;
    let Some(d) = opts.hold.filter(|_| !opts.dry_run && !repo.is_dry_run()) else {
        return Ok((chosen, plan, None));
    };
    let mut held: Option<(String, crate::storage::ObjectKey)> = None;
    // A backup committed between two plans may be chosen instead: held in turn.
    for _ in 0..3 {
        if let Some((_, key)) = held.take() {
            let _ = crate::hold::release(repo, &key).await;
        }
        let took =
            crate::hold::take(repo, &opts.cluster, &chosen.id, d, crate::hold::EXPIRE_WAIT).await;
        match took {
            Ok(key) => held = Some((chosen.id.clone(), key)),
            Err(e) => tracing::warn!(
                "could not hold backup {} against expire ({e}): an expire running during the \
                 recovery may remove WAL it needs",
                chosen.id
            ),
        }
        // Planned again in any case: an expire may have run while the hold waited.
        let (c, p) = match plan_once().await {
            Ok(cp) => cp,
            Err(e) => {
                if let Some((_, key)) = held.take() {
                    let _ = crate::hold::release(repo, &key).await;
                }
                return Err(e);
            }
        };
        let same = c.id == chosen.id;
        (chosen, plan) = (c, p);
        if same || held.is_none() {
            return Ok((chosen, plan, held));
        }
    }
    // Another backup each time: go on with the last plan, unheld.
    if let Some((_, key)) = held.take() {
        let _ = crate::hold::release(repo, &key).await;
    }
    tracing::warn!(
        "backup {} was not held against expire (newer backups kept arriving while the restore \
         planned)",
        chosen.id
    );
    Ok((chosen, plan, None))
}

/// [`restore`] of the backup `chosen`, as `plan` says.
async fn restore_planned(
    repo: &Repository,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    started: Instant,
    chosen: Manifest,
    mut plan: Plan,
) -> Result<RestoreSummary> {
    // The file list goes to local disk as the manifest is parsed: memory holds the index of
    // the backup's blocks (up to `index_memory`, then a table on disk) and each file's path,
    // not the block lists.
    let (mut m, files) = manifest::load_spilled(
        repo,
        &opts.cluster,
        &chosen.id,
        manifest::PartFingerprints::Drop,
    )
    .await?;
    // Only this cluster's directory of each tablespace location is restored: backups from
    // before its name was recorded also hold what other clusters keep there, left out here
    // before anything counts them (database selection, the preflight, sizes).
    let own_tablespace_dir = m.own_tablespace_dir();
    let before = m.directories.len();
    m.directories
        .retain(|d| !own_tablespace_dir.excludes(&d.path));
    // The whole list is dropped once copied: it holds a spool file and every path.
    let files = {
        let all = files;
        if all.paths().any(|p| own_tablespace_dir.excludes(p)) {
            let mut kept = crate::store::manifest::file_spool::FileSpool::new()?;
            let mut stats = crate::store::manifest::BackupStats::default();
            for f in all.entries() {
                let f = f?;
                if !own_tablespace_dir.excludes(&f.path) {
                    kept.push(&f, &mut stats)?;
                }
            }
            m.stats.files = stats.files;
            m.stats.size = stats.size;
            plan.restore_bytes = stats.size;
            kept.into_lookup()?
        } else {
            all
        }
    };
    if m.directories.len() < before {
        tracing::warn!(
            "backup {} holds directories of other clusters sharing its tablespace locations \
             (taken before pgcairn backed up only this cluster's {}): they are not restored",
            m.id,
            tablespace_dir_label(&own_tablespace_dir)
        );
    }
    let left_out = db_select::select(&m.databases, files.paths(), &opts.databases)?;
    if opts.standby && !left_out.databases.is_empty() {
        return Err(Error::Config(
            "--type standby restores every database (a standby must be able to take over): \
             drop --db-include/--db-exclude, or restore without --type standby"
                .into(),
        ));
    }
    db_select::check_replayable(&left_out, m.checksums_verified, &opts.recovery_options)?;
    let in_memory_blocks =
        usize::try_from(opts.index_memory / INDEX_BYTES_PER_BLOCK).unwrap_or(usize::MAX);
    let index = Arc::new(preflight(repo, &m, &files, in_memory_blocks, &left_out).await?);
    remap_tablespaces(&mut m, opts)?;
    let target = &opts.target;
    check_wal_dir(&m, opts)?;
    if let Some(dir) = &opts.config_dir {
        crate::config_files::check_free(dir, &m.config_files)?;
    }
    let config_files = m.config_files.clone();
    for t in &m.tablespaces {
        tablespace_location_is_plain(t.oid, &t.location)?;
    }
    if files.get(PG_CONTROL)?.is_none() {
        return Err(Error::corrupt(
            format!("backup {}", m.id),
            "it holds no global/pg_control, so no restore of it can start: restore another \
             backup",
        ));
    }
    // The owner of the data directory: that of PG_VERSION, which every cluster has.
    let owner = if opts.restore_owner {
        Some(data_directory_owner(
            &m.id.to_string(),
            files.get("PG_VERSION")?,
        )?)
    } else {
        None
    };
    if !opts.delta {
        ensure_empty_dir(target, "target directory")?;
        for t in &m.tablespaces {
            // PostgreSQL's own rule: the location may hold anything but this cluster's
            // directory (another major's, kept by pg_upgrade; a mount point's lost+found).
            match &own_tablespace_dir {
                tablespace_dir::Own::Named(name) => ensure_empty_dir(
                    &t.location.join(name),
                    &format!("tablespace {} directory", t.oid),
                )?,
                tablespace_dir::Own::Major(_) => {
                    for name in own_dirs_in(&t.location, &own_tablespace_dir)? {
                        ensure_empty_dir(
                            &t.location.join(name),
                            &format!("tablespace {} directory", t.oid),
                        )?;
                    }
                }
            }
        }
    }
    // A dry run checks what the restore would refuse (a target or tablespace directory not
    // empty; with --delta, a target a running server uses) and stops before writing anything.
    if opts.dry_run {
        if opts.delta {
            // Read only, not through the checked root the restore creates: nothing is created.
            let read = match std::fs::read(target.join("postmaster.pid")) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
            refuse_postmaster_read(read, target)?;
        }
        let bytes_left_out = left_out_bytes(&files, &left_out);
        return Ok(RestoreSummary {
            plan,
            bytes_reused: 0,
            files_removed: 0,
            backup_id: m.id.clone(),
            files: 0,
            files_synced: 0,
            bytes: 0,
            seconds: 0.0,
            index_blocks: index.wanted(),
            index_on_disk: index.on_disk(),
            left_out,
            bytes_left_out,
            backup_wal_link: m.wal_link.clone(),
            config_files,
            config_written: Vec::new(),
            config_review: Vec::new(),
            hold: None,
        });
    }
    // Run as root into a directory someone else owns: its own path must not be a link that
    // user planted.
    let me = crate::pg::instance::current_uid();
    let (root, _) =
        fs_beneath::create_root_checked(target, me, 0o700).map_err(|e| io(target, e))?;
    if opts.delta {
        refuse_running_postmaster(&root, target)?;
    }
    // Unfinished until proven otherwise: the marker first, and no pg_control until the end.
    fs_beneath::set_owner_mode(root.as_fd(), owner, 0o700).map_err(|e| io(target, e))?;
    let marker = format!(
        "pgcairn restore of backup {} into {} started and has not finished.\n\
         global/pg_control is written last, so PostgreSQL will not start this directory.\n\
         Finish it with: pgcairn restore --delta --pgdata {}{}\n",
        m.id,
        target.display(),
        target.display(),
        opts.wal_dir
            .as_ref()
            .map(|w| format!(" --wal-dir {}", w.display()))
            .unwrap_or_default()
    );
    fs_beneath::write_file(
        root.as_fd(),
        Path::new(INCOMPLETE_MARKER),
        marker.as_bytes(),
        0o600,
        owner,
    )
    .map_err(|e| io(&target.join(INCOMPLETE_MARKER), e))?;
    fs_beneath::sync(root.as_fd()).map_err(|e| io(target, e))?;
    let mut tree = fs_beneath::Tree {
        root,
        tablespaces: Vec::new(),
        wal: None,
    };
    if opts.delta {
        if let Some((dir, name)) = tree
            .parent_existing(PG_CONTROL)
            .map_err(|e| io(&target.join(PG_CONTROL), e))?
        {
            fs_beneath::remove_entry(dir.as_fd(), name)
                .and_then(|()| fs_beneath::sync(dir.as_fd()))
                .map_err(|e| io(&target.join(PG_CONTROL), e))?;
        }
    }
    for t in &m.tablespaces {
        let (fd, created) = fs_beneath::create_root_checked(&t.location, me, 0o700)
            .map_err(|e| io(&t.location, e))?;
        if let Some((uid, gid)) = owner {
            // A location the manifest names and the host already has is given to nobody:
            // the manifest's tablespace links are what PostgreSQL's OS user made them
            // (`pg_tblspc/<oid>` pointing at `/usr/local/bin`), so only a directory this
            // restore created, or one the data directory's owner already holds, is used.
            let holder = rustix::fs::fstat(&fd)
                .map_err(|e| io(&t.location, e.into()))?
                .st_uid;
            // A location the operator named (`--tablespace-map`, `--tablespace-map-all`), a
            // mount point made for it say, is theirs to give.
            let named = opts.tablespace_map.iter().any(|(oid, _)| *oid == t.oid)
                || opts.tablespace_map_all.is_some();
            if !created && !named && holder != uid {
                return Err(Error::Config(format!(
                    "tablespace {} location {} exists and belongs to uid {holder}, not to the \
                     data directory's owner (uid {uid}); pgcairn does not give an existing \
                     directory away. Give it to that user yourself if it is meant for this \
                     tablespace, or restore the tablespace elsewhere with --tablespace-map {}=DIR",
                    t.oid,
                    t.location.display(),
                    t.oid
                )));
            }
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| io(&t.location, e.into()))?;
        }
        tree.tablespaces.push((t.oid, fd));
    }
    if let Some(w) = &opts.wal_dir {
        // Created durably (a crash must not leave pg_wal linking to nothing), through
        // trusted links only.
        let (fd, _) = fs_beneath::create_root_checked(w, me, 0o700).map_err(|e| io(w, e))?;
        tree.wal = Some(fd);
    }
    // `pg_wal` as a link to `--wal-dir`: its descriptor and path, set up together above.
    let wal_link = tree.wal.as_ref().zip(opts.wal_dir.as_deref());
    for d in &m.directories {
        let path = target.join(&d.path);
        let tablespace = d
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok());
        match tablespace.and_then(|oid| m.tablespaces.iter().find(|t| t.oid == oid)) {
            Some(t) => {
                let (dir, name) = tree.parent_for_write(&d.path).map_err(|e| io(&path, e))?;
                fs_beneath::ensure_symlink(dir.as_fd(), name, &t.location, owner)
                    .map_err(|e| io(&path, e))?;
            }
            None if d.path == "pg_wal" && wal_link.is_some() => {
                let (wal, w) = wal_link.expect("checked in the guard");
                fs_beneath::ensure_symlink(tree.root.as_fd(), Path::new("pg_wal"), w, owner)
                    .map_err(|e| io(&path, e))?;
                fs_beneath::set_owner_mode(wal.as_fd(), owner, d.mode).map_err(|e| io(w, e))?;
            }
            None => {
                let fd = tree.ensure_dir(&d.path, d.mode).map_err(|e| io(&path, e))?;
                fs_beneath::set_owner_mode(fd.as_fd(), owner, d.mode).map_err(|e| io(&path, e))?;
            }
        }
    }
    let files_removed = if opts.delta {
        remove_extra_files(&m, files.paths(), &tree, target)?
    } else {
        0
    };
    let total: u64 = m.stats.size;
    progress.phase("restore", Some(total));
    let files = Arc::new(files);
    let tree = Arc::new(tree);
    // pg_control is held back: written after everything else is durable. The files of
    // databases left out are created sparse, after the others.
    let (sparse, paths): (Vec<String>, Vec<String>) = files
        .paths()
        .filter(|p| *p != PG_CONTROL && !own_tablespace_dir.excludes(p))
        .map(str::to_string)
        .partition(|p| left_out.covers(p));
    // One run in flight per thread of the pool.
    let threads = restore_threads();
    let pool = restore_pool(threads)?;
    let runs = RunBudget::new(threads);
    let job = FileJob {
        repo,
        pool: &pool,
        runs: &runs,
        index: &index,
        tree: &tree,
        target,
        block_size: m.block_size as u64,
        delta: opts.delta,
        direct_io: opts.direct_io,
        owner,
    };
    // Small files whose blocks lie close together in a pack are read together: one range
    // read for many files ([`plan_work`]).
    let mut work = plan_work(&files, paths, &index, opts.delta)?;
    work.extend(sparse.into_iter().map(Work::Sparse));
    let mut writes = futures::stream::iter(work)
        .map(|item| {
            let files = files.clone();
            async move {
                let (paths, span) = match item {
                    Work::Sparse(path) => {
                        let f = listed_entry(&files, &path)?;
                        let written = job.create_sparse(&f).await?;
                        return Ok(vec![(f.size, f.size, target.join(&f.path), written, true)]);
                    }
                    Work::File(path) => (vec![path], None),
                    Work::Span { pack, range, paths } => {
                        let key = layout::pack(&pack);
                        let bytes = repo.storage().get_range(&key, range.clone()).await?;
                        (paths, Some((range.start, bytes)))
                    }
                };
                let span = span.as_ref();
                let files = &files;
                futures::stream::iter(paths)
                    .map(|path| async move {
                        let f = listed_entry(files, &path)?;
                        let (reused, written) = job.restore_file(&f, span).await?;
                        Ok::<_, Error>((f.size, reused, target.join(&f.path), written, false))
                    })
                    .buffer_unordered(SPAN_FILES_AT_ONCE)
                    .try_collect::<Vec<_>>()
                    .await
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    let (mut bytes, mut bytes_reused, mut files_synced, mut bytes_left_out) = (0, 0, 0, 0);
    let mut syncs = BackgroundSyncs::default();
    while let Some(r) = writes.next().await {
        for (n, reused, path, written, sparse) in r? {
            if sparse {
                bytes_left_out += n;
            } else {
                bytes += n;
                bytes_reused += reused;
            }
            progress.advance(n, n - reused);
            syncs.push(path, written).await?;
            files_synced += 1;
        }
    }
    drop(writes);
    syncs.finish().await?;
    write_recovery_files(&m, opts, &tree, owner)?;
    // Every directory's entries durable, then pg_control, then the marker goes.
    sync_tree(&m, &tree, target)?;
    if let Some(f) = files.get(PG_CONTROL)? {
        let (reused, written) = job.restore_file(&f, None).await?;
        written
            .sync_all()
            .map_err(|e| io(&target.join(PG_CONTROL), e))?;
        files_synced += 1;
        bytes += f.size;
        bytes_reused += reused;
        progress.advance(f.size, f.size - reused);
        let (dir, _) = tree
            .parent_for_write(PG_CONTROL)
            .map_err(|e| io(&target.join(PG_CONTROL), e))?;
        fs_beneath::sync(dir.as_fd()).map_err(|e| io(&target.join("global"), e))?;
    }
    fs_beneath::remove_entry(tree.root.as_fd(), Path::new(INCOMPLETE_MARKER))
        .and_then(|()| fs_beneath::sync(tree.root.as_fd()))
        .map_err(|e| io(&target.join(INCOMPLETE_MARKER), e))?;
    // Outside the data directory, once it is complete: a failure here leaves it restorable.
    let config_written = match &opts.config_dir {
        Some(dir) => crate::config_files::write_all(dir, &m.config_files, owner.is_some())
            .map_err(|e| {
                Error::Config(format!(
                    "{} is restored, but the configuration files were not all written: {e}",
                    target.display()
                ))
            })?,
        None => Vec::new(),
    };
    let config_review = match &opts.config_dir {
        Some(dir) => crate::config_files::review(&m.config_files, dir, target),
        None => Vec::new(),
    };
    progress.finish();
    Ok(RestoreSummary {
        plan,
        bytes_reused,
        files_removed,
        backup_id: m.id.clone(),
        files: files.len() as u64,
        files_synced,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        index_blocks: index.wanted(),
        index_on_disk: index.on_disk(),
        left_out,
        bytes_left_out,
        backup_wal_link: m.wal_link.clone(),
        config_files,
        config_written,
        config_review,
        hold: None,
    })
}

/// `--wal-dir` where it can go and what it holds, and a delta restore over a linked `pg_wal`
/// without it ([`wal_dir`]): before anything is written.
fn check_wal_dir(m: &Manifest, opts: &RestoreOptions) -> Result<()> {
    let target = &opts.target;
    match &opts.wal_dir {
        Some(w) => {
            let locations: Vec<&Path> =
                m.tablespaces.iter().map(|t| t.location.as_path()).collect();
            wal_dir::check_place(w, target, &locations)?;
            wal_dir::check_contents(w, opts.delta, target)
        }
        // Read by path: it only decides a refusal. A link that appears after this check is
        // replaced by a directory like any other link in the data directory.
        None if opts.delta => match std::fs::read_link(target.join("pg_wal")) {
            Ok(link) => Err(wal_dir::linked_without_option(target, &link)),
            Err(_) => Ok(()),
        },
        None => Ok(()),
    }
}

/// Bytes of the files of the databases left out.
fn left_out_bytes(files: &SpooledFiles, left_out: &LeftOut) -> u64 {
    files
        .paths()
        .filter(|p| left_out.covers(p))
        .filter_map(|p| files.size(p))
        .sum()
}

/// Makes every restored directory's entries durable: each directory of the manifest, each
/// tablespace location and the data directory.
fn sync_tree(m: &Manifest, tree: &fs_beneath::Tree, target: &Path) -> Result<()> {
    for d in &m.directories {
        let is_link = d
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok())
            .is_some_and(|oid| tree.tablespace(oid).is_some())
            || (d.path == "pg_wal" && tree.wal.is_some());
        if is_link {
            continue;
        }
        let path = target.join(&d.path);
        let fd = tree.ensure_dir(&d.path, d.mode).map_err(|e| io(&path, e))?;
        fs_beneath::sync(fd.as_fd()).map_err(|e| io(&path, e))?;
    }
    for (oid, fd) in &tree.tablespaces {
        fs_beneath::sync(fd.as_fd())
            .map_err(|e| io(&target.join(format!("pg_tblspc/{oid}")), e))?;
    }
    if let Some(wal) = &tree.wal {
        fs_beneath::sync(wal.as_fd()).map_err(|e| io(&target.join("pg_wal"), e))?;
    }
    fs_beneath::sync(tree.root.as_fd()).map_err(|e| io(target, e))
}

/// Applies `--tablespace-map` / `--tablespace-map-all` to the manifest's tablespaces and its
/// `tablespace_map` text (which PostgreSQL reads at startup to recreate the links).
fn remap_tablespaces(m: &mut Manifest, opts: &RestoreOptions) -> Result<()> {
    for (oid, _) in &opts.tablespace_map {
        if !m.tablespaces.iter().any(|t| t.oid == *oid) {
            let known: Vec<String> = m.tablespaces.iter().map(|t| t.oid.to_string()).collect();
            return Err(Error::Config(format!(
                "--tablespace-map {oid}=...: backup {} has no tablespace {oid} (it has: {})",
                m.id,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    for t in &mut m.tablespaces {
        if let Some((_, dir)) = opts.tablespace_map.iter().find(|(oid, _)| *oid == t.oid) {
            t.location = dir.clone();
        } else if let Some(all) = &opts.tablespace_map_all {
            t.location = all.join(t.oid.to_string());
        }
    }
    if m.tablespace_map.is_some() {
        let text: String = m
            .tablespaces
            .iter()
            .map(|t| format!("{} {}\n", t.oid, t.location.display()))
            .collect();
        m.tablespace_map = Some(text);
    }
    Ok(())
}

/// Delta restore needs PostgreSQL stopped: refuse if `postmaster.pid` names a live process.
fn refuse_running_postmaster(root: &OwnedFd, target: &Path) -> Result<()> {
    refuse_postmaster_read(
        fs_beneath::read_file(root.as_fd(), Path::new("postmaster.pid")),
        target,
    )
}

/// Refuses a target whose `postmaster.pid` (as read: absent is `Ok(None)`) names a live
/// process, or could not be read: a delta restore over a running server's files corrupts
/// them, so not knowing is a refusal too.
fn refuse_postmaster_read(read: std::io::Result<Option<Vec<u8>>>, target: &Path) -> Result<()> {
    match read {
        Ok(None) => Ok(()),
        Ok(Some(bytes)) => refuse_live_postmaster(&bytes, target),
        Err(e) => Err(Error::Config(format!(
            "cannot read {} ({e}), so cannot tell whether a PostgreSQL server runs there; a delta restore \
             over a running server's files would corrupt them. Run the restore as the data directory's owner \
             or as root, or, if no server runs there, remove postmaster.pid",
            target.join("postmaster.pid").display()
        ))),
    }
}

/// Refuses a target whose `postmaster.pid` (its bytes) names a live process.
fn refuse_live_postmaster(pid_file: &[u8], target: &Path) -> Result<()> {
    let text = String::from_utf8_lossy(pid_file);
    if let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::Config(format!(
                "{} is in use by a running PostgreSQL (postmaster.pid names live process {pid}); stop it before a delta restore",
                target.display()
            )));
        }
    }
    Ok(())
}

/// Delta restore: removes files and links under the target that the backup does not have.
/// Walks by descriptor and never descends through a link: links are removed (a link where
/// the backup has a file is removed too, the file is then written anew), except the
/// tablespace links the restore set up, whose locations are walked through their own
/// descriptors. In a location only this cluster's directory is cleaned: the rest is other
/// clusters' ([`tablespace_dir`]).
fn remove_extra_files<'a>(
    m: &'a Manifest,
    file_paths: impl Iterator<Item = &'a str>,
    tree: &fs_beneath::Tree,
    target: &Path,
) -> Result<u64> {
    use rustix::fs::FileType;
    let keep: HashSet<&str> = file_paths
        .chain(m.directories.iter().map(|d| d.path.as_str()))
        .collect();
    let dup = |fd: BorrowedFd<'_>, rel: &str| {
        fd.try_clone_to_owned()
            .map_err(|e| io(&target.join(rel), e))
    };
    let own = m.own_tablespace_dir();
    let mut removed = 0;
    let mut stack = vec![(dup(tree.root.as_fd(), "")?, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let at = |name: &str| {
            target.join(if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            })
        };
        let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| io(&at(""), e.into()))?;
        for e in entries {
            let e = e.map_err(|e| io(&at(""), e.into()))?;
            let name_os = std::ffi::OsStr::from_bytes(e.file_name().to_bytes());
            if name_os == "." || name_os == ".." {
                continue;
            }
            let name = name_os.to_string_lossy().to_string();
            let name_p = Path::new(name_os);
            if rel.is_empty() && name == INCOMPLETE_MARKER {
                continue;
            }
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if own.excludes(&path) {
                continue;
            }
            let mut ft = e.file_type();
            if ft == FileType::Unknown {
                ft = rustix::fs::statat(&dir, name_p, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                    .map_err(|err| io(&at(&name), err.into()))?;
            }
            let tablespace = path
                .strip_prefix("pg_tblspc/")
                .and_then(|oid| oid.parse::<u32>().ok())
                .and_then(|oid| tree.tablespace(oid));
            match (ft, tablespace) {
                (FileType::Symlink, Some(ts)) => stack.push((dup(ts, &path)?, path)),
                (FileType::Symlink, None) if path == "pg_wal" && tree.wal.is_some() => {
                    let wal = tree.wal.as_ref().expect("checked in the guard");
                    stack.push((dup(wal.as_fd(), &path)?, path));
                }
                (FileType::Directory, _) if keep.contains(path.as_str()) => {
                    let sub = fs_beneath::open_dir(dir.as_fd(), name_p)
                        .map_err(|err| io(&at(&name), err))?;
                    stack.push((sub, path));
                }
                (FileType::Directory, _) => {
                    fs_beneath::remove_tree(dir.as_fd(), name_p)
                        .map_err(|err| io(&at(&name), err))?;
                    removed += 1;
                }
                (FileType::Symlink, None) => {
                    fs_beneath::unlink(dir.as_fd(), name_p).map_err(|err| io(&at(&name), err))?;
                    if !keep.contains(path.as_str()) {
                        removed += 1;
                    }
                }
                _ if !keep.contains(path.as_str()) => {
                    fs_beneath::remove_entry(dir.as_fd(), name_p)
                        .map_err(|err| io(&at(&name), err))?;
                    removed += 1;
                }
                _ => {}
            }
        }
    }
    Ok(removed)
}

/// The entries of tablespace location `location` that are this cluster's directory (none
/// when the location does not exist yet).
fn own_dirs_in(location: &Path, own: &tablespace_dir::Own) -> Result<Vec<std::ffi::OsString>> {
    let entries = match std::fs::read_dir(location) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(location, e)),
    };
    let mut own_dirs = Vec::new();
    for e in entries {
        let name = e.map_err(|e| io(location, e))?.file_name();
        if name.to_str().is_some_and(|n| own.is(n)) {
            own_dirs.push(name);
        }
    }
    Ok(own_dirs)
}

/// How a message names this cluster's directory in tablespace locations.
fn tablespace_dir_label(own: &tablespace_dir::Own) -> String {
    match own {
        tablespace_dir::Own::Named(name) => name.clone(),
        tablespace_dir::Own::Major(major) => format!("PG_{major}_<catversion>"),
    }
}

/// The restore's threads per core. Each opens a run's blocks (CPU) and writes them, and a
/// direct write holds its thread until the device has the data: with two threads per core,
/// while the cores opened blocks the device had at most a couple of writes queued, and a
/// restore at scale 200 kept the two cores 55 % busy writing 2 GB/s. Four per core (and
/// files enough to feed them, see the CLI's default jobs) queue more writes: 0.87x the wall
/// time over eight alternating pairs, the cores 75 % busy.
const THREADS_PER_CORE: usize = 4;
/// At most this many threads, whatever the cores: each keeps a [`direct_io::GROUP_LEN`]
/// buffer.
const MAX_THREADS: usize = 16;

/// How many threads open, hash and write restored blocks ([`THREADS_PER_CORE`]).
fn restore_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (THREADS_PER_CORE * cores).min(MAX_THREADS)
}

/// The pool of `threads` that open, hash and write restored blocks. A pool of the restore's
/// own, so that the process-wide CPU pool (sized to the cores, for compute only) never waits
/// on a disk.
fn restore_pool(threads: usize) -> Result<CpuPool> {
    CpuPool::new("restore", threads).map_err(|e| Error::io("starting the restore's threads", e))
}

/// What every file of one restore shares.
#[derive(Clone, Copy)]
struct FileJob<'a> {
    repo: &'a Repository,
    pool: &'a CpuPool,
    runs: &'a RunBudget,
    index: &'a Arc<BlockIndex>,
    tree: &'a Arc<fs_beneath::Tree>,
    target: &'a Path,
    block_size: u64,
    delta: bool,
    direct_io: bool,
    /// Every restored file's owner (the data directory's), when restoring ownership.
    owner: Option<(u32, u32)>,
}

impl FileJob<'_> {
    /// A file of a database left out ([`db_select`]): created (emptied, if a delta restore
    /// finds it) and extended to its recorded size, all holes; the data directory's owner, the
    /// recorded mode without special bits ([`fs_beneath::set_owner_mode`]).
    /// Returns its descriptor, to be made durable with the others.
    async fn create_sparse(&self, f: &FileEntry) -> Result<Arc<std::fs::File>> {
        let path = &self.target.join(&f.path);
        let file = open_for_restore(self.tree, &f.path, true)
            .await
            .map_err(|e| io(path, e))?;
        file.set_len(f.size).map_err(|e| io(path, e))?;
        let owner = self.owner;
        fs_beneath::set_owner_mode(file.as_fd(), owner, f.mode).map_err(|e| io(path, e))?;
        Ok(Arc::new(file))
    }

    /// One file: runs of pack-adjacent blocks per range read, hashed in order, then fsynced.
    /// Opened once, beneath the data directory (or its tablespace location) without following
    /// a link; everything after that (delta comparison, writes, checksum read-back, owner,
    /// mode) goes through that descriptor.
    /// Returns the bytes reused (delta) and its descriptor, still to be made durable
    /// ([`BackgroundSyncs`]): also when a delta restore found it whole, since the restore it
    /// completes may have died before its fsyncs.
    /// `span`: bytes of a pack already read (from this pack offset); runs inside it are
    /// served from it instead of a range read of their own.
    async fn restore_file(
        &self,
        f: &FileEntry,
        span: Option<&(u64, bytes::Bytes)>,
    ) -> Result<(u64, Arc<std::fs::File>)> {
        let (repo, pool, index, block_size, delta) = (
            self.repo,
            self.pool,
            &**self.index,
            self.block_size,
            self.delta,
        );
        let path = &self.target.join(&f.path);
        if let Some(why) = f.misfit(block_size) {
            return Err(Error::corrupt(
                f.path.clone(),
                format!("the manifest {why}; restore another backup and take a new one"),
            ));
        }
        let file = Arc::new(
            open_for_restore(self.tree, &f.path, !delta)
                .await
                .map_err(|e| io(path, e))?,
        );
        let owner = self.owner;
        // Delta: blocks already right in an existing file are kept (compared by keyed id).
        let existing = if delta {
            read_existing_ids(repo, file.clone(), path, f, block_size).await?
        } else {
            None
        };
        if let Some(same) = &existing {
            if same.iter().all(|s| *s) && file.metadata().map(|m| m.len()).ok() == Some(f.size) {
                fs_beneath::set_owner_mode(file.as_fd(), owner, f.mode).map_err(|e| io(path, e))?;
                // Right, but not necessarily durable: the restore this one completes may have
                // been killed before its fsyncs, and the blocks just compared may have come
                // from the page cache. Synced like a written file (cheap when clean).
                return Ok((f.size, file));
            }
        }
        let same = |i: usize| {
            existing
                .as_ref()
                .is_some_and(|v| v.get(i).copied().unwrap_or(false))
        };
        // Plan the file's runs first (index lookups only), then fetch and open them as the
        // restore's [`RunBudget`] allows: the next range reads are under way while the CPU pool
        // opens the previous ones, so one large relation file keeps storage and every core
        // busy instead of alternating between them.
        let mut reused = 0u64;
        let mut runs: Vec<Vec<(usize, IndexEntry)>> = Vec::new();
        let mut zeros: Vec<usize> = Vec::new();
        let mut i = 0;
        while i < f.blocks.len() {
            if same(i) {
                reused += block_len(f, i, block_size);
                i += 1;
                continue;
            }
            if f.blocks[i].is_zero() {
                let len = block_len(f, i, block_size);
                if delta {
                    file.write_at(&vec![0u8; len as usize], i as u64 * block_size)
                        .map_err(|e| io(path, e))?;
                }
                zeros.push(i);
                i += 1;
                continue;
            }
            // A run: consecutive non-zero blocks that follow each other in one pack, with at
            // most MAX_GAP bytes of other blocks between two of them.
            let first = locate(index, f, i)?;
            let mut run: Vec<(usize, IndexEntry)> = vec![(i, first)];
            let mut end = first.entry.offset + u64::from(first.entry.sealed_len);
            let mut j = i + 1;
            let max_blocks = (MAX_RUN_FILE_BYTES / block_size).max(1) as usize;
            while j < f.blocks.len() && j - i < max_blocks && !f.blocks[j].is_zero() && !same(j) {
                let e = locate(index, f, j)?;
                if !joins_run(&first, end, &e) {
                    break;
                }
                end = e.entry.offset + u64::from(e.entry.sealed_len);
                run.push((j, e));
                j += 1;
            }
            runs.push(run);
            i = j;
        }
        // The whole-file check. Without a checksum (format 3), every block opened is checked
        // against its id as it is written. With one, a full (not delta) restore hashes each
        // block where it opens it, at its offset in the file, and merges the hashes at the
        // end. Either way the file is never read back, except by a delta restore, which keeps
        // blocks it did not open.
        let by_ids = f.checksum.is_empty();
        let parted = if delta || by_ids {
            None
        } else {
            PartedHash::plain(block_size as usize)
        };
        let size = f.size;
        // Large files of a full restore go past the page cache ([`direct_io`]).
        let direct =
            self.direct_io && !delta && size >= direct_io::MIN_FILE_LEN && direct_io::enable(&file);
        // The blocks to be written allocated up front; the all-zero ones stay holes.
        if direct {
            direct_io::preallocate(&file, data_ranges(&zeros, block_size, size))
                .map_err(|e| io(path, e))?;
        }
        let budget = self.runs;
        let mut writes = futures::stream::iter(runs)
            .map(|run| {
                let file = file.clone();
                async move {
                    // Held from the range read to the end of the run's writes.
                    let _turn = budget
                        .turns
                        .acquire()
                        .await
                        .expect("the budget is never closed");
                    let first = run[0].1;
                    let last = run[run.len() - 1].1;
                    let end = last.entry.offset + u64::from(last.entry.sealed_len);
                    let key = layout::pack(&first.pack_id);
                    let bytes = match span {
                        Some((at, b))
                            if first.entry.offset >= *at && end <= *at + b.len() as u64 =>
                        {
                            b.slice((first.entry.offset - at) as usize..(end - at) as usize)
                        }
                        _ => read_range(repo, &first.pack_id, first.entry.offset..end).await?,
                    };
                    let patches = fetch_patches(repo, index, f, &run).await?;
                    let out = RunOutput {
                        codec: repo.codec().clone(),
                        file,
                        path: path.to_path_buf(),
                        pack: key.to_string(),
                        block_size,
                        size,
                        parted,
                    };
                    let base = first.entry.offset;
                    pool.run(move || {
                        let patches = out.open_patches(patches)?;
                        if direct {
                            let cap = direct_io::GROUP_LEN.max(block_size as usize);
                            direct_io::with_group_buf(cap, |g| {
                                out.write_run(&run, base, &bytes, Some(g), &patches)
                            })
                        } else {
                            out.write_run(&run, base, &bytes, None, &patches)
                        }
                    })
                    .await
                }
            })
            .buffer_unordered(budget.size);
        let mut parts: Vec<Option<PartHash>> = match parted {
            Some(_) => vec![None; f.blocks.len()],
            None => Vec::new(),
        };
        while let Some(r) = writes.next().await {
            for (pos, h) in r? {
                parts[pos] = Some(h);
            }
        }
        drop(writes);
        if let Some(p) = parted {
            if !zeros.is_empty() {
                // Holes hash as the zeros they read as.
                let zero_hashes = cpu::run(move || {
                    let buf = vec![0u8; block_size as usize];
                    zeros
                        .into_iter()
                        .map(|i| {
                            let len = (size - i as u64 * block_size).min(block_size) as usize;
                            (i, p.part(size, i, &buf[..len]))
                        })
                        .collect::<Vec<_>>()
                })
                .await;
                for (pos, h) in zero_hashes {
                    parts[pos] = Some(h);
                }
            }
        }
        file.set_len(f.size).map_err(|e| io(path, e))?;
        fs_beneath::set_owner_mode(file.as_fd(), owner, f.mode).map_err(|e| io(path, e))?;
        let matches = match parted {
            Some(p) => merged_hash(p, f, parts) == f.checksum,
            // Every block was checked against its id as it was written; holes are zeros.
            None if by_ids && !delta => true,
            None if by_ids => read_existing_ids(repo, file.clone(), path, f, block_size)
                .await?
                .is_some_and(|same| same.iter().all(|s| *s)),
            None => {
                read_back_hash(file.clone())
                    .await
                    .map_err(|e| io(path, e))?
                    == f.checksum
            }
        };
        if !matches {
            return Err(Error::corrupt(
                f.path.clone(),
                "restored file does not match the checksum recorded at backup",
            ));
        }
        Ok((reused, file))
    }
}

/// Opens (creating) `rel` beneath the data directory for writing, emptied when `truncate`, on a
/// blocking thread. Creating a file is a few system calls that can take a millisecond each:
/// ext4 skips inodes freed in the last seconds one by one when it picks a new one, which a
/// profile of a restore into a directory just emptied (every drill, every benchmark round)
/// showed as 63 % of the thread driving the restore. Run inline, that thread stopped feeding
/// range reads and blocks to the pool while it created the next small file.
async fn open_for_restore(
    tree: &Arc<fs_beneath::Tree>,
    rel: &str,
    truncate: bool,
) -> std::io::Result<std::fs::File> {
    let (tree, rel) = (tree.clone(), rel.to_string());
    tokio::task::spawn_blocking(move || {
        let (dir, name) = tree.parent_for_write(&rel)?;
        let file = fs_beneath::open_file_rw(dir.as_fd(), name)?;
        if truncate {
            file.set_len(0)?;
        }
        Ok(file)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What one restore task does: a file on its own, small files read with one range read, or a
/// file of a database left out, created sparse.
enum Work {
    File(String),
    Sparse(String),
    Span {
        pack: PackId,
        range: std::ops::Range<u64>,
        paths: Vec<String>,
    },
}

/// Sealed bytes of a file that make it small: read with its neighbours in the pack.
const SMALL_FILE_SEALED: u64 = 256 << 10;
/// Files of one span restored at once. One after the other, a span's files were a chain of
/// waits (the file's creation on a blocking thread, its blocks' turn on the CPU pool behind
/// the large files' runs, its write): at scale 200 the span of 574 catalog files took the
/// whole restore (2.7 s) and held one of the `jobs` slots throughout, so the large files ran
/// two at a time, and it ended 0.1–0.2 s after the last large file. Eight at a time it takes
/// a fraction of that and ends with the others (10 alternating pairs: median 0.89x the wall
/// time). (Tried in an earlier build, with two threads per core and two files at a time, it
/// made no difference: the span was not the tail then.)
const SPAN_FILES_AT_ONCE: usize = 8;

/// Largest range read for a span of small files.
const MAX_SPAN: u64 = 4 << 20;

/// Orders the restore's work: large files one by one; small files (under
/// [`direct_io::MIN_FILE_LEN`], all their blocks within [`SMALL_FILE_SEALED`] bytes of one
/// pack; the size comes with the path, so a large file's entry is not read here) sorted by
/// where they lie and gathered into spans of at most [`MAX_SPAN`] bytes with at most
/// [`MAX_GAP`] bytes between two files. A cluster is mostly small files (a thousand system
/// catalog files in an empty one): read one by one that was a thousand requests, each a round
/// trip on an object store. A delta restore reads nothing it already has, so it keeps to
/// files.
///
/// Order: the largest file, then the spans, then the other large files, largest first. The
/// spans' work is creating files and copying into the page cache, CPU and no disk; started
/// beside the largest file's direct writes, it runs while the disk is busy, where spans first
/// kept the disk idle for the first few tenths of a second. Largest first for the rest: the
/// restore does not end with one large file written alone.
fn plan_work(
    files: &SpooledFiles,
    paths: Vec<String>,
    index: &BlockIndex,
    delta: bool,
) -> Result<Vec<Work>> {
    if delta {
        return Ok(paths.into_iter().map(Work::File).collect());
    }
    let mut large: Vec<(u64, String)> = Vec::new();
    let mut small: Vec<(PackId, u64, u64, String)> = Vec::new();
    for path in paths {
        let size = files.size(&path).ok_or_else(|| left_the_list(&path))?;
        if size >= direct_io::MIN_FILE_LEN {
            large.push((size, path));
            continue;
        }
        let f = listed_entry(files, &path)?;
        match small_extent(index, &f) {
            Some((pack, start, end)) => small.push((pack, start, end, path)),
            _ => large.push((f.size, path)),
        }
    }
    large.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut large = large.into_iter().map(|(_, path)| Work::File(path));
    small.sort();
    let mut spans: Vec<Work> = Vec::new();
    for (pack, start, end, path) in small {
        if let Some(Work::Span {
            pack: p,
            range,
            paths,
        }) = spans.last_mut()
        {
            if *p == pack
                && start >= range.start
                && start <= range.end + MAX_GAP
                && end.max(range.end) - range.start <= MAX_SPAN
            {
                range.end = range.end.max(end);
                paths.push(path);
                continue;
            }
        }
        spans.push(Work::Span {
            pack,
            range: start..end,
            paths: vec![path],
        });
    }
    let mut work: Vec<Work> = large.next().into_iter().collect();
    work.extend(spans);
    work.extend(large);
    Ok(work)
}

/// The spooled entry of `path`, which the restore listed from the same spool.
fn listed_entry(files: &SpooledFiles, path: &str) -> Result<FileEntry> {
    files.get(path)?.ok_or_else(|| left_the_list(path))
}

fn left_the_list(path: &str) -> Error {
    Error::InvalidInput(format!("{path} left the file list"))
}

/// The pack and sealed byte range holding every non-zero block of `f`, if they are all in one
/// pack within [`SMALL_FILE_SEALED`] bytes; `None` for files with no stored block, blocks in
/// several packs or spread wider (given up at the first block that makes it so).
fn small_extent(index: &BlockIndex, f: &FileEntry) -> Option<(PackId, u64, u64)> {
    let mut extent: Option<(PackId, u64, u64)> = None;
    for b in &f.blocks {
        let Some(id) = b.0 else { continue };
        let e = index.try_get(&id).ok()??;
        let (start, end) = (
            e.entry.offset,
            e.entry.offset + u64::from(e.entry.sealed_len),
        );
        extent = match extent {
            None => Some((e.pack_id, start, end)),
            Some((p, s, t)) if p == e.pack_id => Some((p, s.min(start), t.max(end))),
            Some(_) => return None,
        };
        if extent.is_some_and(|(_, s, t)| t - s > SMALL_FILE_SEALED) {
            return None;
        }
    }
    extent
}

/// Restored files' fsyncs, run on blocking threads while the next files are restored. A
/// file's fsync waits for the disk; inline, it held one of the `jobs` file slots (and with
/// it a core's share of decompression) idle for that long. At most [`SYNCS_IN_FLIGHT`]
/// run at once (each holds the file's descriptor); all have finished, and any error is
/// reported, before the directories are synced and `pg_control` is written.
#[derive(Default)]
struct BackgroundSyncs {
    pending: std::collections::VecDeque<(PathBuf, tokio::task::JoinHandle<std::io::Result<()>>)>,
}

/// Background fsyncs at once.
const SYNCS_IN_FLIGHT: usize = 8;

impl BackgroundSyncs {
    async fn push(&mut self, path: PathBuf, file: Arc<std::fs::File>) -> Result<()> {
        while self.pending.len() >= SYNCS_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let sync = tokio::task::spawn_blocking(move || file.sync_all());
        self.pending.push_back((path, sync));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<()> {
        if let Some((path, sync)) = self.pending.pop_front() {
            sync.await
                .map_err(|e| Error::io(format!("syncing {}", path.display()), e.into()))?
                .map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}

/// The byte ranges of a file of `size` bytes outside its all-zero blocks `zeros` (ascending
/// block numbers): what a restore writes, neighbours merged.
fn data_ranges(zeros: &[usize], block_size: u64, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    for end in zeros
        .iter()
        .map(|&i| i as u64 * block_size)
        .chain(std::iter::once(size))
    {
        let end = end.min(size);
        if end > at {
            out.push((at, end - at));
        }
        at = at.max(end + block_size);
    }
    out
}

/// Where the blocks of one run go.
struct RunOutput {
    codec: crate::codec::Codec,
    file: Arc<std::fs::File>,
    /// The file's path (named in write errors: which file a full disk stopped).
    path: PathBuf,
    /// The pack the run was read from (named in errors).
    pack: String,
    block_size: u64,
    /// The file's size.
    size: u64,
    /// Hashes the blocks for the whole-file check when set; otherwise each block's content id
    /// is checked as it is written.
    parted: Option<PartedHash<'static>>,
}

impl RunOutput {
    /// Opens the blocks of `run` from `sealed` (a range read starting at pack offset `base`),
    /// hashes each and writes it at its offset: through `group` in direct writes of whole
    /// blocks when given, else one buffered write per block. Returns the blocks' hashes.
    fn write_run(
        &self,
        run: &[(usize, IndexEntry)],
        base: u64,
        sealed: &[u8],
        mut group: Option<&mut direct_io::AlignedBuf>,
        patches: &HashMap<usize, (Patch, Vec<u8>)>,
    ) -> Result<Vec<(usize, PartHash)>> {
        let write_err = |err| io(&self.path, err);
        let (block_size, size) = (self.block_size, self.size);
        let mut hashes = Vec::with_capacity(run.len());
        let mut group_at = 0u64;
        for (pos, e) in run {
            let s = (e.entry.offset - base) as usize;
            let sealed = &sealed[s..s + e.entry.sealed_len as usize];
            let at = *pos as u64 * block_size;
            // Every block but the file's last is whole: what is written is exactly the file's
            // bytes (a direct write pads only past its end).
            let want = (size - at).min(block_size) as usize;
            let corrupt = |err: String| Error::corrupt(self.pack.clone(), err);
            let wrong_len = |n: usize| {
                corrupt(format!(
                    "block {} opens to {n} bytes where the file needs {want}",
                    e.entry.block_id.to_hex()
                ))
            };
            match group.as_deref_mut() {
                Some(g) => {
                    if !g.is_empty() && (group_at + g.len() as u64 != at || g.remaining() < want) {
                        g.write_at(&self.file, group_at).map_err(write_err)?;
                    }
                    if g.is_empty() {
                        group_at = at;
                    }
                    let n =
                        open_block_authenticated_into(&self.codec, &e.entry, sealed, g.spare_mut())
                            .map_err(|err| corrupt(err.to_string()))?;
                    if n != want {
                        return Err(wrong_len(n));
                    }
                    g.commit(n);
                    let id = self.patched(*pos, g.tail_mut(n), patches, e)?;
                    match self.parted {
                        Some(p) => hashes.push((*pos, p.part(size, *pos, g.tail(n)))),
                        None if self.codec.content_id(g.tail(n)) != id => {
                            return Err(corrupt(format!(
                                "block {} does not hash to its id",
                                id.to_hex()
                            )))
                        }
                        None => {}
                    }
                }
                None => {
                    let patch = patches.contains_key(pos);
                    let mut plain = match self.parted {
                        Some(_) => open_block_authenticated(&self.codec, &e.entry, sealed),
                        // A patched block is checked once patched.
                        None if patch => open_block_authenticated(&self.codec, &e.entry, sealed),
                        None => open_block(&self.codec, &e.entry, sealed),
                    }
                    .map_err(|err| corrupt(err.to_string()))?;
                    if plain.len() != want {
                        return Err(wrong_len(plain.len()));
                    }
                    if patch {
                        let id = self.patched(*pos, &mut plain, patches, e)?;
                        if self.codec.content_id(&plain) != id {
                            return Err(corrupt(format!(
                                "block {} does not hash to its id",
                                id.to_hex()
                            )));
                        }
                    }
                    if let Some(p) = self.parted {
                        hashes.push((*pos, p.part(size, *pos, &plain)));
                    }
                    self.file.write_all_at(&plain, at).map_err(write_err)?;
                }
            }
        }
        if let Some(g) = group {
            if !g.is_empty() {
                g.write_at(&self.file, group_at).map_err(write_err)?;
            }
        }
        Ok(hashes)
    }
}

impl RunOutput {
    /// Opens the patches of a run (authenticated: their envelopes bind their ids; what they
    /// make is checked against the patched block's id).
    fn open_patches(
        &self,
        fetched: Vec<(usize, Patch, IndexEntry, bytes::Bytes)>,
    ) -> Result<HashMap<usize, (Patch, Vec<u8>)>> {
        fetched
            .into_iter()
            .map(|(pos, p, e, sealed)| {
                let plain =
                    open_block_authenticated(&self.codec, &e.entry, &sealed).map_err(|err| {
                        Error::corrupt(layout::pack(&e.pack_id).to_string(), err.to_string())
                    })?;
                Ok((pos, (p, plain)))
            })
            .collect()
    }

    /// Applies block `pos`'s patch, if it has one, to `block` (its base, opened); returns
    /// the id the block must now hash to.
    fn patched(
        &self,
        pos: usize,
        block: &mut [u8],
        patches: &HashMap<usize, (Patch, Vec<u8>)>,
        base: &IndexEntry,
    ) -> Result<ContentId> {
        let Some((p, delta)) = patches.get(&pos) else {
            return Ok(base.entry.block_id);
        };
        patches::apply(block, delta, p.mask).map_err(|err| {
            Error::corrupt(
                self.pack.clone(),
                format!("patch {} of block {pos}: {err}", p.delta.to_hex()),
            )
        })?;
        Ok(p.id)
    }
}

/// A range of a pack, refused as corrupt if the pack is shorter than the index says.
async fn read_range(
    repo: &Repository,
    pack: &PackId,
    range: std::ops::Range<u64>,
) -> Result<bytes::Bytes> {
    let key = layout::pack(pack);
    let bytes = repo.storage().get_range(&key, range.clone()).await?;
    if bytes.len() as u64 != range.end - range.start {
        return Err(Error::corrupt(
            key.to_string(),
            format!(
                "{} bytes at {} where the index has blocks up to {}: the pack is truncated",
                bytes.len(),
                range.start,
                range.end
            ),
        ));
    }
    Ok(bytes)
}

/// Whether block `e` can join a range read that starts at `first` and so far ends at `end`:
/// same pack, after it, at most [`MAX_GAP`] bytes later, and the read not yet [`MAX_RUN`].
fn joins_run(first: &IndexEntry, end: u64, e: &IndexEntry) -> bool {
    e.pack_id == first.pack_id
        && e.entry.offset >= end
        && e.entry.offset - end <= MAX_GAP
        && end - first.entry.offset < MAX_RUN
}

/// Fetches the patches of the blocks in `run` (usually one range read: a backup stores a
/// file's patches next to each other).
async fn fetch_patches(
    repo: &Repository,
    index: &BlockIndex,
    f: &FileEntry,
    run: &[(usize, IndexEntry)],
) -> Result<Vec<(usize, Patch, IndexEntry, bytes::Bytes)>> {
    let mut located = Vec::new();
    for (pos, _) in run {
        if let Some(p) = f.patch_at(*pos) {
            let e = index.try_get(&p.delta)?.ok_or_else(|| {
                Error::corrupt(
                    f.path.clone(),
                    format!("patch {} is not indexed", p.delta.to_hex()),
                )
            })?;
            located.push((*pos, *p, e));
        }
    }
    located.sort_by_key(|(_, _, e)| (e.pack_id, e.entry.offset));
    let mut out = Vec::with_capacity(located.len());
    let mut rest = &located[..];
    while let Some((_, _, first)) = rest.first() {
        let mut end = first.entry.offset + u64::from(first.entry.sealed_len);
        let mut n = 1;
        for (_, _, e) in &rest[1..] {
            if !joins_run(first, end, e) {
                break;
            }
            end = e.entry.offset + u64::from(e.entry.sealed_len);
            n += 1;
        }
        let bytes = read_range(repo, &first.pack_id, first.entry.offset..end).await?;
        for (pos, p, e) in &rest[..n] {
            let at = (e.entry.offset - first.entry.offset) as usize;
            out.push((
                *pos,
                *p,
                *e,
                bytes.slice(at..at + e.entry.sealed_len as usize),
            ));
        }
        rest = &rest[n..];
    }
    Ok(out)
}

/// The file's BLAKE3 from the hashes of its blocks (hex; empty if a block's hash is missing,
/// which then fails the comparison with the manifest's checksum).
fn merged_hash(p: PartedHash<'_>, f: &FileEntry, parts: Vec<Option<PartHash>>) -> String {
    if f.size == 0 {
        return blake3::hash(b"").to_hex().to_string();
    }
    let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
        return String::new();
    };
    p.merge(f.size, &parts)
        .map(|h| blake3::Hash::from_bytes(h).to_hex().to_string())
        .unwrap_or_default()
}

/// The file's BLAKE3, read back from disk through the restore's descriptor.
async fn read_back_hash(file: Arc<std::fs::File>) -> std::io::Result<String> {
    cpu::run(move || -> std::io::Result<String> {
        // Written with O_DIRECT (a large file of an old backup whose block size the merged
        // check does not take), the descriptor would refuse reads into this buffer.
        direct_io::disable(&file)?;
        let mut h = blake3::Hasher::new();
        // A bounded buffer, not a map: mapped pages of a 1 GiB relation file would count as
        // resident memory of the restore.
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = file.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        Ok(h.finalize().to_hex().to_string())
    })
    .await
}

/// For delta restore: which blocks of an existing file already hold the backup's content
/// (read through the descriptor the restore opened, never by name).
async fn read_existing_ids(
    repo: &Repository,
    file: Arc<std::fs::File>,
    path: &Path,
    f: &FileEntry,
    block_size: u64,
) -> Result<Option<Vec<bool>>> {
    let codec = repo.codec().clone();
    // What each block is as restored: a patched block's own id, not its base's.
    let ids: Vec<Option<ContentId>> = (0..f.blocks.len()).map(|i| f.content_id_at(i)).collect();
    let p = path.to_path_buf();
    cpu::run(move || -> Result<Option<Vec<bool>>> {
        let mut buf = vec![0u8; block_size as usize];
        let mut out = Vec::with_capacity(ids.len());
        let mut off = 0u64;
        for b in &ids {
            let mut filled = 0;
            while filled < buf.len() {
                match file
                    .read_at(&mut buf[filled..], off + filled as u64)
                    .map_err(|e| io(&p, e))?
                {
                    0 => break,
                    n => filled += n,
                }
            }
            off += filled as u64;
            let data = &buf[..filled];
            let same = match b {
                None => !data.is_empty() && data.iter().all(|x| *x == 0),
                Some(id) => codec.content_id(data) == *id,
            };
            out.push(same);
        }
        Ok(Some(out))
    })
    .await
}

fn block_len(f: &FileEntry, i: usize, block_size: u64) -> u64 {
    (f.size - i as u64 * block_size).min(block_size)
}

fn locate(index: &BlockIndex, f: &FileEntry, i: usize) -> Result<IndexEntry> {
    let id = f.blocks[i]
        .0
        .ok_or_else(|| Error::corrupt(f.path.clone(), "a zero block has no location"))?;
    index.try_get(&id)?.ok_or_else(|| {
        Error::corrupt(
            f.path.clone(),
            format!("block {} is not indexed", id.to_hex()),
        )
    })
}

/// Marker comments around the settings pgcairn writes into `postgresql.auto.conf`.
pub const AUTO_CONF_BEGIN: &str = "# pgcairn recovery settings (begin)";
/// End marker.
pub const AUTO_CONF_END: &str = "# pgcairn recovery settings (end)";

/// Comment above the operator's settings in the pgcairn block ([`crate::recovery_options`]).
pub const RECOVERY_OPTIONS_NOTE: &str =
    "# restore --recovery-option: the operator's own (they win over the lines above)";

/// Comment above the replay settings in the pgcairn block ([`crate::replay_speed`]).
pub const REPLAY_SETTINGS_NOTE: &str =
    "# faster WAL replay; read by PostgreSQL only during recovery, inert after promotion";

/// Refuses a `primary_conninfo` that cannot work or would leak a secret: only a standby
/// streams, the value is written into `postgresql.auto.conf` (and came from argv), so a
/// password belongs in a password file (`passfile=` or `~/.pgpass` of the server's user).
fn check_primary_conninfo(conninfo: &str, standby: bool) -> Result<()> {
    if !standby {
        return Err(Error::Config(
            "--primary-conninfo needs --type standby: only a standby streams from a primary".into(),
        ));
    }
    if conninfo.trim().is_empty() || conninfo.contains(['\n', '\r', '\0']) {
        return Err(Error::Config(format!(
            "--primary-conninfo {conninfo:?}: give a libpq connection string on one line, like \
             \"host=primary.example port=5432 user=replicator\""
        )));
    }
    let lower = conninfo.to_ascii_lowercase();
    let uri_password = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let compact: String = lower.split_whitespace().collect();
    if compact.contains("password=") || compact.contains("password%3d") || uri_password {
        return Err(Error::Config(
            "--primary-conninfo must not hold a password (command lines are visible to other users, \
             and it would be written into postgresql.auto.conf): put it in the server user's \
             ~/.pgpass or a file named by passfile=".into(),
        ));
    }
    Ok(())
}

/// The recovery settings pgcairn writes for a restore.
pub fn recovery_settings(opts: &RestoreOptions) -> Vec<(&'static str, String)> {
    let mut v = vec![("restore_command", opts.restore_command.clone())];
    if let (true, Some(c)) = (opts.standby, &opts.primary_conninfo) {
        v.push(("primary_conninfo", c.clone()));
    }
    match &opts.target_spec {
        Target::EndOfArchive => {}
        Target::Immediate => v.push(("recovery_target", "immediate".into())),
        Target::Time(t) => v.push(("recovery_target_time", recovery::pg_time(*t))),
        Target::Lsn(l) => v.push(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => v.push(("recovery_target_xid", x.to_string())),
        Target::Name(n) => v.push(("recovery_target_name", n.clone())),
    }
    if opts.target_spec != Target::EndOfArchive && opts.target_spec != Target::Immediate {
        v.push((
            "recovery_target_inclusive",
            if opts.target_exclusive { "off" } else { "on" }.into(),
        ));
    }
    if let Some(a) = &opts.target_action {
        v.push(("recovery_target_action", a.clone()));
    }
    v.push((
        "recovery_target_timeline",
        match opts.target_timeline {
            TimelineTarget::Latest => "latest".into(),
            TimelineTarget::Current => "current".into(),
            TimelineTarget::Id(n) => n.to_string(),
        },
    ));
    if opts.archive_off {
        v.push(("archive_mode", "off".into()));
    }
    v
}

/// `backup_label`, `tablespace_map`, the signal file and the recovery settings, written and
/// read beneath the data directory's descriptor (a link there is replaced, never followed).
fn write_recovery_files(
    m: &Manifest,
    opts: &RestoreOptions,
    tree: &fs_beneath::Tree,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let t = &opts.target;
    let root = tree.root.as_fd();
    let write = |name: &str, body: &[u8]| {
        fs_beneath::write_file(root, Path::new(name), body, 0o600, owner)
            .map_err(|e| io(&t.join(name), e))
    };
    let remove = |name: &str| {
        fs_beneath::remove_entry(root, Path::new(name)).map_err(|e| io(&t.join(name), e))
    };
    write("backup_label", m.backup_label.as_bytes())?;
    match &m.tablespace_map {
        Some(text) => write("tablespace_map", text.as_bytes())?,
        None => remove("tablespace_map")?,
    }
    let (signal, other) = if opts.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    write(signal, b"")?;
    remove(other)?;
    let existing = fs_beneath::read_file(root, Path::new("postgresql.auto.conf"))
        .map_err(|e| io(&t.join("postgresql.auto.conf"), e))?
        .unwrap_or_default();
    // Keep the user's settings byte for byte, replace earlier pgcairn ones.
    let (user, _) = crate::pg::auto_conf::without_blocks(&existing, AUTO_CONF_BEGIN, AUTO_CONF_END);
    let mut kept = String::new();
    kept.push_str(AUTO_CONF_BEGIN);
    kept.push('\n');
    for (k, v) in recovery_settings(opts) {
        kept.push_str(&crate::pg::guc::line(k, &v));
    }
    let replay = crate::replay_speed::replay_settings(m.pg_version_num);
    if !replay.is_empty() {
        kept.push_str(REPLAY_SETTINGS_NOTE);
        kept.push('\n');
        for (k, v) in replay {
            kept.push_str(&crate::pg::guc::line(k, &v));
        }
    }
    if !opts.recovery_options.is_empty() {
        kept.push_str(RECOVERY_OPTIONS_NOTE);
        kept.push('\n');
        for (k, v) in &opts.recovery_options {
            kept.push_str(&crate::pg::guc::line(k, v));
        }
    }
    // Removed again by the first archive-get ([`crate::first_start`]); not written when the
    // operator chose the first start's sync method (it would override theirs).
    if !opts
        .recovery_options
        .iter()
        .any(|(k, _)| k == "recovery_init_sync_method")
    {
        kept.push_str(&crate::first_start::block(m.pg_version_num));
    }
    kept.push_str(AUTO_CONF_END);
    kept.push('\n');
    let mut conf = user;
    conf.extend_from_slice(kept.as_bytes());
    write("postgresql.auto.conf", &conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::BlockRef;

    /// A backup from before the directory's name was recorded knows it by major version: a
    /// non-delta restore checks only those entries of a location for emptiness, not what
    /// other clusters or the file system keep there.
    #[test]
    fn an_old_manifests_own_directories_are_told_by_major_version() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "PG_15_202209061",
            "PG_14_202107181",
            "lost+found",
            "PG_15_x",
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let own = own_dirs_in(d.path(), &tablespace_dir::Own::Major(15)).unwrap();
        assert_eq!(own, ["PG_15_202209061"]);
        assert!(
            own_dirs_in(&d.path().join("missing"), &tablespace_dir::Own::Major(15))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_root_restore_has_an_owner_to_give_or_refuses() {
        let mut pg_version = entry(b"15\n", 8192);
        pg_version.uid = 105;
        pg_version.gid = 110;
        assert_eq!(
            data_directory_owner("b1", Some(pg_version.clone())).unwrap(),
            (105, 110)
        );
        pg_version.uid = 0;
        let err = data_directory_owner("b1", Some(pg_version))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root's") && err.contains("runuser -u postgres"),
            "{err}"
        );
        let err = data_directory_owner("b1", None).unwrap_err().to_string();
        assert!(err.contains("no PG_VERSION"), "{err}");
    }

    #[test]
    fn tablespace_locations_must_be_plain_absolute_paths() {
        tablespace_location_is_plain(1, Path::new("/srv/ts")).unwrap();
        for bad in ["ts", "../ts", "/srv/../usr/local/bin", "./ts", "/"] {
            let err = tablespace_location_is_plain(7, Path::new(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("--tablespace-map 7="), "{bad}: {err}");
        }
    }

    fn entry(data: &[u8], block_size: usize) -> FileEntry {
        FileEntry {
            path: "base/1/16384".into(),
            size: data.len() as u64,
            mtime_ns: 0,
            mode: 0o600,
            uid: 0,
            gid: 0,
            blocks: vec![BlockRef::ZERO; data.len().div_ceil(block_size)],
            block_lists: Vec::new(),
            checksum: blake3::hash(data).to_hex().to_string(),
            bad_pages: Vec::new(),
            patches: Vec::new(),
            part_fps: Vec::new(),
        }
    }

    fn parts(p: PartedHash<'_>, data: &[u8], block_size: usize) -> Vec<Option<PartHash>> {
        data.chunks(block_size)
            .enumerate()
            .map(|(i, b)| Some(p.part(data.len() as u64, i, b)))
            .collect()
    }

    #[test]
    fn the_ranges_written_are_those_between_zero_blocks() {
        let b = 65536;
        // Blocks 0-2, 5 and 7-8 are zeros; block 9, the last, is 100 bytes.
        let size = 9 * b + 100;
        assert_eq!(
            data_ranges(&[0, 1, 2, 5, 7, 8], b, size),
            vec![(3 * b, 2 * b), (6 * b, b), (9 * b, 100)]
        );
        assert_eq!(data_ranges(&[], b, size), vec![(0, size)]);
        assert_eq!(data_ranges(&[9], b, size), vec![(0, 9 * b)]);
        assert_eq!(data_ranges(&[0, 1], b, 2 * b), Vec::<(u64, u64)>::new());
        assert_eq!(data_ranges(&[], b, 0), Vec::<(u64, u64)>::new());
    }

    /// A delta restore goes on only when `postmaster.pid` is absent or names no live process:
    /// one that cannot be read (run as another user than its owner) is refused, naming it.
    #[test]
    fn a_postmaster_pid_that_cannot_be_read_is_refused() {
        let target = Path::new("/srv/pg");
        refuse_postmaster_read(Ok(None), target).unwrap();
        let gone = format!("{}\n/srv/pg\n", u32::MAX - 1);
        refuse_postmaster_read(Ok(Some(gone.into_bytes())), target).unwrap();
        let live = format!("{}\n/srv/pg\n", std::process::id());
        let e = refuse_postmaster_read(Ok(Some(live.into_bytes())), target).unwrap_err();
        assert!(
            e.to_string().contains("in use by a running PostgreSQL"),
            "{e}"
        );
        let denied = std::io::Error::from_raw_os_error(13);
        let e = refuse_postmaster_read(Err(denied), target).unwrap_err();
        assert!(
            e.to_string().contains("cannot read /srv/pg/postmaster.pid")
                && e.to_string().contains("remove postmaster.pid"),
            "{e}"
        );
    }

    #[test]
    fn primary_conninfo_is_for_standbys_and_holds_no_password() {
        assert!(check_primary_conninfo("host=pg1 user=replicator", true).is_ok());
        assert!(check_primary_conninfo("postgresql://replicator@pg1:5432/postgres", true).is_ok());
        let e = check_primary_conninfo("host=pg1", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--type standby"), "{e}");
        for secret in [
            "host=pg1 user=r password=hunter2",
            "host=pg1 PASSWORD = hunter2",
            "postgresql://r:hunter2@pg1/postgres",
        ] {
            let e = check_primary_conninfo(secret, true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("pgpass"), "{secret}: {e}");
        }
        let e = check_primary_conninfo("host=pg1\nrestore_command='x'", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one line"), "{e}");
    }

    fn test_codec() -> crate::codec::Codec {
        crate::codec::Codec::new(
            "r",
            crate::crypto::MasterSecret::generate().derive(),
            true,
            1,
        )
    }

    /// A run of one block, sealed as `sealed` at the start of a pack.
    fn one_block_run(id: ContentId, sealed: &[u8], bs: usize) -> [(usize, IndexEntry); 1] {
        [(
            0,
            IndexEntry {
                pack_id: PackId::new([1; 32]),
                entry: crate::pack::PackEntry {
                    block_id: id,
                    offset: 0,
                    sealed_len: sealed.len() as u32,
                    raw_len: bs as u32,
                },
            },
        )]
    }

    #[test]
    fn without_a_checksum_every_block_written_must_hash_to_its_id() {
        // A block sealed under another block's id opens (the envelope binds the id it was
        // sealed with): only recomputing its content id tells it is not that block. Format-3
        // manifests have no whole-file checksum to catch it later.
        let codec = test_codec();
        let bs = 64 << 10;
        let (right, wrong) = (vec![7u8; bs], vec![9u8; bs]);
        let id = codec.content_id(&right);
        for (content, ok) in [(&right, true), (&wrong, false)] {
            let sealed = codec.seal(crate::codec::ObjectKind::Block, &id, b"", content, 1);
            let run = one_block_run(id, &sealed, bs);
            let dir = tempfile::tempdir().unwrap();
            let out = RunOutput {
                codec: codec.clone(),
                file: Arc::new(std::fs::File::create(dir.path().join("f")).unwrap()),
                path: PathBuf::from("base/1/1"),
                pack: "packs/01".into(),
                block_size: bs as u64,
                size: bs as u64,
                parted: None,
            };
            let none = HashMap::new();
            let buffered = out.write_run(&run, 0, &sealed, None, &none);
            let direct = direct_io::with_group_buf(direct_io::GROUP_LEN, |g| {
                out.write_run(&run, 0, &sealed, Some(g), &none)
            });
            for (how, r) in [("buffered", buffered), ("direct", direct)] {
                match r {
                    Ok(_) => assert!(ok, "{how}: the wrong block was accepted"),
                    Err(e) => assert!(!ok, "{how}: {e}"),
                }
            }
        }
    }

    #[test]
    fn a_patched_block_is_written_patched_and_must_hash_to_the_patched_id() {
        let codec = test_codec();
        let bs = 64 << 10;
        let base: Vec<u8> = (0..bs).map(|i| (i % 253) as u8).collect();
        let mut new = base.clone();
        new[patches::PART_LEN + 1] ^= 0x55;
        let base_id = codec.content_id(&base);
        let sealed = codec.seal(crate::codec::ObjectKind::Block, &base_id, b"", &base, 1);
        let run = one_block_run(base_id, &sealed, bs);
        let patch = |id, mask, content: &[u8]| {
            let p = Patch {
                pos: 0,
                id,
                delta: ContentId([2; 32]),
                mask,
            };
            HashMap::from([(0usize, (p, patches::encode(content, mask)))])
        };
        let right = patch(codec.content_id(&new), 0b10, &new);
        // Patched with the wrong part, or claiming the patched block is another one.
        let wrong_part = patch(codec.content_id(&new), 0b100, &new);
        let wrong_id = patch(ContentId([3; 32]), 0b10, &new);
        for (patches, ok) in [(right, true), (wrong_part, false), (wrong_id, false)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            let out = RunOutput {
                codec: codec.clone(),
                file: Arc::new(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)
                        .unwrap(),
                ),
                path: path.clone(),
                pack: "packs/01".into(),
                block_size: bs as u64,
                size: bs as u64,
                parted: None,
            };
            let buffered = out.write_run(&run, 0, &sealed, None, &patches);
            if ok {
                assert_eq!(std::fs::read(&path).unwrap(), new, "buffered");
            }
            let direct = direct_io::with_group_buf(direct_io::GROUP_LEN, |g| {
                out.write_run(&run, 0, &sealed, Some(g), &patches)
            });
            for (how, r) in [("buffered", buffered), ("direct", direct)] {
                match r {
                    Ok(_) => assert!(ok, "{how}: a wrong patch was accepted"),
                    Err(e) => assert!(!ok, "{how}: {e}"),
                }
            }
            if ok {
                assert_eq!(std::fs::read(&path).unwrap(), new, "direct");
            }
        }
    }

    #[tokio::test]
    async fn a_pack_shorter_than_its_index_says_is_refused_as_corrupt() {
        let (_, repo) = crate::test_support::memory_repo().await;
        let pack = PackId::new([0xab; 32]);
        repo.storage()
            .put_create(&layout::pack(&pack), bytes::Bytes::from(vec![1u8; 100]))
            .await
            .unwrap();
        assert_eq!(read_range(&repo, &pack, 10..60).await.unwrap().len(), 50);
        let e = read_range(&repo, &pack, 50..150).await.unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    /// An old backup's file of a block size the merged check does not take is read back
    /// whole, through the descriptor its blocks were written with, which has O_DIRECT.
    #[tokio::test]
    async fn a_file_written_with_direct_io_is_read_back_for_its_checksum() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("16384");
        let data: Vec<u8> = (0..(3 * 24576) as u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        if !direct_io::enable(&file) {
            eprintln!("skipped: {} takes no O_DIRECT", dir.path().display());
            return;
        }
        let got = read_back_hash(Arc::new(file)).await.unwrap();
        assert_eq!(got, blake3::hash(&data).to_hex().to_string());
    }

    #[test]
    fn the_whole_file_check_passes_the_right_blocks_and_catches_misplaced_or_missing_ones() {
        let bs = 65536;
        let p = PartedHash::plain(bs).unwrap();
        let data: Vec<u8> = (0..(5 * bs + 8192) as u32)
            .map(|i| (i.wrapping_mul(2_246_822_519) >> 9) as u8)
            .collect();
        let f = entry(&data, bs);
        assert_eq!(merged_hash(p, &f, parts(p, &data, bs)), f.checksum);
        // Two blocks written at each other's offsets.
        let mut swapped = data.clone();
        let (a, b) = swapped.split_at_mut(2 * bs);
        a[bs..2 * bs].swap_with_slice(&mut b[..bs]);
        assert_ne!(merged_hash(p, &f, parts(p, &swapped, bs)), f.checksum);
        // A block whose hash never arrived.
        let mut missing = parts(p, &data, bs);
        missing[3] = None;
        assert_ne!(merged_hash(p, &f, missing), f.checksum);
        // One bit off in the short last block.
        let mut flipped = data.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_ne!(merged_hash(p, &f, parts(p, &flipped, bs)), f.checksum);
        // Files of one block and of none.
        let small = &data[..8192];
        let f1 = entry(small, bs);
        assert_eq!(merged_hash(p, &f1, parts(p, small, bs)), f1.checksum);
        let f0 = entry(&[], bs);
        assert_eq!(merged_hash(p, &f0, Vec::new()), f0.checksum);
    }
}
