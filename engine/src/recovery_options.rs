//! `restore --recovery-option KEY=VALUE`: settings of the operator's own written with the
//! restore's recovery settings (pgBackRest's option of the same name).
//!
//! What DBAs pass this way: `primary_slot_name` for a standby, `recovery_min_apply_delay` for
//! a delayed one, a `recovery_end_command`, `hot_standby = off`, a larger
//! `wal_decode_buffer_size`. They go into the pgcairn block of `postgresql.auto.conf` after
//! pgcairn's own lines, so they win over its replay settings; like the rest of the block they
//! stay after recovery (PostgreSQL never removes lines), and the next restore rewrites the
//! block.
//!
//! Refused, before anything is written: a name that is no setting name (letters, digits and
//! `_`, one `.` for an extension's), the `include` directives (they would make PostgreSQL read
//! other files), a name given twice, and the settings pgcairn derives
//! from its own options: the restore command (it must be this pgcairn with this
//! configuration), the recovery target settings (the preflight proved that target reachable;
//! another one would bypass it), `primary_conninfo` (`--primary-conninfo` refuses a password
//! in it) and `archive_mode` (`--archive-mode`). Values are written quoted and escaped
//! ([`crate::pg::guc::quote`]): a newline or quote in one never breaks the file.

use crate::error::{Error, Result};

/// Settings a restore writes from its own options, with the option that sets each.
const RESERVED: [(&str, &str); 12] = [
    (
        "restore_command",
        "it is this pgcairn, with this configuration and cluster",
    ),
    ("recovery_target", "--target immediate"),
    ("recovery_target_time", "--target-time"),
    ("recovery_target_lsn", "--target-lsn"),
    ("recovery_target_xid", "--target-xid"),
    ("recovery_target_name", "--target-name"),
    ("recovery_target_inclusive", "--target-exclusive"),
    ("recovery_target_action", "--target-action"),
    ("recovery_target_timeline", "--target-timeline"),
    (
        "primary_conninfo",
        "--primary-conninfo (with --type standby)",
    ),
    ("archive_mode", "--archive-mode"),
    (
        "archive_command",
        "--archive-mode off stops archiving; archive_command is the cluster's own",
    ),
];

/// Parses `KEY=VALUE` arguments into settings (names lower-cased, spaces around both
/// trimmed), refusing what the module docs say.
pub fn parse(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(Error::Config(format!(
                "--recovery-option {arg:?}: expected KEY=VALUE, like primary_slot_name=standby1"
            )));
        };
        out.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    check(&out)?;
    Ok(out)
}

/// Refuses settings that are no setting names, given twice, or written by pgcairn itself.
pub fn check(settings: &[(String, String)]) -> Result<()> {
    for (i, (key, _)) in settings.iter().enumerate() {
        if !is_setting_name(key) {
            return Err(Error::Config(format!(
                "--recovery-option {key:?}: not a setting name (letters, digits and _, one . \
                 for an extension's setting)"
            )));
        }
        let lower = key.to_ascii_lowercase();
        if ["include", "include_if_exists", "include_dir"].contains(&lower.as_str()) {
            return Err(Error::Config(format!(
                "--recovery-option {key}: {key} is a directive that reads other files, not a \
                 setting; give the settings themselves"
            )));
        }
        if let Some((_, how)) = RESERVED.iter().find(|(k, _)| *k == lower) {
            return Err(Error::Config(format!(
                "--recovery-option {key}: pgcairn writes {key} itself ({how})"
            )));
        }
        if settings[..i]
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(&lower))
        {
            return Err(Error::Config(format!(
                "--recovery-option {key} is given twice: give each setting once"
            )));
        }
    }
    Ok(())
}

/// A PostgreSQL setting name: an identifier, or `extension.identifier`.
fn is_setting_name(key: &str) -> bool {
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match key.split_once('.') {
        None => ident(key),
        Some((ext, name)) => ident(ext) && ident(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Vec<(String, String)>> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn settings_are_parsed_with_any_value() {
        let v = p(&[
            "primary_slot_name=standby1",
            "Recovery_Min_Apply_Delay = 5min",
            "recovery_end_command=touch '/tmp/a b'=c",
            "pg_stat_statements.max=100",
            "hot_standby=",
        ])
        .unwrap();
        assert_eq!(
            v,
            vec![
                ("primary_slot_name".into(), "standby1".into()),
                ("recovery_min_apply_delay".into(), "5min".into()),
                ("recovery_end_command".into(), "touch '/tmp/a b'=c".into()),
                ("pg_stat_statements.max".into(), "100".into()),
                ("hot_standby".into(), String::new()),
            ]
        );
    }

    #[test]
    fn what_pgcairn_writes_itself_is_refused_naming_the_option() {
        for (arg, says) in [
            ("restore_command=cp /x %p", "this pgcairn"),
            ("recovery_target_time=2026-01-01", "--target-time"),
            ("RECOVERY_TARGET_LSN=0/1", "--target-lsn"),
            ("primary_conninfo=host=x password=y", "--primary-conninfo"),
            ("archive_mode=always", "--archive-mode"),
            ("include_dir=/etc/evil", "directive"),
            ("INCLUDE=/x.conf", "directive"),
        ] {
            let e = p(&[arg]).unwrap_err().to_string();
            assert!(e.contains(says), "{arg}: {e}");
        }
    }

    #[test]
    fn malformed_names_and_repeats_are_refused() {
        for arg in [
            "no_equals",
            "=value",
            "bad key=1",
            "a.b.c=1",
            "1abc=1",
            "x\ny=1",
            "a;b=1",
            "é=1",
        ] {
            assert!(p(&[arg]).is_err(), "{arg:?} was taken");
        }
        let e = p(&["hot_standby=on", "HOT_STANDBY=off"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
