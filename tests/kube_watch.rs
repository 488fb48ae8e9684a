//! `run --kubeconfig`: the node set follows a watch of the cluster's Node objects. The API
//! server is a stand-in that speaks the real list+watch wire format (a NodeList, then a
//! chunked stream of ADDED/MODIFIED/DELETED events, and an ERROR 410 Gone that forces a
//! relist); the nodes are real sshd processes.
#![cfg(feature = "kube")]

mod support;

use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::admin::document::StatusDocument;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, event, node_list};
use support::daemon::Daemon;
use support::{Cluster, TestNode};

fn node_object(name: &str, n: &TestNode, rv: u32, cidr: &str) -> Value {
    support::apiserver::node_object(name, &n.addr.to_string(), n.ssh_port, rv, cidr)
}

async fn status(ep: &Endpoint) -> Option<StatusDocument> {
    match request(ep, "GET", "/status", Duration::from_secs(5)).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Waits (bounded) until `cond` holds for the daemon's status document.
async fn wait_status(ep: &Endpoint, what: &str, cond: impl Fn(&StatusDocument) -> bool) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(doc) = status(ep).await {
            if cond(&doc) {
                return;
            }
            last = Some(doc);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

fn node<'a>(
    doc: &'a StatusDocument,
    name: &str,
) -> Option<&'a kube_ssh_tunnel::admin::document::NodeDocument> {
    doc.nodes.iter().find(|n| n.name == name)
}

fn ready_at(doc: &StatusDocument, name: &str, n: &TestNode) -> bool {
    node(doc, name).is_some_and(|d| {
        d.state == kube_ssh_tunnel::pool::TunnelState::Ready && d.address == n.addr.to_string()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_list_and_watch_of_the_api_server() {
    let cluster = Cluster::start(4);
    let [n1, n2, n3, n4] = [0, 1, 2, 3].map(|i| &cluster.nodes[i]);

    // The stand-in API server on loopback, and a kubeconfig pointing at it.
    let server = ApiServer::start(
        cluster.path(),
        vec![
            node_list(10, vec![node_object("node-1", n1, 10, "10.244.1.0/24")]),
            // After the 410: node-1 where it moved, node-4 new; node-2 is long gone.
            node_list(
                20,
                vec![
                    node_object("node-1", n3, 12, "10.244.1.0/24"),
                    node_object("node-4", n4, 20, "fd00:10:244:4::/64"),
                ],
            ),
        ],
    )
    .await;
    let kubeconfig = server.kubeconfig.clone();
    let api = server.api.clone();
    let admin = cluster.path().join("admin.sock");
    let mut args = cluster.daemon_args();
    args.extend(
        [
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-address-types",
            "InternalIP",
            "--drain-timeout",
            "2s",
        ]
        .map(String::from),
    );
    let mut d = Daemon::start(&args);
    let ep = Endpoint::Unix(admin);

    // The initial list: node-1.
    wait_status(&ep, "node-1 from the list", |doc| {
        ready_at(doc, "node-1", n1)
    })
    .await;
    assert!(
        server.wait_watch(Duration::from_secs(20)).await,
        "no watch request"
    );

    // ADDED: node-2 appears.
    server.send(event(
        "ADDED",
        node_object("node-2", n2, 11, "10.244.2.0/24"),
    ));
    wait_status(&ep, "node-2 added", |doc| ready_at(doc, "node-2", n2)).await;

    // Heartbeats (a new resource version and status the tunnel does not read) change no node:
    // no node set goes to the pool for them. Every set the daemon applies is logged.
    const SET: &str = "node set updated from the Kubernetes API";
    let sets = |d: &Daemon| d.log().matches(SET).count();
    // The log comes through a pipe: wait until the set that added node-2 is in it.
    assert!(
        support::wait_until(Duration::from_secs(10), || d
            .log()
            .lines()
            .any(|l| l.contains(SET) && l.contains("node-2"))),
        "the set that added node-2 is logged:\n{}",
        d.log()
    );
    let before = sets(&d);
    for rv in 100..120 {
        let mut o = node_object("node-2", n2, rv, "10.244.2.0/24");
        o["status"]["conditions"][0]["lastHeartbeatTime"] =
            json!(format!("2026-12-02T07:00:{rv}Z"));
        server.send(event("MODIFIED", o));
    }
    // Time for a set the heartbeats would make to go out on its own (the watch sends changes
    // at least 100 ms apart), then a real change: node-2's pod CIDR. Events are handled in
    // order, so once its set is applied any set for a heartbeat has been logged before it:
    // exactly one set may have come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.send(event(
        "MODIFIED",
        node_object("node-2", n2, 120, "10.244.22.0/24"),
    ));
    wait_status(&ep, "node-2's new pod CIDR", |doc| {
        node(doc, "node-2").is_some_and(|n| n.pod_cidrs == ["10.244.22.0/24"])
    })
    .await;
    assert!(
        d.wait_log(SET, before + 1, Duration::from_secs(10)),
        "the pod CIDR change's set is logged:\n{}",
        d.log()
    );
    assert_eq!(
        sets(&d),
        before + 1,
        "one node set, for the pod CIDR change; the heartbeats made the others:\n{}",
        d.log()
    );

    // An operator drains node-2: it stays drained while the watch reports other changes.
    let (code, body) = request(&ep, "POST", "/nodes/node-2/drain", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let drained = |doc: &StatusDocument| {
        node(doc, "node-2").is_some_and(|d| {
            d.state == kube_ssh_tunnel::pool::TunnelState::Drained
                && d.drained_by.as_deref() == Some("admin socket (uid 0)")
        })
    };
    wait_status(&ep, "node-2 drained", drained).await;

    // MODIFIED: node-1 changes address; the pool reconnects it there.
    let before = sets(&d);
    server.send(event(
        "MODIFIED",
        node_object("node-1", n3, 12, "10.244.1.0/24"),
    ));
    wait_status(&ep, "node-1 moved to node-3's address", |doc| {
        ready_at(doc, "node-1", n3)
    })
    .await;
    // Another change of node-1 (its pod CIDR): once its set is applied, every set before it
    // has been, and neither brought the drained node-2 back.
    server.send(event(
        "MODIFIED",
        node_object("node-1", n3, 13, "10.244.11.0/24"),
    ));
    wait_status(&ep, "node-1's new pod CIDR", |doc| {
        node(doc, "node-1").is_some_and(|n| n.pod_cidrs == ["10.244.11.0/24"])
    })
    .await;
    assert!(
        d.wait_log(SET, before + 2, Duration::from_secs(10)),
        "both changes of node-1 are logged:\n{}",
        d.log()
    );
    assert_eq!(
        sets(&d),
        before + 2,
        "one node set per change of node-1:\n{}",
        d.log()
    );
    let doc = status(&ep).await.unwrap();
    assert!(
        drained(&doc),
        "an unrelated node's change does not bring a drained node back: {doc:?}"
    );

    // DELETED: node-2 disappears. Drained, it is still in the status; the deletion makes
    // the pool forget it: it leaves the status and its metric series go.
    let metrics = || async {
        let (code, body) = request(&ep, "GET", "/metrics", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
        body
    };
    let m = metrics().await;
    assert!(
        m.contains("node=\"node-2\""),
        "a drained node keeps its series: {m}"
    );
    server.send(event(
        "DELETED",
        node_object("node-2", n2, 14, "10.244.22.0/24"),
    ));
    let mut forgotten = false;
    for _ in 0..100 {
        if !metrics().await.contains("node=\"node-2\"") {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        forgotten,
        "the deleted node's series went: {}\n{}",
        metrics().await,
        d.log()
    );
    wait_status(&ep, "node-2 removed", |doc| node(doc, "node-2").is_none()).await;
    assert!(
        support::wait_until(Duration::from_secs(10), || n2.ssh_connections() == 0),
        "node-2's connection closes"
    );

    // 410 Gone: the watcher relists, and the pool follows the new list.
    server.send(
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 14 (20)", "reason": "Expired", "code": 410}})
        .to_string(),
    );
    wait_status(&ep, "node-4 from the relist", |doc| {
        ready_at(doc, "node-4", n4) && ready_at(doc, "node-1", n3) && doc.nodes.len() == 2
    })
    .await;
    let (lists, watches) = {
        let a = api.lock().unwrap();
        (a.list_calls, a.watch_calls)
    };
    assert!(lists >= 2, "a relist after 410 ({lists} lists)");
    assert!(watches >= 1);
    let doc = status(&ep).await.unwrap();
    assert_eq!(
        node(&doc, "node-4").unwrap().pod_cidrs,
        ["fd00:10:244:4::/64"]
    );

    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
    drop(server);
}

#[test]
fn a_bad_kubeconfig_or_two_node_sources_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--ssh-tunnel",
            "--ssh-user",
            "u",
            "--ssh-keyfile",
            key.to_str().unwrap(),
            "--insecure-skip-host-key-verification",
            "--proxy-uds",
        ];
        let sock = dir.path().join("p.sock");
        let admin = dir.path().join("a.sock");
        args.push(sock.to_str().unwrap());
        args.push("--admin-uds");
        args.push(admin.to_str().unwrap());
        args.extend_from_slice(extra);
        support::run_bounded(
            std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(&args),
            b"",
            Duration::from_secs(30),
        )
        .unwrap()
    };
    support::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
            "keygen",
            "--out",
            key.to_str().unwrap(),
        ]),
    );
    let missing = dir.path().join("missing-kubeconfig");
    let out = run(&["--kubeconfig", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot read kubeconfig"), "{err}");
    let out = run(&[
        "--kubeconfig",
        missing.to_str().unwrap(),
        "--node",
        "n=127.0.0.1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("one source of nodes"), "{err}");
}

/// A metric's value in the OpenMetrics text (the line that starts with `series `).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Waits (bounded) until the daemon's `/metrics` has `series` at a value `cond` accepts;
/// returns the value.
async fn wait_metric(ep: &Endpoint, series: &str, cond: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok((200, body)) = request(ep, "GET", "/metrics", Duration::from_secs(5)).await {
            last = metric(&body, series);
            if last.is_some_and(&cond) {
                return last.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {series}; last value {last:?}");
}

/// A Node watch that fails keeps the last good node set and counts its failures in the
/// metric an alert uses (`node_source_errors_total`); once the API server answers again the
/// count stops growing and node changes arrive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_watch_keeps_the_nodes_and_shows_in_the_metrics_until_it_recovers() {
    let cluster = Cluster::start(1);
    let n1 = &cluster.nodes[0];
    let server = ApiServer::start(
        cluster.path(),
        vec![node_list(
            10,
            vec![node_object("node-1", n1, 10, "10.244.1.0/24")],
        )],
    )
    .await;
    let admin = cluster.path().join("admin.sock");
    let mut args = cluster.daemon_args();
    args.extend(
        [
            "--kubeconfig",
            server.kubeconfig.to_str().unwrap(),
            "--node-address-types",
            "InternalIP",
        ]
        .map(String::from),
    );
    let mut d = Daemon::start(&args);
    let ep = Endpoint::Unix(admin);
    wait_status(&ep, "node-1 from the list", |doc| {
        ready_at(doc, "node-1", n1)
    })
    .await;
    assert!(server.wait_watch(Duration::from_secs(20)).await);
    const ERRORS: &str = "kube_ssh_tunnel_node_source_errors_total";
    assert_eq!(wait_metric(&ep, ERRORS, |_| true).await, 0.0);

    // The API server fails: the watch errors, the node stays ready.
    server.set_failing(true);
    wait_metric(&ep, ERRORS, |v| v >= 1.0).await;
    assert!(
        d.log().contains("watching Nodes failed"),
        "the failure is logged: {}",
        d.log()
    );
    let doc = status(&ep).await.expect("status");
    assert!(ready_at(&doc, "node-1", n1), "{doc:#?}");

    // It answers again: the watch is back (a node change arrives) and the count stops growing.
    server.set_failing(false);
    assert!(
        server.wait_watch(Duration::from_secs(60)).await,
        "the watch is back"
    );
    server.send(event(
        "MODIFIED",
        node_object("node-1", n1, 30, "10.244.9.0/24"),
    ));
    wait_status(
        &ep,
        "node-1's new pod CIDR from the recovered watch",
        |doc| node(doc, "node-1").is_some_and(|d| d.pod_cidrs.iter().any(|c| c == "10.244.9.0/24")),
    )
    .await;
    let settled = wait_metric(&ep, ERRORS, |_| true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(wait_metric(&ep, ERRORS, |_| true).await, settled);
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
}

/// `run` args for one of several daemons on `cluster`: its own sockets (`NAME-proxy.sock`,
/// `NAME-admin.sock`), the watch of `kubeconfig`.
fn watching_daemon(cluster: &Cluster, name: &str, kubeconfig: &std::path::Path) -> Vec<String> {
    let mut args = cluster.daemon_args();
    for (flag, file) in [("--proxy-uds", "proxy"), ("--admin-uds", "admin")] {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = cluster
            .path()
            .join(format!("{name}-{file}.sock"))
            .display()
            .to_string();
    }
    args.extend(
        [
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-address-types",
            "InternalIP",
            "--drain-timeout",
            "2s",
        ]
        .map(String::from),
    );
    args
}

fn drained_by_annotation(doc: &StatusDocument, name: &str) -> bool {
    node(doc, name).is_some_and(|d| {
        d.state == kube_ssh_tunnel::pool::TunnelState::Drained
            && d.drained_by.as_deref() == Some("annotation")
            && d.reason.contains("kernel upgrade")
    })
}

/// The drain annotation on a Node drains it in every daemon watching the cluster (two `run`
/// processes, one stand-in API server, one annotation), a daemon restarted while the
/// annotation is there starts with the node drained (it never connects to it), and removing
/// the annotation brings the node back in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_annotation_drains_the_node_in_every_daemon_and_after_a_restart() {
    let cluster = Cluster::start(2);
    let [n1, n2] = [0, 1].map(|i| &cluster.nodes[i]);
    let plain = |rv| node_object("node-1", n1, rv, "10.244.1.0/24");
    let annotated = |rv| {
        let mut o = node_object("node-1", n1, rv, "10.244.1.0/24");
        o["metadata"]["annotations"]["ssh.kube-ssh-tunnel.io/drain"] = json!("kernel upgrade");
        o
    };
    let other = node_object("node-2", n2, 10, "10.244.2.0/24");
    let server = ApiServer::start(
        cluster.path(),
        vec![node_list(10, vec![plain(10), other.clone()])],
    )
    .await;
    let kubeconfig = server.kubeconfig.clone();
    let mut a = Daemon::start(&watching_daemon(&cluster, "a", &kubeconfig));
    let mut b = Daemon::start(&watching_daemon(&cluster, "b", &kubeconfig));
    let ep = |name: &str| Endpoint::Unix(cluster.path().join(format!("{name}-admin.sock")));
    for d in ["a", "b"] {
        wait_status(&ep(d), "node-1 ready", |doc| ready_at(doc, "node-1", n1)).await;
    }
    assert!(
        server.wait_watches(2, Duration::from_secs(20)).await,
        "two watches"
    );

    // One annotation: drained in both daemons, with who drained it.
    server.send(event("MODIFIED", annotated(11)));
    for d in ["a", "b"] {
        wait_status(&ep(d), "node-1 drained by its annotation", |doc| {
            drained_by_annotation(doc, "node-1") && ready_at(doc, "node-2", n2)
        })
        .await;
    }
    assert!(
        support::wait_until(Duration::from_secs(10), || n1.ssh_connections() == 0),
        "both daemons closed their connection to node-1"
    );

    // Daemon b restarts while the annotation is there: node-1 starts drained.
    b.stop(libc::SIGTERM);
    server.api.lock().unwrap().lists = vec![node_list(11, vec![annotated(11), other.clone()])]
        .into_iter()
        .collect();
    let watches_before = server.api.lock().unwrap().watch_calls;
    let mut b = Daemon::start(&watching_daemon(&cluster, "b", &kubeconfig));
    wait_status(&ep("b"), "node-1 drained from the start", |doc| {
        assert!(
            node(doc, "node-1")
                .is_none_or(|d| d.state != kube_ssh_tunnel::pool::TunnelState::Ready),
            "a restarted daemon never had node-1 ready: {doc:#?}"
        );
        drained_by_annotation(doc, "node-1") && ready_at(doc, "node-2", n2)
    })
    .await;
    assert_eq!(n1.ssh_connections(), 0, "no daemon connects to node-1");
    let start = Instant::now();
    while server.api.lock().unwrap().watch_calls == watches_before {
        assert!(start.elapsed() < Duration::from_secs(20), "b watches again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The annotation goes: node-1 is back in both.
    server.send(event("MODIFIED", plain(12)));
    for d in ["a", "b"] {
        wait_status(&ep(d), "node-1 back", |doc| {
            ready_at(doc, "node-1", n1) && node(doc, "node-1").unwrap().drained_by.is_none()
        })
        .await;
    }
    a.stop(libc::SIGTERM);
    b.stop(libc::SIGTERM);
}
