//! The pool: one supervised `NodeTunnel` per node, keyed by node name (plus extra connections
//! past the channel limit or beside a congested one), and `dial`, which routes a destination
//! to its node, waits (bounded) for that node to be usable and opens a channel. Map values are
//! `Arc`s cloned out of the map; no map guard is ever held across an `.await`.
//!
//! `Pool` is split by job: this file holds its state and read-only views; `lifecycle.rs` the
//! node set (add, update, drain, reconnect, shutdown; the changes come from the pure
//! `diff.rs`); `dial.rs` routing and opening channels; `accounting.rs` dial counts and the
//! metric gauges.

mod accounting;
pub mod backoff;
pub mod config;
mod dial;
pub mod diff;
mod drain;
pub mod drained;
mod failure_log;
#[cfg(test)]
mod fake;
pub mod health;
mod index;
mod lifecycle;
pub mod mode;
#[cfg(test)]
mod model;
mod overflow;
#[cfg(test)]
mod races;
pub mod route;
mod slot;
pub mod state;
mod supervisor;
pub mod transport;
mod vet;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::metrics::Metrics;
use crate::tasks::Tasks;

use dashmap::DashMap;
use tokio::sync::Semaphore;

use crate::error::ConfigError;
use crate::node::Node;
use crate::ssh::SshSettings;
pub use config::PoolConfig;
pub use health::{HealthConfig, Probe};
use lifecycle::{log_refusals, validate};
pub use mode::NodeMode;
use slot::NodeSlot;
pub use state::{HealthResult, NodeStatus, TunnelState};
use transport::Link;

/// What `Pool::update` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Nodes whose address or SSH port changed: new connection, old one drains.
    pub replaced: Vec<String>,
}

/// One supervised SSH connection per node, shared by every dial to that node.
pub struct Pool {
    cfg: Arc<PoolConfig>,
    metrics: Arc<Metrics>,
    slots: Arc<DashMap<String, Arc<NodeSlot>>>,
    draining: Arc<DashMap<u64, Arc<NodeSlot>>>,
    next_id: AtomicU64,
    handshakes: Arc<Semaphore>,
    /// Owns the supervisors and draining connections.
    tasks: Tasks,
    /// Drained nodes by name (a drain belongs to the name, not to a connection), each with
    /// its entry as the source last gave it and who drained it when: they stay out of the
    /// pool while the source has their name, whatever other nodes or their own entry do;
    /// `reconnect`, or leaving the source, ends a drain. `update`, `drain_node_by` and
    /// `reconnect` hold this lock for their whole change, so they never interleave.
    drained: std::sync::Mutex<HashMap<String, drained::DrainRecord>>,
    /// Nodes left out because their address was refused, with why (logged once each).
    left_out: std::sync::Mutex<HashMap<String, String>>,
    /// The nodes and an index of their claims, rebuilt whenever the node set changes: what
    /// dials and the policy route against.
    routes: std::sync::RwLock<Arc<route::RouteTable>>,
    /// Nodes removed from the set whose connections still drain: their metric series go
    /// when the last one ends (unless the node comes back first).
    gone: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Running supervisors by node name (each counts itself while it lives).
    supervisors: Arc<DashMap<String, usize>>,
}

impl Pool {
    /// A pool with default behaviour (see [`PoolConfig::new`]). Must be called inside a
    /// tokio runtime: each node's supervisor starts connecting at once.
    pub fn new(settings: SshSettings, nodes: Vec<Node>) -> Result<Pool, ConfigError> {
        Pool::with_config(PoolConfig::new(settings), nodes)
    }

    /// A pool with explicit behaviour.
    pub fn with_config(cfg: PoolConfig, nodes: Vec<Node>) -> Result<Pool, ConfigError> {
        Pool::with_tasks(cfg, nodes, Tasks::new())
    }

    /// A pool whose supervisors and draining connections are owned by `tasks` (a daemon's).
    pub fn with_tasks(
        cfg: PoolConfig,
        mut nodes: Vec<Node>,
        tasks: Tasks,
    ) -> Result<Pool, ConfigError> {
        validate(&nodes)?;
        let dropped = vet::vet(&mut nodes, &cfg.service_cidrs, |_| None);
        log_refusals(&nodes, |_| None);
        if cfg.max_connections_per_node == 0 {
            return Err(ConfigError::Invalid(
                "max connections per node must be at least 1".into(),
            ));
        }
        if cfg.max_channels_per_connection == 0
            || cfg.max_channels_per_connection >= overflow::OPENSSH_CHANNEL_CEILING
        {
            return Err(ConfigError::Invalid(format!(
                "max channels per connection must be between 1 and {} (OpenSSH aborts a connection at {} channels); got {}",
                overflow::OPENSSH_CHANNEL_CEILING - 1,
                overflow::OPENSSH_CHANNEL_CEILING,
                cfg.max_channels_per_connection
            )));
        }
        let pool = Pool {
            metrics: Arc::new(Metrics::new()),
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes.max(1))),
            cfg: Arc::new(cfg),
            slots: Arc::new(DashMap::new()),
            draining: Arc::new(DashMap::new()),
            next_id: AtomicU64::new(0),
            drained: std::sync::Mutex::new(HashMap::new()),
            left_out: std::sync::Mutex::new(HashMap::new()),
            tasks,
            routes: Default::default(),
            supervisors: Arc::new(DashMap::new()),
            gone: Default::default(),
        };
        pool.note_left_out(dropped);
        for n in nodes {
            // A node whose Node carries the drain annotation starts drained (a restart keeps
            // a drain that the cluster holds).
            if let Some(reason) = &n.drain {
                let reason = (!reason.is_empty()).then(|| reason.clone());
                let record = drained::DrainRecord::new(n.clone(), drained::BY_ANNOTATION, reason);
                pool.drained
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n.name.clone(), record);
                continue;
            }
            pool.add(n);
        }
        pool.refresh_routes();
        Ok(pool)
    }

    /// Running supervisors by node name: one per node in the pool, none for a node that
    /// left or is drained (a check for tests and audits).
    pub fn supervisors(&self) -> HashMap<String, usize> {
        self.supervisors
            .iter()
            .map(|r| (r.key().clone(), *r.value()))
            .collect()
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// The pool's metrics (also what the admin API serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn slot(&self, name: &str) -> Option<Arc<NodeSlot>> {
        self.slots.get(name).map(|r| r.value().clone())
    }

    fn all_slots(&self) -> Vec<Arc<NodeSlot>> {
        self.slots.iter().map(|r| r.value().clone()).collect()
    }

    /// Nodes of the pool (not counting draining ones), sorted by name.
    pub fn nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .slots
            .iter()
            .map(|e| Node::clone(&e.value().node()))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every node's status, draining and drained ones included, sorted by name. A drained
    /// node shows `draining` while a connection of it still drains, then `drained`; both
    /// with who drained it and when.
    pub fn statuses(&self) -> Vec<(Node, NodeStatus)> {
        let drains = self.drains();
        let mut v: Vec<(Node, NodeStatus)> = self
            .slots
            .iter()
            .map(|e| (Node::clone(&e.value().node()), e.value().status()))
            .chain(
                self.draining
                    .iter()
                    .map(|e| (Node::clone(&e.value().node()), e.value().status())),
            )
            .collect();
        for (node, st) in v.iter_mut() {
            if let Some(r) = drains.get(&node.name)
                && st.state == TunnelState::Draining
            {
                st.drained_by = Some(r.by.clone());
                st.drained_at = Some(r.at);
            }
        }
        for (name, r) in &drains {
            if v.iter().any(|(n, _)| &n.name == name) {
                continue;
            }
            let mut st = NodeStatus::new();
            st.state = TunnelState::Drained;
            st.reason = r.describe();
            st.since = r.at;
            st.since_instant = r.at_instant;
            st.not_ready_since = None;
            st.first_attempt_done = true;
            st.drained_by = Some(r.by.clone());
            st.drained_at = Some(r.at);
            v.push((r.node.clone(), st));
        }
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// The status of node `name` (not draining).
    pub fn status(&self, name: &str) -> Option<NodeStatus> {
        self.slot(name).map(|s| s.status())
    }

    /// Watches node `name`'s status.
    pub fn subscribe(&self, name: &str) -> Option<tokio::sync::watch::Receiver<NodeStatus>> {
        self.slot(name).map(|s| s.subscribe())
    }

    /// The current live tunnel of node `name`, if connected.
    pub fn tunnel(&self, name: &str) -> Option<Arc<dyn Link>> {
        self.slot(name)?.live()
    }

    /// Node `name`'s live SSH connections and the channels open on all of them.
    pub fn connection_load(&self, name: &str) -> Option<(usize, usize)> {
        Some(self.slot(name)?.load())
    }

    /// How many of node `name`'s live connections are congested now.
    pub fn congested_connections(&self, name: &str) -> Option<usize> {
        Some(self.slot(name)?.congested())
    }

    /// The nodes now with an index of their claims (shared, no copies): what a dial and the
    /// policy check before it route against.
    pub fn routes(&self) -> Arc<route::RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the route table from the nodes now: after every change of the node set (each
    /// public entry point that adds, retires or changes nodes calls it once at its end).
    pub(super) fn refresh_routes(&self) {
        let nodes: Vec<Arc<Node>> = self.slots.iter().map(|e| e.value().node()).collect();
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(route::RouteTable::new(nodes));
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for s in self.slots.iter() {
            s.value().stop();
        }
    }
}
