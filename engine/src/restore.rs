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

use std::collections::HashSet;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::archive::push::run_cpu;
use crate::backup::blockstore::BlockIndex;
use crate::backup::manifest::{self, FileEntry, Manifest};
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::index::IndexEntry;
use crate::pack::open_block;
use crate::progress::Progress;
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
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    /// Backup restored.
    pub backup_id: String,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Picks the backup: the given id, or the newest.
pub async fn choose_backup(repo: &Repository, cluster: &str, id: Option<&str>) -> Result<Manifest> {
    let id = match id {
        Some(id) => id.to_string(),
        None => manifest::list_ids(repo, cluster)
            .await?
            .pop()
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "cluster {cluster:?} has no backup yet: run `pgbunker backup` first"
                ))
            })?,
    };
    manifest::load(repo, cluster, &id).await
}

/// Checks that everything the backup references is present; returns the index.
pub async fn preflight(repo: &Repository, m: &Manifest) -> Result<BlockIndex> {
    let index = BlockIndex::load(repo).await?;
    let mut packs = HashSet::new();
    for f in &m.files {
        for b in f.blocks.iter().filter(|b| !b.is_empty()) {
            let id = ContentId::from_hex(b)
                .ok_or_else(|| Error::corrupt(&m.id, format!("bad block id in {}", f.path)))?;
            let e = index.get(&id).ok_or_else(|| {
                Error::corrupt(
                    format!("backup {}", m.id),
                    format!("block {b} of {} is not in any index segment", f.path),
                )
            })?;
            packs.insert(e.pack_id);
        }
    }
    let mut checks = futures::stream::iter(packs)
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
    let m = choose_backup(repo, &opts.cluster, opts.backup.as_deref()).await?;
    let index = Arc::new(preflight(repo, &m).await?);
    ensure_empty_dir(&opts.target, "target directory")?;
    std::fs::set_permissions(&opts.target, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&opts.target, e))?;
    for t in &m.tablespaces {
        ensure_empty_dir(&t.location, &format!("tablespace {} location", t.oid))?;
    }
    for d in &m.directories {
        let path = opts.target.join(&d.path);
        let tablespace = d
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok());
        match tablespace.and_then(|oid| m.tablespaces.iter().find(|t| t.oid == oid)) {
            Some(t) => std::os::unix::fs::symlink(&t.location, &path).map_err(|e| io(&path, e))?,
            None => {
                std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode))
                    .map_err(|e| io(&path, e))?;
            }
        }
    }
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    progress.phase("restore", Some(total));
    let files = Arc::new(m.files.clone());
    let mut writes = futures::stream::iter(0..files.len())
        .map(|i| {
            let files = files.clone();
            let index = index.clone();
            let target = opts.target.clone();
            async move {
                let f = &files[i];
                restore_file(repo, &index, &target.join(&f.path), f, m.block_size as u64)
                    .await
                    .map(|_| f.size)
            }
        })
        .buffer_unordered(opts.jobs.max(1));
    let mut bytes = 0;
    while let Some(r) = writes.next().await {
        let n = r?;
        bytes += n;
        progress.advance(n, 0);
    }
    write_recovery_files(&m, opts)?;
    if opts.restore_owner {
        restore_ownership(&m, &opts.target)?;
    }
    for t in &m.tablespaces {
        sync_dir(&t.location)?;
    }
    sync_dir(&opts.target)?;
    progress.finish();
    Ok(RestoreSummary {
        backup_id: m.id.clone(),
        files: m.files.len() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One file: runs of pack-adjacent blocks per range read, hashed in order, then fsynced.
async fn restore_file(
    repo: &Repository,
    index: &BlockIndex,
    path: &Path,
    f: &FileEntry,
    block_size: u64,
) -> Result<()> {
    let file = Arc::new(std::fs::File::create(path).map_err(|e| io(path, e))?);
    let mut hasher = blake3::Hasher::new();
    let mut i = 0;
    while i < f.blocks.len() {
        if f.blocks[i].is_empty() {
            let len = block_len(f, i, block_size);
            hasher.update(&vec![0u8; len as usize]);
            i += 1;
            continue;
        }
        // A run: consecutive non-zero blocks contiguous in one pack.
        let first = locate(index, f, i)?;
        let mut run: Vec<(usize, IndexEntry)> = vec![(i, first)];
        let mut end = first.entry.offset + u64::from(first.entry.sealed_len);
        let mut j = i + 1;
        while j < f.blocks.len() && !f.blocks[j].is_empty() {
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
        let plain_runs = run_cpu(move || -> Result<Vec<Vec<u8>>> {
            let mut out = Vec::with_capacity(run.len());
            for (pos, e) in &run {
                let s = (e.entry.offset - base) as usize;
                let sealed = &bytes[s..s + e.entry.sealed_len as usize];
                let plain = open_block(&codec, &e.entry, sealed)
                    .map_err(|err| Error::corrupt(key_s.clone(), err.to_string()))?;
                file2
                    .write_at(&plain, *pos as u64 * block_size)
                    .map_err(|err| Error::io("writing a restored file", err))?;
                out.push(plain);
            }
            Ok(out)
        })
        .await?;
        for p in &plain_runs {
            hasher.update(p);
        }
        i = j;
    }
    file.set_len(f.size).map_err(|e| io(path, e))?;
    if hasher.finalize().to_hex().as_str() != f.checksum {
        return Err(Error::corrupt(
            f.path.clone(),
            "restored file does not match the checksum recorded at backup",
        ));
    }
    file.sync_all().map_err(|e| io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
        .map_err(|e| io(path, e))?;
    Ok(())
}

fn block_len(f: &FileEntry, i: usize, block_size: u64) -> u64 {
    (f.size - i as u64 * block_size).min(block_size)
}

fn locate(index: &BlockIndex, f: &FileEntry, i: usize) -> Result<IndexEntry> {
    let id = ContentId::from_hex(&f.blocks[i])
        .ok_or_else(|| Error::corrupt(f.path.clone(), "bad block id"))?;
    index.get(&id).copied().ok_or_else(|| {
        Error::corrupt(
            f.path.clone(),
            format!("block {} is not indexed", f.blocks[i]),
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

/// Marker comments around the settings pgbunker writes into `postgresql.auto.conf`.
pub const AUTO_CONF_BEGIN: &str = "# pgbunker recovery settings (begin)";
/// End marker.
pub const AUTO_CONF_END: &str = "# pgbunker recovery settings (end)";

fn write_recovery_files(m: &Manifest, opts: &RestoreOptions) -> Result<()> {
    let t = &opts.target;
    write_file(&t.join("backup_label"), m.backup_label.as_bytes(), 0o600)?;
    if let Some(map) = &m.tablespace_map {
        write_file(&t.join("tablespace_map"), map.as_bytes(), 0o600)?;
    }
    write_file(&t.join("recovery.signal"), b"", 0o600)?;
    let auto = t.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    // Keep the user's settings, replace earlier pgbunker ones.
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
    kept.push_str(&format!(
        "{AUTO_CONF_BEGIN}\nrestore_command = '{}'\n{AUTO_CONF_END}\n",
        opts.restore_command.replace('\'', "''")
    ));
    write_file(&auto, kept.as_bytes(), 0o600)
}

fn restore_ownership(m: &Manifest, target: &Path) -> Result<()> {
    let chown = |p: &Path, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(|e| io(p, e))
    };
    let owner = m.files.first().map(|f| (f.uid, f.gid)).unwrap_or((0, 0));
    chown(target, owner.0, owner.1)?;
    for d in &m.directories {
        chown(&target.join(&d.path), d.uid, d.gid)?;
    }
    for t in &m.tablespaces {
        chown(&t.location, owner.0, owner.1)?;
    }
    for f in &m.files {
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
