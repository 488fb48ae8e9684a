//! A reverse node's connection as a pool `Link`. The node's ssh client asked for one dynamic
//! reverse forward (`ssh -R [bind:]PORT` without a destination); a dial opens a
//! `forwarded-tcpip` channel that echoes exactly the listen address and port the node asked
//! for (OpenSSH refuses any other), and asks the node's ssh for the destination with SOCKS5
//! inside the channel (`socks`). The channel then behaves as a dialled node's does
//! (`TunnelStream`: pump, buffer budget, spill, EOF both ways).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use russh::server::Handle;
use tokio_util::sync::CancellationToken;

use super::socks;
use crate::error::OpenError;
use crate::metrics::LinkStats;
use crate::node::Node;
use crate::pool::transport::Link;
use crate::ssh::channel_count::{ChannelCount, NoPlace, OpenGuard};
use crate::ssh::congestion::Congestion;
use crate::ssh::opening::Opening;
use crate::ssh::stream::{ChannelCounters, TunnelStream};
use crate::ssh::{HostKeyTrust, SshSettings};

/// The address of the `tcpip-forward` request that measures the round trip (`ping`): a name
/// no client would serve, so the reply is always a refusal.
const RTT_PROBE_ADDRESS: &str = "kube-ssh-tunnel-rtt.invalid";

/// A node's authenticated session with its accepted forward, as the server hands it over.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The node its key names.
    pub(crate) node: String,
    pub(crate) handle: Handle,
    /// The forward's listen address and port as the node sent them (the port: the one we
    /// allocated when it asked for 0).
    pub(crate) listen_address: String,
    pub(crate) listen_port: u32,
    /// `ALG SHA256:…` of the node's key.
    pub(crate) client_key: String,
    /// Cancelled when the session ends.
    pub(crate) closed: CancellationToken,
    pub(crate) disconnect_reason: Arc<Mutex<Option<String>>>,
}

impl Session {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// One node-initiated session, used by the pool like a `NodeTunnel`.
pub struct ReverseLink {
    node: Node,
    name: Arc<str>,
    session: Session,
    /// `ALG SHA256:…` of the node's client key: a reverse connection's "host key" column.
    key_fingerprint: String,
    open_channels: Arc<ChannelCount>,
    link: LinkStats,
    congestion: Arc<Congestion>,
    settings: Arc<SshSettings>,
}

impl std::fmt::Debug for ReverseLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseLink")
            .field("node", &self.node.name)
            .field("client_key", &self.session.client_key)
            .field("listen_port", &self.session.listen_port)
            .finish_non_exhaustive()
    }
}

impl ReverseLink {
    pub(crate) fn new(
        node: &Node,
        session: Session,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> ReverseLink {
        let name: Arc<str> = Arc::from(node.name.as_str());
        let key_fingerprint = session
            .client_key
            .split_once(" (")
            .map_or(session.client_key.as_str(), |(fp, _)| fp)
            .to_string();
        ReverseLink {
            key_fingerprint,
            congestion: Arc::new(Congestion::new(
                name.clone(),
                session.closed.clone(),
                link.clone(),
            )),
            name,
            node: node.clone(),
            session,
            open_channels: Arc::new(ChannelCount::default()),
            link,
            settings,
        }
    }

    async fn open_inner(
        &self,
        host: &str,
        port: u16,
        limit: usize,
    ) -> Result<TunnelStream, OpenError> {
        if self.is_closed() {
            return Err(OpenError::ConnectionLost);
        }
        let place = OpenGuard::reserve(&self.open_channels, limit).map_err(|e| match e {
            NoPlace::Full => OpenError::AtCapacity { limit },
            NoPlace::Closed => OpenError::ConnectionLost,
        })?;
        let handle = self.session.handle.clone();
        let listen_address = self.session.listen_address.clone();
        let listen_port = self.session.listen_port;
        let counters = ChannelCounters {
            open: place,
            link: self.link.clone(),
            congestion: self.congestion.clone(),
        };
        let destination: Arc<str> = Arc::from(crate::destination::join_host_port(host, port));
        // As for dialled nodes (`Opening`): polled here, and a channel the node confirms
        // after its caller gave up is closed, never leaked.
        let opening = Opening::start(
            async move {
                handle
                    .channel_open_forwarded_tcpip(listen_address, listen_port, "127.0.0.1", 0)
                    .await
            },
            self.session.closed.clone(),
            counters,
        );
        let limit = self.settings.open_timeout;
        let opened = async {
            let mut stream = opening
                .into_stream(
                    self.name.clone(),
                    destination,
                    self.settings.channel.clone(),
                )
                .await?;
            // The node's ssh answers SOCKS "granted" before it connects (OpenSSH's dynamic
            // reverse forward): a destination it cannot reach shows only as the stream
            // ending. See docs/reverse.md.
            socks::connect(&mut stream, host, port)
                .await
                .map_err(|e| OpenError::Refused {
                    reason: format!("SOCKS through the node's ssh: {e}"),
                })?;
            Ok(stream)
        };
        tokio::select! {
            r = tokio::time::timeout(limit, opened) => match r {
                Err(_) => Err(OpenError::Timeout { after: limit }),
                Ok(r) => r,
            },
            _ = self.session.closed.cancelled() => Err(OpenError::ConnectionLost),
        }
    }

    async fn disconnect_inner(&self) {
        if let Ok(mut r) = self.session.disconnect_reason.lock() {
            r.get_or_insert_with(|| "closed by kube-ssh-tunnel".to_string());
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.session.handle.disconnect(
                russh::Disconnect::ByApplication,
                "kube-ssh-tunnel closing".into(),
                "en".into(),
            ),
        )
        .await;
        self.session.closed.cancel();
    }
}

impl Link for ReverseLink {
    fn node(&self) -> &Node {
        &self.node
    }

    fn open_limited<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        limit: usize,
    ) -> BoxFuture<'a, Result<TunnelStream, OpenError>> {
        Box::pin(self.open_inner(host, port, limit))
    }

    fn open_channels(&self) -> usize {
        self.open_channels.open()
    }

    fn close_to_new(&self) {
        self.open_channels.close_to_new()
    }

    fn close_if_idle(&self) -> bool {
        self.open_channels.close_if_idle()
    }

    fn idle_for(&self) -> Option<Duration> {
        self.open_channels.idle_for()
    }

    fn is_congested(&self) -> bool {
        self.congestion.is_congested()
    }

    fn is_held_up(&self) -> bool {
        self.congestion.is_held_up()
    }

    fn stalled_channels(&self) -> u64 {
        self.link.stalled.get()
    }

    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.session.closed.cancelled())
    }

    /// russh's server `Handle` has no ping. A global request with want-reply does the round
    /// trip: `tcpip-forward` (russh's `Handle::forward_tcpip` awaits its reply), which the
    /// node's OpenSSH client does not serve and answers with REQUEST_FAILURE
    /// (`client_input_global_request`), touching nothing else. Either reply is the round trip;
    /// a session that ended gives none. Bounded by `limit`.
    fn ping(&self, limit: Duration) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(async move {
            if self.is_closed() {
                return None;
            }
            let started = std::time::Instant::now();
            let reply = tokio::select! {
                r = tokio::time::timeout(
                    limit,
                    self.session.handle.forward_tcpip(RTT_PROBE_ADDRESS.into(), 0),
                ) => r.ok()?,
                _ = self.session.closed.cancelled() => return None,
            };
            let rtt = started.elapsed();
            // Err(()) is the node's REQUEST_FAILURE, or the session going away meanwhile.
            if reply.is_err() && self.is_closed() {
                return None;
            }
            Some(rtt)
        })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.disconnect_inner())
    }

    fn disconnect_reason(&self) -> Option<String> {
        self.session
            .disconnect_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
    }

    /// There is no host key of the node's: the node's own client key (which named it).
    fn host_key(&self) -> &str {
        &self.key_fingerprint
    }

    fn host_key_trust(&self) -> HostKeyTrust {
        HostKeyTrust::NodeDialledIn
    }

    fn client_key(&self) -> &str {
        &self.session.client_key
    }
}
