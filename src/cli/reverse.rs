//! `run`'s reverse-mode flags (docs/reverse.md): the SSH listener for nodes that dial in with
//! `ssh -N -R PORT`, its host key, and the keys that name the nodes. Off unless
//! --reverse-listen is given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kube_ssh_tunnel::pool::PoolConfig;
use kube_ssh_tunnel::reverse::{
    Limits, LiveAuthorized, LiveRevoked, Registry, ReverseConnector, ReverseError, ReverseServer,
    ServerSettings,
};

use super::CliError;
use super::duration::parse_duration;

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

    /// Keys that may not dial in, whatever --reverse-authorized and --reverse-user-ca say: one
    /// OpenSSH public key per line (a node's key, the key inside a certificate, or a CA: its
    /// certificates are refused), or `id: KEY_ID` for a certificate's key id. Re-read when the
    /// file changes; live sessions it revokes are cut.
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_REVERSE_REVOKED",
        value_name = "FILE",
        requires = "reverse_listen"
    )]
    pub reverse_revoked: Option<PathBuf>,

    /// Live sessions one reverse node may hold at once (counted by identity, not by source
    /// address); one more is refused with a message naming this flag.
    #[arg(long, env = "KUBE_SSH_TUNNEL_REVERSE_MAX_SESSIONS_PER_NODE", default_value = "4", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024), requires = "reverse_listen")]
    pub reverse_max_sessions_per_node: u32,

    /// Connections to the reverse listener that have not authenticated yet, all sources
    /// together; one more is closed at once (logged at most every 10 s). Raise it when many
    /// nodes reconnect at once, e.g. after a restart.
    #[arg(long, env = "KUBE_SSH_TUNNEL_REVERSE_MAX_UNAUTHENTICATED", default_value = "64", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000), requires = "reverse_listen")]
    pub reverse_max_unauthenticated: u32,

    /// Connections to the reverse listener from one source address that have not
    /// authenticated yet; one more from it is closed at once. Off by default: nodes behind one
    /// NAT share an address. Set it when nodes come from many addresses, so one address
    /// cannot take every place of --reverse-max-unauthenticated.
    #[arg(long, env = "KUBE_SSH_TUNNEL_REVERSE_MAX_UNAUTHENTICATED_PER_SOURCE", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000), requires = "reverse_listen")]
    pub reverse_max_unauthenticated_per_source: Option<u32>,

    /// Time a connection to the reverse listener has to finish the SSH version exchange and
    /// authentication; then it is disconnected.
    #[arg(long, env = "KUBE_SSH_TUNNEL_REVERSE_LOGIN_GRACE", default_value = "30s", value_name = "DURATION", value_parser = parse_duration, requires = "reverse_listen")]
    pub reverse_login_grace: Duration,
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
    let revoked = match &args.reverse_revoked {
        Some(f) => Some(Arc::new(LiveRevoked::load(f).map_err(usage)?)),
        None => None,
    };
    if args.reverse_login_grace.is_zero() {
        return Err(CliError::usage(
            "--reverse-login-grace must be more than 0, e.g. 30s",
        ));
    }
    let registry = Registry::new();
    let settings = ServerSettings {
        listen,
        host_key,
        authorized: authorized.clone(),
        keepalive_interval: pool.ssh.keepalive_interval,
        keepalive_max: pool.ssh.keepalive_max,
        user_cas,
        revoked,
        limits: Limits {
            max_sessions_per_node: args.reverse_max_sessions_per_node as usize,
            max_unauthenticated: args.reverse_max_unauthenticated as usize,
            max_unauthenticated_per_source: args
                .reverse_max_unauthenticated_per_source
                .map(|n| n as usize),
            login_grace: args.reverse_login_grace,
        },
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
