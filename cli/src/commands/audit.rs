//! The audit trail from the command line: [`record`] appends one record after every command
//! that changes the repository or restores from it (see [`audited`]); `pgcairn audit` lists
//! them. Records live in the repository ([`pgcairn_engine::store::trail`]).

use pgcairn_engine::store::trail::{self, AuditRecord};
use pgcairn_engine::store::Timestamp;

use super::open_repo;
use crate::args::{Command, KeyCmd, OutputFormat};
use crate::exit::Failure;
use crate::settings::Settings;

/// The name a command is recorded under, or `None` when it is not audited (reads, dry runs,
/// WAL archiving, which PostgreSQL's own log covers segment by segment).
pub fn audited(command: &Command) -> Option<String> {
    let name = match command {
        Command::Init { .. } => "init",
        Command::Backup { .. } => "backup",
        Command::Restore(a) if !a.dry_run => "restore",
        Command::RestorePoint { .. } => "restore-point",
        Command::Drill(a) if !a.history => "drill",
        Command::Expire { dry_run: false, .. } => "expire",
        Command::Gc { dry_run: false, .. } => "gc",
        Command::Pin { .. } => "pin",
        Command::Unpin { .. } => "unpin",
        Command::Key(k) => match k {
            KeyCmd::List { .. } => return None,
            KeyCmd::Add { .. } => "key add",
            KeyCmd::Remove { .. } => "key remove",
            KeyCmd::Passwd { .. } => "key passwd",
            KeyCmd::Rotate { .. } => "key rotate",
            KeyCmd::Reencrypt { .. } => "key reencrypt",
        },
        _ => return None,
    };
    Some(name.to_string())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The OS user's name from /etc/passwd, else `uid N`.
fn user() -> String {
    let uid = pgcairn_engine::pg::instance::current_uid();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The command line without the program name. Secrets never come from argv (passphrases and
/// keys come from files and the environment), but a `password=` someone put in a URL anyway
/// is masked.
fn args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .map(|a| match a.to_ascii_lowercase().find("password=") {
            Some(i) => format!("{}password=***", &a[..i]),
            None => a,
        })
        .collect()
}

/// Appends the record of `command` with its outcome. Best effort: a command that succeeded is
/// not turned into a failure because its record could not be written (that is logged).
pub async fn record(settings: &Settings, command: String, result: &Result<(), Failure>) {
    let outcome = match result {
        Ok(()) => "ok".to_string(),
        Err(f) => {
            let first: String = f
                .message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(500)
                .collect();
            format!("failed (exit {}): {first}", f.code as i32)
        }
    };
    let rec = AuditRecord {
        at: Timestamp::now(),
        host: host(),
        user: user(),
        command: command.clone(),
        args: args(),
        cluster: settings.cluster.clone(),
        outcome,
    };
    let written = async {
        let repo = open_repo(settings).await.map_err(|f| f.message)?;
        trail::append(&repo, &rec).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = written {
        // init that failed usually left no repository to record into.
        if !(command == "init" && result.is_err()) {
            tracing::warn!("could not append the audit record of `{command}`: {e}");
        }
    }
}

/// `pgcairn audit [--since TIME] [--output json]`.
pub async fn list(
    settings: &Settings,
    since: Option<&str>,
    output: OutputFormat,
) -> Result<(), Failure> {
    let since = since.map(parse_since).transpose()?;
    let repo = open_repo(settings).await?;
    let records = trail::list(&repo, since).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&records).expect("JSON"));
        return Ok(());
    }
    for r in &records {
        println!(
            "{}  {}@{}  [{}] {}: {}  ({})",
            r.at,
            r.user,
            r.host,
            r.cluster,
            r.command,
            r.outcome,
            r.args.join(" ")
        );
    }
    Ok(())
}

/// RFC 3339, or a duration ago (`24h`, `7d`).
fn parse_since(s: &str) -> Result<Timestamp, Failure> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    match pgcairn_storage::parse_duration(s) {
        Some(d) => Ok(Timestamp::now() - d),
        None => Err(Failure::usage(format!(
            "--since {s:?}: give an RFC 3339 time (2026-11-24T07:00:00Z) or a duration ago (24h, 7d)"
        ))),
    }
}
