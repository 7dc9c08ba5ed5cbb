//! Leases in the repository: who is running a backup, `expire` or `gc`, so that several hosts
//! sharing one repository (object storage, no lock server) coordinate.
//!
//! A lease is a small object under `leases/` holding its kind, the host, process id and start
//! time; its holder rewrites it every [`HEARTBEAT`]. A lease is live while its heartbeat is
//! fresh (younger than [`EXPIRY`], by the storage's modification time) and, when it was taken
//! on this host, while its process exists: a holder killed with SIGKILL stops holding anything
//! at once on its own host, and within [`EXPIRY`] everywhere else.
//!
//! - `leases/backup-<cluster>-<id>`: one per running backup. GC reads them (a backup that
//!   started before a pack was condemned may depend on it); a second backup of the same
//!   cluster waits or fails.
//! - `leases/gc` and `leases/expire-<cluster>`: exclusive, taken by compare-and-swap (create if
//!   absent, or replace a dead holder's object at the version read), so two runs never overlap.
//!
//! Leases never stop archive-push: it takes none and checks none.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::storage::ObjectKey;

/// How often a holder refreshes its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// A lease not refreshed for this long is dead.
pub const EXPIRY: Duration = Duration::from_secs(90);

/// What a lease says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseBody {
    /// `backup`, `gc` or `expire`.
    #[serde(default = "backup_kind")]
    pub kind: String,
    /// Cluster (empty for gc).
    pub cluster: String,
    /// Backup id.
    pub backup_id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Start, unix seconds.
    pub started: i64,
}

/// A live lease found in the repository.
#[derive(Debug, Clone)]
pub struct LiveLease {
    /// Its contents.
    pub body: LeaseBody,
    /// Last heartbeat, unix seconds.
    pub heartbeat: i64,
}

fn backup_kind() -> String {
    "backup".into()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// True if the process exists and is not a zombie (an unreaped dead process still has a
/// `/proc` entry).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

/// False when the holder ran on this host and its process is gone.
fn holder_alive(body: &LeaseBody, me: &str) -> bool {
    body.host != me || process_alive(body.pid)
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn key(cluster: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("leases/backup-{cluster}-{id}"))
}

/// Live backup leases (of every cluster).
pub async fn live(repo: &Repository) -> Result<Vec<LiveLease>> {
    Ok(live_any(repo)
        .await?
        .into_iter()
        .filter(|l| l.body.kind == "backup")
        .collect())
}

/// Live leases of every kind.
pub async fn live_any(repo: &Repository) -> Result<Vec<LiveLease>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let me = hostname();
    let mut out = Vec::new();
    for o in repo.storage().list("leases/").await? {
        // A backend that reports no modification time cannot age a lease: treat it as fresh
        // (a lease wrongly thought live only delays gc; one wrongly thought dead is unsafe).
        let heartbeat = o.modified.unwrap_or(now);
        if now - heartbeat > EXPIRY.as_secs() as i64 {
            continue;
        }
        let Ok(raw) = repo.storage().get(&o.key).await else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<LeaseBody>(&raw) else {
            continue;
        };
        if !holder_alive(&body, &me) {
            continue;
        }
        out.push(LiveLease { body, heartbeat });
    }
    Ok(out)
}

/// A held lease; [`Lease::release`] removes it, the heartbeat task keeps it fresh.
#[derive(Debug)]
pub struct Lease {
    repo: Repository,
    key: ObjectKey,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// Takes the backup lease of `cluster`, waiting up to `wait` for another backup of the same
/// cluster to finish; fails with who holds it.
pub async fn acquire_backup(
    repo: &Repository,
    cluster: &str,
    backup_id: &str,
    wait: Duration,
) -> Result<Lease> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let holders: Vec<LiveLease> = live(repo)
            .await?
            .into_iter()
            .filter(|l| l.body.cluster == cluster)
            .collect();
        let Some(h) = holders.first() else { break };
        if std::time::Instant::now() >= deadline {
            let started = rfc3339(h.body.started);
            return Err(Error::Conflict(format!(
                "another backup of cluster {cluster:?} is running ({} on host {}, pid {}, started {started}); \
                 not starting a second one. Wait for it, or set backup.lease_wait to wait automatically",
                h.body.backup_id, h.body.host, h.body.pid
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body = LeaseBody {
        kind: backup_kind(),
        cluster: cluster.into(),
        backup_id: backup_id.into(),
        host: hostname(),
        pid: std::process::id(),
        started: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let raw = Bytes::from(serde_json::to_vec(&body).expect("lease serialises"));
    let k = key(cluster, backup_id);
    let version = repo.storage().put_swap(&k, raw.clone(), None).await?;
    Ok(Lease::hold(repo, k, raw, version))
}

/// Takes the exclusive lease `name` (`gc`, `expire-<cluster>`) for `what`, waiting up to
/// `wait` for a live holder; a dead holder's lease is taken over by compare-and-swap.
pub async fn acquire_exclusive(
    repo: &Repository,
    name: &str,
    cluster: &str,
    wait: Duration,
) -> Result<Lease> {
    let k = ObjectKey::new(format!("leases/{name}"));
    let body = LeaseBody {
        kind: name.split('-').next().unwrap_or(name).to_string(),
        cluster: cluster.into(),
        backup_id: String::new(),
        host: hostname(),
        pid: std::process::id(),
        started: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let raw = Bytes::from(serde_json::to_vec(&body).expect("lease serialises"));
    let deadline = std::time::Instant::now() + wait;
    let me = hostname();
    loop {
        let current = match repo.storage().get_versioned(&k).await {
            Ok((bytes, version)) => Some((bytes, version)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let holder = match &current {
            None => None,
            Some((bytes, _)) => {
                let fresh = repo
                    .storage()
                    .list("leases/")
                    .await?
                    .into_iter()
                    .find(|o| o.key == k)
                    .is_some_and(|o| {
                        o.modified.is_none_or(|m| {
                            time::OffsetDateTime::now_utc().unix_timestamp() - m
                                <= EXPIRY.as_secs() as i64
                        })
                    });
                serde_json::from_slice::<LeaseBody>(bytes)
                    .ok()
                    .filter(|b| fresh && holder_alive(b, &me))
            }
        };
        if let Some(h) = holder {
            if std::time::Instant::now() >= deadline {
                return Err(Error::Conflict(format!(
                    "another {name} is running (host {}, pid {}, started {}); not starting a second one. \
                     Wait for it to finish (a holder that died is forgotten within {}s)",
                    h.host,
                    h.pid,
                    rfc3339(h.started),
                    EXPIRY.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let expected = current.as_ref().map(|(_, v)| v);
        match repo.storage().put_swap(&k, raw.clone(), expected).await {
            Ok(version) => return Ok(Lease::hold(repo, k, raw, version)),
            // Someone else took it between our read and our write: look again.
            Err(crate::storage::StorageError::Precondition { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `work` holding the exclusive lease `name` (see [`acquire_exclusive`]), or without any
/// lease when `dry_run` (a run that changes nothing never keeps another out).
pub async fn exclusive<T>(
    repo: &Repository,
    name: &str,
    cluster: &str,
    wait: Duration,
    dry_run: bool,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    if dry_run {
        return work.await;
    }
    let lease = acquire_exclusive(repo, name, cluster, wait).await?;
    let result = work.await;
    lease.release().await;
    result
}

impl Lease {
    /// Holds a lease just written at `version`, refreshing it every [`HEARTBEAT`].
    fn hold(
        repo: &Repository,
        k: ObjectKey,
        raw: Bytes,
        mut version: crate::storage::ObjectVersion,
    ) -> Lease {
        let (r, k2) = (repo.clone(), k.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                match r.storage().put_swap(&k2, raw.clone(), Some(&version)).await {
                    Ok(v) => version = v,
                    Err(e) => tracing::warn!("lease heartbeat failed: {e}"),
                }
            }
        });
        Lease {
            repo: repo.clone(),
            key: k,
            heartbeat,
        }
    }

    /// Stops the heartbeat and removes the lease.
    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self.repo.storage().delete(&self.key).await;
    }
}
