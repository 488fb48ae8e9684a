//! `run`: the daemon. One supervised SSH connection per node; the node set follows the
//! `--nodes` file (re-read on change or SIGHUP; a file that fails to load keeps the last good
//! set); SIGTERM/SIGINT drain open streams (up to the drain timeout) and exit 0.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args;
use kube_ssh_tunnel::admin::server::{AdminState, router as admin_router};
use kube_ssh_tunnel::policy::Policy;
use kube_ssh_tunnel::pool::backoff::BackoffPolicy;
use kube_ssh_tunnel::pool::{HealthConfig, PoolConfig, Probe};
use kube_ssh_tunnel::proxy::{ConnectFront, FrontLimits, listen};
use kube_ssh_tunnel::ssh::{BufferBudget, ChannelLimits};
use kube_ssh_tunnel::tls::{self, ServerTrust};
use kube_ssh_tunnel::{Node, Pool};
use std::sync::Arc;

use super::CliError;
use super::args::{AdminArgs, FrontArgs, SshArgs, SuperviseArgs};
use super::settings::{check_gate, nodes, ssh_settings};

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

    /// Allow --admin-listen on a non-loopback address (actions need --admin-token-file; reads
    /// need it too only with --admin-token-for-reads).
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
}

/// Where the CONNECT socket goes when no listener is named.
pub(crate) const DEFAULT_PROXY_UDS: &str = "/run/kube-ssh-tunnel/proxy.sock";

pub async fn run(args: RunArgs) -> Result<(), CliError> {
    run_until(args, std::future::pending()).await
}

/// `run`, which also stops (the same graceful way as on SIGTERM) when `until` completes.
pub async fn run_until(
    args: RunArgs,
    until: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    super::logging::init_with(args.ssh.log_level.as_deref(), &args.ssh.log_format);
    check_gate(&args.ssh)?;
    // Take SIGTERM/SIGINT over first: one that arrives while sockets are bound or nodes
    // connect is then a clean stop (and removes the sockets), never the default kill.
    let signal = shutdown_signal()?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| CliError::failure(format!("cannot listen for SIGHUP: {e}")))?;
    if !(0.0..=1.0).contains(&args.ready_share) {
        return Err(CliError::usage(
            "--ready-share must be between 0 and 1 (a share of the desired nodes)",
        ));
    }
    let all = nodes(&args.ssh)?;
    let watching = args.kubeconfig.is_some() || args.in_cluster;
    if watching && (!all.is_empty() || args.ssh.nodes_file.is_some()) {
        return Err(CliError::usage(
            "--kubeconfig/--in-cluster take the nodes from the cluster; drop --node and --nodes (one source of nodes)",
        ));
    }
    if all.is_empty() && !watching {
        return Err(CliError::usage(
            "no nodes: give --node NAME=ADDR[:PORT] (repeatable), --nodes FILE, or --kubeconfig FILE / --in-cluster",
        ));
    }
    if args.node_selector.is_some() && !watching {
        return Err(CliError::usage(
            "--node-selector applies to watched nodes; it needs --kubeconfig or --in-cluster",
        ));
    }
    let cfg = pool_config(&args)?;
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
    let limits = FrontLimits {
        header_timeout: args.front.header_timeout,
        max_connections: args.front.max_connections.max(1),
        max_tls_handshakes: args.front.max_tls_handshakes.max(1),
        tls_handshake_timeout: args.front.tls_handshake_timeout,
        ..FrontLimits::default()
    };
    // Bind before connecting anything: a taken socket is a start-up error (exit 2).
    let uds_path = match (&args.front.proxy_uds, &args.front.proxy_listen) {
        (Some(p), _) => Some(p.clone()),
        (None, None) => Some(PathBuf::from(DEFAULT_PROXY_UDS)),
        (None, Some(_)) => None,
    };
    let uds = match &uds_path {
        Some(p) => Some(listen::bind_uds(p)?),
        None => None,
    };
    let tcp = match args.front.proxy_listen {
        None => None,
        Some(addr) => {
            let (Some(cert), Some(key), Some(ca)) = (
                &args.front.tls_cert,
                &args.front.tls_key,
                &args.front.client_ca,
            ) else {
                return Err(CliError::usage(
                    "--proxy-listen needs --tls-cert, --tls-key and --client-ca: kube-apiserver's TCP transport always uses mutual TLS",
                ));
            };
            let acceptor = listen::mtls_acceptor(cert, key, ca)?;
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError::usage(format!("--proxy-listen {addr}: {e}")))?;
            Some((l, acceptor))
        }
    };
    let admin_token = args.admin.token()?;
    if args.admin_token_for_reads && admin_token.is_none() {
        return Err(CliError::usage(
            "--admin-token-for-reads needs --admin-token-file",
        ));
    }
    let admin_auth = kube_ssh_tunnel::admin::server::AdminAuth {
        tcp: args.admin.admin_listen.is_some(),
        token: admin_token.map(|t| std::sync::Arc::from(t.as_str())),
        token_for_reads: args.admin_token_for_reads,
    };
    if admin_auth.tcp && admin_auth.token.is_none() {
        tracing::warn!(
            "--admin-listen without --admin-token-file: reads only; drain and reconnect are refused over TCP"
        );
    }
    let admin = match args.admin.admin_listen {
        Some(addr) => {
            if !addr.ip().is_loopback() && !args.admin_allow_remote {
                return Err(CliError::usage(format!(
                    "--admin-listen {addr} is not a loopback address; the admin API can drain nodes. Use 127.0.0.1, the default Unix socket, or pass --admin-allow-remote (with --admin-token-file)"
                )));
            }
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError::usage(format!("--admin-listen {addr}: {e}")))?;
            AdminListener::Tcp(l)
        }
        None => AdminListener::Unix(listen::bind_uds_mode(
            &args.admin.admin_uds,
            0o600,
            "admin socket",
        )?),
    };
    let insecure = args.ssh.insecure_skip_host_key_verification;
    if insecure {
        // Repeated hourly so that it cannot scroll out of sight.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            tick.tick().await;
            loop {
                tick.tick().await;
                tracing::warn!(
                    "host keys are NOT verified (--insecure-skip-host-key-verification)"
                );
            }
        });
    }
    let pool = Arc::new(Pool::with_config(cfg, all)?);
    let front = ConnectFront::new(pool.clone(), policy, limits);
    let watch_cancel = tokio_util::sync::CancellationToken::new();
    if watching {
        tokio::spawn(watch_nodes(&args, pool.clone(), watch_cancel.clone()).await?);
    }
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let state = AdminState {
        pool: pool.clone(),
        ready_share: args.ready_share,
        insecure_host_keys: insecure,
        alive: alive.clone(),
        auth: admin_auth,
        reconnected: Default::default(),
    };
    let app = admin_router(state);
    let admin_alive = alive.clone();
    match admin {
        AdminListener::Tcp(l) => {
            tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the admin API");
            tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
                admin_alive.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        AdminListener::Unix(l) => {
            tracing::info!(socket = %args.admin.admin_uds.display(), "serving the admin API");
            tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
                admin_alive.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }
    if let Some(l) = uds {
        tracing::info!(socket = %uds_path.as_deref().unwrap_or(Path::new("")).display(), "serving CONNECT on a Unix socket");
        front.spawn_uds(l);
    }
    if let Some((l, acceptor)) = tcp {
        tracing::info!(address = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving CONNECT over mutual TLS");
        front.spawn_tls(l, acceptor);
    }
    let stop = async move {
        tokio::select! {
            _ = signal => {}
            _ = until => {}
        }
    };
    tokio::pin!(stop);
    let mut watcher = args.ssh.nodes_file.clone().map(NodeFileWatcher::new);
    let mut tick = tokio::time::interval(
        args.supervise
            .reload_interval
            .max(Duration::from_millis(100)),
    );
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {
                if let Some(w) = watcher.as_mut() {
                    tracing::info!(file = %w.path.display(), "SIGHUP: reloading the node file");
                    reload(&pool, &args.ssh, w);
                }
            }
            _ = tick.tick() => {
                if let Some(w) = watcher.as_mut()
                    && w.changed()
                {
                    reload(&pool, &args.ssh, w);
                }
            }
        }
    }
    watch_cancel.cancel();
    let drain = pool.config().drain_timeout;
    tracing::info!(drain_timeout = ?drain, open = front.active(), "shutting down: no new CONNECTs; draining open streams");
    front.stop_accepting();
    if let Some(p) = &uds_path {
        let _ = std::fs::remove_file(p);
    }
    if args.admin.admin_listen.is_none() {
        let _ = std::fs::remove_file(&args.admin.admin_uds);
    }
    let started = std::time::Instant::now();
    let left = front.drain(drain).await;
    if left > 0 {
        tracing::warn!(open = left, "drain timeout: closing streams still open");
    }
    pool.shutdown_within(drain.saturating_sub(started.elapsed()))
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the Kubernetes watch of `run --kubeconfig/--in-cluster` (a bad kubeconfig is a
/// start-up error); the returned future follows the nodes until `cancel`.
#[cfg(feature = "kube")]
async fn watch_nodes(
    args: &RunArgs,
    pool: Arc<Pool>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, CliError> {
    use kube_ssh_tunnel::nodes::watch::{ApiSource, WatchConfig, start};
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
    start(cfg, pool, cancel).await.map_err(CliError::usage)
}

#[cfg(not(feature = "kube"))]
async fn watch_nodes(
    _args: &RunArgs,
    _pool: Arc<Pool>,
    _cancel: tokio_util::sync::CancellationToken,
) -> Result<std::future::Ready<()>, CliError> {
    Err(CliError::usage(
        "--kubeconfig/--in-cluster need the `kube` cargo feature; this binary was built without it (use --nodes FILE)",
    ))
}

enum AdminListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
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
    let probe = match s.health_probe.as_str() {
        "none" => Probe::None,
        "http" => Probe::parse_url(&s.health_url)?,
        _ => Probe::Tcp {
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

/// Notices changes of the node file by its modification time and size.
struct NodeFileWatcher {
    path: PathBuf,
    seen: Option<(SystemTime, u64)>,
}

impl NodeFileWatcher {
    fn new(path: PathBuf) -> Self {
        let seen = stamp(&path);
        NodeFileWatcher { path, seen }
    }

    fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-reads the node file; on any error keeps the current set and says so.
fn reload(pool: &Pool, ssh: &SshArgs, w: &NodeFileWatcher) {
    let mut desired: Vec<Node> = Vec::new();
    for spec in &ssh.nodes {
        match Node::parse_spec(spec) {
            Ok(n) => desired.push(n),
            Err(e) => {
                tracing::error!(error = %e, "keeping the last good node set");
                return;
            }
        }
    }
    match kube_ssh_tunnel::nodes::load_file(&w.path, &ssh.node_address_types) {
        Ok(n) => desired.extend(n),
        Err(e) => {
            tracing::error!(error = %e, nodes = pool.nodes().len(), "node file did not load; keeping the last good node set");
            return;
        }
    }
    if let Err(e) = pool.update(desired) {
        tracing::error!(error = %e, nodes = pool.nodes().len(), "node file is invalid; keeping the last good node set");
    }
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
