//! `Daemon`: the tunnel daemon as a library — what `run` and `demo` start. `Daemon::start`
//! binds the listeners (a taken socket is a start-up error), loads the first node set, builds
//! the pool, and starts every task under one [`Tasks`]: node supervisors, draining
//! connections, the CONNECT accept loops, the admin API (axum, with graceful shutdown), the
//! node source and the loop that applies its node sets. [`DaemonHandle::shutdown`] stops
//! accepting, drains open streams (bounded), closes the connections and waits for every task.

mod config;

pub use config::{AdminConfig, DaemonConfig, Listeners, TlsListener};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::admin::caller::Caller;
use crate::admin::server::{AdminAuth, AdminState, router};
use crate::error::ConfigError;
use crate::node::Node;
use crate::nodes::NodeSource;
use crate::nodes::source::{SourceError, SourceHealth};
use crate::pool::Pool;
use crate::proxy::{ConnectFront, listen};
use crate::ssh::HostKeyPolicy;
use crate::tasks::Tasks;

/// How long shutdown waits for the daemon's own tasks after the drain.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// Why a daemon could not start. Each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Invalid configuration, a bad file, or a socket that cannot be bound.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node source could not start.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A static node list or node file has no nodes.
    #[error("no nodes: the node source gave none")]
    NoNodes,
    /// A TCP listener could not be bound.
    #[error("cannot listen on {address} for {listener}: {source}")]
    Listen {
        listener: ListenerKind,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Which of the daemon's TCP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// CONNECT over mutual TLS.
    ConnectTls,
    /// The admin API.
    Admin,
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::ConnectTls => "CONNECT over mutual TLS",
            ListenerKind::Admin => "the admin API",
        })
    }
}

/// The daemon; see [`Daemon::start`].
pub struct Daemon;

/// A running daemon.
pub struct DaemonHandle {
    pool: Arc<Pool>,
    front: Arc<ConnectFront>,
    tasks: Tasks,
    reload: Arc<Notify>,
    /// Makes the trust-file task re-read every trust file now (SIGHUP).
    trust_reload: Arc<Notify>,
    /// Stops the node source and the loop that applies it (first thing at shutdown).
    source_stop: CancellationToken,
    /// What the node source is (`NodeSource::kind`); a file source reloads on request.
    source_kind: &'static str,
    /// Socket files to remove at shutdown.
    sockets: Vec<PathBuf>,
    admin_address: Option<std::net::SocketAddr>,
    proxy_address: Option<std::net::SocketAddr>,
}

impl Daemon {
    /// Starts a daemon. Must be called inside a tokio runtime. Nothing is left running when
    /// it fails.
    pub async fn start(cfg: DaemonConfig) -> Result<DaemonHandle, DaemonError> {
        cfg.validate()?;
        let tasks = Tasks::new();
        let reload = Arc::new(Notify::new());
        let dynamic = cfg.nodes.is_dynamic();
        let source_kind = cfg.nodes.kind();
        let source_stop = tasks.token().child_token();
        let started = cfg.nodes.start(reload.clone(), source_stop.clone()).await?;
        let mut node_sets = started.nodes;
        let source_health = started.health;
        let first = node_sets.borrow_and_update().clone();
        if first.is_empty() && !dynamic {
            return Err(DaemonError::NoNodes);
        }

        // Bind before connecting anything: a taken socket is a start-up error. A failure
        // after a socket was bound removes it again (`Bound`).
        let mut sockets = Bound(Vec::new());
        let uds = match &cfg.listeners.unix {
            Some(p) => {
                let l = listen::bind_uds(p)?;
                sockets.0.push(p.clone());
                Some(l)
            }
            None => None,
        };
        let tls = match &cfg.listeners.tls {
            Some(t) => {
                let acceptor = listen::mtls_acceptor(&t.cert, &t.key, &t.client_ca)?;
                let l = tokio::net::TcpListener::bind(t.address)
                    .await
                    .map_err(|source| DaemonError::Listen {
                        listener: ListenerKind::ConnectTls,
                        address: t.address,
                        source,
                    })?;
                Some((l, acceptor))
            }
            None => None,
        };
        let admin_tcp = match cfg.admin.tcp {
            Some(address) => Some(tokio::net::TcpListener::bind(address).await.map_err(
                |source| DaemonError::Listen {
                    listener: ListenerKind::Admin,
                    address,
                    source,
                },
            )?),
            None => None,
        };
        let admin_uds = match &cfg.admin.socket {
            Some(p) => {
                let l = listen::bind_uds_mode(p, 0o600, "admin socket")?;
                sockets.0.push(p.clone());
                Some((l, p.clone()))
            }
            None => None,
        };

        let insecure = cfg.pool.ssh.host_key_policy == HostKeyPolicy::InsecureSkip;
        let pool = Arc::new(Pool::with_tasks(cfg.pool, first, tasks.clone())?);
        if insecure {
            // Repeated hourly so that it cannot scroll out of sight.
            let token = tasks.token().clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => tracing::warn!(
                            "host keys are NOT verified (--insecure-skip-host-key-verification)"
                        ),
                    }
                }
            });
        }
        if let Some(task) = started.task {
            tasks.spawn_critical("node source", task);
            tasks.spawn_critical(
                "node set updates",
                apply_node_sets(
                    pool.clone(),
                    node_sets,
                    source_health,
                    source_kind,
                    source_stop.clone(),
                ),
            );
        }

        let trust_reload = Arc::new(Notify::new());
        tasks.spawn_critical(
            "trust file reloads",
            follow_trust_files(
                pool.clone(),
                cfg.admin.token.clone(),
                cfg.trust_reload_interval,
                trust_reload.clone(),
                tasks.token().clone(),
            ),
        );

        let front = ConnectFront::with_stop(
            pool.clone(),
            cfg.policy,
            cfg.front,
            tasks.token().child_token(),
        );
        let state = AdminState {
            pool: pool.clone(),
            ready_share: cfg.ready_share,
            insecure_host_keys: insecure,
            tasks: tasks.clone(),
            auth: AdminAuth::default(),
            reconnected: Default::default(),
        };
        // One state for both listeners (the reconnect limit is shared); each has its own
        // access control: the socket's file mode, or the Host check and the token on TCP.
        let mut admin_address = None;
        if let Some(l) = admin_tcp {
            let app = router(AdminState {
                auth: AdminAuth {
                    tcp: true,
                    token: cfg.admin.token.clone(),
                    token_for_reads: cfg.admin.token_for_reads,
                },
                ..state.clone()
            });
            let token = tasks.token().clone();
            admin_address = l.local_addr().ok();
            tracing::info!(address = %admin_address.map(|a| a.to_string()).unwrap_or_default(), "serving the admin API on TCP");
            tasks.spawn_critical("admin API (TCP)", async move {
                let app = app.into_make_service_with_connect_info::<Caller>();
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
            });
        }
        if let Some((l, path)) = admin_uds {
            let app = router(state);
            let token = tasks.token().clone();
            tracing::info!(socket = %path.display(), "serving the admin API on a Unix socket");
            tasks.spawn_critical("admin API (Unix socket)", async move {
                let app = app.into_make_service_with_connect_info::<Caller>();
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
            });
        }
        if let Some(l) = uds {
            let path = cfg
                .listeners
                .unix
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            tracing::info!(socket = %path.display(), "serving CONNECT on a Unix socket");
            tasks.spawn_critical("CONNECT listener (Unix socket)", front.clone().serve_uds(l));
        }
        let mut proxy_address = None;
        if let Some((l, acceptor)) = tls {
            proxy_address = l.local_addr().ok();
            tracing::info!(address = %proxy_address.map(|a| a.to_string()).unwrap_or_default(), "serving CONNECT over mutual TLS");
            tasks.spawn_critical(
                "CONNECT listener (mutual TLS)",
                front.clone().serve_tls(l, acceptor),
            );
        }
        Ok(DaemonHandle {
            pool,
            front,
            tasks,
            reload,
            trust_reload,
            source_stop,
            source_kind,
            sockets: sockets.keep(),
            admin_address,
            proxy_address,
        })
    }
}

/// Socket files bound so far; removed again if start-up fails before `keep`.
struct Bound(Vec<PathBuf>);

impl Bound {
    fn keep(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The one loop that applies a source's node sets to the pool until `stop`; an invalid set
/// keeps the last good one. It also counts the source's failures in
/// `node_source_errors_total`.
async fn apply_node_sets(
    pool: Arc<Pool>,
    mut sets: watch::Receiver<Vec<Node>>,
    mut health: watch::Receiver<SourceHealth>,
    source: &'static str,
    stop: CancellationToken,
) {
    let mut errors_seen = 0u64;
    let mut health_open = true;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = health.changed(), if health_open => {
                if r.is_err() {
                    health_open = false;
                    continue;
                }
                let errors = health.borrow_and_update().errors;
                pool.metrics()
                    .node_source_errors
                    .inc_by(errors.saturating_sub(errors_seen));
                errors_seen = errors_seen.max(errors);
                continue;
            }
            r = sets.changed() => if r.is_err() { return },
        }
        if stop.is_cancelled() {
            return;
        }
        let set = sets.borrow_and_update().clone();
        let nodes = set.len();
        match pool.update(set) {
            Ok(summary) if source == NodeSource::KUBE => tracing::info!(
                nodes,
                added = ?summary.added,
                removed = ?summary.removed,
                replaced = ?summary.replaced,
                "node set updated from the Kubernetes API"
            ),
            Ok(_) => {}
            Err(e) if source == NodeSource::FILE => {
                tracing::error!(error = %e, nodes = pool.nodes().len(), "node file is invalid; keeping the last good node set")
            }
            Err(e) => {
                tracing::error!(error = %e, source, nodes = pool.nodes().len(), "the node set is invalid; keeping the last good node set")
            }
        }
    }
}

/// Re-reads the trust files (known_hosts, and the admin token file) when they change, every
/// `interval`, and at once on `now` (SIGHUP), until `stop`. A file that fails keeps its last good contents: logged (file
/// and line), counted in `trust_file_reload_errors_total` and shown in `/status`. After a
/// reload that could help, nodes refused for their host key retry at once.
async fn follow_trust_files(
    pool: Arc<Pool>,
    admin_token: Option<Arc<crate::admin::token::AdminToken>>,
    interval: Duration,
    now: Arc<Notify>,
    stop: CancellationToken,
) {
    let trust = pool.config().ssh.known_hosts.clone();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = now.notified() => true,
            _ = tick.tick() => false,
        };
        // Reading a few small files: quick, but file I/O all the same, so off the runtime.
        let (t, token) = (trust.clone(), admin_token.clone());
        let Ok((out, token_reload)) = tokio::task::spawn_blocking(move || {
            let token = token.map(|tk| (tk.reload(forced), tk));
            (t.reload(forced), token)
        })
        .await
        else {
            continue;
        };
        match &token_reload {
            Some((Ok(true), tk)) => tracing::info!(
                file = %tk.file().map(|p| p.display().to_string()).unwrap_or_default(),
                "admin token file changed; using the new token"
            ),
            Some((Err(error), tk)) => {
                let file = tk
                    .file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                tracing::error!(file = %file, error = %error, "admin token file did not reload; keeping the last good token");
                pool.metrics()
                    .trust_file_reload_errors
                    .get_or_create(&crate::metrics::FileLabel { file })
                    .inc();
            }
            _ => {}
        }
        for (path, error) in &out.errors {
            tracing::error!(file = %path.display(), error = %error, "trust file did not reload; keeping its last good contents");
            pool.metrics()
                .trust_file_reload_errors
                .get_or_create(&crate::metrics::FileLabel {
                    file: path.display().to_string(),
                })
                .inc();
        }
        if out.changed {
            tracing::info!(entries = trust.current().len(), "trust files reloaded");
        }
        if out.changed || (forced && out.errors.is_empty()) {
            let woken = pool.retry_host_key_failures();
            if !woken.is_empty() {
                tracing::info!(nodes = ?woken, "retrying nodes refused for their host key");
            }
        }
    }
}

impl DaemonHandle {
    /// The daemon's pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The daemon's tasks (and its health, which `/healthz` reports).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The daemon's CONNECT front (its open connections; `stop_accepting` ends its accept
    /// loops, which a daemon that is not shutting down reports on `/healthz`).
    pub fn front(&self) -> &Arc<ConnectFront> {
        &self.front
    }

    /// Makes a file source re-read its file now (what SIGHUP does). False (and nothing
    /// happens) for other sources.
    pub fn reload_nodes(&self) -> bool {
        if self.source_kind != NodeSource::FILE {
            return false;
        }
        self.reload.notify_one();
        true
    }

    /// Makes the daemon re-read its trust files (known_hosts) now, whatever the node source
    /// (what SIGHUP does).
    pub fn reload_trust_files(&self) {
        self.trust_reload.notify_one();
    }

    /// The admin API's TCP address, when it listens on TCP.
    pub fn admin_address(&self) -> Option<std::net::SocketAddr> {
        self.admin_address
    }

    /// The mutual-TLS CONNECT listener's address, when there is one.
    pub fn proxy_address(&self) -> Option<std::net::SocketAddr> {
        self.proxy_address
    }

    /// Stops the daemon: no new CONNECTs; open streams get up to `drain`, then their
    /// connections close; the sockets are removed; every task is stopped and waited for
    /// (bounded).
    pub async fn shutdown(self, drain: Duration) {
        self.tasks.begin_shutdown();
        // No node set changes from here on: nodes added now would never be drained.
        self.source_stop.cancel();
        tracing::info!(drain_timeout = ?drain, open = self.front.active(), "shutting down: no new CONNECTs; draining open streams");
        self.front.stop_accepting();
        for p in &self.sockets {
            let _ = std::fs::remove_file(p);
        }
        let started = std::time::Instant::now();
        let left = self.front.drain(drain).await;
        if left > 0 {
            tracing::warn!(open = left, "drain timeout: closing streams still open");
        }
        self.pool
            .shutdown_within(drain.saturating_sub(started.elapsed()))
            .await;
        let running = self.tasks.stop(TASKS_GRACE).await;
        if running > 0 {
            tracing::warn!(tasks = running, "tasks still running at exit");
        }
        tracing::info!("stopped");
    }
}

impl Drop for DaemonHandle {
    /// A handle dropped without `shutdown` still stops everything (without a drain).
    fn drop(&mut self) {
        self.tasks.begin_shutdown();
        self.front.stop_accepting();
        self.tasks.token().cancel();
    }
}
