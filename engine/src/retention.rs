//! Retention: which backups `expire` keeps, and why.
//!
//! A backup is kept when any rule keeps it, and every decision carries its reason, so
//! `expire --dry-run` can show the operator exactly what would go:
//! - pinned backups (`pgbunker pin ID`) are never expired;
//! - the newest backup is always kept;
//! - `full = N`: the N newest full backups, and every backup newer than the oldest of them;
//! - `keep_within = DURATION`: backups whose consistency point is within that age;
//! - calendar buckets: the newest backup of each of the last `daily` days, `weekly` ISO weeks
//!   and `monthly` months (UTC).
//!
//! With no rule configured nothing is expired: deleting needs an explicit policy.
//! Every backup is self-contained, so expiring one never breaks another; the WAL older than the
//! oldest retained backup's start is no longer needed by any of them.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::backup::manifest::BackupType;

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
}

impl Policy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
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
}
