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
//! The owner's groups are those of the running postmaster (from `/proc`: whatever gave them,
//! `/etc/group`, LDAP or SSSD, a systemd unit); with no postmaster to read them from, the data
//! directory's group and the groups `/etc/group` lists the owner in.
//!
//! Directories on the way count too: a world-readable file inside a directory the owner cannot
//! enter (`/root/bin/dump.sh`, 0644 in a 0700 `/root`) is out of its reach, and a link to it
//! would hand it over. So a file is not opened by its path but reached as the owner's own
//! lookup would reach it ([`OwnerReads::open_file`]): one component at a time (`O_PATH`,
//! never following a link by itself), each link's target walked the same way, and every
//! directory on the way, including those a link leads through, must be one the owner may
//! search. Paths inside the data directory are walked from the data directory itself, which
//! PostgreSQL reaches (possibly by another path: root backing up a container's volume
//! reaches it through `/var/lib/docker`, 0710 root, which the owner's uid may not search);
//! a link's absolute target is walked from `/`. The file is then opened relative to the last directory without following a
//! link, and must be the very file the walk found (device and inode), else the walk is done
//! again. A directory the walk would descend into must also be one the owner may list
//! ([`OwnerReads::open_dir`]): a link to `/root` would otherwise put its names in the
//! manifest. It is opened the same way, checked on its descriptor and listed from it, so a
//! link swapped in after the check lists nothing the owner could not. An entry with a POSIX access ACL is judged by its ACL, as the
//! kernel would ([`super::posix_acl`]): one an ACL closes to the owner is left out whatever its
//! bits, one it opens to a group of the owner's is taken. Files and directories of kernel filesystems (`/proc`, `/sys`, ...) are always left out: their
//! bits do not say who may read them (`/proc/kallsyms` is world-readable and shows addresses
//! to root only).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fs_beneath::{push_components, MAX_LINKS};

use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;

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
    /// The data directory, as the backup names it: paths beneath it are walked from it.
    pgdata: PathBuf,
}

impl OwnerReads {
    /// The owner of `pgdata`, checked when `running_uid` is someone else.
    pub fn of(pgdata: &Path, running_uid: u32) -> std::io::Result<Self> {
        let m = std::fs::metadata(pgdata)?;
        if m.uid() == running_uid || m.uid() == 0 {
            return Ok(OwnerReads { owner: None });
        }
        if !super::posix_acl::readable_through_proc() {
            tracing::warn!(
                "/proc is not mounted: the ACLs of directories on the way to each file are not \
                 seen (their permission bits decide); files' own ACLs still are"
            );
        }
        let gids = postmaster_groups(pgdata, m.uid()).unwrap_or_else(|| {
            tracing::info!(
                "the groups of the data directory's owner are taken from /etc/group (no running \
                 postmaster of uid {} to read them from)",
                m.uid()
            );
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            groups_of(m.uid(), m.gid(), &passwd, &group)
        });
        Ok(OwnerReads {
            owner: Some(Owner {
                uid: m.uid(),
                gids,
                pgdata: pgdata.to_path_buf(),
            }),
        })
    }

    /// Nothing checked (the backup runs as the owner; tests).
    pub fn unchecked() -> Self {
        OwnerReads { owner: None }
    }

    /// Whether the owner could read a file of this owner, group and mode.
    pub fn may_read(&self, uid: u32, gid: u32, mode: u32) -> bool {
        match &self.owner {
            Some(o) => o.may(uid, gid, mode, READ),
            None => true,
        }
    }

    /// Opens the regular file at `path` for reading, as the owner could
    /// ([module docs](self)): `Refused` with the reason when the owner could not reach or read
    /// it, or it is not a regular file (a FIFO swapped in cannot stall the backup: it is
    /// opened without blocking). An error is an I/O error (`NotFound` when it is gone).
    pub fn open_file(&self, path: &Path) -> io::Result<Reached> {
        let Some(o) = &self.owner else {
            let fd = rfs::open(path, OPEN_FLAGS, Mode::empty())?;
            let st = rfs::fstat(&fd)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Ok(Reached::Refused("not a regular file".into()));
            }
            return Ok(Reached::File(File::from(fd)));
        };
        Ok(match o.open_as(path, Opening::Read)? {
            Ok(fd) => Reached::File(File::from(fd)),
            Err(why) => Reached::Refused(why),
        })
    }

    /// Opens the directory at `path` for listing, as the owner could list it ([module
    /// docs](self)): reached like a file, opened relative to the directory holding it without
    /// following a link, and checked on that descriptor, so the names listed are those of the
    /// directory checked, whatever was swapped in since. `Refused` with the reason when the
    /// owner could not reach or list it, or it is not a directory.
    pub fn open_dir(&self, path: &Path) -> io::Result<DirReached> {
        let Some(o) = &self.owner else {
            return Ok(DirReached::Dir(rfs::open(path, LIST_FLAGS, Mode::empty())?));
        };
        Ok(match o.open_as(path, Opening::List)? {
            Ok(fd) => DirReached::Dir(fd),
            Err(why) => DirReached::Refused(why),
        })
    }

    /// `None` when the owner could reach the entry at `path` (links followed) and read it, a
    /// directory list it (or nothing is checked), else the reason it could not.
    pub fn refusal(&self, path: &Path) -> io::Result<Option<String>> {
        let Some(o) = &self.owner else {
            return Ok(None);
        };
        let Reach {
            st: found, entry, ..
        } = match o.reach(path)? {
            Ok(r) => r,
            Err(why) => return Ok(Some(why)),
        };
        let (want, what) = match FileType::from_raw_mode(found.st_mode) {
            FileType::Directory => (READ | SEARCH, "list"),
            _ => (READ, "read"),
        };
        if !o.may_at(&entry, &found, want) {
            return Ok(Some(format!(
                "an entry of uid {}, mode {:o} (and its ACL, if any), that the data directory's \
                 owner (uid {}) could not {what}",
                found.st_uid,
                found.st_mode & 0o7777,
                o.uid
            )));
        }
        Ok(None)
    }

    /// Whether the owner could reach and read the file at `path` (its ACL included; always,
    /// when nothing is checked): an unchanged file is carried over from the reference only
    /// then, since an ACL added since changes its ctime, not what the reference compares.
    pub fn could_read(&self, path: &Path) -> bool {
        matches!(self.refusal(path), Ok(None))
    }

    /// Whether anything is checked (the backup runs as another user than the owner).
    pub fn checks(&self) -> bool {
        self.owner.is_some()
    }
}

/// Kernel filesystems whose files' permission bits do not say who may read them: a
/// world-readable `/proc/kallsyms` shows real addresses to root only, `/proc/<pid>/maps` of
/// a root process is checked against the reader's privileges. Magic numbers from
/// `statfs(2)`: proc, sysfs, debugfs, securityfs, tracefs, bpf, configfs, efivarfs.
const KERNEL_FS: &[i64] = &[
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7363_6673,
    0x7472_6163,
    0xcafe_4a11,
    0x6265_6570,
    0xde5e_81e4,
];

fn is_kernel_fs(fd: &OwnedFd) -> io::Result<bool> {
    let fs = rfs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as i64;
    Ok(KERNEL_FS.contains(&kind))
}

/// What [`OwnerReads::open_file`] found.
#[derive(Debug)]
pub enum Reached {
    /// The file, open for reading.
    File(File),
    /// Left out, and why.
    Refused(String),
}

/// What [`OwnerReads::open_dir`] found.
#[derive(Debug)]
pub enum DirReached {
    /// The directory, open for listing ([`names_in`]).
    Dir(OwnedFd),
    /// Left out, and why.
    Refused(String),
}

/// The names in the directory open at `fd` (`.` and `..` left out), sorted.
pub fn names_in(fd: OwnedFd) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in rfs::Dir::new(fd)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// How a directory is opened for listing.
const LIST_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// Permission bits, as the "other" class has them (shifted for the owner and group classes).
const READ: u32 = 0o4;
const SEARCH: u32 = 0o1;

/// How a file is opened for reading: without blocking on a FIFO.
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// How the walk holds each component: the entry itself, not what a link points to.
const WALK_FLAGS: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Walks before a file that keeps being swapped is given up on.
const ATTEMPTS: usize = 4;

/// What the owner is to open: a regular file to read, or a directory to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    Read,
    List,
}

impl Opening {
    fn kind(self) -> FileType {
        match self {
            Opening::Read => FileType::RegularFile,
            Opening::List => FileType::Directory,
        }
    }

    fn flags(self) -> OFlags {
        match self {
            Opening::Read => OPEN_FLAGS,
            Opening::List => LIST_FLAGS,
        }
    }

    /// The permission the owner needs, and its name.
    fn want(self) -> (u32, &'static str) {
        match self {
            Opening::Read => (READ, "read"),
            Opening::List => (READ | SEARCH, "list"),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Opening::Read => "file",
            Opening::List => "directory",
        }
    }

    fn not_one(self) -> &'static str {
        match self {
            Opening::Read => "not a regular file",
            Opening::List => "not a directory",
        }
    }

    /// Whether `openat` failing with `e` means the entry was swapped since the walk found it
    /// (for a link: `O_NOFOLLOW`; for a file where a directory was: `O_DIRECTORY`).
    fn swapped(self, e: Errno) -> bool {
        e == Errno::LOOP || (self == Opening::List && e == Errno::NOTDIR)
    }
}

impl Owner {
    /// Opens the entry at `path` as `how` says, as this owner's own lookup would reach it
    /// ([module docs](self)): reached one component at a time ([`Owner::reach`]), opened
    /// relative to the directory holding it without following a link, and the very entry the
    /// walk found (device and inode; else the walk is done again); then checked on that
    /// descriptor. `Err` with the reason when the owner could not reach, read or list it.
    fn open_as(&self, path: &Path, how: Opening) -> io::Result<Result<OwnedFd, String>> {
        for _ in 0..ATTEMPTS {
            let Reach {
                parent,
                name,
                st: found,
                ..
            } = match self.reach(path)? {
                Ok(r) => r,
                Err(why) => return Ok(Err(why)),
            };
            if FileType::from_raw_mode(found.st_mode) != how.kind() {
                return Ok(Err(how.not_one().into()));
            }
            let fd = match rfs::openat(
                &parent,
                &name,
                how.flags() | OFlags::NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) if how.swapped(e) => continue,
                Err(e) => return Err(e.into()),
            };
            let st = rfs::fstat(&fd)?;
            if (st.st_dev, st.st_ino) != (found.st_dev, found.st_ino) {
                continue;
            }
            if is_kernel_fs(&fd)? {
                return Ok(Err(format!(
                    "a {} of a kernel filesystem (proc, sysfs, ...), whose permission bits do \
                     not say who may read it",
                    how.noun()
                )));
            }
            let (want, verb) = how.want();
            if !self.may_at(&fd, &st, want) {
                return Ok(Err(format!(
                    "a {} of uid {}, mode {:o} (and its ACL, if any), that the data directory's \
                     owner (uid {}) could not {verb}",
                    how.noun(),
                    st.st_uid,
                    st.st_mode & 0o7777,
                    self.uid
                )));
            }
            return Ok(Ok(fd));
        }
        Ok(Err("it kept changing while it was being opened".into()))
    }

    /// Whether this owner has all of `want` ([`READ`], [`SEARCH`]) on an entry of `uid`,
    /// `gid` and `mode`, by the class the kernel would use.
    fn may(&self, uid: u32, gid: u32, mode: u32, want: u32) -> bool {
        let shift = if uid == self.uid {
            6
        } else if self.gids.contains(&gid) {
            3
        } else {
            0
        };
        (mode >> shift) & want == want
    }

    /// [`Owner::may`] for the entry `fd` holds (its status `st`), by its access ACL when it
    /// has one ([`super::posix_acl`]), as the kernel would decide.
    fn may_at(&self, fd: &OwnedFd, st: &rfs::Stat, want: u32) -> bool {
        use super::posix_acl::{self, Found};
        // The kernel: the owning user by its bits; the ACL only when the mask is not `---`.
        if st.st_uid == self.uid || st.st_mode & 0o070 == 0 {
            return self.may(st.st_uid, st.st_gid, st.st_mode, want);
        }
        match posix_acl::of(fd) {
            Found::None | Found::NoProc => self.may(st.st_uid, st.st_gid, st.st_mode, want),
            Found::Acl(acl) => acl.grants(self.uid, &self.gids, st.st_uid, st.st_gid, want as u16),
            Found::Invalid => false,
        }
    }

    /// Resolves `path` as this owner's lookup would ([`Reach`]; links, the last one's too,
    /// followed). `Err` with the reason when a directory on the way is not one the owner may
    /// search.
    fn reach(&self, path: &Path) -> io::Result<Result<Reach, String>> {
        let root = || rfs::open("/", WALK_FLAGS | OFlags::DIRECTORY, Mode::empty());
        // Beneath the data directory: from the data directory (its own path followed as
        // given, like the backup's `pgdata`).
        let (mut at, mut walked, path) = match path.strip_prefix(&self.pgdata) {
            Ok(rest) => (
                rfs::open(
                    &self.pgdata,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?,
                self.pgdata.clone(),
                rest,
            ),
            Err(_) if path.is_absolute() => (root()?, PathBuf::from("/"), path),
            Err(_) => (
                rfs::open(".", WALK_FLAGS | OFlags::DIRECTORY, Mode::empty())?,
                PathBuf::from("."),
                path,
            ),
        };
        let mut todo: VecDeque<OsString> = VecDeque::new();
        push_components(&mut todo, path);
        let mut links = 0;
        let mut last: Option<(PathBuf, rfs::Stat, OwnedFd)> = None;
        while let Some(name) = todo.pop_front() {
            // Looking a name up in `at` takes search permission on it.
            let dir = rfs::fstat(&at)?;
            if !self.may_at(&at, &dir, SEARCH) {
                return Ok(Err(format!(
                    "reached through {}, a directory of uid {}, mode {:o}, that the data \
                     directory's owner (uid {}) could not enter",
                    walked.display(),
                    dir.st_uid,
                    dir.st_mode & 0o7777,
                    self.uid
                )));
            }
            let name = PathBuf::from(name);
            let fd = rfs::openat(&at, &name, WALK_FLAGS, Mode::empty())?;
            let st = rfs::fstat(&fd)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Errno::LOOP.into());
                    }
                    let target = rfs::readlinkat(&fd, "", Vec::new())?;
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    if target.is_absolute() {
                        at = root()?;
                        walked = PathBuf::from("/");
                    }
                    push_components(&mut todo, &target);
                    last = None;
                }
                _ if todo.is_empty() => last = Some((name, st, fd)),
                FileType::Directory => {
                    walked.push(&name);
                    at = fd;
                }
                _ => return Err(Errno::NOTDIR.into()),
            }
        }
        Ok(Ok(match last {
            Some((name, st, entry)) => Reach {
                parent: at,
                name,
                st,
                entry,
            },
            // The path ended in `/`, `.` or `..`: the directory the walk is in.
            None => Reach {
                entry: rfs::openat(&at, ".", WALK_FLAGS, Mode::empty())?,
                st: rfs::fstat(&at)?,
                parent: at,
                name: PathBuf::from("."),
            },
        }))
    }
}

/// Where [`Owner::reach`] ended: the directory holding the last entry, that entry's name, its
/// status, and an `O_PATH` descriptor of it (what was found, whatever its name holds later).
struct Reach {
    parent: OwnedFd,
    name: PathBuf,
    st: rfs::Stat,
    entry: OwnedFd,
}

/// The groups the running postmaster of `pgdata` has (`Gid:` and `Groups:` of
/// `/proc/<pid>/status`, the pid from `postmaster.pid`): what PostgreSQL itself reads files
/// with, whatever gave them (`/etc/group`, LDAP or SSSD through the name service, a systemd
/// unit's `SupplementaryGroups=`). `None` when no postmaster of `uid` runs there (a stale pid
/// file, a pid reused by another user's process, no `/proc`). Read from the kernel, not asked
/// of the name service: nothing to hang on a slow directory server while the backup holds
/// its session open.
fn postmaster_groups(pgdata: &Path, uid: u32) -> Option<Vec<u32>> {
    let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    process_groups(&status, uid)
}

/// The primary and supplementary groups in a `/proc/<pid>/status`, if its real uid is `uid`.
fn process_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .map(str::parse::<u32>)
                    .collect::<Result<Vec<_>, _>>()
            })
    };
    let uids = field("Uid:")?.ok()?;
    if uids.first() != Some(&uid) {
        return None;
    }
    let mut gids = vec![*field("Gid:")?.ok()?.first()?];
    for g in field("Groups:")?.ok()? {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    Some(gids)
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
    fn the_owners_groups_are_the_running_postmasters() {
        let status = "Name:\tpostgres\nUid:\t101\t101\t101\t101\nGid:\t104\t104\t104\t104\n\
                      Groups:\t103 104 2001 \nVmPeak:\t1 kB\n";
        assert_eq!(process_groups(status, 101), Some(vec![104, 103, 2001]));
        // Another user's process under a reused pid: not the owner's groups.
        assert_eq!(process_groups(status, 105), None);
        assert_eq!(process_groups("Uid:\t101\n", 101), None, "no Gid: line");
        // No groups beyond the primary one.
        let lone = "Uid:\t7 7 7 7\nGid:\t9 9 9 9\nGroups:\t\n";
        assert_eq!(process_groups(lone, 7), Some(vec![9]));
        // A data directory with this very process as its postmaster.
        let d = tempfile::tempdir().unwrap();
        let me = crate::pg::instance::current_uid();
        std::fs::write(
            d.path().join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), d.path().display()),
        )
        .unwrap();
        let mine = postmaster_groups(d.path(), me).unwrap();
        let m = std::fs::metadata(d.path()).unwrap();
        assert!(mine.contains(&m.gid()), "{mine:?}");
        assert_eq!(postmaster_groups(d.path(), me + 1), None);
        std::fs::write(d.path().join("postmaster.pid"), "4194305\n").unwrap();
        assert_eq!(postmaster_groups(d.path(), me), None, "no such process");
    }

    #[test]
    fn files_the_owner_could_not_read_are_refused() {
        let r = OwnerReads {
            owner: Some(Owner {
                uid: 105,
                gids: vec![110, 111],
                pgdata: PathBuf::from("/var/lib/postgresql/15/main"),
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
            assert!(r.checks());
            assert!(!r.may_read(0, 0, 0o600));
        }
    }

    /// A tree where everything belongs to the user running the test, judged for another
    /// owner (uid 4242): only the "other" bits count for it.
    fn tree() -> (tempfile::TempDir, OwnerReads) {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let mode = |path: &Path, m: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap()
        };
        for (dir, m) in [
            ("pgdata", 0o755),
            ("secret", 0o700),
            ("open", 0o755),
            ("unlisted", 0o711),
        ] {
            std::fs::create_dir(p.join(dir)).unwrap();
            mode(&p.join(dir), m);
        }
        for f in [
            "secret/dump.sh",
            "open/pub.conf",
            "unlisted/known.conf",
            "pgdata/PG_VERSION",
        ] {
            std::fs::write(p.join(f), f).unwrap();
            mode(&p.join(f), 0o644);
        }
        mode(p, 0o755);
        symlink(p.join("secret/dump.sh"), p.join("pgdata/to_secret_file")).unwrap();
        symlink(p.join("secret"), p.join("pgdata/to_secret_dir")).unwrap();
        symlink(p.join("open/pub.conf"), p.join("pgdata/to_open_file")).unwrap();
        // A chain: a relative link through `..`, then a link in a searchable directory.
        symlink("../open/hop", p.join("pgdata/chain")).unwrap();
        symlink(p.join("secret/dump.sh"), p.join("open/hop")).unwrap();
        symlink("../unlisted/known.conf", p.join("pgdata/to_unlisted_file")).unwrap();
        symlink(p.join("unlisted"), p.join("pgdata/to_unlisted_dir")).unwrap();
        let r = OwnerReads {
            owner: Some(Owner {
                uid: 4242,
                gids: vec![4242],
                pgdata: p.join("pgdata"),
            }),
        };
        (d, r)
    }

    fn opened(r: &OwnerReads, path: &Path) -> Result<String, String> {
        match r.open_file(path).unwrap() {
            Reached::File(mut f) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                Ok(s)
            }
            Reached::Refused(why) => Err(why),
        }
    }

    #[test]
    fn a_file_in_a_directory_the_owner_cannot_enter_is_out_of_reach_whatever_its_own_bits() {
        let (d, r) = tree();
        let pg = d.path().join("pgdata");
        let why = opened(&r, &pg.join("to_secret_file")).unwrap_err();
        assert!(
            why.contains("secret") && why.contains("could not enter"),
            "{why}"
        );
        let why = opened(&r, &pg.join("chain")).unwrap_err();
        assert!(why.contains("secret"), "{why}");
        assert_eq!(
            opened(&r, &pg.join("to_open_file")).unwrap(),
            "open/pub.conf"
        );
        assert_eq!(
            opened(&r, &pg.join("PG_VERSION")).unwrap(),
            "pgdata/PG_VERSION"
        );
        // Searchable, not listable: a file named inside it is reachable, the listing is not.
        assert_eq!(
            opened(&r, &pg.join("to_unlisted_file")).unwrap(),
            "unlisted/known.conf"
        );
        assert!(r.refusal(&pg.join("to_unlisted_dir")).unwrap().is_some());
        assert!(r.refusal(&pg.join("to_secret_dir")).unwrap().is_some());
        assert_eq!(r.refusal(&pg.join("to_open_file")).unwrap(), None);
        // Run as the owner: the kernel decides, and this user may read all of it.
        let me = OwnerReads::unchecked();
        assert_eq!(
            opened(&me, &pg.join("to_secret_file")).unwrap(),
            "secret/dump.sh"
        );
        assert_eq!(me.refusal(&pg.join("to_secret_dir")).unwrap(), None);
    }

    #[test]
    fn an_acl_decides_for_the_owner_where_there_is_one() {
        use crate::backup::posix_acl::testing::{self, ANY, GROUP, GROUP_OBJ, MASK, OTHER};
        use crate::backup::posix_acl::testing::{USER, USER_OBJ};
        use std::os::unix::fs::PermissionsExt;
        let (d, r) = tree();
        let open = d.path().join("open");
        // 0644 by its bits, closed to uid 4242 by its ACL.
        let denied = open.join("denied.conf");
        std::fs::write(&denied, "denied").unwrap();
        // 0600 by its bits, open to group 4242 by its ACL; the directory to list, likewise.
        let granted = open.join("granted.conf");
        std::fs::write(&granted, "granted").unwrap();
        let closed = d.path().join("pgdata/closed");
        std::fs::create_dir(&closed).unwrap();
        let set = testing::set(
            &denied,
            &[
                (USER_OBJ, 6, ANY),
                (USER, 0, 4242),
                (GROUP_OBJ, 4, ANY),
                (MASK, 4, ANY),
                (OTHER, 4, ANY),
            ],
        );
        if !set {
            eprintln!("no ACLs on this file system: skipped");
            return;
        }
        let by_group = [
            (USER_OBJ, 7, ANY),
            (GROUP_OBJ, 0, ANY),
            (GROUP, 5, 4242),
            (MASK, 5, ANY),
            (OTHER, 0, ANY),
        ];
        assert!(testing::set(&granted, &by_group));
        assert!(testing::set(&closed, &by_group));
        assert_eq!(
            std::fs::metadata(&denied).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let why = opened(&r, &denied).unwrap_err();
        assert!(why.contains("ACL"), "{why}");
        assert_eq!(opened(&r, &granted).unwrap(), "granted");
        // What carries an unchanged file over from the reference decides the same way.
        assert!(!r.could_read(&denied) && r.could_read(&granted));
        // A mask of `---` (group bits 0): the kernel ignores the ACL and the bits decide,
        // here the "other" read bit the named entry for 4242 does not reach.
        let masked = open.join("masked.conf");
        std::fs::write(&masked, "masked").unwrap();
        assert!(testing::set(
            &masked,
            &[
                (USER_OBJ, 6, ANY),
                (USER, 6, 4242),
                (GROUP_OBJ, 0, ANY),
                (MASK, 0, ANY),
                (OTHER, 4, ANY),
            ],
        ));
        assert_eq!(opened(&r, &masked).unwrap(), "masked");
        assert_eq!(
            r.refusal(&closed).unwrap(),
            None,
            "listable through its ACL"
        );
        // The bits alone would have said the opposite three times.
        let bits = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            r.may_read(m.uid(), m.gid(), m.mode())
        };
        assert!(bits(&denied) && !bits(&granted));
    }

    #[test]
    fn a_fifo_or_a_missing_file_is_not_opened() {
        let (d, r) = tree();
        let fifo = d.path().join("pgdata/fifo");
        crate::test_support::make_fifo(&fifo);
        for who in [&r, &OwnerReads::unchecked()] {
            assert_eq!(opened(who, &fifo).unwrap_err(), "not a regular file");
            let gone = who.open_file(&d.path().join("pgdata/gone")).unwrap_err();
            assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        }
    }

    #[test]
    fn a_directory_is_listed_from_what_was_checked_whatever_its_name_holds_later() {
        let (d, r) = tree();
        let p = d.path();
        let names = |who: &OwnerReads, path: &Path| match who.open_dir(path).unwrap() {
            DirReached::Dir(fd) => Ok(names_in(fd).unwrap()),
            DirReached::Refused(why) => Err(why),
        };
        let refused = names(&r, &p.join("pgdata/to_secret_dir")).unwrap_err();
        assert!(refused.contains("could not list"), "{refused}");
        assert!(names(&r, &p.join("pgdata/to_unlisted_dir")).is_err());
        assert_eq!(
            names(&r, &p.join("pgdata/PG_VERSION")).unwrap_err(),
            "not a directory"
        );
        // Root, or the owner itself, lists what the kernel lets it.
        assert_eq!(
            names(&OwnerReads::unchecked(), &p.join("secret")).unwrap(),
            ["dump.sh"]
        );
        // Checked, then swapped for a link to a directory the owner may not list: the listing
        // is still of the directory that was checked.
        let swapped = p.join("pgdata/conf.d");
        std::fs::create_dir(&swapped).unwrap();
        std::fs::write(swapped.join("mine.conf"), "x").unwrap();
        let DirReached::Dir(fd) = r.open_dir(&swapped).unwrap() else {
            panic!("conf.d is the owner's to list");
        };
        std::fs::rename(&swapped, p.join("pgdata/conf.d.old")).unwrap();
        std::os::unix::fs::symlink(p.join("secret"), &swapped).unwrap();
        assert_eq!(names_in(fd).unwrap(), ["mine.conf"]);
    }

    #[test]
    fn the_walk_leaves_out_what_the_owner_could_not_reach() {
        let (d, r) = tree();
        let mut seen = Vec::new();
        crate::pg::datadir::walk_as(&d.path().join("pgdata"), "PG_15_1", &r, |e| {
            seen.push(e.path);
            Ok(())
        })
        .unwrap();
        // Links to the file in `secret` (direct or chained) and the directories the owner
        // could not list are left out by the walk itself.
        assert_eq!(seen, ["PG_VERSION", "to_open_file", "to_unlisted_file"]);
    }

    /// The owner cannot search a directory above the data directory (root backing up a
    /// container's volume under `/var/lib/docker`, 0710 root): the data directory's own files
    /// are still taken, since they are walked from the data directory.
    #[test]
    fn a_directory_above_the_data_directory_the_owner_cannot_search_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let pgdata = d.path().join("guard/pgdata");
        std::fs::create_dir_all(pgdata.join("global")).unwrap();
        std::fs::set_permissions(
            d.path().join("guard"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(pgdata.join("global/pg_control"), b"control").unwrap();
        let r = OwnerReads {
            owner: Some(Owner {
                uid: 4242,
                gids: vec![4242],
                pgdata: pgdata.clone(),
            }),
        };
        assert_eq!(
            opened(&r, &pgdata.join("global/pg_control")).unwrap(),
            "control"
        );
        let mut seen = Vec::new();
        crate::pg::datadir::walk_as(&pgdata, "PG_15_1", &r, |e| {
            seen.push(e.path);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["global", "global/pg_control"]);
    }

    /// A link to `/proc/kallsyms` (world-readable, real addresses for root only) is left out.
    #[test]
    fn a_kernel_file_is_never_taken_for_the_owner() {
        let (d, r) = tree();
        let link = d.path().join("pgdata/kallsyms");
        std::os::unix::fs::symlink("/proc/kallsyms", &link).unwrap();
        let why = opened(&r, &link).unwrap_err();
        assert!(why.contains("kernel filesystem"), "{why}");
        // Run as the owner, the kernel decides (and this user may read it).
        assert!(opened(&OwnerReads::unchecked(), &link).is_ok());
    }
}
