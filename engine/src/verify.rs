//! `pgcairn verify`: is the repository intact, and which backups does any damage affect?
//!
//! Structure (always): every manifest authenticates; every block it references is indexed and
//! its pack exists; the WAL from each backup's start to its consistency point is archived;
//! every WAL record still has its data object (one LIST of each cluster's data objects).
//! Packs no index entry references are reported as orphans (garbage for `gc`, not damage).
//! Each cluster's catalog head is compared with storage ([`crate::store::audit`]): backups
//! and WAL it records that are gone, and a head that is missing or rolled back, are damage;
//! the result is recorded in the head (best effort).
//!
//! Data (`--read-data`): packs are downloaded, their names re-checked (BLAKE3 of the bytes),
//! their trailers opened, and every block decrypted, decompressed and re-hashed against its
//! id. Which packs: all, a random percentage, or the deterministic slice N of T (packs whose
//! id falls in slice N), so T nightly runs cover everything. Packs verified in the last
//! [`REVERIFY_AFTER`] (recorded with the time in a local state file, [`VerifiedPacks`]) are
//! skipped unless `all_again` is set: a pack can rot in storage after it was read, so each is
//! read again after that long. The state file is read only if it is a regular file of the
//! running user's (a list another user wrote could tell verify to skip every pack), and is
//! replaced whole, never written through a link.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::error::Result;
use crate::pack::{open_block, read_pack_entries};
use crate::recovery::ArchiveView;
use crate::repo::{layout, Repository};
use crate::store::block_lists::ListReader;
use crate::store::blocks::BlockIndex;
use crate::store::ids::PackId;
use crate::store::manifest::{self, Manifest};

/// Which packs to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Structure only.
    None,
    /// Every pack.
    All,
    /// A random percentage of packs.
    Percent(f64),
    /// Slice `n` (1-based) of `t`.
    Slice(u32, u32),
}

/// Options.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Which packs to read.
    pub read_data: ReadData,
    /// Re-read packs already verified.
    pub all_again: bool,
    /// Local file remembering verified packs ([`VerifiedPacks`]).
    pub state_file: Option<PathBuf>,
    /// Parallel pack reads.
    pub jobs: usize,
    /// Memory for the repository's block index (52 bytes per index entry); past it the index
    /// is a table in `TMPDIR` ([`BlockIndex::load_within`]).
    pub index_memory: u64,
}

/// Default [`VerifyOptions::index_memory`]: 64 MiB, the index of about 1.3 million blocks.
pub const DEFAULT_INDEX_MEMORY: u64 = 64 << 20;

/// How long a pack read and found whole is skipped by later runs.
pub const REVERIFY_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Packs read and found whole, with when (seconds since the epoch): one `<hex id> <time>` line
/// each. A line without a time (files of earlier versions) counts as long ago.
#[derive(Debug, Default)]
pub struct VerifiedPacks(BTreeMap<String, u64>);

impl VerifiedPacks {
    /// The packs recorded in `path` and verified within [`REVERIFY_AFTER`] of `now`. Nothing
    /// (every pack is read) when the file is missing, is not a regular file of this user's
    /// (a link, another user's list), or cannot be read.
    pub fn load(path: &std::path::Path, now: u64) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mine = std::fs::symlink_metadata(path).is_ok_and(|m| {
            m.file_type().is_file() && m.uid() == rustix::process::geteuid().as_raw()
        });
        if !mine {
            return Self::default();
        }
        let Ok(bytes) = crate::untrusted_file::read_capped(path, 256 << 20) else {
            return Self::default();
        };
        let fresh = now.saturating_sub(REVERIFY_AFTER.as_secs());
        VerifiedPacks(
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| {
                    let (id, at) = l.split_once(' ')?;
                    let at: u64 = at.trim().parse().ok()?;
                    (at >= fresh).then(|| (id.to_string(), at))
                })
                .collect(),
        )
    }

    /// Whether `pack` is recorded.
    pub fn contains(&self, pack: &PackId) -> bool {
        self.0.contains_key(&pack.to_hex())
    }

    /// Records `pack` as verified at `at`.
    pub fn insert(&mut self, pack: PackId, at: u64) {
        self.0.insert(pack.to_hex(), at);
    }

    /// Replaces `path` whole (its directory created 0700), never writing through a link.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            crate::private_fs::create_dir_all(dir)?;
        }
        let body: String = self
            .0
            .iter()
            .map(|(id, at)| format!("{id} {at}\n"))
            .collect();
        crate::private_fs::replace(path, body.as_bytes())
    }
}

/// One problem.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The object at fault.
    pub object: String,
    /// What is wrong.
    pub detail: String,
    /// Backups it affects.
    pub backups: Vec<String>,
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Backups checked.
    pub backups: usize,
    /// Packs in the repository.
    pub packs: usize,
    /// Packs read and re-hashed this run.
    pub packs_read: usize,
    /// Blocks re-hashed this run.
    pub blocks_read: u64,
    /// Packs skipped as already verified.
    pub packs_skipped: usize,
    /// Packs nothing references.
    pub orphan_packs: Vec<String>,
    /// Damage found.
    pub problems: Vec<Problem>,
    /// Backups affected by damage.
    pub damaged_backups: Vec<String>,
    /// Per cluster, the catalog head compared with storage.
    pub catalog: Vec<crate::store::audit::HeadAudit>,
}

fn slice_of(pack: &PackId, t: u32) -> u32 {
    (u64::from_le_bytes(pack.as_bytes()[..8].try_into().expect("8 bytes")) % u64::from(t)) as u32
        + 1
}

/// Verifies the repository (every cluster).
pub async fn verify(repo: &Repository, opts: &VerifyOptions) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let index = Arc::new(BlockIndex::load_within(repo, opts.index_memory).await?);
    let lists = ListReader::with_index(repo, index.clone());
    // Which backups use which pack.
    let mut users: HashMap<PackId, BTreeSet<String>> = HashMap::new();
    let mut views: HashMap<String, ArchiveView> = HashMap::new();
    // One manifest in memory at a time: a repository of many backups costs one backup's
    // block list, not all of them.
    let mut listed = Vec::new();
    for cluster in manifest::cluster_names(repo).await? {
        for id in manifest::list_ids(repo, &cluster).await? {
            listed.push((cluster.clone(), id));
        }
    }
    for (cluster, id) in listed {
        let m: Manifest = match manifest::load_with(repo, &cluster, &id, &lists).await {
            Ok(m) => m,
            // Verify could not look (a local disk, storage out of reach): that says nothing
            // about the backup.
            Err(e) if e.is_operational() => return Err(e),
            Err(e) => {
                report.problems.push(Problem {
                    object: layout::backup_manifest(&cluster, &id).to_string(),
                    detail: e.to_string(),
                    backups: vec![id.clone()],
                });
                continue;
            }
        };
        report.backups += 1;
        let mut missing = 0usize;
        let mut misfit = None;
        for f in &m.files {
            if misfit.is_none() {
                misfit = f
                    .misfit(u64::from(m.block_size))
                    .map(|why| format!("{} {why}; take a new backup", f.path));
            }
            let blocks = f.blocks.iter().filter_map(|b| b.0.as_ref());
            let patches = f.patches.iter().map(|p| &p.delta);
            // Its block lists are blocks too (read while the manifest loaded), and so are
            // its patches.
            for id in blocks.chain(patches).chain(&f.block_lists) {
                match index.try_get(id)? {
                    Some(e) => {
                        users.entry(e.pack_id).or_default().insert(m.id.clone());
                    }
                    None => missing += 1,
                }
            }
        }
        if missing > 0 {
            report.problems.push(Problem {
                object: format!("backup {}", m.id),
                detail: format!("{missing} referenced blocks are in no index segment"),
                backups: vec![m.id.clone()],
            });
        }
        if let Some(detail) = misfit {
            report.problems.push(Problem {
                object: format!("backup {}", m.id),
                detail,
                backups: vec![m.id.clone()],
            });
        }
        // WAL from start to consistency (the archive view is read once per cluster).
        if !views.contains_key(&m.cluster) {
            let seg_size = crate::store::cluster::read(repo, &m.cluster)
                .await?
                .map(|r| r.wal_segment_size)
                .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
            views.insert(
                m.cluster.clone(),
                ArchiveView::load(repo, &m.cluster, seg_size).await?,
            );
        }
        let view = &views[&m.cluster];
        let seg_size = view.seg_size;
        let needed = view.needed(
            m.timeline,
            m.start_lsn,
            Some(m.consistency_segment(seg_size)),
        );
        // A standby backup may carry its last segments itself (restored into pg_wal).
        let carried = m.carried_segments(seg_size);
        let needed: Vec<(u32, u64)> = needed
            .into_iter()
            .filter(|n| !carried.contains(n))
            .collect();
        if let Some(missing) = view.first_missing(&needed) {
            let how = if view.is_lost(&missing) {
                "recorded but its data object is missing"
            } else {
                "missing from the archive"
            };
            report.problems.push(Problem {
                object: format!("WAL {missing}"),
                detail: format!("needed to make backup {} consistent, {how}", m.id),
                backups: vec![m.id.clone()],
            });
        }
    }
    // WAL records whose data object is gone (every cluster, backups or not): archive-get
    // fails on them and no restore replays past them.
    for cluster in manifest::cluster_names(repo).await? {
        if !views.contains_key(&cluster) {
            let seg_size = crate::store::cluster::read(repo, &cluster)
                .await?
                .map(|r| r.wal_segment_size)
                .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
            views.insert(
                cluster.clone(),
                ArchiveView::load(repo, &cluster, seg_size).await?,
            );
        }
        for name in views[&cluster].dataless_names() {
            report.problems.push(Problem {
                object: layout::wal_pointer(&cluster, &name).to_string(),
                detail: format!(
                    "WAL segment {name} is recorded but its data object (under {}{}/) is missing: \
                     archive-get fails for it and no restore can replay past it. Push the file again with \
                     `pgcairn archive-push` if a copy exists (that restores the data object)",
                    layout::wal_data_prefix(&cluster),
                    name.timeline()
                ),
                backups: Vec::new(),
            });
        }
        // What the catalog head records and storage no longer holds (records without data
        // were reported just above).
        let audit = crate::store::audit::audit(repo, &cluster, Some(&views[&cluster])).await?;
        let mut not_yet_reported = audit.clone();
        not_yet_reported.missing_wal.retain(|w| w.what == "record");
        for (object, detail) in not_yet_reported.findings() {
            let backups = audit
                .missing_backups
                .iter()
                .filter(|id| object == layout::backup_manifest(&cluster, id).to_string())
                .cloned()
                .collect();
            report.problems.push(Problem {
                object,
                detail,
                backups,
            });
        }
        report.catalog.push(audit);
    }
    // Packs present.
    let present: HashSet<String> = repo
        .storage()
        .list(layout::PACKS_PREFIX)
        .await?
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    report.packs = present.len();
    let indexed: BTreeMap<String, PackId> = users
        .keys()
        .map(|p| (layout::pack(p).to_string(), *p))
        .collect();
    let all_indexed: HashSet<String> = index
        .pack_ids()?
        .iter()
        .map(|p| layout::pack(p).to_string())
        .collect();
    for key in &present {
        if !all_indexed.contains(key) {
            report.orphan_packs.push(key.clone());
        }
    }
    report.orphan_packs.sort();
    for (key, pack) in &indexed {
        if !present.contains(key) {
            report.problems.push(Problem {
                object: key.clone(),
                detail: "pack missing".into(),
                backups: users[pack].iter().cloned().collect(),
            });
        }
    }
    // Data.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut verified = match (&opts.state_file, opts.all_again) {
        (Some(p), false) => VerifiedPacks::load(p, now),
        _ => VerifiedPacks::default(),
    };
    let selected: Vec<PackId> = indexed
        .iter()
        .filter(|(key, _)| present.contains(*key))
        .map(|(_, p)| *p)
        .filter(|p| match opts.read_data {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Percent(pct) => rand::random::<f64>() * 100.0 < pct,
            ReadData::Slice(n, t) => slice_of(p, t) == n,
        })
        .collect();
    let (todo, skipped): (Vec<_>, Vec<_>) =
        selected.into_iter().partition(|p| !verified.contains(p));
    report.packs_skipped = skipped.len();
    let mut reads = futures::stream::iter(todo)
        .map(|p| async move {
            let key = layout::pack(&p);
            let bytes = repo.storage().get(&key).await?;
            let codec = repo.codec().clone();
            let checked = crate::cpu::run(move || -> std::result::Result<u64, String> {
                if blake3::hash(&bytes).as_bytes() != p.as_bytes() {
                    return Err("pack bytes do not match its name (BLAKE3)".into());
                }
                let entries =
                    read_pack_entries(&codec, &bytes).map_err(|e| format!("trailer: {e}"))?;
                for e in &entries {
                    let s = e.offset as usize;
                    let sealed = bytes
                        .get(s..s + e.sealed_len as usize)
                        .ok_or("block outside the pack")?;
                    open_block(&codec, e, sealed)
                        .map_err(|err| format!("block {}: {err}", e.block_id.to_hex()))?;
                }
                Ok(entries.len() as u64)
            })
            .await;
            Ok::<_, crate::Error>((p, checked))
        })
        .buffer_unordered(opts.jobs.max(1));
    while let Some(r) = reads.next().await {
        let (p, checked) = r?;
        report.packs_read += 1;
        match checked {
            Ok(blocks) => {
                report.blocks_read += blocks;
                verified.insert(p, now);
            }
            Err(detail) => report.problems.push(Problem {
                object: layout::pack(&p).to_string(),
                detail,
                backups: users
                    .get(&p)
                    .map(|u| u.iter().cloned().collect())
                    .unwrap_or_default(),
            }),
        }
    }
    if let Some(path) = &opts.state_file {
        if let Err(e) = verified.save(path) {
            tracing::warn!(
                "the list of verified packs was not saved in {}: {e}",
                path.display()
            );
        }
    }
    let damaged: BTreeSet<String> = report
        .problems
        .iter()
        .flat_map(|p| p.backups.iter().cloned())
        .collect();
    report.damaged_backups = damaged.into_iter().collect();
    record_in_heads(repo, &report).await;
    Ok(report)
}

/// Records the outcome in each cluster's catalog head, best effort: a verify run with
/// read-only credentials still verifies, it only cannot leave its result behind.
async fn record_in_heads(repo: &Repository, report: &VerifyReport) {
    let at = crate::store::Timestamp::now();
    for audit in &report.catalog {
        let Some(_) = audit.generation else { continue };
        let result = crate::store::head::CheckResult {
            at,
            ok: report.problems.is_empty(),
            summary: match report.problems.len() {
                0 => format!("ok: {} backups, {} packs", report.backups, report.packs),
                n => format!(
                    "{n} problems; damaged backups: {:?}",
                    report.damaged_backups
                ),
            },
        };
        let res = crate::store::head::update(repo, &audit.cluster, 0, |h| {
            h.last_verify = Some(result.clone());
            true
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(
                "could not record the verify result in the catalog head of {:?}: {e}",
                audit.cluster
            );
        }
        let done = crate::store::status::VerifyStatus {
            finished_at: at,
            ok: report.problems.is_empty(),
            problems: report.problems.len() as u64,
            read_data: report.packs_read > 0,
        };
        crate::store::status::record(repo, &audit.cluster, "verify result", |s| {
            s.verify = Some(done.clone());
            true
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::BlockRef;

    #[test]
    fn the_verified_list_is_trusted_only_when_ours_fresh_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/verified-packs-r");
        let (a, b) = (PackId::new([1; 32]), PackId::new([2; 32]));
        let now = 100 * 86_400;
        let mut v = VerifiedPacks::default();
        v.insert(a, now - 86_400);
        v.insert(b, now - 31 * 86_400);
        v.save(&path).unwrap();
        let loaded = VerifiedPacks::load(&path, now);
        assert!(loaded.contains(&a), "read yesterday: skipped");
        assert!(!loaded.contains(&b), "read a month ago: read again");
        // Lines of earlier versions, without a time: read again.
        std::fs::write(&path, format!("{}\n", a.to_hex())).unwrap();
        assert!(!VerifiedPacks::load(&path, now).contains(&a));
        // A link (planted by whoever can write there) is neither trusted nor written through.
        let planted = dir.path().join("planted");
        std::fs::write(&planted, format!("{} {now}\n", b.to_hex())).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&planted, &path).unwrap();
        assert!(
            !VerifiedPacks::load(&path, now).contains(&b),
            "a link is not trusted"
        );
        v.save(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&planted).unwrap(),
            format!("{} {now}\n", b.to_hex()),
            "the link's target untouched"
        );
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        // Another user's list (only root can make one to test with).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert!(!VerifiedPacks::load(&path, now).contains(&a), "not ours");
        }
    }

    #[test]
    fn slices_cover_every_pack_exactly_once() {
        let packs: Vec<PackId> = (0..200u8)
            .map(|i| PackId::new(*blake3::hash(&[i]).as_bytes()))
            .collect();
        let t = 7;
        let mut seen = 0;
        for n in 1..=t {
            seen += packs.iter().filter(|p| slice_of(p, t) == n).count();
        }
        assert_eq!(seen, packs.len());
    }

    #[tokio::test]
    async fn a_manifest_whose_blocks_do_not_fit_its_size_is_named() {
        let (_, repo) = crate::test_support::memory_repo().await;
        for (id, size) in [("20261124T000001F", 8192u64), ("20261124T000002F", 16384)] {
            let mut m = crate::test_support::manifest_of(id, &[]);
            m.files[0].size = size;
            m.files[0].blocks = vec![BlockRef::ZERO; 2];
            manifest::save(&repo, &m).await.unwrap();
        }
        let opts = VerifyOptions {
            read_data: ReadData::None,
            all_again: false,
            state_file: None,
            jobs: 1,
            index_memory: DEFAULT_INDEX_MEMORY,
        };
        let report = verify(&repo, &opts).await.unwrap();
        let misfit: Vec<&Problem> = report
            .problems
            .iter()
            .filter(|p| p.detail.contains("a restore cannot place them"))
            .collect();
        assert_eq!(misfit.len(), 1, "{:?}", report.problems);
        assert_eq!(misfit[0].backups, vec!["20261124T000001F".to_string()]);
        assert!(
            misfit[0]
                .detail
                .starts_with("base/1/1 lists 2 blocks for 8192 bytes"),
            "{}",
            misfit[0].detail
        );
    }
}
