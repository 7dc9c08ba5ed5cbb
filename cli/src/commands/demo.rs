//! `pgcairn demo`: the whole engine on a throwaway cluster and a local repository.
//!
//! Today: create an encrypted repository with a key file, initdb a cluster with data
//! checksums, archive its WAL through `archive_command = 'pgcairn archive-push %p'` while
//! pgbench runs, force a segment switch, wait until PostgreSQL reports it archived, fetch a
//! segment back with archive-get and compare it byte for byte; take a full backup, mark an
//! "incident", take an incremental backup; restore the incremental and compare it with the
//! source; then run a restore drill to just before the incident (SQL checks prove the incident
//! row is absent) and print where its HTML report is; finally `info`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use pgcairn_engine::archive::get_wal_file;
use pgcairn_engine::backup::{run_backup, BackupOptions, DEFAULT_BLOCK_SIZE};
use pgcairn_engine::crypto::{KdfParams, KeyFile, Unlock};
use pgcairn_engine::drill::{run_drill, DrillOptions};
use pgcairn_engine::pg::instance::{
    free_port, give_to, postgres_user_if_root, Instance, PgBinaries,
};
use pgcairn_engine::progress::NoProgress;
use pgcairn_engine::recovery::{parse_target_time, Target};
use pgcairn_engine::repo::{InitOptions, Repository};
use pgcairn_engine::restore::{restore, RestoreOptions};
use pgcairn_engine::store::manifest::BackupType;
use pgcairn_engine::types::WalFileName;

use crate::args::{Cli, OutputFormat, ProgressMode};
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(ExitCode::Failed, e.to_string())
}

/// Prints a step: a spinner on a terminal, a plain line otherwise.
struct Steps {
    bars: bool,
}

impl Steps {
    fn run<T>(&self, what: &str, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
        let started = Instant::now();
        let bar = if self.bars {
            let b = ProgressBar::new_spinner().with_message(what.to_string());
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("template"),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            Some(b)
        } else {
            None
        };
        let r = f();
        let secs = started.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mark = if r.is_ok() { "ok" } else { "FAILED" };
        println!("==> {what}: {mark} ({secs:.1}s)");
        r
    }
}

/// A new directory under TMPDIR with a random name, created exclusively with mode 0700.
fn fresh_temp_dir(prefix: &str) -> Result<PathBuf, Failure> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| {
            Failure::new(
                ExitCode::Failed,
                format!(
                    "cannot create a directory under TMPDIR ({}): {e}",
                    std::env::temp_dir().display()
                ),
            )
        })
}

pub async fn run(cli: &Cli, dir: Option<&Path>, keep: bool) -> Result<(), Failure> {
    // Default: a new directory with a random name (created exclusively, 0700), never a
    // predictable path another user could have created first.
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => fresh_temp_dir("pgcairn-demo-")?,
    };
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::usage(format!(
            "demo directory {} exists and is not empty; choose another --dir",
            dir.display()
        )));
    }
    let steps = Steps {
        bars: cli.progress == ProgressMode::Always
            || (cli.progress == ProgressMode::Auto && std::io::stdout().is_terminal()),
    };
    let bin = PgBinaries::find()?;
    let run_as = postgres_user_if_root("postgres");
    let instance = Instance::new(
        bin,
        dir.join("pgdata"),
        dir.clone(),
        free_port()?,
        run_as.clone(),
    );
    let result = demo_body(&steps, &dir, &instance).await;
    let _ = instance.stop();
    match (&result, keep) {
        (Ok(()), false) => {
            let _ = std::fs::remove_dir_all(&dir);
            println!("demo finished; removed {}", dir.display());
        }
        _ => println!("demo files kept in {} (cluster stopped)", dir.display()),
    }
    result
}

async fn demo_body(steps: &Steps, dir: &Path, instance: &Instance) -> Result<(), Failure> {
    let run_as = instance.run_as.clone();
    let exe_copy = dir.join("bin/pgcairn");
    let config_path = dir.join("pgcairn.toml");
    let repo_url = format!("file://{}", dir.join("repo").display());
    let key_path = dir.join("repo.key");
    steps.run("prepare a working directory, a key file and the configuration", || {
        std::fs::create_dir_all(dir.join("bin")).map_err(fail)?;
        // PostgreSQL runs archive_command as its own OS user, which may not reach our binary.
        let exe = std::env::current_exe().map_err(fail)?;
        std::fs::copy(&exe, &exe_copy).map_err(fail)?;
        KeyFile::generate().create(&key_path)?;
        let toml = format!(
            "[repo]\nurl = \"{repo_url}\"\nkey_file = \"{}\"\n\n[cluster]\nname = \"main\"\npgdata = \"{}\"\n\n[archive]\nspool_dir = \"{}\"\n",
            key_path.display(),
            instance.datadir.display(),
            dir.join("spool").display()
        );
        std::fs::write(&config_path, toml).map_err(fail)
    })?;
    let key = KeyFile::load(&key_path)?;
    let storage: Arc<dyn pgcairn_engine::storage::Storage> =
        pgcairn_storage::create(&repo_url, &pgcairn_storage::StorageOptions::default())?;
    let opts = InitOptions {
        unlock: Some(Unlock::KeyFile(key.clone())),
        kdf: KdfParams::recommended(),
        wal_compress_level: crate::settings::DEFAULT_WAL_COMPRESS_LEVEL,
    };
    let started = Instant::now();
    let config = Repository::init(storage.clone(), opts).await?;
    println!(
        "==> create an encrypted repository {} at {repo_url}: ok ({:.1}s)",
        config.repo_id,
        started.elapsed().as_secs_f64()
    );
    give_to(run_as.as_deref(), dir)?;

    let archive_command = format!(
        "'{}' --config '{}' archive-push %p",
        exe_copy.display(),
        config_path.display()
    );
    steps.run(
        "initdb a throwaway PostgreSQL cluster with data checksums",
        || Ok(instance.initdb()?),
    )?;
    steps.run(
        "start it with archive_command = pgcairn archive-push %p",
        || {
            instance.configure(&[
                ("wal_level", "replica".into()),
                ("archive_mode", "on".into()),
                ("archive_command", archive_command.clone()),
                ("max_wal_size", "256MB".into()),
            ])?;
            Ok(instance.start()?)
        },
    )?;
    steps.run(
        "pgbench: initialise scale 5 and run 5 seconds of load",
        || {
            instance.pgbench(&["-i", "-s", "5", "-q"])?;
            Ok(instance.pgbench(&["-T", "5", "-c", "2"])?)
        },
    )?;
    let last = steps.run(
        "switch WAL and wait until PostgreSQL reports it archived",
        || {
            let seg = instance.psql("postgres", "select pg_walfile_name(pg_switch_wal())")?;
            wait_archived(instance, &seg, Duration::from_secs(120))?;
            Ok(seg)
        },
    )?;
    let repo = Repository::open(storage, Some(&Unlock::KeyFile(key))).await?;
    let name: WalFileName = last.parse().map_err(fail)?;
    let restored = get_wal_file(&repo, "main", &name).await?;
    let original = std::fs::read(instance.datadir.join("pg_wal").join(&last)).map_err(fail)?;
    if restored != original {
        return Err(fail(format!(
            "archive-get returned different bytes for {last}"
        )));
    }
    println!("==> archive-get {last} returns the segment byte for byte: ok");

    // Base backups: a full one, more load, then an incremental that re-reads only what changed.
    let backup_opts = |t| BackupOptions {
        cluster: "main".into(),
        pgdata: instance.datadir.clone(),
        conninfo: format!(
            "host={} port={} user=postgres dbname=postgres",
            instance.socket_dir.display(),
            instance.port
        ),
        backup_type: t,
        jobs: 2,
        block_size: DEFAULT_BLOCK_SIZE,
        compress_level: 3,
        checksum_delta: false,
        archive_timeout: Duration::from_secs(120),
        standby_wal_wait: Duration::from_secs(60),
        lease_wait: Duration::ZERO,
        index_memory: pgcairn_engine::store::blocks::DEFAULT_KNOWN_MEMORY,
    };
    // Let the initial load age past the incremental's mtime safety window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let full = timed(
        "full backup",
        run_backup(&repo, &backup_opts(BackupType::Full), &NoProgress),
    )
    .await?;
    // The backups run in this process, as root when the demo is run as root: what they wrote
    // (the catalog head among it, which archive-get reads) goes to the server's user.
    give_to(run_as.as_deref(), &dir.join("repo"))?;
    print_backup(&full.manifest);
    // An "incident" between the two backups: the drill at the end recovers to just before it.
    let target_time = steps.run("record a row, note the time, then the incident", || {
        instance.psql("postgres", "create table demo_events(label text, at timestamptz default clock_timestamp()); insert into demo_events values ('before the incident')")?;
        std::thread::sleep(Duration::from_millis(1200));
        let t = instance.psql("postgres", "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")?;
        std::thread::sleep(Duration::from_millis(1200));
        instance.psql("postgres", "insert into demo_events values ('the incident: this row must not come back')")?;
        Ok(t)
    })?;
    println!("    recovery target: {target_time}");
    steps.run("pgbench: 3 more seconds of load", || {
        Ok(instance.pgbench(&["-T", "3", "-c", "2"])?)
    })?;
    let incr = timed(
        "incremental backup",
        run_backup(&repo, &backup_opts(BackupType::Incr), &NoProgress),
    )
    .await?;
    give_to(run_as.as_deref(), &dir.join("repo"))?;
    print_backup(&incr.manifest);
    let expected = instance.psql("postgres", FINGERPRINT_SQL)?;
    let seg = instance.psql("postgres", "select pg_walfile_name(pg_switch_wal())")?;
    wait_archived(instance, &seg, Duration::from_secs(120))?;

    // Restore the incremental into a new directory and let PostgreSQL replay the archive.
    let restored_dir = dir.join("restored");
    let restore_opts = RestoreOptions {
        backup: Some(incr.manifest.id.clone()),
        jobs: 2,
        restore_owner: run_as.is_some(),
        ..RestoreOptions::new(
            "main",
            restored_dir.clone(),
            format!(
                "'{}' --config '{}' archive-get %f %p",
                exe_copy.display(),
                config_path.display()
            ),
        )
    };
    let summary = timed(
        "restore the incremental backup",
        restore(&repo, &restore_opts, &NoProgress),
    )
    .await?;
    println!(
        "    {} files, {:.1} MiB",
        summary.files,
        summary.bytes as f64 / 1048576.0
    );
    let copy = Instance::new(
        instance.bin.clone(),
        restored_dir,
        dir.to_path_buf(),
        free_port()?,
        run_as.clone(),
    );
    let got = steps.run(
        "start the restored cluster and replay the archived WAL",
        || {
            copy.configure(&[("archive_mode", "off".into())])?;
            copy.start()?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while copy.psql("postgres", "select pg_is_in_recovery()")? == "t" {
                if Instant::now() > deadline {
                    return Err(fail("recovery did not finish in 120s"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let got = copy.psql("postgres", FINGERPRINT_SQL);
            let _ = copy.stop();
            Ok(got?)
        },
    )?;
    if got != expected {
        return Err(fail(format!(
            "restored cluster has {got}, source had {expected}"
        )));
    }
    println!("==> restored data equals the source: {got}");

    // A restore drill to the moment before the incident, with SQL checks proving it.
    let checks = vec![
        "select count(*) = 1 from demo_events where label = 'before the incident'".to_string(),
        "select count(*) = 0 from demo_events where label like 'the incident%'".to_string(),
    ];
    let report_dir = fresh_temp_dir("pgcairn-demo-reports-")?;
    give_to(run_as.as_deref(), &report_dir)?;
    let drill_opts = DrillOptions {
        restore: RestoreOptions {
            target_spec: Target::Time(parse_target_time(&target_time)?),
            jobs: 2,
            restore_owner: run_as.is_some(),
            ..RestoreOptions::new(
                "main",
                dir.join("drill/pgdata"),
                format!(
                    "'{}' --config '{}' archive-get %f %p",
                    exe_copy.display(),
                    config_path.display()
                ),
            )
        },
        workdir: dir.join("drill"),
        keep: false,
        max_mttr: Some(Duration::from_secs(300)),
        check_sql: checks,
        report_dir: report_dir.clone(),
        target_label: format!("time {target_time}"),
        recovery_timeout: Duration::from_secs(300),
        // The demo's own server (PG_BINDIR, Debian's 15 or pg_config): the drill restores its data.
        pg_bindir: Some(instance.bin.bindir().display().to_string()),
        prefetch_spool: None,
    };
    std::fs::create_dir_all(dir.join("drill")).map_err(fail)?;
    let (report, files) = timed(
        "restore drill to just before the incident",
        run_drill(&repo, &drill_opts, &NoProgress),
    )
    .await?;
    super::drill::print_report(&report, &files);
    if report.outcome != "passed" {
        return Err(fail(format!("the drill did not pass: {}", report.summary)));
    }
    println!();
    let settings = Settings {
        config_file: Some(config_path.clone()),
        repo_url: Some(repo_url.clone()),
        key_file: Some(key_path.clone()),
        ..demo_settings(dir)
    };
    super::info::run(&settings, OutputFormat::Text).await?;
    println!();
    println!(
        "Try it yourself: pgcairn --config {} info --output json",
        config_path.display()
    );
    Ok(())
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = pgcairn_engine::Result<T>>,
) -> Result<T, Failure> {
    let started = Instant::now();
    let r = f.await;
    let mark = if r.is_ok() { "ok" } else { "FAILED" };
    println!(
        "==> {what}: {mark} ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(r?)
}

fn print_backup(m: &pgcairn_engine::store::manifest::Manifest) {
    let s = &m.stats;
    println!(
        "    backup {}: {} files, {:.1} MiB; read {:.1} MiB ({} files unchanged), stored {:.1} MiB new",
        m.id,
        s.files,
        s.size as f64 / 1048576.0,
        s.bytes_read as f64 / 1048576.0,
        s.files_unchanged,
        s.stored_new as f64 / 1048576.0
    );
}

/// What the demo compares between source and restored cluster.
const FINGERPRINT_SQL: &str = "select (select count(*) from pgbench_history) || ' history rows, total balance ' || (select sum(abalance) from pgbench_accounts)";

fn demo_settings(dir: &Path) -> Settings {
    Settings {
        config_file: None,
        repo_url: None,
        key_file: None,
        passphrase_file: None,
        unwrap_command: None,
        wrap_command: None,
        command_timeout: pgcairn_engine::crypto::command::DEFAULT_TIMEOUT,
        command_dir: None,
        state_dir: Some(dir.join("state")),
        allow_insecure_files: false,
        storage_options: Default::default(),
        cluster: "main".into(),
        pgdata: Some(dir.join("pgdata")),
        conninfo: String::new(),
        backup_jobs: 2,
        restore_jobs: crate::settings::default_restore_jobs(),
        backup_compress_level: 3,
        block_size: 64 << 10,
        backup_archive_timeout: Duration::from_secs(120),
        standby_wal_wait: Duration::from_secs(60),
        lease_wait: Duration::ZERO,
        archive_async: false,
        spool_dir: PathBuf::from(dir).join("spool"),
        archive_jobs: 2,
        archive_timeout: Duration::from_secs(60),
        queue_max: None,
        prefetch: 8,
        retention: Default::default(),
        retention_auto: false,
        gc_grace: Duration::from_secs(3600),
        audit_keep: crate::settings::DEFAULT_AUDIT_KEEP,
        gc_repack_below: 0.5,
        maintenance_lease_wait: Duration::ZERO,
        object_lock: None,
        max_requests: None,
        idle_exit: Duration::from_secs(10),
        wal_compress_level: crate::settings::DEFAULT_WAL_COMPRESS_LEVEL,
        drill_pg_bindir: None,
        wal_receive: Default::default(),
    }
}

/// Waits until `pg_stat_archiver` reports `segment` (or a later one) archived.
pub fn wait_archived(instance: &Instance, segment: &str, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = instance.psql("postgres", "select coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') from pg_stat_archiver")?;
        let (archived, failed) = row.split_once('|').unwrap_or((row.as_str(), ""));
        if archived.len() >= 24 && archived[..24] >= *segment {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "{segment} not archived after {}s (last archived {archived:?}, last failed {failed:?}); see {}",
                timeout.as_secs(),
                instance.datadir.join("pgcairn-server.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
