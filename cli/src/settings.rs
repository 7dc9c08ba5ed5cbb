//! One resolved configuration: config file, then `PGCAIRN_<SECTION>_<KEY>` environment
//! variables, then flags. Unknown sections and keys are errors that name the key and where
//! it came from, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcairn_engine::crypto::{KeyCommand, KeyFile, Unlock};
use pgcairn_storage::StorageOptions;

use crate::args::Cli;
use crate::exit::Failure;

const DEFAULT_CONFIG: &str = "/etc/pgcairn/pgcairn.toml";
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "repo",
        &[
            "url",
            "key_file",
            "passphrase_file",
            "unwrap_command",
            "wrap_command",
            "command_timeout",
            "state_dir",
            "allow_insecure_files",
        ],
    ),
    ("cluster", &["name", "pgdata", "conninfo"]),
    (
        "wal_receive",
        &[
            "slot",
            "application_name",
            "commit_interval",
            "status_interval",
            "status_file",
        ],
    ),
    (
        "archive",
        &[
            "async",
            "spool_dir",
            "jobs",
            "timeout",
            "queue_max",
            "idle_exit",
            "compress_level",
            "prefetch",
        ],
    ),
    (
        "backup",
        &[
            "jobs",
            "compress_level",
            "block_size",
            "archive_timeout",
            "standby_wal_wait",
            "lease_wait",
        ],
    ),
    (
        "retention",
        &[
            "full",
            "keep_within",
            "daily",
            "weekly",
            "monthly",
            "pitr_window",
            "auto",
            "gc_grace",
            "gc_repack_below",
            "lease_wait",
            "audit_keep",
        ],
    ),
    ("restore", &["jobs"]),
    ("drill", &["pg_bindir"]),
];

/// How long audit records are kept by default (`retention.audit_keep`): 400 days, a year of
/// history with room for a yearly audit.
pub const DEFAULT_AUDIT_KEEP: Duration = Duration::from_secs(400 * 86400);

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file actually read, if any.
    pub config_file: Option<PathBuf>,
    /// Repository URL.
    pub repo_url: Option<String>,
    /// Key file.
    pub key_file: Option<PathBuf>,
    /// Passphrase file.
    pub passphrase_file: Option<PathBuf>,
    /// Command that opens a command key slot's blob (the key_file / passphrase_file alternative).
    pub unwrap_command: Option<String>,
    /// Wrap command this host trusts to run at `key add` / `key rotate`.
    pub wrap_command: Option<String>,
    /// Deadline of one wrap or unwrap command.
    pub command_timeout: Duration,
    /// Where wrap and unwrap commands run (`None`: the current directory).
    pub command_dir: Option<PathBuf>,
    /// Where this host remembers the newest repository config it has seen (`None`: no
    /// rollback check, when unset and the user has no home directory of their own).
    pub state_dir: Option<PathBuf>,
    /// Accept key, passphrase and config files other users could read or change (warn only).
    pub allow_insecure_files: bool,
    /// Backend options (the rest of `[repo]`).
    pub storage_options: BTreeMap<String, String>,
    /// Cluster name.
    pub cluster: String,
    /// Data directory.
    pub pgdata: Option<PathBuf>,
    /// libpq connection string.
    pub conninfo: String,
    /// Parallel file reads of backups (and of `verify`).
    pub backup_jobs: usize,
    /// Files restored in parallel by `restore` and `drill` ([`default_restore_jobs`]).
    pub restore_jobs: usize,
    /// zstd level of backup blocks.
    pub backup_compress_level: i32,
    /// Block size of backups.
    pub block_size: usize,
    /// How long a backup waits for its WAL to be archived.
    pub backup_archive_timeout: Duration,
    /// On a standby: how long a backup waits for its WAL in the repository before it copies
    /// the missing segments from the standby's `pg_wal` into the backup.
    pub standby_wal_wait: Duration,
    /// How long a backup waits for another backup of the cluster to finish.
    pub lease_wait: Duration,
    /// Asynchronous archiving.
    pub archive_async: bool,
    /// Spool directory for async archiving.
    pub spool_dir: PathBuf,
    /// Parallel pushes in async mode.
    pub archive_jobs: usize,
    /// How long archive-push waits for its acknowledgement.
    pub archive_timeout: Duration,
    /// Backlog (bytes) above which failing WAL is dropped; None: never.
    pub queue_max: Option<u64>,
    /// Segments archive-get keeps prefetched ahead (async mode).
    pub prefetch: usize,
    /// Retention policy.
    pub retention: pgcairn_engine::retention::Policy,
    /// Run expire after each backup.
    pub retention_auto: bool,
    /// GC grace period.
    pub gc_grace: Duration,
    /// Audit records older than this are deleted by expire.
    pub audit_keep: Duration,
    /// GC repacks packs whose live bytes are below this fraction (0: never).
    pub gc_repack_below: f64,
    /// How long expire and gc wait for another run of themselves.
    pub maintenance_lease_wait: Duration,
    /// `repo.object_lock_days`: the bucket's default S3 Object Lock retention, which expire
    /// and gc respect (they never delete what is still under it).
    pub object_lock: Option<Duration>,
    /// `repo.max_requests`: at most this many storage requests in flight per process
    /// ([`pgcairn_engine::store::limit`]); none: each command's own parallelism.
    pub max_requests: Option<usize>,
    /// Pusher idle exit.
    pub idle_exit: Duration,
    /// zstd level for WAL at init.
    pub wal_compress_level: i32,
    /// `[drill] pg_bindir`: the server binaries of a backup's major version when they are not
    /// in `/usr/lib/postgresql/<major>/bin`; `{major}` stands for the major version.
    pub drill_pg_bindir: Option<String>,
    /// `[wal_receive]`.
    pub wal_receive: WalReceiveSettings,
}

/// `[wal_receive]`: the streaming receiver.
#[derive(Debug, Clone)]
pub struct WalReceiveSettings {
    /// Physical replication slot.
    pub slot: String,
    /// `application_name` (what synchronous_standby_names lists).
    pub application_name: String,
    /// Group-commit interval.
    pub commit_interval: Duration,
    /// Status update interval while idle.
    pub status_interval: Duration,
    /// Where the receiver's status is written (default: state_dir/wal-receive-CLUSTER.json).
    pub status_file: Option<PathBuf>,
}

impl Default for WalReceiveSettings {
    fn default() -> Self {
        WalReceiveSettings {
            slot: "pgcairn".into(),
            application_name: "pgcairn".into(),
            commit_interval: pgcairn_engine::walstream::receiver::DEFAULT_COMMIT_INTERVAL,
            status_interval: pgcairn_engine::walstream::receiver::DEFAULT_STATUS_INTERVAL,
            status_file: None,
        }
    }
}

type Table = BTreeMap<String, BTreeMap<String, (String, String)>>; // section -> key -> (value, origin)

fn value_to_string(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Settings {
    /// Resolves settings from the file, the environment and the flags.
    pub fn resolve(cli: &Cli) -> Result<Self, Failure> {
        let mut table: Table = BTreeMap::new();
        let config_file = match &cli.config {
            Some(p) => Some(p.clone()),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
            None => None,
        };
        if let Some(path) = &config_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read config file {}: {e}", path.display()))
            })?;
            let parsed: toml::Table = text.parse().map_err(|e| {
                Failure::usage(format!(
                    "config file {} is not valid TOML: {e}",
                    path.display()
                ))
            })?;
            let allow = parsed
                .get("repo")
                .and_then(|r| r.get("allow_insecure_files"))
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            crate::file_checks::check(
                path,
                crate::file_checks::Kind::Config {
                    holds_secret: crate::file_checks::config_holds_secret(&parsed),
                },
                allow,
            )?;
            for (section, body) in parsed {
                let toml::Value::Table(body) = body else {
                    return Err(Failure::usage(format!(
                        "config file {}: top-level key {section:?} must be a [section]",
                        path.display()
                    )));
                };
                for (k, v) in body {
                    table.entry(section.clone()).or_default().insert(
                        k,
                        (
                            value_to_string(&v),
                            format!("config file {}", path.display()),
                        ),
                    );
                }
            }
        }
        for (name, value) in std::env::vars() {
            let Some(rest) = name.strip_prefix("PGCAIRN_") else {
                continue;
            };
            if matches!(rest, "CONFIG" | "PASSPHRASE" | "LOG")
                || rest.starts_with("TEST_")
                || rest.starts_with("REQUIRE_")
                || rest.starts_with("BUILD_")
            {
                continue;
            }
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            table
                .entry(section.to_ascii_lowercase())
                .or_default()
                .insert(
                    key.to_ascii_lowercase(),
                    (value, format!("environment variable {name}")),
                );
        }
        if let Some(url) = &cli.repo {
            table
                .entry("repo".into())
                .or_default()
                .insert("url".into(), (url.clone(), "--repo".into()));
        }
        if let Some(c) = &cli.cluster {
            table
                .entry("cluster".into())
                .or_default()
                .insert("name".into(), (c.clone(), "--cluster".into()));
        }
        if let Some(d) = &cli.spool_dir {
            table.entry("archive".into()).or_default().insert(
                "spool_dir".into(),
                (d.display().to_string(), "--spool-dir".into()),
            );
        }
        Self::from_table(table, config_file)
    }

    fn from_table(mut table: Table, config_file: Option<PathBuf>) -> Result<Self, Failure> {
        for (section, keys) in &table {
            let Some((_, known)) = SECTIONS.iter().find(|(s, _)| s == section) else {
                let origin = keys.values().next().map(|(_, o)| o.as_str()).unwrap_or("?");
                return Err(Failure::usage(format!(
                    "unknown configuration section [{section}] (from {origin}); known: repo, cluster, archive, backup, retention, drill, wal_receive"
                )));
            };
            if section == "repo" {
                continue; // the rest of [repo] is backend options, checked by the storage crate
            }
            for (k, (_, origin)) in keys {
                if !known.contains(&k.as_str()) {
                    return Err(Failure::usage(format!(
                        "unknown setting {section}.{k} (from {origin}); known in [{section}]: {}",
                        known.join(", ")
                    )));
                }
            }
        }
        let mut take =
            |section: &str, key: &str| table.get_mut(section).and_then(|s| s.remove(key));
        let repo_url = take("repo", "url").map(|v| v.0);
        let key_file = take("repo", "key_file").map(|v| PathBuf::from(v.0));
        let passphrase_file = take("repo", "passphrase_file").map(|v| PathBuf::from(v.0));
        let unwrap_command = take("repo", "unwrap_command").map(|v| v.0);
        let wrap_command = take("repo", "wrap_command").map(|v| v.0);
        let command_timeout = parse_dur(take("repo", "command_timeout"), "repo.command_timeout")?
            .unwrap_or(pgcairn_engine::crypto::command::DEFAULT_TIMEOUT);
        // Default: the running user's own home (`runuser -u postgres` keeps root's HOME, which
        // postgres cannot write: then there is no default rather than a warning per call).
        let state_dir = take("repo", "state_dir")
            .map(|v| PathBuf::from(v.0))
            .or_else(|| {
                use std::os::unix::fs::MetadataExt;
                let home = PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?);
                let own = std::fs::metadata(&home).ok()?.uid()
                    == pgcairn_engine::pg::instance::current_uid();
                own.then(|| home.join(".local/state/pgcairn"))
            });
        let object_lock = parse_num(take("repo", "object_lock_days"), "repo.object_lock_days")?
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d * 86_400));
        let max_requests =
            match parse_num(take("repo", "max_requests"), "repo.max_requests")? {
                Some(0) => return Err(Failure::usage(
                    "repo.max_requests = 0 would stop every request: set at least 1, or remove it \
                     to let each command use its own parallelism",
                )),
                n => n.map(|n| n as usize),
            };
        let allow_insecure_files = parse_bool(
            take("repo", "allow_insecure_files"),
            "repo.allow_insecure_files",
        )?
        .unwrap_or(false);
        let cluster = take("cluster", "name")
            .map(|v| v.0)
            .unwrap_or_else(|| "main".into());
        let pgdata = take("cluster", "pgdata").map(|v| PathBuf::from(v.0));
        let conninfo = take("cluster", "conninfo").map(|v| v.0).unwrap_or_default();
        let backup_jobs = parse_num(take("backup", "jobs"), "backup.jobs")?
            .unwrap_or(default_jobs() as u64)
            .max(1) as usize;
        let restore_jobs = parse_num(take("restore", "jobs"), "restore.jobs")?
            .map_or_else(default_restore_jobs, |n| n as usize)
            .max(1);
        let backup_compress_level =
            parse_level(take("backup", "compress_level"), "backup.compress_level")?.unwrap_or(3);
        let block_size = parse_size(take("backup", "block_size"), "backup.block_size")?
            .unwrap_or(64 << 10) as usize;
        if !block_size.is_multiple_of(8192) || !(8192..=16 << 20).contains(&block_size) {
            return Err(Failure::usage(format!(
                "backup.block_size = {block_size}: use a multiple of 8KiB between 8KiB and 16MiB"
            )));
        }
        let backup_archive_timeout =
            parse_dur(take("backup", "archive_timeout"), "backup.archive_timeout")?
                .unwrap_or(Duration::from_secs(300));
        let standby_wal_wait = parse_dur(
            take("backup", "standby_wal_wait"),
            "backup.standby_wal_wait",
        )?
        .unwrap_or(Duration::from_secs(60));
        let archive_async = parse_bool(take("archive", "async"), "archive.async")?.unwrap_or(false);
        let spool_dir = take("archive", "spool_dir")
            .map(|v| PathBuf::from(v.0))
            .unwrap_or_else(|| "/var/spool/pgcairn".into());
        let archive_jobs = parse_num(take("archive", "jobs"), "archive.jobs")?
            .unwrap_or_else(|| default_jobs().min(4) as u64) as usize;
        let archive_timeout = parse_dur(take("archive", "timeout"), "archive.timeout")?
            .unwrap_or(Duration::from_secs(60));
        let queue_max = parse_size(take("archive", "queue_max"), "archive.queue_max")?;
        let retention = pgcairn_engine::retention::Policy {
            full: parse_num(take("retention", "full"), "retention.full")?.map(|n| n as usize),
            keep_within: parse_dur(take("retention", "keep_within"), "retention.keep_within")?,
            daily: parse_num(take("retention", "daily"), "retention.daily")?.map(|n| n as u32),
            weekly: parse_num(take("retention", "weekly"), "retention.weekly")?.map(|n| n as u32),
            monthly: parse_num(take("retention", "monthly"), "retention.monthly")?
                .map(|n| n as u32),
            pitr_window: parse_dur(take("retention", "pitr_window"), "retention.pitr_window")?,
            object_lock,
        };
        let retention_auto =
            parse_bool(take("retention", "auto"), "retention.auto")?.unwrap_or(false);
        let gc_grace = parse_dur(take("retention", "gc_grace"), "retention.gc_grace")?
            .unwrap_or(Duration::from_secs(3600));
        let audit_keep = parse_dur(take("retention", "audit_keep"), "retention.audit_keep")?
            .unwrap_or(DEFAULT_AUDIT_KEEP);
        let gc_repack_below = parse_fraction(
            take("retention", "gc_repack_below"),
            "retention.gc_repack_below",
        )?
        .unwrap_or(0.5);
        let maintenance_lease_wait =
            parse_dur(take("retention", "lease_wait"), "retention.lease_wait")?
                .unwrap_or(Duration::ZERO);
        let lease_wait =
            parse_dur(take("backup", "lease_wait"), "backup.lease_wait")?.unwrap_or(Duration::ZERO);
        let prefetch =
            parse_num(take("archive", "prefetch"), "archive.prefetch")?.unwrap_or(8) as usize;
        let idle_exit = parse_dur(take("archive", "idle_exit"), "archive.idle_exit")?
            .unwrap_or(Duration::from_secs(10));
        let wal_compress_level =
            parse_level(take("archive", "compress_level"), "archive.compress_level")?
                .unwrap_or(DEFAULT_WAL_COMPRESS_LEVEL);
        let drill_pg_bindir = take("drill", "pg_bindir").map(|v| v.0);
        let defaults = WalReceiveSettings::default();
        let wal_receive = WalReceiveSettings {
            slot: take("wal_receive", "slot")
                .map(|v| v.0)
                .unwrap_or(defaults.slot),
            application_name: take("wal_receive", "application_name")
                .map(|v| v.0)
                .unwrap_or(defaults.application_name),
            commit_interval: parse_dur(
                take("wal_receive", "commit_interval"),
                "wal_receive.commit_interval",
            )?
            .unwrap_or(defaults.commit_interval),
            status_interval: parse_dur(
                take("wal_receive", "status_interval"),
                "wal_receive.status_interval",
            )?
            .unwrap_or(defaults.status_interval),
            status_file: take("wal_receive", "status_file").map(|v| PathBuf::from(v.0)),
        };
        let storage_options = table
            .remove("repo")
            .unwrap_or_default()
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
        pgcairn_engine::repo::layout::validate_cluster_name(&cluster)?;
        Ok(Settings {
            config_file,
            repo_url,
            key_file,
            passphrase_file,
            unwrap_command,
            wrap_command,
            command_timeout,
            command_dir: None,
            state_dir,
            allow_insecure_files,
            storage_options,
            cluster,
            pgdata,
            conninfo,
            backup_jobs,
            restore_jobs,
            backup_compress_level,
            block_size,
            backup_archive_timeout,
            standby_wal_wait,
            lease_wait,
            archive_async,
            spool_dir,
            archive_jobs,
            archive_timeout,
            queue_max,
            prefetch,
            retention,
            retention_auto,
            gc_grace,
            audit_keep,
            gc_repack_below,
            maintenance_lease_wait,
            object_lock,
            max_requests,
            idle_exit,
            wal_compress_level,
            drill_pg_bindir,
            wal_receive,
        })
    }

    /// Makes the relative paths of the settings absolute against `base`, and has wrap and
    /// unwrap commands run there.
    ///
    /// A background pusher or prefetcher leaves the directory it was started in (PostgreSQL
    /// runs `archive_command` and `restore_command` in the data directory), so that it never
    /// holds that directory's file system busy; the paths it read relative to that directory
    /// must keep meaning the same files: config, key and passphrase files, state and spool
    /// directories, the data directory, and the storage options that name files. A key
    /// command is a shell line, not a path: it runs in `base` (briefly, as in the
    /// foreground). Paths no daemon uses (`drill.pg_bindir`, `wal_receive`'s) are left as
    /// they are.
    pub fn anchor_relative_paths(&mut self, base: &Path) {
        self.command_dir = Some(base.to_path_buf());
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for path in [
            &mut self.config_file,
            &mut self.key_file,
            &mut self.passphrase_file,
            &mut self.state_dir,
            &mut self.pgdata,
        ]
        .into_iter()
        .flatten()
        {
            anchor(path);
        }
        anchor(&mut self.spool_dir);
        for key in pgcairn_storage::PATH_OPTIONS {
            if let Some(value) = self.storage_options.get_mut(*key) {
                if Path::new(value).is_relative() {
                    *value = base.join(&*value).display().to_string();
                }
            }
        }
    }

    /// The environment variables naming files for the object-store clients
    /// ([`pgcairn_storage::PATH_ENV_VARS`]) whose value (read by `var`) is a relative path,
    /// each with that path made absolute against `base`: a daemon leaving its start directory
    /// sets them, or a web-identity token file named relative to the data directory would no
    /// longer be found at the next token refresh.
    pub fn anchored_path_env_vars(
        base: &Path,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Vec<(&'static str, PathBuf)> {
        pgcairn_storage::PATH_ENV_VARS
            .iter()
            .filter_map(|name| {
                let value = PathBuf::from(var(name)?);
                (!value.as_os_str().is_empty() && value.is_relative())
                    .then(|| (*name, base.join(value)))
            })
            .collect()
    }

    /// The repository URL, or a usage error saying how to set it.
    pub fn require_repo_url(&self) -> Result<&str, Failure> {
        self.repo_url.as_deref().ok_or_else(|| {
            Failure::usage("no repository configured: set repo.url in the config file, PGCAIRN_REPO_URL, or --repo")
        })
    }

    /// Backend options checked by the storage crate.
    pub fn storage_options(&self) -> Result<StorageOptions, Failure> {
        Ok(StorageOptions::new(self.storage_options.clone())?)
    }

    /// What unlocks the repository: key file, passphrase file, unwrap command or
    /// `PGCAIRN_PASSPHRASE`.
    pub fn unlock(&self) -> Result<Option<Unlock>, Failure> {
        let configured = [
            self.key_file.is_some(),
            self.passphrase_file.is_some(),
            self.unwrap_command.is_some(),
        ];
        if configured.iter().filter(|c| **c).count() > 1 {
            return Err(Failure::usage(
                "more than one of repo.key_file, repo.passphrase_file and repo.unwrap_command is set: keep one",
            ));
        }
        if let Some(cmd) = &self.unwrap_command {
            if cmd.trim().is_empty() {
                return Err(Failure::usage("repo.unwrap_command is empty"));
            }
            return Ok(Some(Unlock::Command(self.key_command(cmd))));
        }
        if let Some(kf) = &self.key_file {
            crate::file_checks::check(
                kf,
                crate::file_checks::Kind::Secret("repo.key_file"),
                self.allow_insecure_files,
            )?;
            return Ok(Some(Unlock::KeyFile(KeyFile::load(kf)?)));
        }
        if let Some(pf) = &self.passphrase_file {
            crate::file_checks::check(
                pf,
                crate::file_checks::Kind::Secret("repo.passphrase_file"),
                self.allow_insecure_files,
            )?;
            let p = std::fs::read_to_string(pf).map_err(|e| {
                Failure::usage(format!(
                    "cannot read repo.passphrase_file {}: {e}",
                    pf.display()
                ))
            })?;
            let p = p.trim_end_matches(['\n', '\r']).to_string();
            if p.is_empty() {
                return Err(Failure::usage(format!(
                    "repo.passphrase_file {} is empty",
                    pf.display()
                )));
            }
            return Ok(Some(Unlock::Passphrase(p)));
        }
        match std::env::var("PGCAIRN_PASSPHRASE") {
            Ok(p) if !p.is_empty() => Ok(Some(Unlock::Passphrase(p))),
            _ => Ok(None),
        }
    }
}

impl Settings {
    /// A wrap or unwrap command with the configured deadline.
    pub fn key_command(&self, command: &str) -> KeyCommand {
        KeyCommand {
            command: command.to_string(),
            timeout: self.command_timeout,
            working_dir: self.command_dir.clone(),
        }
    }
}

/// Default parallelism: the number of cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Files a restore writes at once by default: twice the cores, at most 8. A restore's
/// threads alternate between opening blocks and a direct write that waits for the device;
/// with as many files as cores in flight, the device saw too few writes at a time to reach
/// its rate (scale 200 on 2 cores: 4 files against 2, 0.87x the wall time over eight
/// alternating pairs). At most 8: past that, more files at once only add open files and
/// per-file work; the range reads in flight are bounded by the restore's threads either way.
pub fn default_restore_jobs() -> usize {
    (2 * default_jobs()).min(8)
}

fn parse_bool(v: Option<(String, String)>, name: &str) -> Result<Option<bool>, Failure> {
    v.map(|(v, origin)| match v.as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(Failure::usage(format!(
            "{name} = {v:?} (from {origin}) is not a boolean"
        ))),
    })
    .transpose()
}

/// zstd level of WAL in new repositories: -1 with the WAL tuning stores about 5% more than
/// level 3 at nearly twice its speed (see `pgcairn_engine::codec::compression`).
pub const DEFAULT_WAL_COMPRESS_LEVEL: i32 = -1;

/// A zstd level: -7 to -1 (fastest) or 1 to 19.
fn parse_level(v: Option<(String, String)>, name: &str) -> Result<Option<i32>, Failure> {
    use pgcairn_engine::codec::compression::{is_valid_level, LEVELS};
    v.map(|(v, origin)| match v.parse::<i32>() {
        Ok(level) if is_valid_level(level) => Ok(level),
        _ => Err(Failure::usage(format!(
            "{name} = {v:?} (from {origin}): use a zstd level from {} to -1 or 1 to {}",
            LEVELS.start(),
            LEVELS.end()
        ))),
    })
    .transpose()
}

fn parse_num(v: Option<(String, String)>, name: &str) -> Result<Option<u64>, Failure> {
    v.map(|(v, origin)| {
        v.parse()
            .map_err(|_| Failure::usage(format!("{name} = {v:?} (from {origin}) is not a number")))
    })
    .transpose()
}

fn parse_dur(v: Option<(String, String)>, name: &str) -> Result<Option<Duration>, Failure> {
    v.map(|(v, origin)| {
        pgcairn_storage::parse_duration(&v).ok_or_else(|| {
            Failure::usage(format!(
                "{name} = {v:?} (from {origin}) is not a duration like 30s or 5m"
            ))
        })
    })
    .transpose()
}

/// A fraction like `0.5` or `50%` (0 to 1).
fn parse_fraction(v: Option<(String, String)>, name: &str) -> Result<Option<f64>, Failure> {
    v.map(|(v, origin)| {
        let t = v.trim();
        let f = match t.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
            None => t.parse::<f64>(),
        };
        f.ok().filter(|f| (0.0..=1.0).contains(f)).ok_or_else(|| {
            Failure::usage(format!(
                "{name} = {v:?} (from {origin}) is not a fraction like 0.5 or 50% (0 disables)"
            ))
        })
    })
    .transpose()
}

/// Sizes like `512MiB`, `4GiB`, `1000000`.
fn parse_size(v: Option<(String, String)>, name: &str) -> Result<Option<u64>, Failure> {
    v.map(|(v, origin)| {
        let t = v.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            "TiB" | "T" | "TB" => 1 << 40,
            _ => 0,
        };
        n.parse::<u64>()
            .ok()
            .filter(|_| mult > 0)
            .map(|n| n * mult)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{name} = {v:?} (from {origin}) is not a size like 4GiB"
                ))
            })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str, &str)]) -> Table {
        let mut t: Table = BTreeMap::new();
        for (section, key, value) in entries {
            t.entry(section.to_string())
                .or_default()
                .insert(key.to_string(), (value.to_string(), "test".into()));
        }
        t
    }

    #[test]
    fn relative_paths_are_anchored_and_absolute_ones_kept() {
        let mut s = Settings::from_table(
            table(&[
                ("repo", "key_file", "keys/repo.key"),
                ("repo", "ca_file", "ca.pem"),
                ("repo", "endpoint", "relative-looking"),
                ("archive", "spool_dir", "spool"),
                ("cluster", "pgdata", "/srv/pg"),
            ]),
            Some(PathBuf::from("pgcairn.toml")),
        )
        .unwrap();
        s.anchor_relative_paths(Path::new("/var/lib/pg/data"));
        assert_eq!(
            s.config_file.as_deref(),
            Some(Path::new("/var/lib/pg/data/pgcairn.toml"))
        );
        assert_eq!(
            s.key_file.as_deref(),
            Some(Path::new("/var/lib/pg/data/keys/repo.key"))
        );
        assert_eq!(s.spool_dir, Path::new("/var/lib/pg/data/spool"));
        assert_eq!(s.pgdata.as_deref(), Some(Path::new("/srv/pg")));
        assert_eq!(s.storage_options["ca_file"], "/var/lib/pg/data/ca.pem");
        assert_eq!(
            s.storage_options["endpoint"], "relative-looking",
            "only path options are anchored"
        );
    }

    #[test]
    fn relative_path_env_vars_are_anchored_and_others_left_alone() {
        let env: BTreeMap<&str, &str> = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "secrets/token"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/azure/token"),
            ("GOOGLE_APPLICATION_CREDENTIALS", ""),
            ("AWS_REGION", "relative-looking"),
        ]
        .into_iter()
        .collect();
        let anchored = Settings::anchored_path_env_vars(Path::new("/var/lib/pg/data"), |name| {
            env.get(name).map(std::ffi::OsString::from)
        });
        assert_eq!(
            anchored,
            vec![(
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                PathBuf::from("/var/lib/pg/data/secrets/token")
            )],
            "only relative, non-empty path variables are anchored"
        );
    }

    #[test]
    fn max_requests_is_read_and_zero_is_refused() {
        let s = Settings::from_table(table(&[("repo", "max_requests", "4")]), None).unwrap();
        assert_eq!(s.max_requests, Some(4));
        let s = Settings::from_table(table(&[]), None).unwrap();
        assert_eq!(s.max_requests, None);
        let err = Settings::from_table(table(&[("repo", "max_requests", "0")]), None)
            .expect_err("0 is refused");
        assert!(
            format!("{err:?}").contains("repo.max_requests = 0"),
            "{err:?}"
        );
    }

    #[test]
    fn retention_and_gc_settings_are_read() {
        let s = Settings::from_table(
            table(&[
                ("retention", "full", "2"),
                ("retention", "auto", "true"),
                ("retention", "gc_grace", "10m"),
                ("retention", "gc_repack_below", "30%"),
                ("retention", "pitr_window", "7d"),
                ("retention", "lease_wait", "1m"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(s.retention.full, Some(2));
        assert!(s.retention_auto);
        assert_eq!(s.gc_grace, Duration::from_secs(600));
        assert!((s.gc_repack_below - 0.3).abs() < 1e-9);
        assert_eq!(
            s.retention.pitr_window,
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(s.maintenance_lease_wait, Duration::from_secs(60));
    }

    #[test]
    fn drill_pg_bindir_is_read_and_a_typo_is_refused() {
        let s = Settings::from_table(
            table(&[("drill", "pg_bindir", "/usr/pgsql-{major}/bin")]),
            None,
        )
        .unwrap();
        assert_eq!(s.drill_pg_bindir.as_deref(), Some("/usr/pgsql-{major}/bin"));
        assert_eq!(
            Settings::from_table(table(&[]), None)
                .unwrap()
                .drill_pg_bindir,
            None
        );
        let err = Settings::from_table(table(&[("drill", "pg_bin_dir", "/x")]), None).unwrap_err();
        assert!(format!("{err:?}").contains("drill.pg_bin_dir"), "{err:?}");
    }

    #[test]
    fn restore_jobs_are_their_own_setting_not_backup_jobs() {
        let s = Settings::from_table(
            table(&[("restore", "jobs", "3"), ("backup", "jobs", "1")]),
            None,
        )
        .unwrap();
        assert_eq!((s.restore_jobs, s.backup_jobs), (3, 1));
        let s = Settings::from_table(table(&[("backup", "jobs", "1")]), None).unwrap();
        assert_eq!(s.restore_jobs, (2 * default_jobs()).min(8));
        let err = Settings::from_table(table(&[("restore", "jobs", "many")]), None).unwrap_err();
        assert!(format!("{err:?}").contains("restore.jobs"), "{err:?}");
    }

    #[test]
    fn bad_retention_values_name_the_setting() {
        let err = Settings::from_table(table(&[("retention", "gc_repack_below", "2")]), None)
            .unwrap_err();
        assert!(format!("{err:?}").contains("retention.gc_repack_below"));
        let err = Settings::from_table(table(&[("retention", "fulll", "2")]), None).unwrap_err();
        assert!(format!("{err:?}").contains("unknown setting retention.fulll"));
    }

    #[test]
    fn compression_levels_accept_the_fast_levels_and_refuse_zero() {
        let s = Settings::from_table(table(&[]), None).unwrap();
        assert_eq!(s.wal_compress_level, DEFAULT_WAL_COMPRESS_LEVEL);
        assert_eq!(s.backup_compress_level, 3);
        let s = Settings::from_table(table(&[("archive", "compress_level", "-3")]), None).unwrap();
        assert_eq!(s.wal_compress_level, -3);
        for bad in ["0", "20", "-8", "fast"] {
            let err = Settings::from_table(table(&[("archive", "compress_level", bad)]), None)
                .unwrap_err();
            let msg = format!("{err:?}");
            assert!(
                msg.contains("archive.compress_level") && msg.contains("-7"),
                "{msg}"
            );
        }
    }
}
