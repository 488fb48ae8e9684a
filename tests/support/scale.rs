//! Many SSH nodes without many processes: the demo's in-process russh node, each with its own
//! host key on its own loopback address (127.78.x.y), all served by the process that holds a
//! `ScaleNodes` — a test, or the benchmark's helper process. 5,000 sshd processes do not fit
//! on a small machine; these measure the daemon's side of a large cluster. Real OpenSSH nodes
//! remain the nodes of every behaviour test.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube_ssh_tunnel::demo::{DemoNode, Handshakes, NodeSpec};

/// The most nodes one `ScaleNodes` serves (a /24 pod CIDR each in 10.128.0.0/9).
pub const MAX_NODES: usize = 128 * 256;

/// N nodes, the client key they accept, and the files a daemon needs to reach them.
pub struct ScaleNodes {
    pub nodes: Vec<DemoNode>,
    /// Server-side count of handshakes in progress (and the most at once).
    pub handshakes: Arc<Handshakes>,
    /// The client's private key (0600), its known_hosts, and a TOML node file.
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub nodes_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Node `i`'s address: 127.78.(i / 250).(i % 250 + 1).
pub fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 78, (i / 250) as u8, (i % 250 + 1) as u8)
}

impl ScaleNodes {
    /// Starts `n` nodes (named `s0`, `s1`, …). Needs enough open files: about two per node
    /// here, and one per node in the daemon (see `raise_fd_limit`).
    pub async fn start(n: usize) -> ScaleNodes {
        assert!(n <= MAX_NODES, "at most {MAX_NODES} nodes");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        super::keygen(&key, "ed25519", None);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let client = russh::keys::PublicKey::from_openssh(public.trim()).unwrap();
        let handshakes = Arc::new(Handshakes::default());
        let service_cidr = "10.96.0.0/12".parse().unwrap();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let spec = NodeSpec {
                name: format!("s{i}"),
                ip: IpAddr::V4(address(i)),
                kubelet_port: 10250,
                pod_cidr: format!("10.{}.{}.0/24", 128 + i / 256, i % 256)
                    .parse()
                    .unwrap(),
                service_cidr,
            };
            let node = DemoNode::start_counted(spec, 0, client.clone(), Some(handshakes.clone()))
                .await
                .unwrap_or_else(|e| panic!("node s{i} on {}: {e}", address(i)));
            nodes.push(node);
        }
        let (mut kh, mut list) = (String::new(), String::new());
        for n in &nodes {
            let _ = writeln!(kh, "{}", n.known_hosts_line().unwrap());
            let _ = writeln!(list, "{}", n.node_file_entry());
        }
        let known_hosts = dir.path().join("known_hosts");
        let nodes_file = dir.path().join("nodes.toml");
        std::fs::write(&known_hosts, kh).unwrap();
        std::fs::write(&nodes_file, list).unwrap();
        ScaleNodes {
            nodes,
            handshakes,
            key,
            known_hosts,
            nodes_file,
            _dir: dir,
        }
    }

    /// `run`'s arguments for these nodes, with its sockets at `proxy` and `admin`.
    pub fn daemon_args(&self, proxy: &Path, admin: &Path) -> Vec<String> {
        daemon_args(
            self.key.to_str().unwrap(),
            self.known_hosts.to_str().unwrap(),
            &["--nodes", self.nodes_file.to_str().unwrap()],
            proxy,
            admin,
        )
    }
}

/// `run`'s arguments for scale nodes reached with `key` and `known_hosts`, the nodes from
/// `source` (`--nodes FILE` or `--kubeconfig FILE`), its sockets at `proxy` and `admin`.
pub fn daemon_args(
    key: &str,
    known_hosts: &str,
    source: &[&str],
    proxy: &Path,
    admin: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--ssh-tunnel",
        "--ssh-user",
        "scale",
        "--ssh-keyfile",
        key,
        "--ssh-known-hosts",
        known_hosts,
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--admin-uds",
        admin.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(source.iter().map(|s| s.to_string()));
    args
}
