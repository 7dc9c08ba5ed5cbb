//! archive-get: fetch one WAL file for `restore_command`.
//!
//! Only a missing pointer means "definitely absent" ([`Error::NotFound`]): PostgreSQL probes
//! for history files and the next segment, and absence ends recovery normally. Anything else
//! (a pointer whose data object is gone, an object that fails authentication, a storage
//! error) leaves presence unknown and is reported as such, so the caller can make
//! PostgreSQL abort recovery instead of ending it early at the wrong point.

use std::io::Write;
use std::path::Path;

use tracing::instrument;

use crate::archive::push::{run_cpu, validate_wal_content, wal_context, WalPointer};
use crate::codec::ObjectKind;
use crate::crypto::ContentId;
use crate::error::{Error, Result};
use crate::repo::{layout, Repository};
use crate::storage::StorageError;
use crate::types::WalFileName;

/// Fetches, authenticates and decompresses one WAL file.
#[instrument(skip_all, fields(cluster = cluster, wal = %name))]
pub async fn get_wal_file(repo: &Repository, cluster: &str, name: &WalFileName) -> Result<Vec<u8>> {
    let pointer_key = layout::wal_pointer(cluster, name);
    let raw = match repo.storage().get(&pointer_key).await {
        Ok(raw) => raw,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::NotFound(format!(
                "{name} is not in the archive of cluster {cluster:?}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let pointer: WalPointer = serde_json::from_slice(&raw)
        .map_err(|e| Error::corrupt(pointer_key.to_string(), format!("unreadable pointer: {e}")))?;
    let id = ContentId::from_hex(&pointer.content_id).ok_or_else(|| {
        Error::corrupt(pointer_key.to_string(), "content id is not 64 hex digits")
    })?;
    let data_key = layout::wal_data(cluster, name, &id);
    let sealed = match repo.storage().get(&data_key).await {
        Ok(s) => s,
        Err(StorageError::NotFound { .. }) => {
            return Err(Error::corrupt(
                data_key.to_string(),
                format!("the archive records {name} but its data object is missing"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let codec = repo.codec().clone();
    let context = wal_context(cluster, name);
    let object = data_key.to_string();
    let plain = run_cpu(move || -> Result<Vec<u8>> {
        let plain = codec
            .open(ObjectKind::Wal, &id, &context, &sealed)
            .map_err(|e| Error::corrupt(object.clone(), e.to_string()))?;
        if codec.content_id(&plain) != id {
            return Err(Error::corrupt(
                object,
                "content does not match its content id",
            ));
        }
        Ok(plain)
    })
    .await?;
    if plain.len() as u64 != pointer.size {
        return Err(Error::corrupt(
            data_key.to_string(),
            format!("{} bytes, pointer says {}", plain.len(), pointer.size),
        ));
    }
    // Defence in depth: the content must still be the segment its name says.
    validate_wal_content(name, &plain)
        .map_err(|e| Error::corrupt(data_key.to_string(), e.to_string()))?;
    Ok(plain)
}

/// Writes `data` to `dest` atomically and durably: temp file in the same directory, fsync,
/// rename, fsync of the directory. A reader never sees a partial file.
pub fn write_atomically(dest: &Path, data: &[u8]) -> Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::Config(format!("destination {} has no file name", dest.display())))?;
    let tmp = dir.join(format!(".{}.pgbunker-tmp", file_name.to_string_lossy()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing {}", dest.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::push::tests::memory_repo;
    use crate::archive::push::{push_wal_file, WalSource};
    use crate::pg::wal_header::tests::fake_segment;

    #[tokio::test]
    async fn absent_is_not_found_but_damage_is_corruption() {
        let (mem, repo) = memory_repo().await;
        let name: WalFileName = "000000010000000000000001".parse().unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::NotFound(_))
        ));
        let history: WalFileName = "00000002.history".parse().unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &history).await,
            Err(Error::NotFound(_))
        ));

        let data = fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20);
        push_wal_file(&repo, "main", &name, WalSource::Bytes(data))
            .await
            .unwrap();
        let id = repo
            .codec()
            .content_id(&fake_segment(9, 1, 16 << 20, 16 << 20, 16 << 20));
        let key = layout::wal_data("main", &name, &id);
        mem.tamper(key.as_str(), |v| {
            let n = v.len();
            v[n / 2] ^= 0x10;
        });
        let err = get_wal_file(&repo, "main", &name).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(key.as_str()),
            "names the object: {err}"
        );

        mem.tamper(key.as_str(), |v| v.truncate(100));
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn missing_data_behind_a_pointer_is_corruption_not_absence() {
        let (mem, repo) = memory_repo().await;
        let name: WalFileName = "00000002.history".parse().unwrap();
        let body = b"1\t0/3000000\tno recovery target specified\n".to_vec();
        push_wal_file(&repo, "main", &name, WalSource::Bytes(body.clone()))
            .await
            .unwrap();
        assert_eq!(get_wal_file(&repo, "main", &name).await.unwrap(), body);
        let id = repo.codec().content_id(&body);
        use crate::storage::Storage;
        mem.delete(&layout::wal_data("main", &name, &id))
            .await
            .unwrap();
        assert!(matches!(
            get_wal_file(&repo, "main", &name).await,
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        write_atomically(&dest, b"one").unwrap();
        write_atomically(&dest, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
