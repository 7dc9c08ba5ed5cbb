//! `pgcairn info`: clusters, backups, archived WAL per timeline and the recoverable window.
//!
//! JSON shape (stable; fields are only ever added):
//! `{"repository": {"url", "repo_id", "format", "encryption", "created_at",
//!                  "space": {"packs", "pack_bytes", "referenced_bytes", "reclaimable_bytes"}},
//!   "clusters": [{"name", "system_identifier", "wal_segment_size",
//!                 "backups": [{"id", "type", "reference", "timeline", "start_time", "stop_time",
//!                              "start_lsn", "stop_lsn", "stats": {"files", "size", "bytes_read",
//!                              "bytes_new", "stored_new", "blocks", "blocks_new", "files_unchanged",
//!                              "blocks_patched"},
//!                              "dedup_ratio", "bad_pages", "from_standby", "wal_in_backup": ["name"],
//!                              "databases": [{"oid", "name"}]}],
//!                 "wal": {"cluster", "system_identifier", "wal_segment_size",
//!                         "timelines": [{"timeline", "history_file", "segments",
//!                          "ranges": [{"first","last","segments"}],
//!                          "gaps": [{"first_missing","last_missing","segments"}],
//!                          "partial_files", "backup_history_files"}]},
//!                 "recoverable": null | {"from_lsn", "from_time", "to_lsn", "to_wal", "timeline"},
//!                 "last_drill": null | {"id", "outcome", "mttr_seconds", "backup_id", "summary"},
//!                 "holds": [{"backup_id", "until", "host", "pid", "object"}], "holds_problem"?: "...",
//!                 "catalog": {"cluster", "generation": null | N, "head_problem": null | "...",
//!                             "missing_backups": ["id"], "missing_history": ["file"], "missing_pins": ["id"],
//!                             "missing_wal": [{"timeline", "first", "last", "segments", "what"}],
//!                             "last_verify": null | {"at", "ok", "summary"},
//!                             "last_drill": null | {"at", "ok", "summary"}}}]}`
//!
//! `catalog` compares the cluster's catalog head with storage: anything listed as missing was
//! recorded as stored and is gone (deleted outside pgcairn). `info` still exits 0; `verify`
//! exits 1 for the same findings.

use pgcairn_engine::info::{cluster_info, ClusterInfo};
use pgcairn_engine::repo::Encryption;
use serde_json::json;

use super::open_repo;
use crate::args::OutputFormat;
use crate::exit::Failure;
use crate::settings::Settings;

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

pub async fn run(settings: &Settings, output: OutputFormat) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    let names = pgcairn_engine::store::manifest::cluster_names(&repo).await?;
    let mut clusters: Vec<ClusterInfo> = Vec::new();
    for n in &names {
        let mut info = cluster_info(&repo, n).await?;
        if *n == settings.cluster {
            let path = settings.wal_receive.status_file.clone().or_else(|| {
                settings
                    .state_dir
                    .as_deref()
                    .map(|d| pgcairn_engine::walstream::status::default_path(d, n))
            });
            if let Some(path) = path {
                match pgcairn_engine::walstream::status::read(&path) {
                    Ok(s) => info.wal_receive.receiver = s,
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        clusters.push(info);
    }
    let space = pgcairn_engine::gc::space_summary(&repo).await?;
    let cfg = repo.config();
    let encryption = match cfg.encryption {
        Encryption::XChaCha20Poly1305 => "xchacha20poly1305",
        Encryption::None => "none",
    };
    if output == OutputFormat::Json {
        let doc = json!({
            "repository": {
                "url": repo.storage().describe(),
                "repo_id": cfg.repo_id,
                "format": cfg.format,
                "encryption": encryption,
                "created_at": cfg.created_at,
                "space": space,
            },
            "clusters": clusters,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        return Ok(());
    }
    println!("repository {} ({})", repo.storage().describe(), cfg.repo_id);
    println!("  encryption: {encryption}, created {}", cfg.created_at);
    println!(
        "  packs: {} holding {}, {} referenced by backups, {} reclaimable by gc",
        space.packs,
        mib(space.pack_bytes),
        mib(space.referenced_bytes),
        mib(space.reclaimable_bytes)
    );
    if clusters.is_empty() {
        println!("  no clusters yet: the first archive-push or backup binds one");
    }
    for c in &clusters {
        println!();
        println!(
            "cluster {} (system identifier {}, {} MiB segments)",
            c.name,
            c.system_identifier.as_deref().unwrap_or("not bound yet"),
            c.wal_segment_size >> 20
        );
        if c.backups.is_empty() {
            println!("  no backups");
        }
        for b in &c.backups {
            println!(
                "  backup {} {:?}{} tl {} {} .. {} lsn {} .. {}: db {}, added {} (dedup {}x){}{}",
                b.id,
                b.backup_type,
                if b.from_standby { " from standby" } else { "" },
                b.timeline,
                b.start_time,
                b.stop_time,
                b.start_lsn,
                b.stop_lsn,
                mib(b.stats.size),
                mib(b.stats.stored_new),
                b.dedup_ratio,
                match b.wal_in_backup.as_slice() {
                    [] => String::new(),
                    w => format!(
                        ", carries WAL {} (not archived when it finished)",
                        w.join(" ")
                    ),
                },
                if b.bad_pages > 0 {
                    format!(", {} BAD PAGES", b.bad_pages)
                } else {
                    String::new()
                }
            );
        }
        // The names a selective restore takes, as the newest backup recorded them.
        if let Some(b) = c.backups.last().filter(|b| !b.databases.is_empty()) {
            let dbs: Vec<String> = b
                .databases
                .iter()
                .map(|d| format!("{} ({})", pgcairn_engine::db_select::shown(&d.name), d.oid))
                .collect();
            println!("  databases (newest backup): {}", dbs.join(", "));
        }
        if let Some(b) = c.backups.last() {
            if let Some(link) = &b.wal_link {
                println!("  pg_wal (newest backup): a link to {}", link.display());
            }
            if !b.config_files.is_empty() {
                let files: Vec<String> = b
                    .config_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                println!(
                    "  configuration files outside the data directory (newest backup): {}",
                    files.join(", ")
                );
            }
        }
        match c.catalog.generation {
            Some(g) => println!(
                "  catalog head: generation {g}{}",
                match &c.catalog.last_verify {
                    Some(v) => format!(
                        ", last verify {} {}",
                        v.at,
                        if v.ok { "ok" } else { "FOUND DAMAGE" }
                    ),
                    None => String::new(),
                }
            ),
            None if c.catalog.head_problem.is_none() => println!("  catalog head: none yet"),
            None => {}
        }
        for (object, detail) in c.catalog.findings() {
            println!("  MISSING {object}: {detail}");
        }
        for h in &c.holds {
            println!(
                "  held against expire: backup {} until {} (a recovery by pid {} on {}; {})",
                h.backup_id, h.until, h.pid, h.host, h.object
            );
        }
        if let Some(why) = &c.holds_problem {
            println!("  HOLDS UNREADABLE (expire stops on them): {why}");
        }
        if let Some(d) = &c.last_drill {
            println!(
                "  last drill {}: {} (MTTR {:.1}s, backup {}): {}",
                d.id,
                d.outcome.to_uppercase(),
                d.mttr_seconds,
                d.backup_id,
                d.summary
            );
        }
        match &c.recoverable {
            Some(w) => println!(
                "  recoverable: from {} (lsn {}) to lsn {} (end of {}, timeline {})",
                w.from_time, w.from_lsn, w.to_lsn, w.to_wal, w.timeline
            ),
            None if !c.backups.is_empty() => {
                println!("  recoverable: NOTHING (the oldest backup's WAL is not all archived)")
            }
            None => {}
        }
        let wr = &c.wal_receive;
        if let (Some(seg), Some(end)) = (&wr.streamed_segment, &wr.streamed_end_lsn) {
            println!("  wal-receive: streamed and durable up to lsn {end} (segment {seg})");
        }
        if let Some(r) = &wr.receiver {
            println!(
                "  wal-receive receiver: {} (pid {}, timeline {}), flushed {}, server at {}, lag {} bytes, updated {}{}",
                r.state,
                r.pid,
                r.timeline,
                r.flush_lsn.as_deref().unwrap_or("-"),
                r.server_wal_end.as_deref().unwrap_or("-"),
                r.lag_bytes.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                r.updated_at,
                r.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
        for t in &c.wal.timelines {
            let hist = if t.history_file {
                ", history file archived"
            } else {
                ""
            };
            println!("  timeline {}: {} segments{hist}", t.timeline, t.segments);
            for r in &t.ranges {
                println!(
                    "    archived {} .. {} ({} segments)",
                    r.first, r.last, r.segments
                );
            }
            for g in &t.gaps {
                println!(
                    "    GAP      {} .. {} ({} segments missing)",
                    g.first_missing, g.last_missing, g.segments
                );
            }
            for p in &t.partial_files {
                println!("    partial  {p}");
            }
            for b in &t.backup_history_files {
                println!("    backup history {b}");
            }
        }
    }
    Ok(())
}
