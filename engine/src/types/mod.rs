//! Domain newtypes with PostgreSQL-compatible text forms.
//!
//! `Lsn` prints as PostgreSQL does (`0/16B3748`), timelines as 8 hex digits in file names,
//! WAL file names are parsed into what they denote so a segment can never be mislabelled by
//! string handling.

mod lsn;
mod wal_name;

pub use lsn::Lsn;
pub use wal_name::{SegmentNo, TimelineId, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
