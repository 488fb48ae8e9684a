//! The library's `Daemon` against real sshd nodes, started in-process from a typed
//! `DaemonConfig` (no command line): it serves CONNECT and the admin API, follows its node
//! file through the one loop that applies node sets, turns `/healthz` red when a task it needs
//! ends early, and its shutdown removes the sockets and leaves no task running. Start-up
//! errors leave nothing behind.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::daemon::DaemonError;
use kube_ssh_tunnel::nodes::{AddressTypes, NodeSource};
use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::{Daemon, DaemonConfig, Node};
use support::{Cluster, HTTP_PORT, TestNode};

const LIMIT: Duration = Duration::from_secs(20);

fn toml_entry(n: &TestNode) -> String {
    format!(
        "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\npod_cidrs = [\"{}\"]\n\n",
        n.name, n.addr, n.ssh_port, n.pod_cidr
    )
}

/// `GET /whoami` through the daemon's CONNECT socket; the stub names the node that answered.
async fn whoami(sock: &Path, target: String) -> String {
    let sock = sock.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (mut s, head) = support::connect_uds(&sock, &target);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    })
    .await
    .unwrap()
}

async fn admin_get(sock: &Path, path: &str) -> (u16, String) {
    request(
        &Endpoint::Unix(sock.to_path_buf()),
        "GET",
        path,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

/// A daemon's config that follows a node file holding node-1 (checked every 100 ms, no health
/// probes), with its sockets in the cluster's directory.
struct FileDaemon {
    cfg: DaemonConfig,
    nodes_file: std::path::PathBuf,
    proxy: std::path::PathBuf,
    admin: std::path::PathBuf,
}

fn file_daemon(c: &Cluster) -> FileDaemon {
    let dir = c.path().to_path_buf();
    let nodes_file = dir.join("daemon-nodes.toml");
    std::fs::write(&nodes_file, toml_entry(&c.nodes[0])).unwrap();
    let (proxy, admin) = (dir.join("daemon-proxy.sock"), dir.join("daemon-admin.sock"));
    let mut pool = PoolConfig::new(c.settings());
    pool.health.probe = Probe::None;
    let cfg = DaemonConfig::new(
        pool,
        NodeSource::File {
            path: nodes_file.clone(),
            extra: Vec::new(),
            address_types: AddressTypes::default(),
            interval: Duration::from_millis(100),
        },
        proxy.clone(),
        admin.clone(),
    );
    FileDaemon {
        cfg,
        nodes_file,
        proxy,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_from_a_config_serves_follows_its_node_file_and_shuts_down_cleanly() {
    let c = Cluster::start(2);
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let FileDaemon {
        cfg,
        nodes_file,
        proxy,
        admin,
    } = file_daemon(&c);
    let daemon = Daemon::start(cfg).await.expect("the daemon starts");
    let pool = daemon.pool().clone();
    let mut rx = pool.subscribe("node-1").unwrap();
    tokio::time::timeout(LIMIT, rx.wait_for(|s| s.state == TunnelState::Ready))
        .await
        .expect("node-1 ready")
        .unwrap();

    // CONNECT through the daemon's socket reaches node-1's kubelet.
    let body = whoami(&proxy, format!("{}:{HTTP_PORT}", c.nodes[0].addr)).await;
    assert!(body.contains("node-1"), "{body}");
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);

    // A changed node file reaches the pool through the source's node sets.
    std::fs::write(
        &nodes_file,
        toml_entry(&c.nodes[0]) + &toml_entry(&c.nodes[1]),
    )
    .unwrap();
    assert!(
        support::wait_until(LIMIT, || pool.status("node-2").map(|s| s.state)
            == Some(TunnelState::Ready)),
        "node-2 added from the file and ready"
    );
    let body = whoami(&proxy, format!("{}:{HTTP_PORT}", c.nodes[1].addr)).await;
    assert!(body.contains("node-2"), "{body}");

    // A task the daemon needs that ends early makes /healthz fail, naming it: the CONNECT
    // accept loop stops (the front stops accepting while the daemon is not shutting down).
    assert_eq!(admin_get(&admin, "/healthz").await.0, 200);
    daemon.front().stop_accepting();
    let mut red = (0, String::new());
    for _ in 0..50 {
        red = admin_get(&admin, "/healthz").await;
        if red.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(red.0, 500, "{}", red.1);
    assert!(
        red.1.contains("CONNECT listener (Unix socket)"),
        "{}",
        red.1
    );

    // Shutdown: sockets gone, every task ended (the tracked ones and every task spawned on
    // the runtime: pumps, congestion watchers, russh's sessions), the connections closed.
    let tasks = daemon.tasks().clone();
    let tunnel = pool.tunnel("node-1").expect("node-1's connection");
    daemon.shutdown(Duration::from_secs(5)).await;
    assert!(!proxy.exists() && !admin.exists(), "sockets removed");
    assert_eq!(tasks.running(), 0, "every tracked task ended");
    assert!(tunnel.is_closed(), "node-1's connection closed");
    assert!(pool.nodes().is_empty());
    drop((tunnel, pool, rx));
    assert_no_task_left(baseline).await;
}

/// Waits (bounded) until the runtime has no more live tasks than `baseline`, and fails naming
/// how many are left.
async fn assert_no_task_left(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..100 {
        if alive <= baseline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        alive = metrics.num_alive_tasks();
    }
    panic!(
        "{} tasks still alive after shutdown (baseline {baseline})",
        alive
    );
}

/// Shutdown stops the node source before it drains: a node added to the file while a stream
/// keeps the drain going never joins the pool. Every task ends once the drain is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_node_source_first_and_leaves_no_task_on_the_runtime() {
    let c = Cluster::start(2);
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let FileDaemon {
        mut cfg,
        nodes_file,
        proxy,
        admin: _,
    } = file_daemon(&c);
    cfg.policy.node_ports = vec![HTTP_PORT, support::ECHO_PORT];
    let daemon = Daemon::start(cfg).await.expect("the daemon starts");
    let pool = daemon.pool().clone();
    let mut rx = pool.subscribe("node-1").unwrap();
    tokio::time::timeout(LIMIT, rx.wait_for(|s| s.state == TunnelState::Ready))
        .await
        .expect("node-1 ready")
        .unwrap();
    drop(rx);

    // An echo stream through the front keeps the drain going.
    let target = format!("{}:{}", c.nodes[0].addr, support::ECHO_PORT);
    let sock = proxy.clone();
    let (mut held, head) =
        tokio::task::spawn_blocking(move || support::connect_uds(&sock, &target))
            .await
            .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    held.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    let shutdown = tokio::spawn(daemon.shutdown(Duration::from_secs(20)));
    // The drain has begun (the front stopped accepting) while the stream is open.
    assert!(
        support::wait_until(LIMIT, || !proxy.exists()),
        "shutdown began"
    );
    // node-2 is added to the file during the drain; the source would see it within 100 ms.
    std::fs::write(
        &nodes_file,
        toml_entry(&c.nodes[0]) + &toml_entry(&c.nodes[1]),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        pool.status("node-2").is_none(),
        "a node joined while the daemon drained"
    );
    assert!(!shutdown.is_finished(), "the open stream holds the drain");

    // The stream still works during the drain, then ends; shutdown completes.
    held.write_all(b"pong").unwrap();
    held.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    drop(held);
    tokio::time::timeout(LIMIT, shutdown)
        .await
        .expect("shutdown ends once the stream is gone")
        .unwrap();
    assert!(pool.nodes().is_empty());
    assert_eq!(
        c.nodes[1].ssh_connections(),
        0,
        "node-2 was never connected"
    );
    drop(pool);
    assert_no_task_left(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_the_problem_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        let key = dir.path().join("id_ed25519");
        if !key.exists() {
            support::keygen(&key, "ed25519", None);
        }
        kube_ssh_tunnel::SshSettings::builder("nobody")
            .key_file(&key, None)
            .unwrap()
            .build()
    };
    let cfg = |nodes: NodeSource| {
        DaemonConfig::new(
            PoolConfig::new(settings()),
            nodes,
            dir.path().join("proxy.sock"),
            dir.path().join("admin.sock"),
        )
    };
    let leftovers = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sock") || n.starts_with(".kube-ssh-tunnel-bind"))
            .collect::<Vec<_>>()
    };

    // No nodes.
    let e = Daemon::start(cfg(NodeSource::Static(Vec::new())))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, DaemonError::NoNodes), "{e}");

    // A node file that does not exist.
    let missing = dir.path().join("missing.toml");
    let e = Daemon::start(cfg(NodeSource::File {
        path: missing.clone(),
        extra: Vec::new(),
        address_types: AddressTypes::default(),
        interval: Duration::from_secs(1),
    }))
    .await
    .err()
    .unwrap();
    assert!(matches!(e, DaemonError::Source(_)), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    // A node that is invalid: the sockets bound for it are removed again.
    let mut bad = Node::parse_spec("node-1=192.0.2.1").unwrap();
    bad.name = "Not A Name".into();
    let e = Daemon::start(cfg(NodeSource::Static(vec![bad])))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, DaemonError::Config(_)), "{e}");
    assert!(e.to_string().contains("Not A Name"), "{e}");
    assert_eq!(leftovers(), Vec::<String>::new());

    // A TLS listener whose certificate is missing: the Unix socket bound before it goes again.
    let mut c = cfg(NodeSource::Static(vec![
        Node::parse_spec("node-1=192.0.2.1").unwrap(),
    ]));
    c.listeners.tls = Some(kube_ssh_tunnel::daemon::TlsListener {
        address: "127.0.0.1:0".parse().unwrap(),
        cert: dir.path().join("missing.crt"),
        key: dir.path().join("missing.key"),
        client_ca: dir.path().join("missing-ca.crt"),
    });
    let e = Daemon::start(c).await.err().unwrap();
    assert!(matches!(e, DaemonError::Config(_)), "{e}");
    assert!(e.to_string().contains("missing.crt"), "{e}");
    assert_eq!(leftovers(), Vec::<String>::new());

    // A bad ready share is refused before anything is bound.
    let mut c = cfg(NodeSource::Static(vec![
        Node::parse_spec("node-1=192.0.2.1").unwrap(),
    ]));
    c.ready_share = 1.5;
    let e = Daemon::start(c).await.err().unwrap();
    assert!(e.to_string().contains("ready share"), "{e}");
    assert_eq!(leftovers(), Vec::<String>::new());
}

/// One daemon of two (two kube-apiservers, each with its own).
async fn start_daemon(
    c: &Cluster,
    tag: &str,
) -> (kube_ssh_tunnel::DaemonHandle, std::path::PathBuf) {
    let dir = c.path();
    let proxy = dir.join(format!("{tag}-proxy.sock"));
    let mut pool = PoolConfig::new(c.settings());
    pool.health.probe = Probe::None;
    let mut cfg = DaemonConfig::new(
        pool,
        NodeSource::Static(c.node_list()),
        proxy.clone(),
        dir.join(format!("{tag}-admin.sock")),
    );
    cfg.policy.node_ports = vec![HTTP_PORT, support::ECHO_PORT];
    let d = Daemon::start(cfg).await.expect("the daemon starts");
    for n in &c.nodes {
        let mut rx = d.pool().subscribe(&n.name).unwrap();
        tokio::time::timeout(LIMIT, rx.wait_for(|s| s.state == TunnelState::Ready))
            .await
            .expect("ready")
            .unwrap();
    }
    (d, proxy)
}

/// An echo stream through `proxy` to `target`; checks one round trip.
fn echo_stream(proxy: &Path, target: &str) -> std::os::unix::net::UnixStream {
    let (mut s, head) = support::connect_uds(proxy, target);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    echo_once(&mut s, b"first");
    s
}

fn echo_once(s: &mut std::os::unix::net::UnixStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_serve_the_same_nodes_independently_and_draining_one_leaves_the_other_alone() {
    let c = Cluster::start(2);
    let (a, proxy_a) = start_daemon(&c, "a").await;
    let (b, proxy_b) = start_daemon(&c, "b").await;

    // Each node's sshd sees one connection from each daemon.
    for n in &c.nodes {
        assert!(
            support::wait_until(LIMIT, || n.ssh_connections() == 2),
            "{}: {} connections, want 2",
            n.name,
            n.ssh_connections()
        );
    }
    // Both serve every node.
    for proxy in [&proxy_a, &proxy_b] {
        for n in &c.nodes {
            let body = whoami(proxy, format!("{}:{HTTP_PORT}", n.addr)).await;
            assert!(body.contains(&n.name), "{body}");
        }
    }

    // Streams open through both daemons; then daemon A drains and stops.
    let targets: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("{}:{}", n.addr, support::ECHO_PORT))
        .collect();
    let (pb, ta) = (proxy_b.clone(), targets.clone());
    let mut through_b = tokio::task::spawn_blocking(move || {
        ta.iter().map(|t| echo_stream(&pb, t)).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let tunnels_b: Vec<_> = c
        .nodes
        .iter()
        .map(|n| b.pool().tunnel(&n.name).unwrap())
        .collect();
    a.shutdown(Duration::from_secs(2)).await;
    assert!(!proxy_a.exists());
    for n in &c.nodes {
        assert!(
            support::wait_until(LIMIT, || n.ssh_connections() == 1),
            "{}: {} connections after A stopped, want 1",
            n.name,
            n.ssh_connections()
        );
    }

    // B's streams and connections are untouched: same connections, no reconnect, still echo.
    for (n, t) in c.nodes.iter().zip(&tunnels_b) {
        let now = b.pool().tunnel(&n.name).unwrap();
        assert!(
            std::sync::Arc::ptr_eq(t, &now),
            "{}: B's connection replaced",
            n.name
        );
        let st = b.pool().status(&n.name).unwrap();
        assert_eq!(
            (st.state, st.reconnects),
            (TunnelState::Ready, 0),
            "{}",
            n.name
        );
    }
    through_b = tokio::task::spawn_blocking(move || {
        for s in &mut through_b {
            echo_once(s, b"after the other daemon stopped");
        }
        through_b
    })
    .await
    .unwrap();
    drop(through_b);
    b.shutdown(Duration::from_secs(2)).await;
}
