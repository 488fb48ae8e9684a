//! Network namespaces for test nodes that must be cut off or live on their own address space
//! (root only): made with `ip`, joined to the root namespace by a veth pair, and removed when
//! dropped, or by the next run when a killed run could not clean up.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::process::{TOOL_LIMIT, is_root, run_bounded, run_ok};

/// Runs `ip ARGS…` (panics on failure) and returns its stdout.
pub fn ip(args: &[&str]) -> String {
    run_ok(Command::new("ip").args(args))
}

/// A network namespace made for one test node, joined to the root namespace by a veth pair.
/// Deleted (with its veth pair) when dropped.
pub struct Netns {
    pub name: String,
    /// The veth end inside the namespace (set it down to cut the node off).
    pub inner_if: String,
    pub host_addr: Ipv4Addr,
    pub node_addr: Ipv4Addr,
}

impl Netns {
    pub(crate) fn create() -> Netns {
        use rand::Rng;
        let mut rng = rand::rng();
        reap_stale_netns();
        let tag: u32 = rng.random_range(0..0xff_ffff);
        // The creator's PID is in the name so that namespaces of a killed test run can be
        // recognised and removed by the next one.
        let name = format!("kst-{}-{tag:06x}", std::process::id());
        let host_if = format!("kh{tag:06x}");
        let inner_if = format!("kn{tag:06x}");
        // 198.18.0.0/15 (RFC 2544 benchmark range) inside a namespace we create; /30 per node.
        let third = rng.random_range(0..=255u8);
        let fourth = rng.random_range(0..=63u8) * 4;
        let host_addr = Ipv4Addr::new(198, 18, third, fourth + 1);
        let node_addr = Ipv4Addr::new(198, 18, third, fourth + 2);
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            inner_if: inner_if.clone(),
            host_addr,
            node_addr,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{node_addr}/30"),
            "dev",
            &inner_if,
        ]);
        ip(&["-n", &name, "link", "set", &inner_if, "up"]);
        ns
    }

    /// Sets the namespace side of the veth pair down (`false`) or up (`true`).
    pub fn set_link(&self, up: bool) {
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            &self.inner_if,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", &self.name]),
            b"",
            TOOL_LIMIT,
        );
    }
}

/// Deletes `kst-PID-*` namespaces whose creating process is gone (a test run killed with
/// SIGKILL cannot clean up after itself).
pub fn reap_stale_netns() {
    let Ok(out) = run_bounded(Command::new("ip").args(["netns", "list"]), b"", TOOL_LIMIT) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("kst-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run_bounded(
                Command::new("ip").args(["netns", "del", name]),
                b"",
                TOOL_LIMIT,
            );
        }
    }
}

/// True when network namespaces can be made here (root with `ip`).
pub fn can_use_netns() -> bool {
    is_root() && run_bounded(Command::new("ip").arg("-V"), b"", TOOL_LIMIT).is_ok()
}
