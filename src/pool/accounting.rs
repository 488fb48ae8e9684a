//! Counting: each dial's outcome in its node's counters and the metrics, and the gauges that
//! describe the pool now (set just before `/metrics` is rendered).

use std::time::Duration;

use super::Pool;
use super::slot::NodeSlot;
use super::state::TunnelState;
use crate::error::{DialError, OpenError};

impl Pool {
    /// Counts a dial in the node's status and the metrics.
    pub(super) fn account(
        &self,
        slot: Option<&NodeSlot>,
        error: Option<&DialError>,
        took: Duration,
    ) {
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
            slot.count_dial(outcome != DialResult::Ok);
        }
        // A dial that ends after its node's connections are all gone (a hanging open
        // outlives the drain) is counted without a node: the series of a node that left must
        // not come back.
        // Checked under the lock that forgetting a node's series holds, so the two never
        // interleave.
        let gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        let node = slot
            .map(|s| s.name())
            .filter(|n| self.has_connections(n))
            .unwrap_or_else(|| "-".into());
        let labels = DialLabels {
            node,
            result: outcome.as_str(),
        };
        self.metrics.dials.get_or_create(&labels).inc();
        drop(gone);
        self.metrics.dial_duration.observe(took.as_secs_f64());
    }

    /// True while node `name` is in the pool or one of its connections drains.
    fn has_connections(&self, name: &str) -> bool {
        self.slots.contains_key(name) || self.draining.iter().any(|d| d.name() == name)
    }

    /// Dials counted for node `name`: (total, failed).
    pub fn dial_counts(&self, name: &str) -> Option<(u64, u64)> {
        Some(self.slot(name)?.dial_counts())
    }

    /// Sets the gauges that describe the pool now (called before metrics are rendered).
    pub fn refresh_metrics(&self) {
        use crate::metrics::{NodeLabel, StateLabel};
        let m = &self.metrics;
        m.tunnels.clear();
        m.tunnel_up.clear();
        m.node_mode.clear();
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
            TunnelState::Waiting,
            TunnelState::Draining,
            TunnelState::Drained,
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
            if matches!(status.state, TunnelState::Draining | TunnelState::Drained) {
                continue;
            }
            let label = NodeLabel {
                node: node.name.clone(),
            };
            m.tunnel_up
                .get_or_create(&label)
                .set(i64::from(status.state.accepts_dials()));
            m.node_mode
                .get_or_create(&crate::metrics::ModeLabels {
                    node: node.name.clone(),
                    mode: status.mode.as_str(),
                })
                .set(1);
            let (conns, open) = self.connection_load(&node.name).unwrap_or((0, 0));
            m.open_channels.get_or_create(&label).set(open as i64);
            m.connections.get_or_create(&label).set(conns as i64);
            let congested = self.slot(&node.name).map_or(0, |s| s.congested());
            m.congested_connections
                .get_or_create(&label)
                .set(congested as i64);
        }
    }
}
