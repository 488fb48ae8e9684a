//! `NodeIndex`: who claims what in a node list — names, addresses, aliases, pod CIDRs — by
//! position in the list, so that "which node has this address" or "whose pod CIDR holds this
//! IP" is a lookup, not a pass over every node. The vetting of a node set (`vet`) and the
//! routing of every dial (`route::RouteTable`) both use it; at 5,000 nodes a pass over every
//! node per claim or per dial cost seconds per node set and milliseconds per dial.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::node::Node;

/// A host as `same_host` compares it: an IP address, or a name without case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostKey {
    Ip(IpAddr),
    Name(String),
}

impl HostKey {
    pub(crate) fn of(host: &str) -> HostKey {
        match host.parse::<IpAddr>() {
            Ok(ip) => HostKey::Ip(ip),
            Err(_) => HostKey::Name(host.to_ascii_lowercase()),
        }
    }
}

/// Who claims what in a node list, by position in the list: names, addresses, aliases and
/// pod CIDRs.
pub(crate) struct NodeIndex {
    /// Positions by exact name (names are unique).
    positions: HashMap<String, usize>,
    /// Positions by name without case, in list order.
    names: HashMap<String, Vec<usize>>,
    addresses: HashMap<HostKey, Vec<usize>>,
    aliases: HashMap<HostKey, Vec<usize>>,
    /// Pod CIDRs by (network truncated to `len`, `len`), for every prefix length `len` in use
    /// up to the CIDR's own: a CIDR X is found under (X, len X) by every CIDR inside it.
    within: HashMap<IpNet, Vec<usize>>,
    /// Pod CIDRs by themselves (truncated).
    exact: HashMap<IpNet, Vec<usize>>,
    /// The prefix lengths in use, per family.
    lengths_v4: Vec<u8>,
    lengths_v6: Vec<u8>,
}

impl NodeIndex {
    pub(crate) fn new<N: AsRef<Node>>(nodes: &[N]) -> NodeIndex {
        let mut c = NodeIndex {
            positions: HashMap::with_capacity(nodes.len()),
            names: HashMap::with_capacity(nodes.len()),
            addresses: HashMap::with_capacity(nodes.len()),
            aliases: HashMap::new(),
            within: HashMap::new(),
            exact: HashMap::new(),
            lengths_v4: Vec::new(),
            lengths_v6: Vec::new(),
        };
        for n in nodes.iter().map(AsRef::as_ref) {
            for cidr in &n.pod_cidrs {
                let lengths = match cidr {
                    IpNet::V4(_) => &mut c.lengths_v4,
                    IpNet::V6(_) => &mut c.lengths_v6,
                };
                if !lengths.contains(&cidr.prefix_len()) {
                    lengths.push(cidr.prefix_len());
                }
            }
        }
        for (i, n) in nodes.iter().map(AsRef::as_ref).enumerate() {
            c.positions.entry(n.name.clone()).or_insert(i);
            // A refused name (`Node::name_refused`) routes nothing.
            if !n.name_refused {
                c.names
                    .entry(n.name.to_ascii_lowercase())
                    .or_default()
                    .push(i);
            }
            c.addresses
                .entry(HostKey::of(&n.address))
                .or_default()
                .push(i);
            for alias in &n.aliases {
                let at = c.aliases.entry(HostKey::of(alias)).or_default();
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
            for cidr in &n.pod_cidrs {
                c.exact.entry(cidr.trunc()).or_default().push(i);
                for len in c.lengths(cidr).to_vec() {
                    if len <= cidr.prefix_len()
                        && let Some(up) = truncate(cidr, len)
                    {
                        c.within.entry(up).or_default().push(i);
                    }
                }
            }
        }
        c
    }

    fn lengths(&self, cidr: &IpNet) -> &[u8] {
        match cidr {
            IpNet::V4(_) => &self.lengths_v4,
            IpNet::V6(_) => &self.lengths_v6,
        }
    }

    /// The position of the node named exactly `name`.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.positions.get(name).copied()
    }

    /// The nodes named `name` in any case, in list order.
    pub(crate) fn named(&self, name: &str) -> &[usize] {
        self.names
            .get(&name.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    /// The nodes with an alias that is `host` (`same_host`), in list order.
    pub(crate) fn with_alias(&self, host: &str) -> &[usize] {
        self.aliases
            .get(&HostKey::of(host))
            .map_or(&[], Vec::as_slice)
    }

    /// The nodes whose address is `host` (`same_host`), in list order.
    pub(crate) fn with_address(&self, host: &str) -> &[usize] {
        self.addresses
            .get(&HostKey::of(host))
            .map_or(&[], Vec::as_slice)
    }

    /// The nodes with a pod CIDR that contains `ip` (each may appear more than once).
    pub(crate) fn owning(&self, ip: IpAddr) -> impl Iterator<Item = usize> + '_ {
        let host = IpNet::from(ip);
        self.lengths(&host)
            .iter()
            .filter_map(move |&len| truncate(&host, len))
            .flat_map(|net| self.exact.get(&net).into_iter().flatten().copied())
    }

    /// The nodes with a pod CIDR that contains `cidr` or lies inside it.
    pub(crate) fn overlapping<'a>(&'a self, cidr: &IpNet) -> impl Iterator<Item = usize> + 'a {
        let cidr = cidr.trunc();
        let inside = self.within.get(&cidr).into_iter().flatten().copied();
        let around = self
            .lengths(&cidr)
            .iter()
            .filter(move |&&len| len < cidr.prefix_len())
            .filter_map(move |&len| truncate(&cidr, len))
            .flat_map(|net| self.exact.get(&net).into_iter().flatten().copied());
        inside.chain(around)
    }
}

/// `cidr`'s network widened to `len` bits (None if `len` is longer than the family allows).
fn truncate(cidr: &IpNet, len: u8) -> Option<IpNet> {
    IpNet::new(cidr.network(), len).ok().map(|n| n.trunc())
}
