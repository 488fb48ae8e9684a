//! Side-by-side benchmark: our pool against OpenSSH's `ssh -L` on the same real sshd, same
//! cipher, same destination, alternating rounds. Prints medians and ratios and writes
//! BENCHMARKS.md. Not a test: it asserts nothing about speed.
//!
//!   cargo bench --bench tunnel                 # full (a few minutes)
//!   cargo bench --bench tunnel -- --smoke      # tiny sizes, for CI
//!   cargo bench --bench tunnel -- --nodes 1000 # idle-connection memory with 1,000 nodes
//!
//! Measured: throughput and client CPU per GB (1 and 8 streams, aes128-gcm and chacha20, and
//! through the CONNECT front), new-channel latency (sequential, 64 in flight, under a bulk
//! transfer), dials per second, RSS across 10,000 channels, N idle node connections (memory,
//! cold start), and 30,000 concurrent echo-verified streams to one node.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::{Destination, Node, Pool, SshSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Opts {
    smoke: bool,
    nodes: usize,
    /// Only these sections (comma-separated: idle, throughput, latency, dials, bulk, rss,
    /// streams); all when empty. BENCHMARKS.md is written only by a full run.
    only: Vec<String>,
}

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Opts {
        smoke: args.iter().any(|a| a == "--smoke"),
        nodes: get("--nodes").and_then(|v| v.parse().ok()).unwrap_or(200),
        only: get("--only")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    }
}

/// CPU seconds (user+system) of a process.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A sink that counts bytes per connection and reports them at EOF; and an echo.
async fn servers(
    addr: std::net::Ipv4Addr,
) -> (
    SocketAddr,
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let sink = TcpListener::bind((addr, 0)).await.unwrap();
    let echo = TcpListener::bind((addr, 0)).await.unwrap();
    let (sa, ea) = (sink.local_addr().unwrap(), echo.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = sink.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut n = 0u64;
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
                let _ = tx.send(n);
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (sa, ea, rx)
}

struct SshL {
    child: Child,
    local: u16,
}

impl Drop for SshL {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_l(c: &support::Cluster, n: &support::TestNode, target: SocketAddr, cipher: &str) -> SshL {
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", c.known_hosts.display()))
        .args([
            "-o",
            &format!("Ciphers={cipher}"),
            "-o",
            "KexAlgorithms=curve25519-sha256",
        ])
        .args(["-o", "ExitOnForwardFailure=yes", "-i"])
        .arg(&c.keys.ed25519)
        .args([
            "-p",
            &n.ssh_port.to_string(),
            "-L",
            &format!("127.0.0.1:{local}:{target}"),
        ])
        .arg(format!("{}@{}", c.user, n.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    assert!(support::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", local)).is_ok()
    }));
    SshL { child, local }
}

/// Writes `total` bytes on each stream at once and waits until the sink has counted every
/// byte of every stream; returns the wall time.
async fn upload_all<S: tokio::io::AsyncWrite + Unpin + Send + 'static>(
    streams: Vec<S>,
    total: u64,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
) -> f64 {
    let n = streams.len();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            let buf = vec![0x5au8; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                s.write_all(&buf).await.unwrap();
                sent += buf.len() as u64;
            }
            s.shutdown().await.unwrap();
            sent
        });
    }
    let mut sent = Vec::new();
    while let Some(r) = set.join_next().await {
        sent.push(r.unwrap());
    }
    // Other (empty) connections, like ssh -L's readiness probe, report too: wait for ours.
    let mut done = 0;
    while done < n {
        let got = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("sink report")
            .unwrap();
        if got == 0 {
            continue;
        }
        assert!(sent.contains(&got), "a stream lost bytes: {got}");
        done += 1;
    }
    t0.elapsed().as_secs_f64()
}

async fn echo_once<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let _ = s.shutdown().await;
}

fn rss_mib() -> f64 {
    support::rss_bytes() as f64 / (1 << 20) as f64
}

/// Raises the soft descriptor limit to the hard one (inherited by sshd and the stubs).
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Which client a measurement used.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Front,
    Ssh,
}

/// One throughput comparison: `streams` concurrent uploads of `total` bytes each through
/// `side`; returns (Gbit/s, client CPU seconds per GB).
#[allow(clippy::too_many_arguments)]
async fn throughput(
    side: Side,
    streams: usize,
    total: u64,
    pool: &Pool,
    front: &std::path::Path,
    ssh: &SshL,
    sink: SocketAddr,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
) -> (f64, f64) {
    let me = std::process::id();
    let (c0, s0) = (cpu_of(me), cpu_of(ssh.child.id()));
    let secs = match side {
        Side::Ours => {
            let d: Destination = sink.to_string().parse().unwrap();
            let mut v = Vec::new();
            for _ in 0..streams {
                v.push(pool.dial(&d).await.unwrap());
            }
            upload_all(v, total, rx).await
        }
        Side::Front => {
            let mut v = Vec::new();
            for _ in 0..streams {
                let (s, head) = connect_front(front, &sink.to_string()).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                v.push(s);
            }
            upload_all(v, total, rx).await
        }
        Side::Ssh => {
            let mut v = Vec::new();
            for _ in 0..streams {
                let s = TcpStream::connect(("127.0.0.1", ssh.local)).await.unwrap();
                s.set_nodelay(true).unwrap();
                v.push(s);
            }
            upload_all(v, total, rx).await
        }
    };
    let cpu = cpu_of(me) - c0
        + if side == Side::Ssh {
            cpu_of(ssh.child.id()) - s0
        } else {
            0.0
        };
    let bytes = total as f64 * streams as f64;
    (bytes / secs / 1e9 * 8.0, cpu / (bytes / 1e9))
}

/// CONNECT through the front's Unix socket; the stream and the response head.
async fn connect_front(sock: &std::path::Path, target: &str) -> (tokio::net::UnixStream, String) {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// New channel + 1-byte echo + close through `side` (ours: the pool; ssh: `ssh -L`), in µs.
async fn echo_op(ours: bool, pool: &Pool, echo: &Destination, port: u16) -> f64 {
    let t0 = Instant::now();
    if ours {
        echo_once(pool.dial(echo).await.unwrap()).await;
    } else {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        echo_once(s).await;
    }
    t0.elapsed().as_secs_f64() * 1e6
}

/// A pool with one node and no probes, ready.
async fn ready_pool(settings: &SshSettings, nodes: Vec<Node>, max_channels: usize) -> Pool {
    let mut cfg = PoolConfig::new(settings.clone());
    cfg.health.probe = Probe::None;
    cfg.max_channels_per_connection = max_channels;
    let name = nodes[0].name.clone();
    let pool = Pool::with_config(cfg, nodes).unwrap();
    let mut st = pool.subscribe(&name).unwrap();
    st.wait_for(|s| s.state == TunnelState::Ready)
        .await
        .unwrap();
    pool
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    // sshd and the stubs inherit this: 8,192 channels per sshd connection need the sockets.
    raise_fd_limit();
    let (rounds, total, seq_n, conc_n, streams_30k) = if o.smoke {
        (1, 16u64 << 20, 50, 64, 300)
    } else {
        (3, 1u64 << 30, 2000, 2000, 30_000)
    };
    let cluster = support::Cluster::start(2);
    let (node, node2) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Each node's pod address may be reached on any port through its sshd: our sink and
    // echo servers live there.
    let (sink, echo, mut rx) = servers(node.pod_addr).await;
    let (sink2, _, mut rx2) = servers(node2.pod_addr).await;
    let settings = SshSettings::builder(cluster.user.clone())
        .key_file(&cluster.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&cluster.known_hosts)
        .unwrap()
        .build();
    let me = std::process::id();
    let mut lines = Vec::new();
    let mut out = |l: String| {
        println!("{l}");
        lines.push(l);
    };
    // node-2 speaks only chacha20-poly1305 (OpenSSH's default cipher), node-1 everything.
    node2.add_sshd_config("Ciphers chacha20-poly1305@openssh.com");
    node2.restart_sshd();
    // First, from a clean baseline: N idle node connections (all to the one sshd).
    node.add_sshd_config("MaxStartups 2000:30:4000");
    node.restart_sshd();
    // 1. N idle node connections (all to the one sshd): cold start and memory per connection.
    let n = if !o.runs("idle") {
        0
    } else if o.smoke {
        10
    } else {
        o.nodes
    };
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::parse_spec(&format!("n{i}={}:{}", node.addr, node.ssh_port)).unwrap())
        .collect();
    let mut cfg = PoolConfig::new(settings.clone());
    cfg.health.probe = Probe::None;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_mib();
    let (c0, t0) = (cpu_of(me), Instant::now());
    let many = Pool::with_config(cfg, nodes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while many
        .statuses()
        .iter()
        .filter(|(_, s)| s.state == TunnelState::Ready)
        .count()
        < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = many
        .statuses()
        .iter()
        .filter(|(_, s)| s.state == TunnelState::Ready)
        .count();
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_of(me) - c0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per = (rss_mib() - rss0) * 1024.0 / n.max(1) as f64;
    if n > 0 {
        out(format!(
            "| {n} node connections: ready from cold | {ready}/{n} in {secs:.1} s, {cpu:.1} CPU-s | | |"
        ));
        out(format!(
            "| idle memory per node connection | {per:.0} KiB | ssh: ~8 MB per client process | |"
        ));
    }
    many.shutdown_within(Duration::from_secs(1)).await;

    let pool = Arc::new(ready_pool(&settings, vec![cluster.nodes[0].node()], 8192).await);
    let pool2 = ready_pool(&settings, vec![cluster.nodes[1].node()], 8192).await;
    let echo_dest: Destination = echo.to_string().parse().unwrap();
    // The CONNECT front on a Unix socket, in this process, over the same pool.
    let front_dir = tempfile::tempdir().unwrap();
    let front_sock = front_dir.path().join("proxy.sock");
    let front = kube_ssh_tunnel::proxy::ConnectFront::new(
        pool.clone(),
        kube_ssh_tunnel::policy::Policy::default(),
        kube_ssh_tunnel::proxy::FrontLimits::default(),
    );
    front.spawn_uds(kube_ssh_tunnel::proxy::listen::bind_uds(&front_sock).unwrap());

    // 2. Throughput and client CPU per GB: one stream and 8 streams on one connection, both
    //    ciphers, and one stream through the CONNECT front. (Client-side CPU includes the
    //    benchmark's own generator and sink in both columns; `ssh`'s CPU is added to its.)
    let aes = "aes128-gcm@openssh.com";
    let chacha = "chacha20-poly1305@openssh.com";
    let l_aes = ssh_l(&cluster, node, sink, aes);
    let l_chacha = ssh_l(&cluster, node2, sink2, chacha);
    for (label, cipher, streams, via_front) in [
        ("one stream", aes, 1, false),
        ("8 streams, one connection", aes, 8, false),
        ("one stream through the CONNECT front", aes, 1, true),
        ("one stream", chacha, 1, false),
        ("8 streams, one connection", chacha, 8, false),
    ] {
        if !o.runs("throughput") {
            break;
        }
        let (p, l, sk, r) = if cipher == aes {
            (&*pool, &l_aes, sink, &mut rx)
        } else {
            (&pool2, &l_chacha, sink2, &mut rx2)
        };
        let side = if via_front { Side::Front } else { Side::Ours };
        let per_stream = total / streams as u64;
        let (mut ot, mut oc, mut st, mut sc) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let (t, c) = throughput(side, streams, per_stream, p, &front_sock, l, sk, r).await;
            ot.push(t);
            oc.push(c);
            let (t, c) = throughput(Side::Ssh, streams, per_stream, p, &front_sock, l, sk, r).await;
            st.push(t);
            sc.push(c);
        }
        let short = cipher.split('@').next().unwrap_or(cipher);
        let (a, b) = (median(&mut ot), median(&mut st));
        out(format!(
            "| upload, {label}, {short} | {a:.2} Gbit/s | {b:.2} Gbit/s | {:.2}× |",
            a / b
        ));
        let (a, b) = (median(&mut oc), median(&mut sc));
        out(format!(
            "| client CPU per GB, {label}, {short} (lower is better) | {a:.2} s | {b:.2} s | {:.2}× |",
            a / b
        ));
    }
    drop(l_aes);
    drop(l_chacha);

    // 3. New channel + 1-byte round trip + close, sequential: p50 / p99.
    let l = ssh_l(&cluster, node, echo, aes);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for i in 0..if o.runs("latency") { seq_n * 2 } else { 0 } {
        if i % 2 == 0 {
            ours.push(echo_op(true, &pool, &echo_dest, l.local).await);
        } else {
            theirs.push(echo_op(false, &pool, &echo_dest, l.local).await);
        }
    }
    if o.runs("latency") {
        let (p50a, p99a) = (pct(&mut ours, 0.5), pct(&mut ours, 0.99));
        let (p50b, p99b) = (pct(&mut theirs, 0.5), pct(&mut theirs, 0.99));
        out(format!(
            "| new channel + 1-byte echo, sequential p50 | {p50a:.0} µs | {p50b:.0} µs | {:.2}× |",
            p50a / p50b
        ));
        out(format!(
            "| new channel + 1-byte echo, sequential p99 | {p99a:.0} µs | {p99b:.0} µs | {:.2}× |",
            p99a / p99b
        ));
    }

    if o.runs("dials") {
        // 4. Dials per second and per-dial latency, 64 in flight.
        let mut rate = [0.0f64; 2];
        let mut lat: [Vec<f64>; 2] = [vec![], vec![]];
        for (k, ours) in [true, false].into_iter().enumerate() {
            let sem = Arc::new(tokio::sync::Semaphore::new(64));
            let mut set = tokio::task::JoinSet::new();
            let t0 = Instant::now();
            for _ in 0..conc_n {
                let (p, d, s, port) = (
                    pool.clone(),
                    echo_dest.clone(),
                    sem.clone().acquire_owned().await.unwrap(),
                    l.local,
                );
                set.spawn(async move {
                    let us = echo_op(ours, &p, &d, port).await;
                    drop(s);
                    us
                });
            }
            while let Some(r) = set.join_next().await {
                lat[k].push(r.unwrap());
            }
            rate[k] = conc_n as f64 / t0.elapsed().as_secs_f64();
        }
        out(format!(
            "| dials per second, 64 in flight | {:.0} | {:.0} | {:.2}× |",
            rate[0],
            rate[1],
            rate[0] / rate[1]
        ));
        let [mut la, mut lb] = lat;
        out(format!(
            "| new channel + echo, 64 in flight, p50 / p99 | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2}× / {:.2}× |",
            pct(&mut la, 0.5),
            pct(&mut la, 0.99),
            pct(&mut lb, 0.5),
            pct(&mut lb, 0.99),
            pct(&mut la, 0.5) / pct(&mut lb, 0.5),
            pct(&mut la, 0.99) / pct(&mut lb, 0.99)
        ));
    }
    if o.runs("bulk") {
        // 5. New-channel latency while a bulk upload shares the connection (head-of-line).
        let l_bulk = ssh_l(&cluster, node, sink, aes);
        let mut under = [vec![], vec![]];
        for (k, ours) in [true, false].into_iter().enumerate() {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let bulk: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if ours {
                Box::new(pool.dial(&sink.to_string().parse().unwrap()).await.unwrap())
            } else {
                let s = TcpStream::connect(("127.0.0.1", l_bulk.local))
                    .await
                    .unwrap();
                s.set_nodelay(true).unwrap();
                Box::new(s)
            };
            let writer = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut bulk = bulk;
                    let buf = vec![0x5au8; 64 * 1024];
                    let mut sent = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        bulk.write_all(&buf).await.unwrap();
                        sent += buf.len() as u64;
                    }
                    bulk.shutdown().await.unwrap();
                    sent
                })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..seq_n / 4 {
                under[k].push(echo_op(ours, &pool, &echo_dest, l.local).await);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let sent = writer.await.unwrap();
            loop {
                let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                    .await
                    .unwrap()
                    .unwrap();
                if got == sent {
                    break;
                }
            }
        }
        drop(l_bulk);
        let [mut ua, mut ub] = under;
        out(format!(
            "| new channel + echo under a bulk upload on the same connection, p50 / p99 | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2}× / {:.2}× |",
            pct(&mut ua, 0.5),
            pct(&mut ua, 0.99),
            pct(&mut ub, 0.5),
            pct(&mut ub, 0.99),
            pct(&mut ua, 0.5) / pct(&mut ub, 0.5),
            pct(&mut ua, 0.99) / pct(&mut ub, 0.99)
        ));
    }
    drop(l);

    if o.runs("rss") {
        // 6. RSS after 10,000 channels opened and closed.
        let before = rss_mib();
        for _ in 0..if o.smoke { 200 } else { 10_000 } {
            echo_once(pool.dial(&echo_dest).await.unwrap()).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mib();
        out(format!(
            "| RSS before / after 10,000 channels | {before:.1} MiB / {after:.1} MiB | ssh: +33 KB per channel, kept | {:+.1} % |",
            (after / before - 1.0) * 100.0
        ));
    }
    front.stop_accepting();
    drop(front);

    if o.runs("streams") {
        // 7. 30,000 concurrent streams to ONE node, each verified by its own echo. The echo
        //    servers are the node's kubelet and pod stubs (separate processes: one process could
        //    not hold 30,000 sockets under this machine's 20,000 descriptor limit).
        node.start_pod_stub();
        let limit = if o.smoke { 100 } else { 8192 };
        let big = Arc::new(ready_pool(&settings, vec![cluster.nodes[0].node()], limit).await);
        let targets: [Destination; 2] = [
            format!("{}:{}", node.addr, support::ECHO_PORT)
                .parse()
                .unwrap(),
            format!("{}:{}", node.pod_addr, support::ECHO_PORT)
                .parse()
                .unwrap(),
        ];
        let rss_before = rss_mib();
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..streams_30k {
            let (p, d, permit) = (
                big.clone(),
                targets[i % 2].clone(),
                sem.clone().acquire_owned().await.unwrap(),
            );
            set.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(60), p.dial(&d)).await;
                drop(permit);
                r.ok().and_then(|r| r.ok())
            });
        }
        let mut streams = Vec::with_capacity(streams_30k);
        let mut failures = 0;
        while let Some(r) = set.join_next().await {
            match r.ok().flatten() {
                Some(s) => streams.push(s),
                None => failures += 1,
            }
        }
        let open_secs = t0.elapsed().as_secs_f64();
        let (conns, open) = big.connection_load("node-1").unwrap_or((0, 0));
        let rss_open = rss_mib();
        // Every stream echoes its own 8 bytes while all of them are open.
        let mut set = tokio::task::JoinSet::new();
        for (i, mut s) in streams.into_iter().enumerate() {
            let permit = sem.clone().acquire_owned().await.unwrap();
            set.spawn(async move {
                let msg = (i as u64).to_be_bytes();
                let ok = tokio::time::timeout(Duration::from_secs(60), async {
                    s.write_all(&msg).await?;
                    let mut back = [0u8; 8];
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(back == msg)
                })
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(false);
                drop(permit);
                (ok, s)
            });
        }
        let mut kept = Vec::new();
        while let Some(r) = set.join_next().await {
            let (ok, s) = r.unwrap();
            if !ok {
                failures += 1;
            }
            kept.push(s);
        }
        let total_secs = t0.elapsed().as_secs_f64();
        drop(kept);
        out(format!(
            "| {streams_30k} concurrent streams to one node, each echo-verified | {failures} failures; {conns} connections, {open} channels open; opened in {open_secs:.1} s, verified by {total_secs:.1} s; RSS {rss_before:.0} → {rss_open:.0} MiB | sshd aborts a connection at 16,384 channels | |"
        ));
        big.shutdown_within(Duration::from_secs(5)).await;
    }

    if !o.smoke && o.only.is_empty() {
        let date = String::from_utf8_lossy(
            &Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%d")
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let mut md = format!(
            "# Benchmarks\n\n`cargo bench --bench tunnel` — {date}, {} cores ({cpu}). OpenSSH `ssh -N -L` \
             (same cipher, kex curve25519) against the same loopback sshd and destination, alternating \
             rounds ({rounds}), medians. Throughput: {} MiB per measurement (split across the streams). \
             Client-side CPU includes the benchmark's own generator and sink in both columns (plus the \
             `ssh` process in the OpenSSH column). The chacha20 rows use a second sshd that offers only \
             chacha20-poly1305. Generated by the benchmark; do not edit by hand.\n\n\
             | what | kube-ssh-tunnel | OpenSSH | ratio |\n|---|---|---|---|\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            total >> 20
        );
        for l in &lines {
            md.push_str(l);
            md.push('\n');
        }
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"), md).unwrap();
        println!("wrote BENCHMARKS.md");
    }
}
