//! `pgbunker expire`: apply the retention policy to backups and WAL.
//!
//! Order: decide (see [`crate::retention`]); delete the manifests of expired backups (the
//! manifest is a backup's commit record: once it is gone the backup is gone, and since every
//! backup is self-contained no other backup is affected); then delete WAL no retained backup
//! needs: segments numbered below the oldest retained backup's start segment, on every
//! timeline (history files are kept). For each WAL file the pointer goes first, then its data,
//! so a crash in between leaves garbage, never a pointer to missing data. Packs and index
//! entries only expired backups used are garbage for `gc`.

use serde::Serialize;

use crate::backup::manifest;
use crate::error::Result;
use crate::repo::{layout, Repository};
use crate::retention::{decide, Candidate, Decision, Policy};
use crate::types::WalFileName;

/// What expire decided (and, unless a dry run, did).
#[derive(Debug, Clone, Serialize)]
pub struct ExpireReport {
    /// Per backup, oldest first.
    pub backups: Vec<Decision>,
    /// WAL files removed (or to remove).
    pub wal_files: usize,
    /// First WAL segment that stays, if any WAL goes.
    pub wal_kept_from: Option<String>,
    /// True for `--dry-run`.
    pub dry_run: bool,
}

/// Whether a backup is pinned.
pub async fn is_pinned(repo: &Repository, cluster: &str, id: &str) -> Result<bool> {
    match repo.storage().head(&layout::pin(cluster, id)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Pins or unpins a backup (it must exist).
pub async fn set_pin(repo: &Repository, cluster: &str, id: &str, pinned: bool) -> Result<()> {
    manifest::load(repo, cluster, id).await?;
    if pinned {
        repo.storage()
            .put_create(
                &layout::pin(cluster, id),
                bytes::Bytes::from_static(b"pinned\n"),
            )
            .await?;
    } else {
        repo.storage().delete(&layout::pin(cluster, id)).await?;
    }
    Ok(())
}

/// Applies `policy` to `cluster`.
pub async fn expire(
    repo: &Repository,
    cluster: &str,
    policy: &Policy,
    dry_run: bool,
) -> Result<ExpireReport> {
    let mut candidates = Vec::new();
    let mut starts = Vec::new();
    let seg_size = crate::archive::push::read_cluster_record(repo, cluster)
        .await?
        .map(|r| r.wal_segment_size)
        .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
    for id in manifest::list_ids(repo, cluster).await? {
        let m = manifest::load(repo, cluster, &id).await?;
        let stop_time = time::OffsetDateTime::parse(
            &m.stop_time,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        candidates.push(Candidate {
            pinned: is_pinned(repo, cluster, &id).await?,
            id: id.clone(),
            backup_type: m.backup_type,
            stop_time,
        });
        starts.push((id, m.start_lsn.segment_no(seg_size)));
    }
    let decisions = decide(&candidates, policy, time::OffsetDateTime::now_utc());
    let oldest_kept_start = decisions
        .iter()
        .filter(|d| d.keep)
        .filter_map(|d| starts.iter().find(|(id, _)| *id == d.id).map(|(_, s)| *s))
        .min();
    // WAL below the oldest retained start: only once there is a retained backup.
    let mut wal: Vec<WalFileName> = Vec::new();
    if let Some(keep_from) = oldest_kept_start {
        for o in repo
            .storage()
            .list(&layout::wal_pointer_prefix(cluster))
            .await?
        {
            if let Some((_, name)) = layout::parse_wal_pointer(cluster, o.key.as_str()) {
                let old = name
                    .segment()
                    .is_some_and(|s| s.absolute(seg_size) < keep_from);
                if old && !matches!(name, WalFileName::History { .. }) {
                    wal.push(name);
                }
            }
        }
    }
    let wal_kept_from = oldest_kept_start.filter(|_| !wal.is_empty()).map(|s| {
        let tli = wal
            .iter()
            .map(|n| n.timeline())
            .max()
            .unwrap_or(crate::types::TimelineId(1));
        WalFileName::Segment {
            tli,
            segno: crate::types::SegmentNo::from_absolute(s, seg_size),
        }
        .to_string()
    });
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            repo.storage()
                .delete(&layout::backup_manifest(cluster, &d.id))
                .await?;
        }
        if !wal.is_empty() {
            let data = repo
                .storage()
                .list(&layout::wal_data_prefix(cluster))
                .await?;
            for name in &wal {
                repo.storage()
                    .delete(&layout::wal_pointer(cluster, name))
                    .await?;
                let prefix = format!(
                    "{}{}/{name}.",
                    layout::wal_data_prefix(cluster),
                    name.timeline()
                );
                for o in data.iter().filter(|o| o.key.as_str().starts_with(&prefix)) {
                    repo.storage().delete(&o.key).await?;
                }
            }
        }
    }
    Ok(ExpireReport {
        backups: decisions,
        wal_files: wal.len(),
        wal_kept_from,
        dry_run,
    })
}
