//! What a backup run by another user than the data directory's owner (root, from cron) takes:
//! only files that owner could read itself.
//!
//! A backup follows symbolic links in the data directory, as pgBackRest does (a
//! `postgresql.conf` or `server.key` linked from `/etc` is common), and reads as whoever runs
//! it. PostgreSQL's OS user owns the data directory and can plant a link there to
//! `/etc/shadow`: a backup run as root would store root's file, and any restore would hand it
//! back inside a directory that user owns. So each file, once open, is checked by `fstat` on
//! that descriptor (what was actually opened, whatever was swapped in since the walk): a file
//! the owner could not read is left out with a warning, as if it had vanished. Run as the
//! owner, the kernel already enforces this, and nothing is checked.
//!
//! The owner's groups are its primary group and the groups `/etc/group` lists it in (users
//! and groups from a directory service are not enumerated: a file readable only through such
//! a group is left out, and the warning says why). Directories on the way are not checked: a
//! world-readable file inside a directory the owner cannot enter is taken.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The data directory's owner, as far as reading files goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerReads {
    /// `None`: the backup runs as the owner (or the owner is root): nothing to check.
    owner: Option<Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gids: Vec<u32>,
}

impl OwnerReads {
    /// The owner of `pgdata`, checked when `running_uid` is someone else.
    pub fn of(pgdata: &Path, running_uid: u32) -> std::io::Result<Self> {
        let m = std::fs::metadata(pgdata)?;
        if m.uid() == running_uid || m.uid() == 0 {
            return Ok(OwnerReads { owner: None });
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Ok(OwnerReads {
            owner: Some(Owner {
                uid: m.uid(),
                gids: groups_of(m.uid(), m.gid(), &passwd, &group),
            }),
        })
    }

    /// Nothing checked (the backup runs as the owner; tests).
    pub fn unchecked() -> Self {
        OwnerReads { owner: None }
    }

    /// Whether the owner could read a file of this owner, group and mode.
    pub fn may_read(&self, uid: u32, gid: u32, mode: u32) -> bool {
        let Some(o) = &self.owner else {
            return true;
        };
        if uid == o.uid {
            mode & 0o400 != 0
        } else if o.gids.contains(&gid) {
            mode & 0o040 != 0
        } else {
            mode & 0o004 != 0
        }
    }

    /// Who the check is for, for a warning.
    pub fn owner_uid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.uid)
    }
}

/// `primary` and the groups `group` (an `/etc/group`) lists `uid`'s name in, the name taken
/// from `passwd` (an `/etc/passwd`).
fn groups_of(uid: u32, primary: u32, passwd: &str, group: &str) -> Vec<u32> {
    let mut gids = vec![primary];
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    });
    let Some(name) = name else {
        return gids;
    };
    for l in group.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == name) {
            continue;
        }
        if let Ok(gid) = f[2].parse::<u32>() {
            if !gids.contains(&gid) {
                gids.push(gid);
            }
        }
    }
    gids
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          postgres:x:105:110:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nshadow:x:42:\nssl-cert:x:111:postgres\npostgres:x:110:\n\
                         other:x:120:alice,postgres2\n";

    #[test]
    fn the_owners_groups_come_from_its_primary_group_and_the_group_file() {
        assert_eq!(groups_of(105, 110, PASSWD, GROUP), vec![110, 111]);
        // A uid without a name: its primary group only.
        assert_eq!(groups_of(999, 998, PASSWD, GROUP), vec![998]);
    }

    #[test]
    fn files_the_owner_could_not_read_are_refused() {
        let r = OwnerReads {
            owner: Some(Owner {
                uid: 105,
                gids: vec![110, 111],
            }),
        };
        // Its own files, by its own bits.
        assert!(r.may_read(105, 0, 0o400));
        assert!(!r.may_read(105, 110, 0o044));
        // /etc/shadow (root:shadow 0640) and a root-only key: no.
        assert!(!r.may_read(0, 42, 0o640));
        assert!(!r.may_read(0, 0, 0o600));
        // A key of group ssl-cert, which it is in, and world-readable files: yes.
        assert!(r.may_read(0, 111, 0o640));
        assert!(r.may_read(0, 0, 0o644));
        // Run as the owner, the kernel decides.
        assert!(OwnerReads::unchecked().may_read(0, 0, 0o600));
    }

    #[test]
    fn a_backup_run_by_the_owner_checks_nothing() {
        let d = tempfile::tempdir().unwrap();
        let me = crate::pg::instance::current_uid();
        assert_eq!(
            OwnerReads::of(d.path(), me).unwrap(),
            OwnerReads::unchecked()
        );
        if me == 0 {
            std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).unwrap();
            let r = OwnerReads::of(d.path(), 0).unwrap();
            assert_eq!(r.owner_uid(), Some(65534));
            assert!(!r.may_read(0, 0, 0o600));
        }
    }
}
