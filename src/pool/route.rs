//! Which node a dial goes through. In order, each level deciding alone: the node whose name
//! is the destination host; the node whose address is (IPs compared as addresses, so IPv6
//! spellings agree); the node with that alias; the node whose pod CIDR holds the destination
//! IP; otherwise (a service ClusterIP, say) the ready node with the fewest open channels —
//! never a draining one, since draining nodes are not in the pool.
//!
//! A node's address therefore always wins over another node's alias, and a destination that
//! matches two nodes at the same level is `Ambiguous` (refused), never settled by map order:
//! a node that claims another node's address must not receive that node's traffic.

use std::sync::Arc;

use super::index::NodeIndex;
use crate::destination::Destination;
use crate::node::Node;

/// How a destination maps to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The destination is this node (by name or address).
    Node(String),
    /// The destination is a pod IP in this node's pod CIDR.
    PodOf(String),
    /// No owner: any ready node will do (least loaded).
    AnyReady,
    /// Two or more nodes match at the same level (their names, sorted): refused.
    Ambiguous(Vec<String>),
}

/// The node that owns `dest` (see the module comment), if exactly one does.
pub fn owner<'a, I>(nodes: I, dest: &Destination) -> Option<&'a Node>
where
    I: IntoIterator<Item = &'a Node> + Clone,
{
    let all: Vec<&Node> = nodes.into_iter().collect();
    match classify(&all, dest) {
        Route::Node(n) | Route::PodOf(n) => all.into_iter().find(|x| x.name == n),
        Route::AnyReady | Route::Ambiguous(_) => None,
    }
}

/// Classifies `dest` against `nodes` (`Node`s or `Arc<Node>`s).
pub fn classify<N: AsRef<Node>>(nodes: &[N], dest: &Destination) -> Route {
    let host = dest.host.as_str();
    let ip = dest.ip();
    let levels: [&dyn Fn(&Node) -> bool; 4] = [
        &|n| n.is_named(host),
        &|n| n.has_address(host),
        &|n| n.has_alias(host),
        &|n| ip.is_some_and(|ip| n.owns_pod_ip(ip)),
    ];
    for (level, matches) in levels.iter().enumerate() {
        let mut names: Vec<String> = nodes
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| matches(n))
            .map(|n| n.name.clone())
            .collect();
        match names.len() {
            0 => continue,
            1 => {
                let name = names.remove(0);
                return if level == 3 {
                    Route::PodOf(name)
                } else {
                    Route::Node(name)
                };
            }
            _ => {
                names.sort();
                return Route::Ambiguous(names);
            }
        }
    }
    Route::AnyReady
}

/// The pool's nodes with an index of their claims: what every dial (and the policy check
/// before it) routes against. Built once per node-set change, so a dial looks its
/// destination up instead of passing over every node (and, before this, copying the node
/// list twice); `classify` decides exactly as [`classify`] does.
#[derive(Default)]
pub struct RouteTable {
    nodes: Vec<Arc<Node>>,
    index: Option<NodeIndex>,
}

impl RouteTable {
    /// The table for `nodes`.
    pub fn new(nodes: Vec<Arc<Node>>) -> RouteTable {
        let index = Some(NodeIndex::new(&nodes));
        RouteTable { nodes, index }
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// The node named exactly `name`.
    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        let i = self.index.as_ref()?.position(name)?;
        self.nodes.get(i)
    }

    /// True when `host` is some node's address.
    pub fn has_address(&self, host: &str) -> bool {
        self.index
            .as_ref()
            .is_some_and(|x| !x.with_address(host).is_empty())
    }

    /// Classifies `dest` (see the module comment).
    pub fn classify(&self, dest: &Destination) -> Route {
        let Some(index) = &self.index else {
            return Route::AnyReady;
        };
        let host = dest.host.as_str();
        let ip = dest.ip();
        for level in 0..4 {
            let mut hits: Vec<usize> = match level {
                0 => index.named(host).to_vec(),
                1 => index.with_address(host).to_vec(),
                2 => index.with_alias(host).to_vec(),
                _ => ip.map(|ip| index.owning(ip).collect()).unwrap_or_default(),
            };
            hits.sort_unstable();
            hits.dedup();
            match hits.as_slice() {
                [] => continue,
                [one] => {
                    let name = self.nodes[*one].name.clone();
                    return if level == 3 {
                        Route::PodOf(name)
                    } else {
                        Route::Node(name)
                    };
                }
                many => {
                    let mut names: Vec<String> =
                        many.iter().map(|&i| self.nodes[i].name.clone()).collect();
                    names.sort();
                    return Route::Ambiguous(names);
                }
            }
        }
        Route::AnyReady
    }
}

/// Picks the least-loaded candidate: `(name, ready_not_degraded, open_channels)`; ready
/// beats degraded, then fewer channels, then the name (stable).
pub fn least_loaded(candidates: &[(String, bool, usize)]) -> Option<&str> {
    candidates
        .iter()
        .min_by(|a, b| (!a.1, a.2, &a.0).cmp(&(!b.1, b.2, &b.0)))
        .map(|c| c.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_name_address_pod_cidr_v4_v6() {
        let mut a = Node::parse_spec("a=10.0.0.1").unwrap();
        a.pod_cidrs = vec!["10.244.0.0/24".parse().unwrap()];
        let mut b = Node::parse_spec("b=[fd00::2]:22").unwrap();
        b.pod_cidrs = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:244:1::/64".parse().unwrap(),
        ];
        let nodes = [a, b];
        let pick = |d: &str| classify(&nodes, &d.parse().unwrap());
        assert_eq!(pick("10.0.0.1:10250"), Route::Node("a".into()));
        assert_eq!(pick("[fd00:0::2]:10250"), Route::Node("b".into()));
        assert_eq!(pick("b:10250"), Route::Node("b".into()));
        assert_eq!(pick("10.244.1.9:8080"), Route::PodOf("b".into()));
        assert_eq!(pick("[fd00:244:1::5]:80"), Route::PodOf("b".into()));
        assert_eq!(pick("10.96.0.1:443"), Route::AnyReady);
        assert_eq!(
            owner(&nodes, &"10.244.0.3:1".parse().unwrap()).map(|n| n.name.as_str()),
            Some("a")
        );
    }

    #[test]
    fn an_address_beats_an_alias_and_a_tie_is_ambiguous_in_any_order() {
        let mut a = Node::parse_spec("a=10.0.0.1").unwrap();
        let b = Node::parse_spec("b=10.0.0.2").unwrap();
        let mut c = Node::parse_spec("c=10.0.0.3").unwrap();
        // a claims b's address and a shared name; c claims the same name.
        a.aliases = vec!["10.0.0.2".into(), "shared.example".into()];
        c.aliases = vec!["SHARED.example".into()];
        for order in [
            vec![a.clone(), b.clone(), c.clone()],
            vec![c.clone(), b.clone(), a.clone()],
            vec![b.clone(), a.clone(), c.clone()],
        ] {
            let pick = |d: &str| classify(&order, &d.parse().unwrap());
            assert_eq!(pick("10.0.0.2:10250"), Route::Node("b".into()));
            assert_eq!(
                pick("shared.example:443"),
                Route::Ambiguous(vec!["a".into(), "c".into()])
            );
        }
        a.pod_cidrs = vec!["10.244.0.0/16".parse().unwrap()];
        c.pod_cidrs = vec!["10.244.3.0/24".parse().unwrap()];
        assert_eq!(
            classify(&[a, c], &"10.244.3.9:80".parse().unwrap()),
            Route::Ambiguous(vec!["a".into(), "c".into()])
        );
    }

    #[test]
    fn least_loaded_prefers_ready_then_fewest_channels() {
        let c = vec![
            ("a".to_string(), true, 5),
            ("b".to_string(), true, 2),
            ("c".to_string(), false, 0),
        ];
        assert_eq!(least_loaded(&c), Some("b"));
        let c = vec![("a".to_string(), false, 0), ("b".to_string(), false, 1)];
        assert_eq!(least_loaded(&c), Some("a"));
        assert_eq!(least_loaded(&[]), None);
    }

    /// The indexed table routes exactly as the scan does, on random node sets full of
    /// collisions (names in any case, shared addresses and aliases, nested pod CIDRs, IPv6).
    #[test]
    fn the_route_table_agrees_with_the_scan_on_random_node_sets() {
        fastrand::seed(16);
        let names = ["a", "b", "c", "A", "node-7", "x.example"];
        let hosts = [
            "10.0.0.1",
            "10.0.0.2",
            "fd00::1",
            "FD00::1",
            "a",
            "B",
            "x.example",
            "10.1.2.3",
            "10.1.2.200",
            "node-7",
        ];
        let cidrs = [
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "10.0.0.0/8",
            "fd00::/64",
            "fd00::/56",
            "10.1.3.0/24",
        ];
        let dests = [
            "a:1",
            "A:1",
            "b:1",
            "x.example:1",
            "X.EXAMPLE:1",
            "node-7:1",
            "10.0.0.1:1",
            "10.0.0.2:1",
            "[fd00::1]:1",
            "[fd00:0::1]:1",
            "10.1.2.3:1",
            "10.1.2.200:1",
            "10.1.3.9:1",
            "10.9.9.9:1",
            "[fd00::99]:1",
            "elsewhere:1",
        ];
        for round in 0..2000 {
            let mut pool = names.to_vec();
            fastrand::shuffle(&mut pool);
            let nodes: Vec<Arc<Node>> = pool[..fastrand::usize(0..=pool.len())]
                .iter()
                .map(|name| {
                    let mut n =
                        Node::parse_spec(&format!("{name}={}", hosts[fastrand::usize(..3)]))
                            .unwrap();
                    n.address = hosts[fastrand::usize(..hosts.len())].to_string();
                    n.aliases = (0..fastrand::usize(0..3))
                        .map(|_| hosts[fastrand::usize(..hosts.len())].to_string())
                        .collect();
                    n.pod_cidrs = (0..fastrand::usize(0..3))
                        .map(|_| cidrs[fastrand::usize(..cidrs.len())].parse().unwrap())
                        .collect();
                    Arc::new(n)
                })
                .collect();
            let table = RouteTable::new(nodes.clone());
            for d in dests {
                let dest: Destination = d.parse().unwrap();
                assert_eq!(
                    table.classify(&dest),
                    classify(&nodes, &dest),
                    "round {round}, {d}: {nodes:#?}"
                );
                assert_eq!(
                    table.has_address(&dest.host),
                    nodes.iter().any(|n| n.has_address(&dest.host)),
                    "round {round}, {d}"
                );
            }
            for n in &nodes {
                assert_eq!(table.node(&n.name).map(|x| &x.name), Some(&n.name));
            }
        }
    }
}
