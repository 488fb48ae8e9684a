//! What a node may claim. Aliases and pod CIDRs come from Node objects that each node's own
//! kubelet can write (a stolen kubelet credential can add any address to its Node's status),
//! so before a node set is used for routing and policy, each node's claims are checked against
//! the others and against addresses that must never be routed by claim:
//!
//! - an **alias** is refused when it is another node's name or address, lies in a service
//!   CIDR or in any node's pod CIDR, or is loopback, unspecified or link-local;
//! - a **pod CIDR** is refused when it is special-purpose (loopback, unspecified, link-local,
//!   multicast — unless the node's own address is in the same range, as in a lab), shorter
//!   than /8 (IPv4) or /32 (IPv6), or overlaps another node's (refused on both).
//!
//! A refusal is kept on the node (`Node::refused`, shown in `status`) and logged once, naming
//! both nodes where there are two. What is left can still be ambiguous (two nodes with the
//! same alias); routing refuses that per destination (`pool::route`).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::node::{Node, same_host};
use crate::policy::{is_link_local, is_loopback};

/// Checks every node's aliases and pod CIDRs; removes what is refused and records why on the
/// node. `service_cidrs` are the cluster's service ranges. In passes, so that a claim refused
/// in one pass cannot make another node's good claim look bad in the next (a node claiming
/// 0.0.0.0/0 must not make every other pod CIDR "overlap").
pub fn vet(nodes: &mut [Node], service_cidrs: &[IpNet]) {
    for node in nodes.iter_mut() {
        node.refused.clear();
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
    for node in nodes.iter_mut() {
        let others: Vec<&Node> = sane.iter().filter(|o| o.name != node.name).collect();
        let mut kept = Vec::new();
        for cidr in std::mem::take(&mut node.pod_cidrs) {
            let overlap = others.iter().find(|o| {
                o.pod_cidrs
                    .iter()
                    .any(|c| c.contains(&cidr) || cidr.contains(c))
            });
            match overlap {
                Some(o) => node.refused.push(format!(
                    "pod CIDR {cidr}: it overlaps node {}'s pod CIDR",
                    o.name
                )),
                None => kept.push(cidr),
            }
        }
        node.pod_cidrs = kept;
    }
    let routed: Vec<Node> = nodes.to_vec();
    for node in nodes.iter_mut() {
        let others: Vec<&Node> = routed.iter().filter(|o| o.name != node.name).collect();
        let mut kept = Vec::new();
        for alias in std::mem::take(&mut node.aliases) {
            match alias_refusal(&alias, &others, &routed, service_cidrs) {
                Some(why) => node.refused.push(format!("alias {alias}: {why}")),
                None => kept.push(alias),
            }
        }
        node.aliases = kept;
    }
}

fn alias_refusal(
    alias: &str,
    others: &[&Node],
    all: &[Node],
    service_cidrs: &[IpNet],
) -> Option<String> {
    if let Some(o) = others.iter().find(|o| o.is_named(alias)) {
        return Some(format!("it is node {}'s name", o.name));
    }
    if let Some(o) = others.iter().find(|o| same_host(alias, &o.address)) {
        return Some(format!("it is node {}'s address", o.name));
    }
    let ip: IpAddr = alias.parse().ok()?;
    if is_loopback(ip) || ip.is_unspecified() || is_link_local(ip) {
        return Some("loopback, unspecified and link-local addresses are never aliases".into());
    }
    if let Some(c) = service_cidrs.iter().find(|c| c.contains(&ip)) {
        return Some(format!("it lies in the service CIDR {c}"));
    }
    if let Some(o) = all.iter().find(|o| o.owns_pod_ip(ip)) {
        return Some(format!("it lies in node {}'s pod CIDR", o.name));
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

    fn node(name: &str, addr: &str, aliases: &[&str], cidrs: &[&str]) -> Node {
        let mut n = Node::parse_spec(&format!("{name}={addr}")).unwrap();
        n.aliases = aliases.iter().map(|a| a.to_string()).collect();
        n.pod_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
        n
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
        vet(&mut nodes, &["10.96.0.0/12".parse().unwrap()]);
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
        vet(&mut nodes, &[]);
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
}
