//! A connection's count of open channels, with the gate a connection closes when it retires.
//!
//! Why one atomic word: a dial takes its place on a connection (`OpenGuard::reserve`) and the
//! pool retires a connection (reaping an idle extra one, draining a replaced one) from
//! different tasks. If "is it idle?" and "close it to new channels" were two steps, a dial
//! could take a place between them and land on a connection that is about to be closed (its
//! stream then cut at the drain timeout). With the count and the gate in one word, a place is
//! taken only while the gate is open, and an idle connection is closed only while no place is
//! taken: one of the two always wins cleanly.
//!
//! The count also records when the connection last had a channel end (or began), so that
//! idleness is measured, not sampled: an extra connection that serves short requests between
//! two looks of the reaper is not idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The gate bit: set once the connection takes no new channels.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Why a place could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPlace {
    /// `limit` channels are open or opening.
    Full,
    /// The connection is retiring: it takes no new channels.
    Closed,
}

/// Open channels of one connection, and its gate (see the module comment).
#[derive(Debug)]
pub struct ChannelCount {
    word: AtomicUsize,
    /// When a channel last ended, or the connection began (for `idle_for`).
    last_release: Mutex<Instant>,
}

impl Default for ChannelCount {
    fn default() -> Self {
        ChannelCount {
            word: AtomicUsize::new(0),
            last_release: Mutex::new(Instant::now()),
        }
    }
}

impl ChannelCount {
    /// Channels open or being opened.
    pub fn open(&self) -> usize {
        self.word.load(Ordering::Acquire) & !CLOSED
    }

    /// True once the gate is closed.
    pub fn is_closed_to_new(&self) -> bool {
        self.word.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Closes the gate whatever is open (a connection being drained): channels already open
    /// run on.
    pub fn close_to_new(&self) {
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
    }

    /// Closes the gate only if no channel is open or opening; false (and nothing changes)
    /// otherwise. The reaper retires an idle connection this way.
    pub fn close_if_idle(&self) -> bool {
        self.word
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// How long the connection has had no channel: None while one is open.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open() > 0 {
            return None;
        }
        let since = *self.last_release.lock().unwrap_or_else(|p| p.into_inner());
        Some(Instant::now().saturating_duration_since(since))
    }

    fn released(&self) {
        *self.last_release.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.word.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One place in a connection's channel count, taken before the channel is opened (so that
/// concurrent opens cannot overshoot a limit) and given back when dropped.
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<ChannelCount>);

impl OpenGuard {
    /// Takes a place when the gate is open and fewer than `limit` are taken.
    pub(crate) fn reserve(count: &Arc<ChannelCount>, limit: usize) -> Result<OpenGuard, NoPlace> {
        let mut refused = NoPlace::Full;
        count
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if n & CLOSED != 0 {
                    refused = NoPlace::Closed;
                    return None;
                }
                refused = NoPlace::Full;
                (n < limit).then_some(n + 1)
            })
            .map(|_| OpenGuard(count.clone()))
            .map_err(|_| refused)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.released();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_gate_and_the_count_never_both_win() {
        let c = Arc::new(ChannelCount::default());
        let a = OpenGuard::reserve(&c, 2).unwrap();
        let b = OpenGuard::reserve(&c, 2).unwrap();
        assert_eq!(OpenGuard::reserve(&c, 2).unwrap_err(), NoPlace::Full);
        assert_eq!(c.open(), 2);
        // Busy: an idle-only close refuses, and the count is untouched.
        assert!(!c.close_if_idle());
        assert_eq!(c.idle_for(), None);
        drop(a);
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(b);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Idle since the last release, not since the first.
        assert_eq!(c.idle_for(), Some(Duration::from_secs(2)));
        assert!(c.close_if_idle());
        assert!(c.is_closed_to_new());
        assert_eq!(c.open(), 0);
        assert_eq!(OpenGuard::reserve(&c, 2).unwrap_err(), NoPlace::Closed);
    }

    #[test]
    fn closing_a_busy_connection_keeps_its_channels_counted() {
        let c = Arc::new(ChannelCount::default());
        let a = OpenGuard::reserve(&c, 8).unwrap();
        c.close_to_new();
        assert_eq!(c.open(), 1);
        assert_eq!(OpenGuard::reserve(&c, 8).unwrap_err(), NoPlace::Closed);
        drop(a);
        assert_eq!(c.open(), 0);
        assert!(c.is_closed_to_new());
    }
}
