//! `pgbunker expire`, `pin`, `unpin`.

use pgbunker_engine::expire::{expire, set_pin};
use pgbunker_engine::gc::gc as run_gc;

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

pub async fn gc(
    settings: &Settings,
    dry_run: bool,
    grace: Option<&str>,
    output: OutputFormat,
) -> Result<(), Failure> {
    let grace = match grace {
        Some(g) => pgbunker_storage::parse_duration(g).ok_or_else(|| {
            Failure::usage(format!("--grace {g:?}: use a duration like 1h or 0s"))
        })?,
        None => settings.gc_grace,
    };
    let repo = open_repo(settings).await?;
    let started = std::time::Instant::now();
    let r = run_gc(&repo, grace, dry_run).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
        return Ok(());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{} packs, {} live; {} newly condemned; {} {} ({:.1} MiB){}; {:.1} MiB condemned awaiting the grace period ({}s); {} index segments rewritten; {} objects listed in {:.1}s",
        r.packs,
        r.live_packs,
        r.condemned.len(),
        if dry_run { "would sweep" } else { "swept" },
        r.swept.len(),
        mib(r.reclaimed_bytes),
        if dry_run { " (dry run: nothing changed)" } else { "" },
        mib(r.pending_bytes),
        grace.as_secs(),
        r.index_rewritten,
        r.objects_listed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `[retention] auto = true`: expire after a successful backup.
pub async fn auto_expire(settings: &Settings) -> Result<(), Failure> {
    run(settings, false, OutputFormat::Text).await
}
