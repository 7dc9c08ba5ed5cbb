//! One module per command; each turns resolved settings into engine calls.

mod archive;
mod audit;
mod backup;
mod demo;
pub mod docs;
mod drill;
mod expire;
mod info;
mod init;
mod key;
mod metrics;
mod serve;
mod verify;
mod wal_receive;

use std::sync::Arc;

use pgcairn_engine::repo::Repository;
use pgcairn_engine::storage::Storage;

use crate::args::{Cli, Command};
use crate::exit::Failure;
use crate::settings::Settings;

/// Runs the command, and appends its audit record when it is one that changes the repository
/// or restores from it.
pub async fn dispatch(cli: &Cli, settings: &Settings) -> Result<(), Failure> {
    let result = run_command(cli, settings).await;
    if let Some(name) = audit::audited(&cli.command) {
        audit::record(settings, name, &result).await;
    }
    result
}

async fn run_command(cli: &Cli, settings: &Settings) -> Result<(), Failure> {
    match &cli.command {
        Command::Init {
            key_file,
            no_encryption,
        } => init::run(settings, key_file.as_deref(), *no_encryption).await,
        Command::ArchivePush { wal_path } => archive::push(cli, settings, wal_path).await,
        Command::ArchiveGet {
            wal_name,
            dest_path,
            prefetch,
        } => archive::get(cli, settings, wal_name, dest_path, *prefetch).await,
        Command::ArchiveGetDaemon { pgdata } => archive::get_daemon(settings, pgdata).await,
        Command::ArchivePushDaemon { pg_wal } => archive::daemon(settings, pg_wal).await,
        Command::Backup {
            backup_type,
            checksum_delta,
            pin,
            jobs,
            index_memory,
            output,
        } => {
            let flags = backup::BackupFlags {
                checksum_delta: *checksum_delta,
                pin: *pin,
                jobs: *jobs,
                index_memory: *index_memory,
                output: *output,
            };
            backup::backup(cli, settings, *backup_type, flags).await
        }
        Command::Restore(args) => backup::restore_cmd(cli, settings, args).await,
        Command::RestorePoint { name } => backup::restore_point(settings, name).await,
        Command::Drill(args) => drill::run(cli, settings, args).await,
        Command::Verify {
            read_data,
            all,
            index_memory,
            output,
        } => {
            let index_memory = index_memory.saturating_mul(1 << 20);
            verify::run(settings, read_data.as_deref(), *all, index_memory, *output).await
        }
        Command::Expire { dry_run, output } => expire::run(settings, *dry_run, *output).await,
        Command::Gc {
            dry_run,
            grace,
            index_memory,
            output,
        } => {
            let memory = index_memory.saturating_mul(1 << 20);
            expire::gc(settings, *dry_run, grace.as_deref(), memory, *output).await
        }
        Command::Pin { id } => expire::pin(settings, id, true).await,
        Command::Unpin { id } => expire::pin(settings, id, false).await,
        Command::Check => backup::check(settings).await,
        Command::WalReceive { create_slot, slot } => {
            wal_receive::run(settings, *create_slot, slot.as_deref()).await
        }
        Command::Info { output } => info::run(settings, *output).await,
        Command::Metrics => metrics::print(settings).await,
        Command::Audit { since, output } => audit::list(settings, since.as_deref(), *output).await,
        Command::Serve { listen } => serve::run(settings, listen).await,
        Command::Key(cmd) => key::run(settings, cmd).await,
        Command::Demo { dir, keep } => demo::run(cli, dir.as_deref(), *keep).await,
        Command::Completions { .. } | Command::Manpages { .. } => {
            docs::answer(&cli.command).unwrap_or(Ok(()))
        }
    }
}

/// Opens the configured storage.
pub fn open_storage(settings: &Settings) -> Result<Arc<dyn Storage>, Failure> {
    let storage =
        pgcairn_storage::open(settings.require_repo_url()?, &settings.storage_options()?)?;
    Ok(match settings.max_requests {
        Some(max) => Arc::new(pgcairn_engine::store::limit::Limited::new(storage, max)),
        None => storage,
    })
}

/// Opens and unlocks the configured repository.
pub async fn open_repo(settings: &Settings) -> Result<Repository, Failure> {
    let storage = open_storage(settings)?;
    let unlock = settings.unlock()?;
    Ok(Repository::open_with(storage, unlock.as_ref(), settings.state_dir.as_deref()).await?)
}

/// Opens the repository for a command that only adds to it (`archive-push`, its background
/// pusher, `backup`): deletes and overwrites are refused below the engine
/// ([`pgcairn_engine::store::append_only`]), whatever the credentials allow.
pub async fn open_repo_append_only(
    settings: &Settings,
    command: &'static str,
) -> Result<Repository, Failure> {
    let repo = open_repo(settings).await?;
    let wrapped: Arc<dyn Storage> = Arc::new(pgcairn_engine::store::append_only::AppendOnly::new(
        repo.storage().clone(),
        command,
    ));
    Ok(repo.with_storage(wrapped))
}
