//! What the catalog head says must exist and storage no longer holds: the comparison
//! `verify`, `info` and `restore` report. Costs the LISTs those commands make anyway (the
//! cluster's manifests, WAL records and WAL data objects) and one GET of the head.

use std::collections::BTreeSet;

use serde::Serialize;

use super::head::{self, CatalogHead};
use crate::error::{Error, Result};
use crate::recovery::ArchiveView;
use crate::repo::{layout, Repository};

/// A run of missing WAL segments on one timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MissingWal {
    /// Timeline.
    pub timeline: u32,
    /// First missing segment.
    pub first: String,
    /// Last missing segment.
    pub last: String,
    /// Segments in the run.
    pub segments: u64,
    /// `record`: the WAL record is gone; `data`: the record is there but not its data.
    pub what: String,
}

/// The head against storage, for one cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeadAudit {
    /// Cluster.
    pub cluster: String,
    /// The head's generation (`None`: no head).
    pub generation: Option<u64>,
    /// The head itself is missing, rolled back or unreadable (then nothing else is known).
    pub head_problem: Option<String>,
    /// Backups the head records whose manifest is gone.
    pub missing_backups: Vec<String>,
    /// WAL the head records as archived that is gone.
    pub missing_wal: Vec<MissingWal>,
    /// History files of timelines the head records that are gone.
    pub missing_history: Vec<String>,
    /// Backups the head records as pinned whose pin object is gone (expire keeps them all
    /// the same).
    pub missing_pins: Vec<String>,
    /// The latest verify and drill the head records.
    pub last_verify: Option<head::CheckResult>,
    /// The latest drill.
    pub last_drill: Option<head::CheckResult>,
}

impl HeadAudit {
    /// True when storage holds everything the head records.
    pub fn is_clean(&self) -> bool {
        self.head_problem.is_none()
            && self.missing_backups.is_empty()
            && self.missing_wal.is_empty()
            && self.missing_history.is_empty()
            && self.missing_pins.is_empty()
    }

    /// Each finding as (object, what is wrong), naming the object to look for.
    pub fn findings(&self) -> Vec<(String, String)> {
        let c = &self.cluster;
        let g = self.generation.unwrap_or(0);
        let mut out = Vec::new();
        if let Some(p) = &self.head_problem {
            out.push((layout::catalog_head(c).to_string(), p.clone()));
        }
        for id in &self.missing_backups {
            out.push((
                layout::backup_manifest(c, id).to_string(),
                format!("backup {id} is recorded in the catalog head (generation {g}) but its manifest is missing: it was deleted outside pgcairn"),
            ));
        }
        for w in &self.missing_wal {
            let what = match w.what.as_str() {
                "data" => "their records are there but their data objects are missing",
                _ => "their WAL records are missing",
            };
            out.push((
                format!("{}{:08X}/{}", layout::wal_pointer_prefix(c), w.timeline, w.first),
                format!(
                    "WAL {}..{} ({} segments, timeline {}) is recorded as archived in the catalog head (generation {g}) but {what}: \
                     it was deleted outside pgcairn",
                    w.first, w.last, w.segments, w.timeline
                ),
            ));
        }
        for id in &self.missing_pins {
            out.push((
                layout::pin(c, id).to_string(),
                format!(
                    "backup {id} is pinned in the catalog head (generation {g}) but its pin object is missing: it was \
                     deleted outside pgcairn. expire keeps the backup all the same; `pgcairn pin {id}` writes the object again"
                ),
            ));
        }
        for h in &self.missing_history {
            out.push((
                format!("{}{h}", layout::wal_pointer_prefix(c)),
                format!("history file {h} of a timeline the catalog head records is missing"),
            ));
        }
        out
    }
}

/// Compares a head with what storage lists. `ids`: the cluster's listed backup ids; `pins`:
/// the backup ids its listed pin objects name.
pub fn compare(
    head: &CatalogHead,
    ids: &[String],
    pins: &[String],
    view: &ArchiveView,
) -> HeadAudit {
    let listed: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let pins: BTreeSet<&str> = pins.iter().map(String::as_str).collect();
    let mut audit = HeadAudit {
        cluster: head.cluster.to_string(),
        generation: Some(head.generation),
        last_verify: head.last_verify.clone(),
        last_drill: head.last_drill.clone(),
        ..Default::default()
    };
    audit.missing_backups = head
        .backups
        .keys()
        .filter(|id| !listed.contains(id.as_str()))
        .map(|id| id.to_string())
        .collect();
    // A pinned backup whose manifest is gone is reported as such already.
    audit.missing_pins = head
        .pinned
        .iter()
        .filter(|id| listed.contains(id.as_str()) && !pins.contains(id.as_str()))
        .map(|id| id.to_string())
        .collect();
    for (tli, t) in &head.timelines {
        let present = view.segments.get(tli);
        let mut run: Option<(u64, u64, &'static str)> = None;
        let flush = |run: &mut Option<(u64, u64, &'static str)>, out: &mut Vec<MissingWal>| {
            if let Some((a, b, what)) = run.take() {
                out.push(MissingWal {
                    timeline: *tli,
                    first: head.segment_name(*tli, a).to_string(),
                    last: head.segment_name(*tli, b).to_string(),
                    segments: b - a + 1,
                    what: what.into(),
                });
            }
        };
        for seg in t.first..=t.high {
            let missing = t.must_exist(seg) && !present.is_some_and(|p| p.contains(&seg));
            if !missing {
                flush(&mut run, &mut audit.missing_wal);
                continue;
            }
            let what = if view.is_dataless(*tli, seg) {
                "data"
            } else {
                "record"
            };
            match &mut run {
                Some((_, b, w)) if *b + 1 == seg && *w == what => *b = seg,
                _ => {
                    flush(&mut run, &mut audit.missing_wal);
                    run = Some((seg, seg, what));
                }
            }
        }
        flush(&mut run, &mut audit.missing_wal);
        if *tli > 1 && !view.histories.contains_key(tli) {
            audit.missing_history.push(format!("{tli:08X}.history"));
        }
    }
    audit
}

/// Reads the head and compares it with storage; a missing, rolled-back or forged head is
/// reported in [`HeadAudit::head_problem`], not returned as an error. `view`: the archive as
/// already listed, if the caller has it.
pub async fn audit(
    repo: &Repository,
    cluster: &str,
    view: Option<&ArchiveView>,
) -> Result<HeadAudit> {
    let problem = |p: String| HeadAudit {
        cluster: cluster.to_string(),
        head_problem: Some(p),
        ..Default::default()
    };
    let head = match head::read(repo, cluster).await {
        Ok(Some((h, _))) => h,
        Ok(None) => {
            return Ok(
                match crate::store::cluster::read(repo, cluster).await {
                    Ok(Some(_)) => problem(
                        "the catalog head is missing although the cluster is bound (its cluster record exists; \
                         the head is created before it): it was deleted outside pgcairn, so what it recorded \
                         cannot be checked"
                            .into(),
                    ),
                    Ok(None) => HeadAudit {
                        cluster: cluster.to_string(),
                        ..Default::default()
                    },
                    Err(e) => problem(e.to_string()),
                },
            )
        }
        Err(e @ (Error::Corrupt { .. } | Error::Key(_))) => return Ok(problem(e.to_string())),
        Err(e) => return Err(e),
    };
    let ids = crate::store::manifest::list_ids(repo, cluster).await?;
    let loaded;
    let view = match view {
        Some(v) => v,
        None => {
            loaded = ArchiveView::load(repo, cluster, head.wal_segment_size).await?;
            &loaded
        }
    };
    let prefix = layout::pins_prefix(cluster);
    let pins: Vec<String> = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key.as_str().strip_prefix(&prefix).map(str::to_string))
        .collect();
    let mut found = compare(&head, &ids, &pins, view);
    if !found.missing_pins.is_empty() {
        // `unpin` updates the head before it deletes the pin object: a pin unpinned between
        // our read of the head and our listing is not missing. Only what the head still
        // records counts.
        if let Ok(Some((now, _))) = head::read(repo, cluster).await {
            found.missing_pins.retain(|id| {
                now.pinned
                    .contains(&crate::store::ids::BackupId::new(id.clone()))
            });
        }
    }
    Ok(found)
}
