//! `Handshakes`: the TLS listener's bound on connections that have not finished their
//! handshake. A connection takes a CONNECT slot (`FrontLimits::max_connections`) only once
//! its handshake is done, so idle TCP sockets cannot starve real clients of slots; pending
//! handshakes have their own cap and timeout. At the cap the **oldest** pending handshake is
//! dropped to admit the new one: a real client finishes its handshake in milliseconds, so a
//! flood of idle sockets evicts mostly itself, and never holds the listener for the whole
//! handshake timeout.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

/// Pending handshakes, oldest first.
pub struct Handshakes {
    cap: usize,
    pending: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
    evicted: AtomicU64,
}

/// One admitted handshake; leaves the pending set when dropped.
pub struct Admitted<'a> {
    set: &'a Handshakes,
    id: u64,
    /// Cancelled when a newer connection evicted this one.
    pub evicted: CancellationToken,
}

impl Handshakes {
    /// At most `cap` (at least 1) handshakes pending at once.
    pub fn new(cap: usize) -> Handshakes {
        Handshakes {
            cap: cap.max(1),
            pending: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// Admits a new handshake, evicting the oldest pending one at the cap.
    pub fn admit(&self) -> Admitted<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() >= self.cap {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        q.push_back((id, token.clone()));
        Admitted {
            set: self,
            id,
            evicted: token,
        }
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        self.pending.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Pending handshakes dropped to admit newer ones, so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut q = self.set.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_handshake_makes_room() {
        let h = Handshakes::new(2);
        let a = h.admit();
        let b = h.admit();
        assert_eq!(h.pending(), 2);
        let c = h.admit();
        assert!(a.evicted.is_cancelled(), "the oldest goes");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!((h.pending(), h.evicted()), (2, 1));
        drop(b);
        assert_eq!(h.pending(), 1);
        drop(a);
        drop(c);
        assert_eq!(h.pending(), 0);
    }
}
