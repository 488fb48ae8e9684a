//! Sessions that nodes opened and that wait for the pool to take them. A node's session is
//! registered once its forward is accepted; the pool's connector takes the oldest live one
//! for that node (a second session of a node is another connection of it, taken by the next
//! connect: an extra connection, or the reconnect after the first one ends). The pool drains
//! and closes the sessions it took when their node leaves the node set; the listener closes
//! the ones still waiting here (`take_non_members`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::link::Session;

/// Arrived sessions by node name.
#[derive(Debug, Default)]
pub struct Registry {
    waiting: Mutex<HashMap<String, VecDeque<Session>>>,
    arrived: Notify,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// A node's session is ready to be used.
    pub(crate) fn register(&self, session: Session) {
        if let Ok(mut w) = self.waiting.lock() {
            let q = w.entry(session.node.clone()).or_default();
            // Ended sessions of a node that nobody takes (an either node served by a dial,
            // say) must not pile up.
            q.retain(|s| !s.is_closed());
            q.push_back(session);
        }
        self.arrived.notify_waiters();
    }

    /// The oldest live session of `node` (ended ones are dropped on the way).
    pub(crate) fn take_now(&self, node: &str) -> Option<Session> {
        let mut w = self.waiting.lock().ok()?;
        let q = w.get_mut(node)?;
        while let Some(s) = q.pop_front() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Waits up to `limit` for a session of `node`.
    pub(crate) async fn take(&self, node: &str, limit: Duration) -> Option<Session> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if let Some(s) = self.take_now(node) {
                    return s;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(limit, wait).await.ok()
    }

    /// Takes out the waiting sessions of every node that `member` says is not in the node set
    /// (those that ended are dropped on the way); the caller closes them. `member` runs
    /// without the registry's lock held (it takes the pool's).
    pub(crate) fn take_non_members(&self, member: impl Fn(&str) -> bool) -> Vec<Session> {
        let names: Vec<String> = match self.waiting.lock() {
            Ok(w) => w.keys().cloned().collect(),
            Err(_) => return Vec::new(),
        };
        let gone: Vec<String> = names.into_iter().filter(|n| !member(n)).collect();
        if gone.is_empty() {
            return Vec::new();
        }
        let Ok(mut w) = self.waiting.lock() else {
            return Vec::new();
        };
        gone.iter()
            .filter_map(|n| w.remove(n))
            .flatten()
            .filter(|s| !s.is_closed())
            .collect()
    }

    /// True if a live session of `node` waits to be taken.
    fn has_live(&self, node: &str) -> bool {
        self.waiting
            .lock()
            .ok()
            .and_then(|w| w.get(node).map(|q| q.iter().any(|s| !s.is_closed())))
            .unwrap_or(false)
    }

    /// Resolves once a live session of `node` waits to be taken (not taking it). Unbounded:
    /// the caller races it against its own wait.
    pub(crate) async fn arrival(&self, node: &str) {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.has_live(node) {
                return;
            }
            arrived.await;
        }
    }

    /// Sessions waiting to be taken, all nodes together.
    pub fn waiting(&self) -> usize {
        self.waiting
            .lock()
            .map(|w| w.values().map(VecDeque::len).sum())
            .unwrap_or(0)
    }
}
