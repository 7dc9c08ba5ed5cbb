//! Drill reports: JSON (stored in the repository, sealed like everything else, and written
//! locally), a Markdown summary, and a self-contained HTML page whose inline SVG charts MTTR
//! and restored size across past drills (no network needed to view it).

use serde::{Deserialize, Serialize};

use crate::codec::ObjectKind;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    /// Name: preflight, restore, startup, replay, checks, total.
    pub name: String,
    /// Seconds.
    pub seconds: f64,
    /// Details (bytes, MB/s, segments...).
    pub detail: String,
    /// This phase's share of the MTTR (0..1); `None` for phases outside it (checks, total).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_of_mttr: Option<f64>,
}

/// The phases that make up the MTTR.
pub const MTTR_PHASES: [&str; 4] = ["preflight", "restore", "startup", "replay"];

/// Sets each MTTR phase's share of the MTTR; returns the MTTR (their sum).
pub fn apportion(phases: &mut [Phase]) -> f64 {
    let mttr: f64 = phases
        .iter()
        .filter(|p| MTTR_PHASES.contains(&p.name.as_str()))
        .map(|p| p.seconds)
        .sum();
    for p in phases.iter_mut() {
        p.share_of_mttr =
            (MTTR_PHASES.contains(&p.name.as_str()) && mttr > 0.0).then(|| p.seconds / mttr);
    }
    mttr
}

/// One integrity check.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// Name.
    pub name: String,
    /// `passed`, `failed`, `skipped`, or `error` (the check could not be made for a reason
    /// outside the data: not an integrity failure).
    pub status: String,
    /// What was found.
    pub detail: String,
}

/// Rows of one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRows {
    /// `database.schema.table`.
    pub table: String,
    /// Row count.
    pub rows: i64,
}

/// A drill's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// Id (start time, `YYYYMMDD-HHMMSS`).
    pub id: String,
    /// Cluster.
    pub cluster: String,
    /// RFC 3339.
    pub started_at: crate::store::Timestamp,
    /// RFC 3339.
    pub finished_at: crate::store::Timestamp,
    /// Backup restored.
    pub backup_id: String,
    /// Why that backup.
    pub backup_reason: String,
    /// The target, as given.
    pub target: String,
    /// Phases, in order, then `total`.
    pub phases: Vec<Phase>,
    /// Total time to recover (restore + replay + startup), seconds.
    pub mttr_seconds: f64,
    /// Objective, if one was set.
    pub max_mttr_seconds: Option<f64>,
    /// Share of the MTTR spent replaying WAL: the startup phase (PostgreSQL replays the
    /// backup's own WAL before it accepts a connection) plus the replay phase, 0..1. What a
    /// shorter backup interval would shorten (README, "What a backup interval buys").
    #[serde(default)]
    pub replay_share: Option<f64>,
    /// How archive-get served the segments of this recovery (with `archive.async`, from the
    /// prefetch spool's counters): how often replay waited for WAL.
    #[serde(default)]
    pub wal_fetch: Option<crate::archive::prefetch::GetStats>,
    /// Bytes of files restored.
    pub restored_bytes: u64,
    /// WAL segments in the plan.
    pub wal_segments: u64,
    /// RPO signal: age of the newest archived WAL at drill time, seconds.
    pub newest_wal_age_seconds: Option<f64>,
    /// Checks.
    pub checks: Vec<Check>,
    /// Row counts per table.
    pub row_counts: Vec<TableRows>,
    /// `passed`, `integrity-failed`, `objective-missed`, or `error` (the drill could not run:
    /// local resources, storage unreachable; says nothing about the backup).
    pub outcome: String,
    /// Why, in one line.
    pub summary: String,
}

pub(crate) fn context(cluster: &str, id: &str) -> Vec<u8> {
    format!("drill:{cluster}/{id}").into_bytes()
}

/// Stores a report in the repository (create-only).
pub async fn store(repo: &Repository, r: &DrillReport) -> Result<()> {
    let plain = serde_json::to_vec(r).expect("report serialises");
    let sealed = repo.codec().seal(
        ObjectKind::Document,
        &ContentId([0; 32]),
        &context(&r.cluster, &r.id),
        &plain,
        3,
    );
    repo.storage()
        .put_create(&layout::drill_report(&r.cluster, &r.id), sealed.into())
        .await?;
    Ok(())
}

/// Past reports of a cluster, oldest first.
pub async fn history(repo: &Repository, cluster: &str) -> Result<Vec<DrillReport>> {
    let prefix = layout::drills_prefix(cluster);
    let mut out = Vec::new();
    for o in repo.storage().list(&prefix).await? {
        let id = o
            .key
            .as_str()
            .strip_prefix(&prefix)
            .unwrap_or_default()
            .to_string();
        let sealed = repo.storage().get(&o.key).await?;
        let plain = repo
            .codec()
            .open(
                ObjectKind::Document,
                &ContentId([0; 32]),
                &context(cluster, &id),
                &sealed,
            )
            .map_err(|e| Error::corrupt(o.key.to_string(), e.to_string()))?;
        if let Ok(r) = serde_json::from_slice(&plain) {
            out.push(r);
        }
    }
    out.sort_by(|a: &DrillReport, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Markdown summary.
pub fn markdown(r: &DrillReport) -> String {
    let mut s = format!(
        "# pgcairn restore drill {} ({})\n\n**Outcome: {}** — {}\n\n- cluster: `{}`\n- backup: `{}` ({})\n- target: {}\n- MTTR: {:.1} s{}{}\n- restored: {:.1} MiB, {} WAL segments\n- newest archived WAL age: {}\n{}\n## Phases\n\n| phase | seconds | share of MTTR | detail |\n|---|---:|---:|---|\n",
        r.id,
        r.started_at,
        r.outcome.to_uppercase(),
        r.summary,
        r.cluster,
        r.backup_id,
        r.backup_reason,
        r.target,
        r.mttr_seconds,
        r.max_mttr_seconds.map(|m| format!(" (objective {m:.0} s)")).unwrap_or_default(),
        r.replay_share.map(|v| format!(", of which WAL replay {:.0} %", v * 100.0)).unwrap_or_default(),
        r.restored_bytes as f64 / 1048576.0,
        r.wal_segments,
        r.newest_wal_age_seconds.map(|a| format!("{a:.0} s")).unwrap_or_else(|| "unknown".into()),
        r.wal_fetch.as_ref().map(|w| format!("- archive-get: {}\n", w.summary())).unwrap_or_default(),
    );
    for p in &r.phases {
        s.push_str(&format!(
            "| {} | {:.2} | {} | {} |\n",
            p.name,
            p.seconds,
            p.share_of_mttr
                .map(|v| format!("{:.0} %", v * 100.0))
                .unwrap_or_default(),
            p.detail
        ));
    }
    s.push_str("\n## Checks\n\n| check | status | detail |\n|---|---|---|\n");
    for c in &r.checks {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            c.name,
            c.status,
            c.detail.replace('|', "\\|")
        ));
    }
    s.push_str("\n## Row counts\n\n| table | rows |\n|---|---:|\n");
    for t in &r.row_counts {
        s.push_str(&format!("| {} | {} |\n", t.table, t.rows));
    }
    s
}

/// Green for passed, amber for a drill that could not run, red for a failure.
fn outcome_color(outcome: &str) -> &'static str {
    match outcome {
        "passed" => "#27ae60",
        "error" => "#d68910",
        _ => "#c0392b",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An inline SVG line chart of MTTR (seconds) and restored size (MiB) across drills.
pub fn history_svg(history: &[DrillReport]) -> String {
    let (w, h, pad) = (640.0, 240.0, 40.0);
    let n = history.len().max(1);
    let max_mttr = history
        .iter()
        .map(|r| r.mttr_seconds)
        .fold(1.0f64, f64::max)
        * 1.1;
    let max_mib = history
        .iter()
        .map(|r| r.restored_bytes as f64 / 1048576.0)
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |i: usize| {
        pad + (w - 2.0 * pad)
            * if n == 1 {
                0.5
            } else {
                i as f64 / (n - 1) as f64
            }
    };
    let y = |v: f64, max: f64| h - pad - (h - 2.0 * pad) * v / max;
    let line = |vals: Vec<f64>, max: f64| {
        vals.iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v, max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mttr: Vec<f64> = history.iter().map(|r| r.mttr_seconds).collect();
    let mib: Vec<f64> = history
        .iter()
        .map(|r| r.restored_bytes as f64 / 1048576.0)
        .collect();
    let mut svg = format!(
        "<svg id=\"mttr-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"MTTR and restored size across drills\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#ccc\"/>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>\
         <text x=\"{pad}\" y=\"20\" font-size=\"12\" fill=\"#c0392b\">MTTR (s), max {max_mttr:.1}</text>\
         <text x=\"{}\" y=\"20\" font-size=\"12\" fill=\"#2471a3\" text-anchor=\"end\">restored (MiB), max {max_mib:.0}</text>",
        h - pad,
        w - pad,
        h - pad,
        w - pad
    );
    svg.push_str(&format!("<polyline class=\"mttr\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{}\"/>", line(mttr.clone(), max_mttr)));
    svg.push_str(&format!("<polyline class=\"size\" fill=\"none\" stroke=\"#2471a3\" stroke-width=\"2\" stroke-dasharray=\"4 3\" points=\"{}\"/>", line(mib, max_mib)));
    for (i, (r, v)) in history.iter().zip(&mttr).enumerate() {
        let color = outcome_color(&r.outcome);
        svg.push_str(&format!(
            "<circle class=\"drill-point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{color}\"><title>{} {} MTTR {v:.1}s</title></circle>",
            x(i),
            y(*v, max_mttr),
            esc(&r.id),
            esc(&r.outcome)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// A self-contained HTML page: this run's phases and checks, and the history chart.
pub fn html(r: &DrillReport, history: &[DrillReport]) -> String {
    let rows = |items: Vec<(String, String, String)>| {
        items
            .into_iter()
            .map(|(a, b, c)| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&a),
                    esc(&b),
                    esc(&c)
                )
            })
            .collect::<String>()
    };
    let phases = rows(
        r.phases
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    format!("{:.2}", p.seconds),
                    p.detail.clone(),
                )
            })
            .collect(),
    );
    let checks = rows(
        r.checks
            .iter()
            .map(|c| (c.name.clone(), c.status.clone(), c.detail.clone()))
            .collect(),
    );
    let past = rows(
        history
            .iter()
            .rev()
            .map(|h| {
                (
                    h.id.clone(),
                    h.outcome.clone(),
                    format!(
                        "MTTR {:.1}s, {:.1} MiB",
                        h.mttr_seconds,
                        h.restored_bytes as f64 / 1048576.0
                    ),
                )
            })
            .collect(),
    );
    let color = outcome_color(&r.outcome);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pgcairn drill {id}</title>\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.outcome{{color:#fff;background:{color};padding:4px 10px;border-radius:4px}}</style>\
         </head><body><h1>pgcairn restore drill {id}</h1>\
         <p><span class=\"outcome\" id=\"outcome\">{outcome}</span> {summary}</p>\
         <p>cluster <b>{cluster}</b>, backup <b>{backup}</b> ({reason}), target {target}; MTTR <b id=\"mttr\">{mttr:.1} s</b>; restored {mib:.1} MiB and {segs} WAL segments.</p>\
         <h2>MTTR and restored size across drills</h2>{svg}\
         <h2>Phases</h2><table id=\"phases\"><tr><th>phase</th><th>seconds</th><th>detail</th></tr>{phases}</table>\
         <h2>Checks</h2><table id=\"checks\"><tr><th>check</th><th>status</th><th>detail</th></tr>{checks}</table>\
         <h2>Past drills</h2><table id=\"history\"><tr><th>drill</th><th>outcome</th><th>detail</th></tr>{past}</table>\
         </body></html>\n",
        id = esc(&r.id),
        outcome = esc(&r.outcome.to_uppercase()),
        summary = esc(&r.summary),
        cluster = esc(&r.cluster),
        backup = esc(&r.backup_id),
        reason = esc(&r.backup_reason),
        target = esc(&r.target),
        mttr = r.mttr_seconds,
        mib = r.restored_bytes as f64 / 1048576.0,
        segs = r.wal_segments,
        svg = history_svg(history),
    )
}

#[cfg(test)]
mod share_tests {
    use super::*;

    fn phase(name: &str, seconds: f64) -> Phase {
        Phase {
            name: name.into(),
            seconds,
            detail: String::new(),
            share_of_mttr: None,
        }
    }

    #[test]
    fn mttr_phases_get_their_share_and_the_others_none() {
        let mut p = vec![
            phase("preflight", 1.0),
            phase("restore", 5.0),
            phase("startup", 1.0),
            phase("replay", 3.0),
            phase("checks", 7.0),
        ];
        assert_eq!(apportion(&mut p), 10.0);
        let shares: Vec<Option<f64>> = p.iter().map(|p| p.share_of_mttr).collect();
        assert_eq!(shares, [Some(0.1), Some(0.5), Some(0.1), Some(0.3), None]);
        // Nothing measured (a drill that failed at once): no shares, no division by zero.
        let mut p = vec![phase("preflight", 0.0)];
        assert_eq!(apportion(&mut p), 0.0);
        assert_eq!(p[0].share_of_mttr, None);
    }

    #[test]
    fn reports_written_before_shares_existed_still_read() {
        let old = r#"{"name":"restore","seconds":1.5,"detail":"x"}"#;
        let p: Phase = serde_json::from_str(old).unwrap();
        assert_eq!(p.share_of_mttr, None);
    }
}
