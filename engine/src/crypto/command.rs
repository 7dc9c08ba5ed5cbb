//! External key managers through commands: `wrap_command` and `unwrap_command`.
//!
//! Envelope encryption with the key manager's key never leaving it: a command key slot holds
//! a random 32-byte slot secret, wrapped by the operator's `wrap_command` (the secret on
//! stdin, the wrapped blob on stdout) and opened by `unwrap_command` (blob on stdin, secret
//! on stdout). That covers Vault transit, `aws kms encrypt/decrypt`, `gcloud kms`,
//! `az keyvault`, SOPS and `age`.
//!
//! Why it is shaped like this:
//! - The secret travels as one text line, `pgcairn-slot-v1:<base64>`, so commands that add or
//!   expect a trailing newline, or tools that only carry text (Vault transit), work unchanged;
//!   surrounding whitespace of the unwrapped output is ignored.
//! - Commands run through `sh -c` in their own process group with a deadline: a command that
//!   hangs (a KMS endpoint that does not answer, a prompt waiting for a terminal) is killed,
//!   whole group included, and the caller gets an error naming the command and what it wrote
//!   to stderr. Nothing ever waits forever, and nothing about the secret is written to disk.
//! - Only commands the operator configured on this host run (`repo.unwrap_command`,
//!   `repo.wrap_command` or a flag). A command stored in the repository config is never run
//!   on its own authority: it is compared with the configured one, so whoever can write to
//!   the storage cannot make pgcairn execute something.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Default deadline of one wrap or unwrap command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes read from a command's stdout or stderr (wrapped blobs are small).
const MAX_OUTPUT: usize = 1 << 20;

const PREFIX: &str = "pgcairn-slot-v1:";

/// A configured wrap or unwrap command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCommand {
    /// The shell command line (`sh -c`).
    pub command: String,
    /// Deadline; the command's process group is killed when it passes.
    pub timeout: Duration,
    /// Where the command runs (`None`: the current directory). A background pusher or
    /// prefetcher runs from `/` but runs its commands where it was started, so that a command
    /// naming a relative path (`age -d -i keys/id.txt`) works there as in the foreground.
    pub working_dir: Option<std::path::PathBuf>,
}

impl KeyCommand {
    /// A command with the default deadline.
    pub fn new(command: impl Into<String>) -> Self {
        KeyCommand {
            command: command.into(),
            timeout: DEFAULT_TIMEOUT,
            working_dir: None,
        }
    }

    /// Wraps a slot secret: returns the command's stdout (the wrapped blob).
    pub fn wrap(&self, secret: &[u8; 32]) -> Result<Vec<u8>> {
        let mut line = format!(
            "{PREFIX}{}\n",
            base64::engine::general_purpose::STANDARD.encode(secret)
        );
        let out = self.run(line.as_bytes(), "wrap_command");
        line.zeroize();
        let out = out?;
        if out.is_empty() {
            return Err(Error::Key(format!(
                "wrap_command `{}` printed nothing: it must print the wrapped secret on stdout",
                self.command
            )));
        }
        Ok(out)
    }

    /// Unwraps a blob: the slot secret.
    pub fn unwrap(&self, blob: &[u8]) -> Result<[u8; 32]> {
        self.unwrap_ran(blob)?
    }

    /// Runs the unwrap command on `blob`: `Err` when it could not run or failed (exit
    /// status, timeout: perhaps it only works on another host), `Ok(Err)` when it ran and
    /// printed no slot secret of the right shape.
    pub fn unwrap_ran(&self, blob: &[u8]) -> Result<Result<[u8; 32]>> {
        let out = self.run(blob, "unwrap_command")?;
        Ok(self.parse_secret(out))
    }

    fn parse_secret(&self, mut out: Vec<u8>) -> Result<[u8; 32]> {
        let parsed = std::str::from_utf8(&out)
            .ok()
            .and_then(|t| t.trim().strip_prefix(PREFIX))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
        out.zeroize();
        let Some(mut raw) = parsed else {
            return Err(Error::Key(format!(
                "unwrap_command `{}` did not print a pgcairn slot secret (a line starting with {PREFIX}): \
                 check it is the inverse of the slot's wrap_command",
                self.command
            )));
        };
        let key: Option<[u8; 32]> = raw.as_slice().try_into().ok();
        raw.zeroize();
        key.ok_or_else(|| {
            Error::Key(format!(
                "unwrap_command `{}` printed a slot secret of the wrong length",
                self.command
            ))
        })
    }

    /// Runs the command with `input` on stdin; its stdout on success.
    fn run(&self, input: &[u8], role: &str) -> Result<Vec<u8>> {
        let started = Instant::now();
        let mut command = Command::new("sh");
        if let Some(dir) = &self.working_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Key(format!("cannot start {role} `{}`: {e}", self.command)))?;
        let pgid = child.id() as i32;
        let mut stdin = child.stdin.take();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let mut input = input;
            if let Some(s) = stdin.as_mut() {
                // A command that exits without reading all its input is not an error here:
                // its exit status says whether it worked.
                let _ = s.write_all(&input);
            }
            input.zeroize();
            drop(stdin);
        });
        let reader = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(r) = r {
                    let _ = r.take(MAX_OUTPUT as u64).read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
        let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if started.elapsed() >= self.timeout => {
                    kill_group(pgid);
                    let _ = child.wait();
                    break Err(());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    kill_group(pgid);
                    let _ = child.wait();
                    return Err(Error::Key(format!(
                        "waiting for {role} `{}`: {e}",
                        self.command
                    )));
                }
            }
        };
        // The group is killed in any case: a backgrounded grandchild holding the pipes open
        // must not keep the readers (and so this call) waiting.
        kill_group(pgid);
        let _ = writer.join();
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        let stderr = if stderr.is_empty() {
            "(nothing on stderr)".to_string()
        } else {
            format!("stderr: {stderr}")
        };
        match status {
            Err(()) => Err(Error::Key(format!(
                "{role} `{}` did not finish within {} s and was killed ({stderr}); check the key manager is reachable, or raise repo.command_timeout",
                self.command,
                self.timeout.as_secs_f64()
            ))),
            Ok(s) if !s.success() => {
                let mut stdout = stdout;
                stdout.zeroize();
                Err(Error::Key(format!(
                    "{role} `{}` failed ({s}; {stderr})",
                    self.command
                )))
            }
            Ok(_) => Ok(stdout),
        }
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        // Already gone is fine: the group only needs to be dead.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_commands() {
        // An identity "key manager": base64 twice.
        let wrap = KeyCommand::new("base64 -w0");
        let unwrap = KeyCommand::new("base64 -d");
        let secret = [42u8; 32];
        let blob = wrap.wrap(&secret).unwrap();
        assert_ne!(blob.as_slice(), secret.as_slice());
        assert_eq!(unwrap.unwrap(&blob).unwrap(), secret);
    }

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let c = KeyCommand::new("echo 'permission denied by kms' >&2; exit 3");
        let e = c.unwrap(b"x").unwrap_err().to_string();
        assert!(e.contains("unwrap_command"), "{e}");
        assert!(e.contains("permission denied by kms"), "{e}");
        assert!(matches!(c.unwrap(b"x"), Err(Error::Key(_))));
    }

    #[test]
    fn a_hanging_command_is_killed_at_its_deadline() {
        let c = KeyCommand {
            command: "sleep 30 & sleep 30".into(),
            timeout: Duration::from_millis(300),
            working_dir: None,
        };
        let t = Instant::now();
        let e = c.unwrap(b"x").unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(e.contains("did not finish"), "{e}");
    }

    #[test]
    fn a_command_runs_in_its_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let secret = [7u8; 32];
        let blob = KeyCommand::new("base64 -w0").wrap(&secret).unwrap();
        std::fs::write(dir.path().join("blob-decoder"), "base64 -d\n").unwrap();
        let c = KeyCommand {
            working_dir: Some(dir.path().to_path_buf()),
            ..KeyCommand::new("sh ./blob-decoder")
        };
        assert_eq!(
            c.unwrap(&blob).unwrap(),
            secret,
            "the relative path resolves there"
        );
        let elsewhere = KeyCommand::new("sh ./blob-decoder");
        assert!(
            elsewhere.unwrap(&blob).is_err(),
            "and not in the current directory"
        );
    }

    #[test]
    fn garbage_output_is_refused() {
        let c = KeyCommand::new("echo hello");
        let e = c.unwrap(b"").unwrap_err().to_string();
        assert!(e.contains("did not print a pgcairn slot secret"), "{e}");
    }
}
