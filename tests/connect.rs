//! The HTTP CONNECT front against real sshd nodes and real clients (kube-apiserver's exact
//! bytes, curl, TLS end to end).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_ssh_tunnel::policy::Policy;
use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::proxy::{ConnectFront, FrontLimits, listen};
use kube_ssh_tunnel::{Node, Pool, SshSettings};
use support::{Cluster, ECHO_PORT, HTTP_PORT, HTTPS_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

struct Front {
    front: Arc<ConnectFront>,
    pool: Arc<Pool>,
    sock: PathBuf,
}

fn settings(c: &Cluster, open_timeout: Duration) -> SshSettings {
    SshSettings::builder(c.user.clone())
        .key_file(&c.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&c.known_hosts)
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .open_timeout(open_timeout)
        .build()
}

/// An in-process front on a Unix socket over a pool of `nodes`, once they are ready.
async fn front(
    c: &Cluster,
    nodes: Vec<Node>,
    policy: Policy,
    limits: FrontLimits,
    open_timeout: Duration,
) -> Front {
    let mut cfg = PoolConfig::new(settings(c, open_timeout));
    cfg.health.probe = Probe::None;
    cfg.reconnect_wait = Some(Duration::from_secs(2));
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let pool = Arc::new(Pool::with_config(cfg, nodes).unwrap());
    for n in &names {
        let mut rx = pool.subscribe(n).unwrap();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.first_attempt_done),
        )
        .await;
    }
    let sock = c.path().join(format!("front-{}.sock", rand_tag()));
    let listener = listen::bind_uds(&sock).unwrap();
    let front = ConnectFront::new(pool.clone(), policy, limits);
    front.spawn_uds(listener);
    Front { front, pool, sock }
}

fn rand_tag() -> u32 {
    use rand::Rng;
    rand::rng().random()
}

/// Reads a response head byte by byte (never past its end); returns it as text.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends kube-apiserver's exact CONNECT request on a new socket; returns (stream, head).
async fn connect(sock: &Path, target: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(20), read_head(&mut s))
        .await
        .expect("a response");
    (s, head)
}

/// A failed CONNECT: status code and the one-line body; asserts the server then closes.
async fn refused(sock: &Path, raw: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut all))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let status = all
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = all.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    assert_eq!(body.matches('\n').count(), 1, "one-line body: {body:?}");
    (status, body.trim_end().to_string())
}

async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str) -> String {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Asks for /whoami on a kept-alive connection and reads exactly the reply (head and a
/// Content-Length body), leaving the stream open.
async fn whoami_kept_open<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"GET /whoami HTTP/1.1\r\nHost: kubelet\r\n\r\n")
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(20), read_head(s))
        .await
        .expect("a reply");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut body))
        .await
        .expect("the body")
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The mutual-TLS listener's files: a server certificate for a free loopback address and a
/// client CA with kube-apiserver's client certificate.
struct Mtls {
    addr: std::net::Ipv4Addr,
    port: u16,
    server_crt: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    client_crt: PathBuf,
    client_key: PathBuf,
}

impl Mtls {
    fn new(cluster: &Cluster, port: u16) -> Mtls {
        let dir = cluster.path().join(format!("mtls-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let addr = support::refused_address(port);
        let (server_crt, server_key) = cluster
            .ca
            .issue(&dir, "front", &[addr.to_string()], false)
            .unwrap();
        let clients = support::TestCa::new("kube-apiserver client CA").unwrap();
        let client_ca = dir.join("client-ca.crt");
        clients.write(&client_ca).unwrap();
        let (client_crt, client_key) = clients.issue(&dir, "kube-apiserver", &[], true).unwrap();
        Mtls {
            addr,
            port,
            server_crt,
            server_key,
            client_ca,
            client_crt,
            client_key,
        }
    }

    /// `run`'s flags for this listener.
    fn args(&self) -> Vec<String> {
        [
            ("--proxy-listen", format!("{}:{}", self.addr, self.port)),
            ("--tls-cert", self.server_crt.display().to_string()),
            ("--tls-key", self.server_key.display().to_string()),
            ("--client-ca", self.client_ca.display().to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

fn run_args(c: &Cluster) -> Vec<String> {
    let mut a = vec!["run".to_string()];
    a.extend(c.cli_args());
    a.extend(["--health-probe".into(), "none".into()]);
    a.extend([
        "--admin-uds".into(),
        c.path()
            .join(format!("admin-{}.sock", rand_tag()))
            .display()
            .to_string(),
    ]);
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_bytes_over_uds_get_a_bare_200_then_tls_reaches_the_kubelet() {
    let cluster = Cluster::start(2);
    let n2 = &cluster.nodes[1];
    let sock = cluster.path().join("run/proxy.sock");
    let mut args = run_args(&cluster);
    args.extend(["--proxy-uds".into(), sock.display().to_string()]);
    // The stub serves HTTPS on 10251 (a real kubelet: 10250); allow both on node addresses.
    args.extend(["--node-port".into(), format!("{HTTP_PORT},{HTTPS_PORT}")]);
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 2, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");

    let (mut s, head) = connect(&sock, &format!("{}:{HTTPS_PORT}", n2.addr)).await;
    assert_eq!(head, "HTTP/1.1 200 Connection Established\r\n\r\n");
    let mut extra = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), s.read(&mut extra)).await;
    assert!(
        early.is_err(),
        "no byte follows the 200 before the client speaks"
    );

    // TLS end to end: the kubelet's certificate checks out against the cluster CA.
    let config = kube_ssh_tunnel::tls::client_config(kube_ssh_tunnel::tls::ServerTrust::CaFile(
        &cluster.ca_file,
    ))
    .unwrap();
    let name = kube_ssh_tunnel::tls::server_name(&n2.addr.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
        .expect("TLS through the tunnel");
    let reply = get(&mut tls, "/whoami").await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("node-2"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_proxytunnel_through_the_mtls_listener_needs_a_client_cert() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let m = Mtls::new(&cluster, 8131);
    let (addr, client_crt, client_key) = (m.addr, m.client_crt.clone(), m.client_key.clone());
    let mut args = run_args(&cluster);
    args.extend(m.args());
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let curl = |with_cert: bool| {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "20",
            "--proxy",
            &format!("https://{addr}:8131"),
        ])
        .arg("--proxy-cacert")
        .arg(&cluster.ca_file);
        if with_cert {
            c.arg("--proxy-cert")
                .arg(&client_crt)
                .arg("--proxy-key")
                .arg(&client_key);
        }
        c.args(["-p", &format!("http://{}:{HTTP_PORT}/whoami", n1.addr)]);
        support::run_bounded(&mut c, b"", support::TOOL_LIMIT).expect("curl")
    };
    let ok = curl(true);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.starts_with("node-1"), "{out}");
    let refused = curl(false);
    assert!(
        !refused.status.success(),
        "without a client certificate the handshake is refused"
    );
    assert!(refused.stdout.is_empty());
    assert!(
        d.wait_log("TLS handshake refused", 1, Duration::from_secs(5)),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_session_exchanges_messages_both_ways_and_closes_cleanly() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let f = front(
        &cluster,
        cluster.node_list(),
        Policy::default(),
        FrontLimits::default(),
        Duration::from_secs(5),
    )
    .await;
    let (mut s, head) = connect(&f.sock, &format!("{}:{HTTP_PORT}", n1.addr)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: kubelet\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let h = read_head(&mut s).await;
    assert!(h.starts_with("HTTP/1.1 101"), "{h}");
    for msg in [&b"hello"[..], &[7u8; 100_000][..], b"exit"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("clean close")
        .unwrap();
    assert!(rest.is_empty());
    let t = f.pool.tunnel("node-1").unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || t
        .open_channels()
        == 0
        && f.front.active() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_by_node_address_pod_cidr_and_service_never_a_draining_node() {
    let cluster = Cluster::start(3);
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    n2.start_pod_stub();
    let policy = Policy {
        service_cidrs: vec![format!("{}/32", cluster.service_addr).parse().unwrap()],
        ..Policy::default()
    };
    let f = front(
        &cluster,
        cluster.node_list(),
        policy,
        FrontLimits::default(),
        Duration::from_secs(5),
    )
    .await;
    let open = |name: &str| f.pool.tunnel(name).map(|t| t.open_channels()).unwrap_or(0);

    for n in [n1, n2, n3] {
        let (mut s, head) = connect(&f.sock, &format!("{}:{HTTP_PORT}", n.addr)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(get(&mut s, "/whoami").await.contains(&n.name));
    }

    // Closed streams release their channels asynchronously; start from zero.
    assert!(support::wait_until(Duration::from_secs(5), || open(
        "node-1"
    ) + open(
        "node-2"
    ) + open(
        "node-3"
    ) == 0));
    // A pod IP inside node-2's pod CIDR goes through node-2 (the other sshds would refuse it).
    let (mut s, head) = connect(&f.sock, &format!("{}:{HTTP_PORT}", n2.pod_addr)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        (open("node-1"), open("node-2"), open("node-3")),
        (0, 1, 0),
        "carried by node-2"
    );
    assert!(get(&mut s, "/whoami").await.contains("pod-on-node-2"));
    drop(s);

    // A service IP goes to the ready node with the fewest channels.
    let e1: kube_ssh_tunnel::Destination = format!("{}:{ECHO_PORT}", n1.addr).parse().unwrap();
    let e3: kube_ssh_tunnel::Destination = format!("{}:{ECHO_PORT}", n3.addr).parse().unwrap();
    let held1 = vec![
        f.pool.dial_through("node-1", &e1).await.unwrap(),
        f.pool.dial_through("node-1", &e1).await.unwrap(),
    ];
    let held3 = f.pool.dial_through("node-3", &e3).await.unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || open(
        "node-2"
    ) == 0));
    let svc = format!("{}:{HTTP_PORT}", cluster.service_addr);
    let (mut via2, head) = connect(&f.sock, &svc).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        (open("node-1"), open("node-2"), open("node-3")),
        (2, 1, 1),
        "least-loaded node-2 carried it"
    );

    // node-2 leaves the set (draining, its service stream still open): never chosen again.
    // Each connection's channels are counted while the new streams are held open, by the
    // library (per connection) and by each node's sshd (its TCP connections to the service).
    let tunnels: Vec<_> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| f.pool.tunnel(n).unwrap())
        .collect();
    let per_conn = || -> Vec<usize> { tunnels.iter().map(|t| t.open_channels()).collect() };
    let per_sshd = || -> Vec<usize> {
        [n1, n2, n3]
            .iter()
            .map(|n| support::extra_h1::sshd_sockets_to(n, cluster.service_addr, HTTP_PORT))
            .collect()
    };
    assert_eq!(per_sshd(), vec![0, 1, 0], "only node-2 carries the service");
    f.pool.update(vec![n1.node(), n3.node()]).unwrap();
    let drained = f
        .pool
        .statuses()
        .into_iter()
        .any(|(n, s)| n.name == "node-2" && s.state == TunnelState::Draining);
    assert!(drained);
    let mut held_svc = Vec::new();
    for i in 0..3 {
        let (mut s, head) = connect(&f.sock, &svc).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{i}: {head}");
        assert!(whoami_kept_open(&mut s).await.contains("svc "), "{i}");
        held_svc.push(s);
    }
    let (conns, sshds) = (per_conn(), per_sshd());
    assert_eq!(
        (conns[1], sshds[1]),
        (1, 1),
        "the draining node-2 carries only its old stream (channels per connection {conns:?}, \
         service connections per sshd {sshds:?})"
    );
    assert_eq!(
        (conns[0] + conns[2], sshds[0] + sshds[2]),
        (2 + 1 + 3, 3),
        "node-1 and node-3 carry the 3 new streams (channels per connection {conns:?}, \
         service connections per sshd {sshds:?})"
    );
    assert!(
        get(&mut via2, "/whoami").await.contains("svc "),
        "the draining node's stream still works"
    );
    drop(via2);
    assert!(
        support::wait_until(Duration::from_secs(10), || n2.ssh_connections() == 0),
        "node-2's connection closes once its last stream ended"
    );
    for (i, s) in held_svc.iter_mut().enumerate() {
        assert!(
            get(s, "/whoami").await.contains("svc "),
            "held stream {i} still works"
        );
    }
    drop((held1, held3));

    // IPv6 literals are parsed as such: ::1 is the node's loopback, refused by policy.
    let (status, body) = refused(
        &f.sock,
        b"CONNECT [::1]:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("[::1]:10250") && body.contains("loopback"),
        "{body}"
    );
    let (status, _) = refused(&f.sock, b"CONNECT [::1:10250 HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400);
}

/// The front judges a CONNECT by one route snapshot and dials by the same one
/// (`Pool::dial_any_in`): a node that leaves between the check and the dial is no route. Routed
/// by a newer snapshot instead, its address (allowed as the node's) would have no owner and go
/// through any ready node: a loopback address the policy now refuses, dialled anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_routing_of_a_connect_see_one_route_snapshot() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let policy = Policy::default();
    let f = front(
        &cluster,
        cluster.node_list(),
        policy.clone(),
        FrontLimits::default(),
        Duration::from_secs(5),
    )
    .await;
    let dest: kube_ssh_tunnel::Destination = format!("{}:{HTTP_PORT}", n2.addr).parse().unwrap();
    let judged = f.pool.routes();
    let verdict = policy.check_routes(&dest, &judged);
    assert!(
        verdict.is_ok(),
        "node-2's address is allowed while node-2 is in the set: {verdict:?}"
    );
    // node-2 leaves after the check, before the dial.
    f.pool.update(vec![n1.node()]).unwrap();
    assert!(
        policy.check_routes(&dest, &f.pool.routes()).is_err(),
        "the newer snapshot refuses node-2's (loopback) address: nobody owns it"
    );
    let mut ready = f.pool.subscribe("node-1").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        ready.wait_for(|s| s.state == TunnelState::Ready),
    )
    .await
    .expect("node-1 ready within 10 s")
    .unwrap();
    let r = f.pool.dial_any_in(&judged, &dest).await;
    assert!(
        matches!(r, Err(kube_ssh_tunnel::DialError::NoRoute { .. })),
        "a dial routed by the judged snapshot finds node-2 gone; got {:?}",
        r.map(|s| format!("a stream through {}", s.node()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_comes_from_a_real_case() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let policy = Policy {
        service_cidrs: vec![format!("{}/32", cluster.service_addr).parse().unwrap()],
        ..Policy::default()
    };
    let f = front(
        &cluster,
        cluster.node_list(),
        policy.clone(),
        FrontLimits::default(),
        Duration::from_secs(1),
    )
    .await;
    let req = |t: &str| format!("CONNECT {t} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes();

    let (st, body) = refused(&f.sock, &req("169.254.169.254:80")).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("169.254.169.254:80") && body.contains("link-local"),
        "{body}"
    );

    let (st, body) = refused(&f.sock, &req(&format!("{}:9", n1.pod_addr))).await;
    assert_eq!(st, 502, "destination port closed on the node: {body}");
    assert!(
        body.contains("node node-1") && body.contains(&format!("{}:9", n1.pod_addr)),
        "{body}"
    );

    let (st, body) = refused(&f.sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(st, 405, "{body}");
    let (st, body) = refused(&f.sock, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    assert_eq!(st, 400, "{body}");

    // 503: a service IP while no node is ready (a pool whose only node never connects).
    let dead = Node::parse_spec(&format!("dead={}:22", support::refused_address(22))).unwrap();
    let g = front(
        &cluster,
        vec![dead],
        policy,
        FrontLimits::default(),
        Duration::from_secs(1),
    )
    .await;
    let (st, body) = refused(
        &g.sock,
        &req(&format!("{}:{HTTP_PORT}", cluster.service_addr)),
    )
    .await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("no ready tunnel"), "{body}");

    // 504: sshd frozen, so the channel open never gets an answer (open timeout 1 s).
    n1.stop_sshd();
    let t0 = Instant::now();
    let (st, body) = refused(&f.sock, &req(&format!("{}:{HTTP_PORT}", n1.addr))).await;
    assert_eq!(st, 504, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        body.contains("node node-1") && body.contains("timed out"),
        "{body}"
    );

    // A client that leaves while its dial is pending: the dial is cancelled and no channel
    // stays open once the node answers again.
    let t = f.pool.tunnel("node-1").unwrap();
    let mut s = UnixStream::connect(&f.sock).await.unwrap();
    s.write_all(&req(&format!("{}:{HTTP_PORT}", n1.addr)))
        .await
        .unwrap();
    // Pending: the 504's abandoned open and this client's.
    assert!(
        support::wait_until(Duration::from_secs(10), || t.open_channels() == 2),
        "the client's dial is pending: {} open(s) pending, want 2",
        t.open_channels()
    );
    drop(s);
    assert!(
        support::wait_until(Duration::from_secs(3), || f.front.active() == 0),
        "the front let go"
    );
    assert_eq!(
        t.open_channels(),
        2,
        "both abandoned opens (the 504's and the one of the client that left) still pending"
    );
    n1.cont_sshd();
    // sshd confirms a direct-tcpip channel only once its TCP connection to the destination
    // is up; the open tasks end (and give back their places) right after that.
    assert!(
        support::wait_until(Duration::from_secs(10), || t.open_channels() == 0),
        "sshd answered both late opens: {} still pending",
        t.open_channels()
    );
    // Seen from outside: sshd keeps its TCP connection to the kubelet for as long as the
    // channel is open, so none may stay once the late channels were closed.
    let held = || support::extra_h1::sshd_sockets_to(n1, n1.addr, HTTP_PORT);
    assert!(
        support::wait_until(Duration::from_secs(5), || held() == 0),
        "the late channels were closed: sshd still holds {} connection(s) to {}:{HTTP_PORT}",
        held(),
        n1.addr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_do_not_block_a_normal_connect_and_are_closed_after_the_header_timeout() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let limits = FrontLimits {
        header_timeout: Duration::from_secs(2),
        ..FrontLimits::default()
    };
    let f = front(
        &cluster,
        cluster.node_list(),
        Policy::default(),
        limits,
        Duration::from_secs(5),
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = UnixStream::connect(&f.sock).await.unwrap();
        s.write_all(b"CONNECT 127.0.0.1:").await.unwrap();
        slow.push(s);
    }
    let t0 = Instant::now();
    let (mut s, head) = connect(&f.sock, &format!("{}:{HTTP_PORT}", n1.addr)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(get(&mut s, "/healthz").await.ends_with("ok"));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "not held up: {:?}",
        t0.elapsed()
    );
    drop(s);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut n = 0;
        for s in &mut slow {
            let mut b = [0u8; 64];
            if let Ok(0) | Err(_) = s.read(&mut b).await {
                n += 1;
            }
        }
        n
    })
    .await
    .expect("slow clients are closed");
    assert_eq!(closed, 200);
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "closed by the header timeout"
    );
    assert!(support::wait_until(Duration::from_secs(5), || f
        .front
        .active()
        == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_connects_across_three_nodes_then_fds_return_to_baseline() {
    let cluster = Cluster::start(3);
    let policy = Policy {
        node_ports: vec![HTTP_PORT, ECHO_PORT],
        ..Policy::default()
    };
    let f = front(
        &cluster,
        cluster.node_list(),
        policy,
        FrontLimits::default(),
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_before = support::open_fds();
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("{}:{ECHO_PORT}", n.addr))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500usize {
        let sock = f.sock.clone();
        let target = addrs[i % 3].clone();
        tasks.spawn(async move {
            let (mut s, head) = connect(&sock, &target).await;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("{i}: {head}"));
            }
            let payload: Vec<u8> = (0..32 * 1024).map(|k| ((k * 31 + i) % 251) as u8).collect();
            let (mut rd, mut wr) = s.split();
            let w = async {
                wr.write_all(&payload).await?;
                wr.shutdown().await
            };
            let mut back = Vec::new();
            let r = rd.read_to_end(&mut back);
            let (w, r) = tokio::join!(w, r);
            w.map_err(|e| format!("{i}: write {e}"))?;
            r.map_err(|e| format!("{i}: read {e}"))?;
            if back != payload {
                return Err(format!("{i}: wrong bytes ({} back)", back.len()));
            }
            Ok(())
        });
    }
    let mut failures = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r.unwrap() {
                failures.push(e);
            }
        }
    })
    .await;
    assert!(done.is_ok(), "500 CONNECTs finished in time");
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let back = support::wait_until(Duration::from_secs(10), || {
        support::open_fds() <= fds_before && f.front.active() == 0
    });
    assert!(
        back,
        "descriptors back to baseline: {} (was {fds_before}), active {}",
        support::open_fds(),
        f.front.active()
    );
    // Channels are released when sshd's CLOSE arrives (asynchronously, see ssh::stream).
    let open = || -> usize {
        ["node-1", "node-2", "node-3"]
            .iter()
            .map(|n| f.pool.tunnel(n).unwrap().open_channels())
            .sum()
    };
    support::wait_until(Duration::from_secs(10), || open() == 0);
    assert_eq!(open(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_and_the_slots_come_back() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let limits = FrontLimits {
        max_connections: 2,
        ..FrontLimits::default()
    };
    let f = front(
        &cluster,
        cluster.node_list(),
        Policy::default(),
        limits,
        Duration::from_secs(5),
    )
    .await;
    let target = format!("{}:{HTTP_PORT}", n1.addr);
    let (a, ha) = connect(&f.sock, &target).await;
    let (b, hb) = connect(&f.sock, &target).await;
    assert!(ha.starts_with("HTTP/1.1 200") && hb.starts_with("HTTP/1.1 200"));
    let (st, body) = refused(
        &f.sock,
        format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("too many concurrent"), "{body}");
    drop((a, b));
    assert!(support::wait_until(Duration::from_secs(5), || f
        .front
        .active()
        == 0));
    let (_c, hc) = connect(&f.sock, &target).await;
    assert!(hc.starts_with("HTTP/1.1 200"), "a slot is free again: {hc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_sockets_on_the_mtls_listener_take_no_slot_and_a_real_client_gets_through() {
    // 2,000 idle sockets here and as many in the daemon: raise the soft fd limit (inherited).
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < 8192 {
            l.rlim_cur = l.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let m = Mtls::new(&cluster, 8132);
    let (addr, client_crt, client_key) = (m.addr, m.client_crt.clone(), m.client_key.clone());
    let mut args = run_args(&cluster);
    args.extend(m.args());
    // Fewer CONNECT slots than idle sockets: before, each idle socket took one.
    args.extend(["--max-connections".to_string(), "1000".into()]);
    let d = support::daemon::Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(
            tokio::net::TcpStream::connect((addr, 8132))
                .await
                .expect("idle TCP connection"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let mut c = std::process::Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "--proxy",
        &format!("https://{addr}:8132"),
    ])
    .arg("--proxy-cacert")
    .arg(&cluster.ca_file)
    .arg("--proxy-cert")
    .arg(&client_crt)
    .arg("--proxy-key")
    .arg(&client_key)
    .args(["-p", &format!("http://{}:{HTTP_PORT}/whoami", n1.addr)]);
    let out = tokio::task::spawn_blocking(move || {
        support::run_bounded(&mut c, b"", Duration::from_secs(15))
    })
    .await
    .unwrap()
    .expect("curl runs");
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "curl failed beside 2,000 idle sockets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("node-1"));
    assert!(
        took < Duration::from_secs(1),
        "a real mTLS CONNECT beside 2,000 idle sockets took {took:?}"
    );
    drop(idle);
}
