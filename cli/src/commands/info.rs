//! `pgbunker info`: clusters and archived WAL per timeline (text or JSON).
//!
//! JSON shape (stable; fields are only ever added):
//! `{"repository": {"url", "repo_id", "format", "encryption", "created_at"},
//!   "clusters": [{"name", "system_identifier", "wal_segment_size",
//!                 "wal": {"timelines": [{"timeline", "history_file", "segments",
//!                          "ranges": [{"first","last","segments"}],
//!                          "gaps": [{"first_missing","last_missing","segments"}],
//!                          "partial_files", "backup_history_files"}]}}]}`

use pgbunker_engine::archive::{list_wal, WalListing};
use pgbunker_engine::repo::Encryption;
use serde_json::json;

use super::open_repo;
use crate::args::OutputFormat;
use crate::exit::Failure;
use crate::settings::Settings;

pub async fn run(settings: &Settings, output: OutputFormat) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    let mut names: Vec<String> = repo
        .storage()
        .list("clusters/")
        .await
        .map_err(pgbunker_engine::Error::from)?
        .into_iter()
        .filter_map(|o| {
            o.key
                .as_str()
                .strip_prefix("clusters/")?
                .split('/')
                .next()
                .map(str::to_string)
        })
        .collect();
    names.dedup();
    let mut listings: Vec<WalListing> = Vec::new();
    for n in &names {
        listings.push(list_wal(&repo, n).await?);
    }
    let cfg = repo.config();
    let encryption = match cfg.encryption {
        Encryption::XChaCha20Poly1305 => "xchacha20poly1305",
        Encryption::None => "none",
    };
    match output {
        OutputFormat::Json => {
            let clusters: Vec<_> = listings
                .iter()
                .map(|l| {
                    json!({
                        "name": l.cluster,
                        "system_identifier": l.system_identifier,
                        "wal_segment_size": l.wal_segment_size,
                        "wal": {"timelines": l.timelines},
                    })
                })
                .collect();
            let doc = json!({
                "repository": {
                    "url": repo.storage().describe(),
                    "repo_id": cfg.repo_id,
                    "format": cfg.format,
                    "encryption": encryption,
                    "created_at": cfg.created_at,
                },
                "clusters": clusters,
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        }
        OutputFormat::Text => {
            println!("repository {} ({})", repo.storage().describe(), cfg.repo_id);
            println!("  encryption: {encryption}, created {}", cfg.created_at);
            if listings.is_empty() {
                println!("  no clusters yet: the first archive-push binds one");
            }
            for l in &listings {
                println!();
                println!(
                    "cluster {} (system identifier {}, {} MiB segments)",
                    l.cluster,
                    l.system_identifier.as_deref().unwrap_or("not bound yet"),
                    l.wal_segment_size >> 20
                );
                for t in &l.timelines {
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
        }
    }
    Ok(())
}
