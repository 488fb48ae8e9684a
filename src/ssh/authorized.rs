//! The authorized_keys options a node should give the tunnel's key, as `keygen` prints them
//! (and as the test harness's nodes install them): port forwarding only, only to the listed
//! destinations, and a forced command that refuses.
//!
//! Why the forced command: `restrict,port-forwarding,permitopen=…` turns off ptys, agent and
//! X11 forwarding, but not command execution — with exactly that line OpenSSH's sshd runs
//! `ssh node id` as the tunnel's user. A `command="…"` that refuses and exits makes every
//! session (exec, shell, subsystem) run that command instead; `direct-tcpip` channels, all the
//! tunnel uses, never run a command, so forwarding still works under it.

/// What a session with the tunnel's key runs instead of what it asked for.
pub const FORCED_COMMAND: &str =
    "echo 'this key is for kube-ssh-tunnel port forwarding only' >&2; exit 1";

/// `restrict,port-forwarding,command="…"`: forwarding only, to any destination sshd_config
/// allows. `keygen --allow cluster` prints this (permitopen cannot express a CIDR, so an
/// nftables rule set on the node limits the destinations instead).
pub fn forwarding_only_options() -> String {
    format!(
        "restrict,port-forwarding,command=\"{}\"",
        FORCED_COMMAND.replace('"', "\\\"")
    )
}

/// `restrict,port-forwarding,command="…",permitopen="ADDR:PORT",…` for a node at `address`
/// (`NODE_IP` when None): its `node_ports`, its loopback `loopback_ports`, and `extra`
/// `HOST:PORT` entries (pod or service addresses; `*` as the port allows any).
pub fn authorized_options(
    address: Option<&str>,
    node_ports: &[u16],
    loopback_ports: &[u16],
    extra: &[String],
) -> String {
    let host = |a: &str| {
        if a.contains(':') {
            format!("[{a}]")
        } else {
            a.to_string()
        }
    };
    let mut opts = vec![forwarding_only_options()];
    let addr = address.map(host).unwrap_or_else(|| "NODE_IP".into());
    for p in node_ports {
        opts.push(format!("permitopen=\"{addr}:{p}\""));
    }
    for p in loopback_ports {
        opts.push(format!("permitopen=\"127.0.0.1:{p}\""));
    }
    for e in extra {
        opts.push(format!("permitopen=\"{e}\""));
    }
    opts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_only_with_a_refusing_command() {
        let o = authorized_options(
            Some("fd00::5"),
            &[10250],
            &[10248],
            &["10.244.1.7:*".into()],
        );
        assert_eq!(
            o,
            "restrict,port-forwarding,command=\"echo 'this key is for kube-ssh-tunnel port forwarding only' >&2; exit 1\",\
             permitopen=\"[fd00::5]:10250\",permitopen=\"127.0.0.1:10248\",permitopen=\"10.244.1.7:*\""
        );
        assert!(authorized_options(None, &[10250], &[], &[]).contains("NODE_IP:10250"));
        assert_eq!(
            forwarding_only_options(),
            "restrict,port-forwarding,command=\"echo 'this key is for kube-ssh-tunnel port forwarding only' >&2; exit 1\""
        );
    }
}
