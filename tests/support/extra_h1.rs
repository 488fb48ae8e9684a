//! What a node's sshd holds open, seen from outside the library: the TCP connections its
//! processes (the listener, each connection's monitor and session child) have to a
//! destination. A channel the library forgot to close keeps sshd's socket to the destination
//! open, whatever the library's own counters say.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::node::TestNode;
use super::process::children_of;

/// `pid` and all its descendants (bounded: at most 10,000 processes).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 10_000 {
        out.extend(children_of(out[i]));
        i += 1;
    }
    out
}

/// Socket inodes open in processes `pids` (from /proc/PID/fd).
fn socket_inodes(pids: &[u32]) -> HashSet<u64> {
    let mut out = HashSet::new();
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in dir.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(n) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
            {
                out.insert(n);
            }
        }
    }
    out
}

/// `/proc/net/tcp`'s spelling of `addr:port` (the address as a host-order u32 in hex).
fn proc_net_addr(addr: Ipv4Addr, port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_le_bytes(addr.octets()))
}

/// ESTABLISHED IPv4 TCP sockets (in this network namespace) whose remote end is
/// `addr:port`, as their inodes. Panics if /proc/net/tcp cannot be read.
pub fn established_to(addr: Ipv4Addr, port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (procfs)");
    let want = proc_net_addr(addr, port);
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[2] == want && f[3] == "01")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// ESTABLISHED TCP connections that `node`'s sshd processes hold to `addr:port`: one per
/// channel to that destination that sshd still has open.
pub fn sshd_sockets_to(node: &TestNode, addr: Ipv4Addr, port: u16) -> usize {
    let Some(pid) = node.sshd_pid() else {
        return 0;
    };
    let mine = socket_inodes(&process_tree(pid));
    established_to(addr, port)
        .into_iter()
        .filter(|i| mine.contains(i))
        .count()
}
