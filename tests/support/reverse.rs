//! Reverse mode helpers shared by tests/reverse*.rs: a reverse daemon's keys and flags, a
//! node's `ssh -N -R 0` in a namespace (stopped by PID), the daemon's view of a node through
//! its admin socket, and SHA-256-checked echoes through the CONNECT front.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::daemon::Daemon;
use super::{ECHO_PORT, HTTP_PORT, keygen, run_bounded, wait_until};

pub fn require_root(why: &str) {
    assert!(
        super::is_root(),
        "this test needs root ({why}); run it as root, as .ci/run does"
    );
}

pub fn require_tool(tool: &str, arg: &str) {
    let ran = run_bounded(Command::new(tool).arg(arg), b"", super::TOOL_LIMIT);
    assert!(
        ran.is_ok(),
        "this test needs `{tool}` (OpenSSH client, iproute2)"
    );
}

/// A free TCP port on `ip` (bound and released: the daemon binds it next).
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The keys and files of one reverse daemon: its listener's host key, the node keys, the
/// authorized file, and a dummy client key for the (unused) forward side.
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new(nodes: &[&str]) -> Keys {
        let dir = tempfile::Builder::new()
            .prefix("kst-reverse-")
            .tempdir()
            .unwrap();
        let k = Keys { dir };
        keygen(&k.path("host_key"), "ed25519", None);
        keygen(&k.path("client"), "ed25519", None);
        keygen(&k.path("stranger"), "ed25519", None);
        std::fs::write(k.path("known_hosts"), "").unwrap();
        let mut authorized = String::new();
        for n in nodes {
            keygen(&k.path(n), "ed25519", None);
            let public = std::fs::read_to_string(k.path(n).with_extension("pub")).unwrap();
            authorized.push_str(&format!("{n} {public}"));
        }
        std::fs::write(k.path("authorized"), authorized).unwrap();
        k
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// The known_hosts the nodes' ssh uses: the listener's host key at `addr`.
    pub fn node_known_hosts(&self, addr: SocketAddr) -> PathBuf {
        let public = std::fs::read_to_string(self.path("host_key").with_extension("pub")).unwrap();
        // One file per listener, always written whole (a new file renamed over the old): ssh
        // clients started at the same time must never read a half-written file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!("node_known_hosts-{}-{}", addr.ip(), addr.port());
        let f = self.path(&name);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.path(&format!("{name}.{n}.tmp"));
        std::fs::write(&tmp, format!("[{}]:{} {public}", addr.ip(), addr.port())).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        f
    }

    /// `run` with the reverse listener on `listen` and `nodes` (NAME=ADDR) in the node set.
    pub fn daemon(&self, listen: SocketAddr, nodes: &[String]) -> Daemon {
        self.daemon_with(listen, nodes, &[])
    }

    /// `daemon` with more flags.
    pub fn daemon_with(&self, listen: SocketAddr, nodes: &[String], extra: &[&str]) -> Daemon {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--ssh-tunnel".into(),
            "--ssh-user".into(),
            "kube-tunnel".into(),
            "--ssh-keyfile".into(),
            self.path("client").display().to_string(),
            "--ssh-known-hosts".into(),
            self.path("known_hosts").display().to_string(),
            "--proxy-uds".into(),
            self.path("proxy.sock").display().to_string(),
            "--admin-uds".into(),
            self.path("admin.sock").display().to_string(),
            "--reverse-listen".into(),
            listen.to_string(),
            "--reverse-host-key".into(),
            self.path("host_key").display().to_string(),
            "--reverse-authorized".into(),
            self.path("authorized").display().to_string(),
            "--connect-timeout".into(),
            "3s".into(),
            "--node-port".into(),
            format!("{HTTP_PORT},{ECHO_PORT}"),
            "--backoff-min".into(),
            "100ms".into(),
            "--backoff-max".into(),
            "1s".into(),
        ];
        for n in nodes {
            a.push("--node".into());
            a.push(n.clone());
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        let d = Daemon::start(&a);
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
                listen
            )
            .is_ok()),
            "the reverse listener did not come up on {listen}: {}",
            d.log()
        );
        d
    }

    /// OpenSSH client arguments to reach the listener at `addr` as `user` with key `key`.
    pub fn ssh_args(&self, addr: SocketAddr, user: &str, key: &str) -> Vec<String> {
        let kh = self.node_known_hosts(addr);
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", kh.display()),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            &format!("IdentityFile={}", self.path(key).display()),
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ServerAliveInterval=15",
            "-p",
            &addr.port().to_string(),
            "-l",
            user,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// The node's state in the daemon's /status (admin socket), or "" when it is not listed.
pub fn node_state(admin: &Path, node: &str) -> String {
    node_status(admin, node).0
}

/// The node's (state, reason) in the daemon's /status (admin socket); empty when not listed.
pub fn node_status(admin: &Path, node: &str) -> (String, String) {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(admin) else {
        return Default::default();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let text = String::from_utf8_lossy(&r);
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return Default::default();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Default::default();
    };
    let Some(n) = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
    else {
        return Default::default();
    };
    let field = |k: &str| n[k].as_str().unwrap_or("").to_string();
    (field("state"), field("reason"))
}

/// Removes the unreachable route (root namespace) when dropped.
pub struct Unreachable(pub Ipv4Addr);

impl Unreachable {
    pub fn add(a: Ipv4Addr) -> Unreachable {
        super::ip(&["route", "add", "unreachable", &format!("{a}/32")]);
        Unreachable(a)
    }
}

impl Drop for Unreachable {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("ip").args(["route", "del", "unreachable", &format!("{}/32", self.0)]),
            b"",
            super::TOOL_LIMIT,
        );
    }
}

/// A child process stopped by PID when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connect to `addr:port` inside `ns` succeeds.
pub fn connects_in(ns: &str, addr: Ipv4Addr, port: u16) -> bool {
    let o = run_bounded(
        Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "/bin/bash",
            "-c",
            r#"exec 3<>"/dev/tcp/$0/$1" && echo connected"#,
            &addr.to_string(),
            &port.to_string(),
        ]),
        b"",
        Duration::from_secs(10),
    );
    o.is_ok_and(|o| o.status.success() && o.stdout_text().contains("connected"))
}

/// Sends `len` random bytes through the echo behind `target` (CONNECT on the daemon's
/// front) and returns (SHA-256 sent, SHA-256 received, the response head).
pub fn echo_through(proxy: &Path, target: &str, len: usize) -> (String, String, String) {
    let (s, head) = super::connect_uds(proxy, target);
    if !head.starts_with("HTTP/1.1 200") {
        return (String::new(), String::new(), head);
    }
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use rand::RngCore;
        let mut rng = rand::rng();
        let mut h = Sha256::new();
        let mut left = len;
        let mut buf = vec![0u8; 64 << 10];
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill_bytes(&mut buf[..n]);
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
        format!("{:x}", h.finalize())
    });
    let mut r = s;
    r.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    while got < len + 1 {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n;
            }
            Err(e) => panic!("reading the echo after {got} bytes: {e}"),
        }
    }
    let sent = writer.join().unwrap();
    assert_eq!(got, len, "bytes echoed");
    (sent, format!("{:x}", h.finalize()), head)
}

/// The node's `ssh -N -R 0` inside `ns` to the listener at `addr`.
pub fn node_ssh(keys: &Keys, ns: &str, addr: SocketAddr, node: &str) -> Proc {
    let log = std::fs::File::create(keys.path(&format!("{node}-ssh.log"))).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "ssh", "-N", "-R", "0"])
        .args(keys.ssh_args(addr, node, node))
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ssh (openssh-client) in the namespace");
    Proc(child)
}

impl Keys {
    /// Makes this daemon's node keys and authorized file those of `other` (the same nodes,
    /// with the same keys, dial in to both daemons).
    pub fn share_node_keys(&self, other: &Keys, nodes: &[&str]) {
        for n in nodes {
            std::fs::copy(other.path(n), self.path(n)).unwrap();
            std::fs::copy(
                other.path(n).with_extension("pub"),
                self.path(n).with_extension("pub"),
            )
            .unwrap();
        }
        std::fs::copy(other.path("authorized"), self.path("authorized")).unwrap();
    }
}

/// The kubelet stub (HTTP, echo) inside `ns` on every address there (0.0.0.0), answering
/// /whoami with `name`; waits until `wait_on`'s echo port takes connections.
pub fn stub_in_ns(keys: &Keys, ns: &str, name: &str, wait_on: &[Ipv4Addr]) -> Proc {
    let log = std::fs::File::create(keys.path(&format!("{name}-stub.log"))).unwrap();
    let stub = Proc(
        Command::new("ip")
            .args(["netns", "exec", ns, "python3"])
            .arg(super::repo().join("tests/node/kubelet_stub.py"))
            .args(["--listen", "0.0.0.0"])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--echo-port", &ECHO_PORT.to_string()])
            .args(["--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the kubelet stub (python3) in the namespace"),
    );
    for a in wait_on {
        assert!(
            wait_until(Duration::from_secs(15), || connects_in(ns, *a, ECHO_PORT)),
            "the kubelet stub did not listen on {a}:{ECHO_PORT} in {ns}"
        );
    }
    stub
}

/// `GET /whoami` of the kubelet stub behind `target` (CONNECT on the daemon's front): the
/// stub's "NAME ADDRESS:PORT", or the CONNECT's answer when it was not 200.
pub fn whoami_through(proxy: &Path, target: &str) -> String {
    let (mut s, head) = super::connect_uds(proxy, target);
    if !head.starts_with("HTTP/1.1 200") {
        return head;
    }
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let text = String::from_utf8_lossy(&r).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.trim().to_string(),
        None => text,
    }
}

/// The peer address the daemon logged for `node`'s reverse sessions ("reverse session
/// ready"), as they appear in its log.
pub fn session_peers(log: &str, node: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("reverse session ready") && l.contains(&format!("node={node} ")))
        .filter_map(|l| l.split("peer=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(|p| p.trim_matches('"').to_string())
        .collect()
}

/// A node's `ssh -N -R 0` from the root namespace (loopback) to the listener at `addr`, as
/// `user` with key `key` and `extra` options; its stderr goes to `LABEL-ssh.log` in the keys'
/// directory.
pub fn node_ssh_here(
    keys: &Keys,
    addr: SocketAddr,
    user: &str,
    key: &str,
    extra: &[&str],
    label: &str,
) -> Proc {
    let log = std::fs::File::create(keys.path(&format!("{label}-ssh.log"))).unwrap();
    let child = Command::new("ssh")
        .args(["-N", "-R", "0"])
        .args(keys.ssh_args(addr, user, key))
        .args(extra)
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ssh (openssh-client)");
    Proc(child)
}

/// The stderr log of the ssh started with `label` (`node_ssh_here`).
pub fn ssh_log(keys: &Keys, label: &str) -> String {
    std::fs::read_to_string(keys.path(&format!("{label}-ssh.log"))).unwrap_or_default()
}

/// Runs the OpenSSH client once against the listener (bounded): `ssh -N -R 0` as `user`
/// with key `key` and `extra` options; returns (exit code, stderr).
pub fn ssh_forward_once(
    keys: &Keys,
    addr: SocketAddr,
    user: &str,
    key: &str,
    extra: &[&str],
) -> (i32, String) {
    let o = run_bounded(
        Command::new("ssh")
            .args(["-N", "-R", "0"])
            .args(keys.ssh_args(addr, user, key))
            .args(extra)
            .arg(addr.ip().to_string()),
        b"",
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("ssh as {user} was not turned away (was it let in?): {e}"));
    (o.code(), o.stderr_text())
}

/// A loopback address for a reverse daemon's listener, with a free port.
pub fn loopback_listen() -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ))
}

/// A kubelet stub for node `name` on a free loopback address of its own (HTTP_PORT and
/// ECHO_PORT), stopped by PID when dropped; returns its address once its echo port answers.
pub fn kubelet_stub_here(keys: &Keys, name: &str) -> (Ipv4Addr, Proc) {
    let addr = super::node::try_pick_address(&[HTTP_PORT, ECHO_PORT])
        .expect("a free loopback address for the kubelet stub");
    let log = std::fs::File::create(keys.path(&format!("{name}-stub.log"))).unwrap();
    let stub = Proc(
        Command::new("python3")
            .arg(super::repo().join("tests/node/kubelet_stub.py"))
            .args(["--listen", &addr.to_string()])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--echo-port", &ECHO_PORT.to_string()])
            .args(["--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the kubelet stub (python3)"),
    );
    assert!(
        super::wait_until(Duration::from_secs(15), || std::net::TcpStream::connect((
            addr, ECHO_PORT
        ))
        .is_ok()),
        "the kubelet stub did not listen on {addr}:{ECHO_PORT}: {}",
        std::fs::read_to_string(keys.path(&format!("{name}-stub.log"))).unwrap_or_default()
    );
    (addr, stub)
}

/// The command line of a systemd unit's `ExecStart=`, as systemd would split it here:
/// `\` continuations joined, then split on whitespace (the units `node-setup` writes use no
/// quoting).
pub fn unit_exec_start(unit: &str) -> Vec<String> {
    let mut joined = String::new();
    let mut inside = false;
    for line in unit.lines() {
        let line = if inside {
            line
        } else if let Some(rest) = line.strip_prefix("ExecStart=") {
            inside = true;
            rest
        } else {
            continue;
        };
        match line.trim_end().strip_suffix('\\') {
            Some(more) => {
                joined.push_str(more);
                joined.push(' ');
            }
            None => {
                joined.push_str(line);
                break;
            }
        }
    }
    joined.split_whitespace().map(str::to_string).collect()
}

/// Starts a unit's ExecStart command exactly as written (`unit_exec_start`); stderr goes to
/// `LABEL-ssh.log` in the keys' directory.
pub fn run_unit(keys: &Keys, unit: &Path, label: &str) -> Proc {
    let text = std::fs::read_to_string(unit).unwrap();
    let argv = unit_exec_start(&text);
    assert!(
        !argv.is_empty(),
        "no ExecStart in {}:\n{text}",
        unit.display()
    );
    let log = std::fs::File::create(keys.path(&format!("{label}-ssh.log"))).unwrap();
    Proc(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {argv:?} from {}: {e}", unit.display())),
    )
}

/// Rewrites the authorized file of `keys` with `mode=MODE` after the name of each node in
/// `modes` (`(node, mode)`); other lines stay.
pub fn set_modes(keys: &Keys, modes: &[(&str, &str)]) {
    let text = std::fs::read_to_string(keys.path("authorized")).unwrap();
    let out: String = text
        .lines()
        .map(|l| {
            let (name, rest) = l.split_once(' ').unwrap_or((l, ""));
            match modes.iter().find(|(n, _)| *n == name) {
                Some((_, m)) => format!("{name} mode={m} {rest}\n"),
                None => format!("{l}\n"),
            }
        })
        .collect();
    std::fs::write(keys.path("authorized"), out).unwrap();
}

/// `run` for nodes of `cluster` (dialled with its client keys and known_hosts; sockets in its
/// directory) with the reverse listener of `keys` on `listen`; `nodes` as `--node` values,
/// then `extra` (which may replace the defaults for the connect timeout, node ports and
/// backoff).
pub fn cluster_daemon(
    cluster: &super::Cluster,
    keys: &Keys,
    listen: SocketAddr,
    nodes: &[String],
    extra: &[&str],
) -> Daemon {
    let mut a = cluster.daemon_args();
    for (flag, value) in [
        ("--reverse-listen", listen.to_string()),
        (
            "--reverse-host-key",
            keys.path("host_key").display().to_string(),
        ),
        (
            "--reverse-authorized",
            keys.path("authorized").display().to_string(),
        ),
        ("--connect-timeout", "3s".into()),
        ("--node-port", format!("{HTTP_PORT},{ECHO_PORT}")),
        ("--backoff-min", "100ms".into()),
        ("--backoff-max", "1s".into()),
    ] {
        // A flag `extra` sets wins over these defaults.
        if !extra.contains(&flag) {
            a.push(flag.into());
            a.push(value);
        }
    }
    for n in nodes {
        a.push("--node".into());
        a.push(n.clone());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::start(&a);
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "the reverse listener did not come up on {listen}: {}",
        d.log()
    );
    d
}

/// A node's `ssh -N -R 0` to the listener at `addr`, run here (no namespace); its stderr goes
/// to `NODE-ssh-TAG.log` in the keys' directory.
pub fn local_node_ssh(keys: &Keys, addr: SocketAddr, node: &str, tag: &str) -> Proc {
    let log = std::fs::File::create(keys.path(&format!("{node}-ssh-{tag}.log"))).unwrap();
    let child = Command::new("ssh")
        .args(["-N", "-R", "0"])
        .args(keys.ssh_args(addr, node, node))
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ssh (openssh-client)");
    Proc(child)
}

/// The body of `GET path` on the daemon's admin socket ("" when it does not answer).
pub fn admin_get(admin: &Path, path: &str) -> String {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(admin) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let text = String::from_utf8_lossy(&r).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The node's entry of /status as JSON (Null when not listed or not answered).
pub fn node_json(admin: &Path, node: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status")).unwrap_or_default();
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .cloned()
        .unwrap_or_default()
}

/// Opens a CONNECT to `target` on the front at `proxy` and echoes one byte through it;
/// bounded by the socket timeouts (20 s). Err with what went wrong.
pub fn one_byte_echo(proxy: &Path, target: &str) -> Result<(), String> {
    let (mut s, head) = super::connect_uds(proxy, target);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head);
    }
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"x").map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).map_err(|e| e.to_string())?;
    if &b != b"x" {
        return Err(format!("echoed {b:?}"));
    }
    Ok(())
}
