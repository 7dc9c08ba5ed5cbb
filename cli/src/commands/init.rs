//! `pgcairn init`.

use std::path::Path;

use pgcairn_engine::crypto::{KdfParams, KeyFile, Unlock};
use pgcairn_engine::repo::{Encryption, InitOptions, Repository};

use super::open_storage;
use crate::exit::Failure;
use crate::settings::Settings;

pub async fn run(
    settings: &Settings,
    key_file_flag: Option<&Path>,
    no_encryption: bool,
) -> Result<(), Failure> {
    let storage = open_storage(settings)?;
    let key_path = key_file_flag
        .map(Path::to_path_buf)
        .or_else(|| settings.key_file.clone());
    let mut created_key = None;
    let unlock = match (no_encryption, key_path) {
        (true, Some(_)) => {
            return Err(Failure::usage("--no-encryption contradicts the key file that is configured; choose one"));
        }
        (true, None) => {
            if settings.unlock()?.is_some() {
                return Err(Failure::usage("--no-encryption contradicts the passphrase that is configured; choose one"));
            }
            None
        }
        (false, Some(path)) => {
            let key = if path.exists() {
                KeyFile::load(&path)?
            } else {
                let k = KeyFile::generate();
                k.create(&path)?;
                created_key = Some(path.clone());
                k
            };
            Some(Unlock::KeyFile(key))
        }
        (false, None) => match settings.unlock()? {
            Some(u) => Some(u),
            None => {
                return Err(Failure::usage(
                    "no key given: use --key-file PATH (created if missing), set PGCAIRN_PASSPHRASE or repo.passphrase_file, \
                     or pass --no-encryption explicitly",
                ))
            }
        },
    };
    let fingerprint = match &unlock {
        Some(Unlock::KeyFile(k)) => Some(k.fingerprint()),
        _ => None,
    };
    let opts = InitOptions {
        unlock,
        kdf: KdfParams::recommended(),
        wal_compress_level: settings.wal_compress_level,
    };
    let result = Repository::init(storage.clone(), opts).await;
    let config = match result {
        Ok(c) => c,
        Err(e) => {
            // Do not leave a fresh key behind for a repository that was not created.
            if let Some(p) = created_key {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    println!(
        "created repository {} at {}",
        config.repo_id,
        storage.describe()
    );
    match config.encryption {
        Encryption::XChaCha20Poly1305 => println!("encryption: XChaCha20-Poly1305"),
        Encryption::None => {
            println!("encryption: none (objects carry keyed BLAKE3 checksums only)")
        }
    }
    if let Some(p) = created_key {
        println!(
            "created key file {} (mode 0600): back it up; without it the repository cannot be read",
            p.display()
        );
    }
    if let Some(f) = fingerprint {
        println!("key file fingerprint: {f}");
    }
    Ok(())
}
