//! `pgcairn expire`, `pin`, `unpin`.

use pgcairn_engine::expire::expire;
use pgcairn_engine::gc::{gc as run_gc, GcOptions};
use pgcairn_engine::repo::Repository;

use super::open_repo;
use crate::args::OutputFormat;
use crate::exit::Failure;
use crate::settings::Settings;

pub async fn run(settings: &Settings, dry_run: bool, output: OutputFormat) -> Result<(), Failure> {
    let repo = open_repo_for(settings, dry_run).await?;
    let r = expire(
        &repo,
        &settings.cluster,
        &settings.retention,
        settings.maintenance_lease_wait,
    )
    .await?;
    if !dry_run {
        let before = pgcairn_engine::store::Timestamp::now() - settings.audit_keep;
        let pruned = pgcairn_engine::store::trail::prune(&repo, before).await?;
        if pruned > 0 {
            tracing::info!("deleted {pruned} audit records older than retention.audit_keep");
        }
    }
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
    for w in &r.wal_ranges {
        let verb = match (w.keep, dry_run) {
            (true, _) => "keep  ",
            (false, true) => "WOULD REMOVE",
            (false, false) => "REMOVED",
        };
        let span = if w.first == w.last {
            w.first.clone()
        } else {
            format!("{}..{}", w.first, w.last)
        };
        println!("{verb} WAL {span} ({} files): {}", w.files, w.reason);
    }
    if r.wal_ranges.is_empty() {
        println!("WAL: none archived");
    }
    for t in &r.streamed_tails {
        let verb = match (t.keep, dry_run) {
            (true, _) => "keep  ",
            (false, true) => "WOULD REMOVE",
            (false, false) => "REMOVED",
        };
        println!(
            "{verb} streamed WAL {} ({} chunks, {} bytes): {}",
            t.segment, t.chunks, t.streamed_bytes, t.reason
        );
    }
    Ok(())
}

/// The repository, over the dry-run storage wrapper with `--dry-run`
/// ([`pgcairn_engine::store::dry_run`]): the command runs its real steps and storage is
/// asked to change nothing.
async fn open_repo_for(settings: &Settings, dry_run: bool) -> Result<Repository, Failure> {
    let repo = open_repo(settings).await?;
    Ok(if dry_run { repo.into_dry_run() } else { repo })
}

pub async fn pin(settings: &Settings, id: &str, pinned: bool) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    pgcairn_engine::expire::pin(&repo, &settings.cluster, id, pinned, settings.lease_wait).await?;
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
    index_memory: u64,
    output: OutputFormat,
) -> Result<(), Failure> {
    let grace = match grace {
        Some(g) => pgcairn_storage::parse_duration(g).ok_or_else(|| {
            Failure::usage(format!("--grace {g:?}: use a duration like 1h or 0s"))
        })?,
        None => settings.gc_grace,
    };
    let repo = open_repo_for(settings, dry_run).await?;
    let started = std::time::Instant::now();
    let opts = GcOptions {
        grace,
        repack_below: settings.gc_repack_below,
        lease_wait: settings.maintenance_lease_wait,
        reencrypt: false,
        object_lock: settings.object_lock,
        index_memory,
    };
    let r = run_gc(&repo, &opts).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
        return Ok(());
    }
    if r.mark_on_disk {
        println!(
            "mark: {} index entries and {} referenced blocks, more than --index-memory holds: \
             kept in files in {}",
            r.index_entries,
            r.referenced_blocks,
            std::env::temp_dir().display()
        );
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let would = |done: &'static str, maybe: &'static str| if dry_run { maybe } else { done };
    println!(
        "{} packs ({:.1} MiB); {} still needed; {} newly condemned; {} reprieved",
        r.packs,
        mib(r.space.pack_bytes + r.reclaimed_bytes),
        r.live_packs,
        r.condemned.len(),
        r.reprieved.len()
    );
    println!(
        "{} {} packs less than {:.0}% live ({:.1} MiB of live blocks copied into {} new packs)",
        would("repacked", "would repack"),
        r.repacked.len(),
        settings.gc_repack_below * 100.0,
        mib(r.repack_copied_bytes),
        r.repack_new_packs
    );
    for skipped in &r.repack_skipped {
        eprintln!(
            "WARNING: not repacked, damaged: {skipped}; run pgcairn verify --read-data --all"
        );
    }
    println!(
        "{} {} packs ({:.1} MiB); {:.1} MiB condemned awaiting the grace period ({}s){}",
        would("swept", "would sweep"),
        r.swept.len(),
        mib(r.reclaimed_bytes),
        mib(r.pending_bytes),
        grace.as_secs(),
        if r.waiting_for_backups > 0 {
            format!(
                "; {} packs wait for running backups that may use them",
                r.waiting_for_backups
            )
        } else {
            String::new()
        }
    );
    if r.waiting_for_object_lock > 0 {
        println!(
            "{} condemned packs are still under the bucket's Object Lock retention (repo.object_lock_days): \
             not deleted yet; the first may go after {}",
            r.waiting_for_object_lock,
            r.object_lock_until
                .map_or_else(|| "?".into(), |t| t.to_string())
        );
    }
    println!(
        "read {} manifests, {} index entries ({} blocks referenced); {} objects listed, {:.1} MiB read, {} index segments rewritten, {} merged into {}, in {:.1}s{}",
        r.manifests,
        r.index_entries,
        r.referenced_blocks,
        r.objects_listed,
        mib(r.bytes_read),
        r.index_rewritten,
        r.index_merged,
        r.index_merged_into,
        started.elapsed().as_secs_f64(),
        if dry_run { " (dry run: nothing changed)" } else { "" }
    );
    Ok(())
}

/// `[retention] auto = true`: expire after a successful backup. The summary goes to stderr
/// (stdout carries the backup's own output, JSON included); a failure says the backup itself
/// succeeded.
pub async fn auto_expire(settings: &Settings, backup_id: &str) -> Result<(), Failure> {
    let result = async {
        let repo = open_repo(settings).await?;
        Ok::<_, Failure>(
            expire(
                &repo,
                &settings.cluster,
                &settings.retention,
                settings.maintenance_lease_wait,
            )
            .await?,
        )
    }
    .await;
    match result {
        Ok(r) => {
            let expired: Vec<&str> = r
                .backups
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.id.as_str())
                .collect();
            eprintln!(
                "retention.auto: expired {} backups{}; removed {} WAL files",
                expired.len(),
                if expired.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", expired.join(", "))
                },
                r.wal_files
            );
            Ok(())
        }
        Err(mut f) => {
            f.message = format!(
                "backup {backup_id} completed, but the automatic expire (retention.auto) failed: {}; \
                 run pgcairn expire",
                f.message
            );
            Err(f)
        }
    }
}
