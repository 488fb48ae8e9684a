//! A `TunnelStream` over an in-memory pipe instead of an SSH channel, for the pool's fake
//! transport (`pool::fake`): the pool's tests then hold, end and lose real `TunnelStream`s,
//! with the same channel count (`OpenGuard`) an SSH channel holds, under tokio's paused clock.
//! Only the parts of a stream the pool depends on are here: bytes both ways, EOF, the place in
//! the count given back when the stream ends, and an error (not EOF) when the connection dies.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{ChannelCounters, Shared, TunnelStream};
use crate::ssh::BufferBudget;

impl TunnelStream {
    /// A stream over `io` (the other end is the "node"). Its place in the channel count is
    /// given back when the stream is dropped or `lost` is cancelled (the connection died:
    /// the reader then gets an error after the bytes that arrived).
    pub(crate) fn in_memory(
        io: DuplexStream,
        node: Arc<str>,
        destination: Arc<str>,
        counters: ChannelCounters,
        lost: CancellationToken,
    ) -> TunnelStream {
        let (mut rd, wr) = tokio::io::split(io);
        let shared = Shared::new(
            Arc::new(BufferBudget::new(u64::MAX, None, 0)),
            counters.link.buffered.clone(),
        );
        let pump = shared.clone();
        let place = counters.open;
        tokio::spawn(async move {
            let _place = place;
            let mut buf = vec![0u8; 16 << 10];
            loop {
                if pump.dropped.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    // A lost connection wins over the EOF its far ends' drop causes.
                    biased;
                    _ = lost.cancelled() => {
                        pump.finish(Some((std::io::ErrorKind::ConnectionReset, "the connection to the node was lost")));
                        pump.mark_closed();
                        return;
                    }
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            pump.finish(None);
                            // The "node" ended its side: wait for the stream to go.
                            tokio::select! {
                                _ = wait_dropped(&pump) => {}
                                _ = lost.cancelled() => pump.mark_closed(),
                            }
                            return;
                        }
                        Ok(n) => {
                            let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                            if let Ok(mut st) = pump.recv.lock() {
                                pump.push(&mut st, data, false);
                            }
                        }
                    },
                    _ = pump.event.notified() => {}
                }
            }
        });
        TunnelStream {
            shared,
            tx: Box::pin(wr),
            node,
            destination,
            link: counters.link,
            congestion: counters.congestion,
            write_blocked: false,
            written: 0,
            window_start: Instant::now(),
            bulk_end: None,
        }
    }
}

async fn wait_dropped(shared: &Shared) {
    while !shared.dropped.load(Ordering::Acquire) {
        shared.event.notified().await;
    }
}
