//! A node's extra connections, for two reasons:
//! - **Never die at the channel ceiling.** OpenSSH's sshd (and `ssh`) abort a connection —
//!   with every channel on it — past 16,384 channels (`CHANNELS_MAX_CHANNELS`). The pool keeps
//!   each connection under `max_channels_per_connection`; a dial that finds the node's
//!   supervised connection full goes to an extra one.
//! - **Isolation.** A new dial does not wait behind a congested connection (a reader behind by
//!   its whole buffer, or bulk data; see `ssh::congestion`): it goes to an uncongested extra
//!   connection of the node.
//!
//! Extras are opened here on demand (one at a time per node, bounded by the connect timeout,
//! the pool's handshake limit and `max_connections_per_node`) and closed again once they have
//! been idle for `idle_timeout`. At the per-node cap a dial takes the least busy connection
//! with room, congested or not: better a slow dial than a failed one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::{ConnectError, OpenError};
use crate::node::Node;
use crate::ssh::stream::LinkStats;
use crate::ssh::{NodeTunnel, SshSettings, TunnelStream};

/// OpenSSH's per-connection channel ceiling; a limit must stay below it.
pub const OPENSSH_CHANNEL_CEILING: usize = 16_384;

struct Extra {
    tunnel: Arc<NodeTunnel>,
    /// When it last had no channel (None while busy).
    idle_since: Option<Instant>,
}

/// A node's extra connections.
#[derive(Default)]
pub struct Overflow {
    extras: Mutex<Vec<Extra>>,
    /// Held while a new extra connection is being made, so that a burst of dials at the
    /// ceiling makes one connection, not one each.
    grow: tokio::sync::Mutex<()>,
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
    pub primary: Option<Arc<NodeTunnel>>,
    pub settings: &'a Arc<SshSettings>,
    pub link: &'a LinkStats,
    pub handshakes: &'a Arc<Semaphore>,
}

/// Why a dial found no room on any of a node's connections.
#[derive(Debug)]
pub enum OverflowError {
    Open(OpenError),
    Connect(Arc<ConnectError>),
}

impl Overflow {
    /// The live extra connections.
    pub fn tunnels(&self) -> Vec<Arc<NodeTunnel>> {
        let guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .filter(|e| !e.tunnel.is_closed())
            .map(|e| e.tunnel.clone())
            .collect()
    }

    /// How many extra connections are live, and the channels open on them (no allocation:
    /// routing asks this on every dial).
    pub fn load(&self) -> (usize, usize) {
        let guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .filter(|e| !e.tunnel.is_closed())
            .fold((0, 0), |(n, open), e| {
                (n + 1, open + e.tunnel.open_channels())
            })
    }

    /// Takes every extra connection out (node removed or shutting down); the caller drains them.
    pub fn take_all(&self) -> Vec<Arc<NodeTunnel>> {
        let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard.drain(..).map(|e| e.tunnel).collect()
    }

    /// Removes closed extras, and those idle for `idle_timeout`; returns the idle ones for the
    /// caller to close (a dial that took a place on one meanwhile is drained, not cut).
    pub fn reap(&self, idle_timeout: Duration) -> Vec<Arc<NodeTunnel>> {
        let now = Instant::now();
        let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        guard.retain_mut(|e| {
            let verdict = reap_verdict(
                e.tunnel.is_closed(),
                e.tunnel.open_channels(),
                &mut e.idle_since,
                now,
                idle_timeout,
            );
            if verdict == Reap::Close {
                out.push(e.tunnel.clone());
            }
            verdict == Reap::Keep
        });
        out
    }

    /// Live extra connections that are congested now.
    pub fn congested(&self) -> usize {
        let guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .filter(|e| !e.tunnel.is_closed() && e.tunnel.is_congested())
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
        if let Some(r) = self.try_existing(host, port, d.limit, calm).await {
            return r;
        }
        let growing = self.grow.lock().await;
        // Someone else may have made room while we waited.
        if let Some(r) = self.try_existing(host, port, d.limit, calm).await {
            return r;
        }
        if self.load().0 + 1 >= d.max_connections {
            // Not under the lock: the fallback's opens may wait on congested connections.
            drop(growing);
            return self.fallback(&d, host, port).await;
        }
        // The handshake limit is shared by the whole pool: wait for it no longer than a
        // connect may take.
        let permit = tokio::time::timeout(
            d.settings.connect_timeout,
            d.handshakes.clone().acquire_owned(),
        )
        .await;
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(OverflowError::Open(OpenError::ConnectionLost)),
            Err(_) => {
                drop(growing);
                return self.fallback(&d, host, port).await;
            }
        };
        let tunnel = match NodeTunnel::connect_with(d.node, d.settings.clone(), d.link.clone())
            .await
        {
            Ok(t) => Arc::new(t),
            Err(e) if d.reason == Reason::Isolation => {
                drop(permit);
                drop(growing);
                tracing::warn!(node = %d.node.name, error = %e, "could not open another connection to isolate a dial from a congested one; using the congested one");
                return self.fallback(&d, host, port).await;
            }
            Err(e) => return Err(OverflowError::Connect(Arc::new(e))),
        };
        drop(permit);
        let count = {
            let mut guard = self.extras.lock().unwrap_or_else(|p| p.into_inner());
            guard.push(Extra {
                tunnel: tunnel.clone(),
                idle_since: None,
            });
            guard.len()
        };
        drop(growing);
        match d.reason {
            Reason::Capacity => tracing::info!(
                node = %d.node.name,
                connections = count + 1,
                limit = d.limit,
                "channel limit reached: opened another connection to the node"
            ),
            Reason::Isolation => {
                d.link.isolation_connections.inc();
                tracing::info!(
                    node = %d.node.name,
                    connections = count + 1,
                    "the node's connections are congested: opened another one for new dials"
                );
            }
        }
        tunnel
            .open_limited(host, port, d.limit)
            .await
            .map_err(OverflowError::Open)
    }

    /// At the per-node cap: the connection with the fewest open channels that has room,
    /// congested or not.
    async fn fallback(
        &self,
        d: &OverflowDial<'_>,
        host: &str,
        port: u16,
    ) -> Result<TunnelStream, OverflowError> {
        let mut all: Vec<Arc<NodeTunnel>> = self.tunnels();
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
        for t in self.tunnels() {
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

/// What `reap` does with one extra connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reap {
    Keep,
    /// Closed already: forget it.
    Forget,
    /// Idle for the timeout: take it out and close it.
    Close,
}

/// `reap`'s decision for one extra connection: closed ones are forgotten; a busy one is kept
/// and its idle clock reset; an idle one starts its clock, and is closed once idle for
/// `idle_timeout`.
fn reap_verdict(
    closed: bool,
    open_channels: usize,
    idle_since: &mut Option<Instant>,
    now: Instant,
    idle_timeout: Duration,
) -> Reap {
    if closed {
        return Reap::Forget;
    }
    if open_channels > 0 {
        *idle_since = None;
        return Reap::Keep;
    }
    let since = *idle_since.get_or_insert(now);
    if now.duration_since(since) >= idle_timeout {
        Reap::Close
    } else {
        Reap::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (what, closed, open channels, idle since before, now, verdict, idle since after)
    type Row = (
        &'static str,
        bool,
        usize,
        Option<Instant>,
        Instant,
        Reap,
        Option<Instant>,
    );

    #[test]
    fn reap_table() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let s = |secs| t0 + Duration::from_secs(secs);
        let rows: [Row; 7] = [
            (
                "a closed connection is forgotten",
                true,
                0,
                None,
                s(0),
                Reap::Forget,
                None,
            ),
            (
                "closed wins over busy",
                true,
                5,
                None,
                s(0),
                Reap::Forget,
                None,
            ),
            ("a busy one is kept", false, 1, None, s(0), Reap::Keep, None),
            (
                "a busy one resets its idle clock",
                false,
                1,
                Some(s(0)),
                s(59),
                Reap::Keep,
                None,
            ),
            (
                "a newly idle one starts its clock",
                false,
                0,
                None,
                s(5),
                Reap::Keep,
                Some(s(5)),
            ),
            (
                "idle, not yet for the timeout",
                false,
                0,
                Some(s(0)),
                s(59),
                Reap::Keep,
                Some(s(0)),
            ),
            (
                "idle for the timeout: closed",
                false,
                0,
                Some(s(0)),
                s(60),
                Reap::Close,
                Some(s(0)),
            ),
        ];
        for (what, closed, open, before, now, verdict, after) in rows {
            let mut since = before;
            assert_eq!(
                reap_verdict(closed, open, &mut since, now, idle),
                verdict,
                "{what}"
            );
            assert_eq!(since, after, "{what}");
        }
    }
}
