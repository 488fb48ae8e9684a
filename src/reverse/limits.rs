//! The listener's limits. Nodes behind one NAT share a source address, so the limits key on
//! the node's identity, not on the address: at most `--reverse-max-sessions-per-node` live
//! sessions per node (counted by `sessions::Book`), at most
//! `--reverse-max-unauthenticated` connections that have not authenticated yet (all
//! sources together; an extra TCP connection is closed at once, logged at most once per
//! interval), and `--reverse-login-grace` to finish the version exchange and authentication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often, at most, the listener logs connections it closed for the pre-auth cap.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live (authenticated, admitted) sessions one node may hold.
    pub max_sessions_per_node: usize,
    /// Connections that have not authenticated yet, all sources together.
    pub max_unauthenticated: usize,
    /// How long a connection has to finish the version exchange and authentication.
    pub login_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions_per_node: 4,
            max_unauthenticated: 64,
            login_grace: Duration::from_secs(30),
        }
    }
}

/// The connections that have not authenticated yet.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    count: AtomicUsize,
    max: usize,
    /// Closed for the cap since the last log line, and when that line was written.
    dropped: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Unauthenticated {
    pub(crate) fn new(max: usize) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            count: AtomicUsize::new(0),
            max,
            dropped: AtomicU64::new(0),
            last_log: Mutex::new(None),
        })
    }

    /// A slot for a new connection, or None (and a rate-limited log line) at the cap.
    pub(crate) fn enter(self: &Arc<Self>, peer: SocketAddr) -> Option<Arc<PreAuthSlot>> {
        let took = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if took {
            return Some(Arc::new(PreAuthSlot {
                owner: self.clone(),
                held: AtomicBool::new(true),
            }));
        }
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.last_log.lock()
            && last.is_none_or(|t| t.elapsed() >= REFUSED_LOG_INTERVAL)
        {
            *last = Some(Instant::now());
            self.dropped.store(0, Ordering::Relaxed);
            tracing::warn!(%peer, closed = dropped, max = self.max, "reverse listener: {dropped} connection(s) closed at once: {} connections have not authenticated yet (--reverse-max-unauthenticated)", self.max);
        }
        None
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One connection's place under the pre-auth cap, given back once it authenticates or ends.
#[derive(Debug)]
pub(crate) struct PreAuthSlot {
    owner: Arc<Unauthenticated>,
    held: AtomicBool,
}

impl PreAuthSlot {
    /// Gives the place back (once).
    pub(crate) fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.owner.count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_the_extra_connection_and_a_released_slot_frees_a_place() {
        let u = Unauthenticated::new(2);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = u.enter(peer).unwrap();
        let b = u.enter(peer).unwrap();
        assert!(u.enter(peer).is_none());
        a.release();
        a.release();
        assert_eq!(u.count(), 1);
        let c = u.enter(peer).unwrap();
        drop(b);
        drop(c);
        assert_eq!(u.count(), 0);
    }
}
