//! archive-get: fetch one WAL file for `restore_command`.
//!
//! Only a missing pointer means "definitely absent" ([`Error::NotFound`]), and only when the
//! catalog head does not record the file as archived (see [`crate::store::head`]): PostgreSQL
//! probes for history files and the next segment, and absence ends recovery normally. Anything else
//! (a pointer whose data object is gone, an object that fails authentication, a storage
//! error) leaves presence unknown and is reported as such, so the caller can make
//! PostgreSQL abort recovery instead of ending it early at the wrong point.

use std::io::Write;
use std::path::Path;

use tracing::instrument;

use crate::archive::push::{read_wal_record, validate_wal_head, wal_context, WalPointer};
use crate::codec::{ObjectKind, OpenToError};
use crate::cpu;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::private_fs::Durability;
use crate::repo::{layout, Repository};
use crate::storage::StorageError;
use crate::types::WalFileName;

/// A WAL file's sealed object as fetched, with what its pointer says about it.
struct Fetched {
    pointer: WalPointer,
    id: ContentId,
    data_key: String,
    sealed: bytes::Bytes,
}

/// Reads the pointer, then the sealed object it names.
async fn fetch(repo: &Repository, cluster: &str, name: &WalFileName) -> Result<Fetched> {
    let pointer_key = layout::wal_pointer(cluster, name);
    let Some(pointer) = read_wal_record(repo, cluster, name).await? else {
        return Err(absent_or_lost(repo, cluster, name).await);
    };
    let id = ContentId::from_hex(&pointer.content_id).ok_or_else(|| {
        Error::corrupt(pointer_key.to_string(), "content id is not 64 hex digits")
    })?;
    let data_key = layout::wal_data(cluster, name, &id);
    let sealed = match repo.storage().get(&data_key).await {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::corrupt(
                data_key.to_string(),
                format!("the archive records {name} but its data object is missing"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Fetched {
        pointer,
        id,
        data_key: data_key.to_string(),
        sealed,
    })
}

/// The error for a WAL file without a record: [`Error::NotFound`] (exit 1: PostgreSQL ends
/// recovery there) only when the catalog head does not say it was archived. At or below the
/// head's high-water mark it was deleted, and if the head cannot be read (missing, rolled
/// back, unreachable) nobody can tell: both are errors that abort recovery instead of ending
/// it early at the wrong point. One GET of the head, on this path only.
async fn absent_or_lost(repo: &Repository, cluster: &str, name: &WalFileName) -> Error {
    let pointer_key = layout::wal_pointer(cluster, name);
    match crate::store::head::read(repo, cluster).await {
        Ok(Some((head, _))) if head.must_exist(name) => {
            let high = head
                .timelines
                .get(&name.timeline().0)
                .map(|t| head.segment_name(name.timeline().0, t.high).to_string())
                .unwrap_or_default();
            Error::corrupt(
                pointer_key.to_string(),
                format!(
                    "{name} is missing from the archive of cluster {cluster:?}, but the catalog head (generation {}) records \
                     it as archived (timeline {} is archived up to {high}): it was deleted outside pgcairn. Recovery \
                     past this point needs that file: restore it into the repository (or `pgcairn archive-push` it again \
                     from a server that still has it), or recover to a target before it",
                    head.generation,
                    name.timeline().0
                ),
            )
        }
        Ok(Some(_)) => Error::NotFound(format!(
            "{name} is not in the archive of cluster {cluster:?}"
        )),
        // No head, and this host never saw one (a new host restoring after a disaster): the
        // head is created before the cluster record, so a bound cluster without one had it
        // deleted, and what it recorded as archived cannot be told.
        Ok(None) => match crate::store::cluster::read(repo, cluster).await {
            Ok(None) => Error::NotFound(format!(
                "{name} is not in the archive of cluster {cluster:?}"
            )),
            Ok(Some(_)) => Error::corrupt(
                layout::catalog_head(cluster).to_string(),
                format!(
                    "{name} has no record, and whether it was archived cannot be told: the catalog head of cluster \
                     {cluster:?} is missing although the cluster is bound (deleted outside pgcairn). Put the head \
                     back from a copy, or run `pgcairn verify` to see what else is missing"
                ),
            ),
            Err(e @ Error::Storage(_)) => e,
            Err(e) => Error::corrupt(
                pointer_key.to_string(),
                format!("{name} has no record, and whether it should cannot be told: {e}"),
            ),
        },
        Err(e @ Error::Storage(_)) => e,
        Err(e) => Error::corrupt(
            pointer_key.to_string(),
            format!("{name} has no record, and whether it should cannot be told: {e}"),
        ),
    }
}

impl Fetched {
    /// The checks on an opened file: its content id, size and (defence in depth) that it
    /// still is the segment its name says (`head`: its first bytes).
    fn check(&self, name: &WalFileName, len: u64, id: &ContentId, head: &[u8]) -> Result<()> {
        if *id != self.id {
            return Err(Error::corrupt(
                self.data_key.clone(),
                "content does not match its content id",
            ));
        }
        if len != self.pointer.size {
            return Err(Error::corrupt(
                self.data_key.clone(),
                format!("{len} bytes, pointer says {}", self.pointer.size),
            ));
        }
        validate_wal_head(name, head, len as usize)
            .map_err(|e| Error::corrupt(self.data_key.clone(), e.to_string()))?;
        Ok(())
    }
}

/// Fetches, authenticates and decompresses one WAL file into memory.
#[instrument(skip_all, fields(cluster = cluster, wal = %name))]
pub async fn get_wal_file(repo: &Repository, cluster: &str, name: &WalFileName) -> Result<Vec<u8>> {
    let fetched = fetch(repo, cluster, name).await?;
    let codec = repo.codec().clone();
    let context = wal_context(cluster, name);
    let name = name.clone();
    cpu::run(move || -> Result<Vec<u8>> {
        let (plain, id) = codec
            .open_with_id(ObjectKind::Wal, &fetched.id, &context, &fetched.sealed)
            .map_err(|e| Error::corrupt(fetched.data_key.clone(), e.to_string()))?;
        fetched.check(&name, plain.len() as u64, &id, &plain)?;
        Ok(plain)
    })
    .await
}

/// Fetches one WAL file into `dest` (atomically, and durably with [`Durability::Durable`]),
/// opening it part by part on every core straight into the file: memory stays at about one
/// 1 MiB part per core, and nothing reaches `dest` unless every check passed.
///
/// What `restore_command` writes for PostgreSQL needs no fsync of ours ([`Durability::Atomic`]):
/// PostgreSQL keeps every file it restores (`KeepFileRestoredFromArchive`) by renaming it into
/// `pg_wal` with `durable_rename`, which fsyncs the file and the directory itself; an fsync here
/// only did the same work first (pgBackRest, WAL-G and Barman do not fsync it either). The
/// flush still happens, in PostgreSQL's startup process right after the call: a direct fetch
/// returns sooner (19.0 against 12.5 ms per 16 MiB segment on the test machine) but recovery
/// waits about as long. The prefetch spool stays durable: its fsync runs in the background
/// prefetcher, ahead of replay, and a segment not read yet must not come back torn from a
/// crash.
#[instrument(skip_all, fields(cluster = cluster, wal = %name))]
pub async fn get_wal_file_to(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    dest: &Path,
    durability: Durability,
) -> Result<()> {
    let fetched = fetch(repo, cluster, name).await?;
    let codec = repo.codec().clone();
    let context = wal_context(cluster, name);
    let name = name.clone();
    let dest = dest.to_path_buf();
    // A blocking thread, not the CPU pool: the fsync waits for the disk. The parts are opened
    // on the CPU pool from there.
    tokio::task::spawn_blocking(move || {
        write_atomically_with(&dest, durability, |file| {
            use std::os::unix::fs::FileExt;
            let head = std::sync::Mutex::new(Vec::new());
            let sink = |offset: u64, bytes: &[u8]| {
                if offset == 0 {
                    let n = bytes.len().min(crate::pg::wal_header::LONG_HEADER_LEN);
                    head.lock()
                        .expect("head lock")
                        .extend_from_slice(&bytes[..n]);
                }
                file.write_all_at(bytes, offset)
            };
            let (len, id) = codec
                .open_to(
                    ObjectKind::Wal,
                    &fetched.id,
                    &context,
                    &fetched.sealed,
                    &sink,
                )
                .map_err(|e| match e {
                    OpenToError::Sink(e) => Error::io(format!("writing {}", dest.display()), e),
                    OpenToError::Codec(e) => {
                        Error::corrupt(fetched.data_key.clone(), e.to_string())
                    }
                })?;
            let head = head.into_inner().expect("head lock");
            fetched.check(&name, len, &id, &head)
        })
    })
    .await
    .map_err(|e| Error::InvalidInput(format!("fetching a WAL file failed: {e}")))?
}

/// Where [`get_wal_file_or_tail_to`] found a WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetSource {
    /// An archived file.
    Archived,
    /// The streamed tail of a segment not complete yet (see [`crate::walstream::chunks`]):
    /// `bytes` of WAL, padded with zeros to the segment size.
    StreamedTail { bytes: u64 },
}

/// As [`get_wal_file_to`], and for a segment that is not archived, the tail `wal-receive`
/// streamed of it: what `restore_command` calls, so that recovery reaches the last
/// acknowledged commit. A tail is never served from the prefetch spool (it grows while the
/// receiver runs): only this direct path serves it.
#[instrument(skip_all, fields(cluster = cluster, wal = %name))]
pub async fn get_wal_file_or_tail_to(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    dest: &Path,
    durability: Durability,
) -> Result<GetSource> {
    let absent = match get_wal_file_to(repo, cluster, name, dest, durability).await {
        Ok(()) => return Ok(GetSource::Archived),
        Err(Error::NotFound(msg)) if matches!(name, WalFileName::Segment { .. }) => msg,
        Err(e) => return Err(e),
    };
    let seg_size = match crate::store::cluster::read(repo, cluster).await? {
        Some(r) => r.wal_segment_size,
        None => return Err(Error::NotFound(absent)),
    };
    let tail = crate::walstream::chunks::read_tail(repo, cluster, name, seg_size).await;
    // The receiver records a segment before it deletes its chunks (in parallel), so a tail
    // read while it archives one can look absent, or shorter than what was streamed (chunk 0
    // still there, later ones gone), or vanish mid-read. Every such read ends before the
    // record is looked up again here: if the segment is archived now, the archived file is
    // served, never a tail that may be short. With no record, the receiver has deleted none
    // of this segment's chunks, and the tail is the whole durable stream up to the first
    // hole, which only a receiver killed with two writes in flight leaves (what follows it
    // was never acknowledged). `expire` also removes chunks of segments never archived under
    // this name, but only of a tail that is not the newest and that a later timeline
    // supersedes or no retained backup needs ([`crate::walstream::sweep`]).
    match get_wal_file_to(repo, cluster, name, dest, durability).await {
        Ok(()) => return Ok(GetSource::Archived),
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    match tail? {
        Some((data, bytes)) => {
            validate_wal_head(name, &data, data.len())
                .map_err(|e| Error::corrupt(name.to_string(), format!("streamed tail: {e}")))?;
            let dest = dest.to_path_buf();
            tokio::task::spawn_blocking(move || write_atomically(&dest, &data, durability))
                .await
                .map_err(|e| Error::InvalidInput(format!("writing a WAL file failed: {e}")))??;
            Ok(GetSource::StreamedTail { bytes })
        }
        None => Err(Error::NotFound(absent)),
    }
}

/// Writes `data` to `dest` atomically: temp file in the same directory, rename (with
/// [`Durability::Durable`], an fsync before the rename and of the directory after it). A reader
/// never sees a partial file.
pub fn write_atomically(dest: &Path, data: &[u8], durability: Durability) -> Result<()> {
    write_atomically_with(dest, durability, |mut f| {
        f.write_all(data)
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))
    })
}

/// As [`write_atomically`], with `fill` writing the temp file, durably or not; when it fails
/// the temp file is removed and `dest` is untouched. 0600 like PostgreSQL's own files: this is
/// decrypted WAL (also in the prefetch spool).
pub fn write_atomically_with(
    dest: &Path,
    durability: Durability,
    fill: impl FnOnce(&std::fs::File) -> Result<()>,
) -> Result<()> {
    use crate::private_fs::{replace_with, FILE_MODE};
    /// `fill`'s own error, or a file operation's (named for `dest`).
    enum Failed {
        Fill(Error),
        Io(std::io::Error),
    }
    impl From<std::io::Error> for Failed {
        fn from(e: std::io::Error) -> Self {
            Failed::Io(e)
        }
    }
    replace_with(dest, FILE_MODE, durability, |f| {
        fill(f).map_err(Failed::Fill)
    })
    .map_err(|e| match e {
        Failed::Fill(e) => e,
        Failed::Io(e) => Error::io(format!("writing {}", dest.display()), e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::archive::push::{push_wal_file, WalSource};
    use crate::pg::wal_header::tests::fake_segment;
    use crate::test_support::{Call, Hooked};
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn absent_is_not_found_but_damage_is_corruption() {
        let (mem, repo) = memory_repo().await;
        let name: WalFileName = "000000010000000000000001".parse().unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::NotFound(_))
        ));
        let history: WalFileName = "00000002.history".parse().unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &history).await,
            Err(Error::NotFound(_))
        ));

        let data = fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
            .await
            .unwrap();
        let id = repo
            .codec()
            .content_id(&fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20));
        let key = layout::wal_data("main", &name, &id);
        mem.tamper(key.as_str(), |v| {
            let n = v.len();
            v[n / 2] ^= 0x10;
        });
        let err = get_wal_file(&repo, "main", &name).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(key.as_str()),
            "names the object: {err}"
        );

        mem.tamper(key.as_str(), |v| v.truncate(100));
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::Corrupt { .. })
        ));
    }

    /// On a host that never saw the catalog head (no generation remembered), a deleted head
    /// of a bound cluster makes a missing segment unknowable, not absent: exit 1 there would
    /// end recovery early, at whatever segment was deleted with it.
    #[tokio::test]
    async fn a_missing_segment_behind_a_deleted_head_is_unknown_on_a_new_host() {
        let (mem, repo) = memory_repo().await;
        assert!(repo.generation_cache().is_none(), "a host that saw no head");
        let first: WalFileName = "000000010000000000000001".parse().unwrap();
        let data = fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20);
        push_wal_file(&repo, "main", &first, WalSource::Bytes(data))
            .await
            .unwrap();
        let next: WalFileName = "000000010000000000000002".parse().unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &next).await,
            Err(Error::NotFound(_))
        ));
        use crate::storage::Storage;
        mem.delete(&layout::catalog_head("main")).await.unwrap();
        let err = get_wal_file(&repo, "main", &next).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("catalog head"), "{err}");
        // The segment that is there is still served.
        assert!(get_wal_file(&repo, "main", &first).await.is_ok());
    }

    #[tokio::test]
    async fn missing_data_behind_a_pointer_is_corruption_not_absence() {
        let (mem, repo) = memory_repo().await;
        let name: WalFileName = "00000002.history".parse().unwrap();
        let body = b"1\t0/3000000\tno recovery target specified\n".to_vec();
        push_wal_file(&repo, "main", &name, WalSource::Bytes(body.clone()))
            .await
            .unwrap();
        assert_eq!(get_wal_file(&repo, "main", &name).await.unwrap(), body);
        let id = repo.codec().content_id(&body);
        use crate::storage::Storage;
        mem.delete(&layout::wal_data("main", &name, &id))
            .await
            .unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn streaming_get_writes_the_file_only_when_every_check_passes() {
        let (mem, repo) = memory_repo().await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let name: WalFileName = "000000010000000000000001".parse().unwrap();
        assert!(matches!(
            get_wal_file_to(&repo, "main", &name, &dest, Durability::Durable).await,
            Err(Error::NotFound(_))
        ));
        // Varied content so that every 1 MiB part differs.
        let mut data = fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20);
        for (i, b) in data.iter_mut().enumerate().skip(8192) {
            *b = (i / 777 % 253) as u8;
        }
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        get_wal_file_to(&repo, "main", &name, &dest, Durability::Durable)
            .await
            .unwrap();
        assert!(std::fs::read(&dest).unwrap() == data);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file"
        );

        // Damage in the middle: an error naming the object; nothing written, no temp left.
        std::fs::remove_file(&dest).unwrap();
        let key = layout::wal_data("main", &name, &repo.codec().content_id(&data));
        mem.tamper(key.as_str(), |v| {
            let n = v.len();
            v[n / 2] ^= 0x10;
        });
        let err = get_wal_file_to(&repo, "main", &name, &dest, Durability::Durable)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(key.as_str()), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // An unwritable destination is an I/O error, not absence or corruption.
        let other: WalFileName = "000000010000000000000002".parse().unwrap();
        let data2 = fake_segment(9, 1, 2 * (16 << 20), 16 << 20, 16 << 20);
        push_wal_file(&repo, "main", &other, WalSource::Bytes(data2))
            .await
            .unwrap();
        let err = get_wal_file_to(
            &repo,
            "main",
            &other,
            &dir.path().join("no/such/dir/X"),
            Durability::Durable,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_segment_archived_while_its_tail_is_read_is_served_whole_from_the_archive() {
        use crate::walstream::chunks;
        let dir = tempfile::tempdir().unwrap();
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let mut data = fake_segment(9, 1, 3 * (16 << 20), 16 << 20, 16 << 20);
        for (i, b) in data.iter_mut().enumerate().skip(8192) {
            *b = (i / 777 % 253) as u8;
        }
        // What the receiver leaves at each moment of its deletion of the chunks, after it
        // archived the segment: chunk 0 gone (the tail looks absent), or only the first
        // chunks left (the tail looks short).
        for (what, kept) in [("chunk 0 deleted", 1..4), ("later chunks deleted", 0..2)] {
            let (mem, repo) = memory_repo().await;
            let mut keys = Vec::new();
            for part in data.chunks(4 << 20) {
                let start = keys.len() as u64 * (4 << 20);
                let key = chunks::commit_chunk(&repo, "main", &name, start, part.to_vec())
                    .await
                    .unwrap();
                keys.push(key);
            }
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
                .await
                .unwrap();
            use crate::storage::Storage;
            for (i, key) in keys.iter().enumerate() {
                if !kept.contains(&i) {
                    mem.delete(key).await.unwrap();
                }
            }
            // archive-get looked the segment up just before the receiver recorded it: the
            // record's first read answers "not found".
            let record = layout::wal_pointer("main", &name);
            let hidden = std::sync::atomic::AtomicBool::new(true);
            let late_key = Hooked::new(mem.clone(), move |call| match call {
                Call::Read(k) if *k == record && hidden.swap(false, Ordering::SeqCst) => {
                    Err(StorageError::NotFound { key: k.to_string() })
                }
                _ => Ok(()),
            });
            let late = crate::test_support::open_with(std::sync::Arc::new(late_key)).await;
            let dest = dir.path().join("RECOVERYXLOG");
            let got =
                get_wal_file_or_tail_to(&late, "main", &name, &dest, Durability::Atomic).await;
            assert!(matches!(got, Ok(GetSource::Archived)), "{what}: {got:?}");
            assert!(
                std::fs::read(&dest).unwrap() == data,
                "{what}: the whole segment"
            );
        }
    }

    #[tokio::test]
    async fn streaming_get_serves_history_files_and_one_piece_objects() {
        let (_mem, repo) = memory_repo().await;
        let dir = tempfile::tempdir().unwrap();
        let name: WalFileName = "00000002.history".parse().unwrap();
        let body = b"1\t0/3000000\tno recovery target specified\n".to_vec();
        push_wal_file(&repo, "main", &name, WalSource::Bytes(body.clone()))
            .await
            .unwrap();
        let dest = dir.path().join("00000002.history");
        get_wal_file_to(&repo, "main", &name, &dest, Durability::Durable)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
    }
}
