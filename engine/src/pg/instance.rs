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

/// Where PostgreSQL's server programs are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: `$PG_BINDIR`, `pg_config --bindir`, then the PostgreSQL 15 path
    /// of Debian's packages.
    pub fn find() -> Result<Self> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Ok(d) = std::env::var("PG_BINDIR") {
            candidates.push(d.into());
        }
        candidates.push("/usr/lib/postgresql/15/bin".into());
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            if out.status.success() {
                candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
            }
        }
        candidates
            .into_iter()
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
            .map(|bindir| PgBinaries { bindir })
            .ok_or_else(|| {
                Error::Config(
                    "PostgreSQL server binaries not found (initdb, pg_ctl): install postgresql-15 \
                     (scripts/install-deps.sh) or set PG_BINDIR"
                        .into(),
                )
            })
    }

    /// Path of one program.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
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
/// only on its socket directory).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
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
        }
    }

    fn cmd(&self, program: &str) -> Command {
        command_as(self.run_as.as_deref(), &self.bin.program(program))
    }

    /// `initdb` with data checksums.
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
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
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

    /// Runs SQL through psql and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut c = self.cmd("psql");
        c.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]);
        let out = run_checked(c, &format!("psql {sql:?}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs pgbench with arguments.
    pub fn pgbench(&self, args: &[&str]) -> Result<()> {
        let mut c = self.cmd("pgbench");
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
