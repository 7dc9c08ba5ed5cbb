//! Restore drills: prove a backup restores, measure how long it takes, and say so in a report.
//!
//! [`run_drill`] restores (any target `restore` accepts) into a fresh directory, starts an
//! ephemeral PostgreSQL with modest memory (`shared_buffers`; connection and worker limits
//! must stay at least the primary's for hot standby) and `recovery_target_action = promote`;
//! waits for recovery; runs the integrity checks; stops the instance and removes it.
//!
//! # Isolation
//!
//! The restored configuration is production's, and a drill must not be able to act on
//! production through it (an audit found a drill's apply worker consuming a production
//! publisher's slot). The instance gets these settings on its command line, where they
//! outrank every configuration file, and in `postgresql.auto.conf` (so a `--keep` copy started
//! by hand is isolated too); after startup the drill reads them back and refuses to go on
//! ([`ISOLATION_CHECK`] is `error`) if any is not in force:
//! - no network: `listen_addresses = ''`, a socket in the drill's private directory with
//!   `unix_socket_permissions = 0700`, `bonjour = off`, `ssl = off`;
//! - no authentication from the restored files: `hba_file` and `ident_file` point at files in
//!   the drill's directory allowing local connections only (`trust`, no replication): the
//!   socket is reachable only by the instance's OS user;
//! - no outbound replication: `max_logical_replication_workers = 0` and
//!   `max_sync_workers_per_subscription = 0` (no apply worker, so no subscription connects to
//!   its publisher), `primary_conninfo = ''` and `primary_slot_name = ''` (no WAL receiver);
//! - nothing written or run on production's behalf: `archive_mode = off` (a drill never
//!   writes into the repository), `recovery_end_command`, `archive_cleanup_command` and
//!   `external_pid_file` empty, `synchronous_standby_names = ''` (commits never wait for a
//!   production standby), `cron.launch_active_jobs = off` (pg_cron);
//! - its own data directory: `data_directory` on the command line (Debian's
//!   `postgresql.conf` names production's, and a `data_directory` in the configuration
//!   outranks `pg_ctl -D`), and before PostgreSQL 15 `stats_temp_directory = 'pg_stat_tmp'`
//!   inside it (a production value, often a tmpfs the running cluster uses, would have the
//!   drill's statistics collector overwrite its files);
//! - `shared_preload_libraries` is kept: some extensions must be preloaded for their tables to
//!   be read. A preloaded extension that connects out on its own (pglogical, a scheduler
//!   running dblink jobs) is not stopped by the above; the README says so.
//!
//! Where the data directory has no `postgresql.conf` (Debian's layout keeps it in `/etc`),
//! the instance reads the backup's own copy of it ([`configuration`]). Production's logging
//! settings are overridden so that the drill can read its server's log (`lc_messages = C`,
//! `log_destination = stderr`, `log_min_messages = warning`).
//!
//! # Measuring
//!
//! MTTR is preflight + restore + startup + replay; each of those phases carries its share of
//! it, and the report the WAL replay share (startup + replay: PostgreSQL replays the backup's
//! own WAL before it accepts a connection), the part shorter backup intervals would shorten.
//! Startup ends when the server's log says it is consistent and replay when it says it was
//! promoted, each phase starting where the one before ended ([`moments`]); polls only stand in
//! for a moment the log does not give.
//! Recovery prefetches WAL as after a restore (`archive-get --prefetch`), through a spool in
//! the work directory, never the production one (a standby of the same cluster on the host
//! may be using it); the difference of that spool's archive-get counters over the recovery
//! says how often replay waited for WAL. The instance starts with
//! `recovery_init_sync_method = syncfs` on its command line (`startup_settings`).
//!
//! # Work directory
//!
//! [`create_workdir`] makes the directory: a new random name in `TMPDIR` (or the path given,
//! which must not exist), created exclusively, owned by the running user, never a directory
//! someone else could have prepared. Running as root with PostgreSQL as the data directory's
//! owner, it is `0711` and root's: the instance's user can reach what it needs inside but
//! cannot create, rename or replace anything there; `bin/` (the copied pgcairn that
//! `restore_command` runs) and `conf/` (pg_hba.conf, pg_ident.conf) are root's `0755` with
//! root's files, and only `pgdata/` and `socket/` (both `0700`) belong to the instance's
//! user. Not as root, everything is ours and the directory is `0700`.
//!
//! # Outcomes
//!
//! Checks, each passed/failed/skipped/error with detail: the isolation settings are in force;
//! recovery reached the target (from the server's own "recovery stopping" / "redo done"
//! lines); `amcheck` `bt_index_check` on every B-tree index of every database when the
//! extension is available; every table read in full, toasted values included and from the
//! heap, never an index-only scan (page checksum failures surface as errors) with its row
//! count; user SQL checks (each must return true); every page checksum
//! of the stopped instance when data checksums are on (`pg_checksums --check` of the backup's
//! major version, else pgcairn's own verification).
//!
//! # PostgreSQL versions
//!
//! The instance runs under the server of the restored data directory's major version
//! (`PG_VERSION`), found by [`PgBinaries::for_major`]: Debian's layout, then
//! `[drill] pg_bindir`, then `pg_config --bindir`; without one the drill does not run (`error`)
//! and says which version it needs and where it looked.
//!
//! Only evidence about the backup fails a drill (`integrity-failed`): an object that does
//! not authenticate, one that is missing, a restore or recovery that does not get there, a
//! check that fails. When the drill cannot run for a reason outside the data (a full or
//! unwritable `TMPDIR` or disk, storage unreachable: [`Error::is_operational`]), the outcome
//! is `error`: nobody should be paged about a backup because a temporary directory filled up.
//! The same holds when recovery stops because `restore_command` (`pgcairn archive-get`)
//! could not read storage or write to a full disk: its message in the server log turns the
//! recovery failure into `error` (a missing or corrupt WAL object stays a failure).
//!
//! Cleanup does not depend on this process surviving: a watchdog (`sh`, in its own process
//! group) stops the instance and removes the directory within a second if the drill process
//! disappears, even by SIGKILL; SIGINT/SIGTERM are handled by the binary calling
//! [`abort_cleanup`]. A first watchdog, which only removes the directory, runs from the start:
//! a drill killed during its restore leaves no partial copy behind.

mod configuration;
mod moments;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use self::report::{Check, DrillReport, Phase, TableRows};
use crate::archive::prefetch::PrefetchSpool;
use crate::error::{Error, Result};
use crate::pg::instance::{
    command_as, current_uid, data_directory_major, free_port, give_to, sh_quote, Instance,
    PgBinaries,
};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::{restore, RestoreOptions};
use crate::store::Timestamp;

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Restore options (target, backup, jobs, restore_command); `target` is set by the drill.
    pub restore: RestoreOptions,
    /// Working directory (created; removed unless `keep`).
    pub workdir: PathBuf,
    /// Keep the stopped instance and its directory.
    pub keep: bool,
    /// MTTR objective.
    pub max_mttr: Option<Duration>,
    /// User SQL checks; each must return a single true.
    pub check_sql: Vec<String>,
    /// Where the local report files go.
    pub report_dir: PathBuf,
    /// The target as the operator wrote it.
    pub target_label: String,
    /// How long recovery may take.
    pub recovery_timeout: Duration,
    /// `[drill] pg_bindir`: where the server binaries of the backup's major version are when
    /// not in Debian's layout; `{major}` stands for the major version
    /// ([`PgBinaries::for_major`]).
    pub pg_bindir: Option<String>,
    /// The prefetch spool the instance's `archive-get --prefetch` uses, whose counters tell
    /// how often replay waited for WAL; `None`: not reported. It must be the drill's own
    /// (under the work directory): it is given to the instance's OS user.
    pub prefetch_spool: Option<PrefetchSpool>,
}

/// Where the drill wrote its report.
#[derive(Debug, Clone)]
pub struct DrillFiles {
    /// JSON.
    pub json: PathBuf,
    /// Markdown.
    pub markdown: PathBuf,
    /// HTML.
    pub html: PathBuf,
}

fn now() -> Timestamp {
    Timestamp::now()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidInput(format!("drill task failed: {e}")))
}

/// The drill instance's server log, as the checks read it: its user writes it, so it is read
/// as an untrusted file ([`crate::untrusted_file`]), from its start (the line saying recovery
/// became consistent comes early, and a long recovery logs a line per segment after it), but
/// only the lines the checks look at ([`LOG_LINES`]), at most [`SERVER_LOG_KEPT`] bytes of
/// them, the last ones, out of at most [`SERVER_LOG_READ`] bytes read.
fn server_log_lines(path: &Path) -> String {
    crate::untrusted_file::matching_lines(path, LOG_LINES, SERVER_LOG_READ, SERVER_LOG_KEPT)
}

/// Lines of the server log the drill's checks read.
const LOG_LINES: &[&str] = &[
    "recovery stopping",
    "redo done at",
    "last completed transaction was at log time",
    "consistent recovery state reached",
    "cannot fetch",
    "FATAL",
    moments::LOG_LINES,
];
/// Most of the server log read: a recovery logs about 100 bytes per segment replayed, so this
/// is some ten million segments.
const SERVER_LOG_READ: u64 = 1 << 30;
/// Most bytes of matching lines kept.
const SERVER_LOG_KEPT: usize = 1 << 20;

/// Name of the check that the isolation settings are in force.
pub const ISOLATION_CHECK: &str = "isolated from production";

/// Mode of the work directory: `0711` as root (the instance's user may traverse it, nothing
/// more), else `0700`.
fn workdir_mode() -> u32 {
    if current_uid() == 0 {
        0o711
    } else {
        0o700
    }
}

fn already_exists(dir: &Path) -> Error {
    Error::Config(format!(
        "drill directory {} already exists: a drill works only in a directory it creates \
         itself, so that nobody else can have put anything in it; name a path that does not \
         exist yet (it is created and removed by the drill), or leave --workdir out",
        dir.display()
    ))
}

/// Refuses a parent where another user could rename our directory away and put theirs in its
/// place: writable by everyone without the sticky bit.
fn check_parent(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(parent).map_err(|e| {
        Error::Config(format!(
            "drill directory {}: its parent {} is not usable: {e}",
            dir.display(),
            parent.display()
        ))
    })?;
    if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
        return Err(Error::Config(format!(
            "drill directory {}: its parent {} is writable by everyone without the sticky bit, \
             so another user could replace the drill's directory; use a private directory",
            dir.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Creates a drill's work directory, new and private (see the module docs): `explicit`, which
/// must not exist, else a random name in `TMPDIR`. Never reuses a path that exists.
pub fn create_workdir(explicit: Option<&Path>) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = match explicit {
        Some(dir) => {
            if std::fs::symlink_metadata(dir).is_ok() {
                return Err(already_exists(dir));
            }
            check_parent(dir)?;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => already_exists(dir),
                    std::io::ErrorKind::NotFound => Error::Config(format!(
                        "drill directory {}: its parent directory does not exist",
                        dir.display()
                    )),
                    _ => Error::io(format!("creating drill directory {}", dir.display()), e),
                })?;
            dir.to_path_buf()
        }
        None => {
            let tmp = std::env::temp_dir();
            check_parent(&tmp.join("x"))?;
            tempfile::Builder::new()
                .prefix("pgcairn-drill-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(&tmp)
                .map_err(|e| {
                    Error::io(
                        format!(
                            "creating a drill directory in {} (TMPDIR); free space there, \
                             point TMPDIR elsewhere or give --workdir",
                            tmp.display()
                        ),
                        e,
                    )
                })?
                .keep()
        }
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(workdir_mode()))
        .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
    Ok(dir)
}

/// Copies the pgcairn binary to `<workdir>/bin/pgcairn` for `restore_command` (PostgreSQL
/// runs it as its own OS user, who may not reach the original): a new `0755` directory and a
/// new `0755` file, both ours (root's, as root), so the instance's user can run it and
/// cannot replace it.
pub fn install_binary(workdir: &Path, exe: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let bin = workdir.join("bin");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&bin)
        .and_then(|()| std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| Error::io(format!("creating {}", bin.display()), e))?;
    let copy = bin.join("pgcairn");
    let copied = (|| {
        let mut from = std::fs::File::open(exe)?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&copy)?;
        std::io::copy(&mut from, &mut to)?;
        to.set_permissions(std::fs::Permissions::from_mode(0o755))
    })();
    copied.map_err(|e| {
        Error::io(
            format!("copying {} to {}", exe.display(), copy.display()),
            e,
        )
    })?;
    Ok(copy)
}

/// Creates `dir` (it must not exist) with `mode`.
fn private_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Writes a new file (it must not exist), readable by everyone, ours.
fn new_file(path: &Path, body: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .and_then(|mut f| {
            f.write_all(body.as_bytes())?;
            // Whatever the umask: the instance's user must read it.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The drill's own authentication files, in `<workdir>/conf`: local connections only (the
/// socket directory and the socket are the instance's user's alone), no replication.
fn write_auth_files(conf_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    private_dir(conf_dir, 0o755)?;
    let hba = conf_dir.join("pg_hba.conf");
    let ident = conf_dir.join("pg_ident.conf");
    new_file(
        &hba,
        "# pgcairn drill: the restored pg_hba.conf is not used. Local connections through the\n\
         # drill's private socket only (the instance's OS user alone can reach it); no TCP, no\n\
         # replication.\n\
         local all all trust\n",
    )?;
    new_file(
        &ident,
        "# pgcairn drill: no user name maps (the restored pg_ident.conf is not used).\n",
    )?;
    Ok((hba, ident))
}

/// The settings that cut a drill off from production (module docs), in force on the command
/// line and checked after startup.
/// Settings by name, as the server must report them.
type Settings = Vec<(&'static str, String)>;

fn isolation_settings(hba: &Path, ident: &Path, major: u32) -> Settings {
    let mut s = vec![
        ("listen_addresses", String::new()),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("bonjour", "off".into()),
        ("ssl", "off".into()),
        ("hba_file", hba.display().to_string()),
        ("ident_file", ident.display().to_string()),
        ("max_logical_replication_workers", "0".into()),
        ("max_sync_workers_per_subscription", "0".into()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("archive_mode", "off".into()),
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("external_pid_file", String::new()),
        ("synchronous_standby_names", String::new()),
    ];
    // Before 15 the statistics collector writes where this says; a production value (a
    // tmpfs shared with the running cluster) would have the drill overwrite its files.
    if major <= 14 {
        s.push(("stats_temp_directory", "pg_stat_tmp".into()));
    }
    s
}

/// Settings that are not about isolation: memory, hot standby, the log where and as the drill
/// reads it, and a placeholder pg_cron honours when it is preloaded (not checked back: without
/// pg_cron it is only a placeholder).
const OTHER_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "64MB"),
    ("hot_standby", "on"),
    ("logging_collector", "off"),
    // Each line starts with its moment on the host's clock ([`moments`]).
    ("log_line_prefix", "%m [%p] "),
    ("log_timezone", "UTC"),
    // The drill reads its server's log: in English, to stderr (the file pg_ctl writes), with
    // the LOG lines about recovery, whatever production's logging is.
    ("lc_messages", "C"),
    ("log_destination", "stderr"),
    ("log_min_messages", "warning"),
    // Production's huge pages are reserved for production: `huge_pages = on` from its
    // configuration fails the drill's start on a host with none to spare.
    ("huge_pages", "off"),
    // Process titles say drill, not production's cluster name (monitoring by process name).
    ("cluster_name", "pgcairn-drill"),
    ("cron.launch_active_jobs", "off"),
];

/// Options of every session the drill opens. The restored catalog carries production's
/// `ALTER ROLE` / `ALTER DATABASE ... SET`: a `statement_timeout` of seconds cancelled the
/// full read of a large table, and `default_transaction_read_only` refused `amcheck`, each a
/// finding about a sound backup. Options sent by the client outrank those.
fn session_options(major: u32) -> String {
    let mut o = String::from(
        "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 \
         -c default_transaction_read_only=off",
    );
    if major >= 17 {
        o.push_str(" -c transaction_timeout=0");
    }
    o
}

/// Settings for the drill instance's start only (command line, never written to a file):
/// `recovery_init_sync_method = syncfs` (PostgreSQL 14+). A restored `pg_control` says the
/// server was running, so PostgreSQL fsyncs every file of the data directory before recovery,
/// as after a crash. The restore has just made every file durable, so one `syncfs` does the
/// same work: measured 2.2–3.8 s down to 0.4–0.6 s at pgbench scale 20 on the 2-core test
/// machine (README, "Recovery settings"). On the command line it applies to this start only;
/// the restore's own first-start block ([`crate::first_start`]) says the same and is removed
/// by the instance's first `archive-get`.
fn startup_settings(pg_major: Option<u32>) -> Vec<(&'static str, String)> {
    match pg_major {
        Some(m) if m >= 14 => vec![("recovery_init_sync_method", "syncfs".into())],
        _ => Vec::new(),
    }
}

/// Largest `postgresql.auto.conf` a drill adds its settings to.
const AUTO_CONF_MAX: u64 = 16 << 20;

/// Appends `lines` to the restored data directory's `postgresql.auto.conf`. The directory
/// belongs to the instance's OS user by now, who could have put a link where the file is
/// (root would then copy a file of its choice there, or write into one): the file is read as
/// an untrusted file and replaced beneath a descriptor of the directory, never through a link,
/// keeping the directory owner's ownership so that the server can read it.
fn append_to_auto_conf(datadir: &Path, lines: &str) -> Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let auto = datadir.join(crate::first_start::AUTO_CONF);
    let io = |e| Error::io(format!("writing {}", auto.display()), e);
    let mut text = match crate::untrusted_file::read_capped(&auto, AUTO_CONF_MAX) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", auto.display()), e)),
    };
    text.push_str(lines);
    let dir = crate::fs_beneath::open_root(datadir).map_err(io)?;
    let meta = std::fs::metadata(datadir).map_err(io)?;
    let owner = (crate::pg::instance::current_uid() == 0).then(|| (meta.uid(), meta.gid()));
    crate::fs_beneath::write_file(
        dir.as_fd(),
        Path::new(crate::first_start::AUTO_CONF),
        text.as_bytes(),
        0o600,
        owner,
    )
    .map_err(io)
}

/// The major version in a data directory's `PG_VERSION`.
fn data_dir_major(datadir: &Path) -> Option<u32> {
    crate::pg::instance::data_directory_major(datadir).ok()
}

/// `-c name=value` options for `pg_ctl -o` (through `/bin/sh`).
fn command_line(settings: &[(&str, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(OTHER_SETTINGS.iter().copied())
        .map(|(k, v)| format!("-c {}", sh_quote(&format!("{k}={v}"))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The same settings as configuration-file lines (for `postgresql.auto.conf`).
fn config_lines(settings: &[(&str, String)]) -> String {
    let mut text = String::from(
        "\n# pgcairn drill overrides: isolation from production (also given on the command line)\n",
    );
    for (k, v) in settings
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(OTHER_SETTINGS.iter().copied())
    {
        text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
    }
    text
}

/// Reads the isolation settings back from the running instance: `passed`, or `error` naming
/// each one not in force (the drill then stops the instance at once).
fn isolation_check(inst: &Instance, settings: &[(&str, String)]) -> Check {
    let names = settings
        .iter()
        .map(|(k, _)| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "select n || '=' || current_setting(n) from unnest(array[{names}]) n \
         union all select 'replication workers=' || count(*) from pg_stat_activity \
         where backend_type like 'logical replication%'"
    );
    let found = match inst.psql("postgres", &sql) {
        Ok(v) => v,
        Err(e) => {
            return Check {
                name: ISOLATION_CHECK.into(),
                status: "error".into(),
                detail: format!("could not read the settings back: {e}"),
            }
        }
    };
    let mut wrong = Vec::new();
    let mut seen = 0;
    for line in found.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        if k == "replication workers" {
            if v != "0" {
                wrong.push(format!("{v} logical replication processes running"));
            }
            continue;
        }
        if let Some((_, want)) = settings.iter().find(|(n, _)| *n == k) {
            seen += 1;
            // PostgreSQL reports its data directory canonical (`//` and `/./` gone).
            let same_dir = k == "data_directory"
                && crate::private_fs::same_path(Path::new(v), Path::new(want));
            if v != want && !same_dir {
                wrong.push(format!("{k} = {v:?}, not {want:?}"));
            }
        }
    }
    if seen != settings.len() {
        wrong.push(format!("{} of {} settings read back", seen, settings.len()));
    }
    Check {
        name: ISOLATION_CHECK.into(),
        status: if wrong.is_empty() { "passed" } else { "error" }.into(),
        detail: if wrong.is_empty() {
            "no network, own pg_hba.conf and data directory, no replication or apply \
             workers, no archiving, no primary_conninfo, no synchronous standbys"
                .into()
        } else {
            format!("not isolated, stopped at once: {}", wrong.join("; "))
        },
    }
}

/// Removes a drill's work directory. Its spool goes first: the instance's background
/// prefetcher may still be writing a segment there, and it exits once its directory is gone;
/// a file it lands meanwhile makes `remove_dir_all` fail with "directory not empty", so the
/// removal is tried again a few times.
fn remove_workdir(workdir: &Path) {
    let _ = std::fs::remove_dir_all(workdir.join("spool"));
    for attempt in 0..5 {
        match std::fs::remove_dir_all(workdir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 4 => {
                tracing::warn!(dir = %workdir.display(), error = %e, "drill work directory not removed");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Stops a drill instance left in `workdir` and removes the directory (signal handlers).
pub fn abort_cleanup(workdir: &Path, keep: bool) {
    let datadir = workdir.join("pgdata");
    if datadir.join("postmaster.pid").exists() {
        let bin = data_directory_major(&datadir)
            .and_then(|major| PgBinaries::for_major(major, None))
            .or_else(|_| PgBinaries::find());
        if let Ok(bin) = bin {
            let owner = owner_of(&datadir);
            let mut c = command_as(owner.as_deref(), &bin.program("pg_ctl"));
            c.arg("-D")
                .arg(&datadir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = c.status();
        }
    }
    if !keep {
        remove_workdir(workdir);
    } else if crate::restore::is_incomplete(&datadir) {
        eprintln!(
            "drill stopped during its restore: {}",
            crate::restore::incomplete_hint(&datadir)
        );
    }
}

/// The owner and group of `dir`.
fn owner_ids(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.uid(), m.gid()))
}

/// The OS user to run PostgreSQL as: the data directory's owner, when we are root.
fn owner_of(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if crate::pg::instance::current_uid() != 0 {
        return None;
    }
    let uid = std::fs::metadata(dir).ok()?.uid();
    let out = Command::new("id")
        .arg("-nu")
        .arg(uid.to_string())
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!name.is_empty() && name != "root")
        .then_some(name)
        .or(Some("postgres".into()))
}

/// Starts a watchdog that cleans up if `pid` (this process) disappears: stops the instance
/// (when `bin` says which `pg_ctl`; before the instance exists there is none to stop) and
/// removes the work directory unless `keep`.
fn spawn_watchdog(
    workdir: &Path,
    datadir: &Path,
    run_as: Option<&str>,
    bin: Option<&PgBinaries>,
    keep: bool,
) -> Option<Child> {
    let stop = match bin {
        None => "true".to_string(),
        Some(bin) => {
            let pg_ctl = sh_quote(&bin.program("pg_ctl").display().to_string());
            let data = sh_quote(&datadir.display().to_string());
            match run_as {
                Some(u) => format!(
                    "runuser -u {} -- {pg_ctl} -D {data} -m immediate -w stop",
                    sh_quote(u)
                ),
                None => format!("{pg_ctl} -D {data} -m immediate -w stop"),
            }
        }
    };
    let remove = if keep {
        String::new()
    } else {
        format!("; rm -rf -- {}", sh_quote(&workdir.display().to_string()))
    };
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1{remove}",
        std::process::id()
    );
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: if ok { "passed" } else { "failed" }.into(),
        detail: detail.into(),
    }
}

fn skipped(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: "skipped".into(),
        detail: detail.into(),
    }
}

/// Age of the newest archived WAL of the cluster (RPO signal). The catalog head records how
/// far each timeline was archived (every few segments): only what lies past that is listed,
/// not an archive of weeks. Without a head, or with nothing past it, the whole archive.
async fn newest_wal_age(repo: &Repository, cluster: &str) -> Option<f64> {
    use crate::repo::layout;
    let prefix = layout::wal_pointer_prefix(cluster);
    let head = crate::store::head::read(repo, cluster).await.ok().flatten();
    let below = head.and_then(|(h, _)| {
        let (tli, t) = h.timelines.iter().next_back()?;
        let last_known = h.segment_name(*tli, t.high.checked_sub(1)?);
        let folder = layout::wal_pointer_timeline_prefix(cluster, crate::types::TimelineId(*tli));
        Some(layout::after_wal_file(&folder, &last_known))
    });
    let mut objects = match &below {
        Some(b) => repo.storage().list_after(&prefix, b).await.ok()?,
        None => Vec::new(),
    };
    if objects.is_empty() {
        objects = repo.storage().list(&prefix).await.ok()?;
    }
    let newest = objects
        .iter()
        .filter_map(|o| crate::repo::layout::parse_wal_pointer(cluster, o.key.as_str()))
        .filter(|(_, n)| n.has_wal_pages())
        .max_by_key(|(t, n)| (*t, n.to_string()))?;
    let p = crate::archive::push::read_wal_record(repo, cluster, &newest.1)
        .await
        .ok()??;
    Some((now() - p.archived_at).as_seconds_f64())
}

/// Runs a drill; the report is stored in the repository and written to `report_dir`.
///
/// The restore holds its backup against `expire` ([`crate::hold`]) until the drill is done:
/// a drill of the oldest backup, running beside the nightly backup's expire, would otherwise
/// see its WAL removed mid-recovery and report a sound backup as failed. A drill killed
/// before it removes its hold leaves it for `recovery_timeout` plus an hour.
pub async fn run_drill(
    repo: &Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
) -> Result<(DrillReport, DrillFiles)> {
    let mut hold = None;
    let result = drill_held(repo, opts, progress, &mut hold).await;
    if let Some(key) = hold {
        if let Err(e) = crate::hold::release(repo, &key).await {
            tracing::warn!("could not remove the drill's hold {key}: {e}");
        }
    }
    result
}

async fn drill_held(
    repo: &Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
    hold: &mut Option<crate::storage::ObjectKey>,
) -> Result<(DrillReport, DrillFiles)> {
    open_report_dir(&opts.report_dir)?;
    let started_at = now();
    let at = started_at.datetime();
    let id = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    let cluster = opts.restore.cluster.clone();
    let rpo = newest_wal_age(repo, &cluster).await;
    let datadir = opts.workdir.join("pgdata");
    let socket_dir = opts.workdir.join("socket");
    let mut phases = Vec::new();
    let mut checks = Vec::new();
    let mut row_counts = Vec::new();
    // From the start, not only once the instance runs: a drill killed during its restore (the
    // longest phase, an OOM kill) would otherwise leave a copy of production in the work
    // directory. Dropped on an early return, it goes on and removes the directory once this
    // process is gone.
    let mut early_watchdog = if opts.keep {
        None
    } else {
        spawn_watchdog(&opts.workdir, &datadir, None, None, false)
    };

    // Preflight: plan and verify without writing. A failure here or in the restore is a
    // drill result (the backup is not restorable), reported like any failed check, unless
    // the drill could not run at all (operational: a full TMPDIR, storage unreachable).
    let t = Instant::now();
    let mut ropts = opts.restore.clone();
    ropts.target = datadir.clone();
    ropts.dry_run = true;
    let planned = match restore(repo, &ropts, progress).await {
        Ok(p) => p,
        Err(e) => {
            let operational = e.is_operational();
            return finish_early(
                repo,
                opts,
                id,
                started_at,
                rpo,
                "preflight",
                t,
                operational,
                e,
            )
            .await;
        }
    };
    phases.push(Phase {
        name: "preflight".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!(
            "backup {} intact; WAL {} .. {} continuous",
            planned.plan.backup_id, planned.plan.first_wal, planned.plan.last_wal
        ),
        share_of_mttr: None,
    });

    // Restore.
    let t = Instant::now();
    ropts.dry_run = false;
    ropts.target_action = Some("promote".into());
    ropts.hold = Some(opts.recovery_timeout + Duration::from_secs(3600));
    let restored = match restore(repo, &ropts, progress).await {
        Ok(r) => {
            hold.clone_from(&r.hold);
            r
        }
        Err(e) => {
            let operational = e.is_operational();
            let e = Error::InvalidInput(format!("backup {}: {e}", planned.plan.backup_id));
            return finish_early(
                repo,
                opts,
                id,
                started_at,
                rpo,
                "restore",
                t,
                operational,
                e,
            )
            .await;
        }
    };
    let secs = t.elapsed().as_secs_f64();
    phases.push(Phase {
        name: "restore".into(),
        seconds: secs,
        detail: format!(
            "{} files, {:.1} MiB, {:.1} MB/s",
            restored.files,
            restored.bytes as f64 / 1048576.0,
            restored.bytes as f64 / 1e6 / secs.max(1e-3)
        ),
        share_of_mttr: None,
    });

    // An ephemeral instance cut off from production (module docs). Failing to set it up is
    // the drill not running, not a finding about the backup.
    let t = Instant::now();
    let setup = (|| -> Result<(Instance, PgBinaries, Settings, configuration::Source)> {
        // The server of the backup's major version: no other can run its data directory.
        let major = data_directory_major(&datadir)?;
        let bin = PgBinaries::for_major(major, opts.pg_bindir.as_deref())?;
        let run_as = owner_of(&datadir);
        private_dir(&socket_dir, 0o700)?;
        give_to(run_as.as_deref(), &socket_dir)?;
        // The drill's own spool: the instance's archive-get writes prefetched WAL there.
        if let Some(spool) = &opts.prefetch_spool {
            give_to(run_as.as_deref(), spool.root())?;
        }
        let source = configuration::prepare(
            &datadir,
            &opts.workdir.join("config"),
            &restored.config_files,
            run_as.as_ref().and(owner_ids(&datadir)),
        )?;
        let (hba, ident) = write_auth_files(&opts.workdir.join("conf"))?;
        let settings = isolation_settings(&hba, &ident, major);
        append_to_auto_conf(&datadir, &config_lines(&settings))?;
        let mut instance = Instance::new(
            bin.clone(),
            datadir.clone(),
            socket_dir.clone(),
            free_port()?,
            run_as,
        );
        instance.session_options = session_options(major);
        Ok((instance, bin, settings, source))
    })();
    let (instance, bin, settings, source) = match setup {
        Ok(v) => v,
        Err(e) => {
            return finish_early(repo, opts, id, started_at, rpo, "startup", t, true, e).await;
        }
    };
    checks.push(Check {
        name: CONFIGURATION_CHECK.into(),
        status: if source == configuration::Source::Defaults {
            "skipped"
        } else {
            "passed"
        }
        .into(),
        detail: source.describe(),
    });
    let run_as = instance.run_as.clone();
    // The instance exists from here: a watchdog that also stops it takes over.
    if let Some(w) = early_watchdog.as_mut() {
        let _ = w.kill();
        let _ = w.wait();
    }
    let mut watchdog = spawn_watchdog(
        &opts.workdir,
        &datadir,
        run_as.as_deref(),
        Some(&bin),
        opts.keep,
    );

    // The spool is the instance user's: read beneath the work directory, never through a link.
    let fetch_before = opts
        .prefetch_spool
        .as_ref()
        .map(|s| s.stats_beneath(&opts.workdir));
    let outcome = run_instance(
        &instance,
        &settings,
        opts,
        &mut phases,
        &mut checks,
        &mut row_counts,
    )
    .await;
    let wal_fetch = opts
        .prefetch_spool
        .as_ref()
        .zip(fetch_before)
        .map(|(s, before)| s.stats_beneath(&opts.workdir).since(&before));
    // Stop (the checks already did, unless one failed early) and clean up.
    let inst = instance.clone();
    let _ = blocking(move || inst.stop()).await;
    if let Err(e) = &outcome {
        checks.push(Check {
            name: "drill ran".into(),
            status: if e.is_operational() {
                "error"
            } else {
                "failed"
            }
            .into(),
            detail: e.to_string(),
        });
    }
    // Recovery that stopped because restore_command could not reach the repository says
    // nothing about the backup: those failures are the drill not running.
    let log = server_log_lines(&datadir.join("pgcairn-server.log"));
    if let Some(line) = wal_unreachable(&log) {
        for c in checks.iter_mut().filter(|c| {
            c.status == "failed"
                && matches!(c.name.as_str(), "recovery reached the target" | "drill ran")
        }) {
            c.status = "error".into();
            c.detail = format!(
                "{} (restore_command could not fetch WAL for a reason outside the data: {line})",
                c.detail
            );
        }
    }
    if let Some(w) = watchdog.as_mut() {
        let _ = w.kill();
        let _ = w.wait();
    }
    if !opts.keep {
        let workdir = opts.workdir.clone();
        let _ = blocking(move || remove_workdir(&workdir)).await;
    }

    let mttr = report::apportion(&mut phases);
    let replay_share = phases.iter().any(|p| p.name == "replay").then(|| {
        phases
            .iter()
            .filter(|p| matches!(p.name.as_str(), "startup" | "replay"))
            .filter_map(|p| p.share_of_mttr)
            .sum::<f64>()
    });
    let total: f64 = phases.iter().map(|p| p.seconds).sum();
    phases.push(Phase {
        name: "total".into(),
        seconds: total,
        detail: format!("MTTR {mttr:.1} s (preflight + restore + startup + replay)"),
        share_of_mttr: None,
    });
    let failed: Vec<&Check> = checks.iter().filter(|c| c.status == "failed").collect();
    let errors: Vec<&Check> = checks.iter().filter(|c| c.status == "error").collect();
    let (outcome_name, summary) = if !failed.is_empty() {
        (
            "integrity-failed".to_string(),
            format!(
                "{} check(s) failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else if !errors.is_empty() {
        (
            "error".to_string(),
            format!(
                "the drill could not run: {}",
                errors
                    .iter()
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
    } else if let Some(max) = opts.max_mttr.filter(|m| mttr > m.as_secs_f64()) {
        (
            "objective-missed".to_string(),
            format!(
                "MTTR {mttr:.1} s exceeds the objective {:.0} s",
                max.as_secs_f64()
            ),
        )
    } else {
        (
            "passed".to_string(),
            format!("all checks passed; MTTR {mttr:.1} s"),
        )
    };
    let report = DrillReport {
        id,
        cluster: cluster.clone(),
        started_at,
        finished_at: now(),
        backup_id: planned.plan.backup_id.clone(),
        backup_reason: planned.plan.reason.clone(),
        target: opts.target_label.clone(),
        phases,
        mttr_seconds: mttr,
        max_mttr_seconds: opts.max_mttr.map(|d| d.as_secs_f64()),
        replay_share,
        wal_fetch,
        restored_bytes: restored.bytes,
        wal_segments: planned.plan.wal_segments,
        newest_wal_age_seconds: rpo,
        checks,
        row_counts,
        outcome: outcome_name,
        summary,
    };
    let files = publish(repo, opts, &report).await?;
    Ok((report, files))
}

/// Stores the report in the repository and writes JSON, Markdown and HTML locally.
/// The report directory, created if needed (mode 0755), never through a link another user
/// could have planted anywhere on its path ([`crate::fs_beneath::create_root_checked`]).
/// Opened once before the drill starts, so that a directory the reports could not be written
/// to stops the drill before its restore, and again when the reports are written.
fn open_report_dir(report_dir: &Path) -> Result<std::os::fd::OwnedFd> {
    crate::fs_beneath::create_root_checked(report_dir, crate::pg::instance::current_uid(), 0o755)
        .map(|(fd, _)| fd)
        .map_err(|e| Error::io(format!("opening {}", report_dir.display()), e))
}

async fn publish(
    repo: &Repository,
    opts: &DrillOptions,
    report: &DrillReport,
) -> Result<DrillFiles> {
    report::store(repo, report).await?;
    let result = crate::store::head::CheckResult {
        at: report.finished_at,
        ok: report.outcome == "passed",
        summary: format!(
            "drill {} ({}): {}",
            report.id, report.outcome, report.summary
        ),
    };
    let recorded = crate::store::head::update(repo, &report.cluster, 0, |h| {
        h.last_drill = Some(result.clone());
        true
    })
    .await;
    if let Err(e) = recorded {
        tracing::warn!(
            "could not record the drill in the catalog head of {:?}: {e}",
            report.cluster
        );
    }
    let done = crate::store::status::DrillStatus {
        id: report.id.clone(),
        finished_at: report.finished_at,
        outcome: report.outcome.clone(),
        mttr_seconds: report.mttr_seconds,
        max_mttr_seconds: report.max_mttr_seconds,
        phases: report
            .phases
            .iter()
            .filter(|p| p.name != "total")
            .map(|p| (p.name.clone(), p.seconds))
            .collect(),
    };
    crate::store::status::record(repo, &report.cluster, "drill", |s| {
        s.drill = Some(done.clone());
        true
    })
    .await;
    let history = report::history(repo, &report.cluster)
        .await
        .unwrap_or_else(|_| vec![report.clone()]);
    // The default report directory is in the spool, which PostgreSQL's OS user can write: it
    // could plant a link named like the next report (or the directory itself) to make a root
    // drill overwrite a file of its choice. The directory is opened refusing a link planted in
    // another user's directory, and each report is written beneath it, replacing whatever
    // stands at its name rather than following it.
    let report_dir = &opts.report_dir;
    let dir = open_report_dir(report_dir)?;
    let base = report_dir.join(format!("drill-{}-{}", report.cluster, report.id));
    let files = DrillFiles {
        json: base.with_extension("json"),
        markdown: base.with_extension("md"),
        html: base.with_extension("html"),
    };
    let write = |p: &Path, body: &str| {
        let name = p.file_name().map(Path::new).unwrap_or(p);
        crate::fs_beneath::write_file(
            std::os::fd::AsFd::as_fd(&dir),
            name,
            body.as_bytes(),
            0o644,
            None,
        )
        .map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    write(
        &files.json,
        &serde_json::to_string_pretty(report).expect("JSON"),
    )?;
    write(&files.markdown, &report::markdown(report))?;
    write(&files.html, &report::html(report, &history))?;
    Ok(files)
}

/// A drill that ended before its instance started: the report says where and why. An
/// `operational` error (the drill could not run) is reported as `error`, anything else as an
/// integrity failure (the backup could not be restored).
#[allow(clippy::too_many_arguments)]
async fn finish_early(
    repo: &Repository,
    opts: &DrillOptions,
    id: String,
    started_at: Timestamp,
    rpo: Option<f64>,
    phase: &str,
    t: Instant,
    operational: bool,
    e: Error,
) -> Result<(DrillReport, DrillFiles)> {
    if !opts.keep {
        let workdir = opts.workdir.clone();
        let _ = blocking(move || remove_workdir(&workdir)).await;
    }
    let (status, outcome, summary) = if operational {
        (
            "error",
            "error",
            format!("the drill could not run: {phase}: {e}"),
        )
    } else {
        ("failed", "integrity-failed", format!("{phase} failed: {e}"))
    };
    let report = DrillReport {
        id,
        cluster: opts.restore.cluster.clone(),
        started_at,
        finished_at: now(),
        backup_id: opts.restore.backup.clone().unwrap_or_default(),
        backup_reason: String::new(),
        target: opts.target_label.clone(),
        phases: vec![Phase {
            name: phase.into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: if operational { "error" } else { "failed" }.into(),
            share_of_mttr: None,
        }],
        mttr_seconds: t.elapsed().as_secs_f64(),
        max_mttr_seconds: opts.max_mttr.map(|d| d.as_secs_f64()),
        replay_share: None,
        wal_fetch: None,
        restored_bytes: 0,
        wal_segments: 0,
        newest_wal_age_seconds: rpo,
        checks: vec![Check {
            name: phase.into(),
            status: status.into(),
            detail: e.to_string(),
        }],
        row_counts: Vec::new(),
        outcome: outcome.into(),
        summary,
    };
    let files = publish(repo, opts, &report).await?;
    Ok((report, files))
}

/// Starts the instance, waits for recovery, runs the checks, stops it.
async fn run_instance(
    instance: &Instance,
    settings: &[(&'static str, String)],
    opts: &DrillOptions,
    phases: &mut Vec<Phase>,
    checks: &mut Vec<Check>,
    row_counts: &mut Vec<TableRows>,
) -> Result<()> {
    let began = SystemTime::now();
    let t = Instant::now();
    let inst = instance.clone();
    // Its own data directory, on the command line only (PostgreSQL takes it from no other
    // place once started), whatever the configuration names (see [`configuration`]).
    let mut checked = settings.to_vec();
    checked.push(("data_directory", instance.datadir.display().to_string()));
    let mut all = checked.clone();
    all.extend(startup_settings(data_dir_major(&instance.datadir)));
    let options = command_line(&all);
    let started = blocking(move || inst.start_with(&options)).await?;
    let log_path = instance.datadir.join("pgcairn-server.log");
    if let Err(e) = started {
        phases.push(Phase {
            name: "startup".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: "failed".into(),
            share_of_mttr: None,
        });
        let log = server_log_lines(&log_path);
        let reason = log
            .lines()
            .rfind(|l| l.contains("FATAL"))
            .unwrap_or("")
            .to_string();
        let mut c = check(
            "recovery reached the target",
            false,
            format!("PostgreSQL did not start: {reason} ({e})"),
        );
        if let Some(why) = start_failure_outside_the_data(&reason) {
            c.status = "error".into();
            c.detail = format!("{} ({why})", c.detail);
        }
        checks.push(c);
        return Ok(());
    }
    let accepted = SystemTime::now();
    // Polled for now; the log's moment replaces it once recovery is over ([`moments`]).
    let startup = phases.len();
    phases.push(Phase {
        name: "startup".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: "until the server is consistent and admits sessions (replays the backup's own \
                 WAL first)"
            .into(),
        share_of_mttr: None,
    });
    let inst = instance.clone();
    let wanted = checked;
    let isolated = blocking(move || isolation_check(&inst, &wanted)).await?;
    let stop_now = isolated.status != "passed";
    checks.push(isolated);
    if stop_now {
        let inst = instance.clone();
        blocking(move || inst.crash()).await??;
        return Ok(());
    }
    let deadline = Instant::now() + opts.recovery_timeout;
    loop {
        let inst = instance.clone();
        let in_recovery =
            blocking(move || inst.psql("postgres", "select pg_is_in_recovery()")).await??;
        if in_recovery == "f" {
            break;
        }
        if Instant::now() > deadline {
            checks.push(check(
                "recovery reached the target",
                false,
                format!(
                    "still recovering after {}s",
                    opts.recovery_timeout.as_secs()
                ),
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = SystemTime::now();
    // The promotion's line follows the poll by a few milliseconds: read until it is there
    // (up to a second), or the polled moment stands in for it.
    let mut log = server_log_lines(&log_path);
    for _ in 0..50 {
        if moments::promotion_logged(&log, began) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        log = server_log_lines(&log_path);
    }
    let (startup_took, replay_took) = moments::phases(&log, began, accepted, ended);
    phases[startup].seconds = startup_took.as_secs_f64();
    phases.push(Phase {
        name: "replay".into(),
        seconds: replay_took.as_secs_f64(),
        detail: "from consistency to the end of recovery and promotion (WAL fetched through \
                 archive-get)"
            .into(),
        share_of_mttr: None,
    });

    let t = Instant::now();
    checks.push(target_check(&log, &opts.restore.target_spec));
    let inst = instance.clone();
    let check_sql = opts.check_sql.clone();
    let (mut found_checks, found_rows, checksums_on) =
        blocking(move || in_instance_checks(&inst, &check_sql)).await??;
    checks.append(&mut found_checks);
    row_counts.extend(found_rows);
    let inst = instance.clone();
    blocking(move || inst.stop()).await??;
    if checksums_on {
        let inst = instance.clone();
        checks.push(blocking(move || page_checksum_check(&inst)).await??);
    } else {
        checks.push(skipped(
            PAGE_CHECKSUMS_CHECK,
            "data checksums are off in this cluster",
        ));
    }
    phases.push(Phase {
        name: "checks".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("{} checks", checks.len()),
        share_of_mttr: None,
    });
    Ok(())
}

/// The name of the check that says which configuration the instance ran on.
pub const CONFIGURATION_CHECK: &str = "production configuration";

/// The name of the page checksum check in reports.
pub const PAGE_CHECKSUMS_CHECK: &str = "page checksums";

/// Verifies every page checksum of the stopped instance: with `pg_checksums --check` of the
/// data directory's major when it is installed (it refuses another major's pg_control), else
/// with pgcairn's own verification (the npm builds of 13, 14, 16, 17 and 18 carry no
/// pg_checksums), which checks the same pages the same way.
fn page_checksum_check(instance: &Instance) -> Result<Check> {
    let major = instance.bin.major();
    if instance.bin.has("pg_checksums") {
        let mut c = command_as(
            instance.run_as.as_deref(),
            &instance.bin.program("pg_checksums"),
        );
        c.arg("--check").arg("-D").arg(&instance.datadir);
        let out = c
            .output()
            .map_err(|e| Error::io("running pg_checksums", e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: String = text
            .lines()
            .filter(|l| {
                l.contains("Bad checksums") || l.contains("Blocks scanned") || l.contains("error")
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(check(
            PAGE_CHECKSUMS_CHECK,
            out.status.success(),
            format!("pg_checksums {major} --check: {summary}"),
        ));
    }
    let found = crate::pg::checksum::verify_data_directory(&instance.datadir)?;
    let mut detail = format!(
        "verified by pgcairn (PostgreSQL {major} has no pg_checksums in {}): {} pages in {} relation files",
        instance.bin.bindir().display(),
        found.pages,
        found.files
    );
    if !found.bad.is_empty() {
        let shown: Vec<String> = found
            .bad
            .iter()
            .take(10)
            .map(|(path, blkno)| format!("{path} block {blkno}"))
            .collect();
        detail.push_str(&format!(
            "; {} bad: {}{}",
            found.bad.len(),
            shown.join(", "),
            if found.bad.len() > 10 { ", ..." } else { "" }
        ));
    }
    Ok(check(PAGE_CHECKSUMS_CHECK, found.bad.is_empty(), detail))
}

/// Why the server's start failed for a reason of this host rather than of the backup, from
/// its last FATAL line (in English: the drill runs it with `lc_messages = C`): a library in
/// `shared_preload_libraries` not installed here, memory or semaphores the host will not
/// give, a socket or lock file it cannot create. `None` for anything else, which stays a
/// finding (a missing checkpoint, WAL ending before the backup's end, ...).
fn start_failure_outside_the_data(fatal: &str) -> Option<&'static str> {
    const HOST: &[(&str, &str)] = &[
        (
            "could not access file",
            "a library the configuration preloads is not installed on this host: install it \
             (a restore here would fail the same way) or drill on a host that has it",
        ),
        (
            "could not load library",
            "a library the configuration preloads does not load on this host",
        ),
        (
            "could not map anonymous shared memory",
            "this host is short of memory",
        ),
        (
            "could not create shared memory segment",
            "this host is short of shared memory",
        ),
        (
            "could not create semaphores",
            "this host is short of semaphores",
        ),
        ("out of memory", "this host is short of memory"),
        (
            "could not create lock file",
            "the drill's socket directory is not usable",
        ),
        ("could not bind", "the drill's socket could not be created"),
        (
            "could not create any Unix-domain sockets",
            "the drill's socket could not be created",
        ),
    ];
    // "could not access file" is also how replay reports a file of the data directory
    // (`pg_twophase/...`): only a library's name (bare, `$libdir/...` or absolute) is this
    // host's.
    if let Some(rest) = fatal.split("could not access file \"").nth(1) {
        let name = rest.split('"').next().unwrap_or("");
        if name.contains('/') && !name.starts_with('/') && !name.starts_with("$libdir/") {
            return None;
        }
    }
    HOST.iter()
        .find(|(pattern, _)| fatal.contains(pattern))
        .map(|(_, why)| *why)
}

/// The line where `pgcairn archive-get` (restore_command) gave up because storage could not
/// be read (unreachable, refusing access) or the local disk was full: its errors reach the
/// server log. A missing or corrupt object is not such a line (that is a finding).
fn wal_unreachable(log: &str) -> Option<String> {
    log.lines()
        .find(|l| {
            l.contains("cannot fetch")
                && ((l.contains(": storage: ") && !l.contains("not found"))
                    || l.contains("No space left on device"))
        })
        .map(|l| l.trim().chars().take(300).collect())
}

/// Did recovery stop where it was asked to? Read from the server's own log lines.
fn target_check(log: &str, target: &crate::recovery::Target) -> Check {
    use crate::recovery::Target;
    let stopping = log
        .lines()
        .find(|l| l.contains("recovery stopping"))
        .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_string());
    let redo_done = log
        .lines()
        .find(|l| l.contains("redo done at"))
        .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_string());
    let last_tx = log
        .lines()
        .rfind(|l| l.contains("last completed transaction was at log time"))
        .map(|l| l.split("log time ").nth(1).unwrap_or("").trim().to_string());
    match target {
        Target::EndOfArchive => check(
            "recovery reached the target",
            redo_done.is_some(),
            format!(
                "end of archive: {}; last transaction {}",
                redo_done.unwrap_or_else(|| "no redo".into()),
                last_tx.unwrap_or_else(|| "none".into())
            ),
        ),
        Target::Immediate => check(
            "recovery reached the target",
            log.contains("consistent recovery state reached"),
            "stopped at the backup's consistency point",
        ),
        Target::Time(t) => {
            let ok = stopping.is_some()
                && last_tx
                    .as_deref()
                    .and_then(|s| crate::recovery::parse_target_time(s).ok())
                    .is_none_or(|tx| tx <= *t);
            check(
                "recovery reached the target",
                ok,
                format!(
                    "{}; last replayed transaction {}",
                    stopping.unwrap_or_else(|| "no recovery stop recorded".into()),
                    last_tx.unwrap_or_else(|| "none".into())
                ),
            )
        }
        _ => check(
            "recovery reached the target",
            stopping.is_some(),
            stopping.unwrap_or_else(|| {
                "no \"recovery stopping\" line: the target was not reached".into()
            }),
        ),
    }
}

type InstanceChecks = (Vec<Check>, Vec<TableRows>, bool);

/// Session settings of the "every table read in full" check: sequential scans only.
const FULL_READ_OPTIONS: &str =
    "-c enable_indexscan=off -c enable_indexonlyscan=off -c enable_bitmapscan=off";

fn in_instance_checks(inst: &Instance, check_sql: &[String]) -> Result<InstanceChecks> {
    let mut checks = Vec::new();
    let mut rows = Vec::new();
    // Names as hex: a name may hold a line break, or anything else.
    let dbs = inst.psql(
        "postgres",
        "select encode(convert_to(datname, 'UTF8'), 'hex') from pg_database where datallowconn and not datistemplate order by 1",
    )?;
    let dbs: Vec<String> = dbs
        .lines()
        .filter(|l| !l.is_empty())
        .map(|h| {
            hex::decode(h)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| Error::InvalidInput(format!("database name {h:?} from psql: {e}")))
        })
        .collect::<Result<_>>()?;
    let amcheck_available = inst.psql(
        "postgres",
        "select count(*) from pg_available_extensions where name = 'amcheck'",
    )? == "1";
    let (mut indexes, mut index_failures) = (0u64, Vec::new());
    let (mut tables, mut table_failures) = (0u64, Vec::new());
    for db in dbs.iter().map(String::as_str) {
        if amcheck_available {
            let r = inst.psql(db, "create extension if not exists amcheck").and_then(|_| {
                inst.psql(
                    db,
                    "select count(*) from (select bt_index_check(c.oid) from pg_index i join pg_class c on c.oid = i.indexrelid \
                     join pg_am a on a.oid = c.relam where a.amname = 'btree' and c.relpersistence <> 't' and i.indisvalid) s",
                )
            });
            match r {
                Ok(n) => indexes += n.parse::<u64>().unwrap_or(0),
                Err(e) => index_failures.push(format!("{db}: {e}")),
            }
        }
        let list = inst.psql(
            db,
            "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'm') and c.relpersistence <> 't' order by 1",
        )?;
        for t in list.lines().filter(|l| !l.is_empty()) {
            tables += 1;
            // Every row formed whole: `pg_column_size(t.*)` detoasts every value (a plain
            // count(*) reads no TOAST), and with index scans off the count comes from the
            // heap, never from an index-only scan that skips all-visible heap pages.
            match inst.psql_with_options(
                db,
                FULL_READ_OPTIONS,
                &format!("select count(pg_column_size(x.*)) from {t} x"),
            ) {
                Ok(n) => rows.push(TableRows {
                    table: format!("{db}.{t}"),
                    rows: n.parse().unwrap_or(-1),
                }),
                Err(e) => table_failures.push(format!("{db}.{t}: {e}")),
            }
        }
    }
    if amcheck_available {
        checks.push(check(
            "amcheck bt_index_check",
            index_failures.is_empty(),
            if index_failures.is_empty() {
                format!("{indexes} B-tree indexes verified")
            } else {
                index_failures.join("; ")
            },
        ));
    } else {
        checks.push(skipped(
            "amcheck bt_index_check",
            "the amcheck extension is not installed on this server",
        ));
    }
    checks.push(check(
        "every table read in full",
        table_failures.is_empty(),
        if table_failures.is_empty() {
            format!("{tables} tables read")
        } else {
            table_failures.join("; ")
        },
    ));
    for (i, sql) in check_sql.iter().enumerate() {
        let name = format!(
            "check-sql #{}: {}",
            i + 1,
            sql.chars().take(60).collect::<String>()
        );
        match inst.psql("postgres", sql) {
            Ok(v) if v == "t" => checks.push(check(&name, true, "returned true")),
            Ok(v) => checks.push(check(
                &name,
                false,
                format!("returned {v:?}, expected a single true"),
            )),
            Err(e) => checks.push(check(&name, false, e.to_string())),
        }
    }
    let checksums_on = inst.psql("postgres", "show data_checksums")? == "on";
    Ok((checks, rows, checksums_on))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_wal_is_found_past_the_heads_mark_without_listing_the_archive() {
        use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
        use crate::pg::wal_header::tests::fake_segment;
        let (mem, repo) = memory_repo().await;
        let seg = 1u64 << 20;
        for n in 1..=40u64 {
            let name: crate::types::WalFileName =
                format!("0000000100000000{n:08X}").parse().unwrap();
            let data = fake_segment(7, 1, n * seg, seg as u32, seg as usize);
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
                .await
                .unwrap();
        }
        // The head heard of segment 32 (every 16th); 40 is the newest.
        let before = mem.keys_listed();
        let age = newest_wal_age(&repo, "main").await.expect("an age");
        let listed = mem.keys_listed() - before;
        assert!((0.0..60.0).contains(&age), "{age}");
        assert!(listed <= 9, "{listed} keys listed, not the archive's 40");
        // Pushed just now and far newer than anything: a newest segment is what counts.
        let late: crate::types::WalFileName = "000000010000000000000050".parse().unwrap();
        let data = fake_segment(7, 1, 0x50 * seg, seg as u32, seg as usize);
        push_wal_file(&repo, "main", &late, WalSource::Bytes(data))
            .await
            .unwrap();
        let before = mem.keys_listed();
        assert!(newest_wal_age(&repo, "main").await.is_some());
        assert!(mem.keys_listed() - before <= 10);
    }

    #[test]
    fn settings_are_appended_to_auto_conf_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let datadir = dir.path().join("pgdata");
        std::fs::create_dir(&datadir).unwrap();
        let auto = datadir.join(crate::first_start::AUTO_CONF);
        std::fs::write(&auto, "work_mem = '8MB'\n").unwrap();
        append_to_auto_conf(&datadir, "port = 5499\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&auto).unwrap(),
            "work_mem = '8MB'\nport = 5499\n"
        );
        // The directory's owner puts a link to another file there: that file is neither read
        // into the configuration nor written.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "secret\n").unwrap();
        std::fs::remove_file(&auto).unwrap();
        std::os::unix::fs::symlink(&victim, &auto).unwrap();
        assert!(append_to_auto_conf(&datadir, "port = 5499\n").is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret\n");
        // No file at all: the settings alone.
        std::fs::remove_file(&auto).unwrap();
        append_to_auto_conf(&datadir, "port = 5499\n").unwrap();
        assert_eq!(std::fs::read_to_string(&auto).unwrap(), "port = 5499\n");
    }

    #[test]
    fn a_start_failure_of_this_host_is_told_from_one_of_the_backup() {
        for host in [
            "FATAL:  could not access file \"pg_stat_statements\": No such file or directory",
            "FATAL:  could not map anonymous shared memory: Cannot allocate memory",
            "FATAL:  could not create any Unix-domain sockets",
            "FATAL:  could not access file \"$libdir/timescaledb-2.14.2\": No such file",
        ] {
            assert!(start_failure_outside_the_data(host).is_some(), "{host}");
        }
        for backup in [
            "PANIC:  could not locate a valid checkpoint record",
            "FATAL:  WAL ends before end of online backup",
            "FATAL:  requested recovery stop point is before consistent recovery point",
            "FATAL:  database files are incompatible with server",
            "FATAL:  could not access file \"pg_twophase/0000030A\": Permission denied",
            "",
        ] {
            assert!(start_failure_outside_the_data(backup).is_none(), "{backup}");
        }
    }

    #[test]
    fn the_startup_sync_is_one_syncfs_only_where_postgresql_has_it() {
        assert!(startup_settings(Some(13)).is_empty());
        assert!(startup_settings(None).is_empty(), "unknown: nothing");
        assert_eq!(
            startup_settings(Some(15)),
            vec![("recovery_init_sync_method", "syncfs".to_string())]
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(data_dir_major(dir.path()), None);
        std::fs::write(dir.path().join("PG_VERSION"), "16\n").unwrap();
        assert_eq!(data_dir_major(dir.path()), Some(16));
        let line = command_line(&startup_settings(Some(16)));
        assert!(
            line.contains("-c 'recovery_init_sync_method=syncfs'"),
            "{line}"
        );
    }
}
