//! The `kube-ssh-tunnel` binary: the gate, bad input, and `dial` against real sshd nodes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Cluster, HTTP_PORT, keygen};

struct Outcome {
    code: i32,
    stdout: String,
    stdout_bytes: Vec<u8>,
    stderr: String,
}

/// Runs the binary with `args`, feeding `stdin`, killing it after `limit`.
fn run_cli(args: &[String], stdin: &[u8], limit: Duration) -> Outcome {
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(args)
            .env_remove("RUST_LOG")
            .env("HOME", "/nonexistent-home"),
        stdin,
        limit,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_bytes: out.stdout,
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Exit 2, exactly one line on stderr containing `needle`, no panic.
fn assert_usage_error(o: &Outcome, needle: &str) {
    assert_eq!(o.code, 2, "exit code 2 expected; stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(
        lines.len(),
        1,
        "one-line error expected, got: {:?}",
        o.stderr
    );
    assert!(
        lines[0].contains(needle),
        "{:?} should mention {needle:?}",
        lines[0]
    );
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("id_ed25519"), "ed25519", None);
        std::fs::write(
            dir.path().join("known_hosts"),
            "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
        )
        .unwrap();
        Files { dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn args(&self, key: &str, kh: &str, node: &str) -> Vec<String> {
        s(&[
            "dial",
            "--ssh-tunnel",
            "--ssh-user",
            "root",
            "--ssh-keyfile",
            key,
            "--ssh-known-hosts",
            kh,
            "--node",
            node,
            "127.0.0.1:10250",
        ])
    }
}

#[test]
fn dial_and_run_refuse_to_start_without_the_gate() {
    for cmd in ["dial", "run"] {
        let mut args = s(&[cmd, "--ssh-user", "root", "--node", "n=127.0.0.1"]);
        if cmd == "dial" {
            args.push("127.0.0.1:10250".into());
        }
        let o = run_cli(&args, b"", Duration::from_secs(10));
        assert_usage_error(&o, "--ssh-tunnel");
        assert!(
            o.stderr.contains("deprecated") && o.stderr.contains("Konnectivity"),
            "{}",
            o.stderr
        );
    }
}

#[test]
fn bad_input_gives_one_clear_line_and_exit_2() {
    let f = Files::new();
    let key = f.p("id_ed25519");
    let kh = f.p("known_hosts");
    let node = "n1=127.0.0.1";

    // Missing key file.
    let o = run_cli(
        &f.args(&f.p("missing_key"), &kh, node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "missing_key");
    assert!(o.stderr.contains("does not exist"), "{}", o.stderr);

    // Unreadable key: not a private key at all.
    std::fs::write(f.p("garbage"), "this is not a key\n").unwrap();
    std::fs::set_permissions(f.p("garbage"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run_cli(
        &f.args(&f.p("garbage"), &kh, node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "not an OpenSSH private key");

    // Key readable by others.
    std::fs::copy(&key, f.p("open_key")).unwrap();
    std::fs::set_permissions(f.p("open_key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_cli(
        &f.args(&f.p("open_key"), &kh, node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "chmod 600");

    // Encrypted key without a passphrase option.
    let out = support::run_bounded(
        Command::new("ssh-keygen").args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "s3cret",
            "-f",
            &f.p("enc_key"),
        ]),
        b"",
        support::TOOL_LIMIT,
    )
    .unwrap();
    assert!(out.status.success());
    let o = run_cli(
        &f.args(&f.p("enc_key"), &kh, node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "--ssh-key-passphrase-file");

    // Malformed known_hosts line: file and line number in the message.
    std::fs::write(f.p("bad_kh"), "# ok\n127.0.0.1 ssh-ed25519 !!!notbase64\n").unwrap();
    let o = run_cli(
        &f.args(&key, &f.p("bad_kh"), node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, &format!("{}:2", f.p("bad_kh")));

    // Missing known_hosts file.
    let o = run_cli(
        &f.args(&key, &f.p("no_kh"), node),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "no_kh");

    // Nodes with invalid addresses or forms.
    for bad in [
        "n1=999.1.2.3",
        "n1=bad host",
        "n1=10.0.0.1:0",
        "just-a-name",
        "n1=[fd00::1",
    ] {
        let o = run_cli(&f.args(&key, &kh, bad), b"", Duration::from_secs(10));
        assert_usage_error(&o, "invalid node");
    }

    // run: values that would make the daemon useless or hammer the nodes are refused up front.
    let mut run = f.args(&key, &kh, node);
    run[0] = "run".into();
    run.pop();
    let sock = f.p("bad.sock");
    run.extend(s(&[
        "--proxy-uds",
        &sock,
        "--admin-uds",
        &f.p("bad-admin.sock"),
    ]));
    for (flag, value) in [
        ("--header-timeout", "0"),
        ("--tls-handshake-timeout", "0"),
        ("--max-tls-handshakes", "0"),
        ("--backoff-max", "0"),
        ("--backoff-auth-max", "0"),
        ("--stall-timeout", "0"),
        ("--max-connections-per-node", "0"),
        ("--worker-threads", "0"),
        ("--worker-threads", "1025"),
    ] {
        let mut a = run.clone();
        a.extend(s(&[flag, value]));
        let o = run_cli(&a, b"", Duration::from_secs(10));
        assert_usage_error(&o, flag);
    }

    // Destination that is not HOST:PORT.
    let mut args = f.args(&key, &kh, node);
    *args.last_mut().unwrap() = "127.0.0.1".into();
    let o = run_cli(&args, b"", Duration::from_secs(10));
    assert_usage_error(&o, "invalid destination");

    // Unknown flag (clap) is a usage error too, and a bad duration names the value.
    let o = run_cli(
        &s(&["dial", "--ssh-tunnel", "--bogus", "x:1"]),
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    let mut args = f.args(&key, &kh, node);
    args.extend(s(&["--dial-timeout", "soon"]));
    let o = run_cli(&args, b"", Duration::from_secs(10));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("soon"), "{}", o.stderr);
}

#[test]
fn dial_relays_an_http_request_to_a_kubelet_stub() {
    let cluster = Cluster::start(2);
    let n2 = &cluster.nodes[1];
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push(format!("{}:{HTTP_PORT}", n2.addr));
    let req = b"GET /whoami HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n";
    let o = run_cli(&args, req, Duration::from_secs(30));
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert!(o.stdout.starts_with("HTTP/1.1 200 OK"), "{}", o.stdout);
    assert!(
        o.stdout
            .ends_with(&format!("node-2 {}:{HTTP_PORT}", n2.addr)),
        "{}",
        o.stdout
    );

    // A bare node name means that node's kubelet port.
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push("node-1".into());
    let o = run_cli(
        &args,
        b"GET /healthz HTTP/1.0\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert!(o.stdout.ends_with("ok"), "{}", o.stdout);

    // Bytes in, same bytes out (binary safe) through the echo port.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push(format!("{}:{}", n2.addr, support::ECHO_PORT));
    let out = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(&args),
        &payload,
        Duration::from_secs(60),
    )
    .unwrap();
    out.fed.unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, payload);
}

#[test]
fn dial_to_an_unreachable_destination_or_node_fails_with_a_clear_error() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    // The node's sshd refuses the target (not in PermitOpen).
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push(format!("{}:10299", n1.addr));
    let o = run_cli(&args, b"", Duration::from_secs(30));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("node-1") && o.stderr.contains(&format!("{}:10299", n1.addr)),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"));

    // No node owns the destination.
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push("127.9.9.9:80".into());
    let o = run_cli(&args, b"", Duration::from_secs(30));
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("no node matches destination 127.9.9.9:80"),
        "{}",
        o.stderr
    );

    // The node is down.
    n1.kill_sshd();
    let mut args = vec!["dial".to_string()];
    args.extend(cluster.cli_args());
    args.push(format!("{}:{HTTP_PORT}", n1.addr));
    let o = run_cli(&args, b"", Duration::from_secs(30));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("node-1") && o.stderr.contains("TCP connect"),
        "{}",
        o.stderr
    );
}

#[test]
fn run_connects_every_node_and_stops_on_sigterm() {
    let cluster = Cluster::start(2);
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    args.push("--proxy-uds".into());
    args.push(cluster.path().join("proxy.sock").display().to_string());
    args.push("--admin-uds".into());
    args.push(cluster.path().join("admin.sock").display().to_string());
    let mut d = support::daemon::Daemon::start(&args);
    let ready = d.wait_log("tunnel ready", 2, Duration::from_secs(20));
    let one_each = cluster.nodes.iter().all(|n| n.ssh_connections() == 1);
    assert!(
        ready && one_each,
        "run opened one SSH connection per node; log: {}",
        d.log()
    );
    assert_eq!(
        d.stop(libc::SIGTERM),
        Some(0),
        "exit 0 on SIGTERM; log: {}",
        d.log()
    );
    let stderr = d.log();
    assert_eq!(
        stderr.matches("deprecated SSH tunnel mode").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("node=node-1") && stderr.contains("node=node-2"),
        "{stderr}"
    );
}

fn nodes_toml(nodes: &[&support::TestNode]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\n\n",
                n.name, n.addr, n.ssh_port
            )
        })
        .collect()
}

#[test]
fn run_follows_the_node_file_and_keeps_the_last_good_set() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let file = cluster.path().join("nodes.toml");
    std::fs::write(&file, nodes_toml(&[n1, n2])).unwrap();
    let mut args = cluster.daemon_args();
    args.extend(s(&[
        "--nodes",
        file.to_str().unwrap(),
        "--reload-interval",
        "200ms",
        "--drain-timeout",
        "5s",
    ]));
    let mut d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 2, Duration::from_secs(20)),
        "{}",
        d.log()
    );

    // A broken file: logged, and both tunnels stay.
    std::fs::write(
        &file,
        "[[nodes]]\nname = \"node-1\"\naddress = \"not an address\"\n",
    )
    .unwrap();
    assert!(
        d.wait_log("keeping the last good node set", 1, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (n1.ssh_connections(), n2.ssh_connections()),
        (1, 1),
        "{}",
        d.log()
    );

    // node-2 removed: its connection drains and closes; node-1 untouched.
    std::fs::write(&file, nodes_toml(&[n1])).unwrap();
    assert!(
        support::wait_until(Duration::from_secs(10), || n2.ssh_connections() == 0),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("node set updated", 1, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    assert_eq!(n1.ssh_connections(), 1);

    // SIGHUP re-reads at once; node-2 is back.
    std::fs::write(&file, nodes_toml(&[n1, n2])).unwrap();
    support::signal(d.child.id(), libc::SIGHUP);
    assert!(
        support::wait_until(Duration::from_secs(10), || n2.ssh_connections() == 1),
        "{}",
        d.log()
    );

    // SIGTERM: drain, close, exit 0.
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
    assert!(d.log().contains("stopped"), "{}", d.log());
    assert!(support::wait_until(Duration::from_secs(5), || n1
        .ssh_connections()
        == 0
        && n2.ssh_connections() == 0));
}

#[test]
fn config_file_sets_every_flag_and_flags_win_over_it() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let sock = cluster.path().join("cfg.sock");
    let config = cluster.path().join("kube-ssh-tunnel.toml");
    std::fs::write(
        &config,
        format!(
            "ssh_tunnel = true\nssh_user = \"no-such-user\"\nssh_keyfile = \"{}\"\nssh_known_hosts = [\"{}\"]\n\
             node = [\"{}\"]\nproxy_uds = \"{}\"\nhealth_probe = \"none\"\nservice_cidr = [\"10.96.0.0/12\"]\n\
             node_port = [10250]\ndrain_timeout = \"2s\"\n",
            cluster.keys.ed25519.display(),
            cluster.known_hosts.display(),
            n1.spec(),
            sock.display()
        ),
    )
    .unwrap();
    // The flag beats the file's wrong user.
    let admin = cluster.path().join("cfg-admin.sock");
    let args = s(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--ssh-user",
        &cluster.user,
        "--admin-uds",
        admin.to_str().unwrap(),
    ]);
    let mut d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let (_s, head) = support::connect_uds(&sock, &format!("{}:{HTTP_PORT}", n1.addr));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_s, head) = support::connect_uds(&sock, &format!("{}:22", n1.addr));
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "node_port from the file applies: {head}"
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
    assert!(!sock.exists(), "the socket file is removed on exit");

    // Unknown keys and bad values are usage errors naming the key.
    std::fs::write(&config, "ssh_tunnel = true\nbogus_key = 1\n").unwrap();
    let o = run_cli(
        &s(&["run", "--config", config.to_str().unwrap()]),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "unknown key 'bogus_key'");
    std::fs::write(&config, "service_cidr = [\"10.96.0.0/33\"]\n").unwrap();
    let o = run_cli(
        &s(&["run", "--config", config.to_str().unwrap()]),
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("--service-cidr") && o.stderr.contains("10.96.0.0/33"),
        "{}",
        o.stderr
    );
    std::fs::write(&config, "ssh_tunnel = \"yes\"\n").unwrap();
    let o = run_cli(
        &s(&["run", "--config", config.to_str().unwrap()]),
        b"",
        Duration::from_secs(10),
    );
    assert_usage_error(&o, "ssh_tunnel = true");
}

#[test]
fn a_stale_proxy_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
    let cluster = Cluster::start(1);
    let base = |sock: &std::path::Path| {
        let mut a = vec!["run".to_string()];
        a.extend(cluster.cli_args());
        a.extend(s(&[
            "--health-probe",
            "none",
            "--proxy-uds",
            sock.to_str().unwrap(),
        ]));
        a.extend(s(&["--admin-uds", &format!("{}.admin", sock.display())]));
        a
    };
    // Stale: a socket file nobody listens on (a crashed daemon's).
    let stale = cluster.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut d = support::daemon::Daemon::start(&base(&stale));
    assert!(
        d.wait_log(
            "serving CONNECT on a Unix socket",
            1,
            Duration::from_secs(20)
        ),
        "{}",
        d.log()
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());

    // Live: another process serves there.
    let live = cluster.path().join("live.sock");
    let _other = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let o = run_cli(&base(&live), b"", Duration::from_secs(20));
    assert_usage_error(&o, "another process is serving on it");

    // A regular file is never replaced.
    let file = cluster.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let o = run_cli(&base(&file), b"", Duration::from_secs(20));
    assert_usage_error(&o, "is not a socket");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn json_logs_are_one_object_per_line_and_node_lines_carry_node() {
    let cluster = Cluster::start(1);
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    args.extend(s(&["--log-format", "json", "--health-probe", "none"]));
    args.extend(s(&[
        "--proxy-uds",
        cluster.path().join("j.sock").to_str().unwrap(),
    ]));
    args.extend(s(&[
        "--admin-uds",
        cluster.path().join("ja.sock").to_str().unwrap(),
    ]));
    let mut d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0));
    let log = d.log();
    let key = std::fs::read_to_string(&cluster.keys.ed25519).unwrap();
    let secret_line = key.lines().nth(1).unwrap();
    assert!(!log.contains(secret_line), "no key material in the log");
    let mut node_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
        if v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("tunnel "))
        {
            assert_eq!(v["node"], "node-1", "{line}");
            node_lines += 1;
        }
    }
    assert!(node_lines >= 1, "{log}");
}

#[test]
fn check_reports_what_it_found_and_every_problem_with_its_fix() {
    let cluster = Cluster::start(2);
    let mut args = vec!["check".to_string()];
    args.extend(cluster.cli_args());
    let o = run_cli(&args, b"", Duration::from_secs(20));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("nodes: 2") && o.stdout.contains("key: ssh-ed25519 SHA256:"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("host key policy: strict") && o.stdout.contains("problems: none"),
        "{}",
        o.stdout
    );
    assert_eq!(
        cluster.nodes[0].ssh_connections(),
        0,
        "check does not connect"
    );

    // The daemon's own config file, as the upgrade task checks it: `check` takes the keys it
    // shares with `run` and skips `run`'s other keys (proxy_uds, drain_timeout, …). The
    // example's node file is left out; the cluster's nodes come as flags, which win.
    let example = std::fs::read_to_string(support::repo().join("examples/config.toml")).unwrap();
    let config = cluster.path().join("run-config.toml");
    let kept: Vec<&str> = example
        .lines()
        .filter(|l| !l.starts_with("nodes "))
        .collect();
    std::fs::write(&config, kept.join("\n")).unwrap();
    let mut with_file = args.clone();
    with_file.extend(["--config".to_string(), config.display().to_string()]);
    let o = run_cli(&with_file, b"", Duration::from_secs(20));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("problems: none"), "{}", o.stdout);

    // A node missing from known_hosts is a problem, with the fix.
    let kh = cluster.path().join("kh_one");
    std::fs::write(&kh, cluster.nodes[0].known_hosts_line()).unwrap();
    let mut bad = args.clone();
    let i = bad.iter().position(|a| a == "--ssh-known-hosts").unwrap();
    bad[i + 1] = kh.display().to_string();
    let o = run_cli(&bad, b"", Duration::from_secs(20));
    assert_eq!(o.code, 2, "{}", o.stdout);
    assert!(
        o.stdout.contains("node node-2") && o.stdout.contains("ssh-keyscan"),
        "{}",
        o.stdout
    );

    // --connect tries each node: auth, host key, kubelet.
    let mut conn = args.clone();
    conn.push("--connect".into());
    let o = run_cli(&conn, b"", Duration::from_secs(30));
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout.matches("auth ok, host key ok").count(),
        2,
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(":10250 reachable"), "{}", o.stdout);
    cluster.nodes[1].kill_sshd();
    let o = run_cli(&conn, b"", Duration::from_secs(30));
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("connect node-2: FAILED"), "{}", o.stdout);
}

#[test]
fn insecure_mode_is_loud_in_the_log_and_in_status() {
    let cluster = Cluster::start(1);
    let admin = cluster.path().join("ins-admin.sock");
    let mut args = vec!["run".to_string()];
    args.extend(s(&["--ssh-tunnel", "--ssh-user", &cluster.user]));
    args.extend(s(&[
        "--ssh-keyfile",
        cluster.keys.ed25519.to_str().unwrap(),
    ]));
    args.extend(s(&[
        "--insecure-skip-host-key-verification",
        "--health-probe",
        "none",
    ]));
    args.extend(s(&["--node", &cluster.nodes[0].spec()]));
    args.extend(s(&[
        "--proxy-uds",
        cluster.path().join("ins.sock").to_str().unwrap(),
    ]));
    args.extend(s(&["--admin-uds", admin.to_str().unwrap()]));
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("host keys are NOT verified"),
        "{}",
        d.log()
    );
    let o = run_cli(
        &s(&["status", "--admin-uds", admin.to_str().unwrap()]),
        b"",
        Duration::from_secs(10),
    );
    assert!(o.stdout.contains("HOST KEYS NOT VERIFIED"), "{}", o.stdout);
    // accept-new without its file is a usage error.
    let mut a = vec!["check".to_string()];
    a.extend(cluster.cli_args());
    a.extend(s(&["--host-key-policy", "accept-new"]));
    let o = run_cli(&a, b"", Duration::from_secs(10));
    assert_usage_error(&o, "--learned-known-hosts");
}

/// A `kubectl get nodes -o json` document (kind List) for test nodes: node-1 has only an
/// InternalIP and dual-stack pod CIDRs; node-2 has an InternalIP, an ExternalIP and an
/// IPv6-only pod CIDR. The SSH port comes from the annotation.
fn nodes_json(nodes: &[&support::TestNode]) -> String {
    let items: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut addresses = vec![
                serde_json::json!({"type": "InternalIP", "address": n.addr.to_string()}),
                serde_json::json!({"type": "Hostname", "address": n.name}),
            ];
            let cidrs = if i == 0 {
                vec!["10.244.1.0/24".to_string(), "fd00:10:244:1::/64".into()]
            } else {
                addresses.push(serde_json::json!({"type": "ExternalIP", "address": "203.0.113.2"}));
                vec![format!("fd00:10:244:{}::/64", i + 1)]
            };
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": n.name,
                    "annotations": {"kube-ssh-tunnel.io/ssh-port": n.ssh_port.to_string(),
                                    "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux"},
                    "resourceVersion": "1234",
                },
                "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                "status": {
                    "addresses": addresses,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {"kubeletVersion": "v1.31.4", "osImage": "Debian GNU/Linux 12 (bookworm)"},
                },
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items
    }))
    .unwrap()
}

#[test]
fn run_reads_kubectl_node_json_and_keeps_the_last_good_set() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let file = cluster.path().join("nodes.json");
    std::fs::write(&file, nodes_json(&[n1, n2])).unwrap();
    let admin = cluster.path().join("admin.sock");
    let mut args = cluster.daemon_args();
    args.extend(s(&[
        "--nodes",
        file.to_str().unwrap(),
        "--reload-interval",
        "200ms",
        "--drain-timeout",
        "2s",
    ]));
    let mut d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 2, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let status = || {
        let out = support::run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
                "status",
                "-o",
                "json",
                "--admin-uds",
                admin.to_str().unwrap(),
            ]),
            b"",
            Duration::from_secs(60),
        )
        .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let doc = status();
    let cidrs = |doc: &serde_json::Value, name: &str| -> Vec<String> {
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| {
                n["pod_cidrs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(doc["ready"], 2, "{doc}");
    assert_eq!(
        cidrs(&doc, "node-1"),
        ["10.244.1.0/24", "fd00:10:244:1::/64"],
        "{doc}"
    );
    assert_eq!(cidrs(&doc, "node-2"), ["fd00:10:244:2::/64"], "{doc}");

    // A broken file (truncated JSON): logged, both tunnels stay.
    let text = nodes_json(&[n1]);
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    assert!(
        d.wait_log("keeping the last good node set", 1, Duration::from_secs(10)),
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("not a Kubernetes NodeList (JSON)"),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((n1.ssh_connections(), n2.ssh_connections()), (1, 1));

    // The NodeList without node-2: it drains away.
    std::fs::write(&file, nodes_json(&[n1])).unwrap();
    assert!(
        support::wait_until(Duration::from_secs(10), || n2.ssh_connections() == 0),
        "{}",
        d.log()
    );
    assert_eq!(status()["desired"], 1);
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
}

/// Runs the binary with stdout on a pipe whose reader is already gone; (exit code, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: a plain pipe(2); both ends are owned below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] and fds[1] are fresh descriptors we own.
    let (reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"));
    cmd.args(args).stdout(writer).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut v);
        v
    });
    let Some(status) = support::wait_bounded(&mut child, Duration::from_secs(30)).unwrap() else {
        panic!("{args:?} did not end within 30 s");
    };
    (status.code(), drain.join().unwrap())
}

#[test]
fn every_printing_command_ends_quietly_when_its_reader_is_gone() {
    let cluster = Cluster::start(1);
    let admin = cluster.path().join("admin.sock");
    let mut args = cluster.daemon_args();
    args.extend(["--health-probe".to_string(), "none".into()]);
    for n in &cluster.nodes {
        args.extend(["--node".to_string(), n.spec()]);
    }
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let admin = admin.to_str().unwrap();
    let key = cluster.path().join("pipe-key");
    let key = key.to_str().unwrap();
    let check: Vec<String> = std::iter::once("check".to_string())
        .chain(cluster.cli_args())
        .collect();
    let check: Vec<&str> = check.iter().map(String::as_str).collect();
    for cmd in [
        vec!["status", "--admin-uds", admin],
        vec!["status", "-o", "json", "--admin-uds", admin],
        vec!["status", "-o", "wide", "--admin-uds", admin],
        vec!["reference"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["keygen", "--out", key, "--node", "n1=10.0.0.5"],
        check,
    ] {
        let (code, stderr) = with_closed_stdout(&cmd);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{cmd:?}: {stderr}"
        );
        assert_eq!(
            code,
            Some(141),
            "{cmd:?} exits like a Unix tool on EPIPE: {stderr}"
        );
    }
}

#[test]
fn dial_through_a_running_daemon_relays_64_mib_both_ways_and_reports_a_refusal() {
    use sha2::{Digest, Sha256};
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let proxy = cluster.path().join("proxy.sock");
    let mut args = cluster.daemon_args();
    args.extend(
        [
            "--node",
            &node.spec(),
            "--health-probe",
            "none",
            "--node-port",
            &format!("{HTTP_PORT},{}", support::ECHO_PORT),
            // The whole daemon on one thread: the SSH session, the front and the relay take
            // turns, and the bytes still go both ways at once.
            "--worker-threads",
            "1",
        ]
        .map(String::from),
    );
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let proxy = proxy.to_str().unwrap();

    // 64 MiB through the echo server: the same bytes come back (no --ssh-tunnel, no keys: the
    // daemon does the SSH).
    let mut data = vec![0u8; 64 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let target = format!("{}:{}", node.addr, support::ECHO_PORT);
    let o = run_cli(
        &s(&["dial", "--proxy-uds", proxy, &target]),
        &data,
        Duration::from_secs(120),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout_bytes.len(), data.len(), "{}", o.stderr);
    assert_eq!(
        Sha256::digest(&o.stdout_bytes),
        Sha256::digest(&data),
        "the same bytes back"
    );

    // A bare node name is its kubelet port.
    let o = run_cli(
        &s(&["dial", "--proxy-uds", proxy, "node-1"]),
        b"GET /whoami HTTP/1.0\r\n\r\n",
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("node-1"), "{}", o.stdout);

    // A destination the policy refuses: exit 1 with the daemon's status line.
    let o = run_cli(
        &s(&["dial", "--proxy-uds", proxy, "127.0.0.1:22"]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("HTTP/1.1 403 Forbidden"), "{}", o.stderr);
    assert!(o.stderr.contains("loopback"), "{}", o.stderr);

    // No daemon there: a usage error naming the socket.
    let gone = cluster.path().join("nothing.sock");
    let o = run_cli(
        &s(&["dial", "--proxy-uds", gone.to_str().unwrap(), &target]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("nothing.sock"), "{}", o.stderr);
}

#[test]
fn two_hundred_refusing_nodes_for_a_minute_log_at_most_three_lines_each() {
    let cluster = Cluster::start(0);
    let dead = support::refused_address(22);
    let mut args = cluster.daemon_args();
    for i in 0..200 {
        args.extend(["--node".to_string(), format!("n{i}={dead}:22")]);
    }
    args.extend(
        [
            "--log-format",
            "json",
            "--health-probe",
            "none",
            "--backoff-min",
            "100ms",
            "--backoff-max",
            "1s",
        ]
        .map(String::from),
    );
    let mut d = support::daemon::Daemon::start(&args);
    std::thread::sleep(Duration::from_secs(60));
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
    let log = d.log();
    let mut per_node = std::collections::HashMap::<String, usize>::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Shutdown's drain lines are not failures; count what ran before it.
        if v["message"]
            .as_str()
            .is_some_and(|m| m.contains("draining"))
        {
            continue;
        }
        if let Some(n) = v["node"].as_str() {
            *per_node.entry(n.to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        per_node.len(),
        200,
        "every node logged its failure once: {per_node:?}"
    );
    let worst = per_node.values().max().copied().unwrap_or(0);
    assert!(
        worst <= 3,
        "at most 3 lines per node in 60 s, got {worst}: {:?}",
        per_node
            .iter()
            .filter(|(_, c)| **c > 3)
            .take(3)
            .collect::<Vec<_>>()
    );
    let total: usize = per_node.values().sum();
    eprintln!("200 refusing nodes, 60 s: {total} log lines about nodes");
}
