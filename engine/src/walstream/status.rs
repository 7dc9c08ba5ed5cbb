//! The receiver's state as a small JSON file, for `info` and for metrics.
//!
//! What is durable in the repository is the truth (the chunks, see [`super::chunks`]); this
//! file adds what only the running receiver knows: whether it is connected, how far the
//! server's WAL is ahead (lag), when it last committed, and its last error. It is written
//! atomically at most about once a second and read by anyone (`pgcairn info`, a metrics
//! exporter); a missing or stale file means no receiver is running (compare `updated_at`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the receiver reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// Cluster name.
    pub cluster: String,
    /// Replication slot, if one is used.
    pub slot: Option<String>,
    /// Process id of the receiver.
    pub pid: u32,
    /// `connecting`, `streaming`, `retrying` or `stopped`.
    pub state: String,
    /// Timeline being streamed.
    pub timeline: u32,
    /// Durable in the repository and reported to the server as flushed.
    pub flush_lsn: Option<String>,
    /// The server's end of WAL, as last told.
    pub server_wal_end: Option<String>,
    /// Bytes the server has that are not yet durable in the repository.
    pub lag_bytes: Option<u64>,
    /// RFC 3339 time of the last chunk committed.
    pub last_commit_at: Option<String>,
    /// Chunks committed since the receiver started.
    pub chunks_committed: u64,
    /// Segments archived since the receiver started.
    pub segments_archived: u64,
    /// The last error, while retrying.
    pub last_error: Option<String>,
    /// RFC 3339 time this was written.
    pub updated_at: String,
}

/// Where the status of `cluster`'s receiver is kept under a state directory.
pub fn default_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join(format!("wal-receive-{cluster}.json"))
}

/// Writes the status atomically (temp file and rename), mode 0644 (it holds no secret, and a
/// monitoring agent of another user reads it), without fsync: a crash may roll it back, and the
/// receiver rewrites it within a second of running again.
pub fn write(path: &Path, status: &ReceiverStatus) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let body = serde_json::to_vec_pretty(status).expect("status serializes");
    crate::private_fs::replace_with(
        path,
        0o644,
        crate::private_fs::Durability::Atomic,
        |mut f| std::io::Write::write_all(&mut f, &body),
    )
    .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Reads the status, if there is one.
pub fn read(path: &Path) -> Result<Option<ReceiverStatus>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::InvalidInput(format!("{} is not a receiver status: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_absence_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(dir.path(), "main");
        assert_eq!(read(&path).unwrap(), None);
        let s = ReceiverStatus {
            cluster: "main".into(),
            state: "streaming".into(),
            flush_lsn: Some("0/3000000".into()),
            lag_bytes: Some(42),
            ..Default::default()
        };
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), Some(s));
        std::fs::write(&path, b"{").unwrap();
        assert!(read(&path)
            .unwrap_err()
            .to_string()
            .contains("wal-receive-main.json"));
    }
}
