//! archive-push: store one WAL file, never lose, overwrite or mislabel it.
//!
//! Order of operations (each step create-only):
//! 1. Check the name parses and, for segments, that the first page's long header agrees with
//!    the name (page address, timeline), the file size and the cluster's system identifier.
//!    The first segment pushed for a cluster binds its system identifier (`cluster.json`).
//! 2. Read the pointer `wal/<TLI>/<name>`: if it exists with the same content id the push is a
//!    success with nothing uploaded; with another content id it is a [`Error::Conflict`]
//!    naming both ids. PostgreSQL may legitimately re-push a segment after a crash. (If the
//!    record's data object was lost or torn, a push of the same content stores it again: a
//!    duplicate push reads the object back and opens it, which buys a way to repair a hole
//!    the restore preflight reports.)
//! 3. Store the sealed contents under `waldata/<TLI>/<name>.<content id>`. An object already
//!    there (left by an attempt that crashed before its record) is read back and opened, not
//!    trusted for existing: after a crash it may be empty or torn, or sound but not yet
//!    durable. A sound one is made durable, a damaged one replaced ([`ensure_data`]); only
//!    then may the record name it.
//! 4. Create the pointer (sealed for its name, see [`crate::store::sealed`]). This is the
//!    commit point: a crash before it leaves garbage only. If another pusher created the
//!    pointer meanwhile, the ids are compared as in 2.
//! 5. For segments whose number is a multiple of [`crate::store::head::HEAD_EVERY_SEGMENTS`],
//!    raise the catalog head's high-water mark (best effort: the segment is already durable).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument};

use crate::archive::mapped::MappedFile;
use crate::codec::{Codec, ObjectKind};
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::pg::history;
use crate::pg::wal_header::LongPageHeader;
use crate::recovery::HistoryEntry;
use crate::repo::{layout, ClusterRecord, Repository};
use crate::storage::{CreateOutcome, ObjectKey, StorageError};
use crate::store::cluster::{self, ServerIdentity};
use crate::store::head;
use crate::store::sealed::{self, DocKind};
use crate::types::WalFileName;

/// The pointer object: the commit record of one archived WAL file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalPointer {
    /// Keyed content id of the file (hex).
    pub content_id: String,
    /// Size of the original file.
    pub size: u64,
    /// Size of the sealed object.
    pub stored_size: u64,
    /// RFC 3339 time of the push.
    pub archived_at: crate::store::Timestamp,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Uploaded now; `stored_size` bytes written.
    Uploaded { stored_size: u64 },
    /// The same content was already archived; nothing uploaded.
    AlreadyArchived,
}

/// The WAL object's authenticated context: which cluster and file it claims to be.
pub(crate) fn wal_context(cluster: &str, name: &WalFileName) -> Vec<u8> {
    format!("{cluster}/{name}").into_bytes()
}

/// Checks a segment's header against the cluster record (`known`: as read already, if it
/// was), binding the cluster on first use ([`cluster::bind_or_check`]).
async fn check_or_bind_cluster(
    repo: &Repository,
    cluster: &str,
    header: &LongPageHeader,
    known: Option<ClusterRecord>,
) -> Result<()> {
    let server = ServerIdentity {
        system_identifier: header.system_identifier,
        wal_segment_size: u64::from(header.segment_size),
        pg_major: header.pg_major,
    };
    match cluster::bind_or_check(repo, cluster, &server, known).await? {
        Ok(_) => Ok(()),
        Err(why) => Err(Error::InvalidInput(format!(
            "WAL of PostgreSQL {} refused: {why}",
            header.pg_major
        ))),
    }
}

/// Validates a WAL file's content against its name; returns the parsed header for segments.
/// History and backup history files must be as PostgreSQL writes them ([`crate::pg::history`]):
/// once stored, a file can never be replaced, so a bad one would block the genuine one.
pub fn validate_wal_content(name: &WalFileName, data: &[u8]) -> Result<Option<LongPageHeader>> {
    let refused = |why: String| {
        Error::InvalidInput(format!(
            "{name} refused, nothing stored: {why}. Only {} files as PostgreSQL writes them are archived \
             (a stored file can never be replaced, so a damaged or foreign one would block the genuine one): \
             check what wrote this file",
            name.kind_name()
        ))
    };
    match name {
        WalFileName::History { tli } => {
            history::parse_timeline_history(tli.0, data).map_err(refused)?;
            Ok(None)
        }
        WalFileName::BackupHistory { .. } => {
            history::check_backup_history(name, data).map_err(refused)?;
            Ok(None)
        }
        _ => validate_wal_head(name, data, data.len()),
    }
}

/// A new timeline's history file repeats its parent's and adds one line (PostgreSQL copies
/// the parent's file): when the parent timeline's history is archived, the two must agree,
/// except that a file with the parent's line only is accepted (PostgreSQL writes that when the
/// promoting server could not read its parent's history).
/// One GET, for history files only.
async fn check_history_against_parent(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    entries: &[HistoryEntry],
) -> Result<()> {
    let Some((last, inherited)) = entries.split_last() else {
        return Ok(());
    };
    if last.parent <= 1 {
        return Ok(()); // timeline 1 has no history: nothing to compare with
    }
    let parent = WalFileName::History {
        tli: crate::types::TimelineId(last.parent),
    };
    let text = match crate::archive::get::get_wal_file(repo, cluster, &parent).await {
        Ok(t) => t,
        Err(Error::NotFound(_)) => return Ok(()),
        Err(Error::Storage(e)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!("cannot compare {name} with {parent}: {e}");
            return Ok(());
        }
    };
    let theirs = crate::recovery::parse_history(&String::from_utf8_lossy(&text));
    if inherited.is_empty() && !theirs.is_empty() {
        // What PostgreSQL writes when the promoting server could not read its parent's
        // history: incomplete, but genuine; refusing it would stop archiving.
        tracing::warn!(
            "{name} lists only its parent timeline {}, not the ancestors {parent} records:              the server that promoted did not have {parent}",
            last.parent
        );
        return Ok(());
    }
    if theirs != inherited {
        let show = |v: &[HistoryEntry]| {
            v.iter()
                .map(|e| format!("{} at {}", e.parent, e.switch_lsn))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::InvalidInput(format!(
            "{name} refused, nothing stored: it says timeline {} forked from timeline {} at {}, but its earlier \
             entries [{}] do not repeat the archived history of timeline {} ({parent}: [{}]), as PostgreSQL's always do. \
             This file belongs to another server or another history: check archive_command and the cluster name",
            name.timeline().0,
            last.parent,
            last.switch_lsn,
            show(inherited),
            last.parent,
            show(&theirs)
        )));
    }
    Ok(())
}

/// Validates a WAL file from its first bytes (at least the long page header) and its length.
pub fn validate_wal_head(
    name: &WalFileName,
    head: &[u8],
    total_len: usize,
) -> Result<Option<LongPageHeader>> {
    if !name.has_wal_pages() {
        if total_len == 0 && matches!(name, WalFileName::History { .. }) {
            return Err(Error::InvalidInput(format!(
                "{name} is empty; a timeline history file never is"
            )));
        }
        return Ok(None);
    }
    let header = LongPageHeader::parse(head)
        .map_err(|e| Error::InvalidInput(format!("{name} is not a valid WAL segment: {e}")))?;
    header
        .check_against(name, total_len)
        .map_err(|why| Error::InvalidInput(format!("{name} refused: {why}")))?;
    Ok(Some(header))
}

/// Reads the WAL record (pointer) of `name`, if there is one; a record that does not
/// authenticate for this name is [`Error::Corrupt`] naming it.
pub(crate) async fn read_wal_record(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
) -> Result<Option<WalPointer>> {
    sealed::read(
        repo,
        DocKind::WalRecord,
        &layout::wal_pointer(cluster, name),
    )
    .await
}

/// Seals a WAL record for `name`.
pub(crate) fn seal_wal_record(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    pointer: &WalPointer,
) -> Bytes {
    sealed::seal(
        repo,
        DocKind::WalRecord,
        &layout::wal_pointer(cluster, name),
        pointer,
    )
}

fn conflict(cluster: &str, name: &WalFileName, existing: &str, pushed: &str) -> Error {
    Error::Conflict(format!(
        "{name} is already archived for cluster {cluster:?} with different content \
         (repository: {existing}, pushed file: {pushed}); not overwriting. \
         This happens when two servers archive to the same cluster or after restoring without a new timeline: \
         check archive_command and the cluster name"
    ))
}

/// Where the bytes of a WAL file come from.
#[derive(Debug)]
pub enum WalSource {
    /// A file on disk (`%p`): read in chunks, never held whole in memory.
    File(std::path::PathBuf),
    /// Bytes already in memory (tests, tools).
    Bytes(Vec<u8>),
}

/// A WAL file checked and sealed.
struct Sealed {
    /// The long page header, for segments.
    header: Option<LongPageHeader>,
    /// The entries, for timeline history files.
    history: Option<Vec<HistoryEntry>>,
    id: ContentId,
    sealed: Vec<u8>,
    size: u64,
}

/// Checks, hashes and seals a WAL file.
fn seal_wal(
    codec: &Codec,
    name: &WalFileName,
    context: &[u8],
    level: i32,
    source: WalSource,
) -> Result<Sealed> {
    let seal = |data: &[u8]| {
        let header = validate_wal_content(name, data)?;
        let history = match name {
            WalFileName::History { tli } => history::parse_timeline_history(tli.0, data).ok(),
            _ => None,
        };
        let (id, sealed) = codec.seal_parallel(ObjectKind::Wal, context, data, level);
        Ok(Sealed {
            header,
            history,
            id,
            sealed,
            size: data.len() as u64,
        })
    };
    match source {
        WalSource::Bytes(data) => seal(&data),
        WalSource::File(path) => seal(MappedFile::open(&path)?.bytes()),
    }
}

/// Archives one WAL file, and every 16th segment raises the catalog head's high-water mark
/// to it: the archiver pushes in order, so everything below it is archived.
pub async fn push_wal_file(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    source: WalSource,
) -> Result<PushOutcome> {
    push(repo, cluster, name, source, HeadNote::InOrder).await
}

/// Archives one WAL file pushed out of order (the asynchronous pusher's parallel pushes):
/// the high-water mark is left to the caller, who knows which lower segments are archived
/// ([`crate::archive::spool`]). Raised here, a segment that finished while a lower one was
/// still uploading, or failed, made `archive-get` of that lower one abort recovery (exit
/// 200: "deleted outside pgcairn") instead of answering "not yet archived".
pub async fn push_wal_file_unordered(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    source: WalSource,
) -> Result<PushOutcome> {
    push(repo, cluster, name, source, HeadNote::Caller).await
}

/// Who records a pushed segment in the catalog head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadNote {
    InOrder,
    Caller,
}

#[instrument(skip_all, fields(cluster = cluster, wal = %name))]
async fn push(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    source: WalSource,
    head_note: HeadNote,
) -> Result<PushOutcome> {
    let codec = repo.codec().clone();
    let level = repo.config().wal_compress_level;
    let context = wal_context(cluster, name);
    let wal_name = name.clone();
    // Read, hash and seal on the CPU pool, not on an async worker thread; meanwhile read the
    // cluster record and any existing pointer, so their round trips hide behind the CPU work.
    let has_pages = name.has_wal_pages();
    let mtime = match &source {
        WalSource::File(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        WalSource::Bytes(_) => None,
    };
    // An empty record or cluster record (a crash before an earlier create was synced, on
    // `file://`) is read as absent, so that this push's create writes it.
    let record_key = layout::wal_pointer(cluster, name);
    let (sealed, record, existing) = tokio::join!(
        crate::cpu::run(move || seal_wal(&codec, &wal_name, &context, level, source)),
        async {
            match has_pages {
                true => cluster::read_for_create(repo, cluster).await,
                false => Ok(None), // history files carry no header to check
            }
        },
        sealed::read_for_create(repo, DocKind::WalRecord, &record_key),
    );
    let Sealed {
        header,
        history,
        id,
        sealed,
        size,
    } = sealed?;
    let seg_size = header.as_ref().map(|h| u64::from(h.segment_size));
    if let Some(header) = header {
        check_or_bind_cluster(repo, cluster, &header, record?).await?;
    }
    if let Some(entries) = &history {
        check_history_against_parent(repo, cluster, name, entries).await?;
    }
    let outcome = store_wal(repo, cluster, name, existing?, id, sealed, size).await?;
    if let Some(seg_size) = seg_size {
        if head_note == HeadNote::InOrder {
            head::note_pushed(repo, cluster, name, seg_size).await;
        }
        crate::store::status::note_pushed(repo, cluster, name, seg_size, mtime).await;
    }
    Ok(outcome)
}

/// Makes the record of `name` durable before a push that found it says "archived":
/// PostgreSQL then recycles the segment. The record a push finds may be one a killed push
/// linked into place and never synced (on `file://`, a create is written, linked, then
/// fsynced; the record's bytes differ from one attempt to the next, by their time, so the
/// retry's own create finds the name taken and syncs nothing), and a power loss would then
/// take the record, and the segment with it, after PostgreSQL was told it was archived.
/// [`crate::storage::Storage::sync_existing`] fsyncs it there and costs no request on an
/// object store, where an acknowledged PUT is durable (a create-only put of its bytes, read
/// first, did the same at three requests per duplicate push). The record made durable must
/// still name `id`: one replaced meanwhile (expire, then another push) is a conflict. A
/// record gone meanwhile (expire) needs nothing.
async fn make_record_durable(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    id: &str,
) -> Result<()> {
    let key = layout::wal_pointer(cluster, name);
    let Some(bytes) = repo.storage().sync_existing(&key).await? else {
        return Ok(());
    };
    let found: WalPointer = sealed::open(repo, DocKind::WalRecord, &key, &bytes)?;
    if found.content_id != id {
        return Err(Error::Conflict(format!(
            "the record of {name} changed while this push made it durable ({key} now names \
             {}); PostgreSQL will retry",
            found.content_id
        )));
    }
    Ok(())
}

/// Steps 2 to 4 of the module docs: compare with an existing record, upload data, commit.
async fn store_wal(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    existing: Option<WalPointer>,
    id: ContentId,
    sealed: Vec<u8>,
    size: u64,
) -> Result<PushOutcome> {
    let hex_id = id.to_hex();
    let stored_size = sealed.len() as u64;
    let data = DataObject {
        key: layout::wal_data(cluster, name, &id),
        id,
        size,
        sealed: Bytes::from(sealed),
    };
    if let Some(existing) = existing {
        if existing.content_id != hex_id {
            return Err(conflict(cluster, name, &existing.content_id, &hex_id));
        }
        // The same content again: one HEAD, the object's size against the record's (standbys
        // archiving with `archive_mode = always` push every segment again). The record was
        // written after its object was durable, so only a lost object or one damaged since
        // differs; a size that does not match makes this push read it and restore it (the
        // record stays as it is).
        if matches!(repo.storage().head(&data.key).await, Ok(len) if len == existing.stored_size) {
            debug!("already archived with the same content");
            make_record_durable(repo, cluster, name, &hex_id).await?;
            return Ok(PushOutcome::AlreadyArchived);
        }
        let outcome = match ensure_data(repo, cluster, name, &data, false).await? {
            DataWrite::Kept => {
                debug!("already archived with the same content");
                PushOutcome::AlreadyArchived
            }
            DataWrite::Written => {
                tracing::warn!(
                    "{name} was recorded without a sound data object {}: restored it",
                    data.key
                );
                PushOutcome::Uploaded { stored_size }
            }
        };
        make_record_durable(repo, cluster, name, &hex_id).await?;
        return Ok(outcome);
    }
    // Data first, whole and durable, whatever an earlier attempt left under its name.
    ensure_data(repo, cluster, name, &data, true).await?;
    let pointer = WalPointer {
        content_id: hex_id.clone(),
        size,
        stored_size,
        archived_at: crate::store::Timestamp::now(),
    };
    let body = seal_wal_record(repo, cluster, name, &pointer);
    match repo
        .storage()
        .put_create(&layout::wal_pointer(cluster, name), body)
        .await?
    {
        CreateOutcome::Created => Ok(PushOutcome::Uploaded { stored_size }),
        CreateOutcome::AlreadyExists => {
            let existing = read_wal_record(repo, cluster, name).await?.ok_or_else(|| {
                Error::NotFound(format!("pointer of {name} vanished during push"))
            })?;
            if existing.content_id == hex_id {
                make_record_durable(repo, cluster, name, &hex_id).await?;
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(conflict(cluster, name, &existing.content_id, &hex_id))
            }
        }
    }
}

/// The data object a push stores: its key, the file's content id and size, and this push's
/// sealing of it.
struct DataObject {
    key: ObjectKey,
    id: ContentId,
    size: u64,
    sealed: Bytes,
}

/// What [`ensure_data`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataWrite {
    /// This push's sealing is stored now (created, or replacing a damaged object).
    Written,
    /// A sound object was there already; it is durable now too.
    Kept,
}

/// How many times [`ensure_data`] starts over when the object changes under it.
const DATA_ATTEMPTS: usize = 3;

/// Makes sure the data object holds this file, whole and durable, before a record may name
/// it. `create_first`: try a create-only put before reading (the object is expected absent).
///
/// An object already under the name is not taken on trust: sealing uses a random nonce, so
/// it never has this push's bytes, and the create-only put reports it as merely existing,
/// without making it durable. After a crash it can be empty or torn (on `file://`, object
/// stores link a file into place before its fsync), or sound but never synced. So it is read
/// back and opened: a sound one is written back unchanged, which a create-only put
/// recognises as its own bytes and returns only once they are durable (on `file://`, an
/// fsync); a damaged one is replaced by compare-and-swap against the version read, so two
/// pushers repairing at once cannot undo each other. Its name carries the content id, so a
/// replaced object can only ever have been a broken copy of this very file.
async fn ensure_data(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    data: &DataObject,
    mut create_first: bool,
) -> Result<DataWrite> {
    let storage = repo.storage();
    for _ in 0..DATA_ATTEMPTS {
        if create_first
            && storage.put_create(&data.key, data.sealed.clone()).await? == CreateOutcome::Created
        {
            return Ok(DataWrite::Written);
        }
        create_first = true;
        let (stored, version) = match storage.get_versioned(&data.key).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => continue, // gone meanwhile: create it
            Err(e) => return Err(e.into()),
        };
        let stored_len = stored.len();
        if let Err(why) = holds_file(repo, cluster, name, data, stored.clone()).await {
            tracing::warn!(
                "{name}: the data object {} ({stored_len} bytes) is damaged ({why}), \
                 probably by a crash while it was written: replacing it",
                data.key
            );
            match storage
                .put_swap(&data.key, data.sealed.clone(), Some(&version))
                .await
            {
                Ok(_) => return Ok(DataWrite::Written),
                Err(StorageError::Precondition { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if storage.put_create(&data.key, stored).await? == CreateOutcome::Created {
            return Ok(DataWrite::Kept);
        }
    }
    Err(StorageError::Transient {
        op: "put",
        key: data.key.to_string(),
        detail: format!("the object kept changing while {name} was being archived"),
    }
    .into())
}

/// Whether `stored` opens as a sealing of exactly this file: authenticated for its name, with
/// the plaintext's content id and size. `Err` says what is wrong. CPU work, on the CPU pool.
async fn holds_file(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    data: &DataObject,
    stored: Bytes,
) -> std::result::Result<(), String> {
    let codec = repo.codec().clone();
    let context = wal_context(cluster, name);
    let (id, size) = (data.id, data.size);
    crate::cpu::run(move || {
        let discard = |_: u64, _: &[u8]| Ok(());
        let (len, got) = codec
            .open_to(ObjectKind::Wal, &id, &context, &stored, &discard)
            .map_err(|e| e.to_string())?;
        if got != id {
            return Err("its content does not match its content id".to_string());
        }
        if len != size {
            return Err(format!("it holds {len} bytes, the file has {size}"));
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::archive::get::get_wal_file;
    use crate::crypto::KdfParams;
    use crate::pg::wal_header::tests::fake_segment;
    use crate::repo::InitOptions;
    use crate::storage::{MemoryStorage, Storage};
    use std::sync::Arc;

    pub(crate) async fn memory_repo() -> (Arc<MemoryStorage>, Repository) {
        let mem = Arc::new(MemoryStorage::new());
        let s: Arc<dyn Storage> = mem.clone();
        let opts = InitOptions {
            unlock: Some(crate::crypto::Unlock::Passphrase("pw".into())),
            kdf: KdfParams::insecure_for_tests(),
            wal_compress_level: 1,
        };
        Repository::init(s.clone(), opts).await.unwrap();
        let repo = Repository::open(s, Some(&crate::crypto::Unlock::Passphrase("pw".into())))
            .await
            .unwrap();
        (mem, repo)
    }

    fn seg(n: u64, sysid: u64) -> (WalFileName, Vec<u8>) {
        let name: WalFileName = format!("00000001{:08X}{:08X}", n >> 8, n & 0xff)
            .parse()
            .unwrap();
        (
            name,
            fake_segment(sysid, 1, n * (16 << 20), 16 << 20, 16 << 20),
        )
    }

    #[tokio::test]
    async fn push_then_get_round_trips_and_duplicates_are_free() {
        let (_mem, repo) = memory_repo().await;
        let (name, data) = seg(3, 42);
        let out = push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        assert!(
            matches!(out, PushOutcome::Uploaded { stored_size } if stored_size < data.len() as u64 / 2)
        );
        assert_eq!(
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
                .await
                .unwrap(),
            PushOutcome::AlreadyArchived
        );
        assert_eq!(get_wal_file(&repo, "main", &name).await.unwrap(), data);
    }

    #[tokio::test]
    async fn wal_sealed_in_one_piece_by_earlier_versions_is_still_served() {
        let (_mem, repo) = memory_repo().await;
        let (name, data) = seg(4, 42);
        let codec = repo.codec();
        let id = codec.content_id(&data);
        let sealed = codec.seal(ObjectKind::Wal, &id, &wal_context("main", &name), &data, 1);
        assert_eq!(sealed[4], 1, "an envelope of version 1");
        let pointer = WalPointer {
            content_id: id.to_hex(),
            size: data.len() as u64,
            stored_size: sealed.len() as u64,
            archived_at: crate::store::Timestamp::now(),
        };
        let s = repo.storage();
        s.put_create(&layout::wal_data("main", &name, &id), Bytes::from(sealed))
            .await
            .unwrap();
        s.put_create(
            &layout::wal_pointer("main", &name),
            seal_wal_record(&repo, "main", &name, &pointer),
        )
        .await
        .unwrap();
        assert!(get_wal_file(&repo, "main", &name).await.unwrap() == data);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        crate::archive::get::get_wal_file_to(
            &repo,
            "main",
            &name,
            &dest,
            crate::private_fs::Durability::Durable,
        )
        .await
        .unwrap();
        assert!(std::fs::read(&dest).unwrap() == data);
        // Pushing the same file now (chunked envelope) is recognised as the same content.
        assert_eq!(
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
                .await
                .unwrap(),
            PushOutcome::AlreadyArchived
        );
    }

    #[tokio::test]
    async fn pushing_again_restores_a_lost_data_object() {
        let (mem, repo) = memory_repo().await;
        let (name, data) = seg(3, 42);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        let key = layout::wal_data("main", &name, &repo.codec().content_id(&data));
        use crate::storage::Storage;
        mem.delete(&key).await.unwrap();
        assert!(get_wal_file(&repo, "main", &name).await.is_err());
        let out = push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        assert!(matches!(out, PushOutcome::Uploaded { .. }), "{out:?}");
        assert_eq!(get_wal_file(&repo, "main", &name).await.unwrap(), data);
    }

    /// The test repository opened as archive-push opens it: append-only.
    async fn append_only(mem: &Arc<MemoryStorage>) -> Repository {
        crate::test_support::open_with(Arc::new(crate::store::append_only::AppendOnly::new(
            mem.clone(),
            "archive-push",
        )))
        .await
    }

    /// Another sealing of `data` for `name` (another nonce), as an earlier attempt left it.
    fn earlier_sealing(repo: &Repository, name: &WalFileName, data: &[u8]) -> (ObjectKey, Bytes) {
        let (id, sealed) =
            repo.codec()
                .seal_parallel(ObjectKind::Wal, &wal_context("main", name), data, 1);
        (layout::wal_data("main", name, &id), Bytes::from(sealed))
    }

    #[tokio::test]
    async fn an_empty_or_torn_data_object_left_by_a_crash_is_replaced_before_the_record() {
        let (mem, _) = memory_repo().await;
        let repo = append_only(&mem).await;
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 3] = [
            ("empty", |v| v.clear()),
            ("torn", |v| v.truncate(v.len() / 2)),
            ("zeroed tail", |v| {
                let n = v.len();
                v[n / 2..].fill(0)
            }),
        ];
        for (n, (what, damage)) in (3u64..).zip(damages) {
            let (name, data) = seg(n, 42);
            let (key, sealed) = earlier_sealing(&repo, &name, &data);
            mem.put_create(&key, sealed).await.unwrap();
            mem.tamper(key.as_str(), damage);
            let out = push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
                .await
                .unwrap();
            assert!(
                matches!(out, PushOutcome::Uploaded { .. }),
                "{what}: {out:?}"
            );
            assert!(
                get_wal_file(&repo, "main", &name).await.unwrap() == data,
                "{what}: archive-get serves the segment pushed"
            );
        }
    }

    /// Every create-only put, key and bytes, in order.
    type Creates = Arc<std::sync::Mutex<Vec<(String, Bytes)>>>;

    /// A repository over `mem` that records its creates.
    async fn recording_creates(mem: &Arc<MemoryStorage>) -> (Repository, Creates) {
        let creates: Creates = Default::default();
        let noted = creates.clone();
        let notes = crate::test_support::Hooked::new(mem.clone(), move |call| {
            if let crate::test_support::Call::Create(k, b) = call {
                noted.lock().unwrap().push((k.to_string(), b.clone()));
            }
            Ok(())
        });
        (
            crate::test_support::open_with(Arc::new(notes)).await,
            creates,
        )
    }

    #[tokio::test]
    async fn a_sound_data_object_without_a_record_is_kept_and_made_durable() {
        let (mem, _) = memory_repo().await;
        let (repo, creates) = recording_creates(&mem).await;
        let (name, data) = seg(3, 42);
        let (key, sealed) = earlier_sealing(&repo, &name, &data);
        mem.put_create(&key, sealed.clone()).await.unwrap();
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        assert!(mem.get(&key).await.unwrap() == sealed, "kept as it was");
        // A create-only put of its own bytes is how storage is asked to make an object
        // durable (file://: an fsync); it must come before the record.
        let creates = creates.lock().unwrap().clone();
        let synced = creates
            .iter()
            .position(|(k, b)| *k == key.as_str() && *b == sealed)
            .expect("the existing object was made durable");
        let record = creates
            .iter()
            .position(|(k, _)| *k == layout::wal_pointer("main", &name).as_str())
            .expect("a record");
        assert!(synced < record, "{creates:?}");
        assert!(get_wal_file(&repo, "main", &name).await.unwrap() == data);
    }

    #[tokio::test]
    async fn a_push_that_finds_its_record_makes_the_record_durable() {
        let (mem, _) = memory_repo().await;
        let calls: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let noted = calls.clone();
        let hooked = crate::test_support::Hooked::new(mem.clone(), move |call| {
            match call {
                crate::test_support::Call::Sync(k) => {
                    noted.lock().unwrap().push(format!("sync {k}"))
                }
                crate::test_support::Call::Create(k, _) => {
                    noted.lock().unwrap().push(format!("create {k}"))
                }
                crate::test_support::Call::Read(_) => {}
            }
            Ok(())
        });
        let repo = crate::test_support::open_with(Arc::new(hooked)).await;
        let (name, data) = seg(3, 42);
        // The first push, killed after its record was linked and before it was synced, left
        // exactly this: the record and its object in place.
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        let pointer = layout::wal_pointer("main", &name);
        let record = mem.get(&pointer).await.unwrap();
        calls.lock().unwrap().clear();
        let again = push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        assert_eq!(again, PushOutcome::AlreadyArchived);
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [format!("sync {pointer}")],
            "the record found is made durable before PostgreSQL is told the segment is \
             archived, and nothing is written"
        );
        assert!(mem.get(&pointer).await.unwrap() == record, "kept as it was");
    }

    #[tokio::test]
    async fn a_duplicate_push_restores_a_torn_data_object_behind_a_record() {
        let (mem, _) = memory_repo().await;
        let repo = append_only(&mem).await;
        let (name, data) = seg(3, 42);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        let key = layout::wal_data("main", &name, &repo.codec().content_id(&data));
        mem.tamper(key.as_str(), |v| v.truncate(v.len() / 3));
        assert!(get_wal_file(&repo, "main", &name).await.is_err());
        let out = push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        assert!(matches!(out, PushOutcome::Uploaded { .. }), "{out:?}");
        assert!(get_wal_file(&repo, "main", &name).await.unwrap() == data);
    }

    #[tokio::test]
    async fn garbage_history_file_is_refused_and_does_not_block_the_genuine_one() {
        let (mem, repo) = memory_repo().await;
        let name: WalFileName = "00000002.history".parse().unwrap();
        for garbage in [
            &b"garbage\n"[..],
            b"{\"timeline\": 2}",
            b"1 0/3000000 spaces instead of tabs\n",
            b"2\t0/3000000\tparent not below 2\n",
        ] {
            let err = push_wal_file(&repo, "main", &name, WalSource::Bytes(garbage.to_vec()))
                .await
                .unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::InvalidInput(_)), "{msg}");
            assert!(
                msg.contains("00000002.history") && msg.contains("line 1"),
                "names the file and the line: {msg}"
            );
        }
        use crate::storage::Storage;
        assert!(
            mem.list("")
                .await
                .unwrap()
                .iter()
                .all(|o| !o.key.as_str().contains(".history")),
            "nothing stored"
        );
        let genuine = b"1\t0/3000158\tno recovery target specified\n".to_vec();
        push_wal_file(&repo, "main", &name, WalSource::Bytes(genuine.clone()))
            .await
            .unwrap();
        assert_eq!(get_wal_file(&repo, "main", &name).await.unwrap(), genuine);

        // A history of timeline 3 that does not repeat timeline 2's is from elsewhere.
        let three: WalFileName = "00000003.history".parse().unwrap();
        let foreign = b"1\t0/4000000\tx\n2\t0/6000000\ty\n".to_vec();
        let err = push_wal_file(&repo, "main", &three, WalSource::Bytes(foreign))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("00000003.history") && err.contains("00000002.history"),
            "{err}"
        );
        // Only the parent's line: what PostgreSQL writes when it could not read the parent's
        // history; incomplete but genuine.
        let four: WalFileName = "00000004.history".parse().unwrap();
        push_wal_file(
            &repo,
            "main",
            &four,
            WalSource::Bytes(b"2\t0/7000000\tz\n".to_vec()),
        )
        .await
        .unwrap();
        let right = b"1\t0/3000158\tno recovery target specified\n2\t0/6000000\ty\n".to_vec();
        push_wal_file(&repo, "main", &three, WalSource::Bytes(right))
            .await
            .unwrap();
        // Timeline 1 has no history file.
        let one: WalFileName = "00000001.history".parse().unwrap();
        assert!(
            push_wal_file(&repo, "main", &one, WalSource::Bytes(genuine))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn garbage_backup_history_file_is_refused() {
        let (_mem, repo) = memory_repo().await;
        let name: WalFileName = "000000010000000000000002.00000028.backup".parse().unwrap();
        let err = push_wal_file(&repo, "main", &name, WalSource::Bytes(b"junk".to_vec()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&name.to_string()) && err.contains("START WAL LOCATION"),
            "{err}"
        );
        let good = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nLABEL: x\n";
        push_wal_file(&repo, "main", &name, WalSource::Bytes(good.to_vec()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn different_content_under_the_same_name_is_refused_naming_both_ids() {
        let (_mem, repo) = memory_repo().await;
        let (name, data) = seg(3, 42);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        let mut other = data.clone();
        other[100_000] ^= 1;
        let err = push_wal_file(&repo, "main", &name, WalSource::Bytes(other.clone()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Conflict(_)));
        assert!(
            msg.contains(&repo.codec().content_id(&data).to_hex()),
            "{msg}"
        );
        assert!(
            msg.contains(&repo.codec().content_id(&other).to_hex()),
            "{msg}"
        );
        assert_eq!(
            get_wal_file(&repo, "main", &name).await.unwrap(),
            data,
            "the original is untouched"
        );
    }

    #[tokio::test]
    async fn another_system_identifier_is_refused() {
        let (_mem, repo) = memory_repo().await;
        let (a, da) = seg(1, 42);
        push_wal_file(&repo, "main", &a, WalSource::Bytes(da))
            .await
            .unwrap();
        let (b, db) = seg(2, 43);
        let err = push_wal_file(&repo, "main", &b, WalSource::Bytes(db.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("system 43") || err.contains("43 refused"),
            "{err}"
        );
        assert!(err.contains("belongs to system 42"), "{err}");
        // The same system under another cluster name is fine.
        push_wal_file(&repo, "other", &b, WalSource::Bytes(db))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cluster_name_keeps_one_major_version() {
        let (_mem, repo) = memory_repo().await;
        let (a, da) = seg(1, 42);
        push_wal_file(&repo, "main", &a, WalSource::Bytes(da))
            .await
            .unwrap();
        // pg_upgrade to 17: a new system identifier and the new major's page magic.
        let b: WalFileName = "000000010000000000000002".parse().unwrap();
        let db = crate::pg::wal_header::tests::fake_segment_of(
            17,
            77,
            1,
            2 * (16 << 20),
            16 << 20,
            16 << 20,
        );
        let err = push_wal_file(&repo, "main", &b, WalSource::Bytes(db.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("WAL of PostgreSQL 17 refused"), "{err}");
        assert!(err.contains("holds PostgreSQL 15"), "{err}");
        assert!(err.contains("\"main-pg17\""), "{err}");
        // Under the suggested name it is archived, and the old name is untouched.
        push_wal_file(&repo, "main-pg17", &b, WalSource::Bytes(db))
            .await
            .unwrap();
        assert_eq!(
            cluster::read(&repo, "main")
                .await
                .unwrap()
                .unwrap()
                .pg_major,
            15
        );
    }

    #[tokio::test]
    async fn mislabelled_and_truncated_segments_are_refused() {
        let (_mem, repo) = memory_repo().await;
        let (_, data) = seg(5, 42);
        let wrong: WalFileName = "000000010000000000000006".parse().unwrap();
        let err = push_wal_file(&repo, "main", &wrong, WalSource::Bytes(data.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("mislabelled"), "{err}");
        let right: WalFileName = "000000010000000000000005".parse().unwrap();
        let err = push_wal_file(
            &repo,
            "main",
            &right,
            WalSource::Bytes(data[..1 << 20].to_vec()),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
