//! `LeanNode`: a Kubernetes Node object as the watch reads it — only its name, resource
//! version, our annotations (SSH port, drain, host keys), its pod CIDRs and its addresses. A real Node is about
//! 10 KB of JSON (images, managedFields, conditions, nodeInfo); deserializing it into
//! k8s-openapi's `Node` allocates all of that for every event and keeps it in memory. Here
//! the rest is skipped while parsing, and nothing but the tunnel node derived from it is kept
//! (`watch`). Labels are not kept: `--node-selector` is applied by the API server.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

use super::AddressTypes;
use super::host_key_annotations::is_host_key_annotation;
use super::kube_node::{
    DRAIN_ANNOTATION, KubeNode, Metadata, SSH_PORT_ANNOTATION, SkipReason, Spec, Status,
};
use crate::node::Node;

/// The parts of a Node object the tunnel uses.
#[derive(Clone, Debug, Deserialize)]
pub struct LeanNode {
    #[serde(deserialize_with = "lean_meta", default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub status: Status,
}

/// Reads `metadata` keeping the name, uid, resource version and our annotations only (SSH
/// port, drain, host keys).
fn lean_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        uid: Option<String>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let l = Lean::deserialize(d)?;
    let ours: BTreeMap<String, String> = l
        .annotations
        .into_iter()
        .filter(|(k, _)| {
            k == SSH_PORT_ANNOTATION || k == DRAIN_ANNOTATION || is_host_key_annotation(k)
        })
        .collect();
    Ok(ObjectMeta {
        name: l.name,
        uid: l.uid,
        resource_version: l.resource_version,
        annotations: (!ours.is_empty()).then_some(ours),
        ..ObjectMeta::default()
    })
}

impl LeanNode {
    /// The object's name ("" if it has none).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// The tunnel node for this object (the same conversion as node files use).
    pub fn into_node(self, types: &AddressTypes) -> Result<Node, SkipReason> {
        KubeNode {
            metadata: Metadata {
                name: self.metadata.name.unwrap_or_default(),
                annotations: self.metadata.annotations.unwrap_or_default(),
            },
            spec: self.spec,
            status: self.status,
        }
        .to_node(types)
    }
}

impl kube::Resource for LeanNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Node")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("nodes")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_object_keeps_only_what_the_tunnel_uses_and_converts_like_a_file() {
        let raw = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "node-1",
                "uid": "u1",
                "resourceVersion": "42",
                "labels": {"kubernetes.io/hostname": "node-1"},
                "annotations": {
                    "kube-ssh-tunnel.io/ssh-port": "2222",
                    "node.alpha.kubernetes.io/ttl": "0"
                },
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.0.2.10"},
                    {"type": "Hostname", "address": "node-1"}
                ],
                "images": [{"names": ["registry.k8s.io/pause:3.9"], "sizeBytes": 321520}],
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        let lean: LeanNode = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(lean.name(), "node-1");
        assert_eq!(lean.metadata.resource_version.as_deref(), Some("42"));
        assert!(lean.metadata.managed_fields.is_none() && lean.metadata.labels.is_none());
        assert_eq!(
            lean.metadata.annotations.as_ref().map(|a| a.len()),
            Some(1),
            "only the SSH port annotation"
        );
        let types = AddressTypes::default();
        let via_file: KubeNode = serde_json::from_value(raw).unwrap();
        assert_eq!(
            lean.into_node(&types).unwrap(),
            via_file.to_node(&types).unwrap()
        );
    }
}
