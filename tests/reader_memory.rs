//! Memory goes to readers that read, against a real sshd node through the library: streams
//! whose readers paused give their memory up (to their spill files, or, without spilling, by
//! being cut once they have not read for the stall timeout), the stall clock starts at the
//! first unread byte, and an upload that stalls stops counting as bulk.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::pool::backoff::BackoffPolicy;
use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::ssh::{BufferBudget, ChannelLimits};
use kube_ssh_tunnel::{Pool, SshSettings, TunnelStream};
use sha2::{Digest, Sha256};
use support::{Cluster, ECHO_PORT, dest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// The bytes every source sends: random, of an odd length, repeated; a lost or reordered
/// byte changes the hash.
struct Pattern(Arc<Vec<u8>>);

impl Pattern {
    fn new() -> Pattern {
        use rand::RngCore;
        let mut b = vec![0u8; (1 << 20) + 7];
        rand::rng().fill_bytes(&mut b);
        Pattern(Arc::new(b))
    }

    /// SHA-256 of the first `len` bytes.
    fn hash(&self, len: u64) -> Vec<u8> {
        let mut h = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(self.0.len() as u64) as usize;
            h.update(&self.0[..n]);
            left -= n as u64;
        }
        h.finalize().to_vec()
    }
}

/// A source on `addr`: each connection waits for `go` (when given), gets `len` bytes of the
/// pattern, then EOF unless `hold` (then it stays open until the other side closes).
async fn source(
    addr: std::net::Ipv4Addr,
    pattern: &Pattern,
    len: u64,
    hold: bool,
    go: Option<Arc<Notify>>,
) -> u16 {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let block = pattern.0.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (block, go) = (block.clone(), go.clone());
            tokio::spawn(async move {
                if let Some(go) = go {
                    go.notified().await;
                }
                let mut left = len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                if hold {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 {
                            break;
                        }
                    }
                } else {
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    port
}

fn settings(c: &Cluster) -> SshSettings {
    SshSettings::builder(c.user.clone())
        .key_file(&c.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&c.known_hosts)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .open_timeout(Duration::from_secs(5))
        .build()
}

/// A pool on node-1 with these channel limits, once the node is ready.
async fn pool_with(c: &Cluster, channel: ChannelLimits) -> Pool {
    let mut cfg = PoolConfig::new(settings(c));
    cfg.health.probe = Probe::None;
    cfg.backoff = BackoffPolicy {
        min: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    std::sync::Arc::make_mut(&mut cfg.ssh).channel = channel;
    let pool = Pool::with_config(cfg, c.node_list()).unwrap();
    let mut rx = pool.subscribe("node-1").unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.state == TunnelState::Ready),
    )
    .await
    .expect("node-1 ready within 20 s")
    .unwrap();
    pool
}

/// Reads `s` to its end (bounded by `limit`), `step` bytes at a time with `pause` between
/// reads; the byte count and SHA-256 of what came, and how it ended.
async fn read_all(
    mut s: TunnelStream,
    step: usize,
    pause: Duration,
    limit: Duration,
) -> (u64, Vec<u8>, std::io::Result<()>) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; step];
    let mut got = 0u64;
    let end = Instant::now() + limit;
    let result = loop {
        if Instant::now() > end {
            break Err(std::io::Error::other("the read did not end in time"));
        }
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Ok(Err(e)) => break Err(e),
            Err(_) => break Err(std::io::Error::other("no byte for 30 s")),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    };
    (got, h.finalize().to_vec(), result)
}

/// Opens `n` streams to `port` whose readers read 1000 bytes and then stop; returns them
/// with what was read, once the budget holds `held` bytes for them.
async fn paused_readers(
    pool: &Pool,
    node: &support::node::TestNode,
    port: u16,
    n: usize,
    budget: &BufferBudget,
    held: u64,
) -> Vec<(TunnelStream, Vec<u8>)> {
    let mut paused = Vec::new();
    for _ in 0..n {
        let mut s = pool.dial(&dest(node.pod_addr, port)).await.unwrap();
        let mut first = vec![0u8; 1000];
        s.read_exact(&mut first).await.unwrap();
        paused.push((s, first));
    }
    assert!(
        support::wait_until(Duration::from_secs(20), || budget.memory_used() >= held),
        "the paused readers' streams hold {held} bytes of memory: {}",
        budget.memory_used()
    );
    paused
}

/// The rest of a paused stream, read at full speed.
async fn resume(s: TunnelStream, first: Vec<u8>, len: u64) -> (u64, Vec<u8>, std::io::Result<()>) {
    let mut s = s;
    let mut h = Sha256::new();
    h.update(&first);
    let mut got = first.len() as u64;
    let mut buf = vec![0u8; 64 << 10];
    while got < len {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(0)) => return (got, h.finalize().to_vec(), Ok(())),
            Ok(Ok(n)) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Ok(Err(e)) => return (got, h.finalize().to_vec(), Err(e)),
            Err(_) => {
                return (
                    got,
                    h.finalize().to_vec(),
                    Err(std::io::Error::other("no byte for 30 s")),
                );
            }
        }
    }
    (got, h.finalize().to_vec(), Ok(()))
}

/// Finding 5, with spilling: two readers that read a little and stopped hold most of the
/// memory budget; a reader that reads, on the same connection, gets the memory: the paused
/// streams' bytes move to their spill files (oldest reader first), and when they read again
/// they get every byte, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_readers_give_their_memory_to_a_reader_that_reads_and_keep_every_byte() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    const HELD: u64 = 3 << 20;
    const BIG: u64 = 32 << 20;
    let held = source(node.pod_addr, &pattern, HELD, true, None).await;
    let big = source(node.pod_addr, &pattern, BIG, false, None).await;
    let budget = Arc::new(BufferBudget::new(
        7 << 20,
        Some(cluster.path().to_path_buf()),
        256 << 20,
    ));
    let pool = pool_with(
        &cluster,
        ChannelLimits {
            recv_buffer_max: 4 << 20,
            spill_max: 64 << 20,
            // Far above the test: no reader here is cut.
            stall_timeout: Duration::from_secs(600),
            budget: budget.clone(),
        },
    )
    .await;

    let paused = paused_readers(&pool, node, held, 2, &budget, 2 * (HELD - 1000)).await;
    assert_eq!(budget.spill_used(), 0, "nothing spilled yet");
    // The paused readers have not read for a while (a reader that read within the last
    // second counts as reading and keeps its memory).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The reader that reads: 64 KiB every 5 ms, slower than the source, so that it is
    // behind and needs memory; it shares the paused streams' connection.
    let active = pool.dial(&dest(node.pod_addr, big)).await.unwrap();
    assert_eq!(
        pool.connection_load("node-1"),
        Some((1, 3)),
        "one connection"
    );
    let (got, hash, end) = read_all(
        active,
        64 << 10,
        Duration::from_millis(5),
        Duration::from_secs(120),
    )
    .await;
    end.expect("the active reader reads to the end");
    assert_eq!(got, BIG, "every byte reaches the active reader");
    assert!(hash == pattern.hash(BIG), "intact");

    // The paused streams' bytes are in their spill files; memory holds at most one free
    // chunk (32 KiB) for each of them.
    let (mem, spill) = (budget.memory_used(), budget.spill_used());
    assert!(
        spill >= 2 * (HELD - 1000 - (32 << 10)) && mem <= 2 * (32 << 10),
        "the paused readers' memory moved to their spill files: memory {mem}, spill {spill}"
    );
    assert_eq!(pool.tunnel("node-1").unwrap().stalled_channels(), 0);

    // They read again: every byte, in order.
    for (s, first) in paused {
        let (got, hash, end) = resume(s, first, HELD).await;
        end.expect("a paused reader reads on without error");
        assert_eq!(got, HELD, "every byte reaches the paused reader");
        assert!(hash == pattern.hash(HELD), "intact, in order");
    }
}

/// Finding 5, without spilling: paused readers hold most of the budget; they keep their
/// streams while nobody needs the memory, but once a reader that reads needs it, those that
/// have not read for the stall timeout (counted from their first unread byte) are cut and
/// their memory freed. The reader that reads gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spilling_paused_readers_are_cut_when_a_reader_that_reads_needs_their_memory() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    const HELD: u64 = 3 << 20;
    const BIG: u64 = 32 << 20;
    const STALL: Duration = Duration::from_secs(3);
    let held = source(node.pod_addr, &pattern, HELD, true, None).await;
    let big = source(node.pod_addr, &pattern, BIG, false, None).await;
    let budget = Arc::new(BufferBudget::new(7 << 20, None, 0));
    let pool = pool_with(
        &cluster,
        ChannelLimits {
            recv_buffer_max: 4 << 20,
            spill_max: 0,
            stall_timeout: STALL,
            budget: budget.clone(),
        },
    )
    .await;
    let tunnel = pool.tunnel("node-1").unwrap();

    let paused = paused_readers(&pool, node, held, 2, &budget, 2 * (HELD - 1000)).await;
    // Longer than the stall timeout without reading, but nobody needs the memory: kept.
    tokio::time::sleep(STALL + Duration::from_secs(1)).await;
    assert_eq!(
        tunnel.stalled_channels(),
        0,
        "a paused reader keeps its stream while its memory is not needed"
    );

    let active = pool.dial(&dest(node.pod_addr, big)).await.unwrap();
    let reader = tokio::spawn(read_all(
        active,
        64 << 10,
        Duration::from_millis(5),
        Duration::from_secs(120),
    ));
    assert!(
        support::wait_until(Duration::from_secs(20), || tunnel.stalled_channels() == 2),
        "both paused readers are cut once a reader that reads needs their memory: {} cut, memory {}",
        tunnel.stalled_channels(),
        budget.memory_used()
    );
    let (got, hash, end) = tokio::time::timeout(Duration::from_secs(150), reader)
        .await
        .expect("the active reader finishes")
        .unwrap();
    end.expect("the active reader reads to the end");
    assert_eq!(got, BIG, "every byte reaches the active reader");
    assert!(hash == pattern.hash(BIG), "intact");
    // The cut readers get the stall error (their memory was given to the active reader).
    for (s, first) in paused {
        let (got, _, end) = resume(s, first, HELD).await;
        let e = end.expect_err("a cut reader gets an error, not a clean end");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(got < HELD);
    }
    assert!(
        support::wait_until(Duration::from_secs(10), || budget.memory_used() == 0),
        "all memory given back: {}",
        budget.memory_used()
    );
}

/// Finding 6: a reader that waited on a quiet channel for longer than the stall timeout is
/// not cut the moment a burst arrives that it cannot take at once: its stall clock starts at
/// the burst's first byte, so it has the stall timeout to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_waited_on_a_quiet_channel_has_the_stall_timeout_to_read_a_burst() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    const BURST: u64 = 8 << 20;
    const STALL: Duration = Duration::from_secs(3);
    let go = Arc::new(Notify::new());
    let port = source(node.pod_addr, &pattern, BURST, false, Some(go.clone())).await;
    let budget = Arc::new(BufferBudget::new(64 << 20, None, 0));
    let pool = pool_with(
        &cluster,
        ChannelLimits {
            recv_buffer_max: 1 << 20,
            spill_max: 0,
            stall_timeout: STALL,
            budget: budget.clone(),
        },
    )
    .await;
    let tunnel = pool.tunnel("node-1").unwrap();
    let mut s = pool.dial(&dest(node.pod_addr, port)).await.unwrap();
    // The reader waits on the quiet channel (nothing comes), then is busy elsewhere.
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b))
            .await
            .is_err(),
        "nothing comes before the burst"
    );
    tokio::time::sleep(STALL + Duration::from_secs(1)).await;
    // The burst: more than the channel's memory, so the channel holds up its connection.
    go.notify_one();
    assert!(
        support::wait_until(Duration::from_secs(10), || budget.memory_used()
            >= (1 << 20) - (32 << 10)),
        "the burst fills the channel's memory: {}",
        budget.memory_used()
    );
    // The reader comes back well within the stall timeout of the burst.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (got, hash, end) = read_all(s, 64 << 10, Duration::ZERO, Duration::from_secs(60)).await;
    end.expect("the reader is not cut: it reads the burst to the end");
    assert_eq!(got, BURST);
    assert!(hash == pattern.hash(BURST), "intact");
    assert_eq!(tunnel.stalled_channels(), 0);
}

/// Finding 7a: an upload that writes fast (more than 512 KiB in half a second) and then
/// waits for window space because its destination stopped reading counts as bulk only for
/// that half second: its connection is not congested after it, and a new dial shares it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_after_a_fast_start_stops_counting_as_bulk() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    // A destination that accepts and never reads.
    let l = TcpListener::bind((node.pod_addr, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let sleeper = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let pool = pool_with(&cluster, ChannelLimits::default()).await;
    let tunnel = pool.tunnel("node-1").unwrap();
    let mut up = pool.dial(&dest(node.pod_addr, port)).await.unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let buf = vec![0x5au8; 64 << 10];
            // Bounded: far more than sshd's window and the socket buffers take.
            for _ in 0..4096 {
                if up.write_all(&buf).await.is_err() {
                    return;
                }
                sent.fetch_add(buf.len() as u64, Ordering::AcqRel);
            }
        })
    };
    // The upload stalls: nothing more is written for a second.
    let t0 = Instant::now();
    let mut last = (sent.load(Ordering::Acquire), Instant::now());
    loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "the upload stalls");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = sent.load(Ordering::Acquire);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    assert!(
        sent.load(Ordering::Acquire) > 1 << 20,
        "the upload wrote fast before it stalled"
    );
    assert!(!writer.is_finished(), "the writer still waits");
    // Not bulk any more: the connection is not congested while the writer keeps waiting.
    assert!(
        support::wait_until(Duration::from_secs(3), || !tunnel.is_congested()),
        "the stalled upload's connection is no longer congested"
    );
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !tunnel.is_congested(),
            "and stays so while the writer waits"
        );
    }
    let mut e = pool.dial(&dest(node.addr, ECHO_PORT)).await.unwrap();
    e.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), e.read_exact(&mut b))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(
        pool.connection_load("node-1").map(|(c, _)| c),
        Some(1),
        "the new dial shared the connection: no extra one for a stalled upload"
    );
    writer.abort();
    sleeper.abort();
}
