//! Which destinations a dial may reach, checked on every CONNECT (not only at start-up).
//! By default: the nodes' addresses on the kubelet port, pod IPs (the nodes' pod CIDRs) and
//! the service CIDR. Everything else — the node's own loopback (except listed ports),
//! link-local and metadata addresses (169.254.169.254), arbitrary other addresses and DNS
//! names that are not node names — is refused (HTTP 403), so the tunnel cannot be used to
//! wander into the nodes' networks.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::destination::Destination;
use crate::error::ConfigError;
use crate::node::Node;

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
    pub fn check<N: AsRef<Node>>(&self, dest: &Destination, nodes: &[N]) -> Result<(), Denied> {
        let nodes: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
        let ip = dest.ip();
        let explicitly_allowed =
            ip.is_some_and(|ip| self.allow_cidrs.iter().any(|c| c.contains(&ip)));
        if explicitly_allowed {
            return Ok(());
        }
        if let Some(ip) = ip
            && is_link_local(ip)
        {
            return Err(Denied(format!(
                "{dest} is a link-local/metadata address; refused by policy"
            )));
        }
        if let Some(node) = nodes.iter().find(|n| n.matches_host(&dest.host)) {
            if self.node_ports.contains(&dest.port) {
                return Ok(());
            }
            return Err(Denied(format!(
                "{dest} is node {}'s address, but port {} is not an allowed node port (allowed: {:?}; see policy.node_ports)",
                node.name, dest.port, self.node_ports
            )));
        }
        let Some(ip) = ip else {
            return Err(Denied(format!(
                "{dest}: '{}' is not a node name; only node names and IP addresses are dialled",
                dest.host
            )));
        };
        if self.allow_pod_ips && nodes.iter().any(|n| n.owns_pod_ip(ip)) {
            return Ok(());
        }
        if self.service_cidrs.iter().any(|c| c.contains(&ip)) {
            return Ok(());
        }
        if ip.is_loopback() {
            if self.loopback_ports.contains(&dest.port) {
                return Ok(());
            }
            return Err(Denied(format!(
                "{dest} is the node's own loopback; port {} is not in policy.loopback_ports",
                dest.port
            )));
        }
        Err(Denied(format!(
            "{dest} is not a node address, pod IP or service IP; refused by policy (add it to policy.allow_cidrs if it must be reachable)"
        )))
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|m| m.is_link_local())
        }
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
        p.loopback_ports = vec![10248];
        assert!(check(&p, "127.0.0.1:10248").is_ok());
        p.allow_cidrs = vec!["169.254.0.0/16".parse().unwrap()];
        assert!(check(&p, "169.254.169.254:80").is_ok());
    }
}
