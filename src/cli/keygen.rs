//! `keygen`: makes the tunnel's ed25519 key pair and prints what a node needs to accept it —
//! the restricted authorized_keys line (port forwarding only, only to the allowed
//! destinations) and an sshd_config snippet. Two egress profiles: `kubelet` fences the key
//! with `permitopen`; `cluster` (pods and services too) cannot, since `permitopen` takes no
//! CIDR, so it prints an nftables rule set per node instead (`nft.rs`). With `--reverse` it
//! makes the reverse listener's host key instead and prints the known_hosts line nodes need
//! (`node_setup::reverse_host_key`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use kube_ssh_tunnel::Node;
use kube_ssh_tunnel::ssh::authorized::{authorized_options, forwarding_only_options};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

use super::CliError;
use super::nft;
use super::output::outln;

/// What the key may carry through a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// The node's kubelet (--node-port) and its --loopback-port ports: logs, exec, attach,
    /// port-forward. Fenced by the key's permitopen.
    Kubelet,
    /// Also the node's pod CIDRs and the service CIDRs: webhooks, aggregated APIs, proxy to
    /// pods and services. No permitopen; fenced by the printed nftables rules.
    Cluster,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the private key (the public key goes to OUT.pub).
    #[arg(long, default_value = "keys/id_ed25519")]
    pub out: PathBuf,

    /// Overwrite an existing key.
    #[arg(long)]
    pub force: bool,

    /// Make the reverse listener's host key (run --reverse-host-key) instead, and print the
    /// known_hosts line nodes need (docs/reverse.md).
    #[arg(long, conflicts_with_all = ["nodes", "nodes_file", "ssh_user", "service_cidr", "pod_cidr", "loopback_port"])]
    pub reverse: bool,

    /// With --reverse: the listener's address as nodes dial it, HOST:PORT, for the known_hosts
    /// line (a placeholder without it).
    #[arg(long, value_name = "HOST:PORT", requires = "reverse")]
    pub listen: Option<String>,

    /// Comment stored with the key.
    #[arg(long, default_value = "kube-ssh-tunnel")]
    pub comment: String,

    /// Nodes (NAME=ADDR[:PORT], repeatable) to print a restricted authorized_keys line for.
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,

    /// TOML node list, as for `run`.
    #[arg(long = "nodes")]
    pub nodes_file: Option<PathBuf>,

    /// Ports the tunnel may open on a node's address (as `run --node-port`).
    #[arg(long, value_delimiter = ',', default_value = "10250")]
    pub node_port: Vec<u16>,

    /// Ports on the node's loopback the tunnel may open (as `run --loopback-port`), e.g. 10248
    /// for a health probe of the kubelet's local /healthz.
    #[arg(long, value_delimiter = ',')]
    pub loopback_port: Vec<u16>,

    /// Egress profile: kubelet (the kubelet and loopback ports, by permitopen) or cluster (also
    /// the node's pod CIDRs and the service CIDRs, by printed nftables rules).
    #[arg(long, value_enum, default_value = "kubelet", value_name = "PROFILE")]
    pub allow: Profile,

    /// The tunnel's SSH user on the nodes (as `run --ssh-user`); named in the sshd_config
    /// snippet and in the nftables rules (required with --allow cluster).
    #[arg(long)]
    pub ssh_user: Option<String>,

    /// Service CIDR(s) the tunnel may reach (as `run --service-cidr`); --allow cluster only,
    /// required there.
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<IpNet>,

    /// A node's pod CIDR, NODE=CIDR (repeatable), added to the pod_cidrs --nodes FILE gives it;
    /// --allow cluster only.
    #[arg(long, value_delimiter = ',', value_parser = parse_pod_cidr, value_name = "NODE=CIDR")]
    pub pod_cidr: Vec<(String, IpNet)>,
}

/// `NODE=CIDR` of `--pod-cidr`.
fn parse_pod_cidr(s: &str) -> Result<(String, IpNet), String> {
    let (node, cidr) = s
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("expected NODE=CIDR, e.g. node-1=10.244.1.0/24, got {s:?}"))?;
    let cidr: IpNet = cidr.parse().map_err(|_| {
        format!("{cidr:?} is not a CIDR; write NODE=ADDRESS/PREFIX, e.g. node-1=10.244.1.0/24")
    })?;
    Ok((node.to_string(), cidr))
}

fn io_err(path: &std::path::Path, e: std::io::Error) -> CliError {
    CliError::failure(format!("cannot write {}: {e}", path.display()))
}

pub fn keygen(a: KeygenArgs) -> Result<(), CliError> {
    if a.reverse {
        return super::node_setup::reverse_host_key(
            &a.out,
            a.force,
            &a.comment,
            a.listen.as_deref(),
        );
    }
    let mut nodes: Vec<Node> = Vec::new();
    for spec in &a.nodes {
        nodes.push(Node::parse_spec(spec)?);
    }
    if let Some(f) = &a.nodes_file {
        nodes.extend(kube_ssh_tunnel::nodes::load_file(
            f,
            &kube_ssh_tunnel::nodes::AddressTypes::default(),
        )?);
    }
    if a.node_port.contains(&0) || a.loopback_port.contains(&0) {
        return Err(CliError::usage("ports must be between 1 and 65535"));
    }
    if let Some(u) = &a.ssh_user {
        nft::check_user(u).map_err(CliError::usage)?;
    }
    for (name, cidr) in &a.pod_cidr {
        nft::check_cidr("--pod-cidr", cidr).map_err(CliError::usage)?;
        let node = nodes.iter_mut().find(|n| &n.name == name).ok_or_else(|| {
            CliError::usage(format!(
                "--pod-cidr {name}={cidr} names no node; give the node with --node {name}=ADDR or in --nodes FILE"
            ))
        })?;
        node.pod_cidrs.push(*cidr);
    }
    for cidr in &a.service_cidr {
        nft::check_cidr("--service-cidr", cidr).map_err(CliError::usage)?;
    }
    // The node addresses the nftables rules name (cluster only).
    let mut addresses = Vec::new();
    match a.allow {
        Profile::Kubelet => {
            if !a.service_cidr.is_empty() || !a.pod_cidr.is_empty() {
                return Err(CliError::usage(
                    "--service-cidr and --pod-cidr are for --allow cluster; the kubelet profile reaches only the kubelet and --loopback-port ports",
                ));
            }
        }
        Profile::Cluster => {
            if a.ssh_user.is_none() {
                return Err(CliError::usage(
                    "--allow cluster prints nftables rules that name the tunnel's SSH user: pass --ssh-user USER (as for run)",
                ));
            }
            if a.service_cidr.is_empty() {
                return Err(CliError::usage(
                    "--allow cluster needs the service CIDR: pass --service-cidr CIDR (as for run), e.g. 10.96.0.0/12",
                ));
            }
            if nodes.is_empty() {
                return Err(CliError::usage(
                    "--allow cluster prints nftables rules for each node: pass --node NAME=ADDR with --pod-cidr NAME=CIDR, or --nodes FILE",
                ));
            }
            for n in &nodes {
                for cidr in &n.pod_cidrs {
                    nft::check_cidr(&format!("pod CIDR of {}", n.name), cidr)
                        .map_err(CliError::usage)?;
                }
                let ip: std::net::IpAddr = n.address.parse().map_err(|_| {
                    CliError::usage(format!(
                        "node {} has the address {:?}, not an IP; nftables rules need the node's IP (--node {}=IP)",
                        n.name, n.address, n.name
                    ))
                })?;
                addresses.push(ip);
            }
            // A pod or service CIDR holding a node's address would open all of that node's
            // ports, not just --node-port.
            for n in &nodes {
                for cidr in &n.pod_cidrs {
                    nft::check_cidr_excludes_nodes(
                        &format!("pod CIDR of {}", n.name),
                        cidr,
                        &addresses,
                    )
                    .map_err(CliError::usage)?;
                }
            }
            for cidr in &a.service_cidr {
                nft::check_cidr_excludes_nodes("--service-cidr", cidr, &addresses)
                    .map_err(CliError::usage)?;
            }
        }
    }
    let user = a.ssh_user.as_deref().unwrap_or("USER");
    let public_path = {
        let mut p = a.out.clone().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    };
    if !a.force && (a.out.exists() || public_path.exists()) {
        return Err(CliError::usage(format!(
            "{} already exists; refusing to overwrite a key (pass --force to replace it)",
            a.out.display()
        )));
    }
    let key = kube_ssh_tunnel::ssh::keys::generate_ed25519(&a.comment)
        .map_err(|e| CliError::failure(format!("cannot make the key: {e}")))?;
    let public = write_key_pair(&a.out, &public_path, &key)?;

    outln!(
        "wrote {} (0600) and {} (0644): {} {}",
        a.out.display(),
        public_path.display(),
        key.algorithm(),
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    outln!();
    match a.allow {
        Profile::Kubelet => {
            outln!(
                "# authorized_keys of the tunnel's user on each node: port forwarding only, to these destinations;\n\
                 # the forced command refuses any shell or command (forwarding does not run it)"
            );
            if nodes.is_empty() {
                outln!(
                    "# (replace NODE_IP with the node's address, or pass --node NAME=ADDR to get one line per node)"
                );
                outln!(
                    "{} {public}",
                    authorized_options(None, &a.node_port, &a.loopback_port, &[])
                );
            }
            for n in &nodes {
                outln!("# {}", n.name);
                outln!(
                    "{} {public}",
                    authorized_options(Some(&n.address), &a.node_port, &a.loopback_port, &[])
                );
            }
        }
        Profile::Cluster => {
            outln!(
                "# authorized_keys of the tunnel's user on every node: port forwarding only, with no permitopen\n\
                 # (it cannot express a CIDR; the nftables rules below limit the destinations instead);\n\
                 # the forced command refuses any shell or command (forwarding does not run it)"
            );
            outln!("{} {public}", forwarding_only_options());
        }
    }
    outln!();
    outln!(
        "# sshd_config on each node (e.g. /etc/ssh/sshd_config.d/kube-ssh-tunnel.conf){}",
        if a.ssh_user.is_none() {
            "; USER = --ssh-user"
        } else {
            ""
        }
    );
    outln!("Match User {user}");
    outln!("    AllowTcpForwarding local");
    if a.allow == Profile::Kubelet {
        let permit: Vec<String> = a
            .node_port
            .iter()
            .map(|p| format!("NODE_IP:{p}"))
            .chain(a.loopback_port.iter().map(|p| format!("127.0.0.1:{p}")))
            .collect();
        outln!("    PermitOpen {}", permit.join(" "));
    }
    outln!("    AllowStreamLocalForwarding no");
    outln!("    PermitTunnel no");
    outln!("    AllowAgentForwarding no");
    outln!("    X11Forwarding no");
    outln!("    PermitTTY no");
    outln!("    ForceCommand /usr/sbin/nologin");
    outln!("# Do not set DisableForwarding for this user: it would also disable the tunnel's");
    outln!("# direct-tcpip channels.");
    match a.allow {
        Profile::Kubelet => {
            outln!(
                "# Pods and services: use --allow cluster (permitopen cannot express a CIDR, and"
            );
            outln!("# sshd applies the key's permitopen whatever PermitOpen in sshd_config says).");
        }
        Profile::Cluster => {
            outln!(
                "# No PermitOpen: it cannot express a CIDR either. The nftables rules are the fence."
            );
        }
    }
    for (n, address) in nodes.iter().zip(addresses) {
        outln!();
        outln!(
            "# nftables on {}: save as /etc/kube-ssh-tunnel/egress.nft, load it with\n\
             # `nft -f /etc/kube-ssh-tunnel/egress.nft`, and at boot with a oneshot unit (docs/security.md),\n\
             # not from /etc/nftables.conf: its `flush ruleset` wipes kube-proxy's and the CNI's tables.\n\
             # {user} may open TCP connections only to these (the address dialled, before kube-proxy's\n\
             # DNAT); anything else is refused (TCP reset) or dropped. Other users are not affected.{}",
            n.name,
            if n.pod_cidrs.is_empty() {
                "\n# This node has no pod CIDR here (--pod-cidr NAME=CIDR): its pods are not reachable."
            } else {
                ""
            }
        );
        outln!(
            "{}",
            nft::ruleset(&nft::NodeRules {
                user,
                address,
                node_ports: &a.node_port,
                loopback_ports: &a.loopback_port,
                pod_cidrs: &n.pod_cidrs,
                service_cidrs: &a.service_cidr,
            })
            .trim_end()
        );
    }
    Ok(())
}

/// Writes `key` to `out` (0600, under a temporary name first, then renamed) and its public
/// half to `public_path` (0644); returns the public key line.
pub fn write_key_pair(
    out: &std::path::Path,
    public_path: &std::path::Path,
    key: &PrivateKey,
) -> Result<String, CliError> {
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| CliError::failure(format!("cannot encode the key: {e}")))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CliError::failure(format!("cannot encode the key: {e}")))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let tmp = out.with_extension("tmp-keygen");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(private.as_bytes())
        .map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
    std::fs::write(public_path, format!("{public}\n")).map_err(|e| io_err(public_path, e))?;
    std::fs::set_permissions(public_path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| io_err(public_path, e))?;
    Ok(public)
}
