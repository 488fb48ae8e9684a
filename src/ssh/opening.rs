//! One channel open in flight, for a dialled node's `direct-tcpip` and a reverse node's
//! `forwarded-tcpip` alike. The dial that asked for it polls it in place (no task and no
//! hand-off in the common case). Dropped before it ends (the dial timed out, was cancelled,
//! or its connection went), it hands the rest to a task of its own, which closes a channel
//! the node confirms late. So giving up on an open never leaks a channel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use russh::{Channel, ChannelId, ChannelMsg};
use tokio_util::sync::CancellationToken;

use super::settings::ChannelLimits;
use super::stream::{ChannelCounters, TunnelStream};
use crate::error::OpenError;

/// How long a channel open that its caller gave up on may still finish (to be closed).
const ABANDONED_OPEN_GRACE: Duration = Duration::from_secs(60);

/// What an open gives: the channel with its counters, russh's error, or `None` when the
/// connection ended (or the grace ran out) first.
pub(crate) type OpenResult<M> = Option<Result<(Channel<M>, ChannelCounters), russh::Error>>;

/// The message types of russh's client and server channels.
pub(crate) trait ChannelKind: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static {}

impl<M: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> ChannelKind for M {}

/// An open in flight; a future of its `OpenResult`.
pub(crate) struct Opening<M: ChannelKind> {
    open: Option<Pin<Box<dyn Future<Output = OpenResult<M>> + Send>>>,
}

impl<M: ChannelKind> Opening<M> {
    /// Starts `open` (russh's open request, owning what it needs). It ends with the
    /// connection (`closed`), and at the latest after the grace above.
    pub(crate) fn start(
        open: impl Future<Output = Result<Channel<M>, russh::Error>> + Send + 'static,
        closed: CancellationToken,
        counters: ChannelCounters,
    ) -> Opening<M> {
        let open = async move {
            let opened = tokio::select! {
                r = tokio::time::timeout(ABANDONED_OPEN_GRACE, open) => r.ok()?,
                _ = closed.cancelled() => return None,
            };
            Some(opened.map(|channel| (channel, counters)))
        };
        Opening {
            open: Some(Box::pin(open)),
        }
    }
}

impl<M: ChannelKind> Opening<M> {
    /// Waits for the open and starts the dial's stream on its channel (`TunnelStream`) for
    /// `node` and `destination`. A connection that ended first is `ConnectionLost`; russh's
    /// error is classified by what it returned (`open_outcome`), not by whether the
    /// connection reads as closed yet.
    pub(crate) async fn into_stream(
        self,
        node: Arc<str>,
        destination: Arc<str>,
        limits: ChannelLimits,
    ) -> Result<TunnelStream, OpenError> {
        match self.await {
            None => Err(OpenError::ConnectionLost),
            Some(Ok((channel, counters))) => Ok(TunnelStream::start(
                channel,
                node,
                destination,
                limits,
                counters,
            )),
            Some(Err(e)) => {
                tracing::debug!(%node, error = %e, "channel open failed");
                Err(super::open_outcome::classify(e))
            }
        }
    }
}

impl<M: ChannelKind> Future for Opening<M> {
    type Output = OpenResult<M>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpenResult<M>> {
        let Some(open) = self.open.as_mut() else {
            return Poll::Ready(None);
        };
        let opened = ready!(open.as_mut().poll(cx));
        self.open = None;
        Poll::Ready(opened)
    }
}

impl<M: ChannelKind> Drop for Opening<M> {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        // Outside a runtime (it is gone) the connection, and the channel with it, is gone too.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Some(Ok((channel, _place))) = open.await {
                let _ = channel.close().await;
            }
        });
    }
}
