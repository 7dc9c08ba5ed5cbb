//! When the drill's instance became consistent and when it was promoted, from its own log.
//!
//! The drill used to time its startup and replay phases by polling: `pg_ctl start -w` looks at
//! the server every 100 ms, the end of recovery was polled every 100 ms with `psql`, and the
//! replay phase began only after the isolation check, although the server replays while that
//! check runs. So a phase could read up to a poll interval long and the check's own time fell
//! out of the MTTR: at the quickstart's size (an MTTR of about 0.4 s) that is a quarter of it.
//!
//! The instance logs with `log_line_prefix = '%m [%p] '` and `log_timezone = UTC` (the drill
//! sets both), so each line starts with its millisecond timestamp on the host's clock, the one
//! `SystemTime` reads. Startup ends at "ready to accept read-only connections" (hot standby is
//! on in a drill: the moment recovery is consistent) and replay at "ready to accept
//! connections" (promoted). Each phase begins where the previous one ended, so the two cover
//! the recovery without a gap. Where a line is missing, unparsable or outside what the polls
//! saw (a clock step, a log of another format), the polled moment stands in for it.

use std::time::{Duration, SystemTime};

/// What PostgreSQL 13 logs when hot standby admits sessions (14 and later: "read-only").
const CONSISTENT_13: &str = "database system is ready to accept read only connections";
/// The same, PostgreSQL 14 and later.
const CONSISTENT: &str = "database system is ready to accept read-only connections";
/// What every major logs once recovery has ended and the server is promoted.
const PROMOTED: &str = "database system is ready to accept connections";

/// How long after the poll that found recovery over the server may log its promotion.
const POLL_LEAD: Duration = Duration::from_secs(1);

/// The words of the server log lines [`phases`] reads (for the drill's log filter).
pub const LOG_LINES: &str = "database system is ready to accept";

/// The startup and replay phases of a recovery: `began` is when the server was started,
/// `accepted` when `pg_ctl start -w` returned (it had accepted a connection), `ended` when a
/// poll found recovery over. Returns (startup, replay) with startup from `began` to the
/// consistent moment and replay from there to the promoted moment.
pub fn phases(
    log: &str,
    began: SystemTime,
    accepted: SystemTime,
    ended: SystemTime,
) -> (Duration, Duration) {
    let consistent = last_moment(log, &[CONSISTENT, CONSISTENT_13])
        .filter(|m| *m >= began && *m <= accepted)
        .unwrap_or(accepted);
    // A session sees recovery over (the poll) once the startup process has ended it, a few
    // milliseconds before the postmaster logs the promotion (when that process has exited):
    // the logged moment may follow the poll's by that much.
    let promoted = last_moment(log, &[PROMOTED])
        .filter(|m| *m >= consistent && *m <= ended + POLL_LEAD)
        .unwrap_or(ended);
    let since = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
    (since(began, consistent), since(consistent, promoted))
}

/// Whether the log already holds the promotion of the server started at `began`. The
/// postmaster logs it a few milliseconds after a session can see recovery over (once the
/// startup process has exited), so a log read right after the poll may not have it yet.
pub fn promotion_logged(log: &str, began: SystemTime) -> bool {
    last_moment(log, &[PROMOTED]).is_some_and(|m| m >= began)
}

/// The timestamp of the last line that ends with one of `phrases`.
fn last_moment(log: &str, phrases: &[&str]) -> Option<SystemTime> {
    let line = log
        .lines()
        .rev()
        .find(|l| phrases.iter().any(|p| l.trim_end().ends_with(p)))?;
    // "2026-12-06 05:15:29.283 UTC [123] LOG:  ..."
    let stamp = line.get(..27)?;
    crate::recovery::parse_target_time(stamp)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        SystemTime::from(crate::recovery::parse_target_time(s).unwrap())
    }

    const LOG: &str = "\
2026-12-06 05:15:29.100 UTC [10] LOG:  starting PostgreSQL 15.18
2026-12-06 05:15:29.180 UTC [12] LOG:  consistent recovery state reached at 0/B9000100
2026-12-06 05:15:29.183 UTC [10] LOG:  database system is ready to accept read-only connections
2026-12-06 05:15:29.700 UTC [12] LOG:  recovery stopping before commit of transaction 752
2026-12-06 05:15:29.812 UTC [10] LOG:  database system is ready to accept connections
";

    #[test]
    fn the_phases_run_from_the_start_to_the_logged_moments_without_a_gap() {
        let began = at("2026-12-06 05:15:29.050Z");
        let accepted = at("2026-12-06 05:15:29.290Z");
        let ended = at("2026-12-06 05:15:29.950Z");
        let (startup, replay) = phases(LOG, began, accepted, ended);
        assert_eq!(startup, Duration::from_millis(133));
        assert_eq!(replay, Duration::from_millis(629));
    }

    #[test]
    fn a_promotion_logged_just_after_the_poll_saw_it_is_the_logged_moment() {
        // The session saw recovery over 4 ms before the postmaster logged it.
        let ended = at("2026-12-06 05:15:29.808Z");
        let (_, replay) = phases(
            LOG,
            at("2026-12-06 05:15:29.050Z"),
            at("2026-12-06 05:15:29.290Z"),
            ended,
        );
        assert_eq!(replay, Duration::from_millis(629));
    }

    /// The drill reads the log again until the promotion is in it: a read right after the
    /// poll could miss the line, and the polled moment then stood in for it.
    #[test]
    fn the_promotion_is_logged_only_once_its_line_is_there() {
        let began = at("2026-12-06 05:15:29.050Z");
        assert!(promotion_logged(LOG, began));
        let before_promotion: String = LOG.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert!(!promotion_logged(&before_promotion, began));
        // A promotion of an earlier start of the same directory does not count.
        assert!(!promotion_logged(LOG, at("2026-12-06 05:15:30.000Z")));
    }

    #[test]
    fn postgresql_13_spells_read_only_without_a_hyphen() {
        let log = LOG.replace("read-only", "read only");
        let began = at("2026-12-06 05:15:29.050Z");
        let (startup, _) = phases(
            &log,
            began,
            at("2026-12-06 05:15:29.290Z"),
            at("2026-12-06 05:15:29.950Z"),
        );
        assert_eq!(startup, Duration::from_millis(133));
    }

    #[test]
    fn the_polled_moments_stand_in_for_missing_or_implausible_lines() {
        let began = at("2026-12-06 05:15:29.050Z");
        let accepted = at("2026-12-06 05:15:29.290Z");
        let ended = at("2026-12-06 05:15:29.950Z");
        // No lines at all (another log format): the polls.
        let (startup, replay) = phases(
            "LOG:  database system is ready to accept connections\n",
            began,
            accepted,
            ended,
        );
        assert_eq!(
            (startup, replay),
            (Duration::from_millis(240), Duration::from_millis(660))
        );
        // A promotion logged after the poll saw it (a clock step): the poll's moment.
        let late = LOG.replace("05:15:29.812", "05:15:31.000");
        let (_, replay) = phases(&late, began, accepted, ended);
        assert_eq!(
            replay,
            ended
                .duration_since(at("2026-12-06 05:15:29.183Z"))
                .unwrap()
        );
        // Consistent before the server was started (a clock step the other way): the poll's.
        let early = LOG.replace("05:15:29.183", "05:15:28.000");
        let (startup, replay) = phases(&early, began, accepted, ended);
        assert_eq!(startup, Duration::from_millis(240));
        assert_eq!(replay, Duration::from_millis(522));
    }
}
