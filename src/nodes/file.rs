//! The `--nodes FILE`: our TOML list, or the JSON that `kubectl get nodes -o json` prints
//! (told apart by the first character). Nodes of a NodeList that cannot be used (no address
//! of a preferred type, a bad pod CIDR) are skipped with a warning; a file that does not
//! parse is an error, so the caller keeps its last good set.

use std::path::Path;

use super::AddressTypes;
use super::kube_node::{KubeDocument, convert};
use crate::error::ConfigError;
use crate::node::Node;

/// Reads the node file at `path`; `types` picks each Kubernetes node's SSH address.
pub fn load(path: &Path, types: &AddressTypes) -> Result<Vec<Node>, ConfigError> {
    let err = |reason: String| ConfigError::File {
        what: "node list",
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if !text.trim_start().starts_with('{') {
        return Node::parse_toml_list(&text, path);
    }
    let doc: KubeDocument = serde_json::from_str(&text)
        .map_err(|e| err(format!("not a Kubernetes NodeList (JSON): {e}")))?;
    let items = doc.nodes().map_err(err)?;
    let (nodes, skipped) = convert(&items, types);
    for s in &skipped {
        tracing::warn!(file = %path.display(), "skipping a node: {s}");
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECTL: &str = include_str!("../../tests/fixtures/nodelist.json");

    fn load_text(text: &str, types: &str) -> Result<Vec<Node>, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "kst-nodes-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nodes.json");
        std::fs::write(&p, text).unwrap();
        let r = load(&p, &AddressTypes::parse(types).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn cidrs(n: &Node) -> Vec<String> {
        n.pod_cidrs.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn reads_kubectl_get_nodes_json() {
        let nodes = load_text(KUBECTL, "InternalIP,ExternalIP,Hostname").unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        // worker-noip has only an InternalDNS address: skipped, the rest kept.
        assert_eq!(names, ["cp", "worker-a", "worker-v6", "worker-old"]);
        let cp = &nodes[0];
        assert_eq!((cp.address.as_str(), cp.ssh_port), ("10.0.0.10", 22));
        assert_eq!(cp.aliases, ["203.0.113.10", "cp"]);
        assert!(cp.matches_host("203.0.113.10") && cp.matches_host("10.0.0.10"));
        assert_eq!(cidrs(cp), ["10.244.0.0/24"]);
        // No ExternalIP; dual-stack pod CIDRs; SSH port from the annotation.
        let a = &nodes[1];
        assert_eq!((a.address.as_str(), a.ssh_port), ("10.0.0.11", 2222));
        assert_eq!(cidrs(a), ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert!(a.owns_pod_ip("fd00:10:244:1::7".parse().unwrap()));
        // IPv6 only, podCIDRs without the legacy podCIDR field.
        let v6 = &nodes[2];
        assert_eq!(v6.address, "fd00:10::12");
        assert_eq!(cidrs(v6), ["fd00:10:244:2::/64"]);
        assert!(v6.matches_host("fd00:10:0:0:0:0:0:12"));
        // No pod CIDR at all.
        assert!(nodes[3].pod_cidrs.is_empty());
    }

    #[test]
    fn the_preference_order_picks_the_address() {
        let nodes = load_text(KUBECTL, "ExternalIP").unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["cp"]);
        assert_eq!(nodes[0].address, "203.0.113.10");
        // Only addresses of the configured types become aliases.
        assert!(nodes[0].aliases.is_empty(), "{:?}", nodes[0].aliases);
        let nodes = load_text(KUBECTL, "ExternalIP,Hostname").unwrap();
        assert_eq!(nodes[0].aliases, ["cp"]);
        let nodes = load_text(KUBECTL, "Hostname,InternalDNS").unwrap();
        let addrs: Vec<&str> = nodes.iter().map(|n| n.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "cp",
                "worker-a",
                "worker-v6",
                "worker-noip.example.internal"
            ]
        );
    }

    #[test]
    fn a_single_node_object_and_bad_documents() {
        let doc: serde_json::Value = serde_json::from_str(KUBECTL).unwrap();
        let one = doc["items"][1].to_string();
        let nodes = load_text(&one, "InternalIP").unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].name, "worker-a");
        let e = load_text("{\"kind\":\"PodList\",\"items\":[]}", "InternalIP").unwrap_err();
        assert!(
            e.to_string().contains("kind 'PodList' is not a NodeList"),
            "{e}"
        );
        let e = load_text("{\"kind\":\"List\",\"items\":[", "InternalIP").unwrap_err();
        assert!(
            e.to_string().contains("not a Kubernetes NodeList (JSON)"),
            "{e}"
        );
        // A bad pod CIDR or SSH port skips that node only.
        let bad = one.replace("10.244.1.0/24", "10.244.1.0/99");
        assert!(load_text(&bad, "InternalIP").unwrap().is_empty());
    }

    #[test]
    fn address_types_are_validated() {
        assert!(AddressTypes::parse("InternalIP,Bogus").is_err());
        assert!(AddressTypes::parse("InternalIP,internalip").is_err());
        assert!(AddressTypes::parse("").is_err());
        assert_eq!(
            AddressTypes::parse("externalip, Hostname")
                .unwrap()
                .to_string(),
            "ExternalIP,Hostname"
        );
    }
}
