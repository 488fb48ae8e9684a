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

/// Watch-only helper mode: runs nothing but the Node watch (the library's `NodeSource::Kube`)
/// against `kubeconfig` until `n` nodes arrive, then prints the bytes it keeps
/// (`live()` after minus before) and, on `report`, its CPU time; exits when stdin closes.
pub async fn watch_only(kubeconfig: &str, n: usize, live: fn() -> isize) {
    use kube_ssh_tunnel::nodes::NodeSource;
    use kube_ssh_tunnel::nodes::watch::{ApiSource, WatchConfig};
    let before = live();
    let source = NodeSource::Kube(WatchConfig {
        source: ApiSource::Kubeconfig(kubeconfig.into()),
        label_selector: None,
        address_types: kube_ssh_tunnel::nodes::AddressTypes(vec!["InternalIP".parse().unwrap()]),
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let started = source
        .start(Default::default(), cancel.clone())
        .await
        .unwrap();
    let mut rx = started.nodes;
    let task = tokio::spawn(started.task.unwrap());
    let _ = tokio::time::timeout(
        Duration::from_secs(600),
        rx.wait_for(|nodes| nodes.len() == n),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("ready {} {}", live() - before, rx.borrow().len());
    let me = std::process::id();
    let _ = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut input = std::io::stdin().lock();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => println!("cpu {}", support::cpu_seconds_of(me)),
            }
        }
    })
    .await;
    cancel.cancel();
    let _ = task.await;
}

/// Handshake limit the daemon runs with (its default).
const MAX_HANDSHAKES: usize = 32;

/// Runs the section; returns its table rows.
pub async fn rows(n: usize, idle_for: Duration) -> Vec<String> {
    let mut out = Vec::new();
    // The helper: this binary, serving the nodes.
    let (mut helper, mut stdin, mut lines, [key, known_hosts, nodes_file]) =
        tokio::task::spawn_blocking(move || start_helper(n))
            .await
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (dir.path().join("proxy.sock"), dir.path().join("admin.sock"));
    let mut args = support::scale::daemon_args(
        &key,
        &known_hosts,
        &["--nodes", &nodes_file],
        &proxy,
        &admin,
    );
    args.extend(["--health-probe", "none", "--log-level", "warn"].map(String::from));
    let t0 = Instant::now();
    let mut daemon = support::daemon::Daemon::start(&args);
    let pid = daemon.child.id();
    let ep = Endpoint::Unix(admin.clone());
    until_status(&ep, Duration::from_secs(600), |doc| doc.ready == n).await;
    let ready_secs = t0.elapsed().as_secs_f64();
    let cold_cpu = support::cpu_seconds_of(pid);
    let ready_n = match request(&ep, "GET", "/status", Duration::from_secs(30)).await {
        Ok((200, body)) => serde_json::from_str::<StatusDocument>(&body).map_or(0, |d| d.ready),
        _ => 0,
    };
    writeln!(stdin, "report").unwrap();
    let answer =
        tokio::task::block_in_place(|| lines.next().and_then(Result::ok).unwrap_or_default());
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
    crate::check::expect(ready_n == n && failures == 0 && stopped == Some(0), || {
        format!("scale: {ready_n}/{n} ready, {failures} dials failed, daemon exit {stopped:?}")
    });
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
    out
}

/// Spare nodes the watch rows move nodes to (address changes).
const SPARES: usize = 3;

/// A node of the helper's node file: (name, address, SSH port, pod CIDR).
fn helper_nodes(nodes_file: &str) -> Vec<(String, String, u16, String)> {
    let table: toml::Table = std::fs::read_to_string(nodes_file)
        .unwrap()
        .parse()
        .unwrap();
    table["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["address"].as_str().unwrap().to_string(),
                n["ssh_port"].as_integer().unwrap() as u16,
                n["pod_cidrs"][0].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The helper's output, line by line.
type HelperLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// The helper process serving `n` nodes: (child, its stdin, its output, and the key,
/// known_hosts and node file it wrote).
fn start_helper(
    n: usize,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    HelperLines,
    [String; 3],
) {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--serve-nodes", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"ready"), "helper: {line}");
    let stdin = helper.stdin.take().unwrap();
    (
        helper,
        stdin,
        lines,
        [f[1].to_string(), f[2].to_string(), f[3].to_string()],
    )
}

/// Polls `/status` until `cond` holds (bounded); returns the time it took, if it did.
async fn until_status(
    ep: &Endpoint,
    limit: Duration,
    cond: impl Fn(&StatusDocument) -> bool,
) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok((200, body)) = request(ep, "GET", "/status", Duration::from_secs(30)).await
            && let Ok(doc) = serde_json::from_str::<StatusDocument>(&body)
            && cond(&doc)
        {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The Node watch at scale: `n` realistic Node objects (about 10 KB each) from a stand-in API
/// server, a daemon process that follows them (`run --kubeconfig`), then 50 updates a second.
pub async fn watch_rows(n: usize, window: Duration) -> Vec<String> {
    use support::apiserver::{ApiServer, event, node_list, realistic_node_object};
    let mut out = Vec::new();
    let (mut helper, stdin, _lines, [key, known_hosts, nodes_file]) =
        tokio::task::spawn_blocking(move || start_helper(n + SPARES))
            .await
            .unwrap();
    let all = helper_nodes(&nodes_file);
    let (nodes, spares) = all.split_at(n);
    let dir = tempfile::tempdir().unwrap();
    let object = |i: usize, rv: u32, beat: u32| {
        let (name, addr, port, cidr) = &nodes[i];
        realistic_node_object(name, addr, *port, rv, cidr, beat)
    };
    let list = node_list(1, (0..n).map(|i| object(i, 1, 0)).collect());
    let list_bytes = list.to_string().len();
    let server = ApiServer::start(dir.path(), vec![list]).await;

    let run = |source: &[&str], tag: &str| {
        let mut args = support::scale::daemon_args(
            &key,
            &known_hosts,
            source,
            &dir.path().join(format!("{tag}-proxy.sock")),
            &dir.path().join(format!("{tag}-admin.sock")),
        );
        args.extend(
            [
                "--node-address-types",
                "InternalIP",
                "--health-probe",
                "none",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        args
    };
    let all_ready = |doc: &StatusDocument| doc.ready == n && doc.desired == n;

    // The same nodes from a node file first: the daemon's RSS without the watch.
    let file_nodes = dir.path().join("nodes.toml");
    let text = std::fs::read_to_string(&nodes_file).unwrap();
    let first_n: String = text
        .split("[[nodes]]")
        .skip(1)
        .take(n)
        .map(|e| format!("[[nodes]]{e}"))
        .collect();
    std::fs::write(&file_nodes, first_n).unwrap();
    let mut plain =
        support::daemon::Daemon::start(&run(&["--nodes", file_nodes.to_str().unwrap()], "file"));
    let ep = Endpoint::Unix(dir.path().join("file-admin.sock"));
    until_status(&ep, Duration::from_secs(600), all_ready).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_file = support::rss_bytes_of(&plain.child.id().to_string());
    plain.stop(libc::SIGTERM);

    // The watch.
    let t0 = Instant::now();
    let mut d = support::daemon::Daemon::start(&run(
        &["--kubeconfig", server.kubeconfig.to_str().unwrap()],
        "watch",
    ));
    let pid = d.child.id();
    let ep = Endpoint::Unix(dir.path().join("watch-admin.sock"));
    let ready = until_status(&ep, Duration::from_secs(600), all_ready).await;
    let ready_secs = t0.elapsed().as_secs_f64();
    assert!(server.wait_watch(Duration::from_secs(60)).await, "no watch");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_watch = support::rss_bytes_of(&pid.to_string());

    // A second process running nothing but the watch: its kept bytes (counted by the
    // allocator) and its CPU per event, without a pool's idle work around it.
    let mut only = Command::new(std::env::current_exe().unwrap())
        .args([
            "--watch-only",
            server.kubeconfig.to_str().unwrap(),
            "--expect",
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut only_in = only.stdin.take().unwrap();
    let mut only_out = BufReader::new(only.stdout.take().unwrap()).lines();
    let mut only_line = move || {
        tokio::task::block_in_place(|| only_out.next().and_then(Result::ok).unwrap_or_default())
    };
    let ready_line = only_line();
    let kept: f64 = ready_line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!(
        server.wait_watches(2, Duration::from_secs(60)).await,
        "no second watch"
    );
    let mut only_cpu = move || {
        writeln!(only_in, "report").unwrap();
        only_line()
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };

    // Idle baseline (keepalives), then heartbeats only: 50 MODIFIED a second, each a whole
    // realistic object whose tunnel fields do not change (what kubelets send all day).
    let quiet = window / 4;
    let (c0, t) = (support::cpu_seconds_of(pid), Instant::now());
    tokio::time::sleep(quiet).await;
    let idle_rate = (support::cpu_seconds_of(pid) - c0) / t.elapsed().as_secs_f64();
    let mut rv = 2;
    let mut send_for = |secs: Duration, change: &dyn Fn(usize, u32) -> serde_json::Value| {
        let (c0, t) = (support::cpu_seconds_of(pid), Instant::now());
        let mut events = 0u32;
        let mut tick = std::time::Instant::now();
        while t.elapsed() < secs {
            let i = fastrand::usize(..n);
            server.send(event("MODIFIED", change(i, rv)));
            rv += 1;
            events += 1;
            tick += Duration::from_millis(20);
            std::thread::sleep(tick.saturating_duration_since(std::time::Instant::now()));
        }
        let cpu = support::cpu_seconds_of(pid) - c0 - idle_rate * t.elapsed().as_secs_f64();
        (events, cpu.max(0.0) / f64::from(events.max(1)) * 1e3)
    };
    let only0 = only_cpu();
    let (beats, ms_beat) = send_for(window, &|i, rv| object(i, rv, rv));
    let ms_only = (only_cpu() - only0) / f64::from(beats.max(1)) * 1e3;
    // Then tunnel-relevant changes only: every event moves a node's pod CIDR (each a new
    // node set for the pool, coalesced).
    let (moves, ms_move) = send_for(quiet, &|i, rv| {
        let mut o = object(i, rv, rv);
        let cidr = if rv % 2 == 0 {
            format!("10.{}.{}.0/24", 64 + i / 256, i % 256)
        } else {
            nodes[i].3.clone()
        };
        o["spec"]["podCIDR"] = serde_json::json!(cidr);
        o["spec"]["podCIDRs"] = serde_json::json!([cidr]);
        o
    });

    // Address changes: a node moves to a spare's address; time until it is ready there.
    let mut moved = Vec::new();
    for (k, (_, addr, port, _)) in spares.iter().enumerate() {
        let (name, _, _, cidr) = &nodes[k + 1];
        let o = realistic_node_object(name, addr, *port, rv, cidr, rv);
        rv += 1;
        let t = Instant::now();
        server.send(event("MODIFIED", o));
        let addr = addr.clone();
        let name = name.clone();
        let took = until_status(&ep, Duration::from_secs(60), move |doc| {
            doc.nodes.iter().any(|d| {
                d.name == name
                    && d.address == addr
                    && d.state == kube_ssh_tunnel::pool::TunnelState::Ready
            })
        })
        .await;
        moved.push(took.map_or(f64::NAN, |_| t.elapsed().as_secs_f64() * 1e3));
    }
    let unmoved = moved.iter().filter(|m| m.is_nan()).count();
    moved.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let stopped = d.stop(libc::SIGTERM);
    crate::check::expect(
        ready.is_some() && unmoved == 0 && stopped == Some(0),
        || {
            format!(
                "Node watch: all ready: {}, {unmoved} address changes never ready, daemon exit {stopped:?}",
                ready.is_some()
            )
        },
    );
    drop(only_cpu);
    let _ = support::wait_bounded(&mut only, Duration::from_secs(60));
    drop(stdin);
    let _ = support::wait_bounded(&mut helper, Duration::from_secs(60));

    out.push(format!(
        "| Node watch: memory the watch keeps for {n} nodes (its store and the last node set; counted by the allocator in a process running only the watch) | {:.0} KiB, {:.2} KiB per node | | target ≤ 4 KiB per node |",
        kept / 1024.0,
        kept / 1024.0 / n.max(1) as f64
    ));
    out.push(format!(
        "| Node watch: CPU per MODIFIED event of a process running only the watch, {beats} heartbeats at 50/s | {ms_only:.3} ms | | target ≤ 0.2 ms |"
    ));
    out.push(format!(
        "| Node watch, {n} realistic Node objects ({:.1} KB each) from a stand-in API server: daemon ready | {} in {ready_secs:.1} s | | |",
        list_bytes as f64 / n as f64 / 1000.0,
        if ready.is_some() { "all nodes" } else { "NOT all nodes" },
    ));
    out.push(format!(
        "| Node watch: whole daemon RSS with the watch / with the same nodes from a node file | {:.0} MiB / {:.0} MiB (RSS varies this much between runs; the allocator's count above is the watch's own) | | |",
        rss_watch as f64 / 1048576.0,
        rss_file as f64 / 1048576.0,
    ));
    out.push(format!(
        "| Node watch: whole daemon CPU per MODIFIED event above its idle ({n} connections' keepalives; noisy), {beats} heartbeats at 50/s | {ms_beat:.3} ms | | |"
    ));
    out.push(format!(
        "| Node watch: daemon CPU per MODIFIED event above idle, {moves} pod-CIDR changes at 50/s (each a new node set) | {ms_move:.3} ms | | |"
    ));
    out.push(format!(
        "| Node watch: address change → ready on the new address ({} moves), median / max | {:.0} / {:.0} ms; daemon exit {stopped:?} | | |",
        moved.len(),
        moved[moved.len() / 2],
        moved[moved.len() - 1]
    ));
    out
}
