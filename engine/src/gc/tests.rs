//! gc over in-memory storage: repack, sweep, damaged packs, and every referenced block still
//! readable afterwards.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::crypto::ContentId;
use crate::storage::Storage;
use crate::store::blocks::BlockIndex;
use crate::test_support::{pack_holding, save_manifest};

async fn repo() -> Repository {
    crate::test_support::memory_repo().await.1
}

fn block(n: u32) -> Vec<u8> {
    // Poorly compressible, distinct per n.
    (0..8192u32)
        .map(|i| {
            (i.wrapping_mul(2654435761)
                .wrapping_add(n.wrapping_mul(40503))
                >> 13) as u8
        })
        .collect()
}

/// Writes one pack holding blocks `ns`; returns their ids.
async fn pack_of(repo: &Repository, ns: std::ops::Range<u32>) -> Vec<ContentId> {
    pack_holding(repo, ns.map(block).collect()).await
}

/// One pack whose blocks a backup named, and that backup expired: garbage. Returns its blocks.
async fn garbage_pack(repo: &Repository) -> Vec<ContentId> {
    let a = pack_of(repo, 0..5).await;
    save_manifest(repo, "20261124-000000F", &a).await;
    repo.storage()
        .delete(&layout::backup_manifest("main", "20261124-000000F"))
        .await
        .unwrap();
    a
}

/// The keys under `prefix`, sorted.
async fn keys_under(repo: &Repository, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = repo
        .storage()
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    v.sort();
    v
}

async fn pack_names(repo: &Repository) -> Vec<PackId> {
    let mut v: Vec<PackId> = keys_under(repo, layout::PACKS_PREFIX)
        .await
        .iter()
        .map(|k| layout::parse_pack(k).unwrap())
        .collect();
    v.sort();
    v
}

/// Every block reads back through the index, authenticated.
async fn assert_readable(repo: &Repository, blocks: &[ContentId]) {
    let index = BlockIndex::load(repo).await.unwrap();
    for b in blocks {
        let e = index.get(b).expect("indexed");
        let range = e.entry.offset..e.entry.offset + u64::from(e.entry.sealed_len);
        let sealed = repo
            .storage()
            .get_range(&layout::pack(&e.pack_id), range)
            .await
            .unwrap();
        let plain = crate::pack::open_block(repo.codec(), &e.entry, &sealed).unwrap();
        assert_eq!(repo.codec().content_id(&plain), *b);
    }
}

tokio::task_local! {
    /// The mark's memory for the test running in this task ([`both_modes`]).
    static MARK_MEMORY: u64;
}

/// gc without a grace period, its mark in memory or on disk as the running test asks.
fn opts() -> GcOptions {
    GcOptions {
        index_memory: MARK_MEMORY
            .try_with(|m| *m)
            .unwrap_or(liveness::DEFAULT_MEMORY),
        ..GcOptions::with_grace(Duration::ZERO)
    }
}

async fn mostly_garbage_packs_are_repacked_and_swept_and_live_blocks_stay_readable() {
    let repo = repo().await;
    let a = pack_of(&repo, 0..20).await;
    let b = pack_of(&repo, 100..120).await;
    let all: Vec<ContentId> = a.iter().chain(&b).copied().collect();
    save_manifest(&repo, "20261124-000000F", &all).await;
    save_manifest(&repo, "20261124-000100F", &a[..3]).await;
    let first = gc(&repo, &opts()).await.unwrap();
    assert_eq!(first.mark_on_disk, opts().index_memory == 0, "{first:?}");
    assert!(
        first.condemned.is_empty(),
        "everything referenced: {first:?}"
    );
    assert!(first.repacked.is_empty());
    // The big backup goes: pack b holds nothing referenced, pack a 3 of 20 blocks.
    repo.storage()
        .delete(&layout::backup_manifest("main", "20261124-000000F"))
        .await
        .unwrap();
    let before = pack_names(&repo).await;
    let dry_repo = repo.clone().into_dry_run();
    let dry = gc(&dry_repo, &opts()).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.repacked.len(), 1);
    assert_eq!(dry.swept.len(), 2, "{dry:?}");
    assert_eq!(pack_names(&repo).await, before, "a dry run changes nothing");
    // What it reports is what it asked storage to do: the same two packs deleted.
    let mut would_delete: Vec<PackId> = dry_repo
        .dry_run()
        .unwrap()
        .deleted()
        .iter()
        .filter_map(|k| layout::parse_pack(k.as_str()))
        .collect();
    would_delete.sort();
    let mut swept = dry.swept.clone();
    swept.sort();
    assert_eq!(would_delete, swept);

    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.repacked.len(), 1, "{r:?}");
    assert_eq!(r.repack_new_packs, 1);
    assert_eq!(r.swept.len(), 2, "both old packs go: {r:?}");
    let after = pack_names(&repo).await;
    assert_eq!(after.len(), 1);
    assert!(!before.contains(&after[0]), "only the new pack is left");
    assert_readable(&repo, &a[..3]).await;
    assert!(r.space.reclaimable_bytes < r.space.pack_bytes / 10, "{r:?}");
    let again = gc(&repo, &opts()).await.unwrap();
    assert!(again.swept.is_empty() && again.repacked.is_empty() && again.condemned.is_empty());
    assert_eq!(pack_names(&repo).await, after);
    // The lease was released: nothing left under leases/.
    assert!(repo.storage().list("leases/").await.unwrap().is_empty());
}

async fn a_pack_whose_blocks_are_all_referenced_is_never_repacked_however_small() {
    // One block that compresses to a few bytes: the pack's header and trailer make it mostly
    // overhead, so its live bytes are below half its size. Copying it would write the same
    // blocks again in a new pack and condemn the old one, on every run: a condemned pack
    // pending for ever (seen in gc_stress) and a pack rewritten per run.
    let repo = repo().await;
    let ids = pack_holding(&repo, vec![vec![0u8; 8192]]).await;
    save_manifest(&repo, "20261124-000000F", &ids).await;
    let before = pack_names(&repo).await;
    let usage = liveness::RepoUsage::load_within(&repo, opts().index_memory)
        .await
        .unwrap();
    let (live, size) = (
        usage.referenced_bytes(&before[0]).unwrap(),
        usage.packs[&before[0]].size,
    );
    assert!(
        (live as f64) < opts().repack_below * size as f64,
        "the case needs a pack below the repack threshold: {live} of {size}"
    );
    for _ in 0..3 {
        let r = gc(&repo, &opts()).await.unwrap();
        assert!(
            r.repacked.is_empty() && r.condemned.is_empty() && r.pending_bytes == 0,
            "{r:?}"
        );
    }
    assert_eq!(pack_names(&repo).await, before);
    assert_readable(&repo, &ids).await;
}

async fn a_damaged_pack_is_not_repacked_nor_deleted() {
    let repo = repo().await;
    let a = pack_of(&repo, 0..20).await;
    save_manifest(&repo, "20261124-000000F", &a[..2]).await;
    let name = pack_names(&repo).await.remove(0);
    let key = layout::pack(&name);
    let mut bytes = repo.storage().get(&key).await.unwrap().to_vec();
    bytes[100] ^= 0xff;
    repo.storage().delete(&key).await.unwrap();
    repo.storage()
        .put_create(&key, Bytes::from(bytes))
        .await
        .unwrap();
    let r = gc(&repo, &opts()).await.unwrap();
    assert!(r.repacked.is_empty(), "{r:?}");
    assert_eq!(r.repack_skipped.len(), 1, "{r:?}");
    assert!(r.repack_skipped[0].contains(&name.to_hex()));
    assert!(r.swept.is_empty() && r.condemned.is_empty(), "{r:?}");
    assert_eq!(pack_names(&repo).await, vec![name]);
}

async fn a_running_backup_that_started_before_the_condemnation_holds_the_sweep() {
    let repo = repo().await;
    let a = garbage_pack(&repo).await;
    let lease = crate::lease::acquire_backup(&repo, "main", "20261124-000200I", Duration::ZERO)
        .await
        .unwrap();
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.condemned.len(), 1);
    assert!(
        r.swept.is_empty(),
        "the backup may have deduplicated against it"
    );
    assert_eq!(r.waiting_for_backups, 1);
    // The backup commits a manifest using one of those blocks: the pack is reprieved.
    save_manifest(&repo, "20261124-000200I", &a[..1]).await;
    lease.release().await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.reprieved.len(), 1, "{r:?}");
    assert_readable(&repo, &a[..1]).await;
    // With repacking off, the reprieved pack simply stays.
    let r = gc(
        &repo,
        &GcOptions {
            repack_below: 0.0,
            ..opts()
        },
    )
    .await
    .unwrap();
    assert!(r.swept.is_empty() && r.condemned.is_empty(), "{r:?}");
    assert_readable(&repo, &a[..1]).await;
}

/// Writes the live lease of a running backup `id` of cluster `main` that names `reference`
/// and says it read gc/state generation `gc_seen`, started `started_in` seconds from now by
/// its host's clock.
async fn put_backup_lease(
    repo: &Repository,
    id: &str,
    reference: Option<&str>,
    gc_seen: Option<u64>,
    started_in: i64,
) {
    let mut body = crate::lease::my_body("backup".into(), "main", id);
    body.reference = reference.map(str::to_string);
    body.gc_seen = gc_seen;
    body.started += started_in;
    // Not this process: a lease judged by its heartbeat only, as one from another host.
    body.boot_id = None;
    let k = layout::backup_lease("main", id);
    let raw = crate::store::sealed::seal(repo, crate::store::sealed::DocKind::Lease, &k, &body);
    // Replaces the lease a previous call wrote, as its holder's refresh would.
    let version = repo.storage().get_versioned(&k).await.ok().map(|(_, v)| v);
    repo.storage()
        .put_swap(&k, raw, version.as_ref())
        .await
        .unwrap();
}

async fn generation(repo: &Repository) -> u64 {
    read_state(repo).await.unwrap().0.generation
}

async fn a_backup_that_read_an_older_gc_state_holds_the_sweep_whatever_its_clock_says() {
    let repo = repo().await;
    garbage_pack(&repo).await;
    // A backup read gc/state before this gc condemned the pack, and may deduplicate against
    // it; its host's clock is an hour ahead, so by the clocks it started long after the
    // condemnation (the rule gc had until now swept the pack).
    let before = generation(&repo).await;
    put_backup_lease(&repo, "20261124-000200I", None, Some(before), 3600).await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.condemned.len(), 1, "{r:?}");
    assert!(r.swept.is_empty(), "{r:?}");
    assert_eq!(r.waiting_for_backups, 1);
    let (state, _) = read_state(&repo).await.unwrap();
    assert_eq!(state.condemned_in(&r.condemned[0]), before + 1);
    // Once the running backup has read the generation that condemned it (it leaves the pack
    // out of its deduplication), the pack goes, whatever its clock said.
    put_backup_lease(&repo, "20261124-000200I", None, Some(before + 1), -3600).await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.swept.len(), 1, "{r:?}");
    assert_eq!(r.waiting_for_backups, 0);
}

async fn a_backup_whose_reference_expired_holds_every_sweep_until_it_commits() {
    let repo = repo().await;
    // A pack whose blocks no manifest names is condemned while backup R runs (R read an
    // older gc/state, so the sweep waits for it).
    let a = garbage_pack(&repo).await;
    let before = generation(&repo).await;
    put_backup_lease(&repo, "20261124-000100I", None, Some(before), 0).await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.condemned.len(), 1, "{r:?}");
    assert!(r.swept.is_empty(), "{r:?}");
    // R commits naming two of its blocks (it deduplicated against the pack before the
    // condemnation): the pack's reprieve waits for the next gc.
    save_manifest(&repo, "20261124-000100I", &a[..2]).await;
    repo.storage()
        .delete(&layout::backup_lease("main", "20261124-000100I"))
        .await
        .unwrap();
    // An hour later the next incremental starts, with R as its reference: it read the newest
    // gc/state, and carries R's unchanged files over, blocks of the condemned pack among them.
    let now = generation(&repo).await;
    put_backup_lease(
        &repo,
        "20261124-010000I",
        Some("20261124-000100I"),
        Some(now),
        3600,
    )
    .await;
    // R expires before gc runs again (a calendar-only policy): no manifest gc can read names
    // those blocks, so there is no reprieve; the incremental will name them when it commits.
    repo.storage()
        .delete(&layout::backup_manifest("main", "20261124-000100I"))
        .await
        .unwrap();
    let r = gc(&repo, &opts()).await.unwrap();
    assert!(
        r.swept.is_empty(),
        "the running backup carries blocks of the pack over from its expired reference: {r:?}"
    );
    assert_eq!(r.waiting_for_backups, 1);
    // It commits and ends: the pack is reprieved, its blocks readable.
    save_manifest(&repo, "20261124-010000I", &a[..2]).await;
    repo.storage()
        .delete(&layout::backup_lease("main", "20261124-010000I"))
        .await
        .unwrap();
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.reprieved.len(), 1, "{r:?}");
    assert_readable(&repo, &a[..2]).await;
}

async fn a_backup_lease_without_a_gc_generation_holds_every_sweep() {
    let repo = repo().await;
    garbage_pack(&repo).await;
    // A backup that has not said which gc/state it read (starting, or an older version).
    put_backup_lease(&repo, "20261124-000200I", None, None, 3600).await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.condemned.len(), 1, "{r:?}");
    assert!(r.swept.is_empty(), "{r:?}");
    // A lease that read the newest generation and whose reference is there holds nothing.
    save_manifest(&repo, "20261124-000300F", &[]).await;
    let now = generation(&repo).await;
    put_backup_lease(
        &repo,
        "20261124-000200I",
        Some("20261124-000300F"),
        Some(now),
        0,
    )
    .await;
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.swept.len(), 1, "{r:?}");
}

/// Storage over `mem` that runs `then` on `mem` the first time a key starting with `prefix`
/// is read, before the read: something another host does at that moment of a gc.
fn on_first_read(
    mem: &Arc<crate::storage::MemoryStorage>,
    prefix: String,
    then: impl FnOnce(&crate::storage::MemoryStorage) + Send + 'static,
) -> Arc<dyn Storage> {
    let then = std::sync::Mutex::new(Some(then));
    let m = mem.clone();
    Arc::new(crate::test_support::Hooked::new(mem.clone(), move |call| {
        if let crate::test_support::Call::Read(k) = call {
            if k.as_str().starts_with(&prefix) {
                if let Some(then) = then.lock().unwrap().take() {
                    then(&m);
                }
            }
        }
        Ok(())
    }))
}

/// R committed blocks of a pack gc had condemned (the reprieve waits for the next gc); the
/// next gc reads the (no) leases, and while it reads the index an incremental B of reference
/// R begins, reads the newest gc/state and carries R's blocks over, and R expires. Neither
/// the first lease read nor the mark sees B or R: gc must not sweep the pack.
#[tokio::test]
async fn a_backup_that_began_during_the_mark_and_still_runs_holds_the_sweep() {
    use crate::store::sealed::{seal, DocKind};
    let (mem, plain) = crate::archive::push::tests::memory_repo().await;
    let a = garbage_pack(&plain).await;
    let r_id = "20261124-000100I";
    put_backup_lease(&plain, r_id, None, Some(generation(&plain).await), 0).await;
    let r = gc(&plain, &opts()).await.unwrap();
    assert_eq!((r.condemned.len(), r.swept.len()), (1, 0), "{r:?}");
    save_manifest(&plain, r_id, &a[..2]).await;
    plain
        .storage()
        .delete(&layout::backup_lease("main", r_id))
        .await
        .unwrap();
    let b_id = "20261124-010000I";
    let mut body = crate::lease::my_body("backup".into(), "main", b_id);
    body.reference = Some(r_id.into());
    body.gc_seen = Some(generation(&plain).await);
    body.boot_id = None;
    let b_lease = layout::backup_lease("main", b_id);
    let raw = seal(&plain, DocKind::Lease, &b_lease, &body);
    let r_manifest = layout::backup_manifest("main", r_id);
    let (k, gone) = (b_lease.clone(), r_manifest.clone());
    let storage = on_first_read(&mem, layout::INDEX_PREFIX.into(), move |m| {
        // In-memory storage: its futures complete without a runtime.
        futures::executor::block_on(m.put_create(&k, raw)).unwrap();
        futures::executor::block_on(m.delete(&gone)).unwrap();
    });
    let r = gc(&crate::test_support::open_with(storage).await, &opts())
        .await
        .unwrap();
    assert!(
        r.swept.is_empty(),
        "B carries the pack's blocks over from R, which expired: {r:?}"
    );
    assert!(mem.head(&r_manifest).await.is_err(), "R expired");
    // B commits and ends: the next gc sees its manifest and reprieves the pack.
    save_manifest(&plain, b_id, &a[..2]).await;
    mem.delete(&b_lease).await.unwrap();
    let r = gc(&plain, &opts()).await.unwrap();
    assert_eq!(r.reprieved.len(), 1, "{r:?}");
    assert_readable(&plain, &a[..2]).await;
}

/// With no grace period gc condemns and sweeps in one run. A backup B that begins after gc
/// read the leases, and commits and ends while gc reads the manifests it listed, is seen by
/// neither lease read and its manifest was not marked; it names two blocks of a pack this
/// run condemns. Returns that run's report, and whether those blocks are still readable
/// after B's manifest is marked by a later gc. `gc_seen`: what B's manifest says it read,
/// relative to the generation the run read (`Some(1)`: the one its condemnations made).
async fn committed_during_the_mark(gc_seen: Option<u64>) -> (GcReport, bool) {
    let (mem, plain) = crate::archive::push::tests::memory_repo().await;
    let a = garbage_pack(&plain).await;
    save_manifest(&plain, "20261124-000050F", &[]).await;
    let mut b = crate::test_support::manifest_of("20261124-010000I", &a[..2]);
    let read = generation(&plain).await;
    b.gc_seen = gc_seen.map(|g| read + g);
    crate::store::manifest::save(&plain, &b).await.unwrap();
    let b_manifest = layout::backup_manifest("main", "20261124-010000I");
    let raw = mem.get(&b_manifest).await.unwrap();
    mem.delete(&b_manifest).await.unwrap();
    let listed = layout::backup_manifest("main", "20261124-000050F");
    let storage = on_first_read(&mem, listed.to_string(), move |m| {
        futures::executor::block_on(m.put_create(&b_manifest, raw)).unwrap();
    });
    let r = gc(&crate::test_support::open_with(storage).await, &opts())
        .await
        .unwrap();
    assert_eq!(r.condemned.len(), 1, "{r:?}");
    gc(&plain, &opts()).await.unwrap();
    let index = BlockIndex::load(&plain).await.unwrap();
    (r, a[..2].iter().all(|b| index.get(b).is_some()))
}

#[tokio::test]
async fn a_backup_that_began_and_ended_during_the_mark_holds_the_sweep() {
    // An older version's manifest, which says nothing, and one that read the generation
    // before the condemnation (it may have deduplicated against the pack): nothing is swept.
    for gc_seen in [None, Some(0)] {
        let (r, readable) = committed_during_the_mark(gc_seen).await;
        assert!(r.swept.is_empty(), "{gc_seen:?}: {r:?}");
        assert!(readable, "{gc_seen:?}");
    }
    // One that read the condemnation left the pack out: the pack goes.
    let (r, _) = committed_during_the_mark(Some(1)).await;
    assert_eq!(r.swept.len(), 1, "{r:?}");
}

/// A condemnation an older version recorded (no generation) is dated with the generation
/// read, once: a backup that read that generation does not hold it in later runs, however
/// many writes gc makes meanwhile.
async fn a_condemnation_without_a_generation_is_dated_once() {
    let repo = repo().await;
    garbage_pack(&repo).await;
    // Condemned by an older version: a time, no generation.
    let (mut state, v) = read_state(&repo).await.unwrap();
    let pack = pack_names(&repo).await[0];
    state
        .condemned
        .insert(pack, Timestamp::now().unix_seconds() - 1800);
    state::write_state(&repo, &mut state, v.as_ref(), "test")
        .await
        .unwrap();
    let dated = generation(&repo).await;
    // A backup reads that state (it leaves the pack out) and runs through two gc runs.
    put_backup_lease(&repo, "20261124-000200I", None, Some(dated), 0).await;
    let r = gc(&repo, &GcOptions::with_grace(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(r.swept.is_empty(), "within its grace period: {r:?}");
    let r = gc(&repo, &GcOptions::with_grace(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(r.swept, vec![pack], "{r:?}");
}

async fn packs_younger_than_the_grace_period_are_never_condemned() {
    let (mem, repo) = crate::test_support::memory_repo().await;
    pack_of(&repo, 0..5).await; // no manifest: like a backup still running
    let hour = GcOptions {
        grace: Duration::from_secs(3600),
        ..opts()
    };
    let r = gc(&repo, &hour).await.unwrap();
    assert!(r.condemned.is_empty(), "{r:?}");
    let name = pack_names(&repo).await.remove(0);
    mem.backdate(layout::pack(&name).as_str(), 7200);
    let r = gc(&repo, &hour).await.unwrap();
    assert_eq!(r.condemned, vec![name], "{r:?}");
    assert!(
        r.swept.is_empty(),
        "condemned just now: swept a grace period later"
    );
    assert_eq!(pack_names(&repo).await, vec![name]);
}

async fn when_a_source_and_its_copy_both_hold_blocks_the_source_goes() {
    // A crash between a repack and the condemnation leaves both; the next gc must finish the
    // repack (condemn the source), not undo it (condemn the copy). Pack names are hashes:
    // set up until the copy's name sorts first, the order in which the copy would go if gc
    // went by name.
    for _ in 0..50 {
        let repo = repo().await;
        let a = pack_of(&repo, 0..20).await;
        save_manifest(&repo, "20261124-000000F", &a[..2]).await;
        let source = pack_names(&repo).await;
        let mut usage = liveness::RepoUsage::load_within(&repo, opts().index_memory)
            .await
            .unwrap();
        usage.count_holders(&Default::default()).unwrap();
        let src_id = source[0];
        let copied = repack::repack(&repo, &mut usage, &[src_id]).await.unwrap();
        assert_eq!(copied.new_packs, 1);
        let with_copy = pack_names(&repo).await;
        if with_copy[0] == source[0] {
            continue; // the copy sorts after the source: try again
        }
        let r = gc(&repo, &opts()).await.unwrap();
        assert_eq!(r.condemned, source, "the 10%-live source goes: {r:?}");
        assert_eq!(r.swept, source);
        assert_eq!(pack_names(&repo).await, vec![with_copy[0]]);
        assert_readable(&repo, &a[..2]).await;
        return;
    }
    panic!("never got a copy whose name sorts before its source");
}

async fn index_lookups_take_the_copy_outside_a_condemned_pack_and_backups_store_the_rest_again() {
    use crate::store::blocks::KnownBlocks;
    let repo = repo().await;
    let a = pack_of(&repo, 0..4).await;
    let pack_a = pack_names(&repo).await;
    let b = pack_of(&repo, 2..6).await;
    let pack_b: Vec<PackId> = pack_names(&repo)
        .await
        .into_iter()
        .filter(|n| !pack_a.contains(n))
        .collect();
    let (id_a, id_b) = (pack_a[0], pack_b[0]);
    let unindexed = repo.codec().content_id(b"in no pack");
    for (condemned, other) in [(id_a, id_b), (id_b, id_a)] {
        let mut st = GcState::default();
        st.condemned.insert(condemned, 0);
        let (_, version) = state::read_state(&repo).await.unwrap();
        state::write_state(&repo, &mut st, version.as_ref(), "test")
            .await
            .unwrap();

        let index = BlockIndex::load(&repo).await.unwrap();
        assert_eq!(index.len(), 6);
        for shared in &b[..2] {
            assert_eq!(index.get(shared).unwrap().pack_id, other, "shared block");
        }
        assert_eq!(index.get(&a[0]).unwrap().pack_id, id_a);
        assert_eq!(index.get(&b[3]).unwrap().pack_id, id_b);
        assert!(index.get(&unindexed).is_none());
        assert_eq!(index.pack_ids().unwrap().len(), 2);

        let mut refs = vec![a[0], b[0], unindexed];
        refs.extend_from_slice(&b[..1]);
        let m = crate::test_support::manifest(
            "20261124-000000F",
            "0/1000000",
            "0/1000100",
            "2026-11-24T00:00:01Z",
            &refs,
        );
        let wanted = m
            .files
            .iter()
            .flat_map(|f| f.blocks.iter().filter_map(|b| b.0))
            .collect();
        let wanted: Vec<_> = wanted;
        let some = BlockIndex::load_wanted(&repo, wanted.clone())
            .await
            .unwrap();
        assert!(!some.on_disk());
        // The same lookups from the table on local disk a restore over its memory budget uses.
        let mut ids = crate::store::block_table::WantedIds::new(0, 1024);
        for id in wanted {
            ids.push(id).unwrap();
        }
        let on_disk = BlockIndex::load_wanted_ids(&repo, ids).await.unwrap();
        assert!(on_disk.on_disk());
        for some in [&some, &on_disk] {
            assert_eq!(some.first_missing().unwrap(), Some(unindexed));
            assert_eq!(
                some.len(),
                2,
                "two located, the unindexed one wanted but nowhere"
            );
            assert_eq!(some.try_get(&b[0]).unwrap().unwrap().pack_id, other);
            assert_eq!(some.try_get(&a[0]).unwrap(), index.get(&a[0]));
            assert!(some.get(&unindexed).is_none() && some.get(&b[3]).is_none());
            assert_eq!(some.pack_ids().unwrap(), [id_a, other].into());
        }

        // In memory, and in a table on local disk (no memory for the repository's ids).
        for memory in [crate::store::blocks::DEFAULT_KNOWN_MEMORY, 0] {
            let known = KnownBlocks::load_excluding(&repo, &[condemned].into(), memory)
                .await
                .unwrap();
            assert_eq!(known.on_disk().is_some(), memory == 0);
            let only_in_condemned = if condemned == id_a { a[0] } else { b[3] };
            let only_in_other = if condemned == id_a { b[3] } else { a[0] };
            assert!(
                known.claim(only_in_condemned),
                "stored again, not reused from {condemned:?}"
            );
            assert!(!known.claim(only_in_condemned), "claimed once");
            assert!(!known.claim(b[0]) && !known.claim(only_in_other));
            assert!(known.claim(unindexed) && !known.claim(unindexed));
            assert!(known.contains(&b[0]) && known.contains(&unindexed));
            assert!(!known.contains(&ContentId([7; 32])));
        }
    }
}

async fn packs_under_object_lock_retention_stay_condemned_until_it_ends() {
    let (mem, repo) = crate::test_support::memory_repo().await;
    let a = pack_of(&repo, 0..5).await;
    let _garbage = pack_of(&repo, 100..105).await;
    save_manifest(&repo, "20261124-000000F", &a).await;
    let locked = GcOptions {
        object_lock: Some(Duration::from_secs(86_400)),
        ..opts()
    };
    let r = gc(&repo, &locked).await.unwrap();
    assert_eq!(r.condemned.len(), 1, "{r:?}");
    assert!(r.swept.is_empty(), "{r:?}");
    assert_eq!(r.waiting_for_object_lock, 1, "{r:?}");
    assert!(r.object_lock_until.is_some(), "{r:?}");
    assert_eq!(pack_names(&repo).await.len(), 2);
    for o in mem.list("").await.unwrap() {
        mem.backdate(o.key.as_str(), 2 * 86_400);
    }
    let r = gc(&repo, &locked).await.unwrap();
    assert_eq!(r.swept.len(), 1, "{r:?}");
    assert_eq!(r.waiting_for_object_lock, 0, "{r:?}");
    assert_eq!(pack_names(&repo).await.len(), 1);
    assert_readable(&repo, &a).await;
}

async fn segment_names(repo: &Repository) -> Vec<String> {
    keys_under(repo, layout::INDEX_PREFIX).await
}

async fn small_index_segments_are_merged_and_every_block_stays_located() {
    use merge_index::{MERGED_ENTRIES, MERGE_AT};
    let repo = repo().await;
    // One segment per pack, as one per backup of a quiet database.
    let mut all = Vec::new();
    for p in 0..MERGE_AT as u32 + 4 {
        all.extend(pack_of(&repo, p * 10..p * 10 + 3).await);
    }
    save_manifest(&repo, "20261124-000000F", &all).await;
    let before = segment_names(&repo).await;
    assert_eq!(before.len(), MERGE_AT + 4);
    let located = |index: &BlockIndex| -> Vec<_> { all.iter().map(|b| index.get(b)).collect() };
    let was = located(&BlockIndex::load(&repo).await.unwrap());
    assert!(was.iter().all(Option::is_some));

    // A dry run reports the merge and changes nothing.
    let dry = gc(&repo.clone().into_dry_run(), &opts()).await.unwrap();
    assert_eq!((dry.index_merged, dry.index_merged_into), (MERGE_AT + 4, 1));
    assert_eq!(segment_names(&repo).await, before);

    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(
        (r.index_merged, r.index_merged_into),
        (MERGE_AT + 4, 1),
        "{r:?}"
    );
    let after = segment_names(&repo).await;
    assert_eq!(after.len(), 1);
    assert!(!before.contains(&after[0]));
    assert_eq!(located(&BlockIndex::load(&repo).await.unwrap()), was);
    assert_readable(&repo, &all).await;

    // Below MERGE_AT small segments, nothing is rewritten.
    let again = gc(&repo, &opts()).await.unwrap();
    assert_eq!(again.index_merged, 0);
    assert_eq!(segment_names(&repo).await, after);
    assert!(MERGED_ENTRIES > all.len());
}

async fn a_merged_segment_holds_at_most_merged_entries() {
    use merge_index::{merge_small_segments, MERGED_ENTRIES, MERGE_AT};
    let repo = repo().await;
    // Sixteen segments of an eighth of a merged segment each: two merged segments. The index
    // entries (not the blocks) are what counts, so many tiny blocks per pack.
    let per_pack = MERGED_ENTRIES / 8;
    let mut all = Vec::new();
    for p in 0..MERGE_AT as u32 {
        let blocks = (0..per_pack as u32)
            .map(|i| (p * 1_000_000 + i).to_le_bytes().to_vec())
            .collect();
        all.extend(pack_holding(&repo, blocks).await);
    }
    let done = merge_small_segments(&repo, None, &[]).await.unwrap();
    assert_eq!(done.replaced, MERGE_AT);
    assert_eq!(done.written, 2, "{done:?}");
    let index = BlockIndex::load(&repo).await.unwrap();
    assert!(all.iter().all(|b| index.get(b).is_some()));
    for o in repo.storage().list(layout::INDEX_PREFIX).await.unwrap() {
        let sealed = repo.storage().get(&o.key).await.unwrap();
        let entries = crate::store::blocks::open_index_segment(&repo, &o.key, &sealed).unwrap();
        assert!(entries.len() <= MERGED_ENTRIES, "{}", entries.len());
    }
}

async fn a_merge_repeated_after_a_crash_keeps_the_merged_segment_it_comes_out_as() {
    use merge_index::{merge_small_segments, MERGE_AT};
    let repo = repo().await;
    let mut all = Vec::new();
    for p in 0..MERGE_AT as u32 + 4 {
        all.extend(pack_of(&repo, p * 10..p * 10 + 3).await);
    }
    let mut sources = Vec::new();
    for key in segment_names(&repo).await {
        let key = crate::storage::ObjectKey::new(key);
        sources.push((key.clone(), repo.storage().get(&key).await.unwrap()));
    }
    let first = merge_small_segments(&repo, None, &[]).await.unwrap();
    assert_eq!((first.replaced, first.written), (MERGE_AT + 4, 1));
    let merged = segment_names(&repo).await;
    // A run killed while it deleted the sources: most of them are still there.
    for (key, bytes) in sources.iter().take(MERGE_AT) {
        repo.storage().put_create(key, bytes.clone()).await.unwrap();
    }
    // The merge of the merged segment and those sources comes out as the merged segment
    // itself (same entries, same name): it must stay, and only the sources go.
    merge_small_segments(&repo, None, &[]).await.unwrap();
    assert_eq!(segment_names(&repo).await, merged);
    let index = BlockIndex::load(&repo).await.unwrap();
    assert!(
        all.iter().all(|b| index.get(b).is_some()),
        "every block located"
    );
    assert_readable(&repo, &all).await;
}

/// A gc whose lease lapsed (its refreshes stopped landing for longer than others wait before
/// judging it dead) may have a second gc running beside it: it condemns and deletes nothing.
#[tokio::test(start_paused = true)]
async fn a_gc_whose_lease_lapsed_condemns_and_deletes_nothing() {
    let mem = Arc::new(crate::storage::MemoryStorage::new());
    let faults = Arc::new(crate::test_support::LeaseFaults {
        inner: mem.clone(),
        fail_swaps: 10.into(),
        ..Default::default()
    });
    let (_, repo) = crate::test_support::init_repo(faults.clone()).await;
    // A pack no backup references: garbage, swept at once with a zero grace period.
    pack_of(&repo, 0..5).await;
    let packs = pack_names(&repo).await;
    let lease =
        crate::lease::acquire_exclusive(&repo, "gc", "", crate::lease::Purpose::Gc, Duration::ZERO)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    let err = gc_locked_with(&repo, &opts(), std::slice::from_ref(&lease))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no longer protects"), "{err}");
    assert_eq!(pack_names(&repo).await, packs);
    assert!(read_state(&repo).await.unwrap().0.condemned.is_empty());
    lease.release().await;
    // Held, the same run sweeps it.
    faults
        .fail_swaps
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let r = gc(&repo, &opts()).await.unwrap();
    assert_eq!(r.swept, packs);
}

/// Each test twice: its mark within the default memory, and with every index entry and
/// referenced block on local disk. gc must decide the same either way.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name().await
                }
            )*
        }
        mod on_disk {
            $(
                #[tokio::test]
                async fn $name() {
                    super::MARK_MEMORY.scope(0, super::$name()).await
                }
            )*
        }
    };
}

both_modes!(
    mostly_garbage_packs_are_repacked_and_swept_and_live_blocks_stay_readable,
    a_pack_whose_blocks_are_all_referenced_is_never_repacked_however_small,
    a_damaged_pack_is_not_repacked_nor_deleted,
    a_running_backup_that_started_before_the_condemnation_holds_the_sweep,
    a_backup_that_read_an_older_gc_state_holds_the_sweep_whatever_its_clock_says,
    a_backup_whose_reference_expired_holds_every_sweep_until_it_commits,
    a_backup_lease_without_a_gc_generation_holds_every_sweep,
    a_condemnation_without_a_generation_is_dated_once,
    packs_younger_than_the_grace_period_are_never_condemned,
    when_a_source_and_its_copy_both_hold_blocks_the_source_goes,
    index_lookups_take_the_copy_outside_a_condemned_pack_and_backups_store_the_rest_again,
    packs_under_object_lock_retention_stay_condemned_until_it_ends,
    small_index_segments_are_merged_and_every_block_stays_located,
    a_merged_segment_holds_at_most_merged_entries,
    a_merge_repeated_after_a_crash_keeps_the_merged_segment_it_comes_out_as,
);
