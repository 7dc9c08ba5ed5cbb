//! Backup manifests: the commit point of a backup.
//!
//! A manifest is one sealed object (codec kind `Manifest`, metadata key, context
//! `"<cluster>/<backup id>"`) at `clusters/<cluster>/backups/<id>/manifest`, written
//! create-only after every pack and index segment it references. Its plaintext is JSON:
//! the backup's identity and WAL positions, `backup_label` and `tablespace_map` as
//! `pg_backup_stop` returned them, the tablespaces, and every directory and file with its
//! metadata and the ids of its blocks in order. A manifest references blocks, never another
//! backup: any backup restores, or is deleted, on its own.
//!
//! Memory: a manifest in memory costs about 150 bytes per file plus 33 bytes per block (the
//! JSON carries hex ids; memory holds 32-byte ids); at 64 KiB blocks about 0.5 MB per GiB.
//! Its JSON is never held whole: it is streamed into the compressor when written and parsed
//! while it decompresses when read (see `codec::streamed`), and a backup writes it from its
//! spilled file list ([`file_spool`]) without holding the file list at all.

use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};

pub mod entries;
pub mod file_spool;

pub use self::entries::{BackupStats, BlockRef, FileEntry};
use self::file_spool::{FileSpool, SpooledFiles};
use crate::codec::ObjectKind;
use crate::codec::PlainReader;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::pg::datadir::Tablespace;
use crate::repo::{layout, Repository};
use crate::storage::{CreateOutcome, StorageError};
use crate::store::block_lists::ListReader;
use crate::store::Timestamp;
use crate::types::Lsn;

/// Manifest format version: 2 records large files as block lists
/// ([`crate::store::block_lists`]); 3 leaves files' `checksum` empty, a restore checking every
/// block against its id instead; 4 adds part fingerprints and patches to the block lists
/// ([`crate::store::patches`]). A manifest of a later format is refused, not misread.
pub const MANIFEST_FORMAT: u32 = 4;

/// Refuses a manifest this version cannot read whole (a later format could record blocks
/// where this one does not look, and a restore would write empty files).
fn check_format(m: &Manifest, key: &str) -> Result<()> {
    if m.format > MANIFEST_FORMAT {
        return Err(Error::InvalidInput(format!(
            "{key} is manifest format {}, written by a newer pgcairn; this one reads formats up \
             to {MANIFEST_FORMAT}: upgrade pgcairn to use this backup",
            m.format
        )));
    }
    Ok(())
}

/// Which files a backup re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    /// Every file.
    Full,
    /// Files changed since the last full backup.
    Diff,
    /// Files changed since the last backup.
    Incr,
}

impl BackupType {
    /// The letter ending backup ids (pgBackRest's convention).
    pub fn letter(self) -> char {
        match self {
            BackupType::Full => 'F',
            BackupType::Diff => 'D',
            BackupType::Incr => 'I',
        }
    }
}

/// A directory to recreate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Relative path.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A database of the backed-up cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    /// `pg_database.oid`: its directory under `base/` and in each tablespace.
    pub oid: u32,
    /// `pg_database.datname`.
    pub name: String,
}

/// The manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Backup id, like `20261124-070000F`.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    /// The backup whose file list decided what to re-read (informational: nothing depends on it).
    pub reference: Option<String>,
    /// The generation of `gc/state` the backup read before it loaded the block index (as its
    /// lease said while it ran; none in manifests of older versions): gc judges a backup that
    /// committed while it marked by this and `reference`, as it judges a running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_seen: Option<u64>,
    /// Cluster name.
    pub cluster: String,
    /// System identifier (decimal).
    pub system_identifier: String,
    /// `server_version_num`.
    pub pg_version_num: u32,
    /// Timeline at start.
    pub timeline: u32,
    /// `pg_backup_start` LSN.
    pub start_lsn: Lsn,
    /// `pg_backup_stop` LSN: the consistency point.
    pub stop_lsn: Lsn,
    /// WAL file holding the start LSN.
    pub start_wal: String,
    /// WAL file holding the stop LSN.
    pub stop_wal: String,
    /// RFC 3339.
    pub start_time: Timestamp,
    /// RFC 3339.
    pub stop_time: Timestamp,
    /// Block size used.
    pub block_size: u32,
    /// Oldest transaction still running just after `pg_backup_stop`: an xid target below it
    /// committed before this backup was consistent, so replay from it cannot reach it.
    #[serde(default)]
    pub xmin_after_stop: Option<u64>,
    /// The first transaction id not yet assigned just after `pg_backup_stop` (the snapshot's
    /// xmax): a transaction at or above it committed after this backup was consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xmax_after_stop: Option<u64>,
    /// The transactions still running just after `pg_backup_stop` (prepared ones included):
    /// below xmax, the only ones whose commit can come after the consistency point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_xids_after_stop: Vec<u64>,
    /// Whether page checksums were verified.
    pub checksums_verified: bool,
    /// Taken on a standby (`pg_is_in_recovery()`): its consistency point is the standby's
    /// minimum recovery point, recorded in the `global/pg_control` this backup copied last.
    #[serde(default)]
    pub from_standby: bool,
    /// WAL segments carried in the backup itself, as files under `pg_wal/` (a standby
    /// backup whose WAL up to the stop position was not archived in time, typically while the
    /// primary is down). Recovery reads them from `pg_wal` when the archive lacks them; they
    /// never enter the WAL archive, where the completed segment belongs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wal_in_backup: Vec<String>,
    /// `backup_label` contents.
    pub backup_label: String,
    /// `tablespace_map` contents, if any.
    pub tablespace_map: Option<String>,
    /// Tablespaces.
    pub tablespaces: Vec<Tablespace>,
    /// This cluster's directory in each tablespace location, `PG_<major>_<catversion>`: the
    /// only part of a location the backup took and a restore touches
    /// ([`crate::pg::tablespace_dir`]). Absent in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_dir: Option<String>,
    /// The cluster's databases (`pg_database` just after `pg_backup_stop`), so a restore can
    /// leave some out by name ([`crate::db_select`]). Empty in backups taken before it was
    /// recorded, or where `pg_database` could not be read: databases are then named by OID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<Database>,
    /// Where `pg_wal` pointed, when it was a symbolic link (WAL on its own disk): a restore
    /// puts it back there with `--wal-dir` ([`crate::wal_dir`]). Absent in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_link: Option<std::path::PathBuf>,
    /// Configuration files from outside the data directory (Debian's `/etc/postgresql/...`),
    /// whole ([`crate::config_files`]). Empty in older backups and where all are inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_files: Vec<crate::config_files::ConfigFile>,
    /// Directories.
    pub directories: Vec<DirEntry>,
    /// Files.
    pub files: Vec<FileEntry>,
    /// Counts.
    pub stats: BackupStats,
}

impl Manifest {
    /// Whether transaction `xid` can commit after this backup's consistency point, so that a
    /// recovery from this backup can stop at that commit: it was running just after
    /// `pg_backup_stop`, or had not started ([`crate::pg::txid_snapshot`]). Backups before
    /// 2026-12-07 recorded the snapshot's xmin only, which also counts the transactions
    /// between xmin and xmax that had ended; without a snapshot every backup qualifies.
    ///
    /// `xid` may be given without its epoch (PostgreSQL takes `recovery_target_xid` as 32
    /// bits; logs and `pg_stat_activity` show 32-bit ids): it is then read in the epoch that
    /// puts it nearest the snapshot ([`with_epoch_near`]).
    pub fn may_commit_after_stop(&self, xid: u64) -> bool {
        match (self.xmax_after_stop, self.xmin_after_stop) {
            (Some(xmax), _) => {
                let xid = with_epoch_near(xid, xmax);
                xid >= xmax || self.running_xids_after_stop.contains(&xid)
            }
            (None, Some(xmin)) => with_epoch_near(xid, xmin) >= xmin,
            (None, None) => true,
        }
    }

    /// This cluster's directory in tablespace locations, as the manifest tells it.
    pub fn own_tablespace_dir(&self) -> crate::pg::tablespace_dir::Own {
        crate::pg::tablespace_dir::Own::of(self.tablespace_dir.as_deref(), self.pg_version_num)
    }

    /// Everything but the file list.
    pub fn clone_head(&self) -> Manifest {
        Manifest {
            format: self.format,
            id: self.id.clone(),
            backup_type: self.backup_type,
            reference: self.reference.clone(),
            gc_seen: self.gc_seen,
            cluster: self.cluster.clone(),
            system_identifier: self.system_identifier.clone(),
            pg_version_num: self.pg_version_num,
            timeline: self.timeline,
            start_lsn: self.start_lsn,
            stop_lsn: self.stop_lsn,
            start_wal: self.start_wal.clone(),
            stop_wal: self.stop_wal.clone(),
            start_time: self.start_time,
            stop_time: self.stop_time,
            block_size: self.block_size,
            xmin_after_stop: self.xmin_after_stop,
            xmax_after_stop: self.xmax_after_stop,
            running_xids_after_stop: self.running_xids_after_stop.clone(),
            checksums_verified: self.checksums_verified,
            from_standby: self.from_standby,
            wal_in_backup: self.wal_in_backup.clone(),
            backup_label: self.backup_label.clone(),
            tablespace_map: self.tablespace_map.clone(),
            tablespaces: self.tablespaces.clone(),
            tablespace_dir: self.tablespace_dir.clone(),
            databases: self.databases.clone(),
            wal_link: self.wal_link.clone(),
            config_files: self.config_files.clone(),
            directories: self.directories.clone(),
            files: Vec::new(),
            stats: self.stats.clone(),
        }
    }

    /// The last segment replay needs to reach consistency: the one holding the byte before
    /// the stop LSN (PostgreSQL's `XLByteToPrevSeg`). A stop LSN exactly at a segment
    /// boundary (the record before it ended there, a WAL switch for instance; common on a
    /// standby, whose stop is its minimum recovery point) needs nothing of the next segment,
    /// which may not even be complete yet.
    pub fn consistency_segment(&self, seg_size: u64) -> u64 {
        last_segment_before(self.start_lsn, self.stop_lsn, seg_size)
    }

    /// The WAL segments carried in this backup ([`Manifest::wal_in_backup`]) as
    /// (timeline, absolute segment number); names that do not parse are left out.
    pub fn carried_segments(&self, seg_size: u64) -> Vec<(u32, u64)> {
        self.wal_in_backup
            .iter()
            .filter_map(|n| match n.parse::<crate::types::WalFileName>().ok()? {
                crate::types::WalFileName::Segment { tli, segno } => {
                    Some((tli.0, segno.absolute(seg_size)))
                }
                _ => None,
            })
            .collect()
    }

    /// Total bad pages.
    pub fn bad_page_count(&self) -> usize {
        self.files.iter().map(|f| f.bad_pages.len()).sum()
    }
}

/// The segment holding the byte before `stop` (or `start`'s segment when they coincide).
pub fn last_segment_before(start: Lsn, stop: Lsn, seg_size: u64) -> u64 {
    if stop.0.is_multiple_of(seg_size) && stop > start {
        (stop.0 - 1) / seg_size
    } else {
        stop.segment_no(seg_size)
    }
}

pub(crate) fn context(cluster: &str, id: &str) -> Vec<u8> {
    format!("{cluster}/{id}").into_bytes()
}

/// Seals and writes a manifest held whole in memory (create-only: a backup id is never
/// reused). The JSON is streamed into the compressor.
pub async fn save(repo: &Repository, m: &Manifest) -> Result<()> {
    let files: Vec<Result<FileEntry>> = m.files.iter().cloned().map(Ok).collect();
    save_streamed(repo, m, files.into_iter()).await
}

/// Seals and writes a manifest whose file list comes from `files` (in path order), not from
/// `head.files`: a backup's file list is read back from its spool one entry at a time, so
/// only the compressed manifest is ever in memory.
pub async fn save_streamed(
    repo: &Repository,
    head: &Manifest,
    files: impl Iterator<Item = Result<FileEntry>> + Send + 'static,
) -> Result<()> {
    let serde_json::Value::Object(mut fields) =
        serde_json::to_value(head.clone_head()).expect("manifest serialises")
    else {
        unreachable!("a manifest serialises to a JSON object")
    };
    fields.remove("files");
    let codec = repo.codec().clone();
    let context = context(&head.cluster, &head.id);
    let sealed = tokio::task::spawn_blocking(move || {
        let doc = StreamedManifest {
            fields,
            files: std::sync::Mutex::new(files),
        };
        codec.seal_streamed(
            ObjectKind::Manifest,
            &ContentId([0; 32]),
            &context,
            3,
            |w| serde_json::to_writer(w, &doc).map_err(std::io::Error::other),
        )
    })
    .await
    .map_err(|e| Error::InvalidInput(format!("writing manifest {}: {e}", head.id)))?
    .map_err(|e| Error::InvalidInput(format!("writing manifest {}: {e}", head.id)))?;
    match repo
        .storage()
        .put_create(
            &layout::backup_manifest(&head.cluster, &head.id),
            sealed.into(),
        )
        .await?
    {
        CreateOutcome::Created => Ok(()),
        CreateOutcome::AlreadyExists => Err(Error::Conflict(format!(
            "backup {} already exists",
            head.id
        ))),
    }
}

/// A manifest's JSON with its file list pulled from an iterator while it is written.
struct StreamedManifest<I> {
    fields: serde_json::Map<String, serde_json::Value>,
    files: std::sync::Mutex<I>,
}

impl<I: Iterator<Item = Result<FileEntry>>> Serialize for StreamedManifest<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap};
        struct Files<'a, I>(&'a std::sync::Mutex<I>);
        impl<I: Iterator<Item = Result<FileEntry>>> Serialize for Files<'_, I> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut files = self.0.lock().expect("file list lock");
                let mut seq = s.serialize_seq(None)?;
                for f in &mut *files {
                    let mut f = f.map_err(S::Error::custom)?;
                    if !f.block_lists.is_empty() {
                        // Recorded by its lists: the ids, fingerprints and patches are in them.
                        f.blocks = Vec::new();
                        f.patches = Vec::new();
                    }
                    f.part_fps = Vec::new();
                    seq.serialize_element(&f)?;
                }
                seq.end()
            }
        }
        let mut map = s.serialize_map(Some(self.fields.len() + 1))?;
        for (k, v) in &self.fields {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("files", &Files(&self.files))?;
        map.end()
    }
}

/// Reads and authenticates a manifest, its files' blocks filled from their block lists (the
/// block index loaded for those lists alone).
pub async fn load(repo: &Repository, cluster: &str, id: &str) -> Result<Manifest> {
    let mut m = load_unexpanded(repo, cluster, id).await?;
    let ids: Vec<ContentId> = m
        .files
        .iter()
        .flat_map(|f| f.block_lists.iter().copied())
        .collect();
    if !ids.is_empty() {
        let lists = ListReader::for_lists(repo, ids).await?;
        expand_files(&mut m, cluster, id, &lists).await?;
    }
    Ok(m)
}

/// [`load`] with a [`ListReader`] the caller shares between manifests (verify, over the block
/// index it holds anyway): a list several backups share is read once.
pub async fn load_with(
    repo: &Repository,
    cluster: &str,
    id: &str,
    lists: &ListReader,
) -> Result<Manifest> {
    let mut m = load_unexpanded(repo, cluster, id).await?;
    expand_files(&mut m, cluster, id, lists).await?;
    Ok(m)
}

/// Fills every file's blocks from its block lists.
async fn expand_files(m: &mut Manifest, cluster: &str, id: &str, lists: &ListReader) -> Result<()> {
    let key = layout::backup_manifest(cluster, id).to_string();
    for f in &mut m.files {
        lists.expand(f, &key).await?;
    }
    Ok(())
}

/// Reads a manifest with its files' metadata but, for files recorded as block lists, not their
/// blocks (`blocks` left empty): for `info`, which shows backups, not blocks, and should not
/// read the block store to do it.
pub async fn load_unexpanded(repo: &Repository, cluster: &str, id: &str) -> Result<Manifest> {
    let m: Manifest = parse(repo, cluster, id, |plain, key| {
        serde_json::from_reader(plain).map_err(|e| Error::corrupt(key, e.to_string()))
    })
    .await?;
    check_format(&m, layout::backup_manifest(cluster, id).as_str())?;
    Ok(m)
}

/// Reads a manifest without its file list (parsed past, never held): for planning a
/// restore, retention and pins, which need a backup's identity and positions only.
pub async fn load_head(repo: &Repository, cluster: &str, id: &str) -> Result<Manifest> {
    let m = parse(repo, cluster, id, |plain, key| parse_head(plain, key, None)).await?;
    check_format(&m, layout::backup_manifest(cluster, id).as_str())?;
    Ok(m)
}

/// Whether [`load_spilled`] keeps each block's part fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartFingerprints {
    /// Kept: the next backup compares them to tell which parts of a block changed.
    Keep,
    /// Dropped: a restore never reads them, and at four per block (16 hex digits each) they
    /// were half of every spooled entry it parses, several times over (the preflight, the
    /// plan, the file itself).
    Drop,
}

/// Reads a manifest, spilling its file entries to a [`FileSpool`] as they are parsed: the
/// returned manifest's `files` is empty, and memory holds each file's path, not its blocks.
/// Entries recorded as block lists are spilled as they are parsed, then spilled again
/// expanded (one at a time: memory holds one file's blocks), with the block index loaded for
/// those lists only (a restore's memory follows the backup, not the repository).
pub async fn load_spilled(
    repo: &Repository,
    cluster: &str,
    id: &str,
    fps: PartFingerprints,
) -> Result<(Manifest, SpooledFiles)> {
    let (head, files, listed) = parse(repo, cluster, id, |plain, key| {
        let mut spool = FileSpool::new()?;
        let mut listed = Vec::new();
        let head = parse_head_listed(plain, key, Some(&mut spool), &mut listed)?;
        Ok((head, spool.into_lookup()?, listed))
    })
    .await?;
    let key = layout::backup_manifest(cluster, id).to_string();
    check_format(&head, &key)?;
    if listed.is_empty() {
        return Ok((head, files));
    }
    let lists = ListReader::for_lists(repo, listed).await?;
    let mut expanded = FileSpool::new()?;
    let mut uncounted = BackupStats::default();
    for f in files.entries() {
        let mut f = f?;
        lists.expand(&mut f, &key).await?;
        if fps == PartFingerprints::Drop {
            f.part_fps = Vec::new();
        }
        expanded.push(&f, &mut uncounted)?;
    }
    Ok((head, expanded.into_lookup()?))
}

/// Fetches and authenticates a manifest, then runs `parse` on its plaintext (and its key, for
/// errors) off the async threads.
async fn parse<T: Send + 'static>(
    repo: &Repository,
    cluster: &str,
    id: &str,
    parse: impl FnOnce(PlainReader, String) -> Result<T> + Send + 'static,
) -> Result<T> {
    let plain = open_plain(repo, cluster, id).await?;
    let key = layout::backup_manifest(cluster, id).to_string();
    tokio::task::spawn_blocking(move || parse(plain, key))
        .await
        .map_err(|e| Error::InvalidInput(format!("reading manifest {id}: {e}")))?
}

/// Parses a manifest's top level; its file entries go to `spool`, or are skipped.
///
/// A failure to spill (a full or unwritable `TMPDIR`) is returned as the local error it is:
/// only what the manifest's bytes say can make it corrupt.
fn parse_head(plain: PlainReader, key: String, spool: Option<&mut FileSpool>) -> Result<Manifest> {
    parse_head_listed(plain, key, spool, &mut Vec::new())
}

/// [`parse_head`], collecting in `listed` the block lists of the spilled entries.
fn parse_head_listed(
    plain: PlainReader,
    key: String,
    spool: Option<&mut FileSpool>,
    listed: &mut Vec<ContentId>,
) -> Result<Manifest> {
    let mut de = serde_json::Deserializer::from_reader(plain);
    let mut local_error = None;
    let parsed = HeadSpillingFiles(spool.map(|spool| Spill {
        spool,
        local_error: &mut local_error,
        listed,
    }))
    .deserialize(&mut de)
    .and_then(|m| de.end().map(|()| m));
    parsed.map_err(|e| local_error.unwrap_or_else(|| Error::corrupt(key, e.to_string())))
}

/// Where parsed file entries go, and the local error that stopped them, if one did.
struct Spill<'a> {
    spool: &'a mut FileSpool,
    local_error: &'a mut Option<Error>,
    /// The block lists of the entries (to be expanded after the parse).
    listed: &'a mut Vec<ContentId>,
}

/// Fetches a manifest and authenticates it (decrypting in place); its JSON is then read while
/// it decompresses, never held whole.
async fn open_plain(repo: &Repository, cluster: &str, id: &str) -> Result<PlainReader> {
    let key = layout::backup_manifest(cluster, id);
    let sealed = match repo.storage().get(&key).await {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::NotFound(format!(
                "backup {id} not found in cluster {cluster:?}; see `pgcairn info`"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let codec = repo.codec().clone();
    let context = context(cluster, id);
    tokio::task::spawn_blocking(move || {
        codec
            .open_streamed(
                ObjectKind::Manifest,
                &ContentId([0; 32]),
                &context,
                Vec::from(sealed),
            )
            .map_err(|e| Error::corrupt(key.to_string(), e.to_string()))
    })
    .await
    .map_err(|e| Error::InvalidInput(format!("reading manifest {id}: {e}")))?
}

/// Parses a manifest's top level, keeping every field but `files`, whose entries go to the
/// spool one by one (or are skipped, without a spool).
struct HeadSpillingFiles<'a>(Option<Spill<'a>>);

impl<'de> serde::de::DeserializeSeed<'de> for HeadSpillingFiles<'_> {
    type Value = Manifest;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Manifest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for HeadSpillingFiles<'_> {
    type Value = Manifest;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a backup manifest")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<Manifest, A::Error> {
        use serde::de::Error as _;
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key != "files" {
                fields.insert(key, map.next_value()?);
            } else if let Some(spill) = self.0.as_mut() {
                map.next_value_seed(SpillFiles(spill))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        fields.insert("files".into(), serde_json::Value::Array(Vec::new()));
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(A::Error::custom)
    }
}

/// Parses a `files` array into the spool, one entry at a time.
struct SpillFiles<'a, 'b>(&'a mut Spill<'b>);

impl<'de> serde::de::DeserializeSeed<'de> for SpillFiles<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SpillFiles<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of file entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<(), A::Error> {
        use serde::de::Error as _;
        let mut uncounted = BackupStats::default();
        while let Some(f) = seq.next_element::<FileEntry>()? {
            self.0.listed.extend_from_slice(&f.block_lists);
            if let Err(e) = self.0.spool.push(&f, &mut uncounted) {
                let message = e.to_string();
                *self.0.local_error = Some(e);
                return Err(A::Error::custom(message));
            }
        }
        Ok(())
    }
}

/// Names of the clusters a repository holds.
pub async fn cluster_names(repo: &Repository) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for o in repo.storage().list("clusters/").await? {
        if let Some(c) = o
            .key
            .as_str()
            .strip_prefix("clusters/")
            .and_then(|r| r.split('/').next())
        {
            names.insert(c.to_string());
        }
    }
    Ok(names.into_iter().collect())
}

/// Removes a backup's manifest (the backup is gone from then on; its blocks are gc's).
pub async fn delete(repo: &Repository, cluster: &str, id: &str) -> Result<()> {
    Ok(repo
        .storage()
        .delete(&layout::backup_manifest(cluster, id))
        .await?)
}

/// Backup ids of a cluster, oldest first (ids sort by time).
pub async fn list_ids(repo: &Repository, cluster: &str) -> Result<Vec<String>> {
    let prefix = layout::backups_prefix(cluster);
    let mut ids: Vec<String> = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            o.key
                .as_str()
                .strip_prefix(&prefix)?
                .strip_suffix("/manifest")
                .map(str::to_string)
        })
        .collect();
    ids.sort_by(|a, b| id_time(a).cmp(id_time(b)).then(a.cmp(b)));
    Ok(ids)
}

/// True when backup `a` was started after backup `b` (ids sort by time).
pub fn newer(a: &str, b: &str) -> bool {
    (id_time(a), a) > (id_time(b), b)
}

/// `xid` as a 64-bit (epoch-qualified) transaction id: as given when it has an epoch part,
/// else the 32-bit id in the epoch that puts it within 2^31 of `near` (a snapshot's
/// epoch-qualified xmin or xmax), as PostgreSQL compares 32-bit ids.
pub fn with_epoch_near(xid: u64, near: u64) -> u64 {
    if xid >> 32 != 0 {
        return xid;
    }
    let candidate = (near & !0xFFFF_FFFF) | xid;
    if candidate > near.saturating_add(1 << 31) && candidate >= 1 << 32 {
        candidate - (1 << 32)
    } else if candidate.saturating_add(1 << 31) < near {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

fn id_time(id: &str) -> &str {
    id.get(..15).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_at_a_segment_boundary_needs_nothing_of_the_next_segment() {
        let seg = 16u64 << 20;
        let (start, at_boundary) = (Lsn(2 * seg + 0x28), Lsn(3 * seg));
        assert_eq!(last_segment_before(start, at_boundary, seg), 2);
        assert_eq!(last_segment_before(start, Lsn(3 * seg + 0x60), seg), 3);
        assert_eq!(last_segment_before(start, start, seg), 2);
        assert_eq!(last_segment_before(Lsn(3 * seg), Lsn(3 * seg), seg), 3);
    }

    /// A transaction between the snapshot's xmin and xmax that had ended (committed while an
    /// older one stayed open) committed before the backup's consistency point: a recovery
    /// from this backup cannot reach it, whatever xmin says.
    #[test]
    fn an_xid_target_fits_a_backup_only_if_it_was_running_or_not_started_at_the_stop() {
        let mut m = crate::test_support::manifest_of("20261207-000000F", &[]);
        assert!(
            m.may_commit_after_stop(5),
            "no snapshot recorded: any backup"
        );
        m.xmin_after_stop = Some(736);
        assert!(!m.may_commit_after_stop(735));
        assert!(
            m.may_commit_after_stop(738),
            "xmin only (older backups): from xmin on"
        );
        (m.xmax_after_stop, m.running_xids_after_stop) = (Some(741), vec![736, 739]);
        for (xid, fits) in [
            (735, false),
            (736, true),
            (738, false),
            (739, true),
            (740, false),
        ] {
            assert_eq!(m.may_commit_after_stop(xid), fits, "{xid}");
        }
        assert!(m.may_commit_after_stop(741) && m.may_commit_after_stop(9000));
        let back: Manifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(
            (back.xmax_after_stop, back.running_xids_after_stop),
            (Some(741), vec![736, 739])
        );
        // After a wraparound: the snapshot in epoch 3, the target given as 32 bits.
        let e = 3u64 << 32;
        m.xmin_after_stop = Some(e + 736);
        (m.xmax_after_stop, m.running_xids_after_stop) = (Some(e + 741), vec![e + 739]);
        for (xid, fits) in [(738, false), (739, true), (741, true), (e + 738, false)] {
            assert_eq!(m.may_commit_after_stop(xid), fits, "{xid}");
        }
        assert_eq!(
            with_epoch_near(5, e + 0xFFFF_FFF0),
            (4 << 32) + 5,
            "just past the wrap"
        );
        assert_eq!(with_epoch_near(0xFFFF_FFF0, e + 5), (2 << 32) + 0xFFFF_FFF0);
        assert_eq!(
            with_epoch_near(0xFFFF_FFF0, 5),
            0xFFFF_FFF0,
            "epoch 0 stays"
        );
    }

    #[test]
    fn block_refs_are_hex_in_json_and_bytes_in_memory() {
        let id = ContentId([0xab; 32]);
        let v = vec![BlockRef(Some(id)), BlockRef::ZERO];
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, format!("[\"{}\",\"\"]", "ab".repeat(32)));
        let back: Vec<BlockRef> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
        assert!(serde_json::from_str::<Vec<BlockRef>>("[\"xyz\"]").is_err());
        assert!(std::mem::size_of::<BlockRef>() <= 33);
    }

    #[tokio::test]
    async fn a_manifest_reads_back_the_same_whole_or_with_its_files_spilled() {
        let (_, repo) = crate::archive::push::tests::memory_repo().await;
        let ids: Vec<ContentId> = (0..5u8).map(|i| ContentId([i; 32])).collect();
        let mut m = crate::test_support::manifest(
            "20261124-000000F",
            "0/1000000",
            "0/1000100",
            "2026-11-24T00:00:01Z",
            &ids,
        );
        let mut second = m.files[0].clone();
        second.path = "base/1/2".into();
        second.blocks.push(BlockRef::ZERO);
        second.bad_pages = vec![3];
        m.files.push(second);
        save(&repo, &m).await.unwrap();

        let whole = load(&repo, "main", &m.id).await.unwrap();
        assert_eq!(
            serde_json::to_value(&whole).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
        let (head, mut files) = load_spilled(&repo, "main", &m.id, PartFingerprints::Keep)
            .await
            .unwrap();
        assert!(head.files.is_empty());
        assert_eq!(
            serde_json::to_value(&head).unwrap(),
            serde_json::to_value(m.clone_head()).unwrap()
        );
        for f in &m.files {
            assert_eq!(files.take(&f.path).unwrap().as_ref(), Some(f));
        }
        assert!(
            load_spilled(&repo, "main", "20261124-000001F", PartFingerprints::Keep)
                .await
                .is_err()
        );
    }

    /// Regression (audit issue 13, item 10): a full TMPDIR while a manifest's file list was
    /// spilled was reported as "corrupt object … manifest", failing a drill for integrity.
    #[tokio::test]
    async fn a_spool_that_cannot_be_written_is_a_local_error_not_a_corrupt_manifest() {
        let (_, repo) = crate::archive::push::tests::memory_repo().await;
        let ids: Vec<ContentId> = (0..64u8).map(|i| ContentId([i; 32])).collect();
        let mut m = crate::test_support::manifest(
            "20261124-000000F",
            "0/1000000",
            "0/1000100",
            "2026-11-24T00:00:01Z",
            &ids,
        );
        // Enough entries to overflow the spool's write buffer while the manifest is parsed.
        let first = m.files[0].clone();
        for i in 0..200 {
            let mut f = first.clone();
            f.path = format!("base/1/{i}");
            m.files.push(f);
        }
        save(&repo, &m).await.unwrap();
        let plain = open_plain(&repo, "main", &m.id).await.unwrap();
        let full = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/full")
            .unwrap();
        let mut spool = FileSpool::over(full);
        let key = layout::backup_manifest("main", &m.id).to_string();
        let err = parse_head(plain, key, Some(&mut spool)).unwrap_err();
        assert!(
            err.is_operational() && !matches!(err, Error::Corrupt { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("TMPDIR"), "{err}");
    }
}
