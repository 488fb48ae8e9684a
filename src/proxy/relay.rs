//! The relay between a CONNECT client and its tunnel stream, both ways with half-close, like
//! `tokio::io::copy_bidirectional` but without its two zero-filled buffers per connection and
//! without a copy on the way down: the bytes the node sent are written to the client from the
//! very chunks the channel received (`TunnelStream::poll_chunk`), at most `buffer` of them
//! taken at a time (the bound the relay holds, as a read of that size did before). The way up
//! starts with a small buffer, allocated on the first read, and grows to the full size only
//! for a client that fills it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ssh::TunnelStream;

/// The way up starts with a buffer this small: most clients send a request and read.
const FIRST_UP_BUFFER: usize = 4096;

/// One direction's progress.
enum Flow {
    Running,
    /// The source ended; the destination is being shut down.
    ShuttingDown,
    Done,
}

/// Node → client.
struct Down {
    flow: Flow,
    /// Taken from the channel, not yet written: `held` bytes.
    chunks: VecDeque<Bytes>,
    held: usize,
    /// The channel's end, once taken: delivered after `chunks` (`None`: EOF).
    end: Option<Option<io::Error>>,
    need_flush: bool,
    total: u64,
}

/// Client → node.
struct Up {
    flow: Flow,
    /// Allocated on the first read: `FIRST_UP_BUFFER`, then the relay's buffer size once a
    /// read fills it.
    buf: Vec<u8>,
    /// Bytes of `buf` read (`len`) and of those written (`pos`).
    pos: usize,
    len: usize,
    grow: bool,
    need_flush: bool,
    total: u64,
}

/// Relays until both directions are done (or one fails); the bytes sent `(up, down)`.
pub async fn relay<S>(
    client: &mut S,
    tunnel: &mut TunnelStream,
    buffer: usize,
) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let buffer = buffer.max(1);
    let mut down = Down {
        flow: Flow::Running,
        chunks: VecDeque::new(),
        held: 0,
        end: None,
        need_flush: false,
        total: 0,
    };
    let mut up = Up {
        flow: Flow::Running,
        buf: Vec::new(),
        pos: 0,
        len: 0,
        grow: false,
        need_flush: false,
        total: 0,
    };
    poll_fn(|cx| {
        let d = poll_down(cx, &mut down, tunnel, client, buffer)?;
        let u = poll_up(cx, &mut up, client, tunnel, buffer)?;
        match (d, u) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok((up.total, down.total))),
            _ => Poll::Pending,
        }
    })
    .await
}

fn poll_down<S: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    st: &mut Down,
    tunnel: &mut TunnelStream,
    client: &mut S,
    buffer: usize,
) -> Poll<io::Result<()>> {
    loop {
        match st.flow {
            Flow::Done => return Poll::Ready(Ok(())),
            Flow::ShuttingDown => {
                ready!(Pin::new(&mut *client).poll_shutdown(cx))?;
                st.flow = Flow::Done;
            }
            Flow::Running => {
                // Once all that was taken is written, take what the channel holds, up to
                // `buffer` bytes (one read, for the stall clock: a client that leaves part
                // of it unread does not count as reading); the channel's end (EOF or error)
                // comes after every byte taken before it.
                let mut source_pending = false;
                if st.chunks.is_empty() {
                    while st.held < buffer && st.end.is_none() {
                        match tunnel.poll_chunk(cx, buffer - st.held) {
                            Poll::Ready(Ok(Some(c))) => {
                                st.held += c.len();
                                st.chunks.push_back(c);
                            }
                            Poll::Ready(Ok(None)) => st.end = Some(None),
                            Poll::Ready(Err(e)) => st.end = Some(Some(e)),
                            Poll::Pending => {
                                source_pending = true;
                                break;
                            }
                        }
                    }
                }
                if st.chunks.is_empty() {
                    if st.need_flush {
                        ready!(Pin::new(&mut *client).poll_flush(cx))?;
                        st.need_flush = false;
                    }
                    match st.end.take() {
                        Some(Some(e)) => return Poll::Ready(Err(e)),
                        Some(None) => {
                            st.flow = Flow::ShuttingDown;
                            continue;
                        }
                        None if source_pending => return Poll::Pending,
                        None => continue,
                    }
                }
                let n = ready!(write_chunks(cx, client, &st.chunks))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                st.held -= n;
                st.total += n as u64;
                st.need_flush = true;
                let mut left = n;
                while left > 0 {
                    let Some(front) = st.chunks.front_mut() else {
                        break;
                    };
                    if front.len() <= left {
                        left -= front.len();
                        st.chunks.pop_front();
                    } else {
                        let _ = front.split_to(left);
                        left = 0;
                    }
                }
            }
        }
    }
}

/// Most chunks given to one vectored write.
const MAX_SLICES: usize = 16;

/// Writes the held chunks, in one call where the client takes vectored writes.
fn write_chunks<S: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    client: &mut S,
    chunks: &VecDeque<Bytes>,
) -> Poll<io::Result<usize>> {
    let client = Pin::new(client);
    if chunks.len() > 1 && client.is_write_vectored() {
        let slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .take(MAX_SLICES)
            .map(|c| IoSlice::new(c))
            .collect();
        return client.poll_write_vectored(cx, &slices);
    }
    match chunks.front() {
        Some(c) => client.poll_write(cx, c),
        None => Poll::Ready(Ok(0)),
    }
}

fn poll_up<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    st: &mut Up,
    client: &mut S,
    tunnel: &mut TunnelStream,
    buffer: usize,
) -> Poll<io::Result<()>> {
    loop {
        match st.flow {
            Flow::Done => return Poll::Ready(Ok(())),
            Flow::ShuttingDown => {
                ready!(Pin::new(&mut *tunnel).poll_shutdown(cx))?;
                st.flow = Flow::Done;
            }
            Flow::Running => {
                if st.pos == st.len {
                    st.pos = 0;
                    st.len = 0;
                    if st.buf.is_empty() {
                        st.buf = vec![0; FIRST_UP_BUFFER.min(buffer)];
                    }
                    let mut rb = ReadBuf::new(&mut st.buf);
                    match Pin::new(&mut *client).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                if st.need_flush {
                                    ready!(Pin::new(&mut *tunnel).poll_flush(cx))?;
                                }
                                st.flow = Flow::ShuttingDown;
                                continue;
                            }
                            st.len = n;
                            if n == st.buf.len() && n < buffer {
                                // A client that fills the small buffer sends in bulk.
                                st.grow = true;
                            }
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if st.need_flush {
                                ready!(Pin::new(&mut *tunnel).poll_flush(cx))?;
                                st.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                let n = ready!(Pin::new(&mut *tunnel).poll_write(cx, &st.buf[st.pos..st.len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                st.pos += n;
                st.total += n as u64;
                st.need_flush = true;
                if st.pos == st.len && st.grow {
                    st.grow = false;
                    st.buf = vec![0; buffer];
                }
            }
        }
    }
}
