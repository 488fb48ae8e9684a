//! The russh floor: the least CPU and latency a CONNECT tunnel built on russh 0.65 can cost,
//! measured beside `ssh -L` and the daemon.
//!
//! Why this exists: #23 asks the daemon to move bytes at or below OpenSSH's CPU per GB, and
//! to dial within 10 % of `ssh -L`. Some of the gap is inside russh (its copies of every
//! packet), and some is in the CONNECT exchange itself (the `200` comes after the channel
//! opens, so the client's first byte makes one more trip). This program keeps only those
//! two: one russh connection, one task per client, the channel's messages written straight
//! to the client, no pool, no routing, no isolation, no metrics, and the daemon's socket
//! tuning, SSH settings and malloc settings. So it shows what russh and the CONNECT exchange
//! cost by themselves; what the daemon costs above it is the daemon's own work.
//!
//! `KST_FLOOR_EARLY_200=1` sends the `200` before the channel opens, to show what the
//! CONNECT exchange's extra trip costs a new dial.
//!
//! `KST_FLOOR_THREADS=N` runs it on N worker threads.
//!
//! It takes the daemon's `run` flags, so the shared side-by-side tool can start it in the
//! daemon's place (`KST_BIN=target/release/examples/russh_floor`). It reads
//! `--ssh-user`, `--ssh-keyfile`, `--ssh-known-hosts`, `--node NAME=IP[:PORT]` (the first)
//! and `--proxy-uds`, and ignores every other flag. It checks the node's host key against the
//! known-hosts file and serves loopback clients only (a Unix socket). Not a product: a
//! measuring stick: the benchmark's `dial` rows run it when it is built (docs/testing.md).

#[path = "../src/cli/allocator.rs"]
mod allocator;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use kube_ssh_tunnel::ssh::socket::QuickAckStream;
use russh::ChannelMsg;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// A stream whose write waits this long is closed.
const IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// How long an open given up on may still finish (its channel is then closed).
const LATE_OPEN: std::time::Duration = std::time::Duration::from_secs(60);

/// The answer to a CONNECT whose channel opened.
const OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Every wait on the network is bounded by this.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Args {
    user: String,
    key: String,
    known_hosts: String,
    /// The node's SSH address.
    node: SocketAddr,
    uds: String,
}

fn args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let find = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1).cloned())
            .ok_or_else(|| {
                format!("russh_floor: {flag} is missing; it takes the daemon's run flags")
            })
    };
    // `--node NAME=ADDR` or `NAME=ADDR:PORT`, as `run` takes it (an IP address here).
    let spec = find("--node")?;
    let addr = spec.split_once('=').map_or(spec.as_str(), |(_, a)| a);
    let node = addr
        .parse::<SocketAddr>()
        .or_else(|_| addr.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 22)))
        .map_err(|_| format!("russh_floor: --node {spec}: give NAME=IP or NAME=IP:PORT"))?;
    Ok(Args {
        user: find("--ssh-user")?,
        key: find("--ssh-keyfile")?,
        known_hosts: find("--ssh-known-hosts")?,
        node,
        uds: find("--proxy-uds")?,
    })
}

/// Trusts only the keys the known-hosts file lists for the node's address.
struct Trust(Vec<PublicKey>);

impl client::Handler for Trust {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            return Ok(false);
        };
        Ok(self.0.iter().any(|k| k.key_data() == key.key_data()))
    }
}

/// The keys `file` lists for `node` (`ADDR` on port 22, `[ADDR]:PORT` on another port).
fn trusted(file: &str, node: SocketAddr) -> Result<Vec<PublicKey>, String> {
    let host = if node.port() == 22 {
        node.ip().to_string()
    } else {
        format!("[{}]:{}", node.ip(), node.port())
    };
    let text = std::fs::read_to_string(file).map_err(|e| format!("russh_floor: {file}: {e}"))?;
    let keys: Vec<PublicKey> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let hosts = f.next()?;
            let _kind = f.next()?;
            let b64 = f.next()?;
            hosts
                .split(',')
                .any(|h| h == host.as_str())
                .then(|| russh::keys::parse_public_key_base64(b64).ok())
                .flatten()
        })
        .collect();
    if keys.is_empty() {
        return Err(format!("russh_floor: {file} lists no key for {host}"));
    }
    Ok(keys)
}

async fn connect(a: &Args) -> Result<Handle<Trust>, String> {
    let keys = trusted(&a.known_hosts, a.node)?;
    let config = Arc::new(client::Config {
        // The daemon's settings (src/ssh/settings.rs), so the floor moves bytes the same way.
        window_size: 2 << 20,
        maximum_packet_size: 32768,
        channel_buffer_size: 100,
        nodelay: true,
        limits: russh::Limits {
            rekey_write_limit: 1 << 50,
            rekey_read_limit: 1 << 50,
            rekey_time_limit: std::time::Duration::from_secs(100 * 365 * 24 * 3600),
        },
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(vec![russh::cipher::AES_128_GCM]),
            ..Default::default()
        },
        ..Default::default()
    });
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(a.node))
        .await
        .map_err(|_| "russh_floor: TCP connect timed out".to_string())?
        .map_err(|e| format!("russh_floor: TCP connect: {e}"))?;
    // The daemon's socket: NODELAY, QUICKACK re-armed, a small read-ahead.
    let tcp = QuickAckStream::new(tcp).map_err(|e| format!("russh_floor: socket: {e}"))?;
    let mut handle = tokio::time::timeout(WAIT, client::connect_stream(config, tcp, Trust(keys)))
        .await
        .map_err(|_| "russh_floor: handshake timed out".to_string())?
        .map_err(|e| format!("russh_floor: handshake: {e}"))?;
    let key = russh::keys::load_secret_key(&a.key, None)
        .map_err(|e| format!("russh_floor: {}: {e}", a.key))?;
    let auth = tokio::time::timeout(
        WAIT,
        handle.authenticate_publickey(&a.user, PrivateKeyWithHashAlg::new(Arc::new(key), None)),
    )
    .await
    .map_err(|_| "russh_floor: authentication timed out".to_string())?
    .map_err(|e| format!("russh_floor: authentication: {e}"))?;
    if !auth.success() {
        return Err("russh_floor: the node refused the key".into());
    }
    Ok(handle)
}

/// Reads the CONNECT request head; returns the target host and port, and any bytes the
/// client sent after the head.
async fn request(client: &mut UnixStream) -> Option<(String, u32, Vec<u8>)> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 256];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 8192 {
            return None;
        }
        let n = tokio::time::timeout(WAIT, client.read(&mut byte))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&byte[..n]);
    };
    let rest = head.split_off(end);
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    let target = line.strip_prefix("CONNECT ")?.split(' ').next()?;
    let (host, port) = target.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, rest))
}

async fn serve(handle: Arc<Handle<Trust>>, mut client: UnixStream, early: bool) {
    let Some((host, port, early_bytes)) = request(&mut client).await else {
        return;
    };
    if early && client.write_all(OK).await.is_err() {
        return;
    }
    // Polled here, as the daemon's dial does; an open given up on moves to a task that
    // closes a channel the node confirms late.
    let mut open = Box::pin(async move {
        handle
            .channel_open_direct_tcpip(host, port, "127.0.0.1", 0)
            .await
    });
    let channel = match tokio::time::timeout(WAIT, &mut open).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(_)) => {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        }
        Err(_) => {
            tokio::spawn(async move {
                if let Ok(Ok(late)) = tokio::time::timeout(LATE_OPEN, open).await {
                    let _ = late.close().await;
                }
            });
            let _ = client
                .write_all(b"HTTP/1.1 504 Gateway Timeout\r\n\r\n")
                .await;
            return;
        }
    };
    if !early && client.write_all(OK).await.is_err() {
        return;
    }
    let (mut from_node, to_node) = channel.split();
    if !early_bytes.is_empty() && to_node.data(&early_bytes[..]).await.is_err() {
        let _ = to_node.close().await;
        return;
    }
    let (mut rd, mut wr) = client.into_split();
    let mut buf = vec![0u8; 32768];
    let mut client_done = false;
    // A write that waits IDLE (a client or node that stopped reading) ends the stream, as
    // the daemon's stall timeout does; its timer is set only when the write has to wait. A
    // quiet stream stays open, as in the daemon (`kubectl logs -f` may be quiet for hours).
    loop {
        tokio::select! {
            msg = from_node.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    match tokio::time::timeout(IDLE, wr.write_all(&data)).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = tokio::time::timeout(IDLE, wr.shutdown()).await;
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
            n = rd.read(&mut buf), if !client_done => match n {
                Ok(0) | Err(_) => {
                    client_done = true;
                    let _ = tokio::time::timeout(IDLE, to_node.eof()).await;
                }
                Ok(n) => {
                    match tokio::time::timeout(IDLE, to_node.data(&buf[..n])).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
            },
        }
    }
    let _ = tokio::time::timeout(WAIT, to_node.close()).await;
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // The daemon's malloc settings, applied before any thread starts (see src/cli/allocator.rs).
    allocator::tune();
    // KST_FLOOR_THREADS=N sets the runtime's worker threads (default: one per core), as the
    // daemon's --worker-threads does.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("KST_FLOOR_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=1024).contains(n))
    {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build().expect("a tokio runtime");
    // KST_FLOOR_EARLY_200=1 answers `200` before the channel opens, as `ssh -L` takes a
    // client's bytes before its channel is open. The daemon never does this: a client would
    // lose the 502 and 504 that say why a dial failed. It shows what that trip costs.
    let early = std::env::var_os("KST_FLOOR_EARLY_200").is_some_and(|v| v == "1");
    let code = rt.block_on(async {
        let handle = match connect(&a).await {
            Ok(h) => Arc::new(h),
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        };
        let _ = std::fs::remove_file(&a.uds);
        let listener = match UnixListener::bind(&a.uds) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("russh_floor: {}: {e}", a.uds);
                return 1;
            }
        };
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            eprintln!("russh_floor: cannot listen for SIGTERM");
            return 1;
        };
        eprintln!("russh_floor: ready on {}", a.uds);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((client, _)) = accepted {
                        tokio::spawn(serve(handle.clone(), client, early));
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        let _ = std::fs::remove_file(&a.uds);
        0
    });
    std::process::exit(code);
}
