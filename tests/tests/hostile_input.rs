//! End to end: hostile or careless input to the command line, the configuration and the
//! recovery settings (issue 13's audit). Each test is named after what went wrong before.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use pgcairn_engine::pg::instance::{command_as, free_port, PgBinaries};
use pgcairn_tests::*;

fn assert_exit(out: &Output, expected: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(expected),
        "{what}: expected exit {expected}, got {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// Files whose name contains `needle` anywhere under `root`.
fn find_named(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

/// A copy of the environment's config at a path made of shell metacharacters.
fn hostile_config(env: &TestEnv) -> PathBuf {
    let dir = env
        .path()
        .join("cfg $(touch injected-dollar) `touch injected-tick` 'q' \"dq\" 100%p");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("pgcairn $(id).toml");
    std::fs::copy(&env.config, &cfg).unwrap();
    give_to(env.run_as.as_deref(), &dir).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    cfg
}

/// Before: `$(...)` and backticks in `--config` ran as `postgres` when PostgreSQL executed
/// `restore_command`, `%p` in a path was expanded by PostgreSQL, and a newline in a restore
/// point's name wrote a `postgresql.auto.conf` that PostgreSQL could not parse.
fn restore_command_and_settings_survive_hostile_paths_and_names(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table t(i int); insert into t values (1)",
    )
    .unwrap();
    backup_json(&env, &["--type", "full"]);
    pg.psql("postgres", "insert into t values (2)").unwrap();
    let name = "before three\nsecond line 'quoted' back\\slash";
    assert_success(
        &env.pgcairn(&["restore-point", name]),
        "restore-point with a newline",
    );
    pg.psql("postgres", "insert into t values (3)").unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));

    let cfg = hostile_config(&env);
    let target = env.path().join("restored");
    let out = env.pgcairn_with_config(
        &cfg,
        &[
            "--progress",
            "never",
            "restore",
            "--pgdata",
            &target.display().to_string(),
            "--target-name",
            name,
            "--target-action",
            "promote",
        ],
    );
    assert_success(&out, "restore through a hostile config path");
    let auto = std::fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.lines().all(|l| !l.starts_with("second line")),
        "the name's newline is escaped, not written raw:\n{auto}"
    );
    let r = pgcairn_engine::pg::instance::Instance::new(
        PgBinaries::find().unwrap(),
        target.clone(),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    r.configure(&[("archive_mode", "off".into())]).unwrap();
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "restored", Duration::from_secs(120));
    let rows = r.psql(
        "postgres",
        "select string_agg(i::text, ',' order by i) from t",
    );
    assert_eq!(
        rows.unwrap().trim(),
        "1,2",
        "recovery stopped at the restore point named with a newline"
    );
    let injected = find_named(env.path(), "injected-");
    let injected: Vec<_> = injected
        .into_iter()
        .filter(|p| !p.starts_with(cfg.parent().unwrap()))
        .collect();
    assert!(
        injected.is_empty(),
        "restore_command ran shell code from the config path: {injected:?}"
    );
}

#[test]
fn restore_command_and_settings_survive_hostile_paths_and_names_file() {
    restore_command_and_settings_survive_hostile_paths_and_names(Backend::File);
}

#[test]
fn restore_command_and_settings_survive_hostile_paths_and_names_s3() {
    if s3_endpoint().is_some() {
        restore_command_and_settings_survive_hostile_paths_and_names(Backend::S3);
    }
}

/// Before: a panic in archive-get exited 101, which PostgreSQL reads as "not found" and ends
/// recovery early at the wrong point.
#[test]
fn a_panic_in_archive_get_aborts_recovery_instead_of_meaning_absent() {
    for backend in backends() {
        let env = TestEnv::new(EnvOptions::new(backend));
        let dest = env.path().join("dest");
        std::fs::create_dir_all(&dest).unwrap();
        give_to(env.run_as.as_deref(), &dest).unwrap();
        let dest = dest.join("000000010000000000000001");
        let get = |panic: bool| {
            let mut c = command_as(env.run_as.as_deref(), &env.bin);
            c.arg("--config").arg(&env.config).args([
                "archive-get",
                "000000010000000000000001",
                &dest.display().to_string(),
            ]);
            if panic {
                c.env("PGCAIRN_TEST_PANIC", "archive-get");
            }
            c.output().unwrap()
        };
        assert_exit(&get(false), 1, "an absent segment");
        let out = get(true);
        assert_exit(&out, 200, "archive-get that panicked on a worker thread");
        assert!(stderr(&out).contains("stops recovery"), "{}", stderr(&out));
        assert!(!dest.exists());
    }
}

/// Before: two `init`s racing on one new `--key-file` path: the loser's cleanup deleted the
/// key file the winner's repository was created with.
#[test]
fn racing_inits_on_one_new_key_file_leave_the_repository_openable() {
    for backend in backends() {
        let env = TestEnv::new(EnvOptions::new(backend));
        let rounds = if backend == Backend::File { 12 } else { 4 };
        for round in 0..rounds {
            let key = env.path().join(format!("race-{round}.key"));
            let url = match backend {
                Backend::File => format!("file://{}/race-{round}", env.path().display()),
                Backend::S3 => format!("{}-race-{round}", env.repo_url),
            };
            let text = std::fs::read_to_string(&env.config)
                .unwrap()
                .replace(&env.repo_url, &url)
                .replace(
                    &env.key_file.display().to_string(),
                    &key.display().to_string(),
                );
            let cfg = env.path().join(format!("race-{round}.toml"));
            std::fs::write(&cfg, text).unwrap();
            std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
            give_to(env.run_as.as_deref(), &cfg).unwrap();
            let outs: Vec<Output> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2)
                    .map(|_| s.spawn(|| env.pgcairn_with_config(&cfg, &["init"])))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won = outs.iter().filter(|o| o.status.success()).count();
            assert_eq!(
                won, 1,
                "round {round}: exactly one init creates the repository"
            );
            assert!(
                key.exists(),
                "round {round}: the key file survived the race"
            );
            let info = env.pgcairn_with_config(&cfg, &["info"]);
            assert_success(
                &info,
                &format!("round {round}: the repository opens with its key"),
            );
        }
    }
}

/// Before: a config file holding `secret_access_key` with mode 0666, and a key file that is a
/// symlink to another user's 0644 file, were used silently.
#[test]
fn config_and_key_files_others_can_read_or_change_are_refused() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let cfg = env.path().join("open.toml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\n").replace("[repo]\n", "[repo]\nsecret_access_key = \"s\"\n"),
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &cfg).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = env.pgcairn_with_config(&cfg, &["info"]);
    assert_exit(&out, 2, "a world-writable config");
    assert!(
        stderr(&out).contains("writable by every user"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.pgcairn_with_config(&cfg, &["info"]);
    assert_exit(&out, 2, "a world-readable config holding a secret");
    assert!(
        stderr(&out).contains("holds credentials"),
        "{}",
        stderr(&out)
    );

    // A key file reached through a symlink to a file every user can read.
    let foreign = env.path().join("foreign.key");
    std::fs::copy(&env.key_file, &foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
    if pgcairn_engine::pg::instance::current_uid() == 0 {
        std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    }
    let link = env.path().join("link.key");
    std::os::unix::fs::symlink(&foreign, &link).unwrap();
    let cfg2 = env.path().join("link.toml");
    std::fs::write(
        &cfg2,
        text.replace(
            &env.key_file.display().to_string(),
            &link.display().to_string(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg2, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to(env.run_as.as_deref(), &cfg2).unwrap();
    let out = env.pgcairn_with_config(&cfg2, &["info"]);
    assert_exit(&out, 2, "a key file linked to another user's readable file");
    assert!(stderr(&out).contains("repo.key_file"), "{}", stderr(&out));
    // The explicit override turns the refusal into a warning.
    std::fs::write(
        &cfg2,
        text.replace(
            &env.key_file.display().to_string(),
            &link.display().to_string(),
        )
        .replace("[repo]\n", "[repo]\nallow_insecure_files = true\n"),
    )
    .unwrap();
    let out = env.pgcairn_with_config(&cfg2, &["info"]);
    assert_success(&out, "info with allow_insecure_files");
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// Before: `info` on a mistyped file:// URL created the directory tree.
#[test]
fn read_only_commands_never_create_a_repository_path() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let typo = env.path().join("typo");
    let url = format!("file://{}/deeper/repo", typo.display());
    for args in [
        vec!["--repo", url.as_str(), "info"],
        vec!["--repo", url.as_str(), "verify"],
    ] {
        let out = env.pgcairn(&args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
}

/// Before: a `password=` in `conninfo` was printed verbatim in errors, and neither a password
/// file nor `PGPASSWORD` was used.
#[test]
fn conninfo_passwords_stay_secret_and_password_files_work() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "alter user postgres password 'pw-secret-123'")
        .unwrap();
    // From now on, password authentication on the socket.
    std::fs::write(
        pg.datadir.join("pg_hba.conf"),
        "local all all scram-sha-256\n",
    )
    .unwrap();
    let reload = command_as(
        env.run_as.as_deref(),
        &PgBinaries::find().unwrap().program("pg_ctl"),
    )
    .args(["reload", "-D"])
    .arg(&pg.datadir)
    .output()
    .unwrap();
    assert!(reload.status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pg.psql("postgres", "select 1").is_err(),
        "the socket now asks for a password"
    );

    let base = std::fs::read_to_string(&env.config).unwrap();
    let with_conninfo = |extra: &str| {
        let cfg = env.path().join("conninfo.toml");
        let text: String = base
            .lines()
            .map(|l| {
                if l.starts_with("conninfo = ") {
                    format!(
                        "conninfo = \"host={} port={} user=postgres dbname=postgres {extra}\"",
                        pg.socket_dir.display(),
                        pg.port
                    )
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&cfg, text).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        give_to(env.run_as.as_deref(), &cfg).unwrap();
        cfg
    };
    // A wrong password in conninfo: refused, and not shown.
    let cfg = with_conninfo("password=hunter2-wrong");
    let out = env.pgcairn_with_config(&cfg, &["restore-point", "rp1"]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("password=********"),
        "{}",
        stderr(&out)
    );
    // A password file (0600, as libpq requires); the socket directory matches "localhost".
    let passfile = env.path().join("pgpass");
    std::fs::write(&passfile, "localhost:*:*:postgres:pw-secret-123\n").unwrap();
    give_to(env.run_as.as_deref(), &passfile).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = with_conninfo(&format!("passfile={}", passfile.display()));
    assert_success(
        &env.pgcairn_with_config(&cfg, &["restore-point", "rp2"]),
        "restore-point with a password file",
    );
    // PGPASSWORD.
    let cfg = with_conninfo("");
    let mut c = command_as(env.run_as.as_deref(), &env.bin);
    c.arg("--config").arg(&cfg).args(["restore-point", "rp3"]);
    c.env("PGPASSWORD", "pw-secret-123");
    assert_success(&c.output().unwrap(), "restore-point with PGPASSWORD");
}
