//! Reverse mode under real faults (docs/reverse.md, issue #24), against real OpenSSH
//! `ssh -N -R 0` clients: nodes in network namespaces behind a real NAT (a router namespace
//! with nft masquerade, `support::nat`) carry 64 MiB both ways to their kubelet, a pod and a
//! service, each node by its own identity although they share one source address; a link lost
//! in the NAT makes its node not ready within the keepalive bound and ends the streams open
//! across it, and a restarted ssh brings the node back; a slow reader on a reverse node holds
//! up none of its other streams and loses no bytes; and two daemons (two apiservers) are each
//! served by the same nodes, one ssh per daemon.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::nat::Nat;
use support::reverse::*;
use support::streams;
use support::{ECHO_PORT, HTTP_PORT, wait_until};

/// Root, OpenSSH's client, iproute2, nftables and python3 (the kubelet stub).
fn require_nat_tools() {
    require_root("network namespaces and nftables");
    require_tool("ssh", "-V");
    require_tool("ip", "-V");
    require_tool("nft", "--version");
    require_tool("python3", "--version");
}

/// The daemon's `--nodes` file for `names` behind `nat` (addresses and pod CIDRs).
fn nodes_file(keys: &Keys, nat: &Nat, names: &[&str]) -> String {
    let f = keys.path("nodes.toml");
    std::fs::write(&f, nat.nodes_toml(names)).unwrap();
    f.display().to_string()
}

/// A reverse daemon for the nodes behind `nat`, listening on the root side of the NAT.
fn nat_daemon(
    keys: &Keys,
    nat: &Nat,
    names: &[&str],
    extra: &[&str],
) -> (support::daemon::Daemon, SocketAddr) {
    let listen = SocketAddr::from((nat.outer_host, free_port(IpAddr::V4(nat.outer_host))));
    let file = nodes_file(keys, nat, names);
    let mut flags = vec!["--nodes", &file, "--service-cidr", &nat.service_cidr];
    flags.extend_from_slice(extra);
    (keys.daemon_with(listen, &[], &flags), listen)
}

fn ssh_log(keys: &Keys, node: &str) -> String {
    std::fs::read_to_string(keys.path(&format!("{node}-ssh.log"))).unwrap_or_default()
}

/// Waits (at most 30 s) until `node` is ready in the daemon behind `keys`.
fn wait_ready(keys: &Keys, d: &support::daemon::Daemon, node: &str) {
    let admin = keys.path("admin.sock");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, node)
            == "ready"),
        "{node} did not become ready (state {:?}); daemon log:\n{}\nssh log:\n{}",
        node_status(&admin, node),
        d.log(),
        ssh_log(keys, node)
    );
}

/// 64 MiB both ways through `target`, SHA-256 equal.
fn echo_64_mib(keys: &Keys, d: &support::daemon::Daemon, target: &str, what: &str) {
    let t0 = Instant::now();
    let (sent, got, head) = echo_through(&keys.path("proxy.sock"), target, 64 << 20);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "CONNECT {target} ({what}): {head}\ndaemon log:\n{}",
        d.log()
    );
    assert_eq!(sent, got, "SHA-256 of 64 MiB sent to and echoed by {what}");
    eprintln!("{what} {target}: 64 MiB echoed in {:?}", t0.elapsed());
}

#[test]
fn nodes_behind_one_nat_carry_64_mib_to_kubelet_pod_and_service_each_by_its_own_identity() {
    require_nat_tools();
    let names = ["rev-1", "rev-2"];
    let nat = Nat::create(2);
    let keys = Keys::new(&names);
    let _stubs: Vec<Proc> = nat
        .nodes
        .iter()
        .zip(names)
        .map(|(n, name)| stub_in_ns(&keys, &n.ns, name, &[n.addr, n.pod_ip, nat.service_ip]))
        .collect();

    // The daemon's side cannot open a connection to a node: the router drops it.
    let before = nat.dropped_inbound();
    for n in &nat.nodes {
        let direct = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((n.addr, ECHO_PORT)),
            Duration::from_secs(3),
        );
        assert!(
            direct.is_err(),
            "a direct dial of {} from the daemon's side must fail behind the NAT",
            n.addr
        );
    }
    assert!(
        nat.dropped_inbound() > before,
        "the router's NAT dropped the direct dials (not some other failure)"
    );

    let (d, listen) = nat_daemon(&keys, &nat, &names, &[]);
    let _ssh: Vec<Proc> = nat
        .nodes
        .iter()
        .zip(names)
        .map(|(n, name)| node_ssh(&keys, &n.ns, listen, name))
        .collect();
    for name in names {
        wait_ready(&keys, &d, name);
        // Both sessions come from the router's one address: the daemon tells them apart by
        // their keys alone.
        let peers = session_peers(&d.log(), name);
        assert!(
            !peers.is_empty()
                && peers
                    .iter()
                    .all(|p| p.starts_with(&format!("{}:", nat.outer_router))),
            "{name}'s session must come from the router's address {}: {peers:?}\n{}",
            nat.outer_router,
            d.log()
        );
    }

    let proxy = keys.path("proxy.sock");
    for (n, name) in nat.nodes.iter().zip(names) {
        for (addr, what) in [(n.addr, "kubelet"), (n.pod_ip, "pod")] {
            let target = format!("{addr}:{HTTP_PORT}");
            assert_eq!(
                whoami_through(&proxy, &target),
                format!("{name} {target}"),
                "{what} of {name} answers through {name}'s own session\n{}",
                d.log()
            );
        }
    }
    let n = &nat.nodes[0];
    echo_64_mib(&keys, &d, &format!("{}:{ECHO_PORT}", n.addr), "the kubelet");
    echo_64_mib(&keys, &d, &format!("{}:{ECHO_PORT}", n.pod_ip), "a pod IP");
    echo_64_mib(
        &keys,
        &d,
        &format!("{}:{ECHO_PORT}", nat.service_ip),
        "a service IP",
    );
    let n2 = &nat.nodes[1];
    let (sent, got, head) = echo_through(&proxy, &format!("{}:{ECHO_PORT}", n2.pod_ip), 1 << 20);
    assert!(head.starts_with("HTTP/1.1 200"), "rev-2's pod: {head}");
    assert_eq!(sent, got, "SHA-256 through rev-2");
    let svc = whoami_through(&proxy, &format!("{}:{HTTP_PORT}", nat.service_ip));
    assert!(
        names.iter().any(|n| svc.starts_with(&format!("{n} "))),
        "the service answers through one of the nodes: {svc}"
    );
}

/// How a node's link is lost in `lost_link_case`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loss {
    /// The router drops everything to and from the node (nft).
    Dropped,
    /// The node's ssh is frozen (SIGSTOP by PID): its TCP connection stays up, silent.
    Frozen,
}

#[test]
fn a_link_lost_behind_the_nat_makes_its_node_not_ready_within_the_keepalive_bound_and_a_restarted_ssh_brings_it_back()
 {
    lost_link_case(Loss::Dropped);
}

#[test]
fn a_frozen_node_ssh_makes_its_node_not_ready_within_the_keepalive_bound_and_a_restarted_ssh_brings_it_back()
 {
    lost_link_case(Loss::Frozen);
}

/// Keepalives find the loss, the open stream ends, a restarted ssh brings the node back.
fn lost_link_case(loss: Loss) {
    require_nat_tools();
    let nat = Nat::create(1);
    let keys = Keys::new(&["rev-1"]);
    let n = &nat.nodes[0];
    let _stub = stub_in_ns(&keys, &n.ns, "rev-1", &[n.addr]);
    // Keepalives every second, three unanswered ones end the session; no health probes, so
    // only the keepalives can notice.
    let (interval, count) = (Duration::from_secs(1), 3u32);
    let (d, listen) = nat_daemon(
        &keys,
        &nat,
        &["rev-1"],
        &[
            "--keepalive-interval",
            "1s",
            "--keepalive-count",
            "3",
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");
    let proxy = keys.path("proxy.sock");
    let ssh = node_ssh(&keys, &n.ns, listen, "rev-1");
    wait_ready(&keys, &d, "rev-1");

    // A stream that is open across the loss.
    let target = format!("{}:{ECHO_PORT}", n.addr);
    let (mut open, head) = support::connect_uds(&proxy, &target);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", d.log());
    open.write_all(b"before").unwrap();
    let mut b = [0u8; 6];
    open.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"before");

    match loss {
        Loss::Dropped => nat.cut_node(0, true),
        Loss::Frozen => support::signal(ssh.0.id(), libc::SIGSTOP),
    }
    let cut = Instant::now();
    // The session is declared dead after `count` unanswered keepalives, one per interval
    // once the link is quiet: about interval × (count + 1). A liveness bound, asserted at
    // three times that.
    let bound = interval * (count + 1);
    let mut state = (String::new(), String::new());
    assert!(
        wait_until(Duration::from_secs(60), || {
            state = node_status(&admin, "rev-1");
            state.0 != "ready"
        }),
        "the node stayed ready for 60 s after its link was lost ({loss:?}); daemon log:\n{}",
        d.log()
    );
    let took = cut.elapsed();
    eprintln!("{loss:?}: not ready {took:?} after the loss (bound {bound:?}): {state:?}");
    assert!(
        took <= bound * 3,
        "the node went not ready only after {took:?}, beyond 3 × the keepalive bound {bound:?}; daemon log:\n{}",
        d.log()
    );

    // The open stream ends for its client (EOF or an error), it does not hang.
    open.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let ended = open.read_to_end(&mut rest);
    assert!(
        !matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the stream open across the loss neither ended nor failed within 30 s of the node going not ready; daemon log:\n{}",
        d.log()
    );
    eprintln!(
        "the open stream ended {:?} after the cut: {ended:?}, {} more bytes",
        cut.elapsed(),
        rest.len()
    );
    assert!(
        state.1.contains("Keepalive timeout")
            && d.log()
                .contains("node=rev-1 from=ready reason=Keepalive timeout"),
        "the daemon says (status, log) that the keepalives found the loss: {state:?}\n{}",
        d.log()
    );

    // systemd's restart: the old ssh is killed (by PID), the link comes back, a new ssh
    // dials in and a new CONNECT works.
    drop(ssh);
    if loss == Loss::Dropped {
        nat.cut_node(0, false);
    }
    let _ssh = node_ssh(&keys, &n.ns, listen, "rev-1");
    wait_ready(&keys, &d, "rev-1");
    let (sent, got, head) = echo_through(&proxy, &target, 1 << 20);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "after the restart: {head}"
    );
    assert_eq!(sent, got, "SHA-256 after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_on_a_reverse_node_holds_up_none_of_its_other_streams_and_loses_no_bytes() {
    require_tool("ssh", "-V");
    // The node's ssh runs here, on loopback: its "pods" are in-process sources on a
    // loopback pod address (tests/support/streams.rs, shared with tests/isolation.rs).
    let keys = Keys::new(&["rev-1"]);
    let addr = support::node::try_pick_address(&[HTTP_PORT]).expect("a free loopback address");
    let pod = support::node::try_pick_address(&[HTTP_PORT]).expect("a free loopback address");
    let pod = Ipv4Addr::new(127, pod.octets()[1], pod.octets()[2], 10);
    let pod_cidr = format!("127.{}.{}.0/24", pod.octets()[1], pod.octets()[2]);
    std::fs::write(
        keys.path("nodes.toml"),
        format!(
            "[[nodes]]\nname = \"rev-1\"\naddress = \"{addr}\"\nssh_port = 22\npod_cidrs = [\"{pod_cidr}\"]\n"
        ),
    )
    .unwrap();
    let pattern = streams::Pattern::new();
    const LEN: u64 = 64 << 20;
    let src = streams::source(pod, &pattern, LEN).await;
    let ech = streams::echo(pod).await;
    let spill = keys.path("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let listen = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ));
    let (nodes, spill) = (
        keys.path("nodes.toml").display().to_string(),
        spill.display().to_string(),
    );
    let d = keys.daemon_with(
        listen,
        &[],
        &[
            "--nodes",
            &nodes,
            "--health-probe",
            "none",
            "--spill-dir",
            &spill,
            "--channel-buffer",
            "4MiB",
        ],
    );
    let admin = keys.path("admin.sock");
    let proxy = keys.path("proxy.sock");
    let log = std::fs::File::create(keys.path("rev-1-ssh.log")).unwrap();
    let _ssh = Proc(
        Command::new("ssh")
            .args(["-N", "-R", "0"])
            .args(keys.ssh_args(listen, "rev-1", "rev-1"))
            .arg(listen.ip().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ssh"),
    );
    wait_ready(&keys, &d, "rev-1");
    let rss_before = support::rss_bytes_of(&d.child.id().to_string());

    let slow = streams::connect(&proxy, &src)
        .await
        .expect("the slow stream opens");
    let fast = Arc::new(AtomicBool::new(false));
    let reader = streams::slow_reader(slow, fast.clone(), Duration::from_secs(240));
    // The reader falls behind by most of its memory share (4 MiB).
    let mut node = serde_json::Value::Null;
    let held = |n: &serde_json::Value| {
        n["buffered_bytes"].as_u64().unwrap_or(0) + n["spilled_bytes"].as_u64().unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            node = node_json(&admin, "rev-1");
            held(&node) >= 3 << 20
        }),
        "the slow reader falls behind by 3 MiB: {node}\n{}",
        d.log()
    );
    // Other streams on the same node (the same session: a reverse node has one) keep
    // working meanwhile. Each must answer, within a generous liveness bound.
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        match streams::echo_within(&proxy, &ech, Duration::from_secs(10)).await {
            Ok(took) => worst = worst.max(took),
            Err(e) => panic!(
                "CONNECT {i} beside the slow reader failed: {e}\n{}\n{}",
                node_json(&admin, "rev-1"),
                d.log()
            ),
        }
    }
    // What its memory share cannot hold goes to its spill file.
    assert!(
        wait_until(Duration::from_secs(30), || {
            node = node_json(&admin, "rev-1");
            held(&node) >= 8 << 20
        }),
        "the slow reader falls behind by 8 MiB: {node}"
    );
    assert!(
        node["buffered_bytes"].as_u64().unwrap_or(u64::MAX) <= 4 << 20
            && node["spilled_bytes"].as_u64().unwrap_or(0) > 0,
        "a reader behind holds at most its channel buffer (4 MiB) in memory, the rest spills: {node}"
    );
    let during = node_json(&admin, "rev-1");
    let rss_during = support::rss_bytes_of(&d.child.id().to_string());
    eprintln!(
        "50 CONNECTs beside a slow reader on a reverse node, slowest {worst:?}; rss {} -> {} KiB; node: {during}",
        rss_before >> 10,
        rss_during >> 10
    );
    assert_eq!(during["state"], "ready", "{during}");
    assert!(
        during["buffered_bytes"].as_u64().unwrap_or(u64::MAX) <= 4 << 20,
        "the behind reader holds at most its channel buffer in memory: {during}"
    );
    assert!(
        rss_during < rss_before + (LEN / 2),
        "the daemon does not hold the slow stream in memory: rss {} -> {} KiB",
        rss_before >> 10,
        rss_during >> 10
    );

    fast.store(true, Ordering::Release);
    let (got, hash) = tokio::time::timeout(Duration::from_secs(240), reader)
        .await
        .expect("the slow reader finishes")
        .unwrap();
    assert_eq!(got, LEN, "every byte of the slow stream arrives");
    assert!(hash == pattern.hash(LEN), "the slow stream is intact");
    let mut after = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            after = node_json(&admin, "rev-1");
            after["buffered_bytes"] == 0 && after["spilled_bytes"] == 0
        }),
        "buffers given back: {after}"
    );
    assert_eq!(after["reconnects"], 0, "the session was never replaced");
}

#[test]
fn two_daemons_are_each_served_by_the_same_nodes_and_one_lost_ssh_affects_only_its_daemon() {
    require_nat_tools();
    let names = ["rev-1", "rev-2"];
    let nat = Nat::create(2);
    let a = Keys::new(&names);
    let b = Keys::new(&[]);
    b.share_node_keys(&a, &names);
    let _stubs: Vec<Proc> = nat
        .nodes
        .iter()
        .zip(names)
        .map(|(n, name)| stub_in_ns(&a, &n.ns, name, &[n.addr]))
        .collect();
    // No health probes: a daemon must see the loss of its own ssh as its session ending.
    let quiet = ["--health-probe", "none"];
    let (da, listen_a) = nat_daemon(&a, &nat, &names, &quiet);
    let (db, listen_b) = nat_daemon(&b, &nat, &names, &quiet);
    // Each node runs one ssh per daemon (one systemd unit per apiserver).
    let mut ssh_a: Vec<Option<Proc>> = nat
        .nodes
        .iter()
        .zip(names)
        .map(|(n, name)| Some(node_ssh(&a, &n.ns, listen_a, name)))
        .collect();
    let _ssh_b: Vec<Proc> = nat
        .nodes
        .iter()
        .zip(names)
        .map(|(n, name)| node_ssh(&b, &n.ns, listen_b, name))
        .collect();
    for (keys, d) in [(&a, &da), (&b, &db)] {
        for (n, name) in nat.nodes.iter().zip(names) {
            wait_ready(keys, d, name);
            let target = format!("{}:{HTTP_PORT}", n.addr);
            assert_eq!(
                whoami_through(&keys.path("proxy.sock"), &target),
                format!("{name} {target}"),
                "{}",
                d.log()
            );
        }
    }

    // rev-1's ssh to daemon A dies: A loses rev-1, B keeps it, rev-2 stays on both.
    ssh_a[0] = None;
    assert!(
        wait_until(Duration::from_secs(30), || node_state(
            &a.path("admin.sock"),
            "rev-1"
        ) != "ready"),
        "daemon A still shows rev-1 ready after its ssh to A was killed; A's log:\n{}",
        da.log()
    );
    let n1 = &nat.nodes[0];
    let target = format!("{}:{ECHO_PORT}", n1.addr);
    let (_s, head) = support::connect_uds(&a.path("proxy.sock"), &target);
    assert!(
        !head.starts_with("HTTP/1.1 200"),
        "A carried a CONNECT to rev-1 with no session: {head}"
    );
    assert_eq!(
        node_state(&b.path("admin.sock"), "rev-1"),
        "ready",
        "daemon B lost rev-1 too; B's log:\n{}",
        db.log()
    );
    let (sent, got, head) = echo_through(&b.path("proxy.sock"), &target, 1 << 20);
    assert!(head.starts_with("HTTP/1.1 200"), "B to rev-1: {head}");
    assert_eq!(sent, got, "SHA-256 through B");
    for (keys, d) in [(&a, &da), (&b, &db)] {
        assert_eq!(
            node_state(&keys.path("admin.sock"), "rev-2"),
            "ready",
            "{}",
            d.log()
        );
    }

    // Its unit restarts it: A has rev-1 back.
    ssh_a[0] = Some(node_ssh(&a, &n1.ns, listen_a, "rev-1"));
    wait_ready(&a, &da, "rev-1");
    let (sent, got, head) = echo_through(&a.path("proxy.sock"), &target, 1 << 20);
    assert!(head.starts_with("HTTP/1.1 200"), "A to rev-1 again: {head}");
    assert_eq!(sent, got, "SHA-256 through A after the restart");
}
