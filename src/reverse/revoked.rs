//! `--reverse-revoked FILE`: keys and certificates that may no longer dial in, whatever
//! `--reverse-authorized` and `--reverse-user-ca` say. The text form of sshd's RevokedKeys:
//! one OpenSSH public key per line (`KEYTYPE BASE64 [comment]`), plus `id: KEY_ID` lines
//! (as in ssh-keygen's KRL specification) that revoke certificates by their key id. `#`
//! comments and blank lines are skipped. A listed key is refused when a node presents it,
//! when it is the key inside a presented certificate, and when it is the CA that signed the
//! certificate. Re-read on change by `live`; the listener then cuts live sessions it revokes.

use std::path::Path;

use russh::keys::Certificate;
use russh::keys::ssh_key::PublicKey;
use russh::keys::ssh_key::public::KeyData;

use super::server::ReverseError;

/// The revoked keys and certificate key ids.
#[derive(Debug, Clone, Default)]
pub struct RevokedKeys {
    keys: Vec<KeyData>,
    ids: Vec<String>,
}

impl RevokedKeys {
    /// Reads the file (see the module comment); any bad line is an error naming it.
    pub fn load(path: &Path) -> Result<RevokedKeys, ReverseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReverseError::Revoked {
            file: path.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|(line, reason)| ReverseError::Revoked {
            file: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file's text; on error the line number (1-based) and why.
    pub fn parse(text: &str) -> Result<RevokedKeys, (usize, String)> {
        let mut r = RevokedKeys::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(id) = line.strip_prefix("id:") {
                let id = id.trim();
                if id.is_empty() {
                    return Err((i + 1, "`id:` needs a certificate key id after it".into()));
                }
                r.ids.push(id.to_string());
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| {
                (
                    i + 1,
                    format!(
                        "not an OpenSSH public key (KEYTYPE BASE64 [comment]) or `id: KEY_ID`: {e}"
                    ),
                )
            })?;
            r.keys.push(key.key_data().clone());
        }
        Ok(r)
    }

    /// True if `key` is listed.
    pub fn key(&self, key: &KeyData) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    /// Why `cert` is revoked (its key, its CA or its key id is listed), if it is.
    pub fn certificate(&self, cert: &Certificate) -> Option<&'static str> {
        if self.key(cert.public_key()) {
            Some("its key is listed in --reverse-revoked")
        } else if self.key(cert.signature_key()) {
            Some("its CA is listed in --reverse-revoked")
        } else if self.ids.iter().any(|id| id == cert.key_id()) {
            Some("its key id is listed in --reverse-revoked")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILl/k5x1M5LM67GoBTeqx29U2G3O8it2yQSYfrZIqwAQ c";

    #[test]
    fn keys_and_ids_are_listed_and_bad_lines_are_named() {
        let r = RevokedKeys::parse(&format!("# revoked\n\n{KEY}\nid: node-a-2026\n")).unwrap();
        let k = PublicKey::from_openssh(KEY).unwrap();
        assert!(r.key(k.key_data()));
        assert_eq!(r.ids, vec!["node-a-2026".to_string()]);
        let e = RevokedKeys::parse(&format!("{KEY}\nssh-ed25519 AAAA\n")).unwrap_err();
        assert_eq!(e.0, 2, "{e:?}");
        assert_eq!(RevokedKeys::parse("id:\n").unwrap_err().0, 1);
        assert!(!RevokedKeys::parse("").unwrap().key(k.key_data()));
    }
}
