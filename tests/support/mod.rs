//! Test harness: real OpenSSH `sshd` processes as cluster nodes.
//!
//! Each node gets its own loopback address (127.x.y.z, so routing by node IP is real), its
//! own host key, sshd_config (rendered from `tests/node/sshd_config.template`) and
//! authorized_keys in a temp dir, and a kubelet stub (`tests/node/kubelet_stub.py`) on the
//! same address. Faults: kill, SIGSTOP/SIGCONT and restart a node's sshd. Everything started
//! is stopped by PID when the node is dropped, which also happens on panic (unwinding).
//!
//! By concept:
//! - `process`: running commands with a time limit (`run_bounded`), `/proc`, keys, `repo()`;
//! - `netns`: network namespaces for nodes (root only);
//! - `nat`: a router namespace with nft masquerade in front of node namespaces (root only);
//! - `node`: one `TestNode` (sshd + kubelet stub) and `dest()`;
//! - `cluster`: a `Cluster` of nodes with the client's keys, known_hosts and arguments;
//! - `agent`: an ssh-agent of our own;
//! - `apiserver`: a stand-in Kubernetes API server for the Node watch;
//! - `daemon`: a `kube-ssh-tunnel run` process under test and `connect_uds()` to its front;
//! - `streams`: byte patterns, sources, sinks and echoes, CONNECT and slow readers (tokio);
//! - `scale`: thousands of in-process SSH nodes (the demo's), for the scale test and bench.
//!
//! Every name is re-exported here, so tests say `support::run_bounded`, `support::Cluster`.
#![allow(dead_code)]

pub mod agent;
pub mod apiserver;
pub mod cluster;
pub mod daemon;
pub mod extra_h1;
pub mod nat;
pub mod netns;
pub mod node;
pub mod process;
pub mod reverse;
pub mod scale;
pub mod streams;

/// Port of the kubelet stub's HTTP side (the real kubelet port).
pub const HTTP_PORT: u16 = 10250;
/// Port of the kubelet stub's HTTPS side (same endpoints, cert signed by the cluster's CA).
pub const HTTPS_PORT: u16 = 10251;
/// Port of the kubelet stub's raw TCP echo.
pub const ECHO_PORT: u16 = 10260;

/// The test clusters' certificate authority is the demo's.
pub use kube_ssh_tunnel::demo::pki::Ca as TestCa;

// Each test crate uses some of these names, none uses all of them.
#[allow(unused_imports)]
pub use agent::Agent;
#[allow(unused_imports)]
pub use cluster::{ClientKeys, Cluster};
#[allow(unused_imports)]
pub use daemon::connect_uds;
#[allow(unused_imports)]
pub use netns::{Netns, can_use_netns, ip, reap_stale_netns};
#[allow(unused_imports)]
pub use node::{TestNode, dest, refused_address};
#[allow(unused_imports)]
pub use process::{
    Ran, TOOL_LIMIT, children_of, cpu_seconds_of, current_user, fingerprint, is_root, keygen,
    open_fds, raise_fd_limit, repo, rss_bytes, rss_bytes_of, run_bounded, run_ok, signal,
    wait_bounded, wait_until,
};
