//! What the catalog head makes visible: deleted WAL, deleted backups, and what `expire`
//! removes on purpose (which must not look like damage). In memory, with 1 MiB segments;
//! the same scenarios run end to end against real PostgreSQL in `tests/tests/tamper.rs`.

use super::audit::audit;
use super::head::{self, HeadBackup};
use super::ids::BackupId;
use crate::archive::get::get_wal_file;
use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
use crate::error::Error;
use crate::pg::wal_header::tests::fake_segment;
use crate::recovery::{plan, Target, TimelineTarget};
use crate::repo::{layout, Repository};
use crate::storage::{MemoryStorage, Storage};
use crate::store::manifest;
use crate::test_support;
use crate::types::WalFileName;

const SEG: u64 = 1 << 20;

fn seg_name(n: u64) -> WalFileName {
    format!("0000000100000000{n:08X}").parse().unwrap()
}

async fn push(repo: &Repository, n: u64) {
    let data = fake_segment(9, 1, n * SEG, SEG as u32, SEG as usize);
    push_wal_file(repo, "main", &seg_name(n), WalSource::Bytes(data))
        .await
        .unwrap();
}

/// A backup as `backup` commits it: manifest, then the head.
async fn backup(repo: &Repository, id: &str, start: &str, stop: &str, at: &str) {
    let m = test_support::manifest(id, start, stop, at, &[]);
    manifest::save(repo, &m).await.unwrap();
    let entry = HeadBackup {
        timeline: 1,
        start_lsn: m.start_lsn,
        stop_lsn: m.stop_lsn,
        stop_time: m.stop_time,
    };
    head::update(repo, "main", SEG, |h| {
        h.saw_segment(1, m.start_lsn.segment_no(SEG));
        h.saw_segment(1, m.stop_lsn.segment_no(SEG));
        h.backups.insert(BackupId::new(id), entry.clone());
        true
    })
    .await
    .unwrap();
}

async fn setup() -> (std::sync::Arc<MemoryStorage>, Repository) {
    let (mem, repo) = memory_repo().await;
    for n in 1..=18 {
        push(&repo, n).await;
    }
    backup(
        &repo,
        "20261101-000000F",
        "0/200028",
        "0/300100",
        "2026-11-01T00:00:00Z",
    )
    .await;
    backup(
        &repo,
        "20261120-000000F",
        "0/A00028",
        "0/B00100",
        "2026-11-20T00:00:00Z",
    )
    .await;
    (mem, repo)
}

async fn delete_record(mem: &MemoryStorage, n: u64) {
    mem.delete(&layout::wal_pointer("main", &seg_name(n)))
        .await
        .unwrap();
}

#[tokio::test]
async fn archive_get_tells_deleted_wal_from_wal_never_archived() {
    let (mem, repo) = setup().await;
    // Pushes of segment 16 (a multiple of 16) moved the high-water mark there; 17 and 18
    // were pushed after it and are not covered yet.
    delete_record(&mem, 16).await;
    delete_record(&mem, 18).await;
    let err = get_wal_file(&repo, "main", &seg_name(16))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("000000010000000000000010") && msg.contains("catalog head"),
        "{msg}"
    );
    assert!(matches!(
        get_wal_file(&repo, "main", &seg_name(18)).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        get_wal_file(&repo, "main", &seg_name(40)).await,
        Err(Error::NotFound(_))
    ));
    // The history file of a timeline the head does not know is absent, not lost.
    let h2: WalFileName = "00000002.history".parse().unwrap();
    assert!(matches!(
        get_wal_file(&repo, "main", &h2).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn audit_names_deleted_backups_and_wal_and_restore_refuses_to_route_around_them() {
    let (mem, repo) = setup().await;
    assert!(audit(&repo, "main", None).await.unwrap().is_clean());
    let (_, newest) = plan(
        &repo,
        "main",
        None,
        &Target::EndOfArchive,
        TimelineTarget::Latest,
    )
    .await
    .unwrap();
    assert_eq!(newest.backup_id, "20261120-000000F");

    // The newest backup's manifest is deleted.
    mem.delete(&layout::backup_manifest("main", "20261120-000000F"))
        .await
        .unwrap();
    let a = audit(&repo, "main", None).await.unwrap();
    assert_eq!(a.missing_backups, vec!["20261120-000000F".to_string()]);
    let err = plan(
        &repo,
        "main",
        None,
        &Target::EndOfArchive,
        TimelineTarget::Latest,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("20261120-000000F") && err.contains("--backup 20261101-000000F"),
        "{err}"
    );
    // Naming the older backup is the operator's explicit choice.
    plan(
        &repo,
        "main",
        Some("20261101-000000F"),
        &Target::EndOfArchive,
        TimelineTarget::Latest,
    )
    .await
    .unwrap();
    // A target before the deleted backup's consistency point never needed it.
    let before = crate::recovery::parse_target_time("2026-11-10 00:00:00+00").unwrap();
    let (_, p) = plan(
        &repo,
        "main",
        None,
        &Target::Time(before),
        TimelineTarget::Latest,
    )
    .await
    .unwrap();
    assert_eq!(p.backup_id, "20261101-000000F");

    // WAL the head covers is deleted: the end of the archive is not where replay would stop.
    delete_record(&mem, 14).await;
    let a = audit(&repo, "main", None).await.unwrap();
    assert_eq!(a.missing_wal.len(), 1, "{a:?}");
    assert_eq!(a.missing_wal[0].first, "00000001000000000000000E");
    let err = plan(
        &repo,
        "main",
        Some("20261101-000000F"),
        &Target::EndOfArchive,
        TimelineTarget::Latest,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("00000001000000000000000E"),
        "{err}"
    );
    // An explicit target before the hole is still fine.
    plan(
        &repo,
        "main",
        Some("20261101-000000F"),
        &Target::Lsn("0/C00000".parse().unwrap()),
        TimelineTarget::Latest,
    )
    .await
    .unwrap();

    // WAL data deleted behind its record is reported as such.
    let id = repo
        .codec()
        .content_id(&fake_segment(9, 1, 5 * SEG, SEG as u32, SEG as usize));
    mem.delete(&layout::wal_data("main", &seg_name(5), &id))
        .await
        .unwrap();
    let a = audit(&repo, "main", None).await.unwrap();
    assert!(
        a.missing_wal
            .iter()
            .any(|w| w.first == "000000010000000000000005" && w.what == "data"),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_deleted_or_rolled_back_head_is_reported() {
    let (mem, repo) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo.with_state_dir(dir.path());
    let key = layout::catalog_head("main");
    let (old, _) = mem.get_versioned(&key).await.unwrap();
    push(&repo, 32).await; // moves the mark again: a newer generation, seen by this host
    let (_, v) = mem.get_versioned(&key).await.unwrap();
    mem.put_swap(&key, old, Some(&v)).await.unwrap();
    let a = audit(&repo, "main", None).await.unwrap();
    assert!(
        a.head_problem
            .as_deref()
            .is_some_and(|p| p.contains("older copy")),
        "{a:?}"
    );
    let err = get_wal_file(&repo, "main", &seg_name(33))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "presence unknown: {err}"
    );
    // Deleted, seen from a host that never saw it: the cluster record gives it away.
    mem.delete(&key).await.unwrap();
    let fresh = Repository::open(
        repo.storage().clone(),
        Some(&crate::crypto::Unlock::Passphrase("pw".into())),
    )
    .await
    .unwrap();
    let a = audit(&fresh, "main", None).await.unwrap();
    assert!(
        a.head_problem
            .as_deref()
            .is_some_and(|p| p.contains("missing")),
        "{a:?}"
    );
    let err = plan(
        &fresh,
        "main",
        None,
        &Target::EndOfArchive,
        TimelineTarget::Latest,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("head") && err.contains("--backup"), "{err}");
}

#[tokio::test]
async fn what_expire_removes_is_not_reported_as_missing() {
    let (_mem, repo) = setup().await;
    let policy = crate::retention::Policy {
        full: Some(1),
        ..Default::default()
    };
    let report = crate::expire::expire(&repo, "main", &policy, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(report.wal_files > 0, "{report:?}");
    let a = audit(&repo, "main", None).await.unwrap();
    assert!(a.is_clean(), "{a:?}");
    let h = head::read(&repo, "main").await.unwrap().unwrap().0;
    assert_eq!(h.backups.len(), 1);
    assert!(!h.must_exist(&seg_name(9)) && h.must_exist(&seg_name(10)));
}

#[tokio::test]
async fn an_older_gc_state_put_back_is_refused() {
    use crate::store::condemned::{read_state, write_state};
    let (mem, repo) = memory_repo().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo.with_state_dir(dir.path());
    let (mut st, v) = read_state(&repo).await.unwrap();
    st.condemned
        .insert(crate::store::ids::PackId::new([0xab; 32]), 1);
    let v = write_state(&repo, &mut st, v.as_ref(), "test")
        .await
        .unwrap();
    let key = layout::gc_state();
    let (old, _) = mem.get_versioned(&key).await.unwrap();
    st.condemned.clear();
    let v = write_state(&repo, &mut st, Some(&v), "test").await.unwrap();
    assert_eq!(st.generation, 2);
    mem.put_swap(&key, old, Some(&v)).await.unwrap();
    let err = read_state(&repo).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("gc/state") && err.to_string().contains("generation 1"),
        "{err}"
    );
}

/// A catalog head as pgcairn wrote it while times were strings: it reads, and writes back as
/// the same JSON (existing repositories keep their format).
#[test]
fn a_head_written_with_string_times_reads_and_writes_back_the_same_json() {
    let old = serde_json::json!({
        "cluster": "main",
        "generation": 7,
        "updated_at": "2026-11-24T07:00:01.123456789Z",
        "wal_segment_size": 16777216,
        "backups": {"20261124-070000F": {
            "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
            "stop_time": "2026-11-24T07:00:00.5Z"
        }},
        "timelines": {"1": {"first": 2, "high": 9, "expired": []}},
        "last_verify": {"at": "2026-11-24T08:00:00Z", "ok": true, "summary": "ok"},
        "last_drill": null
    });
    let head: head::CatalogHead = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(
        head.backups
            .values()
            .next()
            .unwrap()
            .stop_time
            .unix_seconds(),
        1_795_503_600
    );
    assert_eq!(serde_json::to_value(&head).unwrap(), old);
}

/// A head whose time does not parse is refused when it is read, naming the object and the
/// value (before, each reader parsed it and some fell back silently).
#[tokio::test]
async fn a_head_with_a_bad_time_is_refused_naming_the_object_and_value() {
    let (_mem, repo) = memory_repo().await;
    let key = layout::catalog_head("main");
    let bad = serde_json::json!({
        "cluster": "main", "generation": 1, "updated_at": "last tuesday",
        "wal_segment_size": 16777216, "backups": {}, "timelines": {}
    });
    let body = super::sealed::seal(&repo, super::sealed::DocKind::CatalogHead, &key, &bad);
    repo.storage().put_create(&key, body).await.unwrap();
    let err = head::read(&repo, "main").await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(key.as_str()) && msg.contains("\"last tuesday\""),
        "{msg}"
    );
}
