//! Stream isolation through the daemon's CONNECT front, against a real sshd node: a slow
//! reader or bulk traffic on a node must not hold up the node's new dials, the bytes of the
//! slow stream all arrive, and what readers that are behind hold stays within the budget.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use support::Cluster;
use support::daemon::Daemon;
use support::streams::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The daemon on one node, with its sockets; `extra` flags added.
struct Running {
    d: Daemon,
    admin: PathBuf,
    proxy: PathBuf,
}

fn start(c: &Cluster, extra: &[&str]) -> Running {
    // A node file, so that each node's pod CIDR routes (the sources live on pod addresses).
    let mut toml = String::new();
    for n in &c.nodes {
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\npod_cidrs = [\"{}\"]\n",
            n.name, n.addr, n.ssh_port, n.pod_cidr
        ));
    }
    let file = c.path().join("nodes.toml");
    std::fs::write(&file, toml).unwrap();
    let mut args = c.daemon_args();
    args.extend(["--nodes".to_string(), file.display().to_string()]);
    if !extra.contains(&"--health-probe") {
        args.extend(["--health-probe".to_string(), "none".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::start(&args);
    let admin = c.path().join("admin.sock");
    let proxy = c.path().join("proxy.sock");
    assert!(
        support::wait_until(Duration::from_secs(20), || proxy.exists() && admin.exists()),
        "daemon sockets: {}",
        d.log()
    );
    Running { d, admin, proxy }
}

impl Running {
    async fn get(&self, path: &str) -> String {
        request(
            &Endpoint::Unix(self.admin.clone()),
            "GET",
            path,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .1
    }

    /// The first node's entry of /status.
    async fn node(&self) -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_str(&self.get("/status").await).unwrap();
        doc["nodes"][0].clone()
    }

    /// Polls the first node's /status entry until `pred` holds (at most `limit`).
    async fn wait_node(&self, limit: Duration, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if pred(&self.node().await) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn rss_kib(&self) -> u64 {
        // Panics when the daemon's RSS cannot be read (it died): never a 0 that passes a bound.
        support::rss_bytes_of(&self.d.child.id().to_string()) / 1024
    }
}

/// One slow reader of a 256 MiB source, then 200 new CONNECTs to the same node, each of which
/// must answer within 2 s; then the slow reader reads at full speed and must get every byte.
async fn slow_reader_case(spill: bool) {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    const LEN: u64 = 256 << 20;
    let src = source(node.pod_addr, &pattern, LEN).await;
    let ech = echo(node.pod_addr).await;
    let spill_dir = cluster.path().join("spill");
    std::fs::create_dir_all(&spill_dir).unwrap();
    let mut spill_flags = vec![
        "--spill-dir".to_string(),
        spill_dir.display().to_string(),
        "--spill-budget".into(),
        if spill { "1GiB" } else { "0" }.into(),
    ];
    if !spill {
        // Health probes every second, two failures replace a connection: a probe that waited
        // behind the held-up connection would cut the slow stream. Probes skip a congested
        // connection instead (checked below: no reconnect).
        spill_flags.extend(
            [
                "--health-probe",
                "tcp",
                "--health-interval",
                "1s",
                "--health-timeout",
                "500ms",
                "--health-failures",
                "2",
            ]
            .map(String::from),
        );
    }
    let flags: Vec<&str> = spill_flags.iter().map(String::as_str).collect();
    let r = start(&cluster, &flags);
    assert!(
        r.wait_node(Duration::from_secs(20), |n| n["state"] == "ready")
            .await,
        "ready: {}",
        r.d.log()
    );

    let slow = connect(&r.proxy, &src)
        .await
        .expect("the slow stream opens");
    let fast = Arc::new(AtomicBool::new(false));
    let reader = slow_reader(slow, fast.clone(), Duration::from_secs(240));
    // Wait until the reader is behind by its memory share: spilling, or (spill off) holding
    // up its connection.
    let behind = r
        .wait_node(Duration::from_secs(30), |n| {
            if spill {
                n["spilled_bytes"].as_u64().unwrap_or(0) > 0
            } else {
                n["congested_connections"].as_u64().unwrap_or(0) >= 1
            }
        })
        .await;
    assert!(behind, "the slow reader falls behind: {}", r.node().await);
    if !spill {
        // Several probe intervals pass while the connection is held up.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let mut worst = Duration::ZERO;
    for i in 0..200 {
        match echo_within(&r.proxy, &ech, Duration::from_secs(2)).await {
            Ok(took) => worst = worst.max(took),
            Err(e) => panic!(
                "new CONNECT {i} beside the slow reader failed: {e}\n{}\n{}",
                r.node().await,
                r.d.log()
            ),
        }
    }
    let during = r.node().await;
    eprintln!(
        "spill {spill}: 200 CONNECTs beside a slow reader, slowest {worst:?}; node: {during}"
    );
    let metrics = r.get("/metrics").await;
    if spill {
        assert!(during["spilled_bytes"].as_u64().unwrap() > 0, "{during}");
        // Spilling alone kept the connection free: the 200 CONNECTs shared the one SSH
        // connection, which never counted as congested (an extra connection would hide a
        // spill path that stops taking data).
        assert_eq!(
            node.ssh_connections(),
            1,
            "sshd sees exactly one connection while the reader spills: {during}"
        );
        assert_eq!(during["connections"], 1, "{during}");
        assert_eq!(during["congested_connections"], 0, "{during}");
        assert_eq!(
            metric(
                &metrics,
                "kube_ssh_tunnel_isolation_connections_total{node=\"node-1\"}"
            ),
            0.0,
            "no connection was ever opened for isolation: {metrics}"
        );
        assert!(
            metric(
                &metrics,
                "kube_ssh_tunnel_spilled_streams_total{node=\"node-1\"}"
            ) >= 1.0
        );
        assert!(
            metric(
                &metrics,
                "kube_ssh_tunnel_buffer_budget_used_bytes{kind=\"spill\"}"
            ) > 0.0,
            "{metrics}"
        );
    } else {
        assert!(
            during["congested_connections"].as_u64().unwrap() >= 1,
            "{during}"
        );
        assert!(during["connections"].as_u64().unwrap() >= 2, "{during}");
        assert!(
            node.ssh_connections() >= 2,
            "sshd sees the extra connection"
        );
        assert!(
            metric(
                &metrics,
                "kube_ssh_tunnel_isolation_connections_total{node=\"node-1\"}"
            ) >= 1.0,
            "{metrics}"
        );
        assert!(
            metric(
                &metrics,
                "kube_ssh_tunnel_congested_seconds_total{node=\"node-1\"}"
            ) > 0.0,
            "{metrics}"
        );
        assert!(
            r.d.log().contains("connection congested"),
            "the congestion is logged: {}",
            r.d.log()
        );
    }

    // Now the slow reader catches up at full speed: every byte, in order.
    fast.store(true, Ordering::Release);
    let (got, hash) = tokio::time::timeout(Duration::from_secs(240), reader)
        .await
        .expect("the slow reader finishes")
        .unwrap();
    assert_eq!(got, LEN, "every byte of the slow stream arrives");
    assert_eq!(
        r.node().await["reconnects"],
        0,
        "the held-up connection was never replaced"
    );
    assert!(hash == pattern.hash(LEN), "the slow stream is intact");
    let after = r.node().await;
    assert!(
        r.wait_node(Duration::from_secs(10), |n| n["buffered_bytes"] == 0
            && n["spilled_bytes"] == 0
            && n["congested_connections"] == 0)
            .await,
        "buffers given back and no longer congested: {after}"
    );
    if !spill {
        assert!(
            r.d.log().contains("no longer congested"),
            "the recovery is logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_spills_and_new_connects_to_its_node_answer_at_once() {
    slow_reader_case(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spilling_a_slow_reader_congests_one_connection_and_new_connects_go_to_another() {
    slow_reader_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upload_and_download_do_not_hold_up_new_connects() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (src, source_bulk) = source_until(node.pod_addr, &pattern, stop.clone()).await;
    let (snk, sink_bulk) = sink(node.pod_addr).await;
    let ech = echo(node.pod_addr).await;
    let r = start(&cluster, &[]);
    assert!(
        r.wait_node(Duration::from_secs(20), |n| n["state"] == "ready")
            .await
    );
    // Bulk upload and bulk download, each until told to stop (at most 120 s). Any error, or an
    // EOF before the stop, ends the task with an error: the test must not go on beside a dead
    // bulk stream.
    let mut up = connect(&r.proxy, &snk).await.unwrap();
    let mut down = connect(&r.proxy, &src).await.unwrap();
    let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut uploader = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let buf = vec![0x5au8; 64 << 10];
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Acquire) && Instant::now() < end {
                up.write_all(&buf)
                    .await
                    .map_err(|e| format!("upload write failed: {e}"))?;
                sent.fetch_add(buf.len() as u64, Ordering::AcqRel);
            }
            // Our EOF goes through; the sink then closes, and so does the stream, cleanly.
            up.shutdown()
                .await
                .map_err(|e| format!("upload shutdown failed: {e}"))?;
            let mut rest = Vec::new();
            match tokio::time::timeout(Duration::from_secs(30), up.read_to_end(&mut rest)).await {
                Ok(Ok(0)) => Ok(()),
                Ok(Ok(n)) => Err(format!("upload stream sent {n} unexpected bytes back")),
                Ok(Err(e)) => Err(format!("upload stream ended with an error: {e}")),
                Err(_) => Err("upload stream did not end within 30 s of our EOF".to_string()),
            }
        })
    };
    let mut downloader = {
        let (stop, got) = (stop.clone(), got.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            let end = Instant::now() + Duration::from_secs(120);
            // Reads to the end: after the stop, the source sends EOF once its last block is out.
            while Instant::now() < end {
                match tokio::time::timeout(Duration::from_secs(30), down.read(&mut buf)).await {
                    Ok(Ok(0)) if stop.load(Ordering::Acquire) => return Ok(()),
                    Ok(Ok(0)) => return Err("download ended (EOF) before the stop".to_string()),
                    Ok(Ok(n)) => got.fetch_add(n as u64, Ordering::AcqRel),
                    Ok(Err(e)) => return Err(format!("download read failed: {e}")),
                    Err(_) => return Err("download read got nothing for 30 s".to_string()),
                };
            }
            Err("download did not end within 120 s".to_string())
        })
    };
    // Both bulk streams are moving before the measured connects start.
    let moving = |from: (u64, u64)| {
        let (sent, got) = (sent.clone(), got.clone());
        move || {
            sent.load(Ordering::Acquire) >= from.0 + (1 << 20)
                && got.load(Ordering::Acquire) >= from.1 + (1 << 20)
        }
    };
    assert!(
        support::wait_until(Duration::from_secs(20), moving((8 << 20, 8 << 20))),
        "both bulk streams move data before the connects: up {} down {}",
        sent.load(Ordering::Acquire),
        got.load(Ordering::Acquire)
    );
    let before = (sent.load(Ordering::Acquire), got.load(Ordering::Acquire));
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        match echo_within(&r.proxy, &ech, Duration::from_secs(2)).await {
            Ok(took) => worst = worst.max(took),
            Err(e) => panic!("new CONNECT {i} during bulk traffic failed: {e}"),
        }
    }
    let during = r.node().await;
    let after = (sent.load(Ordering::Acquire), got.load(Ordering::Acquire));
    for (what, task) in [("upload", &mut uploader), ("download", &mut downloader)] {
        if task.is_finished() {
            panic!(
                "the bulk {what} must still be open after the connects, but it ended with {:?}",
                task.await
            );
        }
    }
    // They still move after the connects: each advances by another MiB (bounded wait).
    assert!(
        support::wait_until(Duration::from_secs(20), moving(after)),
        "both bulk streams still move after the connects: up {} → {}, down {} → {}",
        after.0,
        sent.load(Ordering::Acquire),
        after.1,
        got.load(Ordering::Acquire)
    );
    stop.store(true, Ordering::Release);
    let up_end = tokio::time::timeout(Duration::from_secs(60), uploader)
        .await
        .expect("the upload ends")
        .unwrap();
    let down_end = tokio::time::timeout(Duration::from_secs(60), downloader)
        .await
        .expect("the download ends")
        .unwrap();
    let (sent, got) = (sent.load(Ordering::Acquire), got.load(Ordering::Acquire));
    eprintln!(
        "bulk: uploaded {} MiB ({} MiB during the connects), downloaded {} MiB ({} MiB during), slowest of 200 CONNECTs {worst:?}; node: {during}",
        sent >> 20,
        (after.0 - before.0) >> 20,
        got >> 20,
        (after.1 - before.1) >> 20,
    );
    up_end.expect("the upload runs without error and ends cleanly");
    down_end.expect("the download runs without error and ends cleanly");
    // Every byte made it: the sink saw our EOF after all we sent, we saw the source's EOF
    // after all it sent.
    assert!(
        support::wait_until(Duration::from_secs(10), || sink_bulk
            .ended
            .load(Ordering::Acquire)),
        "the sink saw the upload's EOF"
    );
    assert_eq!(
        sink_bulk.bytes.load(Ordering::Acquire),
        sent,
        "the sink got every uploaded byte"
    );
    assert!(
        source_bulk.ended.load(Ordering::Acquire),
        "the source ended"
    );
    assert_eq!(
        got,
        source_bulk.bytes.load(Ordering::Acquire),
        "we got every byte the source sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_readers_stay_within_the_budget_and_only_a_reader_that_stops_is_cut() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let pattern = Pattern::new();
    const LEN: u64 = 48 << 20;
    const READERS: usize = 6;
    let src = source(node.pod_addr, &pattern, LEN).await;
    let ech = echo(node.pod_addr).await;
    let spill_dir = cluster.path().join("spill");
    std::fs::create_dir_all(&spill_dir).unwrap();
    let spill = spill_dir.display().to_string();
    let r = start(
        &cluster,
        &[
            "--channel-buffer",
            "4MiB",
            "--buffer-budget",
            "16MiB",
            "--spill-dir",
            &spill,
            "--channel-spill",
            "8MiB",
            "--spill-budget",
            "24MiB",
            "--stall-timeout",
            "5s",
            // The relay's end of each CONNECT is logged at debug.
            "--log-level",
            "info,kube_ssh_tunnel::proxy::front=debug",
        ],
    );
    assert!(
        r.wait_node(Duration::from_secs(20), |n| n["state"] == "ready")
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = r.rss_kib();

    // Six slow readers (about 100 KB/s each) of 48 MiB sources: together they are far
    // behind, much more than the 16 MiB memory and 24 MiB spill budgets.
    let fast = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS - 1 {
        let s = connect(&r.proxy, &src).await.expect("slow stream opens");
        readers.push(slow_reader(s, fast.clone(), Duration::from_secs(240)));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And one reader that stops reading altogether.
    let mut stopped = connect(&r.proxy, &src).await.expect("stream opens");
    let mut first = vec![0u8; 1000];
    stopped.read_exact(&mut first).await.unwrap();

    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = r.get("/metrics").await;
    let mem = metric(
        &metrics,
        "kube_ssh_tunnel_buffer_budget_used_bytes{kind=\"memory\"}",
    );
    let spilled = metric(
        &metrics,
        "kube_ssh_tunnel_buffer_budget_used_bytes{kind=\"spill\"}",
    );
    let rss_grew = r.rss_kib().saturating_sub(rss_before) as f64 / 1024.0;
    let node_doc = r.node().await;
    eprintln!(
        "budget: memory {:.1} MiB of 16, spill {:.1} MiB of 24, daemon RSS +{rss_grew:.1} MiB; node: {node_doc}",
        mem / 1048576.0,
        spilled / 1048576.0
    );
    // Memory: the budget, plus at most one 32 KiB packet per channel taken past it.
    assert!(
        mem <= (16 << 20) as f64 + (READERS * (32 << 10)) as f64,
        "memory {mem}"
    );
    assert!(spilled <= (24 << 20) as f64, "spill {spilled}");
    assert!(
        spilled > 0.0 && mem > (8 << 20) as f64,
        "the budget is in use"
    );
    // RSS: the budget, plus russh's queue of up to 100 packets (3.2 MiB) for each channel
    // that holds up its connection, plus the extra connections and allocator slack.
    let bound = 16.0 + READERS as f64 * 3.3 + 24.0;
    assert!(
        rss_grew <= bound,
        "daemon RSS grew {rss_grew:.1} MiB > {bound} MiB"
    );

    // A new CONNECT still answers at once (another connection of the node).
    echo_within(&r.proxy, &ech, Duration::from_secs(2))
        .await
        .expect("a new CONNECT beside six readers that are behind");

    // The reader that stopped is cut after --stall-timeout; the slow ones, which read, are not.
    let m = r.get("/metrics").await;
    let cut_before = metric(
        &m,
        "kube_ssh_tunnel_stalled_channels_total{node=\"node-1\"}",
    );
    let cut = {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let m = r.get("/metrics").await;
            let v = metric(
                &m,
                "kube_ssh_tunnel_stalled_channels_total{node=\"node-1\"}",
            );
            if v >= 1.0 || Instant::now() > end {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(cut_before, 0.0);
    assert_eq!(cut, 1.0, "exactly the reader that stopped is cut");
    assert!(
        r.d.log()
            .contains("closing a channel whose reader stopped reading")
    );
    // The cut ends the stopped reader's CONNECT once what was held for it is read, and not as
    // a clean end: the relay gets the channel's error. (A Unix socket cannot carry an error
    // to the client, whose read sees the close as EOF; the daemon's log line is the proof.)
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), stopped.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the cut stream did not end within 10 s ({} bytes read)",
                1000 + rest.len()
            )
        });
    let read = 1000 + rest.len() as u64;
    // The relay logs its end just after the client sees it: wait for the line (bounded).
    let mut log = r.d.log();
    for _ in 0..50 {
        if log
            .lines()
            .any(|l| l.contains("CONNECT ") && l.contains(&src))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        log = r.d.log();
    }
    let relay_end: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONNECT ") && l.contains(&src))
        .collect();
    assert!(
        relay_end.len() == 1
            && relay_end[0].contains("CONNECT ended with an error")
            && relay_end[0].contains("stalled"),
        "the cut CONNECT (and only it) ended with the stall error, not as a clean end \
         (client read: {ended:?} after {read} of {LEN} bytes): {relay_end:?}"
    );
    assert!(read < LEN, "the stopped reader's stream ended early");

    // The slow readers catch up at full speed: each gets every byte, intact.
    fast.store(true, Ordering::Release);
    let want = pattern.hash(LEN);
    for h in readers {
        let (got, hash) = tokio::time::timeout(Duration::from_secs(240), h)
            .await
            .expect("a slow reader finishes")
            .unwrap();
        assert_eq!(got, LEN, "every byte arrives");
        assert!(hash == want, "intact");
    }
    let m = r.get("/metrics").await;
    assert_eq!(
        metric(
            &m,
            "kube_ssh_tunnel_stalled_channels_total{node=\"node-1\"}"
        ),
        1.0,
        "no slow-but-reading reader was cut"
    );
}
