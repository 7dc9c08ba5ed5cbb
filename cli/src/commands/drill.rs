//! `pgcairn drill`: restore into an ephemeral instance, check, measure, report.
//!
//! Exit codes: 0 passed; 1 the drill could not run; 3 an integrity check failed; 4 the MTTR
//! objective was missed. SIGINT/SIGTERM stop the instance and remove it before exiting; a
//! watchdog does the same if this process is killed outright.

use std::path::PathBuf;
use std::time::Duration;

use pgcairn_engine::drill::report::{history, DrillReport};
use pgcairn_engine::drill::{abort_cleanup, run_drill, DrillFiles, DrillOptions};
use pgcairn_engine::restore::RestoreOptions;

use super::backup::{restore_command_with, target_spec};
use super::open_repo;
use crate::args::{Cli, DrillArgs, OutputFormat};
use crate::exit::{ExitCode, Failure};
use crate::progress::Reporter;
use crate::settings::Settings;

/// Exit code of a failed integrity check.
pub const EXIT_INTEGRITY: i32 = 3;
/// Exit code of a missed objective.
pub const EXIT_OBJECTIVE: i32 = 4;

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
    let (spec, timeline, label) = target_spec(&args.target)?;
    let workdir = args.workdir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pgcairn-drill-{}", std::process::id()))
    });
    if workdir.exists()
        && std::fs::read_dir(&workdir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Failure::usage(format!(
            "drill directory {} exists and is not empty",
            workdir.display()
        )));
    }
    std::fs::create_dir_all(workdir.join("bin")).map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("creating {}: {e}", workdir.display()),
        )
    })?;
    // The ephemeral PostgreSQL runs restore_command as its own OS user: give it a copy of
    // this binary it can execute.
    let exe = std::env::current_exe().map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    let copy = workdir.join("bin/pgcairn");
    std::fs::copy(&exe, &copy).map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("copying pgcairn to {}: {e}", copy.display()),
        )
    })?;
    let restore_cmd = restore_command_with(&copy, cli, settings);
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
    let opts = DrillOptions {
        restore: RestoreOptions {
            backup: args.backup.clone(),
            jobs: args.jobs.unwrap_or(settings.backup_jobs),
            restore_owner: pgcairn_engine::pg::instance::current_uid() == 0,
            target_spec: spec,
            target_exclusive: args.target.target_exclusive,
            target_timeline: timeline,
            ..RestoreOptions::new(&settings.cluster, workdir.join("pgdata"), restore_cmd)
        },
        workdir: workdir.clone(),
        keep: args.keep,
        max_mttr,
        check_sql,
        report_dir,
        target_label: label,
        recovery_timeout: Duration::from_secs(3600),
    };
    let reporter = Reporter::new(cli.progress);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    let result = tokio::select! {
        r = run_drill(&repo, &opts, &reporter) => r,
        _ = tokio::signal::ctrl_c() => {
            abort_cleanup(&workdir, args.keep);
            std::process::exit(130);
        }
        _ = sigterm.recv() => {
            abort_cleanup(&workdir, args.keep);
            std::process::exit(143);
        }
    };
    let (report, files) = match result {
        Ok(r) => r,
        Err(e) => {
            abort_cleanup(&workdir, args.keep);
            return Err(e.into());
        }
    };
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        println!("drill {} of cluster {}:", report.id, report.cluster);
        print_report(&report, &files);
    }
    match report.outcome.as_str() {
        "passed" => Ok(()),
        "objective-missed" => std::process::exit(EXIT_OBJECTIVE),
        _ => std::process::exit(EXIT_INTEGRITY),
    }
}

/// Prints a drill report for people (the drill command and the demo).
pub fn print_report(report: &DrillReport, files: &DrillFiles) {
    println!("    backup {} ({})", report.backup_id, report.backup_reason);
    for p in &report.phases {
        println!("    {:<10} {:>7.2}s  {}", p.name, p.seconds, p.detail);
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
