//! Side-by-side benchmark: our pool against OpenSSH's `ssh -L` on the same real sshd, same
//! cipher, same destination, alternating rounds. Prints medians and ratios and writes
//! BENCHMARKS.md. Not a test: it asserts nothing about speed.
//!
//!   cargo bench --bench tunnel                 # full (a few minutes)
//!   cargo bench --bench tunnel -- --smoke      # tiny sizes, for CI
//!   cargo bench --bench tunnel -- --nodes 1000 # idle-connection memory with 1,000 nodes
//!   cargo bench --bench tunnel -- --only scale --scale-nodes 5000 # a daemon and 5,000 nodes
//!   cargo bench --bench tunnel -- --soak 1200  # faults together for 20 min (soak/mod.rs)
//!   cargo bench --bench tunnel -- --only reverse # reverse vs forward, 1,000 reverse nodes (reverse/mod.rs)
//!   cargo bench --bench tunnel -- --only dial  # CPU per dial of the `run` binary vs `ssh -L` (dial/mod.rs)
//!
//! Measured: upload and download throughput and client CPU per GB (1 and 8 streams,
//! aes128-gcm and chacha20, uploads also through the CONNECT front), new-channel latency
//! (sequential, 64 in flight, under a bulk upload and under a bulk download), dials per
//! second, RSS across 10,000 channels, a slow reader (~100 KB/s) beside new channels and an
//! older echo stream (failures, latency, RSS growth, spill use), N idle node connections
//! (memory, cold start), and 30,000 concurrent echo-verified streams to one node.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "scale/mod.rs"]
mod scale;

#[path = "scale/alloc.rs"]
mod alloc;

#[path = "check/mod.rs"]
mod check;

#[path = "soak/mod.rs"]
mod soak;

#[path = "reverse/mod.rs"]
mod reverse;

#[path = "dial/mod.rs"]
mod dial;

// The same malloc settings as the `run` binary, for the rows that run our pool in this process.
#[path = "../src/cli/allocator.rs"]
mod allocator;

/// In BENCHMARKS.md, what follows this line is not written by a full run and is kept by it.
const KEPT_MARKER: &str = "<!-- kept: sections below come from other runs -->";

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

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
    /// Nodes of the scale section (in-process SSH nodes in a helper process).
    scale_nodes: usize,
    /// Set in the helper process: serve this many nodes.
    serve_nodes: Option<usize>,
    /// Set in the watch-only helper: the kubeconfig and how many nodes to expect.
    watch_only: Option<(String, usize)>,
    /// Only these sections (comma-separated: idle, throughput, download, latency, dials
    /// (64 in flight), bulk, rss, slowreader, streams, scale, dial (CPU per dial of the `run`
    /// binary), watch, reverse); all when empty. BENCHMARKS.md is written only by a full run.
    only: Vec<String>,
    /// `--soak [SECS]`: only the soak, for SECS seconds (default 1200).
    soak: Option<u64>,
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
        scale_nodes: get("--scale-nodes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000),
        serve_nodes: get("--serve-nodes").and_then(|v| v.parse().ok()),
        watch_only: get("--watch-only").zip(get("--expect").and_then(|v| v.parse().ok())),
        only: get("--only")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        soak: args
            .iter()
            .any(|a| a == "--soak")
            .then(|| get("--soak").and_then(|v| v.parse().ok()).unwrap_or(1200)),
    }
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
    tokio::sync::mpsc::UnboundedReceiver<(u64, [u8; 32])>,
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
                let mut hash = check::Hasher::new();
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    hash.update(&buf[..k]);
                    n += k as u64;
                }
                let _ = tx.send((n, hash.finish()));
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
    /// The local port of the first forward.
    local: u16,
    /// The local port of each forward, in the order of the targets.
    locals: Vec<u16>,
}

impl Drop for SshL {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_l(c: &support::Cluster, n: &support::TestNode, target: SocketAddr, cipher: &str) -> SshL {
    ssh_l_many(c, n, &[target], cipher)
}

/// One `ssh -N` process (one SSH connection) with a `-L` forward per target.
fn ssh_l_many(
    c: &support::Cluster,
    n: &support::TestNode,
    targets: &[SocketAddr],
    cipher: &str,
) -> SshL {
    let locals: Vec<u16> = targets
        .iter()
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let mut cmd = Command::new("ssh");
    cmd.args([
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
    .args(["-p", &n.ssh_port.to_string()]);
    for (local, target) in locals.iter().zip(targets) {
        cmd.args(["-L", &format!("127.0.0.1:{local}:{target}")]);
    }
    let child = cmd
        .arg(format!("{}@{}", c.user, n.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh");
    let l = SshL {
        child,
        local: locals[0],
        locals,
    };
    assert!(support::wait_until(Duration::from_secs(10), || {
        l.locals
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
    }));
    l
}

/// Writes `total` bytes on each stream at once and waits until the sink has counted every
/// byte of every stream; returns the wall time.
async fn upload_all<S: tokio::io::AsyncWrite + Unpin + Send + 'static>(
    streams: Vec<S>,
    total: u64,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, [u8; 32])>,
) -> f64 {
    let n = streams.len();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            let mut buf = vec![0x5au8; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                check::fill(&mut buf, sent, 0x5a);
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
        let (got, hash) = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .expect("sink report")
            .unwrap();
        if got == 0 {
            continue;
        }
        assert!(sent.contains(&got), "a stream lost bytes: {got}");
        check::expect(hash == check::expected_hash(got), || {
            format!("an upload of {got} bytes arrived with other bytes than were sent")
        });
        done += 1;
    }
    t0.elapsed().as_secs_f64()
}

/// One byte there and back, within 10 s; the stream stays open.
async fn echo_byte<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .expect("an echo within 10 s")
        .expect("the echo");
    assert_eq!(&b, b"x");
}

/// One byte there and back (within 10 s), then close.
async fn echo_once<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    echo_byte(&mut s).await;
    let _ = s.shutdown().await;
}

/// The median, the lowest and the highest of `v` (not empty).
fn med_range(v: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn rss_mib() -> f64 {
    support::rss_bytes() as f64 / (1 << 20) as f64
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
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, [u8; 32])>,
) -> (f64, f64) {
    let me = std::process::id();
    let (c0, s0) = (
        support::cpu_seconds_of(me),
        support::cpu_seconds_of(ssh.child.id()),
    );
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
    let cpu = support::cpu_seconds_of(me) - c0
        + if side == Side::Ssh {
            support::cpu_seconds_of(ssh.child.id()) - s0
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

/// A source: each connection sends an 8-byte big-endian length; the source writes that many
/// bytes and closes. (A connection that sends no length, like ssh -L's readiness probe, is
/// closed at once; one that closes early ends its writer.)
async fn source_server(addr: std::net::Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(total) = s.read_u64().await else {
                    return;
                };
                let mut buf = vec![0xa5u8; 256 * 1024];
                let mut left = total;
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    check::fill(&mut buf[..k], total - left, 0xa5);
                    if s.write_all(&buf[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// A byte stream either side gives us: a pool stream or a TCP connection to `ssh -L`.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A stream to `dest` through the pool (`ours`) or through `ssh -L`'s local `port`.
async fn open(
    ours: bool,
    pool: &Pool,
    dest: SocketAddr,
    port: u16,
) -> std::io::Result<Box<dyn Io>> {
    if ours {
        let d: Destination = dest.to_string().parse().unwrap();
        match pool.dial(&d).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    } else {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
}

/// Asks the source for `total` bytes and reads them with 64 KiB reads; the bytes read.
async fn read_all_counted(s: &mut Box<dyn Io>, total: u64) -> std::io::Result<(u64, [u8; 32])> {
    s.write_all(&total.to_be_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    let mut hash = check::Hasher::new();
    // Bounded: every pass reads at least one byte of at most `total` (or ends).
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            return Ok((n, hash.finish()));
        }
        hash.update(&buf[..k]);
        n += k as u64;
    }
}

/// Downloads `total` bytes on each stream at once, asserts every byte arrived; the wall time.
async fn download_all(streams: Vec<Box<dyn Io>>, total: u64) -> f64 {
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            tokio::time::timeout(Duration::from_secs(300), read_all_counted(&mut s, total))
                .await
                .expect("download within 300 s")
                .expect("download")
        });
    }
    let expected = check::expected_hash(total);
    while let Some(r) = set.join_next().await {
        let (got, hash) = r.unwrap();
        assert_eq!(got, total, "a download lost bytes");
        check::expect(hash == expected, || {
            format!("a download of {total} bytes arrived with other bytes than were sent")
        });
    }
    t0.elapsed().as_secs_f64()
}

/// One download comparison: `streams` concurrent downloads of `total` bytes each from the
/// source through the pool or `ssh -L`; returns (Gbit/s, client CPU seconds per GB, and for
/// ours the channels open on the node's supervised connection once all are dialed).
#[allow(clippy::too_many_arguments)]
async fn download(
    ours: bool,
    streams: usize,
    total: u64,
    pool: &Pool,
    ssh: &SshL,
    source: SocketAddr,
    front: Option<&std::path::Path>,
) -> (f64, f64, usize) {
    let me = std::process::id();
    let (c0, s0) = (
        support::cpu_seconds_of(me),
        support::cpu_seconds_of(ssh.child.id()),
    );
    let mut v: Vec<Box<dyn Io>> = Vec::new();
    for _ in 0..streams {
        match front {
            // Ours through the CONNECT front: the reader sits behind a Unix socket, as the
            // ssh side's reader sits behind ssh -L's TCP socket.
            Some(sock) if ours => {
                let (s, head) = connect_front(sock, &source.to_string()).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                v.push(Box::new(s));
            }
            _ => v.push(open(ours, pool, source, ssh.local).await.expect("dial")),
        }
    }
    let on_main = match (ours, pool.nodes().first()) {
        (true, Some(n)) => pool.tunnel(&n.name).map_or(0, |t| t.open_channels()),
        _ => 0,
    };
    let secs = download_all(v, total).await;
    let cpu = support::cpu_seconds_of(me) - c0
        + if ours {
            0.0
        } else {
            support::cpu_seconds_of(ssh.child.id()) - s0
        };
    let bytes = total as f64 * streams as f64;
    (bytes / secs / 1e9 * 8.0, cpu / (bytes / 1e9), on_main)
}

/// New channel + 1-byte echo + close that may fail: µs, or None on an error or after 10 s.
async fn try_echo_op(ours: bool, pool: &Pool, echo: SocketAddr, port: u16) -> Option<f64> {
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = open(ours, pool, echo, port).await?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        let _ = s.shutdown().await;
        Ok::<_, std::io::Error>(b[0] == b'x')
    })
    .await;
    match r {
        Ok(Ok(true)) => Some(t0.elapsed().as_secs_f64() * 1e6),
        _ => None,
    }
}

/// p50 and p99 (NaN when there is no sample).
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (pct(v, 0.5), pct(v, 0.99))
}

/// Resident set size of another process in MiB (0 when gone).
fn rss_of_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// What one side's slow-reader run saw.
#[derive(Default)]
struct SlowRun {
    /// New channel + echo latencies that succeeded (µs) and the failures.
    ops: Vec<f64>,
    failures: usize,
    /// Message round trips on the stream opened before the slow reader (µs), those above
    /// 1 s, and whether it failed (error or no answer within 10 s: it stops there).
    rtt: Vec<f64>,
    rtt_over_1s: usize,
    rtt_failed: bool,
    /// Bytes the slow reader read.
    slow_read: u64,
    /// RSS (MiB) before the slow reader and at the end: this process (ours) or `ssh`.
    rss_before: f64,
    rss_after: f64,
    /// Ours: peaks of buffered and spilled bytes, streams that spilled, connections and
    /// congested connections of the node.
    buffered_peak: i64,
    spilled_peak: i64,
    spilled_streams: u64,
    conns_peak: usize,
    congested_peak: usize,
}

/// One stream reads a (practically endless) source at ~100 KB/s while an echo stream opened
/// before it measures message round trips every 10 ms and `echoes` sequential new channel +
/// echo run to the same node, through the pool or through one `ssh -L` process
/// (`ports`: its local ports for the source and the echo).
#[allow(clippy::too_many_arguments)]
async fn slow_reader_run(
    ours: bool,
    pool: &Arc<Pool>,
    node_name: &str,
    ssh: &SshL,
    source: SocketAddr,
    echo: SocketAddr,
    slow_total: u64,
    echoes: usize,
    rtt_for: Duration,
) -> SlowRun {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (src_port, echo_port) = (ssh.locals[0], ssh.locals[1]);
    let mut run = SlowRun {
        rss_before: if ours {
            rss_mib()
        } else {
            rss_of_mib(ssh.child.id())
        },
        ..Default::default()
    };
    // The echo stream first, then the slow reader.
    let mut es = open(ours, pool, echo, echo_port)
        .await
        .expect("echo stream");
    let mut slow = open(ours, pool, source, src_port)
        .await
        .expect("slow stream");
    slow.write_all(&slow_total.to_be_bytes())
        .await
        .expect("slow request");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 10 * 1024];
            let mut got = 0u64;
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            'outer: while !stop.load(Ordering::Relaxed)
                && got < slow_total
                && Instant::now() < deadline
            {
                tick.tick().await;
                let mut filled = 0;
                while filled < buf.len() {
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        slow.read(&mut buf[filled..]),
                    )
                    .await
                    {
                        Ok(Ok(k)) if k > 0 => filled += k,
                        _ => {
                            got += filled as u64;
                            break 'outer;
                        }
                    }
                }
                got += filled as u64;
            }
            (got, slow)
        })
    };
    let rtt_task = tokio::spawn(async move {
        let (mut rtt, mut failed) = (Vec::new(), false);
        let end = Instant::now() + rtt_for;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..rtt_for.as_millis() / 10 + 1 {
            tick.tick().await;
            if Instant::now() >= end {
                break;
            }
            let t0 = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                es.write_all(b"r").await?;
                let mut b = [0u8; 1];
                es.read_exact(&mut b).await?;
                Ok::<_, std::io::Error>(b[0])
            })
            .await;
            match r {
                Ok(Ok(b'r')) => rtt.push(t0.elapsed().as_secs_f64() * 1e6),
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        (rtt, failed, es)
    });
    // Ours: buffered / spilled bytes and connections, sampled every 50 ms.
    let sampler = {
        let (stop, pool, name) = (stop.clone(), pool.clone(), node_name.to_string());
        tokio::spawn(async move {
            let link = pool.metrics().link(&name);
            let mut peaks = (0i64, 0i64, 0usize, 0usize);
            for _ in 0..900 * 20 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                peaks.0 = peaks.0.max(link.buffered.get());
                peaks.1 = peaks.1.max(link.spilled.get());
                peaks.2 = peaks.2.max(pool.connection_load(&name).map_or(0, |l| l.0));
                peaks.3 = peaks.3.max(pool.congested_connections(&name).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (peaks, link.spilled_streams.get())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..echoes {
        match try_echo_op(ours, pool, echo, echo_port).await {
            Some(us) => run.ops.push(us),
            None => run.failures += 1,
        }
    }
    let (rtt, failed, es) = rtt_task.await.unwrap();
    run.rtt_over_1s = rtt.iter().filter(|&&us| us > 1e6).count();
    (run.rtt, run.rtt_failed) = (rtt, failed);
    run.rss_after = if ours {
        rss_mib()
    } else {
        rss_of_mib(ssh.child.id())
    };
    stop.store(true, Ordering::Relaxed);
    let (got, slow) = reader.await.unwrap();
    run.slow_read = got;
    let ((b, sp, c, cg), streams) = sampler.await.unwrap();
    if ours {
        (
            run.buffered_peak,
            run.spilled_peak,
            run.conns_peak,
            run.congested_peak,
        ) = (b, sp, c, cg);
        run.spilled_streams = streams;
    }
    drop(slow);
    drop(es);
    run
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

fn main() {
    // Before the runtime starts its threads (mallopt is not safe beside them).
    allocator::tune();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the benchmark's runtime")
        .block_on(bench());
}

async fn bench() {
    let o = opts();
    // Helper mode: this binary started again to serve the scale section's nodes.
    if let Some(n) = o.serve_nodes {
        scale::serve_nodes(n).await;
        return;
    }
    // Helper mode: only the Node watch, against a stand-in API server's kubeconfig.
    if let Some((kubeconfig, n)) = &o.watch_only {
        scale::watch_only(kubeconfig, *n, alloc::live).await;
        return;
    }
    if let Some(secs) = o.soak {
        soak::run(secs).await;
        return;
    }
    if o.smoke {
        check::verify_content();
    }
    // sshd and the stubs inherit this: 8,192 channels per sshd connection need the sockets.
    support::raise_fd_limit();
    let (rounds, total, seq_n, conc_n, streams_30k) = if o.smoke {
        (1, 16u64 << 20, 50, 64, 300)
    } else {
        (5, 1u64 << 30, 2000, 2000, 30_000)
    };
    // The slow-reader row: the source's size and the new channels beside it.
    let (slow_total, echoes): (u64, usize) = if o.smoke {
        (16 << 20, 50)
    } else {
        (1 << 30, 1000)
    };
    let cluster = support::Cluster::start(2);
    let (node, node2) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Each node's pod address may be reached on any port through its sshd: our sink and
    // echo servers live there.
    let (sink, echo, mut rx) = servers(node.pod_addr).await;
    let (sink2, _, mut rx2) = servers(node2.pod_addr).await;
    let (source, source2) = (
        source_server(node.pod_addr).await,
        source_server(node2.pod_addr).await,
    );
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
    let (c0, t0) = (support::cpu_seconds_of(me), Instant::now());
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
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), support::cpu_seconds_of(me) - c0);
    check::expect(ready == n, || format!("idle nodes: {ready}/{n} ready"));
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

    if o.runs("download") {
        // 2b. Downloads: the source on the pod address writes, we read with 64 KiB reads.
        //     Same streams, ciphers, rounds and CPU accounting as the uploads.
        let l_aes = ssh_l(&cluster, node, source, aes);
        let l_chacha = ssh_l(&cluster, node2, source2, chacha);
        for (label, cipher, streams, via_front) in [
            ("one stream", aes, 1, false),
            ("8 streams, one connection", aes, 8, false),
            ("one stream through the CONNECT front", aes, 1, true),
            ("8 streams through the CONNECT front", aes, 8, true),
            ("one stream", chacha, 1, false),
            ("8 streams, one connection", chacha, 8, false),
        ] {
            let front = via_front.then_some(front_sock.as_path());
            let (p, l, src, name) = if cipher == aes {
                (&*pool, &l_aes, source, &node.name)
            } else {
                (&pool2, &l_chacha, source2, &node2.name)
            };
            let per_stream = total / streams as u64;
            let (mut ot, mut oc, mut st, mut sc) = (vec![], vec![], vec![], vec![]);
            let mut on_main = vec![];
            for _ in 0..rounds {
                let (t, c, m) = download(true, streams, per_stream, p, l, src, front).await;
                ot.push(t);
                oc.push(c);
                on_main.push(m);
                let (t, c, _) = download(false, streams, per_stream, p, l, src, front).await;
                st.push(t);
                sc.push(c);
            }
            let short = cipher.split('@').next().unwrap_or(cipher);
            println!(
                "  (download, {label}, {short}: ours had {on_main:?} channels open on the node's supervised connection per round; the node has {:?} (connections, open channels), {:?} congested)",
                p.connection_load(name),
                p.congested_connections(name)
            );
            let (a, b) = (median(&mut ot), median(&mut st));
            out(format!(
                "| download, {label}, {short} | {a:.2} Gbit/s | {b:.2} Gbit/s | {:.2}× |",
                a / b
            ));
            let (a, b) = (median(&mut oc), median(&mut sc));
            out(format!(
                "| client CPU per GB, download, {label}, {short} (lower is better) | {a:.2} s | {b:.2} s | {:.2}× |",
                a / b
            ));
        }
    }

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
        // 5. New-channel latency while a bulk upload, then a bulk download, runs to the same
        //    node (head-of-line). The OpenSSH column runs the bulk stream and the echoes
        //    through one `ssh -L` process (one connection); ours may put new dials on an
        //    extra connection when the node's connection is congested.
        let l_bulk = ssh_l_many(&cluster, node, &[sink, echo, source], aes);
        let (bulk_sink, bulk_echo, bulk_source) =
            (l_bulk.locals[0], l_bulk.locals[1], l_bulk.locals[2]);
        for upload in [true, false] {
            let mut under = [vec![], vec![]];
            for (k, ours) in [true, false].into_iter().enumerate() {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let bulk_task = if upload {
                    let bulk: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if ours {
                        Box::new(pool.dial(&sink.to_string().parse().unwrap()).await.unwrap())
                    } else {
                        let s = TcpStream::connect(("127.0.0.1", bulk_sink)).await.unwrap();
                        s.set_nodelay(true).unwrap();
                        Box::new(s)
                    };
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut bulk = bulk;
                        let buf = vec![0x5au8; 64 * 1024];
                        let mut sent = 0u64;
                        let deadline = Instant::now() + Duration::from_secs(300);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed)
                            && Instant::now() < deadline
                        {
                            bulk.write_all(&buf).await.unwrap();
                            sent += buf.len() as u64;
                        }
                        bulk.shutdown().await.unwrap();
                        sent
                    })
                } else {
                    // A download the echoes cannot outlast (bounded: 64 GiB, or 300 s).
                    let mut bulk = open(ours, &pool, source, bulk_source).await.unwrap();
                    bulk.write_all(&(64u64 << 30).to_be_bytes()).await.unwrap();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut got = 0u64;
                        let deadline = Instant::now() + Duration::from_secs(300);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed)
                            && Instant::now() < deadline
                        {
                            let r =
                                tokio::time::timeout(Duration::from_secs(10), bulk.read(&mut buf));
                            match r.await {
                                Ok(Ok(k)) if k > 0 => got += k as u64,
                                r => {
                                    check::expect(false, || {
                                        format!(
                                            "a bulk download ended early after {got} bytes: {r:?}"
                                        )
                                    });
                                    break;
                                }
                            }
                        }
                        got
                    })
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                let t0 = Instant::now();
                for _ in 0..seq_n / 4 {
                    under[k].push(echo_op(ours, &pool, &echo_dest, bulk_echo).await);
                }
                let secs = t0.elapsed().as_secs_f64();
                let congested = pool.congested_connections(&node.name);
                let load = pool.connection_load(&node.name);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let moved = bulk_task.await.unwrap();
                if upload {
                    loop {
                        let (got, _) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                            .await
                            .unwrap()
                            .unwrap();
                        if got == moved {
                            break;
                        }
                    }
                }
                println!(
                    "  (bulk {}, {}: {} MiB moved, echoes took {secs:.1} s; our node: {load:?} (connections, open channels), {congested:?} congested)",
                    if upload { "upload" } else { "download" },
                    if ours { "ours" } else { "ssh" },
                    moved >> 20
                );
            }
            let [mut ua, mut ub] = under;
            out(format!(
                "| new channel + echo under a bulk {} to the same node, p50 / p99 | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2}× / {:.2}× |",
                if upload { "upload" } else { "download" },
                pct(&mut ua, 0.5),
                pct(&mut ua, 0.99),
                pct(&mut ub, 0.5),
                pct(&mut ub, 0.99),
                pct(&mut ua, 0.5) / pct(&mut ub, 0.5),
                pct(&mut ua, 0.99) / pct(&mut ub, 0.99)
            ));
        }
        drop(l_bulk);
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

    if o.runs("slowreader") {
        // 8. A slow reader: one stream reads a 1 GiB source at ~100 KB/s (10 KiB every
        //    100 ms). An echo stream opened before it sends 1 byte every 10 ms; after a 3 s
        //    head start, sequential new channel + echo run to the same node. OpenSSH: the
        //    slow stream, the echo stream and the echoes go through one `ssh -L` process.
        let rtt_for = Duration::from_secs(if o.smoke { 5 } else { 30 });
        let budget = settings.channel.budget.memory_limit() as f64 / (1 << 20) as f64;
        // A fresh pool: its connection count and buffer gauges are this row's alone.
        let slow_pool = Arc::new(ready_pool(&settings, vec![node.node()], 8192).await);
        let l_slow = ssh_l_many(&cluster, node, &[source, echo], aes);
        let mut runs = Vec::new();
        for ours in [true, false] {
            let r = slow_reader_run(
                ours, &slow_pool, &node.name, &l_slow, source, echo, slow_total, echoes, rtt_for,
            )
            .await;
            if ours {
                check::expect(r.failures == 0 && !r.rtt_failed && r.slow_read > 0, || {
                    format!(
                        "slow reader, ours: {} new channels failed, echo stream failed: {}, {} bytes read",
                        r.failures, r.rtt_failed, r.slow_read
                    )
                });
                println!(
                    "  (slow reader, ours: read {} KiB; {} echoes failed; echo stream {}; buffered peak {:.1} MiB, spilled peak {:.1} MiB, {} spilled streams, connections peak {}, congested peak {})",
                    r.slow_read >> 10,
                    r.failures,
                    if r.rtt_failed { "FAILED" } else { "ok" },
                    r.buffered_peak as f64 / (1 << 20) as f64,
                    r.spilled_peak as f64 / (1 << 20) as f64,
                    r.spilled_streams,
                    r.conns_peak,
                    r.congested_peak
                );
            } else {
                println!(
                    "  (slow reader, ssh: read {} KiB; {} echoes failed; echo stream {})",
                    r.slow_read >> 10,
                    r.failures,
                    if r.rtt_failed { "FAILED" } else { "ok" },
                );
            }
            runs.push(r);
        }
        drop(l_slow);
        slow_pool.shutdown_within(Duration::from_secs(5)).await;
        let (mut a, mut b) = (runs.remove(0), runs.remove(0));
        let ((a50, a99), (b50, b99)) = (p50_p99(&mut a.ops), p50_p99(&mut b.ops));
        out(format!(
            "| {echoes} sequential new channel + echo beside a slow reader (100 KB/s), failures; p50 / p99 | {} failures; {a50:.0} / {a99:.0} µs | {} failures; {b50:.0} / {b99:.0} µs | {:.2}× / {:.2}× |",
            a.failures,
            b.failures,
            a50 / b50,
            a99 / b99
        ));
        let ((a50, a99), (b50, b99)) = (p50_p99(&mut a.rtt), p50_p99(&mut b.rtt));
        let note = |r: &SlowRun| {
            format!(
                "{} RTTs > 1 s{}",
                r.rtt_over_1s,
                if r.rtt_failed { ", stream failed" } else { "" }
            )
        };
        out(format!(
            "| echo stream opened before the slow reader, 1 byte every 10 ms for {} s: RTT p50 / p99 | {a50:.0} / {a99:.0} µs ({}) | {b50:.0} / {b99:.0} µs ({}) | {:.2}× / {:.2}× |",
            rtt_for.as_secs(),
            note(&a),
            note(&b),
            a50 / b50,
            a99 / b99
        ));
        out(format!(
            "| RSS growth with a slow reader ({} MiB source) | {:.1} → {:.1} MiB (daemon; memory budget {budget:.0} MiB; peaks: {:.1} MiB buffered, {:.0} MiB spilled to disk; {} connection(s), {} congested) | {:.1} → {:.1} MiB (`ssh` process) | |",
            slow_total >> 20,
            a.rss_before,
            a.rss_after,
            a.buffered_peak as f64 / (1 << 20) as f64,
            a.spilled_peak as f64 / (1 << 20) as f64,
            a.conns_peak,
            a.congested_peak,
            b.rss_before,
            b.rss_after
        ));
    }

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
        check::expect(failures == 0 && kept.len() == streams_30k, || {
            format!(
                "{streams_30k} concurrent streams: {failures} failures, {} opened",
                kept.len()
            )
        });
        drop(kept);
        out(format!(
            "| {streams_30k} concurrent streams to one node, each echo-verified | {failures} failures; {conns} connections, {open} channels open; opened in {open_secs:.1} s, verified by {total_secs:.1} s; RSS {rss_before:.0} → {rss_open:.0} MiB | sshd aborts a connection at 16,384 channels | |"
        ));
        big.shutdown_within(Duration::from_secs(5)).await;
    }

    // The scale rows: a daemon process against thousands of in-process SSH nodes.
    if o.runs("scale") {
        let (n, idle) = if o.smoke {
            (50, Duration::from_secs(2))
        } else {
            (o.scale_nodes, Duration::from_secs(60))
        };
        for l in scale::rows(n, idle).await {
            out(l);
        }
    }
    // CPU per dial of the `run` binary (two runtime settings) beside `ssh -L`'s.
    if o.runs("dial") {
        for l in dial::run(o.smoke).await {
            out(l);
        }
    }
    // The Node watch at scale: realistic Node objects from a stand-in API server.
    if o.runs("watch") {
        let (n, window) = if o.smoke {
            (50, Duration::from_secs(2))
        } else {
            (o.scale_nodes, Duration::from_secs(60))
        };
        for l in scale::watch_rows(n, window).await {
            out(l);
        }
    }

    let problems = check::problems();
    if !problems.is_empty() {
        println!("bench: {} check(s) failed:", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        // A panic, not `process::exit`: unwinding drops the cluster, which stops its sshd
        // and stub processes by PID (exit would leave them running).
        assert!(
            !o.smoke,
            "bench: the smoke run failed {} check(s)",
            problems.len()
        );
    } else if o.smoke {
        println!(
            "bench: smoke run ok: every byte checked by SHA-256, every expected dial and node ready"
        );
    }

    if o.runs("reverse") {
        println!(
            "\n| reverse mode (same node, same daemon binary) | forward: the daemon dials sshd | reverse: the node's `ssh -N -R 0` | reverse ÷ forward |\n|---|---|---|---|"
        );
        for l in reverse::run(o.smoke).await {
            println!("{l}");
        }
    }

    if !o.smoke && o.only.is_empty() {
        let date = String::from_utf8_lossy(
            &support::run_bounded(
                Command::new("date").arg("-u").arg("+%Y-%m-%d"),
                b"",
                support::TOOL_LIMIT,
            )
            .unwrap()
            .stdout,
        )
        .trim()
        .to_string();
        let commit = String::from_utf8_lossy(
            &support::run_bounded(
                Command::new("git").current_dir(support::repo()).args([
                    "describe",
                    "--always",
                    "--dirty",
                    "--abbrev=7",
                ]),
                b"",
                support::TOOL_LIMIT,
            )
            .map(|o| o.stdout)
            .unwrap_or_default(),
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
            "# Benchmarks\n\n`cargo bench --bench tunnel` — {date}, commit {commit}, {} cores ({cpu}). OpenSSH `ssh -N -L` \
             (same cipher, kex curve25519) against the same loopback sshd and destination, alternating \
             rounds ({rounds}), medians. Throughput: {} MiB per measurement (split across the streams). \
             Client-side CPU includes the benchmark's own generator and sink in both columns (plus the \
             `ssh` process in the OpenSSH column). Downloads: a source on the pod address writes, the \
             client reads with 64 KiB reads. The chacha20 rows use a second sshd that offers only \
             chacha20-poly1305. Under a bulk transfer, the OpenSSH column runs the bulk stream and the \
             echoes through one `ssh -L` process (one connection); ours puts new dials on an extra \
             connection of the node while its connection is congested. Slow reader: one stream reads \
             a {slow_mib} MiB source at ~100 KB/s (10 KiB every 100 ms) while {echoes} new \
             channel + echo run after a 3 s head start, and an echo stream opened before the slow reader \
             sends 1 byte every 10 ms; a failure is an error or no answer within 10 s. Ours holds a slow \
             reader's data in memory up to 4 MiB per channel (within the pool's memory budget), then \
             in a spill file; `ssh` stops the sender with the channel window. Generated by the \
             benchmark; do not edit by hand.\n\n\
             | what | kube-ssh-tunnel | OpenSSH | ratio |\n|---|---|---|---|\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            total >> 20,
            slow_mib = slow_total >> 20,
        );
        for l in &lines {
            md.push_str(l);
            md.push('\n');
        }
        // The sections below the marker come from other runs (the soak, the shared side-by-side
        // tool): kept as they are.
        let path = support::repo().join("BENCHMARKS.md");
        if let Ok(old) = std::fs::read_to_string(&path)
            && let Some(at) = old.find(KEPT_MARKER)
        {
            md.push('\n');
            md.push_str(&old[at..]);
        }
        std::fs::write(path, md).unwrap();
        println!("wrote BENCHMARKS.md");
    }
}
