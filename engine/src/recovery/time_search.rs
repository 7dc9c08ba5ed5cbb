//! Finding the first WAL segment archived at or after a target time.
//!
//! A restore to a time checks that the archive holds the WAL up to the target; the segment
//! that reaches it is the first whose record says it was archived at or after the target.
//! Reading every record from the backup's start was a request per segment, 16 in flight: a
//! backup a day before the target is over a thousand segments, a week before it ten thousand,
//! seconds of round trips on an object store before a single file is written.
//!
//! Archive times rise with the WAL (a segment is archived once it is complete, after the ones
//! before it), so a long list is bisected instead: about 14 reads for ten thousand segments.
//! Two things can break that order, and both are handled:
//! - asynchronous archiving pushes `archive.jobs` segments side by side, so neighbours can be
//!   archived a moment out of order: after the bisection, the [`WINDOW`] records before the
//!   segment it found are read too, and the first of them at or after the target wins;
//! - a record the bisection needs is missing (a hole in the archive), or the bisection finds
//!   no segment reaching the target: the whole list is read in order as before, which also
//!   finds where the hole is. A hole the bisection steps over is not its to find: the plan
//!   counts a segment as archived only when its record and its data are both listed, and
//!   refuses a target with a segment missing before it (naming the segment).
//!
//! Short lists (up to [`LINEAR_MAX`] segments) are read in order, as before.

use std::future::Future;

use futures::StreamExt;

/// Lists up to this long are read in order, [`WINDOW`] records at a time.
pub const LINEAR_MAX: usize = 64;
/// Records read at once, and the records before the bisection's answer that are read again.
pub const WINDOW: usize = 16;

/// What the search found among `n` segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The first segment (index) archived at or after the target.
    At(usize),
    /// A segment whose record is missing (index), before any reaching the target.
    Gap(usize),
    /// No segment reaches the target.
    NotReached,
}

/// The first of `n` segments whose archive time (`time(i)`, `None` when its record is
/// missing) is at or after `target`; see the module docs.
pub async fn first_at_or_after<T, E, F, Fut>(n: usize, target: T, time: F) -> Result<Found, E>
where
    T: Ord + Copy,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    if n > LINEAR_MAX {
        if let Some(found) = bisect(n, target, &time).await? {
            return Ok(found);
        }
    }
    in_order(0..n, target, &time).await
}

/// Bisection, then the [`WINDOW`] records before its answer. `None`: read the list in order.
async fn bisect<T, E, F, Fut>(n: usize, target: T, time: &F) -> Result<Option<Found>, E>
where
    T: Ord + Copy,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match time(mid).await? {
            None => return Ok(None),
            Some(at) if at >= target => hi = mid,
            Some(_) => lo = mid + 1,
        }
    }
    if lo == n {
        return Ok(None);
    }
    match in_order(lo.saturating_sub(WINDOW)..lo + 1, target, time).await? {
        Found::At(i) => Ok(Some(Found::At(i))),
        _ => Ok(None),
    }
}

/// Reads the records of `range` in order, [`WINDOW`] in flight.
async fn in_order<T, E, F, Fut>(
    range: std::ops::Range<usize>,
    target: T,
    time: &F,
) -> Result<Found, E>
where
    T: Ord + Copy,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let mut times = futures::stream::iter(range.clone())
        .map(|i| async move { (i, time(i).await) })
        .buffered(WINDOW);
    while let Some((i, at)) = times.next().await {
        match at? {
            Some(at) if at >= target => return Ok(Found::At(i)),
            None => return Ok(Found::Gap(i)),
            Some(_) => {}
        }
    }
    Ok(Found::NotReached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Runs the search over `times`, counting the records read.
    fn search(times: &[Option<u32>], target: u32) -> (Found, usize) {
        let reads = Cell::new(0);
        let found = futures::executor::block_on(first_at_or_after(times.len(), target, |i| {
            reads.set(reads.get() + 1);
            let t = times[i];
            async move { Ok::<_, ()>(t) }
        }))
        .unwrap();
        (found, reads.get())
    }

    fn linear(times: &[Option<u32>], target: u32) -> Found {
        for (i, t) in times.iter().enumerate() {
            match t {
                Some(at) if *at >= target => return Found::At(i),
                None => return Found::Gap(i),
                Some(_) => {}
            }
        }
        Found::NotReached
    }

    #[test]
    fn a_long_rising_archive_is_bisected_to_the_same_segment_in_few_reads() {
        let times: Vec<Option<u32>> = (0..10_000).map(|i| Some(i * 10)).collect();
        for target in [0, 5, 10, 12_345, 99_990] {
            let (found, reads) = search(&times, target);
            assert_eq!(found, linear(&times, target), "target {target}");
            assert!(reads < 40, "{reads} reads for target {target}");
        }
        // Short lists are read in order.
        let short: Vec<Option<u32>> = (0..40).map(|i| Some(i * 10)).collect();
        assert_eq!(search(&short, 155).0, Found::At(16));
    }

    #[test]
    fn neighbours_archived_out_of_order_still_give_the_first_segment() {
        // Pairs pushed side by side, the second of each pair recorded a moment earlier.
        let times: Vec<Option<u32>> = (0..1000u32)
            .map(|i| {
                Some(if i % 2 == 0 {
                    i * 10 + 115
                } else {
                    i * 10 + 85
                })
            })
            .collect();
        for target in [100, 4_990, 5_000, 5_005, 7_777] {
            assert_eq!(
                search(&times, target).0,
                linear(&times, target),
                "target {target}"
            );
        }
    }

    #[test]
    fn a_hole_or_an_unreached_target_reads_the_archive_in_order() {
        // A hole where the bisection looks (its first probe): read in order, the hole found.
        let mut times: Vec<Option<u32>> = (0..1000).map(|i| Some(i * 10)).collect();
        times[500] = None;
        for target in [50, 4_999, 5_005, 8_000] {
            assert_eq!(
                search(&times, target).0,
                linear(&times, target),
                "target {target}"
            );
        }
        assert_eq!(search(&times, 8_000).0, Found::Gap(500));
        // One it steps over is left to the plan's listing check: the segment reaching the
        // target is still the right one.
        let mut times: Vec<Option<u32>> = (0..1000).map(|i| Some(i * 10)).collect();
        times[300] = None;
        assert_eq!(search(&times, 8_000).0, Found::At(800));
        let times: Vec<Option<u32>> = (0..1000).map(|i| Some(i * 10)).collect();
        let (found, reads) = search(&times, 1_000_000);
        assert_eq!(found, Found::NotReached);
        assert!(
            reads >= 1000,
            "an unreached target is confirmed by reading every record"
        );
    }
}
