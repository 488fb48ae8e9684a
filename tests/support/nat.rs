//! A real NAT in front of test nodes (root only): a router namespace joined to the root
//! namespace by one veth pair (its "outer" side) and to each node namespace by another, with
//! nftables masquerade on the outer side and a forward filter that lets nodes dial out but
//! lets nothing new in (neither from the root namespace nor from another node). Every node's
//! connection to the root namespace shows the router's outer address as its source, and the
//! root namespace's route to the nodes leads only into that router, so a direct dial of a node
//! fails there and never leaves the machine. Everything is removed when dropped (stale
//! namespaces of a killed run: `reap_stale_netns`).

use std::net::Ipv4Addr;
use std::process::Command;

use super::netns::{ip, reap_stale_netns};
use super::process::{TOOL_LIMIT, run_bounded};

/// Runs `nft -f -` with `rules` inside namespace `ns` (panics with nft's message on failure).
fn nft_in(ns: &str, rules: &str) {
    let o = run_bounded(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        rules.as_bytes(),
        TOOL_LIMIT,
    )
    .unwrap_or_else(|e| panic!("nft in {ns} (this test needs nftables' `nft`): {e}"));
    assert!(
        o.status.success(),
        "nft in {ns} refused:\n{rules}\n{}",
        o.stderr_text()
    );
}

/// The third octets of the 198.19.B.0/24 blocks this process's NATs hold (tests of one binary
/// run in parallel; two NATs on one block would clash on the root's route).
static BLOCKS: std::sync::Mutex<std::collections::BTreeSet<u8>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A block no NAT of this process holds and the root namespace has no route into.
fn claim_block() -> u8 {
    use rand::Rng;
    let mut blocks = BLOCKS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..64 {
        let b: u8 = rand::rng().random_range(0..=255);
        if !blocks.contains(&b) && ip(&["route", "show", &format!("198.19.{b}.0/24")]).is_empty() {
            blocks.insert(b);
            return b;
        }
    }
    panic!("no free 198.19.B.0/24 block for a NAT after 64 tries");
}

/// One node behind the NAT: its own namespace, joined to the router by a veth pair.
pub struct NatNode {
    pub ns: String,
    /// The node's address (its kubelet's): routable only inside the NAT.
    pub addr: Ipv4Addr,
    /// The router's interface towards this node (traffic to cut: `cut_node`).
    pub router_if: String,
    /// The node's pod CIDR (a /28 of 10.244.0.0/16) and the pod IP, an address of the node.
    pub pod_cidr: String,
    pub pod_ip: Ipv4Addr,
}

/// A router namespace with masquerade, and its nodes.
pub struct Nat {
    pub router: String,
    /// The root namespace's address on the link to the router (the daemon listens here).
    pub outer_host: Ipv4Addr,
    /// The router's address on that link: the source of every node's connection.
    pub outer_router: Ipv4Addr,
    pub outer_if: String,
    /// The service CIDR whose one ClusterIP (`service_ip`) every node serves.
    pub service_cidr: String,
    pub service_ip: Ipv4Addr,
    pub nodes: Vec<NatNode>,
}

impl Nat {
    /// A router and `count` (1..=8) nodes behind it, all in 198.19.B.0/24 for a random B
    /// (198.18.0.0/15, RFC 2544's benchmark range), pod CIDRs 10.244.B.(16i)/28, service
    /// CIDR 10.96.B.0/24.
    pub fn create(count: usize) -> Nat {
        use rand::Rng;
        assert!((1..=8).contains(&count));
        reap_stale_netns();
        let mut rng = rand::rng();
        let tag: u32 = rng.random_range(0..0xff_ffff);
        let b = claim_block();
        let pid = std::process::id();
        let router = format!("kst-{pid}-{tag:06x}r");
        let outer_if = format!("kro{tag:06x}");
        let host_if = format!("kho{tag:06x}");
        let outer_host = Ipv4Addr::new(198, 19, b, 1);
        let outer_router = Ipv4Addr::new(198, 19, b, 2);
        ip(&["netns", "add", &router]);
        let mut nat = Nat {
            router: router.clone(),
            outer_host,
            outer_router,
            outer_if: outer_if.clone(),
            service_cidr: format!("10.96.{b}.0/24"),
            service_ip: Ipv4Addr::new(10, 96, b, 10),
            nodes: Vec::new(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &outer_if,
        ]);
        ip(&["link", "set", &outer_if, "netns", &router]);
        ip(&["addr", "add", &format!("{outer_host}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{outer_router}/30"),
            "dev",
            &outer_if,
        ]);
        ip(&["-n", &router, "link", "set", &outer_if, "up"]);
        super::process::run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]));
        // The root namespace reaches the whole block only through the router: a dial of a
        // node goes there (and is dropped), never out of the machine.
        ip(&[
            "route",
            "add",
            &format!("198.19.{b}.0/24"),
            "via",
            &outer_router.to_string(),
        ]);
        nft_in(
            &router,
            &format!(
                "table ip kst_nat {{
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname \"{outer_if}\" masquerade
  }}
  chain through {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname != \"{outer_if}\" oifname \"{outer_if}\" accept
    counter comment \"new inbound or node-to-node: dropped\"
  }}
}}
"
            ),
        );
        for i in 0..count {
            let k = 4 * (i as u8 + 1);
            let router_addr = Ipv4Addr::new(198, 19, b, k + 1);
            let addr = Ipv4Addr::new(198, 19, b, k + 2);
            let ns = format!("kst-{pid}-{tag:06x}n{i}");
            let router_if = format!("krn{tag:06x}{i}");
            let node_if = format!("knn{tag:06x}{i}");
            ip(&["netns", "add", &ns]);
            let pod_cidr = format!("10.244.{b}.{}/28", 16 * i);
            let pod_ip = Ipv4Addr::new(10, 244, b, 16 * i as u8 + 5);
            nat.nodes.push(NatNode {
                ns: ns.clone(),
                addr,
                router_if: router_if.clone(),
                pod_cidr,
                pod_ip,
            });
            ip(&[
                "-n", &router, "link", "add", &router_if, "type", "veth", "peer", "name", &node_if,
                "netns", &ns,
            ]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{router_addr}/30"),
                "dev",
                &router_if,
            ]);
            ip(&["-n", &router, "link", "set", &router_if, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                &node_if,
            ]);
            ip(&["-n", &ns, "link", "set", &node_if, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &router_addr.to_string(),
            ]);
            // The pod and the service live on the node's loopback (this kernel may lack
            // the `dummy` link type; to the node's ssh it is the same: a local address).
            for a in [pod_ip, nat.service_ip] {
                ip(&["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
            }
        }
        nat
    }

    /// Drops (`true`) or lets through again (`false`) everything the router forwards to or
    /// from node `i`: its link is lost, its ssh and the daemon see nothing more.
    pub fn cut_node(&self, i: usize, cut: bool) {
        let n = &self.nodes[i];
        if cut {
            nft_in(
                &self.router,
                &format!(
                    "table ip kst_cut {{
  chain through {{ type filter hook forward priority filter - 10; policy accept;
    iifname \"{0}\" drop
    oifname \"{0}\" drop
  }}
}}
",
                    n.router_if
                ),
            );
        } else {
            nft_in(&self.router, "delete table ip kst_cut\n");
        }
    }

    /// The packets the router dropped as new inbound or node-to-node traffic.
    pub fn dropped_inbound(&self) -> u64 {
        let o = super::process::run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &self.router,
            "nft",
            "list",
            "chain",
            "ip",
            "kst_nat",
            "through",
        ]));
        o.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The `[[nodes]]` TOML of these nodes (`names[i]` for node i), with their pod CIDRs.
    pub fn nodes_toml(&self, names: &[&str]) -> String {
        self.nodes
            .iter()
            .zip(names)
            .map(|(n, name)| {
                format!(
                    "[[nodes]]\nname = \"{name}\"\naddress = \"{}\"\nssh_port = 22\npod_cidrs = [\"{}\"]\n",
                    n.addr, n.pod_cidr
                )
            })
            .collect()
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, their peers, and the root's route.
        for n in &self.nodes {
            let _ = run_bounded(
                Command::new("ip").args(["netns", "del", &n.ns]),
                b"",
                TOOL_LIMIT,
            );
        }
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", &self.router]),
            b"",
            TOOL_LIMIT,
        );
        let b = self.outer_host.octets()[2];
        BLOCKS.lock().unwrap_or_else(|e| e.into_inner()).remove(&b);
    }
}
