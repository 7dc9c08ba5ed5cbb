//! archive-get prefetch: keep the next segments fetched and verified in the spool, so
//! recovery does not wait on an object-store round trip per 16 MiB segment.
//!
//! Layout: `<spool>/<cluster>/prefetch/<area key>/<WAL name>` (verified contents),
//! `.requested` (the last name PostgreSQL asked for), `prefetcher.lock`, `.repository` (the id
//! of the repository the segments came from), `.datadir` (the data directory recovering). The
//! area key is a hash of where the repository is (URL, and the endpoint, region or account the
//! URL does not name) and of the data directory ([`super::prefetch_area`]): a spool is shared by
//! every recovery of a cluster name on a host, a segment prefetched from one repository must
//! never be served to a recovery fetching from another (a cluster of the same name elsewhere;
//! PostgreSQL would take its WAL for the end of the archive and end recovery early), and two
//! recoveries from one repository (a standby and a side PITR restore) must not take each
//! other's requests for their own. A prefetcher starting in an area whose `.repository` names another repository (one
//! re-created at the same place, or reached through an environment variable the key does not
//! see) removes every segment there first. With `[archive] async = true`,
//! `archive-get X`:
//! 1. records X as requested and, if `prefetch/X` exists, moves it to `%p` (same file system:
//!    rename; else copy; no fsync, see [`get_wal_file_to`]) and is done;
//! 2. makes sure a background prefetcher runs;
//! 3. if the prefetcher is fetching X right now (marker `.X.fetching`, written while a fetch
//!    runs), waits for it rather than fetching the same segment a second time, which happens
//!    when recovery replays faster than the prefetcher fetches;
//! 4. otherwise fetches X itself as in synchronous mode.
//!
//! The prefetcher fetches the `count` segments after the last requested one **on its timeline**
//! (names carry the timeline, so a file is only ever served under its own name), removes
//! segments behind the requested one and any from other timelines, and exits when PostgreSQL
//! stops asking. What it fetched ahead stays for the next recovery from the same repository:
//! a standby whose recovery pauses (`recovery_min_apply_delay`, a paused replay) would
//! otherwise fetch the same window again after every pause. Every file in the spool passed the
//! same checks as a direct archive-get (authentication, content id, page header against the
//! name). A segment that does not exist yet (nor any after it) is asked for again after
//! [`ABSENT_RETRY`], then after twice as long each time it is still absent, up to
//! [`ABSENT_RETRY_MAX`], also across prefetchers ([`ArchiveEnd`]): a standby that has caught up with the archive asks for
//! the next segment until it appears, and polling for it four times a second for hours is
//! requests paid for on an object store. The backoff delays prefetching only, never replay:
//! archive-get fetches a segment that is not in the spool itself.
//!
//! The prefetcher keeps `jobs` fetches in flight at all times, always of the nearest missing
//! segments of the window, and refills the window as soon as one lands or PostgreSQL asks for
//! a later segment. (It used to work in rounds: fetch the window, wait for the whole round,
//! look again; while the slowest fetch of a round finished, the other job sat idle and the
//! window did not move with recovery.)
//!
//! # Does replay wait?
//!
//! Every archive-get of a segment through the spool is counted in `get-stats.json`
//! ([`GetStats`]): served at once from the spool, served after waiting for the prefetcher's
//! fetch of that segment, fetched by archive-get itself, or absent; and the seconds spent in
//! the calls that were not served at once. Those seconds are the time replay stood still
//! waiting for WAL. PostgreSQL calls `restore_command` one call at a time, so the
//! read-modify-write of the file needs no lock (a hand-run archive-get at the same moment
//! could lose one count: these are statistics). Drills and the benchmarks read it before and
//! after a recovery and report the difference.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::archive::get::{get_wal_file_to, write_atomically};
use crate::error::{Error, Result};
use crate::private_fs::Durability;
use crate::repo::Repository;
use crate::types::{SegmentNo, WalFileName};

/// The prefetch area of one cluster's spool.
#[derive(Debug, Clone)]
pub struct PrefetchSpool {
    /// The spool directory it was opened in.
    root: PathBuf,
    dir: PathBuf,
    /// The data directory recovering through it.
    datadir: PathBuf,
}

impl PrefetchSpool {
    /// Opens (creating) `<spool_dir>/<cluster>/prefetch/<area key>/`, the prefetch area of
    /// the recovery of `datadir` from one repository (`repository`: where it is,
    /// [`repository_identity`]): two repositories holding a cluster of the same name never
    /// serve each other's WAL, and two data directories never share their requests.
    pub fn open(spool_dir: &Path, cluster: &str, repository: &str, datadir: &Path) -> Result<Self> {
        let dir = Self::dir_for(spool_dir, cluster, repository, datadir);
        crate::private_fs::check_own_tree(spool_dir, &dir)
            .map_err(|e| Error::io("archive.spool_dir".to_string(), e))?;
        crate::private_fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {} (archive.spool_dir)", dir.display()), e))?;
        crate::archive::prefetch_area::record_datadir(&dir, datadir)
            .map_err(|e| Error::io(format!("writing {}", dir.display()), e))?;
        Ok(PrefetchSpool {
            root: spool_dir.to_path_buf(),
            dir,
            datadir: datadir.to_path_buf(),
        })
    }

    /// Opens the prefetch area only if it exists: the background prefetcher, started by an
    /// archive-get that created it, never recreates a spool removed meanwhile (a drill's, with
    /// its work directory). Its directories are checked again as [`Self::open`] checks them
    /// (this user's own, no link below the spool directory): the prefetcher sweeps the areas
    /// beside this one.
    pub fn open_existing(
        spool_dir: &Path,
        cluster: &str,
        repository: &str,
        datadir: &Path,
    ) -> Result<Self> {
        let dir = Self::dir_for(spool_dir, cluster, repository, datadir);
        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "{} (archive.spool_dir) is gone",
                dir.display()
            )));
        }
        crate::private_fs::check_own_tree(spool_dir, &dir)
            .map_err(|e| Error::io("archive.spool_dir".to_string(), e))?;
        Ok(PrefetchSpool {
            root: spool_dir.to_path_buf(),
            dir,
            datadir: datadir.to_path_buf(),
        })
    }

    /// The area of the recovery of `datadir` from the repository at `repository`
    /// ([`repository_identity`]), see [`crate::archive::prefetch_area::area_dir`].
    pub fn dir_for(spool_dir: &Path, cluster: &str, repository: &str, datadir: &Path) -> PathBuf {
        crate::archive::prefetch_area::area_dir(spool_dir, cluster, repository, datadir)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory whose recovery it serves.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// The spool directory it was opened in (the root of [`Self::dir`]).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn requested_path(&self) -> PathBuf {
        self.dir.join(".requested")
    }

    /// Records the name PostgreSQL asked for.
    pub fn set_requested(&self, name: &WalFileName) -> Result<()> {
        crate::private_fs::replace(&self.requested_path(), name.to_string().as_bytes())
            .map_err(|e| Error::io(format!("writing {}", self.requested_path().display()), e))
    }

    /// The last name PostgreSQL asked for.
    pub fn requested(&self) -> Option<WalFileName> {
        fs::read_to_string(self.requested_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Lock file of the prefetcher.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("prefetcher.lock")
    }

    /// Tries to take the prefetcher lock.
    pub fn try_lock(&self) -> Result<Option<fs::File>> {
        crate::archive::spool::try_lock_file(&self.lock_path())
    }

    /// Moves a prefetched file to `dest` if there is one; true if it did. With the system
    /// identifier of the cluster recovering (its `pg_control`), a segment whose first page
    /// names another cluster is never served: it can only have come from another repository
    /// whose area this one shares (a repository re-created at the same place, an endpoint
    /// given through the environment), before a prefetcher of this repository adopted the area
    /// ([`Self::adopt`]), and PostgreSQL would take it for the end of the archive and end
    /// recovery early. Every segment here is removed then, and archive-get fetches its own.
    pub fn take(
        &self,
        name: &WalFileName,
        dest: &Path,
        system_identifier: Option<u64>,
    ) -> Result<bool> {
        let src = self.dir.join(name.to_string());
        if let Some(want) = system_identifier {
            match of_cluster(&src, want) {
                Some(true) => {}
                // Not there (or gone: the prefetcher cleaned it).
                None => return Ok(false),
                Some(false) => {
                    tracing::warn!(
                        wal = %name,
                        dir = %self.dir.display(),
                        "a prefetched segment is of another cluster than the one recovering (system identifier {want}): \
                         every prefetched segment here is removed and the segment fetched directly"
                    );
                    self.purge();
                    return Ok(false);
                }
            }
        }
        let err = |e| Error::io(format!("moving {} to {}", src.display(), dest.display()), e);
        match fs::rename(&src, dest) {
            Ok(()) => {}
            // Gone between the check and the rename (the prefetcher cleaned it): not there,
            // archive-get fetches it from the repository instead.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // Another file system: copy (atomically; no fsync, as for a direct fetch, see
            // `get_wal_file_to`), then drop the spool copy.
            Err(e) if e.raw_os_error() == Some(18) => {
                let data = fs::read(&src).map_err(err)?;
                write_atomically(dest, &data, Durability::Atomic)?;
                let _ = fs::remove_file(&src);
                return Ok(true);
            }
            Err(e) => return Err(err(e)),
        }
        // No fsync of `dest`'s directory: PostgreSQL renames durably what it keeps, and after
        // a crash asks for the segment again.
        Ok(true)
    }

    /// Removes files behind `requested` on its timeline (not `requested` itself: archive-get
    /// is taking it) and every file of another timeline.
    pub fn clean(&self, requested: &WalFileName, seg_size: u64) {
        let (Some(req_seg), tli) = (requested.segment(), requested.timeline()) else {
            return;
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(name) = e.file_name().to_string_lossy().parse::<WalFileName>() else {
                continue;
            };
            let stale = name.timeline() != tli
                || name
                    .segment()
                    .is_some_and(|s| s.absolute(seg_size) < req_seg.absolute(seg_size));
            if stale {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Removes every prefetched segment (the counters and the request stay).
    fn purge(&self) {
        for name in self.files() {
            let _ = fs::remove_file(self.dir.join(name));
        }
    }

    /// Makes the area the prefetch area of repository `repo_id` (the prefetcher at start,
    /// holding the lock): segments fetched from another repository, named in `.repository`,
    /// are removed, as are temporary files a killed fetch left and segments of the layout
    /// before areas were per repository (directly in `<cluster>/prefetch/`). True when it
    /// removed segments of another repository.
    pub fn adopt(&self, repo_id: &str) -> Result<bool> {
        let path = self.dir.join(".repository");
        let known = crate::untrusted_file::read_capped(&path, 1024).ok();
        let other = known.as_deref() != Some(repo_id.as_bytes());
        if other {
            self.purge();
        }
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let wal_temp = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(".tmp"))
                .and_then(|n| n.split('.').next())
                .is_some_and(|n| n.parse::<WalFileName>().is_ok());
            if wal_temp {
                let _ = fs::remove_file(e.path());
            }
        }
        if let Some(old) = self.dir.parent() {
            for e in fs::read_dir(old).into_iter().flatten().flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .parse::<WalFileName>()
                    .is_ok()
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        if other {
            // Where another repository's archive ended says nothing about this one's.
            let _ = fs::remove_file(self.archive_end_path());
            crate::private_fs::replace(&path, repo_id.as_bytes())
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(other && known.is_some())
    }

    fn archive_end_path(&self) -> PathBuf {
        self.dir.join(".archive-end")
    }

    fn fetching_path(&self, name: &WalFileName) -> PathBuf {
        self.dir.join(format!(".{name}.fetching"))
    }

    /// Marks `name` as being fetched by the prefetcher while the returned guard lives.
    pub fn mark_fetching(&self, name: &WalFileName) -> FetchingMark {
        let path = self.fetching_path(name);
        let _ = crate::private_fs::write(&path, b"");
        FetchingMark(path)
    }

    /// Removes every fetching marker (the prefetcher at start: it holds the lock, so any
    /// marker is left over from one that was killed).
    pub fn clear_marks(&self) {
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".fetching") {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// If the prefetcher is fetching `name` now (a marker younger than [`MARK_STALE`]), waits
    /// until it is done or `max` has passed. True when the file is in the spool.
    pub fn wait_if_fetching(&self, name: &WalFileName, max: Duration) -> bool {
        let file = self.dir.join(name.to_string());
        let marker = self.fetching_path(name);
        let deadline = Instant::now() + max;
        loop {
            if file.exists() {
                return true;
            }
            let fresh = fs::metadata(&marker)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < MARK_STALE);
            if !fresh || Instant::now() >= deadline {
                return file.exists();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stats_path(&self) -> PathBuf {
        self.dir.join("get-stats.json")
    }

    /// The counters of archive-get calls through this spool (zero when there are none, or
    /// when the file is not a small regular file: a drill run as root reads the counters its
    /// instance's user wrote, see [`crate::untrusted_file`]).
    pub fn stats(&self) -> GetStats {
        crate::untrusted_file::read_capped(&self.stats_path(), STATS_MAX)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// [`Self::stats`], read by a process that trusts `trusted` (a directory above the spool)
    /// but not the user who owns the spool: no directory between the two may be a link (a
    /// drill's spool belongs to its instance's user, [`crate::untrusted_file`]).
    pub fn stats_beneath(&self, trusted: &Path) -> GetStats {
        let stats = self.stats_path();
        stats
            .strip_prefix(trusted)
            .ok()
            .and_then(|rel| {
                crate::untrusted_file::read_capped_beneath(trusted, rel, STATS_MAX).ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Counts one archive-get call of a segment that took `elapsed`.
    pub fn record(&self, outcome: GetOutcome, elapsed: Duration) -> Result<()> {
        let mut s = self.stats();
        s.add(outcome, elapsed);
        let body = serde_json::to_vec(&s).expect("stats serialise");
        crate::private_fs::replace(&self.stats_path(), &body)
            .map_err(|e| Error::io(format!("writing {}", self.stats_path().display()), e))
    }

    /// Prefetched file names currently in the spool.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.parse::<WalFileName>().is_ok())
            .collect();
        v.sort();
        v
    }
}

/// Does the segment at `path` begin with the long page header of the cluster whose system
/// identifier is `want`? `None` when there is no such file; unreadable or not a segment counts
/// as no.
fn of_cluster(path: &Path, want: u64) -> Option<bool> {
    use crate::pg::wal_header::{read_head, LongPageHeader};
    match read_head(path) {
        Ok(head) => Some(LongPageHeader::parse(&head).is_ok_and(|h| h.system_identifier == want)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(false),
    }
}

/// What says where a repository is, for [`PrefetchSpool::dir_for`]: its URL and the options
/// that place it where the URL does not (`endpoint`, `region`, `account_name`: two MinIO
/// servers can both hold `s3://backups/pg`). Never credentials.
pub fn repository_identity(
    url: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut id = url.to_string();
    for key in ["endpoint", "region", "account_name"] {
        if let Some(v) = options.get(key) {
            id.push_str(&format!("\n{key}={v}"));
        }
    }
    id
}

/// How one archive-get call of a segment was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOutcome {
    /// The segment was in the spool already: replay did not wait for it.
    FromSpool,
    /// The prefetcher was fetching it; archive-get waited for that fetch.
    Waited,
    /// archive-get fetched it from the repository itself.
    Direct,
    /// Not in the archive (the end of the archive, or a probe).
    Absent,
}

/// Counters of archive-get calls of segments through one spool (`get-stats.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GetStats {
    /// Calls counted.
    pub calls: u64,
    /// Served at once from the spool.
    pub from_spool: u64,
    /// Served after waiting for the prefetcher's fetch of the same segment.
    pub waited: u64,
    /// Fetched by archive-get itself (not prefetched in time).
    pub direct: u64,
    /// Absent from the archive.
    pub absent: u64,
    /// Seconds in calls that were not served at once (waited, direct): replay stood still.
    pub wait_seconds: f64,
    /// Seconds in all calls.
    pub total_seconds: f64,
}

impl GetStats {
    /// Adds one call.
    pub fn add(&mut self, outcome: GetOutcome, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.calls += 1;
        self.total_seconds += secs;
        match outcome {
            GetOutcome::FromSpool => self.from_spool += 1,
            GetOutcome::Waited => self.waited += 1,
            GetOutcome::Direct => self.direct += 1,
            GetOutcome::Absent => self.absent += 1,
        }
        if matches!(outcome, GetOutcome::Waited | GetOutcome::Direct) {
            self.wait_seconds += secs;
        }
    }

    /// Calls where replay waited for WAL (served after a wait or fetched directly).
    pub fn waits(&self) -> u64 {
        self.waited + self.direct
    }

    /// What was counted since `earlier` (a snapshot of the same file).
    pub fn since(&self, earlier: &GetStats) -> GetStats {
        GetStats {
            calls: self.calls.saturating_sub(earlier.calls),
            from_spool: self.from_spool.saturating_sub(earlier.from_spool),
            waited: self.waited.saturating_sub(earlier.waited),
            direct: self.direct.saturating_sub(earlier.direct),
            absent: self.absent.saturating_sub(earlier.absent),
            wait_seconds: (self.wait_seconds - earlier.wait_seconds).max(0.0),
            total_seconds: (self.total_seconds - earlier.total_seconds).max(0.0),
        }
    }

    /// One line for people: "12 segments: 11 from the prefetch spool, 1 waited (0.04 s)".
    pub fn summary(&self) -> String {
        format!(
            "{} segment requests: {} from the prefetch spool, {} waited for the prefetcher, {} fetched directly, {} absent; replay waited {:.2} s for WAL",
            self.calls, self.from_spool, self.waited, self.direct, self.absent, self.wait_seconds
        )
    }
}

/// Milliseconds since the epoch.
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The largest `get-stats.json` read (the real one is a few hundred bytes).
const STATS_MAX: u64 = 64 * 1024;

/// How long a segment found absent (and every one after it) is not asked for again, the
/// first time.
pub const ABSENT_RETRY: Duration = Duration::from_millis(250);
/// The longest wait before a segment still absent is asked for again: PostgreSQL's own
/// `wal_retrieve_retry_interval` (5 s by default), how often a standby asks archive-get.
pub const ABSENT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the archive ends as far as the prefetcher knows: the first segment found absent,
/// when it may be asked for again, and how long the next wait will be. Nothing at or after
/// that segment is fetched before then. Kept in the area (`.archive-end`) across prefetchers:
/// a standby waiting at the end of the archive asks for the same segment again and again, which
/// is no new request, so its prefetcher exits after `idle_exit` and the next call starts
/// another; without the file each would start over at the shortest wait.
#[derive(Debug, PartialEq)]
struct ArchiveEnd {
    end: Option<(u64, Instant)>,
    wait: Duration,
}

/// [`ArchiveEnd`] as `.archive-end` holds it (wall-clock time: instants do not outlive the
/// process).
#[derive(Debug, Serialize, Deserialize)]
struct SavedArchiveEnd {
    segment: u64,
    until_unix_ms: u64,
    wait_ms: u64,
}

/// The largest `.archive-end` read.
const ARCHIVE_END_MAX: u64 = 1024;

impl ArchiveEnd {
    fn new() -> Self {
        ArchiveEnd {
            end: None,
            wait: ABSENT_RETRY,
        }
    }

    /// The end the area's last prefetcher left (none when there is no readable file).
    fn load(spool: &PrefetchSpool) -> Self {
        let saved: Option<SavedArchiveEnd> =
            crate::untrusted_file::read_capped(&spool.archive_end_path(), ARCHIVE_END_MAX)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(saved) = saved else {
            return ArchiveEnd::new();
        };
        let now_ms = unix_ms(std::time::SystemTime::now());
        let left = Duration::from_millis(saved.until_unix_ms.saturating_sub(now_ms));
        ArchiveEnd {
            end: Some((saved.segment, Instant::now() + left.min(ABSENT_RETRY_MAX))),
            wait: Duration::from_millis(saved.wait_ms).clamp(ABSENT_RETRY, ABSENT_RETRY_MAX),
        }
    }

    /// Writes the end to the area (or removes the file when there is none); a failure costs
    /// only the backoff of the next prefetcher.
    fn save(&self, spool: &PrefetchSpool) {
        let path = spool.archive_end_path();
        let Some((segment, until)) = self.end else {
            let _ = fs::remove_file(&path);
            return;
        };
        let left = until.saturating_duration_since(Instant::now());
        let saved = SavedArchiveEnd {
            segment,
            until_unix_ms: unix_ms(std::time::SystemTime::now() + left),
            wait_ms: self.wait.as_millis() as u64,
        };
        let body = serde_json::to_vec(&saved).expect("archive end serialises");
        let _ = crate::private_fs::replace(&path, &body);
    }

    /// May segment `abs` be fetched at `now`? Past the end nothing is; the end itself once its
    /// wait is over (one request: whatever follows it cannot be there before it is).
    fn allows(&self, abs: u64, now: Instant) -> bool {
        match self.end {
            Some((a, until)) if abs >= a => abs == a && now >= until,
            _ => true,
        }
    }

    /// A fetch of `abs` found it absent (or failed) at `now`. The same end found again waits
    /// twice as long as the last time; an earlier one starts over. True if the end changed.
    fn absent(&mut self, abs: u64, now: Instant) -> bool {
        match self.end {
            Some((a, until)) if abs > a || (abs == a && now < until) => return false,
            Some((a, _)) if abs == a => self.wait = (self.wait * 2).min(ABSENT_RETRY_MAX),
            _ => self.wait = ABSENT_RETRY,
        }
        self.end = Some((abs, now + self.wait));
        true
    }

    /// Segment `abs` exists: it was fetched, or PostgreSQL asks for a later one (it has
    /// replayed it). The end has moved past it. True if the end changed.
    fn reached(&mut self, abs: u64) -> bool {
        if matches!(self.end, Some((a, _)) if abs >= a) {
            *self = ArchiveEnd::new();
            return true;
        }
        false
    }
}

/// A fetching marker older than this is left over (a fetch gives up well before).
pub const MARK_STALE: Duration = Duration::from_secs(120);

/// Removes its fetching marker when dropped (also when the fetch is cancelled).
#[derive(Debug)]
pub struct FetchingMark(PathBuf);

impl Drop for FetchingMark {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Options of the prefetcher.
#[derive(Debug, Clone)]
pub struct PrefetchOptions {
    /// Segments kept ahead of the requested one.
    pub count: usize,
    /// Parallel fetches.
    pub jobs: usize,
    /// Exit after this long without a new request.
    pub idle_exit: Duration,
    /// Exit after this long in any case ([`MAX_PREFETCHER_RUN`]).
    pub max_run: Duration,
}

/// How long one prefetcher runs at most; the next `archive-get` starts another (which sets a
/// long log aside and opens the repository again, as a pusher after [`MAX_PUSHER_RUN`]). A
/// standby replaying from the archive asks without pause for months: without a bound, one
/// process would run all that time, its log never set aside.
///
/// [`MAX_PUSHER_RUN`]: crate::archive::spool::MAX_PUSHER_RUN
pub const MAX_PREFETCHER_RUN: Duration = Duration::from_secs(300);

/// Runs the prefetcher until PostgreSQL stops asking, or for at most [`MAX_PREFETCHER_RUN`].
/// The caller holds the lock.
pub async fn run_prefetcher(
    repo: &Repository,
    cluster: &str,
    spool: &PrefetchSpool,
    seg_size: u64,
    opts: &PrefetchOptions,
) -> Result<()> {
    spool.clear_marks();
    if spool.adopt(&repo.config().repo_id)? {
        tracing::info!(dir = %spool.dir().display(), "prefetched segments of another repository removed");
    }
    // Beside the fetches, on a thread of its own that the process does not wait for: it
    // looks at the data directories other areas name, and one on a hung mount must not hold
    // up this recovery's prefetch (nor its exit).
    let area = spool.dir().to_path_buf();
    std::thread::spawn(move || {
        let swept = crate::archive::prefetch_area::sweep_abandoned(&area);
        if swept > 0 {
            tracing::info!(
                swept,
                "removed prefetch areas whose data directory is gone, of this data directory under a repository's old address, or of the layout before areas were per data directory"
            );
        }
    });
    let mut last_seen: Option<WalFileName> = None;
    let mut idle_since = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut fetching: Vec<WalFileName> = Vec::new();
    // Nothing at or after the first segment found absent is asked for again until its wait
    // has passed (or a fetch in flight finds it there after all).
    let mut archive_end = ArchiveEnd::load(spool);
    let started = Instant::now();
    loop {
        // A drill's spool goes with its work directory: nothing left to prefetch for.
        if !spool.dir().exists() {
            return Ok(());
        }
        // Past its maximum run it starts nothing new and exits once its fetches have landed:
        // with two jobs or more, one is always in flight while recovery keeps asking.
        let ending = started.elapsed() >= opts.max_run;
        if ending && in_flight.is_empty() {
            tracing::info!("prefetcher ran its maximum time; the next archive-get starts another");
            return Ok(());
        }
        let req = spool.requested();
        if req.is_some() && last_seen != req {
            idle_since = Instant::now();
            last_seen = req.clone();
        } else if idle_since.elapsed() > opts.idle_exit && in_flight.is_empty() {
            return Ok(());
        }
        if let Some(req) = &req {
            spool.clean(req, seg_size);
        }
        if let Some((seg, tli)) = req
            .as_ref()
            .and_then(|r| Some((r.segment()?, r.timeline())))
        {
            let base = seg.absolute(seg_size);
            // PostgreSQL asks for a segment only once it has replayed the one before.
            if archive_end.reached(base.saturating_sub(1)) {
                archive_end.save(spool);
            }
            let now = Instant::now();
            let free = if ending {
                0
            } else {
                opts.jobs.max(1).saturating_sub(in_flight.len())
            };
            let next: Vec<WalFileName> = (1..=opts.count as u64)
                .map(|i| base + i)
                .take_while(|abs| archive_end.allows(*abs, now))
                .map(|abs| WalFileName::Segment {
                    tli,
                    segno: SegmentNo::from_absolute(abs, seg_size),
                })
                .filter(|n| !fetching.contains(n) && !spool.dir().join(n.to_string()).exists())
                .take(free)
                .collect();
            for name in next {
                fetching.push(name.clone());
                in_flight.push(async move {
                    let path = spool.dir().join(name.to_string());
                    let _mark = spool.mark_fetching(&name);
                    let r = get_wal_file_to(repo, cluster, &name, &path, Durability::Durable).await;
                    (name, r)
                });
            }
        }
        if in_flight.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // A landed fetch frees a job; a new request moves the window: look again either way.
        let landed = tokio::select! {
            r = in_flight.next() => r,
            _ = tokio::time::sleep(Duration::from_millis(20)) => None,
        };
        if let Some((name, r)) = landed {
            fetching.retain(|n| *n != name);
            let abs = name.segment().map(|s| s.absolute(seg_size)).unwrap_or(0);
            let changed = match r {
                Ok(()) => archive_end.reached(abs),
                // Not archived yet (or the end of the archive).
                Err(Error::NotFound(_)) => archive_end.absent(abs, Instant::now()),
                Err(e) => {
                    tracing::warn!(wal = %name, error = %e, "prefetch failed; archive-get will fetch it directly");
                    archive_end.absent(abs, Instant::now())
                }
            };
            if changed {
                archive_end.save(spool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The area of `repository`'s recovery of `/pgdata` in the spool at `spool_dir`.
    fn area(spool_dir: &Path, repository: &str) -> PrefetchSpool {
        PrefetchSpool::open(spool_dir, "main", repository, Path::new("/pgdata")).unwrap()
    }

    /// Runs a prefetcher with `opts` while recovery asks for the next segment every 50 ms
    /// without end; it must exit on its own, after its maximum run.
    async fn asked_without_pause(repo: &Repository, opts: &PrefetchOptions) {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "memory://");
        let asks = async {
            for n in 1u64.. {
                let name: WalFileName = format!("0000000100000000000000{:02X}", n % 200)
                    .parse()
                    .unwrap();
                spool.set_requested(&name).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let started = Instant::now();
        tokio::select! {
            r = run_prefetcher(repo, "main", &spool, 16 << 20, opts) => r.unwrap(),
            () = asks => unreachable!("asking never ends"),
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("still running after 10 s"),
        }
        assert!(started.elapsed() >= opts.max_run, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_prefetcher_asked_without_pause_still_exits_after_its_maximum_run() {
        let (_mem, repo) = crate::archive::push::tests::memory_repo().await;
        let opts = PrefetchOptions {
            count: 2,
            jobs: 1,
            idle_exit: Duration::from_secs(600),
            max_run: Duration::from_millis(300),
        };
        asked_without_pause(&repo, &opts).await;
    }

    /// With two jobs and fetches that take a while, one fetch or another is always in flight
    /// while recovery keeps asking: the maximum run must still end the prefetcher.
    #[tokio::test]
    async fn a_prefetcher_with_fetches_always_in_flight_still_exits_after_its_maximum_run() {
        let mem: std::sync::Arc<dyn crate::storage::Storage> =
            std::sync::Arc::new(crate::storage::MemoryStorage::new());
        let slow = std::sync::Arc::new(crate::test_support::SlowReads::new(
            mem,
            Duration::from_millis(120),
        ));
        let (_, repo) = crate::test_support::init_repo(slow).await;
        let opts = PrefetchOptions {
            count: 8,
            jobs: 2,
            idle_exit: Duration::from_secs(600),
            max_run: Duration::from_millis(300),
        };
        asked_without_pause(&repo, &opts).await;
    }

    #[test]
    fn counters_read_beneath_a_trusted_directory_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let spool = area(&work.join("spool"), "file:///repo");
        spool
            .record(GetOutcome::FromSpool, Duration::from_millis(5))
            .unwrap();
        assert_eq!(spool.stats_beneath(&work).calls, 1);
        // The spool's owner swaps spool/main for a link to counters of its choosing.
        let area = spool.dir().strip_prefix(work.join("spool/main")).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(elsewhere.join(area)).unwrap();
        let planted = GetStats {
            calls: 99,
            ..GetStats::default()
        };
        fs::write(
            elsewhere.join(area).join("get-stats.json"),
            serde_json::to_vec(&planted).unwrap(),
        )
        .unwrap();
        fs::rename(work.join("spool/main"), work.join("spool/old")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, work.join("spool/main")).unwrap();
        assert_eq!(spool.stats().calls, 99, "a plain read follows the link");
        assert_eq!(spool.stats_beneath(&work).calls, 0);
    }

    #[test]
    fn a_segment_of_another_cluster_is_never_served_and_empties_the_area() {
        use crate::pg::wal_header::tests::fake_segment;
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        let seg_size = 16u32 << 20;
        let put = |n: u64, sysid: u64| {
            let path = spool.dir().join(seg(n).to_string());
            fs::write(
                &path,
                fake_segment(sysid, 1, n * u64::from(seg_size), seg_size, 8192),
            )
            .unwrap();
        };
        let dest = dir.path().join("RECOVERYXLOG");
        // Ours: served.
        put(5, 42);
        assert!(spool.take(&seg(5), &dest, Some(42)).unwrap());
        // Left by a recovery of another cluster of the same name, before any prefetcher of
        // this repository adopted the area: refused, and the whole window goes with it.
        put(6, 7);
        put(7, 7);
        assert!(!spool.take(&seg(6), &dest, Some(42)).unwrap());
        assert!(spool.files().is_empty(), "{:?}", spool.files());
        // Not a segment at all: not served either.
        fs::write(spool.dir().join(seg(8).to_string()), b"short").unwrap();
        assert!(!spool.take(&seg(8), &dest, Some(42)).unwrap());
        // Without a pg_control to compare with (a hand-run call), served as before.
        put(9, 7);
        assert!(spool.take(&seg(9), &dest, None).unwrap());
        // Gone between the look and the read (the prefetcher cleaned it): just not there.
        put(10, 42);
        assert_eq!(of_cluster(&spool.dir().join(seg(11).to_string()), 42), None);
        assert!(
            spool.files().contains(&seg(10).to_string()),
            "nothing purged"
        );
    }

    #[test]
    fn the_next_prefetcher_goes_on_with_the_backoff_where_the_last_one_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        assert_eq!(ArchiveEnd::load(&spool), ArchiveEnd::new(), "nothing saved");
        let t0 = Instant::now();
        let mut end = ArchiveEnd::new();
        end.absent(10, t0);
        end.absent(10, t0 + ABSENT_RETRY);
        end.absent(10, t0 + ABSENT_RETRY * 3);
        assert_eq!(end.wait, ABSENT_RETRY * 4);
        end.save(&spool);
        let next = ArchiveEnd::load(&spool);
        assert_eq!(
            next.wait,
            ABSENT_RETRY * 4,
            "the wait goes on doubling from there"
        );
        // Its wait ends where the last one's did: 3 + 4 retries after t0.
        assert!(!next.allows(10, Instant::now()), "still waiting");
        assert!(!next.allows(10, t0 + ABSENT_RETRY * 6));
        assert!(next.allows(10, t0 + ABSENT_RETRY * 8));
        assert!(next.allows(9, Instant::now()));
        // The end reached: the file goes.
        let mut next = next;
        assert!(next.reached(10));
        next.save(&spool);
        assert!(!spool.archive_end_path().exists());
        assert_eq!(ArchiveEnd::load(&spool), ArchiveEnd::new());
        // A damaged or hostile file is no end at all; a huge wait is cut to the longest.
        fs::write(spool.archive_end_path(), b"{not json").unwrap();
        assert_eq!(ArchiveEnd::load(&spool), ArchiveEnd::new());
        let far = SavedArchiveEnd {
            segment: 3,
            until_unix_ms: u64::MAX,
            wait_ms: u64::MAX,
        };
        fs::write(spool.archive_end_path(), serde_json::to_vec(&far).unwrap()).unwrap();
        let capped = ArchiveEnd::load(&spool);
        assert_eq!(capped.wait, ABSENT_RETRY_MAX);
        assert!(capped.allows(3, Instant::now() + ABSENT_RETRY_MAX));
        // Another repository adopting the area drops it.
        spool.adopt("repo-a").unwrap();
        fs::write(spool.archive_end_path(), serde_json::to_vec(&far).unwrap()).unwrap();
        spool.adopt("repo-b").unwrap();
        assert!(!spool.archive_end_path().exists());
    }

    #[test]
    fn a_segment_still_absent_is_asked_for_less_and_less_often() {
        let t0 = Instant::now();
        let mut end = ArchiveEnd::new();
        assert!(end.allows(10, t0));
        end.absent(10, t0);
        // Nothing at or after it until the first wait has passed; before it, anything.
        assert!(!end.allows(10, t0) && !end.allows(11, t0) && end.allows(9, t0));
        assert!(end.allows(10, t0 + ABSENT_RETRY));
        assert!(
            !end.allows(11, t0 + ABSENT_RETRY),
            "only the end is asked for again, not the window after it"
        );
        // Found absent again after each wait: 0.5 s, 1 s, 2 s, 4 s, then 5 s for ever.
        let mut now = t0 + ABSENT_RETRY;
        let mut waits = Vec::new();
        for _ in 0..6 {
            end.absent(10, now);
            let mut wait = Duration::ZERO;
            while !end.allows(10, now + wait) {
                wait += Duration::from_millis(250);
            }
            waits.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        // A later segment's absence, or the same one reported twice in one wait, changes
        // nothing.
        end.absent(12, now);
        end.absent(10, now);
        assert!(end.allows(10, now + ABSENT_RETRY_MAX) && !end.allows(10, now));
        // An earlier end starts over at the first wait.
        end.absent(8, now);
        assert!(end.allows(8, now + ABSENT_RETRY));
        // Once the segment exists (fetched, or PostgreSQL asks past it), no wait is left.
        end.absent(8, now + ABSENT_RETRY);
        end.reached(8);
        assert!(end.allows(8, now) && end.allows(100, now));
        end.absent(8, now);
        assert!(
            end.allows(8, now + ABSENT_RETRY),
            "the backoff started over"
        );
        // A segment before the end says nothing about it.
        end.reached(7);
        assert!(!end.allows(8, now));
    }

    fn seg(n: u64) -> WalFileName {
        format!("00000001{:08X}{:08X}", n >> 8, n & 0xff)
            .parse()
            .unwrap()
    }

    #[test]
    fn archive_get_waits_for_the_prefetchers_fetch_of_the_same_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        let name = seg(5);
        // Nothing being fetched: no wait.
        let started = Instant::now();
        assert!(!spool.wait_if_fetching(&name, Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(1));
        // Being fetched: the wait ends when the file lands, and take serves it.
        let mark = spool.mark_fetching(&name);
        let writer = {
            let path = spool.dir().join(name.to_string());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                write_atomically(&path, b"segment", Durability::Durable).unwrap();
                drop(mark);
            })
        };
        let started = Instant::now();
        assert!(spool.wait_if_fetching(&name, Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        writer.join().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(spool.take(&name, &dest, None).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"segment");
        assert!(
            !spool.fetching_path(&name).exists(),
            "the marker goes with its guard"
        );
    }

    #[test]
    fn every_call_is_counted_and_waits_are_told_apart_from_spool_hits() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        assert_eq!(spool.stats(), GetStats::default(), "no file: zero");
        spool
            .record(GetOutcome::FromSpool, Duration::from_millis(3))
            .unwrap();
        let before = spool.stats();
        spool
            .record(GetOutcome::FromSpool, Duration::from_millis(4))
            .unwrap();
        spool
            .record(GetOutcome::Waited, Duration::from_millis(30))
            .unwrap();
        spool
            .record(GetOutcome::Direct, Duration::from_millis(50))
            .unwrap();
        spool
            .record(GetOutcome::Absent, Duration::from_millis(10))
            .unwrap();
        let all = spool.stats();
        assert_eq!(
            (
                all.calls,
                all.from_spool,
                all.waited,
                all.direct,
                all.absent
            ),
            (5, 2, 1, 1, 1)
        );
        assert_eq!(all.waits(), 2);
        assert!((all.wait_seconds - 0.080).abs() < 1e-9, "{all:?}");
        assert!((all.total_seconds - 0.097).abs() < 1e-9, "{all:?}");
        let d = all.since(&before);
        assert_eq!((d.calls, d.from_spool, d.waits()), (4, 1, 2));
        assert!((d.total_seconds - 0.094).abs() < 1e-9);
        assert!(d
            .summary()
            .contains("1 waited for the prefetcher, 1 fetched directly"));
        // A damaged file counts from zero again rather than failing archive-get.
        fs::write(spool.dir().join("get-stats.json"), b"{not json").unwrap();
        spool
            .record(GetOutcome::FromSpool, Duration::from_millis(1))
            .unwrap();
        assert_eq!(spool.stats().calls, 1);
        assert_eq!(spool.files(), Vec::<String>::new(), "not a segment");
    }

    /// Before: the prefetcher's clean-up removed the segment archive-get had just asked for,
    /// and archive-get's rename failed with "No such file" (exit 200).
    #[test]
    fn cleaning_keeps_the_requested_segment_and_a_vanished_one_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        for n in [4, 5, 6] {
            write_atomically(
                &spool.dir().join(seg(n).to_string()),
                b"s",
                Durability::Durable,
            )
            .unwrap();
        }
        spool.clean(&seg(5), 16 << 20);
        assert!(!spool.dir().join(seg(4).to_string()).exists());
        assert!(
            spool.dir().join(seg(5).to_string()).exists(),
            "the requested one stays"
        );
        assert!(spool.dir().join(seg(6).to_string()).exists());
        let dest = dir.path().join("dest");
        assert!(!spool.take(&seg(9), &dest, None).unwrap());
    }

    /// Before: one spool per cluster name, so a segment prefetched from one repository's
    /// `main` was served to a recovery fetching from another repository's `main`.
    #[test]
    fn two_repositories_with_a_cluster_of_the_same_name_never_share_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let a = area(dir.path(), "s3://bucket-a/pgcairn");
        let b = area(dir.path(), "s3://bucket-b/pgcairn");
        assert_ne!(a.dir(), b.dir());
        assert_eq!(a.root(), b.root());
        write_atomically(
            &a.dir().join(seg(7).to_string()),
            b"from a",
            Durability::Durable,
        )
        .unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(
            !b.take(&seg(7), &dest, None).unwrap(),
            "b never serves a's segment"
        );
        assert!(!dest.exists());
        let again = PrefetchSpool::open_existing(
            dir.path(),
            "main",
            "s3://bucket-a/pgcairn",
            Path::new("/pgdata"),
        )
        .expect("a's area exists");
        assert_eq!(again.dir(), a.dir());
        assert!(again.take(&seg(7), &dest, None).unwrap());
        assert!(PrefetchSpool::open_existing(
            dir.path(),
            "main",
            "file:///elsewhere",
            Path::new("/pgdata")
        )
        .is_err());
    }

    #[test]
    fn a_prefetcher_keeps_its_repositorys_segments_and_removes_anothers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        let put = |n: u64| {
            write_atomically(
                &spool.dir().join(seg(n).to_string()),
                b"s",
                Durability::Durable,
            )
            .unwrap()
        };
        put(4);
        put(5);
        spool
            .record(GetOutcome::FromSpool, Duration::from_millis(1))
            .unwrap();
        // A killed fetch's temporary file, and a segment of the layout before areas.
        let temp = spool.dir().join(format!(".{}.123.0.tmp", seg(6)));
        fs::write(&temp, b"part").unwrap();
        let old = dir.path().join("main/prefetch").join(seg(7).to_string());
        fs::write(&old, b"old").unwrap();
        // First start: whose the segments are is unknown, so they go.
        assert!(
            !spool.adopt("aaaa").unwrap(),
            "no other repository was recorded"
        );
        assert_eq!(spool.files(), Vec::<String>::new());
        assert!(!temp.exists() && !old.exists());
        assert_eq!(spool.stats().calls, 1, "the counters stay");
        // The same repository again: its segments stay (a paused standby's window).
        put(8);
        assert!(!spool.adopt("aaaa").unwrap());
        assert_eq!(spool.files(), vec![seg(8).to_string()]);
        // Another repository at the same place: they go.
        assert!(spool.adopt("bbbb").unwrap());
        assert_eq!(spool.files(), Vec::<String>::new());
    }

    #[test]
    fn the_repository_identity_holds_where_it_is_never_credentials() {
        let mut opts = std::collections::BTreeMap::new();
        opts.insert("secret_access_key".to_string(), "hunter2".to_string());
        let bare = repository_identity("s3://backups/pg", &opts);
        assert!(!bare.contains("hunter2"));
        opts.insert("endpoint".to_string(), "https://minio-a:9000".to_string());
        let a = repository_identity("s3://backups/pg", &opts);
        opts.insert("endpoint".to_string(), "https://minio-b:9000".to_string());
        let b = repository_identity("s3://backups/pg", &opts);
        assert_ne!(a, b);
        assert_ne!(
            PrefetchSpool::dir_for(Path::new("/s"), "main", &a, Path::new("/pgdata")),
            PrefetchSpool::dir_for(Path::new("/s"), "main", &b, Path::new("/pgdata"))
        );
    }

    #[test]
    fn a_fetch_that_fails_or_a_leftover_marker_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let spool = area(dir.path(), "file:///repo");
        let name = seg(6);
        // The prefetcher's fetch fails: its marker goes, the wait ends without a file.
        let mark = spool.mark_fetching(&name);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(mark);
        });
        let started = Instant::now();
        assert!(!spool.wait_if_fetching(&name, Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
        // A marker left by a killed prefetcher is stale once old enough, and cleared at start.
        let leftover = spool.mark_fetching(&name);
        std::mem::forget(leftover);
        let old = std::time::SystemTime::now() - MARK_STALE - Duration::from_secs(1);
        fs::File::options()
            .write(true)
            .open(spool.fetching_path(&name))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let started = Instant::now();
        assert!(!spool.wait_if_fetching(&name, Duration::from_secs(5)));
        assert!(started.elapsed() < Duration::from_secs(1));
        spool.clear_marks();
        assert!(!spool.fetching_path(&name).exists());
    }
}
