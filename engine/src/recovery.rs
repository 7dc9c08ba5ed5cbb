//! Point-in-time recovery: targets, timeline histories, and the WAL a restore needs.
//!
//! A restore to a target needs (a) a backup whose consistency point precedes the target on the
//! target timeline's history and (b) every WAL segment from that backup's start to the target,
//! switching timelines at the switch points the `.history` files record. [`plan`] works this
//! out from the repository before anything is written, and names exactly what is missing, and
//! the latest target that *is* reachable, when the target is not.
//!
//! The cluster's catalog head ([`crate::store::head`]) says what *should* be there: when a
//! backup it records is gone and the target would have used it, or WAL it records as archived
//! is gone on the way to the target, the plan refuses and names it instead of silently
//! choosing an older backup or an earlier end of the archive (`--backup` still restores a
//! named backup on purpose).
//!
//! Time targets: the segment holding a commit at time T is archived at or after T, so the WAL
//! needed to reach T is everything up to the first segment (on the path) archived at or after T.
//! If no segment was archived after T yet, T is not reachable from the archive.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use crate::archive::push::read_wal_record;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::ObjectInfo;
use crate::store::head::{CatalogHead, HeadBackup};
use crate::store::ids::BackupId;
use crate::store::manifest::{self, Manifest};
use crate::store::Timestamp;
use crate::types::{Lsn, SegmentNo, TimelineId, WalFileName};

mod time_search;

/// What to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive (PostgreSQL replays until archive-get says "absent").
    EndOfArchive,
    /// The backup's consistency point (`recovery_target = 'immediate'`).
    Immediate,
    /// A commit timestamp.
    Time(OffsetDateTime),
    /// An LSN.
    Lsn(Lsn),
    /// A transaction id.
    Xid(u64),
    /// A restore point name.
    Name(String),
}

/// Which timeline to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineTarget {
    /// The newest timeline descending from the backup's.
    Latest,
    /// The backup's own timeline.
    Current,
    /// A specific timeline.
    Id(u32),
}

/// Parses a target time; a timestamp without a time zone is refused, never guessed.
pub fn parse_target_time(s: &str) -> Result<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let t = s.trim();
    if let Ok(v) = OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(v);
    }
    // PostgreSQL style: "2026-11-24 07:10:00.123+00", "+05:30", "+0530".
    let normalized = {
        let mut v = t.replacen(' ', "T", 1);
        if let Some(pos) = v.rfind(['+', '-']).filter(|p| *p > 10) {
            let (head, off) = v.split_at(pos);
            let digits: String = off[1..].chars().filter(|c| c.is_ascii_digit()).collect();
            let off = match digits.len() {
                2 => format!("{}{}:00", &off[..1], digits),
                4 => format!("{}{}:{}", &off[..1], &digits[..2], &digits[2..]),
                _ => off.to_string(),
            };
            v = format!("{head}{off}");
        } else if let Some(head) = v.strip_suffix(" UTC").or_else(|| v.strip_suffix("UTC")) {
            v = format!("{}Z", head.trim_end());
        }
        v
    };
    OffsetDateTime::parse(&normalized, &Rfc3339).map_err(|_| {
        Error::Config(format!(
            "--target-time {s:?}: not a timestamp with a time zone; write it like 2026-11-24 07:10:00+00 or \
             2026-11-24T07:10:00Z (a bare timestamp is refused: the server's time zone would be a guess)"
        ))
    })
}

/// Formats a time as PostgreSQL reads `recovery_target_time`.
pub fn pg_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// One line of a timeline history file: timeline `parent` ended at `switch_lsn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: u32,
    /// Where the child branched off it.
    pub switch_lsn: Lsn,
}

/// Parses a `.history` file.
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let parent = parts.next()?.parse().ok()?;
            let switch_lsn = parts.next()?.parse().ok()?;
            Some(HistoryEntry { parent, switch_lsn })
        })
        .collect()
}

/// The archive of one cluster as the planner needs it: segments per timeline, histories.
///
/// A segment counts as archived only when both its record (`wal/<TLI>/<name>`) and a data
/// object (`waldata/<TLI>/<name>.<content id>`) are listed: a record whose data is gone would
/// make archive-get fail (exit above 125) and PostgreSQL stop there, so the planner must see
/// it as a hole. This costs one more LIST (of the cluster's data objects), not a request per
/// segment. The LIST of records comes first: a push writes data before its record, so a
/// record seen in the first LIST has its data in the second unless it was really lost (or
/// expired meanwhile). Which content id the record names is not checked here (that needs a
/// GET per segment); archive-get checks it, and a data object under another id only exists
/// after a lost race between two pushers of different content, which the loser reports.
///
/// [`ArchiveView::load`] lists the whole archive (verify, the audit). A restore needs much
/// less: the history files of the timelines it may recover along, probed one by one as
/// PostgreSQL probes them ([`ArchiveView::probe_histories`]), and the segments from its
/// backup's start onward ([`ArchiveView::list_segments_from`], S3 `start-after`). An archive
/// kept for weeks holds hundreds of thousands of segments: listed whole, a thousand keys per
/// request, twice, before the first byte of a restore is written.
#[derive(Debug, Default)]
pub struct ArchiveView {
    /// Segment numbers archived per timeline (record and data both present).
    pub segments: BTreeMap<u32, std::collections::BTreeSet<u64>>,
    /// Segments whose record exists but whose data object does not, per timeline.
    pub dataless: BTreeMap<u32, std::collections::BTreeSet<u64>>,
    /// History file per timeline.
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    /// Segment size.
    pub seg_size: u64,
    /// Timelines whose history file was looked for: whether it exists.
    probed: BTreeMap<u32, bool>,
}

/// What [`ArchiveView::probe_histories`] reads for a timeline with no history file: none.
const FIRST_TIMELINE: u32 = 1;

impl ArchiveView {
    /// An empty view of an archive with segments of `seg_size` bytes, to fill.
    pub fn new(seg_size: u64) -> Self {
        ArchiveView {
            seg_size,
            ..Default::default()
        }
    }

    /// Lists the cluster's whole archive (every record and data object) and reads its
    /// history files.
    pub async fn load(repo: &Repository, cluster: &str, seg_size: u64) -> Result<Self> {
        let mut v = ArchiveView::new(seg_size);
        let records = repo
            .storage()
            .list(&layout::wal_pointer_prefix(cluster))
            .await?;
        for o in &records {
            if let Some((tli, name @ WalFileName::History { .. })) =
                layout::parse_wal_pointer(cluster, o.key.as_str())
            {
                let text = crate::archive::get::get_wal_file(repo, cluster, &name).await?;
                v.histories
                    .insert(tli.0, parse_history(&String::from_utf8_lossy(&text)));
                v.probed.insert(tli.0, true);
            }
        }
        // Then the data objects: a record without one is a hole, not an archived segment.
        let data = repo
            .storage()
            .list(&layout::wal_data_prefix(cluster))
            .await?;
        v.absorb(cluster, &records, &data);
        Ok(v)
    }

    /// Reads the history files a backup on timeline `base` may recover along, for
    /// `target`: `base`'s own, an explicit target's, and `base + 1`, `base + 2`, ... up to
    /// the first one missing (what `recovery_target_timeline = 'latest'` probes). Each
    /// timeline is looked for once per view: one GET of its record, and one of its data.
    pub async fn probe_histories(
        &mut self,
        repo: &Repository,
        cluster: &str,
        base: u32,
        target: TimelineTarget,
    ) -> Result<()> {
        self.probe_history(repo, cluster, base).await?;
        if let TimelineTarget::Id(n) = target {
            self.probe_history(repo, cluster, n).await?;
        }
        let mut next = base + 1;
        while self.probe_history(repo, cluster, next).await? {
            next += 1;
        }
        Ok(())
    }

    /// Whether timeline `tli` has a history file; read into the view if so.
    async fn probe_history(&mut self, repo: &Repository, cluster: &str, tli: u32) -> Result<bool> {
        if tli <= FIRST_TIMELINE {
            return Ok(false);
        }
        if let Some(known) = self.probed.get(&tli) {
            return Ok(*known);
        }
        let name = WalFileName::History {
            tli: TimelineId(tli),
        };
        let present = read_wal_record(repo, cluster, &name).await?.is_some();
        if present {
            let text = crate::archive::get::get_wal_file(repo, cluster, &name).await?;
            self.histories
                .insert(tli, parse_history(&String::from_utf8_lossy(&text)));
        }
        self.probed.insert(tli, present);
        Ok(present)
    }

    /// Lists the segments a restore from a backup starting at `start` may need on its way to
    /// timeline `tli`: on each timeline of that path still current at `start`, the records
    /// and data objects from `start`'s segment onward. The histories of the path must be
    /// read first ([`ArchiveView::probe_histories`]).
    pub async fn list_segments_from(
        &mut self,
        repo: &Repository,
        cluster: &str,
        tli: u32,
        start: Lsn,
    ) -> Result<()> {
        let first = start.segment_no(self.seg_size);
        let timelines: Vec<u32> = self
            .path_to(tli)
            .into_iter()
            .filter(|(_, end)| end.is_none_or(|e| e.segment_no(self.seg_size) >= first))
            .map(|(t, _)| t)
            .collect();
        let (mut records, mut data) = (Vec::new(), Vec::new());
        for t in timelines {
            let tli = TimelineId(t);
            // Per timeline, records first: see the type's docs.
            for (prefix, into) in [
                (
                    layout::wal_pointer_timeline_prefix(cluster, tli),
                    &mut records,
                ),
                (layout::wal_data_timeline_prefix(cluster, tli), &mut data),
            ] {
                let storage = repo.storage();
                into.extend(match first.checked_sub(1) {
                    Some(before) => {
                        let after = layout::after_wal_file(&prefix, &self.name(t, before));
                        storage.list_after(&prefix, &after).await?
                    }
                    None => storage.list(&prefix).await?,
                });
            }
        }
        self.absorb(cluster, &records, &data);
        Ok(())
    }

    /// Takes in listed records and data objects: segments with both are archived, records
    /// without data are holes ([`ArchiveView::dataless`]).
    fn absorb(&mut self, cluster: &str, records: &[ObjectInfo], data: &[ObjectInfo]) {
        let seg_size = self.seg_size;
        let mut with_data: BTreeMap<u32, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for o in data {
            if let Some((tli, WalFileName::Segment { segno, .. })) =
                layout::parse_wal_data(cluster, o.key.as_str())
            {
                with_data
                    .entry(tli.0)
                    .or_default()
                    .insert(segno.absolute(seg_size));
            }
        }
        for o in records {
            if let Some((tli, WalFileName::Segment { segno, .. })) =
                layout::parse_wal_pointer(cluster, o.key.as_str())
            {
                let s = segno.absolute(seg_size);
                if with_data.get(&tli.0).is_some_and(|d| d.contains(&s)) {
                    self.segments.entry(tli.0).or_default().insert(s);
                } else {
                    self.dataless.entry(tli.0).or_default().insert(s);
                }
            }
        }
    }

    /// True if segment `segno` of `tli` has a record but no data object.
    pub fn is_dataless(&self, tli: u32, segno: u64) -> bool {
        self.dataless.get(&tli).is_some_and(|d| d.contains(&segno))
    }

    /// True if `name` is a segment whose record exists but whose data object does not.
    pub fn is_lost(&self, name: &WalFileName) -> bool {
        match name {
            WalFileName::Segment { tli, segno } => {
                self.is_dataless(tli.0, segno.absolute(self.seg_size))
            }
            _ => false,
        }
    }

    /// Every record without data, as WAL file names, oldest first per timeline.
    pub fn dataless_names(&self) -> Vec<WalFileName> {
        self.dataless
            .iter()
            .flat_map(|(t, set)| set.iter().map(|s| self.name(*t, *s)))
            .collect()
    }

    /// The ancestry of `tli`: (timeline, end LSN or None for the last), oldest first.
    pub fn path_to(&self, tli: u32) -> Vec<(u32, Option<Lsn>)> {
        let mut path: Vec<(u32, Option<Lsn>)> = self
            .histories
            .get(&tli)
            .map(|h| h.iter().map(|e| (e.parent, Some(e.switch_lsn))).collect())
            .unwrap_or_default();
        path.push((tli, None));
        path
    }

    /// The timeline `recovery_target_timeline = 'latest'` makes PostgreSQL recover along,
    /// for a backup on `base`: it probes the history files of `base + 1`, `base + 2`, ... and
    /// takes the last one before the first missing. That timeline need not descend from the
    /// backup's position (a timeline forked before a later backup of its parent); the plan
    /// checks that, as PostgreSQL would refuse to start.
    pub fn latest_from(&self, base: u32) -> u32 {
        let mut newest = base;
        while self.histories.contains_key(&(newest + 1)) {
            newest += 1;
        }
        newest
    }

    /// Whether a backup consistent at `lsn` on timeline `tli` lies on timeline `target`'s
    /// history (before the point where the history leaves `tli`).
    pub fn on_path(&self, target: u32, tli: u32, lsn: Lsn) -> bool {
        self.path_to(target)
            .iter()
            .any(|(t, end)| *t == tli && end.is_none_or(|e| e >= lsn))
    }

    fn name(&self, tli: u32, segno: u64) -> WalFileName {
        WalFileName::Segment {
            tli: TimelineId(tli),
            segno: SegmentNo::from_absolute(segno, self.seg_size),
        }
    }

    /// Segments needed from `start` (on the path to `tli`) up to and including segment `end`
    /// of the last timeline: (timeline, segno) in replay order.
    pub fn needed(&self, tli: u32, start: Lsn, end_segno_on_last: Option<u64>) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut seg = start.segment_no(self.seg_size);
        for (t, switch) in self.path_to(tli) {
            let last = match switch {
                Some(sw) => {
                    if sw.segment_no(self.seg_size) < seg {
                        continue; // this ancestor ended before the backup started
                    }
                    sw.segment_no(self.seg_size)
                }
                None => match end_segno_on_last {
                    Some(e) => e,
                    None => self
                        .segments
                        .get(&t)
                        .and_then(|s| s.iter().next_back().copied())
                        .unwrap_or(seg),
                },
            };
            while seg <= last {
                out.push((t, seg));
                seg += 1;
            }
            // The switch segment is replayed from the child timeline.
            if switch.is_some() {
                seg = last;
                out.pop();
            }
        }
        out
    }

    /// The first needed segment that is not archived.
    pub fn first_missing(&self, needed: &[(u32, u64)]) -> Option<WalFileName> {
        needed
            .iter()
            .find(|(t, s)| !self.segments.get(t).is_some_and(|set| set.contains(s)))
            .map(|(t, s)| self.name(*t, *s))
    }
}

/// The restore plan, computed before anything is written.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Chosen backup.
    pub backup_id: String,
    /// Why it was chosen.
    pub reason: String,
    /// Timeline recovery follows.
    pub timeline: u32,
    /// First WAL file needed.
    pub first_wal: String,
    /// Last WAL file known to be needed.
    pub last_wal: String,
    /// Segments to fetch.
    pub wal_segments: u64,
    /// Bytes of files to restore.
    pub restore_bytes: u64,
}

async fn pointer_time(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
) -> Result<Option<Timestamp>> {
    Ok(read_wal_record(repo, cluster, name)
        .await?
        .map(|p| p.archived_at))
}

/// A target time as the operator gave it (in its own offset).
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

/// Chooses the backup and checks the WAL to the target is continuous.
pub async fn plan(
    repo: &Repository,
    cluster: &str,
    backup: Option<&str>,
    target: &Target,
    timeline: TimelineTarget,
) -> Result<(Manifest, Plan)> {
    let ids = manifest::list_ids(repo, cluster).await?;
    let head = read_head_for_restore(repo, cluster, backup).await?;
    let head_missing: Vec<(&BackupId, &HeadBackup)> = head
        .as_ref()
        .map(|h| {
            h.backups
                .iter()
                .filter(|(id, _)| !ids.iter().any(|i| i == id.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(b) = backup {
        if let Some((id, _)) = head_missing.iter().find(|(id, _)| id.as_str() == b) {
            return Err(missing_backup_error(cluster, head.as_ref(), id, None));
        }
    }
    if ids.is_empty() {
        if let Some((id, _)) = head_missing.last() {
            return Err(missing_backup_error(cluster, head.as_ref(), id, None));
        }
        return Err(Error::NotFound(format!(
            "cluster {cluster:?} has no backup yet: run `pgcairn backup` first"
        )));
    }
    let record = crate::store::cluster::read(repo, cluster).await?;
    let seg_size = record
        .map(|r| r.wal_segment_size)
        .unwrap_or(crate::types::DEFAULT_WAL_SEGMENT_SIZE);
    // Histories now, per candidate; segments once the backup is chosen, from its start.
    let mut view = ArchiveView::new(seg_size);

    // A restore point pgcairn recorded places a name target like an LSN.
    let named_lsn = match target {
        Target::Name(n) => crate::backup::read_restore_point(repo, cluster, n)
            .await?
            .map(|rp| rp.lsn),
        _ => None,
    };
    // Candidates newest first.
    let mut chosen: Option<(Manifest, String)> = None;
    let mut oldest: Option<Manifest> = None;
    // The newest backup that fits the target but lies off the target timeline's history.
    let mut off_path: Option<(String, u32, Lsn, u32)> = None;
    for id in ids.iter().rev() {
        if let Some(b) = backup {
            if b != id {
                continue;
            }
        }
        let m = manifest::load_head(repo, cluster, id).await?;
        view.probe_histories(repo, cluster, m.timeline, timeline)
            .await?;
        let tli = resolve_timeline(&view, timeline, &m);
        let on_path = view.on_path(tli, m.timeline, m.stop_lsn);
        let fits = match target {
            Target::Time(t) => m.stop_time.datetime() < *t,
            Target::Lsn(l) => m.stop_lsn <= *l,
            Target::Xid(x) => m.may_commit_after_stop(*x),
            Target::Name(_) => named_lsn.is_none_or(|l| m.stop_lsn <= l),
            _ => true,
        };
        if backup.is_some() {
            if !fits {
                return Err(Error::Config(format!(
                    "backup {id} is not usable for this target: its consistency point ({}, lsn {}) is not before the target",
                    m.stop_time, m.stop_lsn
                )));
            }
            if !on_path {
                return Err(Error::Config(format!(
                    "backup {id} (timeline {}, consistent at lsn {}) is not on the history of \
                     timeline {tli}, the timeline to recover along: PostgreSQL would refuse to \
                     start; restore it with --target-timeline {} or choose another backup",
                    m.timeline, m.stop_lsn, m.timeline
                )));
            }
            chosen = Some((m, "requested with --backup".into()));
            break;
        }
        if fits && !on_path && off_path.is_none() {
            off_path = Some((m.id.clone(), m.timeline, m.stop_lsn, tli));
        }
        if fits && on_path {
            let why = match target {
                Target::Time(t) => format!("newest backup whose consistency point ({}) precedes {}", m.stop_time, rfc3339(*t)),
                Target::Lsn(l) => format!("newest backup whose consistency point (lsn {}) precedes lsn {l}", m.stop_lsn),
                Target::Xid(x) => format!(
                    "newest backup consistent before transaction {x} committed ({})",
                    match (m.xmax_after_stop, m.xmin_after_stop) {
                        (Some(xmax), _) if *x >= xmax => format!("it had not started when the backup stopped: next xid then {xmax}"),
                        (Some(_), _) => "it was still running when the backup stopped".into(),
                        (None, Some(xmin)) => format!("oldest running xid after its stop: {xmin}"),
                        (None, None) => "the backup recorded no snapshot".into(),
                    }
                ),
                Target::Name(n) => match named_lsn {
                    Some(l) => format!("newest backup whose consistency point (lsn {}) precedes restore point {n:?} (lsn {l})", m.stop_lsn),
                    None => format!("newest backup (restore point {n:?} was not created through pgcairn, so its position is unknown before replay)"),
                },
                Target::EndOfArchive | Target::Immediate => "newest backup".into(),
            };
            chosen = Some((m, why));
            break;
        }
        oldest = Some(m);
    }
    // A newer backup the catalog head records for this target, whose manifest is gone: using
    // an older one instead would silently give a different (and maybe unintended) restore.
    if backup.is_none() {
        let newer_than = chosen.as_ref().map(|(m, _)| m.id.as_str());
        let fits_head = |hb: &HeadBackup| match target {
            Target::Time(t) => hb.stop_time.datetime() < *t,
            Target::Lsn(l) => hb.stop_lsn <= *l,
            Target::Name(_) => named_lsn.is_none_or(|l| hb.stop_lsn <= l),
            _ => true,
        };
        if let Some((id, _)) = head_missing.iter().rev().find(|(id, hb)| {
            fits_head(hb) && newer_than.is_none_or(|c| manifest::newer(id.as_str(), c))
        }) {
            return Err(missing_backup_error(cluster, head.as_ref(), id, newer_than));
        }
    }
    let Some((m, reason)) = chosen else {
        if let Some(b) = backup {
            return Err(Error::NotFound(format!(
                "backup {b} not found in cluster {cluster:?}; see `pgcairn info`"
            )));
        }
        if let Some((id, tli, lsn, target_tli)) = off_path {
            let fork = view
                .path_to(target_tli)
                .iter()
                .find(|(t, _)| *t == tli)
                .and_then(|(_, end)| *end);
            let left = match fork {
                Some(at) => {
                    format!("timeline {target_tli} left timeline {tli} at lsn {at}, before it")
                }
                None => format!("timeline {target_tli} does not descend from timeline {tli}"),
            };
            return Err(Error::Config(format!(
                "no backup lies on the history of timeline {target_tli}, the timeline to recover along: \
                 the newest backup for this target, {id} (timeline {tli}, consistent at lsn {lsn}), \
                 is not on it ({left}); restore along timeline {tli} with --target-timeline {tli}, \
                 or take a backup on timeline {target_tli}"
            )));
        }
        let o = oldest.expect("at least one backup");
        return Err(Error::Config(format!(
            "no backup precedes the target: the oldest backup {} is consistent at {} (lsn {}); that is the earliest reachable target",
            o.id, o.stop_time, o.stop_lsn
        )));
    };
    view.list_segments_from(
        repo,
        cluster,
        resolve_timeline(&view, timeline, &m),
        m.start_lsn,
    )
    .await?;
    // WAL a standby backup carries itself is restored into pg_wal, where recovery reads it
    // when the archive lacks it: present for this restore.
    for (t, s) in m.carried_segments(seg_size) {
        view.segments.entry(t).or_default().insert(s);
    }
    let tli = resolve_timeline(&view, timeline, &m);
    let unreachable = Unreachable {
        repo,
        cluster,
        view: &view,
        tli,
        m: &m,
    };
    // WAL the catalog head records as archived on the way, that storage no longer holds.
    let head_lost = head
        .as_ref()
        .and_then(|h| first_head_lost(h, &view, tli, &m));
    // How far the WAL must reach on the last timeline.
    let end_seg: Option<u64> = match target {
        Target::Lsn(l) => Some(l.segment_no(seg_size)),
        Target::Name(_) if named_lsn.is_some() => named_lsn.map(|l| l.segment_no(seg_size)),
        Target::Immediate => Some(m.consistency_segment(seg_size)),
        Target::Time(t) => {
            let all = view.needed(tli, m.start_lsn, None);
            // The records' archive times: bisected on a long list ([`time_search`]).
            let names: Vec<WalFileName> = all.iter().map(|(tl, s)| view.name(*tl, *s)).collect();
            let found = time_search::first_at_or_after(names.len(), *t, |i| {
                let name = &names[i];
                async move {
                    Ok::<_, Error>(
                        pointer_time(repo, cluster, name)
                            .await?
                            .map(|at| at.datetime()),
                    )
                }
            })
            .await?;
            let found = match found {
                time_search::Found::At(i) => Some(all[i].1),
                // A gap is reported below.
                time_search::Found::Gap(_) | time_search::Found::NotReached => None,
            };
            match found {
                Some(s) => Some(s),
                None if head_lost.is_some() => {
                    let lost = head_lost.expect("checked");
                    let what = format!("target time {}", rfc3339(*t));
                    return Err(unreachable.head_lost(head.as_ref(), &lost, &what).await?);
                }
                None => {
                    if let Some(lost) = view.first_missing(&all).filter(|n| view.is_lost(n)) {
                        let what = format!("target time {}", rfc3339(*t));
                        return Err(unreachable.lost_data(&lost, &what).await?);
                    }
                    let reachable = unreachable.reachable_end().await?;
                    return Err(Error::Config(format!(
                        "target time {} is not reachable: the archive has no WAL written after it{}. {reachable}",
                        rfc3339(*t),
                        view.first_missing(&all).map(|n| format!(" (first missing segment {n})")).unwrap_or_default()
                    )));
                }
            }
        }
        // End of archive, xid, name: at least the backup's consistency WAL.
        _ => None,
    };
    // What must be present: from the backup's start to the target's segment (or, when the
    // target's position is unknown before replay, to the backup's consistency point).
    let stop_seg = m.consistency_segment(seg_size);
    let required = view.needed(
        tli,
        m.start_lsn,
        Some(end_seg.unwrap_or(stop_seg).max(stop_seg)),
    );
    if let Some(missing) = view.first_missing(&required) {
        if head_lost.as_ref() == Some(&missing) {
            return Err(unreachable
                .head_lost(head.as_ref(), &missing, "the target")
                .await?);
        }
        if view.is_lost(&missing) {
            return Err(unreachable.lost_data(&missing, "the target").await?);
        }
        let reachable = unreachable.reachable_end().await?;
        return Err(Error::Config(format!(
            "target not reachable from backup {}: WAL segment {missing} is missing from the archive (timeline {tli}). {reachable}",
            m.id
        )));
    }
    let needed = match end_seg {
        Some(_) => required,
        // Replay would stop at WAL the head says was archived: not the end of the archive.
        None if head_lost.is_some() => {
            let lost = head_lost.expect("checked");
            let what = match target {
                Target::EndOfArchive => "the end of the archive".to_string(),
                Target::Xid(x) => format!("transaction {x}"),
                Target::Name(n) => format!("restore point {n:?}"),
                _ => "the target".to_string(),
            };
            return Err(unreachable.head_lost(head.as_ref(), &lost, &what).await?);
        }
        None => {
            // Replay continues until the first gap: PostgreSQL sees that as the end of the archive.
            let all = view.needed(tli, m.start_lsn, None);
            let cut = all
                .iter()
                .position(|(t, s)| !view.segments.get(t).is_some_and(|set| set.contains(s)));
            // A hole PostgreSQL would reach whose record is still there: archive-get fails on
            // it (the data is lost, not absent) and recovery stops with an error, not at the
            // end of the archive.
            if let Some(&(t, s)) = cut.and_then(|c| all.get(c)) {
                if view.is_dataless(t, s) {
                    let lost = view.name(t, s);
                    match target {
                        Target::EndOfArchive => {
                            let what = "the end of the archive";
                            return Err(unreachable.lost_data(&lost, what).await?);
                        }
                        _ => tracing::warn!(
                            "WAL segment {lost} is recorded but its data object is missing: \
                             if the target lies after it, recovery will stop there with an error \
                             (run `pgcairn verify`)"
                        ),
                    }
                }
            }
            all[..cut.unwrap_or(all.len())].to_vec()
        }
    };
    let first = needed
        .first()
        .map(|(t, s)| view.name(*t, *s).to_string())
        .unwrap_or_default();
    let last = needed
        .last()
        .map(|(t, s)| view.name(*t, *s).to_string())
        .unwrap_or_default();
    let plan = Plan {
        backup_id: m.id.clone(),
        reason,
        timeline: tli,
        first_wal: first,
        last_wal: last,
        wal_segments: needed.len() as u64,
        restore_bytes: m.stats.size,
    };
    Ok((m, plan))
}

/// Reads the catalog head for a restore. A head that is missing (while the cluster is
/// bound), rolled back or forged means what was deleted cannot be told: refused, unless the
/// operator names the backup (`--backup`), taking responsibility for the choice.
async fn read_head_for_restore(
    repo: &Repository,
    cluster: &str,
    backup: Option<&str>,
) -> Result<Option<CatalogHead>> {
    let problem = match crate::store::head::read(repo, cluster).await {
        Ok(Some((h, _))) => return Ok(Some(h)),
        Ok(None) => match crate::store::cluster::read(repo, cluster).await? {
            None => return Ok(None),
            Some(_) => Error::corrupt(
                layout::catalog_head(cluster).to_string(),
                "the catalog head is missing although the cluster is bound: it was deleted outside pgcairn, so \
                 backups or WAL deleted with it cannot be noticed",
            ),
        },
        Err(e @ (Error::Corrupt { .. } | Error::Key(_))) => e,
        Err(e) => return Err(e),
    };
    match backup {
        Some(b) => {
            tracing::warn!("{problem}; restoring backup {b} as requested with --backup, without that check");
            Ok(None)
        }
        None => Err(Error::corrupt(
            layout::catalog_head(cluster).to_string(),
            format!(
                "{problem}. Nothing was written. Run `pgcairn verify`; to restore anyway from what storage holds, \
                 name the backup with --backup ID (see `pgcairn info`)"
            ),
        )),
    }
}

fn missing_backup_error(
    cluster: &str,
    head: Option<&CatalogHead>,
    id: &BackupId,
    instead: Option<&str>,
) -> Error {
    let g = head.map(|h| h.generation).unwrap_or(0);
    let instead = match instead {
        Some(other) => format!(
            " Restoring the older backup {other} instead would silently recover something else: refused. To do that on \
             purpose, name it with --backup {other}."
        ),
        None => String::new(),
    };
    Error::corrupt(
        layout::backup_manifest(cluster, id.as_str()).to_string(),
        format!(
            "backup {id} would be used for this target and is recorded in the catalog head (generation {g}), but its manifest \
             is missing: it was deleted outside pgcairn. Nothing was written.{instead} Run `pgcairn verify` to see everything missing"
        ),
    )
}

/// The first segment on the way from `m` along `tli` (up to the head's high-water mark on
/// `tli`) that the head records as archived and storage does not hold.
fn first_head_lost(
    head: &CatalogHead,
    view: &ArchiveView,
    tli: u32,
    m: &Manifest,
) -> Option<WalFileName> {
    let listed_end = view
        .segments
        .get(&tli)
        .and_then(|s| s.iter().next_back().copied());
    let head_end = head.timelines.get(&tli).map(|t| t.high);
    let end = listed_end.max(head_end)?;
    view.needed(tli, m.start_lsn, Some(end))
        .into_iter()
        .map(|(t, s)| view.name(t, s))
        .find(|n| {
            head.must_exist(n)
                && !view.segments.get(&n.timeline().0).is_some_and(|set| {
                    n.segment()
                        .is_some_and(|s| set.contains(&s.absolute(view.seg_size)))
                })
        })
}

fn resolve_timeline(view: &ArchiveView, t: TimelineTarget, m: &Manifest) -> u32 {
    match t {
        TimelineTarget::Current => m.timeline,
        TimelineTarget::Id(n) => n,
        TimelineTarget::Latest => view.latest_from(m.timeline),
    }
}

/// What explains a target that cannot be reached from the chosen backup: where the restore
/// would start, on which timeline, and the archive as it is.
struct Unreachable<'a> {
    repo: &'a Repository,
    cluster: &'a str,
    view: &'a ArchiveView,
    tli: u32,
    m: &'a Manifest,
}

impl Unreachable<'_> {
    /// The error for a needed segment that is missing although the catalog head records its
    /// timeline archived past it: deleted outside pgcairn (a segment whose record is there but
    /// whose data is gone gets [`Self::lost_data`]'s error).
    async fn head_lost(
        &self,
        head: Option<&CatalogHead>,
        lost: &WalFileName,
        what: &str,
    ) -> Result<Error> {
        if self.view.is_lost(lost) {
            return self.lost_data(lost, what).await;
        }
        let (g, high) = head
            .map(|h| {
                let t = lost.timeline().0;
                (
                    h.generation,
                    h.timelines
                        .get(&t)
                        .map(|x| h.segment_name(t, x.high).to_string())
                        .unwrap_or_default(),
                )
            })
            .unwrap_or_default();
        let reachable = self.reachable_end().await?;
        Ok(Error::corrupt(
        layout::wal_pointer(self.cluster, lost).to_string(),
        format!(
            "{what} is not reachable from backup {}: WAL segment {lost} is missing, but the catalog head (generation {g}) \
             records timeline {} archived up to {high}: it was deleted outside pgcairn, and recovery would stop early at \
             {lost} instead of reaching {what}. {reachable}. Nothing was written. Put the segment back (or `pgcairn \
             archive-push` it from a server that still has it), or restore to an explicit target before {lost}; \
             `pgcairn verify` lists everything missing",
            self.m.id,
            lost.timeline().0
        ),
    ))
    }

    /// The error for a needed segment whose record exists but whose data object is gone: damage
    /// (exit 1), naming the segment, its lost object, the latest reachable point and what to do.
    async fn lost_data(&self, lost: &WalFileName, what: &str) -> Result<Error> {
        let (repo, cluster, tli, m) = (self.repo, self.cluster, self.tli, self.m);
        let pointer_key = layout::wal_pointer(cluster, lost);
        let data_key = read_wal_record(repo, cluster, lost)
            .await
            .ok()
            .flatten()
            .and_then(|p| crate::crypto::ContentId::from_hex(&p.content_id))
            .map(|id| layout::wal_data(cluster, lost, &id).to_string())
            .unwrap_or_else(|| {
                format!(
                    "{}{}/{lost}.<content id>",
                    layout::wal_data_prefix(cluster),
                    lost.timeline()
                )
            });
        let reachable = self.reachable_end().await?;
        Ok(Error::corrupt(
        data_key,
        format!(
            "{what} is not reachable from backup {}: WAL segment {lost} (timeline {tli}) is recorded in the archive \
             ({pointer_key}) but its data object is missing, so archive-get would fail there and PostgreSQL stop recovery. \
             {reachable}. Nothing was written. Restore to a target before {lost}, or, if the server or another copy still \
             has the file, `pgcairn archive-push` it again (that restores the data object); `pgcairn verify` lists every such segment",
            m.id
        ),
    ))
    }

    /// "The latest reachable point is ..." for error messages.
    async fn reachable_end(&self) -> Result<String> {
        let (repo, cluster, view, tli, m) = (self.repo, self.cluster, self.view, self.tli, self.m);
        let all = view.needed(tli, m.start_lsn, None);
        let mut last = None;
        for (t, s) in &all {
            if !view.segments.get(t).is_some_and(|set| set.contains(s)) {
                break;
            }
            last = Some(view.name(*t, *s));
        }
        Ok(match last {
            Some(name)
                if name.segment().map(|s| s.absolute(view.seg_size))
                    >= Some(m.consistency_segment(view.seg_size)) =>
            {
                let when = pointer_time(repo, cluster, &name)
                    .await?
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into());
                format!(
                "The latest reachable target from backup {} is the end of {name} (archived {when}); the earliest is its consistency point {} (lsn {})",
                m.id, m.stop_time, m.stop_lsn
            )
            }
            _ => format!(
            "Backup {} itself is not restorable: the WAL up to its consistency point is incomplete",
            m.id
        ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_times_need_a_zone() {
        assert!(parse_target_time("2026-11-24 07:10:00").is_err());
        assert!(parse_target_time("2026-11-24").is_err());
        let a = parse_target_time("2026-11-24 07:10:00+00").unwrap();
        let b = parse_target_time("2026-11-24T07:10:00Z").unwrap();
        let c = parse_target_time("2026-11-24 09:10:00+0200").unwrap();
        let d = parse_target_time("2026-11-24 12:40:00.000+05:30").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_eq!(pg_time(c), "2026-11-24 07:10:00.000000+00");
    }

    #[tokio::test]
    async fn wal_a_standby_backup_carries_counts_for_that_backup_only() {
        use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
        use crate::pg::wal_header::tests::fake_segment;
        let (_mem, repo) = memory_repo().await;
        let seg = 16u64 << 20;
        for n in 1..=2u64 {
            let name: WalFileName = format!("0000000100000000{n:08X}").parse().unwrap();
            let data = fake_segment(7, 1, n * seg, seg as u32, seg as usize);
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
                .await
                .unwrap();
        }
        // Consistent in segment 3, which the archive does not hold (the primary was down).
        let mut m = crate::test_support::manifest(
            "20261202-180000F",
            "0/1000028",
            "0/3000100",
            "2026-12-02T18:00:01Z",
            &[],
        );
        m.from_standby = true;
        manifest::save(&repo, &m).await.unwrap();
        let e = plan(
            &repo,
            "main",
            Some(&m.id),
            &Target::Immediate,
            TimelineTarget::Latest,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("000000010000000000000003"), "{e}");

        let mut carried = m.clone();
        carried.id = "20261202-180100F".into();
        carried.wal_in_backup = vec!["000000010000000000000003".into()];
        manifest::save(&repo, &carried).await.unwrap();
        let (chosen, p) = plan(
            &repo,
            "main",
            Some(&carried.id),
            &Target::Immediate,
            TimelineTarget::Latest,
        )
        .await
        .unwrap();
        assert_eq!(chosen.id, carried.id);
        assert_eq!(p.last_wal, "000000010000000000000003");
        assert_eq!(p.wal_segments, 3);
        // The other backup still lacks it.
        assert!(plan(
            &repo,
            "main",
            Some(&m.id),
            &Target::Immediate,
            TimelineTarget::Latest
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn a_record_whose_data_object_is_gone_is_a_hole_not_an_archived_segment() {
        use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
        use crate::pg::wal_header::tests::fake_segment;
        use crate::storage::Storage;
        let (mem, repo) = memory_repo().await;
        let seg = 16u64 << 20;
        let mut lost_key = None;
        for n in 1..=4u64 {
            let name: WalFileName = format!("0000000100000000{n:08X}").parse().unwrap();
            let data = fake_segment(7, 1, n * seg, seg as u32, seg as usize);
            if n == 3 {
                lost_key = Some(layout::wal_data(
                    "main",
                    &name,
                    &repo.codec().content_id(&data),
                ));
            }
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
                .await
                .unwrap();
        }
        mem.delete(&lost_key.unwrap()).await.unwrap();
        let v = ArchiveView::load(&repo, "main", seg).await.unwrap();
        assert_eq!(
            v.segments[&1].iter().copied().collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert!(v.is_dataless(1, 3));
        let needed = v.needed(1, Lsn(seg), Some(4));
        let missing = v.first_missing(&needed).unwrap();
        assert_eq!(missing.to_string(), "000000010000000000000003");
        assert!(v.is_lost(&missing));
        assert_eq!(
            v.dataless_names()
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["000000010000000000000003"]
        );
    }

    #[tokio::test]
    async fn a_restore_lists_the_archive_from_its_backups_start_only() {
        use crate::archive::push::{push_wal_file, tests::memory_repo, WalSource};
        use crate::pg::wal_header::tests::fake_segment;
        use crate::storage::Storage;
        let (mem, repo) = memory_repo().await;
        let seg = 1u64 << 20;
        let name = |n: u64| -> WalFileName { format!("0000000100000000{n:08X}").parse().unwrap() };
        let mut lost_key = None;
        for n in 1..=40u64 {
            let data = fake_segment(7, 1, n * seg, seg as u32, seg as usize);
            if n == 38 {
                let id = repo.codec().content_id(&data);
                lost_key = Some(layout::wal_data("main", &name(n), &id));
            }
            push_wal_file(&repo, "main", &name(n), WalSource::Bytes(data))
                .await
                .unwrap();
        }
        // Starts in segment 36 (0x24), consistent in 37.
        let m = crate::test_support::manifest(
            "20261202-180000F",
            "0/2400028",
            "0/2500100",
            "2026-12-02T18:00:01Z",
            &[],
        );
        manifest::save(&repo, &m).await.unwrap();
        let to_the_end = || {
            plan(
                &repo,
                "main",
                None,
                &Target::EndOfArchive,
                TimelineTarget::Latest,
            )
        };
        let before = mem.keys_listed();
        let (_, p) = to_the_end().await.unwrap();
        let listed = mem.keys_listed() - before;
        assert_eq!(p.first_wal, name(36).to_string());
        assert_eq!(p.last_wal, name(40).to_string());
        assert_eq!(p.wal_segments, 5);
        // Records and data objects of segments 36 to 40 and the catalog's few: not the 80
        // objects of the whole archive.
        assert!(listed < 30, "{listed} keys listed");
        // A hole after the start is still seen for what it is: a record without its data.
        mem.delete(&lost_key.unwrap()).await.unwrap();
        let e = to_the_end().await.unwrap_err().to_string();
        assert!(
            e.contains("data object is missing") && e.contains(&name(38).to_string()),
            "{e}"
        );
    }

    #[test]
    fn history_paths_switch_timelines_at_the_switch_point() {
        let seg = 16u64 << 20;
        let mut v = ArchiveView {
            seg_size: seg,
            ..Default::default()
        };
        v.histories.insert(
            2,
            parse_history("1\t0/5000100\tno recovery target specified\n"),
        );
        v.histories
            .insert(3, parse_history("1\t0/5000100\tx\n2\t0/8000000\ty\n"));
        for s in 1..=5 {
            v.segments.entry(1).or_default().insert(s);
        }
        for s in 5..=9 {
            v.segments.entry(2).or_default().insert(s);
        }
        let start: Lsn = "0/2000028".parse().unwrap();
        let needed = v.needed(2, start, Some(7));
        assert_eq!(needed, vec![(1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7)]);
        assert_eq!(v.first_missing(&needed), None);
        // 'latest' from timeline 1 is 3, as PostgreSQL probes history files.
        assert_eq!(v.latest_from(1), 3);
        assert_eq!(v.latest_from(3), 3);
        assert!(v.on_path(3, 1, "0/3000000".parse().unwrap()));
        assert!(
            !v.on_path(3, 1, "0/6000000".parse().unwrap()),
            "a backup after the fork is not on timeline 3's path"
        );
        assert!(v.on_path(3, 2, "0/6000000".parse().unwrap()));
        assert!(!v.on_path(3, 2, "0/9000000".parse().unwrap()));
        let to3 = v.needed(3, start, Some(9));
        assert_eq!(
            v.first_missing(&to3).unwrap().to_string(),
            "000000030000000000000008"
        );
    }
}
