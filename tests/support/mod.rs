//! Test harness: real OpenSSH `sshd` processes as cluster nodes.
//!
//! Each node gets its own loopback address (127.x.y.z, so routing by node IP is real), its
//! own host key, sshd_config (rendered from `tests/node/sshd_config.template`) and
//! authorized_keys in a temp dir, and a kubelet stub (`tests/node/kubelet_stub.py`) on the
//! same address. Faults: kill, SIGSTOP/SIGCONT and restart a node's sshd. Everything started
//! is stopped by PID when the node is dropped, which also happens on panic (unwinding).
#![allow(dead_code)]

pub mod daemon;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube_ssh_tunnel::{Node, SshSettings};
use tempfile::TempDir;

/// Port of the kubelet stub's HTTP side (the real kubelet port).
pub const HTTP_PORT: u16 = 10250;
/// Port of the kubelet stub's HTTPS side (same endpoints, cert signed by the cluster's CA).
pub const HTTPS_PORT: u16 = 10251;
/// Port of the kubelet stub's raw TCP echo.
pub const ECHO_PORT: u16 = 10260;

/// The test clusters' certificate authority is the demo's.
pub use kube_ssh_tunnel::demo::pki::Ca as TestCa;

const SSHD: &str = "/usr/sbin/sshd";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with `stdin` fed to it, killing it (by PID) when it runs past `limit`; its
/// output, or why there is none.
pub fn run_bounded(
    cmd: &mut Command,
    stdin: &[u8],
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::{Read, Write};
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    // Threads feed and drain the pipes so that a chatty command cannot block on a full pipe.
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = feeder.join();
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs a command (at most a minute) and returns its stdout (panics on failure).
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, b"", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ssh-keygen -q -N '' -t TYPE [-b BITS] -f PATH -C COMMENT`.
pub fn keygen(path: &Path, kind: &str, bits: Option<u32>) {
    let mut c = Command::new("ssh-keygen");
    c.args([
        "-q",
        "-N",
        "",
        "-t",
        kind,
        "-C",
        "kube-ssh-tunnel-test",
        "-f",
    ])
    .arg(path);
    if let Some(b) = bits {
        c.args(["-b", &b.to_string()]);
    }
    run_ok(&mut c);
}

fn current_user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_string()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to `pid` (ignoring a process that is already gone).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with a pid we started; an error only means it is gone.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// PIDs of the direct children of `pid` (from /proc).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..." — comm may contain spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let _state = f.next();
        if f.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// `SHA256:…` fingerprint of an OpenSSH public key line.
pub fn fingerprint(pub_line: &str) -> String {
    let key: russh::keys::PublicKey = pub_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .parse()
        .unwrap();
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// Resident set size of this process in bytes (from /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Starts a kubelet stub (plain HTTP and echo) named `name` on `addr` and waits for it.
fn spawn_stub(base: &Command, addr: Ipv4Addr, name: &str, log: &Path) -> Child {
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

/// An ssh-agent of our own on a socket in `dir`; killed by PID when dropped.
pub struct Agent {
    pub socket: PathBuf,
    child: Child,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "ssh-agent socket"
        );
        Agent { socket, child }
    }

    /// `ssh-add KEY` into this agent.
    pub fn add(&self, key: &Path) {
        run_ok(
            Command::new("ssh-add")
                .env("SSH_AUTH_SOCK", &self.socket)
                .arg(key),
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends kube-apiserver's CONNECT request on a Unix socket (blocking) and returns the stream
/// and the response head (read byte by byte, never past its end).
pub fn connect_uds(sock: &Path, target: &str) -> (std::os::unix::net::UnixStream, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
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

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn try_pick_address(ports: &[u16]) -> Option<Ipv4Addr> {
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
    fn create() -> Netns {
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
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
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
        run_ok(Command::new("ip").args([
            "-n",
            &self.name,
            "link",
            "set",
            &self.inner_if,
            if up { "up" } else { "down" },
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
    }
}

/// Deletes `kst-PID-*` namespaces whose creating process is gone (a test run killed with
/// SIGKILL cannot clean up after itself).
fn reap_stale_netns() {
    let Ok(out) = Command::new("ip")
        .args(["netns", "list"])
        .stdin(Stdio::null())
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("kst-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// True when network namespaces can be made here (root with `ip`).
pub fn can_use_netns() -> bool {
    is_root()
        && Command::new("ip")
            .arg("-V")
            .stdin(Stdio::null())
            .output()
            .is_ok()
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

    fn start_full(
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
    pub fn ssh_connections(&self) -> usize {
        self.sshd_pid().map(|p| children_of(p).len()).unwrap_or(0)
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
