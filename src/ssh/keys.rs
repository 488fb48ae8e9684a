//! Loading the client's private key: OpenSSH key files (ed25519, ECDSA, RSA), optionally
//! encrypted with a passphrase read from a file. Refuses key files that group or others can
//! access, like `ssh` does, because a leaked tunnel key opens every node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::{HashAlg, PrivateKey};
use thiserror::Error;

/// A problem with the client key; each message names the file and the fix.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("SSH key file {} does not exist; create one with `kube-ssh-tunnel keygen --out {}` or point --ssh-keyfile at your key", path.display(), path.display())]
    NotFound { path: PathBuf },
    #[error("SSH key file {} cannot be read: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("SSH key file {} has mode {mode:o}, which lets group or others read it; fix with `chmod 600 {}`", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("SSH key file {} is encrypted; give its passphrase with --ssh-key-passphrase-file FILE", path.display())]
    Encrypted { path: PathBuf },
    #[error("SSH key file {} could not be decrypted with the passphrase from {}: wrong passphrase or corrupt key", path.display(), passphrase_file.display())]
    BadPassphrase {
        path: PathBuf,
        passphrase_file: PathBuf,
    },
    #[error("SSH key file {} is not an OpenSSH private key ({reason}); expected the private half made by ssh-keygen, not the .pub file", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The loaded client key with what the logs and `check` show about it (never the secret).
#[derive(Clone)]
pub struct Identity {
    /// The private key, shared by every connection.
    pub key: Arc<PrivateKey>,
    /// Where it came from.
    pub path: PathBuf,
    /// `SHA256:…` fingerprint of the public half.
    pub fingerprint: String,
    /// Algorithm name, e.g. `ssh-ed25519`.
    pub algorithm: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `path`; `passphrase_file` holds the passphrase (first line) of an encrypted key.
    pub fn load(path: &Path, passphrase_file: Option<&Path>) -> Result<Identity, KeyError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyError::NotFound {
                path: path.to_path_buf(),
            },
            _ => KeyError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        })?;
        if !meta.is_file() {
            return Err(KeyError::Unreadable {
                path: path.to_path_buf(),
                reason: "it is not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let passphrase = match passphrase_file {
            None => None,
            Some(pf) => Some(read_passphrase(path, pf)?),
        };
        let key =
            russh::keys::decode_secret_key(&text, passphrase.as_deref()).map_err(|e| {
                match (e, passphrase_file) {
                    (russh::keys::Error::KeyIsEncrypted, None) => KeyError::Encrypted {
                        path: path.to_path_buf(),
                    },
                    (_, Some(pf)) if text.contains("BEGIN OPENSSH PRIVATE KEY") => {
                        KeyError::BadPassphrase {
                            path: path.to_path_buf(),
                            passphrase_file: pf.to_path_buf(),
                        }
                    }
                    (e, _) => KeyError::Invalid {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    },
                }
            })?;
        let public = key.public_key();
        Ok(Identity {
            fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
            algorithm: public.algorithm().to_string(),
            key: Arc::new(key),
            path: path.to_path_buf(),
        })
    }

    /// True for RSA keys, which need the server's preferred rsa-sha2 hash at auth time.
    pub fn is_rsa(&self) -> bool {
        matches!(self.key.algorithm(), russh::keys::Algorithm::Rsa { .. })
    }
}

fn read_passphrase(key: &Path, file: &Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(file).map_err(|e| KeyError::Unreadable {
        path: key.to_path_buf(),
        reason: format!("passphrase file {}: {e}", file.display()),
    })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}
