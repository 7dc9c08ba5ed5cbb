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
