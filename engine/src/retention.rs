//! Retention: which backups `expire` keeps, and why.
//!
//! A backup is kept when any rule keeps it, and every decision carries its reason, so
//! `expire --dry-run` can show the operator exactly what would go:
//! - pinned backups (`pgcairn pin ID`) are never expired;
//! - the newest backup is always kept;
//! - `full = N`: the N newest full backups, and every backup newer than the oldest of them;
//! - `keep_within = DURATION`: backups whose consistency point is within that age;
//! - calendar buckets: the newest backup of each of the last `daily` days, `weekly` ISO weeks
//!   and `monthly` months (UTC);
//! - `pitr_window = D`: the newest backup that ended before the window's first moment (now −
//!   D), since recovery to any time inside the window starts from it. Without this rule
//!   `keep_within = 7d` with `pitr_window = 7d` and daily backups expired it, and the
//!   window silently began at the oldest backup left, up to a day short (Barman's recovery
//!   window keeps the same backup). By time alone: after a point-in-time restore forked a
//!   timeline, `expire` also keeps the newest backup before the window on each live
//!   timeline's history, which needs the archive's history files (`expire::keep_bases_of`).
//!
//! With no rule configured nothing is expired: deleting needs an explicit policy.
//! Every backup is self-contained, so expiring one never breaks another.
//!
//! WAL ([`wal_plan`]): by default every retained backup can be recovered to any time after it,
//! so WAL from the oldest retained backup's start onward is kept. With `pitr_window = D`,
//! point-in-time recovery is promised only for the last D: WAL is kept from the start of the
//! newest retained backup that ended before that window (it is the one a recovery to the
//! window's first moment starts from), and the older retained backups keep only their
//! consistency WAL (start to stop), so each still restores to its own end. Either way a
//! backup newer than that anchor that starts at a lower segment (taken on a timeline a
//! point-in-time restore forked below the anchor's start) moves the start of the kept WAL
//! down to its own: segments are compared by number across timelines, and without it the
//! WAL from the fork's backup to the present was deleted.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::store::manifest::BackupType;

/// A retention policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Keep the newest N full backups (and everything newer than the oldest of them).
    pub full: Option<usize>,
    /// Keep backups younger than this.
    pub keep_within: Option<Duration>,
    /// Newest backup of each of the last N days.
    pub daily: Option<u32>,
    /// Newest backup of each of the last N ISO weeks.
    pub weekly: Option<u32>,
    /// Newest backup of each of the last N months.
    pub monthly: Option<u32>,
    /// Point-in-time recovery promised for this long; older backups keep consistency WAL only.
    pub pitr_window: Option<Duration>,
    /// The bucket's default S3 Object Lock retention (`repo.object_lock_days`): an object
    /// written less than this long ago cannot be deleted for good, so expire keeps what it
    /// would remove until then, and says so.
    pub object_lock: Option<Duration>,
}

impl Policy {
    /// True when no rule about backups is set (then no backup expires).
    pub fn is_empty(&self) -> bool {
        self.full.is_none()
            && self.keep_within.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
    }
}

/// What WAL retention needs to know about a retained backup.
#[derive(Debug, Clone)]
pub struct WalNeed {
    /// Backup id.
    pub id: String,
    /// Consistency point time.
    pub stop_time: OffsetDateTime,
    /// Absolute segment number of its start.
    pub start_seg: u64,
    /// Absolute segment number holding its stop LSN.
    pub stop_seg: u64,
}

/// Which WAL segments stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalPlan {
    /// Every segment from here on stays (point-in-time recovery), with the backup it serves.
    pub pitr_from: (u64, String),
    /// Older retained backups: only these ranges (inclusive) stay.
    pub consistency: Vec<(u64, u64, String)>,
}

impl WalPlan {
    /// Why a segment stays, or `None` if no retained backup needs it.
    pub fn keep_reason(&self, seg: u64) -> Option<String> {
        if seg >= self.pitr_from.0 {
            return Some(format!(
                "point-in-time recovery from backup {} onward",
                self.pitr_from.1
            ));
        }
        self.consistency
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&seg))
            .map(|(_, _, id)| format!("consistency WAL of backup {id} (older than pitr_window)"))
    }
}

/// Plans WAL retention for the retained backups (`None` when none is retained: then no WAL
/// is removed).
pub fn wal_plan(
    retained: &[WalNeed],
    pitr_window: Option<Duration>,
    now: OffsetDateTime,
) -> Option<WalPlan> {
    let mut sorted: Vec<&WalNeed> = retained.iter().collect();
    sorted.sort_by_key(|b| (b.stop_time, b.start_seg));
    let oldest = *sorted.first()?;
    let anchor = match pitr_window {
        None => oldest,
        Some(w) => {
            let edge =
                now.saturating_sub(time::Duration::try_from(w).unwrap_or(time::Duration::MAX));
            sorted
                .iter()
                .rev()
                .find(|b| b.stop_time <= edge)
                .copied()
                .unwrap_or(oldest)
        }
    };
    // Every backup from the anchor on recovers to the present: WAL from the lowest start among
    // them stays. That is the anchor's own start unless a point-in-time restore forked a
    // timeline below it: a backup taken on the new timeline, newer than the anchor, starts
    // at a lower segment, and the WAL between its start and the anchor's is its only way
    // to the present (segment numbers are compared across timelines: keeping another
    // timeline's WAL above that point is harmless).
    let from = sorted
        .iter()
        .filter(|b| (b.stop_time, b.start_seg) >= (anchor.stop_time, anchor.start_seg))
        .min_by_key(|b| b.start_seg)
        .copied()
        .unwrap_or(anchor);
    let consistency = sorted
        .iter()
        .filter(|b| b.start_seg < from.start_seg)
        .map(|b| (b.start_seg, b.stop_seg, b.id.clone()))
        .collect();
    Some(WalPlan {
        pitr_from: (from.start_seg, from.id.clone()),
        consistency,
    })
}

/// What retention needs to know about a backup.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Id.
    pub id: String,
    /// Type.
    pub backup_type: BackupType,
    /// Consistency point time.
    pub stop_time: OffsetDateTime,
    /// Pinned by the operator.
    pub pinned: bool,
}

/// The decision for one backup.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    /// Backup id.
    pub id: String,
    /// Kept or expired.
    pub keep: bool,
    /// Every rule that keeps it, or why it goes.
    pub reasons: Vec<String>,
}

/// Decides every backup (`backups` in any order); result oldest first.
pub fn decide(backups: &[Candidate], policy: &Policy, now: OffsetDateTime) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by_key(|b| (b.stop_time, b.id.clone()));
    let newest = sorted.last().map(|b| b.id.clone());
    let fulls: Vec<&&Candidate> = sorted
        .iter()
        .filter(|b| b.backup_type == BackupType::Full)
        .collect();
    let kept_fulls: Vec<String> = policy
        .full
        .map(|n| fulls.iter().rev().take(n).map(|b| b.id.clone()).collect())
        .unwrap_or_default();
    let oldest_kept_full = policy.full.and_then(|_| {
        sorted
            .iter()
            .filter(|b| kept_fulls.contains(&b.id))
            .map(|b| b.stop_time)
            .min()
    });
    let bucket_keep = |key: &dyn Fn(OffsetDateTime) -> (i32, u32),
                       count: Option<u32>,
                       label: &str|
     -> Vec<(String, String)> {
        let Some(count) = count else {
            return Vec::new();
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for b in sorted.iter().rev() {
            let k = key(b.stop_time);
            if !seen.contains(&k) {
                if seen.len() as u32 >= count {
                    break;
                }
                seen.insert(k);
                out.push((
                    b.id.clone(),
                    format!("newest backup of its {label} (last {count})"),
                ));
            }
        }
        out
    };
    // The backup recovery to the window's first moment starts from.
    let window_base = policy.pitr_window.and_then(|w| {
        let edge = now.saturating_sub(time::Duration::try_from(w).unwrap_or(time::Duration::MAX));
        sorted
            .iter()
            .rev()
            .find(|b| b.stop_time <= edge)
            .map(|b| b.id.clone())
    });
    let mut calendar = Vec::new();
    calendar.extend(bucket_keep(
        &|t| (t.year(), t.ordinal() as u32),
        policy.daily,
        "day",
    ));
    calendar.extend(bucket_keep(
        &|t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w as u32)
        },
        policy.weekly,
        "week",
    ));
    calendar.extend(bucket_keep(
        &|t| (t.year(), u8::from(t.month()) as u32),
        policy.monthly,
        "month",
    ));

    sorted
        .iter()
        .map(|b| {
            let mut reasons = Vec::new();
            if b.pinned {
                reasons.push("pinned".to_string());
            }
            if newest.as_deref() == Some(b.id.as_str()) {
                reasons.push("newest backup".to_string());
            }
            if kept_fulls.contains(&b.id) {
                reasons.push(format!(
                    "one of the {} newest full backups",
                    policy.full.unwrap_or(0)
                ));
            } else if oldest_kept_full.is_some_and(|t| b.stop_time > t) {
                reasons.push("newer than the oldest retained full backup".to_string());
            }
            if let Some(d) = policy.keep_within {
                if now - b.stop_time <= time::Duration::try_from(d).unwrap_or(time::Duration::MAX) {
                    reasons.push(format!("younger than keep_within ({}s)", d.as_secs()));
                }
            }
            if window_base.as_deref() == Some(b.id.as_str()) {
                reasons.push(format!(
                    "point-in-time recovery to the start of pitr_window ({}s) starts from it",
                    policy.pitr_window.unwrap_or_default().as_secs()
                ));
            }
            reasons.extend(
                calendar
                    .iter()
                    .filter(|(id, _)| *id == b.id)
                    .map(|(_, r)| r.clone()),
            );
            let keep = !reasons.is_empty() || policy.is_empty();
            if !keep {
                reasons.push("no retention rule keeps it".to_string());
            } else if policy.is_empty() && reasons.is_empty() {
                reasons.push("no retention policy configured: nothing expires".to_string());
            }
            Decision {
                id: b.id.clone(),
                keep,
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn need(id: &str, at: OffsetDateTime, start: u64, stop: u64) -> WalNeed {
        WalNeed {
            id: id.into(),
            stop_time: at,
            start_seg: start,
            stop_seg: stop,
        }
    }

    #[test]
    fn wal_is_kept_from_the_oldest_backup_without_a_window() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let b = vec![
            need("b2", datetime!(2026-11-20 01:00 UTC), 50, 52),
            need("b1", datetime!(2026-11-10 01:00 UTC), 10, 11),
        ];
        let p = wal_plan(&b, None, now).unwrap();
        assert_eq!(p.pitr_from.0, 10);
        assert!(p.consistency.is_empty());
        assert!(p.keep_reason(9).is_none());
        assert!(p.keep_reason(10).unwrap().contains("b1"));
        assert!(
            wal_plan(&[], None, now).is_none(),
            "nothing retained: keep all WAL"
        );
    }

    #[test]
    fn beyond_the_pitr_window_only_consistency_wal_stays() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let b = vec![
            need("b1", datetime!(2026-11-01 01:00 UTC), 10, 11),
            need("b2", datetime!(2026-11-10 01:00 UTC), 30, 30),
            need("b3", datetime!(2026-11-20 01:00 UTC), 50, 52),
            need("b4", datetime!(2026-11-23 01:00 UTC), 70, 71),
        ];
        let week = Duration::from_secs(7 * 86400);
        let p = wal_plan(&b, Some(week), now).unwrap();
        // The window starts 2026-11-17 12:00: b2 is the newest backup before it.
        assert_eq!(p.pitr_from, (30, "b2".to_string()));
        assert_eq!(p.consistency, vec![(10, 11, "b1".to_string())]);
        assert!(p
            .keep_reason(11)
            .unwrap()
            .contains("consistency WAL of backup b1"));
        assert!(
            p.keep_reason(12).is_none(),
            "between b1's stop and b2's start"
        );
        assert!(p.keep_reason(29).is_none());
        assert!(p.keep_reason(30).unwrap().contains("point-in-time"));
        // A window older than every backup: PITR from the oldest.
        let p = wal_plan(&b, Some(week * 10), now).unwrap();
        assert_eq!(p.pitr_from.0, 10);
        // A window shorter than the newest backup's age: PITR from the newest.
        let p = wal_plan(&b, Some(Duration::from_secs(3600)), now).unwrap();
        assert_eq!(p.pitr_from, (70, "b4".to_string()));
        assert_eq!(p.consistency.len(), 3);
    }

    /// A point-in-time restore forked timeline 2 at segment 5, below the oldest retained
    /// backup (b1, timeline 1, segment 9); b2 was taken on timeline 2 at segment 6, later.
    /// b2's way to the present (segments 6 onward on timeline 2) must stay.
    #[test]
    fn a_backup_on_a_timeline_forked_below_the_oldest_keeps_its_wal() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let b = vec![
            need("b1", datetime!(2026-11-20 01:00 UTC), 9, 9),
            need("b2", datetime!(2026-11-22 01:00 UTC), 6, 6),
        ];
        let p = wal_plan(&b, None, now).unwrap();
        assert_eq!(p.pitr_from, (6, "b2".to_string()));
        for seg in 6..=12 {
            assert!(p.keep_reason(seg).is_some(), "segment {seg}");
        }
        // With a window whose edge falls between them: b1 anchors, b2 is newer and lower.
        let p = wal_plan(&b, Some(Duration::from_secs(3 * 86400)), now).unwrap();
        assert_eq!(p.pitr_from.0, 6);
        assert!(p.keep_reason(7).is_some() && p.keep_reason(8).is_some());
        // Backups older than the anchor still keep only their consistency WAL.
        let b = vec![
            need("b0", datetime!(2026-11-01 01:00 UTC), 2, 2),
            need("b1", datetime!(2026-11-20 01:00 UTC), 9, 9),
            need("b2", datetime!(2026-11-22 01:00 UTC), 6, 6),
        ];
        let p = wal_plan(&b, Some(Duration::from_secs(3 * 86400)), now).unwrap();
        assert_eq!(p.pitr_from, (6, "b2".to_string()));
        assert_eq!(p.consistency, vec![(2, 2, "b0".to_string())]);
        assert!(p.keep_reason(3).is_none());
    }

    fn c(id: &str, t: BackupType, at: OffsetDateTime) -> Candidate {
        Candidate {
            id: id.into(),
            backup_type: t,
            stop_time: at,
            pinned: false,
        }
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn keeps_n_full_backups_and_what_is_newer() {
        let b = vec![
            c("f1", BackupType::Full, datetime!(2026-11-01 01:00 UTC)),
            c("i1", BackupType::Incr, datetime!(2026-11-02 01:00 UTC)),
            c("f2", BackupType::Full, datetime!(2026-11-08 01:00 UTC)),
            c("d2", BackupType::Diff, datetime!(2026-11-09 01:00 UTC)),
            c("f3", BackupType::Full, datetime!(2026-11-15 01:00 UTC)),
            c("i3", BackupType::Incr, datetime!(2026-11-16 01:00 UTC)),
        ];
        let p = Policy {
            full: Some(2),
            ..Default::default()
        };
        let d = decide(&b, &p, datetime!(2026-11-20 00:00 UTC));
        assert_eq!(kept(&d), ["f2", "d2", "f3", "i3"]);
        assert_eq!(d[0].reasons, ["no retention rule keeps it"]);
        assert!(d[3]
            .reasons
            .iter()
            .any(|r| r.contains("newer than the oldest retained full")));
    }

    #[test]
    fn pins_newest_and_empty_policy_are_never_expired() {
        let mut b = vec![
            c("f1", BackupType::Full, datetime!(2026-10-01 01:00 UTC)),
            c("f2", BackupType::Full, datetime!(2026-11-01 01:00 UTC)),
            c("f3", BackupType::Full, datetime!(2026-11-02 01:00 UTC)),
        ];
        b[0].pinned = true;
        let p = Policy {
            full: Some(1),
            ..Default::default()
        };
        let d = decide(&b, &p, datetime!(2026-11-20 00:00 UTC));
        assert_eq!(kept(&d), ["f1", "f3"]);
        let none = decide(&b, &Policy::default(), datetime!(2026-11-20 00:00 UTC));
        assert_eq!(kept(&none).len(), 3, "no policy: nothing expires");
        let only_old = vec![c("x", BackupType::Incr, datetime!(2020-01-01 00:00 UTC))];
        let d = decide(
            &only_old,
            &Policy {
                keep_within: Some(Duration::from_secs(60)),
                ..Default::default()
            },
            datetime!(2026-11-20 00:00 UTC),
        );
        assert_eq!(kept(&d), ["x"], "the newest backup always stays");
    }

    #[test]
    fn keep_within_and_calendar_buckets_at_their_boundaries() {
        let b = vec![
            c("a", BackupType::Full, datetime!(2026-11-18 23:59:59 UTC)),
            c("b", BackupType::Incr, datetime!(2026-11-19 00:00:01 UTC)),
            c("c", BackupType::Incr, datetime!(2026-11-19 12:00 UTC)),
            c("d", BackupType::Incr, datetime!(2026-11-20 06:00 UTC)),
        ];
        let now = datetime!(2026-11-20 12:00 UTC);
        let within = decide(
            &b,
            &Policy {
                keep_within: Some(Duration::from_secs(36 * 3600)),
                ..Default::default()
            },
            now,
        );
        // 36 h before noon on the 20th is midnight on the 19th: b is 1 s inside, a 1 s outside.
        assert_eq!(kept(&within), ["b", "c", "d"]);
        let daily = decide(
            &b,
            &Policy {
                daily: Some(2),
                ..Default::default()
            },
            now,
        );
        assert_eq!(
            kept(&daily),
            ["c", "d"],
            "newest of each of the last two days"
        );
        let weekly = decide(
            &b,
            &Policy {
                weekly: Some(1),
                ..Default::default()
            },
            now,
        );
        assert_eq!(kept(&weekly), ["d"]);
    }

    /// An absurd window (`pitr_window = "100000000000d"`) reaches before every backup; it
    /// overflowed the subtraction from now and panicked.
    #[test]
    fn a_window_longer_than_time_keeps_everything_from_the_oldest() {
        let now = datetime!(2026-11-24 12:00 UTC);
        let forever = Duration::from_secs(u64::MAX / 2);
        let b = vec![
            need("b1", datetime!(2026-11-01 01:00 UTC), 10, 11),
            need("b2", datetime!(2026-11-20 01:00 UTC), 50, 52),
        ];
        let p = wal_plan(&b, Some(forever), now).unwrap();
        assert_eq!(p.pitr_from, (10, "b1".to_string()));
        let policy = Policy {
            full: Some(1),
            pitr_window: Some(forever),
            ..Policy::default()
        };
        let backups = [
            c("b1", BackupType::Full, datetime!(2026-11-01 01:00 UTC)),
            c("b2", BackupType::Full, datetime!(2026-11-20 01:00 UTC)),
        ];
        let d = decide(&backups, &policy, now);
        assert!(!d[0].keep && d[1].keep, "{d:?}");
    }

    /// `keep_within` and `pitr_window` both a week, daily backups: the backup that ended just
    /// before the window opened stays, or recovery to the window's first hours is impossible.
    #[test]
    fn the_backup_the_pitr_window_starts_from_is_kept() {
        let now = datetime!(2026-11-24 02:00 UTC);
        let week = Duration::from_secs(7 * 86_400);
        let backups: Vec<Candidate> = (1..=8)
            .map(|d| Candidate {
                id: format!("d{d}"),
                backup_type: BackupType::Full,
                stop_time: datetime!(2026-11-16 01:30 UTC) + time::Duration::days(d - 1),
                pinned: false,
            })
            .collect();
        let policy = Policy {
            keep_within: Some(week),
            pitr_window: Some(week),
            ..Policy::default()
        };
        let kept = |p: &Policy| -> Vec<String> {
            decide(&backups, p, now)
                .into_iter()
                .filter(|d| d.keep)
                .map(|d| d.id)
                .collect()
        };
        // d2 (11-17 01:30) ended 30 minutes before the window opened (11-17 02:00).
        assert_eq!(kept(&policy), ["d2", "d3", "d4", "d5", "d6", "d7", "d8"]);
        let d = decide(&backups, &policy, now);
        assert!(
            d[1].reasons.iter().any(|r| r.contains("pitr_window")),
            "{d:?}"
        );
        // Without the window, keep_within alone lets it go too.
        let no_window = Policy {
            pitr_window: None,
            ..policy.clone()
        };
        assert_eq!(kept(&no_window), ["d3", "d4", "d5", "d6", "d7", "d8"]);
    }
}
