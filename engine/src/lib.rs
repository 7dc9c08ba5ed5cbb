//! pgcairn engine: everything pgcairn knows, as a library.
//!
//! The binary (`cli/`) parses arguments and calls into this crate; storage backends
//! (`storage-backends/`) implement [`storage::Storage`]. Nothing here depends on
//! `object_store`, clap or a terminal: the engine defines the narrow storage trait it needs
//! and talks to PostgreSQL files and objects only through its own types.
//!
//! Map of the crate:
//! - [`types`]: PostgreSQL-compatible domain newtypes (`Lsn`, `TimelineId`, WAL file names).
//! - [`storage`]: the repository-shaped storage trait, its error policy and an in-memory
//!   implementation for tests.
//! - [`crypto`]: master secret, key slots (passphrase through argon2id, or a key file),
//!   derived subkeys.
//! - [`codec`]: the sealed-object envelope (zstd, then XChaCha20-Poly1305 with AAD).
//! - [`pack`] and [`index`]: pack objects with encrypted trailers and index segments, the
//!   block store that base backups build on.
//! - [`repo`]: the on-storage layout, the repository config, opening and creating a repository.
//! - [`pg`]: PostgreSQL knowledge (WAL page headers).
//! - [`archive`]: `archive-push`, `archive-get`, the asynchronous pusher and WAL listings.
//! - [`walstream`]: `wal-receive`, the streaming replication client that makes WAL durable in
//!   the repository before acknowledging it (sub-segment chunks, the streamed tail).
//! - [`store`]: the typed store layer: catalog objects sealed for their names, the per-cluster
//!   catalog head (what must exist, rollback detection), the append-only storage wrapper,
//!   the status objects monitoring reads.
//! - [`metrics`]: what a metrics scrape reads (status objects, the PostgreSQL archiver).

pub mod archive;
pub mod backup;
pub mod codec;
pub mod config_files;
pub(crate) mod cpu;
pub mod crypto;
pub mod db_select;
pub mod direct_io;
pub mod drill;
pub mod error;
pub mod expire;
pub mod first_start;
pub mod fs_beneath;
pub mod gc;
pub mod hold;
pub mod index;
pub mod info;
pub mod lease;
pub mod metrics;
pub mod pack;
pub mod pause_point;
pub mod pg;
pub mod private_fs;
pub mod progress;
pub mod recovery;
pub mod recovery_options;
pub mod reencrypt;
pub mod replay_speed;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod sorted;
pub mod storage;
pub mod store;
pub mod types;
pub mod untrusted_file;
pub mod verify;
pub mod wal_dir;
pub mod walstream;

#[cfg(test)]
mod test_support;

pub use error::{Error, Result};
