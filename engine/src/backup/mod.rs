//! Base backups: full, differential and incremental, every one self-contained.
//!
//! Flow of [`run_backup`]:
//! 1. connect (`tokio-postgres`), read the server version, `data_checksums` and the WAL
//!    segment size; check the data directory's system identifier against the cluster record
//!    (binding it if this is the cluster's first contact);
//! 2. pick the reference backup (`diff`: the last full; `incr`: the last backup; none: the
//!    backup becomes `full`) and load the repository's block index;
//! 3. `pg_backup_start(label, fast => true)` on that session (non-exclusive: the backup is
//!    aborted by PostgreSQL if the session dies); the start goes into the backup's lease, so
//!    that `expire` keeps the WAL from it (`wal_guard`);
//! 4. walk the data directory (see [`crate::pg::datadir`]) and read files in parallel on the
//!    CPU pool ([`reader`]): files whose size and mtime match the reference backup, and whose
//!    mtime is older than the reference's start minus a safety window, are taken from the
//!    reference manifest without reading (unless `--checksum-delta`); `global/pg_control` is
//!    held back and read after every other file (a standby backup is consistent at the
//!    minimum recovery point that copy records, see [`standby`]);
//! 5. new blocks flow through a bounded channel into the [`crate::store::blocks::Packer`]: packs, then
//!    index segments;
//! 6. `pg_backup_stop(wait_for_archive => false)`, then (after any `expire` that may not
//!    have seen the start has ended, `wal_guard`) wait (bounded) until every WAL segment
//!    from the start to the stop LSN is in the repository, so the backup is restorable (on a
//!    standby, what is still missing after `standby_wal_wait` is carried in the backup from
//!    its `pg_wal`, see [`standby`]);
//! 7. write the manifest (the commit point), streamed from the file list that finished files
//!    were spilled to ([`crate::store::manifest::file_spool`]).
//!
//! Memory per 64 KiB block: the known-block set while files are read, within
//! [`BackupOptions::index_memory`] (32 bytes per block of the repository, then a table on
//! local disk; 40 per block this backup stores, then the oldest are forgotten: see
//! [`crate::store::blocks::KnownBlocks`]); for an incremental, the reference's
//! file entries (33 bytes per block) until each file is visited; and the sealed manifest
//! (about 35 bytes per block) while it is written. See the README's benchmarks.

mod commit;
pub mod owner_reads;
mod posix_acl;
pub mod reader;
pub mod standby;
mod wal_guard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use self::reader::{read_file, read_in_pieces, FileRead, ReadContext};
use crate::cpu::CpuPool;
use crate::error::{Error, Result};
use crate::pg::datadir::{self, Entry, EntryKind};
use crate::pg::{MAX_PG_MAJOR, MIN_PG_MAJOR};
use crate::progress::Progress;
use crate::repo::{layout, Repository};
use crate::store::block_lists;
use crate::store::blocks::{KnownBlocks, Packer};
use crate::store::cluster::{self as store_cluster, ServerIdentity};
use crate::store::manifest::file_spool::{FileSpool, SpooledFiles};
use crate::store::manifest::{
    self, BackupStats, BackupType, Database, DirEntry, Manifest, PartFingerprints, MANIFEST_FORMAT,
};
use crate::store::Timestamp;
use crate::types::{Lsn, SegmentNo, TimelineId, WalFileName};

/// Where PostgreSQL keeps its control file, relative to the data directory.
const PG_CONTROL: &str = "global/pg_control";

/// Default block size: 64 KiB.
pub const DEFAULT_BLOCK_SIZE: usize = 64 << 10;
/// Files modified this close to the reference backup's start are re-read (mtime granularity).
const MTIME_SAFETY_NS: i64 = 2_000_000_000;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Cluster name in the repository.
    pub cluster: String,
    /// Data directory.
    pub pgdata: PathBuf,
    /// libpq connection string.
    pub conninfo: String,
    /// Requested type (`Incr`/`Diff` become `Full` without a reference).
    pub backup_type: BackupType,
    /// Files read in parallel.
    pub jobs: usize,
    /// Block size.
    pub block_size: usize,
    /// zstd level for blocks.
    pub compress_level: i32,
    /// Re-read every file even if size and mtime are unchanged.
    pub checksum_delta: bool,
    /// How long to wait for the WAL up to the stop LSN to be archived.
    pub archive_timeout: Duration,
    /// On a standby: how long to wait for that WAL before copying what is still missing from
    /// the standby's `pg_wal` into the backup ([`standby`]).
    pub standby_wal_wait: Duration,
    /// How long to wait for another backup of the same cluster to finish (0: fail at once).
    pub lease_wait: Duration,
    /// Memory for the ids of blocks already stored and claimed (see [`KnownBlocks`]).
    pub index_memory: u64,
}

pub(crate) fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        Error::InvalidInput(format!("{what}: {detail}"))
    }
}

/// The cluster's databases, for a restore that leaves some out by name. Every role can read
/// `pg_database`; where it still fails (a connection lost just after the stop), the backup
/// goes on without names and a selective restore of it takes OIDs, with a warning now.
async fn databases(client: &tokio_postgres::Client) -> Vec<Database> {
    match client
        .query(
            "select oid::int8, datname::text from pg_database order by oid",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| {
                Some(Database {
                    oid: u32::try_from(r.get::<_, i64>(0)).ok()?,
                    name: r.get(1),
                })
            })
            .collect(),
        Err(e) => {
            tracing::warn!(
                "{}; the backup records no database names: a selective restore of it names \
                 databases by OID",
                pg_err("reading pg_database")(e)
            );
            Vec::new()
        }
    }
}

/// A connected session with the facts the backup needs.
struct Session {
    client: tokio_postgres::Client,
    version_num: u32,
    data_checksums: bool,
    wal_segment_size: u64,
    /// `pg_is_in_recovery()`: a standby.
    in_recovery: bool,
}

async fn connect(conninfo: &str) -> Result<Session> {
    let client = crate::pg::conninfo::connect(conninfo).await?;
    let row = client
        .query_one(
            "select current_setting('server_version_num')::int, current_setting('data_checksums'), \
             (select setting::bigint from pg_settings where name = 'wal_segment_size'), pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(pg_err("reading server settings"))?;
    let version_num: i32 = row.get(0);
    let checksums: String = row.get(1);
    let seg: i64 = row.get(2);
    let in_recovery: bool = row.get(3);
    Ok(Session {
        client,
        version_num: version_num as u32,
        data_checksums: checksums == "on",
        wal_segment_size: seg as u64,
        in_recovery,
    })
}

/// Proves that `pgdata` is the data directory of the server `client` is connected to, and
/// returns its control file.
///
/// A backup reads files from `pgdata` and WAL positions from the connection: pointed at a
/// stale restored copy of the same system (same system identifier), it would succeed and
/// restore to old data. The decisive test is the last checkpoint: the server reports the one
/// in its own `pg_control` (`pg_control_checkpoint()`), which must be the one in
/// `pgdata/global/pg_control` (read twice more if a checkpoint lands in between). Paths may
/// legitimately differ (a container mounts the directory elsewhere), so they decide only when
/// the checkpoint cannot be asked for.
async fn prove_pgdata_is_the_servers(
    client: &tokio_postgres::Client,
    pgdata: &Path,
) -> Result<crate::pg::control::ControlFile> {
    let data_directory: Option<String> = client
        .query_one("select current_setting('data_directory')", &[])
        .await
        .ok()
        .map(|r| r.get(0));
    let server_dir = data_directory
        .as_deref()
        .unwrap_or("(not readable by this role)");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let control = crate::pg::control::read(pgdata)?;
        let server: Option<String> = client
            .query_one("select (pg_control_checkpoint()).checkpoint_lsn::text", &[])
            .await
            .ok()
            .map(|r| r.get(0));
        let server: Option<crate::types::Lsn> = server.and_then(|s| s.parse().ok());
        match (server, control.checkpoint) {
            (Some(s), Some(local)) if s == local => return Ok(control),
            (Some(s), local) => {
                if attempt < 3 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                return Err(Error::Config(format!(
                    "cluster.pgdata {} is not the data directory of the server at cluster.conninfo: \
                     the server's data_directory is {server_dir} and its last checkpoint is {s}, \
                     but {}/global/pg_control records {} (a stale copy, or another server); \
                     point cluster.pgdata at the server's data directory",
                    pgdata.display(),
                    pgdata.display(),
                    local.map_or("no checkpoint".to_string(), |l| l.to_string()),
                )));
            }
            (None, _) => {
                // The role may not call pg_control_checkpoint(): compare the paths.
                let Some(dir) = &data_directory else {
                    return Err(Error::Config(format!(
                        "cannot prove that cluster.pgdata {} belongs to the server at cluster.conninfo: \
                         the role can neither read data_directory nor call pg_control_checkpoint(); \
                         grant pg_read_all_settings (see the README's least-privilege role)",
                        pgdata.display()
                    )));
                };
                let same = match (std::fs::canonicalize(dir), std::fs::canonicalize(pgdata)) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                };
                if !same {
                    return Err(Error::Config(format!(
                        "cluster.pgdata {} is not the data directory of the server at \
                         cluster.conninfo (its data_directory is {dir}); point cluster.pgdata at it",
                        pgdata.display()
                    )));
                }
                return Ok(control);
            }
        }
    }
}

async fn bind_cluster(
    repo: &Repository,
    cluster: &str,
    sysid: u64,
    seg_size: u64,
    pg_major: u32,
) -> Result<()> {
    let server = ServerIdentity {
        system_identifier: sysid,
        wal_segment_size: seg_size,
        pg_major,
    };
    match store_cluster::bind_or_check(repo, cluster, &server, None).await? {
        Ok(_) => Ok(()),
        Err(why) => Err(Error::InvalidInput(format!(
            "backup refused, nothing stored: {why}"
        ))),
    }
}

fn wal_name(tli: u32, lsn: Lsn, seg_size: u64) -> WalFileName {
    WalFileName::Segment {
        tli: TimelineId(tli),
        segno: SegmentNo::from_absolute(lsn.segment_no(seg_size), seg_size),
    }
}

/// True when `name` is archived for `cluster`.
async fn is_archived(repo: &Repository, cluster: &str, name: &WalFileName) -> Result<bool> {
    match repo
        .storage()
        .head(&layout::wal_pointer(cluster, name))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits (at most `timeout`) until every segment of `tli` from `start` to `stop` is
/// archived; returns the ones still missing then, oldest first (empty: all archived).
async fn wait_for_wal(
    repo: &Repository,
    cluster: &str,
    tli: u32,
    start: Lsn,
    stop: Lsn,
    seg_size: u64,
    timeout: Duration,
) -> Result<Vec<WalFileName>> {
    let deadline = Instant::now() + timeout;
    let name = |segno: u64| WalFileName::Segment {
        tli: TimelineId(tli),
        segno: SegmentNo::from_absolute(segno, seg_size),
    };
    let mut segno = start.segment_no(seg_size);
    let last = stop.segment_no(seg_size);
    let mut poll = ArchivePoll::default();
    while segno <= last {
        if is_archived(repo, cluster, &name(segno)).await? {
            segno += 1;
            poll = ArchivePoll::default();
            continue;
        }
        if Instant::now() > deadline {
            let mut missing = vec![name(segno)];
            for later in segno + 1..=last {
                if !is_archived(repo, cluster, &name(later)).await? {
                    missing.push(name(later));
                }
            }
            return Ok(missing);
        }
        poll.pause().await;
    }
    Ok(Vec::new())
}

/// Pauses between looks for a segment to be archived. The segment pg_backup_stop (or
/// `check`'s pg_switch_wal) completes is usually archived a few tens or hundreds of
/// milliseconds later: look again soon, then less often. With a fixed 200 ms pause, the
/// look after the segment landed came up to 200 ms late, and usually another round later:
/// alternating incremental backups measured 1.10 s against 0.72 s on average.
struct ArchivePoll(Duration);

impl Default for ArchivePoll {
    fn default() -> Self {
        ArchivePoll(Duration::from_millis(20))
    }
}

impl ArchivePoll {
    /// Longest pause (one `HEAD` of the repository per pause).
    const MAX: Duration = Duration::from_millis(200);

    async fn pause(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 3 / 2).min(Self::MAX);
    }
}

fn new_backup_id(t: BackupType, existing: &[String]) -> String {
    loop {
        let now = time::OffsetDateTime::now_utc();
        let id = format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}{}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            t.letter()
        );
        if !existing.iter().any(|e| e.get(..15) == id.get(..15)) {
            return id;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The non-exclusive backup functions of a PostgreSQL version. 15 renamed them
/// (`pg_backup_start`/`pg_backup_stop`) and removed exclusive backups, so their `exclusive`
/// argument went away; 13 and 14 take `exclusive => false`. Both stop with
/// `wait_for_archive => false`: pgcairn waits for the WAL itself, with `backup.archive_timeout`
/// and an error naming the missing segment, where the server would wait without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BackupFunctions {
    start: &'static str,
    start_sql: &'static str,
    stop: &'static str,
    stop_sql: &'static str,
}

impl BackupFunctions {
    fn of(server_version_num: u32) -> Self {
        if server_version_num >= 150000 {
            BackupFunctions {
                start: "pg_backup_start",
                start_sql: "select pg_backup_start($1, true)::text",
                stop: "pg_backup_stop",
                stop_sql: "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)",
            }
        } else {
            BackupFunctions {
                start: "pg_start_backup",
                start_sql: "select pg_start_backup($1, true, false)::text",
                stop: "pg_stop_backup",
                stop_sql:
                    "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)",
            }
        }
    }
}

/// Takes a base backup.
#[instrument(skip_all, fields(cluster = %opts.cluster))]
pub async fn run_backup(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupDone> {
    let session = connect(&opts.conninfo).await?;
    let control = prove_pgdata_is_the_servers(&session.client, &opts.pgdata).await?;
    let pg_major = session.version_num / 10000;
    if !(MIN_PG_MAJOR..=MAX_PG_MAJOR).contains(&pg_major) {
        return Err(Error::Config(format!(
            "the server at cluster.conninfo is PostgreSQL {pg_major} (server_version_num {}); \
             pgcairn supports PostgreSQL {MIN_PG_MAJOR} to {MAX_PG_MAJOR}",
            session.version_num
        )));
    }
    control.check_major(pg_major).map_err(|why| {
        Error::Config(format!(
            "cluster.pgdata {} is not the data directory of the PostgreSQL {pg_major} server at \
             cluster.conninfo: {why}; point cluster.pgdata at the server's data directory",
            opts.pgdata.display()
        ))
    })?;
    bind_cluster(
        repo,
        &opts.cluster,
        control.system_identifier,
        session.wal_segment_size,
        pg_major,
    )
    .await?;

    // The reference is chosen from the listing, and read only once the lease (which names it)
    // is held: a reference expired before that would be gone by then; while it is gone and
    // this backup runs, gc sweeps nothing ([`crate::gc`]). Its unchanged files' block lists
    // are reused as they are, without looking the blocks up, and some may sit only in packs
    // gc condemned after the reference was written (their reprieve waits for a gc that sees
    // a manifest naming them): if the reference expired first, only this backup's manifest
    // will name them.
    let ids = manifest::list_ids(repo, &opts.cluster).await?;
    let reference_id = ids
        .iter()
        .rev()
        .find(|id| match opts.backup_type {
            BackupType::Full => false,
            BackupType::Incr => true,
            BackupType::Diff => id.ends_with('F'),
        })
        .cloned();
    let backup_type = if reference_id.is_none() {
        BackupType::Full
    } else {
        opts.backup_type
    };
    // Not the id of a backup killed this second either: its lease is still there.
    let mut taken = ids.clone();
    taken.extend(crate::lease::backup_ids_with_leases(repo, &opts.cluster).await?);
    let id = new_backup_id(backup_type, &taken);
    info!(backup = %id, ?backup_type, reference = reference_id.as_deref(), "starting");

    // The lease first, then the reference, the GC state and the index: a GC that condemns a
    // pack after this point sees the lease and does not sweep it until this backup ends.
    let lease = crate::lease::acquire_backup_with(
        repo,
        &opts.cluster,
        &id,
        reference_id.as_deref(),
        opts.lease_wait,
    )
    .await?;
    let reference = match &reference_id {
        None => Ok(None),
        Some(r) => match manifest::load_spilled(repo, &opts.cluster, r, PartFingerprints::Keep)
            .await
        {
            Ok(loaded) => Ok(Some(loaded)),
            Err(Error::NotFound(_)) => Err(Error::Conflict(format!(
                "backup {r}, the reference of this {backup_type:?} backup, was removed (expire) while it \
                 started; nothing was written. Run the backup again: it takes the newest backup left"
            ))),
            Err(e) => Err(e),
        },
    };
    let result = match reference {
        Ok(reference) => {
            backup_with_lease(
                repo,
                &lease,
                opts,
                progress,
                session,
                control,
                reference,
                backup_type,
                id,
            )
            .await
        }
        Err(e) => Err(e),
    };
    lease.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn backup_with_lease(
    repo: &Repository,
    lease: &crate::lease::Lease,
    opts: &BackupOptions,
    progress: &dyn Progress,
    session: Session,
    control: crate::pg::control::ControlFile,
    reference: Option<(Manifest, SpooledFiles)>,
    backup_type: BackupType,
    id: String,
) -> Result<BackupDone> {
    progress.phase("loading the block index", None);
    // gc sweeps a pack condemned after the generation read here only once this backup has
    // ended (its lease says which generation it read).
    let (condemned, gc_seen) = crate::store::condemned::condemned_packs_seen(repo).await?;
    lease.record_gc_seen(gc_seen).await;
    let known = Arc::new(KnownBlocks::load_excluding(repo, &condemned, opts.index_memory).await?);
    // The reference's file entries stay in its spool (memory holds their paths); each file's
    // lookup takes its entry out.
    //
    // Only a reference cut into blocks of this backup's size lends its entries: an unchanged
    // file's block list is positional (block `i` at `i * block_size`, the size this manifest
    // declares), so one carried over from a backup of another `backup.block_size` would make
    // this backup unrestorable, and every incremental after it that carries it on. After a
    // change of the setting every file is read again (its blocks are new anyway: ids of
    // blocks of another size never match).
    let (reference_id, reference_start_ns, reference_files) = match reference {
        Some((r, files)) if r.block_size as usize == opts.block_size => {
            let start_ns = r.start_time.unix_nanos() as i64;
            (Some(r.id), start_ns, Some(files))
        }
        Some((r, _)) => {
            warn!(
                reference = %r.id,
                "backup.block_size changed from {} to {} bytes since the reference: every file is read and stored again",
                r.block_size, opts.block_size
            );
            (Some(r.id), 0, None)
        }
        None => (None, 0, None),
    };

    let start_time = Timestamp::now();
    let label = format!("pgcairn backup {id}");
    let functions = BackupFunctions::of(session.version_num);
    let start_text: String = session
        .client
        .query_one(functions.start_sql, &[&label])
        .await
        .map_err(pg_err(functions.start))?
        .get(0);
    let start_lsn: Lsn = start_text
        .parse()
        .map_err(|e| Error::InvalidInput(format!("{e}")))?;
    // From now on an expire keeps the WAL from this start (see `wal_guard`).
    let start_record = wal_guard::record_start(repo, lease, &opts.cluster, start_lsn).await;
    // A standby refuses pg_walfile_name(): its timeline comes from the label at the stop.
    let primary_timeline = if session.in_recovery {
        None
    } else {
        let tli_hex: String = session
            .client
            .query_one(
                "select substr(pg_walfile_name($1::text::pg_lsn), 1, 8)",
                &[&start_text],
            )
            .await
            .map_err(pg_err("reading the timeline"))?
            .get(0);
        Some(
            u32::from_str_radix(&tli_hex, 16)
                .map_err(|_| Error::InvalidInput(format!("bad timeline {tli_hex}")))?,
        )
    };

    // Size first, for progress and ETA (a stat-only walk).
    let tablespace_dir =
        crate::pg::tablespace_dir::name(session.version_num / 10000, control.catalog_version);
    let pgdata = opts.pgdata.clone();
    let dir = tablespace_dir.clone();
    let total: u64 = tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        datadir::walk(&pgdata, &dir, |e| {
            if let EntryKind::File { size, .. } = e.kind {
                total += size;
            }
            Ok(())
        })
        .map(|_| total)
    })
    .await
    .map_err(|e| Error::InvalidInput(e.to_string()))??;
    progress.phase("backup", Some(total));

    // What the data directory's owner could read bounds what is taken ([`owner_reads`]).
    let owner_reads = Arc::new(
        owner_reads::OwnerReads::of(&opts.pgdata, crate::pg::instance::current_uid())
            .map_err(|e| Error::io(opts.pgdata.display().to_string(), e))?,
    );
    // The walk runs on a blocking thread and streams entries through a bounded channel.
    let (entry_tx, mut entry_rx) = mpsc::channel::<Entry>(256);
    let pgdata = opts.pgdata.clone();
    let walk_owner = owner_reads.clone();
    let dir = tablespace_dir.clone();
    let walker = tokio::task::spawn_blocking(move || {
        datadir::walk_as(&pgdata, &dir, &walk_owner, |e| {
            entry_tx
                .blocking_send(e)
                .map_err(|_| Error::InvalidInput("backup aborted".into()))
        })
    });
    // Batches of up to reader::BATCH_BYTES sealed bytes: at most 4 waiting, plus one being
    // filled by each reader.
    let (block_tx, mut block_rx) = mpsc::channel::<Vec<crate::store::blocks::SealedBlock>>(4);
    let mut packer = Packer::new(repo.clone());
    let packer_task = tokio::spawn(async move {
        while let Some(batch) = block_rx.recv().await {
            for b in batch {
                packer.add(b).await?;
            }
        }
        packer.flush().await?;
        Ok::<Packer, Error>(packer)
    });

    let mut directories = Vec::new();
    // Copied after every other file: a restore of a standby backup is consistent at the
    // minimum recovery point this copy records ([`standby`]).
    let mut held_control: Option<Entry> = None;
    let mut stats = BackupStats::default();
    let mut files = FileSpool::new()?;
    let codec = Arc::new(repo.codec().clone());
    let verify = session.data_checksums;
    let checksum_delta = opts.checksum_delta;
    let read_ctx = ReadContext {
        codec: codec.clone(),
        block_size: opts.block_size,
        compress_level: opts.compress_level,
        verify_checksums: verify,
        start_lsn: start_lsn.0,
        known: known.clone(),
        sink: block_tx,
        owner_reads,
    };
    let results = {
        let block_size = opts.block_size;
        let reference_files = Arc::new(std::sync::Mutex::new(reference_files));
        // Readers block on the bounded channel into the packer, so they run on threads of
        // their own: on the shared CPU pool they could fill every thread while the packer
        // waits for one (hashing an index segment of 1 MiB or more uses that pool), and
        // neither would move again.
        let readers = Arc::new(
            CpuPool::new("backup-read", opts.jobs.max(1))
                .map_err(|e| Error::io("starting the backup's reader threads", e))?,
        );
        let stream = futures::stream::poll_fn(|cx| entry_rx.poll_recv(cx))
            .filter_map(|e| {
                let is_dir = e.kind == EntryKind::Dir;
                if is_dir {
                    directories.push(DirEntry {
                        path: e.path.clone(),
                        mode: e.mode,
                        uid: e.uid,
                        gid: e.gid,
                    });
                }
                if e.path == PG_CONTROL {
                    held_control = Some(e);
                    return futures::future::ready(None);
                }
                futures::future::ready((!is_dir).then_some(e))
            })
            .map(|e| {
                let ctx = read_ctx.clone();
                let readers = readers.clone();
                let refs = reference_files.clone();
                async move {
                    let parent = match refs.lock().expect("reference files lock").as_mut() {
                        Some(files) => files.take(&e.path)?,
                        None => None,
                    };
                    if let (Some(p), EntryKind::File { size, mtime_ns }, false) =
                        (&parent, &e.kind, checksum_delta)
                    {
                        // A file the data directory's owner could not read is read (and left
                        // out, [`owner_reads`]) rather than carried over from the reference: an
                        // older root backup may have kept one through a planted link.
                        if p.size == *size
                            && p.mtime_ns == *mtime_ns
                            && *mtime_ns < reference_start_ns - MTIME_SAFETY_NS
                            && ctx.owner_reads.could_read(&e.abs)
                        {
                            let mut unchanged = parent.expect("matched above");
                            if unchanged.block_lists.is_empty() {
                                // From a backup listing every block (before manifest format
                                // 2): listed now, or it would stay inline in every
                                // incremental that reuses it.
                                let (lists, new) = block_lists::list(
                                    &ctx.codec,
                                    &unchanged.blocks,
                                    &[],
                                    &[],
                                    ctx.compress_level,
                                    |id| ctx.known.claim(id),
                                );
                                if !new.is_empty() && ctx.sink.send(new).await.is_err() {
                                    return Err(Error::InvalidInput(
                                        "the packer stopped (see the error above)".into(),
                                    ));
                                }
                                unchanged.block_lists = lists;
                            }
                            unchanged.mode = e.mode;
                            unchanged.uid = e.uid;
                            unchanged.gid = e.gid;
                            return Ok((
                                FileRead {
                                    entry: Some(unchanged),
                                    read: 0,
                                    new_bytes: 0,
                                    new_blocks: 0,
                                },
                                true,
                            ));
                        }
                    }
                    let size = match e.kind {
                        EntryKind::File { size, .. } => size,
                        EntryKind::Dir => 0,
                    };
                    let ranges = reader::pieces(size, block_size);
                    if ranges.len() > 1 {
                        return read_in_pieces(&readers, ctx, e, parent, ranges)
                            .await
                            .map(|r| (r, false));
                    }
                    readers
                        .run(move || read_file(&ctx, &e, parent.as_ref()).map(|r| (r, false)))
                        .await
                }
            })
            .buffer_unordered(opts.jobs.max(1));
        let mut stream = Box::pin(stream);
        let mut failure = None;
        while let Some(r) = stream.next().await {
            // A lapsed lease dooms the backup (no manifest will be written): stop now rather
            // than after reading everything.
            if let Err(e) = lease.ensure_held() {
                failure = Some(e);
                break;
            }
            match r {
                Ok((read, unchanged)) => {
                    tally(&read, &mut stats, progress);
                    stats.files_unchanged += u64::from(unchanged);
                    if let Some(f) = read.entry {
                        if let Err(e) = files.push(&f, &mut stats) {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        failure
    };
    if let Some(e) = results {
        drop(read_ctx);
        // A reader that found the packer gone only says so; the packer's own error (a failed
        // upload, now often in the background) says why.
        if packer_task.is_finished() {
            if let Ok(Err(packer_error)) = packer_task.await {
                return Err(packer_error);
            }
            return Err(e);
        }
        packer_task.abort();
        return Err(e);
    }
    let mut tablespaces = match walker.await {
        Ok(r) => r?,
        Err(e) => {
            packer_task.abort();
            return Err(Error::InvalidInput(e.to_string()));
        }
    };
    tablespaces.sort_by_key(|t| t.oid);
    // pg_control, then any WAL copies: read one at a time after the parallel walk.
    let alone = AloneReader { ctx: read_ctx };
    // No backup without it: a restore of one would not start (a walk that took nothing, the
    // owner's checks refusing the whole data directory, must fail here, not in a restore).
    let control_stored = match held_control {
        Some(e) => alone.read(e, &mut files, &mut stats, progress).await?,
        None => false,
    };
    if !control_stored {
        packer_task.abort();
        return Err(Error::InvalidInput(format!(
            "{}: global/pg_control was not found or not read (see the warnings above); a \
             backup without it cannot be restored. Is this the data directory of a cluster?",
            opts.pgdata.display()
        )));
    }

    let stop = session
        .client
        .query_one(functions.stop_sql, &[])
        .await
        .map_err(pg_err(functions.stop))?;
    let stop_text: String = stop.get(0);
    let stop_lsn: Lsn = stop_text
        .parse()
        .map_err(|e| Error::InvalidInput(format!("{e}")))?;
    let backup_label: String = stop.get(1);
    let spcmap: Option<String> = stop.get(2);
    let stop_time = Timestamp::now();
    let (timeline, from_standby) = match primary_timeline {
        Some(t) => (t, false),
        None => {
            let start_tli = standby::label_start_timeline(&backup_label)?;
            let stop_tli = standby::stop_timeline(&session.client).await?;
            if stop_tli != start_tli {
                return Err(Error::Conflict(format!(
                    "the standby moved from timeline {start_tli} to {stop_tli} during the backup \
                     (its upstream was promoted): take the backup again. No manifest was written"
                )));
            }
            (start_tli, true)
        }
    };
    // Which transactions had committed by the consistency point, for a restore to an xid.
    let snapshot_after_stop = session
        .client
        .query_one("select txid_current_snapshot()::text", &[])
        .await
        .ok()
        .and_then(|r| crate::pg::txid_snapshot::parse(&r.get::<_, String>(0)));
    let databases = databases(&session.client).await;
    let config_files = crate::config_files::collect(&session.client, &opts.pgdata).await;
    let seg = session.wal_segment_size;
    progress.phase("waiting for WAL", None);
    // An expire that may have read the leases before this backup's start landed in its lease
    // has ended before the check below, so the check sees what it removed (see `wal_guard`).
    wal_guard::before_wal_check(
        repo,
        lease,
        &opts.cluster,
        (start_lsn, seg),
        start_record,
        opts.archive_timeout.max(opts.lease_wait),
    )
    .await?;
    let wait = if from_standby {
        opts.standby_wal_wait.min(opts.archive_timeout)
    } else {
        opts.archive_timeout
    };
    // Through the segment holding the byte before the stop LSN, as PostgreSQL waits.
    let wal_end = Lsn(manifest::last_segment_before(start_lsn, stop_lsn, seg) * seg);
    let missing =
        wait_for_wal(repo, &opts.cluster, timeline, start_lsn, wal_end, seg, wait).await?;
    let mut wal_in_backup = Vec::new();
    if let Some(first) = missing.first() {
        if !from_standby {
            return Err(Error::Timeout(format!(
                "WAL segment {first} (needed to make this backup consistent) was not archived within {}s; \
                 check archive_command (pgcairn check) and backup.archive_timeout. No manifest was written",
                wait.as_secs()
            )));
        }
        info!(
            segments = missing.len(),
            first = %first,
            "WAL not archived after backup.standby_wal_wait: copying it from the standby's pg_wal into the backup"
        );
        let mut absent = Vec::new();
        for name in &missing {
            match standby::pg_wal_entry(&opts.pgdata, name, control.system_identifier, seg) {
                Ok(e) => {
                    alone.read(e, &mut files, &mut stats, progress).await?;
                    wal_in_backup.push(name.to_string());
                }
                Err(why) => absent.push((name, why)),
            }
        }
        // Gone from pg_wal (a restartpoint during the backup): complete, so on its way to the
        // archive; wait for it there for the rest of backup.archive_timeout.
        let rest = opts.archive_timeout.saturating_sub(wait);
        for (name, why) in absent {
            let at = name
                .segment()
                .map(|s| s.start_lsn(seg))
                .unwrap_or(start_lsn);
            if !wait_for_wal(repo, &opts.cluster, timeline, at, at, seg, rest)
                .await?
                .is_empty()
            {
                return Err(Error::Timeout(format!(
                    "WAL segment {name} (needed to make this standby backup consistent) was not archived \
                     within backup.archive_timeout ({}s) and is not usable in the standby's pg_wal ({why}); \
                     check archive_command on the primary (or archive_mode = always on the standby) and \
                     take the backup again. No manifest was written",
                    opts.archive_timeout.as_secs()
                )));
            }
        }
    }
    drop(alone);
    // Only the readers needed the known blocks: gone before the manifest is written.
    let (known_on_disk, claims_forgotten) = (known.on_disk(), known.forgotten());
    if let Some(e) = known.failure() {
        return Err(e);
    }
    drop(known);
    let packer = packer_task
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))??;

    directories.sort_by(|a, b| a.path.cmp(&b.path));
    stats.stored_new = packer.stored;
    let m = Manifest {
        format: MANIFEST_FORMAT,
        id,
        backup_type,
        reference: reference_id,
        gc_seen: Some(gc_seen),
        cluster: opts.cluster.clone(),
        system_identifier: control.system_identifier.to_string(),
        pg_version_num: session.version_num,
        timeline,
        start_lsn,
        stop_lsn,
        start_wal: wal_name(timeline, start_lsn, seg).to_string(),
        stop_wal: wal_name(timeline, stop_lsn, seg).to_string(),
        start_time,
        stop_time,
        block_size: opts.block_size as u32,
        // A hot standby's snapshot lists no running transactions (PostgreSQL keeps them in
        // its subtransaction array, which txid_current_snapshot() leaves out): xmax and an
        // empty list would count the primary's open transactions as ended. Its xmin only.
        xmin_after_stop: snapshot_after_stop.as_ref().map(|s| s.xmin),
        xmax_after_stop: snapshot_after_stop
            .as_ref()
            .filter(|_| !from_standby)
            .map(|s| s.xmax),
        running_xids_after_stop: snapshot_after_stop
            .filter(|_| !from_standby)
            .map(|s| s.running)
            .unwrap_or_default(),
        checksums_verified: verify,
        from_standby,
        wal_in_backup,
        backup_label,
        tablespace_map: spcmap.filter(|s| !s.is_empty()),
        tablespaces,
        tablespace_dir: Some(tablespace_dir),
        databases,
        // A relative link is recorded as the directory it reaches: --wal-dir takes absolute
        // paths.
        wal_link: std::fs::read_link(opts.pgdata.join("pg_wal"))
            .ok()
            .and_then(|l| match l.is_absolute() {
                true => Some(l),
                false => std::fs::canonicalize(opts.pgdata.join("pg_wal")).ok(),
            }),
        config_files,
        directories,
        files: Vec::new(),
        stats,
    };
    let bad_pages = std::mem::take(&mut files.bad_pages);
    progress.phase("writing the manifest", None);
    commit::write_manifest(repo, lease, &m, files.into_sorted()?).await?;
    record_in_head(repo, &m, seg).await?;
    progress.finish();
    Ok(BackupDone {
        manifest: m,
        bad_pages,
        known_on_disk,
        claims_forgotten,
    })
}

/// Counts a file read into the backup's statistics and progress.
fn tally(read: &FileRead, stats: &mut BackupStats, progress: &dyn Progress) {
    progress.advance(
        read.entry.as_ref().map(|e| e.size).unwrap_or(0),
        read.new_bytes,
    );
    stats.bytes_read += read.read;
    stats.bytes_new += read.new_bytes;
    stats.blocks_new += read.new_blocks;
}

/// Reads single files (outside the parallel walk) into the backup's packer.
struct AloneReader {
    ctx: ReadContext,
}

impl AloneReader {
    async fn read(
        &self,
        e: Entry,
        files: &mut FileSpool,
        stats: &mut BackupStats,
        progress: &dyn Progress,
    ) -> Result<bool> {
        let ctx = self.ctx.clone();
        // A blocking thread, not the shared CPU pool: the reader may wait for the packer
        // (see the readers' pool in the parallel walk).
        let read = tokio::task::spawn_blocking(move || {
            if e.path == PG_CONTROL {
                reader::read_control_file(&ctx, &e)
            } else {
                read_file(&ctx, &e, None)
            }
        })
        .await
        .map_err(|e| Error::InvalidInput(format!("reading a file failed: {e}")))??;
        tally(&read, stats, progress);
        let stored = read.entry.is_some();
        if let Some(f) = read.entry {
            files.push(&f, stats)?;
        }
        Ok(stored)
    }
}

/// Records a committed backup in the cluster's catalog head, with the WAL it waited for
/// (see [`crate::store::head`]). Segments the backup carries itself are not in the archive
/// and are not recorded as archived.
async fn record_in_head(repo: &Repository, m: &Manifest, seg_size: u64) -> Result<()> {
    let entry = crate::store::head::HeadBackup {
        timeline: m.timeline,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        stop_time: m.stop_time,
    };
    let id = crate::store::ids::BackupId::new(m.id.clone());
    let carried = m.carried_segments(seg_size);
    let archived: Vec<u64> = [
        m.start_lsn.segment_no(seg_size),
        m.consistency_segment(seg_size),
    ]
    .into_iter()
    .filter(|s| !carried.contains(&(m.timeline, *s)))
    .collect();
    let head = crate::store::head::update(repo, &m.cluster, seg_size, |h| {
        let mut changed = false;
        for s in &archived {
            changed |= h.saw_segment(m.timeline, *s);
        }
        if h.backups.get(&id) != Some(&entry) {
            h.backups.insert(id.clone(), entry.clone());
            changed = true;
        }
        changed
    })
    .await
    .map_err(|e| {
        Error::Conflict(format!(
            "backup {} is stored (its manifest is written), but recording it in the catalog head failed: {e}. \
             Until a later backup records it, `verify` will not notice if it is deleted",
            m.id
        ))
    })?;
    record_in_status(repo, m, &head, seg_size).await;
    Ok(())
}

/// Records the backup in the cluster's status object (for metrics; best effort).
async fn record_in_status(
    repo: &Repository,
    m: &Manifest,
    head: &crate::store::head::CatalogHead,
    seg_size: u64,
) {
    use crate::store::status::{self, BackupStatus, RetainedStatus};
    let now = Timestamp::now();
    let kind = serde_json::to_value(m.backup_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let done = BackupStatus {
        id: m.id.clone(),
        backup_type: kind.clone(),
        started_at: m.start_time,
        finished_at: now,
        duration_seconds: (now - m.start_time).as_seconds_f64().max(0.0),
        bytes_read: m.stats.bytes_read,
        bytes_new: m.stats.bytes_new,
        bytes_stored: m.stats.stored_new,
        size: m.stats.size,
    };
    let retained = RetainedStatus::from_head(head);
    // The backup waited until the segment of its consistency point was archived: everything
    // written up to its stop time is in the archive.
    let stop_seg = m.stop_lsn.segment_no(seg_size);
    let wal = status::WalStatus {
        segment: WalFileName::Segment {
            tli: TimelineId(m.timeline),
            segno: SegmentNo::from_absolute(stop_seg, seg_size),
        }
        .to_string(),
        timeline: m.timeline,
        end_lsn: Lsn((stop_seg + 1) * seg_size),
        end_time: m.stop_time,
        archived_at: now,
    };
    status::record(repo, &m.cluster, "backup", |s| {
        s.saw_wal(wal.clone());
        s.last_success_by_type
            .insert(kind.clone(), done.finished_at);
        s.last_backup = Some(done.clone());
        s.retained = Some(retained.clone());
        true
    })
    .await;
}

/// A finished backup: its manifest without the file list (that went from the spool to the
/// repository without being held in memory) and the files whose page checksums failed.
#[derive(Debug)]
pub struct BackupDone {
    /// The manifest as written, but `files` is empty.
    pub manifest: Manifest,
    /// Files with page checksum failures, and the failing blocks.
    pub bad_pages: Vec<(String, Vec<u32>)>,
    /// When the repository's block ids were over `index_memory`: how many went to a table in
    /// `TMPDIR`.
    pub known_on_disk: Option<u64>,
    /// Claims this backup forgot to stay within `index_memory` (blocks met again after that
    /// were stored again).
    pub claims_forgotten: u64,
}

/// What `pgcairn check` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// `server_version_num`.
    pub pg_version_num: u32,
    /// `wal_level`.
    pub wal_level: String,
    /// `archive_mode`.
    pub archive_mode: String,
    /// `archive_command`.
    pub archive_command: String,
    /// On a primary: the segment switched to and found archived.
    pub archived_segment: Option<String>,
    /// Seconds until it was in the repository.
    pub archive_wait_seconds: f64,
    /// On a standby: what was checked there, and what only the primary can tell.
    pub standby: Option<standby::StandbyCheck>,
}

/// Checks PostgreSQL's archiving settings, forces a WAL switch and waits until the finished
/// segment is in the repository. On a standby, where a WAL switch is refused, checks what a
/// standby can tell instead ([`standby::check_standby`]).
pub async fn check_archiving(
    repo: &Repository,
    cluster: &str,
    conninfo: &str,
    timeout: Duration,
) -> Result<CheckReport> {
    let session = connect(conninfo).await?;
    let row = session
        .client
        .query_one(
            "select current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command')",
            &[],
        )
        .await
        .map_err(pg_err("reading archiving settings"))?;
    let (wal_level, archive_mode, archive_command): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    if wal_level == "minimal" {
        return Err(Error::Config(
            "wal_level = minimal: set wal_level = replica (or logical) and restart PostgreSQL"
                .into(),
        ));
    }
    if archive_mode == "off" {
        return Err(Error::Config(
            "archive_mode = off: set archive_mode = on and restart PostgreSQL".into(),
        ));
    }
    if !archive_command.contains("pgcairn") || !archive_command.contains("archive-push") {
        return Err(Error::Config(format!(
            "archive_command = {archive_command:?} does not call pgcairn archive-push; set archive_command = 'pgcairn archive-push %p'"
        )));
    }
    if session.in_recovery {
        let started = Instant::now();
        let check =
            standby::check_standby(repo, cluster, &session.client, &archive_mode, timeout).await?;
        return Ok(CheckReport {
            pg_version_num: session.version_num,
            wal_level,
            archive_mode,
            archive_command,
            archived_segment: None,
            archive_wait_seconds: started.elapsed().as_secs_f64(),
            standby: Some(check),
        });
    }
    let seg: String = session
        .client
        .query_one("select pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(pg_err(
            "pg_switch_wal (grant EXECUTE on it to the backup role)",
        ))?
        .get(0);
    let name: WalFileName = seg
        .parse()
        .map_err(|e| Error::InvalidInput(format!("{e}")))?;
    let started = Instant::now();
    let mut poll = ArchivePoll::default();
    loop {
        match repo
            .storage()
            .head(&layout::wal_pointer(cluster, &name))
            .await
        {
            Ok(_) => break,
            Err(e) if e.is_not_found() => {
                if started.elapsed() > timeout {
                    return Err(Error::Timeout(format!(
                        "WAL segment {seg} was not archived into cluster {cluster:?} of {} within {}s: check the PostgreSQL log \
                         for archive_command errors, and that archive_command uses this repository and cluster name",
                        repo.storage().describe(),
                        timeout.as_secs()
                    )));
                }
                poll.pause().await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(CheckReport {
        pg_version_num: session.version_num,
        wal_level,
        archive_mode,
        archive_command,
        archived_segment: Some(seg),
        archive_wait_seconds: started.elapsed().as_secs_f64(),
        standby: None,
    })
}

/// A restore point pgcairn created, recorded so restores can pick the right backup for it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestorePoint {
    /// Name.
    pub name: String,
    /// Its LSN.
    pub lsn: Lsn,
    /// When it was created.
    pub created_at: Timestamp,
}

/// Reads a recorded restore point.
pub async fn read_restore_point(
    repo: &Repository,
    cluster: &str,
    name: &str,
) -> Result<Option<RestorePoint>> {
    crate::store::sealed::read(
        repo,
        crate::store::sealed::DocKind::RestorePoint,
        &layout::restore_point(cluster, name),
    )
    .await
}

/// Creates a named restore point and records it in the repository; returns its LSN.
pub async fn create_and_record_restore_point(
    repo: &Repository,
    cluster: &str,
    conninfo: &str,
    name: &str,
) -> Result<Lsn> {
    let lsn = create_restore_point(conninfo, name).await?;
    let rp = RestorePoint {
        name: name.to_string(),
        lsn,
        created_at: Timestamp::now(),
    };
    let key = layout::restore_point(cluster, name);
    let body =
        crate::store::sealed::seal(repo, crate::store::sealed::DocKind::RestorePoint, &key, &rp);
    // Names can be reused in PostgreSQL; the first record wins here and later ones are only in WAL.
    repo.storage().put_create(&key, body).await?;
    Ok(lsn)
}

/// Creates a named restore point; returns its LSN.
pub async fn create_restore_point(conninfo: &str, name: &str) -> Result<Lsn> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::Config(format!(
            "restore point name {name:?}: use 1 to 63 characters"
        )));
    }
    let session = connect(conninfo).await?;
    let lsn: String = session
        .client
        .query_one("select pg_create_restore_point($1)::text", &[&name])
        .await
        .map_err(pg_err(
            "pg_create_restore_point (grant EXECUTE on it to the backup role)",
        ))?
        .get(0);
    lsn.parse().map_err(|e| Error::InvalidInput(format!("{e}")))
}
