//! `ConnectFront`: the HTTP CONNECT proxy that kube-apiserver's egress selector (and `curl -p`)
//! talks to. Per connection: read the request head (bounded in time and size), check the
//! method, parse the target from the request line, apply the policy, dial through the pool —
//! cancelling the dial if the client leaves meanwhile — and only then answer 200 and relay
//! bytes both ways with half-close. Every failure is an HTTP status with a one-line reason.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handshakes::Handshakes;
use super::request::{HeadError, read_head};
use super::response::{ESTABLISHED, Failure};
use crate::destination::Destination;
use crate::error::{DialError, OpenError};
use crate::policy::{Denied, Policy};
use crate::pool::Pool;
use crate::pool::drained::DrainRecord;

/// Bytes a client may send after its CONNECT head before the 200 (kept and forwarded).
const MAX_EARLY_BYTES: usize = 64 * 1024;
/// Bound on writing an error response to a client that does not read.
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error response: how long, and how many bytes, we read before closing.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// Limits that keep the listener healthy under slow or hostile clients.
#[derive(Debug, Clone)]
pub struct FrontLimits {
    /// A client must send its whole request head within this time.
    pub header_timeout: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Concurrent client connections (negotiating or relaying); beyond it: 503.
    pub max_connections: usize,
    /// TLS handshake bound on the TCP listener.
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes pending at once on the TCP listener; at the cap the oldest is dropped.
    /// A connection takes one of `max_connections` only once its handshake is done.
    pub max_tls_handshakes: usize,
    /// Relay buffer per direction.
    pub relay_buffer: usize,
}

impl Default for FrontLimits {
    fn default() -> Self {
        FrontLimits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_connections: 8192,
            tls_handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 1024,
            relay_buffer: 64 * 1024,
        }
    }
}

/// The CONNECT proxy in front of a pool.
pub struct ConnectFront {
    pool: Arc<Pool>,
    policy: Policy,
    limits: FrontLimits,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl ConnectFront {
    /// A front for `pool` with `policy` and `limits`.
    pub fn new(pool: Arc<Pool>, policy: Policy, limits: FrontLimits) -> Arc<ConnectFront> {
        ConnectFront::with_stop(pool, policy, limits, CancellationToken::new())
    }

    /// A front whose accept loops also end when `stop` is cancelled (a daemon passes a child
    /// of its own token). Client connections are tracked by the front itself: `drain` waits
    /// for them.
    pub fn with_stop(
        pool: Arc<Pool>,
        policy: Policy,
        limits: FrontLimits,
        stop: CancellationToken,
    ) -> Arc<ConnectFront> {
        Arc::new(ConnectFront {
            pool,
            policy,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            tracker: TaskTracker::new(),
            stop,
        })
    }

    /// Connections being negotiated or relayed now.
    pub fn active(&self) -> usize {
        self.limits.max_connections.max(1) - self.slots.available_permits()
    }

    /// Serves CONNECT on a Unix socket until `stop_accepting`, in a task of its own.
    pub fn spawn_uds(self: &Arc<Self>, listener: UnixListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().serve_uds(listener))
    }

    /// Serves CONNECT over TLS with client certificates on a TCP listener until
    /// `stop_accepting`, in a task of its own.
    pub fn spawn_tls(
        self: &Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.clone().serve_tls(listener, acceptor))
    }

    /// Serves CONNECT on a Unix socket until `stop_accepting`.
    pub async fn serve_uds(self: Arc<Self>, listener: UnixListener) {
        let me = self;
        {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = me.stop.cancelled() => break,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let permit = me.slots.clone().try_acquire_owned().ok();
                        let m = me.clone();
                        me.tracker
                            .spawn(async move { m.serve(stream, permit).await });
                    }
                    Err(e) => accept_error(e).await,
                }
            }
        }
    }

    /// Serves CONNECT over TLS with client certificates on a TCP listener until `stop_accepting`.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor) {
        let handshakes = Arc::new(Handshakes::new(self.limits.max_tls_handshakes));
        let me = self;
        {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = me.stop.cancelled() => break,
                };
                match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let m = me.clone();
                        let acceptor = acceptor.clone();
                        let handshakes = handshakes.clone();
                        me.tracker.spawn(async move {
                            let limit = m.limits.tls_handshake_timeout;
                            let admitted = handshakes.admit();
                            let tls = tokio::select! {
                                r = tokio::time::timeout(limit, acceptor.accept(tcp)) => r,
                                _ = admitted.evicted.cancelled() => {
                                    tracing::debug!(%peer, "TLS handshake dropped: newer connections needed the room");
                                    return;
                                }
                            };
                            drop(admitted);
                            match tls {
                                // The slot is taken only now, after a completed handshake.
                                Ok(Ok(tls)) => {
                                    let permit = m.slots.clone().try_acquire_owned().ok();
                                    m.serve(tls, permit).await
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake refused")
                                }
                                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => accept_error(e).await,
                }
            }
        }
    }

    /// Stops accepting new connections (open ones continue).
    pub fn stop_accepting(&self) {
        self.stop.cancel();
    }

    /// Waits, bounded by `limit`, for every open connection to end; returns how many remain.
    pub async fn drain(&self, limit: Duration) -> usize {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
        self.tracker.len()
    }

    /// Handles one client connection.
    pub async fn serve<S>(self: Arc<Self>, mut io: S, permit: Option<OwnedSemaphorePermit>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(_permit) = permit else {
            let f = Failure::new(
                503,
                None,
                "-",
                "too many concurrent CONNECT requests; retry shortly",
            );
            respond(&self.pool, &mut io, &f).await;
            return;
        };
        let head = tokio::time::timeout(
            self.limits.header_timeout,
            read_head(&mut io, self.limits.max_header_bytes),
        )
        .await;
        let (head, mut early) = match head {
            Err(_) => {
                tracing::debug!(timeout = ?self.limits.header_timeout, "closed a client that did not send its request in time");
                return;
            }
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::TooLarge(max))) => {
                let f = Failure::new(
                    400,
                    None,
                    "-",
                    format!("request header larger than {max} bytes"),
                );
                return respond(&self.pool, &mut io, &f).await;
            }
            Ok(Err(HeadError::Malformed(why))) => {
                return respond(&self.pool, &mut io, &Failure::new(400, None, "-", why)).await;
            }
            Ok(Ok(h)) => h,
        };
        if head.method != "CONNECT" {
            let f = Failure::new(
                405,
                None,
                &head.target,
                format!(
                    "method {} is not allowed; this is an HTTP CONNECT proxy",
                    head.method
                ),
            );
            return respond(&self.pool, &mut io, &f).await;
        }
        let dest: Destination = match head.target.parse() {
            Ok(d) => d,
            Err(e) => {
                return respond(
                    &self.pool,
                    &mut io,
                    &Failure::new(400, None, &head.target, e),
                )
                .await;
            }
        };
        // One snapshot of the routes for the policy check and the dial: a node-set change in
        // between must not let the check judge `dest` by one set of nodes and the dial route it
        // by another (a node's address, allowed as the node's, then sent through any node).
        let routes = self.pool.routes();
        if let Err(Denied(why)) = self.policy.check_routes(&dest, &routes) {
            // A drained node is out of the routes, so the policy sees its name, address or
            // alias as nobody's: say it is drained, and how to undo it. Checked only here, off
            // the path of every dial (the drain list sits behind the lock a node-set update
            // holds).
            let failure = match self.pool.drain_of(&dest.host) {
                Some(d) => Failure::new(
                    503,
                    Some(&d.node.name),
                    &dest.to_string(),
                    drained_reason(&d),
                ),
                None => Failure::new(403, None, &dest.to_string(), why),
            };
            return respond(&self.pool, &mut io, &failure).await;
        }
        let outcome = tokio::select! {
            r = self.pool.dial_any_in(&routes, &dest) => Some(r),
            _ = watch_client(&mut io, &mut early) => None,
        };
        drop(routes);
        let mut tunnel = match outcome {
            None => {
                tracing::debug!(destination = %dest, "client left while its dial was pending; dial cancelled");
                return;
            }
            Some(Err(e)) => return respond(&self.pool, &mut io, &dial_failure(&dest, e)).await,
            Some(Ok(t)) => t,
        };
        let node = tunnel.node().to_string();
        count(&self.pool, 200);
        if io.write_all(ESTABLISHED).await.is_err() || io.flush().await.is_err() {
            return;
        }
        if !early.is_empty() && tunnel.write_all(&early).await.is_err() {
            return;
        }
        let n = self.limits.relay_buffer;
        match super::relay::relay(&mut io, &mut tunnel, n).await {
            Ok((up, down)) => {
                tracing::debug!(%node, destination = %dest, up, down, "CONNECT finished")
            }
            Err(e) => {
                tracing::debug!(%node, destination = %dest, error = %e, "CONNECT ended with an error")
            }
        }
    }
}

/// Reads from a client whose dial is pending: keeps early bytes, returns when it leaves.
async fn watch_client<S: AsyncRead + Unpin>(io: &mut S, early: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if early.len() + n > MAX_EARLY_BYTES {
                    return;
                }
                early.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn dial_failure(dest: &Destination, e: DialError) -> Failure {
    let d = dest.to_string();
    match &e {
        DialError::Ambiguous { .. } => Failure::new(403, None, &d, e.to_string()),
        DialError::NoRoute { .. } | DialError::NoReadyNode { .. } => {
            Failure::new(503, None, &d, "no ready tunnel for this destination")
        }
        DialError::NotReady {
            node,
            state,
            reason,
            ..
        } => Failure::new(
            503,
            Some(node),
            &d,
            format!("no ready tunnel: the node is {state}: {reason}"),
        ),
        DialError::Open { node, source, .. } => match source {
            OpenError::Refused { reason } => Failure::new(
                502,
                Some(node),
                &d,
                format!("the node could not reach it: {reason}"),
            ),
            OpenError::Timeout { after } => Failure::new(
                504,
                Some(node),
                &d,
                format!("channel open timed out after {after:?}"),
            ),
            OpenError::ConnectionLost => {
                Failure::new(503, Some(node), &d, "the node's SSH connection was lost")
            }
            OpenError::AtCapacity { limit } => Failure::new(
                503,
                Some(node),
                &d,
                format!(
                    "every connection to the node has {limit} channels open and no further connection could be made"
                ),
            ),
        },
    }
}

/// Sends a failure, then closes gracefully: unread request bytes left in the socket would
/// make the close an RST, and the client could lose the response. So after shutting our
/// write side we read and discard what the client still sends, bounded in bytes and time.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(pool: &Pool, io: &mut S, f: &Failure) {
    tracing::info!(node = f.node.as_deref().unwrap_or("-"), status = f.status, reason = %f.body, "CONNECT refused");
    count(pool, f.status);
    if tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, f.send(io))
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn count(pool: &Pool, status: u16) {
    let code = crate::metrics::CodeLabel {
        code: status.to_string(),
    };
    pool.metrics().connect_requests.get_or_create(&code).inc();
}

async fn accept_error(e: std::io::Error) {
    // EMFILE and friends: do not spin; the limit frees up as connections end.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The 503 body for a CONNECT to a drained node: who drained it, when, and the way back.
fn drained_reason(d: &DrainRecord) -> String {
    let why = d
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!(
        "node drained by {}{why} at {}; no new connections until `kube-ssh-tunnel reconnect {}`{}",
        d.by,
        crate::admin::document::rfc3339(d.at),
        d.node.name,
        if d.by_annotation() {
            " or until the Node's ssh.kube-ssh-tunnel.io/drain annotation is removed"
        } else {
            ""
        }
    )
}
