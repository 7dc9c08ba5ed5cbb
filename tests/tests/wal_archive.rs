//! End to end: PostgreSQL archives through `pgcairn archive-push` and recovers through
//! `pgcairn archive-get`, on `file://` and S3, synchronously and asynchronously.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use pgcairn_tests::*;

/// Every segment PostgreSQL marked `.done` is in the repository and comes back byte for byte.
fn archive_round_trip(backend: Backend, archive_async: bool) {
    let env = TestEnv::new(EnvOptions {
        archive_async,
        ..EnvOptions::new(backend)
    });
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.pgbench(&["-T", "2", "-c", "2"]).unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    assert_eq!(
        pgcairn_daemons_inside(&pg.datadir),
        Vec::<String>::new(),
        "no background pusher works from the data directory"
    );
    let done = done_files(&pg);
    assert!(
        done.len() >= 2,
        "expected several archived segments, got {done:?}"
    );
    let fetched = env.path().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    for name in &done {
        let original = pg.datadir.join("pg_wal").join(name);
        let Ok(original_bytes) = std::fs::read(&original) else {
            continue; // recycled by a checkpoint since; the others prove the point
        };
        let dest = fetched.join(name);
        let out = env.pgcairn(&["archive-get", name, &dest.display().to_string()]);
        assert_success(&out, &format!("archive-get {name}"));
        assert!(
            std::fs::read(&dest).unwrap() == original_bytes,
            "{name} differs after archive-get"
        );
    }
    let info = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&info, "info");
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let tl = &doc["clusters"][0]["wal"]["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "no gaps: {tl}");
    let last_archived = tl["ranges"].as_array().unwrap().last().unwrap()["last"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        last_archived >= last,
        "info shows {last_archived}, PostgreSQL archived {last}"
    );
}

#[test]
fn sync_archive_round_trip_on_every_backend() {
    for b in backends() {
        archive_round_trip(b, false);
    }
}

#[test]
fn async_archive_round_trip_on_every_backend() {
    for b in backends() {
        archive_round_trip(b, true);
    }
}

/// How the recovering server's `archive-get` runs.
#[derive(Clone, Copy, PartialEq)]
enum Get {
    /// One fetch per call (`archive.async = false`, no flag).
    Direct,
    /// `archive.async = true`: prefetch through the spool.
    Async,
    /// `archive-get --prefetch` with `archive.async = false`, as `restore` writes it.
    PrefetchFlag,
}

/// A cold copy taken before the load, recovering with restore_command from the archive,
/// reaches exactly the source's data.
fn recovery_from_archive(backend: Backend, get: Get) {
    let archive_async = get == Get::Async;
    let env = TestEnv::new(EnvOptions {
        archive_async,
        ..EnvOptions::new(backend)
    });
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.stop().unwrap();
    // Cold copy of the stopped cluster: the base for recovery.
    let copy_dir = env.path().join("copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&pg.datadir)
        .arg(&copy_dir)
        .status()
        .unwrap();
    assert!(status.success());
    pg.start().unwrap();
    pg.pgbench(&["-T", "3", "-c", "2"]).unwrap();
    // Several segments of WAL whatever pgbench managed on a loaded machine: with only one to
    // replay there is nothing to prefetch.
    pg.psql(
        "postgres",
        "create table filler as select g, md5(g::text) as v from generate_series(1, 400000) g",
    )
    .unwrap();
    pg.psql("postgres", "create table marker as select 42 as answer")
        .unwrap();
    let expected = pgbench_fingerprint(&pg);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    // Recover the copy from the archive only.
    let _ = std::fs::remove_dir_all(copy_dir.join("pg_wal"));
    std::fs::create_dir_all(copy_dir.join("pg_wal/archive_status")).unwrap();
    std::fs::write(copy_dir.join("recovery.signal"), b"").unwrap();
    give_to(env.run_as.as_deref(), &copy_dir).unwrap();
    let copy = Instance::new(
        PgBinaries::find().unwrap(),
        copy_dir,
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    // Log archive-get's decisions into the server log, to see prefetched segments served.
    let restore_command = env.restore_command().replace(
        " archive-get ",
        if get == Get::PrefetchFlag {
            " --log-level info archive-get --prefetch "
        } else {
            " --log-level info archive-get "
        },
    );
    copy.configure(&[
        ("restore_command", restore_command),
        ("archive_mode", "off".into()),
    ])
    .unwrap();
    copy.start().unwrap();
    let _stop_copy = StopOnDrop(&copy);
    wait_recovered(&copy, "the cold copy", Duration::from_secs(120));
    // A prefetcher left in the data directory would keep its file system busy (no umount
    // after the server stops) until it idles out.
    assert_eq!(
        pgcairn_daemons_inside(&copy.datadir),
        Vec::<String>::new(),
        "no prefetcher works from the data directory"
    );
    assert_eq!(
        pgbench_fingerprint(&copy),
        expected,
        "recovered data equals the source"
    );
    assert_eq!(
        copy.psql("postgres", "select answer from marker").unwrap(),
        "42"
    );
    let prefetch = env.prefetch_dir_of(&copy.datadir);
    if get == Get::Direct {
        assert!(
            !prefetch.join("get-stats.json").exists(),
            "without async or --prefetch nothing goes through the spool"
        );
    } else {
        let log = std::fs::read_to_string(copy.datadir.join("pgcairn-server.log")).unwrap();
        assert!(
            log.contains("restored from the prefetch spool"),
            "archive-get serves prefetched segments:\n{log}"
        );
        // Every call is counted, and how it was served.
        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(prefetch.join("get-stats.json")).unwrap())
                .unwrap();
        let n = |k: &str| stats[k].as_u64().unwrap();
        assert!(n("from_spool") >= 1, "{stats}");
        assert_eq!(
            n("calls"),
            n("from_spool") + n("waited") + n("direct") + n("absent"),
            "{stats}"
        );
        assert!(
            n("absent") >= 1,
            "the end of the archive is counted as absent: {stats}"
        );
        eprintln!("archive-get through the spool: {stats}");
        let stale = || -> Vec<String> {
            std::fs::read_dir(&prefetch)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.len() == 24 && *n < last)
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut left = stale();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            left = stale();
        }
        assert!(
            left.is_empty(),
            "segments already replayed are not kept in the spool: {left:?}"
        );
    }
}

#[test]
fn recovery_replays_the_archive_to_the_source_state() {
    for b in backends() {
        recovery_from_archive(b, Get::Direct);
    }
}

#[test]
fn recovery_with_async_archive_get_prefetches_ahead() {
    for b in backends() {
        recovery_from_archive(b, Get::Async);
    }
}

/// `restore` writes `archive-get --prefetch`: the prefetch without asynchronous archiving.
#[test]
fn recovery_with_archive_get_prefetch_flag_prefetches_without_async() {
    for b in backends() {
        recovery_from_archive(b, Get::PrefetchFlag);
    }
}

/// PostgreSQL up to 15 starts `restore_command` with its own files still open (the startup
/// process's relation files, its log): the prefetcher archive-get starts must not keep them
/// open, or the data directory's file system stays busy after the server stopped.
#[test]
fn a_prefetcher_keeps_no_descriptor_postgresql_left_open() {
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        ..EnvOptions::new(Backend::File)
    });
    let datadir = env.path().join("datadir");
    std::fs::create_dir_all(datadir.join("base/5")).unwrap();
    let relation = datadir.join("base/5/16384");
    std::fs::write(&relation, vec![0u8; 8192]).unwrap();
    give_to(env.run_as.as_deref(), &datadir).unwrap();
    // As PostgreSQL 13 runs it: in the data directory, a relation file open without
    // close-on-exec (the shell's `exec 7<`).
    let out = pgcairn_engine::pg::instance::command_as(
        env.run_as.as_deref(),
        std::path::Path::new("/bin/sh"),
    )
    .arg("-c")
    .arg(r#"exec 7<"$0"; exec "$1" --config "$2" archive-get 000000010000000000000009 "$3""#)
    .arg(&relation)
    .arg(&env.bin)
    .arg(&env.config)
    .arg(datadir.join("pg_wal/RECOVERYXLOG"))
    .current_dir(&datadir)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "absent: {out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut daemons = pgcairn_daemon_pids(&env.bin);
    while daemons.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        daemons = pgcairn_daemon_pids(&env.bin);
    }
    assert!(!daemons.is_empty(), "archive-get started a prefetcher");
    for pid in daemons {
        assert_eq!(
            open_files_beneath(&pid, &datadir),
            Vec::<std::path::PathBuf>::new(),
            "the prefetcher {pid} holds nothing of the data directory"
        );
    }
}

/// `archive-get` run by hand as root with the production settings: the spool is PostgreSQL's
/// user's, so root fetches directly and leaves it alone: it creates nothing there that user
/// could not read or remove, and follows no link that user planted (here a "fetching" marker
/// pointing at a file of root's).
#[test]
fn archive_get_as_root_leaves_postgresqls_spool_alone() {
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        ..EnvOptions::new(Backend::File)
    });
    let Some(_) = env.run_as.as_deref() else {
        eprintln!("skipped: only root can run a command as another user than the spool's");
        return;
    };
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    let original = std::fs::read(pg.datadir.join("pg_wal").join(&last)).unwrap();
    drop(stop);
    pg.stop().unwrap();

    // PostgreSQL's user uses the spool first (its prefetch area, its prefetcher).
    let fetched = env.path().join("fetched");
    std::fs::create_dir_all(&fetched).unwrap();
    give_to(env.run_as.as_deref(), &fetched).unwrap();
    let out = env.pgcairn(&[
        "archive-get",
        &last,
        &fetched.join("first").display().to_string(),
    ]);
    assert_success(&out, "archive-get as PostgreSQL's user");
    let spool = env.path().join("spool");
    let area = std::fs::read_dir(spool.join("main/prefetch"))
        .unwrap()
        .next()
        .expect("a prefetch area")
        .unwrap()
        .path();
    // That user plants a marker pointing at a file of root's.
    let victim = env.path().join("root-owned");
    std::fs::write(&victim, b"keep").unwrap();
    let marker = area.join(format!(".{last}.fetching"));
    let _ = std::fs::remove_file(&marker);
    std::os::unix::fs::symlink(&victim, &marker).unwrap();
    let pg_uid = std::fs::metadata(&spool).unwrap().uid();
    std::os::unix::fs::lchown(&marker, Some(pg_uid), None).unwrap();

    let dest = env.path().join("as-root");
    let out = std::process::Command::new(&env.bin)
        .arg("--config")
        .arg(&env.config)
        .args(["archive-get", &last])
        .arg(&dest)
        .output()
        .unwrap();
    assert_success(&out, "archive-get as root");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        original,
        "the segment, fetched directly"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep",
        "the planted link not followed"
    );
    let roots: Vec<std::path::PathBuf> = entries_beneath(&spool)
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(p).unwrap().uid() == 0)
        .collect();
    assert_eq!(
        roots,
        Vec::<std::path::PathBuf>::new(),
        "nothing of root's in PostgreSQL's spool"
    );
}

/// `repo.url` changed while an asynchronous pusher runs (it pushes to the repository it
/// opened at its start, for up to its maximum run): archive-push, configured for the new
/// repository, does not take the running pusher's ack for the old one as archived; it pushes
/// the file to the new repository itself. Before, PostgreSQL got exit 0 and recycled a
/// segment the new repository never had.
#[test]
fn a_changed_repository_is_not_served_by_the_pusher_started_for_the_old_one() {
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        ..EnvOptions::new(Backend::File)
    });
    // The pusher stays up between segments.
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("idle_exit = \"3s\""), "{text}");
    std::fs::write(
        &env.config,
        text.replace("idle_exit = \"3s\"", "idle_exit = \"120s\""),
    )
    .unwrap();
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "create table a as select 1 as x")
        .unwrap();
    let first = switch_wal(&pg);
    wait_archived(&pg, &first, Duration::from_secs(60));
    let spool = pgcairn_engine::archive::spool::Spool::at(&env.path().join("spool"), "main");
    assert!(spool.pusher_running().unwrap(), "a pusher is running");

    // Repository B, same key, and the configuration pointed at it (the pusher keeps A).
    let text = std::fs::read_to_string(&env.config).unwrap();
    let url_b = format!("file://{}/repo-b", env.path().display());
    let b_text = text.replace(&env.repo_url, &url_b);
    assert_ne!(b_text, text);
    let b_config = env.path().join("b.toml");
    std::fs::write(&b_config, &b_text).unwrap();
    give_to(env.run_as.as_deref(), &b_config).unwrap();
    std::fs::set_permissions(&b_config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = env.key_file.display().to_string();
    assert_success(
        &env.pgcairn_with_config(&b_config, &["init", "--key-file", &key]),
        "init B",
    );
    std::fs::write(&env.config, &b_text).unwrap();

    pg.psql("postgres", "create table b as select 1 as x")
        .unwrap();
    let second = switch_wal(&pg);
    wait_archived(&pg, &second, Duration::from_secs(60));
    let dest = env.path().join("fetched");
    std::fs::create_dir_all(&dest).unwrap();
    give_to(env.run_as.as_deref(), &dest).unwrap();
    let out = env.pgcairn_with_config(
        &b_config,
        &[
            "archive-get",
            &second,
            &dest.join(&second).display().to_string(),
        ],
    );
    assert_success(
        &out,
        "the segment archived after the change is in the new repository",
    );
}
