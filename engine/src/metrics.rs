//! What a metrics scrape reads: the status objects (see [`crate::store::status`]) and, where
//! pgcairn can reach PostgreSQL or its data directory, the archiver's view. The binary turns
//! a [`Snapshot`] into the Prometheus text format.
//!
//! A scrape costs one LIST of `status/cluster/`, one GET per cluster and one GET of
//! `status/repository`, never the mark `info` makes. Anything that cannot be read is an
//! error, so the scrape reports the repository as down instead of exporting zeros.

use std::path::Path;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::store::status::{self, ClusterStatus, RepositoryStatus};
use crate::types::{Lsn, WalFileName};

/// Everything the repository says, for one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per cluster, sorted by name.
    pub clusters: Vec<ClusterStatus>,
    /// Space after the last gc.
    pub repository: Option<RepositoryStatus>,
}

/// Reads every status object.
pub async fn snapshot(repo: &Repository) -> Result<Snapshot> {
    // A vanished repository lists as empty: its config must still be there.
    repo.storage()
        .head(&crate::repo::layout::config())
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::NotFound { .. } => Error::corrupt(
                crate::repo::layout::CONFIG.to_string(),
                "the repository config is gone: the repository was deleted or moved, or repo.url points elsewhere",
            ),
            e => e.into(),
        })?;
    let mut clusters = Vec::new();
    for name in status::clusters(repo).await? {
        if let Some(s) = status::read(repo, &name).await? {
            clusters.push(s);
        }
    }
    Ok(Snapshot {
        clusters,
        repository: status::read_repository(repo).await?,
    })
}

/// What PostgreSQL's `pg_stat_archiver` and WAL position say.
#[derive(Debug, Clone, Default)]
pub struct ArchiverStats {
    /// Segments archived since the statistics were reset.
    pub archived_count: u64,
    /// Failed `archive_command` calls since the statistics were reset.
    pub failed_count: u64,
    /// Unix time of the last failure.
    pub last_failed_time: Option<f64>,
    /// Unix time of the last success.
    pub last_archived_time: Option<f64>,
    /// Bytes from the end of the last archived segment to the current WAL position
    /// (`None` on a standby, or before anything was archived).
    pub lag_bytes: Option<u64>,
    /// The server is a standby.
    pub in_recovery: bool,
}

/// Queries the archiver's statistics over `conninfo`.
pub async fn archiver_stats(conninfo: &str) -> Result<ArchiverStats> {
    let client = crate::pg::conninfo::connect(conninfo).await?;
    let row = client
        .query_one(
            "select a.archived_count, a.failed_count, \
                    extract(epoch from a.last_failed_time)::float8, \
                    extract(epoch from a.last_archived_time)::float8, \
                    a.last_archived_wal, pg_is_in_recovery(), \
                    case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end, \
                    (select setting::bigint from pg_settings where name = 'wal_segment_size') \
             from pg_stat_archiver a",
            &[],
        )
        .await
        .map_err(|e| Error::InvalidInput(format!("reading pg_stat_archiver: {e}")))?;
    let last_wal: Option<String> = row.get(4);
    let current: Option<String> = row.get(6);
    let seg_size = row.get::<_, i64>(7) as u64;
    // The end of the segment named by last_archived_wal (a history or backup history file
    // names no segment of its own; `.backup` files start with their segment's name).
    let archived_end = last_wal.as_deref().and_then(|w| {
        let name: WalFileName = w.get(..24)?.parse().ok()?;
        let seg = name.segment()?.absolute(seg_size);
        Some((seg + 1) * seg_size)
    });
    let lag_bytes = match (current.as_deref().map(str::parse::<Lsn>), archived_end) {
        (Some(Ok(cur)), Some(end)) => Some(cur.0.saturating_sub(end)),
        _ => None,
    };
    Ok(ArchiverStats {
        archived_count: row.get::<_, i64>(0) as u64,
        failed_count: row.get::<_, i64>(1) as u64,
        last_failed_time: row.get(2),
        last_archived_time: row.get(3),
        lag_bytes,
        in_recovery: row.get(5),
    })
}

/// The local archive queue: `.ready` files in `pg_wal` and, with the asynchronous pusher,
/// those it has not acknowledged and the segments it dropped.
#[derive(Debug, Clone, Default)]
pub struct LocalQueue {
    /// `.ready` files: WAL PostgreSQL still waits to see archived.
    pub ready: u64,
    /// With `archive.async`: `.ready` files without an acknowledgement.
    pub async_queued: Option<u64>,
    /// With `archive.async`: segments the pusher acknowledged as dropped, ever.
    pub async_dropped: Option<u64>,
}

/// Reads the local queue of `cluster` from `pgdata` (and `spool_dir` with the async pusher).
pub fn local_queue(pgdata: &Path, cluster: &str, spool_dir: Option<&Path>) -> Result<LocalQueue> {
    let pg_wal = pgdata.join("pg_wal");
    let ready = crate::archive::spool::ready_files(&pg_wal)?.len() as u64;
    let (async_queued, async_dropped) = match spool_dir {
        Some(dir) => {
            let spool = crate::archive::spool::Spool::at(dir, cluster);
            (Some(spool.queued(&pg_wal)?), Some(spool.dropped_total()))
        }
        None => (None, None),
    };
    Ok(LocalQueue {
        ready,
        async_queued,
        async_dropped,
    })
}
