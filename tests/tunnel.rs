//! NodeTunnel and Pool against real OpenSSH sshd nodes (see tests/support).

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube_ssh_tunnel::{ConnectError, DialError, NodeTunnel, OpenError, Pool, TunnelStream};
use sha2::{Digest, Sha256};
use support::{Cluster, ECHO_PORT, HTTP_PORT, dest, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_LIMIT: Duration = Duration::from_secs(180);

async fn http_get(stream: &mut TunnelStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: kubelet\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_round_trip_through_one_channel_is_intact() {
    let cluster = Cluster::start(1);
    let pool = Pool::new(cluster.settings(), cluster.node_list()).unwrap();
    let stream = pool
        .dial(&dest(cluster.nodes[0].addr, ECHO_PORT))
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(stream);
    const TOTAL: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            rng.fill_bytes(&mut buf);
            wr.write_all(&buf).await.unwrap();
            hash.update(&buf);
            sent += buf.len();
        }
        wr.shutdown().await.unwrap();
        hash.finalize()
    });
    let reader = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            got += n;
        }
        (got, hash.finalize())
    });
    let (sent_hash, (got, got_hash)) = tokio::time::timeout(TEST_LIMIT, async {
        (writer.await.unwrap(), reader.await.unwrap())
    })
    .await
    .expect("64 MiB round trip finished in time");
    assert_eq!(got, TOTAL);
    assert_eq!(
        sent_hash, got_hash,
        "SHA-256 of what came back equals what was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_first_still_receives_the_whole_reply() {
    let cluster = Cluster::start(1);
    let pool = Pool::new(cluster.settings(), cluster.node_list()).unwrap();
    let mut s = pool
        .dial(&dest(cluster.nodes[0].addr, ECHO_PORT))
        .await
        .unwrap();
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&msg).await.unwrap();
    s.shutdown().await.unwrap(); // our EOF; the echo server answers then closes its side
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut back))
        .await
        .expect("reply arrives after our EOF")
        .unwrap();
    assert_eq!(back, msg);
    // Both sides sent EOF: the channel is closed without dropping the stream.
    let tunnel = pool.tunnel("node-1").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || tunnel.open_channels() == 0),
        "channel closed once both sides were done"
    );
    assert!(
        s.write_all(b"late").await.is_err(),
        "write after shutdown fails"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_destination_first_gives_eof_then_writes_fail_cleanly() {
    let cluster = Cluster::start(1);
    let pool = Pool::new(cluster.settings(), cluster.node_list()).unwrap();
    let mut s = pool
        .dial(&dest(cluster.nodes[0].addr, HTTP_PORT))
        .await
        .unwrap();
    s.write_all(b"GET /close HTTP/1.1\r\nHost: kubelet\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply))
        .await
        .expect("destination's close reaches us as EOF")
        .unwrap();
    assert!(
        reply.contains("200 OK") && reply.ends_with("bye"),
        "{reply}"
    );
    // The destination is gone: sshd's first write or two into the closed socket fail, it
    // closes the channel, and from its CLOSE on our writes fail with BrokenPipe — within a
    // few writes (not hanging, not panicking, not accepted forever).
    const MAX_WRITES: usize = 20;
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        for i in 1..=MAX_WRITES {
            if let Err(e) = s.write_all(&[0u8; 1024]).await {
                return Ok((i, e));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(MAX_WRITES)
    })
    .await
    .expect("writes after the destination closed do not hang");
    let (writes, e) = outcome.unwrap_or_else(|n| {
        panic!("{n} writes after the destination closed all succeeded; one must fail")
    });
    eprintln!("write {writes} after the destination closed failed: {e}");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe,
        "write {writes} fails as a broken pipe: {e}"
    );
    let tunnel = pool.tunnel("node-1").unwrap();
    assert!(wait_until(Duration::from_secs(5), || tunnel
        .open_channels()
        == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_channels_share_one_ssh_connection() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pool = Arc::new(Pool::new(cluster.settings(), cluster.node_list()).unwrap());
    let d = dest(node.addr, ECHO_PORT);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let pool = pool.clone();
        let d = d.clone();
        tasks.spawn(async move {
            let mut s = pool.dial(&d).await.map_err(|e| format!("dial {i}: {e}"))?;
            let msg = format!("channel-{i:06}");
            s.write_all(msg.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
            if back != msg.as_bytes() {
                return Err(format!("channel {i} echoed the wrong bytes"));
            }
            Ok::<TunnelStream, String>(s)
        });
    }
    let mut open = Vec::new();
    let joined = tokio::time::timeout(TEST_LIMIT, async {
        while let Some(r) = tasks.join_next().await {
            open.push(r.unwrap());
        }
    })
    .await;
    assert!(joined.is_ok(), "1000 dials finished in time");
    let failures: Vec<&String> = open.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 1000 failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let tunnel = pool.tunnel("node-1").unwrap();
    assert_eq!(
        tunnel.open_channels(),
        1000,
        "all 1000 channels open at once"
    );
    assert_eq!(
        node.ssh_connections(),
        1,
        "sshd serves exactly one SSH connection from the pool"
    );
    drop(open);
    assert!(
        wait_until(Duration::from_secs(20), || tunnel.open_channels() == 0),
        "dropping the streams closes every channel (left: {})",
        tunnel.open_channels()
    );
    assert_eq!(node.ssh_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_address_is_dialled_through_that_nodes_own_connection() {
    let cluster = Cluster::start(3);
    let pool = Pool::new(cluster.settings(), cluster.node_list()).unwrap();
    for node in &cluster.nodes {
        let mut s = pool.dial(&dest(node.addr, HTTP_PORT)).await.unwrap();
        assert_eq!(
            s.node(),
            node.name,
            "routed to the node that owns the address"
        );
        let reply = http_get(&mut s, "/whoami").await;
        assert!(
            reply.ends_with(&format!("{} {}:{HTTP_PORT}", node.name, node.addr)),
            "the kubelet stub of {} answered: {reply}",
            node.name
        );
    }
    for node in &cluster.nodes {
        assert_eq!(
            node.ssh_connections(),
            1,
            "{} has exactly one SSH connection",
            node.name
        );
        assert_eq!(
            node.sshd_log().matches("Accepted publickey").count(),
            1,
            "{}",
            node.name
        );
    }
    // The proof is sound: each sshd only forwards to its own address (PermitOpen), so a dial
    // carried by the wrong node's connection would have been refused.
    let err = pool
        .dial_through("node-1", &dest(cluster.nodes[1].addr, HTTP_PORT))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DialError::Open { node, source: OpenError::Refused { .. }, .. } if node == "node-1"),
        "{err}"
    );
    let err = pool.dial(&dest("127.1.2.3", HTTP_PORT)).await.unwrap_err();
    assert!(matches!(err, DialError::NoRoute { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_key_is_refused_and_no_channel_is_opened() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    // known_hosts says node-1's address has node-2's key.
    let kh = cluster.path().join("client/known_hosts_wrong");
    let wrong = n2
        .known_hosts_line()
        .replacen(&n2.addr.to_string(), &n1.addr.to_string(), 1);
    std::fs::write(&kh, format!("# a comment\n{wrong}")).unwrap();
    let settings = kube_ssh_tunnel::SshSettings::builder(cluster.user.clone())
        .key_file(&cluster.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&kh)
        .unwrap()
        .build();
    let pool = Pool::new(settings, vec![n1.node()]).unwrap();
    let err = pool.dial(&dest(n1.addr, HTTP_PORT)).await.unwrap_err();
    let DialError::NotReady {
        node,
        state,
        last_error: Some(source),
        ..
    } = &err
    else {
        panic!("expected NotReady with the connect error, got {err}");
    };
    assert_eq!(node, "node-1");
    assert_eq!(
        *state,
        kube_ssh_tunnel::pool::TunnelState::Failed,
        "a host key problem needs a human"
    );
    let ConnectError::HostKeyMismatch {
        offered,
        file,
        line,
        ..
    } = &**source
    else {
        panic!("expected HostKeyMismatch, got {source}");
    };
    let n1_key = n1.host_key_pub();
    let fp = support::fingerprint(&n1_key);
    assert!(
        offered.contains(&fp),
        "offered {offered} names node-1's real key {fp}"
    );
    assert_eq!((file.as_str(), *line), (kh.to_str().unwrap(), 2));
    let msg = err.to_string();
    assert!(
        msg.contains("node-1") && msg.contains(&fp) && msg.contains(kh.to_str().unwrap()),
        "{msg}"
    );
    assert!(
        !n1.sshd_log().contains("Accepted publickey"),
        "we never authenticated"
    );

    // A node missing from known_hosts is refused too, with the fix in the message.
    std::fs::write(&kh, n2.known_hosts_line()).unwrap();
    let r = NodeTunnel::connect(&n1.node(), Arc::new(cluster_settings(&cluster, &kh))).await;
    let e = r.unwrap_err();
    assert!(matches!(e, ConnectError::HostKeyUnknown { .. }), "{e}");
    assert!(e.to_string().contains("ssh-keyscan"), "{e}");
    assert!(!n1.sshd_log().contains("Accepted publickey"));
}

fn cluster_settings(c: &Cluster, kh: &std::path::Path) -> kube_ssh_tunnel::SshSettings {
    kube_ssh_tunnel::SshSettings::builder(c.user.clone())
        .key_file(&c.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(kh)
        .unwrap()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_ecdsa_and_rsa_keys_authenticate_with_hashed_known_hosts() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let hashed = cluster.path().join("client/known_hosts_hashed");
    std::fs::copy(&cluster.known_hosts, &hashed).unwrap();
    let out = support::run_bounded(
        std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&hashed),
        b"",
        support::TOOL_LIMIT,
    )
    .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&hashed).unwrap();
    assert!(
        text.starts_with("|1|") && !text.contains(&node.addr.to_string()),
        "{text}"
    );
    for key in [
        &cluster.keys.ed25519,
        &cluster.keys.ecdsa,
        &cluster.keys.rsa,
    ] {
        let settings = kube_ssh_tunnel::SshSettings::builder(cluster.user.clone())
            .key_file(key, None)
            .unwrap()
            .known_hosts_file(&hashed)
            .unwrap()
            .build();
        let tunnel = NodeTunnel::connect(&node.node(), Arc::new(settings))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        let mut s = tunnel
            .open(&node.addr.to_string(), HTTP_PORT)
            .await
            .unwrap();
        let reply = http_get(&mut s, "/healthz").await;
        assert!(
            reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok"),
            "{reply}"
        );
        tunnel.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_and_dead_node_fail_with_named_errors() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let mut cfg = kube_ssh_tunnel::pool::PoolConfig::new(cluster.settings());
    cfg.reconnect_wait = Some(Duration::from_secs(1));
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    // Not in the node's PermitOpen: sshd refuses the channel; the connection stays usable.
    let err = pool.dial(&dest(node.addr, 10261)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            DialError::Open {
                source: OpenError::Refused { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("node-1")
            && err.to_string().contains(&format!("{}:10261", node.addr))
    );
    let mut s = pool.dial(&dest(node.addr, HTTP_PORT)).await.unwrap();
    assert!(http_get(&mut s, "/healthz").await.ends_with("ok"));
    // sshd gone: the next dial fails (connection lost, then connect refused), naming the node.
    node.kill_sshd();
    let tunnel = pool.tunnel("node-1");
    let t0 = std::time::Instant::now();
    let err = pool.dial(&dest(node.addr, HTTP_PORT)).await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "no hang: {:?}",
        t0.elapsed()
    );
    assert_eq!(err.node(), Some("node-1"), "{err}");
    drop(tunnel);
}

/// Past the per-connection channel limit the pool opens another connection to the node
/// (sshd would abort one past 16,384), every stream works, `status` counts the connections,
/// and the extras close again once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_channel_limit_a_node_gets_more_connections_then_sheds_them() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let mut cfg = kube_ssh_tunnel::pool::PoolConfig::new(cluster.settings());
    cfg.max_channels_per_connection = 20;
    cfg.overflow_idle_timeout = Duration::from_millis(500);
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    assert!(
        Pool::with_config(
            {
                let mut c = kube_ssh_tunnel::pool::PoolConfig::new(cluster.settings());
                c.max_channels_per_connection = 16_384;
                c
            },
            vec![]
        )
        .is_err(),
        "a limit at OpenSSH's ceiling is refused"
    );

    // 50 streams at once, all open together: 20 + 20 + 10 on three connections.
    let echo = dest(node.addr, ECHO_PORT);
    let dials = (0..50).map(|_| pool.dial(&echo));
    let mut streams: Vec<TunnelStream> = futures::future::join_all(dials)
        .await
        .into_iter()
        .map(|r| r.expect("every dial succeeds"))
        .collect();
    assert_eq!(pool.connection_load("node-1"), Some((3, 50)));
    assert!(
        wait_until(Duration::from_secs(5), || node.ssh_connections() == 3),
        "sshd sees 3 connections, not {}",
        node.ssh_connections()
    );
    let doc = kube_ssh_tunnel::admin::document::StatusDocument::build(&pool, false);
    assert_eq!(
        (doc.nodes[0].connections, doc.nodes[0].open_channels),
        (3, 50)
    );
    // Each stream is its own echo: distinct bytes back, in order.
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i} says hello");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    drop(streams);
    // Idle extras close; the supervised connection stays.
    assert!(
        wait_until(Duration::from_secs(15), || pool.connection_load("node-1")
            == Some((1, 0))
            && node.ssh_connections() == 1),
        "extras closed: {:?}, sshd sees {}",
        pool.connection_load("node-1"),
        node.ssh_connections()
    );
    let mut s = pool.dial(&dest(node.addr, HTTP_PORT)).await.unwrap();
    assert!(http_get(&mut s, "/healthz").await.ends_with("ok"));
}

/// Every process below `pid` (children first found, then theirs).
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = support::children_of(pid);
    let mut i = 0;
    while i < all.len() && all.len() < 64 {
        let more = support::children_of(all[i]);
        all.extend(more);
        i += 1;
    }
    all
}

/// A health probe whose channel open is pending when its connection is torn down — by the
/// node (its sshd connection process killed) or by us (`disconnect`) — is not an answer from
/// the link: `link_answered` stays false and the error is `ConnectionLost`, never `Refused`
/// (ssh::open_outcome). An answered probe would show the node `degraded` instead of down
/// and reset its failure count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_cut_by_a_teardown_is_not_an_answer() {
    use kube_ssh_tunnel::pool::health::{HealthConfig, Probe, probe};
    let cluster = Cluster::start(1);
    let n = &cluster.nodes[0];
    let cfg = HealthConfig {
        probe: Probe::Tcp { port: HTTP_PORT },
        timeout: Duration::from_secs(20),
        ..HealthConfig::default()
    };
    for teardown in ["the node's sshd process killed", "our disconnect"] {
        let tunnel = Arc::new(
            NodeTunnel::connect(&n.node(), Arc::new(cluster.settings()))
                .await
                .unwrap(),
        );
        // Frozen: the probe's open gets no answer until the teardown.
        n.stop_sshd();
        let (t, node, c) = (tunnel.clone(), n.node(), cfg.clone());
        let probing = tokio::spawn(async move { probe(t.as_ref(), &node, &c).await });
        assert!(
            wait_until(Duration::from_secs(10), || tunnel.open_channels() == 1),
            "{teardown}: the probe's open is pending"
        );
        if teardown == "our disconnect" {
            tokio::time::timeout(Duration::from_secs(5), tunnel.disconnect())
                .await
                .expect("disconnect is bounded");
        } else {
            let listener = n.sshd_pid().expect("sshd runs");
            for pid in descendants(listener) {
                support::signal(pid, libc::SIGKILL);
            }
        }
        let r = tokio::time::timeout(Duration::from_secs(30), probing)
            .await
            .expect("the probe ends within its timeout")
            .unwrap();
        n.cont_sshd();
        assert!(!r.ok, "{teardown}: {r:?}");
        assert!(
            !r.link_answered,
            "{teardown}: a torn-down link did not answer the probe: {r:?}"
        );
        let shown = format!("{:?}", r.error);
        assert!(
            shown.contains("ConnectionLost"),
            "{teardown}: the probe failed with ConnectionLost, not {shown}"
        );
    }
}
