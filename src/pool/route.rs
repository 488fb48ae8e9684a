//! Which node a dial goes through. In order: the node whose name or address is the
//! destination host (IPs compared as addresses, so IPv6 spellings agree); the node whose pod
//! CIDR holds the destination IP; otherwise (a service ClusterIP, say) the ready node with the
//! fewest open channels — never a draining one, since draining nodes are not in the pool.

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
}

/// The node that owns `dest` (by name/address, then pod CIDR), if any.
pub fn owner<'a, I>(nodes: I, dest: &Destination) -> Option<&'a Node>
where
    I: IntoIterator<Item = &'a Node> + Clone,
{
    if let Some(n) = nodes
        .clone()
        .into_iter()
        .find(|n| n.matches_host(&dest.host))
    {
        return Some(n);
    }
    let ip = dest.ip()?;
    nodes.into_iter().find(|n| n.owns_pod_ip(ip))
}

/// Classifies `dest` against `nodes` (`Node`s or `Arc<Node>`s).
pub fn classify<N: AsRef<Node>>(nodes: &[N], dest: &Destination) -> Route {
    let mut nodes = nodes.iter().map(AsRef::as_ref);
    if let Some(n) = nodes.clone().find(|n| n.matches_host(&dest.host)) {
        return Route::Node(n.name.clone());
    }
    if let Some(ip) = dest.ip()
        && let Some(n) = nodes.find(|n| n.owns_pod_ip(ip))
    {
        return Route::PodOf(n.name.clone());
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
