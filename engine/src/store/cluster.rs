//! The cluster record: which PostgreSQL system (identifier, WAL segment size, major version) a
//! cluster name in the repository holds, bound by whichever writer comes first.
//!
//! Three writers meet a server for the first time: `backup` (from `pg_control`),
//! `archive-push` (from a segment's long page header) and `wal-receive` (from
//! `IDENTIFY_SYSTEM`). Each used to bind and compare on its own, with three sets of rules and
//! messages; here is the one place that binds a cluster and says why a server does not match
//! it, and each command only says what it refused.

use std::fmt;

use crate::error::{Error, Result};
use crate::repo::{layout, ClusterRecord, Repository};
use crate::storage::CreateOutcome;
use crate::store::sealed::{self, DocKind};
use crate::store::{head, Timestamp};

/// What a server says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    /// `pg_control`'s system identifier.
    pub system_identifier: u64,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Major version (13 to 18).
    pub pg_major: u32,
}

/// Why a server does not belong to a cluster record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Another major version (after pg_upgrade): the record's explanation.
    Major(String),
    /// Another database system.
    System {
        /// The cluster name.
        cluster: String,
        /// The server's system identifier.
        server: String,
        /// The record's.
        record: String,
        /// When the record was bound.
        bound_at: Timestamp,
    },
    /// Same system, other segment size (only a forged or damaged input can say so).
    SegmentSize {
        /// The cluster name.
        cluster: String,
        /// The server's segment size.
        server: u64,
        /// The record's.
        record: u64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Major(why) => f.write_str(why),
            Mismatch::System {
                cluster,
                server,
                record,
                bound_at,
            } => write!(
                f,
                "the server is database system {server}, but cluster {cluster:?} in this repository \
                 belongs to system {record} (bound {bound_at}). Use another --cluster name for this \
                 server, or check that its configuration points at the right repository"
            ),
            Mismatch::SegmentSize {
                cluster,
                server,
                record,
            } => write!(
                f,
                "the server uses {server}-byte WAL segments, but cluster {cluster:?} uses \
                 {record}-byte segments"
            ),
        }
    }
}

/// Reads the cluster record, if the cluster is bound yet (sealed: see [`super::sealed`]).
pub async fn read(repo: &Repository, cluster: &str) -> Result<Option<ClusterRecord>> {
    sealed::read(
        repo,
        DocKind::ClusterRecord,
        &layout::cluster_record(cluster),
    )
    .await
}

/// [`read`] before a bind: an empty record (left by a crash before its create was synced, on
/// `file://`) counts as absent, and the bind's create writes it ([`sealed::read_for_create`]).
pub async fn read_for_create(repo: &Repository, cluster: &str) -> Result<Option<ClusterRecord>> {
    sealed::read_for_create(
        repo,
        DocKind::ClusterRecord,
        &layout::cluster_record(cluster),
    )
    .await
}

/// Binds a cluster: creates its catalog head, then its record (create-only). Returns the
/// record now in force: `record`, or the one another writer created first (the caller
/// compares). The head comes first so that a record without a head always means the head
/// was deleted (see [`super::head`]).
pub async fn bind(repo: &Repository, record: ClusterRecord) -> Result<ClusterRecord> {
    let cluster = record.name.clone();
    head::ensure(repo, &cluster, record.wal_segment_size).await?;
    let key = layout::cluster_record(&cluster);
    let body = sealed::seal(repo, DocKind::ClusterRecord, &key, &record);
    match repo.storage().put_create(&key, body).await? {
        CreateOutcome::Created => Ok(record),
        CreateOutcome::AlreadyExists => read(repo, &cluster)
            .await?
            .ok_or_else(|| Error::NotFound(format!("cluster record of {cluster} vanished"))),
    }
}

/// Checks `server` against the cluster record (`known`: as read already, if it was),
/// binding `cluster` to it on first use. `Ok(Err(_))`: the server is not this cluster's.
pub async fn bind_or_check(
    repo: &Repository,
    cluster: &str,
    server: &ServerIdentity,
    known: Option<ClusterRecord>,
) -> Result<std::result::Result<ClusterRecord, Mismatch>> {
    let record = match known {
        Some(r) => r,
        None => match read_for_create(repo, cluster).await? {
            Some(r) => r,
            // Someone may bind it at the same moment: theirs is compared below.
            None => {
                bind(
                    repo,
                    ClusterRecord {
                        name: cluster.to_string(),
                        system_identifier: server.system_identifier.to_string(),
                        wal_segment_size: server.wal_segment_size,
                        pg_major: server.pg_major,
                        bound_at: Timestamp::now(),
                    },
                )
                .await?
            }
        },
    };
    Ok(check(&record, server).map(|()| record))
}

/// Why `server` does not belong to `record`, if it does not.
pub fn check(record: &ClusterRecord, server: &ServerIdentity) -> std::result::Result<(), Mismatch> {
    if let Some(why) = record.other_major(server.pg_major) {
        return Err(Mismatch::Major(why));
    }
    let sysid = server.system_identifier.to_string();
    if record.system_identifier != sysid {
        return Err(Mismatch::System {
            cluster: record.name.clone(),
            server: sysid,
            record: record.system_identifier.clone(),
            bound_at: record.bound_at,
        });
    }
    if record.wal_segment_size != server.wal_segment_size {
        return Err(Mismatch::SegmentSize {
            cluster: record.name.clone(),
            server: server.wal_segment_size,
            record: record.wal_segment_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ClusterRecord {
        ClusterRecord {
            name: "main".into(),
            system_identifier: "7000".into(),
            wal_segment_size: 16 << 20,
            pg_major: 15,
            bound_at: Timestamp::now(),
        }
    }

    fn server(sysid: u64, seg: u64, major: u32) -> ServerIdentity {
        ServerIdentity {
            system_identifier: sysid,
            wal_segment_size: seg,
            pg_major: major,
        }
    }

    #[test]
    fn a_server_matches_only_its_own_record() {
        let r = record();
        assert_eq!(check(&r, &server(7000, 16 << 20, 15)), Ok(()));
        let other = check(&r, &server(7001, 16 << 20, 15)).unwrap_err();
        assert!(matches!(other, Mismatch::System { .. }));
        assert!(
            other.to_string().contains("belongs to system 7000"),
            "{other}"
        );
        assert!(
            other.to_string().contains("another --cluster name"),
            "{other}"
        );
        let major = check(&r, &server(7000, 16 << 20, 17)).unwrap_err();
        assert!(major.to_string().contains("holds PostgreSQL 15"), "{major}");
        let seg = check(&r, &server(7000, 64 << 20, 15)).unwrap_err();
        assert!(
            seg.to_string().contains("67108864-byte WAL segments"),
            "{seg}"
        );
    }

    #[tokio::test]
    async fn the_first_server_binds_and_a_second_is_compared_with_it() {
        let (_, repo) = crate::test_support::memory_repo().await;
        let first = bind_or_check(&repo, "main", &server(1, 16 << 20, 15), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.system_identifier, "1");
        assert_eq!(
            read(&repo, "main")
                .await
                .unwrap()
                .unwrap()
                .system_identifier,
            "1"
        );
        let second = bind_or_check(&repo, "main", &server(2, 16 << 20, 15), None)
            .await
            .unwrap();
        assert!(matches!(second, Err(Mismatch::System { .. })), "{second:?}");
        assert_eq!(
            read(&repo, "main")
                .await
                .unwrap()
                .unwrap()
                .system_identifier,
            "1"
        );
    }
}
