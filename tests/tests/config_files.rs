//! End to end, on `file://` and S3: a cluster laid out as Debian's `pg_createcluster` lays
//! it out (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf` and `conf.d/` outside the data
//! directory) keeps those files with each backup; `restore --config-dir` writes them back at
//! their paths under a directory, never over an existing file, and the restored cluster
//! starts on the restored configuration.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcairn_tests::*;

/// `dir` + the absolute `path` beneath it.
fn under(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.strip_prefix("/").unwrap())
}

/// Lays `pg` out as Debian's `pg_createcluster` does: `postgresql.conf`, `pg_hba.conf`,
/// `pg_ident.conf` and `conf.d/tune.conf` (work_mem 7MB) in `<env>/etc/postgresql/main`,
/// `data_directory` naming the data directory, `extra` appended to `postgresql.conf`; starts
/// it on that file (`-c config_file`) and returns the directory.
fn debian_layout(env: &TestEnv, pg: &Instance, extra: &str) -> PathBuf {
    let etc = env.path().join("etc/postgresql/main");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        std::fs::rename(pg.datadir.join(f), etc.join(f)).unwrap();
    }
    let conf = etc.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "data_directory = '{}'\nhba_file = '{}'\nident_file = '{}'\ninclude_dir = 'conf.d'\n{extra}",
        pg.datadir.display(),
        etc.join("pg_hba.conf").display(),
        etc.join("pg_ident.conf").display()
    ));
    std::fs::write(&conf, text).unwrap();
    std::fs::write(etc.join("conf.d/tune.conf"), "work_mem = '7MB'\n").unwrap();
    std::fs::set_permissions(
        etc.join("pg_hba.conf"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &env.path().join("etc")).unwrap();
    pg.start_with(&format!(
        "-c config_file={}",
        pgcairn_engine::pg::instance::sh_quote(&conf.display().to_string())
    ))
    .unwrap();
    etc
}

/// Creates table `t` (answer 42), takes a full backup, archives its WAL and stops `pg`.
fn backed_up_and_stopped(env: &TestEnv, pg: &Instance, running: StopOnDrop<'_>) {
    pg.psql("postgres", "create table t as select 42 as answer")
        .unwrap();
    backup_json(env, &["--type", "full"]);
    let last = switch_wal(pg);
    wait_archived(pg, &last, Duration::from_secs(90));
    drop(running);
    pg.stop().unwrap();
}

fn configuration_comes_back(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    // Debian's layout: the configuration in its own directory, named by -c config_file.
    let etc = debian_layout(&env, &pg, "");
    let conf = etc.join("postgresql.conf");
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    assert_eq!(pg.psql("postgres", "show work_mem").unwrap(), "7MB");
    backed_up_and_stopped(&env, &pg, stop);

    let kept = [
        conf.clone(),
        etc.join("pg_hba.conf"),
        etc.join("pg_ident.conf"),
        etc.join("conf.d/tune.conf"),
    ];
    let target = env.path().join("r");
    let pgdata = target.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--progress", "never", "restore", "--pgdata", &pgdata];
        all.extend_from_slice(args);
        env.pgcairn(&all)
    };
    // The backup holds the four files; a restore without --config-dir says so.
    let dry = run(&["--dry-run", "--output", "json"]);
    assert_success(&dry, "dry run");
    let doc: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let mut listed: Vec<PathBuf> = doc["config_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    listed.sort();
    let mut expected = kept.to_vec();
    expected.sort();
    assert_eq!(listed, expected, "{doc}");

    // An existing file is never overwritten: refused before anything is written.
    let etc_dir = env.path().join("restored-etc");
    let taken = under(&etc_dir, &etc.join("pg_hba.conf"));
    std::fs::create_dir_all(taken.parent().unwrap()).unwrap();
    std::fs::write(&taken, b"mine").unwrap();
    give_to(env.run_as.as_deref(), &env.path().join("restored-etc")).unwrap();
    let etc_arg = etc_dir.display().to_string();
    let out = run(&["--config-dir", &etc_arg]);
    assert!(
        !out.status.success(),
        "an existing pg_hba.conf was overwritten"
    );
    assert!(
        stderr(&out).contains(&format!(
            "{}: it exists with other contents",
            taken.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());
    std::fs::remove_file(&taken).unwrap();

    let out = env.restore("r", &["--config-dir", &etc_arg]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for f in &kept {
        let restored = under(&etc_dir, f);
        assert!(
            text.contains(&format!(
                "configuration file written: {}",
                restored.display()
            )),
            "{text}"
        );
        assert_eq!(
            std::fs::read(&restored).unwrap(),
            std::fs::read(f).unwrap(),
            "{}",
            f.display()
        );
        let (m, orig) = (
            std::fs::metadata(&restored).unwrap(),
            std::fs::metadata(f).unwrap(),
        );
        assert_eq!(m.mode() & 0o777, orig.mode() & 0o777, "{}", f.display());
        assert_eq!(m.uid(), orig.uid(), "{}", f.display());
    }
    // What would still point at the backed-up host is named for review.
    let restored_conf = under(&etc_dir, &conf).display().to_string();
    assert!(
        text.contains(&format!(
            "review: {restored_conf}: data_directory = '{}', not the restored {}",
            pg.datadir.display(),
            target.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "review: {restored_conf} names paths of the backed-up host (hba_file = '{}', \
             ident_file = '{}')",
            etc.join("pg_hba.conf").display(),
            etc.join("pg_ident.conf").display()
        )),
        "{text}"
    );
    // Run again (another restore, the same directory): the same contents count as written.
    let again = env.restore("r2", &["--config-dir", &etc_arg]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("configuration file written"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // The restored cluster starts on the restored configuration (conf.d included).
    let r = Instance::new(
        pg_binaries_for(&target),
        target.clone(),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    // As the review says: the restored data directory, not the one the file names.
    r.start_with(&format!(
        "-c config_file={} -c data_directory={} -c archive_mode=off",
        pgcairn_engine::pg::instance::sh_quote(&restored_conf),
        pgcairn_engine::pg::instance::sh_quote(&target.display().to_string())
    ))
    .unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "r", Duration::from_secs(180));
    assert_eq!(r.psql("postgres", "show work_mem").unwrap(), "7MB");
    assert_eq!(
        r.psql("postgres", "show config_file").unwrap(),
        restored_conf
    );
    assert_eq!(r.psql("postgres", "select answer from t").unwrap(), "42");
}

#[test]
fn configuration_outside_the_data_directory_comes_back_on_every_backend() {
    for backend in backends() {
        configuration_comes_back(backend);
    }
}

/// A restore without --config-dir writes nothing outside the data directory and says what
/// the backup holds.
#[test]
fn without_config_dir_the_restore_names_the_files_and_writes_none() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    let etc = env.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::rename(pg.datadir.join("pg_ident.conf"), etc.join("pg_ident.conf")).unwrap();
    pg.configure(&[(
        "ident_file",
        etc.join("pg_ident.conf").display().to_string(),
    )])
    .unwrap();
    give_to(env.run_as.as_deref(), &etc).unwrap();
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    backup_json(&env, &["--type", "full"]);
    drop(stop);
    pg.stop().unwrap();
    let info = env.info_text();
    assert!(
        info.contains(&format!(
            "configuration files outside the data directory (newest backup): {}",
            etc.join("pg_ident.conf").display()
        )),
        "{info}"
    );
    let out = env.restore("plain", &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "the backup holds configuration files from outside the data directory ({})",
            etc.join("pg_ident.conf").display()
        )),
        "{text}"
    );
    assert!(
        !env.path().join("plain/pg_ident.conf").exists(),
        "a file outside the data directory was written into it"
    );
}

/// A drill of a cluster laid out as Debian lays it out (no `postgresql.conf` in the data
/// directory; `data_directory` naming production's) runs on the backup's configuration, read
/// from its own copy: never on the host's files as they are now, never on production's data
/// directory, and its log read whatever production's logging says.
#[test]
fn a_drill_runs_on_the_configuration_the_backup_kept() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    let shared = env.path().join("etc/postgresql/shared.conf");
    std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
    std::fs::write(&shared, "maintenance_work_mem = '77MB'\n").unwrap();
    let etc = debian_layout(
        &env,
        &pg,
        &format!(
            // Relative, climbing out of the directory, the name in capitals: all as
            // PostgreSQL reads them.
            "Include '../shared.conf'\nlogging_collector = on\nlog_destination = 'csvlog'\n\
             log_directory = '{}'\nlog_min_messages = 'fatal'\n",
            env.path().join("pglog").display(),
        ),
    );
    let conf = etc.join("postgresql.conf");
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    assert_eq!(
        pg.psql("postgres", "show maintenance_work_mem").unwrap(),
        "77MB"
    );
    backed_up_and_stopped(&env, &pg, stop);
    // The host's files change after the backup: the drill must not read them.
    std::fs::write(etc.join("conf.d/tune.conf"), "work_mem = '9MB'\n").unwrap();
    std::fs::write(&shared, "maintenance_work_mem = '99MB'\n").unwrap();
    let control = std::fs::read(pg.datadir.join("global/pg_control")).unwrap();

    let checks = env.path().join("checks.sql");
    std::fs::write(
        &checks,
        "select current_setting('work_mem') = '7MB';\n\
         select current_setting('maintenance_work_mem') = '77MB';\n\
         select answer = 42 from t;\n",
    )
    .unwrap();
    give_to(env.run_as.as_deref(), &checks).unwrap();
    let out = env.drill(&["--check-sql", &checks.display().to_string()]);
    let doc = passed_drill(&out);
    let check = |name: &str| drill_check(&doc, name);
    let c = check("production configuration");
    assert_eq!(c["status"], "passed", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains(&conf.display().to_string())
            && detail.contains("with the 2 files it includes"),
        "{detail}"
    );
    for name in [
        "isolated from production",
        "recovery reached the target",
        "check-sql #1",
        "check-sql #2",
    ] {
        assert_eq!(check(name)["status"], "passed", "{name}: {doc:#}");
    }
    // Production's data directory was never started by the drill.
    assert!(!pg.datadir.join("postmaster.pid").exists());
    assert_eq!(
        std::fs::read(pg.datadir.join("global/pg_control")).unwrap(),
        control
    );

    // As root, as drills are often scheduled (the fixtures run pgcairn as PostgreSQL's user):
    // the kept copy and its directories go to the instance's user, and the drill passes on the
    // backup's values the same way.
    if pgcairn_engine::pg::instance::current_uid() == 0 {
        let out = env
            .root_drill_command(&env.path().join("root-reports"))
            .args(["--check-sql", &checks.display().to_string()])
            .output()
            .unwrap();
        let doc = passed_drill(&out);
        for name in [
            "production configuration",
            "isolated from production",
            "check-sql #1",
            "check-sql #2",
        ] {
            assert_eq!(
                drill_check(&doc, name)["status"],
                "passed",
                "{name}: {doc:#}"
            );
        }
        assert!(!pg.datadir.join("postmaster.pid").exists());
        assert_eq!(
            std::fs::read(pg.datadir.join("global/pg_control")).unwrap(),
            control
        );
    }
}
