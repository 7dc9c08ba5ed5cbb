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

fn configuration_comes_back(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    // Debian's layout: the configuration in its own directory, named by -c config_file.
    let etc = env.path().join("etc/postgresql/main");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        std::fs::rename(pg.datadir.join(f), etc.join(f)).unwrap();
    }
    let conf = etc.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "hba_file = '{}'\nident_file = '{}'\ninclude_dir = 'conf.d'\n",
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
    let config_file = format!(
        "-c config_file={}",
        pgcairn_engine::pg::instance::sh_quote(&conf.display().to_string())
    );
    pg.start_with(&config_file).unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    assert_eq!(pg.psql("postgres", "show work_mem").unwrap(), "7MB");
    pg.psql("postgres", "create table t as select 42 as answer")
        .unwrap();
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

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
    let restored_conf = under(&etc_dir, &conf).display().to_string();
    r.start_with(&format!(
        "-c config_file={} -c archive_mode=off",
        pgcairn_engine::pg::instance::sh_quote(&restored_conf)
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
