//! The listener's limits. Nodes behind one NAT share a source address, so the limits key on
//! the node's identity, not on the address: at most `--reverse-max-sessions-per-node` live
//! sessions per node (counted by `sessions::Book`), at most
//! `--reverse-max-unauthenticated` connections that have not authenticated yet (all
//! sources together; an extra TCP connection is closed at once, logged at most once per
//! interval), and `--reverse-login-grace` to finish the version exchange and authentication.
//! `--reverse-max-unauthenticated-per-source` (off by default, as OpenSSH's
//! `PerSourceMaxStartups`) caps one source address's share of the pre-auth places, so one
//! address cannot hold them all; nodes behind one NAT count as one source.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::refusals::{RefusalLog, held_back};

/// How often, at most, the listener logs connections it closed for the pre-auth cap.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live (authenticated, admitted) sessions one node may hold.
    pub max_sessions_per_node: usize,
    /// Connections that have not authenticated yet, all sources together.
    pub max_unauthenticated: usize,
    /// Connections from one source address that have not authenticated yet (None: no such
    /// limit).
    pub max_unauthenticated_per_source: Option<usize>,
    /// How long a connection has to finish the version exchange and authentication.
    pub login_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions_per_node: 4,
            max_unauthenticated: 64,
            max_unauthenticated_per_source: None,
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
    /// With a per-source limit: that limit, and the places each source holds.
    per_source: Option<(usize, Mutex<HashMap<IpAddr, usize>>)>,
    /// Rate limits for the per-source closes' log lines (one per source).
    refusals: RefusalLog,
}

impl Unauthenticated {
    pub(crate) fn new(max: usize, per_source: Option<usize>) -> Arc<Unauthenticated> {
        Arc::new(Unauthenticated {
            count: AtomicUsize::new(0),
            max,
            dropped: AtomicU64::new(0),
            last_log: Mutex::new(None),
            // A share of 0 would refuse every connection: at least one place per source.
            per_source: per_source.map(|n| (n.max(1), Mutex::new(HashMap::new()))),
            refusals: RefusalLog::default(),
        })
    }

    /// A slot for a new connection, or None (and a rate-limited log line) at a cap.
    pub(crate) fn enter(self: &Arc<Self>, peer: SocketAddr) -> Option<Arc<PreAuthSlot>> {
        let source = peer.ip().to_canonical();
        // The source's share first, under its lock, so two connections from one source
        // cannot both take its last place.
        let mut held = None;
        if let Some((limit, map)) = &self.per_source {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(source).or_default();
            if *n >= *limit {
                drop(m);
                if let Some(held) = self.refusals.admit("per-source cap", &source.to_string()) {
                    let more = held_back(held);
                    tracing::warn!(%peer, max = *limit, held, "reverse listener: a connection from {source} closed at once: {limit} connections from it have not authenticated yet (--reverse-max-unauthenticated-per-source){more}");
                }
                return None;
            }
            *n += 1;
            held = Some(source);
        }
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
                source: held,
            }));
        }
        if let Some(source) = held {
            self.leave_source(source);
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

    /// Gives back one place of `source`'s share.
    fn leave_source(&self, source: IpAddr) {
        if let Some((_, map)) = &self.per_source {
            let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = m.get_mut(&source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&source);
                }
            }
        }
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Sources holding a place now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.per_source
            .as_ref()
            .map_or(0, |(_, m)| m.lock().unwrap().len())
    }
}

/// One connection's place under the pre-auth cap, given back once it authenticates or ends.
#[derive(Debug)]
pub(crate) struct PreAuthSlot {
    owner: Arc<Unauthenticated>,
    held: AtomicBool,
    /// The source whose share it counts in, with a per-source limit.
    source: Option<IpAddr>,
}

impl PreAuthSlot {
    /// Gives the place back (once).
    pub(crate) fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.owner.count.fetch_sub(1, Ordering::AcqRel);
            if let Some(source) = self.source {
                self.owner.leave_source(source);
            }
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
        let u = Unauthenticated::new(2, None);
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

    #[test]
    fn one_source_holds_at_most_its_share_and_other_sources_still_get_in() {
        let u = Unauthenticated::new(4, Some(2));
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let a2: SocketAddr = "192.0.2.1:2".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1".parse().unwrap();
        // The same address as IPv4 and as IPv4-mapped IPv6 is one source.
        let a_mapped: SocketAddr = "[::ffff:192.0.2.1]:3".parse().unwrap();
        let x = u.enter(a).unwrap();
        let y = u.enter(a2).unwrap();
        assert!(u.enter(a_mapped).is_none(), "a third place for one source");
        let z = u.enter(b).unwrap();
        assert_eq!((u.count(), u.sources()), (3, 2));
        x.release();
        x.release();
        let again = u.enter(a_mapped).unwrap();
        drop((y, z, again));
        assert_eq!((u.count(), u.sources()), (0, 0));
        // A source refused by the global cap gives its share back.
        let full = Unauthenticated::new(1, Some(1));
        let first = full.enter(a).unwrap();
        assert!(full.enter(b).is_none());
        assert_eq!(full.sources(), 1);
        drop(first);
        assert_eq!(full.sources(), 0);
    }
}
