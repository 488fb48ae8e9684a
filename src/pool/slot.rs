//! `NodeSlot`: a node's place in the pool. It holds the node's current `NodeTunnel` (set by
//! the supervisor while connected), publishes the node's status through a watch channel, and
//! lets dials wait, bounded, for the node to become usable.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::failure_log::{FailureLog, Verdict};
use super::overflow::Overflow;
use super::state::{NodeStatus, TunnelState};
use crate::node::Node;
use crate::ssh::NodeTunnel;
use crate::ssh::stream::LinkStats;
use std::sync::atomic::AtomicU64;

/// Why a dial could not get a usable tunnel from a slot.
#[derive(Debug, Clone)]
pub struct NotUsable {
    pub state: TunnelState,
    pub last_error: Option<String>,
    pub reason: String,
}

/// One node's place in the pool.
pub struct NodeSlot {
    node: RwLock<Arc<Node>>,
    current: RwLock<Option<Arc<NodeTunnel>>>,
    status: watch::Sender<NodeStatus>,
    /// Cancelled to stop this node's supervisor (removal, shutdown).
    pub(crate) stop: CancellationToken,
    /// Cancelled to make the supervisor drop the connection and reconnect now.
    pub(crate) kick: std::sync::Mutex<CancellationToken>,
    /// The node's byte and stall counters (its metrics), kept across reconnects.
    pub(crate) link: LinkStats,
    pub(crate) dials_total: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    /// Extra connections past the per-connection channel limit.
    pub(crate) overflow: Overflow,
    /// Keeps a failing node's retries out of the log (see `pool::failure_log`).
    failure_log: std::sync::Mutex<FailureLog>,
}

impl NodeSlot {
    /// An empty slot for `node` (state `connecting`) whose channels update `link`; a failure
    /// that repeats is summarised in the log at most every `failure_log_interval`.
    pub fn new(node: Node, link: LinkStats, failure_log_interval: std::time::Duration) -> Self {
        NodeSlot {
            failure_log: std::sync::Mutex::new(FailureLog::new(failure_log_interval)),
            link,
            dials_total: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            node: RwLock::new(Arc::new(node)),
            current: RwLock::new(None),
            status: watch::Sender::new(NodeStatus::new()),
            stop: CancellationToken::new(),
            kick: std::sync::Mutex::new(CancellationToken::new()),
            overflow: Overflow::default(),
        }
    }

    /// The node (shared; replaced whole when its pod CIDRs change).
    pub fn node(&self) -> Arc<Node> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node's name.
    pub fn name(&self) -> String {
        self.node().name.clone()
    }

    pub(crate) fn set_node(&self, node: Node) {
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(node);
    }

    /// The current status.
    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<NodeStatus> {
        self.status.subscribe()
    }

    /// The live tunnel, if connected and not closed.
    pub fn live(&self) -> Option<Arc<NodeTunnel>> {
        let guard = self.current.read().ok()?;
        guard.as_ref().filter(|t| !t.is_closed()).cloned()
    }

    /// The node's live SSH connections (the supervised one and any extras) and the
    /// channels open or opening on all of them.
    pub fn load(&self) -> (usize, usize) {
        let (extras, open) = self.overflow.load();
        match self.live() {
            Some(t) => (extras + 1, open + t.open_channels()),
            None => (extras, open),
        }
    }

    /// How many of the node's live connections are congested now.
    pub fn congested(&self) -> usize {
        self.overflow.congested() + self.live().map_or(0, |t| usize::from(t.is_congested()))
    }

    pub(crate) fn publish(&self, t: Option<Arc<NodeTunnel>>) -> Option<Arc<NodeTunnel>> {
        match self.current.write() {
            Ok(mut g) => std::mem::replace(&mut *g, t),
            Err(_) => None,
        }
    }

    /// Moves to `state` with `reason`; logs the change once (with the node and the reason).
    pub(crate) fn set_state(&self, state: TunnelState, reason: impl Into<String>) {
        self.set_state_with(state, reason, |_| {});
    }

    /// Like `set_state`, with further changes made in the same update, so that no reader
    /// sees half of a transition (e.g. "first attempt done" without its outcome).
    pub(crate) fn set_state_with(
        &self,
        state: TunnelState,
        reason: impl Into<String>,
        also: impl FnOnce(&mut NodeStatus),
    ) {
        let reason = reason.into();
        let name = self.name();
        self.status.send_modify(|s| {
            let changed = s.state != state;
            let from = s.state;
            if changed {
                s.note_transition(state);
                s.since = SystemTime::now();
                s.since_instant = Instant::now();
            }
            s.state = state;
            if state != TunnelState::Backoff && state != TunnelState::Failed {
                s.next_retry = None;
            }
            also(s);
            if changed {
                let verdict = self
                    .failure_log
                    .lock()
                    .map(|mut f| f.judge(state, &reason, Instant::now()))
                    .unwrap_or(Verdict::Log);
                match verdict {
                    Verdict::Quiet => {}
                    Verdict::Summary { quiet } => tracing::warn!(
                        node = %name,
                        attempts = s.attempts,
                        last_error = %reason,
                        down_for = ?s.not_ready_since.map(|(_, at)| at.elapsed()),
                        unlogged_changes = quiet,
                        "tunnel still {state}: the same failure repeats"
                    ),
                    Verdict::Log => match state {
                        TunnelState::Ready => {
                            tracing::info!(node = %name, %from, %reason, "tunnel ready")
                        }
                        TunnelState::Connecting | TunnelState::Draining => {
                            tracing::info!(node = %name, %from, %reason, "tunnel {state}")
                        }
                        _ => tracing::warn!(node = %name, %from, %reason, "tunnel {state}"),
                    },
                }
            }
            s.reason = reason;
        });
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.status.send_modify(f);
    }

    /// Asks the supervisor to drop the current connection and reconnect at once (also cuts a
    /// backoff wait short).
    pub fn reconnect_now(&self) {
        if let Ok(k) = self.kick.lock() {
            k.cancel();
        }
    }

    pub(crate) fn kick_token(&self) -> CancellationToken {
        match self.kick.lock() {
            Ok(mut k) => {
                if k.is_cancelled() {
                    *k = CancellationToken::new();
                }
                k.clone()
            }
            Err(_) => CancellationToken::new(),
        }
    }

    /// Waits until the node accepts dials and returns its tunnel. Waits for the node's first
    /// connection attempt, then at most until `deadline` for a reconnect; fails at once when
    /// the node is draining or needs a human (`failed`).
    pub async fn wait_usable(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<NodeTunnel>, NotUsable> {
        let mut rx = self.subscribe();
        loop {
            let st = rx.borrow_and_update().clone();
            if st.state.accepts_dials()
                && let Some(t) = self.live()
            {
                return Ok(t);
            }
            let give_up = match st.state {
                TunnelState::Draining => true,
                TunnelState::Failed => st.first_attempt_done,
                _ => st.first_attempt_done && tokio::time::Instant::now() >= deadline,
            };
            if give_up {
                return Err(NotUsable {
                    state: st.state,
                    last_error: st.last_error,
                    reason: st.reason,
                });
            }
            // Before the first attempt finishes there is no deadline of ours: the attempt is
            // bounded by the connect timeout and will change the state.
            let wait_until = if st.first_attempt_done {
                deadline
            } else {
                tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(NotUsable { state: st.state, last_error: st.last_error, reason: "node removed".into() });
                },
                _ = tokio::time::sleep_until(wait_until) => {}
                // A tunnel can close without a status change yet; poll a little.
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)), if st.state.accepts_dials() => {}
            }
        }
    }
}
