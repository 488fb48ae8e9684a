//! `BufferBudget`: the pool-wide bound on bytes held for slow readers.
//!
//! russh refills a channel's receive window when data arrives, not when our reader consumes
//! it, so whatever a slow reader has not read yet must be held somewhere or the whole SSH
//! connection stops. Each channel holds up to its own cap in memory and, past that, in a
//! private spill file (see `ssh::spill`); this budget bounds the sum over every channel of the
//! pool, separately for memory and for spill-file space on disk. A channel whose share is
//! refused stops taking data, which holds up its connection: the connection then counts as
//! congested and new dials go to another connection of the node (see `ssh::congestion`).
//!
//! Memory goes to readers that read: the budget knows every stream that may hold memory
//! (`Holder`), and when a reader is refused memory it asks the stream that has gone longest
//! without reading to give its memory up — into its spill file, or, without spilling, by
//! letting its stall clock run so that it is cut unless it reads (see `ssh::stream`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::time::Instant;

/// A stream that may hold memory of the budget for its reader (see `ssh::stream`).
pub(crate) trait Holder: Send + Sync {
    /// When its reader last read or got its first unread byte, if it holds memory charged
    /// to the budget and has not been asked to give it up yet.
    fn holding_since(&self) -> Option<Instant>;
    /// Asks it to give its memory up.
    fn press(&self);
}

/// Default memory budget for buffered channel data, pool-wide.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;
/// Default disk budget for spill files, pool-wide.
pub const DEFAULT_SPILL_BUDGET: u64 = 2 << 30;

/// Where spill files go by default: `$TMPDIR` when set, else `/var/tmp` (on disk; `/tmp` is
/// often a tmpfs, which would turn spilling back into memory).
pub fn default_spill_dir() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Pool-wide limits on bytes held for readers that are behind.
#[derive(Debug)]
pub struct BufferBudget {
    memory_limit: u64,
    memory_used: AtomicU64,
    spill_dir: Option<PathBuf>,
    spill_limit: u64,
    spill_used: AtomicU64,
    /// Every stream that may hold memory (dead ones are pruned as the list grows).
    holders: Mutex<Vec<Weak<dyn Holder>>>,
    /// `press_oldest` found no stream to ask: it does not look again before this time
    /// (milliseconds since `born`), so that a reader behind does not scan every stream for
    /// every packet.
    no_holder_until: AtomicU64,
    born: Instant,
}

/// How long `press_oldest` rests after finding no stream to ask.
const PRESS_REST: std::time::Duration = std::time::Duration::from_millis(100);

impl Default for BufferBudget {
    /// 256 MiB of memory, 2 GiB of spill files in [`default_spill_dir`].
    fn default() -> Self {
        BufferBudget::new(
            DEFAULT_MEMORY_BUDGET,
            Some(default_spill_dir()),
            DEFAULT_SPILL_BUDGET,
        )
    }
}

impl BufferBudget {
    /// A budget of `memory` bytes in memory and `spill` bytes of spill files in `spill_dir`
    /// (no spilling when `spill_dir` is None or `spill` is 0).
    pub fn new(memory: u64, spill_dir: Option<PathBuf>, spill: u64) -> Self {
        BufferBudget {
            memory_limit: memory,
            memory_used: AtomicU64::new(0),
            spill_limit: if spill_dir.is_some() { spill } else { 0 },
            spill_dir,
            spill_used: AtomicU64::new(0),
            holders: Mutex::new(Vec::new()),
            no_holder_until: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The memory budget in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    /// Bytes held in memory now, over all channels.
    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Ordering::Acquire)
    }

    /// The spill budget in bytes (0: no spilling).
    pub fn spill_limit(&self) -> u64 {
        self.spill_limit
    }

    /// Bytes of spill files on disk now, over all channels.
    pub fn spill_used(&self) -> u64 {
        self.spill_used.load(Ordering::Acquire)
    }

    /// Where spill files are made, when spilling is on.
    pub fn spill_dir(&self) -> Option<&Path> {
        self.spill_dir.as_deref().filter(|_| self.spill_limit > 0)
    }

    pub(crate) fn take_memory(&self, n: u64) -> bool {
        take(&self.memory_used, self.memory_limit, n)
    }

    pub(crate) fn give_memory(&self, n: u64) {
        self.memory_used.fetch_sub(n, Ordering::AcqRel);
    }

    pub(crate) fn take_spill(&self, n: u64) -> bool {
        take(&self.spill_used, self.spill_limit, n)
    }

    pub(crate) fn give_spill(&self, n: u64) {
        self.spill_used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Lists a stream that may hold memory, for `press_oldest`.
    pub(crate) fn register(&self, holder: Weak<dyn Holder>) {
        let Ok(mut holders) = self.holders.lock() else {
            return;
        };
        if holders.len() == holders.capacity() {
            // Pruned before the list would grow: it stays within twice the live streams.
            holders.retain(|h| h.strong_count() > 0);
        }
        holders.push(holder);
    }

    /// A reader was refused memory: asks the stream that has gone longest without reading,
    /// if that is since before `than`, to give its memory up. Whether one was asked.
    /// The caller holds no stream's lock (this takes each holder's).
    pub(crate) fn press_oldest(&self, than: Instant) -> bool {
        let now_ms = self.born.elapsed().as_millis() as u64;
        if now_ms < self.no_holder_until.load(Ordering::Acquire) {
            return false;
        }
        let oldest = {
            let Ok(mut holders) = self.holders.lock() else {
                return false;
            };
            holders.retain(|h| h.strong_count() > 0);
            let mut oldest: Option<(Instant, Arc<dyn Holder>)> = None;
            for h in holders.iter().filter_map(Weak::upgrade) {
                if let Some(since) = h.holding_since()
                    && since < than
                    && oldest.as_ref().is_none_or(|(o, _)| since < *o)
                {
                    oldest = Some((since, h));
                }
            }
            oldest
        };
        match oldest {
            Some((_, h)) => {
                h.press();
                true
            }
            None => {
                self.no_holder_until
                    .store(now_ms + PRESS_REST.as_millis() as u64, Ordering::Release);
                false
            }
        }
    }
}

/// Adds `n` to `used` unless that would pass `limit` (a CAS, so concurrent takers cannot
/// overshoot together).
fn take(used: &AtomicU64, limit: u64, n: u64) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(n).filter(|t| *t <= limit)
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back() {
        let b = BufferBudget::new(100, None, 50);
        assert!(b.take_memory(60));
        assert!(!b.take_memory(41), "60 + 41 passes 100");
        assert!(b.take_memory(40));
        assert_eq!(b.memory_used(), 100);
        b.give_memory(100);
        assert_eq!(b.memory_used(), 0);
        assert_eq!(b.spill_limit(), 0, "no directory, no spilling");
        assert!(!b.take_spill(1));
        assert!(b.spill_dir().is_none());
    }

    #[test]
    fn spill_needs_a_directory_and_a_nonzero_budget() {
        let b = BufferBudget::new(1, Some("/tmp".into()), 0);
        assert!(b.spill_dir().is_none());
        let b = BufferBudget::new(1, Some("/tmp".into()), 10);
        assert!(b.spill_dir().is_some());
        assert!(b.take_spill(10));
        assert!(!b.take_spill(1));
    }

    struct H {
        since: Option<Instant>,
        pressed: std::sync::atomic::AtomicBool,
    }

    impl Holder for H {
        fn holding_since(&self) -> Option<Instant> {
            self.since.filter(|_| !self.pressed.load(Ordering::Acquire))
        }
        fn press(&self) {
            self.pressed.store(true, Ordering::Release);
        }
    }

    #[test]
    fn a_refused_reader_presses_the_holder_that_has_not_read_for_longest_first() {
        let b = BufferBudget::new(100, None, 0);
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs(1);
        let h = |since: Option<Instant>| {
            Arc::new(H {
                since,
                pressed: Default::default(),
            })
        };
        let (old, older, reading, empty) =
            (h(Some(t0 + s)), h(Some(t0)), h(Some(t0 + 5 * s)), h(None));
        for x in [&old, &older, &reading, &empty] {
            let w: Weak<dyn Holder> = Arc::downgrade(x) as Weak<H>;
            b.register(w);
        }
        let pressed = |x: &Arc<H>| x.pressed.load(Ordering::Acquire);
        assert!(b.press_oldest(t0 + 3 * s));
        assert!(
            pressed(&older) && !pressed(&old),
            "the one idle longest first"
        );
        assert!(b.press_oldest(t0 + 3 * s));
        assert!(pressed(&old));
        assert!(
            !b.press_oldest(t0 + 3 * s),
            "a holder that read more recently than the asker is left alone, so is one holding nothing"
        );
        assert!(!pressed(&reading) && !pressed(&empty));
        assert!(
            !b.press_oldest(t0 + 9 * s),
            "after finding none it rests a moment (`reading` would qualify now)"
        );
        assert!(!pressed(&reading));
        b.no_holder_until.store(0, Ordering::Release);
        drop(reading);
        assert!(
            !b.press_oldest(t0 + 9 * s),
            "a dropped stream is forgotten (alive, it would be pressed now)"
        );
    }
}
