//! `DrainRecord`: a drain is a property of a node's *name* in the pool, not of a connection
//! (slot). It exists so that a drain sticks: a replacement of the node's connection, another
//! node's change of the node set, or an `update` racing the `drain` cannot bring the node back.
//! Only `reconnect NODE`, the node leaving its source, or (for a drain that came from the
//! Node's annotation) the annotation's removal end it.

use std::time::{Instant, SystemTime};

use crate::node::Node;

/// Who drained a node when the drain came from a Node annotation (`drained_by`).
pub const BY_ANNOTATION: &str = "annotation";

/// One drained node: its entry as the source last gave it, and who drained it when.
#[derive(Debug, Clone)]
pub struct DrainRecord {
    /// The node as its source last gave it (what `reconnect` brings back).
    pub node: Node,
    /// Who drained it: `admin socket (uid 0)`, `admin API over TCP (127.0.0.1:…)`,
    /// `annotation`, `library`.
    pub by: String,
    /// Why, when the drain says (an annotation's value).
    pub reason: Option<String>,
    /// When (wall clock, for display).
    pub at: SystemTime,
    /// When (monotonic, for `for_s`).
    pub at_instant: Instant,
}

impl DrainRecord {
    /// A drain of `node` by `by`, now.
    pub fn new(node: Node, by: &str, reason: Option<String>) -> DrainRecord {
        DrainRecord {
            node,
            by: by.to_string(),
            reason,
            at: SystemTime::now(),
            at_instant: Instant::now(),
        }
    }

    /// True when the drain came from the Node's annotation (removing it undrains).
    pub fn by_annotation(&self) -> bool {
        self.by == BY_ANNOTATION
    }

    /// The `reason` shown in `status` for the drained node.
    pub fn describe(&self) -> String {
        let why = self
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        format!(
            "drained by {}{why}; `kube-ssh-tunnel reconnect {}` brings it back",
            self.by, self.node.name
        )
    }

    /// True when a dial to `host` names this node (its name, address or an alias).
    pub fn claims(&self, host: &str) -> bool {
        let n = &self.node;
        (!n.name_refused && n.name.eq_ignore_ascii_case(host))
            || n.address.eq_ignore_ascii_case(host)
            || n.aliases.iter().any(|a| a.eq_ignore_ascii_case(host))
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| n.owns_pod_ip(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_claims_the_nodes_name_address_aliases_and_pod_ips() {
        let mut n = Node::parse_spec("n1=10.0.0.5").unwrap();
        n.aliases = vec!["192.0.2.5".into()];
        n.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
        let d = DrainRecord::new(n, "test", None);
        for host in ["n1", "N1", "10.0.0.5", "192.0.2.5", "10.244.1.17"] {
            assert!(d.claims(host), "{host}");
        }
        for host in ["n2", "10.0.0.6", "10.244.2.17", "not-an-ip"] {
            assert!(!d.claims(host), "{host}");
        }
    }
}
