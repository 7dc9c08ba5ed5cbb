//! The text form of a transaction snapshot, `txid_current_snapshot()::text`:
//! `xmin:xmax:xip1,xip2,...` (the running list may be empty: `xmin:xmax:`).
//!
//! A backup records the snapshot taken just after `pg_backup_stop` so that a restore to a
//! transaction id can tell whether that transaction committed before the backup was
//! consistent ([`crate::store::manifest::Manifest::may_commit_after_stop`]). `xmin` alone is
//! not enough: the ids between `xmin` and `xmax` that are not in the running list had already
//! ended, so a target among them lies before the backup, not after it.

/// A parsed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxidSnapshot {
    /// Oldest transaction still running.
    pub xmin: u64,
    /// First transaction id not yet assigned.
    pub xmax: u64,
    /// Transactions running (prepared ones included), each in `xmin..xmax`.
    pub running: Vec<u64>,
}

/// Parses `txid_current_snapshot()::text`; `None` for anything else.
pub fn parse(text: &str) -> Option<TxidSnapshot> {
    let mut parts = text.trim().splitn(3, ':');
    let xmin: u64 = parts.next()?.parse().ok()?;
    let xmax: u64 = parts.next()?.parse().ok()?;
    let running = match parts.next()? {
        "" => Vec::new(),
        list => list
            .split(',')
            .map(|x| x.parse().ok())
            .collect::<Option<Vec<u64>>>()?,
    };
    (xmin <= xmax && running.iter().all(|x| (xmin..xmax).contains(x))).then_some(TxidSnapshot {
        xmin,
        xmax,
        running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_with_and_without_running_transactions() {
        assert_eq!(
            parse("736:741:736,739"),
            Some(TxidSnapshot {
                xmin: 736,
                xmax: 741,
                running: vec![736, 739]
            })
        );
        assert_eq!(
            parse("741:741:"),
            Some(TxidSnapshot {
                xmin: 741,
                xmax: 741,
                running: vec![]
            })
        );
        for bad in ["", "741", "741:740:", "736:741:742", "736:741:x", "a:b:"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
