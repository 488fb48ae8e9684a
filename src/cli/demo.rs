//! `demo`: the embedded default. Starts in-process SSH nodes (each on its own loopback
//! address, with a generated host key written to a known_hosts the demo trusts), then runs
//! the real daemon — pool, CONNECT front, admin API — against them, sends one request of each
//! kind through the front, prints the status table and the commands to try, and stays up
//! until Ctrl-C (exit 0). Everything lives in a private temporary directory removed at exit.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::table::{Format, render};
use clap::Args;
use kube_ssh_tunnel::admin::client::{Endpoint, request};
use kube_ssh_tunnel::admin::document::StatusDocument;
use kube_ssh_tunnel::daemon::TlsListener;
use kube_ssh_tunnel::demo::pki::Ca;
use kube_ssh_tunnel::demo::{DemoNode, NodeSpec};
use kube_ssh_tunnel::nodes::{AddressTypes, NodeSource};
use kube_ssh_tunnel::pool::PoolConfig;
use kube_ssh_tunnel::{Daemon, DaemonConfig, SshSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::CliError;
use super::keygen::write_key_pair;
use super::run::{serve_until, shutdown_signal};

/// The most nodes `demo --nodes` starts (one loopback address and /24 pod CIDR each).
const MAX_NODES: u16 = 200;
const SERVICE_CIDR: &str = "10.96.0.0/12";
const SERVICE_IP: &str = "10.96.0.10";
const KUBELET_PORT: u16 = 10250;
/// How long the demo waits for every node to be ready before it reports failure.
const READY_WITHIN: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the daemon checks the demo's node file (`run`'s default).
const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How many in-process SSH nodes to start (1–200).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,

    /// Log level of the daemon (error, warn, info, debug; or a tracing filter).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
}

/// The demo's directory; removed when dropped.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failure(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::failure(format!("demo: {what}: {e}"))
}

pub async fn demo(args: DemoArgs) -> Result<i32, CliError> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        return Err(CliError::usage(format!(
            "--nodes must be between 1 and {MAX_NODES} (got {})",
            args.nodes
        )));
    }
    // Ctrl-C (or SIGTERM) while the nodes start must still stop cleanly (and remove the
    // directory, which holds the client's private key).
    let stop_signal = shutdown_signal()?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| failure("cannot listen for SIGHUP", e))?;
    let dir =
        Workdir(std::env::temp_dir().join(format!("kube-ssh-tunnel-demo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir.0)
        .map_err(|e| failure(&format!("cannot create {}", dir.0.display()), e))?;
    let d = dir.0.clone();

    // The client's key, and one node per loopback address, each with its own host key.
    let key_path = d.join("id_ed25519");
    let client = kube_ssh_tunnel::ssh::keys::generate_ed25519("kube-ssh-tunnel demo")
        .map_err(|e| failure("cannot make the client key", e))?;
    write_key_pair(&key_path, &d.join("id_ed25519.pub"), &client)?;
    let service_cidr = SERVICE_CIDR.parse().expect("a valid CIDR");
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 77, 0, i as u8));
        let spec = NodeSpec {
            name: format!("node-{i}"),
            ip,
            kubelet_port: KUBELET_PORT,
            pod_cidr: format!("10.244.{i}.0/24").parse().expect("a valid CIDR"),
            service_cidr,
        };
        let node = DemoNode::start(spec, 0, client.public_key().clone())
            .await
            .map_err(|e| failure(&format!("cannot start an SSH node on {ip}"), e))?;
        nodes.push(node);
    }
    let mut known_hosts = String::new();
    let mut node_list = String::new();
    for n in &nodes {
        let line = n
            .known_hosts_line()
            .map_err(|e| failure("cannot encode a host key", e))?;
        let _ = writeln!(known_hosts, "{line}");
        let _ = writeln!(node_list, "{}", n.node_file_entry());
    }
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text)
            .map_err(|e| failure(&format!("cannot write {}", p.display()), e))?;
        Ok::<PathBuf, CliError>(p)
    };
    let known_hosts = write("known_hosts", &known_hosts)?;
    let nodes_file = write("nodes.toml", &node_list)?;
    let proxy = d.join("proxy.sock");
    let admin = d.join("admin.sock");
    // The mutual-TLS CONNECT listener too, with a throwaway CA, so `curl -p -x` can be tried.
    let ca = Ca::new("kube-ssh-tunnel demo CA").map_err(|e| failure("cannot make a CA", e))?;
    let ca_file = d.join("ca.crt");
    ca.write(&ca_file)
        .map_err(|e| failure("cannot write the CA", e))?;
    let (server_crt, server_key) = ca
        .issue(
            &d,
            "proxy",
            &["127.0.0.1".into(), "localhost".into()],
            false,
        )
        .map_err(|e| failure("cannot issue the listener's certificate", e))?;
    ca.issue(&d, "client", &[], true)
        .map_err(|e| failure("cannot issue the client certificate", e))?;
    let tls_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| failure("no free loopback port for the TLS listener", e))?;
    let tls_listen = tls_addr.to_string();

    let settings = SshSettings::builder("demo")
        .key_file(&key_path, None)?
        .known_hosts_file(&known_hosts)?
        .build();
    let mut pool = PoolConfig::new(settings);
    pool.service_cidrs = vec![service_cidr];
    let mut cfg = DaemonConfig::new(
        pool,
        NodeSource::File {
            path: nodes_file.clone(),
            extra: Vec::new(),
            address_types: AddressTypes::default(),
            interval: RELOAD_INTERVAL,
        },
        proxy.clone(),
        admin.clone(),
    );
    cfg.policy.service_cidrs = vec![service_cidr];
    cfg.listeners.tls = Some(TlsListener {
        address: tls_addr,
        cert: server_crt,
        key: server_key,
        client_ca: ca_file,
    });
    super::logging::init(Some(&args.log_level));
    // The demo runs the deprecated mode too (as `run --ssh-tunnel` would say).
    tracing::warn!("{}", super::gate::DEPRECATION_WARNING);

    println!(
        "kube-ssh-tunnel demo: {} in-process SSH nodes on 127.77.0.1–{}, each with its own host key (trusted through {})",
        nodes.len(),
        nodes.len(),
        known_hosts.display()
    );
    for n in &nodes {
        println!(
            "  {:<8} ssh {}  kubelet {}:{}  pod CIDR {}",
            n.spec.name, n.addr, n.spec.ip, KUBELET_PORT, n.spec.pod_cidr
        );
    }
    println!(
        "starting the daemon: CONNECT on {} and https://{tls_listen} (mutual TLS), admin API on {}",
        proxy.display(),
        admin.display()
    );

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let (admin, proxy, names) = (
            admin.clone(),
            proxy.clone(),
            nodes
                .iter()
                .map(|n| n.spec.name.clone())
                .collect::<Vec<_>>(),
        );
        tokio::spawn(async move {
            let ok = drive(&admin, &proxy, &tls_listen, &names).await;
            if !ok {
                let _ = failed_tx.send(());
            }
            ok
        })
    };
    let until = async move {
        // A failure stops the demo early; success keeps it up until Ctrl-C (also one pressed
        // while the nodes were starting).
        let failed = async {
            if failed_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = failed => {}
            _ = stop_signal => {}
        }
    };
    let result = match Daemon::start(cfg).await {
        Ok(daemon) => {
            serve_until(daemon, until, &mut hup).await;
            Ok(())
        }
        Err(e) => Err(CliError::usage(format!("demo: {e}"))),
    };
    // The driver reports failure by stopping the daemon early; Ctrl-C before it finished is
    // a plain stop.
    let failed = if driver.is_finished() {
        !driver.await.unwrap_or(false)
    } else {
        driver.abort();
        false
    };
    drop(nodes);
    result?;
    Ok(if failed { 1 } else { 0 })
}

/// Waits for the daemon, sends the requests, prints the table and what to try. False when
/// something did not work (the demo then stops with exit 1).
async fn drive(admin: &Path, proxy: &Path, tls_listen: &str, nodes: &[String]) -> bool {
    let ep = Endpoint::Unix(admin.to_path_buf());
    let started = Instant::now();
    let ready = loop {
        if let Ok((200, _)) = request(&ep, "GET", "/readyz", REQUEST_TIMEOUT).await
            && let Some(doc) = status(&ep).await
            && doc.ready == doc.desired
        {
            break true;
        }
        if started.elapsed() > READY_WITHIN {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !ready {
        println!("demo: FAILED — not every node was ready within {READY_WITHIN:?}");
        if let Some(doc) = status(&ep).await {
            print!("{}", render(&doc, Format::Table, false));
        }
        return false;
    }
    println!(
        "all {} nodes ready after {} ms; one request of each kind through the CONNECT front ({}):",
        nodes.len(),
        started.elapsed().as_millis(),
        proxy.display()
    );
    let first = "127.77.0.1".to_string();
    let second = format!("127.77.0.{}", nodes.len().min(2));
    let last = nodes.len();
    let requests = [
        (
            "kubelet",
            format!("{first}:{KUBELET_PORT}"),
            "/healthz".to_string(),
        ),
        (
            "kubelet",
            format!("{second}:{KUBELET_PORT}"),
            "/containerLogs/default/web-0/web".to_string(),
        ),
        (
            "node proxy",
            format!("{}:{KUBELET_PORT}", nodes[last - 1]),
            "/stats/summary".to_string(),
        ),
        ("pod", format!("10.244.{last}.15:8080"), "/".to_string()),
        ("service", format!("{SERVICE_IP}:80"), "/".to_string()),
    ];
    let mut ok = 0;
    for (kind, target, path) in &requests {
        match tokio::time::timeout(REQUEST_TIMEOUT, get(proxy, target, path)).await {
            Ok(Ok((200, node, body))) => {
                ok += 1;
                println!(
                    "  ok  {kind:<10} CONNECT {target:<22} GET {path:<34} -> 200 via {node}: {}",
                    body.trim()
                );
            }
            Ok(Ok((status, _, body))) => {
                println!(
                    "  FAIL {kind:<9} CONNECT {target:<22} GET {path} -> {status}: {}",
                    body.trim()
                )
            }
            Ok(Err(e)) => println!("  FAIL {kind:<9} CONNECT {target:<22} GET {path}: {e}"),
            Err(_) => println!(
                "  FAIL {kind:<9} CONNECT {target:<22} GET {path}: no answer in {REQUEST_TIMEOUT:?}"
            ),
        }
    }
    if ok != requests.len() {
        println!(
            "demo: FAILED — {} of {} requests failed",
            requests.len() - ok,
            requests.len()
        );
        return false;
    }
    println!("demo: all {ok} requests succeeded");
    println!();
    match status(&ep).await {
        Some(doc) => print!("{}", render(&doc, Format::Table, false)),
        None => {
            println!("demo: FAILED — the admin API did not answer /status");
            return false;
        }
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| "kube-ssh-tunnel".into());
    let dir = admin.parent().unwrap_or(Path::new("."));
    println!();
    println!("Try from another terminal (the demo runs until Ctrl-C):");
    println!("  {exe} status --admin-uds {}", admin.display());
    let tls = format!(
        "--proxy-cacert {d}/ca.crt --proxy-cert {d}/client.crt --proxy-key {d}/client.key",
        d = dir.display()
    );
    println!("  curl -p -x https://{tls_listen} {tls} http://127.77.0.1:{KUBELET_PORT}/healthz");
    println!("  curl -p -x https://{tls_listen} {tls} http://10.244.1.7:8080/");
    println!("  curl -p -x https://{tls_listen} {tls} http://{SERVICE_IP}/");
    println!(
        "  printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | {exe} dial --ssh-tunnel --ssh-user demo --ssh-keyfile {d}/id_ed25519 --ssh-known-hosts {d}/known_hosts --nodes {d}/nodes.toml node-1",
        d = dir.display()
    );
    println!("  {exe} reconnect --admin-uds {} node-1", admin.display());
    true
}

async fn status(ep: &Endpoint) -> Option<StatusDocument> {
    match request(ep, "GET", "/status", REQUEST_TIMEOUT).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// CONNECT `target` through the front, then `GET path`; returns (status, X-Served-By, body).
async fn get(proxy: &Path, target: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut s = tokio::net::UnixStream::connect(proxy).await?;
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || s.read_u8().await.map(|b| head.push(b)).is_err() {
            return Err(bad(format!(
                "the front closed: {}",
                String::from_utf8_lossy(&head).trim()
            )));
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    if !line.starts_with("HTTP/1.1 200") {
        return Err(bad(format!("the front answered {line}")));
    }
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    (&mut s).take(1 << 20).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("not an HTTP response".into()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("not an HTTP response".into()))?;
    let node = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Served-By: "))
        .unwrap_or("?")
        .to_string();
    Ok((status, node, body.to_string()))
}
