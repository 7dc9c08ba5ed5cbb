//! The WAL archive: what `archive_command` and `restore_command` call.
//!
//! - [`push`]: store one WAL file (synchronously, durable before it returns).
//! - [`get`]: fetch one WAL file, telling "definitely absent" from "unknown".
//! - [`spool`]: asynchronous archiving, a background pusher and acknowledgements in a spool
//!   directory.
//! - [`prefetch`], [`prefetch_area`]: archive-get's prefetch spool, one area per repository
//!   and recovering data directory.
//! - [`listing`]: archived ranges and gaps per timeline, for `info`.

pub mod get;
pub mod listing;
pub mod mapped;
pub mod prefetch;
pub mod prefetch_area;
pub mod push;
pub mod spool;

pub use get::{
    get_wal_file, get_wal_file_or_tail_to, get_wal_file_to, write_atomically, GetSource,
};
pub use listing::{list_wal, TimelineWal, WalListing};
pub use push::{push_wal_file, PushOutcome, WalSource};
