//! A node of the cluster as the tunnel sees it: a name, the address its SSH server listens
//! on, and (for routing) its pod CIDRs and other addresses. Parsed from `--node NAME=ADDR[:PORT]`,
//! a TOML list, or Kubernetes Node objects (see `nodes`).

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::destination::{split_host_port, validate_host};
use crate::error::ConfigError;

/// The SSH port used when a node does not name one.
pub const DEFAULT_SSH_PORT: u16 = 22;

/// One node: its tunnel is keyed by `name` and connects to `address:ssh_port`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The Kubernetes node name.
    pub name: String,
    /// IP or DNS name the SSH connection goes to (also what dials to this node address).
    pub address: String,
    /// SSH port on the node.
    #[serde(default = "default_port")]
    pub ssh_port: u16,
    /// Pod CIDRs routed to this node (used by the router of the CONNECT front).
    #[serde(default)]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Other addresses of the node (e.g. its ExternalIP when `address` is the InternalIP):
    /// dials naming one of them go to this node, as dials naming `address` do.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Aliases and pod CIDRs this node claimed that were refused (see `pool::vet`), with why;
    /// shown in `status`. Filled by the pool, never read from a file.
    #[serde(skip)]
    pub refused: Vec<String>,
    /// True when the node's name is refused as a route: it is another node's address, lies in
    /// another node's pod CIDR or a service CIDR, or is a loopback, unspecified or link-local
    /// IP (see `pool::vet`). A dial to that host then goes where the address belongs; the node
    /// is still reached by its address. Filled by the pool, never read from a file.
    #[serde(skip)]
    pub name_refused: bool,
    /// Set when the Node carries the `ssh.kube-ssh-tunnel.io/drain` annotation (its value,
    /// the reason): the pool keeps the node drained in every daemon watching it, until the
    /// annotation goes. Filled by the Node watch, never read from a file.
    #[serde(skip)]
    pub drain: Option<String>,
    /// The host key annotations of the Node (`ssh.kube-ssh-tunnel.io/host-*`, name → value,
    /// see `nodes::host_key_annotations`): checked for this node's own connection only, and
    /// only with `--host-key-source nodes`. Filled by the Node watch, never read from a file.
    #[serde(skip)]
    pub host_keys: std::collections::BTreeMap<String, String>,
}

fn default_port() -> u16 {
    DEFAULT_SSH_PORT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    #[serde(default)]
    nodes: Vec<Node>,
}

impl Node {
    /// Parses `NAME=ADDR[:PORT]`, e.g. `node-1=10.0.0.5`, `node-2=[fd00::5]:2222`.
    pub fn parse_spec(spec: &str) -> Result<Node, ConfigError> {
        let err = |reason: String| ConfigError::InvalidNode {
            node: spec.to_string(),
            reason,
        };
        let (name, addr) = spec
            .split_once('=')
            .ok_or_else(|| err("expected NAME=ADDR[:SSHPORT], e.g. node-1=10.0.0.5:22".into()))?;
        let (address, port) = split_host_port(addr).map_err(err)?;
        let node = Node {
            name: name.to_string(),
            address,
            ssh_port: port.unwrap_or(DEFAULT_SSH_PORT),
            pod_cidrs: Vec::new(),
            aliases: Vec::new(),
            refused: Vec::new(),
            name_refused: false,
            drain: None,
            host_keys: Default::default(),
        };
        node.validate()?;
        Ok(node)
    }

    /// Parses a TOML node list (`[[nodes]] name=… address=… ssh_port=… pod_cidrs=[…]`);
    /// `path` names the file in errors.
    pub fn parse_toml_list(text: &str, path: &Path) -> Result<Vec<Node>, ConfigError> {
        let file: NodeFile = toml::from_str(text).map_err(|e| ConfigError::File {
            what: "node list",
            path: path.to_path_buf(),
            reason: e.message().to_string(),
        })?;
        for n in &file.nodes {
            n.validate()?;
        }
        Ok(file.nodes)
    }

    /// Checks the name, address and port; the error names the node and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::InvalidNode {
            node: self.name.clone(),
            reason,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 253
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !name_ok {
            return Err(err(format!(
                "node name '{}' must be a Kubernetes node name (letters, digits, '-', '.')",
                self.name
            )));
        }
        validate_host(&self.address).map_err(|r| err(format!("invalid address: {r}")))?;
        for a in &self.aliases {
            validate_host(a).map_err(|r| err(format!("invalid alias address '{a}': {r}")))?;
        }
        if self.ssh_port == 0 {
            return Err(err("ssh_port must be between 1 and 65535".into()));
        }
        Ok(())
    }

    /// The address as an IP, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }

    /// True when `ip` is inside one of this node's pod CIDRs.
    pub fn owns_pod_ip(&self, ip: IpAddr) -> bool {
        self.pod_cidrs.iter().any(|c| c.contains(&ip))
    }

    /// True when `host` names this node: its name, its address or an alias (IPs compared as
    /// IPs, so `::1` and `0:0:0:0:0:0:0:1` are the same node). Routing asks the levels one by
    /// one (`is_named`, `has_address`, `has_alias`) so that a node's address always wins over
    /// another node's alias.
    pub fn matches_host(&self, host: &str) -> bool {
        self.is_named(host) || self.has_address(host) || self.has_alias(host)
    }

    /// True when `host` is this node's name, and the name routes (see `name_refused`).
    pub fn is_named(&self, host: &str) -> bool {
        !self.name_refused && host.eq_ignore_ascii_case(&self.name)
    }

    /// True when `host` is this node's (primary) address.
    pub fn has_address(&self, host: &str) -> bool {
        same_host(host, &self.address)
    }

    /// True when `host` is one of this node's aliases.
    pub fn has_alias(&self, host: &str) -> bool {
        self.aliases.iter().any(|a| same_host(host, a))
    }
}

/// Two hosts are the same: IPs compared as addresses, names case-insensitively.
pub fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

impl Node {
    /// The host a channel through this node asks sshd for when a dial names `host`: a name
    /// of this node (its node name, or a DNS-name alias) becomes its address, so the node
    /// need not resolve its own name and PermitOpen can list addresses only. IP literals go
    /// in canonical form (RFC 5952 for IPv6: `fd00::5`, not `FD00:0::5`), which is how
    /// PermitOpen lines are written and compared (as strings) by sshd. Other hosts pass
    /// unchanged.
    pub fn channel_host<'a>(&'a self, host: &'a str) -> std::borrow::Cow<'a, str> {
        let names_this_node = host.parse::<IpAddr>().is_err()
            && (host.eq_ignore_ascii_case(&self.name)
                || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(host)));
        let chosen = if names_this_node { &self.address } else { host };
        match chosen.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() != chosen => std::borrow::Cow::Owned(ip.to_string()),
            _ => std::borrow::Cow::Borrowed(chosen),
        }
    }
}

impl AsRef<Node> for Node {
    fn as_ref(&self) -> &Node {
        self
    }
}

/// Rejects node lists in which two nodes share a name.
pub fn check_unique(nodes: &[Node]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        if !seen.insert(n.name.as_str()) {
            return Err(ConfigError::InvalidNode {
                node: n.name.clone(),
                reason: "this node name is given twice; node names must be unique".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let n = Node::parse_spec("node-1=10.0.0.5").unwrap();
        assert_eq!((n.address.as_str(), n.ssh_port), ("10.0.0.5", 22));
        let n = Node::parse_spec("n2=[fd00::5]:2222").unwrap();
        assert_eq!((n.address.as_str(), n.ssh_port), ("fd00::5", 2222));
        assert!(n.matches_host("fd00:0:0:0:0:0:0:5"));
        let n = Node::parse_spec("n3=::1").unwrap();
        assert_eq!(n.address, "::1");
    }

    #[test]
    fn a_dial_by_node_name_asks_for_the_address() {
        let mut n = Node::parse_spec("node-1=10.0.0.5").unwrap();
        n.aliases = vec!["node-1.example.internal".into(), "203.0.113.5".into()];
        assert_eq!(n.channel_host("node-1"), "10.0.0.5");
        assert_eq!(n.channel_host("NODE-1.example.internal"), "10.0.0.5");
        assert_eq!(n.channel_host("203.0.113.5"), "203.0.113.5");
        assert_eq!(n.channel_host("10.96.0.10"), "10.96.0.10");
        assert_eq!(n.channel_host("node-2"), "node-2");
        // IPv6 goes to sshd in canonical form, as PermitOpen lines are written.
        assert_eq!(n.channel_host("FD00:0:0::5"), "fd00::5");
        assert_eq!(n.channel_host("fd00:0:0:0:0:0:0:1"), "fd00::1");
        let v6 = Node::parse_spec("v6=[fd00:0::9]").unwrap();
        assert_eq!(v6.channel_host("v6"), "fd00::9");
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in [
            "node",
            "=1.2.3.4",
            "n=",
            "n=1.2.3.4:0",
            "n=999.1.1.1",
            "n=bad host",
            "n_1=1.2.3.4",
        ] {
            assert!(Node::parse_spec(bad).is_err(), "{bad} should fail");
        }
    }
}
