//! The pool: one `NodeTunnel` per node, keyed by node name, and `dial` that routes a
//! destination to its node and opens a channel there. Many dials share the node's one
//! connection. Map values are `Arc`s cloned out of the map; no map guard is ever held across
//! an `.await`.

pub mod route;
pub mod slot;

use std::sync::Arc;

use dashmap::DashMap;

use crate::destination::Destination;
use crate::error::{ConfigError, ConnectError, DialError};
use crate::node::{Node, check_unique};
use crate::ssh::{NodeTunnel, SshSettings, TunnelStream};
pub use slot::NodeSlot;

/// One SSH connection per node, shared by every dial to that node.
pub struct Pool {
    settings: Arc<SshSettings>,
    slots: DashMap<String, Arc<NodeSlot>>,
}

impl Pool {
    /// A pool for `nodes` (validated; names must be unique). Connections are made on the
    /// first dial, or all at once with [`Pool::connect_all`].
    pub fn new(settings: SshSettings, nodes: Vec<Node>) -> Result<Pool, ConfigError> {
        for n in &nodes {
            n.validate()?;
        }
        check_unique(&nodes)?;
        let slots = DashMap::new();
        for n in nodes {
            slots.insert(n.name.clone(), Arc::new(NodeSlot::new(n)));
        }
        Ok(Pool {
            settings: Arc::new(settings),
            slots,
        })
    }

    /// The shared connection settings.
    pub fn settings(&self) -> &Arc<SshSettings> {
        &self.settings
    }

    /// Nodes of the pool, sorted by name.
    pub fn nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .slots
            .iter()
            .map(|e| e.value().node().clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn slot(&self, name: &str) -> Option<Arc<NodeSlot>> {
        self.slots.get(name).map(|r| r.value().clone())
    }

    fn slots(&self) -> Vec<Arc<NodeSlot>> {
        self.slots.iter().map(|r| r.value().clone()).collect()
    }

    /// Connects every node concurrently; returns each node's result.
    pub async fn connect_all(&self) -> Vec<(String, Result<Arc<NodeTunnel>, ConnectError>)> {
        let mut set = tokio::task::JoinSet::new();
        for slot in self.slots() {
            let settings = self.settings.clone();
            set.spawn(async move {
                let r = slot.get_or_connect(&settings).await;
                (slot.node().name.clone(), r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(pair) = r {
                out.push(pair);
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The current live tunnel of node `name`, if connected.
    pub fn tunnel(&self, name: &str) -> Option<Arc<NodeTunnel>> {
        self.slot(name)?.live()
    }

    /// Opens a channel to `dest` through the node that owns it.
    pub async fn dial(&self, dest: &Destination) -> Result<TunnelStream, DialError> {
        let slot = {
            let nodes: Vec<Arc<NodeSlot>> = self.slots();
            let chosen = route::route(nodes.iter().map(|s| s.node()), dest).map(|n| n.name.clone());
            chosen.and_then(|name| nodes.into_iter().find(|s| s.node().name == name))
        };
        let slot = slot.ok_or_else(|| DialError::NoRoute {
            destination: dest.to_string(),
        })?;
        self.dial_via(&slot, dest).await
    }

    /// Opens a channel to `dest` through the named node, whatever the destination.
    pub async fn dial_through(
        &self,
        node: &str,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let slot = self.slot(node).ok_or_else(|| DialError::NoRoute {
            destination: format!("{dest} (no node named '{node}')"),
        })?;
        self.dial_via(&slot, dest).await
    }

    async fn dial_via(
        &self,
        slot: &NodeSlot,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let node = slot.node().name.clone();
        let tunnel = slot
            .get_or_connect(&self.settings)
            .await
            .map_err(|source| DialError::NodeUnavailable {
                node: node.clone(),
                destination: dest.to_string(),
                source,
            })?;
        tunnel
            .open(&dest.host, dest.port)
            .await
            .map_err(|source| DialError::Open {
                node,
                destination: dest.to_string(),
                source,
            })
    }

    /// Disconnects every node.
    pub async fn shutdown(&self) {
        for slot in self.slots() {
            if let Some(t) = slot.take() {
                t.disconnect().await;
            }
        }
    }
}
