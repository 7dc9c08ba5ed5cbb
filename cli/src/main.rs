//! The `pgbunker` binary: flags → resolved settings → engine calls → exit code.

mod args;
mod commands;
mod exit;
mod progress;
mod settings;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() {
    // restore_command must never mistake a usage error for "file not found": for archive-get
    // even malformed arguments make PostgreSQL abort recovery.
    let is_archive_get = std::env::args().any(|a| a == "archive-get");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let displayable = matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            );
            let _ = e.print();
            let code = if displayable {
                ExitCode::Success
            } else if is_archive_get {
                ExitCode::AbortRecovery
            } else {
                ExitCode::Usage
            };
            std::process::exit(code as i32);
        }
    };
    init_logging(&cli.log_level);
    let code = match run(cli) {
        Ok(()) => ExitCode::Success,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("pgbunker: {}", f.message);
            }
            f.code
        }
    };
    std::process::exit(code as i32);
}

fn run(cli: Cli) -> Result<(), Failure> {
    let is_archive_get = matches!(cli.command, Command::ArchiveGet { .. });
    let settings = match Settings::resolve(&cli) {
        Ok(s) => s,
        Err(mut f) if is_archive_get => {
            f.code = ExitCode::AbortRecovery;
            return Err(f);
        }
        Err(f) => return Err(f),
    };
    // archive-push and archive-get run once per WAL segment: a single-threaded runtime starts
    // fastest, and their CPU work runs on the rayon pool anyway.
    let per_segment = matches!(
        cli.command,
        Command::ArchivePush { .. } | Command::ArchiveGet { .. }
    );
    let mut builder = if per_segment {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(settings::default_jobs().clamp(1, 4));
        b
    };
    let runtime = builder.enable_all().build().map_err(|e| {
        Failure::new(
            ExitCode::Failed,
            format!("cannot start the async runtime: {e}"),
        )
    })?;
    runtime.block_on(commands::dispatch(&cli, &settings))
}
