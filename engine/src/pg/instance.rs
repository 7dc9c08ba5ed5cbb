//! Throwaway PostgreSQL instances: `demo`, restore drills and the end-to-end tests start
//! real clusters through this module.
//!
//! An instance listens only on a private Unix socket directory (`listen_addresses = ''`) and a
//! free port, so it can never be reached from the network or collide with a production
//! server. PostgreSQL refuses to run as root: when we are root, every PostgreSQL program runs
//! as the data directory's owner through `runuser` (the `postgres` OS user by default).
//!
//! These calls block (they run PostgreSQL programs); async callers wrap them in
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Where PostgreSQL's programs are: the server programs (`initdb`, `pg_ctl`, `postgres`,
/// `pg_checksums`) of one major version, and client programs (`psql`, `pgbench`).
///
/// A data directory runs only under the server of its own major version, so anything that
/// starts PostgreSQL on existing data (a drill) asks for that major ([`PgBinaries::for_major`]).
/// Client programs speak the same protocol to every major: when the server's directory has
/// none (the npm builds of 13, 14, 16, 17 and 18 that `scripts/install-postgres-majors.sh`
/// installs carry only server programs), they come from another installed major, newest
/// first, else from `PATH`.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
    major: u32,
}

/// Debian's layout: `/usr/lib/postgresql/<major>/bin`.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";

/// Debian's default major (Debian 12's packages), the fallback of [`PgBinaries::find`].
const DEFAULT_MAJOR: u32 = 15;

/// The major version of the `postgres` binary in `bindir` (`postgres --version` says
/// `postgres (PostgreSQL) 17.10`); `None` when there is none or it does not run.
pub fn server_major(bindir: &Path) -> Option<u32> {
    if !bindir.join("initdb").is_file() || !bindir.join("pg_ctl").is_file() {
        return None;
    }
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    parse_server_major(&String::from_utf8_lossy(&out.stdout))
}

/// The major in `postgres --version` output: `postgres (PostgreSQL) 17.10`, `... 18beta1`,
/// `... 15.18 (Debian 15.18-0+deb12u1)`.
fn parse_server_major(text: &str) -> Option<u32> {
    let version = text
        .split("(PostgreSQL)")
        .nth(1)?
        .split_whitespace()
        .next()?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `pg_config --bindir`, when `pg_config` is on `PATH`.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().into())
}

impl PgBinaries {
    /// Finds server binaries of any major: `$PG_BINDIR`, Debian's PostgreSQL 15, then
    /// `pg_config --bindir` (for `demo` and tests, which create new clusters).
    pub fn find() -> Result<Self> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(d) = std::env::var("PG_BINDIR") {
            candidates.push(d.into());
        }
        candidates.push(Path::new(DEBIAN_PREFIX).join(format!("{DEFAULT_MAJOR}/bin")));
        candidates.extend(pg_config_bindir());
        candidates
            .into_iter()
            .find_map(|bindir| server_major(&bindir).map(|major| PgBinaries { bindir, major }))
            .ok_or_else(|| {
                Error::Config(
                    "PostgreSQL server binaries not found (initdb, pg_ctl, postgres): install \
                     postgresql-15 (scripts/install-deps.sh) or set PG_BINDIR"
                        .into(),
                )
            })
    }

    /// Finds the server binaries of PostgreSQL `major`, in this order: Debian's layout
    /// `/usr/lib/postgresql/<major>/bin`; `setting` (the `[drill] pg_bindir` setting, where
    /// `{major}` stands for the major version); `pg_config --bindir` when it is of that major.
    /// Every candidate must hold `initdb`, `pg_ctl` and a `postgres` reporting that major;
    /// the error names each place looked at and what was found there.
    pub fn for_major(major: u32, setting: Option<&str>) -> Result<Self> {
        let mut looked = Vec::new();
        let mut candidates: Vec<(String, PathBuf)> = vec![(
            "Debian's layout".into(),
            Path::new(DEBIAN_PREFIX).join(format!("{major}/bin")),
        )];
        match setting {
            Some(s) => candidates.push((
                format!("[drill] pg_bindir {s:?}"),
                s.replace("{major}", &major.to_string()).into(),
            )),
            None => looked.push("[drill] pg_bindir (not set)".to_string()),
        }
        match pg_config_bindir() {
            Some(d) => candidates.push(("pg_config --bindir".into(), d)),
            None => looked.push("pg_config --bindir (no pg_config on PATH)".to_string()),
        }
        for (what, bindir) in candidates {
            match server_major(&bindir) {
                Some(m) if m == major => return Ok(PgBinaries { bindir, major }),
                Some(m) => looked.push(format!("{what}: {} is PostgreSQL {m}", bindir.display())),
                None => looked.push(format!(
                    "{what}: no initdb, pg_ctl and postgres in {}",
                    bindir.display()
                )),
            }
        }
        Err(Error::Config(format!(
            "PostgreSQL {major} server binaries not found (this data directory is PostgreSQL \
             {major} and runs only under PostgreSQL {major}); looked at: {}. Install PostgreSQL \
             {major}'s server (scripts/install-postgres-majors.sh, or the postgresql-{major} \
             package) or set [drill] pg_bindir (PGCAIRN_DRILL_PG_BINDIR) to its bin directory; \
             \"{{major}}\" in it stands for the major version",
            looked.join("; ")
        )))
    }

    /// The major version of these binaries.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The directory of the server programs.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Path of one server program of this major (it may not exist: see [`PgBinaries::has`]).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    /// Whether this major's directory has program `name`.
    pub fn has(&self, name: &str) -> bool {
        self.bindir.join(name).is_file()
    }

    /// Path of a client program (`psql`, `pgbench`): this major's if it has one, else the
    /// newest installed major's in Debian's layout, else the bare name (looked up in `PATH`).
    pub fn client(&self, name: &str) -> PathBuf {
        if self.has(name) {
            return self.program(name);
        }
        let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PREFIX)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                let p = e.path().join("bin").join(name);
                p.is_file().then_some((major, p))
            })
            .collect();
        majors.sort();
        majors
            .pop()
            .map(|(_, p)| p)
            .unwrap_or_else(|| PathBuf::from(name))
    }
}

/// The major version of a data directory (its `PG_VERSION` file).
/// Largest `PG_VERSION` read (it holds a major version and a newline).
const PG_VERSION_MAX: u64 = 64;

pub fn data_directory_major(datadir: &Path) -> Result<u32> {
    let path = datadir.join("PG_VERSION");
    // The server's OS user owns the file: a link or a FIFO there is read as nothing.
    let text = crate::untrusted_file::read_capped(&path, PG_VERSION_MAX)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    text.trim().parse().map_err(|_| {
        Error::InvalidInput(format!(
            "{} says {:?}, not a PostgreSQL major version",
            path.display(),
            text.trim()
        ))
    })
}

/// The effective user id of this process (read from `/proc/self`, no `unsafe`).
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Who PostgreSQL programs run as: `Some(user)` when we are root.
pub fn postgres_user_if_root(user: &str) -> Option<String> {
    (current_uid() == 0).then(|| user.to_string())
}

/// Builds a command that runs `program` as `run_as` (through runuser) or as ourselves.
pub fn command_as(run_as: Option<&str>, program: &Path) -> Command {
    match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a command and returns its output, or an error with its stderr.
pub fn run_checked(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if !out.status.success() {
        return Err(Error::InvalidInput(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(out)
}

/// Gives a directory tree to `user` (`chown -R`), when we are root.
pub fn give_to(user: Option<&str>, path: &Path) -> Result<()> {
    if let Some(u) = user {
        let mut c = Command::new("chown");
        c.arg("-R").arg(format!("{u}:")).arg(path);
        run_checked(c, &format!("chown -R {u} {}", path.display()))?;
    }
    Ok(())
}

/// Quotes `s` as one word for `/bin/sh` (single quotes; a quote inside becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A free TCP port number on loopback (used as the instance's port number; it listens
/// only on its socket directory), never one this process handed out before: an instance
/// listens on no TCP port, so the probe alone could hand out the number of a running
/// instance again, and a second instance sharing its socket directory then fails on the
/// first one's lock file (seen in the tests, whose instances share one directory).
pub fn free_port() -> Result<u16> {
    static HANDED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("finding a free port", e))?;
        let port = l
            .local_addr()
            .map_err(|e| Error::io("finding a free port", e))?
            .port();
        if HANDED.lock().expect("ports lock").insert(port) {
            return Ok(port);
        }
    }
    Err(Error::InvalidInput(
        "no port number left that this process has not handed out".into(),
    ))
}

/// One PostgreSQL instance on a private socket.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Binaries.
    pub bin: PgBinaries,
    /// Data directory.
    pub datadir: PathBuf,
    /// Socket directory.
    pub socket_dir: PathBuf,
    /// Port number.
    pub port: u16,
    /// OS user PostgreSQL runs as (when we are root).
    pub run_as: Option<String>,
    /// Server options (`-c name=value ...`) for every session [`Instance::psql`] opens: they
    /// outrank settings of the role and the database.
    pub session_options: String,
}

impl Instance {
    /// Describes an instance over an existing or future data directory.
    pub fn new(
        bin: PgBinaries,
        datadir: PathBuf,
        socket_dir: PathBuf,
        port: u16,
        run_as: Option<String>,
    ) -> Self {
        Instance {
            bin,
            datadir,
            socket_dir,
            port,
            run_as,
            session_options: String::new(),
        }
    }

    fn cmd(&self, program: &str) -> Command {
        command_as(self.run_as.as_deref(), &self.bin.program(program))
    }

    /// `initdb` with data checksums (explicit: 18 turns them on by default, 13 to 17 off).
    ///
    /// Only throwaway clusters are made here (the demo's, the tests'), so `--no-sync`: the
    /// final flush of a fresh cluster took over a second each, and nothing made here has to
    /// outlive a crash of the host.
    pub fn initdb(&self) -> Result<()> {
        let mut c = self.cmd("initdb");
        c.arg("-D").arg(&self.datadir).args([
            "--data-checksums",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ]);
        run_checked(c, "initdb").map(|_| ())
    }

    /// Appends settings to `postgresql.conf` (later lines win).
    pub fn configure(&self, settings: &[(&str, String)]) -> Result<()> {
        use std::io::Write;
        let path = self.datadir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut text = String::from("\n# added by pgcairn\n");
        for (k, v) in settings {
            text.push_str(&crate::pg::guc::line(k, v));
        }
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`).
    pub fn start(&self) -> Result<()> {
        self.start_with("")
    }

    /// Like [`Instance::start`] with extra server options (later `-c` settings win), for
    /// example `-c listen_addresses=127.0.0.1` in tests that need TCP. `pg_ctl` passes them
    /// through `/bin/sh`: quote values with [`sh_quote`]. Settings given here outrank every
    /// configuration file, `postgresql.auto.conf` included.
    pub fn start_with(&self, extra: &str) -> Result<()> {
        let log = self.datadir.join("pgcairn-server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses='' {extra}",
            self.port,
            sh_quote(&self.socket_dir.display().to_string())
        );
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "120", "-o", &opts, "start"]);
        run_checked(c, "pg_ctl start").map(|_| ()).map_err(|e| {
            let tail = crate::untrusted_file::read_tail(&log, 1 << 20);
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Error::InvalidInput(format!("{e}\nserver log {}:\n{tail}", log.display()))
        })
    }

    /// Stops the server (`fast` mode); a stopped server is not an error.
    pub fn stop(&self) -> Result<()> {
        if !self.datadir.join("postmaster.pid").exists() {
            return Ok(());
        }
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.datadir)
            .args(["-w", "-t", "120", "-m", "fast", "stop"]);
        run_checked(c, "pg_ctl stop").map(|_| ())
    }

    /// Stops with `immediate` mode (crash), for tests.
    pub fn crash(&self) -> Result<()> {
        let mut c = self.cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.datadir)
            .args(["-w", "-m", "immediate", "stop"]);
        run_checked(c, "pg_ctl stop -m immediate").map(|_| ())
    }

    /// Runs SQL through psql and returns its unaligned, tuples-only output. `db` is a database
    /// name, whatever it holds: the connection is one quoted connection string, so a name that
    /// looks like one (a database of a restored cluster named `host=... dbname=...`) cannot
    /// send psql to another server.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_with_options(db, "", sql)
    }

    /// [`Instance::psql`] with server `options` for the session (`-c name=value ...`).
    pub fn psql_with_options(&self, db: &str, options: &str, sql: &str) -> Result<String> {
        let socket = self.socket_dir.display().to_string();
        let port = self.port.to_string();
        let options = format!("{} {options}", self.session_options);
        let options = options.trim();
        let mut pairs = vec![
            ("host", socket.as_str()),
            ("port", port.as_str()),
            ("user", "postgres"),
            ("dbname", db),
        ];
        if !options.is_empty() {
            pairs.push(("options", options));
        }
        let conninfo = crate::pg::conninfo::keyword_values(&pairs);
        let mut c = command_as(self.run_as.as_deref(), &self.bin.client("psql"));
        c.args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            sql,
        ]);
        let out = run_checked(c, &format!("psql {sql:?}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs pgbench with arguments.
    pub fn pgbench(&self, args: &[&str]) -> Result<()> {
        let mut c = command_as(self.run_as.as_deref(), &self.bin.client("pgbench"));
        c.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres");
        run_checked(c, &format!("pgbench {}", args.join(" "))).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1500 probes of a 28 000-port range repeat some number dozens of times; no number is
    /// handed out twice.
    #[test]
    fn no_port_number_is_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1500 {
            let port = free_port().unwrap();
            assert!(seen.insert(port), "{port} handed out twice");
        }
    }

    #[test]
    fn server_major_from_version_output() {
        assert_eq!(
            parse_server_major("postgres (PostgreSQL) 17.10\n"),
            Some(17)
        );
        assert_eq!(
            parse_server_major("postgres (PostgreSQL) 18beta1"),
            Some(18)
        );
        assert_eq!(
            parse_server_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_server_major("something else 15.1"), None);
    }

    #[test]
    fn a_missing_major_names_where_it_looked() {
        let e = PgBinaries::for_major(9, Some("/nonexistent/pg{major}/bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL 9 server binaries not found"), "{e}");
        assert!(e.contains("/usr/lib/postgresql/9/bin"), "{e}");
        assert!(e.contains("/nonexistent/pg9/bin"), "{e}");
        assert!(e.contains("[drill] pg_bindir"), "{e}");
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        let tricky = "/tmp/a dir/it's $(here)";
        let out = Command::new("sh")
            .args(["-c", &format!("printf %s {}", sh_quote(tricky))])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), tricky);
    }
}
