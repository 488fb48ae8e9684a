//! The `/status` document (its fields are part of the public interface): one entry per node and the pool's summary. The same
//! types are serialized by the daemon and parsed by `kube-ssh-tunnel status`.

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::pool::{NodeStatus, Pool, TunnelState};
use crate::ssh::HostKeyTrust;

/// A node's state as the document carries it: one of ours, or (in a client reading a newer
/// daemon) a name this build does not know, kept as it came so `status` can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StateName {
    /// A state this build knows.
    Known(TunnelState),
    /// A state name from a newer daemon.
    Unknown(String),
}

impl From<TunnelState> for StateName {
    fn from(s: TunnelState) -> Self {
        StateName::Known(s)
    }
}

impl PartialEq<TunnelState> for StateName {
    fn eq(&self, other: &TunnelState) -> bool {
        matches!(self, StateName::Known(s) if s == other)
    }
}

impl std::fmt::Display for StateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateName::Known(s) => s.fmt(f),
            StateName::Unknown(s) => f.write_str(s),
        }
    }
}

/// The latest health probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthDocument {
    pub ok: bool,
    /// RFC 3339 time of the probe.
    pub at: String,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDocument {
    pub name: String,
    pub address: String,
    pub ssh_port: u16,
    /// connecting | ready | degraded | backoff | waiting | draining | drained | failed (a
    /// client keeps a name it does not know as it came)
    pub state: StateName,
    /// How the node's connections come: forward | reverse | either, and for an either node
    /// with a connection how it came: either:forward | either:reverse (null from a daemon
    /// without modes).
    #[serde(default)]
    pub mode: Option<String>,
    /// Who drained the node (`admin socket (uid 0)`, `admin API over TCP (ADDR)`,
    /// `annotation`, `library`), while it is draining or drained by a drain; else null.
    #[serde(default)]
    pub drained_by: Option<String>,
    /// RFC 3339 time of that drain; else null.
    #[serde(default)]
    pub drained_at: Option<String>,
    /// Why it is in this state.
    pub reason: String,
    /// RFC 3339 time the state began.
    pub since: String,
    /// Seconds in this state.
    pub for_s: f64,
    /// Seconds the current connection has been up (null while not connected).
    pub uptime_s: Option<f64>,
    /// RFC 3339 time since which the node has not been ready (null while ready); unlike
    /// `since`, it does not restart with each backoff cycle.
    #[serde(default)]
    pub not_ready_since: Option<String>,
    /// Seconds since `not_ready_since` (null while ready).
    #[serde(default)]
    pub down_for_s: Option<f64>,
    /// Times the node left `ready` in the last hour.
    #[serde(default)]
    pub flaps_last_hour: usize,
    pub open_channels: usize,
    /// Live SSH connections to the node: 1, plus extras past the per-connection channel limit.
    #[serde(default)]
    pub connections: usize,
    /// Of those, connections congested now (a reader behind by its whole buffer, or bulk data
    /// waiting for window); new dials avoid them.
    #[serde(default)]
    pub congested_connections: usize,
    /// Bytes held in memory for this node's readers that are behind.
    #[serde(default)]
    pub buffered_bytes: u64,
    /// Unread bytes in this node's spill files.
    #[serde(default)]
    pub spilled_bytes: u64,
    pub dials_total: u64,
    pub dial_failures_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reconnects: u64,
    pub last_health: Option<HealthDocument>,
    pub last_error: Option<String>,
    /// Seconds until the next connection attempt (in backoff/failed).
    pub next_retry_s: Option<f64>,
    /// Verified host key of the current or last connection (`ALG SHA256:…`).
    pub host_key: Option<String>,
    /// How that host key was trusted: known-hosts-line | host-certificate | learned |
    /// annotation | insecure | node-dialled-in (reverse: `host_key` then holds the node's
    /// client key, which named it) (null before the first connection).
    #[serde(default)]
    pub host_key_trust: Option<HostKeyTrust>,
    /// The client key the current or last connection authenticated with
    /// (`ALG SHA256:…`, then `(certificate 'ID')` or `(agent)` when it was one of those).
    #[serde(default)]
    pub client_key: Option<String>,
    pub keepalive_rtt_ms: Option<f64>,
    pub pod_cidrs: Vec<String>,
    /// Aliases and pod CIDRs the node claimed that were refused, each with why (`pool::vet`).
    #[serde(default)]
    pub refused: Vec<String>,
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub version: String,
    pub deprecated_mode: bool,
    /// Host keys are not verified (--insecure-skip-host-key-verification).
    pub insecure_host_keys: bool,
    /// Nodes in the desired set (draining and drained ones not counted).
    pub desired: usize,
    /// Desired nodes that are ready.
    pub ready: usize,
    /// Nodes drained by an operator or an annotation (draining or drained), counted apart:
    /// not in `desired`.
    #[serde(default)]
    pub drained: usize,
    pub nodes: Vec<NodeDocument>,
    /// Nodes of the source left out because their address was refused ("NAME: why").
    #[serde(default)]
    pub left_out: Vec<String>,
    /// The trust files (--ssh-known-hosts), re-read while running: whether the latest read
    /// worked (when not, the last good contents stay in use).
    #[serde(default)]
    pub trust_files: Vec<TrustFileDocument>,
}

/// One trust file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustFileDocument {
    pub path: String,
    /// False when the latest read failed; the last good contents stay in use.
    pub ok: bool,
    /// Why the latest read failed (file and line).
    pub error: Option<String>,
    /// RFC 3339 time the contents in use were read.
    pub loaded_at: String,
}

/// RFC 3339 (UTC, seconds) for a wall-clock time.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl StatusDocument {
    /// The document for `pool` now.
    pub fn build(pool: &Pool, insecure_host_keys: bool) -> StatusDocument {
        let now = Instant::now();
        let mut nodes = Vec::new();
        for (node, st) in pool.statuses() {
            nodes.push(node_document(pool, &node, &st, now));
        }
        let desired = nodes
            .iter()
            .filter(|n| n.state != TunnelState::Draining && n.state != TunnelState::Drained)
            .count();
        let drained = nodes.iter().filter(|n| n.drained_by.is_some()).count();
        let ready = nodes
            .iter()
            .filter(|n| n.state == TunnelState::Ready)
            .count();
        StatusDocument {
            version: crate::VERSION.to_string(),
            deprecated_mode: true,
            insecure_host_keys,
            desired,
            ready,
            drained,
            nodes,
            left_out: pool
                .left_out()
                .into_iter()
                .map(|(n, why)| format!("{n}: {why}"))
                .collect(),
            trust_files: pool
                .config()
                .ssh
                .known_hosts
                .file_status()
                .into_iter()
                .map(|f| TrustFileDocument {
                    path: f.path.display().to_string(),
                    ok: f.ok,
                    error: f.error,
                    loaded_at: rfc3339(f.loaded_at),
                })
                .collect(),
        }
    }
}

fn node_document(pool: &Pool, node: &crate::Node, st: &NodeStatus, now: Instant) -> NodeDocument {
    let draining = matches!(st.state, TunnelState::Draining | TunnelState::Drained);
    let (dials, fails) = if draining {
        (0, 0)
    } else {
        pool.dial_counts(&node.name).unwrap_or((0, 0))
    };
    let link = pool.metrics().link(&node.name);
    let (connections, open) = if draining {
        (0, 0)
    } else {
        pool.connection_load(&node.name).unwrap_or((0, 0))
    };
    NodeDocument {
        name: node.name.clone(),
        address: node.address.clone(),
        ssh_port: node.ssh_port,
        state: st.state.into(),
        mode: Some(st.mode.shown(st.dialled_in)),
        drained_by: st.drained_by.clone(),
        drained_at: st.drained_at.map(rfc3339),
        reason: st.reason.clone(),
        since: rfc3339(st.since),
        for_s: now
            .saturating_duration_since(st.since_instant)
            .as_secs_f64(),
        uptime_s: st
            .connected_at
            .map(|c| now.saturating_duration_since(c).as_secs_f64()),
        not_ready_since: st.not_ready_since.map(|(wall, _)| rfc3339(wall)),
        down_for_s: st
            .not_ready_since
            .map(|(_, at)| now.saturating_duration_since(at).as_secs_f64()),
        flaps_last_hour: st.flaps_last_hour(now),
        open_channels: open,
        connections,
        congested_connections: if draining {
            0
        } else {
            pool.congested_connections(&node.name).unwrap_or(0)
        },
        buffered_bytes: u64::try_from(link.buffered.get()).unwrap_or(0),
        spilled_bytes: u64::try_from(link.spilled.get()).unwrap_or(0),
        dials_total: dials,
        dial_failures_total: fails,
        bytes_in: link.bytes_in.get(),
        bytes_out: link.bytes_out.get(),
        reconnects: st.reconnects,
        last_health: st.last_health.as_ref().map(|h| HealthDocument {
            ok: h.ok,
            at: rfc3339(h.at),
            latency_ms: h.latency.as_secs_f64() * 1000.0,
            error: h.error.as_ref().map(ToString::to_string),
        }),
        last_error: st.last_error.clone(),
        next_retry_s: st
            .next_retry
            .map(|t| t.saturating_duration_since(now).as_secs_f64()),
        host_key: st.host_key.clone(),
        host_key_trust: st.host_key_trust,
        client_key: st.client_key.clone(),
        keepalive_rtt_ms: st.keepalive_rtt.map(|d| d.as_secs_f64() * 1000.0),
        pod_cidrs: node.pod_cidrs.iter().map(|c| c.to_string()).collect(),
        refused: node.refused.clone(),
    }
}
