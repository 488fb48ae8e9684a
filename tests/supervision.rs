//! Keeping tunnels alive (supervision) against real sshd nodes, with timeouts and intervals
//! shortened by configuration.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::pool::backoff::BackoffPolicy;
use kube_ssh_tunnel::pool::{NodeStatus, PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::ssh::{BufferBudget, ChannelLimits};
use kube_ssh_tunnel::{DialError, Node, Pool, SshSettings, TunnelStream};
use sha2::{Digest, Sha256};
use support::{Cluster, ECHO_PORT, HTTP_PORT, dest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEEPALIVE: Duration = Duration::from_secs(1);
const KEEPALIVE_MAX: usize = 3;

fn settings(c: &Cluster) -> SshSettings {
    SshSettings::builder(c.user.clone())
        .key_file(&c.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&c.known_hosts)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .open_timeout(Duration::from_secs(5))
        .keepalive(Some(KEEPALIVE), KEEPALIVE_MAX)
        .build()
}

/// Short intervals: keepalive 1 s × 3, no probes, backoff 0.2 s → 1 s.
fn fast(c: &Cluster) -> PoolConfig {
    let mut cfg = PoolConfig::new(settings(c));
    cfg.health.probe = Probe::None;
    cfg.backoff = BackoffPolicy {
        min: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    cfg.drain_timeout = Duration::from_secs(10);
    cfg
}

/// Waits until node `name`'s status satisfies `pred`; returns how long it took.
async fn wait_status(
    pool: &Pool,
    name: &str,
    limit: Duration,
    pred: impl Fn(&NodeStatus) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    let mut rx = pool.subscribe(name)?;
    tokio::time::timeout(limit, rx.wait_for(|s| pred(s)))
        .await
        .ok()?
        .ok()?;
    Some(start.elapsed())
}

/// Waits (bounded by `secs`) for node `name` to be ready and returns how long it took;
/// panics with `what` otherwise.
async fn wait_ready(pool: &Pool, name: &str, secs: u64, what: &str) -> Duration {
    wait_status(
        pool,
        name,
        Duration::from_secs(secs),
        is(TunnelState::Ready),
    )
    .await
    .expect(what)
}

fn is(state: TunnelState) -> impl Fn(&NodeStatus) -> bool {
    move |s| s.state == state
}

/// Pushes `total` random bytes through `stream` to the echo server and reads them back, with
/// a pause every MiB so that the transfer takes a while. Returns (bytes back, hashes equal).
async fn paced_round_trip(stream: TunnelStream, total: usize, pause: Duration) -> (usize, bool) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            rng.fill_bytes(&mut buf);
            wr.write_all(&buf).await.unwrap();
            h.update(&buf);
            sent += buf.len();
            if sent % (1 << 20) == 0 {
                tokio::time::sleep(pause).await;
            }
        }
        wr.shutdown().await.unwrap();
        h.finalize()
    });
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n;
    }
    let sent = writer.await.unwrap();
    (got, sent == h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sshd_is_noticed_and_a_restart_brings_the_node_back() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let mut cfg = fast(&cluster);
    cfg.reconnect_wait = Some(Duration::from_secs(15));
    let pool = Arc::new(Pool::with_config(cfg, cluster.node_list()).unwrap());
    wait_ready(&pool, "node-1", 10, "ready").await;

    node.kill_sshd();
    let budget = KEEPALIVE * (KEEPALIVE_MAX as u32 + 1) + Duration::from_secs(2);
    wait_status(&pool, "node-1", budget, |s| s.state != TunnelState::Ready)
        .await
        .expect("node leaves ready within the keepalive budget");

    // A dial issued while the node is down waits for it.
    let p = pool.clone();
    let d = dest(node.addr, HTTP_PORT);
    let pending = tokio::spawn(async move { p.dial(&d).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !pending.is_finished(),
        "the dial waits while the node reconnects"
    );
    node.start_sshd();
    let back = wait_ready(&pool, "node-1", 5, "ready again after the restart").await;
    // One backoff step (≤ 1 s) plus a connect.
    assert!(back < Duration::from_secs(3), "ready again after {back:?}");
    let mut s = pending
        .await
        .unwrap()
        .expect("the waiting dial succeeded once the node was back");
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.ends_with("ok"), "{reply}");
    let st = pool.status("node-1").unwrap();
    assert_eq!(st.reconnects, 1);
    assert!(
        st.last_error.is_some(),
        "the reason of the drop is kept: {st:?}"
    );

    // Down again, and a dial that runs out of time fails naming the node, state and error.
    node.kill_sshd();
    wait_status(&pool, "node-1", Duration::from_secs(6), |s| {
        s.state != TunnelState::Ready
    })
    .await
    .unwrap();
    let mut cfg = fast(&cluster);
    cfg.reconnect_wait = Some(Duration::from_millis(500));
    let short = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let t0 = Instant::now();
    let err = short.dial(&dest(node.addr, HTTP_PORT)).await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        t0.elapsed()
    );
    let DialError::NotReady { node: n, state, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(n, "node-1");
    assert!(
        matches!(state, TunnelState::Backoff | TunnelState::Connecting),
        "{err}"
    );
    assert!(
        err.to_string().contains("TCP connect"),
        "names the last error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_sshd_is_detected_by_keepalive_and_recovers_after_sigcont() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pool = Pool::with_config(fast(&cluster), cluster.node_list()).unwrap();
    wait_ready(&pool, "node-1", 10, "ready").await;
    node.stop_sshd();
    let limit = KEEPALIVE * (KEEPALIVE_MAX as u32 + 1) + Duration::from_millis(1500);
    let took = wait_status(&pool, "node-1", limit + Duration::from_secs(5), |s| {
        s.state != TunnelState::Ready
    })
    .await
    .expect("a frozen node is noticed");
    node.cont_sshd();
    assert!(took <= limit, "detected after {took:?}, budget {limit:?}");
    assert!(
        took >= KEEPALIVE * 2,
        "noticed by keepalive, not at once ({took:?})"
    );
    let st = pool.status("node-1").unwrap();
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("keepalive"),
        "{st:?}"
    );
    wait_ready(&pool, "node-1", 15, "recovers after SIGCONT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_port_and_blackhole_listener_back_off_with_growing_jittered_delays() {
    let cluster = Cluster::start(0);
    // A listener that accepts TCP and never speaks SSH; it records when attempts arrive.
    let hole_addr = support::refused_address(2022);
    let listener = tokio::net::TcpListener::bind((hole_addr, 2022))
        .await
        .unwrap();
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let rec = arrivals.clone();
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..100 {
            let Ok((sock, _)) = listener.accept().await else {
                break;
            };
            rec.lock().unwrap().push(Instant::now());
            held.push(sock);
        }
    });
    let refused = support::refused_address(22);
    let nodes = vec![
        Node::parse_spec(&format!("refused={refused}:22")).unwrap(),
        Node::parse_spec(&format!("blackhole={hole_addr}:2022")).unwrap(),
    ];
    let mut cfg = PoolConfig::new(
        SshSettings::builder(cluster.user.clone())
            .key_file(&cluster.keys.ed25519, None)
            .unwrap()
            .known_hosts_file(&cluster.known_hosts)
            .unwrap()
            .connect_timeout(Duration::from_millis(700))
            .build(),
    );
    cfg.health.probe = Probe::None;
    cfg.backoff = BackoffPolicy {
        min: Duration::from_millis(300),
        max: Duration::from_secs(4),
    };
    let pool = Pool::with_config(cfg, nodes).unwrap();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Full jitter over [0.3 s, d] with d doubling to 4 s: ~9 attempts expected in 12 s; a busy
    // loop would make thousands. The bound allows for unlucky (short) draws.
    let refused_st = pool.status("refused").unwrap();
    assert!(
        (3..=15).contains(&refused_st.attempts),
        "refused port: {} attempts in 12 s (growing backoff, no busy loop)",
        refused_st.attempts
    );
    assert_eq!(refused_st.state, TunnelState::Backoff, "{refused_st:?}");
    assert!(
        refused_st.reason.contains("TCP connect") && refused_st.reason.contains("next attempt in"),
        "{}",
        refused_st.reason
    );

    let times = arrivals.lock().unwrap().clone();
    assert!(
        (3..=12).contains(&times.len()),
        "blackhole: {} attempts in 12 s",
        times.len()
    );
    assert!(
        times[0] - start < Duration::from_secs(1),
        "the first attempt is immediate"
    );
    let bh = pool.status("blackhole").unwrap();
    assert!(
        bh.last_error.as_deref().unwrap_or("").contains("timed out"),
        "handshake timeout: {bh:?}"
    );
    hole.abort();
    // Delay between attempts = gap - connect timeout. It grows, and it is not the bare doubling.
    let delays: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() - 0.7)
        .collect();
    let first = delays[0];
    let later_max = delays[1..].iter().cloned().fold(0.0, f64::max);
    assert!(later_max > first + 0.2, "delays grow: {delays:?}");
    let ceilings = [0.3, 0.6, 1.2, 2.4, 4.0, 4.0, 4.0];
    let jittered = delays
        .iter()
        .zip(ceilings)
        .skip(1)
        .any(|(d, c)| (d - c).abs() > 0.05 * c);
    assert!(
        jittered,
        "delays are jittered, not exact doublings: {delays:?}"
    );
    assert!(
        delays.iter().zip(ceilings).all(|(d, c)| *d <= c + 0.3),
        "delays stay under the cap: {delays:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_a_slow_failure_and_restoring_it_recovers() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    // Default needs-a-human backoff (5 s doubling to 5 min).
    let mut cfg = fast(&cluster);
    cfg.backoff_needs_human = BackoffPolicy::NEEDS_HUMAN;
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    wait_ready(&pool, "node-1", 10, "ready").await;
    node.set_authorized_keys("");
    node.restart_sshd(); // drops the established connection; the next one must authenticate
    let failed = wait_status(
        &pool,
        "node-1",
        Duration::from_secs(10),
        is(TunnelState::Failed),
    )
    .await;
    assert!(
        failed.is_some(),
        "authentication rejected → failed: {:?}",
        pool.status("node-1")
    );
    let st = pool.status("node-1").unwrap();
    assert!(
        st.reason.contains("needs a human") && st.reason.contains("rejected"),
        "{}",
        st.reason
    );
    let before = st.attempts;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let st = pool.status("node-1").unwrap();
    let tried = st.attempts - before;
    assert!(
        tried <= 4,
        "{tried} attempts in 30 s with a rejected key (few, no hammering)"
    );
    // sshd logs both phrases (LogLevel VERBOSE) once per rejected attempt: each must be there
    // (or the count proves nothing) and each must stay low.
    let log = node.sshd_log();
    for phrase in [
        "Connection closed by authenticating user",
        "Failed publickey",
    ] {
        let n = log.matches(phrase).count();
        assert!(
            (1..=6).contains(&n),
            "sshd saw a few rejected attempts (1 to 6), not none and not a hammering: \
             {n} × {phrase:?} in the sshd log:\n{log}"
        );
    }
    // Restore the key: an operator's reconnect (or the next slow retry) brings it back.
    node.set_authorized_keys(&node.authorize(&cluster.public_keys));
    assert!(pool.reconnect("node-1"));
    wait_ready(&pool, "node-1", 10, "restoring the key recovers").await;

    // Without the operator: a short needs-a-human backoff recovers by itself.
    let mut cfg = fast(&cluster);
    cfg.backoff_needs_human = BackoffPolicy {
        min: Duration::from_millis(300),
        max: Duration::from_secs(1),
    };
    let pool2 = Pool::with_config(cfg, cluster.node_list()).unwrap();
    wait_ready(&pool2, "node-1", 10, "ready").await;
    node.set_authorized_keys("");
    node.restart_sshd();
    wait_status(
        &pool2,
        "node-1",
        Duration::from_secs(10),
        is(TunnelState::Failed),
    )
    .await
    .expect("failed");
    node.set_authorized_keys(&node.authorize(&cluster.public_keys));
    wait_ready(&pool2, "node-1", 10, "recovers on its own").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_in_a_network_namespace_is_detected_and_recovers() {
    assert!(
        support::can_use_netns(),
        "this test needs root and iproute2's `ip` for network namespaces (apt-get install -y iproute2; run as root, as .ci/run does)"
    );
    let mut cluster = Cluster::start(0);
    cluster.add_netns_node("node-ns");
    let node = &cluster.nodes[0];
    let pool = Pool::with_config(fast(&cluster), cluster.node_list()).unwrap();
    wait_ready(&pool, "node-ns", 10, "ready").await;
    let mut s = pool.dial(&dest(node.addr, HTTP_PORT)).await.unwrap();
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("node-ns"), "{reply}");

    node.netns.as_ref().unwrap().set_link(false);
    let limit = KEEPALIVE * (KEEPALIVE_MAX as u32 + 1) + Duration::from_millis(1500);
    let took = wait_status(&pool, "node-ns", limit + Duration::from_secs(5), |s| {
        s.state != TunnelState::Ready
    })
    .await;
    node.netns.as_ref().unwrap().set_link(true);
    let took = took.expect("a cut link is noticed");
    assert!(took <= limit, "detected after {took:?}, budget {limit:?}");
    wait_ready(&pool, "node-ns", 15, "recovers when the link is back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_finishes_its_transfer_refuses_new_dials_then_closes() {
    let cluster = Cluster::start(3);
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let pool = Arc::new(Pool::with_config(fast(&cluster), vec![n1.node(), n2.node()]).unwrap());
    let stream = pool.dial(&dest(n1.addr, ECHO_PORT)).await.unwrap();
    let transfer = tokio::spawn(paced_round_trip(
        stream,
        32 << 20,
        Duration::from_millis(60),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !transfer.is_finished(),
        "the transfer is still running when the node is removed"
    );

    // An update that does not validate is refused whole; the set stays.
    let bad = Node {
        address: "999.0.0.1".into(),
        ..n2.node()
    };
    assert!(pool.update(vec![n1.node(), bad]).is_err());
    assert_eq!(pool.nodes().len(), 2);

    let summary = pool.update(vec![n2.node()]).unwrap();
    assert_eq!(summary.removed, vec!["node-1".to_string()]);
    let t0 = Instant::now();
    let err = pool.dial(&dest(n1.addr, ECHO_PORT)).await.unwrap_err();
    assert!(matches!(err, DialError::NoRoute { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_millis(200), "refused at once");
    let draining = pool
        .statuses()
        .into_iter()
        .find(|(n, _)| n.name == "node-1")
        .map(|(_, s)| s.state);
    assert_eq!(draining, Some(TunnelState::Draining));

    let (got, same) = tokio::time::timeout(Duration::from_secs(120), transfer)
        .await
        .expect("transfer ends")
        .unwrap();
    assert_eq!(got, 32 << 20);
    assert!(same, "the 32 MiB came back intact");
    assert!(
        support::wait_until(Duration::from_secs(5), || n1.ssh_connections() == 0),
        "node-1's connection closes after its stream ended"
    );
    assert_eq!(n2.ssh_connections(), 1, "node-2 untouched");

    // node-2 moves to node-3's address: a new connection there, the old one drains away.
    let moved = Node {
        address: n3.addr.to_string(),
        ..n2.node()
    };
    let summary = pool.update(vec![moved]).unwrap();
    assert_eq!(summary.replaced, vec!["node-2".to_string()]);
    wait_ready(&pool, "node-2", 10, "ready at the new address").await;
    assert!(support::wait_until(Duration::from_secs(5), || n2
        .ssh_connections()
        == 0
        && n3.ssh_connections() == 1));
    let mut s = pool
        .dial_through("node-2", &dest(n3.addr, HTTP_PORT))
        .await
        .unwrap();
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("node-3"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_streams_up_to_the_drain_timeout() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let mut cfg = fast(&cluster);
    // Long enough for the 2 MiB transfer on a loaded CI machine (it needs ~0.2 s alone).
    cfg.drain_timeout = Duration::from_secs(6);
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let stream = pool.dial(&dest(n1.addr, ECHO_PORT)).await.unwrap();
    let transfer = tokio::spawn(paced_round_trip(
        stream,
        2 << 20,
        Duration::from_millis(100),
    ));
    // An idle stream that never finishes: cut at the drain timeout.
    let mut idle = pool.dial(&dest(n1.addr, ECHO_PORT)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    pool.shutdown().await;
    let took = t0.elapsed();
    let (got, same) = transfer.await.unwrap();
    assert!(
        got == 2 << 20 && same,
        "the running transfer finished intact during the drain"
    );
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(15),
        "shutdown waited for the drain timeout: {took:?}"
    );
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("no hang");
    assert!(matches!(r, Ok(0) | Err(_)), "the idle stream ended: {r:?}");
    assert!(support::wait_until(Duration::from_secs(5), || n1
        .ssh_connections()
        == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_restart_degrades_the_node_but_never_cuts_its_connection() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    node.start_pod_stub();
    let mut cfg = fast(&cluster);
    cfg.health.probe = Probe::Tcp { port: HTTP_PORT };
    cfg.health.interval = Duration::from_millis(300);
    cfg.health.timeout = Duration::from_secs(1);
    cfg.health.reconnect_after = 2;
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    wait_status(&pool, "node-1", Duration::from_secs(10), |s| {
        s.state == TunnelState::Ready && s.last_health.as_ref().is_some_and(|h| h.ok)
    })
    .await
    .expect("ready with a passing probe");
    // A pod-IP echo stream through the node (a port-forward, a webhook) stays open throughout.
    let stream = pool.dial(&dest(node.pod_addr, ECHO_PORT)).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut exchange = async |i: u32, sent: &mut Vec<u8>, got: &mut Vec<u8>| {
        let msg = format!("message {i};");
        wr.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut back))
            .await
            .expect("the stream answers during the kubelet's outage")
            .unwrap();
        sent.extend_from_slice(msg.as_bytes());
        got.extend_from_slice(&back);
    };
    exchange(0, &mut sent, &mut got).await;

    // The kubelet stops for 45 s: sshd answers each probe with "connect failed".
    node.kill_stub();
    let degraded = wait_status(&pool, "node-1", Duration::from_secs(10), |s| {
        s.state == TunnelState::Degraded
    })
    .await;
    assert!(degraded.is_some(), "{:?}", pool.status("node-1"));
    let st = pool.status("node-1").unwrap();
    assert!(
        st.reason
            .contains("the node's service failed its health probe")
            && st.reason.contains("connect failed"),
        "the reason names the service and what sshd said: {}",
        st.reason
    );
    let outage = Instant::now();
    let mut i = 1;
    while outage.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        exchange(i, &mut sent, &mut got).await;
        i += 1;
        let st = pool.status("node-1").unwrap();
        assert_eq!(st.reconnects, 0, "never reconnected: {st:?}");
        assert_eq!(st.state, TunnelState::Degraded, "{st:?}");
    }
    assert_eq!(node.ssh_connections(), 1, "sshd saw no new connection");

    // The kubelet is back: ready again, same connection, the stream intact.
    node.start_stub();
    wait_status(&pool, "node-1", Duration::from_secs(10), |s| {
        s.state == TunnelState::Ready && s.last_health.as_ref().is_some_and(|h| h.ok)
    })
    .await
    .expect("ready once the kubelet is back");
    exchange(i, &mut sent, &mut got).await;
    assert_eq!(got, sent, "every byte of the stream, in order");
    assert_eq!(pool.status("node-1").unwrap().reconnects, 0);
    assert_eq!(node.ssh_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_channel_gets_no_answer_replaces_the_connection() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    // The kubelet stub goes; in its place on the echo port, a listener whose accept queue is
    // full, so sshd's connect for the probe's channel hangs and the open gets no answer, while
    // keepalives are answered.
    node.kill_stub();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&std::net::SocketAddr::from((node.addr, ECHO_PORT)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&std::net::SocketAddr::from((node.addr, ECHO_PORT)).into());
        fillers.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cfg = fast(&cluster);
    cfg.health.probe = Probe::Tcp { port: ECHO_PORT };
    cfg.health.interval = Duration::from_millis(300);
    cfg.health.timeout = Duration::from_secs(1);
    cfg.health.reconnect_after = 2;
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let replaced = wait_status(&pool, "node-1", Duration::from_secs(20), |s| {
        s.reconnects >= 1
    })
    .await;
    let st = pool.status("node-1").unwrap();
    assert!(
        replaced.is_some(),
        "unanswered probes replace the connection: {st:?}"
    );
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("timed out"),
        "{st:?}"
    );
    drop(fillers);
    drop(sock);
}

/// Channel limits for the isolation tests: 1 MiB of memory per channel, spilling (if
/// `spill`) up to 64 MiB into the cluster's directory, and `stall`.
fn small_buffers(c: &Cluster, spill: bool, stall: Duration) -> ChannelLimits {
    ChannelLimits {
        recv_buffer_max: 1 << 20,
        spill_max: if spill { 64 << 20 } else { 0 },
        stall_timeout: stall,
        budget: Arc::new(BufferBudget::new(
            64 << 20,
            spill.then(|| c.path().to_path_buf()),
            256 << 20,
        )),
    }
}

/// A pool on the cluster with `small_buffers` limits, once node-1 is ready.
async fn small_buffer_pool(c: &Cluster, spill: bool, stall: Duration) -> Pool {
    let mut cfg = fast(c);
    std::sync::Arc::make_mut(&mut cfg.ssh).channel = small_buffers(c, spill, stall);
    let pool = Pool::with_config(cfg, c.node_list()).unwrap();
    wait_ready(&pool, "node-1", 10, "ready").await;
    pool
}

/// Pushes `total` bytes of random data into an echo channel; returns their SHA-256.
fn push_random(
    mut wr: tokio::io::WriteHalf<TunnelStream>,
    total: usize,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            rng.fill_bytes(&mut buf);
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            h.update(&buf);
            sent += buf.len();
        }
        let _ = wr.shutdown().await;
        h.finalize().to_vec()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_alive_reader_does_not_stall_its_neighbours_and_keeps_every_byte() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    // The stall timeout is far above every bound below: nothing here may rely on it.
    let pool = small_buffer_pool(&cluster, true, Duration::from_secs(600)).await;
    let d = dest(node.addr, ECHO_PORT);
    let rss_before = support::rss_bytes();

    // The neighbour is opened first, so it certainly shares the slow reader's connection.
    let neighbour = pool.dial(&d).await.unwrap();
    // The slow reader: 24 MiB pushed into the echo server, read back at about 80 KB/s.
    let slow = pool.dial(&d).await.unwrap();
    assert_eq!(
        pool.connection_load("node-1"),
        Some((1, 2)),
        "one connection"
    );
    let (mut slow_rd, slow_wr) = tokio::io::split(slow);
    let sent_hash = push_random(slow_wr, 24 << 20);
    let go_fast = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let go_fast = go_fast.clone();
        tokio::spawn(async move {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0usize;
            let mut fast = false;
            // Bounded: 24 MiB at 80 KB/s would take 5 minutes; the test switches to full speed
            // well before, and the whole loop is cut at 180 s.
            let deadline = Instant::now() + Duration::from_secs(180);
            while Instant::now() < deadline {
                let want = if fast { buf.len() } else { 4096 };
                let n = match slow_rd.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                h.update(&buf[..n]);
                got += n;
                if !fast {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = go_fast.notified() => fast = true,
                    }
                }
            }
            (got, h.finalize().to_vec())
        })
    };
    // Wait until the slow reader is well behind (spilling), then the neighbour moves 64 MiB
    // both ways on the same connection, within a bound far below the stall timeout.
    let link = pool.metrics().link("node-1");
    assert!(
        support::wait_until(Duration::from_secs(20), || link.spilled.get() > 0),
        "the slow reader's data spills"
    );
    let t0 = Instant::now();
    let (got, same) = tokio::time::timeout(
        Duration::from_secs(60),
        paced_round_trip(neighbour, 64 << 20, Duration::ZERO),
    )
    .await
    .expect("the neighbour's 64 MiB completes while the slow reader lives");
    assert!(got == 64 << 20 && same);
    eprintln!(
        "neighbour's 64 MiB round trip beside a slow reader: {:?}",
        t0.elapsed()
    );
    // Everything is pushed by now (bounded wait), so the reader is behind by most of 24 MiB.
    assert!(
        support::wait_until(Duration::from_secs(30), || sent_hash.is_finished()),
        "the 24 MiB are pushed"
    );
    let rss_after = support::rss_bytes();
    let grew = rss_after.saturating_sub(rss_before);
    let (spilled, buffered) = (link.spilled.get(), link.buffered.get());
    eprintln!(
        "slow-reader test: RSS before {} MiB, after {} MiB, growth {} MiB; spilled {} MiB, buffered {} KiB",
        rss_before >> 20,
        rss_after >> 20,
        grew >> 20,
        spilled >> 20,
        buffered >> 10
    );
    // What the reader is behind by sits in the spill file, not in memory. The real bound: two
    // channels' 1 MiB memory share plus russh's queue of up to 100 packets (3.2 MiB) each,
    // and allocator slack; 12 MiB is above that and well below the bytes the reader is
    // behind by (more than 12 MiB: it reads at most 80 KB/s of the 24 MiB), which would not
    // fit if they were held in memory.
    const BOUND: u64 = 12 << 20;
    assert!(
        spilled as u64 + buffered as u64 > BOUND,
        "the reader is behind by more than the bound: spilled {spilled}, buffered {buffered}"
    );
    assert!(
        grew < BOUND,
        "memory stays within {} MiB while {} MiB are spilled: grew {} MiB",
        BOUND >> 20,
        spilled >> 20,
        grew >> 20
    );

    // The slow reader was never cut, and reading at full speed now it gets every byte.
    go_fast.notify_one();
    let (got, hash) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the slow reader finishes")
        .unwrap();
    let sent = sent_hash.await.unwrap();
    assert_eq!(got, 24 << 20, "every byte arrives");
    assert_eq!(hash, sent, "in order, unchanged");
    assert_eq!(pool.tunnel("node-1").unwrap().stalled_channels(), 0);
    assert!(
        support::wait_until(Duration::from_secs(10), || link.spilled.get() == 0
            && link.buffered.get() == 0),
        "spill and buffers given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_congests_only_its_connection_and_then_loses_its_channel() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    // No spilling: the stuck reader holds up its connection until the stall clock cuts it.
    let pool = small_buffer_pool(&cluster, false, Duration::from_secs(4)).await;
    let d = dest(node.addr, ECHO_PORT);

    // Channel A: we push 24 MiB into the echo server and never read the echo.
    let stuck = pool.dial(&d).await.unwrap();
    let (mut stuck_rd, stuck_wr) = tokio::io::split(stuck);
    let pusher = push_random(stuck_wr, 24 << 20);
    let tunnel = pool.tunnel("node-1").unwrap();
    assert!(
        support::wait_until(Duration::from_secs(10), || tunnel.is_congested()),
        "the connection counts as congested"
    );
    // New dials meanwhile go to another connection, at once (far below the stall timeout).
    for _ in 0..20 {
        let t0 = Instant::now();
        let s = tokio::time::timeout(Duration::from_secs(2), pool.dial(&d))
            .await
            .expect("a new dial does not wait behind the stuck reader")
            .unwrap();
        let (mut r, mut w) = tokio::io::split(s);
        w.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), r.read_exact(&mut b))
            .await
            .expect("echo in time")
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
    let (conns, _) = pool.connection_load("node-1").unwrap();
    assert!(
        conns >= 2,
        "an extra connection took the new dials: {conns}"
    );
    assert!(pool.congested_connections("node-1").unwrap() >= 1);
    assert!(
        node.ssh_connections() >= 2,
        "sshd sees the extra connection"
    );

    // The stuck reader lost its channel, with an error (not a silent EOF), and it was counted.
    assert!(support::wait_until(Duration::from_secs(15), || tunnel
        .stalled_channels()
        == 1));
    // The cut channel's queue no longer holds up the session loop: a new channel on this very
    // connection (not one the pool picks, which could be the extra) opens and echoes at once,
    // long before keepalives would notice a wedged loop.
    let t0 = Instant::now();
    let echoed = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = tunnel
            .open(&node.addr.to_string(), ECHO_PORT)
            .await
            .map_err(|e| format!("open on the same connection: {e}"))?;
        s.write_all(b"after the cut")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut b = [0u8; 13];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(b)
    })
    .await;
    assert!(
        matches!(&echoed, Ok(Ok(b)) if b == b"after the cut"),
        "after the cut, a new channel on the stuck reader's connection echoes within 2 s \
         (the session loop is not blocked): {echoed:?} after {:?}",
        t0.elapsed()
    );
    let mut sink = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), stuck_rd.read_to_end(&mut sink))
        .await
        .expect("no hang");
    let e = r.expect_err("the stalled channel ends with an error");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    pusher.abort();
    assert_eq!(
        pool.status("node-1").unwrap().state,
        TunnelState::Ready,
        "the connection itself survived"
    );
    assert!(
        support::wait_until(Duration::from_secs(5), || !tunnel.is_congested()),
        "and is no longer congested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sequential_dials_leave_no_fd_or_task_behind() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pool = Pool::with_config(fast(&cluster), cluster.node_list()).unwrap();
    let d = dest(node.addr, ECHO_PORT);
    let tunnel = {
        wait_ready(&pool, "node-1", 10, "ready").await;
        pool.tunnel("node-1").unwrap()
    };
    let metrics = tokio::runtime::Handle::current().metrics();
    let one = |i: u32| {
        let pool = &pool;
        let d = &d;
        async move {
            let mut s = pool
                .dial(d)
                .await
                .unwrap_or_else(|e| panic!("dial {i}: {e}"));
            s.write_all(&[i as u8]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i as u8);
            if i.is_multiple_of(2) {
                s.shutdown().await.unwrap(); // graceful half-close
            } // odd ones are just dropped
        }
    };
    for i in 0..20 {
        one(i).await;
    }
    assert!(support::wait_until(Duration::from_secs(5), || tunnel
        .open_channels()
        == 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = support::open_fds();
    let tasks_before = metrics.num_alive_tasks();
    let t0 = Instant::now();
    for i in 0..10_000 {
        one(i).await;
    }
    let took = t0.elapsed();
    let settled = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = tunnel.open_channels() == 0
                && support::open_fds() <= fds_before
                && metrics.num_alive_tasks() <= tasks_before;
            if ok || Instant::now() > deadline {
                break ok;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    eprintln!(
        "10,000 dials in {took:?}; fds {} -> {}; tasks {} -> {}",
        fds_before,
        support::open_fds(),
        tasks_before,
        metrics.num_alive_tasks()
    );
    assert!(
        settled,
        "back to the start: fds {} (was {fds_before}), tasks {} (was {tasks_before}), channels {}",
        support::open_fds(),
        metrics.num_alive_tasks(),
        tunnel.open_channels()
    );
    assert_eq!(node.ssh_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_flight_are_capped_across_the_pool() {
    let cluster = Cluster::start(0);
    // Eight nodes behind one listener that accepts TCP and never speaks: every attempt is a
    // handshake in flight until the connect timeout. Record each attempt's (open, close).
    let addr = support::refused_address(2022);
    let listener = tokio::net::TcpListener::bind((addr, 2022)).await.unwrap();
    let spans = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    let rec = spans.clone();
    let hole = tokio::spawn(async move {
        for _ in 0..500 {
            let Ok((mut sock, _)) = listener.accept().await else {
                break;
            };
            let opened = Instant::now();
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                // Until the client gives up on the handshake and closes.
                while let Ok(n) = sock.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
                rec.lock().unwrap().push((opened, Instant::now()));
            });
        }
    });
    let nodes: Vec<Node> = (0..8)
        .map(|i| Node::parse_spec(&format!("n{i}={addr}:2022")).unwrap())
        .collect();
    let mut cfg = PoolConfig::new(
        SshSettings::builder(cluster.user.clone())
            .key_file(&cluster.keys.ed25519, None)
            .unwrap()
            .known_hosts_file(&cluster.known_hosts)
            .unwrap()
            .connect_timeout(Duration::from_millis(600))
            .build(),
    );
    cfg.health.probe = Probe::None;
    cfg.max_handshakes = 3;
    cfg.backoff = BackoffPolicy {
        min: Duration::from_millis(100),
        max: Duration::from_millis(200),
    };
    let pool = Pool::with_config(cfg, nodes).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    drop(pool);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hole.abort();
    let spans = spans.lock().unwrap().clone();
    assert!(
        spans.len() >= 8,
        "every node tried ({} attempts)",
        spans.len()
    );
    // Peak overlap, allowing 50 ms for the server to see a client's close.
    let lag = Duration::from_millis(50);
    let peak = spans
        .iter()
        .map(|(a, _)| {
            spans
                .iter()
                .filter(|(b, c)| *b <= *a && *a < c.checked_sub(lag).unwrap_or(*c))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert_eq!(
        peak, 3,
        "at most 3 handshakes at once, and the cap was reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_probe_verifies_the_kubelet_certificate_through_the_tunnel() {
    use kube_ssh_tunnel::tls::{ServerTrust, client_config};
    let cluster = Cluster::start(1);
    let probe_cfg = |trust: ServerTrust<'_>| {
        let mut cfg = fast(&cluster);
        cfg.health.probe = Probe::parse_url(&format!(
            "https://{{address}}:{}/healthz",
            support::HTTPS_PORT
        ))
        .unwrap();
        cfg.health.interval = Duration::from_millis(300);
        cfg.health.timeout = Duration::from_secs(2);
        cfg.health.reconnect_after = 1000;
        cfg.health.tls = Some(client_config(trust).unwrap());
        cfg
    };
    let healthy = |s: &NodeStatus| {
        s.state == TunnelState::Ready && s.last_health.as_ref().is_some_and(|h| h.ok)
    };

    // The cluster CA: the kubelet's certificate (SAN = node IP) verifies.
    let pool = Pool::with_config(
        probe_cfg(ServerTrust::CaFile(&cluster.ca_file)),
        cluster.node_list(),
    )
    .unwrap();
    wait_status(&pool, "node-1", Duration::from_secs(10), healthy)
        .await
        .unwrap_or_else(|| {
            panic!(
                "https probe passes with the right CA: {:?}",
                pool.status("node-1")
            )
        });

    // Another CA: the handshake is refused, the node is degraded, and the error says why.
    let other = support::TestCa::new("some other CA").unwrap();
    let other_file = cluster.path().join("other-ca.crt");
    other.write(&other_file).unwrap();
    let pool2 = Pool::with_config(
        probe_cfg(ServerTrust::CaFile(&other_file)),
        cluster.node_list(),
    )
    .unwrap();
    wait_status(
        &pool2,
        "node-1",
        Duration::from_secs(10),
        is(TunnelState::Degraded),
    )
    .await
    .expect("a certificate from an unknown CA fails the probe");
    let err = pool2
        .status("node-1")
        .unwrap()
        .last_health
        .unwrap()
        .error
        .unwrap()
        .to_string();
    assert!(
        err.contains("TLS") && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // Explicitly insecure: any certificate passes.
    let pool3 = Pool::with_config(
        probe_cfg(ServerTrust::InsecureSkipVerify),
        cluster.node_list(),
    )
    .unwrap();
    wait_status(&pool3, "node-1", Duration::from_secs(10), healthy)
        .await
        .expect("insecure mode accepts it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_nodes_added_and_removed_leave_no_metric_series_behind() {
    // node-1 stays; churned nodes that are real use node-2's sshd (an address no other
    // node of the set has: the pool refuses a second node on a held address).
    let cluster = Cluster::start(2);
    let (stable_node, node) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut cfg = fast(&cluster);
    cfg.drain_timeout = Duration::from_secs(2);
    let pool = Pool::with_config(cfg, vec![stable_node.node()]).unwrap();
    wait_ready(&pool, "node-1", 10, "ready").await;
    let stable = stable_node.node();
    let dead = support::refused_address(22);
    let before = {
        pool.refresh_metrics();
        pool.metrics().encode().len()
    };
    for i in 0..1000u32 {
        // Most churned nodes are unreachable (fast); every 50th is the real sshd and carries
        // a dial, so that dial, byte and reconnect series exist too.
        let real = i % 50 == 0;
        let addr = if real {
            format!("{}:{}", node.addr, node.ssh_port)
        } else {
            format!("{dead}:22")
        };
        let churn = Node::parse_spec(&format!("churn-{i}={addr}")).unwrap();
        pool.update(vec![stable.clone(), churn]).unwrap();
        if real {
            wait_ready(&pool, &format!("churn-{i}"), 10, "churned node ready").await;
            let mut s = pool
                .dial_through(&format!("churn-{i}"), &dest(node.addr, ECHO_PORT))
                .await
                .unwrap();
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
        pool.refresh_metrics();
        pool.update(vec![stable.clone()]).unwrap();
    }
    // Every removed node's drain ends, then its series are gone.
    let gone = {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            pool.refresh_metrics();
            let text = pool.metrics().encode();
            if !text.contains("churn-") || Instant::now() > end {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let left: Vec<&str> = gone
        .lines()
        .filter(|l| l.contains("churn-"))
        .take(5)
        .collect();
    assert!(left.is_empty(), "series of removed nodes remain: {left:?}");
    assert!(
        gone.contains("node=\"node-1\""),
        "the stable node keeps its series"
    );
    assert!(
        gone.len() < before * 2,
        "/metrics grew from {before} to {} bytes",
        gone.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_since_holds_across_backoff_cycles_and_flaps_are_counted() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pool = Pool::with_config(fast(&cluster), cluster.node_list()).unwrap();
    wait_ready(&pool, "node-1", 10, "ready").await;
    assert!(pool.status("node-1").unwrap().not_ready_since.is_none());
    node.kill_sshd();
    wait_status(&pool, "node-1", Duration::from_secs(10), |s| {
        s.state != TunnelState::Ready
    })
    .await
    .expect("down");
    let first = pool.status("node-1").unwrap();
    let (down_at, _) = first.not_ready_since.expect("not ready since the kill");
    // Several backoff cycles (connecting -> backoff -> connecting ...): the time stays put.
    let attempts = first.attempts;
    wait_status(&pool, "node-1", Duration::from_secs(20), |s| {
        s.attempts >= attempts + 3
    })
    .await
    .expect("three more attempts");
    let later = pool.status("node-1").unwrap();
    assert_eq!(
        later.not_ready_since.map(|(w, _)| w),
        Some(down_at),
        "DOWN-SINCE does not restart with each backoff cycle"
    );
    assert!(later.since > down_at, "while the state's own `since` does");
    assert_eq!(later.flaps_last_hour(std::time::Instant::now()), 1);
    node.start_sshd();
    wait_ready(&pool, "node-1", 20, "back").await;
    let back = pool.status("node-1").unwrap();
    assert!(back.not_ready_since.is_none());
    assert_eq!(back.flaps_last_hour(std::time::Instant::now()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_while_holding_spilled_bytes_is_cut_and_the_spill_freed() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pool = small_buffer_pool(&cluster, true, Duration::from_secs(2)).await;
    let link = pool.metrics().link("node-1");
    // 8 MiB into the echo server, then EOF: the echo comes back and ends, but nobody reads
    // it. 1 MiB waits in memory, the rest in the spill file, with the EOF behind them.
    let s = pool.dial(&dest(node.addr, ECHO_PORT)).await.unwrap();
    let (_rd, wr) = tokio::io::split(s);
    let pushed = push_random(wr, 8 << 20);
    pushed.await.unwrap();
    assert!(
        support::wait_until(Duration::from_secs(10), || link.spilled.get() > 0),
        "spilling"
    );
    let tunnel = pool.tunnel("node-1").unwrap();
    assert!(
        support::wait_until(Duration::from_secs(15), || tunnel.stalled_channels() == 1),
        "the idle reader holding spilled bytes is cut after the stall timeout"
    );
    assert!(
        support::wait_until(Duration::from_secs(10), || link.spilled.get() == 0
            && pool.config().ssh.channel.budget.spill_used() == 0),
        "its spill file is gone and the budget given back"
    );
    assert_eq!(pool.status("node-1").unwrap().state, TunnelState::Ready);
}
