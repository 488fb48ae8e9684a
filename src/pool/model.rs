//! A model-based test of the node lifecycle (issue #22): random sequences of node-set updates
//! (adds, removals, address and alias changes), drains, reconnects, dials (normal, refused,
//! hanging), streams ending, connections dying or turning congested, and connects failing,
//! run against the fake transport (`pool::fake`) under tokio's paused clock. Dials run as
//! tasks, concurrently with everything after them, as in the daemon; `update`, `drain` and
//! `reconnect` are synchronous calls that the pool serialises on its drain lock, so they are
//! applied one at a time here too.
//!
//! After every step: one running supervisor per node in the pool and none for any other;
//! drained exactly as the model says (a drain holds until `reconnect` or removal), with no
//! connection published for a drained node. Every dial that succeeds to a destination that
//! answers finishes in less than the open timeout (it never waited behind another dial's open
//! or connect). At the end: every stream ended gives its place back (no channel left open on
//! any connection), connections of nodes that left or are drained are closed, every metric
//! series of a node that left is gone, and after shutdown no connection and no task is left.
//!
//! `model_fixed_seed` runs the same cases every time; `model_random_seed` a few new ones (the
//! seed is printed when a case fails, with the shrunk sequence).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::time::Instant;

use super::fake::{ConnectMode, FakeNet, HANG_HOST, REFUSE_HOST};
use super::races::{fake_pool, settle};
use super::transport::Link;
use super::{Pool, TunnelState};
use crate::destination::Destination;
use crate::node::Node;
use crate::ssh::TunnelStream;

const NAMES: [&str; 3] = ["n0", "n1", "n2"];
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Answers,
    Refused,
    Hangs,
}

#[derive(Debug, Clone)]
enum Op {
    /// The node set: per node, present or not, its address variant, with an alias or not.
    Update(Vec<(bool, u8, bool)>),
    Drain(usize),
    Reconnect(usize),
    Dial(usize, Kind),
    EndStream(usize),
    Kill(usize),
    Congest(usize, bool),
    ConnectFails(usize, bool),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NAMES.len();
    let kind = prop_oneof![
        6 => Just(Kind::Answers),
        1 => Just(Kind::Refused),
        1 => Just(Kind::Hangs)
    ];
    prop_oneof![
        2 => proptest::collection::vec((proptest::bool::weighted(0.8), 0u8..2, any::<bool>()), NAMES.len())
            .prop_map(Op::Update),
        2 => node.clone().prop_map(Op::Drain),
        2 => node.clone().prop_map(Op::Reconnect),
        8 => (node.clone(), kind).prop_map(|(n, k)| Op::Dial(n, k)),
        4 => (0usize..64).prop_map(Op::EndStream),
        1 => node.clone().prop_map(Op::Kill),
        2 => (node.clone(), any::<bool>()).prop_map(|(n, c)| Op::Congest(n, c)),
        1 => (node.clone(), proptest::bool::weighted(0.3)).prop_map(|(n, f)| Op::ConnectFails(n, f)),
        3 => (1u16..4000).prop_map(Op::Advance),
    ]
}

fn entry(i: usize, variant: u8, alias: bool) -> Node {
    let mut n = Node::parse_spec(&format!(
        "{}=127.0.9.{}",
        NAMES[i],
        10 * (i + 1) + variant as usize
    ))
    .unwrap();
    if alias {
        n.aliases = vec![format!("127.0.8.{}", 10 * (i + 1) + variant as usize)];
    }
    n
}

/// What the model expects of the pool.
#[derive(Default)]
struct Model {
    present: BTreeSet<usize>,
    drained: BTreeSet<usize>,
}

/// A dial's outcome: (kind, succeeded, how long it took).
type Outcomes = Arc<Mutex<Vec<(Kind, bool, Duration, String)>>>;

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(run_async(ops))
}

async fn run_async(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let net = Arc::new(FakeNet::default());
    let pool = Arc::new(fake_pool(&net, &[], |c| {
        c.ssh = Arc::new(
            crate::ssh::SshSettings::builder("test")
                .open_timeout(OPEN_TIMEOUT)
                .build(),
        );
        c.reconnect_wait = Some(Duration::from_secs(2));
        c.drain_timeout = Duration::from_secs(3);
        c.overflow_idle_timeout = Duration::from_secs(8);
        c.max_connections_per_node = 3;
        c.max_channels_per_connection = 4;
    }));
    let mut model = Model::default();
    let held: Arc<Mutex<Vec<TunnelStream>>> = Arc::default();
    let outcomes: Outcomes = Arc::default();
    let mut dials = Vec::new();
    for op in ops {
        let step = match op {
            Op::Advance(ms) => Duration::from_millis(u64::from(ms)),
            _ => Duration::from_millis(1),
        };
        apply(&pool, &net, &mut model, &held, &outcomes, &mut dials, op)?;
        settle(step).await;
        check_step(&pool, &model, &outcomes)?;
    }
    // Let every dial end, every stream end, and every drain and reap run.
    settle(OPEN_TIMEOUT + Duration::from_secs(1)).await;
    for d in dials {
        let _ = tokio::time::timeout(Duration::from_secs(60), d).await;
    }
    check_step(&pool, &model, &outcomes)?;
    held.lock().unwrap().clear();
    settle(Duration::from_secs(20)).await;
    check_end(&pool, &net, &model)?;
    pool.shutdown_within(Duration::from_secs(1)).await;
    settle(Duration::from_secs(1)).await;
    let live: Vec<String> = net
        .links()
        .iter()
        .filter(|l| !l.is_closed())
        .map(|l| l.node().name.clone())
        .collect();
    prop_assert!(live.is_empty(), "connections left after shutdown: {live:?}");
    prop_assert_eq!(pool.tasks.running(), 0, "tasks left after shutdown");
    prop_assert!(pool.supervisors().is_empty(), "{:?}", pool.supervisors());
    Ok(())
}

fn apply(
    pool: &Arc<Pool>,
    net: &Arc<FakeNet>,
    model: &mut Model,
    held: &Arc<Mutex<Vec<TunnelStream>>>,
    outcomes: &Outcomes,
    dials: &mut Vec<tokio::task::JoinHandle<()>>,
    op: Op,
) -> Result<(), TestCaseError> {
    match op {
        Op::Update(set) => {
            let nodes: Vec<Node> = set
                .iter()
                .enumerate()
                .filter(|(_, (present, _, _))| *present)
                .map(|(i, (_, v, a))| entry(i, *v, *a))
                .collect();
            pool.update(nodes)
                .map_err(|e| TestCaseError::fail(format!("update refused: {e}")))?;
            model.present = set
                .iter()
                .enumerate()
                .filter(|(_, s)| s.0)
                .map(|(i, _)| i)
                .collect();
            model.drained.retain(|i| model.present.contains(i));
        }
        Op::Drain(i) => {
            let found = pool.drain_node_by(NAMES[i], "model");
            prop_assert_eq!(found, model.present.contains(&i), "drain {}", NAMES[i]);
            if found {
                model.drained.insert(i);
            }
        }
        Op::Reconnect(i) => {
            let found = pool.reconnect(NAMES[i]);
            prop_assert_eq!(found, model.present.contains(&i), "reconnect {}", NAMES[i]);
            model.drained.remove(&i);
        }
        Op::Dial(i, kind) => {
            let (pool, held, outcomes) = (pool.clone(), held.clone(), outcomes.clone());
            let host = match kind {
                Kind::Answers => "10.1.0.1",
                Kind::Refused => REFUSE_HOST,
                Kind::Hangs => HANG_HOST,
            };
            dials.push(tokio::spawn(async move {
                let start = Instant::now();
                let dest = Destination::new(host, 10250).unwrap();
                let r = pool.dial_through(NAMES[i], &dest).await;
                let took = start.elapsed();
                let what = match &r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                outcomes.lock().unwrap().push((kind, r.is_ok(), took, what));
                if let Ok(s) = r {
                    held.lock().unwrap().push(s);
                }
            }));
        }
        Op::EndStream(k) => {
            let mut h = held.lock().unwrap();
            if !h.is_empty() {
                let n = h.len();
                drop(h.remove(k % n));
            }
        }
        Op::Kill(i) => {
            if let Some(l) = net.live(NAMES[i]).first() {
                l.kill();
            }
        }
        Op::Congest(i, on) => {
            for l in net.live(NAMES[i]) {
                l.set_congested(on);
            }
        }
        Op::ConnectFails(i, fails) => net.set_connect(
            NAMES[i],
            if fails {
                ConnectMode::Fail
            } else {
                ConnectMode::Ok
            },
        ),
        // The caller's settle moves the clock.
        Op::Advance(_) => {}
    }
    Ok(())
}

fn check_step(pool: &Pool, model: &Model, outcomes: &Outcomes) -> Result<(), TestCaseError> {
    let sups = pool.supervisors();
    for (i, name) in NAMES.iter().enumerate() {
        let in_pool = model.present.contains(&i) && !model.drained.contains(&i);
        let running = sups.get(*name).copied().unwrap_or(0);
        prop_assert_eq!(
            running,
            usize::from(in_pool),
            "supervisors of {} (present {}, drained {})",
            name,
            model.present.contains(&i),
            model.drained.contains(&i)
        );
        prop_assert_eq!(
            pool.is_drained(name),
            model.drained.contains(&i),
            "drained {}",
            name
        );
        if !in_pool {
            prop_assert!(
                pool.tunnel(name).is_none(),
                "{} is out of the pool but has a connection published",
                name
            );
            if let Some(st) = pool.status(name) {
                prop_assert!(
                    st.state == TunnelState::Draining,
                    "{} out of the pool shows {:?}",
                    name,
                    st.state
                );
            }
        }
    }
    for (kind, ok, took, what) in outcomes.lock().unwrap().iter() {
        if *ok && matches!(kind, Kind::Answers) {
            prop_assert!(
                *took < OPEN_TIMEOUT,
                "a dial that succeeded took {:?} (it waited behind another dial): {}",
                took,
                what
            );
        }
    }
    Ok(())
}

fn check_end(pool: &Pool, net: &FakeNet, model: &Model) -> Result<(), TestCaseError> {
    for l in net.links() {
        prop_assert_eq!(
            l.open_channels(),
            0,
            "channels left open on a connection of {} after every stream ended",
            &l.node().name
        );
        let i = NAMES.iter().position(|n| *n == l.node().name).unwrap();
        let in_pool = model.present.contains(&i) && !model.drained.contains(&i);
        prop_assert!(
            in_pool || l.is_closed(),
            "a connection of {} outlived its node (present {}, drained {})",
            &l.node().name,
            model.present.contains(&i),
            model.drained.contains(&i)
        );
    }
    let text = pool.metrics().encode();
    for (i, name) in NAMES.iter().enumerate() {
        if !model.present.contains(&i) {
            let label = format!("node=\"{name}\"");
            prop_assert!(
                !text.contains(&label),
                "series of {} are left after it left the node set: {:?}",
                name,
                text.lines()
                    .filter(|l| l.contains(&label))
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

fn sequences() -> impl Strategy<Value = Vec<Op>> {
    // Start with every node present; then anything.
    proptest::collection::vec(op(), 1..60).prop_map(|mut ops| {
        ops.insert(0, Op::Update(vec![(true, 0, false); NAMES.len()]));
        ops
    })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        // Shrinking reruns whole sequences: bounded.
        max_shrink_iters: 2000,
        ..Config::default()
    }
}

#[test]
fn model_fixed_seed() {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[27; 32]);
    let mut runner = TestRunner::new_with_rng(config(96), rng);
    if let Err(e) = runner.run(&sequences(), run) {
        panic!("{e}");
    }
}

#[test]
fn model_random_seed() {
    let seed: [u8; 32] = rand::random();
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(
        config(
            std::env::var("MODEL_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(24),
        ),
        rng,
    );
    if let Err(e) = runner.run(&sequences(), run) {
        panic!("{e}\n(seed {seed:?}; the shrunk sequence above replays it in a test of its own)");
    }
}
