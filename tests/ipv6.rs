//! An IPv6 node end to end: a real sshd in a network namespace of our own, on a ULA address
//! (fd00::/8, inside the namespace and its veth pair only), reached with
//! `--node NAME=[ADDR]:PORT`, trusted through a `[ADDR]:PORT` known_hosts entry, authorized
//! with the line `keygen` prints for it, carrying a CONNECT to `[ADDR]:10250` and to a pod
//! IPv6 in the node's pod CIDR. Needs root and `ip` (`.ci/run` runs as root).

mod support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::Daemon;
use support::ip;

/// The namespace, its veth pair and what runs inside; all stopped and removed when dropped.
struct V6Node {
    ns: String,
    addr: Ipv6Addr,
    pod: Ipv6Addr,
    children: Vec<Child>,
}

impl Drop for V6Node {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = support::run_bounded(
            Command::new("ip").args(["netns", "del", &self.ns]),
            b"",
            support::TOOL_LIMIT,
        );
    }
}

impl V6Node {
    fn create() -> V6Node {
        use rand::Rng;
        let tag: u16 = rand::rng().random_range(1..0xffff);
        let ns = format!("kst-{}-v6{tag:04x}", std::process::id());
        let (host_if, inner_if) = (format!("k6h{tag:04x}"), format!("k6n{tag:04x}"));
        let host: Ipv6Addr = format!("fd00:5e:{tag:x}::1").parse().unwrap();
        let addr: Ipv6Addr = format!("fd00:5e:{tag:x}::2").parse().unwrap();
        let pod: Ipv6Addr = format!("fd00:5e:{tag:x}:1::10").parse().unwrap();
        ip(&["netns", "add", &ns]);
        let node = V6Node {
            ns: ns.clone(),
            addr,
            pod,
            children: Vec::new(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &ns]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{host}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let v6 =
            |a: String, dev: &str| ip(&["-n", &ns, "-6", "addr", "add", &a, "dev", dev, "nodad"]);
        v6(format!("{addr}/64"), &inner_if);
        v6(format!("{pod}/128"), "lo");
        ip(&["-n", &ns, "link", "set", &inner_if, "up"]);
        node
    }

    fn spawn(&mut self, program: &str, args: &[&str], log: &std::path::Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }
}

fn wait_listening(a: SocketAddr) {
    assert!(
        support::wait_until(Duration::from_secs(15), || TcpStream::connect_timeout(
            &a,
            Duration::from_millis(500)
        )
        .is_ok()),
        "nothing listens on {a}"
    );
}

/// GET /whoami through the daemon's CONNECT socket; the status line and body.
fn whoami(sock: &std::path::Path, target: &str) -> String {
    let (mut s, head) = support::connect_uds(sock, target);
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {head}");
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn an_ipv6_node_in_its_own_namespace_works_end_to_end() {
    assert!(
        support::can_use_netns(),
        "this test needs root and iproute2's `ip` (apt-get install -y iproute2; run as root, as .ci/run does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut node = V6Node::create();
    let (addr, pod) = (node.addr, node.pod);
    const SSH_PORT: u16 = 2222;
    let spec = format!("node6=[{addr}]:{SSH_PORT}");

    // keygen's key and its authorized_keys line for this node (permitopen "[ADDR]:10250"),
    // plus the pod address an operator adds.
    let key = d.join("id_ed25519");
    let out = support::run_ok(Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--node",
        &spec,
    ]));
    let line = out
        .lines()
        .find(|l| l.starts_with("restrict,port-forwarding,command="))
        .expect("keygen prints the line")
        .to_string();
    assert!(
        line.contains(&format!("permitopen=\"[{addr}]:10250\"")),
        "{line}"
    );
    let line = line.replacen(
        "permitopen=",
        &format!("permitopen=\"[{pod}]:*\",permitopen="),
        1,
    );
    std::fs::write(d.join("authorized_keys"), format!("{line}\n")).unwrap();

    // The node: host key, sshd on [ADDR]:2222 with the harness's sshd_config, kubelet and pod
    // stubs, all inside the namespace.
    support::keygen(&d.join("ssh_host_ed25519_key"), "ed25519", None);
    let template =
        std::fs::read_to_string(support::repo().join("tests/node/sshd_config.template")).unwrap();
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        template
            .replace("@PORT@", &SSH_PORT.to_string())
            .replace("@LISTEN@", &addr.to_string())
            .replace("@DIR@", &d.display().to_string())
            .replace("@PERMITOPEN@", &format!("[{addr}]:10250 [{pod}]:8080"))
            .replace("@LOGLEVEL@", "VERBOSE"),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").ok();
    let stub = support::repo().join("tests/node/kubelet_stub.py");
    let stub = stub.to_str().unwrap();
    node.spawn(
        "python3",
        &[
            stub,
            "--listen",
            &addr.to_string(),
            "--http-port",
            "10250",
            "--echo-port",
            "10260",
            "--name",
            "node6",
        ],
        &d.join("stub.log"),
    );
    node.spawn(
        "python3",
        &[
            stub,
            "--listen",
            &pod.to_string(),
            "--http-port",
            "8080",
            "--echo-port",
            "8081",
            "--name",
            "pod-on-node6",
        ],
        &d.join("pod.log"),
    );
    node.spawn(
        "/usr/sbin/sshd",
        &["-D", "-e", "-f", config.to_str().unwrap()],
        &d.join("sshd.log"),
    );
    wait_listening(SocketAddr::from((addr, SSH_PORT)));
    wait_listening(SocketAddr::from((addr, 10250)));

    // known_hosts with the `[ADDR]:PORT` entry OpenSSH writes for a port other than 22.
    let host_pub = std::fs::read_to_string(d.join("ssh_host_ed25519_key.pub")).unwrap();
    let host_key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let known_hosts = d.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("[{addr}]:{SSH_PORT} {}\n", host_key.join(" ")),
    )
    .unwrap();

    let user = support::current_user();
    let ssh = [
        "--ssh-tunnel".to_string(),
        "--ssh-user".into(),
        user,
        "--ssh-keyfile".into(),
        key.display().to_string(),
        "--ssh-known-hosts".into(),
        known_hosts.display().to_string(),
    ];

    // Standalone `dial` with --node NAME=[ADDR]:PORT, by node name (its kubelet port).
    let mut args = vec!["dial".to_string()];
    args.extend(ssh.iter().cloned());
    args.extend(["--node".to_string(), spec.clone(), "node6".into()]);
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(&args),
        b"GET /whoami HTTP/1.0\r\n\r\n",
        Duration::from_secs(60),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("node6"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The daemon, with the node (and its IPv6 pod CIDR) from a node file.
    let nodes = d.join("nodes.toml");
    std::fs::write(
        &nodes,
        format!(
            "[[nodes]]\nname = \"node6\"\naddress = \"{addr}\"\nssh_port = {SSH_PORT}\npod_cidrs = [\"{}/64\"]\n",
            ipnet::Ipv6Net::new(pod, 64).unwrap().trunc().network()
        ),
    )
    .unwrap();
    let proxy = d.join("proxy.sock");
    let mut args = vec!["run".to_string()];
    args.extend(ssh.iter().cloned());
    args.extend(
        [
            "--nodes",
            nodes.to_str().unwrap(),
            "--proxy-uds",
            proxy.to_str().unwrap(),
            "--admin-uds",
            d.join("admin.sock").to_str().unwrap(),
        ]
        .map(String::from),
    );
    let daemon = Daemon::start(&args);
    assert!(
        daemon.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}\nsshd: {}",
        daemon.log(),
        std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
    );
    // CONNECT [ADDR]:10250, in a non-canonical spelling too (sent to sshd canonical).
    let long = format!("{}", addr).replacen("fd00:5e:", "FD00:005E:", 1);
    for target in [format!("[{addr}]:10250"), format!("[{long}]:10250")] {
        let reply = whoami(&proxy, &target);
        assert!(reply.contains("node6"), "{target}: {reply}");
    }
    // A pod IPv6 in the node's pod CIDR.
    let reply = whoami(&proxy, &format!("[{pod}]:8080"));
    assert!(reply.contains("pod-on-node6"), "{reply}");
    drop(daemon);
}
