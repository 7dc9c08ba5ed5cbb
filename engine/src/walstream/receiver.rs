//! The receiver loop: stream, commit chunks in order, acknowledge only what is durable.
//!
//! One session = one replication connection:
//! 1. `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`/`server_version_num`; the cluster record is
//!    checked (or bound) exactly as `archive-push` does, so a receiver pointed at another
//!    server is refused before anything is written.
//! 2. The resume point comes from the repository, never from local state: on the newest
//!    timeline of the server's history that has WAL there, the later of its newest segment's
//!    contiguous chunks (see [`super::chunks`]) and the end of its newest archived segment
//!    ([`Receiver::resume_point`]); with none on any, the start of the server's current
//!    segment, acknowledged only once its first chunk is durable. On the way, leftovers of a
//!    crash are settled: chunks of a segment already archived are deleted, a complete but
//!    unarchived segment is archived.
//! 3. `START_REPLICATION [SLOT s] PHYSICAL <resume point> TIMELINE <tli>`, then the loop:
//!    XLogData is appended to the current segment's buffer; a chunk is committed as soon as
//!    the connection holds no more WAL, or when the oldest uncommitted byte is
//!    `commit_interval` old while WAL keeps arriving, when [`MAX_CHUNK`] bytes wait, or at a
//!    segment boundary. Only after the chunk's create-only put returned is the standby status
//!    update sent with write = flush = its end. While a chunk is being written nothing more
//!    is read from the socket: what arrives meanwhile waits in the kernel's buffers and goes
//!    into the next chunk (group commit), and a slow repository becomes backpressure on the
//!    walsender, never memory.
//! 4. A completed segment is archived as an ordinary segment through
//!    [`crate::archive::push`] (identical bytes to what `archive_command` pushes: the
//!    walsender sends the segment file's content), then its chunks are deleted. This runs in
//!    the background so the next commit does not wait for a 16 MiB upload; at most one such
//!    upload is in flight.
//! 5. When the server ends the timeline (CopyDone after a promotion upstream), the next
//!    timeline's history file is archived and streaming resumes on it from the start of the
//!    segment holding the switch point (the new timeline's copy of that segment).
//!
//! In flight, bounded: the current segment (at most `wal_segment_size`), one completed segment
//! being archived, and one chunk (at most [`MAX_CHUNK`]) being sealed and written. What is
//! acknowledged is durable; what is in flight is not acknowledged, so a crash (or `kill -9`)
//! loses nothing acknowledged, and the restart resumes from the repository. The slot keeps
//! the server's WAL until then.
//!
//! Failures: a repository or connection error ends the session; the daemon retries with
//! backoff (1 s doubling to 30 s) and never acknowledges anything not durable meanwhile, so a
//! synchronous primary waits (that is the point). Errors that retrying cannot fix (bad
//! credentials, another system, a conflicting segment) stop the daemon.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::chunks;
use super::protocol::{BackendMessage, ProtocolError, ReplicationConnection, StreamMessage};
use super::status::ReceiverStatus;
use crate::archive::push::{push_wal_file, WalSource};
use crate::error::Error;
use crate::pg::conninfo::Conninfo;
use crate::repo::{layout, Repository};
use crate::store::cluster::{self, ServerIdentity};
use crate::types::{Lsn, TimelineId, WalFileName};

/// Largest chunk: a chunk is committed when this many bytes wait, whatever the interval.
pub const MAX_CHUNK: usize = 4 << 20;
/// Default group-commit interval.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(5);
/// Default interval of status updates while idle (PostgreSQL's `wal_receiver_status_interval`).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Chunks of a segment merged into one once there are this many since the last merge.
const MERGE_AFTER: usize = 64;
/// A chunk of this size or more stays as it is (so a merged chunk holds less than
/// `MERGE_AFTER` times this).
const SMALL_CHUNK: usize = 64 << 10;
const STATUS_FILE_EVERY: Duration = Duration::from_secs(1);

/// How the receiver runs.
#[derive(Debug)]
pub struct ReceiverOptions {
    /// Where the server is.
    pub conninfo: Conninfo,
    /// `application_name` (what `synchronous_standby_names` lists), unless conninfo sets one.
    pub application_name: String,
    /// Physical replication slot.
    pub slot: Option<String>,
    /// Create the slot if it does not exist.
    pub create_slot: bool,
    /// Group-commit interval.
    pub commit_interval: Duration,
    /// Status update interval while idle.
    pub status_interval: Duration,
    /// Where to write [`ReceiverStatus`].
    pub status_file: Option<std::path::PathBuf>,
}

/// Why the receiver stopped or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Talking to the server failed.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The repository failed.
    #[error("{0}")]
    Repository(#[from] Error),
    /// The server is not one this receiver may stream from (another system, a timeline behind
    /// the repository's...).
    #[error("{0}")]
    Refused(String),
}

impl ReceiveError {
    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReceiveError::Protocol(p) => p.is_permanent(),
            ReceiveError::Repository(e) => matches!(
                e,
                Error::Config(_)
                    | Error::Key(_)
                    | Error::InvalidInput(_)
                    | Error::Conflict(_)
                    | Error::Corrupt { .. }
            ),
            ReceiveError::Refused(_) => true,
        }
    }
}

type Result<T, E = ReceiveError> = std::result::Result<T, E>;

/// What to do about a server error that retrying fixes only once something else changes.
/// Retried all the same: archiving may still store the segment the server no longer has (the
/// receiver then resumes after it), and an operator may recreate the slot.
fn retry_hint(e: &ReceiveError) -> &'static str {
    match e {
        // "requested WAL segment ... has already been removed".
        ReceiveError::Protocol(p) if p.code() == Some("58P01") => {
            " (the server no longer has the WAL the repository needs next: the receiver \
             resumes once archive-push has stored it; if archiving lost it, the repository has a \
             gap there, so take a new backup; a replication slot (`--create-slot`) keeps the \
             server from removing WAL the receiver has not stored)"
        }
        // A slot that cannot be used, e.g. invalidated by max_slot_wal_keep_size.
        ReceiveError::Protocol(p) if p.code() == Some("55000") => {
            " (the replication slot cannot be used: if max_slot_wal_keep_size invalidated it, \
             drop it on the server, start `pgcairn wal-receive --create-slot`, and take a new \
             backup, since WAL between may be missing from the repository)"
        }
        _ => "",
    }
}

/// How a session ended without an error.
enum SessionEnd {
    /// Asked to stop.
    Stopped,
    /// The timeline ended; stream the next one.
    NextTimeline,
}

/// Parses `SHOW wal_segment_size` (`16MB`, `1GB`, ...).
fn parse_segment_size(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = n * mult;
    (size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)).then_some(size)
}

/// Archives a completed segment as an ordinary segment and deletes its chunks.
async fn archive_segment(
    repo: Repository,
    cluster: String,
    name: WalFileName,
    data: Vec<u8>,
    seg_size: u64,
) -> Result<(), Error> {
    let outcome = push_wal_file(&repo, &cluster, &name, WalSource::Bytes(data)).await?;
    debug!("{name} archived from the stream: {outcome:?}");
    remove_archived_before(&repo, &cluster, &name, seg_size).await
}

/// Deletes the chunks of the archived segments of `name`'s timeline before it. The chunks
/// of the newest segment the receiver completed stay, as its mark: they say where its
/// acknowledged WAL ends when it restarts before writing into the next segment, which the
/// archive alone cannot say (asynchronous archiving may have stored a later segment first;
/// see [`Receiver::resume_point`]). `expire` keeps them too ([`super::sweep`]).
async fn remove_archived_before(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    seg_size: u64,
) -> Result<(), Error> {
    let (Some(segno), tli) = (name.segment(), name.timeline()) else {
        return Ok(());
    };
    for ((t, s), list) in chunks::list_all(repo, cluster, seg_size).await? {
        if t != tli.0 || s >= segno.absolute(seg_size) {
            continue;
        }
        let older = chunks::segment_name(t, s, seg_size);
        if crate::archive::push::read_wal_record(repo, cluster, &older)
            .await?
            .is_some()
        {
            chunks::remove(repo, &list).await?;
        }
    }
    Ok(())
}

/// The first segment after `segno` that `archived` does not hold.
fn first_missing_after(archived: &BTreeSet<u64>, segno: u64) -> u64 {
    (segno + 1..)
        .find(|s| !archived.contains(s))
        .expect("a finite set leaves a segment out")
}

/// The receiver: state shared by its sessions.
struct Receiver<'a> {
    repo: &'a Repository,
    cluster: &'a str,
    opts: &'a ReceiverOptions,
    status: ReceiverStatus,
    status_written: Option<Instant>,
    /// The status changed since the file was last written (a write skipped as too soon).
    status_dirty: bool,
    /// A segment missing from the repository below an archived one that the server said it
    /// no longer has: the next resume goes past it (see [`Receiver::resume_point`]).
    lost_gap: Option<(u32, u64)>,
}

/// Runs the receiver until `stop` turns true (SIGTERM), or an error retrying cannot fix.
pub async fn run(
    repo: &Repository,
    cluster: &str,
    opts: &ReceiverOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut r = Receiver {
        repo,
        cluster,
        opts,
        status: ReceiverStatus {
            cluster: cluster.to_string(),
            slot: opts.slot.clone(),
            pid: std::process::id(),
            state: "connecting".into(),
            ..Default::default()
        },
        status_written: None,
        status_dirty: false,
        lost_gap: None,
    };
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        if *stop.borrow() {
            break Ok(());
        }
        let committed_before = r.status.chunks_committed;
        match r.session(&mut stop).await {
            Ok(SessionEnd::Stopped) => break Ok(()),
            Ok(SessionEnd::NextTimeline) => continue,
            Err(e) if e.is_permanent() => break Err(e),
            Err(e) => {
                if r.status.chunks_committed > committed_before {
                    backoff = Duration::from_secs(1);
                }
                let hint = retry_hint(&e);
                warn!("wal-receive: {e}{hint}; not acknowledging anything more; retrying in {backoff:?}");
                r.status.state = "retrying".into();
                r.status.last_error = Some(format!("{e}{hint}"));
                r.write_status(true);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    r.status.state = "stopped".into();
    if let Err(e) = &result {
        r.status.last_error = Some(e.to_string());
    }
    r.write_status(true);
    result
}

/// The segment being received.
struct Current {
    tli: u32,
    segno: u64,
    name: WalFileName,
    seg_size: u64,
    /// Bytes `0..buf.len()` of the segment received so far.
    buf: Vec<u8>,
    /// Bytes `0..durable` are committed.
    durable: usize,
    /// The repository holds the WAL before this segment: false on a first start until its
    /// first chunk is committed, and nothing is acknowledged meanwhile.
    proven: bool,
    /// When the oldest uncommitted byte arrived.
    pending_since: Option<Instant>,
    /// Chunks committed since `merged_to`, not yet merged ([`MERGE_AFTER`]).
    small: Vec<crate::storage::ObjectKey>,
    /// Where the chunks not yet merged start.
    merged_to: usize,
    /// The small chunks the last merge covered, deleted at the next one.
    merged_small: Vec<crate::storage::ObjectKey>,
}

impl Current {
    fn start_lsn(&self) -> u64 {
        self.segno * self.seg_size
    }
    fn received(&self) -> Lsn {
        Lsn(self.start_lsn() + self.buf.len() as u64)
    }
    fn flushed(&self) -> Lsn {
        if !self.proven {
            return Lsn(0);
        }
        Lsn(self.start_lsn() + self.durable as u64)
    }
}

/// Where a session resumes ([`Receiver::resume_point`]).
struct Resume {
    tli: u32,
    segno: u64,
    /// The durable prefix of that segment.
    prefix: Vec<u8>,
    /// A later segment of the timeline is archived: this one is a gap to fill.
    gap: bool,
    /// The repository holds the WAL before `segno` (or the session is refused): false only
    /// on a first start.
    proven: bool,
}

impl Receiver<'_> {
    fn write_status(&mut self, force: bool) {
        let Some(path) = &self.opts.status_file else {
            return;
        };
        if !force
            && self
                .status_written
                .is_some_and(|t| t.elapsed() < STATUS_FILE_EVERY)
        {
            // Written by the stream loop once STATUS_FILE_EVERY has passed, even if nothing
            // else happens: the last commit before a quiet spell must reach the file.
            self.status_dirty = true;
            return;
        }
        self.status_dirty = false;
        self.status.updated_at = crate::store::Timestamp::now().to_string();
        if let Err(e) = super::status::write(path, &self.status) {
            warn!("cannot write the receiver status: {e}");
        }
        self.status_written = Some(Instant::now());
    }

    /// Checks the server against the cluster record, binding the cluster on first use.
    async fn check_cluster(&self, sysid: &str, seg_size: u64, pg_major: u32) -> Result<()> {
        let system_identifier = sysid.parse().map_err(|_| {
            ReceiveError::Refused(format!(
                "IDENTIFY_SYSTEM returned {sysid:?}, not a system identifier"
            ))
        })?;
        let server = ServerIdentity {
            system_identifier,
            wal_segment_size: seg_size,
            pg_major,
        };
        match cluster::bind_or_check(self.repo, self.cluster, &server, None).await? {
            Ok(_) => Ok(()),
            Err(why) => Err(ReceiveError::Refused(format!(
                "streaming from PostgreSQL {pg_major} refused: {why}"
            ))),
        }
    }

    /// The archived segments of `tli`, as absolute segment numbers (one LIST of that
    /// timeline's pointers).
    async fn archived_segments(&self, tli: u32, seg_size: u64) -> Result<BTreeSet<u64>> {
        let prefix = layout::wal_pointer_timeline_prefix(self.cluster, TimelineId(tli));
        let mut archived = BTreeSet::new();
        for o in self
            .repo
            .storage()
            .list(&prefix)
            .await
            .map_err(Error::from)?
        {
            if let Some((_, WalFileName::Segment { segno, .. })) =
                layout::parse_wal_pointer(self.cluster, o.key.as_str())
            {
                archived.insert(segno.absolute(seg_size));
            }
        }
        Ok(archived)
    }

    /// Settles what a crash left and returns where streaming resumes: (timeline, segment,
    /// durable prefix of that segment, whether the repository holds the WAL before it).
    ///
    /// The resume point is on the newest timeline of the server's history (`history`: its
    /// ancestors, oldest first) that has any WAL in the repository. On it, the receiver's
    /// own newest streamed segment says where its acknowledged WAL ends: a partial one (the
    /// tail) is where streaming resumes, whatever is archived after it; one that is whole
    /// (archived, or archived here) is followed over the archived segments after it, and
    /// streaming resumes at the first one missing. Not the end of the newest archived
    /// segment: with asynchronous archiving a later segment can land while an earlier one
    /// is still being pushed (or was dropped by the spool's `queue_max`), and a restart that
    /// resumed after it acknowledged the missing segment as flushed, so a recovery stopped
    /// inside it, before commits the receiver had acknowledged. The server still has that
    /// segment (the slot holds it from the position last acknowledged). With no chunk of
    /// the timeline left (`expire` removed those of archived segments), the end of its
    /// newest archived segment is all there is to go by.
    /// Not the newest tail of any timeline: an older timeline's partial switch segment stays
    /// as its tail after a promotion, and once the new timeline's chunks were archived and
    /// deleted it was the only tail left, so a restart went back to the switch point (and
    /// looped on "requested WAL segment has already been removed" once the server had
    /// recycled it, holding every synchronous commit). Nor the server's current segment when
    /// only an ancestor has WAL: after a failover with the receiver down, that skipped the new
    /// timeline's first segments and acknowledged them as flushed. Only with no WAL of any
    /// timeline of the server's history in the repository (a first start) does streaming
    /// begin at the server's current segment, and nothing is acknowledged before its first
    /// chunk is durable.
    async fn resume_point(
        &mut self,
        server_tli: u32,
        server_pos: Lsn,
        seg_size: u64,
        history: &[crate::recovery::HistoryEntry],
    ) -> Result<Resume> {
        let all = chunks::list_all(self.repo, self.cluster, seg_size).await?;
        // Another timeline's WAL past the server's: the session refuses it.
        if let Some(&(tli, segno)) = all.keys().rfind(|(t, _)| *t > server_tli) {
            return Ok(Resume {
                tli,
                segno,
                prefix: Vec::new(),
                gap: false,
                proven: true,
            });
        }
        // The newest streamed segment of each timeline, with its durable prefix when it is
        // partial (not archived, not whole); `None` when it is whole.
        let mut newest: std::collections::BTreeMap<u32, (u64, Option<u64>)> = Default::default();
        let last_of: std::collections::BTreeMap<u32, u64> = all.keys().copied().collect();
        for ((tli, segno), list) in &all {
            let name = chunks::segment_name(*tli, *segno, seg_size);
            let archived = crate::archive::push::read_wal_record(self.repo, self.cluster, &name)
                .await?
                .is_some();
            let (_, end) = chunks::contiguous(list);
            if archived {
                // The newest is the mark of where the stream stopped (see
                // [`remove_archived_before`]); it goes once a later segment is archived.
                if last_of.get(tli) != Some(segno) {
                    info!(
                        "{name} is archived: deleting its {} streamed chunks",
                        list.len()
                    );
                    chunks::remove(self.repo, list).await?;
                }
                newest.insert(*tli, (*segno, None));
            } else if end == seg_size {
                info!("{name} was streamed completely but not archived (crash?): archiving it now");
                let data = chunks::read_prefix(self.repo, self.cluster, list).await?;
                archive_segment(
                    self.repo.clone(),
                    self.cluster.to_string(),
                    name,
                    data,
                    seg_size,
                )
                .await?;
                self.status.segments_archived += 1;
                newest.insert(*tli, (*segno, None));
            } else {
                // Older partial segments of a timeline stay until archived or expired (see
                // [`super::sweep`]); the newest is where that timeline's stream stopped.
                newest.insert(*tli, (*segno, Some(end)));
            }
        }
        let timelines = std::iter::once(server_tli).chain(history.iter().rev().map(|e| e.parent));
        for tli in timelines {
            let archived = self.archived_segments(tli, seg_size).await?;
            let (mut segno, mut prefix) = match newest.get(&tli).copied() {
                Some((segno, Some(_))) => (segno, self.read_tail(&all[&(tli, segno)]).await?),
                Some((whole, None)) => (first_missing_after(&archived, whole), Vec::new()),
                None => match archived.last() {
                    Some(last) => (last + 1, Vec::new()),
                    None => continue,
                },
            };
            if self.lost_gap == Some((tli, segno)) && archived.last().is_some_and(|&l| l > segno) {
                self.lost_gap = None;
                let next = first_missing_after(&archived, segno);
                tracing::error!(
                    "{} is not in the repository and the server no longer has it: \
                     point-in-time recovery from the backups before it stops there, so take a \
                     new backup now; streaming resumes at {}, the next segment missing",
                    chunks::segment_name(tli, segno, seg_size),
                    chunks::segment_name(tli, next, seg_size)
                );
                (segno, prefix) = (next, Vec::new());
            }
            let mut gap = false;
            if archived.last().is_some_and(|&last| last > segno) {
                let name = chunks::segment_name(tli, segno, seg_size);
                warn!(
                    "{name} is not in the repository, though later segments of timeline {tli} \
                     are (archiving still pushing it, or it was dropped): streaming resumes \
                     there, and nothing after it is acknowledged before it is stored"
                );
                gap = true;
            }
            return Ok(Resume {
                tli,
                segno,
                prefix,
                gap,
                proven: true,
            });
        }
        Ok(Resume {
            tli: server_tli,
            segno: server_pos.segment_no(seg_size),
            prefix: Vec::new(),
            gap: false,
            proven: false,
        })
    }

    /// The durable prefix of a segment's streamed chunks. A damaged last chunk is set aside
    /// (deleted, with an error in the log) and the prefix ends before it: a chunk is
    /// acknowledged only once its put returned, which on `file://` is after its fsync, so the
    /// last chunk can be torn only by a crash or power loss during its write, before it was
    /// acknowledged; the server still has its WAL, and streaming resumes there. Any other
    /// damaged chunk is an error: acknowledged WAL is missing.
    ///
    /// The last chunk is also made durable before anything is acknowledged from it: a receiver
    /// killed between a chunk's link into place and its fsync (`file://`) left one that the
    /// restart read from the page cache and acknowledged, and an OS crash after that lost it.
    /// Creating it again with the bytes read syncs it ([`crate::storage::CreateOutcome`]).
    async fn read_tail(&self, list: &[chunks::Chunk]) -> Result<Vec<u8>> {
        match chunks::read_prefix_or_before_last(self.repo, self.cluster, list).await? {
            (prefix, None) => {
                if let Some(last) = chunks::contiguous(list).0.last() {
                    let storage = self.repo.storage();
                    let raw = storage.get(&last.key).await.map_err(Error::from)?;
                    storage
                        .put_create(&last.key, raw)
                        .await
                        .map_err(Error::from)?;
                }
                Ok(prefix)
            }
            (prefix, Some((last, why))) => {
                tracing::error!(
                    "the last streamed chunk {} does not open ({why}): a crash or power loss \
                     during its write, before it was acknowledged; it is set aside and \
                     streaming resumes at byte {} of {}",
                    last.key,
                    prefix.len(),
                    last.segment
                );
                self.repo
                    .storage()
                    .delete(&last.key)
                    .await
                    .map_err(Error::from)?;
                Ok(prefix)
            }
        }
    }

    /// Archives the history file of `tli` (a no-op when it is already).
    async fn archive_history(&self, conn: &mut ReplicationConnection, tli: u32) -> Result<()> {
        if tli <= 1 {
            return Ok(());
        }
        let (file, content) = conn.timeline_history(tli).await?;
        let name = WalFileName::History {
            tli: TimelineId(tli),
        };
        if file != name.to_string() {
            return Err(ReceiveError::Refused(format!(
                "TIMELINE_HISTORY {tli} returned {file:?}, not {name}"
            )));
        }
        push_wal_file(self.repo, self.cluster, &name, WalSource::Bytes(content)).await?;
        Ok(())
    }

    async fn session(&mut self, stop: &mut watch::Receiver<bool>) -> Result<SessionEnd> {
        self.status.state = "connecting".into();
        let mut conn =
            ReplicationConnection::connect(&self.opts.conninfo, &self.opts.application_name)
                .await?;
        let ident = conn.identify_system().await?;
        let seg_size_text = conn.show("wal_segment_size").await?;
        let seg_size = parse_segment_size(&seg_size_text).ok_or_else(|| {
            ReceiveError::Refused(format!("unexpected wal_segment_size {seg_size_text:?}"))
        })?;
        let version: u32 = conn
            .show("server_version_num")
            .await?
            .parse()
            .map_err(|_| ReceiveError::Refused("unexpected server_version_num".into()))?;
        self.check_cluster(&ident.system_identifier, seg_size, version / 10000)
            .await?;
        if let (Some(slot), true) = (&self.opts.slot, self.opts.create_slot) {
            if conn.create_physical_slot(slot).await? {
                info!("created physical replication slot {slot:?}");
            }
        }
        let history = if ident.timeline > 1 {
            match conn.timeline_history(ident.timeline).await {
                Ok((_, text)) => crate::recovery::parse_history(&String::from_utf8_lossy(&text)),
                // Its history file removed by hand: the server's own timeline is all there is
                // to resume on (WAL of an older one is then refused below).
                Err(ProtocolError::Server { code, message }) => {
                    warn!(
                        "the server has no history of its timeline {} ({code}: {message}); \
                         resuming from its own timeline's WAL only",
                        ident.timeline
                    );
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        let Resume {
            mut tli,
            mut segno,
            mut prefix,
            gap,
            proven,
        } = self
            .resume_point(ident.timeline, ident.xlogpos, seg_size, &history)
            .await?;
        let resumed_at = (tli, segno);
        if tli < ident.timeline {
            // Where did our timeline end, in the server's history? Past that point the
            // stream continues on the next timeline, from the start of the segment holding the
            // switch (the new timeline's copy of it).
            while let Some(i) = history.iter().position(|e| e.parent == tli) {
                let switch = history[i].switch_lsn;
                let pos = segno * seg_size + prefix.len() as u64;
                if pos < switch.0 {
                    break;
                }
                tli = history
                    .get(i + 1)
                    .map(|e| e.parent)
                    .unwrap_or(ident.timeline);
                segno = switch.segment_no(seg_size);
                prefix = Vec::new();
            }
            if tli < ident.timeline && !history.iter().any(|e| e.parent == tli) {
                return Err(ReceiveError::Refused(format!(
                    "the repository has streamed WAL of timeline {tli}, which is not in the history of the server's timeline {}",
                    ident.timeline
                )));
            }
        }
        if tli > ident.timeline {
            return Err(ReceiveError::Refused(format!(
                "the repository has streamed WAL of timeline {tli}, but the server is on timeline {}: \
                 it is not the current primary (or was restored without a new timeline)",
                ident.timeline
            )));
        }
        // Only a gap streaming starts in (not one a timeline switch moved past).
        let gap_at = (gap && (tli, segno) == resumed_at).then_some(resumed_at);
        self.archive_history(&mut conn, tli).await?;
        let prefix_len = prefix.len();
        let mut cur = Current {
            tli,
            segno,
            name: chunks::segment_name(tli, segno, seg_size),
            seg_size,
            durable: prefix.len(),
            proven,
            buf: {
                let mut b = Vec::with_capacity(seg_size as usize);
                b.extend_from_slice(&prefix);
                b
            },
            pending_since: None,
            small: Vec::new(),
            merged_to: prefix_len,
            merged_small: Vec::new(),
        };
        let start = cur.received();
        info!(
            "streaming from {start} on timeline {tli} (slot {:?})",
            self.opts.slot
        );
        conn.start_replication(self.opts.slot.as_deref(), start, tli)
            .await
            .map_err(|e| match e.code() {
                Some("42704") => ReceiveError::Refused(format!(
                    "{e}: create it once with `pgcairn wal-receive --create-slot` (or \
                     pg_create_physical_replication_slot on the server)"
                )),
                _ => e.into(),
            })?;
        self.status.state = "streaming".into();
        self.status.timeline = tli;
        self.status.last_error = None;
        self.status.flush_lsn = proven.then(|| start.to_string());
        conn.send_status(start, cur.flushed()).await?;
        self.write_status(true);
        let mut archiving: Option<tokio::task::JoinHandle<Result<(), Error>>> = None;
        let mut last_status = Instant::now();
        let mut server_end = ident.xlogpos;
        let result = self
            .stream(
                &mut conn,
                &mut cur,
                &mut archiving,
                &mut last_status,
                &mut server_end,
                stop,
            )
            .await;
        // Whatever happened, let a running archive finish: its chunks are its safety net.
        if let Some(h) = archiving.take() {
            match h.await {
                Ok(Ok(())) => self.status.segments_archived += 1,
                Ok(Err(e)) => {
                    warn!("archiving a streamed segment failed: {e} (retried at the next start)")
                }
                Err(e) => warn!("archiving a streamed segment failed: {e}"),
            }
        }
        match result {
            Ok(SessionEnd::Stopped) => {
                conn.close().await;
                Ok(SessionEnd::Stopped)
            }
            Ok(SessionEnd::NextTimeline) => {
                let end = conn.finish_stream().await?;
                match end.next {
                    Some((next, at)) => {
                        info!(
                            "timeline {} ended at {at}; following timeline {next}",
                            cur.tli
                        );
                        let mut c = conn;
                        self.archive_history(&mut c, next).await?;
                        Ok(SessionEnd::NextTimeline)
                    }
                    None => Err(ReceiveError::Protocol(ProtocolError::Protocol(
                        "the server ended streaming without naming the next timeline".into(),
                    ))),
                }
            }
            // PostgreSQL reports a removed segment once streaming has begun, not in answer
            // to START_REPLICATION: nothing past the prefix arrived, so the gap cannot be
            // filled from this server, and the next session goes past it.
            Err(ReceiveError::Protocol(p))
                if p.code() == Some("58P01")
                    && gap_at == Some((cur.tli, cur.segno))
                    && cur.buf.len() == prefix_len =>
            {
                self.lost_gap = gap_at;
                Err(ReceiveError::Protocol(p))
            }
            Err(e) => Err(e),
        }
    }

    /// Commits the uncommitted bytes of `cur` as one chunk, then reports them flushed.
    async fn commit(
        &mut self,
        conn: &mut ReplicationConnection,
        cur: &mut Current,
        server_end: Lsn,
    ) -> Result<()> {
        if cur.durable == cur.buf.len() {
            return Ok(());
        }
        let data = cur.buf[cur.durable..].to_vec();
        let start = cur.durable;
        let key =
            chunks::commit_chunk(self.repo, self.cluster, &cur.name, start as u64, data).await?;
        cur.durable = cur.buf.len();
        cur.proven = true;
        cur.pending_since = None;
        let flushed = cur.flushed();
        conn.send_status(flushed, flushed).await?;
        self.status.chunks_committed += 1;
        self.status.flush_lsn = Some(flushed.to_string());
        self.status.last_commit_at = Some(crate::store::Timestamp::now().to_string());
        self.note_server_end(server_end, flushed);
        self.write_status(false);
        if cur.durable - start >= SMALL_CHUNK {
            // Large enough: the small chunks before it stay as they are. Merging them now
            // would put a chunk in the middle of the run after a later one is durable, and
            // a crash during that put would leave the longest chunk there torn and not last.
            cur.small.clear();
            cur.merged_to = cur.durable;
        } else {
            cur.small.push(key);
            if cur.small.len() >= MERGE_AFTER {
                self.merge(cur).await;
            }
        }
        Ok(())
    }

    /// Replaces the last [`MERGE_AFTER`] chunks, all small, by one: a client committing one
    /// row at a time makes a chunk per commit, and every chunk of the newest segment is read
    /// by each `archive-get` of it and by every restart (16 reads at a time). The merged chunk
    /// ends where the run ends, so while it is written it is the last chunk: torn by a crash,
    /// it is set aside and the small ones are read instead. A reader prefers the longer chunk
    /// ([`chunks::contiguous`]). The small chunks are deleted one merge later (or with their
    /// segment), so a listing that is not a snapshot (a paged LIST, a directory read in
    /// batches) and missed the merged chunk still finds them. Already acknowledged, so a
    /// failure here is only logged: the small chunks stay until their segment is archived.
    async fn merge(&mut self, cur: &mut Current) {
        let small = std::mem::take(&mut cur.small);
        let from = std::mem::replace(&mut cur.merged_to, cur.durable);
        let data = cur.buf[from..cur.durable].to_vec();
        if let Err(e) =
            chunks::commit_chunk(self.repo, self.cluster, &cur.name, from as u64, data).await
        {
            warn!(
                "merging {} streamed chunks of {}: {e}",
                small.len(),
                cur.name
            );
            return;
        }
        let merged_before = std::mem::replace(&mut cur.merged_small, small);
        if let Err(e) = chunks::remove_keys(self.repo, merged_before).await {
            warn!("removing merged chunks of {}: {e}", cur.name);
        }
    }

    fn note_server_end(&mut self, server_end: Lsn, flushed: Lsn) {
        self.status.server_wal_end = Some(server_end.to_string());
        // Nothing durable yet (a first start): no lag to speak of, not the whole LSN.
        self.status.lag_bytes = (flushed.0 != 0).then(|| server_end.0.saturating_sub(flushed.0));
    }

    /// The segment is complete and committed: hand it to the archiver, start the next.
    async fn complete_segment(
        &mut self,
        cur: &mut Current,
        archiving: &mut Option<tokio::task::JoinHandle<Result<(), Error>>>,
    ) -> Result<()> {
        if let Some(h) = archiving.take() {
            h.await
                .map_err(|e| ReceiveError::Refused(format!("archiving task failed: {e}")))??;
            self.status.segments_archived += 1;
        }
        let next = cur.segno + 1;
        let data = std::mem::replace(&mut cur.buf, Vec::with_capacity(cur.seg_size as usize));
        let name = std::mem::replace(
            &mut cur.name,
            chunks::segment_name(cur.tli, next, cur.seg_size),
        );
        cur.segno = next;
        cur.durable = 0;
        cur.small.clear();
        cur.merged_to = 0;
        cur.merged_small.clear();
        *archiving = Some(tokio::spawn(archive_segment(
            self.repo.clone(),
            self.cluster.to_string(),
            name,
            data,
            cur.seg_size,
        )));
        Ok(())
    }

    async fn stream(
        &mut self,
        conn: &mut ReplicationConnection,
        cur: &mut Current,
        archiving: &mut Option<tokio::task::JoinHandle<Result<(), Error>>>,
        last_status: &mut Instant,
        server_end: &mut Lsn,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd> {
        loop {
            if *stop.borrow() {
                self.commit(conn, cur, *server_end).await?;
                return Ok(SessionEnd::Stopped);
            }
            // With WAL waiting to be written: whatever the connection already holds is taken
            // into the same chunk (a cancel-safe poll, see the protocol module), then the chunk
            // is written, without waiting out the interval; only while WAL keeps arriving does
            // the interval bound how long the oldest byte waits.
            let mut ready = None;
            if let Some(since) = cur.pending_since {
                if since.elapsed() < self.opts.commit_interval {
                    ready = conn.read_message().now_or_never();
                }
                if ready.is_none() {
                    self.commit(conn, cur, *server_end).await?;
                    *last_status = Instant::now();
                    continue;
                }
            }
            let mut deadline = *last_status + self.opts.status_interval;
            if let (true, Some(t)) = (self.status_dirty, self.status_written) {
                deadline = deadline.min(t + STATUS_FILE_EVERY);
            }
            let msg = if let Some(m) = ready {
                Ok(m)
            } else {
                tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        self.commit(conn, cur, *server_end).await?;
                        return Ok(SessionEnd::Stopped);
                    }
                    continue;
                }
                r = tokio::time::timeout_at(deadline.into(), conn.read_message()) => r,
                }
            };
            let msg = match msg {
                Err(_) => {
                    if self.status_dirty {
                        self.write_status(true);
                    }
                    if last_status.elapsed() >= self.opts.status_interval {
                        let f = cur.flushed();
                        conn.send_status(f, f).await?;
                        *last_status = Instant::now();
                    }
                    continue;
                }
                Ok(m) => m?,
            };
            match msg {
                BackendMessage::CopyData(d) => match super::protocol::parse_stream(d)? {
                    Some(StreamMessage::XLogData {
                        start,
                        wal_end,
                        data,
                    }) => {
                        if start != cur.received() {
                            return Err(ProtocolError::Protocol(format!(
                                "the server sent WAL from {start}, expected {}",
                                cur.received()
                            ))
                            .into());
                        }
                        *server_end = (*server_end).max(wal_end);
                        let mut rest = &data[..];
                        while !rest.is_empty() {
                            let room = cur.seg_size as usize - cur.buf.len();
                            let n = room.min(rest.len());
                            cur.buf.extend_from_slice(&rest[..n]);
                            rest = &rest[n..];
                            cur.pending_since.get_or_insert_with(Instant::now);
                            if cur.buf.len() as u64 == cur.seg_size {
                                self.commit(conn, cur, *server_end).await?;
                                *last_status = Instant::now();
                                self.complete_segment(cur, archiving).await?;
                            }
                        }
                        if cur.buf.len() - cur.durable >= MAX_CHUNK {
                            self.commit(conn, cur, *server_end).await?;
                            *last_status = Instant::now();
                        }
                    }
                    Some(StreamMessage::Keepalive {
                        wal_end,
                        reply_requested,
                    }) => {
                        *server_end = (*server_end).max(wal_end);
                        self.note_server_end(*server_end, cur.flushed());
                        if reply_requested {
                            let f = cur.flushed();
                            conn.send_status(f, f).await?;
                            *last_status = Instant::now();
                        }
                        self.write_status(false);
                    }
                    None => {}
                },
                BackendMessage::CopyDone => {
                    self.commit(conn, cur, *server_end).await?;
                    return Ok(SessionEnd::NextTimeline);
                }
                BackendMessage::Error(e) => return Err(e.into()),
                _ => {}
            }
            if let Some(h) = archiving.as_ref() {
                if h.is_finished() {
                    let h = archiving.take().expect("checked");
                    h.await.map_err(|e| {
                        ReceiveError::Refused(format!("archiving task failed: {e}"))
                    })??;
                    self.status.segments_archived += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_as_show_prints_them() {
        assert_eq!(parse_segment_size("16MB"), Some(16 << 20));
        assert_eq!(parse_segment_size("1GB"), Some(1 << 30));
        assert_eq!(parse_segment_size("64MB"), Some(64 << 20));
        assert_eq!(parse_segment_size("3MB"), None);
        assert_eq!(parse_segment_size("sixteen"), None);
    }

    #[test]
    fn permanent_errors_are_told_from_passing_ones() {
        let refused = ReceiveError::Refused("x".into());
        assert!(refused.is_permanent());
        let net =
            ReceiveError::Repository(Error::Storage(crate::storage::StorageError::Transient {
                op: "put",
                key: "k".into(),
                detail: "connection refused".into(),
            }));
        assert!(!net.is_permanent());
        let auth = ReceiveError::Protocol(ProtocolError::Server {
            code: "28P01".into(),
            message: "password authentication failed".into(),
        });
        assert!(auth.is_permanent());
        assert_eq!(retry_hint(&auth), "");
        // Retried, and the log says what would end it.
        let removed = ReceiveError::Protocol(ProtocolError::Server {
            code: "58P01".into(),
            message: "requested WAL segment 000000010000000000000005 has already been removed"
                .into(),
        });
        assert!(!removed.is_permanent());
        assert!(retry_hint(&removed).contains("new backup"));
        let slot = ReceiveError::Protocol(ProtocolError::Server {
            code: "55000".into(),
            message: "cannot read from replication slot".into(),
        });
        assert!(retry_hint(&slot).contains("--create-slot"));
    }

    const SEG: u64 = 1 << 20;

    async fn archive(repo: &Repository, tli: u32, segno: u64) {
        let data = crate::pg::wal_header::tests::fake_segment(
            9,
            tli,
            segno * SEG,
            SEG as u32,
            SEG as usize,
        );
        push_wal_file(
            repo,
            "main",
            &chunks::segment_name(tli, segno, SEG),
            WalSource::Bytes(data),
        )
        .await
        .unwrap();
    }

    fn options() -> ReceiverOptions {
        ReceiverOptions {
            conninfo: crate::pg::conninfo::parse("host=/nowhere").unwrap(),
            application_name: "pgcairn".into(),
            slot: None,
            create_slot: false,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            status_interval: Duration::from_secs(10),
            status_file: None,
        }
    }

    fn receiver<'a>(repo: &'a Repository, opts: &'a ReceiverOptions) -> Receiver<'a> {
        Receiver {
            repo,
            cluster: "main",
            opts,
            status: ReceiverStatus::default(),
            status_written: None,
            status_dirty: false,
            lost_gap: None,
        }
    }

    async fn resume(
        repo: &Repository,
        server_tli: u32,
        server_segno: u64,
        history: &[(u32, u64)],
    ) -> (u32, u64, usize, bool) {
        let opts = options();
        let mut r = receiver(repo, &opts);
        let history: Vec<crate::recovery::HistoryEntry> = history
            .iter()
            .map(|&(parent, switch)| crate::recovery::HistoryEntry {
                parent,
                switch_lsn: Lsn(switch),
            })
            .collect();
        let at = r
            .resume_point(server_tli, Lsn(server_segno * SEG + 4096), SEG, &history)
            .await
            .unwrap();
        (at.tli, at.segno, at.prefix.len(), at.proven)
    }

    /// After a failover with the receiver down at a segment boundary (nothing streamed on
    /// the new timeline, nothing of it archived yet), streaming resumes after the old
    /// timeline's last archived segment, not at the new primary's current segment: the
    /// segments between were never in the repository, and were acknowledged as flushed.
    #[tokio::test]
    async fn after_a_failover_streaming_resumes_where_the_repository_stops_not_where_the_server_is()
    {
        let (_mem, repo) = crate::test_support::memory_repo().await;
        for segno in 1..=4 {
            archive(&repo, 1, segno).await;
        }
        let history = [(1, 5 * SEG + 0x100)];
        assert_eq!(resume(&repo, 2, 9, &history).await, (1, 5, 0, true));
        // Once the new timeline has archived WAL, it is the one that counts.
        archive(&repo, 2, 5).await;
        assert_eq!(resume(&repo, 2, 9, &history).await, (2, 6, 0, true));
    }

    /// An old timeline's partial switch segment (its tail, kept after a promotion) does not
    /// win over the new timeline's archived WAL once that timeline's chunks are gone.
    #[tokio::test]
    async fn an_old_timelines_tail_does_not_send_streaming_back_to_the_switch() {
        let (_mem, repo) = crate::test_support::memory_repo().await;
        let tail = chunks::segment_name(1, 5, SEG);
        chunks::commit_chunk(&repo, "main", &tail, 0, vec![7; 40_000])
            .await
            .unwrap();
        for segno in 5..=9 {
            archive(&repo, 2, segno).await;
        }
        let history = [(1, 5 * SEG + 40_000)];
        assert_eq!(resume(&repo, 2, 10, &history).await, (2, 10, 0, true));
        // The new timeline's own tail, when it has one, is where it resumes.
        let own = chunks::segment_name(2, 10, SEG);
        chunks::commit_chunk(&repo, "main", &own, 0, vec![8; 1000])
            .await
            .unwrap();
        assert_eq!(resume(&repo, 2, 10, &history).await, (2, 10, 1000, true));
    }

    /// With asynchronous archiving a later segment can be stored while an earlier one is
    /// still being pushed (or was dropped). A restart resumes where the receiver's own WAL
    /// ends, not after the newest archived segment: that acknowledged the missing segment as
    /// flushed, and a recovery stopped inside it, before commits acknowledged after it.
    #[tokio::test]
    async fn a_restart_does_not_jump_over_a_segment_missing_from_the_repository() {
        let (_mem, repo) = crate::test_support::memory_repo().await;
        for segno in 1..=4 {
            archive(&repo, 1, segno).await;
        }
        // The receiver stopped inside 1/5; archiving stored 6 while 5 was still on its way.
        let tail = chunks::segment_name(1, 5, SEG);
        chunks::commit_chunk(&repo, "main", &tail, 0, vec![7; 40_000])
            .await
            .unwrap();
        archive(&repo, 1, 6).await;
        assert_eq!(resume(&repo, 1, 9, &[]).await, (1, 5, 40_000, true));
        // Once the server has said it no longer has that segment, the gap cannot be filled:
        // streaming goes on after the archived one (with an error saying to take a backup)
        // rather than holding every synchronous commit for good.
        let opts = options();
        let mut r = receiver(&repo, &opts);
        r.lost_gap = Some((1, 5));
        let at = r.resume_point(1, Lsn(9 * SEG), SEG, &[]).await.unwrap();
        assert_eq!(
            (at.tli, at.segno, at.prefix.len(), at.gap),
            (1, 7, 0, false)
        );
        // Past the lost one, the next missing segment (still being pushed, say) is a gap to
        // fill in turn, not something to acknowledge.
        archive(&repo, 1, 8).await;
        r.lost_gap = Some((1, 5));
        let at = r.resume_point(1, Lsn(9 * SEG), SEG, &[]).await.unwrap();
        assert_eq!((at.tli, at.segno, at.prefix.len(), at.gap), (1, 7, 0, true));

        // The receiver's segment was archived meanwhile (by archive_command, or by the
        // receiver itself when it completed it and stopped at the boundary): it follows the
        // archived segments after it to the first one missing. Its chunks stay as the mark of
        // where the stream stopped, so the next restart knows it too.
        let (_mem, repo) = crate::test_support::memory_repo().await;
        for segno in [1, 2, 3, 5] {
            archive(&repo, 1, segno).await;
        }
        let streamed = chunks::segment_name(1, 3, SEG);
        chunks::commit_chunk(&repo, "main", &streamed, 0, vec![7; 40_000])
            .await
            .unwrap();
        assert_eq!(resume(&repo, 1, 9, &[]).await, (1, 4, 0, true));
        assert_eq!(resume(&repo, 1, 9, &[]).await, (1, 4, 0, true));
        let marks = chunks::list_all(&repo, "main", SEG).await.unwrap();
        assert_eq!(marks.keys().collect::<Vec<_>>(), vec![&(1, 3)]);
        // Segment 4 lands: the archive is whole up to 5.
        archive(&repo, 1, 4).await;
        assert_eq!(resume(&repo, 1, 9, &[]).await, (1, 6, 0, true));
        // With no chunk of the timeline left (expire removed them), the end of the newest
        // archived segment is all there is to go by.
        let (_mem, repo) = crate::test_support::memory_repo().await;
        for segno in [1, 2, 3, 5] {
            archive(&repo, 1, segno).await;
        }
        assert_eq!(resume(&repo, 1, 9, &[]).await, (1, 6, 0, true));
    }

    /// A first start (no WAL of the server's history in the repository) begins at the
    /// server's current segment and vouches for nothing before it.
    #[tokio::test]
    async fn a_first_start_acknowledges_nothing_it_has_not_written() {
        let (_mem, repo) = crate::test_support::memory_repo().await;
        assert_eq!(resume(&repo, 1, 7, &[]).await, (1, 7, 0, false));
        let cur = Current {
            tli: 1,
            segno: 7,
            name: chunks::segment_name(1, 7, SEG),
            seg_size: SEG,
            buf: Vec::new(),
            durable: 0,
            proven: false,
            pending_since: None,
            small: Vec::new(),
            merged_to: 0,
            merged_small: Vec::new(),
        };
        assert_eq!(cur.flushed(), Lsn(0));
        assert_eq!(cur.received(), Lsn(7 * SEG));
    }

    /// A power loss while the last chunk was written leaves it torn (linked, never synced,
    /// never acknowledged): the restart sets it aside and resumes before it, where it used to
    /// stop for good. A damaged chunk before the last is still an error.
    #[tokio::test]
    async fn a_torn_last_chunk_is_set_aside_and_streaming_resumes_before_it() {
        let (mem, repo) = crate::test_support::memory_repo().await;
        let seg = chunks::segment_name(1, 5, SEG);
        for (start, len) in [(0u64, 1000usize), (1000, 500), (1500, 700)] {
            chunks::commit_chunk(&repo, "main", &seg, start, vec![start as u8; len])
                .await
                .unwrap();
        }
        let listed = chunks::list_all(&repo, "main", SEG).await.unwrap();
        let keys: Vec<crate::storage::ObjectKey> =
            listed[&(1, 5)].iter().map(|c| c.key.clone()).collect();
        let tear = |k: &crate::storage::ObjectKey| {
            let mem = mem.clone();
            let k = k.clone();
            async move {
                crate::storage::Storage::delete(&*mem, &k).await.unwrap();
                crate::storage::Storage::put_create(&*mem, &k, bytes::Bytes::from_static(b""))
                    .await
                    .unwrap();
            }
        };
        tear(&keys[2]).await;
        assert_eq!(resume(&repo, 1, 5, &[]).await, (1, 5, 1500, true));
        assert!(
            crate::storage::Storage::head(&*mem, &keys[2])
                .await
                .is_err(),
            "set aside"
        );
        // A torn chunk in the middle: acknowledged WAL is gone, and that is an error.
        tear(&keys[0]).await;
        let opts = options();
        let err = receiver(&repo, &opts)
            .resume_point(1, Lsn(5 * SEG), SEG, &[])
            .await
            .err();
        assert!(matches!(
            err,
            Some(ReceiveError::Repository(Error::Corrupt { .. }))
        ));
    }

    /// On resume the last chunk is created again with the bytes stored (which syncs it on
    /// `file://`) before the session acknowledges anything from it; earlier chunks are not.
    #[tokio::test]
    async fn the_last_chunk_is_made_durable_before_it_is_acknowledged_again() {
        use std::sync::{Arc, Mutex};
        let (mem, repo) = crate::archive::push::tests::memory_repo().await;
        let seg = chunks::segment_name(1, 5, SEG);
        for (start, len) in [(0u64, 1000usize), (1000, 500)] {
            chunks::commit_chunk(&repo, "main", &seg, start, vec![start as u8; len])
                .await
                .unwrap();
        }
        let listed = chunks::list_all(&repo, "main", SEG).await.unwrap();
        let last = listed[&(1, 5)][1].key.clone();
        let stored = crate::storage::Storage::get(&*mem, &last).await.unwrap();
        let created = Arc::new(Mutex::new(Vec::new()));
        let seen = created.clone();
        let hooked = crate::test_support::Hooked::new(mem.clone(), move |call| {
            if let crate::test_support::Call::Create(k, bytes) = call {
                seen.lock().unwrap().push((k.clone(), bytes.clone()));
            }
            Ok(())
        });
        let again = crate::test_support::open_with(Arc::new(hooked)).await;
        assert_eq!(resume(&again, 1, 5, &[]).await, (1, 5, 1500, true));
        assert_eq!(*created.lock().unwrap(), vec![(last, stored)]);
    }
}
