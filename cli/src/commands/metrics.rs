//! `pgcairn metrics`: the Prometheus exposition of the status objects (see
//! [`pgcairn_engine::store::status`]), PostgreSQL's archiver statistics and the local archive
//! queue. `serve` answers each scrape with the same [`Collector`].
//!
//! Every metric is listed, with its type, labels and meaning, in the README ("Metrics").
//! A repository that cannot be read gives `pgcairn_up{reason="..."} 0` and nothing from the
//! repository: never zeros that look healthy.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use pgcairn_engine::metrics::{self, ArchiverStats, LocalQueue, Snapshot};
use pgcairn_engine::repo::Repository;
use pgcairn_engine::store::Timestamp;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

use super::open_repo;
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

/// The whole scrape must answer within this (Prometheus' default scrape timeout is 10 s).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(8);
/// PostgreSQL gets this much of it.
const PG_TIMEOUT: Duration = Duration::from_secs(3);

/// Drill outcomes, one series each in `pgcairn_drill_last_outcome`.
const DRILL_OUTCOMES: [&str; 4] = ["passed", "integrity-failed", "objective-missed", "error"];

type Labels = Vec<(String, String)>;
type G = Family<Labels, Gauge<f64, AtomicU64>>;
type C = Family<Labels, Counter<f64, AtomicU64>>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now_unix() -> f64 {
    Timestamp::now().unix_seconds_f64()
}

/// One scrape's inputs.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The status objects, or why they could not be read.
    pub repo: Option<Result<Snapshot, String>>,
    /// PostgreSQL's archiver, when `cluster.conninfo` is set.
    pub pg: Option<Result<ArchiverStats, String>>,
    /// The local queue, when `cluster.pgdata` is set.
    pub local: Option<Result<LocalQueue, String>>,
    /// The configured cluster (PostgreSQL and local metrics carry it).
    pub cluster: String,
    /// Seconds the scrape took.
    pub seconds: f64,
}

impl Inputs {
    /// Why not.
    pub fn down_reason(&self) -> Option<String> {
        match &self.repo {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(e.clone()),
            None => Some("not scraped".into()),
        }
    }
}

/// Registers a gauge family.
fn gauge(r: &mut Registry, name: &str, help: &str) -> G {
    let f = G::default();
    r.register(name, help, f.clone());
    f
}

/// Registers a counter family (the text format names it with `_total`).
fn counter(r: &mut Registry, name: &str, help: &str) -> C {
    let f = C::default();
    r.register(name, help, f.clone());
    f
}

fn set(f: &G, l: &[(&str, &str)], v: f64) {
    f.get_or_create(&labels(l)).set(v);
}

/// Renders a scrape in the text format.
pub fn render(inputs: &Inputs) -> String {
    let mut r = Registry::default();
    let now = now_unix();

    let up = gauge(&mut r, "pgcairn_up", "1 when the repository's status objects could be read; 0 with the reason in a label when not");
    match inputs.down_reason() {
        None => set(&up, &[], 1.0),
        Some(reason) => set(&up, &[("reason", &one_line(&reason))], 0.0),
    }
    let build = gauge(&mut r, "pgcairn_build_info", "pgcairn version (always 1)");
    set(&build, &[("version", crate::VERSION)], 1.0);
    let dur = gauge(
        &mut r,
        "pgcairn_scrape_duration_seconds",
        "Time this scrape took",
    );
    set(&dur, &[], inputs.seconds);

    if let Some(Ok(snap)) = &inputs.repo {
        cluster_metrics(&mut r, snap, now);
        let bytes = gauge(
            &mut r,
            "pgcairn_repository_bytes",
            "Bytes in packs, as of the last gc",
        );
        let recl = gauge(&mut r, "pgcairn_repository_reclaimable_bytes", "Pack bytes not holding a referenced block (gc with repacking could give them back), as of the last gc");
        let pending = gauge(
            &mut r,
            "pgcairn_repository_pending_bytes",
            "Bytes of condemned packs waiting for their grace period, as of the last gc",
        );
        let gc = gauge(
            &mut r,
            "pgcairn_gc_last_timestamp_seconds",
            "Unix time of the last gc (not a dry run)",
        );
        if let Some(s) = &snap.repository {
            set(&bytes, &[], s.pack_bytes as f64);
            set(&recl, &[], s.reclaimable_bytes as f64);
            set(&pending, &[], s.pending_bytes as f64);
            if let Some(t) = s.gc_finished_at {
                set(&gc, &[], t.unix_seconds_f64());
            }
        }
    }
    pg_metrics(&mut r, inputs);
    let mut out = String::new();
    encode(&mut out, &r).expect("encoding into a String");
    to_text_format(&out)
}

/// Turns `prometheus-client`'s OpenMetrics output into the classic text format (0.0.4) that
/// node_exporter's textfile collector and every Prometheus read: a counter's family is named
/// with its `_total` suffix (OpenMetrics names it without), no `# EOF`, no empty `{}`.
/// Only what this module emits (gauges and counters, no exemplars, no `_created`) is handled.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{p}{name}{suffix} {tail}"));
            }
            None => out.push_str(&line.replacen("{} ", " ", 1)),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_their_total_suffix_in_the_text_format() {
        let om = "# HELP a_b Help.\n# TYPE a_b counter\na_b_total{c=\"x\"} 2.0\n# HELP g Gauge.\n# TYPE g gauge\ng{} 1.0\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP a_b_total Help.\n# TYPE a_b_total counter\na_b_total{c=\"x\"} 2.0\n# HELP g Gauge.\n# TYPE g gauge\ng 1.0\n"
        );
    }

    #[test]
    fn an_unreadable_repository_exports_up_0_with_the_reason_and_nothing_else_from_it() {
        let inputs = Inputs {
            repo: Some(Err("storage: connection refused\nretry".into())),
            cluster: "main".into(),
            ..Default::default()
        };
        let text = render(&inputs);
        assert!(
            text.contains("pgcairn_up{reason=\"storage: connection refused retry\"} 0.0"),
            "{text}"
        );
        assert!(!text.contains("pgcairn_backups"), "{text}");
        assert!(!text.contains("pgcairn_repository_bytes"), "{text}");
    }
}

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(300).collect()
}

fn cluster_metrics(r: &mut Registry, snap: &Snapshot, now: f64) {
    let updated = gauge(
        r,
        "pgcairn_status_updated_timestamp_seconds",
        "Unix time a command last updated the cluster's status object",
    );
    let last_ok = gauge(
        r,
        "pgcairn_backup_last_success_timestamp_seconds",
        "Unix time the last successful backup of this type finished",
    );
    let last_dur = gauge(
        r,
        "pgcairn_backup_last_duration_seconds",
        "Wall time of the last successful backup",
    );
    let last_bytes = gauge(r, "pgcairn_backup_last_bytes", "Bytes of the last successful backup: read from the data directory, new (plaintext of blocks stored for the first time), stored (compressed and sealed bytes added)");
    let backups = gauge(
        r,
        "pgcairn_backups",
        "Backups the repository holds for the cluster",
    );
    let wal_newest = gauge(
        r,
        "pgcairn_wal_archived_newest_timestamp_seconds",
        "Unix time of the end of the newest archived WAL segment (when PostgreSQL last wrote it)",
    );
    let rpo = gauge(r, "pgcairn_rpo_seconds", "Age of the newest archived WAL: data written since would be lost if the server were lost now");
    let wal_lsn = gauge(
        r,
        "pgcairn_wal_archived_newest_lsn_bytes",
        "End LSN of the newest archived WAL segment, as a byte position",
    );
    let dropped = counter(
        r,
        "pgcairn_wal_dropped_segments",
        "Segments the asynchronous pusher acknowledged without archiving them (archive.queue_max)",
    );
    let win_start = gauge(
        r,
        "pgcairn_recoverable_window_start_timestamp_seconds",
        "Earliest recovery target: the oldest backup's consistency point",
    );
    let win_end = gauge(r, "pgcairn_recoverable_window_end_timestamp_seconds", "Latest recovery target: the end of the newest archived WAL (continuity is checked by verify)");
    let drill_ts = gauge(
        r,
        "pgcairn_drill_last_timestamp_seconds",
        "Unix time the last drill finished",
    );
    let drill_ok = gauge(
        r,
        "pgcairn_drill_last_success",
        "1 when the last drill passed, else 0",
    );
    let drill_outcome = gauge(r, "pgcairn_drill_last_outcome", "1 for the last drill's outcome: passed, integrity-failed (exit 3), objective-missed (exit 4) or error (exit 1); 0 for the others");
    let drill_mttr = gauge(
        r,
        "pgcairn_drill_last_mttr_seconds",
        "Measured time to recover of the last drill (RTO)",
    );
    let drill_obj = gauge(
        r,
        "pgcairn_drill_mttr_objective_seconds",
        "The MTTR objective (--max-mttr) of the last drill",
    );
    let drill_phase = gauge(
        r,
        "pgcairn_drill_last_phase_seconds",
        "Seconds per phase of the last drill",
    );
    let verify_ts = gauge(
        r,
        "pgcairn_verify_last_timestamp_seconds",
        "Unix time the last verify finished",
    );
    let verify_ok = gauge(
        r,
        "pgcairn_verify_last_success",
        "1 when the last verify found nothing damaged, else 0",
    );
    let verify_problems = gauge(
        r,
        "pgcairn_verify_last_problems",
        "Problems the last verify found",
    );
    let verify_read = gauge(
        r,
        "pgcairn_verify_last_read_data",
        "1 when the last verify read and re-hashed data (--read-data)",
    );
    let expire_ts = gauge(
        r,
        "pgcairn_expire_last_timestamp_seconds",
        "Unix time the last expire finished",
    );
    let recv_ts = gauge(
        r,
        "pgcairn_wal_receiver_report_timestamp_seconds",
        "Unix time a streaming WAL receiver last reported its position",
    );
    let recv_flush = gauge(
        r,
        "pgcairn_wal_receiver_flush_lsn_bytes",
        "Highest LSN a streaming WAL receiver flushed to the repository, as a byte position",
    );
    let recv_lag = gauge(
        r,
        "pgcairn_wal_receiver_lag_bytes",
        "Bytes between the server's WAL position and the receiver's flush position",
    );

    for s in &snap.clusters {
        let c = s.cluster.as_str();
        let cl = [("cluster", c)];
        set(&updated, &cl, s.updated_at.unix_seconds_f64());
        for (kind, at) in &s.last_success_by_type {
            set(
                &last_ok,
                &[("cluster", c), ("type", kind)],
                at.unix_seconds_f64(),
            );
        }
        if let Some(b) = &s.last_backup {
            set(&last_dur, &cl, b.duration_seconds);
            for (kind, v) in [
                ("read", b.bytes_read),
                ("new", b.bytes_new),
                ("stored", b.bytes_stored),
            ] {
                set(&last_bytes, &[("cluster", c), ("kind", kind)], v as f64);
            }
        }
        if let Some(ret) = &s.retained {
            set(&backups, &cl, ret.count as f64);
            if let Some(t) = ret.oldest_stop_time {
                set(&win_start, &cl, t.unix_seconds_f64());
            }
        }
        if let Some(w) = &s.wal {
            let t = w.end_time.unix_seconds_f64();
            set(&wal_newest, &cl, t);
            set(&rpo, &cl, (now - t).max(0.0));
            if s.retained.as_ref().is_some_and(|r| r.count > 0) {
                set(&win_end, &cl, t);
            }
            set(&wal_lsn, &cl, w.end_lsn.0 as f64);
        }
        dropped
            .get_or_create(&labels(&cl))
            .inc_by(s.wal_dropped_total as f64);
        if let Some(d) = &s.drill {
            set(&drill_ts, &cl, d.finished_at.unix_seconds_f64());
            set(&drill_ok, &cl, f64::from(u8::from(d.outcome == "passed")));
            for o in DRILL_OUTCOMES {
                set(
                    &drill_outcome,
                    &[("cluster", c), ("outcome", o)],
                    f64::from(u8::from(d.outcome == o)),
                );
            }
            set(&drill_mttr, &cl, d.mttr_seconds);
            if let Some(m) = d.max_mttr_seconds {
                set(&drill_obj, &cl, m);
            }
            for (phase, secs) in &d.phases {
                set(&drill_phase, &[("cluster", c), ("phase", phase)], *secs);
            }
        }
        if let Some(v) = &s.verify {
            set(&verify_ts, &cl, v.finished_at.unix_seconds_f64());
            set(&verify_ok, &cl, f64::from(u8::from(v.ok)));
            set(&verify_problems, &cl, v.problems as f64);
            set(&verify_read, &cl, f64::from(u8::from(v.read_data)));
        }
        if let Some(e) = &s.expire {
            set(&expire_ts, &cl, e.finished_at.unix_seconds_f64());
        }
        if let Some(rcv) = &s.receiver {
            set(&recv_ts, &cl, rcv.at.unix_seconds_f64());
            set(&recv_flush, &cl, rcv.flush_lsn.0 as f64);
            if let Some(l) = rcv.lag_bytes {
                set(&recv_lag, &cl, l as f64);
            }
        }
    }
}

fn pg_metrics(r: &mut Registry, inputs: &Inputs) {
    let c = inputs.cluster.as_str();
    let cl = [("cluster", c)];
    if let Some(pg) = &inputs.pg {
        let pg_up = gauge(
            r,
            "pgcairn_postgres_up",
            "1 when PostgreSQL (cluster.conninfo) answered; 0 with the reason in a label when not",
        );
        match pg {
            Err(e) => set(&pg_up, &[("cluster", c), ("reason", &one_line(e))], 0.0),
            Ok(a) => {
                set(&pg_up, &cl, 1.0);
                let lag = gauge(r, "pgcairn_wal_archive_lag_bytes", "Bytes of WAL written since the end of the last segment PostgreSQL archived (primary only)");
                if let Some(l) = a.lag_bytes {
                    set(&lag, &cl, l as f64);
                }
                let failed = counter(r, "pgcairn_archiver_failed", "Failed archive_command calls (pg_stat_archiver.failed_count; resets with the statistics)");
                failed
                    .get_or_create(&labels(&cl))
                    .inc_by(a.failed_count as f64);
                let archived = counter(
                    r,
                    "pgcairn_archiver_archived",
                    "Files archived (pg_stat_archiver.archived_count; resets with the statistics)",
                );
                archived
                    .get_or_create(&labels(&cl))
                    .inc_by(a.archived_count as f64);
                let last_failed = gauge(
                    r,
                    "pgcairn_archiver_last_failed_timestamp_seconds",
                    "Unix time of the last failed archive_command",
                );
                if let Some(t) = a.last_failed_time {
                    set(&last_failed, &cl, t);
                }
                let last_archived = gauge(
                    r,
                    "pgcairn_archiver_last_archived_timestamp_seconds",
                    "Unix time of the last successful archive_command",
                );
                if let Some(t) = a.last_archived_time {
                    set(&last_archived, &cl, t);
                }
                let standby = gauge(
                    r,
                    "pgcairn_postgres_in_recovery",
                    "1 when the server is a standby",
                );
                set(&standby, &cl, f64::from(u8::from(a.in_recovery)));
            }
        }
    }
    if let Some(Ok(q)) = &inputs.local {
        let ready = gauge(
            r,
            "pgcairn_wal_ready_segments",
            "WAL files in pg_wal/archive_status waiting to be archived (.ready)",
        );
        set(&ready, &cl, q.ready as f64);
        if let Some(n) = q.async_queued {
            let queued = gauge(
                r,
                "pgcairn_archive_async_queue_segments",
                "WAL files waiting for the asynchronous pusher (.ready without an acknowledgement)",
            );
            set(&queued, &cl, n as f64);
        }
        if let Some(n) = q.async_dropped {
            let dropped = counter(
                r,
                "pgcairn_archive_async_dropped_segments",
                "Segments this host's asynchronous pusher dropped (from its spool directory)",
            );
            dropped.get_or_create(&labels(&cl)).inc_by(n as f64);
        }
    }
}

/// Answers scrapes: keeps the opened repository between them and reopens it after a failure.
#[derive(Debug)]
pub struct Collector {
    settings: Settings,
    repo: Mutex<Option<Repository>>,
}

impl Collector {
    /// A collector for the configured repository and cluster.
    pub fn new(settings: Settings) -> Self {
        Collector {
            settings,
            repo: Mutex::new(None),
        }
    }

    async fn read_repo(&self) -> Result<Snapshot, String> {
        let mut guard = self.repo.lock().await;
        if guard.is_none() {
            *guard = Some(open_repo(&self.settings).await.map_err(|f| f.message)?);
        }
        let repo = guard.as_ref().expect("opened above");
        match metrics::snapshot(repo).await {
            Ok(s) => Ok(s),
            Err(e) => {
                // Reopen next time: the config or key may have changed.
                *guard = None;
                Err(e.to_string())
            }
        }
    }

    /// One scrape.
    pub async fn collect(&self) -> Inputs {
        let started = std::time::Instant::now();
        let s = &self.settings;
        let repo = async {
            match tokio::time::timeout(SCRAPE_TIMEOUT, self.read_repo()).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "reading the status objects took longer than {} s",
                    SCRAPE_TIMEOUT.as_secs()
                )),
            }
        };
        let pg = async {
            if s.conninfo.is_empty() {
                return None;
            }
            Some(
                match tokio::time::timeout(PG_TIMEOUT, metrics::archiver_stats(&s.conninfo)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "PostgreSQL did not answer within {} s",
                        PG_TIMEOUT.as_secs()
                    )),
                },
            )
        };
        let (repo, pg) = tokio::join!(repo, pg);
        let local = s.pgdata.as_deref().map(|pgdata| {
            let spool = s.archive_async.then_some(s.spool_dir.as_path());
            metrics::local_queue(pgdata, &s.cluster, spool).map_err(|e| {
                // The queue metrics are then absent; say why (usually: run as PostgreSQL's user).
                tracing::warn!("cannot read the local archive queue under cluster.pgdata: {e}");
                e.to_string()
            })
        });
        Inputs {
            repo: Some(repo),
            pg,
            local,
            cluster: s.cluster.clone(),
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// `pgcairn metrics`: prints one scrape; exit 1 when the repository could not be read.
pub async fn print(settings: &Settings) -> Result<(), Failure> {
    let inputs = Collector::new(settings.clone()).collect().await;
    print!("{}", render(&inputs));
    match inputs.down_reason() {
        None => Ok(()),
        Some(reason) => Err(Failure::new(
            ExitCode::Failed,
            format!("the repository could not be read (pgcairn_up 0): {reason}"),
        )),
    }
}
