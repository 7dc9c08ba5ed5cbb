//! `pgcairn verify`.

use pgcairn_engine::verify::{verify, ReadData, VerifyOptions};

use super::open_repo;
use crate::args::OutputFormat;
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

fn parse_read_data(v: Option<&str>) -> Result<ReadData, Failure> {
    let Some(v) = v else {
        return Ok(ReadData::None);
    };
    let bad = || {
        Failure::usage(format!(
            "--read-data {v:?}: use no value (everything), PERCENT% (like 10%) or N/T (like 3/7)"
        ))
    };
    if let Some((n, t)) = v.split_once('/') {
        let (n, t): (u32, u32) = (n.parse().map_err(|_| bad())?, t.parse().map_err(|_| bad())?);
        if t == 0 || n == 0 || n > t {
            return Err(bad());
        }
        return Ok(ReadData::Slice(n, t));
    }
    let pct: f64 = v.trim_end_matches('%').parse().map_err(|_| bad())?;
    if !(0.0..=100.0).contains(&pct) {
        return Err(bad());
    }
    Ok(if pct >= 100.0 {
        ReadData::All
    } else {
        ReadData::Percent(pct)
    })
}

pub async fn run(
    settings: &Settings,
    read_data: Option<&str>,
    all: bool,
    index_memory: u64,
    output: OutputFormat,
) -> Result<(), Failure> {
    let read_data = parse_read_data(read_data)?;
    let repo = open_repo(settings).await?;
    let opts = VerifyOptions {
        read_data,
        all_again: all,
        // In this user's state directory, else in the spool if it is this user's own (not
        // PostgreSQL's user's spool for a verify run as root); else every selected pack is read.
        state_file: settings
            .state_dir
            .clone()
            .or_else(|| {
                pgcairn_engine::private_fs::check_own_tree(&settings.spool_dir, &settings.spool_dir)
                    .ok()
                    .map(|()| settings.spool_dir.clone())
            })
            .map(|d| d.join(format!("verified-packs-{}", repo.config().repo_id))),
        jobs: settings.backup_jobs,
        index_memory,
    };
    let r = verify(&repo, &opts).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
    } else {
        println!(
            "{} backups, {} packs; data: {} packs read ({} blocks re-hashed), {} skipped as verified before; {} orphan packs",
            r.backups,
            r.packs,
            r.packs_read,
            r.blocks_read,
            r.packs_skipped,
            r.orphan_packs.len()
        );
        for p in &r.problems {
            println!(
                "DAMAGE {}: {} (affects: {})",
                p.object,
                p.detail,
                if p.backups.is_empty() {
                    "no backup".into()
                } else {
                    p.backups.join(", ")
                }
            );
        }
    }
    if r.problems.is_empty() {
        if output == OutputFormat::Text {
            println!("ok: no damage found");
        }
        Ok(())
    } else {
        Err(Failure::new(
            ExitCode::Failed,
            format!(
                "repository damaged; affected backups: {}",
                if r.damaged_backups.is_empty() {
                    "none".into()
                } else {
                    r.damaged_backups.join(", ")
                }
            ),
        ))
    }
}
