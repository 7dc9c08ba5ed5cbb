//! Monitoring end to end: a real Prometheus (Debian's package) scrapes `pgcairn serve` on
//! loopback after a backup and a drill and its query API returns what they did; the shipped
//! alert rules, loaded by that Prometheus, fire for a stale backup; a repository that goes away
//! makes the scrape say `pgcairn_up 0` and drops the repository's series instead of exporting
//! zeros. The rules file passes `promtool check rules` and its `promtool test rules` unit
//! tests, and `pgcairn metrics` output passes `promtool check metrics`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.is_file(),
        "{} missing: run scripts/install-deps.sh (Debian package prometheus)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills and reaps a child process when dropped, with its process group when it leads one
/// (`pgcairn serve` runs under `runuser` as root: killing `runuser` alone leaves it running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET url`: (HTTP status, body).
fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A Prometheus instant query: the result vector.
fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let doc = query_doc(prom, q);
    doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A Prometheus instant query: the API's whole answer.
fn query_doc(prom: &str, q: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "20", "-G"])
        .arg(format!("http://{prom}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={q}"))
        .output()
        .expect("run curl");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// Polls `q` until `ok` accepts its result.
fn wait_query(
    prom: &str,
    q: &str,
    what: &str,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = query(prom, q);
        if ok(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: {q} gives {got:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn start_prometheus(dir: &Path, target: &str, rules: &Path) -> (Reaped, String) {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: pgcairn\n    scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&format!("http://{addr}/-/ready")).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "prometheus did not become ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (Reaped(child), addr)
}

#[test]
fn shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = monitoring_dir();
    for args in [
        vec!["check", "rules", "pgcairn-rules.yml"],
        vec!["test", "rules", "pgcairn-rules.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert links its runbook, and every runbook it links exists.
    let rules = std::fs::read_to_string(dir.join("pgcairn-rules.yml")).unwrap();
    let alerts = rules.matches("- alert:").count();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert_eq!(links.len(), alerts, "one runbook_url per alert");
    for link in links {
        let file = link.rsplit('/').next().unwrap();
        assert!(
            dir.join("../docs/runbooks").join(file).is_file(),
            "runbook {file} linked from the rules is missing in docs/runbooks"
        );
    }
}

#[test]
fn prometheus_scrapes_backup_and_drill_and_sees_an_unreadable_repository() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.started_pgbench_cluster("pg");
    let _stop = StopOnDrop(&pg);
    let backup = backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let drill = env.drill(&["--max-mttr", "1h"]);
    assert_eq!(drill.status.code(), Some(0), "drill: {}", stderr(&drill));
    let drill: serde_json::Value = serde_json::from_slice(&drill.stdout).unwrap();

    // `pgcairn metrics` (the textfile collector's input) is valid exposition format.
    let once = env.pgcairn(&["metrics"]);
    assert_success(&once, "pgcairn metrics");
    let text = String::from_utf8_lossy(&once.stdout).to_string();
    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let serve_addr = format!("127.0.0.1:{}", free_port());
    let serve = env
        .pgcairn_command(&["serve", "--listen", &serve_addr])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Reaped(serve);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("http://{serve_addr}/healthz")).0 != 200 {
        assert!(Instant::now() < deadline, "pgcairn serve did not answer");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The shipped rules, with the stale-backup threshold at 3 s instead of 26 h so it fires
    // during the test; the expression itself is the shipped one.
    let shipped = std::fs::read_to_string(monitoring_dir().join("pgcairn-rules.yml")).unwrap();
    let fast = shipped.replacen(
        "(pgcairn_backup_last_success_timestamp_seconds) > 26 * 3600\n        for: 10m",
        "(pgcairn_backup_last_success_timestamp_seconds) > 3\n        for: 0s",
        1,
    );
    assert_ne!(fast, shipped, "the stale-backup rule changed shape");
    let prom_dir = env.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let rules = prom_dir.join("rules.yml");
    std::fs::write(&rules, fast).unwrap();
    let (_prom, prom) = start_prometheus(&prom_dir, &serve_addr, &rules);

    let one = |q: &str| {
        let got = wait_query(&prom, q, q, |r| r.len() == 1);
        value(&got[0])
    };
    assert_eq!(one("pgcairn_up"), 1.0);
    assert_eq!(one(r#"pgcairn_backups{cluster="main"}"#), 1.0);
    let stats = &backup["stats"];
    assert_eq!(
        one(r#"pgcairn_backup_last_bytes{cluster="main",kind="read"}"#),
        stats["bytes_read"].as_f64().unwrap(),
        "{backup}"
    );
    assert_eq!(
        one(r#"pgcairn_backup_last_bytes{cluster="main",kind="stored"}"#),
        stats["stored_new"].as_f64().unwrap()
    );
    assert!(one(r#"pgcairn_backup_last_success_timestamp_seconds{type="full"}"#) > 1.7e9);
    assert!(one(r#"pgcairn_backup_last_duration_seconds{cluster="main"}"#) > 0.0);
    assert_eq!(one(r#"pgcairn_drill_last_success{cluster="main"}"#), 1.0);
    assert_eq!(
        one(r#"pgcairn_drill_last_outcome{cluster="main",outcome="passed"}"#),
        1.0
    );
    let mttr = one(r#"pgcairn_drill_last_mttr_seconds{cluster="main"}"#);
    assert!(
        (mttr - drill["mttr_seconds"].as_f64().unwrap()).abs() < 1e-6,
        "MTTR {mttr} vs the drill's report {drill}"
    );
    assert_eq!(
        one(r#"pgcairn_drill_mttr_objective_seconds{cluster="main"}"#),
        3600.0
    );
    assert!(one(r#"pgcairn_drill_last_phase_seconds{cluster="main",phase="restore"}"#) > 0.0);
    // The newest archived WAL: recent, so a small RPO; the window ends there.
    let rpo = one(r#"pgcairn_rpo_seconds{cluster="main"}"#);
    assert!((0.0..600.0).contains(&rpo), "RPO {rpo}");
    let start = one(r#"pgcairn_recoverable_window_start_timestamp_seconds{cluster="main"}"#);
    let end = one(r#"pgcairn_recoverable_window_end_timestamp_seconds{cluster="main"}"#);
    assert!(start <= end, "window {start} .. {end}");
    // PostgreSQL's side: reachable, nothing failed, little WAL waiting.
    assert_eq!(one(r#"pgcairn_postgres_up{cluster="main"}"#), 1.0);
    assert_eq!(one(r#"pgcairn_archiver_failed_total{cluster="main"}"#), 0.0);
    assert!(one(r#"pgcairn_wal_archive_lag_bytes{cluster="main"}"#) < 64.0 * 1048576.0);
    // The stale-backup alert fires in this Prometheus; the drill alerts do not.
    wait_query(
        &prom,
        r#"ALERTS{alertname="PgcairnBackupTooOld",alertstate="firing",cluster="main"}"#,
        "stale backup alert",
        |r| r.len() == 1,
    );
    assert!(query(&prom, r#"ALERTS{alertname=~"PgcairnDrill.*"}"#).is_empty());
    // Every query of the shipped Grafana dashboard is valid PromQL for this Prometheus, and
    // the panels about what happened here have data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut with_data = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$cluster", ".*")
                .replace("$instance", ".*");
            let doc = query_doc(&prom, &expr);
            assert_eq!(doc["status"], "success", "{expr}: {doc}");
            if !doc["data"]["result"].as_array().unwrap().is_empty() {
                with_data.push(panel["title"].as_str().unwrap().to_string());
            }
        }
    }
    for title in [
        "RPO (age of newest archived WAL)",
        "Last drill MTTR (RTO)",
        "Time since last successful backup",
        "Drill phases",
        "Last backup bytes",
    ] {
        assert!(
            with_data.iter().any(|t| t == title),
            "{title}: {with_data:?}"
        );
    }

    // The repository goes away: the scrape says so, and its series go stale instead of
    // turning into zeros.
    let repo_dir = env.path().join("repo");
    let moved = env.path().join("repo-moved-away");
    std::fs::rename(&repo_dir, &moved).unwrap();
    let down = wait_query(&prom, "pgcairn_up == 0", "pgcairn_up 0", |r| r.len() == 1);
    let reason = down[0]["metric"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("repository"),
        "reason label says what is wrong: {down:?}"
    );
    wait_query(&prom, r#"pgcairn_backups"#, "no backups series", |r| {
        r.is_empty()
    });
    assert!(query(&prom, r#"pgcairn_drill_last_success"#).is_empty());
    let (code, body) = http_get(&format!("http://{serve_addr}/healthz"));
    assert_eq!(code, 503, "{body}");
    let once = env.pgcairn(&["metrics"]);
    assert_eq!(once.status.code(), Some(1), "{}", stderr(&once));
    assert!(String::from_utf8_lossy(&once.stdout).contains("pgcairn_up{reason="));
    // Back again: up, with the same numbers.
    std::fs::rename(&moved, &repo_dir).unwrap();
    wait_query(
        &prom,
        r#"pgcairn_backups{cluster="main"} == 1"#,
        "back up",
        |r| r.len() == 1,
    );
}
