//! The audit trail end to end: commands that change the repository or restore from it leave
//! one record each (host, OS user, command line, outcome, failures included), reads and dry
//! runs leave none, `pgcairn audit --since` filters, records outlive expire and gc, and expire
//! deletes those older than `retention.audit_keep`.

use std::time::Duration;

use pgcairn_tests::*;

fn audit(env: &TestEnv, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "--output", "json"];
    args.extend_from_slice(extra);
    let out = env.pgcairn(&args);
    assert_success(&out, "pgcairn audit");
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

fn commands(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["command"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn changes_and_restores_leave_records_that_outlive_expire_and_gc() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.started_pgbench_cluster("pg");
    let _stop = StopOnDrop(&pg);
    let backup = backup_json(&env, &["--type", "full"]);
    let id = backup["id"].as_str().unwrap().to_string();
    assert_success(&env.pgcairn(&["pin", &id]), "pin");
    let bad = env.pgcairn(&["unpin", "20000101-000000F"]);
    assert_ne!(bad.status.code(), Some(0), "unpin of an unknown backup");
    // Reads and dry runs are not recorded.
    assert_success(&env.pgcairn(&["info"]), "info");
    assert_success(&env.pgcairn(&["expire", "--dry-run"]), "expire --dry-run");
    assert_success(&env.pgcairn(&["expire"]), "expire");
    assert_success(&env.pgcairn(&["gc"]), "gc");
    assert_success(&env.pgcairn(&["verify"]), "verify");
    let restored = env.restore("restored", &[]);
    assert_success(&restored, "restore");
    let new_key = env.path().join("second.key").display().to_string();
    assert_success(
        &env.pgcairn(&["key", "add", "--key-file", &new_key]),
        "key add",
    );
    assert_success(&env.pgcairn(&["key", "list"]), "key list");
    // The same commands kept the status objects a scrape reads.
    let metric = scrape_once(&env);
    assert_eq!(metric("pgcairn_up"), 1.0);
    assert_eq!(metric(r#"pgcairn_backups{cluster="main"}"#), 1.0);
    assert_eq!(
        metric(r#"pgcairn_verify_last_success{cluster="main"}"#),
        1.0
    );
    assert_eq!(
        metric(r#"pgcairn_verify_last_problems{cluster="main"}"#),
        0.0
    );
    for name in [
        r#"pgcairn_expire_last_timestamp_seconds{cluster="main"}"#,
        "pgcairn_gc_last_timestamp_seconds",
        "pgcairn_repository_bytes",
    ] {
        assert!(metric(name) > 0.0, "{name}");
    }

    let records = audit(&env, &[]);
    assert_eq!(
        commands(&records),
        ["init", "backup", "pin", "unpin", "expire", "gc", "restore", "key add"],
        "{records:#?}"
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let user = env.run_as.clone().unwrap_or_else(|| "root".into());
    for r in &records {
        assert_eq!(r["host"].as_str().unwrap(), host.trim(), "{r}");
        if env.run_as.is_some() {
            assert_eq!(r["user"].as_str().unwrap(), user, "{r}");
        }
        assert_eq!(r["cluster"], "main", "{r}");
    }
    let backup_rec = &records[1];
    assert_eq!(backup_rec["outcome"], "ok");
    let args: Vec<&str> = backup_rec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.windows(2).any(|w| w == ["--type", "full"]), "{args:?}");
    let failed = records[3]["outcome"].as_str().unwrap();
    assert!(failed.starts_with("failed (exit "), "{failed}");
    assert!(failed.contains("20000101-000000F"), "{failed}");

    // --since: a time after everything gives nothing; a duration ago gives everything.
    assert!(audit(&env, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert_eq!(audit(&env, &["--since", "1h"]).len(), records.len());
    let bad_since = env.pgcairn(&["audit", "--since", "yesterday"]);
    assert_eq!(bad_since.status.code(), Some(2));
    assert!(
        stderr(&bad_since).contains("--since"),
        "{}",
        stderr(&bad_since)
    );

    // The key file's path is recorded (it is not a secret); the key is not.
    assert!(records[7]["args"].to_string().contains("second.key"));
    // expire deletes records older than retention.audit_keep (its own record stays).
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str("\n[retention]\naudit_keep = \"2s\"\n");
    env.replace_config(&config);
    std::thread::sleep(Duration::from_secs(3));
    assert_success(&env.pgcairn(&["expire"]), "expire");
    assert_eq!(commands(&audit(&env, &[])), ["expire"]);
}
