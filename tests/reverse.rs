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
