//! `dial`: one channel to a destination, relayed to stdin/stdout like `ssh -W`. Standalone:
//! it connects to the node itself with the same flags as `run`.

use clap::Args;
use kube_ssh_tunnel::pool::route::owner;
use kube_ssh_tunnel::pool::{PoolConfig, Probe};
use kube_ssh_tunnel::{Destination, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliError;
use super::args::SshArgs;
use super::settings::{check_gate, nodes, ssh_settings};

/// The kubelet port, used when the target is a bare node name.
const KUBELET_PORT: u16 = 10250;

#[derive(Args, Debug)]
pub struct DialArgs {
    #[command(flatten)]
    pub ssh: SshArgs,

    /// Go through this node whatever the destination (default: the node that owns it).
    #[arg(long)]
    pub via: Option<String>,

    /// NODE (its kubelet, port 10250) or HOST:PORT ([IPv6]:PORT for IPv6).
    pub target: String,
}

pub async fn dial(args: DialArgs) -> Result<(), CliError> {
    super::logging::init(args.ssh.log_level.as_deref().or(Some("warn")));
    check_gate(&args.ssh)?;
    let nodes = nodes(&args.ssh)?;
    if nodes.is_empty() {
        return Err(CliError::usage(
            "no nodes: give at least one --node NAME=ADDR[:PORT] or --nodes FILE",
        ));
    }
    let dest = match nodes.iter().find(|n| n.name == args.target) {
        Some(n) => Destination::new(n.address.clone(), KUBELET_PORT)?,
        None => args.target.parse::<Destination>()?,
    };
    // Connect to the one node this dial needs, nothing else.
    let node = match &args.via {
        Some(name) => nodes.iter().find(|n| &n.name == name).ok_or_else(|| {
            CliError::usage(format!("--via {name}: no such node; give it with --node {name}=ADDR"))
        })?,
        None => owner(&nodes, &dest).ok_or_else(|| {
            CliError::usage(format!(
                "no node matches destination {dest}; name a node with --node, or pick the node with --via NODE"
            ))
        })?,
    }
    .clone();
    // One shot: no health probes, and no waiting for reconnects after a failed first attempt.
    let mut cfg = PoolConfig::new(ssh_settings(&args.ssh)?);
    cfg.health.probe = Probe::None;
    cfg.reconnect_wait = Some(std::time::Duration::ZERO);
    let name = node.name.clone();
    let pool = Pool::with_config(cfg, vec![node])?;
    let stream = pool
        .dial_through(&name, &dest)
        .await
        .map_err(CliError::failure)?;
    let result = relay(stream).await;
    pool.shutdown().await;
    result
}

/// Copies stdin → channel (then EOF) and channel → stdout until the node's side ends.
async fn relay(stream: kube_ssh_tunnel::TunnelStream) -> Result<(), CliError> {
    let (mut from_node, mut to_node) = tokio::io::split(stream);
    let upload = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_node.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
        let _ = to_node.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let copied = tokio::io::copy(&mut from_node, &mut stdout).await;
    let _ = stdout.flush().await;
    upload.abort();
    match copied {
        Ok(_) => Ok(()),
        Err(e) => Err(CliError::failure(format!("relay ended with an error: {e}"))),
    }
}
