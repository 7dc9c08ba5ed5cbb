//! Restore drills end to end: a passing drill and its reports (JSON, Markdown, HTML rendered
//! in headless Chromium), drills that fail for the right reason with the right exit code,
//! and drills killed mid-run leaving no PostgreSQL behind.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

/// A cluster with a full backup and archived WAL after it.
fn prepared() -> (TestEnv, Instance) {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    backup_json(&env, &["--type", "full"]);
    pg.pgbench(&["-T", "2", "-c", "2"]).unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    (env, pg)
}

fn drill(env: &TestEnv, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let reports = env.path().join("reports").display().to_string();
    let mut args = vec![
        "--progress",
        "never",
        "drill",
        "--output",
        "json",
        "--report-dir",
        reports.as_str(),
    ];
    args.extend_from_slice(extra);
    let out = env.pgcairn(&args);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code(), doc)
}

fn status_of<'a>(doc: &'a serde_json::Value, prefix: &str) -> &'a str {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no check {prefix}: {doc}"))["status"]
        .as_str()
        .unwrap()
}

fn postgres_running_in(dir: &Path) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains("postgres") && l.contains(&dir.display().to_string()))
}

#[test]
fn a_drill_passes_and_reports_every_phase_and_check() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let checks = env.path().join("checks.sql");
    std::fs::write(
        &checks,
        "select count(*) = 200000 from pgbench_accounts;\nselect true;\n",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let work = env.path().join("drillwork").display().to_string();
    let (code, doc) = drill(
        &env,
        &[
            "--check-sql",
            &checks.display().to_string(),
            "--max-mttr",
            "10m",
            "--workdir",
            &work,
        ],
    );
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["outcome"], "passed");
    let phases: Vec<&str> = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "preflight",
            "restore",
            "startup",
            "replay",
            "checks",
            "total"
        ]
    );
    for c in [
        "recovery reached the target",
        "amcheck bt_index_check",
        "every table read in full",
        "pg_checksums --check",
        "check-sql #1",
        "check-sql #2",
    ] {
        assert_eq!(status_of(&doc, c), "passed", "{c}: {doc:#}");
    }
    let accounts = doc["row_counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "postgres.public.pgbench_accounts")
        .unwrap();
    assert_eq!(accounts["rows"], 200000);
    assert!(doc["mttr_seconds"].as_f64().unwrap() > 0.0);
    assert!(doc["newest_wal_age_seconds"].as_f64().unwrap() >= 0.0);

    // The reports, and the history.
    let id = doc["id"].as_str().unwrap();
    let html = env.path().join(format!("reports/drill-main-{id}.html"));
    assert!(env
        .path()
        .join(format!("reports/drill-main-{id}.md"))
        .exists());
    let (code2, second) = drill(&env, &["--workdir", &work]);
    assert_eq!(code2, Some(0), "{second:#}");
    let hist = env.pgcairn(&["drill", "--history"]);
    assert_success(&hist, "drill --history");
    let listed = String::from_utf8_lossy(&hist.stdout)
        .lines()
        .filter(|l| l.starts_with("drill "))
        .count();
    assert_eq!(listed, 2, "{}", String::from_utf8_lossy(&hist.stdout));
    let info = env.pgcairn(&["info", "--output", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["clusters"][0]["last_drill"]["outcome"], "passed",
        "info shows the last drill"
    );

    // The HTML page renders in headless Chromium with its chart (two drills: two points).
    let html2 = env.path().join(format!(
        "reports/drill-main-{}.html",
        second["id"].as_str().unwrap()
    ));
    assert!(html.exists() && html2.exists());
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok());
    let chromium = chromium.expect("chromium is installed by scripts/install-deps.sh");
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let dom = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html2.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains("id=\"mttr-chart\""), "chart rendered: {dom}");
    assert_eq!(
        dom.matches("class=\"drill-point\"").count(),
        2,
        "one point per drill"
    );
    assert!(dom.contains("PASSED"));
    let png = env.path().join("report.png");
    let shot = Command::new(chromium)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=900,1200")
        .arg(format!("file://{}", html2.display()))
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "a rendered page, not a blank one"
    );
    if let Ok(dir) = std::env::var("PGCAIRN_TEST_SCREENSHOT_DIR") {
        let _ = std::fs::copy(&png, Path::new(&dir).join("drill-report.png"));
    }
    assert!(
        !postgres_running_in(Path::new(&work)),
        "no drill instance left running"
    );
    assert!(!Path::new(&work).exists(), "the drill directory is removed");
}

#[test]
fn drills_fail_for_the_right_reason_with_the_right_exit_code() {
    let (env, pg) = prepared();
    let stop = StopOnDrop(&pg);
    let checks = env.path().join("false.sql");
    std::fs::write(
        &checks,
        "select count(*) = 1 from pgbench_branches where bid > 1000;\n",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let (code, doc) = drill(&env, &["--check-sql", &checks.display().to_string()]);
    assert_eq!(code, Some(3), "{doc:#}");
    assert_eq!(doc["outcome"], "integrity-failed");
    assert_eq!(status_of(&doc, "check-sql #1"), "failed");

    let (code, doc) = drill(&env, &["--max-mttr", "0s"]);
    assert_eq!(code, Some(4), "{doc:#}");
    assert_eq!(doc["outcome"], "objective-missed");

    // A missing WAL segment: the preflight fails and the report names it.
    let seg = pg
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    let lsn_after = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    drop(stop);
    let pointer = env
        .path()
        .join(format!("repo/clusters/main/wal/{}/{seg}", &seg[..8]));
    let saved = std::fs::read(&pointer).unwrap();
    std::fs::remove_file(&pointer).unwrap();
    let (code, doc) = drill(&env, &["--target-lsn", &lsn_after]);
    assert_eq!(code, Some(3), "{doc:#}");
    assert!(
        doc["summary"].as_str().unwrap().contains(&seg),
        "names the missing segment: {doc:#}"
    );
    std::fs::write(&pointer, saved).unwrap();

    // A corrupted block in a pack: the restore fails, naming the backup.
    let backup = {
        let info = env.pgcairn(&["info", "--output", "json"]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        info["clusters"][0]["backups"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let clean = env.pgcairn(&["verify", "--read-data"]);
    assert_success(&clean, "verify --read-data on an intact repository");
    let again = env.pgcairn(&["verify", "--read-data", "--output", "json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["packs_read"], 0,
        "packs verified before are skipped: {again}"
    );
    assert!(again["packs_skipped"].as_u64().unwrap() > 0);
    let packs = env.path().join("repo/packs");
    let pack = std::fs::read_dir(&packs)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&pack, &bytes).unwrap();
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, Some(3), "{doc:#}");
    assert!(
        doc["summary"].as_str().unwrap().contains(&backup),
        "names the backup: {doc:#}"
    );
}

#[test]
fn a_drill_killed_mid_run_leaves_no_postgres_behind() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    for signal in ["TERM", "KILL"] {
        let workdir = env.path().join(format!("drill-{signal}"));
        let mut c = Command::new(&env.bin);
        if env.run_as.is_some() {
            let meta = std::fs::metadata(env.path()).unwrap();
            c.uid(meta.uid()).gid(meta.gid());
        }
        let mut child = c
            .args([
                "--config",
                &env.config.display().to_string(),
                "--progress",
                "never",
                "drill",
                "--workdir",
                &workdir.display().to_string(),
            ])
            .args([
                "--report-dir",
                &env.path().join("reports").display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the ephemeral instance is up, then kill the drill.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !workdir.join("pgdata/postmaster.pid").exists() {
            assert!(
                Instant::now() < deadline,
                "the drill never started PostgreSQL"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the drill ended before it could be killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(15);
        while postgres_running_in(&workdir) || workdir.exists() {
            assert!(
                Instant::now() < deadline,
                "SIG{signal}: PostgreSQL still running or {} left behind",
                workdir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
