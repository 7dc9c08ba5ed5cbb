//! Retention end to end: expire keeps what the policy and pins keep, removes the rest and the
//! WAL no retained backup needs, and what remains restores.

use std::time::Duration;

use pgbunker_tests::*;

fn info(env: &TestEnv) -> serde_json::Value {
    let out = env.pgbunker(&["info", "--output", "json"]);
    assert_success(&out, "info");
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
    for _ in 0..3 {
        pg.pgbench(&["-t", "200", "-c", "2"]).unwrap();
        switch_wal(&pg);
        ids.push(
            backup_json(&env, &["--type", "full"])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    // No policy: nothing expires.
    let out = env.pgbunker(&["expire"]);
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
    std::fs::write(&env.config, cfg).unwrap();
    assert_success(&env.pgbunker(&["pin", &ids[0]]), "pin");
    let out = env.pgbunker(&["expire", "--dry-run", "--output", "json"]);
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

    assert_success(&env.pgbunker(&["expire"]), "expire");
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
    assert_success(&env.pgbunker(&["unpin", &ids[0]]), "unpin");
    assert_success(&env.pgbunker(&["expire"]), "expire after unpin");
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
    std::fs::write(&env.config, cfg).unwrap();
    assert_success(&env.pgbunker(&["expire"]), "expire");

    let packs = env.path().join("repo/packs");
    let before = dir_size(&packs);
    let dry = env.pgbunker(&["gc", "--grace", "0s", "--dry-run", "--output", "json"]);
    assert_success(&dry, "gc --dry-run");
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert!(
        !dry["swept"].as_array().unwrap().is_empty(),
        "something to reclaim: {dry:#}"
    );
    assert_eq!(dir_size(&packs), before, "a dry run deletes nothing");

    // kill -9 at several points, then the repository is still consistent.
    for delay_ms in [0u64, 5, 15, 30, 60] {
        let mut child = pgbunker_engine::pg::instance::command_as(env.run_as.as_deref(), &env.bin)
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
        let _ = std::process::Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                &format!("{} --config {} gc", env.bin.display(), env.config.display()),
            ])
            .status();
        let _ = child.wait();
        let v = env.pgbunker(&["verify"]);
        assert_success(&v, &format!("verify after gc killed at {delay_ms} ms"));
    }
    let out = env.pgbunker(&["gc", "--grace", "0s", "--output", "json"]);
    assert_success(&out, "gc");
    let after = dir_size(&packs);
    assert!(
        after < before,
        "gc reclaimed space: {before} -> {after} bytes"
    );
    let again = env.pgbunker(&["gc", "--grace", "0s", "--output", "json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again["swept"].as_array().unwrap().len(),
        0,
        "a second gc finds nothing left: {again:#}"
    );
    let v = env.pgbunker(&["verify", "--read-data", "--all"]);
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
