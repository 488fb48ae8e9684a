//! Which node a dial goes through. In order, each level deciding alone: the node whose name
//! is the destination host; the node whose address is (IPs compared as addresses, so IPv6
//! spellings agree); the node with that alias; the node whose pod CIDR holds the destination
//! IP; otherwise (a service ClusterIP, say) the ready node with the fewest open channels —
//! never a draining one, since draining nodes are not in the pool.
//!
//! A node's address therefore always wins over another node's alias, and a destination that
//! matches two nodes at the same level is `Ambiguous` (refused), never settled by map order:
//! a node that claims another node's address must not receive that node's traffic.

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
}
