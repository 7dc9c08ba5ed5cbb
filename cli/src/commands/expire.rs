//! `pgbunker expire`, `pin`, `unpin`.

use pgbunker_engine::expire::{expire, set_pin};

use super::open_repo;
use crate::args::OutputFormat;
use crate::exit::Failure;
use crate::settings::Settings;

pub async fn run(settings: &Settings, dry_run: bool, output: OutputFormat) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    let r = expire(&repo, &settings.cluster, &settings.retention, dry_run).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
        return Ok(());
    }
    if settings.retention.is_empty() {
        println!("no retention policy configured ([retention] full, keep_within, daily, weekly, monthly): nothing expires");
    }
    let verb = |keep: bool| match (keep, dry_run) {
        (true, _) => "keep  ",
        (false, true) => "WOULD EXPIRE",
        (false, false) => "EXPIRED",
    };
    for d in &r.backups {
        println!("{} {}: {}", verb(d.keep), d.id, d.reasons.join("; "));
    }
    match (&r.wal_kept_from, r.wal_files) {
        (Some(from), n) if n > 0 => println!(
            "WAL: {} {n} files before {from} (no retained backup needs them); history files kept",
            if dry_run { "would remove" } else { "removed" }
        ),
        _ => println!("WAL: nothing to remove"),
    }
    Ok(())
}

pub async fn pin(settings: &Settings, id: &str, pinned: bool) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    set_pin(&repo, &settings.cluster, id, pinned).await?;
    println!(
        "backup {id} {}",
        if pinned {
            "pinned: expire never removes it"
        } else {
            "unpinned"
        }
    );
    Ok(())
}
