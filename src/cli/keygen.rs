//! `keygen`: makes the tunnel's ed25519 key pair and prints what a node needs to accept it —
//! the restricted authorized_keys line (port forwarding only, only to the allowed
//! destinations) and an sshd_config snippet.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use clap::Args;
use kube_ssh_tunnel::Node;
use kube_ssh_tunnel::ssh::authorized::authorized_options;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

use super::CliError;
use super::output::outln;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the private key (the public key goes to OUT.pub).
    #[arg(long, default_value = "keys/id_ed25519")]
    pub out: PathBuf,

    /// Overwrite an existing key.
    #[arg(long)]
    pub force: bool,

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

    /// Ports on the node's loopback the tunnel may open (as `run --loopback-port`).
    #[arg(long, value_delimiter = ',')]
    pub loopback_port: Vec<u16>,
}

fn io_err(path: &std::path::Path, e: std::io::Error) -> CliError {
    CliError::failure(format!("cannot write {}: {e}", path.display()))
}

pub fn keygen(a: KeygenArgs) -> Result<(), CliError> {
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
    outln!();
    outln!(
        "# sshd_config on each node (e.g. /etc/ssh/sshd_config.d/kube-ssh-tunnel.conf); USER = --ssh-user"
    );
    outln!("Match User USER");
    outln!("    AllowTcpForwarding local");
    let permit: Vec<String> = a
        .node_port
        .iter()
        .map(|p| format!("NODE_IP:{p}"))
        .chain(a.loopback_port.iter().map(|p| format!("127.0.0.1:{p}")))
        .collect();
    outln!("    PermitOpen {}", permit.join(" "));
    outln!("    AllowAgentForwarding no");
    outln!("    X11Forwarding no");
    outln!("    PermitTTY no");
    outln!("    ForceCommand /usr/sbin/nologin");
    outln!("# Do not set DisableForwarding for this user: it would also disable the tunnel's");
    outln!("# direct-tcpip channels. Pod and service IPs need further PermitOpen entries.");
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
