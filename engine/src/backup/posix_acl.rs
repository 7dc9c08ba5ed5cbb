//! POSIX access ACLs, for [`super::owner_reads`]: whether the data directory's owner could
//! read a file, or search or list a directory, when the entry has an ACL.
//!
//! With an ACL the kernel ignores the permission bits and evaluates the ACL instead: a file
//! of mode 0644 whose ACL has `user:postgres:---` is closed to `postgres`, and one of mode
//! 0600 whose ACL has `group:backup:r--` is open to members of `backup`. Judged by its bits
//! alone, the first would be taken for the owner from a root backup (and restored into a
//! directory the owner controls), the second left out. The ACL is the extended attribute
//! `system.posix_acl_access`, in the kernel's format (`include/uapi/linux/posix_acl_xattr.h`),
//! and it is evaluated as the kernel's `posix_acl_permission` does.
//!
//! The kernel consults the ACL only when the group bits of the mode (the ACL's mask) are not
//! all clear; so does this. An opened file's attribute is read from its descriptor. The walk
//! holds `O_PATH` descriptors, on which `fgetxattr` is refused, so theirs is read through
//! `/proc/self/fd/N`, which names exactly the entry the descriptor holds (a link's own, not
//! its target's). On a file system without ACLs the bits decide; without `/proc` they decide
//! for directories on the walk, and the backup warns once that ACLs are not seen there. An
//! attribute that cannot be read for any other reason (a security module, an I/O error), or
//! is not a valid ACL, grants nothing.

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::io::Errno;

/// The access ACL's extended attribute.
const ACCESS_ACL: &str = "system.posix_acl_access";
/// The only version of the format.
const VERSION: u32 = 2;

pub(crate) const USER_OBJ: u16 = 0x01;
pub(crate) const USER: u16 = 0x02;
pub(crate) const GROUP_OBJ: u16 = 0x04;
pub(crate) const GROUP: u16 = 0x08;
pub(crate) const MASK: u16 = 0x10;
pub(crate) const OTHER: u16 = 0x20;

/// One entry: tag, permission bits (read 4, write 2, execute/search 1), user or group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An access ACL, its entries in the order stored (the kernel keeps them sorted by tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

/// What reading an entry's ACL found.
#[derive(Debug)]
pub enum Found {
    /// It has none (or the file system has no ACLs): its bits decide.
    None,
    /// It could not be looked at: an `O_PATH` descriptor and no `/proc` to read it through.
    /// Its bits decide ([`super::owner_reads::OwnerReads::of`] warns once that ACLs are not
    /// seen).
    NoProc,
    /// Its ACL.
    Acl(Acl),
    /// An attribute that is not a valid ACL (or one too long to read): nothing is granted.
    Invalid,
}

/// The access ACL of the entry `fd` holds: read from the descriptor, or for an `O_PATH` one
/// (refused by `fgetxattr`) through `/proc/self/fd/N`, which names that very entry.
pub fn of(fd: &OwnedFd) -> Found {
    // 4 KiB holds about 500 entries; the kernel's limit for ext4 is 32 in-inode (more in a
    // block, up to a page). A longer ACL is refused (`ERANGE`) and grants nothing.
    let mut buf = [0u8; 4096];
    let read = match rustix::fs::fgetxattr(fd, ACCESS_ACL, &mut buf[..]) {
        Err(Errno::BADF) => {
            let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
            match rustix::fs::getxattr(path.as_str(), ACCESS_ACL, &mut buf[..]) {
                Err(Errno::NOENT) => return Found::NoProc,
                other => other,
            }
        }
        other => other,
    };
    match read {
        Ok(n) => parse(&buf[..n]).map_or(Found::Invalid, Found::Acl),
        // No ACL, or none on this file system.
        Err(Errno::NODATA) | Err(Errno::OPNOTSUPP) => Found::None,
        // Too long, refused by a security module, an I/O error: nothing is granted.
        Err(_) => Found::Invalid,
    }
}

/// Whether ACLs can be read through `/proc` here (the walk's `O_PATH` descriptors need it).
pub fn readable_through_proc() -> bool {
    std::path::Path::new("/proc/self/fd").is_dir()
}

/// The ACL in `raw`, or `None` if it is not one (length, version or tag).
fn parse(raw: &[u8]) -> Option<Acl> {
    if raw.len() < 4 || !(raw.len() - 4).is_multiple_of(8) {
        return None;
    }
    if u32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) != VERSION {
        return None;
    }
    let entries: Vec<Entry> = raw[4..]
        .chunks_exact(8)
        .map(|e| Entry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect();
    entries
        .iter()
        .all(|e| [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag))
        .then_some(Acl(entries))
}

impl Acl {
    /// Whether a process of `uid` in `gids` has all of `want` on an entry of `owner` and
    /// `group` with this ACL (the kernel's `posix_acl_permission`).
    pub fn grants(&self, uid: u32, gids: &[u32], owner: u32, group: u32, want: u16) -> bool {
        let entries = &self.0;
        let mut found = false;
        for (i, e) in entries.iter().enumerate() {
            let masked = match e.tag {
                USER_OBJ if uid == owner => return e.perm & want == want,
                USER if e.id == uid => true,
                GROUP_OBJ if gids.contains(&group) => {
                    found = true;
                    e.perm & want == want
                }
                GROUP if gids.contains(&e.id) => {
                    found = true;
                    e.perm & want == want
                }
                OTHER => return !found && e.perm & want == want,
                _ => false,
            };
            if masked {
                // The mask, if any, bounds what a named user or any group entry grants.
                return match entries[i + 1..].iter().find(|m| m.tag == MASK) {
                    Some(m) => e.perm & m.perm & want == want,
                    None => e.perm & want == want,
                };
            }
        }
        // No OTHER entry: the kernel answers EIO; nothing is granted.
        false
    }
}

/// Test helpers: ACLs in the kernel's format, set on files.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::{GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};

    /// The id of entries that name nobody.
    pub const ANY: u32 = u32::MAX;

    /// `entries` (tag, permission bits, id) as the extended attribute holds them.
    pub fn encode(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut raw = super::VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            raw.extend(tag.to_le_bytes());
            raw.extend(perm.to_le_bytes());
            raw.extend(id.to_le_bytes());
        }
        raw
    }

    /// Sets the access ACL of `path`; false where the file system has no ACLs.
    pub fn set(path: &std::path::Path, entries: &[(u16, u16, u32)]) -> bool {
        rustix::fs::setxattr(
            path,
            super::ACCESS_ACL,
            &encode(entries),
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{encode, ANY};
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        parse(&encode(entries)).unwrap()
    }

    const R: u16 = 4;
    const X: u16 = 1;

    #[test]
    fn the_acl_decides_as_the_kernel_does() {
        // 0644 with user:105:--- : closed to uid 105, open to others.
        let a = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 0, 105),
            (GROUP_OBJ, R, ANY),
            (MASK, R, ANY),
            (OTHER, R, ANY),
        ]);
        assert!(!a.grants(105, &[105], 0, 0, R));
        assert!(a.grants(106, &[106], 0, 0, R));
        assert!(a.grants(0, &[0], 0, 0, R), "the owning user");
        // 0600 with group:110:r-x and a mask r-x: open to a member of 110, to read and search.
        let b = acl(&[
            (USER_OBJ, 6, ANY),
            (GROUP_OBJ, 0, ANY),
            (GROUP, R | X, 110),
            (MASK, R | X, ANY),
            (OTHER, 0, ANY),
        ]);
        assert!(b.grants(105, &[105, 110], 0, 0, R | X));
        assert!(!b.grants(105, &[105], 0, 0, R));
        // The mask bounds a named group: r-x granted, mask --x.
        let c = acl(&[
            (USER_OBJ, 6, ANY),
            (GROUP_OBJ, 0, ANY),
            (GROUP, R | X, 110),
            (MASK, X, ANY),
            (OTHER, 0, ANY),
        ]);
        assert!(!c.grants(105, &[110], 0, 0, R));
        assert!(c.grants(105, &[110], 0, 0, X));
        // A matching group that does not grant, and none that does: OTHER is not consulted.
        let d = acl(&[
            (USER_OBJ, 6, ANY),
            (GROUP_OBJ, 0, ANY),
            (MASK, 7, ANY),
            (OTHER, R, ANY),
        ]);
        assert!(
            !d.grants(105, &[7], 0, 7, R),
            "in the owning group, which has ---"
        );
        assert!(d.grants(105, &[8], 0, 7, R), "in no group named: other");
    }

    #[test]
    fn an_attribute_that_is_no_acl_is_refused() {
        assert!(parse(&[2, 0, 0, 0, 1]).is_none());
        assert!(parse(&[3, 0, 0, 0]).is_none());
        let mut raw = VERSION.to_le_bytes().to_vec();
        raw.extend([0x40, 0, 4, 0, 0, 0, 0, 0]);
        assert!(parse(&raw).is_none());
        // No OTHER entry: nothing granted.
        assert!(!acl(&[(USER_OBJ, 6, ANY)]).grants(105, &[105], 0, 0, R));
    }

    #[test]
    fn an_acl_set_on_a_file_is_read_through_its_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let path_fd = |p: &std::path::Path| {
            rustix::fs::open(
                p,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .unwrap()
        };
        let (f, g) = (d.path().join("f"), d.path().join("g"));
        std::fs::write(&f, "x").unwrap();
        std::fs::write(&g, "x").unwrap();
        let set = super::testing::set(
            &f,
            &[
                (USER_OBJ, 6, ANY),
                (USER, 0, 105),
                (GROUP_OBJ, R, ANY),
                (MASK, R, ANY),
                (OTHER, R, ANY),
            ],
        );
        if set {
            match of(&path_fd(&f)) {
                Found::Acl(a) => assert!(!a.grants(105, &[105], 0, 0, R)),
                other => panic!("{other:?}"),
            }
        } else {
            eprintln!("no ACLs on this file system: only reading none is tested");
        }
        assert!(matches!(of(&path_fd(&g)), Found::None));
    }
}
