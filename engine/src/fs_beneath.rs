//! Filesystem access beneath a directory descriptor, never through a symbolic link.
//!
//! Why: `restore` often runs as root, into a data directory owned by PostgreSQL's OS user
//! (and, for `--delta`, one that already holds whatever that user left there). Path-based
//! calls (`open`, `chmod`, `chown`, `remove_dir_all` on `target.join(path)`) resolve every
//! component afresh and follow symbolic links, so a link planted at `base/1`, at `global` or
//! at `PG_VERSION` would make root delete, write, chmod or chown whatever it points to: the
//! data directory's owner could write as root. Here every access is an `*at` call relative to
//! a directory descriptor, each component opened with `O_NOFOLLOW`, so:
//!
//! - a link (or anything else that is not a real directory) where a directory must be is
//!   removed (the link itself, [`unlinkat`](rustix::fs::unlinkat)) and a real directory made
//!   in its place ([`ensure_dir`]);
//! - a link where a file must be is removed and a new file created with `O_EXCL`; so is a
//!   FIFO, socket or device node, and a regular file with more than one hard link (writing
//!   into it would change the other name too, which may be outside the data directory)
//!   ([`open_file_rw`]);
//! - nothing is ever read, written, chmodded (`fchmod`), chowned (`fchown`) or descended into
//!   except through a descriptor opened without following a link;
//! - removing a tree ([`remove_tree`]) unlinks links and never descends through them.
//!
//! The only links a data directory legitimately holds are the tablespace links
//! `pg_tblspc/<oid>` and a `pg_wal` on its own disk; the restore recreates them itself (the
//! latter only when told where, `--wal-dir`) and writes their files relative to a descriptor
//! of the location it set up ([`Tree`]), never through the link.
//!
//! The roots themselves (the target directory and tablespace locations) are opened following
//! links: the operator or the manifest named them. Files are opened with `O_NONBLOCK` so a FIFO
//! planted where a file should be cannot stall the restore, and checked with `fstat` on the
//! open descriptor (not a separate `stat` by name, which could race). Cost per restored file:
//! one `openat` per directory level (a data directory is at most four deep), one `openat` and
//! one `fstat` for the file: no per-block system calls.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// How directories are opened: never through a link.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// How a root's components are walked through: never through a link, and for search only
/// (`O_PATH`: no read permission needed, as for a path lookup).
const PATH_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Attempts before giving up on an entry that keeps changing under us.
const ATTEMPTS: usize = 4;

fn changing(name: &Path) -> io::Error {
    io::Error::other(format!(
        "{} keeps changing while it is being replaced (is something else writing to this directory?)",
        name.display()
    ))
}

/// Opens a directory named by the operator or the manifest (a root: links are followed).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a root (the target directory, a tablespace location, `--wal-dir`, `--config-dir`)
/// like [`open_root`], resolving it one component at a time and following a symbolic link
/// only where the link could not have been planted by another user ([`trusted_link`]). A
/// link anywhere on the path (not just the last component) in a directory another user owns
/// is refused: `postgres`, owner of `/var/lib/postgresql`, could point
/// `/var/lib/postgresql/15` at `/etc`, and the restore would then create, empty and chown
/// `/etc/main`. A link the operator (or root) made is followed: a data directory on a mount
/// reached through a link is common.
pub fn open_root_checked(path: &Path, me: u32) -> io::Result<OwnedFd> {
    walk_root(path, me, None).map(|(fd, _)| fd)
}

/// [`open_root_checked`], creating missing directories on the way (mode `0755`, the last one
/// `mode`, the running user's) instead of failing; says whether the last one was created
/// (`true`) or already there.
pub fn create_root_checked(path: &Path, me: u32, mode: u32) -> io::Result<(OwnedFd, bool)> {
    walk_root(path, me, Some(mode))
}

/// Links followed while resolving one path before giving up (the kernel's own limit).
pub(crate) const MAX_LINKS: usize = 40;

/// Puts `p`'s components in front of what is left to walk (`..` kept, `/` and `.` dropped):
/// a walk one component at a time, where a link's target goes before the rest of the path.
pub(crate) fn push_components(todo: &mut std::collections::VecDeque<std::ffi::OsString>, p: &Path) {
    for c in p.components().rev() {
        match c {
            Component::Normal(n) => todo.push_front(n.to_os_string()),
            Component::ParentDir => todo.push_front(std::ffi::OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

fn walk_root(path: &Path, me: u32, create: Option<u32>) -> io::Result<(OwnedFd, bool)> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    // Components are opened `O_PATH`: walking through needs search permission only, as a
    // path lookup does; the last one is opened for reading at the end.
    let start =
        |absolute: bool| rfs::open(if absolute { "/" } else { "." }, PATH_FLAGS, Mode::empty());
    let mut at = start(path.is_absolute())?;
    // Where the walk is, for messages (links already followed).
    let mut walked = PathBuf::from(if path.is_absolute() { "/" } else { "." });
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_components(&mut todo, path);
    let mut links = 0;
    let mut created = false;
    while let Some(name) = todo.pop_front() {
        let name = Path::new(&name);
        created = false;
        match rfs::openat(&at, name, PATH_FLAGS, Mode::empty()) {
            Ok(fd) => {
                at = fd;
                walked.push(name);
            }
            Err(Errno::NOENT) if create.is_some() => {
                let mode = match create {
                    Some(last) if todo.is_empty() => last,
                    _ => 0o755,
                };
                match rfs::mkdirat(&at, name, Mode::from_raw_mode(mode)) {
                    Ok(()) => {
                        // Its entry durable (a directory we may write but not read cannot be
                        // opened to be synced: the restore's own syncs cover what is inside).
                        match rfs::openat(&at, ".", DIR_FLAGS, Mode::empty()) {
                            Ok(dir) => rfs::fsync(&dir)?,
                            Err(Errno::ACCESS) => {}
                            Err(e) => return Err(e.into()),
                        }
                        // Ours, unless swapped since: then this fails rather than follows.
                        at = rfs::openat(&at, name, PATH_FLAGS, Mode::empty())?;
                        walked.push(name);
                        created = true;
                    }
                    // Someone else made it meanwhile: it goes through the checks again.
                    Err(Errno::EXIST) => todo.push_front(name.as_os_str().to_os_string()),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                let target = match rfs::readlinkat(&at, name, Vec::new()) {
                    Ok(t) => PathBuf::from(OsString::from_vec(t.into_bytes())),
                    Err(Errno::INVAL) => return Err(Errno::NOTDIR.into()),
                    Err(e) => return Err(e.into()),
                };
                trusted_link(at.as_fd(), name, me).map_err(|why| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{} leads through the symbolic link {} ({why}): it could point anywhere. \
                             Name the directory it points to instead",
                            path.display(),
                            walked.join(name).display()
                        ),
                    )
                })?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::LOOP.into());
                }
                if target.is_absolute() {
                    at = start(true)?;
                    walked = PathBuf::from("/");
                }
                push_components(&mut todo, &target);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let dir = rfs::openat(&at, ".", DIR_FLAGS, Mode::empty())?;
    Ok((dir, created))
}

/// Whether the link `name` in `dir` can be followed by a user `me` that may be root: only
/// `me` or root could have made it. The directory must be `me`'s or root's and writable by
/// nobody else, or sticky (`/tmp`) with the link itself `me`'s or root's.
fn trusted_link(dir: BorrowedFd<'_>, name: &Path, me: u32) -> Result<(), String> {
    let ours = |uid: u32| uid == me || uid == 0;
    let d = rfs::fstat(dir).map_err(|e| e.to_string())?;
    if !ours(d.st_uid) {
        return Err(format!(
            "in a directory of uid {}, not of the user running this (uid {me})",
            d.st_uid
        ));
    }
    let writable_by_others = d.st_mode & 0o022 != 0;
    let sticky = d.st_mode & 0o1000 != 0;
    if writable_by_others {
        let l = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| e.to_string())?;
        if !sticky || !ours(l.st_uid) {
            return Err(format!(
                "in a directory others can write to, made by uid {}",
                l.st_uid
            ));
        }
    }
    Ok(())
}

/// Opens the existing real directory `name` in `dir`; a link there is an error (`ELOOP` or
/// `ENOTDIR`), never followed.
pub fn open_dir(dir: BorrowedFd<'_>, name: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Opens the real directory `name` in `dir`, creating it with `mode` if absent; a link, file
/// or anything else in its place is removed first (the entry itself, never its target).
pub fn ensure_dir(dir: BorrowedFd<'_>, name: &Path, mode: u32) -> io::Result<OwnedFd> {
    for _ in 0..ATTEMPTS {
        match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => match rfs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            },
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => remove_entry(dir, name)?,
            Err(e) => return Err(e.into()),
        }
    }
    Err(changing(name))
}

/// Removes `name` from `dir` whatever it is: a link or file is unlinked, a real directory is
/// removed with its contents ([`remove_tree`]). Absent is fine.
pub fn remove_entry(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => remove_tree(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// Removes the real directory `name` in `dir` and everything in it, never descending through
/// a link (links inside are unlinked, not followed).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    for _ in 0..ATTEMPTS {
        let sub = match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Not (or no longer) a real directory: unlink the entry itself.
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                match rfs::unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => return Ok(()),
                    Err(Errno::ISDIR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        for entry in rfs::Dir::read_from(&sub)? {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            remove_entry(sub.as_fd(), Path::new(OsStr::from_bytes(n)))?;
        }
        match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            // Something was added meanwhile: go again.
            Err(Errno::NOTEMPTY) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(changing(name))
}

/// Opens the regular file `name` in `dir` for reading and writing, creating it (mode 0600) if
/// absent. Whatever else is there is removed first and a new file created: a link (the link
/// itself is removed; its target is untouched), a directory, a FIFO, socket or device, and a
/// regular file with other hard links. The existing contents of a plain regular file are
/// kept (a delta restore compares them).
pub fn open_file_rw(dir: BorrowedFd<'_>, name: &Path) -> io::Result<File> {
    let base =
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let mut flags = base;
    for _ in 0..ATTEMPTS {
        match rfs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => {
                let st = rfs::fstat(&fd)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_nlink <= 1
                {
                    clear_nonblock(&fd)?;
                    return Ok(File::from(fd));
                }
                drop(fd);
                remove_entry(dir, name)?;
            }
            // ELOOP: a link. EISDIR: a directory. ENXIO/EOPNOTSUPP: a socket or device.
            Err(Errno::LOOP) | Err(Errno::ISDIR) | Err(Errno::NXIO) | Err(Errno::OPNOTSUPP) => {
                remove_entry(dir, name)?
            }
            // Created with O_EXCL, but something appeared meanwhile.
            Err(Errno::EXIST) => remove_entry(dir, name)?,
            Err(e) => return Err(e.into()),
        }
        flags = base | OFlags::EXCL;
    }
    Err(changing(name))
}

fn clear_nonblock(fd: &OwnedFd) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    if fl.contains(OFlags::NONBLOCK) {
        rustix::fs::fcntl_setfl(fd, fl - OFlags::NONBLOCK)?;
    }
    Ok(())
}

/// Reads the regular file `name` in `dir`; `None` when it is absent or is not a regular file
/// (a link is not followed, so its target is never read).
pub fn read_file(dir: BorrowedFd<'_>, name: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NXIO) | Err(Errno::OPNOTSUPP) => {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let st = rfs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let mut out = Vec::new();
    File::from(fd).read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Writes `body` as the whole of the regular file `name` in `dir` (replacing a link or
/// anything else there), sets its owner (when given) and mode, and fsyncs it.
pub fn write_file(
    dir: BorrowedFd<'_>,
    name: &Path,
    body: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use std::io::Write;
    let mut f = open_file_rw(dir, name)?;
    f.set_len(0)?;
    f.write_all(body)?;
    set_owner_mode(f.as_fd(), owner, mode)?;
    f.sync_all()
}

/// Unlinks the file or link `name` in `dir` (never its target); absent is fine.
pub fn unlink(dir: BorrowedFd<'_>, name: &Path) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `fchown` (when `owner` is given), then `fchmod`, on an open descriptor. Only the
/// permission bits of `mode` are applied: setuid, setgid and sticky bits are dropped.
/// PostgreSQL never sets them in a data directory, and the modes come from a manifest whose
/// entries its OS user could shape (a file swapped for a link to a setuid program between two
/// backups is recorded with that program's mode): a restore run as root must never create a
/// setuid file.
pub fn set_owner_mode(fd: BorrowedFd<'_>, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
        )?;
    }
    rfs::fchmod(fd, Mode::from_raw_mode(mode & PERMISSION_BITS))?;
    Ok(())
}

/// The permission bits of a mode (no setuid, setgid or sticky).
const PERMISSION_BITS: u32 = 0o777;

/// Makes `name` in `dir` a symbolic link to `target`, unless it already is one: anything
/// else there (another link, a file, a directory tree) is removed first.
pub fn ensure_symlink(
    dir: BorrowedFd<'_>,
    name: &Path,
    target: &Path,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    for _ in 0..ATTEMPTS {
        match rfs::readlinkat(dir, name, Vec::new()) {
            Ok(existing) if existing.as_bytes() == target.as_os_str().as_bytes() => {
                break;
            }
            Ok(_) | Err(Errno::INVAL) => remove_entry(dir, name)?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match rfs::symlinkat(target, dir, name) {
            Ok(()) => break,
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some((uid, gid)) = owner {
        rfs::chownat(
            dir,
            name,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// `fsync` of an open descriptor (a directory: makes its entries durable).
pub fn sync(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rfs::fsync(fd)?)
}

/// Where the entry `name` in `dir` points, if it is a symbolic link (`None` if it is anything
/// else or absent).
pub fn link_target(dir: BorrowedFd<'_>, name: &Path) -> io::Result<Option<PathBuf>> {
    match rfs::readlinkat(dir, name, Vec::new()) {
        Ok(t) => Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(
            t.into_bytes(),
        )))),
        Err(Errno::NOENT) | Err(Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the entry `name` in `dir` is a symbolic link (`lstat`-like; absent: `false`).
pub fn is_symlink(dir: BorrowedFd<'_>, name: &Path) -> io::Result<bool> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::Symlink),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A directory, borrowed (a root) or opened on the way down.
#[derive(Debug)]
pub enum DirFd<'a> {
    /// A root descriptor.
    Borrowed(BorrowedFd<'a>),
    /// A directory opened beneath a root.
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Borrowed(b) => *b,
            DirFd::Owned(o) => o.as_fd(),
        }
    }
}

/// The components of a relative manifest path; `..`, `.`, empty components and absolute
/// paths are refused (the manifest is authenticated, this is a second line of defence).
pub fn components(rel: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = rel.split('/').collect();
    if rel.is_empty()
        || parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{rel:?} is not a plain relative path"),
        ));
    }
    Ok(parts)
}

/// A data directory being restored: the descriptor of its root, of each tablespace location
/// and of the WAL directory the restore set up. Paths `pg_tblspc/<oid>/...` resolve beneath
/// the location's descriptor, never through the link `pg_tblspc/<oid>`; with a WAL directory
/// of its own, `pg_wal/...` resolves beneath it, never through the link `pg_wal`.
#[derive(Debug)]
pub struct Tree {
    /// The data directory.
    pub root: OwnedFd,
    /// Tablespace OID and its location's descriptor.
    pub tablespaces: Vec<(u32, OwnedFd)>,
    /// The directory `pg_wal` links to (`restore --wal-dir`), if any.
    pub wal: Option<OwnedFd>,
}

impl Tree {
    /// Where `rel` lives: the descriptor it resolves beneath and the components below it.
    fn base<'a>(&self, rel: &'a str) -> io::Result<(BorrowedFd<'_>, Vec<&'a str>)> {
        let parts = components(rel)?;
        if parts.len() > 2 && parts[0] == "pg_tblspc" {
            if let Ok(oid) = parts[1].parse::<u32>() {
                if let Some((_, fd)) = self.tablespaces.iter().find(|(o, _)| *o == oid) {
                    return Ok((fd.as_fd(), parts[2..].to_vec()));
                }
            }
        }
        if let (Some(wal), true) = (&self.wal, parts.len() > 1 && parts[0] == "pg_wal") {
            return Ok((wal.as_fd(), parts[1..].to_vec()));
        }
        Ok((self.root.as_fd(), parts))
    }

    /// The tablespace location descriptor of `oid`, if the restore set one up.
    pub fn tablespace(&self, oid: u32) -> Option<BorrowedFd<'_>> {
        self.tablespaces
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, fd)| fd.as_fd())
    }

    /// The directory holding `rel` (created as real directories, mode 0700, where missing or
    /// where a link stood) and `rel`'s last component.
    pub fn parent_for_write<'a>(&self, rel: &'a str) -> io::Result<(DirFd<'_>, &'a Path)> {
        let (base, parts) = self.base(rel)?;
        let (last, dirs) = parts.split_last().expect("components are never empty");
        let mut dir = DirFd::Borrowed(base);
        for d in dirs {
            dir = DirFd::Owned(ensure_dir(dir.as_fd(), Path::new(d), 0o700)?);
        }
        Ok((dir, Path::new(*last)))
    }

    /// The real directory `rel`, created (and every missing ancestor, mode 0700) or with any
    /// link on the way replaced by a real directory.
    pub fn ensure_dir(&self, rel: &str, mode: u32) -> io::Result<OwnedFd> {
        let (dir, last) = self.parent_for_write(rel)?;
        ensure_dir(dir.as_fd(), last, mode)
    }

    /// The directory holding `rel` if every ancestor exists as a real directory (`None`
    /// otherwise: nothing is created or followed), and `rel`'s last component.
    pub fn parent_existing<'a>(&self, rel: &'a str) -> io::Result<Option<(DirFd<'_>, &'a Path)>> {
        let (base, parts) = self.base(rel)?;
        let (last, dirs) = parts.split_last().expect("components are never empty");
        let mut dir = DirFd::Borrowed(base);
        for d in dirs {
            match rfs::openat(dir.as_fd(), Path::new(d), DIR_FLAGS, Mode::empty()) {
                Ok(fd) => dir = DirFd::Owned(fd),
                Err(Errno::NOENT) | Err(Errno::LOOP) | Err(Errno::NOTDIR) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some((dir, Path::new(*last))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn tree(root: &Path) -> Tree {
        Tree {
            root: open_root(root).unwrap(),
            tablespaces: Vec::new(),
            wal: None,
        }
    }

    #[test]
    fn a_symlinked_final_component_is_replaced_not_written_through() {
        let t = tempfile::tempdir().unwrap();
        let (data, outside) = (t.path().join("data"), t.path().join("outside"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&outside, b"precious").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&outside, data.join("PG_VERSION")).unwrap();
        let tr = tree(&data);
        let (dir, name) = tr.parent_for_write("PG_VERSION").unwrap();
        write_file(dir.as_fd(), name, b"15\n", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert_eq!(std::fs::metadata(&outside).unwrap().mode() & 0o777, 0o644);
        let meta = std::fs::symlink_metadata(data.join("PG_VERSION")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(data.join("PG_VERSION")).unwrap(), b"15\n");
        // Reading never follows a link either.
        std::fs::remove_file(data.join("PG_VERSION")).unwrap();
        symlink(&outside, data.join("PG_VERSION")).unwrap();
        assert_eq!(
            read_file(tr.root.as_fd(), Path::new("PG_VERSION")).unwrap(),
            None
        );
    }

    #[test]
    fn a_symlinked_intermediate_component_is_replaced_by_a_real_directory() {
        let t = tempfile::tempdir().unwrap();
        let (data, outside) = (t.path().join("data"), t.path().join("outside"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"keep").unwrap();
        std::fs::write(outside.join("1259"), b"keep too").unwrap();
        std::fs::create_dir_all(data.join("base")).unwrap();
        symlink(&outside, data.join("base/1")).unwrap();
        let tr = tree(&data);
        let (dir, name) = tr.parent_for_write("base/1/1259").unwrap();
        let mut f = open_file_rw(dir.as_fd(), name).unwrap();
        std::io::Write::write_all(&mut f, b"restored").unwrap();
        assert_eq!(std::fs::read(outside.join("1259")).unwrap(), b"keep too");
        assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(data.join("base/1"))
            .unwrap()
            .file_type()
            .is_dir());
        assert_eq!(
            std::fs::read(data.join("base/1/1259")).unwrap(),
            b"restored"
        );
        // Nothing existing is reached through a link that is not followed.
        symlink(&outside, data.join("global")).unwrap();
        assert!(tr.parent_existing("global/pg_control").unwrap().is_none());
    }

    #[test]
    fn a_link_loop_is_removed_and_open_dir_reports_eloop() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        symlink("loop", data.join("loop")).unwrap();
        let tr = tree(&data);
        let err = open_dir(tr.root.as_fd(), Path::new("loop")).unwrap_err();
        assert!(
            err.raw_os_error() == Some(libc::ELOOP) || err.raw_os_error() == Some(libc::ENOTDIR),
            "{err}"
        );
        let fd = tr.ensure_dir("loop/sub", 0o700).unwrap();
        drop(fd);
        assert!(std::fs::symlink_metadata(data.join("loop"))
            .unwrap()
            .file_type()
            .is_dir());
        assert!(data.join("loop/sub").is_dir());
    }

    #[test]
    fn remove_tree_unlinks_links_inside_without_descending() {
        let t = tempfile::tempdir().unwrap();
        let (data, outside) = (t.path().join("data"), t.path().join("outside"));
        std::fs::create_dir_all(data.join("x/y")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"keep").unwrap();
        symlink(&outside, data.join("x/y/link")).unwrap();
        let tr = tree(&data);
        remove_tree(tr.root.as_fd(), Path::new("x")).unwrap();
        assert!(!data.join("x").exists());
        assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep");
    }

    #[test]
    fn a_fifo_or_hard_link_where_a_file_goes_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let other = t.path().join("other");
        std::fs::write(&other, b"other").unwrap();
        std::fs::hard_link(&other, data.join("hard")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            data.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let tr = tree(&data);
        for n in ["hard", "fifo"] {
            write_file(tr.root.as_fd(), Path::new(n), b"new", 0o600, None).unwrap();
            assert_eq!(std::fs::read(data.join(n)).unwrap(), b"new");
        }
        assert_eq!(std::fs::read(&other).unwrap(), b"other");
    }

    #[test]
    fn a_root_linked_from_another_users_directory_is_refused() {
        use std::os::unix::fs::chown;
        let t = tempfile::tempdir().unwrap();
        let (theirs, real) = (t.path().join("theirs"), t.path().join("real"));
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::create_dir_all(&real).unwrap();
        symlink(&real, theirs.join("main")).unwrap();
        let me = crate::pg::instance::current_uid();
        // In a directory of our own, the operator's link is followed.
        open_root_checked(&theirs.join("main"), me).unwrap();
        // In someone else's (not root's), it is refused.
        let other = if me == 0 { 65534 } else { me };
        if me == 0 {
            chown(&theirs, Some(other), Some(other)).unwrap();
            let err = open_root_checked(&theirs.join("main"), me).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        }
        // A real directory is fine wherever it is.
        open_root_checked(&real, me).unwrap();
    }

    #[test]
    fn a_link_higher_up_in_another_users_directory_is_refused_and_nothing_is_created() {
        use std::os::unix::fs::chown;
        let me = crate::pg::instance::current_uid();
        if me != 0 {
            return; // needs a directory of another user
        }
        let t = tempfile::tempdir().unwrap();
        let (theirs, victim) = (t.path().join("theirs"), t.path().join("victim"));
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::create_dir_all(victim.join("main")).unwrap();
        symlink(&victim, theirs.join("15")).unwrap();
        chown(&theirs, Some(65534), Some(65534)).unwrap();
        for p in [theirs.join("15/main"), theirs.join("15/new")] {
            let err = open_root_checked(&p, me).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("symbolic link {}", theirs.join("15").display())),
                "names the link by its whole path: {err}"
            );
            let err = create_root_checked(&p, me, 0o700).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        }
        assert!(!victim.join("new").exists());
        // The operator's own link, higher up, is followed.
        let mine = t.path().join("mine");
        symlink(&victim, &mine).unwrap();
        let (_, created) = create_root_checked(&mine.join("new"), me, 0o700).unwrap();
        assert!(created && victim.join("new").is_dir());
    }

    #[test]
    fn a_link_in_a_sticky_shared_directory_is_followed_only_when_it_is_ours() {
        use std::os::unix::fs::{lchown, PermissionsExt};
        let me = crate::pg::instance::current_uid();
        if me != 0 {
            return; // needs a link owned by another user
        }
        let t = tempfile::tempdir().unwrap();
        let (shared, victim) = (t.path().join("tmp"), t.path().join("victim"));
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        symlink(&victim, shared.join("restore")).unwrap();
        open_root_checked(&shared.join("restore"), me).unwrap();
        lchown(shared.join("restore"), Some(65534), Some(65534)).unwrap();
        let err = open_root_checked(&shared.join("restore"), me).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // Not sticky: anyone could have replaced even our link.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        lchown(shared.join("restore"), Some(0), Some(0)).unwrap();
        let err = open_root_checked(&shared.join("restore"), me).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    }

    #[test]
    fn roots_resolve_like_the_kernel_through_trusted_links() {
        let t = tempfile::tempdir().unwrap();
        let me = crate::pg::instance::current_uid();
        let real = t.path().join("a/b");
        std::fs::create_dir_all(&real).unwrap();
        // A chain of links, relative and absolute, and `..` after a link (physical, as the
        // kernel takes it).
        symlink("a/b", t.path().join("rel")).unwrap();
        symlink(t.path().join("rel"), t.path().join("abs")).unwrap();
        let (fd, created) = create_root_checked(&t.path().join("abs/../b/c/d"), me, 0o700).unwrap();
        assert!(created && real.join("c/d").is_dir());
        assert_eq!(
            rfs::fstat(&fd).unwrap().st_ino,
            std::fs::metadata(real.join("c/d")).unwrap().ino()
        );
        let (_, created) = create_root_checked(&real.join("c/d"), me, 0o700).unwrap();
        assert!(!created);
        // A file on the way is not a directory; a loop ends.
        std::fs::write(t.path().join("f"), b"").unwrap();
        assert_eq!(
            open_root_checked(&t.path().join("f/x"), me)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOTDIR)
        );
        symlink("loop", t.path().join("loop")).unwrap();
        assert_eq!(
            open_root_checked(&t.path().join("loop"), me)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ELOOP)
        );
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        for p in ["../x", "a/../b", "/etc/passwd", "a//b", "", "./a"] {
            assert!(components(p).is_err(), "{p}");
        }
        assert_eq!(components("base/1/2").unwrap(), vec!["base", "1", "2"]);
    }
}
