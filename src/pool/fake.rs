//! An in-memory node connection behind the transport seam (`pool::transport`), for tests of
//! the pool under tokio's paused clock: connects that succeed, fail or hang, channels that
//! open, are refused or hang (chosen by the destination host), connections that die or turn
//! congested on command. Every connection ever made stays listed, so a test can check that
//! none outlives its node. Test-only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::transport::{Connector, Link};
use crate::error::{ConnectError, OpenError};
use crate::metrics::LinkStats;
use crate::node::Node;
use crate::ssh::channel_count::{ChannelCount, NoPlace, OpenGuard};
use crate::ssh::stream::ChannelCounters;
use crate::ssh::{Congestion, HostKeyTrust, SshSettings, TunnelStream};

/// A channel open to this host hangs until the open timeout.
pub(crate) const HANG_HOST: &str = "hang.invalid";
/// A channel open to this host is refused by the "node".
pub(crate) const REFUSE_HOST: &str = "refuse.invalid";
/// How long a connect and a channel open take on the fake network.
pub(crate) const CONNECT_TIME: Duration = Duration::from_millis(100);
pub(crate) const OPEN_TIME: Duration = Duration::from_millis(5);

/// What a connect to a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectMode {
    Ok,
    Fail,
    /// Until the connect timeout.
    Hang,
    /// The connect panics (a bug in a connector must not wedge the pool).
    Panic,
}

/// The fake network: how connects behave per node, and every connection made.
#[derive(Debug, Default)]
pub(crate) struct FakeNet {
    modes: Mutex<HashMap<String, ConnectMode>>,
    links: Mutex<Vec<Arc<FakeLink>>>,
    connects: AtomicUsize,
}

impl FakeNet {
    pub(crate) fn set_connect(&self, node: &str, mode: ConnectMode) {
        self.modes.lock().unwrap().insert(node.to_string(), mode);
    }

    /// Every connection made so far.
    pub(crate) fn links(&self) -> Vec<Arc<FakeLink>> {
        self.links.lock().unwrap().clone()
    }

    /// The live connections to `node`.
    pub(crate) fn live(&self, node: &str) -> Vec<Arc<FakeLink>> {
        self.links()
            .into_iter()
            .filter(|l| l.node.name == node && !l.is_closed())
            .collect()
    }

    /// Connect attempts so far.
    pub(crate) fn connects(&self) -> usize {
        self.connects.load(Ordering::Relaxed)
    }
}

/// The connector of a `FakeNet`.
#[derive(Debug, Clone)]
pub(crate) struct FakeConnector(pub(crate) Arc<FakeNet>);

impl Connector for FakeConnector {
    fn connect<'a>(
        &'a self,
        node: &'a Node,
        settings: Arc<SshSettings>,
        link: LinkStats,
    ) -> BoxFuture<'a, Result<Arc<dyn Link>, ConnectError>> {
        Box::pin(async move {
            let net = &self.0;
            net.connects.fetch_add(1, Ordering::Relaxed);
            let mode = net
                .modes
                .lock()
                .unwrap()
                .get(&node.name)
                .copied()
                .unwrap_or(ConnectMode::Ok);
            match mode {
                ConnectMode::Ok => {
                    tokio::time::sleep(CONNECT_TIME).await;
                    let closed = CancellationToken::new();
                    let name: Arc<str> = Arc::from(node.name.as_str());
                    let l = Arc::new(FakeLink {
                        node: node.clone(),
                        count: Arc::new(ChannelCount::default()),
                        congestion: Arc::new(Congestion::new(
                            name.clone(),
                            closed.clone(),
                            link.clone(),
                        )),
                        closed,
                        congested: AtomicBool::new(false),
                        settings,
                        link,
                        ends: Mutex::new(Vec::new()),
                    });
                    net.links.lock().unwrap().push(l.clone());
                    Ok(l as Arc<dyn Link>)
                }
                ConnectMode::Fail => {
                    tokio::time::sleep(CONNECT_TIME).await;
                    Err(ConnectError::Handshake {
                        node: node.name.clone(),
                        reason: "the fake node refused the handshake".into(),
                    })
                }
                ConnectMode::Panic => panic!("the fake connector panics on purpose"),
                ConnectMode::Hang => {
                    tokio::time::sleep(settings.connect_timeout).await;
                    Err(ConnectError::Timeout {
                        node: node.name.clone(),
                        stage: "handshake",
                        after: settings.connect_timeout,
                    })
                }
            }
        })
    }
}

/// One fake connection.
#[derive(Debug)]
pub(crate) struct FakeLink {
    node: Node,
    count: Arc<ChannelCount>,
    congestion: Arc<Congestion>,
    closed: CancellationToken,
    congested: AtomicBool,
    settings: Arc<SshSettings>,
    link: LinkStats,
    /// The "node" ends of the channels opened here.
    ends: Mutex<Vec<tokio::io::DuplexStream>>,
}

impl FakeLink {
    /// The connection dies (every channel on it errors).
    pub(crate) fn kill(&self) {
        self.closed.cancel();
        self.ends.lock().unwrap().clear();
    }

    pub(crate) fn set_congested(&self, on: bool) {
        self.congested.store(on, Ordering::Release);
    }

    /// Whether the reaper or a drain closed this connection to new channels.
    pub(crate) fn closed_to_new(&self) -> bool {
        self.count.is_closed_to_new()
    }
}

impl Link for FakeLink {
    fn node(&self) -> &Node {
        &self.node
    }

    fn open_limited<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        limit: usize,
    ) -> BoxFuture<'a, Result<TunnelStream, OpenError>> {
        Box::pin(async move {
            if self.is_closed() {
                return Err(OpenError::ConnectionLost);
            }
            let place = OpenGuard::reserve(&self.count, limit).map_err(|e| match e {
                NoPlace::Full => OpenError::AtCapacity { limit },
                NoPlace::Closed => OpenError::ConnectionLost,
            })?;
            let wait = if host == HANG_HOST {
                self.settings.open_timeout
            } else {
                OPEN_TIME
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.closed.cancelled() => return Err(OpenError::ConnectionLost),
            }
            if host == HANG_HOST {
                return Err(OpenError::Timeout {
                    after: self.settings.open_timeout,
                });
            }
            if host == REFUSE_HOST {
                return Err(OpenError::Refused {
                    reason: "connect failed: the fake node refused".into(),
                });
            }
            let (near, far) = tokio::io::duplex(64 << 10);
            self.ends.lock().unwrap().push(far);
            let counters = ChannelCounters {
                open: place,
                link: self.link.clone(),
                congestion: self.congestion.clone(),
            };
            Ok(TunnelStream::in_memory(
                near,
                Arc::from(self.node.name.as_str()),
                Arc::from(format!("{host}:{port}")),
                counters,
                self.closed.clone(),
            ))
        })
    }

    fn open_channels(&self) -> usize {
        self.count.open()
    }

    fn close_to_new(&self) {
        self.count.close_to_new()
    }

    fn close_if_idle(&self) -> bool {
        self.count.close_if_idle()
    }

    fn idle_for(&self) -> Option<Duration> {
        self.count.idle_for()
    }

    fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire)
    }

    fn is_held_up(&self) -> bool {
        false
    }

    fn stalled_channels(&self) -> u64 {
        0
    }

    fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.closed.cancelled())
    }

    fn ping(&self, _limit: Duration) -> BoxFuture<'_, Option<Duration>> {
        Box::pin(async move { (!self.is_closed()).then_some(Duration::from_millis(1)) })
    }

    fn disconnect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.kill() })
    }

    fn disconnect_reason(&self) -> Option<String> {
        self.is_closed()
            .then(|| "fake connection closed".to_string())
    }

    fn host_key(&self) -> &str {
        "ssh-ed25519 SHA256:fake"
    }

    fn host_key_trust(&self) -> HostKeyTrust {
        HostKeyTrust::KnownHostsLine
    }

    fn client_key(&self) -> &str {
        "ssh-ed25519 SHA256:fake-client"
    }
}
