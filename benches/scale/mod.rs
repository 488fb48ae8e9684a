//! The benchmark's scale rows: a real `kube-ssh-tunnel run` process against N in-process SSH
//! nodes (`support::scale`, default 5,000) served by a helper process — this benchmark binary
//! started again with `--serve-nodes N` — so that the daemon's memory and CPU are its own.
//! Measured: ready from cold (and the most handshakes at once, counted by the nodes), the
//! daemon's RSS per node, its idle CPU with keepalives at the default interval, and one dial
//! to every node (p50/p99).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::admin::document::StatusDocument;

use super::support;
use super::support::scale::{ScaleNodes, address};

/// Helper mode: serves `n` nodes, prints their files, answers `report` with the handshake
/// counts, and exits when stdin closes.
pub async fn serve_nodes(n: usize) {
    support::raise_fd_limit();
    let nodes = ScaleNodes::start(n).await;
    println!(
        "ready {} {} {}",
        nodes.key.display(),
        nodes.known_hosts.display(),
        nodes.nodes_file.display()
    );
    let handshakes = nodes.handshakes.clone();
    let stdin = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut input = std::io::stdin().lock();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line.trim() == "report" => {
                    println!("handshakes {} {}", handshakes.max(), handshakes.now());
                }
                Ok(_) => {}
            }
        }
    });
    let _ = stdin.await;
    drop(nodes);
}

/// Handshake limit the daemon runs with (its default).
const MAX_HANDSHAKES: usize = 32;

/// Runs the section; returns its table rows.
pub async fn rows(n: usize, idle_for: Duration) -> Vec<String> {
    let mut out = Vec::new();
    // The helper: this binary, serving the nodes.
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--serve-nodes", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let l = lines.next().and_then(Result::ok).unwrap_or_default();
        (l, lines)
    });
    let (ready, mut lines) = tokio::time::timeout(Duration::from_secs(600), first)
        .await
        .expect("the node helper starts within 10 minutes")
        .unwrap();
    let f: Vec<&str> = ready.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"ready"), "helper: {ready}");
    let (key, known_hosts, nodes_file) = (f[1], f[2], f[3]);
    let mut stdin = helper.stdin.take().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (dir.path().join("proxy.sock"), dir.path().join("admin.sock"));
    let args: Vec<String> = [
        "run",
        "--ssh-tunnel",
        "--ssh-user",
        "scale",
        "--ssh-keyfile",
        key,
        "--ssh-known-hosts",
        known_hosts,
        "--nodes",
        nodes_file,
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--admin-uds",
        admin.to_str().unwrap(),
        "--health-probe",
        "none",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let t0 = Instant::now();
    let mut daemon = support::daemon::Daemon::start(&args);
    let pid = daemon.child.id();
    let ep = Endpoint::Unix(admin.clone());
    let mut ready_n = 0;
    while t0.elapsed() < Duration::from_secs(600) {
        if let Ok((200, body)) = request(&ep, "GET", "/status", Duration::from_secs(30)).await
            && let Ok(doc) = serde_json::from_str::<StatusDocument>(&body)
        {
            ready_n = doc.ready;
            if doc.ready == n {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ready_secs = t0.elapsed().as_secs_f64();
    let cold_cpu = support::cpu_seconds_of(pid);
    writeln!(stdin, "report").unwrap();
    let (answer, lines) = tokio::task::spawn_blocking(move || {
        let l = lines.next().and_then(Result::ok).unwrap_or_default();
        (l, lines)
    })
    .await
    .unwrap();
    let max_handshakes: usize = answer
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib = support::rss_bytes_of(&pid.to_string()) / 1024;

    // Idle: keepalives every 15 s (the default), no probes, no dials.
    let (c0, i0) = (support::cpu_seconds_of(pid), Instant::now());
    tokio::time::sleep(idle_for).await;
    let idle_share = (support::cpu_seconds_of(pid) - c0) / i0.elapsed().as_secs_f64() * 100.0;

    // One dial to every node through the CONNECT front: CONNECT, GET /healthz, the answer.
    let proxy2 = proxy.clone();
    let (mut took, failures) = tokio::task::spawn_blocking(move || {
        let mut took = Vec::with_capacity(n);
        let mut failures = 0;
        for i in 0..n {
            let t = Instant::now();
            let target = format!("{}:10250", address(i));
            let (mut s, head) = support::connect_uds(&proxy2, &target);
            let mut body = String::new();
            let ok = head.starts_with("HTTP/1.1 200")
                && s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_ok()
                && s.read_to_string(&mut body).is_ok()
                && body.contains(" 200 ");
            if ok {
                took.push(t.elapsed().as_secs_f64() * 1e6);
            } else {
                failures += 1;
            }
        }
        (took, failures)
    })
    .await
    .unwrap();
    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let stopped = daemon.stop(libc::SIGTERM);
    drop(stdin);
    drop(lines);
    let _ = support::wait_bounded(&mut helper, Duration::from_secs(60));

    out.push(format!(
        "| {n} nodes (in-process SSH nodes in a helper process, each its own host key and loopback address; daemon `run --health-probe none`): ready from cold | {ready_n}/{n} in {ready_secs:.1} s, {cold_cpu:.1} CPU-s; at most {max_handshakes} handshakes at once (limit {MAX_HANDSHAKES}) | | target ≤ 60 s |"
    ));
    out.push(format!(
        "| {n} nodes: daemon RSS | {:.0} MiB, {} KiB per node | ssh: ~8 MB per client process | target ≤ 256 KiB per node |",
        rss_kib as f64 / 1024.0,
        rss_kib / n.max(1) as u64
    ));
    out.push(format!(
        "| {n} nodes: idle CPU, keepalives every 15 s, over {} s | {idle_share:.1} % of one core | | target ≤ 5 % |",
        idle_for.as_secs()
    ));
    out.push(format!(
        "| {n} nodes: one dial to each through the CONNECT front (CONNECT + GET + answer), p50 / p99 | {:.0} / {:.0} µs, {failures} failures; daemon exit {stopped:?} | | |",
        p(0.5),
        p(0.99)
    ));
    for l in &out {
        println!("{l}");
    }
    out
}
