//! `kube-ssh-tunnel demo`, the README's first command: in-process nodes, the real daemon,
//! one request of each kind, the status table, and a clean exit on Ctrl-C.

mod support;

use std::process::Command;
use std::time::Duration;

use support::daemon::Daemon;
use support::{run_bounded, wait_until};

/// Bound on each command the test runs.
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn demo_serves_every_kind_of_request_then_exits_0_on_sigint() {
    let mut demo = Daemon::start(&["demo".into(), "--nodes".into(), "4".into()]);
    let done = wait_until(Duration::from_secs(60), || {
        demo.stdout().contains("reconnect --admin-uds")
    });
    let out = demo.stdout();
    assert!(
        done,
        "the demo did not finish its walk-through:\n{out}\n{}",
        demo.log()
    );
    assert!(out.contains("demo: all 5 requests succeeded"), "{out}");
    for kind in ["kubelet", "node proxy", "pod", "service"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("ok  {kind} "))),
            "no successful {kind} request:\n{out}"
        );
    }
    // The pod request went to the node that owns the pod CIDR (the last one).
    assert!(out.contains("CONNECT 10.244.4.15:8080"), "{out}");
    assert!(
        out.contains("-> 200 via node-4: hello from pod 10.244.4.15"),
        "{out}"
    );
    assert!(out.contains("— 4/4 nodes ready —"), "{out}");
    for i in 1..=4 {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("node-{i} ")))
            .unwrap_or_else(|| panic!("no status row for node-{i}:\n{out}"));
        assert!(row.split_whitespace().nth(2) == Some("ready"), "{row}");
    }

    // The commands it prints work from another terminal.
    let status_line = out
        .lines()
        .find(|l| l.contains(" status --admin-uds "))
        .expect("a status command");
    let words: Vec<&str> = status_line.split_whitespace().collect();
    let st = run_bounded(Command::new(words[0]).args(&words[1..]), b"", LIMIT).unwrap();
    assert_eq!(st.status.code(), Some(0), "{status_line}: {st:?}");
    // The printed curl command is part of the walk-through: without curl the test fails.
    let curl_version = run_bounded(Command::new("curl").arg("--version"), b"", LIMIT);
    assert!(
        matches!(&curl_version, Ok(v) if v.status.success()),
        "this test needs `curl` to run the demo's printed curl command (apt-get install -y curl): {curl_version:?}"
    );
    let curl_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("curl ") && l.contains("/healthz"))
        .expect("a curl command");
    let words: Vec<&str> = curl_line.split_whitespace().collect();
    let c = run_bounded(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&words[1..]),
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&c.stdout),
        "ok\n",
        "{curl_line}: {}",
        String::from_utf8_lossy(&c.stderr)
    );

    let dir = out
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.ends_with("/admin.sock")))
        .map(|s| std::path::PathBuf::from(s).parent().unwrap().to_path_buf())
        .expect("the demo's directory");
    assert!(dir.exists());
    assert_eq!(demo.stop(libc::SIGINT), Some(0), "{}", demo.log());
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

#[test]
fn demo_refuses_a_bad_node_count() {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(["demo", "--nodes", "0"]),
        b"",
        LIMIT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes must be between 1 and 200"));
}

#[test]
fn demo_stops_on_sigterm_too_and_removes_its_directory() {
    let mut demo = Daemon::start(&["demo".into(), "--nodes".into(), "1".into()]);
    let done = wait_until(Duration::from_secs(60), || {
        demo.stdout().contains("reconnect --admin-uds")
    });
    let out = demo.stdout();
    assert!(done, "the demo did not finish:\n{out}\n{}", demo.log());
    let dir = out
        .lines()
        .find_map(|l| l.split_whitespace().find(|w| w.ends_with("/admin.sock")))
        .map(|s| std::path::PathBuf::from(s).parent().unwrap().to_path_buf())
        .expect("the demo's directory");
    assert!(dir.join("id_ed25519").exists());
    assert_eq!(demo.stop(libc::SIGTERM), Some(0), "{}", demo.log());
    assert!(
        !dir.exists(),
        "the demo left {} (with its private key) behind",
        dir.display()
    );
}
