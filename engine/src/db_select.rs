//! Selective restore: the databases a restore leaves out (`restore --db-include`,
//! `--db-exclude`).
//!
//! When one database of a large cluster is damaged, the DBA wants that database back, fast,
//! beside the running cluster, not the whole cluster: pgBackRest (`--db-include`) and
//! pg_probackup (partial restore) both offer it, and a restore that reads and writes only the
//! included databases (and the system ones) takes the time of those, not of the cluster.
//!
//! A database left out keeps its directory and every file name, each file at its recorded
//! size but sparse (all zeros, nothing read from the repository, no data block written);
//! only `PG_VERSION` is restored. Recovery still works: replay starts at the backup's
//! checkpoint and, with `full_page_writes` on (PostgreSQL's default, and forced while a
//! backup runs), the first change to any page after a checkpoint carries the whole page, so
//! replay rewrites a zeroed page before it reads it (with the exceptions below). After recovery the database
//! is listed but unusable (connecting fails on its zeroed catalog): `DROP DATABASE` it, as
//! the restore's output says. With `full_page_writes = off` on the primary, replay past the
//! backup could meet a zeroed page without its image and stop (PostgreSQL: "WAL contains
//! references to invalid pages"); restore the whole cluster there.
//!
//! Not every WAL record that touches a page carries its image. Without data checksums (and
//! without `wal_log_hints`), VACUUM marks a heap page all-visible with a record that has none
//! (`XLOG_HEAP2_VISIBLE`), and hash indexes register pages they only lock the same way; replay
//! meeting such a record on a zeroed page records an invalid page reference and stops
//! (PANIC "WAL contains references to invalid pages", at the consistency point or at once
//! after it; pgBackRest's users met it, its issue 1782). So a restore of a cluster without
//! checksums that leaves databases out is refused unless the operator adds
//! `--recovery-option ignore_invalid_pages=on` (PostgreSQL 13 and later: invalid references
//! become warnings), and then checks the server log after recovery for warnings about the
//! databases restored. With checksums the VACUUM case carries images; a hash index in a
//! database left out can still stop replay, and the same option is the answer.
//!
//! The rules (pgBackRest's, with templates held back):
//! - A database is named by OID or by the name the backup recorded (`pg_database` at its end,
//!   [`crate::store::manifest::Database`]); an OID is looked for first. Backups taken before
//!   names were recorded take OIDs only, and the error says so.
//! - System databases (`template0`, `template1`, `postgres`, or any OID below 16384, the
//!   first one PostgreSQL gives to user objects) are always restored with `--db-include`;
//!   `postgres` may be left out by naming it in `--db-exclude`, the templates never (a
//!   cluster without `template1` cannot create a database).
//! - `--db-include` leaves out every other user database; `--db-exclude` alone leaves out
//!   just those named. Naming a database the backup does not hold, or one in both lists, is
//!   an error listing what the backup holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::store::manifest::Database;

/// The first OID PostgreSQL gives to user objects (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;
/// Names of the databases `initdb` creates.
const SYSTEM_NAMES: [&str; 3] = ["template0", "template1", "postgres"];
/// The one file of a left-out database that is restored: PostgreSQL reads it to tell a
/// database directory from debris.
const KEPT_FILE: &str = "PG_VERSION";

/// What the operator asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbSelection {
    /// `--db-include`: names or OIDs.
    pub include: Vec<String>,
    /// `--db-exclude`: names or OIDs.
    pub exclude: Vec<String>,
}

impl DbSelection {
    /// Nothing asked: every database is restored.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// The databases a restore leaves out, by OID (with the recorded name where there is one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftOut {
    /// OID and name (`None` when the backup recorded none for it).
    pub databases: Vec<(u32, Option<String>)>,
}

impl LeftOut {
    /// Whether the file at `path` (relative to the data directory, as in the manifest) is one
    /// the restore creates sparse instead of restoring.
    pub fn covers(&self, path: &str) -> bool {
        !self.databases.is_empty()
            && database_file(path).is_some_and(|(oid, name)| {
                name != KEPT_FILE && self.databases.iter().any(|(o, _)| *o == oid)
            })
    }

    /// `name (oid)` of each, for messages.
    pub fn describe(&self) -> String {
        self.databases
            .iter()
            .map(|(oid, name)| match name {
                Some(n) => format!("{} ({oid})", shown(n)),
                None => format!("OID {oid}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A database name as messages show it: as it is, or quoted and escaped when it holds
/// control characters (a name is any text PostgreSQL took; one with terminal escapes must
/// not reach a terminal raw) or a comma (the separator of lists of them).
pub fn shown(name: &str) -> String {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c == ',') {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// Refuses to leave databases out of a cluster without data checksums unless the operator
/// let recovery go past invalid page references (see the module docs).
pub fn check_replayable(
    left_out: &LeftOut,
    checksums: bool,
    recovery_options: &[(String, String)],
) -> Result<()> {
    if left_out.databases.is_empty() || checksums {
        return Ok(());
    }
    let ignores = recovery_options.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("ignore_invalid_pages")
            && ["on", "true", "yes", "1"].contains(&v.trim().to_ascii_lowercase().as_str())
    });
    if ignores {
        return Ok(());
    }
    Err(Error::Config(format!(
        "leaving {} out of a restore of a cluster without data checksums: there, VACUUM marks \
         pages all-visible in WAL without their image, and replay meeting such a record on a \
         page left out stops recovery (PostgreSQL: \"WAL contains references to invalid \
         pages\"). Add --recovery-option ignore_invalid_pages=on and check the server log after \
         recovery for invalid-page warnings about the databases you restored, or restore every \
         database",
        left_out.describe()
    )))
}

/// The database directory a file lies in, and the file's name: `base/OID/NAME`, or
/// `pg_tblspc/TS/VERSION_DIR/OID/NAME`.
/// Anything else (`..`, an empty component, a sign or space in the OID) is no database file.
fn database_file(path: &str) -> Option<(u32, &str)> {
    let parts: Vec<&str> = path.split('/').collect();
    let (oid, name) = match parts.as_slice() {
        ["base", oid, name] => (*oid, *name),
        ["pg_tblspc", _, _, oid, name] => (*oid, *name),
        _ => return None,
    };
    if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((oid.parse().ok()?, name))
}

fn is_system(oid: u32, name: Option<&str>) -> bool {
    oid < FIRST_NORMAL_OID || name.is_some_and(|n| SYSTEM_NAMES.contains(&n))
}

fn is_template(name: Option<&str>, oid: u32) -> bool {
    // template1 is OID 1 in every release; template0's OID changed (4 in 15+, 13xxx before).
    oid == 1 || name.is_some_and(|n| n == "template0" || n == "template1")
}

/// Decides which databases to leave out of a restore of a backup that recorded `recorded`
/// and holds the files at `paths`.
pub fn select<'a>(
    recorded: &[Database],
    paths: impl Iterator<Item = &'a str>,
    asked: &DbSelection,
) -> Result<LeftOut> {
    if asked.is_empty() {
        return Ok(LeftOut::default());
    }
    // Every database the backup holds files of, named where the backup recorded it.
    let mut held: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for p in paths {
        if let Some((oid, _)) = database_file(p) {
            held.entry(oid).or_insert(None);
        }
    }
    for d in recorded {
        if let Some(name) = held.get_mut(&d.oid) {
            *name = Some(d.name.clone());
        }
    }
    if held.is_empty() {
        return Err(Error::Config(
            "the backup holds no database directories (base/OID): is it a PostgreSQL cluster?"
                .into(),
        ));
    }
    let holds = || {
        held.iter()
            .map(|(oid, n)| match n {
                Some(n) => format!("{} ({oid})", shown(n)),
                None => oid.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |given: &str, flag: &str| -> Result<u32> {
        if let Ok(oid) = given.parse::<u32>() {
            if held.contains_key(&oid) {
                return Ok(oid);
            }
        }
        if let Some((oid, _)) = held.iter().find(|(_, n)| n.as_deref() == Some(given)) {
            return Ok(*oid);
        }
        let names = if recorded.is_empty() {
            " (this backup recorded no database names, it was taken before they were: name \
             databases by OID)"
        } else {
            ""
        };
        Err(Error::Config(format!(
            "{flag} {given:?}: the backup holds no such database{names}; it holds {}",
            holds()
        )))
    };
    let mut excluded = BTreeSet::new();
    for e in &asked.exclude {
        let oid = find(e, "--db-exclude")?;
        let name = held[&oid].as_deref();
        if name.is_none() && is_system(oid, None) {
            return Err(Error::Config(format!(
                "--db-exclude {e:?}: this backup recorded no database names (it was taken before \
                 they were), so its system databases cannot be told from the templates, which \
                 are always restored: it can leave out only your own databases (OID 16384 and \
                 above)"
            )));
        }
        if is_template(name, oid) {
            return Err(Error::Config(format!(
                "--db-exclude {e:?}: a template database is always restored (without \
                 template1 the cluster cannot create a database)"
            )));
        }
        excluded.insert(oid);
    }
    let mut included = BTreeSet::new();
    for i in &asked.include {
        let oid = find(i, "--db-include")?;
        if is_system(oid, held[&oid].as_deref()) {
            return Err(Error::Config(format!(
                "--db-include {i:?}: system databases (template0, template1, postgres) are \
                 always restored; name only your own databases"
            )));
        }
        if excluded.contains(&oid) {
            return Err(Error::Config(format!(
                "--db-include {i:?}: the same database is in --db-exclude"
            )));
        }
        included.insert(oid);
    }
    let left_out: BTreeSet<u32> = if included.is_empty() {
        excluded
    } else {
        held.iter()
            .filter(|(oid, name)| {
                excluded.contains(oid)
                    || (!is_system(**oid, name.as_deref()) && !included.contains(oid))
            })
            .map(|(oid, _)| *oid)
            .collect()
    };
    Ok(LeftOut {
        databases: left_out
            .into_iter()
            .map(|oid| (oid, held[&oid].clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(oid: u32, name: &str) -> Database {
        Database {
            oid,
            name: name.into(),
        }
    }

    fn recorded() -> Vec<Database> {
        vec![
            db(1, "template1"),
            db(4, "template0"),
            db(5, "postgres"),
            db(16384, "sales"),
            db(16385, "hr"),
            db(16390, "12345"),
        ]
    }

    const PATHS: [&str; 12] = [
        "PG_VERSION",
        "global/1262",
        "base/1/1259",
        "base/4/1259",
        "base/5/1259",
        "base/16384/PG_VERSION",
        "base/16384/16400",
        "base/16384/pg_filenode.map",
        "base/16385/16401",
        "pg_tblspc/16500/PG_15_202209061/16384/16501",
        "pg_tblspc/16500/PG_15_202209061/16385/16502",
        "base/16390/16403",
    ];

    fn pick(include: &[&str], exclude: &[&str]) -> Result<LeftOut> {
        select(
            &recorded(),
            PATHS.iter().copied(),
            &DbSelection {
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    fn oids(l: &LeftOut) -> Vec<u32> {
        l.databases.iter().map(|(o, _)| *o).collect()
    }

    #[test]
    fn include_leaves_out_every_other_user_database_and_no_system_one() {
        let l = pick(&["sales"], &[]).unwrap();
        assert_eq!(oids(&l), vec![16385, 16390]);
        assert_eq!(l.describe(), "hr (16385), 12345 (16390)");
        assert!(l.covers("base/16385/16401"));
        assert!(l.covers("pg_tblspc/16500/PG_15_202209061/16385/16502"));
        assert!(!l.covers("base/16385/PG_VERSION"), "PG_VERSION is restored");
        assert!(!l.covers("base/16384/16400"));
        assert!(!l.covers("pg_tblspc/16500/PG_15_202209061/16384/16501"));
        assert!(!l.covers("base/5/1259"));
        assert!(!l.covers("global/1262"));
        assert!(
            !l.covers("base/16385"),
            "a directory entry is not a file in it"
        );
    }

    #[test]
    fn exclude_alone_leaves_out_just_those_and_may_name_postgres() {
        let l = pick(&[], &["hr", "postgres"]).unwrap();
        assert_eq!(oids(&l), vec![5, 16385]);
        assert!(l.covers("base/5/1259"));
        assert!(!l.covers("base/16384/16400"));
    }

    #[test]
    fn an_oid_is_looked_for_before_a_name() {
        // "12345" is a database's name, not an OID the backup holds: found by name.
        assert_eq!(oids(&pick(&[], &["12345"]).unwrap()), vec![16390]);
        // "16385" is an OID.
        assert_eq!(oids(&pick(&[], &["16385"]).unwrap()), vec![16385]);
    }

    #[test]
    fn mistakes_are_refused_with_what_the_backup_holds() {
        let e = pick(&["salse"], &[]).unwrap_err().to_string();
        assert!(
            e.contains("\"salse\"") && e.contains("sales (16384)"),
            "{e}"
        );
        let e = pick(&["postgres"], &[]).unwrap_err().to_string();
        assert!(e.contains("always restored"), "{e}");
        let e = pick(&["5"], &[]).unwrap_err().to_string();
        assert!(e.contains("always restored"), "{e}");
        let e = pick(&[], &["template1"]).unwrap_err().to_string();
        assert!(e.contains("template"), "{e}");
        let e = pick(&[], &["template0"]).unwrap_err().to_string();
        assert!(e.contains("template"), "{e}");
        let e = pick(&["sales"], &["sales"]).unwrap_err().to_string();
        assert!(e.contains("--db-exclude"), "{e}");
    }

    #[test]
    fn a_backup_without_names_takes_oids_and_says_why_names_fail() {
        let asked = |x: &str| DbSelection {
            include: vec![x.to_string()],
            exclude: Vec::new(),
        };
        let l = select(&[], PATHS.iter().copied(), &asked("16384")).unwrap();
        // Without names, system databases are told by OID alone.
        assert_eq!(oids(&l), vec![16385, 16390]);
        assert_eq!(l.describe(), "OID 16385, OID 16390");
        let e = select(&[], PATHS.iter().copied(), &asked("sales"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("recorded no database names"), "{e}");
        // Nor can it tell postgres from template0: no system database is left out.
        let excluded = |x: &str| DbSelection {
            include: Vec::new(),
            exclude: vec![x.to_string()],
        };
        for oid in ["4", "5"] {
            let e = select(&[], PATHS.iter().copied(), &excluded(oid))
                .unwrap_err()
                .to_string();
            assert!(e.contains("only your own databases"), "{e}");
        }
        let l = select(&[], PATHS.iter().copied(), &excluded("16385")).unwrap();
        assert_eq!(oids(&l), vec![16385]);
    }

    #[test]
    fn names_with_control_characters_are_shown_escaped() {
        assert_eq!(shown("sales"), "sales");
        assert_eq!(shown("my db"), "my db");
        assert_eq!(shown("a\u{1b}[2Jb"), "\"a\\u{1b}[2Jb\"");
        assert_eq!(shown("a,b"), "\"a,b\"");
        let l = LeftOut {
            databases: vec![(16390, Some("x\ny".into()))],
        };
        assert_eq!(l.describe(), "\"x\\ny\" (16390)");
    }

    #[test]
    fn without_checksums_leaving_out_needs_ignore_invalid_pages() {
        let l = pick(&["sales"], &[]).unwrap();
        let opt = |v: &str| vec![("ignore_invalid_pages".to_string(), v.to_string())];
        let e = check_replayable(&l, false, &[]).unwrap_err().to_string();
        assert!(
            e.contains("ignore_invalid_pages=on") && e.contains("hr (16385)"),
            "{e}"
        );
        assert!(check_replayable(&l, false, &opt("off")).is_err());
        assert!(check_replayable(&l, false, &opt("on")).is_ok());
        assert!(check_replayable(&l, false, &opt(" TRUE ")).is_ok());
        assert!(check_replayable(&l, true, &[]).is_ok());
        assert!(check_replayable(&LeftOut::default(), false, &[]).is_ok());
    }

    #[test]
    fn nothing_asked_leaves_nothing_out() {
        let l = pick(&[], &[]).unwrap();
        assert!(l.databases.is_empty());
        assert!(!l.covers("base/16385/16401"));
    }

    #[test]
    fn odd_paths_are_never_taken_for_database_files() {
        let l = pick(&["sales"], &[]).unwrap();
        for p in [
            "base/16385/../16401",
            "base/16385/..",
            "base/16385/",
            "base/16385/x/16401",
            "base//16401",
            "base/+16385/16401",
            "base/ 16385/16401",
            "pg_tblspc/16500/16385/16502",
            "xbase/16385/16401",
        ] {
            assert!(!l.covers(p), "{p}");
        }
        assert!(l.covers("base/16385/16401"));
    }
}
