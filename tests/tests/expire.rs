//! Retention end to end: expire keeps what the policy and pins keep, removes the rest and the
//! WAL no retained backup needs, and what remains restores.

use std::time::Duration;

use pgcairn_tests::*;

fn info(env: &TestEnv) -> serde_json::Value {
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "info");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The bytes of lease `leases/<name>` saying `doc`, sealed for that name with the
/// repository's key as pgcairn seals leases: a lease another host could have written
/// (`file://` repositories).
fn sealed_lease(env: &TestEnv, name: &str, doc: &serde_json::Value) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage =
            pgcairn_storage::open(&env.repo_url, &pgcairn_storage::StorageOptions::default())
                .expect("open storage");
        let key_file = pgcairn_engine::crypto::KeyFile::load(&env.key_file).expect("key file");
        let unlock = pgcairn_engine::crypto::Unlock::KeyFile(key_file);
        let repo = pgcairn_engine::repo::Repository::open(storage, Some(&unlock))
            .await
            .expect("open repository");
        let key = pgcairn_engine::repo::layout::exclusive_lease(name);
        pgcairn_engine::store::sealed::seal(
            &repo,
            pgcairn_engine::store::sealed::DocKind::Lease,
            &key,
            doc,
        )
        .to_vec()
    })
}

/// The report of `gc --grace 0s --dry-run`.
fn gc_dry_run(env: &TestEnv) -> serde_json::Value {
    let out = env.pgcairn(&["gc", "--grace", "0s", "--dry-run", "--output", "json"]);
    assert_success(&out, "gc --dry-run");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn expire_follows_policy_and_pins_and_the_rest_restores() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        pg.pgbench(&["-t", "200", "-c", "2"]).unwrap();
        switch_wal(&pg);
        // The first is pinned as it is taken.
        let args: &[&str] = if i == 0 {
            &["--type", "full", "--pin"]
        } else {
            &["--type", "full"]
        };
        let b = backup_json(&env, args);
        assert_eq!(b["pinned"].as_bool(), Some(i == 0));
        ids.push(b["id"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(1100));
    }
    // No policy: nothing expires.
    let out = env.pgcairn(&["expire"]);
    assert_success(&out, "expire without a policy");
    assert_eq!(
        info(&env)["clusters"][0]["backups"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    // `pin` of an already pinned backup is a no-op; of a missing one, an error.
    assert_success(&env.pgcairn(&["pin", &ids[0]]), "pin again");
    let out = env.pgcairn(&["pin", "20200101-000000F"]);
    assert!(
        !out.status.success(),
        "pinning a backup that does not exist"
    );
    let out = env.pgcairn(&["expire", "--dry-run", "--output", "json"]);
    assert_success(&out, "expire --dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keep: Vec<bool> = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["keep"].as_bool().unwrap())
        .collect();
    assert_eq!(keep, [true, false, true], "{plan:#}");
    assert!(plan["backups"][0]["reasons"].to_string().contains("pinned"));
    assert_eq!(
        info(&env)["clusters"][0]["backups"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "a dry run changes nothing"
    );

    assert_success(&env.pgcairn(&["expire"]), "expire");
    let left: Vec<String> = info(&env)["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [ids[0].clone(), ids[2].clone()]);

    let first_wal_before = info(&env)["clusters"][0]["wal"]["timelines"][0]["ranges"][0]["first"]
        .as_str()
        .unwrap()
        .to_string();
    assert_success(&env.pgcairn(&["unpin", &ids[0]]), "unpin");
    assert_success(&env.pgcairn(&["expire"]), "expire after unpin");
    let doc = info(&env);
    let left: Vec<&str> = doc["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [ids[2].as_str()]);
    let first_wal_after = doc["clusters"][0]["wal"]["timelines"][0]["ranges"][0]["first"]
        .as_str()
        .unwrap();
    assert!(
        first_wal_after > first_wal_before.as_str(),
        "WAL older than the retained backup is removed"
    );
    assert!(
        doc["clusters"][0]["recoverable"].is_object(),
        "the retained backup is still recoverable: {doc:#}"
    );

    pg.psql("postgres", "create table after_expire as select 1 as x")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    let r = env.restore_and_start("restored", None);
    let _stop_r = StopOnDrop(&r);
    assert_eq!(
        r.psql("postgres", "select x from after_expire").unwrap(),
        "1"
    );
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        dir_size(&e.path())
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `gc --grace 0s` and kill -9s it after 0 to 400 ms (startup, mark, repack, condemn,
/// sweep, on these repositories); after each, `verify` must pass: a gc killed anywhere leaves
/// the repository consistent.
fn kill_gc_at_several_points(env: &TestEnv) {
    for delay_ms in [0u64, 10, 40, 100, 200, 400] {
        let mut child = pgcairn_engine::pg::instance::command_as(env.run_as.as_deref(), &env.bin)
            .args([
                "--config",
                &env.config.display().to_string(),
                "gc",
                "--grace",
                "0s",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // Kill until none is left: a kill that lands between runuser's fork and its child's
        // exec would otherwise leave an orphan gc running into the next step.
        let pattern = format!("{} --config {} gc", env.bin.display(), env.config.display());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-f", &pattern])
                .status();
            let left = std::process::Command::new("pgrep")
                .args(["-f", &pattern])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !left || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
        let v = env.pgcairn(&["verify"]);
        assert_success(&v, &format!("verify after gc killed at {delay_ms} ms"));
    }
}

#[test]
fn gc_reclaims_unreferenced_packs_survives_kill_9_and_keeps_the_rest_restorable() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    // Poorly compressible data filling several packs, dropped after the first backup: the
    // packs holding only its blocks become garbage once that backup expires.
    pg.psql("postgres", "create table big as select g, md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text) as v from generate_series(1, 1200000) g").unwrap();
    backup_json(&env, &["--type", "full"]);
    pg.psql("postgres", "drop table big; create table noise as select g, md5(g::text) as v from generate_series(1, 200000) g").unwrap();
    switch_wal(&pg);
    let keep = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    assert_success(&env.pgcairn(&["expire"]), "expire");

    let packs = env.path().join("repo/packs");
    let before = dir_size(&packs);
    let dry = gc_dry_run(&env);
    assert!(
        !dry["swept"].as_array().unwrap().is_empty(),
        "something to reclaim: {dry:#}"
    );
    assert_eq!(dir_size(&packs), before, "a dry run deletes nothing");

    kill_gc_at_several_points(&env);
    let out = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
    assert_success(&out, "gc");
    let after = dir_size(&packs);
    assert!(
        after < before,
        "gc reclaimed space: {before} -> {after} bytes"
    );
    let again = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["swept"].as_array().unwrap().len(),
        0,
        "a second gc finds nothing left: {again:#}"
    );
    let v = env.pgcairn(&["verify", "--read-data", "--all"]);
    assert_success(&v, "verify --read-data after gc");

    // A backup taken after gc, and the retained one, both restore.
    pg.psql("postgres", "create table after_gc as select 1 as x")
        .unwrap();
    backup_json(&env, &[]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    let r = env.restore_and_start("from_kept", Some(&keep));
    let _stop_r = StopOnDrop(&r);
    assert_eq!(
        r.psql("postgres", "select count(*) from noise").unwrap(),
        "200000"
    );
    assert_eq!(r.psql("postgres", "select x from after_gc").unwrap(), "1");
}

fn sizes_by_top_dir(root: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| {
            let size = if e.path().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
            (e.file_name().to_string_lossy().to_string(), size)
        })
        .collect()
}

/// Bytes under `clusters/main/wal*` (the archived WAL) of a file:// repository.
fn wal_bytes(repo: &std::path::Path) -> u64 {
    let cluster = repo.join("clusters/main");
    std::fs::read_dir(&cluster)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal"))
        .map(|e| dir_size(&e.path()))
        .sum()
}

#[test]
fn after_expiring_all_but_the_last_backup_gc_leaves_about_a_fresh_full_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    env.use_cluster(&pg);
    // A second repository that only ever gets one full backup: the yardstick. The cluster
    // archives into both, so that backup finds its consistency WAL.
    let fresh_cfg = env.path().join("fresh.toml");
    let fresh_key = env.path().join("fresh.key");
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    let fresh_text = cfg
        .replace(&env.repo_url, &format!("{}-fresh", env.repo_url))
        .replace(
            &env.key_file.display().to_string(),
            &fresh_key.display().to_string(),
        );
    std::fs::write(&fresh_cfg, fresh_text).unwrap();
    let out = env.pgcairn_with_config(
        &fresh_cfg,
        &["init", "--key-file", &fresh_key.display().to_string()],
    );
    assert_success(&out, "init the fresh repository");
    pg.configure(&[(
        "archive_command",
        format!(
            "'{bin}' --config '{}' archive-push %p && '{bin}' --config '{}' archive-push %p",
            env.config.display(),
            fresh_cfg.display(),
            bin = env.bin.display()
        ),
    )])
    .unwrap();
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "4", "-q"]).unwrap();
    // Backups with churn in between: most blocks of the early backups change, so once only
    // the last backup is retained their packs are mostly garbage.
    backup_json(&env, &["--type", "full"]);
    for t in ["incr", "incr", "diff", "full"] {
        pg.pgbench(&["-t", "3000", "-c", "2", "-N"]).unwrap();
        pg.psql("postgres", "vacuum pgbench_accounts").unwrap();
        switch_wal(&pg);
        backup_json(&env, &["--type", t]);
    }
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    assert_success(&env.pgcairn(&["expire"]), "expire");
    let before = info(&env)["repository"]["space"].clone();
    assert!(
        before["reclaimable_bytes"].as_u64().unwrap() > before["pack_bytes"].as_u64().unwrap() / 2,
        "info shows most pack bytes reclaimable once the old backups expired: {before:#}"
    );

    let dry = gc_dry_run(&env);
    assert!(
        !dry["repacked"].as_array().unwrap().is_empty(),
        "partly live packs are to be repacked: {dry:#}"
    );
    // Killed while repacking, condemning or sweeping: still consistent each time.
    kill_gc_at_several_points(&env);
    let out = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
    assert_success(&out, "gc");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("gc after the kills: {report}");
    let again = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
    assert_success(&again, "second gc");
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["swept"].as_array().unwrap().len(), 0, "{again:#}");
    assert_eq!(again["repacked"].as_array().unwrap().len(), 0, "{again:#}");
    let after = info(&env)["repository"]["space"].clone();
    assert!(
        after["reclaimable_bytes"].as_u64().unwrap() < after["pack_bytes"].as_u64().unwrap() / 10,
        "little left to reclaim: {after:#}"
    );

    // The yardstick: one full backup of the same, now idle, cluster in a fresh repository.
    let out = env.pgcairn_with_config(
        &fresh_cfg,
        &["--progress", "never", "backup", "--type", "full"],
    );
    assert_success(&out, "fresh full backup");
    let repo = env.path().join("repo");
    let fresh = env.path().join("repo-fresh");
    let (main_sizes, fresh_sizes) = (sizes_by_top_dir(&repo), sizes_by_top_dir(&fresh));
    let main_total: u64 = main_sizes.values().sum();
    let fresh_total: u64 = fresh_sizes.values().sum();
    let (main_wal, fresh_wal) = (wal_bytes(&repo), wal_bytes(&fresh));
    eprintln!(
        "after gc: repository {main_total} bytes (WAL {main_wal}); fresh full backup {} bytes; gc: {report}",
        fresh_total - fresh_wal
    );
    let allowed = (fresh_total - fresh_wal) + main_wal + (fresh_total - fresh_wal) / 10 + (2 << 20);
    assert!(
        main_total <= allowed,
        "repository after gc: {main_total} bytes ({main_sizes:?}, WAL {main_wal}); a fresh full \
         backup: {} bytes ({fresh_sizes:?}); allowed {allowed}",
        fresh_total - fresh_wal
    );

    // And what is left is intact and restores.
    let v = env.pgcairn(&["verify", "--read-data", "--all"]);
    assert_success(&v, "verify --read-data after repack");
    let want = pgbench_fingerprint(&pg);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    let r = env.restore_and_start("after_repack", None);
    let _stop_r = StopOnDrop(&r);
    assert_eq!(pgbench_fingerprint(&r), want);
}

#[test]
fn pitr_window_keeps_only_consistency_wal_for_older_backups() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql(
        "postgres",
        "create table marks(n int, at timestamptz default clock_timestamp())",
    )
    .unwrap();
    let mut ids = Vec::new();
    for n in 1..=3 {
        pg.psql("postgres", &format!("insert into marks(n) values ({n})"))
            .unwrap();
        for round in 0..3 {
            pg.pgbench(&["-t", "300", "-c", "2"]).unwrap();
            switch_wal(&pg);
            if round == 0 {
                // A moment well between two backups.
                pg.psql(
                    "postgres",
                    &format!("insert into marks(n) values ({})", n * 10 + 5),
                )
                .unwrap();
            }
        }
        ids.push(
            backup_json(&env, &["--type", "full"])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 3\npitr_window = \"1s\"\n");
    env.replace_config(&cfg);
    let out = env.pgcairn(&["expire", "--dry-run", "--output", "json"]);
    assert_success(&out, "expire --dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ranges = plan["wal_ranges"].as_array().unwrap();
    let reasons: Vec<&str> = ranges
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    for id in &ids[..2] {
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("consistency WAL") && r.contains(id.as_str())),
            "{id} keeps its consistency WAL: {plan:#}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("point-in-time") && r.contains(ids[2].as_str())),
        "PITR from the newest backup (the window is shorter than its age): {plan:#}"
    );
    let removed: u64 = ranges
        .iter()
        .filter(|r| !r["keep"].as_bool().unwrap())
        .map(|r| r["files"].as_u64().unwrap())
        .sum();
    assert!(removed >= 4, "WAL between the backups goes: {plan:#}");
    assert_success(&env.pgcairn(&["expire"]), "expire");

    // The oldest backup still restores to its own consistency point...
    let r = env.restore_and_start_with(
        "oldest",
        &[
            "--backup",
            &ids[0],
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(
        r.psql("postgres", "select max(n) from marks where n < 10")
            .unwrap(),
        "1"
    );
    r.stop().unwrap();
    // ...but a time between it and the next one is refused before anything is written.
    let between = pg
        .psql(
            "postgres",
            "select to_char((at + interval '1 millisecond') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' from marks where n = 25",
        )
        .unwrap();
    let target = env.path().join("between");
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target.display().to_string(),
        "--target-time",
        &between,
        "--dry-run",
    ]);
    assert!(!out.status.success(), "no WAL to reach {between}");
    assert!(
        stderr(&out).contains("missing") || stderr(&out).contains("not reachable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn gc_and_expire_leases_keep_a_second_run_out_until_the_holder_is_gone() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let leases = env.path().join("repo/leases");
    std::fs::create_dir_all(&leases).unwrap();
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    for (name, args) in [("gc", &["gc"][..]), ("expire-main", &["expire"][..])] {
        // Another host holds the lease, with a fresh heartbeat.
        let lease = leases.join(name);
        let doc = serde_json::json!({
            "kind": name.split('-').next().unwrap(), "cluster": "main", "backup_id": "",
            "host": "db-other", "pid": 4242, "started": 1
        });
        std::fs::write(&lease, sealed_lease(&env, name, &doc)).unwrap();
        pgcairn_engine::pg::instance::give_to(env.run_as.as_deref(), &leases).unwrap();
        let out = env.pgcairn(args);
        assert!(!out.status.success(), "{name}: a second run must not start");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "held by another {name} or a command of an older pgcairn"
            )),
            "{name}: a lease that does not say what it is for: {err}"
        );
        assert!(
            err.contains(&format!("the lease {name} is held by"))
                && err.contains("(host db-other, pid 4242"),
            "{name}: the error names the holder: {err}"
        );
        // A lease that says what it is for is named by it.
        let mut said = doc.clone();
        said["purpose"] = "reencrypt".into();
        std::fs::write(&lease, sealed_lease(&env, name, &said)).unwrap();
        let err = stderr(&env.pgcairn(args));
        assert!(
            err.contains(&format!(
                "the lease {name} is held by a key re-encryption (host db-other"
            )),
            "{name}: {err}"
        );
        // Its heartbeat stops: the lease expires and the next run takes it over.
        let status = std::process::Command::new("touch")
            .args(["-d", "-5 minutes"])
            .arg(&lease)
            .status()
            .unwrap();
        assert!(status.success());
        let out = env.pgcairn(args);
        assert_success(&out, &format!("{name} after the holder's lease expired"));
        assert!(!lease.exists(), "{name}: the run released its lease");
    }
    // A dry run takes no lease and so is never kept out.
    let doc = serde_json::json!({
        "kind": "gc", "cluster": "", "backup_id": "", "host": "db-other", "pid": 1, "started": 1
    });
    std::fs::write(leases.join("gc"), sealed_lease(&env, "gc", &doc)).unwrap();
    pgcairn_engine::pg::instance::give_to(env.run_as.as_deref(), &leases).unwrap();
    assert_success(
        &env.pgcairn(&["gc", "--dry-run"]),
        "gc --dry-run under a lease",
    );
}

#[test]
fn retention_auto_expires_after_each_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\nauto = true\n");
    env.replace_config(&cfg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let first = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    pg.pgbench(&["-t", "200", "-c", "2"]).unwrap();
    switch_wal(&pg);
    let second = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let left: Vec<String> = info(&env)["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [second], "{first} expired by the second backup's run");
}

/// `expire --dry-run` and `gc --dry-run` run over the dry-run storage wrapper: every object
/// (key, ETag and modification time on S3; bytes and mtime on file://) is the same before
/// and after, including the status objects and catalog head a real run swaps, while the
/// real runs that follow do change the repository (so the check can fail). With a state
/// directory: a dry run that advanced this host's record of the catalog head would make the
/// real expire after it fail as a rollback.
#[test]
fn dry_runs_of_expire_and_gc_change_no_object() {
    for backend in backends() {
        let env = TestEnv::new(EnvOptions::new(backend));
        env.use_state_dir();
        let pg = env.cluster("pg");
        pg.start().unwrap();
        let _stop = StopOnDrop(&pg);
        env.use_cluster(&pg);
        pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
        for _ in 0..2 {
            backup_json(&env, &["--type", "full"]);
            pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
            switch_wal(&pg);
            std::thread::sleep(Duration::from_millis(1100));
        }
        backup_json(&env, &["--type", "full"]);
        let mut cfg = std::fs::read_to_string(&env.config).unwrap();
        cfg.push_str("\n[retention]\nfull = 1\n");
        env.replace_config(&cfg);

        let before = env.snapshot_objects();
        assert!(
            before.iter().any(|(k, _)| k.starts_with("packs/")),
            "{backend:?}"
        );
        let out = env.pgcairn(&["expire", "--dry-run"]);
        assert_success(&out, "expire --dry-run");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            text.matches("WOULD EXPIRE").count(),
            2,
            "{backend:?}: {text}"
        );
        assert!(text.contains("WOULD REMOVE WAL"), "{backend:?}: {text}");
        assert_eq!(
            env.snapshot_objects(),
            before,
            "{backend:?}: expire --dry-run"
        );

        assert_success(&env.pgcairn(&["expire"]), "expire after its dry run");
        let expired = env.snapshot_objects();
        assert_ne!(
            expired, before,
            "{backend:?}: the real expire removes objects"
        );

        let dry = gc_dry_run(&env);
        assert!(
            !dry["swept"].as_array().unwrap().is_empty(),
            "{backend:?}: the expired backups' packs would go: {dry:#}"
        );
        assert_eq!(dry["dry_run"], true);
        assert_eq!(env.snapshot_objects(), expired, "{backend:?}: gc --dry-run");

        let out = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
        assert_success(&out, "gc after its dry run");
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sorted = |v: &serde_json::Value| {
            let mut v: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            sorted(&done["swept"]),
            sorted(&dry["swept"]),
            "{backend:?}: the dry run said what goes"
        );
        assert_ne!(
            env.snapshot_objects(),
            expired,
            "{backend:?}: the real gc deletes packs"
        );
    }
}

/// Leases are sealed for their name: one forged on a `file://` repository (plain JSON, as
/// leases were before, naming a holder that does not exist) or a real lease copied under
/// another lease's name stops the commands that read it with an integrity error naming the
/// object (fail closed: it might be a running backup's): gc reads every lease, expire its
/// own. Deleting it, as the message says, clears the way.
#[test]
fn a_forged_or_copied_lease_is_an_integrity_error_naming_it() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let leases = env.path().join("repo/leases");
    std::fs::create_dir_all(&leases).unwrap();
    let gc: &[&[&str]] = &[&["gc"], &["gc", "--dry-run"]];
    let expire: &[&[&str]] = &[&["expire"], &["gc"], &["gc", "--dry-run"]];
    for (name, other, readers) in [("gc", "expire-main", gc), ("expire-main", "gc", expire)] {
        let lease = leases.join(name);
        let doc = serde_json::json!({
            "kind": name.split('-').next().unwrap(), "cluster": "main", "backup_id": "",
            "host": "db-other", "pid": 4242, "started": 1
        });
        for (what, body) in [
            ("forged", serde_json::to_vec(&doc).unwrap()),
            ("copied", sealed_lease(&env, other, &doc)),
        ] {
            std::fs::write(&lease, &body).unwrap();
            pgcairn_engine::pg::instance::give_to(env.run_as.as_deref(), &leases).unwrap();
            for args in readers {
                let out = env.pgcairn(args);
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(1), "{what} {name}: {args:?} {err}");
                assert!(
                    err.contains(&format!("corrupt object leases/{name}"))
                        && err.contains("not a lease pgcairn wrote under this name")
                        && err.contains(&format!("delete the object leases/{name}")),
                    "{what} {name}: {args:?}: {err}"
                );
            }
            std::fs::remove_file(&lease).unwrap();
            for args in readers {
                assert_success(
                    &env.pgcairn(args),
                    &format!("{args:?} once the {what} lease {name} is gone"),
                );
            }
        }
    }
}

/// gc merges the small index segments that every backup leaves (one per pack): a command
/// reads the index first, one request per segment. On S3 (file:// without a local S3 server),
/// after seventeen small backups, gc replaces them with one segment; the next gc leaves it
/// alone; verify reads every block through the merged index, and the newest backup restores
/// to the source's state.
#[test]
fn gc_merges_small_index_segments_and_backups_still_restore() {
    let env = TestEnv::new(EnvOptions::new(preferred_backend()));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    backup_json(&env, &["--type", "full"]);
    for i in 0..16 {
        pg.psql(
            "postgres",
            &format!("insert into pgbench_history (tid, bid, aid, delta, mtime) values ({i}, 1, 1, {i}, now())"),
        )
        .unwrap();
        backup_json(&env, &["--type", "incr"]);
    }
    let segments = |env: &TestEnv| {
        env.snapshot_objects()
            .iter()
            .filter(|(k, _)| k.starts_with("index/"))
            .count()
    };
    let before = segments(&env);
    assert!(before >= 17, "a segment per backup at least: {before}");

    let gc = |env: &TestEnv| -> serde_json::Value {
        let out = env.pgcairn(&["gc", "--grace", "0s", "--output", "json"]);
        assert_success(&out, "gc");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = gc(&env);
    let (merged, into) = (
        r["index_merged"].as_u64().unwrap() as usize,
        r["index_merged_into"].as_u64().unwrap() as usize,
    );
    let after = segments(&env);
    assert!(merged >= 17 && into >= 1, "{r:#}");
    assert_eq!(after, before - merged + into, "{r:#}");
    assert!(after <= 2, "{before} segments became {after}: {r:#}");
    assert_eq!(gc(&env)["index_merged"], 0, "nothing left to merge");
    assert_eq!(segments(&env), after);

    assert_success(
        &env.pgcairn(&["verify", "--read-data"]),
        "verify after the merge",
    );
    let expected = pgbench_fingerprint(&pg);
    let history = pg
        .psql(
            "postgres",
            "select count(*), sum(delta) from pgbench_history",
        )
        .unwrap();
    let restored = env.restore_and_start("restored", None);
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(pgbench_fingerprint(&restored), expected);
    assert_eq!(
        restored
            .psql(
                "postgres",
                "select count(*), sum(delta) from pgbench_history"
            )
            .unwrap(),
        history
    );
}

/// A point-in-time restore of the older of two backups, to a moment before the newer one,
/// then an expire (the nightly backup's `retention.auto`) before PostgreSQL replays: the
/// restore's hold keeps the backup and the WAL its recovery asks for, and the recovery reaches
/// its target. Without the hold (`--hold 0`) that expire would remove both.
#[test]
fn an_expire_during_a_recovery_keeps_the_backup_and_wal_it_replays() {
    expire_during_a_recovery(Backend::File)
}

/// The same on S3: the hold is created, extended and read through the object store.
#[test]
fn an_expire_during_a_recovery_keeps_the_backup_and_wal_it_replays_on_s3() {
    expire_during_a_recovery(Backend::S3)
}

/// A table `marks`, a full backup, rows 1 to 3 (a WAL switch after each), a second full
/// backup, all archived: the two backups' ids and a recovery target just after row 2.
fn two_backups_around_marks(env: &TestEnv, pg: &Instance) -> (String, String, String) {
    pg.psql(
        "postgres",
        "create table marks(n int, at timestamptz default clock_timestamp())",
    )
    .unwrap();
    let full = || {
        backup_json(env, &["--type", "full"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let older = full();
    for n in 1..=3 {
        pg.psql("postgres", &format!("insert into marks(n) values ({n})"))
            .unwrap();
        switch_wal(pg);
    }
    let newer = full();
    let last = switch_wal(pg);
    wait_archived(pg, &last, Duration::from_secs(60));
    let target = pg
        .psql(
            "postgres",
            "select to_char((at + interval '1 millisecond') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' from marks where n = 2",
        )
        .unwrap();
    (older, newer, target)
}

fn expire_during_a_recovery(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let (older, _, target) = two_backups_around_marks(&env, &pg);
    let pitr = [
        "--backup",
        older.as_str(),
        "--target-time",
        target.as_str(),
        "--target-action",
        "promote",
    ];
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    let would_expire = |env: &TestEnv| -> bool {
        let out = env.pgcairn(&["expire", "--dry-run", "--output", "json"]);
        assert_success(&out, "expire --dry-run");
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == older.as_str() && !b["keep"].as_bool().unwrap())
    };
    // Unheld, the older backup is what the policy removes.
    env.restore("unheld", &[&pitr[..], &["--hold", "0"]].concat());
    assert!(would_expire(&env), "the premise: full = 1 expires it");

    let out = env.restore("held", &pitr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("held against expire"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!would_expire(&env), "held, it stays");
    // info names the hold: which backup, until when (the default 24 hours), and whose.
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "info");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let holds = doc["clusters"][0]["holds"].as_array().unwrap().clone();
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["backup_id"], older.as_str());
    let until =
        pgcairn_engine::store::Timestamp::parse(holds[0]["until"].as_str().unwrap()).unwrap();
    let left = until.unix_seconds() - pgcairn_engine::store::Timestamp::now().unix_seconds();
    assert!((23 * 3600..=24 * 3600).contains(&left), "held {left}s more");
    assert!(holds[0]["object"].as_str().unwrap().contains("/holds/"));
    let text = env.pgcairn(&["info"]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains(&format!("held against expire: backup {older}")),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    assert_success(&env.pgcairn(&["expire"]), "expire during the recovery");
    let inst = env.restored_instance("held", false);
    inst.start().unwrap();
    let _stop_held = StopOnDrop(&inst);
    wait_recovered(&inst, "held", Duration::from_secs(180));
    assert_eq!(
        inst.psql(
            "postgres",
            "select string_agg(n::text, ',' order by n) from marks"
        )
        .unwrap(),
        "1,2"
    );
}

/// A point-in-time recovery promoted below the newer backup forks timeline 2, whose only base
/// is the older backup. With `full = 1` and no hold (`--hold 0`, or a day later), expire used
/// to remove that base and its WAL: the cluster now running on timeline 2 had no restorable
/// backup. It stays until timeline 2 has a backup of its own, and a restore along timeline 2
/// from it returns the fork's rows; then retention decides alone again.
#[test]
fn the_live_timelines_only_base_survives_expire_until_it_has_a_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop_pg = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let (base, newer, target) = two_backups_around_marks(&env, &pg);
    // The old primary is gone (the reason for going back); the fork takes over, archiving.
    drop(stop_pg);
    env.restore(
        "fork",
        &[
            "--backup",
            base.as_str(),
            "--target-time",
            target.as_str(),
            "--target-action",
            "promote",
            "--hold",
            "0",
        ],
    );
    let fork = env.restored_instance("fork", true);
    fork.start().unwrap();
    let _stop_fork = StopOnDrop(&fork);
    wait_recovered(&fork, "fork", Duration::from_secs(180));
    fork.psql("postgres", "insert into marks(n) values (10)")
        .unwrap();
    let last = switch_wal(&fork);
    assert!(last.starts_with("00000002"), "{last}");
    wait_archived(&fork, &last, Duration::from_secs(60));

    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);
    let out = env.pgcairn(&["expire", "--output", "json"]);
    assert_success(&out, "expire");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = |id: &str| {
        report["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {report}"))
            .clone()
    };
    let b = kept(&base);
    assert!(b["keep"].as_bool().unwrap(), "{report}");
    assert!(
        b["reasons"][0].as_str().unwrap().contains("timeline 2"),
        "{report}"
    );
    assert!(kept(&newer)["keep"].as_bool().unwrap(), "the newest stays");

    // Restorable: along the latest timeline (the default), from the base, to the fork's rows.
    env.restore("again", &["--archive-mode", "off", "--hold", "0"]);
    let again = env.restored_instance("again", false);
    again.start().unwrap();
    let stop_again = StopOnDrop(&again);
    wait_recovered(&again, "again", Duration::from_secs(180));
    assert_eq!(
        again
            .psql(
                "postgres",
                "select string_agg(n::text, ',' order by n) from marks"
            )
            .unwrap(),
        "1,2,10"
    );
    drop(stop_again);

    // Timeline 2 gets its backup: the base goes (and the newer one of timeline 1).
    env.use_cluster(&fork);
    let own = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.pgcairn(&["expire", "--output", "json"]);
    assert_success(&out, "expire after the fork's backup");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept: Vec<&str> = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["keep"].as_bool().unwrap())
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [own.as_str()], "{report}");
}
