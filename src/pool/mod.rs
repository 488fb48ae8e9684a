//! The pool: one supervised `NodeTunnel` per node, keyed by node name, and `dial`, which
//! routes a destination to its node, waits (bounded) for that node to be usable and opens a
//! channel. Many dials share the node's one connection. `update` changes the node set:
//! new nodes get a supervisor, removed ones drain. Map values are `Arc`s cloned out of the
//! map; no map guard is ever held across an `.await`.

pub mod backoff;
pub mod config;
pub mod drain;
pub mod failure_log;
pub mod health;
pub mod overflow;
pub mod route;
pub mod slot;
pub mod state;
mod supervisor;
pub mod vet;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Metrics;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;

use crate::destination::Destination;
use crate::error::{ConfigError, DialError, OpenError};
use crate::node::{Node, check_unique};
use crate::ssh::{NodeTunnel, SshSettings, TunnelStream};
pub use config::PoolConfig;
pub use health::{HealthConfig, Probe};
pub use slot::NodeSlot;
pub use state::{HealthResult, NodeStatus, TunnelState};

/// Why a node retires when the node set no longer has it (its metric series then go).
const REMOVED: &str = "removed from the node set";

/// What `Pool::update` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpdateSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Nodes whose address or SSH port changed: new connection, old one drains.
    pub replaced: Vec<String>,
}

/// One SSH connection per node, shared by every dial to that node.
pub struct Pool {
    cfg: Arc<PoolConfig>,
    metrics: Arc<Metrics>,
    slots: Arc<DashMap<String, Arc<NodeSlot>>>,
    draining: Arc<DashMap<u64, Arc<NodeSlot>>>,
    next_id: AtomicU64,
    handshakes: Arc<Semaphore>,
    /// The SSH settings, shared by extra connections.
    ssh: Arc<SshSettings>,
    /// Nodes an operator drained, as their source last gave them: they stay out of the pool
    /// while the source keeps giving the same entry (whichever source: a node file's reload
    /// or an unrelated Kubernetes event does not bring them back); a changed entry, or
    /// `reconnect`, does.
    drained: std::sync::Mutex<HashMap<String, Node>>,
    /// Nodes left out because their address was refused, with why (logged once each).
    left_out: std::sync::Mutex<HashMap<String, String>>,
}

impl Pool {
    /// A pool with default behaviour (see [`PoolConfig::new`]). Must be called inside a
    /// tokio runtime: each node's supervisor starts connecting at once.
    pub fn new(settings: SshSettings, nodes: Vec<Node>) -> Result<Pool, ConfigError> {
        Pool::with_config(PoolConfig::new(settings), nodes)
    }

    /// A pool with explicit behaviour.
    pub fn with_config(cfg: PoolConfig, mut nodes: Vec<Node>) -> Result<Pool, ConfigError> {
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
            ssh: Arc::new(cfg.ssh.clone()),
            metrics: Arc::new(Metrics::new()),
            handshakes: Arc::new(Semaphore::new(cfg.max_handshakes.max(1))),
            cfg: Arc::new(cfg),
            slots: Arc::new(DashMap::new()),
            draining: Arc::new(DashMap::new()),
            next_id: AtomicU64::new(0),
            drained: std::sync::Mutex::new(HashMap::new()),
            left_out: std::sync::Mutex::new(HashMap::new()),
        };
        pool.note_left_out(dropped);
        for n in nodes {
            pool.add(n);
        }
        Ok(pool)
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// The pool's metrics (also what the admin API serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn add(&self, node: Node) {
        self.metrics.init_node(&node.name);
        let slot = Arc::new(NodeSlot::new(
            node.clone(),
            self.metrics.link(&node.name),
            self.cfg.failure_log_interval,
        ));
        tokio::spawn(supervisor::supervise(
            slot.clone(),
            self.cfg.clone(),
            self.handshakes.clone(),
            self.metrics.clone(),
        ));
        self.slots.insert(node.name, slot);
    }

    /// Moves `slot` out of the dialable set and drains it in the background.
    fn retire(&self, slot: Arc<NodeSlot>, why: &str) -> tokio::task::JoinHandle<()> {
        self.retire_within(slot, why, self.cfg.drain_timeout)
    }

    fn retire_within(
        &self,
        slot: Arc<NodeSlot>,
        why: &str,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let forget = why == REMOVED;
        let name = slot.name();
        self.slots.remove_if(&name, |_, v| Arc::ptr_eq(v, &slot));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.draining.insert(id, slot.clone());
        slot.stop.cancel();
        slot.set_state(TunnelState::Draining, why);
        let draining = self.draining.clone();
        let (slots, metrics) = (self.slots.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let extras = slot.overflow.take_all();
            let drains = extras
                .into_iter()
                .chain(slot.publish(None))
                .map(|t| drain::drain_tunnel(t, timeout));
            futures::future::join_all(drains).await;
            draining.remove(&id);
            // Gone for good (not replaced, re-added or drained by an operator): its series go.
            if forget && !slots.contains_key(&name) {
                metrics.forget_node(&name);
            }
        })
    }

    fn slot(&self, name: &str) -> Option<Arc<NodeSlot>> {
        self.slots.get(name).map(|r| r.value().clone())
    }

    fn all_slots(&self) -> Vec<Arc<NodeSlot>> {
        self.slots.iter().map(|r| r.value().clone()).collect()
    }

    /// Replaces the node set: adds new nodes, drains removed ones, and gives a node whose
    /// address or SSH port changed a new connection while the old one drains. An invalid set
    /// is refused as a whole and the current set stays.
    pub fn update(&self, mut desired: Vec<Node>) -> Result<UpdateSummary, ConfigError> {
        validate(&desired)?;
        let dropped = vet::vet(&mut desired, &self.cfg.service_cidrs, |name| {
            self.slot(name).map(|s| s.node())
        });
        self.note_left_out(dropped);
        log_refusals(&desired, |name| self.slot(name).map(|s| s.node()));
        let mut summary = UpdateSummary::default();
        let current: HashMap<String, Arc<NodeSlot>> = self
            .slots
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        let wanted: HashMap<&str, &Node> = desired.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        // A drained node leaves the drained set when its source drops or changes it.
        // (Compared as the source gives them: what `vet` refused may change with other nodes.)
        let entry = |n: &Node| Node {
            refused: Vec::new(),
            ..n.clone()
        };
        drained.retain(|name, node| match wanted.get(name.as_str()) {
            Some(w) => entry(w) == entry(node),
            None => {
                // Gone from the source while drained: its series go too.
                self.metrics.forget_node(name);
                false
            }
        });
        for (name, slot) in &current {
            if !wanted.contains_key(name.as_str()) {
                self.retire(slot.clone(), REMOVED);
                summary.removed.push(name.clone());
            }
        }
        for node in &desired {
            if drained.contains_key(&node.name) {
                continue;
            }
            match current.get(&node.name) {
                None => {
                    self.add(node.clone());
                    summary.added.push(node.name.clone());
                }
                Some(slot) => {
                    let old = slot.node();
                    if old.address != node.address || old.ssh_port != node.ssh_port {
                        self.retire(
                            slot.clone(),
                            "address changed; replaced by a new connection",
                        );
                        self.add(node.clone());
                        summary.replaced.push(node.name.clone());
                    } else if *old != *node {
                        slot.set_node(node.clone());
                    }
                }
            }
        }
        summary.added.sort();
        summary.removed.sort();
        summary.replaced.sort();
        if !(summary.added.is_empty() && summary.removed.is_empty() && summary.replaced.is_empty())
        {
            tracing::info!(added = ?summary.added, removed = ?summary.removed, replaced = ?summary.replaced, "node set updated");
        }
        Ok(summary)
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

    /// Every node's status, draining ones included, sorted by name.
    pub fn statuses(&self) -> Vec<(Node, NodeStatus)> {
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
    pub fn tunnel(&self, name: &str) -> Option<Arc<NodeTunnel>> {
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

    /// Remembers the nodes `vet` left out; logs each new one (or a new reason) once.
    fn note_left_out(&self, dropped: Vec<(String, String)>) {
        let mut left = self.left_out.lock().unwrap_or_else(|p| p.into_inner());
        let now: HashMap<String, String> = dropped.into_iter().collect();
        for (node, why) in &now {
            if left.get(node) != Some(why) {
                tracing::warn!(node = %node, refused = %why, "node left out of the node set: its address cannot be used");
            }
        }
        *left = now;
    }

    /// Nodes left out of the node set because their address was refused, with why.
    pub fn left_out(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .left_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }

    /// True when an operator drained node `name` and it has not come back.
    pub fn is_drained(&self, name: &str) -> bool {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// Drops node `name`'s connection (its streams drain) and reconnects now; a node an
    /// operator drained comes back.
    pub fn reconnect(&self, name: &str) -> bool {
        if let Some(s) = self.slot(name) {
            s.reconnect_now();
            return true;
        }
        let back = self
            .drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match back {
            Some(node) => {
                tracing::info!(node = %name, "drained node back by reconnect");
                self.add(node);
                true
            }
            None => false,
        }
    }

    /// The nodes now (shared, no copies), for routing and policy checks on the dial path.
    pub fn node_snapshot(&self) -> Vec<Arc<Node>> {
        self.slots.iter().map(|e| e.value().node()).collect()
    }

    /// The slot a dial to `dest` goes through now, or why there is none. With `any_ready`, a
    /// destination no node owns goes to the least-loaded ready node; without, it has no route.
    fn route(&self, dest: &Destination, any_ready: bool) -> Result<Arc<NodeSlot>, DialError> {
        let slots = self.all_slots();
        let nodes: Vec<Arc<Node>> = slots.iter().map(|s| s.node()).collect();
        let name = match route::classify(&nodes, dest) {
            route::Route::Node(n) | route::Route::PodOf(n) => n,
            route::Route::Ambiguous(nodes) => {
                return Err(DialError::Ambiguous {
                    destination: dest.to_string(),
                    nodes,
                });
            }
            route::Route::AnyReady if !any_ready => {
                return Err(DialError::NoRoute {
                    destination: dest.to_string(),
                });
            }
            route::Route::AnyReady => {
                let candidates: Vec<(String, bool, usize)> = slots
                    .iter()
                    .filter_map(|s| {
                        let st = s.status().state;
                        s.live()?;
                        st.accepts_dials()
                            .then(|| (s.name(), st == TunnelState::Ready, s.load().1))
                    })
                    .collect();
                route::least_loaded(&candidates)
                    .map(str::to_string)
                    .ok_or_else(|| DialError::NoReadyNode {
                        destination: dest.to_string(),
                    })?
            }
        };
        slots
            .into_iter()
            .find(|s| s.node().name == name)
            .ok_or_else(|| DialError::NoRoute {
                destination: dest.to_string(),
            })
    }

    /// Opens a channel to `dest` through the node that owns it (by name or address, then by
    /// pod CIDR); `NoRoute` if no node does.
    pub async fn dial(&self, dest: &Destination) -> Result<TunnelStream, DialError> {
        self.dial_routed(dest, false).await
    }

    /// Like `dial`, but a destination no node owns (a service ClusterIP, say) goes through the
    /// least-loaded ready node. Check such destinations against a `Policy` first.
    pub async fn dial_any(&self, dest: &Destination) -> Result<TunnelStream, DialError> {
        self.dial_routed(dest, true).await
    }

    async fn dial_routed(
        &self,
        dest: &Destination,
        any_ready: bool,
    ) -> Result<TunnelStream, DialError> {
        let start = std::time::Instant::now();
        let slot = match self.route(dest, any_ready) {
            Ok(slot) => slot,
            Err(e) => {
                self.account(None, Some(&e), start.elapsed());
                return Err(e);
            }
        };
        let result = self.dial_via(&slot, dest).await;
        self.account(Some(&slot), result.as_ref().err(), start.elapsed());
        result
    }

    /// Counts a dial in the node's status and the metrics.
    fn account(&self, slot: Option<&NodeSlot>, error: Option<&DialError>, took: Duration) {
        use crate::metrics::{DialLabels, DialResult};
        let outcome = match error {
            None => DialResult::Ok,
            Some(DialError::NoRoute { .. })
            | Some(DialError::NoReadyNode { .. })
            | Some(DialError::Ambiguous { .. }) => DialResult::NoRoute,
            Some(DialError::NotReady { .. }) => DialResult::NotReady,
            Some(DialError::Open { source, .. }) => match source {
                OpenError::Refused { .. } => DialResult::Refused,
                OpenError::Timeout { .. } => DialResult::Timeout,
                OpenError::ConnectionLost => DialResult::ConnectionLost,
                OpenError::AtCapacity { .. } => DialResult::AtCapacity,
            },
        };
        if let Some(slot) = slot {
            slot.dials_total.fetch_add(1, Ordering::Relaxed);
            if outcome != DialResult::Ok {
                slot.dial_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let node = slot.map(|s| s.name()).unwrap_or_else(|| "-".into());
        let labels = DialLabels {
            node,
            result: outcome.as_str(),
        };
        self.metrics.dials.get_or_create(&labels).inc();
        self.metrics.dial_duration.observe(took.as_secs_f64());
    }

    /// Dials counted for node `name`: (total, failed).
    pub fn dial_counts(&self, name: &str) -> Option<(u64, u64)> {
        let s = self.slot(name)?;
        Some((
            s.dials_total.load(Ordering::Relaxed),
            s.dial_failures.load(Ordering::Relaxed),
        ))
    }

    /// Drains node `name` now (no new dials; open streams finish). It stays out until its
    /// entry in the node source changes, or `reconnect`. False if there is no such node.
    pub fn drain_node(&self, name: &str) -> bool {
        match self.slot(name) {
            Some(s) => {
                self.drained
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), Node::clone(&s.node()));
                self.retire(s, "drained by an operator");
                true
            }
            None => false,
        }
    }

    /// Sets the gauges that describe the pool now (called before metrics are rendered).
    pub fn refresh_metrics(&self) {
        use crate::metrics::{NodeLabel, StateLabel};
        let m = &self.metrics;
        m.tunnels.clear();
        m.tunnel_up.clear();
        m.open_channels.clear();
        m.connections.clear();
        m.congested_connections.clear();
        let budget = &self.cfg.ssh.channel.budget;
        for (kind, used, limit) in [
            ("memory", budget.memory_used(), budget.memory_limit()),
            ("spill", budget.spill_used(), budget.spill_limit()),
        ] {
            let label = crate::metrics::KindLabel { kind };
            m.buffer_budget_used.get_or_create(&label).set(used as i64);
            m.buffer_budget_limit
                .get_or_create(&label)
                .set(limit as i64);
        }
        for st in [
            TunnelState::Connecting,
            TunnelState::Ready,
            TunnelState::Degraded,
            TunnelState::Backoff,
            TunnelState::Draining,
            TunnelState::Failed,
        ] {
            m.tunnels
                .get_or_create(&StateLabel {
                    state: st.to_string(),
                })
                .set(0);
        }
        for (node, status) in self.statuses() {
            m.tunnels
                .get_or_create(&StateLabel {
                    state: status.state.to_string(),
                })
                .inc();
            if status.state == TunnelState::Draining {
                continue;
            }
            let label = NodeLabel {
                node: node.name.clone(),
            };
            m.tunnel_up
                .get_or_create(&label)
                .set(i64::from(status.state.accepts_dials()));
            let (conns, open) = self.connection_load(&node.name).unwrap_or((0, 0));
            m.open_channels.get_or_create(&label).set(open as i64);
            m.connections.get_or_create(&label).set(conns as i64);
            let congested = self.slot(&node.name).map_or(0, |s| s.congested());
            m.congested_connections
                .get_or_create(&label)
                .set(congested as i64);
        }
    }

    /// Opens a channel to `dest` through the named node, whatever the destination.
    pub async fn dial_through(
        &self,
        node: &str,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let start = std::time::Instant::now();
        let slot = self.slot(node).ok_or_else(|| DialError::NoRoute {
            destination: format!("{dest} (no node named '{node}')"),
        })?;
        let result = self.dial_via(&slot, dest).await;
        self.account(Some(&slot), result.as_ref().err(), start.elapsed());
        result
    }

    /// Opens a channel on one of the node's extra connections (making one when all are full,
    /// or, for isolation, all congested).
    async fn open_overflow(
        &self,
        slot: &NodeSlot,
        node: &Node,
        reason: overflow::Reason,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OpenError> {
        let limit = self.cfg.max_channels_per_connection;
        let dial = overflow::OverflowDial {
            node,
            reason,
            limit,
            max_connections: self.cfg.max_connections_per_node,
            primary: slot.live(),
            settings: &self.ssh,
            link: &slot.link,
            handshakes: &self.handshakes,
        };
        match slot.overflow.open(dial, host, port).await {
            Ok(s) => Ok(s),
            Err(overflow::OverflowError::Open(e)) => Err(e),
            Err(overflow::OverflowError::Connect(e)) => {
                tracing::warn!(node = %node.name, error = %e, "channel limit reached and another connection to the node failed");
                Err(OpenError::AtCapacity { limit })
            }
        }
    }

    async fn dial_via(
        &self,
        slot: &NodeSlot,
        dest: &Destination,
    ) -> Result<TunnelStream, DialError> {
        let node = slot.name();
        let deadline = tokio::time::Instant::now() + self.cfg.reconnect_wait();
        loop {
            let tunnel = slot
                .wait_usable(deadline)
                .await
                .map_err(|n| DialError::NotReady {
                    node: node.clone(),
                    destination: dest.to_string(),
                    state: n.state,
                    reason: n.reason,
                    last_error: slot.status().last_connect_error,
                })?;
            let node_now = slot.node();
            let host = node_now.channel_host(&dest.host);
            let host: &str = &host;
            let limit = self.cfg.max_channels_per_connection;
            // A new dial never waits behind a congested connection (ssh::congestion).
            let opened = if tunnel.is_congested() && self.cfg.max_connections_per_node > 1 {
                self.open_overflow(
                    slot,
                    &node_now,
                    overflow::Reason::Isolation,
                    host,
                    dest.port,
                )
                .await
            } else {
                match tunnel.open_limited(host, dest.port, limit).await {
                    Err(OpenError::AtCapacity { .. }) => {
                        self.open_overflow(
                            slot,
                            &node_now,
                            overflow::Reason::Capacity,
                            host,
                            dest.port,
                        )
                        .await
                    }
                    r => r,
                }
            };
            match opened {
                Ok(s) => return Ok(s),
                // The connection died under us: wait for the supervisor's reconnect, if time is left.
                Err(OpenError::ConnectionLost) if tokio::time::Instant::now() < deadline => {
                    continue;
                }
                Err(source) => {
                    return Err(DialError::Open {
                        node,
                        destination: dest.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Stops every supervisor, drains every node (bounded by the drain timeout) and closes
    /// the connections.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.cfg.drain_timeout).await
    }

    /// Like `shutdown`, with open streams given at most `drain` before their connections close.
    pub async fn shutdown_within(&self, drain: Duration) {
        let handles: Vec<_> = self
            .all_slots()
            .into_iter()
            .map(|s| self.retire_within(s, "shutting down", drain))
            .collect();
        let limit = drain + Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, futures::future::join_all(handles)).await;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for s in self.slots.iter() {
            s.value().stop.cancel();
        }
    }
}

/// Logs each refused claim once: those the node did not already have refused.
fn log_refusals(nodes: &[Node], current: impl Fn(&str) -> Option<Arc<Node>>) {
    for n in nodes {
        let before = current(&n.name);
        for r in &n.refused {
            if before.as_ref().is_some_and(|b| b.refused.contains(r)) {
                continue;
            }
            tracing::warn!(node = %n.name, refused = %r, "a claim of this node was refused; it does not route");
        }
    }
}

fn validate(nodes: &[Node]) -> Result<(), ConfigError> {
    for n in nodes {
        n.validate()?;
    }
    check_unique(nodes)
}
