//! `wal-receive`: the streaming receiver as a daemon (see `pgcairn_engine::walstream`).
//!
//! SIGTERM and SIGINT stop it cleanly: what was received is committed and acknowledged, the
//! stream is ended, and the process exits 0. Errors retrying can fix (network, repository
//! unreachable) are retried inside the engine with backoff; the rest exit non-zero so systemd
//! shows the unit failed with the reason.

use pgcairn_engine::pg::conninfo;
use pgcairn_engine::walstream::{self, ReceiverOptions};
use tracing::info;

use crate::commands::open_repo;
use crate::exit::{ExitCode, Failure};
use crate::settings::Settings;

/// Runs the receiver until a signal.
pub async fn run(
    settings: &Settings,
    create_slot: bool,
    slot: Option<&str>,
) -> Result<(), Failure> {
    if settings.conninfo.is_empty() {
        return Err(Failure::usage(
            "wal-receive needs cluster.conninfo (a role with REPLICATION, for example \
             \"host=/var/run/postgresql user=pgcairn\")",
        ));
    }
    let conninfo = conninfo::parse(&settings.conninfo)?;
    let ws = &settings.wal_receive;
    let slot = slot.unwrap_or(&ws.slot).to_string();
    let status_file = ws.status_file.clone().or_else(|| {
        settings
            .state_dir
            .as_deref()
            .map(|d| walstream::status::default_path(d, &settings.cluster))
    });
    let repo = open_repo(settings).await?;
    let opts = ReceiverOptions {
        conninfo,
        application_name: ws.application_name.clone(),
        slot: Some(slot),
        create_slot,
        commit_interval: ws.commit_interval,
        status_interval: ws.status_interval,
        status_file,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping after the current commit"),
            _ = int.recv() => info!("SIGINT: stopping after the current commit"),
        }
        let _ = tx.send(true);
    });
    let result = walstream::run(&repo, &settings.cluster, &opts, rx).await;
    signals.abort();
    result.map_err(|e| {
        let code = if matches!(
            e,
            walstream::ReceiveError::Repository(
                pgcairn_engine::Error::Config(_) | pgcairn_engine::Error::Key(_)
            )
        ) {
            ExitCode::Usage
        } else {
            ExitCode::Failed
        };
        Failure::new(code, format!("wal-receive stopped: {e}"))
    })
}
