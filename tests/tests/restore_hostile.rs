//! End to end, as root (as `restore` often runs): a data directory whose owner planted
//! symbolic links must not make a root restore write, delete, chmod or chown anything outside
//! it, and a restore cut short must leave a directory PostgreSQL refuses to start and that
//! `restore --delta` finishes. Regressions for the restore findings of the security audit
//! (issue 13).

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

const MARKER: &str = "pgcairn.restore-incomplete";

fn is_root() -> bool {
    if pgcairn_engine::pg::instance::current_uid() != 0 {
        eprintln!("skipping: needs root (a root restore is what these tests attack)");
        return false;
    }
    true
}

/// A backed-up pgbench cluster (stopped) and what a restore of it must show.
struct Source {
    env: TestEnv,
    fingerprint: String,
    /// OID of database `postgres`.
    dboid: String,
    /// `base/<dboid>/<relfilenode>` of `pgbench_accounts`.
    accounts: String,
}

fn source(backend: Backend, scale: &str) -> Source {
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", scale, "-q"]).unwrap();
    backup_json(&env, &["--type", "full"]);
    let fingerprint = pgbench_fingerprint(&pg);
    let dboid = pg
        .psql(
            "postgres",
            "select oid from pg_database where datname = 'postgres'",
        )
        .unwrap();
    let accounts = pg
        .psql(
            "postgres",
            "select pg_relation_filepath('pgbench_accounts')",
        )
        .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(90));
    pg.stop().unwrap();
    Source {
        env,
        fingerprint,
        dboid,
        accounts,
    }
}

/// `pgcairn restore` run as root (not as PostgreSQL's user), as an operator would.
fn restore_cmd(env: &TestEnv, dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(&env.bin);
    c.arg("--config")
        .arg(&env.config)
        .args(["--progress", "never", "restore", "--pgdata"])
        .arg(dir)
        .args(args);
    c.env_remove("PGCAIRN_PASSPHRASE");
    c
}

fn restore_as_root(env: &TestEnv, dir: &Path, args: &[&str]) -> Output {
    restore_cmd(env, dir, args).output().unwrap()
}

fn instance(env: &TestEnv, dir: &Path) -> Instance {
    Instance::new(
        PgBinaries::find().unwrap(),
        dir.to_path_buf(),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    )
}

/// Starts the restored cluster, waits for recovery, and checks it has the source's rows.
fn assert_starts_with_rows(src: &Source, dir: &Path) {
    let inst = instance(&src.env, dir);
    inst.configure(&[("archive_mode", "off".into())]).unwrap();
    inst.start().unwrap();
    let _stop = StopOnDrop(&inst);
    wait_recovered(&inst, &dir.display().to_string(), Duration::from_secs(180));
    assert_eq!(
        pgbench_fingerprint(&inst),
        src.fingerprint,
        "restored cluster has the source's rows"
    );
    inst.stop().unwrap();
}

/// A root-owned directory outside the data directory with a sentinel file, and its state.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Victim {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgcairn-victim-")
            .tempdir_in("/tmp")
            .unwrap();
        let path = dir.path().join("root-owned");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["sentinel", "pg_control", "PG_VERSION", "file"] {
            let f = path.join(name);
            std::fs::write(&f, format!("root's {name}\n")).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Victim { _dir: dir, path }
    }

    fn assert_untouched(&self) {
        let m = std::fs::metadata(&self.path).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755, "victim directory mode changed");
        assert_eq!((m.uid(), m.gid()), (0, 0), "victim directory owner changed");
        for name in ["sentinel", "pg_control", "PG_VERSION", "file"] {
            let f = self.path.join(name);
            let m = std::fs::metadata(&f)
                .unwrap_or_else(|e| panic!("{} was deleted through a link: {e}", f.display()));
            assert_eq!(
                std::fs::read_to_string(&f).unwrap(),
                format!("root's {name}\n"),
                "{} was written through a link",
                f.display()
            );
            assert_eq!(m.mode() & 0o7777, 0o644, "{} mode changed", f.display());
            assert_eq!((m.uid(), m.gid()), (0, 0), "{} owner changed", f.display());
        }
        let extra: Vec<_> = std::fs::read_dir(&self.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                !["sentinel", "pg_control", "PG_VERSION", "file"].contains(&n.to_str().unwrap())
            })
            .collect();
        assert!(extra.is_empty(), "files created through a link: {extra:?}");
    }
}

fn replace_with_link(path: &Path, to: &Path) {
    let m = std::fs::symlink_metadata(path).unwrap();
    if m.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
    symlink(to, path).unwrap();
}

fn assert_real_dir(path: &Path) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(
        m.file_type().is_dir(),
        "{} is not a real directory",
        path.display()
    );
}

fn assert_real_file(path: &Path) {
    let m = std::fs::symlink_metadata(path).unwrap();
    assert!(
        m.file_type().is_file(),
        "{} is not a real file",
        path.display()
    );
}

/// A restored data directory (by root), ready for a hostile owner to plant links in.
fn restored(src: &Source, name: &str) -> PathBuf {
    let dir = src.env.path().join(name);
    assert_success(&restore_as_root(&src.env, &dir, &[]), "restore as root");
    dir
}

fn delta(src: &Source, dir: &Path) {
    assert_success(
        &restore_as_root(&src.env, dir, &["--delta"]),
        "restore --delta as root",
    );
    assert!(
        !dir.join(MARKER).exists(),
        "a finished restore leaves no marker"
    );
}

#[test]
fn delta_restore_as_root_deletes_and_chmods_through_a_symlinked_database_directory() {
    if !is_root() {
        return;
    }
    let src = source(Backend::File, "1");
    let dir = restored(&src, "a");
    let victim = Victim::new();
    let db = dir.join("base").join(&src.dboid);
    replace_with_link(&db, &victim.path);
    delta(&src, &dir);
    victim.assert_untouched();
    assert_real_dir(&db);
    assert_eq!(
        std::fs::metadata(&db).unwrap().uid(),
        std::fs::metadata(dir.join("PG_VERSION")).unwrap().uid(),
        "the restored database directory has the cluster's owner"
    );
    assert_starts_with_rows(&src, &dir);
}

#[test]
fn delta_restore_as_root_overwrites_and_chmods_files_through_symlinked_pg_version_and_relation() {
    if !is_root() {
        return;
    }
    let src = source(Backend::File, "1");
    let dir = restored(&src, "b");
    let victim = Victim::new();
    replace_with_link(&dir.join("PG_VERSION"), &victim.path.join("PG_VERSION"));
    replace_with_link(&dir.join(&src.accounts), &victim.path.join("file"));
    // Also a link in place of a file the restore writes itself.
    replace_with_link(&dir.join("backup_label"), &victim.path.join("sentinel"));
    delta(&src, &dir);
    victim.assert_untouched();
    assert_real_file(&dir.join("PG_VERSION"));
    assert_real_file(&dir.join(&src.accounts));
    assert_real_file(&dir.join("backup_label"));
    assert_eq!(
        std::fs::read_to_string(dir.join("PG_VERSION")).unwrap(),
        "15\n"
    );
    assert_starts_with_rows(&src, &dir);
}

#[test]
fn delta_restore_as_root_writes_through_a_symlinked_ancestor_directory() {
    if !is_root() {
        return;
    }
    let src = source(Backend::File, "1");
    let dir = restored(&src, "c");
    let victim = Victim::new();
    // `global` (holding pg_control) points at root's directory, which has a pg_control.
    replace_with_link(&dir.join("global"), &victim.path);
    delta(&src, &dir);
    victim.assert_untouched();
    assert_real_dir(&dir.join("global"));
    assert_real_file(&dir.join("global/pg_control"));
    assert_starts_with_rows(&src, &dir);
}

#[test]
fn delta_restore_as_root_follows_a_target_symlinked_by_the_owner_of_its_parent() {
    if !is_root() {
        return;
    }
    let src = source(Backend::File, "1");
    let victim = Victim::new();
    // The environment's directory belongs to postgres, as /var/lib/postgresql does: postgres
    // can make `--pgdata` a link to anywhere.
    let dir = src.env.path().join("d");
    symlink(&victim.path, &dir).unwrap();
    let out = restore_as_root(&src.env, &dir, &["--delta"]);
    assert!(!out.status.success(), "a root restore through the link");
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    victim.assert_untouched();
}

/// Starts a root restore, waits until it has written some files, and kills it.
fn interrupted_restore(src: &Source, dir: &Path, signal: &str) -> Output {
    let mut child = restore_cmd(&src.env, dir, &["--jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = dir.join("base").join(&src.dboid);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = std::fs::read_dir(&base).map(|d| d.count()).unwrap_or(0);
        if n >= 20 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "restore ended ({status}) before it could be interrupted; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "restore wrote no files");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "an interrupted restore does not succeed"
    );
    out
}

fn killed_restore_is_marked_unfinished_and_delta_finishes_it(backend: Backend) {
    let src = source(backend, "5");
    for (i, signal) in ["-TERM", "-KILL"].iter().enumerate() {
        let dir = src.env.path().join(format!("killed_{i}"));
        let out = interrupted_restore(&src, &dir, signal);
        assert!(
            !dir.join("global/pg_control").exists(),
            "{signal}: an unfinished restore has no pg_control"
        );
        assert!(dir.join(MARKER).is_file(), "{signal}: marker left");
        if *signal == "-TERM" {
            let err = stderr(&out);
            assert!(
                err.contains("restore --delta") && err.contains(MARKER),
                "SIGTERM: the restore says how to finish: {err}"
            );
        }
        // PostgreSQL refuses to start it.
        let inst = instance(&src.env, &dir);
        let started = inst.start();
        let _stop = StopOnDrop(&inst);
        assert!(
            started.is_err(),
            "{signal}: PostgreSQL started an unfinished restore"
        );
        // A plain restore into it refuses and says to finish it with --delta.
        let again = restore_as_root(&src.env, &dir, &[]);
        assert!(!again.status.success());
        let err = stderr(&again);
        assert!(
            err.contains("unfinished restore") && err.contains("--delta"),
            "{err}"
        );
        // `restore --delta` finishes it.
        delta(&src, &dir);
        assert!(dir.join("global/pg_control").is_file());
        assert_starts_with_rows(&src, &dir);
    }
}

#[test]
fn a_killed_restore_leaves_a_startable_looking_directory_on_every_backend() {
    if !is_root() {
        return;
    }
    for b in backends() {
        killed_restore_is_marked_unfinished_and_delta_finishes_it(b);
    }
}

/// A restore that runs out of space stops with an error that names the file and the cause,
/// leaves a directory PostgreSQL will not start, and `restore --delta` finishes it once the
/// file system has room: no retry from scratch, nothing lost. (A large file is allocated
/// whole before its blocks are written, so a disk that cannot hold it fails at once.)
#[test]
fn a_restore_that_runs_out_of_space_says_so_and_delta_finishes_it_with_room() {
    if !is_root() {
        return;
    }
    let src = source(Backend::File, "5");
    let mount = src.env.path().join("small");
    let fs = mount_tmpfs(&mount, "40m");
    let dir = mount.join("pgdata");
    let out = restore_as_root(&src.env, &dir, &[]);
    assert!(!out.status.success(), "a restore into 40 MiB succeeded");
    let err = stderr(&out);
    assert!(
        err.contains("No space left on device")
            && err.contains(&format!("writing {}/", dir.display())),
        "the error names the cause and the file in the directory: {err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
    assert!(dir.join(MARKER).is_file(), "marker left");
    assert!(
        !dir.join("global/pg_control").exists(),
        "an unfinished restore has no pg_control"
    );
    fs.resize("512m");
    delta(&src, &dir);
    assert_starts_with_rows(&src, &dir);
}

/// What PostgreSQL's OS user can make a backup record must not become root's gift on a root
/// restore: a tablespace link (`pg_tblspc/<oid>`, the user's own directory) at an existing
/// root-owned directory, or at a relative path; a file recorded as root's and setuid (as
/// a file swapped for a link to a setuid program between a full and an incremental backup is
/// recorded); a link to a file of root's that user cannot read, and links to a
/// world-readable file and its directory where that user cannot enter, for a backup run as
/// root into the directory repository that user owns (and archives into, before and after).
/// The backup leaves the links out; the restore refuses the locations, naming the way out
/// (`--tablespace-map`), leaves the directory as it was, and restores the file as the
/// cluster's, without the setuid bit.
#[test]
fn a_root_restore_gives_away_no_directory_and_no_setuid_file_the_backup_recorded() {
    if !is_root() {
        return;
    }
    // The backup runs as root into a directory repository PostgreSQL's user owns and archives
    // into meanwhile: what root creates there goes to that user (local::owner_for), or the
    // archiving the backup waits for would fail on root's files.
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let bin_dir = tempfile::Builder::new()
        .prefix("pgcairn-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink(bin_dir.path(), pg.datadir.join("pg_tblspc/99999")).unwrap();
    std::fs::create_dir(pg.datadir.join("ts_rel")).unwrap();
    give_to(env.run_as.as_deref(), &pg.datadir.join("ts_rel")).unwrap();
    symlink("../ts_rel", pg.datadir.join("pg_tblspc/99998")).unwrap();
    let probe = pg.datadir.join("base/1/setuid_probe");
    std::fs::write(&probe, b"#!/bin/sh\nid\n").unwrap();
    std::os::unix::fs::chown(&probe, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // And a link to a file of root's that PostgreSQL's user cannot read, for a backup run as
    // root to take.
    let secret = bin_dir.path().join("../pgcairn-root-secret");
    std::fs::write(&secret, b"root's secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _remove_secret = RemoveOnDrop(secret.clone());
    // And links to a world-readable file, and to the directory holding it, where that user
    // cannot enter (a script in `/root`).
    let hidden = tempfile::Builder::new()
        .prefix("pgcairn-root-dir-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(hidden.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(hidden.path().join("dump.sh"), b"PGPASSWORD=root's\n").unwrap();
    std::fs::set_permissions(
        hidden.path().join("dump.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    symlink(
        hidden.path().join("dump.sh"),
        pg.datadir.join("base/1/hidden_probe"),
    )
    .unwrap();
    symlink(hidden.path(), pg.datadir.join("hidden_dir")).unwrap();
    // And POSIX ACLs that say the opposite of the permission bits (the kernel decides by the
    // ACL): a world-readable file closed to that user, and a root-only file opened to it.
    let owner = env
        .run_as
        .clone()
        .expect("root runs PostgreSQL as its own user");
    let acls = tempfile::Builder::new()
        .prefix("pgcairn-acl-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(acls.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, mode, acl) in [
        ("closed.conf", 0o644, format!("u:{owner}:---")),
        ("opened.conf", 0o600, format!("u:{owner}:r--")),
    ] {
        let f = acls.path().join(name);
        std::fs::write(&f, name).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        let set = Command::new("setfacl")
            .args(["-m", &acl])
            .arg(&f)
            .output()
            .expect("setfacl (package acl, installed by scripts/install-deps.sh)");
        assert_success(&set, &format!("setfacl -m {acl} {}", f.display()));
        // The kernel agrees with what the test expects of it.
        let read = Command::new("runuser")
            .args(["-u", &owner, "--", "cat"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(read.status.success(), name == "opened.conf", "{name}");
        symlink(&f, pg.datadir.join(format!("base/1/acl_{name}"))).unwrap();
    }
    {
        symlink(&secret, pg.datadir.join("base/1/secret_probe")).unwrap();
        let as_root = Command::new(&env.bin)
            .arg("--config")
            .arg(&env.config)
            .args(["--progress", "never", "backup", "--type", "full"])
            .output()
            .unwrap();
        assert_success(&as_root, "backup as root");
        assert!(
            stderr(&as_root).contains("secret_probe")
                && stderr(&as_root).contains("could not read"),
            "{}",
            stderr(&as_root)
        );
        for (probe, why) in [
            ("hidden_probe", "could not enter"),
            ("hidden_dir", "could not list"),
            ("acl_closed.conf", "could not read"),
        ] {
            assert!(
                stderr(&as_root)
                    .lines()
                    .any(|l| l.contains(probe) && l.contains(why)),
                "{}",
                stderr(&as_root)
            );
        }
    }
    // PostgreSQL's user goes on archiving into the repository root wrote into.
    pg.psql(
        "postgres",
        "create table after_the_root_backup as select 1 as x",
    )
    .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(60));
    pg.stop().unwrap();

    let relative = restore_as_root(&env, &env.path().join("r1"), &[]);
    assert!(!relative.status.success(), "a relative location restored");
    let err = stderr(&relative);
    assert!(
        err.contains("tablespace 99998") && err.contains("--tablespace-map 99998="),
        "{err}"
    );
    let elsewhere = format!("99998={}", env.path().join("ts98").display());
    let taken = restore_as_root(
        &env,
        &env.path().join("r2"),
        &["--tablespace-map", &elsewhere],
    );
    assert!(!taken.status.success(), "root's directory was given away");
    let err = stderr(&taken);
    assert!(
        err.contains("tablespace 99999") && err.contains("belongs to uid 0"),
        "{err}"
    );
    let m = std::fs::metadata(bin_dir.path()).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "{err}");
    assert_eq!(std::fs::read_dir(bin_dir.path()).unwrap().count(), 0);

    let dir = env.path().join("r3");
    let both = format!("99999={}", env.path().join("ts99").display());
    assert_success(
        &restore_as_root(
            &env,
            &dir,
            &["--tablespace-map", &elsewhere, "--tablespace-map", &both],
        ),
        "restore with both tablespaces mapped",
    );
    let owner = std::fs::metadata(dir.join("PG_VERSION")).unwrap().uid();
    assert_ne!(owner, 0);
    let m = std::fs::metadata(dir.join("base/1/setuid_probe")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "special bits restored");
    assert_eq!(m.uid(), owner, "root's file restored as root's");
    assert!(
        !dir.join("base/1/secret_probe").exists(),
        "a file only root could read came back in the cluster's directory"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("base/1/acl_opened.conf")).unwrap(),
        "opened.conf",
        "a file an ACL opened to PostgreSQL's user was left out"
    );
    for probe in [
        "base/1/hidden_probe",
        "hidden_dir",
        "base/1/acl_closed.conf",
    ] {
        assert!(
            std::fs::symlink_metadata(dir.join(probe)).is_err(),
            "{probe}: what only root could reach came back in the cluster's directory"
        );
    }
}

/// Removes a file when dropped (also when an assertion fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
