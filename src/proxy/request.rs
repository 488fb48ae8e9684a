//! Reading one HTTP/1.1 request head from a CONNECT client, strictly and bounded: at most
//! `max` bytes, CRLF line ends, `METHOD SP TARGET SP HTTP/1.x`. The target comes from the
//! request line; the `Host` header is ignored (kube-apiserver always sends `127.0.0.1`).
//! Bytes that follow the head (a client that speaks early) are kept, not lost.
//!
//! Linear in the head's size however it arrives: each read's new bytes alone are scanned for
//! the blank line that ends the head (the scan remembers where it stopped and how much of
//! `\r\n\r\n` it had matched), and the complete head is then parsed once, by `httparse`,
//! which also checks the header lines' syntax. A head sent a byte at a time costs what one
//! sent at once does.

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
    let mut reader = HeadReader::default();
    reader.read(io, max).await
}

/// The bytes of a head being read and how far they have been scanned.
#[derive(Default)]
struct HeadReader {
    buf: Vec<u8>,
    /// `buf[..scanned]` has been looked at for the end of the head.
    scanned: usize,
    /// How many bytes of `\r\n\r\n` end `buf[..scanned]`.
    matched: u8,
    /// Line ends seen: the most header lines the head can have.
    lines: usize,
    /// Bytes the end-of-head scan examined, over all reads (each byte once).
    examined: usize,
    /// Times the complete head was parsed (once).
    parses: usize,
}

impl HeadReader {
    async fn read<S: AsyncRead + Unpin>(
        &mut self,
        io: &mut S,
        max: usize,
    ) -> Result<(Head, Vec<u8>), HeadError> {
        self.buf.reserve(512);
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = self.scan() {
                self.parses += 1;
                let head = parse(&self.buf[..end], self.lines)?;
                return Ok((head, self.buf[end..].to_vec()));
            }
            if self.buf.len() > max {
                return Err(HeadError::TooLarge(max));
            }
            let want = chunk.len().min(max + 4 - self.buf.len().min(max));
            let n = io
                .read(&mut chunk[..want.max(1)])
                .await
                .map_err(|_| HeadError::Closed)?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Err(HeadError::Closed)
                } else {
                    Err(HeadError::Malformed(
                        "the request ended before its header was complete".into(),
                    ))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Scans the bytes not scanned yet for the end of the head; its length (blank line
    /// included) once found.
    fn scan(&mut self) -> Option<usize> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            self.examined += 1;
            self.matched = match (self.matched, b) {
                (0 | 2, b'\r') => self.matched + 1,
                (1 | 3, b'\n') => self.matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if b == b'\n' {
                self.lines += 1;
            }
            if self.matched == 4 {
                return Some(self.scanned);
            }
        }
        None
    }
}

/// Parses a complete head (ending with its blank line) of at most `lines` lines.
fn parse(head: &[u8], lines: usize) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HeadError::Malformed("the request header is not text".into()))?;
    // httparse skips empty lines before the request line; the header lines follow it.
    let mut all = text.split("\r\n").skip_while(|l| l.is_empty());
    let request_line = all.next().unwrap_or("");
    let header_lines = || {
        text.split("\r\n")
            .skip_while(|l| l.is_empty())
            .skip(1)
            .filter(|l| !l.is_empty())
    };
    let bad_request_line = || {
        HeadError::Malformed(format!(
            "bad request line '{}'; expected 'CONNECT host:port HTTP/1.1'",
            printable(request_line)
        ))
    };
    // Lines end with CRLF only (httparse would also take a bare LF).
    if request_line.contains('\n') {
        return Err(bad_request_line());
    }
    if let Some(line) = header_lines().find(|l| l.contains('\n')) {
        return Err(bad_header_line(line));
    }
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(bad_request_line()),
        // Which line: the request line, or the first header line that does not parse alone.
        Err(_) if !request_line_ok(request_line) => return Err(bad_request_line()),
        Err(_) => {
            let line = header_lines().find(|l| !header_line_ok(l)).unwrap_or("");
            return Err(bad_header_line(line));
        }
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad_request_line());
    };
    if target.is_empty() {
        return Err(bad_request_line());
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: format!("HTTP/1.{minor}"),
    })
}

/// Whether a request line parses on its own (the error path only: which line was bad).
fn request_line_ok(line: &str) -> bool {
    let framed = format!("{line}\r\n\r\n");
    matches!(
        httparse::Request::new(&mut []).parse(framed.as_bytes()),
        Ok(httparse::Status::Complete(_))
    )
}

/// Whether one header line parses on its own (the error path only).
fn header_line_ok(line: &str) -> bool {
    let framed = format!("{line}\r\n\r\n");
    let mut one = [httparse::EMPTY_HEADER; 1];
    matches!(
        httparse::parse_headers(framed.as_bytes(), &mut one),
        Ok(httparse::Status::Complete(_))
    )
}

fn bad_header_line(line: &str) -> HeadError {
    HeadError::Malformed(format!("bad header line '{}'", printable(line)))
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

    /// A client that sends one byte per read; counts the reads.
    struct OneByteAtATime<'a> {
        rest: &'a [u8],
        reads: usize,
    }

    impl tokio::io::AsyncRead for OneByteAtATime<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.reads += 1;
            if let Some((&b, rest)) = self.rest.split_first() {
                buf.put_slice(&[b]);
                self.rest = rest;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_scanned_once_and_parsed_once() {
        let head = format!(
            "CONNECT 10.0.0.1:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(4000)
        );
        let mut io = OneByteAtATime {
            rest: head.as_bytes(),
            reads: 0,
        };
        let mut reader = HeadReader::default();
        let (h, rest) = reader.read(&mut io, 8192).await.unwrap();
        assert_eq!(h.target, "10.0.0.1:10250");
        assert!(rest.is_empty());
        assert_eq!(io.reads, head.len(), "one read per byte");
        // Rescanning the whole buffer after every read would examine n(n+1)/2 bytes.
        assert_eq!(
            reader.examined,
            head.len(),
            "every byte scanned for the end of the head exactly once, not {} (a rescan per read)",
            head.len() * (head.len() + 1) / 2
        );
        assert_eq!(reader.parses, 1, "the complete head parsed once");
    }

    #[tokio::test]
    async fn header_syntax_is_checked_and_the_bad_line_named() {
        for (bytes, want) in [
            (
                &b"CONNECT a:1 HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
                "bad header line 'Bad Name: x'",
            ),
            (
                b"CONNECT a:1 HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
                "bad header line ' folded'",
            ),
            (
                b"CONNECT a:1 HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
                "bad header line 'Host: x?X: y'",
            ),
            (
                b"CONNECT a:1 HTTP/1.1 extra\r\n\r\n",
                "bad request line 'CONNECT a:1 HTTP/1.1 extra'; expected 'CONNECT host:port HTTP/1.1'",
            ),
            (
                b"CONNECT a:1 HTTP/2.0\r\n\r\n",
                "bad request line 'CONNECT a:1 HTTP/2.0'; expected 'CONNECT host:port HTTP/1.1'",
            ),
            (
                b"CONNECT a:1 HTTP/1.1\r\nX: \xff\r\n\r\n",
                "the request header is not text",
            ),
        ] {
            assert_eq!(
                head(bytes).await,
                Err(HeadError::Malformed(want.to_string())),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let (h, _) = head(b"CONNECT a:1 HTTP/1.0\r\nX-Empty:\r\nY:  spaced  \r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.version.as_str()),
            ("CONNECT", "HTTP/1.0")
        );
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
