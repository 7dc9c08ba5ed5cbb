//! `pgcairn key list|add|remove|passwd|rotate`: key slots and key epochs (see
//! `pgcairn_engine::repo::keys` for the protocol). Secrets come from files or the
//! environment, never from argv.

use std::path::Path;

use pgcairn_engine::crypto::{KdfParams, KeyFile, SlotKey, Unlock};
use pgcairn_engine::reencrypt::ReencryptOptions;
use pgcairn_engine::repo::keys::{self, KeyChange, RotateInputs};
use pgcairn_engine::repo::Repository;

use super::open_storage;
use crate::args::{KeyCmd, OutputFormat};
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

/// Runs one `key` subcommand.
pub async fn run(settings: &Settings, cmd: &KeyCmd) -> Result<(), Failure> {
    match cmd {
        KeyCmd::List { output } => list(settings, *output).await,
        KeyCmd::Add {
            key_file,
            passphrase_file,
            passphrase,
            wrap_command,
            unwrap_command,
        } => {
            let key = if let Some(path) = key_file {
                SlotKey::key_file(&load_or_create_key_file(settings, path)?)
            } else if let Some(path) = passphrase_file {
                SlotKey::passphrase(
                    &new_passphrase(settings, Some(path))?,
                    KdfParams::recommended(),
                )?
            } else if *passphrase {
                SlotKey::passphrase(&new_passphrase(settings, None)?, KdfParams::recommended())?
            } else if let (Some(wrap), Some(unwrap)) = (wrap_command, unwrap_command) {
                let wrap_cmd = settings.key_command(wrap);
                let unwrap_cmd = settings.key_command(unwrap);
                let key = tokio::task::spawn_blocking(move || -> Result<SlotKey, Failure> {
                    let key = SlotKey::command(&wrap_cmd, &unwrap_cmd.command)?;
                    key.check_unwrap(&unwrap_cmd)?;
                    Ok(key)
                })
                .await
                .map_err(|e| Failure::usage(format!("running the wrap command panicked: {e}")))??;
                key
            } else {
                return Err(Failure::usage(
                    "key add needs the new key: --key-file PATH, --passphrase-file PATH, --passphrase \
                     (PGCAIRN_NEW_PASSPHRASE), or --wrap-command CMD --unwrap-command CMD",
                ));
            };
            let kind = key.kind().name();
            let out = change(settings, KeyChange::Add(key)).await?;
            println!(
                "added key slot {} ({kind}); the repository now has {} slots",
                out.slot.unwrap_or_default(),
                out.config.key_slots.len()
            );
            Ok(())
        }
        KeyCmd::Remove { slot, force } => {
            let out = change(
                settings,
                KeyChange::Remove {
                    id: slot.clone(),
                    force: *force,
                },
            )
            .await?;
            println!(
                "removed key slot {}. If its key may have leaked, run `pgcairn key rotate` now: \
                 removing a slot does not take back what the key already opened",
                out.slot.unwrap_or_default()
            );
            Ok(())
        }
        KeyCmd::Passwd {
            slot,
            passphrase_file,
        } => {
            let passphrase = new_passphrase(settings, passphrase_file.as_deref())?;
            let out = change(
                settings,
                KeyChange::Passwd {
                    id: slot.clone(),
                    passphrase,
                    kdf: KdfParams::recommended(),
                },
            )
            .await?;
            println!(
                "new passphrase set on key slot {}",
                out.slot.unwrap_or_default()
            );
            Ok(())
        }
        KeyCmd::Reencrypt {
            grace,
            writers_stopped,
            output,
        } => reencrypt(settings, grace.as_deref(), *writers_stopped, *output).await,
        KeyCmd::Rotate {
            also_key_file,
            also_passphrase_file,
            wrap_command,
            output,
            reencrypt: then_reencrypt,
            grace,
            writers_stopped,
        } => {
            let mut inputs = RotateInputs::default();
            for path in also_key_file {
                check_secret(settings, path, "--also-key-file")?;
                inputs.others.push(Unlock::KeyFile(KeyFile::load(path)?));
            }
            for path in also_passphrase_file {
                inputs
                    .others
                    .push(Unlock::Passphrase(read_passphrase(settings, path)?));
            }
            for c in wrap_command.iter().chain(settings.wrap_command.iter()) {
                inputs.trusted_wrap.push(settings.key_command(c));
            }
            if let Some(c) = &settings.unwrap_command {
                inputs.trusted_unwrap.push(settings.key_command(c));
            }
            let out = change(settings, KeyChange::Rotate(inputs)).await?;
            let ring = out.config.data_key_version;
            match output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "key_epoch": ring,
                        "generation": out.config.generation,
                        "slots": out.config.key_slots.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
                    })
                ),
                OutputFormat::Text => println!(
                    "rotated: new objects are sealed under key epoch {ring} (fresh random material); {} slots rewrapped. \
                     Older objects stay readable through the old material, which the keyring keeps{}",
                    out.config.key_slots.len(),
                    if *then_reencrypt { " until the re-encryption below drops it" } else { "" }
                ),
            }
            if *then_reencrypt {
                return reencrypt(settings, grace.as_deref(), *writers_stopped, *output).await;
            }
            Ok(())
        }
    }
}

/// `key reencrypt` (and `key rotate --reencrypt` after rotating).
async fn reencrypt(
    settings: &Settings,
    grace: Option<&str>,
    writers_stopped: bool,
    output: OutputFormat,
) -> Result<(), Failure> {
    let grace = match grace {
        Some(g) => pgcairn_storage::parse_duration(g).ok_or_else(|| {
            Failure::usage(format!("--grace {g:?}: use a duration like 1h or 0s"))
        })?,
        None => settings.gc_grace,
    };
    let repo = super::open_repo(settings).await?;
    let unlock = settings.unlock()?;
    let r = pgcairn_engine::reencrypt::reencrypt(
        &repo,
        unlock.as_ref(),
        settings.state_dir.as_deref(),
        &ReencryptOptions {
            grace,
            lease_wait: settings.maintenance_lease_wait,
            object_lock: settings.object_lock,
            writers_stopped,
            upload_retries: settings
                .storage_options()?
                .retry_timeout()
                .map_err(|e| Failure::usage(e.to_string()))?,
            index_memory: pgcairn_engine::gc::liveness::DEFAULT_MEMORY,
        },
    )
    .await?;
    let finished = r.old_epochs.is_empty() || !r.dropped_epochs.is_empty();
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("report serialises")
        ),
        OutputFormat::Text if r.old_epochs.is_empty() => println!(
            "nothing to re-encrypt: everything is sealed under key epoch {}, the only one the keyring holds",
            r.key_epoch
        ),
        OutputFormat::Text => {
            println!(
                "resealed {} objects ({:.1} MiB) under key epoch {}; packs: {} rewritten ({} blocks resealed, {} new packs), \
                 {} condemned, {} swept",
                r.objects_resealed,
                r.bytes_resealed as f64 / 1048576.0,
                r.key_epoch,
                r.gc.reencrypted.len(),
                r.gc.resealed_blocks,
                r.gc.repack_new_packs,
                r.gc.condemned.len(),
                r.gc.swept.len()
            );
            for skipped in &r.gc.repack_skipped {
                println!("  damaged pack not rewritten: {skipped}");
            }
            for left in &r.remaining {
                println!("  still under an old key epoch: {left}");
            }
            if r.remaining_count > r.remaining.len() {
                println!("  ... and {} more", r.remaining_count - r.remaining.len());
            }
            if finished {
                println!(
                    "dropped key epochs {:?}: the keyring holds only epoch {} now; removed keys open nothing in this repository",
                    r.dropped_epochs, r.key_epoch
                );
            } else if let Some(w) = &r.waiting {
                println!("not finished: {w}");
            }
        }
    }
    if finished {
        Ok(())
    } else {
        // Text output said why already.
        let message = match output {
            OutputFormat::Json => r.waiting.unwrap_or_default(),
            OutputFormat::Text => String::new(),
        };
        Err(Failure::new(ExitCode::Failed, message))
    }
}

async fn change(settings: &Settings, change: KeyChange) -> Result<keys::ChangeOutcome, Failure> {
    let storage = open_storage(settings)?;
    let unlock = settings.unlock()?;
    Ok(keys::change(
        &storage,
        unlock.as_ref(),
        settings.state_dir.as_deref(),
        change,
    )
    .await?)
}

async fn list(settings: &Settings, output: OutputFormat) -> Result<(), Failure> {
    let storage = open_storage(settings)?;
    let unlock = settings.unlock()?;
    let repo =
        Repository::open_with(storage, unlock.as_ref(), settings.state_dir.as_deref()).await?;
    let slots = keys::list_slots(
        repo.config(),
        repo.unlocked_slot(),
        settings.state_dir.as_deref(),
    );
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({
                "key_epoch": repo.config().data_key_version,
                "key_epochs_held": repo.codec().epochs(),
                "generation": repo.config().generation,
                "slots": slots,
            })
        ),
        OutputFormat::Text => {
            println!(
                "key epoch {} (held: {:?}), config generation {}",
                repo.config().data_key_version,
                repo.codec().epochs(),
                repo.config().generation
            );
            println!(
                "{:<18} {:<11} {:<18} {:<26} LAST USED (this host)",
                "SLOT", "KIND", "FINGERPRINT", "CREATED"
            );
            for s in slots {
                println!(
                    "{:<18} {:<11} {:<18} {:<26} {}{}",
                    s.id,
                    s.kind,
                    s.fingerprint,
                    s.created.map_or_else(|| "-".into(), |t| t.to_string()),
                    s.last_used.as_deref().unwrap_or("-"),
                    if s.current {
                        "  (unlocked this command)"
                    } else {
                        ""
                    }
                );
                if let Some(w) = &s.wrap_command {
                    println!("    wrap: {w}");
                }
                if let Some(u) = &s.unwrap_command {
                    println!("    unwrap: {u}");
                }
            }
        }
    }
    Ok(())
}

fn check_secret(settings: &Settings, path: &Path, what: &'static str) -> Result<(), Failure> {
    crate::file_checks::check(
        path,
        crate::file_checks::Kind::Secret(what),
        settings.allow_insecure_files,
    )
}

fn load_or_create_key_file(settings: &Settings, path: &Path) -> Result<KeyFile, Failure> {
    let generated = KeyFile::generate();
    if !path.exists() && generated.create_exclusive(path)? {
        return Ok(generated);
    }
    check_secret(settings, path, "--key-file")?;
    Ok(KeyFile::load(path)?)
}

fn read_passphrase(settings: &Settings, path: &Path) -> Result<String, Failure> {
    check_secret(settings, path, "passphrase file")?;
    let p = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    })?;
    Ok(p.lines().next().unwrap_or("").to_string())
}

/// A new passphrase from a file or `PGCAIRN_NEW_PASSPHRASE`, long enough.
fn new_passphrase(settings: &Settings, file: Option<&Path>) -> Result<String, Failure> {
    let p = match file {
        Some(path) => read_passphrase(settings, path)?,
        None => std::env::var("PGCAIRN_NEW_PASSPHRASE").map_err(|_| {
            Failure::usage(
                "no new passphrase: set PGCAIRN_NEW_PASSPHRASE or pass --passphrase-file PATH",
            )
        })?,
    };
    let min = super::init::MIN_PASSPHRASE_CHARS;
    if p.chars().count() < min {
        return Err(Failure::usage(format!(
            "the new passphrase has {} characters; use at least {min} (a few random words)",
            p.chars().count()
        )));
    }
    Ok(p)
}
