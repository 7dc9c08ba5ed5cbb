//! Settings that make PostgreSQL replay WAL faster, written by `restore` for the duration of
//! recovery only.
//!
//! PostgreSQL never removes lines from `postgresql.auto.conf`, so whatever a restore writes
//! there stays after recovery ends unless somebody removes it. The ways to remove it are all
//! poor: a `recovery_end_command` that edits the file runs inside the startup process while
//! hot-standby sessions may run `ALTER SYSTEM` (which rewrites the same file under a lock
//! pgcairn cannot take), it would replace a `recovery_end_command` of the operator's own, and
//! drills empty it for isolation; a later pgcairn command cannot know when recovery ended or
//! whether the operator has adopted the setting since. So pgcairn writes only settings that
//! PostgreSQL reads **nowhere but in recovery**: after promotion they are inert, and a later
//! restore rewrites the block they sit in. Nothing is left in effect that could change how
//! the promoted server behaves.
//!
//! What qualifies (PostgreSQL 15 and later; older servers get nothing):
//! - `wal_decode_buffer_size` (default 512 kB, set at server start): how far ahead of replay
//!   the startup process decodes WAL to find the blocks it will need and prefetch them
//!   (`recovery_prefetch`, on by default where `posix_fadvise` exists, as on Linux). Records
//!   with full-page images are large, so 512 kB of WAL after a checkpoint holds few records
//!   and the look-ahead ends early. Only the startup process's WAL reader allocates this
//!   buffer; walsenders and logical decoding do not use it.
//!
//! What does not, and why:
//! - `maintenance_io_concurrency` bounds the number of prefetches in flight during replay, but
//!   the primary also uses it (index tuple deletion, per-tablespace overrides), so it would
//!   stay in effect after promotion. Measured in the README ("Recovery settings").
//! - `recovery_prefetch = on`: `try`, the default, already prefetches on Linux; `on` only
//!   turns a missing `posix_fadvise` into a startup failure.
//! - `shared_buffers`, `max_wal_size`, `checkpoint_timeout`, `fsync`: they would change the
//!   promoted server's memory, checkpoints or durability.
//! - `recovery_init_sync_method = syncfs` (a faster data-directory sync at startup): it would
//!   stay in effect for every later crash recovery, where `syncfs` syncs the whole file system
//!   and, on older kernels, does not report write errors. It matters only at the first start,
//!   before any WAL is read, so it gets a block of its own that the first `archive-get`
//!   removes ([`crate::first_start`]): a moment when no session can run `ALTER SYSTEM`.
//!
//! A value the operator set in `postgresql.conf` is overridden (the pgcairn block is in
//! `postgresql.auto.conf`); one set with `ALTER SYSTEM` before the backup is replaced too,
//! since the block comes last. The restore's block says what it holds.

/// Decode buffer for replay: 4 MiB of WAL looked ahead (8x PostgreSQL's default). Memory: one
/// buffer, in the startup process, during recovery.
pub const WAL_DECODE_BUFFER: &str = "4MB";

/// The replay settings for a server of `pg_version_num` (e.g. 150004).
pub fn replay_settings(pg_version_num: u32) -> Vec<(&'static str, String)> {
    if pg_version_num < 150000 {
        return Vec::new();
    }
    vec![("wal_decode_buffer_size", WAL_DECODE_BUFFER.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_servers_that_read_them_get_replay_settings() {
        assert!(replay_settings(140010).is_empty());
        assert!(replay_settings(130000).is_empty());
        let s = replay_settings(150004);
        assert_eq!(s, vec![("wal_decode_buffer_size", "4MB".to_string())]);
        assert_eq!(replay_settings(180000), s);
    }
}
