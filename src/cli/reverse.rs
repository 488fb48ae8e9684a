//! `run`'s reverse-mode flags (docs/reverse.md): the SSH listener for nodes that dial in with
//! `ssh -N -R PORT`, its host key, and the keys that name the nodes. Off unless
//! --reverse-listen is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kube_ssh_tunnel::pool::PoolConfig;
use kube_ssh_tunnel::reverse::{
    LiveAuthorized, Registry, ReverseConnector, ReverseError, ReverseServer, ServerSettings,
};

use super::CliError;

#[derive(Args, Debug, Clone)]
pub struct ReverseArgs {
    /// Reverse mode: accept nodes' own SSH connections (`ssh -N -R PORT`, a dynamic reverse
    /// forward) on ADDR:PORT; a node named in --reverse-authorized is reached only through
    /// its connection (docs/reverse.md). Off by default.
    #[arg(long, env = "KUBE_SSH_TUNNEL_REVERSE_LISTEN", value_name = "ADDR:PORT", requires_all = ["reverse_host_key", "reverse_authorized"])]
    pub reverse_listen: Option<SocketAddr>,

    /// The reverse listener's SSH host key (OpenSSH private key file; nodes pin its public
    /// key in their known_hosts).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_REVERSE_HOST_KEY",
        value_name = "FILE",
        requires = "reverse_listen"
    )]
    pub reverse_host_key: Option<PathBuf>,

    /// Which key is which reverse node: lines `NODE_NAME KEYTYPE BASE64 [comment]`. A node
    /// logs in as its name with its key; re-read when the file changes.
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_REVERSE_AUTHORIZED",
        value_name = "FILE",
        requires = "reverse_listen"
    )]
    pub reverse_authorized: Option<PathBuf>,

    /// CA public keys (OpenSSH lines) whose user certificates name reverse nodes: principal =
    /// node name = login name; validity checked; no critical options. The node must still be
    /// listed in --reverse-authorized (a bare NODE_NAME line is enough).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_REVERSE_USER_CA",
        value_name = "FILE",
        requires = "reverse_listen"
    )]
    pub reverse_user_ca: Option<PathBuf>,
}

fn usage(e: ReverseError) -> CliError {
    CliError::usage(e)
}

/// With --reverse-listen: binds the listener and puts the reverse connector into `pool`.
pub async fn prepare(
    args: &ReverseArgs,
    pool: &mut PoolConfig,
) -> Result<Option<ReverseServer>, CliError> {
    let (Some(listen), Some(host_key), Some(authorized)) = (
        args.reverse_listen,
        args.reverse_host_key.clone(),
        args.reverse_authorized.as_deref(),
    ) else {
        return Ok(None);
    };
    let authorized = Arc::new(LiveAuthorized::load(authorized).map_err(usage)?);
    let mut user_cas = Vec::new();
    if let Some(f) = &args.reverse_user_ca {
        let text = std::fs::read_to_string(f)
            .map_err(|e| CliError::usage(format!("--reverse-user-ca {}: {e}", f.display())))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = russh::keys::ssh_key::PublicKey::from_openssh(line).map_err(|e| {
                CliError::usage(format!(
                    "--reverse-user-ca {}:{}: not an OpenSSH public key: {e}",
                    f.display(),
                    i + 1
                ))
            })?;
            user_cas.push(key);
        }
    }
    let registry = Registry::new();
    let settings = ServerSettings {
        listen,
        host_key,
        authorized: authorized.clone(),
        keepalive_interval: pool.ssh.keepalive_interval,
        keepalive_max: pool.ssh.keepalive_max,
        user_cas,
    };
    let server = ReverseServer::bind(settings, registry.clone())
        .await
        .map_err(|e| match e {
            ReverseError::Bind { .. } => CliError::failure(e),
            e => usage(e),
        })?;
    if let Some(a) = server.local_addr() {
        tracing::info!(address = %a, "reverse listener: nodes may dial in");
    }
    pool.connector = Arc::new(ReverseConnector::new(registry, authorized));
    Ok(Some(server))
}
