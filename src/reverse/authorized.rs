//! `--reverse-authorized FILE`: which public key belongs to which reverse node. One line per
//! key, `NODE_NAME [mode=reverse|either] KEYTYPE BASE64 [comment]` (an OpenSSH public key
//! line behind the node's name), or a bare `NODE_NAME [mode=…]`: a node that authenticates
//! with a user certificate of `--reverse-user-ca` only. `#` comments and blank lines are
//! skipped. A node named here is a reverse node (the pool waits for its connection instead of
//! dialling it), or with `mode=either` a node that is dialled and may also dial in. Re-read on
//! change by `live`.

use std::path::Path;

use russh::keys::ssh_key::PublicKey;

use super::server::ReverseError;
use crate::pool::NodeMode;

/// The keys that may dial in, each naming its node.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedNodes {
    entries: Vec<(String, Option<PublicKey>)>,
    /// Each listed node's mode and the line that set it (`mode=`; else reverse).
    modes: std::collections::HashMap<String, (NodeMode, Option<usize>)>,
}

/// `mode=reverse|either` (the optional token after the node's name).
fn parse_mode(token: &str) -> Result<NodeMode, String> {
    match token.strip_prefix("mode=") {
        Some("reverse") => Ok(NodeMode::Reverse),
        Some("either") => Ok(NodeMode::Either),
        Some(other) => Err(format!(
            "unknown mode '{other}': use mode=reverse (only the node's own ssh -R) or mode=either (dialled, and it may dial in)"
        )),
        None => Err(format!("'{token}' is not mode=reverse or mode=either")),
    }
}

impl AuthorizedNodes {
    /// Reads the file (see the module comment); any bad line is an error naming it.
    pub fn load(path: &Path) -> Result<AuthorizedNodes, ReverseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReverseError::Authorized {
            file: path.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|(line, reason)| ReverseError::Authorized {
            file: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file's text; on error the line number (1-based) and why.
    pub fn parse(text: &str) -> Result<AuthorizedNodes, (usize, String)> {
        let mut entries = Vec::new();
        let mut modes = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(n, r)| (n, r.trim()));
            let (mode, rest) = if rest.starts_with("mode=") {
                let (token, after) = rest
                    .split_once(char::is_whitespace)
                    .map_or((rest, ""), |(t, a)| (t, a.trim()));
                (Some(parse_mode(token).map_err(|e| (i + 1, e))?), after)
            } else {
                (None, rest)
            };
            let slot = modes
                .entry(name.to_string())
                .or_insert((NodeMode::Reverse, None));
            if let Some(mode) = mode {
                match slot.1 {
                    Some(at) if slot.0 != mode => {
                        return Err((
                            i + 1,
                            format!(
                                "node {name}: mode={mode} here but mode={} on line {at}; give one mode per node",
                                slot.0
                            ),
                        ));
                    }
                    _ => *slot = (mode, Some(i + 1)),
                }
            }
            if rest.is_empty() {
                entries.push((name.to_string(), None));
                continue;
            }
            let key = PublicKey::from_openssh(rest)
                .map_err(|e| (i + 1, format!("not an OpenSSH public key: {e}")))?;
            entries.push((name.to_string(), Some(key)));
        }
        Ok(AuthorizedNodes { entries, modes })
    }

    /// The node's mode: forward unless the file names it (then reverse, or its `mode=`).
    pub fn mode(&self, node: &str) -> NodeMode {
        self.modes.get(node).map_or(NodeMode::Forward, |m| m.0)
    }

    /// The node this key belongs to, if any.
    pub fn node_of(&self, key: &PublicKey) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, k)| k.as_ref().is_some_and(|k| k.key_data() == key.key_data()))
            .map(|(n, _)| n.as_str())
    }

    /// True if `node` may dial in (the file names it: mode reverse or either).
    pub fn is_reverse(&self, node: &str) -> bool {
        self.modes.contains_key(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILl/k5x1M5LM67GoBTeqx29U2G3O8it2yQSYfrZIqwAQ c";

    #[test]
    fn lines_name_nodes_and_bad_lines_are_named() {
        let a = AuthorizedNodes::parse(&format!("# nodes\n\nnode-a {KEY}\n")).unwrap();
        let k = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(a.node_of(&k), Some("node-a"));
        assert!(a.is_reverse("node-a") && !a.is_reverse("node-b"));
        let e = AuthorizedNodes::parse(&format!("node-a {KEY}\nnode-b ssh-ed25519 AAAA\n"))
            .unwrap_err();
        assert_eq!(e.0, 2, "{e:?}");
        let bare = AuthorizedNodes::parse("by-certificate\n").unwrap();
        assert!(bare.is_reverse("by-certificate"));
        assert_eq!(bare.node_of(&k), None);
    }

    #[test]
    fn a_mode_token_after_the_name_sets_the_nodes_mode() {
        let a = AuthorizedNodes::parse(&format!(
            "plain {KEY}\nboth mode=either {KEY}\nrev mode=reverse\nboth-cert mode=either\n"
        ))
        .unwrap();
        assert_eq!(a.mode("plain"), NodeMode::Reverse);
        assert_eq!(a.mode("both"), NodeMode::Either);
        assert_eq!(a.mode("rev"), NodeMode::Reverse);
        assert_eq!(a.mode("both-cert"), NodeMode::Either);
        assert_eq!(a.mode("elsewhere"), NodeMode::Forward);
        assert!(a.is_reverse("both") && !a.is_reverse("elsewhere"));
        let k = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(a.node_of(&k), Some("plain"));
        // A second key line without a mode keeps the node's mode.
        let two = AuthorizedNodes::parse(&format!("n mode=either {KEY}\nn {KEY}\n")).unwrap();
        assert_eq!(two.mode("n"), NodeMode::Either);

        let e = AuthorizedNodes::parse(&format!("ok {KEY}\nn mode=sideways {KEY}\n")).unwrap_err();
        assert_eq!(e.0, 2, "{e:?}");
        assert!(e.1.contains("unknown mode 'sideways'"), "{e:?}");
        let e = AuthorizedNodes::parse("n mode=either\nn mode=reverse\n").unwrap_err();
        assert_eq!(e.0, 2, "{e:?}");
        assert!(e.1.contains("on line 1"), "{e:?}");
    }
}
