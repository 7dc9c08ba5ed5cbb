//! Which prefetch area serves which recovery, and removing the areas nobody will use again.
//!
//! An area is `<spool>/<cluster>/prefetch/<key>/`, the key the first 16 hex digits of SHA-256
//! over where the repository is ([`super::prefetch::repository_identity`]) **and the data
//! directory that recovers** (the directory PostgreSQL runs `restore_command` in). Areas used
//! to be per repository only, so two recoveries of one cluster on one host shared one: a side
//! PITR restore next to a running standby of the same cluster, both fetching from the same
//! repository at different places in the archive. Each wrote its own segment into the one
//! `.requested`, and each prefetcher removed the segments "behind" the other's request: they
//! fetched their windows again and again and replay mostly found nothing prefetched. Results
//! stayed right (a miss is a direct fetch), both recoveries were slower. pgBackRest keys its
//! asynchronous archive-get queue by stanza and so shares it the same way; a per-directory area
//! costs nothing but the disk of a window per recovering directory, which the sweep below
//! returns.
//!
//! Every area records its data directory in `.datadir`. A prefetcher starting in one area
//! sweeps the others of the cluster: an area whose data directory no longer holds a
//! `global/pg_control` (the restore was removed or moved; a hand-run archive-get outside any
//! data directory), or that has no `.datadir` (the per-repository layout before this one), is
//! removed, unless a prefetcher holds its lock (an area without `.datadir` only once it has not
//! changed for ten minutes: a new one has none for a moment). Nothing is lost by sweeping too
//! eagerly: the next archive-get there recreates the area and fetches what it needs directly.
//! The sweep runs beside the prefetcher's fetches, never before them: a data directory named
//! in `.datadir` on a hung mount must not hold up this recovery's prefetch.
//!
//! An area is per repository and data directory, and a data directory recovers from one
//! repository at a time (its `restore_command` names one configuration): so an area of the
//! sweeping prefetcher's own data directory under another repository identity (the
//! repository moved to another URL or endpoint) is removed too, unless its lock is held. Were
//! that directory to recover from the old repository again, its next archive-get would
//! recreate the area.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The file in each area that names the data directory it serves.
pub const DATADIR_FILE: &str = ".datadir";

/// The largest `.datadir` read back (a path; the spool belongs to PostgreSQL's user, so its
/// contents are not trusted to be small, see [`crate::untrusted_file`]).
const DATADIR_MAX: u64 = 8192;

/// `<spool_dir>/<cluster>/prefetch/<key>`: the area of the recovery of `datadir` from the
/// repository at `repository`.
pub fn area_dir(spool_dir: &Path, cluster: &str, repository: &str, datadir: &Path) -> PathBuf {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(repository.as_bytes());
    hasher.update(b"\ndatadir=");
    hasher.update(datadir.as_os_str().as_bytes());
    let key = hex::encode(hasher.finalize());
    spool_dir.join(cluster).join("prefetch").join(&key[..16])
}

/// Records in `area` the data directory it serves, once.
pub fn record_datadir(area: &Path, datadir: &Path) -> std::io::Result<()> {
    let path = area.join(DATADIR_FILE);
    let want = datadir.as_os_str().as_bytes();
    if crate::untrusted_file::read_capped(&path, DATADIR_MAX).is_ok_and(|have| have == want) {
        return Ok(());
    }
    crate::private_fs::replace(&path, want)
}

/// The data directory `area` records serving, if it records one.
pub fn recorded_datadir(area: &Path) -> Option<PathBuf> {
    let bytes = crate::untrusted_file::read_capped(&area.join(DATADIR_FILE), DATADIR_MAX).ok()?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

/// How long an area without `.datadir` is left alone: one just created has none for a moment
/// (`PrefetchSpool::open` makes the directory, then records it), one of the layout before was
/// last changed long ago, or by a binary of that layout still at work.
const UNNAMED_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Is the area at `area` abandoned: no data directory recorded (and, with `mind_age`, not
/// changed for [`UNNAMED_GRACE`]), or the one recorded is no longer a PostgreSQL data
/// directory?
fn abandoned(area: &Path, mind_age: bool) -> bool {
    match recorded_datadir(area) {
        None if !mind_age => true,
        None => fs::symlink_metadata(area)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNNAMED_GRACE),
        Some(datadir) => !datadir.join("global").join("pg_control").is_file(),
    }
}

/// Removes the abandoned areas beside `keep` (see the module docs) whose lock is free; returns
/// how many. Only real directories directly in `keep`'s parent are looked at: a link there
/// (the spool's owner could plant one) is never followed.
pub fn sweep_abandoned(keep: &Path) -> usize {
    let Some(parent) = keep.parent() else {
        return 0;
    };
    // An area serving the same data directory from another repository is superseded.
    let mine = recorded_datadir(keep);
    let superseded = |area: &Path| mine.is_some() && recorded_datadir(area) == mine;
    let mut removed = 0;
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || path == keep || !(superseded(&path) || abandoned(&path, true)) {
            continue;
        }
        // A prefetcher working there holds this lock: that area is in use after all (its
        // data directory is being restored again, say). Held while removing, so no
        // prefetcher starts in it meanwhile; and looked at again once held. A lock that is a
        // link no prefetcher can hold (it is opened without following one): the area goes.
        let lock_path = path.join("prefetcher.lock");
        let _lock = match crate::archive::spool::try_lock_file(&lock_path) {
            Ok(Some(lock)) => Some(lock),
            Ok(None) => continue,
            Err(_) if fs::symlink_metadata(&lock_path).is_ok_and(|m| m.is_symlink()) => None,
            Err(_) => continue,
        };
        // (Its age was judged above: taking the lock may have just created the lock file.)
        if !(superseded(&path) || abandoned(&path, false)) {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                area = %path.display(),
                "could not remove an abandoned prefetch area: {e}"
            ),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datadir_in(root: &Path, name: &str) -> PathBuf {
        let d = root.join(name);
        fs::create_dir_all(d.join("global")).unwrap();
        fs::write(d.join("global/pg_control"), b"control").unwrap();
        d
    }

    /// Dates `area` back past [`UNNAMED_GRACE`].
    fn unchanged_for_long(area: &Path) {
        let long_ago = std::time::SystemTime::now() - 2 * UNNAMED_GRACE;
        fs::File::open(area)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
    }

    fn area_of(spool: &Path, datadir: &Path) -> PathBuf {
        area_of_repository(spool, "file:///repo", datadir)
    }

    /// The area of `datadir`'s recovery from `repository`, with its data directory recorded
    /// and one segment in it.
    fn area_of_repository(spool: &Path, repository: &str, datadir: &Path) -> PathBuf {
        let a = area_dir(spool, "main", repository, datadir);
        fs::create_dir_all(&a).unwrap();
        record_datadir(&a, datadir).unwrap();
        fs::write(a.join("000000010000000000000003"), b"segment").unwrap();
        a
    }

    #[test]
    fn two_data_directories_never_share_an_area() {
        let s = Path::new("/spool");
        let a = area_dir(s, "main", "file:///repo", Path::new("/srv/standby"));
        let b = area_dir(s, "main", "file:///repo", Path::new("/srv/pitr"));
        let c = area_dir(s, "main", "file:///other", Path::new("/srv/standby"));
        assert_ne!(a, b, "same repository, other data directory");
        assert_ne!(a, c, "same data directory, other repository");
        assert_eq!(
            a.parent(),
            b.parent(),
            "both in the cluster's prefetch directory"
        );
        // The layout scripts rely on (benches/backup_interval_replay.sh):
        // printf 'file:///repo\ndatadir=/srv/standby' | sha256sum | cut -c1-16
        assert_eq!(a, Path::new("/spool/main/prefetch/9895f422271ed38f"));
        assert_eq!(
            a,
            area_dir(s, "main", "file:///repo", Path::new("/srv/standby")),
            "the same recovery finds its area again"
        );
    }

    #[test]
    fn the_sweep_removes_areas_of_gone_data_directories_only() {
        let root = tempfile::tempdir().unwrap();
        let spool = root.path().join("spool");
        let live = datadir_in(root.path(), "standby");
        let gone = datadir_in(root.path(), "pitr");
        let mine = area_of(&spool, &live);
        let other_live = area_of(&spool, &datadir_in(root.path(), "second"));
        let of_gone = area_of(&spool, &gone);
        fs::remove_dir_all(&gone).unwrap();
        // The layout before areas were per data directory: no .datadir.
        let old = mine.parent().unwrap().join("00112233aabbccdd");
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("000000010000000000000009"), b"segment").unwrap();
        unchanged_for_long(&old);
        // One just created, before archive-get recorded its data directory.
        let just_made = mine.parent().unwrap().join("0123456789abcdef");
        fs::create_dir_all(&just_made).unwrap();
        // A data directory that exists but is no PostgreSQL data directory (any more).
        let emptied = root.path().join("emptied");
        fs::create_dir_all(&emptied).unwrap();
        let of_emptied = area_of(&spool, &emptied);

        assert_eq!(sweep_abandoned(&mine), 3);
        assert!(
            mine.join("000000010000000000000003").exists(),
            "its own area stays"
        );
        assert!(
            other_live.exists(),
            "another live data directory's area stays"
        );
        assert!(
            !of_gone.exists(),
            "the removed data directory's area is gone"
        );
        assert!(!old.exists(), "the old layout's area is gone");
        assert!(
            just_made.exists(),
            "an area just made is not taken for an old one"
        );
        assert!(!of_emptied.exists());
        assert_eq!(sweep_abandoned(&mine), 0, "nothing left to sweep");
    }

    /// The repository moved: the data directory's area under the old repository identity
    /// goes (unless its prefetcher runs); another data directory's area under the old one
    /// stays.
    #[test]
    fn the_sweep_removes_the_area_of_the_same_data_directory_under_another_repository() {
        let root = tempfile::tempdir().unwrap();
        let spool = root.path().join("spool");
        let live = datadir_in(root.path(), "standby");
        let other = datadir_in(root.path(), "pitr");
        let old_area = |datadir: &Path| area_of_repository(&spool, "s3://old/bucket", datadir);
        let moved_from = old_area(&live);
        let other_old = old_area(&other);
        let mine = area_of(&spool, &live);
        assert_ne!(moved_from, mine);

        let lock = crate::archive::spool::try_lock_file(&moved_from.join("prefetcher.lock"))
            .unwrap()
            .expect("free");
        assert_eq!(sweep_abandoned(&mine), 0, "its prefetcher still runs");
        drop(lock);
        assert_eq!(sweep_abandoned(&mine), 1);
        assert!(!moved_from.exists());
        assert!(
            other_old.exists(),
            "another data directory's area stays, whatever its repository"
        );
        assert!(mine.join("000000010000000000000003").exists());
    }

    #[test]
    fn the_sweep_leaves_an_area_whose_prefetcher_runs() {
        let root = tempfile::tempdir().unwrap();
        let spool = root.path().join("spool");
        let mine = area_of(&spool, &datadir_in(root.path(), "a"));
        let busy = area_of(&spool, &root.path().join("never-existed"));
        let lock = crate::archive::spool::try_lock_file(&busy.join("prefetcher.lock"))
            .unwrap()
            .expect("free");
        assert_eq!(sweep_abandoned(&mine), 0);
        assert!(busy.join("000000010000000000000003").exists());
        drop(lock);
        assert_eq!(sweep_abandoned(&mine), 1);
        assert!(!busy.exists());
    }

    #[test]
    fn the_sweep_follows_no_link() {
        let root = tempfile::tempdir().unwrap();
        let spool = root.path().join("spool");
        let mine = area_of(&spool, &datadir_in(root.path(), "a"));
        // The spool's owner points an "area" at a directory of someone else's.
        let victim = root.path().join("victim");
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("precious"), b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, mine.parent().unwrap().join("ffffffffffffffff"))
            .unwrap();
        // And an area whose .datadir is a link to a file naming a live directory.
        let tricked = mine.parent().unwrap().join("eeeeeeeeeeeeeeee");
        fs::create_dir_all(&tricked).unwrap();
        let naming = root.path().join("naming");
        fs::write(&naming, root.path().join("a").as_os_str().as_bytes()).unwrap();
        std::os::unix::fs::symlink(&naming, tricked.join(DATADIR_FILE)).unwrap();
        // (Read as naming none, it is judged as an area of the layout before: by its age.)
        unchanged_for_long(&tricked);

        // And an abandoned area whose lock is a link (no prefetcher can hold that one).
        let linked_lock = area_of(&spool, &root.path().join("never-existed"));
        let lock_target = root.path().join("lock-target");
        fs::write(&lock_target, b"keep").unwrap();
        std::os::unix::fs::symlink(&lock_target, linked_lock.join("prefetcher.lock")).unwrap();

        assert_eq!(
            sweep_abandoned(&mine),
            2,
            "the area with a linked .datadir, and the one with a linked lock"
        );
        assert!(!linked_lock.exists());
        assert_eq!(fs::read(&lock_target).unwrap(), b"keep");
        assert_eq!(fs::read(victim.join("precious")).unwrap(), b"keep");
        assert!(mine.parent().unwrap().join("ffffffffffffffff").exists());
        assert!(!tricked.exists());
        assert!(naming.exists(), "the link's target is not removed");
    }

    #[test]
    fn the_datadir_is_recorded_once_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        let area = root.path().join("area");
        fs::create_dir_all(&area).unwrap();
        assert_eq!(recorded_datadir(&area), None);
        record_datadir(&area, Path::new("/srv/pg/15/main")).unwrap();
        let first = fs::metadata(area.join(DATADIR_FILE))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        record_datadir(&area, Path::new("/srv/pg/15/main")).unwrap();
        let second = fs::metadata(area.join(DATADIR_FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(first, second, "not rewritten by every archive-get");
        assert_eq!(
            recorded_datadir(&area).as_deref(),
            Some(Path::new("/srv/pg/15/main"))
        );
    }
}
