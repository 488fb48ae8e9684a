//! Side-by-side benchmark: our pool against OpenSSH's `ssh -L` on the same real sshd, same
//! cipher, same destination, alternating rounds. Prints medians and ratios and writes
//! BENCHMARKS.md. Not a test: it asserts nothing about speed.
//!
//!   cargo bench --bench tunnel                 # full (a few minutes)
//!   cargo bench --bench tunnel -- --smoke      # tiny sizes, for CI
//!   cargo bench --bench tunnel -- --nodes 1000 # idle-connection memory with 1,000 nodes

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
    cipher: String,
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
        cipher: get("--cipher").unwrap_or_else(|| "aes128-gcm@openssh.com".into()),
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

async fn upload<S: tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    total: u64,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
) -> f64 {
    let buf = vec![0x5au8; 64 * 1024];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&buf).await.unwrap();
        sent += buf.len() as u64;
    }
    s.shutdown().await.unwrap();
    // Other (empty) connections, like ssh -L's readiness probe, report too: wait for ours.
    loop {
        let got = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await
            .expect("sink report")
            .unwrap();
        if got == sent {
            break;
        }
        assert_eq!(got, 0, "a stream lost bytes");
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = opts();
    let (rounds, total, seq_n, conc_n) = if o.smoke {
        (1, 16u64 << 20, 50, 64)
    } else {
        (3, 1u64 << 30, 2000, 2000)
    };
    let cluster = support::Cluster::start(1);
    let node = &cluster.nodes[0];
    // The pod address of the node is allowed any port by its sshd: our servers live there.
    let (sink, echo, mut rx) = servers(node.pod_addr).await;
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
    // First, from a clean baseline: N idle node connections (all to the one sshd).
    node.add_sshd_config("MaxStartups 2000:30:4000");
    node.restart_sshd();
    // 5. N idle node connections (all to the one sshd): cold start and memory per connection.
    let n = if o.smoke { 10 } else { o.nodes };
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
    let per = (rss_mib() - rss0) * 1024.0 / n as f64;
    out(format!(
        "| {n} node connections: ready from cold | {ready}/{n} in {secs:.1} s, {cpu:.1} CPU-s | | |"
    ));
    out(format!(
        "| idle memory per node connection | {per:.0} KiB | ssh: ~8 MB per client process | |"
    ));
    many.shutdown_within(Duration::from_secs(1)).await;

    let mut cfg = PoolConfig::new(settings.clone());
    cfg.health.probe = Probe::None;
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let mut st = pool.subscribe("node-1").unwrap();
    st.wait_for(|s| s.state == TunnelState::Ready)
        .await
        .unwrap();
    let sink_dest: Destination = sink.to_string().parse().unwrap();
    let echo_dest: Destination = echo.to_string().parse().unwrap();

    // 1. One-stream upload throughput and client-side CPU per GB (both include our own
    //    generator and sink, which are the same in both runs; `ssh`'s CPU is added to ours).
    let (mut ours_t, mut ssh_t, mut ours_cpu, mut ssh_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let c0 = cpu_of(me);
        let s = pool.dial(&sink_dest).await.unwrap();
        let secs = upload(s, total, &mut rx).await;
        ours_t.push(total as f64 / secs / 1e9 * 8.0);
        ours_cpu.push((cpu_of(me) - c0) / (total as f64 / 1e9));
        let l = ssh_l(&cluster, node, sink, &o.cipher);
        let (c0, s0) = (cpu_of(me), cpu_of(l.child.id()));
        let s = TcpStream::connect(("127.0.0.1", l.local)).await.unwrap();
        s.set_nodelay(true).unwrap();
        let secs = upload(s, total, &mut rx).await;
        ssh_t.push(total as f64 / secs / 1e9 * 8.0);
        ssh_cpu.push((cpu_of(me) - c0 + cpu_of(l.child.id()) - s0) / (total as f64 / 1e9));
    }
    let (a, b) = (median(&mut ours_t), median(&mut ssh_t));
    out(format!(
        "| one stream upload, {} | {a:.2} Gbit/s | {b:.2} Gbit/s | {:.2}× |",
        o.cipher,
        a / b
    ));
    let (a, b) = (median(&mut ours_cpu), median(&mut ssh_cpu));
    out(format!(
        "| client-side CPU per GB (lower is better) | {a:.2} s | {b:.2} s | {:.2}× |",
        a / b
    ));

    // 2. New channel + 1-byte round trip + close, sequential: p50 / p99.
    let l = ssh_l(&cluster, node, echo, &o.cipher);
    let (mut ours, mut theirs) = (vec![], vec![]);
    for i in 0..seq_n * 2 {
        let t0 = Instant::now();
        if i % 2 == 0 {
            echo_once(pool.dial(&echo_dest).await.unwrap()).await;
            ours.push(t0.elapsed().as_secs_f64() * 1e6);
        } else {
            let s = TcpStream::connect(("127.0.0.1", l.local)).await.unwrap();
            s.set_nodelay(true).unwrap();
            echo_once(s).await;
            theirs.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
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

    // 3. Dials per second, 64 in flight.
    let pool = Arc::new(pool);
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc_n {
        let (p, d, s) = (
            pool.clone(),
            echo_dest.clone(),
            sem.clone().acquire_owned().await.unwrap(),
        );
        set.spawn(async move {
            echo_once(p.dial(&d).await.unwrap()).await;
            drop(s);
        });
    }
    while set.join_next().await.is_some() {}
    let ours_rate = conc_n as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc_n {
        let (port, s) = (l.local, sem.clone().acquire_owned().await.unwrap());
        set.spawn(async move {
            let c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            echo_once(c).await;
            drop(s);
        });
    }
    while set.join_next().await.is_some() {}
    let ssh_rate = conc_n as f64 / t0.elapsed().as_secs_f64();
    out(format!(
        "| dials per second, 64 in flight | {ours_rate:.0} | {ssh_rate:.0} | {:.2}× |",
        ours_rate / ssh_rate
    ));
    drop(l);

    // 4. RSS after 10,000 channels opened and closed.
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

    if !o.smoke {
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
            "# Benchmarks\n\n`cargo bench --bench tunnel` — {date}, {} cores ({cpu}), OpenSSH `ssh -N -L` \
             (cipher {}, kex curve25519) against the same loopback sshd, alternating rounds ({rounds}), \
             medians. Client-side CPU includes the benchmark's own generator and sink in both columns \
             (plus the `ssh` process in the OpenSSH column). Generated by the benchmark; do not edit by hand.\n\n\
             | what | kube-ssh-tunnel | OpenSSH | ratio |\n|---|---|---|---|\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            o.cipher
        );
        for l in &lines {
            md.push_str(l);
            md.push('\n');
        }
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"), md).unwrap();
        println!("wrote BENCHMARKS.md");
    }
}
