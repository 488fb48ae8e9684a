//! Trust files are live: a `run` daemon re-reads its `--ssh-known-hosts` file when it changes
//! (every `--reload-interval`) and on SIGHUP, lets in a node its new contents vouch for
//! without a restart and without touching connections that are up, and keeps the last good
//! contents of a file that stops parsing (log, `status`, metric). Real sshd nodes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_ssh_tunnel::admin::client::{Endpoint, request};
use support::daemon::Daemon;
use support::{Cluster, children_of, keygen, run_ok};

/// A `run` daemon of the test, with its admin socket.
struct Running {
    d: Daemon,
    admin: PathBuf,
}

/// Starts `run` for the cluster's nodes, trusting `known_hosts` only, checking it every
/// `reload` (human backoff long: a node retried soon was retried because of the reload).
fn start(c: &Cluster, known_hosts: &Path, reload: &str) -> Running {
    start_with(c, known_hosts, reload, &[], &[])
}

/// `start` with flag values replaced (`--ssh-keyfile`, say) and flags added.
fn start_with(
    c: &Cluster,
    known_hosts: &Path,
    reload: &str,
    replace: &[(&str, &str)],
    extra: &[&str],
) -> Running {
    let mut args = c.daemon_args();
    let kh = known_hosts.display().to_string();
    for (flag, value) in
        std::iter::once(("--ssh-known-hosts", kh.as_str())).chain(replace.iter().copied())
    {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("the harness passes {flag}"));
        args[at + 1] = value.to_string();
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    for n in &c.nodes {
        args.push("--node".into());
        args.push(n.spec());
    }
    for a in [
        "--reload-interval",
        reload,
        "--backoff-auth-max",
        "10m",
        "--health-probe",
        "none",
    ] {
        args.push(a.into());
    }
    Running {
        d: Daemon::start(&args),
        admin: c.path().join("admin.sock"),
    }
}

impl Running {
    /// `status -o json` (None while the daemon does not answer yet).
    fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "-o", "json"]).0;
        serde_json::from_str(&out).ok()
    }

    /// `status` as a table.
    fn table(&self) -> String {
        self.cli(&["status"]).0
    }

    /// Runs the binary against this daemon's admin socket: (stdout, stderr).
    fn cli(&self, args: &[&str]) -> (String, String) {
        let mut a: Vec<&str> = vec![args[0], "--admin-uds", self.admin.to_str().unwrap()];
        a.extend_from_slice(&args[1..]);
        let o = support::run_bounded(
            Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel"))
                .args(&a)
                .env("NO_COLOR", "1"),
            b"",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("run kube-ssh-tunnel: {e}"));
        (o.stdout_text(), o.stderr_text())
    }

    /// Node `name`'s state in `status`.
    fn state(&self, name: &str) -> Option<String> {
        let doc = self.status()?;
        doc["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["name"] == name)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }

    /// Waits (bounded, polling every 200 ms) until node `name` is in `state`.
    fn wait_state(&self, name: &str, state: &str, limit: Duration) -> bool {
        wait(limit, || self.state(name).as_deref() == Some(state))
    }

    /// The admin API's /metrics.
    fn metrics(&self) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (code, body) = rt
            .block_on(request(
                &Endpoint::Unix(self.admin.clone()),
                "GET",
                "/metrics",
                Duration::from_secs(10),
            ))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        body
    }
}

/// Polls `cond` every 200 ms until it holds or `limit` passes.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cond()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The per-connection sshd children of node `i` (the daemon's connection to it).
fn connection_pids(c: &Cluster, i: usize) -> Vec<u32> {
    let pid = c.nodes[i].sshd_pid().expect("the node's sshd runs");
    let mut v = children_of(pid);
    v.sort();
    v
}

/// Waits until node `name` is `failed` for its host key (the error names it).
fn wait_refused(r: &Running, name: &str) {
    let refused = wait(Duration::from_secs(20), || {
        r.status().is_some_and(|doc| {
            doc["nodes"].as_array().is_some_and(|ns| {
                ns.iter().any(|n| {
                    n["name"] == name
                        && n["state"] == "failed"
                        && n["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("host key") || e.contains("certificate"))
                })
            })
        })
    });
    assert!(
        refused,
        "{name} should be failed for its host key: {:?}\n{}",
        r.status(),
        r.d.log()
    );
}

#[test]
fn a_known_hosts_line_appended_while_running_lets_the_refused_node_in_without_a_signal() {
    let cluster = Cluster::start(2);
    let kh = cluster.path().join("client/known_hosts_live");
    std::fs::write(&kh, cluster.nodes[0].known_hosts_line()).unwrap();
    let r = start(&cluster, &kh, "1s");
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "{}",
        r.d.log()
    );
    wait_refused(&r, "node-2");
    let before = connection_pids(&cluster, 0);
    assert_eq!(before.len(), 1, "one connection to node-1: {before:?}");

    // The fix the error message gives, with no signal: within 2 reload intervals (+ the
    // handshake).
    append(&kh, &cluster.nodes[1].known_hosts_line());
    assert!(
        r.wait_state("node-2", "ready", Duration::from_secs(2 + 10)),
        "node-2 should be ready after its line was appended: {:?}\n{}",
        r.status(),
        r.d.log()
    );
    assert!(r.d.log().contains("trust files reloaded"), "{}", r.d.log());
    assert_eq!(
        connection_pids(&cluster, 0),
        before,
        "node-1's connection is the same one (its sshd child did not change)"
    );
    assert_eq!(r.state("node-1").as_deref(), Some("ready"));
}

#[test]
fn sighup_reloads_known_hosts_at_once() {
    let cluster = Cluster::start(2);
    let kh = cluster.path().join("client/known_hosts_live");
    std::fs::write(&kh, cluster.nodes[0].known_hosts_line()).unwrap();
    // A reload interval far longer than the test: only the signal can reload.
    let r = start(&cluster, &kh, "1h");
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "{}",
        r.d.log()
    );
    wait_refused(&r, "node-2");
    append(&kh, &cluster.nodes[1].known_hosts_line());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        r.state("node-2").as_deref(),
        Some("failed"),
        "no reload before the signal"
    );
    support::signal(r.d.child.id(), libc::SIGHUP);
    assert!(
        r.wait_state("node-2", "ready", Duration::from_secs(10)),
        "node-2 should be ready after SIGHUP: {:?}\n{}",
        r.status(),
        r.d.log()
    );
}

/// Signs node `node`'s host key with `ca` for `principals` and makes its sshd present it.
fn host_cert(node: &support::TestNode, ca: &Path, principals: &str) {
    let key_pub = node.dir.join("ssh_host_ed25519_key.pub");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args([
                "-h",
                "-I",
                "node-host-cert",
                "-n",
                principals,
                "-V",
                "-5m:+1h",
            ])
            .arg(&key_pub),
    );
    let cert = node.dir.join("ssh_host_ed25519_key-cert.pub");
    let cfg = std::fs::read_to_string(node.dir.join("sshd_config")).unwrap();
    if !cfg.contains("HostCertificate") {
        node.add_sshd_config(&format!("HostCertificate {}", cert.display()));
    }
    node.restart_sshd();
}

#[test]
fn a_host_ca_added_while_running_lets_a_node_with_a_host_certificate_in() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let ca = cluster.path().join("host_ca");
    keygen(&ca, "ed25519", None);
    host_cert(node, &ca, &format!("{},{}", node.addr, node.name));
    // No line for the node at all.
    let kh = cluster.path().join("client/known_hosts_ca");
    std::fs::write(&kh, "# nodes are trusted through the host CA\n").unwrap();
    let r = start(&cluster, &kh, "1s");
    wait_refused(&r, "node-1");

    let ca_pub = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
    append(&kh, &format!("@cert-authority * {ca_pub}"));
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(2 + 10)),
        "node-1 should be ready once its host CA is trusted: {:?}\n{}",
        r.status(),
        r.d.log()
    );
    let doc = r.status().unwrap();
    let host_key = doc["nodes"][0]["host_key"].as_str().unwrap_or_default();
    assert!(
        host_key.contains("node-host-cert"),
        "trusted through its certificate: {host_key}"
    );
}

#[test]
fn an_unparsable_known_hosts_keeps_its_last_good_contents_and_says_so_until_fixed() {
    let cluster = Cluster::start(1);
    let kh = cluster.path().join("client/known_hosts_live");
    let good = cluster.nodes[0].known_hosts_line();
    std::fs::write(&kh, &good).unwrap();
    let r = start(&cluster, &kh, "1s");
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "{}",
        r.d.log()
    );
    let file = kh.display().to_string();
    let metric = format!("kube_ssh_tunnel_trust_file_reload_errors_total{{file=\"{file}\"}}");

    append(&kh, "this line is not a known_hosts line\n");
    assert!(
        r.d.wait_log("trust file did not reload", 1, Duration::from_secs(10)),
        "{}",
        r.d.log()
    );
    let log = r.d.log();
    assert!(
        log.contains(&format!("{file}:2 is malformed")),
        "the log names the file and the line: {log}"
    );
    let doc = r.status().unwrap();
    let tf = &doc["trust_files"][0];
    assert_eq!(tf["path"], file.as_str(), "{doc}");
    assert_eq!(tf["ok"], false, "{doc}");
    assert!(
        tf["error"]
            .as_str()
            .unwrap_or("")
            .contains(":2 is malformed"),
        "{doc}"
    );
    let table = r.table();
    assert!(
        table.contains("TRUST FILE") && table.contains(":2 is malformed"),
        "{table}"
    );
    assert!(
        r.metrics().contains(&format!("{metric} 1")),
        "{}",
        r.metrics()
    );

    // The last good contents stay in use: a new connection to node-1 is still trusted.
    let (out, err) = r.cli(&["reconnect", "node-1"]);
    assert!(out.contains("reconnecting"), "{out} {err}");
    assert!(
        wait(Duration::from_secs(15), || r.status().is_some_and(|d| {
            d["nodes"][0]["state"] == "ready" && d["nodes"][0]["reconnects"].as_u64() >= Some(1)
        })),
        "node-1 reconnects with the last good contents: {:?}\n{}",
        r.status(),
        r.d.log()
    );

    // Fixing the file clears it.
    std::fs::write(&kh, format!("# fixed\n{good}")).unwrap();
    assert!(
        wait(Duration::from_secs(10), || r
            .status()
            .is_some_and(|d| d["trust_files"][0]["ok"] == true)),
        "{:?}",
        r.status()
    );
    assert!(!r.table().contains("TRUST FILE"), "{}", r.table());
    assert!(
        r.metrics().contains(&format!("{metric} 1")),
        "a counter: it stays at 1"
    );
}

/// An ed25519 key at `path` encrypted with `passphrase` (mode 0600, as the daemon wants).
fn encrypted_key(path: &Path, passphrase: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
            .arg(path),
    );
}

#[test]
fn a_key_rotated_with_a_new_passphrase_is_used_once_the_passphrase_file_changes() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let dir = cluster.path().join("rotate");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("id_enc");
    let pass = dir.join("passphrase");
    encrypted_key(&key, "first passphrase");
    std::fs::write(&pass, "first passphrase\n").unwrap();
    let public = |k: &Path| std::fs::read_to_string(k.with_extension("pub")).unwrap();
    node.set_authorized_keys(&node.authorize(&public(&key)));
    let (k, p) = (key.display().to_string(), pass.display().to_string());
    let r = start_with(
        &cluster,
        &cluster.known_hosts,
        "1s",
        &[("--ssh-keyfile", &k)],
        &["--ssh-key-passphrase-file", &p],
    );
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "{}",
        r.d.log()
    );

    // The key is replaced (a new passphrase) and only the new key is authorized; the
    // passphrase file is not updated yet: the new key does not load, the old one is kept and
    // refused.
    let staged = dir.join("id_new");
    encrypted_key(&staged, "second passphrase");
    std::fs::copy(&staged, &key).unwrap();
    node.set_authorized_keys(&node.authorize(&public(&staged)));
    let first_reconnect = Instant::now();
    let (out, err) = r.cli(&["reconnect", "node-1"]);
    assert!(out.contains("reconnecting"), "{out} {err}");
    assert!(
        r.wait_state("node-1", "failed", Duration::from_secs(20)),
        "{:?}\n{}",
        r.status(),
        r.d.log()
    );
    assert!(
        r.d.log()
            .contains("does not load; keeping the previous key"),
        "{}",
        r.d.log()
    );

    // The passphrase file is written: the next connection uses the new key.
    std::fs::write(&pass, "second passphrase\n").unwrap();
    // The admin API reconnects a node at most every 10 s.
    // 12 s: the daemon starts its 10 s when the first request arrives, which may be later
    // than this clock on a loaded machine.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(first_reconnect.elapsed()));
    let (out, err) = r.cli(&["reconnect", "node-1"]);
    assert!(out.contains("reconnecting"), "{out} {err}");
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "the new key, decrypted with the new passphrase: {:?}\n{}",
        r.status(),
        r.d.log()
    );
}

/// One raw HTTP/1.1 GET of `path` on `addr` with a bearer `token`: the status code.
fn get_with_token(addr: &str, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_rotated_admin_token_file_applies_without_a_restart_and_a_bad_one_keeps_the_last_token() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start(1);
    let tf = cluster.path().join("admin-token");
    let (old, new) = ("old-token-0123456789abcdef", "new-token-0123456789abcdef");
    std::fs::write(&tf, format!("{old}\n")).unwrap();
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let t = tf.display().to_string();
    let r = start_with(
        &cluster,
        &cluster.known_hosts,
        "1s",
        &[],
        &[
            "--admin-listen",
            &addr,
            "--admin-token-file",
            &t,
            "--admin-token-for-reads",
        ],
    );
    assert!(
        wait(Duration::from_secs(20), || get_with_token(
            &addr, "/status", old
        ) == 200),
        "{}",
        r.d.log()
    );

    std::fs::write(&tf, format!("{new}\n")).unwrap();
    assert!(
        wait(Duration::from_secs(2 + 5), || get_with_token(
            &addr, "/status", new
        ) == 200),
        "the new token is taken without a restart: {}",
        r.d.log()
    );
    assert_eq!(
        get_with_token(&addr, "/status", old),
        401,
        "the old token is refused"
    );

    // A token too short to be used: the last good token stays, and the log says why.
    std::fs::write(&tf, "short\n").unwrap();
    assert!(
        r.d.wait_log(
            "admin token file did not reload",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        r.d.log()
    );
    assert!(
        r.d.log().contains("at least 16 characters"),
        "{}",
        r.d.log()
    );
    assert_eq!(get_with_token(&addr, "/status", new), 200);
    assert_eq!(get_with_token(&addr, "/status", "short"), 401);
}

#[test]
fn a_host_ca_rotates_with_two_lines_and_one_host_is_revoked_without_a_restart() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let principals = format!("{},{}", node.addr, node.name);
    let (old_ca, new_ca) = (cluster.path().join("old_ca"), cluster.path().join("new_ca"));
    keygen(&old_ca, "ed25519", None);
    keygen(&new_ca, "ed25519", None);
    let line = |ca: &Path| {
        let public = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
        format!("@cert-authority * {}", public.trim_end())
    };
    host_cert(node, &old_ca, &principals);
    let kh = cluster.path().join("client/known_hosts_ca");
    std::fs::write(&kh, format!("{}\n", line(&old_ca))).unwrap();
    let r = start_with(&cluster, &kh, "1s", &[], &["--backoff-max", "1s"]);
    assert!(
        r.wait_state("node-1", "ready", Duration::from_secs(20)),
        "{}",
        r.d.log()
    );

    // Each step below ends the connection by restarting the node's sshd (the admin API
    // reconnects a node at most every 10 s); the daemon's next connection shows the step.
    let reconnected = |n: u64| {
        wait(Duration::from_secs(20), || {
            r.status().is_some_and(|d| {
                d["nodes"][0]["state"] == "ready" && d["nodes"][0]["reconnects"].as_u64() >= Some(n)
            })
        })
    };

    // Both CAs trusted; the node moves to a certificate from the new one.
    std::fs::write(&kh, format!("{}\n{}\n", line(&old_ca), line(&new_ca))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    host_cert(node, &new_ca, &principals);
    assert!(
        reconnected(1),
        "a certificate from the new CA is trusted beside the old line: {:?}\n{}",
        r.status(),
        r.d.log()
    );

    // The old line goes: the new certificate is still trusted.
    std::fs::write(&kh, format!("{}\n", line(&new_ca))).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    node.restart_sshd();
    assert!(reconnected(2), "{:?}\n{}", r.status(), r.d.log());

    // One host revoked: its next handshake is refused.
    let host_pub = node.host_key_pub();
    let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    let reloads = r.d.log().matches("trust files reloaded").count();
    append(&kh, &format!("@revoked * {}\n", key.join(" ")));
    // The revocation must be loaded before the node reconnects (a reload never touches a
    // connection that is up): wait for the reload that read it.
    assert!(
        r.d.wait_log("trust files reloaded", reloads + 1, Duration::from_secs(20)),
        "{}",
        r.d.log()
    );
    node.restart_sshd();
    let refused = wait(Duration::from_secs(20), || {
        r.status().is_some_and(|d| {
            d["nodes"][0]["state"] == "failed"
                && d["nodes"][0]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("@revoked"))
        })
    });
    assert!(refused, "{:?}\n{}", r.status(), r.d.log());
}
