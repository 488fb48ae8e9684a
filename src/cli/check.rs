//! `check`: loads the configuration, the key, known_hosts and the node list exactly as `run`
//! would, without connecting, and says what it found and every problem with its fix (exit 0
//! or 2). `check --connect` also tries each node once: authentication, host key, and a
//! channel to its kubelet port (exit 1 if a node fails).

use std::sync::Arc;

use clap::Args;
use kube_ssh_tunnel::NodeTunnel;
use kube_ssh_tunnel::ssh::HostKeyPolicy;

use super::CliError;
use super::args::SshArgs;
use super::output::{out, outln};
use super::settings::{nodes, ssh_settings};

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub ssh: SshArgs,

    /// Ports allowed on node addresses (probed by --connect: the first one).
    #[arg(
        long,
        env = "KUBE_SSH_TUNNEL_NODE_PORT",
        value_delimiter = ',',
        default_value = "10250"
    )]
    pub node_port: Vec<u16>,

    /// Also connect to each node once and report.
    #[arg(long)]
    pub connect: bool,
}

pub async fn check(a: CheckArgs) -> Result<i32, CliError> {
    super::logging::init(a.ssh.log_level.as_deref().or(Some("error")));
    let mut problems: Vec<String> = Vec::new();
    if !a.ssh.ssh_tunnel {
        problems.push("--ssh-tunnel is not set: `run` would refuse to start (deprecated mode must be enabled explicitly)".into());
    }
    let nodes = nodes(&a.ssh)?;
    let settings = ssh_settings(&a.ssh)?;
    outln!("nodes: {}", nodes.len());
    for n in &nodes {
        let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
        outln!(
            "  {} {}:{} pod_cidrs=[{}]",
            n.name,
            n.address,
            n.ssh_port,
            cidrs.join(",")
        );
    }
    if nodes.is_empty() {
        problems.push("no nodes: give --node NAME=ADDR[:PORT] or --nodes FILE".into());
    }
    match &settings.identity {
        Some(src) => {
            let id = src.current();
            out!(
                "key: {} {} ({})",
                id.algorithm,
                id.fingerprint,
                id.path.display()
            );
            if let Some(c) = &id.certificate {
                out!(
                    ", user certificate '{}' principals {:?}",
                    c.key_id(),
                    c.valid_principals()
                );
            }
            outln!();
        }
        None => outln!("key: none (ssh-agent only)"),
    }
    if let Some(agent) = &settings.agent {
        outln!("ssh-agent: {}", agent.display());
    }
    outln!(
        "known_hosts: {} entries from {}; host key policy: {}",
        settings.known_hosts.current().len(),
        settings.known_hosts.current().files_display(),
        match settings.host_key_policy {
            HostKeyPolicy::Strict => "strict",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::InsecureSkip => "INSECURE (host keys not verified)",
        }
    );
    if settings.host_key_policy == HostKeyPolicy::Strict {
        for n in &nodes {
            if !settings.known_hosts.current().has_entry_for(
                &n.address,
                n.ssh_port,
                &[n.name.as_str()],
            ) {
                problems.push(format!(
                    "node {} ({}): no known_hosts entry, so it would be refused; add its key after checking it out of band, e.g. `ssh-keyscan -p {} {} >> <known_hosts>`",
                    n.name, n.address, n.ssh_port, n.address
                ));
            }
        }
    }
    outln!("node ports allowed: {:?}", a.node_port);
    let mut failed = 0;
    if a.connect {
        let settings = Arc::new(settings);
        for n in &nodes {
            match NodeTunnel::connect(n, settings.clone()).await {
                Ok(t) => {
                    let port = a.node_port.first().copied().unwrap_or(10250);
                    let kubelet = match t.open(&n.address, port).await {
                        Ok(_) => format!("kubelet {}:{port} reachable", n.address),
                        Err(e) => {
                            failed += 1;
                            format!("kubelet {}:{port}: {e}", n.address)
                        }
                    };
                    outln!(
                        "connect {}: auth ok, host key ok ({}), {kubelet}",
                        n.name,
                        t.host_key()
                    );
                    t.disconnect().await;
                }
                Err(e) => {
                    failed += 1;
                    outln!("connect {}: FAILED: {e}", n.name);
                }
            }
        }
    }
    if problems.is_empty() {
        outln!("problems: none");
    } else {
        outln!("problems:");
        for p in &problems {
            outln!("  - {p}");
        }
        return Ok(2);
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
