//! PostgreSQL knowledge: on-disk formats pgbunker reads directly.

pub mod instance;
pub mod wal_header;
