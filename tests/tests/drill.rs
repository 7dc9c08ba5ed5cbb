//! Restore drills end to end: a passing drill and its reports (JSON, Markdown, HTML rendered
//! in headless Chromium), drills that fail for the right reason with the right exit code,
//! and drills killed mid-run leaving no PostgreSQL behind.

use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

/// Starts `pgcairn drill --workdir WORKDIR` in the background as the environment's user, with
/// the variables `env_vars`, to be killed by the test.
fn spawn_drill(env: &TestEnv, workdir: &Path, env_vars: &[(&str, String)]) -> std::process::Child {
    let mut c = Command::new(&env.bin);
    if env.run_as.is_some() {
        let meta = std::fs::metadata(env.path()).unwrap();
        c.uid(meta.uid()).gid(meta.gid());
    }
    c.envs(env_vars.iter().map(|(k, v)| (*k, v)))
        .args([
            "--config",
            &env.config.display().to_string(),
            "--progress",
            "never",
            "drill",
            "--workdir",
            &workdir.display().to_string(),
            "--report-dir",
            &env.path().join("reports").display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A cluster with a full backup and archived WAL after it.
fn prepared() -> (TestEnv, Instance) {
    prepared_on(Backend::File)
}

/// [`prepared`] with its repository on `backend`.
fn prepared_on(backend: Backend) -> (TestEnv, Instance) {
    let env = TestEnv::new(EnvOptions::new(backend));
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

/// On S3 the repository's place includes its endpoint option: the drill must read its
/// counters from the prefetch area its instance's archive-get used (it once named the area by
/// the URL alone, and reported no WAL fetched at all).
#[test]
fn a_drill_from_s3_counts_the_wal_its_recovery_fetched() {
    if !backends().contains(&Backend::S3) {
        return;
    }
    let (env, pg) = prepared_on(Backend::S3);
    let _stop = StopOnDrop(&pg);
    let (code, doc) = drill(&env, &["--max-mttr", "10m"]);
    assert_eq!(code, Some(0), "{doc:#}");
    let f = &doc["wal_fetch"];
    let calls = f["calls"].as_u64().unwrap_or_else(|| panic!("{doc:#}"));
    assert!(calls >= 1, "the drill's recovery fetched WAL: {f}");
}

fn drill(env: &TestEnv, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    drill_with(env, &[], extra)
}

/// `pgcairn drill --output json ...` with environment variables (TMPDIR), as the fixtures'
/// pgcairn user; its output, whatever it is.
fn drill_output(env: &TestEnv, vars: &[(&str, &Path)], extra: &[&str]) -> std::process::Output {
    let mut c = env.drill_command(extra);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("run pgcairn drill")
}

fn drill_with(
    env: &TestEnv,
    vars: &[(&str, &Path)],
    extra: &[&str],
) -> (Option<i32>, serde_json::Value) {
    let out = drill_output(env, vars, extra);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        )
    });
    (out.status.code(), doc)
}

/// Polls `sql` on `inst` until it returns `want`.
fn wait_for(inst: &Instance, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = inst.psql("postgres", sql).unwrap();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {sql} gives {got}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Entries of a directory.
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn is_root() -> bool {
    pgcairn_engine::pg::instance::current_uid() == 0
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

/// The report's phase named `name`.
fn phase_of<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name}: {doc}"))
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
        "page checksums",
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
    // Each MTTR phase's share of it; WAL replay's share (startup + replay).
    let share = |name: &str| phase_of(&doc, name)["share_of_mttr"].as_f64();
    let shares: Vec<f64> = ["preflight", "restore", "startup", "replay"]
        .iter()
        .map(|n| share(n).unwrap_or_else(|| panic!("{n} has a share: {doc:#}")))
        .collect();
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-6,
        "the MTTR phases' shares add up: {shares:?}"
    );
    assert!(share("checks").is_none() && share("total").is_none());
    let replay_share = doc["replay_share"].as_f64().unwrap();
    assert!(
        (replay_share - shares[2] - shares[3]).abs() < 1e-6 && replay_share > 0.0,
        "{doc:#}"
    );
    // How archive-get served this recovery's segments: from the counters of the drill's own
    // prefetch spool (archive.async is off: recovery prefetches as after a restore), never
    // the production spool.
    assert!(
        !env.path().join("spool/main/prefetch").exists(),
        "a drill leaves the production prefetch spool alone"
    );
    let f = &doc["wal_fetch"];
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k}: {doc:#}"));
    assert!(n("calls") >= 1, "{f}");
    assert_eq!(
        n("calls"),
        n("from_spool") + n("waited") + n("direct") + n("absent"),
        "{f}"
    );
    assert!(f["wait_seconds"].as_f64().unwrap() <= f["total_seconds"].as_f64().unwrap());

    // The reports, and the history.
    let id = doc["id"].as_str().unwrap();
    let html = env.path().join(format!("reports/drill-main-{id}.html"));
    let md =
        std::fs::read_to_string(env.path().join(format!("reports/drill-main-{id}.md"))).unwrap();
    assert!(
        md.contains("share of MTTR")
            && md.contains("of which WAL replay")
            && md.contains("archive-get:"),
        "{md}"
    );
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
        let mut child = spawn_drill(&env, &workdir, &[]);
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
        let deadline = Instant::now() + Duration::from_secs(30);
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

/// Regression (audit issue 13, item 1): with a logical subscription in the backup, a drill's
/// instance started an apply worker that ran START_REPLICATION against the production
/// publisher and advanced its slot; the real subscriber then missed those rows, and the drill
/// passed. Here the subscriber S is paused (subscription disabled) while 100 rows wait in the
/// publisher's slot; a drill of S's backup (taken while the subscription was enabled, and
/// proven to hold it enabled) must leave the slot where it was, and every row must reach S
/// when it resumes.
#[test]
fn a_drill_of_a_subscriber_cannot_consume_the_production_publishers_slot() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    // Production publisher P: another system, not archived here.
    let publisher = env.cluster("publisher");
    publisher
        .configure(&[
            ("wal_level", "logical".into()),
            ("archive_mode", "off".into()),
        ])
        .unwrap();
    publisher.start().unwrap();
    let _stop_p = StopOnDrop(&publisher);
    publisher
        .psql(
            "postgres",
            "create table t (id int primary key, v text); \
             insert into t select g, 'before' from generate_series(1, 10) g; \
             create publication pub for table t",
        )
        .unwrap();

    // Subscriber S, archived into the repository and backed up while subscribed.
    let subscriber = env.cluster("subscriber");
    subscriber.start().unwrap();
    let _stop_s = StopOnDrop(&subscriber);
    env.use_cluster(&subscriber);
    subscriber
        .psql("postgres", "create table t (id int primary key, v text)")
        .unwrap();
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        publisher.socket_dir.display(),
        publisher.port
    );
    subscriber
        .psql(
            "postgres",
            &format!("create subscription sub connection '{conninfo}' publication pub"),
        )
        .unwrap();
    wait_for(&subscriber, "select count(*) from t", "10", "initial copy");
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&subscriber);
    wait_archived(&subscriber, &last, Duration::from_secs(90));

    // S pauses (its WAL from here on is not archived, so the drill's copy has the
    // subscription enabled); 100 rows wait in P's slot.
    subscriber
        .psql("postgres", "alter subscription sub disable")
        .unwrap();
    wait_for(
        &publisher,
        "select count(*) from pg_replication_slots where slot_name = 'sub' and not active",
        "1",
        "the subscriber's walsender stops",
    );
    publisher
        .psql(
            "postgres",
            "insert into t select g, 'while paused' from generate_series(11, 110) g",
        )
        .unwrap();
    let slot = "select confirmed_flush_lsn || ' ' || active from pg_replication_slots where slot_name = 'sub'";
    let before = publisher.psql("postgres", slot).unwrap();

    let checks = env.path().join("subscription.sql");
    std::fs::write(
        &checks,
        "select count(*) = 1 from pg_subscription where subname = 'sub' and subenabled;\n\
         select true from pg_sleep(3);\n",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let (code, doc) = drill(&env, &["--check-sql", &checks.display().to_string()]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(
        status_of(&doc, "isolated from production"),
        "passed",
        "{doc:#}"
    );
    assert_eq!(
        status_of(&doc, "check-sql #1"),
        "passed",
        "the drill's copy holds the enabled subscription: {doc:#}"
    );
    assert_eq!(
        publisher.psql("postgres", slot).unwrap(),
        before,
        "the drill must not move (or use) the publisher's slot"
    );

    // The real subscriber resumes and gets every row.
    subscriber
        .psql("postgres", "alter subscription sub enable")
        .unwrap();
    wait_for(
        &subscriber,
        "select count(*) from t",
        "110",
        "every row reaches the real subscriber",
    );
}

/// A restored pg_hba.conf demanding passwords for local connections made drills fail (the
/// drill connects without one): the drill uses its own pg_hba.conf and pg_ident.conf.
#[test]
fn a_restored_pg_hba_demanding_passwords_does_not_break_the_drill() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t as select g from generate_series(1, 1000) g",
    )
    .unwrap();
    // Production's rules (not reloaded: the running server keeps trusting the fixtures; the
    // backup copies the files).
    std::fs::write(
        pg.datadir.join("pg_hba.conf"),
        "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    std::fs::write(pg.datadir.join("pg_ident.conf"), "prod root postgres\n").unwrap();
    backup_json(&env, &["--type", "full"]);
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(status_of(&doc, "isolated from production"), "passed");
    assert_eq!(status_of(&doc, "every table read in full"), "passed");
}

/// Regression (audit issue 13, item 4): `/tmp/pgcairn-drill-<pid>` was used when another
/// user had created it first, and that user's script ran as `postgres`. The work directory is
/// now a new random name, created exclusively and private; the old names, planted for the
/// next few hundred process ids and writable by their owner, are left alone; a path given
/// with --workdir that exists (a directory, a symlink) is refused.
#[test]
fn the_work_directory_is_new_and_private_never_one_that_existed() {
    use std::os::unix::fs::MetadataExt;
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let tmp = env.private_dir("tmp");
    let drill_uid = std::fs::metadata(&tmp).unwrap().uid();
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // In the order `entries` lists them (by name: pgcairn-drill-1000 before -999).
    let mut traps: Vec<std::path::PathBuf> = (last_pid + 1..last_pid + 400)
        .map(|p| tmp.join(format!("pgcairn-drill-{p}")))
        .collect();
    traps.sort();
    for t in &traps {
        std::fs::create_dir(t).unwrap();
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o777)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(t, Some(65534), Some(65534)).unwrap(); // nobody
        }
    }
    let mut child = env
        .drill_command(&[])
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(
        pid > last_pid && pid + 5 < last_pid + 400,
        "the drill's process id {pid} falls among the planted names"
    );
    // Look at the drill's directory while its instance runs.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = None;
    while seen.is_none() && child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the drill never started PostgreSQL"
        );
        seen = entries(&tmp)
            .into_iter()
            .find(|p| !traps.contains(p) && p.join("pgdata/postmaster.pid").exists())
            .map(|d| {
                let m = std::fs::metadata(&d).unwrap();
                let b = std::fs::metadata(d.join("bin/pgcairn")).unwrap();
                (d, m.mode() & 0o7777, m.uid(), b.mode() & 0o7777)
            });
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    let (dir, mode, uid, bin_mode) = seen.expect("the drill's directory was seen");
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("pgcairn-drill-"), "{name}");
    assert_eq!(mode, 0o700, "the work directory is private");
    assert_eq!(uid, drill_uid, "owned by the user running the drill");
    assert_eq!(bin_mode, 0o755);
    for t in &traps {
        let m = std::fs::symlink_metadata(t).unwrap();
        assert!(
            m.is_dir() && entries(t).is_empty(),
            "{} untouched",
            t.display()
        );
    }
    assert_eq!(entries(&tmp), traps, "the drill's own directory is removed");

    // An explicit --workdir that exists is refused, and left as it was.
    let existing = env.private_dir("existing");
    let out = drill_output(&env, &[], &["--workdir", &existing.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert!(existing.is_dir() && entries(&existing).is_empty());
    let link = env.path().join("link");
    let target = env.path().join("link-target");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = drill_output(&env, &[], &["--workdir", &link.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        !target.exists(),
        "nothing is created through a planted symlink"
    );
}

/// As root, the instance runs as the data directory's owner: it can reach what it needs in
/// the work directory but cannot create, rename or replace anything there, in particular not
/// the pgcairn binary its restore_command runs.
#[test]
fn as_root_the_instance_user_cannot_replace_anything_in_the_work_directory() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("skipping: needs root (the drill runs PostgreSQL as another user)");
        return;
    }
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let pg_uid = std::fs::metadata(env.path()).unwrap().uid();
    let work = env.path().join("rootwork");
    let reports = env.path().join("root-reports");
    let mut child = env
        .root_drill_command(&reports)
        .arg("--workdir")
        .arg(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !work.join("pgdata/postmaster.pid").exists() {
        assert!(
            Instant::now() < deadline,
            "the drill never started PostgreSQL"
        );
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stat = |p: &str| {
        let m = std::fs::symlink_metadata(work.join(p)).unwrap();
        (m.uid(), m.mode() & 0o7777)
    };
    assert_eq!(stat(""), (0, 0o711));
    assert_eq!(stat("bin"), (0, 0o755));
    assert_eq!(stat("bin/pgcairn"), (0, 0o755));
    assert_eq!(stat("conf"), (0, 0o755));
    assert_eq!(stat("conf/pg_hba.conf"), (0, 0o644));
    assert_eq!(stat("pgdata"), (pg_uid, 0o700));
    assert_eq!(stat("socket"), (pg_uid, 0o700));
    let w = work.display();
    for attempt in [
        format!("echo x > {w}/bin/pgcairn"),
        format!("mkdir {w}/planted"),
        format!("mv {w}/bin {w}/old"),
        format!("cp /bin/true {w}/bin/other"),
        format!("echo 'local all all trust' >> {w}/conf/pg_hba.conf"),
    ] {
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", &attempt])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!st.success(), "postgres could: {attempt}");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!work.exists());
}

/// Regression (audit issue 13, item 16): a drill that failed on a usage error left its copy
/// of the binary (100 MB) in /tmp. No way out leaves the work directory behind: usage
/// errors, a failure before the instance starts, a failure after it started; with --keep the
/// directory stays.
#[test]
fn no_exit_path_leaves_the_work_directory_behind() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let tmp = env.private_dir("tmp");
    let vars = [("TMPDIR", tmp.as_path())];
    for args in [
        &["--max-mttr", "soon"][..],
        &["--check-sql", "/nonexistent/checks.sql"][..],
        &["--target-lsn", "not-an-lsn"][..],
    ] {
        let out = drill_output(&env, &vars, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            entries(&tmp).is_empty(),
            "{args:?} left {:?}",
            entries(&tmp)
        );
    }
    // Before the instance starts: a backup that does not exist.
    let (code, doc) = drill_with(&env, &vars, &["--backup", "20200101-000000F"]);
    assert_eq!(code, Some(3), "{doc:#}");
    assert!(entries(&tmp).is_empty(), "left {:?}", entries(&tmp));
    // After it started: a check that fails.
    let checks = env.path().join("false.sql");
    std::fs::write(&checks, "select false;\n").unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let (code, doc) = drill_with(&env, &vars, &["--check-sql", &checks.display().to_string()]);
    assert_eq!(code, Some(3), "{doc:#}");
    assert!(entries(&tmp).is_empty(), "left {:?}", entries(&tmp));
    // --keep keeps the stopped instance.
    let (code, doc) = drill_with(&env, &vars, &["--keep"]);
    assert_eq!(code, Some(0), "{doc:#}");
    let kept = entries(&tmp);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join("pgdata/PG_VERSION").exists());
    assert!(!postgres_running_in(&kept[0]));
    // Startup and replay end at the moments the server's own log gives, not at polls: the
    // replay phase is exactly from "read-only connections" (consistent) to "connections"
    // (promoted), to the log's millisecond.
    let log = std::fs::read_to_string(kept[0].join("pgdata/pgcairn-server.log")).unwrap();
    let moment = |phrase: &str| -> f64 {
        let line = log
            .lines()
            .rev()
            .find(|l| l.ends_with(phrase))
            .unwrap_or_else(|| panic!("no {phrase:?} in the server log: {log}"));
        // "2026-12-06 05:15:29.283 UTC [123] LOG:  ..."
        let hms: Vec<f64> = line[11..23]
            .split(':')
            .map(|x| x.parse().unwrap())
            .collect();
        hms[0] * 3600.0 + hms[1] * 60.0 + hms[2]
    };
    let mut logged =
        moment("ready to accept connections") - moment("ready to accept read-only connections");
    if logged < 0.0 {
        logged += 86400.0; // across midnight
    }
    let replay = phase_of(&doc, "replay")["seconds"].as_f64().unwrap();
    assert!(
        (replay - logged).abs() < 0.0015,
        "replay phase {replay} s, the log's {logged} s: {doc:#}"
    );
}

/// Regression (audit issue 13, item 10): a full TMPDIR was reported as "corrupt object …
/// manifest" and the drill exited 3 (page someone). A TMPDIR the drill cannot write, or one
/// that is full, is an operational error: exit 1 ("could not run"), outcome and check
/// `error`, never an integrity failure.
#[test]
fn a_full_or_unwritable_tmpdir_is_an_error_not_an_integrity_failure() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    // A directory the drill's user cannot write (root's, or ours without write permission).
    let readonly = env.path().join("readonly");
    std::fs::create_dir(&readonly).unwrap();
    let mode = if is_root() { 0o755 } else { 0o555 };
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(mode)).unwrap();
    let work = env.path().join("work-readonly").display().to_string();
    let (code, doc) = drill_with(&env, &[("TMPDIR", &readonly)], &["--workdir", &work]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["outcome"], "error", "{doc:#}");
    assert_eq!(status_of(&doc, "preflight"), "error");
    let summary = doc["summary"].as_str().unwrap();
    assert!(
        summary.contains("TMPDIR") && !summary.contains("corrupt"),
        "{summary}"
    );
    // Without --workdir, the drill cannot even make its directory there: exit 1, named.
    let out = drill_output(&env, &[("TMPDIR", &readonly)], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("TMPDIR"), "{}", stderr(&out));

    // A full TMPDIR: a tiny tmpfs, filled (mounting needs root).
    if is_root() {
        let full = env.path().join("full");
        let _unmount = mount_tmpfs(&full, "64k");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", full.join("fill").display()))
            .stderr(Stdio::null())
            .status();
        let work = env.path().join("work-full").display().to_string();
        let (code, doc) = drill_with(&env, &[("TMPDIR", &full)], &["--workdir", &work]);
        assert_eq!(code, Some(1), "{doc:#}");
        assert_eq!(doc["outcome"], "error", "{doc:#}");
        assert_eq!(status_of(&doc, "preflight"), "error");
        let summary = doc["summary"].as_str().unwrap();
        assert!(!summary.contains("corrupt"), "{summary}");
        assert!(!Path::new(&work).exists(), "the work directory is removed");
    } else {
        eprintln!("skipping the full-TMPDIR half: mounting a tmpfs needs root");
    }
    // The repository's history records them as errors, not failed drills.
    let info = env.pgcairn(&["info", "--output", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["clusters"][0]["last_drill"]["outcome"], "error");
}

/// The other half of item 10: a repository that cannot be read while WAL is replayed (here
/// a WAL pointer the drill's user may not read; in production, storage unreachable) stops
/// recovery through restore_command, and that is the drill not running (exit 1, `error`),
/// not a failed integrity check.
#[test]
fn a_repository_unreadable_during_replay_is_an_error_not_an_integrity_failure() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let wal = env.path().join("repo/clusters/main/wal/00000001");
    let newest = entries(&wal)
        .into_iter()
        .filter(|p| p.file_name().unwrap().len() == 24)
        .max()
        .expect("archived WAL");
    std::fs::set_permissions(&newest, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (code, doc) = drill(&env, &[]);
    std::fs::set_permissions(&newest, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["outcome"], "error", "{doc:#}");
    let errors: Vec<&serde_json::Value> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "error")
        .collect();
    // Which check sees it first depends on timing: replay stopping at the unreadable
    // segment, or the instance going down under the settings read-back. Either way it is an
    // error, never a failed (integrity) check.
    assert!(
        errors.iter().any(|c| {
            let d = c["detail"].as_str().unwrap();
            d.contains("restore_command could not fetch WAL")
                || d.contains("could not read the settings back")
        }),
        "{doc:#}"
    );
    assert!(
        !doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] == "failed"),
        "{doc:#}"
    );
}

/// Audit: a root drill wrote its reports with plain writes, into a directory PostgreSQL's OS
/// user can write (by default the spool's `drills`): a link named like the next report made
/// root overwrite the link's target, and the directory itself could be a link. Reports are
/// now written beneath the opened directory, replacing whatever stands at their names, and a
/// report directory that is a link in another user's directory is refused.
#[test]
fn as_root_links_planted_for_the_reports_are_never_written_through() {
    if !is_root() {
        eprintln!("skipping: needs root (the drill runs PostgreSQL as another user)");
        return;
    }
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let as_postgres = |script: &str| {
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", script])
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    // Root's file, and root's directory, that the links point at.
    let victim = env.path().join("root-only");
    std::fs::write(&victim, "untouched\n").unwrap();
    let victim_dir = env.path().join("root-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    // PostgreSQL's user plants a link for every report name of the next three minutes.
    let reports = env.path().join("pg-reports");
    as_postgres(&format!("mkdir {}", reports.display()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamps = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for s in $(seq {} {}); do date -u -d @$s +%Y%m%d-%H%M%S; done",
            now - 2,
            now + 180
        ))
        .output()
        .unwrap();
    let mut planted = 0;
    for stamp in String::from_utf8_lossy(&stamps.stdout).lines() {
        for ext in ["json", "md", "html"] {
            let link = reports.join(format!("drill-main-{stamp}.{ext}"));
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            std::os::unix::fs::lchown(
                &link,
                Some(std::fs::metadata(&reports).unwrap().uid()),
                None,
            )
            .unwrap();
            planted += 1;
        }
    }
    assert!(planted > 500, "{planted}");
    let root_drill = |report_dir: &Path| env.root_drill_command(report_dir).output().unwrap();
    let out = root_drill(&reports);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    let written: Vec<_> = entries(&reports)
        .into_iter()
        .filter(|p| {
            !std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        })
        .collect();
    assert_eq!(written.len(), 3, "the three reports, as files: {written:?}");
    assert_eq!(
        entries(&reports).len(),
        planted,
        "each report replaced the link planted at its name"
    );
    let json = written
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json.unwrap()).unwrap()).unwrap();
    assert_eq!(doc["outcome"], "passed", "{doc:#}");

    // The report directory itself a link, in a directory of PostgreSQL's user.
    let linked = env.path().join("linked-reports");
    as_postgres(&format!(
        "ln -s {} {}",
        victim_dir.display(),
        linked.display()
    ));
    let out = root_drill(&linked);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(
        entries(&victim_dir).is_empty(),
        "nothing written through the link"
    );
}

/// A database of the restored cluster named like a connection string (anyone with CREATEDB
/// can make one) pointing at production's socket: the drill's checks must run in the drill's
/// own instance, never follow it to production (psql takes a `-d` with `=` in it for a
/// connection string whose host and port override its own options).
#[test]
fn a_database_named_like_a_connection_string_never_sends_the_checks_to_production() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let hostile = format!(
        "host={} port={} dbname=postgres",
        pg.socket_dir.display(),
        pg.port
    );
    pg.psql("postgres", &format!("create database \"{hostile}\""))
        .unwrap();
    pg.psql("postgres", "create table before_backup (i int)")
        .unwrap();
    backup_json(&env, &["--type", "full"]);
    // Only production has it: a drill that reads it has connected to production.
    pg.psql("postgres", "create table production_only (i int)")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let (code, doc) = drill(&env, &["--max-mttr", "10m", "--target", "immediate"]);
    assert_eq!(code, Some(0), "{doc:#}");
    let tables: Vec<&str> = doc["row_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert!(
        !tables.iter().any(|t| t.contains("production_only")),
        "a check read production: {tables:?}"
    );
    assert!(
        tables.contains(&"postgres.public.before_backup"),
        "{tables:?}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "select count(*) from pg_extension where extname = 'amcheck'"
        )
        .unwrap(),
        "0",
        "the drill created amcheck in production"
    );
}

/// A cluster with a tablespace, drilled on its own host: the drill restores the tablespace
/// inside its work directory, never into production's tablespace directory (which it once
/// did: the recorded location, in use, made every drill of such a cluster fail).
#[test]
fn a_drill_keeps_tablespaces_in_its_work_directory() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let ts = env.create_tablespace(&pg, "production-ts");
    pg.psql(
        "postgres",
        "create table in_ts tablespace extra as select g as id from generate_series(1, 5000) g",
    )
    .unwrap();
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let before = entries_beneath(&ts);
    let work = env.path().join("drillwork");
    let (code, doc) = drill(
        &env,
        &[
            "--max-mttr",
            "10m",
            "--workdir",
            &work.display().to_string(),
        ],
    );
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(drill_rows(&doc, "postgres.public.in_ts"), 5000);
    assert_eq!(
        entries_beneath(&ts),
        before,
        "production's tablespace untouched"
    );
    assert!(
        !work.exists(),
        "the work directory, tablespace included, removed"
    );
}

/// A drill killed by SIGKILL during its restore (an OOM kill in the longest phase): its work
/// directory, by then a partial copy of production, is removed all the same (the watchdog
/// used to start only with the instance, after the restore).
#[test]
fn a_drill_killed_during_its_restore_leaves_no_copy_behind() {
    let (env, pg) = prepared();
    let _stop = StopOnDrop(&pg);
    let workdir = env.path().join("drill-restore-kill");
    let pause = env.path().join("pause");
    std::fs::create_dir(&pause).unwrap();
    give_to(env.run_as.as_deref(), &pause).unwrap();
    let mut child = spawn_drill(
        &env,
        &workdir,
        &[(
            "PGCAIRN_TEST_PAUSE",
            format!("phase:restore@{}", pause.display()),
        )],
    );
    let paused = pause.join("phase-restore.paused");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(
            Instant::now() < deadline,
            "the drill never reached its restore"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before its restore"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        workdir.exists(),
        "the restore is under way in the work directory"
    );
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while workdir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} left behind after SIGKILL during the restore",
            workdir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A damaged TOAST page: the table's rows count fine without their toasted values, so "every
/// table read in full" must read those values too (it counted rows, which reads no TOAST).
#[test]
fn every_table_read_in_full_reads_toasted_values() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table docs (id int primary key, body text); \
         alter table docs alter column body set storage external; \
         insert into docs select g, repeat(md5(g::text), 400) from generate_series(1, 20) g; \
         checkpoint",
    )
    .unwrap();
    let toast = pg
        .psql(
            "postgres",
            "select pg_relation_filepath(reltoastrelid) from pg_class where relname = 'docs'",
        )
        .unwrap();
    drop(stop);
    pg.stop().unwrap();
    // Damage the data area of the TOAST relation's first page behind PostgreSQL's back.
    let path = pg.datadir.join(&toast);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4000] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let (code, doc) = drill(&env, &["--max-mttr", "10m", "--target", "immediate"]);
    assert_ne!(code, Some(0), "{doc:#}");
    assert_eq!(
        status_of(&doc, "every table read in full"),
        "failed",
        "{doc:#}"
    );
    let detail = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "every table read in full")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("public.docs"), "{detail}");
}

/// Production settings of this host's own in the backup: `huge_pages = on` (huge pages
/// reserved for production) does not stop a drill; a preloaded library this host lacks makes
/// the drill an `error` (it could not run here), not a finding about the backup.
#[test]
fn production_settings_of_the_host_are_not_findings_about_the_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let backed_up = |sql: &str| {
        // ALTER SYSTEM: in the backup's postgresql.auto.conf, not in effect here until a restart.
        pg.psql("postgres", sql).unwrap();
        backup_json(&env, &["--type", "full"]);
        let last = switch_wal(&pg);
        wait_archived(&pg, &last, Duration::from_secs(90));
    };
    pg.psql("postgres", "create table t as select 1 as x")
        .unwrap();
    // Settings of a database the restored catalog carries: the drill's sessions override them
    // (a 1 ms statement_timeout cancelled the full read of a table; read-only refused amcheck).
    pg.psql("postgres", "create database big").unwrap();
    pg.psql(
        "big",
        "create table rows as select g, repeat('x', 100) as pad from generate_series(1, 300000) g",
    )
    .unwrap();
    pg.psql(
        "postgres",
        "alter database big set statement_timeout = '1ms'; \
         alter database big set default_transaction_read_only = on",
    )
    .unwrap();
    backed_up("alter system set huge_pages = on");
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["outcome"], "passed", "{doc:#}");
    assert_eq!(drill_rows(&doc, "big.public.rows"), 300000, "{doc:#}");

    backed_up("alter system set shared_preload_libraries = 'pgcairn_not_installed_here'");
    let (code, doc) = drill(&env, &[]);
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["outcome"], "error", "{doc:#}");
    let c = drill_check(&doc, "recovery reached the target");
    assert_eq!(c["status"], "error", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("pgcairn_not_installed_here")
            && detail.contains("not installed on this host"),
        "{detail}"
    );
    pg.psql("postgres", "alter system reset all").unwrap();
}
