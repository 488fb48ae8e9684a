//! A node's TCP connection that the listener can cut. russh runs each session on a task of
//! its own and offers no way to abort it; a session that does not act on a disconnect (one
//! still in key exchange, say) would keep its connection open. Cancelling the token makes
//! every read and write of this stream fail, so the session task ends and the socket closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A TCP stream that fails from the moment its token is cancelled.
pub(crate) struct Cuttable {
    inner: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    token: CancellationToken,
}

impl Cuttable {
    pub(crate) fn new(inner: TcpStream, token: CancellationToken) -> Cuttable {
        Cuttable {
            inner,
            cut: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "cut by the reverse listener",
    )
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Polling the token registers this task to wake when it is cancelled.
        if self.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_cut_wakes_a_pending_read_and_fails_it() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let token = CancellationToken::new();
        let mut s = Cuttable::new(server, token.clone());
        let read = tokio::spawn(async move {
            let mut b = [0u8; 1];
            s.read(&mut b).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        token.cancel();
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the read was not woken by the cut")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }
}
