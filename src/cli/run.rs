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
        return Err(CliError::usage("no nodes: give --node NAME=ADDR[:PORT] (repeatable) or --nodes FILE"));
    }
    let pool = Pool::new(ssh_settings(&args.ssh)?, nodes)?;
    for (node, result) in pool.connect_all().await {
        match result {
            Ok(t) => tracing::info!(node = %node, host_key = %t.host_key(), "tunnel ready"),
            Err(e) => tracing::error!(node = %node, error = %e, "tunnel failed"),
        }
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    pool.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
