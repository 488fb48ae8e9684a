//! `DaemonConfig`: everything a daemon is made of, typed — the pool, the dial policy, the
//! CONNECT front's limits and listeners, the admin API, the node source and readiness. The CLI
//! turns flags into one of these (`cli/run.rs`); the demo and library users build one
//! directly. Checks that need no I/O live here (`validate`); files are read and sockets bound
//! by `Daemon::start`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::nodes::NodeSource;
use crate::policy::Policy;
use crate::pool::PoolConfig;
use crate::proxy::FrontLimits;

/// A whole daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub pool: PoolConfig,
    /// Which destinations a CONNECT may reach.
    pub policy: Policy,
    pub front: FrontLimits,
    /// Where CONNECT is served.
    pub listeners: Listeners,
    pub admin: AdminConfig,
    pub nodes: NodeSource,
    /// `/readyz` wants at least this share (0..1) of the desired nodes ready, and at least one.
    pub ready_share: f64,
    /// How often the trust files (known_hosts) are checked for changes; SIGHUP
    /// (`DaemonHandle::reload_trust_files`) re-reads them at once.
    pub trust_reload_interval: std::time::Duration,
}

/// The CONNECT listeners: a Unix socket, mutual TLS on TCP, or both.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub unix: Option<PathBuf>,
    pub tls: Option<TlsListener>,
}

/// Mutual TLS on TCP (kube-apiserver's TCP egress transport always uses it).
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub address: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA.
    pub client_ca: PathBuf,
}

/// Where the admin API listens and who may use it. A daemon can serve it on a Unix socket and
/// on TCP at once: the socket for operators on the host (every request allowed), TCP for
/// probes and Prometheus.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// A Unix socket, mode 0600 (the file mode is its access control: actions allowed).
    pub socket: Option<PathBuf>,
    /// A TCP listener; loopback unless the caller allowed otherwise. Its requests pass the
    /// Host check and need `token` for actions (and for reads with `token_for_reads`).
    pub tcp: Option<SocketAddr>,
    /// On TCP: the bearer token actions need (None: actions are refused over TCP). One read
    /// from a file (`AdminToken::from_file`) is re-read when the file changes.
    pub token: Option<Arc<crate::admin::token::AdminToken>>,
    /// On TCP: reads need the token too.
    pub token_for_reads: bool,
}

impl DaemonConfig {
    /// A daemon for `pool` and `nodes` with the default policy, front limits and readiness,
    /// serving CONNECT on `proxy_socket` and the admin API on `admin_socket`.
    pub fn new(
        pool: PoolConfig,
        nodes: NodeSource,
        proxy_socket: PathBuf,
        admin_socket: PathBuf,
    ) -> DaemonConfig {
        DaemonConfig {
            pool,
            policy: Policy::default(),
            front: FrontLimits::default(),
            listeners: Listeners {
                unix: Some(proxy_socket),
                tls: None,
            },
            admin: AdminConfig {
                socket: Some(admin_socket),
                tcp: None,
                token: None,
                token_for_reads: false,
            },
            nodes,
            ready_share: 0.0,
            trust_reload_interval: std::time::Duration::from_secs(5),
        }
    }

    /// Checks what needs no I/O: limits, shares, the policy and that CONNECT is served.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(0.0..=1.0).contains(&self.ready_share) {
            return invalid(
                "the ready share must be between 0 and 1 (a share of the desired nodes)",
            );
        }
        if self.front.header_timeout.is_zero() {
            return invalid(
                "the header timeout must be greater than 0 (0 would drop every CONNECT)",
            );
        }
        if self.front.tls_handshake_timeout.is_zero() || self.front.max_tls_handshakes == 0 {
            return invalid(
                "the TLS handshake timeout and the pending-handshake cap must be greater than 0",
            );
        }
        if self.listeners.unix.is_none() && self.listeners.tls.is_none() {
            return invalid("no CONNECT listener: give a Unix socket, a TLS listener, or both");
        }
        if self.admin.socket.is_none() && self.admin.tcp.is_none() {
            return invalid(
                "no admin API listener: give a Unix socket, a TCP address, or both (probes and drain need one)",
            );
        }
        if self.admin.token_for_reads && self.admin.token.is_none() {
            return invalid("the admin token for reads needs an admin token");
        }
        self.policy.validate()
    }
}
