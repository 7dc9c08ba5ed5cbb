//! `pgcairn backup`, `pgcairn restore` and `pgcairn check`.

use std::path::{Path, PathBuf};

use pgcairn_engine::backup::{
    check_archiving, create_and_record_restore_point, run_backup, BackupOptions, DEFAULT_BLOCK_SIZE,
};
use pgcairn_engine::db_select::DbSelection;
use pgcairn_engine::recovery::{parse_target_time, Target, TimelineTarget};
use pgcairn_engine::restore::{
    incomplete_hint, is_incomplete, recovery_settings, restore, RestoreOptions, INCOMPLETE_MARKER,
};
use pgcairn_engine::store::manifest::BackupType;

use super::open_repo;
use crate::args::{BackupTypeArg, Cli, OutputFormat, RestoreArgs, TargetArgs};
use crate::exit::{ExitCode, Failure};
use crate::progress::Reporter;
use crate::settings::Settings;

fn require_conninfo(settings: &Settings) -> Result<String, Failure> {
    if settings.conninfo.is_empty() {
        return Err(Failure::usage(
            "no connection configured: set cluster.conninfo (for example \"host=/var/run/postgresql user=pgcairn dbname=postgres\")",
        ));
    }
    Ok(settings.conninfo.clone())
}

/// `backup` flags besides the type.
pub struct BackupFlags {
    pub checksum_delta: bool,
    pub pin: bool,
    pub jobs: Option<usize>,
    pub index_memory: u64,
    pub output: OutputFormat,
}

pub async fn backup(
    cli: &Cli,
    settings: &Settings,
    t: BackupTypeArg,
    flags: BackupFlags,
) -> Result<(), Failure> {
    let BackupFlags {
        checksum_delta,
        pin,
        jobs,
        index_memory,
        output,
    } = flags;
    let pgdata = settings
        .pgdata
        .clone()
        .ok_or_else(|| Failure::usage("no data directory configured: set cluster.pgdata"))?;
    let repo = super::open_repo_append_only(settings, "backup").await?;
    let opts = BackupOptions {
        cluster: settings.cluster.clone(),
        pgdata,
        conninfo: require_conninfo(settings)?,
        backup_type: match t {
            BackupTypeArg::Full => BackupType::Full,
            BackupTypeArg::Diff => BackupType::Diff,
            BackupTypeArg::Incr => BackupType::Incr,
        },
        jobs: jobs.unwrap_or(settings.backup_jobs),
        block_size: if settings.block_size == 0 {
            DEFAULT_BLOCK_SIZE
        } else {
            settings.block_size
        },
        compress_level: settings.backup_compress_level,
        checksum_delta,
        archive_timeout: settings.backup_archive_timeout,
        standby_wal_wait: settings.standby_wal_wait,
        lease_wait: settings.lease_wait,
        index_memory: index_memory.saturating_mul(1 << 20),
    };
    let reporter = Reporter::new(cli.progress);
    let done = run_backup(&repo, &opts, &reporter).await?;
    let m = &done.manifest;
    if pin {
        // The newest backup is never expired, so nothing can remove it before this lands.
        pgcairn_engine::expire::set_pin(&repo, &settings.cluster, &m.id, true).await?;
    }
    let s = &m.stats;
    match output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "id": m.id, "type": m.backup_type, "reference": m.reference, "timeline": m.timeline,
                "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn, "start_time": m.start_time, "stop_time": m.stop_time,
                "start_wal": m.start_wal, "stop_wal": m.stop_wal,
                "from_standby": m.from_standby, "wal_in_backup": m.wal_in_backup,
                "stats": s, "pinned": pin,
                "block_index": {"on_disk": done.known_on_disk, "claims_forgotten": done.claims_forgotten},
                "bad_pages": done.bad_pages.iter()
                    .map(|(file, blocks)| serde_json::json!({"file": file, "blocks": blocks})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        }
        OutputFormat::Text => {
            println!(
                "backup {} ({:?}{}) complete: {} files, {:.1} MiB; read {:.1} MiB, new {:.1} MiB stored as {:.1} MiB; WAL {} .. {}",
                m.id,
                m.backup_type,
                m.reference.as_deref().map(|r| format!(", reference {r}")).unwrap_or_default(),
                s.files,
                s.size as f64 / 1048576.0,
                s.bytes_read as f64 / 1048576.0,
                s.bytes_new as f64 / 1048576.0,
                s.stored_new as f64 / 1048576.0,
                m.start_wal,
                m.stop_wal
            );
            if let Some(n) = done.known_on_disk {
                println!(
                    "block index: {n} blocks stored, more than --index-memory holds: kept in a table in {}",
                    std::env::temp_dir().display()
                );
            }
            if done.claims_forgotten > 0 {
                println!(
                    "{} block ids of this backup forgotten to stay within --index-memory (blocks met again after that were stored again)",
                    done.claims_forgotten
                );
            }
            if s.blocks_patched > 0 {
                println!(
                    "{} blocks recorded as patches on base blocks (changed parts only)",
                    s.blocks_patched
                );
            }
            if m.from_standby {
                println!(
                    "taken on a standby (consistent at its minimum recovery point {})",
                    m.stop_lsn
                );
            }
            if !m.wal_in_backup.is_empty() {
                println!(
                    "WAL {} was not archived within backup.standby_wal_wait: copied from the standby's pg_wal into the backup",
                    m.wal_in_backup.join(" ")
                );
            }
            for (file, blocks) in &done.bad_pages {
                println!("WARNING: page checksum failures in {file}: blocks {blocks:?}");
            }
        }
    }
    if settings.retention_auto {
        super::expire::auto_expire(settings, &m.id).await?;
    }
    Ok(())
}

/// The `restore_command` a restore writes: fetches WAL from this same repository and cluster,
/// with `--prefetch`, so replay finds the next segments already fetched and verified instead
/// of waiting for a round trip per segment (where the spool directory is usable).
pub fn restore_command(cli: &Cli, settings: &Settings) -> Result<String, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::usage(format!("cannot find own executable: {e}")))?;
    Ok(restore_command_with(&exe, cli, settings, Fetch::Prefetch))
}

/// How a `restore_command` fetches WAL.
#[derive(Debug, Clone, Copy)]
pub enum Fetch<'a> {
    /// Through the prefetch spool of `archive.spool_dir` (`--prefetch`).
    Prefetch,
    /// Through a prefetch spool of its own (`--spool-dir DIR --prefetch`): a drill's
    /// recovery, which must not share a spool with a standby of the same cluster on the host.
    PrefetchInto(&'a Path),
}

/// The `restore_command` running the pgcairn binary at `exe`.
///
/// PostgreSQL hands the command to `/bin/sh -c` after replacing `%f`, `%p`, `%r` and `%%`, so
/// every word taken from the user (paths, URL, cluster name) is one single-quoted shell word
/// with its `%` doubled: `$(...)`, backticks, quotes and `%` in a path stay literal.
pub fn restore_command_with(exe: &Path, cli: &Cli, settings: &Settings, fetch: Fetch) -> String {
    let mut cmd = placeholder_safe(&pgcairn_engine::pg::instance::sh_quote(
        &exe.display().to_string(),
    ));
    if let Some(cfg) = &settings.config_file {
        let cfg = std::fs::canonicalize(cfg).unwrap_or_else(|_| cfg.clone());
        cmd.push_str(" --config ");
        cmd.push_str(&placeholder_safe(&pgcairn_engine::pg::instance::sh_quote(
            &cfg.display().to_string(),
        )));
    }
    if let Some(repo) = &cli.repo {
        cmd.push_str(" --repo ");
        cmd.push_str(&placeholder_safe(&pgcairn_engine::pg::instance::sh_quote(
            repo,
        )));
    }
    cmd.push_str(" --cluster ");
    cmd.push_str(&placeholder_safe(&pgcairn_engine::pg::instance::sh_quote(
        &settings.cluster,
    )));
    if let Fetch::PrefetchInto(dir) = fetch {
        cmd.push_str(" --spool-dir ");
        cmd.push_str(&placeholder_safe(&pgcairn_engine::pg::instance::sh_quote(
            &dir.display().to_string(),
        )));
    }
    cmd.push_str(" archive-get --prefetch %f %p");
    cmd
}

/// Doubles `%` so PostgreSQL's placeholder expansion leaves it alone.
fn placeholder_safe(s: &str) -> String {
    s.replace('%', "%%")
}

/// Turns target flags into the engine's target.
pub fn target_spec(t: &TargetArgs) -> Result<(Target, TimelineTarget, String), Failure> {
    let given = [
        t.target_time.is_some(),
        t.target_lsn.is_some(),
        t.target_xid.is_some(),
        t.target_name.is_some(),
        t.target_immediate.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(Failure::usage(
            "give one recovery target: --target-time, --target-lsn, --target-xid, --target-name or --target immediate",
        ));
    }
    let (spec, label) = if let Some(v) = &t.target_time {
        (Target::Time(parse_target_time(v)?), format!("time {v}"))
    } else if let Some(l) = &t.target_lsn {
        (
            Target::Lsn(
                l.parse()
                    .map_err(|e| Failure::usage(format!("--target-lsn: {e}")))?,
            ),
            format!("lsn {l}"),
        )
    } else if let Some(x) = t.target_xid {
        (Target::Xid(x), format!("xid {x}"))
    } else if let Some(n) = &t.target_name {
        (Target::Name(n.clone()), format!("restore point {n}"))
    } else if t.target_immediate.is_some() {
        (
            Target::Immediate,
            "immediate (backup consistency point)".into(),
        )
    } else {
        (Target::EndOfArchive, "end of the archive".into())
    };
    if t.target_exclusive && matches!(spec, Target::EndOfArchive | Target::Immediate) {
        return Err(Failure::usage(
            "--target-exclusive needs --target-time, --target-lsn, --target-xid or --target-name",
        ));
    }
    let timeline = match t.target_timeline.as_str() {
        "latest" => TimelineTarget::Latest,
        "current" => TimelineTarget::Current,
        n => TimelineTarget::Id(n.parse().map_err(|_| {
            Failure::usage(format!(
                "--target-timeline {n:?}: use latest, current or a number"
            ))
        })?),
    };
    Ok((spec, timeline, label))
}

fn restore_options(
    cli: &Cli,
    settings: &Settings,
    args: &RestoreArgs,
) -> Result<RestoreOptions, Failure> {
    let target: PathBuf = if args.pgdata.is_absolute() {
        args.pgdata.clone()
    } else {
        std::env::current_dir()
            .unwrap_or_default()
            .join(&args.pgdata)
    };
    let (target_spec, target_timeline, _) = target_spec(&args.target)?;
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let (oid, dir) = m
            .split_once('=')
            .and_then(|(o, d)| Some((o.parse::<u32>().ok()?, PathBuf::from(d))))
            .ok_or_else(|| Failure::usage(format!("--tablespace-map {m:?}: expected OID=DIR")))?;
        if !dir.is_absolute() {
            return Err(Failure::usage(format!(
                "--tablespace-map {m:?}: DIR must be absolute"
            )));
        }
        map.push((oid, dir));
    }
    for (option, dir) in [
        ("--wal-dir", &args.wal_dir),
        ("--config-dir", &args.config_dir),
        ("--tablespace-map-all", &args.tablespace_map_all),
    ] {
        if let Some(d) = dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(Failure::usage(format!(
                "{option} {}: DIR must be absolute",
                d.display()
            )));
        }
    }
    Ok(RestoreOptions {
        backup: args.backup.clone(),
        jobs: args.jobs.unwrap_or(settings.restore_jobs),
        restore_owner: pgcairn_engine::pg::instance::current_uid() == 0,
        target_spec,
        target_exclusive: args.target.target_exclusive,
        target_action: args.target_action.clone(),
        target_timeline,
        standby: args.restore_type == "standby",
        primary_conninfo: args.primary_conninfo.clone(),
        dry_run: args.dry_run,
        delta: args.delta,
        direct_io: !args.buffered,
        index_memory: args.index_memory.saturating_mul(1 << 20),
        tablespace_map: map,
        tablespace_map_all: args.tablespace_map_all.clone(),
        databases: DbSelection {
            include: args.db_include.clone(),
            exclude: args.db_exclude.clone(),
        },
        archive_off: args.archive_mode == "off",
        recovery_options: pgcairn_engine::recovery_options::parse(&args.recovery_option)?,
        wal_dir: args.wal_dir.clone(),
        config_dir: args.config_dir.clone(),
        hold: match pgcairn_storage::parse_duration(&args.hold) {
            Some(d) if d.as_secs() == 0 => None,
            Some(d) => Some(d),
            None => {
                return Err(Failure::usage(format!(
                    "--hold {:?}: give a duration such as 24h, 90m or 0",
                    args.hold
                )))
            }
        },
        ..RestoreOptions::new(&settings.cluster, target, restore_command(cli, settings)?)
    })
}

pub async fn restore_cmd(
    cli: &Cli,
    settings: &Settings,
    args: &RestoreArgs,
) -> Result<(), Failure> {
    let opts = restore_options(cli, settings, args)?;
    let repo = open_repo(settings).await?;
    let reporter = Reporter::new(cli.progress);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Failure::new(ExitCode::Failed, e.to_string()))?;
    // An interrupted or failed restore leaves the target marked unfinished (no pg_control):
    // say what that means and how to finish it.
    let hint = |target: &Path| {
        if !opts.dry_run && is_incomplete(target) {
            eprintln!("{}", incomplete_hint(target));
            if let Some(w) = &opts.wal_dir {
                eprintln!("(again with --wal-dir {}: pg_wal links there)", w.display());
            }
        }
    };
    let s = tokio::select! {
        r = restore(&repo, &opts, &reporter) => match r {
            Ok(s) => s,
            Err(e) => {
                if !e.to_string().contains(INCOMPLETE_MARKER) {
                    hint(&opts.target);
                }
                return Err(e.into());
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("restore interrupted");
            hint(&opts.target);
            std::process::exit(130);
        }
        _ = sigterm.recv() => {
            eprintln!("restore interrupted (SIGTERM)");
            hint(&opts.target);
            std::process::exit(143);
        }
    };
    if args.output == OutputFormat::Json {
        let doc = serde_json::json!({
            "backup_id": s.backup_id,
            "plan": s.plan,
            "dry_run": opts.dry_run,
            "pgdata": opts.target.to_string_lossy(),
            "files": s.files,
            "bytes": s.bytes,
            "bytes_reused": s.bytes_reused,
            "files_removed": s.files_removed,
            "files_synced": s.files_synced,
            "seconds": s.seconds,
            "block_index": {"blocks": s.index_blocks, "on_disk": s.index_on_disk},
            "databases_left_out": s.left_out.databases.iter()
                .map(|(oid, name)| serde_json::json!({"oid": oid, "name": name}))
                .collect::<Vec<_>>(),
            "bytes_left_out": s.bytes_left_out,
            "wal_dir": opts.wal_dir.as_ref().map(|w| w.to_string_lossy()),
            "backup_wal_link": s.backup_wal_link.as_ref().map(|w| w.to_string_lossy()),
            "config_files": s.config_files.iter().map(|f| f.path.to_string_lossy()).collect::<Vec<_>>(),
            "config_written": s.config_written.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
            "config_review": s.config_review,
            "hold": s.hold.as_ref().map(|k| k.to_string()),
            "recovery_settings": recovery_settings(&opts).into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .chain(opts.recovery_options.iter().cloned())
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect::<serde_json::Map<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
        if opts.restore_owner && !opts.dry_run {
            warn_if_owner_cannot_run(&opts.target, settings);
        }
        return Ok(());
    }
    let p = &s.plan;
    println!("backup {}: {}", p.backup_id, p.reason);
    println!(
        "WAL {} .. {} ({} segments, timeline {}); {:.1} MiB of files",
        p.first_wal,
        p.last_wal,
        p.wal_segments,
        p.timeline,
        p.restore_bytes as f64 / 1048576.0
    );
    if let Some(k) = &s.hold {
        println!(
            "held against expire for {} ({k}): the backup and the WAL after it stay while the \
             recovery may need them",
            args.hold
        );
    }
    if s.index_on_disk {
        println!(
            "block index: {} blocks, more than --index-memory holds: kept in a table in {}",
            s.index_blocks,
            std::env::temp_dir().display()
        );
    }
    let left_out = |verb: &str| {
        if !s.left_out.databases.is_empty() {
            println!(
                "databases {verb} out: {} ({:.1} MiB, files created sparse: neither read nor \
                 written); after recovery they cannot be used: DROP DATABASE each",
                s.left_out.describe(),
                s.bytes_left_out as f64 / 1048576.0
            );
        }
    };
    let wal_place = || match (&opts.wal_dir, &s.backup_wal_link) {
        (Some(w), _) => println!("pg_wal: a link to {} (--wal-dir)", w.display()),
        (None, Some(link)) => println!(
            "note: the backup's pg_wal was a link to {}; it is restored as a directory in the \
             data directory (--wal-dir DIR keeps WAL on a disk of its own)",
            link.display()
        ),
        (None, None) => {}
    };
    let config_place = || {
        let listed = || {
            s.config_files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !s.config_written.is_empty() {
            for p in &s.config_written {
                println!("configuration file written: {}", p.display());
            }
            for r in &s.config_review {
                println!("review: {r}");
            }
        } else if s.config_files.is_empty() {
        } else if opts.config_dir.is_none() {
            println!(
                "note: the backup holds configuration files from outside the data directory \
                 ({}); write them with --config-dir DIR (under DIR at their paths; / puts \
                 them back in place)",
                listed()
            );
        } else {
            println!(
                "configuration files to write under --config-dir: {}",
                listed()
            );
        }
    };
    if opts.dry_run {
        left_out("to be left");
        wal_place();
        config_place();
        println!("dry run: the target is reachable; nothing was written");
        return Ok(());
    }
    println!(
        "restored into {}: {} files, {:.1} MiB in {:.1}s{}",
        opts.target.display(),
        s.files,
        s.bytes as f64 / 1048576.0,
        s.seconds,
        if opts.delta {
            format!(
                "; delta: {:.1} MiB reused, {:.1} MiB rewritten, {} files removed, {} files synced",
                s.bytes_reused as f64 / 1048576.0,
                (s.bytes - s.bytes_reused) as f64 / 1048576.0,
                s.files_removed,
                s.files_synced
            )
        } else {
            String::new()
        }
    );
    left_out("left");
    wal_place();
    config_place();
    for (k, v) in recovery_settings(&opts) {
        println!("  {k} = '{v}'");
    }
    for (k, v) in &opts.recovery_options {
        println!("  {k} = '{v}' (--recovery-option)");
    }
    if opts.restore_owner {
        warn_if_owner_cannot_run(&opts.target, settings);
    }
    println!("start PostgreSQL to recover");
    Ok(())
}

/// Run as root, `restore_command` names this binary and config, but PostgreSQL runs it as the
/// data directory's owner: say so now if that user cannot run them, rather than let recovery
/// fail at its first WAL file.
fn warn_if_owner_cannot_run(datadir: &Path, settings: &Settings) {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(datadir).map(|m| m.uid()) else {
        return;
    };
    let Some(user) = user_name(uid) else {
        return;
    };
    if uid == 0 {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let can = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("runuser")
            .args(["-u", &user, "--"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !can(&[exe.as_os_str(), "--version".as_ref()]) {
        eprintln!(
            "WARNING: restore_command runs {} as {user}, who cannot execute it: install pgcairn \
             where {user} can run it (e.g. /usr/local/bin) and restore again, or fix \
             restore_command in postgresql.auto.conf",
            exe.display()
        );
    }
    if let Some(cfg) = &settings.config_file {
        if !can(&["test".as_ref(), "-r".as_ref(), cfg.as_os_str()]) {
            eprintln!(
                "WARNING: restore_command reads {} as {user}, who cannot read it: recovery will \
                 fail at its first WAL file. Let {user} read it (and the key file it names)",
                cfg.display()
            );
        }
    }
}

/// The login name of `uid`, from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_string())
        })
}

pub async fn restore_point(settings: &Settings, name: &str) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    let lsn = create_and_record_restore_point(
        &repo,
        &settings.cluster,
        &require_conninfo(settings)?,
        name,
    )
    .await?;
    println!("restore point {name:?} created at lsn {lsn}");
    Ok(())
}

pub async fn check(settings: &Settings) -> Result<(), Failure> {
    let repo = open_repo(settings).await?;
    println!(
        "repository {}: ok ({})",
        repo.storage().describe(),
        repo.config().repo_id
    );
    if let Some(lock) = settings.object_lock {
        // object_store has no bucket-level requests: the bucket's configuration cannot be read
        // from here, so say what is assumed and how to compare.
        println!(
            "object lock: repo.object_lock_days = {} assumed to be the bucket's default retention \
             (not verifiable from here: compare with `aws s3api get-object-lock-configuration --bucket BUCKET`)",
            lock.as_secs() / 86_400
        );
    }
    let r = check_archiving(
        &repo,
        &settings.cluster,
        &require_conninfo(settings)?,
        settings.backup_archive_timeout,
    )
    .await?;
    println!(
        "PostgreSQL {}: wal_level={}, archive_mode={}",
        r.pg_version_num, r.wal_level, r.archive_mode
    );
    println!("archive_command: {}", r.archive_command);
    if let Some(seg) = &r.archived_segment {
        println!(
            "WAL switch: {seg} archived after {:.1}s: ok",
            r.archive_wait_seconds
        );
    }
    if let Some(s) = &r.standby {
        println!("this server is a standby; checked:");
        for line in &s.checked {
            println!("  ok: {line}");
        }
        for line in &s.warnings {
            println!("  WARNING: {line}");
        }
        println!("only the primary can tell:");
        for line in &s.primary_only {
            println!("  - {line}");
        }
    }
    Ok(())
}
