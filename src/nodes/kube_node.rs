//! A Kubernetes Node object (as in `kubectl get nodes -o json` or a watch event) turned into
//! a tunnel [`Node`]: its name, the address of the most preferred type (the SSH target), its
//! other addresses (so dials naming any of them route to it), its pod CIDRs, and an optional
//! SSH port from the `kube-ssh-tunnel.io/ssh-port` annotation. Only the fields we use are
//! read; everything else in the object is ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::AddressTypes;
use super::host_key_annotations::is_host_key_annotation;
use crate::node::{DEFAULT_SSH_PORT, Node};

/// The annotation that overrides a node's SSH port (default 22).
pub const SSH_PORT_ANNOTATION: &str = "kube-ssh-tunnel.io/ssh-port";

/// A Node annotation that drains the node in every daemon watching it (its value is the
/// reason; removing it undrains).
pub const DRAIN_ANNOTATION: &str = "ssh.kube-ssh-tunnel.io/drain";

/// The parts of a Node object we read.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct KubeNode {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub status: Status,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub addresses: Vec<Address>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Address {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// Why a Node object could not become a tunnel node (the node is skipped, not the list).
#[derive(Debug, thiserror::Error)]
pub enum SkipReason {
    #[error("node {node} has no address of the types {types}; its addresses: {have}")]
    NoAddress {
        node: String,
        types: String,
        have: String,
    },
    #[error("node {node}: {reason}")]
    Invalid { node: String, reason: String },
}

impl KubeNode {
    /// The tunnel node for this object under the address preference `types`.
    pub fn to_node(&self, types: &AddressTypes) -> Result<Node, SkipReason> {
        let name = self.metadata.name.clone();
        let invalid = |reason: String| SkipReason::Invalid {
            node: name.clone(),
            reason,
        };
        let address = types
            .0
            .iter()
            .find_map(|t| {
                self.status
                    .addresses
                    .iter()
                    .find(|a| a.kind == t.as_str() && !a.address.is_empty())
            })
            .map(|a| a.address.clone())
            .ok_or_else(|| SkipReason::NoAddress {
                node: name.clone(),
                types: types.to_string(),
                have: if self.status.addresses.is_empty() {
                    "none".into()
                } else {
                    self.status
                        .addresses
                        .iter()
                        .map(|a| format!("{}={}", a.kind, a.address))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })?;
        // Only addresses of the configured types become aliases: a node's own status is
        // written by its kubelet, and any other address there is a claim we do not need (the
        // pool vets the rest, see pool::vet).
        let mut aliases: Vec<String> = Vec::new();
        for a in &self.status.addresses {
            if a.address != address
                && !a.address.is_empty()
                && types.0.iter().any(|t| t.as_str() == a.kind)
                && !aliases.contains(&a.address)
            {
                aliases.push(a.address.clone());
            }
        }
        let mut cidrs: Vec<&String> = self.spec.pod_cidrs.iter().collect();
        if cidrs.is_empty()
            && let Some(c) = &self.spec.pod_cidr
        {
            cidrs.push(c);
        }
        let pod_cidrs = cidrs
            .into_iter()
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|e| invalid(format!("pod CIDR '{c}': {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ssh_port = match self.metadata.annotations.get(SSH_PORT_ANNOTATION) {
            None => DEFAULT_SSH_PORT,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    invalid(format!(
                        "annotation {SSH_PORT_ANNOTATION}='{p}' is not a port (1-65535)"
                    ))
                })?,
        };
        let node = Node {
            name: name.clone(),
            address,
            ssh_port,
            pod_cidrs,
            aliases,
            refused: Vec::new(),
            name_refused: false,
            drain: self
                .metadata
                .annotations
                .get(DRAIN_ANNOTATION)
                .map(|r| r.trim().to_string()),
            host_keys: self
                .metadata
                .annotations
                .iter()
                .filter(|(k, _)| is_host_key_annotation(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        node.validate().map_err(|e| invalid(e.to_string()))?;
        Ok(node)
    }
}

/// A `kind: NodeList` (or `List`) document, or a single `kind: Node`.
#[derive(Debug, Deserialize)]
pub struct KubeDocument {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub items: Vec<KubeNode>,
    #[serde(flatten)]
    pub single: KubeNode,
}

impl KubeDocument {
    /// The Node objects in the document.
    pub fn nodes(self) -> Result<Vec<KubeNode>, String> {
        match self.kind.as_str() {
            "NodeList" | "List" => Ok(self.items),
            "Node" => Ok(vec![self.single]),
            other => Err(format!(
                "kind '{other}' is not a NodeList, List or Node (expected the output of `kubectl get nodes -o json`)"
            )),
        }
    }
}

/// Converts every node; nodes that cannot be used are returned with the reason, so one bad
/// node does not hide the others (the original tunneler's #71855).
pub fn convert(items: &[KubeNode], types: &AddressTypes) -> (Vec<Node>, Vec<SkipReason>) {
    let mut nodes = Vec::new();
    let mut skipped = Vec::new();
    for item in items {
        match item.to_node(types) {
            Ok(n) => nodes.push(n),
            Err(e) => skipped.push(e),
        }
    }
    (nodes, skipped)
}
