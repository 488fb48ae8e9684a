//! `NodeSetDiff`: what a new node set changes, computed without touching the pool. Every node
//! source (a static list, a node file, the Kubernetes watch) produces whole node sets; this
//! pure function says which nodes to add, remove, replace (new address or SSH port: a new
//! connection, the old one drains) or refresh in place (aliases, pod CIDRs, port), and what
//! happens to drained nodes: a drain belongs to the node's name and sticks while the source
//! has that name, whatever its entry or other nodes do. `Pool::update` applies the result.

use std::collections::HashMap;
use std::sync::Arc;

use crate::node::Node;

/// The changes that take the pool from its current node set to a desired one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeSetDiff {
    /// New nodes: a supervisor each.
    pub add: Vec<Node>,
    /// Nodes the set no longer has: they drain and go.
    pub remove: Vec<String>,
    /// Nodes whose address or SSH port changed: a new connection; the old one drains.
    pub replace: Vec<Node>,
    /// Nodes whose other fields changed (aliases, pod CIDRs): same connection, new entry.
    pub refresh: Vec<Node>,
    /// Drained nodes whose entry in the source changed: they stay drained; the drain keeps
    /// the new entry (what `reconnect` brings back).
    pub drained_entry: Vec<Node>,
    /// Nodes the pool has that are drained now (a drain annotation appeared): their
    /// connection drains and they stay out.
    pub drain: Vec<String>,
    /// Drained nodes the source no longer has: forgotten (their metric series go too).
    pub forget_drained: Vec<String>,
}

impl NodeSetDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == NodeSetDiff::default()
    }
}

/// The changes from `current` (the pool's nodes, by name) to `desired`, given the drained
/// nodes (by name, as their source last gave them). A drained node stays out while the source
/// has its name, whatever its entry; it is forgotten once the source drops it. A changed entry
/// is kept for `reconnect` (`refused` claims are not part of the comparison, since what the
/// vetting refuses may change with other nodes). Every list is sorted by name.
pub fn diff(
    current: &HashMap<String, Arc<Node>>,
    drained: &HashMap<String, Node>,
    desired: &[Node],
) -> NodeSetDiff {
    let wanted: HashMap<&str, &Node> = desired.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut d = NodeSetDiff::default();
    let mut still_drained = Vec::new();
    for (name, node) in drained {
        match wanted.get(name.as_str()) {
            Some(w) => {
                still_drained.push(name.as_str());
                if !same_entry(w, node) {
                    d.drained_entry.push((*w).clone());
                }
            }
            None => d.forget_drained.push(name.clone()),
        }
    }
    for name in current.keys() {
        if !wanted.contains_key(name.as_str()) {
            d.remove.push(name.clone());
        } else if still_drained.contains(&name.as_str()) {
            d.drain.push(name.clone());
        }
    }
    for node in desired {
        if still_drained.contains(&node.name.as_str()) {
            continue;
        }
        match current.get(&node.name) {
            None => d.add.push(node.clone()),
            Some(old) if old.address != node.address || old.ssh_port != node.ssh_port => {
                d.replace.push(node.clone())
            }
            Some(old) if **old != *node => d.refresh.push(node.clone()),
            Some(_) => {}
        }
    }
    d.add.sort_by(|a, b| a.name.cmp(&b.name));
    d.remove.sort();
    d.replace.sort_by(|a, b| a.name.cmp(&b.name));
    d.refresh.sort_by(|a, b| a.name.cmp(&b.name));
    d.drained_entry.sort_by(|a, b| a.name.cmp(&b.name));
    d.drain.sort();
    d.forget_drained.sort();
    d
}

/// The same entry as the source gave it (refusals aside).
fn same_entry(a: &Node, b: &Node) -> bool {
    let bare = |n: &Node| Node {
        refused: Vec::new(),
        name_refused: false,
        ..n.clone()
    };
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(spec: &str) -> Node {
        Node::parse_spec(spec).unwrap()
    }

    fn with_cidr(spec: &str, cidr: &str) -> Node {
        let mut n = node(spec);
        n.pod_cidrs = vec![cidr.parse().unwrap()];
        n
    }

    fn current(nodes: &[Node]) -> HashMap<String, Arc<Node>> {
        nodes
            .iter()
            .map(|n| (n.name.clone(), Arc::new(n.clone())))
            .collect()
    }

    fn drained(nodes: &[Node]) -> HashMap<String, Node> {
        nodes.iter().map(|n| (n.name.clone(), n.clone())).collect()
    }

    fn names(nodes: &[Node]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// One row of the table: the pool now, the drained nodes, the new set, and the expected
    /// (add, remove, replace, refresh, drained_entry, forget_drained, drain) by name.
    struct Row {
        what: &'static str,
        current: Vec<Node>,
        drained: Vec<Node>,
        desired: Vec<Node>,
        expect: [&'static [&'static str]; 7],
    }

    #[test]
    fn node_set_diff_table() {
        let a = node("a=192.0.2.1");
        let b = node("b=192.0.2.2");
        let rows = vec![
            Row {
                what: "empty to empty",
                current: vec![],
                drained: vec![],
                desired: vec![],
                expect: [&[], &[], &[], &[], &[], &[], &[]],
            },
            Row {
                what: "first set: everything is added",
                current: vec![],
                drained: vec![],
                desired: vec![b.clone(), a.clone()],
                expect: [&["a", "b"], &[], &[], &[], &[], &[], &[]],
            },
            Row {
                what: "the same set again changes nothing",
                current: vec![a.clone(), b.clone()],
                drained: vec![],
                desired: vec![a.clone(), b.clone()],
                expect: [&[], &[], &[], &[], &[], &[], &[]],
            },
            Row {
                what: "a node the set no longer has is removed",
                current: vec![a.clone(), b.clone()],
                drained: vec![],
                desired: vec![a.clone()],
                expect: [&[], &["b"], &[], &[], &[], &[], &[]],
            },
            Row {
                what: "a new address replaces the connection",
                current: vec![a.clone()],
                drained: vec![],
                desired: vec![node("a=192.0.2.9")],
                expect: [&[], &[], &["a"], &[], &[], &[], &[]],
            },
            Row {
                what: "a new SSH port replaces the connection",
                current: vec![a.clone()],
                drained: vec![],
                desired: vec![node("a=192.0.2.1:2222")],
                expect: [&[], &[], &["a"], &[], &[], &[], &[]],
            },
            Row {
                what: "a new pod CIDR refreshes the entry on the same connection",
                current: vec![a.clone()],
                drained: vec![],
                desired: vec![with_cidr("a=192.0.2.1", "10.244.1.0/24")],
                expect: [&[], &[], &[], &["a"], &[], &[], &[]],
            },
            Row {
                what: "a drained node given again unchanged stays out",
                current: vec![b.clone()],
                drained: vec![a.clone()],
                desired: vec![a.clone(), b.clone()],
                expect: [&[], &[], &[], &[], &[], &[], &[]],
            },
            Row {
                what: "a drained node whose address changed stays drained, with the new entry",
                current: vec![],
                drained: vec![a.clone()],
                desired: vec![node("a=192.0.2.9")],
                expect: [&[], &[], &[], &[], &["a"], &[], &[]],
            },
            Row {
                what: "a drained node whose pod CIDR changed stays drained too",
                current: vec![],
                drained: vec![a.clone()],
                desired: vec![with_cidr("a=192.0.2.1", "10.244.1.0/24")],
                expect: [&[], &[], &[], &[], &["a"], &[], &[]],
            },
            Row {
                what: "another node's change leaves a drained node drained",
                current: vec![b.clone()],
                drained: vec![a.clone()],
                desired: vec![a.clone(), with_cidr("b=192.0.2.2", "10.244.2.0/24")],
                expect: [&[], &[], &[], &["b"], &[], &[], &[]],
            },
            Row {
                what: "a node the pool has that is drained now: its connection drains",
                current: vec![a.clone(), b.clone()],
                drained: vec![a.clone()],
                desired: vec![a.clone(), b.clone()],
                expect: [&[], &[], &[], &[], &[], &[], &["a"]],
            },
            Row {
                what: "a drained node the source dropped is forgotten",
                current: vec![b.clone()],
                drained: vec![a.clone()],
                desired: vec![b.clone()],
                expect: [&[], &[], &[], &[], &[], &["a"], &[]],
            },
            Row {
                what: "everything at once, sorted by name",
                current: vec![node("d=192.0.2.4"), node("c=192.0.2.3"), b.clone()],
                drained: vec![a.clone()],
                desired: vec![node("e=192.0.2.5"), node("c=192.0.2.33"), b.clone()],
                expect: [&["e"], &["d"], &["c"], &[], &[], &["a"], &[]],
            },
        ];
        for row in rows {
            let d = diff(&current(&row.current), &drained(&row.drained), &row.desired);
            let got: [Vec<&str>; 7] = [
                names(&d.add),
                d.remove.iter().map(String::as_str).collect(),
                names(&d.replace),
                names(&d.refresh),
                names(&d.drained_entry),
                d.forget_drained.iter().map(String::as_str).collect(),
                d.drain.iter().map(String::as_str).collect(),
            ];
            let want: [Vec<&str>; 7] = row.expect.map(|v| v.to_vec());
            assert_eq!(got, want, "{}", row.what);
            assert_eq!(d.is_empty(), want.iter().all(Vec::is_empty), "{}", row.what);
        }
    }

    #[test]
    fn refused_claims_do_not_make_a_drained_entry_differ() {
        let a = node("a=192.0.2.1");
        let mut refused = a.clone();
        refused.refused = vec!["alias 10.0.0.1: another node's address".into()];
        let d = diff(&HashMap::new(), &drained(&[a]), &[refused]);
        assert!(d.is_empty(), "{d:?}");
    }
}
