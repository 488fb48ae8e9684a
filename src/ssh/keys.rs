//! Loading the client's private key: OpenSSH key files (ed25519, ECDSA, RSA), optionally
//! encrypted with a passphrase read from a file. Refuses key files that group or others can
//! access, like `ssh` does, because a leaked tunnel key opens every node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::{HashAlg, PrivateKey};

pub use crate::error::KeyError;

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
    /// An OpenSSH user certificate for this key (authenticates with it instead of the key).
    pub certificate: Option<russh::keys::Certificate>,
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
        // An OpenSSH key parses (without decrypting) and says whether it is encrypted, so a
        // decoding failure can be told apart: no passphrase, wrong passphrase, or not a key.
        let encrypted = PrivateKey::from_openssh(&text).is_ok_and(|k| k.is_encrypted());
        let key =
            russh::keys::decode_secret_key(&text, passphrase.as_deref()).map_err(|e| {
                match (passphrase_file, encrypted) {
                    (None, true) => KeyError::Encrypted {
                        path: path.to_path_buf(),
                    },
                    (Some(pf), true) => KeyError::BadPassphrase {
                        path: path.to_path_buf(),
                        passphrase_file: pf.to_path_buf(),
                    },
                    _ => KeyError::Invalid {
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
            certificate: None,
        })
    }

    /// Attaches the user certificate at `cert` (it must certify this key).
    pub fn with_certificate(mut self, cert: &Path) -> Result<Identity, KeyError> {
        let c = russh::keys::load_openssh_certificate(cert).map_err(|e| KeyError::Invalid {
            path: cert.to_path_buf(),
            reason: format!("not an OpenSSH certificate: {e}"),
        })?;
        if c.public_key() != self.key.public_key().key_data() {
            return Err(KeyError::Invalid {
                path: cert.to_path_buf(),
                reason: format!(
                    "this certificate is not for the key {}",
                    self.path.display()
                ),
            });
        }
        self.certificate = Some(c);
        Ok(self)
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

/// Where the client key comes from; reloaded when the file (or its certificate, or its
/// passphrase file) changes, so a rotated key is used by the next connection without a restart. A replacement that does not load is logged and
/// the previous key kept.
#[derive(Debug)]
pub struct IdentitySource {
    path: PathBuf,
    passphrase_file: Option<PathBuf>,
    /// `Some(path)`: an explicit certificate; `None`: `<key>-cert.pub` when it exists.
    certificate: Option<PathBuf>,
    state: std::sync::Mutex<(Option<Stamp>, Identity)>,
}

/// The key file's modification time and size, the certificate's modification time, and the
/// passphrase file's modification time and size: a change to any of them reloads the key.
type Stamp = (
    std::time::SystemTime,
    u64,
    Option<std::time::SystemTime>,
    Option<(std::time::SystemTime, u64)>,
);

fn stamp_of(key: &Path, cert: &Path, passphrase: Option<&Path>) -> Option<Stamp> {
    let m = std::fs::metadata(key).ok()?;
    Some((
        m.modified().ok()?,
        m.len(),
        std::fs::metadata(cert).and_then(|c| c.modified()).ok(),
        passphrase
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| Some((m.modified().ok()?, m.len()))),
    ))
}

impl IdentitySource {
    /// Loads the key (and its certificate, explicit or `<key>-cert.pub`).
    pub fn open(
        path: &Path,
        passphrase_file: Option<&Path>,
        certificate: Option<&Path>,
    ) -> Result<Self, KeyError> {
        let src = IdentitySource {
            path: path.to_path_buf(),
            passphrase_file: passphrase_file.map(Path::to_path_buf),
            certificate: certificate.map(Path::to_path_buf),
            state: std::sync::Mutex::new((None, Identity::load(path, passphrase_file)?)),
        };
        let id = src.load()?;
        let stamp = src.stamp();
        if let Ok(mut st) = src.state.lock() {
            *st = (stamp, id);
        }
        Ok(src)
    }

    fn stamp(&self) -> Option<Stamp> {
        stamp_of(
            &self.path,
            &self.cert_path(),
            self.passphrase_file.as_deref(),
        )
    }

    fn cert_path(&self) -> PathBuf {
        self.certificate.clone().unwrap_or_else(|| {
            let mut p = self.path.clone().into_os_string();
            p.push("-cert.pub");
            PathBuf::from(p)
        })
    }

    fn load(&self) -> Result<Identity, KeyError> {
        let id = Identity::load(&self.path, self.passphrase_file.as_deref())?;
        let cert = self.cert_path();
        if self.certificate.is_some() || cert.exists() {
            return id.with_certificate(&cert);
        }
        Ok(id)
    }

    /// The key to use now (reloaded first if its file, its certificate or its passphrase
    /// file changed: a key rotated together with its passphrase loads once both are written,
    /// in either order).
    pub fn current(&self) -> Identity {
        let stamp = self.stamp();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_some() && stamp != st.0 {
            match self.load() {
                Ok(id) => {
                    tracing::info!(key = %self.path.display(), fingerprint = %id.fingerprint, "client key changed on disk; using the new one");
                    *st = (stamp, id);
                }
                Err(e) => {
                    tracing::error!(error = %e, "client key changed on disk but does not load; keeping the previous key");
                    st.0 = stamp;
                }
            }
        }
        st.1.clone()
    }
}

/// A fresh ed25519 key from the operating system's randomness.
pub fn generate_ed25519(comment: &str) -> std::io::Result<PrivateKey> {
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        comment,
    )
    .map_err(|e| std::io::Error::other(format!("cannot make an ed25519 key: {e}")))
}
