//! Re-encryption over in-memory storage: every kind of object resealed, the old epoch
//! dropped only when nothing is left under it, and a run failing at any write leaving every
//! backup block, manifest and WAL file readable.

use std::sync::Arc;

use super::*;
use crate::archive::get::get_wal_file;
use crate::archive::push::{push_wal_file, WalSource};
use crate::pg::wal_header::tests::fake_segment;
use crate::repo::keys::RotateInputs;
use crate::storage::{MemoryStorage, Storage};
use crate::store::blocks::BlockIndex;
use crate::test_support::{pack_holding, save_manifest, FailAfter};
use crate::types::WalFileName;

fn opts() -> ReencryptOptions {
    ReencryptOptions {
        grace: Duration::ZERO,
        lease_wait: Duration::ZERO,
        object_lock: None,
        writers_stopped: true,
        upload_retries: Duration::from_secs(60),
        index_memory: crate::gc::liveness::DEFAULT_MEMORY,
    }
}

fn block(n: u32) -> Vec<u8> {
    (0..8192u32)
        .map(|i| {
            (i.wrapping_mul(2654435761)
                .wrapping_add(n.wrapping_mul(40503))
                >> 13) as u8
        })
        .collect()
}

fn segment(n: u64) -> (WalFileName, Vec<u8>) {
    let name: WalFileName = format!("00000001{:08X}{:08X}", n >> 8, n & 0xff)
        .parse()
        .unwrap();
    (
        name,
        fake_segment(42, 1, n * (16 << 20), 16 << 20, 16 << 20),
    )
}

/// What epoch-1 writes left: blocks referenced by a manifest, WAL with its head, a pin, gc
/// state; then a rotation to epoch 2. Returns the storage, the unlock and the block ids.
async fn rotated_repo(
    storage: Arc<dyn Storage>,
) -> (Unlock, Vec<ContentId>, Vec<(WalFileName, Vec<u8>)>) {
    rotated_repo_with(storage, false).await
}

/// [`rotated_repo`], with a lease taken under the first epoch and never released when
/// `leave_lease` (a backup killed before the rotation).
async fn rotated_repo_with(
    storage: Arc<dyn Storage>,
    leave_lease: bool,
) -> (Unlock, Vec<ContentId>, Vec<(WalFileName, Vec<u8>)>) {
    let (unlock, repo) = crate::test_support::init_repo(storage.clone()).await;
    if leave_lease {
        let lease = crate::lease::acquire_exclusive(
            &repo,
            "expire-other",
            "other",
            crate::lease::Purpose::Expire,
            Duration::ZERO,
        )
        .await
        .unwrap();
        std::mem::forget(lease);
    }
    let ids = pack_holding(&repo, (0..40).map(block).collect()).await;
    // A second copy of the first ten blocks in a pack of its own (a repack's source and copy
    // both left by a crash): the rotation reseals each block once.
    pack_holding(&repo, (0..10).map(block).collect()).await;
    save_manifest(&repo, "20261124-000000F", &ids[..30]).await;
    crate::expire::set_pin(&repo, "main", "20261124-000000F", true)
        .await
        .unwrap();
    let mut wal = Vec::new();
    for n in [16u64, 17] {
        let (name, data) = segment(n);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        wal.push((name, data));
    }
    // A wal-receive tail (an old timeline's can stay as long as the retention period).
    let (name, data) = segment(18);
    crate::walstream::chunks::commit_chunk(&repo, "main", &name, 0, data[..50_000].to_vec())
        .await
        .unwrap();
    crate::gc::gc(&repo, &GcOptions::with_grace(Duration::from_secs(3600)))
        .await
        .unwrap();
    keys::change(
        &storage,
        Some(&unlock),
        None,
        KeyChange::Rotate(RotateInputs::default()),
    )
    .await
    .unwrap();
    (unlock, ids, wal)
}

/// Every backup block, the manifest and the WAL open with the current keys.
async fn assert_everything_reads(
    storage: &Arc<dyn Storage>,
    unlock: &Unlock,
    ids: &[ContentId],
    wal: &[(WalFileName, Vec<u8>)],
) {
    let repo = Repository::open(storage.clone(), Some(unlock))
        .await
        .unwrap();
    let m = crate::store::manifest::load(&repo, "main", "20261124-000000F")
        .await
        .unwrap();
    assert_eq!(m.files.len(), 1);
    assert!(crate::expire::is_pinned(&repo, "main", "20261124-000000F")
        .await
        .unwrap());
    let index = BlockIndex::load(&repo).await.unwrap();
    for b in &ids[..30] {
        let e = index.get(b).expect("indexed");
        let range = e.entry.offset..e.entry.offset + u64::from(e.entry.sealed_len);
        let sealed = storage
            .get_range(&layout::pack(&e.pack_id), range)
            .await
            .unwrap();
        crate::pack::open_block(repo.codec(), &e.entry, &sealed).unwrap();
    }
    for (name, data) in wal {
        assert!(get_wal_file(&repo, "main", name).await.unwrap() == *data);
    }
    assert!(crate::store::head::read(&repo, "main")
        .await
        .unwrap()
        .is_some());
}

/// Nothing in storage is sealed under an epoch below `epoch` (every block and trailer of
/// every pack included).
async fn assert_nothing_below(storage: &Arc<dyn Storage>, repo: &Repository, epoch: u32) {
    for o in storage.list("").await.unwrap() {
        let k = o.key.as_str();
        if k == "config" || k.starts_with("leases/") {
            continue;
        }
        let bytes = storage.get(&o.key).await.unwrap();
        if k.starts_with("packs/") {
            assert!(
                !crate::gc::repack::holds_old_epochs(repo.codec(), &bytes).unwrap(),
                "{k} holds old epochs"
            );
        } else {
            assert!(
                Codec::epoch_of(&bytes).is_some_and(|e| e >= epoch),
                "{k} is under epoch {:?}",
                Codec::epoch_of(&bytes)
            );
        }
    }
}

#[tokio::test]
async fn everything_is_resealed_and_the_old_epoch_dropped() {
    resealed_and_dropped(opts()).await
}

/// The same with gc's mark on local disk: the blocks copied are marked there too.
#[tokio::test]
async fn everything_is_resealed_and_the_old_epoch_dropped_with_the_mark_on_disk() {
    resealed_and_dropped(ReencryptOptions {
        index_memory: 0,
        ..opts()
    })
    .await
}

async fn resealed_and_dropped(opts: ReencryptOptions) {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let (unlock, ids, wal) = rotated_repo(storage.clone()).await;
    let repo = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    assert_eq!(repo.codec().epochs(), vec![1, 2]);
    let before = repo.storage().list("packs/").await.unwrap();
    let r = reencrypt(&repo, Some(&unlock), None, &opts).await.unwrap();
    assert_eq!(r.old_epochs, vec![1]);
    assert_eq!(r.gc.mark_on_disk, opts.index_memory == 0);
    assert_eq!(r.dropped_epochs, vec![1], "{r:?}");
    assert!(r.remaining.is_empty(), "{r:?}");
    // Manifest, two WAL files and their records, head, cluster record, pin, index, gc state.
    assert!(r.objects_resealed >= 9, "{r:?}");
    assert_eq!(r.gc.reencrypted.len(), before.len());
    assert_eq!(
        r.gc.resealed_blocks, 30,
        "only referenced blocks are copied"
    );
    let after = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    assert_eq!(after.codec().epochs(), vec![2]);
    assert_nothing_below(&storage, &after, 2).await;
    assert_everything_reads(&storage, &unlock, &ids, &wal).await;
    let (name, data) = segment(18);
    let (tail, streamed) = crate::walstream::chunks::read_tail(&after, "main", &name, 16 << 20)
        .await
        .unwrap()
        .expect("the streamed tail is still there");
    assert_eq!(streamed, 50_000);
    assert!(
        tail[..50_000] == data[..50_000],
        "the tail reads back resealed"
    );
    for o in &before {
        assert!(
            storage.get(&o.key).await.unwrap_err().is_not_found(),
            "old pack {} swept",
            o.key
        );
    }
    // Nothing left to do.
    let again = reencrypt(&after, Some(&unlock), None, &opts).await.unwrap();
    assert!(again.old_epochs.is_empty() && again.objects_resealed == 0);
}

/// A zero grace period does not drop the old epochs before a process that read the config
/// before the rotation (an idle wal-receive, an async pusher) has had time to follow it,
/// unless the operator says none runs.
#[tokio::test]
async fn old_epochs_stay_until_running_writers_have_followed_the_rotation() {
    let mem = Arc::new(MemoryStorage::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (unlock, _ids, _wal) = rotated_repo(storage.clone()).await;
    let repo = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    let writers_may_run = ReencryptOptions {
        writers_stopped: false,
        ..opts()
    };
    let r = reencrypt(&repo, Some(&unlock), None, &writers_may_run)
        .await
        .unwrap();
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    assert_eq!(r.remaining_count, 0, "{r:?}");
    let waiting = r.waiting.as_deref().unwrap_or("");
    assert!(
        waiting.contains("wal-receive") && waiting.contains("--writers-stopped"),
        "{r:?}"
    );
    // Once the key change is that old, the same run drops them.
    for o in mem.list("").await.unwrap() {
        mem.backdate(o.key.as_str(), WRITERS_SETTLE.as_secs() as i64 + 5);
    }
    // Uploads that retry for five minutes here: the wait covers them too.
    let long_retries = ReencryptOptions {
        upload_retries: Duration::from_secs(300),
        ..writers_may_run.clone()
    };
    let r = reencrypt(&repo, Some(&unlock), None, &long_retries)
        .await
        .unwrap();
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    assert!(
        r.waiting.as_deref().unwrap_or("").contains("the 420s"),
        "{r:?}"
    );
    let r = reencrypt(&repo, Some(&unlock), None, &writers_may_run)
        .await
        .unwrap();
    assert_eq!(r.dropped_epochs, vec![1], "{r:?}");
}

#[tokio::test]
async fn old_epochs_stay_until_the_grace_period_has_passed() {
    let mem = Arc::new(MemoryStorage::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (unlock, ids, wal) = rotated_repo(storage.clone()).await;
    let repo = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    let hour = ReencryptOptions {
        grace: Duration::from_secs(3600),
        ..opts()
    };
    let r = reencrypt(&repo, Some(&unlock), None, &hour).await.unwrap();
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    // Manifest, WAL files and records, cluster record, pin, index; not yet the head, which
    // goes last, right before the drop.
    assert!(r.objects_resealed >= 8, "{r:?}");
    // The packs are young: neither copied nor swept; the epoch stays, and says why.
    assert!(r.remaining_count >= 1, "{r:?}");
    assert!(
        r.waiting.as_deref().unwrap_or("").contains("grace period"),
        "{r:?}"
    );
    let still = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    assert_eq!(still.codec().epochs(), vec![1, 2]);
    assert_everything_reads(&storage, &unlock, &ids, &wal).await;
    // An hour later (packs and config aged), it completes.
    for o in mem.list("").await.unwrap() {
        mem.backdate(o.key.as_str(), 7200);
    }
    let r = reencrypt(
        &still,
        Some(&unlock),
        None,
        &ReencryptOptions {
            grace: Duration::from_secs(3600),
            ..opts()
        },
    )
    .await
    .unwrap();
    // Condemned now, swept an hour after the condemnation.
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    assert!(!r.gc.condemned.is_empty(), "{r:?}");
    let r = reencrypt(&still, Some(&unlock), None, &opts())
        .await
        .unwrap();
    assert_eq!(r.dropped_epochs, vec![1], "{r:?}");
    let after = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    assert_nothing_below(&storage, &after, 2).await;
    assert_everything_reads(&storage, &unlock, &ids, &wal).await;
}

/// Re-encrypts a rotated repository in which a lease taken under the first epoch was never
/// released, its heartbeat `age_secs` old; returns the report and the storage.
async fn reencrypt_past_a_leftover_lease(
    age_secs: i64,
) -> (
    ReencryptReport,
    Arc<dyn Storage>,
    Unlock,
    Vec<ContentId>,
    Vec<(WalFileName, Vec<u8>)>,
) {
    let mem = Arc::new(MemoryStorage::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (unlock, ids, wal) = rotated_repo_with(storage.clone(), true).await;
    let leases = mem.list("leases/").await.unwrap();
    assert_eq!(leases.len(), 1);
    for o in leases {
        mem.backdate(o.key.as_str(), age_secs);
    }
    let repo = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    let r = reencrypt(&repo, Some(&unlock), None, &opts())
        .await
        .unwrap();
    (r, storage, unlock, ids, wal)
}

/// A lease a killed process left under the old epoch is removed before that epoch is
/// dropped: afterwards no command could open it, and every backup, gc and expire stopped on
/// it as a forged lease.
#[tokio::test]
async fn a_dead_lease_from_before_the_rotation_does_not_outlive_its_epoch() {
    let (r, storage, unlock, ids, wal) = reencrypt_past_a_leftover_lease(7200).await;
    assert_eq!(r.dropped_epochs, vec![1], "{r:?}");
    let after = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    crate::lease::live_any(&after)
        .await
        .expect("no lease of a dropped epoch is left to stop commands");
    assert_everything_reads(&storage, &unlock, &ids, &wal).await;
}

/// A live lease from before the rotation: its holder may still write under the old epoch,
/// which stays until it is gone.
#[tokio::test]
async fn a_live_lease_from_before_the_rotation_keeps_the_old_epoch() {
    let (r, ..) = reencrypt_past_a_leftover_lease(0).await;
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    assert!(
        r.waiting
            .as_deref()
            .unwrap_or("")
            .contains("leases taken before"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_run_stopped_at_any_write_leaves_everything_readable_and_the_next_completes() {
    let mut budget = 0;
    loop {
        // A fresh repository each time, the run stopped at its `budget`-th write.
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let (unlock, ids, wal) = rotated_repo(storage.clone()).await;
        let faulty: Arc<dyn Storage> = Arc::new(FailAfter::new(storage.clone(), budget));
        let repo = Repository::open(faulty, Some(&unlock)).await.unwrap();
        let run = reencrypt(&repo, Some(&unlock), None, &opts()).await;
        // A killed process leaves its leases behind; they expire (here: removed).
        for o in storage.list("leases/").await.unwrap() {
            storage.delete(&o.key).await.unwrap();
        }
        assert_everything_reads(&storage, &unlock, &ids, &wal).await;
        let done = match run {
            Ok(r) => {
                assert_eq!(r.dropped_epochs, vec![1], "budget {budget}: {r:?}");
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("injected"), "budget {budget}: {e}");
                let repo = Repository::open(storage.clone(), Some(&unlock))
                    .await
                    .unwrap();
                let r = reencrypt(&repo, Some(&unlock), None, &opts())
                    .await
                    .unwrap();
                assert_eq!(r.dropped_epochs, vec![1], "after budget {budget}: {r:?}");
                assert_everything_reads(&storage, &unlock, &ids, &wal).await;
                false
            }
        };
        let after = Repository::open(storage.clone(), Some(&unlock))
            .await
            .unwrap();
        assert_eq!(after.codec().epochs(), vec![2]);
        assert_nothing_below(&storage, &after, 2).await;
        if done {
            break;
        }
        budget += 1;
        assert!(budget < 300, "never completed");
    }
    assert!(
        budget > 15,
        "the run was stopped at every one of its writes: {budget}"
    );
}

#[tokio::test]
async fn a_damaged_object_is_not_resealed_and_keeps_the_old_epoch() {
    let mem = Arc::new(MemoryStorage::new());
    let storage: Arc<dyn Storage> = mem.clone();
    let (unlock, _ids, wal) = rotated_repo(storage.clone()).await;
    let key = layout::wal_pointer("main", &wal[0].0);
    mem.tamper(key.as_str(), |b| {
        let n = b.len();
        b[n - 3] ^= 1
    });
    let repo = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    let r = reencrypt(&repo, Some(&unlock), None, &opts())
        .await
        .unwrap();
    assert!(r.dropped_epochs.is_empty(), "{r:?}");
    assert_eq!(r.remaining_count, 1, "{r:?}");
    assert!(r.remaining[0].contains(key.as_str()), "{r:?}");
    assert!(r.remaining[0].contains("verify"), "{r:?}");
    let still = Repository::open(storage.clone(), Some(&unlock))
        .await
        .unwrap();
    assert_eq!(still.codec().epochs(), vec![1, 2]);
}
