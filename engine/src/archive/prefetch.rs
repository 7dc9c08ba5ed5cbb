//! archive-get prefetch: keep the next segments fetched and verified in the spool, so
//! recovery does not wait on an object-store round trip per 16 MiB segment.
//!
//! Layout: `<spool>/<cluster>/prefetch/<WAL name>` (verified contents), `.requested` (the
//! last name PostgreSQL asked for), `prefetcher.lock`. With `[archive] async = true`,
//! `archive-get X`:
//! 1. records X as requested and, if `prefetch/X` exists, moves it to `%p` (same file system:
//!    rename; else copy and fsync) and is done;
//! 2. makes sure a background prefetcher runs;
//! 3. if the prefetcher is fetching X right now (marker `.X.fetching`, written while a fetch
//!    runs), waits for it rather than fetching the same segment a second time, which happens
//!    when recovery replays faster than the prefetcher fetches;
//! 4. otherwise fetches X itself as in synchronous mode.
//!
//! The prefetcher fetches the `count` segments after the last requested one **on its
//! timeline** (names carry the timeline, so a file is only ever served under its own name),
//! removes segments behind the requested one and any from other timelines, and exits when
//! PostgreSQL stops asking. Every file in the spool passed the same checks as a direct
//! archive-get (authentication, content id, page header against the name). A segment that
//! does not exist yet ends the round; it is tried again on the next request.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::archive::get::{get_wal_file_to, write_atomically};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::types::{SegmentNo, WalFileName};

/// The prefetch area of one cluster's spool.
#[derive(Debug, Clone)]
pub struct PrefetchSpool {
    dir: PathBuf,
}

impl PrefetchSpool {
    /// Opens (creating) `<spool_dir>/<cluster>/prefetch/`.
    pub fn open(spool_dir: &Path, cluster: &str) -> Result<Self> {
        let dir = spool_dir.join(cluster).join("prefetch");
        crate::private_fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {} (archive.spool_dir)", dir.display()), e))?;
        Ok(PrefetchSpool { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn requested_path(&self) -> PathBuf {
        self.dir.join(".requested")
    }

    /// Records the name PostgreSQL asked for.
    pub fn set_requested(&self, name: &WalFileName) -> Result<()> {
        let tmp = self.dir.join(".requested.tmp");
        crate::private_fs::write(&tmp, name.to_string().as_bytes())
            .and_then(|_| fs::rename(&tmp, self.requested_path()))
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

    /// Moves a prefetched file to `dest` if there is one; true if it did.
    pub fn take(&self, name: &WalFileName, dest: &Path) -> Result<bool> {
        let src = self.dir.join(name.to_string());
        if !src.exists() {
            return Ok(false);
        }
        let err = |e| Error::io(format!("moving {} to {}", src.display(), dest.display()), e);
        match fs::rename(&src, dest) {
            Ok(()) => {}
            // Gone between the check and the rename (the prefetcher cleaned it): not there,
            // archive-get fetches it from the repository instead.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // Another file system: copy durably, then drop the spool copy.
            Err(e) if e.raw_os_error() == Some(18) => {
                let data = fs::read(&src).map_err(err)?;
                write_atomically(dest, &data)?;
                let _ = fs::remove_file(&src);
                return Ok(true);
            }
            Err(e) => return Err(err(e)),
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
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
}

/// Runs the prefetcher until PostgreSQL stops asking. The caller holds the lock.
pub async fn run_prefetcher(
    repo: &Repository,
    cluster: &str,
    spool: &PrefetchSpool,
    seg_size: u64,
    opts: &PrefetchOptions,
) -> Result<()> {
    spool.clear_marks();
    let mut last_seen: Option<WalFileName> = None;
    let mut idle_since = Instant::now();
    loop {
        let Some(req) = spool.requested() else {
            if idle_since.elapsed() > opts.idle_exit {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if last_seen.as_ref() != Some(&req) {
            idle_since = Instant::now();
            last_seen = Some(req.clone());
        } else if idle_since.elapsed() > opts.idle_exit {
            return Ok(());
        }
        spool.clean(&req, seg_size);
        let Some(seg) = req.segment() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let base = seg.absolute(seg_size);
        let wanted: Vec<WalFileName> = (1..=opts.count as u64)
            .map(|i| WalFileName::Segment {
                tli: req.timeline(),
                segno: SegmentNo::from_absolute(base + i, seg_size),
            })
            .filter(|n| !spool.dir().join(n.to_string()).exists())
            .collect();
        let mut fetched_any = false;
        let mut results = futures::stream::iter(wanted)
            .map(|name| async move {
                let path = spool.dir().join(name.to_string());
                let _mark = spool.mark_fetching(&name);
                let r = get_wal_file_to(repo, cluster, &name, &path).await;
                (name, r)
            })
            .buffered(opts.jobs.max(1));
        while let Some((name, r)) = results.next().await {
            match r {
                Ok(()) => fetched_any = true,
                // Not archived yet (or the end of the archive): stop this round.
                Err(Error::NotFound(_)) => break,
                Err(e) => {
                    tracing::warn!(wal = %name, error = %e, "prefetch failed; archive-get will fetch it directly");
                    break;
                }
            }
        }
        if !fetched_any {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(n: u64) -> WalFileName {
        format!("00000001{:08X}{:08X}", n >> 8, n & 0xff)
            .parse()
            .unwrap()
    }

    #[test]
    fn archive_get_waits_for_the_prefetchers_fetch_of_the_same_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = PrefetchSpool::open(dir.path(), "main").unwrap();
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
                write_atomically(&path, b"segment").unwrap();
                drop(mark);
            })
        };
        let started = Instant::now();
        assert!(spool.wait_if_fetching(&name, Duration::from_secs(5)));
        assert!(started.elapsed() >= Duration::from_millis(100));
        writer.join().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(spool.take(&name, &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"segment");
        assert!(
            !spool.fetching_path(&name).exists(),
            "the marker goes with its guard"
        );
    }

    /// Before: the prefetcher's clean-up removed the segment archive-get had just asked for,
    /// and archive-get's rename failed with "No such file" (exit 200).
    #[test]
    fn cleaning_keeps_the_requested_segment_and_a_vanished_one_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = PrefetchSpool::open(dir.path(), "main").unwrap();
        for n in [4, 5, 6] {
            write_atomically(&spool.dir().join(seg(n).to_string()), b"s").unwrap();
        }
        spool.clean(&seg(5), 16 << 20);
        assert!(!spool.dir().join(seg(4).to_string()).exists());
        assert!(
            spool.dir().join(seg(5).to_string()).exists(),
            "the requested one stays"
        );
        assert!(spool.dir().join(seg(6).to_string()).exists());
        let dest = dir.path().join("dest");
        assert!(!spool.take(&seg(9), &dest).unwrap());
    }

    #[test]
    fn a_fetch_that_fails_or_a_leftover_marker_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let spool = PrefetchSpool::open(dir.path(), "main").unwrap();
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
