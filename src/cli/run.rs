//! `run`: flags → a `DaemonConfig`, then the library's `Daemon` until SIGTERM/SIGINT, which
//! drain open streams (up to the drain timeout) and exit 0. SIGHUP re-reads the node file (a
//! file that fails to load keeps the last good set) and the trust files (known_hosts, the key's
//! passphrase file through the key, the admin token file).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kube_ssh_tunnel::daemon::{AdminConfig, DaemonError, ListenerKind, Listeners, TlsListener};
use kube_ssh_tunnel::nodes::NodeSource;
use kube_ssh_tunnel::policy::Policy;
use kube_ssh_tunnel::pool::backoff::BackoffPolicy;
use kube_ssh_tunnel::pool::{HealthConfig, PoolConfig, Probe};
use kube_ssh_tunnel::proxy::FrontLimits;
use kube_ssh_tunnel::ssh::{BufferBudget, ChannelLimits};
use kube_ssh_tunnel::tls::{self, ServerTrust};
use kube_ssh_tunnel::{Daemon, DaemonConfig, DaemonHandle, Node};

use super::CliError;
use super::args::{AdminArgs, FrontArgs, ProbeKind, SshArgs, SuperviseArgs};
use super::settings::{check_gate, ssh_settings};

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub ssh: SshArgs,
    #[command(flatten)]
    pub supervise: SuperviseArgs,
    #[command(flatten)]
    pub front: FrontArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub reverse: super::reverse::ReverseArgs,

    /// Threads that run the daemon's tasks (default: one per CPU core). One thread costs the
    /// least CPU per new stream, but one stream's download costs more CPU per GB on it. More
    /// threads serve many busy nodes at once. See docs/architecture.md, "Runtime".
    #[arg(long, env = "KUBE_SSH_TUNNEL_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,

    /// Allow --admin-listen on a non-loopback address (actions there need --admin-token-file;
    /// reads need it too only with --admin-token-for-reads).
    #[arg(long, env = "KUBE_SSH_TUNNEL_ADMIN_ALLOW_REMOTE")]
    pub admin_allow_remote: bool,

    /// On --admin-listen, reads (/status, /metrics, /healthz, /readyz) need the token too.
    #[arg(long, env = "KUBE_SSH_TUNNEL_ADMIN_TOKEN_FOR_READS")]
    pub admin_token_for_reads: bool,

    /// /readyz wants at least this share (0..1) of the desired nodes ready, and at least one.
    #[arg(long, env = "KUBE_SSH_TUNNEL_READY_SHARE", default_value_t = 0.0)]
    pub ready_share: f64,

    /// Take the nodes from the cluster: watch Node objects through this kubeconfig (its
    /// current context) instead of --node/--nodes.
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_KUBECONFIG",
        conflicts_with = "in_cluster"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// Take the nodes from the cluster with the pod's service account (needs get/list/watch
    /// on nodes).
    #[arg(long, env = "KUBE_SSH_TUNNEL_IN_CLUSTER")]
    pub in_cluster: bool,

    /// Watch only nodes with these labels (a label selector, e.g. ssh-tunnel=true).
    #[arg(long, env = "KUBE_SSH_TUNNEL_NODE_SELECTOR")]
    pub node_selector: Option<String>,

    /// Where host keys come from: known-hosts (the --ssh-known-hosts files only), or nodes
    /// (also each node's own Node annotations, written by `publish-host-key`, for a host no
    /// known_hosts line names; needs the Node watch and the NodeRestriction admission plugin,
    /// see docs/security.md).
    #[arg(long, env = "KUBE_SSH_TUNNEL_HOST_KEY_SOURCE", value_enum, default_value_t = HostKeySource::KnownHosts)]
    pub host_key_source: HostKeySource,
}

/// `--host-key-source`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKeySource {
    /// The known_hosts files only.
    KnownHosts,
    /// known_hosts first, then the node's own Node annotations.
    Nodes,
}

/// Where the CONNECT socket goes when no listener is named.
pub(crate) const DEFAULT_PROXY_UDS: &str = "/run/kube-ssh-tunnel/proxy.sock";

/// What `Daemon::start` says when a static list or node file has no nodes.
const NO_NODES: &str = "no nodes: give --node NAME=ADDR[:PORT] (repeatable), --nodes FILE, or --kubeconfig FILE / --in-cluster";

pub async fn run(args: RunArgs) -> Result<(), CliError> {
    run_until(args, std::future::pending()).await
}

/// `run`, which also stops (the same graceful way as on SIGTERM) when `until` completes.
pub async fn run_until(
    args: RunArgs,
    until: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    super::logging::init_with(args.ssh.log_level.as_deref(), args.ssh.log_format);
    check_gate(&args.ssh)?;
    // Take SIGTERM/SIGINT over first: one that arrives while sockets are bound or nodes
    // connect is then a clean stop (and removes the sockets), never the default kill.
    let signal = shutdown_signal()?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| CliError::failure(format!("cannot listen for SIGHUP: {e}")))?;
    let mut cfg = daemon_config(&args)?;
    let reverse = super::reverse::prepare(&args.reverse, &mut cfg.pool).await?;
    if let Some((before, after)) = super::limits::raise_open_files()
        && after > before
    {
        tracing::debug!(before, after, "raised the soft open-files limit");
    }
    let daemon = Daemon::start(cfg).await.map_err(start_error)?;
    let stop_reverse = tokio_util::sync::CancellationToken::new();
    if let Some(server) = reverse {
        // A node may dial in only while it is in the node set (file, flags or Node watch).
        let pool = daemon.pool().clone();
        tokio::spawn(server.serve(
            Arc::new(move |node: &str| pool.in_node_set(node)),
            stop_reverse.clone(),
        ));
    }
    let _stop_reverse = stop_reverse.drop_guard();
    serve_until(
        daemon,
        async move {
            tokio::select! {
                _ = signal => {}
                _ = until => {}
            }
        },
        &mut hup,
    )
    .await;
    Ok(())
}

/// Runs `daemon` until `stop`, re-reading the node file and the trust files on SIGHUP; then shuts it down
/// (draining up to the pool's drain timeout).
pub(crate) async fn serve_until(
    daemon: DaemonHandle,
    stop: impl std::future::Future<Output = ()>,
    hup: &mut tokio::signal::unix::Signal,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {
                if daemon.reload_nodes() {
                    tracing::info!("SIGHUP: reloading the node file");
                }
                tracing::info!("SIGHUP: reloading the trust files");
                daemon.reload_trust_files();
            }
        }
    }
    let drain = daemon.pool().config().drain_timeout;
    daemon.shutdown(drain).await;
}

/// A start-up failure as the CLI reports it, naming the flag where one is at fault.
fn start_error(e: DaemonError) -> CliError {
    match e {
        DaemonError::NoNodes => CliError::usage(NO_NODES),
        DaemonError::Listen {
            listener,
            address,
            source,
        } => {
            let flag = match listener {
                ListenerKind::ConnectTls => "--proxy-listen",
                ListenerKind::Admin => "--admin-listen",
            };
            CliError::usage(format!("{flag} {address}: {source}"))
        }
        e => CliError::usage(e),
    }
}

/// The flags as a `DaemonConfig`: every check that names a flag happens here.
fn daemon_config(args: &RunArgs) -> Result<DaemonConfig, CliError> {
    if !(0.0..=1.0).contains(&args.ready_share) {
        return Err(CliError::usage(
            "--ready-share must be between 0 and 1 (a share of the desired nodes)",
        ));
    }
    let nodes = node_source(args)?;
    let pool = pool_config(args)?;
    let policy = policy(&args.front)?;
    if args.front.header_timeout.is_zero() {
        return Err(CliError::usage(
            "--header-timeout must be greater than 0 (0 would drop every CONNECT)",
        ));
    }
    if args.front.tls_handshake_timeout.is_zero() || args.front.max_tls_handshakes == 0 {
        return Err(CliError::usage(
            "--tls-handshake-timeout and --max-tls-handshakes must be greater than 0",
        ));
    }
    let front = FrontLimits {
        header_timeout: args.front.header_timeout,
        max_connections: args.front.max_connections.max(1),
        max_tls_handshakes: args.front.max_tls_handshakes.max(1),
        tls_handshake_timeout: args.front.tls_handshake_timeout,
        ..FrontLimits::default()
    };
    let unix = match (&args.front.proxy_uds, &args.front.proxy_listen) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some(PathBuf::from(DEFAULT_PROXY_UDS)),
        (None, Some(_)) => None,
    };
    let tls = match args.front.proxy_listen {
        None => None,
        Some(address) => {
            let (Some(cert), Some(key), Some(ca)) = (
                &args.front.tls_cert,
                &args.front.tls_key,
                &args.front.client_ca,
            ) else {
                return Err(CliError::usage(
                    "--proxy-listen needs --tls-cert, --tls-key and --client-ca: kube-apiserver's TCP transport always uses mutual TLS",
                ));
            };
            Some(TlsListener {
                address,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
            })
        }
    };
    // Read again by the daemon when the file changes (a rotated token applies without a
    // restart).
    let token = match &args.admin.admin_token_file {
        Some(path) => Some(Arc::new(
            kube_ssh_tunnel::admin::token::AdminToken::from_file(path)
                .map_err(|e| CliError::usage(e.to_string()))?,
        )),
        None => None,
    };
    if args.admin_token_for_reads && token.is_none() {
        return Err(CliError::usage(
            "--admin-token-for-reads needs --admin-token-file",
        ));
    }
    // The Unix socket is always served (actions allowed: its mode is its access control);
    // --admin-listen adds a TCP listener for probes and scrapes.
    if let Some(addr) = args.admin.admin_listen {
        if !addr.ip().is_loopback() && !args.admin_allow_remote {
            return Err(CliError::usage(format!(
                "--admin-listen {addr} is not a loopback address; the admin API can drain nodes. Use 127.0.0.1, the default Unix socket, or pass --admin-allow-remote (with --admin-token-file)"
            )));
        }
        if token.is_none() {
            tracing::warn!(
                "--admin-listen without --admin-token-file: reads only over TCP; drain and reconnect are refused there (the admin socket still takes them)"
            );
        }
    }
    Ok(DaemonConfig {
        pool,
        policy,
        front,
        listeners: Listeners { unix, tls },
        admin: AdminConfig {
            socket: Some(args.admin.admin_uds.clone()),
            tcp: args.admin.admin_listen,
            token,
            token_for_reads: args.admin_token_for_reads,
        },
        nodes,
        ready_share: args.ready_share,
        trust_reload_interval: args.supervise.reload_interval,
    })
}

/// `--node`, `--nodes` or the cluster's Nodes: exactly one kind of source.
fn node_source(args: &RunArgs) -> Result<NodeSource, CliError> {
    let mut fixed = Vec::new();
    for spec in &args.ssh.nodes {
        fixed.push(Node::parse_spec(spec)?);
    }
    let watching = args.kubeconfig.is_some() || args.in_cluster;
    if watching && (!fixed.is_empty() || args.ssh.nodes_file.is_some()) {
        return Err(CliError::usage(
            "--kubeconfig/--in-cluster take the nodes from the cluster; drop --node and --nodes (one source of nodes)",
        ));
    }
    if args.host_key_source == HostKeySource::Nodes && !watching {
        return Err(CliError::usage(
            "--host-key-source nodes reads host keys from the Node objects; it needs the Node watch (--kubeconfig or --in-cluster)",
        ));
    }
    if args.node_selector.is_some() && !watching {
        return Err(CliError::usage(
            "--node-selector applies to watched nodes; it needs --kubeconfig or --in-cluster",
        ));
    }
    if watching {
        return kube_source(args);
    }
    match &args.ssh.nodes_file {
        Some(path) => Ok(NodeSource::File {
            path: path.clone(),
            extra: fixed,
            address_types: args.ssh.node_address_types.clone(),
            interval: args.supervise.reload_interval,
        }),
        None if fixed.is_empty() => Err(CliError::usage(NO_NODES)),
        None => Ok(NodeSource::Static(fixed)),
    }
}

/// The Kubernetes watch of `run --kubeconfig/--in-cluster`.
#[cfg(feature = "kube")]
fn kube_source(args: &RunArgs) -> Result<NodeSource, CliError> {
    use kube_ssh_tunnel::nodes::watch::{ApiSource, WatchConfig};
    let source = match &args.kubeconfig {
        Some(p) => ApiSource::Kubeconfig(p.clone()),
        None => ApiSource::InCluster,
    };
    let cfg = WatchConfig {
        source,
        label_selector: args.node_selector.clone(),
        address_types: args.ssh.node_address_types.clone(),
    };
    tracing::info!(source = ?cfg.source, selector = ?cfg.label_selector, "watching the cluster's Nodes");
    Ok(NodeSource::Kube(cfg))
}

#[cfg(not(feature = "kube"))]
fn kube_source(_args: &RunArgs) -> Result<NodeSource, CliError> {
    Err(CliError::usage(
        "--kubeconfig/--in-cluster need the `kube` cargo feature; this binary was built without it (use --nodes FILE)",
    ))
}

fn policy(f: &FrontArgs) -> Result<Policy, CliError> {
    let p = Policy {
        node_ports: f.node_port.clone(),
        service_cidrs: f.service_cidr.clone(),
        allow_pod_ips: !f.deny_pod_ips,
        allow_cidrs: f.allow_cidr.clone(),
        loopback_ports: f.loopback_port.clone(),
    };
    p.validate()?;
    Ok(p)
}

fn pool_config(args: &RunArgs) -> Result<PoolConfig, CliError> {
    let s = &args.supervise;
    let probe = match s.health_probe {
        ProbeKind::None => Probe::None,
        ProbeKind::Http => Probe::parse_url(&s.health_url)?,
        ProbeKind::Tcp => Probe::Tcp {
            port: s.health_port,
        },
    };
    if s.health_interval.is_zero() || s.health_timeout.is_zero() {
        return Err(CliError::usage(
            "--health-interval and --health-timeout must be greater than 0",
        ));
    }
    if s.backoff_min.is_zero() || s.backoff_max < s.backoff_min {
        return Err(CliError::usage(
            "--backoff-min must be > 0 and --backoff-max at least --backoff-min",
        ));
    }
    if s.backoff_auth_max < s.backoff_min {
        return Err(CliError::usage(
            "--backoff-auth-max must be at least --backoff-min (a smaller cap retries rejected authentication in a tight loop)",
        ));
    }
    if s.max_handshakes == 0 {
        return Err(CliError::usage("--max-handshakes must be at least 1"));
    }
    if s.max_connections_per_node == 0 {
        return Err(CliError::usage(
            "--max-connections-per-node must be at least 1 (1 turns isolation off)",
        ));
    }
    if s.channel_buffer < 64 << 10 || s.channel_buffer > s.buffer_budget {
        return Err(CliError::usage(
            "--channel-buffer must be at least 64KiB and at most --buffer-budget",
        ));
    }
    if s.stall_timeout.is_zero() {
        return Err(CliError::usage("--stall-timeout must be greater than 0"));
    }
    let spill_dir = s
        .spill_dir
        .clone()
        .unwrap_or_else(kube_ssh_tunnel::ssh::budget::default_spill_dir);
    let spilling = s.spill_budget > 0 && s.channel_spill > 0;
    if spilling && !spill_dir.is_dir() {
        return Err(CliError::usage(format!(
            "--spill-dir {} is not a directory; create it, point --spill-dir elsewhere, or turn spilling off with --spill-budget 0",
            spill_dir.display()
        )));
    }
    let mut ssh = ssh_settings(&args.ssh)?;
    ssh.host_keys_from_nodes = args.host_key_source == HostKeySource::Nodes;
    ssh.channel = ChannelLimits {
        stall_timeout: s.stall_timeout,
        recv_buffer_max: usize::try_from(s.channel_buffer).unwrap_or(usize::MAX),
        spill_max: if spilling { s.channel_spill } else { 0 },
        budget: std::sync::Arc::new(BufferBudget::new(
            s.buffer_budget,
            spilling.then_some(spill_dir),
            s.spill_budget,
        )),
    };
    let mut cfg = PoolConfig::new(ssh);
    let needs_tls = matches!(probe, Probe::Http { tls: true, .. });
    let tls = match (&s.health_ca, s.health_insecure_skip_tls_verify) {
        (Some(ca), false) => Some(tls::client_config(ServerTrust::CaFile(ca))?),
        (None, true) => {
            tracing::warn!(
                "--health-insecure-skip-tls-verify: https probes accept any certificate"
            );
            Some(tls::client_config(ServerTrust::InsecureSkipVerify)?)
        }
        (Some(_), true) => {
            return Err(CliError::usage(
                "--health-ca and --health-insecure-skip-tls-verify exclude each other; pick one",
            ));
        }
        (None, false) if needs_tls => {
            return Err(CliError::usage(
                "an https --health-url needs --health-ca FILE (the CA of the kubelets' serving \
                 certificates) or --health-insecure-skip-tls-verify",
            ));
        }
        (None, false) => None,
    };
    cfg.health = HealthConfig {
        probe,
        interval: s.health_interval,
        timeout: s.health_timeout,
        reconnect_after: s.health_failures.max(1),
        tls,
    };
    cfg.backoff = BackoffPolicy {
        min: s.backoff_min,
        max: s.backoff_max,
    };
    cfg.backoff_needs_human = BackoffPolicy {
        min: BackoffPolicy::NEEDS_HUMAN.min.min(s.backoff_auth_max),
        max: s.backoff_auth_max.max(s.backoff_min),
    };
    cfg.drain_timeout = s.drain_timeout;
    cfg.max_handshakes = s.max_handshakes;
    cfg.max_channels_per_connection = s.max_channels_per_connection;
    cfg.overflow_idle_timeout = s.extra_connection_idle_timeout;
    cfg.max_connections_per_node = s.max_connections_per_node;
    cfg.service_cidrs = args.front.service_cidr.clone();
    cfg.failure_log_interval = s.failure_log_interval;
    Ok(cfg)
}

/// Registers SIGTERM and SIGINT now; the returned future resolves on either.
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, CliError> {
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
