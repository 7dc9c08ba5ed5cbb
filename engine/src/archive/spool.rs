//! Asynchronous archiving through a spool directory.
//!
//! With `[archive] async = true`, `archive-push %p` does not talk to the repository itself:
//! 1. it computes a digest of its file (plain BLAKE3, local only);
//! 2. it makes sure one background **pusher** runs for this spool (an exclusive lock on
//!    `<spool>/<cluster>/pusher.lock`; if free, it starts one);
//! 3. it waits until the pusher writes `ack/<name>` (success) or `error/<name>` (failure),
//!    and returns as soon as its own file is acknowledged.
//!
//! The pusher scans `pg_wal/archive_status/*.ready`, history files first then oldest
//! segments, and pushes them ahead of PostgreSQL's requests with bounded parallelism. An ack
//! is written only after the push is durable in the repository, and records the digest of
//! what was pushed: the foreground call accepts an ack only for the same bytes it was given.
//! When no `.ready` file appears for a while the pusher exits; it also exits after
//! [`MAX_PUSHER_RUN`], so that a busy server's WAL is soon sealed under the key epoch of a
//! `key rotate` (the next call starts a pusher that reads the config again).
//!
//! When the repository is unreachable, pushes fail and error files say why; PostgreSQL keeps
//! its WAL and retries, so nothing is lost. Only if the operator sets `archive.queue_max`
//! (bytes) and the backlog (`.ready` files not acknowledged yet) exceeds it while a file keeps
//! failing (for [`DROP_AFTER_FAILING`]) does the pusher acknowledge that file
//! as **dropped** (loudly, in every message) so PostgreSQL can recycle WAL and the primary
//! survives; the dropped range then shows as a gap in `info`. A single failed request while
//! the repository works is retried like any other, never dropped.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::archive::push::{push_wal_file_unordered, PushOutcome, WalSource};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::types::WalFileName;

/// How the pusher behaves.
#[derive(Debug, Clone)]
pub struct PusherOptions {
    /// Files pushed in parallel.
    pub jobs: usize,
    /// Exit after this long without any `.ready` file.
    pub idle_exit: Duration,
    /// Backlog in bytes above which failing WAL is dropped; `None`: never drop.
    pub queue_max: Option<u64>,
    /// The repository as configured (its URL and endpoint, [`super::prefetch::repository_identity`]),
    /// written into every ack: a foreground call configured for another one does not take it.
    pub repository: String,
}

/// What the pusher recorded for one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ack {
    /// Plain BLAKE3 of the file's bytes.
    pub digest: String,
    /// `archived`, `already-archived` or `dropped`.
    pub outcome: String,
    /// The repository the pusher pushed to, as configured (empty from pushers before
    /// 2026-12-06, which no foreground call takes).
    #[serde(default)]
    pub repository: String,
}

/// The spool directory of one cluster.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

/// Takes an exclusive lock on `path` (created if needed) without waiting; `None` if another
/// process holds it. The lock lives as long as the returned file.
pub fn try_lock_file(path: &Path) -> Result<Option<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::private_fs::FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    match f.try_lock() {
        Ok(()) => Ok(Some(f)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
    }
}

/// What an ack records about the file it acknowledges, and what archive-push compares:
/// size, modification time, inode, and a BLAKE3 of the first and last 64 KiB (the first page
/// carries the segment's system identifier and address). Cheap enough for the foreground call,
/// which must answer PostgreSQL fast; the repository itself still refuses different content
/// under an existing name.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let err = |e| Error::io(format!("reading {}", path.display()), e);
    let mut f = fs::File::open(path).map_err(err)?;
    let m = f.metadata().map_err(err)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    let n = f.read(&mut buf).map_err(err)?;
    h.update(&buf[..n]);
    if m.len() > 2 * buf.len() as u64 {
        f.seek(SeekFrom::End(-(buf.len() as i64))).map_err(err)?;
        f.read_exact(&mut buf).map_err(err)?;
        h.update(&buf);
    }
    Ok(format!(
        "{}:{}.{}:{}:{}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        h.finalize().to_hex()
    ))
}

impl Spool {
    /// The spool of `cluster` for reading only (nothing is created; for metrics).
    pub fn at(spool_dir: &Path, cluster: &str) -> Self {
        Spool {
            root: spool_dir.join(cluster),
        }
    }

    /// Of the `.ready` files in `pg_wal`, those the pusher has not acknowledged yet (the
    /// asynchronous queue).
    pub fn queued(&self, pg_wal: &Path) -> Result<u64> {
        Ok(ready_files(pg_wal)?
            .iter()
            .filter(|(n, _)| self.read_ack(&n.to_string()).is_none())
            .count() as u64)
    }

    /// Opens (creating) `<spool_dir>/<cluster>/`.
    pub fn open(spool_dir: &Path, cluster: &str) -> Result<Self> {
        let root = spool_dir.join(cluster);
        crate::private_fs::check_own_tree(spool_dir, &root)
            .map_err(|e| Error::io("archive.spool_dir".to_string(), e))?;
        for sub in ["ack", "error", "failing", "refused"] {
            crate::private_fs::create_dir_all(&root.join(sub)).map_err(|e| {
                Error::io(
                    format!(
                        "creating spool directory {} (archive.spool_dir)",
                        root.join(sub).display()
                    ),
                    e,
                )
            })?;
        }
        Ok(Spool { root })
    }

    /// Segments this spool's pusher acknowledged as dropped, ever (`dropped-total`).
    pub fn dropped_total(&self) -> u64 {
        fs::read_to_string(self.root.join("dropped-total"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn add_dropped(&self, n: u64) -> Result<u64> {
        let total = self.dropped_total() + n;
        Self::write_small(
            &self.root.join("dropped-total"),
            total.to_string().as_bytes(),
        )?;
        Ok(total)
    }

    /// The spool's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ack_path(&self, name: &str) -> PathBuf {
        self.root.join("ack").join(name)
    }

    fn error_path(&self, name: &str) -> PathBuf {
        self.root.join("error").join(name)
    }

    fn failing_path(&self, name: &str) -> PathBuf {
        self.root.join("failing").join(name)
    }

    /// Records that pushing `name` failed, and returns how long it has been failing: since
    /// the first failure recorded (`failing/<name>`, made then, removed by its ack), so the
    /// time survives the pusher's exits and restarts. `Duration::ZERO` if the spool cannot
    /// say (it never counts towards dropping).
    pub fn note_failing(&self, name: &str) -> Duration {
        let path = self.failing_path(name);
        let _ = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.file_type().is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default()
    }

    fn refused_path(&self, name: &str) -> PathBuf {
        self.root.join("refused").join(name)
    }

    /// Records that the repository refused `name` (a conflict, not a storage failure): kept
    /// until its ack, so that one later round failing on storage does not make it droppable.
    pub fn note_refused(&self, name: &str) {
        let _ = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.refused_path(name));
    }

    /// Whether the repository refused `name` since it was last acknowledged.
    pub fn was_refused(&self, name: &str) -> bool {
        fs::symlink_metadata(self.refused_path(name)).is_ok_and(|m| m.file_type().is_file())
    }

    /// Path of the pusher's lock file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("pusher.lock")
    }

    /// Path of the pusher's log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("pusher.log")
    }

    /// Tries to take the pusher lock; `None` if another pusher holds it.
    pub fn try_lock_pusher(&self) -> Result<Option<fs::File>> {
        try_lock_file(&self.lock_path())
    }

    /// True if a pusher holds the lock right now.
    pub fn pusher_running(&self) -> Result<bool> {
        Ok(self.try_lock_pusher()?.is_none())
    }

    fn write_small(path: &Path, body: &[u8]) -> Result<()> {
        crate::private_fs::replace(path, body)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Records a successful (or dropped) push.
    pub fn write_ack(&self, name: &str, ack: &Ack) -> Result<()> {
        let _ = fs::remove_file(self.error_path(name));
        let _ = fs::remove_file(self.failing_path(name));
        let _ = fs::remove_file(self.refused_path(name));
        Self::write_small(
            &self.ack_path(name),
            &serde_json::to_vec(ack).expect("ack serialises"),
        )
    }

    /// Records a failed push.
    pub fn write_error(&self, name: &str, message: &str) -> Result<()> {
        Self::write_small(&self.error_path(name), message.as_bytes())
    }

    /// Reads an ack.
    pub fn read_ack(&self, name: &str) -> Option<Ack> {
        fs::read(self.ack_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Reads an error message.
    pub fn read_error(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.error_path(name)).ok()
    }

    /// Forgets a file's ack and error (once PostgreSQL has been answered).
    pub fn clear(&self, name: &str) {
        let _ = fs::remove_file(self.ack_path(name));
        let _ = fs::remove_file(self.error_path(name));
    }

    /// Removes acks of files PostgreSQL no longer lists as `.ready`: it was answered and
    /// renamed them `.done` (PostgreSQL renames only after archive-push returned 0, so an ack
    /// without its `.ready` file has been consumed). Keeps the spool from growing forever.
    pub fn forget_consumed_acks(&self, ready: &[(WalFileName, u64)]) {
        let ready: std::collections::HashSet<String> =
            ready.iter().map(|(n, _)| n.to_string()).collect();
        let Ok(entries) = fs::read_dir(self.root.join("ack")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.ends_with(".tmp") && !ready.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
        // And the failure times and refusals of files PostgreSQL no longer lists (archived by
        // a call of its own, or the cluster's WAL removed).
        for e in ["failing", "refused"].into_iter().flat_map(|d| {
            fs::read_dir(self.root.join(d))
                .into_iter()
                .flatten()
                .flatten()
        }) {
            if !ready.contains(&e.file_name().to_string_lossy().to_string()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Forgets only the error (before waiting for a fresh attempt).
    pub fn clear_error(&self, name: &str) {
        let _ = fs::remove_file(self.error_path(name));
    }
}

/// What the foreground call learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Acknowledged with the matching digest.
    Acked(Ack),
    /// The pusher failed to push it, with its message.
    Failed(String),
    /// Nothing within the timeout.
    TimedOut,
    /// No pusher holds the lock (it exited): the caller should start one and wait again.
    NoPusher,
    /// The running pusher pushes to another repository (the configuration changed since it
    /// started, for up to [`MAX_PUSHER_RUN`]): the caller pushes the file itself.
    OtherRepository(String),
}

/// Waits for the pusher's answer about `name` with `digest`, pushed to `repository`.
pub fn wait_for_ack(
    spool: &Spool,
    name: &str,
    digest: &str,
    repository: &str,
    deadline: Instant,
) -> Result<WaitOutcome> {
    // Poll often: PostgreSQL waits for this answer, and a stat is cheap. Back off only after
    // the first second.
    let started = Instant::now();
    let mut sleep = Duration::from_micros(500);
    let mut last_lock_check = Instant::now();
    loop {
        if let Some(ack) = spool.read_ack(name) {
            if ack.digest == digest && ack.repository != repository {
                // Durable, but in the repository the pusher was started for, not this call's.
                return Ok(WaitOutcome::OtherRepository(ack.repository));
            }
            if ack.digest == digest {
                return Ok(WaitOutcome::Acked(ack));
            }
            // An ack for other bytes under this name (stale): forget it; the pusher retries.
            spool.clear(name);
        }
        if let Some(msg) = spool.read_error(name) {
            return Ok(WaitOutcome::Failed(msg));
        }
        if Instant::now() >= deadline {
            return Ok(WaitOutcome::TimedOut);
        }
        if last_lock_check.elapsed() > Duration::from_millis(500) {
            last_lock_check = Instant::now();
            if !spool.pusher_running()? {
                return Ok(WaitOutcome::NoPusher);
            }
        }
        std::thread::sleep(sleep);
        if started.elapsed() > Duration::from_secs(1) {
            sleep = Duration::from_millis(20);
        }
    }
}

/// `.ready` files waiting in `pg_wal/archive_status`, history files first, then by name.
pub fn ready_files(pg_wal: &Path) -> Result<Vec<(WalFileName, u64)>> {
    let status = pg_wal.join("archive_status");
    let entries =
        fs::read_dir(&status).map_err(|e| Error::io(format!("reading {}", status.display()), e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let fname = entry.file_name().to_string_lossy().to_string();
        let Some(base) = fname.strip_suffix(".ready") else {
            continue;
        };
        let Ok(name) = base.parse::<WalFileName>() else {
            continue;
        };
        let size = fs::metadata(pg_wal.join(base))
            .map(|m| m.len())
            .unwrap_or(0);
        out.push((name, size));
    }
    out.sort_by_key(|(n, _)| (!matches!(n, WalFileName::History { .. }), n.to_string()));
    Ok(out)
}

/// Records a pushed batch in the catalog head (see [`crate::store::head`]): per timeline,
/// the highest segment pushed below the first that failed in this batch. Best effort.
async fn note_batch(
    repo: &Repository,
    cluster: &str,
    pushed: &[WalFileName],
    failed: &[WalFileName],
    seg_size: &mut Option<u64>,
) {
    if pushed.is_empty() {
        return;
    }
    if seg_size.is_none() {
        *seg_size = crate::store::cluster::read(repo, cluster)
            .await
            .ok()
            .flatten()
            .map(|r| r.wal_segment_size);
    }
    let Some(size) = *seg_size else { return };
    let abs = |n: &WalFileName| match n {
        WalFileName::Segment { tli, segno } => Some((tli.0, segno.absolute(size))),
        _ => None,
    };
    // Per timeline, the lowest and highest segment pushed below the batch's first failure.
    let mut range: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
    for (t, s) in pushed.iter().filter_map(abs) {
        let below_failure = failed
            .iter()
            .filter_map(abs)
            .all(|(ft, fs)| ft != t || fs > s);
        if below_failure {
            let r = range.entry(t).or_insert((s, s));
            *r = (r.0.min(s), r.1.max(s));
        }
    }
    let segs: Vec<(u32, u64)> = range
        .into_iter()
        .flat_map(|(t, (lo, hi))| [(t, lo), (t, hi)])
        .collect();
    crate::store::head::note_segments(repo, cluster, size, &segs).await;
}

/// A file a round of the pusher could not push.
#[derive(Debug)]
struct Failing {
    name: WalFileName,
    /// Since its first failure, as the spool recorded it ([`Spool::note_failing`]).
    for_how_long: Duration,
    why: Why,
}

/// Why a push failed, for what `queue_max` may drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Storage failed (unreachable, timing out, refusing credentials).
    Storage,
    /// The repository or the checks refused the file (a conflict, a file that changed).
    Refused,
    /// Not pushed: its timeline's history file (or an earlier one's) fails.
    HeldBack,
}

/// The longest a pusher runs before it exits (the next `archive-push` starts another, which
/// opens the repository again). A running pusher follows a `key rotate` by itself
/// ([`crate::repo::follow`]); this bounds how long it could seal under an old key epoch
/// should it fail to (see [`crate::reencrypt`]).
pub const MAX_PUSHER_RUN: Duration = Duration::from_secs(300);

/// How long a file must have been failing before `queue_max` may drop it: a repository
/// down, not one failed request (which is retried within a second).
pub const DROP_AFTER_FAILING: Duration = Duration::from_secs(30);

/// One round of the pusher: what it pushes with, and what it pushed and what failed.
struct Round<'a> {
    repo: &'a Repository,
    cluster: &'a str,
    spool: &'a Spool,
    pg_wal: &'a Path,
    opts: &'a PusherOptions,
    pushed: Vec<WalFileName>,
    failed: Vec<Failing>,
}

impl Round<'_> {
    /// Pushes `names` from `pg_wal`, `opts.jobs` at a time, acknowledging each in the spool
    /// as it completes (so PostgreSQL's call for the oldest returns while later ones still
    /// upload); records what was pushed and what failed, with how long it has been failing.
    async fn push(&mut self, names: Vec<WalFileName>) -> Result<()> {
        let Round {
            repo,
            cluster,
            spool,
            pg_wal,
            opts,
            ..
        } = *self;
        let (pushed, failed) = (&mut self.pushed, &mut self.failed);
        let mut results = Box::pin(
            futures::stream::iter(names)
                .map(|name| async move {
                    let path = pg_wal.join(name.to_string());
                    let res = async {
                        let before = file_fingerprint(&path)?;
                        let outcome = push_wal_file_unordered(
                            repo,
                            cluster,
                            &name,
                            WalSource::File(path.clone()),
                        )
                        .await?;
                        if file_fingerprint(&path)? != before {
                            return Err(Error::InvalidInput(format!(
                                "{} changed while it was archived; PostgreSQL will retry",
                                path.display()
                            )));
                        }
                        let digest = before;
                        Ok((digest, outcome))
                    }
                    .await;
                    (name, res)
                })
                .buffered(opts.jobs.max(1)),
        );
        while let Some((name, res)) = results.next().await {
            let n = name.to_string();
            match res {
                Ok((digest, outcome)) => {
                    pushed.push(name.clone());
                    let outcome = match outcome {
                        PushOutcome::Uploaded { .. } => "archived",
                        PushOutcome::AlreadyArchived => "already-archived",
                    };
                    spool.write_ack(
                        &n,
                        &Ack {
                            digest,
                            outcome: outcome.into(),
                            repository: opts.repository.clone(),
                        },
                    )?;
                }
                Err(e) => {
                    warn!(wal = %n, error = %e, "push failed");
                    spool.write_error(&n, &e.to_string())?;
                    let why = match e {
                        Error::Storage(_) => Why::Storage,
                        _ => {
                            spool.note_refused(&n);
                            Why::Refused
                        }
                    };
                    failed.push(Failing {
                        for_how_long: spool.note_failing(&n),
                        name,
                        why,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Runs the background pusher until it has been idle for `opts.idle_exit`, or for at most
/// [`MAX_PUSHER_RUN`].
/// The caller holds the pusher lock for the whole run.
pub async fn run_pusher(
    repo: &Repository,
    cluster: &str,
    spool: &Spool,
    pg_wal: &Path,
    opts: &PusherOptions,
) -> Result<()> {
    let mut idle_since = Instant::now();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let mut seg_size: Option<u64> = None;
    let mut reported_dropped = 0;
    info!(pg_wal = %pg_wal.display(), jobs = opts.jobs, "pusher started");
    loop {
        if started.elapsed() >= MAX_PUSHER_RUN {
            // The repository config (its key epoch) was read when this pusher started: after
            // a `key rotate`, WAL must soon be sealed under the new epoch, and a
            // re-encryption drops the old one only a grace period after the rotation.
            info!(
                "pusher ran {}s; exits so that the next one reads the repository config again",
                started.elapsed().as_secs()
            );
            return Ok(());
        }
        let ready = ready_files(pg_wal)?;
        spool.forget_consumed_acks(&ready);
        let todo: Vec<(WalFileName, u64)> = ready
            .iter()
            .filter(|(n, _)| spool.read_ack(&n.to_string()).is_none())
            .cloned()
            .collect();
        if todo.is_empty() {
            if idle_since.elapsed() >= opts.idle_exit {
                info!("no WAL waiting; pusher exits");
                return Ok(());
            }
            // A new .ready file is usually followed at once by its archive-push call.
            tokio::time::sleep(Duration::from_millis(3)).await;
            continue;
        }
        idle_since = Instant::now();
        // A timeline's history file first, as PostgreSQL's archiver does: while it fails (a
        // conflict with another cluster's timeline of that number after a split brain, or an
        // outage), no WAL of that timeline or a later one is pushed, or the archive would hold
        // a timeline's segments under another history.
        let (histories, segments): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .map(|(n, _)| n)
            .partition(|n| matches!(n, WalFileName::History { .. }));
        let mut round = Round {
            repo,
            cluster,
            spool,
            pg_wal,
            opts,
            pushed: Vec::new(),
            failed: Vec::new(),
        };
        round.push(histories).await?;
        let held_from = round
            .failed
            .iter()
            .filter(|f| matches!(f.name, WalFileName::History { .. }))
            .map(|f| f.name.timeline().0)
            .min();
        let (held, segments): (Vec<_>, Vec<_>) = segments
            .into_iter()
            .partition(|n| held_from.is_some_and(|t| n.timeline().0 >= t));
        for name in held {
            let n = name.to_string();
            spool.write_error(
                &n,
                &format!(
                    "held back: the history file of timeline {:08X} failed to archive (see its \
                     error); WAL of that timeline and later ones is archived after it, as \
                     PostgreSQL's archiver does",
                    held_from.unwrap_or_default()
                ),
            )?;
            round.failed.push(Failing {
                for_how_long: spool.note_failing(&n),
                name,
                why: Why::HeldBack,
            });
        }
        round.push(segments).await?;
        let Round { pushed, failed, .. } = round;
        let failed_names: Vec<WalFileName> = failed.iter().map(|f| f.name.clone()).collect();
        note_batch(repo, cluster, &pushed, &failed_names, &mut seg_size).await;
        // Drops recorded in the spool while the repository failed reach the status object once
        // pushes succeed again.
        let dropped = spool.dropped_total();
        if dropped > reported_dropped && !pushed.is_empty() {
            let res = crate::store::status::update(repo, cluster, |s| {
                let higher = dropped > s.wal_dropped_total;
                s.wal_dropped_total = s.wal_dropped_total.max(dropped);
                higher
            })
            .await;
            match res {
                Ok(_) => reported_dropped = dropped,
                Err(e) => {
                    warn!(error = %e, "could not record the dropped WAL count in the status object")
                }
            }
        }
        if failed.is_empty() {
            backoff = Duration::from_millis(250);
            continue;
        }
        if let Some(cap) = opts.queue_max {
            // What waits to be archived: `.ready` files without an ack (an acked one is
            // archived, only not yet renamed by PostgreSQL). A file is dropped only once it has
            // been failing for [`DROP_AFTER_FAILING`] (since its first failure, recorded in the
            // spool, so through the pusher's restarts): one failed request (after its own
            // retries) while the repository works, or a file that changed while it was read,
            // is retried, not dropped. A history file is dropped only while storage fails, and
            // never once the repository refused it (another cluster's timeline of that number,
            // after a split brain): acknowledged, it would let this timeline's WAL into the
            // other's. WAL held back behind a history file is not dropped: the history file is,
            // if anything, and then the WAL is pushed (and dropped) like any other.
            let backlog: u64 = ready_files(pg_wal)?
                .iter()
                .filter(|(n, _)| spool.read_ack(&n.to_string()).is_none())
                .map(|(_, s)| s)
                .sum();
            let failed: Vec<&Failing> = failed
                .iter()
                .filter(|f| f.for_how_long >= DROP_AFTER_FAILING)
                .filter(|f| match (&f.name, f.why) {
                    // PostgreSQL asks for no segment of a timeline whose history file fails:
                    // dropping one held back frees nothing, and loses it.
                    (_, Why::HeldBack) => false,
                    (WalFileName::History { .. }, why) => {
                        why == Why::Storage && !spool.was_refused(&f.name.to_string())
                    }
                    _ => true,
                })
                .collect();
            if backlog > cap && !failed.is_empty() {
                for f in &failed {
                    let n = f.name.to_string();
                    let digest = file_fingerprint(&pg_wal.join(&n)).unwrap_or_default();
                    let cause = match f.why {
                        Why::Refused => "while the repository refuses it",
                        _ => "while the repository fails",
                    };
                    warn!(wal = %n, backlog, queue_max = cap, "WAL DROPPED: backlog exceeds archive.queue_max {cause}; this file is NOT archived and point-in-time recovery across it is impossible");
                    spool.write_ack(
                        &n,
                        &Ack {
                            digest,
                            outcome: "dropped".into(),
                            repository: opts.repository.clone(),
                        },
                    )?;
                }
                let total = spool.add_dropped(failed.len() as u64)?;
                // Usually fails too (the repository is what fails); the next batch retries.
                crate::store::status::record(repo, cluster, "dropped WAL count", |s| {
                    let higher = total > s.wal_dropped_total;
                    s.wal_dropped_total = s.wal_dropped_total.max(total);
                    higher
                })
                .await;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::push_wal_file;
    use std::sync::Arc;

    const SEG: u64 = 1 << 20;

    fn seg_name(n: u64) -> WalFileName {
        format!("0000000100000000{n:08X}").parse().unwrap()
    }

    /// A repository whose first `times` creates of `key` fail (a 503 after the client's own
    /// retries), and the count of creates of it so far.
    async fn failing_creates_of(
        mem: &Arc<crate::storage::MemoryStorage>,
        key: crate::storage::ObjectKey,
        times: u32,
    ) -> (Repository, Arc<std::sync::atomic::AtomicU32>) {
        let creates = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = creates.clone();
        let hooked = crate::test_support::Hooked::new(mem.clone(), move |call| match call {
            crate::test_support::Call::Create(k, _)
                if *k == key
                    && counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < times =>
            {
                Err(crate::storage::StorageError::Transient {
                    op: "put",
                    key: k.to_string(),
                    detail: "503 Slow Down (injected)".into(),
                })
            }
            _ => Ok(()),
        });
        (
            crate::test_support::open_with(Arc::new(hooked)).await,
            creates,
        )
    }

    /// A pusher of `jobs` for these tests: quick to exit once idle.
    fn test_pusher(jobs: usize, queue_max: Option<u64>) -> PusherOptions {
        PusherOptions {
            jobs,
            idle_exit: Duration::from_millis(200),
            queue_max,
            repository: "memory://test".into(),
        }
    }

    /// A `pg_wal` under `dir` holding segments `ns` (1 MiB), each with its `.ready` file.
    fn pg_wal_with_ready(dir: &Path, ns: &[u64]) -> PathBuf {
        let pg_wal = dir.join("pg_wal");
        fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
        for &n in ns {
            let data =
                crate::pg::wal_header::tests::fake_segment(9, 1, n * SEG, SEG as u32, SEG as usize);
            fs::write(pg_wal.join(seg_name(n).to_string()), data).unwrap();
            fs::write(
                pg_wal.join(format!("archive_status/{}.ready", seg_name(n))),
                b"",
            )
            .unwrap();
        }
        pg_wal
    }

    /// `queue_max` drops a file only after it has been failing for [`DROP_AFTER_FAILING`]:
    /// one failed request (the first record of segment 3) while the repository works is
    /// retried and archived, even with the backlog over the cap (it was dropped at once).
    #[tokio::test]
    async fn one_failed_push_over_queue_max_is_retried_not_dropped() {
        let (mem, _) = crate::archive::push::tests::memory_repo().await;
        let third = crate::repo::layout::wal_pointer("main", &seg_name(3));
        let (repo, creates) = failing_creates_of(&mem, third, 1).await;
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = pg_wal_with_ready(dir.path(), &[1, 2, 3, 4]);
        let spool = Spool::open(&dir.path().join("spool"), "main").unwrap();
        let opts = test_pusher(1, Some(SEG / 2));
        run_pusher(&repo, "main", &spool, &pg_wal, &opts)
            .await
            .unwrap();
        assert!(
            creates.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the failure was injected"
        );
        for n in 1..=4 {
            let ack = spool.read_ack(&seg_name(n).to_string()).expect("acked");
            assert_eq!(ack.outcome, "archived", "segment {n}: {ack:?}");
        }
        assert_eq!(spool.dropped_total(), 0);
    }

    /// A file that has been failing since before this pusher started (the time is the
    /// spool's, not the process's: a pusher exits every few minutes, and under a slow
    /// outage each attempt takes a minute) is dropped at its next failure over the cap.
    #[tokio::test]
    async fn a_file_failing_since_an_earlier_pusher_is_dropped_over_queue_max() {
        let (mem, _) = crate::archive::push::tests::memory_repo().await;
        let second = crate::repo::layout::wal_pointer("main", &seg_name(2));
        let (repo, _) = failing_creates_of(&mem, second, u32::MAX).await;
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = pg_wal_with_ready(dir.path(), &[1, 2]);
        let spool = Spool::open(&dir.path().join("spool"), "main").unwrap();
        assert!(spool.note_failing(&seg_name(2).to_string()) < Duration::from_secs(5));
        let marker = fs::File::options()
            .write(true)
            .open(spool.root().join("failing").join(seg_name(2).to_string()))
            .unwrap();
        marker
            .set_modified(std::time::SystemTime::now() - DROP_AFTER_FAILING)
            .unwrap();
        let opts = test_pusher(1, Some(SEG / 2));
        run_pusher(&repo, "main", &spool, &pg_wal, &opts)
            .await
            .unwrap();
        assert_eq!(
            spool.read_ack(&seg_name(1).to_string()).unwrap().outcome,
            "archived"
        );
        assert_eq!(
            spool.read_ack(&seg_name(2).to_string()).unwrap().outcome,
            "dropped"
        );
        assert_eq!(spool.dropped_total(), 1);
        assert!(
            !spool
                .root()
                .join("failing")
                .join(seg_name(2).to_string())
                .exists(),
            "its failure time goes with its ack"
        );
    }

    /// Segment 0x10 (a multiple of 16: the pushes that raise the catalog head's high-water
    /// mark) finishes while 0x0F, pushed beside it, fails: until 0x0F is archived, fetching it
    /// must say "not archived yet" (exit 1: PostgreSQL waits or ends recovery there), never
    /// "deleted outside pgcairn" (exit 200: recovery aborts), which it said once 0x10 raised the
    /// mark from inside the push.
    #[tokio::test]
    async fn a_segment_pushed_beside_a_failing_lower_one_does_not_mark_it_archived() {
        let (mem, _) = crate::archive::push::tests::memory_repo().await;
        let lower = crate::repo::layout::wal_pointer("main", &seg_name(0x0F));
        let (repo, creates) = failing_creates_of(&mem, lower, 2).await;
        // The head records timeline 1 from segment 1 on, as after any earlier push.
        let first = crate::pg::wal_header::tests::fake_segment(9, 1, SEG, SEG as u32, SEG as usize);
        push_wal_file(&repo, "main", &seg_name(1), WalSource::Bytes(first))
            .await
            .unwrap();
        crate::store::head::note_segments(&repo, "main", SEG, &[(1, 1)]).await;
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = pg_wal_with_ready(dir.path(), &[0x0F, 0x10]);
        let spool = Spool::open(&dir.path().join("spool"), "main").unwrap();
        let opts = test_pusher(2, None);
        let pusher = {
            let (repo, pg_wal, spool_dir) =
                (repo.clone(), pg_wal.clone(), dir.path().join("spool"));
            tokio::spawn(async move {
                let spool = Spool::open(&spool_dir, "main").unwrap();
                run_pusher(&repo, "main", &spool, &pg_wal, &opts).await
            })
        };
        let mut looked = 0;
        while !pusher.is_finished() {
            match crate::archive::get::get_wal_file(&repo, "main", &seg_name(0x0F)).await {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => panic!("0x0F while it was still failing: {e}"),
            }
            looked += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pusher.await.unwrap().unwrap();
        assert!(creates.load(std::sync::atomic::Ordering::SeqCst) >= 3 && looked > 10);
        assert_eq!(
            spool.read_ack(&seg_name(0x0F).to_string()).unwrap().outcome,
            "archived"
        );
        crate::archive::get::get_wal_file(&repo, "main", &seg_name(0x0F))
            .await
            .unwrap();
    }

    /// After a split brain the repository's timeline 2 is another cluster's: this one's
    /// timeline 2 history file is refused (a conflict), beside its segment 5 of timeline 2 and
    /// segment 4 of timeline 1. Runs a pusher with `queue_max` over that, every file failing
    /// for long already, until it has answered for both segments and gone round again.
    /// Returns the spool and the repository's storage.
    async fn split_brain_push(
        queue_max: Option<u64>,
    ) -> (tempfile::TempDir, Spool, Arc<crate::storage::MemoryStorage>) {
        let (mem, repo) = crate::archive::push::tests::memory_repo().await;
        let theirs = b"1\t0/5000000\tanother cluster's fork\n".to_vec();
        push_wal_file(&repo, "main", &history2(), WalSource::Bytes(theirs))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = pg_wal_with_ready(dir.path(), &[4]);
        let data =
            crate::pg::wal_header::tests::fake_segment(9, 2, 5 * SEG, SEG as u32, SEG as usize);
        fs::write(pg_wal.join(tl2_seg5().to_string()), data).unwrap();
        fs::write(
            pg_wal.join("00000002.history"),
            b"1\t0/4800000\tthis fork\n",
        )
        .unwrap();
        let spool = Spool::open(&dir.path().join("spool"), "main").unwrap();
        for n in [history2().to_string(), tl2_seg5().to_string()] {
            fs::write(pg_wal.join(format!("archive_status/{n}.ready")), b"").unwrap();
            spool.note_failing(&n);
            fs::File::options()
                .write(true)
                .open(spool.root().join("failing").join(&n))
                .unwrap()
                .set_modified(std::time::SystemTime::now() - DROP_AFTER_FAILING)
                .unwrap();
        }
        let pusher = {
            let (repo, spool_dir) = (repo.clone(), dir.path().join("spool"));
            tokio::spawn(async move {
                let spool = Spool::open(&spool_dir, "main").unwrap();
                run_pusher(&repo, "main", &spool, &pg_wal, &test_pusher(2, queue_max)).await
            })
        };
        let tl2 = tl2_seg5().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while spool.read_ack(&seg_name(4).to_string()).is_none()
            || (spool.read_error(&tl2).is_none() && spool.read_ack(&tl2).is_none())
        {
            assert!(Instant::now() < deadline, "the pusher never got to them");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        pusher.abort();
        assert_eq!(
            spool.read_ack(&seg_name(4).to_string()).unwrap().outcome,
            "archived",
            "the old timeline's WAL goes on"
        );
        assert!(
            spool.read_ack(&history2().to_string()).is_none(),
            "a refused history file is never acknowledged, dropped or not"
        );
        let conflict = spool.read_error(&history2().to_string()).unwrap();
        assert!(!conflict.contains("held back"), "{conflict}");
        assert!(
            matches!(
                crate::archive::get::get_wal_file(&repo, "main", &tl2_seg5()).await,
                Err(Error::NotFound(_))
            ),
            "timeline 2's segment never goes under another cluster's history"
        );
        (dir, spool, mem)
    }

    fn history2() -> WalFileName {
        "00000002.history".parse().unwrap()
    }

    fn tl2_seg5() -> WalFileName {
        "000000020000000000000005".parse().unwrap()
    }

    /// A failing history file holds back its timeline's WAL (pushed beside it, this
    /// cluster's timeline 2 segments went into the other cluster's timeline 2).
    #[tokio::test]
    async fn a_failing_history_file_holds_back_its_timelines_wal() {
        let (_dir, spool, _) = split_brain_push(None).await;
        assert!(spool.read_ack(&tl2_seg5().to_string()).is_none());
        let held = spool.read_error(&tl2_seg5().to_string()).unwrap();
        assert!(held.contains("held back"), "{held}");
    }

    /// Over `queue_max`, neither the history file the repository refuses (once acknowledged,
    /// the timeline's later WAL would go into the other cluster's timeline) nor the segment
    /// held back behind it (PostgreSQL asks for none while its history file fails: dropping it
    /// would free nothing, and lose it) is dropped; nor the history file when one later round
    /// fails on storage: the refusal stays until its ack.
    #[tokio::test]
    async fn queue_max_drops_neither_a_refused_history_file_nor_the_wal_it_holds_back() {
        let (dir, spool, mem) = split_brain_push(Some(1)).await;
        assert!(spool.read_ack(&tl2_seg5().to_string()).is_none());
        assert!(spool.was_refused(&history2().to_string()));
        // A round in which storage fails for the history file.
        let key = crate::repo::layout::wal_pointer("main", &history2());
        let failing = crate::test_support::Hooked::new(mem, move |call| match call {
            crate::test_support::Call::Read(k) if *k == key => {
                Err(crate::storage::StorageError::Transient {
                    op: "get",
                    key: k.to_string(),
                    detail: "503 Slow Down (injected)".into(),
                })
            }
            _ => Ok(()),
        });
        let repo = crate::test_support::open_with(Arc::new(failing)).await;
        let pg_wal = dir.path().join("pg_wal");
        let opts = test_pusher(2, Some(1));
        let pusher = run_pusher(&repo, "main", &spool, &pg_wal, &opts);
        let _ = tokio::time::timeout(Duration::from_millis(800), pusher).await;
        let error = spool.read_error(&history2().to_string()).unwrap();
        assert!(
            error.contains("503"),
            "the round failed on storage: {error}"
        );
        assert!(
            spool.read_ack(&history2().to_string()).is_none(),
            "refused before, so never dropped"
        );
    }

    #[tokio::test]
    async fn a_batch_raises_the_high_water_mark_only_below_its_first_failure() {
        let (_mem, repo) = crate::archive::push::tests::memory_repo().await;
        const SEG: u64 = 1 << 20;
        let name = |n: u64| -> WalFileName { format!("0000000100000000{n:08X}").parse().unwrap() };
        for n in 1..=5 {
            let data =
                crate::pg::wal_header::tests::fake_segment(9, 1, n * SEG, SEG as u32, SEG as usize);
            push_wal_file(&repo, "main", &name(n), WalSource::Bytes(data))
                .await
                .unwrap();
        }
        let high = |h: &crate::store::head::CatalogHead| h.timelines.get(&1).map(|t| t.high);
        let head = crate::store::head::read(&repo, "main")
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(high(&head), None, "no multiple of 16 pushed yet");
        let mut size = None;
        let pushed: Vec<WalFileName> = [1, 2, 3, 5].into_iter().map(name).collect();
        note_batch(&repo, "main", &pushed, &[name(4)], &mut size).await;
        assert_eq!(size, Some(SEG));
        let head = crate::store::head::read(&repo, "main")
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(high(&head), Some(3), "not past the failed segment 4");
        note_batch(&repo, "main", &[name(4), name(5)], &[], &mut size).await;
        let head = crate::store::head::read(&repo, "main")
            .await
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(high(&head), Some(5));
        assert_eq!(head.timelines[&1].first, 1);
    }

    #[test]
    fn ready_files_put_history_first_and_ignore_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("archive_status");
        fs::create_dir(&status).unwrap();
        for f in [
            "000000020000000000000003.ready",
            "00000002.history.ready",
            "000000010000000000000002.ready",
            "000000010000000000000001.done",
            "junk.ready",
        ] {
            fs::write(status.join(f), b"").unwrap();
        }
        let names: Vec<String> = ready_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "00000002.history",
                "000000010000000000000002",
                "000000020000000000000003"
            ]
        );
    }

    #[test]
    fn acks_match_only_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "main").unwrap();
        let name = "000000010000000000000001";
        spool
            .write_ack(
                name,
                &Ack {
                    digest: "fp-a".to_string(),
                    outcome: "archived".into(),
                    repository: "s3://a/x".into(),
                },
            )
            .unwrap();
        let _lock = spool.try_lock_pusher().unwrap().unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            wait_for_ack(&spool, name, "fp-a", "s3://a/x", soon).unwrap(),
            WaitOutcome::Acked(_)
        ));
        // Pushed by a pusher started for another repository: not taken, and kept.
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            wait_for_ack(&spool, name, "fp-a", "s3://b/x", soon).unwrap(),
            WaitOutcome::OtherRepository("s3://a/x".into())
        );
        assert!(spool.read_ack(name).is_some());
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            wait_for_ack(&spool, name, "fp-b", "s3://a/x", soon).unwrap(),
            WaitOutcome::TimedOut
        );
        assert!(spool.read_ack(name).is_none(), "a stale ack is forgotten");
        spool.write_error(name, "boom").unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            wait_for_ack(&spool, name, "x", "s3://a/x", soon).unwrap(),
            WaitOutcome::Failed("boom".into())
        );
    }
}
