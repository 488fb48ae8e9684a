//! Prometheus metrics (OpenMetrics text via prometheus-client), prefix `kube_ssh_tunnel_`.
//! Counters are updated where things happen (dials, bytes, probes, reconnects); gauges that
//! describe the current pool (`tunnels{state}`, `tunnel_up`, `open_channels`) are refreshed
//! from the pool's state when scraped, so they can never drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// A node and how its connections come (`node_mode`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub node: String,
    /// forward | reverse | either
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialLabels {
    pub node: String,
    /// A `DialResult` name.
    pub result: &'static str,
}

/// How a dial ended (the `result` label; failures by reason).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DialResult {
    Ok,
    NoRoute,
    NotReady,
    Refused,
    Timeout,
    ConnectionLost,
    AtCapacity,
}

impl DialResult {
    /// Every result, for removing a node's series.
    pub const ALL: [DialResult; 7] = [
        DialResult::Ok,
        DialResult::NoRoute,
        DialResult::NotReady,
        DialResult::Refused,
        DialResult::Timeout,
        DialResult::ConnectionLost,
        DialResult::AtCapacity,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DialResult::Ok => "ok",
            DialResult::NoRoute => "no_route",
            DialResult::NotReady => "not_ready",
            DialResult::Refused => "refused",
            DialResult::Timeout => "timeout",
            DialResult::ConnectionLost => "connection_lost",
            DialResult::AtCapacity => "at_capacity",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub node: String,
    /// `in` (from the node) or `out` (to the node).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub node: String,
    /// `ok` or `fail`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// Per-node counters that outlive a connection (they are the node's metrics): bytes relayed
/// each way, bytes held for readers that are behind, and what isolation did.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    /// Bytes read by consumers (from the node).
    pub bytes_in: Counter,
    /// Bytes written by producers (to the node).
    pub bytes_out: Counter,
    /// Channels closed because their reader stalled (not reading at all, buffers full).
    pub stalled: Counter,
    /// Bytes held in memory for readers now.
    pub buffered: Gauge,
    /// Unread bytes in spill files now.
    pub spilled: Gauge,
    /// Streams that needed a spill file.
    pub spilled_streams: Counter,
    /// Seconds any connection of the node spent congested.
    pub congested_seconds: Counter<f64, AtomicU64>,
    /// Extra connections opened because the others were congested.
    pub isolation_connections: Counter,
}

/// All metrics of one daemon.
pub struct Metrics {
    registry: Registry,
    pub tunnels: Family<StateLabel, Gauge>,
    pub tunnel_up: Family<NodeLabel, Gauge>,
    pub node_mode: Family<ModeLabels, Gauge>,
    pub dials: Family<DialLabels, Counter>,
    pub dial_duration: Histogram,
    pub open_channels: Family<NodeLabel, Gauge>,
    pub connections: Family<NodeLabel, Gauge>,
    pub bytes: Family<BytesLabels, Counter>,
    pub reconnects: Family<NodeLabel, Counter>,
    pub health_checks: Family<CheckLabels, Counter>,
    pub keepalive_rtt: Family<NodeLabel, Gauge<f64, AtomicU64>>,
    pub stalled_channels: Family<NodeLabel, Counter>,
    pub buffered_bytes: Family<NodeLabel, Gauge>,
    pub spilled_bytes: Family<NodeLabel, Gauge>,
    pub spilled_streams: Family<NodeLabel, Counter>,
    pub congested_seconds: Family<NodeLabel, Counter<f64, AtomicU64>>,
    pub congested_connections: Family<NodeLabel, Gauge>,
    pub isolation_connections: Family<NodeLabel, Counter>,
    pub buffer_budget_used: Family<KindLabel, Gauge>,
    pub buffer_budget_limit: Family<KindLabel, Gauge>,
    pub connect_requests: Family<CodeLabel, Counter>,
    pub deprecated_mode: Gauge,
    /// Failures of the node source (a Node watch error, a node file that does not load).
    pub node_source_errors: Counter,
    /// Reloads of a trust file (known_hosts) that failed; its last good contents stayed.
    pub trust_file_reload_errors: Family<FileLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kube_ssh_tunnel");
        let m = Metrics {
            tunnels: Family::default(),
            tunnel_up: Family::default(),
            node_mode: Family::default(),
            dials: Family::default(),
            // 0.5 ms .. ~16 s.
            dial_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            open_channels: Family::default(),
            connections: Family::default(),
            bytes: Family::default(),
            reconnects: Family::default(),
            health_checks: Family::default(),
            keepalive_rtt: Family::default(),
            stalled_channels: Family::default(),
            buffered_bytes: Family::default(),
            spilled_bytes: Family::default(),
            spilled_streams: Family::default(),
            congested_seconds: Family::default(),
            congested_connections: Family::default(),
            isolation_connections: Family::default(),
            buffer_budget_used: Family::default(),
            buffer_budget_limit: Family::default(),
            connect_requests: Family::default(),
            deprecated_mode: Gauge::default(),
            node_source_errors: Counter::default(),
            trust_file_reload_errors: Family::default(),
            registry: Registry::default(),
        };
        registry.register("tunnels", "Tunnels by state", m.tunnels.clone());
        registry.register(
            "tunnel_up",
            "1 when the node's tunnel accepts dials",
            m.tunnel_up.clone(),
        );
        registry.register(
            "node_mode",
            "1 per node, labelled with how its connections come: forward (dialled), reverse (the node dials in with ssh -R) or either",
            m.node_mode.clone(),
        );
        registry.register("dials", "Dials by node and result", m.dials.clone());
        registry.register(
            "dial_duration_seconds",
            "Time to open a channel for a dial",
            m.dial_duration.clone(),
        );
        registry.register(
            "open_channels",
            "Open channels per node (all its connections)",
            m.open_channels.clone(),
        );
        registry.register(
            "connections",
            "Live SSH connections per node (more than 1 past the per-connection channel limit)",
            m.connections.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed per node and direction (in: from the node)",
            m.bytes.clone(),
        );
        registry.register(
            "reconnects",
            "Successful reconnections per node",
            m.reconnects.clone(),
        );
        registry.register(
            "health_checks",
            "Health probes per node and result",
            m.health_checks.clone(),
        );
        registry.register(
            "keepalive_rtt_seconds",
            "Latest SSH ping round trip per node",
            m.keepalive_rtt.clone(),
        );
        registry.register(
            "stalled_channels",
            "Channels closed because their reader stalled",
            m.stalled_channels.clone(),
        );
        registry.register(
            "buffered_bytes",
            "Bytes held in memory per node for readers that are behind",
            m.buffered_bytes.clone(),
        );
        registry.register(
            "spilled_bytes",
            "Unread bytes in spill files per node (readers behind by their whole memory share)",
            m.spilled_bytes.clone(),
        );
        registry.register(
            "spilled_streams",
            "Streams that needed a spill file, per node",
            m.spilled_streams.clone(),
        );
        registry.register(
            "congested_seconds",
            "Seconds a connection of the node spent congested (a reader behind by its whole buffer, or bulk data waiting for window)",
            m.congested_seconds.clone(),
        );
        registry.register(
            "congested_connections",
            "Connections of the node congested now (new dials avoid them)",
            m.congested_connections.clone(),
        );
        registry.register(
            "isolation_connections",
            "Extra connections opened because the node's others were congested",
            m.isolation_connections.clone(),
        );
        registry.register(
            "buffer_budget_used_bytes",
            "Bytes of the pool-wide buffer budget in use (kind: memory or spill)",
            m.buffer_budget_used.clone(),
        );
        registry.register(
            "buffer_budget_limit_bytes",
            "The pool-wide buffer budget (kind: memory or spill; spill 0: spilling off)",
            m.buffer_budget_limit.clone(),
        );
        registry.register(
            "connect_requests",
            "CONNECT requests by HTTP status",
            m.connect_requests.clone(),
        );
        registry.register(
            "deprecated_mode_enabled",
            "1: running in deprecated SSH tunnel mode",
            m.deprecated_mode.clone(),
        );
        m.deprecated_mode.set(1);
        registry.register(
            "node_source_errors",
            "Failures of the node source: a Node watch error, or a node file that did not load",
            m.node_source_errors.clone(),
        );
        registry.register(
            "trust_file_reload_errors",
            "Re-reads of a trust file (--ssh-known-hosts, --admin-token-file) that failed; its last good contents stay in use",
            m.trust_file_reload_errors.clone(),
        );

        Metrics { registry, ..m }
    }

    /// The node's counters that its channels update.
    pub fn link(&self, node: &str) -> LinkStats {
        let b = |direction| BytesLabels {
            node: node.to_string(),
            direction,
        };
        let n = NodeLabel {
            node: node.to_string(),
        };
        LinkStats {
            bytes_in: self.bytes.get_or_create_owned(&b("in")),
            bytes_out: self.bytes.get_or_create_owned(&b("out")),
            stalled: self.stalled_channels.get_or_create_owned(&n),
            buffered: self.buffered_bytes.get_or_create_owned(&n),
            spilled: self.spilled_bytes.get_or_create_owned(&n),
            spilled_streams: self.spilled_streams.get_or_create_owned(&n),
            congested_seconds: self.congested_seconds.get_or_create_owned(&n),
            isolation_connections: self.isolation_connections.get_or_create_owned(&n),
        }
    }

    /// Creates a node's counters at 0 (and its round trip as NaN) when it joins, so that a
    /// dashboard or an alert on `increase(...)` sees every node from the first scrape.
    pub fn init_node(&self, node: &str) {
        let n = NodeLabel {
            node: node.to_string(),
        };
        for r in DialResult::ALL {
            drop(self.dials.get_or_create(&DialLabels {
                node: node.to_string(),
                result: r.as_str(),
            }));
        }
        for result in ["ok", "fail"] {
            drop(self.health_checks.get_or_create(&CheckLabels {
                node: node.to_string(),
                result,
            }));
        }
        drop(self.reconnects.get_or_create(&n));
        self.keepalive_rtt.get_or_create(&n).set(f64::NAN);
    }

    /// Removes every series labelled with node `node` (it left the node set), so that churn
    /// does not grow /metrics without bound. A node added again starts its series anew.
    pub fn forget_node(&self, node: &str) {
        let n = NodeLabel {
            node: node.to_string(),
        };
        for r in DialResult::ALL {
            self.dials.remove(&DialLabels {
                node: node.to_string(),
                result: r.as_str(),
            });
        }
        for direction in ["in", "out"] {
            self.bytes.remove(&BytesLabels {
                node: node.to_string(),
                direction,
            });
        }
        for result in ["ok", "fail"] {
            self.health_checks.remove(&CheckLabels {
                node: node.to_string(),
                result,
            });
        }
        self.tunnel_up.remove(&n);
        for mode in ["forward", "reverse", "either"] {
            self.node_mode.remove(&ModeLabels {
                node: node.to_string(),
                mode,
            });
        }
        self.open_channels.remove(&n);
        self.connections.remove(&n);
        self.congested_connections.remove(&n);
        self.reconnects.remove(&n);
        self.keepalive_rtt.remove(&n);
        self.stalled_channels.remove(&n);
        self.buffered_bytes.remove(&n);
        self.spilled_bytes.remove(&n);
        self.spilled_streams.remove(&n);
        self.congested_seconds.remove(&n);
        self.isolation_connections.remove(&n);
    }

    /// Renders the OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
