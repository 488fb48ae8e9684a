//! Reading one HTTP/1.1 request head from a CONNECT client, strictly and bounded: at most
//! `max` bytes, CRLF line ends, `METHOD SP TARGET SP HTTP/1.x`. The target comes from the
//! request line; the `Host` header is ignored (kube-apiserver always sends `127.0.0.1`).
//! Bytes that follow the head (a client that speaks early) are kept, not lost.

use tokio::io::{AsyncRead, AsyncReadExt};

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub target: String,
    pub version: String,
}

/// Why a head could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The client closed or failed before a full head arrived.
    Closed,
    /// The head grew past the limit.
    TooLarge(usize),
    /// Not HTTP/1.x.
    Malformed(String),
}

/// Reads a request head; returns it and any bytes received after it.
pub async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&buf) {
            let head = parse(&buf[..end])?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge(max));
        }
        let want = chunk.len().min(max + 4 - buf.len().min(max));
        let n = io
            .read(&mut chunk[..want.max(1)])
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return if buf.is_empty() {
                Err(HeadError::Closed)
            } else {
                Err(HeadError::Malformed(
                    "the request ended before its header was complete".into(),
                ))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn parse(head: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HeadError::Malformed("the request header is not text".into()))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed(format!(
            "bad request line '{}'; expected 'CONNECT host:port HTTP/1.1'",
            printable(request_line)
        )));
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !version.starts_with("HTTP/1.") || target.is_empty() {
        return Err(HeadError::Malformed(format!(
            "bad request line '{}'; expected 'CONNECT host:port HTTP/1.1'",
            printable(request_line)
        )));
    }
    for line in lines {
        if !line.contains(':') || line.starts_with(' ') || line.starts_with('\t') {
            return Err(HeadError::Malformed(format!(
                "bad header line '{}'",
                printable(line)
            )));
        }
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
    })
}

/// A short, printable rendering of client bytes for error messages.
fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head(bytes: &[u8]) -> Result<(Head, Vec<u8>), HeadError> {
        let mut r = bytes;
        read_head(&mut r, 8192).await
    }

    #[tokio::test]
    async fn parses_the_kube_apiserver_request_and_keeps_early_bytes() {
        let (h, rest) = head(b"CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03")
            .await
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("CONNECT", "10.0.0.1:10250")
        );
        assert_eq!(rest, b"\x16\x03");
        let (h, _) = head(b"CONNECT [fd00::1]:10250 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(h.target, "[fd00::1]:10250");
    }

    #[tokio::test]
    async fn rejects_garbage_and_huge_heads() {
        assert!(matches!(
            head(b"\x16\x03\x01garbage\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head(b"CONNECT x\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head(b"CONNECT a:1 HTTP/1.1\r\nnocolon\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            head(b"CONNECT a:1 HTTP/1.1\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(head(b"").await, Err(HeadError::Closed));
        let big = format!("CONNECT a:1 HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10000));
        assert_eq!(head(big.as_bytes()).await, Err(HeadError::TooLarge(8192)));
    }
}
