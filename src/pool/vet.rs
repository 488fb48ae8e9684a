//! What a node may claim. Aliases and pod CIDRs come from Node objects that each node's own
//! kubelet can write (a stolen kubelet credential can add any address to its Node's status),
//! so before a node set is used for routing and policy, each node's claims are checked against
//! the others and against addresses that must never be routed by claim:
//!
//! - an **alias** is refused when it is another node's name or address, lies in a service
//!   CIDR or in any node's pod CIDR, or is loopback, unspecified or link-local;
//! - a **name** is refused as a route (the node stays, reached by its address) when it is
//!   another node's address, lies in a service CIDR or in another node's pod CIDR, or is a
//!   loopback, unspecified or link-local IP: Kubernetes allows a node named `10.0.0.6`, and
//!   routing looks names up first, so such a name would otherwise take the traffic of the
//!   node whose address it is;
//! - a **pod CIDR** is refused when it is special-purpose (loopback, unspecified, link-local,
//!   multicast — unless the node's own address is in the same range, as in a lab), shorter
//!   than /8 (IPv4) or /32 (IPv6), or overlaps another node's (refused on both).
//!
//! A refusal is kept on the node (`Node::refused`, shown in `status`) and logged once, naming
//! both nodes where there are two. What is left can still be ambiguous (two nodes with the
//! same alias); routing refuses that per destination (`pool::route`).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::index::NodeIndex;
use crate::node::{Node, same_host};
use crate::special::{is_link_local, is_loopback};

/// Checks every node's address, aliases and pod CIDRs. What is refused is removed and the
/// reason recorded on the node (`Node::refused`); a node whose **address** is refused is
/// removed from the set altogether and returned with why. `service_cidrs` are the cluster's
/// service ranges; `earlier` gives a node as the pool knows it now (None at start), so that in
/// a dispute the node that held a claim first keeps it. In passes, so that a claim refused in
/// one pass cannot make another node's good claim look bad in the next (a node claiming
/// 0.0.0.0/0 must not make every other pod CIDR "overlap"). Each pass looks claims up in an
/// index (`pool::index`), not in every other node: O(N) for N nodes, where comparing each node
/// with every other took 1.5 s per node set at 5,000 nodes.
pub fn vet(
    nodes: &mut Vec<Node>,
    service_cidrs: &[IpNet],
    earlier: impl Fn(&str) -> Option<Arc<Node>>,
) -> Vec<(String, String)> {
    // 1. The shape of each pod CIDR.
    for node in nodes.iter_mut() {
        node.refused.clear();
        node.name_refused = false;
        let own_ip = node.ip();
        let mut kept = Vec::new();
        for cidr in std::mem::take(&mut node.pod_cidrs) {
            match cidr_shape_refusal(&cidr, own_ip) {
                Some(why) => node.refused.push(format!("pod CIDR {cidr}: {why}")),
                None => kept.push(cidr),
            }
        }
        node.pod_cidrs = kept;
    }
    let sane: Vec<Node> = nodes.to_vec();
    let sane_claims = NodeIndex::new(&sane);
    // 2. Addresses: never special, a service IP or another node's pod IP; an address two
    //    nodes give stays with the node that had it (routing refuses it if neither did).
    let mut dropped = Vec::new();
    let mut index = 0;
    nodes.retain(|node| {
        let me = index;
        index += 1;
        let why = address_refusal(me, node, &sane, &sane_claims, service_cidrs, &earlier);
        if let Some(why) = &why {
            dropped.push((node.name.clone(), why.clone()));
        }
        why.is_none()
    });
    // 3. Overlapping pod CIDRs: the node that had the range keeps it; if neither (or both)
    //    did, both lose it.
    let had = |name: &str, cidr: &IpNet| {
        earlier(name).is_some_and(|n| {
            n.pod_cidrs
                .iter()
                .any(|c| c.contains(cidr) || cidr.contains(c))
        })
    };
    let placed: Vec<Node> = nodes.to_vec();
    let placed_claims = NodeIndex::new(&placed);
    for (me, node) in nodes.iter_mut().enumerate() {
        let mut kept = Vec::new();
        for cidr in std::mem::take(&mut node.pod_cidrs) {
            let overlap = placed_claims
                .overlapping(&cidr)
                .filter(|&o| o != me)
                .min()
                .map(|o| &placed[o]);
            match overlap {
                // The node keeps it only if it had the range and the other did not.
                Some(o) if !had(&node.name, &cidr) || had(&o.name, &cidr) => node.refused.push(
                    format!("pod CIDR {cidr}: it overlaps node {}'s pod CIDR", o.name),
                ),
                _ => kept.push(cidr),
            }
        }
        node.pod_cidrs = kept;
    }
    // 4. Names, against every other node's address, every pod CIDR of a sane shape, and (for
    //    a name that is an IP) every other node's alias. Decided before the aliases: an alias
    //    that is a refused name stays with the node that has it as an address.
    let name_refusals: Vec<Option<String>> = nodes
        .iter()
        .map(|node| {
            let me = sane_claims.position(&node.name);
            name_refusal(&node.name, me, &sane, &sane_claims, service_cidrs)
        })
        .collect();
    let refused_names: std::collections::HashSet<String> = nodes
        .iter()
        .zip(&name_refusals)
        .filter(|(_, why)| why.is_some())
        .map(|(n, _)| n.name.clone())
        .collect();
    // 5. Aliases, against every node and every pod CIDR of a sane shape (also those lost to
    //    an overlap: a node must not take over a range by disputing it first).
    for (node, name_why) in nodes.iter_mut().zip(name_refusals) {
        let me = sane_claims.position(&node.name);
        let mut kept = Vec::new();
        for alias in std::mem::take(&mut node.aliases) {
            match alias_refusal(
                &alias,
                me,
                &sane,
                &sane_claims,
                service_cidrs,
                &refused_names,
            ) {
                Some(why) => node.refused.push(format!("alias {alias}: {why}")),
                None => kept.push(alias),
            }
        }
        node.aliases = kept;
        if let Some(why) = name_why {
            node.refused
                .push(format!("name {}: {why}; it does not route", node.name));
            node.name_refused = true;
        }
    }
    dropped
}

/// Why the name `name` of the node at position `me` in `all` cannot route, if it cannot.
fn name_refusal(
    name: &str,
    me: Option<usize>,
    all: &[Node],
    claims: &NodeIndex,
    service_cidrs: &[IpNet],
) -> Option<String> {
    if let Some(&o) = claims.with_address(name).iter().find(|&&o| Some(o) != me) {
        return Some(format!("it is node {}'s address", all[o].name));
    }
    let ip: IpAddr = name.parse().ok()?;
    // An IP is an address claim first: a name that is another node's alias (its ExternalIP,
    // say) leaves the IP to that node. (A host name the other way round: the alias loses.)
    if let Some(&o) = claims.with_alias(name).iter().find(|&&o| Some(o) != me) {
        return Some(format!("it is node {}'s alias", all[o].name));
    }
    if is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) {
        return Some("it is a loopback, unspecified or link-local address".into());
    }
    if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
        return Some(format!("it lies in the service CIDR {c}"));
    }
    if let Some(o) = claims.owning(ip).filter(|&o| Some(o) != me).min() {
        return Some(format!("it lies in node {}'s pod CIDR", all[o].name));
    }
    None
}

/// Why a node's address cannot be used, if it cannot. `me` is its position in `all`.
fn address_refusal(
    me: usize,
    node: &Node,
    all: &[Node],
    claims: &NodeIndex,
    service_cidrs: &[IpNet],
    earlier: &impl Fn(&str) -> Option<Arc<Node>>,
) -> Option<String> {
    if let Some(ip) = node.ip() {
        if ip.is_unspecified() || is_link_local(ip) || ip.is_multicast() {
            return Some(format!(
                "its address {ip} is unspecified, link-local or multicast"
            ));
        }
        if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
            return Some(format!("its address {ip} lies in the service CIDR {c}"));
        }
        if let Some(o) = claims.owning(ip).filter(|&o| o != me).min() {
            return Some(format!(
                "its address {ip} lies in node {}'s pod CIDR",
                all[o].name
            ));
        }
    }
    // The same address as another node: the one that had it keeps it.
    let had_it = |n: &Node| earlier(&n.name).is_some_and(|e| same_host(&e.address, &n.address));
    let others = claims.with_address(&node.address);
    if others.iter().any(|&o| o != me)
        && !had_it(node)
        && let Some(&o) = others.iter().find(|&&o| o != me && had_it(&all[o]))
    {
        return Some(format!(
            "its address {} is node {}'s address",
            node.address, all[o].name
        ));
    }
    None
}

/// Why `alias` cannot be a claim of the node at position `me` in `all`, if it cannot.
fn alias_refusal(
    alias: &str,
    me: Option<usize>,
    all: &[Node],
    claims: &NodeIndex,
    service_cidrs: &[IpNet],
    refused_names: &std::collections::HashSet<String>,
) -> Option<String> {
    if let Some(&o) = claims
        .named(alias)
        .iter()
        .find(|&&o| Some(o) != me && !refused_names.contains(&all[o].name))
    {
        return Some(format!("it is node {}'s name", all[o].name));
    }
    if let Some(&o) = claims.with_address(alias).iter().find(|&&o| Some(o) != me) {
        return Some(format!("it is node {}'s address", all[o].name));
    }
    let ip: IpAddr = alias.parse().ok()?;
    if is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) {
        return Some("loopback, unspecified and link-local addresses are never aliases".into());
    }
    if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
        return Some(format!("it lies in the service CIDR {c}"));
    }
    if let Some(o) = claims.owning(ip).min() {
        return Some(format!("it lies in node {}'s pod CIDR", all[o].name));
    }
    None
}

fn cidr_shape_refusal(cidr: &IpNet, own_ip: Option<IpAddr>) -> Option<String> {
    let shortest = match cidr {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 32,
    };
    if cidr.prefix_len() < shortest {
        return Some(format!(
            "shorter than /{shortest}; a node's pods never span that much"
        ));
    }
    let special = |ip: IpAddr| {
        is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) || ip.is_multicast()
    };
    let first = cidr.network();
    if special(first) || special(cidr.broadcast()) {
        let same_range_as_node = own_ip.is_some_and(|own| {
            (is_loopback(own) && is_loopback(first)) || (is_link_local(own) && is_link_local(first))
        });
        if !same_range_as_node {
            return Some("a special-purpose range (loopback, link-local, multicast)".into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first implementation (every node against every other), kept as the reference
    /// the indexed `vet` must agree with.
    mod reference {
        use super::super::*;

        /// Checks every node's address, aliases and pod CIDRs. What is refused is removed and the
        /// reason recorded on the node (`Node::refused`); a node whose **address** is refused is
        /// removed from the set altogether and returned with why. `service_cidrs` are the cluster's
        /// service ranges; `earlier` gives a node as the pool knows it now (None at start), so that in
        /// a dispute the node that held a claim first keeps it. In passes, so that a claim refused in
        /// one pass cannot make another node's good claim look bad in the next (a node claiming
        /// 0.0.0.0/0 must not make every other pod CIDR "overlap").
        pub(super) fn vet_reference(
            nodes: &mut Vec<Node>,
            service_cidrs: &[IpNet],
            earlier: impl Fn(&str) -> Option<Arc<Node>>,
        ) -> Vec<(String, String)> {
            // 1. The shape of each pod CIDR.
            for node in nodes.iter_mut() {
                node.refused.clear();
                node.name_refused = false;
                let own_ip = node.ip();
                let mut kept = Vec::new();
                for cidr in std::mem::take(&mut node.pod_cidrs) {
                    match cidr_shape_refusal(&cidr, own_ip) {
                        Some(why) => node.refused.push(format!("pod CIDR {cidr}: {why}")),
                        None => kept.push(cidr),
                    }
                }
                node.pod_cidrs = kept;
            }
            let sane: Vec<Node> = nodes.to_vec();
            // 2. Addresses: never special, a service IP or another node's pod IP; an address two
            //    nodes give stays with the node that had it (routing refuses it if neither did).
            let mut dropped = Vec::new();
            nodes.retain(|node| {
                let why = address_refusal_reference(node, &sane, service_cidrs, &earlier);
                if let Some(why) = &why {
                    dropped.push((node.name.clone(), why.clone()));
                }
                why.is_none()
            });
            // 3. Overlapping pod CIDRs: the node that had the range keeps it; if neither (or both)
            //    did, both lose it.
            let had = |name: &str, cidr: &IpNet| {
                earlier(name).is_some_and(|n| {
                    n.pod_cidrs
                        .iter()
                        .any(|c| c.contains(cidr) || cidr.contains(c))
                })
            };
            let placed: Vec<Node> = nodes.to_vec();
            for node in nodes.iter_mut() {
                let others: Vec<&Node> = placed.iter().filter(|o| o.name != node.name).collect();
                let mut kept = Vec::new();
                for cidr in std::mem::take(&mut node.pod_cidrs) {
                    let overlap = others.iter().find(|o| {
                        o.pod_cidrs
                            .iter()
                            .any(|c| c.contains(&cidr) || cidr.contains(c))
                    });
                    match overlap {
                        // The node keeps it only if it had the range and the other did not.
                        Some(o) if !had(&node.name, &cidr) || had(&o.name, &cidr) => {
                            node.refused.push(format!(
                                "pod CIDR {cidr}: it overlaps node {}'s pod CIDR",
                                o.name
                            ))
                        }
                        _ => kept.push(cidr),
                    }
                }
                node.pod_cidrs = kept;
            }
            // 4. Names, against every other node's address and alias and every pod CIDR.
            let name_refusals: Vec<Option<String>> = nodes
                .iter()
                .map(|node| {
                    let others: Vec<&Node> = sane.iter().filter(|o| o.name != node.name).collect();
                    if let Some(o) = others.iter().find(|o| same_host(&o.address, &node.name)) {
                        return Some(format!("it is node {}'s address", o.name));
                    }
                    let ip = node.name.parse::<IpAddr>().ok()?;
                    if let Some(o) = others
                        .iter()
                        .find(|o| o.aliases.iter().any(|a| same_host(a, &node.name)))
                    {
                        return Some(format!("it is node {}'s alias", o.name));
                    }
                    if is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) {
                        return Some(
                            "it is a loopback, unspecified or link-local address".to_string(),
                        );
                    }
                    if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
                        return Some(format!("it lies in the service CIDR {c}"));
                    }
                    others
                        .iter()
                        .find(|o| o.owns_pod_ip(ip))
                        .map(|o| format!("it lies in node {}'s pod CIDR", o.name))
                })
                .collect();
            let refused_names: Vec<String> = nodes
                .iter()
                .zip(&name_refusals)
                .filter(|(_, why)| why.is_some())
                .map(|(n, _)| n.name.clone())
                .collect();
            // 5. Aliases, against every node and every pod CIDR of a sane shape (also those
            //    lost to an overlap: a node must not take over a range by disputing it first).
            for (node, name_why) in nodes.iter_mut().zip(name_refusals) {
                let others: Vec<&Node> = sane
                    .iter()
                    .filter(|o| o.name != node.name && !refused_names.contains(&o.name))
                    .collect();
                let unnamed: Vec<&Node> = sane.iter().filter(|o| o.name != node.name).collect();
                let mut kept = Vec::new();
                for alias in std::mem::take(&mut node.aliases) {
                    let why = match others.iter().find(|o| o.is_named(&alias)) {
                        Some(o) => Some(format!("it is node {}'s name", o.name)),
                        None => {
                            alias_refusal_reference(&alias, &[], &unnamed, &sane, service_cidrs)
                        }
                    };
                    match why {
                        Some(why) => node.refused.push(format!("alias {alias}: {why}")),
                        None => kept.push(alias),
                    }
                }
                node.aliases = kept;
                if let Some(why) = name_why {
                    node.refused
                        .push(format!("name {}: {why}; it does not route", node.name));
                    node.name_refused = true;
                }
            }
            dropped
        }

        /// Why a node's address cannot be used, if it cannot.
        fn address_refusal_reference(
            node: &Node,
            all: &[Node],
            service_cidrs: &[IpNet],
            earlier: &impl Fn(&str) -> Option<Arc<Node>>,
        ) -> Option<String> {
            let others = all.iter().filter(|o| o.name != node.name);
            if let Some(ip) = node.ip() {
                if ip.is_unspecified() || is_link_local(ip) || ip.is_multicast() {
                    return Some(format!(
                        "its address {ip} is unspecified, link-local or multicast"
                    ));
                }
                if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
                    return Some(format!("its address {ip} lies in the service CIDR {c}"));
                }
                if let Some(o) = others.clone().find(|o| o.owns_pod_ip(ip)) {
                    return Some(format!(
                        "its address {ip} lies in node {}'s pod CIDR",
                        o.name
                    ));
                }
            }
            // The same address as another node: the one that had it keeps it.
            let had_it =
                |n: &Node| earlier(&n.name).is_some_and(|e| same_host(&e.address, &n.address));
            if let Some(o) = others
                .clone()
                .find(|o| same_host(&o.address, &node.address) && had_it(o) && !had_it(node))
            {
                return Some(format!(
                    "its address {} is node {}'s address",
                    node.address, o.name
                ));
            }
            None
        }

        /// Why `alias` is refused: `named` are the nodes whose names count (refused names do
        /// not), `others` every other node.
        fn alias_refusal_reference(
            alias: &str,
            named: &[&Node],
            others: &[&Node],
            all: &[Node],
            service_cidrs: &[IpNet],
        ) -> Option<String> {
            if let Some(o) = named.iter().find(|o| o.is_named(alias)) {
                return Some(format!("it is node {}'s name", o.name));
            }
            if let Some(o) = others.iter().find(|o| same_host(alias, &o.address)) {
                return Some(format!("it is node {}'s address", o.name));
            }
            let ip: IpAddr = alias.parse().ok()?;
            if is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) {
                return Some(
                    "loopback, unspecified and link-local addresses are never aliases".into(),
                );
            }
            if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
                return Some(format!("it lies in the service CIDR {c}"));
            }
            if let Some(o) = all.iter().find(|o| o.owns_pod_ip(ip)) {
                return Some(format!("it lies in node {}'s pod CIDR", o.name));
            }
            None
        }
    }

    fn node(name: &str, addr: &str, aliases: &[&str], cidrs: &[&str]) -> Node {
        let mut n = Node::parse_spec(&format!("{name}={addr}")).unwrap();
        n.aliases = aliases.iter().map(|a| a.to_string()).collect();
        n.pod_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        n
    }

    #[test]
    fn a_name_that_is_another_nodes_address_pod_ip_or_a_service_ip_does_not_route() {
        let mut nodes = vec![
            // Named like n2's address; its own address is elsewhere.
            node("10.0.0.2", "10.0.0.1", &[], &[]),
            node("n2", "10.0.0.2", &[], &["10.244.2.0/24"]),
            node("10.244.2.7", "10.0.0.3", &[], &[]),
            node("10.96.0.1", "10.0.0.4", &[], &[]),
            node("127.0.0.1", "10.0.0.5", &[], &[]),
            // Named like its own address, and like an IP nobody claims: both route.
            node("10.0.0.6", "10.0.0.6", &[], &[]),
            node("10.0.0.99", "10.0.0.7", &[], &[]),
            // Named like another node's alias (its ExternalIP): the alias holder keeps the IP.
            node("203.0.113.9", "10.0.0.8", &[], &[]),
            node("ext", "10.0.0.9", &["203.0.113.9"], &[]),
        ];
        vet(&mut nodes, &["10.96.0.0/12".parse().unwrap()], |_| None);
        let refused: Vec<(&str, bool, &[String])> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.name_refused, n.refused.as_slice()))
            .collect();
        assert_eq!(nodes.len(), 9, "every node stays: {refused:?}");

        let why = |i: usize| nodes[i].refused.join("; ");
        assert!(nodes[7].name_refused && why(7).contains("it is node ext's alias"));
        assert_eq!(nodes[8].aliases, ["203.0.113.9"]);
        assert!(nodes[0].name_refused && why(0).contains("it is node n2's address"));
        assert!(!nodes[1].name_refused && nodes[1].refused.is_empty());
        assert!(nodes[2].name_refused && why(2).contains("it lies in node n2's pod CIDR"));
        assert!(nodes[3].name_refused && why(3).contains("service CIDR 10.96.0.0/12"));
        assert!(nodes[4].name_refused && why(4).contains("loopback"));
        assert!(
            !nodes[5].name_refused && !nodes[6].name_refused,
            "{refused:?}"
        );
        // Routing: the address's holder gets it; the refused name routes nothing.
        let table = super::super::route::RouteTable::new(nodes.into_iter().map(Arc::new).collect());
        let route = |d: &str| table.classify(&d.parse().unwrap());
        use super::super::route::Route;
        assert_eq!(route("10.0.0.2:10250"), Route::Node("n2".into()));
        assert_eq!(route("10.244.2.7:80"), Route::PodOf("n2".into()));
        assert_eq!(route("10.96.0.1:443"), Route::AnyReady);
        assert_eq!(route("10.0.0.1:10250"), Route::Node("10.0.0.2".into()));
        assert_eq!(route("10.0.0.99:10250"), Route::Node("10.0.0.99".into()));
        assert_eq!(route("203.0.113.9:10250"), Route::Node("ext".into()));
    }

    #[test]
    fn refuses_aliases_that_belong_to_others_or_are_special() {
        let mut nodes = vec![
            node(
                "n1",
                "10.0.0.1",
                &[
                    "10.0.0.2",
                    "n2",
                    "10.96.0.10",
                    "10.244.2.7",
                    "127.0.0.1",
                    "::",
                    "169.254.169.254",
                    "fe80::1",
                    "203.0.113.1",
                    "n1.example",
                ],
                &["10.244.1.0/24"],
            ),
            node("n2", "10.0.0.2", &[], &["10.244.2.0/24"]),
        ];
        vet(&mut nodes, &["10.96.0.0/12".parse().unwrap()], |_| None);
        assert_eq!(nodes[0].aliases, ["203.0.113.1", "n1.example"]);
        let refused = nodes[0].refused.join("\n");
        for why in [
            "alias 10.0.0.2: it is node n2's address",
            "alias n2: it is node n2's name",
            "alias 10.96.0.10: it lies in the service CIDR 10.96.0.0/12",
            "alias 10.244.2.7: it lies in node n2's pod CIDR",
            "alias 127.0.0.1: loopback",
            "alias ::: loopback",
            "alias 169.254.169.254: loopback",
            "alias fe80::1: loopback",
        ] {
            assert!(refused.contains(why), "{why} in\n{refused}");
        }
        assert!(nodes[1].refused.is_empty());
    }

    #[test]
    fn refuses_pod_cidrs_that_are_special_too_wide_or_overlapping() {
        let mut nodes = vec![
            node(
                "n1",
                "10.0.0.1",
                &[],
                &[
                    "0.0.0.0/0",
                    "127.0.0.0/8",
                    "10.0.0.0/7",
                    "::/0",
                    "fd00::/16",
                    "169.254.0.0/16",
                    "224.0.0.0/8",
                    "10.244.1.0/24",
                    "10.244.9.0/24",
                    "fd00:244:1::/64",
                ],
            ),
            node("n2", "10.0.0.2", &[], &["10.244.9.128/25"]),
            // A node on loopback (a lab) may have loopback pod CIDRs.
            node("lab", "127.0.0.5", &[], &["127.1.0.0/24"]),
        ];
        vet(&mut nodes, &[], |_| None);
        assert_eq!(
            nodes[0].pod_cidrs,
            vec![
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:244:1::/64".parse().unwrap()
            ]
        );
        assert!(
            nodes[0]
                .refused
                .iter()
                .any(|r| r.contains("10.244.9.0/24: it overlaps node n2's"))
        );
        assert!(nodes[1].pod_cidrs.is_empty(), "refused on both nodes");
        assert!(nodes[1].refused[0].contains("overlaps node n1's"));
        assert_eq!(nodes[2].pod_cidrs.len(), 1);
    }

    #[test]
    fn a_node_whose_address_is_a_service_or_pod_ip_or_special_is_left_out() {
        let mut nodes = vec![
            node("victim", "10.0.0.1", &[], &["10.244.1.0/24"]),
            node("in-pods", "10.244.1.7", &[], &[]),
            node("in-services", "10.96.0.10", &[], &[]),
            node("link-local", "169.254.169.254", &[], &[]),
        ];
        let dropped = vet(&mut nodes, &["10.96.0.0/12".parse().unwrap()], |_| None);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["victim"]);
        let why: Vec<String> = dropped.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        assert!(
            why[0].contains("in-pods: its address 10.244.1.7 lies in node victim's pod CIDR"),
            "{why:?}"
        );
        assert!(why[1].contains("service CIDR"), "{why:?}");
        assert!(why[2].contains("link-local"), "{why:?}");
    }

    #[test]
    fn in_a_dispute_the_node_that_held_the_claim_keeps_it() {
        let victim = node("victim", "10.0.0.1", &[], &["10.244.1.0/24"]);
        let earlier = {
            let v = Arc::new(victim.clone());
            move |name: &str| (name == "victim").then(|| v.clone())
        };
        // A newcomer with the victim's address is left out; one with an overlapping range
        // loses the range, and cannot take a pod IP of the disputed range as an alias.
        let mut nodes = vec![
            victim.clone(),
            node("copycat", "10.0.0.1", &[], &[]),
            node("rogue", "10.0.0.9", &["10.244.1.7"], &["10.244.1.0/25"]),
        ];
        let dropped = vet(&mut nodes, &[], &earlier);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(
            dropped[0].1.contains("node victim's address"),
            "{dropped:?}"
        );
        assert_eq!(nodes[0].pod_cidrs.len(), 1, "the victim keeps its range");
        assert!(
            nodes[1].pod_cidrs.is_empty() && nodes[1].aliases.is_empty(),
            "{:?}",
            nodes[1]
        );
        // At start nobody held anything: both keep their address (routing refuses it as
        // ambiguous) and both lose an overlapping range.
        let mut fresh = vec![victim, node("copycat", "10.0.0.1", &[], &["10.244.1.0/25"])];
        assert!(vet(&mut fresh, &[], |_| None).is_empty());
        assert!(fresh.iter().all(|n| n.pod_cidrs.is_empty()));
    }

    /// The indexed `vet` decides exactly as the reference did, on random node sets full of
    /// collisions: shared and nested pod CIDRs, names and addresses as aliases, special and
    /// service addresses, case, IPv6, and earlier holders.
    #[test]
    fn the_indexed_vet_agrees_with_the_reference_on_random_node_sets() {
        fastrand::seed(15);
        let names = [
            "a",
            "b",
            "c",
            "d",
            "e",
            "A",
            "node-7",
            "x.example",
            "10.0.0.2",
            "10.1.2.5",
            "127.0.0.9",
            "10.96.0.3",
        ];
        let hosts = [
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.1",
            "10.1.2.3",
            "10.96.0.10",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "FD00::1",
            "a",
            "B",
            "x.example",
            "127.0.0.5",
            "0.0.0.0",
            "224.0.0.1",
            "10.1.2.200",
            "2001:db8::7",
        ];
        let cidrs = [
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "10.1.2.0/24",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "127.0.0.0/8",
            "10.2.0.0/16",
            "fd00::/64",
            "fd00::/56",
            "2001:db8::/48",
            "10.96.0.0/12",
            "169.254.0.0/16",
            "10.1.3.0/24",
        ];
        let service = ["10.96.0.0/12".parse().unwrap()];
        for round in 0..3000 {
            let mut pool = names.to_vec();
            fastrand::shuffle(&mut pool);
            let make = |name: &str| {
                let mut n = node(name, hosts[fastrand::usize(..hosts.len())], &[], &[]);
                n.aliases = (0..fastrand::usize(0..4))
                    .map(|_| hosts[fastrand::usize(..hosts.len())].to_string())
                    .collect();
                n.pod_cidrs = (0..fastrand::usize(0..3))
                    .map(|_| cidrs[fastrand::usize(..cidrs.len())].parse().unwrap())
                    .collect();
                n
            };
            let nodes: Vec<Node> = pool[..fastrand::usize(1..=pool.len())]
                .iter()
                .map(|name| make(name))
                .collect();
            let held: Vec<Arc<Node>> = nodes
                .iter()
                .filter(|_| fastrand::bool())
                .map(|n| {
                    Arc::new(if fastrand::bool() {
                        n.clone()
                    } else {
                        make(&n.name)
                    })
                })
                .collect();
            let earlier = |name: &str| held.iter().find(|h| h.name == name).cloned();
            let (mut fast, mut slow) = (nodes.clone(), nodes.clone());
            let dropped_fast = vet(&mut fast, &service, earlier);
            let dropped_slow = reference::vet_reference(&mut slow, &service, earlier);
            assert_eq!(dropped_fast, dropped_slow, "round {round}: {nodes:#?}");
            assert_eq!(fast, slow, "round {round}: {nodes:#?}");
        }
    }
}
