//! Which streamed chunks may go, and why: run by `expire`.
//!
//! The receiver deletes a segment's chunks itself right after archiving it, and a crash in
//! between is settled at its next start. What it never settles: a receiver that is not
//! restarted (leftover chunks of an archived segment), and the tail of a timeline that
//! ended. When the server ends a timeline in the middle of a segment, that segment is never
//! completed on the old timeline: its chunks stay as the old timeline's tail, while the new
//! timeline's copy of the segment (which holds the same bytes up to the switch point) is
//! streamed and archived. `expire` removes chunks here, and only when they are not the only
//! copy of acknowledged WAL:
//!
//! 1. the segment is archived (same name): the archive holds the whole segment. Except the
//!    newest streamed segment: the receiver keeps the chunks of the newest segment it
//!    completed as the mark of where its acknowledged WAL ends, so that a restart before it
//!    writes into the next segment does not take a later segment that asynchronous archiving
//!    stored first for the end of the stream (see `Receiver::resume_point`);
//! 2. not the newest tail, and an archived `.partial` of the same segment, or an archived
//!    segment of the same number on a later timeline, starts with exactly the tail's bytes:
//!    the tail is superseded. The bytes are compared, not inferred from history files, so a
//!    tail that holds WAL past the switch point (streamed from an old primary that wrote
//!    more than the promoted standby received: commits the new timeline does not have)
//!    stays. Recovery following the timeline reads that segment from the later timeline, as
//!    PostgreSQL's own archiving leaves the old timeline's last segment only as a `.partial`;
//! 3. not the newest tail, and no retained backup needs the segment (the retention plan
//!    removes archived WAL there too).
//!
//! The newest tail is the receiver's current segment: only rule 1 applies to it (and the
//! receiver applies it itself), so what a running receiver writes is never removed under it.

use std::collections::HashSet;

use serde::Serialize;

use super::chunks::{self, Chunk};
use crate::error::Result;
use crate::repo::Repository;
use crate::types::WalFileName;

/// What happens to the chunks of one streamed segment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TailDecision {
    /// The segment they belong to.
    pub segment: String,
    /// How many chunks.
    pub chunks: usize,
    /// Contiguous bytes from the segment's start.
    pub streamed_bytes: u64,
    /// Kept or removed.
    pub keep: bool,
    /// The rule.
    pub reason: String,
    /// The chunk objects (not reported).
    #[serde(skip)]
    pub objects: Vec<Chunk>,
}

/// Decides for every streamed segment of `cluster`. `archived` holds the names of archived
/// WAL files (as printed); `unneeded(segno)` says why no retained backup needs absolute
/// segment `segno`, or `None` when one does (or retention is not known).
pub async fn decide(
    repo: &Repository,
    cluster: &str,
    seg_size: u64,
    archived: &HashSet<String>,
    unneeded: impl Fn(u64) -> Option<String>,
) -> Result<Vec<TailDecision>> {
    let all = chunks::list_all(repo, cluster, seg_size).await?;
    let newest = all.keys().next_back().copied();
    let mut out = Vec::new();
    for ((tli, segno), list) in all {
        let name = chunks::segment_name(tli, segno, seg_size);
        let (_, end) = chunks::contiguous(&list);
        let is_newest = Some((tli, segno)) == newest;
        // A whole newest segment no longer archived: the mark, its archived copy expired.
        let mark_expired = (is_newest && end == seg_size)
            .then(|| unneeded(segno))
            .flatten();
        let (keep, reason) = if archived.contains(&name.to_string()) && is_newest {
            (
                true,
                "the receiver's mark: the newest segment it completed, where its \
                 acknowledged WAL ends until it writes into the next (then it removes it)"
                    .to_string(),
            )
        } else if archived.contains(&name.to_string()) {
            (
                false,
                "the segment is archived: the chunks are a copy".to_string(),
            )
        } else if let Some(why) = mark_expired {
            (
                false,
                format!("the receiver's mark, whose archived copy retention removed: {why}"),
            )
        } else if is_newest {
            (
                true,
                "the newest streamed tail: the only copy of the last acknowledged WAL".to_string(),
            )
        } else if let Some(by) = covered_by(repo, cluster, &name, &list, end, archived).await? {
            (
                false,
                format!("superseded: archived {by} starts with the same {end} bytes"),
            )
        } else if let Some(why) = unneeded(segno) {
            (false, why)
        } else {
            (
                true,
                "an older timeline's tail no archived file covers: it may hold acknowledged WAL \
                 no other copy has"
                    .to_string(),
            )
        };
        out.push(TailDecision {
            segment: name.to_string(),
            chunks: list.len(),
            streamed_bytes: end,
            keep,
            reason,
            objects: list,
        });
    }
    Ok(out)
}

/// The archived file (a `.partial` of `name`, or the same segment on a later timeline) whose
/// first `end` bytes are the tail's, if any.
async fn covered_by(
    repo: &Repository,
    cluster: &str,
    name: &WalFileName,
    list: &[Chunk],
    end: u64,
    archived: &HashSet<String>,
) -> Result<Option<String>> {
    let (WalFileName::Segment { tli, segno }, true) = (name, end > 0) else {
        return Ok(None);
    };
    let mut candidates = vec![WalFileName::Partial {
        tli: *tli,
        segno: *segno,
    }];
    let mut later: Vec<WalFileName> = archived
        .iter()
        .filter_map(|n| n.parse::<WalFileName>().ok())
        .filter(
            |n| matches!(n, WalFileName::Segment { tli: t, segno: s } if s == segno && t.0 > tli.0),
        )
        .collect();
    later.sort_by_key(|n| n.timeline());
    candidates.extend(later);
    let mut tail = None;
    for c in candidates {
        if !archived.contains(&c.to_string()) {
            continue;
        }
        let copy = crate::archive::get::get_wal_file(repo, cluster, &c).await?;
        if tail.is_none() {
            tail = Some(chunks::read_prefix(repo, cluster, list).await?);
        }
        let tail = tail.as_deref().expect("read above");
        if copy.len() >= tail.len() && copy[..tail.len()] == *tail {
            return Ok(Some(c.to_string()));
        }
    }
    Ok(None)
}

/// Deletes the chunks of every decision that does not keep them; returns how many.
pub async fn remove(repo: &Repository, decisions: &[TailDecision]) -> Result<usize> {
    let mut n = 0;
    for d in decisions.iter().filter(|d| !d.keep) {
        chunks::remove(repo, &d.objects).await?;
        n += d.objects.len();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::archive::push::{push_wal_file, WalSource};
    use crate::pg::wal_header::tests::fake_segment;

    const SEG: u64 = 1 << 20; // 1 MiB segments keep the test light

    fn segment(tli: u32, segno: u64) -> Vec<u8> {
        fake_segment(9, tli, segno * SEG, SEG as u32, SEG as usize)
    }

    async fn archived_names(repo: &Repository) -> HashSet<String> {
        repo.storage()
            .list(&crate::repo::layout::wal_pointer_prefix("main"))
            .await
            .unwrap()
            .iter()
            .filter_map(|o| crate::repo::layout::parse_wal_pointer("main", o.key.as_str()))
            .map(|(_, n)| n.to_string())
            .collect()
    }

    /// The chunks of the newest segment the receiver completed stay, archived, as the mark
    /// of where its stream stopped; once a later segment is streamed, or retention removed
    /// the archived copy, they go.
    #[tokio::test]
    async fn the_receivers_mark_stays_until_a_later_segment_is_streamed() {
        let (_mem, repo) = memory_repo().await;
        let data = segment(1, 3);
        let name = chunks::segment_name(1, 3, SEG);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
            .await
            .unwrap();
        chunks::commit_chunk(&repo, "main", &name, 0, data.clone())
            .await
            .unwrap();
        let archived = archived_names(&repo).await;
        let d = decide(&repo, "main", SEG, &archived, |_| None)
            .await
            .unwrap();
        assert!(d[0].keep && d[0].reason.contains("mark"), "{d:?}");
        let d = decide(&repo, "main", SEG, &HashSet::new(), |_| {
            Some("no retained backup needs it".into())
        })
        .await
        .unwrap();
        assert!(!d[0].keep, "retention removed its archived copy: {d:?}");
        let next = chunks::segment_name(1, 4, SEG);
        chunks::commit_chunk(&repo, "main", &next, 0, segment(1, 4)[..1000].to_vec())
            .await
            .unwrap();
        let d = decide(&repo, "main", SEG, &archived, |_| None)
            .await
            .unwrap();
        let mark = d.iter().find(|d| d.segment == name.to_string()).unwrap();
        assert!(!mark.keep, "{d:?}");
    }

    #[tokio::test]
    async fn archived_and_superseded_tails_go_the_newest_and_uncovered_ones_stay() {
        let (_mem, repo) = memory_repo().await;
        // Timeline 1 ended in segment 5: its tail there is the first 40 000 bytes of a
        // segment whose timeline 2 copy is archived; segment 3 of timeline 1 is archived
        // (leftover chunks); segment 4 of timeline 1 is a tail with bytes timeline 2's copy
        // does not have; timeline 2's segment 6 is the newest tail.
        let seg5 = segment(1, 5);
        let mut seg5_tl2 = segment(2, 5);
        seg5_tl2[..40_000].copy_from_slice(&seg5[..40_000]);
        let seg4 = segment(1, 4);
        let mut seg4_tl2 = segment(2, 4);
        seg4_tl2[..40_000].copy_from_slice(&seg4[..40_000]);
        seg4_tl2[30_000] ^= 1;
        let seg3 = segment(1, 3);
        for (tli, segno, data) in [(2, 5, &seg5_tl2), (2, 4, &seg4_tl2), (1, 3, &seg3)] {
            let name = chunks::segment_name(tli, segno, SEG);
            push_wal_file(&repo, "main", &name, WalSource::Bytes(data.clone()))
                .await
                .unwrap();
        }
        let commit = |tli: u32, segno: u64, data: Vec<u8>| {
            let repo = repo.clone();
            async move {
                let name = chunks::segment_name(tli, segno, SEG);
                chunks::commit_chunk(&repo, "main", &name, 0, data[..20_000].to_vec())
                    .await
                    .unwrap();
                chunks::commit_chunk(&repo, "main", &name, 20_000, data[20_000..40_000].to_vec())
                    .await
                    .unwrap();
            }
        };
        commit(1, 3, seg3.clone()).await;
        commit(1, 4, seg4.clone()).await;
        commit(1, 5, seg5.clone()).await;
        commit(2, 6, segment(2, 6)).await;

        let archived = archived_names(&repo).await;
        let d = decide(&repo, "main", SEG, &archived, |_| None)
            .await
            .unwrap();
        let by: std::collections::HashMap<&str, &TailDecision> =
            d.iter().map(|d| (d.segment.as_str(), d)).collect();
        let seg = |tli, s| chunks::segment_name(tli, s, SEG).to_string();
        assert!(!by[seg(1, 3).as_str()].keep, "{d:?}");
        assert!(
            by[seg(1, 4).as_str()].keep,
            "different bytes: not superseded: {d:?}"
        );
        let five = by[seg(1, 5).as_str()];
        assert!(!five.keep && five.reason.contains(&seg(2, 5)), "{d:?}");
        assert_eq!(five.streamed_bytes, 40_000);
        assert!(by[seg(2, 6).as_str()].keep, "{d:?}");

        // Below the retention window an uncovered old tail goes too; the newest never.
        let d = decide(&repo, "main", SEG, &archived, |_| {
            Some("no retained backup needs it".into())
        })
        .await
        .unwrap();
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.segment.as_str())
            .collect();
        assert_eq!(kept, vec![seg(2, 6).as_str()]);

        assert_eq!(remove(&repo, &d).await.unwrap(), 6);
        let left = chunks::list_all(&repo, "main", SEG).await.unwrap();
        assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![(2, 6)]);
        assert_eq!(left[&(2, 6)].len(), 2);
    }
}
