//! `pgcairn wal-receive` as the only synchronous standby: nothing acknowledged is ever lost.
//!
//! The proof: clients commit numbered rows and count every commit PostgreSQL acknowledged;
//! the receiver is killed with -9 mid-load and restarted; later the primary is killed with
//! -9 mid-load and its data directory deleted; a restore from the repository to the end of
//! the WAL has every acknowledged row. The last of them are only in the streamed tail (the
//! newest, incomplete segment), which `archive-get` serves.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgcairn_tests::*;

const CLIENTS: usize = 4;

/// Appends a `[wal_receive]` section to the environment's config.
fn configure_receiver(env: &TestEnv, extra: &str) -> std::path::PathBuf {
    let status = env.path().join("wal-receive-status.json");
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str(&format!(
        "\n[wal_receive]\nstatus_file = \"{}\"\ncommit_interval = \"5ms\"\n{extra}\n",
        status.display()
    ));
    env.replace_config(&text);
    status
}

/// A running receiver; killed with -9 when dropped.
struct Receiver {
    child: Child,
    status: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Receiver {
    fn start(env: &TestEnv, status: &Path, args: &[&str], log: &str) -> Receiver {
        let _ = std::fs::remove_file(status);
        let mut all = vec!["--log-level", "info", "wal-receive"];
        all.extend_from_slice(args);
        let log_path = env.path().join(log);
        let log = std::fs::File::create(&log_path).unwrap();
        let child = env
            .pgcairn_command(&all)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wal-receive");
        Receiver {
            child,
            status: status.to_path_buf(),
            log: log_path,
        }
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&self.status).ok()?).ok()
    }

    /// The pgcairn process itself (runuser may sit between us and it).
    fn pid(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self.status().and_then(|s| s["pid"].as_u64()) {
                return pid as u32;
            }
            assert!(Instant::now() < deadline, "the receiver wrote no status");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let pid = self.pid();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let _ = self.child.wait();
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.status().and_then(|s| s["pid"].as_u64()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the primary shows the receiver with `sync_state` (None: any).
fn wait_standby(pg: &Instance, sync_state: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = pg
            .psql(
                "postgres",
                "select state || ' ' || sync_state from pg_stat_replication where application_name = 'pgcairn'",
            )
            .unwrap();
        let ok = s.starts_with("streaming") && sync_state.is_none_or(|w| s.ends_with(w));
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver did not become a {sync_state:?} standby: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// psql on `pg` as PostgreSQL's OS user, stopping at the first error, output discarded
/// unless the caller pipes it.
fn psql_command(env: &TestEnv, pg: &Instance) -> Command {
    let mut c =
        pgcairn_engine::pg::instance::command_as(env.run_as.as_deref(), &pg.bin.client("psql"));
    c.args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&pg.socket_dir)
        .args([
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// An LSN as a number.
fn lsn(s: &str) -> u64 {
    s.parse::<pgcairn_engine::types::Lsn>()
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Makes the receiver the primary's only synchronous standby.
fn make_synchronous(pg: &Instance) {
    pg.psql(
        "postgres",
        "alter system set synchronous_standby_names = 'pgcairn'",
    )
    .unwrap();
    pg.psql("postgres", "select pg_reload_conf()").unwrap();
    wait_standby(pg, Some("sync"));
}

/// A client committing rows `(client, 1..)` one per transaction through psql; its output
/// has one `INSERT 0 1` per acknowledged commit, in order.
fn start_client(env: &TestEnv, pg: &Instance, client: usize) -> Child {
    let script = env.path().join(format!("client-{client}.sql"));
    let mut sql = String::new();
    for n in 1..=200_000 {
        sql.push_str(&format!(
            "insert into acked(client, n, pad) values ({client}, {n}, repeat('x', 300));\n"
        ));
    }
    std::fs::write(&script, sql).unwrap();
    give_to(env.run_as.as_deref(), &script).unwrap();
    psql_command(env, pg)
        .arg("-f")
        .arg(&script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql")
}

/// Kills the postmaster and every child of it with SIGKILL.
fn kill9_server(pg: &Instance) {
    let pidfile = std::fs::read_to_string(pg.datadir.join("postmaster.pid")).unwrap();
    let pid = pidfile.lines().next().unwrap().trim().to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let status = Command::new("kill").arg("-9").arg(&pid).status().unwrap();
    assert!(status.success(), "kill -9 of the postmaster {pid}");
    // A child may have exited since the list was read: only the postmaster must be there.
    for child in children.split_whitespace() {
        let _ = Command::new("kill").arg("-9").arg(child).status();
    }
}

fn acked_count(child: Child) -> i64 {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "INSERT 0 1")
        .count() as i64
}

/// Segments that have streamed chunks, and whether each is archived.
fn streamed_segments(env: &TestEnv) -> Vec<(String, bool)> {
    let mut segs: Vec<String> = env
        .list_objects("clusters/main/walstream/")
        .iter()
        .filter_map(|k| k.split('/').nth(4).map(str::to_string))
        .collect();
    segs.sort();
    segs.dedup();
    segs.into_iter()
        .map(|s| {
            let archived = !env
                .list_objects(&format!("clusters/main/wal/{}/{s}", &s[..8]))
                .is_empty();
            (s, archived)
        })
        .collect()
}

fn proof(backend: Backend) {
    let env = TestEnv::new(EnvOptions::new(backend));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    pg.start().unwrap();
    let guard = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create table acked(client int, n int, pad text, primary key (client, n))",
    )
    .unwrap();
    backup_json(&env, &["--type", "full"]);

    let mut receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver-1.log");
    wait_standby(&pg, None);
    make_synchronous(&pg);

    let clients: Vec<Child> = (1..=CLIENTS).map(|c| start_client(&env, &pg, c)).collect();
    std::thread::sleep(Duration::from_secs(2));
    pg.psql("postgres", "select pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_secs(1));

    // The receiver dies mid-load: commits wait (it is the only synchronous standby); the
    // restarted receiver resumes from what the repository holds.
    receiver.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let mut receiver = Receiver::start(&env, &status, &[], "receiver-2.log");
    wait_standby(&pg, Some("sync"));
    std::thread::sleep(Duration::from_secs(2));
    pg.psql("postgres", "select pg_switch_wal()").unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // The primary dies mid-load and its data directory is lost.
    kill9_server(&pg);
    let acked: Vec<i64> = clients.into_iter().map(acked_count).collect();
    let total: i64 = acked.iter().sum();
    eprintln!("acknowledged commits per client: {acked:?}");
    assert!(
        total > 100,
        "the load committed too little to prove anything: {acked:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    receiver.kill9();
    drop(guard);
    std::fs::remove_dir_all(&pg.datadir).unwrap();

    // Completed segments were archived and their chunks removed, but for the newest one
    // the receiver completed (its mark of where the stream stopped); the newest, incomplete
    // one is only in the stream. (When the primary's flushed WAL ended exactly at a segment
    // boundary, which the WAL writer's whole-segment flushes make possible, the receiver
    // completed and archived that segment: no tail, and -9 may have come before it deleted
    // the previous mark.)
    let streamed = streamed_segments(&env);
    let tails: Vec<&(String, bool)> = streamed.iter().filter(|(_, a)| !a).collect();
    assert!(
        tails.len() <= 1,
        "at most one streamed tail, every completed segment archived: {streamed:?}"
    );
    assert!(
        streamed.len() - tails.len() <= 2,
        "chunks of archived segments are removed but for the mark: {streamed:?}"
    );
    if let Some((tail, _)) = tails.first() {
        let archived_after_tail = env
            .list_objects(&format!("clusters/main/wal/{}/", &tail[..8]))
            .iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .any(|name| name.len() == 24 && name.as_str() > tail.as_str());
        assert!(
            !archived_after_tail,
            "the tail {tail} is the newest WAL in the repository"
        );
    }

    let restored = env.restore_and_start("restored", None);
    let _guard = StopOnDrop(&restored);
    for (i, &n) in acked.iter().enumerate() {
        let client = i + 1;
        let have: i64 = restored
            .psql(
                "postgres",
                &format!("select count(*) from acked where client = {client} and n <= {n}"),
            )
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            have, n,
            "client {client}: {n} commits were acknowledged, {have} of them restored ({backend:?})"
        );
    }
}

#[test]
fn every_acknowledged_commit_survives_losing_the_primary_file() {
    proof(Backend::File);
}

#[test]
fn every_acknowledged_commit_survives_losing_the_primary_s3() {
    if s3_endpoint().is_none() {
        eprintln!("skipped: no S3 endpoint (PGCAIRN_TEST_S3_ENDPOINT)");
        return;
    }
    proof(Backend::S3);
}

#[test]
fn sigterm_commits_what_was_received_reports_it_and_exits_zero() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    pg.start().unwrap();
    let _guard = StopOnDrop(&pg);
    env.use_cluster(&pg);
    // A slot that does not exist is an error that says how to create it.
    let out = env.pgcairn(&["wal-receive", "--slot", "nosuchslot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nosuchslot") && stderr(&out).contains("--create-slot"),
        "{}",
        stderr(&out)
    );
    let mut receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver.log");
    wait_standby(&pg, None);
    pg.psql(
        "postgres",
        "create table t as select generate_series(1, 1000) i",
    )
    .unwrap();
    let written: String = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &written);
    let exit = receiver.sigterm();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit}");
    let st = receiver.status().unwrap();
    assert_eq!(st["state"], "stopped", "{st}");
    let flushed = lsn(st["flush_lsn"].as_str().unwrap());
    assert!(flushed >= lsn(&written), "{st}");
    // The slot advanced to what the receiver reported flushed, and no further.
    let slot = pg
        .psql(
            "postgres",
            "select restart_lsn from pg_replication_slots where slot_name = 'pgcairn'",
        )
        .unwrap();
    assert_eq!(lsn(&slot), flushed, "slot {slot}, status {st}");
    // Info shows the receiver's flush position and the streamed tail.
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "pgcairn info");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let wr = &info["clusters"][0]["wal_receive"];
    assert_eq!(wr["receiver"]["flush_lsn"], st["flush_lsn"], "{info}");
    assert_eq!(wr["streamed_end_lsn"], st["flush_lsn"], "{info}");
}

/// Sets the primary's `archive_command` (in `postgresql.auto.conf`) and waits until the
/// archiver has it.
fn set_archive_command(pg: &Instance, cmd: &str) {
    pg.psql(
        "postgres",
        &format!(
            "alter system set archive_command = '{}'",
            cmd.replace('\'', "''")
        ),
    )
    .unwrap();
    pg.psql("postgres", "select pg_reload_conf()").unwrap();
    wait_archive_command(pg, cmd);
}

/// The gap of the two tests below: a receiver streams rows 1-1000 and stops inside segment
/// G; archiving then takes G and G+1 (rows 1001-3000) as done without storing them, and
/// G+1 reaches the repository by hand, as asynchronous archiving can store a later segment
/// while an earlier one is still being pushed, or was dropped (`queue_max`). Starts the
/// primary; returns G's name, with archiving back to normal.
fn stream_then_leave_a_gap(env: &TestEnv, status: &Path, pg: &Instance) -> String {
    pg.start().unwrap();
    env.use_cluster(pg);
    pg.psql("postgres", "create table t(i int)").unwrap();
    backup_json(env, &["--type", "full"]);
    let mut receiver = Receiver::start(env, status, &["--create-slot"], "receiver-1.log");
    wait_standby(pg, None);
    pg.psql("postgres", "insert into t select generate_series(1, 1000)")
        .unwrap();
    let written: String = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &written);
    assert!(receiver.sigterm().success());
    let gap = pg
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();

    set_archive_command(pg, "/bin/true");
    pg.psql(
        "postgres",
        "insert into t select generate_series(1001, 2000)",
    )
    .unwrap();
    pg.psql("postgres", "select pg_switch_wal()").unwrap();
    pg.psql(
        "postgres",
        "insert into t select generate_series(2001, 3000)",
    )
    .unwrap();
    let next = pg
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    pg.psql("postgres", "select pg_switch_wal()").unwrap();
    let segment = pg.datadir.join("pg_wal").join(&next);
    let out = env.pgcairn(&["archive-push", segment.to_str().unwrap()]);
    assert_success(&out, "archive-push of the segment after the gap");
    set_archive_command(pg, &env.archive_command());
    gap
}

/// A receiver restarted on the primary after [`stream_then_leave_a_gap`], made its
/// synchronous standby; rows 3001-4000 committed through it. Returns it with its log.
fn restart_and_commit_through(env: &TestEnv, status: &Path, pg: &Instance) -> (Receiver, String) {
    let receiver = Receiver::start(env, status, &["--create-slot"], "receiver-2.log");
    wait_standby(pg, None);
    make_synchronous(pg);
    pg.psql(
        "postgres",
        "insert into t select generate_series(3001, 4000)",
    )
    .unwrap();
    let written: String = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &written);
    let log = std::fs::read_to_string(&receiver.log).unwrap();
    (receiver, log)
}

/// The restarted receiver resumes at its own tail in the gap and streams the missing
/// segment from its slot, instead of acknowledging everything up to the stored one: the
/// restore after losing the primary has every row (before the fix: 1000 of 4000, recovery
/// ended in the gap).
#[test]
fn a_restarted_receiver_streams_a_segment_missing_below_an_archived_one() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    let guard = StopOnDrop(&pg);
    stream_then_leave_a_gap(&env, &status, &pg);
    let (mut receiver, log) = restart_and_commit_through(&env, &status, &pg);
    assert!(
        log.contains("is not in the repository, though later segments"),
        "the receiver says why it resumes below the newest archived segment:\n{log}"
    );

    kill9_server(&pg);
    receiver.kill9();
    drop(guard);
    std::fs::remove_dir_all(&pg.datadir).unwrap();
    let restored = env.restore_and_start("restored", None);
    let _guard = StopOnDrop(&restored);
    let rows = restored.psql("postgres", "select count(*) from t").unwrap();
    assert_eq!(rows, "4000", "every acknowledged row is restored");
}

/// The same gap when the server no longer has it (the slot was dropped and made again, so
/// PostgreSQL recycled the segment): PostgreSQL reports it once streaming began, and the
/// receiver goes past the gap, with an error saying point-in-time recovery stops there and a
/// backup is needed, instead of retrying it forever while every synchronous commit waits.
#[test]
fn a_gap_the_server_no_longer_has_is_reported_and_streaming_goes_on_after_it() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    let _guard = StopOnDrop(&pg);
    let gap = stream_then_leave_a_gap(&env, &status, &pg);
    pg.psql("postgres", "select pg_drop_replication_slot('pgcairn')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pg.psql("postgres", "select pg_switch_wal()").unwrap();
        pg.psql("postgres", "checkpoint").unwrap();
        let left = pg
            .psql(
                "postgres",
                &format!("select count(*) from pg_ls_waldir() where name = '{gap}'"),
            )
            .unwrap();
        if left == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "{gap} was not recycled");
    }
    let (_receiver, log) = restart_and_commit_through(&env, &status, &pg);
    assert!(
        log.contains(&format!(
            "{gap} is not in the repository and the server no longer has it"
        )) && log.contains("take a new backup"),
        "the receiver says what the gap costs and what to do:\n{log}"
    );
}

/// A client committing one row at a time makes a chunk per commit; the receiver merges
/// them as it goes, so the newest segment is a few objects, not thousands (every
/// `archive-get` of it and every restart reads them all). What was acknowledged reads back
/// whole after a restart.
#[test]
fn one_row_commits_are_merged_into_few_chunks() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    pg.start().unwrap();
    let _guard = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql("postgres", "create table t(i int)").unwrap();
    let mut receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver-1.log");
    wait_standby(&pg, None);
    make_synchronous(&pg);
    let script = env.path().join("one-row-commits.sql");
    let sql: String = (1..=1500)
        .map(|n| format!("insert into t values ({n});\n"))
        .collect();
    std::fs::write(&script, sql).unwrap();
    give_to(env.run_as.as_deref(), &script).unwrap();
    let out = psql_command(&env, &pg)
        .arg("-f")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: String = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &written);
    let segment = pg
        .psql("postgres", "select pg_walfile_name(pg_current_wal_lsn())")
        .unwrap();
    let committed = receiver.status().unwrap()["chunks_committed"]
        .as_u64()
        .unwrap();
    let stored = chunk_objects(&env, &segment).len() as u64;
    assert!(
        committed >= 1000,
        "one chunk per synchronous commit: {committed} chunks committed"
    );
    assert!(
        // A merged chunk per 64 small ones, the 64 the last merge covered (deleted at the
        // next), up to 64 not merged yet, and the first, large chunks of the catch-up.
        stored <= committed / 64 + 2 * 64 + 24,
        "{stored} chunk objects stored for {committed} chunks committed: not merged: {:?}\n{}",
        chunk_objects(&env, &segment),
        std::fs::read_to_string(&receiver.log).unwrap_or_default()
    );
    assert!(receiver.sigterm().success());
    let flushed = receiver.status().unwrap()["flush_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "pgcairn info");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["clusters"][0]["wal_receive"]["streamed_end_lsn"], flushed,
        "the merged chunks cover everything acknowledged: {info}"
    );
    // A restart reads them back and goes on from the same position.
    let receiver = Receiver::start(&env, &status, &[], "receiver-2.log");
    wait_standby(&pg, Some("sync"));
    pg.psql("postgres", "insert into t values (0)").unwrap();
    let written: String = pg.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &written);
}

/// Waits until a new session sees `archive_command` as `cmd` after a reload (the archiver
/// rereads its configuration at the same signal), and a moment more for the archiver itself.
fn wait_archive_command(pg: &Instance, cmd: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.psql("postgres", "show archive_command").unwrap() != cmd {
        assert!(Instant::now() < deadline, "archive_command is not {cmd:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// Runs one statement in the background through psql (autocommit).
fn spawn_sql(env: &TestEnv, pg: &Instance, sql: &str) -> Child {
    psql_command(env, pg)
        .args(["-c", sql])
        .spawn()
        .expect("psql")
}

#[test]
fn repository_unreachable_stops_acknowledging_and_any_1_with_a_replica_carries_on() {
    let Some(endpoint) = s3_endpoint() else {
        eprintln!("skipped: no S3 endpoint (PGCAIRN_TEST_S3_ENDPOINT)");
        return;
    };
    let port = free_port().unwrap();
    let fwd = start_forwarder(port, &endpoint);
    let env = TestEnv::new(EnvOptions {
        s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..EnvOptions::new(Backend::S3)
    });
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    pg.start().unwrap();
    let _guard = StopOnDrop(&pg);
    env.use_cluster(&pg);
    let receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver.log");
    wait_standby(&pg, None);
    pg.psql("postgres", "create table t(i int)").unwrap();
    make_synchronous(&pg);
    pg.psql("postgres", "insert into t values (1)").unwrap();

    // The object store goes away: the commit must not return.
    drop(fwd);
    let mut commit = spawn_sql(&env, &pg, "insert into t values (2)");
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        commit.try_wait().unwrap().is_none(),
        "a commit returned while the repository was unreachable"
    );
    let behind = pg
        .psql(
            "postgres",
            "select coalesce(flush_lsn < pg_current_wal_flush_lsn(), true) from pg_replication_slots s \
             left join pg_stat_replication r on r.application_name = 'pgcairn' where s.slot_name = 'pgcairn'",
        )
        .unwrap();
    assert_eq!(
        behind, "t",
        "the receiver acknowledged WAL it could not store"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver
        .status()
        .and_then(|s| s["last_error"].as_str().map(str::to_string))
        .is_none()
    {
        assert!(Instant::now() < deadline, "the receiver reported no error");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        commit.try_wait().unwrap().is_none(),
        "the commit is still waiting"
    );

    // The store comes back: the receiver retries, stores, acknowledges; the commit returns.
    let fwd = start_forwarder(port, &endpoint);
    let deadline = Instant::now() + Duration::from_secs(90);
    let exit = loop {
        if let Some(s) = commit.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the commit never returned after the store came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exit.success());
    wait_standby(&pg, Some("sync"));
    assert_eq!(
        receiver.status().unwrap()["state"],
        "streaming",
        "{:?}",
        receiver.status()
    );

    // With another synchronous candidate, `ANY 1 (pgcairn, replica1)`, commits carry on
    // through a repository outage: the replica acknowledges them.
    let replica = Instance::new(
        pg.bin.clone(),
        env.path().join("replica"),
        env.path().to_path_buf(),
        free_port().unwrap(),
        env.run_as.clone(),
    );
    let conninfo = format!(
        "host={} port={} user=postgres application_name=replica1",
        pg.socket_dir.display(),
        pg.port
    );
    let out = pgcairn_engine::pg::instance::command_as(
        env.run_as.as_deref(),
        &pg.bin.client("pg_basebackup"),
    )
    .arg("-D")
    .arg(&replica.datadir)
    .args(["-R", "-X", "stream", "-d", &conninfo])
    .output()
    .unwrap();
    assert_success(&out, "pg_basebackup");
    replica.start().unwrap();
    let _guard_replica = StopOnDrop(&replica);
    pg.psql(
        "postgres",
        "alter system set synchronous_standby_names = 'ANY 1 (pgcairn, replica1)'",
    )
    .unwrap();
    pg.psql("postgres", "select pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg
        .psql(
            "postgres",
            "select count(*) from pg_stat_replication where sync_state = 'quorum'",
        )
        .unwrap()
        != "2"
    {
        assert!(Instant::now() < deadline, "no quorum of two candidates");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(fwd);
    let mut commit = spawn_sql(&env, &pg, "insert into t values (3)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = commit.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "with ANY 1 and a replica, a commit waited for the unreachable repository"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success());
}

/// Waits until the receiver's status says it flushed at least `lsn` (text form).
fn wait_flushed(receiver: &Receiver, target: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver
        .status()
        .and_then(|s| s["flush_lsn"].as_str().map(lsn))
        .is_none_or(|f| f < lsn(target))
    {
        assert!(
            Instant::now() < deadline,
            "the receiver did not flush {target}: {:?}\nits log:\n{}",
            receiver.status(),
            std::fs::read_to_string(&receiver.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary streamed to the receiver (100 rows `old`, a full backup before them; with
/// `at_boundary`, a WAL switch after them, so the receiver's tail ends at a segment boundary)
/// is lost with the receiver (both killed with -9); the new primary is recovered from the
/// repository (the tail included) and promoted, on timeline 2, without archiving: only a
/// receiver can bring its WAL. Returns it, started.
fn fail_over_from_the_repository(env: &TestEnv, status: &Path, at_boundary: bool) -> Instance {
    let old = env.cluster("old");
    old.start().unwrap();
    let guard = StopOnDrop(&old);
    env.use_cluster(&old);
    old.psql("postgres", "create table t(i int, tl text)")
        .unwrap();
    backup_json(env, &["--type", "full"]);
    let mut receiver = Receiver::start(env, status, &["--create-slot"], "receiver-1.log");
    wait_standby(&old, None);
    old.psql(
        "postgres",
        "insert into t select i, 'old' from generate_series(1, 100) i",
    )
    .unwrap();
    if at_boundary {
        old.psql("postgres", "select pg_switch_wal()").unwrap();
    }
    let end = old.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    if at_boundary {
        assert_eq!(lsn(&end) % (16 << 20), 0, "{end} is a segment's start");
    }
    wait_flushed(&receiver, &end);
    receiver.kill9();
    old.crash().unwrap();
    drop(guard);
    std::fs::remove_dir_all(&old.datadir).unwrap();
    let new = env.restore_and_start("new", None);
    assert_eq!(
        new.psql("postgres", "select count(*) from t").unwrap(),
        "100"
    );
    let tli = new
        .psql(
            "postgres",
            "select timeline_id from pg_control_checkpoint()",
        )
        .unwrap();
    assert_eq!(tli, "2");
    env.use_cluster(&new);
    new
}

/// A receiver for the new primary `new` (timeline 2): 50 rows `new` streamed and flushed,
/// timeline 2's history archived; then the receiver stops and `new` is lost (killed with -9,
/// its data directory deleted).
fn stream_50_rows_then_lose_the_new_primary(env: &TestEnv, status: &Path, new: Instance) {
    let _guard_new = StopOnDrop(&new);
    let receiver = Receiver::start(env, status, &["--create-slot"], "receiver-2.log");
    wait_standby(&new, None);
    new.psql(
        "postgres",
        "insert into t select i, 'new' from generate_series(101, 150) i",
    )
    .unwrap();
    let end = new.psql("postgres", "select pg_current_wal_lsn()").unwrap();
    wait_flushed(&receiver, &end);
    assert_eq!(receiver.status().unwrap()["timeline"], 2);
    assert!(
        !env.list_objects("clusters/main/wal/00000002/00000002.history")
            .is_empty(),
        "the receiver archived timeline 2's history file"
    );
    drop(receiver);
    kill9_server(&new);
    std::fs::remove_dir_all(&new.datadir).unwrap();
}

/// Restores the repository's newest state into a fresh cluster: its rows of `t` by timeline.
fn rows_by_timeline_after_restore(env: &TestEnv, name: &str) -> String {
    let last = env.restore_and_start(name, None);
    let _guard_last = StopOnDrop(&last);
    last.psql(
        "postgres",
        "select tl || count(*) from t group by tl order by tl",
    )
    .unwrap()
}

#[test]
fn after_a_failover_the_receiver_follows_the_new_timeline() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let new = fail_over_from_the_repository(&env, &status, false);
    stream_50_rows_then_lose_the_new_primary(&env, &status, new);
    // Restored again: both timelines' rows are there.
    assert_eq!(
        rows_by_timeline_after_restore(&env, "last"),
        "new50\nold100"
    );
}

/// The receiver was down when the primary failed, its tail ending exactly at a segment
/// boundary, and the new primary wrote three segments of timeline 2 before the receiver came
/// back. It must stream timeline 2 from its first segment (the switch point), not from the
/// new primary's current segment: it acknowledged those first segments without having them,
/// and a restore ended at the switch.
#[test]
fn after_a_failover_at_a_segment_boundary_the_receiver_streams_the_new_timeline_from_its_start() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let new = fail_over_from_the_repository(&env, &status, true);
    for _ in 0..3 {
        new.psql(
            "postgres",
            "insert into t select i, 'early' from generate_series(1, 10) i",
        )
        .unwrap();
        new.psql("postgres", "select pg_switch_wal()").unwrap();
    }
    stream_50_rows_then_lose_the_new_primary(&env, &status, new);
    assert_eq!(
        rows_by_timeline_after_restore(&env, "last"),
        "early30\nnew50\nold100",
        "timeline 2's first segments were streamed"
    );
}

/// Objects under the cluster's streamed chunks whose segment name starts with `prefix`.
fn chunk_objects(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.list_objects("clusters/main/walstream/")
        .into_iter()
        .filter(|k| k.split('/').nth(4).is_some_and(|s| s.starts_with(prefix)))
        .collect()
}

/// A timeline that ends *during* a session: the receiver streams from standby A, and A is
/// promoted under it. A's walsender ends timeline 1 inside the session (CopyDone, then the
/// result naming timeline 2 and the switch point); the same receiver process archives
/// `00000002.history` and streams timeline 2, which a restore and a PITR then reach. A
/// archives nothing itself, so whatever timeline 2 has in the repository the receiver brought.
///
/// Then `expire` settles the streamed chunks: timeline 1's tail (the switch segment, never
/// completed on timeline 1) is superseded once timeline 2's copy of that segment is archived,
/// and goes; the newest tail, the only copy of the last acknowledged commits, stays, and the
/// restore afterwards still reaches them.
#[test]
fn a_timeline_ending_mid_session_is_followed_and_its_superseded_tail_expires() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let primary = env.cluster("primary");
    primary.start().unwrap();
    let guard_primary = StopOnDrop(&primary);
    env.use_cluster(&primary);
    primary
        .psql("postgres", "create table t(i int, tl text)")
        .unwrap();
    backup_json(&env, &["--type", "full"]);
    let a = env.standby_of(&primary, "a", "off");
    let _guard_a = StopOnDrop(&a);
    env.use_cluster(&a);
    let mut receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver.log");
    wait_standby(&a, None);
    primary
        .psql(
            "postgres",
            "insert into t select i, 'one' from generate_series(1, 100) i",
        )
        .unwrap();
    let end = current_lsn(&primary);
    wait_replayed(&a, &end, Duration::from_secs(60));
    wait_flushed(&receiver, &end);
    assert_eq!(receiver.status().unwrap()["timeline"], 1);
    let pid = receiver.pid();

    // The primary fails; A is promoted while the receiver streams from it.
    primary.crash().unwrap();
    drop(guard_primary);
    assert_eq!(a.psql("postgres", "select pg_promote()").unwrap(), "t");
    wait_recovered(&a, "promoted standby", Duration::from_secs(60));
    a.psql(
        "postgres",
        "insert into t select i, 'two' from generate_series(101, 150) i",
    )
    .unwrap();
    let end = current_lsn(&a);
    wait_flushed(&receiver, &end);
    let st = receiver.status().unwrap();
    assert_eq!(st["timeline"], 2, "{st}");
    assert_eq!(st["pid"], pid, "the same receiver process: {st}");
    assert!(
        receiver.child.try_wait().unwrap().is_none(),
        "the receiver kept running"
    );
    let log = std::fs::read_to_string(env.path().join("receiver.log")).unwrap();
    assert!(
        log.contains("timeline 1 ended at") && log.contains("following timeline 2"),
        "the server ended timeline 1 inside the session:\n{log}"
    );
    assert!(
        !log.contains("retrying in"),
        "following the timeline is no error:\n{log}"
    );
    assert!(
        !env.list_objects("clusters/main/wal/00000002/00000002.history")
            .is_empty(),
        "the receiver archived timeline 2's history file"
    );

    // Timeline 1's tail is the switch segment as far as timeline 1 got; timeline 2's copy of
    // that segment completes (a WAL switch) and is archived by the receiver.
    let old_tail: Vec<String> = streamed_segments(&env)
        .into_iter()
        .filter(|(s, _)| s.starts_with("00000001"))
        .map(|(s, _)| s)
        .collect();
    assert_eq!(old_tail.len(), 1, "timeline 1's tail: {old_tail:?}");
    let switch_segment = format!("00000002{}", &old_tail[0][8..]);
    a.psql("postgres", "select pg_switch_wal()").unwrap();
    a.psql(
        "postgres",
        "insert into t select i, 'three' from generate_series(151, 200) i",
    )
    .unwrap();
    a.psql("postgres", "select pg_create_restore_point('three')")
        .unwrap();
    a.psql(
        "postgres",
        "insert into t select i, 'four' from generate_series(201, 220) i",
    )
    .unwrap();
    let end = current_lsn(&a);
    wait_flushed(&receiver, &end);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env
        .list_objects(&format!("clusters/main/wal/00000002/{switch_segment}"))
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "{switch_segment} (timeline 2's copy of the switch segment) was not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // info shows timeline 2: its history, its archived WAL, the stream on it.
    let out = env.pgcairn(&["info", "--output", "json"]);
    assert_success(&out, "pgcairn info");
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cl = &info["clusters"][0];
    let tl2 = cl["wal"]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["timeline"] == 2)
        .unwrap_or_else(|| panic!("no timeline 2 in info: {info}"));
    assert_eq!(tl2["history_file"], true, "{info}");
    assert!(tl2["segments"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(cl["wal_receive"]["streamed_timeline"], 2, "{info}");

    let exit = receiver.sigterm();
    assert!(exit.success(), "{exit}");
    let last_flushed = lsn(receiver.status().unwrap()["flush_lsn"].as_str().unwrap());
    assert!(last_flushed >= lsn(&end));
    a.crash().unwrap();
    std::fs::remove_dir_all(&a.datadir).unwrap();

    // expire: timeline 1's tail goes (superseded), the newest tail stays (the only copy).
    let old_before = chunk_objects(&env, "00000001");
    let new_before = chunk_objects(&env, "00000002");
    assert!(!old_before.is_empty() && !new_before.is_empty());
    // The receiver keeps the chunks of the newest segment it archived as the mark of where
    // its stream stopped, until it archives the next; expire removes them once they are not
    // the newest streamed segment.
    let (mark, newest_tail): (Vec<String>, Vec<String>) = new_before
        .iter()
        .cloned()
        .partition(|k| k.contains(&format!("/{switch_segment}/")));
    assert!(!newest_tail.is_empty(), "{new_before:?}");
    let out = env.pgcairn(&["expire", "--output", "json"]);
    assert_success(&out, "pgcairn expire");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        chunk_objects(&env, "00000001"),
        Vec::<String>::new(),
        "timeline 1's superseded tail is removed: {report}"
    );
    assert_eq!(
        chunk_objects(&env, "00000002"),
        newest_tail,
        "the newest tail stays, the mark before it goes ({mark:?}): {report}"
    );

    // The end of the WAL: every row, the last ones only in the newest tail.
    let restored = env.restore_and_start("restored", None);
    let _guard_restored = StopOnDrop(&restored);
    assert_eq!(
        restored
            .psql(
                "postgres",
                "select string_agg(tl || c, ',' order by m) from \
                 (select tl, count(*) c, min(i) m from t group by tl) s"
            )
            .unwrap(),
        "one100,two50,three50,four20"
    );
    // PITR on timeline 2 to the restore point between 'three' and 'four'.
    let pitr = env.restore_and_start_with(
        "pitr",
        &["--target-name", "three", "--target-action", "promote"],
        false,
    );
    let _guard_pitr = StopOnDrop(&pitr);
    assert_eq!(
        pitr.psql("postgres", "select count(*), max(i) from t")
            .unwrap(),
        "200|200"
    );
}

/// Sets `cluster.conninfo` in the environment's config.
fn set_conninfo(env: &TestEnv, conninfo: &str) {
    let text: String = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("conninfo =") {
                format!("conninfo = \"{conninfo}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    env.replace_config(&text);
}

/// SCRAM channel binding over TLS, against a real server with a self-signed certificate:
/// with `channel_binding=require` the receiver authenticates with SCRAM-SHA-256-PLUS
/// (`tls-server-end-point`, so the server checks the hash of its own certificate against
/// ours) and streams; `require` refuses a connection without TLS, and a server that lets the
/// role in without SCRAM (trust), where libpq refuses too.
#[test]
fn scram_channel_binding_is_used_and_required_when_conninfo_says_so() {
    let env = TestEnv::new(EnvOptions::new(Backend::File));
    let status = configure_receiver(&env, "");
    let pg = env.cluster("primary");
    env.with_server_certificate(&pg);
    let d = &pg.datadir;
    let hba = std::fs::read_to_string(d.join("pg_hba.conf")).unwrap();
    std::fs::write(
        d.join("pg_hba.conf"),
        format!(
            "hostssl replication trusted 127.0.0.1/32 trust\n\
             host replication all 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 scram-sha-256\n{hba}"
        ),
    )
    .unwrap();
    pg.configure(&[("password_encryption", "scram-sha-256".into())])
        .unwrap();
    pg.start_with("-c listen_addresses=127.0.0.1").unwrap();
    let _guard = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.psql(
        "postgres",
        "create role pgcairn login replication password 'Rep-pw-1'; \
         create role trusted login replication",
    )
    .unwrap();
    let tcp = |extra: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=postgres password=Rep-pw-1 {extra}",
            pg.port
        )
    };

    // Without TLS, or when the server does not ask for SCRAM, `require` refuses.
    set_conninfo(
        &env,
        &tcp("user=pgcairn sslmode=disable channel_binding=require"),
    );
    let out = env.pgcairn(&["wal-receive", "--create-slot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("channel_binding=require") && stderr(&out).contains("TLS"),
        "{}",
        stderr(&out)
    );
    set_conninfo(
        &env,
        &tcp("user=trusted sslmode=require channel_binding=require"),
    );
    let out = env.pgcairn(&["wal-receive", "--create-slot"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("channel_binding=require")
            && stderr(&out).contains("SCRAM-SHA-256-PLUS"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pg.psql("postgres", "select count(*) from pg_replication_slots")
            .unwrap(),
        "0",
        "a refused connection created nothing"
    );

    // Bound to the TLS session: the server accepts the binding and the receiver streams.
    set_conninfo(
        &env,
        &tcp("user=pgcairn sslmode=require channel_binding=require"),
    );
    let receiver = Receiver::start(&env, &status, &["--create-slot"], "receiver.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.status().is_none_or(|s| s["state"] != "streaming") {
        assert!(
            Instant::now() < deadline,
            "the receiver does not stream: {:?}\n{}",
            receiver.status(),
            std::fs::read_to_string(env.path().join("receiver.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_standby(&pg, None);
    assert_eq!(
        pg.psql(
            "postgres",
            "select s.ssl from pg_stat_ssl s join pg_stat_replication r using (pid) \
             where r.application_name = 'pgcairn'"
        )
        .unwrap(),
        "t"
    );
    pg.psql(
        "postgres",
        "create table t as select generate_series(1, 100) i",
    )
    .unwrap();
    let end = current_lsn(&pg);
    wait_flushed(&receiver, &end);
}
