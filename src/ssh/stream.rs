//! One dial's byte stream over a `direct-tcpip` channel.
//!
//! Why this is more than russh's `ChannelStream`:
//! - russh refills the SSH window when data arrives, not when the reader consumes it, and
//!   delivers data through a bounded queue per channel: a reader that falls behind would hold
//!   up the whole connection. A **pump task** per channel keeps draining that queue: into
//!   memory up to the channel's share (`ChannelLimits::recv_buffer_max`, within the pool's
//!   `BufferBudget`), then into a private spill file (`ssh::spill`) up to `spill_max`. Only a
//!   reader behind by both stops taking data; its connection then counts as congested
//!   (`ssh::congestion`) and new dials go to another connection of the node while the node
//!   is under its connection cap. If such a reader does not read at all
//!   for `stall_timeout`, its channel is closed with an error. A reader that is slow but
//!   reading is never cut. The stall clock starts at the reader's last read or at the first
//!   byte it has not read, whichever is later (a reader that waited long on a quiet channel
//!   still has the whole timeout for a burst).
//! - Memory goes to readers that read: a channel refused memory by the budget asks the one
//!   that has gone longest without reading (`BufferBudget::press_oldest`) to give its memory
//!   up: it moves to that channel's spill file, or, without spilling, that channel takes no
//!   more memory and its stall clock runs, so that a reader paused with a full buffer does
//!   not keep the budget for good.
//! - Writes after the node closed the channel would wait forever for window space; here they
//!   fail with `BrokenPipe` as soon as the CLOSE arrives. A write waiting for window space
//!   marks its connection as busy with bulk data (`ssh::congestion`), only while the stream
//!   writes fast: one still waiting after its fast spell (its destination stopped reading)
//!   no longer counts.
//! - EOF goes both ways (`shutdown()` sends CHANNEL_EOF; the node's EOF reads as end of
//!   stream, after every byte held in memory or spilled) and the channel is closed once both
//!   directions are done, or when the stream is dropped — a raw russh `Channel` never sends
//!   CLOSE, leaking the target connection on sshd.
//! - A connection lost mid-stream reads as an error (after the bytes that did arrive), never
//!   as a clean (truncated) EOF.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;
use russh::{ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

pub use crate::metrics::LinkStats;

use super::budget::{BufferBudget, Holder};
use super::channel_count::OpenGuard;
use super::congestion::Congestion;
use super::settings::ChannelLimits;
use super::spill::SpillFile;

/// Bound on sending our CLOSE through a congested session.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After both EOFs (or our EOF on a dropped stream), how long we wait for the node to close
/// the channel before we do.
const PEER_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Most bytes moved from a spill file into memory at once.
const REFILL_CHUNK: usize = 256 << 10;
/// A stream counts as bulk (its waits for window space congest its connection) only while it
/// writes fast: at least `BULK_BYTES` within one `BULK_WINDOW`. A small write that waits a
/// moment for the session's queue (as many concurrent dials do) is not bulk, and neither is
/// an upload waiting because its destination reads slowly (no data is in flight then).
const BULK_BYTES: u64 = 512 << 10;
const BULK_WINDOW: Duration = Duration::from_millis(500);
/// A channel with an empty memory buffer may always take this much, budget or not, so that
/// a reader that keeps up is never held up by others' buffers (the budget can be passed by
/// at most this much per channel).
const FREE_CHUNK: usize = 32 << 10;
/// A reader that read this recently (or within its stall timeout, if shorter) counts as
/// reading: another reader refused memory does not ask it to give its memory up.
const PRESS_AFTER: Duration = Duration::from_secs(1);

struct RecvState {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
    /// Of those, bytes charged to the budget (the rest, at most `FREE_CHUNK`, are not).
    charged: usize,
    remote_eof: bool,
    error: Option<(io::ErrorKind, &'static str)>,
    reader: Option<Waker>,
    /// Where the stall clock starts: the reader's last read, or the arrival of the first
    /// byte it has not read (into an empty stream), whichever is later.
    stall_from: Instant,
}

struct Shared {
    recv: Mutex<RecvState>,
    /// Pump waits here for buffer space.
    space: Notify,
    /// Stream → pump: local EOF sent, or stream dropped.
    event: Notify,
    /// Woken when the channel closes, so a write waiting for window space fails.
    writer: AtomicWaker,
    closed: AtomicBool,
    local_eof: AtomicBool,
    dropped: AtomicBool,
    /// Another reader needs the memory this one holds (`Holder::press`): until its reader
    /// reads, it takes no memory of the budget, gives what it holds to its spill file, and
    /// its stall clock runs.
    pressed: AtomicBool,
    budget: Arc<BufferBudget>,
    /// The node's gauge of bytes held in memory.
    buffered_gauge: Gauge,
}

impl Shared {
    /// The state a stream and its pump share, empty: nothing buffered, nothing closed.
    fn new(budget: Arc<BufferBudget>, buffered_gauge: Gauge) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            recv: Mutex::new(RecvState {
                chunks: VecDeque::new(),
                buffered: 0,
                charged: 0,
                remote_eof: false,
                error: None,
                reader: None,
                stall_from: Instant::now(),
            }),
            space: Notify::new(),
            event: Notify::new(),
            writer: AtomicWaker::new(),
            closed: AtomicBool::new(false),
            local_eof: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            pressed: AtomicBool::new(false),
            budget: budget.clone(),
            buffered_gauge,
        });
        let holder: Weak<dyn Holder> = Arc::downgrade(&shared) as Weak<Shared>;
        budget.register(holder);
        shared
    }

    fn wake_reader(st: &mut RecvState) {
        if let Some(w) = st.reader.take() {
            w.wake();
        }
    }

    /// Ends the reader's view: EOF (`None`) or the error, after what is buffered.
    fn finish(&self, error: Option<(io::ErrorKind, &'static str)>) {
        if let Ok(mut st) = self.recv.lock() {
            if st.error.is_none() && !st.remote_eof {
                match error {
                    Some(e) => st.error = Some(e),
                    None => st.remote_eof = true,
                }
            }
            Self::wake_reader(&mut st);
        }
    }

    /// The channel is closed for writing.
    fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.writer.wake();
    }

    /// Gives back the budget of `freed` bytes just taken out of the buffer.
    fn release(&self, st: &mut RecvState, freed: usize) {
        st.buffered -= freed;
        if st.charged > st.buffered {
            self.budget.give_memory((st.charged - st.buffered) as u64);
            st.charged = st.buffered;
        }
        self.buffered_gauge.dec_by(freed as i64);
    }

    /// Drops what memory holds for the reader (it was cut and will get the error instead).
    fn discard(&self, st: &mut RecvState) {
        let held = st.buffered;
        st.chunks.clear();
        self.release(st, held);
    }

    /// Appends a chunk for the reader (`charged`: its bytes were taken from the budget).
    fn push(&self, st: &mut RecvState, data: Bytes, charged: bool) {
        let n = data.len();
        st.buffered += n;
        if charged {
            st.charged += n;
        }
        st.chunks.push_back(data);
        self.buffered_gauge.inc_by(n as i64);
        Self::wake_reader(st);
    }
}

impl Holder for Shared {
    fn holding_since(&self) -> Option<Instant> {
        if self.pressed.load(Ordering::Acquire) {
            return None;
        }
        let st = self.recv.lock().ok()?;
        (st.charged > 0).then_some(st.stall_from)
    }

    fn press(&self) {
        self.pressed.store(true, Ordering::Release);
        self.event.notify_one();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Both the stream and the pump are gone: what was never read gives its share back.
        let st = self.recv.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.give_memory(st.charged as u64);
        self.buffered_gauge.dec_by(st.buffered as i64);
        st.charged = 0;
        st.buffered = 0;
    }
}

/// The counters a channel updates: its place in the connection's channel count (given back
/// when the pump ends), the node's link stats and the connection's congestion state.
pub(crate) struct ChannelCounters {
    pub(crate) open: OpenGuard,
    pub(crate) link: LinkStats,
    pub(crate) congestion: Arc<Congestion>,
}

/// A bidirectional byte stream through one SSH `direct-tcpip` channel (AsyncRead + AsyncWrite).
pub struct TunnelStream {
    shared: Arc<Shared>,
    tx: Pin<Box<dyn AsyncWrite + Send + Sync>>,
    node: Arc<str>,
    destination: Arc<str>,
    link: LinkStats,
    congestion: Arc<Congestion>,
    /// This stream's writer is waiting for window space (counted in `congestion`).
    write_blocked: bool,
    /// Bytes written since `window_start` (see `BULK_BYTES`).
    written: u64,
    window_start: Instant,
    /// Wakes a writer counted as bulk when its window ends, so that one still waiting then
    /// (its destination stopped reading) no longer counts.
    bulk_end: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("node", &self.node)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// Takes over an opened channel to `destination`: spawns its pump and returns the stream.
    /// Generic over the channel's message type: a channel we opened as the client
    /// (`direct-tcpip`) or as the server of a node that dialled in (`forwarded-tcpip`, see
    /// `reverse`) behave the same.
    pub(crate) fn start<M>(
        channel: russh::Channel<M>,
        node: Arc<str>,
        destination: Arc<str>,
        limits: ChannelLimits,
        counters: ChannelCounters,
    ) -> TunnelStream
    where
        M: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        let (read_half, write_half) = channel.split();
        let tx = Box::pin(write_half.make_writer());
        let shared = Shared::new(limits.budget.clone(), counters.link.buffered.clone());
        let pump = Pump {
            shared: shared.clone(),
            limits,
            spill: None,
            spill_broken: false,
            pending: None,
            blocked: false,
            deferred_end: None,
            congestion: counters.congestion.clone(),
            destination: destination.clone(),
            node: node.clone(),
            link: counters.link.clone(),
            _place: counters.open,
        };
        tokio::spawn(pump.run(read_half, write_half));
        TunnelStream {
            shared,
            tx,
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

    /// The node this stream goes through.
    pub fn node(&self) -> &str {
        &self.node
    }
}

enum PumpEnd {
    /// Both sides sent EOF: the node closes the channel (we close only if it does not).
    BothEof,
    /// The stream was dropped: we send EOF and let the node close (bounded), as above.
    Dropped,
    /// The reader stalled, or the spill file failed: we close at once.
    Done,
    /// The node closed the channel (or the connection ended): nothing to send.
    Remote,
}

/// How the reader's view ends once everything held has been delivered.
type ReaderEnd = Option<(io::ErrorKind, &'static str)>;

/// The receive side of one channel (see the module comment).
struct Pump {
    shared: Arc<Shared>,
    limits: ChannelLimits,
    spill: Option<SpillFile>,
    /// Making or writing the spill file failed: no more spilling for this channel.
    spill_broken: bool,
    /// Received but not yet placed (memory and spill are full): the connection waits.
    pending: Option<Bytes>,
    /// Counted as a blocked reader in `congestion`.
    blocked: bool,
    /// The node's EOF or CLOSE came while bytes were still spilled: delivered after them.
    deferred_end: Option<ReaderEnd>,
    congestion: Arc<Congestion>,
    destination: Arc<str>,
    node: Arc<str>,
    link: LinkStats,
    /// The channel's place in its connection's count, given back when the pump ends.
    _place: OpenGuard,
}

/// What one placement attempt did.
enum Placed {
    Yes,
    /// No room anywhere: keep it and wait for the reader.
    No(Bytes),
}

impl Pump {
    async fn run<M>(mut self, mut rx: russh::ChannelReadHalf, wh: russh::ChannelWriteHalf<M>)
    where
        M: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
    {
        let end = self.receive(&mut rx).await;
        self.unblock();
        // After both EOFs sshd closes the channel itself. Let it: in russh 0.65 a channel the
        // client closes first is never removed from the session's channel map (the peer's
        // CLOSE reply is ignored), so closing first leaks ~3.4 KiB per channel for the life of
        // the connection (measured: +17 MiB per 5,000 channels). A dropped stream therefore
        // sends EOF and waits for the node's CLOSE too; we close first only if it does not
        // come in time, or to cut off a stalled reader.
        let end = match end {
            PumpEnd::BothEof | PumpEnd::Dropped => {
                self.drop_held();
                let send_eof = !self.shared.local_eof.load(Ordering::Acquire);
                // Whatever still arrives is discarded (nobody reads it any more), and it is
                // drained *while* our EOF is sent: the session loop may be blocked delivering
                // into this channel's full queue and would not take the EOF before.
                let eof = async {
                    if send_eof {
                        // Tell the node we are done; it then ends its side and closes.
                        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, wh.eof()).await;
                    }
                };
                let closed = tokio::time::timeout(CLOSE_SEND_TIMEOUT + PEER_CLOSE_WAIT, async {
                    loop {
                        match rx.wait().await {
                            Some(ChannelMsg::Close) | None => return true,
                            Some(_) => {}
                        }
                    }
                });
                let ((), peer_closed) = tokio::join!(eof, closed);
                let peer_closed = peer_closed.unwrap_or(false);
                if peer_closed {
                    self.shared.mark_closed();
                    PumpEnd::Remote
                } else {
                    PumpEnd::Done
                }
            }
            other => other,
        };
        // Stop taking this channel's data first: russh's session loop may be blocked
        // delivering into this channel's full queue, and would then never send the CLOSE below.
        drop(rx);
        if let PumpEnd::Done = end {
            self.drop_held();
            // Closing a channel the peer already closed is harmless; a congested session must
            // not hold this task forever.
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, wh.close()).await;
            self.shared.mark_closed();
            self.shared
                .finish(Some((io::ErrorKind::BrokenPipe, "the channel is closed")));
        }
    }

    /// Takes the channel's messages until it ends; then delivers what is still spilled.
    async fn receive(&mut self, rx: &mut russh::ChannelReadHalf) -> PumpEnd {
        let shared = self.shared.clone();
        loop {
            if shared.dropped.load(Ordering::Acquire) {
                return PumpEnd::Dropped;
            }
            if let Err(end) = self.refill() {
                return end;
            }
            if shared.pressed.load(Ordering::Acquire) {
                self.give_up_memory();
            }
            if let Some(data) = self.pending.take() {
                if let Placed::No(data) = self.place(data) {
                    self.pending = Some(data);
                    if let Some(end) = self.wait_for_reader().await {
                        return end;
                    }
                    continue;
                }
                self.unblock();
            }
            let spilled = self.spill.as_ref().is_some_and(|s| !s.is_empty());
            if let Some(end) = self.deferred_end.filter(|_| !spilled) {
                shared.finish(end);
                if end.is_some() || shared.closed.load(Ordering::Acquire) {
                    return PumpEnd::Remote;
                }
                self.deferred_end = None;
            }
            let both_eof = shared.local_eof.load(Ordering::Acquire)
                && shared.recv.lock().map(|s| s.remote_eof).unwrap_or(true);
            if both_eof {
                return PumpEnd::BothEof;
            }
            let rx_open = !shared.closed.load(Ordering::Acquire);
            if !rx_open && !spilled {
                // The node closed the channel and everything was delivered.
                return PumpEnd::Remote;
            }
            // A reader that holds spilled bytes (disk and budget others need), or memory another
            // reader asked for, and does not read at all for the stall timeout loses the
            // channel, even once its source is done.
            let pressed = shared.pressed.load(Ordering::Acquire);
            let (idle, held) = if spilled || pressed {
                shared
                    .recv
                    .lock()
                    .map(|st| (st.stall_from.elapsed(), st.buffered))
                    .unwrap_or_default()
            } else {
                (Duration::ZERO, 0)
            };
            let watched = spilled || (pressed && held > 0);
            let stall_wait = if watched {
                if idle >= self.limits.stall_timeout {
                    let on_disk = self.spill.as_ref().map_or(0, |s| s.len());
                    return self.cut_stalled(idle, held as u64, on_disk);
                }
                self.limits.stall_timeout - idle
            } else {
                Duration::from_secs(3600) // unused: the branch is off when nothing is watched
            };
            let msg = tokio::select! {
                biased;
                _ = shared.event.notified() => continue,
                _ = shared.space.notified(), if watched => continue,
                _ = tokio::time::sleep(stall_wait), if watched => continue,
                msg = rx.wait(), if rx_open && self.deferred_end.is_none() => msg,
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    if !data.is_empty()
                        && let Placed::No(data) = self.place(data)
                    {
                        self.pending = Some(data);
                    }
                }
                Some(ChannelMsg::Eof) => self.end_when_delivered(None),
                Some(ChannelMsg::Close) => {
                    shared.mark_closed();
                    self.end_when_delivered(Some((
                        io::ErrorKind::ConnectionReset,
                        "the node closed the channel without EOF",
                    )));
                }
                None => {
                    shared.mark_closed();
                    self.end_when_delivered(Some((
                        io::ErrorKind::ConnectionAborted,
                        "the SSH connection to the node was lost",
                    )));
                }
                Some(_) => {}
            }
        }
    }

    /// The reader sees the end (`None`: EOF) after every byte held for it.
    fn end_when_delivered(&mut self, end: ReaderEnd) {
        // A CLOSE after EOF is no error: the EOF stands.
        if matches!(self.deferred_end, Some(None)) {
            return;
        }
        self.deferred_end = Some(end);
    }

    /// Puts `data` where the reader will find it, in order: memory while nothing is spilled
    /// and the channel's share and the budget allow, else the spill file.
    fn place(&mut self, mut data: Bytes) -> Placed {
        let n = data.len();
        if self.spill.as_ref().is_none_or(|s| s.is_empty()) {
            let Ok(mut st) = self.shared.recv.lock() else {
                return Placed::Yes;
            };
            if st.buffered == 0 {
                // The first byte the reader has not read: its stall clock starts now.
                st.stall_from = Instant::now();
            }
            let pressed = self.shared.pressed.load(Ordering::Acquire);
            let mut refused = None;
            if st.buffered + n <= self.limits.recv_buffer_max && !pressed {
                if self.limits.budget.take_memory(n as u64) {
                    self.shared.push(&mut st, data, true);
                    return Placed::Yes;
                }
                refused = Some(st.stall_from);
            }
            let placed = if st.buffered == 0 {
                self.shared.push(&mut st, data, false);
                None
            } else {
                Some(data)
            };
            drop(st);
            if let Some(since) = refused {
                self.press_others(since);
            }
            match placed {
                None => return Placed::Yes,
                Some(d) => data = d,
            }
        }
        if !self.open_spill() {
            return Placed::No(data);
        }
        let Some(spill) = self.spill.as_mut() else {
            return Placed::No(data);
        };
        match spill.append(&data) {
            Ok(true) => {
                self.link.spilled.inc_by(n as i64);
                Placed::Yes
            }
            Ok(false) => Placed::No(data),
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "writing the spill file failed; this channel's reader will hold up its connection instead");
                self.spill_broken = true;
                Placed::No(data)
            }
        }
    }

    /// Makes the spill file unless there is one; whether there is one now.
    fn open_spill(&mut self) -> bool {
        if self.spill.is_some() {
            return true;
        }
        if self.spill_broken || self.limits.spill_max == 0 {
            return false;
        }
        let Some(dir) = self.limits.budget.spill_dir() else {
            return false;
        };
        match SpillFile::create(dir, self.limits.spill_max, self.limits.budget.clone()) {
            Ok(f) => {
                self.link.spilled_streams.inc();
                tracing::debug!(node = %self.node, destination = %self.destination, "reader behind: spilling to a file");
                self.spill = Some(f);
                true
            }
            Err(e) => {
                tracing::warn!(node = %self.node, dir = %dir.display(), error = %e, "cannot make a spill file; this channel's reader will hold up its connection instead");
                self.spill_broken = true;
                false
            }
        }
    }

    /// This reader was refused memory: the budget asks the stream that has gone longest
    /// without reading (longer than this reader, whose stall clock started at `since`, and
    /// than `PRESS_AFTER`) to give its memory up.
    fn press_others(&self, since: Instant) {
        let reading = Instant::now()
            .checked_sub(PRESS_AFTER.min(self.limits.stall_timeout))
            .unwrap_or(since);
        self.limits.budget.press_oldest(since.min(reading));
    }

    /// Another reader needs the memory this channel holds: it moves to the spill file when
    /// nothing is spilled yet (else order would break; a channel that spills is on its stall
    /// clock anyway). Without a spill file the memory stays, and the stall clock runs.
    fn give_up_memory(&mut self) {
        if self.spill.as_ref().is_some_and(|s| !s.is_empty()) {
            return;
        }
        let charged = self.shared.recv.lock().map_or(0, |st| st.charged);
        if charged == 0 || !self.open_spill() {
            return;
        }
        let (Some(spill), Ok(mut st)) = (self.spill.as_mut(), self.shared.recv.lock()) else {
            return;
        };
        let parts: Vec<&[u8]> = st.chunks.iter().map(|c| &c[..]).collect();
        match spill.append_all(&parts) {
            Ok(true) => {
                let moved = st.buffered;
                st.chunks.clear();
                self.shared.release(&mut st, moved);
                self.link.spilled.inc_by(moved as i64);
                tracing::debug!(node = %self.node, destination = %self.destination, bytes = moved, "reader not reading: its memory moved to its spill file for readers that read");
            }
            Ok(false) => {}
            Err(e) => {
                drop(st);
                tracing::warn!(node = %self.node, error = %e, "writing the spill file failed; this channel's reader will hold up its connection instead");
                self.spill_broken = true;
                // It held only the part written of what memory still holds.
                self.spill = None;
            }
        }
    }

    /// Moves spilled bytes into memory while the channel's share allows. A spill file that
    /// cannot be read ends the channel with an error (bytes must not go missing silently).
    fn refill(&mut self) -> Result<(), PumpEnd> {
        loop {
            let Some(spill) = self.spill.as_mut().filter(|s| !s.is_empty()) else {
                return Ok(());
            };
            let Ok(mut st) = self.shared.recv.lock() else {
                return Ok(());
            };
            let room = self.limits.recv_buffer_max.saturating_sub(st.buffered);
            let mut want = room.min(REFILL_CHUNK).min(spill.len() as usize);
            let pressed = self.shared.pressed.load(Ordering::Acquire);
            let charged = want > 0 && !pressed && self.limits.budget.take_memory(want as u64);
            if !charged {
                let refused = (want > 0 && !pressed).then_some(st.stall_from);
                if st.buffered > 0 {
                    drop(st);
                    if let Some(since) = refused {
                        self.press_others(since);
                    }
                    return Ok(());
                }
                want = FREE_CHUNK.min(spill.len() as usize);
            }
            match spill.take(want) {
                Ok(data) => {
                    self.link.spilled.dec_by(data.len() as i64);
                    self.shared.push(&mut st, data, charged);
                }
                Err(e) => {
                    if charged {
                        self.limits.budget.give_memory(want as u64);
                    }
                    drop(st);
                    tracing::error!(node = %self.node, destination = %self.destination, error = %e, "reading the spill file failed; closing the channel");
                    self.shared.finish(Some((
                        io::ErrorKind::Other,
                        "reading this channel's spill file failed; channel closed",
                    )));
                    return Err(PumpEnd::Done);
                }
            }
        }
    }

    /// Waits, with data that fits nowhere, until the reader frees space. The connection is
    /// congested meanwhile. A reader that does not read at all for `stall_timeout` loses the
    /// channel (returns the end); one that reads, however slowly, keeps it.
    async fn wait_for_reader(&mut self) -> Option<PumpEnd> {
        let (idle, held) = {
            let st = self.shared.recv.lock().ok()?;
            (st.stall_from.elapsed(), st.buffered)
        };
        let spilled = self.spill.as_ref().map_or(0, |s| s.len());
        if !self.blocked {
            self.blocked = true;
            self.congestion
                .reader_blocked(&self.destination, held as u64 + spilled);
        }
        if idle >= self.limits.stall_timeout {
            return Some(self.cut_stalled(idle, held as u64, spilled));
        }
        let wait = self.limits.stall_timeout.saturating_sub(idle);
        tokio::select! {
            _ = self.shared.space.notified() => {}
            _ = self.shared.event.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        None
    }

    /// Closes the channel of a reader that has not read for `idle` (past the stall timeout)
    /// while it holds up its connection or holds spilled bytes.
    fn cut_stalled(&mut self, idle: Duration, buffered: u64, spilled: u64) -> PumpEnd {
        self.link.stalled.inc();
        tracing::warn!(
            node = %self.node,
            destination = %self.destination,
            buffered,
            spilled,
            stalled_for = ?idle,
            "closing a channel whose reader stopped reading"
        );
        if self.shared.pressed.load(Ordering::Acquire)
            && let Ok(mut st) = self.shared.recv.lock()
        {
            // Another reader needs this memory: the reader gets the error at once.
            self.shared.discard(&mut st);
        }
        self.shared.finish(Some((
            io::ErrorKind::TimedOut,
            "the reader of this channel stalled; channel closed to protect the others",
        )));
        PumpEnd::Done
    }

    /// No longer waiting for the reader (if it was).
    fn unblock(&mut self) {
        if self.blocked {
            self.blocked = false;
            self.congestion.reader_caught_up();
        }
    }

    /// Drops what nobody will read: the pending chunk and the spill file.
    fn drop_held(&mut self) {
        self.pending = None;
        if let Some(s) = self.spill.take() {
            self.link.spilled.dec_by(s.len() as i64);
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.unblock();
        self.drop_held();
        // However the pump ended (even aborted), a reader never waits for it forever.
        self.shared
            .finish(Some((io::ErrorKind::BrokenPipe, "the channel is closed")));
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let Ok(mut st) = shared.recv.lock() else {
            return Poll::Ready(Err(io::Error::other("channel state poisoned")));
        };
        if !st.chunks.is_empty() {
            let mut freed = 0;
            while buf.remaining() > 0 {
                let Some(front) = st.chunks.front_mut() else {
                    break;
                };
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                freed += n;
                if n == front.len() {
                    st.chunks.pop_front();
                } else {
                    let _ = front.split_to(n);
                }
            }
            self.consumed(st, freed);
            return Poll::Ready(Ok(()));
        }
        if let Some((kind, msg)) = st.error {
            return Poll::Ready(Err(io::Error::new(kind, msg)));
        }
        if st.remote_eof {
            return Poll::Ready(Ok(()));
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl TunnelStream {
    /// Reads the next received bytes as they were delivered, at most `max` of them, without
    /// copying them into a caller's buffer: `None` at the end of the stream. For the reader's
    /// budget and stall clock this is a read like `poll_read`.
    pub fn poll_chunk(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let Ok(mut st) = self.shared.recv.lock() else {
            return Poll::Ready(Err(io::Error::other("channel state poisoned")));
        };
        if let Some(front) = st.chunks.front_mut() {
            let chunk = if front.len() <= max.max(1) {
                st.chunks.pop_front().unwrap_or_default()
            } else {
                front.split_to(max.max(1))
            };
            self.consumed(st, chunk.len());
            return Poll::Ready(Ok(Some(chunk)));
        }
        if let Some((kind, msg)) = st.error {
            return Poll::Ready(Err(io::Error::new(kind, msg)));
        }
        if st.remote_eof {
            return Poll::Ready(Ok(None));
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The reader took `freed` bytes out of memory: their budget goes back, the stall clock
    /// restarts, a press is answered, and the pump may place more.
    fn consumed(&self, mut st: std::sync::MutexGuard<'_, RecvState>, freed: usize) {
        self.shared.release(&mut st, freed);
        st.stall_from = Instant::now();
        self.shared.pressed.store(false, Ordering::Release);
        drop(st);
        self.shared.space.notify_one();
        self.link.bytes_in.inc_by(freed as u64);
    }
}

impl TunnelStream {
    fn closed_error() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "the channel is closed")
    }

    fn set_write_blocked(&mut self, blocked: bool) {
        if blocked == self.write_blocked {
            return;
        }
        self.write_blocked = blocked;
        if blocked {
            self.congestion.writer_blocked(&self.destination);
        } else {
            self.congestion.writer_unblocked();
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.shared.local_eof.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        self.shared.writer.register(cx.waker());
        if self.shared.closed.load(Ordering::Acquire) {
            self.set_write_blocked(false);
            return Poll::Ready(Err(Self::closed_error()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let r = self.tx.as_mut().poll_write(cx, buf);
        match &r {
            Poll::Ready(Ok(n)) => {
                self.link.bytes_out.inc_by(*n as u64);
                if self.window_start.elapsed() > BULK_WINDOW {
                    self.window_start = Instant::now();
                    self.written = 0;
                }
                self.written += *n as u64;
                self.set_write_blocked(false);
            }
            Poll::Ready(Err(_)) => self.set_write_blocked(false),
            Poll::Pending => {
                let window_end = self.window_start + BULK_WINDOW;
                let bulk = self.written >= BULK_BYTES && Instant::now() <= window_end;
                self.set_write_blocked(bulk);
                if bulk {
                    // Polled again when the window ends: still waiting then, it is not bulk.
                    let timer = self
                        .bulk_end
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(window_end)));
                    timer.as_mut().reset(window_end);
                    if timer.as_mut().poll(cx).is_ready() {
                        self.set_write_blocked(false);
                    }
                }
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.local_eof.load(Ordering::Acquire)
            || self.shared.closed.load(Ordering::Acquire)
        {
            return Poll::Ready(Ok(()));
        }
        self.shared.writer.register(cx.waker());
        match self.tx.as_mut().poll_shutdown(cx) {
            Poll::Ready(Ok(())) => {
                self.shared.local_eof.store(true, Ordering::Release);
                self.shared.event.notify_one();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.shared.closed.load(Ordering::Acquire) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.set_write_blocked(false);
        self.shared.dropped.store(true, Ordering::Release);
        self.shared.event.notify_one();
        self.shared.space.notify_one();
    }
}

#[cfg(test)]
mod memory;
