//! Operating the daemon: the admin API, `status`, metrics, readiness, drain and reconnect,
//! against real sshd nodes.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use support::daemon::Daemon;
use support::{Cluster, ECHO_PORT, HTTP_PORT};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (killed after a minute).
fn cli(args: &[&str]) -> Out {
    let o = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(args)
            .env("NO_COLOR", "1"),
        b"",
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("run kube-ssh-tunnel: {e}"));
    Out {
        code: o.code(),
        stdout: o.stdout_text(),
        stderr: o.stderr_text(),
    }
}

struct Running {
    d: Daemon,
    admin: PathBuf,
    proxy: PathBuf,
}

impl Running {
    fn status(&self, extra: &[&str]) -> Out {
        let mut a = vec!["status", "--admin-uds", self.admin.to_str().unwrap()];
        a.extend_from_slice(extra);
        cli(&a)
    }
}

fn start(c: &Cluster, extra: &[&str]) -> Running {
    let admin = c.path().join("admin.sock");
    let proxy = c.path().join("proxy.sock");
    let mut args = vec!["run".to_string()];
    args.extend(c.cli_args());
    for a in [
        "--admin-uds",
        admin.to_str().unwrap(),
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--keepalive-interval",
        "1s",
        "--keepalive-count",
        "3",
        "--backoff-max",
        "1s",
        "--health-probe",
        "none",
    ] {
        args.push(a.to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::start(&args);
    assert!(
        support::wait_until(Duration::from_secs(20), || admin.exists()),
        "admin socket: {}",
        d.log()
    );
    Running { d, admin, proxy }
}

async fn get(admin: &Path, path: &str) -> (u16, String) {
    request(
        &Endpoint::Unix(admin.to_path_buf()),
        "GET",
        path,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

const NODE_KEYS: [&str; 33] = [
    "name",
    "address",
    "ssh_port",
    "state",
    "mode",
    "drained_by",
    "drained_at",
    "reason",
    "since",
    "for_s",
    "uptime_s",
    "connections",
    "congested_connections",
    "buffered_bytes",
    "spilled_bytes",
    "open_channels",
    "dials_total",
    "dial_failures_total",
    "bytes_in",
    "bytes_out",
    "reconnects",
    "last_health",
    "last_error",
    "next_retry_s",
    "host_key",
    "host_key_trust",
    "client_key",
    "keepalive_rtt_ms",
    "pod_cidrs",
    "refused",
    "not_ready_since",
    "down_for_s",
    "flaps_last_hour",
];

#[test]
fn status_shows_ready_nodes_then_a_killed_one_with_its_reason() {
    let cluster = Cluster::start(3);
    let r = start(&cluster, &[]);
    let all_ready = support::wait_until(Duration::from_secs(20), || r.status(&[]).code == 0);
    let o = r.status(&[]);
    assert!(all_ready, "{} {} {}", o.stdout, o.stderr, r.d.log());
    assert!(
        o.stdout.contains("3/3 nodes ready") && o.stdout.contains("DEPRECATED"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .lines()
            .next()
            .unwrap()
            .contains(kube_ssh_tunnel::VERSION)
    );
    for h in [
        "NODE",
        "ADDRESS",
        "STATE",
        "FOR",
        "DOWN",
        "FLAPS/1H",
        "CHANNELS",
        "CONNS",
        "CONGESTED",
        "BUFFERED",
        "DIALS",
        "FAILS",
        "HEALTH",
        "RETRY-IN",
        "LAST ERROR",
    ] {
        assert!(o.stdout.contains(h), "column {h}: {}", o.stdout);
    }
    let ready_rows = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("node-") && l.contains(" ready "))
        .count();
    assert_eq!(ready_rows, 3, "{}", o.stdout);
    assert!(!o.stdout.contains("\x1b["), "no colour when not a terminal");

    cluster.nodes[1].kill_sshd();
    let budget = Duration::from_secs(4 + 2);
    let noticed = support::wait_until(budget, || r.status(&[]).code == 1);
    let o = r.status(&[]);
    assert!(noticed, "{}", o.stdout);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("node-2"))
        .unwrap()
        .to_string();
    assert!(!line.contains(" ready "), "{line}");
    assert!(
        line.contains("TCP connect") || line.contains("connection lost"),
        "the reason shows: {line}"
    );
    assert!(o.stdout.contains("2/3 nodes ready"), "{}", o.stdout);

    let wide = r.status(&["-o", "wide"]);
    for h in [
        "HOST KEY",
        "POD CIDRS",
        "IN",
        "OUT",
        "RECONNECTS",
        "SPILLED",
        "REFUSED",
    ] {
        assert!(wide.stdout.contains(h), "{}", wide.stdout);
    }
    assert!(wide.stdout.contains("SHA256:"), "{}", wide.stdout);

    let json = r.status(&["-o", "json"]);
    assert_eq!(json.code, 1);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("-o json is JSON");
    for k in [
        "version",
        "deprecated_mode",
        "desired",
        "ready",
        "nodes",
        "insecure_host_keys",
    ] {
        assert!(v.get(k).is_some(), "pool key {k}");
    }
    assert_eq!(v["deprecated_mode"], true);
    assert_eq!(
        (v["desired"].as_u64(), v["ready"].as_u64()),
        (Some(3), Some(2))
    );
    for n in v["nodes"].as_array().unwrap() {
        let keys: std::collections::BTreeSet<&str> =
            n.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let want: std::collections::BTreeSet<&str> = NODE_KEYS.into_iter().collect();
        assert_eq!(keys, want, "node keys match the schema");
        assert!(
            [
                "connecting",
                "ready",
                "degraded",
                "backoff",
                "draining",
                "drained",
                "failed"
            ]
            .contains(&n["state"].as_str().unwrap())
        );
        assert!(humantime::parse_rfc3339(n["since"].as_str().unwrap()).is_ok());
    }
    let _: kube_ssh_tunnel::admin::document::StatusDocument =
        serde_json::from_str(&json.stdout).unwrap();
}

#[test]
fn status_without_a_daemon_exits_2_and_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let o = cli(&["status", "--admin-uds", sock.to_str().unwrap()]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains(sock.to_str().unwrap()) && o.stderr.contains("--admin-uds"),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.trim().lines().count(), 1, "{}", o.stderr);
    let o = cli(&["status", "--admin-listen", "127.0.0.1:9"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("127.0.0.1:9"), "{}", o.stderr);
}

fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!("{name}{labels} "))
                || (labels.is_empty() && l.starts_with(&format!("{name} ")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn python_parses(text: &str) -> Result<(), String> {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nfams = list(parse(sys.stdin.read()))\nprint(len(fams))\n";
    let o = support::run_bounded(
        Command::new("python3").args(["-c", script]),
        text.as_bytes(),
        support::TOOL_LIMIT,
    )?;
    o.fed.map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_openmetrics_and_count_dials_exactly() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let r = start(&cluster, &[]);
    assert!(
        r.d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        r.d.log()
    );
    let (code, before) = get(&r.admin, "/metrics").await;
    assert_eq!(code, 200);
    python_parses(&before)
        .expect("the Python prometheus_client OpenMetrics parser accepts /metrics");
    for name in [
        "kube_ssh_tunnel_tunnels",
        "kube_ssh_tunnel_tunnel_up",
        "kube_ssh_tunnel_dial_duration_seconds",
        "kube_ssh_tunnel_open_channels",
        "kube_ssh_tunnel_deprecated_mode_enabled",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} in\n{before}"
        );
    }
    let ok = r#"{node="node-1",result="ok"}"#;
    let dials0 = sample(&before, "kube_ssh_tunnel_dials_total", ok);
    let hist0 = sample(&before, "kube_ssh_tunnel_dial_duration_seconds_count", "");
    const N: usize = 7;
    for _ in 0..N {
        let (mut s, head) = support::connect_uds(&r.proxy, &format!("{}:{HTTP_PORT}", n1.addr));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .expect("the kubelet's reply, relayed to its end");
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nok"),
            "the kubelet's /healthz reply, relayed whole: {reply:?}"
        );
    }
    let (_, after) = get(&r.admin, "/metrics").await;
    python_parses(&after).expect("still valid");
    assert_eq!(
        sample(&after, "kube_ssh_tunnel_dials_total", ok) - dials0,
        N as f64,
        "{after}"
    );
    assert_eq!(
        sample(&after, "kube_ssh_tunnel_dial_duration_seconds_count", "") - hist0,
        N as f64
    );
    assert!(
        sample(
            &after,
            "kube_ssh_tunnel_bytes_total",
            r#"{node="node-1",direction="in"}"#
        ) > 0.0
    );
    assert_eq!(
        sample(&after, "kube_ssh_tunnel_deprecated_mode_enabled", ""),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "kube_ssh_tunnel_connect_requests_total",
            r#"{code="200"}"#
        ),
        N as f64
    );
    assert_eq!(
        sample(&after, "kube_ssh_tunnel_tunnel_up", r#"{node="node-1"}"#),
        1.0
    );
    let (_, doc) = get(&r.admin, "/status").await;
    let doc: kube_ssh_tunnel::admin::document::StatusDocument = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc.nodes[0].dials_total, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_nodes_and_healthz_stays_up_while_they_fail() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    n1.kill_sshd();
    let r = start(&cluster, &[]);
    let (code, body) = get(&r.admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("0 of 1"), "{body}");
    let (code, _) = get(&r.admin, "/healthz").await;
    assert_eq!(code, 200, "healthz stays 200 while nodes fail");
    n1.start_sshd();
    let mut ready = false;
    for _ in 0..100 {
        if get(&r.admin, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{}", r.d.log());
    let (_, body) = get(&r.admin, "/readyz").await;
    assert!(body.contains("1 of 1"), "{body}");
    assert_eq!(get(&r.admin, "/healthz").await.0, 200);
}

#[test]
fn drain_refuses_new_connects_lets_open_streams_finish_and_reconnect_makes_a_new_connection() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let ports = format!("{HTTP_PORT},{ECHO_PORT}");
    let r = start(&cluster, &["--node-port", &ports]);
    assert!(support::wait_until(Duration::from_secs(20), || r
        .status(&[])
        .code
        == 0));
    let (mut open, head) = support::connect_uds(&r.proxy, &format!("{}:{ECHO_PORT}", n1.addr));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    open.write_all(b"before").unwrap();

    let admin = r.admin.to_str().unwrap();
    let o = cli(&["drain", "--admin-uds", admin, "node-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let node1 = |r: &Running| {
        let st = r.status(&["-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
        v["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == "node-1").cloned())
            .unwrap_or_default()
    };
    let n = node1(&r);
    assert_eq!(n["state"], "draining", "{n}");
    assert_eq!(n["drained_by"], "admin socket (uid 0)", "{n}");
    assert!(n["drained_at"].is_string(), "{n}");
    let (mut refused, head) = support::connect_uds(&r.proxy, &format!("{}:{HTTP_PORT}", n1.addr));
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "a new CONNECT to a drained node is refused with 503: {head}"
    );
    let mut body = String::new();
    let _ = refused.read_to_string(&mut body);
    let whole = format!("{head}{body}");
    assert!(
        whole.contains("node drained by admin socket (uid 0)")
            && whole.contains("kube-ssh-tunnel reconnect node-1"),
        "the body names the drain and how to undo it: {whole}"
    );
    let (_, head) = support::connect_uds(&r.proxy, &format!("node-1:{HTTP_PORT}"));
    assert!(head.starts_with("HTTP/1.1 503"), "by name too: {head}");

    // The open stream still works and finishes; then the connection closes.
    open.write_all(b"-after").unwrap();
    open.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    open.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before-after");
    drop(open);
    assert!(support::wait_until(Duration::from_secs(10), || n1
        .ssh_connections()
        == 0));
    // Once its streams have finished it stays in status, `drained`, counted apart; the rest
    // being ready, `status` exits 0 (an operator's drain is intended).
    assert!(
        support::wait_until(Duration::from_secs(10), || node1(&r)["state"] == "drained"),
        "{}",
        node1(&r)
    );
    std::thread::sleep(Duration::from_secs(4));
    let n = node1(&r);
    assert_eq!(n["state"], "drained", "still there seconds later: {n}");
    assert_eq!(n["drained_by"], "admin socket (uid 0)", "{n}");
    let st = r.status(&[]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert!(
        st.stdout.contains("1/1 nodes ready — 1 drained"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("drained"), "{}", st.stdout);

    let o = cli(&["reconnect", "--admin-uds", admin, "node-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        support::wait_until(Duration::from_secs(10), || node1(&r)["state"] == "ready"),
        "reconnect brings a drained node back: {}",
        node1(&r)
    );
    assert!(node1(&r)["drained_by"].is_null());

    let o = cli(&["reconnect", "--admin-uds", admin, "node-2"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let reconnected = support::wait_until(Duration::from_secs(10), || {
        let st = r.status(&["-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
        v["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .any(|n| n["name"] == "node-2" && n["reconnects"] == 1 && n["state"] == "ready")
        })
    });
    assert!(reconnected, "{}", r.status(&[]).stdout);
    assert_eq!(
        n2.sshd_log().matches("Accepted publickey").count(),
        2,
        "a new SSH connection"
    );
    let o = cli(&["drain", "--admin-uds", admin, "no-such-node"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("no node named 'no-such-node'"),
        "{}",
        o.stderr
    );
}

#[test]
fn admin_socket_is_0600_and_a_non_loopback_tcp_bind_needs_explicit_consent() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start(1);
    let r = start(&cluster, &[]);
    let mode = std::fs::metadata(&r.admin).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(r);

    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    args.extend([
        "--proxy-uds".into(),
        cluster.path().join("p2.sock").display().to_string(),
    ]);
    args.extend(["--admin-listen".into(), "0.0.0.0:0".into()]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let o = cli(&refs);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("not a loopback address") && o.stderr.contains("--admin-allow-remote"),
        "{}",
        o.stderr
    );

    // On loopback TCP, `status --admin-listen` reaches it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args());
    args.extend([
        "--proxy-uds".into(),
        cluster.path().join("p3.sock").display().to_string(),
        "--admin-uds".into(),
        cluster.path().join("a3.sock").display().to_string(),
    ]);
    args.extend(["--admin-listen".into(), format!("127.0.0.1:{port}")]);
    let d = Daemon::start(&args);
    let addr = format!("127.0.0.1:{port}");
    let ok = support::wait_until(Duration::from_secs(20), || {
        cli(&["status", "--admin-listen", &addr]).code == 0
    });
    assert!(ok, "{}", d.log());
}

/// One raw HTTP/1.1 request to `addr` with the given Host and Authorization; the status code.
fn raw_status(addr: &str, method: &str, path: &str, host: &str, token: Option<&str>) -> u16 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn admin_over_tcp_needs_a_token_for_actions_checks_the_host_and_limits_reconnects() {
    let cluster = Cluster::start(1);
    let token_file = cluster.path().join("admin-token");
    let token = "s3cr3t-t0ken-0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let start_tcp = |extra: &[&str]| {
        let mut args = vec!["run".to_string()];
        args.extend(cluster.cli_args());
        args.extend([
            "--proxy-uds".into(),
            cluster.path().join("p-tcp.sock").display().to_string(),
            "--admin-uds".into(),
            cluster.path().join("a-tcp.sock").display().to_string(),
            "--admin-listen".into(),
            addr.clone(),
            "--health-probe".into(),
            "none".into(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let d = Daemon::start(&args);
        assert!(
            d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
            "{}",
            d.log()
        );
        d
    };
    let tf = token_file.to_str().unwrap();

    // Without a token file: reads work, actions are refused over TCP.
    let mut d = start_tcp(&[]);
    assert_eq!(raw_status(&addr, "GET", "/healthz", "127.0.0.1", None), 200);
    assert_eq!(
        raw_status(&addr, "POST", "/nodes/node-1/drain", "127.0.0.1", None),
        403
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0));

    // With one: the Host check, the token, and the CLI sending it.
    let mut d = start_tcp(&["--admin-token-file", tf]);
    let host = format!("localhost:{port}");
    assert_eq!(raw_status(&addr, "GET", "/status", &host, None), 200);
    assert_eq!(
        raw_status(&addr, "GET", "/status", "rebind.attacker.example", None),
        403,
        "a DNS name in Host (DNS rebinding) is refused"
    );
    assert_eq!(
        raw_status(&addr, "POST", "/nodes/node-1/reconnect", "127.0.0.1", None),
        401
    );
    assert_eq!(
        raw_status(
            &addr,
            "POST",
            "/nodes/node-1/reconnect",
            "127.0.0.1",
            Some("wrong-token-0123456789")
        ),
        401
    );
    assert_eq!(
        raw_status(
            &addr,
            "POST",
            "/nodes/node-1/reconnect",
            "127.0.0.1",
            Some(token)
        ),
        200
    );
    assert_eq!(
        raw_status(
            &addr,
            "POST",
            "/nodes/node-1/reconnect",
            "127.0.0.1",
            Some(token)
        ),
        429,
        "a second reconnect within 10 s is refused"
    );
    let o = cli(&["drain", "--admin-listen", &addr, "node-1"]);
    assert_ne!(o.code, 0, "drain without the token fails: {}", o.stdout);
    let o = cli(&[
        "drain",
        "--admin-listen",
        &addr,
        "--admin-token-file",
        tf,
        "node-1",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // A drained node stays out until reconnect brings it back.
    let o = cli(&[
        "reconnect",
        "--admin-listen",
        &addr,
        "--admin-token-file",
        tf,
        "node-1",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        support::wait_until(Duration::from_secs(20), || cli(&[
            "status",
            "--admin-listen",
            &addr
        ])
        .code
            == 0),
        "node-1 back and ready"
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0));

    // --admin-token-for-reads: reads need it too.
    let mut d = start_tcp(&["--admin-token-file", tf, "--admin-token-for-reads"]);
    assert_eq!(raw_status(&addr, "GET", "/status", "127.0.0.1", None), 401);
    assert_eq!(
        raw_status(&addr, "GET", "/status", "127.0.0.1", Some(token)),
        200
    );
    assert_eq!(
        cli(&["status", "--admin-listen", &addr, "--admin-token-file", tf]).code,
        0
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_has_every_nodes_series_from_the_start() {
    let cluster = Cluster::start(2);
    let dead = format!("node-dead={}:22", support::refused_address(22));
    let r = start(&cluster, &["--node", &dead]);
    // At once, before any node is ready.
    let (code, text) = get(&r.admin, "/metrics").await;
    assert_eq!(code, 200);
    python_parses(&text).expect("the Python prometheus_client OpenMetrics parser accepts it");
    for node in ["node-1", "node-2", "node-dead"] {
        for series in [
            format!("kube_ssh_tunnel_reconnects_total{{node=\"{node}\"}} 0"),
            format!("kube_ssh_tunnel_dials_total{{node=\"{node}\",result=\"ok\"}} 0"),
            format!("kube_ssh_tunnel_dials_total{{node=\"{node}\",result=\"timeout\"}} 0"),
            format!("kube_ssh_tunnel_health_checks_total{{node=\"{node}\",result=\"fail\"}} 0"),
            format!("kube_ssh_tunnel_keepalive_rtt_seconds{{node=\"{node}\"}} NaN"),
        ] {
            assert!(text.contains(&series), "{series} in\n{text}");
        }
    }
}

/// A free loopback port (bound and released; the daemon binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn one_daemon_serves_the_admin_socket_for_actions_and_loopback_tcp_for_reads() {
    let cluster = Cluster::start(2);
    let token_file = cluster.path().join("admin-token");
    let token = "b0th-l1steners-0123456789abcdef";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let r = start(
        &cluster,
        &[
            "--admin-listen",
            &addr,
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let ready = support::wait_until(Duration::from_secs(20), || r.status(&[]).code == 0);
    assert!(ready, "{}", r.d.log());

    // Over TCP, without a token: reads work (probes, Prometheus) ...
    assert_eq!(raw_status(&addr, "GET", "/healthz", "127.0.0.1", None), 200);
    assert_eq!(raw_status(&addr, "GET", "/readyz", "127.0.0.1", None), 200);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut scrape = String::new();
    let _ = s.read_to_string(&mut scrape);
    assert!(
        scrape.starts_with("HTTP/1.1 200") && scrape.contains("kube_ssh_tunnel_dials_total"),
        "{scrape}"
    );
    // ... and an action is refused.
    assert_eq!(
        raw_status(&addr, "POST", "/nodes/node-1/drain", "127.0.0.1", None),
        401
    );
    let state = |name: &str| {
        let doc = r.status(&["-o", "json"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["state"].clone())
    };
    assert_eq!(
        state("node-1"),
        Some("ready".into()),
        "the refused drain changed nothing"
    );

    // The same daemon's Unix socket takes actions without a token: the CLI drains node-1.
    let o = cli(&["drain", "--admin-uds", r.admin.to_str().unwrap(), "node-1"]);
    assert_eq!(o.code, 0, "{} {}", o.stdout, o.stderr);
    // With no open stream its connection closes at once and it leaves the desired set.
    assert!(
        r.d.wait_log(
            "drain requested over the admin API",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        r.d.log()
    );
    assert_ne!(state("node-1"), Some("ready".into()));
    assert_eq!(state("node-2"), Some("ready".into()));
    // TCP still serves reads meanwhile.
    assert_eq!(raw_status(&addr, "GET", "/status", "127.0.0.1", None), 200);
}
