//! Everything the pool needs beyond the SSH settings: health probes, backoff, drain, and how
//! long dials wait for a reconnecting node. The defaults are `run`'s (docs/reference.md).

use std::sync::Arc;
use std::time::Duration;

use super::backoff::BackoffPolicy;
use super::health::HealthConfig;
use super::transport::{Connector, SshConnector};
use crate::ssh::SshSettings;

/// Pool-wide behaviour.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connection settings shared by every node and every connection (held once).
    pub ssh: Arc<SshSettings>,
    /// Health probes through each tunnel.
    pub health: HealthConfig,
    /// Backoff after transient failures.
    pub backoff: BackoffPolicy,
    /// Backoff after failures a human must fix (authentication, host key).
    pub backoff_needs_human: BackoffPolicy,
    /// A connection up this long resets the backoff.
    pub stable_after: Duration,
    /// At most this many SSH handshakes in flight across the pool (reconnect storms).
    pub max_handshakes: usize,
    /// How long a removed node's open streams may run before its connection is closed.
    pub drain_timeout: Duration,
    /// How long a dial waits for a node that is reconnecting (None: the channel open timeout).
    /// A dial always waits for a node's first connection attempt to finish.
    pub reconnect_wait: Option<Duration>,
    /// At most this many channels on one SSH connection; past it the node gets another
    /// connection (OpenSSH aborts a connection at 16,384).
    pub max_channels_per_connection: usize,
    /// An extra connection idle this long is closed.
    pub overflow_idle_timeout: Duration,
    /// At most this many SSH connections to one node (the supervised one, plus extras past
    /// the channel limit or beside congested ones). 1 turns isolation off.
    pub max_connections_per_node: usize,
    /// The cluster's service CIDRs: no node's alias may lie in them (see `pool::vet`).
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// While a node fails the same way, a summary line at most this often (see
    /// `pool::failure_log`).
    pub failure_log_interval: Duration,
    /// Makes the connections to nodes (SSH by default; tests put a fake behind this seam).
    pub connector: Arc<dyn Connector>,
}

impl PoolConfig {
    /// Design defaults around `ssh`.
    pub fn new(ssh: SshSettings) -> Self {
        PoolConfig {
            ssh: Arc::new(ssh),
            health: HealthConfig::default(),
            backoff: BackoffPolicy::TRANSIENT,
            backoff_needs_human: BackoffPolicy::NEEDS_HUMAN,
            stable_after: Duration::from_secs(60),
            max_handshakes: 32,
            drain_timeout: Duration::from_secs(30),
            reconnect_wait: None,
            max_channels_per_connection: 8192,
            overflow_idle_timeout: Duration::from_secs(60),
            max_connections_per_node: 8,
            service_cidrs: Vec::new(),
            failure_log_interval: Duration::from_secs(300),
            connector: Arc::new(SshConnector),
        }
    }

    pub(crate) fn reconnect_wait(&self) -> Duration {
        self.reconnect_wait.unwrap_or(self.ssh.open_timeout)
    }
}
