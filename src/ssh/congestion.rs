//! `Congestion`: whether an SSH connection can take a new channel without making it wait.
//!
//! A connection is congested while
//! - a channel's pump cannot place the data it received (the reader is behind by its whole
//!   memory and spill share): russh's session loop then waits for that reader, and every
//!   channel of the connection, new ones included, waits with it; or
//! - a channel's writer waited for window space within the last `WRITE_HOLD` (a bulk upload):
//!   sshd's side of the connection is then full of bulk data, ahead of any new channel's open.
//!
//! The pool sends new dials to an uncongested connection of the node (opening one if need be,
//! see `pool::overflow`). Entering and leaving the congested state is logged once each, with
//! the node, the destination that caused it and the bytes buffered, and the time spent
//! congested is counted per node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::stream::LinkStats;

/// A writer that waited for window space this recently still counts as bulk.
const WRITE_HOLD: Duration = Duration::from_millis(250);
/// How often the watcher samples the state while congested.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// One connection's congestion state (shared by its channels and the pool).
#[derive(Debug)]
pub struct Congestion {
    node: Arc<str>,
    born: Instant,
    readers_blocked: AtomicUsize,
    writers_blocked: AtomicUsize,
    /// Milliseconds since `born` of the last writer that waited for window space (+1; 0 never).
    last_write_block: AtomicU64,
    watching: AtomicBool,
    closed: CancellationToken,
    link: LinkStats,
}

/// What made a connection congested (for the log).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// A reader is behind by its whole buffer.
    SlowReader,
    /// A writer is waiting for window space.
    Bulk,
}

impl Congestion {
    pub(crate) fn new(node: Arc<str>, closed: CancellationToken, link: LinkStats) -> Self {
        Congestion {
            node,
            born: Instant::now(),
            readers_blocked: AtomicUsize::new(0),
            writers_blocked: AtomicUsize::new(0),
            last_write_block: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            closed,
            link,
        }
    }

    /// True while new channels on this connection would wait behind a reader or bulk data.
    pub fn is_congested(&self) -> bool {
        if self.readers_blocked.load(Ordering::Acquire) > 0
            || self.writers_blocked.load(Ordering::Acquire) > 0
        {
            return true;
        }
        let last = self.last_write_block.load(Ordering::Acquire);
        last > 0 && self.now_ms() < last - 1 + WRITE_HOLD.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// True while a reader holds up this connection's session (not merely bulk data): a
    /// channel open or a probe on it would wait for that reader.
    pub fn is_held_up(&self) -> bool {
        self.readers_blocked.load(Ordering::Acquire) > 0
    }

    /// A reader fell behind by its whole buffer; `reader_caught_up` ends it.
    pub(crate) fn reader_blocked(self: &Arc<Self>, destination: &str, buffered: u64) {
        self.readers_blocked.fetch_add(1, Ordering::AcqRel);
        self.watch(Cause::SlowReader, destination, buffered);
    }

    pub(crate) fn reader_caught_up(&self) {
        self.readers_blocked.fetch_sub(1, Ordering::AcqRel);
    }

    /// A writer is waiting for window space; `writer_unblocked` ends it.
    pub(crate) fn writer_blocked(self: &Arc<Self>, destination: &str) {
        self.writers_blocked.fetch_add(1, Ordering::AcqRel);
        self.last_write_block
            .store(self.now_ms() + 1, Ordering::Release);
        if !self.watching.load(Ordering::Acquire) {
            self.watch(Cause::Bulk, destination, 0);
        }
    }

    pub(crate) fn writer_unblocked(&self) {
        self.last_write_block
            .store(self.now_ms() + 1, Ordering::Release);
        self.writers_blocked.fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts the watcher unless one runs: it logs the change, counts congested time, and
    /// logs the recovery. It ends when the congestion does or the connection closes.
    fn watch(self: &Arc<Self>, cause: Cause, destination: &str, buffered: u64) {
        if self
            .watching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        match cause {
            Cause::SlowReader => tracing::warn!(
                node = %self.node,
                %destination,
                buffered,
                "connection congested: a reader is behind by its whole buffer; new dials go to another connection of the node"
            ),
            Cause::Bulk => tracing::info!(
                node = %self.node,
                %destination,
                "connection congested by bulk data; new dials go to another connection of the node"
            ),
        }
        let me = self.clone();
        let destination = destination.to_string();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut counted = start;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_TICK) => {}
                    _ = me.closed.cancelled() => break,
                }
                let now = Instant::now();
                me.link
                    .congested_seconds
                    .inc_by(now.duration_since(counted).as_secs_f64());
                counted = now;
                if !me.is_congested() {
                    break;
                }
            }
            me.watching.store(false, Ordering::Release);
            if me.closed.is_cancelled() {
                return;
            }
            tracing::info!(
                node = %me.node,
                %destination,
                congested_for = ?start.elapsed(),
                buffered = me.link.buffered.get(),
                spilled = me.link.spilled.get(),
                "connection no longer congested"
            );
            // A block that came between the last check and the store above lost its chance to
            // start a watcher: watch again.
            if me.is_congested() {
                me.watch(cause, &destination, 0);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (at most 5 s, polling) until `cond` holds; whether it did.
    async fn within_5s(cond: impl Fn() -> bool) -> bool {
        for _ in 0..250 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn bulk_is_held_for_a_moment_and_a_blocked_reader_until_it_catches_up() {
        let c = Arc::new(Congestion::new(
            "n".into(),
            CancellationToken::new(),
            LinkStats::default(),
        ));
        assert!(!c.is_congested());
        assert!(!c.is_held_up());

        // Bulk: congested while the writer waits and for WRITE_HOLD after; never held up.
        c.writer_blocked("d:1");
        assert!(c.is_congested());
        assert!(!c.is_held_up(), "bulk data does not hold the session up");
        c.writer_unblocked();
        assert!(c.is_congested(), "held after the writer moves on");
        assert!(
            within_5s(|| !c.is_congested()).await,
            "bulk congestion clears once WRITE_HOLD has passed"
        );

        // A reader behind by its whole buffer: congested and held up until it catches up,
        // however long that takes (longer than WRITE_HOLD here).
        c.reader_blocked("d:2", 5);
        assert!(c.is_congested(), "a blocked reader congests the connection");
        assert!(c.is_held_up(), "a blocked reader holds the session up");
        tokio::time::sleep(WRITE_HOLD * 2).await;
        assert!(
            c.is_congested() && c.is_held_up(),
            "still congested while the reader is behind"
        );
        c.reader_caught_up();
        assert!(
            !c.is_held_up(),
            "no longer held up once the reader caught up"
        );
        assert!(
            !c.is_congested(),
            "no longer congested once the reader caught up"
        );

        // Two blocked readers: the connection stays congested until both caught up.
        c.reader_blocked("d:3", 5);
        c.reader_blocked("d:4", 5);
        c.reader_caught_up();
        assert!(
            c.is_congested() && c.is_held_up(),
            "one reader still behind"
        );
        c.reader_caught_up();
        assert!(!c.is_congested() && !c.is_held_up());

        // The watcher counted the congested time and ends with the congestion.
        assert!(
            within_5s(|| !c.watching.load(Ordering::Acquire)).await,
            "the watcher ends once the congestion is over"
        );
        assert!(
            c.link.congested_seconds.get() > 0.0,
            "congested time is counted"
        );
    }
}
