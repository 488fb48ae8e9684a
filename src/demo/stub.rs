//! The services behind a demo node — its kubelet, the pods in its pod CIDR and the cluster's
//! services — answered in-process on the SSH channel itself, so the demo needs no real
//! kubelet, pod network or kube-proxy. Minimal HTTP/1.1: keep-alive, bounded heads, every
//! answer names the node that carried it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a channel reached on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    /// The node's kubelet (node address, kubelet port).
    Kubelet,
    /// A pod IP inside the node's pod CIDR.
    Pod(String),
    /// A service IP, reached through the node as kube-proxy would.
    Service(String),
}

const MAX_HEAD: usize = 16 * 1024;
const IDLE: Duration = Duration::from_secs(60);

/// Serves HTTP requests on `io` until the client closes, idles for a minute, or sends
/// something that is not HTTP.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, node: &str, service: &Service) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut io, &mut buf)).await {
            Ok(Some(h)) => h,
            _ => break,
        };
        let (status, body) = answer(&head.path, node, service);
        let close = head.close;
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nX-Served-By: {node}\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let payload: &[u8] = if head.method == "HEAD" {
            &reply.as_bytes()[..reply.len() - body.len()]
        } else {
            reply.as_bytes()
        };
        if io.write_all(payload).await.is_err() || close {
            break;
        }
        // Skip a request body, if any (bounded: the stub takes no uploads).
        if head.body > 0 && !skip(&mut io, &mut buf, head.body).await {
            break;
        }
    }
    let _ = io.shutdown().await;
}

/// The status line and body for a path.
fn answer(path: &str, node: &str, service: &Service) -> (&'static str, String) {
    match service {
        Service::Kubelet => match path {
            "/healthz" => ("200 OK", "ok\n".into()),
            p if p.starts_with("/containerLogs/") => (
                "200 OK",
                format!(
                    "2026-11-29T00:00:00Z INFO log line of {} served by the kubelet on {node}\n",
                    &p["/containerLogs/".len()..]
                ),
            ),
            "/pods" | "/stats/summary" | "/metrics" | "/configz" | "/spec" => (
                "200 OK",
                format!("{{\"node\":\"{node}\",\"path\":\"{path}\"}}\n"),
            ),
            _ => (
                "404 Not Found",
                format!("the demo kubelet on {node} has no {path}\n"),
            ),
        },
        Service::Pod(ip) => (
            "200 OK",
            format!("hello from pod {ip} on {node} (path {path})\n"),
        ),
        Service::Service(ip) => (
            "200 OK",
            format!("hello from service {ip}, reached through {node} (path {path})\n"),
        ),
    }
}

struct Head {
    method: String,
    path: String,
    close: bool,
    body: usize,
}

/// Reads one request head; leftover bytes stay in `buf`. None on EOF, error or garbage.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<Head> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut close = version == "HTTP/1.0";
    let mut body = 0;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("content-length") {
            body = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked uploads are not part of the demo; answer and close.
            close = true;
        }
    }
    Some(Head {
        method: method.to_string(),
        path: path.split('?').next().unwrap_or("/").to_string(),
        close,
        body,
    })
}

/// Discards `n` body bytes (some may already be in `buf`); false when the stream ends first
/// or the body is larger than the stub accepts.
async fn skip<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>, n: usize) -> bool {
    if n > 1 << 20 {
        return false;
    }
    let have = n.min(buf.len());
    buf.drain(..have);
    let mut left = (n - have) as u64;
    let mut sink = tokio::io::sink();
    while left > 0 {
        match tokio::io::copy(&mut (&mut *io).take(left), &mut sink).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => left -= k,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_keep_alive_requests_and_names_the_node() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve(server, "node-1", &Service::Kubelet).await });
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /containerLogs/default/web-0/web HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        task.await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\r\n\r\nok\n"), "{out}");
        assert!(
            out.contains("log line of default/web-0/web served by the kubelet on node-1"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn garbage_ends_the_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task =
            tokio::spawn(async move { serve(server, "n", &Service::Pod("10.0.0.1".into())).await });
        client
            .write_all(b"\x16\x03\x01 not http\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        assert!(out.is_empty());
    }
}
