//! The TCP socket under an SSH connection. russh's `connect_stream` ignores `Config.nodelay`,
//! and sshd does not set TCP_NODELAY on forwarding-only sessions, so small packets wait for
//! delayed ACKs (~40 ms per channel open, measured against `ssh -L` on loopback). We set
//! NODELAY ourselves and re-arm TCP_QUICKACK after each receive that empties the socket
//! (Linux).
//!
//! russh reads a packet in two reads (its 4-byte length, then the rest), and tries the next
//! length until the socket says EAGAIN. Small reads are therefore served from a small
//! read-ahead buffer here: one `recvfrom` takes a whole small packet (or several), so a dial
//! costs about half the receives and QUICKACKs it did, and no EAGAIN. Large reads (the body of
//! a bulk packet) go straight into russh's buffer, so bulk data is not copied once more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Read-ahead for small reads; a read asking for at least this much bypasses it.
const READ_AHEAD: usize = 2048;

/// A `TcpStream` with NODELAY, TCP_QUICKACK re-armed after each receive that empties the
/// socket, and a small read-ahead buffer for russh's small reads.
pub struct QuickAckStream {
    inner: TcpStream,
    /// Received, not yet read: `ahead[pos..len]`.
    ahead: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl QuickAckStream {
    /// Wraps a connected stream and turns NODELAY on.
    pub fn new(inner: TcpStream) -> io::Result<Self> {
        inner.set_nodelay(true)?;
        let s = Self {
            inner,
            ahead: vec![0; READ_AHEAD].into_boxed_slice(),
            pos: 0,
            len: 0,
        };
        s.rearm();
        Ok(s)
    }

    fn rearm(&self) {
        #[cfg(target_os = "linux")]
        {
            // Best effort: failure only costs latency.
            let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
        }
    }

    /// After a receive of `got` bytes into room for `asked`: a receive that did not fill its
    /// buffer emptied the socket, and we now wait for the peer, so its next packets must be
    /// acknowledged at once (the kernel leaves quick-ACK mode as soon as we answer data).
    fn received(&self, got: usize, asked: usize) {
        if got > 0 && got < asked {
            self.rearm();
        }
    }
}

impl AsyncRead for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.len {
            let n = buf.remaining().min(this.len - this.pos);
            buf.put_slice(&this.ahead[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= this.ahead.len() {
            let before = buf.filled().len();
            let asked = buf.remaining();
            let res = Pin::new(&mut this.inner).poll_read(cx, buf);
            if matches!(res, Poll::Ready(Ok(()))) {
                this.received(buf.filled().len() - before, asked);
            }
            return res;
        }
        let mut ahead = ReadBuf::new(&mut this.ahead);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {
                let got = ahead.filled().len();
                this.received(got, this.ahead.len());
                let n = buf.remaining().min(got);
                buf.put_slice(&this.ahead[..n]);
                this.pos = n;
                this.len = got;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Reads of every size, from the read-ahead and straight from the socket, in any mix,
    /// give back the bytes in order and then EOF; writes pass through.
    #[tokio::test]
    async fn reads_of_any_size_through_the_read_ahead_keep_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let peer = tokio::spawn({
            let sent = sent.clone();
            async move {
                let (mut s, _) = listener.accept().await.unwrap();
                // In pieces, so that reads find small and large amounts waiting.
                for piece in sent.chunks(3001) {
                    s.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                back
            }
        });
        let mut s = QuickAckStream::new(TcpStream::connect(addr).await.unwrap()).unwrap();
        let sizes = [4, 32, 1, 5000, 2047, 2048, 3, 70_000, 16];
        let mut got = Vec::new();
        let mut i = 0;
        loop {
            let mut buf = vec![0u8; sizes[i % sizes.len()]];
            i += 1;
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            assert!(got.len() <= sent.len(), "more bytes than were sent");
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes came back out of order");
        s.write_all(b"back").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(peer.await.unwrap(), b"back");
    }
}
