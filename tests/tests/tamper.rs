//! End to end: a repository that notices what is missing or rolled back (issue 15).
//!
//! One real PostgreSQL 15 cluster per backend (`file://`, and S3 on the loopback server when
//! `scripts/test.sh` provides it) archives WAL and takes two full backups. Then, one at a time,
//! an object is deleted or rolled back behind pgcairn's back (the newest manifest, the WAL
//! record at the catalog head's high-water mark, the WAL data behind a record, an index
//! segment, the head itself) and put back; each time `verify`, `restore`, `archive-get` and
//! `info` must say what is missing, naming it, instead of "ok", a silently different backup,
//! or "absent". On `file://`, a restored server whose recovery needs a deleted segment must
//! abort recovery (archive-get exit 200), not end it early and promote at the wrong point.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use pgcairn_tests::*;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts `out` exited with `expected` and its output names every one of `needles`.
fn assert_says(out: &Output, expected: i32, needles: &[&str], what: &str) {
    let t = text(out);
    assert_eq!(code(out), expected, "{what}: exit {}:\n{t}", code(out));
    for n in needles {
        assert!(t.contains(n), "{what}: output does not name {n:?}:\n{t}");
    }
}

/// Absolute number of a 16 MiB WAL segment name.
fn segno(name: &str) -> u64 {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    log * 0x100 + seg
}

fn record_key(seg: &str) -> String {
    format!("clusters/main/wal/{}/{seg}", &seg[..8])
}

/// Makes the host remember catalog head generations (`repo.state_dir`): PostgreSQL's user
/// runs pgcairn with root's HOME here, so there is no default.
fn set_state_dir(env: &TestEnv) {
    env.use_state_dir();
}

struct Archived {
    env: TestEnv,
    pg: Instance,
    /// The older and the newer full backup.
    older: String,
    newer: String,
    /// The segment at the catalog head's high-water mark (a multiple of 16, pushed
    /// synchronously), and the one archived after it.
    at_mark: String,
    above_mark: String,
    /// The head as it was right after the first backup.
    early_head: Vec<u8>,
    /// Rows in table `t` at the end.
    rows: String,
}

fn archived(backend: Backend) -> Archived {
    let env = TestEnv::new(EnvOptions::new(backend));
    set_state_dir(&env);
    let pg = env.cluster("pg");
    pg.start().unwrap();
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql("postgres", "create table t(x int)").unwrap();
    let older = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let early_head = env.read_object("clusters/main/head").expect("catalog head");
    for i in 0..2 {
        pg.psql("postgres", &format!("insert into t values ({i})"))
            .unwrap();
        switch_wal(&pg);
    }
    let newer = backup_json(&env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Archive until a segment whose number is a multiple of 16: archive-push moves the
    // high-water mark there.
    let mut i = 10;
    let at_mark = loop {
        pg.psql("postgres", &format!("insert into t values ({i})"))
            .unwrap();
        i += 1;
        let s = switch_wal(&pg);
        if segno(&s).is_multiple_of(16) {
            break s;
        }
    };
    pg.psql("postgres", "insert into t values (1000)").unwrap();
    let above_mark = switch_wal(&pg);
    wait_archived(&pg, &above_mark, Duration::from_secs(90));
    let rows = pg.psql("postgres", "select count(*) from t").unwrap();
    Archived {
        env,
        pg,
        older,
        newer,
        at_mark,
        above_mark,
        early_head,
        rows,
    }
}

fn verify(env: &TestEnv) -> Output {
    env.pgcairn(&["--progress", "never", "verify"])
}

fn info(env: &TestEnv) -> Output {
    env.pgcairn(&["info"])
}

fn info_json(env: &TestEnv) -> serde_json::Value {
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "info --output json");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `restore` into a fresh directory that must stay untouched when it is refused.
fn restore_refused(env: &TestEnv, name: &str, args: &[&str]) -> Output {
    let dir = env.path().join(name);
    let mut all = vec!["--progress", "never", "restore", "--pgdata"];
    let d = dir.display().to_string();
    all.push(&d);
    all.extend_from_slice(args);
    let out = env.pgcairn(&all);
    let written = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "a refused restore wrote into {}", dir.display());
    out
}

fn archive_get(env: &TestEnv, seg: &str) -> Output {
    let dest = env.path().join("fetched");
    let _ = std::fs::remove_file(&dest);
    env.pgcairn(&["archive-get", seg, &dest.display().to_string()])
}

fn clean(env: &TestEnv, what: &str) {
    let out = verify(env);
    assert_says(&out, 0, &["ok"], &format!("verify after {what}"));
    let out = env.pgcairn(&["--progress", "never", "verify", "--index-memory", "0"]);
    assert_says(
        &out,
        0,
        &["ok"],
        &format!("verify through the on-disk index after {what}"),
    );
}

/// The checks every backend runs.
fn tampering_is_noticed(a: &Archived) {
    let env = &a.env;
    clean(env, "archiving");
    let doc = info_json(env);
    let catalog = &doc["clusters"][0]["catalog"];
    assert!(catalog["generation"].as_u64().unwrap() >= 3, "{catalog}");
    assert_eq!(catalog["missing_backups"], serde_json::json!([]));

    // 1. The newest backup's manifest is deleted.
    let manifest = format!("clusters/main/backups/{}/manifest", a.newer);
    let saved = env.read_object(&manifest).unwrap();
    env.delete_object(&manifest);
    assert_says(&verify(env), 1, &[&manifest], "verify, manifest deleted");
    assert_says(
        &restore_refused(env, "r-manifest", &[]),
        1,
        &[
            &a.newer,
            &format!("--backup {}", a.older),
            "Nothing was written",
        ],
        "restore, manifest deleted",
    );
    assert_says(
        &info(env),
        0,
        &["MISSING", &manifest],
        "info, manifest deleted",
    );
    assert_eq!(
        info_json(env)["clusters"][0]["catalog"]["missing_backups"],
        serde_json::json!([a.newer])
    );
    env.write_object(&manifest, &saved);
    clean(env, "the manifest was put back");

    // 1b. A pin object is deleted: the head still records the pin.
    assert_says(&env.pgcairn(&["pin", &a.older]), 0, &[], "pin");
    let pin = format!("clusters/main/pins/{}", a.older);
    assert!(env.read_object(&pin).is_some(), "the pin object is written");
    env.delete_object(&pin);
    assert_says(
        &verify(env),
        1,
        &[&pin, "deleted outside pgcairn"],
        "verify, pin deleted",
    );
    assert_eq!(
        info_json(env)["clusters"][0]["catalog"]["missing_pins"],
        serde_json::json!([a.older])
    );
    assert_says(&env.pgcairn(&["pin", &a.older]), 0, &[], "pin again");
    clean(env, "the pin was written again");
    assert_says(&env.pgcairn(&["unpin", &a.older]), 0, &[], "unpin");
    clean(env, "unpinned");

    // 2. The WAL record at the high-water mark is deleted: lost, not "absent".
    let record = record_key(&a.at_mark);
    let saved = env.read_object(&record).unwrap();
    env.delete_object(&record);
    assert_says(
        &archive_get(env, &a.at_mark),
        200,
        &[&a.at_mark, "catalog head"],
        "archive-get, record at the mark deleted",
    );
    assert_says(&verify(env), 1, &[&a.at_mark], "verify, record deleted");
    assert_says(
        &restore_refused(env, "r-record", &[]),
        1,
        &[&a.at_mark, "catalog head"],
        "restore, record deleted",
    );
    assert_says(
        &info(env),
        0,
        &["MISSING", &a.at_mark],
        "info, record deleted",
    );
    env.write_object(&record, &saved);
    assert_says(
        &archive_get(env, &a.at_mark),
        0,
        &[],
        "archive-get, put back",
    );
    clean(env, "the record was put back");

    // 3. The WAL data behind that record is deleted.
    let data = env.wal_data_key(&a.at_mark);
    let saved = env.read_object(&data).unwrap();
    env.delete_object(&data);
    assert_says(
        &archive_get(env, &a.at_mark),
        200,
        &[&a.at_mark],
        "archive-get, data deleted",
    );
    assert_says(&verify(env), 1, &[&a.at_mark], "verify, data deleted");
    assert_says(
        &restore_refused(env, "r-data", &[]),
        1,
        &[&a.at_mark],
        "restore, data deleted",
    );
    assert_says(
        &info(env),
        0,
        &["MISSING", &a.at_mark],
        "info, data deleted",
    );
    env.write_object(&data, &saved);
    clean(env, "the data was put back");

    // 4. Above the mark, the head cannot vouch for a segment (documented bound): absent.
    let record = record_key(&a.above_mark);
    let saved = env.read_object(&record).unwrap();
    env.delete_object(&record);
    assert_says(
        &archive_get(env, &a.above_mark),
        1,
        &[],
        "archive-get above the mark",
    );
    env.write_object(&record, &saved);

    // 5. An index segment is deleted, then one is copied under another segment's name.
    let index = env.list_objects("index/");
    assert!(!index.is_empty());
    let victim = &index[0];
    let saved = env.read_object(victim).unwrap();
    env.delete_object(victim);
    assert_says(
        &verify(env),
        1,
        &["no index segment"],
        "verify, index segment deleted",
    );
    // The same with the repository's index in a table on disk (one over --index-memory).
    assert_says(
        &env.pgcairn(&["--progress", "never", "verify", "--index-memory", "0"]),
        1,
        &["no index segment"],
        "verify through the on-disk index, index segment deleted",
    );
    let dir = env.path().join("r-index").display().to_string();
    let out = env.pgcairn(&["--progress", "never", "restore", "--pgdata", &dir]);
    assert_ne!(
        code(&out),
        0,
        "restore without an index segment: {}",
        text(&out)
    );
    // The same with the block index in a table on disk (a cluster over --index-memory):
    // refused before anything is written, saying what nothing indexes (a block list, read
    // with the manifest, or a block, found by the preflight: whichever the deleted segment
    // held).
    assert_says(
        &restore_refused(env, "r-index-table", &["--index-memory", "0"]),
        1,
        &["corrupt object", "index segment"],
        "restore through the on-disk index, index segment deleted",
    );
    env.write_object(victim, &saved);
    clean(env, "the index segment was put back");

    // 5b. The packs are deleted: both kinds of index refuse the restore before writing,
    // naming the pack (of a block list, read with the manifest, or of a block, probed by the
    // preflight).
    let packs: Vec<(String, Vec<u8>)> = env
        .list_objects("packs/")
        .into_iter()
        .map(|k| {
            let saved = env.read_object(&k).unwrap();
            (k, saved)
        })
        .collect();
    assert!(!packs.is_empty());
    for (k, _) in &packs {
        env.delete_object(k);
    }
    for (name, args) in [
        ("r-pack", &[][..]),
        ("r-pack-table", &["--index-memory", "0"][..]),
    ] {
        assert_says(
            &restore_refused(env, name, args),
            1,
            &["corrupt object", "pack"],
            &format!("restore {args:?}, packs deleted"),
        );
    }
    for (k, saved) in &packs {
        env.write_object(k, saved);
    }
    clean(env, "the packs were put back");
    let renamed = format!("index/{}", "ab".repeat(32));
    env.write_object(&renamed, &saved);
    assert_says(
        &verify(env),
        1,
        &[&renamed, "authenticate"],
        "verify, renamed index segment",
    );
    env.delete_object(&renamed);
    clean(env, "the renamed index segment was removed");

    // 6. The head is rolled back to a copy from before the second backup, then deleted.
    let head = "clusters/main/head";
    let current = env.read_object(head).unwrap();
    env.write_object(head, &a.early_head);
    assert_says(
        &verify(env),
        1,
        &[head, "older copy"],
        "verify, head rolled back",
    );
    assert_says(
        &restore_refused(env, "r-rollback", &[]),
        1,
        &[head, "--backup"],
        "restore, head rolled back",
    );
    assert_says(
        &archive_get(env, "0000000100000000000000F0"),
        200,
        &[head],
        "archive-get, head rolled back",
    );
    assert_says(&info(env), 0, &["MISSING", head], "info, head rolled back");
    env.delete_object(head);
    assert_says(&verify(env), 1, &[head, "missing"], "verify, head deleted");
    assert_says(
        &restore_refused(env, "r-nohead", &[]),
        1,
        &[head],
        "restore, head deleted",
    );
    env.write_object(head, &current);
    clean(env, "the head was put back");
}

/// A server restored before a segment its recovery needs is deleted: recovery must stop with
/// an error (archive-get 200), never end early and promote; with the segment back it
/// recovers everything.
fn recovery_aborts_instead_of_ending_early(a: &Archived) {
    let env = &a.env;
    env.restore("r1", &["--backup", &a.newer]);
    let record = record_key(&a.at_mark);
    let saved = env.read_object(&record).unwrap();
    env.delete_object(&record);
    let r1 = Instance::new(
        PgBinaries::find().unwrap(),
        env.path().join("r1"),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    r1.configure(&[("archive_mode", "off".into())]).unwrap();
    let _stop = StopOnDrop(&r1);
    let _ = r1.start(); // may return before or after the startup process gives up
    let log = r1.datadir.join("pgcairn-server.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while r1.datadir.join("postmaster.pid").exists() {
        assert!(
            Instant::now() < deadline,
            "recovery did not stop at the deleted segment; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        server_log.contains("exit code 200") && server_log.contains(&a.at_mark),
        "PostgreSQL saw archive-get abort on {}:\n{server_log}",
        a.at_mark
    );
    assert!(
        !Path::new(&r1.datadir.join("pg_wal/00000002.history")).exists(),
        "recovery must not have ended and promoted:\n{server_log}"
    );
    env.write_object(&record, &saved);
    r1.start().unwrap();
    wait_recovered(&r1, "r1", Duration::from_secs(180));
    assert_eq!(
        r1.psql("postgres", "select count(*) from t").unwrap(),
        a.rows,
        "every archived row is back"
    );
}

#[test]
fn deletions_and_rollbacks_are_noticed_on_file() {
    let a = archived(Backend::File);
    let _stop = StopOnDrop(&a.pg);
    a.pg.stop().unwrap();
    tampering_is_noticed(&a);
    recovery_aborts_instead_of_ending_early(&a);
}

#[test]
fn deletions_and_rollbacks_are_noticed_on_s3() {
    if s3_endpoint().is_none() {
        return;
    }
    let a = archived(Backend::S3);
    let _stop = StopOnDrop(&a.pg);
    a.pg.stop().unwrap();
    tampering_is_noticed(&a);
}

#[test]
fn a_forged_wal_record_stops_archive_push_and_is_left_alone() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    backup_json(&env, &["--type", "full"]);
    let seg = switch_wal(&pg);
    wait_archived(&pg, &seg, Duration::from_secs(60));
    // A garbage object where a WAL record goes: archive-push reports it, and leaves it.
    pg.psql("postgres", "create table u(x int)").unwrap();
    let next = pg
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    let key = record_key(&next);
    env.write_object(&key, b"{\"content_id\": \"forged\"}");
    switch_wal(&pg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failed = pg
            .psql(
                "postgres",
                "select coalesce(last_failed_wal, '') from pg_stat_archiver",
            )
            .unwrap();
        if failed == next {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archive-push of {next} did not fail"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        env.read_object(&key).unwrap(),
        b"{\"content_id\": \"forged\"}",
        "archive-push never overwrites or deletes"
    );
    let server_log = std::fs::read_to_string(pg.datadir.join("pgcairn-server.log")).unwrap();
    assert!(
        server_log.contains(&key) && server_log.contains("wal-record"),
        "the forged record is named:\n{server_log}"
    );
    env.delete_object(&key);
    wait_archived(&pg, &next, Duration::from_secs(60));
}
