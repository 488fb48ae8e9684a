//! `publish-host-key`: runs on a node and writes the node's SSH host public keys onto its own
//! Node object, one annotation per key type (`ssh.kube-ssh-tunnel.io/host-ed25519` = `ssh-ed25519
//! AAAA…`, see `nodes::host_key_annotations`), for `run --host-key-source nodes`. The node's
//! name comes from the credential: a SelfSubjectReview tells who the kubelet credential is
//! (`system:node:NAME`); with NodeRestriction that credential can change only that Node, so a
//! node vouches only for itself. One JSON merge patch, through the Node watch's client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Patch, PatchParams, PostParams};
use kube_ssh_tunnel::nodes::host_key_annotations::{
    KEY_TYPES, annotation_name, annotation_value, is_host_key_annotation, key_type,
};
use kube_ssh_tunnel::nodes::lean_node::LeanNode;
use kube_ssh_tunnel::nodes::watch::{ApiSource, WatchError, client};
use russh::keys::PublicKey;

use super::CliError;
use super::duration::parse_duration;
use super::output::outln;

/// The user name prefix of a kubelet's credential (the Node authorizer's).
const NODE_USER_PREFIX: &str = "system:node:";

#[derive(Args, Debug)]
pub struct PublishHostKeyArgs {
    /// The kubelet's kubeconfig (e.g. /etc/kubernetes/kubelet.conf): its credential names the
    /// node (system:node:NAME) and may patch that Node only.
    #[arg(long)]
    pub kubeconfig: PathBuf,

    /// The directory holding the node's ssh_host_*_key.pub files.
    #[arg(long, default_value = "/etc/ssh")]
    pub host_keys: PathBuf,

    /// The Node to annotate, instead of the name in the credential (then the credential needs
    /// not be a node's; it must be allowed to patch that Node).
    #[arg(long)]
    pub node_name: Option<String>,

    /// Limit for each request to the API server.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn publish_host_key(args: PublishHostKeyArgs) -> Result<i32, CliError> {
    if args.timeout.is_zero() {
        return Err(CliError::usage("--timeout must be greater than 0"));
    }
    if let Some(name) = &args.node_name {
        check_node_name(name)?;
    }
    let keys = read_host_keys(&args.host_keys)?;
    let timeout = args.timeout;
    let source = ApiSource::Kubeconfig(args.kubeconfig.clone());
    let client = client(&source, |c| {
        c.connect_timeout = Some(timeout);
        c.read_timeout = Some(timeout);
        c.write_timeout = Some(timeout);
    })
    .await
    .map_err(|e| match e {
        WatchError::Kubeconfig { .. } => CliError::usage(e),
        e => CliError::failure(e),
    })?;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => node_of_credential(&client, &args.kubeconfig, timeout).await?,
    };

    // Every key type we know is named: the ones this node has get its key, the others are
    // removed (null), so a key the node no longer has stops being trusted.
    let mut annotations = serde_json::Map::new();
    for kind in KEY_TYPES {
        annotations.insert(annotation_name(kind), serde_json::Value::Null);
    }
    for (kind, (_, value)) in &keys {
        annotations.insert(
            annotation_name(kind),
            serde_json::Value::String(value.clone()),
        );
    }
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    let api: kube::Api<LeanNode> = kube::Api::all(client);
    let patched = tokio::time::timeout(
        timeout,
        api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .map_err(|_| {
        CliError::failure(format!(
            "patching Node {node} timed out after {}",
            humantime::format_duration(timeout)
        ))
    })?
    .map_err(|e| CliError::failure(format!("patching Node {node} failed: {e}")))?;

    // What the API server now holds.
    let held: BTreeMap<String, String> = patched
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| is_host_key_annotation(k))
        .collect();
    for (kind, (file, value)) in &keys {
        let name = annotation_name(kind);
        if held.get(&name) != Some(value) {
            return Err(CliError::failure(format!(
                "the API server's answer for Node {node} does not hold {name} as written; check the Node (`kubectl get node {node} -o yaml`)"
            )));
        }
        outln!("node/{node}: {name}={value} (from {})", file.display());
    }
    Ok(0)
}

/// The node name of the credential in `kubeconfig`, asked of the API server (a
/// SelfSubjectReview); a credential that is not a node's is a usage error.
async fn node_of_credential(
    client: &kube::Client,
    kubeconfig: &Path,
    timeout: Duration,
) -> Result<String, CliError> {
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = tokio::time::timeout(
        timeout,
        api.create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await
    .map_err(|_| {
        CliError::failure(format!(
            "asking the API server who the credential is (SelfSubjectReview) timed out after {}",
            humantime::format_duration(timeout)
        ))
    })?
    .map_err(|e| {
        CliError::failure(format!(
            "asking the API server who the credential is (SelfSubjectReview, Kubernetes 1.28+) failed: {e}; pass --node-name NAME"
        ))
    })?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default();
    match user.strip_prefix(NODE_USER_PREFIX) {
        Some(name) if check_node_name(name).is_ok() => Ok(name.to_string()),
        _ => Err(CliError::usage(format!(
            "the credential in {} is '{user}', not a node's ({NODE_USER_PREFIX}NAME). \
             publish-host-key annotates the Node it runs on with the kubelet's credential \
             (e.g. /etc/kubernetes/kubelet.conf), which NodeRestriction limits to that Node; \
             pass --node-name NAME to annotate a Node with another credential",
            kubeconfig.display()
        ))),
    }
}

/// A Kubernetes node name (letters, digits, '-', '.'; at most 253).
fn check_node_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "'{name}' is not a Kubernetes node name (letters, digits, '-', '.')"
        )))
    }
}

/// The host public keys in `dir` (`ssh_host_*_key.pub`) by key type: the file and the
/// annotation's value. Types we do not publish (DSA) are skipped with a note; a file that is
/// not a public key, two keys of one type, or none at all are usage errors.
fn read_host_keys(dir: &Path) -> Result<BTreeMap<&'static str, (PathBuf, String)>, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::usage(format!("--host-keys {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
        })
        .collect();
    files.sort();
    let mut keys = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
        let key = PublicKey::from_openssh(text.trim()).map_err(|e| {
            CliError::usage(format!(
                "{} is not an OpenSSH public key: {e}",
                file.display()
            ))
        })?;
        let Some(kind) = key_type(&key) else {
            eprintln!(
                "kube-ssh-tunnel: skipping {} ({} keys are not published)",
                file.display(),
                key.algorithm()
            );
            continue;
        };
        let value = annotation_value(&key)
            .map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?;
        if let Some((first, _)) = keys.insert(kind, (file.clone(), value)) {
            return Err(CliError::usage(format!(
                "{} and {} both hold a {kind} key; one annotation holds one key per type",
                first.display(),
                file.display()
            )));
        }
    }
    if keys.is_empty() {
        return Err(CliError::usage(format!(
            "no host public key (ssh_host_*_key.pub) in {}; point --host-keys at sshd's key directory",
            dir.display()
        )));
    }
    Ok(keys)
}
