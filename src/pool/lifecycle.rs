//! The pool's node set over time: adding a node (a supervisor of its own), applying a new node
//! set (the changes come from the pure `diff`), draining a node on an operator's request or
//! for good, reconnecting it, and shutting everything down. A retired connection keeps its
//! open streams until they end or the drain timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::drained::{BY_ANNOTATION, DrainRecord};
use super::slot::NodeSlot;
use super::state::TunnelState;
use super::{Pool, UpdateSummary, diff, drain, supervisor, vet};
use crate::error::ConfigError;
use crate::node::{Node, check_unique};

/// Why a node retires when the node set no longer has it (its metric series then go).
const REMOVED: &str = "removed from the node set";

/// Why a drained node's connection retires, when its record cannot say more.
const DRAINED: &str = "drained";

impl Pool {
    pub(super) fn add(&self, node: Node) {
        lock(&self.gone).remove(&node.name);
        self.metrics.init_node(&node.name);
        let slot = Arc::new(NodeSlot::new(
            node.clone(),
            self.metrics.link(&node.name),
            self.cfg.failure_log_interval,
            self.tasks.token().child_token(),
        ));
        self.tasks.spawn(supervisor::supervise(
            slot.clone(),
            self.cfg.clone(),
            self.handshakes.clone(),
            self.metrics.clone(),
            self.tasks.clone(),
            self.supervisors.clone(),
        ));
        // Never a silent replacement: a slot that was there (a race between two changes of
        // the same node) is stopped and drained, or its supervisor would live on unseen.
        if let Some(old) = self.slots.insert(node.name.clone(), slot) {
            tracing::warn!(node = %node.name, "a node was added twice: retiring the older connection");
            self.retire(old, "replaced by a new connection");
        }
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
        let name = slot.name();
        if why == REMOVED {
            lock(&self.gone).insert(name.clone());
        }
        self.slots.remove_if(&name, |_, v| Arc::ptr_eq(v, &slot));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.draining.insert(id, slot.clone());
        // Its connections are taken out of the slot here, before the stop, and closed to new
        // channels at once: the drain below owns them, so `shutdown` waits for their streams
        // (a supervisor that sees the stop finds nothing left to drain but a connection it
        // published after this), and a dial that holds one fails over instead of opening a
        // stream the drain would cut.
        let taken: Vec<_> = slot
            .overflow()
            .take_all()
            .into_iter()
            .chain(slot.publish(None))
            .collect();
        for t in &taken {
            t.close_to_new();
        }
        slot.stop();
        slot.set_state(TunnelState::Draining, why);
        let draining = self.draining.clone();
        let (slots, metrics, gone) = (self.slots.clone(), self.metrics.clone(), self.gone.clone());
        let stop = self.tasks.token().clone();
        self.tasks.spawn(async move {
            let drains = taken
                .into_iter()
                .map(|t| drain::drain_tunnel(t, timeout, stop.clone()));
            futures::future::join_all(drains).await;
            draining.remove(&id);
            // Gone for good (removed, not re-added), and this was the last of its connections
            // to drain (a replaced one may drain longer than the removed one): its series go.
            // Not before: a dial ending on a draining connection would bring them back.
            let last =
                !slots.contains_key(&name) && !draining.iter().any(|d| d.value().name() == name);
            let mut gone = lock(&gone);
            if last && gone.remove(&name) {
                metrics.forget_node(&name);
            }
        })
    }

    /// Replaces the node set: adds new nodes, drains removed ones, and gives a node whose
    /// address or SSH port changed a new connection while the old one drains. An invalid set
    /// is refused as a whole and the current set stays. Drained nodes stay out while the set
    /// has their name (a node whose `drain` field is set is drained, by its annotation).
    pub fn update(&self, mut desired: Vec<Node>) -> Result<UpdateSummary, ConfigError> {
        validate(&desired)?;
        // Held for the whole change: a `drain` or `reconnect` of a node happens wholly before
        // or wholly after it, so a drain can never land on a connection this retires.
        let mut drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = vet::vet(&mut desired, &self.cfg.service_cidrs, |name| {
            self.slot(name).map(|s| s.node())
        });
        self.note_left_out(dropped);
        log_refusals(&desired, |name| self.slot(name).map(|s| s.node()));
        apply_annotations(&mut drained, &desired);
        let slots: HashMap<String, Arc<NodeSlot>> = self
            .slots
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        let current: HashMap<String, Arc<Node>> = slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.node()))
            .collect();
        let entries: HashMap<String, Node> = drained
            .iter()
            .map(|(k, r)| (k.clone(), r.node.clone()))
            .collect();
        let changes = diff::diff(&current, &entries, &desired);
        let names = |nodes: &[Node]| nodes.iter().map(|n| n.name.clone()).collect();
        // Logged before the changes take effect, so the line precedes what it causes.
        let mut summary = UpdateSummary {
            added: names(&changes.add),
            removed: changes.remove.clone(),
            replaced: names(&changes.replace),
        };
        summary.added.sort();
        summary.removed.sort();
        summary.replaced.sort();
        if !(summary.added.is_empty() && summary.removed.is_empty() && summary.replaced.is_empty())
        {
            tracing::info!(added = ?summary.added, removed = ?summary.removed, replaced = ?summary.replaced, "node set updated");
        }
        for name in &changes.forget_drained {
            // Gone from the source while drained: its series go too.
            drained.remove(name);
            tracing::info!(node = %name, "drained node left the node source: drain forgotten");
            // Its series go now, or when its connection (still draining) ends.
            lock(&self.gone).insert(name.clone());
            let draining = self.draining.iter().any(|d| d.value().name() == *name);
            if !draining && lock(&self.gone).remove(name) {
                self.metrics.forget_node(name);
            }
        }
        // Every drained node keeps its latest vetted entry for `reconnect`, also when only the
        // vetting changed (another node joined, so its name or an alias may no longer route):
        // a reconnect must never bring back a claim the current set refuses.
        for node in &desired {
            if let Some(r) = drained.get_mut(&node.name) {
                r.node = node.clone();
            }
        }
        for name in &changes.drain {
            if let Some(slot) = slots.get(name) {
                let why = drained.get(name).map(DrainRecord::describe);
                tracing::info!(node = %name, "node drained by its annotation");
                self.retire(slot.clone(), why.as_deref().unwrap_or(DRAINED));
            }
        }
        for name in &changes.remove {
            if let Some(slot) = slots.get(name) {
                self.retire(slot.clone(), REMOVED);
            }
        }
        for node in &changes.replace {
            if let Some(slot) = slots.get(&node.name) {
                self.retire(
                    slot.clone(),
                    "address changed; replaced by a new connection",
                );
            }
            self.add(node.clone());
        }
        for node in &changes.add {
            self.add(node.clone());
        }
        for node in &changes.refresh {
            if let Some(slot) = slots.get(&node.name) {
                let keys_changed = slot.node().host_keys != node.host_keys;
                slot.set_node(node.clone());
                if keys_changed && self.cfg.ssh.host_keys_from_nodes {
                    // Never cuts a connection that is up: the next one checks the new keys.
                    tracing::info!(node = %node.name, annotations = ?node.host_keys.keys().collect::<Vec<_>>(), "the node's host key annotations changed; they apply to its next connection");
                    retry_if_host_key_refused(slot);
                }
            }
        }
        self.refresh_routes();
        Ok(summary)
    }

    /// Remembers the nodes `vet` left out; logs each new one (or a new reason) once.
    pub(super) fn note_left_out(&self, dropped: Vec<(String, String)>) {
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

    /// True when node `name` is drained (by an operator or its annotation).
    /// Whether node `name` is in the node set: it has a slot, or it is drained (a drained
    /// node stays in the set until it leaves the node source). Read under the lock `update`
    /// holds for a whole change, so a node being replaced (its address changed) never reads
    /// as gone between the retire of its old slot and the add of its new one.
    pub fn in_node_set(&self, name: &str) -> bool {
        let drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        drained.contains_key(name) || self.slots.contains_key(name)
    }

    pub fn is_drained(&self, name: &str) -> bool {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// The drain of the node a dial to `host` names (its name, address or an alias), if
    /// that node is drained: the CONNECT front answers 503 naming it.
    pub fn drain_of(&self, host: &str) -> Option<DrainRecord> {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|r| r.claims(host))
            .cloned()
    }

    /// The drained nodes, by name.
    pub fn drains(&self) -> HashMap<String, DrainRecord> {
        self.drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drops node `name`'s connection (its streams drain) and reconnects now; a drained node
    /// comes back (until its annotation, if it has one, drains it again on the next update).
    pub fn reconnect(&self, name: &str) -> bool {
        let mut drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = drained.remove(name) {
            tracing::info!(node = %name, drained_by = %record.by, "drained node back by reconnect");
            if let Some(s) = self.slot(name) {
                s.reconnect_now();
            } else {
                self.add(record.node);
            }
            self.refresh_routes();
            return true;
        }
        match self.slot(name) {
            Some(s) => {
                s.reconnect_now();
                true
            }
            None => false,
        }
    }

    /// Drains node `name` now (no new dials; open streams finish), recording `by` (who asked).
    /// It stays drained until `reconnect` or until it leaves the node source. False if there
    /// is no such node; true (and nothing changes) if it is drained already.
    pub fn drain_node_by(&self, name: &str, by: &str) -> bool {
        let mut drained = self.drained.lock().unwrap_or_else(|p| p.into_inner());
        if drained.contains_key(name) {
            return true;
        }
        match self.slot(name) {
            Some(s) => {
                let record = DrainRecord::new(Node::clone(&s.node()), by, None);
                let why = record.describe();
                drained.insert(name.to_string(), record);
                self.retire(s, &why);
                self.refresh_routes();
                true
            }
            None => false,
        }
    }

    /// After a trust file changed: every node that is `failed` or in backoff because its host
    /// key (or host certificate) was refused tries again at once. Other nodes keep their
    /// backoff, and connections that are up are not touched. Returns the nodes woken.
    pub fn retry_host_key_failures(&self) -> Vec<String> {
        let mut woken = Vec::new();
        for slot in self.all_slots() {
            if retry_if_host_key_refused(&slot) {
                woken.push(slot.name());
            }
        }
        woken.sort();
        woken
    }

    /// `drain_node_by` for a library caller (`drained_by` is `library`).
    pub fn drain_node(&self, name: &str) -> bool {
        self.drain_node_by(name, "library")
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
        self.refresh_routes();
        let limit = drain + Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, futures::future::join_all(handles)).await;
    }
}

/// Logs each refused claim once: those the node did not already have refused.
pub(super) fn log_refusals(nodes: &[Node], current: impl Fn(&str) -> Option<Arc<Node>>) {
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

/// A node whose `drain` annotation is set is drained (a new record by `annotation`, unless it
/// is drained already); a drain by annotation whose node no longer carries it ends.
fn apply_annotations(drained: &mut HashMap<String, DrainRecord>, desired: &[Node]) {
    for n in desired {
        match (&n.drain, drained.get(&n.name)) {
            (Some(reason), None) => {
                let reason = (!reason.is_empty()).then(|| reason.clone());
                drained.insert(
                    n.name.clone(),
                    DrainRecord::new(n.clone(), BY_ANNOTATION, reason),
                );
            }
            (None, Some(r)) if r.by_annotation() => {
                tracing::info!(node = %n.name, "drain annotation removed: node back");
                drained.remove(&n.name);
            }
            _ => {}
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn validate(nodes: &[Node]) -> Result<(), ConfigError> {
    for n in nodes {
        n.validate()?;
    }
    check_unique(nodes)
}

/// Retries `slot` at once when it is `failed` or in backoff because its host key (or host
/// certificate) was refused; true if it was woken. `connecting` too: an attempt under way may
/// have read the old trust; the backoff after it is then cut short.
fn retry_if_host_key_refused(slot: &NodeSlot) -> bool {
    let st = slot.status();
    let waiting = matches!(
        st.state,
        TunnelState::Failed | TunnelState::Backoff | TunnelState::Connecting
    );
    let host_key = st
        .last_connect_error
        .as_deref()
        .is_some_and(|e| e.is_host_key_refusal());
    if waiting && host_key {
        slot.retry_now();
    }
    waiting && host_key
}
