//! High availability end to end, on real PostgreSQL 15 clusters on loopback: a primary and
//! streaming standbys made with `pg_basebackup -R`, every member archiving into one
//! repository and cluster. Backups from a standby with the primary up and down, restored and
//! compared row for row; a failover to timeline 2 with archiving carrying on, the old
//! primary's late segments (identical: accepted; a fork's different segment under the same
//! name: refused naming both content ids), PITR on both sides of the switch, backups after
//! the failover from the new primary and a new standby; a replica built with
//! `restore --type standby --primary-conninfo` that catches up from the archive and streams;
//! `check` on a standby.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgcairn_tests::*;

const MINUTE: Duration = Duration::from_secs(60);

fn rows(inst: &Instance, filter: &str) -> String {
    inst.psql(
        "postgres",
        &format!("select count(*) || ':' || coalesce(sum(i), 0) from t where {filter}"),
    )
    .unwrap()
}

fn info_backup(env: &TestEnv, id: &str) -> serde_json::Value {
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "pgcairn info");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("backup {id} not in info: {doc}"))
        .clone()
}

/// A primary of `bin`'s major with table `t` holding 1..=`rows`, and a streaming standby
/// (`archive_mode = always`) that has replayed it.
fn primary_and_standby(env: &TestEnv, bin: &PgBinaries, rows: u32) -> (Instance, Instance) {
    let primary = env.cluster_of("primary", bin);
    primary.start().unwrap();
    primary
        .psql(
            "postgres",
            &format!("create table t(i int); insert into t select generate_series(1, {rows})"),
        )
        .unwrap();
    let standby = env.standby_of(&primary, "standby", "always");
    wait_replayed(&standby, &current_lsn(&primary), MINUTE);
    (primary, standby)
}

/// Runs `f` while a thread switches WAL on `primary` every 300 ms (as `archive_timeout` would
/// on a busy primary), so the segment holding a standby backup's stop position is completed
/// and archived.
fn with_wal_switches<T>(primary: &Instance, f: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let switcher = {
        let (stop, primary) = (stop.clone(), primary.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = primary.psql("postgres", "select pg_switch_wal()");
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    switcher.join().unwrap();
    out
}

#[test]
fn standby_backups_with_the_primary_up_and_down_restore_the_exact_rows() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    env.append_config("[backup]\nstandby_wal_wait = \"15s\"\narchive_timeout = \"90s\"\n");
    let (primary, standby) = primary_and_standby(&env, &PgBinaries::find().unwrap(), 1000);
    let (_p, _s) = (StopOnDrop(&primary), StopOnDrop(&standby));
    env.use_cluster(&standby);

    // Primary up: the WAL to the stop position reaches the repository through archiving.
    let up = with_wal_switches(&primary, || backup_json(&env, &["--type", "full"]));
    assert_eq!(up["from_standby"], true, "{up}");
    assert_eq!(
        up["wal_in_backup"].as_array().unwrap().len(),
        0,
        "with the primary up the WAL is archived, not carried: {up}"
    );
    let up_id = up["id"].as_str().unwrap().to_string();

    primary
        .psql(
            "postgres",
            "insert into t select generate_series(1001, 2000)",
        )
        .unwrap();
    // The primary-up backup is restored below to its consistency point (`immediate`), and
    // PostgreSQL stops there only on reading a record after it: archive the segment holding
    // these rows (its stop may sit exactly at the end of a switched segment).
    let holding = primary
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    primary.psql("postgres", "select pg_switch_wal()").unwrap();
    wait_archived(&primary, &holding, MINUTE);
    primary
        .psql(
            "postgres",
            "insert into t select generate_series(2001, 3000)",
        )
        .unwrap();
    wait_replayed(&standby, &current_lsn(&primary), MINUTE);
    // Down as in an outage: a clean shutdown with archiving on switches WAL, which completes
    // the segment the standby stops in (when its replay ends exactly at that switch, nothing
    // needs carrying and the backup is right not to).
    primary.crash().unwrap();

    // Primary down: the segment holding the stop position is never completed, so it is
    // carried in the backup after backup.standby_wal_wait.
    let down = backup_json(&env, &["--type", "full"]);
    assert_eq!(down["from_standby"], true, "{down}");
    let carried: Vec<String> = down["wal_in_backup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(!carried.is_empty(), "nothing carried: {down}");
    // The segment holding the stop position (the one before it when the stop is exactly at
    // a segment boundary) is carried.
    let stop = down["stop_lsn"].as_str().unwrap();
    let at_boundary = u64::from_str_radix(stop.split('/').nth(1).unwrap(), 16)
        .unwrap()
        .is_multiple_of(16 << 20);
    assert!(
        Some(carried.last().unwrap().as_str()) == down["stop_wal"].as_str() || at_boundary,
        "the segment holding the stop position is carried: {down}"
    );
    for name in &carried {
        assert!(
            !env.archived(name),
            "{name} must not enter the WAL archive: the completed segment belongs there"
        );
    }
    let down_id = down["id"].as_str().unwrap().to_string();
    let info = info_backup(&env, &down_id);
    assert_eq!(info["from_standby"], true, "{info}");
    assert_eq!(
        info["wal_in_backup"].as_array().unwrap().len(),
        carried.len()
    );
    let text = env.pgcairn(&["info"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("from standby"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let verify = env.pgcairn(&["verify"]);
    assert_success(&verify, "pgcairn verify (carried WAL counts as present)");

    // check on the standby, primary down: what it checked, and what only the primary can tell.
    let check = env.pgcairn(&["check"]);
    assert_success(&check, "pgcairn check on a standby");
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(said.contains("this server is a standby"), "{said}");
    assert!(said.contains("is in the repository"), "{said}");
    assert!(
        said.contains("replays only what the archive holds"),
        "{said}"
    );
    assert!(said.contains("only the primary can tell"), "{said}");
    assert!(said.contains("pg_switch_wal"), "{said}");

    // Restores: the primary-down backup reaches consistency from its own WAL and has every
    // row; the primary-up one, at its consistency point, exactly the first thousand.
    let restored = env.restore_and_start_with("restored_down", &["--backup", &down_id], false);
    let _r = StopOnDrop(&restored);
    assert_eq!(rows(&restored, "true"), "3000:4501500");
    restored.stop().unwrap();
    restores_the_standbys_rows(&env, "restored_up", &up_id);
}

#[test]
fn failover_archives_on_timeline_2_and_pitr_reaches_both_sides() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    env.append_config("[backup]\nstandby_wal_wait = \"5s\"\narchive_timeout = \"60s\"\n");
    let p = env.cluster("p");
    p.start().unwrap();
    let _p = StopOnDrop(&p);
    p.psql("postgres", "create table t(i int, phase text)")
        .unwrap();
    let s = env.standby_of(&p, "s", "always");
    let _s = StopOnDrop(&s);
    env.use_cluster(&p);
    backup_json(&env, &["--type", "full"]);

    p.psql(
        "postgres",
        "insert into t select g, 'a' from generate_series(1, 100) g",
    )
    .unwrap();
    let lsn_a = current_lsn(&p);
    // The primary's archiving breaks (its archive_command fails): its segments pile up as
    // .ready, while the standby (archive_mode = always) archives what it receives.
    p.psql("postgres", "alter system set archive_command = 'false'")
        .unwrap();
    p.psql("postgres", "select pg_reload_conf()").unwrap();
    p.psql(
        "postgres",
        "insert into t select g, 'b' from generate_series(101, 200) g",
    )
    .unwrap();
    let seg_b = switch_wal(&p);
    wait_replayed(&s, &current_lsn(&p), MINUTE);
    env.wait_in_repository(&seg_b, MINUTE);
    p.stop().unwrap();

    // Failover.
    assert_eq!(s.psql("postgres", "select pg_promote()").unwrap(), "t");
    wait_recovered(&s, "promoted standby", MINUTE);
    env.wait_in_repository("00000002.history", MINUTE);
    let partial = std::fs::read_dir(s.datadir.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.ends_with(".partial"))
        .expect("the promoted standby's .partial of timeline 1");
    env.wait_in_repository(&partial, MINUTE);
    assert_eq!(
        std::fs::read(env.path().join(format!("fetched-{partial}"))).unwrap(),
        std::fs::read(s.datadir.join("pg_wal").join(&partial)).unwrap(),
        "the .partial comes back byte for byte"
    );
    // The same history file and .partial pushed by another member: a no-op success.
    for name in ["00000002.history", partial.as_str()] {
        let path = s.datadir.join("pg_wal").join(name);
        let out = env.pgcairn(&["archive-push", &path.display().to_string()]);
        assert_success(&out, &format!("second push of {name}"));
    }

    // Timeline 2 carries on archiving into the same cluster.
    s.psql(
        "postgres",
        "insert into t select g, 'c' from generate_series(201, 300) g",
    )
    .unwrap();
    let lsn_c = current_lsn(&s);
    s.psql(
        "postgres",
        "insert into t select g, 'd' from generate_series(301, 400) g",
    )
    .unwrap();
    let seg_d = switch_wal(&s);
    assert!(seg_d.starts_with("00000002"), "{seg_d}");
    env.wait_in_repository(&seg_d, MINUTE);

    // The old primary comes back before it is rebuilt, its archiving repaired: its late
    // timeline-1 segment is the one the standby archived, identical, so accepted.
    p.start().unwrap();
    p.psql("postgres", "alter system reset archive_command")
        .unwrap();
    p.psql("postgres", "select pg_reload_conf()").unwrap();
    wait_archived(&p, &seg_b, MINUTE);
    // It writes on (split brain): its timeline-1 segments after the fork carry names no one
    // else uses and are accepted; they are not on timeline 2's path.
    p.psql(
        "postgres",
        "insert into t select g, 'x' from generate_series(1001, 1100) g",
    )
    .unwrap();
    let seg_x = switch_wal(&p);
    wait_archived(&p, &seg_x, MINUTE);
    p.stop().unwrap();
    // A fork of the old primary writes the same segment name with other content: refused,
    // both content ids named, the archived one kept.
    let fork = env.path().join("p_fork");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&p.datadir)
        .arg(&fork)
        .status()
        .unwrap();
    assert!(cp.success());
    let fork = Instance::new(
        p.bin.clone(),
        fork,
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    fork.configure(&[("archive_mode", "off".into())]).unwrap();
    p.start().unwrap();
    p.psql(
        "postgres",
        "insert into t select g, 'y' from generate_series(2001, 2100) g",
    )
    .unwrap();
    let seg_y = switch_wal(&p);
    wait_archived(&p, &seg_y, MINUTE);
    fork.start().unwrap();
    let _f = StopOnDrop(&fork);
    fork.psql(
        "postgres",
        "insert into t select g, 'z' from generate_series(3001, 3500) g",
    )
    .unwrap();
    assert_eq!(
        switch_wal(&fork),
        seg_y,
        "the fork finishes the same segment"
    );
    let out = env.pgcairn(&[
        "archive-push",
        &fork
            .datadir
            .join("pg_wal")
            .join(&seg_y)
            .display()
            .to_string(),
    ]);
    assert!(!out.status.success(), "a diverging segment was accepted");
    let err = stderr(&out);
    assert!(
        err.contains(&seg_y) && err.contains("different content"),
        "{err}"
    );
    let ids = err
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .count();
    assert!(ids >= 2, "both content ids named: {err}");
    fork.stop().unwrap();
    p.stop().unwrap();

    // PITR before the switch (timeline 1) and after it (timeline 2), exact rows.
    let before = env.restore_and_start_with(
        "pitr_tl1",
        &["--target-lsn", &lsn_a, "--target-action", "promote"],
        false,
    );
    let _b = StopOnDrop(&before);
    assert_eq!(rows(&before, "true"), "100:5050");
    before.stop().unwrap();
    let after = env.restore_and_start_with(
        "pitr_tl2",
        &["--target-lsn", &lsn_c, "--target-action", "promote"],
        false,
    );
    let _a = StopOnDrop(&after);
    assert_eq!(rows(&after, "true"), "300:45150");
    assert_eq!(rows(&after, "phase in ('x', 'y', 'z')"), "0:0");
    after.stop().unwrap();

    // Backups after the failover: from the new primary, and from a new standby of it.
    env.use_cluster(&s);
    let from_new_primary = backup_json(&env, &["--type", "full"]);
    assert_eq!(from_new_primary["timeline"], 2);
    assert_eq!(from_new_primary["from_standby"], false);
    let s2 = env.standby_of(&s, "s2", "always");
    let _s2 = StopOnDrop(&s2);
    wait_replayed(&s2, &current_lsn(&s), MINUTE);
    env.use_cluster(&s2);
    let from_new_standby = with_wal_switches(&s, || backup_json(&env, &["--type", "full"]));
    assert_eq!(from_new_standby["timeline"], 2);
    assert_eq!(from_new_standby["from_standby"], true);
    let latest = env.restore_and_start_with(
        "latest",
        &["--backup", from_new_standby["id"].as_str().unwrap()],
        false,
    );
    let _l = StopOnDrop(&latest);
    assert_eq!(rows(&latest, "true"), "400:80200");
}

/// A primary and a standby whose replay is paused (as a delayed standby's lags), then a full
/// backup of the primary (returned), rows 1001..=2000 on the primary, and the configuration
/// pointed at the standby: a backup from it now starts below the primary's backup.
fn lagging_standby_below_a_primary_backup(
    env: &TestEnv,
) -> (Instance, Instance, serde_json::Value) {
    env.append_config(
        "[backup]\nstandby_wal_wait = \"15s\"\narchive_timeout = \"90s\"\n[retention]\nfull = 1\n",
    );
    let (primary, standby) = primary_and_standby(env, &PgBinaries::find().unwrap(), 1000);
    // The standby stops replaying: its restartpoints stay below what the primary does next.
    standby
        .psql("postgres", "select pg_wal_replay_pause()")
        .unwrap();
    env.use_cluster(&primary);
    // The primary's backup starts in a segment of its own, above the standby's restartpoint.
    switch_wal(&primary);
    let newest = backup_json(env, &["--type", "full"]);
    primary
        .psql(
            "postgres",
            "insert into t select generate_series(1001, 2000)",
        )
        .unwrap();
    switch_wal(&primary);
    env.use_cluster(&standby);
    (primary, standby, newest)
}

/// Spawns `pgcairn ARGS` held at `point` (`PGCAIRN_TEST_PAUSE`, go-ahead files in `dir`).
fn spawn_held(
    env: &TestEnv,
    args: &[&str],
    point: &str,
    dir: &std::path::Path,
) -> std::process::Child {
    env.pgcairn_command(args)
        .env("PGCAIRN_TEST_PAUSE", format!("{point}@{}", dir.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `child` is held at `point`, or fails if it ends first.
fn wait_held(child: &mut std::process::Child, dir: &std::path::Path, point: &str) {
    let deadline = std::time::Instant::now() + 3 * MINUTE;
    while !pgcairn_engine::pause_point::files(dir, point).0.exists() {
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the command ended or never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The output of `child`, asserted successful, as JSON.
fn finished_json(child: std::process::Child, what: &str) -> serde_json::Value {
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    serde_json::from_slice(&done.stdout).unwrap()
}

/// Restores backup `id` to its consistency point, promoted, and checks its rows are 1..=1000
/// (the standby's when it was backed up).
fn restores_the_standbys_rows(env: &TestEnv, name: &str, id: &str) {
    let restored = env.restore_and_start_with(
        name,
        &[
            "--backup",
            id,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
        false,
    );
    let _r = StopOnDrop(&restored);
    assert_eq!(rows(&restored, "true"), "1000:500500");
}

const BACKUP_JSON: [&str; 7] = [
    "--progress",
    "never",
    "backup",
    "--type",
    "full",
    "--output",
    "json",
];
const AT_MANIFEST: &str = "phase:writing the manifest";

/// A backup from a standby whose replay lags starts below the newest backup of the primary.
/// An `expire` keeping one full backup, run while that standby backup is between its WAL
/// check and its manifest, keeps the WAL from the standby backup's start (recorded in its
/// lease), so the backup it then commits restores. Before, the expire removed that WAL and a
/// backup recorded as good could not be restored. On the local S3 server when there is one
/// (the start goes into the lease by a conditional write, and expire lists and reads the
/// leases there); the next test runs on `file://`.
#[test]
fn an_expire_during_a_lagging_standby_backup_keeps_the_wal_that_backup_needs() {
    let env = TestEnv::new(EnvOptions::new(preferred_backend()));
    let (primary, standby, newest) = lagging_standby_below_a_primary_backup(&env);
    let (_p, _s) = (StopOnDrop(&primary), StopOnDrop(&standby));
    let dir = env.private_dir("hold");
    let mut lagging = spawn_held(&env, &BACKUP_JSON, AT_MANIFEST, &dir);
    wait_held(&mut lagging, &dir, AT_MANIFEST);
    let out = env.pgcairn(&["expire", "--output", "json"]);
    assert_success(&out, "expire during the standby backup");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept_for_it = report["wal_ranges"].as_array().unwrap().iter().any(|r| {
        r["keep"] == true
            && r["reason"]
                .as_str()
                .unwrap()
                .contains("a backup running on host")
    });
    assert!(kept_for_it, "no WAL kept for the running backup: {report}");
    std::fs::write(pgcairn_engine::pause_point::files(&dir, AT_MANIFEST).1, b"").unwrap();
    let lagging = finished_json(lagging, "the standby backup");
    assert_eq!(lagging["from_standby"], true, "{lagging}");
    starts_in_a_lower_segment(&lagging, &newest);
    restores_the_standbys_rows(&env, "restored", lagging["id"].as_str().unwrap());
}

/// The other half: an `expire` already running when the lagging standby backup starts (it
/// read the leases before that backup's start was in its lease) is waited for before the
/// backup checks its WAL. It removes the WAL below the primary's backup, which the standby
/// backup then finds missing: it carries those segments from the standby's `pg_wal` instead
/// of committing a backup whose WAL is gone. Before, the backup checked its WAL while the
/// expire was still deciding, committed, and the expire then removed that WAL.
#[test]
fn a_lagging_standby_backup_waits_for_an_expire_that_ran_before_its_start() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let (primary, standby, newest) = lagging_standby_below_a_primary_backup(&env);
    let (_p, _s) = (StopOnDrop(&primary), StopOnDrop(&standby));
    let dir = env.private_dir("hold");
    const REMOVING: &str = "expire:removing";
    let mut expire = spawn_held(&env, &["expire", "--output", "json"], REMOVING, &dir);
    wait_held(&mut expire, &dir, REMOVING);
    let mut lagging = spawn_held(&env, &BACKUP_JSON, AT_MANIFEST, &dir);
    // A backup of a thousand rows reaches its manifest in a few seconds; this one waits.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < until {
        assert!(
            !pgcairn_engine::pause_point::files(&dir, AT_MANIFEST).0.exists(),
            "the standby backup went past its WAL check while an expire that had not seen its start ran"
        );
        assert!(
            lagging.try_wait().unwrap().is_none(),
            "the standby backup ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(pgcairn_engine::pause_point::files(&dir, REMOVING).1, b"").unwrap();
    let report = finished_json(expire, "the expire");
    assert!(report["wal_files"].as_u64().unwrap() > 0, "{report}");
    wait_held(&mut lagging, &dir, AT_MANIFEST);
    std::fs::write(pgcairn_engine::pause_point::files(&dir, AT_MANIFEST).1, b"").unwrap();
    let lagging = finished_json(lagging, "the standby backup");
    starts_in_a_lower_segment(&lagging, &newest);
    assert!(
        !lagging["wal_in_backup"].as_array().unwrap().is_empty(),
        "the segments the expire removed are carried from the standby's pg_wal: {lagging}"
    );
    restores_the_standbys_rows(&env, "restored", lagging["id"].as_str().unwrap());
}

/// Asserts that backup `lagging` starts in a segment (16 MiB) below backup `newest`'s start:
/// only there can an expire keeping `newest` cut.
fn starts_in_a_lower_segment(lagging: &serde_json::Value, newest: &serde_json::Value) {
    assert!(
        lsn(&lagging["start_lsn"]) >> 24 < lsn(&newest["start_lsn"]) >> 24,
        "the standby backup starts in a segment below the primary's: {lagging} / {newest}"
    );
}

/// An LSN as `backup --output json` prints it (`"X/Y"`), as a number.
fn lsn(v: &serde_json::Value) -> u64 {
    let (hi, lo) = v.as_str().unwrap().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[test]
fn a_replica_built_with_restore_type_standby_catches_up_and_streams() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let primary = env.cluster("primary");
    primary.start().unwrap();
    let _p = StopOnDrop(&primary);
    env.use_cluster(&primary);
    primary
        .psql(
            "postgres",
            "create table t(i int); insert into t select generate_series(1, 1000)",
        )
        .unwrap();
    backup_json(&env, &["--type", "full"]);
    // WAL the replica must fetch from the archive before it can stream.
    primary
        .psql(
            "postgres",
            "insert into t select generate_series(1001, 2000)",
        )
        .unwrap();
    let seg = switch_wal(&primary);
    wait_archived(&primary, &seg, MINUTE);

    let refused = env.pgcairn(&[
        "restore",
        "--pgdata",
        &env.path().join("nope").display().to_string(),
        "--primary-conninfo",
        "host=/tmp",
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--type standby"),
        "{}",
        stderr(&refused)
    );

    let conninfo = format!(
        "host={} port={} user=postgres application_name=replica",
        primary.socket_dir.display(),
        primary.port
    );
    env.restore(
        "replica",
        &["--type", "standby", "--primary-conninfo", &conninfo],
    );
    let replica = Instance::new(
        pg_binaries_for(&env.path().join("replica")),
        env.path().join("replica"),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    replica.start().unwrap();
    let _r = StopOnDrop(&replica);
    wait_streaming(&replica, MINUTE);
    assert_eq!(
        primary
            .psql(
                "postgres",
                "select state from pg_stat_replication where application_name = 'replica'"
            )
            .unwrap(),
        "streaming"
    );
    let log = std::fs::read_to_string(replica.datadir.join("pgcairn-server.log")).unwrap();
    assert!(
        log.contains(&format!("restored log file \"{seg}\" from archive")),
        "the replica caught up through archive-get:\n{log}"
    );
    primary
        .psql(
            "postgres",
            "insert into t select generate_series(2001, 2500)",
        )
        .unwrap();
    wait_replayed(&replica, &current_lsn(&primary), MINUTE);
    assert_eq!(rows(&replica, "true"), "2500:3126250");
    assert_eq!(
        replica
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );

    // check on the streaming replica.
    env.use_cluster(&replica);
    let check = env.pgcairn(&["check"]);
    assert_success(&check, "pgcairn check on a standby");
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(said.contains("streaming from"), "{said}");
    assert!(
        said.contains("restore_command calls pgcairn archive-get"),
        "{said}"
    );
    assert!(
        said.contains("archives nothing until it is promoted"),
        "{said}"
    );
    assert!(said.contains("only the primary can tell"), "{said}");
}

/// The standby path on the oldest and newest supported majors (13 still has
/// `pg_start_backup(label, fast, exclusive)`; 18 the newest catalog): a standby backup with
/// the primary stopped carries its stop segment and restores every row.
#[test]
fn standby_backups_with_the_primary_down_on_13_and_18() {
    for major in [13, 18] {
        let Some(bin) = pg_binaries_of(major) else {
            continue;
        };
        let env = TestEnv::new(EnvOptions::new(Backend::File));
        env.append_config("[backup]\nstandby_wal_wait = \"3s\"\narchive_timeout = \"60s\"\n");
        let (primary, standby) = primary_and_standby(&env, &bin, 500);
        let (_p, _s) = (StopOnDrop(&primary), StopOnDrop(&standby));
        // Crashed, not stopped: a clean shutdown switches WAL and may complete (and archive)
        // the segment this test needs the backup to carry.
        primary.crash().unwrap();
        env.use_cluster(&standby);
        assert_eq!(
            standby
                .psql("postgres", "select pg_is_in_recovery()")
                .unwrap_or_else(|e| panic!(
                    "PostgreSQL {major}: the standby is gone once the primary stopped: {e}\n{}",
                    std::fs::read_to_string(standby.datadir.join("pgcairn-server.log"))
                        .unwrap_or_default()
                )),
            "t"
        );
        let b = backup_json(&env, &["--type", "full"]);
        assert_eq!(b["from_standby"], true, "PostgreSQL {major}: {b}");
        assert!(
            !b["wal_in_backup"].as_array().unwrap().is_empty(),
            "PostgreSQL {major}: {b}"
        );
        // The recoverable window starts at its consistency point, though the archive lacks
        // the segment holding it.
        let out = env.pgcairn(&["info", "--output", "json"]);
        assert_success(&out, "pgcairn info");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let window = &doc["clusters"][0]["recoverable"];
        assert_eq!(
            window["from_lsn"], b["stop_lsn"],
            "PostgreSQL {major}: {doc}"
        );
        let restored = env.restore_and_start_with("restored", &[], false);
        let _r = StopOnDrop(&restored);
        assert_eq!(rows(&restored, "true"), "500:125250", "PostgreSQL {major}");
    }
}
