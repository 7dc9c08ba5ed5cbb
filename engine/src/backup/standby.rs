//! What differs when a backup runs on a standby.
//!
//! Operators back up from a replica to keep the load off the primary, and must be able to
//! while the primary is down. PostgreSQL (13 to 18) runs a non-exclusive backup on a standby
//! (`pg_backup_start`/`pg_backup_stop`), with three differences pgcairn has to honour:
//!
//! - Positions: `pg_walfile_name()` and `pg_switch_wal()` are refused during recovery. The
//!   start timeline is read from the `START TIMELINE:` line of the `backup_label` the server
//!   returns, the stop timeline from `pg_control_recovery()` (`pg_backup_stop` on a standby
//!   returns the minimum recovery point and its timeline is `minRecoveryPointTLI`).
//! - The end of the backup: a standby writes no end-of-backup WAL record. A restore of it
//!   (`BACKUP FROM: standby` in the label) takes the minimum recovery point in the copied
//!   `global/pg_control` as the point where it is consistent, so that file must be copied
//!   after every other file (the backup holds it back for everyone: harmless on a primary).
//! - The WAL to the stop position: it is archived by the primary's `archive_command` (or by
//!   the standby's own with `archive_mode = always`), but the segment holding the stop
//!   position is only archived once it is complete, which never happens while the primary is
//!   down. After `backup.standby_wal_wait` the backup copies what is still not archived from
//!   the standby's `pg_wal` into the backup itself, as `pg_basebackup -X fetch` does, checked
//!   page header first (system, timeline, segment). Those copies are restored into `pg_wal/`;
//!   recovery reads them there when `restore_command` finds nothing. They never go into the
//!   WAL archive: the one under the segment's name must be the completed segment, and a
//!   partial copy there would make the real one a conflict.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::pg::datadir::{Entry, EntryKind};
use crate::pg::wal_header::{read_head, LongPageHeader};
use crate::repo::Repository;
use crate::types::{Lsn, SegmentNo, TimelineId, WalFileName};

/// The timeline in a `backup_label` (`START TIMELINE: 1`, PostgreSQL 11 and later).
pub fn label_start_timeline(label: &str) -> Result<u32> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "the backup_label PostgreSQL returned has no START TIMELINE line: {label:?}"
            ))
        })
}

/// The timeline of the standby's minimum recovery point, read just after `pg_backup_stop`
/// (which returned that point as the stop position).
pub async fn stop_timeline(client: &tokio_postgres::Client) -> Result<u32> {
    let row = client
        .query_one(
            "select min_recovery_end_timeline from pg_control_recovery()",
            &[],
        )
        .await
        .map_err(super::pg_err(
            "pg_control_recovery (grant EXECUTE on it to the backup role)",
        ))?;
    let tli: i32 = row.get(0);
    u32::try_from(tli)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| Error::InvalidInput(format!("pg_control_recovery() timeline {tli}")))
}

/// The data-directory entry for segment `name` in the standby's `pg_wal`, proven to be that
/// segment of this system (long page header, full size); else why it is not usable. A
/// complete segment may be gone (a restartpoint during the backup removed or recycled it):
/// then it waits for it in the archive instead, where it is on its way.
pub fn pg_wal_entry(
    pgdata: &Path,
    name: &WalFileName,
    system_identifier: u64,
    seg_size: u64,
) -> std::result::Result<Entry, String> {
    use std::os::unix::fs::MetadataExt;
    let rel = format!("pg_wal/{name}");
    let abs = pgdata.join(&rel);
    let meta = std::fs::metadata(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
    if meta.len() != seg_size {
        return Err(format!(
            "{} is {} bytes, not {seg_size}",
            abs.display(),
            meta.len()
        ));
    }
    let head = read_head(&abs).map_err(|e| format!("{}: {e}", abs.display()))?;
    let header = LongPageHeader::parse(&head).map_err(|e| format!("{}: {e}", abs.display()))?;
    header
        .check_against(name, seg_size as usize)
        .map_err(|e| format!("{}: {e}", abs.display()))?;
    if header.system_identifier != system_identifier {
        return Err(format!(
            "{}: its page header is of database system {}, this standby is system {system_identifier}",
            abs.display(),
            header.system_identifier
        ));
    }
    Ok(Entry {
        path: rel,
        abs,
        kind: EntryKind::File {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// What `pgcairn check` found on a standby, where `pg_switch_wal()` is refused.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StandbyCheck {
    /// What was checked, and found in order.
    pub checked: Vec<String>,
    /// Settings that work today but fail after a failover or when replication breaks.
    pub warnings: Vec<String>,
    /// What only the primary can tell.
    pub primary_only: Vec<String>,
}

fn calls_pgcairn(command: &str, verb: &str) -> bool {
    command.contains("pgcairn") && command.contains(verb)
}

/// Checks a standby: its `restore_command`, its WAL receiver, its own archiver (with
/// `archive_mode = always`), and that a segment it has replayed is in the repository (which
/// proves some member archives into this repository and cluster). A failing own archiver, or
/// replayed WAL that never reaches the repository within `timeout`, is an error.
pub async fn check_standby(
    repo: &Repository,
    cluster: &str,
    client: &tokio_postgres::Client,
    archive_mode: &str,
    timeout: Duration,
) -> Result<StandbyCheck> {
    let mut c = StandbyCheck {
        checked: vec![format!(
            "archive_mode = {archive_mode} and archive_command calls pgcairn archive-push: \
             archiving carries on if this standby is promoted"
        )],
        ..Default::default()
    };
    let row = client
        .query_one(
            "select current_setting('restore_command'), \
             (select setting::bigint from pg_settings where name = 'wal_segment_size')",
            &[],
        )
        .await
        .map_err(super::pg_err("reading restore_command"))?;
    let (restore_command, seg_size): (String, i64) = (row.get(0), row.get(1));
    let seg_size = seg_size as u64;
    if calls_pgcairn(&restore_command, "archive-get") {
        c.checked.push(
            "restore_command calls pgcairn archive-get: this standby catches up from the archive \
             when it falls behind"
                .into(),
        );
    } else {
        c.warnings.push(format!(
            "restore_command = {restore_command:?} does not call pgcairn archive-get: a standby that falls \
             behind what the primary keeps in pg_wal cannot catch up; set \
             restore_command = 'pgcairn archive-get %f %p'"
        ));
    }
    let receiver = client
        .query_opt(
            "select status, coalesce(sender_host, ''), coalesce(sender_port, 0), received_tli \
             from pg_stat_wal_receiver",
            &[],
        )
        .await
        .map_err(super::pg_err("reading pg_stat_wal_receiver"))?;
    let mut tli: Option<u32> = None;
    match receiver {
        Some(r) if r.get::<_, String>(0) == "streaming" => {
            let (host, port, t): (String, i32, i32) = (r.get(1), r.get(2), r.get(3));
            tli = u32::try_from(t).ok().filter(|t| *t > 0);
            c.checked.push(format!(
                "streaming from {host}:{port} on timeline {t}"
            ));
        }
        Some(r) => c.warnings.push(format!(
            "the WAL receiver is {:?}, not streaming: this standby replays only what the archive holds",
            r.get::<_, String>(0)
        )),
        None => c.warnings.push(
            "no WAL receiver (no primary_conninfo, or the primary is unreachable): this standby \
             replays only what the archive holds"
                .into(),
        ),
    }
    if archive_mode == "always" {
        let r = client
            .query_one(
                "select coalesce(last_archived_wal, ''), coalesce(last_failed_wal, ''), \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
                 from pg_stat_archiver",
                &[],
            )
            .await
            .map_err(super::pg_err("reading pg_stat_archiver"))?;
        let (archived, failed, failing): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        if failing {
            return Err(Error::Config(format!(
                "this standby's archive_command fails (last failed on {failed}, after its last success \
                 {archived:?}): see its PostgreSQL log"
            )));
        }
        match archived.parse::<WalFileName>() {
            Ok(name) => {
                if !super::is_archived(repo, cluster, &name).await? {
                    return Err(Error::Config(format!(
                        "this standby archived {name} (pg_stat_archiver), but cluster {cluster:?} of {} \
                         does not hold it: its archive_command writes to another repository or cluster",
                        repo.storage().describe()
                    )));
                }
                c.checked.push(format!(
                    "this standby archives too (archive_mode = always): {name}, its last, is in the repository"
                ));
            }
            Err(_) => c.checked.push(
                "this standby archives too (archive_mode = always), and has archived nothing yet"
                    .into(),
            ),
        }
    } else {
        c.checked.push(format!(
            "archive_mode = {archive_mode}: this standby archives nothing until it is promoted; \
             the primary's archive_command does (archive_mode = always makes every member archive)"
        ));
    }
    let replay: Option<String> = client
        .query_one("select pg_last_wal_replay_lsn()::text", &[])
        .await
        .map_err(super::pg_err("pg_last_wal_replay_lsn"))?
        .get(0);
    let replay: Option<Lsn> = replay.and_then(|r| r.parse().ok());
    let tli = match tli {
        Some(t) => t,
        None => {
            let t: i32 = client
                .query_one("select timeline_id from pg_control_checkpoint()", &[])
                .await
                .map_err(super::pg_err(
                    "pg_control_checkpoint (grant EXECUTE on it to the backup role)",
                ))?
                .get(0);
            t as u32
        }
    };
    match replay.map(|l| l.segment_no(seg_size)) {
        Some(n) if n > 1 => {
            // The last complete segment it replayed, on this timeline or (just after a
            // switch) an ancestor.
            let candidates: Vec<WalFileName> = (1..=tli)
                .rev()
                .map(|t| WalFileName::Segment {
                    tli: TimelineId(t),
                    segno: SegmentNo::from_absolute(n - 1, seg_size),
                })
                .collect();
            let started = Instant::now();
            'wait: loop {
                for name in &candidates {
                    if super::is_archived(repo, cluster, name).await? {
                        c.checked.push(format!(
                            "{name}, which this standby has replayed, is in the repository{}",
                            match started.elapsed().as_secs() {
                                0 => String::new(),
                                s => format!(" (after {s}s)"),
                            }
                        ));
                        break 'wait;
                    }
                }
                if started.elapsed() > timeout {
                    return Err(Error::Timeout(format!(
                        "{}, which this standby has replayed, is not in cluster {cluster:?} of {} after {}s: \
                         no member archives into this repository and cluster (check archive_command on \
                         the primary, and run pgcairn check there)",
                        candidates[0],
                        repo.storage().describe(),
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        _ => c.warnings.push(
            "this standby has not replayed a complete segment yet: nothing to look for in the repository".into(),
        ),
    }
    c.primary_only.push(
        "a WAL switch (pg_switch_wal() is refused during recovery), which proves the segment being \
         written now reaches the repository: run pgcairn check on the primary"
            .into(),
    );
    c.primary_only.push(
        "whether the primary's own archive_command succeeds right now (its pg_stat_archiver)"
            .into(),
    );
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_timeline_comes_from_the_label() {
        let label = "START WAL LOCATION: 0/5000028 (file 000000020000000000000005)\n\
                     CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\nBACKUP FROM: standby\n\
                     START TIME: 2026-12-02 18:00:00 UTC\nLABEL: x\nSTART TIMELINE: 2\n";
        assert_eq!(label_start_timeline(label).unwrap(), 2);
        let e = label_start_timeline("LABEL: x\n").unwrap_err().to_string();
        assert!(e.contains("START TIMELINE"), "{e}");
    }

    #[test]
    fn a_segment_missing_from_pg_wal_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let e = pg_wal_entry(dir.path(), &name, 1, 16 << 20).unwrap_err();
        assert!(e.contains("pg_wal/000000010000000000000003"), "{e}");
        // A file of the wrong size (a segment still being created) is not taken either.
        std::fs::write(dir.path().join("pg_wal").join(name.to_string()), b"short").unwrap();
        let e = pg_wal_entry(dir.path(), &name, 1, 16 << 20).unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
        // Nor another segment's content under this name.
        let other = crate::pg::wal_header::tests::fake_segment(1, 1, 4 << 24, 16 << 20, 16 << 20);
        std::fs::write(dir.path().join("pg_wal").join(name.to_string()), &other).unwrap();
        assert!(pg_wal_entry(dir.path(), &name, 1, 16 << 20).is_err());
        let right = crate::pg::wal_header::tests::fake_segment(1, 1, 3 << 24, 16 << 20, 16 << 20);
        std::fs::write(dir.path().join("pg_wal").join(name.to_string()), &right).unwrap();
        let e = pg_wal_entry(dir.path(), &name, 1, 16 << 20).unwrap();
        assert_eq!(e.path, "pg_wal/000000010000000000000003");
        let e = pg_wal_entry(dir.path(), &name, 2, 16 << 20).unwrap_err();
        assert!(e.contains("database system 1"), "{e}");
    }
}
