//! One test node: a real OpenSSH `sshd` and a kubelet stub (`tests/node/kubelet_stub.py`) on
//! an address of its own, as a cluster node would be.
//!
//! The node gets a free loopback address (127.x.y.z, so routing by node IP is real) or a
//! network namespace, its own host key, an sshd_config rendered from
//! `tests/node/sshd_config.template` and an authorized_keys with the options `keygen` prints.
//! Faults: kill, SIGSTOP/SIGCONT and restart its sshd, kill its stub. Everything started is
//! stopped by PID when the node is dropped, which also happens on panic (unwinding).
//! `dest()` names one of its services (or a pod's) for the library's dial.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use kube_ssh_tunnel::{Destination, Node};

use super::netns::Netns;
use super::process::{
    children_of, is_root, keygen, repo, run_ok, signal, try_children_of, wait_until,
};
use super::{ECHO_PORT, HTTP_PORT, HTTPS_PORT, TestCa};

const SSHD: &str = "/usr/sbin/sshd";

/// `ADDR:PORT` as the library's `Destination` (what a dial asks a node to forward to).
pub fn dest(addr: impl std::fmt::Display, port: u16) -> Destination {
    format!("{addr}:{port}").parse().unwrap()
}

/// Starts a kubelet stub (plain HTTP and echo) named `name` on `addr` and waits for it.
pub(crate) fn spawn_stub(base: &Command, addr: Ipv4Addr, name: &str, log: &Path) -> Child {
    let mut c = Command::new(base.get_program());
    c.args(base.get_args());
    let log = std::fs::File::create(log).expect("stub log");
    let child = c
        .arg(repo().join("tests/node/kubelet_stub.py"))
        .args(["--listen", &addr.to_string()])
        .args(["--http-port", &HTTP_PORT.to_string()])
        .args(["--echo-port", &ECHO_PORT.to_string()])
        .args(["--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start stub (python3)");
    for port in [HTTP_PORT, ECHO_PORT] {
        let a = SocketAddr::from((addr, port));
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(a).is_ok()),
            "stub {name} did not listen on {a}"
        );
    }
    child
}

/// A loopback address where nothing listens on `port` (connections are refused).
pub fn refused_address(port: u16) -> Ipv4Addr {
    try_pick_address(&[port]).expect("a free loopback address")
}

/// Each public key line of `public_keys` with `keygen`'s options for a node at `addr`
/// (kubelet, HTTPS and echo ports) and the extra `permits`.
fn authorize_lines(addr: &str, permits: &[String], public_keys: &str) -> String {
    let opts = kube_ssh_tunnel::ssh::authorized::authorized_options(
        Some(addr),
        &[HTTP_PORT, HTTPS_PORT, ECHO_PORT],
        &[],
        permits,
    );
    public_keys
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{opts} {l}\n"))
        .collect()
}

/// A free loopback address where nothing listens on any of `ports` (50 random tries).
pub(crate) fn try_pick_address(ports: &[u16]) -> Option<Ipv4Addr> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..50 {
        let a = Ipv4Addr::new(
            127,
            rng.random_range(16..=250),
            rng.random_range(0..=255),
            rng.random_range(2..=254),
        );
        let free = ports
            .iter()
            .all(|p| TcpListener::bind(SocketAddr::from((a, *p))).is_ok());
        if free {
            return Some(a);
        }
    }
    None
}

/// A free loopback address and the SSH port to use there: 22 as root (like a real node),
/// unless something (a system sshd on 0.0.0.0:22) holds it everywhere; then 2222.
fn pick_address() -> (Ipv4Addr, u16) {
    let candidates: &[u16] = if is_root() { &[22, 2222] } else { &[2222] };
    for &ssh_port in candidates {
        if let Some(a) = try_pick_address(&[ssh_port, HTTP_PORT, HTTPS_PORT, ECHO_PORT]) {
            return (a, ssh_port);
        }
    }
    panic!("no free loopback address found for a test node");
}

/// One test node: sshd + kubelet stub on their own loopback address (or in a namespace).
pub struct TestNode {
    pub name: String,
    pub addr: Ipv4Addr,
    /// This node's pod CIDR (a loopback /24) and the address its pod stub uses in it.
    pub pod_cidr: ipnet::IpNet,
    pub pod_addr: Ipv4Addr,
    pod_stub: Mutex<Option<Child>>,
    /// Extra permitopen entries of this node's authorized_keys (pod and service addresses).
    permits: Vec<String>,
    pub ssh_port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    sshd: Mutex<Option<Child>>,
    stub: Mutex<Option<Child>>,
    /// The node's namespace, when it lives in one (dropped after its processes).
    pub netns: Option<Netns>,
}

impl TestNode {
    /// Starts a node in a fresh network namespace (root only; see `can_use_netns`).
    pub fn start_in_netns(name: &str, root: &Path, public_keys: &str, ca: &TestCa) -> TestNode {
        Self::start_placed(name, root, public_keys, ca, Some(Netns::create()))
    }

    fn start_placed(
        name: &str,
        root: &Path,
        public_keys: &str,
        ca: &TestCa,
        netns: Option<Netns>,
    ) -> TestNode {
        Self::start_full(name, root, public_keys, ca, netns, None)
    }

    pub(crate) fn start_full(
        name: &str,
        root: &Path,
        public_keys: &str,
        ca: &TestCa,
        netns: Option<Netns>,
        service: Option<Ipv4Addr>,
    ) -> TestNode {
        let (addr, ssh_port) = match &netns {
            Some(ns) => (ns.node_addr, 22),
            None => pick_address(),
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        keygen(&dir.join("ssh_host_ed25519_key"), "ed25519", None);
        // The kubelet stub's serving certificate, for the node's address (like a kubelet's).
        ca.issue(&dir, "kubelet", &[addr.to_string()], false)
            .unwrap();
        let template = std::fs::read_to_string(repo().join("tests/node/sshd_config.template"))
            .expect("tests/node/sshd_config.template");
        let config = dir.join("sshd_config");
        let pod_addr = {
            let a = try_pick_address(&[HTTP_PORT, ECHO_PORT]).expect("pod address");
            Ipv4Addr::new(127, a.octets()[1], a.octets()[2], 10)
        };
        let pod_cidr: ipnet::IpNet =
            format!("127.{}.{}.0/24", pod_addr.octets()[1], pod_addr.octets()[2])
                .parse()
                .unwrap();
        // The client keys go in with the options `keygen` prints (port forwarding only, a
        // refusing forced command, permitopen for the node's ports), plus the pod and service
        // addresses, as an operator adds them.
        let mut permits = vec![format!("{pod_addr}:*")];
        permits.extend(service.map(|svc| format!("{svc}:*")));
        std::fs::write(
            dir.join("authorized_keys"),
            authorize_lines(&addr.to_string(), &permits, public_keys),
        )
        .expect("authorized_keys");
        // Each sshd may only forward to its own node's services, its pods and the services.
        let mut permit =
            format!("{addr}:{HTTP_PORT} {addr}:{HTTPS_PORT} {addr}:{ECHO_PORT} {pod_addr}:*");
        if let Some(svc) = service {
            permit.push_str(&format!(" {svc}:*"));
        }
        std::fs::write(
            &config,
            template
                .replace("@PORT@", &ssh_port.to_string())
                .replace("@LISTEN@", &addr.to_string())
                .replace("@DIR@", &dir.display().to_string())
                .replace("@PERMITOPEN@", &permit)
                .replace("@LOGLEVEL@", "VERBOSE"),
        )
        .expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").ok();
        run_ok(Command::new(SSHD).arg("-t").arg("-f").arg(&config));
        let node = TestNode {
            name: name.to_string(),
            addr,
            pod_cidr,
            pod_addr,
            pod_stub: Mutex::new(None),
            ssh_port,
            dir,
            config,
            sshd: Mutex::new(None),
            stub: Mutex::new(None),
            netns,
            permits,
        };
        node.start_stub();
        node.start_sshd();
        node
    }

    /// A command that runs `program` in this node's namespace (or here).
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, program]);
                c
            }
            None => Command::new(program),
        }
    }

    /// Starts the kubelet stub (again) and waits until it listens.
    pub fn start_stub(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stub.log"))
            .expect("stub log");
        let child = self
            .command("python3")
            .arg(repo().join("tests/node/kubelet_stub.py"))
            .args(["--listen", &self.addr.to_string()])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--echo-port", &ECHO_PORT.to_string()])
            .args(["--https-port", &HTTPS_PORT.to_string()])
            .arg("--tls-cert")
            .arg(self.dir.join("kubelet.crt"))
            .arg("--tls-key")
            .arg(self.dir.join("kubelet.key"))
            .args(["--name", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kubelet stub (python3)");
        *self.stub.lock().unwrap() = Some(child);
        for port in [HTTP_PORT, HTTPS_PORT, ECHO_PORT] {
            let a = SocketAddr::from((self.addr, port));
            assert!(
                wait_until(Duration::from_secs(10), || TcpStream::connect(a).is_ok()),
                "kubelet stub of {} did not listen on {a}",
                self.name
            );
        }
    }

    /// Starts (or restarts) this node's sshd and waits until it accepts TCP.
    pub fn start_sshd(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sshd.log"))
            .expect("sshd log");
        let child = self
            .command(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        *self.sshd.lock().unwrap() = Some(child);
        let a = self.ssh_addr();
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(a).is_ok()),
            "sshd of {} did not listen on {a}; log:\n{}",
            self.name,
            self.sshd_log()
        );
    }

    /// Starts a stub playing a pod of this node, on `pod_addr` (answers /whoami with
    /// `pod-on-NODE`).
    pub fn start_pod_stub(&self) {
        let child = spawn_stub(
            &self.command("python3"),
            self.pod_addr,
            &format!("pod-on-{}", self.name),
            &self.dir.join("pod.log"),
        );
        *self.pod_stub.lock().unwrap() = Some(child);
    }

    /// Kills the kubelet stub (its ports then refuse connections).
    pub fn kill_stub(&self) {
        if let Some(mut c) = self.stub.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The listener sshd's PID, if running.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.lock().unwrap().as_ref().map(|c| c.id())
    }

    /// Number of SSH connections the node's sshd serves (its per-connection children).
    ///
    /// Panics when the listener sshd is not running (never started, killed by `kill_sshd`
    /// and not restarted, or dead and unreaped for any other reason) or /proc cannot be
    /// read: a dead sshd serves no connection, so a 0 would pass every "the connection
    /// closed" wait. A sshd frozen by `stop_sshd` is running.
    pub fn ssh_connections(&self) -> usize {
        let mut sshd = self.sshd.lock().unwrap();
        let Some(child) = sshd.as_mut() else {
            drop(sshd);
            panic!(
                "ssh_connections: the sshd of {} is not running (never started, or killed and not restarted)",
                self.name
            );
        };
        let pid = child.id();
        // try_wait reaps a dead sshd (a zombie included) and says how it ended. A reaped
        // sshd leaves the node, so that nothing signals its PID (which may be reused) later.
        let ended = child.try_wait();
        if matches!(ended, Ok(Some(_))) {
            sshd.take();
        }
        drop(sshd);
        match ended {
            Ok(None) => {}
            Ok(Some(status)) => panic!(
                "ssh_connections: the sshd of {} (pid {pid}) died unexpectedly ({status}); the end of its log:\n{}",
                self.name,
                {
                    let log = self.sshd_log();
                    let lines: Vec<&str> = log.lines().collect();
                    lines[lines.len().saturating_sub(20)..].join("\n")
                }
            ),
            Err(e) => panic!(
                "ssh_connections: cannot tell whether the sshd of {} (pid {pid}) runs: {e}",
                self.name
            ),
        }
        try_children_of(pid)
            .unwrap_or_else(|e| {
                panic!(
                    "ssh_connections: cannot list the children of the sshd of {} (pid {pid}) in /proc: {e}",
                    self.name
                )
            })
            .len()
    }

    /// Kills sshd (listener and its per-connection processes) with SIGKILL and reaps it.
    pub fn kill_sshd(&self) {
        if let Some(mut c) = self.sshd.lock().unwrap().take() {
            let kids = children_of(c.id());
            signal(c.id(), libc::SIGKILL);
            for k in kids {
                signal(k, libc::SIGCONT);
                signal(k, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// Freezes sshd and its connections (TCP stays open, nothing answers).
    pub fn stop_sshd(&self) {
        if let Some(pid) = self.sshd_pid() {
            for k in children_of(pid) {
                signal(k, libc::SIGSTOP);
            }
            signal(pid, libc::SIGSTOP);
        }
    }

    /// Resumes a frozen sshd.
    pub fn cont_sshd(&self) {
        if let Some(pid) = self.sshd_pid() {
            signal(pid, libc::SIGCONT);
            for k in children_of(pid) {
                signal(k, libc::SIGCONT);
            }
        }
    }

    /// Kills and starts sshd again (same host key and config).
    pub fn restart_sshd(&self) {
        self.kill_sshd();
        self.start_sshd();
    }

    /// `addr:ssh_port`.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.ssh_port))
    }

    /// `NAME=ADDR:PORT` as `--node` takes it.
    pub fn spec(&self) -> String {
        format!("{}={}:{}", self.name, self.addr, self.ssh_port)
    }

    /// The library's view of this node (with its pod CIDR).
    pub fn node(&self) -> Node {
        let mut n = Node::parse_spec(&self.spec()).expect("valid node spec");
        n.pod_cidrs = vec![self.pod_cidr];
        n
    }

    /// The host public key line (`ssh-ed25519 AAAA… comment`).
    pub fn host_key_pub(&self) -> String {
        std::fs::read_to_string(self.dir.join("ssh_host_ed25519_key.pub")).expect("host key")
    }

    /// The known_hosts line for this node.
    pub fn known_hosts_line(&self) -> String {
        let host = if self.ssh_port == 22 {
            self.addr.to_string()
        } else {
            format!("[{}]:{}", self.addr, self.ssh_port)
        };
        let public = self.host_key_pub();
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        format!("{host} {}\n", key.join(" "))
    }

    /// What sshd logged so far.
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Appends a line to this node's sshd_config (takes effect at the next (re)start).
    pub fn add_sshd_config(&self, line: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replaces the node's host key with a fresh one (takes effect at the next (re)start).
    pub fn regenerate_host_key(&self) {
        let key = self.dir.join("ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        keygen(&key, "ed25519", None);
    }

    /// `public_keys` (one public key per line) with the options `keygen` generates for this
    /// node, plus its pod and service addresses: what `set_authorized_keys` should get to
    /// authorize a key the normal way.
    pub fn authorize(&self, public_keys: &str) -> String {
        authorize_lines(&self.addr.to_string(), &self.permits, public_keys)
    }

    /// Replaces authorized_keys (e.g. empty to revoke the client).
    pub fn set_authorized_keys(&self, text: &str) {
        std::fs::write(self.dir.join("authorized_keys"), text).expect("authorized_keys");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // get_mut works on a poisoned mutex too: cleanup must happen after any panic.
        for m in [&mut self.stub, &mut self.pod_stub] {
            if let Some(mut c) = m.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let sshd = self
            .sshd
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut c) = sshd {
            let kids = children_of(c.id());
            signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            for k in kids {
                signal(k, libc::SIGCONT);
                signal(k, libc::SIGKILL);
            }
            let _ = c.wait();
        }
        // `netns` drops after this body: the namespace goes once its processes are gone.
    }
}
