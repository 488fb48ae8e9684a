//! `dial`: one stream to a destination, relayed to stdin/stdout like `ssh -W`. Two ways:
//! - **through a running daemon** (`--proxy-uds PATH`, or the default socket when no node is
//!   given): it sends exactly the CONNECT kube-apiserver sends, so an operator tests the very
//!   path the apiserver uses — policy, routing, the node's tunnel — without a second SSH
//!   connection. A refused CONNECT exits 1 with the daemon's status line.
//! - **standalone**: it connects to the node itself with the same flags as `run` (also gated
//!   by `--ssh-tunnel`).

use clap::Args;
use kube_ssh_tunnel::pool::route::owner;
use kube_ssh_tunnel::pool::{PoolConfig, Probe};
use kube_ssh_tunnel::{Destination, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliError;
use super::args::SshArgs;
use super::run::DEFAULT_PROXY_UDS;
use super::settings::{check_gate, nodes, ssh_settings};

/// The kubelet port, used when the target is a bare node name.
const KUBELET_PORT: u16 = 10250;

#[derive(Args, Debug)]
pub struct DialArgs {
    #[command(flatten)]
    pub ssh: SshArgs,

    /// Go through this node whatever the destination (default: the node that owns it).
    /// Standalone only.
    #[arg(long)]
    pub via: Option<String>,

    /// Dial through the running daemon's CONNECT socket (as kube-apiserver does). Without
    /// --node/--nodes, the default socket is used when it exists.
    #[arg(long = "proxy-uds", env = "KUBE_SSH_TUNNEL_PROXY_UDS")]
    pub proxy_uds: Option<std::path::PathBuf>,

    /// NODE (its kubelet, port 10250) or HOST:PORT ([IPv6]:PORT for IPv6).
    pub target: String,
}

/// How long the daemon may take to answer a CONNECT (its own dial timeout is shorter).
const CONNECT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn dial(args: DialArgs) -> Result<(), CliError> {
    super::logging::init(args.ssh.log_level.as_deref().or(Some("warn")));
    let no_nodes = args.ssh.nodes.is_empty() && args.ssh.nodes_file.is_none();
    let socket = match &args.proxy_uds {
        Some(p) => Some(p.clone()),
        None if no_nodes && std::path::Path::new(DEFAULT_PROXY_UDS).exists() => {
            Some(DEFAULT_PROXY_UDS.into())
        }
        None => None,
    };
    if let Some(socket) = socket {
        if args.via.is_some() {
            return Err(CliError::usage(
                "--via picks a node for a standalone dial; through the daemon, its routing picks the node",
            ));
        }
        return dial_daemon(&socket, &args.target).await;
    }
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

/// Sends kube-apiserver's CONNECT for `target` (a bare node name means its kubelet port) on
/// the daemon's socket and relays stdin/stdout once it answers 200.
async fn dial_daemon(socket: &std::path::Path, target: &str) -> Result<(), CliError> {
    let target = if let Ok(ip) = target.parse::<std::net::IpAddr>() {
        // A bare address (IPv6 too): its kubelet port.
        kube_ssh_tunnel::destination::join_host_port(&ip.to_string(), KUBELET_PORT)
    } else if target.contains(':') {
        target.to_string()
    } else {
        format!("{target}:{KUBELET_PORT}")
    };
    let mut s = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        CliError::usage(format!(
            "cannot reach the daemon's CONNECT socket {}: {e}; is `kube-ssh-tunnel run` running? Point to it with --proxy-uds PATH",
            socket.display()
        ))
    })?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| CliError::failure(format!("CONNECT {target}: {e}")))?;
    // The head, byte by byte: nothing after it may be consumed (the stream follows).
    let head = tokio::time::timeout(CONNECT_ANSWER_TIMEOUT, async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            head.push(s.read_u8().await?);
        }
        Ok::<_, std::io::Error>(head)
    })
    .await
    .map_err(|_| {
        CliError::failure(format!(
            "CONNECT {target}: no answer from the daemon in time"
        ))
    })?
    .map_err(|e| {
        CliError::failure(format!(
            "CONNECT {target}: the daemon closed the connection: {e}"
        ))
    })?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or("").trim().to_string();
    if !status.starts_with("HTTP/1.1 200") {
        let mut body = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            (&mut s).take(64 * 1024).read_to_string(&mut body),
        )
        .await;
        return Err(CliError::failure(format!(
            "CONNECT {target}: {status}: {}",
            body.trim()
        )));
    }
    relay(s).await
}

/// Copies stdin → stream (then EOF) and stream → stdout until the far side ends.
async fn relay<S>(stream: S) -> Result<(), CliError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
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
