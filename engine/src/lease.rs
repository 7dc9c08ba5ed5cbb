//! Leases in the repository: who is running a backup, `expire` or `gc`, so that several hosts
//! sharing one repository (object storage, no lock server) coordinate.
//!
//! A lease is a small object under `leases/` holding its kind, the host, process id and start
//! time, and who exactly holds it: the kernel's boot id, the holder's pid namespace and its
//! process start time (field 22 of `/proc/<pid>/stat`); its holder rewrites it every
//! [`HEARTBEAT`]. A lease is live while its heartbeat is fresh (younger than [`EXPIRY`], by
//! the storage's modification time) and, when it was taken in this very pid namespace of this
//! very boot, while its process exists with the same start time: a holder killed with SIGKILL
//! stops holding anything at once where its pid can be checked, and within [`EXPIRY`]
//! everywhere else.
//!
//! The host name alone does not identify where a pid means something: containers on one host
//! (or several hosts given the same name) have their own pid namespaces, and judging a live
//! holder in another namespace dead because its pid does not exist here would let gc sweep
//! packs its backup needs. So a lease is judged dead locally only when boot id and pid
//! namespace both match ours and its pid is gone (or is now another process: the start time
//! differs); otherwise only its expiry time counts. Leases written before these fields
//! existed are judged by their expiry time only.
//!
//! A lease is sealed for its name like the other catalog documents ([`crate::store::sealed`],
//! kind `lease`): one forged without the repository key, or copied from another lease's name
//! or another repository, is an integrity error naming the object. An older copy of the same
//! lease put back under its own name cannot be told from a live one by its content; it only
//! looks live until [`EXPIRY`] (or, on its holder's host, until its pid is checked), so it
//! can delay gc, expire or a backup, never make gc sweep what a backup needs.
//!
//! Leases fail closed: a lease that cannot be read (a read error other than not-found,
//! content that is not a lease pgcairn sealed for that name) might belong to a running backup,
//! so it stops gc, expire and backup with an error naming the object, whatever its age. Clearing it
//! is the operator's call: make sure no backup, gc or expire runs on any host, then delete the
//! object.
//!
//! - `leases/backup-<cluster>-<id>`: one per running backup. GC reads them (a backup that
//!   that read the gc state before a pack was condemned may depend on it); a second backup of the same
//!   cluster waits or fails.
//! - `leases/gc` and `leases/expire-<cluster>`: exclusive, taken by compare-and-swap (create if
//!   absent, or replace a dead holder's object at the version read), so two runs never overlap.
//!   The holder says what for ([`Purpose`]): `expire-<cluster>` is taken by `expire`, but also
//!   for a moment by `pin` and a recovery hold, and for a whole run by a re-encryption, and
//!   only `expire` removes WAL, which is what a running backup waits on
//!   ([`crate::backup::wal_guard`]).
//!
//! Leases never stop archive-push: it takes none and checks none.
//!
//! # A holder knows whether its lease held
//!
//! A lease protects its holder only while others see it fresh. A holder whose refreshes
//! fail (an unreachable store, a stalled process) for longer than [`EXPIRY`] is judged dead
//! by everyone else: gc on another host may then sweep packs its backup uses, and a second
//! backup or gc may start. The holder tracks this itself ([`Lease::ensure_held`]): the time
//! each refresh that landed was sent, and whether any stretch between two of them (or since
//! the last one) exceeded [`LAPSE_AFTER`], a margin below [`EXPIRY`] for clocks and
//! latency. A backup checks it before and after writing its manifest, and fails instead of
//! recording a backup that may reference swept blocks.
//!
//! # Two backups of one cluster starting together
//!
//! Checking for a running backup and then creating one's own lease are two requests; two
//! backups starting together could both see none and both start. So a backup creates its
//! lease and then looks again: another live backup lease of its cluster makes it remove its
//! own and wait (a random pause, so two waiting backups do not collide again) or fail.
//! Whichever of two looks later sees the other, so at most one goes on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::ObjectKey;
use crate::store::sealed::{self, DocKind};
use crate::store::Timestamp;

/// How often a holder refreshes its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// A lease not refreshed for this long is dead.
pub const EXPIRY: Duration = Duration::from_secs(90);
/// A holder that went this long without a refresh landing no longer trusts its lease: others
/// may have judged it dead (a margin below [`EXPIRY`] for clock rates and request latency).
pub const LAPSE_AFTER: Duration = Duration::from_secs(EXPIRY.as_secs() - HEARTBEAT.as_secs());

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
    /// Kernel boot id of the holder's host (`/proc/sys/kernel/random/boot_id`); absent in
    /// leases of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The holder's pid namespace (`readlink /proc/self/ns/pid`, like `pid:[4026531836]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
    /// The holder's process start time, clock ticks after boot (field 22 of `/proc/self/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// A recovery hold's end, unix seconds ([`crate::hold`]): holds outlive their holder
    /// (the restore exits, PostgreSQL's recovery goes on), so they end by time, not heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// A backup's reference backup (incremental and differential), whose blocks it may carry
    /// over without looking them up: gc sweeps nothing while it runs if that manifest is gone
    /// ([`crate::gc`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The generation of `gc/state` a backup read before it loaded the block index: it never
    /// deduplicates against packs condemned in that generation or before. Absent until it has
    /// read it (and in leases of older versions): gc then sweeps nothing while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_seen: Option<u64>,
    /// A running backup's start (the LSN `pg_backup_start` returned), once known: `expire`
    /// keeps the WAL from its segment on while the lease is live. A backup from a standby
    /// starts at the standby's last restartpoint, which may lie below the newest committed
    /// backup's start, where an `expire` on another host would otherwise cut ([`crate::backup`]
    /// explains how the two meet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<u64>,
    /// What an exclusive lease is held for; absent in backup leases and in exclusive leases
    /// of versions before 2026-12-07 (taken then as "may be anything").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
}

/// What the holder of an exclusive lease is doing. Several commands take the same lease to
/// keep out of each other's way, and whoever waits on it may care which one runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// `expire`: removes backups and the WAL below the ones it keeps.
    Expire,
    /// `pin`/`unpin`: rewrites the catalog head for a moment.
    Pin,
    /// A restore or drill taking a recovery hold ([`crate::hold`]).
    Hold,
    /// A re-encryption ([`crate::reencrypt`]): reseals objects in place, removes nothing
    /// under the expire leases (its pack copies are swept by gc's protocol).
    Reencrypt,
    /// `gc`: sweeps unreferenced packs.
    Gc,
    /// Written by a newer version.
    #[serde(other)]
    Other,
}

impl Purpose {
    /// Whether the holder may remove WAL (a purpose this version does not know may).
    pub fn may_remove_wal(self) -> bool {
        matches!(self, Purpose::Expire | Purpose::Other)
    }

    /// For messages: "an expire", "a pin", ...
    pub fn describe(self) -> &'static str {
        match self {
            Purpose::Expire => "an expire",
            Purpose::Pin => "a pin",
            Purpose::Hold => "a restore or drill taking a recovery hold",
            Purpose::Reencrypt => "a key re-encryption",
            Purpose::Gc => "a gc",
            Purpose::Other => "a command of a newer pgcairn",
        }
    }
}

/// For messages: what `holder` of the exclusive lease `name` is doing, as far as its lease
/// says.
pub fn holder_activity(name: &str, holder: &LeaseBody) -> String {
    match holder.purpose {
        Some(p) => p.describe().to_string(),
        None => format!("another {name} or a command of an older pgcairn sharing its lease"),
    }
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

/// Where a pid means something: this boot of this kernel, this pid namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PidScope {
    boot_id: Option<String>,
    pid_ns: Option<String>,
}

impl PidScope {
    fn here() -> Self {
        PidScope {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|p| p.display().to_string()),
        }
    }
}

/// What `/proc` says about a pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    /// No such process, or a zombie (an unreaped dead process still has a `/proc` entry).
    Gone,
    /// Running; its start time in clock ticks after boot, when readable.
    Running(Option<u64>),
}

fn probe(pid: u32) -> Process {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Process::Gone;
    };
    // After "pid (comm) " come fields 3 (state) onwards; the start time is field 22.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return Process::Gone;
    };
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z") | Some("X") | None) {
        return Process::Gone;
    }
    Process::Running(fields.nth(22 - 4).and_then(|f| f.parse().ok()))
}

/// This process's start time (clock ticks after boot).
fn own_start_ticks() -> Option<u64> {
    match probe(std::process::id()) {
        Process::Running(t) => t,
        Process::Gone => None,
    }
}

/// True only when this process can tell for sure that the lease's holder is gone: the lease
/// was taken in our pid namespace during this boot, and its pid no longer exists or now
/// belongs to a process started at another time. Anything else (another host, another
/// container, a reboot, a lease of an older version without these fields) is left to the
/// lease's expiry time.
fn holder_dead_here(body: &LeaseBody, here: &PidScope, probe: impl Fn(u32) -> Process) -> bool {
    let (Some(boot), Some(ns), Some(my_boot), Some(my_ns)) =
        (&body.boot_id, &body.pid_ns, &here.boot_id, &here.pid_ns)
    else {
        return false;
    };
    if boot != my_boot || ns != my_ns {
        return false;
    }
    match probe(body.pid) {
        Process::Gone => true,
        Process::Running(now) => matches!((body.start_ticks, now), (Some(a), Some(b)) if a != b),
    }
}

/// A lease body for this process.
pub(crate) fn my_body(kind: String, cluster: &str, backup_id: &str) -> LeaseBody {
    let here = PidScope::here();
    LeaseBody {
        kind,
        cluster: cluster.into(),
        backup_id: backup_id.into(),
        host: hostname(),
        pid: std::process::id(),
        started: Timestamp::now().unix_seconds(),
        boot_id: here.boot_id,
        pid_ns: here.pid_ns,
        start_ticks: own_start_ticks(),
        until: None,
        reference: None,
        gc_seen: None,
        start_lsn: None,
        purpose: None,
    }
}

/// Reads a lease's bytes, failing closed: anything that is not a lease pgcairn sealed for
/// this very name (see the module docs) is an integrity error naming the object and how to
/// clear it.
fn parse_lease(repo: &Repository, key: &ObjectKey, raw: &[u8]) -> Result<LeaseBody> {
    let refused = |why: String| {
        Error::corrupt(
            key.to_string(),
            format!(
                "not a lease pgcairn wrote under this name ({why}): it was forged, altered, or copied from another \
                 lease or repository. A lease may belong to a running backup, gc or expire, so gc, expire and backup \
                 refuse to go on while it is there. Make sure no pgcairn backup, gc or expire is running against {} \
                 on any host, then delete the object {key} from the repository",
                repo.storage().describe()
            ),
        )
    };
    let body: LeaseBody = sealed::open(repo, DocKind::Lease, key, raw).map_err(|e| match e {
        Error::Corrupt { detail, .. } => refused(detail),
        other => refused(other.to_string()),
    })?;
    let kind_ok = matches!(body.kind.as_str(), "backup" | "gc" | "expire");
    if !kind_ok {
        return Err(refused(format!("unknown kind {:?}", body.kind)));
    }
    if body.pid == 0 || body.host.is_empty() {
        return Err(refused("no holder (empty host or pid 0)".into()));
    }
    if body.kind == "backup" && (body.cluster.is_empty() || body.backup_id.is_empty()) {
        return Err(refused(
            "a backup lease without cluster or backup id".into(),
        ));
    }
    Ok(body)
}

/// Backup ids of `cluster` that have a lease object, live or left by a killed backup: a new
/// backup must not take one of them as its id (its lease could not be created).
pub async fn backup_ids_with_leases(repo: &Repository, cluster: &str) -> Result<Vec<String>> {
    // Listed by folder: object stores (and the file backend) list by path segments.
    Ok(repo
        .storage()
        .list(layout::LEASES_PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| layout::parse_backup_lease(cluster, o.key.as_str()).map(str::to_string))
        .collect())
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
    let now = Timestamp::now().unix_seconds();
    let here = PidScope::here();
    let mut out = Vec::new();
    for o in repo.storage().list(layout::LEASES_PREFIX).await? {
        // Read every lease, even an old one: an unreadable lease stops us whatever its age
        // (its holder may be alive and unable to refresh it). Only "gone since the LIST" is
        // no lease.
        let raw = match repo.storage().get(&o.key).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let body = parse_lease(repo, &o.key, &raw)?;
        // A backend that reports no modification time cannot age a lease: treat it as fresh
        // (a lease wrongly thought live only delays gc; one wrongly thought dead is unsafe).
        let heartbeat = o.modified.unwrap_or(now);
        if now - heartbeat > EXPIRY.as_secs() as i64 {
            continue;
        }
        if holder_dead_here(&body, &here, probe) {
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
    health: Arc<Mutex<Health>>,
    /// What the lease says and the bytes last written: the heartbeat and
    /// [`Lease::record_gc_seen`] write one at a time.
    written: Arc<tokio::sync::Mutex<Written>>,
}

/// A lease's body, its sealed bytes, and the version of the object the holder last knew.
#[derive(Debug)]
struct Written {
    body: LeaseBody,
    raw: Bytes,
    /// The bytes before each change of body since the last write known to have landed: one
    /// of them may have landed with its answer lost, at a version the holder did not see.
    before: Vec<Bytes>,
    version: crate::storage::ObjectVersion,
}

/// A moment on two clocks: tokio's (monotonic, and paused in tests) and the kernel's boot
/// time clock, which also counts time the machine spent suspended (a paused VM, a laptop
/// lid): others age the lease by wall-clock time all along, so a suspension longer than a
/// lease lives must count as a lapse.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    mono: tokio::time::Instant,
    boot: Option<Duration>,
}

impl Stamp {
    fn now() -> Self {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Stamp {
            mono: tokio::time::Instant::now(),
            boot: Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)),
        }
    }

    /// How long after `earlier` this is, by whichever clock says longer.
    fn since(&self, earlier: &Stamp) -> Duration {
        let mono = self.mono.duration_since(earlier.mono);
        match (self.boot, earlier.boot) {
            (Some(b), Some(a)) => mono.max(b.saturating_sub(a)),
            _ => mono,
        }
    }
}

/// What the holder knows about its lease's freshness as others see it.
#[derive(Debug)]
struct Health {
    /// When the newest write of the lease that is known to have landed was sent: the
    /// storage's modification time, by which others age the lease, is no earlier.
    landed_sent: Stamp,
    /// When the oldest refresh not yet known to have landed was sent.
    unconfirmed_sent: Option<Stamp>,
    /// Why the lease no longer protects its holder, once it does not.
    lost: Option<String>,
}

impl Health {
    fn new(sent: Stamp) -> Self {
        Health {
            landed_sent: sent,
            unconfirmed_sent: None,
            lost: None,
        }
    }

    fn update(h: &Mutex<Health>, f: impl FnOnce(&mut Health)) {
        f(&mut h.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A refresh is about to be sent at `at`.
    fn sending(&mut self, at: Stamp) {
        self.unconfirmed_sent.get_or_insert(at);
    }

    /// A write of ours is known to have landed (now): it was sent no earlier than the oldest
    /// unconfirmed one. Between the previous landing and this one the lease may have looked
    /// dead to others if that stretch was longer than [`LAPSE_AFTER`].
    fn landed(&mut self, now: Stamp) {
        let gap = now.since(&self.landed_sent);
        if gap > LAPSE_AFTER && self.lost.is_none() {
            self.lost = Some(format!(
                "no refresh of it landed for {}s (others judge a lease dead after {}s)",
                gap.as_secs(),
                EXPIRY.as_secs()
            ));
        }
        self.landed_sent = self.unconfirmed_sent.take().unwrap_or(now);
    }

    fn taken_over(&mut self) {
        self.lost
            .get_or_insert_with(|| "it now holds another holder's record".into());
    }

    fn check(&self, now: Stamp) -> std::result::Result<(), String> {
        if let Some(why) = &self.lost {
            return Err(why.clone());
        }
        let since = now.since(&self.landed_sent);
        if since > LAPSE_AFTER {
            return Err(format!(
                "no refresh of it has landed for {}s (others judge a lease dead after {}s)",
                since.as_secs(),
                EXPIRY.as_secs()
            ));
        }
        Ok(())
    }
}

/// Takes the backup lease of `cluster` for a full backup ([`acquire_backup_with`]).
pub async fn acquire_backup(
    repo: &Repository,
    cluster: &str,
    backup_id: &str,
    wait: Duration,
) -> Result<Lease> {
    acquire_backup_with(repo, cluster, backup_id, None, wait).await
}

/// Takes the backup lease of `cluster` for backup `backup_id` of reference `reference`,
/// waiting up to `wait` for another backup of the same cluster to finish; fails with who
/// holds it.
pub async fn acquire_backup_with(
    repo: &Repository,
    cluster: &str,
    backup_id: &str,
    reference: Option<&str>,
    wait: Duration,
) -> Result<Lease> {
    let deadline = tokio::time::Instant::now() + wait;
    let k = layout::backup_lease(cluster, backup_id);
    let running = |h: &LiveLease| {
        let started = Timestamp::from_unix_seconds(h.body.started);
        Error::Conflict(format!(
            "another backup of cluster {cluster:?} is running ({} on host {}, pid {}, started {started}); \
             not starting a second one. Wait for it, or set backup.lease_wait to wait automatically",
            h.body.backup_id, h.body.host, h.body.pid
        ))
    };
    // After stepping back, one more look even when the wait is over: two backups that stepped
    // back together would otherwise both fail, each naming the other as running.
    let mut stepped_back = false;
    loop {
        if let Some(h) = other_backups(repo, cluster, backup_id).await?.first() {
            if tokio::time::Instant::now() >= deadline {
                return Err(running(h));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let mut body = my_body(backup_kind(), cluster, backup_id);
        body.reference = reference.map(str::to_string);
        let raw = sealed::seal(repo, DocKind::Lease, &k, &body);
        let sent = Stamp::now();
        let version = repo.storage().put_swap(&k, raw.clone(), None).await?;
        // Look again: a backup that checked at the same time as we did may have created its
        // lease too. Whichever of us looks later sees the other; both step back if both do.
        let others = match other_backups(repo, cluster, backup_id).await {
            Ok(others) => others,
            Err(e) => {
                remove_stepping_back(repo, &k).await;
                return Err(e);
            }
        };
        let Some(h) = others.first() else {
            return Ok(Lease::hold(repo, k, body, raw, version, sent));
        };
        remove_stepping_back(repo, &k).await;
        if tokio::time::Instant::now() >= deadline && stepped_back {
            return Err(running(h));
        }
        stepped_back = true;
        // Apart, so that two backups stepping back together do not meet again.
        let pause = Duration::from_millis(1000 + rand::random::<u64>() % 2000);
        tokio::time::sleep(pause).await;
    }
}

/// Removes the lease a backup created and then stepped back from, retrying: left behind, it
/// would keep other backups (and gc's sweep) waiting until it expires.
async fn remove_stepping_back(repo: &Repository, k: &ObjectKey) {
    for attempt in 1..=3u32 {
        match repo.storage().delete(k).await {
            Ok(()) => return,
            Err(e) if e.is_not_found() => return,
            Err(e) if attempt == 3 => tracing::warn!(
                "could not remove lease {k} after stepping back ({e}); it expires in {}s",
                EXPIRY.as_secs()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
}

/// Live backup leases of `cluster` other than backup `mine`'s.
async fn other_backups(repo: &Repository, cluster: &str, mine: &str) -> Result<Vec<LiveLease>> {
    Ok(live(repo)
        .await?
        .into_iter()
        .filter(|l| l.body.cluster == cluster && l.body.backup_id != mine)
        .collect())
}

/// The holder of exclusive lease `k` whose bytes are `bytes`, if it is live: fresh by the
/// storage's modification time and not known dead here. Fails closed on a lease that is not
/// one.
async fn live_holder(
    repo: &Repository,
    k: &ObjectKey,
    bytes: &[u8],
    here: &PidScope,
) -> Result<Option<LeaseBody>> {
    let body = parse_lease(repo, k, bytes)?;
    let fresh = repo
        .storage()
        .list(layout::LEASES_PREFIX)
        .await?
        .into_iter()
        .find(|o| &o.key == k)
        .is_some_and(|o| {
            o.modified
                .is_none_or(|m| Timestamp::now().unix_seconds() - m <= EXPIRY.as_secs() as i64)
        });
    Ok((fresh && !holder_dead_here(&body, here, probe)).then_some(body))
}

/// Who holds the exclusive lease `name` (`expire-<cluster>`, `gc`) now, if anyone live does.
pub async fn exclusive_holder(repo: &Repository, name: &str) -> Result<Option<LeaseBody>> {
    let k = layout::exclusive_lease(name);
    match repo.storage().get(&k).await {
        Ok(bytes) => live_holder(repo, &k, &bytes, &PidScope::here()).await,
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Takes the exclusive lease `name` (`gc`, `expire-<cluster>`) for `what`, waiting up to
/// `wait` for a live holder; a dead holder's lease is taken over by compare-and-swap.
pub async fn acquire_exclusive(
    repo: &Repository,
    name: &str,
    cluster: &str,
    purpose: Purpose,
    wait: Duration,
) -> Result<Lease> {
    let k = layout::exclusive_lease(name);
    let body = LeaseBody {
        purpose: Some(purpose),
        ..my_body(
            name.split('-').next().unwrap_or(name).to_string(),
            cluster,
            "",
        )
    };
    let raw = sealed::seal(repo, DocKind::Lease, &k, &body);
    let deadline = tokio::time::Instant::now() + wait;
    let here = PidScope::here();
    loop {
        let current = match repo.storage().get_versioned(&k).await {
            Ok((bytes, version)) => Some((bytes, version)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let holder = match &current {
            None => None,
            Some((bytes, _)) => live_holder(repo, &k, bytes, &here).await?,
        };
        if let Some(h) = holder {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Conflict(format!(
                    "the lease {name} is held by {} (host {}, pid {}, started {}); not starting {} alongside it. \
                     Wait for it to finish (a holder that died is forgotten within {}s)",
                    holder_activity(name, &h),
                    h.host,
                    h.pid,
                    Timestamp::from_unix_seconds(h.started),
                    purpose.describe(),
                    EXPIRY.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let expected = current.as_ref().map(|(_, v)| v);
        let sent = Stamp::now();
        match repo.storage().put_swap(&k, raw.clone(), expected).await {
            Ok(version) => return Ok(Lease::hold(repo, k, body, raw, version, sent)),
            // Someone else took it between our read and our write: look again.
            Err(crate::storage::StorageError::Precondition { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `work` holding the exclusive lease `name` (see [`acquire_exclusive`]), or without any
/// lease on a dry-run repository ([`crate::store::dry_run`]: a run that changes nothing never
/// waits for, or keeps out, another).
pub async fn exclusive<T>(
    repo: &Repository,
    name: &str,
    cluster: &str,
    purpose: Purpose,
    wait: Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    if repo.is_dry_run() {
        return work.await;
    }
    let lease = acquire_exclusive(repo, name, cluster, purpose, wait).await?;
    let result = work.await;
    lease.release().await;
    result
}

/// Writes the lease's current bytes over the version last known, and records in `health`
/// whether it landed.
async fn refresh(repo: &Repository, k: &ObjectKey, health: &Mutex<Health>, w: &mut Written) {
    // Twice at most: once more after finding our own earlier bytes at a version we missed.
    for _ in 0..2 {
        // Each write counts from when it was sent: a landing only vouches for that moment.
        Health::update(health, |s| s.sending(Stamp::now()));
        match repo
            .storage()
            .put_swap(k, w.raw.clone(), Some(&w.version))
            .await
        {
            Ok(v) => {
                w.version = v;
                w.before.clear();
                Health::update(health, |s| s.landed(Stamp::now()));
                return;
            }
            // An earlier write may have landed with its answer lost (a timeout): the lease is
            // still ours if it holds our bytes (these, or those before a change of body), at a
            // version we did not see. Without this every later refresh failed, and the lease
            // expired under a holder that went on working.
            Err(crate::storage::StorageError::Precondition { .. }) => {
                match repo.storage().get_versioned(k).await {
                    Ok((bytes, v)) if bytes == w.raw => {
                        w.version = v;
                        w.before.clear();
                        Health::update(health, |s| s.landed(Stamp::now()));
                        return;
                    }
                    // Ours before the change: fresh, and the change is written next.
                    Ok((bytes, v)) if w.before.contains(&bytes) => {
                        w.version = v;
                        Health::update(health, |s| s.landed(Stamp::now()));
                    }
                    Ok(_) => {
                        Health::update(health, Health::taken_over);
                        tracing::error!(
                            "lease {k} now holds another holder's record: this command no longer holds it"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("lease heartbeat failed, and re-reading {k}: {e}");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("lease heartbeat failed: {e}");
                return;
            }
        }
    }
}

impl Lease {
    /// Holds a lease just written at `version` (the write sent at `sent`), refreshing it
    /// every [`HEARTBEAT`].
    fn hold(
        repo: &Repository,
        k: ObjectKey,
        body: LeaseBody,
        raw: Bytes,
        version: crate::storage::ObjectVersion,
        sent: Stamp,
    ) -> Lease {
        let health = Arc::new(Mutex::new(Health::new(sent)));
        let written = Arc::new(tokio::sync::Mutex::new(Written {
            body,
            raw,
            before: Vec::new(),
            version,
        }));
        let (r, k2, h, w) = (repo.clone(), k.clone(), health.clone(), written.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let mut w = w.lock().await;
                refresh(&r, &k2, &h, &mut w).await;
            }
        });
        Lease {
            repo: repo.clone(),
            key: k,
            heartbeat,
            health,
            written,
        }
    }

    /// Records in the lease the generation of `gc/state` its backup read (see
    /// [`LeaseBody::gc_seen`]), writing it now; if that write fails, the heartbeat writes it.
    /// Until it lands gc sweeps nothing, which is safe, only later.
    pub async fn record_gc_seen(&self, generation: u64) {
        self.change_body(|b| b.gc_seen = Some(generation)).await;
    }

    /// Records in the lease its backup's start (see [`LeaseBody::start_lsn`]), trying a few
    /// times for about three seconds; true once the lease holding it has landed: from then on
    /// every `expire` that reads the leases keeps the WAL from it. Otherwise the heartbeat
    /// writes it later ([`Lease::start_landed`] asks again).
    pub async fn record_start(&self, start_lsn: crate::types::Lsn) -> bool {
        let landed = self.change_body(|b| b.start_lsn = Some(start_lsn.0)).await;
        landed || self.start_landed(3).await
    }

    /// Whether what the lease says now (its recorded start) has landed, writing it again up
    /// to `tries` times, a little longer apart each time, until it does.
    pub async fn start_landed(&self, tries: u64) -> bool {
        for attempt in 0..=tries {
            let mut w = self.written.lock().await;
            if w.before.is_empty() {
                return true;
            }
            if attempt == tries {
                return false;
            }
            drop(w);
            tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            w = self.written.lock().await;
            // The heartbeat may have landed it meanwhile.
            if !w.before.is_empty() {
                refresh(&self.repo, &self.key, &self.health, &mut w).await;
            }
        }
        false
    }

    /// Changes what the lease says and writes it now; if that write fails, the heartbeat
    /// writes it. True when the new bytes are known to have landed.
    async fn change_body(&self, change: impl FnOnce(&mut LeaseBody)) -> bool {
        let mut w = self.written.lock().await;
        change(&mut w.body);
        let raw = sealed::seal(&self.repo, DocKind::Lease, &self.key, &w.body);
        // Until the new bytes land, the stored ones may still be older ones.
        let older = std::mem::replace(&mut w.raw, raw);
        w.before.push(older);
        refresh(&self.repo, &self.key, &self.health, &mut w).await;
        w.before.is_empty()
    }

    /// What the lease says now.
    pub async fn body(&self) -> LeaseBody {
        self.written.lock().await.body.clone()
    }

    /// Fails, naming the lease and why, if others may have judged it dead at any moment since
    /// it was taken: its refreshes stopped landing for longer than [`LAPSE_AFTER`], or another
    /// holder took it over. What the holder did under it is then unprotected (gc may have swept
    /// packs a backup uses).
    pub fn ensure_held(&self) -> Result<()> {
        let now = Stamp::now();
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.check(now).map_err(|why| {
            Error::Conflict(format!(
                "the lease {} no longer protects this command: {why}. gc or another command on another \
                 host may have run as if this one had died",
                self.key
            ))
        })
    }

    /// [`Lease::ensure_held`] for every lease a command holds (none on a dry run).
    pub fn ensure_all_held(held: &[Lease]) -> Result<()> {
        held.iter().try_for_each(Lease::ensure_held)
    }

    /// Stops the heartbeat and removes the lease.
    pub async fn release(self) {
        self.heartbeat.abort();
        let _ = self.repo.storage().delete(&self.key).await;
    }
}

/// A lease dropped without [`Lease::release`] (its holder's future was cancelled, or an error
/// path forgot it) stops being refreshed, so it expires after [`EXPIRY`] instead of holding
/// gc and other backups back for as long as the process lives. Removing it needs the
/// repository, which a drop cannot wait for.
impl Drop for Lease {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::storage::Storage;
    use crate::test_support::LeaseFaults;
    use std::sync::Arc;

    /// A purpose from a newer version reads as one that may remove WAL; none (an older
    /// version's lease) reads as absent, and messages then say it may be any holder.
    #[test]
    fn purposes_unknown_here_are_taken_as_possibly_removing_wal() {
        let mut v = serde_json::to_value(my_body("expire".into(), "main", "")).unwrap();
        assert!(v.get("purpose").is_none(), "absent until set: {v}");
        let old: LeaseBody = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(old.purpose, None);
        assert!(holder_activity("expire-main", &old).contains("of an older pgcairn"));
        v["purpose"] = "compact".into();
        let newer: LeaseBody = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(newer.purpose, Some(Purpose::Other));
        assert!(Purpose::Other.may_remove_wal() && Purpose::Expire.may_remove_wal());
        for p in [Purpose::Pin, Purpose::Hold, Purpose::Reencrypt, Purpose::Gc] {
            assert!(!p.may_remove_wal(), "{p:?}");
            v["purpose"] = serde_json::to_value(p).unwrap();
            let b: LeaseBody = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(b.purpose, Some(p));
        }
    }

    fn body(scope: &PidScope, pid: u32, start_ticks: Option<u64>) -> LeaseBody {
        LeaseBody {
            kind: "backup".into(),
            cluster: "main".into(),
            backup_id: "20261124-000000F".into(),
            host: hostname(),
            pid,
            started: 0,
            boot_id: scope.boot_id.clone(),
            pid_ns: scope.pid_ns.clone(),
            start_ticks,
            until: None,
            reference: None,
            gc_seen: None,
            start_lsn: None,
            purpose: None,
        }
    }

    fn scope() -> PidScope {
        PidScope {
            boot_id: Some("boot-a".into()),
            pid_ns: Some("pid:[1]".into()),
        }
    }

    #[test]
    fn a_holder_is_dead_here_only_in_our_namespace_and_boot() {
        let here = scope();
        let gone = |_| Process::Gone;
        let running = |t| move |_| Process::Running(Some(t));
        // Our namespace and boot: gone, or the pid is another process now -> dead.
        assert!(holder_dead_here(&body(&here, 7, Some(100)), &here, gone));
        assert!(holder_dead_here(
            &body(&here, 7, Some(100)),
            &here,
            running(555)
        ));
        // Same process (same start time) -> alive.
        assert!(!holder_dead_here(
            &body(&here, 7, Some(100)),
            &here,
            running(100)
        ));
        // Start time unknown on either side -> cannot tell a reused pid: alive.
        assert!(!holder_dead_here(
            &body(&here, 7, None),
            &here,
            running(100)
        ));
        assert!(!holder_dead_here(&body(&here, 7, Some(100)), &here, |_| {
            Process::Running(None)
        }));
        // The same host name in another pid namespace (a container): its pid means nothing
        // here, so only the expiry time decides.
        let container = PidScope {
            pid_ns: Some("pid:[2]".into()),
            ..scope()
        };
        assert!(!holder_dead_here(
            &body(&container, 7, Some(100)),
            &here,
            gone
        ));
        // Another boot (the host rebooted, or another host): expiry decides.
        let other_boot = PidScope {
            boot_id: Some("boot-b".into()),
            ..scope()
        };
        assert!(!holder_dead_here(
            &body(&other_boot, 7, Some(100)),
            &here,
            gone
        ));
        // A lease of an older version, without these fields, on this very host: expiry decides.
        let old = PidScope {
            boot_id: None,
            pid_ns: None,
        };
        assert!(!holder_dead_here(&body(&old, 7, None), &here, gone));
        // We cannot tell where we are: expiry decides.
        assert!(!holder_dead_here(&body(&here, 7, Some(100)), &old, gone));
    }

    #[test]
    fn the_real_probe_reads_pid_and_start_time() {
        let me = std::process::id();
        let Process::Running(Some(t)) = probe(me) else {
            panic!("this process is running with a start time");
        };
        assert_eq!(own_start_ticks(), Some(t));
        let here = PidScope::here();
        assert!(here.boot_id.is_some() && here.pid_ns.is_some(), "{here:?}");
        let mine = body(&here, me, Some(t));
        assert!(!holder_dead_here(&mine, &here, probe), "we are alive");
        assert!(
            holder_dead_here(&body(&here, me, Some(t + 1)), &here, probe),
            "our pid with another start time is a reused pid"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(probe(pid), Process::Gone);
        assert!(holder_dead_here(&body(&here, pid, Some(t)), &here, probe));
    }

    #[tokio::test]
    async fn old_leases_without_identity_stay_readable_and_live_until_expiry() {
        let (mem, repo) = memory_repo().await;
        // A lease as older versions wrote it, on this host, for a pid that does not exist.
        let raw = format!(
            r#"{{"kind":"backup","cluster":"main","backup_id":"20261124-000000F","host":"{}","pid":4194303,"started":0}}"#,
            hostname()
        );
        let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let k = layout::backup_lease("main", "20261124-000000F");
        mem.put_create(&k, sealed::seal(&repo, DocKind::Lease, &k, &doc))
            .await
            .unwrap();
        assert_eq!(
            live(&repo).await.unwrap().len(),
            1,
            "judged by its age only"
        );
        mem.backdate(k.as_str(), EXPIRY.as_secs() as i64 + 5);
        assert!(live(&repo).await.unwrap().is_empty(), "expired");
    }

    #[tokio::test]
    async fn a_forged_or_moved_lease_is_an_integrity_error_naming_it() {
        let (mem, repo) = memory_repo().await;
        let (_, other_repo) = memory_repo().await;
        let mine = my_body("backup".into(), "main", "20261124-000000F");
        let own = layout::backup_lease("main", "20261124-000000F");
        let gc = layout::exclusive_lease("gc");
        let forgeries = [
            // What a lease was before it was sealed: plain JSON anyone can write.
            (own.clone(), Bytes::from(serde_json::to_vec(&mine).unwrap())),
            // A real lease of another name (a backup's, put where gc's goes).
            (gc.clone(), sealed::seal(&repo, DocKind::Lease, &own, &mine)),
            // A lease of another repository under the right name.
            (
                own.clone(),
                sealed::seal(&other_repo, DocKind::Lease, &own, &mine),
            ),
            // Another kind of catalog document under a lease's name.
            (own.clone(), sealed::seal(&repo, DocKind::Pin, &own, &mine)),
        ];
        for (k, raw) in forgeries {
            mem.put_swap(
                &k,
                raw,
                mem.get_versioned(&k).await.ok().map(|v| v.1).as_ref(),
            )
            .await
            .unwrap();
            let err = live_any(&repo).await.unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains(k.as_str())
                    && err.contains("forged")
                    && err.contains("delete the object"),
                "{err}"
            );
            mem.delete(&k).await.unwrap();
        }
        // Sealed for its name by this repository: read.
        mem.put_create(&own, sealed::seal(&repo, DocKind::Lease, &own, &mine))
            .await
            .unwrap();
        assert_eq!(live(&repo).await.unwrap()[0].body, mine);
    }

    #[tokio::test]
    async fn unreadable_lease_blocks_gc_expire_and_backup_naming_the_object() {
        for garbage in [
            &b"{\"kind\": \"backup\", \"cluster\": \"ma"[..],
            b"not json at all",
            b"[1, 2, 3]",
            br#"{"kind":"mystery","cluster":"","backup_id":"","host":"h","pid":1,"started":0}"#,
            br#"{"kind":"backup","cluster":"main","backup_id":"x","host":"","pid":0,"started":0}"#,
        ] {
            let (mem, repo) = memory_repo().await;
            let k = ObjectKey::new("leases/backup-main-20261124-000000F");
            // JSON is sealed for the name (authentic, but not a lease pgcairn writes); the
            // rest is stored as it is.
            let raw = match serde_json::from_slice::<serde_json::Value>(garbage) {
                Ok(doc) => sealed::seal(&repo, DocKind::Lease, &k, &doc),
                Err(_) => Bytes::from_static(garbage),
            };
            mem.put_create(&k, raw).await.unwrap();
            // Whatever its age: its holder might be alive and unable to refresh it.
            mem.backdate(k.as_str(), 3600);
            let err = live(&repo).await.unwrap_err().to_string();
            assert!(
                err.contains(k.as_str()) && err.contains("delete the object"),
                "{err}"
            );
            let err = crate::gc::gc(
                &repo,
                &crate::gc::GcOptions::with_grace(Duration::from_secs(3600)),
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(err.contains(k.as_str()), "gc refuses: {err}");
            assert!(
                acquire_backup(&repo, "main", "20261124-000100F", Duration::ZERO)
                    .await
                    .is_err(),
                "backup refuses"
            );
            // Removing it, as the message says, clears the way.
            mem.delete(&k).await.unwrap();
            assert!(live(&repo).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn unreadable_exclusive_lease_is_not_taken_over() {
        let (mem, repo) = memory_repo().await;
        let k = ObjectKey::new("leases/expire-main");
        mem.put_create(&k, Bytes::from_static(b"\x00\x01garbled"))
            .await
            .unwrap();
        mem.backdate(k.as_str(), 3600);
        let err = acquire_exclusive(
            &repo,
            "expire-main",
            "main",
            Purpose::Expire,
            Duration::ZERO,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("leases/expire-main"), "{err}");
        assert_eq!(
            mem.get(&k).await.unwrap().as_ref(),
            b"\x00\x01garbled",
            "left as it was"
        );
    }

    async fn open(faults: Arc<LeaseFaults>) -> Repository {
        crate::test_support::open_with(faults).await
    }

    /// A backup whose lease refreshes stopped landing for longer than others wait before
    /// judging it dead learns so, even once refreshes land again (gc elsewhere may have run
    /// in between); while they land, or after a short outage, its lease holds.
    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_refreshes_stopped_landing_no_longer_protects_its_holder() {
        let (mem, _repo) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            fail_swaps: 4.into(),
            ..Default::default()
        });
        let repo = open(faults.clone()).await;
        let lease = acquire_backup(&repo, "main", "20261124-000000F", Duration::ZERO)
            .await
            .unwrap();
        // Refreshes at 20 s and 40 s failed: 50 s without one is within the margin.
        tokio::time::sleep(Duration::from_secs(50)).await;
        lease.ensure_held().unwrap();
        // At 60 s and 80 s too: 81 s since the lease was written is past it.
        tokio::time::sleep(Duration::from_secs(31)).await;
        let err = lease.ensure_held().unwrap_err().to_string();
        assert!(
            err.contains("no refresh") && err.contains("leases/backup-main-"),
            "{err}"
        );
        // The refresh at 100 s lands; the lease was unprotected in between all the same.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(faults.swaps_ok.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        let err = lease.ensure_held().unwrap_err().to_string();
        assert!(err.contains("for 100s"), "{err}");
        lease.release().await;

        // Two failed refreshes in a row, then landing ones: held throughout.
        faults
            .fail_swaps
            .store(2, std::sync::atomic::Ordering::SeqCst);
        let lease = acquire_backup(&repo, "main", "20261124-000100F", Duration::ZERO)
            .await
            .unwrap();
        tokio::time::sleep(HEARTBEAT * 6 + Duration::from_secs(1)).await;
        lease.ensure_held().unwrap();
        lease.release().await;
    }

    /// A lease dropped unreleased stops being refreshed (and so expires).
    #[tokio::test(start_paused = true)]
    async fn a_dropped_lease_is_no_longer_refreshed() {
        let (mem, _repo) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            ..Default::default()
        });
        let repo = open(faults.clone()).await;
        let refreshes = || faults.swaps_ok.load(std::sync::atomic::Ordering::SeqCst);
        let lease = acquire_backup(&repo, "main", "20261124-000000F", Duration::ZERO)
            .await
            .unwrap();
        tokio::time::sleep(HEARTBEAT * 2 + Duration::from_secs(1)).await;
        let held = refreshes();
        assert!(held >= 2, "a held lease is refreshed: {held}");
        drop(lease);
        tokio::time::sleep(HEARTBEAT * 3).await;
        assert_eq!(refreshes(), held, "refreshed after it was dropped");
    }

    /// A lease another holder took over (after judging it dead) no longer protects its first
    /// holder.
    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_over_no_longer_protects_its_holder() {
        let (mem, _repo) = memory_repo().await;
        let repo = open(Arc::new(LeaseFaults {
            inner: mem.clone(),
            ..Default::default()
        }))
        .await;
        let lease = acquire_exclusive(&repo, "gc", "", Purpose::Gc, Duration::ZERO)
            .await
            .unwrap();
        let k = layout::exclusive_lease("gc");
        let (_, version) = mem.get_versioned(&k).await.unwrap();
        let mut other = my_body("gc".into(), "", "");
        other.host = "elsewhere".into();
        let raw = sealed::seal(&repo, DocKind::Lease, &k, &other);
        mem.put_swap(&k, raw, Some(&version)).await.unwrap();
        tokio::time::sleep(HEARTBEAT + Duration::from_secs(1)).await;
        let err = lease.ensure_held().unwrap_err().to_string();
        assert!(err.contains("another holder"), "{err}");
    }

    /// A machine suspended (a paused VM) for longer than a lease lives: its monotonic clock
    /// stood still, the boot-time clock did not, and others aged the lease all along.
    #[test]
    fn a_suspension_longer_than_a_lease_lives_is_a_lapse() {
        let at = Stamp::now();
        let health = Health::new(at);
        let later = |mono: u64, boot: u64| Stamp {
            mono: at.mono + Duration::from_secs(mono),
            boot: at.boot.map(|b| b + Duration::from_secs(boot)),
        };
        assert!(health.check(later(10, 10)).is_ok());
        let err = health.check(later(10, 300)).unwrap_err();
        assert!(err.contains("300s"), "{err}");
        let mut health = Health::new(at);
        health.landed(later(5, 200));
        assert!(
            health.check(later(6, 201)).is_err(),
            "the lapse is remembered"
        );
    }

    /// Two backups of one cluster looking for a running one at the same moment: both find
    /// none, both create their lease, and only one goes on.
    #[tokio::test(start_paused = true)]
    async fn two_backups_starting_together_do_not_both_run() {
        let (mem, _repo) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            meet_in_list: Some(tokio::sync::Barrier::new(2)),
            ..Default::default()
        });
        let repo = open(faults.clone()).await;
        // The barrier is for the two backups' first looks, not for opening the repository.
        faults.lists.store(0, std::sync::atomic::Ordering::SeqCst);
        let (a, b) = tokio::join!(
            acquire_backup(&repo, "main", "20261124-000000F", Duration::from_secs(10)),
            acquire_backup(&repo, "main", "20261124-000001F", Duration::from_secs(10)),
        );
        let held: Vec<&Lease> = [&a, &b]
            .into_iter()
            .filter_map(|r| r.as_ref().ok())
            .collect();
        assert_eq!(
            held.len(),
            1,
            "{:?} {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        );
        let err = [a.as_ref().err(), b.as_ref().err()]
            .into_iter()
            .flatten()
            .next()
            .unwrap()
            .to_string();
        assert!(err.contains("another backup of cluster"), "{err}");
        // The one that stepped back left no lease behind.
        let leases = mem.list(layout::LEASES_PREFIX).await.unwrap();
        assert_eq!(leases.len(), 1, "{leases:?}");
    }

    /// A refresh that landed but whose answer was lost: the heartbeats after it still refresh
    /// the lease (they failed on the version they had not seen, and the lease expired under a
    /// holder that went on working).
    #[tokio::test(start_paused = true)]
    async fn a_lease_whose_refresh_answer_was_lost_is_still_refreshed() {
        let (mem, _repo) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem.clone(),
            lose_swap_answers: 1.into(),
            ..Default::default()
        });
        let repo = crate::test_support::open_with(faults.clone()).await;
        let lease = acquire_exclusive(&repo, "gc", "", Purpose::Gc, Duration::ZERO)
            .await
            .unwrap();
        // The first refresh lands unanswered; three more follow.
        tokio::time::sleep(HEARTBEAT * 4 + Duration::from_secs(1)).await;
        assert!(
            faults.swaps_ok.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "refreshes after the lost answer landed"
        );
        lease.ensure_held().unwrap();
        lease.release().await;
    }

    /// The test repository over storage with lease faults, none armed yet.
    async fn faulty_repo() -> (Arc<LeaseFaults>, Repository) {
        let (mem, _repo) = memory_repo().await;
        let faults = Arc::new(LeaseFaults {
            inner: mem,
            ..Default::default()
        });
        let repo = crate::test_support::open_with(faults.clone()).await;
        (faults, repo)
    }

    async fn stored_backup_lease(repo: &Repository, id: &str) -> LeaseBody {
        live(repo)
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.body.backup_id == id)
            .expect("the backup's lease is live")
            .body
    }

    #[tokio::test(start_paused = true)]
    async fn a_backup_lease_says_which_gc_state_it_read_and_its_refreshes_keep_saying_it() {
        use std::sync::atomic::Ordering::SeqCst;
        let (faults, repo) = faulty_repo().await;
        let id = "20261124-000100I";
        let lease =
            acquire_backup_with(&repo, "main", id, Some("20261124-000000F"), Duration::ZERO)
                .await
                .unwrap();
        let body = stored_backup_lease(&repo, id).await;
        assert_eq!(body.reference.as_deref(), Some("20261124-000000F"));
        assert_eq!(body.gc_seen, None, "not read yet: gc sweeps nothing");
        // The write lands but its answer is lost: the next refresh finds the new bytes.
        faults.lose_swap_answers.store(1, SeqCst);
        lease.record_gc_seen(7).await;
        assert_eq!(stored_backup_lease(&repo, id).await.gc_seen, Some(7));
        tokio::time::sleep(HEARTBEAT * 3 + Duration::from_secs(1)).await;
        lease.ensure_held().unwrap();
        let body = stored_backup_lease(&repo, id).await;
        assert_eq!(
            body.gc_seen,
            Some(7),
            "a refresh wrote the lease as first taken"
        );
        assert_eq!(lease.body().await, body);
        lease.release().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_body_after_a_refresh_whose_answer_was_lost_lands() {
        use std::sync::atomic::Ordering::SeqCst;
        let (faults, repo) = faulty_repo().await;
        let id = "20261124-000100I";
        let lease = acquire_backup_with(&repo, "main", id, None, Duration::ZERO)
            .await
            .unwrap();
        // A refresh lands, its answer lost: the holder does not know the version it made.
        faults.lose_swap_answers.store(1, SeqCst);
        tokio::time::sleep(HEARTBEAT + Duration::from_secs(1)).await;
        // The change finds the older bytes of its own at that version, and is written.
        lease.record_gc_seen(7).await;
        lease.ensure_held().unwrap();
        assert_eq!(stored_backup_lease(&repo, id).await.gc_seen, Some(7));
        tokio::time::sleep(HEARTBEAT * 5).await;
        lease.ensure_held().unwrap();
        assert_eq!(stored_backup_lease(&repo, id).await.gc_seen, Some(7));
        lease.release().await;
    }

    #[tokio::test]
    async fn a_lease_read_error_is_not_taken_for_no_lease() {
        let (mem, _repo) = memory_repo().await;
        let k = ObjectKey::new("leases/backup-main-20261124-000000F");
        let body =
            serde_json::to_vec(&my_body("backup".into(), "main", "20261124-000000F")).unwrap();
        mem.put_create(&k, Bytes::from(body)).await.unwrap();
        let failing: Arc<dyn Storage> = Arc::new(LeaseFaults::reads_fail(mem.clone()));
        let repo = Repository::open(
            failing,
            Some(&crate::crypto::Unlock::Passphrase("pw".into())),
        )
        .await
        .unwrap();
        let err = live(&repo).await.unwrap_err().to_string();
        assert!(
            err.contains(k.as_str()) && err.contains("access denied"),
            "{err}"
        );
        assert!(crate::gc::gc(
            &repo,
            &crate::gc::GcOptions::with_grace(Duration::from_secs(3600))
        )
        .await
        .is_err());
    }
}
