//! Every supported PostgreSQL major end to end: 13, 14, 16, 17 and 18 (15, Debian's, runs the
//! rest of the suite). For each: WAL archived through `archive_command`, `check` and a full
//! and an incremental backup (under pgbench load) as the least-privilege role with that
//! version's grants, a restore point, a PITR restore to a time with an exact row check (and
//! the first-start sync setting written from 14 on and gone after recovery), and a
//! passing drill (WAL replay, amcheck, every table read, page checksums) run under the same
//! major's server. And a cluster name keeps one major version.
//!
//! The majors come from `scripts/install-postgres-majors.sh`; a major that is not installed
//! is skipped, unless `PGCAIRN_REQUIRE_PG_MAJORS` is set (`scripts/test.sh` sets it), when it
//! fails. Data is modest (pgbench scale 1) so the five majors add little to the suite.

use std::time::Duration;

use pgcairn_tests::*;

/// The least-privilege role of the README for PostgreSQL `major`: the non-exclusive backup
/// functions were renamed in 15 (and lost their `exclusive` argument).
fn least_privilege_grants(major: u32) -> String {
    let (start, stop) = if major >= 15 {
        ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
    } else {
        (
            "pg_start_backup(text, boolean, boolean)",
            "pg_stop_backup(boolean, boolean)",
        )
    };
    format!(
        "create role pgcairn login;
         grant execute on function {start} to pgcairn;
         grant execute on function {stop} to pgcairn;
         grant execute on function pg_switch_wal() to pgcairn;
         grant execute on function pg_create_restore_point(text) to pgcairn;
         grant pg_read_all_settings to pgcairn;"
    )
}

/// Points the config at `pg`, connecting as `role`.
fn use_cluster_as(env: &TestEnv, pg: &Instance, role: &str) {
    env.use_cluster(pg);
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("user=postgres", &format!("user={role}"));
    env.replace_config(&text);
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The whole life of one major: archive, check, backups under load, PITR, drill.
fn end_to_end(major: u32) {
    let Some(bin) = pg_binaries_of(major) else {
        return;
    };
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster_of("pg", &bin);
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    let version: u32 = pg
        .psql("postgres", "show server_version_num")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        version / 10000,
        major,
        "the cluster runs PostgreSQL {major}"
    );
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql("postgres", &least_privilege_grants(major)).unwrap();
    use_cluster_as(&env, &pg, "pgcairn");

    // check as the least-privilege role: a WAL switch archived through archive_command.
    let check = env.pgcairn(&["check"]);
    assert_success(&check, &format!("pgcairn check on PostgreSQL {major}"));
    assert!(
        stdout(&check).contains("archived after"),
        "{}",
        stdout(&check)
    );

    let full = backup_json(&env, &["--type", "full"]);
    assert_eq!(full["type"], "full");
    // An incremental while pgbench writes.
    let incr = std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-n", "-T", "4", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        let incr = backup_json(&env, &["--type", "incr"]);
        load.join().unwrap().unwrap();
        incr
    });
    assert_eq!(incr["type"], "incr", "{incr:#}");
    let point = env.pgcairn(&["restore-point", "versions_point"]);
    assert_success(&point, "pgcairn restore-point as the least-privilege role");

    // Rows before and after a target time; the restore must hold exactly the first ones.
    pg.psql(
        "postgres",
        "create table stamps (id int primary key, note text)",
    )
    .unwrap();
    pg.psql(
        "postgres",
        "insert into stamps select g, 'before' from generate_series(1, 50) g",
    )
    .unwrap();
    let target = pg.psql("postgres", "select now()::text").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    pg.psql(
        "postgres",
        "insert into stamps select g, 'after' from generate_series(51, 80) g",
    )
    .unwrap();
    let fingerprint_at_end = pgbench_fingerprint(&pg);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    // The restore writes the first-start sync setting where the server has it (14+); the
    // first archive-get removes it, so it is gone once recovery ended, also after a restart.
    env.restore(
        "pitr",
        &["--target-time", &target, "--target-action", "promote"],
    );
    let restored = env.restored_instance("pitr", false);
    assert_eq!(
        first_start_blocks(&restored.datadir),
        usize::from(major >= 14),
        "PostgreSQL {major}: recovery_init_sync_method exists from 14 on"
    );
    restored.start().unwrap();
    let _stop_restored = StopOnDrop(&restored);
    wait_recovered(&restored, "pitr", Duration::from_secs(180));
    assert_eq!(restored.bin.major(), major, "restored under its own major");
    assert_eq!(first_start_blocks(&restored.datadir), 0);
    if major >= 14 {
        restored.stop().unwrap();
        restored.start().unwrap();
        assert_eq!(
            restored
                .psql("postgres", "show recovery_init_sync_method")
                .unwrap(),
            "fsync",
            "PostgreSQL {major}: nothing of the first start stays in effect"
        );
    }
    assert_eq!(
        restored
            .psql(
                "postgres",
                "select count(*) || ':' || max(id) || ':' || count(*) filter (where note = 'after') from stamps"
            )
            .unwrap(),
        "50:50:0",
        "PostgreSQL {major}: the restore to {target} holds exactly the rows committed before it"
    );
    assert_eq!(
        pgbench_fingerprint(&restored),
        fingerprint_at_end,
        "pgbench tables as at the end (nothing changed them after the load)"
    );
    restored.stop().unwrap();

    // A drill to the same target under PostgreSQL `major`.
    let checks = env.path().join("checks.sql");
    std::fs::write(
        &checks,
        "select count(*) = 50 from stamps;\nselect count(*) = 100000 from pgbench_accounts;\n",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let out = env.drill(&[
        "--target-time",
        &target,
        "--check-sql",
        &checks.display().to_string(),
    ]);
    let doc = passed_drill(&out);
    let status = |name: &str| drill_check(&doc, name);
    for name in [
        "recovery reached the target",
        "amcheck bt_index_check",
        "every table read in full",
        "page checksums",
        "check-sql #1",
        "check-sql #2",
    ] {
        assert_eq!(status(name)["status"], "passed", "{name}: {doc:#}");
    }
    let pages = status("page checksums")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    if bin.has("pg_checksums") {
        assert!(pages.contains(&format!("pg_checksums {major}")), "{pages}");
    } else {
        assert!(pages.contains("verified by pgcairn"), "{pages}");
        let verified: u64 = pages
            .split(": ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no page count in {pages:?}"));
        assert!(verified > 100, "pgbench scale 1 is more pages: {pages}");
    }
}

#[test]
fn postgresql_13_end_to_end() {
    end_to_end(13);
}

#[test]
fn postgresql_14_end_to_end() {
    end_to_end(14);
}

#[test]
fn postgresql_16_end_to_end() {
    end_to_end(16);
}

#[test]
fn postgresql_17_end_to_end() {
    end_to_end(17);
}

#[test]
fn postgresql_18_end_to_end() {
    end_to_end(18);
}

/// After `pg_upgrade` the server is a new system of another major under the old cluster name:
/// its WAL and backups are refused, with a message suggesting a new cluster name, under which
/// they are accepted. The npm builds carry no `pg_upgrade` (and Debian's 15 needs the old
/// major's `pg_controldata`, which they lack), so the upgraded server is stood in for by a
/// fresh `initdb` of the newer major: what pgcairn sees is the same (a new system identifier,
/// the new major's WAL page magic and server version).
#[test]
fn a_cluster_name_keeps_one_major_version_across_an_upgrade() {
    let (Some(old_bin), Some(new_bin)) = (pg_binaries_of(14), pg_binaries_of(17)) else {
        return;
    };
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let old = env.cluster_of("old", &old_bin);
    old.start().unwrap();
    let stop_old = StopOnDrop(&old);
    env.use_cluster(&old);
    backup_json(&env, &["--type", "full"]);
    old.stop().unwrap();
    drop(stop_old);

    // "Upgraded": PostgreSQL 17, archiving to the same repository under the same name.
    let new = env.cluster_of("new", &new_bin);
    new.configure(&[("archive_mode", "off".into())]).unwrap();
    new.start().unwrap();
    let _stop_new = StopOnDrop(&new);
    env.use_cluster(&new);
    let segment = new.psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())");
    let segment = new.datadir.join("pg_wal").join(segment.unwrap());
    new.psql("postgres", "select pg_switch_wal()").unwrap();
    let segment = segment.display().to_string();

    let push = env.pgcairn(&["archive-push", &segment]);
    assert_eq!(push.status.code(), Some(1), "{}", stderr(&push));
    for want in [
        "WAL of PostgreSQL 17 refused",
        "holds PostgreSQL 14",
        "a cluster name keeps one major version",
        "\"main-pg17\"",
    ] {
        assert!(stderr(&push).contains(want), "{want}: {}", stderr(&push));
    }
    let backup = env.pgcairn(&["--progress", "never", "backup", "--type", "full"]);
    assert_eq!(backup.status.code(), Some(1), "{}", stderr(&backup));
    for want in [
        "backup refused, nothing stored",
        "holds PostgreSQL 14",
        "\"main-pg17\"",
    ] {
        assert!(
            stderr(&backup).contains(want),
            "{want}: {}",
            stderr(&backup)
        );
    }

    // Under the suggested name the upgraded server is archived; the old name still restores.
    let push = env.pgcairn(&["--cluster", "main-pg17", "archive-push", &segment]);
    assert_success(&push, "archive-push under the new cluster name");
    let info = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&info, "pgcairn info");
    let restored = env.restore_and_start_with("restored-14", &[], false);
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(restored.bin.major(), 14);
    assert_eq!(
        restored
            .psql(
                "postgres",
                "select current_setting('server_version_num')::int / 10000"
            )
            .unwrap(),
        "14"
    );
}
