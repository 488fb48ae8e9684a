//! The seam between the pool and a node connection. The pool (supervisor, dials, extra
//! connections, drain, health probes) talks to a connection only through [`Link`], and makes
//! one only through [`Connector`]. In production a link is a `NodeTunnel` (SSH, dialled by
//! us) or, in reverse mode, a `reverse::ReverseLink` (a session the node opened to us, taken
//! by `reverse::ReverseConnector`); tests put an in-memory link behind the same seam
//! (`pool::fake`), so that races in the pool can be driven under tokio's paused clock.
//!
//! The futures are boxed so that the traits stay object-safe: a box per channel open or
//! connect is nothing beside the SSH round trip it waits for.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::{ConnectError, OpenError};
use crate::metrics::LinkStats;
use crate::node::Node;
use crate::pool::NodeMode;
use crate::ssh::{HostKeyTrust, NodeTunnel, SshSettings, TunnelStream};

/// One live connection to a node, shared (`Arc`) by every dial that uses it.
pub trait Link: Send + Sync + std::fmt::Debug {
    /// The node entry this connection was made for.
    fn node(&self) -> &Node;

    /// Opens a channel to `host:port` as seen from the node, while fewer than `limit` are
    /// open or opening here (`AtCapacity` otherwise). Bounded by the open timeout; a channel
    /// that opens after its caller gave up is closed. `ConnectionLost` means the connection
    /// ended (the dial may wait for a reconnect); `Refused` that the node said no.
    fn open_limited<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        limit: usize,
    ) -> BoxFuture<'a, Result<TunnelStream, OpenError>>;

    /// `open_limited` without a channel limit.
    fn open<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<TunnelStream, OpenError>> {
        self.open_limited(host, port, usize::MAX)
    }

    /// Channels open or being opened here.
    fn open_channels(&self) -> usize;

    /// Closes the connection to new channels (it is being retired); open ones run on. A
    /// later open fails with `ConnectionLost`.
    fn close_to_new(&self);

    /// Closes the connection to new channels only if none is open or opening (atomic with
    /// taking a place: a dial either got its place first, or fails over to another
    /// connection). True if it closed.
    fn close_if_idle(&self) -> bool;

    /// How long no channel has been open here (None while one is).
    fn idle_for(&self) -> Option<Duration>;

    /// True while a new channel here would wait behind a slow reader or bulk data.
    fn is_congested(&self) -> bool;

    /// True while a reader holds up this connection's whole session.
    fn is_held_up(&self) -> bool;

    /// Channels closed because their reader stalled past the limit.
    fn stalled_channels(&self) -> u64;

    /// True once the connection has ended.
    fn is_closed(&self) -> bool;

    /// Resolves when the connection ends.
    fn closed(&self) -> BoxFuture<'_, ()>;

    /// A round trip on the link itself, if answered within `limit`.
    fn ping(&self, limit: Duration) -> BoxFuture<'_, Option<Duration>>;

    /// Ends the connection (its open channels with it).
    fn disconnect(&self) -> BoxFuture<'_, ()>;

    /// Why the connection ended, once it has.
    fn disconnect_reason(&self) -> Option<String>;

    /// `ALG SHA256:…` of the node's verified host key.
    fn host_key(&self) -> &str;

    /// How the node's host key was trusted.
    fn host_key_trust(&self) -> HostKeyTrust;

    /// The client key the connection authenticated with.
    fn client_key(&self) -> &str;
}

/// Makes connections to nodes: the supervisor's, and the extra ones of `overflow`.
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// Connects to `node` and authenticates, within `settings.connect_timeout`. The
    /// connection counts its traffic in `link` (the node's series).
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>>;

    /// How `node`'s connections come (asked at every attempt: the answer may change).
    fn mode(&self, _node: &Node) -> NodeMode {
        NodeMode::Forward
    }

    /// An extra connection (`overflow`): for a reverse node only a session that is already
    /// waiting, never a wait for one. By default the same as `connect`.
    fn connect_extra<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        self.connect(node, settings, link)
    }

    /// Resolves when a connection of node `name` may be there to take at once (reverse
    /// mode: the node's session arrived), so that a backoff wait ends early. Never by
    /// default.
    fn arrival<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
}

/// Dials nodes over SSH (`NodeTunnel`): the production connector.
#[derive(Debug, Default, Clone, Copy)]
pub struct SshConnector;

impl Connector for SshConnector {
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        Box::pin(async move {
            let t = NodeTunnel::connect_with(node, settings, link).await?;
            Ok(Arc::new(t) as Arc<dyn Link>)
        })
    }
}

impl Link for NodeTunnel {
    fn node(&self) -> &Node {
        NodeTunnel::node(self)
    }

    fn open_limited<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        limit: usize,
    ) -> BoxFuture<'a, Result<TunnelStream, OpenError>> {
        Box::pin(NodeTunnel::open_limited(self, host, port, limit))
    }

    fn open_channels(&self) -> usize {
        NodeTunnel::open_channels(self)
    }

    fn close_to_new(&self) {
        self.channel_count().close_to_new()
    }

    fn close_if_idle(&self) -> bool {
        self.channel_count().close_if_idle()
    }

    fn idle_for(&self) -> Option<Duration> {
        self.channel_count().idle_for()
    }

    fn is_congested(&self) -> bool {
        NodeTunnel::is_congested(self)
    }

    fn is_held_up(&self) -> bool {
        NodeTunnel::is_held_up(self)
    }

    fn stalled_channels(&self) -> u64 {
        NodeTunnel::stalled_channels(self)
    }

    fn is_closed(&self) -> bool {
        NodeTunnel::is_closed(self)
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(NodeTunnel::closed(self))
    }

    fn ping(&self, limit: Duration) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(NodeTunnel::ping(self, limit))
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(NodeTunnel::disconnect(self))
    }

    fn disconnect_reason(&self) -> Option<String> {
        NodeTunnel::disconnect_reason(self)
    }

    fn host_key(&self) -> &str {
        NodeTunnel::host_key(self)
    }

    fn host_key_trust(&self) -> HostKeyTrust {
        NodeTunnel::host_key_trust(self)
    }

    fn client_key(&self) -> &str {
        NodeTunnel::client_key(self)
    }
}
