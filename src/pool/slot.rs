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
use super::transport::Link;
use crate::node::Node;
use crate::ssh::stream::LinkStats;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a dial could not get a usable tunnel from a slot.
#[derive(Debug, Clone)]
pub struct NotUsable {
    pub state: TunnelState,
    pub reason: String,
}

/// One node's place in the pool.
pub struct NodeSlot {
    node: RwLock<Arc<Node>>,
    current: RwLock<Option<Arc<dyn Link>>>,
    status: watch::Sender<NodeStatus>,
    /// Cancelled to stop this node's supervisor (removal, shutdown).
    stop: CancellationToken,
    /// Cancelled to make the supervisor drop the connection and reconnect now.
    kick: std::sync::Mutex<CancellationToken>,
    /// Wakes a supervisor waiting out a backoff (never touches a connection that is up): a
    /// trust file changed in a way that could help a node refused for its host key.
    retry: tokio::sync::Notify,
    /// The node's byte and stall counters (its metrics), kept across reconnects.
    link: LinkStats,
    dials_total: AtomicU64,
    dial_failures: AtomicU64,
    /// Extra connections past the per-connection channel limit.
    overflow: Overflow,
    /// Keeps a failing node's retries out of the log (see `pool::failure_log`).
    failure_log: std::sync::Mutex<FailureLog>,
}

impl NodeSlot {
    /// An empty slot for `node` (state `connecting`) whose channels update `link`; a failure
    /// that repeats is summarised in the log at most every `failure_log_interval`. Cancelling
    /// `stop` stops its supervisor.
    pub fn new(
        node: Node,
        link: LinkStats,
        failure_log_interval: std::time::Duration,
        stop: CancellationToken,
    ) -> Self {
        NodeSlot {
            failure_log: std::sync::Mutex::new(FailureLog::new(failure_log_interval)),
            link,
            dials_total: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            node: RwLock::new(Arc::new(node)),
            current: RwLock::new(None),
            status: watch::Sender::new(NodeStatus::new()),
            stop,
            kick: std::sync::Mutex::new(CancellationToken::new()),
            retry: tokio::sync::Notify::new(),
            overflow: Overflow::default(),
        }
    }

    /// Stops the node's supervisor (removal, drain, shutdown).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// True once the supervisor was told to stop.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves when the supervisor is told to stop.
    pub(crate) fn stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// The node's byte and stall counters, which its channels update.
    pub(crate) fn link(&self) -> &LinkStats {
        &self.link
    }

    /// The node's extra connections.
    pub(crate) fn overflow(&self) -> &Overflow {
        &self.overflow
    }

    /// Counts one dial through this node.
    pub(crate) fn count_dial(&self, failed: bool) {
        self.dials_total.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.dial_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Dials counted through this node: (total, failed).
    pub(crate) fn dial_counts(&self) -> (u64, u64) {
        (
            self.dials_total.load(Ordering::Relaxed),
            self.dial_failures.load(Ordering::Relaxed),
        )
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
    pub fn live(&self) -> Option<Arc<dyn Link>> {
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

    pub(crate) fn publish(&self, t: Option<Arc<dyn Link>>) -> Option<Arc<dyn Link>> {
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

    /// Cuts a backoff wait short (only a supervisor that waits, or whose attempt is under way,
    /// hears it; nothing is stored for later).
    pub(crate) fn retry_now(&self) {
        self.retry.notify_waiters();
    }

    /// What `retry_now` wakes.
    pub(crate) fn retry_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.retry.notified()
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
    ) -> Result<Arc<dyn Link>, NotUsable> {
        let mut rx = self.subscribe();
        loop {
            let st = rx.borrow_and_update().clone();
            if st.state.accepts_dials()
                && let Some(t) = self.live()
            {
                return Ok(t);
            }
            let give_up = match st.state {
                TunnelState::Draining | TunnelState::Drained => true,
                TunnelState::Failed => st.first_attempt_done,
                _ => st.first_attempt_done && tokio::time::Instant::now() >= deadline,
            };
            if give_up {
                return Err(NotUsable {
                    state: st.state,
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
                    return Err(NotUsable { state: st.state, reason: "node removed".into() });
                },
                _ = tokio::time::sleep_until(wait_until) => {}
                // A tunnel can close without a status change yet; poll a little.
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)), if st.state.accepts_dials() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    fn slot() -> Arc<NodeSlot> {
        Arc::new(NodeSlot::new(
            Node::parse_spec("node-1=192.0.2.1").unwrap(),
            LinkStats::default(),
            Duration::from_secs(300),
            CancellationToken::new(),
        ))
    }

    fn set(slot: &NodeSlot, state: TunnelState, first_attempt_done: bool) {
        slot.set_state_with(state, "test", |s| s.first_attempt_done = first_attempt_done);
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_node_or_one_that_needs_a_human_fails_at_once() {
        let s = slot();
        set(&s, TunnelState::Draining, false);
        let far = Instant::now() + Duration::from_secs(60);
        let started = Instant::now();
        assert_eq!(
            s.wait_usable(far).await.err().unwrap().state,
            TunnelState::Draining
        );
        set(&s, TunnelState::Failed, true);
        assert_eq!(
            s.wait_usable(far).await.err().unwrap().state,
            TunnelState::Failed
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_attempt_a_dial_waits_until_its_deadline() {
        let s = slot();
        set(&s, TunnelState::Backoff, true);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let e = s.wait_usable(deadline).await.err().unwrap();
        assert_eq!(e.state, TunnelState::Backoff);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // Past the deadline: at once.
        assert!(s.wait_usable(started).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_state_without_a_live_tunnel_is_not_usable() {
        let s = slot();
        set(&s, TunnelState::Ready, true);
        let started = Instant::now();
        let e = s
            .wait_usable(started + Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert_eq!(e.state, TunnelState::Ready);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn before_the_first_attempt_ends_a_dial_waits_past_its_deadline_for_the_outcome() {
        let s = slot();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(1);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_usable(deadline).await.err().map(|e| e.state) }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiter.is_finished(),
            "waits for the first attempt, not the deadline"
        );
        set(&s, TunnelState::Failed, true);
        assert_eq!(waiter.await.unwrap(), Some(TunnelState::Failed));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn dial_counts_and_stop() {
        let s = slot();
        s.count_dial(false);
        s.count_dial(true);
        assert_eq!(s.dial_counts(), (2, 1));
        assert!(!s.is_stopped());
        s.stop();
        assert!(s.is_stopped());
    }
}
