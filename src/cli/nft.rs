//! The nftables rule set `keygen --allow cluster` prints for each node.
//!
//! It exists because `permitopen` cannot express a CIDR: a key that may reach a node's pods
//! and the services carries no `permitopen`, so the node's kernel limits where the tunnel's
//! SSH user may connect instead. sshd's session process runs as that user and makes the
//! `direct-tcpip` connections, so `meta skuid USER` matches exactly the tunnel's dials.
//!
//! Every address is matched as `ct original ip daddr`: the destination the user dialled.
//! kube-proxy's nat output chain (priority -100) rewrites a service IP to a backend pod's IP
//! before this filter chain (priority 0) sees the packet, and Cilium rewrites it at
//! `connect()`; conntrack already holds the original tuple for the first packet here.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The table the rules live in (`inet`: IPv4 and IPv6 in one table).
pub const TABLE: &str = "kube_ssh_tunnel";

/// What one node lets the tunnel's user reach.
pub struct NodeRules<'a> {
    /// The SSH user (a name; nft resolves it on the node when it loads the rules).
    pub user: &'a str,
    /// The node's own address, where `node_ports` are allowed.
    pub address: IpAddr,
    pub node_ports: &'a [u16],
    /// Ports on the node's loopback (127.0.0.1 and ::1).
    pub loopback_ports: &'a [u16],
    /// The node's pod CIDRs and the cluster's service CIDRs (any TCP port).
    pub pod_cidrs: &'a [IpNet],
    pub service_cidrs: &'a [IpNet],
}

/// Checks a user name before it goes into the rules: what `useradd` accepts.
pub fn check_user(user: &str) -> Result<(), String> {
    let mut chars = user.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = user
        .trim_end_matches('$')
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if first_ok && rest_ok && user.len() <= 32 {
        Ok(())
    } else {
        Err(format!(
            "--ssh-user {user:?} is not a user name: use letters, digits, '_', '-' or '.', \
             starting with a letter or '_' (at most 32 characters), e.g. kube-tunnel"
        ))
    }
}

/// The shortest prefix a pod or service CIDR may have: /8 for IPv4, /32 for IPv6.
fn min_prefix(cidr: &IpNet) -> u8 {
    match cidr {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 32,
    }
}

/// Checks a CIDR given for the rules (`what` names the flag): no host bits, at least /8
/// (IPv4) or /32 (IPv6), and neither 127.0.0.1 nor ::1 in it (a lab's nodes may live on other
/// 127.x addresses).
pub fn check_cidr(what: &str, cidr: &IpNet) -> Result<(), String> {
    if cidr.prefix_len() < min_prefix(cidr) {
        return Err(format!(
            "{what} {cidr} is wider than /{} and would let the tunnel's user reach far more than \
             the cluster; give the cluster's range, e.g. 10.96.0.0/12 or fd00:96::/112",
            min_prefix(cidr)
        ));
    }
    if cidr.trunc() != *cidr {
        return Err(format!(
            "{what} {cidr} has host bits set; write the network, {}",
            cidr.trunc()
        ));
    }
    let loopback = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(Ipv6Addr::LOCALHOST),
    ];
    if let Some(lo) = loopback.iter().find(|lo| cidr.contains(*lo)) {
        return Err(format!(
            "{what} {cidr} contains the loopback address {lo}: it would open every service on \
             a node's loopback to the tunnel's user; give the cluster's range, and \
             --loopback-port for the loopback ports the tunnel needs"
        ));
    }
    Ok(())
}

/// Checks that a pod or service CIDR holds none of the node addresses: it would open every
/// port of those nodes (sshd, the apiserver, etcd) to the tunnel's user, not just
/// `--node-port`.
pub fn check_cidr_excludes_nodes(what: &str, cidr: &IpNet, nodes: &[IpAddr]) -> Result<(), String> {
    match nodes.iter().find(|a| cidr.contains(*a)) {
        Some(a) => Err(format!(
            "{what} {cidr} contains the node address {a}: it would open every port of that node \
             (sshd, the apiserver, etcd) to the tunnel's user; give the pod or service range \
             only (kubectl get node NAME -o jsonpath='{{.spec.podCIDRs}}', the apiserver's \
             --service-cluster-ip-range)"
        )),
        None => Ok(()),
    }
}

/// The destination the user dialled, before any DNAT: `ct original ip daddr` or
/// `ct original ip6 daddr`.
fn daddr(v6: bool) -> &'static str {
    if v6 {
        "ct original ip6 daddr"
    } else {
        "ct original ip daddr"
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rule set, ready for `nft -f`. It replaces an earlier copy of its table (so loading it
/// again is safe), has no blank line inside, and ends with the table's closing `}`.
pub fn ruleset(r: &NodeRules) -> String {
    let mut allow: Vec<String> = Vec::new();
    if !r.node_ports.is_empty() {
        allow.push(format!(
            "{} {} tcp dport {{ {} }} accept",
            daddr(r.address.is_ipv6()),
            r.address,
            join(r.node_ports)
        ));
    }
    if !r.loopback_ports.is_empty() {
        for (v6, lo) in [(false, "127.0.0.1"), (true, "::1")] {
            allow.push(format!(
                "{} {lo} tcp dport {{ {} }} accept",
                daddr(v6),
                join(r.loopback_ports)
            ));
        }
    }
    for (what, cidrs) in [("pods", r.pod_cidrs), ("services", r.service_cidrs)] {
        for v6 in [false, true] {
            let of_family: Vec<&IpNet> = cidrs
                .iter()
                .filter(|c| matches!(c, IpNet::V6(_)) == v6)
                .collect();
            if !of_family.is_empty() {
                allow.push(format!(
                    "{} {{ {} }} meta l4proto tcp accept comment \"{what}\"",
                    daddr(v6),
                    join(&of_family)
                ));
            }
        }
    }
    let mut out = String::new();
    out.push_str(&format!("table inet {TABLE}\n"));
    out.push_str(&format!("delete table inet {TABLE}\n"));
    out.push_str(&format!("table inet {TABLE} {{\n"));
    out.push_str("\tchain output {\n");
    out.push_str("\t\ttype filter hook output priority filter; policy accept;\n");
    out.push_str(&format!("\t\tmeta skuid \"{}\" jump tunnel_user\n", r.user));
    out.push_str("\t}\n");
    out.push_str("\tchain tunnel_user {\n");
    out.push_str("\t\tct state established,related accept\n");
    for a in allow {
        out.push_str(&format!("\t\t{a}\n"));
    }
    out.push_str("\t\tmeta l4proto tcp reject with tcp reset\n");
    out.push_str("\t\tdrop\n");
    out.push_str("\t}\n");
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_user_and_each_allowed_destination() {
        let pods: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
        ];
        let svc: Vec<IpNet> = vec!["10.96.0.0/12".parse().unwrap()];
        let r = ruleset(&NodeRules {
            user: "kube-tunnel",
            address: "10.0.0.5".parse().unwrap(),
            node_ports: &[10250],
            loopback_ports: &[10248],
            pod_cidrs: &pods,
            service_cidrs: &svc,
        });
        for want in [
            "meta skuid \"kube-tunnel\" jump tunnel_user",
            "ct original ip daddr 10.0.0.5 tcp dport { 10250 } accept",
            "ct original ip daddr 127.0.0.1 tcp dport { 10248 } accept",
            "ct original ip6 daddr ::1 tcp dport { 10248 } accept",
            "ct original ip daddr { 10.244.1.0/24 } meta l4proto tcp accept comment \"pods\"",
            "ct original ip6 daddr { fd00:10::/64 } meta l4proto tcp accept comment \"pods\"",
            "ct original ip daddr { 10.96.0.0/12 } meta l4proto tcp accept comment \"services\"",
        ] {
            assert!(r.contains(want), "{want} missing from\n{r}");
        }
        // No address is matched after DNAT.
        for line in r.lines().filter(|l| l.contains("daddr")) {
            assert!(line.contains("ct original ip"), "{line}");
        }
        assert!(!r.contains("\n\n"), "a blank line inside:\n{r}");
        assert!(r.ends_with("}\n"));
    }

    #[test]
    fn bad_users_and_cidrs_are_named() {
        assert!(check_user("kube-tunnel").is_ok());
        assert!(check_user("_svc$").is_ok());
        for bad in ["", "1user", "a b", "a\"b", "x;drop"] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
        let e = check_cidr("--pod-cidr", &"10.244.1.5/24".parse().unwrap()).unwrap_err();
        assert!(e.contains("10.244.1.0/24"), "{e}");
        assert!(check_cidr("--service-cidr", &"0.0.0.0/0".parse().unwrap()).is_err());
        assert!(check_cidr("--service-cidr", &"10.96.0.0/12".parse().unwrap()).is_ok());
        assert!(check_cidr("--service-cidr", &"fd00:96::/112".parse().unwrap()).is_ok());
        assert!(check_cidr("--pod-cidr", &"10.0.0.0/8".parse().unwrap()).is_ok());
        assert!(check_cidr("--pod-cidr", &"fd00::/32".parse().unwrap()).is_ok());
        for (wide, want) in [
            ("10.0.0.0/7", "wider than /8"),
            ("fd00::/31", "wider than /32"),
        ] {
            let e = check_cidr("--pod-cidr", &wide.parse().unwrap()).unwrap_err();
            assert!(e.contains(want), "{wide}: {e}");
        }
        for lo in ["127.0.0.0/8", "127.0.0.0/24", "::1/128", "::/64"] {
            let e = check_cidr("--service-cidr", &lo.parse().unwrap()).unwrap_err();
            assert!(e.contains("loopback"), "{lo}: {e}");
        }
        // A lab's pods on other 127.x addresses (the test harness) are not 127.0.0.1.
        assert!(check_cidr("--pod-cidr", &"127.208.36.0/24".parse().unwrap()).is_ok());
        let nodes: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::6".parse().unwrap()];
        for (cidr, ok) in [
            ("10.0.0.0/24", false),
            ("10.0.0.5/32", false),
            ("fd00::/64", false),
            ("10.96.0.0/12", true),
            ("fd00:96::/112", true),
        ] {
            let r = check_cidr_excludes_nodes("--service-cidr", &cidr.parse().unwrap(), &nodes);
            assert_eq!(r.is_ok(), ok, "{cidr}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("contains the node address"), "{e}");
            }
        }
    }
}
