//! Settings for the first start of a restored cluster only: written by `restore`, removed by
//! the first `archive-get` PostgreSQL runs for that cluster.
//!
//! A restored `pg_control` says the cluster was in production, so PostgreSQL's first start
//! treats it like a crash and syncs the whole data directory before it reads any WAL
//! (`SyncDataDirectory`, by default an `fsync` of every file: seconds at a few GiB). The
//! restore has just made every file and directory durable, so that sync only costs time.
//! `recovery_init_sync_method = syncfs` (PostgreSQL 14+) makes it one `syncfs`; but left in
//! the configuration it would govern every later crash recovery too, where `syncfs` also
//! flushes other users of the file system and, before Linux 5.8, does not report write
//! errors ([`crate::replay_speed`] explains why `restore` otherwise writes only settings
//! PostgreSQL reads in recovery alone).
//!
//! So the setting lives in a marked block of its own (inside the pgcairn block of
//! `postgresql.auto.conf`), and the first `archive-get` removes it. Why there and not in a
//! `recovery_end_command`:
//! - PostgreSQL syncs the data directory before it reads the checkpoint record, and the
//!   first `restore_command` call (the timeline history or the checkpoint's segment) comes
//!   after that, in every major from 13 to 18: the setting has done its work by then.
//! - At that moment no session can be connected (hot standby admits sessions only once
//!   recovery is consistent, which needs WAL from the archive), so no `ALTER SYSTEM` can be
//!   rewriting `postgresql.auto.conf` at the same time. A `recovery_end_command` runs at
//!   the end, when sessions may be connected.
//! - No operator setting is replaced: `restore_command` is pgcairn's anyway, while a
//!   `recovery_end_command` of pgcairn's would have to be composed with one the operator set,
//!   possibly in a file outside the data directory that `restore` cannot see.
//! - A standby (`--type standby`) never ends recovery but calls `restore_command` at its
//!   first start like any restore: it gets the fast first start, and nothing afterwards.
//!
//! After removing the block, `archive-get` asks the postmaster that runs it to reload its
//! configuration (SIGHUP, as `pg_ctl reload` does), so the running server, too, syncs with
//! the configured method when it restarts after a backend crash. It signals only a
//! postmaster named by `postmaster.pid` in its working directory (PostgreSQL runs
//! `restore_command` in the data directory) that is also one of its own ancestors.
//!
//! What happens when:
//! - PostgreSQL 13 (no such setting): no block is written.
//! - The operator set `recovery_init_sync_method` themselves (any file): their line is never
//!   edited; the block, last in `postgresql.auto.conf`, overrides it for the first start
//!   only, when the data were just synced by the restore, so neither value can lose data.
//! - A crash before the first `archive-get`: the block is still there and the next start
//!   uses `syncfs` again, which is still right (nothing was written since the restore's
//!   sync but what that start's own sync covers).
//! - A second restore into the directory rewrites the whole pgcairn block; a second
//!   removal finds nothing and changes nothing.
//! - The file keeps its owner (the server's user runs `archive-get`) and its mode; it is
//!   replaced whole (temporary file, fsync, rename, fsync of the directory).

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::private_fs::{replace_with, Durability};

/// First line of the block.
pub const BEGIN: &str = "# pgcairn first-start settings (begin): removed by the first archive-get";
/// Last line of the block.
pub const END: &str = "# pgcairn first-start settings (end)";

/// The configuration file that holds the block, relative to the data directory.
pub const AUTO_CONF: &str = "postgresql.auto.conf";

/// The first-start settings for a server of `pg_version_num` (e.g. 150004).
pub fn settings(pg_version_num: u32) -> Vec<(&'static str, String)> {
    if pg_version_num < 140000 {
        return Vec::new();
    }
    vec![("recovery_init_sync_method", "syncfs".to_string())]
}

/// The block for a server of `pg_version_num`, or `""` when it has no such settings.
pub fn block(pg_version_num: u32) -> String {
    let s = settings(pg_version_num);
    if s.is_empty() {
        return String::new();
    }
    let mut out = format!("{BEGIN}\n");
    for (k, v) in s {
        out.push_str(&crate::pg::guc::line(k, &v));
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Removes the block from `<datadir>/postgresql.auto.conf`; `Ok(true)` when it was there.
/// Anything but a regular file there (absent, a link) is left alone.
pub fn remove(datadir: &Path) -> io::Result<bool> {
    let path = datadir.join(AUTO_CONF);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => m,
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let conf = std::fs::read(&path)?;
    let (kept, removed) = crate::pg::auto_conf::without_blocks(&conf, BEGIN, END);
    if removed == 0 {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o777;
    replace_with(&path, mode, Durability::Durable, |mut f| {
        io::Write::write_all(&mut f, &kept)
    })?;
    // A file written by root for another user keeps that user (a no-op for the owner).
    let _ = std::os::unix::fs::lchown(&path, Some(meta.uid()), Some(meta.gid()));
    Ok(true)
}

/// The postmaster of `datadir` (first line of its `postmaster.pid`) when it is an ancestor of
/// this process: the server whose `restore_command` is running.
pub fn parent_postmaster(datadir: &Path) -> Option<u32> {
    let pid_file = std::fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    let mut pid = std::process::id();
    for _ in 0..16 {
        pid = parent_of(pid)?;
        if pid == postmaster {
            return Some(pid);
        }
        if pid <= 1 {
            return None;
        }
    }
    None
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Asks postmaster `pid` to reload its configuration (what `pg_ctl reload` sends).
pub fn reload(pid: u32) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_with_recovery_init_sync_method_get_a_block() {
        assert_eq!(block(130012), "");
        let b = block(140000);
        assert_eq!(
            b,
            format!("{BEGIN}\nrecovery_init_sync_method = 'syncfs'\n{END}\n")
        );
        assert_eq!(block(180001), b);
    }

    #[test]
    fn removal_takes_the_block_and_nothing_else_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUTO_CONF);
        // A LATIN1 value (ALTER SYSTEM in the server's encoding) around the blocks.
        let mut conf = b"application_name = 'caf\xe9'\n".to_vec();
        conf.extend_from_slice(
            format!(
                "# pgcairn recovery settings (begin)\nrestore_command = 'x'\n{}# pgcairn recovery settings (end)\n",
                block(150000)
            )
            .as_bytes(),
        );
        std::fs::write(&path, &conf).unwrap();
        assert!(remove(dir.path()).unwrap());
        let mut expected = b"application_name = 'caf\xe9'\n".to_vec();
        expected.extend_from_slice(
            b"# pgcairn recovery settings (begin)\nrestore_command = 'x'\n# pgcairn recovery settings (end)\n",
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            expected,
            "every other byte kept"
        );
        assert!(!remove(dir.path()).unwrap());
        // A block whose end marker was edited away is not guessed at.
        let cut = format!("{BEGIN}\nrecovery_init_sync_method = 'syncfs'\n");
        std::fs::write(&path, &cut).unwrap();
        assert!(!remove(dir.path()).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), cut);
    }

    #[test]
    fn the_file_keeps_its_mode_and_a_second_removal_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUTO_CONF);
        std::fs::write(&path, format!("a = '1'\n{}b = '2'\n", block(160000))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(remove(dir.path()).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a = '1'\nb = '2'\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(!remove(dir.path()).unwrap());
        assert!(!remove(&dir.path().join("absent")).unwrap());
    }

    #[test]
    fn only_an_ancestor_postmaster_is_signalled() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(parent_postmaster(dir.path()), None, "no postmaster.pid");
        let parent = parent_of(std::process::id()).unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{parent}\n/data\n"),
        )
        .unwrap();
        assert_eq!(parent_postmaster(dir.path()), Some(parent));
        // A process that is not an ancestor (this one's own pid is not its ancestor).
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(parent_postmaster(dir.path()), None);
    }
}
