//! Base backups under adverse conditions: a least-privilege role, damaged pages, a backup
//! killed mid-way, and `check`.

use std::time::{Duration, Instant};

use pgcairn_tests::*;

/// The GRANTs the README documents for a non-superuser backup role.
const LEAST_PRIVILEGE: &str = "create role pgcairn login;
grant execute on function pg_backup_start(text, boolean) to pgcairn;
grant execute on function pg_backup_stop(boolean) to pgcairn;
grant execute on function pg_switch_wal() to pgcairn;
grant execute on function pg_create_restore_point(text) to pgcairn;
grant pg_read_all_settings to pgcairn;";

fn with_role(env: &TestEnv, pg: &Instance, role: &str) {
    env.use_cluster(pg);
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("user=postgres", &format!("user={role}"));
    env.replace_config(&text);
}

#[test]
fn a_least_privilege_role_can_check_and_back_up() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql("postgres", LEAST_PRIVILEGE).unwrap();
    with_role(&env, &pg, "pgcairn");
    assert_eq!(
        pg.psql(
            "postgres",
            "select rolsuper from pg_roles where rolname = 'pgcairn'"
        )
        .unwrap(),
        "f"
    );

    let check = env.pgcairn(&["check"]);
    assert_success(&check, "pgcairn check as a non-superuser");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("archived after"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let b = backup_json(&env, &["--type", "full"]);
    assert_eq!(b["type"], "full");

    // Without the grants the same role gets a clear error naming the function.
    pg.psql(
        "postgres",
        "revoke execute on function pg_backup_start(text, boolean) from pgcairn",
    )
    .unwrap();
    let out = env.pgcairn(&["--progress", "never", "backup", "--type", "full"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("pg_backup_start"), "{}", stderr(&out));
}

#[test]
fn check_fails_clearly_when_archiving_is_not_pgcairn() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.configure(&[("archive_command", "/bin/true".into())])
        .unwrap();
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let out = env.pgcairn(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("archive_command"), "{}", stderr(&out));
}

#[test]
fn damaged_pages_are_reported_and_the_backup_completes() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    pg.psql("postgres", "checkpoint").unwrap();
    let rel = pg
        .psql(
            "postgres",
            "select pg_relation_filepath('pgbench_accounts')",
        )
        .unwrap();
    drop(stop);
    pg.stop().unwrap();
    // Damage the data area of block 3 behind PostgreSQL's back.
    let path = pg.datadir.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3 * 8192 + 4000] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    let b = backup_json(&env, &["--type", "full"]);
    let bad = b["bad_pages"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{b}");
    assert_eq!(bad[0]["file"], rel.as_str());
    assert_eq!(bad[0]["blocks"], serde_json::json!([3]));
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(doc["clusters"][0]["backups"][0]["bad_pages"], 1);
}

/// A `global/pg_control` whose CRC does not match (as a read torn by PostgreSQL's rewrite of
/// it returns, and as a damaged file is) fails the backup after it was read again: stored,
/// it made a backup that reported success and restored into a cluster PostgreSQL refused to
/// start ("incorrect checksum in control file"). The file is damaged once the backup has
/// started (paused at its first phase after `pg_backup_start`, whose checkpoint rewrites it);
/// once the server rewrites it (a checkpoint), the next backup takes it and restores.
#[test]
fn a_pg_control_without_a_matching_crc_fails_the_backup() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
    let expected = pgbench_fingerprint(&pg);
    let pause = env.path().join("pause");
    std::fs::create_dir(&pause).unwrap();
    give_to(env.run_as.as_deref(), &pause).unwrap();
    let backup = env
        .pgcairn_command(&["--progress", "never", "backup", "--type", "full"])
        .env(
            "PGCAIRN_TEST_PAUSE",
            format!("phase:backup@{}", pause.display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (paused, go) = pgcairn_engine::pause_point::files(&pause, "phase:backup");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(
            Instant::now() < deadline,
            "the backup never reached its copy phase"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Behind the running server's back, past the head pgcairn reads (identifier, versions,
    // checkpoint): the server reads the file only at its start and rewrites it whole.
    let path = pg.datadir.join("global/pg_control");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let started = Instant::now();
    std::fs::write(go, b"").unwrap();
    let out = backup.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "a backup stored a damaged pg_control"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("global/pg_control") && err.contains("never with a matching CRC"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "read again for about a second before giving up: {:?}",
        started.elapsed()
    );
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backups = doc["clusters"][0]["backups"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(backups.is_empty(), "no backup recorded: {doc}");

    pg.psql("postgres", "checkpoint").unwrap();
    let b = backup_json(&env, &["--type", "full"]);
    let restored = env.restore_and_start("restored", b["id"].as_str());
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(pgbench_fingerprint(&restored), expected);
}

#[test]
fn a_killed_backup_leaves_no_manifest_and_the_next_one_reuses_its_uploads() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "12", "-q"]).unwrap();
    // Random-ish data that does not compress away (about 40 MB once compressed): more than
    // one pack, so the backup is still reading when its first pack is indexed.
    pg.psql("postgres", "create table noise as select g, md5(g::text) || md5((g*7)::text) as v from generate_series(1, 1200000) g").unwrap();
    // A pack is linked under its name only once whole; its index segment follows it.
    let index_dir = env.path().join("repo/index");
    let mut child = pgcairn_engine::pg::instance::command_as(env.run_as.as_deref(), &env.bin)
        .args([
            "--config",
            &env.config.display().to_string(),
            "--progress",
            "never",
            "backup",
            "--type",
            "full",
        ])
        .spawn()
        .unwrap();
    // Kill it once at least one pack is uploaded and indexed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if walk_count(&index_dir) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no pack uploaded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup finished before it could be killed; make the data bigger"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // runuser forwards SIGKILL poorly: kill the real pgcairn process by its command line
    // (`env.bin` is this environment's own copy, so tests running beside it are left alone).
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("{} --config", env.bin.display())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        doc["clusters"][0]["backups"].as_array().unwrap().len(),
        0,
        "no manifest after a kill: {doc}"
    );
    // PostgreSQL ended the aborted non-exclusive backup with the session: a new one starts.
    let b = backup_json(&env, &["--type", "full"]);
    let s = &b["stats"];
    assert!(
        s["blocks_new"].as_u64().unwrap() < s["blocks"].as_u64().unwrap(),
        "blocks uploaded by the killed backup are reused: {s}"
    );
    pg.psql("postgres", "create table after_kill as select 1 as x")
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    let restored = env.restore_and_start("restored", None);
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(
        restored
            .psql("postgres", "select count(*) from noise")
            .unwrap(),
        "1200000"
    );
    assert_eq!(
        restored
            .psql("postgres", "select x from after_kill")
            .unwrap(),
        "1"
    );
}

/// A repository disk that fills while a pack is written (large packs go past the page cache
/// through an unnamed file, linked under their name only once whole): the backup fails naming
/// the cause, no backup and no partial pack is left, and the next backup, with room, restores.
#[test]
fn a_backup_into_a_full_repository_says_so_and_leaves_no_partial_pack() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if pgcairn_engine::pg::instance::current_uid() != 0 {
        eprintln!("skipping: mounting a small file system needs root");
        return;
    }
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.started_pgbench_cluster("pg");
    let _stop = StopOnDrop(&pg);
    // About 25 MB of hex digits, 12 MB or so once compressed: one pack of several MiB.
    pg.psql("postgres", "create table noise as select g, md5(g::text) || md5((g*7)::text) as v from generate_series(1, 250000) g").unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    // The repository moves onto a tmpfs with 3 MiB to spare.
    let repo = env.path().join("repo");
    let before = env.path().join("repo-before");
    std::fs::rename(&repo, &before).unwrap();
    let used: u64 = entries_beneath(&before)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.blocks() * 512 + 4096)
        .sum();
    let fs = mount_tmpfs(&repo, &format!("{}k", used / 1024 + 3072));
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", before.display()))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(copied.success());
    let owner = std::fs::metadata(&before).unwrap();
    std::os::unix::fs::chown(&repo, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o700)).unwrap();

    let out = env.pgcairn(&["--progress", "never", "backup", "--type", "full"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("No space left on device"),
        "the error names the cause: {}",
        stderr(&out)
    );
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        doc["clusters"][0]["backups"].as_array().unwrap().len(),
        0,
        "no backup: {doc}"
    );
    let packs = repo.join("packs");
    let partial: Vec<_> = if packs.exists() {
        entries_beneath(&packs)
            .into_iter()
            .filter(|p| p.is_file())
            .collect()
    } else {
        Vec::new()
    };
    assert!(partial.is_empty(), "pack files left: {partial:?}");

    fs.resize("512m");
    let b = backup_json(&env, &["--type", "full"]);
    assert_eq!(b["type"], "full");
    let fingerprint = pgbench_fingerprint(&pg);
    let restored = env.restore_and_start("restored", None);
    let _stop_restored = StopOnDrop(&restored);
    assert_eq!(pgbench_fingerprint(&restored), fingerprint);
    assert_eq!(
        restored
            .psql("postgres", "select count(*) from noise")
            .unwrap(),
        "250000"
    );
}

/// Complete objects beneath `dir` (not object_store's temporary `name#N` files).
fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                usize::from(!e.file_name().to_string_lossy().contains('#'))
            }
        })
        .sum()
}

#[test]
fn backups_connect_over_tls_when_sslmode_asks_for_it() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    // A self-signed server certificate, and a server that refuses TCP clients without TLS.
    env.with_server_certificate(&pg);
    let d = &pg.datadir;
    let mut hba = std::fs::read_to_string(d.join("pg_hba.conf")).unwrap();
    hba =
        format!("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n{hba}");
    std::fs::write(d.join("pg_hba.conf"), hba).unwrap();
    pg.start_with("-c listen_addresses=127.0.0.1").unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let set_conninfo = |sslmode: &str| {
        let text = std::fs::read_to_string(&env.config).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("conninfo =") {
                    format!("conninfo = \"host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={sslmode}\"", pg.port)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        env.replace_config(&(text + "\n"));
    };
    set_conninfo("require");
    let b = backup_json(&env, &["--type", "full"]);
    assert_eq!(b["type"], "full");
    // Proof that TLS was in use: without it the server refuses the connection.
    set_conninfo("disable");
    let out = env.pgcairn(&["--progress", "never", "backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_second_backup_of_the_same_cluster_fails_clearly_and_never_kills_the_first() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "create table noise as select g, md5(g::text) || md5((g*7)::text) as v from generate_series(1, 600000) g").unwrap();
    let mut first = std::process::Command::new(&env.bin);
    if env.run_as.is_some() {
        let meta = std::fs::metadata(env.path()).unwrap();
        first.uid(meta.uid()).gid(meta.gid());
    }
    // The first backup holds still once it has its lease (PGCAIRN_TEST_PAUSE at its first
    // phase after taking it) until the second has been refused: a small database backs up in
    // less time than the second takes to start.
    let pause = env.path().join("pause");
    std::fs::create_dir(&pause).unwrap();
    give_to(env.run_as.as_deref(), &pause).unwrap();
    let mut first = first
        .env(
            "PGCAIRN_TEST_PAUSE",
            format!("phase:loading the block index@{}", pause.display()),
        )
        .args([
            "--config",
            &env.config.display().to_string(),
            "--progress",
            "never",
            "backup",
            "--type",
            "full",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let leases = env.path().join("repo/leases");
    let (paused, go) = pgcairn_engine::pause_point::files(&pause, "phase:loading the block index");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() || std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first backup never took its lease"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first backup ended before the second could start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = env.pgcairn(&["--progress", "never", "backup", "--type", "full"]);
    std::fs::write(go, b"").unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another backup of cluster \"main\" is running"),
        "{}",
        stderr(&second)
    );
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the first backup completed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&leases).unwrap().count(),
        0,
        "the lease is released"
    );
    backup_json(&env, &[]);
}

/// Before: with `pgdata` pointing at a stale restored copy of the same system, `backup`
/// reported success, and restoring it gave the copy's old rows.
fn a_backup_refuses_a_data_directory_that_is_not_the_servers(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t as select generate_series(1, 2000) i",
    )
    .unwrap();
    backup_json(&env, &["--type", "full"]);
    // A stale copy of the same system: the backup restored, never started.
    env.restore("stale", &[]);
    pg.psql(
        "postgres",
        "insert into t select generate_series(2001, 5000); checkpoint",
    )
    .unwrap();
    let stale = env.path().join("stale");
    let text = std::fs::read_to_string(&env.config).unwrap();
    env.replace_config(&text.replace(
        &format!("pgdata = \"{}\"", pg.datadir.display()),
        &format!("pgdata = \"{}\"", stale.display()),
    ));
    let out = env.pgcairn(&["--progress", "never", "backup", "--type", "full"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains(&stale.display().to_string())
            && msg.contains(&pg.datadir.display().to_string()),
        "the error names both directories: {msg}"
    );
    // Pointed back at the server's own directory, the backup works.
    env.replace_config(&text);
    backup_json(&env, &["--type", "full"]);
}

#[test]
fn a_backup_refuses_a_data_directory_that_is_not_the_servers_file() {
    a_backup_refuses_a_data_directory_that_is_not_the_servers(Backend::File);
}

#[test]
fn a_backup_refuses_a_data_directory_that_is_not_the_servers_s3() {
    if s3_endpoint().is_some() {
        a_backup_refuses_a_data_directory_that_is_not_the_servers(Backend::S3);
    }
}
