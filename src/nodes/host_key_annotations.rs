//! Host keys published on a node's own Node object. `publish-host-key` runs on the node and
//! writes one annotation per host key type (`ssh.kube-ssh-tunnel.io/host-ed25519` = `ssh-ed25519
//! AAAA…`); `run --host-key-source nodes` checks a node's sshd against the annotations of
//! that node's own Node object, when no known_hosts line names the host. This module names
//! the annotations and parses them; the check is `ssh::verifier`'s.

use std::collections::BTreeMap;

use russh::keys::{Algorithm, EcdsaCurve, PublicKey};

/// Every host key annotation starts with this; the rest is the key type (`KEY_TYPES`).
pub const HOST_KEY_ANNOTATION_PREFIX: &str = "ssh.kube-ssh-tunnel.io/host-";

/// The key types an annotation may name, one annotation each.
pub const KEY_TYPES: [&str; 5] = [
    "ed25519",
    "ecdsa-nistp256",
    "ecdsa-nistp384",
    "ecdsa-nistp521",
    "rsa",
];

/// The key type of `key` as its annotation names it, or None for a type we do not publish.
pub fn key_type(key: &PublicKey) -> Option<&'static str> {
    match key.algorithm() {
        Algorithm::Ed25519 => Some("ed25519"),
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        } => Some("ecdsa-nistp256"),
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        } => Some("ecdsa-nistp384"),
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        } => Some("ecdsa-nistp521"),
        Algorithm::Rsa { .. } => Some("rsa"),
        _ => None,
    }
}

/// The annotation that holds host keys of `key_type`.
pub fn annotation_name(key_type: &str) -> String {
    format!("{HOST_KEY_ANNOTATION_PREFIX}{key_type}")
}

/// True for a host key annotation (a name this module reads).
pub fn is_host_key_annotation(name: &str) -> bool {
    name.starts_with(HOST_KEY_ANNOTATION_PREFIX)
}

/// The annotation's value for `key`: `type base64`, without a comment.
pub fn annotation_value(key: &PublicKey) -> Result<String, String> {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh()
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// A host key annotation that cannot be used: the node it is on is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {reason}")]
pub struct MalformedAnnotation {
    pub annotation: String,
    pub reason: String,
}

/// One host key from a Node annotation.
#[derive(Debug, Clone)]
pub struct AnnotatedKey {
    /// The annotation's name.
    pub annotation: String,
    pub key: PublicKey,
}

/// The host keys in a node's host key annotations (`annotations` may hold other ones; they
/// are ignored). An empty list when there is none; an error names the first bad annotation.
pub fn parse(
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<AnnotatedKey>, MalformedAnnotation> {
    let mut keys = Vec::new();
    for (name, value) in annotations {
        let Some(kind) = name.strip_prefix(HOST_KEY_ANNOTATION_PREFIX) else {
            continue;
        };
        let bad = |reason: String| MalformedAnnotation {
            annotation: name.clone(),
            reason,
        };
        if !KEY_TYPES.contains(&kind) {
            return Err(bad(format!(
                "'{kind}' is not a key type we know (known: {})",
                KEY_TYPES.join(", ")
            )));
        }
        let key = PublicKey::from_openssh(value.trim()).map_err(|e| {
            bad(format!(
                "'{}' is not an OpenSSH public key line (`TYPE BASE64`): {e}",
                shorten(value)
            ))
        })?;
        let actual = key_type(&key).unwrap_or("an unsupported type");
        if actual != kind {
            return Err(bad(format!("it holds a key of type {actual}, not {kind}")));
        }
        keys.push(AnnotatedKey {
            annotation: name.clone(),
            key,
        });
    }
    Ok(keys)
}

/// At most 60 characters of an annotation's value, for messages.
fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIJXwG1g8xm22w+Oc32fqg0nvRTJ9U2d2TpppfBCd4IC";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_our_annotations_and_ignores_others() {
        let keys = parse(&map(&[
            (
                "ssh.kube-ssh-tunnel.io/host-ed25519",
                &format!("{ED} root@n1"),
            ),
            ("ssh.kube-ssh-tunnel.io/drain", "maintenance"),
            ("node.alpha.kubernetes.io/ttl", "0"),
        ]))
        .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].annotation, "ssh.kube-ssh-tunnel.io/host-ed25519");
        assert_eq!(annotation_value(&keys[0].key).unwrap(), ED);
        assert_eq!(key_type(&keys[0].key), Some("ed25519"));
        assert!(parse(&BTreeMap::new()).unwrap().is_empty());
    }

    #[test]
    fn a_bad_annotation_is_named() {
        for (name, value, why) in [
            (
                "ssh.kube-ssh-tunnel.io/host-ed25519",
                "not a key",
                "not an OpenSSH",
            ),
            (
                "ssh.kube-ssh-tunnel.io/host-rsa",
                ED,
                "type ed25519, not rsa",
            ),
            ("ssh.kube-ssh-tunnel.io/host-dsa", ED, "not a key type"),
        ] {
            let e = parse(&map(&[(name, value)])).unwrap_err();
            assert_eq!(e.annotation, name);
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
