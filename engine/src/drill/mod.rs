//! Restore drills: prove a backup restores, measure how long it takes, and say so in a report.
//!
//! [`run_drill`] restores (any target `restore` accepts) into a fresh directory, starts an
//! ephemeral PostgreSQL on a free port with a private socket directory,
//! `listen_addresses = ''` and `archive_mode = off` (a drill never writes into the repository
//! and cannot be reached from the network), modest memory (`shared_buffers`; connection and worker limits must stay at least the
//! primary's for hot standby), and `recovery_target_action =
//! promote`; waits for recovery; runs the integrity checks; stops the instance and removes it.
//!
//! Checks, each passed/failed/skipped with detail: recovery reached the target (from the
//! server's own "recovery stopping" / "redo done" lines); `amcheck` `bt_index_check` on every
//! B-tree index of every database when the extension is available; every table read in full
//! (page checksum failures surface as errors) with its row count; user SQL checks (each must
//! return true); `pg_checksums --check` on the stopped instance when data checksums are on.
//!
//! Cleanup does not depend on this process surviving: a watchdog (`sh`, in its own process
//! group) stops the instance and removes the directory within a second if the drill process
//! disappears, even by SIGKILL; SIGINT/SIGTERM are handled by the binary calling
//! [`abort_cleanup`].

pub mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use self::report::{Check, DrillReport, Phase, TableRows};
use crate::error::{Error, Result};
use crate::pg::instance::{command_as, free_port, give_to, Instance, PgBinaries};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::{restore, RestoreOptions};

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Restore options (target, backup, jobs, restore_command); `target` is set by the drill.
    pub restore: RestoreOptions,
    /// Working directory (created; removed unless `keep`).
    pub workdir: PathBuf,
    /// Keep the stopped instance and its directory.
    pub keep: bool,
    /// MTTR objective.
    pub max_mttr: Option<Duration>,
    /// User SQL checks; each must return a single true.
    pub check_sql: Vec<String>,
    /// Where the local report files go.
    pub report_dir: PathBuf,
    /// The target as the operator wrote it.
    pub target_label: String,
    /// How long recovery may take.
    pub recovery_timeout: Duration,
}

/// Where the drill wrote its report.
#[derive(Debug, Clone)]
pub struct DrillFiles {
    /// JSON.
    pub json: PathBuf,
    /// Markdown.
    pub markdown: PathBuf,
    /// HTML.
    pub html: PathBuf,
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidInput(format!("drill task failed: {e}")))
}

/// Stops a drill instance left in `workdir` and removes the directory (signal handlers).
pub fn abort_cleanup(workdir: &Path, keep: bool) {
    let datadir = workdir.join("pgdata");
    if datadir.join("postmaster.pid").exists() {
        if let Ok(bin) = PgBinaries::find() {
            let owner = owner_of(&datadir);
            let mut c = command_as(owner.as_deref(), &bin.program("pg_ctl"));
            c.arg("-D")
                .arg(&datadir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = c.status();
        }
    }
    if !keep {
        let _ = std::fs::remove_dir_all(workdir);
    } else if crate::restore::is_incomplete(&datadir) {
        eprintln!(
            "drill stopped during its restore: {}",
            crate::restore::incomplete_hint(&datadir)
        );
    }
}

/// The OS user to run PostgreSQL as: the data directory's owner, when we are root.
fn owner_of(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if crate::pg::instance::current_uid() != 0 {
        return None;
    }
    let uid = std::fs::metadata(dir).ok()?.uid();
    let out = Command::new("id")
        .arg("-nu")
        .arg(uid.to_string())
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!name.is_empty() && name != "root")
        .then_some(name)
        .or(Some("postgres".into()))
}

/// Starts a watchdog that cleans up if `pid` (this process) disappears.
fn spawn_watchdog(
    workdir: &Path,
    datadir: &Path,
    run_as: Option<&str>,
    bin: &PgBinaries,
    keep: bool,
) -> Option<Child> {
    let pg_ctl = bin.program("pg_ctl");
    let stop = match run_as {
        Some(u) => format!(
            "runuser -u {u} -- '{}' -D '{}' -m immediate -w stop",
            pg_ctl.display(),
            datadir.display()
        ),
        None => format!(
            "'{}' -D '{}' -m immediate -w stop",
            pg_ctl.display(),
            datadir.display()
        ),
    };
    let remove = if keep {
        String::new()
    } else {
        format!("; rm -rf '{}'", workdir.display())
    };
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1{remove}",
        std::process::id()
    );
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: if ok { "passed" } else { "failed" }.into(),
        detail: detail.into(),
    }
}

fn skipped(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: "skipped".into(),
        detail: detail.into(),
    }
}

/// Age of the newest archived WAL of the cluster (RPO signal).
async fn newest_wal_age(repo: &Repository, cluster: &str) -> Option<f64> {
    let objects = repo
        .storage()
        .list(&crate::repo::layout::wal_pointer_prefix(cluster))
        .await
        .ok()?;
    let newest = objects
        .iter()
        .filter_map(|o| crate::repo::layout::parse_wal_pointer(cluster, o.key.as_str()))
        .filter(|(_, n)| n.has_wal_pages())
        .max_by_key(|(t, n)| (*t, n.to_string()))?;
    let raw = repo
        .storage()
        .get(&crate::repo::layout::wal_pointer(cluster, &newest.1))
        .await
        .ok()?;
    let p: crate::archive::push::WalPointer = serde_json::from_slice(&raw).ok()?;
    let at = time::OffsetDateTime::parse(
        &p.archived_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    Some((now() - at).as_seconds_f64())
}

/// Runs a drill; the report is stored in the repository and written to `report_dir`.
pub async fn run_drill(
    repo: &Repository,
    opts: &DrillOptions,
    progress: &dyn Progress,
) -> Result<(DrillReport, DrillFiles)> {
    let started_at = now();
    let id = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        started_at.year(),
        u8::from(started_at.month()),
        started_at.day(),
        started_at.hour(),
        started_at.minute(),
        started_at.second()
    );
    let cluster = opts.restore.cluster.clone();
    let rpo = newest_wal_age(repo, &cluster).await;
    let datadir = opts.workdir.join("pgdata");
    let socket_dir = opts.workdir.join("socket");
    std::fs::create_dir_all(&socket_dir)
        .map_err(|e| Error::io(format!("creating {}", socket_dir.display()), e))?;
    let mut phases = Vec::new();
    let mut checks = Vec::new();
    let mut row_counts = Vec::new();

    // Preflight: plan and verify without writing. A failure here or in the restore is a
    // drill result (the backup is not restorable), reported like any failed check.
    let t = Instant::now();
    let mut ropts = opts.restore.clone();
    ropts.target = datadir.clone();
    ropts.dry_run = true;
    let planned = match restore(repo, &ropts, progress).await {
        Ok(p) => p,
        Err(e) => return finish_failed(repo, opts, id, started_at, rpo, "preflight", t, e).await,
    };
    phases.push(Phase {
        name: "preflight".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!(
            "backup {} intact; WAL {} .. {} continuous",
            planned.plan.backup_id, planned.plan.first_wal, planned.plan.last_wal
        ),
    });

    // Restore.
    let t = Instant::now();
    ropts.dry_run = false;
    ropts.target_action = Some("promote".into());
    let restored = match restore(repo, &ropts, progress).await {
        Ok(r) => r,
        Err(e) => {
            let e = Error::InvalidInput(format!("backup {}: {e}", planned.plan.backup_id));
            return finish_failed(repo, opts, id, started_at, rpo, "restore", t, e).await;
        }
    };
    let secs = t.elapsed().as_secs_f64();
    phases.push(Phase {
        name: "restore".into(),
        seconds: secs,
        detail: format!(
            "{} files, {:.1} MiB, {:.1} MB/s",
            restored.files,
            restored.bytes as f64 / 1048576.0,
            restored.bytes as f64 / 1e6 / secs.max(1e-3)
        ),
    });

    // An ephemeral instance: private socket, no network, no archiving, modest memory.
    let bin = PgBinaries::find()?;
    let run_as = owner_of(&datadir);
    give_to(run_as.as_deref(), &socket_dir)?;
    let drill_conf = "\n# pgcairn drill overrides\narchive_mode = 'off'\nshared_buffers = '64MB'\nhot_standby = 'on'\nlogging_collector = 'off'\n";
    let auto = datadir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(drill_conf);
    std::fs::write(&auto, text).map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    let instance = Instance::new(
        bin.clone(),
        datadir.clone(),
        socket_dir.clone(),
        free_port()?,
        run_as.clone(),
    );
    let mut watchdog = spawn_watchdog(&opts.workdir, &datadir, run_as.as_deref(), &bin, opts.keep);

    let outcome = run_instance(&instance, opts, &mut phases, &mut checks, &mut row_counts).await;
    // Stop (the checks already did, unless one failed early) and clean up.
    let inst = instance.clone();
    let _ = blocking(move || inst.stop()).await;
    if let Err(e) = &outcome {
        checks.push(check("drill ran", false, e.to_string()));
    }
    if let Some(w) = watchdog.as_mut() {
        let _ = w.kill();
        let _ = w.wait();
    }
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.workdir);
    }

    let mttr: f64 = phases
        .iter()
        .filter(|p| {
            matches!(
                p.name.as_str(),
                "preflight" | "restore" | "startup" | "replay"
            )
        })
        .map(|p| p.seconds)
        .sum();
    let total: f64 = phases.iter().map(|p| p.seconds).sum();
    phases.push(Phase {
        name: "total".into(),
        seconds: total,
        detail: format!("MTTR {mttr:.1} s (preflight + restore + startup + replay)"),
    });
    let failed: Vec<&Check> = checks.iter().filter(|c| c.status == "failed").collect();
    let (outcome_name, summary) = if !failed.is_empty() {
        (
            "integrity-failed".to_string(),
            format!(
                "{} check(s) failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else if let Some(max) = opts.max_mttr.filter(|m| mttr > m.as_secs_f64()) {
        (
            "objective-missed".to_string(),
            format!(
                "MTTR {mttr:.1} s exceeds the objective {:.0} s",
                max.as_secs_f64()
            ),
        )
    } else {
        (
            "passed".to_string(),
            format!("all checks passed; MTTR {mttr:.1} s"),
        )
    };
    let report = DrillReport {
        id,
        cluster: cluster.clone(),
        started_at: rfc3339(started_at),
        finished_at: rfc3339(now()),
        backup_id: planned.plan.backup_id.clone(),
        backup_reason: planned.plan.reason.clone(),
        target: opts.target_label.clone(),
        phases,
        mttr_seconds: mttr,
        max_mttr_seconds: opts.max_mttr.map(|d| d.as_secs_f64()),
        restored_bytes: restored.bytes,
        wal_segments: planned.plan.wal_segments,
        newest_wal_age_seconds: rpo,
        checks,
        row_counts,
        outcome: outcome_name,
        summary,
    };
    let files = publish(repo, opts, &report).await?;
    Ok((report, files))
}

/// Stores the report in the repository and writes JSON, Markdown and HTML locally.
async fn publish(
    repo: &Repository,
    opts: &DrillOptions,
    report: &DrillReport,
) -> Result<DrillFiles> {
    report::store(repo, report).await?;
    let history = report::history(repo, &report.cluster)
        .await
        .unwrap_or_else(|_| vec![report.clone()]);
    std::fs::create_dir_all(&opts.report_dir)
        .map_err(|e| Error::io(format!("creating {}", opts.report_dir.display()), e))?;
    let base = opts
        .report_dir
        .join(format!("drill-{}-{}", report.cluster, report.id));
    let files = DrillFiles {
        json: base.with_extension("json"),
        markdown: base.with_extension("md"),
        html: base.with_extension("html"),
    };
    let write = |p: &Path, body: &str| {
        std::fs::write(p, body).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    write(
        &files.json,
        &serde_json::to_string_pretty(report).expect("JSON"),
    )?;
    write(&files.markdown, &report::markdown(report))?;
    write(&files.html, &report::html(report, &history))?;
    Ok(files)
}

/// A drill that could not restore: the report says where and why.
#[allow(clippy::too_many_arguments)]
async fn finish_failed(
    repo: &Repository,
    opts: &DrillOptions,
    id: String,
    started_at: time::OffsetDateTime,
    rpo: Option<f64>,
    phase: &str,
    t: Instant,
    e: Error,
) -> Result<(DrillReport, DrillFiles)> {
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.workdir);
    }
    let report = DrillReport {
        id,
        cluster: opts.restore.cluster.clone(),
        started_at: rfc3339(started_at),
        finished_at: rfc3339(now()),
        backup_id: opts.restore.backup.clone().unwrap_or_default(),
        backup_reason: String::new(),
        target: opts.target_label.clone(),
        phases: vec![Phase {
            name: phase.into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: "failed".into(),
        }],
        mttr_seconds: t.elapsed().as_secs_f64(),
        max_mttr_seconds: opts.max_mttr.map(|d| d.as_secs_f64()),
        restored_bytes: 0,
        wal_segments: 0,
        newest_wal_age_seconds: rpo,
        checks: vec![check(phase, false, e.to_string())],
        row_counts: Vec::new(),
        outcome: "integrity-failed".into(),
        summary: format!("{phase} failed: {e}"),
    };
    let files = publish(repo, opts, &report).await?;
    Ok((report, files))
}

/// Starts the instance, waits for recovery, runs the checks, stops it.
async fn run_instance(
    instance: &Instance,
    opts: &DrillOptions,
    phases: &mut Vec<Phase>,
    checks: &mut Vec<Check>,
    row_counts: &mut Vec<TableRows>,
) -> Result<()> {
    let t = Instant::now();
    let inst = instance.clone();
    let started = blocking(move || inst.start()).await?;
    let log_path = instance.datadir.join("pgcairn-server.log");
    if let Err(e) = started {
        phases.push(Phase {
            name: "startup".into(),
            seconds: t.elapsed().as_secs_f64(),
            detail: "failed".into(),
        });
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let reason = log
            .lines()
            .rfind(|l| l.contains("FATAL"))
            .unwrap_or("")
            .to_string();
        checks.push(check(
            "recovery reached the target",
            false,
            format!("PostgreSQL did not start: {reason} ({e})"),
        ));
        return Ok(());
    }
    phases.push(Phase {
        name: "startup".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: "until the first accepted connection".into(),
    });
    let t = Instant::now();
    let deadline = Instant::now() + opts.recovery_timeout;
    loop {
        let inst = instance.clone();
        let in_recovery =
            blocking(move || inst.psql("postgres", "select pg_is_in_recovery()")).await??;
        if in_recovery == "f" {
            break;
        }
        if Instant::now() > deadline {
            checks.push(check(
                "recovery reached the target",
                false,
                format!(
                    "still recovering after {}s",
                    opts.recovery_timeout.as_secs()
                ),
            ));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phases.push(Phase {
        name: "replay".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail:
            "from the first connection to the end of recovery (WAL fetched through archive-get)"
                .into(),
    });

    let t = Instant::now();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    checks.push(target_check(&log, &opts.restore.target_spec));
    let inst = instance.clone();
    let check_sql = opts.check_sql.clone();
    let (mut found_checks, found_rows, checksums_on) =
        blocking(move || in_instance_checks(&inst, &check_sql)).await??;
    checks.append(&mut found_checks);
    row_counts.extend(found_rows);
    let inst = instance.clone();
    blocking(move || inst.stop()).await??;
    if checksums_on {
        let mut c = command_as(
            instance.run_as.as_deref(),
            &instance.bin.program("pg_checksums"),
        );
        c.arg("--check").arg("-D").arg(&instance.datadir);
        let out = blocking(move || c.output())
            .await?
            .map_err(|e| Error::io("running pg_checksums", e))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: String = text
            .lines()
            .filter(|l| {
                l.contains("Bad checksums") || l.contains("Blocks scanned") || l.contains("error")
            })
            .collect::<Vec<_>>()
            .join("; ");
        checks.push(check("pg_checksums --check", out.status.success(), summary));
    } else {
        checks.push(skipped(
            "pg_checksums --check",
            "data checksums are off in this cluster",
        ));
    }
    phases.push(Phase {
        name: "checks".into(),
        seconds: t.elapsed().as_secs_f64(),
        detail: format!("{} checks", checks.len()),
    });
    Ok(())
}

/// Did recovery stop where it was asked to? Read from the server's own log lines.
fn target_check(log: &str, target: &crate::recovery::Target) -> Check {
    use crate::recovery::Target;
    let stopping = log
        .lines()
        .find(|l| l.contains("recovery stopping"))
        .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_string());
    let redo_done = log
        .lines()
        .find(|l| l.contains("redo done at"))
        .map(|l| l.split("LOG:").nth(1).unwrap_or(l).trim().to_string());
    let last_tx = log
        .lines()
        .rfind(|l| l.contains("last completed transaction was at log time"))
        .map(|l| l.split("log time ").nth(1).unwrap_or("").trim().to_string());
    match target {
        Target::EndOfArchive => check(
            "recovery reached the target",
            redo_done.is_some(),
            format!(
                "end of archive: {}; last transaction {}",
                redo_done.unwrap_or_else(|| "no redo".into()),
                last_tx.unwrap_or_else(|| "none".into())
            ),
        ),
        Target::Immediate => check(
            "recovery reached the target",
            log.contains("consistent recovery state reached"),
            "stopped at the backup's consistency point",
        ),
        Target::Time(t) => {
            let ok = stopping.is_some()
                && last_tx
                    .as_deref()
                    .and_then(|s| crate::recovery::parse_target_time(s).ok())
                    .is_none_or(|tx| tx <= *t);
            check(
                "recovery reached the target",
                ok,
                format!(
                    "{}; last replayed transaction {}",
                    stopping.unwrap_or_else(|| "no recovery stop recorded".into()),
                    last_tx.unwrap_or_else(|| "none".into())
                ),
            )
        }
        _ => check(
            "recovery reached the target",
            stopping.is_some(),
            stopping.unwrap_or_else(|| {
                "no \"recovery stopping\" line: the target was not reached".into()
            }),
        ),
    }
}

type InstanceChecks = (Vec<Check>, Vec<TableRows>, bool);

fn in_instance_checks(inst: &Instance, check_sql: &[String]) -> Result<InstanceChecks> {
    let mut checks = Vec::new();
    let mut rows = Vec::new();
    let dbs = inst.psql(
        "postgres",
        "select datname from pg_database where datallowconn and not datistemplate order by 1",
    )?;
    let amcheck_available = inst.psql(
        "postgres",
        "select count(*) from pg_available_extensions where name = 'amcheck'",
    )? == "1";
    let (mut indexes, mut index_failures) = (0u64, Vec::new());
    let (mut tables, mut table_failures) = (0u64, Vec::new());
    for db in dbs.lines().filter(|l| !l.is_empty()) {
        if amcheck_available {
            let r = inst.psql(db, "create extension if not exists amcheck").and_then(|_| {
                inst.psql(
                    db,
                    "select count(*) from (select bt_index_check(c.oid) from pg_index i join pg_class c on c.oid = i.indexrelid \
                     join pg_am a on a.oid = c.relam where a.amname = 'btree' and c.relpersistence <> 't' and i.indisvalid) s",
                )
            });
            match r {
                Ok(n) => indexes += n.parse::<u64>().unwrap_or(0),
                Err(e) => index_failures.push(format!("{db}: {e}")),
            }
        }
        let list = inst.psql(
            db,
            "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'm') and c.relpersistence <> 't' order by 1",
        )?;
        for t in list.lines().filter(|l| !l.is_empty()) {
            tables += 1;
            match inst.psql(db, &format!("select count(*) from {t}")) {
                Ok(n) => rows.push(TableRows {
                    table: format!("{db}.{t}"),
                    rows: n.parse().unwrap_or(-1),
                }),
                Err(e) => table_failures.push(format!("{db}.{t}: {e}")),
            }
        }
    }
    if amcheck_available {
        checks.push(check(
            "amcheck bt_index_check",
            index_failures.is_empty(),
            if index_failures.is_empty() {
                format!("{indexes} B-tree indexes verified")
            } else {
                index_failures.join("; ")
            },
        ));
    } else {
        checks.push(skipped(
            "amcheck bt_index_check",
            "the amcheck extension is not installed on this server",
        ));
    }
    checks.push(check(
        "every table read in full",
        table_failures.is_empty(),
        if table_failures.is_empty() {
            format!("{tables} tables read")
        } else {
            table_failures.join("; ")
        },
    ));
    for (i, sql) in check_sql.iter().enumerate() {
        let name = format!(
            "check-sql #{}: {}",
            i + 1,
            sql.chars().take(60).collect::<String>()
        );
        match inst.psql("postgres", sql) {
            Ok(v) if v == "t" => checks.push(check(&name, true, "returned true")),
            Ok(v) => checks.push(check(
                &name,
                false,
                format!("returned {v:?}, expected a single true"),
            )),
            Err(e) => checks.push(check(&name, false, e.to_string())),
        }
    }
    let checksums_on = inst.psql("postgres", "show data_checksums")? == "on";
    Ok((checks, rows, checksums_on))
}
