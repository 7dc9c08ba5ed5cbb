//! The `pgcairn` binary: flags → resolved settings → engine calls → exit code.

mod args;
mod commands;
mod exit;
mod fault;
mod file_checks;
mod progress;
mod settings;

/// The version `--version` prints: the crate version and the git commit it was built from
/// (set by `build.rs`; "unknown commit" when built outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PGCAIRN_GIT_COMMIT"),
    ")"
);

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

/// The background pusher and prefetcher (started by archive-push and archive-get).
fn is_background(command: &Command) -> bool {
    matches!(
        command,
        Command::ArchivePushDaemon { .. } | Command::ArchiveGetDaemon { .. }
    )
}

/// What PostgreSQL runs (`archive_command`, `restore_command`) and what those start.
fn is_archiving(command: &Command) -> bool {
    matches!(
        command,
        Command::ArchivePush { .. } | Command::ArchiveGet { .. }
    ) || is_background(command)
}

/// Large allocations straight from the kernel, returned to it when freed (long-running
/// commands only).
///
/// glibc serves an allocation above its mmap threshold with its own mapping, but raises the
/// threshold (up to 32 MiB) each time such a mapping is freed, so later buffers of that size
/// come from the per-thread arenas instead, and the arenas keep what they once held. Backups,
/// restores and gc's mark pass many short-lived buffers of 100 KiB to 40 MiB (index segments,
/// manifests, pack range reads, packs) through several threads. Measured at pgbench scale 500
/// (7.5 GB), peak RSS with the default against a fixed 256 KiB threshold: full backup 80 and
/// 63 MiB, restore 115 to 134 and 31 MiB, `info` 60 and 34 MiB, at the same wall time (zstd
/// contexts are reused per thread, so no per-block buffer crosses the threshold).
/// archive-push and archive-get keep the default: one segment's buffers, reused.
fn bound_allocator_retention(command: &Command) {
    if is_archiving(command) {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter (any M_MMAP_THRESHOLD up to 32 MiB is
    // valid on 64-bit glibc); it runs before any other thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Marks every descriptor above stderr close-on-exec, so that none reaches a process this
/// one starts (a background pusher or prefetcher, a key command).
///
/// PostgreSQL up to 15 opens its files without `O_CLOEXEC`, so `archive_command` and
/// `restore_command` inherit them: traced on PostgreSQL 13, every `restore_command` call had
/// the startup process's relation files open (`base/<db>/<relfilenode>`), its log file and a
/// socket. A prefetcher started from such a call kept them open after the server stopped, for
/// up to `idle_exit`: the data directory's file system stayed busy and the space of a removed
/// data directory was not freed. This process keeps its own use of them (nothing is closed);
/// only what it starts no longer gets them.
fn keep_inherited_descriptors_to_ourselves() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes no descriptor, it only sets the
    // close-on-exec flag; it runs before any other thread starts.
    #[allow(unsafe_code)]
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !marked {
        // Kernels before 5.11: one by one.
        mark_each_close_on_exec();
    }
}

/// Sets close-on-exec on every open descriptor above stderr, one at a time.
fn mark_each_close_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD only changes the flag of a descriptor number; one that is not open
        // (the directory listing's own, closed by now) fails with EBADF, which is ignored.
        #[allow(unsafe_code)]
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

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
    fault::install_panic_policy(is_archive_get);
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
    // Completions and man pages need no configuration: a broken config file must not stop a
    // packager or a shell from getting them.
    if let Some(result) = commands::docs::answer(&cli.command) {
        let code = match result {
            Ok(()) => ExitCode::Success,
            Err(f) => {
                eprintln!("pgcairn: {}", f.message);
                f.code
            }
        };
        std::process::exit(code as i32);
    }
    bound_allocator_retention(&cli.command);
    if is_archiving(&cli.command) {
        keep_inherited_descriptors_to_ourselves();
    }
    init_logging(&cli.log_level);
    let code = match run(cli) {
        Ok(()) => ExitCode::Success,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("pgcairn: {}", f.message);
            }
            f.code
        }
    };
    std::process::exit(code as i32);
}

/// Moves a background pusher or prefetcher to `/`, as daemons do.
///
/// It inherits the directory PostgreSQL runs `archive_command` and `restore_command` in: the
/// data directory. Kept there for up to `archive.idle_exit` after the server stopped, it held
/// the data directory's file system busy (`umount` failed with "target is busy" after a
/// recovery or a failover). Paths the settings name relative to that directory are made
/// absolute first (so are the object-store clients' path variables,
/// [`pgcairn_storage::PATH_ENV_VARS`]), and key commands run there; a start directory whose path cannot be read
/// is kept, so that relative paths still work.
fn leave_start_directory(settings: &mut Settings) {
    let start = match std::env::current_dir() {
        Ok(start) => start,
        Err(e) => {
            tracing::warn!("staying in the start directory, whose path cannot be read: {e}");
            return;
        }
    };
    settings.anchor_relative_paths(&start);
    // Still one thread: nothing reads the environment while it changes.
    for (name, path) in Settings::anchored_path_env_vars(&start, |name| std::env::var_os(name)) {
        std::env::set_var(name, path);
    }
    if let Err(e) = std::env::set_current_dir("/") {
        tracing::warn!("cannot change to /: {e}");
    }
}

/// The exit code of a failure before `command` itself ran, which would otherwise exit with
/// `code`: for archive-get always [`ExitCode::AbortRecovery`], since its exit 1 tells
/// PostgreSQL the file is absent, and recovery would end early.
fn before_command(command: &Command, code: ExitCode) -> ExitCode {
    match command {
        Command::ArchiveGet { .. } => ExitCode::AbortRecovery,
        _ => code,
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let mut settings = Settings::resolve(&cli).map_err(|mut f| {
        f.code = before_command(&cli.command, f.code);
        f
    })?;
    if is_background(&cli.command) {
        leave_start_directory(&mut settings);
    }
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
            before_command(&cli.command, ExitCode::Failed),
            format!("cannot start the async runtime: {e}"),
        )
    })?;
    runtime.block_on(commands::dispatch(&cli, &settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn archive_get_failing_before_it_runs_aborts_recovery_instead_of_saying_not_found() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        let get = parse(&["pgcairn", "archive-get", "000000010000000000000001", "x"]);
        let push = parse(&["pgcairn", "archive-push", "x"]);
        for code in [ExitCode::Failed, ExitCode::Usage] {
            assert_eq!(before_command(&get, code), ExitCode::AbortRecovery);
            assert_eq!(before_command(&push, code), code);
        }
    }

    #[allow(unsafe_code)]
    fn close_on_exec(fd: i32) -> bool {
        // SAFETY: F_GETFD only reads a descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    #[allow(unsafe_code)]
    fn descriptors_are_marked_one_by_one_where_close_range_is_missing() {
        let f = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD makes a copy without close-on-exec, as PostgreSQL leaves its files.
        let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 3) };
        assert!(fd > 2);
        assert!(!close_on_exec(fd), "a plain copy is inherited");
        mark_each_close_on_exec();
        assert!(close_on_exec(fd), "marked");
        // SAFETY: fd is the copy made above, owned by nothing else.
        unsafe { libc::close(fd) };
    }
}
