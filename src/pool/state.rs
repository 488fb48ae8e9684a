//! The state of one node's tunnel as the supervisor sees it, published through a
//! `tokio::sync::watch` so that dials can wait for `ready` and `status` can show why a node
//! is not. State names are part of the public interface (`/status`, metrics, logs).

use std::time::{Duration, Instant, SystemTime};

pub use crate::tunnel_state::TunnelState;

/// The outcome of the latest health probe.
#[derive(Debug, Clone)]
pub struct HealthResult {
    pub ok: bool,
    pub at: SystemTime,
    pub latency: Duration,
    pub error: Option<crate::error::ProbeError>,
    /// The SSH link answered the probe (the channel opened, or sshd refused it, e.g. "connect
    /// failed" to a kubelet that is down): a failure then concerns the node's service, not
    /// the link, and never replaces the connection.
    pub link_answered: bool,
}

/// A node's published status.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub state: TunnelState,
    /// When the current state began (wall clock, for display).
    pub since: SystemTime,
    /// When the current state began (monotonic).
    pub since_instant: Instant,
    /// Why the node is in this state.
    pub reason: String,
    /// The latest connection or probe error, kept after recovery for the operator.
    pub last_error: Option<String>,
    /// When the next connection attempt is due (in backoff/failed).
    pub next_retry: Option<Instant>,
    /// Connection attempts made so far.
    pub attempts: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
    /// True once the first connection attempt has finished (either way).
    pub first_attempt_done: bool,
    /// The latest health probe.
    pub last_health: Option<HealthResult>,
    /// The verified host key of the current (or last) connection.
    pub host_key: Option<String>,
    /// How that host key was trusted.
    pub host_key_trust: Option<crate::ssh::HostKeyTrust>,
    /// The client key the current (or last) connection authenticated with.
    pub client_key: Option<String>,
    /// When the current connection came up (None while not connected).
    pub connected_at: Option<Instant>,
    /// Latest SSH ping round trip on the current connection.
    pub keepalive_rtt: Option<Duration>,
    /// The latest failed connection attempt, typed (cleared by a successful one).
    pub last_connect_error: Option<std::sync::Arc<crate::error::ConnectError>>,
    /// Since when the node has not been `ready` (wall clock and monotonic); None while ready.
    /// Unlike `since`, it does not restart with each backoff cycle.
    pub not_ready_since: Option<(SystemTime, Instant)>,
    /// When the node left `ready`, within the last hour (at most `FLAPS_KEPT`).
    pub flaps: std::collections::VecDeque<Instant>,
    /// Who drained the node (`admin socket (uid 0)`, `annotation`, …), while it is drained.
    pub drained_by: Option<String>,
    /// When it was drained, while it is drained.
    pub drained_at: Option<SystemTime>,
    /// How the node's connections come (as of the supervisor's latest round).
    pub mode: crate::pool::NodeMode,
    /// How the current connection came: true when the node dialled in (None while not
    /// connected).
    pub dialled_in: Option<bool>,
}

/// How many recent flaps a status keeps.
pub const FLAPS_KEPT: usize = 64;

impl NodeStatus {
    /// Flaps (ready → not ready) in the hour before `now`.
    pub fn flaps_last_hour(&self, now: Instant) -> usize {
        self.flaps
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < Duration::from_secs(3600))
            .count()
    }

    /// Records a change of state: not-ready time and flaps.
    pub(crate) fn note_transition(&mut self, to: TunnelState) {
        let now = Instant::now();
        if to == TunnelState::Ready {
            self.not_ready_since = None;
            return;
        }
        if self.state == TunnelState::Ready {
            self.flaps.push_back(now);
            while self.flaps.len() > FLAPS_KEPT
                || self
                    .flaps
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(3600))
            {
                self.flaps.pop_front();
            }
        }
        if self.not_ready_since.is_none() {
            self.not_ready_since = Some((SystemTime::now(), now));
        }
    }
}

impl NodeStatus {
    pub(crate) fn new() -> Self {
        NodeStatus {
            state: TunnelState::Connecting,
            since: SystemTime::now(),
            since_instant: Instant::now(),
            reason: "starting".into(),
            last_error: None,
            next_retry: None,
            attempts: 0,
            reconnects: 0,
            first_attempt_done: false,
            last_health: None,
            host_key: None,
            host_key_trust: None,
            client_key: None,
            connected_at: None,
            keepalive_rtt: None,
            not_ready_since: Some((SystemTime::now(), Instant::now())),
            flaps: std::collections::VecDeque::new(),
            last_connect_error: None,
            drained_by: None,
            drained_at: None,
            mode: crate::pool::NodeMode::Forward,
            dialled_in: None,
        }
    }
}
