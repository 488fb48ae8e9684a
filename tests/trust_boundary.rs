//! The trust boundary between nodes, end to end against real sshd nodes: a node cannot claim
//! another node's traffic by adding that node's address to its own Node status.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::daemon::Daemon;
use support::{Cluster, HTTP_PORT};

/// A `kubectl get nodes -o json` list in which node-1 also lists node-2's address (as a
/// second InternalIP and as its ExternalIP), and both claim the same ExternalIP 203.0.113.7.
fn spoofing_node_list(c: &Cluster) -> String {
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let item = |n: &support::TestNode, extra: Vec<serde_json::Value>| {
        let mut addresses = vec![
            serde_json::json!({"type": "InternalIP", "address": n.addr.to_string()}),
            serde_json::json!({"type": "Hostname", "address": n.name}),
        ];
        addresses.extend(extra);
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "annotations": {"kube-ssh-tunnel.io/ssh-port": n.ssh_port.to_string()},
            },
            "spec": {"podCIDRs": [n.pod_cidr.to_string()]},
            "status": {"addresses": addresses},
        })
    };
    let claim = |addr: String| serde_json::json!({"type": "InternalIP", "address": addr});
    let shared = serde_json::json!({"type": "ExternalIP", "address": "203.0.113.7"});
    let items = vec![
        item(
            n1,
            vec![
                claim(n2.addr.to_string()),
                serde_json::json!({"type": "ExternalIP", "address": n2.addr.to_string()}),
                shared.clone(),
            ],
        ),
        item(n2, vec![shared]),
    ];
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": items
    }))
    .unwrap()
}

/// GET /whoami through the daemon's CONNECT socket; the response.
fn whoami_via(sock: &std::path::Path, target: &str) -> (String, String) {
    let (mut s, head) = support::connect_uds(sock, target);
    if !head.starts_with("HTTP/1.1 200") {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        return (head, body);
    }
    s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    (head, body)
}

/// Node `name`'s entry in `status -o json` from the daemon behind the admin socket `admin`.
fn status_of(admin: &std::path::Path, name: &str) -> serde_json::Value {
    let out = support::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
            "status",
            "-o",
            "json",
            "--admin-uds",
            admin.to_str().unwrap(),
        ]),
    );
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("node {name} is in status: {doc}"))
        .clone()
}

#[test]
fn a_node_claiming_another_nodes_address_never_gets_its_traffic_on_any_start() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let file = cluster.path().join("nodes.json");
    std::fs::write(&file, spoofing_node_list(&cluster)).unwrap();
    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");
    let mut args = cluster.daemon_args();
    args.extend(
        [
            "--nodes",
            file.to_str().unwrap(),
            "--health-probe",
            "none",
            "--node-address-types",
            "InternalIP,ExternalIP",
        ]
        .map(String::from),
    );
    let node2_target = format!("{}:{HTTP_PORT}", n2.addr);
    for start in 0..20 {
        let mut d = Daemon::start(&args);
        assert!(
            d.wait_log("tunnel ready", 2, Duration::from_secs(20)),
            "start {start}: {}",
            d.log()
        );
        let (head, body) = whoami_via(&proxy, &node2_target);
        assert!(
            head.starts_with("HTTP/1.1 200") && body.contains("node-2"),
            "start {start}: CONNECT {node2_target} must be answered by node-2: {head}{body}"
        );
        assert!(!body.contains("node-1"), "start {start}: {body}");
        if start == 0 {
            // The claim is refused, logged with both names, and shown in status.
            assert!(
                d.log().contains("alias")
                    && d.log()
                        .contains(&format!("it is node {}'s address", n2.name)),
                "{}",
                d.log()
            );
            let node1 = status_of(&admin, &n1.name);
            let refused = node1["refused"].to_string();
            assert!(
                refused.contains(&n2.addr.to_string()) && refused.contains("node-2"),
                "{node1}"
            );
            // An address both nodes claim is refused outright, naming both.
            let (head, body) = whoami_via(&proxy, &format!("203.0.113.7:{HTTP_PORT}"));
            assert!(head.starts_with("HTTP/1.1 403"), "{head}{body}");
            assert!(body.contains("node-1, node-2"), "{body}");
        }
        assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
    }
}

/// Kubernetes allows a node named like an IP. A node named like another node's address (its
/// own address elsewhere) must not take that address's traffic: the node that holds the
/// address keeps it, and the name is refused as a route, shown in `status` and logged.
#[test]
fn a_node_named_like_another_nodes_address_never_takes_its_traffic() {
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let ip_name = n2.addr.to_string();
    let file = cluster.path().join("nodes.toml");
    std::fs::write(
        &file,
        format!(
            "[[nodes]]\nname = \"{ip_name}\"\naddress = \"{}\"\nssh_port = {}\n\n\
             [[nodes]]\nname = \"{}\"\naddress = \"{}\"\nssh_port = {}\n",
            n1.addr, n1.ssh_port, n2.name, n2.addr, n2.ssh_port
        ),
    )
    .unwrap();
    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");
    let mut args = cluster.daemon_args();
    args.extend(["--nodes", file.to_str().unwrap(), "--health-probe", "none"].map(String::from));
    let mut d = Daemon::start(&args);
    assert!(
        d.wait_log("tunnel ready", 2, Duration::from_secs(20)),
        "{}",
        d.log()
    );
    let target = format!("{}:{HTTP_PORT}", n2.addr);
    for i in 0..10 {
        let (head, body) = whoami_via(&proxy, &target);
        assert!(
            head.starts_with("HTTP/1.1 200") && body.contains(&n2.name),
            "CONNECT {i} to {target} must go through {}, the node whose address it is: {head}{body}",
            n2.name
        );
    }
    // The IP-named node still serves its own address.
    let (head, body) = whoami_via(&proxy, &format!("{}:{HTTP_PORT}", n1.addr));
    assert!(
        head.starts_with("HTTP/1.1 200") && body.contains(&n1.name),
        "{head}{body}"
    );
    let why = format!("name {ip_name}: it is node {}'s address", n2.name);
    assert!(d.log().contains(&why), "logged: {}", d.log());
    let named = status_of(&admin, &ip_name);
    assert!(named["refused"].to_string().contains(&why), "{named}");
    assert_eq!(named["state"], "ready", "{named}");
    assert_eq!(d.stop(libc::SIGTERM), Some(0), "{}", d.log());
}

/// A drained node comes back by `reconnect` with the claims the current node set allows: a
/// node named like an IP that another node took (as its alias) while it was drained does not
/// get its name back as a route. (203.0.113.9 is only classified, never dialled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_drained_node_does_not_bring_back_a_name_another_node_now_holds() {
    use kube_ssh_tunnel::pool::route::Route;
    use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
    use kube_ssh_tunnel::{Node, Pool};
    let cluster = Cluster::start(2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    const IP_NAME: &str = "203.0.113.9";
    let named = Node {
        name: IP_NAME.into(),
        ..n1.node()
    };
    let mut cfg = PoolConfig::new(cluster.settings());
    cfg.health.probe = Probe::None;
    let pool = Pool::with_config(cfg, vec![named.clone()]).unwrap();
    let target: kube_ssh_tunnel::Destination = format!("{IP_NAME}:{HTTP_PORT}").parse().unwrap();
    assert_eq!(pool.routes().classify(&target), Route::Node(IP_NAME.into()));
    assert!(pool.drain_node(IP_NAME));
    // node-2 joins with that IP as its alias (its ExternalIP, say).
    let mut other = n2.node();
    other.aliases = vec![IP_NAME.into()];
    pool.update(vec![named, other]).unwrap();
    assert!(pool.reconnect(IP_NAME));
    let mut rx = pool.subscribe(IP_NAME).unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.state == TunnelState::Ready),
    )
    .await
    .expect("the IP-named node is back")
    .unwrap();
    assert_eq!(
        pool.routes().classify(&target),
        Route::Node(n2.name.clone()),
        "the IP stays with the node that holds it"
    );
    pool.shutdown().await;
}
