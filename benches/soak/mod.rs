//! The soak (`cargo bench --bench tunnel -- --soak [SECS]`, default 1200 s): the faults of
//! issue 22 together, for a long time, against 3 real sshd nodes. The pool and the CONNECT
//! front run in this process; clients CONNECT through the front's Unix socket to a server on
//! each node's pod address: short and long echoes, slow readers, bulk uploads, downloads and
//! both ways at once, every byte checked by SHA-256 against a seeded pattern. Meanwhile, every
//! few seconds, a node is drained (and reconnected later), reconnected, removed from the node
//! file (and put back) or given an alias there (the pool follows the file as the daemon does);
//! every minute one sshd is killed and restarted.
//!
//! It reports dials, failures by reason, bytes verified, RSS, fds, live heap and tokio tasks
//! at the start and the end, and panics (after printing) when bytes were lost or corrupted
//! or something leaked: a stream that ends short with no fault on its node during its life
//! lost bytes; a stream whose bytes differ from the pattern is corrupt; once the faults stop
//! and every stream ended, channels, front connections, tasks and fds must come back to their
//! level at the start (bounded waits). Nothing here is about speed, and it is not part of CI.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::nodes::{AddressTypes, NodeSource};
use kube_ssh_tunnel::pool::{PoolConfig, TunnelState};
use kube_ssh_tunnel::{Node, Pool, SshSettings};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::{alloc, check, support};

/// Clients running at once.
const CLIENTS: usize = 12;
/// Bound on one client's whole life (dial, transfer, verdict).
const CLIENT_LIMIT: Duration = Duration::from_secs(120);
/// A drain's streams may live this long (the pool's drain timeout in this soak).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack over the start's level for tasks and fds once everything has ended.
const TASK_SLACK: usize = 8;
const FD_SLACK: usize = 8;
/// Live heap growth that counts as a leak.
const HEAP_SLACK: isize = 64 << 20;

// ---- the pattern -------------------------------------------------------------------------

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes of stream `seed` from `offset` on.
fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let (mut i, mut p) = (0usize, offset);
    while i < buf.len() {
        let word = mix(seed ^ (p >> 3).wrapping_mul(0x2545_f491_4f6c_dd1d)).to_le_bytes();
        let start = (p & 7) as usize;
        let k = (8 - start).min(buf.len() - i);
        buf[i..i + k].copy_from_slice(&word[start..start + k]);
        i += k;
        p += k as u64;
    }
}

/// SHA-256 of the first `len` bytes of stream `seed`.
fn pattern_hash(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < len {
        let k = (len - at).min(buf.len() as u64) as usize;
        pattern(seed, at, &mut buf[..k]);
        h.update(&buf[..k]);
        at += k as u64;
    }
    h.finalize().into()
}

// ---- the server on each pod address ------------------------------------------------------

/// One listener per node: the first byte picks the mode. `E`: echo until EOF. `U` + len +
/// seed: reads up to `len` bytes, answers `K` + SHA-256 of what it read, or `S` + the count
/// when the client's bytes ended early. `D` + len + seed: writes `len` bytes of the pattern.
async fn serve(addr: Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLIENT_LIMIT * 2, serve_one(s)).await;
            });
        }
    });
    a
}

async fn serve_one(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    match s.read_u8().await? {
        b'E' => {
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
        b'U' => {
            let (len, _seed) = (s.read_u64().await?, s.read_u64().await?);
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            while got < len {
                let want = (len - got).min(buf.len() as u64) as usize;
                let k = s.read(&mut buf[..want]).await?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                got += k as u64;
            }
            if got == len {
                let digest: [u8; 32] = h.finalize().into();
                s.write_u8(b'K').await?;
                s.write_all(&digest).await?;
            } else {
                s.write_u8(b'S').await?;
                s.write_u64(got).await?;
            }
            s.shutdown().await
        }
        b'D' => {
            let (len, seed) = (s.read_u64().await?, s.read_u64().await?);
            let mut buf = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            while at < len {
                let k = (len - at).min(buf.len() as u64) as usize;
                pattern(seed, at, &mut buf[..k]);
                s.write_all(&buf[..k]).await?;
                at += k as u64;
            }
            s.shutdown().await
        }
        _ => Ok(()),
    }
}

// ---- what happened -----------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    dials: AtomicU64,
    established: AtomicU64,
    verified_streams: AtomicU64,
    bytes_verified: AtomicU64,
    cut_by_fault: AtomicU64,
    /// Failures by reason: dial answers other than 200, and streams cut by a fault.
    reasons: Mutex<BTreeMap<String, u64>>,
    /// Lost or corrupted bytes: each one is a failed check.
    lost: Mutex<Vec<String>>,
    faults: Mutex<BTreeMap<&'static str, u64>>,
    kinds: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    fn reason(&self, r: String) {
        *self.reasons.lock().unwrap().entry(r).or_default() += 1;
    }
    fn fault(&self, f: &'static str) {
        *self.faults.lock().unwrap().entry(f).or_default() += 1;
    }
    fn lost(&self, what: String) {
        eprintln!("soak: LOST: {what}");
        self.lost.lock().unwrap().push(what);
    }
}

/// Per node, a counter bumped around every fault that may cut its streams (before and after
/// it takes effect, and when a drain's timeout can have cut them): a stream that saw it move
/// may end short; one that did not must not.
type Epochs = Arc<[AtomicU64; 3]>;

/// A failure answer's reason without addresses and numbers, to count alike ones together.
fn bucket(status: u16, body: &str) -> String {
    let reason = body.split_once(": ").map_or(body, |(_, r)| r);
    let mut out = String::new();
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else if !(c == '.' && out.ends_with('#')) {
            out.push(c);
        }
    }
    let out: String = out.trim().chars().take(90).collect();
    format!("{status} {out}")
}

enum Dialed {
    Up(UnixStream),
    Refused(String),
}

/// CONNECT through the front; the stream on a 200, else the failure's bucket.
async fn dial(sock: &Path, target: SocketAddr) -> Dialed {
    let Ok(mut s) = UnixStream::connect(sock).await else {
        return Dialed::Refused("front: cannot connect to its socket".into());
    };
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return Dialed::Refused("front: closed before the request was sent".into());
    }
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match s.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => return Dialed::Refused("front: closed without an answer".into()),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 200 {
        return Dialed::Up(s);
    }
    let mut body = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        (&mut s).take(4096).read_to_end(&mut body),
    )
    .await;
    Dialed::Refused(bucket(status, String::from_utf8_lossy(&body).trim()))
}

/// How a stream ended after its 200.
enum End {
    /// Every byte arrived and matched.
    Verified(u64),
    /// Ended early (EOF or error) after `n` correct bytes.
    Short { n: u64, why: String },
    /// Bytes that differ from the pattern.
    Corrupt(String),
}

// ---- the clients ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Kind {
    ShortEcho,
    LongEcho,
    SlowReader,
    BulkDown,
    BulkUp,
    BulkBoth,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ShortEcho => "short echo",
            Kind::LongEcho => "long echo (5-20 s)",
            Kind::SlowReader => "slow reader (~320 KB/s)",
            Kind::BulkDown => "bulk download",
            Kind::BulkUp => "bulk upload",
            Kind::BulkBoth => "bulk both ways",
        }
    }

    fn pick() -> Kind {
        match fastrand::u32(0..100) {
            0..40 => Kind::ShortEcho,
            40..55 => Kind::LongEcho,
            55..70 => Kind::SlowReader,
            70..80 => Kind::BulkDown,
            80..90 => Kind::BulkUp,
            _ => Kind::BulkBoth,
        }
    }
}

/// Reads everything (until EOF or error), checking it against the pattern; `pace` sleeps
/// between reads of `chunk` bytes.
async fn read_checked<R: AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
    want: u64,
    chunk: usize,
    pace: Option<Duration>,
) -> End {
    let mut buf = vec![0u8; chunk];
    let (mut got, mut h) = (0u64, Sha256::new());
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => {
                if got + k as u64 > want {
                    return End::Corrupt(format!("{} bytes past the end", got + k as u64 - want));
                }
                h.update(&buf[..k]);
                got += k as u64;
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
            }
            Err(e) => {
                return match check_prefix(h, seed, got) {
                    Some(c) => c,
                    None => End::Short {
                        n: got,
                        why: format!("read error {:?}", e.kind()),
                    },
                };
            }
        }
    }
    if let Some(c) = check_prefix(h, seed, got) {
        return c;
    }
    if got == want {
        End::Verified(got)
    } else {
        End::Short {
            n: got,
            why: "EOF".into(),
        }
    }
}

/// `Some(Corrupt)` when the `n` bytes hashed into `h` are not the pattern's first `n`.
fn check_prefix(h: Sha256, seed: u64, n: u64) -> Option<End> {
    let got: [u8; 32] = h.finalize().into();
    (got != pattern_hash(seed, n)).then(|| {
        End::Corrupt(format!(
            "the first {n} bytes differ from the pattern (SHA-256)"
        ))
    })
}

/// Writes `len` bytes of the pattern (in `chunk`s, `pace` between them), then half-closes.
async fn write_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
    chunk: usize,
    pace: Option<Duration>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < len {
        let k = (len - at).min(chunk as u64) as usize;
        pattern(seed, at, &mut buf[..k]);
        w.write_all(&buf[..k]).await?;
        at += k as u64;
        if let Some(p) = pace {
            tokio::time::sleep(p).await;
        }
    }
    w.shutdown().await
}

async fn run_kind(kind: Kind, s: UnixStream) -> End {
    let seed = fastrand::u64(..);
    let mib = |lo: u64, hi: u64| fastrand::u64(lo..=hi) << 20;
    let (mut r, mut w) = tokio::io::split(s);
    match kind {
        Kind::ShortEcho | Kind::LongEcho | Kind::BulkBoth => {
            let (len, chunk, pace) = match kind {
                Kind::ShortEcho => (fastrand::u64(1..=64 << 10), 16 << 10, None),
                Kind::LongEcho => {
                    // 5-20 s of 1 KiB every 100 ms.
                    let ticks = fastrand::u64(50..=200);
                    (ticks << 10, 1 << 10, Some(Duration::from_millis(100)))
                }
                _ => (mib(4, 24), 64 << 10, None),
            };
            if w.write_u8(b'E').await.is_err() {
                return End::Short {
                    n: 0,
                    why: "write error".into(),
                };
            }
            let writer = async {
                let r = write_pattern(&mut w, seed, len, chunk, pace).await;
                if r.is_err() {
                    // Let the reader end too.
                    let _ = w.shutdown().await;
                }
                r
            };
            let (wrote, end) =
                tokio::join!(writer, read_checked(&mut r, seed, len, 64 << 10, None));
            match (wrote, end) {
                (Err(e), End::Verified(n)) => End::Short {
                    n,
                    why: format!("write error {:?} after every byte echoed", e.kind()),
                },
                (_, end) => end,
            }
        }
        Kind::SlowReader | Kind::BulkDown => {
            let (len, chunk, pace) = match kind {
                Kind::SlowReader => (mib(2, 4), 16 << 10, Some(Duration::from_millis(50))),
                _ => (mib(8, 48), 64 << 10, None),
            };
            let mut req = vec![b'D'];
            req.extend_from_slice(&len.to_be_bytes());
            req.extend_from_slice(&seed.to_be_bytes());
            if w.write_all(&req).await.is_err() {
                return End::Short {
                    n: 0,
                    why: "write error".into(),
                };
            }
            read_checked(&mut r, seed, len, chunk, pace).await
        }
        Kind::BulkUp => {
            let len = mib(8, 48);
            let mut req = vec![b'U'];
            req.extend_from_slice(&len.to_be_bytes());
            req.extend_from_slice(&seed.to_be_bytes());
            if w.write_all(&req).await.is_err() {
                return End::Short {
                    n: 0,
                    why: "write error".into(),
                };
            }
            if let Err(e) = write_pattern(&mut w, seed, len, 64 << 10, None).await {
                return End::Short {
                    n: 0,
                    why: format!("upload write error {:?}", e.kind()),
                };
            }
            let mut answer = Vec::new();
            if let Err(e) = r.read_to_end(&mut answer).await {
                return End::Short {
                    n: 0,
                    why: format!("upload answer read error {:?}", e.kind()),
                };
            }
            match answer.first() {
                Some(b'K') if answer.len() == 33 => {
                    if answer[1..] == pattern_hash(seed, len) {
                        End::Verified(len)
                    } else {
                        End::Corrupt(format!(
                            "the server's SHA-256 of the {len} uploaded bytes differs"
                        ))
                    }
                }
                Some(b'S') if answer.len() == 9 => End::Short {
                    n: u64::from_be_bytes(answer[1..9].try_into().unwrap()),
                    why: "the server got fewer bytes than were written, then EOF".into(),
                },
                None => End::Short {
                    n: 0,
                    why: "EOF before the server's answer".into(),
                },
                _ => End::Corrupt(format!("a garbled server answer ({} bytes)", answer.len())),
            }
        }
    }
}

/// One client: dial node `i`'s server through the front, run a random kind, judge the end.
async fn client(sock: PathBuf, i: usize, target: SocketAddr, stats: Arc<Stats>, epochs: Epochs) {
    let kind = Kind::pick();
    *stats.kinds.lock().unwrap().entry(kind.name()).or_default() += 1;
    let before = epochs[i].load(Ordering::SeqCst);
    stats.dials.fetch_add(1, Ordering::Relaxed);
    let s = match dial(&sock, target).await {
        Dialed::Up(s) => s,
        Dialed::Refused(why) => return stats.reason(why),
    };
    stats.established.fetch_add(1, Ordering::Relaxed);
    let end = run_kind(kind, s).await;
    let faulted = epochs[i].load(Ordering::SeqCst) != before;
    match end {
        End::Verified(n) => {
            stats.verified_streams.fetch_add(1, Ordering::Relaxed);
            stats.bytes_verified.fetch_add(n, Ordering::Relaxed);
        }
        End::Short { n, why } if faulted => {
            stats.cut_by_fault.fetch_add(1, Ordering::Relaxed);
            stats.bytes_verified.fetch_add(n, Ordering::Relaxed);
            stats.reason(format!("stream cut by a fault on its node ({why})"));
        }
        End::Short { n, why } => stats.lost(format!(
            "{} via node-{}: ended after {n} bytes ({why}) with no fault on its node",
            kind.name(),
            i + 1
        )),
        End::Corrupt(what) => stats.lost(format!("{} via node-{}: {what}", kind.name(), i + 1)),
    }
}

// ---- the faults ----------------------------------------------------------------------------

/// The node set the soak writes to its node file, which a `NodeSource::File` follows and
/// applies to the pool (as the daemon does).
struct NodeSet {
    base: Vec<Node>,
    present: [bool; 3],
    alias: [bool; 3],
    file: PathBuf,
}

impl NodeSet {
    fn nodes(&self) -> Vec<Node> {
        (0..3)
            .filter(|&i| self.present[i])
            .map(|i| {
                let mut n = self.base[i].clone();
                if self.alias[i] {
                    n.aliases.push(format!("{}.soak.invalid", n.name));
                }
                n
            })
            .collect()
    }

    /// Writes the node file (a new file renamed over the old: never read half-written).
    fn write(&self) {
        let mut toml = String::new();
        for n in self.nodes() {
            let list = |v: Vec<String>| {
                v.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\npod_cidrs = [{}]\naliases = [{}]\n\n",
                n.name,
                n.address,
                n.ssh_port,
                list(n.pod_cidrs.iter().map(|c| c.to_string()).collect()),
                list(n.aliases.clone()),
            ));
        }
        let tmp = self.file.with_extension("new");
        std::fs::write(&tmp, toml).expect("write the soak's node file");
        std::fs::rename(&tmp, &self.file).expect("replace the soak's node file");
    }
}

/// Follows the node file as the daemon does: its sets go to `Pool::update`.
async fn follow_node_file(pool: Arc<Pool>, file: PathBuf, stop: CancellationToken) {
    let source = NodeSource::File {
        path: file,
        extra: Vec::new(),
        address_types: AddressTypes::default(),
        interval: Duration::from_millis(500),
    };
    let started = source
        .start(Arc::new(tokio::sync::Notify::new()), stop)
        .await
        .expect("the soak's node file loads");
    if let Some(task) = started.task {
        tokio::spawn(task);
    }
    let mut sets = started.nodes;
    tokio::spawn(async move {
        while sets.changed().await.is_ok() {
            let set = sets.borrow_and_update().clone();
            if let Err(e) = pool.update(set) {
                check::expect(false, || {
                    format!("soak: the pool refused the node file's set: {e}")
                });
            }
        }
    });
}

/// Something to undo later: put a node back, undrain it, or start its sshd.
enum Undo {
    Readd(usize),
    Undrain(usize),
    StartSshd(usize),
}

fn bump(epochs: &Epochs, i: usize) {
    epochs[i].fetch_add(1, Ordering::SeqCst);
}

/// Bumps now and once more when a drain started now may have cut its last streams.
fn bump_drain(epochs: &Epochs, i: usize) {
    bump(epochs, i);
    let e = epochs.clone();
    tokio::spawn(async move {
        tokio::time::sleep(DRAIN_TIMEOUT + Duration::from_secs(2)).await;
        bump(&e, i);
    });
}

struct Faults<'a> {
    cluster: &'a support::Cluster,
    pool: &'a Pool,
    set: NodeSet,
    epochs: Epochs,
    stats: Arc<Stats>,
    pending: Vec<(Instant, Undo)>,
    busy: [bool; 3],
}

impl Faults<'_> {
    fn apply(&mut self, u: Undo) {
        match u {
            Undo::Readd(i) => {
                self.set.present[i] = true;
                self.update();
                self.busy[i] = false;
            }
            Undo::Undrain(i) => {
                self.pool.reconnect(&self.set.base[i].name);
                self.busy[i] = false;
            }
            Undo::StartSshd(i) => {
                tokio::task::block_in_place(|| self.cluster.nodes[i].start_sshd());
                bump(&self.epochs, i);
                self.busy[i] = false;
            }
        }
    }

    fn update(&self) {
        self.set.write();
    }

    /// Undoes what is due (everything with `all`).
    fn undo_due(&mut self, all: bool) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(at, _)| all || *at <= now);
        self.pending = later;
        for (_, u) in due {
            self.apply(u);
        }
    }

    fn later(&mut self, i: usize, after: Duration, u: Undo) {
        self.busy[i] = true;
        self.pending.push((Instant::now() + after, u));
    }

    /// One random fault on a node that has none outstanding.
    fn random(&mut self) {
        let free: Vec<usize> = (0..3).filter(|&i| !self.busy[i]).collect();
        let Some(&i) = free.get(fastrand::usize(..free.len().max(1))) else {
            return;
        };
        let name = self.set.base[i].name.clone();
        let back = Duration::from_secs(fastrand::u64(4..=10));
        match fastrand::u32(0..4) {
            0 => {
                self.stats.fault("drain, reconnect 4-10 s later");
                bump_drain(&self.epochs, i);
                self.pool.drain_node(&name);
                self.later(i, back, Undo::Undrain(i));
            }
            1 => {
                self.stats.fault("reconnect");
                bump_drain(&self.epochs, i);
                self.pool.reconnect(&name);
            }
            2 => {
                self.stats
                    .fault("node file: node removed, put back 4-10 s later");
                bump_drain(&self.epochs, i);
                self.set.present[i] = false;
                self.update();
                self.later(i, back, Undo::Readd(i));
            }
            _ => {
                self.stats.fault("node file: alias added or removed");
                self.set.alias[i] = !self.set.alias[i];
                self.update();
            }
        }
    }

    /// Kills node `i`'s sshd now; starts it again 3-8 s later.
    fn kill(&mut self, i: usize) {
        self.stats.fault("sshd killed, restarted 3-8 s later");
        bump(&self.epochs, i);
        tokio::task::block_in_place(|| self.cluster.nodes[i].kill_sshd());
        bump(&self.epochs, i);
        self.later(
            i,
            Duration::from_secs(fastrand::u64(3..=8)),
            Undo::StartSshd(i),
        );
    }
}

// ---- the run -------------------------------------------------------------------------------

struct Levels {
    rss_mib: f64,
    fds: usize,
    tasks: usize,
    heap_mib: f64,
}

fn levels() -> Levels {
    Levels {
        rss_mib: support::rss_bytes() as f64 / (1 << 20) as f64,
        fds: support::open_fds(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        heap_mib: alloc::live() as f64 / (1 << 20) as f64,
    }
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn all_ready(pool: &Pool) -> bool {
    let st = pool.statuses();
    st.len() == 3 && st.iter().all(|(_, s)| s.state == TunnelState::Ready)
}

/// Runs the soak for `secs` seconds and prints its report; panics when a check failed.
pub async fn run(secs: u64) {
    support::raise_fd_limit();
    let cluster = support::Cluster::start(3);
    let mut targets = Vec::new();
    for n in &cluster.nodes {
        targets.push(serve(n.pod_addr).await);
    }
    let settings = SshSettings::builder(cluster.user.clone())
        .key_file(&cluster.keys.ed25519, None)
        .unwrap()
        .known_hosts_file(&cluster.known_hosts)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .open_timeout(Duration::from_secs(5))
        .build();
    let mut cfg = PoolConfig::new(settings);
    // Health probes stay on (TCP to the kubelet stub's port): they run through teardowns too.
    cfg.drain_timeout = DRAIN_TIMEOUT;
    cfg.reconnect_wait = Some(Duration::from_secs(5));
    // Few channels per connection and a short idle time: extra connections open and are
    // reaped all the time.
    cfg.max_channels_per_connection = 8;
    cfg.overflow_idle_timeout = Duration::from_secs(10);
    let base = cluster.node_list();
    let dir = tempfile::tempdir().unwrap();
    let set = NodeSet {
        base,
        present: [true; 3],
        alias: [false; 3],
        file: dir.path().join("nodes.toml"),
    };
    set.write();
    let pool = Arc::new(Pool::with_config(cfg, set.nodes()).unwrap());
    let stop_source = CancellationToken::new();
    follow_node_file(pool.clone(), set.file.clone(), stop_source.clone()).await;
    assert!(
        wait_until(Duration::from_secs(60), || all_ready(&pool)).await,
        "soak: the 3 nodes were not ready within 60 s: {:?}",
        pool.statuses()
    );
    let sock = dir.path().join("front.sock");
    let front = kube_ssh_tunnel::proxy::ConnectFront::new(
        pool.clone(),
        kube_ssh_tunnel::policy::Policy::default(),
        kube_ssh_tunnel::proxy::FrontLimits::default(),
    );
    front.spawn_uds(kube_ssh_tunnel::proxy::listen::bind_uds(&sock).unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = levels();
    println!(
        "soak: {secs} s, 3 sshd nodes, {CLIENTS} clients at once; start: RSS {:.1} MiB, {} fds, {} tasks, live heap {:.1} MiB",
        start.rss_mib, start.fds, start.tasks, start.heap_mib
    );

    let stats = Arc::new(Stats::default());
    let epochs: Epochs = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let running = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    let mut faults = Faults {
        cluster: &cluster,
        pool: &pool,
        set,
        epochs: epochs.clone(),
        stats: stats.clone(),
        pending: Vec::new(),
        busy: [false; 3],
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let began = Instant::now();
    let mut next_fault = Instant::now() + Duration::from_secs(fastrand::u64(3..=6));
    let mut next_kill = Instant::now() + Duration::from_secs(30);
    let mut kills = 0usize;
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        while running.load(Ordering::SeqCst) < CLIENTS {
            // Mostly nodes with no fault outstanding; a fifth of the dials go anywhere (a
            // removed or drained node's pod: refused; a killed sshd's: no ready tunnel).
            let up: Vec<usize> = (0..3).filter(|&i| !faults.busy[i]).collect();
            let i = if up.is_empty() || fastrand::u8(..5) == 0 {
                fastrand::usize(..3)
            } else {
                up[fastrand::usize(..up.len())]
            };
            let target = targets[i];
            let (sock, stats, epochs, running) =
                (sock.clone(), stats.clone(), epochs.clone(), running.clone());
            running.fetch_add(1, Ordering::SeqCst);
            clients.spawn(async move {
                if tokio::time::timeout(
                    CLIENT_LIMIT,
                    client(sock, i, target, stats.clone(), epochs),
                )
                .await
                .is_err()
                {
                    stats.lost(format!(
                        "a client via node-{} did not finish within {CLIENT_LIMIT:?}",
                        i + 1
                    ));
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while clients.try_join_next().is_some() {}
        faults.undo_due(false);
        let now = Instant::now();
        if now >= next_kill {
            // The one to kill must have nothing outstanding (its sshd down, say).
            let i = kills % 3;
            if !faults.busy[i] {
                faults.kill(i);
                kills += 1;
                next_kill = now + Duration::from_secs(60);
            }
        } else if now >= next_fault {
            faults.random();
            next_fault = now + Duration::from_secs(fastrand::u64(3..=6));
        }
        if now >= next_report {
            println!(
                "soak: {:>5} s: {} dials, {} established, {} streams verified, {} MiB verified, {} cut by a fault, {} lost",
                began.elapsed().as_secs(),
                stats.dials.load(Ordering::Relaxed),
                stats.established.load(Ordering::Relaxed),
                stats.verified_streams.load(Ordering::Relaxed),
                stats.bytes_verified.load(Ordering::Relaxed) >> 20,
                stats.cut_by_fault.load(Ordering::Relaxed),
                stats.lost.lock().unwrap().len()
            );
            next_report = now + Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ran = began.elapsed();

    // The end: no new clients; the running ones finish (each bounded by CLIENT_LIMIT).
    let finish_by = Instant::now() + CLIENT_LIMIT + Duration::from_secs(10);
    while !clients.is_empty() && Instant::now() < finish_by {
        faults.undo_due(false);
        let _ = tokio::time::timeout(Duration::from_millis(500), clients.join_next()).await;
    }
    check::expect(clients.is_empty(), || {
        format!(
            "soak: {} clients still running after the end",
            clients.len()
        )
    });
    clients.abort_all();
    // Faults off: every sshd up, every node back, nothing drained.
    faults.undo_due(true);
    faults.set.alias = [false; 3];
    faults.update();
    for n in ["node-1", "node-2", "node-3"] {
        if pool.drains().contains_key(n) {
            pool.reconnect(n);
        }
    }
    let ready = wait_until(Duration::from_secs(90), || all_ready(&pool)).await;
    check::expect(ready, || {
        format!(
            "soak: the 3 nodes were not ready again within 90 s: {:?}",
            pool.statuses()
                .iter()
                .map(|(n, s)| (n.name.clone(), s.state))
                .collect::<Vec<_>>()
        )
    });
    // Then everything comes back to the start's level: channels and extra connections gone
    // (the reaper's idle time, a drain timeout), front connections, tasks, fds.
    let channels = || -> (usize, usize) {
        ["node-1", "node-2", "node-3"]
            .iter()
            .filter_map(|n| pool.connection_load(n))
            .fold((0, 0), |(c, ch), (c2, ch2)| (c + c2, ch + ch2))
    };
    let settle = DRAIN_TIMEOUT + Duration::from_secs(60);
    let settled = wait_until(settle, || {
        let l = levels();
        channels() == (3, 0)
            && front.active() == 0
            && l.tasks <= start.tasks + TASK_SLACK
            && l.fds <= start.fds + FD_SLACK
    })
    .await;
    let end = levels();
    let (conns, chans) = channels();
    check::expect(chans == 0, || {
        format!("soak: {chans} channels still open once every stream ended")
    });
    check::expect(conns == 3, || {
        format!("soak: {conns} SSH connections once idle (want 3: extra ones are reaped)")
    });
    check::expect(front.active() == 0, || {
        format!("soak: the front still has {} connections", front.active())
    });
    check::expect(end.tasks <= start.tasks + TASK_SLACK, || {
        format!(
            "soak: {} tokio tasks alive at the end, {} at the start (leak)",
            end.tasks, start.tasks
        )
    });
    check::expect(end.fds <= start.fds + FD_SLACK, || {
        format!(
            "soak: {} fds open at the end, {} at the start (leak)",
            end.fds, start.fds
        )
    });
    check::expect(
        alloc::live() <= (start.heap_mib * (1 << 20) as f64) as isize + HEAP_SLACK,
        || {
            format!(
                "soak: live heap {:.1} MiB at the end, {:.1} MiB at the start (leak)",
                end.heap_mib, start.heap_mib
            )
        },
    );
    let lost = stats.lost.lock().unwrap().clone();
    for l in &lost {
        check::expect(false, || format!("soak: lost bytes: {l}"));
    }
    check::expect(stats.verified_streams.load(Ordering::Relaxed) > 0, || {
        "soak: no stream was verified".into()
    });

    // The report.
    println!(
        "soak: report after {:.0} s of faults (settled: {settled})",
        ran.as_secs_f64()
    );
    println!(
        "  dials: {} through the front, {} established (200)",
        stats.dials.load(Ordering::Relaxed),
        stats.established.load(Ordering::Relaxed)
    );
    println!("  clients by kind:");
    for (k, n) in stats.kinds.lock().unwrap().iter() {
        println!("    {n:>6}  {k}");
    }
    println!("  faults:");
    for (f, n) in stats.faults.lock().unwrap().iter() {
        println!("    {n:>6}  {f}");
    }
    println!("  failures by reason:");
    for (r, n) in stats.reasons.lock().unwrap().iter() {
        println!("    {n:>6}  {r}");
    }
    println!(
        "  streams: {} verified, {} cut by a fault on their node, {} lost or corrupt",
        stats.verified_streams.load(Ordering::Relaxed),
        stats.cut_by_fault.load(Ordering::Relaxed),
        lost.len()
    );
    println!(
        "  bytes verified by SHA-256: {:.1} MiB",
        stats.bytes_verified.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    println!(
        "  RSS {:.1} -> {:.1} MiB, fds {} -> {}, tokio tasks alive {} -> {}, live heap {:.1} -> {:.1} MiB",
        start.rss_mib,
        end.rss_mib,
        start.fds,
        end.fds,
        start.tasks,
        end.tasks,
        start.heap_mib,
        end.heap_mib
    );
    let problems = check::problems();
    stop_source.cancel();
    pool.shutdown_within(Duration::from_secs(2)).await;
    if problems.is_empty() {
        println!("soak: ok: nothing lost, nothing leaked");
    } else {
        println!("soak: {} check(s) failed:", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
    }
    // A panic, not `process::exit`: unwinding drops the cluster (its processes stop by PID).
    assert!(
        problems.is_empty(),
        "soak: {} check(s) failed",
        problems.len()
    );
    drop(dir);
}
