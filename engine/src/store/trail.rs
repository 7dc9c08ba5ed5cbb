//! The audit trail: one sealed, create-only record per command that changes the repository or
//! restores from it (init, backup, expire, gc, pin, unpin, restore, drill, key changes), under
//! `audit/<time>-<random>`. Who ran what, where, when, and how it ended.
//!
//! Why one object per record: create-only puts need no lock and no compare-and-swap, so two
//! hosts recording at once never conflict, and an append-only writer (archive-push, backup)
//! may write them. Names start with the time in nanoseconds (20 digits), so a LIST returns them
//! in order and `--since` filters on names alone. Each record is sealed for its own name (see
//! [`super::sealed`]): a record altered, renamed or copied from elsewhere fails authentication.
//! Deleting records is not prevented here (anyone with delete rights could); a storage-side
//! retention lock or an append-only bucket policy on `audit/` (see the README) is what makes
//! the trail tamper-proof against deletion.
//!
//! Records outlive the backups and WAL they mention: `expire` and `gc` never delete them;
//! [`prune`] removes those older than the configured period (`[audit] keep`, run by `expire`).

use serde::{Deserialize, Serialize};

use super::sealed::{self, DocKind};
use super::Timestamp;
use crate::error::Result;
use crate::repo::{layout, Repository};
use crate::storage::CreateOutcome;

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339 time the command finished.
    pub at: Timestamp,
    /// Host name.
    pub host: String,
    /// OS user (name, else uid).
    pub user: String,
    /// Command (`backup`, `key rotate`, ...).
    pub command: String,
    /// The command line without the program name (secrets never come from argv).
    pub args: Vec<String>,
    /// Cluster it concerned.
    pub cluster: String,
    /// `ok`, or `failed (exit N): message`.
    pub outcome: String,
}

fn unix_nanos(at: Timestamp) -> u128 {
    at.unix_nanos().max(0) as u128
}

/// Appends `record` (its time `at` names it).
pub async fn append(repo: &Repository, record: &AuditRecord) -> Result<()> {
    loop {
        let suffix: u64 = rand::random();
        let key = layout::audit_record(unix_nanos(record.at), suffix);
        let body = sealed::seal(repo, DocKind::AuditRecord, &key, record);
        match repo.storage().put_create(&key, body).await? {
            CreateOutcome::Created => return Ok(()),
            // A name collision (same nanosecond and random suffix): pick another.
            CreateOutcome::AlreadyExists => continue,
        }
    }
}

/// Records from `since` on (all when `None`), oldest first.
pub async fn list(repo: &Repository, since: Option<Timestamp>) -> Result<Vec<AuditRecord>> {
    let floor = since.map(unix_nanos).unwrap_or(0);
    let mut keys: Vec<_> = repo
        .storage()
        .list(layout::AUDIT_PREFIX)
        .await?
        .into_iter()
        .filter(|o| layout::parse_audit_record(o.key.as_str()).is_some_and(|t| t >= floor))
        .map(|o| o.key)
        .collect();
    keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(r) = sealed::read(repo, DocKind::AuditRecord, &key).await? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Deletes records older than `before`; returns how many.
pub async fn prune(repo: &Repository, before: Timestamp) -> Result<usize> {
    let limit = unix_nanos(before);
    let mut n = 0;
    for o in repo.storage().list(layout::AUDIT_PREFIX).await? {
        if layout::parse_audit_record(o.key.as_str()).is_some_and(|t| t < limit) {
            repo.storage().delete(&o.key).await?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::error::Error;
    use crate::storage::Storage;

    fn record(at: &str, command: &str) -> AuditRecord {
        AuditRecord {
            at: at.parse().unwrap(),
            host: "db1".into(),
            user: "postgres".into(),
            command: command.into(),
            args: vec![command.into()],
            cluster: "main".into(),
            outcome: "ok".into(),
        }
    }

    #[tokio::test]
    async fn records_list_in_time_order_filter_by_time_and_prune() {
        let (_mem, repo) = memory_repo().await;
        append(&repo, &record("2026-01-02T00:00:00Z", "expire"))
            .await
            .unwrap();
        append(&repo, &record("2026-01-01T00:00:00Z", "backup"))
            .await
            .unwrap();
        append(&repo, &record("2026-01-03T00:00:00Z", "gc"))
            .await
            .unwrap();
        let all: Vec<String> = list(&repo, None)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.command)
            .collect();
        assert_eq!(all, ["backup", "expire", "gc"]);
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let since = list(&repo, Some(t("2026-01-02T00:00:00Z"))).await.unwrap();
        assert_eq!(since.len(), 2);
        assert_eq!(prune(&repo, t("2026-01-02T12:00:00Z")).await.unwrap(), 2);
        assert_eq!(list(&repo, None).await.unwrap()[0].command, "gc");
    }

    #[tokio::test]
    async fn a_record_copied_under_another_name_fails_authentication() {
        let (mem, repo) = memory_repo().await;
        append(&repo, &record("2026-01-01T00:00:00Z", "restore"))
            .await
            .unwrap();
        let key = mem.list(layout::AUDIT_PREFIX).await.unwrap()[0].key.clone();
        let raw = mem.get(&key).await.unwrap();
        // Replayed as if it happened later.
        mem.put_create(&layout::audit_record(unix_nanos(Timestamp::now()), 7), raw)
            .await
            .unwrap();
        let err = list(&repo, None).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
