//! A node's extra connections, for two reasons:
//! - **Never die at the channel ceiling.** OpenSSH's sshd (and `ssh`) abort a connection —
//!   with every channel on it — past 16,384 channels (`CHANNELS_MAX_CHANNELS`). The pool keeps
//!   each connection under `max_channels_per_connection`; a dial that finds the node's
//!   supervised connection full goes to an extra one.
//! - **Isolation.** A new dial does not wait behind a congested connection (a reader behind by
//!   its whole buffer, or bulk data; see `ssh::congestion`): it goes to an uncongested extra
//!   connection of the node.
//!
//! Extras are opened here on demand, one at a time per node, bounded by the connect timeout,
//! the pool's handshake limit and `max_connections_per_node`. No dial ever waits behind
//! another dial: the connection being made (a "growth") runs in its own task, every dial that
//! needs it waits for that one outcome (bounded), and a failed connect is remembered for
//! `FAILED_CONNECT_MEMORY` so that the dials after it do not try again one by one. Channel
//! opens never run under a lock. At the per-node cap a dial takes the least busy connection
//! with room, congested or not: better a slow dial than a failed one.
//!
//! An extra is closed once it has had no channel for `idle_timeout`, measured from the end of
//! its last channel (`ssh::channel_count`), and only if no dial took a place on it meanwhile:
//! the gate and the count are one atomic word, so a dial never lands on a connection that is
//! being retired.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::transport::{Connector, Link};
use crate::error::{ConnectError, OpenError};
use crate::node::Node;
use crate::ssh::stream::LinkStats;
use crate::ssh::{SshSettings, TunnelStream};
use crate::tasks::Tasks;

/// OpenSSH's per-connection channel ceiling; a limit must stay below it.
pub const OPENSSH_CHANNEL_CEILING: usize = 16_384;

/// How long a failed connect to a node keeps the next dials from trying another one.
pub const FAILED_CONNECT_MEMORY: Duration = Duration::from_secs(5);

/// What a growth ended with (shared by every dial waiting for it).
#[derive(Clone, Debug)]
enum Grown {
    Link(Arc<dyn Link>),
    Failed(Arc<ConnectError>),
    /// No handshake permit within the connect timeout (the pool is reconnecting many nodes),
    /// or the daemon is stopping.
    NoHandshake,
}

#[derive(Default)]
struct Growth {
    /// A connection being made: dials wait for its outcome instead of making their own.
    pending: Option<watch::Receiver<Option<Grown>>>,
    /// Which growth `pending` is (each gets the next number).
    pending_id: u64,
    /// The last growth failed, when and why.
    failed: Option<(Instant, Arc<ConnectError>)>,
}

#[derive(Default)]
struct Extras {
    links: Vec<Arc<dyn Link>>,
    /// Counts connections added: a dial that saw none with room and finds the count moved
    /// looks again instead of making another.
    generation: u64,
    /// The node is retired: a growth that ends now disconnects its connection instead.
    retired: bool,
}

/// A node's extra connections.
#[derive(Default)]
pub struct Overflow {
    extras: Arc<Mutex<Extras>>,
    growth: Arc<Mutex<Growth>>,
}

/// Why a dial comes to the extras.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The supervised connection is at the channel limit.
    Capacity,
    /// The supervised connection is congested.
    Isolation,
}

/// What an extra-connection dial needs to know besides the destination.
pub struct OverflowDial<'a> {
    pub node: &'a Node,
    pub reason: Reason,
    /// Per-connection channel limit.
    pub limit: usize,
    /// Most connections to the node, the supervised one included.
    pub max_connections: usize,
    /// The supervised connection (the fallback at the cap), if live.
    pub primary: Option<Arc<dyn Link>>,
    pub settings: &'a Arc<SshSettings>,
    pub link: &'a LinkStats,
    pub handshakes: &'a Arc<Semaphore>,
    pub connector: &'a Arc<dyn Connector>,
    /// Owns the growth task (the pool's tasks).
    pub tasks: &'a Tasks,
}

/// Why a dial found no room on any of a node's connections.
#[derive(Debug)]
pub enum OverflowError {
    Open(OpenError),
    Connect(Arc<ConnectError>),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Overflow {
    /// The live extra connections.
    pub fn tunnels(&self) -> Vec<Arc<dyn Link>> {
        lock(&self.extras)
            .links
            .iter()
            .filter(|t| !t.is_closed())
            .cloned()
            .collect()
    }

    /// How many extra connections are live, and the channels open on them (no allocation:
    /// routing asks this on every dial).
    pub fn load(&self) -> (usize, usize) {
        lock(&self.extras)
            .links
            .iter()
            .filter(|t| !t.is_closed())
            .fold((0, 0), |(n, open), t| (n + 1, open + t.open_channels()))
    }

    /// Takes every extra connection out (node removed or shutting down); the caller drains
    /// them. A connection still being made is disconnected when it is ready.
    pub fn take_all(&self) -> Vec<Arc<dyn Link>> {
        let mut guard = lock(&self.extras);
        guard.retired = true;
        guard.links.drain(..).collect()
    }

    /// Forgets closed extras, and closes to new channels those idle for `idle_timeout`;
    /// returns the latter for the caller to disconnect. One that a dial took a place on
    /// meanwhile stays (the gate and the count are one atomic word).
    pub fn reap(&self, idle_timeout: Duration) -> Vec<Arc<dyn Link>> {
        let mut guard = lock(&self.extras);
        let mut out = Vec::new();
        guard.links.retain(
            |t| match reap_verdict(t.is_closed(), t.idle_for(), idle_timeout) {
                Reap::Forget => false,
                Reap::Keep => true,
                Reap::Close if t.close_if_idle() => {
                    out.push(t.clone());
                    false
                }
                Reap::Close => true,
            },
        );
        out
    }

    /// Live extra connections that are congested now.
    pub fn congested(&self) -> usize {
        lock(&self.extras)
            .links
            .iter()
            .filter(|t| !t.is_closed() && t.is_congested())
            .count()
    }

    /// Opens a channel on an extra connection with room (and, for isolation, not congested),
    /// making a new connection when none has any and the node is under its cap; at the cap,
    /// on the least busy connection with room.
    pub async fn open(
        &self,
        d: OverflowDial<'_>,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OverflowError> {
        let calm = d.reason == Reason::Isolation;
        // The whole wait for new connections is bounded: a growth takes at most the handshake
        // wait and the connect, each at most the connect timeout.
        let deadline = Instant::now() + d.settings.connect_timeout * 2 + Duration::from_secs(1);
        // Each round either finds room, or waits for one new connection (made by this dial
        // or another): at most one round per connection the node may have, plus retries when
        // a connection was added while this dial looked.
        for _ in 0..d.max_connections * 2 {
            let seen = lock(&self.extras).generation;
            if let Some(r) = self.try_existing(host, port, d.limit, calm).await {
                return r;
            }
            let mut rx = match self.join_or_grow(&d, seen) {
                Join::Wait(rx) => rx,
                Join::Retry => continue,
                Join::AtCap => break,
                Join::Retired => return Err(OverflowError::Open(OpenError::ConnectionLost)),
                Join::Remembered(e) => return self.grow_failed(&d, e, host, port).await,
            };
            let outcome = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|v| v.clone()));
            match outcome {
                // In the list now: the next round opens on it (or, if other dials filled it
                // first, grows again).
                Some(Grown::Link(_)) => continue,
                Some(Grown::Failed(e)) => return self.grow_failed(&d, e, host, port).await,
                Some(Grown::NoHandshake) | None => break,
            }
        }
        self.fallback(&d, host, port).await
    }

    /// Joins the growth in progress, or starts one (under the node's cap, unless a connect
    /// failed a moment ago, or a connection was added since the dial looked (`seen`), or the
    /// node is retired). Never awaits.
    fn join_or_grow(&self, d: &OverflowDial<'_>, seen: u64) -> Join {
        let mut g = lock(&self.growth);
        let (retired, generation, live) = {
            let e = lock(&self.extras);
            let live = e.links.iter().filter(|t| !t.is_closed()).count();
            (e.retired, e.generation, live)
        };
        if retired {
            return Join::Retired;
        }
        if let Some(rx) = &g.pending {
            return Join::Wait(rx.clone());
        }
        if generation != seen {
            return Join::Retry;
        }
        if let Some((at, e)) = &g.failed {
            if at.elapsed() < FAILED_CONNECT_MEMORY {
                return Join::Remembered(e.clone());
            }
            g.failed = None;
        }
        if live + 1 >= d.max_connections {
            return Join::AtCap;
        }
        let (tx, rx) = watch::channel(None);
        g.pending = Some(rx.clone());
        g.pending_id += 1;
        let id = g.pending_id;
        drop(g);
        let mut job = GrowJob {
            id,
            settled: false,
            tx,
            node: d.node.clone(),
            reason: d.reason,
            limit: d.limit,
            settings: d.settings.clone(),
            link: d.link.clone(),
            handshakes: d.handshakes.clone(),
            connector: d.connector.clone(),
            extras: self.extras.clone(),
            growth: self.growth.clone(),
            stop: d.tasks.token().clone(),
        };
        d.tasks.spawn(async move {
            let outcome = job.run().await;
            let _ = job.tx.send(Some(outcome));
        });
        Join::Wait(rx)
    }

    /// A connect failed (now or a moment ago): an isolation dial takes a congested
    /// connection instead; a dial at the channel limit has nowhere to go.
    async fn grow_failed(
        &self,
        d: &OverflowDial<'_>,
        e: Arc<ConnectError>,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OverflowError> {
        match d.reason {
            Reason::Isolation => self.fallback(d, host, port).await,
            Reason::Capacity => Err(OverflowError::Connect(e)),
        }
    }

    /// At the per-node cap: the connection with the fewest open channels that has room,
    /// congested or not.
    async fn fallback(
        &self,
        d: &OverflowDial<'_>,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OverflowError> {
        let mut all: Vec<Arc<dyn Link>> = self.tunnels();
        all.extend(d.primary.iter().filter(|t| !t.is_closed()).cloned());
        // Uncongested first, then the least loaded.
        all.sort_by_key(|t| (t.is_congested(), t.open_channels()));
        for t in all {
            match t.open_limited(host, port, d.limit).await {
                Err(OpenError::AtCapacity { .. }) | Err(OpenError::ConnectionLost) => continue,
                r => return r.map_err(OverflowError::Open),
            }
        }
        Err(OverflowError::Open(OpenError::AtCapacity {
            limit: d.limit,
        }))
    }

    async fn try_existing(
        &self,
        host: &str,
        port: u16,
        limit: usize,
        calm_only: bool,
    ) -> Option<Result<TunnelStream, OverflowError>> {
        let mut all = self.tunnels();
        // Uncongested first: a dial at the channel limit would otherwise wait behind a slow
        // reader on an earlier extra while a later one has room.
        all.sort_by_key(|t| t.is_congested());
        for t in all {
            if calm_only && t.is_congested() {
                continue;
            }
            match t.open_limited(host, port, limit).await {
                Err(OpenError::AtCapacity { .. }) | Err(OpenError::ConnectionLost) => continue,
                r => return Some(r.map_err(OverflowError::Open)),
            }
        }
        None
    }
}

/// What a dial does about a new connection.
enum Join {
    /// Wait for this growth's outcome.
    Wait(watch::Receiver<Option<Grown>>),
    /// The node is at its connection cap.
    AtCap,
    /// A connect failed a moment ago.
    Remembered(Arc<ConnectError>),
    /// A connection was added while the dial looked: look again.
    Retry,
    /// The node is retired: no new connection for it.
    Retired,
}

/// One growth: a new extra connection, made in its own task. If the task ends without
/// settling (a panic, or the runtime dropping it), `Drop` clears the growth so that the node
/// can grow again, and wakes the dials waiting for it.
struct GrowJob {
    id: u64,
    settled: bool,
    tx: watch::Sender<Option<Grown>>,
    node: Node,
    reason: Reason,
    limit: usize,
    settings: Arc<SshSettings>,
    link: LinkStats,
    handshakes: Arc<Semaphore>,
    connector: Arc<dyn Connector>,
    extras: Arc<Mutex<Extras>>,
    growth: Arc<Mutex<Growth>>,
    stop: tokio_util::sync::CancellationToken,
}

impl GrowJob {
    async fn run(&mut self) -> Grown {
        let outcome = tokio::select! {
            o = self.connect() => o,
            _ = self.stop.cancelled() => Grown::NoHandshake,
        };
        // Published and cleared under the growth lock, so a dial either joins this growth
        // (and gets its outcome) or sees its connection in the list.
        if let Some(orphan) = self.settle(&outcome) {
            tracing::info!(node = %self.node.name, "node retired while another connection to it was made: closing it");
            orphan.disconnect().await;
            return Grown::NoHandshake;
        }
        outcome
    }

    /// Records the outcome (a new extra, or a failure to remember); returns a connection that
    /// came too late (the node retired meanwhile) for the caller to disconnect.
    fn settle(&mut self, outcome: &Grown) -> Option<Arc<dyn Link>> {
        self.settled = true;
        let mut g = lock(&self.growth);
        g.pending = None;
        match outcome {
            Grown::Link(t) => {
                let mut extras = lock(&self.extras);
                if extras.retired {
                    return Some(t.clone());
                }
                extras.links.push(t.clone());
                extras.generation += 1;
                let count = extras.links.len();
                drop(extras);
                drop(g);
                self.log_opened(count);
            }
            Grown::Failed(e) => {
                g.failed = Some((Instant::now(), e.clone()));
                drop(g);
                match self.reason {
                    Reason::Isolation => {
                        tracing::warn!(node = %self.node.name, error = %e, "could not open another connection to isolate a dial from a congested one; using the congested one")
                    }
                    Reason::Capacity => {
                        tracing::warn!(node = %self.node.name, error = %e, "channel limit reached and another connection to the node failed")
                    }
                }
            }
            Grown::NoHandshake => {}
        }
        None
    }

    async fn connect(&self) -> Grown {
        // The handshake limit is shared by the whole pool: wait for it no longer than a
        // connect may take.
        // A reverse node's extra is a session already waiting: no handshake, no permit.
        let _permit = if self.connector.mode(&self.node) == crate::pool::NodeMode::Reverse {
            None
        } else {
            let permit = tokio::time::timeout(
                self.settings.connect_timeout,
                self.handshakes.clone().acquire_owned(),
            )
            .await;
            let Ok(Ok(permit)) = permit else {
                return Grown::NoHandshake;
            };
            Some(permit)
        };
        match self
            .connector
            .connect_extra(&self.node, self.settings.clone(), self.link.clone())
            .await
        {
            Ok(t) => Grown::Link(t),
            Err(e) => Grown::Failed(Arc::new(e)),
        }
    }

    fn log_opened(&self, extras: usize) {
        match self.reason {
            Reason::Capacity => tracing::info!(
                node = %self.node.name,
                connections = extras + 1,
                limit = self.limit,
                "channel limit reached: opened another connection to the node"
            ),
            Reason::Isolation => {
                self.link.isolation_connections.inc();
                tracing::info!(
                    node = %self.node.name,
                    connections = extras + 1,
                    "the node's connections are congested: opened another one for new dials"
                );
            }
        }
    }
}

impl Drop for GrowJob {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut g = lock(&self.growth);
        if g.pending_id == self.id {
            g.pending = None;
        }
        drop(g);
        let _ = self.tx.send(Some(Grown::NoHandshake));
    }
}

/// What `reap` does with one extra connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reap {
    Keep,
    /// Closed already: forget it.
    Forget,
    /// Idle for the timeout: close it to new channels (if still idle) and disconnect it.
    Close,
}

/// `reap`'s decision for one extra connection: closed ones are forgotten; one without a
/// channel for `idle_timeout` (since its last channel ended) is closed; others are kept.
fn reap_verdict(closed: bool, idle_for: Option<Duration>, idle_timeout: Duration) -> Reap {
    match (closed, idle_for) {
        (true, _) => Reap::Forget,
        (false, Some(d)) if d >= idle_timeout => Reap::Close,
        _ => Reap::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reap_table() {
        let idle = Duration::from_secs(60);
        let s = Duration::from_secs;
        let rows: [(&str, bool, Option<Duration>, Reap); 6] = [
            (
                "a closed connection is forgotten",
                true,
                Some(s(0)),
                Reap::Forget,
            ),
            ("closed wins over busy", true, None, Reap::Forget),
            ("a busy one is kept", false, None, Reap::Keep),
            (
                "a channel ended a moment ago",
                false,
                Some(s(0)),
                Reap::Keep,
            ),
            (
                "idle, not yet for the timeout",
                false,
                Some(s(59)),
                Reap::Keep,
            ),
            (
                "idle for the timeout: closed",
                false,
                Some(s(60)),
                Reap::Close,
            ),
        ];
        for (what, closed, idle_for, verdict) in rows {
            assert_eq!(reap_verdict(closed, idle_for, idle), verdict, "{what}");
        }
    }
}
