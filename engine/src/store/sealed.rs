//! Sealed catalog documents: JSON sealed with the metadata key (codec kind `Catalog`), whose
//! authenticated context is `"<doc kind>\0<object key>"`.
//!
//! The codec already binds the repository id and the object kind; binding the document kind
//! and the exact key means a document is only valid where it was written: a WAL record of
//! segment A copied over segment B's record, a pin copied to another backup, a cluster
//! record moved to another cluster, or a catalog head replayed under another cluster, all fail
//! authentication with an error naming the object. In an unencrypted repository the same
//! binding holds through the keyed checksum (only a holder of the key can forge it).
//!
//! Replay of an *older* version of the same object under the same key is not detectable from
//! the object alone: for the one object where it matters, the catalog head, the generation
//! it carries is remembered per host (see [`super::head`]).

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::ObjectKind;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::storage::{ObjectKey, StorageError};

/// What a catalog document is; part of its authenticated context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// `clusters/<c>/wal/<TLI>/<file>`: the commit record of one archived WAL file.
    WalRecord,
    /// `clusters/<c>/cluster.json`: the cluster's system identifier.
    ClusterRecord,
    /// `clusters/<c>/pins/<id>`: a backup expire must keep.
    Pin,
    /// `clusters/<c>/restore-points/<name>`.
    RestorePoint,
    /// `gc/state`.
    GcState,
    /// `clusters/<c>/head`.
    CatalogHead,
    /// `status/cluster/<c>`.
    ClusterStatus,
    /// `status/repository`.
    RepositoryStatus,
    /// `audit/<time>-<random>`.
    AuditRecord,
    /// `leases/<name>`: who runs a backup, gc or expire (see [`crate::lease`]).
    Lease,
}

impl DocKind {
    /// The name bound into the authenticated context.
    pub fn name(self) -> &'static str {
        match self {
            DocKind::WalRecord => "wal-record",
            DocKind::ClusterRecord => "cluster-record",
            DocKind::Pin => "pin",
            DocKind::RestorePoint => "restore-point",
            DocKind::GcState => "gc-state",
            DocKind::CatalogHead => "catalog-head",
            DocKind::ClusterStatus => "cluster-status",
            DocKind::RepositoryStatus => "repository-status",
            DocKind::AuditRecord => "audit-record",
            DocKind::Lease => "lease",
        }
    }
}

pub(crate) fn context(kind: DocKind, key: &ObjectKey) -> Vec<u8> {
    let mut c = Vec::with_capacity(kind.name().len() + 1 + key.as_str().len());
    c.extend_from_slice(kind.name().as_bytes());
    c.push(0);
    c.extend_from_slice(key.as_str().as_bytes());
    c
}

/// Seals `doc` for `key`.
pub fn seal<T: Serialize>(repo: &Repository, kind: DocKind, key: &ObjectKey, doc: &T) -> Bytes {
    let plain = serde_json::to_vec(doc).expect("catalog documents serialise");
    Bytes::from(repo.codec().seal(
        ObjectKind::Catalog,
        &ContentId([0; 32]),
        &context(kind, key),
        &plain,
        3,
    ))
}

/// Opens a document read from `key`; any failure is [`Error::Corrupt`] naming the object.
pub fn open<T: DeserializeOwned>(
    repo: &Repository,
    kind: DocKind,
    key: &ObjectKey,
    raw: &[u8],
) -> Result<T> {
    let plain = repo
        .codec()
        .open(ObjectKind::Catalog, &ContentId([0; 32]), &context(kind, key), raw)
        .map_err(|e| {
            Error::corrupt(
                key.to_string(),
                format!(
                    "not an authentic {} for this name: {e} (it was altered, renamed, copied from another object or \
                     repository, or written by a pgcairn older than repository format 3)",
                    kind.name()
                ),
            )
        })?;
    serde_json::from_slice(&plain).map_err(|e| {
        Error::corrupt(
            key.to_string(),
            format!("authentic but unreadable {}: {e}", kind.name()),
        )
    })
}

/// Reads and opens `key`; `None` when it does not exist.
pub async fn read<T: DeserializeOwned>(
    repo: &Repository,
    kind: DocKind,
    key: &ObjectKey,
) -> Result<Option<T>> {
    read_raw(repo, key)
        .await?
        .map(|raw| open(repo, kind, key, &raw))
        .transpose()
}

/// The stored bytes of `key`; `None` when it does not exist.
async fn read_raw(repo: &Repository, key: &ObjectKey) -> Result<Option<bytes::Bytes>> {
    match repo.storage().get(key).await {
        Ok(raw) => Ok(Some(raw)),
        Err(StorageError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`read`] for a writer about to create `key`: an empty object counts as absent. No sealed
/// document is empty; on local disk a power loss between a create's link and its fsync leaves
/// the name holding nothing, and the storage backend's next create of that name writes it
/// ([`crate::storage::Storage::put_create`] on `file://`). Read as corrupt, it failed every
/// retry of that create before the create was tried (an `archive-push` of a segment whose
/// record a crash left empty, for ever). Elsewhere an empty object stays taken: the create
/// finds the name taken and the caller reads it as corrupt.
pub async fn read_for_create<T: DeserializeOwned>(
    repo: &Repository,
    kind: DocKind,
    key: &ObjectKey,
) -> Result<Option<T>> {
    read_raw(repo, key)
        .await?
        .filter(|raw| !raw.is_empty())
        .map(|raw| open(repo, kind, key, &raw))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::repo::layout;

    #[tokio::test]
    async fn a_document_only_opens_under_its_own_name_and_kind() {
        let (_mem, repo) = memory_repo().await;
        let a = layout::pin("main", "20260101-000000F");
        let b = layout::pin("main", "20260102-000000F");
        let sealed = seal(&repo, DocKind::Pin, &a, &"x");
        assert_eq!(
            open::<String>(&repo, DocKind::Pin, &a, &sealed).unwrap(),
            "x"
        );
        let renamed = open::<String>(&repo, DocKind::Pin, &b, &sealed).unwrap_err();
        assert!(matches!(renamed, Error::Corrupt { .. }), "{renamed}");
        assert!(renamed.to_string().contains(b.as_str()), "{renamed}");
        assert!(open::<String>(&repo, DocKind::RestorePoint, &a, &sealed).is_err());
        let (_mem2, other) = memory_repo().await;
        assert!(
            open::<String>(&other, DocKind::Pin, &a, &sealed).is_err(),
            "another repository's document"
        );
        assert!(open::<String>(&repo, DocKind::Pin, &a, b"{\"plain\": 1}").is_err());
    }
}
