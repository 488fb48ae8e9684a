//! Reverse mode against real OpenSSH clients (docs/reverse.md): a node the daemon cannot
//! reach dials in with stock `ssh -N -R 0` (a dynamic reverse forward) and CONNECTs through
//! the daemon's front reach its kubelet with bytes intact; the listener refuses unknown keys,
//! another node's key and nodes outside the node set; a node's session cannot exec or open
//! `direct-tcpip`; and killing the node's ssh makes it not ready until it dials in again.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::reverse::*;
use support::{ECHO_PORT, HTTP_PORT, keygen, repo, run_bounded, wait_until};

#[test]
fn a_node_behind_nat_dials_in_carries_connects_intact_and_comes_back_after_its_ssh_restarts() {
    require_root("network namespaces");
    require_tool("ssh", "-V");
    assert!(
        support::can_use_netns(),
        "this test needs iproute2's `ip` (apt-get install -y iproute2)"
    );
    let ns = support::Netns::create();
    let o = ns.node_addr.octets();
    // The node's address lives only inside its namespace; the root namespace has no way
    // there (an unreachable route: the daemon cannot dial it, as behind NAT).
    let node_ip = Ipv4Addr::new(10, 250, o[2], o[3]);
    support::ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{node_ip}/32"),
        "dev",
        "lo",
    ]);
    let _cut = Unreachable::add(node_ip);
    let stub_log = std::fs::File::create(
        std::env::temp_dir().join(format!("kst-reverse-stub-{}.log", std::process::id())),
    )
    .unwrap();
    let _stub = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3"])
            .arg(repo().join("tests/node/kubelet_stub.py"))
            .args(["--listen", &node_ip.to_string()])
            .args(["--http-port", &HTTP_PORT.to_string()])
            .args(["--echo-port", &ECHO_PORT.to_string()])
            .args(["--name", "rev-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stub_log)
            .spawn()
            .expect("start the kubelet stub (python3) in the namespace"),
    );
    assert!(
        wait_until(Duration::from_secs(15), || connects_in(
            &ns.name, node_ip, ECHO_PORT
        )),
        "the kubelet stub did not listen on {node_ip}:{ECHO_PORT} in its namespace"
    );
    let direct = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((node_ip, ECHO_PORT)),
        Duration::from_secs(3),
    );
    assert!(
        direct.is_err(),
        "a direct dial from the daemon's side must fail (the node is out of reach)"
    );

    let keys = Keys::new(&["rev-1"]);
    let listen = SocketAddr::from((ns.host_addr, free_port(IpAddr::V4(ns.host_addr))));
    let d = keys.daemon(listen, &[format!("rev-1={node_ip}")]);
    let admin = keys.path("admin.sock");
    let proxy = keys.path("proxy.sock");
    assert_ne!(
        node_state(&admin, "rev-1"),
        "ready",
        "ready before it dialled in"
    );

    let ssh = node_ssh(&keys, &ns.name, listen, "rev-1");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "the node did not become ready after dialling in (state {:?}); daemon log:\n{}\nssh log:\n{}",
        node_state(&admin, "rev-1"),
        d.log(),
        std::fs::read_to_string(keys.path("rev-1-ssh.log")).unwrap_or_default()
    );
    let target = format!("{node_ip}:{ECHO_PORT}");
    let (sent, got, head) = echo_through(&proxy, &target, 8 << 20);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {target} through the reverse node: {head}\ndaemon log:\n{}\nssh log:\n{}",
        d.log(),
        std::fs::read_to_string(keys.path("rev-1-ssh.log")).unwrap_or_default()
    );
    assert_eq!(sent, got, "SHA-256 of the bytes sent and echoed back");

    // The node's ssh dies: the node is no longer ready, and a CONNECT is not answered 200.
    // Seen as the session ending (not, later, as failed health probes).
    drop(ssh);
    let mut left = (String::new(), String::new());
    assert!(
        wait_until(Duration::from_secs(30), || {
            left = node_status(&admin, "rev-1");
            left.0 != "ready"
        }),
        "the node stayed ready after its ssh was killed; daemon log:\n{}",
        d.log()
    );
    assert!(
        left.0 != "degraded" && !left.1.contains("health probe"),
        "the node's ssh went away, yet the daemon noticed only by probing: {left:?}"
    );
    let (_s, head) = support::connect_uds(&proxy, &target);
    assert!(
        !head.starts_with("HTTP/1.1 200"),
        "a CONNECT while the node's ssh is down: {head}"
    );

    // systemd's restart: the node dials in again and CONNECTs work again.
    let _ssh = node_ssh(&keys, &ns.name, listen, "rev-1");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "the node did not come back after its ssh restarted; daemon log:\n{}",
        d.log()
    );
    let (sent, got, head) = echo_through(&proxy, &target, 1 << 20);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "after the restart: {head}"
    );
    assert_eq!(sent, got, "SHA-256 after the restart");
}

/// Runs the OpenSSH client against the listener (bounded) and returns (exit code, stderr).
fn ssh_once(
    keys: &Keys,
    addr: SocketAddr,
    user: &str,
    key: &str,
    extra: &[&str],
    command: &[&str],
) -> (i32, String) {
    let o = run_bounded(
        Command::new("ssh")
            .args(keys.ssh_args(addr, user, key))
            .args(extra)
            .arg(addr.ip().to_string())
            .args(command),
        b"",
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("ssh {extra:?}: {e}"));
    (o.code(), o.stderr_text())
}

#[test]
fn unknown_keys_another_nodes_key_and_nodes_outside_the_set_are_refused() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a", "rev-b", "rev-gone"]);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    // rev-gone has a key but is not in the node set.
    let d = keys.daemon(
        listen,
        &[
            "rev-a=192.0.2.10".to_string(),
            "rev-b=192.0.2.11".to_string(),
        ],
    );
    let forward = ["-N", "-R", "0"];

    let (code, err) = ssh_once(&keys, listen, "rev-a", "stranger", &forward, &[]);
    assert_eq!(code, 255, "an unknown key: {err}");
    assert!(err.contains("Permission denied"), "an unknown key: {err}");
    assert!(
        d.wait_log(
            "the key is not in --reverse-authorized",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );

    // rev-b's key, claiming to be rev-a.
    let (code, err) = ssh_once(&keys, listen, "rev-a", "rev-b", &forward, &[]);
    assert_eq!(code, 255, "another node's key: {err}");
    assert!(
        err.contains("Permission denied"),
        "another node's key: {err}"
    );
    assert!(
        d.wait_log(
            "this key belongs to node rev-b, not to 'rev-a'",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );

    let (code, err) = ssh_once(&keys, listen, "rev-gone", "rev-gone", &forward, &[]);
    assert_eq!(code, 255, "a node outside the node set: {err}");
    assert!(
        err.contains("node rev-gone is not in this daemon's node set"),
        "the node's ssh is told why: {err}"
    );
    assert!(
        d.wait_log(
            "node rev-gone is not in this daemon's node set",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    for n in ["rev-a", "rev-b"] {
        assert_ne!(node_state(&keys.path("admin.sock"), n), "ready", "{n}");
    }
}

#[test]
fn a_node_session_cannot_exec_or_open_direct_tcpip() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    let d = keys.daemon(listen, &["rev-a=192.0.2.10".to_string()]);
    // Something on the control plane's loopback a node must not reach.
    let target = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    target.set_nonblocking(true).unwrap();
    let tport = target.local_addr().unwrap().port();

    let (code, err) = ssh_once(&keys, listen, "rev-a", "rev-a", &[], &["id"]);
    assert_eq!(code, 255, "exec must be refused: {err}");
    assert!(err.contains("open failed"), "exec: {err}");

    let w = format!("127.0.0.1:{tport}");
    let (code, err) = ssh_once(&keys, listen, "rev-a", "rev-a", &["-W", &w], &[]);
    assert_ne!(code, 0, "direct-tcpip must be refused: {err}");
    assert!(err.contains("open failed"), "direct-tcpip: {err}");
    assert!(
        matches!(target.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the node's session reached the control plane's loopback"
    );
    assert!(
        d.wait_log("refused a direct-tcpip channel", 1, Duration::from_secs(10))
            && d.wait_log("refused a session channel", 1, Duration::from_secs(10)),
        "{}",
        d.log()
    );
}

#[test]
fn reverse_flags_without_their_files_or_with_a_bad_authorized_line_are_usage_errors() {
    let keys = Keys::new(&["rev-a"]);
    let run = |extra: &[String]| {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--ssh-tunnel".into(),
            "--ssh-user".into(),
            "kube-tunnel".into(),
            "--ssh-keyfile".into(),
            keys.path("client").display().to_string(),
            "--ssh-known-hosts".into(),
            keys.path("known_hosts").display().to_string(),
            "--admin-uds".into(),
            keys.path("admin.sock").display().to_string(),
            "--proxy-uds".into(),
            keys.path("proxy.sock").display().to_string(),
            "--node".into(),
            "rev-a=192.0.2.10".into(),
        ];
        a.extend_from_slice(extra);
        let o = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(&a),
            b"",
            Duration::from_secs(20),
        )
        .unwrap();
        (o.code(), o.stderr_text())
    };
    let (code, err) = run(&["--reverse-listen".into(), "127.0.0.1:0".into()]);
    assert_eq!(code, 2, "--reverse-listen alone: {err}");
    assert!(err.contains("--reverse-host-key"), "{err}");

    std::fs::write(keys.path("bad"), "rev-a ssh-ed25519 not-base64\n").unwrap();
    let (code, err) = run(&[
        "--reverse-listen".into(),
        "127.0.0.1:0".into(),
        "--reverse-host-key".into(),
        keys.path("host_key").display().to_string(),
        "--reverse-authorized".into(),
        keys.path("bad").display().to_string(),
    ]);
    assert_eq!(code, 2, "a bad authorized line: {err}");
    assert!(err.contains(":1: not an OpenSSH public key"), "{err}");
}

#[test]
fn a_key_added_to_the_authorized_file_lets_its_node_dial_in_without_a_restart() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a", "rev-b"]);
    let lines = std::fs::read_to_string(keys.path("authorized")).unwrap();
    let (a_line, b_line) = lines.split_once('\n').unwrap();
    std::fs::write(keys.path("authorized"), format!("{a_line}\n")).unwrap();
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    // rev-b starts as a dialled node, at a loopback address where nothing listens.
    let b_addr = support::refused_address(22);
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".to_string(), format!("rev-b={b_addr}")],
        &["--health-probe", "none"],
    );
    let admin = keys.path("admin.sock");
    let (code, err) = ssh_once(&keys, listen, "rev-b", "rev-b", &["-N", "-R", "0"], &[]);
    assert_eq!(code, 255, "rev-b's key before it is in the file: {err}");
    assert!(err.contains("Permission denied"), "{err}");

    std::fs::write(keys.path("authorized"), format!("{a_line}\n{b_line}")).unwrap();
    let log = std::fs::File::create(keys.path("rev-b-ssh.log")).unwrap();
    let _ssh = Proc(
        Command::new("ssh")
            .args(["-N", "-R", "0"])
            .args(keys.ssh_args(listen, "rev-b", "rev-b"))
            .arg(listen.ip().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ssh"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-b")
            == "ready"),
        "rev-b did not come up through its own session after its key was added (state {:?}); daemon log:\n{}\nssh log:\n{}",
        node_status(&admin, "rev-b"),
        d.log(),
        std::fs::read_to_string(keys.path("rev-b-ssh.log")).unwrap_or_default()
    );
    assert!(
        d.log().contains("--reverse-authorized changed: reloaded"),
        "{}",
        d.log()
    );
}

/// Signs `key`'s public half with the CA at `ca`: `ssh-keygen -s CA -I ID -n PRINCIPAL -V VALIDITY`.
fn sign(ca: &Path, key: &Path, id: &str, principal: &str, validity: &str) {
    support::run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", id, "-n", principal, "-V", validity])
            .arg(key.with_extension("pub")),
    );
}

#[test]
fn user_certificates_name_their_node_and_expired_or_misnamed_ones_are_refused() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&[]);
    // rev-a is listed without a key: it can come in only with a certificate.
    std::fs::write(keys.path("authorized"), "rev-a\n").unwrap();
    keygen(&keys.path("ca"), "ed25519", None);
    keygen(&keys.path("rev-a"), "ed25519", None);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    let ca_pub = keys.path("ca").with_extension("pub").display().to_string();
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".to_string()],
        &["--reverse-user-ca", &ca_pub, "--health-probe", "none"],
    );
    let admin = keys.path("admin.sock");
    let cert = keys.path("rev-a-cert.pub");
    let with_cert = [
        "-o".to_string(),
        format!("CertificateFile={}", cert.display()),
    ];
    let with_cert: Vec<&str> = with_cert.iter().map(String::as_str).collect();
    let forward = [&with_cert[..], &["-N", "-R", "0"]].concat();

    sign(
        &keys.path("ca"),
        &keys.path("rev-a"),
        "old",
        "rev-a",
        "20200101:20200102",
    );
    let (code, err) = ssh_once(&keys, listen, "rev-a", "rev-a", &forward, &[]);
    assert_eq!(code, 255, "an expired certificate: {err}");
    // russh checks the validity window before asking us; our check (`validate`) repeats it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let l = d.log();
            l.contains("Certificate is expired or not yet valid")
                || l.contains("outside its validity")
        }),
        "{}",
        d.log()
    );

    sign(
        &keys.path("ca"),
        &keys.path("rev-a"),
        "other",
        "rev-b",
        "-5m:+1h",
    );
    let (code, err) = ssh_once(&keys, listen, "rev-a", "rev-a", &forward, &[]);
    assert_eq!(code, 255, "a certificate for another node: {err}");
    assert!(
        d.wait_log(
            "does not name 'rev-a' as a principal",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    assert_ne!(node_state(&admin, "rev-a"), "ready");

    sign(
        &keys.path("ca"),
        &keys.path("rev-a"),
        "good",
        "rev-a",
        "-5m:+1h",
    );
    let log = std::fs::File::create(keys.path("rev-a-ssh.log")).unwrap();
    let _ssh = Proc(
        Command::new("ssh")
            .args(&forward)
            .args(keys.ssh_args(listen, "rev-a", "rev-a"))
            .arg(listen.ip().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ssh"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-a")
            == "ready"),
        "a valid certificate for rev-a did not bring it up (state {:?}); daemon log:\n{}\nssh log:\n{}",
        node_status(&admin, "rev-a"),
        d.log(),
        std::fs::read_to_string(keys.path("rev-a-ssh.log")).unwrap_or_default()
    );
}

/// The `status` command's output against the daemon's admin socket (`-o FORMAT` added).
fn status_cli(admin: &Path, wide: bool) -> String {
    let mut a = vec!["status", "--admin-uds", admin.to_str().unwrap()];
    if wide {
        a.extend(["-o", "wide"]);
    }
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(&a),
        b"",
        Duration::from_secs(20),
    )
    .unwrap()
    .stdout_text()
}

/// The row of `node` in a `status` table (the line that starts with its name).
fn row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or("")
}

#[test]
fn an_either_node_is_dialled_when_its_sshd_answers_and_comes_in_through_its_session_when_not_and_status_shows_each_mode()
 {
    require_tool("ssh", "-V");
    let cluster = support::Cluster::start(1);
    let keys = Keys::new(&["node-1", "node-2", "node-3"]);
    // node-1 and node-2 are either nodes; node-3 (no mode) is a reverse node.
    set_modes(&keys, &[("node-1", "either"), ("node-2", "either")]);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    // node-2's sshd does not answer: nothing listens at its address.
    let n2_addr = support::refused_address(22);
    let d = cluster_daemon(
        &cluster,
        &keys,
        listen,
        &[
            cluster.nodes[0].spec(),
            format!("node-2={n2_addr}"),
            "node-3=192.0.2.13".into(),
        ],
        &["--health-probe", "none"],
    );
    let admin = cluster.path().join("admin.sock");

    // node-1's sshd answers: it comes up dialled, with its host key from known_hosts.
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-1")
            == "ready"),
        "the either node with a reachable sshd did not come up: {}\n{}",
        node_json(&admin, "node-1"),
        d.log()
    );
    let n1 = node_json(&admin, "node-1");
    assert_eq!(n1["mode"], "either:forward", "{n1}");
    assert_eq!(n1["host_key_trust"], "known-hosts-line", "{n1}");

    // node-2 cannot be dialled; once its own ssh dials in, it comes up through that session.
    let n2 = node_json(&admin, "node-2");
    assert_ne!(n2["state"], "ready", "{n2}");
    assert_eq!(n2["mode"], "either", "{n2}");
    let _ssh = local_node_ssh(&keys, listen, "node-2", "either");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-2")
            == "ready"),
        "the either node did not come up through its ssh -R session: {}\n{}\nssh log:\n{}",
        node_json(&admin, "node-2"),
        d.log(),
        std::fs::read_to_string(keys.path("node-2-ssh-either.log")).unwrap_or_default()
    );
    let n2 = node_json(&admin, "node-2");
    assert_eq!(n2["mode"], "either:reverse", "{n2}");
    // A reverse connection has no host key of the node's: the key column holds the node's
    // client key (which named it), and the trust says how.
    assert_eq!(n2["host_key_trust"], "node-dialled-in", "{n2}");
    let host_key = n2["host_key"].as_str().unwrap_or("");
    assert!(host_key.starts_with("ssh-ed25519 SHA256:"), "{n2}");
    assert!(
        n2["client_key"]
            .as_str()
            .unwrap_or("")
            .starts_with(host_key),
        "{n2}"
    );

    // node-3 (mode reverse) waits for its session.
    let n3 = node_json(&admin, "node-3");
    assert_eq!(
        (&n3["state"], &n3["mode"]),
        (&"waiting".into(), &"reverse".into()),
        "{n3}"
    );

    // The status table: a MODE column, and for reverse connections the trust `reverse`.
    let table = status_cli(&admin, false);
    assert!(table.contains(" MODE "), "{table}");
    for (node, mode) in [
        ("node-1", "either:forward"),
        ("node-2", "either:reverse"),
        ("node-3", "reverse"),
    ] {
        let words: Vec<&str> = row(&table, node).split_whitespace().collect();
        assert_eq!(words.get(3), Some(&mode), "{node}'s MODE:\n{table}");
    }
    assert!(row(&table, "node-3").contains(" waiting "), "{table}");
    let wide = status_cli(&admin, true);
    assert!(
        row(&wide, "node-2").contains(&format!("{host_key}  reverse (the node dialled in")),
        "{wide}"
    );

    // The metric: one series per node, labelled with its mode.
    let metrics = admin_get(&admin, "/metrics");
    for (node, mode) in [
        ("node-1", "either"),
        ("node-2", "either"),
        ("node-3", "reverse"),
    ] {
        let series = format!("kube_ssh_tunnel_node_mode{{node=\"{node}\",mode=\"{mode}\"}} 1");
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
    assert!(
        metrics.contains("kube_ssh_tunnel_tunnels{state=\"waiting\"} 1"),
        "{metrics}"
    );
}

/// Polls node `node`'s /status entry every 200 ms for `span` and returns every state seen.
fn states_over(admin: &Path, node: &str, span: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + span;
    let mut seen = Vec::new();
    while std::time::Instant::now() < end {
        let s = node_state(admin, node);
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    seen
}

#[test]
fn a_reverse_node_waits_for_its_session_without_backoff_measures_its_round_trip_and_waits_again_after_its_ssh_dies()
 {
    require_tool("ssh", "-V");
    // node-1's kubelet stub answers at its address; the daemon never dials node-1 (reverse),
    // its ssh -R reaches the stub from here.
    let cluster = support::Cluster::start(1);
    let node = &cluster.nodes[0];
    let keys = Keys::new(&["node-1"]);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    let d = cluster_daemon(
        &cluster,
        &keys,
        listen,
        &[node.spec()],
        &["--health-probe", "none", "--health-interval", "1s"],
    );
    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");

    // Before its ssh starts: waiting, through more than one connect timeout (3 s), never
    // connecting or backoff, and no failure recorded.
    assert!(
        wait_until(Duration::from_secs(20), || node_state(&admin, "node-1")
            == "waiting"),
        "{}\n{}",
        node_json(&admin, "node-1"),
        d.log()
    );
    let seen = states_over(&admin, "node-1", Duration::from_secs(5));
    assert_eq!(seen, ["waiting"], "states before the node dialled in");
    let n = node_json(&admin, "node-1");
    assert_eq!(n["reason"], "waiting for the node to dial in", "{n}");
    assert_eq!(
        (&n["last_error"], &n["next_retry_s"]),
        (&serde_json::Value::Null, &serde_json::Value::Null),
        "{n}"
    );

    let ssh = local_node_ssh(&keys, listen, "node-1", "first");
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-1")
            == "ready"),
        "{}\n{}",
        node_json(&admin, "node-1"),
        d.log()
    );
    eprintln!("ready {:?} after the node's ssh started", started.elapsed());

    // The keepalive round trip is measured on the node's own session.
    let mut n = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            n = node_json(&admin, "node-1");
            n["keepalive_rtt_ms"].is_number()
        }),
        "keepalive_rtt_ms of a ready reverse node: {n}\n{}",
        d.log()
    );
    eprintln!(
        "keepalive_rtt_ms of the reverse node: {}",
        n["keepalive_rtt_ms"]
    );

    // CONNECT + a 1-byte echo, 200 times (the figure is printed, never asserted).
    let target = format!("{}:{ECHO_PORT}", node.addr);
    let mut took = Vec::new();
    for i in 0..200 {
        let t0 = std::time::Instant::now();
        one_byte_echo(&proxy, &target)
            .unwrap_or_else(|e| panic!("echo {i} through the reverse node: {e}\n{}", d.log()));
        took.push(t0.elapsed());
    }
    took.sort();
    eprintln!(
        "reverse node, CONNECT + 1-byte echo x{}: p50 {:?} p99 {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );
    // The round trips did not disturb the node's forward: still ready, still one session.
    assert_eq!(node_state(&admin, "node-1"), "ready");

    // Its ssh dies: waiting again (no backoff, no connecting), with why in last_error.
    drop(ssh);
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-1")
            != "ready"),
        "{}",
        d.log()
    );
    let seen = states_over(&admin, "node-1", Duration::from_secs(5));
    assert_eq!(seen, ["waiting"], "states after the node's ssh died");
    let n = node_json(&admin, "node-1");
    assert!(n["last_error"].is_string(), "{n}");

    let _ssh = local_node_ssh(&keys, listen, "node-1", "second");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-1")
            == "ready"),
        "{}\n{}",
        node_json(&admin, "node-1"),
        d.log()
    );
    one_byte_echo(&proxy, &target).unwrap();
}

/// Holds up a connection of the node behind `target` (an echo): writes without ever reading
/// until the daemon shows a congested connection (at most 30 s). Returns the stream.
fn hold_up(
    admin: &Path,
    proxy: &Path,
    target: &str,
    d: &support::daemon::Daemon,
) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let (s, head) = support::connect_uds(proxy, target);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut congested = false;
    for _ in 0..600 {
        let _ = w.write(&chunk);
        let n = node_json(admin, "node-1");
        if n["congested_connections"].as_u64().unwrap_or(0) >= 1 {
            congested = true;
            break;
        }
    }
    assert!(
        congested,
        "the unread echo did not congest the connection: {}\n{}",
        node_json(admin, "node-1"),
        d.log()
    );
    s
}

#[test]
fn a_reverse_nodes_extra_connections_are_its_waiting_sessions_and_growing_never_waits_for_one() {
    require_tool("ssh", "-V");
    let cluster = support::Cluster::start(1);
    let node = &cluster.nodes[0];
    let keys = Keys::new(&["node-1"]);
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    let d = cluster_daemon(
        &cluster,
        &keys,
        listen,
        &[node.spec()],
        &[
            "--health-probe",
            "none",
            "--channel-buffer",
            "1MiB",
            "--channel-spill",
            "0",
            "--stall-timeout",
            "300s",
            // A growth that waited for a session would hold its dials this long; and a
            // supervisor that noticed a session only at the end of its wait would be ready
            // only after it (the bounds below are shorter).
            "--connect-timeout",
            "60s",
        ],
    );
    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");
    let target = format!("{}:{ECHO_PORT}", node.addr);
    let _first = local_node_ssh(&keys, listen, "node-1", "first");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "node-1")
            == "ready"),
        "{}\n{}",
        node_json(&admin, "node-1"),
        d.log()
    );

    // One session: a dial beside the held-up connection wants another; none is waiting, so
    // the growth fails at once (it never waits out the connect timeout for one).
    let _slow = hold_up(&admin, &proxy, &target, &d);
    let dial = {
        let (proxy, target) = (proxy.clone(), target.clone());
        std::thread::spawn(move || one_byte_echo(&proxy, &target))
    };
    assert!(
        d.wait_log(
            "could not open another connection to isolate a dial",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        d.log()
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("could not open another connection to isolate a dial"))
        .unwrap_or("");
    assert!(
        line.contains("no session of the node's own ssh was waiting")
            && line.contains("waited 0ns"),
        "the growth must take only a waiting session, at once: {line}"
    );
    let _ = dial.join();

    // A second ssh of the node is a second connection of it: the next growth takes it.
    let _second = local_node_ssh(&keys, listen, "node-1", "second");
    assert!(
        d.wait_log("reverse session ready", 2, Duration::from_secs(30)),
        "{}",
        d.log()
    );
    let mut n = serde_json::Value::Null;
    let mut held = Vec::new();
    let grew = wait_until(Duration::from_secs(60), || {
        // A connection is congested only while bulk data flows, so congest it again, then
        // dial beside it: the growth (once the 5 s memory of the failed one has passed)
        // takes the waiting session.
        if n["connections"] != 2 {
            held.push(hold_up(&admin, &proxy, &target, &d));
        }
        let ok = one_byte_echo(&proxy, &target).is_ok();
        n = node_json(&admin, "node-1");
        ok && n["connections"] == 2
    });
    assert!(grew, "two sessions, two connections: {n}\n{}", d.log());
}

/// Two `ssh -R` sessions of rev-1: the pool takes one as the node's connection, the other
/// waits to be taken (an extra connection). Returns once both are in and the node is ready.
fn two_sessions(
    keys: &Keys,
    listen: SocketAddr,
    d: &support::daemon::Daemon,
    admin: &Path,
) -> [Proc; 2] {
    let ssh = [
        local_node_ssh(keys, listen, "rev-1", "first"),
        local_node_ssh(keys, listen, "rev-1", "second"),
    ];
    assert!(
        d.wait_log("reverse session ready", 2, Duration::from_secs(30))
            && wait_until(Duration::from_secs(30), || node_state(admin, "rev-1")
                == "ready"),
        "{}",
        d.log()
    );
    ssh
}

/// A node file with `rev-1` at `addr` when `with_node`, else empty.
fn write_reverse_nodes(file: &Path, addr: Ipv4Addr, with_node: bool) {
    let text = if with_node {
        format!("[[nodes]]\nname = \"rev-1\"\naddress = \"{addr}\"\n")
    } else {
        String::new()
    };
    std::fs::write(file, text).unwrap();
}

#[test]
fn a_reverse_node_that_leaves_the_node_set_loses_every_session_and_is_served_again_once_it_is_back()
{
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-1"]);
    let (addr, _stub) = kubelet_stub_here(&keys, "rev-1");
    let nodes = keys.path("nodes.toml");
    write_reverse_nodes(&nodes, addr, true);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &[],
        &[
            "--nodes",
            nodes.to_str().unwrap(),
            "--drain-timeout",
            "2s",
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");
    let proxy = keys.path("proxy.sock");
    let target = format!("{addr}:{ECHO_PORT}");
    let mut ssh = two_sessions(&keys, listen, &d, &admin);
    one_byte_echo(&proxy, &target).unwrap();

    // The node leaves the node set: the session in use is drained and closed, and the one
    // that waited is closed too, so both ssh processes end.
    write_reverse_nodes(&nodes, addr, false);
    let ended = wait_until(Duration::from_secs(30), || {
        ssh.iter_mut()
            .all(|p| matches!(p.0.try_wait(), Ok(Some(_))))
    });
    assert!(
        ended,
        "a node out of the node set kept a session (ssh still running: {:?}); daemon log:\n{}",
        ssh.iter_mut()
            .map(|p| matches!(p.0.try_wait(), Ok(None)))
            .collect::<Vec<_>>(),
        d.log()
    );
    let said: String = ["first", "second"]
        .iter()
        .map(|t| {
            std::fs::read_to_string(keys.path(&format!("rev-1-ssh-{t}.log"))).unwrap_or_default()
        })
        .collect();
    assert!(
        said.contains("left this daemon's node set"),
        "the node's ssh must print why its waiting session was closed: {said}"
    );
    // A new session is refused while it is out.
    let (code, err) = ssh_forward_once(&keys, listen, "rev-1", "rev-1", &[]);
    assert!(
        code != 0 && err.contains("not in this daemon's node set"),
        "exit {code}: {err}"
    );

    // Back in the node set (once the daemon has read the file, the node waits for its ssh):
    // its ssh dials in again and CONNECTs work.
    write_reverse_nodes(&nodes, addr, true);
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "waiting"),
        "{}",
        d.log()
    );
    let again = local_node_ssh(&keys, listen, "rev-1", "again");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "{}",
        d.log()
    );
    one_byte_echo(&proxy, &target).unwrap();
    drop(again);
}

/// Runs `kube-ssh-tunnel ARGS` (bounded); returns (exit code, stdout and stderr).
fn kst_cli(args: &[&str]) -> (i32, String) {
    let o = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(args),
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    (o.code(), format!("{}{}", o.stdout_text(), o.stderr_text()))
}

#[test]
fn reconnect_of_a_reverse_node_waiting_for_its_ssh_says_there_is_no_connection_and_a_rolling_reconnect_leaves_it_alone()
 {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-1"]);
    let (addr, _stub) = kubelet_stub_here(&keys, "rev-1");
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &[format!("rev-1={addr}")],
        &["--health-probe", "none"],
    );
    let admin = keys.path("admin.sock");
    let admin_s = admin.to_str().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "waiting"),
        "{}",
        d.log()
    );
    // No session: nothing to drop, and the operator is told what would bring it up.
    let (code, out) = kst_cli(&["reconnect", "rev-1", "--admin-uds", admin_s]);
    assert!(
        code == 1 && out.contains("waiting for its own ssh to dial in"),
        "exit {code}: {out}"
    );
    let (code, out) = kst_cli(&["reconnect", "--all", "--rolling", "--admin-uds", admin_s]);
    assert!(
        code == 0 && out.contains("rev-1: left alone (waiting for its own ssh to dial in"),
        "exit {code}: {out}"
    );

    // With its session, a reconnect drops it; the node's ssh is told, and comes back when
    // it dials in again (as its unit's restart would).
    let first = local_node_ssh(&keys, listen, "rev-1", "first");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "{}",
        d.log()
    );
    let (code, out) = kst_cli(&["reconnect", "rev-1", "--admin-uds", admin_s]);
    assert!(
        code == 0 && out.contains("reconnecting"),
        "exit {code}: {out}"
    );
    let mut first = first;
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            first.0.try_wait(),
            Ok(Some(_))
        )),
        "the node's session was not dropped by the reconnect: {}",
        d.log()
    );
    let _again = local_node_ssh(&keys, listen, "rev-1", "again");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "{}",
        d.log()
    );
}

#[test]
fn a_drained_reverse_node_keeps_its_waiting_session_and_a_reconnect_serves_through_it() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-1"]);
    let (addr, _stub) = kubelet_stub_here(&keys, "rev-1");
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &[format!("rev-1={addr}")],
        &["--drain-timeout", "2s", "--health-probe", "none"],
    );
    let admin = keys.path("admin.sock");
    let admin_s = admin.to_str().unwrap();
    let proxy = keys.path("proxy.sock");
    let target = format!("{addr}:{ECHO_PORT}");
    let mut ssh = two_sessions(&keys, listen, &d, &admin);
    // A drain closes the session in use; the one that waits stays (the node is still in the
    // node set), also past the listener's once-a-second check.
    let (code, out) = kst_cli(&["drain", "rev-1", "--admin-uds", admin_s]);
    assert_eq!(code, 0, "{out}");
    let ended = |ssh: &mut [Proc; 2]| {
        ssh.iter_mut()
            .map(|p| matches!(p.0.try_wait(), Ok(Some(_))))
            .filter(|ended| *ended)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || ended(&mut ssh) >= 1),
        "the drain did not close the session in use: {}",
        d.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ended(&mut ssh),
        1,
        "a drained node lost its waiting session too: {}",
        d.log()
    );
    // `reconnect` brings it back through the session that waited.
    let (code, out) = kst_cli(&["reconnect", "rev-1", "--admin-uds", admin_s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
            == "ready"),
        "{}",
        d.log()
    );
    one_byte_echo(&proxy, &target).unwrap();
}
