//! `run --host-key-source nodes`: a node's host key may come from an annotation on its own
//! Node object, written there by `publish-host-key` (run as the node's kubelet). The API server
//! is the stand-in (it answers SelfSubjectReviews, applies merge patches and streams them to
//! the watch, and refuses a node credential patching another Node as NodeRestriction does);
//! the nodes are real sshd processes. known_hosts is empty unless a test says otherwise.
#![cfg(feature = "kube")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::admin::document::{NodeDocument, StatusDocument};
use kube_ssh_tunnel::pool::TunnelState;
use kube_ssh_tunnel::ssh::HostKeyTrust;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, node_list};
use support::daemon::Daemon;
use support::{Cluster, Ran, TestNode};

const ED25519: &str = "ssh.kube-ssh-tunnel.io/host-ed25519";

fn node_object(name: &str, n: &TestNode, rv: u32, cidr: &str) -> Value {
    support::apiserver::node_object(name, &n.addr.to_string(), n.ssh_port, rv, cidr)
}

/// Runs the binary with `args` (off the async workers: the stand-in API server runs there).
async fn cli(args: Vec<String>) -> Ran {
    tokio::task::spawn_blocking(move || {
        support::run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
                .args(&args)
                .env("NO_COLOR", "1"),
            b"",
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap()
}

/// `publish-host-key` with the kubelet credential of `node` (`system:node:NODE`), reading
/// the host keys in `keys`.
async fn publish(server: &ApiServer, dir: &Path, node: &str, keys: &Path) -> Ran {
    let kubeconfig = server.kubeconfig_for(
        &dir.join(format!("kubelet-{node}.conf")),
        &format!("token-of-{node}"),
        &format!("system:node:{node}"),
    );
    cli(vec![
        "publish-host-key".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--host-keys".into(),
        keys.display().to_string(),
    ])
    .await
}

/// Like `publish`, and it must succeed.
async fn publish_ok(server: &ApiServer, dir: &Path, node: &str, keys: &Path) -> String {
    let out = publish(server, dir, node, keys).await;
    assert_eq!(
        out.code(),
        0,
        "publish-host-key failed: {}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    out.stdout_text()
}

/// A directory holding one host key pair that no node's sshd has.
fn foreign_host_keys(dir: &Path) -> PathBuf {
    let keys = dir.join("foreign-host-keys");
    std::fs::create_dir_all(&keys).unwrap();
    support::keygen(&keys.join("ssh_host_ed25519_key"), "ed25519", None);
    keys
}

/// An empty known_hosts file.
fn empty_known_hosts(cluster: &Cluster) -> PathBuf {
    let kh = cluster.path().join("empty_known_hosts");
    std::fs::write(&kh, "").unwrap();
    kh
}

/// `run` watching `server`, trusting `known_hosts` and the nodes' own annotations.
fn start_daemon(cluster: &Cluster, server: &ApiServer, known_hosts: &Path, types: &str) -> Daemon {
    let mut args = cluster.daemon_args();
    let i = args.iter().position(|a| a == "--ssh-known-hosts").unwrap();
    args[i + 1] = known_hosts.display().to_string();
    args.extend(
        [
            "--kubeconfig",
            server.kubeconfig.to_str().unwrap(),
            "--node-address-types",
            types,
            "--host-key-source",
            "nodes",
            "--drain-timeout",
            "2s",
        ]
        .map(String::from),
    );
    Daemon::start(&args)
}

async fn status(ep: &Endpoint) -> Option<StatusDocument> {
    match request(ep, "GET", "/status", Duration::from_secs(5)).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Waits (bounded) until `cond` holds for the daemon's status document; returns it.
async fn wait_status(
    ep: &Endpoint,
    d: &Daemon,
    what: &str,
    cond: impl Fn(&StatusDocument) -> bool,
) -> StatusDocument {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(doc) = status(ep).await {
            if cond(&doc) {
                return doc;
            }
            last = Some(doc);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out waiting for {what}; last status: {last:#?}\nlog:\n{}",
        d.log()
    );
}

fn node<'a>(doc: &'a StatusDocument, name: &str) -> Option<&'a NodeDocument> {
    doc.nodes.iter().find(|n| n.name == name)
}

fn is_ready(doc: &StatusDocument, name: &str) -> bool {
    node(doc, name).is_some_and(|d| d.state == TunnelState::Ready)
}

/// Node `name` is `failed` (refused, a human must act) with `needle` in its error.
fn refused_with(doc: &StatusDocument, name: &str, needle: &str) -> bool {
    node(doc, name).is_some_and(|d| {
        d.state == TunnelState::Failed
            && d.last_error.as_deref().is_some_and(|e| e.contains(needle))
    })
}

/// Test a: with an empty known_hosts, a node is refused until `publish-host-key` (run with
/// its kubelet credential, which names it) puts its host key on its own Node object; the
/// change reaches the daemon through the watch and the node is ready at once, trusted through
/// the annotation (`status` JSON and the `status -o wide` table say so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_annotated_by_publish_host_key_becomes_ready_with_an_empty_known_hosts() {
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
    let kh = empty_known_hosts(&cluster);
    let d = start_daemon(&cluster, &server, &kh, "InternalIP");
    let ep = Endpoint::Unix(cluster.path().join("admin.sock"));
    wait_status(
        &ep,
        &d,
        "node-1 refused: its key is in no known_hosts",
        |doc| refused_with(doc, "node-1", "is not in"),
    )
    .await;
    assert!(
        server.wait_watch(Duration::from_secs(20)).await,
        "no watch request"
    );

    let printed = publish_ok(&server, cluster.path(), "node-1", &n1.dir).await;
    let public = n1.host_key_pub();
    let key = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        printed.contains(&format!("node/node-1: {ED25519}={key}")),
        "it prints what it wrote: {printed}"
    );
    {
        let api = server.api.lock().unwrap();
        let (name, content_type, body) = api.patches.last().expect("a PATCH");
        assert_eq!(name, "node-1", "the node named by the credential");
        assert_eq!(content_type, "application/merge-patch+json");
        assert_eq!(body["metadata"]["annotations"][ED25519], json!(key));
    }

    let doc = wait_status(&ep, &d, "node-1 ready through its annotation", |doc| {
        is_ready(doc, "node-1")
    })
    .await;
    let n = node(&doc, "node-1").unwrap();
    assert_eq!(n.host_key_trust, Some(HostKeyTrust::Annotation), "{n:#?}");
    let table = cli(vec![
        "status".into(),
        "--admin-uds".into(),
        cluster.path().join("admin.sock").display().to_string(),
        "-o".into(),
        "wide".into(),
    ])
    .await;
    assert!(
        table.stdout_text().contains("Node annotation"),
        "status -o wide shows how the key was trusted:\n{}",
        table.stdout_text()
    );
}

/// Test b: an annotation that does not match the node's sshd refuses the node like a
/// known_hosts mismatch (`failed`, HOST KEY CHANGED, naming the annotation and the fix). A
/// changed annotation on a connected node is logged and does not cut the connection; the next
/// connection (a `reconnect`) checks it. A malformed annotation refuses that node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_that_does_not_match_the_nodes_sshd_is_refused() {
    let cluster = Cluster::start(2);
    let [n1, n2] = [0, 1].map(|i| &cluster.nodes[i]);
    let mut malformed = node_object("node-2", n2, 10, "10.244.2.0/24");
    malformed["metadata"]["annotations"][ED25519] = json!("ssh-ed25519 not-base64!");
    let server = ApiServer::start(
        cluster.path(),
        vec![node_list(
            10,
            vec![node_object("node-1", n1, 10, "10.244.1.0/24"), malformed],
        )],
    )
    .await;
    publish_ok(&server, cluster.path(), "node-1", &n1.dir).await;
    let kh = empty_known_hosts(&cluster);
    let d = start_daemon(&cluster, &server, &kh, "InternalIP");
    let ep = Endpoint::Unix(cluster.path().join("admin.sock"));
    let doc = wait_status(&ep, &d, "node-1 ready, node-2 refused", |doc| {
        is_ready(doc, "node-1") && refused_with(doc, "node-2", "cannot be used")
    })
    .await;
    let err = node(&doc, "node-2").unwrap().last_error.clone().unwrap();
    assert!(
        err.contains(ED25519) && err.contains("publish-host-key"),
        "the reason names the annotation and the fix: {err}"
    );
    assert!(
        server.wait_watch(Duration::from_secs(20)).await,
        "no watch request"
    );

    // node-1's annotation now holds a key its sshd does not have.
    let sshd_children = n1.ssh_connections();
    let connected_at = node(&doc, "node-1").unwrap().since.clone();
    let foreign = foreign_host_keys(cluster.path());
    publish_ok(&server, cluster.path(), "node-1", &foreign).await;
    assert!(
        d.wait_log(
            "host key annotations changed; they apply to its next connection",
            1,
            Duration::from_secs(20)
        ),
        "the change is logged:\n{}",
        d.log()
    );
    let doc = status(&ep).await.expect("status");
    let n = node(&doc, "node-1").unwrap();
    assert!(
        n.state == TunnelState::Ready && n.since == connected_at,
        "the connection that is up stays up: {n:#?}"
    );
    assert_eq!(
        n1.ssh_connections(),
        sshd_children,
        "the same sshd connection"
    );

    let (code, body) = request(
        &ep,
        "POST",
        "/nodes/node-1/reconnect",
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let doc = wait_status(&ep, &d, "node-1 refused by its annotation", |doc| {
        refused_with(doc, "node-1", "HOST KEY CHANGED")
    })
    .await;
    let err = node(&doc, "node-1").unwrap().last_error.clone().unwrap();
    assert!(
        err.contains(&format!("annotation {ED25519}")) && err.contains("publish-host-key"),
        "the refusal names the annotation and the fix: {err}"
    );
}

/// Test c: node A's annotation holds node B's host key and A lists B's address too (an
/// ExternalIP); B has no annotation. B stays refused for an unknown host key (A's annotation
/// is checked for A's own connection only, and A's claim on B's address is refused), and A is
/// refused (its annotation does not hold its own sshd's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_annotation_never_vouches_for_another_node() {
    let cluster = Cluster::start(2);
    let [na, nb] = [0, 1].map(|i| &cluster.nodes[i]);
    let mut a = node_object("node-a", na, 10, "10.244.1.0/24");
    a["status"]["addresses"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "ExternalIP", "address": nb.addr.to_string()}));
    let b = node_object("node-b", nb, 10, "10.244.2.0/24");
    let server = ApiServer::start(cluster.path(), vec![node_list(10, vec![a, b])]).await;
    // node-a's kubelet publishes node-b's key (public, so anyone may have it) on node-a.
    publish_ok(&server, cluster.path(), "node-a", &nb.dir).await;
    // NodeRestriction: node-a's credential cannot touch node-b's Node.
    let kubelet_a = cluster.path().join("kubelet-node-a.conf");
    let out = cli(vec![
        "publish-host-key".into(),
        "--kubeconfig".into(),
        kubelet_a.display().to_string(),
        "--host-keys".into(),
        nb.dir.display().to_string(),
        "--node-name".into(),
        "node-b".into(),
    ])
    .await;
    assert_eq!(out.code(), 1, "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("forbidden"),
        "{}",
        out.stderr_text()
    );

    let kh = empty_known_hosts(&cluster);
    let d = start_daemon(&cluster, &server, &kh, "InternalIP,ExternalIP");
    let ep = Endpoint::Unix(cluster.path().join("admin.sock"));
    let doc = wait_status(&ep, &d, "both nodes refused", |doc| {
        refused_with(doc, "node-b", "is not in") && refused_with(doc, "node-a", "HOST KEY CHANGED")
    })
    .await;
    let b = node(&doc, "node-b").unwrap();
    assert!(
        b.host_key_trust.is_none() && b.address == nb.addr.to_string(),
        "{b:#?}"
    );
    // A while later (the watch and the retries had their chance) node-b is still refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let doc = status(&ep).await.expect("status");
    assert!(
        refused_with(&doc, "node-b", "is not in"),
        "node-b never trusted through node-a's annotation: {doc:#?}"
    );
}

/// Test d: a known_hosts line wins over the annotation. node-1: a mismatching known_hosts
/// line and a matching annotation → refused by the line. node-2: a matching line and a
/// mismatching annotation → ready, trusted by the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_hosts_line_wins_over_the_annotation() {
    let cluster = Cluster::start(2);
    let [n1, n2] = [0, 1].map(|i| &cluster.nodes[i]);
    let server = ApiServer::start(
        cluster.path(),
        vec![node_list(
            10,
            vec![
                node_object("node-1", n1, 10, "10.244.1.0/24"),
                node_object("node-2", n2, 10, "10.244.2.0/24"),
            ],
        )],
    )
    .await;
    let foreign = foreign_host_keys(cluster.path());
    publish_ok(&server, cluster.path(), "node-1", &n1.dir).await;
    publish_ok(&server, cluster.path(), "node-2", &foreign).await;
    // node-1's line holds node-2's key (another key: a mismatch); node-2's line is right.
    let line = |n: &TestNode, keyfrom: &TestNode| {
        let host = n.known_hosts_line();
        let host = host.split_whitespace().next().unwrap();
        let public = keyfrom.host_key_pub();
        let key = public.split_whitespace().take(2).collect::<Vec<_>>();
        format!("{host} {}\n", key.join(" "))
    };
    let kh = cluster.path().join("known_hosts_d");
    std::fs::write(&kh, format!("{}{}", line(n1, n2), line(n2, n2))).unwrap();
    let d = start_daemon(&cluster, &server, &kh, "InternalIP");
    let ep = Endpoint::Unix(cluster.path().join("admin.sock"));
    let doc = wait_status(&ep, &d, "node-1 refused by its line, node-2 ready", |doc| {
        refused_with(doc, "node-1", "HOST KEY CHANGED") && is_ready(doc, "node-2")
    })
    .await;
    let err = node(&doc, "node-1").unwrap().last_error.clone().unwrap();
    assert!(
        err.contains(&format!("{}:1", kh.display())),
        "the known_hosts line decides: {err}"
    );
    assert_eq!(
        node(&doc, "node-2").unwrap().host_key_trust,
        Some(HostKeyTrust::KnownHostsLine)
    );
}

/// Test e: flag errors exit 2 with a message: `--host-key-source nodes` without the Node
/// watch; `publish-host-key` with a credential that is not a node's (unless --node-name), a
/// directory without host keys, a bad node name, a missing kubeconfig.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_source_and_publish_host_key_flag_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = dir.join("id");
    support::run_ok(Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
        "keygen",
        "--out",
        key.to_str().unwrap(),
    ]));
    let expect_2 = |out: &Ran, needle: &str| {
        let err = out.stderr_text();
        assert_eq!(out.code(), 2, "{err}");
        assert!(err.contains(needle), "wanted '{needle}' in: {err}");
    };
    let out = cli([
        "run",
        "--ssh-tunnel",
        "--ssh-user",
        "u",
        "--ssh-keyfile",
        key.to_str().unwrap(),
        "--insecure-skip-host-key-verification",
        "--proxy-uds",
        dir.join("p.sock").to_str().unwrap(),
        "--admin-uds",
        dir.join("a.sock").to_str().unwrap(),
        "--node",
        "n=127.0.0.1",
        "--host-key-source",
        "nodes",
    ]
    .map(String::from)
    .to_vec())
    .await;
    expect_2(&out, "needs the Node watch");

    let mut n1 = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "annotations": {}}});
    n1["status"] = json!({"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]});
    let server = ApiServer::start(dir, vec![node_list(10, vec![n1])]).await;
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    support::keygen(&keys.join("ssh_host_ed25519_key"), "ed25519", None);
    let admin = server.kubeconfig_for(&dir.join("admin.conf"), "admin-token", "kubernetes-admin");
    let publish = |kubeconfig: &Path, keys: &Path, extra: &[&str]| {
        let mut v: Vec<String> = [
            "publish-host-key",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--host-keys",
            keys.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        cli(v)
    };
    let out = publish(&admin, &keys, &[]).await;
    expect_2(&out, "'kubernetes-admin', not a node's");
    assert!(
        server.api.lock().unwrap().patches.is_empty(),
        "nothing patched"
    );
    let out = publish(&admin, &keys, &["--node-name", "node-1"]).await;
    assert_eq!(
        out.code(),
        0,
        "--node-name overrides: {}",
        out.stderr_text()
    );

    let empty = dir.join("no-keys");
    std::fs::create_dir_all(&empty).unwrap();
    expect_2(
        &publish(&admin, &empty, &["--node-name", "node-1"]).await,
        "no host public key",
    );
    expect_2(
        &publish(&admin, &keys, &["--node-name", "bad_name"]).await,
        "not a Kubernetes node name",
    );
    expect_2(
        &publish(&dir.join("missing.conf"), &keys, &[]).await,
        "cannot read kubeconfig",
    );
    let bad = dir.join("bad-keys");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("ssh_host_rsa_key.pub"), "not a key\n").unwrap();
    expect_2(
        &publish(&admin, &bad, &["--node-name", "node-1"]).await,
        "is not an OpenSSH public key",
    );
}
