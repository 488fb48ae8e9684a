//! One task per node keeps its tunnel alive: connect (at most `max_handshakes` at once across
//! the pool), watch the connection (SSH keepalives end it when the node stops answering),
//! probe health through it, and on failure back off (exponential, full jitter) and try again.
//! Failures a human must fix (authentication rejected, host key) back off to minutes and say
//! so. Dropping a connection never cuts its open streams: they run to completion or the drain
//! timeout (see `drain`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Semaphore;

use super::backoff::Backoff;
use super::config::PoolConfig;
use super::drain::drain_tunnel;
use super::health;
use super::slot::NodeSlot;
use super::state::TunnelState;
use super::transport::Link;
use crate::error::{ConnectError, ProbeError};
use crate::metrics::{CheckLabels, Metrics, NodeLabel};
use crate::pool::NodeMode;
use crate::ssh::HostKeyTrust;
use crate::tasks::Tasks;

/// How often the supervisor reaps the node's idle extra connections (and checks
/// `is_closed()`, which `closed()` already reports at once): a quarter of the idle timeout,
/// between these bounds. At 5,000 nodes every wake-up per node costs: a fixed 250 ms poll was
/// 20,000 wake-ups a second of an idle daemon (12 % of a core; 3 % now, BENCHMARKS.md).
const REAP_POLL_MIN: Duration = Duration::from_millis(250);
const REAP_POLL_MAX: Duration = Duration::from_secs(5);

/// The reason a reverse node without a session shows (state `waiting`).
pub(crate) const WAITING_REASON: &str = "waiting for the node to dial in";

/// Runs until the slot's stop token is cancelled. Leaves the tunnel in the slot on stop (the
/// caller drains it).
pub(crate) async fn supervise(
    slot: Arc<NodeSlot>,
    cfg: Arc<PoolConfig>,
    handshakes: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
    census: Arc<DashMap<String, usize>>,
) {
    let _running = Running::new(census, slot.name());
    let ssh = cfg.ssh.clone();
    let mut transient = Backoff::new(cfg.backoff);
    let mut human = Backoff::new(cfg.backoff_needs_human);
    let mut connected_once = false;
    // Rounds of waiting for a reverse node's session: each is bounded by the connect timeout
    // and re-reads the node's mode; a round that ends at once is spaced by this.
    const WAIT_ROUND_MIN: Duration = Duration::from_millis(200);
    // Why a reverse node's last session ended: shown with its `waiting` until the next one.
    let mut session_ended: Option<String> = None;
    loop {
        if slot.is_stopped() {
            return;
        }
        let node = slot.node();
        let mode = cfg.connector.mode(&node);
        let waiting = mode == NodeMode::Reverse;
        if waiting {
            // Nothing to attempt: the node dials in. Dials wait (bounded) for its session.
            let reason = match &session_ended {
                Some(why) => format!("{why}; {WAITING_REASON} again"),
                None => WAITING_REASON.to_string(),
            };
            slot.set_state_with(TunnelState::Waiting, &reason, |s| {
                s.mode = mode;
                s.first_attempt_done = true;
                s.next_retry = None;
            });
        } else {
            slot.set_state_with(TunnelState::Connecting, "connecting", |s| s.mode = mode);
        }
        let kick = slot.kick_token();
        // Registered before the attempt: a trust file that changes while this attempt fails
        // still cuts the backoff after it short.
        let retry = slot.retry_notified();
        tokio::pin!(retry);
        retry.as_mut().enable();
        // Waiting for a session is no handshake: it takes no permit.
        let permit = if waiting {
            None
        } else {
            tokio::select! {
                p = handshakes.clone().acquire_owned() => match p { Ok(p) => Some(p), Err(_) => return },
                _ = slot.stopped() => return,
            }
        };
        if !waiting {
            slot.update_status(|s| s.attempts += 1);
        }
        let round = Instant::now();
        let attempt = tokio::select! {
            r = cfg.connector.connect(&node, ssh.clone(), slot.link().clone()) => r,
            _ = slot.stopped() => return,
        };
        drop(permit);
        if slot.is_stopped() {
            // Stopped while the connect finished: nobody would drain this connection.
            if let Ok(t) = &attempt {
                t.disconnect().await;
            }
            return;
        }
        if waiting && matches!(attempt, Err(ConnectError::NoSession { .. })) {
            // Still waiting: no failure, no backoff. The next round waits again.
            let spacing = WAIT_ROUND_MIN.saturating_sub(round.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(spacing) => {}
                _ = slot.stopped() => return,
            }
            continue;
        }
        let delay;
        // Shared with the status (and dials that report it), not copied.
        let attempt = attempt.map_err(Arc::new);
        let connect_error = attempt.as_ref().err().cloned();
        slot.update_status(|s| s.last_connect_error = connect_error);
        match attempt {
            Ok(tunnel) => {
                let host_key = tunnel.host_key().to_string();
                let host_key_trust = tunnel.host_key_trust();
                let client_key = tunnel.client_key().to_string();
                let dialled_in = host_key_trust == HostKeyTrust::NodeDialledIn;
                session_ended = None;
                slot.publish(Some(tunnel.clone()));
                let reconnect = connected_once;
                if waiting {
                    slot.update_status(|s| s.attempts += 1);
                }
                slot.set_state_with(TunnelState::Ready, "connected", |s| {
                    s.first_attempt_done = true;
                    s.host_key = Some(host_key);
                    s.host_key_trust = Some(host_key_trust);
                    s.client_key = Some(client_key);
                    s.connected_at = Some(Instant::now());
                    s.dialled_in = Some(dialled_in);
                    s.keepalive_rtt = None;
                    if reconnect {
                        s.reconnects += 1;
                    }
                });
                if reconnect {
                    metrics
                        .reconnects
                        .get_or_create(&NodeLabel {
                            node: node.name.clone(),
                        })
                        .inc();
                }
                connected_once = true;
                let up_since = Instant::now();
                let why = watch_connection(&slot, tunnel.as_ref(), &cfg, &kick, &metrics, &tasks)
                    .await
                    .to_string();
                if slot.is_stopped() {
                    // The retire drained what it found in the slot; if this connection was
                    // published after that, it is drained here.
                    if let Some(t) = slot.publish(None) {
                        tasks.spawn(drain_tunnel(t, cfg.drain_timeout, tasks.token().clone()));
                    }
                    return;
                }
                tunnel.close_to_new();
                slot.publish(None);
                slot.update_status(|s| {
                    s.connected_at = None;
                    s.dialled_in = None;
                });
                // Open streams keep running on the old connection until they end.
                tasks.spawn(drain_tunnel(
                    tunnel,
                    cfg.drain_timeout,
                    tasks.token().clone(),
                ));
                if up_since.elapsed() >= cfg.stable_after {
                    transient.reset();
                    human.reset();
                }
                // A reverse node waits for its next session at once: there is nothing to
                // back off from.
                if kick.is_cancelled() || cfg.connector.mode(&node) == NodeMode::Reverse {
                    slot.update_status(|s| s.last_error = Some(why.clone()));
                    session_ended = Some(why.clone());
                    continue;
                }
                delay = transient.next_delay();
                enter_backoff(&slot, TunnelState::Backoff, &why, delay, Some(why.clone()));
            }
            Err(e) => {
                let needs_human = e.needs_human();
                delay = if needs_human {
                    human.next_delay()
                } else {
                    transient.next_delay()
                };
                let msg = e.to_string();
                let (state, why) = if needs_human {
                    (
                        TunnelState::Failed,
                        format!("needs a human, retrying slowly: {msg}"),
                    )
                } else {
                    (TunnelState::Backoff, msg.clone())
                };
                enter_backoff(&slot, state, &why, delay, Some(msg));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = kick.cancelled() => {}
            _ = &mut retry => {
                tracing::info!(node = %slot.name(), "trust files changed: retrying now");
            }
            // An either node's session arrived: take it now. (Only an either node: a session
            // left from when a node that is forward now was not would end every backoff.)
            _ = cfg.connector.arrival(&node.name), if mode == NodeMode::Either => {}
            _ = slot.stopped() => return,
        }
    }
}

/// Counts a running supervisor under its node's name while it lives (`Pool::supervisors`):
/// a supervisor that outlives its slot shows there.
struct Running {
    census: Arc<DashMap<String, usize>>,
    name: String,
}

impl Running {
    fn new(census: Arc<DashMap<String, usize>>, name: String) -> Running {
        *census.entry(name.clone()).or_insert(0) += 1;
        Running { census, name }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let left = self.census.get_mut(&self.name).map(|mut n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            self.census.remove_if(&self.name, |_, n| *n == 0);
        }
    }
}

/// Enters backoff/failed, recording the attempt's outcome in the same status update.
fn enter_backoff(
    slot: &NodeSlot,
    state: TunnelState,
    why: &str,
    delay: Duration,
    error: Option<String>,
) {
    let reason = format!("{why} (next attempt in {:.1}s)", delay.as_secs_f64());
    slot.set_state_with(state, reason, |s| {
        s.first_attempt_done = true;
        s.next_retry = Some(Instant::now() + delay);
        if error.is_some() {
            s.last_error = error;
        }
    });
}

/// Why a ready connection ended (what `watch_connection` returns).
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("stopping")]
    Stopping,
    #[error("reconnect requested")]
    ReconnectRequested,
    #[error("health probe got no answer {failures} times in a row: {error}")]
    ProbeUnanswered { failures: u32, error: ProbeError },
    /// The session ended: russh's disconnect reason, if it gave one.
    #[error("{}", reason.as_deref().unwrap_or("connection lost"))]
    Lost { reason: Option<String> },
}

/// Watches a ready connection; returns why it must be replaced.
async fn watch_connection(
    slot: &NodeSlot,
    tunnel: &dyn Link,
    cfg: &PoolConfig,
    kick: &tokio_util::sync::CancellationToken,
    metrics: &Metrics,
    tasks: &Tasks,
) -> ConnectionEnd {
    let label = NodeLabel { node: slot.name() };
    let probing = cfg.health.probe != health::Probe::None;
    let mut probe_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.health.interval,
        cfg.health.interval,
    );
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed_poll =
        tokio::time::interval((cfg.overflow_idle_timeout / 4).clamp(REAP_POLL_MIN, REAP_POLL_MAX));
    closed_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tunnel.closed() => break,
            _ = closed_poll.tick() => {
                if tunnel.is_closed() {
                    break;
                }
                for idle in slot.overflow().reap(cfg.overflow_idle_timeout) {
                    tracing::info!(node = %idle.node().name, "closing an idle extra connection");
                    tasks.spawn(drain_tunnel(idle, cfg.drain_timeout, tasks.token().clone()));
                }
            }
            _ = slot.stopped() => return ConnectionEnd::Stopping,
            // The old connection is retired like any other: it takes no new dials and its open
            // streams run until they end or the drain timeout (the caller drains it).
            _ = kick.cancelled() => return ConnectionEnd::ReconnectRequested,
            _ = probe_tick.tick() => {
                // An SSH ping measures the link's round trip (also when probes are off).
                let rtt = tunnel.ping(cfg.health.timeout).await;
                slot.update_status(|s| s.keepalive_rtt = rtt);
                if let Some(rtt) = rtt {
                    metrics.keepalive_rtt.get_or_create(&label).set(rtt.as_secs_f64());
                }
                if !probing {
                    continue;
                }
                // A connection whose session a slow reader holds up would make the probe wait
                // behind it and fail, and failures replace the connection, cutting the very
                // stream that is slow. Dials avoid it meanwhile; the probe resumes when it
                // clears. (Bulk data does not hold the session: probes run.)
                if tunnel.is_held_up() {
                    tracing::debug!(node = %label.node, "connection congested: health probe skipped");
                    continue;
                }
                // Sequential: the next probe starts only after this one ends (never piles up).
                let result = health::probe(tunnel, &slot.node(), &cfg.health).await;
                let ok = result.ok;
                let answered = result.link_answered;
                let check = CheckLabels {
                    node: label.node.clone(),
                    result: if ok { "ok" } else { "fail" },
                };
                metrics.health_checks.get_or_create(&check).inc();
                let error = result.error.clone();
                slot.update_status(|s| s.last_health = Some(result));
                if ok {
                    if failures > 0 || slot.status().state == TunnelState::Degraded {
                        slot.set_state(TunnelState::Ready, "health probe ok again");
                    }
                    failures = 0;
                    continue;
                }
                if tunnel.is_closed() {
                    break;
                }
                let err = error.unwrap_or(ProbeError::Failed);
                slot.update_status(|s| s.last_error = Some(err.to_string()));
                if answered {
                    // sshd answered: the link works, the node's service does not (a kubelet
                    // restarting, say). Degraded, never a reconnect: that would cut every
                    // stream on the connection for nothing.
                    failures = 0;
                    slot.set_state(
                        TunnelState::Degraded,
                        format!("the node's service failed its health probe (the SSH link answered): {err}"),
                    );
                    continue;
                }
                failures += 1;
                if failures >= cfg.health.reconnect_after.max(1) {
                    tunnel.disconnect().await;
                    return ConnectionEnd::ProbeUnanswered { failures, error: err };
                }
                slot.set_state(TunnelState::Degraded, format!("health probe got no answer ({failures}/{}): {err}", cfg.health.reconnect_after));
            }
        }
    }
    ConnectionEnd::Lost {
        reason: tunnel.disconnect_reason(),
    }
}
