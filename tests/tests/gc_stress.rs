//! Retention and garbage collection under load, end to end.
//!
//! Expire and gc are the only commands that delete data, and they are meant to run from cron
//! while PostgreSQL archives WAL and backups run. Their safety argument (gc marks, condemns,
//! and sweeps only after a grace period; backups never deduplicate against condemned packs;
//! a backup lease holds off the sweep of anything the backup may have deduplicated against;
//! expire removes only WAL older than the oldest retained backup) is about interleavings that
//! the single-command tests never produce. Here, for about half a minute, three loops run at
//! once against one repository, with a grace period no longer than a backup takes:
//!
//! - pgbench load with WAL switches, archived by `archive-push` as `archive_command`;
//! - backups (a full, then incrementals, a full every third), each followed by a marker row
//!   whose commit time is recorded as that backup's recovery target. Before each full but the
//!   first, a database-wide `VACUUM FULL` rewrites every page, so once the previous cycle
//!   expires whole packs are garbage and gc sweeps them while backups and archiving go on;
//! - `expire` (`[retention] full = 1`) then `gc --grace 3s`, over and over.
//!
//! Every command must succeed. Afterwards a last expire and two gc runs past the grace period
//! settle the repository, and then: exactly the backups the policy keeps remain; the archive
//! has no hole; each retained backup restores and recovers to its target with exactly the
//! marker rows committed by then; `verify --read-data --all` passes; gc reclaimed something;
//! and, computed independently through the engine library, every block a manifest references
//! is indexed in an existing pack while no pack older than the grace period is left that holds
//! no referenced block.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgcairn_engine::crypto::{ContentId, KeyFile, Unlock};
use pgcairn_engine::index::open_segment;
use pgcairn_engine::repo::{layout, Repository};
use pgcairn_engine::store::blocks::BlockIndex;
use pgcairn_engine::store::manifest;
use pgcairn_tests::*;

/// How long backups, load and expire/gc run concurrently (at least).
const CONCURRENT: Duration = Duration::from_secs(28);
/// Backups taken at least: a full, two incrementals and the next full, so that retention
/// expires a whole cycle and gc has garbage to sweep.
const MIN_BACKUPS: usize = 4;
/// The gc grace period, no longer than a backup takes: gc judges packs of backups still running,
/// and only the backup lease keeps it from sweeping what they deduplicated against.
const GRACE: &str = "3s";
const GRACE_SECS: u64 = 3;
/// Marker committed after everything else, so every recorded target has a commit after it.
const LAST_MARK: i64 = 1_000_000;

/// A successful backup and the marker committed right after it.
#[derive(Debug, Clone)]
struct Taken {
    id: String,
    full: bool,
    /// Marker rows 1..=mark are committed at `target`; mark + 1 is committed later.
    mark: i64,
    /// Recovery target time (UTC, microseconds).
    target: String,
}

/// What the expire/gc loop did.
#[derive(Debug, Default)]
struct GcTotals {
    runs: usize,
    expired: usize,
    condemned: usize,
    swept: usize,
    reclaimed_bytes: u64,
}

/// Sets the shared stop flag when dropped: always (the backup loop, whose end ends the
/// concurrent phase), or only when the thread panics (the others), so no loop outlives a failure.
struct StopFlag<'a> {
    flag: &'a AtomicBool,
    always: bool,
}

impl Drop for StopFlag<'_> {
    fn drop(&mut self) {
        if self.always || std::thread::panicking() {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert_success(out, what);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: output is not JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn gc_json(env: &TestEnv, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["gc", "--grace", GRACE, "--output", "json"];
    args.extend_from_slice(extra);
    json(&env.pgcairn(&args), &format!("pgcairn {}", args.join(" ")))
}

fn count(v: &serde_json::Value, field: &str) -> usize {
    v[field].as_array().map_or(0, Vec::len)
}

fn utc_now_text(pg: &Instance) -> String {
    pg.psql(
        "postgres",
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
    .unwrap()
}

/// Restores with `args` into a new instance `name`, starts it, and returns its highest mark
/// (the instance stops again before this returns).
fn restored_mark(env: &TestEnv, name: &str, args: &[&str]) -> i64 {
    let r = env.restore_and_start_with(name, args, false);
    let _stop = StopOnDrop(&r);
    max_mark(&r)
}

fn max_mark(inst: &Instance) -> i64 {
    inst.psql(
        "postgres",
        &format!("select coalesce(max(n), 0) from marks where n < {LAST_MARK}"),
    )
    .unwrap()
    .parse()
    .unwrap()
}

/// pgbench in short rounds, with a WAL switch after each.
fn load_loop(pg: &Instance, stop: &AtomicBool) -> usize {
    let _guard = StopFlag {
        flag: stop,
        always: false,
    };
    let mut rounds = 0;
    while !stop.load(Ordering::SeqCst) {
        pg.pgbench(&["-T", "4", "-c", "2"]).expect("pgbench load");
        switch_wal(pg);
        rounds += 1;
    }
    rounds
}

/// Backups until the deadline, and at least [`MIN_BACKUPS`]: a full, then incrementals, a full
/// every third.
fn backup_loop(env: &TestEnv, pg: &Instance, deadline: Instant, stop: &AtomicBool) -> Vec<Taken> {
    let _guard = StopFlag {
        flag: stop,
        always: true,
    };
    let mut taken = Vec::new();
    while (Instant::now() < deadline || taken.len() < MIN_BACKUPS) && !stop.load(Ordering::SeqCst) {
        let mark = taken.len() as i64 + 1;
        let full = mark % 3 == 1;
        if full && mark > 1 {
            // Rewrite every table of the database (new relfilenodes, new page LSNs): the
            // blocks the previous cycle stored become unreferenced once it expires, so whole
            // packs turn into garbage for gc while the next backups run.
            pg.psql("postgres", "vacuum full").unwrap();
        }
        let started = Instant::now();
        let b = backup_json(env, &["--type", if full { "full" } else { "incr" }]);
        let id = b["id"].as_str().expect("backup id").to_string();
        assert_eq!(
            b["type"].as_str(),
            Some(if full { "full" } else { "incr" }),
            "backup {id}: {b:#}"
        );
        pg.psql("postgres", &format!("insert into marks(n) values ({mark})"))
            .unwrap();
        let target = utc_now_text(pg);
        eprintln!(
            "gc_stress: backup {mark} {id} ({}) took {:?}; target {target}",
            if full { "full" } else { "incr" },
            started.elapsed()
        );
        taken.push(Taken {
            id,
            full,
            mark,
            target,
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    taken
}

/// `expire`, then `gc`, until the backups are done.
/// Runs expire and gc in turns until `stop`; gc with `mark` (its `--index-memory`, if given),
/// checking that a mark past it went to disk.
fn maintenance_loop(env: &TestEnv, stop: &AtomicBool, mark: &[&str]) -> GcTotals {
    let _guard = StopFlag {
        flag: stop,
        always: false,
    };
    let mut t = GcTotals::default();
    while !stop.load(Ordering::SeqCst) {
        let e = json(
            &env.pgcairn(&["expire", "--output", "json"]),
            "pgcairn expire",
        );
        t.expired += e["backups"]
            .as_array()
            .expect("expire decisions")
            .iter()
            .filter(|d| d["keep"] == false)
            .count();
        std::thread::sleep(Duration::from_millis(400));
        let g = gc_json(env, mark);
        if g["index_entries"].as_u64() > Some(0) {
            assert_eq!(
                g["mark_on_disk"],
                mark == ["--index-memory", "0"],
                "gc {mark:?}: {g}"
            );
        }
        t.runs += 1;
        t.condemned += count(&g, "condemned");
        t.swept += count(&g, "swept");
        t.reclaimed_bytes += g["reclaimed_bytes"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(600));
    }
    t
}

/// The `[repo]` options of the config, minus what is not a storage option.
fn storage_options(config: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(config).unwrap();
    let mut in_repo = false;
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_repo = line == "[repo]";
            continue;
        }
        let Some((k, v)) = line.split_once('=').filter(|_| in_repo) else {
            continue;
        };
        let k = k.trim();
        // pgcairn's own [repo] settings, not the storage backend's.
        if !["url", "key_file", "passphrase_file", "max_requests"].contains(&k) {
            out.insert(k.to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the repository holds, computed with the engine library, independently of `gc`.
#[derive(Debug)]
struct PackAudit {
    packs: usize,
    referenced_blocks: usize,
    /// Blocks indexed in more than one pack.
    duplicated_blocks: usize,
    /// Packs older than the grace period holding no block any manifest references.
    unreferenced_old: Vec<String>,
    /// Referenced blocks the index does not know, or whose pack is gone.
    dangling: Vec<String>,
    /// Packs index entries point to that do not exist.
    indexed_missing: Vec<String>,
}

fn audit_packs(env: &TestEnv, grace: Duration) -> PackAudit {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = pgcairn_storage::StorageOptions::new(storage_options(&env.config))
            .expect("storage options");
        let storage = pgcairn_storage::open(&env.repo_url, &options).expect("open storage");
        let unlock = Unlock::KeyFile(KeyFile::load(&env.key_file).expect("key file"));
        let repo = Repository::open(storage, Some(&unlock))
            .await
            .expect("open repository");

        let mut referenced: HashSet<ContentId> = HashSet::new();
        for cluster in manifest::cluster_names(&repo).await.unwrap() {
            for id in manifest::list_ids(&repo, &cluster).await.unwrap() {
                let m = manifest::load(&repo, &cluster, &id).await.unwrap();
                for f in &m.files {
                    referenced.extend(f.blocks.iter().filter_map(|b| b.0));
                }
            }
        }

        // Every pack that holds a referenced block, per index segment (a block may be indexed
        // in more than one pack: every copy counts).
        let mut holding: HashSet<String> = HashSet::new();
        let mut indexed: HashSet<String> = HashSet::new();
        let mut copies: HashMap<ContentId, usize> = HashMap::new();
        for seg in repo.storage().list(layout::INDEX_PREFIX).await.unwrap() {
            let sealed = repo.storage().get(&seg.key).await.unwrap();
            let id = layout::parse_index_segment(seg.key.as_str()).expect("index segment name");
            for e in open_segment(repo.codec(), &id, &sealed).expect("index segment opens") {
                *copies.entry(e.entry.block_id).or_default() += 1;
                indexed.insert(e.pack_id.to_hex());
                if referenced.contains(&e.entry.block_id) {
                    holding.insert(e.pack_id.to_hex());
                }
            }
        }

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let listed = repo.storage().list("packs/").await.unwrap();
        let present: HashSet<String> = listed
            .iter()
            .filter_map(|p| p.key.as_str().rsplit('/').next().map(str::to_string))
            .collect();
        let unreferenced_old = listed
            .iter()
            .filter(|p| p.modified.is_none_or(|m| now - m >= grace.as_secs() as i64))
            .filter_map(|p| p.key.as_str().rsplit('/').next())
            .filter(|id| !holding.contains(*id))
            .map(str::to_string)
            .collect();

        let mut indexed_missing: Vec<String> = indexed.difference(&present).cloned().collect();
        indexed_missing.sort();

        // What restore resolves: the index as the engine loads it.
        let index = BlockIndex::load(&repo).await.unwrap();
        let dangling = referenced
            .iter()
            .filter(|b| {
                index
                    .get(b)
                    .is_none_or(|e| !present.contains(&e.pack_id.to_hex()))
            })
            .map(|b| hex(&b.0))
            .collect();

        PackAudit {
            packs: listed.len(),
            referenced_blocks: referenced.len(),
            duplicated_blocks: copies.values().filter(|n| **n > 1).count(),
            unreferenced_old,
            dangling,
            indexed_missing,
        }
    })
}

fn gc_under_load(backend: Backend) {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("gc_stress {backend:?}: {what} at {:?}", started.elapsed());
    let env = TestEnv::new(EnvOptions::new(backend));
    let pg = env.cluster("pg");
    pg.start().unwrap();
    let _stop = StopOnDrop(&pg);
    env.use_cluster(&pg);
    pg.pgbench(&["-i", "-s", "2", "-q"]).unwrap();
    pg.psql(
        "postgres",
        "create table marks(n bigint primary key, at timestamptz not null default clock_timestamp())",
    )
    .unwrap();
    let mut cfg = std::fs::read_to_string(&env.config).unwrap();
    // The grace period is passed to every gc run as --grace.
    cfg.push_str("\n[retention]\nfull = 1\n");
    env.replace_config(&cfg);

    // 1. Load, backups and expire/gc at the same time.
    phase("concurrent phase starts");
    let deadline = Instant::now() + CONCURRENT;
    let stop = AtomicBool::new(false);
    let (rounds, taken, totals) = std::thread::scope(|s| {
        let load = s.spawn(|| load_loop(&pg, &stop));
        let backups = s.spawn(|| backup_loop(&env, &pg, deadline, &stop));
        // On S3 gc's mark keeps nothing per block in memory: index entries and referenced
        // blocks go to files in TMPDIR, and every decision must come out the same.
        let mark: &[&str] = match backend {
            Backend::S3 => &["--index-memory", "0"],
            _ => &[],
        };
        let maintenance = s.spawn(|| maintenance_loop(&env, &stop, mark));
        // Join all three before looking at any: a panic stops the others (StopFlag).
        let (r, t, g) = (load.join(), backups.join(), maintenance.join());
        (
            r.unwrap_or_else(|e| std::panic::resume_unwind(e)),
            t.unwrap_or_else(|e| std::panic::resume_unwind(e)),
            g.unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    phase(&format!(
        "concurrent phase done: {rounds} pgbench rounds, {} backups, {totals:?}",
        taken.len()
    ));

    // 2. Settle: a commit after every target, archived; expire; gc past the grace period twice
    // (condemn, then sweep), so nothing unreferenced and older than the grace period remains.
    pg.psql(
        "postgres",
        &format!("insert into marks(n) values ({LAST_MARK})"),
    )
    .unwrap();
    let last = switch_wal(&pg);
    wait_archived(&pg, &last, Duration::from_secs(120));
    let e = json(
        &env.pgcairn(&["expire", "--output", "json"]),
        "final expire",
    );
    let grace = Duration::from_secs(GRACE_SECS);
    std::thread::sleep(grace + Duration::from_millis(1200));
    let g1 = gc_json(&env, &[]);
    std::thread::sleep(grace + Duration::from_millis(1200));
    let mut g2 = gc_json(&env, &[]);
    // A run can leave fresh garbage for the next one (a repack's source and its copy both
    // holding a block: the emptier goes next time; a repacked source is condemned by the run
    // that copied it and swept a grace period later), so settle until a run condemns nothing,
    // repacks nothing and leaves nothing condemned.
    for _ in 0..4 {
        if count(&g2, "condemned") == 0 && count(&g2, "repacked") == 0 && g2["pending_bytes"] == 0 {
            break;
        }
        std::thread::sleep(grace + Duration::from_millis(1200));
        g2 = gc_json(&env, &[]);
    }
    phase(&format!(
        "settled: final expire dropped {}, gc swept {} and condemned {}, then swept {} ({} packs, {} live)",
        e["backups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false)
            .count(),
        count(&g1, "swept"),
        count(&g1, "condemned"),
        count(&g2, "swept"),
        g2["packs"],
        g2["live_packs"]
    ));
    // What a run condemned (a repacked source among it) is swept a grace period later.
    let mut dry = gc_json(&env, &["--dry-run"]);
    for _ in 0..3 {
        if count(&dry, "condemned") == 0 && count(&dry, "swept") == 0 && dry["pending_bytes"] == 0 {
            break;
        }
        std::thread::sleep(grace + Duration::from_millis(1200));
        gc_json(&env, &[]);
        dry = gc_json(&env, &["--dry-run"]);
    }
    assert!(
        count(&dry, "condemned") == 0 && count(&dry, "swept") == 0 && dry["pending_bytes"] == 0,
        "after the settling runs gc has nothing left to condemn or sweep: {dry:#}"
    );

    // 3. Exactly what the policy keeps: the newest full backup and everything after it.
    let newest_full = taken.iter().rposition(|t| t.full).unwrap();
    let expected: Vec<&Taken> = taken[newest_full..].iter().collect();
    let info = json(&env.pgcairn(&["info", "--output", "json"]), "info");
    let cluster = &info["clusters"][0];
    let retained: Vec<&str> = cluster["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        retained,
        expected.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        "retained backups (all taken: {taken:?})"
    );
    let ranges = &cluster["wal"]["timelines"][0]["ranges"];
    assert_eq!(
        ranges.as_array().map(Vec::len),
        Some(1),
        "the archive is one continuous range after concurrent expire: {:#}",
        cluster["wal"]
    );
    assert!(
        cluster["recoverable"]["to_wal"].as_str() >= Some(last.as_str()),
        "recoverable up to the last switched segment {last}: {:#}",
        cluster["recoverable"]
    );

    // 4. Every stored block decrypts and matches its id.
    let v = env.pgcairn(&["verify", "--read-data", "--all"]);
    assert_success(&v, "verify --read-data --all after gc under load");
    phase("verify --read-data --all passed");

    // 5. Independently of gc: nothing dangling, no unreferenced pack older than the grace period.
    let audit = audit_packs(&env, grace);
    phase(&format!(
        "audit: {} packs, {} referenced blocks, {} blocks indexed in more than one pack",
        audit.packs, audit.referenced_blocks, audit.duplicated_blocks
    ));
    assert!(
        audit.indexed_missing.is_empty(),
        "index entries point to packs that are gone: {:?}",
        audit.indexed_missing
    );
    assert!(
        audit.dangling.is_empty(),
        "referenced blocks not indexed in an existing pack: {:?}",
        audit.dangling
    );
    assert!(
        audit.unreferenced_old.is_empty(),
        "packs older than {GRACE} holding no referenced block survived gc: {:?}",
        audit.unreferenced_old
    );
    assert!(
        totals.swept + count(&g1, "swept") + count(&g2, "swept") > 0,
        "gc reclaimed something during the test (expired: {}, {totals:?})",
        totals.expired
    );

    // 6. Retained backups restore to their targets: the newest three and the oldest.
    let mut chosen: Vec<&Taken> = expected.iter().rev().take(3).copied().collect();
    if !chosen.iter().any(|t| t.id == expected[0].id) {
        chosen.push(expected[0]);
    }
    for t in chosen {
        let name = format!("r{}", t.mark);
        let restored = restored_mark(
            &env,
            &name,
            &[
                "--backup",
                &t.id,
                "--target-time",
                &t.target,
                "--target-action",
                "promote",
            ],
        );
        assert_eq!(
            restored, t.mark,
            "backup {} restored to {} has exactly marks 1..={}",
            t.id, t.target, t.mark
        );
        phase(&format!("backup {} restored to its target", t.id));
    }
    // The oldest retained one also to its own consistency point: the marks before it only.
    let oldest = expected[0];
    let restored = restored_mark(
        &env,
        "oldest_immediate",
        &[
            "--backup",
            &oldest.id,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        restored,
        oldest.mark - 1,
        "backup {} restored to its consistency point",
        oldest.id
    );
    phase("done");
}

#[test]
fn gc_and_expire_under_load_keep_every_retained_backup_restorable_on_file() {
    gc_under_load(Backend::File);
}

#[test]
fn gc_and_expire_under_load_keep_every_retained_backup_restorable_on_s3() {
    if s3_endpoint().is_none() {
        return;
    }
    gc_under_load(Backend::S3);
}
