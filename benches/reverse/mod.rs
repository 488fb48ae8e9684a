//! Reverse mode beside forward mode (`cargo bench --bench tunnel -- --only reverse`; also in
//! `--smoke`, with tiny sizes): the same node, the same `run` daemon binary, the same
//! destinations on the node's pod address, reached through the daemon's CONNECT front as
//! kube-apiserver does. Forward: the daemon dials the node's sshd. Reverse: the node's stock
//! `ssh -N -R 0` dials the daemon's reverse listener. Alternating rounds, medians.
//!
//! Rows: download and upload of one stream (throughput, the daemon's CPU per GB, and the node
//! side's: the sshd session process or the `ssh -R` client), new CONNECT + 1-byte echo
//! (p50/p99), and N reverse nodes whose `ssh -R` all start at once (time until all are
//! ready, the daemon's RSS per node, the clients' RSS). Clients that exit (refused by a
//! limit, say) are restarted after 1 s, as `Restart=always` would. Bytes are checked as in
//! the other rows. Not a test: it asserts nothing about speed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support;
use super::support::daemon::Daemon;
use super::support::reverse::Keys;

/// Sizes of one run.
struct Sizes {
    rounds: usize,
    bytes: u64,
    echoes: usize,
    nodes: usize,
}

/// Children stopped by PID when dropped.
struct Procs(Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free port on 127.0.0.1 (bound and released: the daemon binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's /status nodes as (name, state), read once over its admin socket.
fn states(admin: &Path) -> Vec<(String, String)> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(admin) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let text = String::from_utf8_lossy(&r);
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_string(),
                n["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn ready_count(admin: &Path) -> usize {
    states(admin).iter().filter(|(_, s)| s == "ready").count()
}

/// A TOML node file.
fn node_file(path: &Path, nodes: &[(String, String, u16, String)]) {
    let mut toml = String::new();
    for (name, addr, port, cidr) in nodes {
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"{addr}\"\nssh_port = {port}\npod_cidrs = [{cidr}]\n\n"
        ));
    }
    std::fs::write(path, toml).expect("write the bench's node file");
}

/// CPU seconds of `pid` and all its descendants (an sshd and its session processes).
fn cpu_of_tree(pid: u32) -> f64 {
    let mut total = 0.0;
    let mut stack = vec![pid];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        if std::fs::metadata(format!("/proc/{p}")).is_err() {
            continue;
        }
        total += support::cpu_seconds_of(p);
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten();
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            stack.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
    }
    total
}

/// The node's `ssh -N -R 0` to the listener at `listen`, as node `node`.
fn reverse_ssh(keys: &Keys, listen: SocketAddr, node: &str) -> Child {
    let log = std::fs::File::create(keys.path(&format!("{node}-ssh.log"))).unwrap();
    Command::new("ssh")
        .args(["-N", "-R", "0"])
        .args(keys.ssh_args(listen, node, node))
        .args(["-o", "Ciphers=aes128-gcm@openssh.com"])
        .arg(listen.ip().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ssh (openssh-client)")
}

/// One side under measurement: its daemon's front and admin sockets and the node-side process.
struct Side<'a> {
    name: &'static str,
    daemon: &'a Daemon,
    front: PathBuf,
    /// The node side: the sshd (and its sessions) or the `ssh -R` client.
    node_pid: u32,
}

/// Figures of one round of one side.
#[derive(Default, Clone)]
struct Round {
    down_gbps: f64,
    down_cpu: f64,
    down_node_cpu: f64,
    up_gbps: f64,
    up_cpu: f64,
    up_node_cpu: f64,
    echo: Vec<f64>,
}

async fn round(
    side: &Side<'_>,
    s: &Sizes,
    source: SocketAddr,
    sink: SocketAddr,
    echo: SocketAddr,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, [u8; 32])>,
) -> Round {
    let pid = side.daemon.child.id();
    let gb = s.bytes as f64 / 1e9;
    let mut r = Round::default();
    // Download.
    let (c0, n0) = (support::cpu_seconds_of(pid), cpu_of_tree(side.node_pid));
    let (st, head) = super::connect_front(&side.front, &source.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", side.name);
    let secs = super::download_all(vec![Box::new(st)], s.bytes).await;
    r.down_gbps = gb * 8.0 / secs;
    r.down_cpu = (support::cpu_seconds_of(pid) - c0) / gb;
    r.down_node_cpu = (cpu_of_tree(side.node_pid) - n0) / gb;
    // Upload.
    let (c0, n0) = (support::cpu_seconds_of(pid), cpu_of_tree(side.node_pid));
    let (st, head) = super::connect_front(&side.front, &sink.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", side.name);
    let secs = super::upload_all(vec![st], s.bytes, rx).await;
    r.up_gbps = gb * 8.0 / secs;
    r.up_cpu = (support::cpu_seconds_of(pid) - c0) / gb;
    r.up_node_cpu = (cpu_of_tree(side.node_pid) - n0) / gb;
    // New CONNECT + 1-byte echo, one after another.
    for _ in 0..s.echoes {
        let t0 = Instant::now();
        let (mut st, head) = super::connect_front(&side.front, &echo.to_string()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", side.name);
        super::echo_byte(&mut st).await;
        r.echo.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    r
}

/// Forward and reverse side by side; then N reverse nodes at once. Returns markdown rows.
pub async fn run(smoke: bool) -> Vec<String> {
    let s = if smoke {
        Sizes {
            rounds: 1,
            bytes: 8 << 20,
            echoes: 20,
            nodes: 10,
        }
    } else {
        Sizes {
            rounds: 5,
            bytes: 256 << 20,
            echoes: 300,
            nodes: 1000,
        }
    };
    support::raise_fd_limit();
    let cluster = support::Cluster::start(1);
    let node = &cluster.nodes[0];
    let (sink, echo, mut rx) = super::servers(node.pod_addr).await;
    let source = super::source_server(node.pod_addr).await;
    let file = cluster.path().join("bench-nodes.toml");
    node_file(
        &file,
        &[(
            "node-1".into(),
            node.addr.to_string(),
            node.ssh_port,
            format!("\"{}\"", node.pod_cidr),
        )],
    );
    let file_s = file.display().to_string();
    // Forward: the daemon dials the node's sshd.
    let mut fwd_args = cluster.daemon_args();
    fwd_args.extend(["--nodes", &file_s, "--health-probe", "none"].map(String::from));
    let forward = Daemon::start(&fwd_args);
    // Reverse: the same node's address and pod CIDR, reached through its own ssh -R.
    let keys = Keys::new(&["node-1"]);
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let reverse = keys.daemon_with(listen, &[], &["--nodes", &file_s, "--health-probe", "none"]);
    let client = Procs(vec![Some(reverse_ssh(&keys, listen, "node-1"))]);
    let fwd_admin = cluster.path().join("admin.sock");
    let rev_admin = keys.path("admin.sock");
    for (admin, d) in [(&fwd_admin, &forward), (&rev_admin, &reverse)] {
        assert!(
            support::wait_until(Duration::from_secs(60), || ready_count(admin) == 1),
            "node-1 not ready: {}\nssh -R: {}",
            d.log(),
            std::fs::read_to_string(keys.path("node-1-ssh.log")).unwrap_or_default()
        );
    }
    let sides = [
        Side {
            name: "forward",
            daemon: &forward,
            front: cluster.path().join("proxy.sock"),
            node_pid: node.sshd_pid().expect("the node's sshd"),
        },
        Side {
            name: "reverse",
            daemon: &reverse,
            front: keys.path("proxy.sock"),
            node_pid: client.0[0].as_ref().unwrap().id(),
        },
    ];
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for i in 0..s.rounds {
        for k in 0..2 {
            // Alternate which side goes first.
            let k = (k + i) % 2;
            let r = round(&sides[k], &s, source, sink, echo, &mut rx).await;
            rounds[k].push(r);
        }
    }
    let mut rows = Vec::new();
    let mut row = |what: &str, f: &dyn Fn(&Round) -> f64, unit: &str, digits: usize| {
        let (fm, flo, fhi) = super::med_range(rounds[0].iter().map(f));
        let (rm, rlo, rhi) = super::med_range(rounds[1].iter().map(f));
        rows.push(format!(
            "| {what} ({unit}) | {fm:.digits$} ({flo:.digits$}–{fhi:.digits$}) | {rm:.digits$} ({rlo:.digits$}–{rhi:.digits$}) | {:.2}× |",
            rm / fm
        ));
    };
    let p = |q: f64| {
        move |r: &Round| {
            let mut v = r.echo.clone();
            super::pct(&mut v, q)
        }
    };
    row("download, 1 stream", &|r| r.down_gbps, "Gbit/s", 2);
    row("download: daemon CPU", &|r| r.down_cpu, "s/GB", 2);
    row("download: node-side CPU", &|r| r.down_node_cpu, "s/GB", 2);
    row("upload, 1 stream", &|r| r.up_gbps, "Gbit/s", 2);
    row("upload: daemon CPU", &|r| r.up_cpu, "s/GB", 2);
    row("upload: node-side CPU", &|r| r.up_node_cpu, "s/GB", 2);
    row("new CONNECT + 1-byte echo, p50", &p(0.5), "µs", 0);
    row("new CONNECT + 1-byte echo, p99", &p(0.99), "µs", 0);
    drop(client);
    drop(reverse);
    drop(forward);
    rows.push(many_at_once(s.nodes, &[]).await);
    if !smoke {
        // The same without the cap on unauthenticated connections (default 64).
        rows.push(many_at_once(s.nodes, &["--reverse-max-unauthenticated", "4096"]).await);
    }
    rows
}

/// `n` reverse nodes whose `ssh -R` start at once: seconds until all are ready, restarts,
/// the daemon's RSS per node (after all are ready, minus before any dialled in) and the
/// clients' mean RSS.
async fn many_at_once(n: usize, extra: &[&str]) -> String {
    let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let keys = Keys::new(&refs);
    let file = keys.path("nodes.toml");
    let nodes: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (a, b) = (i / 250, i % 250 + 1);
            (name.clone(), format!("127.253.{a}.{b}"), 22, String::new())
        })
        .collect();
    node_file(&file, &nodes);
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let file_s = file.display().to_string();
    let mut flags = vec![
        "--nodes",
        &file_s,
        "--health-probe",
        "none",
        "--log-level",
        "warn",
    ];
    flags.extend_from_slice(extra);
    let daemon = keys.daemon_with(listen, &[], &flags);
    let admin = keys.path("admin.sock");
    assert!(
        support::wait_until(Duration::from_secs(120), || states(&admin).len() == n),
        "the {n} reverse nodes are not all in /status: {}",
        daemon.log()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = daemon.child.id();
    let rss0 = super::rss_of_mib(pid);
    let t0 = Instant::now();
    let mut clients = Procs(
        names
            .iter()
            .map(|name| Some(reverse_ssh(&keys, listen, name)))
            .collect(),
    );
    let mut exited_at: Vec<Option<Instant>> = vec![None; n];
    let mut restarts = 0usize;
    let mut causes: std::collections::BTreeMap<String, usize> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut ready = 0;
    // Bounded: one pass every 250 ms until the deadline.
    while Instant::now() < deadline {
        ready = ready_count(&admin);
        if ready == n {
            break;
        }
        for (i, c) in clients.0.iter_mut().enumerate() {
            let gone = c
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if gone {
                *c = None;
                exited_at[i] = Some(Instant::now());
                // Why it exited: the last line its ssh wrote, without the varying parts.
                let log = std::fs::read_to_string(keys.path(&format!("{}-ssh.log", names[i])))
                    .unwrap_or_default();
                let last = log.lines().last().unwrap_or("(nothing)");
                let cause: String = last.chars().filter(|c| !c.is_ascii_digit()).collect();
                *causes.entry(cause).or_insert(0usize) += 1;
            }
            if c.is_none()
                && exited_at[i].is_some_and(|t| t.elapsed() >= Duration::from_secs(1))
                && restarts < 20 * n
            {
                *c = Some(reverse_ssh(&keys, listen, &names[i]));
                exited_at[i] = None;
                restarts += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    for (cause, count) in &causes {
        println!("reverse bench: {count} ssh exits: {cause}");
    }
    assert_eq!(
        ready, n,
        "reverse nodes ready after {took:.0} s: {ready} of {n}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = super::rss_of_mib(pid);
    let client_rss: f64 = clients
        .0
        .iter()
        .flatten()
        .map(|c| super::rss_of_mib(c.id()))
        .sum::<f64>()
        / n as f64;
    drop(clients);
    drop(daemon);
    format!(
        "| {n} reverse nodes' `ssh -R` started at once{} | all ready in {took:.1} s ({restarts} client restarts) | daemon RSS {rss0:.0} → {rss1:.0} MiB: {:.0} KiB per reverse node | each node's `ssh -R`: {client_rss:.1} MiB RSS |",
        if extra.is_empty() {
            String::new()
        } else {
            format!(" (`{}`)", extra.join(" "))
        },
        (rss1 - rss0) * 1024.0 / n as f64
    )
}
