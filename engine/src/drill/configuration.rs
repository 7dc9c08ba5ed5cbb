//! The configuration a drill's instance runs on.
//!
//! A drill means to show that the backup recovers the way production would run it, so its
//! instance reads production's configuration, with the isolation settings on top (see the
//! module docs of [`super`]). With `initdb`'s layout that configuration is the restored data
//! directory's own `postgresql.conf`. With Debian's (`pg_createcluster`: `postgresql.conf`
//! and `conf.d/` in `/etc/postgresql/<major>/<cluster>/`) the data directory has no
//! `postgresql.conf`, and PostgreSQL will not start without one: every drill of such a
//! cluster failed and reported a sound backup as a finding.
//!
//! The backup keeps those files ([`crate::config_files`]). The drill writes its own copy of
//! the kept `postgresql.conf` and of what it includes beneath `<workdir>/config/`, at their
//! recorded paths, and a `postgresql.conf` in the data directory that includes the copy:
//! - The copy is what is read, never the host's files, which may have changed since the
//!   backup or belong to a running production cluster: `include`, `include_if_exists` and
//!   `include_dir` directives with absolute paths are rewritten to name the copy
//!   ([`rebased`]); relative ones already resolve beside the copy. A directory an
//!   `include_dir` names is created empty when the backup kept no file from it.
//! - Debian's `postgresql.conf` sets `data_directory` to production's data directory, and a
//!   `data_directory` in the configuration outranks `pg_ctl -D`: the drill's `postgresql.conf`
//!   sets it back to the drill's directory after the include, and the instance's command line
//!   sets it too (checked after startup with the isolation settings).
//! - The copies are the instance user's, mode 0600, in directories of the drill's own: a
//!   `postgresql.conf` may hold passwords (`primary_conninfo`).
//!
//! A backup that kept no `postgresql.conf` (taken before pgcairn kept them, or the file could
//! not be read) gets a `postgresql.conf` with comments only: PostgreSQL's defaults and the
//! drill's own settings. The report says which of the three it was.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::config_files::{lexical, quote, ConfigFile, Setting};
use crate::error::{Error, Result};

/// Where the drill's instance got its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The restored data directory's own `postgresql.conf`.
    DataDirectory,
    /// The backup's `postgresql.conf` from outside the data directory (its recorded path)
    /// and `includes` files it pulls in, read from the drill's copy.
    Kept {
        path: PathBuf,
        includes: usize,
        not_kept: Vec<PathBuf>,
    },
    /// No `postgresql.conf` anywhere in the backup.
    Defaults,
}

impl Source {
    /// One line for the report.
    pub fn describe(&self) -> String {
        match self {
            Source::DataDirectory => "the data directory's own postgresql.conf".into(),
            Source::Kept {
                path,
                includes,
                not_kept,
            } => format!(
                "{} as kept with the backup{} (the data directory has no postgresql.conf), \
                 read from the drill's copy{}",
                path.display(),
                match includes {
                    0 => String::new(),
                    1 => ", with the 1 file it includes".into(),
                    n => format!(", with the {n} files it includes"),
                },
                if not_kept.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; included but not kept with the backup, so not read: {}",
                        not_kept
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
            Source::Defaults => "none: the data directory has no postgresql.conf and the backup \
                                 kept none from outside it, so PostgreSQL's defaults and the \
                                 drill's settings"
                .into(),
        }
    }
}

/// The name of the data directory's configuration file.
const POSTGRESQL_CONF: &str = "postgresql.conf";

/// Gives the restored data directory `datadir` a configuration to start on (module docs):
/// `kept` are the backup's configuration files from outside it, `mirror` the drill's own
/// directory for their copy (it must not exist), `owner` the data directory's owner when
/// running as root.
pub fn prepare(
    datadir: &Path,
    mirror: &Path,
    kept: &[ConfigFile],
    owner: Option<(u32, u32)>,
) -> Result<Source> {
    let me = crate::pg::instance::current_uid();
    let root = crate::fs_beneath::open_root_checked(datadir, me)
        .map_err(|e| Error::io(datadir.display().to_string(), e))?;
    match rustix::fs::statat(
        &root,
        POSTGRESQL_CONF,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(_) => return Ok(Source::DataDirectory),
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            return Err(Error::io(
                datadir.join(POSTGRESQL_CONF).display().to_string(),
                e.into(),
            ))
        }
    }
    let main = kept.iter().find(|f| f.named_by == "config_file");
    let (source, text) = match main {
        Some(main) => {
            let read: Vec<&ConfigFile> = kept
                .iter()
                .filter(|f| f.named_by == "config_file" || f.named_by == "include")
                .collect();
            // Production's data directory, as its configuration names it: an include of a
            // file in it reads the drill's restored copy of that file.
            let production = main.bytes().ok().and_then(|b| {
                crate::config_files::data_directory(&String::from_utf8_lossy(&b))
                    .map(|d| lexical(Path::new(&d)))
            });
            let copy = rebased(&read, mirror, production.as_deref().map(|p| (p, datadir)))?;
            let copies: Vec<ConfigFile> = copy
                .files
                .into_iter()
                .map(|f| ConfigFile {
                    mode: 0o600,
                    uid: owner.map_or(f.uid, |o| o.0),
                    gid: owner.map_or(f.gid, |o| o.1),
                    ..f
                })
                .collect();
            // Every directory of the copy is the drill's own (created here, not by the
            // writer, which would give them to the files' owner), 0755 whatever the umask.
            let mut needed: Vec<PathBuf> = copy.dirs;
            needed.extend(
                copies
                    .iter()
                    .filter_map(|f| f.path.parent().map(|p| under(mirror, p))),
            );
            super::private_dir(mirror, 0o755)?;
            for d in &needed {
                directories_beneath(mirror, d)?;
            }
            crate::config_files::write_all(mirror, &copies, owner.is_some())?;
            let main_copy = under(mirror, &main.path);
            let text = format!(
                "# pgcairn drill: this data directory came without a postgresql.conf (the cluster\n\
                 # keeps its configuration outside it, as Debian's pg_createcluster does). The\n\
                 # backup's own copy of {}, kept with the backup, is read\n\
                 # from the drill's work directory:\n\
                 include = {}\n\
                 # and the data directory is this one, whatever that file names:\n\
                 data_directory = {}\n",
                main.path.display(),
                quote(&main_copy.to_string_lossy()),
                quote(&datadir.to_string_lossy()),
            );
            (
                Source::Kept {
                    path: main.path.clone(),
                    includes: read.len() - 1,
                    not_kept: copy.not_kept,
                },
                text,
            )
        }
        None => (
            Source::Defaults,
            "# pgcairn drill: this data directory came without a postgresql.conf and the backup\n\
             # kept none from outside it: PostgreSQL's defaults, with the drill's own settings\n\
             # on the command line and in postgresql.auto.conf.\n"
                .to_string(),
        ),
    };
    crate::fs_beneath::write_file(
        root.as_fd(),
        Path::new(POSTGRESQL_CONF),
        text.as_bytes(),
        0o600,
        owner,
    )
    .map_err(|e| Error::io(datadir.join(POSTGRESQL_CONF).display().to_string(), e))?;
    Ok(source)
}

/// `path` (absolute) resolved lexically and placed under `mirror`: never outside it.
fn under(mirror: &Path, path: &Path) -> PathBuf {
    let p = lexical(path);
    mirror.join(p.strip_prefix("/").unwrap_or(&p))
}

/// Creates `dir` and the directories on the way to it below `mirror` (a directory of the
/// drill's own: nobody else creates anything there), mode 0755 whatever the umask.
fn directories_beneath(mirror: &Path, dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let below = dir.strip_prefix(mirror).map_err(|_| {
        Error::InvalidInput(format!(
            "{} is not below {}",
            dir.display(),
            mirror.display()
        ))
    })?;
    let mut at = mirror.to_path_buf();
    for c in below.components() {
        at.push(c);
        match std::fs::DirBuilder::new().mode(0o755).create(&at) {
            Ok(()) => std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(at.display().to_string(), e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(at.display().to_string(), e)),
        }
    }
    Ok(())
}

/// The drill's copy of the kept configuration files ([`rebased`]).
#[derive(Debug)]
pub struct Copy {
    /// The files, at their recorded paths resolved lexically.
    pub files: Vec<ConfigFile>,
    /// Directories (under the mirror) that `include_dir` lines name.
    pub dirs: Vec<PathBuf>,
    /// Files `include` lines name that the backup did not keep.
    pub not_kept: Vec<PathBuf>,
}

/// Copies of `files` that read nothing but the copy: every `include`, `include_if_exists`
/// and `include_dir` (names compared as PostgreSQL does, without case) names an absolute
/// path under `mirror`, relative ones resolved against the including file's recorded
/// directory first, `..` lexically ([`lexical`]: never above the mirror). An include of a
/// file inside `data` (production's data directory, the drill's) reads the drill's restored
/// file; one the backup did not keep becomes `include_if_exists` of a path that does not
/// exist (PostgreSQL logs that it skipped it) and is listed. Every other line, and any line
/// that is not UTF-8, is kept byte for byte.
pub fn rebased(files: &[&ConfigFile], mirror: &Path, data: Option<(&Path, &Path)>) -> Result<Copy> {
    use base64::Engine as _;
    let kept: std::collections::HashSet<PathBuf> = files.iter().map(|f| lexical(&f.path)).collect();
    let mut copy = Copy {
        files: Vec::with_capacity(files.len()),
        dirs: Vec::new(),
        not_kept: Vec::new(),
    };
    for f in files {
        let bytes = f.bytes()?;
        let path = lexical(&f.path);
        let base = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut text: Vec<u8> = Vec::with_capacity(bytes.len());
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let body_len = line
                .iter()
                .rposition(|b| *b != b'\n' && *b != b'\r')
                .map_or(0, |i| i + 1);
            let (body, end) = line.split_at(body_len);
            // Read leniently, as the backup read it to find what to keep: an include line
            // with a Latin-1 comment is still an include (the copy's comment may lose bytes).
            let lenient = String::from_utf8_lossy(body);
            let Some(d) = Setting::include(&lenient) else {
                text.extend_from_slice(line);
                continue;
            };
            let target = lexical(&base.join(&d.value));
            let in_data = data.and_then(|(prod, drill)| {
                target.strip_prefix(prod).ok().map(|rest| drill.join(rest))
            });
            let rewritten = if let Some(to) = in_data {
                d.with_value(&to.to_string_lossy())
            } else if d.is("include_dir") {
                let to = under(mirror, &target);
                copy.dirs.push(to.clone());
                d.with_value(&to.to_string_lossy())
            } else if kept.contains(&target) {
                d.with_value(&under(mirror, &target).to_string_lossy())
            } else {
                copy.not_kept.push(target.clone());
                Setting {
                    key: "include_if_exists",
                    ..d
                }
                .with_value(&under(mirror, &target).to_string_lossy())
            };
            text.extend_from_slice(rewritten.as_bytes());
            text.extend_from_slice(end);
        }
        copy.files.push(ConfigFile {
            path,
            contents: base64::engine::general_purpose::STANDARD.encode(&text),
            ..(*f).clone()
        });
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn kept(path: &str, named_by: &str, body: &str) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from(path),
            named_by: named_by.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            contents: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    fn text(f: &ConfigFile) -> String {
        String::from_utf8(f.bytes().unwrap()).unwrap()
    }

    #[test]
    fn every_include_names_the_copy_and_everything_else_stays() {
        let main = kept(
            "/etc/pg/main/postgresql.conf",
            "config_file",
            "data_directory = '/var/lib/pg/main'\n\
             include_dir 'conf.d'\t# tuning\n\
             include = '/etc/pg/shared/it''s.conf' # shared\r\n\
             #include '/etc/commented.conf'\n\
             INCLUDE_IF_EXISTS'../maybe.conf'\n\
             include '/var/lib/pg/main/in_data.conf'\n\
             include '/etc/pg/gone.conf'\n\
             shared_buffers = 1GB",
        );
        let shared = kept("/etc/pg/shared/it's.conf", "include", "work_mem = 1MB\n");
        let maybe = kept("/etc/pg/main/../maybe.conf", "include", "");
        let data = Some((Path::new("/var/lib/pg/main"), Path::new("/w/pgdata")));
        let copy = rebased(&[&main, &shared, &maybe], Path::new("/w/config"), data).unwrap();
        assert_eq!(
            text(&copy.files[0]),
            "data_directory = '/var/lib/pg/main'\n\
             include_dir = '/w/config/etc/pg/main/conf.d'\t# tuning\n\
             include = '/w/config/etc/pg/shared/it''s.conf' # shared\r\n\
             #include '/etc/commented.conf'\n\
             INCLUDE_IF_EXISTS = '/w/config/etc/pg/maybe.conf'\n\
             include = '/w/pgdata/in_data.conf'\n\
             include_if_exists = '/w/config/etc/pg/gone.conf'\n\
             shared_buffers = 1GB"
        );
        assert_eq!(
            copy.dirs,
            vec![PathBuf::from("/w/config/etc/pg/main/conf.d")]
        );
        assert_eq!(copy.not_kept, vec![PathBuf::from("/etc/pg/gone.conf")]);
        // The copies keep their recorded places, resolved.
        assert_eq!(copy.files[0].path, main.path);
        assert_eq!(copy.files[2].path, PathBuf::from("/etc/pg/maybe.conf"));
    }

    #[test]
    fn no_include_reaches_outside_the_copy() {
        let main = kept(
            "/etc/pg/main/postgresql.conf",
            "config_file",
            "include_dir = '/../../../../etc/nologin'\n\
             include_dir '../../../../../../tmp/x'\n\
             include_if_exists '/etc/pg/../../../../root/.bashrc'\n",
        );
        let copy = rebased(&[&main], Path::new("/w/config"), None).unwrap();
        let body = text(&copy.files[0]);
        let found = crate::config_files::includes(
            Path::new("/w/config/etc/pg/main/postgresql.conf"),
            &body,
        );
        assert!(found.iter().all(|p| p.starts_with("/w/config")), "{body}");
        for d in &copy.dirs {
            assert!(d.starts_with("/w/config"), "{d:?}");
        }
        assert_eq!(
            copy.dirs,
            vec![
                PathBuf::from("/w/config/etc/nologin"),
                PathBuf::from("/w/config/tmp/x")
            ]
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_keeps_its_bytes() {
        let mut f = kept("/etc/x.conf", "include", "");
        let body = b"cluster_name = '\xe9t\xe9'\ninclude '/etc/y.conf'\n".to_vec();
        f.contents = base64::engine::general_purpose::STANDARD.encode(&body);
        let copy = rebased(&[&f], Path::new("/m"), None).unwrap();
        let got = copy.files[0].bytes().unwrap();
        assert!(got.starts_with(b"cluster_name = '\xe9t\xe9'\n"));
        // An include with a Latin-1 comment is an include all the same.
        let mut g = kept("/etc/x.conf", "config_file", "");
        g.contents = base64::engine::general_purpose::STANDARD
            .encode(b"include_dir 'conf.d' # r\xe9glages\n");
        let copy = rebased(&[&g], Path::new("/m"), None).unwrap();
        assert_eq!(copy.dirs, vec![PathBuf::from("/m/etc/conf.d")]);
        assert!(copy.files[0]
            .bytes()
            .unwrap()
            .starts_with(b"include_dir = '/m/etc/conf.d' # r"));
        assert!(
            got.ends_with(b"include_if_exists = '/m/etc/y.conf'\n"),
            "{got:?}"
        );
    }

    #[test]
    fn a_data_directory_with_its_own_postgresql_conf_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("pgdata");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("postgresql.conf"), "port = 5\n").unwrap();
        let main = kept("/etc/p/postgresql.conf", "config_file", "port = 6\n");
        let got = prepare(&data, &t.path().join("config"), &[main], None).unwrap();
        assert_eq!(got, Source::DataDirectory);
        assert_eq!(
            std::fs::read_to_string(data.join("postgresql.conf")).unwrap(),
            "port = 5\n"
        );
        assert!(!t.path().join("config").exists());
    }

    #[test]
    fn without_one_the_kept_configuration_is_included_from_a_private_copy() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("pgdata");
        std::fs::create_dir(&data).unwrap();
        let mirror = t.path().join("config");
        let files = [
            kept(
                "/etc/p/main/postgresql.conf",
                "config_file",
                "include_dir 'conf.d'\ninclude '/etc/p/extra.conf'\ninclude_dir '/etc/p/empty.d'\n",
            ),
            kept(
                "/etc/p/main/pg_hba.conf",
                "hba_file",
                "local all all trust\n",
            ),
            kept("/etc/p/extra.conf", "include", "work_mem = '7MB'\n"),
        ];
        let got = prepare(&data, &mirror, &files, None).unwrap();
        assert_eq!(
            got,
            Source::Kept {
                path: PathBuf::from("/etc/p/main/postgresql.conf"),
                includes: 1,
                not_kept: Vec::new(),
            }
        );
        let conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        let copy = mirror.join("etc/p/main/postgresql.conf");
        assert!(
            conf.contains(&format!("include = '{}'", copy.display())),
            "{conf}"
        );
        assert!(
            conf.contains(&format!("data_directory = '{}'", data.display())),
            "{conf}"
        );
        assert!(std::fs::read_to_string(&copy).unwrap().contains(&format!(
            "include = '{}'",
            mirror.join("etc/p/extra.conf").display()
        )));
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Empty include_dir targets exist (PostgreSQL refuses a missing one); the drill's
        // own authentication files replace pg_hba.conf, so no copy of it is made.
        assert!(mirror.join("etc/p/main/conf.d").is_dir());
        assert!(mirror.join("etc/p/empty.d").is_dir());
        assert!(!mirror.join("etc/p/main/pg_hba.conf").exists());
    }

    #[test]
    fn without_any_the_server_runs_on_defaults() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("pgdata");
        std::fs::create_dir(&data).unwrap();
        let got = prepare(&data, &t.path().join("config"), &[], None).unwrap();
        assert_eq!(got, Source::Defaults);
        let conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        assert!(conf.lines().all(|l| l.starts_with('#')), "{conf}");
    }
}
