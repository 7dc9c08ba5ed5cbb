//! Leases in the repository: who is running a backup, so GC and a second backup know.
//!
//! A lease is a small object `leases/backup-<cluster>-<id>` holding the host, process id and
//! start time; its holder rewrites it every [`HEARTBEAT`]. A lease is live while its heartbeat
//! is fresh (younger than [`EXPIRY`]) and, when it was taken on this host, while its process
//! exists: a holder killed with SIGKILL stops holding anything at once on its own host, and
//! within [`EXPIRY`] everywhere else. Leases never stop archive-push.

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
    /// Cluster.
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

fn key(cluster: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("leases/backup-{cluster}-{id}"))
}

/// Live backup leases (of every cluster).
pub async fn live(repo: &Repository) -> Result<Vec<LiveLease>> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let me = hostname();
    let mut out = Vec::new();
    for o in repo.storage().list("leases/").await? {
        let Some(heartbeat) = o.modified else {
            continue;
        };
        if now - heartbeat > EXPIRY.as_secs() as i64 {
            continue;
        }
        let Ok(raw) = repo.storage().get(&o.key).await else {
            continue;
        };
        let Ok(body) = serde_json::from_slice::<LeaseBody>(&raw) else {
            continue;
        };
        if body.host == me && !process_alive(body.pid) {
            continue; // its holder died on this host
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
            let started = time::OffsetDateTime::from_unix_timestamp(h.body.started)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            return Err(Error::Conflict(format!(
                "another backup of cluster {cluster:?} is running ({} on host {}, pid {}, started {started}); \
                 not starting a second one. Wait for it, or set backup.lease_wait to wait automatically",
                h.body.backup_id, h.body.host, h.body.pid
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body = LeaseBody {
        cluster: cluster.into(),
        backup_id: backup_id.into(),
        host: hostname(),
        pid: std::process::id(),
        started: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let raw = Bytes::from(serde_json::to_vec(&body).expect("lease serialises"));
    let k = key(cluster, backup_id);
    let mut version = repo.storage().put_swap(&k, raw.clone(), None).await?;
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
    Ok(Lease {
        repo: repo.clone(),
        key: k,
        heartbeat,
    })
}

impl Lease {
    /// Stops the heartbeat and removes the lease.
    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self.repo.storage().delete(&self.key).await;
    }
}
