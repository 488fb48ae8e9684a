//! Turns the shared flags into validated library settings and a node list. Every error here
//! is a configuration error (exit 2) that names the flag or file and how to fix it.

use std::path::PathBuf;

use kube_ssh_tunnel::ssh::HostKeyPolicy;
use kube_ssh_tunnel::{Node, SshSettings};

use super::gate;

use super::CliError;
use super::args::{HostKeyChoice, SshArgs};

/// Refuses to go on without `--ssh-tunnel`; logs the deprecation warning once when given.
pub fn check_gate(args: &SshArgs) -> Result<(), CliError> {
    if !args.ssh_tunnel {
        return Err(CliError::usage(gate::GATE_REFUSAL));
    }
    tracing::warn!("{}", gate::DEPRECATION_WARNING);
    Ok(())
}

/// The nodes from `--node` and `--nodes`, validated and unique.
pub fn nodes(args: &SshArgs) -> Result<Vec<Node>, CliError> {
    let mut nodes = Vec::new();
    for spec in &args.nodes {
        nodes.push(Node::parse_spec(spec)?);
    }
    if let Some(f) = &args.nodes_file {
        nodes.extend(kube_ssh_tunnel::nodes::load_file(
            f,
            &args.node_address_types,
        )?);
    }
    kube_ssh_tunnel::node::check_unique(&nodes)?;
    Ok(nodes)
}

/// SSH settings from the flags: loads the key and the known_hosts files.
pub fn ssh_settings(args: &SshArgs) -> Result<SshSettings, CliError> {
    let user = args
        .ssh_user
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            CliError::usage(
                "--ssh-user is required: the SSH user on the nodes (e.g. --ssh-user kube-tunnel)",
            )
        })?;
    let agent = if args.ssh_agent {
        let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).ok_or_else(|| {
            CliError::usage("--ssh-agent: SSH_AUTH_SOCK is not set; start ssh-agent (eval $(ssh-agent)) and ssh-add the key")
        })?;
        Some(PathBuf::from(sock))
    } else {
        None
    };
    if args.ssh_keyfile.is_none() && agent.is_none() {
        return Err(CliError::usage(
            "--ssh-keyfile is required (or --ssh-agent): the private key the nodes accept (make one with `kube-ssh-tunnel keygen`)",
        ));
    }
    let mut known_hosts = args.ssh_known_hosts.clone();
    if known_hosts.is_empty() {
        let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts"));
        match default {
            Some(p) if p.exists() => known_hosts.push(p),
            _ if args.insecure_skip_host_key_verification
                || args.host_key_policy == HostKeyChoice::AcceptNew => {}
            _ => {
                return Err(CliError::usage(
                    "no known_hosts file: pass --ssh-known-hosts FILE with the nodes' host keys \
                     (e.g. from `ssh-keyscan NODE_ADDR`); ~/.ssh/known_hosts does not exist",
                ));
            }
        }
    }
    let policy = match (
        args.insecure_skip_host_key_verification,
        args.host_key_policy,
    ) {
        (true, HostKeyChoice::AcceptNew) => {
            return Err(CliError::usage(
                "--insecure-skip-host-key-verification and --host-key-policy accept-new exclude each other; pick one",
            ));
        }
        (true, _) => {
            tracing::warn!(
                "--insecure-skip-host-key-verification: host keys are NOT verified; anyone on the \
                 path to a node can impersonate it"
            );
            HostKeyPolicy::InsecureSkip
        }
        (false, HostKeyChoice::AcceptNew) => HostKeyPolicy::AcceptNew,
        (false, HostKeyChoice::Strict) => HostKeyPolicy::Strict,
    };
    if policy == HostKeyPolicy::AcceptNew && args.learned_known_hosts.is_none() {
        return Err(CliError::usage(
            "--host-key-policy accept-new needs --learned-known-hosts FILE: the file of ours that first-seen host keys are recorded in",
        ));
    }
    let keepalive = (!args.keepalive_interval.is_zero()).then_some(args.keepalive_interval);
    if args.connect_timeout.is_zero() || args.dial_timeout.is_zero() {
        return Err(CliError::usage(
            "--connect-timeout and --dial-timeout must be greater than 0",
        ));
    }
    let mut b = SshSettings::builder(user);
    if let Some(keyfile) = &args.ssh_keyfile {
        b = match &args.ssh_certificate {
            Some(cert) => {
                b.key_file_with_certificate(keyfile, args.ssh_key_passphrase_file.as_deref(), cert)?
            }
            None => b.key_file(keyfile, args.ssh_key_passphrase_file.as_deref())?,
        };
    }
    if let Some(a) = agent {
        b = b.agent(a);
    }
    if let (HostKeyPolicy::AcceptNew, Some(f)) = (policy, &args.learned_known_hosts) {
        b = b.learned_hosts(f)?;
    }
    Ok(b.known_hosts_files(&known_hosts)?
        .host_key_policy(policy)
        .connect_timeout(args.connect_timeout)
        .open_timeout(args.dial_timeout)
        .keepalive(keepalive, args.keepalive_count.max(1))
        .build())
}
