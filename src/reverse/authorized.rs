//! `--reverse-authorized FILE`: which public key belongs to which reverse node. One line per
//! key, `NODE_NAME KEYTYPE BASE64 [comment]` (an OpenSSH public key line behind the node's
//! name), or a bare `NODE_NAME`: a reverse node that authenticates with a user certificate of
//! `--reverse-user-ca` only. `#` comments and blank lines are skipped. A node named here is a reverse node: the
//! pool waits for its connection instead of dialling it. Re-read on change by `live`.

use std::path::Path;

use russh::keys::ssh_key::PublicKey;

use super::server::ReverseError;

/// The keys that may dial in, each naming its node.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedNodes {
    entries: Vec<(String, Option<PublicKey>)>,
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
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, key)) = line.split_once(char::is_whitespace) else {
                entries.push((line.to_string(), None));
                continue;
            };
            let key = PublicKey::from_openssh(key.trim())
                .map_err(|e| (i + 1, format!("not an OpenSSH public key: {e}")))?;
            entries.push((name.to_string(), Some(key)));
        }
        Ok(AuthorizedNodes { entries })
    }

    /// The node this key belongs to, if any.
    pub fn node_of(&self, key: &PublicKey) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, k)| k.as_ref().is_some_and(|k| k.key_data() == key.key_data()))
            .map(|(n, _)| n.as_str())
    }

    /// True if `node` is a reverse node (some key names it).
    pub fn is_reverse(&self, node: &str) -> bool {
        self.entries.iter().any(|(n, _)| n == node)
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
}
