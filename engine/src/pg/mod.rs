//! PostgreSQL knowledge: on-disk formats pgbunker reads directly.

pub mod wal_header;
