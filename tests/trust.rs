//! Trust: host certificates, full known_hosts matching, accept-new, user certificates,
//! ssh-agent, encrypted keys, keygen's restricted line, and key rotation — against real sshd,
//! with keys and certificates made by ssh-keygen at test time.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kube_ssh_tunnel::pool::{PoolConfig, Probe, TunnelState};
use kube_ssh_tunnel::ssh::{HostKeyPolicy, HostKeyTrust, KnownHosts};
use kube_ssh_tunnel::{ConnectError, NodeTunnel, OpenError, Pool, SshSettings};
use support::{Cluster, ECHO_PORT, HTTP_PORT, keygen, run_ok};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn builder(c: &Cluster) -> kube_ssh_tunnel::ssh::settings::SshSettingsBuilder {
    SshSettings::builder(c.user.clone()).connect_timeout(Duration::from_secs(5))
}

async fn healthz(t: &NodeTunnel, addr: &str) -> String {
    let mut s = t.open(addr, HTTP_PORT).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Signs the node's host key with `ca` (ssh-keygen -s) and makes sshd present it.
fn host_cert(node: &support::TestNode, ca: &Path, principals: &str, validity: &str, host: bool) {
    let key_pub = node.dir.join("ssh_host_ed25519_key.pub");
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "node-host-cert", "-n", principals, "-V", validity]);
    if host {
        c.arg("-h");
    }
    run_ok(c.arg(&key_pub));
    let cert = node.dir.join("ssh_host_ed25519_key-cert.pub");
    let cfg = std::fs::read_to_string(node.dir.join("sshd_config")).unwrap();
    if !cfg.contains("HostCertificate") {
        node.add_sshd_config(&format!("HostCertificate {}", cert.display()));
    }
    node.restart_sshd();
}

fn ca_known_hosts(dir: &Path, ca_pub: &Path, name: &str) -> PathBuf {
    let kh = dir.join(name);
    let ca = std::fs::read_to_string(ca_pub).unwrap();
    std::fs::write(&kh, format!("@cert-authority * {ca}")).unwrap();
    kh
}

/// A host CA made in the cluster's directory `name`: (that directory, the CA's key, a
/// known_hosts file trusting the CA for every host).
fn host_ca(cluster: &Cluster, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = cluster.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("host_ca");
    keygen(&ca, "ed25519", None);
    let kh = ca_known_hosts(&dir, &ca.with_extension("pub"), "kh_ca");
    (dir, ca, kh)
}

fn cert_error(e: ConnectError) -> String {
    match e {
        ConnectError::HostCertificateRejected { reason, .. } => reason,
        other => panic!("expected HostCertificateRejected, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_certificates_are_verified_ca_principal_validity_and_type() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let (dir, ca, kh) = host_ca(&cluster, "hostca");
    let settings = |kh: &Path| {
        Arc::new(
            builder(&cluster)
                .key_file(&cluster.keys.ed25519, None)
                .unwrap()
                .known_hosts_file(kh)
                .unwrap()
                .build(),
        )
    };

    host_cert(node, &ca, &format!("node-1,{}", node.addr), "-5m:+1h", true);
    let t = NodeTunnel::connect(&node.node(), settings(&kh))
        .await
        .expect("a valid host certificate is trusted");
    assert!(t.host_key().contains("node-host-cert"), "{}", t.host_key());
    assert_eq!(t.host_key_trust(), HostKeyTrust::HostCertificate);
    assert!(healthz(&t, &node.addr.to_string()).await.ends_with("ok"));
    t.disconnect().await;

    // A CA nobody trusts.
    let other = dir.join("other_ca");
    keygen(&other, "ed25519", None);
    let kh_other = ca_known_hosts(&dir, &other.with_extension("pub"), "kh_other");
    let e = cert_error(
        NodeTunnel::connect(&node.node(), settings(&kh_other))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("no @cert-authority line trusts"), "{e}");

    // Wrong principal.
    host_cert(node, &ca, "some-other-node,10.9.9.9", "-5m:+1h", true);
    let e = cert_error(
        NodeTunnel::connect(&node.node(), settings(&kh))
            .await
            .unwrap_err(),
    );
    assert!(
        e.contains("principals") && e.contains("some-other-node"),
        "{e}"
    );

    // Expired.
    host_cert(
        node,
        &ca,
        &format!("node-1,{}", node.addr),
        "20200101:20200102",
        true,
    );
    let e = cert_error(
        NodeTunnel::connect(&node.node(), settings(&kh))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("expired"), "{e}");

    // The CA revoked.
    host_cert(node, &ca, &format!("node-1,{}", node.addr), "-5m:+1h", true);
    let mut text = std::fs::read_to_string(&kh).unwrap();
    text.push_str(&format!(
        "@revoked * {}",
        std::fs::read_to_string(ca.with_extension("pub")).unwrap()
    ));
    let kh_rev = dir.join("kh_rev");
    std::fs::write(&kh_rev, text).unwrap();
    let e = cert_error(
        NodeTunnel::connect(&node.node(), settings(&kh_rev))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("@revoked"), "{e}");

    // A user certificate is not a host certificate (sshd will not serve one as its host
    // certificate, so check the certificate ssh-keygen made directly).
    let user_pub = dir.join("user_key.pub");
    keygen(&dir.join("user_key"), "ed25519", None);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&ca)
            .args(["-I", "u", "-n", "node-1", "-V", "-5m:+1h"])
            .arg(&user_pub),
    );
    let cert = russh::keys::load_openssh_certificate(dir.join("user_key-cert.pub")).unwrap();
    let k = KnownHosts::load(std::slice::from_ref(&kh)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let e = k
        .check_certificate(&node.addr.to_string(), 22, &["node-1"], &cert, now)
        .unwrap_err();
    assert!(
        e.contains("user certificate, not a host certificate"),
        "{e}"
    );
}

#[test]
fn known_hosts_patterns_match_like_ssh_keygen_and_revoked_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let patterns = [
        "node-?.example.com",
        "*.example.com,!bad.example.com",
        "[10.0.0.?]:2222",
        "10.0.*",
        "!10.0.0.5,10.0.0.*",
        "Node-A,node-b",
    ];
    for (i, p) in patterns.iter().enumerate() {
        let k = dir.path().join(format!("k{i}"));
        keygen(&k, "ed25519", None);
        let public: Vec<String> = std::fs::read_to_string(k.with_extension("pub"))
            .unwrap()
            .split_whitespace()
            .take(2)
            .map(String::from)
            .collect();
        text.push_str(&format!("{p} {}\n", public.join(" ")));
    }
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, &text).unwrap();
    let ours = KnownHosts::load(std::slice::from_ref(&kh)).unwrap();
    let hosts = [
        "node-1.example.com",
        "node-12.example.com",
        "bad.example.com",
        "x.example.com",
        "10.0.0.5",
        "10.0.0.6",
        "[10.0.0.7]:2222",
        "[10.0.0.77]:2222",
        "10.1.0.1",
        "node-a",
        "NODE-B",
        "example.com",
    ];
    for h in hosts {
        let out = support::run_bounded(
            Command::new("ssh-keygen")
                .arg("-F")
                .arg(h)
                .arg("-f")
                .arg(&kh),
            b"",
            support::TOOL_LIMIT,
        )
        .unwrap();
        let theirs: Vec<usize> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("# Host ")
                    .and_then(|r| r.rsplit("line ").next())
                    .and_then(|n| n.trim().parse().ok())
            })
            .collect();
        let lookup = h.to_string();
        assert_eq!(
            ours.lines_matching(&lookup),
            theirs,
            "host {h}: ours vs ssh-keygen -F"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_key_is_refused_even_when_listed() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let kh = cluster.path().join("kh_revoked");
    let key: Vec<String> = node
        .host_key_pub()
        .split_whitespace()
        .take(2)
        .map(String::from)
        .collect();
    std::fs::write(
        &kh,
        format!("{}@revoked * {}\n", node.known_hosts_line(), key.join(" ")),
    )
    .unwrap();
    let s = Arc::new(
        builder(&cluster)
            .key_file(&cluster.keys.ed25519, None)
            .unwrap()
            .known_hosts_file(&kh)
            .unwrap()
            .build(),
    );
    let e = NodeTunnel::connect(&node.node(), s).await.unwrap_err();
    assert!(
        matches!(e, ConnectError::HostKeyRevoked { line: 2, .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_learns_the_first_key_and_refuses_a_changed_one() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let empty = cluster.path().join("kh_empty");
    std::fs::write(&empty, "").unwrap();
    let learned = cluster.path().join("state/learned_known_hosts");
    let settings = || {
        Arc::new(
            builder(&cluster)
                .key_file(&cluster.keys.ed25519, None)
                .unwrap()
                .known_hosts_file(&empty)
                .unwrap()
                .host_key_policy(HostKeyPolicy::AcceptNew)
                .learned_hosts(&learned)
                .unwrap()
                .build(),
        )
    };
    let old_fp = support::fingerprint(&node.host_key_pub());
    let t = NodeTunnel::connect(&node.node(), settings())
        .await
        .expect("first use is trusted");
    assert_eq!(t.host_key_trust(), HostKeyTrust::Learned);
    t.disconnect().await;
    let text = std::fs::read_to_string(&learned).unwrap();
    assert!(
        text.starts_with(&node.addr.to_string()) && text.contains("ssh-ed25519"),
        "{text}"
    );
    // Known now (a fresh settings object reads the file).
    let t = NodeTunnel::connect(&node.node(), settings())
        .await
        .expect("the learned key is trusted");
    assert_eq!(t.host_key_trust(), HostKeyTrust::Learned);
    t.disconnect().await;

    node.regenerate_host_key();
    node.restart_sshd();
    let new_fp = support::fingerprint(&node.host_key_pub());
    let e = NodeTunnel::connect(&node.node(), settings())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ConnectError::HostKeyMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&old_fp) && msg.contains(&new_fp),
        "shows old and new fingerprints: {msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&learned).unwrap(),
        text,
        "a changed key is not learned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_never_learns_a_plain_key_for_a_host_a_cert_authority_covers() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let (dir, _ca, kh) = host_ca(&cluster, "downgrade");
    let learned = dir.join("learned");
    let s = Arc::new(
        builder(&cluster)
            .key_file(&cluster.keys.ed25519, None)
            .unwrap()
            .known_hosts_file(&kh)
            .unwrap()
            .host_key_policy(HostKeyPolicy::AcceptNew)
            .learned_hosts(&learned)
            .unwrap()
            .build(),
    );
    // The node's sshd presents a plain key, no certificate: a downgrade attempt.
    let e = NodeTunnel::connect(&node.node(), s).await.unwrap_err();
    let why = cert_error(e);
    assert!(why.contains("plain key"), "{why}");
    assert_eq!(
        std::fs::read_to_string(&learned).unwrap(),
        "",
        "nothing was learned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_certificate_agent_and_encrypted_key_authenticate() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let dir = cluster.path().join("userauth");
    std::fs::create_dir_all(&dir).unwrap();

    // A user certificate, trusted by sshd through TrustedUserCAKeys (authorized_keys empty).
    let uca = dir.join("user_ca");
    keygen(&uca, "ed25519", None);
    let key = dir.join("id_cert");
    keygen(&key, "ed25519", None);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&uca)
            .args([
                "-I",
                "kube-ssh-tunnel",
                "-n",
                &cluster.user,
                "-V",
                "-5m:+1h",
            ])
            .arg(key.with_extension("pub")),
    );
    node.add_sshd_config(&format!(
        "TrustedUserCAKeys {}",
        uca.with_extension("pub").display()
    ));
    node.set_authorized_keys("");
    node.restart_sshd();
    let s = Arc::new(cluster.settings_with_key(&key));
    let t = NodeTunnel::connect(&node.node(), s)
        .await
        .expect("KEY-cert.pub is picked up and accepted");
    assert!(
        t.client_key().contains("(certificate 'kube-ssh-tunnel"),
        "{}",
        t.client_key()
    );
    assert_eq!(t.host_key_trust(), HostKeyTrust::KnownHostsLine);
    assert!(healthz(&t, &node.addr.to_string()).await.ends_with("ok"));
    t.disconnect().await;
    assert!(
        node.sshd_log().contains("Accepted publickey")
            && node.sshd_log().contains("ID kube-ssh-tunnel"),
        "sshd saw the certificate"
    );
    // The same key without its certificate is not authorized.
    let bare = dir.join("id_bare");
    std::fs::copy(&key, &bare).unwrap();
    let s = Arc::new(cluster.settings_with_key(&bare));
    assert!(matches!(
        NodeTunnel::connect(&node.node(), s).await,
        Err(ConnectError::AuthRejected { .. })
    ));

    // ssh-agent: no key file at all.
    node.set_authorized_keys(&node.authorize(&cluster.public_keys));
    let agent = support::Agent::start(&dir);
    agent.add(&cluster.keys.ecdsa);
    let s = Arc::new(
        builder(&cluster)
            .agent(&agent.socket)
            .known_hosts_file(&cluster.known_hosts)
            .unwrap()
            .build(),
    );
    let t = NodeTunnel::connect(&node.node(), s)
        .await
        .expect("the agent's key authenticates");
    let ecdsa_pub = std::fs::read_to_string(cluster.keys.ecdsa.with_extension("pub")).unwrap();
    assert!(
        t.client_key().contains(&support::fingerprint(&ecdsa_pub))
            && t.client_key().ends_with("(agent)"),
        "{}",
        t.client_key()
    );
    assert!(healthz(&t, &node.addr.to_string()).await.ends_with("ok"));
    t.disconnect().await;

    // An encrypted key with its passphrase in a file.
    let enc = dir.join("id_enc");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "correct horse", "-f"])
            .arg(&enc),
    );
    let mut ak = cluster.public_keys.clone();
    ak.push_str(&std::fs::read_to_string(enc.with_extension("pub")).unwrap());
    node.set_authorized_keys(&node.authorize(&ak));
    let pass = dir.join("passphrase");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let s = Arc::new(
        builder(&cluster)
            .key_file(&enc, Some(&pass))
            .unwrap()
            .known_hosts_file(&cluster.known_hosts)
            .unwrap()
            .build(),
    );
    NodeTunnel::connect(&node.node(), s)
        .await
        .expect("decrypted with the passphrase file")
        .disconnect()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_keygen_prints_serves_kubelet_traffic_and_nothing_else() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let out_key = cluster.path().join("kg/id_ed25519");
    let o = support::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_kube-ssh-tunnel")).args([
            "keygen",
            "--out",
            out_key.to_str().unwrap(),
            "--node",
            &node.spec(),
        ]),
        b"",
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("restrict,port-forwarding,command="))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&format!("permitopen=\"{}:10250\"", node.addr)),
        "{line}"
    );
    node.set_authorized_keys(&format!("{line}\n"));
    let s = Arc::new(cluster.settings_with_key(&out_key));
    let t = NodeTunnel::connect(&node.node(), s)
        .await
        .expect("keygen's key is accepted with keygen's line");
    assert!(healthz(&t, &node.addr.to_string()).await.ends_with("ok"));
    // The echo port is allowed by the node's sshd_config but not by the key's permitopen.
    let e = t.open(&node.addr.to_string(), ECHO_PORT).await.unwrap_err();
    assert!(matches!(e, OpenError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("administratively prohibited"), "{e}");
    // The key runs no command: `ssh node id` gets the refusing forced command instead.
    let mut ssh = Command::new("ssh");
    ssh.args(["-F", "/dev/null", "-T", "-o", "BatchMode=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            cluster.known_hosts.display()
        ))
        .arg("-i")
        .arg(&out_key)
        .args(["-p", &node.ssh_port.to_string()])
        .arg(format!("{}@{}", cluster.user, node.addr))
        .arg("id");
    let o = support::run_bounded(&mut ssh, b"", Duration::from_secs(30)).unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!out.contains("uid="), "ssh ran a command: {out}");
    assert!(!o.status.success(), "ssh node id must fail: {out}{err}");
    assert!(err.contains("port forwarding only"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_replaced_on_disk_is_used_by_the_next_reconnect() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let key = cluster.path().join("rotating_key");
    std::fs::copy(&cluster.keys.ed25519, &key).unwrap();
    let settings = cluster.settings_with_key(&key);
    let mut cfg = PoolConfig::new(settings);
    cfg.health.probe = Probe::None;
    let pool = Pool::with_config(cfg, cluster.node_list()).unwrap();
    let mut rx = pool.subscribe("node-1").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.state == TunnelState::Ready),
    )
    .await
    .unwrap()
    .unwrap();

    // Rotate: the file now holds the ECDSA key, and only that key is authorized.
    let tmp = cluster.path().join("rotating_key.new");
    std::fs::copy(&cluster.keys.ecdsa, &tmp).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    node.set_authorized_keys(
        &node
            .authorize(&std::fs::read_to_string(cluster.keys.ecdsa.with_extension("pub")).unwrap()),
    );
    assert!(pool.reconnect("node-1"));
    let ok = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.state == TunnelState::Ready && s.reconnects == 1),
    )
    .await;
    assert!(
        ok.is_ok(),
        "reconnected with the new key: {:?}",
        pool.status("node-1")
    );
    assert!(
        node.sshd_log().contains("ECDSA"),
        "sshd saw the new key type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_host_key_is_shown_as_insecure_and_a_listed_one_as_a_known_hosts_line() {
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let empty = cluster.path().join("kh_empty");
    std::fs::write(&empty, "").unwrap();
    let settings = |kh: &Path| {
        Arc::new(
            builder(&cluster)
                .key_file(&cluster.keys.ed25519, None)
                .unwrap()
                .known_hosts_file(kh)
                .unwrap()
                .host_key_policy(HostKeyPolicy::InsecureSkip)
                .build(),
        )
    };
    let t = NodeTunnel::connect(&node.node(), settings(&empty))
        .await
        .expect("not verified, but accepted");
    assert_eq!(t.host_key_trust(), HostKeyTrust::Insecure);
    let ed_pub = std::fs::read_to_string(cluster.keys.ed25519.with_extension("pub")).unwrap();
    assert_eq!(
        t.client_key(),
        format!("ssh-ed25519 {}", support::fingerprint(&ed_pub))
    );
    t.disconnect().await;
    // Listed in known_hosts: the line trusts it, also under the insecure policy.
    let t = NodeTunnel::connect(&node.node(), settings(&cluster.known_hosts))
        .await
        .expect("listed");
    assert_eq!(t.host_key_trust(), HostKeyTrust::KnownHostsLine);
    t.disconnect().await;
}
