//! End to end: how WAL archiving fails, and that every failure is loud, safe and has the exit
//! code the command-line contract promises (0 ok; 1 failed / archive-get not found; 2 usage,
//! config or key; 200 archive-get cannot tell, so PostgreSQL must abort recovery).
//!
//! Real segments come from throwaway PostgreSQL 15 clusters; repositories live on `file://`
//! and, where the scenario is about storage, on the loopback S3 server too. The last test
//! checks that the asynchronous spool does not keep per-file state forever.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

const SEGMENT_SIZE: usize = 16 << 20;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Asserts the exact exit code, showing the output otherwise.
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

/// Every run of exactly 64 hex digits in `text` (content ids).
fn hex64_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|t| t.len() == 64)
        .map(str::to_lowercase)
        .collect()
}

/// The segment after `name` (16 MiB segments: 256 per log file).
fn next_segment(name: &str) -> String {
    let tli = &name[..8];
    let log = u32::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u32::from_str_radix(&name[16..24], 16).unwrap();
    let (log, seg) = if seg == 0xFF {
        (log + 1, 0)
    } else {
        (log, seg + 1)
    };
    format!("{tli}{log:08X}{seg:08X}")
}

/// Writes a file and gives it to PostgreSQL's OS user.
fn write_for_postgres(env: &TestEnv, path: &Path, body: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    give_to(env.run_as.as_deref(), path.parent().unwrap()).unwrap();
}

/// A directory PostgreSQL's OS user can write into (archive-get destinations).
fn dest_dir(env: &TestEnv, name: &str) -> PathBuf {
    let d = env.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    give_to(env.run_as.as_deref(), &d).unwrap();
    d
}

/// [`real_segments`], archived; with their names.
fn archived_segments(env: &TestEnv, count: usize) -> (Vec<PathBuf>, Vec<String>) {
    let segs = real_segments(env, count);
    for s in &segs {
        assert_success(&env.pgcairn(&["archive-push", &p(s)]), "archive-push");
    }
    let names = segs.iter().map(|s| file_name(s)).collect();
    (segs, names)
}

/// Finished, real WAL segments copied out of a throwaway cluster that archives nowhere
/// (`archive_mode = off`), ready for `archive-push` and readable by PostgreSQL's OS user.
fn real_segments(env: &TestEnv, count: usize) -> Vec<PathBuf> {
    let src = env.cluster("src");
    src.configure(&[("archive_mode", "off".into())]).unwrap();
    src.start().unwrap();
    let stop = StopOnDrop(&src);
    let dir = env.path().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    src.psql("postgres", "create table filler (id int, payload text)")
        .unwrap();
    let mut out = Vec::new();
    for i in 0..count {
        src.psql(
            "postgres",
            &format!(
                "insert into filler select g, md5((g * {}) :: text) from generate_series(1, 30000) g",
                i + 7
            ),
        )
        .unwrap();
        let name = switch_wal(&src);
        let to = dir.join(&name);
        std::fs::copy(src.datadir.join("pg_wal").join(&name), &to).unwrap();
        assert_eq!(std::fs::metadata(&to).unwrap().len() as usize, SEGMENT_SIZE);
        out.push(to);
    }
    drop(stop);
    give_to(env.run_as.as_deref(), &dir).unwrap();
    out
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_string()
}

fn content_id(env: &TestEnv, name: &str) -> String {
    // WAL records are sealed: the content id is read from the data object's name.
    let id = env
        .wal_data_key(name)
        .rsplit_once('.')
        .unwrap()
        .1
        .to_string();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "content id is 64 hex digits: {id}"
    );
    id
}

/// Path of the sealed data object of an archived segment in a `file://` repository.
fn waldata_path(env: &TestEnv, name: &str) -> PathBuf {
    env.path().join(format!(
        "repo/clusters/main/waldata/{}/{name}.{}",
        &name[..8],
        content_id(env, name)
    ))
}

fn info_json(env: &TestEnv) -> serde_json::Value {
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "info --output json");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Fetches `name` with archive-get and returns its bytes.
fn fetch(env: &TestEnv, name: &str) -> Vec<u8> {
    let dir = dest_dir(env, "fetched");
    let dest = dir.join(name);
    let _ = std::fs::remove_file(&dest);
    let out = env.pgcairn(&["archive-get", name, &p(&dest)]);
    assert_success(&out, &format!("archive-get {name}"));
    std::fs::read(&dest).unwrap()
}

// 1. Duplicate push ---------------------------------------------------------------------

fn duplicate_push(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let seg = real_segments(&env, 1).remove(0);
    let name = file_name(&seg);
    let original = std::fs::read(&seg).unwrap();
    for attempt in 1..=2 {
        let out = env.pgcairn(&["archive-push", &p(&seg)]);
        assert_success(
            &out,
            &format!("{backend:?}: archive-push {name}, attempt {attempt}"),
        );
    }
    let existing = content_id(&env, &name);

    // Same name, one byte different deep inside (past the page headers PostgreSQL checks).
    let mut altered = original.clone();
    altered[9 * 1024 * 1024 + 4321] ^= 0x5a;
    let altered_path = env.path().join("altered").join(&name);
    write_for_postgres(&env, &altered_path, &altered);
    let out = env.pgcairn(&["archive-push", &p(&altered_path)]);
    assert_exit(&out, 1, &format!("{backend:?}: push of different content"));
    let err = stderr(&out);
    let ids = hex64_tokens(&err);
    assert!(
        ids.contains(&existing),
        "{backend:?}: names the archived content id {existing}: {err}"
    );
    assert!(
        ids.iter().any(|i| *i != existing),
        "{backend:?}: names the pushed file's content id too: {err}"
    );
    assert!(err.contains("not overwriting"), "{backend:?}: {err}");
    assert!(err.contains(&name), "{backend:?}: names the segment: {err}");

    assert_eq!(
        content_id(&env, &name),
        existing,
        "{backend:?}: pointer unchanged"
    );
    assert!(
        fetch(&env, &name) == original,
        "{backend:?}: archive-get still returns the original bytes"
    );
    // And the original is still accepted as a duplicate.
    let out = env.pgcairn(&["archive-push", &p(&seg)]);
    assert_success(&out, &format!("{backend:?}: original pushed again"));
}

/// On `file://` a power loss between a create's link and its fsync leaves the name holding
/// nothing: an empty cluster record after the first push, an empty WAL record after any.
/// PostgreSQL retries that push, which must write them and succeed: it failed with "corrupt"
/// on every retry, and the primary's `pg_wal` filled.
#[test]
fn empty_records_left_by_a_power_loss_are_written_by_the_retry() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let segs = real_segments(&env, 2);
    let repo = env.path().join("repo");
    assert_success(
        &env.pgcairn(&["archive-push", &p(&segs[0])]),
        "the first push",
    );
    let name = file_name(&segs[0]);
    let cluster_record = repo.join("clusters/main/cluster.json");
    let record = repo.join(format!("clusters/main/wal/{}/{name}", &name[..8]));
    for f in [&cluster_record, &record] {
        assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        std::fs::write(f, b"").unwrap();
    }
    assert_success(
        &env.pgcairn(&["archive-push", &p(&segs[0])]),
        "the retried push",
    );
    for f in [&cluster_record, &record] {
        assert!(
            std::fs::metadata(f).unwrap().len() > 0,
            "{} written",
            f.display()
        );
    }
    let dest = dest_dir(&env, "fetched");
    assert_success(
        &env.pgcairn(&["archive-get", &name, &p(&dest.join(&name))]),
        "archive-get",
    );
    assert_eq!(
        std::fs::read(dest.join(&name)).unwrap(),
        std::fs::read(&segs[0]).unwrap()
    );
    assert_success(
        &env.pgcairn(&["archive-push", &p(&segs[1])]),
        "the next push, checked against the cluster record written again",
    );
}

#[test]
fn duplicate_push_is_free_and_different_content_is_refused() {
    for b in backends() {
        duplicate_push(b);
    }
}

// 1b. A data object torn by a crash before its record ---------------------------------------

/// A power loss after a data object is linked into place but before its fsync leaves it empty
/// or torn, with no record; after the reboot PostgreSQL pushes the segment again. That push
/// must store the segment whole before it records it (and exits 0), not trust the object's
/// name: PostgreSQL recycles a segment once its push succeeds.
#[test]
fn a_retried_push_rewrites_a_data_object_left_empty_or_torn_by_a_crash() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let (segs, names) = archived_segments(&env, 2);
    let tli = env.path().join("repo/clusters/main/wal/00000001");
    for (i, what) in [(0, "empty"), (1, "torn")] {
        let data = waldata_path(&env, &names[i]);
        let len = std::fs::metadata(&data).unwrap().len();
        std::fs::remove_file(tli.join(&names[i])).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(if i == 0 { 0 } else { len / 2 })
            .unwrap();
        let out = env.pgcairn(&["archive-push", &p(&segs[i])]);
        assert_success(&out, &format!("archive-push over an {what} data object"));
        assert!(
            fetch(&env, &names[i]) == std::fs::read(&segs[i]).unwrap(),
            "{what}: archive-get returns the segment pushed"
        );
    }
}

// 2. Wrong key, wrong passphrase ------------------------------------------------------------

#[test]
fn wrong_key_or_passphrase_is_refused() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let segs = real_segments(&env, 2);
    let archived = file_name(&segs[0]);
    assert_success(
        &env.pgcairn(&["archive-push", &p(&segs[0])]),
        "archive-push with the right key",
    );

    // A different, valid key file, made by `init` on a throwaway repository.
    let wrong_key = env.path().join("wrong.key");
    let throwaway = format!("file://{}/throwaway-repo", env.path().display());
    assert_success(
        &env.pgcairn(&["--repo", &throwaway, "init", "--key-file", &p(&wrong_key)]),
        "init of a throwaway repository",
    );
    let config = std::fs::read_to_string(&env.config).unwrap();
    assert!(config.contains(&p(&env.key_file)));
    let wrong_config = env.path().join("wrong-key.toml");
    write_for_postgres(
        &env,
        &wrong_config,
        config.replace(&p(&env.key_file), &p(&wrong_key)).as_bytes(),
    );

    let out = env.pgcairn_with_config(&wrong_config, &["archive-push", &p(&segs[1])]);
    assert_exit(&out, 2, "archive-push with another key");
    assert!(stderr(&out).contains("does not unlock"), "{}", stderr(&out));

    let dest = dest_dir(&env, "wrong-key-dest").join(&archived);
    let out = env.pgcairn_with_config(&wrong_config, &["archive-get", &archived, &p(&dest)]);
    assert_exit(&out, 200, "archive-get with another key");
    assert!(stderr(&out).contains("does not unlock"), "{}", stderr(&out));
    assert!(!dest.exists(), "nothing written with the wrong key");

    // Nothing was stored by the refused push.
    let dest = dest_dir(&env, "right-key-dest").join(file_name(&segs[1]));
    let out = env.pgcairn(&["archive-get", &file_name(&segs[1]), &p(&dest)]);
    assert_exit(&out, 1, "the refused segment is not in the archive");

    // A passphrase repository: PGCAIRN_PASSPHRASE is the only way in.
    let pp_config = env.path().join("passphrase.toml");
    write_for_postgres(
        &env,
        &pp_config,
        format!(
            "[repo]\nurl = \"file://{}/pp-repo\"\n\n[cluster]\nname = \"main\"\n",
            env.path().display()
        )
        .as_bytes(),
    );
    let run = |passphrase: Option<&str>, args: &[&str]| -> Output {
        let mut c = pgcairn_engine::pg::instance::command_as(env.run_as.as_deref(), &env.bin);
        c.arg("--config").arg(&pp_config).args(args);
        match passphrase {
            Some(pw) => c.env("PGCAIRN_PASSPHRASE", pw),
            None => c.env_remove("PGCAIRN_PASSPHRASE"),
        };
        c.output().expect("run pgcairn")
    };
    // A one-character passphrase was accepted by init.
    let out = run(Some("a"), &["init"]);
    assert_exit(&out, 2, "init with a one-character passphrase");
    assert!(stderr(&out).contains("at least 12"), "{}", stderr(&out));
    assert_success(
        &run(Some("right horse battery"), &["init"]),
        "init with a passphrase",
    );
    let out = run(Some("wrong horse battery"), &["archive-push", &p(&segs[0])]);
    assert_exit(&out, 2, "archive-push with the wrong passphrase");
    assert!(
        stderr(&out).contains("wrong passphrase"),
        "{}",
        stderr(&out)
    );
    let out = run(None, &["archive-push", &p(&segs[0])]);
    assert_exit(&out, 2, "archive-push with no passphrase at all");
    let out = run(Some("right horse battery"), &["archive-push", &p(&segs[0])]);
    assert_success(&out, "archive-push with the right passphrase");
    let dest = dest_dir(&env, "pp-dest").join(&archived);
    let out = run(
        Some("wrong horse battery"),
        &["archive-get", &archived, &p(&dest)],
    );
    assert_exit(&out, 200, "archive-get with the wrong passphrase");
    let out = run(
        Some("right horse battery"),
        &["archive-get", &archived, &p(&dest)],
    );
    assert_success(&out, "archive-get with the right passphrase");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&segs[0]).unwrap());
}

/// A prefetch spool archive-get cannot write (here its `.requested` is a directory; a full or
/// read-only spool file system fails the same way) costs the prefetch, never the fetch:
/// archive-get fetches the segment itself. It used to exit 200, stopping recovery over a
/// speed-up nobody configured (`--prefetch` is what `restore` writes into restore_command).
#[test]
fn a_prefetch_spool_that_fails_never_stops_a_fetch() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let seg = real_segments(&env, 1).remove(0);
    let name = file_name(&seg);
    assert_success(&env.pgcairn(&["archive-push", &p(&seg)]), "archive-push");
    // A first call from "the data directory" makes its area; then its `.requested` breaks.
    let datadir = fake_datadir(&env, "pgdata");
    let first = dest_dir(&env, "first").join(&name);
    let out = get_in(&env, &datadir, &name, &first);
    assert_success(&out, "archive-get --prefetch through a working spool");
    let area = env.prefetch_dir_of(&datadir);
    assert!(area.join(".requested").is_file(), "{}", area.display());
    std::fs::remove_file(area.join(".requested")).unwrap();
    std::fs::create_dir_all(area.join(".requested/x")).unwrap();
    give_to(env.run_as.as_deref(), &env.path().join("spool")).unwrap();
    let dest = dest_dir(&env, "fetched").join(&name);
    let out = get_in(&env, &datadir, &name, &dest);
    assert_success(&out, "archive-get --prefetch through a broken spool");
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
    assert!(
        area.join(".requested/x").is_dir(),
        "the broken spool was the one used"
    );
}

/// A directory standing for a data directory (archive-get's working directory, as PostgreSQL
/// runs restore_command): `global/pg_control` present, so a prefetcher's sweep keeps its area.
fn fake_datadir(env: &TestEnv, name: &str) -> PathBuf {
    let d = env.path().join(name);
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::write(d.join("global/pg_control"), b"not a real one").unwrap();
    give_to(env.run_as.as_deref(), &d).unwrap();
    d
}

/// `archive-get --prefetch NAME DEST` run in `datadir`, as PostgreSQL runs restore_command.
fn get_in(env: &TestEnv, datadir: &Path, name: &str, dest: &Path) -> std::process::Output {
    env.pgcairn_command(&["archive-get", "--prefetch", name, &p(dest)])
        .current_dir(datadir)
        .output()
        .unwrap()
}

/// Two recoveries of one cluster from one repository on one host (a standby and a side PITR
/// restore, each at its own place in the archive) prefetch into areas of their own: the one
/// further ahead used to clean away the window of the other (segments "behind" its request)
/// and the other found nothing prefetched. An area whose data directory is gone is swept by the
/// next prefetcher that starts.
#[test]
fn two_recoveries_from_one_repository_keep_their_own_prefetched_segments() {
    // (The environment's archive.idle_exit is 3 s.)
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let (segs, names) = archived_segments(&env, 6);
    let standby = fake_datadir(&env, "standby");
    let side = fake_datadir(&env, "side");
    let out = dest_dir(&env, "out");
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // The standby asks for the first segment; its prefetcher fetches the ones after it.
    assert_success(
        &get_in(&env, &standby, &names[0], &out.join("s0")),
        "standby's get",
    );
    let standby_area = env.prefetch_dir_of(&standby);
    wait_for("the standby's window", &|| {
        standby_area.join(&names[2]).exists()
    });
    // The side restore recovers further on, from the same repository.
    assert_success(
        &get_in(&env, &side, &names[4], &out.join("p4")),
        "side restore's get",
    );
    let side_area = env.prefetch_dir_of(&side);
    assert_ne!(standby_area, side_area, "an area per data directory");
    wait_for("the side restore's window", &|| {
        side_area.join(&names[5]).exists()
    });
    assert_eq!(
        std::fs::read_to_string(standby_area.join(".requested")).unwrap(),
        names[0],
        "the standby's request is its own"
    );
    assert!(
        standby_area.join(&names[1]).exists() && standby_area.join(&names[2]).exists(),
        "the standby's window is still there"
    );
    // And it is served from there.
    assert_success(
        &get_in(&env, &standby, &names[1], &out.join("s1")),
        "standby's next get",
    );
    assert_eq!(
        std::fs::read(out.join("s1")).unwrap(),
        std::fs::read(&segs[1]).unwrap()
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(standby_area.join("get-stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["from_spool"], 1, "{stats}");

    // The side restore is removed; once the standby's prefetcher idles out, the next one that
    // starts removes the side restore's area (and keeps the standby's).
    std::fs::remove_dir_all(&side).unwrap();
    let lock_free = |area: &Path| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(area.join("prefetcher.lock"));
        f.is_ok_and(|f| f.try_lock().is_ok())
    };
    wait_for("both prefetchers to exit", &|| {
        lock_free(&standby_area) && lock_free(&side_area)
    });
    assert!(side_area.exists(), "nothing swept it yet");
    assert_success(
        &get_in(&env, &standby, &names[2], &out.join("s2")),
        "standby's get",
    );
    wait_for("the side restore's area to be swept", &|| {
        !side_area.exists()
    });
    assert!(
        standby_area.join(".requested").exists(),
        "the standby's area stays"
    );
}

// 3. Damaged objects --------------------------------------------------------------------------

#[test]
fn corrupt_truncated_or_missing_objects_abort_recovery() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let (segs, names) = archived_segments(&env, 6);
    let dir = dest_dir(&env, "dest");

    // One byte flipped in the middle of the sealed object.
    let flipped = waldata_path(&env, &names[0]);
    let mut bytes = std::fs::read(&flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    // Truncated to 100 bytes.
    let truncated = waldata_path(&env, &names[1]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(100)
        .unwrap();
    // Data gone, pointer still there.
    let deleted = waldata_path(&env, &names[2]);
    std::fs::remove_file(&deleted).unwrap();
    // Another segment's intact object (and pointer) copied under this segment's name: the
    // record and the object authenticate which file they are, so this must not pass either
    // (the record, sealed for the other name, is the first to fail).
    let tli = env.path().join("repo/clusters/main/wal/00000001");
    std::fs::copy(tli.join(&names[5]), tli.join(&names[4])).unwrap();
    let impostor = env.path().join(format!(
        "repo/clusters/main/waldata/00000001/{}.{}",
        names[4],
        content_id(&env, &names[5])
    ));
    std::fs::copy(waldata_path(&env, &names[5]), &impostor).unwrap();

    for (name, object, what) in [
        (&names[0], &flipped, "a flipped byte"),
        (&names[1], &truncated, "a truncated object"),
        (&names[2], &deleted, "a missing data object"),
        (
            &names[4],
            &tli.join(&names[4]),
            "another segment's record and object",
        ),
    ] {
        let dest = dir.join(name);
        let out = env.pgcairn(&["archive-get", name, &p(&dest)]);
        assert_exit(&out, 200, &format!("archive-get of {name} with {what}"));
        let err = stderr(&out);
        let key = object
            .strip_prefix(env.path().join("repo"))
            .unwrap()
            .display()
            .to_string();
        assert!(
            err.contains(name.as_str()),
            "{what}: stderr names the file: {err}"
        );
        assert!(err.contains(&key), "{what}: stderr names {key}: {err}");
        assert!(
            !dest.exists(),
            "{what}: nothing written to {}",
            dest.display()
        );
    }

    // An unreadable pointer.
    let pointer_file = tli.join(&names[3]);
    std::fs::write(&pointer_file, b"{\"content_id\": \"not hex\"").unwrap();
    let dest = dir.join(&names[3]);
    let out = env.pgcairn(&["archive-get", &names[3], &p(&dest)]);
    assert_exit(&out, 200, "archive-get with an unreadable pointer");
    let key = format!("clusters/main/wal/00000001/{}", names[3]);
    assert!(stderr(&out).contains(&key), "names {key}: {}", stderr(&out));
    assert!(!dest.exists());

    // The undamaged one still comes back exactly.
    assert!(fetch(&env, &names[5]) == std::fs::read(&segs[5]).unwrap());

    // Definitely absent: exit 1, quietly (PostgreSQL probes for these all the time).
    for absent in ["0000000100000000000000FF", "00000099.history"] {
        let dest = dir.join(absent);
        let out = env.pgcairn(&["archive-get", absent, &p(&dest)]);
        assert_exit(&out, 1, &format!("archive-get of never-archived {absent}"));
        assert_eq!(stderr(&out), "", "{absent}: stderr is empty");
        assert!(!dest.exists());
    }
}

// 3b. Garbage history files ------------------------------------------------------------------

/// A garbage or foreign `.history` file must be refused before anything is stored: pushes are
/// create-only, so once archived it would refuse the genuine file of a later promotion.
fn garbage_history(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let dir = env.path().join("wal");
    let history = dir.join("00000002.history");
    for (garbage, line) in [
        (&b"this is not a history file\n"[..], "line 1"),
        // Another tool's format: JSON.
        (
            b"{\"timeline\": 2, \"parent\": 1, \"lsn\": \"0/3000000\"}\n",
            "line 1",
        ),
        // Spaces instead of tabs, after a comment.
        (
            b"# history\n1 0/3000158 no recovery target specified\n",
            "line 2",
        ),
        // A parent timeline that is not below the file's own.
        (b"1\t0/3000000\tx\n2\t0/4000000\ty\n", "line 2"),
    ] {
        write_for_postgres(&env, &history, garbage);
        let out = env.pgcairn(&["archive-push", &p(&history)]);
        assert_exit(&out, 1, &format!("{backend:?}: push of garbage history"));
        let err = stderr(&out);
        assert!(
            err.contains("00000002.history")
                && err.contains(line)
                && err.contains("nothing stored"),
            "{backend:?}: names the file and {line}: {err}"
        );
        assert!(
            env.read_object("clusters/main/wal/00000002/00000002.history")
                .is_none(),
            "{backend:?}: no record stored"
        );
    }
    if backend == Backend::File {
        assert!(
            !env.path().join("repo/clusters/main/waldata").exists(),
            "no data object stored"
        );
    }
    // The genuine file, as PostgreSQL writes it at promotion, is accepted afterwards.
    let genuine = b"1\t0/3000158\tno recovery target specified\n";
    write_for_postgres(&env, &history, genuine);
    assert_success(
        &env.pgcairn(&["archive-push", &p(&history)]),
        &format!("{backend:?}: push of the genuine history file"),
    );
    assert_eq!(fetch(&env, "00000002.history"), genuine);

    // A backup history file that does not start like PostgreSQL's is refused too.
    let backup = dir.join("000000010000000000000002.00000028.backup");
    write_for_postgres(&env, &backup, b"garbage\n");
    let out = env.pgcairn(&["archive-push", &p(&backup)]);
    assert_exit(
        &out,
        1,
        &format!("{backend:?}: push of a garbage .backup file"),
    );
    assert!(
        stderr(&out).contains("START WAL LOCATION"),
        "{}",
        stderr(&out)
    );
    write_for_postgres(
        &env,
        &backup,
        b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n",
    );
    assert_success(
        &env.pgcairn(&["archive-push", &p(&backup)]),
        &format!("{backend:?}: push of a genuine .backup file"),
    );
}

#[test]
fn garbage_history_file_is_refused_and_does_not_block_the_genuine_one() {
    for b in backends() {
        garbage_history(b);
    }
}

// 4. Another system identifier ------------------------------------------------------------

#[test]
fn segment_of_another_system_is_refused() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let a = env.cluster("a");
    let b = env.cluster("b");
    a.start().unwrap();
    let _stop_a = StopOnDrop(&a);
    let sysid_a = a
        .psql(
            "postgres",
            "select system_identifier from pg_control_system()",
        )
        .unwrap();
    a.psql(
        "postgres",
        "create table t as select generate_series(1, 1000) g",
    )
    .unwrap();
    let last_a = switch_wal(&a);
    wait_archived(&a, &last_a, Duration::from_secs(60));

    b.start().unwrap();
    let stop_b = StopOnDrop(&b);
    let sysid_b = b
        .psql(
            "postgres",
            "select system_identifier from pg_control_system()",
        )
        .unwrap();
    assert_ne!(sysid_a, sysid_b);
    let mut b_segments = Vec::new();
    for i in 0..3 {
        b.psql(
            "postgres",
            &format!("create table t{i} as select generate_series(1, 1000) g"),
        )
        .unwrap();
        b_segments.push(switch_wal(&b));
    }
    // b's archive_command must fail: the cluster name is bound to a.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = b
            .psql(
                "postgres",
                "select failed_count || '|' || coalesce(last_archived_wal, '') from pg_stat_archiver",
            )
            .unwrap();
        let (failed, archived) = row.split_once('|').unwrap();
        assert_eq!(archived, "", "b archived something: {row}");
        if failed.parse::<u64>().unwrap() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b's archiver never failed: {row}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stop_b);
    b.stop().unwrap();
    assert!(b
        .datadir
        .join("pg_wal/archive_status")
        .join(format!("{}.ready", b_segments[0]))
        .exists());
    assert!(
        std::fs::read_to_string(b.datadir.join("pgcairn-server.log"))
            .unwrap()
            .contains("refused"),
        "b's server log shows the refusal"
    );

    // Pushing one of b's segments by hand.
    let b_seg = env.path().join("from-b").join(&b_segments[1]);
    write_for_postgres(
        &env,
        &b_seg,
        &std::fs::read(b.datadir.join("pg_wal").join(&b_segments[1])).unwrap(),
    );
    let out = env.pgcairn(&["archive-push", &p(&b_seg)]);
    assert_exit(&out, 1, "archive-push of a segment from another system");
    let err = stderr(&out);
    assert!(
        err.contains(&sysid_a) && err.contains(&sysid_b),
        "names both system identifiers ({sysid_a}, {sysid_b}): {err}"
    );
    assert!(err.contains("refused"), "{err}");

    // Only a's WAL is in the repository.
    let doc = info_json(&env);
    let clusters = doc["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{doc}");
    assert_eq!(clusters[0]["name"], "main");
    assert_eq!(
        clusters[0]["system_identifier"].as_str(),
        Some(sysid_a.as_str())
    );
    let tl = &clusters[0]["wal"]["timelines"][0];
    let done = done_files(&a);
    assert_eq!(
        tl["segments"].as_u64().unwrap() as usize,
        done.len(),
        "{tl}"
    );
    let ranges = tl["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{tl}");
    assert_eq!(ranges[0]["last"].as_str().unwrap(), last_a, "{tl}");
    for name in &done {
        if let Ok(bytes) = std::fs::read(a.datadir.join("pg_wal").join(name)) {
            assert!(fetch(&env, name) == bytes, "{name} is a's");
        }
    }
}

// 5. kill -9 mid-push, then retry -----------------------------------------------------------

/// Starts `archive-push` directly as PostgreSQL's OS user (setuid in the child, not through
/// runuser: SIGKILL to runuser would leave pgcairn running), output discarded.
fn spawn_push(env: &TestEnv, wal: &Path) -> Child {
    let mut c = Command::new(&env.bin);
    if env.run_as.is_some() {
        // The environment directory belongs to that user (TestEnv::new gave it away).
        let meta = std::fs::metadata(env.path()).unwrap();
        c.uid(meta.uid()).gid(meta.gid());
    }
    c.arg("--config")
        .arg(&env.config)
        .arg("archive-push")
        .arg(wal)
        .env_remove("PGCAIRN_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c.spawn().expect("spawn pgcairn")
}

/// Every pointer under `clusters/main/wal/` of a file:// repository has its data object.
fn assert_no_pointer_without_data(env: &TestEnv) {
    let wal = env.path().join("repo/clusters/main/wal");
    let mut pointers = 0;
    for tli in std::fs::read_dir(&wal).unwrap() {
        let tli = tli.unwrap();
        let tli_name = tli.file_name().to_string_lossy().to_string();
        for f in std::fs::read_dir(tli.path()).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().to_string();
            if name.contains('#') || name.starts_with('.') {
                eprintln!("leftover temporary file (garbage, not a pointer): {tli_name}/{name}");
                continue;
            }
            pointers += 1;
            // Records are sealed (repository format 3): the data object is found by its name;
            // archive-get checks the record names exactly that content.
            let data = env.list_objects(&format!("clusters/main/waldata/{tli_name}/{name}."));
            assert!(
                !data.is_empty(),
                "pointer {tli_name}/{name} without a data object"
            );
        }
    }
    assert!(pointers > 0);
}

fn kill_mid_push(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let seg = real_segments(&env, 1).remove(0);
    let name = file_name(&seg);
    let original = std::fs::read(&seg).unwrap();

    // How long one uninterrupted push takes (to another cluster name in the same repository),
    // so kills also land in the sealing, the data upload and the pointer write.
    let t = Instant::now();
    assert_success(
        &env.pgcairn(&["--cluster", "timing", "archive-push", &p(&seg)]),
        "timing push",
    );
    let full = t.elapsed();

    let mut delays: Vec<Duration> = (0..=30).map(|i| Duration::from_millis(2 * i)).collect();
    delays.extend((1..=9).map(|k| full * k / 8));
    let mut finished_before_kill = 0;
    for d in &delays {
        let mut child = spawn_push(&env, &seg);
        std::thread::sleep(*d);
        if let Ok(Some(status)) = child.try_wait() {
            finished_before_kill += 1;
            eprintln!("{backend:?}: push finished ({status}) before the kill at {d:?}");
            continue;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    eprintln!(
        "{backend:?}: uninterrupted push {full:?}; {} kills, {finished_before_kill} pushes finished first",
        delays.len() - finished_before_kill
    );

    let out = env.pgcairn(&["archive-push", &p(&seg)]);
    assert_success(&out, &format!("{backend:?}: archive-push after the kills"));
    assert!(
        fetch(&env, &name) == original,
        "{backend:?}: archive-get returns identical bytes"
    );
    let out = env.pgcairn(&["archive-push", &p(&seg)]);
    assert_success(&out, &format!("{backend:?}: second push"));
    if backend == Backend::File {
        assert_no_pointer_without_data(&env);
    }
}

#[test]
fn kill_9_mid_push_then_retry_on_every_backend() {
    for b in backends() {
        kill_mid_push(b);
    }
}

// 6. S3 outage during async archiving -------------------------------------------------------

fn archiver_stats(inst: &Instance) -> (u64, String) {
    let row = inst
        .psql(
            "postgres",
            "select failed_count || '|' || coalesce(last_archived_wal, '') from pg_stat_archiver",
        )
        .unwrap();
    let (failed, archived) = row.split_once('|').unwrap();
    (failed.parse().unwrap(), archived.to_string())
}

#[test]
fn s3_outage_during_async_archiving_loses_nothing() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let started = Instant::now();
    let phase = |what: &str| eprintln!("s3 outage: {what} at {:?}", started.elapsed());
    let port = free_port().unwrap();
    let fwd = start_forwarder(port, &endpoint);
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..EnvOptions::new(Backend::S3)
    });
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.psql("postgres", "create table t (id int, payload text)")
        .unwrap();
    let load = |n: u32| {
        pg.psql(
            "postgres",
            &format!("insert into t select g, md5(g :: text) from generate_series(1, {n}) g"),
        )
        .unwrap();
    };
    load(20_000);
    let first_switched = switch_wal(&pg);
    wait_archived(&pg, &first_switched, Duration::from_secs(60));
    let (failed_before, _) = archiver_stats(&pg);

    // Outage.
    phase("first segment archived; outage starts");
    drop(fwd);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    load(20_000);
    let s1 = switch_wal(&pg);
    load(20_000);
    let s2 = switch_wal(&pg);
    let outage = Instant::now();
    // Meanwhile restore_command cannot tell what is archived: PostgreSQL must abort recovery,
    // never take "not found" for an answer.
    let dir = dest_dir(&env, "outage-dest");
    for name in [first_switched.as_str(), "0000000100000000000000FF"] {
        let out = env.pgcairn(&["archive-get", name, &p(&dir.join(name))]);
        assert_exit(
            &out,
            200,
            &format!("archive-get {name} while S3 is unreachable"),
        );
        assert!(!stderr(&out).is_empty());
        assert!(!dir.join(name).exists());
    }
    std::thread::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed()));
    let (failed, last_archived) = archiver_stats(&pg);
    assert!(
        failed > failed_before,
        "archive-push failed during the outage (failed_count {failed})"
    );
    assert!(
        last_archived < s1,
        "nothing archived during the outage: last archived {last_archived}, first unarchivable {s1}"
    );
    let status = pg.datadir.join("pg_wal/archive_status");
    for s in [&s1, &s2] {
        assert!(
            pg.datadir.join("pg_wal").join(s).is_file(),
            "{s} kept in pg_wal"
        );
        assert!(
            status.join(format!("{s}.ready")).exists(),
            "{s} still .ready"
        );
        assert!(
            !status.join(format!("{s}.done")).exists(),
            "{s} not marked done"
        );
    }

    // The server is back on the same address.
    phase("outage checked; endpoint back");
    let back = Instant::now();
    let _fwd = start_forwarder(port, &endpoint);
    // After three failed attempts in a row PostgreSQL's archiver sleeps up to 60 s (measured:
    // 46 s after a 30 s outage) unless a new .ready file wakes it. New WAL wakes it, as it
    // would on any busy server, and keeps this test short.
    load(1_000);
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(120));
    eprintln!(
        "archived {s1} .. {last} {:?} after the endpoint came back (failed_count {})",
        back.elapsed(),
        archiver_stats(&pg).0
    );

    // Everything from the first archived segment to the last is there, byte for byte.
    let done = done_files(&pg);
    let first = done
        .iter()
        .find(|n| n.len() == 24)
        .expect("a segment marked done")
        .clone();
    let mut name = first.clone();
    loop {
        let fetched = fetch(&env, &name);
        assert_eq!(fetched.len(), SEGMENT_SIZE, "{name}");
        if let Ok(local) = std::fs::read(pg.datadir.join("pg_wal").join(&name)) {
            assert!(fetched == local, "{name} differs from pg_wal");
        }
        if name == last {
            break;
        }
        name = next_segment(&name);
    }
    let doc = info_json(&env);
    let tl = &doc["clusters"][0]["wal"]["timelines"][0];
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0, "no gaps: {tl}");
    let ranges = tl["ranges"].as_array().unwrap();
    assert_eq!(ranges[0]["first"].as_str().unwrap(), first, "{tl}");
    assert!(ranges[0]["last"].as_str().unwrap() >= last.as_str(), "{tl}");
    phase("all segments verified");
}

// 7. Malformed arguments, paths and configuration --------------------------------------------

#[test]
fn malformed_arguments_paths_and_config_are_reported() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let seg = real_segments(&env, 1).remove(0);
    let name = file_name(&seg);
    let dir = dest_dir(&env, "dest");

    let missing = "/nonexistent/000000010000000000000001";
    let out = env.pgcairn(&["archive-push", missing]);
    assert_exit(&out, 1, "archive-push of a missing file");
    assert!(stderr(&out).contains(missing), "{}", stderr(&out));

    let not_wal = env.path().join("notawalname");
    write_for_postgres(&env, &not_wal, b"hello");
    let out = env.pgcairn(&["archive-push", &p(&not_wal)]);
    assert_exit(&out, 2, "archive-push of a file that is not named like WAL");
    assert!(stderr(&out).contains(&p(&not_wal)), "{}", stderr(&out));

    let out = env.pgcairn(&["archive-push"]);
    assert_exit(&out, 2, "archive-push without its argument");

    let out = env.pgcairn(&["archive-get", "not-a-wal", &p(&dir.join("x"))]);
    assert_exit(&out, 200, "archive-get of a malformed name");
    assert!(!dir.join("x").exists());
    let out = env.pgcairn(&["archive-get"]);
    assert_exit(&out, 200, "archive-get without arguments");
    let out = env.pgcairn(&["archive-get", &name]);
    assert_exit(&out, 200, "archive-get without its destination");

    // A repository URL pointing at an empty directory.
    let empty = env.path().join("empty-repo");
    std::fs::create_dir_all(&empty).unwrap();
    give_to(env.run_as.as_deref(), &empty).unwrap();
    let config = std::fs::read_to_string(&env.config).unwrap();
    let empty_config = env.path().join("empty.toml");
    write_for_postgres(
        &env,
        &empty_config,
        config
            .replace(&env.repo_url, &format!("file://{}", empty.display()))
            .as_bytes(),
    );
    let out = env.pgcairn_with_config(&empty_config, &["archive-push", &p(&seg)]);
    assert_exit(&out, 2, "archive-push to an empty directory");
    assert!(stderr(&out).contains("pgcairn init"), "{}", stderr(&out));
    let out = env.pgcairn_with_config(&empty_config, &["archive-get", &name, &p(&dir.join(&name))]);
    assert_exit(&out, 200, "archive-get from an empty directory");
    assert!(
        std::fs::read_dir(&empty).unwrap().next().is_none(),
        "nothing created in the empty directory"
    );

    // A typo in the config.
    let typo_config = env.path().join("typo.toml");
    write_for_postgres(
        &env,
        &typo_config,
        format!("{config}asynk = true\n").as_bytes(),
    );
    let out = env.pgcairn_with_config(&typo_config, &["archive-push", &p(&seg)]);
    assert_exit(&out, 2, "unknown setting");
    assert!(stderr(&out).contains("archive.asynk"), "{}", stderr(&out));
    // For restore_command a configuration error must abort recovery, not mean "not found".
    let out = env.pgcairn_with_config(&typo_config, &["archive-get", &name, &p(&dir.join(&name))]);
    assert_exit(&out, 200, "archive-get with an unknown setting");
    assert!(stderr(&out).contains("archive.asynk"), "{}", stderr(&out));
    let no_config = env.path().join("no-such-config.toml");
    let out = env.pgcairn_with_config(&no_config, &["archive-push", &p(&seg)]);
    assert_exit(&out, 2, "archive-push with a missing config file");
    assert!(stderr(&out).contains(&p(&no_config)), "{}", stderr(&out));
    let out = env.pgcairn_with_config(&no_config, &["archive-get", &name, &p(&dir.join(&name))]);
    assert_exit(&out, 200, "archive-get with a missing config file");

    // init over an existing repository: refused, key and repository untouched.
    let key_before = std::fs::read(&env.key_file).unwrap();
    let out = env.pgcairn(&["init", "--key-file", &p(&env.key_file)]);
    assert_exit(&out, 2, "init on an existing repository");
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&env.key_file).unwrap(), key_before);

    // A segment cut short.
    let short = env.path().join("short").join(&name);
    write_for_postgres(&env, &short, &std::fs::read(&seg).unwrap()[..1 << 20]);
    let out = env.pgcairn(&["archive-push", &p(&short)]);
    assert_exit(&out, 1, "archive-push of a truncated segment");
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    // The repository still works and holds only what was pushed whole.
    let out = env.pgcairn(&["archive-get", &name, &p(&dir.join(&name))]);
    assert_exit(&out, 1, "the truncated segment was not archived");
    assert_success(&env.pgcairn(&["archive-push", &p(&seg)]), "archive-push");
    assert!(fetch(&env, &name) == std::fs::read(&seg).unwrap());
}

// 8. The async spool does not grow without bound ----------------------------------------------

/// Once PostgreSQL has its answer for a file (and marked it `.done`), the spool forgets the
/// file's acknowledgement (`Spool::clear`: "once PostgreSQL has been answered"); otherwise
/// `<spool>/<cluster>/ack/` gains one file per archived WAL file, forever.
#[test]
fn async_spool_forgets_acks_once_postgresql_is_answered() {
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        ..EnvOptions::new(Backend::File)
    });
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.psql("postgres", "create table t (id int)").unwrap();
    let mut last = String::new();
    for _ in 0..4 {
        pg.psql("postgres", "insert into t select generate_series(1, 1000)")
            .unwrap();
        last = switch_wal(&pg);
    }
    wait_archived(&pg, &last, Duration::from_secs(60));
    let ack_dir = env.path().join("spool/main/ack");
    // Allow the pusher its idle time (archive.idle_exit = 3s) and then some (other tests run
    // beside this one).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = done_files(&pg);
        let stale: Vec<String> = std::fs::read_dir(&ack_dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
            .filter(|n| done.contains(n))
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} kept acks for WAL files PostgreSQL already marked done: {stale:?}",
            ack_dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With `archive.queue_max` set and the repository failing, the pusher drops WAL (loudly) so
/// PostgreSQL can recycle it; the hole shows in `info`. Without the cap nothing is ever dropped
/// (the S3 outage test above).
#[test]
fn queue_max_drops_wal_loudly_when_the_repository_fails() {
    let env = TestEnv::new(EnvOptions {
        archive_async: true,
        archive_extra: "queue_max = \"1MiB\"\n".into(),
        ..EnvOptions::new(Backend::File)
    });
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    pg.psql("postgres", "create table t as select 1 as x")
        .unwrap();
    let first = switch_wal(&pg);
    wait_archived(&pg, &first, Duration::from_secs(60));
    // The repository stops accepting writes (PostgreSQL's user can no longer write there).
    let wal_dir = env.path().join("repo/clusters/main");
    let chmod = |mode: &str| {
        let ok = Command::new("chmod")
            .args(["-R", mode])
            .arg(&wal_dir)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    chmod("a-w");
    pg.psql(
        "postgres",
        "insert into t select g from generate_series(1, 1000) g",
    )
    .unwrap();
    let dropped = switch_wal(&pg);
    // Dropped once it has been failing for 30 s (archive::spool::DROP_AFTER_FAILING).
    let failing_from = std::time::Instant::now();
    wait_archived(&pg, &dropped, Duration::from_secs(120));
    assert!(
        failing_from.elapsed() >= Duration::from_secs(25),
        "dropped after one failed attempt ({:?}): a request that fails once is retried",
        failing_from.elapsed()
    );
    chmod("u+w");
    let log = std::fs::read_to_string(pg.datadir.join("pgcairn-server.log")).unwrap();
    assert!(
        log.contains("DROPPED"),
        "PostgreSQL's log says the segment was dropped:\n{log}"
    );
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let gaps = doc["clusters"][0]["wal"]["timelines"][0]["gaps"]
        .as_array()
        .unwrap()
        .clone();
    let ranges = doc["clusters"][0]["wal"]["timelines"][0]["ranges"]
        .as_array()
        .unwrap()
        .clone();
    let archived_dropped = ranges.iter().any(|r| {
        r["first"].as_str().unwrap() <= dropped.as_str()
            && dropped.as_str() <= r["last"].as_str().unwrap()
    });
    assert!(
        !archived_dropped,
        "{dropped} is not in the archive: {ranges:?}"
    );
    // Archiving resumes once the repository accepts writes again, and the hole stays visible.
    pg.psql("postgres", "insert into t values (2)").unwrap();
    let after = switch_wal(&pg);
    wait_archived(&pg, &after, Duration::from_secs(60));
    let info = env.pgcairn(&["info", "--output", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let gaps_after = doc["clusters"][0]["wal"]["timelines"][0]["gaps"]
        .as_array()
        .unwrap();
    assert!(
        !gaps_after.is_empty() || !gaps.is_empty(),
        "info shows the gap: {doc:#}"
    );
    // Monitoring counts the drop: in the repository's status object and in this host's spool.
    env.use_cluster(&pg);
    let metric = scrape_once(&env);
    for name in [
        r#"pgcairn_wal_dropped_segments_total{cluster="main"}"#,
        r#"pgcairn_archive_async_dropped_segments_total{cluster="main"}"#,
    ] {
        assert!(metric(name) >= 1.0, "{name}");
    }
}
