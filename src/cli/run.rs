//! `run`: the daemon. Today it keeps one SSH connection per node and reports each node's
//! outcome; the CONNECT front, supervision and admin API attach here as they land.

use clap::Args;
use kube_ssh_tunnel::Pool;

use super::CliError;
use super::args::SshArgs;
use super::settings::{check_gate, nodes, ssh_settings};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub ssh: SshArgs,
}

pub async fn run(args: RunArgs) -> Result<(), CliError> {
    super::logging::init(args.ssh.log_level.as_deref());
    check_gate(&args.ssh)?;
    let nodes = nodes(&args.ssh)?;
    if nodes.is_empty() {
        return Err(CliError::usage(
            "no nodes: give --node NAME=ADDR[:PORT] (repeatable) or --nodes FILE",
        ));
    }
    let pool = Pool::new(ssh_settings(&args.ssh)?, nodes)?;
    // Listen for signals before connecting, so a SIGTERM during start-up is a clean stop.
    let stop = shutdown_signal()?;
    tokio::pin!(stop);
    tokio::select! {
        results = pool.connect_all() => {
            for (node, result) in results {
                match result {
                    Ok(t) => tracing::info!(node = %node, host_key = %t.host_key(), "tunnel ready"),
                    Err(e) => tracing::error!(node = %node, error = %e, "tunnel failed"),
                }
            }
            (&mut stop).await;
        }
        _ = &mut stop => {}
    }
    tracing::info!("shutting down");
    pool.shutdown().await;
    Ok(())
}

/// Registers SIGTERM and SIGINT now; the returned future resolves on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::failure(format!("cannot listen for SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::failure(format!("cannot listen for SIGINT: {e}")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
