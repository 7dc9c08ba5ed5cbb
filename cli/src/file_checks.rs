//! Refusing configuration and key files that other users could read or change.
//!
//! The config file decides where backups go and may hold storage credentials; the key file
//! and passphrase file unlock the repository. Like ssh with private keys, pgcairn refuses:
//! - a config file, key file or passphrase file writable by group or others, or owned by a
//!   user other than the one running pgcairn or root (they could redirect backups, or swap
//!   the key for one they know); root may use another user's key file (restores and drills
//!   run as root with the service account's key), never another user's config file;
//! - a key file or passphrase file readable by others, and a config file readable by others
//!   while it holds a secret (`secret_access_key`, `access_key`, `session_token`, a
//!   `password=` in `conninfo`, ...).
//!
//! Group-readable is allowed (`root:postgres 0640` is how the package installs the config).
//! Symbolic links are followed, and the file they reach is what is checked: a link to another
//! user's file is refused for its owner. `repo.allow_insecure_files = true` turns the refusals
//! into warnings, for the rare setup that needs it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::exit::Failure;

/// Setting keys whose values are secrets.
const SECRET_KEYS: &[&str] = &[
    "secret_access_key",
    "access_key",
    "session_token",
    "client_secret",
    "sas_token",
    "bearer_token",
];

/// What a file is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The TOML configuration.
    Config { holds_secret: bool },
    /// A key file or passphrase file.
    Secret(&'static str),
}

/// True when a config file's text holds a secret.
pub fn config_holds_secret(table: &toml::Table) -> bool {
    table.values().any(|section| {
        section.as_table().is_some_and(|t| {
            t.iter().any(|(k, v)| {
                SECRET_KEYS.contains(&k.as_str())
                    || (k == "conninfo"
                        && v.as_str()
                            .is_some_and(pgcairn_engine::pg::conninfo::has_password))
            })
        })
    })
}

/// Checks `path`; `Ok` with a warning printed when `allow_insecure` downgrades a refusal.
pub fn check(path: &Path, kind: Kind, allow_insecure: bool) -> Result<(), Failure> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()), // reading it reports the error with its own wording
    };
    let Some(problem) = problem(&meta, kind, pgcairn_engine::pg::instance::current_uid()) else {
        return Ok(());
    };
    let what = match kind {
        Kind::Config { .. } => "config file",
        Kind::Secret(name) => name,
    };
    let message = format!(
        "{what} {} {problem}; fix it (chown to this user or root, chmod 0600 or 0640), or set \
         repo.allow_insecure_files = true to accept the risk",
        path.display()
    );
    if allow_insecure {
        eprintln!("pgcairn: warning: {message}");
        Ok(())
    } else {
        Err(Failure::usage(message))
    }
}

fn problem(meta: &std::fs::Metadata, kind: Kind, uid: u32) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    // Root may use the service account's key (restore and drill run as root with the
    // postgres user's key file): a swapped key cannot open the repository anyway. Root must
    // not take its configuration from another user, who could point it at paths of their
    // choosing.
    let owner_matters = matches!(kind, Kind::Config { .. }) || uid != 0;
    if owner_matters && meta.uid() != uid && meta.uid() != 0 {
        return Some(format!(
            "belongs to uid {} (neither this user, uid {uid}, nor root): its owner could change it",
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "is writable by {} (mode {mode:04o}): they could change it",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    let readable_by_all = mode & 0o004 != 0;
    match kind {
        Kind::Secret(_) if readable_by_all => Some(format!(
            "is readable by every user (mode {mode:04o}): anyone could unlock the repository"
        )),
        Kind::Config { holds_secret: true } if readable_by_all => Some(format!(
            "holds credentials and is readable by every user (mode {mode:04o})"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, p)
    }

    #[test]
    fn a_world_writable_config_with_a_secret_is_refused() {
        let (_d, p) = file(0o666);
        let e = check(&p, Kind::Config { holds_secret: true }, false).unwrap_err();
        assert!(
            e.message.contains("writable by every user"),
            "{}",
            e.message
        );
        assert!(e.message.contains("allow_insecure_files"), "{}", e.message);
        assert!(check(&p, Kind::Config { holds_secret: true }, true).is_ok());
    }

    #[test]
    fn a_world_readable_config_is_fine_without_secrets_but_not_with_them() {
        let (_d, p) = file(0o644);
        assert!(check(
            &p,
            Kind::Config {
                holds_secret: false
            },
            false
        )
        .is_ok());
        let e = check(&p, Kind::Config { holds_secret: true }, false).unwrap_err();
        assert!(e.message.contains("holds credentials"), "{}", e.message);
    }

    #[test]
    fn a_world_readable_key_file_is_refused_and_a_group_readable_one_accepted() {
        let (_d, p) = file(0o644);
        assert!(check(&p, Kind::Secret("key file"), false).is_err());
        let (_d2, p2) = file(0o640);
        assert!(check(&p2, Kind::Secret("key file"), false).is_ok());
        let (_d3, p3) = file(0o600);
        assert!(check(&p3, Kind::Secret("key file"), false).is_ok());
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        let (_d, p) = file(0o600);
        if pgcairn_engine::pg::instance::current_uid() == 0 {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        }
        let meta = std::fs::metadata(&p).unwrap();
        // Judged as another (non-root) user would.
        let other = meta.uid() + 1;
        let why = problem(&meta, Kind::Secret("key file"), other).unwrap();
        assert!(why.contains("belongs to uid"), "{why}");
        // Root may use the service account's key, never its config.
        if meta.uid() != 0 {
            assert!(problem(&meta, Kind::Secret("key file"), 0).is_none());
            assert!(problem(
                &meta,
                Kind::Config {
                    holds_secret: false
                },
                0
            )
            .is_some());
        }
    }

    #[test]
    fn a_symlink_to_a_world_readable_key_file_is_refused() {
        let (d, p) = file(0o644);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(check(&link, Kind::Secret("key file"), false).is_err());
    }
}
