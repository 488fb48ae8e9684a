//! `NodeSlot`: a pool entry for one node. It holds the node's current `NodeTunnel` (if any)
//! and makes concurrent dials share a single connection attempt instead of each dialling
//! sshd. The supervisor (reconnect with backoff, health) builds on this.

use std::sync::{Arc, RwLock};

use tokio::sync::Mutex;

use crate::error::ConnectError;
use crate::node::Node;
use crate::ssh::{NodeTunnel, SshSettings};

/// One node's place in the pool.
pub struct NodeSlot {
    node: Node,
    current: RwLock<Option<Arc<NodeTunnel>>>,
    connecting: Mutex<()>,
}

impl NodeSlot {
    /// An empty slot for `node` (not connected yet).
    pub fn new(node: Node) -> Self {
        Self {
            node,
            current: RwLock::new(None),
            connecting: Mutex::new(()),
        }
    }

    /// The node this slot is for.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The live tunnel, if connected and not closed.
    pub fn live(&self) -> Option<Arc<NodeTunnel>> {
        let guard = self.current.read().ok()?;
        guard.as_ref().filter(|t| !t.is_closed()).cloned()
    }

    /// The live tunnel, connecting first if there is none. Concurrent callers wait for the
    /// same attempt (the attempt itself is bounded by the connect timeout).
    pub async fn get_or_connect(
        &self,
        settings: &Arc<SshSettings>,
    ) -> Result<Arc<NodeTunnel>, ConnectError> {
        if let Some(t) = self.live() {
            return Ok(t);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(t) = self.live() {
            return Ok(t);
        }
        let tunnel = Arc::new(NodeTunnel::connect(&self.node, settings.clone()).await?);
        if let Ok(mut g) = self.current.write() {
            *g = Some(tunnel.clone());
        }
        Ok(tunnel)
    }

    /// Takes the tunnel out of the slot (for shutdown).
    pub fn take(&self) -> Option<Arc<NodeTunnel>> {
        self.current.write().ok()?.take()
    }
}
