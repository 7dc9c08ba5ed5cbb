//! `pgbunker backup`, `pgbunker restore` and `pgbunker check`.

use std::path::{Path, PathBuf};

use pgbunker_engine::backup::manifest::BackupType;
use pgbunker_engine::backup::{check_archiving, run_backup, BackupOptions, DEFAULT_BLOCK_SIZE};
use pgbunker_engine::restore::{restore, RestoreOptions};

use super::open_repo;
use crate::args::{BackupTypeArg, Cli, OutputFormat};
use crate::exit::Failure;
use crate::progress::Reporter;
use crate::settings::Settings;

fn require_conninfo(settings: &Settings) -> Result<String, Failure> {
    if settings.conninfo.is_empty() {
        return Err(Failure::usage(
            "no connection configured: set cluster.conninfo (for example \"host=/var/run/postgresql user=pgbunker dbname=postgres\")",
        ));
    }
    Ok(settings.conninfo.clone())
}

pub async fn backup(
    cli: &Cli,
    settings: &Settings,
    t: BackupTypeArg,
    checksum_delta: bool,
    jobs: Option<usize>,
    output: OutputFormat,
) -> Result<(), Failure> {
    let pgdata = settings
        .pgdata
        .clone()
        .ok_or_else(|| Failure::usage("no data directory configured: set cluster.pgdata"))?;
    let repo = open_repo(settings).await?;
    let opts = BackupOptions {
        cluster: settings.cluster.clone(),
        pgdata,
        conninfo: require_conninfo(settings)?,
        backup_type: match t {
            BackupTypeArg::Full => BackupType::Full,
            BackupTypeArg::Diff => BackupType::Diff,
            BackupTypeArg::Incr => BackupType::Incr,
        },
        jobs: jobs.unwrap_or(settings.backup_jobs),
        block_size: if settings.block_size == 0 {
            DEFAULT_BLOCK_SIZE
        } else {
            settings.block_size
        },
        compress_level: settings.backup_compress_level,
        checksum_delta,
        archive_timeout: settings.backup_archive_timeout,
    };
    let reporter = Reporter::new(cli.progress);
    let m = run_backup(&repo, &opts, &reporter).await?;
    let s = &m.stats;
    match output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "id": m.id, "type": m.backup_type, "reference": m.reference, "timeline": m.timeline,
                "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn, "start_time": m.start_time, "stop_time": m.stop_time,
                "stats": s, "bad_pages": m.files.iter().filter(|f| !f.bad_pages.is_empty())
                    .map(|f| serde_json::json!({"file": f.path, "blocks": f.bad_pages})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        }
        OutputFormat::Text => {
            println!(
                "backup {} ({:?}{}) complete: {} files, {:.1} MiB; read {:.1} MiB, new {:.1} MiB stored as {:.1} MiB; WAL {} .. {}",
                m.id,
                m.backup_type,
                m.reference.as_deref().map(|r| format!(", reference {r}")).unwrap_or_default(),
                s.files,
                s.size as f64 / 1048576.0,
                s.bytes_read as f64 / 1048576.0,
                s.bytes_new as f64 / 1048576.0,
                s.stored_new as f64 / 1048576.0,
                m.start_wal,
                m.stop_wal
            );
            for f in m.files.iter().filter(|f| !f.bad_pages.is_empty()) {
                println!(
                    "WARNING: page checksum failures in {}: blocks {:?}",
                    f.path, f.bad_pages
                );
            }
        }
    }
    Ok(())
}

/// The `restore_command` that fetches WAL from this same repository and cluster.
pub fn restore_command(cli: &Cli, settings: &Settings) -> Result<String, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find own executable: {e}")))?;
    let mut cmd = format!("{}", shell_quote(&exe));
    if let Some(cfg) = &settings.config_file {
        let cfg = std::fs::canonicalize(cfg).unwrap_or_else(|_| cfg.clone());
        cmd.push_str(&format!(" --config {}", shell_quote(&cfg)));
    }
    if let Some(repo) = &cli.repo {
        cmd.push_str(&format!(" --repo {}", shell_quote(Path::new(repo))));
    }
    cmd.push_str(&format!(
        " --cluster {} archive-get %f %p",
        settings.cluster
    ));
    Ok(cmd)
}

fn shell_quote(p: &Path) -> String {
    format!("\"{}\"", p.display().to_string().replace('"', "\\\""))
}

pub async fn restore_cmd(
    cli: &Cli,
    settings: &Settings,
    pgdata: &Path,
    backup: Option<&str>,
    jobs: Option<usize>,
) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    let target: PathBuf = if pgdata.is_absolute() {
        pgdata.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(pgdata)
    };
    let opts = RestoreOptions {
        cluster: settings.cluster.clone(),
        backup: backup.map(str::to_string),
        target,
        jobs: jobs.unwrap_or(settings.backup_jobs),
        restore_command: restore_command(cli, settings)?,
        restore_owner: pgbunker_engine::pg::instance::current_uid() == 0,
    };
    let reporter = Reporter::new(cli.progress);
    let s = restore(&repo, &opts, &reporter).await?;
    println!(
        "restored backup {} into {}: {} files, {:.1} MiB in {:.1}s; start PostgreSQL to replay the archived WAL",
        s.backup_id,
        opts.target.display(),
        s.files,
        s.bytes as f64 / 1048576.0,
        s.seconds
    );
    Ok(())
}

pub async fn check(settings: &Settings) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    println!(
        "repository {}: ok ({})",
        repo.storage().describe(),
        repo.config().repo_id
    );
    let r = check_archiving(
        &repo,
        &settings.cluster,
        &require_conninfo(settings)?,
        settings.backup_archive_timeout,
    )
    .await?;
    println!(
        "PostgreSQL {}: wal_level={}, archive_mode={}",
        r.pg_version_num, r.wal_level, r.archive_mode
    );
    println!("archive_command: {}", r.archive_command);
    println!(
        "WAL switch: {} archived after {:.1}s: ok",
        r.archived_segment, r.archive_wait_seconds
    );
    Ok(())
}
