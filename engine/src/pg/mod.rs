//! PostgreSQL knowledge: on-disk formats pgcairn reads directly.
//!
//! Supported: PostgreSQL 13 to 18. What differs between them, and where it is handled: the
//! WAL page magic ([`wal_header`]), `pg_control_version` ([`control`]), the backup functions
//! (`pg_start_backup`/`pg_stop_backup` before 15, `pg_backup_start`/`pg_backup_stop` from 15,
//! in `backup`), and the server binaries that run a restored data directory
//! ([`instance::PgBinaries::for_major`]). Page checksums, the long WAL page header and segment
//! naming, `backup_label`, `recovery.signal` and the recovery settings are the same in all.

/// The oldest PostgreSQL major version pgcairn supports.
pub const MIN_PG_MAJOR: u32 = 13;
/// The newest PostgreSQL major version pgcairn supports.
pub const MAX_PG_MAJOR: u32 = 18;

pub mod auto_conf;
pub mod checksum;
pub mod conninfo;
pub mod control;
pub mod control_crc;
pub mod datadir;
pub mod guc;
pub mod history;
pub mod instance;
pub mod tablespace_dir;
pub mod tls;
pub mod txid_snapshot;
pub mod wal_header;
