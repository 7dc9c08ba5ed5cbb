//! Restoring a backup into a data directory.
//!
//! Before writing anything, a preflight checks that the manifest authenticates, that every
//! block it references is indexed, and that every pack holding them exists. Then directories
//! (tablespaces as links to their recorded locations), then files in parallel: for each file,
//! runs of blocks that sit next to each other in one pack are fetched with one range read,
//! opened (authenticated, decompressed, id re-checked) on the CPU pool and written at their
//! offsets; all-zero blocks are left as holes. Each file's BLAKE3 is compared with the
//! manifest's before it is fsynced. Last, `backup_label`, `tablespace_map`, `recovery.signal`
//! and the recovery settings. Run as root, ownership is restored from the manifest.
//!
//! Memory: the manifest's file list is spilled to a temporary file while it is parsed
//! ([`crate::backup::file_spool`]) and each file's entry is read back when it is restored, so
//! what grows with the backup is the index of its blocks (52 bytes per distinct block, see
//! [`BlockIndex`]) and each file's path.

use std::collections::HashSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::archive::push::run_cpu;
use crate::backup::blockstore::BlockIndex;
use crate::backup::file_spool::SpooledFiles;
use crate::backup::manifest::{self, FileEntry, Manifest};
use crate::error::{Error, Result};
use crate::index::IndexEntry;
use crate::pack::open_block;
use crate::progress::Progress;
use crate::recovery::{self, Plan, Target, TimelineTarget};
use crate::repo::{layout, Repository};

/// Largest single range read.
const MAX_RUN: u64 = 8 << 20;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Cluster.
    pub cluster: String,
    /// Backup id; `None`: the newest.
    pub backup: Option<String>,
    /// Target data directory (must not exist or be empty).
    pub target: PathBuf,
    /// Files restored in parallel.
    pub jobs: usize,
    /// `restore_command` to write into the recovery settings.
    pub restore_command: String,
    /// Restore recorded ownership (only meaningful as root).
    pub restore_owner: bool,
    /// Recovery target.
    pub target_spec: Target,
    /// Stop just before the target instead of just after (`recovery_target_inclusive = off`).
    pub target_exclusive: bool,
    /// `recovery_target_action` (`None`: PostgreSQL's default, pause).
    pub target_action: Option<String>,
    /// Timeline to follow.
    pub target_timeline: TimelineTarget,
    /// Restore as a standby (`standby.signal`, no target).
    pub standby: bool,
    /// Only plan and check; write nothing.
    pub dry_run: bool,
    /// Reuse an existing data directory, rewriting only blocks that differ.
    pub delta: bool,
    /// Tablespace locations by OID, replacing the recorded ones.
    pub tablespace_map: Vec<(u32, PathBuf)>,
    /// Put every tablespace under this directory (`DIR/<oid>`).
    pub tablespace_map_all: Option<PathBuf>,
}

impl RestoreOptions {
    /// Options for a plain restore to the end of the archive.
    pub fn new(cluster: &str, target: PathBuf, restore_command: String) -> Self {
        RestoreOptions {
            cluster: cluster.to_string(),
            backup: None,
            target,
            jobs: 2,
            restore_command,
            restore_owner: false,
            target_spec: Target::EndOfArchive,
            target_exclusive: false,
            target_action: None,
            target_timeline: TimelineTarget::Latest,
            standby: false,
            dry_run: false,
            delta: false,
            tablespace_map: Vec::new(),
            tablespace_map_all: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// The plan it followed.
    pub plan: Plan,
    /// Bytes already right in the target (delta restore).
    pub bytes_reused: u64,
    /// Files removed because the backup does not have them (delta restore).
    pub files_removed: u64,
    /// Backup restored.
    pub backup_id: String,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Checks that everything the backup references is present; returns the index of its
/// blocks. `files` is the backup's file list (spilled to local disk: read here twice at most,
/// one entry at a time).
pub async fn preflight(
    repo: &Repository,
    m: &Manifest,
    files: &SpooledFiles,
) -> Result<BlockIndex> {
    let mut wanted = Vec::new();
    for f in files.entries() {
        wanted.extend(f?.blocks.iter().filter_map(|b| b.0));
    }
    let index = BlockIndex::load_wanted(repo, wanted).await?;
    if let Some(missing) = index.first_missing() {
        let mut path = String::from("?");
        for f in files.entries() {
            let f = f?;
            if f.blocks.iter().any(|b| b.0 == Some(missing)) {
                path = f.path;
                break;
            }
        }
        return Err(Error::corrupt(
            format!("backup {}", m.id),
            format!(
                "block {} of {path} is not in any index segment",
                missing.to_hex()
            ),
        ));
    }
    let mut checks = futures::stream::iter(index.pack_ids())
        .map(|p| async move { (p, repo.storage().head(&layout::pack(&p)).await) })
        .buffer_unordered(16);
    while let Some((p, r)) = checks.next().await {
        if let Err(e) = r {
            return Err(if e.is_not_found() {
                Error::corrupt(
                    layout::pack(&p).to_string(),
                    format!("pack referenced by backup {} is missing", m.id),
                )
            } else {
                e.into()
            });
        }
    }
    Ok(index)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("writing {}", path.display()), e)
}

fn ensure_empty_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(Error::Config(format!(
                    "{what} {} is not empty; restore into an empty or new directory (delta restore comes with --delta)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))
        }
        Err(e) => Err(io(dir, e)),
    }
}

/// Restores a backup.
pub async fn restore(
    repo: &Repository,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    if opts.standby && opts.target_spec != Target::EndOfArchive {
        return Err(Error::Config(
            "--type standby takes no recovery target: a standby follows the archive".into(),
        ));
    }
    let (chosen, plan) = recovery::plan(
        repo,
        &opts.cluster,
        opts.backup.as_deref(),
        &opts.target_spec,
        opts.target_timeline,
    )
    .await?;
    // The file list goes to local disk as the manifest is parsed: memory holds the index of
    // the backup's blocks (52 bytes per block) and each file's path, not the block lists.
    let (mut m, files) = manifest::load_spilled(repo, &opts.cluster, &chosen.id).await?;
    let index = Arc::new(preflight(repo, &m, &files).await?);
    if opts.dry_run {
        return Ok(RestoreSummary {
            plan,
            bytes_reused: 0,
            files_removed: 0,
            backup_id: m.id.clone(),
            files: 0,
            bytes: 0,
            seconds: 0.0,
        });
    }
    remap_tablespaces(&mut m, opts)?;
    if opts.delta {
        refuse_running_postmaster(&opts.target)?;
        std::fs::create_dir_all(&opts.target).map_err(|e| io(&opts.target, e))?;
    } else {
        ensure_empty_dir(&opts.target, "target directory")?;
        for t in &m.tablespaces {
            ensure_empty_dir(&t.location, &format!("tablespace {} location", t.oid))?;
        }
    }
    std::fs::set_permissions(&opts.target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&opts.target, e))?;
    for d in &m.directories {
        let path = opts.target.join(&d.path);
        let tablespace = d
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok());
        match tablespace.and_then(|oid| m.tablespaces.iter().find(|t| t.oid == oid)) {
            Some(t) => {
                std::fs::create_dir_all(&t.location).map_err(|e| io(&t.location, e))?;
                match std::fs::read_link(&path) {
                    Ok(existing) if existing == t.location => {}
                    Ok(_) => {
                        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                        std::os::unix::fs::symlink(&t.location, &path).map_err(|e| io(&path, e))?;
                    }
                    Err(_) => {
                        if path.is_dir() {
                            std::fs::remove_dir_all(&path).map_err(|e| io(&path, e))?;
                        }
                        std::os::unix::fs::symlink(&t.location, &path).map_err(|e| io(&path, e))?;
                    }
                }
            }
            None => {
                std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode))
                    .map_err(|e| io(&path, e))?;
            }
        }
    }
    let files_removed = if opts.delta {
        remove_extra_files(&m, files.paths(), &opts.target)?
    } else {
        0
    };
    let total: u64 = m.stats.size;
    progress.phase("restore", Some(total));
    let files = Arc::new(files);
    let paths: Vec<String> = files.paths().map(str::to_string).collect();
    let delta = opts.delta;
    let block_size = m.block_size as u64;
    let mut writes = futures::stream::iter(paths)
        .map(|path| {
            let files = files.clone();
            let index = index.clone();
            let target = opts.target.clone();
            async move {
                let f = files
                    .get(&path)?
                    .ok_or_else(|| Error::InvalidInput(format!("{path} left the file list")))?;
                restore_file(repo, &index, &target.join(&f.path), &f, block_size, delta)
                    .await
                    .map(|reused| (f.size, reused))
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    let (mut bytes, mut bytes_reused) = (0, 0);
    while let Some(r) = writes.next().await {
        let (n, reused) = r?;
        bytes += n;
        bytes_reused += reused;
        progress.advance(n, n - reused);
    }
    drop(writes);
    write_recovery_files(&m, opts)?;
    if opts.restore_owner {
        restore_ownership(&m, &files, &opts.target)?;
    }
    for t in &m.tablespaces {
        sync_dir(&t.location)?;
    }
    sync_dir(&opts.target)?;
    progress.finish();
    Ok(RestoreSummary {
        plan,
        bytes_reused,
        files_removed,
        backup_id: m.id.clone(),
        files: files.len() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Applies `--tablespace-map` / `--tablespace-map-all` to the manifest's tablespaces and its
/// `tablespace_map` text (which PostgreSQL reads at startup to recreate the links).
fn remap_tablespaces(m: &mut Manifest, opts: &RestoreOptions) -> Result<()> {
    for (oid, _) in &opts.tablespace_map {
        if !m.tablespaces.iter().any(|t| t.oid == *oid) {
            let known: Vec<String> = m.tablespaces.iter().map(|t| t.oid.to_string()).collect();
            return Err(Error::Config(format!(
                "--tablespace-map {oid}=...: backup {} has no tablespace {oid} (it has: {})",
                m.id,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    for t in &mut m.tablespaces {
        if let Some((_, dir)) = opts.tablespace_map.iter().find(|(oid, _)| *oid == t.oid) {
            t.location = dir.clone();
        } else if let Some(all) = &opts.tablespace_map_all {
            t.location = all.join(t.oid.to_string());
        }
    }
    if m.tablespace_map.is_some() {
        let text: String = m
            .tablespaces
            .iter()
            .map(|t| format!("{} {}\n", t.oid, t.location.display()))
            .collect();
        m.tablespace_map = Some(text);
    }
    Ok(())
}

/// Delta restore needs PostgreSQL stopped: refuse if `postmaster.pid` names a live process.
fn refuse_running_postmaster(target: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(target.join("postmaster.pid")) else {
        return Ok(());
    };
    if let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    {
        if Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::Config(format!(
                "{} is in use by a running PostgreSQL (postmaster.pid names live process {pid}); stop it before a delta restore",
                target.display()
            )));
        }
    }
    Ok(())
}

/// Delta restore: removes files and links under the target that the backup does not have.
fn remove_extra_files<'a>(
    m: &'a Manifest,
    file_paths: impl Iterator<Item = &'a str>,
    target: &Path,
) -> Result<u64> {
    let keep: HashSet<&str> = file_paths
        .chain(m.directories.iter().map(|d| d.path.as_str()))
        .collect();
    let mut removed = 0;
    let mut stack = vec![(target.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().map_err(|err| io(&e.path(), err))?;
            if ft.is_dir() || (ft.is_symlink() && e.path().is_dir()) {
                if keep.contains(path.as_str()) {
                    stack.push((e.path(), path));
                } else {
                    if ft.is_symlink() {
                        std::fs::remove_file(e.path()).map_err(|err| io(&e.path(), err))?;
                    } else {
                        std::fs::remove_dir_all(e.path()).map_err(|err| io(&e.path(), err))?;
                    }
                    removed += 1;
                }
            } else if !keep.contains(path.as_str()) {
                std::fs::remove_file(e.path()).map_err(|err| io(&e.path(), err))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// One file: runs of pack-adjacent blocks per range read, hashed in order, then fsynced.
async fn restore_file(
    repo: &Repository,
    index: &BlockIndex,
    path: &Path,
    f: &FileEntry,
    block_size: u64,
    delta: bool,
) -> Result<u64> {
    // Delta: blocks already right in an existing file are kept (compared by keyed id).
    let existing = if delta {
        read_existing_ids(repo, path, f, block_size).await?
    } else {
        None
    };
    if let Some(same) = &existing {
        if same.iter().all(|s| *s) && std::fs::metadata(path).map(|m| m.len()).ok() == Some(f.size)
        {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
                .map_err(|e| io(path, e))?;
            return Ok(f.size);
        }
    }
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(!delta)
            .open(path)
            .map_err(|e| io(path, e))?,
    );
    let same = |i: usize| {
        existing
            .as_ref()
            .is_some_and(|v| v.get(i).copied().unwrap_or(false))
    };
    let mut reused = 0u64;
    let mut i = 0;
    while i < f.blocks.len() {
        if same(i) {
            reused += block_len(f, i, block_size);
            i += 1;
            continue;
        }
        if f.blocks[i].is_zero() {
            let len = block_len(f, i, block_size);
            if delta {
                file.write_at(&vec![0u8; len as usize], i as u64 * block_size)
                    .map_err(|e| io(path, e))?;
            }
            i += 1;
            continue;
        }
        // A run: consecutive non-zero blocks contiguous in one pack.
        let first = locate(index, f, i)?;
        let mut run: Vec<(usize, IndexEntry)> = vec![(i, first)];
        let mut end = first.entry.offset + u64::from(first.entry.sealed_len);
        let mut j = i + 1;
        while j < f.blocks.len() && !f.blocks[j].is_zero() && !same(j) {
            let e = locate(index, f, j)?;
            if e.pack_id != first.pack_id
                || e.entry.offset != end
                || end - first.entry.offset >= MAX_RUN
            {
                break;
            }
            end += u64::from(e.entry.sealed_len);
            run.push((j, e));
            j += 1;
        }
        let key = layout::pack(&first.pack_id);
        let bytes = repo
            .storage()
            .get_range(&key, first.entry.offset..end)
            .await?;
        let codec = repo.codec().clone();
        let file2 = file.clone();
        let base = first.entry.offset;
        let key_s = key.to_string();
        run_cpu(move || -> Result<()> {
            for (pos, e) in &run {
                let s = (e.entry.offset - base) as usize;
                let sealed = &bytes[s..s + e.entry.sealed_len as usize];
                let plain = open_block(&codec, &e.entry, sealed)
                    .map_err(|err| Error::corrupt(key_s.clone(), err.to_string()))?;
                file2
                    .write_at(&plain, *pos as u64 * block_size)
                    .map_err(|err| Error::io("writing a restored file", err))?;
            }
            Ok(())
        })
        .await?;
        i = j;
    }
    file.set_len(f.size).map_err(|e| io(path, e))?;
    file.sync_all().map_err(|e| io(path, e))?;
    // Whole-file check against the checksum recorded at backup, read back from disk (this
    // also covers blocks a delta restore kept).
    let (check_path, expected) = (path.to_path_buf(), f.checksum.clone());
    let actual = run_cpu(move || {
        let mut h = blake3::Hasher::new();
        // A bounded buffer, not a map: mapped pages of a 1 GiB relation file would count as
        // resident memory of the restore.
        std::fs::File::open(&check_path)
            .and_then(|f| {
                h.update_reader(std::io::BufReader::with_capacity(1 << 20, f))
                    .map(|_| ())
            })
            .map(|_| h.finalize().to_hex().to_string())
    })
    .await
    .map_err(|e| io(path, e))?;
    if actual != expected {
        return Err(Error::corrupt(
            f.path.clone(),
            "restored file does not match the checksum recorded at backup",
        ));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
        .map_err(|e| io(path, e))?;
    Ok(reused)
}

/// For delta restore: which blocks of an existing file already hold the backup's content.
async fn read_existing_ids(
    repo: &Repository,
    path: &Path,
    f: &FileEntry,
    block_size: u64,
) -> Result<Option<Vec<bool>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let codec = repo.codec().clone();
    let (p, blocks) = (path.to_path_buf(), f.blocks.clone());
    run_cpu(move || -> Result<Option<Vec<bool>>> {
        use std::io::Read;
        let mut file = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
        let mut buf = vec![0u8; block_size as usize];
        let mut out = Vec::with_capacity(blocks.len());
        for b in &blocks {
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).map_err(|e| io(&p, e))? {
                    0 => break,
                    n => filled += n,
                }
            }
            let data = &buf[..filled];
            let same = match b.0 {
                None => !data.is_empty() && data.iter().all(|x| *x == 0),
                Some(id) => codec.content_id(data) == id,
            };
            out.push(same);
        }
        Ok(Some(out))
    })
    .await
}

fn block_len(f: &FileEntry, i: usize, block_size: u64) -> u64 {
    (f.size - i as u64 * block_size).min(block_size)
}

fn locate(index: &BlockIndex, f: &FileEntry, i: usize) -> Result<IndexEntry> {
    let id = f.blocks[i]
        .0
        .ok_or_else(|| Error::corrupt(f.path.clone(), "a zero block has no location"))?;
    index.get(&id).ok_or_else(|| {
        Error::corrupt(
            f.path.clone(),
            format!("block {} is not indexed", id.to_hex()),
        )
    })
}

fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, body).map_err(|e| io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(path, e))?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// Marker comments around the settings pgcairn writes into `postgresql.auto.conf`.
pub const AUTO_CONF_BEGIN: &str = "# pgcairn recovery settings (begin)";
/// End marker.
pub const AUTO_CONF_END: &str = "# pgcairn recovery settings (end)";

/// The recovery settings pgcairn writes for a restore.
pub fn recovery_settings(opts: &RestoreOptions) -> Vec<(&'static str, String)> {
    let mut v = vec![("restore_command", opts.restore_command.clone())];
    match &opts.target_spec {
        Target::EndOfArchive => {}
        Target::Immediate => v.push(("recovery_target", "immediate".into())),
        Target::Time(t) => v.push(("recovery_target_time", recovery::pg_time(*t))),
        Target::Lsn(l) => v.push(("recovery_target_lsn", l.to_string())),
        Target::Xid(x) => v.push(("recovery_target_xid", x.to_string())),
        Target::Name(n) => v.push(("recovery_target_name", n.clone())),
    }
    if opts.target_spec != Target::EndOfArchive && opts.target_spec != Target::Immediate {
        v.push((
            "recovery_target_inclusive",
            if opts.target_exclusive { "off" } else { "on" }.into(),
        ));
    }
    if let Some(a) = &opts.target_action {
        v.push(("recovery_target_action", a.clone()));
    }
    v.push((
        "recovery_target_timeline",
        match opts.target_timeline {
            TimelineTarget::Latest => "latest".into(),
            TimelineTarget::Current => "current".into(),
            TimelineTarget::Id(n) => n.to_string(),
        },
    ));
    v
}

fn write_recovery_files(m: &Manifest, opts: &RestoreOptions) -> Result<()> {
    let t = &opts.target;
    write_file(&t.join("backup_label"), m.backup_label.as_bytes(), 0o600)?;
    let map = t.join("tablespace_map");
    match &m.tablespace_map {
        Some(text) => write_file(&map, text.as_bytes(), 0o600)?,
        None => {
            let _ = std::fs::remove_file(&map);
        }
    }
    let (signal, other) = if opts.standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    write_file(&t.join(signal), b"", 0o600)?;
    let _ = std::fs::remove_file(t.join(other));
    let auto = t.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    // Keep the user's settings, replace earlier pgcairn ones.
    let mut kept = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == AUTO_CONF_BEGIN {
            inside = true;
        } else if line == AUTO_CONF_END {
            inside = false;
        } else if !inside {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept.push_str(AUTO_CONF_BEGIN);
    kept.push('\n');
    for (k, v) in recovery_settings(opts) {
        kept.push_str(&crate::pg::guc::line(k, &v));
    }
    kept.push_str(AUTO_CONF_END);
    kept.push('\n');
    write_file(&auto, kept.as_bytes(), 0o600)
}

fn restore_ownership(m: &Manifest, files: &SpooledFiles, target: &Path) -> Result<()> {
    let chown = |p: &Path, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| io(p, e))
    };
    // The owner of the data directory: that of PG_VERSION, which every cluster has.
    let owner = files
        .get("PG_VERSION")?
        .map(|f| (f.uid, f.gid))
        .unwrap_or((0, 0));
    chown(target, owner.0, owner.1)?;
    for d in &m.directories {
        chown(&target.join(&d.path), d.uid, d.gid)?;
    }
    for t in &m.tablespaces {
        chown(&t.location, owner.0, owner.1)?;
    }
    for f in files.entries() {
        let f = f?;
        chown(&target.join(&f.path), f.uid, f.gid)?;
    }
    for name in [
        "backup_label",
        "tablespace_map",
        "recovery.signal",
        "postgresql.auto.conf",
    ] {
        let p = target.join(name);
        if p.exists() {
            chown(&p, owner.0, owner.1)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}
