//! `pgcairn drill`: restore into an ephemeral instance, check, measure, report.
//!
//! Exit codes ([`ExitCode`]): 0 passed; 1 the drill could not run (an operational error: a
//! full or unwritable disk or TMPDIR, storage unreachable; the report, when one could be
//! written, says `error`); 2 usage; 3 an integrity check failed; 4 the MTTR objective was
//! missed. Arguments are checked before the work directory is created, and every way out
//! (including SIGINT/SIGTERM) stops the instance and removes the directory unless `--keep`; a
//! watchdog does the same if this process is killed outright.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcairn_engine::drill::report::{history, DrillReport};
use pgcairn_engine::drill::{
    abort_cleanup, create_workdir, install_binary, run_drill, DrillFiles, DrillOptions,
};
use pgcairn_engine::repo::Repository;
use pgcairn_engine::restore::RestoreOptions;
use tokio::signal::unix::{signal, SignalKind};

use super::backup::{restore_command_with, target_spec, Fetch};
use super::open_repo;
use crate::args::{Cli, DrillArgs, OutputFormat};
use crate::exit::{ExitCode, Failure};
use crate::progress::Reporter;
use crate::settings::Settings;
use pgcairn_engine::archive::prefetch::PrefetchSpool;

fn split_sql(text: &str) -> Vec<String> {
    text.split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| {
            !s.is_empty()
                && !s
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
        })
        .collect()
}

pub async fn run(cli: &Cli, settings: &Settings, args: &DrillArgs) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    if args.history {
        let past = history(&repo, &settings.cluster).await?;
        if args.output == OutputFormat::Json {
            println!("{}", serde_json::to_string_pretty(&past).expect("JSON"));
        } else if past.is_empty() {
            println!("no drills yet for cluster {}", settings.cluster);
        } else {
            for r in &past {
                println!(
                    "drill {} {:<17} MTTR {:>7.1}s  backup {}  target {}  {:.1} MiB  {}",
                    r.id,
                    r.outcome,
                    r.mttr_seconds,
                    r.backup_id,
                    r.target,
                    r.restored_bytes as f64 / 1048576.0,
                    r.summary
                );
            }
        }
        return Ok(());
    }
    // Everything that can be wrong with the arguments is found before anything is created.
    let (spec, timeline, label) = target_spec(&args.target)?;
    let check_sql = match &args.check_sql {
        Some(p) => split_sql(
            &std::fs::read_to_string(p)
                .map_err(|e| Failure::usage(format!("--check-sql {}: {e}", p.display())))?,
        ),
        None => Vec::new(),
    };
    let max_mttr = args
        .max_mttr
        .as_deref()
        .map(|v| {
            pgcairn_storage::parse_duration(v).ok_or_else(|| {
                Failure::usage(format!("--max-mttr {v:?}: use a duration like 15m or 90s"))
            })
        })
        .transpose()?;
    let report_dir: PathBuf = args
        .report_dir
        .clone()
        .unwrap_or_else(|| settings.spool_dir.join("drills"));
    let exe = std::env::current_exe().map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    let planned = Planned {
        spec,
        timeline,
        label,
        check_sql,
        max_mttr,
        report_dir,
    };

    // Signals are caught from here on, so that no exit path leaves the work directory behind.
    let mut sigint = signal(SignalKind::interrupt())
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    let mut sigterm = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    // A new private directory, never one that existed (see pgcairn_engine::drill).
    let workdir = create_workdir(args.workdir.as_deref())?;
    let result = tokio::select! {
        r = drill_in(cli, settings, args, &repo, &workdir, &exe, planned) => r,
        _ = sigint.recv() => {
            abort_cleanup(&workdir, args.keep);
            std::process::exit(130);
        }
        _ = sigterm.recv() => {
            abort_cleanup(&workdir, args.keep);
            std::process::exit(143);
        }
    };
    // Whatever happened (a failed or passed drill, an error before or after the instance
    // started), the instance is stopped and the directory removed unless --keep.
    abort_cleanup(&workdir, args.keep);
    let report = result?;
    match report.outcome.as_str() {
        "passed" => Ok(()),
        "objective-missed" => Err(Failure::new(ExitCode::DrillObjective, "")),
        "error" => Err(Failure::new(ExitCode::Failed, "")),
        _ => Err(Failure::new(ExitCode::DrillIntegrity, "")),
    }
}

/// The drill's arguments, checked.
struct Planned {
    spec: pgcairn_engine::recovery::Target,
    timeline: pgcairn_engine::recovery::TimelineTarget,
    label: String,
    check_sql: Vec<String>,
    max_mttr: Option<Duration>,
    report_dir: PathBuf,
}

/// Runs the drill in `workdir` (created) and prints its report.
async fn drill_in(
    cli: &Cli,
    settings: &Settings,
    args: &DrillArgs,
    repo: &Repository,
    workdir: &Path,
    exe: &Path,
    planned: Planned,
) -> Result<DrillReport, Failure> {
    // The ephemeral PostgreSQL runs restore_command as its own OS user: give it a copy of
    // this binary it can execute (and not replace).
    let copy = install_binary(workdir, exe)?;
    // Recovery prefetches WAL as after a restore, through a spool of the drill's own: the
    // production spool may serve a standby of the same cluster on this host.
    let spool_dir = workdir.join("spool");
    let restore_cmd = restore_command_with(&copy, cli, settings, Fetch::PrefetchInto(&spool_dir));
    // Its area is that of the instance's data directory, as archive-get finds it from its
    // working directory (the resolved path: the work directory may be reached through a link).
    // Tablespaces go beneath it too, by an absolute path (a restore takes no other).
    let resolved = std::fs::canonicalize(workdir).map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!(
                "cannot resolve the work directory {}: {e}",
                workdir.display()
            ),
        )
    })?;
    let pgdata = resolved.join("pgdata");
    let prefetch_spool = PrefetchSpool::open(
        &spool_dir,
        &settings.cluster,
        &super::archive::repository_identity(settings)?,
        &pgdata,
    )?;
    let opts = DrillOptions {
        restore: RestoreOptions {
            backup: args.backup.clone(),
            jobs: args.jobs.unwrap_or(settings.restore_jobs),
            restore_owner: pgcairn_engine::pg::instance::current_uid() == 0,
            target_spec: planned.spec,
            target_exclusive: args.target.target_exclusive,
            target_timeline: planned.timeline,
            // Tablespaces inside the work directory, never at the locations the backup
            // recorded: on the database host those are production's own directories.
            tablespace_map_all: Some(resolved.join("tablespaces")),
            ..RestoreOptions::new(&settings.cluster, workdir.join("pgdata"), restore_cmd)
        },
        workdir: workdir.to_path_buf(),
        keep: args.keep,
        max_mttr: planned.max_mttr,
        check_sql: planned.check_sql,
        report_dir: planned.report_dir,
        target_label: planned.label,
        recovery_timeout: Duration::from_secs(3600),
        pg_bindir: settings.drill_pg_bindir.clone(),
        prefetch_spool: Some(prefetch_spool),
    };
    let reporter = Reporter::new(cli.progress);
    let (report, files) = run_drill(repo, &opts, &reporter).await?;
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        println!("drill {} of cluster {}:", report.id, report.cluster);
        print_report(&report, &files);
    }
    Ok(report)
}

/// Prints a drill report for people (the drill command and the demo).
pub fn print_report(report: &DrillReport, files: &DrillFiles) {
    println!("    backup {} ({})", report.backup_id, report.backup_reason);
    for p in &report.phases {
        let share = p
            .share_of_mttr
            .map(|v| format!("{:>3.0} %", v * 100.0))
            .unwrap_or_default();
        println!(
            "    {:<10} {:>7.2}s {:>5}  {}",
            p.name, p.seconds, share, p.detail
        );
    }
    if let Some(v) = report.replay_share {
        println!(
            "    WAL replay (startup + replay): {:.0} % of the MTTR",
            v * 100.0
        );
    }
    if let Some(w) = &report.wal_fetch {
        println!("    archive-get: {}", w.summary());
    }
    for c in &report.checks {
        println!("    [{}] {}: {}", c.status, c.name, c.detail);
    }
    println!(
        "==> drill outcome: {} ({})",
        report.outcome.to_uppercase(),
        report.summary
    );
    println!("    report: {}", files.html.display());
    println!("            {}", files.markdown.display());
    println!("            {}", files.json.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_check_files_into_statements() {
        let v = split_sql("-- comment\nselect count(*) > 0 from t;\nselect true;\n\n");
        assert_eq!(
            v,
            vec!["-- comment\nselect count(*) > 0 from t", "select true"]
        );
    }
}
