//! Client-key rotation without a restart, as an operator does it: replace the key file, then
//! `reconnect --all --rolling`, watching `status` show which key each node's connection
//! authenticated with. Against a real `run` process and real sshd nodes.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::daemon::Daemon;
use support::{Cluster, fingerprint};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (killed after two minutes).
fn cli(args: &[&str]) -> Out {
    let o = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
            .args(args)
            .env("NO_COLOR", "1"),
        b"",
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("run kube-ssh-tunnel: {e}"));
    Out {
        code: o.code(),
        stdout: o.stdout_text(),
        stderr: o.stderr_text(),
    }
}

/// The `/status` document, through `status -o json`.
fn status_json(admin: &Path) -> serde_json::Value {
    let o = cli(&[
        "status",
        "-o",
        "json",
        "--admin-uds",
        admin.to_str().unwrap(),
    ]);
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {} {}", o.stdout, o.stderr))
}

/// `(name, state, client_key, host_key_trust)` of every node.
fn keys_by_node(admin: &Path) -> Vec<(String, String, String, String)> {
    let doc = status_json(admin);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                text(&n["name"]),
                text(&n["state"]),
                text(&n["client_key"]),
                text(&n["host_key_trust"]),
            )
        })
        .collect()
}

/// Replaces the key file the daemon was started with, the way an operator would (a new
/// file renamed over the old one; 0600, as the daemon requires).
fn replace_key(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn a_rolling_reconnect_moves_every_node_to_the_replaced_key_and_status_shows_it() {
    let cluster = Cluster::start(2);
    // Key A is the ed25519 key, key B the ECDSA one: every node authorizes both (the
    // harness puts every client key in authorized_keys).
    let key_a = &cluster.keys.ed25519;
    let key_b = &cluster.keys.ecdsa;
    let pub_a = std::fs::read_to_string(key_a.with_extension("pub")).unwrap();
    let pub_b = std::fs::read_to_string(key_b.with_extension("pub")).unwrap();
    let (fp_a, fp_b) = (fingerprint(&pub_a), fingerprint(&pub_b));
    let key = cluster.path().join("client_key");
    replace_key(key_a, &key);

    let admin = cluster.path().join("admin.sock");
    let proxy = cluster.path().join("proxy.sock");
    let mut args: Vec<String> = [
        "run",
        "--ssh-tunnel",
        "--ssh-user",
        &cluster.user,
        "--ssh-keyfile",
        key.to_str().unwrap(),
        "--ssh-known-hosts",
        cluster.known_hosts.to_str().unwrap(),
        "--admin-uds",
        admin.to_str().unwrap(),
        "--proxy-uds",
        proxy.to_str().unwrap(),
        "--backoff-max",
        "1s",
        "--health-probe",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in &cluster.nodes {
        args.push("--node".into());
        args.push(n.spec());
    }
    let d = Daemon::start(&args);
    let admin_s = admin.to_str().unwrap();
    let all_ready = support::wait_until(Duration::from_secs(30), || {
        admin.exists()
            && cli(&["status", "--admin-uds", admin_s]).code == 0
            && keys_by_node(&admin).len() == 2
    });
    assert!(all_ready, "both nodes ready: {}", d.log());

    // Before: every connection authenticated with key A, its host key from a known_hosts line.
    for (name, state, client_key, trust) in keys_by_node(&admin) {
        assert_eq!(state, "ready", "{name}");
        assert!(
            client_key.contains(&fp_a),
            "{name} uses key A ({fp_a}): {client_key}"
        );
        assert_eq!(trust, "known-hosts-line", "{name}");
    }
    let wide = cli(&["status", "-o", "wide", "--admin-uds", admin_s]);
    for want in [
        "CLIENT KEY",
        "HOST KEY TRUST",
        "known_hosts line",
        fp_a.as_str(),
    ] {
        assert!(
            wide.stdout.contains(want),
            "wide shows {want}: {}",
            wide.stdout
        );
    }

    // Rotate: the file now holds key B. Nothing changes until a node reconnects.
    replace_key(key_b, &key);
    let roll = cli(&[
        "reconnect",
        "--all",
        "--rolling",
        "--pause",
        "1s",
        "--admin-uds",
        admin_s,
    ]);
    assert_eq!(
        roll.code,
        0,
        "every node came back: {} {} {}",
        roll.stdout,
        roll.stderr,
        d.log()
    );
    for n in &cluster.nodes {
        let line = roll
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{}:", n.name)))
            .unwrap_or_else(|| panic!("a line for {}: {}", n.name, roll.stdout));
        assert!(
            line.contains("ready") && line.contains(&fp_b),
            "{} back with key B ({fp_b}): {line}",
            n.name
        );
    }
    assert_eq!(roll.stdout.lines().count(), 2, "{}", roll.stdout);

    // After: every node shows key B, its host key still from the known_hosts line.
    for (name, state, client_key, trust) in keys_by_node(&admin) {
        assert_eq!(state, "ready", "{name}");
        assert!(
            client_key.contains(&fp_b),
            "{name} uses key B ({fp_b}): {client_key}"
        );
        assert_eq!(trust, "known-hosts-line", "{name}");
    }
    for n in &cluster.nodes {
        assert!(
            n.sshd_log().contains("ECDSA"),
            "{}'s sshd saw key B",
            n.name
        );
    }

    // A node whose sshd no longer accepts key B (only A) ends `failed`, and the rolling
    // reconnect says so and exits 1. (Within 10 s of the last reconnect, the admin API's
    // per-node limit makes it wait and ask again.)
    let node_2 = &cluster.nodes[1];
    node_2.set_authorized_keys(&node_2.authorize(&pub_a));
    let roll = cli(&[
        "reconnect",
        "--all",
        "--rolling",
        "--pause",
        "0s",
        "--admin-uds",
        admin_s,
    ]);
    assert_eq!(roll.code, 1, "{} {}", roll.stdout, roll.stderr);
    let line_1 = roll.stdout.lines().find(|l| l.starts_with("node-1:"));
    let line_2 = roll.stdout.lines().find(|l| l.starts_with("node-2:"));
    assert!(
        line_1.is_some_and(|l| l.contains("ready") && l.contains(&fp_b)),
        "{}",
        roll.stdout
    );
    assert!(
        line_2.is_some_and(|l| l.contains("failed")),
        "{}",
        roll.stdout
    );

    // A drained node is left alone: a reconnect would bring it back.
    let drain = cli(&["drain", "node-2", "--admin-uds", admin_s]);
    assert_eq!(drain.code, 0, "{} {}", drain.stdout, drain.stderr);
    node_2.set_authorized_keys(&node_2.authorize(&cluster.public_keys));
    let roll = cli(&[
        "reconnect",
        "--all",
        "--rolling",
        "--pause",
        "0s",
        "--admin-uds",
        admin_s,
    ]);
    assert_eq!(roll.code, 0, "{} {}", roll.stdout, roll.stderr);
    assert!(
        roll.stdout
            .lines()
            .filter(|l| l.starts_with("node-2:"))
            .all(|l| l.contains("left alone")),
        "{}",
        roll.stdout
    );
    let node_2_back = keys_by_node(&admin)
        .iter()
        .any(|(name, state, _, _)| name == "node-2" && state == "ready");
    assert!(!node_2_back, "node-2 stays drained: {}", roll.stdout);
}

#[test]
fn reconnect_all_needs_rolling_and_a_name_or_all() {
    // No daemon at this socket: a usage error must come before any request.
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.sock");
    let admin = admin.to_str().unwrap();
    for (args, names) in [
        (vec!["reconnect", "--all"], "--rolling"),
        (vec!["reconnect", "--rolling", "node-1"], "--all"),
        (vec!["reconnect", "node-1", "--all", "--rolling"], "--all"),
        (vec!["reconnect"], "<NODE>"),
    ] {
        let args: Vec<&str> = args.into_iter().chain(["--admin-uds", admin]).collect();
        let o = cli(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(names),
            "{args:?} names {names}: {}",
            o.stderr
        );
    }
}
