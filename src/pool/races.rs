//! The pool's races, each driven on purpose through the fake transport (`pool::fake`) under
//! tokio's paused clock: dials that must not queue behind another dial's open or connect, a
//! slot that must not be replaced without being stopped, an extra connection that must not be
//! reaped while it serves, and a dial that must not land on a retiring connection.
//! (issue #22, findings 1 to 3; `pool::model` checks the same invariants on random runs.)

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::fake::{CONNECT_TIME, ConnectMode, FakeConnector, FakeNet, HANG_HOST, OPEN_TIME};
use super::overflow::FAILED_CONNECT_MEMORY;
use super::transport::Link;
use super::{Pool, PoolConfig, Probe, TunnelState};
use crate::destination::Destination;
use crate::error::{DialError, OpenError};
use crate::node::Node;
use crate::ssh::{SshSettings, TunnelStream};

pub(super) fn fake_pool(
    net: &Arc<FakeNet>,
    nodes: &[&str],
    tweak: impl FnOnce(&mut PoolConfig),
) -> Pool {
    let mut cfg = PoolConfig::new(SshSettings::builder("test").build());
    cfg.connector = Arc::new(FakeConnector(net.clone()));
    cfg.health.probe = Probe::None;
    tweak(&mut cfg);
    let nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Node::parse_spec(&format!("{n}=127.0.9.{}", i + 1)).unwrap())
        .collect();
    Pool::with_config(cfg, nodes).unwrap()
}

/// Lets every ready task run, then moves the paused clock by `by`.
pub(super) async fn settle(by: Duration) {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(by).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

pub(super) async fn ready(pool: &Pool, node: &str) {
    for _ in 0..100 {
        if pool
            .status(node)
            .is_some_and(|s| s.state == TunnelState::Ready)
        {
            return;
        }
        settle(Duration::from_millis(50)).await;
    }
    panic!("{node} never became ready: {:?}", pool.status(node));
}

fn dest(host: &str) -> Destination {
    Destination::new(host, 10250).unwrap()
}

/// Dials `host` through `node` in a task; the result comes with when it came.
fn spawn_dial(
    pool: &Arc<Pool>,
    node: &'static str,
    host: &'static str,
) -> tokio::task::JoinHandle<(Result<TunnelStream, DialError>, Instant)> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let r = pool.dial_through(node, &dest(host)).await;
        (r, Instant::now())
    })
}

/// Finding 1: three dials at once to a node whose connection is congested — a normal one, one
/// to a pod IP that never answers, a normal one. The third must not wait for the second's
/// open to time out: every dial waits for the one connection being made, then opens its
/// channel on its own. (Before, the growth lock was held across channel opens: the third dial
/// got its channel only after the second's 10 s timeout.)
#[tokio::test(start_paused = true)]
async fn dials_never_wait_behind_another_dials_open_or_connect() {
    let net = Arc::new(FakeNet::default());
    let pool = Arc::new(fake_pool(&net, &["n1"], |_| {}));
    ready(&pool, "n1").await;
    net.live("n1")[0].set_congested(true);
    let start = Instant::now();
    let a = spawn_dial(&pool, "n1", "10.0.0.1");
    let b = spawn_dial(&pool, "n1", HANG_HOST);
    let c = spawn_dial(&pool, "n1", "10.0.0.3");
    let (ra, ta) = a.await.unwrap();
    let (rc, tc) = c.await.unwrap();
    let (rb, tb) = b.await.unwrap();
    let quick = CONNECT_TIME + OPEN_TIME * 2 + Duration::from_millis(50);
    assert!(ra.is_ok() && rc.is_ok(), "{ra:?} {rc:?}");
    assert!(
        ta - start <= quick && tc - start <= quick,
        "the normal dials took {:?} and {:?} (virtual time); one connection and one open take {quick:?}",
        ta - start,
        tc - start
    );
    assert!(
        matches!(
            rb,
            Err(DialError::Open {
                source: OpenError::Timeout { .. },
                ..
            })
        ),
        "{rb:?}"
    );
    assert!(tb - start >= Duration::from_secs(10));
    assert_eq!(
        net.connects(),
        2,
        "one extra connection for the three dials"
    );
}

/// Finding 1, second half: a failed connect is remembered for a moment, so the dials after
/// it do not each try (and wait) again; after the moment, one tries again.
#[tokio::test(start_paused = true)]
async fn a_failed_connect_is_remembered_for_a_moment() {
    let net = Arc::new(FakeNet::default());
    let pool = Arc::new(fake_pool(&net, &["n1"], |c| {
        c.max_channels_per_connection = 1
    }));
    ready(&pool, "n1").await;
    let held = pool.dial_through("n1", &dest("10.0.0.1")).await.unwrap();
    net.set_connect("n1", ConnectMode::Fail);
    let before = net.connects();
    let first = pool.dial_through("n1", &dest("10.0.0.2")).await;
    assert!(
        matches!(
            first,
            Err(DialError::Open {
                source: OpenError::AtCapacity { .. },
                ..
            })
        ),
        "{first:?}"
    );
    assert_eq!(net.connects(), before + 1);
    let t = Instant::now();
    for _ in 0..5 {
        assert!(pool.dial_through("n1", &dest("10.0.0.2")).await.is_err());
    }
    assert_eq!(net.connects(), before + 1, "remembered: no new attempt");
    assert!(t.elapsed() < CONNECT_TIME, "and no waiting for one");
    settle(FAILED_CONNECT_MEMORY).await;
    net.set_connect("n1", ConnectMode::Ok);
    assert!(pool.dial_through("n1", &dest("10.0.0.2")).await.is_ok());
    assert_eq!(net.connects(), before + 2);
    drop(held);
}

/// Finding 2: a node added while a slot of the same name is there (the `reconnect` vs
/// `update` race) replaces the slot — and the old one is stopped and drained, not left
/// running with its connection until shutdown.
#[tokio::test(start_paused = true)]
async fn a_replaced_slot_is_always_stopped() {
    let net = Arc::new(FakeNet::default());
    let pool = fake_pool(&net, &["n1"], |c| c.drain_timeout = Duration::from_secs(1));
    ready(&pool, "n1").await;
    let node = pool.nodes().into_iter().find(|n| n.name == "n1").unwrap();
    pool.add(node);
    settle(Duration::from_secs(3)).await;
    ready(&pool, "n1").await;
    let live = net.live("n1");
    assert_eq!(
        live.len(),
        1,
        "one live connection for one node; the replaced slot's supervisor must stop"
    );
    assert_eq!(net.links().len(), 2);
    pool.shutdown_within(Duration::from_secs(1)).await;
    assert!(net.live("n1").is_empty());
}

/// Finding 3: idleness is measured from the end of the last channel, not sampled by the
/// reaper: an extra connection serving a short request every 4 s is never idle for a minute,
/// though the reaper (every 5 s) nearly always finds it without a channel.
#[tokio::test(start_paused = true)]
async fn an_extra_connection_serving_short_requests_is_not_reaped() {
    let net = Arc::new(FakeNet::default());
    let pool = fake_pool(&net, &["n1"], |c| {
        c.overflow_idle_timeout = Duration::from_secs(20)
    });
    ready(&pool, "n1").await;
    let primary = net.live("n1")[0].clone();
    primary.set_congested(true);
    drop(pool.dial_through("n1", &dest("10.0.0.1")).await.unwrap());
    assert_eq!(net.live("n1").len(), 2);
    let extra = net.live("n1")[1].clone();
    for _ in 0..30 {
        settle(Duration::from_secs(4)).await;
        let s = pool.dial_through("n1", &dest("10.0.0.1")).await.unwrap();
        settle(Duration::from_millis(100)).await;
        drop(s);
    }
    assert!(
        !extra.is_closed() && !extra.closed_to_new(),
        "an extra connection in use every 4 s was reaped"
    );
    // Unused for the idle timeout (and the reaper's period): reaped.
    settle(Duration::from_secs(30)).await;
    assert!(extra.is_closed(), "an idle extra connection was kept");
    assert!(!primary.is_closed());
}

/// Finding 3, second half: a dial that holds a connection the pool is retiring (here, a
/// reconnect) fails over with `ConnectionLost` instead of opening a channel that the drain
/// would cut.
#[tokio::test(start_paused = true)]
async fn a_dial_never_lands_on_a_retiring_connection() {
    let net = Arc::new(FakeNet::default());
    let pool = fake_pool(&net, &["n1"], |_| {});
    ready(&pool, "n1").await;
    let old = pool.tunnel("n1").unwrap();
    let busy = old.open("10.0.0.1", 80).await.unwrap();
    assert!(pool.reconnect("n1"));
    settle(Duration::from_millis(10)).await;
    assert!(matches!(
        old.open("10.0.0.1", 80).await,
        Err(OpenError::ConnectionLost)
    ));
    // The dial itself goes to the new connection.
    ready(&pool, "n1").await;
    let s = pool.dial_through("n1", &dest("10.0.0.1")).await.unwrap();
    let new = pool.tunnel("n1").unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!((old.open_channels(), new.open_channels()), (1, 1));
    drop((busy, s));
}

/// A growth whose connect hangs: every dial that needs it waits for that one attempt (one
/// connect, not one per dial), bounded by the connect timeout, then takes the congested
/// connection rather than failing.
#[tokio::test(start_paused = true)]
async fn dials_share_one_hanging_growth_and_then_fall_back() {
    let net = Arc::new(FakeNet::default());
    let pool = Arc::new(fake_pool(&net, &["n1"], |_| {}));
    ready(&pool, "n1").await;
    net.live("n1")[0].set_congested(true);
    net.set_connect("n1", ConnectMode::Hang);
    let start = Instant::now();
    let dials: Vec<_> = (0..3)
        .map(|_| spawn_dial(&pool, "n1", "10.0.0.1"))
        .collect();
    for d in dials {
        let (r, at) = d.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        let took = at - start;
        let connect = pool.config().ssh.connect_timeout;
        assert!(
            took >= connect && took <= connect + Duration::from_millis(100),
            "took {took:?}"
        );
    }
    assert_eq!(net.connects(), 2, "one connect for the three dials");
}

/// A growth whose task dies (here the connector panics) does not leave the node unable to
/// grow: the dials waiting for it go on, and the next dial makes a new connection.
#[tokio::test(start_paused = true)]
async fn a_growth_that_dies_does_not_block_the_next_one() {
    let net = Arc::new(FakeNet::default());
    let pool = Arc::new(fake_pool(&net, &["n1"], |_| {}));
    ready(&pool, "n1").await;
    net.live("n1")[0].set_congested(true);
    net.set_connect("n1", ConnectMode::Panic);
    let (r, _) = spawn_dial(&pool, "n1", "10.0.0.1").await.unwrap();
    assert!(r.is_ok(), "falls back to the congested connection: {r:?}");
    net.set_connect("n1", ConnectMode::Ok);
    let before = net.connects();
    let (r, _) = spawn_dial(&pool, "n1", "10.0.0.1").await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(net.connects(), before + 1, "a new connection was made");
    assert_eq!(net.live("n1").len(), 2);
}
