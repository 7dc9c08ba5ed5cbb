//! Shared helpers for the engine's unit tests: synthetic manifests without a PostgreSQL.

use std::sync::Arc;

use crate::crypto::{ContentId, KdfParams, KeyFile, Unlock};
use crate::repo::{InitOptions, Repository};
use crate::storage::{MemoryStorage, Storage};
use crate::store::manifest::{self, Manifest};

/// A new repository on in-memory storage, opened with a fresh key file.
pub async fn memory_repo() -> (Arc<MemoryStorage>, Repository) {
    let mem = Arc::new(MemoryStorage::new());
    let (_, repo) = init_repo(mem.clone()).await;
    (mem, repo)
}

/// Initialises a repository on `storage` with a fresh key file and opens it.
pub async fn init_repo(storage: Arc<dyn Storage>) -> (Unlock, Repository) {
    let unlock = Unlock::KeyFile(KeyFile::generate());
    Repository::init(
        storage.clone(),
        InitOptions {
            unlock: Some(unlock.clone()),
            kdf: KdfParams::insecure_for_tests(),
            wal_compress_level: 1,
        },
    )
    .await
    .unwrap();
    let repo = Repository::open(storage, Some(&unlock)).await.unwrap();
    (unlock, repo)
}

/// A full backup of cluster `main` with one file made of `blocks`, consistent between
/// `start_lsn` and `stop_lsn` (like `"0/1000000"`), ending at `stop_time` (RFC 3339).
pub fn manifest(
    id: &str,
    start_lsn: &str,
    stop_lsn: &str,
    stop_time: &str,
    blocks: &[ContentId],
) -> Manifest {
    let hexes: Vec<String> = blocks.iter().map(|b| b.to_hex()).collect();
    serde_json::from_value(serde_json::json!({
        "format": 1, "id": id, "type": "full", "reference": null, "cluster": "main",
        "system_identifier": "1", "pg_version_num": 150000, "timeline": 1,
        "start_lsn": start_lsn, "stop_lsn": stop_lsn,
        "start_wal": "", "stop_wal": "",
        "start_time": stop_time, "stop_time": stop_time,
        "block_size": 8192, "checksums_verified": true, "backup_label": "", "tablespace_map": null,
        "tablespaces": [], "directories": [],
        "files": [{"path": "base/1/1", "size": 8192 * blocks.len(), "mtime_ns": 0, "mode": 384,
                   "uid": 0, "gid": 0, "blocks": hexes, "checksum": "", "bad_pages": []}],
        "stats": {"files": 1, "size": 0, "bytes_read": 0, "bytes_new": 0, "stored_new": 0,
                  "blocks": 0, "blocks_new": 0, "files_unchanged": 0}
    }))
    .expect("synthetic manifest")
}

/// [`manifest`] at a fixed position and time, referencing `blocks`.
pub fn manifest_of(id: &str, blocks: &[ContentId]) -> Manifest {
    manifest(id, "0/1000000", "0/1000100", "2026-11-24T00:00:01Z", blocks)
}

/// Saves [`manifest_of`] a backup referencing `blocks`.
pub async fn save_manifest(repo: &Repository, id: &str, blocks: &[ContentId]) {
    manifest::save(repo, &manifest_of(id, blocks))
        .await
        .unwrap();
}
