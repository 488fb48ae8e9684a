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
