//! Reverse mode: the node's identity against real OpenSSH clients (docs/reverse.md).
//! Revoked keys, keys inside certificates, certificate key ids and CAs are refused; revoking a
//! live node's key (or taking it out of the authorized file) cuts its session; limits key on
//! the node's identity (sessions per node) and cap connections that have not authenticated
//! yet; `keygen --reverse` and `node-setup` make everything a node needs, and the units they
//! write bring a node up on two daemons.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::reverse::*;
use support::{keygen, wait_until};

/// Signs `key`'s public half with the CA at `ca`: `ssh-keygen -s CA -I ID -n PRINCIPAL -V VALIDITY`.
fn sign(ca: &Path, key: &Path, id: &str, principal: &str) {
    support::run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", id, "-n", principal, "-V", "-5m:+1h"])
            .arg(key.with_extension("pub")),
    );
}

fn public_line(keys: &Keys, name: &str) -> String {
    std::fs::read_to_string(keys.path(name).with_extension("pub")).unwrap()
}

fn cert_opt(keys: &Keys, name: &str) -> String {
    format!(
        "CertificateFile={}",
        keys.path(&format!("{name}-cert.pub")).display()
    )
}

#[test]
fn a_revoked_key_the_key_in_a_certificate_its_key_id_and_its_ca_are_refused() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a", "rev-b"]);
    keygen(&keys.path("ca-ok"), "ed25519", None);
    keygen(&keys.path("ca-bad"), "ed25519", None);
    for n in ["rev-c", "rev-d"] {
        keygen(&keys.path(n), "ed25519", None);
    }
    // rev-c and rev-d come in with certificates only.
    let mut authorized = std::fs::read_to_string(keys.path("authorized")).unwrap();
    authorized.push_str("rev-c\nrev-d\n");
    std::fs::write(keys.path("authorized"), authorized).unwrap();
    std::fs::write(
        keys.path("user_cas"),
        format!(
            "{}{}",
            public_line(&keys, "ca-ok"),
            public_line(&keys, "ca-bad")
        ),
    )
    .unwrap();
    std::fs::write(
        keys.path("revoked"),
        format!(
            "# revoked\n{}{}id: rev-d-stolen\n",
            public_line(&keys, "rev-b"),
            public_line(&keys, "ca-bad")
        ),
    )
    .unwrap();
    let listen = loopback_listen();
    let user_cas = keys.path("user_cas").display().to_string();
    let revoked = keys.path("revoked").display().to_string();
    let d = keys.daemon_with(
        listen,
        &[
            "rev-a=192.0.2.10".into(),
            "rev-b=192.0.2.11".into(),
            "rev-c=192.0.2.12".into(),
            "rev-d=192.0.2.13".into(),
        ],
        &[
            "--reverse-user-ca",
            &user_cas,
            "--reverse-revoked",
            &revoked,
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");

    // A revoked key, presented directly.
    let (code, err) = ssh_forward_once(&keys, listen, "rev-b", "rev-b", &[]);
    assert_eq!(code, 255, "a revoked key: {err}");
    assert!(err.contains("Permission denied"), "a revoked key: {err}");
    assert!(
        d.wait_log(
            "refused: the key is listed in --reverse-revoked",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );

    // The revoked key inside a certificate of a good CA.
    sign(
        &keys.path("ca-ok"),
        &keys.path("rev-b"),
        "rev-b-cert",
        "rev-b",
    );
    let with = cert_opt(&keys, "rev-b");
    let (code, err) = ssh_forward_once(&keys, listen, "rev-b", "rev-b", &["-o", &with]);
    assert_eq!(code, 255, "a certificate of a revoked key: {err}");
    assert!(
        d.wait_log(
            "certificate its key is listed in --reverse-revoked",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );

    // A certificate signed by a revoked CA.
    sign(
        &keys.path("ca-bad"),
        &keys.path("rev-c"),
        "rev-c-1",
        "rev-c",
    );
    let with = cert_opt(&keys, "rev-c");
    let (code, err) = ssh_forward_once(&keys, listen, "rev-c", "rev-c", &["-o", &with]);
    assert_eq!(code, 255, "a certificate of a revoked CA: {err}");
    assert!(
        d.wait_log(
            "certificate its CA is listed in --reverse-revoked",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );

    // A certificate whose key id is revoked (`id:` line).
    sign(
        &keys.path("ca-ok"),
        &keys.path("rev-d"),
        "rev-d-stolen",
        "rev-d",
    );
    let with = cert_opt(&keys, "rev-d");
    let (code, err) = ssh_forward_once(&keys, listen, "rev-d", "rev-d", &["-o", &with]);
    assert_eq!(code, 255, "a certificate with a revoked key id: {err}");
    assert!(
        d.wait_log(
            "certificate its key id is listed in --reverse-revoked",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    for n in ["rev-b", "rev-c", "rev-d"] {
        assert_ne!(node_state(&admin, n), "ready", "{n}");
    }

    // The same CA's certificate with another key id, and an unrevoked key, still come in.
    sign(
        &keys.path("ca-ok"),
        &keys.path("rev-d"),
        "rev-d-new",
        "rev-d",
    );
    let _d_ssh = node_ssh_here(&keys, listen, "rev-d", "rev-d", &["-o", &with], "rev-d");
    let _a_ssh = node_ssh_here(&keys, listen, "rev-a", "rev-a", &[], "rev-a");
    for n in ["rev-a", "rev-d"] {
        assert!(
            wait_until(Duration::from_secs(30), || node_state(&admin, n) == "ready"),
            "{n} did not come up (state {:?}); daemon log:\n{}\nssh log:\n{}",
            node_status(&admin, n),
            d.log(),
            ssh_log(&keys, n)
        );
    }
}

#[test]
fn revoking_a_live_nodes_key_or_removing_it_from_the_authorized_file_cuts_its_session() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a", "rev-b", "rev-c"]);
    std::fs::write(keys.path("revoked"), "# nothing yet\n").unwrap();
    let listen = loopback_listen();
    let revoked = keys.path("revoked").display().to_string();
    let d = keys.daemon_with(
        listen,
        &[
            "rev-a=192.0.2.10".into(),
            "rev-b=192.0.2.11".into(),
            "rev-c=192.0.2.12".into(),
        ],
        &["--reverse-revoked", &revoked, "--health-probe", "none"],
    );
    let admin = keys.path("admin.sock");
    let mut ssh: Vec<Proc> = ["rev-a", "rev-b", "rev-c"]
        .iter()
        .map(|n| node_ssh_here(&keys, listen, n, n, &[], n))
        .collect();
    for n in ["rev-a", "rev-b", "rev-c"] {
        assert!(
            wait_until(Duration::from_secs(30), || node_state(&admin, n) == "ready"),
            "{n} did not come up (state {:?}); daemon log:\n{}\nssh log:\n{}",
            node_status(&admin, n),
            d.log(),
            ssh_log(&keys, n)
        );
    }

    // Revoke rev-a's key: its live session is cut, its ssh is told why, it goes not ready.
    std::fs::write(
        keys.path("revoked"),
        format!("# stolen\n{}", public_line(&keys, "rev-a")),
    )
    .unwrap();
    let exited = |p: &mut Proc| {
        wait_until(Duration::from_secs(30), || {
            matches!(p.0.try_wait(), Ok(Some(_)))
        })
    };
    assert!(
        exited(&mut ssh[0]),
        "rev-a's ssh still runs after its key was revoked; daemon log:\n{}\nssh log:\n{}",
        d.log(),
        ssh_log(&keys, "rev-a")
    );
    assert!(
        ssh_log(&keys, "rev-a").contains("node rev-a: its key is listed in --reverse-revoked"),
        "the node's ssh is told why: {}",
        ssh_log(&keys, "rev-a")
    );
    assert!(
        d.wait_log(
            "reverse session cut: node rev-a: its key is listed in --reverse-revoked",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-a")
            != "ready"),
        "rev-a stayed ready after its key was revoked; daemon log:\n{}",
        d.log()
    );
    // And it cannot come back.
    let (code, err) = ssh_forward_once(&keys, listen, "rev-a", "rev-a", &[]);
    assert_eq!(code, 255, "rev-a after its key was revoked: {err}");

    // Take rev-b out of the authorized file: its live session is cut the same way.
    let kept: String = std::fs::read_to_string(keys.path("authorized"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("rev-b "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(keys.path("authorized"), kept).unwrap();
    assert!(
        exited(&mut ssh[1]),
        "rev-b's ssh still runs after its key left the authorized file; daemon log:\n{}",
        d.log()
    );
    assert!(
        ssh_log(&keys, "rev-b").contains("no longer listed for rev-b in --reverse-authorized"),
        "the node's ssh is told why: {}",
        ssh_log(&keys, "rev-b")
    );
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-b")
            != "ready"),
        "rev-b stayed ready after leaving the authorized file; daemon log:\n{}",
        d.log()
    );

    // A revoked file that stops loading keeps the last good set: rev-a is still refused.
    std::fs::write(keys.path("revoked"), "not a key\n").unwrap();
    assert!(
        d.wait_log(
            "--reverse-revoked changed but does not load; keeping the last good set",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    let (code, err) = ssh_forward_once(&keys, listen, "rev-a", "rev-a", &[]);
    assert_eq!(code, 255, "rev-a after the revoked file broke: {err}");

    // rev-c was not touched: its session lives on.
    assert!(
        matches!(ssh[2].0.try_wait(), Ok(None)),
        "rev-c's ssh ended: {}",
        ssh_log(&keys, "rev-c")
    );
    assert_eq!(node_state(&admin, "rev-c"), "ready", "{}", d.log());
}

#[test]
fn one_node_holds_at_most_max_sessions_while_other_nodes_from_the_same_address_are_served() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a", "rev-b", "rev-c"]);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &[
            "rev-a=192.0.2.10".into(),
            "rev-b=192.0.2.11".into(),
            "rev-c=192.0.2.12".into(),
        ],
        &[
            "--reverse-max-sessions-per-node",
            "2",
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");
    // Five sessions from one source address (loopback): two each for rev-a and rev-b, one
    // for rev-c. All are served: the limit is per node, not per address.
    let mut ssh = Vec::new();
    for (i, n) in ["rev-a", "rev-a", "rev-b", "rev-b", "rev-c"]
        .iter()
        .enumerate()
    {
        ssh.push(node_ssh_here(&keys, listen, n, n, &[], &format!("{n}-{i}")));
        assert!(
            d.wait_log("reverse session ready", i + 1, Duration::from_secs(30)),
            "session {} ({n}) was not accepted; daemon log:\n{}\nssh log:\n{}",
            i + 1,
            d.log(),
            ssh_log(&keys, &format!("{n}-{i}"))
        );
    }
    for n in ["rev-a", "rev-b", "rev-c"] {
        assert!(
            wait_until(Duration::from_secs(30), || node_state(&admin, n) == "ready"),
            "{n} is not ready; daemon log:\n{}",
            d.log()
        );
    }

    // A third session of rev-a is refused, and both sides name the flag.
    let (code, err) = ssh_forward_once(&keys, listen, "rev-a", "rev-a", &[]);
    assert_eq!(code, 255, "rev-a's third session: {err}");
    assert!(
        err.contains("node rev-a already has 2 live sessions")
            && err.contains("--reverse-max-sessions-per-node"),
        "the node's ssh is told why: {err}"
    );
    assert!(
        d.wait_log(
            "node rev-a already has 2 live sessions, the most --reverse-max-sessions-per-node allows",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    for (i, p) in ssh.iter_mut().enumerate() {
        assert!(
            matches!(p.0.try_wait(), Ok(None)),
            "session {} ended: {}",
            i + 1,
            d.log()
        );
    }

    // One of rev-a's sessions ends: a new one takes its place.
    drop(ssh.remove(0));
    let _again = node_ssh_here(&keys, listen, "rev-a", "rev-a", &[], "rev-a-again");
    assert!(
        d.wait_log("reverse session ready", 6, Duration::from_secs(30)),
        "rev-a's session after one of its two ended was not accepted; daemon log:\n{}\nssh log:\n{}",
        d.log(),
        ssh_log(&keys, "rev-a-again")
    );
}

#[test]
fn a_key_that_keeps_failing_is_logged_once_then_at_most_every_10_s_with_the_count_held_back() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".into()],
        &["--health-probe", "none"],
    );
    let line = "reverse session refused: the key is not in --reverse-authorized";
    // The same unknown key, four times: each is refused, and the node's ssh says so.
    let start = std::time::Instant::now();
    for i in 0..4 {
        let (code, err) = ssh_forward_once(&keys, listen, "rev-a", "stranger", &[]);
        assert!(
            code == 255 && err.contains("Permission denied"),
            "attempt {i}: exit {code}: {err}"
        );
    }
    let spent = start.elapsed();
    assert!(d.wait_log(line, 1, Duration::from_secs(10)), "{}", d.log());
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(line)).collect();
    // One line at once, then at most one per 10 s, each later one with the count held back.
    let most = 1 + (spent.as_secs() / 10) as usize;
    assert!(
        lines.len() <= most,
        "{} lines in {spent:?} for one key (at most {most}):\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines.iter().skip(1).all(|l| l.contains("held back")),
        "{}",
        lines.join("\n")
    );
    // Another key is logged at once.
    let (code, _) = ssh_forward_once(&keys, listen, "rev-a", "client", &[]);
    assert_eq!(code, 255);
    assert!(
        d.wait_log(line, lines.len() + 1, Duration::from_secs(10)),
        "a refusal for another key was held back:\n{}",
        d.log()
    );
}

#[test]
fn a_session_the_daemon_closes_is_cut_even_when_the_node_never_closes_its_side() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = loopback_listen();
    // Keepalives slower than the bound below: they must not be what ends the session.
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".into()],
        &[
            "--reverse-max-sessions-per-node",
            "1",
            "--health-probe",
            "none",
            "--keepalive-interval",
            "60s",
        ],
    );
    let admin = keys.path("admin.sock");
    let first = node_ssh_here(&keys, listen, "rev-a", "rev-a", &[], "rev-a-first");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-a")
            == "ready"),
        "rev-a is not ready; daemon log:\n{}",
        d.log()
    );
    // The node's ssh freezes: it will never close its side. The daemon then closes the
    // connection (a reconnect drains it and disconnects it).
    support::signal(first.0.id(), libc::SIGSTOP);
    let admin_s = admin.display().to_string();
    let (code, _, err) = kst(&["reconnect", "--admin-uds", &admin_s, "rev-a"]);
    assert_eq!(code, 0, "reconnect rev-a: {err}");
    // Its session must be gone from the book soon: with one session allowed, a new ssh of the
    // node gets in only then. Before the fix the closed session waited for the frozen peer
    // forever and held the node's only place.
    let t0 = std::time::Instant::now();
    let mut tries = 0;
    let mut back = false;
    while !back && t0.elapsed() < Duration::from_secs(25) {
        tries += 1;
        let _again = node_ssh_here(
            &keys,
            listen,
            "rev-a",
            "rev-a",
            &[],
            &format!("rev-a-{tries}"),
        );
        back = wait_until(Duration::from_secs(3), || {
            node_state(&admin, "rev-a") == "ready"
        });
        if back {
            break;
        }
    }
    support::signal(first.0.id(), libc::SIGCONT);
    assert!(
        back,
        "no new session of rev-a was served within 25 s of the daemon closing its frozen one ({tries} tries); daemon log:\n{}",
        d.log()
    );
    eprintln!(
        "rev-a served again {:?} after the reconnect ({tries} tries)",
        t0.elapsed()
    );
}

/// The server's version line on a fresh TCP connection (read up to the newline), or what
/// came before EOF.
fn banner(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while got.len() < 256 {
        match s.read(&mut b) {
            Ok(1) => {
                got.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// True if the peer closes `s` (EOF or reset) within `limit`; bytes that arrive are skipped.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    for _ in 0..10_000 {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn connections_past_the_unauthenticated_cap_are_closed_at_once_and_a_node_gets_in_after() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".into()],
        &[
            "--reverse-max-unauthenticated",
            "3",
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");
    // The daemon's own readiness probe of the listener (daemon_with) may still hold a slot
    // for a moment: wait until three idle connections all get the server's version line.
    let mut idle: Vec<TcpStream> = Vec::new();
    for i in 0..3 {
        let mut last = String::new();
        let got = wait_until(Duration::from_secs(20), || {
            let Ok(mut s) = TcpStream::connect(listen) else {
                return false;
            };
            last = banner(&mut s);
            if last.starts_with("SSH-2.0-") {
                idle.push(s);
                return true;
            }
            false
        });
        assert!(
            got,
            "idle connection {} got no version line: {last:?}; daemon log:\n{}",
            i + 1,
            d.log()
        );
    }
    // The fourth is closed at once, without the server's version line.
    let mut extra = TcpStream::connect(listen).unwrap();
    let b = banner(&mut extra);
    assert!(
        !b.starts_with("SSH-"),
        "the connection past the cap was served: {b:?}; daemon log:\n{}",
        d.log()
    );
    assert!(
        d.wait_log(
            "connections have not authenticated yet (--reverse-max-unauthenticated)",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    // Nor does a node get in while the idle ones hold every place.
    let (code, err) = ssh_forward_once(&keys, listen, "rev-a", "rev-a", &[]);
    assert_eq!(code, 255, "a node while the cap is full: {err}");

    // The idle connections go: a node connects.
    drop(idle);
    let _ssh = node_ssh_here(&keys, listen, "rev-a", "rev-a", &[], "rev-a");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-a")
            == "ready"),
        "rev-a did not come up after the idle connections went (state {:?}); daemon log:\n{}\nssh log:\n{}",
        node_status(&admin, "rev-a"),
        d.log(),
        ssh_log(&keys, "rev-a")
    );
}

#[test]
fn a_connection_that_only_sends_its_version_is_closed_after_the_login_grace() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".into()],
        &["--reverse-login-grace", "2s", "--health-probe", "none"],
    );
    let mut s = TcpStream::connect(listen).unwrap();
    let b = banner(&mut s);
    assert!(b.starts_with("SSH-2.0-"), "{b:?}");
    s.write_all(b"SSH-2.0-OpenSSH_9.6 kst-login-grace-test\r\n")
        .unwrap();
    // 30 s: well past the 2 s grace, and short of the default keepalive bound (15 s x 4),
    // which also ends a silent connection.
    assert!(
        closed_within(&mut s, Duration::from_secs(30)),
        "a connection that never authenticated was still open 30 s later (grace 2 s); daemon log:\n{}",
        d.log()
    );
    assert!(
        d.wait_log(
            "no authentication within --reverse-login-grace",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
}

/// Runs the daemon's binary once (bounded); returns (exit code, stdout, stderr).
fn kst(args: &[&str]) -> (i32, String, String) {
    let o = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args(args),
        b"",
        Duration::from_secs(30),
    )
    .unwrap();
    (o.code(), o.stdout_text(), o.stderr_text())
}

/// The absolute path of the OpenSSH client (the units name it).
fn ssh_path() -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("ssh"))
        .find(|p| p.is_file())
        .expect("this test needs `ssh` (openssh-client) on PATH")
        .display()
        .to_string()
}

/// `keygen --reverse` and `node-setup` make a node's files; the node's units, run exactly as
/// written, bring it up on two daemons (two control planes), and CONNECTs to its kubelet echo
/// work through each.
fn node_setup_serves_two_daemons(with_ca: bool) {
    require_tool("ssh", "-V");
    let k1 = Keys::new(&[]);
    let k2 = Keys::new(&[]);
    let (l1, l2) = (loopback_listen(), loopback_listen());
    let (node_ip, _stub) = kubelet_stub_here(&k1, "rev-1");

    // One host key for both listeners, made by keygen --reverse.
    let hk = k1.path("host_key").display().to_string();
    let (code, out, err) = kst(&[
        "keygen",
        "--reverse",
        "--force",
        "--out",
        &hk,
        "--listen",
        &l1.to_string(),
    ]);
    assert_eq!(code, 0, "keygen --reverse: {err}");
    let host_pub = std::fs::read_to_string(k1.path("host_key.pub")).unwrap();
    let bare: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let line = format!("[{}]:{} {}", l1.ip(), l1.port(), bare.join(" "));
    assert!(
        out.contains(&line),
        "keygen --reverse prints {line:?}:\n{out}"
    );
    for f in ["host_key", "host_key.pub"] {
        std::fs::copy(k1.path(f), k2.path(f)).unwrap();
    }

    let node_dir = k1.path("node");
    let node_dir_s = node_dir.display().to_string();
    let ssh = ssh_path();
    let mut args = vec![
        "node-setup".to_string(),
        "--node".into(),
        "rev-1".into(),
        "--control-plane".into(),
        l1.to_string(),
        "--control-plane".into(),
        l2.to_string(),
        "--host-key-pub".into(),
        k1.path("host_key.pub").display().to_string(),
        "--out".into(),
        node_dir_s.clone(),
        "--install-dir".into(),
        node_dir_s.clone(),
        "--ssh".into(),
        ssh,
    ];
    let mut daemon_extra: Vec<String> = vec!["--health-probe".into(), "none".into()];
    if with_ca {
        keygen(&k1.path("ca"), "ed25519", None);
        args.extend(
            [
                "--user-ca",
                &k1.path("ca").display().to_string(),
                "--validity",
                "1h",
            ]
            .map(String::from),
        );
        daemon_extra.extend([
            "--reverse-user-ca".into(),
            k1.path("ca.pub").display().to_string(),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = kst(&argv);
    assert_eq!(code, 0, "node-setup: {err}");
    // The printed line for --reverse-authorized: the last line that is not a comment.
    let authorized = out
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string();
    if with_ca {
        assert_eq!(authorized, "rev-1", "{out}");
        assert!(node_dir.join("node_key-cert.pub").is_file());
    } else {
        let public = std::fs::read_to_string(node_dir.join("node_key.pub")).unwrap();
        assert_eq!(authorized, format!("rev-1 {}", public.trim()), "{out}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node_dir.join("node_key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the node's private key");
    // Not overwritten without --force, naming the flag.
    let (code, _, err) = kst(&argv);
    assert_eq!(code, 2, "node-setup again: {err}");
    assert!(err.contains("--force"), "{err}");

    let extra: Vec<&str> = daemon_extra.iter().map(String::as_str).collect();
    let node = format!("rev-1={node_ip}");
    let mut daemons = Vec::new();
    for (k, l) in [(&k1, l1), (&k2, l2)] {
        std::fs::write(k.path("authorized"), format!("{authorized}\n")).unwrap();
        daemons.push(k.daemon_with(l, std::slice::from_ref(&node), &extra));
    }
    let units: Vec<_> = (1..=2)
        .map(|i| node_dir.join(format!("kube-ssh-tunnel-reverse-{i}.service")))
        .collect();
    for u in &units {
        let text = std::fs::read_to_string(u).unwrap();
        assert!(text.contains("Restart=always"), "{text}");
    }
    let _ssh: Vec<Proc> = units
        .iter()
        .enumerate()
        .map(|(i, u)| run_unit(&k1, u, &format!("unit-{}", i + 1)))
        .collect();
    let target = format!("{node_ip}:{}", support::ECHO_PORT);
    for (i, (k, d)) in [&k1, &k2].iter().zip(&daemons).enumerate() {
        let admin = k.path("admin.sock");
        assert!(
            wait_until(Duration::from_secs(30), || node_state(&admin, "rev-1")
                == "ready"),
            "rev-1 did not come up on daemon {} through its unit (state {:?}); daemon log:\n{}\nssh log:\n{}",
            i + 1,
            node_status(&admin, "rev-1"),
            d.log(),
            ssh_log(&k1, &format!("unit-{}", i + 1))
        );
        let (sent, got, head) = echo_through(&k.path("proxy.sock"), &target, 1 << 20);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "CONNECT {target} through daemon {}: {head}\n{}",
            i + 1,
            d.log()
        );
        assert_eq!(sent, got, "SHA-256 through daemon {}", i + 1);
    }
}

#[test]
fn node_setup_units_bring_a_node_with_its_own_key_up_on_two_daemons() {
    node_setup_serves_two_daemons(false);
}

#[test]
fn node_setup_units_bring_a_node_with_a_user_certificate_up_on_two_daemons() {
    node_setup_serves_two_daemons(true);
}

#[test]
fn a_bad_revoked_file_or_a_limit_without_the_listener_is_a_usage_error() {
    let keys = Keys::new(&["rev-a"]);
    std::fs::write(keys.path("revoked"), "# ok\nssh-ed25519 AAAA\n").unwrap();
    let base: Vec<String> = vec![
        "run".into(),
        "--ssh-tunnel".into(),
        "--ssh-user".into(),
        "kube-tunnel".into(),
        "--ssh-keyfile".into(),
        keys.path("client").display().to_string(),
        "--ssh-known-hosts".into(),
        keys.path("known_hosts").display().to_string(),
        "--admin-uds".into(),
        keys.path("admin.sock").display().to_string(),
        "--proxy-uds".into(),
        keys.path("proxy.sock").display().to_string(),
        "--node".into(),
        "rev-a=192.0.2.10".into(),
    ];
    let run = |extra: &[String]| {
        let a: Vec<&str> = base.iter().chain(extra).map(String::as_str).collect();
        let (code, _, err) = kst(&a);
        (code, err)
    };
    let (code, err) = run(&[
        "--reverse-listen".into(),
        "127.0.0.1:0".into(),
        "--reverse-host-key".into(),
        keys.path("host_key").display().to_string(),
        "--reverse-authorized".into(),
        keys.path("authorized").display().to_string(),
        "--reverse-revoked".into(),
        keys.path("revoked").display().to_string(),
    ]);
    assert_eq!(code, 2, "a bad revoked line: {err}");
    assert!(
        err.contains("--reverse-revoked") && err.contains(":2: not an OpenSSH public key"),
        "{err}"
    );
    let (code, err) = run(&["--reverse-max-sessions-per-node".into(), "2".into()]);
    assert_eq!(code, 2, "a limit without the listener: {err}");
    assert!(err.contains("--reverse-listen"), "{err}");
    let (code, err) = run(&[
        "--reverse-listen".into(),
        "127.0.0.1:0".into(),
        "--reverse-host-key".into(),
        keys.path("host_key").display().to_string(),
        "--reverse-authorized".into(),
        keys.path("authorized").display().to_string(),
        "--reverse-max-unauthenticated-per-source".into(),
        "0".into(),
    ]);
    assert_eq!(code, 2, "a per-source limit of 0: {err}");
    assert!(
        err.contains("--reverse-max-unauthenticated-per-source"),
        "{err}"
    );
}

#[test]
fn node_setup_and_keygen_reverse_name_the_flag_of_every_bad_input() {
    let k = Keys::new(&[]);
    let hk = k.path("host_key.pub").display().to_string();
    let out = k.path("node").display().to_string();
    let base = |extra: &[&str]| -> (i32, String) {
        let mut a = vec!["node-setup", "--out", &out];
        a.extend_from_slice(extra);
        let (code, _, err) = kst(&a);
        (code, err)
    };
    for (extra, flag) in [
        (
            vec![
                "--node",
                "a b",
                "--control-plane",
                "cp:2222",
                "--host-key-pub",
                &hk,
            ],
            "--node",
        ),
        (
            vec![
                "--node",
                "n",
                "--control-plane",
                "cp",
                "--host-key-pub",
                &hk,
            ],
            "--control-plane",
        ),
        (
            vec![
                "--node",
                "n",
                "--control-plane",
                "-oProxyCommand=x:22",
                "--host-key-pub",
                &hk,
            ],
            "--control-plane",
        ),
        (
            vec![
                "--node",
                "n",
                "--control-plane",
                "cp:2222",
                "--host-key-pub",
                "/nonexistent",
            ],
            "--host-key-pub",
        ),
        (
            vec![
                "--node",
                "n",
                "--control-plane",
                "cp:2222",
                "--host-key-pub",
                &hk,
                "--install-dir",
                "etc/kst",
            ],
            "--install-dir",
        ),
        (
            vec![
                "--node",
                "n",
                "--control-plane",
                "cp:2222",
                "--host-key-pub",
                &hk,
                "--user-ca",
                &hk,
            ],
            "--validity",
        ),
    ] {
        let (code, err) = base(&extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(flag), "{extra:?} names {flag}: {err}");
    }
    let (code, _, err) = kst(&[
        "keygen",
        "--reverse",
        "--out",
        &k.path("host_key").display().to_string(),
    ]);
    assert_eq!(code, 2, "keygen --reverse over an existing key: {err}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = kst(&[
        "keygen",
        "--reverse",
        "--out",
        &k.path("hk2").display().to_string(),
        "--listen",
        "nowhere",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--listen"), "{err}");
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

#[test]
fn one_source_address_holds_at_most_its_share_of_the_unauthenticated_places_and_others_get_in() {
    require_tool("ssh", "-V");
    let keys = Keys::new(&["rev-a"]);
    let listen = loopback_listen();
    let d = keys.daemon_with(
        listen,
        &["rev-a=192.0.2.10".into()],
        &[
            "--reverse-max-unauthenticated",
            "8",
            "--reverse-max-unauthenticated-per-source",
            "2",
            "--health-probe",
            "none",
        ],
    );
    let admin = keys.path("admin.sock");
    // Another loopback source than the node's (127.0.0.1) holds two idle connections.
    let other = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let mut idle = Vec::new();
    for i in 0..2 {
        let mut s = connect_from(other, listen).unwrap();
        let b = banner(&mut s);
        assert!(b.starts_with("SSH-2.0-"), "idle connection {i}: {b:?}");
        idle.push(s);
    }
    // Its third is closed at once, and the daemon names the flag.
    let mut extra = connect_from(other, listen).unwrap();
    let b = banner(&mut extra);
    assert!(
        !b.starts_with("SSH-"),
        "a third connection from one source was served: {b:?}; daemon log:\n{}",
        d.log()
    );
    assert!(
        d.wait_log(
            "(--reverse-max-unauthenticated-per-source)",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    // A node from another address gets in meanwhile.
    let _ssh = node_ssh_here(&keys, listen, "rev-a", "rev-a", &[], "rev-a");
    assert!(
        wait_until(Duration::from_secs(30), || node_state(&admin, "rev-a")
            == "ready"),
        "rev-a did not come up beside one source's idle connections; daemon log:\n{}\nssh log:\n{}",
        d.log(),
        ssh_log(&keys, "rev-a")
    );
    // The idle ones go: that source is served again.
    drop(idle);
    let mut b = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let Ok(mut s) = connect_from(other, listen) else {
                return false;
            };
            b = banner(&mut s);
            b.starts_with("SSH-2.0-")
        }),
        "the source got no place after its idle connections went: {b:?}"
    );
}
