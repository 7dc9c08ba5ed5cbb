//! The typed store layer under the commands: where catalog objects are authenticated, where
//! the per-cluster catalog head lives, and where storage wrappers that change what a command
//! may do are defined.
//!
//! Why a layer: before it, WAL records, cluster records, pins, restore points and the gc
//! state were plaintext JSON any writer with storage access could forge, swap or delete
//! unnoticed, and nothing recorded what the repository *should* hold, so a deleted backup or
//! WAL tail was indistinguishable from one never made. This module fixes both:
//! - [`sealed`]: every catalog document is sealed (kind `Catalog`) with its object key as
//!   authenticated context. A document copied under another name, from another repository or
//!   as another kind fails authentication, naming the object.
//! - [`head`]: one sealed, compare-and-swap-updated catalog head per cluster recording what
//!   exists (committed backups, the WAL high-water mark per timeline, the latest verify and
//!   drill), with the last generation each host saw kept locally, so deletions and rollbacks
//!   are reported instead of silently routed around.
//! - [`audit`]: compares the head with what storage lists (for verify, info, restore,
//!   archive-get).
//! - [`status`]: a small sealed status object per cluster (and one for the repository) that
//!   commands update and metrics scrapes read, so a scrape never marks the repository.
//! - [`trail`]: the audit trail, one sealed create-only record per command that changes the
//!   repository or restores from it.
//! - [`append_only`]: a storage wrapper refusing deletes and overwrites, for `archive-push`
//!   and `backup`, which never need them (least privilege).
//! - [`dry_run`]: a storage wrapper for `--dry-run` (gc, expire): reads pass, writes and
//!   deletes are recorded instead of done.
//! - [`ids`]: typed ids (`PackId`, `IndexSegmentId`, `BackupId`, `ClusterName`).
//! - [`block_lists`]: a large file's block ids recorded as lists that are blocks themselves,
//!   shared by every backup in which that part of the file did not change.
//! - [`blocks`]: the block store (packs, index segments, the block index and the set of known
//!   blocks), which backup writes and restore, verify, gc and re-encryption read.
//! - [`condemned`]: the gc state, the set of condemned packs that backups must not
//!   deduplicate against and the block index avoids.
//! - [`cluster`]: the cluster record, bound by the first backup, archive-push or wal-receive
//!   and checked by the others, in one place for all three.
//! - [`manifest`]: backup manifests (the commit point of a backup), their per-file entries
//!   and the spilled file list a backup streams its manifest from.
//! - [`limit`]: a storage wrapper capping the requests a process has in flight
//!   (`[repo] max_requests`).
//! - [`timestamp`]: [`Timestamp`], the documents' times: parsed once when a document is read
//!   (an invalid time rejects the document, naming the value), written as the same RFC 3339
//!   string as before.
//!
//! The block store and the manifests lived in `backup/` and the condemned set in `gc/`, so
//! backup imported gc (to skip condemned packs) and gc imported backup (to read and write
//! packs, to mark what manifests reference): both now depend on this layer and not on each
//! other.
//!
//! Documents keep their times as [`Timestamp`]s (manifests, the head, status objects, audit
//! records, pins, restore points, WAL records, drill reports, the config and its key slots),
//! so a time is parsed once, when its document is read.
//!
//! `repo::layout` builds every object key from the ids here; the documents, the block store
//! and the catalog are read and written through this layer.

pub mod append_only;
pub mod audit;
pub mod block_lists;
pub mod block_table;
pub mod blocks;
pub mod cluster;
pub mod condemned;
pub mod dry_run;
pub mod head;
pub mod ids;
pub mod limit;
pub mod manifest;
pub mod patches;
pub mod sealed;
pub mod status;
pub mod timestamp;
pub mod trail;

pub use timestamp::Timestamp;

#[cfg(test)]
mod tests;
