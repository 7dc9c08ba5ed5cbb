//! One conformance suite, run against every backend: memory, local disk, and real servers on
//! loopback started by `scripts/test.sh`:
//!
//! | backend | server                                 | variables                                                        |
//! |---------|----------------------------------------|------------------------------------------------------------------|
//! | `s3`    | moto (`scripts/s3-local.sh`)           | `PGCAIRN_TEST_S3_ENDPOINT`, `PGCAIRN_TEST_S3_BUCKET`           |
//! | `az`    | Azurite (`scripts/cloud-emulators.sh`) | `PGCAIRN_TEST_AZURE_ENDPOINT`, `PGCAIRN_TEST_AZURE_CONTAINER`  |
//! | `gs`    | none yet (see below)                   | `PGCAIRN_TEST_GCS_ENDPOINT`, `PGCAIRN_TEST_GCS_BUCKET`         |
//!
//! Without its endpoint variable a backend's cases are skipped with a message, unless
//! `PGCAIRN_REQUIRE_S3=1`, `PGCAIRN_REQUIRE_AZURE=1` or `PGCAIRN_REQUIRE_GCS=1` requires it:
//! then they fail. `scripts/test.sh` (and so CI) requires S3 and Azure.
//!
//! `gs://` runs against whatever server `PGCAIRN_TEST_GCS_ENDPOINT` names (no credentials are
//! sent). No emulator on PyPI or npm passes today: object_store's GCS client speaks the XML API
//! with `x-goog-if-generation-match` preconditions, which they do not implement (see
//! `scripts/cloud-emulators.sh`).

use std::sync::Arc;

use bytes::Bytes;
use pgcairn_engine::storage::{CreateOutcome, ObjectKey, Storage, StorageError};
use pgcairn_storage::{create, open, StorageOptions};

/// The endpoint of a server from `var`, or `None` (skip) with a message; panics instead if
/// `require` is set. `hint` says where the server comes from.
fn endpoint(test: &str, backend: &str, var: &str, require: &str, hint: &str) -> Option<String> {
    if let Ok(e) = std::env::var(var) {
        return Some(e);
    }
    assert!(
        std::env::var(require).is_err(),
        "{require} is set but {var} is not: {hint}"
    );
    eprintln!("skipping {backend} case of {test}: {var} not set ({hint})");
    None
}

fn unique(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), rand_suffix())
}

/// Small multipart threshold so that the multipart case stays quick.
const TEST_MULTIPART_THRESHOLD: usize = 6 << 20;

fn s3_target(test: &str) -> Option<(String, StorageOptions)> {
    let endpoint = endpoint(
        test,
        "S3",
        "PGCAIRN_TEST_S3_ENDPOINT",
        "PGCAIRN_REQUIRE_S3",
        "start scripts/s3-local.sh; scripts/test.sh does",
    )?;
    let bucket = std::env::var("PGCAIRN_TEST_S3_BUCKET").unwrap_or_else(|_| "pgcairn-test".into());
    let opts = StorageOptions::default()
        .with("endpoint", &endpoint)
        .with("allow_http", "true")
        .with("access_key_id", "test")
        .with("secret_access_key", "test")
        .with("multipart_threshold", &TEST_MULTIPART_THRESHOLD.to_string());
    Some((format!("s3://{bucket}/conformance/{}", unique(test)), opts))
}

/// Azure Blob Storage through Azurite: `use_emulator` supplies the well-known account and key.
fn azure_target(test: &str) -> Option<(String, StorageOptions)> {
    let endpoint = endpoint(
        test,
        "Azure",
        "PGCAIRN_TEST_AZURE_ENDPOINT",
        "PGCAIRN_REQUIRE_AZURE",
        "start scripts/cloud-emulators.sh; scripts/test.sh does",
    )?;
    let container =
        std::env::var("PGCAIRN_TEST_AZURE_CONTAINER").unwrap_or_else(|_| "pgcairn-test".into());
    let opts = StorageOptions::default()
        .with("use_emulator", "true")
        .with("endpoint", &endpoint)
        .with("multipart_threshold", &TEST_MULTIPART_THRESHOLD.to_string());
    Some((
        format!("az://{container}/conformance/{}", unique(test)),
        opts,
    ))
}

/// Google Cloud Storage through a server on loopback: no credentials (`skip_signature`).
fn gcs_target(test: &str) -> Option<(String, StorageOptions)> {
    let endpoint = endpoint(
        test,
        "GCS",
        "PGCAIRN_TEST_GCS_ENDPOINT",
        "PGCAIRN_REQUIRE_GCS",
        "no emulator passes yet; point it at a server of the GCS XML API",
    )?;
    let bucket = std::env::var("PGCAIRN_TEST_GCS_BUCKET").unwrap_or_else(|_| "pgcairn-test".into());
    let opts = StorageOptions::default()
        .with("endpoint", &endpoint)
        .with("allow_http", "true")
        .with("skip_signature", "true")
        .with("multipart_threshold", &TEST_MULTIPART_THRESHOLD.to_string());
    Some((format!("gs://{bucket}/conformance/{}", unique(test)), opts))
}

/// Every remote backend whose server is available, as (name, url, options).
fn remote_targets(test: &str) -> Vec<(&'static str, String, StorageOptions)> {
    let mut out = Vec::new();
    for (name, target) in [
        (
            "s3",
            s3_target as fn(&str) -> Option<(String, StorageOptions)>,
        ),
        ("az", azure_target),
        ("gs", gcs_target),
    ] {
        if let Some((url, opts)) = target(test) {
            out.push((name, url, opts));
        }
    }
    out
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// A backend under test, with a name for messages.
type Named = (String, Arc<dyn Storage>);

/// Every backend under test. The tempdir must live as long as the vec.
fn backends(test: &str) -> (Vec<Named>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut out: Vec<Named> = vec![
        (
            "memory".into(),
            open("memory://", &StorageOptions::default()).unwrap(),
        ),
        (
            "file".into(),
            create(
                &format!("file://{}/repo", dir.path().display()),
                &StorageOptions::default(),
            )
            .unwrap(),
        ),
    ];
    for (name, url, opts) in remote_targets(test) {
        let storage = open(&url, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name.into(), storage));
    }
    (out, dir)
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s)
}

#[tokio::test]
async fn create_only_puts_never_overwrite() {
    let (all, _dir) = backends("create");
    for (name, s) in all {
        let k = key("clusters/main/wal/00000001/000000010000000000000001");
        assert_eq!(
            s.put_create(&k, Bytes::from_static(b"first"))
                .await
                .unwrap(),
            CreateOutcome::Created,
            "{name}"
        );
        assert_eq!(
            s.put_create(&k, Bytes::from_static(b"second"))
                .await
                .unwrap(),
            CreateOutcome::AlreadyExists,
            "{name}: a second create with other bytes is refused"
        );
        assert_eq!(
            &s.get(&k).await.unwrap()[..],
            b"first",
            "{name}: content untouched"
        );
        assert_eq!(
            s.put_create(&k, Bytes::from_static(b"first"))
                .await
                .unwrap(),
            CreateOutcome::Created,
            "{name}: identical bytes (a retried create that landed) count as our own write"
        );
    }
}

#[tokio::test]
async fn reads_ranges_heads_and_not_found() {
    let (all, _dir) = backends("reads");
    for (name, s) in all {
        let k = key("packs/ab/abcdef");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.put_create(&k, Bytes::from(data.clone())).await.unwrap();
        assert_eq!(s.head(&k).await.unwrap(), 100_000, "{name}");
        assert_eq!(
            &s.get_range(&k, 1000..1010).await.unwrap()[..],
            &data[1000..1010],
            "{name}"
        );
        assert_eq!(s.get(&k).await.unwrap().len(), 100_000, "{name}");
        let missing = key("packs/ab/missing");
        assert!(
            matches!(s.get(&missing).await, Err(StorageError::NotFound { .. })),
            "{name}"
        );
        assert!(
            matches!(s.head(&missing).await, Err(StorageError::NotFound { .. })),
            "{name}"
        );
    }
}

#[tokio::test]
async fn compare_and_swap_detects_concurrent_change() {
    let (all, _dir) = backends("cas");
    for (name, s) in all {
        let k = key("gc/generations");
        let v1 = s
            .put_swap(&k, Bytes::from_static(b"gen1"), None)
            .await
            .unwrap();
        assert!(
            matches!(
                s.put_swap(&k, Bytes::from_static(b"other"), None).await,
                Err(StorageError::Precondition { .. })
            ),
            "{name}: create-if-absent fails when present"
        );
        let (_, read_v1) = s.get_versioned(&k).await.unwrap();
        let v2 = s
            .put_swap(&k, Bytes::from_static(b"gen2"), Some(&read_v1))
            .await
            .unwrap();
        assert_ne!(v1, v2, "{name}");
        assert!(
            matches!(
                s.put_swap(&k, Bytes::from_static(b"gen3"), Some(&read_v1))
                    .await,
                Err(StorageError::Precondition { .. })
            ),
            "{name}: a stale version loses"
        );
        assert_eq!(&s.get(&k).await.unwrap()[..], b"gen2", "{name}");
    }
}

#[tokio::test]
async fn list_is_prefix_bounded_and_delete_is_idempotent() {
    let (all, _dir) = backends("list");
    for (name, s) in all {
        for k in [
            "clusters/a/wal/1",
            "clusters/a/wal/2",
            "clusters/ab/wal/1",
            "config",
        ] {
            s.put_create(&key(k), Bytes::from(k.as_bytes().to_vec()))
                .await
                .unwrap();
        }
        let listed: Vec<String> = s
            .list("clusters/a/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.to_string())
            .collect();
        assert_eq!(listed, ["clusters/a/wal/1", "clusters/a/wal/2"], "{name}");
        assert_eq!(s.list("").await.unwrap().len(), 4, "{name}");
        s.delete(&key("clusters/a/wal/1")).await.unwrap();
        s.delete(&key("clusters/a/wal/1")).await.unwrap();
        assert_eq!(s.list("clusters/a/").await.unwrap().len(), 1, "{name}");
    }
}

/// `list_after` gives the tail of a folder in key order, strictly after its bound, and stays
/// inside the prefix (S3 `start-after`; filtered where the store has no such thing).
#[tokio::test]
async fn list_after_gives_the_tail_of_a_folder() {
    let (all, _dir) = backends("list-after");
    for (name, s) in all {
        for k in [
            "clusters/a/wal/00000001/000000010000000000000001",
            "clusters/a/wal/00000001/000000010000000000000002",
            "clusters/a/wal/00000001/000000010000000000000002.partial",
            "clusters/a/wal/00000001/000000010000000000000003",
            "clusters/a/wal/00000002/00000002.history",
            "clusters/b/wal/00000001/000000010000000000000009",
        ] {
            s.put_create(&key(k), Bytes::from(k.as_bytes().to_vec()))
                .await
                .unwrap();
        }
        let tail = |prefix: &'static str, after: &'static str| {
            let s = s.clone();
            async move {
                s.list_after(prefix, after)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.key.to_string().rsplit('/').next().unwrap().to_string())
                    .collect::<Vec<String>>()
            }
        };
        let tli = "clusters/a/wal/00000001/";
        assert_eq!(
            tail(tli, "clusters/a/wal/00000001/000000010000000000000001").await,
            [
                "000000010000000000000002",
                "000000010000000000000002.partial",
                "000000010000000000000003"
            ],
            "{name}: strictly after the bound"
        );
        assert_eq!(
            tail(tli, "clusters/a/wal/00000001/000000010000000000000002.z").await,
            ["000000010000000000000003"],
            "{name}: past every key of a segment"
        );
        assert_eq!(
            tail(
                "clusters/a/wal/",
                "clusters/a/wal/00000001/000000010000000000000003"
            )
            .await,
            ["00000002.history"],
            "{name}: later folders of the prefix"
        );
        assert!(
            tail(tli, "clusters/a/wal/00000001/000000010000000000000003")
                .await
                .is_empty(),
            "{name}: nothing past the last key, and nothing of another cluster"
        );
    }
}

/// `len` bytes that do not repeat in any short period.
fn noise(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A file:// repository created by `create` in `<tempdir>/repo`.
fn new_local_repository() -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let s = create(
        &format!("file://{}", root.display()),
        &StorageOptions::default(),
    )
    .unwrap();
    (dir, s)
}

/// Permission bits of `p`.
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// 20 MiB: above the test threshold, and two parts (16 + 4 MiB) of a multipart upload; a
/// second create of the same name is compared like a small object's.
#[tokio::test]
async fn large_objects_round_trip_through_multipart() {
    let data = noise(20 << 20);
    for (name, url, opts) in remote_targets("multipart") {
        let s = open(&url, &opts).unwrap();
        let k = key("packs/00/large");
        assert_eq!(
            s.put_create(&k, Bytes::from(data.clone())).await.unwrap(),
            CreateOutcome::Created,
            "{name}"
        );
        assert_eq!(s.get(&k).await.unwrap(), data, "{name}");
        assert_eq!(s.head(&k).await.unwrap(), data.len() as u64, "{name}");
        // A multipart upload cannot be conditional, but the contract is the same as for
        // small objects: our own bytes again are our write, other bytes are refused.
        assert_eq!(
            s.put_create(&k, Bytes::from(data.clone())).await.unwrap(),
            CreateOutcome::Created,
            "{name}: identical bytes (a retried create that landed) count as our own write"
        );
        let mut other = data.clone();
        other[17 << 20] ^= 1;
        assert_eq!(
            s.put_create(&k, Bytes::from(other)).await.unwrap(),
            CreateOutcome::AlreadyExists,
            "{name}: other bytes under a taken name are refused"
        );
        assert_eq!(s.get(&k).await.unwrap(), data, "{name}: content untouched");
    }
}

/// Large local objects (packs) are created past the page cache through an unnamed file: the
/// same create-only contract, exact bytes, private modes, and no temporary name in a listing.
#[tokio::test]
async fn large_local_objects_keep_the_create_only_contract() {
    let (dir, s) = new_local_repository();
    let root = dir.path().join("repo");
    let data = noise((9 << 20) + 777);
    let k = key("packs/ab/abcdef");
    assert_eq!(
        s.put_create(&k, Bytes::from(data.clone())).await.unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(s.get(&k).await.unwrap(), data);
    assert_eq!(s.head(&k).await.unwrap(), data.len() as u64);
    let tail = (data.len() - 5000) as u64..data.len() as u64;
    assert_eq!(
        s.get_range(&k, tail.clone()).await.unwrap(),
        data[tail.start as usize..]
    );
    let mut other = data.clone();
    other[4 << 20] ^= 1;
    assert_eq!(
        s.put_create(&k, Bytes::from(other)).await.unwrap(),
        CreateOutcome::AlreadyExists,
        "other bytes under a taken name are refused"
    );
    assert_eq!(s.get(&k).await.unwrap(), data, "content untouched");
    assert_eq!(
        s.put_create(&k, Bytes::from(data.clone())).await.unwrap(),
        CreateOutcome::Created,
        "identical bytes (a retried create that landed) count as our own write"
    );
    assert_eq!(mode(&root.join("packs")), 0o700);
    assert_eq!(mode(&root.join("packs/ab")), 0o700);
    assert_eq!(mode(&root.join("packs/ab/abcdef")), 0o600);
    let names: Vec<_> = std::fs::read_dir(root.join("packs/ab"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["abcdef"], "nothing but the object in its directory");
    let keys: Vec<String> = s
        .list("packs/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    assert_eq!(keys, ["packs/ab/abcdef"]);
}

/// On local disk a power loss between a create's link and its fsync leaves the name holding
/// nothing. The next create of it writes its bytes (one of two racing creates; the other is
/// refused as for any taken name): every retry of that create, PostgreSQL's `archive-push`
/// of a segment whose record was left empty, used to find the name taken and fail for ever.
/// An object with bytes is never replaced.
#[tokio::test]
async fn an_empty_local_object_left_by_a_crash_is_written_again() {
    let (dir, s) = new_local_repository();
    let folder = dir.path().join("repo/clusters/main/wal/00000001");
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("000000010000000000000003");
    std::fs::write(&path, b"").unwrap();
    let k = key("clusters/main/wal/00000001/000000010000000000000003");
    let (a, b) = tokio::join!(
        s.put_create(&k, Bytes::from_static(b"record a")),
        s.put_create(&k, Bytes::from_static(b"record b"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let written = std::fs::read(&path).unwrap();
    match (a, b) {
        (CreateOutcome::Created, CreateOutcome::AlreadyExists) => assert_eq!(written, b"record a"),
        (CreateOutcome::AlreadyExists, CreateOutcome::Created) => assert_eq!(written, b"record b"),
        other => panic!("exactly one create writes: {other:?}"),
    }
    assert_eq!(
        s.put_create(&k, Bytes::from_static(b"record c"))
            .await
            .unwrap(),
        CreateOutcome::AlreadyExists,
        "bytes in place are never replaced"
    );
    assert_eq!(std::fs::read(&path).unwrap(), written);
    let names: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["000000010000000000000003"],
        "no temporary file left"
    );
}

/// `sync_existing` on local disk reads the object and fsyncs it (a killed create may have
/// linked it without syncing), and says what it made durable; on object stores it makes no
/// request and says nothing, an acknowledged PUT being durable already.
#[tokio::test]
async fn sync_existing_returns_what_local_disk_made_durable_and_nothing_elsewhere() {
    let (named, _dir) = backends("sync-existing");
    for (name, s) in named {
        let k = key("clusters/main/wal/00000001/000000010000000000000009");
        s.put_create(&k, Bytes::from_static(b"record"))
            .await
            .unwrap();
        let synced = s.sync_existing(&k).await.unwrap();
        let missing = s.sync_existing(&key("clusters/main/none")).await.unwrap();
        if name == "file" {
            assert_eq!(synced.as_deref(), Some(&b"record"[..]), "{name}");
        } else {
            assert_eq!(synced, None, "{name}");
        }
        assert_eq!(missing, None, "{name}");
    }
}

#[tokio::test]
async fn local_writes_are_visible_as_files_and_locks_are_not_objects() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(
        &format!("file://{}", dir.path().display()),
        &StorageOptions::default(),
    )
    .unwrap();
    s.put_create(&key("a/b/c"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.put_swap(&key("config"), Bytes::from_static(b"y"), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("a/b/c")).unwrap(), b"x");
    // A compare-and-swap's temporary file, as one in flight (or left by a crash) looks: gc
    // listing leases saw one mid-swap and took it for a forged lease.
    std::fs::create_dir(dir.path().join("leases")).unwrap();
    std::fs::write(dir.path().join("leases/.backup-main.cas-tmp"), b"half").unwrap();
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    assert_eq!(keys, ["a/b/c", "config"]);
}

#[tokio::test]
async fn an_unreachable_server_fails_within_the_retry_deadline_as_transient() {
    // A port nobody listens on: connection refused on every retry.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let opts = StorageOptions::default()
        .with("endpoint", &format!("http://127.0.0.1:{port}"))
        .with("allow_http", "true")
        .with("access_key_id", "test")
        .with("secret_access_key", "test")
        .with("max_retries", "3")
        .with("retry_timeout", "3s")
        .with("connect_timeout", "1s");
    let s = open("s3://nobucket/x", &opts).unwrap();
    let started = std::time::Instant::now();
    let err = s.get(&key("config")).await.unwrap_err();
    assert!(matches!(err, StorageError::Transient { .. }), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the deadline bounds retries"
    );
}

#[test]
fn bad_urls_and_options_are_named() {
    let e = open("ftp://x/y", &StorageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown scheme"), "{e}");
    let e = open("not a url", &StorageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid repository URL"), "{e}");
    let e = open("s3:///prefix", &StorageOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bucket"), "{e}");
    let e = open(
        "az://container/prefix",
        &StorageOptions::default().with("access_key_id", "k"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("access_key_id") && e.contains("s3://"), "{e}");
    let e = open(
        "gs://bucket/prefix",
        &StorageOptions::default().with("use_emulator", "true"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("use_emulator") && e.contains("az://"), "{e}");
}

/// Azurite checks SharedKey signatures: a wrong key is refused, as a permanent error.
#[tokio::test]
async fn azure_emulator_refuses_a_wrong_key() {
    let Some((url, opts)) = azure_target("azure-key") else {
        return;
    };
    let wrong = opts
        // 64 zero bytes, base64: a well-formed key that is not the account's.
        .with("access_key", &format!("{}==", "A".repeat(86)))
        .with("max_retries", "0");
    let s = open(&url, &wrong).unwrap();
    let err = s
        .put_create(&key("config"), Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Permanent { .. }), "{err}");
}

/// HTTPS with a private CA: a TLS terminator (socat) in front of the loopback S3 server, a
/// server certificate signed by a test CA, and `ca_file` naming that CA.
#[tokio::test]
async fn s3_over_https_with_a_custom_ca() {
    let Some((url, _)) = s3_target("https") else {
        return;
    };
    let endpoint = std::env::var("PGCAIRN_TEST_S3_ENDPOINT").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pgcairn test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let pem = [
        std::fs::read(d.join("server.crt")).unwrap(),
        std::fs::read(d.join("server.key")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("server.pem"), pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut socat = std::process::Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},verify=0",
            d.join("server.pem").display()
        ))
        .arg(format!("TCP:{}", endpoint.trim_start_matches("http://")))
        .spawn()
        .expect("socat");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let base = StorageOptions::default()
        .with("endpoint", &format!("https://127.0.0.1:{port}"))
        .with("access_key_id", "test")
        .with("secret_access_key", "test")
        .with("max_retries", "1")
        .with("retry_timeout", "3s");
    let trusted = open(
        &url,
        &base
            .clone()
            .with("ca_file", &d.join("ca.pem").display().to_string()),
    )
    .unwrap();
    let k = key("tls/object");
    let created = trusted
        .put_create(&k, Bytes::from_static(b"over tls"))
        .await;
    let read_back = trusted.get(&k).await;
    let untrusted = open(&url, &base).unwrap().get(&k).await;
    let _ = socat.kill();
    let _ = socat.wait();
    assert_eq!(created.unwrap(), CreateOutcome::Created);
    assert_eq!(&read_back.unwrap()[..], b"over tls");
    assert!(
        untrusted.is_err(),
        "without ca_file the private CA is not trusted"
    );
}

/// A read-only command given a mistyped file:// URL left the directory tree behind.
#[test]
fn opening_a_missing_file_repository_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo/repo");
    let e = open(
        &format!("file://{}", missing.display()),
        &StorageOptions::default(),
    )
    .expect_err("a missing file:// repository is an error");
    let msg = e.to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("pgcairn init"),
        "{msg}"
    );
    assert!(
        !dir.path().join("typo").exists(),
        "open created a directory"
    );
}

/// file:// repository objects were world-readable under the usual umask.
#[tokio::test]
async fn local_repository_objects_are_private_whatever_the_umask() {
    let (dir, s) = new_local_repository();
    let root = dir.path().join("repo");
    s.put_create(&key("packs/ab/cd"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.put_swap(&key("config"), Bytes::from_static(b"y"), None)
        .await
        .unwrap();
    assert_eq!(mode(&root), 0o700, "repository root");
    assert_eq!(mode(&root.join("packs")), 0o700);
    assert_eq!(mode(&root.join("packs/ab")), 0o700);
    assert_eq!(mode(&root.join("packs/ab/cd")), 0o600);
    assert_eq!(mode(&root.join("config")), 0o600);
}

/// s3://KEY:SECRET@bucket was printed verbatim in errors and its credentials silently ignored.
#[test]
fn credentials_in_a_repository_url_are_refused_without_being_shown() {
    for url in [
        "s3://AKIAEXAMPLE:topsecret@bucket/prefix",
        "az://account:topsecret@container/x",
        "gs://user:topsecret@bucket/x",
    ] {
        let e =
            open(url, &StorageOptions::default()).expect_err("credentials in a URL are refused");
        let msg = e.to_string();
        assert!(!msg.contains("topsecret"), "{msg}");
        assert!(msg.contains("secret_access_key"), "{msg}");
    }
}
