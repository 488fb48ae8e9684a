//! Turns the shared flags into validated library settings and a node list. Every error here
//! is a configuration error (exit 2) that names the flag or file and how to fix it.

use std::path::PathBuf;

use kube_ssh_tunnel::ssh::HostKeyPolicy;
use kube_ssh_tunnel::{Node, SshSettings, gate};

use super::CliError;
use super::args::SshArgs;

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
        nodes.extend(Node::load_file(f)?);
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
    let keyfile = args.ssh_keyfile.clone().ok_or_else(|| {
        CliError::usage("--ssh-keyfile is required: the private key the nodes accept (make one with `kube-ssh-tunnel keygen`)")
    })?;
    let mut known_hosts = args.ssh_known_hosts.clone();
    if known_hosts.is_empty() {
        let default = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/known_hosts"));
        match default {
            Some(p) if p.exists() => known_hosts.push(p),
            _ if args.insecure_skip_host_key_verification => {}
            _ => {
                return Err(CliError::usage(
                    "no known_hosts file: pass --ssh-known-hosts FILE with the nodes' host keys \
                     (e.g. from `ssh-keyscan NODE_ADDR`); ~/.ssh/known_hosts does not exist",
                ));
            }
        }
    }
    let policy = if args.insecure_skip_host_key_verification {
        tracing::warn!(
            "--insecure-skip-host-key-verification: host keys are NOT verified; anyone on the \
             path to a node can impersonate it"
        );
        HostKeyPolicy::InsecureSkip
    } else {
        HostKeyPolicy::Strict
    };
    let keepalive = (!args.keepalive_interval.is_zero()).then_some(args.keepalive_interval);
    if args.connect_timeout.is_zero() || args.dial_timeout.is_zero() {
        return Err(CliError::usage(
            "--connect-timeout and --dial-timeout must be greater than 0",
        ));
    }
    Ok(SshSettings::builder(user)
        .key_file(&keyfile, args.ssh_key_passphrase_file.as_deref())?
        .known_hosts_files(&known_hosts)?
        .host_key_policy(policy)
        .connect_timeout(args.connect_timeout)
        .open_timeout(args.dial_timeout)
        .keepalive(keepalive, args.keepalive_count.max(1))
        .build())
}
