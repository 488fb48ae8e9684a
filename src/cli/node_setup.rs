//! `node-setup`: everything a reverse node needs, made on the control plane's side (the node
//! itself runs stock OpenSSH only; docs/reverse.md "The node side"). It writes the node's key
//! pair (or a user certificate of `--user-ca` for it), a known_hosts file that pins the
//! reverse listener's host key once per control-plane endpoint, and one systemd unit per
//! endpoint that keeps one `ssh -N -R 0` running; it prints the line for the daemon's
//! `--reverse-authorized`. `keygen --reverse` makes the host key (`reverse_host_key`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use russh::keys::HashAlg;
use russh::keys::ssh_key::PublicKey;
use russh::keys::ssh_key::certificate::{Builder, CertType};

use super::CliError;
use super::duration::parse_duration;
use super::keygen::write_key_pair;
use super::output::outln;

#[derive(Args, Debug)]
pub struct NodeSetupArgs {
    /// The node's name, as in the daemon's node set: its SSH login name, and with --user-ca
    /// its certificate's principal.
    #[arg(long, value_name = "NAME")]
    pub node: String,

    /// A control-plane daemon's reverse listener as the node reaches it (repeatable: one
    /// unit per endpoint, e.g. one per apiserver).
    #[arg(long = "control-plane", value_name = "HOST:PORT", required = true)]
    pub control_planes: Vec<String>,

    /// The reverse listener's host public key (`keygen --reverse --out FILE` writes FILE.pub);
    /// pinned in the node's known_hosts for every --control-plane.
    #[arg(long, value_name = "FILE")]
    pub host_key_pub: PathBuf,

    /// Sign a user certificate for the node with this CA private key (OpenSSH format) instead
    /// of listing the node's key: the daemon then needs the CA's public key in
    /// --reverse-user-ca and the bare node name in --reverse-authorized.
    #[arg(long, value_name = "CA_PRIVATE_KEY")]
    pub user_ca: Option<PathBuf>,

    /// With --user-ca: how long the certificate is valid, from 5 minutes ago (e.g. 8760h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "user_ca")]
    pub validity: Option<Duration>,

    /// Where to write the files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Where the files will live on the node: the paths the units name.
    #[arg(long, value_name = "DIR", default_value = "/etc/kube-ssh-tunnel")]
    pub install_dir: PathBuf,

    /// The node's ssh binary (an absolute path, as systemd wants).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/ssh")]
    pub ssh: PathBuf,

    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

/// The file names `node-setup` writes in --out.
const KEY: &str = "node_key";
const KNOWN_HOSTS: &str = "known_hosts";

/// A host and port, as `HOST:PORT` or `[IPV6]:PORT`.
pub(super) fn parse_endpoint(flag: &str, s: &str) -> Result<(String, u16), CliError> {
    let bad = |why: &str| {
        CliError::usage(format!(
            "{flag} {s:?}: {why}; write HOST:PORT, e.g. cp1.example.com:2222 or [2001:db8::1]:2222"
        ))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address needs [ADDR]:PORT"))?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if h.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.starts_with('-')
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
    {
        return Err(bad(
            "the host may hold only letters, digits, '.', '-', ':' and '_'",
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    Ok((host.to_string(), port))
}

/// How known_hosts names `host` at `port` (`[HOST]:PORT`, or `HOST` for port 22).
pub(super) fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A path that goes into a unit's ExecStart as is: absolute, and nothing systemd or the
/// whitespace split would change.
fn unit_path(flag: &str, p: &Path) -> Result<String, CliError> {
    let s = p
        .to_str()
        .ok_or_else(|| CliError::usage(format!("{flag} {}: not UTF-8", p.display())))?;
    if !p.is_absolute() {
        return Err(CliError::usage(format!(
            "{flag} {s}: give an absolute path (systemd runs the unit from /)"
        )));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "%$\\\"';`".contains(c))
    {
        return Err(CliError::usage(format!(
            "{flag} {s}: the path may not hold whitespace or any of % $ \\ \" ' ; ` (it goes into a systemd unit as is)"
        )));
    }
    Ok(s.to_string())
}

fn check_node_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "--node {name:?}: a node name (its login name) may hold only letters, digits, '.', '-' and '_', and may not start with '-'"
        )))
    }
}

fn write_public(path: &Path, text: &str) -> Result<(), CliError> {
    let io = |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", path.display()));
    std::fs::write(path, text).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io)
}

/// Reads an OpenSSH public key file (the first line that is not a comment).
pub(super) fn read_public_key(flag: &str, path: &Path) -> Result<PublicKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("{flag} {}: {e}", path.display())))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    PublicKey::from_openssh(line).map_err(|e| {
        CliError::usage(format!(
            "{flag} {}: not an OpenSSH public key ({e}); pass the .pub file `keygen --reverse` wrote",
            path.display()
        ))
    })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], CliError> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| CliError::failure(format!("cannot read /dev/urandom: {e}")))?;
    Ok(b)
}

/// A user certificate for `node` (principal = node name, no critical options).
fn certify(
    node: &str,
    subject: &PublicKey,
    ca_path: &Path,
    validity: Duration,
) -> Result<String, CliError> {
    let ca = russh::keys::load_secret_key(ca_path, None).map_err(|e| {
        CliError::usage(format!(
            "--user-ca {}: cannot load the CA's private key (OpenSSH format, not encrypted): {e}",
            ca_path.display()
        ))
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CliError::failure(format!("the clock is before 1970: {e}")))?
        .as_secs();
    let bad = |e: russh::keys::ssh_key::Error| {
        CliError::failure(format!("cannot make the certificate: {e}"))
    };
    let nonce = random_bytes::<32>()?;
    let serial = u64::from_le_bytes(random_bytes::<8>()?);
    let mut b = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        now.saturating_sub(300),
        now.saturating_add(validity.as_secs()),
    )
    .map_err(bad)?;
    b.serial(serial).map_err(bad)?;
    b.cert_type(CertType::User).map_err(bad)?;
    b.key_id(format!("kube-ssh-tunnel node {node}"))
        .map_err(bad)?;
    b.valid_principal(node).map_err(bad)?;
    b.extension("permit-port-forwarding", "").map_err(bad)?;
    b.comment(format!("kube-ssh-tunnel node {node}"))
        .map_err(bad)?;
    let cert = b.sign(&ca).map_err(bad)?;
    cert.to_openssh().map_err(bad)
}

pub fn node_setup(a: NodeSetupArgs) -> Result<(), CliError> {
    check_node_name(&a.node)?;
    let mut endpoints: Vec<(String, u16)> = Vec::new();
    for cp in &a.control_planes {
        let e = parse_endpoint("--control-plane", cp)?;
        if endpoints.contains(&e) {
            return Err(CliError::usage(format!(
                "--control-plane {cp} is given twice; give each endpoint once"
            )));
        }
        endpoints.push(e);
    }
    let validity = match (&a.user_ca, a.validity) {
        (Some(_), None) => {
            return Err(CliError::usage(
                "--user-ca needs --validity DURATION: how long the node's certificate is valid, e.g. 8760h",
            ));
        }
        (Some(_), Some(v)) if v.is_zero() => {
            return Err(CliError::usage(
                "--validity must be more than 0, e.g. 8760h",
            ));
        }
        (_, v) => v,
    };
    let host_key = read_public_key("--host-key-pub", &a.host_key_pub)?;
    let install = unit_path("--install-dir", &a.install_dir)?;
    let ssh = unit_path("--ssh", &a.ssh)?;

    let key_path = a.out.join(KEY);
    let pub_path = a.out.join(format!("{KEY}.pub"));
    let cert_path = a.out.join(format!("{KEY}-cert.pub"));
    let kh_path = a.out.join(KNOWN_HOSTS);
    let unit_name = |i: usize| format!("kube-ssh-tunnel-reverse-{}.service", i + 1);
    let mut files = vec![key_path.clone(), pub_path.clone(), kh_path.clone()];
    if a.user_ca.is_some() {
        files.push(cert_path.clone());
    }
    files.extend((0..endpoints.len()).map(|i| a.out.join(unit_name(i))));
    if !a.force
        && let Some(f) = files.iter().find(|f| f.exists())
    {
        return Err(CliError::usage(format!(
            "{} already exists; refusing to overwrite it (pass --force to replace the node's files)",
            f.display()
        )));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", a.out.display())))?;

    let key =
        kube_ssh_tunnel::ssh::keys::generate_ed25519(&format!("kube-ssh-tunnel node {}", a.node))
            .map_err(|e| CliError::failure(format!("cannot make the key: {e}")))?;
    let public = write_key_pair(&key_path, &pub_path, &key)?;
    let cert = match (&a.user_ca, validity) {
        (Some(ca), Some(v)) => {
            let c = certify(&a.node, key.public_key(), ca, v)?;
            write_public(&cert_path, &format!("{c}\n"))?;
            true
        }
        _ => false,
    };

    let host_line = host_key
        .to_openssh()
        .map_err(|e| CliError::failure(format!("cannot encode the host key: {e}")))?;
    // Key type and base64 only: the comment is the daemon's, not the node's.
    let host_line: String = host_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let known_hosts: String = endpoints
        .iter()
        .map(|(h, p)| format!("{} {host_line}\n", known_hosts_name(h, *p)))
        .collect();
    write_public(&kh_path, &known_hosts)?;

    let cert_opt = if cert {
        format!("  -o CertificateFile={install}/{KEY}-cert.pub \\\n")
    } else {
        String::new()
    };
    for (i, (host, port)) in endpoints.iter().enumerate() {
        let unit = format!(
            "# Written by `kube-ssh-tunnel node-setup` for node {node}: control plane {host}:{port}\n\
             # ({n} of {total}). Install the files of this directory in {install} on the node, this unit\n\
             # in /etc/systemd/system/, then: systemctl enable --now {name}\n\
             [Unit]\n\
             Description=Reverse SSH tunnel of node {node} to the control plane at {host}:{port} (kube-ssh-tunnel reverse mode)\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             ExecStart={ssh} -N -F /dev/null \\\n\
             \x20 -o BatchMode=yes -o ExitOnForwardFailure=yes \\\n\
             \x20 -o ServerAliveInterval=15 -o ServerAliveCountMax=3 \\\n\
             \x20 -o StrictHostKeyChecking=yes -o UserKnownHostsFile={install}/{KNOWN_HOSTS} \\\n\
             \x20 -o IdentitiesOnly=yes -i {install}/{KEY} \\\n\
             {cert_opt}\
             \x20 -p {port} -l {node} -R 0 {host}\n\
             Restart=always\n\
             RestartSec=5\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            node = a.node,
            n = i + 1,
            total = endpoints.len(),
            name = unit_name(i),
        );
        write_public(&a.out.join(unit_name(i)), &unit)?;
    }

    outln!(
        "wrote in {}: {KEY} (0600), {KEY}.pub{}, {KNOWN_HOSTS} and {} unit(s) for node {} ({} {})",
        a.out.display(),
        if cert {
            format!(", {KEY}-cert.pub")
        } else {
            String::new()
        },
        endpoints.len(),
        a.node,
        key.algorithm(),
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    outln!();
    if cert {
        outln!(
            "# --reverse-authorized on each daemon: the bare node name (its certificate names it;\n\
             # the daemon's --reverse-user-ca holds the CA's public key)"
        );
        outln!("{}", a.node);
    } else {
        outln!("# --reverse-authorized on each daemon: the node's key under its name");
        outln!("{} {}", a.node, public.trim());
    }
    Ok(())
}

/// `keygen --reverse`: the reverse listener's host key, and the known_hosts line nodes need.
pub(super) fn reverse_host_key(
    out: &Path,
    force: bool,
    comment: &str,
    listen: Option<&str>,
) -> Result<(), CliError> {
    let at = listen.map(|l| parse_endpoint("--listen", l)).transpose()?;
    let public_path = {
        let mut p = out.to_path_buf().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    };
    if !force && (out.exists() || public_path.exists()) {
        return Err(CliError::usage(format!(
            "{} already exists; refusing to overwrite a key (pass --force to replace it)",
            out.display()
        )));
    }
    let key = kube_ssh_tunnel::ssh::keys::generate_ed25519(comment)
        .map_err(|e| CliError::failure(format!("cannot make the key: {e}")))?;
    let public = write_key_pair(out, &public_path, &key)?;
    let bare: String = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    outln!(
        "wrote {} (0600) and {} (0644): the reverse listener's host key (run --reverse-host-key {}), {} {}",
        out.display(),
        public_path.display(),
        out.display(),
        key.algorithm(),
        key.public_key().fingerprint(HashAlg::Sha256)
    );
    outln!();
    outln!(
        "# known_hosts on each node (node-setup --host-key-pub {} writes it for you):",
        public_path.display()
    );
    match at {
        Some((h, p)) if !(h == "0.0.0.0" || h == "::") => {
            outln!("{} {bare}", known_hosts_name(&h, p))
        }
        Some((_, p)) => {
            outln!("# (replace CONTROL_PLANE_ADDRESS with the address nodes dial)");
            outln!("[CONTROL_PLANE_ADDRESS]:{p} {bare}");
        }
        None => {
            outln!(
                "# (replace CONTROL_PLANE_ADDRESS and PORT with what nodes dial, or pass --listen HOST:PORT)"
            );
            outln!("[CONTROL_PLANE_ADDRESS]:PORT {bare}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_name_the_flag() {
        assert_eq!(
            parse_endpoint("--control-plane", "cp1.example.com:2222").unwrap(),
            ("cp1.example.com".into(), 2222)
        );
        assert_eq!(
            parse_endpoint("--control-plane", "[2001:db8::1]:22").unwrap(),
            ("2001:db8::1".into(), 22)
        );
        for bad in [
            "cp1",
            "cp1:0",
            ":22",
            "-oProxyCommand=x:22",
            "2001:db8::1:22",
            "a b:22",
        ] {
            let e = parse_endpoint("--control-plane", bad).unwrap_err();
            assert_eq!(e.code, 2, "{bad}");
            assert!(e.message.starts_with("--control-plane"), "{}", e.message);
        }
        assert_eq!(known_hosts_name("h", 22), "h");
        assert_eq!(known_hosts_name("h", 2222), "[h]:2222");
    }

    #[test]
    fn unit_paths_must_be_absolute_and_plain() {
        assert!(unit_path("--ssh", Path::new("/usr/bin/ssh")).is_ok());
        assert!(unit_path("--ssh", Path::new("ssh")).is_err());
        assert!(unit_path("--install-dir", Path::new("/etc/a b")).is_err());
        assert!(unit_path("--install-dir", Path::new("/etc/%h")).is_err());
    }
}
