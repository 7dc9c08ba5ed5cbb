//! Object names. The only place that builds [`ObjectKey`]s, so the naming scheme documented in
//! [`crate::repo`] has one source of truth.

use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::storage::ObjectKey;
use crate::store::ids::{IndexSegmentId, PackId};
use crate::types::{TimelineId, WalFileName};

/// Key of the repository config.
pub const CONFIG: &str = "config";

/// The repository config.
pub fn config() -> ObjectKey {
    ObjectKey::new(CONFIG)
}

/// Checks a cluster name: 1 to 64 of `a-z 0-9 _ -`, so it is safe in object names.
pub fn validate_cluster_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid cluster name {name:?}: use 1 to 64 characters among a-z, 0-9, '_' and '-' (cluster.name / --cluster)"
        )))
    }
}

/// The record binding a cluster to its system identifier.
pub fn cluster_record(cluster: &str) -> ObjectKey {
    ObjectKey::new(format!("clusters/{cluster}/cluster.json"))
}

/// The cluster's catalog head (see [`crate::store::head`]).
pub fn catalog_head(cluster: &str) -> ObjectKey {
    ObjectKey::new(format!("clusters/{cluster}/head"))
}

/// Prefix of the per-cluster status objects (see [`crate::store::status`]).
pub const CLUSTER_STATUS_PREFIX: &str = "status/cluster/";

/// A cluster's status object (what a metrics scrape reads).
pub fn cluster_status(cluster: &str) -> ObjectKey {
    ObjectKey::new(format!("{CLUSTER_STATUS_PREFIX}{cluster}"))
}

/// The repository's status object (space after the last gc).
pub fn repository_status() -> ObjectKey {
    ObjectKey::new("status/repository")
}

/// Prefix of the audit trail (see [`crate::store::trail`]).
pub const AUDIT_PREFIX: &str = "audit/";

/// One audit record: the time in nanoseconds (20 digits, so names sort by time) and a random
/// suffix.
pub fn audit_record(unix_nanos: u128, suffix: u64) -> ObjectKey {
    ObjectKey::new(format!("{AUDIT_PREFIX}{unix_nanos:020}-{suffix:016x}"))
}

/// The time (nanoseconds) an audit record's name carries.
pub fn parse_audit_record(key: &str) -> Option<u128> {
    let (t, s) = key.strip_prefix(AUDIT_PREFIX)?.split_once('-')?;
    (t.len() == 20 && s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| t.parse().ok())
        .flatten()
}

/// Prefix of every lease (see [`crate::lease`]).
pub const LEASES_PREFIX: &str = "leases/";

/// True for a lease's key.
pub fn is_lease(key: &ObjectKey) -> bool {
    key.as_str().starts_with(LEASES_PREFIX)
}

/// The lease of a running backup.
pub fn backup_lease(cluster: &str, backup_id: &str) -> ObjectKey {
    ObjectKey::new(format!("{LEASES_PREFIX}backup-{cluster}-{backup_id}"))
}

/// The backup id a backup lease of `cluster` names (`None`: not one).
pub fn parse_backup_lease<'a>(cluster: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(LEASES_PREFIX)?
        .strip_prefix("backup-")?
        .strip_prefix(cluster)?
        .strip_prefix('-')
}

/// A recovery hold on a backup of `cluster` ([`crate::hold`]); `nonce` tells holds apart.
/// Not under `leases/`: earlier versions refuse to go on past a lease of a kind they do not
/// know.
pub fn recovery_hold(cluster: &str, nonce: &str) -> ObjectKey {
    ObjectKey::new(format!("clusters/{cluster}/holds/{nonce}"))
}

/// Where the recovery holds of `cluster` are listed from.
pub fn recovery_holds_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/holds/")
}

/// An exclusive lease: `gc`, or `expire-<cluster>`.
pub fn exclusive_lease(name: &str) -> ObjectKey {
    ObjectKey::new(format!("{LEASES_PREFIX}{name}"))
}

/// The cluster whose catalog head this key is (`None`: not a catalog head).
pub fn parse_catalog_head(key: &str) -> Option<&str> {
    key.strip_prefix("clusters/")
        .and_then(|rest| rest.strip_suffix("/head"))
        .filter(|cluster| !cluster.is_empty() && !cluster.contains('/'))
}

/// The cluster whose status object this key is (`None`: not a cluster's status object).
pub fn parse_cluster_status(key: &str) -> Option<&str> {
    key.strip_prefix(CLUSTER_STATUS_PREFIX)
        .filter(|cluster| !cluster.is_empty() && !cluster.contains('/'))
}

/// The repository's gc state (see [`crate::gc`]).
pub fn gc_state() -> ObjectKey {
    ObjectKey::new("gc/state")
}

/// Prefix of every WAL pointer of a cluster.
pub fn wal_pointer_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/wal/")
}

/// Prefix of the WAL pointers of one timeline.
pub fn wal_pointer_timeline_prefix(cluster: &str, tli: TimelineId) -> String {
    format!("{}{tli}/", wal_pointer_prefix(cluster))
}

/// Prefix of every WAL data object of a cluster.
pub fn wal_data_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/waldata/")
}

/// Prefix of the WAL data objects of one timeline.
pub fn wal_data_timeline_prefix(cluster: &str, tli: TimelineId) -> String {
    format!("{}{tli}/", wal_data_prefix(cluster))
}

/// A bound for listing what follows WAL file `name` in the folder `prefix` of its timeline
/// (records or data objects): every key of `name` itself (`<name>`, `<name>.partial`,
/// `<name>.<content id>`) sorts below `<name>.z`, every key of a later segment above it.
pub fn after_wal_file(prefix: &str, name: &WalFileName) -> String {
    format!("{prefix}{name}.z")
}

/// Pointer (commit record) of one archived WAL file.
pub fn wal_pointer(cluster: &str, name: &WalFileName) -> ObjectKey {
    ObjectKey::new(format!(
        "{}{}/{name}",
        wal_pointer_prefix(cluster),
        name.timeline()
    ))
}

/// Sealed contents of one archived WAL file.
pub fn wal_data(cluster: &str, name: &WalFileName, id: &ContentId) -> ObjectKey {
    ObjectKey::new(format!(
        "{}{name}.{}",
        wal_data_timeline_prefix(cluster, name.timeline()),
        id.to_hex()
    ))
}

/// Parses a pointer key back into its timeline folder and file name.
pub fn parse_wal_pointer(cluster: &str, key: &str) -> Option<(TimelineId, WalFileName)> {
    let rest = key.strip_prefix(&wal_pointer_prefix(cluster))?;
    let (tli, file) = rest.split_once('/')?;
    let name: WalFileName = file.parse().ok()?;
    (name.timeline().to_string() == tli).then_some((name.timeline(), name))
}

/// Whether `key` is a WAL data object of any cluster.
pub fn is_wal_data(key: &str) -> bool {
    key.strip_prefix("clusters/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(cluster, _)| parse_wal_data(cluster, key).is_some())
}

/// Parses a WAL data key back into its timeline folder and file name (the content id
/// suffix, 64 hex digits, is checked and dropped).
pub fn parse_wal_data(cluster: &str, key: &str) -> Option<(TimelineId, WalFileName)> {
    let rest = key.strip_prefix(&wal_data_prefix(cluster))?;
    let (tli, file) = rest.split_once('/')?;
    let (file, id) = file.rsplit_once('.')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name: WalFileName = file.parse().ok()?;
    (name.timeline().to_string() == tli).then_some((name.timeline(), name))
}

/// Prefix of every streamed WAL chunk of a cluster (see [`crate::walstream::chunks`]).
pub fn walstream_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/walstream/")
}

/// Prefix of the streamed chunks of one segment.
pub fn walstream_segment_prefix(cluster: &str, segment: &WalFileName) -> String {
    format!(
        "{}{}/{segment}/",
        walstream_prefix(cluster),
        segment.timeline()
    )
}

/// One streamed chunk: bytes `start..end` of `segment`, named by its content id.
pub fn walstream_chunk(
    cluster: &str,
    segment: &WalFileName,
    start: u64,
    end: u64,
    id: &ContentId,
) -> ObjectKey {
    ObjectKey::new(format!(
        "{}{start:08X}-{end:08X}.{}",
        walstream_segment_prefix(cluster, segment),
        id.to_hex()
    ))
}

/// Parses a chunk key back into its segment, byte range and content id.
pub fn parse_walstream_chunk(
    cluster: &str,
    key: &str,
) -> Option<(WalFileName, u64, u64, ContentId)> {
    let rest = key.strip_prefix(&walstream_prefix(cluster))?;
    let mut parts = rest.split('/');
    let (tli, seg, chunk) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let segment: WalFileName = seg.parse().ok()?;
    if !matches!(segment, WalFileName::Segment { .. }) || segment.timeline().to_string() != tli {
        return None;
    }
    let (range, id) = chunk.split_once('.')?;
    let (start, end) = range.split_once('-')?;
    let hex8 = |s: &str| (s.len() == 8).then(|| u64::from_str_radix(s, 16).ok())?;
    let (start, end) = (hex8(start)?, hex8(end)?);
    let id = ContentId::from_hex(id)?;
    (start < end).then_some((segment, start, end, id))
}

/// Prefix of a cluster's backups.
pub fn backups_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/backups/")
}

/// A backup's manifest.
pub fn backup_manifest(cluster: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{}{id}/manifest", backups_prefix(cluster)))
}

/// A restore point recorded by `pgcairn restore-point` (names are hex-encoded: any text).
pub fn restore_point(cluster: &str, name: &str) -> ObjectKey {
    ObjectKey::new(format!(
        "clusters/{cluster}/restore-points/{}",
        hex::encode(name)
    ))
}

/// Prefix of a cluster's drill reports.
pub fn drills_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/drills/")
}

/// One drill report.
pub fn drill_report(cluster: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{}{id}", drills_prefix(cluster)))
}

/// A pin marker: the backup is never expired.
pub fn pin(cluster: &str, id: &str) -> ObjectKey {
    ObjectKey::new(format!("{}{id}", pins_prefix(cluster)))
}

/// Where a cluster's pins are listed.
pub fn pins_prefix(cluster: &str) -> String {
    format!("clusters/{cluster}/pins/")
}

/// Prefix of every index segment.
pub const INDEX_PREFIX: &str = "index/";

/// Prefix of every pack.
pub const PACKS_PREFIX: &str = "packs/";

/// A pack object.
pub fn pack(pack_id: &PackId) -> ObjectKey {
    let hex = pack_id.to_hex();
    ObjectKey::new(format!("{PACKS_PREFIX}{}/{hex}", &hex[..2]))
}

/// The id a pack's key names (`None`: not a pack key).
pub fn parse_pack(key: &str) -> Option<PackId> {
    let (dir, hex_id) = key.strip_prefix(PACKS_PREFIX)?.split_once('/')?;
    PackId::from_hex(hex_id).filter(|_| hex_id.get(..2) == Some(dir))
}

/// An index segment, named by the keyed content id of its plaintext (bound into its
/// authenticated data, see [`crate::index`]).
pub fn index_segment(id: &IndexSegmentId) -> ObjectKey {
    ObjectKey::new(format!("{INDEX_PREFIX}{}", id.to_hex()))
}

/// The id an index segment's key names (`None`: not an index segment key).
pub fn parse_index_segment(key: &str) -> Option<IndexSegmentId> {
    IndexSegmentId::from_hex(key.strip_prefix(INDEX_PREFIX)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_keys_round_trip() {
        let name: WalFileName = "000000020000000100000003".parse().unwrap();
        let key = wal_pointer("main", &name);
        assert_eq!(
            key.as_str(),
            "clusters/main/wal/00000002/000000020000000100000003"
        );
        assert_eq!(
            parse_wal_pointer("main", key.as_str()),
            Some((TimelineId(2), name.clone()))
        );
        assert_eq!(parse_wal_pointer("other", key.as_str()), None);
        let id = ContentId::from_hex(&"ab".repeat(32)).unwrap();
        let data = wal_data("main", &name, &id);
        assert_eq!(
            parse_wal_data("main", data.as_str()),
            Some((TimelineId(2), name.clone()))
        );
        assert_eq!(parse_wal_data("main", key.as_str()), None);
        let history: WalFileName = "00000002.history".parse().unwrap();
        assert_eq!(
            parse_wal_data("main", wal_data("main", &history, &id).as_str()),
            Some((TimelineId(2), history))
        );
    }

    #[test]
    fn pack_and_segment_keys_round_trip() {
        let p = PackId::new([0xcd; 32]);
        let key = pack(&p);
        assert_eq!(key.as_str(), format!("packs/cd/{}", "cd".repeat(32)));
        assert_eq!(parse_pack(key.as_str()), Some(p));
        assert_eq!(parse_pack(&format!("packs/ab/{}", "cd".repeat(32))), None);
        let s = IndexSegmentId::new([0xcd; 32]);
        assert_eq!(parse_index_segment(index_segment(&s).as_str()), Some(s));
        assert_eq!(parse_index_segment(key.as_str()), None);
    }

    #[test]
    fn lease_keys_round_trip() {
        let k = backup_lease("main", "20261124-000000F");
        assert!(is_lease(&k));
        assert_eq!(
            parse_backup_lease("main", k.as_str()),
            Some("20261124-000000F")
        );
        assert_eq!(parse_backup_lease("mai", k.as_str()), None);
        assert_eq!(
            parse_backup_lease("main", exclusive_lease("gc").as_str()),
            None
        );
        assert!(is_lease(&exclusive_lease("expire-main")));
        assert!(!is_lease(&gc_state()));
        assert_eq!(
            parse_catalog_head(catalog_head("db-1").as_str()),
            Some("db-1")
        );
        assert_eq!(parse_catalog_head("clusters/a/b/head"), None);
        assert_eq!(
            parse_cluster_status(cluster_status("db-1").as_str()),
            Some("db-1")
        );
        assert_eq!(parse_cluster_status("status/cluster/a/b"), None);
    }

    #[test]
    fn cluster_names_are_checked() {
        for ok in ["main", "db-1", "a_b"] {
            validate_cluster_name(ok).unwrap();
        }
        for bad in ["", "Main", "a/b", "..", &"x".repeat(65)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
