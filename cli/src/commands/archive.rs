//! `archive-push`, `archive-get` and the background pusher.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pgcairn_engine::archive::prefetch::{
    run_prefetcher, GetOutcome, PrefetchOptions, PrefetchSpool, MAX_PREFETCHER_RUN,
};
use pgcairn_engine::archive::spool::{self, file_fingerprint, PusherOptions, Spool, WaitOutcome};
use pgcairn_engine::archive::{
    get_wal_file_or_tail_to, push_wal_file, GetSource, PushOutcome, WalSource,
};
use pgcairn_engine::private_fs::Durability;
use pgcairn_engine::store::cluster::read as read_cluster_record;
use pgcairn_engine::types::WalFileName;
use pgcairn_engine::Error as EngineError;
use tracing::{info, warn};

use super::{open_repo, open_repo_append_only};
use crate::args::Cli;
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

fn wal_name_of(path: &Path) -> Result<WalFileName, Failure> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    file.parse()
        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    Ok(cwd.join(path))
}

/// `archive-push %p`.
pub async fn push(cli: &Cli, settings: &Settings, wal_path: &Path) -> Result<(), Failure> {
    let name = wal_name_of(wal_path)?;
    let path = absolute(wal_path)?;
    if let Err(e) = std::fs::metadata(&path) {
        return Err(Failure::new(
            ExitCode::Failed,
            format!("cannot read WAL file {}: {e}", path.display()),
        ));
    }
    if settings.archive_async {
        return push_async(cli, settings, &name, &path).await;
    }
    push_sync(settings, &name, &path).await
}

/// Pushes `path` (`name`) to the repository itself, waiting until it is durable.
async fn push_sync(settings: &Settings, name: &WalFileName, path: &Path) -> Result<(), Failure> {
    let path = path.to_path_buf();
    let repo = open_repo_append_only(settings, "archive-push").await?;
    let started = Instant::now();
    match push_wal_file(&repo, &settings.cluster, name, WalSource::File(path)).await? {
        PushOutcome::Uploaded { stored_size } => {
            info!(wal = %name, stored_size, ms = started.elapsed().as_millis() as u64, "archived")
        }
        PushOutcome::AlreadyArchived => {
            info!(wal = %name, "already archived with identical content")
        }
    }
    Ok(())
}

fn spawn_pusher(
    cli: &Cli,
    settings: &Settings,
    spool: &Spool,
    pg_wal: &Path,
) -> Result<(), Failure> {
    spawn_daemon(
        cli,
        settings,
        &spool.log_path(),
        &[
            "archive-push-daemon".as_ref(),
            "--pg-wal".as_ref(),
            pg_wal.as_os_str(),
        ],
    )
}

/// Size past which a background process's log is set aside when the next one starts.
const LOG_ROTATE_BYTES: u64 = 8 << 20;

/// Sets `log` aside as `<log>.1` (replacing the previous one) once it holds more than
/// `limit` bytes: a pusher or prefetcher logs a line per segment for as long as the server
/// runs, and the spool's disk is the server's. Two logs at most, about `2 * limit` bytes,
/// whatever the uptime. A process still writing the old log goes on writing `<log>.1`.
fn rotate_log(log: &Path, limit: u64) {
    if std::fs::symlink_metadata(log).is_ok_and(|m| m.is_file() && m.len() > limit) {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        if let Err(e) = std::fs::rename(log, &old) {
            warn!("{} not set aside: {e}", log.display());
        }
    }
}

/// Opens (creating, appending) a daemon's log. Never through a link: the spool belongs to
/// PostgreSQL's OS user, and an archive-get run by hand as root with the same spool would
/// otherwise append to whatever file that user pointed the log at.
fn open_daemon_log(log_path: &Path) -> Result<std::fs::File, Failure> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log_path)
        .map_err(|e| {
            let why = if e.raw_os_error() == Some(libc::ELOOP) {
                "it is a symbolic link; remove it (the log is always a plain file)".to_string()
            } else {
                e.to_string()
            };
            Failure::new(
                ExitCode::Failed,
                format!("cannot open {}: {why}", log_path.display()),
            )
        })
}

/// Starts a background pgcairn (pusher or prefetcher) with the same configuration.
fn spawn_daemon(
    cli: &Cli,
    settings: &Settings,
    log_path: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(ExitCode::Failed, format!("cannot find own executable: {e}")))?;
    rotate_log(log_path, LOG_ROTATE_BYTES);
    let log = open_daemon_log(log_path)?;
    let log2 = log
        .try_clone()
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    let mut cmd = std::process::Command::new(exe);
    if let Some(cfg) = &settings.config_file {
        cmd.arg("--config").arg(cfg);
    }
    if let Some(repo) = &cli.repo {
        cmd.arg("--repo").arg(repo);
    }
    if let Some(dir) = &cli.spool_dir {
        cmd.arg("--spool-dir").arg(dir);
    }
    cmd.args(["--cluster", &settings.cluster, "--log-level", "info"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: signals for the archiver's shell do not reach it.
        .process_group(0);
    cmd.spawn().map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("cannot start a background pgcairn: {e}"),
        )
    })?;
    Ok(())
}

async fn push_async(
    cli: &Cli,
    settings: &Settings,
    name: &WalFileName,
    path: &Path,
) -> Result<(), Failure> {
    let pg_wal = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let spool = Spool::open(&settings.spool_dir, &settings.cluster)?;
    let file = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || file_fingerprint(&file))
        .await
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))??;
    let n = name.to_string();
    spool.clear_error(&n);
    let repository = repository_identity(settings)?;
    let deadline = Instant::now() + settings.archive_timeout;
    loop {
        if !spool.pusher_running()? {
            spawn_pusher(cli, settings, &spool, &pg_wal)?;
        }
        let (s, n2, d2, r2) = (spool.clone(), n.clone(), digest.clone(), repository.clone());
        let outcome =
            tokio::task::spawn_blocking(move || spool::wait_for_ack(&s, &n2, &d2, &r2, deadline))
                .await
                .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))??;
        match outcome {
            WaitOutcome::Acked(ack) if ack.outcome == "dropped" => {
                warn!(wal = %n, "WAL DROPPED by archive.queue_max: not archived");
                eprintln!(
                    "pgcairn: WARNING: {n} was DROPPED, not archived: the backlog exceeded archive.queue_max while the repository failed; \
                     point-in-time recovery across it is impossible until the next backup"
                );
                return Ok(());
            }
            WaitOutcome::Acked(_) => return Ok(()),
            WaitOutcome::Failed(msg) => {
                spool.clear_error(&n);
                return Err(Failure::new(ExitCode::Failed, format!("background push of {n} failed: {msg}")));
            }
            WaitOutcome::TimedOut => {
                return Err(Failure::new(
                    ExitCode::Failed,
                    format!(
                        "{n} not acknowledged within archive.timeout ({}s); PostgreSQL keeps it and will retry. See {}",
                        settings.archive_timeout.as_secs(),
                        spool.log_path().display()
                    ),
                ))
            }
            WaitOutcome::NoPusher => continue,
            WaitOutcome::OtherRepository(other) => {
                // The configuration changed while a pusher runs: its acks say where it
                // pushed. This file goes to the configured repository now, synchronously;
                // the next pusher (started once that one exits) serves the new one.
                warn!(wal = %n, pusher_repository = %other, repository = %repository,
                    "the running pusher pushes to another repository; pushing this file directly");
                return push_sync(settings, name, path).await;
            }
        }
    }
}

/// `archive-push-daemon`: the background pusher.
pub async fn daemon(settings: &Settings, pg_wal: &Path) -> Result<(), Failure> {
    let spool = Spool::open(&settings.spool_dir, &settings.cluster)?;
    let Some(_lock) = spool.try_lock_pusher()? else {
        info!("another pusher is running; exiting");
        return Ok(());
    };
    let repo = open_repo_append_only(settings, "archive-push").await?;
    let opts = PusherOptions {
        jobs: settings.archive_jobs,
        idle_exit: settings.idle_exit,
        queue_max: settings.queue_max,
        repository: repository_identity(settings)?,
    };
    spool::run_pusher(&repo, &settings.cluster, &spool, pg_wal, &opts).await?;
    Ok(())
}

/// How long archive-get waits for the prefetcher's fetch of the same segment before
/// fetching it itself.
const PREFETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `archive-get %f %p`; with `prefetch` (or `archive.async`), through the prefetch spool.
pub async fn get(
    cli: &Cli,
    settings: &Settings,
    wal_name: &str,
    dest: &Path,
    prefetch: bool,
) -> Result<(), Failure> {
    crate::fault::panic_point("archive-get");
    let started = Instant::now();
    end_first_start(Path::new("."));
    let abort = |msg: String| Failure::new(ExitCode::AbortRecovery, msg);
    let name: WalFileName = wal_name.parse().map_err(|e| abort(format!("{e}")))?;
    // Through the prefetch spool: serve the segment from it when it is already there.
    // Asked for by `--prefetch` alone (a restore's restore_command), the prefetch is a
    // speed-up the operator did not configure: a spool PostgreSQL's user cannot use costs it
    // quietly. Configured (`archive.async`), it is worth a warning. Either way a spool that
    // fails never fails the fetch: archive-get fetches the segment itself.
    let spool_trouble = |e: &dyn std::fmt::Display| {
        if settings.archive_async {
            warn!("prefetch spool not used: {e}");
        } else {
            info!("prefetch spool not used: {e}");
        }
    };
    let spool = if (settings.archive_async || prefetch) && name.has_wal_pages() {
        match prefetch_spool(settings) {
            Ok(spool) => Some(spool),
            Err(e) => {
                spool_trouble(&e.message);
                None
            }
        }
    } else {
        None
    };
    if let Some(spool) = &spool {
        match from_spool(cli, settings, spool, &name, dest) {
            Ok(Some(outcome)) => {
                record(spool, outcome, started);
                info!(wal = %name, ?outcome, ms = started.elapsed().as_millis() as u64, "restored from the prefetch spool");
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => spool_trouble(&e),
        }
    }
    let repo = open_repo(settings).await.map_err(|f| abort(f.message))?;
    match get_wal_file_or_tail_to(
        &repo,
        &settings.cluster,
        &name,
        dest,
        Durability::Atomic,
    )
    .await
    {
        Ok(source) => {
            if let Some(spool) = &spool {
                record(spool, GetOutcome::Direct, started);
            }
            match source {
                GetSource::Archived => {
                    info!(wal = %name, ms = started.elapsed().as_millis() as u64, "restored")
                }
                GetSource::StreamedTail { bytes } => info!(
                    wal = %name,
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "restored the streamed tail (wal-receive): the segment's first {bytes} bytes, zero-padded"
                ),
            }
            Ok(())
        }
        // Definitely absent: quiet, PostgreSQL probes for files that often do not exist.
        Err(EngineError::NotFound(msg)) => {
            if let Some(spool) = &spool {
                record(spool, GetOutcome::Absent, started);
            }
            info!("{msg}");
            Err(Failure::new(ExitCode::Failed, String::new()))
        }
        Err(e) => Err(abort(format!(
            "cannot fetch {name}: {e}. Exiting with {} so PostgreSQL stops recovery instead of ending it at the wrong point; \
             fix the cause and restart PostgreSQL to resume",
            ExitCode::AbortRecovery as i32
        ))),
    }
}

/// Removes a restore's first-start settings from the data directory PostgreSQL runs
/// `restore_command` in, and has the server reload (see `pgcairn_engine::first_start`). The
/// first start's data-directory sync is over by the first call; a failure here costs only
/// the setting staying for later crash recoveries, never the fetch.
fn end_first_start(datadir: &Path) {
    use pgcairn_engine::first_start;
    match first_start::remove(datadir) {
        Ok(false) => {}
        Ok(true) => match first_start::parent_postmaster(datadir) {
            Some(pid) => match first_start::reload(pid) {
                Ok(()) => info!(
                    postmaster = pid,
                    "removed the restore's first-start settings from {} and reloaded the configuration",
                    first_start::AUTO_CONF
                ),
                Err(e) => warn!(
                    "removed the restore's first-start settings from {}, but the reload of postmaster {pid} failed: {e}; \
                     run pg_ctl reload",
                    first_start::AUTO_CONF
                ),
            },
            None => info!(
                "removed the restore's first-start settings from {} (no postmaster of this directory runs this call: nothing to reload)",
                first_start::AUTO_CONF
            ),
        },
        Err(e) => warn!(
            "could not remove the restore's first-start settings (recovery_init_sync_method = syncfs) from {}: {e}; \
             remove the lines between the \"pgcairn first-start settings\" markers and run pg_ctl reload",
            first_start::AUTO_CONF
        ),
    }
}

/// The prefetch area of this cluster, repository and data directory in `archive.spool_dir`.
/// PostgreSQL runs `restore_command` in the data directory: the working directory names the
/// recovery (a standby and a side PITR restore of one cluster on one host each get their own
/// area, see `pgcairn_engine::archive::prefetch_area`).
fn prefetch_spool(settings: &Settings) -> Result<PrefetchSpool, Failure> {
    let datadir = std::env::current_dir().map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("the working directory (the data directory PostgreSQL runs restore_command in) is unknown: {e}"),
        )
    })?;
    Ok(PrefetchSpool::open(
        &settings.spool_dir,
        &settings.cluster,
        &repository_identity(settings)?,
        &datadir,
    )?)
}

/// Where the repository is, as the prefetch spool names its area (see
/// [`pgcairn_engine::archive::prefetch::repository_identity`]).
pub fn repository_identity(settings: &Settings) -> Result<String, Failure> {
    Ok(pgcairn_engine::archive::prefetch::repository_identity(
        settings.require_repo_url()?,
        &settings.storage_options,
    ))
}

/// Serves `name` from the spool into `dest` if it is there or the prefetcher is fetching it
/// now (starting the prefetcher when none runs); `None` when archive-get must fetch it.
fn from_spool(
    cli: &Cli,
    settings: &Settings,
    spool: &PrefetchSpool,
    name: &WalFileName,
    dest: &Path,
) -> Result<Option<GetOutcome>, EngineError> {
    spool.set_requested(name)?;
    // PostgreSQL runs restore_command in the data directory: its pg_control says which cluster
    // is recovering, and no segment of another is served (a hand-run call elsewhere has none).
    let sysid = pgcairn_engine::pg::control::read(Path::new("."))
        .ok()
        .map(|c| c.system_identifier);
    let served = spool.take(name, dest, sysid)?;
    ensure_prefetcher(cli, settings, spool);
    if served {
        return Ok(Some(GetOutcome::FromSpool));
    }
    if spool.wait_if_fetching(name, PREFETCH_WAIT) && spool.take(name, dest, sysid)? {
        return Ok(Some(GetOutcome::Waited));
    }
    Ok(None)
}

/// Counts the call in the spool's statistics (a failure to count costs nothing else).
fn record(spool: &PrefetchSpool, outcome: GetOutcome, started: Instant) {
    if let Err(e) = spool.record(outcome, started.elapsed()) {
        warn!("archive-get statistics not updated: {e}");
    }
}

/// Starts the prefetcher unless one runs (errors only cost the prefetch, never the fetch).
fn ensure_prefetcher(cli: &Cli, settings: &Settings, spool: &PrefetchSpool) {
    match spool.try_lock() {
        Ok(Some(lock)) => {
            drop(lock);
            let log = spool.dir().join("prefetcher.log");
            let args = [
                "archive-get-daemon".as_ref(),
                "--pgdata".as_ref(),
                spool.datadir().as_os_str(),
            ];
            if let Err(f) = spawn_daemon(cli, settings, &log, &args) {
                warn!("prefetcher not started: {}", f.message);
            }
        }
        Ok(None) => {}
        Err(e) => warn!("prefetcher not started: {e}"),
    }
}

/// `archive-get-daemon --pgdata DIR`: the background prefetcher of the recovery of `DIR` (told
/// by archive-get: the prefetcher works from `/`, never from the data directory, see `main`).
pub async fn get_daemon(settings: &Settings, pgdata: &Path) -> Result<(), Failure> {
    let spool = match PrefetchSpool::open_existing(
        &settings.spool_dir,
        &settings.cluster,
        &repository_identity(settings)?,
        pgdata,
    ) {
        Ok(spool) => spool,
        Err(e) => {
            info!("nothing to prefetch into: {e}");
            return Ok(());
        }
    };
    let Some(_lock) = spool.try_lock()? else {
        info!("another prefetcher is running; exiting");
        return Ok(());
    };
    let repo = open_repo(settings).await?;
    let seg_size = read_cluster_record(&repo, &settings.cluster)
        .await?
        .map(|r| r.wal_segment_size)
        .unwrap_or(pgcairn_engine::types::DEFAULT_WAL_SEGMENT_SIZE);
    let opts = PrefetchOptions {
        count: settings.prefetch,
        jobs: settings.archive_jobs,
        idle_exit: settings.idle_exit,
        max_run: MAX_PREFETCHER_RUN,
    };
    run_prefetcher(&repo, &settings.cluster, &spool, seg_size, &opts).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_set_aside_once_and_a_small_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("pusher.log");
        let old = dir.path().join("pusher.log.1");
        std::fs::write(&log, vec![b'a'; 100]).unwrap();
        rotate_log(&log, 100);
        assert!(log.exists() && !old.exists(), "at the limit it stays");
        std::fs::write(&old, b"older").unwrap();
        std::fs::write(&log, vec![b'b'; 101]).unwrap();
        rotate_log(&log, 100);
        assert!(!log.exists(), "past the limit it is set aside");
        assert_eq!(
            std::fs::read(&old).unwrap(),
            vec![b'b'; 101],
            "replacing the older one"
        );
        rotate_log(&log, 100);
        assert_eq!(
            std::fs::read(&old).unwrap().len(),
            101,
            "no log: nothing moves"
        );
    }

    #[test]
    fn a_daemon_log_is_never_opened_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let log = dir.path().join("prefetcher.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let err = open_daemon_log(&log).expect_err("a link is refused");
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

        std::fs::remove_file(&log).unwrap();
        use std::io::Write;
        open_daemon_log(&log).unwrap().write_all(b"one\n").unwrap();
        open_daemon_log(&log).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"one\ntwo\n", "appended");
    }
}
