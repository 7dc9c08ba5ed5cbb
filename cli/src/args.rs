//! Command-line arguments (clap). These types stop at `main`: everything is turned into a
//! resolved [`crate::settings::Settings`] before any engine call.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// pgcairn: backup and point-in-time recovery for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pgcairn", version = crate::VERSION, about, long_about = None, after_help = "\
Configuration is read from --config, else $PGCAIRN_CONFIG, else /etc/pgcairn/pgcairn.toml,
then PGCAIRN_<SECTION>_<KEY> environment variables, then flags. Secrets never come from flags:
the passphrase comes from PGCAIRN_PASSPHRASE or repo.passphrase_file, a raw key from repo.key_file.

Exit codes: 0 success; 1 failed (archive-get: file not in the archive); 2 usage or configuration
error; 200 archive-get could not tell whether the file exists (PostgreSQL aborts recovery).")]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "PGCAIRN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Repository URL (overrides repo.url): file:///path, s3://bucket/prefix, gs://..., az://...
    #[arg(long, global = true, value_name = "URL")]
    pub repo: Option<String>,

    /// Cluster name inside the repository (overrides cluster.name; default "main").
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,

    /// Spool directory (overrides archive.spool_dir), for example a spool of its own for one
    /// recovery's archive-get (drills write it into their restore_command).
    #[arg(long, global = true, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Progress display.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Log level filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, env = "PGCAIRN_LOG", default_value = "warn")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

/// When to draw progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, periodic log lines otherwise.
    Auto,
    /// Always bars.
    Always,
    /// Nothing.
    Never,
}

/// Backup types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackupTypeArg {
    /// Every file.
    Full,
    /// Changed since the last full backup.
    Diff,
    /// Changed since the last backup.
    Incr,
}

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash (bash-completion).
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// Stable JSON for monitoring.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository (refuses an existing one).
    #[command(after_help = "Examples:
  pgcairn --repo file:///var/lib/pgcairn init --key-file /etc/pgcairn/repo.key
  PGCAIRN_PASSPHRASE=... pgcairn --repo s3://bucket/pg init
  pgcairn --repo file:///tmp/scratch init --no-encryption")]
    Init {
        /// Key file: created (mode 0600) if it does not exist, else used.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
        /// Create an unencrypted repository (objects still carry keyed checksums).
        #[arg(long)]
        no_encryption: bool,
    },

    /// Manage key slots and key epochs: list, add, remove, passwd, rotate.
    #[command(subcommand)]
    Key(KeyCmd),

    /// Archive one WAL file (for archive_command = 'pgcairn archive-push %p').
    #[command(after_help = "Examples:
  archive_command = 'pgcairn --config /etc/pgcairn/pgcairn.toml archive-push %p'
Exit 0 only once the file is durable in the repository (or, with archive.async, acknowledged
by the background pusher, which acknowledges only durable files).")]
    ArchivePush {
        /// Path of the WAL file (%p), relative to the data directory or absolute.
        wal_path: PathBuf,
    },

    /// Fetch one WAL file (for restore_command = 'pgcairn archive-get %f %p').
    #[command(after_help = "Examples:
  restore_command = 'pgcairn --config /etc/pgcairn/pgcairn.toml archive-get --prefetch %f %p'
Exit 0: written; 1: not in the archive; 200: unknown (storage, key or corruption error):
PostgreSQL aborts recovery rather than stopping early at the wrong point.")]
    ArchiveGet {
        /// WAL file name (%f).
        wal_name: String,
        /// Destination path (%p).
        dest_path: PathBuf,
        /// Keep the next `archive.prefetch` segments fetched in `archive.spool_dir` in the
        /// background, as `archive.async = true` does, without making archive-push
        /// asynchronous; where the spool cannot be used, fetch directly without a warning.
        /// `restore` writes it into the `restore_command` it sets up.
        #[arg(long)]
        prefetch: bool,
    },

    /// Stream WAL from the server as a synchronous standby, durable in the repository before acknowledged.
    #[command(after_help = "Examples:
  pgcairn wal-receive --create-slot          # once: creates the physical slot 'pgcairn'
  systemctl enable --now pgcairn-wal-receive.service
Then on the primary: synchronous_standby_names = 'pgcairn' (the application_name).
Every position is reported flushed only once it is durable in the repository (sealed chunks,
group commit every wal_receive.commit_interval); completed segments become ordinary archived
segments; archive-get serves the newest partial segment. Runs until SIGTERM or SIGINT.
Needs cluster.conninfo with a role that has REPLICATION (pg_hba.conf: a 'replication' line).")]
    WalReceive {
        /// Create the physical replication slot if it does not exist.
        #[arg(long)]
        create_slot: bool,
        /// Replication slot name (default: wal_receive.slot, else "pgcairn").
        #[arg(long)]
        slot: Option<String>,
    },

    /// Take a base backup (default incr; becomes full when the cluster has none).
    #[command(after_help = "Examples:
  pgcairn backup --type full
  pgcairn backup                 # incremental: re-reads only files changed since the last backup
  pgcairn backup --type diff --checksum-delta
Needs cluster.pgdata (read as the data directory's owner) and cluster.conninfo.")]
    Backup {
        /// full: read everything; diff: files changed since the last full; incr: since the last backup.
        #[arg(long = "type", value_enum, default_value_t = BackupTypeArg::Incr)]
        backup_type: BackupTypeArg,
        /// Re-read every file even when size and mtime are unchanged.
        #[arg(long)]
        checksum_delta: bool,
        /// Pin the new backup: expire never removes it (`pgcairn unpin ID` to release).
        #[arg(long)]
        pin: bool,
        /// Files read in parallel (default: backup.jobs, else the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Memory, in MiB, for the ids of the blocks already stored (half: 32 bytes per block
        /// of the repository, 64 MiB holds a million) and of those this backup stores (the
        /// other half: 40 bytes per block). Past its half, the repository's ids go to a sorted
        /// table in TMPDIR (32 bytes of local disk per block; sorting them stays within their
        /// half and a sixteenth), and this backup forgets the blocks it stored so far (a
        /// block met again after that is stored twice), so a backup's memory stays bounded
        /// whatever the repository's size. TMPDIR must be on disk for that.
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        index_memory: u64,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Restore a backup, to the end of the archive or to a point in time.
    #[command(after_help = "Examples:
  pgcairn restore --pgdata /srv/pg --target-time '2026-11-24 07:10:00+00' --target-action promote
  pgcairn restore --pgdata /srv/pg --target-lsn 0/3000060
  pgcairn restore --pgdata /srv/pg --target-name before_migration --dry-run
  pgcairn restore --pgdata /srv/pg --delta            # reuse what is already in /srv/pg
  pgcairn restore --pgdata /srv/replica --type standby
  pgcairn restore --pgdata /srv/replica --type standby --primary-conninfo 'host=pg1 user=replicator'
Before writing anything, checks the backup is intact and the WAL from it to the target is
continuous; if not, names the missing segment and the latest reachable target.
Default --target-action is PostgreSQL's (pause): inspect, then pg_wal_replay_resume() or promote.")]
    Restore(Box<RestoreArgs>),

    /// Restore into an ephemeral instance, check integrity, measure MTTR, write a report.
    #[command(after_help = "Examples:
  pgcairn drill                                   # end of the archive
  pgcairn drill --target-time '2026-11-24 07:10:00+00' --max-mttr 15m --check-sql checks.sql
  pgcairn drill --history
Runs the server of the backup's PostgreSQL major version: /usr/lib/postgresql/<major>/bin, else
[drill] pg_bindir (\"{major}\" stands for the version), else pg_config --bindir of that major.
Exit codes: 0 passed; 1 the drill could not run (full or unwritable disk or TMPDIR, storage
unreachable, no server of the backup's major: the report says error); 2 usage; 3 an integrity
check failed; 4 the MTTR objective was missed. Reports: JSON and HTML in the report directory
and the repository.")]
    Drill(Box<DrillArgs>),

    /// Check the repository: structure, WAL continuity, and with --read-data the data itself.
    #[command(after_help = "Examples:
  pgcairn verify                      # manifests, index, packs present, WAL of every backup
  pgcairn verify --read-data          # also decrypt and re-hash every block not verified before
  pgcairn verify --read-data 10%      # a random tenth of the packs
  pgcairn verify --read-data 3/7      # slice 3 of 7: seven nightly runs cover everything
Exit 1 when anything is damaged; every damaged backup is named.")]
    Verify {
        /// Read and re-hash data: all (no value), PERCENT% or N/T.
        #[arg(long, num_args = 0..=1, default_missing_value = "100%", value_name = "PERCENT|N/T")]
        read_data: Option<String>,
        /// Re-read packs verified by earlier runs too.
        #[arg(long)]
        all: bool,
        /// Memory, in MiB, for the repository's block index (52 bytes per block: 64 MiB holds
        /// about a million, 64 GiB of distinct data). A larger index goes to a sorted table
        /// in TMPDIR (52 bytes of local disk per block), so verify's memory stays bounded
        /// whatever the repository's size. TMPDIR must be on disk for that.
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        index_memory: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Apply the retention policy: expire backups no rule keeps, and WAL none needs.
    #[command(after_help = "Examples:
  pgcairn expire --dry-run            # every backup with the rule that keeps or drops it
  pgcairn expire
Policy in [retention]: full = N, keep_within = \"14d\", daily = D, weekly = W, monthly = M;
pitr_window = \"7d\" keeps only consistency WAL for backups older than that.
Pinned backups (backup --pin, pgcairn pin ID) and the newest backup are never expired; with
no policy, nothing is. Space held by expired backups' blocks is reclaimed by pgcairn gc.")]
    Expire {
        /// Show what would go and why; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Garbage collection: delete packs no backup references and repack mostly-garbage ones (mark, condemn, sweep after a grace period).
    #[command(after_help = "Examples:
  pgcairn gc --dry-run
  pgcairn gc                       # condemns now, sweeps what was condemned a grace period ago
  pgcairn gc --grace 0s            # only when nothing else uses the repository
Packs less than retention.gc_repack_below (default 50%) live are repacked: their live blocks
are copied, still encrypted, into new packs. One gc runs at a time (lease in the repository).
Safe while backups and archive-push run: see the protocol in engine/src/gc/mod.rs.")]
    Gc {
        /// Show what would be condemned and swept; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Grace period (default retention.gc_grace, else 1h): longer than your longest backup.
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        /// Memory, in MiB, for the index entries of every pack (48 bytes each) and the blocks
        /// the backups reference (36 bytes each), half each: 128 MiB holds about 1.5 million
        /// blocks, 100 GB of distinct data. Past either half it goes to files in TMPDIR, so
        /// gc's memory stays bounded whatever the repository's size (slower: a lookup reads
        /// a page of a file). TMPDIR must be on disk for that.
        #[arg(long, value_name = "MIB", default_value_t = 128)]
        index_memory: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Pin a backup: expire never removes it.
    Pin {
        /// Backup id.
        id: String,
    },

    /// Unpin a backup.
    Unpin {
        /// Backup id.
        id: String,
    },

    /// Create a named restore point (pg_create_restore_point) to recover to later.
    #[command(after_help = "Examples:
  pgcairn restore-point before_migration
  pgcairn restore --pgdata /srv/pg --target-name before_migration")]
    RestorePoint {
        /// Restore point name.
        name: String,
    },

    /// Check configuration, PostgreSQL settings, repository access and WAL archiving.
    #[command(after_help = "Examples:
  pgcairn check
Forces a WAL switch and waits until that segment is in the repository.")]
    Check,

    /// Show the repository: clusters, archived WAL ranges and gaps per timeline.
    #[command(after_help = "Examples:
  pgcairn info
  pgcairn info --output json | jq '.clusters[0].wal.timelines'")]
    Info {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// List the audit trail: who ran which command that changed the repository or restored
    /// from it, where, when, and how it ended.
    #[command(after_help = "Examples:
  pgcairn audit
  pgcairn audit --since 7d
  pgcairn audit --since 2026-11-24T00:00:00Z --output json
Recorded: init, backup, restore, restore-point, drill, expire, gc, pin, unpin and key changes
(not dry runs). Records outlive expire and gc; expire deletes those older than [audit] keep.")]
    Audit {
        /// Only records from this time on: RFC 3339, or a duration ago (24h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Print Prometheus metrics (text exposition format) once, e.g. for node_exporter's
    /// textfile collector.
    #[command(after_help = "Examples:
  pgcairn metrics
  pgcairn metrics > /var/lib/node_exporter/pgcairn.prom.$$ && mv /var/lib/node_exporter/pgcairn.prom.$$ /var/lib/node_exporter/pgcairn.prom
Reads the small status objects commands keep (never a full scan of the repository) and, where
cluster.conninfo and cluster.pgdata are set, PostgreSQL's archiver statistics and pg_wal.
A repository that cannot be read prints pgcairn_up 0 with the reason in a label and exits 1.")]
    Metrics,

    /// Serve Prometheus metrics over HTTP: /metrics and /healthz.
    #[command(after_help = "Examples:
  pgcairn serve                          # 127.0.0.1:9187
  pgcairn serve --listen 0.0.0.0:9187
/metrics is what `pgcairn metrics` prints, computed per scrape; /healthz answers 200 when the
repository can be read, 503 with the reason when not. Runs until SIGTERM or SIGINT.")]
    Serve {
        /// Address to listen on.
        #[arg(
            long,
            env = "PGCAIRN_METRICS_LISTEN",
            default_value = "127.0.0.1:9187",
            value_name = "ADDR"
        )]
        listen: String,
    },

    /// Run the whole engine on a throwaway cluster and local repository.
    #[command(after_help = "Examples:
  pgcairn demo
  pgcairn demo --dir /tmp/pgcairn-demo --keep")]
    Demo {
        /// Working directory (default: a new directory under /tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the directory (cluster stopped) afterwards.
        #[arg(long)]
        keep: bool,
    },

    /// Print a shell completion script (bash, zsh or fish) to standard output.
    #[command(after_help = "Examples:
  pgcairn completions bash > /usr/share/bash-completion/completions/pgcairn
  pgcairn completions zsh > /usr/share/zsh/vendor-completions/_pgcairn
  pgcairn completions fish > /usr/share/fish/vendor_completions.d/pgcairn.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },

    /// Internal: write the man pages (pgcairn.1 and one per subcommand) into DIR (packaging).
    #[command(hide = true)]
    Manpages {
        /// Output directory (created if missing).
        dir: PathBuf,
    },

    /// Internal: the background WAL prefetcher started by asynchronous archive-get.
    #[command(hide = true)]
    ArchiveGetDaemon {
        /// The data directory recovering (archive-get's working directory).
        #[arg(long)]
        pgdata: PathBuf,
    },

    /// Internal: the background WAL pusher started by asynchronous archive-push.
    #[command(hide = true)]
    ArchivePushDaemon {
        /// The cluster's pg_wal directory.
        #[arg(long)]
        pg_wal: PathBuf,
    },
}

/// Arguments of `pgcairn restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Target data directory (must not exist or be empty, unless --delta).
    #[arg(long)]
    pub pgdata: PathBuf,
    /// Backup id (default: the newest whose consistency point precedes the target).
    #[arg(long)]
    pub backup: Option<String>,
    /// Files restored in parallel (default: restore.jobs, else twice the number of cores,
    /// at most 8).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Recovery target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// What PostgreSQL does at the target: promote, pause (PostgreSQL's default) or shutdown.
    #[arg(long, value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: Option<String>,
    /// `standby`: write standby.signal and follow the archive, no target.
    #[arg(long = "type", value_parser = ["default", "standby"], default_value = "default")]
    pub restore_type: String,
    /// With --type standby: `primary_conninfo` of the replica, so it streams from the primary
    /// after replaying the archive (no password here: use ~/.pgpass or passfile=).
    #[arg(long, value_name = "CONNINFO")]
    pub primary_conninfo: Option<String>,
    /// Only check and print the plan (backup, WAL range, bytes); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reuse an existing data directory (PostgreSQL stopped), rewriting only what differs.
    #[arg(long)]
    pub delta: bool,
    /// Write every file through the page cache. By default files of 4 MiB or more are
    /// written with O_DIRECT where the filesystem takes it (faster, and leaves the page cache
    /// to PostgreSQL); use this where direct I/O is slow (some network filesystems).
    #[arg(long)]
    pub buffered: bool,
    /// Memory, in MiB, for the index of the backup's blocks (84 bytes per block while it
    /// loads: 64 MiB holds about 800 000 blocks, 50 GiB of data). A backup with more blocks
    /// has its index in a sorted table in TMPDIR instead (84 bytes of local disk per block of
    /// the backup, and 52 per block of the repository while it is built), so a restore's
    /// memory stays bounded whatever the cluster's size. TMPDIR must be on disk for that:
    /// where /tmp is a tmpfs, point TMPDIR elsewhere.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub index_memory: u64,
    /// Keep `expire` from removing the backup restored and the WAL after it for this long
    /// once the restore ends, while PostgreSQL's recovery may still ask for it ("24h",
    /// "90m"; "0": no hold). Taken under the cluster's expire lease, waiting for a running
    /// expire; a restore that cannot write it (read-only credentials) warns and goes on.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub hold: String,
    /// Restore tablespace OID to DIR instead of its recorded location (repeatable).
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Restore every tablespace under DIR/<oid>.
    #[arg(long, value_name = "DIR")]
    pub tablespace_map_all: Option<PathBuf>,
    /// Restore only this database (name or OID; repeatable) with the system ones: every other
    /// database's files are created sparse, neither read nor written, to be dropped after
    /// recovery.
    #[arg(long, value_name = "DB")]
    pub db_include: Vec<String>,
    /// Leave this database out (name or OID; repeatable): its files are created sparse, to be
    /// dropped after recovery.
    #[arg(long, value_name = "DB")]
    pub db_exclude: Vec<String>,
    /// `off`: the restored cluster does not archive (`archive_mode = off` with the recovery
    /// settings), for a copy promoted beside production that must not push its new timeline
    /// into production's repository. `preserve` (default): as the backup had it.
    #[arg(long, value_parser = ["preserve", "off"], default_value = "preserve")]
    pub archive_mode: String,
    /// Output format: text, or json (one document on stdout, for automation).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// A setting of your own written with the recovery settings, after pgcairn's
    /// (repeatable): primary_slot_name=standby1, recovery_min_apply_delay=1h, ... The
    /// restore command, target settings, primary_conninfo and archive_mode have options of
    /// their own and are refused here.
    #[arg(long, value_name = "KEY=VALUE")]
    pub recovery_option: Vec<String>,
    /// Keep WAL on its own disk: `pg_wal` becomes a link to DIR (absolute, outside the data
    /// directory; new or empty, or holding only WAL with --delta). Without it `pg_wal` is a
    /// directory in the data directory, and a delta restore over a linked `pg_wal` refuses.
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Write the backup's configuration files from outside the data directory (Debian's
    /// /etc/postgresql/...) under DIR at their recorded paths; `/` puts them back in place.
    /// An existing file is never overwritten.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

/// Recovery target options shared by `restore` and `drill`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Recover to this commit time (with a time zone: 2026-11-24 07:10:00+00).
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover to this LSN.
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long)]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pgcairn restore-point NAME).
    #[arg(long)]
    pub target_name: Option<String>,
    /// `immediate`: stop as soon as the backup is consistent.
    #[arg(long = "target", value_parser = ["immediate"])]
    pub target_immediate: Option<String>,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub target_exclusive: bool,
    /// Timeline to follow: latest (default), current, or a number.
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
}

/// Arguments of `pgcairn drill`.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Recovery target (default: the end of the archive).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Backup id (default: chosen like restore does).
    #[arg(long)]
    pub backup: Option<String>,
    /// Files restored in parallel (default: restore.jobs, else twice the number of cores,
    /// at most 8).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// MTTR objective (like 15m or 90s): exit 4 when the drill takes longer.
    #[arg(long, value_name = "DURATION")]
    pub max_mttr: Option<String>,
    /// File of SQL checks, separated by ';' at line ends; each must return a single true.
    #[arg(long, value_name = "FILE")]
    pub check_sql: Option<PathBuf>,
    /// Keep the stopped instance and its directory.
    #[arg(long)]
    pub keep: bool,
    /// Working directory for the ephemeral instance, created by the drill: it must not exist
    /// (default: a new private one with a random name in TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Where to write the report files (default: drill.report_dir, else the current directory).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// List past drills instead of running one.
    #[arg(long)]
    pub history: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `pgcairn key ...`. Secrets never come from argv: key files and passphrase files are
/// paths, passphrases come from files or the environment.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// List the key slots: id, kind, fingerprint, created, last used on this host.
    #[command(after_help = "Examples:
  pgcairn key list
  pgcairn key list --output json")]
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Add a key slot: a key file, a passphrase, or an external key manager's commands.
    #[command(after_help = "Examples:
  pgcairn key add --key-file /etc/pgcairn/second.key        # created (0600) if missing
  PGCAIRN_NEW_PASSPHRASE=... pgcairn key add --passphrase
  pgcairn key add --passphrase-file /root/new-passphrase
  pgcairn key add --wrap-command 'age -r age1...' --unwrap-command 'age -d -i /etc/pgcairn/age.key'
The command unlocking the repository is the configured one (repo.key_file, ...).")]
    Add {
        /// A key file: created (mode 0600) if it does not exist, else used.
        #[arg(long, value_name = "PATH", group = "new_key")]
        key_file: Option<PathBuf>,
        /// A passphrase read from this file (first line).
        #[arg(long, value_name = "PATH", group = "new_key")]
        passphrase_file: Option<PathBuf>,
        /// A passphrase from PGCAIRN_NEW_PASSPHRASE.
        #[arg(long, group = "new_key")]
        passphrase: bool,
        /// Command wrapping the slot secret (secret on stdin, wrapped blob on stdout).
        #[arg(
            long,
            value_name = "CMD",
            group = "new_key",
            requires = "unwrap_command"
        )]
        wrap_command: Option<String>,
        /// Command opening it (blob on stdin, secret on stdout); run now to check it works.
        #[arg(long, value_name = "CMD", requires = "wrap_command")]
        unwrap_command: Option<String>,
    },

    /// Remove a key slot (refuses the last one, and without --force the one used to unlock).
    #[command(after_help = "Examples:
  pgcairn key remove 3f2a9c
After removing a leaked key, run `pgcairn key rotate`: removal alone does not take back what
the key already opened.")]
    Remove {
        /// Slot id (or a unique prefix), from `pgcairn key list`.
        slot: String,
        /// Allow removing the slot this command unlocked with.
        #[arg(long)]
        force: bool,
    },

    /// Set a new passphrase on a passphrase slot.
    #[command(after_help = "Examples:
  PGCAIRN_PASSPHRASE=old PGCAIRN_NEW_PASSPHRASE=new pgcairn key passwd 3f2a9c
  pgcairn key passwd 3f2a9c --passphrase-file /root/new-passphrase")]
    Passwd {
        /// Slot id (or a unique prefix).
        slot: String,
        /// The new passphrase, read from this file (else PGCAIRN_NEW_PASSPHRASE).
        #[arg(long, value_name = "PATH")]
        passphrase_file: Option<PathBuf>,
    },

    /// New random key material for everything written from now on; every remaining slot is
    /// rewrapped, so removed slots open nothing new.
    #[command(after_help = "Examples:
  pgcairn key rotate
  pgcairn key rotate --also-key-file /etc/pgcairn/second.key --wrap-command 'age -r age1...'
Every slot must be rewrapped: the one unlocking, key files and passphrase files given with
--also-*, command slots whose wrap command is confirmed with --wrap-command (or
repo.wrap_command). Old material is kept (wrapped) so old backups and WAL stay readable,
unless --reencrypt rewrites everything under the new material and then drops the old
(see `pgcairn key reencrypt`).")]
    Rotate {
        /// After rotating, reseal every pack, WAL file, manifest and catalog object under the
        /// new material and drop the old from the keyring (`pgcairn key reencrypt`).
        #[arg(long)]
        reencrypt: bool,
        /// With --reencrypt: gc's grace period (default retention.gc_grace).
        #[arg(long, value_name = "DURATION", requires = "reencrypt")]
        grace: Option<String>,
        /// With --reencrypt: no archive-push, wal-receive or backup started before this
        /// rotation still runs, so the old epochs may go without the 3 minutes such a process
        /// needs to follow the rotation.
        #[arg(long, requires = "reencrypt")]
        writers_stopped: bool,
        /// Key files of further key-file slots.
        #[arg(long, value_name = "PATH")]
        also_key_file: Vec<PathBuf>,
        /// Passphrase files of further passphrase slots.
        #[arg(long, value_name = "PATH")]
        also_passphrase_file: Vec<PathBuf>,
        /// Wrap commands (as `key list` shows them) this host may run to rewrap command slots.
        #[arg(long, value_name = "CMD")]
        wrap_command: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },

    /// Reseal everything sealed under older key epochs under the newest, then drop the older
    /// epochs from the keyring: afterwards a removed key opens nothing at all.
    #[command(after_help = "Examples:
  pgcairn key reencrypt
  pgcairn key reencrypt --output json
Packs, WAL, manifests, index segments and catalog objects are resealed; packs are rewritten
by gc's repack and the old ones swept after the grace period (retention.gc_grace). Takes the
gc lease and every cluster's expire lease; archive-push and backup keep running. The old
epochs are dropped only once nothing is left under them and the last key change is a grace
period old, and at least 3 minutes old (what a running archive-push, wal-receive or backup
needs to follow it; --writers-stopped when none runs): until then it says what remains and
when to run it again. Safe to interrupt and to run again at any time. Exit 0 when the old
epochs are dropped (or there are none), 1 when something remains.")]
    Reencrypt {
        /// gc's grace period (default retention.gc_grace).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        /// No archive-push, wal-receive or backup started before the last key change still
        /// runs: drop the old epochs without waiting the 3 minutes such a process needs to
        /// follow it.
        #[arg(long)]
        writers_stopped: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}
