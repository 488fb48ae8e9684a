//! `TunnelState`: the names of a node tunnel's states. A leaf module (it depends on nothing
//! of ours) so that errors, the pool and the admin API can all name states without depending
//! on each other. The names are part of the public interface (`/status`, metrics, logs).

use std::fmt;

/// Where a node's tunnel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// A connection attempt is under way.
    Connecting,
    /// Connected and healthy: dials go through.
    Ready,
    /// Connected, but health probes fail: dials still go through; reconnect after a threshold.
    Degraded,
    /// Waiting before the next attempt after a transient failure.
    Backoff,
    /// A reverse node without a session: waiting for the node to dial in (no attempt, no
    /// backoff; ready the moment its session arrives).
    Waiting,
    /// Removed from the node set (or shutting down, or drained by an operator): no new dials,
    /// open streams finish.
    Draining,
    /// Drained by an operator (or a drain annotation) and its streams have finished: no
    /// connection, no dials, until `reconnect NODE` or until it leaves the node source.
    Drained,
    /// A failure a human must fix (authentication rejected, host key): retried slowly.
    Failed,
}

impl TunnelState {
    /// The public lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Connecting => "connecting",
            TunnelState::Ready => "ready",
            TunnelState::Degraded => "degraded",
            TunnelState::Backoff => "backoff",
            TunnelState::Waiting => "waiting",
            TunnelState::Draining => "draining",
            TunnelState::Drained => "drained",
            TunnelState::Failed => "failed",
        }
    }

    /// True when dials may use the node's connection.
    pub fn accepts_dials(self) -> bool {
        matches!(self, TunnelState::Ready | TunnelState::Degraded)
    }
}

impl fmt::Display for TunnelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
