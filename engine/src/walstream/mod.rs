//! `wal-receive`: WAL streamed over the replication protocol, durable in the repository
//! before it is acknowledged.
//!
//! `archive_command` ships a segment at a time, so losing the primary loses up to a segment
//! (or `archive_timeout`) of committed transactions. The receiver is a physical walreceiver
//! ([`protocol`]) that makes every position durable in the repository ([`chunks`]: sealed
//! sub-segment chunks, committed in order with a bounded group-commit interval) before it
//! reports it flushed ([`receiver`]). Listed in `synchronous_standby_names`, it makes every
//! commit durable in object storage before the commit returns: a recovery point objective of
//! zero.
//!
//! One archive: a completed segment becomes an ordinary archived segment, byte for byte what
//! `archive-push` stores (both may run; the second is a no-op), and its chunks are deleted.
//! `archive-get` (so restore, PITR and drills) serves the newest partial segment from the
//! chunks, so recovery reaches the last acknowledged commit. [`status`] keeps the running
//! receiver's flush position and lag for `info` and metrics. `expire` removes chunks the archive
//! has made redundant and old timelines' superseded tails ([`sweep`]).

pub mod chunks;
pub mod protocol;
pub mod receiver;
pub mod status;
pub mod sweep;

pub use receiver::{run, ReceiveError, ReceiverOptions};
