//! A test cluster: N `TestNode`s plus the client side a tunnel needs (keys, known_hosts, the
//! user, the CA behind the kubelet stubs' certificates, a "service" stub every node may
//! forward to), and the arguments that point the library or the binary at it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kube_ssh_tunnel::{Node, SshSettings};
use tempfile::TempDir;

use super::node::{TestNode, spawn_stub, try_pick_address};
use super::process::{current_user, keygen};
use super::{ECHO_PORT, HTTP_PORT, TestCa};

/// Client key files the harness made, by type.
pub struct ClientKeys {
    pub ed25519: PathBuf,
    pub ecdsa: PathBuf,
    pub rsa: PathBuf,
}

/// N nodes plus the client side: keys, known_hosts, user. Dropping it stops everything.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    /// The CA that signed every kubelet stub's serving certificate.
    pub ca: TestCa,
    /// `ca`'s certificate as a PEM file.
    pub ca_file: PathBuf,
    pub keys: ClientKeys,
    pub known_hosts: PathBuf,
    pub user: String,
    /// The client keys' public lines (each node authorizes them with its generated options:
    /// `TestNode::authorize`).
    pub public_keys: String,
    /// A "service" address (a stand-in ClusterIP) that every node may forward to; its stub
    /// answers /whoami with `svc`.
    pub service_addr: Ipv4Addr,
    service_stub: Option<Child>,
    dir: TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.service_stub.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts `n` nodes named node-1..node-n.
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("kst-cluster-")
            .tempdir()
            .expect("tempdir");
        let kd = dir.path().join("client");
        std::fs::create_dir_all(&kd).unwrap();
        let keys = ClientKeys {
            ed25519: kd.join("id_ed25519"),
            ecdsa: kd.join("id_ecdsa"),
            rsa: kd.join("id_rsa"),
        };
        keygen(&keys.ed25519, "ed25519", None);
        keygen(&keys.ecdsa, "ecdsa", Some(256));
        keygen(&keys.rsa, "rsa", Some(2048));
        // The tunnel needs nothing but port forwarding: no pty, shell, agent or X11.
        let mut public_keys = String::new();
        for k in [&keys.ed25519, &keys.ecdsa, &keys.rsa] {
            public_keys.push_str(&std::fs::read_to_string(k.with_extension("pub")).unwrap());
        }
        let ca = TestCa::new("kube-ssh-tunnel test cluster CA").unwrap();
        let ca_file = kd.join("cluster-ca.crt");
        ca.write(&ca_file).unwrap();
        let service_addr = try_pick_address(&[HTTP_PORT, ECHO_PORT]).expect("service address");
        let service_stub = (n > 0).then(|| {
            spawn_stub(
                &Command::new("python3"),
                service_addr,
                "svc",
                &dir.path().join("svc.log"),
            )
        });
        let nodes: Vec<TestNode> = (1..=n)
            .map(|i| {
                TestNode::start_full(
                    &format!("node-{i}"),
                    dir.path(),
                    &public_keys,
                    &ca,
                    None,
                    Some(service_addr),
                )
            })
            .collect();
        let known_hosts = kd.join("known_hosts");
        let text: String = nodes.iter().map(|n| n.known_hosts_line()).collect();
        std::fs::write(&known_hosts, text).unwrap();
        Cluster {
            nodes,
            ca,
            ca_file,
            keys,
            known_hosts,
            user: current_user(),
            public_keys,
            service_addr,
            service_stub,
            dir,
        }
    }

    /// Adds a node living in its own network namespace (root only).
    pub fn add_netns_node(&mut self, name: &str) -> &TestNode {
        let node = TestNode::start_in_netns(name, self.dir.path(), &self.public_keys, &self.ca);
        let mut kh = std::fs::read_to_string(&self.known_hosts).unwrap();
        kh.push_str(&node.known_hosts_line());
        std::fs::write(&self.known_hosts, kh).unwrap();
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    /// The temp dir everything lives in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Library settings with the ed25519 key and short timeouts for tests.
    pub fn settings(&self) -> SshSettings {
        self.settings_with_key(&self.keys.ed25519)
    }

    /// Library settings with a given client key.
    pub fn settings_with_key(&self, key: &Path) -> SshSettings {
        SshSettings::builder(self.user.clone())
            .key_file(key, None)
            .expect("client key")
            .known_hosts_file(&self.known_hosts)
            .expect("known_hosts")
            .connect_timeout(Duration::from_secs(10))
            .open_timeout(Duration::from_secs(10))
            .build()
    }

    /// Library node list.
    pub fn node_list(&self) -> Vec<Node> {
        self.nodes.iter().map(|n| n.node()).collect()
    }

    /// The gate and SSH identity/trust flags of `run`/`dial`.
    fn ssh_args(&self) -> Vec<String> {
        vec![
            "--ssh-tunnel".to_string(),
            "--ssh-user".into(),
            self.user.clone(),
            "--ssh-keyfile".into(),
            self.keys.ed25519.display().to_string(),
            "--ssh-known-hosts".into(),
            self.known_hosts.display().to_string(),
        ]
    }

    /// `run` with the SSH flags and its sockets in the cluster's directory (proxy.sock,
    /// admin.sock); the caller adds the nodes and the rest.
    pub fn daemon_args(&self) -> Vec<String> {
        let mut v = vec!["run".to_string()];
        v.extend(self.ssh_args());
        for (flag, file) in [("--proxy-uds", "proxy.sock"), ("--admin-uds", "admin.sock")] {
            v.push(flag.into());
            v.push(self.path().join(file).display().to_string());
        }
        v
    }

    /// CLI flags for `run`/`dial` (with `--ssh-tunnel`).
    pub fn cli_args(&self) -> Vec<String> {
        let mut v = self.ssh_args();
        for n in &self.nodes {
            v.push("--node".into());
            v.push(n.spec());
        }
        v
    }
}
