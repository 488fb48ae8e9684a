//! keygen's egress profiles against the real thing: `--allow cluster`'s nftables rules pass
//! `nft -c`, its key line lets a real sshd carry pod and service dials that the `kubelet`
//! line refuses, and, loaded in a network namespace of our own, the rules keep the tunnel's
//! user (here `nobody`) to the allowed addresses (judged before a kube-proxy-like DNAT; IPv4
//! and ::1) while root is not affected. And the
//! examples' health probe (the kubelet's `http://127.0.0.1:10248/healthz`) passes through
//! the line `keygen --loopback-port 10248` prints, and fails without it. The cluster line
//! reaches a Unix socket unless keygen's sshd_config snippet (AllowStreamLocalForwarding no)
//! is applied.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kube_ssh_tunnel::pool::{HealthResult, PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::{NodeTunnel, OpenError, Pool};
use support::{Cluster, HTTP_PORT, TOOL_LIMIT, run_bounded, run_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails the test, naming the tool and its Debian package, when `tool` cannot run.
fn require_tool(tool: &str, version_arg: &str, package: &str) {
    let ran = run_bounded(Command::new(tool).arg(version_arg), b"", TOOL_LIMIT);
    assert!(
        ran.is_ok_and(|r| r.status.success()),
        "this test needs `{tool}` (apt-get install -y --no-install-recommends {package}; scripts/test installs it)"
    );
}

/// The `nft` binary: `nft` when it is on PATH, else /usr/sbin/nft (a PATH without sbin).
/// Fails the test, naming the tool, when neither runs.
fn nft() -> &'static str {
    for cand in ["nft", "/usr/sbin/nft"] {
        let ran = run_bounded(Command::new(cand).arg("--version"), b"", TOOL_LIMIT);
        if ran.is_ok_and(|r| r.status.success()) {
            return cand;
        }
    }
    panic!(
        "this test needs `nft` (on PATH or /usr/sbin/nft; apt-get install -y --no-install-recommends nftables; scripts/test installs it)"
    )
}

/// Fails the test, naming what is missing, unless we are root: `nft -c` needs
/// CAP_NET_ADMIN even to check a file, and would otherwise fail with a puzzling error.
fn require_root(why: &str) {
    assert!(
        support::is_root(),
        "this test needs root ({why}); run it as root, as .ci/run does"
    );
}

/// The sshd_config lines both profiles' snippets must carry: `port-forwarding` in the key
/// line enables Unix-socket forwarding (direct-streamlocal) too, which neither permitopen nor
/// the nftables rules limit, and tun forwarding must stay off whatever the main file says.
const SNIPPET_MUST_HAVE: [&str; 2] = [
    "    AllowStreamLocalForwarding no\n",
    "    PermitTunnel no\n",
];

/// Runs `keygen ARGS` (exit 0 expected) and returns its stdout.
fn keygen(args: &[&str]) -> String {
    let o = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .arg("keygen")
            .args(args),
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(
        o.status.success(),
        "keygen {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The authorized_keys line keygen printed (the first one).
fn key_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("restrict,port-forwarding,command="))
        .unwrap_or_else(|| panic!("no key line in\n{stdout}"))
        .to_string()
}

/// The nftables rule set keygen printed for `node`: the lines after `# nftables on NODE:`
/// from `table inet` up to the next blank line.
fn rules_for(stdout: &str, node: &str) -> String {
    let head = format!("# nftables on {node}:");
    let after = stdout
        .split_once(&head)
        .unwrap_or_else(|| panic!("no rules for {node} in\n{stdout}"))
        .1;
    let rules: Vec<&str> = after
        .lines()
        .skip_while(|l| !l.starts_with("table inet"))
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(!rules.is_empty(), "empty rules for {node} in\n{stdout}");
    rules.join("\n") + "\n"
}

#[test]
fn nft_accepts_the_rules_keygen_prints_for_ipv4_and_ipv6_nodes() {
    require_root("nft -c needs CAP_NET_ADMIN");
    let nft = nft();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("id_ed25519");
    let stdout = keygen(&[
        "--out",
        out.to_str().unwrap(),
        "--allow",
        "cluster",
        "--ssh-user",
        "nobody",
        "--service-cidr",
        "10.96.0.0/12,fd00:96::/112",
        "--node",
        "node-1=10.0.0.5",
        "--node",
        "node-6=[fd00::6]:2222",
        "--pod-cidr",
        "node-1=10.244.1.0/24",
        "--pod-cidr",
        "node-6=fd00:10:6::/64",
        "--loopback-port",
        "10248",
    ]);
    // The cluster line keeps everything of the kubelet line but permitopen.
    let line = key_line(&stdout);
    assert!(!line.contains("permitopen"), "{line}");
    assert!(line.contains("port forwarding only"), "{line}");
    assert!(!stdout.contains("PermitOpen "), "{stdout}");
    for want in SNIPPET_MUST_HAVE {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }
    for (node, want) in [
        (
            "node-1",
            "ct original ip daddr 10.0.0.5 tcp dport { 10250 } accept",
        ),
        (
            "node-6",
            "ct original ip6 daddr fd00::6 tcp dport { 10250 } accept",
        ),
    ] {
        let rules = rules_for(&stdout, node);
        assert!(rules.contains(want), "{want} missing from\n{rules}");
        assert!(rules.contains("meta skuid \"nobody\""), "{rules}");
        let file = dir.path().join(format!("{node}.nft"));
        std::fs::write(&file, &rules).unwrap();
        let o = run_bounded(
            Command::new(nft).arg("-c").arg("-f").arg(&file),
            b"",
            TOOL_LIMIT,
        )
        .unwrap();
        assert!(
            o.status.success(),
            "nft -c -f refused the rules for {node}: {}\n{rules}",
            o.stderr_text()
        );
    }
}

#[test]
fn keygen_names_bad_profile_and_cidr_input_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let out = out.to_str().unwrap();
    let base = [
        "--out",
        out,
        "--allow",
        "cluster",
        "--ssh-user",
        "kube-tunnel",
        "--node",
        "node-1=10.0.0.5",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--out", out, "--allow", "pods"],
            "possible values: kubelet, cluster",
        ),
        (base.to_vec(), "--service-cidr"),
        (
            [&base[..], &["--service-cidr", "10.96.0.0/99"]].concat(),
            "--service-cidr",
        ),
        (
            [&base[..], &["--service-cidr", "10.96.0.1/12"]].concat(),
            "write the network, 10.96.0.0/12",
        ),
        (
            [
                &base[..],
                &[
                    "--service-cidr",
                    "10.96.0.0/12",
                    "--pod-cidr",
                    "node-1=10.244.1",
                ],
            ]
            .concat(),
            "is not a CIDR",
        ),
        (
            [
                &base[..],
                &[
                    "--service-cidr",
                    "10.96.0.0/12",
                    "--pod-cidr",
                    "node-9=10.244.9.0/24",
                ],
            ]
            .concat(),
            "names no node",
        ),
        (
            [&base[..], &["--service-cidr", "10.0.0.0/7"]].concat(),
            "--service-cidr 10.0.0.0/7 is wider than /8",
        ),
        (
            [&base[..], &["--service-cidr", "fd00::/31"]].concat(),
            "--service-cidr fd00::/31 is wider than /32",
        ),
        (
            [&base[..], &["--service-cidr", "127.0.0.0/24"]].concat(),
            "contains the loopback address 127.0.0.1",
        ),
        (
            [
                &base[..],
                &[
                    "--service-cidr",
                    "10.96.0.0/12",
                    "--pod-cidr",
                    "node-1=::/64",
                ],
            ]
            .concat(),
            "contains the loopback address ::1",
        ),
        (
            // The node's own address inside the service CIDR: sshd, etcd … would open.
            [&base[..], &["--service-cidr", "10.0.0.0/24"]].concat(),
            "--service-cidr 10.0.0.0/24 contains the node address 10.0.0.5",
        ),
        (
            // Another node's address inside node-1's pod CIDR.
            [
                &base[..],
                &[
                    "--node",
                    "node-2=10.244.1.7",
                    "--service-cidr",
                    "10.96.0.0/12",
                    "--pod-cidr",
                    "node-1=10.244.1.0/24",
                ],
            ]
            .concat(),
            "pod CIDR of node-1 10.244.1.0/24 contains the node address 10.244.1.7",
        ),
        (
            vec!["--out", out, "--service-cidr", "10.96.0.0/12"],
            "are for --allow cluster",
        ),
        (
            vec![
                "--out",
                out,
                "--allow",
                "cluster",
                "--service-cidr",
                "10.96.0.0/12",
            ],
            "--ssh-user",
        ),
    ];
    for (args, want) in cases {
        let o = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
                .arg("keygen")
                .args(&args),
            b"",
            Duration::from_secs(60),
        )
        .unwrap();
        let err = o.stderr_text();
        assert_eq!(o.code(), 2, "keygen {args:?}: {err}");
        assert!(
            err.contains(want),
            "keygen {args:?}: wanted {want:?} in {err}"
        );
        assert!(
            !std::path::Path::new(out).exists(),
            "keygen {args:?} wrote a key despite bad input"
        );
    }
}

/// GET /whoami through one channel to `addr:port`.
async fn whoami(t: &NodeTunnel, addr: &str, port: u16) -> Result<String, OpenError> {
    let mut s = t.open(addr, port).await?;
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_line_carries_pod_and_service_dials_and_the_kubelet_line_refuses_them() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    node.start_pod_stub();
    let key = cluster.path().join("kg/id_ed25519");
    let key_s = key.to_str().unwrap();
    let (pod, svc, kubelet) = (
        node.pod_addr.to_string(),
        cluster.service_addr.to_string(),
        node.addr.to_string(),
    );
    let stdout = keygen(&[
        "--out",
        key_s,
        "--allow",
        "cluster",
        "--ssh-user",
        &cluster.user,
        "--service-cidr",
        &format!("{svc}/32"),
        "--node",
        &node.spec(),
        "--pod-cidr",
        &format!("{}={}", node.name, node.pod_cidr),
    ]);
    let line = key_line(&stdout);
    assert!(!line.contains("permitopen"), "{line}");
    node.set_authorized_keys(&format!("{line}\n"));
    let settings = Arc::new(cluster.settings_with_key(&key));
    let t = NodeTunnel::connect(&node.node(), settings.clone())
        .await
        .expect("the cluster line accepts keygen's key");
    let reply = whoami(&t, &pod, HTTP_PORT).await.expect("pod-IP dial");
    assert!(reply.contains("pod-on-node-1"), "{reply}");
    let reply = whoami(&t, &svc, HTTP_PORT).await.expect("service-IP dial");
    assert!(reply.contains("svc"), "{reply}");
    let reply = whoami(&t, &kubelet, HTTP_PORT).await.expect("kubelet dial");
    assert!(reply.contains("node-1"), "{reply}");
    drop(t);

    // The kubelet line (the default profile) for the same key: the kubelet only.
    let stdout = keygen(&["--out", key_s, "--force", "--node", &node.spec()]);
    for want in SNIPPET_MUST_HAVE {
        assert!(stdout.contains(want), "{want:?} missing from\n{stdout}");
    }
    let line = key_line(&stdout);
    node.set_authorized_keys(&format!("{line}\n"));
    let t = NodeTunnel::connect(&node.node(), settings)
        .await
        .expect("the kubelet line accepts keygen's key");
    for (what, addr) in [("pod", &pod), ("service", &svc)] {
        let e = whoami(&t, addr, HTTP_PORT)
            .await
            .expect_err("the kubelet line must refuse it");
        assert!(
            matches!(e, OpenError::Refused { .. })
                && e.to_string().contains("administratively prohibited"),
            "{what} dial: {e}"
        );
    }
    let reply = whoami(&t, &kubelet, HTTP_PORT).await.expect("kubelet dial");
    assert!(reply.contains("node-1"), "{reply}");
}

/// A server (python3, as root) inside a namespace, on IPv4 and IPv6; killed by PID when dropped (it also exits
/// by itself after 5 minutes).
struct Listener(Child);

impl Listener {
    fn start(ns: &str, ports: &[u16]) -> Listener {
        const CODE: &str = r#"
import socket, select, sys, time
socks = []
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(p)))
    s.listen(64)
    socks.append(s)
print("ready", flush=True)
end = time.time() + 300
while time.time() < end:
    ready, _, _ = select.select(socks, [], [], 1)
    for s in ready:
        c, _ = s.accept()
        c.close()
"#;
        Listener::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns, "python3", "-c", CODE])
                .args(ports.iter().map(|p| p.to_string())),
        )
    }

    /// Spawns `cmd` and waits for it to print `ready`.
    fn spawn(cmd: &mut Command) -> Listener {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a listener (ip netns exec … python3)");
        let mut line = String::new();
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the listener did not start");
        Listener(child)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a TCP connect to `addr:port` inside `ns` succeeds, as `nobody` or as root (bash's
/// /dev/tcp, so nothing under root's home needs to be readable by nobody).
fn connects(ns: &str, as_nobody: bool, addr: IpAddr, port: u16) -> bool {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    if as_nobody {
        c.args([
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]);
    }
    c.args([
        "/bin/bash",
        "-c",
        r#"exec 3<>"/dev/tcp/$0/$1" && echo connected"#,
        &addr.to_string(),
        &port.to_string(),
    ]);
    let o = run_bounded(&mut c, b"", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("connect {addr}:{port}: {e}"));
    o.status.success() && o.stdout_text().contains("connected")
}

#[test]
fn in_a_namespace_the_rules_keep_the_tunnel_user_to_the_allowed_addresses_and_not_root() {
    require_root("network namespaces and nft");
    assert!(
        support::can_use_netns(),
        "this test needs iproute2's `ip` (apt-get install -y iproute2)"
    );
    let nft = nft();
    require_tool("setpriv", "--version", "util-linux");
    let ns = support::Netns::create();
    let node_addr = ns.node_addr;
    let pod = Ipv4Addr::new(10, 244, 7, 10);
    let svc = Ipv4Addr::new(10, 96, 0, 10);
    // A service IP kube-proxy rewrites (below) to `outside`, as it does to a backend pod on
    // another node.
    let svc_dnat = Ipv4Addr::new(10, 96, 0, 20);
    let outside = Ipv4Addr::new(192, 0, 2, 10);
    for a in [pod, svc, outside] {
        support::ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{a}/32"),
            "dev",
            "lo",
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let stdout = keygen(&[
        "--out",
        dir.path().join("k").to_str().unwrap(),
        "--allow",
        "cluster",
        "--ssh-user",
        "nobody",
        "--service-cidr",
        "10.96.0.0/12",
        "--node",
        &format!("ns-node={node_addr}"),
        "--pod-cidr",
        "ns-node=10.244.7.0/24",
        "--loopback-port",
        "10248",
    ]);
    let file = dir.path().join("kube-ssh-tunnel.nft");
    std::fs::write(&file, rules_for(&stdout, "ns-node")).unwrap();
    // Twice: loading the file again replaces its table (the documented way to apply a change).
    for _ in 0..2 {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, nft, "-f"])
                .arg(&file),
        );
    }
    // kube-proxy's DNAT: a nat output chain at priority -100 (before the rules' filter chain
    // at 0) sends svc_dnat:8080 to outside:8080. The rules must judge the address dialled.
    // A route, so the dial gets as far as the nat hook (a service IP has one via the
    // node's default route); DNAT then re-routes it to the local `outside`.
    support::ip(&[
        "-n",
        &ns.name,
        "route",
        "add",
        &format!("{svc_dnat}/32"),
        "dev",
        "lo",
    ]);
    let kube_proxy = dir.path().join("kube-proxy.nft");
    std::fs::write(
        &kube_proxy,
        format!(
            "table ip kube_proxy_test {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tip daddr {svc_dnat} tcp dport 8080 dnat to {outside}:8080\n\t}}\n}}\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, nft, "-f"])
            .arg(&kube_proxy),
    );
    let listed =
        run_ok(Command::new("ip").args(["netns", "exec", &ns.name, nft, "list", "tables"]));
    assert_eq!(
        listed.trim(),
        "table inet kube_ssh_tunnel\ntable ip kube_proxy_test",
        "{listed}"
    );
    // Dropped before `ns`, so the namespace is deleted with nothing left in it.
    let _listener = Listener::start(&ns.name, &[10250, 10248, 8080, 10999]);
    let lo = Ipv4Addr::LOCALHOST;
    let lo6 = IpAddr::from(Ipv6Addr::LOCALHOST);
    let v4 = IpAddr::from;
    for (addr, port, allowed) in [
        (v4(node_addr), 10250, true),
        (v4(lo), 10248, true),
        (lo6, 10248, true),
        (v4(pod), 8080, true),
        (v4(svc), 8080, true),
        // Allowed: the service IP dialled, though the packet leaves for `outside`.
        (v4(svc_dnat), 8080, true),
        (v4(node_addr), 10999, false),
        (v4(lo), 10999, false),
        (lo6, 10999, false),
        (v4(outside), 8080, false),
        (v4(outside), 10250, false),
    ] {
        assert_eq!(
            connects(&ns.name, true, addr, port),
            allowed,
            "nobody connecting to {addr} port {port} (allowed: {allowed})"
        );
    }
    // Root is not the tunnel's user: the rules leave it alone.
    for (addr, port) in [
        (v4(outside), 8080),
        (v4(node_addr), 10999),
        (v4(lo), 10999),
        (lo6, 10999),
    ] {
        assert!(
            connects(&ns.name, false, addr, port),
            "root connecting to {addr} port {port}"
        );
    }
}

/// An HTTP server answering `GET /healthz` with 200, as root on 127.0.0.1:10248 inside `ns`
/// (the kubelet's local healthz); stops by itself after 5 minutes.
fn kubelet_healthz_in(ns: &str) -> Listener {
    const CODE: &str = r#"
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"no")
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 10248), H)
s.timeout = 1
print("ready", flush=True)
end = time.time() + 300
while time.time() < end:
    s.handle_request()
"#;
    Listener::spawn(Command::new("ip").args(["netns", "exec", ns, "python3", "-c", CODE]))
}

/// The health probe examples/config.toml uses: the kubelet's local healthz.
const EXAMPLE_PROBE: &str = "http://127.0.0.1:10248/healthz";

/// The examples' probe (`EXAMPLE_PROBE`) through a pool whose node
/// authorizes the key with `line`; a probe's result and the state it led to.
async fn probe_through(
    cluster: &Cluster,
    key: &std::path::Path,
    line: &str,
) -> (HealthResult, TunnelState) {
    let node = &cluster.nodes[0];
    node.set_authorized_keys(&format!("{line}\n"));
    let mut cfg = PoolConfig::new(cluster.settings_with_key(key));
    cfg.health.probe = Probe::parse_url(EXAMPLE_PROBE).unwrap();
    cfg.health.interval = Duration::from_millis(300);
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let mut rx = pool.subscribe(&node.name).unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        // A passed probe leaves the node ready, a failed one makes it degraded.
        rx.wait_for(|s| match &s.last_health {
            Some(h) if h.ok => s.state == TunnelState::Ready,
            Some(_) => s.state == TunnelState::Degraded,
            None => false,
        }),
    )
    .await
    .expect("a probe result and the state it leads to within 20 s")
    .unwrap()
    .clone();
    pool.shutdown_within(Duration::from_secs(2)).await;
    (status.last_health.unwrap(), status.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_health_probe_passes_with_keygens_loopback_port_10248() {
    assert!(
        support::can_use_netns(),
        "this test needs root and iproute2's `ip` (apt-get install -y iproute2; run as root, as .ci/run does)"
    );
    // What examples/config.toml says: this probe, and the loopback port it needs.
    let example: toml::Table = toml::from_str(
        &std::fs::read_to_string(support::repo().join("examples/config.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(example["health_url"].as_str(), Some(EXAMPLE_PROBE));
    assert_eq!(
        example["loopback_port"].as_array().map(|a| a.len()),
        Some(1)
    );
    assert_eq!(example["loopback_port"][0].as_integer(), Some(10248));
    // A node in a namespace of its own, so its 127.0.0.1:10248 is the node's, not ours.
    let mut cluster = Cluster::start(0);
    cluster.add_netns_node("node-ns");
    let node = &cluster.nodes[0];
    let ns = node.netns.as_ref().unwrap().name.clone();
    // The node's sshd_config as keygen prints it for --loopback-port 10248.
    node.add_sshd_config(&format!(
        "Match all\n    PermitOpen {}:{HTTP_PORT} 127.0.0.1:10248",
        node.addr
    ));
    node.restart_sshd();
    let _healthz = kubelet_healthz_in(&ns);
    let key = cluster.path().join("kg/id_ed25519");
    let key_s = key.to_str().unwrap();

    let with = keygen(&[
        "--out",
        key_s,
        "--node",
        &node.spec(),
        "--loopback-port",
        "10248",
    ]);
    let line = key_line(&with);
    assert!(line.contains("permitopen=\"127.0.0.1:10248\""), "{line}");
    let (health, state) = probe_through(&cluster, &key, &line).await;
    assert!(health.ok, "the probe failed: {:?}", health.error);
    assert_eq!(state, TunnelState::Ready);

    // Without --loopback-port the key's permitopen refuses the probe: the node is degraded.
    let without = keygen(&["--out", key_s, "--force", "--node", &node.spec()]);
    let (health, state) = probe_through(&cluster, &key, &key_line(&without)).await;
    assert!(!health.ok, "the probe passed without --loopback-port");
    assert_eq!(state, TunnelState::Degraded, "{:?}", health.error);
}

/// What `ssh -L 127.0.0.1:PORT:SOCKET` (a `direct-streamlocal` channel, as any SSH client can
/// ask for) brings back from a Unix socket that answers `unix-socket-reached`: the text, or
/// an empty string when sshd refused the channel.
fn through_unix_socket(node: &support::TestNode, user: &str, key: &std::path::Path) -> String {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    let sock = node.dir.join("streamlocal.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    // Answers every connection until told to stop (at most 60 s).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for _ in 0..1200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if let Ok((mut c, _)) = listener.accept() {
                    let _ = c.write_all(b"unix-socket-reached\n");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut ssh = Command::new("ssh")
        .args(["-N", "-F", "/dev/null", "-i"])
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-p",
            &node.ssh_port.to_string(),
            "-L",
        ])
        .arg(format!("127.0.0.1:{port}:{}", sock.display()))
        .arg(format!("{user}@{}", node.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ssh (openssh-client)");
    let up = support::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut got = String::new();
    if up {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_string(&mut got);
    }
    let _ = ssh.kill();
    let _ = ssh.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
    assert!(up, "ssh -L did not listen on 127.0.0.1:{port}");
    let _ = std::fs::remove_file(&sock);
    got
}

#[test]
fn the_cluster_line_reaches_unix_sockets_unless_the_snippet_turns_streamlocal_off() {
    require_tool("ssh", "-V", "openssh-client");
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let key = cluster.path().join("kg/id_ed25519");
    let stdout = keygen(&[
        "--out",
        key.to_str().unwrap(),
        "--allow",
        "cluster",
        "--ssh-user",
        &cluster.user,
        "--service-cidr",
        &format!("{}/32", cluster.service_addr),
        "--node",
        &node.spec(),
    ]);
    node.set_authorized_keys(&format!("{}\n", key_line(&stdout)));
    // A node as sshd ships: Unix-socket forwarding on, no PermitOpen (the cluster profile's).
    let config = node.dir.join("sshd_config");
    let template = std::fs::read_to_string(&config).unwrap();
    let stock: String = template
        .lines()
        .map(|l| match l {
            "AllowStreamLocalForwarding no" => "AllowStreamLocalForwarding yes".to_string(),
            l if l.starts_with("PermitOpen ") => "PermitOpen any".to_string(),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert!(
        stock.contains("AllowStreamLocalForwarding yes\n"),
        "{stock}"
    );
    // keygen's sshd_config snippet: `Match User …` and its indented lines.
    let snippet: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Match User "))
        .take_while(|l| l.starts_with("Match User ") || l.starts_with("    "))
        .collect();
    assert!(
        snippet.contains(&"    AllowStreamLocalForwarding no"),
        "{snippet:?}"
    );
    // `restrict` alone would refuse it, but `port-forwarding` turns it back on.
    std::fs::write(&config, &stock).unwrap();
    node.restart_sshd();
    let got = through_unix_socket(node, &cluster.user, &key);
    assert_eq!(
        got.trim(),
        "unix-socket-reached",
        "the cluster line without the snippet; sshd log:\n{}",
        node.sshd_log()
    );
    // With keygen's snippet, sshd refuses the channel.
    std::fs::write(&config, format!("{stock}{}\n", snippet.join("\n"))).unwrap();
    node.restart_sshd();
    let got = through_unix_socket(node, &cluster.user, &key);
    assert_eq!(got, "", "the snippet let a Unix socket through");
    assert!(
        node.sshd_log().contains("refused streamlocal port forward"),
        "sshd log:\n{}",
        node.sshd_log()
    );
}
