//! Which destinations a dial may reach, checked on every CONNECT (not only at start-up).
//! By default: the nodes' addresses on the kubelet port, pod IPs (the nodes' pod CIDRs) and
//! the service CIDR. Everything else — the node's own loopback (except listed ports),
//! link-local and metadata addresses (169.254.169.254), arbitrary other addresses and DNS
//! names that are not node names — is refused (HTTP 403), so the tunnel cannot be used to
//! wander into the nodes' networks.

use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use crate::destination::Destination;
use crate::error::ConfigError;
use crate::node::Node;
use crate::pool::route::{self, RouteTable};
use crate::special::{is_link_local, is_loopback};

/// The destination policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Ports allowed on node addresses (the kubelet's).
    pub node_ports: Vec<u16>,
    /// Service CIDRs (ClusterIPs): any port.
    pub service_cidrs: Vec<IpNet>,
    /// Whether pod IPs (inside a node's pod CIDRs) are allowed, any port.
    pub allow_pod_ips: bool,
    /// Further CIDRs to allow (any port), e.g. a node network for webhooks on host ports.
    pub allow_cidrs: Vec<IpNet>,
    /// Ports allowed on a node's own loopback (127.0.0.0/8, ::1), e.g. 10248 (kubelet healthz).
    pub loopback_ports: Vec<u16>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            node_ports: vec![10250],
            service_cidrs: Vec::new(),
            allow_pod_ips: true,
            allow_cidrs: Vec::new(),
            loopback_ports: Vec::new(),
        }
    }
}

/// Why a destination was refused (the body of the 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl Policy {
    /// Checks the policy's own consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_ports.contains(&0) || self.loopback_ports.contains(&0) {
            return Err(ConfigError::Invalid(
                "policy: port 0 is not a port; list ports from 1 to 65535".into(),
            ));
        }
        Ok(())
    }

    /// Allows or refuses `dest`, given the current nodes (`Node`s or `Arc<Node>`s).
    ///
    /// Order matters: an explicit `allow_cidrs` entry first; then special addresses
    /// (link-local, unspecified, loopback), so that no node, pod CIDR or service CIDR can open
    /// them; then which node the destination names (`pool::route`, ambiguity refused); then
    /// pod and service CIDRs.
    pub fn check<N: AsRef<Node>>(&self, dest: &Destination, nodes: &[N]) -> Result<(), Denied> {
        let nodes: Vec<Arc<Node>> = nodes.iter().map(|n| Arc::new(n.as_ref().clone())).collect();
        self.check_routes(dest, &RouteTable::new(nodes))
    }

    /// `check` against the pool's route table (what the CONNECT front calls on every dial).
    pub fn check_routes(&self, dest: &Destination, routes: &RouteTable) -> Result<(), Denied> {
        let ip = dest.ip();
        let explicitly_allowed =
            ip.is_some_and(|ip| self.allow_cidrs.iter().any(|c| c.contains(&ip)));
        if explicitly_allowed {
            return Ok(());
        }
        let route = routes.classify(dest);
        if let Some(ip) = ip {
            if is_link_local(ip) {
                return Err(Denied(format!(
                    "{dest} is a link-local/metadata address; refused by policy"
                )));
            }
            if ip.is_unspecified() {
                return Err(Denied(format!(
                    "{dest} is the unspecified address; refused by policy"
                )));
            }
            // A node's own loopback: only the listed ports. A node whose address itself is
            // loopback (a lab, or the tests) is dialled on its node ports like any node, its
            // loopback pod CIDR is its own, and a service CIDR configured wholly inside
            // loopback is a service CIDR.
            let is_a_node_address =
                matches!(&route, route::Route::Node(_)) && routes.has_address(&dest.host);
            if is_loopback(ip) && !is_a_node_address {
                let node_is_on_loopback = match &route {
                    route::Route::PodOf(name) => routes
                        .node(name)
                        .and_then(|n| n.ip())
                        .is_some_and(is_loopback),
                    _ => false,
                };
                // A service CIDR wholly inside loopback was configured for loopback (a lab);
                // a wide one (0.0.0.0/0) does not open the node's loopback.
                let loopback_service = self.service_cidrs.iter().any(|c| {
                    c.contains(&ip) && is_loopback(c.network()) && is_loopback(c.broadcast())
                });
                if self.loopback_ports.contains(&dest.port) || loopback_service {
                    return Ok(());
                }
                if !node_is_on_loopback {
                    return Err(Denied(format!(
                        "{dest} is the node's own loopback; port {} is not in policy.loopback_ports",
                        dest.port
                    )));
                }
            }
        }
        match route {
            route::Route::Ambiguous(names) => {
                return Err(Denied(format!(
                    "{dest} matches more than one node ({}); refused: a destination must name one node",
                    names.join(", ")
                )));
            }
            route::Route::Node(name) => {
                if self.node_ports.contains(&dest.port) {
                    return Ok(());
                }
                return Err(Denied(format!(
                    "{dest} is node {name}'s address, but port {} is not an allowed node port (allowed: {:?}; see policy.node_ports)",
                    dest.port, self.node_ports
                )));
            }
            route::Route::PodOf(_) if self.allow_pod_ips => return Ok(()),
            _ => {}
        }
        let Some(ip) = ip else {
            return Err(Denied(format!(
                "{dest}: '{}' is not a node name; only node names and IP addresses are dialled",
                dest.host
            )));
        };
        if self.service_cidrs.iter().any(|c| c.contains(&ip)) {
            return Ok(());
        }
        Err(Denied(format!(
            "{dest} is not a node address, pod IP or service IP; refused by policy (add it to policy.allow_cidrs if it must be reachable)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<Node> {
        let mut n1 = Node::parse_spec("n1=10.0.0.1").unwrap();
        n1.pod_cidrs = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap(),
        ];
        let n2 = Node::parse_spec("n2=[fd00::2]").unwrap();
        vec![n1, n2]
    }

    fn check(p: &Policy, d: &str) -> Result<(), Denied> {
        p.check(&d.parse().unwrap(), &nodes())
    }

    #[test]
    fn default_policy() {
        let mut p = Policy {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Policy::default()
        };
        assert!(check(&p, "10.0.0.1:10250").is_ok());
        assert!(check(&p, "n1:10250").is_ok());
        assert!(check(&p, "[fd00::2]:10250").is_ok());
        assert!(check(&p, "10.0.0.1:22").is_err());
        assert!(check(&p, "10.244.1.7:8080").is_ok());
        assert!(check(&p, "[fd00:244:1::9]:80").is_ok());
        assert!(check(&p, "10.96.0.1:443").is_ok());
        assert!(
            check(&p, "169.254.169.254:80")
                .unwrap_err()
                .0
                .contains("link-local")
        );
        assert!(check(&p, "[fe80::1]:80").is_err());
        assert!(
            check(&p, "127.0.0.1:10248")
                .unwrap_err()
                .0
                .contains("loopback")
        );
        assert!(check(&p, "[::1]:10250").is_err());
        assert!(check(&p, "8.8.8.8:53").is_err());
        assert!(check(&p, "example.com:443").is_err());
        assert!(
            check(&p, "0.0.0.0:10250")
                .unwrap_err()
                .0
                .contains("unspecified")
        );
        assert!(check(&p, "[::ffff:127.0.0.1]:22").is_err());
        p.loopback_ports = vec![10248];
        assert!(check(&p, "127.0.0.1:10248").is_ok());
        p.allow_cidrs = vec!["169.254.0.0/16".parse().unwrap()];
        assert!(check(&p, "169.254.169.254:80").is_ok());
    }

    #[test]
    fn special_addresses_are_decided_before_any_node_pod_or_service_cidr() {
        // A rogue pod CIDR (and service CIDR) covering everything opens nothing special.
        let mut rogue = Node::parse_spec("rogue=10.0.0.9").unwrap();
        rogue.pod_cidrs = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let p = Policy {
            service_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
            ..Policy::default()
        };
        let nodes = [rogue];
        let check = |d: &str| p.check(&d.parse().unwrap(), &nodes);
        assert!(check("127.0.0.1:22").unwrap_err().0.contains("loopback"));
        assert!(check("[::1]:22").unwrap_err().0.contains("loopback"));
        assert!(check("169.254.169.254:80").is_err());
        assert!(check("[fe80::1]:80").is_err());
        assert!(check("0.0.0.0:80").is_err());
        // A node that lives on loopback (a lab, the tests) is dialled on its node port, and
        // its own loopback pod CIDR is its own.
        let mut lab = Node::parse_spec("lab=127.0.0.5").unwrap();
        lab.pod_cidrs = vec!["127.1.0.0/24".parse().unwrap()];
        let lab = [lab];
        let p = Policy::default();
        assert!(p.check(&"127.0.0.5:10250".parse().unwrap(), &lab).is_ok());
        assert!(p.check(&"127.0.0.5:22".parse().unwrap(), &lab).is_err());
        assert!(p.check(&"127.1.0.9:8080".parse().unwrap(), &lab).is_ok());
        assert!(p.check(&"127.0.0.1:22".parse().unwrap(), &lab).is_err());
    }

    #[test]
    fn a_destination_two_nodes_claim_is_refused_naming_both() {
        let mut a = Node::parse_spec("a=10.0.0.1").unwrap();
        let mut b = Node::parse_spec("b=10.0.0.2").unwrap();
        a.aliases = vec!["10.0.0.50".into()];
        b.aliases = vec!["10.0.0.50".into()];
        let p = Policy::default();
        let why = p
            .check(&"10.0.0.50:10250".parse().unwrap(), &[a, b])
            .unwrap_err()
            .0;
        assert!(why.contains("a, b"), "{why}");
    }
}
