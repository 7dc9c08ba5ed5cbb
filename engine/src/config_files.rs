//! Configuration files that live outside the data directory, kept with each backup.
//!
//! Why: on Debian and Ubuntu (`pg_createcluster`) `postgresql.conf`, `pg_hba.conf`,
//! `pg_ident.conf` and `conf.d/*.conf` live in `/etc/postgresql/<major>/<cluster>/`, not in
//! the data directory, so a backup of the data directory alone restores a cluster without its
//! tuning and its authentication rules: after losing the host, those are what the DBA no
//! longer has. Barman copies them with each backup; pgBackRest does not (its users keep asking).
//!
//! What: at the end of a backup, the files PostgreSQL names in `config_file`, `hba_file` and
//! `ident_file` (relative ones are relative to the data directory, as PostgreSQL takes them),
//! and the files `config_file` pulls in with `include`, `include_if_exists` and `include_dir`
//! (read from the files themselves, [`includes`], so no privilege beyond the backup role's
//! is needed: `pg_file_settings` is for superusers only), where they lie outside the data
//! directory, both as PostgreSQL names them and as their links resolve (one inside is a file
//! of the backup already). Each is read whole into the manifest, which is encrypted and
//! authenticated like everything else: at most [`MAX_FILE_BYTES`] each, [`MAX_FILES`] files
//! and [`MAX_TOTAL_BYTES`] in all, since the manifest's head is read by `info` and every
//! restore. A file that cannot be read or is over a bound is a warning: the backup of the data
//! does not depend on it.
//!
//! Reading as root: the backup may run as root while `/etc/postgresql/...` belongs to
//! `postgres`, who could replace `pg_hba.conf` with a link to `/etc/shadow` and have it copied
//! into the repository, then restored as their own. So each file is opened once (not blocking,
//! so a FIFO cannot stall the backup), checked on the open descriptor (a regular file) and,
//! when running as root, kept only if the data directory's owner could reach and read it
//! (every directory on the way, links followed, [`crate::backup::owner_reads`]): what
//! PostgreSQL itself could read, no more.
//!
//! Restore: never written unless asked, since they belong to the host, not the data directory.
//! `restore --config-dir DIR` writes each under `DIR` at its recorded absolute path
//! (`DIR/etc/postgresql/15/main/pg_hba.conf`) with its recorded mode (permission bits only)
//! and, run as root, its recorded owner; `--config-dir /` puts them back in place on a
//! rebuilt host. An existing file is never overwritten: one with the same contents counts as
//! written (a restore run again), any other makes the restore refuse before it writes
//! anything, naming it. No symbolic link below `DIR` is followed (a directory of
//! `/etc/postgresql` owned by `postgres` must not steer a root restore elsewhere): a link or a
//! file on the way is refused, by the same walk before anything is written and while writing.
//! Directories the restore creates take the owner of the file it creates them for;
//! existing ones are left as they are.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::backup::owner_reads::{OwnerReads, Reached};
use crate::error::{Error, Result};

/// Largest configuration file kept (a `postgresql.conf` is tens of KiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most configuration files kept per backup.
pub const MAX_FILES: usize = 64;
/// Most bytes of configuration files kept per backup, all together.
pub const MAX_TOTAL_BYTES: u64 = 4 << 20;
/// How deep `include` may nest before the rest is not followed (PostgreSQL stops at 10).
const MAX_INCLUDE_DEPTH: usize = 10;

/// One configuration file from outside the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// Its absolute path on the backed-up host.
    pub path: PathBuf,
    /// What named it: `config_file`, `hba_file`, `ident_file` or `include`.
    pub named_by: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
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
        Ok(rows) => named.extend(rows.iter().map(|r| {
            // PostgreSQL takes relative paths as relative to the data directory. Resolved
            // lexically: the file read is the one recorded (see `relative`).
            (
                r.get::<_, String>(0),
                lexical(&pgdata.join(r.get::<_, String>(1))),
            )
        })),
        Err(e) => tracing::warn!(
            "reading the configuration file settings: {e}; no configuration file from \
             outside the data directory is kept with this backup"
        ),
    }
    let reader = Reader::new(pgdata);
    let mut out: Vec<ConfigFile> = Vec::new();
    let mut total = 0u64;
    let mut queue: Vec<(String, PathBuf, usize)> =
        named.into_iter().rev().map(|(n, p)| (n, p, 0)).collect();
    // Each file read once: an include cycle (or a file included twice) is not read again.
    let mut seen = std::collections::HashSet::new();
    while let Some((named_by, path, depth)) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let read = match reader.read(&path) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(
                    "configuration file {} ({named_by}) not kept with the backup: {why}",
                    path.display()
                );
                continue;
            }
        };
        if named_by == "config_file" || named_by == "include" {
            if depth < MAX_INCLUDE_DEPTH {
                let found = includes(&path, &String::from_utf8_lossy(&read.bytes));
                queue.extend(
                    found
                        .into_iter()
                        .rev()
                        .map(|p| ("include".to_string(), p, depth + 1)),
                );
            } else {
                tracing::warn!(
                    "{}: includes nested more than {MAX_INCLUDE_DEPTH} deep are not followed",
                    path.display()
                );
            }
        }
        if read.outside {
            let size = read.bytes.len() as u64;
            if out.len() == MAX_FILES || total + size > MAX_TOTAL_BYTES {
                tracing::warn!(
                    "configuration file {} not kept with the backup: past the bound of \
                     {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes kept per backup",
                    path.display()
                );
                continue;
            }
            total += size;
            out.push(ConfigFile {
                path,
                named_by,
                mode: read.mode,
                uid: read.uid,
                gid: read.gid,
                contents: base64::engine::general_purpose::STANDARD.encode(&read.bytes),
            });
        }
    }
    out
}

/// What [`Reader::read`] found.
struct Read1 {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Outside the data directory (to be kept); inside ones are read for their includes.
    outside: bool,
}

/// Reads configuration files the way the module docs say.
struct Reader {
    pgdata: PathBuf,
    pgdata_real: PathBuf,
    /// What the data directory's owner could read bounds what is read, when another user
    /// (root) runs the backup.
    owner_reads: OwnerReads,
}

impl Reader {
    fn new(pgdata: &Path) -> Self {
        let owner_reads = OwnerReads::of(pgdata, crate::pg::instance::current_uid())
            .unwrap_or_else(|_| OwnerReads::unchecked());
        Reader {
            pgdata: pgdata.to_path_buf(),
            pgdata_real: std::fs::canonicalize(pgdata).unwrap_or_else(|_| pgdata.to_path_buf()),
            owner_reads,
        }
    }

    /// Reads `path` (following links, as PostgreSQL does); an error is the reason it is not
    /// kept.
    fn read(&self, path: &Path) -> std::result::Result<Read1, String> {
        let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
        let outside = !path.starts_with(&self.pgdata) && !real.starts_with(&self.pgdata_real);
        let file = match self
            .owner_reads
            .open_file(path)
            .map_err(|e| e.to_string())?
        {
            Reached::File(f) => f,
            Reached::Refused(why) => {
                return Err(format!(
                    "{why}; a backup run as another user keeps only what PostgreSQL itself can \
                     read"
                ))
            }
        };
        let st = rfs::fstat(&file).map_err(|e| e.to_string())?;
        let mode = st.st_mode & 0o7777;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!(
                "more than the {MAX_FILE_BYTES} bytes kept per file"
            ));
        }
        Ok(Read1 {
            bytes,
            mode,
            uid: st.st_uid,
            gid: st.st_gid,
            outside,
        })
    }
}

/// The files `include`, `include_if_exists` and `include_dir` directives of the configuration
/// file `file` (contents `text`) name, relative ones relative to its directory; an
/// `include_dir`'s `*.conf` files (not starting with `.`) in name order, as PostgreSQL reads
/// them.
pub fn includes(file: &Path, text: &str) -> Vec<PathBuf> {
    let base = file.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(d) = Setting::include(line) else {
            continue;
        };
        let target = lexical(&base.join(&d.value));
        if d.key.eq_ignore_ascii_case("include_dir") {
            let Ok(entries) = std::fs::read_dir(&target) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy())
                        .is_some_and(|n| n.ends_with(".conf") && !n.starts_with('.'))
                })
                .collect();
            names.sort();
            out.extend(names);
        } else {
            out.push(target);
        }
    }
    out
}

/// One `name = value` line of a configuration file.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting<'a> {
    /// The setting's name, or `include`, `include_if_exists`, `include_dir`.
    pub key: &'a str,
    /// Its value, unquoted.
    pub value: String,
    /// What follows the value on the line (spaces, a comment).
    pub rest: &'a str,
}

impl<'a> Setting<'a> {
    /// The setting on `line` (PostgreSQL's syntax: `name value` or `name = value`, the value
    /// quoted or a bare word), or `None` for a comment, a blank or malformed line.
    pub fn parse(line: &'a str) -> Option<Self> {
        let line = line.trim_start();
        // A name: a letter or `_`, then letters, digits, `_` and `.` (qualified names).
        let end = line
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.' || !c.is_ascii()))
            .unwrap_or(line.len());
        let key = &line[..end];
        if !key.starts_with(|c: char| c.is_alphabetic() || c == '_' || !c.is_ascii()) {
            return None;
        }
        let after = &line[end..];
        // The name ends at a space, `=` or the quote of a value, nothing else.
        if !after.starts_with(|c: char| c.is_whitespace() || c == '=' || c == '\'') {
            return None;
        }
        let rest = after.trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        let (value, used) = quoted(rest)?;
        Some(Setting {
            key,
            value,
            rest: &rest[used..],
        })
    }

    /// Whether this is the setting `name` (PostgreSQL compares names case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        self.key.eq_ignore_ascii_case(name)
    }

    /// An `include`, `include_if_exists` or `include_dir` line on `line`.
    pub fn include(line: &'a str) -> Option<Self> {
        Self::parse(line)
            .filter(|s| s.is("include") || s.is("include_if_exists") || s.is("include_dir"))
    }

    /// The line again with `value` in place of the one it had.
    pub fn with_value(&self, value: &str) -> String {
        format!("{} = {}{}", self.key, quote(value), self.rest)
    }
}

/// The data directory the configuration text `text` names: its last absolute
/// `data_directory` line (the one in force, of those in it).
pub fn data_directory(text: &str) -> Option<String> {
    text.lines()
        .filter_map(Setting::parse)
        .rfind(|s| s.is("data_directory") && s.value.starts_with('/'))
        .map(|s| s.value)
}

/// Settings that name places on the host. A server started on a copy of the configuration
/// that keeps them uses the backed-up host's files and directories (Barman warns about much
/// the same list after a recovery).
const HOST_PATH_SETTINGS: &[&str] = &[
    "hba_file",
    "ident_file",
    "external_pid_file",
    "include",
    "include_dir",
    "include_if_exists",
    "log_directory",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_crl_dir",
    "ssl_crl_file",
    "ssl_dh_params_file",
    "ssl_key_file",
    "stats_temp_directory",
    "unix_socket_directories",
];

/// What to review in `files` once written under `dir` for the data directory `target`:
/// a `data_directory` that is not `target` (a server started on the file would run that
/// directory, not the restored one), and, unless `dir` is `/`, the absolute paths of the
/// backed-up host the files name. One line each, naming the written file.
pub fn review(files: &[ConfigFile], dir: &Path, target: &Path) -> Vec<String> {
    let in_place = dir == Path::new("/");
    let mut out = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.named_by == "config_file" || f.named_by == "include")
    {
        let written = dir.join(f.path.strip_prefix("/").unwrap_or(&f.path));
        let Ok(bytes) = f.bytes() else { continue };
        let text = String::from_utf8_lossy(&bytes);
        let host_paths: Vec<String> = text
            .lines()
            .filter_map(Setting::parse)
            .filter(|s| {
                !in_place && s.value.starts_with('/') && HOST_PATH_SETTINGS.iter().any(|n| s.is(n))
            })
            .map(|s| format!("{} = {}", s.key, quote(&s.value)))
            .collect();
        if let Some(value) = data_directory(&text) {
            if !crate::private_fs::same_path(Path::new(&value), target) {
                let restored = crate::pg::instance::sh_quote(&target.to_string_lossy());
                out.push(format!(
                    "{}: data_directory = {}, not the restored {}: a server started on this \
                     file runs that directory. Edit it, or start with -c data_directory={restored}",
                    written.display(),
                    quote(&value),
                    target.display(),
                ));
            }
        }
        if !host_paths.is_empty() {
            out.push(format!(
                "{} names paths of the backed-up host ({}): edit them before a server starts \
                 on it (--config-dir / puts the files back where these paths point)",
                written.display(),
                host_paths.join(", ")
            ));
        }
    }
    out
}

pub use crate::pg::guc::quote;

/// The value of a single-quoted configuration value (`''` is a quote; backslash escapes as
/// PostgreSQL's `GUC_scanstr` reads them), or an unquoted word (a name, number or unquoted
/// string: PostgreSQL refuses one that starts with `/`), and how many bytes of `s` it took.
fn quoted(s: &str) -> Option<(String, usize)> {
    if !s.starts_with('\'') {
        if !s.starts_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '+')) {
            return None;
        }
        let word: String = s
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '#')
            .collect();
        let used = word.len();
        return Some((word, used));
    }
    let mut chars = s.char_indices().skip(1).peekable();
    let mut out = String::new();
    while let Some((_, c)) = chars.next() {
        match c {
            '\'' if chars.peek().map(|p| p.1) == Some('\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => {
                let used = chars.peek().map_or(s.len(), |p| p.0);
                return Some((out, used));
            }
            '\\' => {
                let (_, e) = chars.next()?;
                match e {
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8).expect("octal");
                        for _ in 0..2 {
                            match chars.peek().and_then(|p| p.1.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(v & 0xff).unwrap_or('?'));
                    }
                    other => out.push(other),
                }
            }
            c => out.push(c),
        }
    }
    None
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        object: "manifest".into(),
        detail,
    }
}

/// Where `f` goes under `dir`, as the components below `dir`, refusing a recorded path that
/// is not absolute or has `.` or `..` (the manifest is authenticated; this is a second line
/// of defence). Backups record each path resolved lexically and read the file at that path
/// ([`collect`]); a `..` here would be taken by the kernel after links, where the backup may
/// have read another file than the one the restore would write.
fn relative(f: &ConfigFile) -> Result<Vec<std::ffi::OsString>> {
    let mut comps = f.path.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(corrupt(format!(
            "configuration file {} in the manifest is not an absolute path",
            f.path.display()
        )));
    }
    let mut out = Vec::new();
    for c in comps {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            _ => {
                return Err(corrupt(format!(
                    "configuration file {} in the manifest is not a plain path",
                    f.path.display()
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(corrupt("a configuration file named /".into()));
    }
    Ok(out)
}

/// `path` made absolute (relative to `/`) and resolved lexically: `.` dropped, `..` removing
/// the component before it and never climbing above `/`. PostgreSQL opens the path as given,
/// and the kernel resolves `..` after links; configuration directories rarely hold links, and
/// this is the one path the copy can be written at.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// What is at a file's place under `--config-dir`, found without following links.
enum Place {
    /// Nothing yet (or a directory on the way is missing).
    Free,
    /// The same contents are there already.
    Same,
}

/// Looks at `f`'s place under `root` (never following a link); errors say what is in the way.
fn look(root: &OwnedFd, f: &ConfigFile, want: &[u8]) -> std::result::Result<Place, String> {
    let parts = relative(f).map_err(|e| e.to_string())?;
    let (name, parents) = parts.split_last().expect("not empty");
    let mut at = root.try_clone().map_err(|e| e.to_string())?;
    for p in parents {
        match rfs::openat(&at, Path::new(p), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => at = fd,
            Err(Errno::NOENT) => return Ok(Place::Free),
            Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                return Err(format!(
                    "{} is a symbolic link or not a directory: not followed",
                    Path::new(p).display()
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    match rfs::statat(&at, Path::new(name), AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(Place::Free),
        Err(e) => return Err(e.to_string()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
            return Err("it exists and is not a regular file".into())
        }
        Ok(_) => {}
    }
    let fd = rfs::openat(
        &at,
        Path::new(name),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let mut have = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut have)
        .map_err(|e| e.to_string())?;
    if have == want {
        Ok(Place::Same)
    } else {
        Err(
            "it exists with other contents; the restore never overwrites a configuration \
             file. Move it away, or give another --config-dir and compare"
                .into(),
        )
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Checks, before a restore writes anything, that every file of `files` can be written
/// under `dir` (absolute): nothing in the way, no link on the way; a file already there with
/// the same contents is fine.
pub fn check_free(dir: &Path, files: &[ConfigFile]) -> Result<()> {
    if !dir.is_absolute() {
        return Err(Error::Config(format!(
            "--config-dir {}: give an absolute path",
            dir.display()
        )));
    }
    let me = crate::pg::instance::current_uid();
    let root = match crate::fs_beneath::open_root_checked(dir, me) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir.display().to_string(), e)),
    };
    for f in files {
        look(&root, f, &f.bytes()?).map_err(|why| {
            Error::Config(format!(
                "--config-dir {}: {}: {why}",
                dir.display(),
                dir.join(f.path.strip_prefix("/").unwrap_or(&f.path))
                    .display()
            ))
        })?;
    }
    Ok(())
}

/// Writes `files` under `dir` (see the module docs), with their recorded owners when
/// `restore_owner`; returns where each is (also those found already written).
pub fn write_all(dir: &Path, files: &[ConfigFile], restore_owner: bool) -> Result<Vec<PathBuf>> {
    // Through links the running user or root made only ([`crate::fs_beneath`]).
    let me = crate::pg::instance::current_uid();
    let (root, _) = crate::fs_beneath::create_root_checked(dir, me, 0o755)
        .map_err(|e| Error::io(dir.display().to_string(), e))?;
    let mut written = Vec::new();
    for f in files {
        let parts = relative(f)?;
        let dest = parts.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
        let failed = |why: String| {
            Error::Config(format!(
                "writing configuration file {}: {why}{}",
                dest.display(),
                if written.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (written before it: {}; a restore run again takes them as written)",
                        written
                            .iter()
                            .map(|p: &PathBuf| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ))
        };
        let bytes = f.bytes()?;
        if let Place::Same = look(&root, f, &bytes).map_err(&failed)? {
            written.push(dest);
            continue;
        }
        let owner = restore_owner.then_some((f.uid, f.gid));
        let (name, parents) = parts.split_last().expect("not empty");
        let mut at: OwnedFd = root.try_clone().map_err(|e| failed(e.to_string()))?;
        for p in parents {
            at = descend(&at, Path::new(p), owner)
                .map_err(|e| failed(format!("{}: {e}", Path::new(p).display())))?;
        }
        let fd = rfs::openat(
            &at,
            Path::new(name),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| failed(e.to_string()))?;
        let mut file = std::fs::File::from(fd);
        let io = |e: std::io::Error| failed(e.to_string());
        file.write_all(&bytes).map_err(io)?;
        crate::fs_beneath::set_owner_mode(file.as_fd(), owner, f.mode).map_err(io)?;
        file.sync_all().map_err(io)?;
        rfs::fsync(&at).map_err(|e| io(e.into()))?;
        written.push(dest);
    }
    Ok(written)
}

/// The directory `name` in `at`, created (mode 0755, given to `owner`) when missing; a
/// symbolic link or anything else there is refused, not followed or replaced. A directory
/// that exists (or that someone else created meanwhile) is left as it is.
fn descend(at: &OwnedFd, name: &Path, owner: Option<(u32, u32)>) -> std::io::Result<OwnedFd> {
    let refused = || std::io::Error::other("is a symbolic link or not a directory: not followed");
    match rfs::openat(at, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::NOENT) => {}
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => return Err(refused()),
        Err(e) => return Err(e.into()),
    }
    let created = match rfs::mkdirat(at, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let fd = rfs::openat(at, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => refused(),
        e => e.into(),
    })?;
    if created {
        crate::fs_beneath::set_owner_mode(fd.as_fd(), owner, 0o755)?;
        rfs::fsync(at)?;
    }
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
            uid: 0,
            gid: 0,
            contents: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    #[test]
    fn files_are_written_at_their_path_under_the_directory_and_never_over_another() {
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
        let written = write_all(t.path(), &files, false).unwrap();
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
        // Run again: the same contents count as written.
        check_free(t.path(), &files).unwrap();
        assert_eq!(write_all(t.path(), &files, false).unwrap(), written);
        // Other contents are never overwritten.
        std::fs::write(&hba, b"mine").unwrap();
        let err = check_free(t.path(), &files).unwrap_err();
        assert!(err.to_string().contains("other contents"), "{err}");
        assert!(write_all(t.path(), &files, false).is_err());
        assert_eq!(std::fs::read(&hba).unwrap(), b"mine");
    }

    #[test]
    fn a_link_on_the_way_is_refused_before_anything_is_written_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let (dir, elsewhere) = (t.path().join("dir"), t.path().join("elsewhere"));
        std::fs::create_dir_all(dir.join("etc/postgresql")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("etc/postgresql/15")).unwrap();
        let files = [file("/etc/postgresql/15/main/pg_hba.conf", b"x")];
        let err = check_free(&dir, &files).unwrap_err();
        assert!(err.to_string().contains("not followed"), "{err}");
        let err = write_all(&dir, &files, false).unwrap_err();
        assert!(err.to_string().contains("not followed"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A link at the file's own place is refused too, its target untouched.
        std::fs::remove_file(dir.join("etc/postgresql/15")).unwrap();
        std::fs::create_dir_all(dir.join("etc/postgresql/15/main")).unwrap();
        std::fs::write(elsewhere.join("victim"), b"precious").unwrap();
        std::os::unix::fs::symlink(
            elsewhere.join("victim"),
            dir.join("etc/postgresql/15/main/pg_hba.conf"),
        )
        .unwrap();
        assert!(check_free(&dir, &files).is_err());
        assert!(write_all(&dir, &files, false).is_err());
        assert_eq!(
            std::fs::read(elsewhere.join("victim")).unwrap(),
            b"precious"
        );
    }

    #[test]
    fn recorded_paths_that_are_not_plain_and_absolute_are_refused() {
        for bad in ["etc/x.conf", "/", "/etc/../x.conf"] {
            assert!(relative(&file(bad, b"")).is_err(), "{bad}");
        }
        // What a backup records instead: the path resolved lexically, never above `/`.
        assert_eq!(
            lexical(Path::new("/etc/p/main/l/../../../../profile.d/x.sh")),
            PathBuf::from("/profile.d/x.sh")
        );
        assert_eq!(
            includes(
                Path::new("/etc/p/main/postgresql.conf"),
                "include '../x.conf'"
            ),
            vec![PathBuf::from("/etc/p/x.conf")]
        );
    }

    #[test]
    fn include_directives_are_found_as_postgresql_reads_them() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("postgresql.conf");
        std::fs::create_dir_all(t.path().join("conf.d")).unwrap();
        for n in ["b.conf", "a.conf", ".hidden.conf", "notes.txt"] {
            std::fs::write(t.path().join("conf.d").join(n), b"").unwrap();
        }
        let text = "shared_buffers = 1GB # include 'no.conf'\n\
                    include_dir 'conf.d'\n\
                    include = '/abs/it''s.conf'\n\
                    \tinclude_if_exists 'maybe.conf'   # a comment\n\
                    #include 'commented.conf'\n";
        assert_eq!(
            includes(&conf, text),
            vec![
                t.path().join("conf.d/a.conf"),
                t.path().join("conf.d/b.conf"),
                PathBuf::from("/abs/it's.conf"),
                t.path().join("maybe.conf"),
            ]
        );
    }

    #[test]
    fn settings_that_name_the_backed_up_hosts_places_are_named_for_review() {
        let mut conf = file(
            "/etc/p/postgresql.conf",
            b"data_directory = '/var/lib/p/main'\n\
              hba_file = '/etc/p/pg_hba.conf'  # auth\n\
              include_dir 'conf.d'\n\
              #ssl_cert_file = '/etc/ssl/x.pem'\n\
              shared_buffers = '/not/a/path/setting'\n",
        );
        conf.named_by = "config_file".into();
        let mut hba = file("/etc/p/pg_hba.conf", b"data_directory = '/elsewhere'\n");
        hba.named_by = "hba_file".into();
        let files = [conf, hba];
        let got = review(&files, Path::new("/r"), Path::new("/var/lib/p/restored"));
        assert_eq!(
            got,
            vec![
                "/r/etc/p/postgresql.conf: data_directory = '/var/lib/p/main', not the restored \
                 /var/lib/p/restored: a server started on this file runs that directory. Edit \
                 it, or start with -c data_directory='/var/lib/p/restored'"
                    .to_string(),
                "/r/etc/p/postgresql.conf names paths of the backed-up host (hba_file = \
                 '/etc/p/pg_hba.conf'): edit them before a server starts on it (--config-dir / \
                 puts the files back where these paths point)"
                    .to_string(),
            ]
        );
        // Back in place over the same data directory: nothing to review.
        assert!(review(&files, Path::new("/"), Path::new("/var/lib/p/main")).is_empty());
        // In place, another data directory: only data_directory.
        let got = review(&files, Path::new("/"), Path::new("/srv/copy"));
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("/etc/p/postgresql.conf: data_directory"),
            "{got:?}"
        );
    }

    #[test]
    fn a_setting_line_is_read_as_postgresql_reads_it() {
        let s = Setting::parse("  work_mem = '4MB' # tuning").unwrap();
        assert_eq!(
            (s.key, s.value.as_str(), s.rest),
            ("work_mem", "4MB", " # tuning")
        );
        let s = Setting::parse("cron.database_name postgres").unwrap();
        assert_eq!(
            (s.key, s.value.as_str()),
            ("cron.database_name", "postgres")
        );
        assert_eq!(
            Setting::parse(r"x = 'it''s a \'quote\''").unwrap().value,
            "it's a 'quote'"
        );
        // As PostgreSQL's lexer: no space needed before a quoted value, names without case,
        // GUC_scanstr's escapes.
        let s = Setting::include("Include'/etc/x.conf'").unwrap();
        assert_eq!((s.key, s.value.as_str()), ("Include", "/etc/x.conf"));
        assert_eq!(
            Setting::parse(r"x = 'a\tb\101\\c'").unwrap().value,
            "a\tbA\\c"
        );
        for not in [
            "# work_mem = 1",
            "",
            "   ",
            "work_mem =",
            "= 4",
            "bad-key = 1",
            "9lives = 1",
            "include /etc/x.conf",
            "include ../x.conf",
        ] {
            assert!(Setting::parse(not).is_none(), "{not:?}");
        }
        assert!(Setting::include("work_mem = 1").is_none());
        // A line break in a value is written as PostgreSQL's escape, and read back.
        let q = quote("a\nb'c");
        assert_eq!(q, "'a\\nb''c'");
        assert_eq!(Setting::parse(&format!("x = {q}")).unwrap().value, "a\nb'c");
        let i = Setting::include("include_if_exists '/a b.conf'").unwrap();
        assert_eq!(
            i.with_value("/m/a b.conf"),
            "include_if_exists = '/m/a b.conf'"
        );
    }

    #[test]
    fn as_root_a_file_the_data_directorys_owner_cannot_read_is_not_kept() {
        if crate::pg::instance::current_uid() != 0 {
            eprintln!("skipping: needs root (a root backup is what this guards)");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(54321), Some(54321)).unwrap();
        // Root's secret, as a link planted at pg_hba.conf would reach it.
        let secret = t.path().join("shadow");
        std::fs::write(&secret, b"root:secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
        let planted = t.path().join("pg_hba.conf");
        std::os::unix::fs::symlink(&secret, &planted).unwrap();
        let reader = Reader::new(&data);
        let why = reader.read(&planted).err().expect("refused");
        assert!(why.contains("could not read"), "{why}");
        // What the owner can read is kept.
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(reader.read(&planted).unwrap().outside);
        // A FIFO does not stall it.
        let fifo = t.path().join("fifo.conf");
        crate::test_support::make_fifo(&fifo);
        assert!(reader
            .read(&fifo)
            .err()
            .unwrap()
            .contains("not a regular file"));
    }
}
