//! Never die at the channel ceiling. OpenSSH's sshd (and `ssh`) abort a connection — with
//! every channel on it — past 16,384 channels (`CHANNELS_MAX_CHANNELS`). The pool keeps each
//! connection under `max_channels_per_connection`; when a node's supervised connection is
//! full, dials go to extra connections to the same node, opened here on demand (one at a time
//! per node, bounded by the connect timeout and the pool's handshake limit) and closed again
//! once they have been idle for `idle_timeout`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::{ConnectError, OpenError};
use crate::node::Node;
use crate::ssh::stream::LinkStats;
use crate::ssh::{NodeTunnel, SshSettings, TunnelStream};

/// OpenSSH's per-connection channel ceiling; a limit must stay below it.
pub const OPENSSH_CHANNEL_CEILING: usize = 16_384;

struct Extra {
    tunnel: Arc<NodeTunnel>,
    /// When it last had no channel (None while busy).
    idle_since: Option<Instant>,
}

/// A node's extra connections.
#[derive(Default)]
pub struct Overflow {
    extras: Mutex<Vec<Extra>>,
    /// Held while a new extra connection is being made, so that a burst of dials at the
    /// ceiling makes one connection, not one each.
    grow: tokio::sync::Mutex<()>,
}

/// Why a dial found no room on any of a node's connections.
#[derive(Debug)]
pub enum OverflowError {
    Open(OpenError),
    Connect(Arc<ConnectError>),
}

impl Overflow {
    /// The live extra connections.
    pub fn tunnels(&self) -> Vec<Arc<NodeTunnel>> {
        let guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .filter(|e| !e.tunnel.is_closed())
            .map(|e| e.tunnel.clone())
            .collect()
    }

    /// How many extra connections are live, and the channels open on them (no allocation:
    /// routing asks this on every dial).
    pub fn load(&self) -> (usize, usize) {
        let guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .filter(|e| !e.tunnel.is_closed())
            .fold((0, 0), |(n, open), e| {
                (n + 1, open + e.tunnel.open_channels())
            })
    }

    /// Takes every extra connection out (node removed or shutting down); the caller drains them.
    pub fn take_all(&self) -> Vec<Arc<NodeTunnel>> {
        let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard.drain(..).map(|e| e.tunnel).collect()
    }

    /// Removes closed extras, and those idle for `idle_timeout`; returns the idle ones for the
    /// caller to close (a dial that took a place on one meanwhile is drained, not cut).
    pub fn reap(&self, idle_timeout: Duration) -> Vec<Arc<NodeTunnel>> {
        let now = Instant::now();
        let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        guard.retain_mut(|e| {
            if e.tunnel.is_closed() {
                return false;
            }
            if e.tunnel.open_channels() > 0 {
                e.idle_since = None;
                return true;
            }
            let since = *e.idle_since.get_or_insert(now);
            if now.duration_since(since) >= idle_timeout {
                out.push(e.tunnel.clone());
                return false;
            }
            true
        });
        out
    }

    /// Opens a channel on an extra connection with room, making a new connection when none
    /// has any. `limit` is the per-connection channel limit.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        &self,
        node: &Node,
        host: &str,
        port: u16,
        limit: usize,
        settings: &Arc<SshSettings>,
        link: &LinkStats,
        handshakes: &Arc<Semaphore>,
    ) -> Result<TunnelStream, OverflowError> {
        if let Some(r) = self.try_existing(host, port, limit).await {
            return r;
        }
        let _growing = self.grow.lock().await;
        // Someone else may have made room while we waited.
        if let Some(r) = self.try_existing(host, port, limit).await {
            return r;
        }
        let permit = handshakes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OverflowError::Open(OpenError::ConnectionLost))?;
        let tunnel = NodeTunnel::connect_with(node, settings.clone(), link.clone())
            .await
            .map_err(|e| OverflowError::Connect(Arc::new(e)))?;
        drop(permit);
        let tunnel = Arc::new(tunnel);
        let count = {
            let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
            guard.push(Extra {
                tunnel: tunnel.clone(),
                idle_since: None,
            });
            guard.len()
        };
        tracing::info!(
            node = %node.name,
            connections = count + 1,
            limit,
            "channel limit reached: opened another connection to the node"
        );
        tunnel
            .open_limited(host, port, limit)
            .await
            .map_err(OverflowError::Open)
    }

    async fn try_existing(
        &self,
        host: &str,
        port: u16,
        limit: usize,
    ) -> Option<Result<TunnelStream, OverflowError>> {
        for t in self.tunnels() {
            match t.open_limited(host, port, limit).await {
                Err(OpenError::AtCapacity { .. }) | Err(OpenError::ConnectionLost) => continue,
                r => return Some(r.map_err(OverflowError::Open)),
            }
        }
        None
    }
}
