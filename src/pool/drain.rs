//! Draining: a connection that is being retired (node removed, address changed, reconnect,
//! shutdown) takes no new channels, but its open streams run until they finish or the drain
//! timeout ends; then the connection is closed. The original tunneler cut every stream.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::transport::Link;

/// How often a draining connection's open-channel count is checked.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Waits (bounded by `timeout`, and cut short when `stop` is cancelled: the daemon is
/// exiting) for `tunnel`'s open channels to finish, then disconnects it. Returns the number
/// of channels that were still open when it was closed.
pub async fn drain_tunnel(
    tunnel: Arc<dyn Link>,
    timeout: Duration,
    stop: CancellationToken,
) -> usize {
    // No dial lands on it from now on (one that holds it fails over with `ConnectionLost`).
    tunnel.close_to_new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !tunnel.is_closed()
        && tunnel.open_channels() > 0
        && tokio::time::Instant::now() < deadline
        && !stop.is_cancelled()
    {
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = stop.cancelled() => {}
        }
    }
    let left = if tunnel.is_closed() {
        0
    } else {
        tunnel.open_channels()
    };
    if left > 0 {
        tracing::warn!(node = %tunnel.node().name, open_channels = left, "drain timeout: closing a connection with streams still open");
    }
    if !tunnel.is_closed() {
        tunnel.disconnect().await;
    }
    left
}
