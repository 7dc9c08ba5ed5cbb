//! Configuration files that live outside the data directory, kept with each backup.
//!
//! Why: on Debian and Ubuntu (`pg_createcluster`) `postgresql.conf`, `pg_hba.conf`,
//! `pg_ident.conf` and `conf.d/*.conf` live in `/etc/postgresql/<major>/<cluster>/`, not in
//! the data directory, so a backup of the data directory alone restores a cluster without its
//! tuning and its authentication rules: after losing the host, those are what the DBA no
//! longer has. Barman copies them with each backup; pgBackRest does not (its users keep asking).
//!
//! What: at the end of a backup, the files PostgreSQL names in `config_file`, `hba_file` and
//! `ident_file`, and every file `pg_file_settings` lists as a source (the `include`,
//! `include_if_exists` and `include_dir` files, readable by superusers and
//! `pg_read_all_settings`), where they lie outside the data directory: each read whole (at most
//! [`MAX_FILE_BYTES`], [`MAX_FILES`] of them) into the manifest, which is encrypted and
//! authenticated like everything else. Files inside the data directory are backed up as
//! files already. Failures to read one are warnings: the backup of the data does not depend on
//! them.
//!
//! Restore: never written unless asked, since they belong to the host, not the data directory.
//! `restore --config-dir DIR` writes each under `DIR` at its recorded absolute path
//! (`DIR/etc/postgresql/15/main/pg_hba.conf`), with its recorded mode and the data directory's
//! owner; `--config-dir /` puts them back in place on a rebuilt host. An existing file is never
//! overwritten (the restore refuses before writing anything, naming it), and no symbolic link
//! below `DIR` is followed (a directory of `/etc/postgresql` owned by `postgres` must not let
//! that user steer a root restore elsewhere): missing directories are created, a link on the
//! way is refused.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest configuration file kept (a `postgresql.conf` is tens of KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most configuration files kept per backup.
pub const MAX_FILES: usize = 64;

/// One configuration file from outside the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Its absolute path on the backed-up host.
    pub path: PathBuf,
    /// What named it: `config_file`, `hba_file`, `ident_file` or `include`.
    pub named_by: String,
    /// Permission bits.
    pub mode: u32,
    /// Its contents, base64.
    pub contents: String,
}

impl ConfigFile {
    /// The decoded contents.
    pub fn bytes(&self) -> Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.contents)
            .map_err(|e| {
                corrupt(format!(
                    "configuration file {} in the manifest: {e}",
                    self.path.display()
                ))
            })
    }
}

/// The configuration files of the cluster `client` is connected to that lie outside
/// `pgdata`; see the module docs. Never fails: what cannot be read is a warning.
pub async fn collect(client: &tokio_postgres::Client, pgdata: &Path) -> Vec<ConfigFile> {
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    match client
        .query(
            "select name, setting from pg_settings \
             where name in ('config_file', 'hba_file', 'ident_file') order by name",
            &[],
        )
        .await
    {
        Ok(rows) => named.extend(
            rows.iter()
                .map(|r| (r.get::<_, String>(0), PathBuf::from(r.get::<_, String>(1)))),
        ),
        Err(e) => tracing::warn!("reading the configuration file settings: {e}"),
    }
    // Included files: readable by superusers and pg_read_all_settings only; without it the
    // three above are kept.
    if let Ok(rows) = client
        .query(
            "select distinct sourcefile from pg_file_settings where sourcefile is not null \
             order by 1",
            &[],
        )
        .await
    {
        named.extend(
            rows.iter()
                .map(|r| ("include".to_string(), PathBuf::from(r.get::<_, String>(0)))),
        );
    }
    let data = std::fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf());
    let mut out: Vec<ConfigFile> = Vec::new();
    for (named_by, path) in named {
        let Ok(real) = std::fs::canonicalize(&path) else {
            tracing::warn!(
                "configuration file {} ({named_by}) could not be found: not kept with the backup",
                path.display()
            );
            continue;
        };
        if real.starts_with(&data) || out.iter().any(|f| f.path == path) {
            continue;
        }
        if out.len() == MAX_FILES {
            tracing::warn!(
                "more than {MAX_FILES} configuration files outside the data directory: {} and \
                 the rest are not kept with the backup",
                path.display()
            );
            break;
        }
        match read_one(&path) {
            Ok((mode, bytes)) => out.push(ConfigFile {
                path,
                named_by,
                mode,
                contents: base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
            Err(why) => tracing::warn!(
                "configuration file {} ({named_by}) not kept with the backup: {why}",
                path.display()
            ),
        }
    }
    out
}

fn read_one(path: &Path) -> std::result::Result<(u32, Vec<u8>), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} kept",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Ok((meta.mode() & 0o7777, bytes))
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        object: "manifest".into(),
        detail,
    }
}

/// Where `f` goes under `dir`, refusing a recorded path that is not absolute or has `..`
/// (the manifest is authenticated; this is a second line of defence).
fn destination(dir: &Path, f: &ConfigFile) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    let mut comps = f.path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(corrupt(format!(
            "configuration file {} in the manifest is not an absolute path",
            f.path.display()
        )));
    }
    for c in comps {
        match c {
            Component::Normal(n) => rel.push(n),
            _ => {
                return Err(corrupt(format!(
                    "configuration file {} in the manifest is not a plain path",
                    f.path.display()
                )))
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(corrupt("a configuration file named /".into()));
    }
    Ok(dir.join(rel))
}

/// Checks, before a restore writes anything, that none of `files` exists under `dir` and that
/// `dir` is absolute.
pub fn check_free(dir: &Path, files: &[ConfigFile]) -> Result<()> {
    if !dir.is_absolute() {
        return Err(Error::Config(format!(
            "--config-dir {}: give an absolute path",
            dir.display()
        )));
    }
    for f in files {
        let dest = destination(dir, f)?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            return Err(Error::Config(format!(
                "--config-dir {}: {} exists; the restore never overwrites a configuration file. \
                 Move it away, or give another --config-dir and compare",
                dir.display(),
                dest.display()
            )));
        }
    }
    Ok(())
}

/// Writes `files` under `dir` (see the module docs); returns where each went.
pub fn write_all(
    dir: &Path,
    files: &[ConfigFile],
    owner: Option<(u32, u32)>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let root =
        crate::fs_beneath::open_root(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let mut written = Vec::new();
    for f in files {
        let dest = destination(dir, f)?;
        let io = |e: std::io::Error| Error::io(dest.display().to_string(), e);
        let rel = dest.strip_prefix(dir).expect("made under dir");
        let (name, parents) = {
            let mut parts: Vec<&std::ffi::OsStr> = rel.iter().collect();
            let name = parts.pop().expect("not empty");
            (name, parts)
        };
        let mut at: OwnedFd = root.try_clone().map_err(io)?;
        for p in parents {
            at = descend(&at, Path::new(p), owner).map_err(|e| {
                Error::Config(format!(
                    "writing configuration file {}: {}: {e}",
                    dest.display(),
                    Path::new(p).display()
                ))
            })?;
        }
        let fd = rfs::openat(
            &at,
            Path::new(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| {
            io(if e == Errno::EXIST {
                std::io::Error::other(
                    "it exists; the restore never overwrites a configuration file",
                )
            } else {
                e.into()
            })
        })?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&f.bytes()?).map_err(io)?;
        crate::fs_beneath::set_owner_mode(file.as_fd(), owner, f.mode & 0o777).map_err(io)?;
        file.sync_all().map_err(io)?;
        rfs::fsync(&at).map_err(|e| io(e.into()))?;
        written.push(dest);
    }
    Ok(written)
}

/// The directory `name` in `at`, created (mode 0755, given to `owner`) when missing; a
/// symbolic link or anything else there is refused, not followed or replaced.
fn descend(at: &OwnedFd, name: &Path, owner: Option<(u32, u32)>) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(at, name, flags, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
            return Err(std::io::Error::other(
                "is a symbolic link or not a directory: not followed",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    match rfs::mkdirat(at, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rfs::openat(at, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => {
            std::io::Error::other("is a symbolic link or not a directory: not followed")
        }
        e => e.into(),
    })?;
    crate::fs_beneath::set_owner_mode(fd.as_fd(), owner, 0o755)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, body: &[u8]) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from(path),
            named_by: "hba_file".into(),
            mode: 0o640,
            contents: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    #[test]
    fn files_are_written_at_their_path_under_the_directory_and_never_over_one() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let files = [
            file(
                "/etc/postgresql/15/main/pg_hba.conf",
                b"local all all peer\n",
            ),
            file(
                "/etc/postgresql/15/main/conf.d/tune.conf",
                b"work_mem = '8MB'\n",
            ),
        ];
        check_free(t.path(), &files).unwrap();
        let written = write_all(t.path(), &files, None).unwrap();
        let hba = t.path().join("etc/postgresql/15/main/pg_hba.conf");
        assert_eq!(written[0], hba);
        assert_eq!(std::fs::read(&hba).unwrap(), b"local all all peer\n");
        assert_eq!(
            std::fs::metadata(&hba).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            std::fs::read(t.path().join("etc/postgresql/15/main/conf.d/tune.conf")).unwrap(),
            b"work_mem = '8MB'\n"
        );
        let err = check_free(t.path(), &files).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        assert!(write_all(t.path(), &files, None).is_err());
        assert_eq!(std::fs::read(&hba).unwrap(), b"local all all peer\n");
    }

    #[test]
    fn a_link_on_the_way_is_refused_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (dir, elsewhere) = (t.path().join("dir"), t.path().join("elsewhere"));
        std::fs::create_dir_all(dir.join("etc/postgresql")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("etc/postgresql/15")).unwrap();
        let files = [file("/etc/postgresql/15/main/pg_hba.conf", b"x")];
        let err = write_all(&dir, &files, None).unwrap_err();
        assert!(err.to_string().contains("not followed"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn recorded_paths_that_are_not_plain_and_absolute_are_refused() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["etc/x.conf", "/etc/../x.conf", "/"] {
            assert!(destination(t.path(), &file(bad, b"")).is_err(), "{bad}");
        }
    }
}
