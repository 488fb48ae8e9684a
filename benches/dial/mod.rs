//! CPU per dial beside `ssh -L` (`cargo bench --bench tunnel -- --only dial`; also in
//! `--smoke` and in a full run, with fewer dials in `--smoke`).
//!
//! The other latency rows run our pool inside the benchmark process, so their CPU includes
//! the client. Here the tunnel is a process of its own on both sides: the `run` binary (once
//! with one worker thread per core, the default, and once with `--worker-threads 1`) against
//! one `ssh -N -L` process, all to the same sshd node and the same echo server on the node's
//! pod address. A dial is what kube-apiserver does for a short request: a new CONNECT through
//! the front's Unix socket (for `ssh -L`, a new TCP connection to its port), one byte each
//! way, and close. CPU is the tunnel process's own, from its per-process CPU clock (every
//! thread's, those that ended during the round included), divided by the dials of the round.
//!
//! When `examples/russh_floor.rs` is built, its process is a third side: one russh
//! connection and a bare relay, with no pool, routing or isolation. It shows what russh and
//! the CONNECT exchange cost by themselves, so the gap between it and `ssh -L` is not the
//! daemon's own.
//!
//! The time until the front's `200` is shown too. kube-apiserver sends nothing before it,
//! while `ssh -L` takes the client's byte at once and sends it right behind the channel open.
//! So an echo through the front has one more trip to the node.
//!
//! Alternating rounds, medians with the range. Not a test: it asserts nothing about speed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::support;
use super::support::daemon::Daemon;

/// One tunnel under measurement.
struct Side {
    label: &'static str,
    pid: u32,
    /// The daemon's front (`None`: the `ssh -L` port in `port`).
    front: Option<PathBuf>,
    port: u16,
}

/// Figures of one round of one side: µs of tunnel CPU per dial, each dial's time (µs), and for
/// the front, the time until its `200` (µs).
struct Round {
    cpu_us: f64,
    times: Vec<f64>,
    to_200: Vec<f64>,
}

/// CPU time of process `pid` in ns, every thread's, those that ended included: the kernel's
/// per-process CPU clock (`clock_getcpuclockid`), where `/proc/PID/stat` counts 10 ms ticks,
/// too coarse for a few hundred dials. 0 if the process is gone.
fn cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain libc calls with valid out-pointers.
    if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } != 0 {
        return 0;
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if unsafe { libc::clock_gettime(clock, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

async fn round(side: &Side, echo: SocketAddr, dials: usize) -> Round {
    let c0 = cpu_ns(side.pid);
    let mut times = Vec::with_capacity(dials);
    let mut to_200 = Vec::with_capacity(dials);
    for _ in 0..dials {
        let t0 = Instant::now();
        match &side.front {
            Some(front) => {
                let (s, head) = super::connect_front(front, &echo.to_string()).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", side.label);
                to_200.push(t0.elapsed().as_secs_f64() * 1e6);
                super::echo_once(s).await;
            }
            None => {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", side.port))
                    .await
                    .unwrap();
                s.set_nodelay(true).unwrap();
                super::echo_once(s).await;
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Round {
        cpu_us: cpu_ns(side.pid).saturating_sub(c0) as f64 / 1e3 / dials as f64,
        times,
        to_200,
    }
}

/// `run` with the cluster's node and its pod CIDR, its sockets named after `tag`.
fn daemon(cluster: &support::Cluster, tag: &str, extra: &[&str]) -> (Daemon, PathBuf) {
    let node = &cluster.nodes[0];
    let front = cluster.path().join(format!("dial-{tag}.sock"));
    let nodes = cluster.path().join(format!("dial-{tag}.toml"));
    std::fs::write(
        &nodes,
        format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\npod_cidrs = [\"{}\"]\n",
            node.name, node.addr, node.ssh_port, node.pod_cidr
        ),
    )
    .unwrap();
    // The cluster's `run` arguments, with this daemon's own sockets.
    let admin = cluster.path().join(format!("dial-{tag}-admin.sock"));
    let (def_front, def_admin) = (
        cluster.path().join("proxy.sock").display().to_string(),
        cluster.path().join("admin.sock").display().to_string(),
    );
    let mut args: Vec<String> = cluster
        .daemon_args()
        .into_iter()
        .map(|a| {
            if a == def_front {
                front.display().to_string()
            } else if a == def_admin {
                admin.display().to_string()
            } else {
                a
            }
        })
        .collect();
    args.extend(["--nodes", nodes.to_str().unwrap(), "--health-probe", "none"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 1, Duration::from_secs(30)),
        "{}",
        d.log()
    );
    (d, front)
}

/// The russh floor (`examples/russh_floor.rs`) serving the cluster's first node, when it is
/// built (`cargo build --release --example russh_floor`; `KST_FLOOR_BIN` names another
/// path); `None`, with a line saying so, when it is not.
fn floor(cluster: &support::Cluster) -> Option<(Daemon, PathBuf)> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), PathBuf::from);
    let bin = std::env::var_os("KST_FLOOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("release/examples/russh_floor"));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(&bin) else {
        println!(
            "  (no russh floor rows: {} is not built; cargo build --release --example russh_floor)",
            bin.display()
        );
        return None;
    };
    // A build older than its source would measure another program.
    if modified(&manifest.join("examples/russh_floor.rs")).is_some_and(|src| src > built) {
        println!(
            "  (no russh floor rows: {} is older than examples/russh_floor.rs; cargo build --release --example russh_floor)",
            bin.display()
        );
        return None;
    }
    let front = cluster.path().join("dial-floor.sock");
    let mut args = vec!["run".to_string()];
    args.extend(cluster.cli_args().into_iter().take_while(|a| a != "--node"));
    args.extend([
        "--node".to_string(),
        cluster.nodes[0].spec(),
        "--proxy-uds".to_string(),
        front.display().to_string(),
        "--admin-uds".to_string(),
        cluster
            .path()
            .join("dial-floor-admin.sock")
            .display()
            .to_string(),
    ]);
    let d = Daemon::start_program(&bin, &args);
    assert!(
        d.wait_log("russh_floor: ready", 1, Duration::from_secs(30)),
        "{}",
        d.log()
    );
    Some((d, front))
}

/// The rows: daemon CPU per dial (two runtime settings) beside `ssh`'s, and the dial times.
pub async fn run(smoke: bool) -> Vec<String> {
    let (rounds, dials) = if smoke { (1, 200) } else { (5, 1000) };
    let cluster = support::Cluster::start(1);
    let node = &cluster.nodes[0];
    let (_, echo, _) = super::servers(node.pod_addr).await;
    let (many, many_front) = daemon(&cluster, "default", &[]);
    let (one, one_front) = daemon(&cluster, "one-thread", &["--worker-threads", "1"]);
    let floor = floor(&cluster);
    let l = super::ssh_l(&cluster, node, echo, "aes128-gcm@openssh.com");
    let mut sides = vec![
        Side {
            label: "run (a worker thread per core)",
            pid: many.child.id(),
            front: Some(many_front),
            port: 0,
        },
        Side {
            label: "run --worker-threads 1",
            pid: one.child.id(),
            front: Some(one_front),
            port: 0,
        },
    ];
    if let Some((f, front)) = &floor {
        sides.push(Side {
            label: "russh floor (examples/russh_floor.rs)",
            pid: f.child.id(),
            front: Some(front.clone()),
            port: 0,
        });
    }
    // `ssh -L` last: the rows compare every other side with it.
    sides.push(Side {
        label: "ssh -L",
        pid: l.child.id(),
        front: None,
        port: l.local,
    });
    let ssh = sides.len() - 1;
    let mut got: Vec<Vec<Round>> = sides.iter().map(|_| Vec::new()).collect();
    for i in 0..rounds {
        for k in 0..sides.len() {
            // Rotate which side goes first.
            let k = (k + i) % sides.len();
            got[k].push(round(&sides[k], echo, dials).await);
        }
    }
    let cpu = |k: usize| super::med_range(got[k].iter().map(|r| r.cpu_us));
    let p = |k: usize, q: f64| {
        super::med_range(got[k].iter().map(|r| {
            let mut v = r.times.clone();
            super::pct(&mut v, q)
        }))
    };
    let (ssh_cpu, ..) = cpu(ssh);
    let (ssh_p50, ..) = p(ssh, 0.5);
    let (ssh_p99, ..) = p(ssh, 0.99);
    let mut rows = Vec::new();
    for (k, side) in sides.iter().enumerate().take(ssh) {
        let (c, clo, chi) = cpu(k);
        let (p50, ..) = p(k, 0.5);
        let (p99, ..) = p(k, 0.99);
        let (open50, ..) = super::med_range(got[k].iter().map(|r| {
            let mut v = r.to_200.clone();
            super::pct(&mut v, 0.5)
        }));
        rows.push(format!(
            "| tunnel process CPU per new CONNECT + 1-byte echo, `{}` ({rounds} rounds of {dials}; median, range) | {c:.0} µs ({clo:.0}–{chi:.0}) | {ssh_cpu:.0} µs (`ssh -L`) | {:.2}× |",
            side.label,
            c / ssh_cpu.max(1.0)
        ));
        rows.push(format!(
            "| new CONNECT + 1-byte echo through `{}`, p50 / p99 (of the p50, until the `200`: {open50:.0} µs) | {p50:.0} / {p99:.0} µs | {ssh_p50:.0} / {ssh_p99:.0} µs | {:.2}× / {:.2}× |",
            side.label,
            p50 / ssh_p50,
            p99 / ssh_p99
        ));
    }
    let (_, slo, shi) = cpu(ssh);
    println!("  (ssh -L CPU per dial: {ssh_cpu:.0} µs, range {slo:.0}–{shi:.0})");
    drop(l);
    drop(floor);
    drop(one);
    drop(many);
    rows
}
