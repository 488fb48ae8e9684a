//! The daemon at scale, bounded for CI: a real `kube-ssh-tunnel run` process against hundreds
//! of in-process SSH nodes (each with its own host key on its own loopback address; see
//! `support::scale`). Every node becomes ready with the handshakes in flight never above
//! `--max-handshakes` (counted on the servers' side), and every node answers one dial through
//! the CONNECT front. Speed and memory at 5,000 nodes are the benchmark's
//! (`cargo bench --bench tunnel -- --only scale`), never asserted here.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::admin::document::StatusDocument;
use support::daemon::Daemon;
use support::scale::{ScaleNodes, address};

/// Nodes in the CI run (KST_SCALE_NODES overrides).
const NODES: usize = 300;
const MAX_HANDSHAKES: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_nodes_become_ready_with_bounded_handshakes_and_each_answers_a_dial() {
    support::raise_fd_limit();
    let n: usize = std::env::var("KST_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(NODES);
    let nodes = ScaleNodes::start(n).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (dir.path().join("proxy.sock"), dir.path().join("admin.sock"));
    let mut args = nodes.daemon_args(&proxy, &admin);
    args.extend(["--max-handshakes".into(), MAX_HANDSHAKES.to_string()]);
    let started = Instant::now();
    let mut d = Daemon::start(&args);

    let ep = Endpoint::Unix(admin.clone());
    let mut doc: Option<StatusDocument> = None;
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok((200, body)) = request(&ep, "GET", "/status", Duration::from_secs(10)).await {
            let d: StatusDocument = serde_json::from_str(&body).unwrap();
            let done = d.desired == n && d.ready == n;
            doc = Some(d);
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready_after = started.elapsed();
    let doc = doc.expect("the admin API answered");
    assert_eq!((doc.desired, doc.ready), (n, n), "{}", d.log());
    assert!(
        nodes.handshakes.max() <= MAX_HANDSHAKES,
        "{} handshakes at once, limit {MAX_HANDSHAKES}",
        nodes.handshakes.max()
    );
    assert_eq!(nodes.handshakes.now(), 0);

    // Every node once through the CONNECT front.
    let proxy2 = proxy.clone();
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for i in 0..n {
            let target = format!("{}:10250", address(i));
            let (mut s, head) = support::connect_uds(&proxy2, &target);
            if !head.starts_with("HTTP/1.1 200") {
                failures.push(format!("{target}: {head}"));
                continue;
            }
            s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if !body.starts_with("HTTP/1.1 200") && !body.starts_with("HTTP/1.0 200") {
                failures.push(format!("{target}: {body}"));
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(
        failures.is_empty(),
        "{} dials failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let rss = support::rss_bytes_of(&d.child.id().to_string());
    eprintln!(
        "scale test: {n} nodes ready after {:.1} s, at most {} handshakes at once, daemon RSS {} KiB ({} KiB per node)",
        ready_after.as_secs_f64(),
        nodes.handshakes.max(),
        rss / 1024,
        rss / 1024 / n as u64
    );
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
}
