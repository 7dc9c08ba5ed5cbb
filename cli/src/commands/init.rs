//! `pgcairn init`.

use std::path::Path;

use pgcairn_engine::crypto::{KdfParams, KeyFile, Unlock};
use pgcairn_engine::repo::{Encryption, InitOptions, Repository};

use crate::exit::Failure;
use crate::settings::Settings;

/// Shortest passphrase `init` accepts for a new repository (argon2id slows guessing; it does
/// not make "a" safe).
pub const MIN_PASSPHRASE_CHARS: usize = 12;

pub async fn run(
    settings: &Settings,
    key_file_flag: Option<&Path>,
    no_encryption: bool,
) -> Result<(), Failure> {
    // The only command that may create a file:// repository's directory.
    let storage =
        pgcairn_storage::create(settings.require_repo_url()?, &settings.storage_options()?)?;
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
            // Created exclusively (and whole), or the existing file is used: two inits racing
            // on one new path end up with one key file, never a half-written one.
            let generated = KeyFile::generate();
            let key = if !path.exists() && generated.create_exclusive(&path)? {
                created_key = Some(path.clone());
                generated
            } else {
                crate::file_checks::check(
                    &path,
                    crate::file_checks::Kind::Secret("key file"),
                    settings.allow_insecure_files,
                )?;
                KeyFile::load(&path)?
            };
            Some(Unlock::KeyFile(key))
        }
        (false, None) => match settings.unlock()? {
            Some(Unlock::Passphrase(ref p)) if p.chars().count() < MIN_PASSPHRASE_CHARS => {
                return Err(Failure::usage(format!(
                    "the passphrase has {} characters; a new repository needs at least \
                     {MIN_PASSPHRASE_CHARS} (a few random words, or use --key-file for a random key)",
                    p.chars().count()
                )))
            }
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
    let key_for_cleanup = match &opts.unlock {
        Some(Unlock::KeyFile(k)) => Some(k.clone()),
        _ => None,
    };
    let result = Repository::init(storage.clone(), opts).await;
    let config = match result {
        Ok(c) => c,
        Err(e) => {
            // Do not leave a fresh key behind for a repository that was not created, but only
            // remove what this process created, and only while no repository uses it: a
            // concurrent init on the same path may have loaded this key and won the race for
            // the repository.
            if let (Some(p), Some(k)) = (created_key, key_for_cleanup) {
                let in_use = Repository::open(storage.clone(), Some(&Unlock::KeyFile(k.clone())))
                    .await
                    .is_ok();
                if in_use {
                    eprintln!(
                        "pgcairn: kept key file {}: a repository created concurrently at {} uses it",
                        p.display(),
                        storage.describe()
                    );
                } else if k.is_at(&p) {
                    let _ = std::fs::remove_file(p);
                }
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
