//! PostgreSQL knowledge: on-disk formats pgcairn reads directly.

pub mod checksum;
pub mod conninfo;
pub mod control;
pub mod datadir;
pub mod guc;
pub mod history;
pub mod instance;
pub mod tls;
pub mod wal_header;
