//! Byte streams for tests through the CONNECT front (moved from tests/isolation.rs so that
//! tests/reverse_nat.rs shares them): a random pattern and its SHA-256, in-process sources,
//! sinks and echo servers on a (loopback) address, kube-apiserver's CONNECT on the front's
//! Unix socket, a timed one-byte echo, and a reader that reads slowly until told otherwise.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

/// The bytes every source sends: a random block of an odd size, repeated, so that a lost,
/// doubled or reordered SSH packet changes the hash.
pub struct Pattern(pub Arc<Vec<u8>>);

impl Pattern {
    pub fn new() -> Pattern {
        use rand::RngCore;
        let mut b = vec![0u8; (1 << 20) + 7];
        rand::rng().fill_bytes(&mut b);
        Pattern(Arc::new(b))
    }

    /// SHA-256 of the first `len` bytes.
    pub fn hash(&self, len: u64) -> Vec<u8> {
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

/// A source on `addr`: each connection gets `len` bytes of the pattern, then EOF.
pub async fn source(addr: std::net::Ipv4Addr, pattern: &Pattern, len: u64) -> String {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let at = l.local_addr().unwrap().to_string();
    let block = pattern.0.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let mut left = len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if s.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    at
}

/// An echo server on `addr`.
pub async fn echo(addr: std::net::Ipv4Addr) -> String {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let at = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    at
}

/// Byte counts of one bulk endpoint (a `sink` or a `source_until`), shared with the test.
#[derive(Clone, Default)]
pub struct Bulk {
    /// Bytes received (sink) or sent (source) so far.
    pub bytes: Arc<AtomicU64>,
    /// The sink read EOF, or the source finished and sent its EOF.
    pub ended: Arc<AtomicBool>,
}

/// A sink on `addr` that reads and drops everything, counting what it read and noting EOF.
pub async fn sink(addr: std::net::Ipv4Addr) -> (String, Bulk) {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let at = l.local_addr().unwrap().to_string();
    let bulk = Bulk::default();
    let b = bulk.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let b = b.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        b.ended.store(true, Ordering::Release);
                        break;
                    }
                    b.bytes.fetch_add(n as u64, Ordering::AcqRel);
                }
            });
        }
    });
    (at, bulk)
}

/// A source on `addr` that sends the pattern over and over until `stop` is set, then EOF;
/// it counts what it sent.
pub async fn source_until(
    addr: std::net::Ipv4Addr,
    pattern: &Pattern,
    stop: Arc<AtomicBool>,
) -> (String, Bulk) {
    let l = TcpListener::bind((addr, 0)).await.unwrap();
    let at = l.local_addr().unwrap().to_string();
    let block = pattern.0.clone();
    let bulk = Bulk::default();
    let b = bulk.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (block, b, stop) = (block.clone(), b.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    if s.write_all(&block).await.is_err() {
                        return;
                    }
                    b.bytes.fetch_add(block.len() as u64, Ordering::AcqRel);
                }
                if s.shutdown().await.is_ok() {
                    b.ended.store(true, Ordering::Release);
                }
            });
        }
    });
    (at, bulk)
}

/// kube-apiserver's CONNECT on the front's socket; the stream once the answer is 200.
pub async fn connect(sock: &Path, target: &str) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(sock).await.map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        head.push(s.read_u8().await.map_err(|e| e.to_string())?);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 200") {
        Ok(s)
    } else {
        Err(head)
    }
}

/// A new CONNECT + a 1-byte echo, within `limit`; how long it took.
pub async fn echo_within(sock: &Path, target: &str, limit: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    tokio::time::timeout(limit, async {
        let mut s = connect(sock, target).await?;
        s.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    })
    .await
    .map_err(|_| format!("no answer within {limit:?}"))??;
    Ok(t0.elapsed())
}

/// A metric's value from the OpenMetrics text (the first series whose line starts so).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Reads a CONNECT stream: slowly (10 KiB every 100 ms, about 100 KB/s) until `fast` is set,
/// then at full speed to the end; returns the byte count and SHA-256. Bounded by `limit`.
pub fn slow_reader(
    mut s: UnixStream,
    fast: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<(u64, Vec<u8>)> {
    tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0u64;
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let fast_now = fast.load(Ordering::Acquire);
            let want = if fast_now { buf.len() } else { 10 << 10 };
            let n = match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf[..want]))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            h.update(&buf[..n]);
            got += n as u64;
            if !fast_now {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        (got, h.finalize().to_vec())
    })
}
