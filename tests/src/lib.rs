//! Fixtures for end-to-end tests: a working directory PostgreSQL can use, the `pgcairn`
//! binary copied where the `postgres` OS user can run it, a repository on local disk or on
//! the S3-compatible server that `scripts/test.sh` starts on loopback, and real PostgreSQL
//! clusters (Debian's 15 by default, any major from 13 to 18 with [`TestEnv::cluster_of`])
//! whose `archive_command` / `restore_command` call that binary. A restored data directory is
//! started with the server of its own major version.
//!
//! As root (CI), PostgreSQL and every pgcairn call that PostgreSQL would make run as the
//! `postgres` OS user, exactly as in production.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use pgcairn_engine::pg::instance::{
    free_port, give_to, postgres_user_if_root, Instance, PgBinaries,
};

/// Where the repository lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `file://` in the working directory.
    File,
    /// `s3://` on the loopback S3 server.
    S3,
}

/// The S3 endpoint from `scripts/test.sh`, or `None` (the caller skips) when not running
/// under it. With `PGCAIRN_REQUIRE_S3=1` a missing endpoint fails instead.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("PGCAIRN_TEST_S3_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) => {
            assert!(
                std::env::var("PGCAIRN_REQUIRE_S3").is_err(),
                "PGCAIRN_REQUIRE_S3 is set but PGCAIRN_TEST_S3_ENDPOINT is not: start scripts/s3-local.sh"
            );
            eprintln!(
                "skipping S3 variant: PGCAIRN_TEST_S3_ENDPOINT not set (scripts/test.sh sets it)"
            );
            None
        }
    }
}

/// The server binaries of PostgreSQL `major` (from `/usr/lib/postgresql/<major>/bin`, where
/// `scripts/install-postgres-majors.sh` puts them), or `None` (the caller skips) when that
/// major is not installed. With `PGCAIRN_REQUIRE_PG_MAJORS=1` (set by `scripts/test.sh`) a
/// missing major fails instead, so CI never passes without testing every version.
pub fn pg_binaries_of(major: u32) -> Option<PgBinaries> {
    match PgBinaries::for_major(major, None) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(
                std::env::var("PGCAIRN_REQUIRE_PG_MAJORS").is_err(),
                "PGCAIRN_REQUIRE_PG_MAJORS is set but PostgreSQL {major} is missing \
                 (run scripts/install-deps.sh as root): {e}"
            );
            eprintln!("skipping PostgreSQL {major}: not installed (scripts/install-deps.sh installs it): {e}");
            None
        }
    }
}

/// The server binaries that run the data directory `datadir` (of its `PG_VERSION`).
pub fn pg_binaries_for(datadir: &Path) -> PgBinaries {
    let major = pgcairn_engine::pg::instance::data_directory_major(datadir).unwrap();
    PgBinaries::for_major(major, None).unwrap()
}

/// The one backend to run a scenario on when it runs once: the local S3 server when there is
/// one, else `file://`.
pub fn preferred_backend() -> Backend {
    if s3_endpoint().is_some() {
        Backend::S3
    } else {
        Backend::File
    }
}

/// The backends to run a scenario on: always `file://`, and S3 when available.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::File];
    if s3_endpoint().is_some() {
        v.push(Backend::S3);
    }
    v
}

/// The pgcairn binary built by cargo for this workspace.
pub fn built_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PGCAIRN_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let p = target.join("debug/pgcairn");
    assert!(
        p.is_file(),
        "{} missing: build it first (cargo build -p pgcairn)",
        p.display()
    );
    p
}

/// Runs `pgcairn metrics` (which must succeed) and returns a function giving the value of the
/// sample named exactly `series` (`name{labels}` as printed), panicking with the whole output
/// when it is absent.
pub fn scrape_once(env: &TestEnv) -> impl Fn(&str) -> f64 {
    let out = env.pgcairn(&["metrics"]);
    assert_success(&out, "pgcairn metrics");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    move |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} in:\n{text}"))
            .parse()
            .unwrap()
    }
}

/// Options for a test environment.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Repository backend.
    pub backend: Backend,
    /// `[archive] async = true`.
    pub archive_async: bool,
    /// Extra lines for the `[archive]` section.
    pub archive_extra: String,
    /// S3 endpoint override (for example a forwarder in front of the server).
    pub s3_endpoint: Option<String>,
    /// Extra lines for the `[repo]` section (present from `init` on).
    pub repo_extra: String,
}

impl EnvOptions {
    /// Synchronous archiving on `backend`.
    pub fn new(backend: Backend) -> Self {
        EnvOptions {
            backend,
            archive_async: false,
            archive_extra: String::new(),
            s3_endpoint: None,
            repo_extra: String::new(),
        }
    }
}

/// A working directory with a pgcairn binary, a config and an initialised repository.
#[derive(Debug)]
pub struct TestEnv {
    /// Root of everything (removed on drop).
    pub dir: tempfile::TempDir,
    /// pgcairn, where `postgres` can execute it.
    pub bin: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
    /// Repository URL.
    pub repo_url: String,
    /// OS user PostgreSQL and archive commands run as (when root).
    pub run_as: Option<String>,
    /// The options used.
    pub options: EnvOptions,
}

fn unique() -> String {
    // The clock alone is not enough: two tests of one process creating their environments in
    // the same clock tick would get the same S3 prefix, and the second `init` would find the
    // first's repository (an `init` failed once with "another init created one at the same
    // moment" on a prefix no other process used; this is the likely cause).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{}-{seq}", std::process::id(), n % 1_000_000_000_000)
}

impl TestEnv {
    /// Creates the directory, the config and the repository (`init` with a new key file).
    pub fn new(options: EnvOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pgcairn-e2e-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let run_as = postgres_user_if_root("postgres");
        let bin = dir.path().join("bin/pgcairn");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(built_binary(), &bin).expect("copy pgcairn binary");
        let key_file = dir.path().join("repo.key");
        let repo_url = match options.backend {
            Backend::File => format!("file://{}/repo", dir.path().display()),
            Backend::S3 => {
                let bucket = std::env::var("PGCAIRN_TEST_S3_BUCKET")
                    .unwrap_or_else(|_| "pgcairn-test".into());
                format!("s3://{bucket}/e2e-{}", unique())
            }
        };
        let mut repo_section = format!(
            "url = \"{repo_url}\"\nkey_file = \"{}\"\n",
            key_file.display()
        );
        if options.backend == Backend::S3 {
            let endpoint = options
                .s3_endpoint
                .clone()
                .or_else(s3_endpoint)
                .expect("S3 endpoint");
            repo_section.push_str(&format!(
                "endpoint = \"{endpoint}\"\nallow_http = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n\
                 max_retries = 2\nretry_timeout = \"5s\"\nconnect_timeout = \"2s\"\n"
            ));
        }
        repo_section.push_str(&options.repo_extra);
        let config = dir.path().join("pgcairn.toml");
        let toml = format!(
            "[repo]\n{repo_section}\n[cluster]\nname = \"main\"\n\n[archive]\nasync = {}\nspool_dir = \"{}\"\ntimeout = \"20s\"\nidle_exit = \"3s\"\n{}\n",
            options.archive_async,
            dir.path().join("spool").display(),
            options.archive_extra
        );
        std::fs::write(&config, toml).unwrap();
        // It may hold credentials: pgcairn refuses a config others can read then.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = TestEnv {
            dir,
            bin,
            config,
            key_file,
            repo_url,
            run_as,
            options,
        };
        give_to(env.run_as.as_deref(), env.dir.path()).unwrap();
        // As the package installs it: root's, readable by PostgreSQL's group. pgcairn run as
        // root (restore, drill) refuses a config owned by another user.
        if env.run_as.is_some() {
            let group = Command::new("chgrp")
                .arg("postgres")
                .arg(&env.config)
                .status()
                .expect("chgrp");
            assert!(group.success());
            std::os::unix::fs::chown(&env.config, Some(0), None).unwrap();
            std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let out = env.pgcairn(&["init", "--key-file", &env.key_file.display().to_string()]);
        assert_success(&out, "pgcairn init");
        env
    }

    /// Root directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The prefetch area of the recovery of `datadir` (archive-get's working directory) from
    /// this environment's repository: the directory in `spool/main/prefetch/` whose `.datadir`
    /// names it (a path that does not exist while nothing went through the spool from there).
    pub fn prefetch_dir_of(&self, datadir: &Path) -> PathBuf {
        let parent = self.path().join("spool/main/prefetch");
        let want = std::fs::canonicalize(datadir).unwrap_or_else(|_| datadir.to_path_buf());
        let areas: Vec<PathBuf> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                std::fs::read(p.join(".datadir"))
                    .is_ok_and(|d| d == want.as_os_str().as_encoded_bytes())
            })
            .collect();
        assert!(areas.len() <= 1, "one data directory, one area: {areas:?}");
        areas
            .into_iter()
            .next()
            .unwrap_or_else(|| parent.join("none"))
    }

    /// Runs pgcairn with this environment's config, as PostgreSQL's OS user.
    pub fn pgcairn(&self, args: &[&str]) -> Output {
        self.pgcairn_with_config(&self.config, args)
    }

    /// Runs pgcairn with another config file, as PostgreSQL's OS user.
    pub fn pgcairn_with_config(&self, config: &Path, args: &[&str]) -> Output {
        // Text file busy: while one test thread copies its binary, another may fork, and the
        // child holds the copy open for writing until it execs; exec then fails with ETXTBSY.
        // That is the test harness racing itself, not pgcairn: retry briefly.
        let mut attempt = 0;
        loop {
            let mut c = pgcairn_engine::pg::instance::command_as(self.run_as.as_deref(), &self.bin);
            c.arg("--config").arg(config).args(args);
            c.env_remove("PGCAIRN_PASSPHRASE");
            let out = c.output().expect("run pgcairn");
            let busy = String::from_utf8_lossy(&out.stderr).contains("Text file busy");
            if !busy || attempt == 20 {
                return out;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The command [`TestEnv::pgcairn`] runs (as PostgreSQL's OS user, with this config), to
    /// add environment variables or spawn it.
    pub fn pgcairn_command(&self, args: &[&str]) -> Command {
        let mut c = pgcairn_engine::pg::instance::command_as(self.run_as.as_deref(), &self.bin);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("PGCAIRN_PASSPHRASE");
        c
    }

    /// A directory PostgreSQL's OS user (who runs pgcairn here) owns, mode 0700: a private
    /// `TMPDIR` for a drill.
    pub fn private_dir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        give_to(self.run_as.as_deref(), &dir).unwrap();
        dir
    }

    /// The `archive_command` for PostgreSQL.
    pub fn archive_command(&self) -> String {
        format!(
            "'{}' --config '{}' archive-push %p",
            self.bin.display(),
            self.config.display()
        )
    }

    /// The `restore_command` for PostgreSQL.
    pub fn restore_command(&self) -> String {
        format!(
            "'{}' --config '{}' archive-get %f %p",
            self.bin.display(),
            self.config.display()
        )
    }

    /// A new cluster (not started) in `<dir>/<name>`, archiving to this repository.
    pub fn cluster(&self, name: &str) -> Instance {
        self.cluster_of(name, &PgBinaries::find().unwrap())
    }

    /// Like [`TestEnv::cluster`], of the PostgreSQL major of `bin` ([`pg_binaries_of`]).
    pub fn cluster_of(&self, name: &str, bin: &PgBinaries) -> Instance {
        let datadir = self.path().join(name);
        let inst = Instance::new(
            bin.clone(),
            datadir,
            self.path().to_path_buf(),
            free_port().unwrap(),
            self.run_as.clone(),
        );
        inst.initdb().expect("initdb");
        inst.configure(&[
            ("wal_level", "replica".into()),
            ("archive_mode", "on".into()),
            ("archive_command", self.archive_command()),
            ("archive_timeout", "0".into()),
            ("max_wal_size", "256MB".into()),
            ("fsync", "off".into()),
        ])
        .expect("configure");
        inst
    }
}

/// Asserts a command succeeded, showing its output otherwise.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON report of a drill that must have passed (exit 0, outcome `passed`).
pub fn passed_drill(out: &Output) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill output is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    });
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    assert_eq!(doc["outcome"], "passed", "{doc:#}");
    doc
}

/// The rows drill report `doc` counted in `table` (`db.schema.table`).
pub fn drill_rows(doc: &serde_json::Value, table: &str) -> serde_json::Value {
    doc["row_counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["table"] == table)
        .unwrap_or_else(|| panic!("no row count of {table}: {doc:#}"))["rows"]
        .clone()
}

/// The check of drill report `doc` whose name starts with `name`.
pub fn drill_check(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no check {name}: {doc:#}"))
        .clone()
}

/// Text of stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Waits until `pg_stat_archiver` reports `segment` (or later) archived.
pub fn wait_archived(inst: &Instance, segment: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let row = inst
            .psql("postgres", "select coalesce(last_archived_wal,'') || '|' || coalesce(last_failed_wal,'') from pg_stat_archiver")
            .unwrap();
        let (archived, failed) = row.split_once('|').unwrap_or((&row, ""));
        if archived.len() >= 24 && archived[..24] >= *segment {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{segment} not archived in {timeout:?}: last archived {archived:?}, last failed {failed:?}; server log:\n{}",
            std::fs::read_to_string(inst.datadir.join("pgcairn-server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running process: its id and command line.
struct Process {
    pid: String,
    argv: Vec<String>,
}

impl Process {
    /// A background pusher or prefetcher.
    fn is_daemon(&self) -> bool {
        self.argv.iter().any(|a| a.ends_with("-daemon"))
    }
}

/// Every process whose command line can be read.
fn processes() -> Vec<Process> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_string();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let argv = cmdline
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            Some(Process { pid, argv })
        })
        .collect()
}

/// Processes running `exe`.
fn processes_of(exe: &Path) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|p| p.argv.first().is_some_and(|a| Path::new(a) == exe))
        .collect()
}

impl Drop for TestEnv {
    /// Stops the background pushers and prefetchers this environment's binary started: they
    /// outlive the test's servers by up to `idle_exit` and write into its spool, and a file
    /// they create while the directory is being removed left the whole directory behind in
    /// `/tmp`.
    fn drop(&mut self) {
        let running = processes_of(&self.bin);
        if running.is_empty() {
            return;
        }
        let pids = running.iter().map(|p| &p.pid);
        let _ = Command::new("kill").arg("-TERM").args(pids).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_of(&self.bin).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Process ids of the background pushers and prefetchers `bin` started.
pub fn pgcairn_daemon_pids(bin: &Path) -> Vec<String> {
    processes_of(bin)
        .into_iter()
        .filter(Process::is_daemon)
        .map(|p| p.pid)
        .collect()
}

/// What the descriptors of process `pid` open beneath `dir`.
pub fn open_files_beneath(pid: &str, dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

/// Background pgcairn processes (pusher, prefetcher) whose working directory is `dir` or
/// beneath it, as `pid: command line`: each would keep `dir`'s file system busy. Processes
/// whose working directory cannot be read (another user's, without root) are not listed. One
/// found is looked at again half a second later: a daemon starting just then is still in the
/// directory it was started in while it reads its settings.
pub fn pgcairn_daemons_inside(dir: &Path) -> Vec<String> {
    let first = daemons_inside_now(dir);
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(Duration::from_millis(500));
    let again = daemons_inside_now(dir);
    first.into_iter().filter(|p| again.contains(p)).collect()
}

fn daemons_inside_now(dir: &Path) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    processes()
        .into_iter()
        .filter(|p| {
            p.is_daemon()
                && std::fs::read_link(format!("/proc/{}/cwd", p.pid))
                    .is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .map(|p| format!("{}: {}", p.pid, p.argv.join(" ")))
        .collect()
}

/// Switches to a new WAL segment and returns the name of the one just finished.
pub fn switch_wal(inst: &Instance) -> String {
    inst.psql("postgres", "select pg_walfile_name(pg_switch_wal())")
        .unwrap()
}

/// Every entry beneath `dir` (files, directories, links; links not followed), sorted.
pub fn entries_beneath(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                dirs.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// WAL file names PostgreSQL marked `.done` (archived).
pub fn done_files(inst: &Instance) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(inst.datadir.join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".done")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// A stable fingerprint of the pgbench data: row counts and sums.
pub fn pgbench_fingerprint(inst: &Instance) -> String {
    inst.psql(
        "postgres",
        "select (select count(*) from pgbench_accounts) || ':' || (select sum(abalance) from pgbench_accounts) || ':' || \
         (select count(*) from pgbench_history) || ':' || (select coalesce(sum(delta),0) from pgbench_history) || ':' || \
         (select md5(string_agg(bid::text || '/' || bbalance::text, ',' order by bid)) from pgbench_branches)",
    )
    .unwrap()
}

/// A socat forwarder; dropping it kills its whole process group, so the connections it
/// forked die too and the outage is real.
#[derive(Debug)]
pub struct Forwarder(pub std::process::Child);

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts a TCP forwarder `127.0.0.1:listen -> target` with socat, in its own process group.
pub fn start_forwarder(listen: u16, target: &str) -> Forwarder {
    use std::os::unix::process::CommandExt;
    let target = target.trim_start_matches("http://");
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr"))
        .arg(format!("TCP:{target}"))
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("socat (scripts/install-deps.sh installs it)");
    let fwd = Forwarder(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(
            Instant::now() < deadline,
            "socat did not listen on {listen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fwd
}

/// Waits until `inst` has left recovery (promoted), failing after `timeout`.
pub fn wait_recovered(inst: &Instance, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while inst.psql("postgres", "select pg_is_in_recovery()").unwrap() == "t" {
        assert!(
            Instant::now() < deadline,
            "recovery of {what} did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops a cluster when dropped, so a failing test leaves no server behind.
#[derive(Debug)]
pub struct StopOnDrop<'a>(pub &'a Instance);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

/// A tmpfs of `size` (as `mount -o size=` takes it: `64k`, `40m`) mounted on `dir` (created),
/// unmounted when the guard drops. Needs root.
pub fn mount_tmpfs(dir: &Path, size: &str) -> Unmount {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=1777"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs on {}", dir.display());
    Unmount(dir.to_path_buf())
}

/// Unmounts a test file system when dropped.
#[derive(Debug)]
pub struct Unmount(pub PathBuf);

impl Unmount {
    /// Gives the file system `size` (`mount -o remount,size=`).
    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "resize the tmpfs on {}", self.0.display());
    }
}

impl Drop for Unmount {
    /// Unmounts, and if something still holds the file system, detaches it lazily (it goes
    /// when the last user does): a test never leaves a mount behind on the host.
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            eprintln!("{} is busy: detached lazily", self.0.display());
            let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
        }
    }
}

impl TestEnv {
    /// Points `cluster.pgdata` and `cluster.conninfo` of the config at `inst` (for backup and check).
    pub fn use_cluster(&self, inst: &Instance) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let conninfo = format!(
            "host={} port={} user=postgres dbname=postgres",
            inst.socket_dir.display(),
            inst.port
        );
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("pgdata =") || line.starts_with("conninfo =") {
                continue;
            }
            out.push_str(line);
            out.push('\n');
            if line == "[cluster]" {
                out.push_str(&format!(
                    "pgdata = \"{}\"\nconninfo = \"{conninfo}\"\n",
                    inst.datadir.display()
                ));
            }
        }
        self.replace_config(&out);
    }

    /// Replaces the config file whole (a temporary file renamed over it, same owner and
    /// mode): a restore_command or archive_command running at that moment reads the old file
    /// or the new one, never a truncated one. (A standby's archive-get once read it empty
    /// while `use_cluster` rewrote it in place, and exited 200.)
    pub fn replace_config(&self, text: &str) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.config).unwrap();
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, meta.permissions()).unwrap();
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid())).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// A cluster `<dir>/<name>`, started, configured as this environment's cluster
    /// ([`TestEnv::use_cluster`]) and initialised by `pgbench -i -s 1`. Stop it with
    /// [`StopOnDrop`].
    pub fn started_pgbench_cluster(&self, name: &str) -> Instance {
        let pg = self.cluster(name);
        pg.start().unwrap();
        self.use_cluster(&pg);
        if let Err(e) = pg.pgbench(&["-i", "-s", "1", "-q"]) {
            let _ = pg.stop();
            panic!("pgbench -i: {e}");
        }
        pg
    }

    /// `--progress never drill --output json --report-dir <dir>/reports EXTRA...`.
    fn drill_args(&self, extra: &[&str]) -> Vec<String> {
        let reports = self.path().join("reports").display().to_string();
        let args: Vec<String> = [
            "--progress",
            "never",
            "drill",
            "--output",
            "json",
            "--report-dir",
            &reports,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
        args
    }

    /// `pgcairn drill --output json` with its reports in `<dir>/reports`, as the fixtures'
    /// pgcairn user: the command, to add environment variables or spawn it.
    pub fn drill_command(&self, extra: &[&str]) -> Command {
        let args = self.drill_args(extra);
        self.pgcairn_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `pgcairn drill --output json --report-dir DIR` run as root, this process's user (the
    /// fixtures run pgcairn as PostgreSQL's user).
    pub fn root_drill_command(&self, report_dir: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .args(["--progress", "never", "drill", "--output", "json"])
            .arg("--report-dir")
            .arg(report_dir)
            .stdin(Stdio::null());
        c
    }

    /// Runs `pgcairn drill --output json` like [`TestEnv::drill_command`] (through
    /// [`TestEnv::pgcairn`]); its output, whatever it is.
    pub fn drill(&self, extra: &[&str]) -> Output {
        let args = self.drill_args(extra);
        self.pgcairn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Restores a backup into `<dir>/<name>` with `pgcairn restore`, starts it with archiving
    /// off, waits until recovery finished, and returns the running instance.
    pub fn restore_and_start(&self, name: &str, backup: Option<&str>) -> Instance {
        let mut args = Vec::new();
        if let Some(b) = backup {
            args.extend(["--backup", b]);
        }
        self.restore_and_start_with(name, &args, false)
    }

    /// `pgcairn restore --pgdata <dir>/<name> ARGS`, asserting success.
    pub fn restore(&self, name: &str, args: &[&str]) -> Output {
        let target = self.path().join(name).display().to_string();
        let mut all = vec![
            "--progress",
            "never",
            "restore",
            "--pgdata",
            target.as_str(),
        ];
        all.extend_from_slice(args);
        let out = self.pgcairn(&all);
        assert_success(&out, &format!("pgcairn {}", all.join(" ")));
        out
    }

    /// Restores with `args`, starts (archiving into this repository when `archive`), and waits
    /// until recovery ended (promoted).
    pub fn restore_and_start_with(&self, name: &str, args: &[&str], archive: bool) -> Instance {
        self.restore(name, args);
        let inst = self.restored_instance(name, archive);
        inst.start().unwrap();
        wait_recovered(&inst, name, Duration::from_secs(180));
        inst
    }
}

/// How many times the restore's first-start block ([`pgcairn_engine::first_start`], which
/// holds `recovery_init_sync_method = syncfs`) appears in `datadir`'s `postgresql.auto.conf`.
pub fn first_start_blocks(datadir: &Path) -> usize {
    let conf = std::fs::read_to_string(datadir.join("postgresql.auto.conf")).unwrap();
    let begins = conf
        .lines()
        .filter(|l| *l == pgcairn_engine::first_start::BEGIN)
        .count();
    let settings = conf
        .lines()
        .filter(|l| l.starts_with("recovery_init_sync_method"))
        .count();
    assert_eq!(begins, settings, "one setting per block: {conf}");
    begins
}

impl TestEnv {
    /// Creates tablespace `extra` of the running `inst` at `<dir>/<dir_name>`, a directory
    /// owned by PostgreSQL's user; returns that directory.
    pub fn create_tablespace(&self, inst: &Instance, dir_name: &str) -> PathBuf {
        let ts = self.path().join(dir_name);
        std::fs::create_dir_all(&ts).unwrap();
        give_to(self.run_as.as_deref(), &ts).unwrap();
        inst.psql(
            "postgres",
            &format!("create tablespace extra location '{}'", ts.display()),
        )
        .unwrap();
        ts
    }

    /// The text `pgcairn info` prints, asserting it succeeded.
    pub fn info_text(&self) -> String {
        let info = self.pgcairn(&["info"]);
        assert_success(&info, "info");
        String::from_utf8_lossy(&info.stdout).to_string()
    }

    /// The (not yet started) instance of the data directory restored into `<dir>/<name>`,
    /// under the server of its own major, archiving into this repository only when `archive`.
    pub fn restored_instance(&self, name: &str, archive: bool) -> Instance {
        let inst = Instance::new(
            pg_binaries_for(&self.path().join(name)),
            self.path().join(name),
            self.path().to_path_buf(),
            free_port().unwrap(),
            self.run_as.clone(),
        );
        if !archive {
            inst.configure(&[("archive_mode", "off".into())]).unwrap();
        }
        inst
    }
}

/// Runs `pgcairn backup` with arguments and returns its JSON summary.
pub fn backup_json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--progress", "never", "backup", "--output", "json"];
    all.extend_from_slice(args);
    let out = env.pgcairn(&all);
    assert_success(&out, &format!("pgcairn backup {}", args.join(" ")));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("backup JSON: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

impl TestEnv {
    /// The S3 endpoint and `bucket/prefix` of the repository.
    fn s3_location(&self) -> (String, &str) {
        let endpoint = self
            .options
            .s3_endpoint
            .clone()
            .or_else(s3_endpoint)
            .expect("S3 endpoint");
        (
            endpoint,
            self.repo_url.strip_prefix("s3://").expect("s3 url"),
        )
    }

    /// Signed request (curl, the fixture's test credentials) to the loopback S3 server for
    /// repository object `key`.
    fn s3_request(&self, method: &str, key: &str, upload: Option<&Path>) -> Output {
        let (endpoint, bucket_prefix) = self.s3_location();
        let mut c = Command::new("curl");
        c.args([
            "-sf",
            "-X",
            method,
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "test:test",
        ]);
        if let Some(file) = upload {
            c.arg("--upload-file").arg(file);
        }
        c.arg(format!("{endpoint}/{bucket_prefix}/{key}"))
            .output()
            .expect("curl")
    }

    /// Reads one repository object by key (`None` when absent), on either backend.
    pub fn read_object(&self, key: &str) -> Option<Vec<u8>> {
        match self.options.backend {
            Backend::File => std::fs::read(self.path().join("repo").join(key)).ok(),
            Backend::S3 => {
                let out = self.s3_request("GET", key, None);
                out.status.success().then_some(out.stdout)
            }
        }
    }

    /// Writes (replaces) one repository object by key, on either backend.
    pub fn write_object(&self, key: &str, body: &[u8]) {
        match self.options.backend {
            Backend::File => {
                let path = self.path().join("repo").join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, body).unwrap();
            }
            Backend::S3 => {
                let tmp = self.path().join("upload.tmp");
                std::fs::write(&tmp, body).unwrap();
                let out = self.s3_request("PUT", key, Some(&tmp));
                assert!(out.status.success(), "PUT {key}: {}", stderr(&out));
            }
        }
    }

    /// Deletes one repository object by key, on either backend.
    pub fn delete_object(&self, key: &str) {
        match self.options.backend {
            Backend::File => std::fs::remove_file(self.path().join("repo").join(key)).unwrap(),
            Backend::S3 => {
                let out = self.s3_request("DELETE", key, None);
                assert!(out.status.success(), "DELETE {key}: {}", stderr(&out));
            }
        }
        assert!(self.read_object(key).is_none(), "{key} still readable");
    }

    /// The key of the sealed data object of archived WAL file `name` of cluster `main`
    /// (found by listing: WAL records are sealed, see `pgcairn_engine::store::sealed`).
    pub fn wal_data_key(&self, name: &str) -> String {
        let prefix = format!("clusters/main/waldata/{}/{name}.", &name[..8]);
        let mut keys = self.list_objects(&prefix);
        assert_eq!(keys.len(), 1, "one data object under {prefix}: {keys:?}");
        keys.pop().unwrap()
    }

    /// Gives the repository a state directory (`repo.state_dir`: where this host records the
    /// catalog generations it has seen, so rollbacks are detected); returns it.
    pub fn use_state_dir(&self) -> PathBuf {
        let state = self.private_dir("state");
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen(
            "[repo]\n",
            &format!("[repo]\nstate_dir = \"{}\"\n", state.display()),
            1,
        );
        self.replace_config(&text);
        state
    }

    /// Every object under `prefix` on the S3 server (all pages, as the server lists them),
    /// with its ETag, last-modified time and size.
    fn list_s3(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let (endpoint, bucket_prefix) = self.s3_location();
        let (bucket, root) = bucket_prefix.split_once('/').expect("bucket/prefix");
        let field = |part: &str, name: &str| {
            part.split(&format!("<{name}>"))
                .nth(1)
                .and_then(|rest| rest.split(&format!("</{name}>")).next())
                .unwrap_or("")
                .to_string()
        };
        let mut token: Option<String> = None;
        loop {
            let mut url =
                format!("{endpoint}/{bucket}?list-type=2&max-keys=1000&prefix={root}/{prefix}");
            if let Some(t) = &token {
                url.push_str("&continuation-token=");
                for b in t.bytes() {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        url.push(b as char);
                    } else {
                        url.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            let listed = Command::new("curl")
                .args([
                    "-sf",
                    "--aws-sigv4",
                    "aws:amz:us-east-1:s3",
                    "--user",
                    "test:test",
                ])
                .arg(url)
                .output()
                .expect("curl");
            assert!(listed.status.success(), "LIST: {}", stderr(&listed));
            let body = String::from_utf8_lossy(&listed.stdout).to_string();
            for part in body.split("<Contents>").skip(1) {
                let key = field(part, "Key");
                let key = key.strip_prefix(&format!("{root}/")).unwrap_or(&key);
                let version = format!(
                    "{} {} {}",
                    field(part, "ETag"),
                    field(part, "LastModified"),
                    field(part, "Size")
                );
                out.push((key.to_string(), version));
            }
            if field(&body, "IsTruncated") != "true" {
                break;
            }
            token = Some(field(&body, "NextContinuationToken"));
        }
        out
    }

    /// Every repository object with a fingerprint of its current version: on S3 the ETag and
    /// last-modified time the server lists (paged), on `file://` the bytes and mtime. Two
    /// equal snapshots mean nothing was created, deleted or rewritten in between.
    pub fn snapshot_objects(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match self.options.backend {
            Backend::File => {
                for key in self.list_objects("") {
                    let path = self.path().join("repo").join(&key);
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    let mtime = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .map(|t| format!("{t:?}"))
                        .unwrap_or_default();
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    std::hash::Hash::hash(&bytes, &mut h);
                    let digest = std::hash::Hasher::finish(&h);
                    out.push((key, format!("{} bytes {digest:016x} {mtime}", bytes.len())));
                }
            }
            Backend::S3 => out = self.list_s3(""),
        }
        out.sort();
        out
    }

    /// Keys of the repository objects whose key starts with `prefix`, on either backend.
    pub fn list_objects(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        match self.options.backend {
            Backend::File => {
                let root = self.path().join("repo");
                let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
                let mut stack = vec![root.join(dir)];
                while let Some(d) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&d) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                            continue;
                        }
                        let key = p.strip_prefix(&root).unwrap().to_string_lossy().to_string();
                        // `name#n`: object_store's staging files (garbage after a kill).
                        if key.starts_with(prefix) && !key.contains('#') {
                            out.push(key);
                        }
                    }
                }
            }
            Backend::S3 => out = self.list_s3(prefix).into_iter().map(|(k, _)| k).collect(),
        }
        out.sort();
        out
    }
}

/// Primary and streaming standbys on loopback: clones made with `pg_basebackup -R` over the
/// primary's Unix socket (initdb's `pg_hba.conf` trusts local replication), every member
/// archiving into the same repository and cluster as the HA guide in the README sets them up.
impl TestEnv {
    /// A streaming standby of the running `upstream` in `<dir>/<name>`: `archive_command` into
    /// this repository with `archive_mode` (`on`: archives once promoted; `always`: archives
    /// what it receives too), `restore_command` from it. Started; returned once it streams.
    pub fn standby_of(&self, upstream: &Instance, name: &str, archive_mode: &str) -> Instance {
        let datadir = self.path().join(name);
        if upstream.bin.has("pg_basebackup") {
            let mut c = pgcairn_engine::pg::instance::command_as(
                upstream.run_as.as_deref(),
                &upstream.bin.program("pg_basebackup"),
            );
            c.arg("-D")
                .arg(&datadir)
                .arg("-h")
                .arg(&upstream.socket_dir)
                .args([
                    "-p",
                    &upstream.port.to_string(),
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    "-R",
                    "-c",
                    "fast",
                ]);
            let out = c.output().expect("pg_basebackup");
            assert_success(&out, "pg_basebackup -R");
        } else {
            // The npm builds of some majors have no pg_basebackup (and another major's refuses
            // the server): a cold copy of the briefly stopped upstream is a standby too.
            upstream.stop().unwrap();
            let cp = Command::new("cp")
                .arg("-a")
                .arg(&upstream.datadir)
                .arg(&datadir)
                .status()
                .expect("cp");
            assert!(cp.success(), "cp -a {}", upstream.datadir.display());
            upstream.start().unwrap();
            std::fs::write(datadir.join("standby.signal"), b"").unwrap();
            give_to(self.run_as.as_deref(), &datadir).unwrap();
        }
        let inst = Instance::new(
            upstream.bin.clone(),
            datadir,
            self.path().to_path_buf(),
            free_port().unwrap(),
            self.run_as.clone(),
        );
        // The clone's log is the upstream's: start this one's afresh.
        let _ = std::fs::remove_file(inst.datadir.join("pgcairn-server.log"));
        // Replace the primary_conninfo pg_basebackup -R wrote: a newer pg_basebackup (a major
        // without its own uses the newest installed) writes libpq options an older server's
        // libpq refuses (sslsni on 13).
        let auto = inst.datadir.join("postgresql.auto.conf");
        let mut conf: String = std::fs::read_to_string(&auto)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        conf.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres application_name={name}'\n",
            upstream.socket_dir.display(),
            upstream.port
        ));
        std::fs::write(&auto, conf).unwrap();
        inst.configure(&[
            ("archive_mode", archive_mode.into()),
            ("archive_command", self.archive_command()),
            ("restore_command", self.restore_command()),
            ("hot_standby", "on".into()),
        ])
        .expect("configure standby");
        inst.start().expect("start standby");
        wait_streaming(&inst, Duration::from_secs(60));
        inst
    }

    /// Gives `inst` (not started) a self-signed certificate for 127.0.0.1 (`server.crt` and
    /// `server.key` in its data directory, the key private to the server's user) and
    /// `ssl = on`.
    pub fn with_server_certificate(&self, inst: &Instance) {
        let d = &inst.datadir;
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(d.join("server.key"))
            .arg("-out")
            .arg(d.join("server.crt"))
            .output()
            .expect("openssl");
        assert_success(&out, "openssl req -x509");
        give_to(self.run_as.as_deref(), d).unwrap();
        std::fs::set_permissions(
            d.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        inst.configure(&[("ssl", "on".into())]).unwrap();
    }

    /// Appends `text` (TOML sections) to the config file.
    pub fn append_config(&self, text: &str) {
        let mut all = std::fs::read_to_string(&self.config).unwrap();
        all.push('\n');
        all.push_str(text);
        self.replace_config(&all);
    }

    /// True when WAL file `name` (segment, `.partial` or history file) can be fetched from the
    /// repository with `archive-get`; its bytes then land in `<dir>/fetched-<name>`.
    pub fn archived(&self, name: &str) -> bool {
        let dest = self.path().join(format!("fetched-{name}"));
        let out = self.pgcairn(&["archive-get", name, &dest.display().to_string()]);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("archive-get {name}: {}", stderr(&out)),
        }
    }

    /// Waits until [`TestEnv::archived`] says `name` is in the repository.
    pub fn wait_in_repository(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.archived(name) {
            assert!(
                Instant::now() < deadline,
                "{name} not in the repository after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until the standby's WAL receiver streams.
pub fn wait_streaming(inst: &Instance, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let status = inst
            .psql(
                "postgres",
                "select coalesce((select status from pg_stat_wal_receiver), 'none')",
            )
            .unwrap_or_default();
        if status == "streaming" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not stream after {timeout:?} (receiver: {status}); server log:\n{}",
            inst.datadir.display(),
            std::fs::read_to_string(inst.datadir.join("pgcairn-server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The primary's current WAL position (`pg_current_wal_lsn()`).
pub fn current_lsn(primary: &Instance) -> String {
    primary
        .psql("postgres", "select pg_current_wal_lsn()")
        .unwrap()
}

/// Waits until `standby` has replayed up to `lsn`.
pub fn wait_replayed(standby: &Instance, lsn: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = standby
            .psql(
                "postgres",
                &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            )
            .unwrap();
        if done == "t" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "standby {} did not replay up to {lsn} in {timeout:?}",
            standby.datadir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
