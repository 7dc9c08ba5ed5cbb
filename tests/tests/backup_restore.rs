//! End to end: full, incremental and differential backups of a real PostgreSQL 15 cluster
//! under pgbench load, each restored into a new directory, started, and compared with the
//! source; on `file://` and S3; with a tablespace.

use std::time::Duration;

use pgcairn_tests::*;

fn backups_restore_to_the_source_state(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    // A tablespace outside the data directory, owned by PostgreSQL's user.
    let ts = env.create_tablespace(&pg, "ts_data");
    // Scale 6: pgbench_accounts is larger than a piece (64 MiB), so the backups read it in
    // pieces on both reader threads, and the incrementals patch blocks in its second piece.
    pg.pgbench(&["-i", "-s", "6", "-q"]).unwrap();
    let accounts = pg
        .psql("postgres", "select pg_relation_size('pgbench_accounts')")
        .unwrap();
    assert!(
        accounts.trim().parse::<u64>().unwrap() > 64 << 20,
        "pgbench_accounts must span more than one piece: {accounts}"
    );
    pg.psql("postgres", "create table in_ts tablespace extra as select g as id, md5(g::text) as v from generate_series(1, 20000) g").unwrap();

    // Files modified within the safety window before a backup are re-read by the next
    // incremental; let the initial load age past it so the incremental can skip files.
    std::thread::sleep(Duration::from_secs(3));
    let full = backup_json(&env, &["--type", "full"]);
    assert_eq!(full["type"], "full");
    assert!(
        full["stats"]["bytes_read"].as_u64().unwrap() > 20 << 20,
        "a full backup reads everything: {full}"
    );
    assert_eq!(
        full["bad_pages"].as_array().unwrap().len(),
        0,
        "a healthy cluster has no checksum failures"
    );

    pg.pgbench(&["-t", "150", "-c", "2"]).unwrap();
    let incr = backup_json(&env, &[]);
    assert_eq!(incr["type"], "incr");
    assert_eq!(incr["reference"], full["id"]);
    let s = &incr["stats"];
    assert!(
        s["files_unchanged"].as_u64().unwrap() > 100,
        "an incremental skips unchanged files: {s}"
    );
    assert!(
        s["bytes_read"].as_u64().unwrap() < s["size"].as_u64().unwrap(),
        "{s}"
    );
    assert!(
        s["blocks_new"].as_u64().unwrap() < s["blocks"].as_u64().unwrap(),
        "dedup: blocks already stored are not stored again: {s}"
    );

    pg.pgbench(&["-t", "150", "-c", "2"]).unwrap();
    pg.psql(
        "postgres",
        "insert into in_ts select g, 'late' from generate_series(20001, 20100) g",
    )
    .unwrap();
    let diff = backup_json(&env, &["--type", "diff"]);
    assert_eq!(diff["type"], "diff");
    assert_eq!(
        diff["reference"], full["id"],
        "a differential refers to the last full"
    );

    // An incremental on top of the differential: blocks the differential stored as patches
    // on the full's blocks are patched again against the same bases.
    pg.pgbench(&["-t", "150", "-c", "2"]).unwrap();
    let incr2 = backup_json(&env, &[]);
    assert_eq!(incr2["reference"], diff["id"]);
    for b in [&incr, &diff, &incr2] {
        assert!(
            b["stats"]["blocks_patched"].as_u64().unwrap() > 0,
            "updates spread over pgbench_accounts change parts of blocks, stored as patches: {}",
            b["stats"]
        );
    }

    // Full backups with no memory for the ids of the blocks already stored: they are looked
    // up in a table on local disk, and found (a full backup asks about every block). The
    // first stores whole the blocks the incrementals stored as patches; the second finds
    // every block but those changed since.
    backup_json(&env, &["--type", "full", "--index-memory", "0"]);
    let full2 = backup_json(&env, &["--type", "full", "--index-memory", "0"]);
    let s = &full2["stats"];
    assert!(
        full2["block_index"]["on_disk"].as_u64().unwrap() > 1000,
        "the repository's block ids went to a table: {full2}"
    );
    assert!(
        s["blocks_new"].as_u64().unwrap() * 10 < s["blocks"].as_u64().unwrap(),
        "blocks already stored are found in the table, not stored again: {s}"
    );

    pg.psql("postgres", "create table marker as select 7 as answer")
        .unwrap();
    let expected = pgbench_fingerprint(&pg);
    let expected_ts = pg
        .psql(
            "postgres",
            "select count(*) || ':' || md5(string_agg(v, ',' order by id)) from in_ts",
        )
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    pg.stop().unwrap();

    for (i, b) in [&full, &incr, &diff, &incr2, &full2].iter().enumerate() {
        let id = b["id"].as_str().unwrap();
        // The source cluster is stopped and its tablespace directory still in use by it:
        // restore each backup's tablespace somewhere new by moving the old one away.
        let moved = env.path().join(format!("ts_data_source_{i}"));
        std::fs::rename(&ts, &moved).unwrap();
        // The incrementals restore with their block index in a table on local disk, as a
        // cluster too large for the index's memory would.
        let name = format!("restored_{i}");
        let mut args = vec!["--backup", id];
        if i % 2 == 1 {
            args.extend(["--index-memory", "0"]);
        }
        let out = env.restore(&name, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.contains("blocks, more than --index-memory holds: kept in a table"),
            i % 2 == 1,
            "{stdout}"
        );
        let restored = env.restored_instance(&name, false);
        restored.start().unwrap();
        wait_recovered(&restored, &name, Duration::from_secs(180));
        let _stop_restored = StopOnDrop(&restored);
        assert_eq!(
            pgbench_fingerprint(&restored),
            expected,
            "backup {id} replayed to the end of the archive"
        );
        assert_eq!(
            restored
                .psql("postgres", "select answer from marker")
                .unwrap(),
            "7"
        );
        assert_eq!(
            restored
                .psql(
                    "postgres",
                    "select count(*) || ':' || md5(string_agg(v, ',' order by id)) from in_ts"
                )
                .unwrap(),
            expected_ts,
            "tablespace contents restored"
        );
        restored.stop().unwrap();
        std::fs::remove_dir_all(&ts).unwrap();
        std::fs::rename(&moved, &ts).unwrap();
    }
}

#[test]
fn full_incr_and_diff_backups_restore_on_every_backend() {
    for b in backends() {
        backups_restore_to_the_source_state(b);
    }
}

/// Run as root, `restore` chowns the files to their owner and writes its own path into
/// `restore_command`: when that owner cannot execute the binary it says so before recovery
/// would fail at its first WAL file.
#[test]
fn a_root_restore_warns_when_postgres_cannot_run_the_restore_command() {
    if pgcairn_engine::pg::instance::current_uid() != 0 {
        eprintln!("skipping: needs root");
        return;
    }
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    backup_json(&env, &["--type", "full"]);
    // The binary where only root can reach it.
    let private = tempfile::Builder::new()
        .prefix("pgcairn-root-only-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let bin = private.path().join("pgcairn");
    std::fs::copy(&env.bin, &bin).unwrap();
    let restore_as_root = |bin: &std::path::Path, dir: &str| {
        let out = std::process::Command::new(bin)
            .arg("--config")
            .arg(&env.config)
            .args(["--progress", "never", "restore", "--pgdata"])
            .arg(env.path().join(dir))
            .output()
            .unwrap();
        assert_success(&out, "restore as root");
        stderr(&out)
    };
    let err = restore_as_root(&bin, "as_root_private");
    assert!(
        err.contains("WARNING: restore_command runs") && err.contains("cannot execute it"),
        "{err}"
    );
    // The binary postgres can run: no warning.
    let err = restore_as_root(&env.bin, "as_root_shared");
    assert!(!err.contains("WARNING"), "{err}");
}

/// Packs whose index segment is 1 MiB or more (many small, well-compressed blocks) are
/// hashed on the shared CPU pool while readers wait to hand the packer more blocks. With the
/// readers on that same pool, as many readers as its threads (the default: one per core)
/// blocked on the full channel, the packer waited for a thread forever and the backup hung.
/// 8 KiB blocks of pgbench rows seal to about 800 bytes, so a 32 MiB pack holds over 40 000
/// of them (an 80-byte index entry each) and fills before the last file is read; `jobs` well above the cores makes every pool thread a
/// reader whatever the machine.
#[test]
fn a_backup_of_many_small_blocks_finishes_and_restores() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.replace_config(&format!(
        "{config}\n[backup]\nblock_size = \"8KiB\"\njobs = 16\n"
    ));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "40", "-q"]).unwrap();
    let expected = pgbench_fingerprint(&pg);

    let mut child = env
        .pgcairn_command(&["--progress", "never", "backup", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the backup did not finish in 15 minutes: it hangs");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "backup with 8 KiB blocks");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &summary["stats"];
    let (blocks, stored) = (
        s["blocks_new"].as_u64().unwrap(),
        s["stored_new"].as_u64().unwrap(),
    );
    assert!(
        stored > 40 << 20 && stored / blocks < 2560,
        "the scenario needs a full pack of blocks sealed below 2.5 KB: {s}"
    );

    let restored = env.restore_and_start("restored", None);
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(pgbench_fingerprint(&restored), expected);
}

/// `backup.block_size` changed between a full backup and an incremental: an unchanged file's
/// block list is positional in the block size its manifest declares, so the incremental reads
/// every file again instead of carrying the full backup's lists over (carried over, they made
/// the incremental, and every later one, unrestorable: "lists N blocks for S bytes").
#[test]
fn an_incremental_after_a_block_size_change_reads_every_file_and_restores() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    // Older than the full backup's start by more than the mtime margin: unchanged files.
    std::thread::sleep(Duration::from_secs(3));
    let full = backup_json(&env, &["--type", "full"]);
    let carried = backup_json(&env, &[]);
    assert!(
        carried["stats"]["files_unchanged"].as_u64().unwrap() > 100,
        "the scenario needs files an incremental carries over: {}",
        carried["stats"]
    );
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.replace_config(&format!("{config}\n[backup]\nblock_size = \"16KiB\"\n"));
    let incr = backup_json(&env, &[]);
    let expected = pgbench_fingerprint(&pg);
    let restored = env.restore_and_start("restored", incr["id"].as_str());
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(pgbench_fingerprint(&restored), expected);
    assert_eq!(incr["type"], "incr", "{incr}");
    assert_eq!(
        incr["stats"]["files_unchanged"].as_u64(),
        Some(0),
        "nothing carried over from blocks of another size: {}",
        incr["stats"]
    );
    assert!(
        incr["stats"]["bytes_read"].as_u64() >= full["stats"]["bytes_read"].as_u64(),
        "every file read again: {} against the full backup's {}",
        incr["stats"],
        full["stats"]
    );
}

/// A delta restore of an incremental whose changed blocks are patches, into a directory that
/// holds the full backup the patches apply to: blocks already right are kept (compared with
/// what the block is, the patched block's id, not its base's), the others written as base
/// plus patch. Recovery stops at the incremental's consistency point: WAL written after it
/// (full-page images of the pages the fingerprint query hinted) would otherwise repair a page
/// the restore got wrong and hide it.
#[test]
fn a_delta_restore_of_a_patched_incremental_over_its_full_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let full = backup_json(&env, &["--type", "full"]);
    pg.pgbench(&["-t", "150", "-c", "2"]).unwrap();
    // Before the incremental: the pages this query hints are in the backup, not in WAL the
    // restore replays.
    let expected = pgbench_fingerprint(&pg);
    let incr = backup_json(&env, &[]);
    assert!(
        incr["stats"]["blocks_patched"].as_u64().unwrap() > 0,
        "{}",
        incr["stats"]
    );
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    env.restore("delta", &["--backup", full["id"].as_str().unwrap()]);
    let out = env.restore(
        "delta",
        &[
            "--delta",
            "--backup",
            incr["id"].as_str().unwrap(),
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mib = |after: &str| -> f64 {
        let at = text
            .find(after)
            .unwrap_or_else(|| panic!("{after}: {text}"));
        text[..at]
            .rsplit(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{after}: {text}"))
    };
    let (reused, rewritten) = (mib("MiB reused"), mib("MiB rewritten"));
    assert!(
        reused > 0.0 && rewritten > 0.0,
        "unchanged blocks kept, the changed ones written: {text}"
    );
    // Every file made durable, the ones found whole too: the restore a delta completes may
    // have died before its fsyncs.
    let count = |after: &str| -> u64 {
        let at = text
            .find(after)
            .unwrap_or_else(|| panic!("{after}: {text}"));
        text[..at]
            .trim_end()
            .rsplit([' ', ','])
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{after}: {text}"))
    };
    assert_eq!(
        count(" files synced"),
        count(" files, "),
        "every restored file fsynced: {text}"
    );
    let r = env.restored_instance("delta", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "delta", Duration::from_secs(180));
    assert_eq!(pgbench_fingerprint(&r), expected);
}

/// A copy restored beside the running production cluster and promoted, as a DBA does to
/// look at yesterday's data: with `--archive-mode off` it archives nothing, so its new
/// timeline never lands in production's repository (where a later restore to the latest
/// timeline would follow it); restored the same way without the option, it does archive it.
#[test]
fn a_copy_restored_with_archive_mode_off_pushes_no_timeline_into_the_repository() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.started_pgbench_cluster("pg");
    let _stop = StopOnDrop(&pg);
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    // Refused where it makes no sense, before anything is written.
    let target = env.path().join("standby").display().to_string();
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target,
        "--type",
        "standby",
        "--archive-mode",
        "off",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("once promoted it must archive"),
        "{}",
        stderr(&out)
    );

    // A target through --recovery-option would bypass the preflight: refused.
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &target,
        "--recovery-option",
        "recovery_target_time=2026-01-01 00:00:00+00",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--target-time"), "{}", stderr(&out));
    assert!(
        !env.path().join("standby").exists(),
        "a refused restore wrote"
    );

    let promote = ["--target", "immediate", "--target-action", "promote"];
    let mut args = promote.to_vec();
    // An operator's recovery_end_command, quotes, space and all, runs as written.
    let ended = env.path().join("recovery ended");
    let end_command = format!("recovery_end_command=touch '{}'", ended.display());
    args.extend(["--archive-mode", "off", "--recovery-option", &end_command]);
    let out = env.restore("copy", &args);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("archive_mode = 'off'"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Started with production's own settings: archive_command pushes into this repository.
    let copy = env.restored_instance("copy", true);
    copy.start().unwrap();
    let stop_copy = StopOnDrop(&copy);
    wait_recovered(&copy, "copy", Duration::from_secs(180));
    assert_eq!(copy.psql("postgres", "show archive_mode").unwrap(), "off");
    assert!(ended.exists(), "the recovery_end_command given did not run");
    let conf = std::fs::read_to_string(env.path().join("copy/postgresql.conf")).unwrap();
    assert!(conf.contains("archive-push"), "{conf}");
    let tli = copy
        .psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()",
        )
        .unwrap();
    assert_eq!(tli, "2", "the copy forked timeline 2");
    copy.psql("postgres", "create table made_in_copy as select 1 as x")
        .unwrap();
    let copy_segment = switch_wal(&copy);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !env.archived("00000002.history") && !env.archived(&copy_segment),
        "the copy archived into production's repository"
    );
    drop(stop_copy);
    copy.stop().unwrap();

    // The same copy without the option archives its timeline: what the option prevents.
    env.restore("copy2", &promote);
    let copy2 = env.restored_instance("copy2", true);
    copy2.start().unwrap();
    let _stop_copy2 = StopOnDrop(&copy2);
    wait_recovered(&copy2, "copy2", Duration::from_secs(180));
    assert_eq!(copy2.psql("postgres", "show archive_mode").unwrap(), "on");
    env.wait_in_repository("00000002.history", Duration::from_secs(60));
}

/// A tablespace location shared with another cluster (`pg_upgrade` keeps the old cluster's
/// `PG_14_...` beside the new one's, for a rollback): the backup takes only this cluster's
/// directory, a restore into a location holding another cluster's is accepted, and a delta
/// restore over the source leaves the other cluster's files as they are now, a directory made
/// after the backup included. Before, the backup took the whole location and the delta
/// restore put the old copy back and deleted the new directory.
#[test]
fn a_tablespace_location_shared_with_another_cluster_is_left_to_it() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let ts = env.create_tablespace(&pg, "shared_ts");
    pg.psql(
        "postgres",
        "create table in_ts tablespace extra as select g as id from generate_series(1, 5000) g",
    )
    .unwrap();
    let alone = backup_json(&env, &["--type", "full"]);
    // The old cluster's directory, as pg_upgrade leaves it, with a hundred files.
    let old = ts.join("PG_14_202107181");
    std::fs::create_dir_all(old.join("16384")).unwrap();
    for n in 0..100 {
        std::fs::write(old.join(format!("16384/{}", 20000 + n)), b"the old cluster").unwrap();
    }
    std::fs::write(
        old.join("16384/16385"),
        b"the old cluster, before the backup",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &old).unwrap();
    let oid = pg
        .psql(
            "postgres",
            "select oid from pg_tablespace where spcname = 'extra'",
        )
        .unwrap();
    let b = backup_json(&env, &["--type", "full"]);
    let id = b["id"].as_str().unwrap().to_string();
    let files = |b: &serde_json::Value| b["stats"]["files"].as_u64().unwrap();
    assert!(
        files(&b) < files(&alone) + 50,
        "the other cluster's hundred files are not in the backup: {} then {} files",
        files(&alone),
        files(&b)
    );
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();
    let own: Vec<String> = std::fs::read_dir(&ts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("PG_15_"))
        .collect();
    assert_eq!(own.len(), 1, "this cluster's directory: {own:?}");

    // Elsewhere, into a location that holds another cluster's directory already.
    let elsewhere = env.path().join("elsewhere_ts");
    std::fs::create_dir_all(elsewhere.join("PG_13_202007201")).unwrap();
    std::fs::write(elsewhere.join("PG_13_202007201/kept"), b"other").unwrap();
    give_to(env.run_as.as_deref(), &elsewhere).unwrap();
    let map = format!("{oid}={}", elsewhere.display());
    let r = env.restore_and_start_with("copy", &["--tablespace-map", &map, "--backup", &id], false);
    assert_eq!(
        r.psql("postgres", "select count(*) from in_ts").unwrap(),
        "5000"
    );
    r.stop().unwrap();
    assert!(
        !elsewhere.join("PG_14_202107181").exists(),
        "the other cluster's directory is not in the backup"
    );
    assert_eq!(
        std::fs::read(elsewhere.join("PG_13_202007201/kept")).unwrap(),
        b"other"
    );
    // A location holding this cluster's directory is refused, as PostgreSQL refuses it.
    let second = env.path().join("second").display().to_string();
    let out = env.pgcairn(&[
        "restore",
        "--pgdata",
        &second,
        "--tablespace-map",
        &map,
        "--backup",
        &id,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}/{}", elsewhere.display(), own[0]))
            && stderr(&out).contains("not empty"),
        "{}",
        stderr(&out)
    );

    // A delta restore over the source, after the other cluster changed and a third appeared.
    std::fs::write(
        old.join("16384/16385"),
        b"the old cluster, after the backup",
    )
    .unwrap();
    let newer = ts.join("PG_16_202307071");
    std::fs::create_dir_all(&newer).unwrap();
    std::fs::write(newer.join("PG_VERSION"), b"16").unwrap();
    std::fs::write(ts.join(&own[0]).join("stray"), b"x").unwrap();
    give_to(env.run_as.as_deref(), &ts).unwrap();
    let out = env.pgcairn(&[
        "--progress",
        "never",
        "restore",
        "--pgdata",
        &pg.datadir.display().to_string(),
        "--delta",
        "--backup",
        &id,
    ]);
    assert_success(&out, "delta restore over the source");
    assert_eq!(
        std::fs::read(old.join("16384/16385")).unwrap(),
        b"the old cluster, after the backup",
        "the other cluster's file is left as it is"
    );
    assert!(
        newer.join("PG_VERSION").exists(),
        "a directory another cluster made after the backup is left"
    );
    assert!(
        !ts.join(&own[0]).join("stray").exists(),
        "this cluster's directory is cleaned"
    );
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    wait_recovered(&pg, "the delta restore", Duration::from_secs(120));
    assert_eq!(
        pg.psql("postgres", "select count(*) from in_ts").unwrap(),
        "5000"
    );
}
