//! Selective restore end to end (`restore --db-include`, `--db-exclude`): on `file://` and
//! S3, with a database in a tablespace, and writes in every database after the backup so
//! that replay rewrites pages of the databases left out. The database asked for comes back
//! exactly; the others' files are sparse (nothing allocated), the cluster recovers, they
//! cannot be used and can be dropped; a delta restore fills in what was left out.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgcairn_tests::*;

/// `count/sum of ids/md5 of every v` of table `t` in `db`.
fn fingerprint(inst: &Instance, db: &str) -> String {
    inst.psql(
        db,
        "select count(*) || '/' || sum(id) || '/' || md5(string_agg(v, ',' order by id)) from t",
    )
    .unwrap()
}

/// Bytes and allocated bytes of the files directly in `dir`, but `PG_VERSION`.
fn sizes(dir: &Path) -> (u64, u64) {
    let mut len = 0;
    let mut allocated = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "PG_VERSION" {
            continue;
        }
        let m = e.metadata().unwrap();
        len += m.len();
        allocated += m.blocks() * 512;
    }
    (len, allocated)
}

/// The directory of database `oid` in the one tablespace restored under `ts_root`.
fn tablespace_db_dir(ts_root: &Path, oid: &str) -> PathBuf {
    let ts = std::fs::read_dir(ts_root)
        .unwrap()
        .next()
        .expect("the tablespace was restored")
        .unwrap()
        .path();
    let version_dir = std::fs::read_dir(&ts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("PG_"))
        .expect("a PG_<version> directory");
    version_dir.join(oid)
}

fn one_database_comes_back(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    env.create_tablespace(&pg, "ts_data");
    pg.psql("postgres", "create database keep").unwrap();
    pg.psql("postgres", "create database big").unwrap();
    pg.psql("postgres", "create database moved tablespace extra")
        .unwrap();
    for (db, rows) in [("keep", 20_000), ("big", 300_000), ("moved", 100_000)] {
        pg.psql(
            db,
            &format!(
                "create table t as select g as id, md5(g::text) as v from generate_series(1, {rows}) g"
            ),
        )
        .unwrap();
    }
    let oid = |db: &str| {
        pg.psql(
            "postgres",
            &format!("select oid from pg_database where datname = '{db}'"),
        )
        .unwrap()
    };
    let (keep, big, moved) = (oid("keep"), oid("big"), oid("moved"));
    let full = backup_json(&env, &["--type", "full"]);
    // info names them, with the OIDs the restore takes too.
    let text = env.info_text();
    let line = text
        .lines()
        .find(|l| l.contains("databases (newest backup): "))
        .unwrap_or_else(|| panic!("{text}"));
    for db in ["postgres", "keep", "big", "moved"] {
        assert!(line.contains(&format!("{db} ({})", oid(db))), "{line}");
    }
    // Changes after the backup in every database: replay rewrites pages of those left out.
    for db in ["keep", "big", "moved"] {
        pg.psql(db, "update t set v = 'after' where id % 7 = 0")
            .unwrap();
        pg.psql(
            db,
            "insert into t select g, 'new' from generate_series(1000001, 1001000) g",
        )
        .unwrap();
    }
    let expected: Vec<String> = ["keep", "big"]
        .iter()
        .map(|db| fingerprint(&pg, db))
        .collect();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    let target = env.path().join("sel");
    let ts_root = env.path().join("sel_ts");
    let ts_map = ts_root.display().to_string();
    let pgdata = target.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--progress", "never", "restore", "--pgdata", &pgdata];
        all.extend_from_slice(args);
        env.pgcairn(&all)
    };

    // Mistakes are refused before anything is written, naming what the backup holds.
    for (args, says) in [
        (vec!["--db-include", "kep"], "keep ("),
        (vec!["--db-include", "postgres"], "always restored"),
        (vec!["--db-exclude", "template1"], "template"),
        (
            vec!["--db-include", "keep", "--type", "standby"],
            "--type standby restores every database",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(
            !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
            "{args:?} wrote into the target"
        );
    }
    // The dry run checks the tablespace directories the restore would write (the source's
    // own location is not empty): mapped as the restore below maps them.
    let dry = run(&[
        "--db-include",
        "keep",
        "--dry-run",
        "--tablespace-map-all",
        &ts_map,
    ]);
    assert_success(&dry, "dry run");
    let text = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        text.contains(&format!("to be left out: big ({big}), moved ({moved})")),
        "{text}"
    );
    // The same as one JSON document, for automation.
    let dry = run(&[
        "--db-include",
        "keep",
        "--dry-run",
        "--output",
        "json",
        "--tablespace-map-all",
        &ts_map,
    ]);
    assert_success(&dry, "dry run (json)");
    let doc: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(doc["dry_run"], true, "{doc}");
    assert_eq!(doc["backup_id"], full["id"], "{doc}");
    let left: Vec<(String, String)> = doc["databases_left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["oid"].to_string(),
                d["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        left,
        vec![
            (big.clone(), "big".to_string()),
            (moved.clone(), "moved".to_string())
        ]
    );
    assert!(doc["bytes_left_out"].as_u64().unwrap() > 8 << 20, "{doc}");
    assert!(
        doc["recovery_settings"]["restore_command"]
            .as_str()
            .unwrap()
            .contains("archive-get"),
        "{doc}"
    );

    let out = env.restore(
        "sel",
        &["--db-include", "keep", "--tablespace-map-all", &ts_map],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!("left out: big ({big}), moved ({moved})"))
            && text.contains("DROP DATABASE"),
        "{text}"
    );
    assert_eq!(
        full["id"].as_str().unwrap(),
        text.split([' ', ':']).nth(1).unwrap()
    );
    // Every file of the databases left out is there at its size, with nothing allocated.
    for dir in [
        target.join("base").join(&big),
        tablespace_db_dir(&ts_root, &moved),
    ] {
        let (len, allocated) = sizes(&dir);
        assert!(len > 4 << 20, "{}: {len} bytes", dir.display());
        assert_eq!(allocated, 0, "{} is not sparse", dir.display());
        assert!(dir.join("PG_VERSION").metadata().unwrap().len() > 0);
    }
    let (_, kept) = sizes(&target.join("base").join(&keep));
    assert!(kept > 0, "the database asked for was written");

    let r = env.restored_instance("sel", false);
    r.start().unwrap();
    let stop_r = StopOnDrop(&r);
    wait_recovered(&r, "sel", Duration::from_secs(180));
    assert_eq!(
        fingerprint(&r, "keep"),
        expected[0],
        "keep came back exactly"
    );
    assert!(
        r.psql("big", "select count(*) from t").is_err(),
        "a database left out cannot be used"
    );
    drop(stop_r);
    r.stop().unwrap();

    // A delta restore of the same backup, now leaving out only `moved`, fills in `big`.
    env.restore(
        "sel",
        &[
            "--delta",
            "--db-exclude",
            "moved",
            "--tablespace-map-all",
            &ts_map,
        ],
    );
    let (_, allocated) = sizes(&target.join("base").join(&big));
    assert!(allocated > 4 << 20, "big was written this time");
    let r = env.restored_instance("sel", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "sel delta", Duration::from_secs(180));
    assert_eq!(fingerprint(&r, "keep"), expected[0]);
    assert_eq!(fingerprint(&r, "big"), expected[1], "big came back exactly");
    r.psql("postgres", "drop database moved").unwrap();
    assert_eq!(
        r.psql(
            "postgres",
            "select string_agg(datname, ',' order by datname) from pg_database"
        )
        .unwrap(),
        "big,keep,postgres,template0,template1"
    );
    assert!(
        !tablespace_db_dir(&ts_root, &moved).exists(),
        "dropping it removed its sparse files"
    );
}

#[test]
fn a_restore_of_one_database_on_every_backend() {
    for backend in backends() {
        one_database_comes_back(backend);
    }
}

/// A cluster without data checksums, VACUUM in the database left out after the backup: its
/// all-visible records carry no page image, so replay meets zeroed pages. The restore is
/// refused unless `ignore_invalid_pages` is given; with it, recovery goes on past those
/// references (the server log shows them as warnings), and the database asked for comes back
/// exactly.
#[test]
fn without_checksums_leaving_a_database_out_needs_ignore_invalid_pages() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    let disabled = pgcairn_engine::pg::instance::command_as(
        env.run_as.as_deref(),
        &pg.bin.program("pg_checksums"),
    )
    .args(["--disable", "-D"])
    .arg(&pg.datadir)
    .output()
    .unwrap();
    assert_success(&disabled, "pg_checksums --disable");
    pg.start().unwrap();
    let stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    assert_eq!(pg.psql("postgres", "show data_checksums").unwrap(), "off");
    assert_eq!(pg.psql("postgres", "show wal_log_hints").unwrap(), "off");
    pg.psql("postgres", "create database keep").unwrap();
    pg.psql("postgres", "create database big").unwrap();
    for db in ["keep", "big"] {
        pg.psql(
            db,
            "create table t as select g as id, md5(g::text) as v from generate_series(1, 50000) g",
        )
        .unwrap();
    }
    backup_json(&env, &["--type", "full"]);
    // All-visible records without page images, on pages the restore leaves zeroed.
    pg.psql("big", "vacuum t").unwrap();
    pg.psql("keep", "update t set v = 'after' where id % 5 = 0")
        .unwrap();
    let expected = fingerprint(&pg, "keep");
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    drop(stop);
    pg.stop().unwrap();

    let pgdata = env.path().join("sel").display().to_string();
    let out = env.pgcairn(&[
        "--progress",
        "never",
        "restore",
        "--pgdata",
        &pgdata,
        "--db-include",
        "keep",
    ]);
    assert!(!out.status.success(), "taken without checksums");
    assert!(
        stderr(&out).contains("--recovery-option ignore_invalid_pages=on"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path().join("sel").exists(), "a refused restore wrote");

    env.restore(
        "sel",
        &[
            "--db-include",
            "keep",
            "--recovery-option",
            "ignore_invalid_pages=on",
        ],
    );
    let r = env.restored_instance("sel", false);
    r.start().unwrap();
    let _stop_r = StopOnDrop(&r);
    wait_recovered(&r, "sel", Duration::from_secs(180));
    assert_eq!(fingerprint(&r, "keep"), expected);
    let log = std::fs::read_to_string(env.path().join("sel/pgcairn-server.log")).unwrap();
    assert!(
        log.contains("invalid page") || log.contains("uninitialized"),
        "replay met no zeroed page without its image, so this test proves nothing: {log}"
    );
    r.psql("postgres", "drop database big").unwrap();
}
