//! End to end: a cluster whose WAL is on its own disk (`pg_wal` a link, as `initdb -X` makes
//! it) keeps it there through `restore --wal-dir` and delta restores, on `file://` and S3. A
//! delta restore over a linked `pg_wal` without `--wal-dir` refuses instead of moving WAL
//! onto the data directory's disk; a WAL directory that overlaps the data directory, is not
//! empty, or (delta) holds anything but WAL is refused before anything is written; stale WAL
//! in it is removed by a delta restore.

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcairn_tests::*;

fn fingerprint(inst: &Instance) -> String {
    inst.psql(
        "postgres",
        "select count(*) || '/' || sum(id) || '/' || md5(string_agg(v, ',' order by id)) from t",
    )
    .unwrap()
}

/// WAL segment files directly in `dir`.
fn segments(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// A new cluster of `env` with WAL on "its own disk": `pg_wal` moved out to `<dir>/wal_src`
/// and linked, as `initdb -X` leaves it; started, archiving. Returns it and that directory.
fn cluster_with_linked_wal(env: &TestEnv) -> (Instance, PathBuf) {
    let pg = env.cluster("pg");
    let wal_src = env.path().join("wal_src");
    std::fs::rename(pg.datadir.join("pg_wal"), &wal_src).unwrap();
    symlink(&wal_src, pg.datadir.join("pg_wal")).unwrap();
    pg.start().unwrap();
    env.use_cluster(&pg);
    (pg, wal_src)
}

fn wal_stays_on_its_own_disk(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let (pg, wal_src) = cluster_with_linked_wal(&env);
    let stop = StopOnDrop(&pg);
    pg.psql(
        "postgres",
        "create table t as select g as id, md5(g::text) as v from generate_series(1, 50000) g",
    )
    .unwrap();
    backup_json(&env, &["--type", "full"]);
    pg.psql("postgres", "update t set v = 'after' where id % 5 = 0")
        .unwrap();
    let expected = fingerprint(&pg);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    let target = env.path().join("r");
    let pgdata = target.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--progress", "never", "restore", "--pgdata", &pgdata];
        all.extend_from_slice(args);
        env.pgcairn(&all)
    };
    let wal_r = env.path().join("wal_r");
    let wal_arg = wal_r.display().to_string();

    // The backup recorded where pg_wal pointed.
    let dry = run(&["--dry-run", "--output", "json"]);
    assert_success(&dry, "dry run");
    let doc: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        doc["backup_wal_link"].as_str(),
        Some(wal_src.to_str().unwrap()),
        "{doc}"
    );

    // Refused before anything is written: a relative path, one inside the data directory,
    // one that is not empty.
    std::fs::create_dir_all(env.path().join("busy")).unwrap();
    std::fs::write(env.path().join("busy/notes.txt"), b"keep me").unwrap();
    let inside = target.join("wal").display().to_string();
    let busy = env.path().join("busy").display().to_string();
    for (dir, says) in [
        ("wal", "must be absolute"),
        (inside.as_str(), "overlaps the data directory"),
        (busy.as_str(), "is not empty"),
    ] {
        let out = run(&["--wal-dir", dir]);
        assert!(!out.status.success(), "--wal-dir {dir} was taken");
        assert!(stderr(&out).contains(says), "{dir}: {}", stderr(&out));
        assert!(
            !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
            "--wal-dir {dir}: the target was written"
        );
    }
    assert_eq!(
        std::fs::read(env.path().join("busy/notes.txt")).unwrap(),
        b"keep me"
    );

    // Restored with its WAL directory: pg_wal links there, owned and private like pg_wal.
    let out = env.restore("r", &["--wal-dir", &wal_arg]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("pg_wal: a link to {wal_arg}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read_link(target.join("pg_wal")).unwrap(), wal_r);
    let meta = std::fs::metadata(&wal_r).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(
        meta.uid(),
        std::fs::metadata(target.join("PG_VERSION")).unwrap().uid(),
        "the WAL directory belongs to the data directory's owner"
    );
    assert!(wal_r.join("archive_status").is_dir());
    let r = env.restored_instance("r", false);
    r.start().unwrap();
    let stop_r = StopOnDrop(&r);
    wait_recovered(&r, "r", Duration::from_secs(180));
    assert_eq!(fingerprint(&r), expected, "recovered exactly");
    r.psql("postgres", "checkpoint").unwrap();
    assert!(
        !segments(&wal_r).is_empty(),
        "the recovered server writes its WAL in the WAL directory"
    );
    drop(stop_r);
    r.stop().unwrap();

    // A delta restore without --wal-dir refuses rather than move WAL onto the data disk.
    let out = run(&["--delta"]);
    assert!(
        !out.status.success(),
        "delta over a linked pg_wal was taken"
    );
    assert!(
        stderr(&out).contains(&format!("is a symbolic link to {wal_arg}"))
            && stderr(&out).contains(&format!("--wal-dir {wal_arg}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_link(target.join("pg_wal")).unwrap(), wal_r);
    assert!(
        target.join("global/pg_control").exists(),
        "the refused delta restore changed nothing"
    );

    // A directory of WAL names that pg_wal does not link to (an archive of `cp %p`, a
    // pg_receivewal directory, another cluster's pg_wal) is never emptied.
    let archive = env.path().join("wal_archive");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(archive.join("000000010000000000000001"), b"archived").unwrap();
    let out = run(&["--delta", "--wal-dir", archive.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "a WAL archive was taken as the WAL directory"
    );
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(archive.join("000000010000000000000001")).unwrap(),
        b"archived"
    );
    assert_eq!(std::fs::read_link(target.join("pg_wal")).unwrap(), wal_r);

    // With it: anything but WAL there is refused; stale WAL is removed.
    let stale = wal_r.join("0000000900000000000000AA");
    std::fs::write(&stale, b"a segment of another history").unwrap();
    std::fs::write(wal_r.join("notes.txt"), b"not WAL").unwrap();
    let out = run(&["--delta", "--wal-dir", &wal_arg]);
    assert!(
        !out.status.success(),
        "a WAL directory holding notes.txt was emptied"
    );
    assert!(stderr(&out).contains("\"notes.txt\""), "{}", stderr(&out));
    assert!(target.join("global/pg_control").exists());
    std::fs::remove_file(wal_r.join("notes.txt")).unwrap();
    env.restore("r", &["--delta", "--wal-dir", &wal_arg]);
    assert!(!stale.exists(), "stale WAL was left in the WAL directory");
    assert_eq!(std::fs::read_link(target.join("pg_wal")).unwrap(), wal_r);
    let r = env.restored_instance("r", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "r delta", Duration::from_secs(180));
    assert_eq!(
        fingerprint(&r),
        expected,
        "recovered exactly after the delta"
    );
}

#[test]
fn wal_on_its_own_disk_stays_there_on_every_backend() {
    for backend in backends() {
        wal_stays_on_its_own_disk(backend);
    }
}

/// Without --wal-dir the restore says where the backup's WAL was and makes pg_wal a
/// directory.
#[test]
fn a_restore_without_wal_dir_names_where_the_backups_wal_was() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let (pg, wal_src) = cluster_with_linked_wal(&env);
    let stop = StopOnDrop(&pg);
    backup_json(&env, &["--type", "full"]);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();
    let info = env.info_text();
    assert!(
        info.contains(&format!(
            "pg_wal (newest backup): a link to {}",
            wal_src.display()
        )),
        "{info}"
    );
    let out = env.restore("plain", &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "the backup's pg_wal was a link to {}",
            wal_src.display()
        )),
        "{text}"
    );
    let meta = std::fs::symlink_metadata(env.path().join("plain/pg_wal")).unwrap();
    assert!(meta.is_dir(), "pg_wal is a directory of the data directory");
    let r = env.restored_instance("plain", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "plain", Duration::from_secs(180));
}
