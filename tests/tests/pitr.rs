//! Point-in-time recovery end to end: rows stamped with their time and sequence number are
//! committed continuously while backups run; restores to a time, an LSN, an XID and a named
//! restore point give exactly the rows committed up to the target; timelines; preflight.

use std::time::Duration;

use pgcairn_tests::*;

const WRITER: &str = "do $$ begin for i in 1..600 loop insert into stamps(seq) values (i); commit; perform pg_sleep(0.01); end loop; end $$";

struct Source<'a> {
    env: &'a TestEnv,
    pg: &'a Instance,
}

impl Source<'_> {
    fn q(&self, sql: &str) -> String {
        self.pg.psql("postgres", sql).unwrap()
    }
}

fn max_seq(inst: &Instance) -> i64 {
    inst.psql(
        "postgres",
        "select coalesce(max(seq), 0) from stamps where seq < 100000",
    )
    .unwrap()
    .parse()
    .unwrap()
}

fn has(inst: &Instance, seq: i64) -> bool {
    inst.psql(
        "postgres",
        &format!("select count(*) from stamps where seq = {seq}"),
    )
    .unwrap()
        == "1"
}

/// Builds the source: backups taken while the writer commits rows.
fn prepare(env: &TestEnv, pg: &Instance) -> (String, String) {
    pg.psql("postgres", "create table stamps(seq bigint primary key, ts timestamptz not null default clock_timestamp(), xid bigint not null default txid_current())").unwrap();
    let writer = {
        let pg = pg.clone();
        std::thread::spawn(move || pg.psql("postgres", WRITER).unwrap())
    };
    std::thread::sleep(Duration::from_millis(1500));
    let full = backup_json(env, &["--type", "full"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let incr = backup_json(env, &[])["id"].as_str().unwrap().to_string();
    writer.join().unwrap();
    (full, incr)
}

fn pitr_targets(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let (full, incr) = prepare(&env, &pg);
    let src = Source { env: &env, pg: &pg };
    let n: i64 = src.q("select max(seq) from stamps").parse().unwrap();
    assert_eq!(n, 600);

    // LSN and restore point targets after the writer.
    src.q("insert into stamps(seq) values (100001)");
    let lsn = src.q("select pg_current_wal_insert_lsn()");
    src.q("insert into stamps(seq) values (100002)");
    src.q("insert into stamps(seq) values (100003)");
    let rp = src.env.pgcairn(&["restore-point", "rp_before_4"]);
    assert_success(&rp, "restore-point");
    src.q("insert into stamps(seq) values (100004)");
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    // Time: a row committed after the full backup, before the incremental.
    let full_stop: String = {
        let info = env.pgcairn(&["info", "--output", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        doc["clusters"][0]["backups"][0]["stop_time"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let k: i64 = src
        .q(&format!("select min(seq) + 20 from stamps where ts > '{full_stop}'::timestamptz and seq < 100000"))
        .parse()
        .unwrap();
    // Just before row k+1 was stamped: row k committed already (10 ms sleep between rows).
    let t = src.q(&format!("select to_char((ts - interval '1 millisecond') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' from stamps where seq = {}", k + 1));
    let r = env.restore_and_start_with(
        "by_time",
        &["--target-time", &t, "--target-action", "promote"],
        false,
    );
    assert_eq!(
        max_seq(&r),
        k,
        "restore to {t} has exactly the rows committed by then"
    );
    assert!(!has(&r, 100001));
    // The restore's restore_command prefetches (archive.async is off here).
    let rc = r.psql("postgres", "show restore_command").unwrap();
    assert!(rc.contains(" archive-get --prefetch %f %p"), "{rc}");
    assert!(
        env.prefetch_dir_of(&r.datadir)
            .join("get-stats.json")
            .exists(),
        "the recovery went through the prefetch spool"
    );
    r.stop().unwrap();
    // The area is this repository's: the prefetcher recorded which one it fetched from.
    let mut recorded = String::new();
    for _ in 0..100 {
        recorded = std::fs::read_to_string(env.prefetch_dir_of(&r.datadir).join(".repository"))
            .unwrap_or_default();
        if !recorded.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        Some(recorded.as_str()),
        doc["repository"]["repo_id"].as_str(),
        "the prefetch area names its repository: {doc}"
    );
    let out = env.restore("by_time_plan", &["--target-time", &t, "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&full) && text.contains("precedes"),
        "the full backup is chosen for a time before the incremental: {text}"
    );
    assert!(
        !env.path().join("by_time_plan").join("PG_VERSION").exists(),
        "--dry-run writes nothing"
    );
    // A dry run refuses what the restore would: a target in use, unless --delta says to
    // restore over it.
    let target = env.path().join("by_time_plan");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("in-use"), b"x").unwrap();
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        target.to_str().unwrap(),
        "--target-time",
        &t,
        "--dry-run",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("is not empty"),
        "a dry run into a directory in use: {}",
        stderr(&out)
    );
    let out = env.restore(
        "by_time_plan",
        &["--target-time", &t, "--dry-run", "--delta"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&full),
        "with --delta the dry run plans over it"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        1,
        "--dry-run --delta writes nothing"
    );
    // Over the data directory of a running server, --delta is refused, dry run or not.
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        pg.datadir.to_str().unwrap(),
        "--target-time",
        &t,
        "--dry-run",
        "--delta",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("in use by a running PostgreSQL"),
        "a dry run over a running server's directory: {}",
        stderr(&out)
    );

    // XID, inclusive and exclusive.
    let xid = src.q(&format!("select xid from stamps where seq = {k}"));
    let r = env.restore_and_start_with(
        "by_xid",
        &["--target-xid", &xid, "--target-action", "promote"],
        false,
    );
    assert_eq!(
        max_seq(&r),
        k,
        "inclusive xid target includes its transaction"
    );
    r.stop().unwrap();
    let r = env.restore_and_start_with(
        "by_xid_excl",
        &[
            "--target-xid",
            &xid,
            "--target-exclusive",
            "--target-action",
            "promote",
        ],
        false,
    );
    assert_eq!(
        max_seq(&r),
        k - 1,
        "exclusive xid target stops just before it"
    );
    r.stop().unwrap();

    // LSN.
    let r = env.restore_and_start_with(
        "by_lsn",
        &["--target-lsn", &lsn, "--target-action", "promote"],
        false,
    );
    assert!(has(&r, 100001) && !has(&r, 100002), "lsn target {lsn}");
    assert_eq!(max_seq(&r), 600);
    r.stop().unwrap();

    // The replay settings are in force during recovery; after promotion, nothing pgcairn
    // wrote is read any more (only recovery parameters).
    replay_settings_only_during_recovery(&env, &lsn);

    // Restore point.
    let r = env.restore_and_start_with(
        "by_name",
        &["--target-name", "rp_before_4", "--target-action", "promote"],
        false,
    );
    assert!(has(&r, 100003) && !has(&r, 100004), "restore point target");
    r.stop().unwrap();

    // End of archive, from the incremental.
    let r = env.restore_and_start_with("to_end", &["--backup", &incr], false);
    assert!(has(&r, 100004));
    r.stop().unwrap();
}

/// Restores to `lsn` and pauses there: the replay settings are in force while the server
/// recovers; once it is promoted, every setting the restore wrote is a recovery parameter
/// that PostgreSQL no longer reads (nothing stays in effect for the promoted server).
fn replay_settings_only_during_recovery(env: &TestEnv, lsn: &str) {
    env.restore("paused", &["--target-lsn", lsn, "--target-action", "pause"]);
    let r = Instance::new(
        PgBinaries::find().unwrap(),
        env.path().join("paused"),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    r.configure(&[("archive_mode", "off".into())]).unwrap();
    r.start().unwrap();
    let _stop = StopOnDrop(&r);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while r
        .psql("postgres", "select pg_get_wal_replay_pause_state()")
        .unwrap()
        != "paused"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never paused at the target"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let q = |sql: &str| r.psql("postgres", sql).unwrap();
    assert_eq!(q("select pg_is_in_recovery()"), "t");
    assert_eq!(
        q("show wal_decode_buffer_size"),
        "4MB",
        "in force during recovery"
    );
    assert_eq!(
        q("select source from pg_settings where name = 'maintenance_io_concurrency'"),
        "default",
        "a setting the primary also reads is left alone"
    );
    q("select pg_wal_replay_resume()");
    wait_recovered(&r, "paused", Duration::from_secs(60));
    // Every setting pgcairn's block holds is read only during recovery.
    let conf = std::fs::read_to_string(env.path().join("paused/postgresql.auto.conf")).unwrap();
    let block: Vec<&str> = conf
        .lines()
        .skip_while(|l| !l.starts_with("# pgcairn recovery settings (begin)"))
        .take_while(|l| !l.starts_with("# pgcairn recovery settings (end)"))
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('=').next().unwrap().trim())
        .collect();
    assert!(block.contains(&"wal_decode_buffer_size"), "{conf}");
    for name in block {
        let recovery_only = name == "restore_command"
            || name.starts_with("recovery_target")
            || name == "wal_decode_buffer_size";
        assert!(
            recovery_only,
            "{name} stays in effect after promotion: {conf}"
        );
        let category = q(&format!(
            "select category from pg_settings where name = '{name}'"
        ));
        assert!(
            category.contains("Recovery"),
            "{name} is a recovery parameter, PostgreSQL says {category:?}"
        );
    }
    r.stop().unwrap();
}

#[test]
fn every_recovery_target_gives_exactly_the_committed_rows() {
    for b in backends() {
        pitr_targets(b);
    }
}

#[test]
fn preflight_refuses_unreachable_targets_before_writing() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let before = pg
        .psql(
            "postgres",
            "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (_full, _incr) = prepare(&env, &pg);
    pg.psql("postgres", "insert into stamps(seq) values (100001)")
        .unwrap();
    let lsn = pg
        .psql("postgres", "select pg_current_wal_insert_lsn()")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    // A target before the oldest backup.
    let target = env.path().join("early");
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target.display().to_string(),
        "--target-time",
        &before,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("earliest reachable"),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("PG_VERSION").exists());

    // A bare timestamp is refused, not guessed.
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target.display().to_string(),
        "--target-time",
        "2026-01-01 00:00:00",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("time zone"), "{}", stderr(&out));

    // Remove a WAL segment the target needs: named, with the latest reachable point.
    let seg: String = pg
        .psql(
            "postgres",
            &format!("select pg_walfile_name('{lsn}'::pg_lsn)"),
        )
        .unwrap();
    let pointer = env
        .path()
        .join(format!("repo/clusters/main/wal/{}/{seg}", &seg[..8]));
    assert!(pointer.exists(), "{}", pointer.display());
    std::fs::remove_file(&pointer).unwrap();
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target.display().to_string(),
        "--target-lsn",
        &lsn,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&seg) && err.contains("missing"), "{err}");
    assert!(err.contains("latest reachable"), "{err}");
    assert!(
        !target.join("PG_VERSION").exists(),
        "nothing written before the preflight passed"
    );
}

/// A segment whose record is still in the archive but whose data object is gone: the
/// preflight must see the hole (archive-get would fail there and PostgreSQL stop), refuse a
/// restore to a later target with exit 1 before writing anything, name the segment and the
/// latest reachable point; `--dry-run` reports the same and `verify` names the record.
fn lost_data_object(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "create table t(v int)").unwrap();
    backup_json(&env, &["--type", "full"]);
    pg.psql("postgres", "insert into t values (1)").unwrap();
    let before_hole = switch_wal(&pg);
    pg.psql("postgres", "insert into t values (2)").unwrap();
    let hole = switch_wal(&pg);
    // Time targets are placed by when segments were archived: wait until the hole is archived
    // before taking the target, so the target lies after it however slow the archiver is.
    wait_archived(&pg, &hole, Duration::from_secs(90));
    pg.psql("postgres", "insert into t values (3)").unwrap();
    let target = pg
        .psql(
            "postgres",
            "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    pg.psql("postgres", "insert into t values (4)").unwrap();
    switch_wal(&pg);
    pg.psql("postgres", "insert into t values (5)").unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    let data_key = env.wal_data_key(&hole);
    env.delete_object(&data_key);

    let dir = env.path().join("restored");
    for (what, extra) in [
        ("--target-time", vec!["--target-time", target.as_str()]),
        (
            "--target-time --dry-run",
            vec!["--target-time", target.as_str(), "--dry-run"],
        ),
        ("end of archive", vec![]),
    ] {
        let d = dir.display().to_string();
        let mut args = vec!["--progress", "never", "restore", "--pgdata", d.as_str()];
        args.extend(extra);
        let out = env.pgcairn(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{backend:?} {what}: {err}");
        assert!(
            err.contains(&hole) && err.contains("data object is missing"),
            "{backend:?} {what}: names the segment: {err}"
        );
        assert!(
            err.contains(&data_key),
            "{backend:?} {what}: names {data_key}: {err}"
        );
        assert!(
            err.contains("latest reachable") && err.contains(&before_hole),
            "{backend:?} {what}: names the latest reachable point (end of {before_hole}): {err}"
        );
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{backend:?} {what}: nothing written to {}",
            dir.display()
        );
    }

    let out = env.pgcairn(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!("clusters/main/wal/{}/{hole}", &hole[..8]))
            && text.contains("data object"),
        "{backend:?}: verify reports the record without data: {text}{}",
        stderr(&out)
    );
    assert_ne!(out.status.code(), Some(0), "{backend:?}: verify fails");
}

#[test]
fn restore_refuses_a_wal_record_whose_data_object_is_gone() {
    for b in backends() {
        lost_data_object(b);
    }
}

/// A restore to a transaction id starts from the newest backup consistent before that
/// transaction committed. A transaction X that commits while an older one L stays open lies
/// between the snapshot's xmin and xmax at the next backup's stop without being running:
/// that backup is after X's commit. Judged by xmin alone it was chosen, and PostgreSQL,
/// replaying from after the commit, ended with "recovery ended before configured recovery
/// target was reached"; the backup before it is the right one.
#[test]
fn an_xid_target_committed_while_an_older_transaction_was_open_restores_from_the_backup_before_it()
{
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t(x int, xid bigint not null default txid_current())",
    )
    .unwrap();
    let before = backup_json(&env, &["--type", "full"]);
    // L: an open transaction with an xid, older than X.
    let open = {
        let pg = pg.clone();
        std::thread::spawn(move || {
            pg.psql(
                "postgres",
                "begin; select txid_current(); select pg_sleep(120); commit",
            )
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pg
        .psql(
            "postgres",
            "select count(*) from pg_stat_activity where backend_xid is not null and query like '%pg_sleep(120)%'",
        )
        .unwrap()
        != "1"
    {
        assert!(std::time::Instant::now() < deadline, "the open transaction never got its xid");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.psql("postgres", "insert into t(x) values (1)").unwrap();
    let xid_x = pg
        .psql("postgres", "select xid from t where x = 1")
        .unwrap();
    let after = backup_json(&env, &["--type", "full"]);
    pg.psql(
        "postgres",
        "select pg_terminate_backend(pid) from pg_stat_activity where query like '%pg_sleep(120)%' and pid <> pg_backend_pid()",
    )
    .unwrap();
    let _ = open.join();
    pg.psql("postgres", "insert into t(x) values (2)").unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    let target = env.path().join("xid_plan");
    let plan = env.pgcairn(&[
        "restore",
        "--dry-run",
        "--pgdata",
        &target.display().to_string(),
        "--target-xid",
        &xid_x,
    ]);
    assert_success(&plan, "restore --dry-run --target-xid");
    let text = String::from_utf8_lossy(&plan.stdout).to_string() + &stderr(&plan);
    let (before_id, after_id) = (
        before["id"].as_str().unwrap(),
        after["id"].as_str().unwrap(),
    );
    assert!(
        text.contains(before_id) && !text.contains(after_id),
        "the backup before transaction {xid_x} committed ({before_id}), not {after_id}: {text}"
    );
    let r = env.restore_and_start_with(
        "xid",
        &["--target-xid", &xid_x, "--target-action", "promote"],
        false,
    );
    assert_eq!(
        r.psql(
            "postgres",
            "select string_agg(x::text, ',' order by x) from t"
        )
        .unwrap(),
        "1"
    );
    r.stop().unwrap();
}

#[test]
fn timelines_restore_to_either_side_of_a_fork() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let (_full, _incr) = prepare(&env, &pg);
    let xid_k = pg
        .psql("postgres", "select xid from stamps where seq = 590")
        .unwrap();
    let xid_late = pg
        .psql("postgres", "select xid from stamps where seq = 598")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    // A backup of timeline 1 after the fork point made below: not on timeline 2's history, so
    // a restore along the latest timeline must not start from it (PostgreSQL would refuse).
    let late = backup_json(&env, &["--type", "full"]);
    let late_id = late["id"].as_str().unwrap().to_string();
    drop(stop);
    pg.stop().unwrap();

    // Recover to row 590 (after the first two backups) and promote: timeline 2, archiving
    // into the same repository.
    let t2 = env.restore_and_start_with(
        "tl2",
        &["--target-xid", &xid_k, "--target-action", "promote"],
        true,
    );
    let stop_t2 = StopOnDrop(&t2);
    assert_eq!(max_seq(&t2), 590);
    assert_eq!(
        t2.psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()"
        )
        .unwrap(),
        "2"
    );
    t2.psql("postgres", "insert into stamps(seq) values (200001)")
        .unwrap();
    let seg = switch_wal(&t2);
    wait_archived(&t2, &seg, Duration::from_secs(90));
    drop(stop_t2);
    t2.stop().unwrap();

    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let tls: Vec<u64> = doc["clusters"][0]["wal"]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert!(tls.contains(&2), "info shows the new timeline: {tls:?}");

    // The late backup along the latest timeline: refused before anything is written, naming
    // the timelines and what to do instead.
    let target = env.path().join("late_on_2");
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target.display().to_string(),
        "--backup",
        &late_id,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not on the history of timeline 2")
            && stderr(&out).contains("--target-timeline 1"),
        "{}",
        stderr(&out)
    );
    assert!(!target.join("PG_VERSION").exists());

    // Latest timeline: the rows written on timeline 2, from a backup before the fork (the
    // late backup is newer but off timeline 2's history).
    let r = env.restore_and_start_with("follow_latest", &[], false);
    assert!(has(&r, 200001) && max_seq(&r) == 590, "timeline 2 data");
    r.stop().unwrap();
    // Timeline 1 after the fork point: the original history.
    let r = env.restore_and_start_with(
        "stay_on_1",
        &[
            "--target-timeline",
            "1",
            "--target-xid",
            &xid_late,
            "--target-action",
            "promote",
        ],
        false,
    );
    assert!(!has(&r, 200001));
    assert_eq!(max_seq(&r), 598, "timeline 1 after the fork");
    r.stop().unwrap();
}

#[test]
fn delta_standby_and_tablespace_remapping() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    env.create_tablespace(&pg, "ts_src");
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.psql(
        "postgres",
        "create table in_ts tablespace extra as select g from generate_series(1, 5000) g",
    )
    .unwrap();
    let oid = pg
        .psql(
            "postgres",
            "select oid from pg_tablespace where spcname = 'extra'",
        )
        .unwrap();
    let b = backup_json(&env, &["--type", "full"]);
    let expected = pgbench_fingerprint(&pg);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    // Remap the tablespace: the source's location is untouched.
    let remapped = env.path().join("ts_remapped");
    let map = format!("{oid}={}", remapped.display());
    let r = env.restore_and_start_with("remap", &["--tablespace-map", &map], false);
    assert_eq!(
        r.psql("postgres", "select count(*) from in_ts").unwrap(),
        "5000"
    );
    assert_eq!(
        std::fs::read_link(r.datadir.join("pg_tblspc").join(&oid)).unwrap(),
        remapped,
        "pg_tblspc link points at the remapped location"
    );
    assert_eq!(pgbench_fingerprint(&r), expected);
    // Change it, then a delta restore brings it back, reusing what did not change.
    r.psql(
        "postgres",
        "update pgbench_accounts set abalance = abalance + 1 where aid < 1000",
    )
    .unwrap();
    r.psql("postgres", "create table junk as select 1").unwrap();
    r.psql("postgres", "checkpoint").unwrap();
    // A running server is refused.
    let target = r.datadir.display().to_string();
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target,
        "--delta",
        "--tablespace-map",
        &map,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("running PostgreSQL"),
        "{}",
        stderr(&out)
    );
    r.stop().unwrap();
    std::fs::write(r.datadir.join("stray_file"), b"x").unwrap();
    let out = env.pgcairn(&[
        "--progress",
        "never",
        "restore",
        "--pgdata",
        &target,
        "--delta",
        "--tablespace-map",
        &map,
        "--backup",
        b["id"].as_str().unwrap(),
    ]);
    assert_success(&out, "delta restore");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let reused: f64 = text
        .split("delta: ")
        .nth(1)
        .and_then(|t| t.split(" MiB reused").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1.0);
    assert!(
        reused > 10.0,
        "most of the data directory is reused: {text}"
    );
    assert!(
        !r.datadir.join("stray_file").exists(),
        "files the backup does not have are removed"
    );
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "the delta restore", Duration::from_secs(120));
    assert_eq!(
        pgbench_fingerprint(&r),
        expected,
        "delta restore gives the backup's data back"
    );
    assert_eq!(
        r.psql(
            "postgres",
            "select count(*) from pg_class where relname = 'junk'"
        )
        .unwrap(),
        "0"
    );
    r.stop().unwrap();

    // Standby: standby.signal, stays in recovery following the archive.
    env.restore(
        "standby",
        &[
            "--type",
            "standby",
            "--tablespace-map",
            &format!("{oid}={}", env.path().join("ts_standby").display()),
        ],
    );
    let sdir = env.path().join("standby");
    assert!(sdir.join("standby.signal").exists() && !sdir.join("recovery.signal").exists());
    let s = Instance::new(
        PgBinaries::find().unwrap(),
        sdir,
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    s.configure(&[("archive_mode", "off".into())]).unwrap();
    s.start().unwrap();
    let _stop_s = StopOnDrop(&s);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(fp) = s.psql("postgres", "select 1 from pgbench_branches limit 1") {
            if fp == "1" {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "standby never accepted read-only queries"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        s.psql("postgres", "select pg_is_in_recovery()").unwrap(),
        "t",
        "a standby stays in recovery"
    );
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        "/tmp/never",
        "--type",
        "standby",
        "--target-lsn",
        "0/1",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

/// A restore makes the first start skip the redundant fsync of every file
/// (`recovery_init_sync_method = syncfs`), and nothing of that stays: the first archive-get
/// removes the setting and reloads the server, for a promoted restore and for a standby,
/// leaving the operator's own settings alone; a second restore into the directory writes
/// it once.
#[test]
fn the_first_start_sync_setting_is_gone_once_recovery_fetched_wal() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "alter system set work_mem = '7MB'")
        .unwrap();
    pg.psql("postgres", "create table stamps (id int primary key)")
        .unwrap();
    pg.psql(
        "postgres",
        "insert into stamps select generate_series(1, 50)",
    )
    .unwrap();
    let b = backup_json(&env, &["--type", "full"]);
    let id = b["id"].as_str().unwrap();
    pg.psql(
        "postgres",
        "insert into stamps select generate_series(51, 60)",
    )
    .unwrap();
    let target = pg.psql("postgres", "select now()::text").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    pg.psql(
        "postgres",
        "insert into stamps select generate_series(61, 80)",
    )
    .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    let args = ["--target-time", &target, "--target-action", "promote"];
    env.restore("pitr", &args);
    let dir = env.path().join("pitr");
    assert_eq!(first_start_blocks(&dir), 1);
    // Again, as a delta restore: still one block.
    let delta: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--delta", "--backup", id])
        .collect();
    env.restore("pitr", &delta);
    assert_eq!(
        first_start_blocks(&dir),
        1,
        "a second restore writes it once"
    );
    let r = env.restored_instance("pitr", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "pitr", Duration::from_secs(120));
    let q = |i: &Instance, sql: &str| i.psql("postgres", sql).unwrap();
    assert_eq!(
        q(&r, "select count(*) || ':' || max(id) from stamps"),
        "60:60"
    );
    assert_eq!(
        first_start_blocks(&dir),
        0,
        "removed by the first archive-get"
    );
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("work_mem = '7MB'") && conf.contains("restore_command"),
        "only the first-start block goes: {conf}"
    );
    let log = std::fs::read_to_string(dir.join("pgcairn-server.log")).unwrap();
    assert!(
        log.contains("received SIGHUP, reloading configuration files"),
        "archive-get had the server reload: {log}"
    );
    // Reloaded: the running server already syncs with fsync after a crash.
    assert_eq!(q(&r, "show recovery_init_sync_method"), "fsync");
    assert_eq!(q(&r, "show work_mem"), "7MB");
    r.stop().unwrap();
    r.start().unwrap();
    assert_eq!(q(&r, "show recovery_init_sync_method"), "fsync");
    assert_eq!(q(&r, "select count(*) from stamps"), "60");
    r.stop().unwrap();

    // A standby never ends recovery, but its first start fetches WAL like any restore. An
    // operator's own value (here in postgresql.conf) is what remains in force.
    env.restore("standby", &["--type", "standby"]);
    let sdir = env.path().join("standby");
    assert_eq!(first_start_blocks(&sdir), 1);
    let s = env.restored_instance("standby", false);
    s.configure(&[("recovery_init_sync_method", "syncfs".into())])
        .unwrap();
    s.start().unwrap();
    let _stop_s = StopOnDrop(&s);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s
        .psql("postgres", "select count(*) from stamps")
        .ok()
        .as_deref()
        != Some("80")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never replayed the archive"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(q(&s, "select pg_is_in_recovery()"), "t");
    assert_eq!(first_start_blocks(&sdir), 0, "gone while still a standby");
    assert_eq!(
        q(&s, "select setting || ' ' || (sourcefile like '%postgresql.conf') from pg_settings where name = 'recovery_init_sync_method'"),
        "syncfs true",
        "the operator's own setting stays"
    );
    s.stop().unwrap();
}
